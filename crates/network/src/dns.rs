//! The DNS proxy every `nat` sandbox uses as its resolver.
//!
//! It listens on the gateway address (UDP and TCP, port 53) and is the only way a sandbox
//! learns addresses for names. For each query it finds the sandbox by the query's source
//! address (the firewall makes those unforgeable) and applies that sandbox's
//! [`EgressPolicy`]:
//!
//! - **A denied name gets NXDOMAIN at once**, for every query type, and no upstream hears of
//!   it: a sandbox cannot even learn whether a denied name exists, nor leak data through
//!   lookups of names it may not reach.
//! - **AAAA gets an empty NOERROR**, without asking upstream: IPv6 is off inside sandboxes,
//!   so an IPv6 answer could only make clients try (and time out on) an address they cannot
//!   reach before falling back to IPv4. "No such record" makes them use the A answer
//!   directly.
//! - **Everything else is forwarded** to the host's resolvers (in order, each with a
//!   timeout, under a fresh random query id; the reply must match the id and the question;
//!   a SERVFAIL or REFUSED from one counts as a failure and the next is tried; when all
//!   fail the client gets SERVFAIL).
//!   Every A record of the answer section counts as an address for the *question* name,
//!   including the ones a CNAME chain ends in, which are owned by other names: the client
//!   connects to them because it asked for the question name.
//!
//! **The addresses are admitted before the answer is sent.** The proxy hands them to
//! [`Policies::learned`], which returns once the firewall lets the sandbox reach them, and
//! only then replies. A client typically connects the moment it has an answer; replying
//! first would race the firewall update and lose the first connection attempt. If the
//! firewall cannot admit them (or takes longer than [`LEARN_TIMEOUT`]) the client gets
//! SERVFAIL rather than an address it cannot reach.
//!
//! **TTLs are capped** to [`MAX_TTL`] in every record passed on, since the firewall forgets
//! a learned address after at most that long: no client may cache an answer longer than its
//! address stays admitted (each new lookup extends the admission).
//!
//! Truncated upstream replies are passed on (with TC set), and clients retry over TCP,
//! which the proxy serves the same way and forwards over TCP. The work is bounded: at most
//! [`MAX_IN_FLIGHT`] queries at a time (more are dropped, clients retry),
//! [`MAX_TCP_CONNECTIONS`] connections, each closed after [`TCP_IDLE_TIMEOUT`] without a
//! query or after [`MAX_QUERIES_PER_CONNECTION`] queries.
//!
//! A message that is not one plain query (another opcode, no or several questions,
//! unparsable past its header) gets FORMERR; one without even a query's header, or a
//! response, gets nothing (over TCP its connection is closed). Sources that are not
//! sandboxes get REFUSED.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::{
    Edns, Header, Message, MessageType, OpCode, Query, ResponseCode, DEFAULT_MAX_PAYLOAD_LEN,
};
use hickory_proto::rr::{RData, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};
use warren_runtime::{EgressAction, EgressPolicy};

use crate::egress::MAX_TTL;

/// How long one upstream gets to answer, unless the configuration says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Most queries handled at once (UDP and TCP together); more are dropped.
pub const MAX_IN_FLIGHT: usize = 512;

/// Most TCP connections open at once; more are closed at once.
pub const MAX_TCP_CONNECTIONS: usize = 256;

/// A TCP connection with no query (or no progress writing an answer) for this long is
/// closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP connection is closed after this many queries.
pub const MAX_QUERIES_PER_CONNECTION: usize = 64;

/// How long [`Policies::learned`] may take before the query is answered SERVFAIL.
pub const LEARN_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest query read over UDP (queries are small; a longer one is garbage).
const MAX_UDP_QUERY: usize = 4096;

/// The largest UDP reply read from an upstream.
const MAX_UDP_REPLY: usize = 65535;

/// What a DNS message over UDP may hold without EDNS (RFC 1035).
const PLAIN_UDP_LIMIT: usize = 512;

/// Where the proxy gets the sandboxes' policies and reports what their lookups taught.
#[async_trait]
pub trait Policies: Send + Sync + 'static {
    /// The policy of the sandbox at `source`; `None` if it is not a sandbox (the query is
    /// refused).
    fn policy(&self, source: Ipv4Addr) -> Option<Arc<EgressPolicy>>;

    /// `name` (lower case, no trailing dot) resolved to `ips` (each with its TTL, capped to
    /// [`MAX_TTL`]) for the sandbox at `source`. Returns once the firewall lets the sandbox
    /// reach them: the answer is sent only then. An error makes the answer SERVFAIL.
    async fn learned(
        &self,
        source: Ipv4Addr,
        name: &str,
        ips: &[(Ipv4Addr, Duration)],
    ) -> Result<(), String>;
}

/// Where the proxy listens and whom it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// UDP and TCP; the address need not exist on any interface yet (`IP_FREEBIND`). Port 0
    /// picks one port free for both.
    pub bind: SocketAddr,
    /// The resolvers to forward to, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long each upstream gets per query ([`DEFAULT_TIMEOUT`] is a good value).
    pub timeout: Duration,
}

