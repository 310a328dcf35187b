//! Warm pools: ready sandboxes of one spec (image, resources, environment) that a create
//! takes instead of starting one cold.
//!
//! A pool's sandboxes ("members") are ordinary records with `lifecycle.pool` set and
//! `lifecycle.pool_member` true while unclaimed. Unclaimed members are not the API's: they
//! are left out of `GET /v1/sandboxes`, an id lookup of one is `sandbox_not_found`, they do
//! not count against `max_sandboxes` (their memory does count as committed), and the reaper
//! never expires or idles them out.
//!
//! **Claim.** A create naming a pool, or one whose image and resources (after defaults)
//! are those of a pool without `env` and that asks for no snapshot, takes a running member
//! under the map lock, rewrites its record (env, metadata, timeout counted from now,
//! lifecycle options), writes it with one store update and returns: no runtime call, no
//! wait. The `claimed` event follows, and the filler is woken 25 ms later (so the claim's
//! answer and the client's first commands do not compete with the refill for the CPU). An empty pool falls back to a
//! cold create of the pool's spec; that sandbox has no `pool` (the field says where a warm
//! sandbox came from) and counts as a `miss`.
//!
//! **Filling.** One manager task keeps `ready + filling == size` for every pool: it creates
//! members through the ordinary create path (detached, with the create deadline, undone on
//! failure), at most `pool_fill_concurrency` at a time over all pools, and drains members
//! that no longer fit (pool deleted or redefined, size lowered, a member that is not
//! running). A failed create backs the pool off (2 s doubling to 60 s); a create refused by
//! admission stops the pool's filling for 2 s. `last_error` says why. The manager wakes on
//! every claim, deletion, pool change and finished member, and at least once a second.
//!
//! **Persistence.** Pools defined through the API are kept in the store's `pools` table;
//! pools of the daemon's config file are applied at every start (replacing an API pool of
//! the same name) and cannot be changed through the API. After a restart, adopted members
//! stay members; `creating` ones are cleaned like any other (see `recover`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{info, warn};
use warren_api::{
    CreateSandboxRequest, EventKind, Pool, PoolSource, PoolSpec, Resources, Sandbox, SandboxState,
    DEFAULT_IMAGE,
};

use crate::admission::Admit;
use crate::lifecycle::Activity;
use crate::{
    begin_delete, events, expiry, new_id, now_ms, to_api, validate, Engine, EngineError, Lifecycle,
    Record,
};

/// How often the manager looks at the pools when nothing wakes it.
const ROUND_EVERY: Duration = Duration::from_secs(1);
/// Pause of a pool whose member create was refused by admission.
const REFUSED_RETRY: Duration = Duration::from_secs(2);
/// How long after a claim the pool starts refilling.
const REFILL_DELAY: Duration = Duration::from_millis(25);
/// Longest back-off after failed member creates.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A pool's spec with the server's defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PoolDef {
    pub image: String,
    pub size: u32,
    pub resources: Resources,
    pub env: BTreeMap<String, String>,
    /// Mode and policy of its sandboxes (no address: each member gets its own).
    pub network: warren_runtime::NetworkSpec,
    pub runtime: warren_runtime::RuntimeKind,
}

impl PoolDef {
    /// Whether `r` (an unclaimed member) was made from this spec.
    fn made(&self, r: &Record) -> bool {
        r.image == self.image
            && r.resources == self.resources
            && r.env == self.env
            && r.network.mode == self.network.mode
            && r.network.egress == self.network.egress
            && r.lifecycle.runtime == self.runtime
    }
}

