//! The methods the table compares, and what one method gave on one seed. Baselines are
//! here; the selective recipes run in `selective`.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use super::strong::{Fitted, Strong};
use super::{hard, Ctx};
use crate::graph::ClassBalance;
use crate::method::confidence::PrecisionThreshold;
use crate::method::label_model::Vote;
use crate::method::metrics::{balanced_accuracy, macro_f1};
use crate::method::pik::PikFeatures;
use crate::method::pik::PikReport;
use crate::method::policy::Selection;
use crate::method::safeguard::{StageMode, StageReport};
use crate::method::training::LogConf;
use crate::method::weak::{argmax, one_hot};
use crate::service::settings::TaskSettings;

/// A selective recipe: which stages run and how the sides are chosen between. The first
/// one the table lists is the server's defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Recipe {
    pub name: String,
    pub source_model: StageMode,
    pub smoothing: StageMode,
    pub strong: StageMode,
    pub decision_targets: StageMode,
    pub class_balance: ClassBalance,
    pub selection: Selection,
    /// None: fit τ on gold.
    pub tau: Option<f32>,
    pub soft: bool,
    pub features: PikFeatures,
    /// Self-labels for strong-train come from models that did not train on the example
    /// (cross-fitting: 5 folds in head mode, 2 in full mode); else from the model trained
    /// on all of strong-train, whose in-sample predictions mostly repeat its training labels.
    pub out_of_fold: bool,
    pub target_precision: Option<f64>,
    /// Decisions below the threshold reaching this precision on gold do not train.
    pub train_precision: Option<f64>,
}

