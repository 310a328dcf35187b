//! Networks, end to end on the real kernel: `nat` sandboxes reach a stand-in internet (a
//! network namespace the test makes, see `warren_testkit::internet`) under their egress
//! policy; isolated sandboxes reach nothing; sandboxes never reach each other or the host;
//! policies change live and survive a daemon crash; nothing is left on the host.
//!
//! Traffic goes only to loopback and to addresses of the test's own namespaces.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{rt, sh, Daemon};
use warren_api::{
    CreateSandboxRequest, EgressAction, EgressPolicy, EgressRule, NetworkMode, NetworkRequest,
    UpdateNetworkRequest,
};
use warren_client::Client;
use warren_testkit::internet::Internet;

fn internet() -> Internet {
    Internet::start(&[
        ("allowed.test", Internet::server(0)),
        ("denied.test", Internet::server(1)),
        ("other.test", Internet::server(3)),
        ("api.wild.test", Internet::server(0)),
    ])
    .expect("start the test internet")
}

fn daemon(net: &Internet, extra: &[&str]) -> Daemon {
    let upstream = net.dns().to_string();
    let mut args = vec!["--dns-upstream", upstream.as_str()];
    args.extend_from_slice(extra);
    Daemon::start_with(&args)
}

fn rule(action: EgressAction, target: &str) -> EgressRule {
    EgressRule {
        action,
        target: target.into(),
    }
}

fn policy(default: EgressAction, rules: Vec<EgressRule>) -> EgressPolicy {
    EgressPolicy { default, rules }
}

async fn create_net(c: &Client, network: NetworkRequest) -> String {
    c.create_sandbox(&CreateSandboxRequest {
        network: Some(network),
        ..Default::default()
    })
    .await
    .expect("create sandbox")
    .id
}

/// `curl` from inside: `"<http code> rc=<exit code>"` (rc 6: name not resolved, 7: refused,
/// 56/52: reset, 28: timeout).
async fn fetch(c: &Client, id: &str, url: &str) -> String {
    let script = format!("curl -s -o /dev/null -w '%{{http_code}}' -m 5 '{url}'; echo \" rc=$?\"");
    let r = c.exec(id, &sh(&script)).await.expect("exec curl");
    r.stdout.trim().to_string()
}

fn ok(out: &str) -> bool {
    out.starts_with("200 ")
}

