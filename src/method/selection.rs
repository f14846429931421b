//! The selection rule of DESIGN.md §1.5 and the fitting of its threshold τ on gold labels.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::weak::argmax;

/// Where a decided label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionSource {
    /// A human label.
    Gold,
    /// The strong model's prediction, trusted because P(IK) ≥ τ.
    Strong,
    /// The graph-smoothed weak label.
    WeakRefined,
    /// Nothing to decide from.
    None,
}

impl DecisionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionSource::Gold => "gold",
            DecisionSource::Strong => "strong",
            DecisionSource::WeakRefined => "weak_refined",
            DecisionSource::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "gold" => DecisionSource::Gold,
            "strong" => DecisionSource::Strong,
            "weak_refined" => DecisionSource::WeakRefined,
            "none" => DecisionSource::None,
            _ => return None,
        })
    }
}

/// What the rule looks at for one example.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    pub gold: Option<usize>,
    /// The strong model's class probabilities and P(IK), when a model version exists.
    pub strong: Option<(&'a [f32], f32)>,
    /// The refined weak label r_i (may be all zero when no weak evidence reaches the example).
    pub refined: Option<&'a [f32]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub label: Option<usize>,
    pub source: DecisionSource,
    pub reason: String,
}

/// gold if present; else the strong prediction if P(IK) ≥ τ; else the refined weak label;
/// else no decision.
pub fn decide(inputs: &Inputs, tau: f32) -> Outcome {
    if let Some(g) = inputs.gold {
        return Outcome {
            label: Some(g),
            source: DecisionSource::Gold,
            reason: "gold label".into(),
        };
    }
    if let Some((probs, q)) = inputs.strong {
        if q >= tau {
            return Outcome {
                label: argmax(probs),
                source: DecisionSource::Strong,
                reason: format!("P(IK) {q:.3} >= tau {tau:.3}"),
            };
        }
    }
    let why_not_strong = match inputs.strong {
        Some((_, q)) => format!("P(IK) {q:.3} < tau {tau:.3}"),
        None => "no trained model version".to_string(),
    };
    if let Some(label) = inputs.refined.and_then(argmax) {
        return Outcome {
            label: Some(label),
            source: DecisionSource::WeakRefined,
            reason: format!("{why_not_strong}; refined weak label"),
        };
    }
    Outcome {
        label: None,
        source: DecisionSource::None,
        reason: format!("{why_not_strong}; no weak evidence reaches this example"),
    }
}

/// One gold-labelled example seen by τ fitting.
#[derive(Debug, Clone, Copy)]
pub struct TauSample {
    pub p_ik: f32,
    pub strong_correct: bool,
    /// `None` when there is no refined weak label (the rule would then decide nothing).
    pub weak_correct: Option<bool>,
}

/// The τ that maximises the accuracy of the rule's labels on gold (an undecided example
/// counts as wrong). Among equally good thresholds the one nearest 0.5 wins, so a flat
/// curve keeps the documented default.
pub fn fit_tau(samples: &[TauSample]) -> f32 {
    if samples.is_empty() {
        return 0.5;
    }
    let mut order: Vec<&TauSample> = samples.iter().collect();
    order.sort_by(|a, b| a.p_ik.total_cmp(&b.p_ik));
    // τ above every sample: all weak. Moving τ down past a sample switches it to strong.
    let mut correct: i64 = samples
        .iter()
        .filter(|s| s.weak_correct == Some(true))
        .count() as i64;
    let mut best = (correct, -(0.5f32 - 1.0).abs(), 1.0f32 + f32::EPSILON);
    let mut i = order.len();
    while i > 0 {
        let q = order[i - 1].p_ik;
        // All samples with this exact p_ik switch together.
        while i > 0 && order[i - 1].p_ik == q {
            let s = order[i - 1];
            correct += s.strong_correct as i64 - (s.weak_correct == Some(true)) as i64;
            i -= 1;
        }
        let candidate = (correct, -(0.5 - q).abs(), q);
        if (candidate.0, candidate.1) > (best.0, best.1) {
            best = candidate;
        }
    }
    // Above 1 means "never strong".
    best.2.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_prefers_gold_then_confident_strong_then_refined() {
        let probs = [0.2, 0.8];
        let refined = [0.9, 0.1];
        let mut inputs = Inputs {
            gold: Some(0),
            strong: Some((&probs, 0.9)),
            refined: Some(&refined),
        };
        assert_eq!(decide(&inputs, 0.5).source, DecisionSource::Gold);
        inputs.gold = None;
        let d = decide(&inputs, 0.5);
        assert_eq!((d.label, d.source), (Some(1), DecisionSource::Strong));
        let d = decide(&inputs, 0.95);
        assert_eq!((d.label, d.source), (Some(0), DecisionSource::WeakRefined));
        assert!(d.reason.contains("< tau"));
        inputs.refined = Some(&[0.0, 0.0]);
        assert_eq!(decide(&inputs, 0.95).source, DecisionSource::None);
        inputs.strong = None;
        inputs.refined = Some(&refined);
        let d = decide(&inputs, 0.5);
        assert_eq!(d.source, DecisionSource::WeakRefined);
        assert!(d.reason.contains("no trained model"));
    }

    #[test]
    fn tau_at_exact_threshold_is_strong() {
        let probs = [0.4, 0.6];
        let inputs = Inputs {
            strong: Some((&probs, 0.5)),
            ..Default::default()
        };
        assert_eq!(decide(&inputs, 0.5).source, DecisionSource::Strong);
    }

    fn sample(p_ik: f32, strong: bool, weak: bool) -> TauSample {
        TauSample {
            p_ik,
            strong_correct: strong,
            weak_correct: Some(weak),
        }
    }

    #[test]
    fn fit_tau_separates_where_strong_beats_weak() {
        // Strong is right above 0.7, weak is right below it.
        let samples: Vec<TauSample> = (0..100)
            .map(|i| {
                let q = i as f32 / 100.0;
                sample(q, q >= 0.7, q < 0.7)
            })
            .collect();
        let tau = fit_tau(&samples);
        assert!((tau - 0.7).abs() < 0.011, "tau {tau}");
    }

    #[test]
    fn fit_tau_all_strong_or_all_weak() {
        let strong_wins: Vec<TauSample> = (0..10)
            .map(|i| sample(i as f32 / 10.0, true, false))
            .collect();
        assert!(fit_tau(&strong_wins) <= 0.0 + 1e-6);
        let weak_wins: Vec<TauSample> = (0..10)
            .map(|i| sample(i as f32 / 10.0, false, true))
            .collect();
        assert!(fit_tau(&weak_wins) > 1.0, "no sample reaches tau");
        assert_eq!(fit_tau(&[]), 0.5);
    }
}
