//! Tasks: a name, a label set and per-task settings.

use sqlx::{AnyConnection, AnyPool, FromRow};

#[derive(Debug, Clone, FromRow)]
pub struct TaskRow {
    pub id: i64,
    pub name: String,
    /// JSON array of label names.
    pub labels: String,
    /// JSON object of settings (see `service::settings::TaskSettings`).
    pub settings: String,
    pub active_version_id: Option<i64>,
    pub graph_version: i64,
    pub examples_since_job: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, name, labels, settings, active_version_id, graph_version, \
                       examples_since_job, created_at, updated_at";

pub async fn insert(
    conn: &mut AnyConnection,
    name: &str,
    labels: &str,
    settings: &str,
    now: i64,
) -> Result<TaskRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO tasks (name, labels, settings, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) RETURNING {COLUMNS}"
    ))
    .bind(name)
    .bind(labels)
    .bind(settings)
    .bind(now)
    .fetch_one(conn)
    .await
}

pub async fn by_name(pool: &AnyPool, name: &str) -> Result<Option<TaskRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM tasks WHERE name = $1"))
        .bind(name)
        .fetch_optional(pool)
        .await
}

pub async fn by_id(pool: &AnyPool, id: i64) -> Result<Option<TaskRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn list(pool: &AnyPool) -> Result<Vec<TaskRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM tasks ORDER BY name"))
        .fetch_all(pool)
        .await
}

pub async fn delete(conn: &mut AnyConnection, id: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM tasks WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn update_settings(
    conn: &mut AnyConnection,
    id: i64,
    settings: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tasks SET settings = $1, updated_at = $2 WHERE id = $3")
        .bind(settings)
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Counts new examples towards the "job after N new examples" trigger.
pub async fn add_new_examples(
    conn: &mut AnyConnection,
    id: i64,
    n: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tasks SET examples_since_job = examples_since_job + $1 WHERE id = $2")
        .bind(n)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_active_version(
    conn: &mut AnyConnection,
    id: i64,
    version_id: Option<i64>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tasks SET active_version_id = $1, updated_at = $2 WHERE id = $3")
        .bind(version_id)
        .bind(now)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Bumps and returns the task's graph version (one per smoothing update).
pub async fn bump_graph_version(conn: &mut AnyConnection, id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE tasks SET graph_version = graph_version + 1 WHERE id = $1 RETURNING graph_version",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

pub async fn reset_examples_since_job(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tasks SET examples_since_job = 0 WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct TaskCounts {
    pub examples: i64,
    pub gold: i64,
    pub embedded: i64,
    /// Examples waiting for a new decision (their inputs changed).
    pub pending: i64,
}

pub async fn counts(pool: &AnyPool, id: i64) -> Result<TaskCounts, sqlx::Error> {
    sqlx::query_as(
        "SELECT COUNT(*) AS examples, \
                COUNT(gold_label) AS gold, \
                COUNT(embedding) AS embedded, \
                COUNT(CASE WHEN dirty = 1 THEN 1 END) AS pending \
         FROM examples WHERE task_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
}

pub async fn graph_version<'c, E: sqlx::Executor<'c, Database = sqlx::Any>>(
    ex: E,
    id: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT graph_version FROM tasks WHERE id = $1")
        .bind(id)
        .fetch_one(ex)
        .await
}
