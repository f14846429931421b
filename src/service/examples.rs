//! Reading examples: one example with everything that explains its label, and paged lists.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ingest::DecisionView;
use super::{parse_dist, Service, TaskCtx};
use crate::error::{Error, Result};
use crate::method::gold::GoldPicked;
use crate::method::pik::PikSource;
use crate::method::rule::DecisionSource;
use crate::method::weak::argmax;
use crate::store::decisions::DecisionRow;
use crate::store::examples::{self, ExampleRow};
use crate::store::weak_labels;

/// A distribution over the task's labels and its most likely label.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LabelScores {
    pub label: Option<String>,
    pub scores: BTreeMap<String, f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WeakLabelView {
    pub source: String,
    /// Set when the source gave a hard label.
    pub label: Option<String>,
    pub scores: BTreeMap<String, f32>,
    pub confidence: f32,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PredictionView {
    pub label: Option<String>,
    pub scores: BTreeMap<String, f32>,
    pub p_ik: Option<f32>,
    pub p_ik_source: PikSource,
    pub model_version: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NeighbourView {
    pub id: String,
    pub text: String,
    /// Cosine similarity of the embeddings.
    pub similarity: f32,
    pub weak: Option<LabelScores>,
    pub gold_label: Option<String>,
    /// Its current decision's label.
    pub decision_label: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionRecord {
    pub label: Option<String>,
    pub source: DecisionSource,
    pub p_ik: Option<f32>,
    pub p_ik_source: PikSource,
    pub tau: Option<f32>,
    /// P(the label is right) (for `abstain`: of the label it would have given).
    pub confidence: Option<f32>,
    /// The inputs the rule saw.
    pub probs: Option<BTreeMap<String, f32>>,
    pub weak: Option<BTreeMap<String, f32>>,
    pub refined: Option<BTreeMap<String, f32>>,
    pub model_version_id: Option<i64>,
    pub graph_version: i64,
    pub reason: String,
    pub created_at: i64,
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExampleView {
    pub id: String,
    pub text: String,
    pub created_at: i64,
    pub gold_label: Option<String>,
    /// How the gold label's example was picked, where the client said (`PUT …/gold`).
    pub gold_picked: Option<GoldPicked>,
    pub weak_labels: Vec<WeakLabelView>,
    /// The weak labels combined: the source model's posterior, or their
    /// confidence-weighted mean while the source model is off.
    pub weak_aggregate: Option<LabelScores>,
    /// The weak aggregates smoothed over the similarity graph (whether or not smoothing is
    /// on for the task).
    pub smoothed: Option<LabelScores>,
    /// The refined weak label in force: `smoothed` when smoothing is on for the task, else
    /// the weak aggregate.
    pub refined: Option<LabelScores>,
    /// The strong model's latest prediction (null without a trained model version).
    pub prediction: Option<PredictionView>,
    pub decision: Option<DecisionView>,
    /// Nearest examples in the graph, with their labels: why the refined label is what it is.
    pub neighbours: Vec<NeighbourView>,
    /// Decision history, newest first (at most 50).
    pub decisions: Vec<DecisionRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExampleSummary {
    pub id: String,
    pub text: String,
    pub gold_label: Option<String>,
    /// How the gold label's example was picked, where the client said.
    pub gold_picked: Option<GoldPicked>,
    pub weak_label: Option<String>,
    pub refined_label: Option<String>,
    /// The active model version's prediction and P(IK) (null without one).
    pub predicted_label: Option<String>,
    pub p_ik: Option<f32>,
    pub decision: Option<DecisionView>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExamplePage {
    pub examples: Vec<ExampleSummary>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

impl TaskCtx {
    pub fn named(&self, dist: &[f32]) -> BTreeMap<String, f32> {
        self.labels
            .iter()
            .cloned()
            .zip(dist.iter().copied())
            .collect()
    }

    pub fn label_scores(&self, dist: &[f32]) -> LabelScores {
        LabelScores {
            label: argmax(dist)
                .and_then(|l| self.label_name(l))
                .map(String::from),
            scores: self.named(dist),
        }
    }

    pub fn name_of(&self, label: Option<i64>) -> Option<String> {
        label
            .and_then(|l| usize::try_from(l).ok())
            .and_then(|l| self.label_name(l))
            .map(String::from)
    }

    pub fn current_decision(&self, row: &ExampleRow) -> Option<DecisionView> {
        let source = DecisionSource::parse(row.decision_source.as_deref()?)?;
        Some(DecisionView {
            label: self.name_of(row.decision_label),
            source,
            p_ik: row.p_ik.map(|p| p as f32),
            p_ik_source: PikSource::parse(row.p_ik_source.as_deref().unwrap_or("none")),
            confidence: row.confidence.map(|c| c as f32),
            confidence_source: row
                .confidence_source
                .as_deref()
                .and_then(super::decide::ConfidenceSource::parse),
            suggested_label: self.name_of(row.suggested_label),
            reason: None,
        })
    }

    pub fn decision_record(&self, d: &DecisionRow) -> DecisionRecord {
        let named = |json: &Option<String>| parse_dist(json.as_deref()).map(|v| self.named(&v));
        DecisionRecord {
            label: self.name_of(d.label),
            source: DecisionSource::parse(&d.source).unwrap_or(DecisionSource::None),
            p_ik: d.p_ik.map(|p| p as f32),
            p_ik_source: PikSource::parse(&d.p_ik_source),
            tau: d.tau.map(|t| t as f32),
            confidence: d.confidence.map(|c| c as f32),
            probs: named(&d.probs),
            weak: named(&d.weak),
            refined: named(&d.refined),
            model_version_id: d.model_version_id,
            graph_version: d.graph_version,
            reason: d.reason.clone(),
            created_at: d.created_at,
            current: d.current != 0,
        }
    }
}

const MAX_PAGE: i64 = 1000;

impl Service {
    pub async fn example_view(&self, task_name: &str, external_id: &str) -> Result<ExampleView> {
        let task = self.task(task_name).await?;
        let row = examples::by_external_id(self.store.pool(), task.id, external_id)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "example {external_id:?} does not exist in task {task_name:?}"
                ))
            })?;
        let weak_labels = weak_labels::weak_labels(self.store.pool(), &[row.id])
            .await?
            .into_iter()
            .map(|w| WeakLabelView {
                label: task.name_of(w.label),
                scores: parse_dist(Some(&w.scores))
                    .map(|s| task.named(&s))
                    .unwrap_or_default(),
                source: w.source,
                confidence: w.confidence as f32,
                updated_at: w.updated_at,
            })
            .collect();
        let history = crate::store::decisions::history(self.store.pool(), row.id, 50).await?;
        let neighbour_ids = self.neighbours(&task, row.id, task.settings.knn_k).await?;
        let ids: Vec<i64> = neighbour_ids.iter().map(|(id, _)| *id).collect();
        let rows: HashMap<i64, ExampleRow> = examples::by_ids(self.store.pool(), &ids)
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        let neighbours = neighbour_ids
            .iter()
            .filter_map(|(id, sim)| {
                let r = rows.get(id)?;
                Some(NeighbourView {
                    id: r.external_id.clone(),
                    text: r.text.clone(),
                    similarity: *sim,
                    weak: parse_dist(r.weak.as_deref()).map(|w| task.label_scores(&w)),
                    gold_label: task.name_of(r.gold_label),
                    decision_label: task.name_of(r.decision_label),
                })
            })
            .collect();
        let prediction = match (row.scored_version_id, parse_dist(row.pred_probs.as_deref())) {
            (Some(version_id), Some(probs)) => Some(PredictionView {
                label: task.name_of(row.pred_label),
                scores: task.named(&probs),
                p_ik: row.p_ik.map(|p| p as f32),
                p_ik_source: PikSource::parse(row.p_ik_source.as_deref().unwrap_or("none")),
                model_version: self.load_version(version_id).await.ok().map(|v| v.version),
            }),
            _ => None,
        };
        let decisions: Vec<DecisionRecord> =
            history.iter().map(|d| task.decision_record(d)).collect();
        let decision = task.current_decision(&row).map(|mut d| {
            if let Some(current) = decisions.iter().find(|d| d.current) {
                d.reason = Some(current.reason.clone());
            }
            d
        });
        Ok(ExampleView {
            id: row.external_id.clone(),
            text: row.text.clone(),
            created_at: row.created_at,
            gold_label: task.name_of(row.gold_label),
            gold_picked: GoldPicked::parse(row.gold_picked.as_deref()),
            weak_labels,
            weak_aggregate: parse_dist(row.weak.as_deref()).map(|w| task.label_scores(&w)),
            smoothed: parse_dist(row.smoothed.as_deref()).map(|r| task.label_scores(&r)),
            refined: parse_dist(row.refined.as_deref()).map(|r| task.label_scores(&r)),
            prediction,
            decision,
            neighbours,
            decisions,
        })
    }

    pub async fn list_examples(
        &self,
        task_name: &str,
        after: Option<&str>,
        limit: Option<i64>,
    ) -> Result<ExamplePage> {
        let task = self.task(task_name).await?;
        let after_id = match after {
            None | Some("") => 0,
            Some(c) => c.parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                Error::bad_request(
                    "invalid_cursor",
                    format!("cursor {c:?} is not one this server issued"),
                )
            })?,
        };
        let limit = limit.unwrap_or(100);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(Error::invalid(
                "invalid_limit",
                format!("limit must be in 1..={MAX_PAGE}"),
            ));
        }
        let rows = examples::page(self.store.pool(), task.id, after_id, limit).await?;
        let next_cursor = (rows.len() as i64 == limit)
            .then(|| rows.last().map(|r| r.id.to_string()))
            .flatten();
        Ok(ExamplePage {
            examples: rows.iter().map(|r| summary(&task, r)).collect(),
            next_cursor,
        })
    }
}

pub fn summary(task: &TaskCtx, r: &ExampleRow) -> ExampleSummary {
    ExampleSummary {
        id: r.external_id.clone(),
        text: r.text.clone(),
        gold_label: task.name_of(r.gold_label),
        gold_picked: GoldPicked::parse(r.gold_picked.as_deref()),
        weak_label: parse_dist(r.weak.as_deref())
            .and_then(|w| argmax(&w))
            .and_then(|l| task.label_name(l))
            .map(String::from),
        refined_label: task.name_of(r.refined_label),
        predicted_label: task.name_of(r.pred_label),
        p_ik: r.p_ik.map(|p| p as f32),
        decision: task.current_decision(r),
        created_at: r.created_at,
    }
}
