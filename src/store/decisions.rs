//! Decisions: append-only, one row per change of an example's decision, with provenance.

use sqlx::{Any, AnyConnection, AnyPool, Executor, FromRow};

#[derive(Debug, Clone)]
pub struct NewDecision<'a> {
    pub task_id: i64,
    pub example_id: i64,
    pub label: Option<i64>,
    pub source: &'a str,
    pub p_ik: Option<f64>,
    pub p_ik_source: &'a str,
    pub tau: Option<f64>,
    /// P(the label is right): P(IK) or the weak side's trust (for `abstain`: of the label it
    /// would have given).
    pub confidence: Option<f64>,
    pub probs: Option<&'a str>,
    pub weak: Option<&'a str>,
    pub refined: Option<&'a str>,
    pub model_version_id: Option<i64>,
    pub graph_version: i64,
    pub reason: &'a str,
    pub created_at: i64,
}

/// Inserts many decisions in multi-row statements; returns each one's id by example id
/// (a batch holds at most one decision per example).
pub async fn insert_many(
    conn: &mut AnyConnection,
    ds: &[NewDecision<'_>],
) -> Result<std::collections::HashMap<i64, i64>, sqlx::Error> {
    const ROWS: usize = 40;
    let mut ids = std::collections::HashMap::with_capacity(ds.len());
    for chunk in ds.chunks(ROWS) {
        let values: Vec<String> = (0..chunk.len())
            .map(|r| {
                let p = |k: usize| format!("${}", r * 18 + k);
                format!(
                    "({}, {}, {}, {}, CASE WHEN {} = 1 THEN {} END, {}, CASE WHEN {} = 1 THEN {} END, \
                     {}, {}, {}, {}, {}, {}, {}, CASE WHEN {} = 1 THEN {} END)",
                    p(1), p(2), p(3), p(4), p(5), p(6), p(7), p(8), p(9), p(10), p(11), p(12),
                    p(13), p(14), p(15), p(16), p(17), p(18)
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO decisions (task_id, example_id, label, source, p_ik, p_ik_source, tau, probs, \
                                    weak, refined, model_version_id, graph_version, reason, created_at, \
                                    confidence) VALUES {} RETURNING id, example_id",
            values.join(", ")
        );
        let mut q = sqlx::query_as::<_, (i64, i64)>(&sql);
        for d in chunk {
            let (has_p_ik, p_ik) = super::nullable_f64(d.p_ik);
            let (has_tau, tau) = super::nullable_f64(d.tau);
            let (has_confidence, confidence) = super::nullable_f64(d.confidence);
            q = q
                .bind(d.task_id)
                .bind(d.example_id)
                .bind(d.label)
                .bind(d.source)
                .bind(has_p_ik)
                .bind(p_ik)
                .bind(d.p_ik_source)
                .bind(has_tau)
                .bind(tau)
                .bind(d.probs)
                .bind(d.weak)
                .bind(d.refined)
                .bind(d.model_version_id)
                .bind(d.graph_version)
                .bind(d.reason)
                .bind(d.created_at)
                .bind(has_confidence)
                .bind(confidence);
        }
        for (id, example_id) in q.fetch_all(&mut *conn).await? {
            ids.insert(example_id, id);
        }
    }
    Ok(ids)
}

#[derive(Debug, Clone, FromRow)]
pub struct DecisionRow {
    pub id: i64,
    pub example_id: i64,
    pub external_id: String,
    pub label: Option<i64>,
    pub source: String,
    pub p_ik: Option<f64>,
    pub p_ik_source: String,
    pub tau: Option<f64>,
    pub confidence: Option<f64>,
    pub probs: Option<String>,
    pub weak: Option<String>,
    pub refined: Option<String>,
    pub model_version_id: Option<i64>,
    pub graph_version: i64,
    pub reason: String,
    pub created_at: i64,
    /// 1 when this is the example's current decision.
    pub current: i64,
}

const SELECT: &str = "SELECT d.id, d.example_id, e.external_id, d.label, d.source, d.p_ik, \
     d.p_ik_source, d.tau, d.confidence, d.probs, d.weak, d.refined, d.model_version_id, d.graph_version, \
     d.reason, d.created_at, CASE WHEN e.decision_id = d.id THEN 1 ELSE 0 END AS current \
     FROM decisions d JOIN examples e ON e.id = d.example_id";

pub async fn history<'c, E: Executor<'c, Database = Any>>(
    ex: E,
    example_id: i64,
    limit: i64,
) -> Result<Vec<DecisionRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT} WHERE d.example_id = $1 ORDER BY d.id DESC LIMIT $2"
    ))
    .bind(example_id)
    .bind(limit)
    .fetch_all(ex)
    .await
}

/// Filters of the decision export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub source: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub current_only: bool,
}

/// One page of the export in id order; the caller pages with the last id it saw, so a task
/// with millions of decisions is never held in memory.
pub async fn export_page(
    pool: &AnyPool,
    task_id: i64,
    after_id: i64,
    filter: &ExportFilter,
    limit: i64,
) -> Result<Vec<DecisionRow>, sqlx::Error> {
    let mut sql = format!("{SELECT} WHERE d.task_id = $1 AND d.id > $2");
    let mut n = 3;
    if filter.source.is_some() {
        sql.push_str(&format!(" AND d.source = ${n}"));
        n += 1;
    }
    if filter.since.is_some() {
        sql.push_str(&format!(" AND d.created_at >= ${n}"));
        n += 1;
    }
    if filter.until.is_some() {
        sql.push_str(&format!(" AND d.created_at < ${n}"));
        n += 1;
    }
    if filter.current_only {
        sql.push_str(" AND e.decision_id = d.id");
    }
    sql.push_str(&format!(" ORDER BY d.id LIMIT ${n}"));
    let mut q = sqlx::query_as(&sql).bind(task_id).bind(after_id);
    if let Some(source) = &filter.source {
        q = q.bind(source.clone());
    }
    if let Some(since) = filter.since {
        q = q.bind(since);
    }
    if let Some(until) = filter.until {
        q = q.bind(until);
    }
    q.bind(limit).fetch_all(pool).await
}

#[derive(Debug, Clone, FromRow)]
pub struct SourceCount {
    pub source: String,
    pub n: i64,
}

/// Current decisions of a task by source.
pub async fn current_counts(pool: &AnyPool, task_id: i64) -> Result<Vec<SourceCount>, sqlx::Error> {
    sqlx::query_as(
        "SELECT COALESCE(decision_source, 'undecided') AS source, COUNT(*) AS n FROM examples \
         WHERE task_id = $1 GROUP BY decision_source ORDER BY 1",
    )
    .bind(task_id)
    .fetch_all(pool)
    .await
}