impl Recipe {
    /// The server's defaults.
    pub fn defaults(name: &str) -> Self {
        let d = TaskSettings::default();
        Recipe {
            name: name.to_string(),
            source_model: d.source_model,
            smoothing: d.smoothing,
            strong: d.strong,
            decision_targets: d.decision_targets,
            class_balance: d.class_balance,
            selection: d.selection,
            tau: d.tau.fixed(),
            soft: d.targets == crate::service::settings::Targets::Soft,
            features: d.pik_features,
            out_of_fold: true,
            target_precision: d.target_precision,
            train_precision: d.train_precision,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub enum Method {
    Weak,
    Ceiling,
    Naive,
    LogConf,
    /// Smoothing alone (always on), balanced as given.
    Graph(String, ClassBalance),
    Selective(Recipe),
}

impl Method {
    pub fn name(&self) -> &str {
        match self {
            Method::Weak => "weak",
            Method::Ceiling => "strong ceiling",
            Method::Naive => "naive weak-to-strong",
            Method::LogConf => "logconf (Burns et al.)",
            Method::Graph(name, _) => name,
            Method::Selective(r) => &r.name,
        }
    }
}

pub const DEFAULT_METHOD: &str = "full selective (defaults)";

/// The methods of the table.
pub fn catalogue(target_precision: f64) -> Vec<Method> {
    let base = Recipe::defaults(DEFAULT_METHOD);
    let variant = |name: &str, f: &dyn Fn(&mut Recipe)| {
        let mut r = Recipe {
            name: name.to_string(),
            ..base.clone()
        };
        f(&mut r);
        Method::Selective(r)
    };
    vec![
        Method::Weak,
        Method::Ceiling,
        Method::Naive,
        Method::LogConf,
        Method::Graph("graph smoothing only".into(), ClassBalance::Estimated),
        Method::Graph(
            "· uniform class balance (round 1)".into(),
            ClassBalance::Uniform,
        ),
        variant("P(IK) selection only", &|r| {
            r.source_model = StageMode::Off;
            r.smoothing = StageMode::Off;
        }),
        Method::Selective(base.clone()),
        variant("· weak side only (strong off)", &|r| {
            r.strong = StageMode::Off
        }),
        variant("· no safeguards (every stage on)", &|r| {
            r.source_model = StageMode::On;
            r.smoothing = StageMode::On;
            r.strong = StageMode::On;
            r.decision_targets = StageMode::On;
        }),
        variant("· always train on the decisions", &|r| {
            r.decision_targets = StageMode::On
        }),
        variant("· every decision trains (no train_precision)", &|r| {
            r.train_precision = None
        }),
        // Round 1's method under today's protocol: its smoothing, its selection, no checks
        // (so "no lower than round 1" compares like with like; round 1's own figures
        // carried the protocol's leak).
        variant(
            "· round 1's recipe (uniform balance; τ rule; no checks)",
            &|r| {
                r.source_model = StageMode::Off;
                r.smoothing = StageMode::On;
                r.strong = StageMode::On;
                r.decision_targets = StageMode::On;
                r.class_balance = ClassBalance::Uniform;
                r.selection = Selection::Tau;
                r.tau = None;
                r.train_precision = None;
            },
        ),
        variant("· τ rule with τ fitted (round 1)", &|r| {
            r.selection = Selection::Tau;
            r.tau = None;
        }),
        variant("· τ rule with τ fixed at 0.5", &|r| {
            r.selection = Selection::Tau;
            r.tau = Some(0.5);
        }),
        variant("· soft targets", &|r| r.soft = true),
        variant(&format!("· target precision {target_precision}"), &|r| {
            r.target_precision = Some(target_precision)
        }),
        variant("· P(IK) on embedding + probs", &|r| {
            r.features = PikFeatures::EmbeddingAndProbs
        }),
        variant("· in-sample self-labels", &|r| r.out_of_fold = false),
    ]
}

/// A label a method gave a strong-train row: (row, label, where it came from).
pub type Label<'a> = (usize, Option<usize>, &'a str);

/// What one method gave on one seed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Run {
    pub accuracy: f64,
    /// Test macro-F1 and balanced accuracy of the final model.
    pub macro_f1: f64,
    pub balanced_accuracy: f64,
    /// P(IK) on held-out gold (selective methods).
    pub pik: Option<PikReport>,
    /// P(IK) AUROC on strong-train against the first-round model's correctness.
    pub pik_auroc_strong_train: Option<f64>,
    /// Strong-train labels by source: (count, accuracy against ground truth).
    pub sources: HashMap<String, (usize, f64)>,
    /// Accuracy of the strong-train labels the final model trained on (abstentions left
    /// out): the quality of the decisions a labeling service would hand out.
    pub label_accuracy: Option<f64>,
    pub label_macro_f1: Option<f64>,
    /// Share of strong-train rows that got a label.
    pub label_coverage: Option<f64>,
    /// Share of each class among those labels (class drift shows here).
    pub label_shares: Vec<f64>,
    /// Which label-changing stages were on (selective methods).
    pub stages: Vec<StageReport>,
    /// ECE of the decisions' confidence on strong-train (truth never seen by the fit).
    pub decision_ece: Option<f64>,
    /// The target-precision threshold as fitted on gold, and what it gave on strong-train.
    pub target: Option<PrecisionThreshold>,
    /// The same threshold as fitted, with what it accepted on gold (out of fold): beside
    /// `target`, how far the figure carried from gold to the rest.
    pub target_gold: Option<PrecisionThreshold>,
    pub seconds: f64,
    /// Per test row, whether the final model was right (paired comparisons between methods).
    #[serde(skip)]
    pub test_right: Vec<bool>,
}

impl Run {
    /// Fills the label columns from the strong-train labels.
    pub fn with_labels(mut self, labels: &[Label], ctx: &Ctx) -> Self {
        let mut acc: HashMap<String, (usize, usize)> = HashMap::new();
        let mut counts = vec![0usize; ctx.k];
        let (mut pred, mut gold) = (vec![], vec![]);
        for &(row, label, source) in labels {
            let e = acc.entry(source.to_string()).or_default();
            e.0 += 1;
            e.1 += usize::from(label == Some(ctx.truth[row]));
            if let Some(l) = label {
                counts[l] += 1;
                pred.push(Some(l));
                gold.push(ctx.truth[row]);
            }
        }
        self.sources = acc
            .into_iter()
            .map(|(s, (n, ok))| (s, (n, ok as f64 / n.max(1) as f64)))
            .collect();
        let labelled = pred.len();
        if labelled > 0 {
            let right = pred
                .iter()
                .zip(&gold)
                .filter(|(p, g)| **p == Some(**g))
                .count();
            self.label_accuracy = Some(right as f64 / labelled as f64);
            self.label_macro_f1 = Some(macro_f1(&pred, &gold, ctx.k));
        }
        self.label_coverage = Some(labelled as f64 / ctx.split.strong_train.len().max(1) as f64);
        self.label_shares = counts
            .iter()
            .map(|&c| c as f64 / labelled.max(1) as f64)
            .collect();
        self
    }