#[test]
fn nat_follows_the_egress_policy_and_reaches_nothing_else() {
    let net = internet();
    let s = net.servers().to_vec();
    let d = daemon(&net, &[]);
    rt().block_on(async {
        let c = &d.client;
        let id = create_net(
            c,
            NetworkRequest {
                mode: Some(NetworkMode::Nat),
                egress: Some(policy(
                    EgressAction::Deny,
                    vec![
                        rule(EgressAction::Allow, "allowed.test"),
                        rule(EgressAction::Allow, "*.wild.test"),
                        rule(EgressAction::Allow, &format!("{}/32", s[2])),
                        rule(EgressAction::Deny, "denied.test"),
                    ],
                )),
            },
        )
        .await;
        let shown = c.network(&id).await.unwrap();
        assert_eq!(shown.mode, NetworkMode::Nat);
        let addr: Ipv4Addr = shown.address.clone().unwrap().parse().unwrap();
        assert_eq!(shown.egress.rules.len(), 4);
        let resolv = c
            .exec(&id, &sh("cat /etc/resolv.conf"))
            .await
            .unwrap()
            .stdout;
        assert!(
            resolv.contains(&format!("nameserver {}", shown.gateway.clone().unwrap())),
            "{resolv}"
        );

        // An allowed name resolves through Warren's DNS and is reachable, masqueraded.
        let out = fetch(c, &id, "http://allowed.test/hello").await;
        assert!(ok(&out), "allowed.test: {out}");
        let seen = net.requests();
        let last = seen.last().expect("the server saw the request");
        assert_eq!(last.path, "/hello");
        assert_eq!(
            last.peer.ip(),
            std::net::IpAddr::V4(net.host_side()),
            "masqueraded through the host"
        );
        assert_ne!(last.peer.ip(), std::net::IpAddr::V4(addr));
        // A wildcard rule covers names below it.
        assert!(ok(&fetch(c, &id, "http://api.wild.test/").await));
        // An allowed CIDR is reachable by address.
        assert!(ok(&fetch(c, &id, &format!("http://{}/", s[2])).await));

        // A denied name: NXDOMAIN at once, never asked upstream.
        let out = fetch(c, &id, "http://denied.test/").await;
        assert!(out.ends_with("rc=6"), "denied.test must not resolve: {out}");
        assert_eq!(net.dns_queries("denied.test"), 0);
        // Its address, hard-coded, stays unreachable; so does one no rule covers.
        for ip in [s[1], s[3]] {
            let out = fetch(c, &id, &format!("http://{ip}/")).await;
            assert!(!ok(&out), "{ip} must be unreachable: {out}");
        }
        // A name no rule covers, under default deny: NXDOMAIN.
        let out = fetch(c, &id, "http://other.test/").await;
        assert!(out.ends_with("rc=6"), "{out}");

        // Always denied: the host (its addresses, any port), metadata, loopback-only
        // services of the host.
        let host = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = host.local_addr().unwrap().port();
        host.set_nonblocking(true).unwrap();
        for target in [
            format!("http://{}:{port}/", shown.gateway.clone().unwrap()),
            format!("http://{}:{port}/", net.host_side()),
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ] {
            let out = fetch(c, &id, &target).await;
            assert!(!ok(&out), "{target} must be unreachable: {out}");
        }
        assert!(host.accept().is_err(), "the host saw no connection");

        // Counters moved.
        let stats = c.stats(&id).await.unwrap();
        assert!(
            stats.net_rx_bytes > 0 && stats.net_tx_bytes > 0,
            "{stats:?}"
        );
    });
}

#[test]
fn policy_changes_live_and_cuts_established_connections() {
    let net = internet();
    let s = net.servers().to_vec();
    let d = daemon(&net, &[]);
    rt().block_on(async {
        let c = &d.client;
        // The server's default: nat, allow everything.
        let id = c
            .create_sandbox(&CreateSandboxRequest::default())
            .await
            .unwrap()
            .id;
        assert_eq!(c.network(&id).await.unwrap().mode, NetworkMode::Nat);
        assert!(ok(&fetch(c, &id, &format!("http://{}/", s[0])).await));
        // A long download in the background (an event every 200 ms for a minute).
        let long = format!(
            "curl -sN -m 120 'http://{}/sse?n=300&interval_ms=200' > /tmp/sse.out; echo rc=$? > /tmp/sse.rc",
            s[0]
        );
        let p = c
            .start_process(&id, &common::process_req(&["sh", "-c", &long]))
            .await
            .unwrap();
        // Let it get going.
        wait_for(c, &id, "test -s /tmp/sse.out").await;

        let deny = policy(
            EgressAction::Allow,
            vec![rule(EgressAction::Deny, &format!("{}/32", s[0]))],
        );
        let shown = c
            .set_network(&id, &UpdateNetworkRequest { egress: deny })
            .await
            .unwrap();
        assert_eq!(shown.egress.rules.len(), 1);
        // New connections follow the policy at once; the established one is cut.
        let out = fetch(c, &id, &format!("http://{}/", s[0])).await;
        assert!(!ok(&out), "denied now: {out}");
        assert!(ok(&fetch(c, &id, &format!("http://{}/", s[2])).await));
        wait_for(c, &id, "test -s /tmp/sse.rc").await;
        let rc = c
            .exec(&id, &sh("cat /tmp/sse.rc"))
            .await
            .unwrap()
            .stdout;
        assert!(!rc.contains("rc=0"), "the stream must be cut, got {rc}");
        let _ = p;

        // And back.
        c.set_network(
            &id,
            &UpdateNetworkRequest {
                egress: EgressPolicy::default(),
            },
        )
        .await
        .unwrap();
        assert!(ok(&fetch(c, &id, &format!("http://{}/", s[0])).await));

        // Bad policies change nothing.
        let bad = c
            .set_network(
                &id,
                &UpdateNetworkRequest {
                    egress: policy(EgressAction::Deny, vec![rule(EgressAction::Allow, "10.0.0.1/8")]),
                },
            )
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("invalid_request"), "{bad}");
        assert!(c.network(&id).await.unwrap().egress.rules.is_empty());
    });
}

