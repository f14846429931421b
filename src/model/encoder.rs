//! A model on disk (a BERT-family directory or a GGUF decoder LM): its tokenizer, its
//! weights and what `/info` reports about them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};
use utoipa::ToSchema;

use super::backbone::Backbone;
use super::bert::{load_weights, Bert, BertConfig, Pass};
use super::decoder::DecoderLm;
use super::packed_decoder::DecoderPooling;

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
    /// Embed the whole text: cut it into windows of the model's length that overlap by an
    /// eighth, embed each and average them weighted by their tokens (re-normalised when the
    /// model's features are unit vectors). A text that fits is embedded exactly as under
    /// `truncate`.
    Chunk,
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
    /// sha256 of the weights file (`model.safetensors` or the `.gguf`).
    pub sha256: String,
    pub layers: usize,
    /// `bert` (the trainable encoder) or the decoder's GGUF architecture (`llama`, `gemma3`).
    #[serde(default = "default_family")]
    pub family: String,
    /// How a text's features are made: `mean` (of the last layer over its tokens) or
    /// `last_token` (the final hidden state of its last token).
    #[serde(default = "default_pooling")]
    pub pooling: String,
    /// Weight precision: `F32`, or the GGUF quantisation (e.g. `Q4_1`, `Q4_K_M`).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Job modes the model supports: `head` always; `full` only for the trainable BERT.
    #[serde(default = "default_jobs")]
    pub jobs: Vec<String>,
}

fn default_family() -> String {
    "bert".into()
}

fn default_pooling() -> String {
    "mean".into()
}

fn default_dtype() -> String {
    "F32".into()
}

fn default_jobs() -> Vec<String> {
    vec!["head".into(), "full".into()]
}

impl ModelInfo {
    /// What identifies the features this model makes: the weights' sha256, and the pooling
    /// when a decoder is pooled otherwise than by its last token (stored embeddings, head
    /// versions and the experiment's cache are keyed by it).
    pub fn features_id(&self) -> String {
        let decoder = matches!(self.family.as_str(), "llama" | "gemma3");
        if decoder && self.pooling == "mean" {
            format!("{}:mean", self.sha256)
        } else {
            self.sha256.clone()
        }
    }

    /// Whether `full` jobs (fine-tuning the encoder) can run on this model.
    pub fn trainable(&self) -> bool {
        self.jobs.iter().any(|j| j == "full")
    }
}

/// One tokenized text, unpadded.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// The text was longer than the model's maximum and was cut.
    pub truncated: bool,
    /// Under `Overlong::Chunk`, the windows after the first (each with its special tokens);
    /// the text's features are the token-weighted mean over all its windows.
    pub overflow: Vec<Encoded>,
}

impl Encoded {
    /// Tokens in the first window.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Tokens over all windows: what embedding the text costs.
    pub fn total_len(&self) -> usize {
        self.ids.len() + self.overflow.iter().map(|w| w.ids.len()).sum::<usize>()
    }

    /// Whether the text is over the model's window (cut, or read in several windows).
    pub fn over_window(&self) -> bool {
        self.truncated || !self.overflow.is_empty()
    }

    /// Every window of the text, the first one first.
    pub fn windows(&self) -> impl Iterator<Item = &Encoded> {
        std::iter::once(self).chain(self.overflow.iter())
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
        if !self.overflow.is_empty() {
            self.overflow.clear();
            self.truncated = true;
        }
    }
}

/// Tokens a window repeats from the one before it under `Overlong::Chunk` (an eighth of the
/// model's length, and always fewer than the window holds besides its special tokens).
fn chunk_stride(max_length: usize) -> usize {
    (max_length / 8).min(max_length.saturating_sub(8) / 2)
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
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", path.display()))?;
        Self::new(tokenizer, max_length)
    }

    /// Wraps a tokenizer built elsewhere (from GGUF metadata).
    pub fn new(mut tokenizer: Tokenizer, max_length: usize) -> anyhow::Result<Self> {
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                // Windows after the first (kept only under `Overlong::Chunk`) repeat the
                // previous window's last eighth, so no sentence is only ever seen cut.
                stride: chunk_stride(max_length),
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
                            .map(|o| o.len().saturating_sub(2 + chunk_stride(self.max_length)))
                            .sum::<usize>();
                    return Err(OverlongText {
                        index,
                        tokens,
                        max: self.max_length,
                    }
                    .into());
                }
                let overflow = if overlong == Overlong::Chunk {
                    enc.get_overflowing()
                        .iter()
                        .map(|o| Encoded {
                            ids: o.get_ids().to_vec(),
                            type_ids: o.get_type_ids().to_vec(),
                            truncated: false,
                            overflow: vec![],
                        })
                        .collect()
                } else {
                    vec![]
                };
                Ok(Encoded {
                    ids: enc.get_ids().to_vec(),
                    type_ids: enc.get_type_ids().to_vec(),
                    truncated: truncated && overlong != Overlong::Chunk,
                    overflow,
                })
            })
            .collect()
    }
}

