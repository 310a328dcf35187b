//! Ports on the real kernel: a Python HTTP server inside a sandbox reached through a forwarded
//! host address and through the daemon's reverse proxy; a WebSocket echo through the proxy;
//! the forwarded address closes with the sandbox.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server with the standard library only (handshake + frames).
const WS_SERVER: &str = r#"
import asyncio, base64, hashlib, struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

async def handle(r, w):
    head = (await r.readuntil(b"\r\n\r\n")).decode()
    key = ""
    for line in head.split("\r\n"):
        if line.lower().startswith("sec-websocket-key:"):
            key = line.split(":", 1)[1].strip()
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    w.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
    await w.drain()
    try:
        while True:
            h = await r.readexactly(2)
            op, n = h[0] & 0x0F, h[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", await r.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", await r.readexactly(8))[0]
            mask = await r.readexactly(4) if h[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(await r.readexactly(n)))
            if op == 8:
                w.write(b"\x88\x00")
                await w.drain()
                break
            if op == 9:
                op = 10
            elif op == 10:
                continue
            if len(data) < 126:
                hdr = bytes([0x80 | op, len(data)])
            elif len(data) < 65536:
                hdr = bytes([0x80 | op, 126]) + struct.pack(">H", len(data))
            else:
                hdr = bytes([0x80 | op, 127]) + struct.pack(">Q", len(data))
            w.write(hdr + data)
            await w.drain()
    except asyncio.IncompleteReadError:
        pass
    w.close()

async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 8765)
    async with srv:
        await srv.serve_forever()

asyncio.run(main())
"#;

/// Polls `url` until it answers 200 (or panics after 30 s).
async fn wait_http(url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(resp) = reqwest::get(url).await {
            if resp.status() == 200 {
                return resp.text().await.expect("body");
            }
        }
        assert!(Instant::now() < deadline, "{url} never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn http_server_and_websocket_through_ports_and_proxy() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        assert!(c.capabilities().await.expect("caps").features.ports);
        let sb = create(c).await;
        let h = c.sandbox(&sb.id);

        h.write_file("/workspace/hello.txt", "hello from the sandbox\n", None)
            .await
            .expect("write hello.txt");
        h.write_file("/workspace/ws.py", WS_SERVER, None)
            .await
            .expect("write ws.py");
        // `setsid -f` detaches the servers from the one-shot exec's process group.
        let r = run_sh(
            c,
            &sb.id,
            "cd /workspace && \
             setsid -f python3 -m http.server 8000 --bind 127.0.0.1 >/tmp/http.log 2>&1 </dev/null && \
             setsid -f python3 /workspace/ws.py >/tmp/ws.log 2>&1 </dev/null",
        )
        .await;
        assert_eq!(r.exit_code, 0, "{r:?}");

        // (b) through the reverse proxy (502 port_unreachable until the server listens).
        let proxy = h.proxy_url(8000);
        assert_eq!(proxy, format!("{}/v1/sandboxes/{}/proxy/8000/", d.url, sb.id));
        let text = wait_http(&format!("{proxy}hello.txt")).await;
        assert_eq!(text, "hello from the sandbox\n");

        // (a) through the forwarded address.
        let f = h.port_address(8000).await.expect("port address");
        assert!(f.address.ip().is_loopback());
        assert_eq!(h.port_address(8000).await.expect("again").address, f.address);
        let text = wait_http(&format!("{}/hello.txt", f.url)).await;
        assert_eq!(text, "hello from the sandbox\n");

        // The CLI verb prints the same address.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["--url", &d.url, "port", &sb.id, "8000"])
            .output()
            .await
            .expect("warren port");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), f.address.to_string());

        // A port nothing listens on.
        let err = reqwest::get(format!("{}hello", h.proxy_url(8001)))
            .await
            .expect("proxy answer");
        assert_eq!(err.status(), 502);
        let body: serde_json::Value = err.json().await.expect("json error");
        assert_eq!(body["error"]["code"], "port_unreachable");

        // WebSocket echo through the proxy.
        let ws_url = h.proxy_url(8765).replacen("http://", "ws://", 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ws = loop {
            match tokio_tungstenite::connect_async(ws_url.as_str()).await {
                Ok((ws, _)) => break ws,
                Err(e) => {
                    assert!(Instant::now() < deadline, "websocket never connected: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        for msg in ["hello", "second message"] {
            ws.send(Message::text(msg)).await.expect("send");
            let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("echo timed out")
                .expect("stream ended")
                .expect("ws error");
            assert_eq!(echo, Message::text(msg));
        }
        let big = vec![7u8; 100_000];
        ws.send(Message::binary(big.clone())).await.expect("send big");
        let echo = ws.next().await.expect("ended").expect("ws error");
        assert_eq!(echo, Message::binary(big));
        ws.close(None).await.expect("close");

        // After deletion the forwarded address refuses connections.
        h.delete().await.expect("delete");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(f.address).await.is_err() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "forwarded address still accepts after delete"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
