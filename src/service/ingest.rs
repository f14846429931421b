//! Writes of examples: batch ingest, extra weak labels, gold labels. Every request is
//! validated completely before anything is written, and written in one transaction, so a
//! rejected batch writes nothing. After the commit the examples are settled (graph, refined
//! labels, decisions); a crash in between leaves them dirty for the recovery sweep.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::validation::{check_weak_sources, parse_gold, parse_weak, Parsed, ParsedWeak};
use super::{dist_json, record_phase, Service, TaskCtx};
use crate::error::{Error, Result};
use crate::method::gold::GoldPicked;
use crate::method::pik::PikSource;
use crate::method::pipeline::{aggregate_with, NamedVote, PipelineFit};
use crate::method::rule::DecisionSource;
use crate::method::weak::{aggregate, argmax, WeakVote};
use crate::store::examples;
use crate::store::weak_labels;
use crate::store::{f32s_to_bytes, now_ms};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    /// 1 to `max_batch_examples` (default 1,000; see `/info`), ids distinct.
    #[schema(min_items = 1, max_items = 1000)]
    pub examples: Vec<NewExample>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewExample {
    /// The caller's id, unique within the task. Re-sending an id does not duplicate it.
    /// 1–256 characters, no control characters.
    #[schema(min_length = 1, max_length = 256, pattern = r"^[^\x00-\x1f\x7f]+$")]
    pub id: String,
    /// Not blank, no NUL, at most `max_text_chars` characters (default 20,000; see `/info`).
    #[schema(min_length = 1, max_length = 20000, pattern = r"^[^\x00]*\S[^\x00]*$")]
    pub text: String,
    #[serde(default)]
    pub weak_labels: Vec<WeakLabelIn>,
    /// A human label, if one is known.
    pub gold_label: Option<String>,
    /// How the example came to be gold-labelled (`random` or `review`), as for
    /// `PUT …/gold`; only with `gold_label`.
    #[serde(default)]
    pub gold_picked: Option<GoldPicked>,
}

/// A weak label: either `label` (a hard label) or `scores` (a distribution over the task's
/// labels, as an object `{label: p}` or an array in label order), never both.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeakLabelIn {
    /// Which labeler produced it (heuristic, model, annotator pool). One label per source and
    /// example: a source that labels again replaces its earlier label. 1–128 characters,
    /// not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"
    )]
    pub source: String,
    pub label: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub scores: Option<ScoresIn>,
    /// In (0, 1]; weights this label in the example's weak aggregate. Default 1.
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
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
    /// How the example came to be labelled: `random` (a random sample, such as the review
    /// queue's `order=sample`) or `review` (picked as hard, such as the queue's default
    /// order). Gold picked for review trains and calibrates but does not judge the stage
    /// checks or the class prior while at least 30 other gold labels remain. Absent: not
    /// said, and it judges.
    #[serde(default)]
    pub picked: Option<GoldPicked>,
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

/// What `write_labels` writes for one example.
struct Labels<'a> {
    weak: &'a [ParsedWeak],
    gold: Option<usize>,
    /// How the gold label's example was picked, where the client said.
    picked: Option<GoldPicked>,
    /// The example was created by this request (no earlier weak labels to read back).
    new_example: bool,
}

