use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_api::{CreateProcessRequest, CreateSandboxRequest, ProcessState, PtySize};
use warren_server::testing::TestServer;

use crate::{Client, OutputEvent, PtyEvent};

fn req(cmd: &[&str]) -> CreateProcessRequest {
    CreateProcessRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Waits until the process has exited (it runs for real, in the fake's agent).
async fn ended(c: &Client, id: &str, sel: &str) -> warren_api::Process {
    loop {
        let p = c.get_process(id, sel).await.unwrap();
        if p.state != ProcessState::Running {
            return p;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn setup() -> (TestServer, Client, String) {
    let server = TestServer::start().await;
    let c = Client::new(&server.url).unwrap();
    let id = c
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .unwrap()
        .id;
    (server, c, id)
}

#[tokio::test]
async fn process_calls() {
    let (_s, c, id) = setup().await;
    let p = c
        .start_process(
            &id,
            &CreateProcessRequest {
                tag: Some("sl".into()),
                ..req(&["sleep"])
            },
        )
        .await
        .unwrap();
    assert_eq!(p.state, ProcessState::Running);
    assert_eq!(c.list_processes(&id).await.unwrap().len(), 1);
    assert_eq!(c.get_process(&id, "sl").await.unwrap().pid, p.pid);
    let err = c.get_process(&id, "999").await.unwrap_err();
    assert_eq!(err.code(), Some("process_not_found"));
    let err = c.signal_process(&id, "sl", "BOGUS").await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_signal"));
    let err = c.resize(&id, "sl", 10, 10).await.unwrap_err();
    assert_eq!(err.code(), Some("not_a_pty"));
    c.signal_process(&id, "sl", "9").await.unwrap();
    let done = ended(&c, &id, "sl").await;
    assert_eq!(done.signal.as_deref(), Some("SIGKILL"));

    let cat = c
        .start_process(
            &id,
            &CreateProcessRequest {
                stdin: Some(true),
                ..req(&["cat"])
            },
        )
        .await
        .unwrap();
    let pid = cat.pid.to_string();
    let mut h = c.process(&id, &pid);
    h.write("hello ").await.unwrap();
    h.write("world").await.unwrap();
    h.close_stdin().await.unwrap();
    assert_eq!(h.read_to_end().await.unwrap(), b"hello world");
    let exit = h.wait().await.unwrap();
    assert_eq!(exit.exit_code, Some(0));
    // Closing it again changes nothing; writing to it is refused.
    c.close_stdin(&id, &pid).await.unwrap();
    let err = h.write("more").await.unwrap_err();
    assert_eq!(err.code(), Some("stdin_closed"));
}

#[tokio::test]
async fn output_follows_until_exit_and_wait() {
    let (_s, c, id) = setup().await;
    let p = c.start_process(&id, &req(&["ticks", "4"])).await.unwrap();
    let h = c.process(&id, &p.pid.to_string());
    let events: Vec<OutputEvent> = c
        .output(&id, &p.pid.to_string(), 0)
        .map(|e| e.unwrap())
        .collect()
        .await;
    let mut text = Vec::new();
    let mut next = 0;
    for e in &events[..events.len() - 1] {
        let OutputEvent::Stdout { offset, data } = e else {
            panic!("{e:?}")
        };
        assert_eq!(*offset, next);
        next += data.len() as u64;
        text.extend_from_slice(data);
    }
    assert_eq!(text, b"tick 1\ntick 2\ntick 3\ntick 4\n");
    assert!(matches!(events.last(), Some(OutputEvent::Exit(p)) if p.exit_code == Some(0)));
    assert_eq!(h.wait().await.unwrap().exit_code, Some(0));
}

/// A proxy that cuts its first connection after `limit` response bytes.
async fn flaky_proxy(
    upstream: std::net::SocketAddr,
    limit: usize,
    conns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut down, _)) = listener.accept().await {
            conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let cut = std::mem::replace(&mut first, false);
            tokio::spawn(async move {
                let mut up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                if !cut {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    return;
                }
                let (mut ur, mut uw) = up.split();
                let (mut dr, mut dw) = down.split();
                let to_up = tokio::io::copy(&mut dr, &mut uw);
                let to_down = async {
                    let mut sent = 0;
                    let mut buf = [0u8; 256];
                    while sent < limit {
                        let n = ur.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        let n = n.min(limit - sent);
                        dw.write_all(&buf[..n]).await.unwrap();
                        sent += n;
                    }
                };
                tokio::select! {
                    _ = to_up => {}
                    _ = to_down => {}
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn output_reconnects_after_a_drop() {
    let (s, c, id) = setup().await;
    let p = c.start_process(&id, &req(&["ticks", "30"])).await.unwrap();
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flaky = Client::new(&flaky_proxy(s.addr, 700, conns.clone()).await).unwrap();
    let events: Vec<OutputEvent> = flaky
        .output(&id, &p.pid.to_string(), 0)
        .map(|e| e.unwrap())
        .collect()
        .await;
    let mut text = Vec::new();
    let mut next = 0;
    for e in &events[..events.len() - 1] {
        let OutputEvent::Stdout { offset, data } = e else {
            panic!("{e:?}")
        };
        assert_eq!(*offset, next, "every byte exactly once");
        next += data.len() as u64;
        text.extend_from_slice(data);
    }
    let want: String = (1..=30).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(String::from_utf8(text).unwrap(), want);
    assert!(matches!(events.last(), Some(OutputEvent::Exit(_))));
    assert!(
        conns.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the first connection was cut and the stream reconnected"
    );
}

#[tokio::test]
async fn output_reports_lost_bytes() {
    let (_s, c, id) = setup().await;
    let p = c
        .start_process(
            &id,
            &CreateProcessRequest {
                log_bytes: Some(1024 * 1024),
                ..req(&["yes", "2000000"])
            },
        )
        .await
        .unwrap();
    // Once it has written everything, the start of its output is gone.
    let p = ended(&c, &id, &p.pid.to_string()).await;
    let mut out = c.output(&id, &p.pid.to_string(), 0);
    let first = out.next().await.unwrap().unwrap();
    assert_eq!(
        first,
        OutputEvent::Lost {
            from: 0,
            to: p.output_start
        }
    );
}

#[tokio::test]
async fn pty_session() {
    let (_s, c, id) = setup().await;
    let p = c
        .start_process(
            &id,
            &CreateProcessRequest {
                pty: Some(PtySize { rows: 24, cols: 80 }),
                ..req(&["cat"])
            },
        )
        .await
        .unwrap();
    let pid = p.pid.to_string();
    let mut t = c.pty(&id, &pid).await.unwrap();
    t.send(&b"ab"[..]).await.unwrap();
    // The terminal echoes the input (a real one: it may come in pieces, and cat's own copy
    // may follow).
    let mut seen = Vec::new();
    while !seen.ends_with(b"ab") {
        match t.next().await.unwrap().unwrap() {
            PtyEvent::Output(b) => seen.extend_from_slice(&b),
            other => panic!("{other:?}"),
        }
    }
    t.resize(30, 90).await.unwrap();
    t.resize(0, 90).await.unwrap();
    loop {
        match t.next().await.unwrap().unwrap() {
            PtyEvent::Output(_) => {}
            PtyEvent::Error { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        c.get_process(&id, &pid).await.unwrap().pty,
        Some(PtySize { rows: 30, cols: 90 })
    );
    // ^D twice: the first hands cat the pending line, the second is end of input.
    t.send(&b"\x04\x04"[..]).await.unwrap();
    loop {
        match t.next().await.unwrap().unwrap() {
            PtyEvent::Output(_) => {}
            PtyEvent::Exit(p) => {
                assert_eq!(p.exit_code, Some(0));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(t.next().await.is_none());
    let err = c.pty(&id, "4242").await.unwrap_err();
    assert_eq!(err.code(), Some("process_not_found"));
}
