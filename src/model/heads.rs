//! Per-task heads over the encoder's embedding: the classification head (softmax over the
//! task's labels) and the P(IK) head (is the classifier right on this example?). They are tiny,
//! so inference is plain Rust; training lives in `method::training`.

use std::collections::HashMap;

use anyhow::{bail, Context};
use safetensors::tensor::{Dtype, TensorView};

use crate::method::pik::{pik_features, PikFeatures};

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
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
        let mut push = |name: &str, shape: Vec<usize>, data: &[f32]| {
            tensors.push((
                name.into(),
                shape,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
        };
        let c = &self.classifier;
        push("classifier.weight", vec![c.out_dim, c.in_dim], &c.weight);
        push("classifier.bias", vec![c.out_dim], &c.bias);
        let mut meta = HashMap::new();
        if let Some(p) = &self.pik {
            push(
                "pik.weight",
                vec![p.linear.out_dim, p.linear.in_dim],
                &p.linear.weight,
            );
            push("pik.bias", vec![p.linear.out_dim], &p.linear.bias);
            meta.insert("pik_features".to_string(), p.features.as_str().to_string());
        }
        let views = tensors
            .iter()
            .map(|(name, shape, data)| {
                Ok((
                    name.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), data)?,
                ))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        Ok(safetensors::serialize(views, &Some(meta))?)
    }

    pub fn from_safetensors(bytes: &[u8]) -> anyhow::Result<Self> {
        let (_, metadata) =
            safetensors::SafeTensors::read_metadata(bytes).context("reading heads")?;
        let st = safetensors::SafeTensors::deserialize(bytes).context("reading heads")?;
        let read = |name: &str| -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
            let t = st
                .tensor(name)
                .with_context(|| format!("heads file has no {name}"))?;
            if t.dtype() != Dtype::F32 {
                bail!("{name} is {:?}, expected F32", t.dtype());
            }
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((t.shape().to_vec(), data))
        };
        let linear = |prefix: &str| -> anyhow::Result<LinearHead> {
            let (ws, weight) = read(&format!("{prefix}.weight"))?;
            let (_, bias) = read(&format!("{prefix}.bias"))?;
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
        let pik = if st.names().iter().any(|n| *n == "pik.weight") {
            let features = metadata
                .metadata()
                .as_ref()
                .and_then(|m| m.get("pik_features"))
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
