//! Sandboxes' networks as records: the mode and egress policy a create (or pool) asks for,
//! the address each `nat` sandbox holds for its whole life (next-fit from the runtime's
//! range, so a freed address is not handed out again at once), and live policy updates.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use tracing::{info, warn};
use warren_api::{
    EgressAction as ApiAction, EgressPolicy as ApiPolicy, EgressRule as ApiRule,
    NetworkCapabilities, NetworkMode as ApiMode, NetworkRequest, SandboxNetwork, SandboxState,
    UpdateNetworkRequest,
};
use warren_runtime::{
    EgressAction, EgressPolicy, EgressRule, NetworkCaps, NetworkMode, NetworkSpec, Target,
};

use crate::{Engine, EngineError, Entry};

pub(crate) fn mode_from_api(m: ApiMode) -> NetworkMode {
    match m {
        ApiMode::Nat => NetworkMode::Nat,
        ApiMode::Isolated => NetworkMode::Isolated,
    }
}

pub(crate) fn mode_to_api(m: NetworkMode) -> ApiMode {
    match m {
        NetworkMode::Nat => ApiMode::Nat,
        NetworkMode::Isolated => ApiMode::Isolated,
    }
}

/// Parse and check a policy from the API (every target, the rule count).
pub(crate) fn policy_from_api(p: &ApiPolicy) -> Result<EgressPolicy, EngineError> {
    let action = |a: ApiAction| match a {
        ApiAction::Allow => EgressAction::Allow,
        ApiAction::Deny => EgressAction::Deny,
    };
    let rules = p
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Target::parse(&r.target)
                .map(|target| EgressRule {
                    action: action(r.action),
                    target,
                })
                .map_err(|e| EngineError::InvalidRequest(format!("egress rule {i}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policy = EgressPolicy {
        default: action(p.default),
        rules,
    };
    policy.validate().map_err(EngineError::InvalidRequest)?;
    Ok(policy)
}

pub(crate) fn policy_to_api(p: &EgressPolicy) -> ApiPolicy {
    let action = |a: EgressAction| match a {
        EgressAction::Allow => ApiAction::Allow,
        EgressAction::Deny => ApiAction::Deny,
    };
    ApiPolicy {
        default: action(p.default),
        rules: p
            .rules
            .iter()
            .map(|r| ApiRule {
                action: action(r.action),
                target: r.target.to_string(),
            })
            .collect(),
    }
}

/// The request form of a sandbox's (or pool's) network, as a pool reports it.
pub(crate) fn request_of(spec: &NetworkSpec) -> NetworkRequest {
    NetworkRequest {
        mode: Some(mode_to_api(spec.mode)),
        egress: (!spec.egress.is_open()).then(|| policy_to_api(&spec.egress)),
    }
}

/// The wire view of a sandbox's network (`gateway`: that of `nat` sandboxes here).
pub(crate) fn view(net: &NetworkSpec, gateway: Option<Ipv4Addr>) -> SandboxNetwork {
    SandboxNetwork {
        mode: mode_to_api(net.mode),
        address: net.address.map(|a| a.to_string()),
        gateway: gateway
            .filter(|_| net.mode == NetworkMode::Nat)
            .map(|g| g.to_string()),
        egress: policy_to_api(&net.egress),
    }
}

impl Engine {
    /// The network a create or a pool asks for (no address yet): the server's default mode
    /// when none is named; `nat` only where the runtime offers it.
    pub(crate) fn resolve_network(
        &self,
        req: Option<&NetworkRequest>,
    ) -> Result<NetworkSpec, EngineError> {
        let mode = req
            .and_then(|r| r.mode)
            .map(mode_from_api)
            .unwrap_or(self.inner.config.default_network);
        let caps = &self.inner.net;
        if !caps.modes.contains(&mode) {
            return Err(EngineError::NetworkUnavailable(format!(
                "network mode {mode} is not available on this server (it offers: {}); \
                 see GET /v1/capabilities",
                caps.modes
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let egress = match req.and_then(|r| r.egress.as_ref()) {
            Some(p) => policy_from_api(p)?,
            None => EgressPolicy::allow_all(),
        };
        if mode == NetworkMode::Isolated && !egress.is_open() {
            return Err(EngineError::InvalidRequest(
                "an egress policy needs network mode nat (an isolated sandbox reaches nothing)"
                    .into(),
            ));
        }
        if mode == NetworkMode::Nat && !egress.is_open() && !caps.egress {
            return Err(EngineError::NetworkUnavailable(
                "this server's runtime does not enforce egress policies".into(),
            ));
        }
        Ok(NetworkSpec {
            mode,
            address: None,
            egress,
        })
    }

    /// Give a `nat` record without an address the next free one of the runtime's range
    /// (next-fit). Called under the sandboxes lock.
    pub(crate) fn allocate_address(
        &self,
        map: &HashMap<String, Entry>,
        net: &mut NetworkSpec,
    ) -> Result<(), EngineError> {
        if net.mode != NetworkMode::Nat || net.address.is_some() {
            return Ok(());
        }
        let range = self.inner.net.range.ok_or_else(|| {
            EngineError::NetworkUnavailable("the runtime reports no address range".into())
        })?;
        let used: HashSet<Ipv4Addr> = map
            .values()
            .filter_map(|e| e.record.network.address)
            .collect();
        let slots = NetworkCaps::slots(range);
        let mut cursor = lock(&self.inner.net_cursor);
        for step in 0..slots {
            let slot = ((u64::from(*cursor) + step) % slots) as u32;
            let Some(addr) = NetworkCaps::slot_address(range, slot) else {
                continue;
            };
            if !used.contains(&addr) {
                *cursor = ((u64::from(slot) + 1) % slots) as u32;
                net.address = Some(addr);
                return Ok(());
            }
        }
        Err(EngineError::LimitReached(format!(
            "every one of the {slots} addresses of {range} is in use (widen --network-range)"
        )))
    }

    /// Gateway (and DNS proxy) of `nat` sandboxes, when the runtime offers `nat`.
    pub(crate) fn net_gateway(&self) -> Option<Ipv4Addr> {
        let net = &self.inner.net;
        net.range
            .filter(|_| net.modes.contains(&NetworkMode::Nat))
            .map(NetworkCaps::gateway)
    }

    /// The wire view of a sandbox's network.
    pub(crate) fn network_view(&self, net: &NetworkSpec) -> SandboxNetwork {
        view(net, self.net_gateway())
    }

    /// `network` of `GET /v1/capabilities`.
    pub(crate) fn network_capabilities(&self) -> NetworkCapabilities {
        let caps = &self.inner.net;
        NetworkCapabilities {
            modes: caps.modes.iter().copied().map(mode_to_api).collect(),
            default_mode: mode_to_api(self.inner.config.default_network),
            egress: caps.egress,
            broker: caps.broker && self.broker_available(),
            range: caps.range.map(|r| r.to_string()),
        }
    }

    /// `GET /v1/sandboxes/{id}/network`.
    pub async fn network(&self, id: &str) -> Result<SandboxNetwork, EngineError> {
        self.visible(id)?;
        let net = self
            .map()
            .get(id)
            .map(|e| e.record.network.clone())
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
        Ok(self.network_view(&net))
    }

    /// `PUT /v1/sandboxes/{id}/network`: replace the egress policy. A running or paused
    /// sandbox gets it at once (its processes keep running); a stopped one when it starts.
    pub async fn update_network(
        &self,
        id: &str,
        req: UpdateNetworkRequest,
    ) -> Result<SandboxNetwork, EngineError> {
        self.visible(id)?;
        let policy = policy_from_api(&req.egress)?;
        let op = self.op_lock(id)?;
        let _op = op.lock().await;
        let record = self
            .map()
            .get(id)
            .map(|e| e.record.clone())
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
        if record.network.mode != NetworkMode::Nat {
            return Err(EngineError::InvalidRequest(format!(
                "sandbox {id} has network mode {}: an egress policy needs nat",
                record.network.mode
            )));
        }
        if !policy.is_open() && !self.inner.net.egress {
            return Err(EngineError::NetworkUnavailable(
                "this server's runtime does not enforce egress policies".into(),
            ));
        }
        match record.state {
            SandboxState::Running | SandboxState::Paused => {
                let sid = crate::sandbox_id(id)?;
                self.inner.runtime.set_egress(&sid, &policy).await?;
            }
            SandboxState::Stopped => {}
            state => {
                return Err(EngineError::InvalidState {
                    id: id.to_string(),
                    state,
                    message: "its network can change when it is running, paused or stopped".into(),
                })
            }
        }
        let mut updated = record;
        updated.network.egress = policy;
        self.inner.store.set_network(id, &updated.network).await?;
        let view = self.network_view(&updated.network);
        if let Some(e) = self.map().get_mut(id) {
            e.record.network = updated.network;
        }
        info!(%id, rules = req.egress.rules.len(), "egress policy replaced");
        Ok(view)
    }

    /// After a restart: put every adopted `nat` sandbox's policy back in force (the runtime
    /// re-reads what its DNS lookups had admitted).
    pub(crate) async fn reapply_policies(&self) {
        let live: Vec<(String, EgressPolicy)> = self
            .map()
            .values()
            .filter(|e| {
                e.record.network.mode == NetworkMode::Nat
                    && matches!(e.record.state, SandboxState::Running | SandboxState::Paused)
            })
            .map(|e| (e.record.id.clone(), e.record.network.egress.clone()))
            .collect();
        for (id, policy) in live {
            let Ok(sid) = crate::sandbox_id(&id) else {
                continue;
            };
            if let Err(e) = self.inner.runtime.set_egress(&sid, &policy).await {
                warn!(%id, error = %e, "could not put its egress policy back in force");
            }
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
