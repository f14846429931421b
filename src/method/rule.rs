//! The selection rule: gold first, then the more trustworthy of the strong prediction and the
//! refined weak label, abstaining below a target precision; and the fitting of the τ rule's
//! threshold on gold labels (the rule used while a side has no calibrated confidence).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::confidence::Logistic;
use super::weak::argmax;

/// Where a decided label came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionSource {
    /// A human label.
    Gold,
    /// The strong model's prediction.
    Strong,
    /// The refined weak label.
    WeakRefined,
    /// A label was proposed, but its confidence is below the task's target-precision
    /// threshold: no label, and the example leads the review queue.
    Abstain,
    /// Nothing to decide from.
    None,
}

impl DecisionSource {
    pub const ALL: [DecisionSource; 5] = [
        DecisionSource::Gold,
        DecisionSource::Strong,
        DecisionSource::WeakRefined,
        DecisionSource::Abstain,
        DecisionSource::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionSource::Gold => "gold",
            DecisionSource::Strong => "strong",
            DecisionSource::WeakRefined => "weak_refined",
            DecisionSource::Abstain => "abstain",
            DecisionSource::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// The strong model's view of one example.
#[derive(Debug, Clone, Copy)]
pub struct StrongSide<'a> {
    pub probs: &'a [f32],
    pub p_ik: f32,
    /// P(IK) from a trained head (else the maximum softmax probability).
    pub calibrated: bool,
}

/// The weak side's proposal for one example.
#[derive(Debug, Clone, Copy)]
pub struct WeakSide {
    pub label: usize,
    /// P(the label is right): the trust model's, or the refined label's own probability.
    pub confidence: f32,
    pub calibrated: bool,
}

/// What the rule looks at for one example.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inputs<'a> {
    pub gold: Option<usize>,
    pub strong: Option<StrongSide<'a>>,
    pub weak: Option<WeakSide>,
}

/// Each side's confidence is calibrated on its own, but where the weak side is unsure the
/// strong model (trained on weak labels) is often unsure too, so comparing the two raw
/// values picks the strong side exactly where it is weakest. The arbiter learns, on gold,
/// P(strong right) and P(weak right) from both confidences and whether the sides agree:
/// each is then calibrated given everything the decision sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Arbiter {
    pub strong: Logistic,
    pub weak: Logistic,
}

impl Arbiter {
    pub const DIMS: usize = 5;

    pub fn features(p_ik: f32, weak: f32, agree: bool) -> [f32; Self::DIMS] {
        let a = f32::from(u8::from(agree));
        [p_ik, weak, a, a * p_ik, a * weak]
    }

    /// (P(strong right), P(weak right)) given both sides.
    pub fn judge(&self, p_ik: f32, weak: f32, agree: bool) -> (f32, f32) {
        let x = Self::features(p_ik, weak, agree);
        (self.strong.predict(&x), self.weak.predict(&x))
    }
}

/// The task's rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Strong-model selection is on for this task (its safeguard passed, or by setting).
    pub strong: bool,
    /// Compare calibrated confidences (else, or when a side is uncalibrated, the τ rule).
    pub compare: bool,
    pub tau: f32,
    /// Decisions less confident than this abstain (the target-precision threshold).
    pub abstain_below: Option<f32>,
    /// Fitted on gold; without it, the two sides' own confidences are compared.
    pub arbiter: Option<Arbiter>,
}

