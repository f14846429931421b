//! Embeddings and predictions for texts that are not stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Service;
use crate::error::{Error, Result};
use crate::method::pik::PikSource;
use crate::method::rule::{decide, DecisionSource, Inputs, StrongSide};
use crate::method::weak::argmax;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextsRequest {
    pub texts: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmbedResponse {
    /// One L2-normalised vector per text, in order.
    pub embeddings: Vec<Vec<f32>>,
    pub model: String,
    pub dims: usize,
    /// Indexes of texts cut to the model's maximum length.
    pub truncated: Vec<usize>,
    /// Indexes of texts over the model's maximum length embedded whole, as the mean of their
    /// windows (`--on-overlong chunk`).
    #[serde(default)]
    pub chunked: Vec<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    /// Null when the task has no trained model version.
    pub label: Option<String>,
    pub scores: Option<BTreeMap<String, f32>>,
    pub p_ik: Option<f32>,
    pub p_ik_source: PikSource,
    /// Would the task's decisions take this prediction for an example with no weak or gold
    /// label? False where the strong model did not pass its gold check (strong selection
    /// off), where its confidence is below the target-precision threshold, or (τ rule) below
    /// τ. Null without a model version.
    pub trusted: Option<bool>,
    /// Why, in words (null without a model version).
    #[serde(default)]
    pub reason: Option<String>,
    pub model_version: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PredictResponse {
    pub predictions: Vec<Prediction>,
    pub model_version: Option<i64>,
    /// Set when there is no prediction to give, saying why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Service {
    fn check_texts(&self, texts: &[String]) -> Result<()> {
        if texts.is_empty() {
            return Err(Error::invalid("empty_batch", "texts is empty"));
        }
        if texts.len() > self.limits.max_batch_examples {
            return Err(Error::TooLarge(format!(
                "a request holds at most {} texts, got {}",
                self.limits.max_batch_examples,
                texts.len()
            )));
        }
        for (i, t) in texts.iter().enumerate() {
            self.check_text(t, &format!("texts[{i}]"))?;
        }
        Ok(())
    }

    pub async fn embed_texts(&self, req: TextsRequest) -> Result<EmbedResponse> {
        self.check_texts(&req.texts)?;
        let texts: Vec<&str> = req.texts.iter().map(|s| s.as_str()).collect();
        let encoded = self.model.tokenize(&texts, &|i| format!("texts[{i}]"))?;
        let indexes = |keep: &dyn Fn(&crate::model::Encoded) -> bool| -> Vec<usize> {
            (0..encoded.len()).filter(|&i| keep(&encoded[i])).collect()
        };
        let truncated = indexes(&|e| e.truncated);
        let chunked = indexes(&|e| !e.overflow.is_empty());
        let embeddings = self
            .model
            .worker
            .try_embed(&self.model.base, encoded)
            .await?;
        Ok(EmbedResponse {
            embeddings,
            model: self.model.info.model_id.clone(),
            dims: self.model.info.dims,
            truncated,
            chunked,
        })
    }

    pub async fn predict(&self, task_name: &str, req: TextsRequest) -> Result<PredictResponse> {
        let task = self.task(task_name).await?;
        self.check_texts(&req.texts)?;
        let Some(version) = self.active_version(&task).await? else {
            return Ok(PredictResponse {
                predictions: req
                    .texts
                    .iter()
                    .map(|_| Prediction {
                        label: None,
                        scores: None,
                        p_ik: None,
                        p_ik_source: PikSource::None,
                        trusted: None,
                        reason: None,
                        model_version: None,
                    })
                    .collect(),
                model_version: None,
                message: Some(format!(
                    "task {:?} has no trained model version yet: send examples with weak or gold labels and run a job (POST /v1/tasks/{}/jobs)",
                    task.name, task.name
                )),
            });
        };
        let texts: Vec<&str> = req.texts.iter().map(|s| s.as_str()).collect();
        let encoded = self
            .model
            .tokenize_for_task(&texts, task.settings.long_texts, &|i| format!("texts[{i}]"))?;
        let embeddings = self
            .model
            .worker
            .try_embed(&version.backbone, encoded)
            .await?;
        // The task's own rule, asked about the prediction alone: what `trusted` promises is
        // what a decision would do.
        let decider = super::decide::Decider::new(&task, Some(&version));
        let predictions = embeddings
            .iter()
            .map(|e| {
                let s = super::decide::score(&version.heads, e);
                let outcome = decide(
                    &Inputs {
                        gold: None,
                        strong: Some(StrongSide {
                            probs: &s.probs,
                            p_ik: s.p_ik,
                            calibrated: s.source == PikSource::Trained,
                        }),
                        weak: None,
                    },
                    &decider.rule,
                );
                Prediction {
                    label: argmax(&s.probs)
                        .and_then(|l| task.label_name(l))
                        .map(String::from),
                    scores: Some(task.named(&s.probs)),
                    p_ik: Some(s.p_ik),
                    p_ik_source: s.source,
                    trusted: Some(outcome.source == DecisionSource::Strong),
                    reason: Some(format!(
                        "as a decision with no weak or gold label: {}",
                        outcome.reason
                    )),
                    model_version: Some(version.version),
                }
            })
            .collect();
        Ok(PredictResponse {
            predictions,
            model_version: Some(version.version),
            message: None,
        })
    }
}
