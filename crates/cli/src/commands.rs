//! The client verbs.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warren_api::{
    CreateSandboxRequest, ExecRequest, ExecUser, IdleAction, OutputEncoding, Resources, Sandbox,
    TimeoutAction,
};
use warren_client::{Client, ExecStreamEvent};

use crate::{Cli, Command, ExecOpts, OnIdle, OnTimeout, SandboxOpts, User};

/// Run one verb; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Command::Serve(args) = cli.command {
        crate::serve::run(args).await?;
        return Ok(0);
    }
    if let Command::Openapi = cli.command {
        println!(
            "{}",
            serde_json::to_string_pretty(&warren_server::openapi())?
        );
        return Ok(0);
    }
    let client = Client::new(&cli.url).context("bad --url / WARREN_URL")?;
    match cli.command {
        Command::Serve(_) | Command::Openapi => Ok(0),
        Command::Bench(args) => {
            crate::bench::run(&client, args).await?;
            Ok(0)
        }
        Command::Cp {
            src,
            dst,
            mode,
            user,
        } => crate::files::cp(&client, &src, &dst, mode.as_deref(), user).await,
        Command::Fs(cmd) => crate::files::fs(&client, cmd).await,
        Command::Create(opts) => {
            let sb = client.create_sandbox(&create_request(&opts)).await?;
            println!("{}", sb.id);
            Ok(0)
        }
        Command::Ls { meta, json } => {
            let list = client.list_sandboxes(&meta).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", table(&list, Utc::now()));
            }
            Ok(0)
        }
        Command::Port { id, port, proxy } => {
            if proxy {
                println!("{}", client.proxy_url(&id, port));
            } else {
                println!("{}", client.port_address(&id, port).await?.address);
            }
            Ok(0)
        }
        Command::Inspect { id } => {
            let sb = client.get_sandbox(&id).await?;
            println!("{}", serde_json::to_string_pretty(&sb)?);
            Ok(0)
        }
        Command::Rm { ids } => {
            let mut failed = false;
            for id in ids {
                match client.delete_sandbox(&id).await {
                    Ok(()) => println!("{id}"),
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
        Command::Pause { ids } => crate::lifecycle::transition(&client, "pause", &ids).await,
        Command::Resume { ids } => crate::lifecycle::transition(&client, "resume", &ids).await,
        Command::Stop { ids } => crate::lifecycle::transition(&client, "stop", &ids).await,
        Command::Start { ids } => crate::lifecycle::transition(&client, "start", &ids).await,
        Command::Stats { id, json } => crate::lifecycle::stats(&client, &id, json).await,
        Command::Snapshot(cmd) => crate::lifecycle::snapshot(&client, cmd).await,
        Command::Pool(cmd) => crate::pools::run(&client, cmd).await,
        Command::Rollback { id, snapshot } => {
            let sb = client.rollback(&id, &snapshot).await?;
            println!("{} {}", sb.id, sb.state);
            Ok(0)
        }
        Command::Fork { id, timeout, meta } => {
            let req = warren_api::ForkRequest {
                timeout_secs: timeout,
                metadata: (!meta.is_empty()).then(|| meta.into_iter().collect()),
                ..Default::default()
            };
            println!("{}", client.fork(&id, &req).await?.id);
            Ok(0)
        }
        Command::Events { id, after, json } => {
            crate::lifecycle::events(&client, id.as_deref(), after, json).await
        }
        Command::Attach { id, pid } => crate::terminal::attach(&client, &id, &pid).await,
        Command::Ps { id, json } => crate::terminal::ps(&client, &id, json).await,
        Command::Exec {
            id,
            interactive,
            tty: true,
            opts,
            env,
            timeout,
            cmd,
        } => {
            let req = warren_api::CreateProcessRequest {
                cmd,
                env: env.into_iter().collect(),
                cwd: opts.cwd.clone(),
                user: exec_user(opts.user),
                timeout_secs: timeout,
                ..Default::default()
            };
            crate::terminal::exec_tty(&client, &id, req, interactive && !opts.no_stdin).await
        }
        Command::Exec {
            id,
            opts,
            env,
            timeout,
            cmd,
            ..
        } => {
            let req = exec_request(cmd, env, timeout, &opts).await?;
            stream_exec(&client, &id, &req).await
        }
        Command::Run {
            rm,
            sandbox,
            opts,
            exec_timeout,
            cmd,
        } => {
            // Read stdin before creating anything, so a failure here leaves nothing behind.
            let req = exec_request(cmd, Vec::new(), exec_timeout, &opts).await?;
            let sb = client.create_sandbox(&create_request(&sandbox)).await?;
            if !rm {
                eprintln!("{}", sb.id);
                return stream_exec(&client, &sb.id, &req).await;
            }
            let outcome = tokio::select! {
                outcome = stream_exec(&client, &sb.id, &req) => outcome,
                _ = tokio::signal::ctrl_c() => Ok(130),
            };
            if let Err(err) = client.delete_sandbox(&sb.id).await {
                eprintln!("error: deleting sandbox {}: {err}", sb.id);
                if outcome.is_ok() {
                    return Ok(1);
                }
            }
            outcome
        }
    }
}

/// Print an error the way the CLI promises: `error: <code>: <message>` for API errors.
pub fn report(err: &anyhow::Error) {
    if let Some(api @ warren_client::Error::Api { .. }) = err
        .chain()
        .find_map(|e| e.downcast_ref::<warren_client::Error>())
    {
        eprintln!("error: {api}");
    } else {
        eprintln!("error: {err:#}");
    }
}

fn create_request(opts: &SandboxOpts) -> CreateSandboxRequest {
    let resources = Resources {
        cpus: opts.cpus,
        memory_mib: opts.memory,
        pids: opts.pids,
    };
    CreateSandboxRequest {
        image: opts.image.clone(),
        env: opts.env.iter().cloned().collect(),
        metadata: opts.meta.iter().cloned().collect(),
        timeout_secs: opts.timeout,
        resources: (resources != Resources::default()).then_some(resources),
        snapshot: opts.snapshot.clone(),
        on_timeout: opts.on_timeout.map(|a| match a {
            OnTimeout::Delete => TimeoutAction::Delete,
            OnTimeout::Pause => TimeoutAction::Pause,
            OnTimeout::Stop => TimeoutAction::Stop,
        }),
        idle_timeout_secs: opts.idle_timeout,
        on_idle: opts.on_idle.map(|a| match a {
            OnIdle::Pause => IdleAction::Pause,
            OnIdle::Stop => IdleAction::Stop,
            OnIdle::Delete => IdleAction::Delete,
        }),
        auto_resume: opts.auto_resume,
        pool: opts.pool.clone(),
    }
}

async fn exec_request(
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    timeout_secs: Option<u64>,
    opts: &ExecOpts,
) -> anyhow::Result<ExecRequest> {
    let stdin = if opts.no_stdin || std::io::stdin().is_terminal() {
        None
    } else {
        let mut buf = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut buf)
            .await
            .context("reading standard input")?;
        if buf.is_empty() {
            None
        } else {
            Some(String::from_utf8(buf).map_err(|_| {
                anyhow::anyhow!("standard input is not UTF-8 text (the API carries text only)")
            })?)
        }
    };
    Ok(ExecRequest {
        cmd,
        env: env.into_iter().collect::<BTreeMap<_, _>>(),
        cwd: opts.cwd.clone(),
        stdin,
        timeout_secs,
        user: exec_user(opts.user),
        // Exact bytes: the terminal gets precisely what the command wrote.
        encoding: Some(OutputEncoding::Base64),
    })
}

