//! Which runtime runs a sandbox (`"runtime": "native" | "gvisor"`): the one a create, a
//! pool or a fork names, or the server's default; refused with `runtime_unavailable` when
//! the backend cannot run it here, and with `network_unavailable` when that runtime does
//! not offer the sandbox's network mode. What each supports is the backend's
//! [`warren_runtime::KindInfo`], shown in `GET /v1/capabilities` `runtimes`.

use warren_api::{Runtime, RuntimeCapabilities};
use warren_runtime::{KindInfo, NetworkMode, NetworkSpec, RuntimeKind};

use crate::{Engine, EngineError};

pub(crate) fn kind_of(r: Runtime) -> RuntimeKind {
    match r {
        Runtime::Native => RuntimeKind::Native,
        Runtime::Gvisor => RuntimeKind::Gvisor,
    }
}

/// Whether sandboxes of `kind` may mount host directories: not on gVisor, whose file server
/// writes as the host's root (its sandboxes have no user namespace of their own), so what
/// the sandbox wrote there would belong to root.
pub(crate) fn host_path_mounts(kind: RuntimeKind) -> bool {
    kind != RuntimeKind::Gvisor
}

pub(crate) fn api_of(k: RuntimeKind) -> Runtime {
    match k {
        RuntimeKind::Native => Runtime::Native,
        RuntimeKind::Gvisor => Runtime::Gvisor,
    }
}

impl Engine {
    /// The runtime a new sandbox gets: `asked`, else the server's default; checked against
    /// what the backend can run and the sandbox's network mode.
    ///
    /// A sandbox that named no network gets `isolated` when its runtime does not offer
    /// the server's default mode (as a server whose runtime offers no other does).
    pub(crate) fn resolve_runtime(
        &self,
        asked: Option<Runtime>,
        network: &mut NetworkSpec,
        network_named: bool,
    ) -> Result<RuntimeKind, EngineError> {
        let kind = asked
            .map(kind_of)
            .unwrap_or(self.inner.config.default_runtime);
        let info = self.inner.runtime.info();
        let Some(k) = info.kind(kind) else {
            return Err(EngineError::RuntimeUnavailable(format!(
                "runtime {kind} is not available: this server's backend ({}) does not run it",
                info.name
            )));
        };
        if let Some(why) = &k.unavailable {
            return Err(EngineError::RuntimeUnavailable(format!(
                "runtime {kind} is not available on this server: {why}"
            )));
        }
        if !k.network_modes.contains(&network.mode)
            && !network_named
            && k.network_modes.contains(&NetworkMode::Isolated)
        {
            *network = NetworkSpec::isolated();
        }
        let network = network.mode;
        if !k.network_modes.contains(&network) {
            return Err(EngineError::NetworkUnavailable(format!(
                "network mode {network} is not available for runtime {kind} (it offers {})",
                k.network_modes
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(kind)
    }

    /// `GET /v1/capabilities` `runtimes`, from the backend's `kinds`.
    pub(crate) fn runtime_capabilities(&self, kinds: Vec<KindInfo>) -> Vec<RuntimeCapabilities> {
        let c = &self.inner.config;
        kinds
            .into_iter()
            .map(|k| RuntimeCapabilities {
                name: api_of(k.kind),
                available: k.available(),
                unavailable_reason: k.unavailable.clone(),
                kernel: k.kernel,
                version: k.version,
                platform: k.platform,
                pause: k.pause,
                stop: k.stop,
                snapshots: k.snapshots,
                rollback: k.snapshots && k.stop,
                fork: k.snapshots,
                memory_snapshots: k.memory_snapshots,
                network_modes: k.network_modes.iter().map(|m| m.to_string()).collect(),
                egress_policy: k.egress,
                user_namespace: k.user_namespace,
                seccomp: k.seccomp,
                disk_quota: k.disk_quota,
                volumes: k.volumes,
                file_metadata: k.file_metadata,
                host_path_mounts: host_path_mounts(k.kind),
                memory_limit_ends_sandbox: k.kind == RuntimeKind::Gvisor,
                max_sandboxes: (c.max_sandboxes > 0)
                    .then(|| u32::try_from(c.max_sandboxes).unwrap_or(u32::MAX)),
                max_timeout_secs: c.max_timeout_secs,
            })
            .collect()
    }
}