impl DnsConfig {
    pub fn new(bind: SocketAddr, upstreams: Vec<SocketAddr>) -> DnsConfig {
        DnsConfig {
            bind,
            upstreams,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The IPv4 `nameserver` lines of a `resolv.conf`, as port-53 addresses, in order and
/// without repeats (IPv6 servers and anything unparsable are skipped).
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<Ipv4Addr>) else {
            continue;
        };
        let addr = SocketAddr::from((ip, 53));
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// A running proxy. Dropping it stops it (its tasks are aborted); [`DnsProxy::shutdown`]
/// also waits until its sockets are closed.
#[derive(Debug)]
pub struct DnsProxy {
    local: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

/// What every query handler needs.
struct Shared {
    policies: Arc<dyn Policies>,
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl DnsProxy {
    /// Bind UDP and TCP on `cfg.bind` and start answering.
    pub async fn start(cfg: DnsConfig, policies: Arc<dyn Policies>) -> io::Result<DnsProxy> {
        let (udp, tcp) = bind_pair(cfg.bind)?;
        let local = udp.local_addr()?;
        let shared = Arc::new(Shared {
            policies,
            upstreams: cfg.upstreams,
            timeout: cfg.timeout,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        });
        let tasks = vec![
            tokio::spawn(serve_udp(shared.clone(), Arc::new(udp))),
            tokio::spawn(serve_tcp(shared, tcp)),
        ];
        debug!(%local, "dns: proxy listening");
        Ok(DnsProxy { local, tasks })
    }

    /// Where it listens (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stop answering and wait until the sockets are closed.
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            // Cancelled, as asked; a panic was logged by the runtime.
            let _ = t.await;
        }
    }
}

impl Drop for DnsProxy {
    fn drop(&mut self) {
        // Each task owns the per-query tasks it spawned (a JoinSet): they go with it.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A UDP socket and a TCP listener on the same address and port.
fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    // With port 0 the port the kernel picks for UDP may be taken for TCP: try another.
    let tries = if addr.port() == 0 { 16 } else { 1 };
    let mut last = io::Error::from(io::ErrorKind::AddrInUse);
    for _ in 0..tries {
        let udp = bind_udp(addr)?;
        let port = udp.local_addr()?.port();
        match bind_tcp(SocketAddr::new(addr.ip(), port)) {
            Ok(tcp) => return Ok((UdpSocket::from_std(udp)?, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = sock::socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // The gateway address may not be on any interface yet.
    sock::setsockopt(&fd, sockopt::IpFreebind, &true)?;
    sock::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    Ok(std::net::UdpSocket::from(fd))
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock::setsockopt(&socket, sockopt::IpFreebind, &true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Log how a per-query or per-connection task ended, if it ended badly.
fn reap(done: Option<Result<(), tokio::task::JoinError>>) {
    if let Some(Err(e)) = done {
        if e.is_panic() {
            warn!(error = %e, "dns: a query handler panicked");
        }
    }
}

async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut handlers = JoinSet::new();
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, peer) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        debug!(error = %e, "dns: udp receive failed");
                        // Never spin on a persistent error.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
                    debug!(%peer, "dns: too many queries in flight, dropping one");
                    continue;
                };
                let query = buf[..len].to_vec();
                let (shared, socket) = (shared.clone(), socket.clone());
                handlers.spawn(async move {
                    let reply = handle(&shared, peer.ip(), &query, Transport::Udp).await;
                    drop(permit);
                    if let Some(reply) = reply {
                        if let Err(e) = socket.send_to(&reply, peer).await {
                            debug!(%peer, error = %e, "dns: cannot send a reply");
                        }
                    }
                });
            }
            done = handlers.join_next(), if !handlers.is_empty() => reap(done),
        }
    }
}

async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "dns: tcp accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if connections.len() >= MAX_TCP_CONNECTIONS {
                    debug!(%peer, "dns: too many tcp connections, closing one");
                    continue;
                }
                connections.spawn(serve_connection(shared.clone(), stream, peer));
            }
            done = connections.join_next(), if !connections.is_empty() => reap(done),
        }
    }
}

/// Answer the queries of one TCP connection, one after the other.
async fn serve_connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    for _ in 0..MAX_QUERIES_PER_CONNECTION {
        let query = match tokio::time::timeout(TCP_IDLE_TIMEOUT, read_frame(&mut stream)).await {
            Ok(Ok(Some(q))) => q,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "dns: tcp read failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "dns: tcp connection idle, closing it");
                return;
            }
        };
        let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
            debug!(%peer, "dns: too many queries in flight, closing a tcp connection");
            return;
        };
        let reply = handle(&shared, peer.ip(), &query, Transport::Tcp).await;
        drop(permit);
        // A message not worth an answer ends the connection: the client would wait for
        // one in vain.
        let Some(reply) = reply else { return };
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, write_frame(&mut stream, &reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "dns: tcp write failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "dns: tcp client does not read, closing it");
                return;
            }
        }
    }
    debug!(%peer, "dns: tcp connection used up, closing it");
}

/// One length-prefixed DNS message; `None` at a clean end of stream.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "empty DNS message",
        ));
    }
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "DNS message longer than 65535 bytes",
        )
    })?;
    let mut frame = Vec::with_capacity(2 + msg.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(msg);
    stream.write_all(&frame).await?;
    stream.flush().await
}

