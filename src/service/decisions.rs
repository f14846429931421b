//! Reading decisions: the streamed export and the review queue.

use bytes::Bytes;
use futures::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::examples::{DecisionRecord, ExampleSummary};
use super::{Service, TaskCtx};
use crate::error::{Error, Result};
use crate::method::selection::DecisionSource;
use crate::store::decisions::{export_page, ExportFilter};
use crate::store::examples;

/// One line of the export.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportLine {
    pub decision_id: i64,
    /// The example's id.
    pub id: String,
    #[serde(flatten)]
    pub decision: DecisionRecord,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReviewItem {
    #[serde(flatten)]
    pub example: ExampleSummary,
    /// Why a human label would help here.
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReviewQueue {
    pub items: Vec<ReviewItem>,
}

const EXPORT_PAGE: i64 = 1000;

impl Service {
    /// The task's decisions as JSON lines, read a page at a time while the client consumes
    /// them (memory stays flat however many there are).
    pub async fn export_decisions(
        &self,
        task_name: &str,
        filter: ExportFilter,
    ) -> Result<impl Stream<Item = std::result::Result<Bytes, Error>> + Send + 'static> {
        let task = self.task(task_name).await?;
        if let Some(source) = &filter.source {
            if DecisionSource::parse(source).is_none() {
                return Err(Error::invalid(
                    "invalid_source",
                    format!("source {source:?} is not one of gold, strong, weak_refined, none"),
                ));
            }
        }
        let pool = self.store.pool().clone();
        Ok(stream::try_unfold(Some(0i64), move |state| {
            let pool = pool.clone();
            let filter = filter.clone();
            let task: TaskCtx = task.clone();
            async move {
                let Some(after) = state else { return Ok(None) };
                let rows = export_page(&pool, task.id, after, &filter, EXPORT_PAGE).await?;
                let Some(last) = rows.last().map(|r| r.id) else {
                    return Ok(None);
                };
                let next = (rows.len() as i64 == EXPORT_PAGE).then_some(last);
                let mut buf = Vec::with_capacity(rows.len() * 300);
                for row in &rows {
                    let line = ExportLine {
                        decision_id: row.id,
                        id: row.external_id.clone(),
                        decision: task.decision_record(row),
                    };
                    serde_json::to_writer(&mut buf, &line)
                        .map_err(|e| Error::Internal(e.into()))?;
                    buf.push(b'\n');
                }
                Ok(Some((Bytes::from(buf), next)))
            }
        }))
    }

    pub async fn review_queue(&self, task_name: &str, limit: Option<i64>) -> Result<ReviewQueue> {
        let task = self.task(task_name).await?;
        let limit = limit.unwrap_or(20);
        if !(1..=1000).contains(&limit) {
            return Err(Error::invalid("invalid_limit", "limit must be in 1..=1000"));
        }
        let rows = examples::review_candidates(self.store.pool(), task.id, limit).await?;
        let items = rows
            .iter()
            .map(|r| {
                let predicted = task.name_of(r.pred_label);
                let refined = task.name_of(r.refined_label);
                let p_ik = r.p_ik.map(|p| p as f32);
                let reason = match (&predicted, &refined, p_ik) {
                    (Some(p), Some(w), Some(q)) if p != w => format!(
                        "the strong model says {p:?} (P(IK) {q:.2}) but the refined weak label says {w:?}"
                    ),
                    _ if r.decision_source.as_deref().unwrap_or("none") == "none" => {
                        "no decision: no weak evidence reaches it and the strong model is not trusted".into()
                    }
                    (_, _, Some(q)) => format!("low P(IK) ({q:.2}): the strong model is unsure"),
                    _ => "no trained model yet; labels here seed the first one".into(),
                };
                ReviewItem { example: super::examples::summary(&task, r), reason }
            })
            .collect();
        Ok(ReviewQueue { items })
    }
}
