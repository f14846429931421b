//! P(IK), "probability I know" (Kadavath et al. 2022): the chance that the strong model's
//! prediction is correct, from the embedding and features of the class probabilities; and
//! its training on gold examples predicted without their label, cross-fitted so that every
//! gold example also gets a P(IK) from a head that never saw it (calibration, τ).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::confidence::{group_folds, Logistic, L2};
use super::heads::{sigmoid, LinearHead, PikHead};
use super::metrics::{
    auroc, brier, ece, precision_coverage, reliability, CoveragePoint, ReliabilityBin,
};
use super::rule::{fit_tau, TauSample};
use super::training::{train_logistic, TrainConfig};
use super::weak::argmax;

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

/// One gold example as P(IK) sees it.
#[derive(Debug, Clone)]
pub struct PikSample {
    pub embedding: Vec<f32>,
    /// The classifier's probabilities, predicted without this example's label.
    pub probs: Vec<f32>,
    pub gold: usize,
    /// The refined weak label's argmax, if any (for fitting τ).
    pub refined_label: Option<usize>,
    /// Samples of one group (e.g. the answers to one question) stay on one side of the
    /// train/calibration split, or near-duplicates leak between them.
    pub group: u64,
}

impl PikSample {
    pub fn correct(&self) -> bool {
        argmax(&self.probs) == Some(self.gold)
    }
}

#[derive(Debug, Clone)]
pub struct PikConfig {
    pub features: PikFeatures,
    /// Fewer gold examples than this: no P(IK) head (the MSP fallback is used).
    pub min_gold: usize,
    /// `None`: fit τ on the gold samples' out-of-fold P(IK).
    pub tau: Option<f32>,
    pub train: TrainConfig,
}

/// How good P(IK) is, on samples it was not trained on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default, PartialEq)]
pub struct PikReport {
    /// `trained` or `msp`.
    pub source: String,
    pub reason: String,
    pub gold_examples: usize,
    pub train_examples: usize,
    /// Gold examples whose P(IK) was measured out of fold (every one of them).
    pub calibration_examples: usize,
    /// Share of gold examples the classifier gets right (out of fold).
    pub accuracy: Option<f64>,
    /// P(IK) of the shipped source, out of fold.
    pub auroc: Option<f64>,
    pub ece: Option<f64>,
    pub brier: Option<f64>,
    /// The maximum softmax probability on the same samples, for comparison.
    pub msp_auroc: Option<f64>,
    /// Reliability diagram (10 bins) of the out-of-fold P(IK).
    #[serde(default)]
    pub reliability: Vec<ReliabilityBin>,
    /// Precision of the strong model against coverage as a P(IK) threshold falls.
    #[serde(default)]
    pub precision_coverage: Vec<CoveragePoint>,
    pub tau: f32,
    /// `fixed` or `fitted`.
    pub tau_source: String,
}

pub struct PikOutcome {
    pub head: Option<PikHead>,
    pub report: PikReport,
    /// Each sample's P(IK) from a head that was not trained on it (MSP without a head).
    pub oof: Vec<f32>,
}

/// P(IK) features up to this many dimensions are fitted exactly (Newton); wider ones (the
/// embedding) by gradient descent.
const EXACT_MAX_DIMS: usize = 64;

fn fit_pik_head(
    x: &[f32],
    dims: usize,
    y: &[bool],
    cfg: &TrainConfig,
) -> anyhow::Result<LinearHead> {
    if dims <= EXACT_MAX_DIMS {
        let m = Logistic::fit(x, dims, y, L2);
        return Ok(LinearHead {
            in_dim: dims,
            out_dim: 1,
            weight: m.weight.iter().map(|&w| w as f32).collect(),
            bias: vec![m.bias as f32],
        });
    }
    Ok(train_logistic(x, dims, y, cfg)?.0)
}

