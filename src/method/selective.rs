//! The selective part of the method, in memory: cross-fitted predictions on gold examples,
//! the P(IK) head trained on them without leakage, its calibration, and τ. Jobs and the
//! experiment command both call these.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::confidence::{
    group_folds, precision_threshold, CalibrationReport, Logistic, PrecisionThreshold, L2,
};
use super::metrics::{auroc, brier, ece};
use super::pik::{msp, pik_features, PikFeatures};
use super::safeguard::{Stage, StageMode, StageReport};
use super::selection::{decide, fit_tau, Arbiter, Inputs, Rule, StrongSide, TauSample, WeakSide};
use super::training::{train_logistic, train_softmax, Dataset, TrainConfig};
use super::weak::argmax;
use crate::model::heads::{sigmoid, softmax, LinearHead, PikHead};

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
        tau,
        tau_source: tau_source.into(),
    };
    Ok(PikOutcome { head, report, oof })
}

/// How the strong and weak sides are chosen between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// The side with the higher calibrated probability of being right (the τ rule while
    /// either side is uncalibrated).
    #[default]
    Confidence,
    /// Strong when P(IK) ≥ τ, else the refined weak label.
    Tau,
}

/// One gold example as the decision policy sees it (out-of-fold values only).
#[derive(Debug, Clone, Copy)]
pub struct PolicyCase<'a> {
    pub gold: usize,
    pub strong: Option<StrongSide<'a>>,
    pub weak: Option<WeakSide>,
    /// Examples of one group stay in one fold when the arbiter is cross-fitted.
    pub group: u64,
}

#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub strong: StageMode,
    pub selection: Selection,
    pub tau: f32,
    pub z: f64,
    pub target_precision: Option<f64>,
}

/// The task's decision policy, fitted on gold: whether strong selection is on, and the
/// target-precision threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    pub strong: StageReport,
    pub selection: Selection,
    pub tau: f32,
    /// Judges the two sides together (fitted when both sides are calibrated).
    pub arbiter: Option<Arbiter>,
    /// Present when the task sets `target_precision`.
    pub target: Option<PrecisionThreshold>,
    /// The decisions' confidence on gold, out of fold: is it calibrated?
    pub decisions: CalibrationReport,
}

impl Policy {
    pub fn rule(&self) -> Rule {
        Rule {
            strong: self.strong.on,
            compare: self.selection == Selection::Confidence,
            tau: self.tau,
            abstain_below: self.target.as_ref().map(|t| t.threshold),
            arbiter: self.arbiter.clone(),
        }
    }

    /// Before any gold check: the weak side decides unless strong selection is forced on.
    pub fn unchecked(strong: StageMode, selection: Selection, tau: f32, why: &str) -> Self {
        let mut stage = super::safeguard::unavailable(Stage::Strong, strong, why);
        stage.on = strong == StageMode::On;
        Policy {
            strong: stage,
            selection,
            tau,
            arbiter: None,
            target: None,
            decisions: CalibrationReport::default(),
        }
    }
}

/// The arbiter fitted on the cases where both sides are calibrated, with each case's fold
/// model (cross-fitted by group) for out-of-fold decisions; `None` when there is not enough
/// to fit it on.
fn fit_arbiter(cases: &[PolicyCase], seed: u64) -> Option<(Arbiter, Vec<Option<Arbiter>>)> {
    let both: Vec<usize> = (0..cases.len())
        .filter(|&i| {
            cases[i].strong.is_some_and(|s| s.calibrated)
                && cases[i].weak.is_some_and(|w| w.calibrated)
        })
        .collect();
    let data = |rows: &[usize]| -> (Vec<f32>, Vec<bool>, Vec<bool>) {
        let mut x = vec![];
        let (mut ys, mut yw) = (vec![], vec![]);
        for &i in rows {
            let (Some(s), Some(w)) = (cases[i].strong, cases[i].weak) else {
                continue;
            };
            let strong_label = argmax(s.probs);
            x.extend(Arbiter::features(
                s.p_ik,
                w.confidence,
                strong_label == Some(w.label),
            ));
            ys.push(strong_label == Some(cases[i].gold));
            yw.push(w.label == cases[i].gold);
        }
        (x, ys, yw)
    };
    let fit = |rows: &[usize]| -> Option<Arbiter> {
        let (x, ys, yw) = data(rows);
        let varied = |y: &[bool]| y.iter().any(|b| *b) && y.iter().any(|b| !*b);
        (ys.len() >= 30 && varied(&ys) && varied(&yw)).then(|| Arbiter {
            strong: Logistic::fit(&x, Arbiter::DIMS, &ys, L2),
            weak: Logistic::fit(&x, Arbiter::DIMS, &yw, L2),
        })
    };
    let all = fit(&both)?;
    let groups: Vec<u64> = both.iter().map(|&i| cases[i].group).collect();
    let fold_of = group_folds(&groups, 5, seed ^ 0xa4b1);
    let mut per_case: Vec<Option<Arbiter>> = vec![None; cases.len()];
    for f in 0..5 {
        let train: Vec<usize> = (0..both.len())
            .filter(|&j| fold_of[j] != f)
            .map(|j| both[j])
            .collect();
        let model = fit(&train);
        for j in (0..both.len()).filter(|&j| fold_of[j] == f) {
            per_case[both[j]] = model.clone();
        }
    }
    Some((all, per_case))
}