/// The base model: the weights every task starts from.
pub struct Encoder {
    pub backbone: Arc<Backbone>,
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
            "bert" | "roberta" | "mpnet" | "distilbert_as_bert"
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
/// when present, else the `positions` its position table can number.
pub fn max_length(dir: &Path, positions: usize) -> usize {
    let st = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("max_seq_length").and_then(|m| m.as_u64()));
    match st {
        Some(n) => (n as usize).min(positions),
        None => positions,
    }
}

/// Positions a BERT-family model can number (RoBERTa-family tables start after the padding
/// position).
fn bert_positions(config: &BertConfig) -> usize {
    config.max_position_embeddings - config.position_offset() as usize
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

/// The file that makes `path` a decoder LM: `path` itself when it is a `.gguf` file, or the
/// one `.gguf` file in a directory without `config.json`.
pub fn gguf_file(path: &Path) -> anyhow::Result<Option<PathBuf>> {
    let is_gguf = |p: &Path| {
        p.extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
    };
    if path.is_file() {
        return Ok(is_gguf(path).then(|| path.to_path_buf()));
    }
    if path.join("config.json").is_file() || !path.is_dir() {
        return Ok(None);
    }
    let found: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_gguf(p))
        .collect();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.into_iter().next()),
        n => bail!(
            "{} holds {n} .gguf files; pass the one to serve as --model-dir FILE",
            path.display()
        ),
    }
}

fn model_id(dir: &Path, fallback: &Path) -> String {
    std::fs::read_to_string(dir.join(super::fetch::MODEL_ID_FILE))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            fallback
                .file_stem()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "model".into())
        })
}