/// The environment of a sandbox taken from a pool: the pool's, then the request's.
pub(crate) fn claim_env(def: &PoolDef, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out = def.env.clone();
    out.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

struct PoolState {
    def: PoolDef,
    source: PoolSource,
    created_at: DateTime<Utc>,
    claims: u64,
    misses: u64,
    last_error: Option<String>,
    failures: u32,
    /// No member is made before this.
    retry_at: Option<Instant>,
}

impl PoolState {
    fn new(def: PoolDef, source: PoolSource, created_at: DateTime<Utc>) -> PoolState {
        PoolState {
            def,
            source,
            created_at,
            claims: 0,
            misses: 0,
            last_error: None,
            failures: 0,
            retry_at: None,
        }
    }
}

#[derive(Default)]
pub(crate) struct Pools {
    pools: Mutex<BTreeMap<String, PoolState>>,
    wake: Arc<Notify>,
    /// Serializes pool changes (store first, then memory).
    ops: tokio::sync::Mutex<()>,
    /// Held through a fill round, so two rounds never both fill the same gap.
    round: Mutex<()>,
}

impl Pools {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, PoolState>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn round(&self) -> MutexGuard<'_, ()> {
        self.round.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Let the manager look at the pools now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A create for `name` found it empty.
    pub fn missed(&self, name: &str) {
        if let Some(p) = self.lock().get_mut(name) {
            p.misses += 1;
        }
        self.wake();
    }

    fn claimed(&self, name: &str) {
        if let Some(p) = self.lock().get_mut(name) {
            p.claims += 1;
        }
        // Refill a moment later, so the claim's answer and the client's first commands do
        // not compete with a sandbox being made (on a small host that doubles their time).
        let wake = self.wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REFILL_DELAY).await;
            wake.notify_one();
        });
    }

    /// Admission refused a member of `name`: stop filling it for a while.
    fn refused(&self, name: &str, err: &EngineError) {
        let msg = format!("{}: {err}", err.code());
        if let Some(p) = self.lock().get_mut(name) {
            if p.last_error.as_deref() != Some(msg.as_str()) {
                info!(pool = name, reason = %msg, "pool filling paused");
            }
            p.last_error = Some(msg);
            p.retry_at = Some(Instant::now() + REFUSED_RETRY);
        }
    }

    /// A member create of `name` ended.
    fn filled(&self, name: &str, result: Result<(), &EngineError>) {
        if let Some(p) = self.lock().get_mut(name) {
            match result {
                Ok(()) => {
                    p.failures = 0;
                    p.last_error = None;
                    p.retry_at = None;
                }
                Err(err) => {
                    p.failures = p.failures.saturating_add(1);
                    let backoff = Duration::from_secs(1 << p.failures.min(6)).min(MAX_BACKOFF);
                    p.retry_at = Some(Instant::now() + backoff);
                    p.last_error = Some(format!("{}: {err}", err.code()));
                }
            }
        }
        self.wake();
    }
}

/// A pool's members during a fill round.
#[derive(Debug, Default)]
struct Held {
    /// Running members: (made at, id).
    ready: Vec<(DateTime<Utc>, String)>,
    /// Members being made.
    filling: u32,
}

/// What a pool holds, from the sandbox records.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    ready: u32,
    filling: u32,
    claimed: u32,
}

impl Engine {
    /// A pool whose sandboxes are made from image `name`, if any.
    pub(crate) fn pool_using_image(&self, name: &str) -> Option<String> {
        self.inner
            .pools
            .lock()
            .iter()
            .find(|(_, p)| p.def.image == name)
            .map(|(n, _)| n.clone())
    }

    /// Check a pool spec and fill in the defaults.
    fn resolve_pool(&self, spec: &PoolSpec) -> Result<PoolDef, EngineError> {
        let c = &self.inner.config;
        let image = spec
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
        // A pool's image must be there already (its fills never pull).
        let image = self.known_image(&image)?;
        if spec.size > c.max_pool_size {
            return Err(EngineError::InvalidRequest(format!(
                "size {} exceeds the server maximum of {}",
                spec.size, c.max_pool_size
            )));
        }
        let resources = validate::resources(spec.resources.as_ref(), c)?;
        validate::env("env", &spec.env)?;
        let mut network = self.resolve_network(spec.network.as_ref())?;
        let runtime = self.resolve_runtime(spec.runtime, &mut network, spec.network.is_some())?;
        Ok(PoolDef {
            image,
            size: spec.size,
            resources,
            env: spec.env.clone(),
            network,
            runtime,
        })
    }

