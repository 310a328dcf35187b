//! E2B's control plane onto the engine: create (with `Idempotency-Key`), list (metadata,
//! state, `limit` + `X-Next-Token`), get, kill, timeout, connect, pause, metrics,
//! snapshots, fork and network.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use chrono::Utc;
use warren_api::{
    CreateSandboxRequest, CreateSnapshotRequest, ForkRequest, NetworkMode, NetworkRequest,
    SandboxState, TimeoutAction, UpdateNetworkRequest,
};

use crate::error::{E2bError, E2bResult};
use crate::model::{self, Created, Detail};
use crate::{E2b, CLIENT_ID, ENVD_VERSION};

/// How long an `Idempotency-Key` is remembered.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
const MAX_FORKS: u32 = 100;
/// The template `base` (the SDK's default) stands for, unless aliased.
const BASE: &str = "base";

pub(crate) fn routes() -> Router<E2b> {
    Router::new()
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_one).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/snapshots", post(create_snapshot))
        .route("/snapshots", get(list_snapshots))
        .route("/templates/{id}", delete(delete_template))
        .route("/sandboxes/{id}/fork", post(fork))
        .route("/sandboxes/{id}/network", put(update_network))
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> E2bResult<T> {
    b.map(|Json(v)| v)
        .map_err(|e| E2bError::bad_request(format!("malformed JSON body: {}", e.body_text())))
}

/// A body whose every field is optional may be absent.
fn optional<T: serde::de::DeserializeOwned + Default>(b: &[u8]) -> E2bResult<T> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(b)
        .map_err(|e| E2bError::bad_request(format!("malformed JSON body: {e}")))
}

/// Every sandbox has an envd access token (E2B's SDK signs file URLs with it).
fn token(s: &E2b, id: &str) -> Option<String> {
    Some(s.token(id))
}

fn created(s: &E2b, sb: &warren_api::Sandbox) -> Created {
    Created {
        template_id: model::template_of(sb),
        sandbox_id: sb.id.clone(),
        client_id: CLIENT_ID,
        envd_version: ENVD_VERSION,
        envd_access_token: token(s, &sb.id),
        traffic_access_token: None,
        domain: None,
    }
}

fn detail(s: &E2b, sb: &warren_api::Sandbox) -> Detail {
    model::detail(sb, token(s, &sb.id))
}

/// What a `templateID` is: a snapshot of this server, or an image (an alias, `base`, a
/// template, a pulled or imported image). An unknown one is a 404.
async fn resolve_template(s: &E2b, template: &str) -> E2bResult<(Option<String>, Option<String>)> {
    if s.engine.get_snapshot(template).await.is_ok() {
        return Ok((None, Some(template.to_string())));
    }
    let image = match s.opts.image_aliases.get(template) {
        Some(i) => i.clone(),
        None if template == BASE => warren_api::DEFAULT_IMAGE.to_string(),
        None => template.to_string(),
    };
    let engine = s.engine.clone();
    let name = image.clone();
    match tokio::task::spawn_blocking(move || engine.get_image(&name)).await {
        Ok(Ok(_)) => Ok((Some(image), None)),
        Ok(Err(_)) => Err(E2bError::not_found(format!(
            "template '{template}' not found"
        ))),
        Err(e) => Err(E2bError::new(500, e.to_string())),
    }
}

async fn translate(s: &E2b, req: model::NewSandbox) -> E2bResult<CreateSandboxRequest> {
    let mut metadata = req.metadata.unwrap_or_default();
    if let Some(k) = metadata.keys().find(|k| k.starts_with(model::META_PREFIX)) {
        return Err(E2bError::bad_request(format!(
            "metadata key '{k}': keys starting with '{}' are Warren's",
            model::META_PREFIX
        )));
    }
    if req.mcp.as_ref().is_some_and(|m| !m.is_null()) {
        return Err(E2bError::bad_request(
            "MCP servers are not supported by Warren",
        ));
    }
    if req
        .iam
        .as_ref()
        .is_some_and(|i| !i.is_null() && i != &serde_json::json!({}))
    {
        return Err(E2bError::bad_request("iam is not supported by Warren"));
    }
    let volumes = req
        .volume_mounts
        .iter()
        .flatten()
        .map(|v| warren_api::VolumeMount {
            name: Some(v.name.clone()),
            host_path: None,
            path: v.path.clone(),
            read_only: false,
            sub_path: None,
        })
        .collect();
    let auto_resume = req.auto_resume.as_ref().is_some_and(|a| a.enabled);
    let pause_memory = req.auto_pause_memory.unwrap_or(true);
    if auto_resume && !pause_memory {
        return Err(E2bError::bad_request(
            "autoResume needs autoPauseMemory: a filesystem-only pause cannot resume on its own",
        ));
    }
    let on_timeout = match (req.auto_pause.unwrap_or(false), pause_memory) {
        (false, _) => None,
        (true, true) => Some(TimeoutAction::Pause),
        (true, false) => Some(TimeoutAction::Stop),
    };
    let (image, snapshot) = resolve_template(s, &req.template_id).await?;
    metadata.insert(model::META_TEMPLATE.into(), req.template_id.clone());
    let network = model::egress(req.allow_internet_access, req.network.as_ref())?.map(|egress| {
        NetworkRequest {
            mode: Some(NetworkMode::Nat),
            egress: Some(egress),
        }
    });
    Ok(CreateSandboxRequest {
        image,
        snapshot,
        env: req.env_vars.unwrap_or_default(),
        metadata,
        timeout_secs: req.timeout,
        on_timeout,
        auto_resume,
        network,
        volumes,
        ..Default::default()
    })
}

