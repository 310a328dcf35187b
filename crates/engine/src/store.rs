//! The embedded store: one SQLite database under the data directory.
//!
//! The engine keeps the live records in memory and writes every acknowledged change through
//! to SQLite before answering, so a crash never loses what a client was told.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection};
use warren_api::{IdleAction, PoolSpec, Resources, SandboxState, Snapshot, TimeoutAction};

use crate::EngineError;

mod rows;
use rows::{LifecycleRow, PoolSpecRow, ResourcesRow};

/// A sandbox as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub state: SandboxState,
    pub image: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub timeout_secs: u64,
    pub metadata: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub failure_reason: Option<String>,
    pub state_changed_at: DateTime<Utc>,
    pub lifecycle: Lifecycle,
    /// First host uid/gid of the sandbox's user namespace range (see `idmaps`); `None`
    /// without one.
    pub host_id: Option<u32>,
    /// Its network: mode, address (kept from create to removal) and egress policy.
    pub network: warren_runtime::NetworkSpec,
    /// Its broker credentials, sealed (see `broker`); `None` without any.
    pub credentials: Option<crate::broker::StoredCredentials>,
    /// Its volume and host directory mounts (validated, see `volumes`).
    pub volumes: Vec<warren_api::VolumeMount>,
}

/// A named volume as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    pub name: String,
    pub size_mib: Option<u64>,
    pub created_at: DateTime<Utc>,
}

/// A sandbox's lifecycle options (stored as one JSON column, see `rows::LifecycleRow`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lifecycle {
    /// The snapshot its files came from.
    pub snapshot: Option<String>,
    pub on_timeout: TimeoutAction,
    pub idle_timeout_secs: Option<u64>,
    pub on_idle: IdleAction,
    pub auto_resume: bool,
    /// The pool the sandbox was made for (see `pools`).
    pub pool: Option<String>,
    /// An unclaimed pool sandbox: not a user's, hidden from the API, never expires.
    pub pool_member: bool,
    /// What runs it.
    pub runtime: warren_runtime::RuntimeKind,
}

#[derive(Clone)]
pub struct Store {
    /// `None` once [`Store::close`]d: every later call is a `store_error`.
    conn: Arc<Mutex<Option<Connection>>>,
    /// Tests: make every write fail as on a full disk.
    #[cfg(test)]
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
    /// Tests: every write first blocks this long (a store that does not answer).
    #[cfg(test)]
    write_delay: Arc<Mutex<std::time::Duration>>,
}

/// The store's files: they hold sandbox `env` values, so only root may read them.
const DB_FILES: [&str; 4] = [
    "warren.db",
    "warren.db-wal",
    "warren.db-shm",
    "warren.db-journal",
];

