//! Templates: images built from a Dockerfile (`POST /v1/templates`).
//!
//! `warren_dockerfile` turns the Dockerfile into a plan; this module runs it over the image
//! store. The state of a build is a layer stack and an image config:
//!
//! - `FROM` resolves (and pulls, per `--pull`) the base image: its layers and config;
//! - `RUN` makes a Warren sandbox from the stack so far (recorded as a hidden image
//!   `warren-build/<build>/<step>`, with the template's network), runs the command there as
//!   the image's user, in its working directory, with its env and the step's ARGs, stops the
//!   sandbox and commits its writable layer as the next layer;
//! - `COPY`/`ADD` write the context's files into a fresh layer (no sandbox);
//! - `ENV`, `WORKDIR`, `USER`, `LABEL`, `EXPOSE`, `CMD`, `ENTRYPOINT`, `ARG` change the
//!   config only (a `WORKDIR` that does not exist yet is made by the next RUN's sandbox, or
//!   by one of its own at the end).
//!
//! Build cache: each step's key is a digest of the key before it and the step (its text
//! after expansion, a RUN's ARG values, a COPY's files digest and owner), starting from the
//! base image's layers. A key the cache knows gives its layer without running anything, so
//! an unchanged rebuild runs no sandbox. A build holds a lease on the store: no collection
//! removes a layer it has made before its image is recorded.

use std::path::{Path, PathBuf};

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::{error::TrySendError, Sender};
use tracing::{info, warn};
use warren_api::{
    BuildLog, BuildStep, BuildTemplateRequest, CreateProcessRequest, CreateSandboxRequest,
    ExecRequest, Template,
};
use warren_dockerfile::Op;
use warren_image::{
    CommitOptions, CopySpec, Image as StoredImage, ImageConfig, ImageStore, Layer, ScratchDir,
    TemplateMeta,
};
use warren_runtime::ExecOutput;

use crate::images::{image_error, resolve_user};
use crate::{Engine, EngineError};

/// Names of the hidden images build sandboxes are made from.
pub(crate) const BUILD_PREFIX: &str = "warren-build/";

/// Paths of a build sandbox's writable layer that never go into a layer: Warren writes
/// them into every sandbox (Docker leaves them out of RUN layers too), and the mount points
/// of the runtime's own file systems.
const NOT_COMMITTED: &[&str] = &[
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "proc",
    "sys",
    "dev",
];

/// Seconds a template's `ready_cmd` may take by default.
const DEFAULT_READY_SECS: u64 = 60;

/// One event of a build's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    Step(BuildStep),
    Log(BuildLog),
}

/// Whether `name` may name a template: 1–128 of `[A-Za-z0-9_.:/-]`, starting with a letter
/// or digit, not a build's hidden name.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'/' | b'-'))
        && !name.starts_with(BUILD_PREFIX)
}

fn digest_of(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    format!("{:x}", h.finalize())
}

fn set_env(config: &mut ImageConfig, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match config
        .env
        .iter_mut()
        .find(|e| e.split_once('=').map(|(k, _)| k) == Some(key))
    {
        Some(e) => *e = entry,
        None => config.env.push(entry),
    }
}

/// Whether `path` (absolute) is a directory in `layers` (top-most first), whiteouts
/// honoured.
fn dir_in_layers(layers: &[PathBuf], path: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return true;
    }
    for l in layers {
        match std::fs::symlink_metadata(l.join(rel)) {
            Ok(m) if m.file_type().is_char_device() => return false,
            Ok(m) => return m.is_dir(),
            Err(_) => {}
        }
    }
    false
}

