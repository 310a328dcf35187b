//! A sandbox's network namespace and its routed veth pair, made over netlink.
//!
//! The namespace is the sandbox's own (made by its helper, with `lo` up, owned by its user
//! namespace; the sandbox keeps no `CAP_NET_ADMIN`, so it cannot change what is set here).
//! The daemon enters it from a thread of its own (`setns` into a network namespace is
//! allowed in a multithreaded process and changes only the calling thread), kept for the
//! daemon's life and sent home after each job, only to open a netlink socket there and turn
//! IPv6 off; everything else is done over that socket.
//!
//! Wiring (routed point to point, no bridge): host side `wrn<hex addr>` holds the gateway
//! address with the sandbox's address as its peer; inside, `eth0` holds the sandbox's
//! address with the gateway as peer, and the default route goes through it. The pair is
//! never deleted by hand: it dies with the namespace (when the sandbox's last process
//! exits), so teardown costs nothing here.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::NetError;

/// Name of the sandbox's interface inside.
pub const INSIDE_IFNAME: &str = "eth0";

/// A sandbox's network namespace, with a netlink connection into it.
pub struct Netns {
    /// The namespace (`/proc/<pid>/ns/net`).
    pub fd: OwnedFd,
    inside: Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The connection's socket holds a reference to the namespace.
        self.conn.abort();
    }
}

fn nl(what: &'static str) -> impl Fn(rtnetlink::Error) -> NetError {
    move |e| NetError::Netlink(format!("{what}: {e}"))
}

impl Netns {
    /// Enter the network namespace of process `pid` (a sandbox's PID 1) and turn IPv6 off
    /// in it.
    pub async fn of_pid(pid: i32) -> Result<Netns, NetError> {
        let rt = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        worker::submit(Box::new(move || {
            let _ = tx.send(Self::in_thread(&rt, pid));
        }))?;
        let (fd, conn, inside) = rx
            .await
            .map_err(|_| NetError::Netns("namespace thread died".into()))??;
        let conn = tokio::spawn(conn);
        Ok(Netns { fd, inside, conn })
    }

    #[allow(clippy::type_complexity)]
    fn in_thread(
        rt: &tokio::runtime::Handle,
        pid: i32,
    ) -> Result<
        (
            OwnedFd,
            rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
            Handle,
        ),
        NetError,
    > {
        let fd: OwnedFd = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| NetError::Netns(format!("opening the namespace of {pid}: {e}")))?
            .into();
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| NetError::Netns(format!("entering the namespace of {pid}: {e}")))?;
        // This thread's /proc/sys/net is now the sandbox's: no IPv6 inside (it is not
        // policed), set before eth0 exists so it never gets an address.
        for path in [
            "/proc/sys/net/ipv6/conf/all/disable_ipv6",
            "/proc/sys/net/ipv6/conf/default/disable_ipv6",
        ] {
            if let Err(e) = std::fs::write(path, "1") {
                // Hosts without IPv6 have no such file: nothing to turn off.
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(NetError::Netns(format!("writing {path}: {e}")));
                }
            }
        }
        // The socket belongs to the namespace it is made in (netlink-sys needs the reactor).
        let _guard = rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::Netns(format!("netlink socket inside: {e}")))?;
        Ok((fd, conn, handle))
    }
}

/// The thread that enters sandboxes' network namespaces, kept for the daemon's life (a
/// thread per sandbox cost more than the work it did). After each job it goes back to the
/// namespace it started in; a thread that cannot is retired and the next job starts another.
mod worker {
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};

    use crate::NetError;

    pub type Job = Box<dyn FnOnce() + Send>;

    static WORKER: OnceLock<Mutex<Option<mpsc::Sender<Job>>>> = OnceLock::new();

    /// Run `job` on the worker (starting one if there is none).
    pub fn submit(job: Job) -> Result<(), NetError> {
        let mut slot = WORKER
            .get_or_init(|| Mutex::new(None))
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let job = match slot.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return Ok(()),
                // Retired: the job comes back.
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let tx = start()?;
        tx.send(job)
            .map_err(|_| NetError::Netns("the namespace thread ended at once".into()))?;
        *slot = Some(tx);
        Ok(())
    }

    fn start() -> Result<mpsc::Sender<Job>, NetError> {
        let (tx, rx) = mpsc::channel::<Job>();
        // Opened here, by the caller, so it is the daemon's own namespace.
        let home: OwnedFd = File::open("/proc/thread-self/ns/net")
            .map_err(|e| NetError::Netns(format!("opening the daemon's namespace: {e}")))?
            .into();
        std::thread::Builder::new()
            .name("warren-netns".into())
            .spawn(move || {
                for job in rx {
                    job();
                    if let Err(e) = nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET) {
                        // Dropping `rx` retires this thread; the next job starts another.
                        tracing::error!(error = %e, "the namespace thread cannot go home; retired");
                        return;
                    }
                }
            })
            .map_err(|e| NetError::Netns(format!("spawning a thread: {e}")))?;
        Ok(tx)
    }
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetError> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(nl("looking up a link"))?
        .ok_or_else(|| NetError::Netlink(format!("link {name} not found")))?;
    Ok(link.header.index)
}

