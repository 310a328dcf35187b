//! The client verbs.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, Signal, SignalKind};
use warren_api::{
    CreateSandboxRequest, ExecRequest, ExecUser, IdleAction, OutputEncoding, Resources, Sandbox,
    TimeoutAction,
};
use warren_client::{Client, ExecStreamEvent};

use crate::terminal::Ended;
use crate::time::human;
use crate::{Cli, Command, ExecOpts, OnIdle, OnTimeout, SandboxOpts, User};

/// Run one verb; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    if let Command::Serve(args) = cli.command {
        crate::serve::run(*args).await?;
        return Ok(0);
    }
    if let Command::Key(args) = cli.command {
        return crate::keys::run(args);
    }
    if let Command::Openapi = cli.command {
        println!(
            "{}",
            serde_json::to_string_pretty(&warren_server::openapi())?
        );
        return Ok(0);
    }
    let client = match Client::new(&cli.url).context("bad --url / WARREN_URL") {
        // Never an argument: the process list shows arguments.
        Ok(client) => match std::env::var(warren_client::API_KEY_ENV) {
            Ok(key) if !key.trim().is_empty() => client.with_api_key(key.trim()),
            _ => client,
        },
        // `exec` and `run` keep their promise: 125 when Warren itself fails.
        Err(e) if matches!(cli.command, Command::Exec { .. } | Command::Run { .. }) => {
            return Ok(exit_status(Err(e)));
        }
        Err(e) => return Err(e),
    };
    match cli.command {
        Command::Serve(_) | Command::Openapi | Command::Key(_) => Ok(0),
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
            let client = &client;
            remove_each(ids, |id| async move { client.delete_sandbox(&id).await }).await
        }
        Command::Pause { ids } => crate::lifecycle::transition(&client, "pause", &ids).await,
        Command::Resume { ids } => crate::lifecycle::transition(&client, "resume", &ids).await,
        Command::Stop { ids } => crate::lifecycle::transition(&client, "stop", &ids).await,
        Command::Start { ids } => crate::lifecycle::transition(&client, "start", &ids).await,
        Command::Stats { id, json } => crate::lifecycle::stats(&client, &id, json).await,
        Command::Network {
            id,
            egress_default,
            allow,
            deny,
            json,
        } => {
            let opts = crate::NetOpts {
                network: None,
                egress_default,
                allow,
                deny,
            };
            crate::lifecycle::network(&client, &id, &opts, json).await
        }
        Command::Snapshot(cmd) => crate::lifecycle::snapshot(&client, cmd).await,
        Command::Pool(cmd) => crate::pools::run(&client, cmd).await,
        Command::Image(cmd) => crate::images::run(&client, cmd).await,
        Command::Volume(cmd) => crate::volumes::run(&client, cmd).await,
        Command::Build(args) => crate::templates::build(&client, args).await,
        Command::Template(cmd) => crate::templates::run(&client, cmd).await,
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
            tty,
            opts,
            env,
            timeout,
            cmd,
        } => {
            let stdin = interactive && !opts.no_stdin;
            let outcome = if tty {
                let req = process_request(cmd, env, timeout, &opts);
                crate::terminal::exec_tty(&client, &id, req, stdin).await
            } else {
                match exec_request(cmd, env, timeout, &opts, stdin).await {
                    Ok(req) => stream_exec(&client, &id, &req).await,
                    Err(e) => Err(e),
                }
            };
            Ok(exit_status(outcome))
        }
        Command::Run {
            rm,
            interactive,
            tty,
            detach,
            sandbox,
            opts,
            exec_timeout,
            cmd,
        } => {
            let job = RunJob {
                rm,
                stdin: interactive && !opts.no_stdin,
                tty,
                detach,
            };
            Ok(run_sandbox(&client, job, &sandbox, cmd, exec_timeout, &opts).await)
        }
    }
}

