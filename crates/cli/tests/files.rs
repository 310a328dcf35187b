//! Files through the HTTP API on the real kernel: round trips, streaming with bounded
//! daemon memory, and every class of path that tries to leave the sandbox.

mod common;

use common::*;
use futures::StreamExt;

/// A file on the host that no sandbox may ever read or overwrite; removed when dropped.
struct Canary(std::path::PathBuf);

impl Canary {
    fn new(tag: &str) -> Canary {
        let p = std::env::temp_dir().join(format!("warren-canary-{}-{tag}", std::process::id()));
        std::fs::write(&p, b"HOST SECRET").unwrap();
        Canary(p)
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn code(e: &warren_client::Error) -> String {
    e.code().unwrap_or("<no code>").to_string()
}

#[test]
fn binary_round_trip_metadata_and_ops() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let data: Vec<u8> = (0..=255u8).cycle().take(3 << 20).collect();
        let info = c
            .write_file(&sb.id, "/workspace/a/b/blob.bin", data.clone(), Some(0o600))
            .await
            .unwrap();
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(info.mode, 0o600);
        assert_eq!(
            c.read_file_bytes(&sb.id, "/workspace/a/b/blob.bin")
                .await
                .unwrap(),
            data
        );
        // Commands see the same file, owned by root with the requested mode.
        let r = run_sh(c, &sb.id, "stat -c '%a %s %U' /workspace/a/b/blob.bin").await;
        assert_eq!(r.stdout, "600 3145728 root\n");
        // And files written by commands can be read back.
        run_sh(c, &sb.id, "printf 'from inside' > /tmp/in.txt").await;
        assert_eq!(
            c.read_file_bytes(&sb.id, "/tmp/in.txt").await.unwrap(),
            b"from inside"
        );

        c.mkdir(&sb.id, "/workspace/dir/deep").await.unwrap();
        let list = c.list_files(&sb.id, "/workspace", 3).await.unwrap();
        let paths: Vec<&str> = list.entries.iter().map(|e| e.path.as_str()).collect();
        for want in ["/workspace/a/b/blob.bin", "/workspace/dir/deep"] {
            assert!(paths.contains(&want), "{want} not in {paths:?}");
        }
        // Metadata: kept in the file's extended attributes inside the sandbox, shown by
        // stat and list, carried by a move, removed by an empty value; a bad key changes
        // nothing.
        let meta = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        // gVisor's gofer serves no extended attributes: a typed 501, nothing changed.
        let xattrs = !common::on_gvisor();
        if xattrs {
            let set = c
                .set_file_metadata(
                    &sb.id,
                    "/workspace/a/b/blob.bin",
                    meta(&[("Owner", "evals"), ("run", "7")]),
                )
                .await
                .unwrap();
            assert_eq!(set.metadata, meta(&[("owner", "evals"), ("run", "7")]));
            let r = run_sh(c, &sb.id, "getfattr -d --absolute-names /workspace/a/b/blob.bin 2>/dev/null || python3 -c \"import os; print(sorted(os.listxattr('/workspace/a/b/blob.bin')))\"").await;
            assert!(r.stdout.contains("user.warren.owner"), "{r:?}");
            let err = c
                .set_file_metadata(&sb.id, "/workspace/a/b/blob.bin", meta(&[("bad key", "x"), ("run", "8")]))
                .await
                .unwrap_err();
            assert_eq!(code(&err), "invalid_request");
            let err = c
                .set_file_metadata(&sb.id, "/workspace/nope", meta(&[("k", "v")]))
                .await
                .unwrap_err();
            assert!(err.is_file_not_found(), "{err:?}");
        } else {
            let err = c
                .set_file_metadata(&sb.id, "/workspace/a/b/blob.bin", meta(&[("k", "v")]))
                .await
                .unwrap_err();
            assert_eq!(code(&err), "not_supported", "{err:?}");
        }
        c.move_path(
            &sb.id,
            "/workspace/a/b/blob.bin",
            "/workspace/dir/moved.bin",
            false,
        )
        .await
        .unwrap();
        if xattrs {
            let moved = c.stat(&sb.id, "/workspace/dir/moved.bin").await.unwrap();
            assert_eq!(moved.metadata, meta(&[("owner", "evals"), ("run", "7")]));
            let cleared = c
                .set_file_metadata(&sb.id, "/workspace/dir/moved.bin", meta(&[("run", "")]))
                .await
                .unwrap();
            assert_eq!(cleared.metadata, meta(&[("owner", "evals")]));
            let listed = c.list_files(&sb.id, "/workspace/dir", 1).await.unwrap();
            let entry = listed
                .entries
                .iter()
                .find(|e| e.path == "/workspace/dir/moved.bin")
                .unwrap();
            assert_eq!(entry.metadata, meta(&[("owner", "evals")]));
        }
        assert!(c
            .stat(&sb.id, "/workspace/a/b/blob.bin")
            .await
            .unwrap_err()
            .is_file_not_found());
        assert_eq!(
            c.stat(&sb.id, "/workspace/dir/moved.bin")
                .await
                .unwrap()
                .size,
            3 << 20
        );
        let err = c
            .remove_path(&sb.id, "/workspace/dir", false)
            .await
            .unwrap_err();
        assert_eq!(code(&err), "directory_not_empty");
        c.remove_path(&sb.id, "/workspace/dir", true).await.unwrap();
        let r = run_sh(c, &sb.id, "ls /workspace").await;
        assert_eq!(r.stdout, "a\n");
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn no_path_leaves_the_sandbox() {
    let d = Daemon::start();
    let secret = Canary::new("read");
    let target = Canary::new("write");
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let host_hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        // An absolute symlink and a relative one pointing far above the root, planted by the
        // sandbox's own code.
        run_sh(
            c,
            &sb.id,
            "ln -s / /workspace/root && ln -s ../../../../../../.. /workspace/up",
        )
        .await;
        let reads = [
            // `..` traversal
            "/workspace/../../../../../../etc/hostname".to_string(),
            // through an absolute symlink
            "/workspace/root/etc/hostname".to_string(),
            // through a relative symlink climbing past the root
            "/workspace/up/etc/hostname".to_string(),
        ];
        for path in &reads {
            let got = c.read_file_bytes(&sb.id, path).await.unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got).trim(),
                sb.id,
                "{path} escaped"
            );
            assert_ne!(String::from_utf8_lossy(&got), host_hostname);
        }
        // The host's files are not there, by any route.
        for path in [
            secret.path(),
            format!("/workspace/../../..{}", secret.path()),
            format!("/workspace/root{}", secret.path()),
            format!("/workspace/up{}", secret.path()),
        ] {
            let err = c.read_file_bytes(&sb.id, &path).await.unwrap_err();
            assert!(err.is_file_not_found(), "{path}: {err:?}");
        }
        // Writes through the same tricks land inside the sandbox, never on the host.
        for path in [
            target.path(),
            format!("/workspace/../../..{}", target.path()),
            format!("/workspace/root{}", target.path()),
        ] {
            c.write_file(&sb.id, &path, b"PWNED".to_vec(), None)
                .await
                .unwrap();
        }
        assert_eq!(std::fs::read(&target.0).unwrap(), b"HOST SECRET");
        let r = run(c, &sb.id, req(&["cat", &target.path()])).await;
        assert_eq!(r.stdout, "PWNED");
        // A symlink swapped back and forth while we read: every read stays inside.
        let mut swap =
            sh("while true; do ln -sfn / /workspace/sw; ln -sfn /etc /workspace/sw; done");
        swap.timeout_secs = Some(30);
        let c2 = c.clone();
        let id2 = sb.id.clone();
        let swapper = tokio::spawn(async move { c2.exec(&id2, &swap).await });
        let mut inside = 0;
        for _ in 0..200 {
            for path in ["/workspace/sw/hostname", "/workspace/sw/etc/hostname"] {
                match c.read_file_bytes(&sb.id, path).await {
                    Ok(b) => {
                        assert_eq!(String::from_utf8_lossy(&b).trim(), sb.id, "{path}");
                        inside += 1;
                    }
                    Err(e) => assert!(e.is_file_not_found(), "{path}: {e:?}"),
                }
            }
        }
        assert!(inside > 0, "the race never resolved a path");
        swapper.abort();
        // Deleting the root or reaching /proc's host view is refused or stays inside.
        let err = c.remove_path(&sb.id, "/", true).await.unwrap_err();
        assert_eq!(code(&err), "invalid_request", "{err:?}");
        let mounts = c.read_file_bytes(&sb.id, "/proc/1/cmdline").await;
        if let Ok(b) = mounts {
            // PID 1 of the sandbox is its agent, not the host's init.
            let cmdline = String::from_utf8_lossy(&b);
            assert!(
                cmdline.contains("__sandbox-init") || cmdline.contains("__gvisor-agent"),
                "{cmdline}"
            );
        }
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn large_file_streams_with_bounded_daemon_memory() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        const SIZE: u64 = 1 << 30;
        const CHUNK: usize = 1 << 20;
        // Upload 1 GiB generated on the fly (never held whole on either side).
        let chunks = futures::stream::iter(0..(SIZE as usize / CHUNK)).map(|i| {
            let mut b = vec![(i % 251) as u8; CHUNK];
            b[0] = (i >> 8) as u8;
            Ok::<_, std::io::Error>(bytes::Bytes::from(b))
        });
        let info = c
            .write_file(
                &sb.id,
                "/workspace/big.bin",
                reqwest::Body::wrap_stream(chunks),
                None,
            )
            .await
            .unwrap();
        assert_eq!(info.size, SIZE);
        // Download it and check every chunk.
        let mut stream = c.read_file(&sb.id, "/workspace/big.bin").await.unwrap();
        let mut got: u64 = 0;
        let mut pending: Vec<u8> = Vec::new();
        while let Some(b) = stream.next().await {
            let b = b.unwrap();
            pending.extend_from_slice(&b);
            while pending.len() >= CHUNK {
                let i = (got as usize) / CHUNK;
                assert_eq!(pending[0], (i >> 8) as u8, "chunk {i}");
                assert!(
                    pending[1..CHUNK].iter().all(|x| *x == (i % 251) as u8),
                    "chunk {i}"
                );
                pending.drain(..CHUNK);
                got += CHUNK as u64;
            }
        }
        assert_eq!(got + pending.len() as u64, SIZE);
        // The daemon never held the file: its peak RSS stays far below 1 GiB.
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        let hwm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert!(
            hwm_kib < 128 * 1024,
            "daemon peak RSS {hwm_kib} KiB while streaming 1 GiB"
        );
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}
