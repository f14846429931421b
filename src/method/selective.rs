//! The selective part of the method, in memory: cross-fitted predictions on gold examples,
//! the P(IK) head trained on them without leakage, its calibration, and τ. Jobs and the
//! experiment command both call these.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::metrics::{auroc, brier, ece};
use super::pik::{msp, pik_features, PikFeatures};
use super::selection::{fit_tau, TauSample};
use super::training::{train_logistic, train_softmax, Dataset, TrainConfig};
use super::weak::argmax;
use crate::model::heads::{sigmoid, softmax, PikHead};

/// Out-of-fold class probabilities for the gold rows: each fold's rows are predicted by a
/// classifier trained without them (their gold label is a training target otherwise, and
/// P(IK) would learn that the model is always right on gold).
pub fn cross_fit(
    data: &Dataset,
    gold_rows: &[usize],
    folds: usize,
    cfg: &TrainConfig,
    on_fold: &mut dyn FnMut(usize) -> bool,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let folds = folds.clamp(2, gold_rows.len().max(2));
    let mut order: Vec<usize> = (0..gold_rows.len()).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5eed));
    let mut oof = vec![Vec::new(); gold_rows.len()];
    let n = data.len();
    for f in 0..folds {
        if !on_fold(f) {
            return Err(super::training::Cancelled.into());
        }
        let held: Vec<usize> = order.iter().copied().filter(|i| i % folds == f).collect();
        let mut excluded = vec![false; n];
        for &g in &held {
            excluded[gold_rows[g]] = true;
        }
        let keep: Vec<usize> = (0..n).filter(|&i| !excluded[i]).collect();
        let x: Vec<f32> = keep
            .iter()
            .flat_map(|&i| data.x[i * data.dims..(i + 1) * data.dims].iter().copied())
            .collect();
        let t: Vec<f32> = keep
            .iter()
            .flat_map(|&i| data.targets[i * data.k..(i + 1) * data.k].iter().copied())
            .collect();
        let w: Option<Vec<f32>> = data.weights.map(|w| keep.iter().map(|&i| w[i]).collect());
        let part = Dataset {
            x: &x,
            dims: data.dims,
            targets: &t,
            k: data.k,
            weights: w.as_deref(),
        };
        let (head, _) = train_softmax(&part, cfg, None, &mut |_| true)?;
        for &g in &held {
            let row = gold_rows[g];
            oof[g] = softmax(&head.forward(&data.x[row * data.dims..(row + 1) * data.dims]));
        }
    }
    Ok(oof)
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
    /// Share of the gold samples held out for calibration metrics and τ.
    pub calibration: f64,
    /// `None`: fit τ on the calibration samples.
    pub tau: Option<f32>,
    pub train: TrainConfig,
}

/// How good P(IK) is, on samples it was not trained on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, Default)]
pub struct PikReport {
    /// `trained` or `msp`.
    pub source: String,
    pub reason: String,
    pub gold_examples: usize,
    pub train_examples: usize,
    pub calibration_examples: usize,
    /// Share of gold examples the classifier gets right (out of fold).
    pub accuracy: Option<f64>,
    /// P(IK) of the shipped source on the calibration samples.
    pub auroc: Option<f64>,
    pub ece: Option<f64>,
    pub brier: Option<f64>,
    /// The maximum softmax probability on the same samples, for comparison.
    pub msp_auroc: Option<f64>,
    pub tau: f32,
    /// `fixed` or `fitted`.
    pub tau_source: String,
}

pub struct PikOutcome {
    pub head: Option<PikHead>,
    pub report: PikReport,
}

fn p_ik(head: Option<&PikHead>, s: &PikSample) -> f32 {
    match head {
        Some(h) => sigmoid(
            h.linear
                .forward(&pik_features(h.features, &s.embedding, &s.probs))[0],
        ),
        None => msp(&s.probs),
    }
}

/// Holds out about `n_cal` samples for calibration, whole groups at a time, in a seeded
/// random order of groups: returns (calibration, fit) indices.
fn split_by_group(samples: &[PikSample], n_cal: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let (mut cal, mut fit) = (Vec::new(), Vec::new());
    for members in super::shuffled_groups(samples.iter().map(|s| s.group), seed) {
        if cal.len() < n_cal {
            cal.extend(members);
        } else {
            fit.extend(members);
        }
    }
    (cal, fit)
}