/// The first schema (migration 1). `IF NOT EXISTS`: a store made before the schema was
/// versioned (user_version 0) already has these tables.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    id             TEXT PRIMARY KEY,
    state          TEXT NOT NULL,
    image          TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    timeout_secs   INTEGER NOT NULL,
    metadata       TEXT NOT NULL,
    env            TEXT NOT NULL,
    resources      TEXT NOT NULL,
    failure_reason TEXT
);
CREATE TABLE IF NOT EXISTS snapshots (
    id             TEXT PRIMARY KEY,
    sandbox_id     TEXT NOT NULL,
    name           TEXT,
    size_bytes     INTEGER NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    backend        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pools (
    name           TEXT PRIMARY KEY,
    spec           TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// One step of the schema, from the version before it to its own.
enum Migration {
    /// Statements to run.
    Sql(&'static str),
    /// A column of `sandboxes`. Added only where missing: a store from before the schema
    /// was versioned may have some of them already.
    SandboxesColumn(&'static str, &'static str),
}

/// The schema's history: the store's `PRAGMA user_version` is how many of these it has
/// had. Append only; never change a step that has shipped.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(SCHEMA_V1),
    Migration::SandboxesColumn("state_changed_at_ms", "INTEGER NOT NULL DEFAULT 0"),
    Migration::SandboxesColumn("lifecycle", "TEXT NOT NULL DEFAULT '{}'"),
    Migration::SandboxesColumn("host_id", "INTEGER"),
    // NULL: a sandbox from before networks (loopback only, i.e. isolated).
    Migration::SandboxesColumn("network", "TEXT"),
    // NULL: no broker credentials. Otherwise `StoredCredentials` as JSON: the values
    // sealed under the daemon's key, and their masked view.
    Migration::SandboxesColumn("credentials", "TEXT"),
    // The image a snapshot's files sit on (NULL: taken before it was recorded, i.e. host).
    Migration::Sql("ALTER TABLE snapshots ADD COLUMN image TEXT;"),
    // Named volumes, and each sandbox's mounts (NULL: none) as JSON.
    Migration::Sql(
        "CREATE TABLE IF NOT EXISTS volumes (
            name           TEXT PRIMARY KEY,
            size_mib       INTEGER,
            created_at_ms  INTEGER NOT NULL
        );",
    ),
    Migration::SandboxesColumn("volumes", "TEXT"),
];

/// Bring the store at `conn` to the newest schema, each step in one transaction with the
/// version it reaches. A store from a newer Warren (a version past ours) is refused: this
/// build would not know what its columns mean.
fn migrate(conn: &mut Connection) -> Result<(), EngineError> {
    let latest = MIGRATIONS.len();
    let version: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(store_err)?
        .try_into()
        .map_err(store_err)?;
    if version > latest {
        return Err(EngineError::Store(format!(
            "the store has schema version {version}, newer than this warren knows \
             ({latest}): it was written by a newer warren; run that one, or move the data \
             dir away"
        )));
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(store_err)?;
        match step {
            Migration::Sql(sql) => tx.execute_batch(sql).map_err(store_err)?,
            Migration::SandboxesColumn(col, def) => {
                let exists: bool = tx
                    .query_row(
                        "SELECT COUNT(*) FROM pragma_table_info('sandboxes') WHERE name = ?1",
                        [col],
                        |r| r.get::<_, i64>(0),
                    )
                    .map_err(store_err)?
                    > 0;
                if !exists {
                    tx.execute_batch(&format!("ALTER TABLE sandboxes ADD COLUMN {col} {def}"))
                        .map_err(store_err)?;
                }
            }
        }
        // PRAGMA takes no parameters; `i + 1` is a number we computed.
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
            .map_err(store_err)?;
        tx.commit().map_err(store_err)?;
    }
    Ok(())
}

fn store_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Store(e.to_string())
}