    /// Load the stored pools and apply the config file's (at open, after `recover`).
    pub(crate) async fn load_pools(&self) -> Result<(), EngineError> {
        let mut loaded = BTreeMap::new();
        for (name, spec, created_at) in self.inner.store.load_pools().await? {
            match spec.and_then(|s| self.resolve_pool(&s).map_err(|e| e.to_string())) {
                Ok(def) => {
                    loaded.insert(name, PoolState::new(def, PoolSource::Api, created_at));
                }
                Err(e) => warn!(pool = %name, error = %e, "a stored pool is unusable; ignored"),
            }
        }
        let mut seen = BTreeSet::new();
        for (name, spec) in &self.inner.config.config_pools {
            let bad = |e: EngineError| {
                EngineError::InvalidRequest(format!("pool {name:?} of the config file: {e}"))
            };
            validate::pool_name(name).map_err(bad)?;
            if !seen.insert(name.clone()) {
                return Err(bad(EngineError::InvalidRequest(
                    "defined more than once".into(),
                )));
            }
            let def = self.resolve_pool(spec).map_err(bad)?;
            if loaded.contains_key(name) {
                warn!(pool = %name, "the config file's pool replaces the API's pool of that name");
                self.inner.store.remove_pool(name).await?;
            }
            loaded.insert(
                name.clone(),
                PoolState::new(def, PoolSource::Config, now_ms()),
            );
        }
        if !loaded.is_empty() {
            info!(count = loaded.len(), "pools loaded");
        }
        *self.inner.pools.lock() = loaded;
        Ok(())
    }

    /// Define or redefine a pool. Members that no longer fit are drained; the pool fills
    /// in the background.
    pub async fn put_pool(&self, name: &str, spec: PoolSpec) -> Result<Pool, EngineError> {
        self.check_open()?;
        validate::pool_name(name)?;
        let def = self.resolve_pool(&spec)?;
        let _op = self.inner.pools.ops.lock().await;
        let created_at = match self.inner.pools.lock().get(name) {
            Some(p) if p.source == PoolSource::Config => {
                return Err(EngineError::PoolFromConfig(name.to_string()))
            }
            Some(p) => p.created_at,
            None => now_ms(),
        };
        self.inner.store.put_pool(name, &spec, created_at).await?;
        {
            let mut pools = self.inner.pools.lock();
            let p = pools
                .entry(name.to_string())
                .or_insert_with(|| PoolState::new(def.clone(), PoolSource::Api, created_at));
            p.def = def;
            // A PUT is a prompt to try again.
            p.last_error = None;
            p.failures = 0;
            p.retry_at = None;
        }
        info!(pool = name, size = spec.size, "pool defined");
        self.pool_round();
        self.get_pool(name)
    }

    /// Delete a pool and its unclaimed sandboxes (waits until they are gone). Sandboxes
    /// claimed from it are their users' and stay.
    pub async fn delete_pool(&self, name: &str) -> Result<(), EngineError> {
        let _op = self.inner.pools.ops.lock().await;
        match self.inner.pools.lock().get(name) {
            None => return Err(EngineError::PoolNotFound(name.to_string())),
            Some(p) if p.source == PoolSource::Config => {
                return Err(EngineError::PoolFromConfig(name.to_string()))
            }
            Some(_) => {}
        }
        self.inner.store.remove_pool(name).await?;
        let members: Vec<String> = {
            // No fill round runs meanwhile, so none adds a member after the scan.
            let _round = self.inner.pools.round();
            self.inner.pools.lock().remove(name);
            self.map()
                .values()
                .filter(|e| {
                    e.record.lifecycle.pool_member
                        && e.record.lifecycle.pool.as_deref() == Some(name)
                })
                .map(|e| e.record.id.clone())
                .collect()
        };
        info!(pool = name, members = members.len(), "pool deleted");
        let deletions = members
            .iter()
            .map(|id| self.delete_because(id, "pool deleted"));
        for r in futures::future::join_all(deletions).await {
            if let Err(e) = r {
                // Already gone: fine.
                if !matches!(e, EngineError::SandboxNotFound(_)) {
                    warn!(pool = name, error = %e, "deleting a pool's sandbox");
                }
            }
        }
        Ok(())
    }

    fn pool_counts(&self) -> HashMap<String, Counts> {
        let mut out: HashMap<String, Counts> = HashMap::new();
        for e in self.map().values() {
            let r = &e.record;
            let Some(pool) = &r.lifecycle.pool else {
                continue;
            };
            let c = out.entry(pool.clone()).or_default();
            match (r.lifecycle.pool_member, r.state) {
                (true, SandboxState::Running) if e.warming => c.filling += 1,
                (true, SandboxState::Running) => c.ready += 1,
                (true, SandboxState::Creating) => c.filling += 1,
                (true, _) | (false, SandboxState::Deleting) => {}
                (false, _) => c.claimed += 1,
            }
        }
        out
    }

