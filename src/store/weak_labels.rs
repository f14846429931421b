//! Weak labels: one per (example, source), the votes the source model reads, the per-source
//! aggregates of the live source summary, the task's class counts a tie leans to before its
//! first job, and filling the `vote` column of older rows.

use sqlx::{Any, AnyConnection, Executor, FromRow};

use super::examples::rows_by_ids;

#[derive(Debug, Clone, FromRow)]
pub struct WeakLabelRow {
    pub example_id: i64,
    pub source: String,
    pub label: Option<i64>,
    pub scores: String,
    pub confidence: f64,
    pub updated_at: i64,
}

/// The weak labels of a task's examples with ids in (`after_id`, `up_to`], in example order.
pub async fn weak_labels_between<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    after_id: i64,
    up_to: i64,
) -> Result<Vec<WeakLabelRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT w.example_id, w.source, w.label, w.scores, w.confidence, w.updated_at FROM weak_labels w \
         JOIN examples e ON e.id = w.example_id \
         WHERE e.task_id = $1 AND w.example_id > $2 AND w.example_id <= $3 \
         ORDER BY w.example_id, w.source",
    )
    .bind(task_id)
    .bind(after_id)
    .bind(up_to)
    .fetch_all(ex)
    .await
}

/// Per source and the label it favoured: how many votes, how many fell on gold examples and
/// how many of those were right, how many fell on examples another source labelled too
/// (overlaps) and how many where another source favoured a different label (conflicts).
#[derive(Debug, Clone, FromRow)]
pub struct SourceVoteRow {
    pub source: String,
    pub vote: Option<i64>,
    pub votes: i64,
    pub gold_votes: i64,
    pub gold_right: i64,
    pub overlaps: i64,
    pub conflicts: i64,
}

/// Everything the live source summary counts, in one pass over the task's weak labels: each
/// vote is read beside its example's vote count and lowest and highest vote, so "another
/// source labelled it" is a count above one and "another source disagrees" is a lowest or
/// highest vote unlike its own (a self-join per source pair cost twice as much at 100k).
pub async fn source_votes<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
) -> Result<Vec<SourceVoteRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT source, vote, COUNT(*) AS votes, COUNT(gold_label) AS gold_votes, \
            COUNT(CASE WHEN gold_label = vote THEN 1 END) AS gold_right, \
            COUNT(CASE WHEN n > 1 THEN 1 END) AS overlaps, \
            COUNT(CASE WHEN lo <> vote OR hi <> vote THEN 1 END) AS conflicts \
         FROM (SELECT w.source, w.vote, e.gold_label, \
                  COUNT(*) OVER (PARTITION BY w.example_id) AS n, \
                  MIN(w.vote) OVER (PARTITION BY w.example_id) AS lo, \
                  MAX(w.vote) OVER (PARTITION BY w.example_id) AS hi \
               FROM weak_labels w JOIN examples e ON e.id = w.example_id \
               WHERE e.task_id = $1) v \
         GROUP BY source, vote ORDER BY source, vote",
    )
    .bind(task_id)
    .fetch_all(ex)
    .await
}

/// Per label, the weak-label mass on it (`vote`: each example with weak labels counts once,
/// shared among its votes by their confidence, as the confidence-weighted mean shares it) and
/// how many gold labels are it (`gold`).
#[derive(Debug, Clone, FromRow)]
pub struct ClassCountRow {
    pub kind: String,
    pub label: i64,
    pub n: f64,
}

/// The class counts a tie in the weak mean leans to before the task's first job. Votes are
/// weighed per example, not per label sent, so a source that labels every example twice as
/// often as another, or examples that carry many votes, do not outweigh the rest.
pub async fn class_counts<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
) -> Result<Vec<ClassCountRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT 'vote' AS kind, vote AS label, \
            CAST(SUM(confidence / total) AS DOUBLE PRECISION) AS n \
         FROM (SELECT w.vote, w.confidence, \
                  SUM(w.confidence) OVER (PARTITION BY w.example_id) AS total \
               FROM weak_labels w JOIN examples e ON e.id = w.example_id \
               WHERE e.task_id = $1 AND w.vote >= 0) v \
         GROUP BY vote \
         UNION ALL SELECT 'gold' AS kind, gold_label AS label, \
            CAST(COUNT(*) AS DOUBLE PRECISION) AS n FROM examples \
         WHERE task_id = $1 AND gold_label IS NOT NULL GROUP BY gold_label",
    )
    .bind(task_id)
    .fetch_all(ex)
    .await
}

/// The label a stored score vector favours (the first of equal maxima; none if all zero).
fn favoured(scores: &[f32]) -> Option<i64> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in scores.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.filter(|&(_, v)| v > 0.0).map(|(i, _)| i as i64)
}

/// Weak labels stored before the `vote` column (soft ones) get their argmax, a page at a
/// time; returns how many were filled.
pub async fn backfill_votes(pool: &sqlx::AnyPool) -> Result<u64, sqlx::Error> {
    let mut filled = 0;
    loop {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, scores FROM weak_labels WHERE vote IS NULL ORDER BY id LIMIT 1000",
        )
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Ok(filled);
        }
        let mut tx = pool.begin().await?;
        for (id, scores) in &rows {
            let vote = serde_json::from_str::<Vec<f32>>(scores)
                .ok()
                .and_then(|s| favoured(&s))
                .unwrap_or(-1);
            sqlx::query("UPDATE weak_labels SET vote = $1 WHERE id = $2")
                .bind(vote)
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        filled += rows.len() as u64;
    }
}

/// A weak label as stored.
pub struct NewWeakLabel<'a> {
    pub source: &'a str,
    /// The hard label, when the source gave one.
    pub label: Option<i64>,
    /// The label it favours (its argmax; −1 for none).
    pub vote: i64,
    /// JSON array over the task's labels.
    pub scores: &'a str,
    pub confidence: f64,
}

/// One label per (example, source): a source that labels again replaces its earlier label,
/// so re-sending a batch is idempotent.
pub async fn upsert_weak_label(
    conn: &mut AnyConnection,
    example_id: i64,
    w: &NewWeakLabel<'_>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO weak_labels (example_id, source, label, vote, scores, confidence, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
         ON CONFLICT (example_id, source) DO UPDATE SET \
            label = excluded.label, vote = excluded.vote, scores = excluded.scores, \
            confidence = excluded.confidence, updated_at = excluded.updated_at",
    )
    .bind(example_id)
    .bind(w.source)
    .bind(w.label)
    .bind(w.vote)
    .bind(w.scores)
    .bind(w.confidence)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn weak_labels<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    example_ids: &[i64],
) -> Result<Vec<WeakLabelRow>, sqlx::Error> {
    rows_by_ids(
        ex,
        "SELECT example_id, source, label, scores, confidence, updated_at FROM weak_labels WHERE example_id",
        example_ids,
        "ORDER BY example_id, source",
    )
    .await
}
