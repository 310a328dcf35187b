//! A stand-in internet for network tests: a network namespace made by the test, linked to
//! the host by a veth pair, with documentation-range addresses, running HTTP servers and a
//! DNS server.
//!
//! ```text
//!   host (the test's netns)                      the internet (a netns of its own)
//!   wrtnet<k>  <a>.1/28   <──── veth pair ────>  eth0  <a>.2 .3 .4 .5 /28, lo up
//!   (the /28 is on-link)                         default via <a>.1
//!                                                HTTP on <a>.2-.5:80, DNS on <a>.2:53
//! ```
//!
//! **Nothing is left behind**, even when a test panics or its process is killed: the
//! namespace is never bind-mounted anywhere. A dedicated thread of the test process unshares
//! it (which affects that thread only) and runs the servers in it; the only other reference
//! is a file descriptor the [`Internet`] holds. When both go (drop, panic unwinding, or the
//! process dying), the kernel destroys the namespace and the veth pair with it.
//!
//! **Allocation** uses the kernel as the lock, so it is safe across test threads and test
//! processes alike: instance `k` (0..32) owns the host-side link name `wrtnet<k>` and the
//! `k`-th /28 of 198.51.100.0/24 then 203.0.113.0/24. [`Internet::start`] tries to create
//! `wrtnet0`, `wrtnet1`, … in order and keeps the first the kernel lets it create; `EEXIST`
//! means the slot is taken (or still being torn down), so it tries the next one.