/// `POST /v2/sandboxes` → 201. A create retried with the same `Idempotency-Key` answers
/// the sandbox the first one made (while it exists) instead of making another; two at once
/// with one key make one sandbox (the second waits for the first).
async fn create(
    State(s): State<E2b>,
    headers: HeaderMap,
    req: Result<Json<model::NewSandbox>, JsonRejection>,
) -> E2bResult<Response> {
    let req = body(req)?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(str::to_string);
    let slot = match &key {
        Some(k) => {
            let mut map = s.idempotent.lock().await;
            map.retain(|_, (_, at)| at.elapsed() < IDEMPOTENCY_TTL);
            Some(
                map.entry(k.clone())
                    .or_insert_with(|| (Arc::default(), Instant::now()))
                    .0
                    .clone(),
            )
        }
        None => None,
    };
    let mut made = match &slot {
        Some(slot) => Some(slot.clone().lock_owned().await),
        None => None,
    };
    if let Some(id) = made.as_ref().and_then(|m| (**m).clone()) {
        if let Ok(sb) = s.engine.get(&id).await {
            return Ok((StatusCode::CREATED, Json(created(&s, &sb))).into_response());
        }
    }
    let create = translate(&s, req).await?;
    let sb = s.engine.create(create).await?;
    if let Some(m) = made.as_mut() {
        **m = Some(sb.id.clone());
    }
    Ok((StatusCode::CREATED, Json(created(&s, &sb))).into_response())
}

fn pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// A list position: creation time (ms) and id of the last item of the previous page.
fn cursor_of(d: &warren_api::Sandbox) -> String {
    format!("{}.{}", d.created_at.timestamp_millis(), d.id)
}

/// `GET /v2/sandboxes?metadata=k%3Dv%26k2%3Dv2&state=running,paused&limit=&nextToken=&order=`:
/// oldest first (`order=desc`: newest first); `X-Next-Token` when there is more.
async fn list(State(s): State<E2b>, RawQuery(q): RawQuery) -> E2bResult<Response> {
    let pairs = pairs(&q);
    let mut filter = BTreeMap::new();
    let mut states: Vec<String> = Vec::new();
    let mut limit = DEFAULT_LIMIT;
    let mut after: Option<String> = None;
    let mut desc = false;
    for (k, v) in &pairs {
        match k.as_str() {
            "metadata" => filter.extend(form_urlencoded::parse(v.as_bytes()).into_owned()),
            "state" => states.extend(
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            ),
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        E2bError::bad_request(format!("limit must be 1-{MAX_LIMIT}, got {v}"))
                    })?
            }
            "nextToken" => after = Some(v.clone()),
            "order" => match v.as_str() {
                "asc" => desc = false,
                "desc" => desc = true,
                other => {
                    return Err(E2bError::bad_request(format!(
                        "order '{other}' is not asc or desc"
                    )))
                }
            },
            _ => {}
        }
    }
    if let Some(bad) = states
        .iter()
        .find(|s| !matches!(s.as_str(), "running" | "paused"))
    {
        return Err(E2bError::bad_request(format!(
            "state '{bad}' is not running or paused"
        )));
    }
    let all = s.engine.list(&filter).await?;
    let mut items: Vec<&warren_api::Sandbox> = all
        .iter()
        .filter(|sb| !matches!(sb.state, SandboxState::Deleting))
        .filter(|sb| states.is_empty() || states.iter().any(|st| st == model::state_name(sb.state)))
        .collect();
    items.sort_by_key(|sb| (sb.created_at.timestamp_millis(), sb.id.clone()));
    if desc {
        items.reverse();
    }
    if let Some(after) = &after {
        let pos = after
            .split_once('.')
            .and_then(|(ms, id)| ms.parse::<i64>().ok().map(|ms| (ms, id.to_string())))
            .ok_or_else(|| E2bError::bad_request("nextToken is not one this server gave"))?;
        items.retain(|sb| {
            let key = (sb.created_at.timestamp_millis(), sb.id.clone());
            if desc {
                key < pos
            } else {
                key > pos
            }
        });
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let next = more.then(|| items.last().map(|sb| cursor_of(sb))).flatten();
    // A list item has no access token (E2B's `ListedSandbox`): get one sandbox for it.
    let body: Vec<Detail> = items.iter().map(|sb| model::detail(sb, None)).collect();
    let mut resp = Json(body).into_response();
    if let Some(n) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        resp.headers_mut().insert("x-next-token", n);
    }
    Ok(resp)
}

