//! Fine-tuning jobs. The partial unique index `jobs_one_active_per_task` is the per-task lock;
//! claiming a queued job is a conditional UPDATE, so several processes can share the table.

use sqlx::{Any, AnyConnection, AnyPool, Executor, FromRow};

#[derive(Debug, Clone, FromRow)]
pub struct JobRow {
    pub id: i64,
    pub task_id: i64,
    pub mode: String,
    pub trigger_kind: String,
    pub state: String,
    pub params: String,
    pub progress: Option<String>,
    pub metrics: Option<String>,
    pub error: Option<String>,
    pub model_version_id: Option<i64>,
    pub retry_of: Option<i64>,
    pub owner: Option<String>,
    pub cancel_requested: i64,
    pub heartbeat_at: Option<i64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

const COLUMNS: &str = "id, task_id, mode, trigger_kind, state, params, progress, metrics, error, \
     model_version_id, retry_of, owner, cancel_requested, heartbeat_at, created_at, started_at, \
     finished_at";

/// Queues a job; fails with a unique violation when the task already has an active job.
pub async fn insert(
    conn: &mut AnyConnection,
    task_id: i64,
    mode: &str,
    trigger: &str,
    params: &str,
    retry_of: Option<i64>,
    now: i64,
) -> Result<JobRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO jobs (task_id, mode, trigger_kind, state, params, retry_of, created_at) \
         VALUES ($1, $2, $3, 'queued', $4, $5, $6) RETURNING {COLUMNS}"
    ))
    .bind(task_id)
    .bind(mode)
    .bind(trigger)
    .bind(params)
    .bind(retry_of)
    .bind(now)
    .fetch_one(conn)
    .await
}

pub async fn active_for_task<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE task_id = $1 AND state IN ('queued', 'running')"
    ))
    .bind(task_id)
    .fetch_optional(ex)
    .await
}

pub async fn by_id<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    id: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE task_id = $1 AND id = $2"
    ))
    .bind(task_id)
    .bind(id)
    .fetch_optional(ex)
    .await
}

pub async fn list<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs WHERE task_id = $1 ORDER BY id DESC LIMIT $2"
    ))
    .bind(task_id)
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn last_finished_at(pool: &AnyPool, task_id: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MAX(COALESCE(finished_at, created_at)) FROM jobs WHERE task_id = $1")
        .bind(task_id)
        .fetch_one(pool)
        .await
}

pub async fn last_created_at(pool: &AnyPool, task_id: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MAX(created_at) FROM jobs WHERE task_id = $1")
        .bind(task_id)
        .fetch_one(pool)
        .await
}

/// Claims the oldest queued job for `owner`. Two processes racing get different jobs or none:
/// the `state = 'queued'` condition is re-checked on the row the UPDATE locks.
pub async fn claim_next(
    pool: &AnyPool,
    owner: &str,
    now: i64,
) -> Result<Option<JobRow>, sqlx::Error> {
    let candidate: Option<i64> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1")
            .fetch_optional(pool)
            .await?;
    let Some(id) = candidate else {
        return Ok(None);
    };
    sqlx::query_as(&format!(
        "UPDATE jobs SET state = 'running', owner = $1, started_at = $2, heartbeat_at = $2 \
         WHERE id = $3 AND state = 'queued' RETURNING {COLUMNS}"
    ))
    .bind(owner)
    .bind(now)
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Records progress and returns whether a cancel was requested.
pub async fn heartbeat(
    pool: &AnyPool,
    id: i64,
    progress: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let cancel: Option<i64> = sqlx::query_scalar(
        "UPDATE jobs SET progress = $1, heartbeat_at = $2 WHERE id = $3 AND state = 'running' \
         RETURNING cancel_requested",
    )
    .bind(progress)
    .bind(now)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    // A job no longer running (reaped as dead) must stop too.
    Ok(cancel.map(|c| c != 0).unwrap_or(true))
}

/// How a job ended.
pub struct Finished<'a> {
    pub state: &'a str,
    /// The last progress, with its loss curve.
    pub progress: &'a str,
    pub metrics: Option<&'a str>,
    pub error: Option<&'a str>,
    pub model_version_id: Option<i64>,
}

pub async fn finish(
    conn: &mut AnyConnection,
    id: i64,
    f: Finished<'_>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET state = $1, metrics = $2, error = $3, model_version_id = $4, \
         finished_at = $5, heartbeat_at = $5, progress = $6 WHERE id = $7",
    )
    .bind(f.state)
    .bind(f.metrics)
    .bind(f.error)
    .bind(f.model_version_id)
    .bind(now)
    .bind(f.progress)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Cancels a queued job at once; asks a running one to stop at its next step.
pub async fn request_cancel(pool: &AnyPool, id: i64, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = $1, error = 'cancelled before it started' \
         WHERE id = $2 AND state = 'queued'",
    )
    .bind(now)
    .bind(id)
    .execute(pool)
    .await?;
    sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = $1 AND state = 'running'")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Marks running jobs whose owner stopped sending heartbeats as failed; returns their ids.
pub async fn reap_dead(
    pool: &AnyPool,
    stale_before: i64,
    now: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE jobs SET state = 'failed', finished_at = $1, \
                error = 'the process running this job stopped (crash or restart); re-run it with POST .../jobs/{job}/retry' \
         WHERE state = 'running' AND COALESCE(heartbeat_at, 0) < $2 RETURNING id",
    )
    .bind(now)
    .bind(stale_before)
    .fetch_all(pool)
    .await
}

/// Marks this process's own running jobs as failed (on start with a fresh owner id they are
/// orphans of a previous run of the same process).
pub async fn fail_owned_by(pool: &AnyPool, owner: &str, now: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'failed', finished_at = $1, error = 'interrupted by shutdown' \
         WHERE state = 'running' AND owner = $2",
    )
    .bind(now)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