/// A build in progress.
struct Build<'a> {
    engine: &'a Engine,
    store: &'a ImageStore,
    req: &'a BuildTemplateRequest,
    events: &'a Sender<BuildEvent>,
    /// Log bytes not sent because the reader was behind (reported with the next send).
    dropped: std::sync::atomic::AtomicU64,
    /// A per-build id (the hidden images' names).
    id: String,
    layers: Vec<Layer>,
    config: ImageConfig,
    key: String,
    /// `CMD` was set by this Dockerfile (an `ENTRYPOINT` then keeps it).
    cmd_set: bool,
    /// The working directory does not exist in the layers yet.
    workdir_missing: bool,
    sandboxes_run: usize,
    cached: usize,
    /// The event of the step under way, sent once its cache state is known.
    pending_step: Option<BuildStep>,
}

impl Build<'_> {
    fn log(&self, stream: &str, data: &[u8]) {
        self.send(BuildEvent::Log(BuildLog {
            stream: stream.into(),
            data: String::from_utf8_lossy(data).into_owned(),
        }));
    }

    /// Send an event without ever waiting: a reader that falls behind (or is gone) loses
    /// log output, told how much with the next event that gets through; the build goes on.
    fn send(&self, ev: BuildEvent) {
        use std::sync::atomic::Ordering::Relaxed;
        let lost = self.dropped.load(Relaxed);
        if lost > 0 {
            let note = BuildEvent::Log(BuildLog {
                stream: "stderr".into(),
                data: format!(
                    "[warren: {lost} bytes of build output dropped: the reader was behind]\n"
                ),
            });
            if self.events.try_send(note).is_err() {
                self.count_lost(&ev);
                return;
            }
            self.dropped.store(0, Relaxed);
        }
        if let Err(TrySendError::Full(ev)) = self.events.try_send(ev) {
            self.count_lost(&ev);
        }
    }

    fn count_lost(&self, ev: &BuildEvent) {
        if let BuildEvent::Log(l) = ev {
            self.dropped
                .fetch_add(l.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn layer_paths(&self) -> Result<Vec<PathBuf>, EngineError> {
        self.layers
            .iter()
            .rev()
            .map(|l| self.store.layer_path(&l.diff_id).map_err(image_error))
            .collect()
    }

    /// The cached layer of `key`, unless the build ignores the cache.
    fn cached(&self, key: &str) -> Option<Layer> {
        if self.req.no_cache {
            return None;
        }
        self.store.cache_get(key)
    }

    fn push(&mut self, key: String, layer: Layer, cached: bool) {
        if cached {
            self.cached += 1;
        } else if let Err(e) = self.store.cache_put(&key, &layer) {
            warn!(error = %e, "recording a build cache entry");
        }
        self.layers.push(layer);
        self.key = key;
    }

    /// Run `argv` (or nothing: only the sandbox's own set-up, e.g. making the working
    /// directory) in a sandbox of the stack so far and commit its writable layer.
    async fn run_in_sandbox(
        &mut self,
        line: usize,
        argv: Option<Vec<String>>,
        env: &[(String, String)],
    ) -> Result<Layer, EngineError> {
        self.sandboxes_run += 1;
        let hidden = format!("{BUILD_PREFIX}{}/{}", self.id, self.sandboxes_run);
        let image = StoredImage {
            name: hidden.clone(),
            digest: format!("sha256:{}", digest_of(&[hidden.as_bytes()])),
            config: self.config.clone(),
            size: self.layers.iter().map(|l| l.size).sum(),
            layers: self.layers.clone(),
            pulled_at: Utc::now(),
            template: None,
        };
        self.store.put_image(image).await.map_err(image_error)?;
        let result = self.run_on(&hidden, line, argv, env).await;
        if let Err(e) = self.store.remove(&hidden).await {
            warn!(image = %hidden, error = %e, "removing a build's hidden image");
        }
        self.engine.forget_image_defaults(&hidden);
        result
    }

    async fn run_on(
        &mut self,
        image: &str,
        line: usize,
        argv: Option<Vec<String>>,
        env: &[(String, String)],
    ) -> Result<Layer, EngineError> {
        let e = self.engine;
        let sandbox = e
            .create(CreateSandboxRequest {
                image: Some(image.to_string()),
                metadata: [("warren.build".to_string(), self.req.name.clone())].into(),
                timeout_secs: Some(e.inner.config.max_timeout_secs),
                network: self.req.network.clone(),
                runtime: self.req.runtime,
                ..Default::default()
            })
            .await?;
        let id = sandbox.id;
        let result = async {
            if let Some(argv) = argv {
                let mut stream = e
                    .exec(
                        &id,
                        ExecRequest {
                            cmd: argv,
                            env: env.iter().cloned().collect(),
                            ..Default::default()
                        },
                    )
                    .await?;
                use futures::StreamExt;
                let mut exit = None;
                while let Some(item) = stream.next().await {
                    match item.map_err(EngineError::from)? {
                        ExecOutput::Stdout(b) => self.log("stdout", &b),
                        ExecOutput::Stderr(b) => self.log("stderr", &b),
                        ExecOutput::Exit(x) => exit = Some(x),
                    }
                }
                match exit {
                    Some(x) if x.exit_code == 0 => {}
                    Some(x) => {
                        return Err(EngineError::BuildFailed(format!(
                            "line {line}: the command exited with {}",
                            x.exit_code
                        )))
                    }
                    None => {
                        return Err(EngineError::BuildFailed(format!(
                            "line {line}: the command's output ended without its exit"
                        )))
                    }
                }
            }
            e.stop(&id).await?;
            let upper = e
                .inner
                .runtime
                .writable_layer(&crate::sandbox_id(&id)?)
                .await?;
            let opts = CommitOptions {
                id_shift: upper.id_shift,
                skip: NOT_COMMITTED.iter().map(PathBuf::from).collect(),
                lowers: self.layer_paths()?,
            };
            let committed = self
                .store
                .commit_layer(upper.path, opts)
                .await
                .map_err(build_input)?;
            Ok(committed.layer)
        }
        .await;
        if let Err(err) = e.delete_because(&id, "template build step done").await {
            warn!(sandbox = %id, error = %err, "deleting a build sandbox");
        }
        result
    }

    /// A COPY or ADD step (`op` is its `Op::Copy`).
    async fn copy(&mut self, context: &Path, op: &Op, text: &str) -> Result<(), EngineError> {
        let Op::Copy {
            sources,
            dest,
            chown,
            chmod,
            add,
        } = op
        else {
            return Ok(());
        };
        let (chown, chmod, add) = (chown.as_deref(), *chmod, *add);
        let lowers = self.layer_paths()?;
        let owner = match chown {
            None => (0, 0),
            Some(spec) => {
                let (spec, lowers) = (spec.to_string(), lowers.clone());
                let u = tokio::task::spawn_blocking(move || resolve_user(&spec, &lowers))
                    .await
                    .map_err(|e| EngineError::Store(format!("resolving --chown: {e}")))?
                    .map_err(|m| EngineError::BuildFailed(format!("--chown: {m}")))?;
                (u.uid, u.gid)
            }
        };
        let scratch = self.store.scratch_dir("copy").map_err(image_error)?;
        let (ctx, srcs, dst, workdir, layer_dir, lw) = (
            context.to_path_buf(),
            sources.to_vec(),
            dest.to_string(),
            self.config
                .working_dir
                .clone()
                .unwrap_or_else(|| "/".to_string()),
            scratch.path().to_path_buf(),
            lowers.clone(),
        );
        let copied = tokio::task::spawn_blocking(move || {
            warren_image::copy_into_layer(
                &CopySpec {
                    context: &ctx,
                    sources: &srcs,
                    dest: &dst,
                    workdir: &workdir,
                    owner,
                    mode: chmod,
                    add,
                    lowers: &lw,
                },
                &layer_dir,
            )
        })
        .await
        .map_err(|e| EngineError::Store(format!("copying: {e}")))?
        .map_err(build_input)?;
        let key = digest_of(&[
            self.key.as_bytes(),
            text.as_bytes(),
            copied.files_digest.as_bytes(),
            format!("{}:{}", owner.0, owner.1).as_bytes(),
        ]);
        let cached = self.cached(&key);
        self.step_started(cached.is_some());
        let layer = match cached {
            Some(l) => (l, true),
            None => {
                let opts = CommitOptions {
                    id_shift: 0,
                    skip: Vec::new(),
                    lowers,
                };
                let c = self
                    .store
                    .commit_layer(scratch.path().to_path_buf(), opts)
                    .await
                    .map_err(build_input)?;
                (c.layer, false)
            }
        };
        drop(scratch);
        self.push(key, layer.0, layer.1);
        Ok(())
    }

    /// Send the event of the step under way, now that its cache state is known.
    fn step_started(&self, cached: bool) {
        if let Some(mut ev) = self.pending_step.clone() {
            ev.cached = cached;
            self.send(BuildEvent::Step(ev));
        }
    }
}

/// A build's own failures (an input it cannot use, a layer it cannot hold) as
/// `build_failed`; the store's as usual.
fn build_input(e: warren_image::ImageError) -> EngineError {
    use warren_image::ImageError as E;
    match e {
        E::BuildInput(m) => EngineError::BuildFailed(m),
        E::Corrupt(m) | E::Unsupported(m) => EngineError::BuildFailed(m),
        e => image_error(e),
    }
}

impl Engine {
    /// A scratch directory for a build's context (the server spools the upload there).
    pub fn build_scratch(&self) -> Result<ScratchDir, EngineError> {
        self.image_store()
            .ok_or(EngineError::NotSupported("templates"))?
            .scratch_dir("upload")
            .map_err(image_error)
    }

    /// Build template `req.name` from its Dockerfile and the context archive at `context`
    /// (a tar, plain, gzip or zstd), sending the build's log to `events`. Bad input (the
    /// Dockerfile, a name, a missing file) is 400 and changes nothing; a failing step is
    /// 422 `build_failed`; the template is recorded only when every step succeeded.
    pub async fn build_template(
        &self,
        req: BuildTemplateRequest,
        context: Option<PathBuf>,
        events: Sender<BuildEvent>,
    ) -> Result<Template, EngineError> {
        self.check_open()?;
        let store = self
            .image_store()
            .ok_or(EngineError::NotSupported("templates"))?
            .clone();
        let started = std::time::Instant::now();
        if !valid_name(&req.name) || self.is_builtin_image(&req.name) {
            return Err(EngineError::InvalidRequest(format!(
                "template name {:?}: 1-128 of A-Z a-z 0-9 _ . : / -, starting with a letter \
                 or digit (not a built-in image's name)",
                req.name
            )));
        }
        if let Some(existing) = store.get(&req.name).map_err(image_error)? {
            if existing.name == req.name && existing.template.is_none() {
                return Err(EngineError::ImageInUse(format!(
                    "{} is a pulled or imported image; delete it or build under another name",
                    req.name
                )));
            }
            if existing.name == req.name {
                // Its sandboxes would lose the layers they run on at the next collection.
                self.check_image_unused(&req.name)?;
            }
        }
        let bad = |e: warren_dockerfile::DockerfileError| {
            EngineError::InvalidRequest(format!("Dockerfile {e}"))
        };
        let first = warren_dockerfile::plan(&req.dockerfile, &req.build_args).map_err(bad)?;
        let (base_layers, base_config) = if first.base == "scratch" {
            (Vec::new(), ImageConfig::default())
        } else if self.is_builtin_image(&first.base) {
            return Err(EngineError::InvalidRequest(format!(
                "FROM {}: templates build on OCI images (or scratch), not on a built-in one",
                first.base
            )));
        } else {
            let name = self.resolve_image(&first.base).await?;
            let base = store
                .get(&name)
                .map_err(image_error)?
                .ok_or_else(|| EngineError::ImageNotFound(name.clone()))?;
            (base.layers, base.config)
        };
        let base_env: Vec<(String, String)> = base_config
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let plan =
            warren_dockerfile::plan_with_base_env(&req.dockerfile, &req.build_args, &base_env)
                .map_err(bad)?;
        let _lease = store.lease().await;
        // The context, unpacked on the host (owned by the daemon, no extended attributes).
        let context_dir = store.scratch_dir("context").map_err(image_error)?;
        if let Some(archive) = context {
            let dest = context_dir.path().to_path_buf();
            tokio::task::spawn_blocking(move || warren_image::unpack_context(&archive, &dest))
                .await
                .map_err(|e| EngineError::Store(format!("unpacking the context: {e}")))?
                .map_err(build_input)?;
        }
        let mut key_parts: Vec<&[u8]> = vec![b"warren-build-v1", first.base.as_bytes()];
        key_parts.extend(base_layers.iter().map(|l| l.diff_id.as_bytes()));
        let key = digest_of(&key_parts);
        let workdir_missing = false;
        let mut b = Build {
            engine: self,
            store: &store,
            req: &req,
            events: &events,
            dropped: Default::default(),
            id: format!("{:016x}", rand::random::<u64>()),
            layers: base_layers,
            config: base_config,
            key,
            cmd_set: false,
            workdir_missing,
            sandboxes_run: 0,
            cached: 0,
            pending_step: None,
        };
        let total = plan.steps.len();
        let mut layer_steps = 0;
        for (i, step) in plan.steps.iter().enumerate() {
            b.pending_step = Some(BuildStep {
                index: i + 1,
                total,
                line: step.line,
                instruction: step.text.clone(),
                cached: false,
            });
            let config_only = |b: &mut Build<'_>| {
                b.key = digest_of(&[b.key.as_bytes(), step.text.as_bytes()]);
                b.step_started(false);
            };
            match &step.op {
                Op::Run { argv, env } => {
                    layer_steps += 1;
                    let env_json = serde_json::to_string(env).unwrap_or_default();
                    let key =
                        digest_of(&[b.key.as_bytes(), step.text.as_bytes(), env_json.as_bytes()]);
                    match b.cached(&key) {
                        Some(layer) => {
                            b.step_started(true);
                            b.push(key, layer, true);
                        }
                        None => {
                            b.step_started(false);
                            let layer =
                                b.run_in_sandbox(step.line, Some(argv.clone()), env).await?;
                            b.push(key, layer, false);
                        }
                    }
                    // The sandbox made the working directory (as every create does).
                    b.workdir_missing = false;
                }
                Op::Copy { .. } => {
                    layer_steps += 1;
                    b.copy(context_dir.path(), &step.op, &step.text)
                        .await
                        .map_err(|e| match e {
                            EngineError::BuildFailed(m) => {
                                EngineError::BuildFailed(format!("line {}: {m}", step.line))
                            }
                            e => e,
                        })?;
                }
                Op::Env(pairs) => {
                    for (k, v) in pairs {
                        set_env(&mut b.config, k, v);
                    }
                    config_only(&mut b);
                }
                Op::Workdir(dir) => {
                    b.config.working_dir = Some(dir.clone());
                    b.workdir_missing = !dir_in_layers(&b.layer_paths()?, dir);
                    config_only(&mut b);
                }
                Op::User(user) => {
                    b.config.user = Some(user.clone());
                    config_only(&mut b);
                }
                Op::Label(pairs) => {
                    b.config.labels.extend(pairs.iter().cloned());
                    config_only(&mut b);
                }
                Op::Expose(ports) => {
                    for p in ports {
                        if !b.config.exposed_ports.contains(p) {
                            b.config.exposed_ports.push(p.clone());
                        }
                    }
                    config_only(&mut b);
                }
                Op::Cmd(cmd) => {
                    b.config.cmd = cmd.clone();
                    b.cmd_set = true;
                    config_only(&mut b);
                }
                Op::Entrypoint(ep) => {
                    b.config.entrypoint = ep.clone();
                    // Docker: a CMD inherited from the base does not outlive a new ENTRYPOINT.
                    if !b.cmd_set {
                        b.config.cmd.clear();
                    }
                    config_only(&mut b);
                }
                Op::Arg { .. } => config_only(&mut b),
            }
        }
        if b.workdir_missing {
            // A WORKDIR no RUN came after: a sandbox of its own makes the directory.
            b.pending_step = None;
            let key = digest_of(&[b.key.as_bytes(), b"make the working directory"]);
            match b.cached(&key) {
                Some(layer) => b.push(key, layer, true),
                None => {
                    let layer = b.run_in_sandbox(0, None, &[]).await?;
                    b.push(key, layer, false);
                }
            }
        }
        let meta = TemplateMeta {
            base: plan.base.clone(),
            dockerfile: req.dockerfile.clone(),
            start_cmd: req.start_cmd.clone(),
            ready_cmd: req.ready_cmd.clone(),
            ready_timeout_secs: req.ready_timeout_secs,
            build_ms: started.elapsed().as_millis() as u64,
            steps: total,
            cached_steps: b.cached.min(layer_steps),
        };
        let config_json = serde_json::to_vec(&b.config).unwrap_or_default();
        let mut digest_parts: Vec<&[u8]> = vec![&config_json];
        digest_parts.extend(b.layers.iter().map(|l| l.diff_id.as_bytes()));
        let image = StoredImage {
            name: req.name.clone(),
            digest: format!("sha256:{}", digest_of(&digest_parts)),
            config: b.config.clone(),
            size: b.layers.iter().map(|l| l.size).sum(),
            layers: b.layers.clone(),
            pulled_at: Utc::now(),
            template: Some(meta),
        };
        store.put_image(image.clone()).await.map_err(image_error)?;
        self.forget_image_defaults(&req.name);
        drop(_lease);
        if store.collection_owed() {
            if let Err(e) = store.collect_garbage().await {
                warn!(error = %e, "collecting unused layers after a build");
            }
        }
        info!(
            template = %req.name,
            layers = image.layers.len(),
            steps = total,
            cached = b.cached,
            ms = started.elapsed().as_millis() as u64,
            "template built"
        );
        template_view(&image)
    }

    /// At open: what builds cut short by a crash left (their sandboxes, made from the
    /// hidden `warren-build/…` images, and those images) is removed.
    pub(crate) async fn clean_interrupted_builds(&self) {
        let ids: Vec<String> = self
            .map()
            .values()
            .filter(|e| e.record.image.starts_with(BUILD_PREFIX))
            .map(|e| e.record.id.clone())
            .collect();
        for id in ids {
            if let Err(e) = self
                .delete_because(&id, "its template build was interrupted")
                .await
            {
                warn!(sandbox = %id, error = %e, "removing an interrupted build's sandbox");
            }
        }
        let Some(store) = self.image_store() else {
            return;
        };
        for img in store.list().unwrap_or_default() {
            if img.name.starts_with(BUILD_PREFIX) {
                info!(image = %img.name, "removing an interrupted build's step image");
                if let Err(e) = store.remove(&img.name).await {
                    warn!(image = %img.name, error = %e, "removing an interrupted build's image");
                }
            }
        }
    }

    /// Every template (images built from a Dockerfile).
    pub fn list_templates(&self) -> Result<Vec<Template>, EngineError> {
        let Some(store) = self.image_store() else {
            return Ok(Vec::new());
        };
        store
            .list()
            .map_err(image_error)?
            .iter()
            .filter(|i| i.template.is_some())
            .map(template_view)
            .collect()
    }

    fn stored_template(&self, name: &str) -> Result<StoredImage, EngineError> {
        self.image_store()
            .and_then(|s| s.get(name).ok().flatten())
            .filter(|i| i.template.is_some() && i.name == name)
            .ok_or_else(|| EngineError::ImageNotFound(format!("template {name} not found")))
    }

    pub fn get_template(&self, name: &str) -> Result<Template, EngineError> {
        template_view(&self.stored_template(name)?)
    }

    /// Delete a template (409 `image_in_use` while a sandbox, pool or snapshot uses it).
    pub async fn delete_template(&self, name: &str) -> Result<(), EngineError> {
        self.stored_template(name)?;
        self.delete_image(name).await
    }

    /// Whether image `name` is a template with a `start_cmd` or a `ready_cmd`.
    pub(crate) fn has_template_hooks(&self, name: &str) -> bool {
        self.image_store()
            .and_then(|s| s.get(name).ok().flatten())
            .and_then(|i| i.template)
            .is_some_and(|t| t.start_cmd.is_some() || t.ready_cmd.is_some())
    }

    /// After a create from a template: start its `start_cmd` (a durable process tagged
    /// `start`) and wait until its `ready_cmd` exits 0. The sandbox is running.
    pub(crate) async fn template_hooks(&self, id: &str, image: &str) -> Result<(), EngineError> {
        let Some(meta) = self
            .image_store()
            .and_then(|s| s.get(image).ok().flatten())
            .and_then(|i| i.template)
        else {
            return Ok(());
        };
        let sh = |cmd: &str| vec!["/bin/sh".to_string(), "-c".to_string(), cmd.to_string()];
        if let Some(start) = &meta.start_cmd {
            self.start_process(
                id,
                CreateProcessRequest {
                    cmd: sh(start),
                    tag: Some("start".into()),
                    ..Default::default()
                },
            )
            .await?;
        }
        let Some(ready) = &meta.ready_cmd else {
            return Ok(());
        };
        let secs = meta.ready_timeout_secs.unwrap_or(DEFAULT_READY_SECS);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            // Straight to the agent: an unclaimed pool member is hidden from `exec`.
            let spec = self.command_spec(
                id,
                crate::CommandParts {
                    cmd: sh(ready),
                    env: Default::default(),
                    cwd: None,
                    user: None,
                    timeout_secs: Some(secs.max(1)),
                    stdin: false,
                },
            )?;
            let stream = match self.agent(&crate::sandbox_id(id)?).exec(spec, None).await {
                Ok(s) => s,
                Err(e) => return Err(self.spawn_error(id, e).await),
            };
            let done = self.collect(stream).await?;
            let code = done.exit.map_or(-1, |x| x.exit_code);
            if code == 0 {
                return Ok(());
            }
            let last = format!(
                "exit {code}: {}",
                String::from_utf8_lossy(&done.stderr).trim()
            );
            if tokio::time::Instant::now() >= deadline {
                return Err(EngineError::DeadlineExceeded(format!(
                    "the template's ready_cmd did not succeed within {secs} s (last: {last})"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

fn template_view(i: &StoredImage) -> Result<Template, EngineError> {
    let meta = i
        .template
        .clone()
        .ok_or_else(|| EngineError::ImageNotFound(format!("{} is not a template", i.name)))?;
    Ok(Template {
        name: i.name.clone(),
        image: crate::images::view(i),
        start_cmd: meta.start_cmd,
        ready_cmd: meta.ready_cmd,
        ready_timeout_secs: meta.ready_timeout_secs,
        base: meta.base,
        dockerfile: meta.dockerfile,
        built_at: i.pulled_at,
        build_ms: meta.build_ms,
        steps: meta.steps,
        cached_steps: meta.cached_steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_env_and_keys() {
        assert!(valid_name("py-agent"));
        assert!(valid_name("team/agent:v2"));
        assert!(!valid_name("warren-build/x"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
        let mut c = ImageConfig::default();
        set_env(&mut c, "A", "1");
        set_env(&mut c, "B", "2");
        set_env(&mut c, "A", "3");
        assert_eq!(c.env, vec!["A=3", "B=2"]);
        assert_ne!(digest_of(&[b"ab", b"c"]), digest_of(&[b"a", b"bc"]));
    }
}
