//! Examples, their gold labels, embeddings, weak aggregates and the denormalised current state
//! (smoothed and refined labels, latest scores, current decision and its confidence) that the
//! API and the review queue read. Weak labels themselves are in `weak_labels`.

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Executor, FromRow};

use super::placeholders;

/// `{select} IN (ids…) {order}`, where `select` ends with the id column the list is for
/// (`SELECT … FROM … WHERE id`).
pub(super) async fn rows_by_ids<'c, E, T>(
    ex: E,
    select: &str,
    ids: &[i64],
    order: &str,
) -> Result<Vec<T>, sqlx::Error>
where
    E: Executor<'c, Database = Any>,
    T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
{
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let sql = format!("{select} IN ({}) {order}", placeholders(1, ids.len()));
    let mut q = sqlx::query_as::<_, T>(&sql);
    for id in ids {
        q = q.bind(*id);
    }
    q.fetch_all(ex).await
}

#[derive(Debug, Clone, FromRow)]
pub struct ExampleRow {
    pub id: i64,
    pub task_id: i64,
    pub external_id: String,
    pub text: String,
    pub gold_label: Option<i64>,
    pub gold_at: Option<i64>,
    /// How the example came to be gold-labelled (`GoldPicked`), where the client said.
    pub gold_picked: Option<String>,
    /// JSON array: the weak aggregate (the source model's posterior, or the mean).
    pub weak: Option<String>,
    pub encoder_id: Option<String>,
    /// JSON array: the graph's output for the weak aggregates.
    pub smoothed: Option<String>,
    /// JSON array: the refined weak label in force (`smoothed`, or `weak` when smoothing is
    /// bypassed for the task).
    pub refined: Option<String>,
    pub refined_label: Option<i64>,
    pub pred_label: Option<i64>,
    pub pred_probs: Option<String>,
    pub p_ik: Option<f64>,
    pub p_ik_source: Option<String>,
    pub scored_version_id: Option<i64>,
    pub decision_id: Option<i64>,
    pub decision_label: Option<i64>,
    pub decision_source: Option<String>,
    /// P(the current decision's label is right), and where it came from.
    pub confidence: Option<f64>,
    pub confidence_source: Option<String>,
    /// What an abstaining decision would have said.
    pub suggested_label: Option<i64>,
    pub dirty: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const COLUMNS: &str = "id, task_id, external_id, text, gold_label, gold_at, gold_picked, weak, encoder_id, \
     smoothed, refined, refined_label, pred_label, pred_probs, p_ik, p_ik_source, scored_version_id, \
     decision_id, decision_label, decision_source, confidence, confidence_source, suggested_label, \
     dirty, created_at, updated_at";

#[derive(Debug, Clone, FromRow)]
pub struct ExistingRow {
    pub id: i64,
    pub external_id: String,
    pub text: String,
}

/// The examples of `task_id` among `external_ids` that already exist.
pub async fn find_existing<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    external_ids: &[&str],
) -> Result<Vec<ExistingRow>, sqlx::Error> {
    rows_by_external_ids(ex, "id, external_id, text", task_id, external_ids).await
}

/// Full rows of the task's examples with these external ids (any order).
pub async fn by_external_ids<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    external_ids: &[&str],
) -> Result<Vec<ExampleRow>, sqlx::Error> {
    rows_by_external_ids(ex, COLUMNS, task_id, external_ids).await
}

/// `columns` of the task's examples with these external ids (any order).
async fn rows_by_external_ids<'c, E, T>(
    ex: E,
    columns: &str,
    task_id: i64,
    external_ids: &[&str],
) -> Result<Vec<T>, sqlx::Error>
where
    E: Executor<'c, Database = Any>,
    T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
{
    if external_ids.is_empty() {
        return Ok(vec![]);
    }
    let sql = format!(
        "SELECT {columns} FROM examples WHERE task_id = $1 AND external_id IN ({})",
        placeholders(2, external_ids.len())
    );
    let mut q = sqlx::query_as(&sql).bind(task_id);
    for id in external_ids {
        q = q.bind(*id);
    }
    q.fetch_all(ex).await
}

/// Inserts a new example; `None` when another writer inserted the same id first.
pub async fn insert(
    conn: &mut AnyConnection,
    task_id: i64,
    external_id: &str,
    text: &str,
    embedding: Option<&[u8]>,
    encoder_id: Option<&str>,
    now: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO examples (task_id, external_id, text, embedding, encoder_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6) \
         ON CONFLICT (task_id, external_id) DO NOTHING RETURNING id",
    )
    .bind(task_id)
    .bind(external_id)
    .bind(text)
    .bind(embedding)
    .bind(encoder_id)
    .bind(now)
    .fetch_optional(conn)
    .await
}