    fn pool_view(name: &str, p: &PoolState, c: Counts) -> Pool {
        Pool {
            name: name.to_string(),
            image: p.def.image.clone(),
            size: p.def.size,
            resources: p.def.resources.clone(),
            env_keys: p.def.env.keys().cloned().collect(),
            network: crate::network::request_of(&p.def.network),
            runtime: crate::runtimes::api_of(p.def.runtime),
            source: p.source,
            ready: c.ready,
            filling: c.filling,
            claimed: c.claimed,
            claims: p.claims,
            misses: p.misses,
            last_error: p.last_error.clone(),
            created_at: p.created_at,
        }
    }

    /// Every pool, by name.
    pub fn list_pools(&self) -> Vec<Pool> {
        let counts = self.pool_counts();
        self.inner
            .pools
            .lock()
            .iter()
            .map(|(name, p)| {
                let c = counts.get(name).copied().unwrap_or_default();
                Engine::pool_view(name, p, c)
            })
            .collect()
    }

    pub fn get_pool(&self, name: &str) -> Result<Pool, EngineError> {
        let counts = self.pool_counts();
        let pools = self.inner.pools.lock();
        let p = pools
            .get(name)
            .ok_or_else(|| EngineError::PoolNotFound(name.to_string()))?;
        Ok(Engine::pool_view(
            name,
            p,
            counts.get(name).copied().unwrap_or_default(),
        ))
    }

    /// The pools a create may be served from, in the order to try: the one it names, or
    /// those (without `env`) whose image and resources are the request's after defaults.
    pub(crate) fn pool_targets(
        &self,
        req: &CreateSandboxRequest,
    ) -> Result<Vec<(String, PoolDef)>, EngineError> {
        let c = &self.inner.config;
        if let Some(name) = &req.pool {
            if req.snapshot.is_some() {
                return Err(EngineError::InvalidRequest(
                    "`pool` and `snapshot` cannot be combined".into(),
                ));
            }
            if !req.volumes.is_empty() {
                // A pool's sandboxes are made before anyone asks for mounts.
                return Err(EngineError::InvalidRequest(
                    "`pool` and `volumes` cannot be combined".into(),
                ));
            }
            let def = self
                .inner
                .pools
                .lock()
                .get(name)
                .map(|p| p.def.clone())
                .ok_or_else(|| EngineError::PoolNotFound(name.clone()))?;
            if let Some(image) = &req.image {
                if *image != def.image {
                    return Err(EngineError::InvalidRequest(format!(
                        "image {image} is not pool {name}'s ({}); leave `image` out",
                        def.image
                    )));
                }
            }
            if req.resources.is_some() {
                let asked = validate::resources(req.resources.as_ref(), c)?;
                if asked != def.resources {
                    return Err(EngineError::InvalidRequest(format!(
                        "resources differ from pool {name}'s; leave `resources` out"
                    )));
                }
            }
            if let Some(r) = req.runtime.map(crate::runtimes::kind_of) {
                if r != def.runtime {
                    return Err(EngineError::InvalidRequest(format!(
                        "runtime {r} is not pool {name}'s ({}); leave `runtime` out",
                        def.runtime
                    )));
                }
            }
            return Ok(vec![(name.clone(), def)]);
        }
        if req.snapshot.is_some() || !req.volumes.is_empty() {
            return Ok(Vec::new());
        }
        let candidates: Vec<(String, PoolDef)> = self
            .inner
            .pools
            .lock()
            .iter()
            .filter(|(_, p)| p.def.env.is_empty() && p.def.size > 0)
            .map(|(n, p)| (n.clone(), p.def.clone()))
            .collect();
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let image = req.image.as_deref().unwrap_or(DEFAULT_IMAGE);
        let resources = validate::resources(req.resources.as_ref(), c)?;
        let runtime = req
            .runtime
            .map(crate::runtimes::kind_of)
            .unwrap_or(c.default_runtime);
        Ok(candidates
            .into_iter()
            .filter(|(_, d)| d.image == image && d.resources == resources && d.runtime == runtime)
            .collect())
    }