use std::collections::HashMap;
use std::io::{self, Read as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// How many instances can exist at once on one host (one per /28 of the two /24s).
pub const MAX_INSTANCES: u32 = 32;

/// The prefix of the host-side link names (`wrtnet0` … `wrtnet31`).
pub const IFNAME_PREFIX: &str = "wrtnet";

/// TTL of the DNS server's A records.
pub const DNS_TTL: u32 = 60;

/// How long [`Internet::start`] waits for the namespace thread at each step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle timeout of one read on a server connection.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request head the HTTP server accepts.
const MAX_HEAD: usize = 64 * 1024;

/// One request an HTTP server of the internet received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The request target as sent, query included (`/a/b?c=d`).
    pub path: String,
    /// Header names lowercased, values trimmed, in the order received.
    pub headers: Vec<(String, String)>,
    /// Bytes of request body received (by `Content-Length` or chunked).
    pub body_len: usize,
    /// The client's address as the server saw it.
    pub peer: SocketAddr,
    /// The server address the request reached (one of [`Internet::servers`], port 80).
    pub server: SocketAddr,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the servers saw, shared between the namespace thread and the [`Internet`].
#[derive(Default)]
struct Log {
    requests: Mutex<Vec<Request>>,
    dns: Mutex<HashMap<String, usize>>,
}

/// Messages from the namespace thread to [`Internet::start`].
enum FromThread {
    /// The namespace exists: a descriptor of it.
    Netns(io::Result<OwnedFd>),
    /// The servers listen (or could not).
    Ready(io::Result<()>),
}

/// A running stand-in internet. See the [module docs](self).
///
/// Dropping it stops the servers and deletes the veth pair; the namespace dies with the
/// last reference to it. Drop never panics.
pub struct Internet {
    index: u32,
    ifname: String,
    base: Ipv4Addr,
    servers: Vec<Ipv4Addr>,
    log: Arc<Log>,
    /// Tells the namespace thread where to listen; dropped to abort a start.
    go: Option<mpsc::Sender<Vec<Ipv4Addr>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    netns: Option<OwnedFd>,
}

impl Internet {
    /// Start one. `names`: DNS names the internet's DNS server answers with A records
    /// (case-insensitive, a trailing dot optional; a name listed twice gets both addresses).
    /// An address `Internet::server(N)` (`0.0.0.N`) stands for this instance's server N,
    /// whose real address is known only once the instance has its subnet.
    ///
    /// Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip` from iproute2.
    pub fn start(names: &[(&str, Ipv4Addr)]) -> io::Result<Internet> {
        let mut table: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        for (name, ip) in names {
            table.entry(normalize_name(name)).or_default().push(*ip);
        }
        let log = Arc::new(Log::default());
        let (to_host, from_thread) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let thread = {
            let log = log.clone();
            std::thread::Builder::new()
                .name("wrtnet-netns".into())
                .spawn(move || netns_thread(to_host, go_rx, stop_rx, table, log))?
        };
        // From here on, dropping `me` cleans up whatever part of the start happened.
        let mut me = Internet {
            index: u32::MAX,
            ifname: String::new(),
            base: Ipv4Addr::UNSPECIFIED,
            servers: vec![],
            log,
            go: Some(go_tx),
            stop: Some(stop_tx),
            thread: Some(thread),
            netns: None,
        };
        let fd = match recv(&from_thread)? {
            FromThread::Netns(fd) => fd?,
            FromThread::Ready(_) => return Err(io::Error::other("namespace thread out of order")),
        };
        me.netns = Some(fd);
        ip_inside(me.netns_fd(), &["link", "set", "lo", "up"])?;

        let index = allocate(me.netns_fd())?;
        me.index = index;
        me.ifname = format!("{IFNAME_PREFIX}{index}");
        me.base = block(index);
        me.servers = (2..=5).map(|n| me.addr(n)).collect();

        let host_cidr = format!("{}/28", me.host_side());
        run_ip(Command::new("ip").args(["addr", "add", &host_cidr, "dev", &me.ifname]))?;
        run_ip(Command::new("ip").args(["link", "set", &me.ifname, "up"]))?;
        let mut batch = String::new();
        for s in &me.servers {
            batch += &format!("addr add {s}/28 dev eth0\n");
        }
        batch += "link set eth0 up\n";
        batch += &format!("route add default via {}\n", me.host_side());
        ip_batch_inside(me.netns_fd(), &batch)?;

        me.go
            .as_ref()
            .expect("set above")
            .send(me.servers.clone())
            .map_err(|_| io::Error::other("the namespace thread is gone"))?;
        match recv(&from_thread)? {
            FromThread::Ready(r) => r?,
            FromThread::Netns(_) => return Err(io::Error::other("namespace thread out of order")),
        }
        Ok(me)
    }

    /// Placeholder for server `n` (0..4) in the `names` of [`Internet::start`].
    pub fn server(n: u8) -> Ipv4Addr {
        Ipv4Addr::new(0, 0, 0, n)
    }

    /// The host's address on the link (`.1` of the /28); traffic the host masquerades into
    /// the internet comes from it.
    pub fn host_side(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// The DNS server: UDP and TCP, port 53, on the first server address.
    pub fn dns(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.addr(2), 53))
    }

    /// Addresses inside the internet (`.2` to `.5` of the /28), each serving HTTP on port 80.
    pub fn servers(&self) -> &[Ipv4Addr] {
        &self.servers
    }

    /// The whole subnet routed to the internet: its /28.
    pub fn subnet(&self) -> (Ipv4Addr, u8) {
        (self.base, 28)
    }

    /// The host-side veth's name, `wrtnet<k>`.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The namespace, for a test that wants to look inside (e.g. `setns` in a child).
    /// Valid only while `self` lives.
    pub fn netns_fd(&self) -> BorrowedFd<'_> {
        self.netns.as_ref().expect("set once started").as_fd()
    }

    /// Requests the HTTP servers received, in the order they arrived. A request is recorded
    /// before its response is sent, so a client that has its response finds it here.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.log.requests).clone()
    }

    /// How many DNS queries (any type, UDP or TCP) the DNS server answered for `name`
    /// (case-insensitive, a trailing dot optional). Counted before the answer is sent.
    pub fn dns_queries(&self, name: &str) -> usize {
        lock(&self.log.dns)
            .get(&normalize_name(name))
            .copied()
            .unwrap_or(0)
    }

    /// Address `n` of the /28.
    fn addr(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + n)
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        // Delete the pair from the inside, where `eth0` is surely ours: the host-side name is
        // free when this returns. (Without it the pair goes when the namespace dies, which
        // the kernel does asynchronously.)
        if let Some(fd) = &self.netns {
            if self.index != u32::MAX {
                let _ = ip_inside(fd.as_fd(), &["link", "del", "eth0"]);
            }
        }
        self.go.take();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.netns.take();
    }
}