impl Encoder {
    /// Loads a BERT-family directory, a `.gguf` decoder LM, or a directory holding one.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Self::load_pooled(path, None)
    }

    /// `load`, with a decoder LM's pooling chosen (`None`: its default, the last token).
    /// Encoders pool as their own configuration says, so a pooling given for one is refused.
    pub fn load_pooled(path: &Path, pooling: Option<DecoderPooling>) -> anyhow::Result<Self> {
        Self::load_on(path, pooling, &Device::Cpu)
    }

    /// `load_pooled` onto `device` (see `device.rs` for what runs where).
    pub fn load_on(
        path: &Path,
        pooling: Option<DecoderPooling>,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let device = device.clone();
        match (gguf_file(path)?, pooling) {
            (Some(file), pooling) => Self::load_decoder(&file, pooling.unwrap_or_default(), device),
            (None, None) => Self::load_bert_dir(path, device),
            (None, Some(p)) => bail!(
                "--decoder-pooling {} applies to decoder LMs (.gguf); {} is an encoder, pooled \
                 as its sentence-transformers configuration says",
                p.as_str(),
                path.display()
            ),
        }
    }

    fn load_decoder(file: &Path, pooling: DecoderPooling, device: Device) -> anyhow::Result<Self> {
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let header = super::decoder::read_header(file)?;
        // The tokenizer reads the header's metadata before the model takes the header over.
        let gguf_tokenizer = if dir.join("tokenizer.json").is_file() {
            None
        } else {
            Some(super::gguf_tokenizer::from_gguf(&header.content)?)
        };
        let lm = DecoderLm::load(file, header, &device, pooling)?;
        let max_length = lm.context_length.min(super::decoder::DEFAULT_MAX_TOKENS);
        let tokenizer = match gguf_tokenizer {
            Some(tokenizer) => TextTokenizer::new(tokenizer, max_length)?,
            None => TextTokenizer::load(&dir, max_length)?,
        };
        let sha256 = crate::fsio::sha256_file(file)?;
        Ok(Self {
            info: ModelInfo {
                model_id: model_id(&dir, file),
                dims: lm.hidden,
                max_length,
                sha256,
                layers: lm.layers,
                family: lm.architecture.clone(),
                pooling: pooling.as_str().into(),
                dtype: if lm.dequantized {
                    format!("{} (dequantized to F32)", lm.quantisation)
                } else {
                    lm.quantisation.clone()
                },
                jobs: vec!["head".into()],
            },
            backbone: Arc::new(Backbone::Decoder(lm)),
            tokenizer: Arc::new(tokenizer),
            dir,
            device,
        })
    }

    /// DistilBERT, XLM-RoBERTa and ModernBERT through candle-transformers (head jobs only).
    fn load_ct_encoder(
        dir: &Path,
        raw: serde_json::Value,
        kind: &str,
        device: Device,
    ) -> anyhow::Result<Self> {
        let weights = dir.join("model.safetensors");
        let tensors = super::bert::load_f32(&weights, &device)
            .with_context(|| format!("loading {}", weights.display()))?;
        let positions = raw["max_position_embeddings"].as_u64().unwrap_or(512) as usize;
        // XLM-RoBERTa numbers positions after the padding index.
        let positions = if kind == "xlm-roberta" {
            positions.saturating_sub(raw["pad_token_id"].as_u64().unwrap_or(1) as usize + 1)
        } else {
            positions
        };
        let max_length = max_length(dir, positions);
        let tokenizer = TextTokenizer::load(dir, max_length)?;
        let sha256 = crate::fsio::sha256_file(&weights)?;
        let encoder = super::ct_encoder::CtEncoder::load(dir, raw, tensors, &device)
            .with_context(|| format!("building the {kind} encoder from {}", dir.display()))?;
        Ok(Self {
            info: ModelInfo {
                model_id: model_id(dir, dir),
                dims: encoder.hidden,
                max_length,
                sha256,
                layers: encoder.layers,
                family: kind.to_string(),
                pooling: encoder.pooling.as_str().to_string(),
                dtype: default_dtype(),
                jobs: vec!["head".into()],
            },
            backbone: Arc::new(Backbone::Library(encoder)),
            tokenizer: Arc::new(tokenizer),
            dir: dir.to_path_buf(),
            device,
        })
    }

    fn load_bert_dir(dir: &Path, device: Device) -> anyhow::Result<Self> {
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            if !dir.join(file).is_file() {
                bail!(
                    "{} has no {file}: a model directory needs config.json, model.safetensors and \
                     tokenizer.json (a BERT-family model), or a .gguf file (a decoder LM)",
                    dir.display()
                );
            }
        }
        let raw: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("config.json"))
                .with_context(|| format!("reading {}", dir.join("config.json").display()))?,
        )
        .with_context(|| format!("parsing {}", dir.join("config.json").display()))?;
        if let Some(kind) = raw["model_type"]
            .as_str()
            .filter(|k| super::ct_encoder::MODEL_TYPES.contains(k))
        {
            let kind = kind.to_string();
            return Self::load_ct_encoder(dir, raw, &kind, device);
        }
        let config = read_config(dir)?;
        let max_length = max_length(dir, bert_positions(&config));
        let tokenizer = TextTokenizer::load(dir, max_length)?;
        let weights = dir.join("model.safetensors");
        let sha256 = crate::fsio::sha256_file(&weights)?;
        let bert = load_bert(&config, &weights, None, &device)?;
        let layers = bert.num_layers();
        Ok(Self {
            info: ModelInfo {
                model_id: model_id(dir, dir),
                dims: config.hidden_size,
                max_length,
                sha256,
                layers,
                family: config.model_type.clone().unwrap_or_else(default_family),
                pooling: default_pooling(),
                dtype: default_dtype(),
                jobs: default_jobs(),
            },
            backbone: Arc::new(Backbone::from_bert(bert, &device)?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::write_tiny_bert;

    /// The tiny BERT's character-level tokenizer, cut at 16 tokens (stride 2).
    fn tiny() -> (tempfile::TempDir, TextTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), 1).unwrap();
        let tokenizer = TextTokenizer::load(dir.path(), 16).unwrap();
        (dir, tokenizer)
    }

    const LONG: &str = "abcdefghij klmnopqrst uvwxyzabcd efghijklmn";

    #[test]
    fn chunk_keeps_every_token_in_overlapping_windows() {
        let (_dir, tokenizer) = tiny();
        let whole = TextTokenizer::load(_dir.path(), 64).unwrap();
        let all = &whole.tokenize(&[LONG], Overlong::Truncate).unwrap()[0];
        assert!(!all.truncated && all.len() == 42, "{}", all.len());
        let cut = &tokenizer.tokenize(&[LONG], Overlong::Truncate).unwrap()[0];
        let chunked = &tokenizer.tokenize(&[LONG], Overlong::Chunk).unwrap()[0];
        assert!(cut.truncated && cut.overflow.is_empty());
        assert!(!chunked.truncated);
        assert_eq!(
            chunked.ids, cut.ids,
            "the first window is the truncated text"
        );
        let stride = chunk_stride(16);
        assert_eq!(stride, 2);
        // Each window is [CLS] … [SEP] within the limit; dropping the repeated `stride`
        // tokens, the windows' contents put together are the whole text's.
        let mut content: Vec<u32> = vec![];
        for (n, w) in chunked.windows().enumerate() {
            assert!(w.len() <= 16 && w.ids[0] == 2 && *w.ids.last().unwrap() == 3);
            let inner = &w.ids[1..w.len() - 1];
            content.extend_from_slice(if n == 0 { inner } else { &inner[stride..] });
        }
        assert_eq!(content, all.ids[1..all.len() - 1]);
        assert_eq!(
            chunked.total_len(),
            chunked.windows().map(|w| w.len()).sum::<usize>()
        );
        // A text that fits is the same under every mode.
        let short = &tokenizer.tokenize(&["abc"], Overlong::Chunk).unwrap()[0];
        assert!(short.overflow.is_empty() && !short.truncated && short.len() == 5);
    }

    #[test]
    fn refuse_counts_the_whole_text() {
        let (_dir, tokenizer) = tiny();
        let err = tokenizer
            .tokenize(&["ab", LONG], Overlong::Refuse)
            .unwrap_err()
            .downcast::<OverlongText>()
            .unwrap();
        assert_eq!((err.index, err.tokens, err.max), (1, 42, 16));
    }

    #[test]
    fn a_chunked_text_is_the_mean_of_its_windows() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_bert(dir.path(), 3).unwrap();
        let encoder = Encoder::load(dir.path()).unwrap();
        let tokenizer = TextTokenizer::load(dir.path(), 16).unwrap();
        let chunked = &tokenizer.tokenize(&[LONG], Overlong::Chunk).unwrap()[0];
        // Each window on its own (the first without the windows after it).
        let owned: Vec<Encoded> = chunked
            .windows()
            .map(|w| Encoded {
                overflow: vec![],
                ..w.clone()
            })
            .collect();
        let windows: Vec<&Encoded> = owned.iter().collect();
        let each = encoder.backbone.embed(&windows).unwrap();
        let parts: Vec<(Vec<f32>, usize)> = each
            .into_iter()
            .zip(windows.iter().map(|w| w.len()))
            .collect();
        let want = super::super::backbone::pool_windows(&parts);
        let got = encoder.backbone.embed(&[chunked]).unwrap();
        assert_eq!(got.len(), 1);
        let norm: f32 = got[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        for (a, b) in got[0].iter().zip(&want) {
            assert!((a - b).abs() < 1e-5);
        }
        // Beside a short text in the same batch, each keeps its own features.
        let short = &tokenizer.tokenize(&["abc"], Overlong::Chunk).unwrap()[0];
        let both = encoder.backbone.embed(&[short, chunked]).unwrap();
        let alone = encoder.backbone.embed(&[short]).unwrap();
        for (a, b) in both[0].iter().zip(&alone[0]) {
            assert!((a - b).abs() < 1e-5);
        }
        for (a, b) in both[1].iter().zip(&got[0]) {
            assert!((a - b).abs() < 1e-5);
        }
    }
}
