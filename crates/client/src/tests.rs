use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use warren_api::{CreateSandboxRequest, ExecRequest, OutputEncoding};
use warren_server::testing::TestServer;

use super::*;

fn exec_req(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn urls() {
    let c = Client::new("http://127.0.0.1:7400").unwrap();
    assert_eq!(
        c.url(&["v1", "sandboxes", "a b/c"]).as_str(),
        "http://127.0.0.1:7400/v1/sandboxes/a%20b%2Fc"
    );
    let c = Client::new("http://host:1/prefix/").unwrap();
    assert_eq!(c.url(&["healthz"]).as_str(), "http://host:1/prefix/healthz");
    for bad in ["", "127.0.0.1:7400", "ftp://x", "mailto:a@b", "http://"] {
        assert!(
            matches!(Client::new(bad), Err(Error::InvalidUrl { .. })),
            "{bad}"
        );
    }
    assert_eq!(fallback_code(StatusCode::BAD_GATEWAY), "bad_gateway");
}

#[tokio::test]
async fn lifecycle() {
    let server = TestServer::start().await;
    let c = Client::new(&server.url).unwrap();
    c.health().await.unwrap();
    assert_eq!(c.capabilities().await.unwrap().runtime, "native");

    let req = CreateSandboxRequest {
        metadata: [("team & co".to_string(), "a=b c".to_string())].into(),
        ..Default::default()
    };
    let a = c.create_sandbox(&req).await.unwrap();
    let b = c
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap();
    assert_eq!(c.get_sandbox(&a.id).await.unwrap().id, a.id);

    let all = c.list_sandboxes::<&str, &str>(&[]).await.unwrap();
    assert_eq!(all.len(), 2);
    let found = c.list_sandboxes(&[("team & co", "a=b c")]).await.unwrap();
    assert_eq!(found.iter().map(|s| &s.id).collect::<Vec<_>>(), [&a.id]);
    let owned = vec![("team & co".to_string(), "other".to_string())];
    assert!(c.list_sandboxes(&owned).await.unwrap().is_empty());

    let updated = c.set_timeout(&a.id, 1234).await.unwrap();
    assert_eq!(updated.timeout_secs, 1234);

    c.delete_sandbox(&a.id).await.unwrap();
    c.sandbox(&b.id).delete().await.unwrap();
    let err = c.delete_sandbox(&a.id).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    match c.get_sandbox("nope").await.unwrap_err() {
        Error::Api {
            status,
            code,
            message,
        } => {
            assert_eq!(status, 404);
            assert_eq!(code, "sandbox_not_found");
            assert!(!message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let err = c
        .create_sandbox(&CreateSandboxRequest {
            timeout_secs: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_request"));
    assert!(err.to_string().starts_with("invalid_request: "), "{err}");
}

#[tokio::test]
async fn exec_collected() {
    let server = TestServer::start().await;
    let c = Client::new(&server.url).unwrap();
    let sb = c.sandbox(
        c.create_sandbox(&CreateSandboxRequest::default())
            .await
            .unwrap()
            .id,
    );
    let r = sb.run(["echo", "hi", "there"]).await.unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str()), (0, "hi there\n"));

    let mut req = exec_req(&["binary"]);
    req.encoding = Some(OutputEncoding::Base64);
    let r = sb.exec(&req).await.unwrap();
    assert_eq!(
        decode_base64(&r.stdout).unwrap(),
        (0..=255u8).collect::<Vec<_>>()
    );

    let err = sb.run(["nope"]).await.unwrap_err();
    assert_eq!(err.code(), Some("command_not_found"));
    let err = c.exec("missing", &exec_req(&["echo"])).await.unwrap_err();
    assert!(err.is_not_found());
}

#[tokio::test]
async fn exec_streamed() {
    let server = TestServer::start().await;
    let c = Client::new(&server.url).unwrap();
    let id = c
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap()
        .id;

    let events: Vec<_> = c
        .exec_stream(&id, &exec_req(&["split-utf8"]))
        .await
        .unwrap()
        .collect()
        .await;
    let events: Vec<ExecStreamEvent> = events.into_iter().map(Result::unwrap).collect();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0], ExecStreamEvent::Stdout(b"caf".to_vec()));
    assert_eq!(events[1], ExecStreamEvent::Stderr(b"warn\n".to_vec()));
    assert_eq!(
        events[2],
        ExecStreamEvent::Stdout("é\n".as_bytes().to_vec())
    );
    assert!(matches!(&events[3], ExecStreamEvent::Exit(e) if e.exit_code == 0));

    let mut req = exec_req(&["binary"]);
    req.encoding = Some(OutputEncoding::Base64);
    let (out, err, exit) = c
        .exec_stream(&id, &req)
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(out, (0..=255u8).collect::<Vec<_>>());
    assert!(err.is_empty());
    assert_eq!(exit.exit_code, 0);

    let (out, _, _) = c
        .exec_stream(&id, &exec_req(&["yes", "100000"]))
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(out.len(), 100_000);

    let (_, _, exit) = c
        .exec_stream(&id, &exec_req(&["fail", "7"]))
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    assert_eq!(exit.exit_code, 7);

    // Errors before the start come from exec_stream itself.
    let err = c
        .exec_stream("missing", &exec_req(&["echo"]))
        .await
        .unwrap_err();
    assert!(err.is_not_found());
    let err = c.exec_stream(&id, &exec_req(&[])).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_request"));

    // A failure mid-stream is the last item.
    let items: Vec<_> = c
        .exec_stream(&id, &exec_req(&["broken"]))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 2);
    assert!(matches!(&items[0], Ok(ExecStreamEvent::Stdout(b)) if b == b"partial\n"));
    assert!(matches!(&items[1], Err(Error::Api { code, .. }) if code == "runtime_error"));
}

#[tokio::test]
async fn dropping_the_stream_kills_the_command() {
    let server = TestServer::start().await;
    let c = Client::new(&server.url).unwrap();
    let id = c
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap()
        .id;
    let mut events = c.exec_stream(&id, &exec_req(&["sleep"])).await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first, ExecStreamEvent::Stdout(b"started\n".to_vec()));
    let drops = server.engine.runtime.drops.clone();
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(events);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while drops.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "command not killed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn connection_refused_is_http_error() {
    // Bind then close, so the port is very likely free.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = Client::new(&format!("http://{addr}")).unwrap();
    assert!(matches!(c.health().await, Err(Error::Http(_))));
}

