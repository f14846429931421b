//! A BERT encoder written against candle-core, trainable end to end — and MPNet
//! (all-mpnet-base-v2), which is the same layers under other names plus a relative-position
//! bias shared by all layers, RoBERTa-style positions and no token types; candle has no MPNet.
//!
//! Why not `candle_transformers::models::bert`: its LayerNorm uses candle-nn's fused op, which
//! has no backward pass, so every encoder weight silently gets a zero gradient.
//! Here LayerNorm, softmax and GELU use candle's fused ops at inference and our own fused ops
//! with backward passes (`train_ops`) when training; a test holds the two paths to the same
//! output and checks every gradient. Serving goes through `packed` instead.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default)]
    pub model_type: Option<String>,
    /// MPNet's relative-position buckets (32 in mpnet-base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_attention_num_buckets: Option<usize>,
}

impl BertConfig {
    fn is_mpnet(&self) -> bool {
        self.model_type.as_deref() == Some("mpnet")
    }

    /// RoBERTa-family models (and MPNet) number positions from `pad_token_id + 1`.
    pub fn position_offset(&self) -> u32 {
        match self.model_type.as_deref() {
            Some("roberta" | "xlm-roberta" | "mpnet") => self.pad_token_id as u32 + 1,
            _ => 0,
        }
    }
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// Whether a forward pass must be differentiable (and apply dropout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Inference,
    Train,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => candle_core::bail!("unsupported hidden_act {other:?}"),
        })
    }

    fn apply(self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        match self {
            Activation::GeluErf if pass == Pass::Train => {
                x.contiguous()?.apply_op1(super::train_ops::GeluErf)
            }
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }

    /// The same on a slice, in place (the packed path); the erf GELU is `fast_math`'s.
    pub(super) fn apply_in_place(self, xs: &mut [f32]) {
        match self {
            Activation::GeluErf => super::fast_math::gelu_in_place(xs),
            Activation::GeluTanh => {
                let c = (2.0f32 / std::f32::consts::PI).sqrt();
                xs.iter_mut().for_each(|v| {
                    *v = 0.5 * *v * (1.0 + (c * *v * (1.0 + 0.044715 * *v * *v)).tanh())
                });
            }
            Activation::Relu => xs.iter_mut().for_each(|v| *v = v.max(0.0)),
        }
    }
}

pub(super) struct LayerNorm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) eps: f64,
}

impl LayerNorm {
    fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        match pass {
            Pass::Inference => {
                candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
            }
            Pass::Train => x.contiguous()?.apply_op3(
                &self.weight,
                &self.bias,
                super::train_ops::LayerNorm {
                    eps: self.eps as f32,
                },
            ),
        }
    }
}

fn dropout(x: &Tensor, p: f64, pass: Pass) -> Result<Tensor> {
    if pass == Pass::Train && p > 0.0 {
        candle_nn::ops::dropout(x, p as f32)
    } else {
        Ok(x.clone())
    }
}

pub(super) struct Embeddings {
    pub(super) word: Embedding,
    pub(super) position: Embedding,
    /// None for MPNet, which has no token types.
    pub(super) token_type: Option<Embedding>,
    pub(super) position_offset: u32,
    pub(super) norm: LayerNorm,
    dropout: f64,
}

impl Embeddings {
    fn load(c: &BertConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            word: candle_nn::embedding(c.vocab_size, c.hidden_size, vb.pp("word_embeddings"))?,
            position: candle_nn::embedding(
                c.max_position_embeddings,
                c.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_type: if c.is_mpnet() {
                None
            } else {
                Some(candle_nn::embedding(
                    c.type_vocab_size,
                    c.hidden_size,
                    vb.pp("token_type_embeddings"),
                )?)
            },
            position_offset: c.position_offset(),
            norm: LayerNorm::load(c.hidden_size, c.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: c.hidden_dropout_prob,
        })
    }

    fn forward(&self, ids: &Tensor, type_ids: &Tensor, pass: Pass) -> Result<Tensor> {
        let (_, seq) = ids.dims2()?;
        // Padding is on the right and masked, so real tokens get the positions HF gives them.
        let positions = Tensor::arange(
            self.position_offset,
            self.position_offset + seq as u32,
            ids.device(),
        )?;
        let mut x = self.word.forward(ids)?;
        if let Some(token_type) = &self.token_type {
            x = x.add(&token_type.forward(type_ids)?)?;
        }
        let x = x.broadcast_add(&self.position.forward(&positions)?)?;
        dropout(&self.norm.forward(&x, pass)?, self.dropout, pass)
    }
}

