//! Pause/stop/start, auto_resume, deadlines, snapshots, timeouts, idleness, events and
//! restart reconciliation, on the fake runtime.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use warren_api::{
    CreateSandboxRequest, CreateSnapshotRequest, EventKind, ExecUser, ForkRequest, IdleAction,
    RollbackRequest, SandboxState, TimeoutAction,
};

use super::{body, config, engine, engine_with, exec, read_all, TestDir};
use crate::{Engine, EngineError, EventItem};
use warren_testkit::fake::{FakeRuntime, FakeState};

async fn put(e: &Engine, id: &str, path: &str, data: &'static str) {
    e.write_file(
        id,
        path,
        None,
        ExecUser::Root,
        body(vec![Ok(bytes::Bytes::from_static(data.as_bytes()))]),
    )
    .await
    .unwrap();
}

async fn get(e: &Engine, id: &str, path: &str) -> String {
    String::from_utf8(read_all(e, id, path).await.unwrap()).unwrap()
}

fn code<T>(r: Result<T, EngineError>) -> &'static str {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.code().as_str(),
    }
}

#[tokio::test]
async fn transitions_noops_and_invalid_ones() {
    let (e, rt, _d) = engine().await;
    let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    let id = id.as_str();

    assert_eq!(e.pause(id).await.unwrap().state, SandboxState::Paused);
    assert_eq!(rt.state(id), Some(FakeState::Paused));
    // Repeating a completed transition is a no-op success.
    assert_eq!(e.pause(id).await.unwrap().state, SandboxState::Paused);
    assert_eq!(code(e.start(id).await), "invalid_transition");
    assert_eq!(code(e.exec(id, exec(&["echo"])).await), "sandbox_paused");
    assert_eq!(code(e.stat(id, "/workspace").await), "sandbox_paused");
    assert_eq!(e.resume(id).await.unwrap().state, SandboxState::Running);
    assert_eq!(e.resume(id).await.unwrap().state, SandboxState::Running);
    assert_eq!(e.start(id).await.unwrap().state, SandboxState::Running);

    put(&e, id, "/workspace/f", "kept").await;
    // Stop from paused works too.
    e.pause(id).await.unwrap();
    assert_eq!(e.stop(id).await.unwrap().state, SandboxState::Stopped);
    assert_eq!(e.stop(id).await.unwrap().state, SandboxState::Stopped);
    assert_eq!(code(e.pause(id).await), "invalid_transition");
    assert_eq!(code(e.resume(id).await), "invalid_transition");
    assert_eq!(code(e.exec(id, exec(&["echo"])).await), "sandbox_stopped");
    assert_eq!(e.start(id).await.unwrap().state, SandboxState::Running);
    assert_eq!(get(&e, id, "/workspace/f").await, "kept");

    assert_eq!(code(e.pause("sb-nope").await), "sandbox_not_found");
    e.delete(id).await.unwrap();
}

