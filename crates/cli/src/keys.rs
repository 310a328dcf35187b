//! `warren key create|ls|rm`: the API keys of a daemon started with `--api-keys FILE`
//! (edited in place; a running daemon picks changes up within a second).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use warren_server::auth::KeyFile;

/// The key file when `--file` is not given.
pub const DEFAULT_KEY_FILE: &str = "/var/lib/warren/api-keys.json";

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The key file (`warren serve --api-keys FILE`).
    #[arg(long, global = true, value_name = "FILE", default_value = DEFAULT_KEY_FILE)]
    pub file: PathBuf,
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a key and print it (once: the file keeps only its digest).
    Create {
        /// A name to tell it by (default: key-<id>).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the keys (id, name, created), never the keys themselves.
    #[command(alias = "list")]
    Ls,
    /// Revoke keys, by id or name.
    #[command(alias = "delete")]
    Rm {
        #[arg(required = true, value_name = "ID|NAME")]
        keys: Vec<String>,
    },
}

pub fn run(args: KeyArgs) -> anyhow::Result<u8> {
    let file = KeyFile::new(&args.file);
    match args.command {
        KeyCommand::Create { name } => {
            let name = name.unwrap_or_else(|| format!("key-{}", rand_suffix()));
            let (record, key) = file.create(&name)?;
            eprintln!(
                "created key {} ({}) in {}; it is shown only now",
                record.id,
                record.name,
                file.path().display()
            );
            println!("{key}");
            Ok(0)
        }
        KeyCommand::Ls => {
            let mut rows = vec![["ID", "NAME", "CREATED"].map(String::from).to_vec()];
            for k in file.load()? {
                rows.push(vec![
                    k.id,
                    k.name,
                    k.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                ]);
            }
            print!("{}", crate::table::columns(&rows));
            Ok(0)
        }
        KeyCommand::Rm { keys } => {
            let mut failed = false;
            for k in keys {
                match file.remove(&k) {
                    Ok(gone) => println!("{}", gone.id),
                    Err(e) => {
                        failed = true;
                        eprintln!("error: {e}");
                    }
                }
            }
            Ok(u8::from(failed))
        }
    }
}

fn rand_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{:06x}", nanos & 0xff_ffff)
}