/// Make `dir` (and missing parents) with mode 0700; tighten an existing one to 0700.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Give `path` mode 0600: create it so when `create` (an empty file is an empty SQLite
/// database), tighten it when it exists (a store of an older version was 0644).
fn private_file(path: &Path, create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if meta.file_type().is_file() && meta.permissions().mode() & 0o7777 != 0o600 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map(drop)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The `credentials` column of `r`: JSON, or NULL without credentials.
fn credentials_column(r: &Record) -> Result<Option<String>, EngineError> {
    r.credentials
        .as_ref()
        .map(|c| serde_json::to_string(c).map_err(store_err))
        .transpose()
}

fn ms_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl Store {
    /// Open (or create) `<dir>/warren.db`. The directory is made (or made again) 0700 and
    /// the database files 0600 before SQLite opens them: SQLite gives the `-wal` and `-shm`
    /// files it creates the mode of the database file, so none is ever readable by other
    /// users, without a process-wide umask.
    pub fn open(dir: &Path) -> Result<Store, EngineError> {
        private_dir(dir).map_err(|e| store_err(format!("{}: {e}", dir.display())))?;
        for name in DB_FILES {
            let path = dir.join(name);
            private_file(&path, name == "warren.db")
                .map_err(|e| store_err(format!("{}: {e}", path.display())))?;
        }
        let mut conn = Connection::open(dir.join("warren.db")).map_err(store_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
        )
        .map_err(store_err)?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(Some(conn))),
            #[cfg(test)]
            fail_writes: Default::default(),
            #[cfg(test)]
            write_delay: Default::default(),
        })
    }

    /// Tests: from now on every write fails (`fail`) or works again.
    #[cfg(test)]
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }

    /// Run `f` on the connection in the blocking pool (SQLite calls block).
    async fn with<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn.lock().map_err(|_| store_err("store lock poisoned"))?;
            let conn = guard
                .as_ref()
                .ok_or_else(|| store_err("the store is closed"))?;
            f(conn).map_err(store_err)
        })
        .await
        .map_err(store_err)?
    }

    /// Tests: from now on every write blocks `d` first (in the blocking pool).
    #[cfg(test)]
    pub fn delay_writes(&self, d: std::time::Duration) {
        *self.write_delay.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    /// [`Store::with`] for a statement that writes.
    async fn write<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        #[cfg(test)]
        {
            if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(store_err("database or disk is full (injected)"));
            }
            let delay = *self.write_delay.lock().unwrap_or_else(|p| p.into_inner());
            if !delay.is_zero() {
                return self
                    .with(move |c| {
                        std::thread::sleep(delay);
                        f(c)
                    })
                    .await;
            }
        }
        self.with(f).await
    }

    /// Write the state, failure reason and expiry of the record `current` returns, read
    /// while the connection is held: a write queued after a newer change can never
    /// overwrite it with an older value. `Ok(false)` when `current` finds no record.
    pub async fn sync<F>(&self, current: F) -> Result<bool, EngineError>
    where
        F: FnOnce() -> Option<Record> + Send + 'static,
    {
        self.write(move |c| {
            let Some(r) = current() else {
                return Ok(false);
            };
            c.execute(
                "UPDATE sandboxes SET state = ?2, failure_reason = ?3, state_changed_at_ms = ?4,
                 expires_at_ms = ?5, timeout_secs = ?6 WHERE id = ?1",
                params![
                    r.id,
                    r.state.as_str(),
                    r.failure_reason,
                    r.state_changed_at.timestamp_millis(),
                    r.expires_at.timestamp_millis(),
                    r.timeout_secs as i64,
                ],
            )
            .map(|_| true)
        })
        .await
    }

    /// Checkpoint the WAL into the database and close the connection (SQLite then removes
    /// the `-wal` and `-shm` files). Later calls fail with `store_error`.
    pub async fn close(&self) -> Result<(), EngineError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| store_err("store lock poisoned"))?;
            let Some(c) = guard.take() else {
                return Ok(());
            };
            c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(store_err)?;
            c.close().map_err(|(_, e)| store_err(e))
        })
        .await
        .map_err(store_err)?
    }

    pub async fn insert(&self, r: &Record) -> Result<(), EngineError> {
        let r = r.clone();
        let metadata = serde_json::to_string(&r.metadata).map_err(store_err)?;
        let env = serde_json::to_string(&r.env).map_err(store_err)?;
        let resources =
            serde_json::to_string(&ResourcesRow::from(&r.resources)).map_err(store_err)?;
        let lifecycle =
            serde_json::to_string(&LifecycleRow::from(&r.lifecycle)).map_err(store_err)?;
        let network = serde_json::to_string(&r.network).map_err(store_err)?;
        let credentials = credentials_column(&r)?;
        let volumes = if r.volumes.is_empty() {
            None
        } else {
            Some(serde_json::to_string(&r.volumes).map_err(store_err)?)
        };
        self.write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO sandboxes (id, state, image, created_at_ms, expires_at_ms,
                 timeout_secs, metadata, env, resources, failure_reason, state_changed_at_ms,
                 lifecycle, host_id, network, credentials, volumes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                params![
                    r.id,
                    r.state.as_str(),
                    r.image,
                    r.created_at.timestamp_millis(),
                    r.expires_at.timestamp_millis(),
                    r.timeout_secs as i64,
                    metadata,
                    env,
                    resources,
                    r.failure_reason,
                    r.state_changed_at.timestamp_millis(),
                    lifecycle,
                    r.host_id.map(i64::from),
                    network,
                    credentials,
                    volumes,
                ],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn set_state(
        &self,
        id: &str,
        state: SandboxState,
        failure_reason: Option<String>,
    ) -> Result<(), EngineError> {
        let id = id.to_string();
        self.write(move |c| {
            c.execute(
                "UPDATE sandboxes SET state = ?2, failure_reason = ?3, state_changed_at_ms = ?4
                 WHERE id = ?1",
                params![
                    id,
                    state.as_str(),
                    failure_reason,
                    Utc::now().timestamp_millis()
                ],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn set_expiry(
        &self,
        id: &str,
        expires_at: DateTime<Utc>,
        timeout_secs: u64,
    ) -> Result<(), EngineError> {
        let id = id.to_string();
        self.write(move |c| {
            c.execute(
                "UPDATE sandboxes SET expires_at_ms = ?2, timeout_secs = ?3 WHERE id = ?1",
                params![id, expires_at.timestamp_millis(), timeout_secs as i64],
            )
            .map(|_| ())
        })
        .await
    }

    /// Record a claim: a pool sandbox becomes a user's (one write; no row is made if the
    /// sandbox was removed meanwhile).
    pub async fn update_claimed(&self, r: &Record) -> Result<(), EngineError> {
        let r = r.clone();
        let metadata = serde_json::to_string(&r.metadata).map_err(store_err)?;
        let env = serde_json::to_string(&r.env).map_err(store_err)?;
        let lifecycle =
            serde_json::to_string(&LifecycleRow::from(&r.lifecycle)).map_err(store_err)?;
        let credentials = credentials_column(&r)?;
        self.write(move |c| {
            c.execute(
                "UPDATE sandboxes SET created_at_ms = ?2, expires_at_ms = ?3, timeout_secs = ?4,
                 metadata = ?5, env = ?6, lifecycle = ?7, credentials = ?8 WHERE id = ?1",
                params![
                    r.id,
                    r.created_at.timestamp_millis(),
                    r.expires_at.timestamp_millis(),
                    r.timeout_secs as i64,
                    metadata,
                    env,
                    lifecycle,
                    credentials,
                ],
            )
            .map(|_| ())
        })
        .await
    }

    /// Record a sandbox's network (a new egress policy).
    pub async fn set_network(
        &self,
        id: &str,
        network: &warren_runtime::NetworkSpec,
    ) -> Result<(), EngineError> {
        let id = id.to_string();
        let network = serde_json::to_string(network).map_err(store_err)?;
        self.write(move |c| {
            c.execute(
                "UPDATE sandboxes SET network = ?2 WHERE id = ?1",
                params![id, network],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn set_metadata(
        &self,
        id: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let id = id.to_string();
        let metadata = serde_json::to_string(metadata).map_err(store_err)?;
        self.write(move |c| {
            c.execute(
                "UPDATE sandboxes SET metadata = ?2 WHERE id = ?1",
                params![id, metadata],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let id = id.to_string();
        self.write(move |c| {
            c.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])
                .map(|_| ())
        })
        .await
    }

    pub async fn load_all(&self) -> Result<Vec<Record>, EngineError> {
        let rows = self
            .with(|c| {
                let mut stmt = c.prepare(
                    "SELECT id, state, image, created_at_ms, expires_at_ms, timeout_secs,
                            metadata, env, resources, failure_reason, state_changed_at_ms,
                            lifecycle, host_id, network, credentials, volumes
                     FROM sandboxes ORDER BY created_at_ms",
                )?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, i64>(3)?,
                            row.get::<_, i64>(4)?,
                            row.get::<_, i64>(5)?,
                            row.get::<_, String>(6)?,
                            row.get::<_, String>(7)?,
                            row.get::<_, String>(8)?,
                            row.get::<_, Option<String>>(9)?,
                            row.get::<_, i64>(10)?,
                            row.get::<_, String>(11)?,
                            row.get::<_, Option<i64>>(12)?,
                            row.get::<_, Option<String>>(13)?,
                            row.get::<_, Option<String>>(14)?,
                            row.get::<_, Option<String>>(15)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(
                |(
                    id,
                    state,
                    image,
                    c,
                    e,
                    t,
                    m,
                    env,
                    res,
                    reason,
                    changed,
                    lc,
                    host,
                    net,
                    cred,
                    vols,
                )| {
                    // An unreadable column loses the credentials (logged), not the sandbox.
                    let credentials = cred.and_then(|c| {
                        serde_json::from_str(&c)
                            .inspect_err(|e| {
                                tracing::warn!(sandbox = %id, error = %e, "unreadable credentials")
                            })
                            .ok()
                    });
                    // Unreadable mounts fail the load: a sandbox must never start without
                    // the volumes it was made with.
                    let volumes = match vols {
                        None => Vec::new(),
                        Some(v) => serde_json::from_str(&v).map_err(|e| {
                            store_err(format!("sandbox {id}: bad volumes {v:?}: {e}"))
                        })?,
                    };
                    let network = match net {
                        None => warren_runtime::NetworkSpec::isolated(),
                        Some(n) => serde_json::from_str(&n).map_err(|e| {
                            store_err(format!("sandbox {id}: bad network {n:?}: {e}"))
                        })?,
                    };
                    Ok(Record {
                        state: SandboxState::parse(&state)
                            .ok_or_else(|| store_err(format!("sandbox {id}: bad state {state}")))?,
                        id,
                        image,
                        created_at: ms_to_time(c),
                        expires_at: ms_to_time(e),
                        timeout_secs: t.max(0) as u64,
                        metadata: serde_json::from_str(&m).map_err(store_err)?,
                        env: serde_json::from_str(&env).map_err(store_err)?,
                        resources: serde_json::from_str::<ResourcesRow>(&res)
                            .map_err(store_err)?
                            .into(),
                        failure_reason: reason,
                        state_changed_at: ms_to_time(changed),
                        // An unreadable options column must not lose the sandbox.
                        lifecycle: serde_json::from_str::<LifecycleRow>(&lc)
                            .unwrap_or_default()
                            .into(),
                        host_id: host.and_then(|h| u32::try_from(h).ok()),
                        network,
                        credentials,
                        volumes,
                    })
                },
            )
            .collect()
    }

    pub async fn insert_snapshot(&self, s: &Snapshot) -> Result<(), EngineError> {
        let s = s.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO snapshots (id, sandbox_id, name, size_bytes, created_at_ms, backend,
                 image)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    s.id,
                    s.sandbox_id,
                    s.name,
                    s.size_bytes as i64,
                    s.created_at.timestamp_millis(),
                    s.backend,
                    s.image
                ],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn remove_snapshot(&self, id: &str) -> Result<(), EngineError> {
        let id = id.to_string();
        self.write(move |c| {
            c.execute("DELETE FROM snapshots WHERE id = ?1", params![id])
                .map(|_| ())
        })
        .await
    }

    pub async fn load_snapshots(&self) -> Result<Vec<Snapshot>, EngineError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, sandbox_id, name, size_bytes, created_at_ms, backend, image
                 FROM snapshots ORDER BY created_at_ms, id",
            )?;
            let rows = stmt
                .query_map([], |row| {
                    Ok(Snapshot {
                        id: row.get(0)?,
                        sandbox_id: row.get(1)?,
                        name: row.get(2)?,
                        size_bytes: row.get::<_, i64>(3)?.max(0) as u64,
                        created_at: ms_to_time(row.get(4)?),
                        backend: row.get(5)?,
                        image: row.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Insert or replace a pool defined through the API.
    pub async fn put_pool(
        &self,
        name: &str,
        spec: &PoolSpec,
        created_at: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let name = name.to_string();
        let spec = serde_json::to_string(&PoolSpecRow::from(spec)).map_err(store_err)?;
        self.write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO pools (name, spec, created_at_ms) VALUES (?1, ?2, ?3)",
                params![name, spec, created_at.timestamp_millis()],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn remove_pool(&self, name: &str) -> Result<(), EngineError> {
        let name = name.to_string();
        self.write(move |c| {
            c.execute("DELETE FROM pools WHERE name = ?1", params![name])
                .map(|_| ())
        })
        .await
    }

    /// Every stored pool; one whose spec cannot be read is reported as an error string.
    #[allow(clippy::type_complexity)]
    pub async fn load_pools(
        &self,
    ) -> Result<Vec<(String, Result<PoolSpec, String>, DateTime<Utc>)>, EngineError> {
        let rows = self
            .with(|c| {
                let mut stmt =
                    c.prepare("SELECT name, spec, created_at_ms FROM pools ORDER BY name")?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(name, spec, at)| {
                let spec = serde_json::from_str::<PoolSpecRow>(&spec)
                    .map(PoolSpec::from)
                    .map_err(|e| e.to_string());
                (name, spec, ms_to_time(at))
            })
            .collect())
    }

    pub async fn put_volume(&self, v: &VolumeRow) -> Result<(), EngineError> {
        let v = v.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO volumes (name, size_mib, created_at_ms) VALUES (?1, ?2, ?3)",
                params![
                    v.name,
                    v.size_mib.map(|m| m as i64),
                    v.created_at.timestamp_millis()
                ],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let name = name.to_string();
        self.write(move |c| {
            c.execute("DELETE FROM volumes WHERE name = ?1", params![name])
                .map(|_| ())
        })
        .await
    }

    pub async fn load_volumes(&self) -> Result<Vec<VolumeRow>, EngineError> {
        let rows = self
            .with(|c| {
                let mut stmt =
                    c.prepare("SELECT name, size_mib, created_at_ms FROM volumes ORDER BY name")?;
                let rows = stmt
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, Option<i64>>(1)?,
                            row.get::<_, i64>(2)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(name, size, at)| VolumeRow {
                name,
                size_mib: size.and_then(|s| u64::try_from(s).ok()),
                created_at: ms_to_time(at),
            })
            .collect())
    }

    /// A persisted counter (`event_seq`), 0 when never written.
    pub async fn get_meta(&self, key: &'static str) -> Result<u64, EngineError> {
        use rusqlite::OptionalExtension;
        self.with(move |c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.unwrap_or(0).max(0) as u64)
        })
        .await
    }

    pub async fn set_meta(&self, key: &'static str, value: u64) -> Result<(), EngineError> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)",
                params![key, value as i64],
            )
            .map(|_| ())
        })
        .await
    }

    /// Used by tests to check persistence.
    #[cfg(test)]
    pub async fn get(&self, id: &str) -> Result<Option<String>, EngineError> {
        use rusqlite::OptionalExtension;
        let id = id.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT state FROM sandboxes WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Record {
        Record {
            id: id.into(),
            state: SandboxState::Creating,
            image: "host".into(),
            created_at: ms_to_time(1_700_000_000_000),
            expires_at: ms_to_time(1_700_000_300_000),
            timeout_secs: 300,
            metadata: [("team".to_string(), "a".to_string())].into(),
            env: [("K".to_string(), "v".to_string())].into(),
            resources: Resources {
                cpus: Some(0.5),
                memory_mib: Some(256),
                pids: Some(64),
                disk_mib: Some(2048),
            },
            failure_reason: None,
            state_changed_at: ms_to_time(1_700_000_000_000),
            lifecycle: Lifecycle {
                snapshot: Some("snap-1".into()),
                on_timeout: TimeoutAction::Pause,
                idle_timeout_secs: Some(30),
                on_idle: IdleAction::Stop,
                auto_resume: true,
                pool: Some("py".into()),
                pool_member: true,
                runtime: warren_runtime::RuntimeKind::Gvisor,
            },
            host_id: Some(1 << 30),
            network: warren_runtime::NetworkSpec {
                mode: warren_runtime::NetworkMode::Nat,
                address: Some(std::net::Ipv4Addr::new(10, 88, 0, 7)),
                egress: warren_runtime::EgressPolicy {
                    default: warren_runtime::EgressAction::Deny,
                    rules: vec![warren_runtime::EgressRule {
                        action: warren_runtime::EgressAction::Allow,
                        target: warren_runtime::Target::parse("*.pypi.org").unwrap(),
                    }],
                },
            },
            credentials: Some(crate::broker::StoredCredentials {
                sealed: "c2VhbGVk".into(),
                shown: vec![warren_api::SandboxCredential {
                    upstream: "https://api.example.com".into(),
                    header: "x-api-key".into(),
                    value: "sk-…(12 chars)".into(),
                    base_url_env: "X_BASE_URL".into(),
                    token_env: "X_API_KEY".into(),
                }],
            }),
            volumes: vec![warren_api::VolumeMount {
                name: Some("data".into()),
                host_path: None,
                path: "/data".into(),
                read_only: true,
                sub_path: Some("a/b".into()),
            }],
        }
    }

    /// A store from before the schema was versioned (user_version 0, some later columns
    /// already added) is brought to the newest version with its rows; one from a newer
    /// warren is refused and left as it is.
    #[tokio::test]
    async fn schema_versions_migrate_forward_and_refuse_newer() {
        let dir = std::env::temp_dir().join(format!("warren-store-mig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let c = Connection::open(dir.join("warren.db")).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute_batch(
                "ALTER TABLE sandboxes ADD COLUMN state_changed_at_ms INTEGER NOT NULL DEFAULT 0;
                 INSERT INTO sandboxes (id, state, image, created_at_ms, expires_at_ms,
                     timeout_secs, metadata, env, resources)
                 VALUES ('sb-old', 'running', 'host', 1, 2, 300, '{}', '{}', '{}');",
            )
            .unwrap();
        }
        let version = |dir: &Path| -> i64 {
            Connection::open(dir.join("warren.db"))
                .unwrap()
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap()
        };
        let s = Store::open(&dir).unwrap();
        let all = s.load_all().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].id.as_str(), all[0].host_id), ("sb-old", None));
        s.insert(&record("sb-new")).await.unwrap();
        drop(s);
        assert_eq!(version(&dir), MIGRATIONS.len() as i64);
        // Opening again changes nothing.
        assert_eq!(
            Store::open(&dir).unwrap().load_all().await.unwrap().len(),
            2
        );
        assert_eq!(version(&dir), MIGRATIONS.len() as i64);
        // A newer warren's store.
        Connection::open(dir.join("warren.db"))
            .unwrap()
            .execute_batch(&format!("PRAGMA user_version = {}", MIGRATIONS.len() + 1))
            .unwrap();
        let e = Store::open(&dir).err().expect("a newer schema is refused");
        assert!(e.to_string().contains("newer"), "{e}");
        assert_eq!(version(&dir), MIGRATIONS.len() as i64 + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn records_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("warren-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&dir).unwrap();
            s.insert(&record("sb-1")).await.unwrap();
            s.insert(&record("sb-2")).await.unwrap();
            s.set_state("sb-1", SandboxState::Failed, Some("boom".into()))
                .await
                .unwrap();
            s.set_expiry("sb-1", ms_to_time(1_800_000_000_000), 60)
                .await
                .unwrap();
            s.remove("sb-2").await.unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let all = s.load_all().await.unwrap();
        assert_eq!(all.len(), 1);
        let r = &all[0];
        assert_eq!(r.state, SandboxState::Failed);
        assert_eq!(r.failure_reason.as_deref(), Some("boom"));
        assert_eq!(r.timeout_secs, 60);
        assert_eq!(r.expires_at, ms_to_time(1_800_000_000_000));
        assert_eq!(r.metadata, record("x").metadata);
        assert_eq!(r.resources, record("x").resources);
        assert_eq!(r.lifecycle, record("x").lifecycle);
        assert_eq!(s.get("sb-2").await.unwrap(), None);
        // A claim rewrites the record in one update; a removed record is not resurrected.
        let mut claimed = r.clone();
        claimed.lifecycle.pool_member = false;
        claimed.env.insert("NEW".into(), "1".into());
        s.update_claimed(&claimed).await.unwrap();
        let mut ghost = record("sb-2");
        ghost.lifecycle.pool_member = false;
        s.update_claimed(&ghost).await.unwrap();
        let spec = PoolSpec {
            size: 3,
            ..Default::default()
        };
        s.put_pool("py", &spec, ms_to_time(1_700_000_000_000))
            .await
            .unwrap();
        s.put_pool("gone", &spec, ms_to_time(1)).await.unwrap();
        s.remove_pool("gone").await.unwrap();
        drop(s);
        let s = Store::open(&dir).unwrap();
        let all = s.load_all().await.unwrap();
        assert_eq!(all, vec![claimed]);
        let pools = s.load_pools().await.unwrap();
        assert_eq!(
            pools,
            vec![("py".to_string(), Ok(spec), ms_to_time(1_700_000_000_000))]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
