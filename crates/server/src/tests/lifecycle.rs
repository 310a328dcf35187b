//! Pause/resume/stop/start, stats, snapshots, rollback, fork and lifecycle events over the
//! fake runtime.

use std::time::Duration;

use super::*;
use warren_api::{SandboxEvent, SandboxState, SandboxStats, Snapshot};

async fn op(a: &App, id: &str, verb: &str, body: Option<&str>) -> (StatusCode, Value) {
    a.call(Method::POST, &format!("/v1/sandboxes/{id}/{verb}"), body)
        .await
}

/// `verb` must succeed; returns the sandbox's state.
async fn op_ok(a: &App, id: &str, verb: &str) -> SandboxState {
    let (status, v) = op(a, id, verb, None).await;
    assert_eq!(status, StatusCode::OK, "{verb}: {v}");
    let sb: Sandbox = serde_json::from_value(v).unwrap();
    sb.state
}

async fn state_of(a: &App, id: &str) -> SandboxState {
    let (status, v) = a
        .call(Method::GET, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    serde_json::from_value::<Sandbox>(v).unwrap().state
}

async fn echo(a: &App, id: &str) -> (StatusCode, Value) {
    a.exec(id, json!({"cmd": ["echo", "hi"]})).await
}

async fn put_file(a: &App, id: &str, path: &str, content: &str) {
    let req = Request::put(format!("/v1/sandboxes/{id}/files?path={path}"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(content.to_string()))
        .unwrap();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn read_file(a: &App, id: &str, path: &str) -> String {
    let req = Request::get(format!("/v1/sandboxes/{id}/files?path={path}"))
        .body(Body::empty())
        .unwrap();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn snapshot(a: &App, id: &str, body: Option<&str>) -> Snapshot {
    let (status, v) = a
        .call(Method::POST, &format!("/v1/sandboxes/{id}/snapshots"), body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    serde_json::from_value(v).unwrap()
}

/// The ids in a list, sorted (snapshots taken within the same millisecond have no order).
fn ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn sorted<const N: usize>(ids: [&str; N]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn pause_resume_stop_start() {
    let a = app().await;
    let id = a.create("{}").await.id;

    assert_eq!(op_ok(&a, &id, "pause").await, SandboxState::Paused);
    // Repeating is a no-op success; `{}` is as good as no body.
    let (status, v) = op(&a, &id, "pause", Some("{}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "paused");
    assert_eq!(state_of(&a, &id).await, SandboxState::Paused);
    let (status, v) = echo(&a, &id).await;
    assert_error(status, &v, StatusCode::CONFLICT, "sandbox_paused");
    // Starting a paused sandbox is not a thing.
    let (status, v) = op(&a, &id, "start", None).await;
    assert_error(status, &v, StatusCode::CONFLICT, "invalid_transition");

    assert_eq!(op_ok(&a, &id, "resume").await, SandboxState::Running);
    assert_eq!(op_ok(&a, &id, "resume").await, SandboxState::Running);
    assert_eq!(op_ok(&a, &id, "start").await, SandboxState::Running);
    let (status, v) = echo(&a, &id).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    assert_eq!(op_ok(&a, &id, "stop").await, SandboxState::Stopped);
    assert_eq!(op_ok(&a, &id, "stop").await, SandboxState::Stopped);
    let (status, v) = echo(&a, &id).await;
    assert_error(status, &v, StatusCode::CONFLICT, "sandbox_stopped");
    let (status, v) = op(&a, &id, "resume", None).await;
    assert_error(status, &v, StatusCode::CONFLICT, "invalid_transition");
    let (status, v) = op(&a, &id, "pause", None).await;
    assert_error(status, &v, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(op_ok(&a, &id, "start").await, SandboxState::Running);
    let (status, v) = echo(&a, &id).await;
    assert_eq!(status, StatusCode::OK, "{v}");

    // A paused sandbox can be stopped, and deleted.
    assert_eq!(op_ok(&a, &id, "pause").await, SandboxState::Paused);
    assert_eq!(op_ok(&a, &id, "stop").await, SandboxState::Stopped);
    let (status, _) = a
        .call(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for verb in ["pause", "resume", "stop", "start"] {
        let (status, v) = op(&a, &id, verb, None).await;
        assert_error(status, &v, StatusCode::NOT_FOUND, "sandbox_not_found");
    }
}

#[tokio::test]
async fn transition_bodies_must_be_empty_objects() {
    let a = app().await;
    let id = a.create("{}").await.id;
    for body in [r#"{"force":true}"#, "[]", "{", "null", "3"] {
        let (status, v) = op(&a, &id, "pause", Some(body)).await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
    // A body without a JSON content type is refused; an empty one is fine either way.
    let req = Request::post(format!("/v1/sandboxes/{id}/pause"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(a.send(req).await.status(), StatusCode::BAD_REQUEST);
    let req = Request::post(format!("/v1/sandboxes/{id}/pause"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("  \n"))
        .unwrap();
    assert_eq!(a.send(req).await.status(), StatusCode::OK);
    assert_eq!(state_of(&a, &id).await, SandboxState::Paused);
}

#[tokio::test]
async fn auto_resume_wakes_the_sandbox() {
    let a = app().await;
    let sb = a.create(r#"{"auto_resume":true}"#).await;
    assert!(sb.auto_resume);
    let id = sb.id;
    assert_eq!(op_ok(&a, &id, "pause").await, SandboxState::Paused);
    let (status, v) = echo(&a, &id).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["stdout"], "hi\n");
    assert_eq!(state_of(&a, &id).await, SandboxState::Running);

    assert_eq!(op_ok(&a, &id, "stop").await, SandboxState::Stopped);
    put_file(&a, &id, "/workspace/a.txt", "x").await;
    assert_eq!(state_of(&a, &id).await, SandboxState::Running);
}

#[tokio::test]
async fn stats_report_usage() {
    let a = app().await;
    let id = a.create("{}").await.id;
    a.t.runtime.set_cpu_usage(&id, 1234);
    let (status, v) = a
        .call(Method::GET, &format!("/v1/sandboxes/{id}/stats"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let stats: SandboxStats = serde_json::from_value(v).unwrap();
    assert_eq!(stats.state, Some(SandboxState::Running));
    assert_eq!(stats.cpu_usage_us, 1234);
    op_ok(&a, &id, "stop").await;
    let (status, v) = a
        .call(Method::GET, &format!("/v1/sandboxes/{id}/stats"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "stopped");
    let (status, v) = a.call(Method::GET, "/v1/sandboxes/nope/stats", None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "sandbox_not_found");
}

#[tokio::test]
async fn snapshots_restore_rollback_and_delete() {
    let a = app().await;
    let id = a.create("{}").await.id;
    let other = a.create("{}").await.id;
    put_file(&a, &id, "/workspace/state.txt", "v1").await;

    let snap = snapshot(&a, &id, Some(r#"{"name":"before"}"#)).await;
    assert!(snap.id.starts_with("snap"), "{}", snap.id);
    assert_eq!(snap.sandbox_id, id);
    assert_eq!(snap.name.as_deref(), Some("before"));
    assert!(!snap.backend.is_empty());
    assert!(snap.size_bytes >= 2, "{snap:?}");
    // No body at all works too.
    let unnamed = snapshot(&a, &id, None).await;
    assert_eq!(unnamed.name, None);
    let theirs = snapshot(&a, &other, Some("{}")).await;

    put_file(&a, &id, "/workspace/state.txt", "v2").await;

    // Listing: all, filtered, per sandbox.
    let (status, v) = a.call(Method::GET, "/v1/snapshots", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(ids(&v), sorted([&snap.id, &unnamed.id, &theirs.id]));
    let (_, v) = a
        .call(Method::GET, &format!("/v1/snapshots?sandbox_id={id}"), None)
        .await;
    assert_eq!(ids(&v), sorted([&snap.id, &unnamed.id]));
    let (_, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{other}/snapshots"),
            None,
        )
        .await;
    assert_eq!(ids(&v), [theirs.id.as_str()]);
    let (_, v) = a
        .call(Method::GET, "/v1/snapshots?sandbox_id=sb-none", None)
        .await;
    assert_eq!(v, json!([]));
    let (status, v) = a.call(Method::GET, "/v1/snapshots?sandbox=x", None).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, v) = a
        .call(Method::GET, "/v1/sandboxes/nope/snapshots", None)
        .await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "sandbox_not_found");
    let (status, v) = a
        .call(Method::GET, &format!("/v1/snapshots/{}", snap.id), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(serde_json::from_value::<Snapshot>(v).unwrap(), snap);

    // Restore: a new sandbox with the snapshot's files.
    let restored = a.create(&json!({ "snapshot": snap.id }).to_string()).await;
    assert_eq!(restored.snapshot.as_deref(), Some(snap.id.as_str()));
    assert_eq!(
        read_file(&a, &restored.id, "/workspace/state.txt").await,
        "v1"
    );
    assert_eq!(read_file(&a, &id, "/workspace/state.txt").await, "v2");

    // Rollback: the sandbox gets the old content back and runs again.
    let (status, v) = a
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/rollback"),
            Some(&json!({ "snapshot": snap.id }).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "running");
    assert_eq!(read_file(&a, &id, "/workspace/state.txt").await, "v1");

    // A stopped sandbox stays stopped.
    op_ok(&a, &other, "stop").await;
    let (status, v) = a
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{other}/rollback"),
            Some(&json!({ "snapshot": snap.id }).to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "stopped");

    // Delete: 204, then 404 everywhere.
    let uri = format!("/v1/snapshots/{}", snap.id);
    let (status, v) = a.call(Method::DELETE, &uri, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let (status, v) = a.call(Method::DELETE, &uri, None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "snapshot_not_found");
    let (status, v) = a.call(Method::GET, &uri, None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "snapshot_not_found");
    // The restored sandbox does not depend on it.
    assert_eq!(
        read_file(&a, &restored.id, "/workspace/state.txt").await,
        "v1"
    );
    // Snapshots outlive their sandbox.
    let (status, _) = a
        .call(Method::DELETE, &format!("/v1/sandboxes/{other}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{other}/snapshots"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(ids(&v), [theirs.id.as_str()]);
}

#[tokio::test]
async fn snapshot_errors() {
    let a = app().await;
    let id = a.create("{}").await.id;
    let (status, v) = a
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(r#"{"snapshot":"snap-nope"}"#),
        )
        .await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "snapshot_not_found");
    let (_, v) = a.call(Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(ids(&v), [id.as_str()], "a failed restore leaves nothing");
    let rollback = format!("/v1/sandboxes/{id}/rollback");
    let (status, v) = a
        .call(Method::POST, &rollback, Some(r#"{"snapshot":"snap-nope"}"#))
        .await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "snapshot_not_found");
    assert_eq!(state_of(&a, &id).await, SandboxState::Running);
    for body in [Some("{}"), Some(r#"{"snapshot":1}"#), Some("{"), None] {
        let (status, v) = a.call(Method::POST, &rollback, body).await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let snaps = format!("/v1/sandboxes/{id}/snapshots");
    for body in [r#"{"label":"x"}"#, r#"{"name":5}"#, "[]"] {
        let (status, v) = a.call(Method::POST, &snaps, Some(body)).await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let long = json!({ "name": "n".repeat(200) }).to_string();
    let (status, v) = a.call(Method::POST, &snaps, Some(&long)).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, v) = a
        .call(Method::POST, "/v1/sandboxes/nope/snapshots", None)
        .await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "sandbox_not_found");
    let (status, v) = a
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/fork"),
            Some(r#"{"image":"x"}"#),
        )
        .await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(a.t.runtime.snapshot_ids().is_empty());
}

#[tokio::test]
async fn fork_diverges() {
    let a = app().await;
    let src = a
        .create(r#"{"metadata":{"team":"a"},"timeout_secs":120}"#)
        .await;
    put_file(&a, &src.id, "/workspace/f.txt", "shared").await;

    let (status, v) = a
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{}/fork", src.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let fork: Sandbox = serde_json::from_value(v).unwrap();
    assert_ne!(fork.id, src.id);
    assert_eq!(fork.state, SandboxState::Running);
    assert_eq!(fork.metadata, src.metadata);
    assert_eq!(fork.timeout_secs, 120);
    assert_eq!(read_file(&a, &fork.id, "/workspace/f.txt").await, "shared");

    put_file(&a, &fork.id, "/workspace/f.txt", "fork").await;
    put_file(&a, &src.id, "/workspace/g.txt", "src only").await;
    assert_eq!(read_file(&a, &src.id, "/workspace/f.txt").await, "shared");
    assert_eq!(read_file(&a, &fork.id, "/workspace/f.txt").await, "fork");
    let req = Request::get(format!(
        "/v1/sandboxes/{}/files/stat?path=/workspace/g.txt",
        fork.id
    ))
    .body(Body::empty())
    .unwrap();
    assert_eq!(a.send(req).await.status(), StatusCode::NOT_FOUND);

    // Overrides; the fork's temporary snapshot is not kept.
    let (status, v) = a
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{}/fork", src.id),
            Some(r#"{"metadata":{"team":"b"},"timeout_secs":60}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["metadata"]["team"], "b");
    assert_eq!(v["timeout_secs"], 60);
    assert!(a.t.runtime.snapshot_ids().is_empty());
    let (_, v) = a.call(Method::GET, "/v1/snapshots", None).await;
    assert_eq!(v, json!([]));
    let (status, v) = a.call(Method::POST, "/v1/sandboxes/nope/fork", None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "sandbox_not_found");
}

/// Reads Server-Sent Events off a streaming response, one at a time, with a timeout.
struct SseReader {
    body: Body,
    buf: String,
}

impl SseReader {
    async fn open(a: &App, uri: &str, last_id: Option<&str>) -> SseReader {
        let mut b = Request::get(uri);
        if let Some(l) = last_id {
            b = b.header("last-event-id", l);
        }
        let resp = a.send(b.body(Body::empty()).unwrap()).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        SseReader {
            body: resp.into_body(),
            buf: String::new(),
        }
    }

    /// The next event (comments skipped); `None` when the stream ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(ev) = parse_sse(&block).pop() {
                    return Some(ev);
                }
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), self.body.frame())
                .await
                .expect("no SSE event within 5 s");
            match frame {
                None => return None,
                Some(f) => {
                    if let Ok(data) = f.unwrap().into_data() {
                        self.buf.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
            }
        }
    }

    async fn event(&mut self) -> (Sse, SandboxEvent) {
        let sse = self.next().await.expect("the stream ended");
        assert_ne!(sse.event, "lost", "{sse:?}");
        let ev: SandboxEvent = serde_json::from_str(&sse.data).unwrap();
        assert_eq!(sse.id, ev.seq.to_string());
        (sse, ev)
    }
}

/// (event name, state) of an event.
fn shape(sse: &Sse, ev: &SandboxEvent) -> (String, Option<SandboxState>) {
    (sse.event.clone(), ev.state)
}

#[tokio::test]
async fn sandbox_events_replay_follow_and_resume() {
    let a = app().await;
    let id = a.create("{}").await.id;
    let uri = format!("/v1/sandboxes/{id}/events");
    let mut s = SseReader::open(&a, &uri, None).await;
    let (created, ev) = s.event().await;
    assert_eq!(
        shape(&created, &ev),
        ("created".into(), Some(SandboxState::Creating))
    );
    assert_eq!(ev.sandbox_id, id);
    let (running, ev) = s.event().await;
    assert_eq!(
        shape(&running, &ev),
        ("state".into(), Some(SandboxState::Running))
    );
    assert_eq!(ev.previous, Some(SandboxState::Creating));
    op_ok(&a, &id, "pause").await;
    let (pausing, ev) = s.event().await;
    assert_eq!(
        shape(&pausing, &ev),
        ("state".into(), Some(SandboxState::Pausing))
    );
    assert_eq!(ev.reason.as_deref(), Some("api"));
    let (sse, ev) = s.event().await;
    assert_eq!(
        shape(&sse, &ev),
        ("state".into(), Some(SandboxState::Paused))
    );
    let paused_seq = ev.seq;

    // Last-Event-ID resumes right after that event (and wins over ?after=).
    let mut r = SseReader::open(&a, &format!("{uri}?after=0"), Some(&running.id)).await;
    let (sse, ev) = r.event().await;
    assert_eq!(sse.id, pausing.id);
    assert_eq!(ev.state, Some(SandboxState::Pausing));
    let mut q = SseReader::open(&a, &format!("{uri}?after={}", pausing.id), None).await;
    let (_, ev) = q.event().await;
    assert_eq!(ev.seq, paused_seq);

    // Snapshot events name the snapshot; the stream ends with the sandbox's deletion.
    let snap = snapshot(&a, &id, None).await;
    let (sse, ev) = s.event().await;
    assert_eq!(sse.event, "snapshot_created");
    assert_eq!(ev.snapshot.as_deref(), Some(snap.id.as_str()));
    let (status, _) = a
        .call(Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let mut last = None;
    while let Some(sse) = s.next().await {
        last = Some(sse);
    }
    assert_eq!(last.map(|s| s.event).as_deref(), Some("deleted"));

    // A deleted sandbox's kept events can still be read; the stream ends by itself.
    let mut d = SseReader::open(&a, &uri, None).await;
    let mut names = Vec::new();
    while let Some(sse) = d.next().await {
        names.push(sse.event);
    }
    assert_eq!(names.first().map(String::as_str), Some("created"));
    assert_eq!(names.last().map(String::as_str), Some("deleted"));
}

#[tokio::test]
async fn global_events_carry_every_sandbox() {
    let a = app().await;
    let old = a.create("{}").await.id;
    // Without a resume point, the global stream starts with the next event.
    let mut s = SseReader::open(&a, "/v1/events", None).await;
    let one = a.create("{}").await.id;
    let two = a.create("{}").await.id;
    op_ok(&a, &old, "stop").await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let (sse, ev) = s.event().await;
        seen.push((ev.sandbox_id.clone(), sse.event, ev.state));
    }
    let want =
        |id: &str, name: &str, st: SandboxState| (id.to_string(), name.to_string(), Some(st));
    assert_eq!(
        seen,
        [
            want(&one, "created", SandboxState::Creating),
            want(&one, "state", SandboxState::Running),
            want(&two, "created", SandboxState::Creating),
            want(&two, "state", SandboxState::Running),
            want(&old, "state", SandboxState::Stopping),
            want(&old, "state", SandboxState::Stopped),
        ]
    );
    // Resuming the global stream replays every sandbox's events after the seq.
    let mut r = SseReader::open(&a, "/v1/events?after=0", None).await;
    let (_, ev) = r.event().await;
    assert_eq!(
        (ev.sandbox_id.as_str(), ev.kind),
        (old.as_str(), warren_api::EventKind::Created)
    );
}

#[tokio::test]
async fn event_route_errors() {
    let a = app().await;
    let (status, v) = a.call(Method::GET, "/v1/sandboxes/nope/events", None).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "sandbox_not_found");
    let (status, v) = a.call(Method::GET, "/v1/events?since=3", None).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, v) = a.call(Method::GET, "/v1/events?after=x", None).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let req = Request::get("/v1/events")
        .header("last-event-id", "abc")
        .body(Body::empty())
        .unwrap();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn metadata_is_patched_key_by_key() {
    let a = app().await;
    let sb = a.create(r#"{"metadata":{"team":"a","task":"t1"}}"#).await;
    let uri = format!("/v1/sandboxes/{}/metadata", sb.id);
    let (s, v) = a
        .call(Method::PATCH, &uri, Some(r#"{"task":null,"owner":"me"}"#))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"], json!({"team": "a", "owner": "me"}));
    // Invalid: nothing changes.
    let (s, v) = a.call(Method::PATCH, &uri, Some(r#"{"":"x"}"#)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = a.call(Method::PATCH, &uri, Some(r#"{"k":1}"#)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, v) = a
        .call(Method::GET, &format!("/v1/sandboxes/{}", sb.id), None)
        .await;
    assert_eq!(v["metadata"], json!({"team": "a", "owner": "me"}));
    // A filter sees the new metadata.
    let (_, v) = a
        .call(Method::GET, "/v1/sandboxes?metadata.owner=me", None)
        .await;
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    let (s, _) = a
        .call(Method::PATCH, "/v1/sandboxes/sb-nope/metadata", Some("{}"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
