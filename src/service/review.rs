//! The review queue: the examples a human label would help most, with the reason.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::examples::ExampleSummary;
use super::Service;
use crate::error::{Error, Result};
use crate::store::examples;

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

impl Service {
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
