//! `warren pause|resume|stop|start|stats|snapshot|events`.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use warren_api::{CreateSnapshotRequest, SandboxEvent, SandboxStats, Snapshot};
use warren_client::{Client, LifecycleEvent};

use crate::SnapshotCommand;

/// `warren pause|resume|stop|start ID...`: prints `ID STATE` per sandbox; exit status 1 if
/// any failed.
pub async fn transition(client: &Client, verb: &str, ids: &[String]) -> anyhow::Result<u8> {
    let mut failed = false;
    for id in ids {
        let result = match verb {
            "pause" => client.pause(id).await,
            "resume" => client.resume(id).await,
            "stop" => client.stop(id).await,
            _ => client.start(id).await,
        };
        match result {
            Ok(sb) => println!("{} {}", sb.id, sb.state),
            Err(err) => {
                failed = true;
                match &err {
                    warren_client::Error::Api { .. } => eprintln!("error: {err}"),
                    _ => eprintln!("error: {id}: {err}"),
                }
            }
        }
    }
    Ok(u8::from(failed))
}

/// `warren network ID [--allow T] [--deny T] [--egress-default A]`: show, or replace the
/// egress policy.
pub async fn network(
    client: &Client,
    id: &str,
    opts: &crate::NetOpts,
    json: bool,
) -> anyhow::Result<u8> {
    let mut net = client.network(id).await?;
    if let Some(egress) = opts.egress(net.egress.default) {
        net = client
            .set_network(id, &warren_api::UpdateNetworkRequest { egress })
            .await?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&net)?);
        return Ok(0);
    }
    println!("MODE     {}", net.mode.as_str());
    if let Some(a) = &net.address {
        println!("ADDRESS  {a}");
    }
    if let Some(g) = &net.gateway {
        println!("GATEWAY  {g} (DNS)");
    }
    let action = |a: warren_api::EgressAction| match a {
        warren_api::EgressAction::Allow => "allow",
        warren_api::EgressAction::Deny => "deny",
    };
    println!("EGRESS   default {}", action(net.egress.default));
    for r in &net.egress.rules {
        println!("         {} {}", action(r.action), r.target);
    }
    Ok(0)
}

pub async fn stats(client: &Client, id: &str, json: bool) -> anyhow::Result<u8> {
    let stats = client.stats(id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", stats_table(&stats));
    }
    Ok(0)
}