#[test]
fn sandboxes_cannot_reach_each_other_and_isolated_reaches_nothing() {
    let net = internet();
    let s = net.servers().to_vec();
    let d = daemon(&net, &[]);
    rt().block_on(async {
        let c = &d.client;
        let a = create_net(c, NetworkRequest::default()).await;
        let b = create_net(c, NetworkRequest::default()).await;
        let b_addr = c.network(&b).await.unwrap().address.unwrap();
        c.start_process(
            &b,
            &common::process_req(&["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"]),
        )
        .await
        .unwrap();
        wait_for(c, &b, "curl -s -o /dev/null http://127.0.0.1:8000/").await;
        let out = fetch(c, &a, &format!("http://{b_addr}:8000/")).await;
        assert!(!ok(&out), "sandbox to sandbox must fail: {out}");

        let iso = create_net(
            c,
            NetworkRequest {
                mode: Some(NetworkMode::Isolated),
                egress: None,
            },
        )
        .await;
        let shown = c.network(&iso).await.unwrap();
        assert_eq!(shown.mode, NetworkMode::Isolated);
        assert!(shown.address.is_none());
        let dev = c.exec(&iso, &sh("cat /proc/net/dev")).await.unwrap().stdout;
        assert!(!dev.contains("eth0"), "{dev}");
        let out = fetch(c, &iso, &format!("http://{}/", s[0])).await;
        assert!(!ok(&out), "{out}");
        // No DNS at all, and it says so at once rather than after retries.
        let out = fetch(c, &iso, "http://allowed.test/").await;
        assert!(out.ends_with("rc=6"), "{out}");
        // A policy for an isolated sandbox is refused.
        let e = c
            .set_network(
                &iso,
                &UpdateNetworkRequest {
                    egress: policy(EgressAction::Deny, vec![]),
                },
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("invalid_request"), "{e}");
    });
}

