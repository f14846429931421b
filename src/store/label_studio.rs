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
