//! Snapshot storage of the native runtime on the real kernel (as root), for both backends:
//! `dir` (copies) and `btrfs` (subvolume snapshots, on a loop image the runtime makes and
//! mounts itself). Driven through `NativeRuntime` directly (no daemon).
//!
//! Every test owns a `Harness` (its own data dir and cgroup parent) whose `Drop` destroys
//! whatever the test made, even when the test fails; `finish` also checks the host is
//! clean (no cgroup, mount, loop device or process left).

mod common;

use common::{run, start_process};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use warren_runtime::{Limits, Probe, Runtime, RuntimeError, SandboxId, SandboxSpec};
use warren_runtime_native::{NativeConfig, NativeRuntime, StorageConfig, UsernsSetting};
use warren_testkit::host::{
    cgroups_named, host_mounts_mentioning, processes_in_cgroup, test_idmap,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

const LOOP_SIZE: u64 = 512 << 20;

fn btrfs() -> StorageConfig {
    StorageConfig::Btrfs {
        loop_size_bytes: Some(LOOP_SIZE),
    }
}

struct Harness {
    rt: tokio::runtime::Runtime,
    native: NativeRuntime,
    data_dir: PathBuf,
    /// Cgroup parent; also the prefix of every sandbox id.
    tag: String,
    cleaned: bool,
}

impl Harness {
    fn new(storage: StorageConfig) -> Harness {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("wrs-{}-{n}", std::process::id());
        let data_dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&data_dir);
        let native = NativeRuntime::new(config(&data_dir, &tag, storage)).expect("native runtime");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Harness {
            rt,
            native,
            data_dir,
            tag,
            cleaned: false,
        }
    }

    fn id(&self, name: &str) -> SandboxId {
        SandboxId::parse(&format!("{}-{name}", self.tag)).expect("sandbox id")
    }

    fn spec(&self, id: &str, snapshot: Option<&str>) -> SandboxSpec {
        SandboxSpec {
            id: SandboxId::parse(id).expect("sandbox id"),
            image: "host".into(),
            layers: Vec::new(),
            limits: Limits::default(),
            snapshot: snapshot.map(str::to_string),
            idmap: Some(test_idmap(id)),
            network: warren_runtime::NetworkSpec::isolated(),
            mounts: Vec::new(),
            runtime: Default::default(),
        }
    }

    fn loop_image(&self) -> PathBuf {
        self.data_dir.join("storage/btrfs.img")
    }

    /// Destroy every sandbox and snapshot and shut the runtime down (never panics).
    fn release(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        let native = self.native.clone();
        self.rt.block_on(async move {
            if let Err(e) = native.reconcile(&[]).await {
                eprintln!("cleanup: reconcile: {e}");
            }
            if let Err(e) = native.reconcile_snapshots(&[]).await {
                eprintln!("cleanup: reconcile_snapshots: {e}");
            }
            if let Err(e) = native.shutdown().await {
                eprintln!("cleanup: shutdown: {e}");
            }
        });
        // Last resort for a failed shutdown: nothing may stay mounted.
        let mnt = self.data_dir.join("storage/btrfs");
        if !host_mounts_mentioning(&mnt).is_empty() {
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        }
    }

    /// Clean up and check that nothing is left on the host.
    fn finish(mut self) {
        self.release();
        let img = self.loop_image();
        if img.exists() {
            // The loop device detaches itself once the file system is gone.
            let mut left = loop_devices_of(&img);
            for _ in 0..100 {
                if left.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                left = loop_devices_of(&img);
            }
            assert_eq!(left, "", "loop device left for {}", img.display());
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        assert_eq!(
            cgroups_named(&self.tag),
            Vec::<PathBuf>::new(),
            "cgroups left"
        );
        assert_eq!(
            host_mounts_mentioning(&self.data_dir),
            Vec::<String>::new(),
            "mounts left"
        );
        assert_eq!(
            processes_in_cgroup(&self.tag),
            Vec::<String>::new(),
            "processes left"
        );
        assert!(!self.data_dir.exists());
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.release();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn config(data_dir: &Path, tag: &str, storage: StorageConfig) -> NativeConfig {
    NativeConfig {
        data_dir: data_dir.to_path_buf(),
        helper_exe: env!("CARGO_BIN_EXE_warren-sandbox-init").into(),
        cgroup_parent: tag.to_string(),
        storage,
        user_namespaces: UsernsSetting::On,
    }
}

/// `losetup -j <img>`: the loop devices backed by `img` (empty: none).
fn loop_devices_of(img: &Path) -> String {
    let out = Command::new("losetup")
        .arg("-j")
        .arg(img)
        .output()
        .expect("losetup");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn run_ok(rt: &NativeRuntime, id: &SandboxId, script: &str) -> String {
    let (code, out) = run(rt, id, script).await;
    assert_eq!(code, 0, "script failed in {id}: {script}\n{out}");
    out
}

/// Files of every kind overlayfs records specially: a whiteout (an image file deleted), an
/// opaque dir (an image dir replaced), a renamed image dir (a redirect), a symlink, a hard
/// link, a private file owned by 1000, and changes in the `/usr` layer.
const SETUP: &str = r#"set -e
mkdir -p /workspace/proj/sub
echo one > /workspace/proj/a.txt
head -c 200000 /dev/urandom > /workspace/proj/sub/blob
ln -s a.txt /workspace/proj/link
ln /workspace/proj/a.txt /workspace/proj/hard
echo secret > /workspace/proj/private
chown 1000:1000 /workspace/proj/private
chmod 600 /workspace/proj/private
rm /etc/nsswitch.conf
rm -rf /etc/ssl
mkdir /etc/ssl
echo mine > /etc/ssl/only
if [ -d /etc/ld.so.conf.d ]; then mv /etc/ld.so.conf.d /etc/ldconf-moved; fi
mkdir -p /usr/local/share/wtest
echo usr > /usr/local/share/wtest/f
rm /usr/bin/yes
"#;

/// Everything a sandbox's files look like (minus its own /etc/hostname and /etc/hosts):
/// every entry's type, mode, owner and link target; every file's size, mtime and hash.
const STATE: &str = r#"cd /
dirs="workspace etc home/user root usr/local var"
find $dirs \( -path etc/hostname -o -path etc/hosts \) -prune -o \
  -printf '%p %y %m %U:%G %l\n' | LC_ALL=C sort
find $dirs \( -path etc/hostname -o -path etc/hosts \) -prune -o -type f \
  -printf '%p %s %T@\n' | LC_ALL=C sort
find $dirs \( -path etc/hostname -o -path etc/hosts \) -prune -o -type f \
  -exec sha256sum {} + | LC_ALL=C sort -k2
for f in /usr/bin/yes /etc/nsswitch.conf /etc/ssl/certs; do
  if [ -e $f ]; then echo "$f present"; else echo "$f absent"; fi
done
if [ -e /workspace/proj/a.txt ]; then
  if [ "$(stat -c %i /workspace/proj/a.txt)" = "$(stat -c %i /workspace/proj/hard)" ]; then
    echo hard linked
  else
    echo not hard linked
  fi
fi
"#;

async fn state(rt: &NativeRuntime, id: &SandboxId) -> String {
    run_ok(rt, id, STATE).await
}

async fn line_count(rt: &NativeRuntime, id: &SandboxId, file: &str) -> u64 {
    // The file may not exist yet.
    run_ok(rt, id, &format!("cat {file} 2>/dev/null | wc -l"))
        .await
        .trim()
        .parse()
        .expect("a line count")
}

fn snapshot_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("snapshots dir")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// The whole story on one backend: snapshot, restore, rollback, consistency under writes,
/// paused and stopped snapshots, deletion and reconciliation.
fn scenario(storage: StorageConfig, backend: &str) {
    let h = Harness::new(storage);
    let rt = h.native.clone();
    let info = rt.info();
    assert!(info.snapshots);
    assert_eq!(info.storage, backend);
    assert!(info.storage_available.contains(&"dir".to_string()));
    assert!(info.storage_available.contains(&"btrfs".to_string()));
    if backend == "btrfs" {
        assert!(info.reflink, "btrfs shares blocks");
        assert_eq!(
            rt.sandboxes_dir(),
            h.data_dir.join("storage/btrfs/sandboxes")
        );
    }
    let snaps = rt.snapshots_dir();
    let (a, b, c, d) = (h.id("a"), h.id("b"), h.id("c"), h.id("d"));
    h.rt.block_on(async {
        rt.create(&h.spec(&a, None)).await.expect("create a");
        run_ok(&rt, &a, SETUP).await;
        let s1 = state(&rt, &a).await;
        assert!(
            s1.contains("workspace/proj/private f 600 1000:1000"),
            "{s1}"
        );
        assert!(s1.contains("workspace/proj/link l 777 0:0 a.txt"), "{s1}");
        assert!(s1.contains("/usr/bin/yes absent\n/etc/nsswitch.conf absent\n"));
        assert!(s1.contains("/etc/ssl/certs absent\nhard linked\n"), "{s1}");

        let t = Instant::now();
        let m1 = rt.snapshot(&a, "s1").await.expect("snapshot s1");
        eprintln!("{backend}: snapshot of a small sandbox: {:?}", t.elapsed());
        assert_eq!(m1.backend, backend);
        assert!(m1.size_bytes >= 200_000, "{m1:?}");
        if backend == "btrfs" {
            use std::os::unix::fs::MetadataExt;
            let fs = rt.sandboxes_dir().join(a.as_str()).join("fs");
            assert_eq!(
                std::fs::metadata(&fs).unwrap().ino(),
                256,
                "fs is a subvolume"
            );
            assert_eq!(
                std::fs::metadata(snaps.join("s1")).unwrap().ino(),
                256,
                "the snapshot is a subvolume"
            );
            let ro = std::fs::write(snaps.join("s1/upper/x"), b"x").unwrap_err();
            assert_eq!(
                ro.raw_os_error(),
                Some(libc::EROFS),
                "snapshots are read-only"
            );
        }
        assert!(
            rt.snapshot(&a, "s1").await.is_err(),
            "a second snapshot s1 was accepted"
        );

        // Change things: contents, deletions, new files, a deleted directory.
        run_ok(
            &rt,
            &a,
            "set -e; echo two >> /workspace/proj/a.txt; rm -r /workspace/proj/sub; \
             echo new > /workspace/new.txt; rm /etc/debian_version; rm /usr/local/share/wtest/f; \
             mkdir /home/user/dir2; chmod 700 /home/user/dir2",
        )
        .await;
        let s2 = state(&rt, &a).await;
        assert_ne!(s1, s2);
        rt.snapshot(&a, "s2").await.expect("snapshot s2");

        // Restores see exactly their snapshot's files, under their own name.
        rt.create(&h.spec(&b, Some("s1")))
            .await
            .expect("create from s1");
        rt.create(&h.spec(&c, Some("s2")))
            .await
            .expect("create from s2");
        assert_eq!(state(&rt, &b).await, s1);
        assert_eq!(state(&rt, &c).await, s2);
        assert_eq!(
            run_ok(
                &rt,
                &b,
                "hostname; cat /etc/hostname; grep -c \" $(hostname)$\" /etc/hosts"
            )
            .await,
            format!("{b}\n{b}\n2\n")
        );
        // They are copies: changing one changes nothing else.
        run_ok(
            &rt,
            &b,
            "echo changed > /workspace/proj/a.txt; rm /workspace/proj/link",
        )
        .await;
        assert_eq!(state(&rt, &a).await, s2);
        rt.destroy(&b).await.expect("destroy b");
        rt.create(&h.spec(&b, Some("s1")))
            .await
            .expect("create from s1 again");
        assert_eq!(state(&rt, &b).await, s1);
        rt.destroy(&b).await.expect("destroy b");
        rt.destroy(&c).await.expect("destroy c");

        // A missing snapshot: typed error, nothing left.
        match rt.create(&h.spec(&d, Some("nope"))).await {
            Err(RuntimeError::SnapshotNotFound(s)) => assert_eq!(s, "nope"),
            other => panic!("create from a missing snapshot: {other:?}"),
        }
        assert!(!rt.sandboxes_dir().join(d.as_str()).exists());
        assert_eq!(cgroups_named(&d), Vec::<PathBuf>::new());

        // Rollback: only when stopped; afterwards exactly the snapshot's files.
        assert!(
            rt.rollback(&a, "s1").await.is_err(),
            "rolled back a running sandbox"
        );
        assert_eq!(state(&rt, &a).await, s2);
        rt.stop(&a).await.expect("stop");
        match rt.rollback(&a, "nope").await {
            Err(RuntimeError::SnapshotNotFound(_)) => {}
            other => panic!("rollback to a missing snapshot: {other:?}"),
        }
        let t = Instant::now();
        rt.rollback(&a, "s1").await.expect("rollback to s1");
        eprintln!("{backend}: rollback of a small sandbox: {:?}", t.elapsed());
        let mut left: Vec<String> = std::fs::read_dir(rt.sandboxes_dir().join(a.as_str()))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("fs"))
            .collect();
        left.sort();
        assert_eq!(left, ["fs"], "rollback leftovers");
        rt.start(&h.spec(&a, None)).await.expect("start");
        assert_eq!(state(&rt, &a).await, s1);
        // And on to s2 and back again, running in between.
        rt.stop(&a).await.expect("stop");
        rt.rollback(&a, "s2").await.expect("rollback to s2");
        rt.start(&h.spec(&a, None)).await.expect("start");
        assert_eq!(state(&rt, &a).await, s2);

        // Consistency: one writer appends numbered lines to ten logs in turn, each log in
        // its own directory next to an 8 MB file, so that copying the tree takes a while
        // between two logs. A snapshot taken while it writes must hold complete lines only,
        // and the same count in every log, or one more in the logs before the one it was
        // at (what an instant sees); a copy of an unfrozen sandbox holds counts far apart.
        run_ok(
            &rt,
            &a,
            "set -e; for k in 0 1 2 3 4 5 6 7 8 9; do mkdir /workspace/c$k; \
             head -c 8000000 /dev/zero > /workspace/c$k/blob; done",
        )
        .await;
        start_process(
            &rt,
            &a,
            "writer",
            "i=0; while :; do i=$((i+1)); for k in 0 1 2 3 4 5 6 7 8 9; do \
             echo \"line $i\" >> /workspace/c$k/log; done; done",
            1 << 16,
        )
        .await;
        while line_count(&rt, &a, "/workspace/c9/log").await < 500 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rt.snapshot(&a, "live")
            .await
            .expect("snapshot while writing");
        assert_eq!(rt.probe(&a).await.unwrap(), Probe::Running, "thawed after");
        let before = line_count(&rt, &a, "/workspace/c9/log").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            line_count(&rt, &a, "/workspace/c9/log").await > before,
            "the writer did not go on after the snapshot"
        );
        rt.create(&h.spec(&d, Some("live")))
            .await
            .expect("create from live");
        let check = "for k in 0 1 2 3 4 5 6 7 8 9; do \
                       f=/workspace/c$k/log; \
                       end=$(tail -c 1 $f | od -An -tx1 | tr -d ' \\n'); \
                       awk -v end=\"$end\" '$1 != \"line\" || $2 != NR || NF != 2 { bad = 1 } \
                         END { print ((bad || end != \"0a\") ? \"bad\" : \"ok\"), NR }' $f; \
                     done";
        let out = run_ok(&rt, &d, check).await;
        let counts: Vec<u64> = out
            .lines()
            .map(|l| {
                let (ok, n) = l.split_once(' ').expect("awk output");
                assert_eq!(ok, "ok", "a partial or missing line: {out}");
                n.parse().unwrap()
            })
            .collect();
        assert_eq!(counts.len(), 10, "{out}");
        assert!(
            counts[9] >= 500
                && counts.windows(2).all(|w| w[0] >= w[1])
                && counts[0] - counts[9] <= 1,
            "inconsistent snapshot: line counts {counts:?}"
        );
        rt.destroy(&d).await.expect("destroy d");

        // A paused sandbox stays paused; a stopped one needs nothing.
        rt.pause(&a).await.expect("pause");
        rt.snapshot(&a, "paused").await.expect("snapshot paused");
        assert_eq!(rt.probe(&a).await.unwrap(), Probe::Paused);
        rt.resume(&a).await.expect("resume");
        rt.stop(&a).await.expect("stop");
        rt.snapshot(&a, "stopped").await.expect("snapshot stopped");
        assert_eq!(rt.probe(&a).await.unwrap(), Probe::Stopped);
        rt.create(&h.spec(&d, Some("stopped")))
            .await
            .expect("create from stopped");
        run_ok(
            &rt,
            &d,
            "test -s /workspace/c0/log && test -s /workspace/c9/log",
        )
        .await;
        rt.destroy(&d).await.expect("destroy d");

        // Errors: unknown sandbox, bad snapshot id.
        assert!(matches!(
            rt.snapshot(&h.id("nope"), "zz").await,
            Err(RuntimeError::NotFound(_))
        ));
        assert!(rt.snapshot(&a, "Bad/Id").await.is_err());

        // Delete is idempotent; a deleted snapshot cannot be restored.
        rt.delete_snapshot("s2").await.expect("delete s2");
        rt.delete_snapshot("s2").await.expect("delete s2 again");
        rt.delete_snapshot("never-was")
            .await
            .expect("delete unknown");
        assert!(matches!(
            rt.create(&h.spec(&d, Some("s2"))).await,
            Err(RuntimeError::SnapshotNotFound(_))
        ));

        // Reconcile: a partial copy and every snapshot not kept go.
        std::fs::create_dir(snaps.join(".tmp-x")).unwrap();
        std::fs::write(snaps.join(".tmp-x/half"), b"half").unwrap();
        let removed = rt
            .reconcile_snapshots(&["s1".to_string()])
            .await
            .expect("reconcile snapshots");
        assert_eq!(removed, ["live", "paused", "stopped", "x"]);
        assert_eq!(snapshot_names(&snaps), ["s1"]);
        assert_eq!(
            rt.reconcile_snapshots(&["s1".to_string()]).await.unwrap(),
            Vec::<String>::new()
        );

        // Stopped sandboxes are destroyed like running ones (btrfs: subvolumes deleted).
        rt.destroy(&a).await.expect("destroy a");
        assert!(!rt.sandboxes_dir().join(a.as_str()).exists());
        assert_eq!(
            rt.reconcile_snapshots(&[]).await.unwrap(),
            ["s1".to_string()]
        );
        assert_eq!(snapshot_names(&snaps), Vec::<String>::new());
    });
    h.finish();
}

#[test]
fn dir_backend_snapshots_restores_and_rollbacks() {
    scenario(StorageConfig::Dir, "dir");
}

#[test]
fn btrfs_backend_snapshots_restores_and_rollbacks() {
    scenario(btrfs(), "btrfs");
}

/// A second runtime on the same data dir (a daemon restart) reuses the mounted loop image;
/// snapshots and sandboxes made before are still there.
#[test]
fn btrfs_loop_mount_is_reused_after_a_restart() {
    let h = Harness::new(btrfs());
    let id = h.id("keep");
    let rt = h.native.clone();
    h.rt.block_on(async {
        rt.create(&h.spec(&id, None)).await.expect("create");
        run_ok(&rt, &id, "echo kept > /workspace/k").await;
        rt.snapshot(&id, "k1").await.expect("snapshot");
    });
    let mnt = h.data_dir.join("storage/btrfs");
    assert_eq!(host_mounts_mentioning(&mnt).len(), 1);
    let again = NativeRuntime::new(config(&h.data_dir, &h.tag, btrfs())).expect("restart");
    assert_eq!(host_mounts_mentioning(&mnt).len(), 1, "mounted twice");
    h.rt.block_on(async {
        assert_eq!(again.probe(&id).await.unwrap(), Probe::Running);
        assert_eq!(run_ok(&again, &id, "cat /workspace/k").await, "kept\n");
        let other = h.id("other");
        again
            .create(&h.spec(&other, Some("k1")))
            .await
            .expect("restore after restart");
        assert_eq!(run_ok(&again, &other, "cat /workspace/k").await, "kept\n");
    });
    drop(again);
    h.finish();
}

#[test]
fn btrfs_without_a_loop_size_needs_a_btrfs_data_dir() {
    let tag = format!("wrs-{}-nobtrfs", std::process::id());
    let data_dir = std::env::temp_dir().join(&tag);
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir).unwrap();
    let on_btrfs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&data_dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "btrfs")
        .unwrap_or(false);
    let r = NativeRuntime::new(config(
        &data_dir,
        &tag,
        StorageConfig::Btrfs {
            loop_size_bytes: None,
        },
    ));
    if on_btrfs {
        eprintln!("the temp dir is on btrfs: used directly");
        let rt = r.expect("btrfs data dir");
        assert_eq!(rt.info().storage, "btrfs");
    } else {
        match r {
            Err(RuntimeError::Setup(msg)) => {
                assert!(msg.contains("not on a btrfs file system"), "{msg}")
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("btrfs storage without btrfs"),
        }
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Not run by default: how long a snapshot of a few hundred MB takes on each backend
/// (`cargo test -p warren-runtime-native --test storage -- --ignored --nocapture`).
#[test]
#[ignore]
fn snapshot_timing() {
    // The runtime logs how long the sandbox stayed frozen (`copy_ms`).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warren_runtime_native=info",
        ))
        .with_test_writer()
        .try_init();
    for (storage, name) in [
        (StorageConfig::Dir, "dir"),
        (
            StorageConfig::Btrfs {
                loop_size_bytes: Some(2 << 30),
            },
            "btrfs",
        ),
    ] {
        let h = Harness::new(storage);
        let rt = h.native.clone();
        let id = h.id("big");
        h.rt.block_on(async {
            rt.create(&h.spec(&id, None)).await.expect("create");
            run_ok(
                &rt,
                &id,
                "set -e; mkdir -p /workspace/src; \
                 head -c 200000000 /dev/urandom > /workspace/big.bin; \
                 i=0; while [ $i -lt 2000 ]; do \
                   head -c 50000 /dev/urandom > /workspace/src/f$i; i=$((i+1)); done; \
                 du -sh /workspace",
            )
            .await;
            let t = Instant::now();
            let m = rt.snapshot(&id, "big").await.expect("snapshot");
            let snap = t.elapsed();
            let t = Instant::now();
            let other = h.id("copy");
            rt.create(&h.spec(&other, Some("big")))
                .await
                .expect("restore");
            let restore = t.elapsed();
            rt.stop(&id).await.unwrap();
            let t = Instant::now();
            rt.rollback(&id, "big").await.expect("rollback");
            let rollback = t.elapsed();
            eprintln!(
                "{name}: {} MB: snapshot {snap:?}, restore (create) {restore:?}, \
                 rollback {rollback:?}, reflink {}",
                m.size_bytes / 1_000_000,
                rt.info().reflink
            );
        });
        h.finish();
    }
}
