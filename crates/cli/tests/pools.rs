//! Warm pools on the real kernel: a daemon whose config file defines a pool, claims that
//! run commands at once with the claim's environment, refilling, an API pool matched by
//! spec, adoption after a crash, and a clean host after shutdown.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use warren_api::{CreateSandboxRequest, PoolSpec, Resources};
use warren_client::Client;

/// Wait until `name` has `n` ready sandboxes and none being made.
async fn full(c: &Client, name: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = c.get_pool(name).await.expect("get pool");
        if p.ready == n && p.filling == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "pool never filled: {p:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dirs(d: &Daemon) -> BTreeSet<PathBuf> {
    d.sandbox_dirs().into_iter().collect()
}

#[test]
fn a_config_pool_serves_claims_refills_survives_a_crash_and_leaves_nothing() {
    let config = std::env::temp_dir().join(format!("warren-pools-{}.toml", std::process::id()));
    // Removed even when the test fails.
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _cleanup = RemoveOnDrop(config.clone());
    std::fs::write(
        &config,
        r#"
[[pools]]
name = "warm"
size = 2
[pools.resources]
memory_mib = 256
[pools.env]
POOL_VAR = "from-pool"
"#,
    )
    .unwrap();
    let config_arg = config.to_str().unwrap().to_string();
    let mut d = Daemon::start_with(&["--config", &config_arg]);
    let (data_dir, parent) = (d.data_dir.clone(), d.cgroup_parent.clone());
    rt().block_on(async {
        let c = &d.client;
        full(c, "warm", 2).await;
        assert!(c
            .list_sandboxes::<&str, &str>(&[])
            .await
            .unwrap()
            .is_empty());
        let t = Instant::now();
        let sb = c
            .create_sandbox(&CreateSandboxRequest {
                pool: Some("warm".into()),
                env: [("MINE".to_string(), "x".to_string())].into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let claim = t.elapsed();
        eprintln!("claim over HTTP (debug build): {claim:?}");
        assert_eq!(sb.pool.as_deref(), Some("warm"));
        assert_eq!(sb.resources.memory_mib, Some(256));
        let r = run_sh(c, &sb.id, "echo $MINE $POOL_VAR $(hostname)").await;
        assert_eq!(r.stdout, format!("x from-pool {}\n", sb.id), "{r:?}");
        // The sandbox's cgroup has the pool's memory limit.
        let stats = c.stats(&sb.id).await.unwrap();
        assert_eq!(stats.memory_limit_bytes, Some(256 << 20));
        full(c, "warm", 2).await;
        let p = c.get_pool("warm").await.unwrap();
        assert_eq!((p.claimed, p.claims), (1, 1));

        // An API pool, taken by a create with its spec.
        let small = Resources {
            memory_mib: Some(128),
            ..Default::default()
        };
        c.put_pool(
            "plain",
            &PoolSpec {
                size: 1,
                resources: Some(small.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        full(c, "plain", 1).await;
        let matched = c
            .create_sandbox(&CreateSandboxRequest {
                resources: Some(small),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(matched.pool.as_deref(), Some("plain"));
        assert_eq!(run_sh(c, &matched.id, "echo ok").await.stdout, "ok\n");
        full(c, "plain", 1).await;
        assert_eq!(c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(), 2);
    });

    // A crash: the ready sandboxes outlive it and the next daemon adopts them.
    let before = dirs(&d);
    assert_eq!(before.len(), 5, "{before:?}");
    let status = d.stop_with(libc::SIGKILL);
    assert!(!status.success());
    let mut d = Daemon::launch(data_dir.clone(), parent.clone(), &["--config", &config_arg]);
    rt().block_on(async {
        let c = &d.client;
        full(c, "warm", 2).await;
        full(c, "plain", 1).await;
        assert_eq!(
            dirs(&d),
            before,
            "the pools were refilled instead of adopted"
        );
        let sb = c
            .create_sandbox(&CreateSandboxRequest {
                pool: Some("warm".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(sb.pool.as_deref(), Some("warm"));
        assert_eq!(
            run_sh(c, &sb.id, "echo $POOL_VAR").await.stdout,
            "from-pool\n"
        );
        // Deleting the API pool removes its unclaimed sandbox only.
        c.delete_pool("plain").await.unwrap();
        assert_eq!(c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(), 3);
        full(c, "warm", 2).await;
    });
    let status = d.stop();
    assert!(status.success(), "daemon exit: {status:?}");
    assert_eq!(cgroups_named(&parent), Vec::<PathBuf>::new());
    assert_eq!(host_mounts_mentioning(&data_dir), Vec::<String>::new());
    assert!(d.sandbox_dirs().is_empty(), "{:?}", d.sandbox_dirs());
    assert_eq!(processes_in_cgroup(&parent), Vec::<String>::new());
}

#[test]
fn admission_refuses_at_once_beyond_the_committed_memory() {
    // 3 × 256 MiB fit; the fourth does not, and nothing is made for it.
    let d = Daemon::start_with(&["--max-committed-memory-mib", "800"]);
    rt().block_on(async {
        let c = &d.client;
        let caps = c.capabilities().await.unwrap();
        assert_eq!(caps.limits.max_committed_memory_mib, 800);
        let r = Resources {
            memory_mib: Some(256),
            ..Default::default()
        };
        for _ in 0..3 {
            create_with(c, r.clone()).await;
        }
        let t = Instant::now();
        let err = c
            .create_sandbox(&CreateSandboxRequest {
                resources: Some(r),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("capacity_exhausted"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(d.sandbox_dirs().len(), 3);
    });
}
