//! A model directory on disk: tokenizer, BERT weights and what `/info` reports about them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};
use utoipa::ToSchema;

use super::bert::{load_weights, Bert, BertConfig, Pass};

/// What to do with a text longer than the model accepts.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Overlong {
    /// Keep the first tokens, as sentence-transformers does.
    Truncate,
    /// Reject the request with 422.
    Refuse,
}

/// What `/info` and model manifests say about the encoder.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ModelInfo {
    /// e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    pub model_id: String,
    /// Embedding dimension.
    pub dims: usize,
    /// Longest input in tokens, special tokens included.
    pub max_length: usize,
    /// sha256 of `model.safetensors`.
    pub sha256: String,
    pub layers: usize,
}

/// One tokenized text, unpadded.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The text was longer than the model's maximum and was cut.
    pub truncated: bool,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Cuts to `max` tokens, keeping the closing special token (training inputs are kept
    /// shorter than the model's limit, for speed).
    pub fn truncate_to(&mut self, max: usize) {
        if self.ids.len() > max && max > 0 {
            let last = *self.ids.last().unwrap_or(&0);
            self.ids.truncate(max);
            self.type_ids.truncate(max);
            self.ids[max - 1] = last;
            self.truncated = true;
        }
    }
}

/// A text over the model's maximum length under `--on-overlong refuse`.
#[derive(Debug, thiserror::Error)]
#[error("text {index} has {tokens} tokens; the model accepts at most {max}")]
pub struct OverlongText {
    pub index: usize,
    pub tokens: usize,
    pub max: usize,
}

pub struct TextTokenizer {
    tokenizer: Tokenizer,
    pub max_length: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, replacing its built-in fixed padding and truncation (all-MiniLM
    /// ships padding to 128) with truncation at the model's real limit; padding is done per
    /// batch to the longest text.
    pub fn load(dir: &Path, max_length: usize) -> anyhow::Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("configuring truncation: {e}"))?;
        Ok(Self {
            tokenizer,
            max_length,
        })
    }

    pub fn tokenize(&self, texts: &[&str], overlong: Overlong) -> anyhow::Result<Vec<Encoded>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        encodings
            .into_iter()
            .enumerate()
            .map(|(index, enc)| {
                let truncated = !enc.get_overflowing().is_empty();
                if truncated && overlong == Overlong::Refuse {
                    let tokens = enc.len()
                        + enc
                            .get_overflowing()
                            .iter()
                            .map(|o| o.len().saturating_sub(2))
                            .sum::<usize>();
                    return Err(OverlongText {
                        index,
                        tokens,
                        max: self.max_length,
                    }
                    .into());
                }
                Ok(Encoded {
                    ids: enc.get_ids().to_vec(),
                    type_ids: enc.get_type_ids().to_vec(),
                    truncated,
                })
            })
            .collect()
    }
}

/// The base encoder: the weights every task starts from.
pub struct Encoder {
    pub bert: Arc<Bert>,
    pub tokenizer: Arc<TextTokenizer>,
    pub info: ModelInfo,
    pub dir: PathBuf,
    pub device: Device,
}

pub fn read_config(dir: &Path) -> anyhow::Result<BertConfig> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: BertConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(kind) = &config.model_type {
        if !matches!(
            kind.as_str(),
            "bert" | "roberta" | "xlm-roberta" | "distilbert_as_bert"
        ) {
            bail!(
                "{}: model_type {kind:?} is not a BERT-family model",
                path.display()
            );
        }
    }
    Ok(config)
}

/// The longest input the model was trained for: sentence-transformers' `max_seq_length`
/// when present, else the position-embedding table size.
pub fn max_length(dir: &Path, config: &BertConfig) -> usize {
    let st = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("max_seq_length").and_then(|m| m.as_u64()));
    match st {
        Some(n) => (n as usize).min(config.max_position_embeddings),
        None => config.max_position_embeddings,
    }
}

/// Builds a BERT from a weights file with the given config (base or fine-tuned weights).
pub fn load_bert(
    config: &BertConfig,
    weights: &Path,
    layers: Option<usize>,
    device: &Device,
) -> anyhow::Result<Bert> {
    let tensors = load_weights(weights, device)
        .with_context(|| format!("loading weights from {}", weights.display()))?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    Bert::load(config, vb, layers)
        .with_context(|| format!("building BERT from {}", weights.display()))
}

impl Encoder {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            if !dir.join(file).is_file() {
                bail!(
                    "{} has no {file}: a model directory needs config.json, model.safetensors and tokenizer.json",
                    dir.display()
                );
            }
        }
        let device = Device::Cpu;
        let config = read_config(dir)?;
        let max_length = max_length(dir, &config);
        let tokenizer = TextTokenizer::load(dir, max_length)?;
        let weights = dir.join("model.safetensors");
        let sha256 = crate::fsio::sha256_file(&weights)?;
        let bert = load_bert(&config, &weights, None, &device)?;
        let model_id = std::fs::read_to_string(dir.join(super::fetch::MODEL_ID_FILE))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_else(|| "model".into())
            });
        Ok(Self {
            info: ModelInfo {
                model_id,
                dims: config.hidden_size,
                max_length,
                sha256,
                layers: bert.num_layers(),
            },
            bert: Arc::new(bert),
            tokenizer: Arc::new(tokenizer),
            dir: dir.to_path_buf(),
            device,
        })
    }
}

/// Pads a batch to its longest member: (ids, type_ids, mask), each (batch, seq) u32.
pub fn batch_tensors(
    batch: &[&Encoded],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let seq = batch.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
    let n = batch.len();
    let mut ids = vec![0u32; n * seq];
    let mut types = vec![0u32; n * seq];
    let mut mask = vec![0u32; n * seq];
    for (row, e) in batch.iter().enumerate() {
        let off = row * seq;
        ids[off..off + e.len()].copy_from_slice(&e.ids);
        types[off..off + e.len()].copy_from_slice(&e.type_ids);
        mask[off..off + e.len()].iter_mut().for_each(|m| *m = 1);
    }
    Ok((
        Tensor::from_vec(ids, (n, seq), device)?,
        Tensor::from_vec(types, (n, seq), device)?,
        Tensor::from_vec(mask, (n, seq), device)?,
    ))
}

/// Embeds one padded batch with `bert` (no gradients).
pub fn embed_batch(
    bert: &Bert,
    batch: &[&Encoded],
    device: &Device,
) -> candle_core::Result<Vec<Vec<f32>>> {
    if batch.is_empty() {
        return Ok(vec![]);
    }
    let (ids, types, mask) = batch_tensors(batch, device)?;
    bert.embed(&ids, &types, &mask, Pass::Inference)?
        .to_vec2::<f32>()
}
