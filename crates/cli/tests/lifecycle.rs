//! Lifecycle on the real kernel: TTL, concurrency, and a clean host afterwards.

mod common;

use std::time::Duration;

use common::*;
use warren_api::CreateSandboxRequest;

#[test]
fn ttl_expiry_deletes_and_timeout_can_be_extended() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let short = c
            .create_sandbox(&CreateSandboxRequest {
                timeout_secs: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        let kept = c
            .create_sandbox(&CreateSandboxRequest {
                timeout_secs: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        let updated = c.set_timeout(&kept.id, 120).await.unwrap();
        assert!(updated.expires_at > kept.expires_at);
        let mut gone = false;
        for _ in 0..100 {
            if c.get_sandbox(&short.id).await.is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "expired sandbox was not deleted");
        assert!(!d.data_dir.join("sandboxes").join(&short.id).exists());
        assert_eq!(run(c, &kept.id, req(&["true"])).await.exit_code, 0);
    });
}

#[test]
fn fifty_concurrent_creates_then_nothing_left() {
    let mut d = Daemon::start();
    let data_dir = d.data_dir.clone();
    let parent = d.cgroup_parent.clone();
    rt().block_on(async {
        let c = &d.client;
        let creates = (0..50).map(|i| {
            let c = c.clone();
            async move {
                c.create_sandbox(&CreateSandboxRequest {
                    metadata: [("i".to_string(), i.to_string())].into(),
                    ..Default::default()
                })
                .await
            }
        });
        let results = futures::future::join_all(creates).await;
        let ids: Vec<String> = results
            .into_iter()
            .map(|r| r.expect("concurrent create failed").id)
            .collect();
        assert_eq!(c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(), 50);
        // Every one of them works.
        let execs = ids.iter().map(|id| {
            let c = c.clone();
            async move { c.exec(id, &req(&["hostname"])).await }
        });
        for (id, r) in ids.iter().zip(futures::future::join_all(execs).await) {
            assert_eq!(r.unwrap().stdout.trim(), id);
        }
        // Delete half explicitly, concurrently; the daemon's shutdown removes the rest.
        let deletes = ids[..25].iter().map(|id| {
            let c = c.clone();
            async move { c.delete_sandbox(id).await }
        });
        for r in futures::future::join_all(deletes).await {
            r.unwrap();
        }
        assert_eq!(c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(), 25);
    });
    let status = d.stop();
    assert!(status.success(), "daemon exit: {status:?}");
    // Nothing left on the host: no cgroups, no mounts, no sandbox dirs, no processes.
    assert_eq!(cgroups_named(&parent), Vec::<std::path::PathBuf>::new());
    assert_eq!(host_mounts_mentioning(&data_dir), Vec::<String>::new());
    assert!(d.sandbox_dirs().is_empty(), "{:?}", d.sandbox_dirs());
    assert_eq!(processes_in_cgroup(&parent), Vec::<String>::new());
}
