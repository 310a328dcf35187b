//! Host-wide budgets, store failures, stopping without deleting, and the store's modes.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use warren_api::{CreateSandboxRequest, Resources, SandboxState};

use super::{config, engine, engine_with, exec, TestDir};
use crate::{
    committed_memory_mib, host_pids_budget, pids_budget_of, Engine, EngineConfig, EngineError,
    MemoryProbe, MEMORY_OVERCOMMIT,
};
use warren_testkit::fake::{FakeRuntime, FakeState};

fn sized(memory_mib: u64) -> CreateSandboxRequest {
    CreateSandboxRequest {
        resources: Some(Resources {
            memory_mib: Some(memory_mib),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn memory_limits_are_overcommitted_and_the_floor_still_refuses() {
    // The red-team's host: 24 GiB, 99 % idle; default limits of 1 GiB.
    let mut c = config();
    c.max_memory_mib = 24 * 1024;
    c.default_resources.memory_mib = Some(1024);
    c.memory_budget_mib = 24 * 1024 / 10 * 9;
    c.max_committed_memory_mib = committed_memory_mib(c.memory_budget_mib, MEMORY_OVERCOMMIT);
    c.min_available_memory_mib = 1228;
    let available = Arc::new(AtomicU64::new(23_000));
    let probe = available.clone();
    c.memory_probe = MemoryProbe::from_fn(move || Some(probe.load(Ordering::SeqCst)));
    let (e, rt, _d) = engine_with(c).await;

    let creates = (0..50).map(|_| e.create(CreateSandboxRequest::default()));
    for r in futures::future::join_all(creates).await {
        assert_eq!(r.unwrap().state, SandboxState::Running);
    }
    assert_eq!(rt.live().len(), 50);
    assert_eq!(e.committed_memory_mib(), 50 * 1024);

    // The host really runs short: refused at once, typed, nothing made.
    available.store(1000, Ordering::SeqCst);
    let made = rt.creates.load(Ordering::SeqCst);
    let err = e.create(CreateSandboxRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), "host_under_pressure");
    assert_eq!(rt.creates.load(Ordering::SeqCst), made);
    available.store(23_000, Ordering::SeqCst);

    // Limits still add up to at most 4 × the budget (86,760 MiB): 51,200 are committed.
    e.create(sized(24 * 1024)).await.unwrap();
    let err = e.create(sized(24 * 1024)).await.unwrap_err();
    assert_eq!(err.code(), "capacity_exhausted");
    let msg = err.to_string();
    assert!(
        msg.contains("create smaller sandboxes") && msg.contains("--max-committed-memory-mib"),
        "{msg}"
    );
    assert!(
        !msg.to_lowercase().starts_with("capacity exhausted"),
        "{msg}"
    );
    assert_eq!(rt.live().len(), 51);
    e.shutdown_deleting_all().await;
}

#[test]
fn defaults_overcommit_memory_and_keep_a_pids_reserve() {
    assert_eq!(committed_memory_mib(21_690, 4.0), 86_760);
    assert_eq!(committed_memory_mib(1000, 1.5), 1500);
    // A tenth of the host's tasks, at least 1024, stays with the host.
    assert_eq!(pids_budget_of(32_768), 32_768 - 3_276);
    assert_eq!(pids_budget_of(4_096), 4_096 - 1_024);
    assert_eq!(pids_budget_of(4_194_304), 4_194_304 - 419_430);
    assert_eq!(pids_budget_of(100), 8);

    let c = EngineConfig::with_defaults("/nonexistent".into());
    assert_eq!(
        c.max_committed_memory_mib,
        committed_memory_mib(c.memory_budget_mib, MEMORY_OVERCOMMIT)
    );
    let budget = host_pids_budget().expect("procfs tells pid_max");
    assert_eq!(c.pids_budget, budget);
    assert!(c.max_pids <= budget && c.max_pids <= crate::MAX_PIDS);
    assert!(c.default_resources.pids.unwrap() <= c.max_pids);
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(c.max_pids < pid_max, "{} >= pid_max {pid_max}", c.max_pids);
}

#[tokio::test]
async fn pids_above_the_cap_are_refused_with_the_range() {
    let mut c = config();
    c.pids_budget = 3000;
    c.max_pids = 3000;
    let (e, rt, _d) = engine_with(c).await;
    let err = e
        .create(CreateSandboxRequest {
            resources: Some(Resources {
                pids: Some(3001),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(err.to_string().contains("between 8 and 3000"), "{err}");
    assert_eq!(rt.creates.load(Ordering::SeqCst), 0);
    assert_eq!(e.capabilities().limits.pids_budget, 3000);
    assert_eq!(e.capabilities().limits.max_pids, 3000);
}

#[tokio::test]
async fn a_full_pids_budget_refuses_creates_at_once() {
    let mut c = config();
    c.pids_budget = 1000;
    let used = Arc::new(AtomicU64::new(990));
    let probe = used.clone();
    c.pids_probe = crate::PidsProbe::from_fn(move || Some(probe.load(Ordering::SeqCst)));
    let (e, rt, _d) = engine_with(c).await;
    let err = e.create(CreateSandboxRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), "host_under_pressure");
    assert!(err.to_string().contains("990 of their 1000 tasks"), "{err}");
    assert_eq!(rt.creates.load(Ordering::SeqCst), 0);
    used.store(500, Ordering::SeqCst);
    e.create(CreateSandboxRequest::default()).await.unwrap();
}

async fn stored_state(e: &Engine, id: &str) -> Option<String> {
    e.inner.store.get(id).await.unwrap()
}

/// Wait until the store has recorded `state` for `id`.
async fn until_stored(e: &Engine, id: &str, state: &str) {
    for _ in 0..1000 {
        if stored_state(e, id).await.as_deref() == Some(state) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{id} never recorded as {state}");
}

async fn echo(e: &Engine, id: &str) -> String {
    let out = e
        .collect(e.exec(id, exec(&["echo", "hi"])).await.unwrap())
        .await
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_store_failure_before_the_runtime_is_asked_changes_nothing() {
    let (e, rt, _d) = engine().await;
    let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    e.inner.store.fail_writes(true);
    for r in [e.pause(&id).await, e.stop(&id).await] {
        let err = r.unwrap_err();
        assert_eq!(err.code(), "store_error");
        assert_eq!(e.get(&id).await.unwrap().state, SandboxState::Running);
        assert_eq!(rt.state(&id), Some(FakeState::Running));
    }
    // Still operable while the disk is full.
    assert_eq!(echo(&e, &id).await, "hi\n");
    // Space again: everything works, and the store is right.
    e.inner.store.fail_writes(false);
    assert_eq!(e.resync_store().await, 0);
    assert_eq!(stored_state(&e, &id).await.as_deref(), Some("running"));
    e.pause(&id).await.unwrap();
    assert_eq!(rt.state(&id), Some(FakeState::Paused));
    e.resume(&id).await.unwrap();
    assert_eq!(rt.state(&id), Some(FakeState::Running));
    e.delete(&id).await.unwrap();
    assert!(rt.live().is_empty());
    assert_eq!(stored_state(&e, &id).await, None);
}

#[tokio::test]
async fn a_store_failure_after_the_runtime_acted_leaves_the_real_state() {
    let (e, rt, _d) = engine().await;
    let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    rt.set_op_delay(Duration::from_millis(200));

    // A pause whose last write fails: frozen, and the sandbox says paused.
    let pausing = tokio::spawn({
        let (e, id) = (e.clone(), id.clone());
        async move { e.pause(&id).await }
    });
    until_stored(&e, &id, "pausing").await;
    e.inner.store.fail_writes(true);
    let err = pausing.await.unwrap().unwrap_err();
    assert_eq!(err.code(), "store_error");
    assert!(err.to_string().contains("is paused"), "{err}");
    assert_eq!(e.get(&id).await.unwrap().state, SandboxState::Paused);
    assert_eq!(rt.state(&id), Some(FakeState::Paused));

    // A resume whose last write fails: thawed, and the sandbox says running.
    e.inner.store.fail_writes(false);
    let resuming = tokio::spawn({
        let (e, id) = (e.clone(), id.clone());
        async move { e.resume(&id).await }
    });
    until_stored(&e, &id, "resuming").await;
    e.inner.store.fail_writes(true);
    let err = resuming.await.unwrap().unwrap_err();
    assert_eq!(err.code(), "store_error");
    assert_eq!(e.get(&id).await.unwrap().state, SandboxState::Running);
    assert_eq!(rt.state(&id), Some(FakeState::Running));
    assert_eq!(echo(&e, &id).await, "hi\n");
    assert_eq!(stored_state(&e, &id).await.as_deref(), Some("resuming"));

    // The store catches up once it takes writes; the sandbox is as operable as ever.
    e.inner.store.fail_writes(false);
    assert_eq!(e.resync_store().await, 0);
    assert_eq!(stored_state(&e, &id).await.as_deref(), Some("running"));
    rt.set_op_delay(Duration::ZERO);
    e.pause(&id).await.unwrap();
    e.delete(&id).await.unwrap();
    assert!(rt.live().is_empty());
}

#[tokio::test]
async fn a_store_that_does_not_answer_cannot_hold_a_transition_past_its_deadline() {
    let mut c = config();
    c.deadlines.pause = Duration::from_millis(100);
    let (e, rt, _d) = engine_with(c).await;
    let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    e.inner.store.delay_writes(Duration::from_millis(800));
    let err = e.pause(&id).await.unwrap_err();
    assert_eq!(err.code(), "store_error");
    assert!(err.to_string().contains("deadline"), "{err}");
    assert_eq!(e.get(&id).await.unwrap().state, SandboxState::Running);
    assert_eq!(rt.state(&id), Some(FakeState::Running));
    // The late write of `pausing` lands; the resync after it puts the record right.
    e.inner.store.delay_writes(Duration::ZERO);
    assert_eq!(e.resync_store().await, 0);
    assert_eq!(stored_state(&e, &id).await.as_deref(), Some("running"));
    e.pause(&id).await.unwrap();
    assert_eq!(stored_state(&e, &id).await.as_deref(), Some("paused"));
}

#[tokio::test]
async fn a_rollback_whose_write_fails_stays_stopped_and_operable() {
    let (e, rt, _d) = engine().await;
    let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    let snap = e.create_snapshot(&id, Default::default()).await.unwrap();
    e.stop(&id).await.unwrap();
    e.inner.store.fail_writes(true);
    let err = e
        .rollback(
            &id,
            warren_api::RollbackRequest {
                snapshot: snap.id.clone(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "store_error");
    assert_eq!(e.get(&id).await.unwrap().state, SandboxState::Stopped);
    e.inner.store.fail_writes(false);
    e.start(&id).await.unwrap();
    assert_eq!(rt.state(&id), Some(FakeState::Running));
    assert_eq!(echo(&e, &id).await, "hi\n");
}

async fn reopen(dir: &TestDir, rt: &Arc<FakeRuntime>) -> Engine {
    let mut c = config();
    c.data_dir = dir.0.clone();
    Engine::open(c, rt.clone()).await.unwrap()
}

#[tokio::test]
async fn shutdown_leaves_sandboxes_for_the_next_start() {
    let (e, rt, d) = engine().await;
    let a = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    let b = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    // A transition in flight finishes before the engine stops.
    rt.set_op_delay(Duration::from_millis(100));
    let pausing = tokio::spawn({
        let (e, b) = (e.clone(), b.clone());
        async move { e.pause(&b).await }
    });
    until_stored(&e, &b, "pausing").await;
    e.shutdown(Duration::from_secs(10)).await;
    assert_eq!(pausing.await.unwrap().unwrap().state, SandboxState::Paused);
    rt.set_op_delay(Duration::ZERO);
    assert!(matches!(
        e.create(CreateSandboxRequest::default()).await,
        Err(EngineError::ShuttingDown)
    ));
    let mut live = rt.live();
    live.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(live, want);
    assert_eq!(rt.state(&b), Some(FakeState::Paused));
    assert!(!rt.shut_down.load(Ordering::SeqCst));
    // Closed cleanly: the WAL was checkpointed and removed.
    assert!(!d.0.join("warren.db-wal").exists());

    let e2 = reopen(&d, &rt).await;
    assert_eq!(e2.get(&a).await.unwrap().state, SandboxState::Running);
    assert_eq!(e2.get(&b).await.unwrap().state, SandboxState::Paused);
    assert_eq!(echo(&e2, &a).await, "hi\n");
    e2.shutdown_deleting_all().await;
    assert!(rt.live().is_empty());
    assert!(rt.shut_down.load(Ordering::SeqCst));
}

#[tokio::test]
async fn shutdown_with_nothing_left_lets_the_runtime_clean_up() {
    let (e, rt, _d) = engine().await;
    e.shutdown(Duration::from_secs(1)).await;
    assert!(rt.shut_down.load(Ordering::SeqCst));
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn the_store_is_private_even_where_an_older_version_left_it_readable() {
    let (e, rt, d) = engine().await;
    let id = e
        .create(CreateSandboxRequest {
            env: [("API_KEY".to_string(), "secret".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    assert_eq!(mode(&d.0), 0o700);
    for f in ["warren.db", "warren.db-wal", "warren.db-shm"] {
        assert_eq!(mode(&d.0.join(f)), 0o600, "{f}");
    }
    e.shutdown(Duration::from_secs(1)).await;
    drop(e);
    // What an older version made: a 0755 dir, 0644 files.
    std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(d.0.join("warren.db-wal"), b"").unwrap();
    for f in ["warren.db", "warren.db-wal"] {
        std::fs::set_permissions(d.0.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let e = reopen(&d, &rt).await;
    assert_eq!(
        e.get(&id).await.unwrap().env_keys,
        vec!["API_KEY".to_string()]
    );
    e.pause(&id).await.unwrap();
    assert_eq!(mode(&d.0), 0o700);
    for f in ["warren.db", "warren.db-wal", "warren.db-shm"] {
        assert_eq!(mode(&d.0.join(f)), 0o600, "{f}");
    }
    e.shutdown_deleting_all().await;
}
