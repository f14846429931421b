//! Scoring examples with the active model version and recording decisions (DESIGN.md §1.5).
//! A decision row is appended when an example's (label, source) changes; the example row
//! always carries the latest scores and its current decision.

use std::collections::HashMap;

use super::versions::LoadedVersion;
use super::{dist_json, parse_dist, Service, TaskCtx};
use crate::error::Result;
use crate::method::pik::{msp, PikSource};
use crate::method::selection::{decide, DecisionSource, Inputs};
use crate::store::examples::{self, Scores};
use crate::store::{bytes_to_f32s, decisions, now_ms};

/// An example's current decision, as the API reports it.
#[derive(Debug, Clone)]
pub struct Current {
    pub example_id: i64,
    pub label: Option<usize>,
    pub source: DecisionSource,
    pub p_ik: Option<f32>,
    pub p_ik_source: PikSource,
    pub reason: String,
    pub refined_label: Option<usize>,
    pub changed: bool,
}

/// The strong model's view of one embedding under a version.
pub struct Scored {
    pub probs: Vec<f32>,
    pub p_ik: f32,
    pub source: PikSource,
}

pub fn score(version: &LoadedVersion, embedding: &[f32]) -> Scored {
    let probs = version.heads.probs(embedding);
    match version.heads.trained_pik(embedding, &probs) {
        Some(q) => Scored {
            probs,
            p_ik: q,
            source: PikSource::Trained,
        },
        None => Scored {
            p_ik: msp(&probs),
            probs,
            source: PikSource::Msp,
        },
    }
}

/// τ in force: the task's fixed value, or the one fitted when the version was trained.
pub fn tau_for(task: &TaskCtx, version: Option<&LoadedVersion>) -> f32 {
    match (task.settings.tau.fixed(), version) {
        (Some(t), _) => t,
        (None, Some(v)) => v.manifest.pik.tau as f32,
        (None, None) => 0.5,
    }
}

const CHUNK: usize = 500;

impl Service {
    /// Recomputes and records the decisions of `ids`.
    pub async fn redecide(
        &self,
        task: &TaskCtx,
        ids: &[i64],
        graph_version: i64,
        trigger: &str,
    ) -> Result<Vec<Current>> {
        let version = self.active_version(task).await?;
        let tau = tau_for(task, version.as_deref());
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let rows = examples::by_ids(self.store.pool(), chunk).await?;
            let embeddings: HashMap<i64, Vec<f32>> = match &version {
                Some(_) => examples::embeddings_of(self.store.pool(), chunk)
                    .await?
                    .into_iter()
                    .map(|r| (r.id, bytes_to_f32s(&r.embedding)))
                    .collect(),
                None => HashMap::new(),
            };
            let now = now_ms();
            let mut tx = self.store.begin_write().await?;
            for row in rows {
                // Only embeddings from the version's own encoder can be scored by its heads.
                let scored = version.as_ref().and_then(|v| {
                    let same_encoder = row.encoder_id.as_deref() == Some(v.encoder_id.as_str());
                    embeddings
                        .get(&row.id)
                        .filter(|_| same_encoder)
                        .map(|e| score(v, e))
                });
                let refined = parse_dist(row.refined.as_deref());
                let gold = row.gold_label.and_then(|g| usize::try_from(g).ok());
                let outcome = decide(
                    &Inputs {
                        gold,
                        strong: scored.as_ref().map(|s| (s.probs.as_slice(), s.p_ik)),
                        refined: refined.as_deref(),
                    },
                    tau,
                );
                let label = outcome.label.map(|l| l as i64);
                let changed = row.decision_id.is_none()
                    || row.decision_label != label
                    || row.decision_source.as_deref() != Some(outcome.source.as_str());
                let probs_json = scored.as_ref().map(|s| dist_json(&s.probs));
                let pik_source = scored.as_ref().map(|s| s.source).unwrap_or(PikSource::None);
                let scores = Scores {
                    pred_label: scored
                        .as_ref()
                        .and_then(|s| crate::method::weak::argmax(&s.probs))
                        .map(|l| l as i64),
                    pred_probs: probs_json.as_deref(),
                    p_ik: scored.as_ref().map(|s| s.p_ik as f64),
                    p_ik_source: pik_source.as_str(),
                    version_id: version.as_ref().map(|v| v.id),
                };
                let reason = format!("{trigger}: {}", outcome.reason);
                let decision = if changed {
                    let id = decisions::insert(
                        tx.conn(),
                        &decisions::NewDecision {
                            task_id: task.id,
                            example_id: row.id,
                            label,
                            source: outcome.source.as_str(),
                            p_ik: scores.p_ik,
                            p_ik_source: pik_source.as_str(),
                            tau: version.as_ref().map(|_| tau as f64),
                            probs: probs_json.as_deref(),
                            weak: row.weak.as_deref(),
                            refined: row.refined.as_deref(),
                            model_version_id: version.as_ref().map(|v| v.id),
                            graph_version,
                            reason: &reason,
                            created_at: now,
                        },
                    )
                    .await?;
                    metrics::counter!("sw2s_decisions_total", "source" => outcome.source.as_str())
                        .increment(1);
                    Some((id, label, outcome.source.as_str()))
                } else {
                    None
                };
                examples::set_current(tx.conn(), row.id, &scores, decision).await?;
                out.push(Current {
                    example_id: row.id,
                    label: outcome.label,
                    source: outcome.source,
                    p_ik: scored.as_ref().map(|s| s.p_ik),
                    p_ik_source: pik_source,
                    reason,
                    refined_label: refined.as_deref().and_then(crate::method::weak::argmax),
                    changed,
                });
            }
            tx.commit().await?;
        }
        Ok(out)
    }

    /// Re-scores every example of the task (a new active version, a changed τ); returns how
    /// many decisions changed. `progress` sees (done, total).
    pub async fn rescore_task(
        &self,
        task: &TaskCtx,
        trigger: &str,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<usize> {
        let total = crate::store::tasks::counts(self.store.pool(), task.id)
            .await?
            .examples as usize;
        let graph_version = crate::store::tasks::by_id(self.store.pool(), task.id)
            .await?
            .map(|t| t.graph_version)
            .unwrap_or(task.graph_version);
        let mut after = 0;
        let mut done = 0;
        let mut changed = 0;
        loop {
            let ids = examples::ids_page(self.store.pool(), task.id, after, CHUNK as i64).await?;
            let Some(&last) = ids.last() else { break };
            after = last;
            let results = self.redecide(task, &ids, graph_version, trigger).await?;
            changed += results.iter().filter(|c| c.changed).count();
            done += ids.len();
            progress(done, total);
        }
        Ok(changed)
    }
}
