//! Search, replace and watch in a real sandbox on the real kernel.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use warren_client::api::{FileEvent, FileEventKind, FileKind, ReplaceRequest, SearchRequest};

#[test]
fn search_replace_and_grep() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let r = run_sh(
            c,
            &sb.id,
            "mkdir -p /workspace/p/src && cd /workspace/p && \
             printf 'fn main() {}\\n// x\\nfn two() {}\\n' > src/main.rs && \
             printf 'fn lib() {}\\n' > src/lib.rs && printf 'fn notes\\n' > README && \
             printf 'fn\\0bin\\n' > src/bin.rs && chmod 640 src/lib.rs && \
             ln -s /etc src/etc && ln -s /etc/passwd src/passwd.rs",
        )
        .await;
        assert_eq!(r.exit_code, 0, "{}", r.stderr);
        let names = c
            .search_files(
                &sb.id,
                &SearchRequest {
                    path: "/workspace/p".into(),
                    glob: Some("**/*.rs".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let paths: Vec<&str> = names.matches.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/workspace/p/src/bin.rs",
                "/workspace/p/src/lib.rs",
                "/workspace/p/src/main.rs"
            ]
        );
        let hits = c
            .search_files(
                &sb.id,
                &SearchRequest {
                    path: "/workspace/p".into(),
                    pattern: Some(r"^fn \w+|root".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let lines: Vec<(&str, u64)> = hits
            .matches
            .iter()
            .map(|m| (m.path.as_str(), m.line.unwrap()))
            .collect();
        // Binary files are skipped and symlinks (to /etc) never followed.
        assert_eq!(
            lines,
            [
                ("/workspace/p/README", 1),
                ("/workspace/p/src/lib.rs", 1),
                ("/workspace/p/src/main.rs", 1),
                ("/workspace/p/src/main.rs", 3)
            ]
        );
        assert!(!hits.truncated);

        let res = c
            .replace_in_files(
                &sb.id,
                &ReplaceRequest {
                    path: "/workspace/p".into(),
                    glob: Some("*.rs".into()),
                    pattern: r"fn (\w+)".into(),
                    replacement: "pub fn ${1}".into(),
                    max_files: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(res.total_replacements, 3);
        assert_eq!(res.files.len(), 2);
        let r = run_sh(
            c,
            &sb.id,
            "cat /workspace/p/src/main.rs; stat -c %a /workspace/p/src/lib.rs; ls -A /workspace/p/src",
        )
        .await;
        assert_eq!(
            r.stdout,
            "pub fn main() {}\n// x\npub fn two() {}\n640\nbin.rs\netc\nlib.rs\nmain.rs\npasswd.rs\n"
        );
        let err = c
            .replace_in_files(
                &sb.id,
                &ReplaceRequest {
                    path: "/workspace/p".into(),
                    pattern: "(".into(),
                    replacement: String::new(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("invalid_request"));

        // The CLI verb.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["fs", "grep", &sb.id, "/workspace/p", "pub fn", "--glob", "main.rs"])
            .env("WARREN_URL", &d.url)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "/workspace/p/src/main.rs:1:pub fn main() {}\n/workspace/p/src/main.rs:3:pub fn two() {}\n"
        );
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

fn ev(event: FileEventKind, path: &str, kind: FileKind, to: Option<&str>) -> FileEvent {
    FileEvent {
        event,
        path: path.into(),
        kind,
        to: to.map(Into::into),
    }
}

#[test]
fn watch_streams_changes_made_by_commands() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        run_sh(c, &sb.id, "mkdir -p /workspace/w").await;
        let mut watch = c.watch_files(&sb.id, "/workspace/w", true).await.unwrap();
        let r = run_sh(
            c,
            &sb.id,
            "cd /workspace/w && printf a > f.txt && printf b >> f.txt && mv f.txt g.txt && \
             mkdir d && sleep 0.3 && : > d/inner && rm g.txt",
        )
        .await;
        assert_eq!(r.exit_code, 0, "{}", r.stderr);
        use FileEventKind::*;
        let want = [
            ev(Created, "/workspace/w/f.txt", FileKind::File, None),
            ev(Modified, "/workspace/w/f.txt", FileKind::File, None),
            ev(Modified, "/workspace/w/f.txt", FileKind::File, None),
            ev(
                Renamed,
                "/workspace/w/f.txt",
                FileKind::File,
                Some("/workspace/w/g.txt"),
            ),
            ev(Created, "/workspace/w/d", FileKind::Dir, None),
            ev(Created, "/workspace/w/d/inner", FileKind::File, None),
            ev(Deleted, "/workspace/w/g.txt", FileKind::File, None),
        ];
        for w in want {
            let got = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .expect("event within 10 s")
                .expect("stream open")
                .expect("event");
            assert_eq!(got, w);
        }
        // Deleting the sandbox ends the stream.
        c.delete_sandbox(&sb.id).await.unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(item) = watch.next().await {
                if item.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(end.is_ok(), "the watch outlived its sandbox");
    });
}