impl std::fmt::Debug for Internet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Internet")
            .field("ifname", &self.ifname)
            .field("subnet", &format_args!("{}/28", self.base))
            .finish_non_exhaustive()
    }
}

/// Host-side `wrtnet*` links that exist now, in this thread's network namespace. Deletion
/// is asynchronous in the kernel when a namespace dies, so a check right after a teardown
/// should use [`wait_gone`].
pub fn leaks() -> Vec<String> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
    dev.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim())
        .filter(|name| name.starts_with(IFNAME_PREFIX))
        .map(str::to_string)
        .collect()
}

/// Polls [`leaks`] until it is empty or `timeout` passes; returns what is left.
pub fn wait_gone(timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = leaks();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The /28 of instance `k`: 198.51.100.0/24 for 0..16, then 203.0.113.0/24.
fn block(k: u32) -> Ipv4Addr {
    let (net, i) = if k < 16 {
        (Ipv4Addr::new(198, 51, 100, 0), k)
    } else {
        (Ipv4Addr::new(203, 0, 113, 0), k - 16)
    };
    Ipv4Addr::from(u32::from(net) + 16 * i)
}

/// Creates `wrtnet<k>` for the first free `k`, its peer `eth0` in `netns`.
fn allocate(netns: BorrowedFd<'_>) -> io::Result<u32> {
    // A name can be busy for a few ms while a dead namespace's pair is torn down; a few
    // passes over all 32 ride that out when the host is full.
    for pass in 0..5 {
        if pass > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        for k in 0..MAX_INSTANCES {
            let name = format!("{IFNAME_PREFIX}{k}");
            // `ip` opens the namespace through our descriptor, which we hold for the call.
            let path = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
            let out = Command::new("ip")
                .args(["link", "add", &name, "type", "veth", "peer", "name", "eth0"])
                .args(["netns", &path])
                .stdin(Stdio::null())
                .output()?;
            if out.status.success() {
                return Ok(k);
            }
            let err = String::from_utf8_lossy(&out.stderr);
            if !err.contains("File exists") {
                return Err(io::Error::other(format!(
                    "ip link add {name}: {}",
                    err.trim()
                )));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("all {MAX_INSTANCES} {IFNAME_PREFIX}* links are taken"),
    ))
}

/// Makes the child `cmd` spawns enter network namespace `netns` before it execs.
fn enter_netns<'c>(cmd: &'c mut Command, netns: BorrowedFd<'_>) -> &'c mut Command {
    let raw = netns.as_raw_fd();
    // SAFETY: the closure runs in the child between fork and exec and only makes an
    // async-signal-safe system call (setns). `raw` is open in the parent for the whole spawn
    // (it is borrowed from a descriptor the caller holds across it), so it is open in the
    // child. If setns fails the child does not exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(raw, libc::CLONE_NEWNET) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Runs `ip args...` in namespace `netns`, entered explicitly by descriptor (never by
/// inheritance: this host has an `eth0` of its own).
fn ip_inside(netns: BorrowedFd<'_>, args: &[&str]) -> io::Result<()> {
    run_ip(enter_netns(Command::new("ip").args(args), netns))
}

/// Runs `ip -batch -` with `batch` on its stdin in namespace `netns`.
fn ip_batch_inside(netns: BorrowedFd<'_>, batch: &str) -> io::Result<()> {
    let mut child = enter_netns(Command::new("ip").args(["-batch", "-"]), netns)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(batch.as_bytes())?;
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "ip -batch in the internet's namespace: {status}: {}",
            err.trim()
        )));
    }
    Ok(())
}

