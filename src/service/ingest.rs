//! Writes of examples: batch ingest, extra weak labels, gold labels. Every request is
//! validated completely before anything is written, and written in one transaction, so a
//! rejected batch writes nothing. After the commit the examples are settled (graph, refined
//! labels, decisions); a crash in between leaves them dirty for the recovery sweep.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{dist_json, Service, TaskCtx};
use crate::error::{Error, Result};
use crate::method::pik::PikSource;
use crate::method::pipeline::{aggregate_with, NamedVote, PipelineFit};
use crate::method::selection::DecisionSource;
use crate::method::weak::{aggregate, argmax, one_hot, WeakVote};
use crate::store::examples;
use crate::store::{f32s_to_bytes, now_ms};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    pub examples: Vec<NewExample>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExample {
    /// The caller's id, unique within the task. Re-sending an id does not duplicate it.
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub weak_labels: Vec<WeakLabelIn>,
    /// A human label, if one is known.
    pub gold_label: Option<String>,
}

/// A weak label: either `label` (a hard label) or `scores` (a distribution over the task's
/// labels, as an object `{label: p}` or an array in label order), never both.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeakLabelIn {
    /// Which labeler produced it (heuristic, model, annotator pool). One label per source and
    /// example: a source that labels again replaces its earlier label.
    pub source: String,
    pub label: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub scores: Option<ScoresIn>,
    /// In (0, 1]; weights this label in the example's weak aggregate. Default 1.
    pub confidence: Option<f32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ScoresIn {
    Map(BTreeMap<String, f64>),
    List(Vec<f64>),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeakLabelsRequest {
    pub weak_labels: Vec<WeakLabelIn>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GoldRequest {
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DecisionView {
    /// The decided label; null when nothing supports one.
    pub label: Option<String>,
    pub source: DecisionSource,
    pub p_ik: Option<f32>,
    /// Which P(IK) this decision used: `trained`, `msp` (fallback) or `none`.
    pub p_ik_source: PikSource,
    /// The probability that `label` is right (for `abstain`: that `suggested_label` is),
    /// calibrated on gold when `confidence_source` is `p_ik` or `trust`.
    pub confidence: Option<f32>,
    pub confidence_source: Option<super::decide::ConfidenceSource>,
    /// For `abstain`: the label the decision would have given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_label: Option<String>,
    /// Why the rule chose this (in summaries only the full record carries it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IngestResult {
    pub id: String,
    /// False when the example already existed (its new weak/gold labels were still applied).
    pub created: bool,
    pub decision: DecisionView,
    /// The graph-smoothed weak label.
    pub refined_label: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IngestResponse {
    pub results: Vec<IngestResult>,
    pub graph_version: i64,
}

/// A weak label checked against the task.
#[derive(Debug, Clone)]
pub struct ParsedWeak {
    pub source: String,
    pub label: Option<usize>,
    pub scores: Vec<f32>,
    pub confidence: f32,
}

struct Parsed<'a> {
    id: &'a str,
    text: &'a str,
    weak: Vec<ParsedWeak>,
    gold: Option<usize>,
}

const MAX_ID_CHARS: usize = 256;
const MAX_SOURCE_CHARS: usize = 128;

fn invalid(code: &'static str, msg: String) -> Error {
    Error::invalid(code, msg)
}

pub fn parse_weak(task: &TaskCtx, w: &WeakLabelIn, at: &str) -> Result<ParsedWeak> {
    let k = task.k();
    if w.source.trim().is_empty() || w.source.chars().count() > MAX_SOURCE_CHARS {
        return Err(invalid(
            "invalid_source",
            format!("{at}.source must have 1 to {MAX_SOURCE_CHARS} characters"),
        ));
    }
    let confidence = w.confidence.unwrap_or(1.0);
    if !(confidence > 0.0 && confidence <= 1.0) {
        return Err(invalid(
            "invalid_confidence",
            format!("{at}.confidence must be in (0, 1], got {confidence}"),
        ));
    }
    let (label, scores) = match (&w.label, &w.scores) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(invalid(
                "invalid_weak_label",
                format!("{at} needs exactly one of \"label\" or \"scores\""),
            ))
        }
        (Some(name), None) => {
            let l = task.label_index(name).ok_or_else(|| {
                invalid(
                    "label_not_in_task",
                    format!(
                        "{at}.label {name:?} is not a label of task {:?} (labels: {:?})",
                        task.name, task.labels
                    ),
                )
            })?;
            (Some(l), one_hot(l, k))
        }
        (None, Some(scores)) => (None, parse_scores(task, scores, at)?),
    };
    Ok(ParsedWeak {
        source: w.source.clone(),
        label,
        scores,
        confidence,
    })
}

fn parse_scores(task: &TaskCtx, scores: &ScoresIn, at: &str) -> Result<Vec<f32>> {
    let k = task.k();
    let values: Vec<f64> = match scores {
        ScoresIn::List(list) => {
            if list.len() != k {
                return Err(invalid(
                    "scores_label_mismatch",
                    format!(
                        "{at}.scores has {} values; task {:?} has {k} labels {:?}",
                        list.len(),
                        task.name,
                        task.labels
                    ),
                ));
            }
            list.clone()
        }
        ScoresIn::Map(map) => {
            let mut v = vec![0.0; k];
            for (name, p) in map {
                let l = task.label_index(name).ok_or_else(|| {
                    invalid(
                        "scores_label_mismatch",
                        format!("{at}.scores names {name:?}, which is not a label of task {:?} (labels: {:?})", task.name, task.labels),
                    )
                })?;
                v[l] = *p;
            }
            v
        }
    };
    if values
        .iter()
        .any(|p| !p.is_finite() || *p < 0.0 || *p > 1.0)
    {
        return Err(invalid(
            "invalid_scores",
            format!("{at}.scores must be probabilities in [0, 1]"),
        ));
    }
    let sum: f64 = values.iter().sum();
    if (sum - 1.0).abs() > 1e-3 {
        return Err(invalid(
            "scores_not_normalized",
            format!("{at}.scores sum to {sum}, not 1"),
        ));
    }
    Ok(values.iter().map(|&p| (p / sum) as f32).collect())
}

fn parse_gold(task: &TaskCtx, label: &str, at: &str) -> Result<usize> {
    task.label_index(label).ok_or_else(|| {
        invalid(
            "label_not_in_task",
            format!(
                "{at} {label:?} is not a label of task {:?} (labels: {:?})",
                task.name, task.labels
            ),
        )
    })
}

fn check_weak_sources(weak: &[ParsedWeak], at: &str) -> Result<()> {
    let mut seen = HashSet::new();
    for w in weak {
        if !seen.insert(w.source.as_str()) {
            return Err(invalid(
                "duplicate_weak_source",
                format!(
                    "{at} has two labels from source {:?}; a source gives one label per example",
                    w.source
                ),
            ));
        }
    }
    Ok(())
}

impl Service {
    fn validate_batch<'a>(
        &self,
        task: &TaskCtx,
        req: &'a IngestRequest,
    ) -> Result<Vec<Parsed<'a>>> {
        if req.examples.is_empty() {
            return Err(invalid("empty_batch", "examples is empty".into()));
        }
        if req.examples.len() > self.limits.max_batch_examples {
            return Err(Error::TooLarge(format!(
                "a batch holds at most {} examples, got {}",
                self.limits.max_batch_examples,
                req.examples.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut parsed = Vec::with_capacity(req.examples.len());
        for (i, ex) in req.examples.iter().enumerate() {
            let at = format!("examples[{i}]");
            if ex.id.is_empty()
                || ex.id.chars().count() > MAX_ID_CHARS
                || ex.id.chars().any(char::is_control)
            {
                return Err(invalid(
                    "invalid_id",
                    format!("{at}.id must have 1 to {MAX_ID_CHARS} characters and no control characters"),
                ));
            }
            if !seen.insert(ex.id.as_str()) {
                return Err(invalid(
                    "duplicate_id",
                    format!("{at}.id {:?} appears twice in the batch", ex.id),
                ));
            }
            self.check_text(&ex.text, &format!("{at}.text"))?;
            let weak = ex
                .weak_labels
                .iter()
                .enumerate()
                .map(|(j, w)| parse_weak(task, w, &format!("{at}.weak_labels[{j}]")))
                .collect::<Result<Vec<_>>>()?;
            check_weak_sources(&weak, &at)?;
            let gold = ex
                .gold_label
                .as_deref()
                .map(|g| parse_gold(task, g, &format!("{at}.gold_label")))
                .transpose()?;
            parsed.push(Parsed {
                id: &ex.id,
                text: &ex.text,
                weak,
                gold,
            });
        }
        Ok(parsed)
    }

    pub fn check_text(&self, text: &str, at: &str) -> Result<()> {
        if text.trim().is_empty() {
            return Err(invalid("empty_text", format!("{at} is empty")));
        }
        let chars = text.chars().count();
        if chars > self.limits.max_text_chars {
            return Err(invalid(
                "text_too_long",
                format!(
                    "{at} has {chars} characters; the limit is {}",
                    self.limits.max_text_chars
                ),
            ));
        }
        Ok(())
    }

    pub async fn ingest(&self, task_name: &str, req: IngestRequest) -> Result<IngestResponse> {
        let task = self.task(task_name).await?;
        let parsed = self.validate_batch(&task, &req)?;
        let ext_ids: Vec<&str> = parsed.iter().map(|p| p.id).collect();
        let existing: HashMap<String, (i64, String)> =
            examples::find_existing(self.store.pool(), task.id, &ext_ids)
                .await?
                .into_iter()
                .map(|r| (r.external_id, (r.id, r.text)))
                .collect();
        let conflicts: Vec<&str> = parsed
            .iter()
            .filter(|p| {
                existing
                    .get(p.id)
                    .map(|(_, t)| t != p.text)
                    .unwrap_or(false)
            })
            .map(|p| p.id)
            .collect();
        if !conflicts.is_empty() {
            return Err(Error::Conflict {
                code: "example_text_conflict",
                message: format!(
                    "{} example(s) already exist with a different text; an example's text cannot change (use a new id)",
                    conflicts.len()
                ),
                details: Some(serde_json::json!({ "ids": conflicts })),
            });
        }

        // Embed the new texts before the transaction: nothing is written if the model refuses.
        let fresh: Vec<usize> = (0..parsed.len())
            .filter(|&i| !existing.contains_key(parsed[i].id))
            .collect();
        let texts: Vec<&str> = fresh.iter().map(|&i| parsed[i].text).collect();
        let encoded = self
            .model
            .tokenize(&texts, &|n| format!("examples[{}].text", fresh[n]))?;
        let (bert, encoder_id) = self.task_encoder(&task).await?;
        let vectors = self.model.worker.try_embed(&bert, encoded).await?;
        let embedding_of: HashMap<usize, Vec<u8>> = fresh
            .iter()
            .copied()
            .zip(vectors.iter().map(|v| f32s_to_bytes(v)))
            .collect();

        let version = self.active_version(&task).await?;
        let pipeline = version.as_ref().and_then(|v| v.pipeline.as_ref());
        let now = now_ms();
        let mut tx = self.store.begin_write().await?;
        let mut ids = Vec::with_capacity(parsed.len());
        let mut created = Vec::with_capacity(parsed.len());
        for (i, p) in parsed.iter().enumerate() {
            let (id, is_new) = match existing.get(p.id) {
                Some((id, _)) => (*id, false),
                None => {
                    let inserted = examples::insert(
                        tx.conn(),
                        task.id,
                        p.id,
                        p.text,
                        embedding_of.get(&i).map(|v| v.as_slice()),
                        Some(&encoder_id),
                        now,
                    )
                    .await?;
                    match inserted {
                        Some(id) => (id, true),
                        // Another request inserted it after our lookup.
                        None => {
                            let row = examples::by_external_id(tx.conn(), task.id, p.id)
                                .await?
                                .ok_or_else(|| {
                                    Error::conflict(
                                        "concurrent_write",
                                        "example was deleted concurrently; retry",
                                    )
                                })?;
                            if row.text != p.text {
                                return Err(Error::Conflict {
                                    code: "example_text_conflict",
                                    message: "an example with this id and another text was written concurrently".into(),
                                    details: Some(serde_json::json!({ "ids": [p.id] })),
                                });
                            }
                            (row.id, false)
                        }
                    }
                }
            };
            self.write_labels(&mut tx, &task, pipeline, id, &p.weak, p.gold, now)
                .await?;
            ids.push(id);
            created.push(is_new);
        }
        let n_new = created.iter().filter(|c| **c).count() as i64;
        crate::store::tasks::add_new_examples(tx.conn(), task.id, n_new).await?;
        tx.commit().await?;
        metrics::counter!("sw2s_examples_ingested_total").increment(n_new as u64);

        let report = self.settle(&task, &ids, "ingest").await?;
        let by_id: HashMap<i64, &super::decide::Current> =
            report.decisions.iter().map(|d| (d.example_id, d)).collect();
        let results = parsed
            .iter()
            .zip(ids.iter().zip(created))
            .map(|(p, (id, created))| IngestResult {
                id: p.id.to_string(),
                created,
                decision: by_id
                    .get(id)
                    .map(|c| decision_view(&task, c))
                    .unwrap_or_else(undecided),
                refined_label: by_id
                    .get(id)
                    .and_then(|c| c.refined_label)
                    .and_then(|l| task.label_name(l))
                    .map(String::from),
            })
            .collect();
        Ok(IngestResponse {
            results,
            graph_version: report.graph_version,
        })
    }

    /// Upserts weak labels (recomputing the weak aggregate with the task's source model) and
    /// sets the gold label.
    #[allow(clippy::too_many_arguments)]
    async fn write_labels(
        &self,
        tx: &mut crate::store::WriteTx,
        task: &TaskCtx,
        pipeline: Option<&PipelineFit>,
        example_id: i64,
        weak: &[ParsedWeak],
        gold: Option<usize>,
        now: i64,
    ) -> Result<()> {
        for w in weak {
            let scores = dist_json(&w.scores);
            let row = examples::NewWeakLabel {
                source: &w.source,
                label: w.label.map(|l| l as i64),
                vote: argmax(&w.scores).map_or(-1, |l| l as i64),
                scores: &scores,
                confidence: w.confidence as f64,
            };
            examples::upsert_weak_label(tx.conn(), example_id, &row, now).await?;
        }
        if !weak.is_empty() {
            let all = examples::weak_labels(tx.conn(), &[example_id]).await?;
            let agg = aggregate_of(pipeline, &all, task.k()).map(|a| dist_json(&a));
            examples::set_weak_aggregate(tx.conn(), example_id, agg.as_deref(), now).await?;
        }
        if let Some(g) = gold {
            examples::set_gold(tx.conn(), example_id, g as i64, now).await?;
        }
        Ok(())
    }

    async fn example_id(&self, task: &TaskCtx, external_id: &str) -> Result<i64> {
        examples::by_external_id(self.store.pool(), task.id, external_id)
            .await?
            .map(|r| r.id)
            .ok_or_else(|| {
                Error::not_found(format!(
                    "example {external_id:?} does not exist in task {:?}",
                    task.name
                ))
            })
    }

    pub async fn add_weak_labels(
        &self,
        task_name: &str,
        external_id: &str,
        req: WeakLabelsRequest,
    ) -> Result<TaskCtx> {
        let task = self.task(task_name).await?;
        if req.weak_labels.is_empty() {
            return Err(invalid("empty_batch", "weak_labels is empty".into()));
        }
        let weak = req
            .weak_labels
            .iter()
            .enumerate()
            .map(|(j, w)| parse_weak(&task, w, &format!("weak_labels[{j}]")))
            .collect::<Result<Vec<_>>>()?;
        check_weak_sources(&weak, "weak_labels")?;
        let id = self.example_id(&task, external_id).await?;
        let version = self.active_version(&task).await?;
        let pipeline = version.as_ref().and_then(|v| v.pipeline.as_ref());
        let mut tx = self.store.begin_write().await?;
        self.write_labels(&mut tx, &task, pipeline, id, &weak, None, now_ms())
            .await?;
        tx.commit().await?;
        self.settle(&task, &[id], "weak label").await?;
        Ok(task)
    }

    pub async fn set_gold(
        &self,
        task_name: &str,
        external_id: &str,
        req: GoldRequest,
    ) -> Result<TaskCtx> {
        let task = self.task(task_name).await?;
        let gold = parse_gold(&task, &req.label, "label")?;
        let id = self.example_id(&task, external_id).await?;
        let mut tx = self.store.begin_write().await?;
        self.write_labels(&mut tx, &task, None, id, &[], Some(gold), now_ms())
            .await?;
        tx.commit().await?;
        self.settle(&task, &[id], "gold label").await?;
        Ok(task)
    }
}

/// The weak aggregate of an example's stored weak labels: the source model in use, or the
/// confidence-weighted mean without one.
pub fn aggregate_of(
    pipeline: Option<&PipelineFit>,
    rows: &[examples::WeakLabelRow],
    k: usize,
) -> Option<Vec<f32>> {
    let votes: Vec<NamedVote> = rows
        .iter()
        .filter_map(|w| {
            Some(NamedVote {
                source: &w.source,
                scores: serde_json::from_str(&w.scores).ok()?,
                confidence: w.confidence as f32,
            })
        })
        .collect();
    match pipeline {
        Some(p) => aggregate_with(&p.source_model.used, &p.sources, &votes),
        None => aggregate(
            &votes
                .iter()
                .map(|v| WeakVote {
                    scores: v.scores.clone(),
                    confidence: v.confidence,
                })
                .collect::<Vec<_>>(),
            k,
        ),
    }
}

pub fn decision_view(task: &TaskCtx, c: &super::decide::Current) -> DecisionView {
    DecisionView {
        label: c.label.and_then(|l| task.label_name(l)).map(String::from),
        source: c.source,
        p_ik: c.p_ik,
        p_ik_source: c.p_ik_source,
        confidence: c.confidence,
        confidence_source: c.confidence_source,
        suggested_label: c
            .suggested
            .and_then(|l| task.label_name(l))
            .map(String::from),
        reason: Some(c.reason.clone()),
    }
}

fn undecided() -> DecisionView {
    DecisionView {
        label: None,
        source: DecisionSource::None,
        p_ik: None,
        p_ik_source: PikSource::None,
        confidence: None,
        confidence_source: None,
        suggested_label: None,
        reason: Some("not decided yet".into()),
    }
}