/// A weak label checked against the task.
impl Service {
    pub async fn ingest(&self, task_name: &str, req: IngestRequest) -> Result<IngestResponse> {
        let started = Instant::now();
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

        let started = record_phase("lookup", started);
        // Embed the new texts before the transaction: nothing is written if the model refuses.
        let fresh: Vec<usize> = (0..parsed.len())
            .filter(|&i| !existing.contains_key(parsed[i].id))
            .collect();
        let texts: Vec<&str> = fresh.iter().map(|&i| parsed[i].text).collect();
        let encoded = self
            .model
            .tokenize_for_task(&texts, task.settings.long_texts, &|n| {
                format!("examples[{}].text", fresh[n])
            })?;
        let (model, encoder_id) = self.task_encoder(&task).await?;
        let started = record_phase("tokenize", started);
        let vectors = self.model.worker.try_embed(&model, encoded).await?;
        let started = record_phase("embed", started);
        let embedding_of: HashMap<usize, Vec<u8>> = fresh
            .iter()
            .copied()
            .zip(vectors.iter().map(|v| f32s_to_bytes(v)))
            .collect();

        let version = self.active_version(&task).await?;
        let pipeline = version.as_ref().and_then(|v| v.pipeline.as_ref());
        let (ids, created) = super::retry::on_conflict("ingest", || {
            self.write_batch(
                &task,
                &parsed,
                &existing,
                &embedding_of,
                &encoder_id,
                pipeline,
            )
        })
        .await?;
        let n_new = created.iter().filter(|c| **c).count() as i64;
        metrics::counter!("sw2s_examples_ingested_total").increment(n_new as u64);
        record_phase("write", started);

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

    /// Writes a validated batch in one transaction under the task's write lock, rows in
    /// id order; returns each example's row id and whether it was created, in request order.
    async fn write_batch(
        &self,
        task: &TaskCtx,
        parsed: &[Parsed<'_>],
        existing: &HashMap<String, (i64, String)>,
        embedding_of: &HashMap<usize, Vec<u8>>,
        encoder_id: &str,
        pipeline: Option<&PipelineFit>,
    ) -> Result<(Vec<i64>, Vec<bool>)> {
        let now = now_ms();
        let mut order: Vec<usize> = (0..parsed.len()).collect();
        order.sort_by_key(|&i| parsed[i].id);
        let mut tx = self.store.begin_task_write(task.id).await?;
        let mut ids = vec![0; parsed.len()];
        let mut created = vec![false; parsed.len()];
        for i in order {
            let p = &parsed[i];
            let (id, is_new) = match existing.get(p.id) {
                Some((id, _)) => (*id, false),
                None => {
                    let inserted = examples::insert(
                        tx.conn(),
                        task.id,
                        p.id,
                        p.text,
                        embedding_of.get(&i).map(|v| v.as_slice()),
                        Some(encoder_id),
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
            let labels = Labels {
                weak: &p.weak,
                gold: p.gold,
                picked: p.picked,
                new_example: is_new,
            };
            self.write_labels(&mut tx, task, pipeline, id, labels, now)
                .await?;
            ids[i] = id;
            created[i] = is_new;
        }
        let n_new = created.iter().filter(|c| **c).count() as i64;
        crate::store::tasks::add_new_examples(tx.conn(), task.id, n_new).await?;
        tx.commit().await?;
        Ok((ids, created))
    }

    /// Upserts weak labels (recomputing the weak aggregate with the task's source model) and
    /// sets the gold label.
    async fn write_labels(
        &self,
        tx: &mut crate::store::WriteTx,
        task: &TaskCtx,
        pipeline: Option<&PipelineFit>,
        example_id: i64,
        labels: Labels<'_>,
        now: i64,
    ) -> Result<()> {
        let Labels {
            weak,
            gold,
            picked,
            new_example,
        } = labels;
        for w in weak {
            let scores = dist_json(&w.scores);
            let row = weak_labels::NewWeakLabel {
                source: &w.source,
                label: w.label.map(|l| l as i64),
                vote: argmax(&w.scores).map_or(-1, |l| l as i64),
                scores: &scores,
                confidence: w.confidence as f64,
            };
            weak_labels::upsert_weak_label(tx.conn(), example_id, &row, now).await?;
        }
        if !weak.is_empty() {
            // A new example has exactly the labels just written (sources are distinct);
            // an existing one may have others from earlier requests.
            let all = if new_example {
                let mut rows: Vec<weak_labels::WeakLabelRow> = weak
                    .iter()
                    .map(|w| weak_labels::WeakLabelRow {
                        example_id,
                        source: w.source.clone(),
                        label: w.label.map(|l| l as i64),
                        scores: dist_json(&w.scores),
                        confidence: w.confidence as f64,
                        updated_at: now,
                    })
                    .collect();
                rows.sort_by(|a, b| a.source.cmp(&b.source));
                rows
            } else {
                weak_labels::weak_labels(tx.conn(), &[example_id]).await?
            };
            let (agg, label) = stored_aggregate(aggregate_of(pipeline, &all, task.k()).as_deref());
            examples::set_weak_aggregate(tx.conn(), example_id, agg.as_deref(), label, now).await?;
        }
        if let Some(g) = gold {
            let picked = picked.map(GoldPicked::as_str);
            examples::set_gold(tx.conn(), example_id, g as i64, picked, now).await?;
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
            return Err(Error::invalid("empty_batch", "weak_labels is empty"));
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
        super::retry::on_conflict("weak labels", || async {
            let mut tx = self.store.begin_task_write(task.id).await?;
            let labels = Labels {
                weak: &weak,
                gold: None,
                picked: None,
                new_example: false,
            };
            self.write_labels(&mut tx, &task, pipeline, id, labels, now_ms())
                .await?;
            Ok(tx.commit().await?)
        })
        .await?;
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
        super::retry::on_conflict("gold label", || async {
            let mut tx = self.store.begin_task_write(task.id).await?;
            let labels = Labels {
                weak: &[],
                gold: Some(gold),
                picked: req.picked,
                new_example: false,
            };
            self.write_labels(&mut tx, &task, None, id, labels, now_ms())
                .await?;
            Ok(tx.commit().await?)
        })
        .await?;
        self.settle(&task, &[id], "gold label").await?;
        Ok(task)
    }
}

/// A weak aggregate as the examples table stores it: the distribution (JSON) and its argmax.
pub fn stored_aggregate(agg: Option<&[f32]>) -> (Option<String>, Option<i64>) {
    (agg.map(dist_json), agg.and_then(argmax).map(|l| l as i64))
}

/// The weak aggregate of an example's stored weak labels: the source model in use, or the
/// confidence-weighted mean without one.
pub fn aggregate_of(
    pipeline: Option<&PipelineFit>,
    rows: &[weak_labels::WeakLabelRow],
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
