//! The live summary of a task's weak sources, in the spirit of Snorkel's `lf_summary`:
//! coverage, overlaps and conflicts (shares of all examples), polarity, the empirical
//! accuracy on gold (all from SQL aggregates, so it stays fast on large tasks), and the
//! accuracy the active version's source model learned.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Service, TaskCtx};
use crate::error::Result;
use crate::method::label_model::LabelModelKind;
use crate::method::safeguard::StageReport;
use crate::store::weak_labels;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SourceView {
    pub source: String,
    /// Examples it labelled.
    pub votes: i64,
    /// Share of the task's examples it labelled.
    pub coverage: f64,
    /// Share of the task's examples it labelled where another source labelled too.
    pub overlaps: f64,
    /// Share of the task's examples it labelled where another source's label differs.
    pub conflicts: f64,
    /// How often it voted for each label (its argmax for scores): its polarity.
    pub polarity: BTreeMap<String, i64>,
    /// Gold-labelled examples it labelled, and the share it got right there.
    pub gold_votes: i64,
    pub empirical_accuracy: Option<f64>,
    /// Σ_y π_y θ[y][y] under the active version's source model (null before a job has fitted
    /// one, or for a source that model has not seen).
    pub learned_accuracy: Option<f64>,
    /// θ[true label][voted label] of the active version's source model.
    pub learned_confusion: Option<BTreeMap<String, BTreeMap<String, f64>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SourceModelView {
    pub kind: LabelModelKind,
    pub reason: String,
    /// Whether the weak aggregates use it (its gold check).
    pub stage: StageReport,
    pub model_version: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SourcesView {
    pub examples: i64,
    pub sources: Vec<SourceView>,
    /// The source model of the active version (null before any job).
    pub model: Option<SourceModelView>,
}

impl Service {
    pub async fn sources(&self, task_name: &str) -> Result<SourcesView> {
        let task = self.task(task_name).await?;
        let pool = self.store.pool();
        let total = crate::store::tasks::counts(pool, task.id).await?.examples;
        let counts = weak_labels::source_counts(pool, task.id).await?;
        let overlaps: HashMap<String, (i64, i64)> = weak_labels::source_overlaps(pool, task.id)
            .await?
            .into_iter()
            .map(|r| (r.source, (r.overlaps, r.conflicts)))
            .collect();
        let mut polarity: HashMap<String, BTreeMap<String, i64>> = HashMap::new();
        for r in weak_labels::source_polarity(pool, task.id).await? {
            if let Some(name) = task.name_of(r.vote) {
                polarity.entry(r.source).or_default().insert(name, r.votes);
            }
        }
        let version = self.active_version(&task).await?;
        let pipeline = version.as_ref().and_then(|v| v.pipeline.as_ref());
        let share = |n: i64| n as f64 / total.max(1) as f64;
        let sources = counts
            .into_iter()
            .map(|c| {
                let (o, x) = overlaps.get(&c.source).copied().unwrap_or((0, 0));
                let learned = pipeline.and_then(|p| {
                    let idx = p.sources.iter().position(|s| *s == c.source)?;
                    let m = &p.source_model.fitted;
                    Some((
                        m.learned_accuracy(idx)?,
                        confusion(&task, &m.confusion[idx]),
                    ))
                });
                SourceView {
                    votes: c.votes,
                    coverage: share(c.votes),
                    overlaps: share(o),
                    conflicts: share(x),
                    polarity: polarity.remove(&c.source).unwrap_or_default(),
                    gold_votes: c.gold_votes,
                    empirical_accuracy: (c.gold_votes > 0)
                        .then(|| c.gold_right as f64 / c.gold_votes as f64),
                    learned_accuracy: learned.as_ref().map(|l| l.0),
                    learned_confusion: learned.map(|l| l.1),
                    source: c.source,
                }
            })
            .collect();
        Ok(SourcesView {
            examples: total,
            sources,
            model: version.as_ref().and_then(|v| {
                v.pipeline.as_ref().map(|p| SourceModelView {
                    kind: p.source_model.fitted.kind,
                    reason: p.source_model.fitted.reason.clone(),
                    stage: p.source_model.stage.clone(),
                    model_version: v.version,
                })
            }),
        })
    }
}

fn confusion(task: &TaskCtx, theta: &[f64]) -> BTreeMap<String, BTreeMap<String, f64>> {
    let k = task.k();
    (0..k)
        .filter_map(|y| {
            let row = theta.get(y * k..(y + 1) * k)?;
            Some((
                task.label_name(y)?.to_string(),
                row.iter()
                    .enumerate()
                    .filter_map(|(l, p)| Some((task.label_name(l)?.to_string(), *p)))
                    .collect(),
            ))
        })
        .collect()
}