async fn get_one(State(s): State<E2b>, Path(id): Path<String>) -> E2bResult<Json<Detail>> {
    Ok(Json(detail(&s, &s.engine.get(&id).await?)))
}

async fn kill(State(s): State<E2b>, Path(id): Path<String>) -> E2bResult<StatusCode> {
    s.engine.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/timeout {timeout}`: the sandbox ends `timeout` seconds from now.
async fn set_timeout(
    State(s): State<E2b>,
    Path(id): Path<String>,
    req: Result<Json<model::Timeout>, JsonRejection>,
) -> E2bResult<StatusCode> {
    let t = body(req)?.timeout;
    s.engine.set_timeout(&id, t.max(1)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v2/sandboxes/{id}/connect {timeout}`: a paused sandbox is resumed (201), a
/// running one answered (200); its end is pushed to now + `timeout` if that is later,
/// never earlier.
async fn connect(
    State(s): State<E2b>,
    Path(id): Path<String>,
    req: axum::body::Bytes,
) -> E2bResult<Response> {
    let req: model::Connect = optional(&req)?;
    let timeout = req.timeout.unwrap_or(300);
    let max = s.engine.config().max_timeout_secs;
    if timeout > max {
        return Err(E2bError::bad_request(format!(
            "timeout {timeout} exceeds the server maximum of {max} seconds"
        )));
    }
    let sb = s.engine.get(&id).await?;
    let resumed = match sb.state {
        SandboxState::Paused | SandboxState::Pausing => {
            s.engine.resume(&id).await?;
            true
        }
        SandboxState::Stopped | SandboxState::Stopping => {
            s.engine.start(&id).await?;
            true
        }
        _ => false,
    };
    // At most the server's maximum (a day by default): no overflow here.
    let wanted = Utc::now() + chrono::Duration::seconds(i64::try_from(timeout).unwrap_or(0));
    let sb = if wanted > sb.expires_at || resumed {
        let current = s.engine.get(&id).await?;
        if wanted > current.expires_at {
            s.engine.set_timeout(&id, timeout.max(1)).await?
        } else {
            current
        }
    } else {
        sb
    };
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(created(&s, &sb))).into_response())
}

