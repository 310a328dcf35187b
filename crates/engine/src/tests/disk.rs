//! Disk: `resources.disk_mib` (validated, defaulted, handed to the runtime, refused where
//! the runtime has no quota), typed quota errors of the files API, and disk-pressure
//! admission through a fake probe.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use warren_api::{CreateSandboxRequest, ExecUser, PoolSpec, Resources};

use super::{config, engine_with, TestDir};
use crate::{disk_floor_mib, DiskProbe, DiskSpace, Engine, EngineConfig};
use warren_testkit::FakeRuntime;

fn disk(mib: u64) -> CreateSandboxRequest {
    CreateSandboxRequest {
        resources: Some(Resources {
            disk_mib: Some(mib),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn engine_on(rt: FakeRuntime, c: EngineConfig) -> (Engine, TestDir) {
    let dir = std::env::temp_dir().join(format!(
        "warren-engine-disk-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut c = c;
    c.data_dir = dir.clone();
    let e = Engine::open(c, Arc::new(rt)).await.unwrap();
    (e, TestDir(dir))
}

#[tokio::test]
async fn disk_mib_is_defaulted_checked_and_handed_to_the_runtime() {
    let mut c = config();
    c.default_resources.disk_mib = Some(512);
    c.max_disk_mib = 4096;
    let (e, rt, _d) = engine_with(c).await;
    let caps = e.capabilities();
    assert!(caps.storage.disk_quota);
    assert_eq!(caps.limits.default_resources.disk_mib, Some(512));
    assert_eq!(caps.limits.max_disk_mib, 4096);

    let a = e.create(CreateSandboxRequest::default()).await.unwrap();
    assert_eq!(a.resources.disk_mib, Some(512));
    assert_eq!(rt.disk_limit(&a.id), Some(512 << 20));
    let b = e.create(disk(64)).await.unwrap();
    assert_eq!(rt.disk_limit(&b.id), Some(64 << 20));

    let made = rt.creates.load(Ordering::SeqCst);
    for bad in [0, 15, 4097, u64::MAX] {
        let err = e.create(disk(bad)).await.unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert!(err.to_string().contains("disk_mib"), "{err}");
    }
    assert_eq!(
        rt.creates.load(Ordering::SeqCst),
        made,
        "nothing was created"
    );

    // A write past the limit is a typed error, and changes nothing.
    let body = futures::stream::iter([Ok(Bytes::from(vec![0u8; (64 << 20) + 1]))]);
    let err = e
        .write_file(
            &b.id,
            "/workspace/big",
            None,
            ExecUser::Root,
            Box::pin(body),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "disk_quota_exceeded");
    assert!(e.stat(&b.id, "/workspace/big").await.is_err());
}

#[tokio::test]
async fn disk_mib_is_refused_where_nothing_enforces_it() {
    let rt = FakeRuntime::new();
    rt.disable_disk_quota();
    let mut c = config();
    c.default_resources.disk_mib = Some(512);
    let (e, _d) = engine_on(rt.clone(), c).await;
    let caps = e.capabilities();
    assert!(!caps.storage.disk_quota);
    assert_eq!(caps.limits.max_disk_mib, 0);
    assert_eq!(caps.limits.default_resources.disk_mib, None);
    // No default limit is applied (nothing would enforce it) ...
    let a = e.create(CreateSandboxRequest::default()).await.unwrap();
    assert_eq!(a.resources.disk_mib, None);
    // ... and one asked for is refused, not silently ignored.
    let err = e.create(disk(64)).await.unwrap_err();
    assert_eq!(err.code(), "invalid_request");
    assert!(err.to_string().contains("cannot limit disk use"), "{err}");
    assert_eq!(rt.live().len(), 1);
    // Pools too.
    let err = e
        .put_pool(
            "p",
            PoolSpec {
                size: 1,
                resources: Some(Resources {
                    disk_mib: Some(64),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_request");
}

fn space(path: &str, avail_mib: u64, inodes: (u64, u64)) -> DiskSpace {
    DiskSpace {
        path: PathBuf::from(path),
        total_bytes: 100 << 30,
        avail_bytes: avail_mib << 20,
        total_inodes: inodes.0,
        avail_inodes: inodes.1,
    }
}

#[tokio::test]
async fn a_full_disk_refuses_creates_and_pool_fills_at_once() {
    // The store's file system and the sandboxes' (the btrfs image).
    let store_free = Arc::new(AtomicU64::new(50_000));
    let image_free = Arc::new(AtomicU64::new(50_000));
    let image_inodes = Arc::new(AtomicU64::new(1_000_000));
    let mut c = config();
    c.min_free_disk_mib = 1024;
    let (s, i, n) = (store_free.clone(), image_free.clone(), image_inodes.clone());
    c.disk_probe = DiskProbe::from_fn(move || {
        vec![
            space("/data", s.load(Ordering::SeqCst), (0, 0)),
            space(
                "/data/storage/btrfs",
                i.load(Ordering::SeqCst),
                (1_000_000, n.load(Ordering::SeqCst)),
            ),
        ]
    });
    let (e, rt, _d) = engine_with(c).await;
    assert_eq!(e.capabilities().limits.min_free_disk_mib, 1024);
    e.create(CreateSandboxRequest::default()).await.unwrap();

    let refused = |e: crate::EngineError, what: &str| {
        assert_eq!(e.code(), "host_under_pressure", "{e}");
        assert!(e.to_string().contains(what), "{e}");
    };
    let made = rt.creates.load(Ordering::SeqCst);
    store_free.store(1000, Ordering::SeqCst);
    refused(
        e.create(CreateSandboxRequest::default()).await.unwrap_err(),
        "/data has 1000 MiB free",
    );
    store_free.store(50_000, Ordering::SeqCst);
    image_free.store(10, Ordering::SeqCst);
    refused(
        e.create(CreateSandboxRequest::default()).await.unwrap_err(),
        "/data/storage/btrfs has 10 MiB free",
    );
    image_free.store(50_000, Ordering::SeqCst);
    image_inodes.store(49_999, Ordering::SeqCst);
    refused(
        e.create(CreateSandboxRequest::default()).await.unwrap_err(),
        "inodes free",
    );
    assert_eq!(
        rt.creates.load(Ordering::SeqCst),
        made,
        "nothing was created"
    );

    // A pool does not fill while the disk is short, and fills once it is not.
    e.put_pool(
        "p",
        PoolSpec {
            size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let p = e.get_pool("p").unwrap();
    assert_eq!((p.ready, p.filling), (0, 0));
    assert!(
        p.last_error
            .as_deref()
            .is_some_and(|m| m.starts_with("host_under_pressure")),
        "{p:?}"
    );
    image_inodes.store(900_000, Ordering::SeqCst);
    e.create(CreateSandboxRequest::default()).await.unwrap();
    for _ in 0..500 {
        if e.get_pool("p").unwrap().ready == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(e.get_pool("p").unwrap().ready, 1);
}

#[tokio::test]
async fn no_disk_floor_never_refuses() {
    let mut c = config();
    c.min_free_disk_mib = 0;
    c.disk_probe = DiskProbe::from_fn(|| vec![space("/data", 0, (100, 0))]);
    let (e, _rt, _d) = engine_with(c).await;
    e.create(CreateSandboxRequest::default()).await.unwrap();
}

#[test]
fn default_disk_floor() {
    // 5 % of the file system, at least 1 GiB, but never above a tenth of it.
    assert_eq!(disk_floor_mib(100 << 30), 5120);
    assert_eq!(disk_floor_mib(20 << 30), 1024);
    assert_eq!(disk_floor_mib(8 << 30), 819);
    assert_eq!(disk_floor_mib(1 << 30), 102);
    assert_eq!(disk_floor_mib(0), 0);
}

#[test]
fn the_statvfs_probe_reads_each_file_system_once() {
    let dir = std::env::temp_dir();
    let p = DiskProbe::statvfs(vec![
        dir.clone(),
        dir.join("."),
        PathBuf::from("/nonexistent"),
    ]);
    let spaces = p.spaces();
    assert_eq!(spaces.len(), 1, "{spaces:?}");
    assert!(spaces[0].total_bytes >= spaces[0].avail_bytes && spaces[0].total_bytes > 0);
}
