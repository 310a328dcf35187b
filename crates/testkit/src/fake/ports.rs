//! The fake sandboxes' ports: two servers on ephemeral loopback ports of the host, shared
//! by every fake sandbox of this process, which a hosted agent reaches as its ports 7 and
//! 8080 (no other port of a fake sandbox accepts connections).
//!
//! - port [`ECHO_PORT`] (7): echoes every byte; after the client half-closes it writes
//!   `bye` and closes.
//! - port [`HTTP_PORT`] (8080): a tiny HTTP/1.1 server, one request per connection. It
//!   answers `200 text/plain` with a description of the request (`METHOD TARGET`, then
//!   `host`, `x-forwarded-for`, `x-forwarded-proto`, `x-forwarded-host`, `connection` and
//!   `keep-alive` header values one per line as `name: value`, then `body: BODY`);
//!   `/status/CODE` answers with that status; `/sse` streams three `data: N` events, 50 ms
//!   apart; a request with an `Upgrade` header is answered `101` and the connection then
//!   echoes raw bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

pub const ECHO_PORT: u16 = 7;
pub const HTTP_PORT: u16 = 8080;

/// The sandbox ports and where the servers behind them listen (started on first use, on a
/// thread of their own, for the life of the process).
pub(crate) fn ports() -> &'static HashMap<u16, SocketAddr> {
    static PORTS: OnceLock<HashMap<u16, SocketAddr>> = OnceLock::new();
    PORTS.get_or_init(|| {
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let (echo_l, http_l) = (bind(), bind());
        let map = HashMap::from([
            (ECHO_PORT, echo_l.local_addr().expect("local addr")),
            (HTTP_PORT, http_l.local_addr().expect("local addr")),
        ]);
        std::thread::Builder::new()
            .name("fake-ports".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake ports runtime");
                rt.block_on(async move {
                    let listen = |l: std::net::TcpListener| {
                        l.set_nonblocking(true).expect("nonblocking");
                        TcpListener::from_std(l).expect("listener")
                    };
                    let (echo_l, http_l) = (listen(echo_l), listen(http_l));
                    loop {
                        tokio::select! {
                            Ok((s, _)) = echo_l.accept() => { tokio::spawn(echo(s, true)); }
                            Ok((s, _)) = http_l.accept() => { tokio::spawn(http(s)); }
                        }
                    }
                });
            })
            .expect("fake ports thread");
        map
    })
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, bye: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    if bye {
        let _ = s.write_all(b"bye").await;
    }
    let _ = s.shutdown().await;
}

async fn http<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();

    if !header("upgrade").is_empty() {
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {}\r\n\r\n",
            header("upgrade")
        );
        if s.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        // Bytes sent right behind the request head are the first upgraded bytes.
        if s.write_all(&data[head_end..]).await.is_err() {
            return;
        }
        echo(s, false).await;
        return;
    }

    let mut body = data[head_end..].to_vec();
    let len: usize = header("content-length").parse().unwrap_or(0);
    while body.len() < len {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }

    if target == "/sse" {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    cache-control: no-cache\r\nconnection: close\r\n\r\n";
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for i in 0..3 {
            if s.write_all(format!("data: {i}\n\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = s.shutdown().await;
        return;
    }

    let status: u16 = target
        .strip_prefix("/status/")
        .and_then(|c| c.parse().ok())
        .unwrap_or(200);
    let mut text = format!("{method} {target}\n");
    for name in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "connection",
        "keep-alive",
    ] {
        text.push_str(&format!("{name}: {}\n", header(name)));
    }
    text.push_str(&format!("body: {}", String::from_utf8_lossy(&body)));
    let answer = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         x-fake: yes\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = s.write_all(answer.as_bytes()).await;
    let _ = s.shutdown().await;
}
