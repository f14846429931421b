//! Encoders run by candle-transformers' own model code (inference only, so `head` jobs):
//! DistilBERT, XLM-RoBERTa and ModernBERT, chosen by `config.json`'s `model_type`, pooled
//! as their sentence-transformers `1_Pooling/config.json` asks (mean by default, or CLS) and
//! scaled to unit length like every sw2s feature.
//!
//! BERT, RoBERTa and MPNet stay on the project's own code (`bert.rs`), which can be trained.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{distilbert, modernbert, xlm_roberta};
use serde_json::Value;

use super::bert::mean_pool_normalize;
use super::encoder::{batch_tensors, Encoded};

/// The `model_type`s this module runs.
pub const MODEL_TYPES: &[&str] = &["distilbert", "xlm-roberta", "modernbert"];

enum Model {
    DistilBert(distilbert::DistilBertModel),
    XlmRoberta(xlm_roberta::XLMRobertaModel),
    ModernBert(modernbert::ModernBert),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }

    /// sentence-transformers' pooling config, when the directory has one.
    pub fn of_dir(dir: &Path) -> Self {
        let config = std::fs::read_to_string(dir.join("1_Pooling").join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        match config {
            Some(c) if c["pooling_mode_cls_token"] == true => Pooling::Cls,
            _ => Pooling::Mean,
        }
    }
}

pub struct CtEncoder {
    model: Model,
    pub model_type: String,
    pub hidden: usize,
    pub layers: usize,
    pub pooling: Pooling,
    device: Device,
}

fn usize_of(config: &Value, keys: &[&str]) -> anyhow::Result<usize> {
    keys.iter()
        .find_map(|k| config[*k].as_u64())
        .map(|v| v as usize)
        .with_context(|| format!("config.json has none of {keys:?}"))
}

/// Fills the names candle's ModernBERT config wants from the ones newer transformers write
/// (`norm_eps`, `rope_parameters`).
fn modernbert_config(mut config: Value) -> Value {
    if let Value::Object(map) = &mut config {
        if !map.contains_key("layer_norm_eps") {
            let eps = map.get("norm_eps").cloned().unwrap_or(Value::from(1e-5));
            map.insert("layer_norm_eps".into(), eps);
        }
        for (key, kind, default) in [
            ("global_rope_theta", "full_attention", 160_000.0),
            ("local_rope_theta", "sliding_attention", 10_000.0),
        ] {
            if !map.contains_key(key) {
                let theta = map
                    .get("rope_parameters")
                    .and_then(|r| r.get(kind))
                    .and_then(|r| r.get("rope_theta"))
                    .cloned()
                    .unwrap_or(Value::from(default));
                map.insert(key.into(), theta);
            }
        }
    }
    config
}

impl CtEncoder {
    pub fn load(
        dir: &Path,
        config: Value,
        weights: HashMap<String, Tensor>,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let model_type = config["model_type"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (model, hidden, layers) = match model_type.as_str() {
            "distilbert" => {
                let c: distilbert::Config = serde_json::from_value(config.clone())
                    .context("reading a DistilBERT config.json")?;
                let vb = VarBuilder::from_tensors(weights, DType::F32, device);
                (
                    Model::DistilBert(distilbert::DistilBertModel::load(vb, &c)?),
                    usize_of(&config, &["dim"])?,
                    usize_of(&config, &["n_layers"])?,
                )
            }
            "xlm-roberta" => {
                // transformers 5 leaves the default out of config.json.
                let mut config = config;
                if config.get("position_embedding_type").is_none() {
                    config["position_embedding_type"] = Value::from("absolute");
                }
                let c: xlm_roberta::Config = serde_json::from_value(config.clone())
                    .context("reading an XLM-RoBERTa config.json")?;
                let weights = strip_prefix(weights, "roberta.");
                let vb = VarBuilder::from_tensors(weights, DType::F32, device);
                (
                    Model::XlmRoberta(xlm_roberta::XLMRobertaModel::new(&c, vb)?),
                    usize_of(&config, &["hidden_size"])?,
                    usize_of(&config, &["num_hidden_layers"])?,
                )
            }
            "modernbert" => {
                let config = modernbert_config(config);
                let c: modernbert::Config = serde_json::from_value(config.clone())
                    .context("reading a ModernBERT config.json")?;
                // candle reads the backbone under `model.` (as in ModernBertForMaskedLM).
                let weights = if weights.keys().any(|k| k.starts_with("model.")) {
                    weights
                } else {
                    weights
                        .into_iter()
                        .map(|(k, v)| (format!("model.{k}"), v))
                        .collect()
                };
                let vb = VarBuilder::from_tensors(weights, DType::F32, device);
                (
                    Model::ModernBert(modernbert::ModernBert::load(vb, &c)?),
                    usize_of(&config, &["hidden_size"])?,
                    usize_of(&config, &["num_hidden_layers"])?,
                )
            }
            other => bail!(
                "{}: model_type {other:?} is not one of {MODEL_TYPES:?}",
                dir.display()
            ),
        };
        Ok(Self {
            model,
            model_type,
            hidden,
            layers,
            pooling: Pooling::of_dir(dir),
            device: device.clone(),
        })
    }

    pub fn embed(&self, batch: &[&Encoded]) -> candle_core::Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(vec![]);
        }
        let (ids, types, mask) = batch_tensors(batch, &self.device)?;
        let states = match &self.model {
            Model::DistilBert(m) => {
                // candle's DistilBERT masks where the mask is non-zero: mark the padding.
                let (b, s) = mask.dims2()?;
                let padding = mask.eq(0u32)?.to_dtype(DType::U8)?.reshape((b, 1, 1, s))?;
                m.forward(&ids, &padding)?
            }
            Model::XlmRoberta(m) => m.forward(&ids, &mask, &types, None, None, None)?,
            Model::ModernBert(m) => m.forward(&ids, &mask)?,
        };
        let pooled = match self.pooling {
            Pooling::Mean => mean_pool_normalize(&states, &mask)?,
            Pooling::Cls => {
                let cls = states.narrow(1, 0, 1)?.squeeze(1)?;
                let norm = cls.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
                cls.broadcast_div(&norm)?
            }
        };
        pooled.to_vec2::<f32>()
    }
}

fn strip_prefix(weights: HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    weights
        .into_iter()
        .map(|(k, v)| (k.strip_prefix(prefix).map(str::to_string).unwrap_or(k), v))
        .collect()
}
