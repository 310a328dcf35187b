//! The embedded store: one SQLite database under the data directory.
//!
//! The engine keeps the live records in memory and writes every acknowledged change through
//! to SQLite before answering, so a crash never loses what a client was told.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection};
use warren_api::{Resources, SandboxState};

use crate::EngineError;

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
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
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
";

fn store_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Store(e.to_string())
}

fn ms_to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl Store {
    /// Open (or create) `<dir>/warren.db`.
    pub fn open(dir: &Path) -> Result<Store, EngineError> {
        std::fs::create_dir_all(dir).map_err(store_err)?;
        let conn = Connection::open(dir.join("warren.db")).map_err(store_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
        )
        .map_err(store_err)?;
        conn.execute_batch(SCHEMA).map_err(store_err)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
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
            f(&guard).map_err(store_err)
        })
        .await
        .map_err(store_err)?
    }

    pub async fn insert(&self, r: &Record) -> Result<(), EngineError> {
        let r = r.clone();
        let metadata = serde_json::to_string(&r.metadata).map_err(store_err)?;
        let env = serde_json::to_string(&r.env).map_err(store_err)?;
        let resources = serde_json::to_string(&r.resources).map_err(store_err)?;
        self.with(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO sandboxes (id, state, image, created_at_ms, expires_at_ms,
                 timeout_secs, metadata, env, resources, failure_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
        self.with(move |c| {
            c.execute(
                "UPDATE sandboxes SET state = ?2, failure_reason = ?3 WHERE id = ?1",
                params![id, state.as_str(), failure_reason],
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
        self.with(move |c| {
            c.execute(
                "UPDATE sandboxes SET expires_at_ms = ?2, timeout_secs = ?3 WHERE id = ?1",
                params![id, expires_at.timestamp_millis(), timeout_secs as i64],
            )
            .map(|_| ())
        })
        .await
    }

    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let id = id.to_string();
        self.with(move |c| {
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
                            metadata, env, resources, failure_reason
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
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|(id, state, image, c, e, t, m, env, res, reason)| {
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
                    resources: serde_json::from_str(&res).map_err(store_err)?,
                    failure_reason: reason,
                })
            })
            .collect()
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
            },
            failure_reason: None,
        }
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
        assert_eq!(s.get("sb-2").await.unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
