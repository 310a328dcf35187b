//! OpenSandbox's lifecycle API (`/v1/sandboxes`, `/v1/snapshots`, endpoints, network
//! policy) onto the engine.

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use warren_api::{
    CreateProcessRequest, CreateSandboxRequest, CreateSnapshotRequest, EgressAction, EgressPolicy,
    EgressRule, NetworkMode, NetworkRequest, Resources, SandboxState, UpdateNetworkRequest,
};

use crate::error::{OsError, OsResult};
use crate::model::{self, Action, NetworkPolicy, NetworkRule};
use crate::{Os, EGRESS_PORT, EXECD_PORT, EXECD_TOKEN_HEADER, ORIGIN_HEADER};

/// Tag of the durable process that runs a sandbox's `entrypoint`.
pub const ENTRYPOINT_TAG: &str = "entrypoint";
/// Bounds of `timeout` (seconds), as OpenSandbox's server has them.
pub const MIN_TIMEOUT_SECS: i64 = 60;
pub const MAX_TIMEOUT_SECS: i64 = 86_400;
const DEFAULT_PAGE_SIZE: u64 = 20;
const MAX_PAGE_SIZE: u64 = 1000;

pub(crate) fn routes() -> Router<Os> {
    Router::new()
        .route("/v1/sandboxes", post(create).get(list))
        .route("/v1/sandboxes/{id}", get(get_one).delete(delete))
        .route(
            "/v1/sandboxes/{id}/metadata",
            axum::routing::patch(patch_metadata),
        )
        .route("/v1/sandboxes/{id}/pause", post(pause))
        .route("/v1/sandboxes/{id}/resume", post(resume))
        .route("/v1/sandboxes/{id}/renew-expiration", post(renew))
        .route("/v1/sandboxes/{id}/endpoints/{port}", get(endpoint))
        .route(
            "/v1/sandboxes/{id}/networkpolicy",
            get(get_policy)
                .put(put_policy)
                .patch(patch_policy)
                .delete(delete_rules),
        )
        .route("/v1/sandboxes/{id}/snapshots", post(create_snapshot))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{id}",
            get(get_snapshot).delete(delete_snapshot),
        )
        .route("/v1/metrics/events", post(metrics_event))
        .route("/v1/templates", get(templates).post(templates))
        .route("/v1/templates/{id}", get(templates).delete(templates))
        .route("/v1/sandboxes/{id}/diagnostics/{*what}", get(diagnostics))
}