#[tokio::test]
async fn auto_resume_resumes_and_starts() {
    let (e, _rt, _d) = engine().await;
    let id = e
        .create(CreateSandboxRequest {
            auto_resume: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let id = id.as_str();
    e.pause(id).await.unwrap();
    let out = e.collect(e.exec(id, exec(&["echo", "hi"])).await.unwrap());
    assert_eq!(out.await.unwrap().stdout, b"hi\n");
    assert_eq!(e.get(id).await.unwrap().state, SandboxState::Running);
    e.stop(id).await.unwrap();
    put(&e, id, "/workspace/g", "x").await;
    assert_eq!(e.get(id).await.unwrap().state, SandboxState::Running);
    e.delete(id).await.unwrap();
}

#[tokio::test]
async fn missed_deadline_fails_and_delete_still_works() {
    let mut c = config();
    c.deadlines.pause = Duration::from_millis(50);
    let (e, rt, _d) = engine_with(c).await;
    let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    rt.set_op_delay(Duration::from_millis(400));
    let err = e.pause(&id).await.unwrap_err();
    assert!(err.to_string().contains("did not finish"), "{err}");
    let sb = e.get(&id).await.unwrap();
    assert_eq!(sb.state, SandboxState::Failed);
    assert!(sb.failure_reason.unwrap().contains("pause"));
    e.delete(&id).await.unwrap();
    assert!(rt.live().is_empty());
}

#[tokio::test]
async fn delete_during_a_slow_transition_waits_and_wins() {
    let (e, rt, _d) = engine().await;
    let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    rt.set_op_delay(Duration::from_millis(200));
    let pausing = {
        let e = e.clone();
        let id = id.clone();
        tokio::spawn(async move { e.pause(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(e.get(&id).await.unwrap().state, SandboxState::Pausing);
    e.delete(&id).await.unwrap();
    assert!(e.get(&id).await.is_err());
    assert!(pausing.await.unwrap().is_err());
    assert!(rt.live().is_empty());
}

#[tokio::test]
async fn snapshots_restore_rollback_fork() {
    let (e, rt, _d) = engine().await;
    let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    let id = id.as_str();
    put(&e, id, "/workspace/a", "one").await;
    let s1 = e
        .create_snapshot(
            id,
            CreateSnapshotRequest {
                name: Some("first".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!((s1.sandbox_id.as_str(), s1.size_bytes), (id, 3));
    assert_eq!(e.get(id).await.unwrap().state, SandboxState::Running);
    put(&e, id, "/workspace/a", "two").await;
    put(&e, id, "/workspace/b", "new").await;

    // Restore as a new sandbox.
    let r = e
        .create(CreateSandboxRequest {
            snapshot: Some(s1.id.clone()),
            env: [("X".to_string(), "y".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.snapshot.as_deref(), Some(s1.id.as_str()));
    assert_eq!(get(&e, &r.id, "/workspace/a").await, "one");
    assert_eq!(code(e.stat(&r.id, "/workspace/b").await), "file_not_found");

    // Fork: same files as now, then independent.
    let f = e.fork(id, ForkRequest::default()).await.unwrap();
    assert_eq!(get(&e, &f.id, "/workspace/a").await, "two");
    put(&e, &f.id, "/workspace/a", "fork").await;
    assert_eq!(get(&e, id, "/workspace/a").await, "two");
    // The fork's own snapshot is not kept.
    assert_eq!(rt.snapshot_ids(), vec![s1.id.clone()]);

    // Roll back in place: comes back running with the snapshot's files.
    let sb = e
        .rollback(
            id,
            RollbackRequest {
                snapshot: s1.id.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(sb.state, SandboxState::Running);
    assert_eq!(get(&e, id, "/workspace/a").await, "one");
    assert_eq!(code(e.stat(id, "/workspace/b").await), "file_not_found");

    // Listing, filters, unknown ids.
    let s2 = e
        .create_snapshot(&f.id, CreateSnapshotRequest::default())
        .await
        .unwrap();
    assert_eq!(e.list_snapshots(None).await.unwrap().len(), 2);
    assert_eq!(
        e.list_snapshots(Some(&f.id)).await.unwrap(),
        vec![s2.clone()]
    );
    assert_eq!(
        code(
            e.create(CreateSandboxRequest {
                snapshot: Some("snap-nope".into()),
                ..Default::default()
            })
            .await
        ),
        "snapshot_not_found"
    );
    assert_eq!(
        code(
            e.rollback(
                id,
                RollbackRequest {
                    snapshot: "snap-nope".into()
                }
            )
            .await
        ),
        "snapshot_not_found"
    );
    // A snapshot outlives its sandbox and can always be deleted.
    e.delete(&f.id).await.unwrap();
    assert_eq!(e.get_snapshot(&s2.id).await.unwrap(), s2);
    e.delete_snapshot(&s2.id).await.unwrap();
    assert_eq!(code(e.delete_snapshot(&s2.id).await), "snapshot_not_found");
    assert_eq!(rt.snapshot_ids(), vec![s1.id.clone()]);
    assert_eq!(
        code(
            e.create_snapshot(
                id,
                CreateSnapshotRequest {
                    name: Some("\n".into())
                }
            )
            .await
        ),
        "invalid_request"
    );
}

#[tokio::test]
async fn snapshot_in_use_cannot_be_deleted() {
    let (e, rt, _d) = engine().await;
    let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    let s = e
        .create_snapshot(&id, CreateSnapshotRequest::default())
        .await
        .unwrap();
    rt.set_create_delay(Duration::from_millis(300));
    let restoring = {
        let e = e.clone();
        let snap = s.id.clone();
        tokio::spawn(async move {
            e.create(CreateSandboxRequest {
                snapshot: Some(snap),
                ..Default::default()
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(code(e.delete_snapshot(&s.id).await), "snapshot_in_use");
    restoring.await.unwrap().unwrap();
    e.delete_snapshot(&s.id).await.unwrap();
}

#[tokio::test]
async fn timeout_pauses_then_deletes() {
    let (e, _rt, _d) = engine().await;
    let id = e
        .create(CreateSandboxRequest {
            timeout_secs: Some(1),
            on_timeout: Some(TimeoutAction::Pause),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let mut events = e.events(Some(&id), None).unwrap();
    let _reaper = e.spawn_reaper();
    let mut kinds = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(EventItem::Event(ev))) =
        tokio::time::timeout_at(deadline, events.next()).await
    {
        kinds.push((ev.kind, ev.state));
        if ev.kind == EventKind::Deleted {
            break;
        }
    }
    use EventKind::*;
    use SandboxState as S;
    assert_eq!(
        kinds,
        vec![
            (Created, Some(S::Creating)),
            (State, Some(S::Running)),
            (Expired, None),
            (State, Some(S::Pausing)),
            (State, Some(S::Paused)),
            (Expired, None),
            (State, Some(S::Deleting)),
            (Deleted, None),
        ]
    );
}

#[tokio::test]
async fn idle_means_no_cpu_no_stream_no_call() {
    let mut c = config();
    c.reap_interval = Duration::from_millis(100);
    let (e, rt, _d) = engine_with(c).await;
    let req = CreateSandboxRequest {
        idle_timeout_secs: Some(1),
        on_idle: Some(IdleAction::Stop),
        ..Default::default()
    };
    let busy = e.create(req.clone()).await.unwrap().id;
    let attached = e.create(req.clone()).await.unwrap().id;
    let proxied = e.create(req.clone()).await.unwrap().id;
    let idle = e.create(req).await.unwrap().id;
    // A stream that stays open (the fake `sleep` never exits).
    let stream = e.exec(&attached, exec(&["sleep"])).await.unwrap();
    // An open connection to a port inside (a dev server in use through the proxy).
    let conn = e
        .connect_port(&proxied, warren_testkit::fake::ports::ECHO_PORT)
        .await
        .unwrap();
    let _reaper = e.spawn_reaper();
    let mut cpu = 0;
    for _ in 0..30 {
        // 50% of a core.
        cpu += 50_000;
        rt.set_cpu_usage(&busy, cpu);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(e.get(&idle).await.unwrap().state, SandboxState::Stopped);
    assert_eq!(e.get(&busy).await.unwrap().state, SandboxState::Running);
    assert_eq!(e.get(&attached).await.unwrap().state, SandboxState::Running);
    assert_eq!(e.get(&proxied).await.unwrap().state, SandboxState::Running);
    drop(stream);
    drop(conn);
    // Now only API silence and CPU keep it: both gone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(e.get(&attached).await.unwrap().state, SandboxState::Stopped);
    assert_eq!(e.get(&proxied).await.unwrap().state, SandboxState::Stopped);
}

async fn reopen(dir: &TestDir, rt: &Arc<FakeRuntime>) -> Engine {
    let mut c = config();
    c.data_dir = dir.0.clone();
    Engine::open(c, rt.clone()).await.unwrap()
}

#[tokio::test]
async fn restart_adopts_what_runs_and_cleans_the_rest() {
    let (e, rt, dir) = engine().await;
    let running = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    put(&e, &running, "/workspace/f", "data").await;
    let paused = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    e.pause(&paused).await.unwrap();
    let stopped = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    e.stop(&stopped).await.unwrap();
    let broken = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    rt.break_sandbox(&broken);
    let gone = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    // Crashed mid-pause: the record says pausing, the runtime still runs it.
    let half_paused = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    e.inner
        .store
        .set_state(&half_paused, SandboxState::Pausing, None)
        .await
        .unwrap();
    // Crashed mid-create: a record in `creating`.
    let half_made = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    e.inner
        .store
        .set_state(&half_made, SandboxState::Creating, None)
        .await
        .unwrap();
    let snap = e
        .create_snapshot(&running, CreateSnapshotRequest::default())
        .await
        .unwrap();
    drop(e);
    use warren_runtime::Runtime;
    rt.destroy(&warren_runtime::SandboxId::parse(&gone).unwrap())
        .await
        .unwrap();
    // Left without records: a sandbox and a snapshot.
    let orphan = warren_runtime::SandboxSpec {
        id: warren_runtime::SandboxId::parse("sb-orphan").unwrap(),
        image: "host".into(),
        layers: Vec::new(),
        limits: Default::default(),
        snapshot: None,
        idmap: None,
        network: warren_runtime::NetworkSpec::isolated(),
        mounts: Vec::new(),
        runtime: Default::default(),
    };
    rt.create(&orphan).await.unwrap();
    rt.snapshot(
        &warren_runtime::SandboxId::parse("sb-orphan").unwrap(),
        "snap-orphan",
    )
    .await
    .unwrap();

    let e = reopen(&dir, &rt).await;
    let state = |id: &str| {
        let e = e.clone();
        let id = id.to_string();
        async move { e.get(&id).await.map(|s| s.state) }
    };
    assert_eq!(state(&running).await.unwrap(), SandboxState::Running);
    assert_eq!(get(&e, &running, "/workspace/f").await, "data");
    assert_eq!(state(&paused).await.unwrap(), SandboxState::Paused);
    assert_eq!(state(&stopped).await.unwrap(), SandboxState::Stopped);
    // Processes without an answering agent are ended; the files stay.
    assert_eq!(state(&broken).await.unwrap(), SandboxState::Stopped);
    assert_eq!(state(&gone).await.unwrap(), SandboxState::Failed);
    assert_eq!(state(&half_paused).await.unwrap(), SandboxState::Paused);
    assert_eq!(rt.state(&half_paused), Some(FakeState::Paused));
    assert!(state(&half_made).await.is_err());
    assert!(!rt.live().contains(&half_made));
    assert!(!rt.live().contains(&"sb-orphan".to_string()));
    assert_eq!(rt.snapshot_ids(), vec![snap.id.clone()]);
    assert_eq!(e.list_snapshots(None).await.unwrap(), vec![snap]);
    // Adopted sandboxes work as before; the failed one can be deleted.
    e.resume(&paused).await.unwrap();
    e.start(&stopped).await.unwrap();
    e.delete(&gone).await.unwrap();
    e.start(&broken).await.unwrap();
    let mut all = e.events(None, Some(0)).unwrap();
    let mut adopted = 0;
    while let Ok(Some(EventItem::Event(ev))) =
        tokio::time::timeout(Duration::from_millis(100), all.next()).await
    {
        if ev.kind == EventKind::Adopted {
            adopted += 1;
        }
    }
    assert_eq!(adopted, 5);
}
