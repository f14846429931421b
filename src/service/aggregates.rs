//! Weak aggregates follow the active version's source model: when a version with another
//! source model becomes active, every example's aggregate is recomputed from its stored
//! weak labels and the changed ones are written (marking them for a new decision); the
//! task's in-memory graph is dropped so that its next load reconciles the new aggregates in
//! one full pass.

use std::collections::HashMap;

use super::ingest::aggregate_of;
use super::{dist_json, parse_dist, Service, TaskCtx};
use crate::error::Result;
use crate::store::examples;
use crate::store::now_ms;

const PAGE: i64 = 2000;

impl Service {
    /// Recomputes every weak aggregate of the task under its active version; returns how
    /// many changed.
    pub async fn refresh_aggregates(&self, task: &TaskCtx) -> Result<usize> {
        let task = self
            .task_by_id(task.id)
            .await?
            .unwrap_or_else(|| task.clone());
        let version = self.active_version(&task).await?;
        let pipeline = version.as_ref().and_then(|v| v.pipeline.as_ref());
        let mut after = 0;
        let mut changed = 0;
        loop {
            let rows = examples::weak_page(self.store.pool(), task.id, after, PAGE).await?;
            let Some(last) = rows.last().map(|r| r.0) else {
                break;
            };
            let mut votes: HashMap<i64, Vec<examples::WeakLabelRow>> = HashMap::new();
            for w in examples::weak_labels_between(self.store.pool(), task.id, after, last).await? {
                votes.entry(w.example_id).or_default().push(w);
            }
            after = last;
            let mut updates = vec![];
            for (id, old) in rows {
                let Some(v) = votes.get(&id) else { continue };
                let new = aggregate_of(pipeline, v, task.k());
                let same = match (parse_dist(old.as_deref()), &new) {
                    (Some(a), Some(b)) => a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6),
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    updates.push((id, new.as_deref().map(dist_json)));
                }
            }
            if updates.is_empty() {
                continue;
            }
            changed += updates.len();
            let mut tx = self.store.begin_write().await?;
            let now = now_ms();
            for (id, weak) in &updates {
                examples::set_weak_aggregate(tx.conn(), *id, weak.as_deref(), now).await?;
            }
            tx.commit().await?;
        }
        if changed > 0 {
            self.forget_graph(task.id, false);
            tracing::info!(task = %task.name, changed, "weak aggregates follow the new source model");
        }
        Ok(changed)
    }
}
