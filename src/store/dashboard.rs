//! The dashboard's aggregates, computed in SQL so pages stay fast on large tasks: label
//! shares by where the label comes from, and decisions over time by source.

use sqlx::{AnyPool, FromRow};

#[derive(Debug, Clone, FromRow)]
pub struct ShareRow {
    /// `weak`, `refined`, `decision` or `gold`.
    pub kind: String,
    pub label: i64,
    pub n: i64,
}

/// How many examples carry each label, per kind of label (examples without one are left out).
pub async fn label_shares(pool: &AnyPool, task_id: i64) -> Result<Vec<ShareRow>, sqlx::Error> {
    let one = |kind: &str, column: &str| {
        format!(
            "SELECT '{kind}' AS kind, {column} AS label, COUNT(*) AS n FROM examples \
             WHERE task_id = $1 AND {column} IS NOT NULL AND {column} >= 0 GROUP BY {column}"
        )
    };
    let sql = [
        one("weak", "weak_label"),
        one("refined", "refined_label"),
        one("decision", "decision_label"),
        one("gold", "gold_label"),
    ]
    .join(" UNION ALL ");
    sqlx::query_as(&sql).bind(task_id).fetch_all(pool).await
}

#[derive(Debug, Clone, FromRow)]
pub struct TimeRow {
    /// Start of the bucket (Unix ms).
    pub bucket: i64,
    pub source: String,
    pub n: i64,
}

/// The first and last decision times of a task.
pub async fn decision_span(
    pool: &AnyPool,
    task_id: i64,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let row: (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT MIN(created_at), MAX(created_at) FROM decisions WHERE task_id = $1")
            .bind(task_id)
            .fetch_one(pool)
            .await?;
    Ok(row.0.zip(row.1))
}

/// Decisions made per time bucket of `bucket_ms` and source, since `from`.
pub async fn decisions_over_time(
    pool: &AnyPool,
    task_id: i64,
    from: i64,
    bucket_ms: i64,
) -> Result<Vec<TimeRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT $2 + ((created_at - $2) / $3) * $3 AS bucket, source, COUNT(*) AS n \
         FROM decisions WHERE task_id = $1 AND created_at >= $2 \
         GROUP BY 1, source ORDER BY 1, source",
    )
    .bind(task_id)
    .bind(from)
    .bind(bucket_ms.max(1))
    .fetch_all(pool)
    .await
}
