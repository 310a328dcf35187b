//! `warren volume create|ls|inspect|rm`, and the `-v` flag of `create` and `run`.

use clap::Subcommand;
use warren_api::VolumeMount;
use warren_client::Client;

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Make an empty volume and print its name.
    Create {
        name: String,
        /// Most MiB its files may take (servers with volume quotas only).
        #[arg(long, value_name = "MIB")]
        size: Option<u64>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a volume as JSON.
    Inspect { name: String },
    /// Delete volumes and their files (refused while a sandbox mounts one).
    #[command(alias = "delete")]
    Rm {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

/// `-v SOURCE:PATH[:ro]`: SOURCE is a volume name (`data`), a directory in one
/// (`data/sub/dir`), or an absolute host directory (`/srv/x`).
pub fn parse_mount(s: &str) -> Result<VolumeMount, String> {
    let (rest, read_only) = match s.strip_suffix(":ro") {
        Some(r) => (r, true),
        None => (s.strip_suffix(":rw").unwrap_or(s), false),
    };
    let (source, path) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected SOURCE:PATH[:ro]"))?;
    if source.is_empty() || path.is_empty() {
        return Err(format!("{s:?}: expected SOURCE:PATH[:ro]"));
    }
    let mut m = VolumeMount {
        name: None,
        host_path: None,
        path: path.to_string(),
        read_only,
        sub_path: None,
    };
    if source.starts_with('/') {
        m.host_path = Some(source.to_string());
    } else {
        let (name, sub) = match source.split_once('/') {
            Some((n, sub)) => (n, Some(sub.trim_end_matches('/').to_string())),
            None => (source, None),
        };
        m.name = Some(name.to_string());
        m.sub_path = sub.filter(|s| !s.is_empty());
    }
    Ok(m)
}

pub async fn run(client: &Client, cmd: VolumeCommand) -> anyhow::Result<u8> {
    match cmd {
        VolumeCommand::Create { name, size } => {
            println!("{}", client.create_volume(&name, size).await?.name);
            Ok(0)
        }
        VolumeCommand::Ls { json } => {
            let volumes = client.list_volumes().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&volumes)?);
                return Ok(0);
            }
            let mut rows = vec![["NAME", "USED", "LIMIT", "SANDBOXES"]
                .map(String::from)
                .to_vec()];
            let mib = |b: u64| format!("{:.1}M", b as f64 / (1 << 20) as f64);
            for v in &volumes {
                rows.push(vec![
                    v.name.clone(),
                    mib(v.used_bytes),
                    v.size_mib
                        .map(|m| format!("{m}M"))
                        .unwrap_or_else(|| "-".into()),
                    if v.sandboxes.is_empty() {
                        "-".into()
                    } else {
                        v.sandboxes.join(",")
                    },
                ]);
            }
            print!("{}", crate::table::columns(&rows));
            Ok(0)
        }
        VolumeCommand::Inspect { name } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&client.get_volume(&name).await?)?
            );
            Ok(0)
        }
        VolumeCommand::Rm { names } => {
            crate::commands::remove_each(
                names,
                |name| async move { client.delete_volume(&name).await },
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_mount;

    #[test]
    fn mount_flags() {
        let m = parse_mount("data:/data").unwrap();
        assert_eq!(
            (m.name.as_deref(), m.path.as_str(), m.read_only),
            (Some("data"), "/data", false)
        );
        let m = parse_mount("data/a/b:/w:ro").unwrap();
        assert_eq!((m.sub_path.as_deref(), m.read_only), (Some("a/b"), true));
        let m = parse_mount("/srv/x:/x").unwrap();
        assert_eq!((m.host_path.as_deref(), m.name), (Some("/srv/x"), None));
        for bad in ["data", ":/x", "data:", "data:ro"] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
    }
}