pub(super) struct Layer {
    pub(super) query: Linear,
    pub(super) key: Linear,
    pub(super) value: Linear,
    pub(super) attn_out: Linear,
    pub(super) attn_norm: LayerNorm,
    pub(super) intermediate: Linear,
    pub(super) output: Linear,
    pub(super) out_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    pub(super) act: Activation,
    hidden_dropout: f64,
    attn_dropout: f64,
}

impl Layer {
    fn load(c: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = c.hidden_size;
        let att = vb.pp("attention");
        // MPNet: attention.attn.{q,k,v,o} and attention.LayerNorm; BERT: attention.self.*
        // and attention.output.*.
        let (q, k, v, o, norm) = if c.is_mpnet() {
            let a = att.pp("attn");
            (
                a.pp("q"),
                a.pp("k"),
                a.pp("v"),
                a.pp("o"),
                att.pp("LayerNorm"),
            )
        } else {
            let (a, out) = (att.pp("self"), att.pp("output"));
            (
                a.pp("query"),
                a.pp("key"),
                a.pp("value"),
                out.pp("dense"),
                out.pp("LayerNorm"),
            )
        };
        Ok(Self {
            query: candle_nn::linear(h, h, q)?,
            key: candle_nn::linear(h, h, k)?,
            value: candle_nn::linear(h, h, v)?,
            attn_out: candle_nn::linear(h, h, o)?,
            attn_norm: LayerNorm::load(h, c.layer_norm_eps, norm)?,
            intermediate: candle_nn::linear(
                h,
                c.intermediate_size,
                vb.pp("intermediate").pp("dense"),
            )?,
            output: candle_nn::linear(c.intermediate_size, h, vb.pp("output").pp("dense"))?,
            out_norm: LayerNorm::load(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: c.num_attention_heads,
            head_dim: h / c.num_attention_heads,
            act: Activation::parse(&c.hidden_act)?,
            hidden_dropout: c.hidden_dropout_prob,
            attn_dropout: c.attention_probs_dropout_prob,
        })
    }

    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        x.reshape((b, s, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `mask_bias` is (batch, 1, 1, seq): 0 for tokens, a large negative value for padding;
    /// `position_bias` (1, heads, seq, seq) is MPNet's relative-position bias.
    fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        position_bias: Option<&Tensor>,
        pass: Pass,
    ) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let q = self.split_heads(&self.query.forward(x)?)?;
        let k = self.split_heads(&self.key.forward(x)?)?;
        let v = self.split_heads(&self.value.forward(x)?)?;
        let mut scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?;
        if let Some(bias) = position_bias {
            scores = scores.broadcast_add(bias)?;
        }
        let scores = scores.broadcast_add(mask_bias)?;
        let probs = match pass {
            Pass::Inference => candle_nn::ops::softmax_last_dim(&scores)?,
            Pass::Train => scores.contiguous()?.apply_op1(super::train_ops::Softmax)?,
        };
        let probs = dropout(&probs, self.attn_dropout, pass)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))?;
        let attn = dropout(&self.attn_out.forward(&ctx)?, self.hidden_dropout, pass)?;
        let x = self.attn_norm.forward(&(attn + x)?, pass)?;
        let inner = self.act.apply(&self.intermediate.forward(&x)?, pass)?;
        let out = dropout(&self.output.forward(&inner)?, self.hidden_dropout, pass)?;
        self.out_norm.forward(&(out + x)?, pass)
    }
}

pub struct Bert {
    pub(super) embeddings: Embeddings,
    pub(super) layers: Vec<Layer>,
    /// MPNet: (buckets, heads), shared by every layer.
    pub(super) relative_bias: Option<Embedding>,
    pub config: BertConfig,
}

/// MPNet's (T5-style, bidirectional) bucket of a relative position `memory − context`.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = (num_buckets / 2) as i64;
    let n = -relative;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        let scaled = ((n as f64 / max_exact as f64).ln()
            / (max_distance as f64 / max_exact as f64).ln()
            * (half - max_exact) as f64) as i64;
        (max_exact + scaled).min(half - 1)
    };
    bucket as u32
}