async fn diagnostics() -> OsError {
    OsError::unsupported(
        "diagnostics are not served here: Warren's own API has the sandbox's events (GET /v1/sandboxes/{id}/events)",
    )
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> OsResult<T> {
    b.map(|Json(v)| v).map_err(OsError::from)
}

/// The Warren image an OpenSandbox image name stands for: an alias, or the name itself.
fn resolve_image(os: &Os, uri: &str) -> String {
    os.opts
        .image_aliases
        .get(uri)
        .cloned()
        .unwrap_or_else(|| uri.to_string())
}

fn resources(limits: &BTreeMap<String, String>) -> OsResult<Option<Resources>> {
    if limits.is_empty() {
        return Ok(None);
    }
    let mut r = Resources::default();
    for (k, v) in limits {
        match k.as_str() {
            "cpu" => r.cpus = Some(model::parse_cpu(v)?),
            "memory" => r.memory_mib = Some(model::parse_mib("resourceLimits.memory", v)?),
            "ephemeral-storage" | "disk" => {
                r.disk_mib = Some(model::parse_mib("resourceLimits.ephemeral-storage", v)?)
            }
            "pids" => {
                r.pids = Some(v.trim().parse().map_err(|_| {
                    OsError::invalid(format!("resourceLimits.pids {v:?} is not a number"))
                })?)
            }
            "gpu" | "nvidia.com/gpu" if v.trim() == "0" => {}
            "gpu" | "nvidia.com/gpu" => {
                return Err(OsError::unsupported("Warren sandboxes have no GPUs"))
            }
            other => {
                return Err(OsError::invalid(format!(
                    "resourceLimits.{other} is not a resource Warren limits (cpu, memory, ephemeral-storage, pids)"
                )))
            }
        }
    }
    Ok(Some(r))
}

fn egress_policy(p: &NetworkPolicy) -> EgressPolicy {
    let action = |a: Action| match a {
        Action::Allow => EgressAction::Allow,
        Action::Deny => EgressAction::Deny,
    };
    EgressPolicy {
        default: action(p.default_action.unwrap_or(Action::Allow)),
        rules: p
            .egress
            .iter()
            .map(|r| EgressRule {
                action: action(r.action),
                target: r.target.clone(),
            })
            .collect(),
    }
}

fn os_policy(p: &EgressPolicy) -> NetworkPolicy {
    let action = |a: EgressAction| match a {
        EgressAction::Allow => Action::Allow,
        EgressAction::Deny => Action::Deny,
    };
    NetworkPolicy {
        default_action: Some(action(p.default)),
        egress: p
            .rules
            .iter()
            .map(|r| NetworkRule {
                action: action(r.action),
                target: r.target.clone(),
            })
            .collect(),
    }
}

/// The engine's request for an OpenSandbox create, and the entrypoint to start.
fn translate(os: &Os, req: model::CreateSandbox) -> OsResult<(CreateSandboxRequest, Vec<String>)> {
    if let Some(p) = &req.platform {
        if p.os != "linux" || !matches!(p.arch.as_str(), "amd64" | "x86_64") {
            return Err(OsError::invalid(format!(
                "platform {}/{} is not this server's (linux/amd64)",
                p.os, p.arch
            )));
        }
    }
    if req
        .lifecycle
        .as_ref()
        .is_some_and(|l| !l.is_null() && l != &serde_json::json!({}))
    {
        return Err(OsError::unsupported(
            "lifecycle hooks (preStart, periodic) are not supported by Warren",
        ));
    }
    if req
        .credential_proxy
        .as_ref()
        .and_then(|c| c.get("enabled"))
        .and_then(|e| e.as_bool())
        .unwrap_or(false)
    {
        return Err(OsError::unsupported(
            "the credential proxy is not supported by Warren (see Warren's credential broker)",
        ));
    }
    if let Some(k) = req
        .metadata
        .keys()
        .find(|k| k.starts_with(model::META_PREFIX))
    {
        return Err(OsError::invalid(format!(
            "metadata key {k:?}: keys starting with {:?} are Warren's",
            model::META_PREFIX
        )));
    }
    let timeout_secs = match req.timeout {
        None => None,
        Some(None) => Some(os.engine.config().max_timeout_secs),
        Some(Some(t)) if (MIN_TIMEOUT_SECS..=MAX_TIMEOUT_SECS).contains(&t) => Some(t as u64),
        Some(Some(t)) => {
            return Err(OsError::invalid(format!(
                "timeout {t} must be between {MIN_TIMEOUT_SECS} and {MAX_TIMEOUT_SECS} seconds, or null"
            )))
        }
    };
    let (image, uri, snapshot) = match (&req.image, &req.snapshot_id, &req.template_id) {
        (Some(i), None, None) => (Some(resolve_image(os, &i.uri)), Some(i.uri.clone()), None),
        (None, Some(s), None) => (None, None, Some(s.clone())),
        (None, None, Some(t)) => (Some(resolve_image(os, t)), Some(t.clone()), None),
        _ => {
            return Err(OsError::invalid(
                "give exactly one of image, snapshotId, templateId",
            ))
        }
    };
    let mut metadata = req.metadata;
    if !req.entrypoint.is_empty() {
        metadata.insert(
            model::META_ENTRYPOINT.into(),
            serde_json::to_string(&req.entrypoint).unwrap_or_default(),
        );
    }
    if let Some(uri) = uri {
        metadata.insert(model::META_IMAGE.into(), uri);
    }
    let network = req.network_policy.as_ref().map(|p| NetworkRequest {
        mode: Some(NetworkMode::Nat),
        egress: Some(egress_policy(p)),
    });
    let volumes = req
        .volumes
        .iter()
        .map(model::volume_mount)
        .collect::<OsResult<Vec<_>>>()?;
    let create = CreateSandboxRequest {
        image,
        env: req.env,
        metadata,
        timeout_secs,
        resources: resources(&req.resource_limits)?,
        snapshot,
        network,
        volumes,
        ..Default::default()
    };
    Ok((create, req.entrypoint))
}

async fn create(
    State(os): State<Os>,
    req: Result<Json<model::CreateSandbox>, JsonRejection>,
) -> OsResult<Response> {
    let req = body(req)?;
    let claims: Vec<String> = req
        .volumes
        .iter()
        .filter_map(|v| v.pvc.as_ref())
        .filter(|p| p.create_if_not_exists.unwrap_or(false))
        .map(|p| p.claim_name.clone())
        .collect();
    let (create, entrypoint) = translate(&os, req)?;
    for name in claims {
        match os.engine.get_volume(&name).await {
            Err(e) if e.code() == warren_api::ErrorCode::VolumeNotFound => {
                let made = os
                    .engine
                    .create_volume(warren_api::CreateVolumeRequest {
                        name,
                        size_mib: None,
                    })
                    .await;
                match made {
                    Err(e) if e.code() != warren_api::ErrorCode::VolumeExists => {
                        return Err(e.into())
                    }
                    _ => {}
                }
            }
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
    }
    // Only images Warren has: a create here never pulls (an unknown name is a 404).
    if let Some(image) = create.image.clone() {
        let engine = os.engine.clone();
        tokio::task::spawn_blocking(move || engine.get_image(&image))
            .await
            .map_err(|e| {
                OsError::from_code(warren_api::ErrorCode::RuntimeError, e.to_string())
            })??;
    }
    let sandbox = os.engine.create(create).await?;
    if !entrypoint.is_empty() {
        let start = CreateProcessRequest {
            cmd: entrypoint,
            tag: Some(ENTRYPOINT_TAG.into()),
            ..Default::default()
        };
        if let Err(e) = os.engine.start_process(&sandbox.id, start).await {
            if let Err(del) = os.engine.delete(&sandbox.id).await {
                tracing::warn!(id = %sandbox.id, error = %del, "deleting a sandbox whose entrypoint failed");
            }
            return Err(OsError::from(e));
        }
    }
    Ok((StatusCode::ACCEPTED, Json(model::to_sandbox(&sandbox))).into_response())
}

/// Query pairs, repeated keys kept.
fn pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn page_params(pairs: &[(String, String)]) -> OsResult<(u64, u64)> {
    let num = |name: &str, default: u64| -> OsResult<u64> {
        match pairs.iter().rev().find(|(k, _)| k == name) {
            None => Ok(default),
            Some((_, v)) => v.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                OsError::invalid(format!("{name} must be a positive integer, got {v:?}"))
            }),
        }
    };
    let page = num("page", 1)?;
    let size = num("pageSize", DEFAULT_PAGE_SIZE)?;
    if size > MAX_PAGE_SIZE {
        return Err(OsError::invalid(format!(
            "pageSize must be at most {MAX_PAGE_SIZE}, got {size}"
        )));
    }
    Ok((page, size))
}