impl Rule {
    /// The τ rule alone: strong if P(IK) ≥ τ, else the refined weak label.
    pub fn tau(tau: f32) -> Self {
        Rule {
            strong: true,
            compare: false,
            tau,
            abstain_below: None,
            arbiter: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub label: Option<usize>,
    pub source: DecisionSource,
    pub reason: String,
    /// P(the decided label is right) (1 for gold); for `abstain`, that of the label it
    /// would have given.
    pub confidence: Option<f32>,
    /// What an abstaining decision would have said.
    pub suggested: Option<usize>,
    /// The side the label (or the suggestion) came from: `source` except for `abstain`.
    pub branch: DecisionSource,
}

/// gold if present; else the more trustworthy of the strong prediction and the refined weak
/// label (compared by calibrated confidence, or by the τ rule while either side is
/// uncalibrated); a decision below the target-precision threshold abstains; else none.
pub fn decide(inputs: &Inputs, rule: &Rule) -> Outcome {
    if let Some(g) = inputs.gold {
        return Outcome {
            label: Some(g),
            source: DecisionSource::Gold,
            reason: "gold label".into(),
            confidence: Some(1.0),
            suggested: None,
            branch: DecisionSource::Gold,
        };
    }
    let weak = inputs.weak;
    let strong = inputs.strong.filter(|_| rule.strong);
    let why: String;
    // The weak side's confidence as the arbiter judged it (its own otherwise).
    let mut weak_confidence: Option<f32> = None;
    let mut chosen: Option<(usize, f32, DecisionSource)> = None;
    match (strong, inputs.strong) {
        (Some(s), _) => {
            let compare = rule.compare && s.calibrated && weak.is_none_or(|w| w.calibrated);
            let mut q = s.p_ik;
            let take_strong = if compare {
                match weak {
                    Some(w) => {
                        let agree = argmax(s.probs) == Some(w.label);
                        let (cs, cw) = match &rule.arbiter {
                            Some(a) => a.judge(q, w.confidence, agree),
                            None => (q, w.confidence),
                        };
                        why = format!(
                            "P(strong right) {cs:.3} {} P(weak right) {cw:.3} (P(IK) {q:.3}, weak-side confidence {:.3}, {})",
                            if cs > cw { ">" } else { "<=" },
                            w.confidence,
                            if agree { "they agree" } else { "they disagree" }
                        );
                        weak_confidence = Some(cw);
                        q = cs;
                        cs > cw
                    }
                    None => {
                        why = format!("P(IK) {q:.3}; no weak label");
                        true
                    }
                }
            } else {
                why = format!(
                    "P(IK) {q:.3} {} tau {:.3}",
                    if q >= rule.tau { ">=" } else { "<" },
                    rule.tau
                );
                q >= rule.tau
            };
            if take_strong {
                if let Some(l) = argmax(s.probs) {
                    chosen = Some((l, q, DecisionSource::Strong));
                }
            }
        }
        (None, Some(_)) => why = "strong selection is off for this task".into(),
        (None, None) => why = "no trained model version".into(),
    }
    let why = match (chosen.is_none(), weak) {
        (true, Some(w)) => {
            let confidence = weak_confidence.unwrap_or(w.confidence);
            chosen = Some((w.label, confidence, DecisionSource::WeakRefined));
            format!("{why}; refined weak label")
        }
        _ => why,
    };
    let Some((label, confidence, source)) = chosen else {
        return Outcome {
            label: None,
            source: DecisionSource::None,
            reason: format!("{why}; no weak evidence reaches this example"),
            confidence: None,
            suggested: None,
            branch: DecisionSource::None,
        };
    };
    if let Some(t) = rule.abstain_below.filter(|t| confidence < *t) {
        return Outcome {
            label: None,
            source: DecisionSource::Abstain,
            reason: format!(
                "{why}; confidence {confidence:.3} is below the target-precision threshold {t:.3}: abstain ({} would say label {label})",
                source.as_str()
            ),
            confidence: Some(confidence),
            suggested: Some(label),
            branch: source,
        };
    }
    Outcome {
        label: Some(label),
        source,
        reason: why,
        confidence: Some(confidence),
        suggested: None,
        branch: source,
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

    fn strong(probs: &[f32], p_ik: f32, calibrated: bool) -> Option<StrongSide<'_>> {
        Some(StrongSide {
            probs,
            p_ik,
            calibrated,
        })
    }

    fn weak(label: usize, confidence: f32, calibrated: bool) -> Option<WeakSide> {
        Some(WeakSide {
            label,
            confidence,
            calibrated,
        })
    }

    #[test]
    fn tau_rule_prefers_gold_then_confident_strong_then_refined() {
        let probs = [0.2, 0.8];
        let mut inputs = Inputs {
            gold: Some(0),
            strong: strong(&probs, 0.9, false),
            weak: weak(0, 0.9, false),
        };
        assert_eq!(
            decide(&inputs, &Rule::tau(0.5)).source,
            DecisionSource::Gold
        );
        inputs.gold = None;
        let d = decide(&inputs, &Rule::tau(0.5));
        assert_eq!((d.label, d.source), (Some(1), DecisionSource::Strong));
        let d = decide(&inputs, &Rule::tau(0.95));
        assert_eq!((d.label, d.source), (Some(0), DecisionSource::WeakRefined));
        assert!(d.reason.contains("< tau"));
        inputs.weak = None;
        assert_eq!(
            decide(&inputs, &Rule::tau(0.95)).source,
            DecisionSource::None
        );
        inputs.strong = None;
        inputs.weak = weak(0, 0.9, false);
        let d = decide(&inputs, &Rule::tau(0.5));
        assert_eq!(d.source, DecisionSource::WeakRefined);
        assert!(d.reason.contains("no trained model"));
    }

    #[test]
    fn tau_at_exact_threshold_is_strong() {
        let probs = [0.4, 0.6];
        let inputs = Inputs {
            strong: strong(&probs, 0.5, false),
            ..Default::default()
        };
        assert_eq!(
            decide(&inputs, &Rule::tau(0.5)).source,
            DecisionSource::Strong
        );
    }

    #[test]
    fn calibrated_sides_are_compared_and_the_more_confident_wins() {
        let probs = [0.3, 0.7];
        let rule = Rule {
            strong: true,
            compare: true,
            tau: 0.99,
            abstain_below: None,
            arbiter: None,
        };
        let inputs = Inputs {
            gold: None,
            strong: strong(&probs, 0.8, true),
            weak: weak(0, 0.6, true),
        };
        let d = decide(&inputs, &rule);
        assert_eq!(
            (d.label, d.source, d.confidence),
            (Some(1), DecisionSource::Strong, Some(0.8))
        );
        let inputs = Inputs {
            weak: weak(0, 0.85, true),
            ..inputs
        };
        let d = decide(&inputs, &rule);
        assert_eq!((d.label, d.source), (Some(0), DecisionSource::WeakRefined));
        // An uncalibrated weak side falls back to the τ rule (0.8 < 0.99: weak).
        let inputs = Inputs {
            weak: weak(0, 0.1, false),
            ..inputs
        };
        assert_eq!(decide(&inputs, &rule).source, DecisionSource::WeakRefined);
        // Strong selection off: the weak side decides whatever P(IK) says.
        let off = Rule {
            strong: false,
            ..rule.clone()
        };
        let inputs = Inputs {
            weak: weak(0, 0.1, true),
            ..inputs
        };
        let d = decide(&inputs, &off);
        assert_eq!(d.source, DecisionSource::WeakRefined);
        assert!(d.reason.contains("off for this task"));
    }

    #[test]
    fn below_the_target_precision_threshold_a_decision_abstains() {
        let probs = [0.3, 0.7];
        let rule = Rule {
            strong: true,
            compare: true,
            tau: 0.5,
            abstain_below: Some(0.9),
            arbiter: None,
        };
        let inputs = Inputs {
            gold: None,
            strong: strong(&probs, 0.8, true),
            weak: weak(0, 0.6, true),
        };
        let d = decide(&inputs, &rule);
        assert_eq!(d.source, DecisionSource::Abstain);
        assert_eq!(
            (d.label, d.suggested, d.confidence),
            (None, Some(1), Some(0.8))
        );
        let confident = Inputs {
            strong: strong(&probs, 0.95, true),
            ..inputs
        };
        assert_eq!(decide(&confident, &rule).source, DecisionSource::Strong);
    }

    #[test]
    fn the_arbiter_judges_both_sides_together() {
        // An arbiter that trusts the weak side whenever the sides disagree.
        let strong_model = Logistic {
            weight: vec![0.0, 0.0, 6.0, 0.0, 0.0],
            bias: -3.0,
        };
        let weak_model = Logistic {
            weight: vec![0.0, 0.0, 0.0, 0.0, 0.0],
            bias: 1.0,
        };
        let rule = Rule {
            strong: true,
            compare: true,
            tau: 0.5,
            abstain_below: None,
            arbiter: Some(Arbiter {
                strong: strong_model,
                weak: weak_model,
            }),
        };
        let probs = [0.1, 0.9];
        let inputs = Inputs {
            gold: None,
            strong: strong(&probs, 0.95, true),
            weak: weak(0, 0.6, true),
        };
        let d = decide(&inputs, &rule);
        assert_eq!((d.label, d.source), (Some(0), DecisionSource::WeakRefined));
        let sigmoid1 = 1.0 / (1.0 + (-1.0f32).exp());
        assert!((d.confidence.unwrap() - sigmoid1).abs() < 1e-5, "{d:?}");
        assert!(d.reason.contains("they disagree"));
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
