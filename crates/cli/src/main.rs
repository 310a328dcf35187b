//! `warren`: the daemon (`warren serve`), the CLI verbs, and the hidden in-sandbox role.

mod bench;
mod commands;
mod credential;
mod files;
mod images;
mod keys;
mod lifecycle;
mod pools;
mod serve;
mod serve_args;
mod table;
mod templates;
mod terminal;
mod time;
mod volumes;

use std::ffi::OsStr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::serve_args::ServeArgs;

/// Self-hosted sandboxes for AI agents.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about, propagate_version = true)]
struct Cli {
    /// Server to talk to.
    #[arg(
        long,
        global = true,
        env = "WARREN_URL",
        default_value = warren_client::DEFAULT_URL,
        value_name = "URL"
    )]
    url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a sandbox and print its id.
    Create(SandboxOpts),
    /// List sandboxes.
    #[command(alias = "list")]
    Ls {
        /// Only sandboxes with this metadata (repeatable; all must match).
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a sandbox as JSON.
    Inspect { id: String },
    /// Delete sandboxes.
    #[command(alias = "delete")]
    Rm {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Run a command in a sandbox, streaming its output; exits with its exit code.
    ///
    /// Standard input is sent only with `-i` (read to its end before the command starts,
    /// as UTF-8 text); without it the command gets none, so `warren exec` never waits for
    /// input when called from a script or another program.
    ///
    /// With `-t` the command runs as a durable process in a new terminal connected to this
    /// one (raw mode, resized with the window); with `-it` what you type goes to it. `Ctrl-]`
    /// detaches (the process goes on; `warren attach ID PID` reattaches).
    #[command(after_help = EXIT_CODES)]
    Exec {
        id: String,
        /// Send standard input to the command (with `-t`: forward what you type).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Allocate a pseudo-terminal (an interactive session).
        #[arg(short = 't', long)]
        tty: bool,
        #[command(flatten)]
        opts: ExecOpts,
        /// Environment for this command (repeatable).
        #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_kv)]
        env: Vec<(String, String)>,
        /// Kill the command after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Create a sandbox, run a command in it, and (with --rm) delete it.
    ///
    /// Every option is checked before the sandbox is created (put the command after `--`).
    /// `-i`, `-t` and `-it` work as for `warren exec`. With `--rm` the sandbox is deleted
    /// whatever happens: the command ends, fails to start, the connection breaks, or this
    /// client gets SIGINT, SIGTERM or SIGHUP (only SIGKILL leaves it to expire by its
    /// timeout). Without `--rm` the sandbox's id is printed on standard error and it stays.
    /// `-d` starts the command as a durable process and prints the sandbox's id.
    #[command(after_help = EXIT_CODES)]
    Run {
        /// Delete the sandbox afterwards (also on errors, Ctrl-C and SIGTERM).
        #[arg(long, conflicts_with = "detach")]
        rm: bool,
        /// Send standard input to the command (with `-t`: forward what you type).
        #[arg(short = 'i', long, conflicts_with = "detach")]
        interactive: bool,
        /// Allocate a pseudo-terminal (an interactive session).
        #[arg(short = 't', long)]
        tty: bool,
        /// Start the command in the background and print the sandbox's id (`warren ps`,
        /// `warren attach` follow it).
        #[arg(short = 'd', long)]
        detach: bool,
        #[command(flatten)]
        sandbox: SandboxOpts,
        #[command(flatten)]
        opts: ExecOpts,
        /// Kill the command after this many seconds.
        #[arg(long, value_name = "SECS")]
        exec_timeout: Option<u64>,
        /// The command and its arguments (after `--`); without one, the `--image`'s
        /// Entrypoint and Cmd.
        #[arg(trailing_var_arg = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// Copy a file or a directory tree into or out of a sandbox.
    ///
    /// One side is `ID:/absolute/path` in the sandbox, the other a local path (`-` for
    /// standard input or output). Uploads are streamed and atomic, owned by root (or
    /// `--user user`) with mode 0644 unless `--mode`; missing parent directories are
    /// created. A destination ending in `/` (remote) or an existing local directory gets the
    /// source's file name.
    ///
    /// Directories are copied recursively. Downloading `ID:/dir` streams it as a tar archive
    /// and unpacks it (mtimes and symlinks kept; entries that would land outside the
    /// destination are refused). Downloads never carry setuid, setgid or sticky bits or the
    /// sandbox's owners: files keep their `rwx` bits, directories lose group and world write
    /// (at most 0755); a downloaded file that does not exist yet gets the source's `rwx`
    /// bits less the umask. Uploading a local directory writes every file below it
    /// (keeping each file's mode unless `--mode`) and creates its directories; symlinks are
    /// skipped with a warning.
    Cp {
        /// Source: a local file, `-` (stdin) or `ID:/path`.
        src: String,
        /// Destination: a local file or directory, `-` (stdout) or `ID:/path`.
        dst: String,
        /// Permission bits of an uploaded file, octal (e.g. 0755).
        #[arg(long, value_name = "OCTAL")]
        mode: Option<String>,
        /// Owner of an uploaded file.
        #[arg(long, value_enum)]
        user: Option<User>,
    },
    /// Inspect and change files inside a sandbox.
    #[command(subcommand)]
    Fs(FsCommand),
    /// Forward a port of a sandbox to an address on the server's host and print it
    /// (`127.0.0.1:NNNNN`); every connection to that address reaches the port inside.
    Port {
        id: String,
        /// The port inside the sandbox (1-65535).
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Print the URL of the server's HTTP reverse proxy to the port instead (works from
        /// anywhere that reaches the server).
        #[arg(long)]
        proxy: bool,
    },
    /// Reattach this terminal to a process (by pid or tag); `Ctrl-]` detaches again. The
    /// output the server still keeps is replayed first, so a full-screen program redraws.
    Attach { id: String, pid: String },
    /// List a sandbox's processes (running and recently exited).
    Ps {
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Freeze every process of sandboxes (`resume` thaws them); prints `ID STATE`.
    Pause {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Thaw paused sandboxes; prints `ID STATE`.
    Resume {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// End every process of sandboxes and keep their files (`start` boots them again);
    /// prints `ID STATE`.
    Stop {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Boot stopped sandboxes again on their files; prints `ID STATE`.
    Start {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Show a sandbox's network (mode, address, egress policy); with `--allow`, `--deny`
    /// or `--egress-default`, replace its egress policy live by the one these flags give
    /// (rules not given are dropped; the default stays unless given).
    Network {
        id: String,
        #[arg(long, value_enum, value_name = "ACTION")]
        egress_default: Option<EgressDefault>,
        /// Allow an IPv4 CIDR or address, a domain or `*.domain` (repeatable).
        #[arg(long, value_name = "TARGET")]
        allow: Vec<String>,
        /// Deny an IPv4 CIDR or address, a domain or `*.domain` (repeatable).
        #[arg(long, value_name = "TARGET")]
        deny: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a sandbox's resource usage (CPU, memory, processes, disk, network).
    Stats {
        id: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Snapshots of sandbox files.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Warm pools of ready sandboxes (`create --pool NAME` takes one without a cold start).
    #[command(subcommand)]
    Pool(pools::PoolCommand),
    /// OCI images pulled from registries (`create --image NAME`).
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Named volumes that outlive sandboxes (`create -v NAME:/path`).
    #[command(subcommand)]
    Volume(volumes::VolumeCommand),
    /// Build a template (an image) from a Dockerfile and a context directory, showing the
    /// build log; print its name.
    Build(templates::BuildArgs),
    /// Templates built with `warren build` (`create --image NAME`).
    #[command(subcommand)]
    Template(templates::TemplateCommand),
    /// API keys of a daemon started with `--api-keys FILE` (clients send one in
    /// `WARREN_API_KEY`).
    Key(keys::KeyArgs),
    /// Replace a sandbox's files with a snapshot's (a running sandbox is stopped and started
    /// again, with fresh processes).
    Rollback { id: String, snapshot: String },
    /// Create a new sandbox with a copy of a sandbox's files and print its id.
    Fork {
        id: String,
        /// Seconds until the new sandbox expires (default: the source's timeout).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Metadata of the new sandbox (repeatable; replaces the source's).
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
    },
    /// Follow lifecycle events (of one sandbox, or of all), one line per event.
    ///
    /// With an ID, the sandbox's past events are shown first and the command ends after
    /// its deletion; without, it shows new events of every sandbox until interrupted.
    Events {
        id: Option<String>,
        /// Start after this event sequence number (replays what the server still keeps).
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        /// Print each event as one line of JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon.
    Serve(Box<ServeArgs>),
    /// Measure a running daemon: cold and warm starts, exec, concurrency, files, snapshots,
    /// density, with bubblewrap/runsc baselines (docs/PERFORMANCE.md).
    Bench(bench::BenchArgs),
    /// Print the OpenAPI document of the HTTP API (the source of docs/openapi.json).
    #[command(hide = true)]
    Openapi,
}

/// `warren fs` verbs.
#[derive(Debug, Subcommand)]
enum FsCommand {
    /// List a directory (path, owner, size, modification time).
    Ls {
        id: String,
        #[arg(default_value = "/workspace")]
        path: String,
        /// Levels to descend (1 = direct children, at most 10).
        #[arg(long, default_value_t = 1)]
        depth: u32,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print a file's content.
    Cat { id: String, path: String },
    /// Remove a file, a symlink or an empty directory.
    Rm {
        id: String,
        path: String,
        /// Remove a directory and everything in it.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Create a directory and any missing parents.
    Mkdir { id: String, path: String },
    /// Search file contents below a path for a regular expression (`path:line:text`).
    Grep {
        id: String,
        path: String,
        pattern: String,
        /// Only files matching this glob (e.g. `**/*.rs`; without `/`: file names).
        #[arg(long, value_name = "G")]
        glob: Option<String>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// `warren snapshot` verbs.
#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Snapshot a sandbox's files and print the snapshot's id.
    Create {
        id: String,
        /// A label.
        #[arg(long, value_name = "N")]
        name: Option<String>,
    },
    /// List snapshots.
    #[command(alias = "list")]
    Ls {
        /// Only the snapshots of this sandbox.
        #[arg(long, value_name = "ID")]
        sandbox: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete snapshots.
    #[command(alias = "delete")]
    Rm {
        #[arg(required = true, value_name = "SNAP")]
        ids: Vec<String>,
    },
}

/// Options of a new sandbox.
#[derive(Debug, Clone, Args)]
struct SandboxOpts {
    /// What runs the sandbox: native (Linux namespaces on the host kernel) or gvisor
    /// (gVisor's user-space kernel) [default: the server's].
    #[arg(long, value_enum, value_name = "RUNTIME")]
    runtime: Option<serve_args::RuntimeArg>,
    /// CPU quota in cores (fractions allowed).
    #[arg(long, value_name = "F")]
    cpus: Option<f64>,
    /// Memory limit in MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// Maximum number of processes.
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// Disk space in MiB for what the sandbox writes (servers with disk quotas only).
    #[arg(long, value_name = "MIB")]
    disk: Option<u64>,
    /// Seconds until the sandbox expires.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Environment of every command in the sandbox (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Metadata label (repeatable).
    #[arg(long = "meta", value_name = "K=V", value_parser = parse_kv)]
    meta: Vec<(String, String)>,
    /// Image (default: host).
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// Start from this snapshot's files (`warren snapshot ls`).
    #[arg(long, value_name = "SNAP")]
    snapshot: Option<String>,
    /// What happens when the timeout runs out (default: delete).
    #[arg(long, value_enum, value_name = "ACTION")]
    on_timeout: Option<OnTimeout>,
    /// Seconds of idleness after which `--on-idle` applies (default: never).
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
    /// What idleness does (default: pause).
    #[arg(long, value_enum, value_name = "ACTION")]
    on_idle: Option<OnIdle>,
    /// Calls on a paused or stopped sandbox resume (or start) it instead of failing.
    #[arg(long)]
    auto_resume: bool,
    /// Take a ready sandbox of this pool (`warren pool ls`); an empty pool falls back to a
    /// cold create of its spec.
    #[arg(long, value_name = "NAME")]
    pool: Option<String>,
    #[command(flatten)]
    net: NetOpts,
    /// An API key the credential broker keeps outside the sandbox (repeatable): a preset
    /// (`anthropic`, `openai`: the key from this shell's `$ANTHROPIC_API_KEY` /
    /// `$OPENAI_API_KEY`) or `upstream=URL,header=NAME,value-env=VAR|value-file=PATH,
    /// base-url-env=NAME,token-env=NAME`. Inside, the base-URL variable points at the broker
    /// and the token variable holds a token for this sandbox only.
    #[arg(long = "credential", value_name = "SPEC", value_parser = credential::parse)]
    credentials: Vec<warren_api::CredentialRequest>,
    /// Mount a volume or host directory (repeatable): `NAME:PATH`, `NAME/SUB/DIR:PATH`
    /// (a directory in the volume, made if missing) or `/HOST/DIR:PATH` (under a prefix the
    /// server allows); `:ro` at the end mounts it read-only.
    #[arg(long = "volume", short = 'v', value_name = "SRC:PATH[:ro]", value_parser = volumes::parse_mount)]
    volumes: Vec<warren_api::VolumeMount>,
}

/// Network flags of `create`, `run` and `network`.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct NetOpts {
    /// Network mode: `nat` (its own address, outbound traffic through the host under the
    /// egress policy) or `isolated` (loopback only) [default: the server's].
    #[arg(long, value_enum, value_name = "MODE")]
    network: Option<NetMode>,
    /// What the egress rules do not cover: `allow` [default] or `deny`.
    #[arg(long, value_enum, value_name = "ACTION")]
    egress_default: Option<EgressDefault>,
    /// Allow connections to an IPv4 CIDR or address, a domain or `*.domain` (repeatable).
    #[arg(long, value_name = "TARGET")]
    allow: Vec<String>,
    /// Deny connections to an IPv4 CIDR or address, a domain or `*.domain` (repeatable).
    #[arg(long, value_name = "TARGET")]
    deny: Vec<String>,
}

impl NetOpts {
    /// The egress policy the flags give, if they give any (`default` when only rules are).
    fn egress(&self, default: warren_api::EgressAction) -> Option<warren_api::EgressPolicy> {
        if self.egress_default.is_none() && self.allow.is_empty() && self.deny.is_empty() {
            return None;
        }
        let rule = |action, target: &String| warren_api::EgressRule {
            action,
            target: target.clone(),
        };
        Some(warren_api::EgressPolicy {
            default: self.egress_default.map(Into::into).unwrap_or(default),
            rules: self
                .allow
                .iter()
                .map(|t| rule(warren_api::EgressAction::Allow, t))
                .chain(
                    self.deny
                        .iter()
                        .map(|t| rule(warren_api::EgressAction::Deny, t)),
                )
                .collect(),
        })
    }

    pub(crate) fn request(&self) -> Option<warren_api::NetworkRequest> {
        let egress = self.egress(warren_api::EgressAction::Allow);
        (self.network.is_some() || egress.is_some()).then(|| warren_api::NetworkRequest {
            mode: self.network.map(|m| match m {
                NetMode::Nat => warren_api::NetworkMode::Nat,
                NetMode::Isolated => warren_api::NetworkMode::Isolated,
            }),
            egress,
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum NetMode {
    Nat,
    Isolated,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EgressDefault {
    Allow,
    Deny,
}

impl From<EgressDefault> for warren_api::EgressAction {
    fn from(d: EgressDefault) -> warren_api::EgressAction {
        match d {
            EgressDefault::Allow => warren_api::EgressAction::Allow,
            EgressDefault::Deny => warren_api::EgressAction::Deny,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnTimeout {
    Delete,
    Pause,
    Stop,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnIdle {
    Pause,
    Stop,
    Delete,
}

/// Options of a command.
#[derive(Debug, Clone, Args)]
struct ExecOpts {
    /// Working directory inside the sandbox (default /workspace).
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Who runs the command.
    #[arg(long, value_enum)]
    user: Option<User>,
    /// Never send standard input (the default without `-i`; kept for compatibility).
    #[arg(long, short = 'n', hide = true)]
    no_stdin: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum User {
    Root,
    User,
}

/// The exit statuses of `exec` and `run` (Docker's convention).
const EXIT_CODES: &str = "Exit status: the command's; 125 if Warren fails (daemon, sandbox); \
126 if the command cannot be run (permission denied, not executable, bad --cwd); 127 if it is \
not found; 128+N if this client is ended by signal N.";

pub(crate) fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

fn main() -> ExitCode {
    // The helper roles must run before any thread or async runtime exists.
    let role = std::env::args_os().nth(1);
    match role.as_deref() {
        Some(r) if r == OsStr::new(warren_runtime_native::SANDBOX_INIT_ARG) => {
            return warren_runtime_native::init::sandbox_init_main()
        }
        Some(r) if r == OsStr::new(warren_runtime_gvisor::INIT_ARG) => {
            return warren_runtime_gvisor::init::init_main()
        }
        Some(r) if r == OsStr::new(warren_runtime_gvisor::AGENT_ARG) => {
            return warren_runtime_gvisor::agent::agent_main()
        }
        _ => {}
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(err) => {
            commands::report(&err);
            1
        }
    };
    // Don't wait for a blocking stdin read that nobody needs any more.
    runtime.shutdown_background();
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_the_command_after_dashes_or_not() {
        let cli = Cli::parse_from(["warren", "exec", "sb1", "-e", "A=1", "--", "ls", "-la"]);
        match cli.command {
            Command::Exec { id, cmd, env, .. } => {
                assert_eq!(id, "sb1");
                assert_eq!(cmd, ["ls", "-la"]);
                assert_eq!(env, [("A".to_string(), "1".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::parse_from(["warren", "exec", "--cwd", "/tmp", "sb1", "sh", "-c", "x"]);
        match cli.command {
            Command::Exec { cmd, opts, .. } => {
                assert_eq!(cmd, ["sh", "-c", "x"]);
                assert_eq!(opts.cwd.as_deref(), Some("/tmp"));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["warren", "exec", "sb1"]).is_err());
        assert!(Cli::try_parse_from(["warren", "create", "--env", "novalue"]).is_err());
    }

    #[test]
    fn port_verb() {
        let cli = Cli::parse_from(["warren", "port", "sb1", "8000"]);
        match cli.command {
            Command::Port { id, port, proxy } => {
                assert_eq!((id.as_str(), port, proxy), ("sb1", 8000, false));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["warren", "port", "sb1", "0"]).is_err());
        assert!(Cli::try_parse_from(["warren", "port", "sb1", "70000"]).is_err());
        assert!(Cli::try_parse_from(["warren", "port", "sb1", "80", "--proxy"]).is_ok());
    }

    #[test]
    fn lifecycle_verbs() {
        let cli = Cli::parse_from([
            "warren",
            "create",
            "--snapshot",
            "snap-1",
            "--auto-resume",
            "--on-timeout",
            "pause",
            "--idle-timeout",
            "60",
            "--on-idle",
            "stop",
        ]);
        match cli.command {
            Command::Create(o) => {
                assert_eq!(o.snapshot.as_deref(), Some("snap-1"));
                assert!(o.auto_resume);
                assert!(matches!(o.on_timeout, Some(OnTimeout::Pause)));
                assert_eq!(o.idle_timeout, Some(60));
                assert!(matches!(o.on_idle, Some(OnIdle::Stop)));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["warren", "create", "--on-idle", "nap"]).is_err());
        assert!(Cli::try_parse_from(["warren", "pause"]).is_err());
        match Cli::parse_from(["warren", "snapshot", "create", "sb1", "--name", "n"]).command {
            Command::Snapshot(SnapshotCommand::Create { id, name }) => {
                assert_eq!((id.as_str(), name.as_deref()), ("sb1", Some("n")));
            }
            other => panic!("{other:?}"),
        }
        match Cli::parse_from(["warren", "events", "--after", "7"]).command {
            Command::Events { id, after, json } => {
                assert_eq!((id, after, json), (None, Some(7), false));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["warren", "rollback", "sb1"]).is_err());
        assert!(Cli::try_parse_from(["warren", "snapshot", "ls", "--sandbox", "sb1"]).is_ok());
    }

    #[test]
    fn pool_verbs() {
        match Cli::parse_from(["warren", "create", "--pool", "py"]).command {
            Command::Create(o) => assert_eq!(o.pool.as_deref(), Some("py")),
            other => panic!("{other:?}"),
        }
        let cli = Cli::parse_from([
            "warren", "pool", "put", "py", "--size", "3", "--memory", "256", "-e", "A=1",
        ]);
        match cli.command {
            Command::Pool(pools::PoolCommand::Put {
                name,
                size,
                memory,
                env,
                ..
            }) => {
                assert_eq!((name.as_str(), size, memory), ("py", 3, Some(256)));
                assert_eq!(env, [("A".to_string(), "1".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["warren", "pool", "put", "py"]).is_err());
        assert!(Cli::try_parse_from(["warren", "pool", "ls", "--json"]).is_ok());
        assert!(Cli::try_parse_from(["warren", "pool", "rm"]).is_err());
    }

    #[test]
    fn run_and_serve_args() {
        let cli = Cli::parse_from([
            "warren", "run", "--rm", "--memory", "256", "--meta", "a=b=c", "--", "true",
        ]);
        match cli.command {
            Command::Run {
                rm, sandbox, cmd, ..
            } => {
                assert!(rm);
                assert_eq!(sandbox.memory, Some(256));
                assert_eq!(sandbox.meta, [("a".to_string(), "b=c".to_string())]);
                assert_eq!(cmd, ["true"]);
            }
            other => panic!("{other:?}"),
        }
        // Docker habits: `-it` before `--` are flags, `--rm` after them still counts.
        match Cli::parse_from(["warren", "run", "-it", "--rm", "--", "bash"]).command {
            Command::Run {
                rm,
                interactive,
                tty,
                detach,
                cmd,
                ..
            } => {
                assert!(rm && interactive && tty && !detach);
                assert_eq!(cmd, ["bash"]);
            }
            other => panic!("{other:?}"),
        }
        match Cli::parse_from(["warren", "run", "--rm", "sh", "-c", "exit 3"]).command {
            Command::Run { cmd, .. } => assert_eq!(cmd, ["sh", "-c", "exit 3"]),
            other => panic!("{other:?}"),
        }
        match Cli::parse_from(["warren", "run", "--", "-it"]).command {
            Command::Run { cmd, rm, .. } => assert_eq!((cmd, rm), (vec!["-it".to_string()], false)),
            other => panic!("{other:?}"),
        }
        // Unknown flags before the command are errors, not the command.
        for bad in [
            &["warren", "run", "-x", "--rm", "--", "bash"][..],
            &["warren", "run", "--nope", "--", "true"],
            &["warren", "run", "-d", "--rm", "--", "sleep", "9"],
            &["warren", "run", "-di", "--", "cat"],
            &["warren", "exec", "sb1", "-it", "-x", "--", "sh"],
            &["warren", "exec", "sb1", "--bogus", "ls"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["warren", "run", "-dt", "--", "top"]).is_ok());
        // `-n` is accepted (a no-op now that stdin is only read with `-i`).
        match Cli::parse_from(["warren", "exec", "-n", "sb1", "true"]).command {
            Command::Exec {
                interactive, opts, ..
            } => assert!(!interactive && opts.no_stdin),
            other => panic!("{other:?}"),
        }
        let cli = Cli::parse_from(["warren", "serve", "--listen", "0.0.0.0:9000"]);
        match cli.command {
            Command::Serve(args) => {
                let s = args.settings().unwrap();
                assert_eq!(s.listen.port(), 9000);
                assert_eq!(s.data_dir, std::path::Path::new("/var/lib/warren"));
            }
            other => panic!("{other:?}"),
        }
    }
}