/// Trains the P(IK) head on the gold samples, cross-fitted over their groups (5 folds) so
/// that every sample also gets a P(IK) from a head that never saw it; measures calibration
/// and fits τ on those out-of-fold values; the shipped head is trained on all samples.
pub fn train_pik(samples: &[PikSample], cfg: &PikConfig) -> anyhow::Result<PikOutcome> {
    let n = samples.len();
    let correct: Vec<bool> = samples.iter().map(|s| s.correct()).collect();
    let positives = correct.iter().filter(|c| **c).count();
    let accuracy = (n > 0).then(|| positives as f64 / n as f64);
    let trainable = n >= cfg.min_gold && positives > 0 && positives < n;
    let msp_all: Vec<f32> = samples.iter().map(|s| msp(&s.probs)).collect();
    let (head, oof) = if trainable {
        let dims = cfg.features.dim(samples[0].embedding.len());
        let x: Vec<f32> = samples
            .iter()
            .flat_map(|s| pik_features(cfg.features, &s.embedding, &s.probs))
            .collect();
        let groups: Vec<u64> = samples.iter().map(|s| s.group).collect();
        let fold = group_folds(&groups, 5, cfg.train.seed ^ 0xca1);
        let mut oof = vec![0.0f32; n];
        for f in 0..5 {
            let held: Vec<usize> = (0..n).filter(|&i| fold[i] == f).collect();
            let train: Vec<usize> = (0..n).filter(|&i| fold[i] != f).collect();
            let y: Vec<bool> = train.iter().map(|&i| correct[i]).collect();
            if held.is_empty() || y.iter().all(|b| *b) || y.iter().all(|b| !*b) {
                for &i in &held {
                    oof[i] = msp_all[i];
                }
                continue;
            }
            let xt: Vec<f32> = train
                .iter()
                .flat_map(|&i| x[i * dims..(i + 1) * dims].iter().copied())
                .collect();
            let h = fit_pik_head(&xt, dims, &y, &cfg.train)?;
            for &i in &held {
                oof[i] = sigmoid(h.forward(&x[i * dims..(i + 1) * dims])[0]);
            }
        }
        let linear = fit_pik_head(&x, dims, &correct, &cfg.train)?;
        (
            Some(PikHead {
                features: cfg.features,
                linear,
            }),
            oof,
        )
    } else {
        (None, msp_all.clone())
    };
    let reason = if trainable {
        format!(
            "trained on {n} gold examples (out-of-fold predictions; P(IK) cross-fitted, 5 folds)"
        )
    } else if n < cfg.min_gold {
        format!("{n} gold examples, fewer than pik_min_gold = {}: maximum softmax probability stands in", cfg.min_gold)
    } else {
        "the classifier is right on all or none of the gold examples: nothing to learn; maximum softmax probability stands in".into()
    };
    let (tau, tau_source) = match cfg.tau {
        Some(t) => (t, "fixed"),
        None => {
            let taus: Vec<TauSample> = (0..n)
                .map(|i| TauSample {
                    p_ik: oof[i],
                    strong_correct: correct[i],
                    weak_correct: samples[i].refined_label.map(|l| l == samples[i].gold),
                })
                .collect();
            (fit_tau(&taus), "fitted")
        }
    };
    let report = PikReport {
        source: if head.is_some() { "trained" } else { "msp" }.into(),
        reason,
        gold_examples: n,
        train_examples: if head.is_some() { n } else { 0 },
        calibration_examples: n,
        accuracy,
        auroc: auroc(&oof, &correct),
        ece: (n > 0).then(|| ece(&oof, &correct, 10)),
        brier: (n > 0).then(|| brier(&oof, &correct)),
        msp_auroc: auroc(&msp_all, &correct),
        reliability: reliability(&oof, &correct, 10),
        precision_coverage: precision_coverage(&oof, &correct, 20),
        tau,
        tau_source: tau_source.into(),
    };
    Ok(PikOutcome { head, report, oof })
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

    use rand::{Rng, SeedableRng};

    /// Gold samples whose correctness depends on the first embedding dimension.
    fn samples(n: usize, seed: u64) -> Vec<PikSample> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|i| {
                let signal: f32 = rng.gen_range(-1.0..1.0);
                let right = rng.gen_bool(if signal > 0.0 { 0.9 } else { 0.3 });
                let p = rng.gen_range(0.55..0.95);
                PikSample {
                    embedding: vec![signal, rng.gen_range(-1.0..1.0)],
                    probs: vec![1.0 - p, p],
                    gold: if right { 1 } else { 0 },
                    refined_label: Some(1),
                    group: i as u64,
                }
            })
            .collect()
    }

    fn cfg(features: PikFeatures, min_gold: usize) -> PikConfig {
        PikConfig {
            features,
            min_gold,
            tau: None,
            train: TrainConfig::default(),
        }
    }

    #[test]
    fn trained_pik_beats_msp_when_the_embedding_tells() {
        let out = train_pik(&samples(600, 1), &cfg(PikFeatures::EmbeddingAndProbs, 50)).unwrap();
        assert!(out.head.is_some());
        let r = out.report;
        assert_eq!(r.source, "trained");
        assert_eq!(
            r.calibration_examples, 600,
            "every sample is scored out of fold"
        );
        assert_eq!(out.oof.len(), 600);
        assert!(r.auroc.unwrap() > 0.75, "{r:?}");
        assert!(r.auroc.unwrap() > r.msp_auroc.unwrap() + 0.1, "{r:?}");
        assert!(r.ece.unwrap() < 0.1, "{r:?}");
        assert_eq!(r.tau_source, "fitted");
    }

    #[test]
    fn too_few_gold_falls_back_to_msp() {
        let out = train_pik(&samples(30, 2), &cfg(PikFeatures::Probs, 50)).unwrap();
        assert!(out.head.is_none());
        assert_eq!(out.report.source, "msp");
        assert!(out.report.reason.contains("fewer than pik_min_gold"));
        let fixed = PikConfig {
            tau: Some(0.7),
            ..cfg(PikFeatures::Probs, 50)
        };
        let out = train_pik(&samples(30, 2), &fixed).unwrap();
        assert_eq!(
            (out.report.tau, out.report.tau_source.as_str()),
            (0.7, "fixed")
        );
    }
}