/// `local` with `peer` at the other end of a point-to-point link: the kernel adds the route
/// to `peer` through `index` by itself.
async fn add_p2p_address(
    handle: &Handle,
    index: u32,
    local: Ipv4Addr,
    peer: Ipv4Addr,
) -> Result<(), NetError> {
    let mut req = handle.address().add(index, IpAddr::V4(local), 32);
    let msg = req.message_mut();
    msg.attributes
        .retain(|a| !matches!(a, AddressAttribute::Address(_)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(peer)));
    req.execute().await.map_err(nl("adding an address"))
}

/// Interface index asked for `eth0`: the first after `lo` in the sandbox's fresh namespace.
const INSIDE_INDEX: u32 = 2;

/// Interface index asked for the host side of `addr`'s pair: unique per address within any
/// range of at most /8, far above what the kernel hands out by itself. Asking for indexes
/// spares two look-ups per sandbox; where one is taken anyway (another daemon's range that
/// differs only above its low 24 bits, or a namespace with fallback tunnels) the kernel
/// answers EEXIST and the pair is made with indexes it picks.
fn host_index(addr: Ipv4Addr) -> u32 {
    (1 << 30) | (u32::from(addr) & 0x00ff_ffff)
}

/// The pair: `host_if` here, up; `eth0` in the namespace (down: the kernel cannot bring a
/// veth up before its peer exists, so it is brought up afterwards). With `indexes`, both
/// ends ask for those interface indexes.
fn veth_msg(
    ns: &Netns,
    host_if: &str,
    indexes: Option<(u32, u32)>,
) -> rtnetlink::packet_route::link::LinkMessage {
    use rtnetlink::packet_route::link::{InfoData, InfoVeth};
    let mut peer = LinkUnspec::new_with_name(INSIDE_IFNAME)
        .setns_by_fd(ns.fd.as_raw_fd())
        .build();
    if let Some((_, inside)) = indexes {
        peer.header.index = inside;
    }
    let mut msg = LinkVeth::new(host_if, INSIDE_IFNAME)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    if let Some((host, _)) = indexes {
        msg.header.index = host;
    }
    msg
}

/// Create the pair; the interface indexes of its host and inside ends.
async fn create_pair(
    host: &Handle,
    ns: &Netns,
    host_if: &str,
    addr: Ipv4Addr,
) -> Result<(u32, u32), NetError> {
    let mut indexes = Some((host_index(addr), INSIDE_INDEX));
    let mut retried_name = false;
    loop {
        match host
            .link()
            .add(veth_msg(ns, host_if, indexes))
            .execute()
            .await
        {
            Ok(()) => break,
            // An index taken, or the name (told apart by trying without the indexes).
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -libc::EEXIST && indexes.is_some() =>
            {
                indexes = None;
            }
            // A pair of the same name still being destroyed (the previous run of this
            // sandbox, stopped a moment ago): remove it and try once more.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -libc::EEXIST && !retried_name =>
            {
                retried_name = true;
                if let Ok(idx) = index_of(host, host_if).await {
                    let _ = host.link().del(idx).execute().await;
                }
            }
            Err(e) => return Err(nl("creating the veth pair")(e)),
        }
    }
    match indexes {
        Some(i) => Ok(i),
        None => futures::try_join!(index_of(host, host_if), index_of(&ns.inside, INSIDE_IFNAME)),
    }
}

/// Connect the namespace to the host: `host_if` on the host, `eth0` inside.
pub async fn wire(
    host: &Handle,
    ns: &Netns,
    host_if: &str,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<(), NetError> {
    let (host_idx, inside_idx) = create_pair(host, ns, host_if, addr).await?;
    // The kernel handles a socket's requests in the order they are sent: eth0 is up and has
    // its address before the route through it is added, without waiting for each answer.
    let up = async {
        ns.inside
            .link()
            .set(LinkUnspec::new_with_index(inside_idx).up().build())
            .execute()
            .await
            .map_err(nl("bringing eth0 up"))
    };
    // Inside: a plain `addr/32`, a link route to the gateway and the default route through
    // it. Not a point-to-point address (as on the host side): gVisor's runsc takes the
    // address over by deleting `addr/32`, which matches no address that has a peer.
    let inside_addr = async {
        ns.inside
            .address()
            .add(inside_idx, IpAddr::V4(addr), 32)
            .execute()
            .await
            .map_err(nl("adding eth0's address"))
    };
    let gateway_route = async {
        ns.inside
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(gateway, 32)
                    .output_interface(inside_idx)
                    .scope(RouteScope::Link)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("adding the route to the gateway"))
    };
    let route = async {
        ns.inside
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(gateway)
                    .output_interface(inside_idx)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("adding the default route"))
    };
    futures::try_join!(
        add_p2p_address(host, host_idx, gateway, addr),
        up,
        inside_addr,
        gateway_route,
        route,
    )?;
    Ok(())
}

/// Bytes through the host side of a sandbox's pair: `(rx, tx)` as the sandbox sees them
/// (what the host side sent is what the sandbox received). `None` if the link is gone.
pub fn counters(host_if: &str) -> Option<(u64, u64)> {
    let read = |what: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/net/{host_if}/statistics/{what}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("tx_bytes")?, read("rx_bytes")?))
}

/// Whether a host-side link exists.
pub fn exists(host_if: &str) -> bool {
    std::path::Path::new("/sys/class/net")
        .join(host_if)
        .exists()
}
