//! Weak aggregates follow the active version's source model: when a version with another
//! source model becomes active, every example's aggregate is recomputed from its stored
//! weak labels and the changed ones are written (marking them for a new decision); the
//! task's in-memory graph is dropped so that its next load reconciles the new aggregates in
//! one full pass.

use std::collections::HashMap;

use super::ingest::{aggregate_of, stored_aggregate};
use super::{parse_dist, Service, TaskCtx};
use crate::error::Result;
use futures::TryStreamExt;

use crate::store::now_ms;
use crate::store::weak_labels;
use crate::store::{examples, keyset_pages};

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
        let pool = self.store.pool();
        let mut changed = 0;
        let mut after = 0;
        let mut pages = std::pin::pin!(keyset_pages(
            0,
            |r: &(i64, Option<String>)| r.0,
            |a| { examples::weak_page(pool, task.id, a, PAGE) }
        ));
        while let Some(rows) = pages.try_next().await? {
            let last = rows.last().map_or(after, |r| r.0);
            let mut votes: HashMap<i64, Vec<weak_labels::WeakLabelRow>> = HashMap::new();
            for w in weak_labels::weak_labels_between(pool, task.id, after, last).await? {
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
                    let (weak, label) = stored_aggregate(new.as_deref());
                    updates.push((id, weak, label));
                }
            }
            if updates.is_empty() {
                continue;
            }
            changed += updates.len();
            let mut tx = self.store.begin_task_write(task.id).await?;
            let now = now_ms();
            for (id, weak, label) in &updates {
                examples::set_weak_aggregate(tx.conn(), *id, weak.as_deref(), *label, now).await?;
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
