//! Per-task heads over the encoder's embedding: the classification head (softmax over the
//! task's labels) and the P(IK) head (is the classifier right on this example?). They are tiny,
//! so inference is plain Rust; training lives in `training`, their file in
//! `model::tensor_file`.

use std::collections::HashMap;

use anyhow::{bail, Context};

use super::pik::{pik_features, PikFeatures};
use crate::model::tensor_file;

/// y = W x + b with W stored row-major (out × in).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearHead {
    pub in_dim: usize,
    pub out_dim: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl LinearHead {
    pub fn zeros(in_dim: usize, out_dim: usize) -> Self {
        Self {
            in_dim,
            out_dim,
            weight: vec![0.0; in_dim * out_dim],
            bias: vec![0.0; out_dim],
        }
    }

    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        debug_assert_eq!(x.len(), self.in_dim);
        (0..self.out_dim)
            .map(|o| {
                let row = &self.weight[o * self.in_dim..(o + 1) * self.in_dim];
                row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>() + self.bias[o]
            })
            .collect()
    }
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[derive(Debug, Clone, PartialEq)]
pub struct PikHead {
    pub features: PikFeatures,
    pub linear: LinearHead,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Heads {
    pub classifier: LinearHead,
    /// Absent when there were too few gold labels to train it (the fallback is used).
    pub pik: Option<PikHead>,
}

impl Heads {
    pub fn num_labels(&self) -> usize {
        self.classifier.out_dim
    }

    pub fn probs(&self, embedding: &[f32]) -> Vec<f32> {
        softmax(&self.classifier.forward(embedding))
    }

    /// The trained P(IK) estimate, if this version has a P(IK) head.
    pub fn trained_pik(&self, embedding: &[f32], probs: &[f32]) -> Option<f32> {
        self.pik.as_ref().map(|head| {
            let x = pik_features(head.features, embedding, probs);
            sigmoid(head.linear.forward(&x)[0])
        })
    }

    /// Serialises to safetensors (`classifier.weight`, `classifier.bias`, `pik.weight`,
    /// `pik.bias`), with the P(IK) feature set in the metadata.
    pub fn to_safetensors(&self) -> anyhow::Result<Vec<u8>> {
        let c = &self.classifier;
        let mut tensors = vec![
            (
                "classifier.weight".to_string(),
                vec![c.out_dim, c.in_dim],
                c.weight.clone(),
            ),
            (
                "classifier.bias".to_string(),
                vec![c.out_dim],
                c.bias.clone(),
            ),
        ];
        let mut meta = HashMap::new();
        if let Some(p) = &self.pik {
            let l = &p.linear;
            tensors.push((
                "pik.weight".into(),
                vec![l.out_dim, l.in_dim],
                l.weight.clone(),
            ));
            tensors.push(("pik.bias".into(), vec![l.out_dim], l.bias.clone()));
            meta.insert("pik_features".to_string(), p.features.as_str().to_string());
        }
        tensor_file::write(&tensors, meta)
    }

    pub fn from_safetensors(bytes: &[u8]) -> anyhow::Result<Self> {
        let (tensors, metadata) = tensor_file::read(bytes).context("reading heads")?;
        let linear = |prefix: &str| -> anyhow::Result<LinearHead> {
            let get = |name: String| {
                tensors
                    .get(&name)
                    .cloned()
                    .with_context(|| format!("heads file has no {name}"))
            };
            let (ws, weight) = get(format!("{prefix}.weight"))?;
            let (_, bias) = get(format!("{prefix}.bias"))?;
            if ws.len() != 2 || bias.len() != ws[0] {
                bail!("{prefix}: inconsistent shapes");
            }
            Ok(LinearHead {
                out_dim: ws[0],
                in_dim: ws[1],
                weight,
                bias,
            })
        };
        let classifier = linear("classifier")?;
        let pik = if tensors.contains_key("pik.weight") {
            let features = metadata
                .get("pik_features")
                .map(|s| PikFeatures::parse(s))
                .transpose()?
                .unwrap_or(PikFeatures::EmbeddingAndProbs);
            Some(PikHead {
                features,
                linear: linear("pik")?,
            })
        } else {
            None
        };
        Ok(Heads { classifier, pik })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_through_safetensors() {
        let heads = Heads {
            classifier: LinearHead {
                in_dim: 3,
                out_dim: 2,
                weight: vec![1.0, 2.0, 3.0, -1.0, 0.5, 0.25],
                bias: vec![0.1, -0.1],
            },
            pik: Some(PikHead {
                features: PikFeatures::Probs,
                linear: LinearHead {
                    in_dim: 3,
                    out_dim: 1,
                    weight: vec![0.3, 0.2, 0.1],
                    bias: vec![-0.5],
                },
            }),
        };
        let bytes = heads.to_safetensors().unwrap();
        assert_eq!(Heads::from_safetensors(&bytes).unwrap(), heads);
        let no_pik = Heads { pik: None, ..heads };
        let bytes = no_pik.to_safetensors().unwrap();
        assert_eq!(Heads::from_safetensors(&bytes).unwrap(), no_pik);
    }

    #[test]
    fn linear_and_softmax() {
        let h = LinearHead {
            in_dim: 2,
            out_dim: 2,
            weight: vec![1.0, 0.0, 0.0, 1.0],
            bias: vec![0.0, 1.0],
        };
        assert_eq!(h.forward(&[2.0, 3.0]), vec![2.0, 4.0]);
        let p = softmax(&[0.0, (3.0f32).ln()]);
        assert!((p[0] - 0.25).abs() < 1e-6 && (p[1] - 0.75).abs() < 1e-6);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
