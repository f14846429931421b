//! What a job reads: every example of the task with its embedding (from the encoder the task
//! uses now), gold label, current decision, and weak labels by source.

use std::collections::HashMap;

use futures::TryStreamExt;

use crate::error::{Error, Result};
use crate::method::gold::{judging_gold, GoldPicked, GoldUse};
use crate::method::label_model::Vote;
use crate::method::rule::DecisionSource;
use crate::service::{parse_dist, Service, TaskCtx};
use crate::store::weak_labels;
use crate::store::{bytes_to_f32s, examples, keyset_pages};

const PAGE: i64 = 2000;

/// The task's examples in memory, in id order.
pub(crate) struct TaskData {
    pub k: usize,
    pub dims: usize,
    pub ids: Vec<i64>,
    /// The embedding, when the task's current encoder made it.
    pub embedding: Vec<Option<Vec<f32>>>,
    /// Every gold label: what trains and calibrates.
    pub gold: Vec<Option<usize>>,
    /// The gold labels that judge the stage checks and the class prior (`method::gold`: all
    /// but those picked for review, while enough others remain).
    pub judge: Vec<Option<usize>>,
    pub gold_use: GoldUse,
    /// The current decision.
    pub decision: Vec<Option<(Option<usize>, DecisionSource)>>,
    /// The current decision's confidence.
    pub confidence: Vec<Option<f64>>,
    /// Source names, sorted: the index order of `Vote::source`.
    pub sources: Vec<String>,
    pub votes: Vec<Vec<Vote>>,
}

impl TaskData {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn gold_rows(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.gold[i].is_some())
            .collect()
    }

    /// The rows whose gold judges.
    pub fn judging_rows(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.judge[i].is_some())
            .collect()
    }
}

impl Service {
    pub(crate) async fn task_data(&self, task: &TaskCtx, encoder_id: &str) -> Result<TaskData> {
        let k = task.k();
        let mut data = TaskData {
            k,
            dims: self.model.info.dims,
            ids: vec![],
            embedding: vec![],
            gold: vec![],
            judge: vec![],
            gold_use: GoldUse::default(),
            decision: vec![],
            confidence: vec![],
            sources: vec![],
            votes: vec![],
        };
        let mut source_index: HashMap<String, usize> = HashMap::new();
        let mut named: Vec<Vec<(usize, Vec<f32>, f32)>> = vec![];
        let mut picked: Vec<Option<GoldPicked>> = vec![];
        let pool = self.store.pool();
        let mut after = 0;
        let mut pages = std::pin::pin!(keyset_pages(
            0,
            |r: &examples::TrainingRow| r.id,
            |a| { examples::training_rows_page(pool, task.id, a, PAGE) }
        ));
        while let Some(rows) = pages.try_next().await? {
            let last = rows.last().map_or(after, |r| r.id);
            let votes = weak_labels::weak_labels_between(pool, task.id, after, last).await?;
            let mut by_example: HashMap<i64, Vec<(usize, Vec<f32>, f32)>> = HashMap::new();
            for v in votes {
                let Some(scores) = parse_dist(Some(&v.scores)).filter(|s| s.len() == k) else {
                    continue;
                };
                let next = source_index.len();
                let s = *source_index.entry(v.source.clone()).or_insert(next);
                by_example
                    .entry(v.example_id)
                    .or_default()
                    .push((s, scores, v.confidence as f32));
            }
            after = last;
            for r in rows {
                data.ids.push(r.id);
                data.embedding.push(
                    r.embedding
                        .as_deref()
                        .filter(|_| r.encoder_id.as_deref() == Some(encoder_id))
                        .map(bytes_to_f32s),
                );
                data.gold.push(
                    r.gold_label
                        .and_then(|g| usize::try_from(g).ok())
                        .filter(|&g| g < k),
                );
                picked.push(GoldPicked::parse(r.gold_picked.as_deref()));
                data.decision.push(
                    r.decision_source
                        .as_deref()
                        .and_then(DecisionSource::parse)
                        .map(|s| {
                            (
                                r.decision_label
                                    .and_then(|l| usize::try_from(l).ok())
                                    .filter(|&l| l < k),
                                s,
                            )
                        }),
                );
                data.confidence.push(r.confidence);
                named.push(by_example.remove(&r.id).unwrap_or_default());
            }
        }
        if data.ids.is_empty() {
            return Err(Error::invalid(
                "nothing_to_train_on",
                "the task has no examples: ingest examples with weak or gold labels first",
            ));
        }
        (data.judge, data.gold_use) = judging_gold(&task.labels, &data.gold, &picked);
        // Sources in name order, so indices do not depend on which example came first.
        let mut names: Vec<(String, usize)> = source_index.into_iter().collect();
        names.sort();
        let remap: HashMap<usize, usize> = names
            .iter()
            .enumerate()
            .map(|(new, (_, old))| (*old, new))
            .collect();
        data.sources = names.into_iter().map(|(n, _)| n).collect();
        data.votes = named
            .into_iter()
            .map(|votes| {
                votes
                    .into_iter()
                    .map(|(s, scores, confidence)| Vote {
                        source: remap.get(&s).copied().unwrap_or(usize::MAX),
                        scores,
                        confidence,
                    })
                    .collect()
            })
            .collect();
        Ok(data)
    }
}
