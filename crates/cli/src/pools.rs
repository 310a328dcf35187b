//! `warren pool put|ls|rm`: warm pools of ready sandboxes.

use clap::Subcommand;
use warren_api::{Pool, PoolSpec, Resources};
use warren_client::Client;

/// `warren pool` verbs.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Define (or redefine) a pool and print its status; it fills in the background.
    Put {
        name: String,
        /// Ready sandboxes to keep.
        #[arg(long, value_name = "N")]
        size: u32,
        /// CPU quota of its sandboxes in cores (fractions allowed).
        #[arg(long, value_name = "F")]
        cpus: Option<f64>,
        /// Memory limit of its sandboxes in MiB.
        #[arg(long, value_name = "MIB")]
        memory: Option<u64>,
        /// Maximum number of processes of its sandboxes.
        #[arg(long, value_name = "N")]
        pids: Option<u64>,
        /// Disk space of its sandboxes in MiB (servers with disk quotas only).
        #[arg(long, value_name = "MIB")]
        disk: Option<u64>,
        /// Image (default: host).
        #[arg(long, value_name = "NAME")]
        image: Option<String>,
        /// Environment its sandboxes start with (repeatable). A pool with env is only
        /// used by `create --pool NAME`.
        #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = crate::parse_kv)]
        env: Vec<(String, String)>,
        /// Runtime of its sandboxes: native or gvisor (default: the server's).
        #[arg(long, value_enum, value_name = "RUNTIME")]
        runtime: Option<crate::serve_args::RuntimeArg>,
    },
    /// List pools with their ready, filling and claimed counts.
    #[command(alias = "list")]
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete pools and their unclaimed sandboxes (claimed ones stay).
    #[command(alias = "delete")]
    Rm {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

pub async fn run(client: &Client, cmd: PoolCommand) -> anyhow::Result<u8> {
    match cmd {
        PoolCommand::Put {
            name,
            size,
            cpus,
            memory,
            pids,
            disk,
            image,
            env,
            runtime,
        } => {
            let resources = Resources {
                cpus,
                memory_mib: memory,
                pids,
                disk_mib: disk,
            };
            let spec = PoolSpec {
                network: None,
                runtime: runtime.map(Into::into),
                image,
                size,
                resources: (resources != Resources::default()).then_some(resources),
                env: env.into_iter().collect(),
            };
            let pool = client.put_pool(&name, &spec).await?;
            print!("{}", table(&[pool]));
            Ok(0)
        }
        PoolCommand::Ls { json } => {
            let pools = client.list_pools().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pools)?);
            } else {
                print!("{}", table(&pools));
            }
            Ok(0)
        }
        PoolCommand::Rm { names } => {
            crate::commands::remove_each(
                names,
                |name| async move { client.delete_pool(&name).await },
            )
            .await
        }
    }
}

fn table(pools: &[Pool]) -> String {
    let mut rows = vec![[
        "NAME", "SIZE", "READY", "FILLING", "CLAIMED", "IMAGE", "CPUS", "MEMORY", "SOURCE",
    ]
    .map(String::from)
    .to_vec()];
    for p in pools {
        let mut row = vec![
            p.name.clone(),
            p.size.to_string(),
            p.ready.to_string(),
            p.filling.to_string(),
            p.claimed.to_string(),
            p.image.clone(),
            p.resources
                .cpus
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            p.resources
                .memory_mib
                .map(|m| format!("{m}M"))
                .unwrap_or_else(|| "-".into()),
            format!("{:?}", p.source).to_lowercase(),
        ];
        if let Some(e) = &p.last_error {
            row.push(e.clone());
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            match widths.get(i) {
                Some(w) => line.push_str(&format!("{cell:<w$}  ")),
                None => line.push_str(cell),
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

    #[test]
    fn table_layout() {
        let p = Pool {
            name: "py".into(),
            image: "host".into(),
            size: 4,
            resources: Resources {
                cpus: Some(0.5),
                memory_mib: Some(512),
                pids: Some(64),
                disk_mib: None,
            },
            env_keys: vec![],
            network: Default::default(),
            runtime: Default::default(),
            source: Default::default(),
            ready: 3,
            filling: 1,
            claimed: 7,
            claims: 9,
            misses: 0,
            last_error: Some("capacity_exhausted: full".into()),
            created_at: chrono::Utc::now(),
        };
        let t = table(&[p]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAME  SIZE  READY  FILLING  CLAIMED  IMAGE  CPUS  MEMORY  SOURCE"
        );
        assert_eq!(
            lines[1],
            "py    4     3      1        7        host   0.5   512M    api     capacity_exhausted: full"
        );
    }
}