fn run_ip(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn recv(rx: &mpsc::Receiver<FromThread>) -> io::Result<FromThread> {
    rx.recv_timeout(STEP_TIMEOUT).map_err(|e| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the internet's namespace thread: {e}"),
        )
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The namespace thread: unshares a network namespace (this thread only), hands a
/// descriptor of it to the host, waits to be told its addresses, then serves until stopped.
fn netns_thread(
    to_host: mpsc::Sender<FromThread>,
    go: mpsc::Receiver<Vec<Ipv4Addr>>,
    stop: tokio::sync::oneshot::Receiver<()>,
    names: HashMap<String, Vec<Ipv4Addr>>,
    log: Arc<Log>,
) {
    let netns = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(io::Error::from)
        .and_then(|()| std::fs::File::open("/proc/thread-self/ns/net"))
        .map(OwnedFd::from);
    let ok = netns.is_ok();
    if to_host.send(FromThread::Netns(netns)).is_err() || !ok {
        return;
    }
    let Ok(servers) = go.recv() else { return };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = to_host.send(FromThread::Ready(Err(e)));
            return;
        }
    };
    // `0.0.0.N` in `names` stands for server N of this instance (see `Internet::server`).
    let names: HashMap<String, Vec<Ipv4Addr>> = names
        .into_iter()
        .map(|(n, ips)| {
            let ips = ips
                .into_iter()
                .map(|ip| match ip.octets() {
                    [0, 0, 0, k] if usize::from(k) < servers.len() => servers[usize::from(k)],
                    _ => ip,
                })
                .collect();
            (n, ips)
        })
        .collect();
    rt.block_on(async move {
        let names = Arc::new(names);
        let bound = async {
            let mut http = vec![];
            for ip in &servers {
                http.push(TcpListener::bind((*ip, 80)).await?);
            }
            let dns_udp = UdpSocket::bind((servers[0], 53)).await?;
            let dns_tcp = TcpListener::bind((servers[0], 53)).await?;
            io::Result::Ok((http, dns_udp, dns_tcp))
        }
        .await;
        let (http, dns_udp, dns_tcp) = match bound {
            Ok(b) => b,
            Err(e) => {
                let _ = to_host.send(FromThread::Ready(Err(e)));
                return;
            }
        };
        for l in http {
            tokio::spawn(serve_http(l, log.clone()));
        }
        tokio::spawn(serve_dns_udp(dns_udp, names.clone(), log.clone()));
        tokio::spawn(serve_dns_tcp(dns_tcp, names, log));
        if to_host.send(FromThread::Ready(Ok(()))).is_ok() {
            // Sent or dropped: either way, stop.
            let _ = stop.await;
        }
    });
    // Dropping the runtime drops every task and closes every socket.
    drop(rt);
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

async fn serve_http(listener: TcpListener, log: Arc<Log>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = handle_http(stream, peer, log).await;
                });
            }
            // Out of descriptors or the like: back off a little.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// A connection with a read buffer.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads more into the buffer; false at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(READ_TIMEOUT, self.s.read(&mut chunk))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Takes bytes up to and including the first `delim`.
    async fn take_until(&mut self, delim: &[u8], max: usize) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(delim.len()).position(|w| w == delim) {
                return Ok(self.buf.drain(..i + delim.len()).collect());
            }
            if self.buf.len() > max {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads and discards `n` bytes.
    async fn skip(&mut self, mut n: usize) -> io::Result<()> {
        loop {
            let k = n.min(self.buf.len());
            self.buf.drain(..k);
            n -= k;
            if n == 0 {
                return Ok(());
            }
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads a chunked body; returns its length.
    async fn skip_chunked(&mut self) -> io::Result<usize> {
        let mut total = 0;
        loop {
            let line = self.take_until(b"\r\n", 4096).await?;
            let line = String::from_utf8_lossy(&line);
            let size = line.trim().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    if self.take_until(b"\r\n", MAX_HEAD).await?.len() == 2 {
                        return Ok(total);
                    }
                }
            }
            self.skip(size + 2).await?;
            total += size;
        }
    }
}

