//! The results table: Markdown for people, JSON for machines.

use std::collections::BTreeMap;

use serde::Serialize;

use super::data::{label_names, Row};
use super::methods::DEFAULT_METHOD;
use super::{ExperimentArgs, Method, Run};
use crate::method::confidence::PrecisionThreshold;
use crate::method::metrics::{mean_std, paired_difference};

/// Below this gap (ceiling − weak) PGR is noise and is marked as not meaningful.
pub const MIN_GAP: f64 = 0.03;

#[derive(Debug, Clone, Serialize)]
pub struct MethodRow {
    pub name: String,
    pub accuracy_mean: f64,
    pub accuracy_std: f64,
    pub accuracies: Vec<f64>,
    pub macro_f1: f64,
    pub balanced_accuracy: f64,
    /// (accuracy − weak) / (ceiling − weak), from the means over seeds.
    pub pgr: Option<f64>,
    /// Spread of the per-seed PGRs.
    pub pgr_std: Option<f64>,
    pub pik_auroc: Option<f64>,
    pub pik_ece: Option<f64>,
    pub pik_msp_auroc: Option<f64>,
    pub pik_auroc_strong_train: Option<f64>,
    pub tau: Option<f64>,
    /// Strong-train labels by source: mean count over seeds and accuracy over all its labels.
    pub sources: BTreeMap<String, (f64, f64)>,
    /// Mean accuracy of the labels the final model trained on.
    pub label_accuracy: Option<f64>,
    /// Mean share of each class among those labels.
    pub label_shares: Vec<f64>,
    pub label_macro_f1: Option<f64>,
    pub label_coverage: Option<f64>,
    /// Per stage: in how many seeds it was on.
    pub stages_on: BTreeMap<String, usize>,
    pub decision_ece: Option<f64>,
    /// Target precision on strong-train: mean precision and coverage over seeds.
    pub target_precision: Option<(f64, f64)>,
    pub seconds: f64,
    pub runs: Vec<Run>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dataset: String,
    pub rows: usize,
    pub labels: Vec<String>,
    pub mode: String,
    pub weak_model: String,
    pub seeds: usize,
    pub seconds: f64,
    pub splits: Vec<serde_json::Value>,
    /// Ceiling − weak, in accuracy (not points).
    pub gap: f64,
    pub pgr_meaningful: bool,
    pub methods: Vec<MethodRow>,
}

pub fn pgr(accuracy: f64, weak: f64, ceiling: f64) -> Option<f64> {
    let gap = ceiling - weak;
    (gap.abs() > 1e-12).then(|| (accuracy - weak) / gap)
}

/// Per source of the final labels: the mean count over seeds, and the accuracy over all its
/// labels (pooled, so a seed where the source labelled nothing adds nothing to it).
fn pooled_sources(runs: &[Run]) -> BTreeMap<String, (f64, f64)> {
    let mut tally: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for run in runs {
        for (s, (n, acc)) in &run.sources {
            let e = tally.entry(s.clone()).or_default();
            e.0 += *n as f64;
            e.1 += *n as f64 * acc;
        }
    }
    let seeds = runs.len().max(1) as f64;
    tally
        .into_iter()
        .map(|(s, (n, right))| (s, (n / seeds, if n > 0.0 { right / n } else { 0.0 })))
        .collect()
}

fn mean_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().filter(|x| x.is_finite()).collect();
    (!v.is_empty()).then(|| mean_std(&v).0)
}