/// Trains the P(IK) head on part of the samples and measures it (and τ) on the rest.
pub fn train_pik(samples: &[PikSample], cfg: &PikConfig) -> anyhow::Result<PikOutcome> {
    let n = samples.len();
    let correct: Vec<bool> = samples.iter().map(|s| s.correct()).collect();
    let positives = correct.iter().filter(|c| **c).count();
    let accuracy = (n > 0).then(|| positives as f64 / n as f64);
    let n_cal = ((n as f64) * cfg.calibration).round() as usize;
    let (cal, fit) = split_by_group(samples, n_cal, cfg.train.seed ^ 0xca1);
    let (cal, fit) = (cal.as_slice(), fit.as_slice());
    let fit_positives = fit.iter().filter(|&&i| correct[i]).count();
    let trainable = n >= cfg.min_gold && fit_positives > 0 && fit_positives < fit.len();
    let head = if trainable {
        let dims = cfg.features.dim(samples[0].embedding.len());
        let x: Vec<f32> = fit
            .iter()
            .flat_map(|&i| pik_features(cfg.features, &samples[i].embedding, &samples[i].probs))
            .collect();
        let y: Vec<bool> = fit.iter().map(|&i| correct[i]).collect();
        let (linear, _) = train_logistic(&x, dims, &y, &cfg.train)?;
        Some(PikHead {
            features: cfg.features,
            linear,
        })
    } else {
        None
    };
    let reason = if trainable {
        format!(
            "trained on {} gold examples (out-of-fold predictions)",
            fit.len()
        )
    } else if n < cfg.min_gold {
        format!("{n} gold examples, fewer than pik_min_gold = {}: maximum softmax probability stands in", cfg.min_gold)
    } else {
        "the classifier is right on all or none of the gold examples: nothing to learn; maximum softmax probability stands in".into()
    };
    let cal_q: Vec<f32> = cal
        .iter()
        .map(|&i| p_ik(head.as_ref(), &samples[i]))
        .collect();
    let cal_msp: Vec<f32> = cal.iter().map(|&i| msp(&samples[i].probs)).collect();
    let cal_z: Vec<bool> = cal.iter().map(|&i| correct[i]).collect();
    let (tau, tau_source) = match cfg.tau {
        Some(t) => (t, "fixed"),
        None => {
            // Too few calibration samples to fit on: use all (τ is one number).
            let idx: Vec<usize> = if cal.len() >= 30 {
                cal.to_vec()
            } else {
                (0..n).collect()
            };
            let taus: Vec<TauSample> = idx
                .iter()
                .map(|&i| TauSample {
                    p_ik: p_ik(head.as_ref(), &samples[i]),
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
        train_examples: if head.is_some() { fit.len() } else { 0 },
        calibration_examples: cal.len(),
        accuracy,
        auroc: auroc(&cal_q, &cal_z),
        ece: (!cal.is_empty()).then(|| ece(&cal_q, &cal_z, 10)),
        brier: (!cal.is_empty()).then(|| brier(&cal_q, &cal_z)),
        msp_auroc: auroc(&cal_msp, &cal_z),
        tau,
        tau_source: tau_source.into(),
    };
    Ok(PikOutcome { head, report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

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
            calibration: 0.3,
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
        assert_eq!(r.calibration_examples, 180);
        assert!(r.auroc.unwrap() > 0.75, "{r:?}");
        assert!(r.auroc.unwrap() > r.msp_auroc.unwrap() + 0.1, "{r:?}");
        assert!(r.ece.unwrap() < 0.1, "{r:?}");
        assert_eq!(r.tau_source, "fitted");
    }

    #[test]
    fn calibration_split_keeps_groups_whole() {
        let mut s = samples(300, 4);
        for (i, x) in s.iter_mut().enumerate() {
            x.group = (i / 4) as u64;
        }
        let (cal, fit) = split_by_group(&s, 90, 7);
        assert_eq!(cal.len() + fit.len(), 300);
        assert!((90..94).contains(&cal.len()), "{}", cal.len());
        let cal_groups: std::collections::HashSet<u64> = cal.iter().map(|&i| s[i].group).collect();
        assert!(fit.iter().all(|&i| !cal_groups.contains(&s[i].group)));
        // Random groups, not the first ones.
        assert!(cal_groups.iter().any(|&g| g >= 23));
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

    #[test]
    fn cross_fitting_never_predicts_a_row_with_its_own_label() {
        // A memorising setup: every row has a unique feature, its target is random. A model
        // that saw the row's label would get it right; out of fold it is at chance.
        let n = 200;
        let dims = n;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let x: Vec<f32> = (0..n)
            .flat_map(|i| (0..dims).map(move |j| if i == j { 1.0 } else { 0.0 }))
            .collect();
        let labels: Vec<usize> = (0..n).map(|_| rng.gen_range(0..2)).collect();
        let t: Vec<f32> = labels
            .iter()
            .flat_map(|&l| crate::method::weak::one_hot(l, 2))
            .collect();
        let data = Dataset {
            x: &x,
            dims,
            targets: &t,
            k: 2,
            weights: None,
        };
        let gold: Vec<usize> = (0..n).collect();
        let train = TrainConfig {
            epochs: 50,
            lr: 0.1,
            holdout: 0.0,
            ..Default::default()
        };
        let oof = cross_fit(&data, &gold, 5, &train, &mut |_| true).unwrap();
        let right = oof
            .iter()
            .zip(&labels)
            .filter(|(p, &l)| argmax(p) == Some(l))
            .count();
        assert!(
            right < 130,
            "out-of-fold accuracy on random labels should be near chance: {right}/200"
        );
        let (head, _) = train_softmax(&data, &train, None, &mut |_| true).unwrap();
        let in_sample = (0..n)
            .filter(|&i| {
                argmax(&softmax(&head.forward(&x[i * dims..(i + 1) * dims]))) == Some(labels[i])
            })
            .count();
        assert!(in_sample > 190, "in sample it memorises: {in_sample}/200");
    }
}