#[tokio::test]
async fn files() {
    let server = TestServer::start().await;
    let c = Client::new(&server.url).unwrap();
    assert!(c.capabilities().await.unwrap().features.files);
    let sb = c.sandbox(
        c.create_sandbox(&CreateSandboxRequest::default())
            .await
            .unwrap()
            .id,
    );

    // Upload from a file on disk, streamed.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("data.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let file = tokio::fs::File::open(&local).await.unwrap();
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let info = sb
        .write_file("/workspace/a b/data.bin", body, Some(0o755))
        .await
        .unwrap();
    assert_eq!((info.size, info.mode), (3_000_000, 0o755));
    assert_eq!(
        sb.read_file_bytes("/workspace/a b/data.bin").await.unwrap(),
        data
    );
    let mut stream = sb.read_file("/workspace/a b/data.bin").await.unwrap();
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        n += chunk.unwrap().len();
    }
    assert_eq!(n, 3_000_000);

    let info = sb
        .write_file_as("/home/user/x", "hello", None, api::ExecUser::User)
        .await
        .unwrap();
    assert_eq!((info.uid, info.mode), (1000, 0o644));
    assert_eq!(sb.stat("/home/user/x").await.unwrap().size, 5);
    assert_eq!(
        sb.mkdir("/workspace/d/e").await.unwrap().kind,
        api::FileKind::Dir
    );
    let list = sb.list_files("/workspace", 2).await.unwrap();
    assert_eq!(list.entries.len(), 4);
    sb.move_path("/home/user/x", "/workspace/d/x", false)
        .await
        .unwrap();
    // Onto itself without overwrite: the target exists.
    let err = sb
        .move_path("/workspace/d/x", "/workspace/d/x", false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("file_exists"));
    let err = sb.remove_path("/workspace/d", false).await.unwrap_err();
    assert_eq!(err.code(), Some("directory_not_empty"));
    sb.remove_path("/workspace/d", true).await.unwrap();
    let err = sb.stat("/workspace/d/x").await.unwrap_err();
    assert!(err.is_file_not_found(), "{err}");
    let err = sb.read_file("/workspace/nope").await.err().unwrap();
    assert!(err.is_file_not_found(), "{err}");
    let err = sb.list_files("/", 0).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_request"));
}

mod lifecycle;
mod pools;
mod processes;
