//! Model versions: the heads (safetensors bytes) and manifest of each trained version live in
//! the database, so every process that shares it can serve any version.

use sqlx::{Any, AnyConnection, Executor, FromRow};

#[derive(Debug, Clone, FromRow)]
pub struct ModelVersionRow {
    pub id: i64,
    pub task_id: i64,
    pub version: i64,
    pub manifest: String,
    pub heads: Vec<u8>,
    pub encoder_path: Option<String>,
    pub job_id: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct ModelVersionSummary {
    pub id: i64,
    pub version: i64,
    pub manifest: String,
    pub job_id: Option<i64>,
    pub created_at: i64,
}

/// Inserts the next version number of the task (inside the caller's transaction).
pub async fn insert(
    conn: &mut AnyConnection,
    task_id: i64,
    manifest: &str,
    heads: &[u8],
    encoder_path: Option<&str>,
    job_id: Option<i64>,
    now: i64,
) -> Result<(i64, i64), sqlx::Error> {
    let version: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE task_id = $1",
    )
    .bind(task_id)
    .fetch_one(&mut *conn)
    .await?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO model_versions (task_id, version, manifest, heads, encoder_path, job_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(task_id)
    .bind(version)
    .bind(manifest)
    .bind(heads)
    .bind(encoder_path)
    .bind(job_id)
    .bind(now)
    .fetch_one(conn)
    .await?;
    Ok((id, version))
}

/// Records the fine-tuned encoder a version uses (relative to the data dir).
pub async fn set_encoder_path(
    conn: &mut AnyConnection,
    id: i64,
    path: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE model_versions SET encoder_path = $1 WHERE id = $2")
        .bind(path)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Fixes up the manifest once the version number is known.
pub async fn set_manifest(
    conn: &mut AnyConnection,
    id: i64,
    manifest: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE model_versions SET manifest = $1 WHERE id = $2")
        .bind(manifest)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn by_id<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    id: i64,
) -> Result<Option<ModelVersionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, task_id, version, manifest, heads, encoder_path, job_id, created_at \
         FROM model_versions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(ex)
    .await
}

pub async fn by_version<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    version: i64,
) -> Result<Option<ModelVersionSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, version, manifest, job_id, created_at FROM model_versions \
         WHERE task_id = $1 AND version = $2",
    )
    .bind(task_id)
    .bind(version)
    .fetch_optional(ex)
    .await
}

pub async fn list<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
) -> Result<Vec<ModelVersionSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, version, manifest, job_id, created_at FROM model_versions \
         WHERE task_id = $1 ORDER BY version DESC",
    )
    .bind(task_id)
    .fetch_all(ex)
    .await
}
