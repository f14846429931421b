//! Persistence through sqlx: SQLite (embedded default) and PostgreSQL behind one `Any` pool.
//!
//! The SQL is written once for both backends: `$n` placeholders (SQLite accepts them),
//! `BIGINT`-compatible integers, `ON CONFLICT` upserts and `RETURNING`. Only the migrations
//! differ (`migrations/sqlite`, `migrations/postgres`). Times are Unix milliseconds.

pub mod dashboard;
pub mod decisions;
pub mod examples;
pub mod jobs;
pub mod label_studio;
pub mod models;
pub mod tasks;
pub mod weak_labels;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer at a time; queueing writers here avoids `database is locked`.
    write_lock: Option<Arc<Mutex<()>>>,
}

/// A write transaction; on SQLite it also holds the process's writer slot.
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _guard: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// The advisory-lock key space of per-task write locks ("sw2s" in the high bytes), so other
/// users of advisory locks on the same database do not collide with ours.
const TASK_LOCK_SPACE: i64 = 0x7377_3273 << 32;

/// Whether a database error is a conflict between concurrent writers (deadlock,
/// serialisation failure, lock timeout, SQLite busy) that the same work can retry.
pub fn is_write_conflict(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else {
        return false;
    };
    match db.code().as_deref() {
        Some("40P01" | "40001" | "55P03") => true,
        // SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
        Some(code) => code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
        None => false,
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `$start, $start+1, …` for `n` values: the Any driver does not number placeholders itself.
pub fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Connects, creating the SQLite file (and its directory) if needed, and applies migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            bail!("unsupported database URL {url:?}: use sqlite://PATH or postgres://…");
        };
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_string(),
        };
        let options = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 8,
                Backend::Postgres => 16,
            })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
                        // WAL lets readers run beside the writer; FULL makes a commit durable
                        // before the request that made it is acknowledged.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 30000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            });
        let pool = options
            .connect(&url)
            .await
            .with_context(|| format!("connecting to the {} database", backend.name()))?;
        let store = Store {
            pool,
            backend,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
        };
        store.migrate().await?;
        let filled = weak_labels::backfill_votes(&store.pool)
            .await
            .context("filling the vote column of older weak labels")?;
        if filled > 0 {
            tracing::info!(weak_labels = filled, "older weak labels given their vote");
        }
        Ok(store)
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .context("applying database migrations")?;
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = match self.backend {
            // IMMEDIATE takes the write lock up front, so a reader never has to upgrade.
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx { tx, _guard: guard })
    }

    /// A write transaction over one task's examples. On PostgreSQL it first takes the task's
    /// transaction-scoped advisory lock: writers of one task then queue in one order instead
    /// of locking rows in request order and deadlocking each other (SQLite has one writer).
    /// Reads that a decision rests on belong inside it, so two writers never interleave.
    pub async fn begin_task_write(&self, task_id: i64) -> Result<WriteTx, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(TASK_LOCK_SPACE | task_id)
                .execute(tx.conn())
                .await?;
        }
        Ok(tx)
    }

    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn prepare_sqlite_url(url: &str) -> anyhow::Result<String> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        bail!(
            "an in-memory SQLite database cannot be shared between connections; give a file path"
        );
    }
    if let Some(parent) = Path::new(path).parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the database directory {}", parent.display()))?;
        }
    }
    // Validate early with the SQLite parser, then make sure the file is created on first start.
    sqlx::sqlite::SqliteConnectOptions::from_str(url).context("parsing the SQLite URL")?;
    Ok(if url.contains("mode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    })
}

/// Keyset paging in id order: the pages `fetch(after)` returns, starting after `start`, each
/// cursor the last row's `key`, until a page comes back empty. Every loop over a task's rows
/// reads through this.
pub fn keyset_pages<'a, T, F, Fut>(
    start: i64,
    key: fn(&T) -> i64,
    mut fetch: F,
) -> impl futures::Stream<Item = Result<Vec<T>, sqlx::Error>> + 'a
where
    T: 'a,
    F: FnMut(i64) -> Fut + 'a,
    Fut: std::future::Future<Output = Result<Vec<T>, sqlx::Error>> + 'a,
{
    futures::stream::try_unfold(Some(start), move |cursor| {
        let page = cursor.map(&mut fetch);
        async move {
            let Some(page) = page else { return Ok(None) };
            let rows = page.await?;
            match rows.last().map(key) {
                Some(last) => Ok(Some((rows, Some(last)))),
                None => Ok(None),
            }
        }
    })
}

/// A nullable float as two parameters, the flag then the value, bound one after the other
/// for SQL of the form `CASE WHEN $n = 1 THEN $n+1 END`. sqlx's `Any` driver sends a NULL
/// `f64` to PostgreSQL typed as `float4`; a statement prepared (and cached) that way then
/// rejects a real 8-byte value with "incorrect binary data format". Binding a float always
/// avoids it.
pub fn nullable_f64(v: Option<f64>) -> (i64, f64) {
    match v {
        Some(x) => (1, x),
        None => (0, 0.0),
    }
}

/// True when a database error is a unique-constraint violation (same on both backends).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .map(|e| e.is_unique_violation())
        .unwrap_or(false)
}

/// Embeddings are stored as little-endian f32 bytes.
pub fn f32s_to_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn bytes_to_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_from_start() {
        assert_eq!(placeholders(3, 3), "$3, $4, $5");
        assert_eq!(placeholders(1, 0), "");
    }

    #[test]
    fn embedding_bytes_round_trip() {
        let v = vec![0.0, -1.5, f32::MIN_POSITIVE, 3.25e7];
        assert_eq!(bytes_to_f32s(&f32s_to_bytes(&v)), v);
    }

    #[test]
    fn sqlite_url_gets_create_mode() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/x.db", dir.path().display());
        assert!(prepare_sqlite_url(&url).unwrap().ends_with("?mode=rwc"));
        assert!(dir.path().join("sub").is_dir());
        assert!(prepare_sqlite_url("sqlite::memory:").is_err());
    }
}