fn stats_table(s: &SandboxStats) -> String {
    let memory = match s.memory_limit_bytes {
        Some(limit) => format!(
            "{} (peak {}, limit {})",
            bytes(s.memory_bytes),
            bytes(s.memory_peak_bytes),
            bytes(limit)
        ),
        None => format!(
            "{} (peak {})",
            bytes(s.memory_bytes),
            bytes(s.memory_peak_bytes)
        ),
    };
    let rows = [
        (
            "STATE",
            s.state
                .map(|st| st.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        ("CPU", format!("{:.3}s", s.cpu_usage_us as f64 / 1e6)),
        ("MEMORY", memory),
        ("PIDS", s.pids.to_string()),
        ("DISK", bytes(s.disk_bytes)),
        ("NET RX", bytes(s.net_rx_bytes)),
        ("NET TX", bytes(s.net_tx_bytes)),
    ];
    rows.iter().map(|(k, v)| format!("{k:<8}{v}\n")).collect()
}

/// `512 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

pub async fn snapshot(client: &Client, cmd: SnapshotCommand) -> anyhow::Result<u8> {
    match cmd {
        SnapshotCommand::Create { id, name } => {
            let snap = client
                .create_snapshot(&id, &CreateSnapshotRequest { name })
                .await?;
            println!("{}", snap.id);
            Ok(0)
        }
        SnapshotCommand::Ls { sandbox, json } => {
            let list = client.list_snapshots(sandbox.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", snapshot_table(&list, Utc::now()));
            }
            Ok(0)
        }
        SnapshotCommand::Rm { ids } => {
            crate::commands::remove_each(ids, |id| async move { client.delete_snapshot(&id).await })
                .await
        }
    }
}

fn snapshot_table(list: &[Snapshot], now: DateTime<Utc>) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "SANDBOX".to_string(),
        "SIZE".to_string(),
        "CREATED".to_string(),
        "NAME".to_string(),
    ]];
    for s in list {
        rows.push([
            s.id.clone(),
            s.sandbox_id.clone(),
            bytes(s.size_bytes),
            format!("{} ago", crate::time::human(now - s.created_at)),
            s.name.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        for (i, w) in widths.iter().enumerate() {
            out.push_str(&format!("{:<w$}  ", r[i]));
        }
        out.push_str(&r[4]);
        out.push('\n');
    }
    out
}

/// `warren events [ID]`: one line per event until the stream ends (a sandbox's, after its
/// deletion) or Ctrl-C.
pub async fn events(
    client: &Client,
    id: Option<&str>,
    after: Option<u64>,
    json: bool,
) -> anyhow::Result<u8> {
    let mut stream = client.events(id, after).await?;
    let mut stdout = tokio::io::stdout();
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = tokio::signal::ctrl_c() => return Ok(130),
        };
        let line = match item {
            None => return Ok(0),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(LifecycleEvent::Lost { missed })) => {
                eprintln!("warren: {missed} events were lost (the server no longer has them)");
                continue;
            }
            Some(Ok(LifecycleEvent::Event(ev))) => {
                if json {
                    serde_json::to_string(&ev)?
                } else {
                    event_line(&ev)
                }
            }
        };
        let written = async {
            stdout.write_all(format!("{line}\n").as_bytes()).await?;
            stdout.flush().await
        }
        .await;
        match written {
            Ok(()) => {}
            // Our reader went away (`| head`): done.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `2026-11-23T12:00:00.123Z  #42  sb-abc  state  running -> pausing  (api)`.
fn event_line(ev: &SandboxEvent) -> String {
    let kind = match serde_json::to_value(ev.kind) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{:?}", ev.kind),
    };
    let mut line = format!(
        "{}  #{}  {}  {}",
        ev.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        ev.seq,
        ev.sandbox_id,
        kind
    );
    match (ev.previous, ev.state) {
        (Some(p), Some(s)) => line.push_str(&format!("  {p} -> {s}")),
        (None, Some(s)) => line.push_str(&format!("  {s}")),
        (Some(p), None) => line.push_str(&format!("  {p} ->")),
        (None, None) => {}
    }
    if let Some(snap) = &ev.snapshot {
        line.push_str(&format!("  snapshot={snap}"));
    }
    if let Some(reason) = &ev.reason {
        line.push_str(&format!("  ({reason})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_api::{EventKind, SandboxState};

    #[test]
    fn formats() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(512 * 1024 * 1024), "512.0 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");

        let ev = SandboxEvent {
            seq: 42,
            time: DateTime::from_timestamp_millis(1_795_000_000_123).unwrap(),
            sandbox_id: "sb-abc".into(),
            kind: EventKind::State,
            state: Some(SandboxState::Pausing),
            previous: Some(SandboxState::Running),
            reason: Some("api".into()),
            snapshot: None,
        };
        assert!(
            event_line(&ev).ends_with("  #42  sb-abc  state  running -> pausing  (api)"),
            "{}",
            event_line(&ev)
        );
        let snap = SandboxEvent {
            kind: EventKind::SnapshotCreated,
            state: None,
            previous: None,
            reason: None,
            snapshot: Some("snap-1".into()),
            ..ev
        };
        assert!(event_line(&snap).ends_with("sb-abc  snapshot_created  snapshot=snap-1"));

        let stats = SandboxStats {
            state: Some(SandboxState::Running),
            cpu_usage_us: 1_500_000,
            memory_bytes: 2048,
            memory_peak_bytes: 4096,
            memory_limit_bytes: Some(1024 * 1024),
            pids: 3,
            ..Default::default()
        };
        let t = stats_table(&stats);
        assert!(t.starts_with("STATE   running\nCPU     1.500s\n"), "{t}");
        assert!(
            t.contains("MEMORY  2.0 KiB (peak 4.0 KiB, limit 1.0 MiB)\n"),
            "{t}"
        );
    }

    #[test]
    fn snapshot_listing() {
        let now = Utc::now();
        let s = Snapshot {
            id: "snap-1".into(),
            sandbox_id: "sb-long-id".into(),
            name: Some("before".into()),
            size_bytes: 2048,
            created_at: now - chrono::TimeDelta::seconds(5),
            backend: "dir".into(),
            image: None,
        };
        let t = snapshot_table(&[s], now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID      SANDBOX     SIZE     CREATED  NAME");
        assert_eq!(lines[1], "snap-1  sb-long-id  2.0 KiB  5s ago   before");
    }
}
