//! The task's decision policy, fitted on gold at a job: the arbiter that judges the strong
//! and weak sides together, whether strong selection is on (its gold check), the
//! target-precision threshold and the training threshold (which decisions teach the next
//! model) — each measured on out-of-fold values only.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::confidence::{
    group_folds, precision_threshold, CalibrationReport, Logistic, PrecisionThreshold, L2,
};
use super::rule::{decide, Arbiter, Inputs, Rule, StrongSide, WeakSide};
use super::safeguard::{Stage, StageMode, StageReport};
use super::weak::argmax;

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
    /// Whether it judges strong selection's check (gold picked for review calibrates and
    /// fits the thresholds but does not judge: `method::gold`).
    pub judges: bool,
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
    pub train_precision: Option<f64>,
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
    /// Present when the task sets `train_precision`: decisions below it do not train the
    /// next model (absent in versions made before the setting).
    #[serde(default)]
    pub train: Option<PrecisionThreshold>,
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
            train: None,
            decisions: CalibrationReport::default(),
        }
    }

    /// Whether a decision with this confidence trains the next model: yes unless a
    /// training threshold was fitted and reached on gold and the confidence is below it.
    pub fn trains(&self, confidence: Option<f64>) -> bool {
        let floor = self
            .train
            .as_ref()
            .filter(|t| t.precision.is_some())
            .map(|t| f64::from(t.threshold));
        !matches!((floor, confidence), (Some(f), Some(c)) if c < f)
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

/// Checks strong selection against the weak side alone on the judging gold (out-of-fold
/// values) and, where `pool` holds the examples without gold, that it gives up no class the
/// gold shows (`safeguard::keep_classes`); then measures the chosen rule's confidence and
/// fits the target-precision threshold on all of it.
pub fn fit_policy(cases: &[PolicyCase], pool: &[Inputs], cfg: &PolicyConfig) -> Policy {
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
        let judging: Vec<usize> = (0..cases.len()).filter(|&i| cases[i].judges).collect();
        let labels = |rule: &Rule| -> Vec<Option<usize>> {
            judging.iter().map(|&i| decided(i, rule).label).collect()
        };
        let gold: Vec<usize> = judging.iter().map(|&i| cases[i].gold).collect();
        let classes = cases
            .iter()
            .filter_map(|c| c.strong.map(|s| s.probs.len()))
            .max()
            .unwrap_or(0)
            .max(gold.iter().max().map_or(0, |g| g + 1));
        let on_gold = super::safeguard::check(
            Stage::Strong,
            cfg.strong,
            &super::safeguard::Compared {
                classes,
                gold: &gold,
                input: &labels(&without),
                output: &labels(&with),
            },
            cfg.z,
        );
        let whole = arbiter.as_ref().map(|(a, _)| a.clone());
        let pool_labels = |rule: &Rule| -> Vec<Option<usize>> {
            let rule = Rule {
                arbiter: whole.clone(),
                ..rule.clone()
            };
            pool.iter()
                .map(|x| decide(&Inputs { gold: None, ..*x }, &rule).label)
                .collect()
        };
        super::safeguard::keep_classes(
            on_gold,
            &super::safeguard::OnThePool {
                classes,
                gold_counts: &super::prior::class_counts(gold.iter().copied(), classes),
                input: &pool_labels(&without),
                output: &pool_labels(&with),
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
    let target = cfg
        .target_precision
        .map(|t| precision_threshold(&conf, &right, t));
    // The same precision asked of both (the defaults' 0.9 with a 0.9 target) is one fit.
    let train = match (&target, cfg.train_precision) {
        (Some(fitted), Some(t)) if fitted.target == t => Some(fitted.clone()),
        (_, t) => t.map(|t| precision_threshold(&conf, &right, t)),
    };
    Policy {
        strong,
        selection: cfg.selection,
        tau: cfg.tau,
        arbiter: arbiter.map(|(a, _)| a),
        target,
        train,
        decisions: CalibrationReport::measure(&conf, &right),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                judges: true,
            })
            .collect();
        let cfg = PolicyConfig {
            strong: StageMode::Auto,
            selection: Selection::Confidence,
            tau: 0.5,
            z: 1.0,
            target_precision: Some(0.75),
            train_precision: Some(0.75),
        };
        let p = fit_policy(&cases, &[], &cfg);
        assert!(p.strong.on, "{:?}", p.strong);
        assert!((p.strong.output_accuracy.unwrap() - 0.8).abs() < 1e-9);
        let t = p.target.clone().unwrap();
        assert!(t.precision.unwrap() >= 0.75 && t.coverage > 0.5, "{t:?}");
        // The training threshold is the same fit at its own precision: decisions under it
        // are handed out but do not train; with no threshold reachable, every one trains.
        assert_eq!(p.train.as_ref(), Some(&t));
        assert!(p.trains(Some(t.threshold as f64)));
        assert!(!p.trains(Some(t.threshold as f64 - 0.01)));
        assert!(p.trains(None), "no confidence: nothing to judge it by");
        let unreachable = fit_policy(
            &cases,
            &[],
            &PolicyConfig {
                train_precision: Some(0.999),
                ..cfg.clone()
            },
        );
        assert!(unreachable.train.as_ref().unwrap().precision.is_none());
        assert!(unreachable.trains(Some(0.0)) && unreachable.trains(None));
        assert!(
            Policy::unchecked(StageMode::Auto, Selection::Confidence, 0.5, "").trains(Some(0.0))
        );
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
        let p = fit_policy(&worse, &[], &cfg);
        assert!(!p.strong.on, "{:?}", p.strong);
        assert!(p.strong.reason.starts_with("bypassed"));
        // The same cases beside the first ones but not judging (picked for review): the check
        // sees only the first 200, where strong wins; all 400 still fit the threshold.
        let mixed: Vec<PolicyCase> = cases
            .iter()
            .copied()
            .chain(worse.iter().map(|c| PolicyCase {
                judges: false,
                ..*c
            }))
            .collect();
        let p = fit_policy(&mixed, &[], &cfg);
        assert!(p.strong.on, "{:?}", p.strong);
        assert_eq!(p.strong.gold, 200);
        assert_eq!(p.target.unwrap().examples, 400);
    }

    #[test]
    fn strong_selection_that_gives_up_a_class_on_the_pool_is_bypassed() {
        // 40 gold labels, 4 of class 0. The strong model is right on all of them, the weak
        // side on the 4 and on 24 of the 36: strong wins on gold. On the pool it says class 1
        // everywhere.
        let all_one = [0.05f32, 0.95];
        let zero = [0.95f32, 0.05];
        let gold = |i: usize| usize::from(i % 10 != 0);
        let weak_label = |i: usize| {
            if i % 10 == 0 || i % 3 != 0 {
                gold(i)
            } else {
                0
            }
        };
        let side = |label: usize| WeakSide {
            label,
            confidence: 0.6,
            calibrated: false,
        };
        let strong = Some(StrongSide {
            probs: &all_one,
            p_ik: 0.9,
            calibrated: false,
        });
        let cases: Vec<PolicyCase> = (0..40)
            .map(|i| PolicyCase {
                gold: gold(i),
                judges: true,
                strong: Some(StrongSide {
                    probs: if gold(i) == 0 { &zero } else { &all_one },
                    p_ik: 0.9,
                    calibrated: false,
                }),
                weak: Some(side(weak_label(i))),
                group: i as u64,
            })
            .collect();
        let cfg = PolicyConfig {
            strong: StageMode::Auto,
            selection: Selection::Tau,
            tau: 0.5,
            z: 1.645,
            target_precision: None,
            train_precision: None,
        };
        assert!(
            fit_policy(&cases, &[], &cfg).strong.on,
            "on gold alone it passes"
        );
        // On the pool the weak side calls a quarter class 0; with strong on none is.
        let pool: Vec<Inputs> = (0..1000)
            .map(|i| Inputs {
                gold: None,
                strong,
                weak: Some(side(usize::from(i % 4 != 0))),
            })
            .collect();
        let p = fit_policy(&cases, &pool, &cfg);
        assert!(!p.strong.on, "{:?}", p.strong);
        assert!(
            p.strong
                .reason
                .contains("labels 0.0% as label 0 (its input 25.0%)"),
            "{}",
            p.strong.reason
        );
    }
}