fn exec_user(user: Option<User>) -> Option<ExecUser> {
    user.map(|u| match u {
        User::Root => ExecUser::Root,
        User::User => ExecUser::User,
    })
}

/// Stream a command's output to our stdout/stderr; returns its exit code.
async fn stream_exec(client: &Client, id: &str, req: &ExecRequest) -> anyhow::Result<u8> {
    let mut events = client.exec_stream(id, req).await?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(event) = events.next().await {
        let written = match event? {
            ExecStreamEvent::Stdout(bytes) => write_now(&mut stdout, &bytes).await,
            ExecStreamEvent::Stderr(bytes) => write_now(&mut stderr, &bytes).await,
            ExecStreamEvent::Exit(exit) => {
                if exit.timed_out {
                    eprintln!("warren: the command timed out and was killed");
                }
                return Ok(u8::try_from(exit.exit_code).unwrap_or(255));
            }
        };
        match written {
            Ok(()) => {}
            // Our reader went away (`| head`): stop like a command killed by SIGPIPE would.
            // Dropping the stream kills the remote command.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(141),
            Err(e) => return Err(e).context("writing the command's output"),
        }
    }
    bail!("the server ended the output stream without an exit status")
}

async fn write_now<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// `warren ls` table.
fn table(list: &[Sandbox], now: DateTime<Utc>) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "STATE".to_string(),
        "IMAGE".to_string(),
        "CREATED".to_string(),
        "EXPIRES".to_string(),
        "METADATA".to_string(),
    ]];
    for sb in list {
        let metadata = if sb.metadata.is_empty() {
            "-".to_string()
        } else {
            sb.metadata
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        rows.push([
            sb.id.clone(),
            sb.state.to_string(),
            sb.image.clone(),
            format!("{} ago", human(now - sb.created_at)),
            if sb.expires_at > now {
                format!("in {}", human(sb.expires_at - now))
            } else {
                "expired".to_string()
            },
            metadata,
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `42s`, `3m12s`, `5h3m`, `2d4h`.
pub(crate) fn human(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use warren_api::SandboxState;

    #[test]
    fn table_layout() {
        let now = Utc::now();
        let sb = |id: &str, meta: &[(&str, &str)]| Sandbox {
            id: id.to_string(),
            state: SandboxState::Running,
            image: "host".into(),
            created_at: now - TimeDelta::seconds(75),
            expires_at: now + TimeDelta::seconds(3 * 3600 + 120),
            timeout_secs: 300,
            metadata: meta
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            resources: Resources::default(),
            env_keys: vec![],
            failure_reason: None,
            state_changed_at: now,
            snapshot: None,
            on_timeout: Default::default(),
            idle_timeout_secs: None,
            on_idle: Default::default(),
            auto_resume: false,
            pool: None,
        };
        let t = table(
            &[sb("sb-1", &[]), sb("sb-longer", &[("a", "1"), ("b", "2")])],
            now,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "ID         STATE    IMAGE  CREATED    EXPIRES  METADATA"
        );
        assert_eq!(lines[1], "sb-1       running  host   1m15s ago  in 3h2m  -");
        assert!(lines[2].ends_with("a=1,b=2"));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(TimeDelta::seconds(-3)), "0s");
        assert_eq!(human(TimeDelta::seconds(59)), "59s");
        assert_eq!(human(TimeDelta::seconds(61)), "1m1s");
        assert_eq!(human(TimeDelta::seconds(7200)), "2h0m");
        assert_eq!(human(TimeDelta::seconds(90000)), "1d1h");
    }
}