/// The exit status for the outcome of `exec` or `run` (Docker's convention): the command's
/// own, else 127 (command not found), 126 (cannot be run) or 125 (Warren failed), with the
/// error printed.
fn exit_status(outcome: anyhow::Result<u8>) -> u8 {
    match outcome {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            failure_status(&err)
        }
    }
}

fn failure_status(err: &anyhow::Error) -> u8 {
    let code = err
        .chain()
        .find_map(|e| e.downcast_ref::<warren_client::Error>())
        .and_then(|e| e.code());
    match code {
        Some("command_not_found") => 127,
        Some("spawn_failed" | "invalid_cwd") => 126,
        _ => 125,
    }
}

/// What `warren run` does with its sandbox.
#[derive(Debug, Clone, Copy)]
struct RunJob {
    rm: bool,
    stdin: bool,
    tty: bool,
    detach: bool,
}

/// The command of `warren run`, prepared before the sandbox exists.
enum Prepared {
    /// Streamed output (no terminal).
    Exec(ExecRequest),
    /// A durable process in a terminal connected to ours (`-t`).
    Terminal(warren_api::CreateProcessRequest),
    /// A durable process left running (`-d`).
    Background(warren_api::CreateProcessRequest),
}

/// What `warren run --image NAME` runs without a command: the image's Entrypoint and Cmd
/// (pulled first if the server does not have it).
async fn image_command(client: &Client, image: Option<&str>) -> anyhow::Result<Vec<String>> {
    let Some(image) = image else {
        anyhow::bail!(
            "give a command (after --), or an --image whose Entrypoint or Cmd says what to run"
        );
    };
    let info = match client.get_image(image).await {
        Ok(info) => info,
        Err(warren_client::Error::Api { status: 404, .. }) => client.pull_image(image).await?,
        Err(e) => return Err(e.into()),
    };
    let mut cmd = info.config.entrypoint.clone();
    cmd.extend(info.config.cmd.iter().cloned());
    if cmd.is_empty() {
        anyhow::bail!(
            "image {} has no Entrypoint or Cmd: give a command (after --)",
            info.name
        );
    }
    Ok(cmd)
}

/// `warren run`: create a sandbox, run the command, and with `--rm` delete the sandbox on
/// every path (the command's end, any error, SIGINT/SIGTERM/SIGHUP of this client).
async fn run_sandbox(
    client: &Client,
    job: RunJob,
    sandbox: &SandboxOpts,
    cmd: Vec<String>,
    exec_timeout: Option<u64>,
    opts: &ExecOpts,
) -> u8 {
    // Everything that can fail here happens before the sandbox exists.
    let cmd = if cmd.is_empty() {
        match image_command(client, sandbox.image.as_deref()).await {
            Ok(cmd) => cmd,
            Err(e) => return exit_status(Err(e)),
        }
    } else {
        cmd
    };
    let prepared = if job.detach {
        let mut req = process_request(cmd, Vec::new(), exec_timeout, opts);
        if job.tty {
            req = crate::terminal::with_tty(req);
        }
        Prepared::Background(req)
    } else if job.tty {
        Prepared::Terminal(process_request(cmd, Vec::new(), exec_timeout, opts))
    } else {
        match exec_request(cmd, Vec::new(), exec_timeout, opts, job.stdin).await {
            Ok(req) => Prepared::Exec(req),
            Err(e) => return exit_status(Err(e)),
        }
    };
    // Listen before creating: a signal that arrives while the sandbox is being created
    // then deletes it as soon as its id is known.
    let mut signals = if job.rm {
        match Signals::new() {
            Ok(s) => Some(s),
            Err(e) => return exit_status(Err(e)),
        }
    } else {
        None
    };
    let sb = match client.create_sandbox(&create_request(sandbox)).await {
        Ok(sb) => sb,
        Err(e) => return exit_status(Err(e.into())),
    };
    let id = sb.id.as_str();
    let work = async {
        match prepared {
            Prepared::Exec(req) => stream_exec(client, id, &req).await,
            Prepared::Background(req) => {
                client.start_process(id, &req).await?;
                println!("{id}");
                Ok(0)
            }
            Prepared::Terminal(req) => {
                let pid = crate::terminal::start_tty(client, id, req).await?;
                match crate::terminal::session(client, id, &pid, job.stdin, true).await? {
                    Ended::Exit(code) => Ok(code),
                    Ended::Detached if job.rm => {
                        eprintln!("\nwarren: detached; deleting sandbox {id} (--rm)");
                        Ok(0)
                    }
                    Ended::Detached => {
                        crate::terminal::detached_hint(id, &pid);
                        Ok(0)
                    }
                }
            }
        }
    };
    let Some(signals) = signals.as_mut() else {
        if !job.detach {
            eprintln!("{id}");
        }
        let outcome = work.await;
        let failed = outcome.is_err();
        let code = exit_status(outcome);
        if job.detach && failed {
            // Its id was never handed out: nothing could use the sandbox.
            if let Err(err) = client.delete_sandbox(id).await {
                eprintln!("error: deleting sandbox {id}: {err}");
            }
        }
        return code;
    };
    let code = tokio::select! {
        biased;
        signal = signals.recv() => 128 + signal,
        outcome = work => exit_status(outcome),
    };
    if let Err(err) = client.delete_sandbox(id).await {
        eprintln!("error: deleting sandbox {id}: {err}");
        if code == 0 {
            return 125;
        }
    }
    code
}