/// Checks strong selection against the weak side alone on gold (out-of-fold values), then
/// measures the chosen rule's confidence and fits the target-precision threshold.
pub fn fit_policy(cases: &[PolicyCase], cfg: &PolicyConfig) -> Policy {
    let compare = cfg.selection == Selection::Confidence;
    let arbiter = if compare {
        fit_arbiter(cases, cfg.tau.to_bits() as u64)
    } else {
        None
    };
    let with = Rule {
        strong: true,
        compare,
        tau: cfg.tau,
        abstain_below: None,
        arbiter: None,
    };
    // Each gold case is decided with the arbiter of its fold: out of fold.
    let decided = |i: usize, rule: &Rule| {
        let c = &cases[i];
        let rule = Rule {
            arbiter: arbiter
                .as_ref()
                .and_then(|(_, per_case)| per_case[i].clone()),
            ..rule.clone()
        };
        decide(
            &Inputs {
                gold: None,
                strong: c.strong,
                weak: c.weak,
            },
            &rule,
        )
    };
    let without = Rule {
        strong: false,
        ..with.clone()
    };
    let strong = if cases.iter().any(|c| c.strong.is_some()) {
        let labels = |rule: &Rule| -> Vec<Option<usize>> {
            (0..cases.len()).map(|i| decided(i, rule).label).collect()
        };
        let gold: Vec<usize> = cases.iter().map(|c| c.gold).collect();
        let classes = cases
            .iter()
            .filter_map(|c| c.strong.map(|s| s.probs.len()))
            .max()
            .unwrap_or(0)
            .max(gold.iter().max().map_or(0, |g| g + 1));
        super::safeguard::check(
            Stage::Strong,
            cfg.strong,
            &super::safeguard::Compared {
                classes,
                gold: &gold,
                input: &labels(&without),
                output: &labels(&with),
            },
            cfg.z,
        )
    } else {
        super::safeguard::unavailable(
            Stage::Strong,
            cfg.strong,
            "no strong predictions on gold examples yet",
        )
    };
    let rule = Rule {
        strong: strong.on,
        ..with
    };
    let (mut conf, mut right) = (vec![], vec![]);
    for (i, c) in cases.iter().enumerate() {
        let d = decided(i, &rule);
        match (d.label, d.confidence) {
            (Some(l), Some(q)) => {
                conf.push(q);
                right.push(l == c.gold);
            }
            // Undecided gold examples count against coverage, never as accepted.
            _ => {
                conf.push(0.0);
                right.push(false);
            }
        }
    }
    Policy {
        strong,
        selection: cfg.selection,
        tau: cfg.tau,
        arbiter: arbiter.map(|(a, _)| a),
        target: cfg
            .target_precision
            .map(|t| precision_threshold(&conf, &right, t)),
        decisions: CalibrationReport::measure(&conf, &right),
    }
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
    fn policy_keeps_strong_selection_only_where_it_beats_the_weak_side() {
        // Strong is right on 80% of gold with calibrated P(IK) 0.8; the weak side on 60% with
        // confidence 0.6: the comparison picks strong, which wins by a clear margin.
        let probs_right = [0.1f32, 0.9];
        let probs_wrong = [0.9f32, 0.1];
        let cases: Vec<PolicyCase> = (0..200)
            .map(|i| PolicyCase {
                gold: 1,
                strong: Some(StrongSide {
                    probs: if i % 5 == 0 {
                        &probs_wrong
                    } else {
                        &probs_right
                    },
                    p_ik: 0.8,
                    calibrated: true,
                }),
                weak: Some(WeakSide {
                    label: usize::from(i % 5 < 3),
                    confidence: 0.6,
                    calibrated: true,
                }),
                group: i as u64,
            })
            .collect();
        let cfg = PolicyConfig {
            strong: StageMode::Auto,
            selection: Selection::Confidence,
            tau: 0.5,
            z: 1.0,
            target_precision: Some(0.75),
        };
        let p = fit_policy(&cases, &cfg);
        assert!(p.strong.on, "{:?}", p.strong);
        assert!((p.strong.output_accuracy.unwrap() - 0.8).abs() < 1e-9);
        let t = p.target.unwrap();
        assert!(t.precision.unwrap() >= 0.75 && t.coverage > 0.5, "{t:?}");
        // Where strong is worse, the stage is bypassed.
        let worse: Vec<PolicyCase> = cases
            .iter()
            .map(|c| PolicyCase {
                weak: Some(WeakSide {
                    label: 1,
                    confidence: 0.5,
                    calibrated: true,
                }),
                ..*c
            })
            .collect();
        let p = fit_policy(&worse, &cfg);
        assert!(!p.strong.on, "{:?}", p.strong);
        assert!(p.strong.reason.starts_with("bypassed"));
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
