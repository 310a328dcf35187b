//! Warm pools and admission control, on the fake runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use warren_api::{
    CreateSandboxRequest, EventKind, Pool, PoolSpec, Resources, SandboxState, TimeoutAction,
};

use super::{config, engine, engine_with, exec, TestDir};
use crate::{Engine, EngineError, EventItem, MemoryProbe};
use warren_testkit::FakeRuntime;

fn spec(size: u32) -> PoolSpec {
    PoolSpec {
        size,
        ..Default::default()
    }
}

fn code<T>(r: Result<T, EngineError>) -> &'static str {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.code().as_str(),
    }
}

fn creates(rt: &FakeRuntime) -> usize {
    rt.creates.load(Ordering::SeqCst)
}

/// Wait until the pool is full (`ready == n`, nothing filling).
async fn full(e: &Engine, name: &str, n: u32) -> Pool {
    let mut last = None;
    for _ in 0..500 {
        let p = e.get_pool(name).unwrap();
        if p.ready == n && p.filling == 0 {
            return p;
        }
        last = Some(p);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool {name} never reached {n} ready: {last:?}");
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn env_of(e: &Engine, id: &str) -> String {
    let out = e
        .collect(e.exec(id, exec(&["env"])).await.unwrap())
        .await
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_pool_fills_and_a_claim_takes_a_ready_sandbox_without_the_runtime() {
    let (e, rt, _d) = engine().await;
    rt.set_create_delay(Duration::from_millis(150));
    let p = e
        .put_pool(
            "py",
            PoolSpec {
                size: 2,
                env: [("POOL_VAR".to_string(), "p".to_string())].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((p.size, p.ready, p.filling, p.claimed), (2, 0, 2, 0));
    assert_eq!(p.image, "host");
    assert_eq!(p.resources.memory_mib, Some(512));
    assert_eq!(p.env_keys, ["POOL_VAR"]);
    full(&e, "py", 2).await;
    assert_eq!(creates(&rt), 2);
    // Members are not the API's.
    assert!(e.list(&Default::default()).await.unwrap().is_empty());
    let members = rt.live();
    assert_eq!(members.len(), 2);

    let mut events = e.events(None, None).unwrap();
    let t = std::time::Instant::now();
    let sb = e
        .create(CreateSandboxRequest {
            pool: Some("py".into()),
            env: [("MINE".to_string(), "m".to_string())].into(),
            metadata: [("owner".to_string(), "ann".to_string())].into(),
            timeout_secs: Some(77),
            on_timeout: Some(TimeoutAction::Pause),
            auto_resume: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let took = t.elapsed();
    // No runtime call (the fake's create would take 150 ms): the sandbox is one of the two
    // members. (The pool's refill may already have started a third create.)
    assert!(took < Duration::from_millis(100), "claim took {took:?}");
    assert!(members.contains(&sb.id), "{} is not a member", sb.id);
    assert_eq!(sb.state, SandboxState::Running);
    assert_eq!(sb.pool.as_deref(), Some("py"));
    assert_eq!(sb.env_keys, ["MINE", "POOL_VAR"]);
    assert_eq!(sb.metadata["owner"], "ann");
    assert_eq!(sb.timeout_secs, 77);
    assert!(sb.auto_resume);
    assert_eq!(sb.on_timeout, TimeoutAction::Pause);
    let left = (sb.expires_at - chrono::Utc::now()).num_seconds();
    assert!((70..=77).contains(&left), "{left}");
    let env = env_of(&e, &sb.id).await;
    assert!(
        env.contains("MINE=m\n") && env.contains("POOL_VAR=p\n"),
        "{env}"
    );
    assert_eq!(e.list(&Default::default()).await.unwrap(), vec![sb.clone()]);
    // The claimed sandbox's first event (the refill's member may be reported meanwhile).
    loop {
        match events.next().await {
            Some(EventItem::Event(ev)) if ev.sandbox_id != sb.id => {
                assert_eq!(ev.reason.as_deref(), Some("pool:py"), "{ev:?}");
            }
            Some(EventItem::Event(ev)) => {
                assert_eq!(ev.kind, EventKind::Claimed);
                assert_eq!(ev.reason.as_deref(), Some("pool:py"));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    // The record was rewritten in the store too.
    let stored = e.inner.store.load_all().await.unwrap();
    let r = stored.iter().find(|r| r.id == sb.id).unwrap();
    assert!(!r.lifecycle.pool_member);
    assert_eq!(r.metadata["owner"], "ann");

    // It refills in the background.
    let p = full(&e, "py", 2).await;
    assert_eq!((p.claimed, p.claims, p.misses), (1, 1, 0));
    assert_eq!(creates(&rt), 3);
    // A claimed sandbox is the user's: deleting it leaves the pool alone.
    e.delete(&sb.id).await.unwrap();
    assert_eq!(e.get_pool("py").unwrap().claimed, 0);
    e.shutdown_deleting_all().await;
    assert!(rt.live().is_empty());
}

#[tokio::test]
async fn a_create_matching_a_pool_spec_takes_from_it() {
    let (e, rt, _d) = engine().await;
    let small = Resources {
        memory_mib: Some(256),
        ..Default::default()
    };
    e.put_pool(
        "small",
        PoolSpec {
            size: 1,
            resources: Some(small.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Same image and resources, but with env: only used by name.
    e.put_pool(
        "withenv",
        PoolSpec {
            size: 1,
            env: [("X".to_string(), "1".to_string())].into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    full(&e, "small", 1).await;
    full(&e, "withenv", 1).await;
    let made = creates(&rt);
    // Defaults filled in: cpus and pids default, memory 256 = the pool's.
    let sb = e
        .create(CreateSandboxRequest {
            resources: Some(small),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sb.pool.as_deref(), Some("small"));
    // The claim made no sandbox; the pool's refill (in the background, maybe already
    // started) makes at most one.
    assert!(
        creates(&rt) <= made + 1,
        "{} creates after a claim",
        creates(&rt) - made
    );
    // Default resources match "withenv" only, which is never taken implicitly.
    let cold = e.create(CreateSandboxRequest::default()).await.unwrap();
    assert_eq!(cold.pool, None);
    assert!(cold.env_keys.is_empty());
    assert_eq!(e.get_pool("withenv").unwrap().ready, 1);
    // A restore never comes from a pool.
    let snap = e
        .create_snapshot(&cold.id, Default::default())
        .await
        .unwrap();
    full(&e, "small", 1).await;
    let restored = e
        .create(CreateSandboxRequest {
            snapshot: Some(snap.id),
            resources: Some(Resources {
                memory_mib: Some(256),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(restored.pool, None);
    assert_eq!(e.get_pool("small").unwrap().ready, 1);
}

#[tokio::test]
async fn an_empty_pool_falls_back_to_a_cold_create_of_its_spec() {
    let (e, rt, _d) = engine().await;
    rt.set_create_delay(Duration::from_millis(300));
    e.put_pool(
        "slow",
        PoolSpec {
            size: 1,
            resources: Some(Resources {
                memory_mib: Some(300),
                ..Default::default()
            }),
            env: [("FROM_POOL".to_string(), "1".to_string())].into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sb = e
        .create(CreateSandboxRequest {
            pool: Some("slow".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sb.pool, None);
    assert_eq!(sb.resources.memory_mib, Some(300));
    assert_eq!(sb.env_keys, ["FROM_POOL"]);
    let p = e.get_pool("slow").unwrap();
    assert_eq!((p.misses, p.claims), (1, 0));
    full(&e, "slow", 1).await;
}

#[tokio::test]
async fn bad_pool_requests_are_typed_errors() {
    let (e, _rt, _d) = engine().await;
    assert_eq!(
        code(e.put_pool("Bad Name", spec(1)).await),
        "invalid_request"
    );
    assert_eq!(
        code(e.put_pool("big", spec(100_000)).await),
        "invalid_request"
    );
    let bad_image = PoolSpec {
        image: Some("nope".into()),
        ..spec(1)
    };
    assert_eq!(code(e.put_pool("img", bad_image).await), "image_not_found");
    let bad_res = PoolSpec {
        resources: Some(Resources {
            memory_mib: Some(1),
            ..Default::default()
        }),
        ..spec(1)
    };
    assert_eq!(code(e.put_pool("res", bad_res).await), "invalid_request");
    assert_eq!(code(e.get_pool("nope")), "pool_not_found");
    assert_eq!(code(e.delete_pool("nope").await), "pool_not_found");
    let named = |pool: &str| CreateSandboxRequest {
        pool: Some(pool.into()),
        ..Default::default()
    };
    assert_eq!(code(e.create(named("nope")).await), "pool_not_found");
    e.put_pool("p", spec(0)).await.unwrap();
    let conflicting = CreateSandboxRequest {
        resources: Some(Resources {
            memory_mib: Some(128),
            ..Default::default()
        }),
        ..named("p")
    };
    assert_eq!(code(e.create(conflicting).await), "invalid_request");
    let with_snapshot = CreateSandboxRequest {
        snapshot: Some("snap-x".into()),
        ..named("p")
    };
    assert_eq!(code(e.create(with_snapshot).await), "invalid_request");
    // The pool's own values are fine.
    let same = CreateSandboxRequest {
        image: Some("host".into()),
        resources: Some(Resources {
            memory_mib: Some(512),
            ..Default::default()
        }),
        ..named("p")
    };
    assert_eq!(e.create(same).await.unwrap().pool, None);
    assert!(e.list_pools().iter().all(|p| p.name == "p"));
}

#[tokio::test]
async fn members_are_hidden_and_never_reaped() {
    let (e, rt, _d) = engine().await;
    e.put_pool("p", spec(1)).await.unwrap();
    full(&e, "p", 1).await;
    let id = rt.live().pop().unwrap();
    assert_eq!(code(e.get(&id).await), "sandbox_not_found");
    assert_eq!(code(e.delete(&id).await), "sandbox_not_found");
    assert_eq!(
        code(e.exec(&id, exec(&["echo"])).await),
        "sandbox_not_found"
    );
    assert_eq!(code(e.pause(&id).await), "sandbox_not_found");
    assert_eq!(code(e.set_timeout(&id, 10).await), "sandbox_not_found");
    assert_eq!(code(e.stat(&id, "/workspace").await), "sandbox_not_found");
    assert_eq!(
        code(e.fork(&id, Default::default()).await),
        "sandbox_not_found"
    );
    assert_eq!(code(e.events(Some(&id), None)), "sandbox_not_found");
    // Long past its expiry and idle: the reaper leaves it alone.
    {
        let mut map = e.map();
        let m = map.get_mut(&id).unwrap();
        m.record.expires_at = chrono::Utc::now() - chrono::Duration::seconds(60);
        m.record.lifecycle.idle_timeout_secs = Some(1);
    }
    assert!(e.reap_expired().await.is_empty());
    assert!(e.reap_idle().await.is_empty());
    assert_eq!(rt.live(), vec![id.clone()]);
    assert_eq!(e.get_pool("p").unwrap().ready, 1);
}

#[tokio::test]
async fn deleting_a_pool_removes_its_unclaimed_sandboxes_only() {
    let (e, rt, _d) = engine().await;
    e.put_pool("p", spec(3)).await.unwrap();
    full(&e, "p", 3).await;
    let claimed = e
        .create(CreateSandboxRequest {
            pool: Some("p".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // Delete while it refills: members being made go too.
    rt.set_create_delay(Duration::from_millis(100));
    e.pool_round();
    e.delete_pool("p").await.unwrap();
    assert_eq!(code(e.get_pool("p")), "pool_not_found");
    assert!(e.list_pools().is_empty());
    until("members gone", || rt.live() == vec![claimed.id.clone()]).await;
    assert_eq!(e.get(&claimed.id).await.unwrap().pool.as_deref(), Some("p"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rt.live(), vec![claimed.id.clone()]);
    assert!(e.inner.store.load_pools().await.unwrap().is_empty());
}

#[tokio::test]
async fn resizing_up_and_down_and_redefining() {
    let (e, rt, _d) = engine().await;
    e.put_pool("p", spec(1)).await.unwrap();
    full(&e, "p", 1).await;
    let p = e.put_pool("p", spec(4)).await.unwrap();
    // At most `pool_fill_concurrency` (2) are made at once.
    assert_eq!((p.ready, p.filling), (1, 2));
    full(&e, "p", 4).await;
    assert_eq!(rt.live().len(), 4);
    let oldest = {
        let map = e.map();
        let mut m: Vec<_> = map.values().map(|e| e.record.clone()).collect();
        m.sort_by_key(|r| r.created_at);
        m[0].id.clone()
    };
    // Down: the newest go, at once.
    let p = e.put_pool("p", spec(1)).await.unwrap();
    assert_eq!((p.ready, p.filling), (1, 0));
    until("drained", || rt.live().len() == 1).await;
    assert_eq!(rt.live(), vec![oldest.clone()]);
    // A new spec drains the old members and fills with new ones.
    let bigger = PoolSpec {
        resources: Some(Resources {
            memory_mib: Some(1024),
            ..Default::default()
        }),
        ..spec(1)
    };
    e.put_pool("p", bigger).await.unwrap();
    full(&e, "p", 1).await;
    until("old spec drained", || !rt.live().contains(&oldest)).await;
    let p = e.get_pool("p").unwrap();
    assert_eq!(p.resources.memory_mib, Some(1024));
    // Size 0 keeps the pool, empty.
    e.put_pool("p", spec(0)).await.unwrap();
    until("emptied", || rt.live().is_empty()).await;
    assert_eq!(e.get_pool("p").unwrap().size, 0);
}

#[tokio::test]
async fn failed_member_creates_back_off_and_report() {
    let (e, rt, _d) = engine().await;
    rt.fail_next_create();
    e.put_pool("p", spec(1)).await.unwrap();
    until("error reported", || {
        e.get_pool("p").unwrap().last_error.is_some()
    })
    .await;
    let err = e.get_pool("p").unwrap().last_error.unwrap();
    assert!(err.starts_with("runtime_error"), "{err}");
    // Retried after the back-off; the error clears once the fill task has seen its
    // create succeed (a moment after the member shows as ready).
    full(&e, "p", 1).await;
    until("error cleared", || {
        e.get_pool("p").unwrap().last_error.is_none()
    })
    .await;
    assert_eq!(creates(&rt), 2);
}

async fn reopen(dir: &TestDir, rt: &Arc<FakeRuntime>) -> Engine {
    let mut c = config();
    c.data_dir = dir.0.clone();
    Engine::open(c, rt.clone()).await.unwrap()
}

#[tokio::test]
async fn a_restart_keeps_pools_and_adopts_their_sandboxes() {
    let (e, rt, dir) = engine().await;
    e.put_pool("p", spec(2)).await.unwrap();
    full(&e, "p", 2).await;
    let claimed = e
        .create(CreateSandboxRequest {
            pool: Some("p".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    full(&e, "p", 2).await;
    let members: Vec<String> = rt
        .live()
        .into_iter()
        .filter(|id| *id != claimed.id)
        .collect();
    // Crashed while making one more: a member record in `creating`.
    rt.set_create_delay(Duration::from_secs(30));
    e.put_pool("p", spec(3)).await.unwrap();
    let half_made = {
        let map = e.map();
        map.values()
            .find(|x| x.record.state == SandboxState::Creating)
            .map(|x| x.record.id.clone())
            .unwrap()
    };
    // Its record reaches the store before the runtime is asked.
    for _ in 0..500 {
        let stored = e.inner.store.load_all().await.unwrap();
        if stored.iter().any(|r| r.id == half_made) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(e);
    rt.set_create_delay(Duration::ZERO);
    let before = creates(&rt);

    let e = reopen(&dir, &rt).await;
    let p = e.get_pool("p").unwrap();
    assert_eq!(p.size, 3);
    assert_eq!(p.claimed, 1);
    assert_eq!(e.get(&claimed.id).await.unwrap().pool.as_deref(), Some("p"));
    // The two ready ones are adopted as they were; only the third is made again.
    full(&e, "p", 3).await;
    for m in &members {
        assert!(rt.live().contains(m), "{m} not adopted");
    }
    assert!(!rt.live().contains(&half_made));
    assert_eq!(creates(&rt), before + 1);
    assert_eq!(e.list(&Default::default()).await.unwrap().len(), 1);
    // A claim after the restart takes an adopted one.
    let sb = e
        .create(CreateSandboxRequest {
            pool: Some("p".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(sb.pool.as_deref(), Some("p"));
    // One of the adopted members, not a new one (the claim's refill may already be
    // creating another, so the create count says nothing here).
    assert!(
        members.contains(&sb.id),
        "{} is not an adopted member",
        sb.id
    );
    e.shutdown_deleting_all().await;
    assert!(rt.live().is_empty());
}

#[tokio::test]
async fn config_pools_are_applied_at_start_and_read_only() {
    let mut c = config();
    c.config_pools = vec![("cfg".into(), spec(1))];
    let (e, _rt, dir) = engine_with(c).await;
    full(&e, "cfg", 1).await;
    assert_eq!(
        e.get_pool("cfg").unwrap().source,
        warren_api::PoolSource::Config
    );
    assert_eq!(code(e.put_pool("cfg", spec(2)).await), "pool_from_config");
    assert_eq!(code(e.delete_pool("cfg").await), "pool_from_config");
    e.put_pool("api", spec(0)).await.unwrap();
    // A bad config pool stops the engine from opening.
    let mut c = config();
    c.data_dir = dir.0.join("other");
    c.config_pools = vec![("x".into(), spec(1)), ("x".into(), spec(2))];
    let rt = Arc::new(FakeRuntime::new());
    let err = Engine::open(c, rt).await.err().unwrap();
    assert!(err.to_string().contains("more than once"), "{err}");
}

#[tokio::test]
async fn the_sandbox_count_limit_ignores_unclaimed_sandboxes() {
    let mut c = config();
    c.max_sandboxes = 1;
    let (e, _rt, _d) = engine_with(c).await;
    e.put_pool("p", spec(2)).await.unwrap();
    full(&e, "p", 2).await;
    let sb = e
        .create(CreateSandboxRequest {
            pool: Some("p".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let again = CreateSandboxRequest {
        pool: Some("p".into()),
        ..Default::default()
    };
    assert_eq!(code(e.create(again.clone()).await), "limit_reached");
    assert_eq!(
        code(e.create(CreateSandboxRequest::default()).await),
        "limit_reached"
    );
    e.delete(&sb.id).await.unwrap();
    e.create(again).await.unwrap();
}

#[tokio::test]
async fn committed_memory_is_admitted_and_pools_make_room() {
    let mut c = config();
    c.max_committed_memory_mib = 1024;
    let (e, rt, _d) = engine_with(c).await;
    // 2 × 512 MiB: the limit, all in a pool.
    e.put_pool("p", spec(2)).await.unwrap();
    full(&e, "p", 2).await;
    assert_eq!(e.committed_memory_mib(), 1024);
    let mem = |m: u64| CreateSandboxRequest {
        resources: Some(Resources {
            memory_mib: Some(m),
            ..Default::default()
        }),
        ..Default::default()
    };
    // A user's create evicts a ready member rather than fail.
    let a = e.create(mem(256)).await.unwrap();
    until("evicted", || rt.live().len() == 2).await;
    // The pool cannot refill: admission says why.
    until("refusal reported", || {
        e.get_pool("p")
            .unwrap()
            .last_error
            .is_some_and(|m| m.starts_with("capacity_exhausted"))
    })
    .await;
    assert_eq!(e.get_pool("p").unwrap().ready, 1);
    let b = e.create(mem(512)).await.unwrap();
    until("evicted again", || rt.live().len() == 2).await;
    // Nothing left to evict: refused at once, nothing made.
    let err = e.create(mem(512)).await.unwrap_err();
    assert_eq!(err.code(), "capacity_exhausted");
    assert!(err.to_string().contains("1024"), "{err}");
    assert_eq!(rt.live().len(), 2);
    assert_eq!(e.committed_memory_mib(), 768);
    // Room again: the pool fills back.
    e.delete(&a.id).await.unwrap();
    e.delete(&b.id).await.unwrap();
    full(&e, "p", 2).await;
    assert_eq!(e.capabilities().limits.max_committed_memory_mib, 1024);
}

#[tokio::test]
async fn a_host_under_memory_pressure_refuses_creates_at_once() {
    let available = Arc::new(AtomicU64::new(100));
    let mut c = config();
    c.min_available_memory_mib = 256;
    let probe = available.clone();
    c.memory_probe = MemoryProbe::from_fn(move || Some(probe.load(Ordering::SeqCst)));
    let (e, rt, _d) = engine_with(c).await;
    let err = e.create(CreateSandboxRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), "host_under_pressure");
    // Pools stop filling instead of failing over and over.
    e.put_pool("p", spec(1)).await.unwrap();
    let p = e.get_pool("p").unwrap();
    assert_eq!((p.ready, p.filling), (0, 0));
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|m| m.starts_with("host_under_pressure")),
        "{p:?}"
    );
    assert_eq!(creates(&rt), 0);
    available.store(4096, Ordering::SeqCst);
    full(&e, "p", 1).await;
    e.create(CreateSandboxRequest::default()).await.unwrap();
    assert_eq!(e.capabilities().limits.min_available_memory_mib, 256);
    assert!(e.capabilities().features.pools);
}