/// `GET /v1/sandboxes?state=Running&state=Paused&metadata=k%3Dv%26k2%3Dv2&page&pageSize`:
/// states OR, metadata pairs AND.
async fn list(
    State(os): State<Os>,
    RawQuery(q): RawQuery,
) -> OsResult<Json<model::Page<model::Sandbox>>> {
    let pairs = pairs(&q);
    let (page, size) = page_params(&pairs)?;
    let mut states: Vec<String> = Vec::new();
    let mut filter = BTreeMap::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "state" => states.extend(
                v.split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty()),
            ),
            "metadata" => {
                for (mk, mv) in form_urlencoded::parse(v.as_bytes()).into_owned() {
                    filter.insert(mk, mv);
                }
            }
            _ => {}
        }
    }
    let all = os.engine.list(&filter).await?;
    let items: Vec<model::Sandbox> = all
        .iter()
        .map(model::to_sandbox)
        .filter(|s| states.is_empty() || states.contains(&s.status.state.to_ascii_lowercase()))
        .collect();
    Ok(Json(model::paginate(items, page, size)))
}

async fn get_one(State(os): State<Os>, Path(id): Path<String>) -> OsResult<Json<model::Sandbox>> {
    Ok(Json(model::to_sandbox(&os.engine.get(&id).await?)))
}

