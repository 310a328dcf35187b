//! `warren image pull|ls|inspect|rm`.

use anyhow::Context;
use clap::Subcommand;
use warren_client::Client;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry (`host:port/name:tag` or `name@sha256:…`) and print
    /// its name; layers already stored are not fetched again.
    Pull { reference: String },
    /// Import an image from a tar file (an OCI image layout, as `skopeo copy …
    /// oci-archive:FILE` writes it, or a `docker save` archive; `-` reads standard input)
    /// and store it as NAME.
    Import { name: String, file: String },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print an image as JSON (its config included).
    Inspect { name: String },
    /// Delete images and the layers no other image uses (refused while a sandbox or pool
    /// uses one).
    #[command(alias = "delete")]
    Rm {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

/// Pull `reference`, showing the bytes of all its layers on one bar (on a terminal only).
async fn pull_with_progress(client: &Client, reference: &str) -> anyhow::Result<warren_api::Image> {
    use futures::StreamExt;
    use warren_client::PullEvent;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )?
        .progress_chars("=> "),
    );
    bar.set_message(format!("pulling {reference}"));
    // Per layer: (done, total), so repeated reports of one layer are not added up.
    let mut layers: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut events = client.pull_image_events(reference).await?;
    let mut done = None;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(PullEvent::Progress(p)) => {
                let entry = layers.entry(p.layer).or_insert((0, p.total));
                if p.total > 0 {
                    entry.1 = p.total;
                }
                entry.0 = if p.complete { entry.1 } else { p.done };
                bar.set_length(layers.values().map(|l| l.1).sum());
                bar.set_position(layers.values().map(|l| l.0).sum());
            }
            Ok(PullEvent::Done(image)) => {
                done = Some(image);
                break;
            }
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        }
    }
    bar.finish_and_clear();
    done.ok_or_else(|| anyhow::anyhow!("the pull's event stream ended without the image"))
}

pub async fn run(client: &Client, cmd: ImageCommand) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::Pull { reference } => {
            let started = std::time::Instant::now();
            let image = pull_with_progress(client, &reference).await?;
            eprintln!(
                "{} layers, {:.1} MiB, {:.1} s",
                image.layers,
                image.size_bytes as f64 / (1 << 20) as f64,
                started.elapsed().as_secs_f64()
            );
            println!("{}", image.name);
            Ok(0)
        }
        ImageCommand::Import { name, file } => {
            let body = if file == "-" {
                warren_client::body_from_reader(tokio::io::stdin())
            } else {
                let f = tokio::fs::File::open(&file)
                    .await
                    .with_context(|| format!("opening {file}"))?;
                warren_client::body_from_reader(f)
            };
            let image = client.import_image(&name, body).await?;
            println!("{}", image.name);
            Ok(0)
        }
        ImageCommand::Ls { json } => {
            let images = client.list_images().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
                return Ok(0);
            }
            let mut rows = vec![["NAME", "DIGEST", "LAYERS", "SIZE"]
                .map(String::from)
                .to_vec()];
            for i in &images {
                rows.push(vec![
                    i.name.clone(),
                    i.digest
                        .as_deref()
                        .map(|d| d.trim_start_matches("sha256:").chars().take(12).collect())
                        .unwrap_or_else(|| "built-in".into()),
                    i.layers.to_string(),
                    format!("{:.1}M", i.size_bytes as f64 / (1 << 20) as f64),
                ]);
            }
            print!("{}", crate::table::columns(&rows));
            Ok(0)
        }
        ImageCommand::Inspect { name } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&client.get_image(&name).await?)?
            );
            Ok(0)
        }
        ImageCommand::Rm { names } => {
            crate::commands::remove_each(
                names,
                |name| async move { client.delete_image(&name).await },
            )
            .await
        }
    }
}