/// The stored weak aggregates of a page of examples (all of them, embedded or not).
pub async fn weak_page<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    after_id: i64,
    limit: i64,
) -> Result<Vec<(i64, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, weak FROM examples WHERE task_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(task_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// Stores the weak aggregate (and its argmax, which label shares count) and marks the example
/// for a new decision.
pub async fn set_weak_aggregate(
    conn: &mut AnyConnection,
    id: i64,
    weak: Option<&str>,
    weak_label: Option<i64>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE examples SET weak = $1, weak_label = $2, dirty = 1, updated_at = $3 WHERE id = $4",
    )
    .bind(weak)
    .bind(weak_label)
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_gold(
    conn: &mut AnyConnection,
    id: i64,
    label: i64,
    picked: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE examples SET gold_label = $1, gold_at = $2, gold_picked = $3, dirty = 1, updated_at = $2 WHERE id = $4",
    )
    .bind(label)
    .bind(now)
    .bind(picked)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Withdraws the gold label (an annotation deleted in an annotation tool).
pub async fn clear_gold(conn: &mut AnyConnection, id: i64, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE examples SET gold_label = NULL, gold_at = NULL, gold_picked = NULL, dirty = 1, updated_at = $1 WHERE id = $2",
    )
    .bind(now)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gold labels set after `since` (Unix ms): the "job after N new gold labels" trigger.
pub async fn gold_since(
    pool: &sqlx::AnyPool,
    task_id: i64,
    since: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM examples WHERE task_id = $1 AND gold_label IS NOT NULL AND gold_at > $2",
    )
    .bind(task_id)
    .bind(since)
    .fetch_one(pool)
    .await
}

pub async fn by_external_id<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    external_id: &str,
) -> Result<Option<ExampleRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM examples WHERE task_id = $1 AND external_id = $2"
    ))
    .bind(task_id)
    .bind(external_id)
    .fetch_optional(ex)
    .await
}

pub async fn by_ids<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    ids: &[i64],
) -> Result<Vec<ExampleRow>, sqlx::Error> {
    rows_by_ids(
        ex,
        &format!("SELECT {COLUMNS} FROM examples WHERE id"),
        ids,
        "ORDER BY id",
    )
    .await
}

/// Keyset paging in insertion order.
pub async fn page<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    after_id: i64,
    limit: i64,
) -> Result<Vec<ExampleRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM examples WHERE task_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(task_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(ex)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct EmbeddingRow {
    pub id: i64,
    pub embedding: Vec<u8>,
}

/// Stored embeddings in id order, a page at a time (index rebuilds, head training).
pub async fn embeddings_page<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    after_id: i64,
    limit: i64,
) -> Result<Vec<EmbeddingRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, embedding FROM examples \
         WHERE task_id = $1 AND id > $2 AND embedding IS NOT NULL ORDER BY id LIMIT $3",
    )
    .bind(task_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn embeddings_of<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    ids: &[i64],
) -> Result<Vec<EmbeddingRow>, sqlx::Error> {
    rows_by_ids(
        ex,
        "SELECT id, embedding FROM examples WHERE embedding IS NOT NULL AND id",
        ids,
        "ORDER BY id",
    )
    .await
}

