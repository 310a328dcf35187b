use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use warren_api::{CreateSandboxRequest, ExecRequest, Resources, SandboxState};

use crate::{Engine, EngineConfig, EngineError, ExecOutput};
use warren_testkit::FakeRuntime;

pub(crate) fn config() -> EngineConfig {
    let mut c = EngineConfig::with_defaults(std::path::PathBuf::from("/nonexistent"));
    c.max_cpus = 2.0;
    c.max_memory_mib = 4096;
    c.max_pids = 4096;
    c.default_resources = Resources {
        cpus: Some(1.0),
        memory_mib: Some(512),
        pids: Some(256),
        disk_mib: None,
    };
    c.reap_interval = Duration::from_millis(20);
    // Deterministic whatever the host: admission is tested with its own settings.
    c.max_committed_memory_mib = 0;
    c.min_available_memory_mib = 0;
    c.min_free_disk_mib = 0;
    c
}

pub(crate) struct TestDir(pub std::path::PathBuf);
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) async fn engine_with(mut c: EngineConfig) -> (Engine, Arc<FakeRuntime>, TestDir) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "warren-engine-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    c.data_dir = dir.clone();
    let rt = Arc::new(FakeRuntime::new());
    let e = Engine::open(c, rt.clone()).await.unwrap();
    (e, rt, TestDir(dir))
}

pub(crate) async fn engine() -> (Engine, Arc<FakeRuntime>, TestDir) {
    engine_with(config()).await
}