    /// Hand a ready member of `name` to this create, or `None` when the pool has none.
    /// `req` is validated; `env` is the merged environment.
    pub(crate) async fn claim(
        &self,
        name: &str,
        def: &PoolDef,
        req: &CreateSandboxRequest,
        env: &BTreeMap<String, String>,
        timeout_secs: u64,
    ) -> Result<Option<Sandbox>, EngineError> {
        self.check_pressure()?;
        self.check_credentials(&req.credentials)?;
        let record = {
            let mut map = self.map();
            self.check_open()?;
            self.check_count(&map)?;
            let pick = map
                .values()
                .filter(|e| {
                    let r = &e.record;
                    r.lifecycle.pool_member
                        && r.state == SandboxState::Running
                        && !e.warming
                        && r.lifecycle.pool.as_deref() == Some(name)
                        && def.made(r)
                })
                .min_by(|a, b| {
                    (a.record.created_at, &a.record.id).cmp(&(b.record.created_at, &b.record.id))
                })
                .map(|e| e.record.id.clone());
            let Some(e) = pick.and_then(|id| map.get_mut(&id)) else {
                return Ok(None);
            };
            let r = &mut e.record;
            r.lifecycle.pool_member = false;
            r.lifecycle.on_timeout = req.on_timeout.unwrap_or_default();
            r.lifecycle.idle_timeout_secs = req.idle_timeout_secs;
            r.lifecycle.on_idle = req.on_idle.unwrap_or_default();
            r.lifecycle.auto_resume = req.auto_resume;
            r.env = env.clone();
            r.metadata = req.metadata.clone();
            r.created_at = now_ms();
            r.timeout_secs = timeout_secs;
            r.expires_at = expiry(timeout_secs);
            // Checked above: only sealing can fail here (and then the claim fails below).
            let registered = self.register_credentials(&r.id, &req.credentials);
            r.credentials = registered.as_ref().ok().cloned().flatten();
            // Idle from the claim on, not from when it was made.
            e.activity = Activity::new();
            (e.record.clone(), registered.err())
        };
        let (record, failed) = record;
        let id = record.id.clone();
        let failed = match failed {
            Some(err) => Some(err),
            None => self.inner.store.update_claimed(&record).await.err(),
        };
        if let Some(err) = failed {
            // Not handed out half-made: it goes, and the pool makes another.
            warn!(%id, pool = name, error = %err, "a claim failed; deleting it");
            let engine = self.clone();
            tokio::spawn(async move { engine.delete_because(&id, "claim failed").await });
            return Err(err);
        }
        self.emit(
            &id,
            EventKind::Claimed,
            events::Detail {
                state: Some(SandboxState::Running),
                reason: Some(format!("pool:{name}")),
                ..Default::default()
            },
        );
        self.inner.pools.claimed(name);
        self.serve_credentials(&id).await;
        info!(%id, pool = name, "pool sandbox claimed");
        Ok(Some(to_api(&record, self.net_gateway())))
    }

    /// Start the manager that fills and drains the pools. It holds the engine only while
    /// it works, so it ends once the engine is dropped (or shuts down).
    pub(crate) fn spawn_pool_manager(&self) {
        let weak = Arc::downgrade(&self.inner);
        let wake = self.inner.pools.wake.clone();
        tokio::spawn(async move {
            loop {
                {
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    let engine = Engine { inner };
                    if engine.is_shutting_down() {
                        return;
                    }
                    engine.pool_round();
                }
                let _ = tokio::time::timeout(ROUND_EVERY, wake.notified()).await;
            }
        });
    }