impl Report {
    pub fn build(
        args: &ExperimentArgs,
        rows: &[Row],
        methods: &[Method],
        runs: Vec<Vec<Run>>,
        seconds: f64,
        splits: Vec<serde_json::Value>,
    ) -> Self {
        let find = |name: &str| methods.iter().position(|m| m.name() == name);
        let accs = |i: usize| -> Vec<f64> { runs[i].iter().map(|r| r.accuracy).collect() };
        let weak = find("weak").map(accs);
        let ceiling = find("strong ceiling").map(accs);
        let (weak_mean, ceiling_mean) = (
            weak.as_ref().map(|w| mean_std(w).0),
            ceiling.as_ref().map(|c| mean_std(c).0),
        );
        let gap = match (weak_mean, ceiling_mean) {
            (Some(w), Some(c)) => c - w,
            _ => f64::NAN,
        };
        let rows_out = methods
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let a = accs(i);
                let (mean, std) = mean_std(&a);
                let per_seed: Vec<f64> = match (&weak, &ceiling) {
                    (Some(w), Some(c)) => a
                        .iter()
                        .zip(w)
                        .zip(c)
                        .filter_map(|((x, w), c)| pgr(*x, *w, *c))
                        .collect(),
                    _ => vec![],
                };
                let sources = pooled_sources(&runs[i]);
                MethodRow {
                    name: m.name().to_string(),
                    accuracy_mean: mean,
                    accuracy_std: std,
                    accuracies: a.clone(),
                    macro_f1: mean_of(runs[i].iter().map(|r| Some(r.macro_f1))).unwrap_or(f64::NAN),
                    balanced_accuracy: mean_of(runs[i].iter().map(|r| Some(r.balanced_accuracy)))
                        .unwrap_or(f64::NAN),
                    pgr: match (weak_mean, ceiling_mean) {
                        (Some(w), Some(c)) => pgr(mean, w, c),
                        _ => None,
                    },
                    pgr_std: (per_seed.len() == a.len() && !a.is_empty())
                        .then(|| mean_std(&per_seed).1),
                    pik_auroc: mean_of(
                        runs[i].iter().map(|r| r.pik.as_ref().and_then(|p| p.auroc)),
                    ),
                    pik_ece: mean_of(runs[i].iter().map(|r| r.pik.as_ref().and_then(|p| p.ece))),
                    pik_msp_auroc: mean_of(
                        runs[i]
                            .iter()
                            .map(|r| r.pik.as_ref().and_then(|p| p.msp_auroc)),
                    ),
                    pik_auroc_strong_train: mean_of(
                        runs[i].iter().map(|r| r.pik_auroc_strong_train),
                    ),
                    tau: mean_of(runs[i].iter().map(|r| r.pik.as_ref().map(|p| p.tau as f64))),
                    sources,
                    label_accuracy: mean_of(runs[i].iter().map(|r| r.label_accuracy)),
                    label_shares: {
                        let k = runs[i]
                            .iter()
                            .map(|r| r.label_shares.len())
                            .max()
                            .unwrap_or(0);
                        (0..k)
                            .map(|c| {
                                mean_of(runs[i].iter().map(|r| r.label_shares.get(c).copied()))
                                    .unwrap_or(0.0)
                            })
                            .collect()
                    },
                    label_macro_f1: mean_of(runs[i].iter().map(|r| r.label_macro_f1)),
                    label_coverage: mean_of(runs[i].iter().map(|r| r.label_coverage)),
                    stages_on: {
                        let mut on: BTreeMap<String, usize> = BTreeMap::new();
                        for r in &runs[i] {
                            for st in &r.stages {
                                *on.entry(st.stage.as_str().to_string()).or_default() +=
                                    usize::from(st.on);
                            }
                        }
                        on
                    },
                    decision_ece: mean_of(runs[i].iter().map(|r| r.decision_ece)),
                    target_precision: {
                        let p = mean_of(
                            runs[i]
                                .iter()
                                .map(|r| r.target.as_ref().and_then(|t| t.precision)),
                        );
                        let c = mean_of(
                            runs[i]
                                .iter()
                                .map(|r| r.target.as_ref().map(|t| t.coverage)),
                        );
                        p.zip(c)
                    },
                    seconds: runs[i].iter().map(|r| r.seconds).sum(),
                    runs: runs[i].clone(),
                }
            })
            .collect();
        Report {
            dataset: args.data.display().to_string(),
            rows: rows.len(),
            labels: label_names(rows),
            mode: args.mode.as_str().to_string(),
            weak_model: args.weak.clone(),
            seeds: args.seeds,
            seconds,
            splits,
            gap,
            pgr_meaningful: gap.is_finite() && gap >= MIN_GAP,
            methods: rows_out,
        }
    }

    pub fn markdown(&self) -> String {
        let pct = |x: f64| format!("{:.1}", 100.0 * x);
        let opt = |x: Option<f64>, digits: usize| {
            x.map(|v| format!("{v:.digits$}"))
                .unwrap_or_else(|| "–".into())
        };
        let mut out = format!(
            "### {} — {} mode, weak model `{}`, {} seed(s), {} rows, {:.0} s\n\n",
            self.dataset, self.mode, self.weak_model, self.seeds, self.rows, self.seconds
        );
        out += &format!(
            "Gap (ceiling − weak): {} points{}\n\n",
            if self.gap.is_finite() {
                format!("{:.1}", 100.0 * self.gap)
            } else {
                "–".into()
            },
            if self.pgr_meaningful {
                ""
            } else {
                " — under 3 points: PGR is not meaningful (n/m)"
            }
        );
        out += "| method | test acc % (± sd) | PGR (± sd) | test macro-F1 / bal. acc | labels acc % | labels macro-F1 | coverage % | label class shares % | stages on (source model / smoothing / strong / decision targets) | decision ECE | P(IK) AUROC gold / MSP / strong-train | τ | strong-train labels: source n (acc %) |\n";
        out += "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for m in &self.methods {
            let pgr = match (m.pgr, self.pgr_meaningful) {
                (Some(p), true) => format!("{p:.2} (± {})", opt(m.pgr_std, 2)),
                (Some(p), false) => format!("n/m ({p:.2})"),
                (None, _) => "–".into(),
            };
            let pik = if m.pik_auroc.is_some() || m.pik_auroc_strong_train.is_some() {
                format!(
                    "{} / {} / {}",
                    opt(m.pik_auroc, 3),
                    opt(m.pik_msp_auroc, 3),
                    opt(m.pik_auroc_strong_train, 3)
                )
            } else {
                "–".into()
            };
            let sources = m
                .sources
                .iter()
                .map(|(s, (n, acc))| match s.as_str() {
                    // Abstentions carry no label, so no accuracy.
                    "abstain" | "none" => format!("{s} {n:.0}"),
                    _ => format!("{s} {n:.0} ({})", pct(*acc)),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let shares = if m.label_shares.is_empty() {
                "–".to_string()
            } else {
                m.label_shares
                    .iter()
                    .map(|x| format!("{:.0}", 100.0 * x))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            let stages = if m.stages_on.is_empty() {
                "–".to_string()
            } else {
                ["source_model", "smoothing", "strong", "decision_targets"]
                    .iter()
                    .map(|s| format!("{}", m.stages_on.get(*s).copied().unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join(" / ")
                    + &format!(" of {}", m.runs.len())
            };
            out += &format!(
                "| {} | {} (± {}) | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                m.name,
                pct(m.accuracy_mean),
                pct(m.accuracy_std),
                pgr,
                opt(Some(m.macro_f1), 3),
                opt(Some(m.balanced_accuracy), 3),
                m.label_accuracy.map(pct).unwrap_or_else(|| "–".into()),
                opt(m.label_macro_f1, 3),
                m.label_coverage.map(pct).unwrap_or_else(|| "–".into()),
                shares,
                stages,
                opt(m.decision_ece, 3),
                pik,
                opt(m.tau, 2),
                if sources.is_empty() {
                    "–".into()
                } else {
                    sources
                }
            );
        }
        out += &self.per_seed();
        out
    }
}

impl Report {
    fn row(&self, name: &str) -> Option<&MethodRow> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The first principle, seed by seed: the default decisions against the raw weak labels
    /// (label accuracy) and the final model against naive weak-to-strong (test accuracy);
    /// and what the target-precision method accepted.
    fn per_seed(&self) -> String {
        let (Some(d), Some(n)) = (self.row(DEFAULT_METHOD), self.row("naive weak-to-strong"))
        else {
            return String::new();
        };
        let pct = |x: Option<f64>| {
            x.map(|v| format!("{:.1}", 100.0 * v))
                .unwrap_or_else(|| "–".into())
        };
        // A threshold's precision (coverage).
        let said = |t: Option<&PrecisionThreshold>| {
            t.map(|t| format!("{} ({})", pct(t.precision), pct(Some(t.coverage))))
                .unwrap_or_else(|| "–".into())
        };
        let mut out = "\nPer seed — raw weak labels vs the default decisions (label accuracy on strong-train), naive weak-to-strong vs the default (test accuracy):\n\n| seed | raw weak labels % | default decisions % | naive test % | default test % | default − naive, points (± paired SE on test) |".to_string();
        let target = self
            .methods
            .iter()
            .find(|m| m.name.starts_with("· target precision"));
        if target.is_some() {
            out +=
                " target-precision decisions: precision % (coverage %) on strong-train / on gold |";
        }
        out += "\n|---|---|---|---|---|---|";
        if target.is_some() {
            out += "---|";
        }
        out += "\n";
        for (i, (dr, nr)) in d.runs.iter().zip(&n.runs).enumerate() {
            let paired = paired_difference(&dr.test_right, &nr.test_right)
                .map(|(d, se)| format!("{:+.1} (± {:.1})", 100.0 * d, 100.0 * se))
                .unwrap_or_else(|| "–".into());
            out += &format!(
                "| {} | {} | {} | {} | {} | {paired} |",
                i + 1,
                pct(nr.label_accuracy),
                pct(dr.label_accuracy),
                pct(Some(nr.accuracy)),
                pct(Some(dr.accuracy))
            );
            if let Some(r) = target.and_then(|t| t.runs.get(i)) {
                out += &format!(
                    " {} / {} |",
                    said(r.target.as_ref()),
                    said(r.target_gold.as_ref())
                );
            }
            out += "\n";
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgr_is_the_share_of_the_gap_recovered() {
        assert!((pgr(0.75, 0.70, 0.80).unwrap() - 0.5).abs() < 1e-9);
        assert_eq!(pgr(0.70, 0.70, 0.80), Some(0.0));
        assert!(pgr(0.65, 0.70, 0.80).unwrap() < 0.0);
        assert_eq!(pgr(0.7, 0.7, 0.7), None);
    }

    #[test]
    fn a_source_missing_from_a_seed_does_not_lower_its_accuracy() {
        let run = |sources: &[(&str, usize, f64)]| Run {
            sources: sources
                .iter()
                .map(|(s, n, acc)| (s.to_string(), (*n, *acc)))
                .collect(),
            ..Run::default()
        };
        let runs = [
            run(&[("strong", 100, 0.9), ("weak", 300, 0.8)]),
            run(&[("strong", 300, 0.7), ("weak", 100, 0.6)]),
            run(&[("weak", 400, 0.75)]),
        ];
        let pooled = pooled_sources(&runs);
        let (n, acc) = pooled["strong"];
        assert!((n - 400.0 / 3.0).abs() < 1e-9);
        assert!((acc - (90.0 + 210.0) / 400.0).abs() < 1e-9, "{acc}");
        let (n, acc) = pooled["weak"];
        assert!((n - 800.0 / 3.0).abs() < 1e-9);
        assert!((acc - (240.0 + 60.0 + 300.0) / 800.0).abs() < 1e-9, "{acc}");
    }
}