impl Bert {
    /// Builds the model from `vb` (names without a `bert.` prefix, see [`normalize_names`]).
    /// `layers` keeps only the first N encoder layers (weak models in the experiment).
    pub fn load(config: &BertConfig, vb: VarBuilder, layers: Option<usize>) -> Result<Self> {
        if config.hidden_size % config.num_attention_heads != 0 {
            candle_core::bail!("hidden_size is not a multiple of num_attention_heads");
        }
        let n = layers
            .unwrap_or(config.num_hidden_layers)
            .min(config.num_hidden_layers);
        let enc = vb.pp("encoder").pp("layer");
        let relative_bias = if config.is_mpnet() {
            Some(candle_nn::embedding(
                config.relative_attention_num_buckets.unwrap_or(32),
                config.num_attention_heads,
                vb.pp("encoder").pp("relative_attention_bias"),
            )?)
        } else {
            None
        };
        Ok(Self {
            embeddings: Embeddings::load(config, vb.pp("embeddings"))?,
            layers: (0..n)
                .map(|i| Layer::load(config, enc.pp(i)))
                .collect::<Result<_>>()?,
            relative_bias,
            config: config.clone(),
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token states (batch, seq, hidden). `mask` is (batch, seq) with 1 for real tokens.
    pub fn forward(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
        pass: Pass,
    ) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let mask_bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, s))?;
        let position_bias = match &self.relative_bias {
            Some(table) => {
                let buckets = self.config.relative_attention_num_buckets.unwrap_or(32);
                let idx: Vec<u32> = (0..s as i64)
                    .flat_map(|q| {
                        (0..s as i64).map(move |m| relative_position_bucket(m - q, buckets, 128))
                    })
                    .collect();
                let idx = Tensor::from_vec(idx, (s, s), ids.device())?;
                // (s, s, heads) -> (1, heads, s, s)
                Some(table.forward(&idx)?.permute((2, 0, 1))?.unsqueeze(0)?)
            }
            None => None,
        };
        let mut x = self.embeddings.forward(ids, type_ids, pass)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask_bias, position_bias.as_ref(), pass)?;
        }
        Ok(x)
    }

    /// Mean pooling over real tokens, then L2 normalisation: sentence-transformers' recipe.
    pub fn embed(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
        pass: Pass,
    ) -> Result<Tensor> {
        let states = self.forward(ids, type_ids, mask, pass)?;
        mean_pool_normalize(&states, mask)
    }
}

pub fn mean_pool_normalize(states: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
    let summed = states.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norm)
}

/// Maps checkpoint names to ours: strips a `bert.` prefix and renames old-style LayerNorm
/// `gamma`/`beta`. Pooler and MLM-head weights are dropped.
pub fn normalize_names(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .filter_map(|(name, t)| {
            let name = name.strip_prefix("bert.").unwrap_or(&name).to_string();
            if !(name.starts_with("embeddings.") || name.starts_with("encoder.")) {
                return None;
            }
            let name = if let Some(stem) = name.strip_suffix(".gamma") {
                format!("{stem}.weight")
            } else if let Some(stem) = name.strip_suffix(".beta") {
                format!("{stem}.bias")
            } else {
                name
            };
            Some((name, t))
        })
        .collect()
}

/// Loads and normalises the weights of a safetensors file into F32 tensors.
pub fn load_weights(path: &std::path::Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    Ok(normalize_names(load_f32(path, device)?))
}

/// Every tensor of a safetensors file as F32, under its own name.
pub fn load_f32(path: &std::path::Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)?
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket;

    #[test]
    fn mpnet_buckets_match_transformers() {
        // transformers' MPNetEncoder.relative_position_bucket on the same positions.
        let rel = [
            -200, -130, -20, -9, -8, -7, -1, 0, 1, 7, 8, 9, 20, 127, 128, 500,
        ];
        let want = [15, 15, 10, 8, 8, 7, 1, 0, 17, 23, 24, 24, 26, 31, 31, 31];
        let got: Vec<u32> = rel
            .iter()
            .map(|&r| relative_position_bucket(r, 32, 128))
            .collect();
        assert_eq!(got, want);
    }
}