/// The reply to the message `packet` from `peer`, encoded; `None` to send nothing.
async fn handle(
    shared: &Shared,
    peer: IpAddr,
    packet: &[u8],
    transport: Transport,
) -> Option<Vec<u8>> {
    let query = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(e) => {
            debug!(%peer, error = %e, "dns: unparsable query");
            return format_error(packet);
        }
    };
    if query.message_type != MessageType::Query {
        // Never answer an answer (two servers could bounce errors forever).
        debug!(%peer, "dns: ignoring a response sent to the proxy");
        return None;
    }
    let reply = if query.op_code != OpCode::Query || query.queries.len() != 1 {
        debug!(%peer, op = ?query.op_code, questions = query.queries.len(), "dns: not a plain query");
        reply_to(&query, ResponseCode::FormErr)
    } else {
        answer(shared, peer, &query, transport).await
    };
    encode(&query, &reply, transport)
}

/// FORMERR for a message that has at least a query's header; `None` otherwise.
fn format_error(packet: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
    if header.metadata.message_type != MessageType::Query {
        return None;
    }
    Message::error_msg(
        header.metadata.id,
        header.metadata.op_code,
        ResponseCode::FormErr,
    )
    .to_vec()
    .ok()
}

/// The sandbox behind a source address (an IPv4-mapped IPv6 one counts as IPv4).
fn ipv4_of(peer: IpAddr) -> Option<Ipv4Addr> {
    match peer {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// A question's name as policies spell names: lower case, no trailing dot. Bytes outside
/// what a host name holds come out escaped (`\.` or `\123`), so they can match no rule.
fn name_of(q: &Query) -> String {
    let name = q.name.to_ascii();
    name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase()
}

/// The reply to one plain query (one question).
async fn answer(shared: &Shared, peer: IpAddr, query: &Message, transport: Transport) -> Message {
    let Some(q) = query.queries.first() else {
        return reply_to(query, ResponseCode::FormErr);
    };
    let qtype = q.query_type;
    let sandbox = ipv4_of(peer).and_then(|s| Some((s, shared.policies.policy(s)?)));
    let Some((source, policy)) = sandbox else {
        debug!(%peer, name = %q.name, %qtype, "dns: not a sandbox, refused");
        return reply_to(query, ResponseCode::Refused);
    };
    let name = name_of(q);
    if policy.decide_name(&name) == EgressAction::Deny {
        debug!(%source, %name, %qtype, "dns: denied name, NXDOMAIN");
        return reply_to(query, ResponseCode::NXDomain);
    }
    if qtype == RecordType::AAAA {
        debug!(%source, %name, "dns: AAAA, empty answer (no IPv6 in sandboxes)");
        return reply_to(query, ResponseCode::NoError);
    }

    let Some(mut reply) = forward(shared, query, q, transport).await else {
        debug!(%source, %name, %qtype, "dns: no upstream answered, SERVFAIL");
        return reply_to(query, ResponseCode::ServFail);
    };
    let max_ttl = u32::try_from(MAX_TTL.as_secs()).unwrap_or(u32::MAX);
    for record in reply
        .answers
        .iter_mut()
        .chain(reply.authorities.iter_mut())
        .chain(reply.additionals.iter_mut())
    {
        record.ttl = record.ttl.min(max_ttl);
    }
    let ips: Vec<(Ipv4Addr, Duration)> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((a.0, Duration::from_secs(u64::from(r.ttl)))),
            _ => None,
        })
        .collect();
    if !ips.is_empty() {
        let learned = shared.policies.learned(source, &name, &ips);
        match tokio::time::timeout(LEARN_TIMEOUT, learned).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(%source, %name, error = %e, "dns: cannot admit the answer, SERVFAIL");
                return reply_to(query, ResponseCode::ServFail);
            }
            Err(_) => {
                warn!(%source, %name, "dns: admitting the answer timed out, SERVFAIL");
                return reply_to(query, ResponseCode::ServFail);
            }
        }
    }
    debug!(
        %source, %name, %qtype, rcode = %reply.response_code, answers = reply.answers.len(),
        addresses = ips.len(), truncated = reply.truncation, "dns: forwarded"
    );
    reply.metadata.id = query.id;
    reply
}

/// A reply to `query` with `rcode` and no records (its question echoed if it had one).
fn reply_to(query: &Message, rcode: ResponseCode) -> Message {
    let mut reply = Message::response(query.id, query.op_code);
    reply.metadata.recursion_desired = query.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.checking_disabled = query.checking_disabled;
    reply.metadata.response_code = rcode;
    if query.queries.len() == 1 {
        reply.add_queries(query.queries.iter().cloned());
    }
    if query.edns.is_some() {
        // RFC 6891: a query with OPT gets a reply with OPT.
        let mut edns = Edns::new();
        edns.set_max_payload(DEFAULT_MAX_PAYLOAD_LEN);
        reply.set_edns(edns);
    }
    reply
}

/// `reply` as bytes that fit what the client can take: over UDP 512 bytes, or the size its
/// EDNS announced. A longer reply becomes an empty one with TC set (the client asks again
/// over TCP).
fn encode(query: &Message, reply: &Message, transport: Transport) -> Option<Vec<u8>> {
    let bytes = match reply.to_vec() {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "dns: cannot encode a reply, SERVFAIL");
            return reply_to(query, ResponseCode::ServFail).to_vec().ok();
        }
    };
    let limit = match transport {
        Transport::Udp => query.edns.as_ref().map_or(PLAIN_UDP_LIMIT, |e| {
            usize::from(e.max_payload()).max(PLAIN_UDP_LIMIT)
        }),
        Transport::Tcp => usize::from(u16::MAX),
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let mut short = reply_to(query, reply.response_code);
    match transport {
        Transport::Udp => short.metadata.truncation = true,
        Transport::Tcp => short.metadata.response_code = ResponseCode::ServFail,
    }
    short.to_vec().ok()
}

