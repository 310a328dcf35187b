//! Integration tests of `Request::Connect`: each test runs its own agent process (the
//! test-only `warren-agent-test` binary) and a TCP server in the test process.

mod common;

use std::time::Duration;

use common::Agent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use warren_proto::host;
use warren_proto::ProtoError;

impl Agent {
    fn start() -> Agent {
        Agent::start_in(common::unique_dir("warren-agent-ports"), &[])
    }
}

/// An echo server that, after its client half-closes, writes `bye` and closes.
async fn echo_server() -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            s.write_all(&buf[..n]).await.unwrap();
        }
        // The client's half-close arrived; our direction still works.
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        seen
    });
    (port, task)
}

#[tokio::test]
async fn connect_echo_both_ways_with_half_close() {
    let agent = Agent::start();
    let (port, server) = echo_server().await;
    let mut stream = host::connect(agent.connect().await, port).await.unwrap();

    stream.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");

    // Binary and larger than one read, both ways.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(stream);
    let expected = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&big).await.unwrap();
        // Half-close: the server sees EOF, answers `bye` and closes.
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut got))
        .await
        .expect("read timed out")
        .unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), expected.len() + 3);
    assert_eq!(&got[..expected.len()], &expected[..]);
    assert_eq!(&got[expected.len()..], b"bye");

    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 5 + expected.len());
}

#[tokio::test]
async fn server_speaks_first_and_closes() {
    let agent = Agent::start();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"banner\n").await.unwrap();
        s.shutdown().await.unwrap();
        // The client can still send after we closed our side.
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut stream = host::connect(agent.connect().await, port).await.unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"banner\n");
    stream.write_all(b"late").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(server.await.unwrap(), b"late");
}

#[tokio::test]
async fn refused_port() {
    let agent = Agent::start();
    // Bind and drop to find a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    match host::connect(agent.connect().await, port).await {
        Err(ProtoError::Remote { code, .. }) => assert_eq!(code, "connection_refused"),
        other => panic!("expected connection_refused, got {:?}", other.map(|_| ())),
    }
    // The agent still serves.
    let (proto, _) = host::ping(agent.connect().await).await.unwrap();
    assert_eq!(proto, warren_proto::PROTOCOL_VERSION);
}