    /// Fills the test columns from the final model.
    pub fn with_test(mut self, fitted: &Fitted, ctx: &Ctx) -> Self {
        let test = &ctx.split.test;
        let pred: Vec<Option<usize>> = test.iter().map(|&r| argmax(&fitted.probs(r))).collect();
        let gold: Vec<usize> = test.iter().map(|&r| ctx.truth[r]).collect();
        self.test_right = pred
            .iter()
            .zip(&gold)
            .map(|(p, g)| *p == Some(*g))
            .collect();
        self.accuracy =
            self.test_right.iter().filter(|r| **r).count() as f64 / test.len().max(1) as f64;
        self.macro_f1 = macro_f1(&pred, &gold, ctx.k);
        self.balanced_accuracy = balanced_accuracy(&pred, &gold, ctx.k);
        self
    }
}

/// Trains the final model on the labelled rows (one-hot targets unless given) and predicts
/// the test rows and `also`.
pub fn train_on_labels(
    ctx: &Ctx,
    strong: &mut dyn Strong,
    labels: &[Label],
    targets: Option<&HashMap<usize, Vec<f32>>>,
    logconf: Option<LogConf>,
    also: &[usize],
) -> anyhow::Result<Fitted> {
    let (rows, t): (Vec<usize>, Vec<Vec<f32>>) = labels
        .iter()
        .filter_map(|&(r, l, _)| {
            let l = l?;
            Some((
                r,
                targets
                    .and_then(|t| t.get(&r).cloned())
                    .unwrap_or_else(|| one_hot(l, ctx.k)),
            ))
        })
        .unzip();
    if rows.is_empty() {
        anyhow::bail!(
            "no labelled rows to train on ({} labels, {} with a label)",
            labels.len(),
            labels.iter().filter(|l| l.1.is_some()).count()
        );
    }
    let predict: Vec<usize> = ctx.split.test.iter().chain(also).copied().collect();
    strong.fit(ctx, &rows, &t, logconf, &predict)
}

pub fn run_method(method: &Method, ctx: &Ctx, strong: &mut dyn Strong) -> anyhow::Result<Run> {
    let started = Instant::now();
    let st = &ctx.split.strong_train;
    let mut run = match method {
        Method::Weak => {
            let test = &ctx.split.test;
            let pred: Vec<Option<usize>> = test
                .iter()
                .map(|r| ctx.raw[r].as_deref().and_then(argmax))
                .collect();
            let gold: Vec<usize> = test.iter().map(|&r| ctx.truth[r]).collect();
            Run {
                accuracy: ctx.weak_test_accuracy,
                macro_f1: macro_f1(&pred, &gold, ctx.k),
                balanced_accuracy: balanced_accuracy(&pred, &gold, ctx.k),
                ..Default::default()
            }
        }
        Method::Ceiling => {
            let labels: Vec<Label> = st
                .iter()
                .map(|&r| (r, Some(ctx.truth[r]), "truth"))
                .collect();
            let m = train_on_labels(ctx, strong, &labels, None, None, &[])?;
            Run::default().with_labels(&labels, ctx).with_test(&m, ctx)
        }
        Method::Naive | Method::LogConf => {
            let labels: Vec<Label> = st
                .iter()
                .map(|&r| (r, ctx.raw[&r].as_deref().and_then(argmax), "weak"))
                .collect();
            let logconf = matches!(method, Method::LogConf).then_some(LogConf { alpha: 0.5 });
            let m = train_on_labels(ctx, strong, &labels, None, logconf, &[])?;
            Run::default().with_labels(&labels, ctx).with_test(&m, ctx)
        }
        Method::Graph(_, balance) => {
            let prior = ctx.gold_prior();
            let mean = |v: &[Vote]| super::mean_vote(v, ctx.k);
            let smoothed = ctx.smooth(&mean, &HashSet::new(), *balance, &prior.shares);
            let labels: Vec<Label> = st
                .iter()
                .map(|&r| {
                    let l = smoothed
                        .get(&(r as i64))
                        .and_then(|s| s.as_deref().map(|s| hard(s, ctx.k)))
                        .and_then(|h| argmax(&h));
                    (r, l, "weak_refined")
                })
                .collect();
            let m = train_on_labels(ctx, strong, &labels, None, None, &[])?;
            Run::default().with_labels(&labels, ctx).with_test(&m, ctx)
        }
        Method::Selective(recipe) => super::selective::run(recipe, ctx, strong)?,
    };
    run.seconds = started.elapsed().as_secs_f64();
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_are_unique_and_can_be_given_to_methods() {
        let names: Vec<String> = catalogue(0.9).iter().map(|m| m.name().into()).collect();
        // `--methods` splits its value on commas.
        assert!(names.iter().all(|n| !n.contains(',')), "{names:?}");
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
    }
}
