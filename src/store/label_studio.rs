//! Label Studio projects connected to a task (what `/ls/{task}/setup` learned).

use sqlx::{Any, AnyConnection, Executor};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProjectRow {
    pub task_id: i64,
    pub project: String,
    pub from_name: String,
    pub to_name: String,
    pub text_field: String,
    pub label_config: String,
    pub updated_at: i64,
}

pub async fn upsert(conn: &mut AnyConnection, row: &ProjectRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO label_studio_projects \
         (task_id, project, from_name, to_name, text_field, label_config, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (task_id, project) DO UPDATE SET from_name = excluded.from_name, \
         to_name = excluded.to_name, text_field = excluded.text_field, \
         label_config = excluded.label_config, updated_at = excluded.updated_at",
    )
    .bind(row.task_id)
    .bind(&row.project)
    .bind(&row.from_name)
    .bind(&row.to_name)
    .bind(&row.text_field)
    .bind(&row.label_config)
    .bind(row.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    project: &str,
) -> Result<Option<ProjectRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT task_id, project, from_name, to_name, text_field, label_config, updated_at \
         FROM label_studio_projects WHERE task_id = $1 AND project = $2",
    )
    .bind(task_id)
    .bind(project)
    .fetch_optional(ex)
    .await
}

/// Remembers which example (and label) a Label Studio annotation set.
pub async fn upsert_annotation(
    conn: &mut AnyConnection,
    task_id: i64,
    annotation_id: i64,
    example_id: &str,
    label: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO label_studio_annotations (task_id, annotation_id, example_id, label, updated_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (task_id, annotation_id) DO UPDATE SET example_id = excluded.example_id, \
         label = excluded.label, updated_at = excluded.updated_at",
    )
    .bind(task_id)
    .bind(annotation_id)
    .bind(example_id)
    .bind(label)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets a deleted annotation; answers the example it had labelled, if it was known.
pub async fn remove_annotation(
    conn: &mut AnyConnection,
    task_id: i64,
    annotation_id: i64,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "DELETE FROM label_studio_annotations WHERE task_id = $1 AND annotation_id = $2 \
         RETURNING example_id",
    )
    .bind(task_id)
    .bind(annotation_id)
    .fetch_optional(conn)
    .await
}

/// The label of the example's most recent remaining annotation.
pub async fn latest_label<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    example_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT label FROM label_studio_annotations WHERE task_id = $1 AND example_id = $2 \
         ORDER BY updated_at DESC, annotation_id DESC LIMIT 1",
    )
    .bind(task_id)
    .bind(example_id)
    .fetch_optional(ex)
    .await
}