/// `POST /sandboxes/{id}/pause {memory}`: in memory (default) or filesystem-only (its
/// processes end; a connect starts it again). 409 if it is paused already.
async fn pause(
    State(s): State<E2b>,
    Path(id): Path<String>,
    req: axum::body::Bytes,
) -> E2bResult<StatusCode> {
    let req: model::Pause = optional(&req)?;
    let sb = s.engine.get(&id).await?;
    if model::state_name(sb.state) == "paused" {
        return Err(E2bError::new(
            409,
            format!("sandbox {id} is already paused"),
        ));
    }
    if req.memory.unwrap_or(true) {
        s.engine.pause(&id).await?;
    } else {
        s.engine.stop(&id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /sandboxes/{id}/metrics`: one sample, now (CPU use over a tenth of a second).
async fn metrics(
    State(s): State<E2b>,
    Path(id): Path<String>,
) -> E2bResult<Json<Vec<model::Metric>>> {
    let u = s.engine.usage(&id, Duration::from_millis(100)).await?;
    let (sb, b) = (&u.sandbox, &u.stats);
    let now = Utc::now();
    Ok(Json(vec![model::Metric {
        timestamp: now,
        timestamp_unix: now.timestamp(),
        cpu_count: u.cpus.ceil() as u64,
        cpu_used_pct: u.cpu_used_pct,
        mem_used: b.memory_bytes,
        mem_total: b
            .memory_limit_bytes
            .or(sb.resources.memory_mib.map(|m| m << 20))
            .unwrap_or(0),
        mem_cache: 0,
        disk_used: b.disk_bytes,
        disk_total: sb.resources.disk_mib.map_or(0, |m| m << 20),
    }]))
}

fn snapshot_info(snap: &warren_api::Snapshot) -> model::SnapshotInfo {
    model::SnapshotInfo {
        snapshot_id: snap.id.clone(),
        names: snap.name.iter().cloned().collect(),
    }
}

/// `POST /sandboxes/{id}/snapshots {name}` → 201; a create with the snapshot's id as its
/// `templateID` starts from it.
async fn create_snapshot(
    State(s): State<E2b>,
    Path(id): Path<String>,
    req: axum::body::Bytes,
) -> E2bResult<Response> {
    let req: model::SnapshotRequest = optional(&req)?;
    let snap = s
        .engine
        .create_snapshot(&id, CreateSnapshotRequest { name: req.name })
        .await?;
    Ok((StatusCode::CREATED, Json(snapshot_info(&snap))).into_response())
}

/// `GET /snapshots?sandboxID=&name=&limit=&nextToken=`.
async fn list_snapshots(State(s): State<E2b>, RawQuery(q): RawQuery) -> E2bResult<Response> {
    let pairs = pairs(&q);
    let param = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let sandbox = param("sandboxID");
    let name = param("name");
    let limit = match param("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                E2bError::bad_request(format!("limit must be 1-{MAX_LIMIT}, got {v}"))
            })?,
    };
    let after = param("nextToken");
    let mut snaps: Vec<warren_api::Snapshot> = s
        .engine
        .list_snapshots(sandbox.as_deref())
        .await?
        .into_iter()
        .filter(|sn| name.as_ref().is_none_or(|n| sn.name.as_ref() == Some(n)))
        .collect();
    snaps.sort_by_key(|sn| (sn.created_at, sn.id.clone()));
    if let Some(after) = &after {
        if let Some(pos) = snaps.iter().position(|sn| &sn.id == after) {
            snaps.drain(..=pos);
        }
    }
    let more = snaps.len() > limit;
    snaps.truncate(limit);
    let mut resp = Json(snaps.iter().map(snapshot_info).collect::<Vec<_>>()).into_response();
    if more {
        if let Some(v) = snaps
            .last()
            .and_then(|sn| HeaderValue::from_str(&sn.id).ok())
        {
            resp.headers_mut().insert("x-next-token", v);
        }
    }
    Ok(resp)
}

/// `DELETE /templates/{id}`: a snapshot (what the SDK deletes this way), or a Warren
/// template.
async fn delete_template(State(s): State<E2b>, Path(id): Path<String>) -> E2bResult<StatusCode> {
    if s.engine.get_snapshot(&id).await.is_ok() {
        s.engine.delete_snapshot(&id).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    match s.engine.delete_template(&id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e) if e.code() == warren_api::ErrorCode::ImageNotFound => Err(E2bError::not_found(
            format!("template or snapshot '{id}' not found"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// `POST /sandboxes/{id}/fork {timeout, count}` → 201 with one result per fork: a sandbox,
/// or the error that fork met (the others still made).
async fn fork(
    State(s): State<E2b>,
    Path(id): Path<String>,
    req: axum::body::Bytes,
) -> E2bResult<Response> {
    let req: model::Fork = optional(&req)?;
    let count = req.count.unwrap_or(1);
    if !(1..=MAX_FORKS).contains(&count) {
        return Err(E2bError::bad_request(format!(
            "count must be 1-{MAX_FORKS}, got {count}"
        )));
    }
    s.engine.get(&id).await?;
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let r = s
            .engine
            .fork(
                &id,
                ForkRequest {
                    timeout_secs: req.timeout,
                    ..Default::default()
                },
            )
            .await;
        out.push(match r {
            Ok(sb) => model::ForkResult {
                sandbox: Some(created(&s, &sb)),
                error: None,
            },
            Err(e) => model::ForkResult {
                sandbox: None,
                error: Some(e.into()),
            },
        });
    }
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

/// `PUT /sandboxes/{id}/network {allowOut, denyOut, allow_internet_access}`: the egress
/// policy, replaced live.
async fn update_network(
    State(s): State<E2b>,
    Path(id): Path<String>,
    req: Result<Json<model::Network>, JsonRejection>,
) -> E2bResult<StatusCode> {
    let net = body(req)?;
    let egress = model::egress(None, Some(&net))?.unwrap_or_default();
    s.engine
        .update_network(&id, UpdateNetworkRequest { egress })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