pub(crate) fn exec(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_get_list_delete() {
    let (e, rt, _d) = engine().await;
    let a = e
        .create(CreateSandboxRequest {
            metadata: [("team".to_string(), "x".to_string())].into(),
            env: [("SECRET".to_string(), "v".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(a.state, SandboxState::Running);
    assert_eq!(a.timeout_secs, 300);
    assert_eq!(a.env_keys, vec!["SECRET".to_string()]);
    assert_eq!(a.resources.memory_mib, Some(512));
    let b = e.create(CreateSandboxRequest::default()).await.unwrap();
    assert_eq!(rt.live().len(), 2);
    let filter = [("team".to_string(), "x".to_string())].into();
    let listed = e.list(&filter).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, a.id);
    assert_eq!(e.list(&Default::default()).await.unwrap().len(), 2);
    e.delete(&a.id).await.unwrap();
    assert!(matches!(
        e.get(&a.id).await,
        Err(EngineError::SandboxNotFound(_))
    ));
    assert!(matches!(
        e.delete(&a.id).await,
        Err(EngineError::SandboxNotFound(_))
    ));
    assert_eq!(rt.live(), vec![b.id.clone()]);
    e.shutdown_deleting_all().await;
    assert!(rt.live().is_empty());
    assert!(rt.shut_down.load(std::sync::atomic::Ordering::SeqCst));
}

#[tokio::test]
async fn bad_input_changes_nothing() {
    let (e, rt, _d) = engine().await;
    for req in [
        CreateSandboxRequest {
            image: Some("nope".into()),
            ..Default::default()
        },
        CreateSandboxRequest {
            timeout_secs: Some(0),
            ..Default::default()
        },
        CreateSandboxRequest {
            resources: Some(Resources {
                memory_mib: Some(1 << 40),
                ..Default::default()
            }),
            ..Default::default()
        },
    ] {
        assert!(e.create(req).await.is_err());
    }
    assert!(e.list(&Default::default()).await.unwrap().is_empty());
    assert!(rt.live().is_empty());
}

#[tokio::test]
async fn failed_create_leaves_nothing() {
    let (e, rt, _d) = engine().await;
    rt.fail_next_create();
    let err = e.create(CreateSandboxRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), "runtime_error");
    assert!(e.list(&Default::default()).await.unwrap().is_empty());
    assert!(rt.live().is_empty());
}

#[tokio::test]
async fn delete_during_create() {
    let (e, rt, _d) = engine().await;
    rt.set_create_delay(Duration::from_millis(200));
    let e2 = e.clone();
    let create = tokio::spawn(async move { e2.create(CreateSandboxRequest::default()).await });
    // Wait until the record exists, then delete it while the runtime is still creating.
    let id = loop {
        if let Some(s) = e.list(&Default::default()).await.unwrap().first() {
            break s.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    e.delete(&id).await.unwrap();
    let res = create.await.unwrap();
    assert_eq!(res.unwrap_err().code(), "invalid_state");
    assert!(rt.live().is_empty());
    assert!(e.get(&id).await.is_err());
}

#[tokio::test]
async fn concurrent_deletes_all_succeed() {
    let (e, rt, _d) = engine().await;
    let s = e.create(CreateSandboxRequest::default()).await.unwrap();
    let (a, b) = tokio::join!(e.delete(&s.id), e.delete(&s.id));
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    assert!(rt.live().is_empty());
}

#[tokio::test]
async fn ttl_expiry_and_extension() {
    let (e, rt, _d) = engine().await;
    let reaper = e.spawn_reaper();
    let keep = e
        .create(CreateSandboxRequest {
            timeout_secs: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let gone = e
        .create(CreateSandboxRequest {
            timeout_secs: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let updated = e.set_timeout(&keep.id, 3600).await.unwrap();
    assert!(updated.expires_at > keep.expires_at);
    assert!(e.set_timeout(&keep.id, 0).await.is_err());
    for _ in 0..200 {
        if e.get(&gone.id).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        e.get(&gone.id).await.is_err(),
        "expired sandbox still there"
    );
    assert!(e.get(&keep.id).await.is_ok());
    assert_eq!(rt.live(), vec![keep.id.clone()]);
    reaper.abort();
}

#[tokio::test]
async fn admission_limit() {
    let mut c = config();
    c.max_sandboxes = 2;
    let (e, _rt, _d) = engine_with(c).await;
    e.create(CreateSandboxRequest::default()).await.unwrap();
    e.create(CreateSandboxRequest::default()).await.unwrap();
    let err = e.create(CreateSandboxRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), "limit_reached");
}

#[tokio::test]
async fn exec_env_and_errors() {
    let (e, _rt, _d) = engine().await;
    let s = e
        .create(CreateSandboxRequest {
            env: [("FROM_SANDBOX".to_string(), "1".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut req = exec(&["env"]);
    req.env.insert("FROM_EXEC".into(), "2".into());
    let out = e.collect(e.exec(&s.id, req).await.unwrap()).await.unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("FROM_SANDBOX=1\n"), "{text}");
    assert!(text.contains("FROM_EXEC=2\n"));
    assert!(text.contains("HOME=/root\n"));
    assert!(text.contains(&format!("HOSTNAME={}\n", s.id)));
    assert_eq!(out.exit.unwrap().exit_code, 0);

    assert_eq!(
        e.exec(&s.id, exec(&[])).await.err().unwrap().code(),
        "invalid_request"
    );
    assert_eq!(
        e.exec("sb-nope", exec(&["echo"]))
            .await
            .err()
            .unwrap()
            .code(),
        "sandbox_not_found"
    );
    let err = e.exec(&s.id, exec(&["nonexistent"])).await.err().unwrap();
    assert_eq!(err.code(), "command_not_found");
    let mut bad_cwd = exec(&["echo"]);
    bad_cwd.cwd = Some("relative".into());
    assert_eq!(
        e.exec(&s.id, bad_cwd).await.err().unwrap().code(),
        "invalid_request"
    );

    let mut stream = e.exec(&s.id, exec(&["fail", "3"])).await.unwrap();
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item.unwrap());
    }
    assert!(matches!(last, Some(ExecOutput::Exit(x)) if x.exit_code == 3));
}

#[tokio::test]
async fn capture_is_capped() {
    let mut c = config();
    c.max_exec_capture_bytes = 4;
    let (e, _rt, _d) = engine_with(c).await;
    let s = e.create(CreateSandboxRequest::default()).await.unwrap();
    let out = e
        .collect(e.exec(&s.id, exec(&["echo", "hello"])).await.unwrap())
        .await
        .unwrap();
    assert_eq!(out.stdout, b"hell");
    assert!(out.truncated);
}

#[tokio::test]
async fn restart_marks_old_sandboxes_failed() {
    let (e, _rt, dir) = engine().await;
    let s = e.create(CreateSandboxRequest::default()).await.unwrap();
    drop(e);
    let mut c = config();
    c.data_dir = dir.0.clone();
    let e = Engine::open(c, Arc::new(FakeRuntime::new())).await.unwrap();
    let got = e.get(&s.id).await.unwrap();
    assert_eq!(got.state, SandboxState::Failed);
    assert!(got.failure_reason.is_some());
    let err = e.exec(&s.id, exec(&["echo"])).await.err().unwrap();
    assert_eq!(err.code(), "invalid_state");
    e.delete(&s.id).await.unwrap();
    assert!(e.get(&s.id).await.is_err());
}

pub(crate) fn body(
    chunks: Vec<Result<bytes::Bytes, warren_runtime::RuntimeError>>,
) -> crate::ByteStream {
    Box::pin(futures::stream::iter(chunks))
}

pub(crate) async fn read_all(e: &Engine, id: &str, path: &str) -> Result<Vec<u8>, EngineError> {
    let (_, mut s) = e.read_file(id, path).await?;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

#[tokio::test]
async fn files_round_trip_and_errors() {
    use warren_api::{ExecUser, FileKind};
    let (e, rt, _d) = engine().await;
    assert!(e.capabilities().features.files);
    let sb = e.create(CreateSandboxRequest::default()).await.unwrap();
    let id = sb.id.as_str();

    let data = vec![Ok(bytes::Bytes::from_static(b"ab\0")), Ok("cd".into())];
    let info = e
        .write_file(id, "/workspace/new/dir/f", None, ExecUser::Root, body(data))
        .await
        .unwrap();
    assert_eq!((info.size, info.mode, info.uid), (5, 0o644, 0));
    assert_eq!(
        read_all(&e, id, "/workspace/new/dir/f").await.unwrap(),
        b"ab\0cd"
    );
    let info = e
        .write_file(
            id,
            "/home/user/g",
            Some(0o600),
            ExecUser::User,
            body(vec![]),
        )
        .await
        .unwrap();
    assert_eq!(
        (info.size, info.mode, info.uid, info.gid),
        (0, 0o600, 1000, 1000)
    );

    // A failing upload changes nothing.
    let broken = vec![
        Ok("new".into()),
        Err(warren_runtime::RuntimeError::Io(std::io::Error::other(
            "reset",
        ))),
    ];
    let err = e
        .write_file(
            id,
            "/workspace/new/dir/f",
            None,
            ExecUser::Root,
            body(broken),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "runtime_error");
    assert_eq!(
        rt.aborted_writes.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        read_all(&e, id, "/workspace/new/dir/f").await.unwrap(),
        b"ab\0cd"
    );
    assert_eq!(e.get(id).await.unwrap().state, SandboxState::Running);

    let list = e.list_files(id, "/workspace", 1).await.unwrap();
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].kind, FileKind::Dir);
    assert_eq!(
        e.list_files(id, "/workspace", 3)
            .await
            .unwrap()
            .entries
            .len(),
        3
    );

    let dir = e
        .mkdir(id, "/workspace/a/b", true, Some(0o700), ExecUser::User)
        .await
        .unwrap();
    assert_eq!((dir.kind, dir.mode, dir.uid), (FileKind::Dir, 0o700, 1000));
    e.move_path(id, "/workspace/new", "/workspace/a/moved", false)
        .await
        .unwrap();
    assert_eq!(
        e.stat(id, "/workspace/a/moved/dir/f").await.unwrap().size,
        5
    );

    let code = |r: Result<(), EngineError>| {
        let err = r.unwrap_err();
        err.code()
    };
    assert_eq!(
        code(e.remove(id, "/workspace/a", false).await),
        "directory_not_empty"
    );
    e.remove(id, "/workspace/a", true).await.unwrap();
    assert_eq!(
        code(e.stat(id, "/workspace/a").await.map(drop)),
        "file_not_found"
    );
    assert_eq!(
        code(e.stat(id, "relative").await.map(drop)),
        "invalid_request"
    );
    assert_eq!(
        code(e.list_files(id, "/", 11).await.map(drop)),
        "invalid_request"
    );
    assert_eq!(code(e.remove(id, "/", true).await), "invalid_request");
    assert_eq!(
        code(e.stat("sb-nope", "/").await.map(drop)),
        "sandbox_not_found"
    );
    assert_eq!(
        code(read_all(&e, id, "/io-error").await.map(drop)),
        "io_error"
    );
    assert_eq!(
        code(
            e.mkdir(id, "/readonly/x", true, None, ExecUser::Root)
                .await
                .map(drop)
        ),
        "permission_denied"
    );
}

#[tokio::test]
async fn file_metadata_follows_the_file() {
    use std::collections::BTreeMap;
    use warren_api::ExecUser;
    let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (e, _rt, _d) = engine().await;
    let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
    let id = id.as_str();
    e.write_file(
        id,
        "/workspace/f",
        None,
        ExecUser::Root,
        body(vec![Ok("x".into())]),
    )
    .await
    .unwrap();

    let info = match e
        .set_file_metadata(id, "/workspace/f", m(&[("Author", "ann"), ("run.id", "7")]))
        .await
    {
        Err(err) if err.code() == "not_supported" => {
            eprintln!("SKIPPED: the fake sandbox's file system has no user xattrs: {err}");
            return;
        }
        r => r.unwrap(),
    };
    assert_eq!(info.metadata, m(&[("author", "ann"), ("run.id", "7")]));
    assert_eq!(
        e.stat(id, "/workspace/f").await.unwrap().metadata,
        info.metadata
    );
    let list = e.list_files(id, "/workspace", 1).await.unwrap();
    assert_eq!(list.entries[0].metadata, info.metadata);
    // Serialized only when present.
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["metadata"]["author"], "ann");
    let dir = e.stat(id, "/workspace").await.unwrap();
    assert!(serde_json::to_value(&dir)
        .unwrap()
        .get("metadata")
        .is_none());

    e.move_path(id, "/workspace/f", "/workspace/g", false)
        .await
        .unwrap();
    let info = e
        .set_file_metadata(id, "/workspace/g", m(&[("author", "")]))
        .await
        .unwrap();
    assert_eq!(info.metadata, m(&[("run.id", "7")]));

    // Bad input is refused by the engine itself: before it even looks for the sandbox.
    let code = |r: Result<warren_api::FileInfo, EngineError>| r.unwrap_err().code();
    for bad in [
        m(&[("bad key", "v")]),
        m(&[("k", &"v".repeat(4097))]),
        m(&[("K", "1"), ("k", "2")]),
        (0..33)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect(),
    ] {
        assert_eq!(
            code(e.set_file_metadata("sb-nope", "/workspace/g", bad).await),
            "invalid_request"
        );
    }
    assert_eq!(
        code(e.set_file_metadata(id, "/", m(&[("k", "v")])).await),
        "invalid_request"
    );
    assert_eq!(
        code(e.set_file_metadata(id, "relative", m(&[("k", "v")])).await),
        "invalid_request"
    );
    assert_eq!(
        code(
            e.set_file_metadata(id, "/workspace/none", m(&[("k", "v")]))
                .await
        ),
        "file_not_found"
    );
    assert_eq!(
        e.stat(id, "/workspace/g").await.unwrap().metadata,
        m(&[("run.id", "7")])
    );
}

mod processes {
    use super::*;
    use crate::processes::AttachEvent;
    use warren_api::{CreateProcessRequest, SignalValue};

    fn req(cmd: &[&str]) -> CreateProcessRequest {
        CreateProcessRequest {
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Waits until the process has exited (it runs for real, in the fake's agent).
    async fn ended(e: &Engine, id: &str, sel: &str) -> warren_api::Process {
        loop {
            let p = e.get_process(id, sel).await.unwrap();
            if p.state != warren_api::ProcessState::Running {
                return p;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn events(e: &Engine, id: &str, sel: &str, offset: u64) -> Vec<AttachEvent> {
        e.attach(id, sel, offset, true)
            .await
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
            .await
    }

    #[tokio::test]
    async fn attach_replays_reports_lost_and_ends() {
        let (e, _rt, _d) = engine().await;
        let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
        let p = e.start_process(&id, req(&["echo", "hi"])).await.unwrap();
        let pid = p.pid.to_string();
        ended(&e, &id, &pid).await;
        let ev = events(&e, &id, &pid, 0).await;
        assert_eq!(ev[0], AttachEvent::Attached { offset: 0, end: 3 });
        assert_eq!(ev[1], AttachEvent::Stdout("hi\n".into()));
        assert!(matches!(&ev[2], AttachEvent::Ended(i) if i.exit_code == Some(0)));
        let ev = events(&e, &id, &pid, 1).await;
        assert_eq!(ev[1], AttachEvent::Stdout("i\n".into()));

        let p = e
            .start_process(
                &id,
                CreateProcessRequest {
                    log_bytes: Some(1024 * 1024),
                    ..req(&["yes", "1100000"])
                },
            )
            .await
            .unwrap();
        // Once it has written everything, the start of its output is gone.
        let p = ended(&e, &id, &p.pid.to_string()).await;
        assert!(p.output_start > 0);
        let ev = events(&e, &id, &p.pid.to_string(), 0).await;
        assert_eq!(
            ev[1],
            AttachEvent::Lost {
                from: 0,
                to: p.output_start
            }
        );
        let got: usize = ev
            .iter()
            .map(|e| match e {
                AttachEvent::Stdout(b) => b.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(got as u64, 1_100_000 - p.output_start);
    }

    #[tokio::test]
    async fn errors_map_to_api_codes() {
        let (e, _rt, _d) = engine().await;
        let id = e.create(CreateSandboxRequest::default()).await.unwrap().id;
        let err = e.get_process(&id, "77").await.unwrap_err();
        assert_eq!(err.code(), "process_not_found");
        e.start_process(
            &id,
            CreateProcessRequest {
                tag: Some("t".into()),
                ..req(&["sleep"])
            },
        )
        .await
        .unwrap();
        let err = e
            .start_process(
                &id,
                CreateProcessRequest {
                    tag: Some("t".into()),
                    ..req(&["sleep"])
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), "tag_in_use");
        let err = e.resize_process(&id, "t", 5, 5).await.unwrap_err();
        assert_eq!(err.code(), "not_a_pty");
        // Closing a closed stdin is a no-op (the agent's answer); writing to it is refused.
        e.close_stdin(&id, "t").await.unwrap();
        let data: crate::ByteStream =
            Box::pin(futures::stream::iter([Ok(bytes::Bytes::from_static(b"x"))]));
        let err = e.write_stdin(&id, "t", data).await.unwrap_err();
        assert_eq!(err.code(), "stdin_closed");
        let err = e
            .signal_process(&id, "t", &SignalValue::Number(0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "invalid_signal");
        let err = e.start_process(&id, req(&["missing"])).await.unwrap_err();
        assert_eq!(err.code(), "command_not_found");
        let err = e.list_processes("sb-nope").await.unwrap_err();
        assert_eq!(err.code(), "sandbox_not_found");
        e.signal_process(&id, "t", &SignalValue::Name("usr1".into()))
            .await
            .unwrap();
        let p = ended(&e, &id, "t").await;
        assert_eq!(p.signal.as_deref(), Some("SIGUSR1"));
    }
}

mod disk;
mod hardening;
mod lifecycle;
mod pools;

/// A runtime that cannot carry connections out of a sandbox offers no broker: credentials
/// are refused (400 `network_unavailable`) and nothing is made.
#[tokio::test]
async fn credentials_need_a_broker() {
    let (e, _rt, _dir) = engine().await;
    assert!(!e.capabilities().network.broker);
    let err = e
        .create(CreateSandboxRequest {
            credentials: vec![warren_api::CredentialRequest {
                upstream: "https://api.example.com".into(),
                header: "x-api-key".into(),
                value: "sk-secret-value".into(),
                base_url_env: "X_BASE_URL".into(),
                token_env: "X_API_KEY".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        warren_api::ErrorCode::NetworkUnavailable,
        "{err}"
    );
    assert!(!err.to_string().contains("sk-secret-value"));
    assert!(e.list(&Default::default()).await.unwrap().is_empty());
}
