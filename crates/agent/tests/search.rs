//! Integration tests of search, replace and watch: each test runs its own agent process (the
//! test-only `warren-agent-test` binary, outside any sandbox) in its own temp dir.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use common::Agent;
use futures::StreamExt;
use warren_proto::host::{self, FileChange, WatchEvents};
use warren_proto::{FileEventKind, FileKind, ProtoError, ReplaceSpec, SearchSpec};

impl Agent {
    fn start() -> Agent {
        Agent::start_in(common::unique_dir("warren-agent-search"), &["work"])
    }

    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    fn p(&self, rel: &str) -> String {
        self.work().join(rel).to_string_lossy().into_owned()
    }

    fn put(&self, rel: &str, content: &[u8]) {
        let path = self.work().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn spec(&self) -> SearchSpec {
        SearchSpec {
            path: self.p(""),
            max_results: 1000,
            max_file_bytes: 10 << 20,
            timeout_ms: 10_000,
            ..Default::default()
        }
    }

    async fn search(
        &self,
        spec: SearchSpec,
    ) -> Result<(Vec<warren_proto::SearchMatch>, u64, bool), ProtoError> {
        host::search_files(self.connect().await, spec).await
    }

    fn rel(&self, path: &str) -> String {
        path.strip_prefix(&format!("{}/", self.work().display()))
            .unwrap_or(path)
            .to_string()
    }
}

fn tree(a: &Agent) {
    a.put("a.rs", b"fn main() {}\n// nothing\nfn helper() {}\n");
    a.put("sub/b.rs", b"struct B;\nfn b() {}\n");
    a.put("sub/c.txt", b"fn in text\n");
    a.put(".hidden/d.rs", b"fn hidden() {}\n");
    a.put("bin.rs", b"fn x\0binary\n");
    // Outside the searched tree, reachable only through symlinks.
    fs::create_dir_all(a.dir.join("outside")).unwrap();
    fs::write(a.dir.join("outside/o.rs"), b"fn outside() {}\n").unwrap();
    symlink(a.dir.join("outside"), a.work().join("linkdir")).unwrap();
    symlink(a.dir.join("outside/o.rs"), a.work().join("link.rs")).unwrap();
}

#[tokio::test]
async fn search_names_and_content() {
    let a = Agent::start();
    tree(&a);
    // Names: a glob with a slash matches relative paths.
    let (m, _, truncated) = a
        .search(SearchSpec {
            glob: Some("**/*.rs".into()),
            ..a.spec()
        })
        .await
        .unwrap();
    let names: Vec<String> = m.iter().map(|m| a.rel(&m.path)).collect();
    assert_eq!(names, ["a.rs", "bin.rs", "sub/b.rs"]);
    assert!(m.iter().all(|m| m.line.is_none() && m.text.is_none()));
    assert!(!truncated);
    // Without a slash: file names at any depth; hidden ones on request.
    let (m, _, _) = a
        .search(SearchSpec {
            glob: Some("*.rs".into()),
            hidden: true,
            ..a.spec()
        })
        .await
        .unwrap();
    let names: Vec<String> = m.iter().map(|m| a.rel(&m.path)).collect();
    assert_eq!(names, [".hidden/d.rs", "a.rs", "bin.rs", "sub/b.rs"]);

    // Content: 1-based lines, binary files skipped, symlinks never followed.
    let (m, scanned, _) = a
        .search(SearchSpec {
            pattern: Some(r"^fn \w+".into()),
            ..a.spec()
        })
        .await
        .unwrap();
    let hits: Vec<(String, u64, String)> = m
        .iter()
        .map(|m| (a.rel(&m.path), m.line.unwrap(), m.text.clone().unwrap()))
        .collect();
    assert_eq!(
        hits,
        [
            ("a.rs".to_string(), 1, "fn main() {}".to_string()),
            ("a.rs".to_string(), 3, "fn helper() {}".to_string()),
            ("sub/b.rs".to_string(), 2, "fn b() {}".to_string()),
            ("sub/c.txt".to_string(), 1, "fn in text".to_string()),
        ]
    );
    assert_eq!(scanned, 3); // a.rs, sub/b.rs, sub/c.txt (bin.rs is binary)

    // Glob and pattern together.
    let (m, _, _) = a
        .search(SearchSpec {
            glob: Some("*.txt".into()),
            pattern: Some("text".into()),
            ..a.spec()
        })
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(a.rel(&m[0].path), "sub/c.txt");
}

#[tokio::test]
async fn search_limits() {
    let a = Agent::start();
    let many: String = (0..50).map(|i| format!("hit {i}\n")).collect();
    a.put("many.txt", many.as_bytes());
    a.put("big.txt", format!("hit {}\n", "x".repeat(5000)).as_bytes());
    let (m, _, truncated) = a
        .search(SearchSpec {
            pattern: Some("hit".into()),
            max_results: 3,
            ..a.spec()
        })
        .await
        .unwrap();
    assert_eq!(m.len(), 3);
    assert!(truncated);
    // Long lines are cut to 1000 characters.
    assert_eq!(a.rel(&m[0].path), "big.txt");
    assert_eq!(m[0].text.as_ref().unwrap().chars().count(), 1000);
    // Files over max_file_bytes are skipped.
    let (m, _, truncated) = a
        .search(SearchSpec {
            pattern: Some("hit".into()),
            max_file_bytes: 1000,
            ..a.spec()
        })
        .await
        .unwrap();
    assert_eq!(m.len(), 50);
    assert!(!truncated);
    assert!(m.iter().all(|m| a.rel(&m.path) == "many.txt"));
    // A bad pattern, a missing path.
    let err = a
        .search(SearchSpec {
            pattern: Some("(".into()),
            ..a.spec()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ProtoError::Remote { code, .. } if code == "invalid_request"));
    let err = a
        .search(SearchSpec {
            path: a.p("missing"),
            glob: Some("*".into()),
            ..a.spec()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ProtoError::Remote { code, .. } if code == "not_found"));
}

#[tokio::test]
async fn replace_counts_keeps_mode_and_is_atomic() {
    let a = Agent::start();
    tree(&a);
    a.put("sub/e.rs", b"fn e() { fn_call(); }\n");
    fs::set_permissions(a.work().join("sub/e.rs"), fs::Permissions::from_mode(0o640)).unwrap();
    let ino = fs::metadata(a.work().join("sub/e.rs")).unwrap().ino();
    let spec = ReplaceSpec {
        path: a.p(""),
        glob: Some("*.rs".into()),
        pattern: r"\bfn (\w+)".into(),
        replacement: "pub fn ${1}_x".into(),
        max_files: 100,
        max_file_bytes: 10 << 20,
        hidden: false,
        timeout_ms: 10_000,
    };
    let (files, total, truncated) = host::replace_files(a.connect().await, spec.clone())
        .await
        .unwrap();
    let got: Vec<(String, u64)> = files
        .iter()
        .map(|f| (a.rel(&f.path), f.replacements))
        .collect();
    assert_eq!(
        got,
        [
            ("a.rs".to_string(), 2),
            ("sub/b.rs".to_string(), 1),
            ("sub/e.rs".to_string(), 1)
        ]
    );
    assert_eq!(total, 4);
    assert!(!truncated);
    let e = a.work().join("sub/e.rs");
    assert_eq!(fs::read(&e).unwrap(), b"pub fn e_x() { fn_call(); }\n");
    let md = fs::metadata(&e).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_ne!(md.ino(), ino, "rewritten by rename, not in place");
    // Binary, hidden and symlinked files are untouched; no temporary files remain.
    assert_eq!(
        fs::read(a.work().join("bin.rs")).unwrap(),
        b"fn x\0binary\n"
    );
    assert_eq!(
        fs::read(a.work().join(".hidden/d.rs")).unwrap(),
        b"fn hidden() {}\n"
    );
    assert_eq!(
        fs::read(a.dir.join("outside/o.rs")).unwrap(),
        b"fn outside() {}\n"
    );
    for dir in [a.work(), a.work().join("sub")] {
        for entry in fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".warren-"), "{name}");
        }
    }
    // max_files.
    let (files, _, truncated) = host::replace_files(
        a.connect().await,
        ReplaceSpec {
            pattern: "pub".into(),
            replacement: "pub(crate)".into(),
            max_files: 1,
            ..spec.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(files.len(), 1);
    assert!(truncated);
    // A bad pattern changes nothing.
    let err = host::replace_files(
        a.connect().await,
        ReplaceSpec {
            pattern: "[".into(),
            ..spec
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ProtoError::Remote { code, .. } if code == "invalid_request"));
}

async fn next(events: &mut WatchEvents) -> FileChange {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("no event within 5 s")
        .expect("stream ended")
        .expect("watch failed")
}

fn ev(event: FileEventKind, path: String, kind: FileKind, to: Option<String>) -> FileChange {
    FileChange {
        event,
        path,
        kind,
        to,
    }
}

#[tokio::test]
async fn watch_reports_changes_in_order() {
    let a = Agent::start();
    a.put("old/keep.txt", b"x");
    let mut events = host::watch_files(a.connect().await, a.p(""), true)
        .await
        .unwrap();
    use FileEventKind::*;
    fs::write(a.work().join("f.txt"), b"one").unwrap();
    assert_eq!(
        next(&mut events).await,
        ev(Created, a.p("f.txt"), FileKind::File, None)
    );
    assert_eq!(
        next(&mut events).await,
        ev(Modified, a.p("f.txt"), FileKind::File, None)
    );
    fs::write(a.work().join("f.txt"), b"two").unwrap();
    assert_eq!(
        next(&mut events).await,
        ev(Modified, a.p("f.txt"), FileKind::File, None)
    );
    fs::rename(a.work().join("f.txt"), a.work().join("g.txt")).unwrap();
    assert_eq!(
        next(&mut events).await,
        ev(Renamed, a.p("f.txt"), FileKind::File, Some(a.p("g.txt")))
    );
    fs::remove_file(a.work().join("g.txt")).unwrap();
    assert_eq!(
        next(&mut events).await,
        ev(Deleted, a.p("g.txt"), FileKind::File, None)
    );
    // An existing subdirectory is watched, and so is a new one.
    fs::write(a.work().join("old/keep.txt"), b"y").unwrap();
    assert_eq!(
        next(&mut events).await,
        ev(Modified, a.p("old/keep.txt"), FileKind::File, None)
    );
    fs::create_dir(a.work().join("new")).unwrap();
    assert_eq!(
        next(&mut events).await,
        ev(Created, a.p("new"), FileKind::Dir, None)
    );
    // Give the agent a moment to add the new directory's watch.
    tokio::time::sleep(Duration::from_millis(200)).await;
    fs::File::create(a.work().join("new/inner.txt")).unwrap();
    assert_eq!(
        next(&mut events).await,
        ev(Created, a.p("new/inner.txt"), FileKind::File, None)
    );
    // A renamed directory keeps being watched under its new name.
    fs::rename(a.work().join("new"), a.work().join("moved")).unwrap();
    assert_eq!(
        next(&mut events).await,
        ev(Renamed, a.p("new"), FileKind::Dir, Some(a.p("moved")))
    );
    fs::remove_file(a.work().join("moved/inner.txt")).unwrap();
    assert_eq!(
        next(&mut events).await,
        ev(Deleted, a.p("moved/inner.txt"), FileKind::File, None)
    );
    drop(events);

    // Non-recursive: subdirectories are not watched.
    let mut events = host::watch_files(a.connect().await, a.p(""), false)
        .await
        .unwrap();
    fs::write(a.work().join("old/keep.txt"), b"z").unwrap();
    fs::File::create(a.work().join("top.txt")).unwrap();
    assert_eq!(
        next(&mut events).await,
        ev(Created, a.p("top.txt"), FileKind::File, None)
    );
    // A missing path is refused.
    let err = host::watch_files(a.connect().await, a.p("missing"), true)
        .await
        .unwrap_err();
    assert!(matches!(err, ProtoError::Remote { code, .. } if code == "not_found"));
}
