//! The live summary of a task's weak sources, in the spirit of Snorkel's `lf_summary`:
//! coverage, overlaps and conflicts (shares of all examples), polarity, the empirical
//! accuracy on gold (all from SQL aggregates, so it stays fast on large tasks), and the
//! accuracy the active version's source model learned.

use std::collections::BTreeMap;

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
        // Rows come ordered by source, one per label it favoured: fold them per source.
        let mut counts: Vec<SourceCounts> = Vec::new();
        for r in weak_labels::source_votes(pool, task.id).await? {
            if counts.last().is_none_or(|c| c.source != r.source) {
                counts.push(SourceCounts {
                    source: r.source.clone(),
                    ..Default::default()
                });
            }
            if let Some(c) = counts.last_mut() {
                c.add(&task, r);
            }
        }
        let version = self.active_version(&task).await?;
        let pipeline = version.as_ref().and_then(|v| v.pipeline.as_ref());
        let share = |n: i64| n as f64 / total.max(1) as f64;
        let sources = counts
            .into_iter()
            .map(|c| {
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
                    overlaps: share(c.overlaps),
                    conflicts: share(c.conflicts),
                    polarity: c.polarity,
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

/// One source's counts, summed over the labels it favoured.
#[derive(Default)]
struct SourceCounts {
    source: String,
    votes: i64,
    gold_votes: i64,
    gold_right: i64,
    overlaps: i64,
    conflicts: i64,
    polarity: BTreeMap<String, i64>,
}

impl SourceCounts {
    fn add(&mut self, task: &TaskCtx, r: weak_labels::SourceVoteRow) {
        self.votes += r.votes;
        self.gold_votes += r.gold_votes;
        self.gold_right += r.gold_right;
        self.overlaps += r.overlaps;
        self.conflicts += r.conflicts;
        // A vote for no label (scores all zero) counts as a vote, not as a polarity.
        if let Some(name) = task.name_of(r.vote) {
            *self.polarity.entry(name).or_default() += r.votes;
        }
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