#[test]
fn pools_carry_the_network_spec() {
    let net = internet();
    let s = net.servers().to_vec();
    let d = daemon(&net, &[]);
    rt().block_on(async {
        let c = &d.client;
        let spec = warren_api::PoolSpec {
            size: 1,
            network: Some(NetworkRequest {
                mode: Some(NetworkMode::Nat),
                egress: Some(policy(
                    EgressAction::Deny,
                    vec![rule(EgressAction::Allow, "allowed.test")],
                )),
            }),
            ..Default::default()
        };
        c.put_pool("netpool", &spec).await.unwrap();
        for _ in 0..200 {
            if c.get_pool("netpool").await.unwrap().ready == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sb = c
            .create_sandbox(&CreateSandboxRequest {
                pool: Some("netpool".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(sb.pool.as_deref(), Some("netpool"), "taken from the pool");
        assert_eq!(sb.network.egress.default, EgressAction::Deny);
        assert!(ok(&fetch(c, &sb.id, "http://allowed.test/").await));
        let out = fetch(c, &sb.id, &format!("http://{}/", s[1])).await;
        assert!(!ok(&out), "{out}");
    });
}

#[test]
fn policy_survives_a_daemon_crash_and_drain_leaves_nothing() {
    let net = internet();
    let s = net.servers().to_vec();
    let (data_dir, parent) = Daemon::fresh_names();
    let range = common::network_range(&parent);
    let upstream = net.dns().to_string();
    let args = [
        "--dns-upstream",
        upstream.as_str(),
        "--network-range",
        range.as_str(),
    ];
    let mut first = Daemon::launch_plain(data_dir.clone(), parent.clone(), &args);
    let id = rt().block_on(async {
        let c = &first.client;
        let id = create_net(
            c,
            NetworkRequest {
                mode: None,
                egress: Some(policy(
                    EgressAction::Deny,
                    vec![rule(EgressAction::Allow, "allowed.test")],
                )),
            },
        )
        .await;
        assert!(ok(&fetch(c, &id, "http://allowed.test/").await));
        id
    });
    first.stop_with(libc::SIGKILL);
    std::mem::forget(first);
    let table = common::nft_table(&range);
    let mut second = Daemon::launch(data_dir, parent, &args);
    rt().block_on(async {
        let c = &second.client;
        let sb = c.get_sandbox(&id).await.unwrap();
        assert_eq!(sb.state, warren_api::SandboxState::Running);
        // Still enforced, and the learned address still admitted.
        assert!(ok(&fetch(c, &id, &format!("http://{}/", s[0])).await));
        let out = fetch(c, &id, &format!("http://{}/", s[1])).await;
        assert!(!ok(&out), "{out}");
        assert!(ok(&fetch(c, &id, "http://allowed.test/").await));
    });
    // Exactly one table for the range after the restart.
    let tables = nft(&["list", "tables"]);
    assert_eq!(tables.matches(&table).count(), 1, "{tables}");
    second.stop();
    let tables = nft(&["list", "tables"]);
    assert!(!tables.contains(&table), "drained: table gone, {tables}");
    let prefix = format!("wrn{}", &table["warren_".len().."warren_".len() + 6]);
    let links = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect::<Vec<_>>();
    assert!(links.is_empty(), "links left: {links:?}");
}

/// A UDP packet to `dst:53` with a forged source address, sent from inside through a raw
/// socket (the sandbox keeps CAP_NET_RAW).
const SPOOF: &str = r#"
import socket, struct, sys
src, dst = sys.argv[1], sys.argv[2]
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
payload = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07spoofed\x04test\x00\x00\x01\x00\x01"
udp = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(5):
    s.sendto(ip + udp, (dst, 0))
print("sent")
"#;

#[test]
fn spoofed_source_addresses_are_dropped() {
    let net = internet();
    let d = daemon(&net, &[]);
    let range = common::network_range(&d.cgroup_parent);
    let table = common::nft_table(&range);
    rt().block_on(async {
        let c = &d.client;
        let a = create_net(c, NetworkRequest::default()).await;
        let b = create_net(c, NetworkRequest::default()).await;
        let b_net = c.network(&b).await.unwrap();
        let (b_addr, gw) = (b_net.address.unwrap(), b_net.gateway.unwrap());
        let before = rpf_drops(&table);
        let r = c
            .exec(&a, &common::req(&["python3", "-c", SPOOF, &b_addr, &gw]))
            .await
            .unwrap();
        assert_eq!(r.stdout.trim(), "sent", "{r:?}");
        let after = rpf_drops(&table);
        assert!(
            after >= before + 5,
            "the reverse-path rule must drop the forged packets ({before} -> {after})"
        );
        // Forged or not, the proxy never asked upstream about them.
        assert_eq!(net.dns_queries("spoofed.test"), 0);
    });
}

/// Packets the anti-spoofing rule of `table` dropped so far.
fn rpf_drops(table: &str) -> u64 {
    let out = nft(&["list", "chain", "inet", table, "prerouting"]);
    out.split("counter packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {out}"))
}

fn nft(args: &[&str]) -> String {
    let out = std::process::Command::new("nft")
        .args(args)
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `check` (a shell test) inside until it succeeds (30 s at most).
async fn wait_for(c: &Client, id: &str, check: &str) {
    for _ in 0..300 {
        if c.exec(id, &sh(check)).await.unwrap().exit_code == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{check} never succeeded in {id}");
}

/// The real key of the broker tests: it must never be seen inside a sandbox, in a response,
/// or in the store.
const SECRET: &str = "sk-real-7d3f9a1c5e2b8f4a6d0c";

fn credential(upstream: String, prefix: &str) -> warren_api::CredentialRequest {
    warren_api::CredentialRequest {
        upstream,
        header: "x-api-key".into(),
        value: SECRET.into(),
        base_url_env: format!("{prefix}_BASE_URL"),
        token_env: format!("{prefix}_API_KEY"),
    }
}

/// `curl` through the broker from inside: the response body, then `code=<status>`.
async fn broker_call(c: &Client, id: &str, url: &str, token: &str) -> String {
    let script =
        format!("curl -s -m 10 -H \"x-api-key: {token}\" -w ' code=%{{http_code}}' \"{url}\"");
    c.exec(id, &sh(&script)).await.expect("exec curl").stdout
}

#[test]
fn the_broker_swaps_tokens_for_keys_that_never_enter_the_sandbox() {
    let net = internet();
    let s = net.servers().to_vec();
    let (data_dir, parent) = Daemon::fresh_names();
    let range = common::network_range(&parent);
    let upstream = net.dns().to_string();
    let args = [
        "--dns-upstream",
        upstream.as_str(),
        "--network-range",
        range.as_str(),
    ];
    let mut first = Daemon::launch_plain(data_dir.clone(), parent.clone(), &args);
    let (a, b) = rt().block_on(async {
        let c = &first.client;
        assert!(c.capabilities().await.unwrap().network.broker);
        // `a` is isolated (the broker is reached in every mode) with two credentials; `b`
        // is nat under default deny (the broker needs no egress rule) with one.
        let a = c
            .create_sandbox(&CreateSandboxRequest {
                network: Some(NetworkRequest {
                    mode: Some(NetworkMode::Isolated),
                    egress: None,
                }),
                credentials: vec![
                    credential(format!("http://{}/v1", s[0]), "LLM"),
                    credential(format!("http://{}", s[0]), "RAW"),
                ],
                ..Default::default()
            })
            .await
            .unwrap();
        let b = c
            .create_sandbox(&CreateSandboxRequest {
                network: Some(NetworkRequest {
                    mode: Some(NetworkMode::Nat),
                    egress: Some(policy(EgressAction::Deny, vec![])),
                }),
                credentials: vec![credential(format!("http://{}/v1", s[0]), "LLM")],
                ..Default::default()
            })
            .await
            .unwrap();
        // Responses show the value masked.
        assert_eq!(a.credentials.len(), 2);
        assert_eq!(a.credentials[0].header, "x-api-key");
        assert!(
            a.credentials[0].value.contains("chars"),
            "{:?}",
            a.credentials
        );
        let shown = serde_json::to_string(&c.get_sandbox(&a.id).await.unwrap()).unwrap();
        assert!(
            !shown.contains(SECRET) && shown.contains("LLM_BASE_URL"),
            "{shown}"
        );

        let env = c.exec(&a.id, &sh("env")).await.unwrap().stdout;
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} missing in {env}"))
                .to_string()
        };
        let (base, token) = (var("LLM_BASE_URL"), var("LLM_API_KEY"));
        assert_eq!(base, "http://127.0.0.1:4780/c/0");
        assert!(token.starts_with("wrn_"), "{token}");

        // The token is swapped for the key; path and query are kept.
        let out = broker_call(c, &a.id, "$LLM_BASE_URL/messages?beta=1", "$LLM_API_KEY").await;
        assert!(out.ends_with("code=200"), "{out}");
        let body: serde_json::Value =
            serde_json::from_str(out.trim_end_matches(" code=200")).unwrap();
        assert_eq!(body["headers"]["x-api-key"], SECRET, "{body}");
        assert_eq!(body["path"], "/v1/messages?beta=1");
        assert_eq!(
            body["peer"],
            net.host_side().to_string(),
            "sent by the host"
        );

        // Server-sent events stream through unbuffered: events arrive spread over time.
        let stamps = c
            .exec(
                &a.id,
                &sh("curl -sN -m 20 -H \"x-api-key: $RAW_API_KEY\" \
                     \"$RAW_BASE_URL/sse?n=5&interval_ms=400\" \
                     | while read -r l; do [ -n \"$l\" ] && echo \"$(date +%s%3N) $l\"; done"),
            )
            .await
            .unwrap()
            .stdout;
        let times: Vec<u64> = stamps
            .lines()
            .map(|l| l.split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(times.len(), 5, "{stamps}");
        assert!(
            times[4] - times[0] >= 800,
            "events must arrive as they are sent, not at the end: {stamps}"
        );

        // `b`'s token inside `a`: 403; a made-up one: 401; none: 401. None reach upstream.
        let b_token = c
            .exec(&b.id, &sh("printf %s \"$LLM_API_KEY\""))
            .await
            .unwrap()
            .stdout;
        assert_ne!(b_token, token);
        let before = net.requests().len();
        let out = broker_call(c, &a.id, "$LLM_BASE_URL/x", &b_token).await;
        assert!(out.ends_with("code=403"), "foreign token: {out}");
        let out = broker_call(c, &a.id, "$LLM_BASE_URL/x", "wrn_madeup").await;
        assert!(out.ends_with("code=401"), "unknown token: {out}");
        assert_eq!(
            net.requests().len(),
            before,
            "refused requests never go upstream"
        );
        // `b` reaches its upstream through the broker although its egress denies all.
        let out = broker_call(c, &b.id, "$LLM_BASE_URL/ok", "$LLM_API_KEY").await;
        assert!(out.ends_with("code=200"), "{out}");
        let out = fetch(c, &b.id, &format!("http://{}/", s[0])).await;
        assert!(!ok(&out), "direct access stays denied: {out}");

        // The key is nowhere inside: not in any process's environment, not in files.
        // (`[r]`: the pattern, in grep's own command line, does not match itself.)
        let pattern = SECRET.replacen('r', "[r]", 1);
        let probe = format!(
            "grep -l '{pattern}' /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null; \
             grep -rl '{pattern}' /etc /tmp /workspace /home /root /run /var 2>/dev/null; \
             echo done"
        );
        for id in [&a.id, &b.id] {
            let out = c.exec(id, &sh(&probe)).await.unwrap().stdout;
            assert_eq!(out.trim(), "done", "the key leaked into {id}: {out}");
        }
        (a.id, b.id)
    });
    // Not in the store in plaintext.
    for f in std::fs::read_dir(&data_dir).unwrap().flatten() {
        if f.path().is_file() {
            let bytes = std::fs::read(f.path()).unwrap();
            let hit = bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
            assert!(!hit, "plaintext key in {}", f.path().display());
        }
    }

    // A crashed daemon's successor serves the same tokens again.
    first.stop_with(libc::SIGKILL);
    std::mem::forget(first);
    let second = Daemon::launch(data_dir, parent, &args);
    rt().block_on(async {
        let c = &second.client;
        let out = broker_call(c, &a, "$LLM_BASE_URL/again", "$LLM_API_KEY").await;
        assert!(out.ends_with("code=200") && out.contains(SECRET), "{out}");
        // Deleting a sandbox revokes its tokens at once.
        let b_token = c
            .exec(&b, &sh("printf %s \"$LLM_API_KEY\""))
            .await
            .unwrap()
            .stdout;
        c.delete_sandbox(&b).await.unwrap();
        let out = broker_call(c, &a, "$LLM_BASE_URL/x", &b_token).await;
        assert!(
            out.ends_with("code=401"),
            "a deleted sandbox's token: {out}"
        );
        // Bad credentials change nothing.
        let bad = c
            .create_sandbox(&CreateSandboxRequest {
                credentials: vec![warren_api::CredentialRequest {
                    upstream: "ftp://example.test".into(),
                    ..credential(String::new(), "X")
                }],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(bad.to_string().contains("invalid_request"), "{bad}");
        assert_eq!(c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(), 1);
    });
}
