use std::time::Duration;

use futures::StreamExt;
use warren_api::{
    CreateSandboxRequest, CreateSnapshotRequest, EventKind, ForkRequest, SandboxState,
};
use warren_server::testing::TestServer;

use crate::{Client, LifecycleEvent, LifecycleEvents};

async fn setup() -> (TestServer, Client, String) {
    let server = TestServer::start().await;
    let c = Client::new(&server.url).unwrap();
    let id = c
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap()
        .id;
    (server, c, id)
}

async fn next(events: &mut LifecycleEvents) -> LifecycleEvent {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("no event within 5 s")
        .expect("the stream ended")
        .unwrap()
}

/// (kind, state) of the next item, which must be an event.
async fn next_event(events: &mut LifecycleEvents) -> (u64, EventKind, Option<SandboxState>) {
    match next(events).await {
        LifecycleEvent::Event(e) => (e.seq, e.kind, e.state),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn pause_resume_stop_start_stats() {
    let (server, c, id) = setup().await;
    let sb = c.sandbox(&id);
    assert_eq!(sb.pause().await.unwrap().state, SandboxState::Paused);
    assert_eq!(c.pause(&id).await.unwrap().state, SandboxState::Paused);
    let err = sb.run(["echo", "hi"]).await.unwrap_err();
    assert_eq!(err.code(), Some("sandbox_paused"));
    let err = sb.start().await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_transition"));
    assert_eq!(sb.resume().await.unwrap().state, SandboxState::Running);
    assert_eq!(sb.stop().await.unwrap().state, SandboxState::Stopped);
    let err = sb.run(["echo", "hi"]).await.unwrap_err();
    assert_eq!(err.code(), Some("sandbox_stopped"));
    assert_eq!(sb.start().await.unwrap().state, SandboxState::Running);
    assert_eq!(sb.run(["echo", "hi"]).await.unwrap().stdout, "hi\n");

    server.engine.runtime.set_cpu_usage(&id, 42);
    let stats = sb.stats().await.unwrap();
    assert_eq!(
        (stats.state, stats.cpu_usage_us),
        (Some(SandboxState::Running), 42)
    );
    assert!(c.pause("nope").await.unwrap_err().is_not_found());
    assert!(c.stats("nope").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn snapshots_rollback_fork() {
    let (_server, c, id) = setup().await;
    let sb = c.sandbox(&id);
    sb.write_file("/workspace/f", "one", None).await.unwrap();
    let snap = sb.snapshot(Some("first")).await.unwrap();
    assert_eq!(
        (snap.sandbox_id.as_str(), snap.name.as_deref()),
        (id.as_str(), Some("first"))
    );
    let other = c
        .create_snapshot(&id, &CreateSnapshotRequest::default())
        .await
        .unwrap();
    sb.write_file("/workspace/f", "two", None).await.unwrap();

    let mut all: Vec<String> = c
        .list_snapshots(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    all.sort();
    let mut want = vec![snap.id.clone(), other.id.clone()];
    want.sort();
    assert_eq!(all, want);
    assert_eq!(sb.snapshots().await.unwrap().len(), 2);
    assert!(c.list_snapshots(Some("sb-x")).await.unwrap().is_empty());
    assert_eq!(c.get_snapshot(&snap.id).await.unwrap(), snap);

    // Restore, rollback, fork.
    let restored = c
        .create_sandbox(&CreateSandboxRequest {
            snapshot: Some(snap.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let read = |id: String| {
        let c = c.clone();
        async move { c.read_file_bytes(&id, "/workspace/f").await.unwrap() }
    };
    assert_eq!(read(restored.id.clone()).await, b"one");
    let fork = sb.fork(&ForkRequest::default()).await.unwrap();
    assert_eq!(read(fork.id.clone()).await, b"two");
    assert_eq!(
        sb.rollback(&snap.id).await.unwrap().state,
        SandboxState::Running
    );
    assert_eq!(read(id.clone()).await, b"one");
    assert_eq!(read(fork.id.clone()).await, b"two");

    c.delete_snapshot(&snap.id).await.unwrap();
    let err = c.get_snapshot(&snap.id).await.unwrap_err();
    assert_eq!(err.code(), Some("snapshot_not_found"));
    let err = c.delete_snapshot(&snap.id).await.unwrap_err();
    assert_eq!(err.code(), Some("snapshot_not_found"));
    let err = sb.rollback(&snap.id).await.unwrap_err();
    assert_eq!(err.code(), Some("snapshot_not_found"));
}

#[tokio::test]
async fn events_follow_and_resume() {
    let (_server, c, id) = setup().await;
    let mut events = c.sandbox(&id).events(None).await.unwrap();
    assert_eq!(
        next_event(&mut events).await.1,
        EventKind::Created,
        "a sandbox's stream replays from its creation"
    );
    let (running_seq, kind, state) = next_event(&mut events).await;
    assert_eq!(
        (kind, state),
        (EventKind::State, Some(SandboxState::Running))
    );

    let mut global = c.events(None, None).await.unwrap();
    c.pause(&id).await.unwrap();
    for want in [SandboxState::Pausing, SandboxState::Paused] {
        assert_eq!(next_event(&mut events).await.2, Some(want));
        let (_, kind, state) = next_event(&mut global).await;
        assert_eq!((kind, state), (EventKind::State, Some(want)));
    }
    // Resume after a seq.
    let mut resumed = c.events(Some(&id), Some(running_seq)).await.unwrap();
    assert_eq!(
        next_event(&mut resumed).await.2,
        Some(SandboxState::Pausing)
    );

    // The sandbox's stream ends after `deleted`.
    c.delete_sandbox(&id).await.unwrap();
    let mut last = None;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the stream did not end")
    {
        last = Some(item.unwrap());
    }
    match last {
        Some(LifecycleEvent::Event(e)) => assert_eq!(e.kind, EventKind::Deleted),
        other => panic!("{other:?}"),
    }
    let err = c.events(Some("sb-never"), None).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
}