async fn delete(State(os): State<Os>, Path(id): Path<String>) -> OsResult<StatusCode> {
    os.engine.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /v1/sandboxes/{id}/metadata`: `{"k": "v"}` sets, `{"k": null}` removes.
async fn patch_metadata(
    State(os): State<Os>,
    Path(id): Path<String>,
    req: Result<Json<BTreeMap<String, Option<String>>>, JsonRejection>,
) -> OsResult<Json<model::Sandbox>> {
    let patch = body(req)?;
    if let Some(k) = patch.keys().find(|k| k.starts_with(model::META_PREFIX)) {
        return Err(OsError::invalid(format!(
            "metadata key {k:?}: keys starting with {:?} are Warren's",
            model::META_PREFIX
        )));
    }
    Ok(Json(model::to_sandbox(
        &os.engine.update_metadata(&id, &patch).await?,
    )))
}

async fn pause(State(os): State<Os>, Path(id): Path<String>) -> OsResult<StatusCode> {
    os.engine.pause(&id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Resume a paused sandbox; a stopped one (which OpenSandbox also calls `Paused`) starts.
async fn resume(State(os): State<Os>, Path(id): Path<String>) -> OsResult<StatusCode> {
    let sandbox = os.engine.get(&id).await?;
    if sandbox.state == SandboxState::Stopped {
        os.engine.start(&id).await?;
    } else {
        os.engine.resume(&id).await?;
    }
    Ok(StatusCode::ACCEPTED)
}

async fn renew(
    State(os): State<Os>,
    Path(id): Path<String>,
    req: Result<Json<model::Renew>, JsonRejection>,
) -> OsResult<Json<model::Renewed>> {
    let want = body(req)?.expires_at;
    let ms = (want - Utc::now()).num_milliseconds();
    if ms <= 0 {
        return Err(OsError::invalid(format!(
            "expiresAt {want} is not in the future"
        )));
    }
    let secs = u64::try_from(ms).unwrap_or(u64::MAX).div_ceil(1000);
    let sandbox = os.engine.set_timeout(&id, secs).await?;
    Ok(Json(model::Renewed {
        expires_at: sandbox.expires_at,
    }))
}

/// The host the client reached this server by (endpoints it is handed use it too).
fn host_of(headers: &HeaderMap) -> String {
    headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(axum::http::header::HOST))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// `GET /v1/sandboxes/{id}/endpoints/{port}`: execd (44772) is this surface's
/// `/execd/{id}`; egress (18080) is answered with `OPEN-SANDBOX-ORIGIN: template`, which
/// makes the SDK manage egress through `/networkpolicy`; any other port is Warren's reverse
/// proxy to it. Each carries the sandbox's token when the daemon has API keys; with
/// `expires`, a proxied port's endpoint is a signed link instead (its token in the path,
/// valid until then). `use_server_proxy` changes nothing: every endpoint already goes
/// through this server.
async fn endpoint(
    State(os): State<Os>,
    Path((id, port)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> OsResult<Response> {
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| OsError::invalid(format!("port {port:?} is not a port number")))?;
    let expires = match pairs(&q).into_iter().find(|(k, _)| k == "expires") {
        None => None,
        Some((_, v)) => Some(
            v.parse::<i64>()
                .ok()
                .filter(|e| *e > Utc::now().timestamp())
                .ok_or_else(|| {
                    OsError::invalid(format!("expires {v:?} is not a future Unix time"))
                })?,
        ),
    };
    os.engine.get(&id).await?;
    let host = host_of(&headers);
    let prefix = os.opts.prefix.trim_end_matches('/');
    let token = os.opts.gate.as_ref().map(|g| g.token_for(&id));
    let mut out = BTreeMap::new();
    let endpoint = match port {
        EXECD_PORT => {
            if let Some(t) = token {
                out.insert(EXECD_TOKEN_HEADER.to_ascii_uppercase(), t);
            }
            format!("{host}{prefix}/execd/{id}")
        }
        EGRESS_PORT => format!("{host}{prefix}/egress/{id}"),
        _ => match (expires, &os.opts.gate) {
            // A signed link: the token is in the path, no header needed.
            (Some(exp), Some(gate)) => format!(
                "{host}/v1/sandboxes/{id}/proxy/{port}/~{}",
                gate.route_token(&id, port, exp)
            ),
            _ => {
                if let Some(t) = token {
                    out.insert("X-Warren-Token".into(), t);
                }
                format!("{host}/v1/sandboxes/{id}/proxy/{port}")
            }
        },
    };
    let mut resp = Json(model::Endpoint {
        endpoint,
        headers: out,
    })
    .into_response();
    resp.headers_mut()
        .insert(ORIGIN_HEADER, HeaderValue::from_static("template"));
    Ok(resp)
}

async fn policy_status(os: &Os, id: &str) -> OsResult<model::PolicyStatus> {
    let net = os.engine.network(id).await?;
    Ok(model::PolicyStatus {
        status: "active",
        mode: if net.mode == NetworkMode::Nat {
            "enforced"
        } else {
            "isolated"
        },
        enforcement_mode: "warren",
        policy: os_policy(&net.egress),
    })
}

async fn get_policy(
    State(os): State<Os>,
    Path(id): Path<String>,
) -> OsResult<Json<model::PolicyStatus>> {
    Ok(Json(policy_status(&os, &id).await?))
}

async fn set_policy(os: &Os, id: &str, p: &NetworkPolicy) -> OsResult<Json<model::PolicyStatus>> {
    os.engine
        .update_network(
            id,
            UpdateNetworkRequest {
                egress: egress_policy(p),
            },
        )
        .await?;
    Ok(Json(policy_status(os, id).await?))
}

async fn put_policy(
    State(os): State<Os>,
    Path(id): Path<String>,
    req: Result<Json<NetworkPolicy>, JsonRejection>,
) -> OsResult<Json<model::PolicyStatus>> {
    let p = body(req)?;
    set_policy(&os, &id, &p).await
}

/// Merge rules: a rule replaces the one with its target, others are appended.
async fn patch_policy(
    State(os): State<Os>,
    Path(id): Path<String>,
    req: Result<Json<Vec<NetworkRule>>, JsonRejection>,
) -> OsResult<Json<model::PolicyStatus>> {
    let rules = body(req)?;
    let mut p = os_policy(&os.engine.network(&id).await?.egress);
    for r in rules {
        match p.egress.iter_mut().find(|e| e.target == r.target) {
            Some(e) => e.action = r.action,
            None => p.egress.push(r),
        }
    }
    set_policy(&os, &id, &p).await
}

async fn delete_rules(
    State(os): State<Os>,
    Path(id): Path<String>,
    req: Result<Json<Vec<String>>, JsonRejection>,
) -> OsResult<Json<model::PolicyStatus>> {
    let targets = body(req)?;
    let mut p = os_policy(&os.engine.network(&id).await?.egress);
    p.egress.retain(|r| !targets.contains(&r.target));
    set_policy(&os, &id, &p).await
}

fn to_snapshot(s: &warren_api::Snapshot) -> model::Snapshot {
    model::Snapshot {
        id: s.id.clone(),
        sandbox_id: s.sandbox_id.clone(),
        name: s.name.clone(),
        status: model::Status {
            state: "Ready",
            reason: None,
            message: None,
            last_transition_at: s.created_at,
        },
        created_at: s.created_at,
    }
}

async fn create_snapshot(
    State(os): State<Os>,
    Path(id): Path<String>,
    req: axum::body::Bytes,
) -> OsResult<Response> {
    let name = crate::error::optional_json::<model::CreateSnapshot>(&req)?.name;
    let snap = os
        .engine
        .create_snapshot(&id, CreateSnapshotRequest { name })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(to_snapshot(&snap))).into_response())
}

async fn list_snapshots(
    State(os): State<Os>,
    RawQuery(q): RawQuery,
) -> OsResult<Json<model::Page<model::Snapshot>>> {
    let pairs = pairs(&q);
    let (page, size) = page_params(&pairs)?;
    let param = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let sandbox = param("sandboxId");
    let name = param("name");
    let state = param("state");
    let items: Vec<model::Snapshot> = os
        .engine
        .list_snapshots(sandbox.as_deref())
        .await?
        .iter()
        .filter(|s| name.as_ref().is_none_or(|n| s.name.as_ref() == Some(n)))
        .map(to_snapshot)
        .filter(|s| {
            state
                .as_ref()
                .is_none_or(|st| st.eq_ignore_ascii_case(s.status.state))
        })
        .collect();
    Ok(Json(model::paginate(items, page, size)))
}

async fn get_snapshot(
    State(os): State<Os>,
    Path(id): Path<String>,
) -> OsResult<Json<model::Snapshot>> {
    Ok(Json(to_snapshot(&os.engine.get_snapshot(&id).await?)))
}

async fn delete_snapshot(State(os): State<Os>, Path(id): Path<String>) -> OsResult<StatusCode> {
    os.engine.delete_snapshot(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The SDK reports each create's latency; accepted and logged.
async fn metrics_event(body: axum::body::Bytes) -> StatusCode {
    tracing::debug!(event = %String::from_utf8_lossy(&body), "opensandbox client metrics event");
    StatusCode::NO_CONTENT
}

async fn templates() -> OsError {
    OsError::unsupported(
        "OpenSandbox's fsb templates are not supported: build Warren templates (warren build) and use their name as image.uri",
    )
}