/// Why one upstream gave no usable reply.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("replied {0}")]
    Failed(ResponseCode),
    #[error("the reply does not match the query")]
    Mismatch,
    #[error("unparsable reply: {0}")]
    Unparsable(String),
}

/// Ask the upstreams in order for `q` (the question of `query`); the first usable reply.
async fn forward(
    shared: &Shared,
    query: &Message,
    q: &Query,
    transport: Transport,
) -> Option<Message> {
    let mut ask = Message::query(); // a fresh random id
    ask.metadata.recursion_desired = true;
    ask.metadata.checking_disabled = query.checking_disabled;
    ask.add_query(q.clone());
    if let Some(theirs) = &query.edns {
        // The client's payload size (so the reply fits it) and DNSSEC wish, nothing else.
        let mut edns = Edns::new();
        edns.set_max_payload(theirs.max_payload().max(PLAIN_UDP_LIMIT as u16));
        edns.set_dnssec_ok(theirs.flags().dnssec_ok);
        ask.set_edns(edns);
    }
    let bytes = match ask.to_vec() {
        Ok(b) => b,
        Err(e) => {
            warn!(name = %q.name, error = %e, "dns: cannot encode an upstream query");
            return None;
        }
    };
    let matches = |reply: &Message| {
        reply.id == ask.id
            && reply.message_type == MessageType::Response
            && reply.queries.len() == 1
            && reply.queries[0] == *q
    };
    for &upstream in &shared.upstreams {
        let exchange = async {
            match transport {
                Transport::Udp => exchange_udp(upstream, &bytes, &matches).await,
                Transport::Tcp => exchange_tcp(upstream, &bytes, &matches).await,
            }
        };
        let result = match tokio::time::timeout(shared.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout(shared.timeout)),
        };
        let result = result.and_then(|reply| match reply.response_code {
            rc @ (ResponseCode::ServFail | ResponseCode::Refused) => Err(UpstreamError::Failed(rc)),
            _ => Ok(reply),
        });
        match result {
            Ok(reply) => return Some(reply),
            Err(e) => {
                warn!(%upstream, name = %q.name, qtype = %q.query_type, error = %e, "dns: upstream failed")
            }
        }
    }
    None
}

/// Send `query` over UDP and wait for the matching reply (others are ignored: they may be
/// late replies or forgeries). No timeout of its own.
async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    matches: &impl Fn(&Message) -> bool,
) -> Result<Message, UpstreamError> {
    let local: IpAddr = match upstream {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    // A socket (and so a random source port) per query; connected, so only the upstream's
    // datagrams arrive and a dead one is reported (ICMP port unreachable).
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; MAX_UDP_REPLY];
    loop {
        let len = socket.recv(&mut buf).await?;
        match Message::from_vec(&buf[..len]) {
            Ok(reply) if matches(&reply) => return Ok(reply),
            Ok(_) => debug!(%upstream, "dns: ignoring a reply that matches no query"),
            Err(e) => debug!(%upstream, error = %e, "dns: ignoring an unparsable reply"),
        }
    }
}