/// SIGINT, SIGTERM and SIGHUP, caught for as long as this lives.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        let listen = |kind: SignalKind| signal(kind).context("listening for signals");
        Ok(Signals {
            int: listen(SignalKind::interrupt())?,
            term: listen(SignalKind::terminate())?,
            hup: listen(SignalKind::hangup())?,
        })
    }

    /// The next signal's number.
    async fn recv(&mut self) -> u8 {
        tokio::select! {
            Some(()) = self.int.recv() => libc::SIGINT as u8,
            Some(()) = self.term.recv() => libc::SIGTERM as u8,
            Some(()) = self.hup.recv() => libc::SIGHUP as u8,
            else => std::future::pending().await,
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
        disk_mib: opts.disk,
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
        network: opts.net.request(),
        credentials: opts.credentials.clone(),
        volumes: opts.volumes.clone(),
        runtime: opts.runtime.map(Into::into),
    }
}

/// Delete each of `names` with `delete`, printing each one deleted and each error; exit
/// status 1 if any failed (the others are still deleted).
pub(crate) async fn remove_each<F, Fut>(names: Vec<String>, mut delete: F) -> anyhow::Result<u8>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), warren_client::Error>>,
{
    let mut failed = false;
    for name in names {
        match delete(name.clone()).await {
            Ok(()) => println!("{name}"),
            Err(err) => {
                failed = true;
                match &err {
                    warren_client::Error::Api { .. } => eprintln!("error: {err}"),
                    _ => eprintln!("error: {name}: {err}"),
                }
            }
        }
    }
    Ok(u8::from(failed))
}

fn process_request(
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    timeout_secs: Option<u64>,
    opts: &ExecOpts,
) -> warren_api::CreateProcessRequest {
    warren_api::CreateProcessRequest {
        cmd,
        env: env.into_iter().collect(),
        cwd: opts.cwd.clone(),
        user: exec_user(opts.user),
        timeout_secs,
        ..Default::default()
    }
}

/// A streamed exec; with `send_stdin` our standard input is read to its end (`Ctrl-D` on a
/// terminal) and sent, otherwise the command gets none and it is never touched.
async fn exec_request(
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    timeout_secs: Option<u64>,
    opts: &ExecOpts,
    send_stdin: bool,
) -> anyhow::Result<ExecRequest> {
    let stdin = if !send_stdin {
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
            network: warren_api::SandboxNetwork {
                mode: warren_api::NetworkMode::Isolated,
                address: None,
                gateway: None,
                egress: Default::default(),
            },
            credentials: Vec::new(),
            volumes: Vec::new(),
            runtime: Default::default(),
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
}