pub async fn set_embedding(
    conn: &mut AnyConnection,
    id: i64,
    embedding: &[u8],
    encoder_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE examples SET embedding = $1, encoder_id = $2, dirty = 1 WHERE id = $3")
        .bind(embedding)
        .bind(encoder_id)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores the graph's output; marks the examples for a new decision.
pub async fn set_smoothed(
    conn: &mut AnyConnection,
    updates: &[(i64, String)],
) -> Result<(), sqlx::Error> {
    // Multi-row updates: one statement per 200 examples instead of one per example.
    for chunk in updates.chunks(200) {
        let values: Vec<String> = (0..chunk.len())
            .map(|r| format!("(${}, ${})", 2 * r + 1, 2 * r + 2))
            .collect();
        let sql = format!(
            "WITH v (id, smoothed) AS (VALUES {}) \
             UPDATE examples SET smoothed = v.smoothed, dirty = 1 FROM v WHERE examples.id = v.id",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for (id, smoothed) in chunk {
            q = q.bind(*id).bind(smoothed.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The strong model's latest view of an example, and the weak side and confidence the
/// current decision rests on.
pub struct Scores<'a> {
    pub pred_label: Option<i64>,
    pub pred_probs: Option<&'a str>,
    pub p_ik: Option<f64>,
    pub p_ik_source: &'a str,
    pub version_id: Option<i64>,
    /// The refined weak label in force (JSON) and its argmax.
    pub refined: Option<&'a str>,
    pub refined_label: Option<i64>,
    pub confidence: Option<f64>,
    pub confidence_source: &'a str,
    pub suggested_label: Option<i64>,
}

/// One example's current scores and (when it changed) its new decision: (id, label, source).
pub struct CurrentUpdate<'a> {
    pub id: i64,
    pub scores: Scores<'a>,
    pub decision: Option<(i64, Option<i64>, &'a str)>,
}

/// `set_current` for many examples in multi-row updates (the same columns, the same rules).
pub async fn set_current_many(
    conn: &mut AnyConnection,
    updates: &[CurrentUpdate<'_>],
) -> Result<(), sqlx::Error> {
    const ROWS: usize = 40;
    const COLS: usize = 17;
    for chunk in updates.chunks(ROWS) {
        let values: Vec<String> = (0..chunk.len())
            .map(|r| {
                let cells: Vec<String> = (1..=COLS).map(|k| format!("${}", r * COLS + k)).collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        let sql = format!(
            "WITH v (id, pred_label, pred_probs, has_p_ik, p_ik, p_ik_source, version_id, \
                     has_decision, decision_id, decision_label, decision_source, refined, \
                     refined_label, has_confidence, confidence, confidence_source, suggested_label) \
             AS (VALUES {}) \
             UPDATE examples SET pred_label = v.pred_label, pred_probs = v.pred_probs, \
                p_ik = CASE WHEN v.has_p_ik = 1 THEN v.p_ik END, p_ik_source = v.p_ik_source, \
                scored_version_id = v.version_id, dirty = 0, \
                decision_id = CASE WHEN v.has_decision = 1 THEN v.decision_id ELSE examples.decision_id END, \
                decision_label = CASE WHEN v.has_decision = 1 THEN v.decision_label ELSE examples.decision_label END, \
                decision_source = CASE WHEN v.has_decision = 1 THEN v.decision_source ELSE examples.decision_source END, \
                refined = v.refined, refined_label = v.refined_label, \
                confidence = CASE WHEN v.has_confidence = 1 THEN v.confidence END, \
                confidence_source = v.confidence_source, suggested_label = v.suggested_label \
             FROM v WHERE examples.id = v.id",
            values.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for u in chunk {
            let s = &u.scores;
            let (has_p_ik, p_ik) = super::nullable_f64(s.p_ik);
            let (has_confidence, confidence) = super::nullable_f64(s.confidence);
            let (has_decision, (decision_id, label, source)) = match u.decision {
                Some(d) => (1i64, d),
                None => (0, (0, None, "")),
            };
            q = q
                .bind(u.id)
                .bind(s.pred_label)
                .bind(s.pred_probs)
                .bind(has_p_ik)
                .bind(p_ik)
                .bind(s.p_ik_source)
                .bind(s.version_id)
                .bind(has_decision)
                .bind(decision_id)
                .bind(label)
                .bind(source)
                .bind(s.refined)
                .bind(s.refined_label)
                .bind(has_confidence)
                .bind(confidence)
                .bind(s.confidence_source)
                .bind(s.suggested_label);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Examples whose inputs changed since their last decision (crash recovery, other processes).
/// Dirty examples last written before `before_ms` (the sweep leaves fresh writes to the
/// requests that made them, which settle them before answering).
pub async fn dirty_ids<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    after_id: i64,
    limit: i64,
    before_ms: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM examples WHERE task_id = $1 AND dirty = 1 AND id > $2 AND updated_at < $4 ORDER BY id LIMIT $3",
    )
    .bind(task_id)
    .bind(after_id)
    .bind(limit)
    .bind(before_ms)
    .fetch_all(ex)
    .await
}

/// All example ids of a task after `after_id`, in order (re-scoring, exports).
pub async fn ids_page<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    after_id: i64,
    limit: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM examples WHERE task_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(task_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(ex)
    .await
}

#[derive(Debug, Clone, FromRow)]
pub struct TextRow {
    pub id: i64,
    pub text: String,
}

pub async fn texts_page<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    after_id: i64,
    limit: i64,
) -> Result<Vec<TextRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, text FROM examples WHERE task_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(task_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// Examples without gold labels, the ones a human label would help most first: abstained
/// decisions, then strong and refined-weak disagreeing, then no decision, each by lowest
/// confidence.
pub async fn review_candidates<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    limit: i64,
) -> Result<Vec<ExampleRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM examples WHERE task_id = $1 AND gold_label IS NULL \
         ORDER BY CASE WHEN decision_source = 'abstain' THEN 0 \
                       WHEN pred_label IS NOT NULL AND refined_label IS NOT NULL \
                            AND refined_label <> pred_label THEN 1 \
                       WHEN decision_source IS NULL OR decision_source = 'none' THEN 2 \
                       ELSE 3 END, \
                  COALESCE(confidence, p_ik, 0.0), id \
         LIMIT $2"
    ))
    .bind(task_id)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// The ids of a task's examples without gold labels (the review queue's fair sample draws
/// from them).
pub async fn unlabelled_ids<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM examples WHERE task_id = $1 AND gold_label IS NULL")
        .bind(task_id)
        .fetch_all(ex)
        .await
}

/// What the graph needs of an example.
#[derive(Debug, Clone, FromRow)]
pub struct GraphRow {
    pub id: i64,
    pub embedding: Option<Vec<u8>>,
    pub encoder_id: Option<String>,
    pub weak: Option<String>,
    pub smoothed: Option<String>,
}

/// A page of graph rows in id order; embeddings only when `with_embeddings`.
pub async fn graph_rows_page<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    after_id: i64,
    limit: i64,
    with_embeddings: bool,
    settled_only: bool,
) -> Result<Vec<GraphRow>, sqlx::Error> {
    let embedding = if with_embeddings {
        "embedding"
    } else {
        "NULL AS embedding"
    };
    let settled = if settled_only { " AND dirty = 0" } else { "" };
    sqlx::query_as(&format!(
        "SELECT id, {embedding}, encoder_id, weak, smoothed FROM examples \
         WHERE task_id = $1 AND id > $2 AND embedding IS NOT NULL{settled} ORDER BY id LIMIT $3"
    ))
    .bind(task_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// How many examples of the task carry an embedding from `encoder_id`: what its graph
/// should hold.
pub async fn embedded_count(
    pool: &sqlx::AnyPool,
    task_id: i64,
    encoder_id: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM examples WHERE task_id = $1 AND encoder_id = $2 AND embedding IS NOT NULL",
    )
    .bind(task_id)
    .bind(encoder_id)
    .fetch_one(pool)
    .await
}

/// A page of the ids of the task's examples embedded by `encoder_id`, in id order.
pub async fn embedded_ids_page(
    pool: &sqlx::AnyPool,
    task_id: i64,
    encoder_id: &str,
    after_id: i64,
    limit: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM examples WHERE task_id = $1 AND encoder_id = $2 AND embedding IS NOT NULL \
         AND id > $3 ORDER BY id LIMIT $4",
    )
    .bind(task_id)
    .bind(encoder_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn graph_rows_of<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    ids: &[i64],
) -> Result<Vec<GraphRow>, sqlx::Error> {
    rows_by_ids(
        ex,
        "SELECT id, embedding, encoder_id, weak, smoothed FROM examples WHERE id",
        ids,
        "ORDER BY id",
    )
    .await
}

/// Tasks with examples awaiting a decision.
pub async fn tasks_with_dirty(
    pool: &sqlx::AnyPool,
    before_ms: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT task_id FROM examples WHERE dirty = 1 AND updated_at < $1")
        .bind(before_ms)
        .fetch_all(pool)
        .await
}

/// What a training job reads of an example.
#[derive(Debug, Clone, FromRow)]
pub struct TrainingRow {
    pub id: i64,
    pub embedding: Option<Vec<u8>>,
    pub encoder_id: Option<String>,
    pub gold_label: Option<i64>,
    pub gold_picked: Option<String>,
    pub weak: Option<String>,
    pub smoothed: Option<String>,
    pub refined: Option<String>,
    pub decision_label: Option<i64>,
    pub decision_source: Option<String>,
    pub confidence: Option<f64>,
}

pub async fn training_rows_page<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    task_id: i64,
    after_id: i64,
    limit: i64,
) -> Result<Vec<TrainingRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, embedding, encoder_id, gold_label, gold_picked, weak, smoothed, refined, decision_label, decision_source, confidence \
         FROM examples WHERE task_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(task_id)
    .bind(after_id)
    .bind(limit)
    .fetch_all(ex)
    .await
}

pub async fn texts_of<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    ids: &[i64],
) -> Result<Vec<TextRow>, sqlx::Error> {
    rows_by_ids(
        ex,
        "SELECT id, text FROM examples WHERE id",
        ids,
        "ORDER BY id",
    )
    .await
}

/// Marks every example of a task for a new decision (a new active version).
pub async fn mark_task_dirty(conn: &mut AnyConnection, task_id: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE examples SET dirty = 1 WHERE task_id = $1")
        .bind(task_id)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

pub async fn dirty_count(pool: &sqlx::AnyPool, task_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM examples WHERE task_id = $1 AND dirty = 1")
        .bind(task_id)
        .fetch_one(pool)
        .await
}