    /// One look at every pool: drain members that do not fit, start creates for the gaps.
    /// Never waits (creates run in tasks of their own).
    pub(crate) fn pool_round(&self) {
        let pools = &self.inner.pools;
        let _round = pools.round();
        if self.is_shutting_down() {
            return;
        }
        let now = Instant::now();
        // name → (spec, may fill now)
        let defs: BTreeMap<String, (PoolDef, bool)> = pools
            .lock()
            .iter()
            .map(|(n, p)| {
                let may = p.retry_at.is_none_or(|t| t <= now);
                (n.clone(), (p.def.clone(), may))
            })
            .collect();
        let mut have: HashMap<String, Held> = HashMap::new();
        let mut filling_all = 0usize;
        let mut drains = Vec::new();
        {
            let mut map = self.map();
            let mut drain: Vec<(String, &'static str)> = Vec::new();
            for (id, e) in map.iter() {
                let r = &e.record;
                if !r.lifecycle.pool_member || r.state == SandboxState::Deleting {
                    continue;
                }
                if r.state == SandboxState::Creating || e.warming {
                    filling_all += 1;
                }
                let pool = r.lifecycle.pool.clone().unwrap_or_default();
                let why = match defs.get(&pool) {
                    None => Some("pool deleted"),
                    Some((d, _)) if !d.made(r) => Some("pool changed"),
                    Some(_) => match r.state {
                        SandboxState::Running | SandboxState::Creating => None,
                        _ => Some("pool sandbox unusable"),
                    },
                };
                if let Some(why) = why {
                    drain.push((id.clone(), why));
                    continue;
                }
                let h = have.entry(pool).or_default();
                if r.state == SandboxState::Running && !e.warming {
                    h.ready.push((r.created_at, id.clone()));
                } else {
                    h.filling += 1;
                }
            }
            // Lowered sizes: the newest ready members go.
            for (name, (def, _)) in &defs {
                let Some(h) = have.get_mut(name) else {
                    continue;
                };
                let total = h.ready.len() + h.filling as usize;
                let size = def.size as usize;
                if total > size {
                    let excess = (total - size).min(h.ready.len());
                    h.ready.sort();
                    let keep = h.ready.len() - excess;
                    for (_, id) in h.ready.split_off(keep) {
                        drain.push((id, "pool resized"));
                    }
                }
            }
            for (id, why) in drain {
                if let Some(e) = map.get_mut(&id) {
                    let prev = begin_delete(e);
                    drains.push((id, prev, why));
                }
            }
        }
        for (id, prev, why) in drains {
            info!(%id, reason = why, "pool sandbox drained");
            self.after_begin_delete(&id, prev, why);
        }

        let mut slots = self
            .inner
            .config
            .pool_fill_concurrency
            .saturating_sub(filling_all);
        let mut gaps: Vec<(String, PoolDef, u32)> = defs
            .into_iter()
            .filter(|(_, (_, may))| *may)
            .filter_map(|(name, (def, _))| {
                let (ready, filling) = have
                    .get(&name)
                    .map(|h| (h.ready.len() as u32, h.filling))
                    .unwrap_or((0, 0));
                let gap = def.size.saturating_sub(ready + filling);
                (gap > 0).then_some((name, def, gap))
            })
            .collect();
        // Round-robin over the pools with gaps.
        while slots > 0 && !gaps.is_empty() {
            gaps.retain_mut(|(name, def, gap)| {
                if slots == 0 {
                    return true;
                }
                match self.begin_member(name, def) {
                    Ok(()) => {
                        slots -= 1;
                        *gap -= 1;
                        *gap > 0
                    }
                    Err(e) => {
                        pools.refused(name, &e);
                        false
                    }
                }
            });
        }
    }

    /// Record a new member of `pool` (admission included) and create it in a task.
    fn begin_member(&self, pool: &str, def: &PoolDef) -> Result<(), EngineError> {
        let c = &self.inner.config;
        let now = now_ms();
        let mut record = Record {
            id: new_id("sb"),
            state: SandboxState::Creating,
            image: def.image.clone(),
            created_at: now,
            // Never expires while unclaimed (the reaper skips members); a claim sets it.
            expires_at: expiry(c.max_timeout_secs),
            timeout_secs: c.max_timeout_secs,
            metadata: BTreeMap::new(),
            env: def.env.clone(),
            resources: def.resources.clone(),
            failure_reason: None,
            state_changed_at: now,
            lifecycle: Lifecycle {
                pool: Some(pool.to_string()),
                pool_member: true,
                runtime: def.runtime,
                ..Default::default()
            },
            host_id: None,
            network: def.network.clone(),
            // A claim's, if it brings any.
            credentials: None,
            volumes: Vec::new(),
        };
        let guard = self.admit_insert(&mut record, Admit::Member)?;
        self.emit(
            &record.id,
            EventKind::Created,
            events::Detail {
                state: Some(SandboxState::Creating),
                reason: Some(format!("pool:{pool}")),
                ..Default::default()
            },
        );
        let engine = self.clone();
        let pool = pool.to_string();
        tokio::spawn(async move {
            let r = engine.finish_create(record, None).await;
            drop(guard);
            let r = match r {
                Ok(sb) => engine.when_ready(sb).await,
                Err(e) => Err(e),
            };
            match &r {
                Ok(_) => engine.inner.pools.filled(&pool, Ok(())),
                // Deleted while being made (pool drained, shutdown): not the pool's failure.
                Err(EngineError::InvalidState { .. } | EngineError::ShuttingDown) => {
                    engine.inner.pools.wake()
                }
                Err(e) => engine.inner.pools.filled(&pool, Err(e)),
            }
        });
        Ok(())
    }
}
