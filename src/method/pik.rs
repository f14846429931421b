//! P(IK), "probability I know" (Kadavath et al. 2022): the chance that the strong model's
//! prediction is correct, from the embedding and features of the class probabilities.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Inputs of the P(IK) head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PikFeatures {
    /// Only the probability features (max, margin, confidence): 3 inputs, hard to overfit.
    Probs,
    /// The embedding and the probability features.
    EmbeddingAndProbs,
}

impl PikFeatures {
    pub fn as_str(self) -> &'static str {
        match self {
            PikFeatures::Probs => "probs",
            PikFeatures::EmbeddingAndProbs => "embedding_and_probs",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "probs" => Ok(PikFeatures::Probs),
            "embedding_and_probs" => Ok(PikFeatures::EmbeddingAndProbs),
            other => anyhow::bail!("unknown P(IK) feature set {other:?}"),
        }
    }

    pub fn dim(self, embedding_dims: usize) -> usize {
        match self {
            PikFeatures::Probs => PROB_FEATURES,
            PikFeatures::EmbeddingAndProbs => embedding_dims + PROB_FEATURES,
        }
    }
}

pub const PROB_FEATURES: usize = 3;

/// Where a P(IK) value came from; every response that carries one says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PikSource {
    /// A P(IK) head trained on gold labels.
    Trained,
    /// Fallback with too few gold labels: the maximum softmax probability.
    Msp,
    /// No trained model version: no P(IK).
    None,
}

impl PikSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PikSource::Trained => "trained",
            PikSource::Msp => "msp",
            PikSource::None => "none",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "trained" => PikSource::Trained,
            "msp" => PikSource::Msp,
            _ => PikSource::None,
        }
    }
}

/// Max probability, margin between the top two, and 1 − normalised entropy: all in [0, 1].
pub fn prob_features(p: &[f32]) -> [f32; PROB_FEATURES] {
    let mut sorted: Vec<f32> = p.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let top = sorted.first().copied().unwrap_or(0.0);
    let second = sorted.get(1).copied().unwrap_or(0.0);
    let entropy: f32 = p.iter().filter(|&&x| x > 0.0).map(|&x| -x * x.ln()).sum();
    let max_entropy = (p.len().max(2) as f32).ln();
    [top, top - second, 1.0 - entropy / max_entropy]
}

pub fn pik_features(kind: PikFeatures, embedding: &[f32], probs: &[f32]) -> Vec<f32> {
    let pf = prob_features(probs);
    match kind {
        PikFeatures::Probs => pf.to_vec(),
        PikFeatures::EmbeddingAndProbs => embedding.iter().copied().chain(pf).collect(),
    }
}

/// The fallback estimate: maximum softmax probability (Hendrycks & Gimpel 2017).
pub fn msp(probs: &[f32]) -> f32 {
    probs.iter().cloned().fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prob_features_of_certain_and_uniform() {
        let certain = prob_features(&[0.0, 1.0, 0.0]);
        assert_eq!(certain[0], 1.0);
        assert_eq!(certain[1], 1.0);
        assert!((certain[2] - 1.0).abs() < 1e-6);
        let uniform = prob_features(&[0.25; 4]);
        assert!((uniform[0] - 0.25).abs() < 1e-6);
        assert!(uniform[1].abs() < 1e-6);
        assert!(uniform[2].abs() < 1e-5);
    }

    #[test]
    fn feature_sets_have_their_dims() {
        let e = vec![0.5; 8];
        let p = [0.7, 0.3];
        assert_eq!(
            pik_features(PikFeatures::Probs, &e, &p).len(),
            PikFeatures::Probs.dim(8)
        );
        let both = pik_features(PikFeatures::EmbeddingAndProbs, &e, &p);
        assert_eq!(both.len(), PikFeatures::EmbeddingAndProbs.dim(8));
        assert_eq!(&both[..8], &e[..]);
    }
}
