//! The client verbs against an in-process server over a fake runtime.

use std::process::{Output, Stdio};

use tokio::io::AsyncWriteExt;
use warren_server::testing::TestServer;

async fn warren(server: &TestServer, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.args(args)
        .env("WARREN_URL", &server.url)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn warren");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    child.wait_with_output().await.unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn live(server: &TestServer) -> usize {
    server.engine.runtime.live().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn create_ls_inspect_rm() {
    let server = TestServer::start().await;
    let out = warren(
        &server,
        &["create", "--meta", "team=a", "--memory", "256"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(!id.is_empty());
    let other = warren(&server, &["create"], None).await;
    let other = text(&other.stdout).trim().to_string();

    let out = warren(&server, &["ls"], None).await;
    let table = text(&out.stdout);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&id) && table.contains("team=a"), "{table}");
    assert_eq!(table.lines().count(), 3);

    let out = warren(&server, &["ls", "--json", "--meta", "team=a"], None).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());

    let out = warren(&server, &["inspect", &id], None).await;
    let sb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sb["resources"]["memory_mib"], 256);

    let out = warren(&server, &["rm", &id, "sb-missing", &other], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), format!("{id}\n{other}\n"));
    assert!(
        text(&out.stderr).starts_with("error: sandbox_not_found: "),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(live(&server), 0);

    let out = warren(&server, &["inspect", &id], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: sandbox_not_found: "));

    let out = warren(&server, &["create", "--cpus=-1"], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: invalid_request: "));
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_streams_and_exits_with_the_code() {
    let server = TestServer::start().await;
    let id = text(&warren(&server, &["create"], None).await.stdout)
        .trim()
        .to_string();

    let out = warren(&server, &["exec", &id, "--", "echo", "hello", "-n"], None).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "hello -n\n");

    let out = warren(&server, &["exec", &id, "fail", "3"], None).await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stderr), "failing\n");

    let out = warren(&server, &["exec", &id, "--", "binary"], None).await;
    assert_eq!(out.stdout, (0..=255u8).collect::<Vec<_>>());

    let out = warren(&server, &["exec", &id, "--", "split-utf8"], None).await;
    assert_eq!(text(&out.stdout), "café\n");
    assert_eq!(text(&out.stderr), "warn\n");

    // Standard input is sent only with `-i`.
    let out = warren(
        &server,
        &["exec", "-i", &id, "--", "cat"],
        Some("piped ✓\n".as_bytes()),
    )
    .await;
    assert_eq!(text(&out.stdout), "piped ✓\n");
    let out = warren(&server, &["exec", &id, "--", "cat"], Some(b"ignored")).await;
    assert_eq!(text(&out.stdout), "");
    let out = warren(&server, &["exec", "-n", &id, "--", "cat"], Some(b"ignored")).await;
    assert_eq!(text(&out.stdout), "");

    let out = warren(
        &server,
        &["exec", "--timeout", "1", &id, "--", "sleep"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(137));
    assert!(text(&out.stderr).contains("timed out"));

    let out = warren(&server, &["exec", &id, "--", "nope"], None).await;
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).starts_with("error: command_not_found: "));

    let out = warren(&server, &["exec", "sb-missing", "--", "echo"], None).await;
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).starts_with("error: sandbox_not_found: "));
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_and_without_rm() {
    let server = TestServer::start().await;
    let out = warren(&server, &["run", "--rm", "--env", "A=1", "--", "env"], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("A=1\n"));
    assert_eq!(text(&out.stderr), "");
    assert_eq!(live(&server), 0);

    let out = warren(&server, &["run", "--rm", "--", "fail", "4"], None).await;
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(live(&server), 0);

    let out = warren(&server, &["run", "--rm", "--", "nope"], None).await;
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(live(&server), 0);

    let out = warren(
        &server,
        &["run", "--meta", "k=v", "--", "echo", "kept"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "kept\n");
    let id = text(&out.stderr).trim().to_string();
    assert!(server.engine.runtime.live().contains(&id));
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_server() {
    let server = TestServer::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--url", "http://127.0.0.1:1", "ls"])
        .env("WARREN_URL", &server.url)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: "),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_rm_deletes_on_ctrl_c() {
    use tokio::io::AsyncBufReadExt;
    let server = TestServer::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["run", "--rm", "--", "sleep"])
        .env("WARREN_URL", &server.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("no output")
        .unwrap();
    assert_eq!(first.as_deref(), Some("started"));
    assert_eq!(live(&server), 1);
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("warren did not stop")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(live(&server), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_prints_the_document_without_a_server() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--url", "http://127.0.0.1:1", "openapi"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.ends_with(b"}\n"));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc, serde_json::to_value(warren_server::openapi()).unwrap());
    let help = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("--help")
        .output()
        .await
        .unwrap();
    assert!(
        !text(&help.stdout).contains("openapi"),
        "{}",
        text(&help.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cp_and_fs() {
    let server = TestServer::start().await;
    let out = warren(&server, &["create"], None).await;
    let id = text(&out.stdout).trim().to_string();
    let dir = TempDir::new("cp");
    let local = dir.path().join("blob.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&local, &data).unwrap();

    // Upload into a directory (the name is kept), download to a file and to stdout.
    let out = warren(
        &server,
        &[
            "cp",
            "--mode",
            "0600",
            local.to_str().unwrap(),
            &format!("{id}:/workspace/in/"),
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = dir.path().join("back.bin");
    let out = warren(
        &server,
        &[
            "cp",
            &format!("{id}:/workspace/in/blob.bin"),
            back.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let out = warren(
        &server,
        &["cp", &format!("{id}:/workspace/in/blob.bin"), "-"],
        None,
    )
    .await;
    assert_eq!(out.stdout, data);
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let out = warren(
        &server,
        &[
            "cp",
            &format!("{id}:/workspace/in/blob.bin"),
            sub.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(sub.join("blob.bin")).unwrap(), data);

    // Stdin upload, cat.
    let out = warren(
        &server,
        &["cp", "-", &format!("{id}:/workspace/note")],
        Some(b"hi\n"),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = warren(&server, &["fs", "cat", &id, "/workspace/note"], None).await;
    assert_eq!(text(&out.stdout), "hi\n");

    // ls, mkdir, rm.
    let out = warren(&server, &["fs", "mkdir", &id, "/workspace/x/y"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = warren(&server, &["fs", "ls", &id, "/workspace"], None).await;
    let listing = text(&out.stdout);
    assert_eq!(listing.lines().count(), 3, "{listing}");
    assert!(
        listing.contains("drwxr-xr-x") && listing.contains("/workspace/note"),
        "{listing}"
    );
    let out = warren(
        &server,
        &["fs", "ls", "--json", "--depth", "2", &id, "/workspace"],
        None,
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let blob = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/workspace/in/blob.bin")
        .unwrap();
    assert_eq!(
        (blob["mode"].as_u64(), blob["size"].as_u64()),
        (Some(0o600), Some(200_000))
    );
    let out = warren(&server, &["fs", "rm", &id, "/workspace/x"], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: directory_not_empty: "),
        "{}",
        text(&out.stderr)
    );
    let out = warren(&server, &["fs", "rm", "-r", &id, "/workspace/x"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Errors.
    let out = warren(&server, &["fs", "cat", &id, "/workspace/x"], None).await;
    assert!(
        text(&out.stderr).starts_with("error: file_not_found: "),
        "{}",
        text(&out.stderr)
    );
    let missing = dir.path().join("missing");
    let out = warren(
        &server,
        &[
            "cp",
            &format!("{id}:/workspace/nope"),
            missing.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(
        text(&out.stderr).starts_with("error: file_not_found: "),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists());
    let out = warren(&server, &["cp", "a", "b"], None).await;
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn cp_directories() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let out = warren(&server, &["create"], None).await;
    let id = text(&out.stdout).trim().to_string();
    let dir = TempDir::new("cpdir");
    let src = dir.path().join("proj");
    std::fs::create_dir_all(src.join("src/empty")).unwrap();
    std::fs::write(src.join("README"), b"read me").unwrap();
    std::fs::write(src.join("src/run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        src.join("src/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    // Upload the tree (a trailing `/` nests it under its own name), then download it.
    let out = warren(
        &server,
        &["cp", src.to_str().unwrap(), &format!("{id}:/workspace/")],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = dir.path().join("back");
    let out = warren(
        &server,
        &[
            "cp",
            &format!("{id}:/workspace/proj"),
            back.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(back.join("README")).unwrap(), b"read me");
    assert_eq!(
        std::fs::read(back.join("src/run.sh")).unwrap(),
        b"#!/bin/sh\n"
    );
    let mode = std::fs::metadata(back.join("src/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(back.join("src/empty").is_dir());
    // Into an existing directory: nested under the remote name.
    let out = warren(
        &server,
        &[
            "cp",
            &format!("{id}:/workspace/proj"),
            back.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(back.join("proj/README")).unwrap(), b"read me");
}

#[test]
fn unpack_refuses_escaping_entries() {
    let dir = TempDir::new("unpack");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    // `set_path` refuses `..`, so write the name bytes directly.
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let bytes = b.into_inner().unwrap();
    let dest = dir.path().join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    // The CLI relies on `unpack_in` refusing such entries (it reports `false`).
    assert!(!entry.unpack_in(&dest).unwrap());
    assert!(!dir.path().join("escape").exists());
}

/// A scratch directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("warren-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_tty_ps_and_attach() {
    let server = TestServer::start().await;
    let out = warren(&server, &["create"], None).await;
    let id = text(&out.stdout).trim().to_string();

    // -it with a piped stdin: forwarded to the terminal, end of input is ^D.
    let out = warren(&server, &["exec", "-it", &id, "--", "cat"], Some(b"hello")).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // The terminal echoes what is typed, then cat writes it.
    assert_eq!(text(&out.stdout), "hellohello");

    // -t alone: output and the exit code.
    let out = warren(&server, &["exec", "-t", &id, "--", "fail", "3"], None).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    // (A terminal ends lines with CR LF.)
    assert_eq!(text(&out.stdout), "failing\r\n");

    let out = warren(&server, &["ps", &id], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("PID "), "{table}");
    assert!(table.contains("cat") && table.contains("fail 3"), "{table}");
    assert_eq!(table.lines().count(), 3);
    let out = warren(&server, &["ps", "--json", &id], None).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[1]["exit_code"], 3);
    let pid = list[1]["pid"].to_string();

    // Attaching to an exited process reports its exit code; an unknown one is an error.
    let out = warren(&server, &["attach", &id, &pid], None).await;
    assert_eq!(out.status.code(), Some(3));
    let out = warren(&server, &["attach", &id, "4242"], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: process_not_found: "),
        "{}",
        text(&out.stderr)
    );
    // `ls` keeps its `list` alias; `ps` is the process list now.
    let out = warren(&server, &["list"], None).await;
    assert!(text(&out.stdout).contains(&id));
    let out = warren(&server, &["ps"], None).await;
    assert_eq!(out.status.code(), Some(2));
}

/// `exec -it` on a real local terminal (util-linux `script` provides one): raw mode, input
/// forwarded byte for byte (`^D` reaches the remote terminal), exit code passed through.
#[tokio::test(flavor = "multi_thread")]
async fn exec_it_on_a_real_terminal() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no `script` to provide a terminal");
        return;
    }
    let server = TestServer::start().await;
    let out = warren(&server, &["create"], None).await;
    let id = text(&out.stdout).trim().to_string();
    let inner = format!("{} exec -it {id} -- cat", env!("CARGO_BIN_EXE_warren"));
    let mut child = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env("WARREN_URL", &server.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Let the CLI put its terminal in raw mode first.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // As on any terminal: the first ^D hands over the line, the second is end of input.
    stdin.write_all(b"typed\x04\x04").await.unwrap();
    stdin.flush().await.unwrap();
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("the session ended")
        .unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("typed"), "{}", text(&out.stdout));
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_verbs() {
    let server = TestServer::start().await;
    let out = warren(
        &server,
        &[
            "create",
            "--auto-resume",
            "--on-timeout",
            "stop",
            "--idle-timeout",
            "600",
            "--on-idle",
            "delete",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let out = warren(&server, &["inspect", &id], None).await;
    let sb: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            &sb["auto_resume"],
            &sb["on_timeout"],
            &sb["idle_timeout_secs"],
            &sb["on_idle"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!("stop"),
            &serde_json::json!(600),
            &serde_json::json!("delete")
        )
    );

    for (verb, state) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("stop", "stopped"),
        ("start", "running"),
    ] {
        let out = warren(&server, &[verb, &id], None).await;
        assert!(out.status.success(), "{verb}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("{id} {state}\n"));
    }
    let out = warren(&server, &["stop", &id], None).await;
    assert!(out.status.success());
    let out = warren(&server, &["resume", &id, "sb-missing"], None).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error: invalid_transition: "), "{err}");
    assert!(err.contains("error: sandbox_not_found: "), "{err}");
    warren(&server, &["start", &id], None).await;

    server.engine.runtime.set_cpu_usage(&id, 2_000_000);
    let out = warren(&server, &["stats", &id], None).await;
    let table = text(&out.stdout);
    assert!(
        table.starts_with("STATE   running\nCPU     2.000s\n"),
        "{table}"
    );
    let out = warren(&server, &["stats", "--json", &id], None).await;
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["cpu_usage_us"], 2_000_000);

    // Snapshots, restore, rollback, fork.
    let out = warren(
        &server,
        &["cp", "-", &format!("{id}:/workspace/f")],
        Some(b"one"),
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = warren(
        &server,
        &["snapshot", "create", &id, "--name", "first"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let snap = text(&out.stdout).trim().to_string();
    assert!(snap.starts_with("snap"), "{snap}");
    warren(
        &server,
        &["cp", "-", &format!("{id}:/workspace/f")],
        Some(b"two"),
    )
    .await;
    let out = warren(&server, &["snapshot", "ls", "--sandbox", &id], None).await;
    let table = text(&out.stdout);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&snap) && table.contains("first"), "{table}");
    let out = warren(&server, &["snapshot", "ls", "--json"], None).await;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], snap.as_str());

    let cat = |id: String| {
        let server = &server;
        async move {
            let out = warren(server, &["fs", "cat", &id, "/workspace/f"], None).await;
            text(&out.stdout)
        }
    };
    let out = warren(&server, &["create", "--snapshot", &snap], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(cat(text(&out.stdout).trim().to_string()).await, "one");
    let out = warren(&server, &["fork", &id, "--meta", "k=v"], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fork = text(&out.stdout).trim().to_string();
    assert_ne!(fork, id);
    assert_eq!(cat(fork.clone()).await, "two");
    let out = warren(&server, &["rollback", &id, &snap], None).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{id} running\n"));
    assert_eq!(cat(id.clone()).await, "one");
    assert_eq!(cat(fork).await, "two");

    let out = warren(&server, &["snapshot", "rm", &snap], None).await;
    assert_eq!(text(&out.stdout), format!("{snap}\n"));
    let out = warren(&server, &["snapshot", "rm", &snap], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: snapshot_not_found: "));
    let out = warren(&server, &["create", "--snapshot", &snap], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: snapshot_not_found: "));

    // Events of a deleted sandbox: replayed, and the command ends after `deleted`.
    let out = warren(&server, &["rm", &id], None).await;
    assert!(out.status.success());
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        warren(&server, &["events", &id], None),
    )
    .await
    .expect("warren events did not end after the deletion");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = text(&out.stdout);
    let kinds: Vec<&str> = lines
        .lines()
        .map(|l| l.split("  ").nth(3).unwrap_or_default())
        .collect();
    assert_eq!(kinds.first(), Some(&"created"), "{lines}");
    assert_eq!(kinds.last(), Some(&"deleted"), "{lines}");
    assert!(kinds.contains(&"snapshot_created"), "{lines}");
    assert!(lines.contains("running -> pausing  (api)"), "{lines}");
    let out = warren(&server, &["events", "--json", &id], None).await;
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "created");
    let out = warren(&server, &["events", "sb-never"], None).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("error: sandbox_not_found: "));
}

// ---------------------------------------------------------------------------------------
// The same verbs against a real daemon on the real kernel (as root).

mod common;

/// How a real-daemon CLI call gets its standard input.
enum Input<'a> {
    /// `/dev/null`.
    Null,
    /// These bytes, then end of file.
    Bytes(&'a [u8]),
    /// A pipe that stays open (never written to) until the CLI has exited, as Node's
    /// `spawn` or a `while read` loop would leave it.
    OpenPipe,
}

/// Run the CLI against `url`; a call that hangs past a generous deadline fails the test
/// (and is killed) instead of hanging it.
fn warren_at(url: &str, args: &[&str], input: Input<'_>) -> Output {
    use std::io::{Read, Write};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("WARREN_URL", url)
        .env("TERM", "xterm-warren-test")
        .stdin(match input {
            Input::Null => Stdio::null(),
            _ => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warren");
    let mut held = None;
    match input {
        Input::Null => {}
        Input::Bytes(b) => {
            let mut pipe = child.stdin.take().unwrap();
            // The CLI may rightly exit without reading it.
            let _ = pipe.write_all(b);
        }
        Input::OpenPipe => held = child.stdin.take(),
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`warren {}` did not exit", args.join(" "));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(held);
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn sandbox_ids(d: &common::Daemon) -> Vec<String> {
    common::rt().block_on(async {
        let none: &[(&str, &str)] = &[];
        d.client
            .list_sandboxes(none)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect()
    })
}

/// Red-team finding #8: a sandbox's setuid/setgid files and setgid, sticky or
/// world-writable directories arrive on the host without those bits and owned by the
/// caller, for a tree and for a single file; nothing lands outside the destination.
#[test]
fn cp_out_never_writes_setuid_setgid_or_sticky_bits() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let d = common::Daemon::start();
    let id = common::rt().block_on(async {
        let sb = common::create(&d.client).await;
        let r = common::run_sh(
            &d.client,
            &sb.id,
            "set -e; mkdir -p /workspace/proj/shared /workspace/proj/tmp
             cp /bin/sh /workspace/proj/suid && chmod 4755 /workspace/proj/suid
             cp /bin/sh /workspace/proj/sgid && chmod 2755 /workspace/proj/sgid
             echo x > /workspace/proj/plain && chmod 0640 /workspace/proj/plain
             chown 1234:1234 /workspace/proj/plain
             echo y > /workspace/proj/tmp/sticky && chmod 1777 /workspace/proj/tmp/sticky
             chmod 2777 /workspace/proj/shared && chmod 1777 /workspace/proj/tmp
             chmod 2777 /workspace/proj
             ln -s / /workspace/proj/root",
        )
        .await;
        assert_eq!(r.exit_code, 0, "{r:?}");
        sb.id
    });
    let dir = TempDir::new("cp-suid");

    // The tree.
    let dest = dir.path().join("proj");
    let out = warren_at(
        &d.url,
        &[
            "cp",
            &format!("{id}:/workspace/proj"),
            dest.to_str().unwrap(),
        ],
        Input::Null,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mode = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&dest.join("suid")), 0o755);
    assert_eq!(mode(&dest.join("sgid")), 0o755);
    assert_eq!(mode(&dest.join("plain")), 0o640);
    assert_eq!(mode(&dest.join("tmp/sticky")), 0o777);
    assert_eq!(mode(&dest.join("shared")), 0o755);
    assert_eq!(mode(&dest.join("tmp")), 0o755);
    assert_eq!(std::fs::read(dest.join("plain")).unwrap(), b"x\n");
    // Owned by whoever ran the CLI, not by the sandbox's uid 1234.
    let me = std::fs::metadata(dir.path()).unwrap().uid();
    assert_eq!(std::fs::metadata(dest.join("plain")).unwrap().uid(), me);
    // The symlink is a symlink (not followed); nothing outside the destination.
    assert_eq!(
        std::fs::read_link(dest.join("root")).unwrap(),
        std::path::Path::new("/")
    );
    let mut stack = vec![dest.clone()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).unwrap();
        if p != dest {
            assert_eq!(md.mode() & 0o7000, 0, "{} {:o}", p.display(), md.mode());
        }
        if md.is_dir() {
            assert_eq!(md.mode() & 0o022, 0, "{} {:o}", p.display(), md.mode());
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["proj"]);

    // A single file: a new one, and one that replaces an existing setuid file.
    let single = dir.path().join("single");
    let out = warren_at(
        &d.url,
        &[
            "cp",
            &format!("{id}:/workspace/proj/suid"),
            single.to_str().unwrap(),
        ],
        Input::Null,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = mode(&single);
    assert_eq!(m & 0o7000, 0, "{m:o}");
    assert_eq!(m & 0o100, 0o100, "{m:o}");
    let existing = dir.path().join("existing");
    std::fs::write(&existing, b"old").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o6755)).unwrap();
    let out = warren_at(
        &d.url,
        &[
            "cp",
            &format!("{id}:/workspace/proj/sgid"),
            existing.to_str().unwrap(),
        ],
        Input::Null,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(&existing), 0o755);
    assert_eq!(
        std::fs::read(&existing).unwrap(),
        std::fs::read(dest.join("sgid")).unwrap()
    );
}

/// `warren exec` reads standard input only with `-i`: without it, a caller that leaves
/// a pipe open (Node's `spawn`, `while read` loops) gets its output and exit at once.
#[test]
fn exec_reads_stdin_only_with_i() {
    let d = common::Daemon::start();
    let id = common::rt().block_on(async { common::create(&d.client).await.id });

    let out = warren_at(&d.url, &["exec", &id, "--", "echo", "hi"], Input::OpenPipe);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
    // The command sees end of file, not the caller's pipe.
    let out = warren_at(&d.url, &["exec", &id, "--", "cat"], Input::OpenPipe);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    let out = warren_at(&d.url, &["exec", &id, "--", "cat"], Input::Bytes(b"unread"));
    assert_eq!(text(&out.stdout), "");

    // `-i` passes it through; `-n` (kept for compatibility) still wins.
    let out = warren_at(
        &d.url,
        &["exec", "-i", &id, "--", "cat"],
        Input::Bytes("piped ✓\n".as_bytes()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "piped ✓\n");
    let out = warren_at(
        &d.url,
        &["exec", "-i", "-n", &id, "--", "cat"],
        Input::Bytes(b"x"),
    );
    assert_eq!(text(&out.stdout), "");

    // Exit statuses: the command's, 127 not found, 126 cannot run, 125 Warren failed.
    let cases: &[(&[&str], i32, &str)] = &[
        (&["sh", "-c", "exit 7"], 7, ""),
        (&["/nonexistent"], 127, "error: command_not_found: "),
        (&["/etc/passwd"], 126, "error: spawn_failed: "),
    ];
    for (cmd, code, err) in cases {
        let mut args = vec!["exec", id.as_str(), "--"];
        args.extend_from_slice(cmd);
        let out = warren_at(&d.url, &args, Input::Null);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{cmd:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).starts_with(err), "{}", text(&out.stderr));
    }
    let out = warren_at(
        &d.url,
        &["exec", "--cwd", "/does/not/exist", &id, "--", "true"],
        Input::Null,
    );
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    let out = warren_at(&d.url, &["exec", "sb-missing", "--", "true"], Input::Null);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(text(&out.stderr).starts_with("error: sandbox_not_found: "));
    let out = warren_at(
        "http://127.0.0.1:1",
        &["exec", "-t", &id, "--", "true"],
        Input::Null,
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let out = warren_at("not a url", &["exec", &id, "--", "true"], Input::Null);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let out = warren_at(
        &d.url,
        &["exec", "-t", &id, "--", "/nonexistent"],
        Input::Null,
    );
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
}

/// `warren run` checks its flags before it creates anything, and `--rm` deletes the
/// sandbox on every path: exit, failure to start, a terminal session, a signal.
#[test]
fn run_validates_first_and_rm_leaves_nothing() {
    let d = common::Daemon::start();
    let url = d.url.as_str();

    // Bad flags: refused by the parser, no sandbox.
    for bad in [
        &["run", "-x", "--rm", "--", "true"][..],
        &["run", "--bogus", "--", "true"],
        &["run", "-d", "--rm", "--", "sleep", "9"],
        &["run", "--rm", "--memory", "lots", "--", "true"],
    ] {
        let out = warren_at(url, bad, Input::Null);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        assert_eq!(sandbox_ids(&d), Vec::<String>::new(), "{bad:?}");
    }

    // Exit statuses with --rm, and nothing left afterwards.
    let cases: &[(&[&str], i32)] = &[
        (&["run", "--rm", "--", "false"], 1),
        (&["run", "--rm", "--", "/nonexistent"], 127),
        (&["run", "--rm", "--", "/etc/passwd"], 126),
        (&["run", "--rm", "--cwd", "/nope", "--", "true"], 126),
        (&["run", "--rm", "-t", "--", "/nonexistent"], 127),
        (&["run", "--rm", "-t", "--", "sh", "-c", "exit 3"], 3),
        (&["run", "--rm", "-it", "--", "sh", "-c", "exit 4"], 4),
        (
            &["run", "--rm", "--image", "no-such-image", "--", "true"],
            125,
        ),
    ];
    for (args, code) in cases {
        let out = warren_at(url, args, Input::Null);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(sandbox_ids(&d), Vec::<String>::new(), "{args:?}");
    }

    // -i and -t: stdin passed through; a terminal with our TERM.
    let out = warren_at(
        url,
        &["run", "--rm", "-i", "--", "cat"],
        Input::Bytes(b"through"),
    );
    assert_eq!(text(&out.stdout), "through");
    let out = warren_at(
        url,
        &[
            "run",
            "--rm",
            "-t",
            "--",
            "sh",
            "-c",
            "echo $TERM; test -t 0 && echo tty",
        ],
        Input::OpenPipe,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "xterm-warren-test\r\ntty\r\n");
    let out = warren_at(
        url,
        &["run", "--rm", "-it", "--", "cat"],
        Input::Bytes(b"typed\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("typed"), "{}", text(&out.stdout));
    assert_eq!(sandbox_ids(&d), Vec::<String>::new());

    // Without --rm the sandbox stays and its id is on stderr.
    let out = warren_at(url, &["run", "--", "true"], Input::Null);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let kept = text(&out.stderr).trim().to_string();
    assert_eq!(sandbox_ids(&d), vec![kept.clone()]);
    let out = warren_at(url, &["rm", &kept], Input::Null);
    assert!(out.status.success());

    // -d: the id on stdout, the process running; a command that cannot start leaves
    // nothing.
    let out = warren_at(url, &["run", "-d", "--", "sleep", "600"], Input::Null);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bg = text(&out.stdout).trim().to_string();
    assert_eq!(sandbox_ids(&d), vec![bg.clone()]);
    let out = warren_at(url, &["ps", &bg], Input::Null);
    assert!(
        text(&out.stdout).contains("running"),
        "{}",
        text(&out.stdout)
    );
    warren_at(url, &["rm", &bg], Input::Null);
    let out = warren_at(url, &["run", "-d", "--", "/nonexistent"], Input::Null);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert_eq!(sandbox_ids(&d), Vec::<String>::new());

    // SIGTERM, SIGINT and SIGHUP of the client delete the sandbox (streamed and -t).
    for (flags, signal, code) in [
        (&["--rm"][..], libc::SIGTERM, 143),
        (&["--rm", "-t"], libc::SIGTERM, 143),
        (&["--rm"], libc::SIGHUP, 129),
        (&["--rm", "-t"], libc::SIGINT, 130),
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "sh", "-c", "echo started; exec sleep 600"]);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(&args)
            .env("WARREN_URL", url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        let first = lines.next().map(|l| l.unwrap());
        assert_eq!(
            first.as_deref().map(str::trim_end),
            Some("started"),
            "{args:?}"
        );
        assert_eq!(sandbox_ids(&d).len(), 1);
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?}: warren did not stop");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(code), "{args:?}");
        assert_eq!(sandbox_ids(&d), Vec::<String>::new(), "{args:?}");
    }
}

/// `run -it --rm` on a real local terminal (util-linux `script` provides one): what is
/// typed reaches the command, its exit status comes back, the sandbox is gone.
#[test]
fn run_it_rm_on_a_real_terminal() {
    use std::io::Write;
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no `script` to provide a terminal");
        return;
    }
    let d = common::Daemon::start();
    let inner = format!(
        "{} run -it --rm -- sh -c 'read x; echo got:$x; exit 3'",
        env!("CARGO_BIN_EXE_warren")
    );
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &inner, "/dev/null"])
        .env("WARREN_URL", &d.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Wait until the sandbox exists and its command runs before typing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while sandbox_ids(&d).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no sandbox appeared");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stdin.write_all(b"hello\r").unwrap();
    stdin.flush().unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(std::time::Duration::from_secs(90)) else {
        // SAFETY: kill(2) on our child, which the waiting thread has not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        panic!("the terminal session did not end");
    };
    let out = out.unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("got:hello"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(sandbox_ids(&d), Vec::<String>::new());
}