async fn handle_http(s: TcpStream, peer: SocketAddr, log: Arc<Log>) -> io::Result<()> {
    let server = s.local_addr()?;
    let mut c = Conn {
        s,
        buf: Vec::with_capacity(8192),
    };
    let head = c.take_until(b"\r\n\r\n", MAX_HEAD).await?;
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body_len =
        if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            c.skip_chunked().await?
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            c.skip(n).await?;
            n
        } else {
            0
        };
    let req = Request {
        method,
        path,
        headers,
        body_len,
        peer,
        server,
    };
    lock(&log.requests).push(req.clone());

    // Route on the path without the query (and without scheme://authority, for a request
    // in absolute form).
    let target = req
        .path
        .split_once("://")
        .map_or(req.path.as_str(), |(_, rest)| {
            rest.find('/').map_or("/", |i| &rest[i..])
        });
    let (route, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |key: &str, default: u64| -> u64 {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(default)
    };
    let head_only = req.method == "HEAD";
    match (req.method.as_str(), route) {
        ("GET", "/sse") => {
            let n = param("n", 3).min(10_000);
            let interval = Duration::from_millis(param("interval_ms", 100).min(60_000));
            c.s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                  Cache-Control: no-cache\r\nConnection: close\r\n\r\n",
            )
            .await?;
            for i in 0..n {
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                c.s.write_all(format!("data: {i}\n\n").as_bytes()).await?;
                c.s.flush().await?;
            }
        }
        ("GET", "/bytes") => {
            let n = param("n", 0).min(1 << 30);
            c.s.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {n}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len() as u64) as usize;
                c.s.write_all(&chunk[..k]).await?;
                left -= k as u64;
            }
        }
        _ => {
            let mut hs = serde_json::Map::new();
            for (n, v) in &req.headers {
                match hs.get_mut(n) {
                    Some(serde_json::Value::String(prev)) => *prev = format!("{prev}, {v}"),
                    _ => {
                        hs.insert(n.clone(), v.clone().into());
                    }
                }
            }
            let body = serde_json::json!({
                "method": req.method,
                "path": req.path,
                "headers": hs,
                "body_len": req.body_len,
                "server": server.ip().to_string(),
                "peer": peer.ip().to_string(),
            })
            .to_string();
            let mut resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if !head_only {
                resp += &body;
            }
            c.s.write_all(resp.as_bytes()).await?;
        }
    }
    // Close our side, then let the client close: closing with unread input would reset the
    // connection and could cost the client the end of the response.
    c.s.shutdown().await?;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while matches!(c.s.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// DNS
// ---------------------------------------------------------------------------------------

/// Lowercase, without a trailing dot.
fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The answer to DNS message `query`, or nothing if it is not a query at all.
fn dns_answer(query: &[u8], names: &HashMap<String, Vec<Ipv4Addr>>, log: &Log) -> Option<Vec<u8>> {
    let req = Message::from_vec(query).ok()?;
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    resp.metadata.authoritative = true;
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        resp.set_edns(edns);
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp.to_vec().ok();
    }
    let [q] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp.to_vec().ok();
    };
    resp.add_query(q.clone());
    let key = normalize_name(&q.name().to_ascii());
    match names.get(&key) {
        // An unknown name does not exist for any type.
        None => resp.metadata.response_code = ResponseCode::NXDomain,
        Some(ips) => {
            if matches!(q.query_type(), RecordType::A | RecordType::ANY) {
                for ip in ips {
                    resp.add_answer(Record::from_rdata(
                        q.name().clone(),
                        DNS_TTL,
                        RData::A(A(*ip)),
                    ));
                }
            }
            // Any other type (AAAA, …) of a known name: NOERROR, no answers.
        }
    }
    let out = resp.to_vec().ok()?;
    *lock(&log.dns).entry(key).or_default() += 1;
    Some(out)
}

