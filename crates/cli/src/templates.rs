//! `warren build` (a template from a Dockerfile, with its build log) and
//! `warren template ls|inspect|rm`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use futures::StreamExt;
use warren_client::{BuildEvent, Client, TemplateBuild};

/// `warren build`.
#[derive(Debug, Clone, Args)]
pub struct BuildArgs {
    /// The template's name (what `create --image` takes).
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub name: String,
    /// The Dockerfile [default: CONTEXT/Dockerfile].
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// A build argument (repeatable).
    #[arg(long = "build-arg", value_name = "K=V", value_parser = crate::parse_kv)]
    pub build_args: Vec<(String, String)>,
    /// Started as a process tagged `start` in every sandbox made from the template.
    #[arg(long, value_name = "CMD")]
    pub start_cmd: Option<String>,
    /// Run until it exits 0 before a sandbox of the template counts as created.
    #[arg(long, value_name = "CMD")]
    pub ready_cmd: Option<String>,
    /// Seconds `--ready-cmd` may take [default: 60].
    #[arg(long, value_name = "SECS")]
    pub ready_timeout: Option<u64>,
    /// Run every step, ignoring the build cache.
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub net: crate::NetOpts,
    /// What runs the RUN steps: native or gvisor [default: the server's].
    #[arg(long, value_enum)]
    pub runtime: Option<crate::serve_args::RuntimeArg>,
    /// Print only the template's name (no build log).
    #[arg(short, long)]
    pub quiet: bool,
    /// The build context: a directory (sent as a tar archive) whose files COPY and ADD name.
    pub context: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// List templates.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a template as JSON (its Dockerfile and image config included).
    Inspect { name: String },
    /// Delete templates (refused while a sandbox, pool or snapshot uses one).
    #[command(alias = "delete")]
    Rm {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

/// `dir` as a tar archive in a temporary file (symlinks kept as symlinks).
fn tar_context(dir: &Path) -> anyhow::Result<std::fs::File> {
    let mut file = tempfile_in_tmp()?;
    {
        let mut tar = tar::Builder::new(&mut file);
        tar.follow_symlinks(false);
        tar.mode(tar::HeaderMode::Complete);
        tar.append_dir_all(".", dir)
            .with_context(|| format!("packing the context {}", dir.display()))?;
        tar.finish()?;
    }
    use std::io::Seek;
    file.rewind()?;
    Ok(file)
}

/// An anonymous temporary file (gone when closed).
fn tempfile_in_tmp() -> anyhow::Result<std::fs::File> {
    tempfile::tempfile().context("creating a temporary file for the context")
}

pub async fn build(client: &Client, args: BuildArgs) -> anyhow::Result<u8> {
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let dockerfile = tokio::fs::read_to_string(&file)
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    let dir = args.context.clone();
    let archive = tokio::task::spawn_blocking(move || tar_context(&dir)).await??;
    let build = TemplateBuild {
        name: args.name.clone(),
        dockerfile,
        context: Some(warren_client::body_from_reader(tokio::fs::File::from_std(
            archive,
        ))),
        build_args: args.build_args.iter().cloned().collect(),
        start_cmd: args.start_cmd.clone(),
        ready_cmd: args.ready_cmd.clone(),
        ready_timeout_secs: args.ready_timeout,
        network: args.net.request(),
        runtime: args.runtime.map(Into::into),
        no_cache: args.no_cache,
    };
    let mut events = client.build_template_events(build).await?;
    while let Some(ev) = events.next().await {
        match ev? {
            BuildEvent::Step(s) if !args.quiet => eprintln!(
                "Step {}/{} : {}{}",
                s.index,
                s.total,
                s.instruction,
                if s.cached { " (cached)" } else { "" }
            ),
            BuildEvent::Log(l) if !args.quiet => {
                if l.stream == "stderr" {
                    eprint!("{}", l.data);
                } else {
                    print!("{}", l.data);
                }
            }
            BuildEvent::Done(t) => {
                if !args.quiet {
                    eprintln!(
                        "built {} in {:.1} s: {} layers, {}/{} steps from the cache",
                        t.name,
                        t.build_ms as f64 / 1000.0,
                        t.image.layers,
                        t.cached_steps,
                        t.steps
                    );
                }
                println!("{}", t.name);
                return Ok(0);
            }
            _ => {}
        }
    }
    anyhow::bail!("the build's event stream ended without its result")
}

pub async fn run(client: &Client, cmd: TemplateCommand) -> anyhow::Result<u8> {
    match cmd {
        TemplateCommand::Ls { json } => {
            let templates = client.list_templates().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&templates)?);
                return Ok(0);
            }
            let mut rows = vec![["NAME", "BASE", "LAYERS", "SIZE", "BUILT"]
                .map(String::from)
                .to_vec()];
            for t in &templates {
                rows.push(vec![
                    t.name.clone(),
                    t.base.clone(),
                    t.image.layers.to_string(),
                    format!("{:.1}M", t.image.size_bytes as f64 / (1 << 20) as f64),
                    t.built_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]);
            }
            print!("{}", crate::table::columns(&rows));
            Ok(0)
        }
        TemplateCommand::Inspect { name } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&client.get_template(&name).await?)?
            );
            Ok(0)
        }
        TemplateCommand::Rm { names } => {
            crate::commands::remove_each(names, |name| async move {
                client.delete_template(&name).await
            })
            .await
        }
    }
}