/// Send `query` over TCP and read the reply. No timeout of its own.
async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    matches: &impl Fn(&Message) -> bool,
) -> Result<Message, UpstreamError> {
    let mut stream = TcpStream::connect(upstream).await?;
    write_frame(&mut stream, query).await?;
    let reply = read_frame(&mut stream)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed without a reply"))?;
    let reply = Message::from_vec(&reply).map_err(|e| UpstreamError::Unparsable(e.to_string()))?;
    if matches(&reply) {
        Ok(reply)
    } else {
        Err(UpstreamError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, CNAME, TXT};
    use hickory_proto::rr::{Name, Record};
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Instant;
    use warren_runtime::{EgressRule, Target};

    const WAIT: Duration = Duration::from_secs(10);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    // ---- a fake upstream resolver ----

    /// Answers on UDP and TCP (same port); counts the queries it gets; can be silenced.
    struct Upstream {
        addr: SocketAddr,
        queries: Arc<AtomicUsize>,
        tcp_queries: Arc<AtomicUsize>,
        silent: Arc<AtomicBool>,
        tasks: Vec<JoinHandle<()>>,
    }

    impl Drop for Upstream {
        fn drop(&mut self) {
            for t in &self.tasks {
                t.abort();
            }
        }
    }

    impl Upstream {
        async fn start() -> Upstream {
            // The same port for both; with port 0 the kernel's UDP pick may be taken for TCP
            // (another test binary's listener), so try again (as `bind_pair` does).
            let (udp, tcp) = bind_pair("127.0.0.1:0".parse().unwrap()).unwrap();
            let udp = Arc::new(udp);
            let addr = udp.local_addr().unwrap();
            let queries = Arc::new(AtomicUsize::new(0));
            let tcp_queries = Arc::new(AtomicUsize::new(0));
            let silent = Arc::new(AtomicBool::new(false));
            let (q, s) = (queries.clone(), silent.clone());
            let udp_task = tokio::spawn(async move {
                let mut buf = vec![0u8; 65535];
                loop {
                    let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
                    q.fetch_add(1, Ordering::SeqCst);
                    if s.load(Ordering::SeqCst) {
                        continue;
                    }
                    let query = Message::from_vec(&buf[..n]).unwrap();
                    let reply = upstream_reply(&query, false).to_vec().unwrap();
                    udp.send_to(&reply, peer).await.unwrap();
                }
            });
            let (q, tq, s) = (queries.clone(), tcp_queries.clone(), silent.clone());
            let tcp_task = tokio::spawn(async move {
                loop {
                    let (mut stream, _) = tcp.accept().await.unwrap();
                    let (q, tq, s) = (q.clone(), tq.clone(), s.clone());
                    tokio::spawn(async move {
                        while let Ok(Some(msg)) = read_frame(&mut stream).await {
                            q.fetch_add(1, Ordering::SeqCst);
                            tq.fetch_add(1, Ordering::SeqCst);
                            if s.load(Ordering::SeqCst) {
                                continue;
                            }
                            let query = Message::from_vec(&msg).unwrap();
                            let reply = upstream_reply(&query, true).to_vec().unwrap();
                            write_frame(&mut stream, &reply).await.unwrap();
                        }
                    });
                }
            });
            Upstream {
                addr,
                queries,
                tcp_queries,
                silent,
                tasks: vec![udp_task, tcp_task],
            }
        }

        async fn silent() -> Upstream {
            let u = Upstream::start().await;
            u.silent.store(true, Ordering::SeqCst);
            u
        }

        fn count(&self) -> usize {
            self.queries.load(Ordering::SeqCst)
        }
    }

    /// A fully qualified name, as names on the wire are.
    fn name(s: &str) -> Name {
        let fqdn = if s.ends_with('.') {
            s.to_owned()
        } else {
            format!("{s}.")
        };
        Name::from_ascii(fqdn).unwrap()
    }

    fn a(owner: &Name, ttl: u32, addr: &str) -> Record {
        Record::from_rdata(owner.clone(), ttl, RData::A(A(ip(addr))))
    }

    /// The fake zone.
    fn upstream_reply(query: &Message, tcp: bool) -> Message {
        let q = query.queries[0].clone();
        let mut m = Message::response(query.id, query.op_code);
        m.metadata.recursion_desired = query.recursion_desired;
        m.metadata.recursion_available = true;
        m.add_query(q.clone());
        let owner = q.name.clone();
        let qname = owner.to_ascii().to_ascii_lowercase();
        match (qname.as_str(), q.query_type) {
            ("www.allowed.test.", RecordType::A) => {
                m.add_answer(a(&owner, 300, "192.0.2.1"));
                m.add_answer(a(&owner, 300, "192.0.2.2"));
            }
            ("cdn.allowed.test.", RecordType::A) => {
                let edge = name("edge.cdn.example.");
                m.add_answer(Record::from_rdata(
                    owner.clone(),
                    600,
                    RData::CNAME(CNAME(edge.clone())),
                ));
                m.add_answer(a(&edge, 60, "198.51.100.7"));
                m.add_answer(a(&edge, 60, "198.51.100.8"));
            }
            ("long.allowed.test.", RecordType::A) => {
                m.add_answer(a(&owner, 86400, "192.0.2.9"));
            }
            ("txt.allowed.test.", RecordType::TXT) => {
                m.add_answer(Record::from_rdata(
                    owner.clone(),
                    90000,
                    RData::TXT(TXT::new(vec!["hello".into()])),
                ));
            }
            ("exact.test.", RecordType::A) => {
                m.add_answer(a(&owner, 30, "203.0.113.5"));
            }
            ("nx.allowed.test.", _) => m.metadata.response_code = ResponseCode::NXDomain,
            ("big.allowed.test.", RecordType::A) if !tcp => m.metadata.truncation = true,
            ("big.allowed.test.", RecordType::A) => {
                for i in 1..=100 {
                    m.add_answer(a(&owner, 120, &format!("10.0.0.{i}")));
                }
            }
            _ => {}
        }
        m
    }

    // ---- a fake set of sandboxes ----

    #[derive(Debug, Clone, PartialEq)]
    struct Learn {
        source: Ipv4Addr,
        name: String,
        ips: Vec<(Ipv4Addr, Duration)>,
    }

    /// One sandbox, at 127.0.0.1.
    #[derive(Default)]
    struct Fake {
        not_a_sandbox: AtomicBool,
        fail: AtomicBool,
        delay_ms: AtomicU64,
        learned: Mutex<Vec<(Learn, Instant)>>,
    }

    impl Fake {
        fn calls(&self) -> Vec<Learn> {
            self.learned
                .lock()
                .unwrap()
                .iter()
                .map(|l| l.0.clone())
                .collect()
        }
    }

    fn test_policy() -> EgressPolicy {
        let rule = |action, t: &str| EgressRule {
            action,
            target: Target::parse(t).unwrap(),
        };
        EgressPolicy {
            default: EgressAction::Deny,
            rules: vec![
                rule(EgressAction::Allow, "*.allowed.test"),
                rule(EgressAction::Deny, "*.bad.allowed.test"),
                rule(EgressAction::Allow, "ok.bad.allowed.test"),
                rule(EgressAction::Allow, "exact.test"),
            ],
        }
    }

    #[async_trait]
    impl Policies for Fake {
        fn policy(&self, source: Ipv4Addr) -> Option<Arc<EgressPolicy>> {
            (source == Ipv4Addr::LOCALHOST && !self.not_a_sandbox.load(Ordering::SeqCst))
                .then(|| Arc::new(test_policy()))
        }

        async fn learned(
            &self,
            source: Ipv4Addr,
            name: &str,
            ips: &[(Ipv4Addr, Duration)],
        ) -> Result<(), String> {
            let delay = self.delay_ms.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err("the firewall is on fire".into());
            }
            let call = Learn {
                source,
                name: name.to_owned(),
                ips: ips.to_vec(),
            };
            self.learned.lock().unwrap().push((call, Instant::now()));
            Ok(())
        }
    }

    async fn start_proxy(upstreams: Vec<SocketAddr>, fake: &Arc<Fake>) -> DnsProxy {
        let cfg = DnsConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            upstreams,
            timeout: Duration::from_millis(300),
        };
        DnsProxy::start(cfg, fake.clone()).await.unwrap()
    }

    async fn setup() -> (Upstream, Arc<Fake>, DnsProxy) {
        let up = Upstream::start().await;
        let fake = Arc::new(Fake::default());
        let proxy = start_proxy(vec![up.addr], &fake).await;
        (up, fake, proxy)
    }

    // ---- a client ----

    fn query(qname: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(name(qname), qtype));
        m
    }

    /// Send raw bytes over UDP; the reply's bytes, or `None` if none came within `wait`.
    async fn send_udp(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(bytes, server).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let (n, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(buf[..n].to_vec())
    }

    async fn ask_udp(server: SocketAddr, q: &Message) -> Message {
        let bytes = send_udp(server, &q.to_vec().unwrap(), WAIT)
            .await
            .expect("no reply");
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.id, q.id);
        assert_eq!(reply.message_type, MessageType::Response);
        assert_eq!(reply.queries, q.queries);
        reply
    }

    async fn ask(server: SocketAddr, qname: &str, qtype: RecordType) -> Message {
        ask_udp(server, &query(qname, qtype)).await
    }

    async fn ask_tcp(stream: &mut TcpStream, q: &Message) -> Message {
        write_frame(stream, &q.to_vec().unwrap()).await.unwrap();
        let bytes = tokio::time::timeout(WAIT, read_frame(stream))
            .await
            .expect("no reply")
            .unwrap()
            .expect("closed");
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.id, q.id);
        reply
    }

    fn addrs(reply: &Message) -> Vec<Ipv4Addr> {
        reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    // ---- the tests ----

    #[tokio::test]
    async fn denied_names_get_nxdomain_without_asking_upstream() {
        let (up, fake, proxy) = setup().await;
        for (qname, qtype) in [
            ("other.test", RecordType::A),
            ("allowed.test", RecordType::A), // a wildcard covers no apex
            ("x.bad.allowed.test", RecordType::A),
            ("x.bad.allowed.test", RecordType::AAAA),
            ("X.BAD.Allowed.Test.", RecordType::TXT),
            ("exact.test.sub", RecordType::MX),
        ] {
            let r = ask(proxy.local_addr(), qname, qtype).await;
            assert_eq!(r.response_code, ResponseCode::NXDomain, "{qname} {qtype}");
            assert!(r.answers.is_empty());
            assert!(r.recursion_available);
        }
        assert_eq!(up.count(), 0, "upstream heard of denied names");
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn allowed_answers_are_admitted_before_the_reply() {
        let (up, fake, proxy) = setup().await;
        fake.delay_ms.store(300, Ordering::SeqCst);
        let r = ask(proxy.local_addr(), "WWW.Allowed.Test.", RecordType::A).await;
        let received = Instant::now();
        assert_eq!(r.response_code, ResponseCode::NoError);
        assert_eq!(addrs(&r), [ip("192.0.2.1"), ip("192.0.2.2")]);
        assert_eq!(up.count(), 1);
        let learned = fake.learned.lock().unwrap().clone();
        assert_eq!(learned.len(), 1);
        let (call, admitted) = &learned[0];
        assert_eq!(
            *call,
            Learn {
                source: Ipv4Addr::LOCALHOST,
                name: "www.allowed.test".into(),
                ips: vec![
                    (ip("192.0.2.1"), Duration::from_secs(300)),
                    (ip("192.0.2.2"), Duration::from_secs(300)),
                ],
            }
        );
        assert!(
            *admitted <= received,
            "the reply came before the firewall was updated"
        );
    }

    #[tokio::test]
    async fn cname_chains_count_for_the_question_name() {
        let (_up, fake, proxy) = setup().await;
        let r = ask(proxy.local_addr(), "cdn.allowed.test", RecordType::A).await;
        assert_eq!(r.answers.len(), 3);
        assert_eq!(addrs(&r), [ip("198.51.100.7"), ip("198.51.100.8")]);
        assert_eq!(
            fake.calls(),
            [Learn {
                source: Ipv4Addr::LOCALHOST,
                name: "cdn.allowed.test".into(),
                ips: vec![
                    (ip("198.51.100.7"), Duration::from_secs(60)),
                    (ip("198.51.100.8"), Duration::from_secs(60)),
                ],
            }]
        );
    }

    #[tokio::test]
    async fn wildcard_and_exact_rules() {
        let (up, fake, proxy) = setup().await;
        for qname in ["deep.x.allowed.test", "ok.bad.allowed.test"] {
            let r = ask(proxy.local_addr(), qname, RecordType::A).await;
            assert_eq!(r.response_code, ResponseCode::NoError, "{qname}");
            assert!(r.answers.is_empty());
        }
        assert_eq!(up.count(), 2);
        assert!(fake.calls().is_empty(), "nothing to admit");
        let r = ask(proxy.local_addr(), "exact.test", RecordType::A).await;
        assert_eq!(addrs(&r), [ip("203.0.113.5")]);
        assert_eq!(fake.calls()[0].name, "exact.test");
        let r = ask(proxy.local_addr(), "sub.exact.test", RecordType::A).await;
        assert_eq!(r.response_code, ResponseCode::NXDomain);
        assert_eq!(up.count(), 3);
    }

    #[tokio::test]
    async fn aaaa_gets_an_empty_answer() {
        let (up, fake, proxy) = setup().await;
        let mut q = query("www.allowed.test", RecordType::AAAA);
        q.set_edns(Edns::new());
        let r = ask_udp(proxy.local_addr(), &q).await;
        assert_eq!(r.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert!(r.edns.is_some(), "a query with OPT gets a reply with OPT");
        assert_eq!(up.count(), 0);
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn ttls_are_capped() {
        let (_up, fake, proxy) = setup().await;
        let r = ask(proxy.local_addr(), "long.allowed.test", RecordType::A).await;
        assert_eq!(addrs(&r), [ip("192.0.2.9")]);
        assert_eq!(r.answers[0].ttl, 3600);
        assert_eq!(fake.calls()[0].ips, [(ip("192.0.2.9"), MAX_TTL)]);

        let r = ask(proxy.local_addr(), "txt.allowed.test", RecordType::TXT).await;
        assert_eq!(r.answers.len(), 1);
        assert!(matches!(r.answers[0].data, RData::TXT(_)));
        assert_eq!(r.answers[0].ttl, 3600);
        assert_eq!(fake.calls().len(), 1, "no address, nothing admitted");
    }

    #[tokio::test]
    async fn upstream_errors_pass_through() {
        let (up, _fake, proxy) = setup().await;
        let r = ask(proxy.local_addr(), "nx.allowed.test", RecordType::A).await;
        assert_eq!(r.response_code, ResponseCode::NXDomain);
        assert_eq!(up.count(), 1);
    }

    #[tokio::test]
    async fn a_silent_upstream_gets_servfail() {
        let up = Upstream::silent().await;
        let fake = Arc::new(Fake::default());
        let proxy = start_proxy(vec![up.addr], &fake).await;
        let r = ask(proxy.local_addr(), "www.allowed.test", RecordType::A).await;
        assert_eq!(r.response_code, ResponseCode::ServFail);
        assert_eq!(up.count(), 1);
        assert!(fake.calls().is_empty());

        // No upstream at all: the same.
        let proxy = start_proxy(vec![], &fake).await;
        let r = ask(proxy.local_addr(), "www.allowed.test", RecordType::A).await;
        assert_eq!(r.response_code, ResponseCode::ServFail);
    }

    #[tokio::test]
    async fn a_dead_upstream_is_skipped() {
        let silent = Upstream::silent().await;
        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let good = Upstream::start().await;
        let fake = Arc::new(Fake::default());
        let proxy = start_proxy(vec![closed, silent.addr, good.addr], &fake).await;
        let r = ask(proxy.local_addr(), "www.allowed.test", RecordType::A).await;
        assert_eq!(addrs(&r), [ip("192.0.2.1"), ip("192.0.2.2")]);
        assert_eq!(silent.count(), 1);
        assert_eq!(good.count(), 1);
        assert_eq!(fake.calls().len(), 1);
    }

    #[tokio::test]
    async fn a_failed_admission_gets_servfail() {
        let (_up, fake, proxy) = setup().await;
        fake.fail.store(true, Ordering::SeqCst);
        let r = ask(proxy.local_addr(), "www.allowed.test", RecordType::A).await;
        assert_eq!(r.response_code, ResponseCode::ServFail);
        assert!(r.answers.is_empty());
    }

    #[tokio::test]
    async fn truncated_answers_are_passed_on_and_tcp_works() {
        let (up, fake, proxy) = setup().await;
        let r = ask(proxy.local_addr(), "big.allowed.test", RecordType::A).await;
        assert!(r.truncation);
        assert!(r.answers.is_empty());
        assert_eq!(up.tcp_queries.load(Ordering::SeqCst), 0);

        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let r = ask_tcp(&mut stream, &query("big.allowed.test", RecordType::A)).await;
        assert!(!r.truncation);
        assert_eq!(addrs(&r).len(), 100);
        assert_eq!(
            up.tcp_queries.load(Ordering::SeqCst),
            1,
            "forwarded over TCP"
        );
        let calls = fake.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "big.allowed.test");
        assert_eq!(calls[0].ips.len(), 100);

        // The same connection serves more queries, denied ones too.
        let r = ask_tcp(&mut stream, &query("www.allowed.test", RecordType::A)).await;
        assert_eq!(addrs(&r), [ip("192.0.2.1"), ip("192.0.2.2")]);
        let r = ask_tcp(&mut stream, &query("evil.test", RecordType::A)).await;
        assert_eq!(r.response_code, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn a_tcp_connection_serves_a_bounded_number_of_queries() {
        let (_up, _fake, proxy) = setup().await;
        let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
        for _ in 0..MAX_QUERIES_PER_CONNECTION {
            let r = ask_tcp(&mut stream, &query("denied.test", RecordType::A)).await;
            assert_eq!(r.response_code, ResponseCode::NXDomain);
        }
        let q = query("denied.test", RecordType::A).to_vec().unwrap();
        // The proxy may have closed before or after reading this.
        let _ = write_frame(&mut stream, &q).await;
        let end = tokio::time::timeout(WAIT, read_frame(&mut stream))
            .await
            .unwrap();
        assert!(
            !matches!(end, Ok(Some(_))),
            "a query past the limit was answered"
        );
    }

    #[tokio::test]
    async fn strangers_are_refused() {
        let (up, fake, proxy) = setup().await;
        fake.not_a_sandbox.store(true, Ordering::SeqCst);
        let r = ask(proxy.local_addr(), "www.allowed.test", RecordType::A).await;
        assert_eq!(r.response_code, ResponseCode::Refused);
        assert_eq!(up.count(), 0);
    }

    #[tokio::test]
    async fn malformed_messages_do_not_stop_the_proxy() {
        let (_up, _fake, proxy) = setup().await;
        let at = proxy.local_addr();
        let short = Duration::from_millis(300);

        // Too short for a header: dropped.
        assert_eq!(send_udp(at, b"hello", short).await, None);

        // A header announcing a question that is not there: FORMERR, same id.
        let mut bogus = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let r = Message::from_vec(&send_udp(at, &bogus, WAIT).await.unwrap()).unwrap();
        assert_eq!((r.id, r.response_code), (0x1234, ResponseCode::FormErr));
        // The same header as a response: never answered.
        bogus[2] |= 0x80;
        assert_eq!(send_udp(at, &bogus, short).await, None);

        // Two questions, or none: FORMERR.
        let mut two = query("www.allowed.test", RecordType::A);
        two.add_query(Query::query(name("exact.test"), RecordType::A));
        let r =
            Message::from_vec(&send_udp(at, &two.to_vec().unwrap(), WAIT).await.unwrap()).unwrap();
        assert_eq!((r.id, r.response_code), (two.id, ResponseCode::FormErr));
        let none = Message::query();
        let r =
            Message::from_vec(&send_udp(at, &none.to_vec().unwrap(), WAIT).await.unwrap()).unwrap();
        assert_eq!(r.response_code, ResponseCode::FormErr);

        // Garbage over TCP closes that connection only.
        let mut stream = TcpStream::connect(at).await.unwrap();
        stream.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
        let end = tokio::time::timeout(WAIT, read_frame(&mut stream))
            .await
            .unwrap();
        assert!(!matches!(end, Ok(Some(_))));

        // Still serving.
        let r = ask(at, "www.allowed.test", RecordType::A).await;
        assert_eq!(addrs(&r), [ip("192.0.2.1"), ip("192.0.2.2")]);
        let mut stream = TcpStream::connect(at).await.unwrap();
        let r = ask_tcp(&mut stream, &query("exact.test", RecordType::A)).await;
        assert_eq!(addrs(&r), [ip("203.0.113.5")]);
    }

    #[tokio::test]
    async fn binds_an_address_no_interface_has_and_shuts_down() {
        let fake = Arc::new(Fake::default());
        // TEST-NET-2: on no interface here.
        let cfg = DnsConfig::new("198.51.100.53:0".parse().unwrap(), vec![]);
        let proxy = DnsProxy::start(cfg, fake.clone()).await.unwrap();
        assert_eq!(proxy.local_addr().ip(), ip("198.51.100.53"));
        assert_ne!(proxy.local_addr().port(), 0);
        drop(proxy);

        let proxy = start_proxy(vec![], &fake).await;
        let at = proxy.local_addr();
        proxy.shutdown().await;
        assert!(TcpStream::connect(at).await.is_err(), "still listening");
        // The port is free again, for UDP and TCP.
        let again = DnsConfig::new(at, vec![]);
        DnsProxy::start(again, fake).await.unwrap().shutdown().await;
    }

    #[test]
    fn resolv_conf() {
        let text = "\
# generated
search example.org
nameserver 192.0.2.53
nameserver 2001:db8::53
nameserver   198.51.100.1   # trailing comment
nameserver 192.0.2.53
nameserver
nameserver bogus
;nameserver 203.0.113.1
options edns0
nameserver 203.0.113.9
";
        assert_eq!(
            upstreams_from_resolv_conf(text),
            [
                SocketAddr::from((ip("192.0.2.53"), 53)),
                SocketAddr::from((ip("198.51.100.1"), 53)),
                SocketAddr::from((ip("203.0.113.9"), 53)),
            ]
        );
        assert!(upstreams_from_resolv_conf("").is_empty());
    }
}