async fn serve_dns_udp(sock: UdpSocket, names: Arc<HashMap<String, Vec<Ipv4Addr>>>, log: Arc<Log>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(resp) = dns_answer(&buf[..n], &names, &log) {
            let _ = sock.send_to(&resp, from).await;
        }
    }
}

async fn serve_dns_tcp(
    listener: TcpListener,
    names: Arc<HashMap<String, Vec<Ipv4Addr>>>,
    log: Arc<Log>,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (names, log) = (names.clone(), log.clone());
        tokio::spawn(async move {
            let conn = async {
                loop {
                    let len = match s.read_u16().await {
                        Ok(len) => usize::from(len),
                        Err(_) => return io::Result::Ok(()),
                    };
                    let mut msg = vec![0u8; len];
                    s.read_exact(&mut msg).await?;
                    let Some(resp) = dns_answer(&msg, &names, &log) else {
                        return Ok(());
                    };
                    let Ok(rlen) = u16::try_from(resp.len()) else {
                        return Ok(());
                    };
                    s.write_all(&rlen.to_be_bytes()).await?;
                    s.write_all(&resp).await?;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::io::Write as _;
    use std::net::{TcpStream as StdTcp, UdpSocket as StdUdp};

    /// The tests here look at host-wide `wrtnet*` links: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        lock(&SERIAL)
    }

    /// Whether host link `name` is gone within a generous time (other processes' instances
    /// may come and go meanwhile, so this does not wait for all of them like [`wait_gone`]).
    fn gone(name: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while leaks().iter().any(|l| l == name) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// `GET path` over a fresh connection; the status line and the body.
    fn http_get(to: Ipv4Addr, path: &str) -> (String, Vec<u8>) {
        let mut s = StdTcp::connect_timeout(&(to, 80).into(), Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {to}\r\nX-Test: Yes\r\n\r\n"
        )
        .unwrap();
        let mut raw = vec![];
        s.read_to_end(&mut raw).unwrap();
        let i = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&raw[..i]).to_string();
        (head, raw[i + 4..].to_vec())
    }

    fn dns_query_udp(server: SocketAddr, name: &str, ty: RecordType) -> Message {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        q.metadata.recursion_desired = true;
        let sock = StdUdp::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.send_to(&q.to_vec().unwrap(), server).unwrap();
        let mut buf = [0u8; 4096];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(from, server);
        let resp = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(resp.metadata.id, q.metadata.id);
        resp
    }

    fn dns_query_tcp(server: SocketAddr, name: &str, ty: RecordType) -> Message {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        let wire = q.to_vec().unwrap();
        let mut s = StdTcp::connect_timeout(&server, Duration::from_secs(10)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&(wire.len() as u16).to_be_bytes()).unwrap();
        s.write_all(&wire).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).unwrap();
        Message::from_vec(&buf).unwrap()
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn internet_addressing_blocks() {
        assert_eq!(block(0), Ipv4Addr::new(198, 51, 100, 0));
        assert_eq!(block(15), Ipv4Addr::new(198, 51, 100, 240));
        assert_eq!(block(16), Ipv4Addr::new(203, 0, 113, 0));
        assert_eq!(block(31), Ipv4Addr::new(203, 0, 113, 240));
    }

    /// The fact the fixture design leans on: a thread's `unshare(CLONE_NEWNET)` is its own,
    /// and a child it spawns starts in that thread's namespace.
    #[test]
    fn internet_thread_netns_is_inherited_by_its_children() {
        let ns = |p: &str| std::fs::read_link(p).unwrap();
        let host = ns("/proc/thread-self/ns/net");
        let (own, child) = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
            let out = Command::new("readlink")
                .arg("/proc/self/ns/net")
                .output()
                .unwrap();
            (
                own,
                String::from_utf8(out.stdout).unwrap().trim().to_string(),
            )
        })
        .join()
        .unwrap();
        assert_ne!(own, host);
        assert_eq!(own.to_string_lossy(), child);
        assert_eq!(
            ns("/proc/thread-self/ns/net"),
            host,
            "the test's thread stays put"
        );
    }

    #[test]
    fn internet_two_at_once_serve_http_dns_and_sse_then_vanish() {
        let _g = serial();
        let names = [
            ("Allowed.Example.", Ipv4Addr::new(198, 51, 100, 2)),
            ("denied.example", Ipv4Addr::new(198, 51, 100, 3)),
        ];
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| Internet::start(&names).unwrap());
            let b = s.spawn(|| Internet::start(&names).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_ne!(a.ifname(), b.ifname());
        assert_ne!(a.subnet(), b.subnet());
        for net in [&a, &b] {
            let (base, len) = net.subnet();
            assert_eq!(len, 28);
            assert_eq!(u32::from(base) % 16, 0);
            assert_eq!(net.host_side(), Ipv4Addr::from(u32::from(base) + 1));
            assert_eq!(net.servers().len(), 4);
            assert_eq!(net.dns(), SocketAddr::from((net.servers()[0], 53)));
            assert!(leaks().contains(&net.ifname().to_string()));
            // Inside: replies to any source go back through the host.
            let out = enter_netns(&mut Command::new("ip"), net.netns_fd())
                .args(["-4", "route", "show", "default"])
                .output()
                .unwrap();
            let routes = String::from_utf8_lossy(&out.stdout);
            assert!(
                routes.contains(&format!("default via {} dev eth0", net.host_side())),
                "{routes}"
            );
        }

        // HTTP: every server address answers with what it saw.
        for net in [&a, &b] {
            for (i, srv) in net.servers().iter().enumerate() {
                let (head, body) = http_get(*srv, &format!("/hello/{i}?x=1"));
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["method"], "GET");
                assert_eq!(v["path"], format!("/hello/{i}?x=1"));
                assert_eq!(v["headers"]["x-test"], "Yes");
                assert_eq!(v["server"], srv.to_string());
                assert_eq!(v["peer"], net.host_side().to_string());
            }
            let reqs = net.requests();
            assert_eq!(reqs.len(), 4);
            for (i, r) in reqs.iter().enumerate() {
                assert_eq!(r.path, format!("/hello/{i}?x=1"));
                assert_eq!(r.server, SocketAddr::from((net.servers()[i], 80)));
                assert_eq!(r.peer.ip(), net.host_side());
                assert_eq!(r.header("X-TEST"), Some("Yes"));
            }
        }

        // A POST with a body, and /bytes.
        {
            let mut s = StdTcp::connect((a.servers()[1], 80)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
                .unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).unwrap();
            assert!(raw.contains("\"body_len\":5"), "{raw}");
            assert_eq!(a.requests().last().unwrap().body_len, 5);
            let (head, body) = http_get(a.servers()[2], "/bytes?n=200000");
            assert!(head.contains("Content-Length: 200000"), "{head}");
            assert_eq!(body.len(), 200_000);
        }

        // DNS over UDP and TCP, on each instance.
        for net in [&a, &b] {
            let r = dns_query_udp(net.dns(), "allowed.example.", RecordType::A);
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            assert_eq!(a_records(&r), vec![Ipv4Addr::new(198, 51, 100, 2)]);
            assert_eq!(r.answers[0].ttl, DNS_TTL);
            let r = dns_query_udp(net.dns(), "ALLOWED.example.", RecordType::AAAA);
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            assert!(r.answers.is_empty());
            let r = dns_query_udp(net.dns(), "nowhere.example.", RecordType::A);
            assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
            let r = dns_query_tcp(net.dns(), "denied.example.", RecordType::A);
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            assert_eq!(a_records(&r), vec![Ipv4Addr::new(198, 51, 100, 3)]);
            // With EDNS (as stub resolvers send it), the answer carries EDNS too.
            let mut q = Message::query();
            q.add_query(Query::query(
                Name::from_ascii("allowed.example.").unwrap(),
                RecordType::A,
            ));
            q.set_edns(Edns::new());
            let sock = StdUdp::bind("0.0.0.0:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            sock.send_to(&q.to_vec().unwrap(), net.dns()).unwrap();
            let mut buf = [0u8; 4096];
            let n = sock.recv(&mut buf).unwrap();
            let r = Message::from_vec(&buf[..n]).unwrap();
            assert!(r.edns.is_some());
            assert_eq!(a_records(&r), vec![Ipv4Addr::new(198, 51, 100, 2)]);
            assert_eq!(net.dns_queries("allowed.example"), 3);
            assert_eq!(net.dns_queries("Denied.Example."), 1);
            assert_eq!(net.dns_queries("nowhere.example"), 1);
            assert_eq!(net.dns_queries("never.example"), 0);
        }

        // SSE: the events come one by one, spaced out, not in one burst at the end.
        {
            let mut s = StdTcp::connect((b.servers()[3], 80)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"GET /sse?n=4&interval_ms=300 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut seen = String::new();
            let mut arrivals = vec![];
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                arrivals.push((Instant::now(), seen.matches("data: ").count()));
            }
            assert!(seen.contains("Content-Type: text/event-stream"), "{seen}");
            let body = &seen[seen.find("\r\n\r\n").unwrap() + 4..];
            assert_eq!(body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n");
            // The events came in separate reads: the count grew over at least 3 reads.
            let mut counts: Vec<usize> = arrivals.iter().map(|(_, c)| *c).collect();
            counts.dedup();
            assert!(counts.len() >= 3, "events arrived in bursts: {counts:?}");
        }

        let ifnames = [a.ifname().to_string(), b.ifname().to_string()];
        drop(a);
        drop(b);
        let left = wait_gone(Duration::from_secs(10));
        for n in &ifnames {
            assert!(!left.contains(n), "{n} left behind: {left:?}");
        }
    }

    #[test]
    fn internet_vanishes_when_its_test_panics() {
        let _g = serial();
        let (tx, rx) = mpsc::channel();
        let r = std::thread::spawn(move || {
            let net = Internet::start(&[]).unwrap();
            tx.send(net.ifname().to_string()).unwrap();
            panic!("a failing test");
        })
        .join();
        assert!(r.is_err());
        let name = rx.recv().unwrap();
        assert!(gone(&name), "{name} left behind");
    }

    /// The child half of [`internet_vanishes_when_its_process_is_killed`].
    #[test]
    #[ignore = "run by internet_vanishes_when_its_process_is_killed"]
    fn internet_child_holds_one() {
        if std::env::var_os("WARREN_INTERNET_CHILD").is_none() {
            return;
        }
        let net = Internet::start(&[]).unwrap();
        println!("IFNAME={}", net.ifname());
        std::io::stdout().flush().unwrap();
        std::thread::sleep(Duration::from_secs(120));
    }

    #[test]
    fn internet_vanishes_when_its_process_is_killed() {
        let _g = serial();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "internet::tests::internet_child_holds_one"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env("WARREN_INTERNET_CHILD", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut name = None;
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0 {
            // libtest may print "test <name> ... " before it on the same line.
            if let Some((_, n)) = line.trim().split_once("IFNAME=") {
                name = Some(n.to_string());
                break;
            }
            line.clear();
        }
        let killed = child.kill();
        let _ = child.wait();
        killed.unwrap();
        let name = name.expect("the child started an internet");
        assert!(gone(&name), "{name} left behind");
    }
}
