//! Directory archives, multipart uploads and `expose_port` on the real kernel.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use warren_api::CreateProcessRequest;

#[test]
fn archive_upload_and_exposed_process() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let id = sb.id.as_str();

        // A tree made inside the sandbox: modes, an empty dir, a symlink out of the tree.
        let r = run_sh(
            c,
            id,
            "set -e; mkdir -p /workspace/tree/sub/empty && cd /workspace/tree && \
             printf hello > a.txt && chmod 600 a.txt && \
             printf '#!/bin/sh\\n' > sub/run.sh && chmod 755 sub/run.sh && \
             head -c 600000 /dev/urandom > sub/big.bin && \
             ln -s /etc/hostname sub/link ",
        )
        .await;
        assert_eq!(r.exit_code, 0, "{r:?}");

        let mut stream = c.read_archive(id, "/workspace/tree").await.expect("archive");
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.expect("chunk"));
        }
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in archive.entries().expect("entries") {
            let mut e = e.expect("entry");
            let path = e.path().expect("path").display().to_string();
            let mode = e.header().mode().expect("mode") & 0o7777;
            let link = e
                .link_name()
                .expect("link")
                .map(|l| l.display().to_string());
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).expect("read");
            seen.push((path, mode, link, data));
        }
        let find = |p: &str| {
            seen.iter()
                .find(|s| s.0 == p)
                .unwrap_or_else(|| panic!("{p} missing from {:?}", seen.iter().map(|s| &s.0).collect::<Vec<_>>()))
        };
        assert_eq!(seen.len(), 6);
        assert_eq!((find("a.txt").1, &find("a.txt").3[..]), (0o600, &b"hello"[..]));
        assert_eq!(find("sub/run.sh").1, 0o755);
        assert_eq!(find("sub/link").2.as_deref(), Some("/etc/hostname"));
        assert_eq!(find("sub/big.bin").3.len(), 600_000);
        find("sub/empty");

        // Multipart upload of three files, read back through exec.
        let files = vec![
            ("one.txt".to_string(), reqwest::Body::from("first")),
            ("nested/two.txt".to_string(), reqwest::Body::from("second")),
            ("nested/deep/three.txt".to_string(), reqwest::Body::from("third")),
        ];
        let up = c
            .upload_files(id, "/workspace/up", files)
            .await
            .expect("upload");
        assert_eq!(up.files.len(), 3);
        let r = run_sh(
            c,
            id,
            "cat /workspace/up/one.txt /workspace/up/nested/two.txt /workspace/up/nested/deep/three.txt",
        )
        .await;
        assert_eq!(r.stdout, "firstsecondthird", "{r:?}");
        let bad = c
            .upload_files(id, "/workspace/up", vec![("../x".into(), "no".into())])
            .await
            .expect_err("escaping name");
        assert_eq!(bad.code(), Some("invalid_request"));

        // A durable HTTP server with its port exposed in the same call.
        run_sh(c, id, "echo served > /workspace/up/page.txt").await;
        let p = c
            .start_process(
                id,
                &CreateProcessRequest {
                    cmd: ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1"]
                        .map(String::from)
                        .to_vec(),
                    cwd: Some("/workspace/up".into()),
                    expose_port: Some(8000),
                    ..Default::default()
                },
            )
            .await
            .expect("start");
        let address = p.address.expect("address");
        assert!(address.starts_with("127.0.0.1:"), "{address}");
        assert_eq!(p.url.as_deref(), Some(format!("http://{address}").as_str()));
        let deadline = Instant::now() + Duration::from_secs(30);
        let text = loop {
            if let Ok(resp) = reqwest::get(format!("http://{address}/page.txt")).await {
                if resp.status() == 200 {
                    break resp.text().await.expect("body");
                }
            }
            assert!(Instant::now() < deadline, "the server never answered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(text, "served\n");
        // A later listing does not carry the address.
        let again = c.get_process(id, &p.pid.to_string()).await.expect("get");
        assert!(again.address.is_none());

        c.delete_sandbox(id).await.expect("delete");
    });
}
