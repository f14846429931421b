//! A model of the weak sources (Dawid & Skene 1979, as Snorkel's `LabelModel` uses it): each
//! source has a class-conditional confusion matrix θ_s[y][l] = P(source emits l | true y),
//! learned by EM from the agreement between sources and anchored by gold labels where
//! there are some. An example's weak aggregate is then the posterior
//! P(y | votes) ∝ π_y Π_s (Σ_l p_sl θ_s[y][l])^{c_s}: a source that is often wrong about a
//! class counts for less on it, and the class prior π is part of the answer.
//!
//! Abstains are missing votes. A soft vote enters as the label it favours (its argmax), as
//! in Snorkel: θ is then a proper likelihood, and the scores' margins, which a source's own
//! class prior already shapes, are not counted against the prior a second time (they reach
//! the decision through the weak-side trust model instead). A vote's confidence c tempers
//! its likelihood.
//!
//! Identifiability: with fewer than three sources, agreement alone cannot tell a source's
//! accuracy from its neighbour's. Then the confusions are learned from gold labels only, and
//! with too few of those the model falls back to the confidence-weighted mean and says so.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::prior::{class_counts, class_mass, estimate, PriorEvidence};
use super::safeguard::{self, Stage, StageMode, StageReport};
use super::weak::{aggregate, argmax, break_tie, tied_top, WeakVote};

/// One source's vote on one example.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    /// Index of the source in the task's source list.
    pub source: usize,
    /// A distribution over the task's labels (one-hot for a hard label).
    pub scores: Vec<f32>,
    /// In (0, 1].
    pub confidence: f32,
}

/// How the weak aggregate is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LabelModelKind {
    /// Confidence-weighted mean of the votes (the fallback).
    Mean,
    /// Dawid–Skene EM over all examples, anchored by gold labels where present.
    DawidSkene,
    /// Confusions learned from gold labels only (one or two sources).
    GoldConfusion,
}

impl LabelModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelModelKind::Mean => "mean",
            LabelModelKind::DawidSkene => "dawid_skene",
            LabelModelKind::GoldConfusion => "gold_confusion",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LabelModelConfig {
    /// Fewer distinct sources than this: accuracies are not learned from agreement alone.
    pub min_sources_unsupervised: usize,
    /// Gold labels needed to learn confusions from gold (one or two sources).
    pub min_gold: usize,
    pub max_iterations: usize,
    /// Dirichlet pseudo-counts on a confusion row: the diagonal and each other cell.
    pub diagonal_prior: f64,
    pub off_diagonal_prior: f64,
}

impl Default for LabelModelConfig {
    fn default() -> Self {
        Self {
            min_sources_unsupervised: 3,
            min_gold: 30,
            max_iterations: 500,
            diagonal_prior: 2.0,
            off_diagonal_prior: 1.0,
        }
    }
}

/// A fitted model of the sources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelModel {
    pub kind: LabelModelKind,
    /// Why this kind (the fallback says what is missing).
    pub reason: String,
    pub classes: usize,
    /// Estimated class prior π (for the mean: the shares its ties are broken towards, as
    /// `fit_sources` estimates them; equal shares leave ties to the first label).
    pub prior: Vec<f64>,
    /// Per source (by index), θ[y][l] flattened row-major (K×K); empty for `mean`.
    pub confusion: Vec<Vec<f64>>,
    pub iterations: usize,
}

/// The data the model is fitted on: every example's votes and its gold label, if any.
pub struct Observations<'a> {
    pub classes: usize,
    pub sources: usize,
    pub votes: &'a [Vec<Vote>],
    pub gold: &'a [Option<usize>],
}

impl LabelModel {
    /// The fallback: no learned accuracies.
    pub fn mean(classes: usize, reason: impl Into<String>) -> Self {
        Self {
            kind: LabelModelKind::Mean,
            reason: reason.into(),
            classes,
            prior: vec![1.0 / classes as f64; classes],
            confusion: vec![],
            iterations: 0,
        }
    }

    /// The mean with its ties broken towards `shares` (`method::weak::break_tie`); a fitted
    /// model keeps its own π.
    pub fn leaning(mut self, shares: &[f64]) -> Self {
        if self.kind == LabelModelKind::Mean && shares.len() == self.classes {
            self.prior = shares.to_vec();
        }
        self
    }

    /// Chooses the kind the data supports and fits it.
    pub fn fit(obs: &Observations, cfg: &LabelModelConfig) -> Self {
        let k = obs.classes;
        let active: Vec<bool> = {
            let mut a = vec![false; obs.sources];
            for v in obs.votes.iter().flatten() {
                if v.source < obs.sources {
                    a[v.source] = true;
                }
            }
            a
        };
        let n_sources = active.iter().filter(|a| **a).count();
        let n_gold_voted = obs
            .votes
            .iter()
            .zip(obs.gold)
            .filter(|(v, g)| g.is_some() && !v.is_empty())
            .count();
        if n_sources == 0 {
            return Self::mean(k, "no weak labels yet");
        }
        if n_sources >= cfg.min_sources_unsupervised {
            let mut m = em(obs, cfg, true);
            m.reason = format!(
                "{n_sources} sources: accuracies learned from their agreement{}",
                if n_gold_voted > 0 {
                    format!(" and {n_gold_voted} gold labels")
                } else {
                    String::new()
                }
            );
            return m;
        }
        if n_gold_voted >= cfg.min_gold {
            let mut m = em(obs, cfg, false);
            m.reason = format!(
                "{n_sources} source(s): too few to learn accuracies from agreement, so they are learned from {n_gold_voted} gold labels"
            );
            return m;
        }
        Self::mean(
            k,
            format!(
                "{n_sources} source(s) and {n_gold_voted} gold labels among their examples: a source's accuracy needs {} sources or {} gold labels to be learned; the confidence-weighted mean is used",
                cfg.min_sources_unsupervised, cfg.min_gold
            ),
        )
    }

    /// P(y | votes); `None` without votes. Unknown sources (newer than the fit) count as in
    /// the confidence-weighted mean.
    pub fn posterior(&self, votes: &[Vote]) -> Option<Vec<f32>> {
        if votes.is_empty() {
            return None;
        }
        if self.kind == LabelModelKind::Mean {
            return mean_of(votes, self.classes).map(|mut m| {
                break_tie(&mut m, &self.prior);
                m
            });
        }
        let k = self.classes;
        let mut log_q: Vec<f64> = self.prior.iter().map(|p| p.max(1e-12).ln()).collect();
        let unknown: Vec<WeakVote> = votes
            .iter()
            .filter(|v| self.confusion.get(v.source).is_none_or(|c| c.is_empty()))
            .map(|v| WeakVote {
                scores: v.scores.clone(),
                confidence: v.confidence,
            })
            .collect();
        for v in votes {
            let Some(theta) = self.confusion.get(v.source).filter(|c| !c.is_empty()) else {
                continue;
            };
            for (y, lq) in log_q.iter_mut().enumerate() {
                *lq += v.confidence as f64 * emission(theta, k, y, &v.scores).ln();
            }
        }
        // A source the model has not seen adds its vote like the mean does: as a likelihood
        // proportional to its (smoothed) scores.
        if let Some(mean) = aggregate(&unknown, k) {
            for (lq, p) in log_q.iter_mut().zip(mean) {
                *lq += (p as f64 * 0.9 + 0.1 / k as f64).ln();
            }
        }
        Some(normalize_log(&log_q))
    }

    /// Accuracy of each source under the model: Σ_y π_y θ_s[y][y].
    pub fn learned_accuracy(&self, source: usize) -> Option<f64> {
        let theta = self.confusion.get(source).filter(|c| !c.is_empty())?;
        let k = self.classes;
        Some((0..k).map(|y| self.prior[y] * theta[y * k + y]).sum())
    }
}

fn mean_of(votes: &[Vote], k: usize) -> Option<Vec<f32>> {
    let weak: Vec<WeakVote> = votes
        .iter()
        .map(|v| WeakVote {
            scores: v.scores.clone(),
            confidence: v.confidence,
        })
        .collect();
    aggregate(&weak, k)
}

/// P(observation | y) for one vote: θ[y][the label it favours].
fn emission(theta: &[f64], k: usize, y: usize, scores: &[f32]) -> f64 {
    match argmax(scores).filter(|&l| l < k) {
        Some(l) => theta[y * k + l].max(1e-12),
        None => 1.0,
    }
}

fn normalize_log(log_q: &[f64]) -> Vec<f32> {
    let max = log_q.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = log_q.iter().map(|l| (l - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

/// EM. `use_unlabelled`: the E-step re-estimates examples without gold (Dawid–Skene);
/// otherwise only gold examples inform θ and π (the supervised case).
fn em(obs: &Observations, cfg: &LabelModelConfig, use_unlabelled: bool) -> LabelModel {
    let k = obs.classes;
    let s = obs.sources;
    // Responsibilities: gold one-hot, others start at the confidence-weighted mean.
    let mut q: Vec<Option<Vec<f64>>> = obs
        .votes
        .iter()
        .zip(obs.gold)
        .map(|(votes, gold)| match gold {
            Some(g) if *g < k => {
                let mut v = vec![0.0; k];
                v[*g] = 1.0;
                Some(v)
            }
            _ if use_unlabelled => mean_of(votes, k).map(|m| m.iter().map(|&x| x as f64).collect()),
            _ => None,
        })
        .collect();
    let mut theta: Vec<Vec<f64>> = vec![vec![]; s];
    let mut prior = vec![1.0 / k as f64; k];
    let mut iterations = 0;
    for it in 0..cfg.max_iterations {
        iterations = it + 1;
        // M-step.
        let mut counts: Vec<Vec<f64>> = (0..s)
            .map(|_| {
                let mut c = vec![cfg.off_diagonal_prior; k * k];
                for y in 0..k {
                    c[y * k + y] = cfg.diagonal_prior;
                }
                c
            })
            .collect();
        let mut class_mass = vec![1.0f64; k];
        let mut seen = vec![false; s];
        for (votes, qi) in obs.votes.iter().zip(&q) {
            let Some(qi) = qi else { continue };
            for (y, &w) in qi.iter().enumerate() {
                class_mass[y] += w;
            }
            for v in votes {
                if v.source >= s {
                    continue;
                }
                seen[v.source] = true;
                let Some(l) = argmax(&v.scores).filter(|&l| l < k) else {
                    continue;
                };
                for (y, &w) in qi.iter().enumerate() {
                    counts[v.source][y * k + l] += v.confidence as f64 * w;
                }
            }
        }
        let new_theta: Vec<Vec<f64>> = counts
            .into_iter()
            .zip(&seen)
            .map(|(mut c, &seen)| {
                if !seen {
                    return vec![];
                }
                for y in 0..k {
                    let z: f64 = c[y * k..(y + 1) * k].iter().sum();
                    for v in &mut c[y * k..(y + 1) * k] {
                        *v /= z;
                    }
                }
                c
            })
            .collect();
        let z: f64 = class_mass.iter().sum();
        prior = class_mass.iter().map(|m| m / z).collect();
        let moved = new_theta
            .iter()
            .zip(&theta)
            .map(|(a, b)| {
                if b.is_empty() {
                    1.0
                } else {
                    a.iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f64::max)
                }
            })
            .fold(0.0, f64::max);
        theta = new_theta;
        // Supervised, one M-step on gold is the answer; unsupervised, stop at convergence.
        if !use_unlabelled || moved < 1e-6 {
            break;
        }
        // E-step on the examples without gold.
        let model = LabelModel {
            kind: LabelModelKind::DawidSkene,
            reason: String::new(),
            classes: k,
            prior: prior.clone(),
            confusion: theta.clone(),
            iterations,
        };
        for ((votes, gold), qi) in obs.votes.iter().zip(obs.gold).zip(q.iter_mut()) {
            if gold.is_some_and(|g| g < k) {
                continue;
            }
            *qi = model
                .posterior(votes)
                .map(|p| p.iter().map(|&x| x as f64).collect());
        }
    }
    LabelModel {
        kind: if use_unlabelled {
            LabelModelKind::DawidSkene
        } else {
            LabelModelKind::GoldConfusion
        },
        reason: String::new(),
        classes: k,
        prior,
        confusion: theta,
        iterations,
    }
}

/// Posteriors of the gold examples from models that did not see their gold label (`folds`
/// folds over the gold examples, in a seeded order), for checking the model on gold.
pub fn out_of_fold_posteriors(
    obs: &Observations,
    cfg: &LabelModelConfig,
    folds: usize,
    seed: u64,
) -> Vec<Option<Vec<f32>>> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut gold_rows: Vec<usize> = (0..obs.gold.len())
        .filter(|&i| obs.gold[i].is_some())
        .collect();
    gold_rows.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x1abe1));
    let mut out = vec![None; obs.gold.len()];
    let folds = folds.clamp(2, gold_rows.len().max(2));
    for f in 0..folds {
        let held: Vec<usize> = gold_rows
            .iter()
            .enumerate()
            .filter(|(i, _)| i % folds == f)
            .map(|(_, &r)| r)
            .collect();
        let mut gold = obs.gold.to_vec();
        for &r in &held {
            gold[r] = None;
        }
        let model = LabelModel::fit(
            &Observations {
                classes: obs.classes,
                sources: obs.sources,
                votes: obs.votes,
                gold: &gold,
            },
            cfg,
        );
        for &r in &held {
            out[r] = model.posterior(&obs.votes[r]);
        }
    }
    out
}

/// The source model a task uses, after its gold check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SourceFit {
    /// The model as fitted (its learned accuracies are reported whether or not it is used).
    pub fitted: LabelModel,
    /// What computes the weak aggregates: `fitted`, or the mean when the stage is off.
    pub used: LabelModel,
    pub stage: StageReport,
}

/// The class prior a tie in the mean starts from: the gold labels' class shares with enough
/// of them, else the mean's own (`method::prior::estimate` without a source model).
fn tie_prior(obs: &Observations) -> Vec<f64> {
    let k = obs.classes;
    let (mass, with_weak) = class_mass(obs.votes.iter().filter_map(|v| mean_of(v, k)), k);
    estimate(&PriorEvidence {
        classes: k,
        gold_counts: &class_counts(obs.gold.iter().flatten().copied(), k),
        source_model: None,
        weak_mass: Some((&mass, with_weak)),
    })
    .shares
}

/// How many examples' worth the class prior counts for beside the gold examples whose
/// votes tie, when estimating which label a tie should go to.
const TIE_PRIOR_WEIGHT: f64 = 5.0;

/// What a tie in the mean leans to: the class shares of the gold examples whose votes tie
/// (counted where the true label is among the tied ones), with the class prior counting as
/// [`TIE_PRIOR_WEIGHT`] more. Sources often tie on one class more than another (a rule that
/// fires for the rare class against a default that says the common one), and these are the
/// examples that show it; without them the prior decides. Returns the shares and what they
/// rest on, in words.
fn tie_lean(obs: &Observations) -> (Vec<f64>, String) {
    let k = obs.classes;
    let prior = tie_prior(obs);
    let tied_truth = obs.votes.iter().zip(obs.gold).filter_map(|(votes, g)| {
        let g = (*g)?;
        let tied = tied_top(&mean_of(votes, k)?);
        (tied.len() > 1 && tied.contains(&g)).then_some(g)
    });
    let counts = class_counts(tied_truth, k);
    let n: usize = counts.iter().sum();
    let lean: Vec<f64> = (0..k)
        .map(|c| (TIE_PRIOR_WEIGHT * prior[c] + counts[c] as f64) / (TIE_PRIOR_WEIGHT + n as f64))
        .collect();
    let shares = lean
        .iter()
        .map(|p| format!("{:.0}%", 100.0 * p))
        .collect::<Vec<_>>()
        .join(" / ");
    let reason = if n == 0 {
        format!("a tie in the mean goes to the label the class prior makes likelier ({shares}); no gold example has votes that tie")
    } else {
        format!(
            "a tie in the mean goes to the likelier label among tied examples ({shares}): the true labels of the {n} gold examples whose votes tie ({}), with the class prior as {TIE_PRIOR_WEIGHT} more",
            counts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(" / ")
        )
    };
    (lean, reason)
}

/// Fits the source model and checks it on gold against what would be used instead: the
/// confidence-weighted mean with its ties broken by `tie_lean` (which the stage's reason
/// states), with posteriors of gold examples from models that did not see their label.
pub fn fit_sources(
    obs: &Observations,
    cfg: &LabelModelConfig,
    mode: StageMode,
    z: f64,
    seed: u64,
) -> SourceFit {
    let fitted = LabelModel::fit(obs, cfg);
    let (lean, ties) = tie_lean(obs);
    let mean = |reason: String| LabelModel::mean(obs.classes, reason).leaning(&lean);
    if fitted.kind == LabelModelKind::Mean {
        let stage = safeguard::unavailable(
            Stage::SourceModel,
            mode,
            &format!("not fitted: {}; {ties}", fitted.reason),
        );
        let fitted = mean(fitted.reason);
        return SourceFit {
            used: fitted.clone(),
            fitted,
            stage,
        };
    }
    let oof = out_of_fold_posteriors(obs, cfg, 5, seed);
    let fallback = mean(String::new());
    let (mut gold, mut input, mut output) = (vec![], vec![], vec![]);
    for ((votes, g), post) in obs.votes.iter().zip(obs.gold).zip(&oof) {
        let Some(g) = *g else { continue };
        if votes.is_empty() {
            continue;
        }
        gold.push(g);
        input.push(fallback.posterior(votes).and_then(|m| argmax(&m)));
        output.push(post.as_deref().and_then(argmax));
    }
    let mut stage = safeguard::check(
        Stage::SourceModel,
        mode,
        &safeguard::Compared {
            classes: obs.classes,
            gold: &gold,
            input: &input,
            output: &output,
        },
        z,
    );
    let used = if stage.on {
        fitted.clone()
    } else {
        stage.reason = format!("{}; {ties}", stage.reason);
        mean(format!("source model off: {}", stage.reason))
    };
    SourceFit {
        fitted,
        used,
        stage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::weak::one_hot;
    use rand::{Rng, SeedableRng};

    /// `n` examples, 15% class 1; each source labels with its own class-conditional accuracy
    /// (acc on class 0, acc on class 1) and coverage.
    fn synthetic(n: usize, sources: &[(f64, f64, f64)], seed: u64) -> (Vec<usize>, Vec<Vec<Vote>>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let truth: Vec<usize> = (0..n).map(|_| usize::from(rng.gen_bool(0.15))).collect();
        let votes = truth
            .iter()
            .map(|&y| {
                sources
                    .iter()
                    .enumerate()
                    .filter_map(|(s, &(a0, a1, cov))| {
                        if !rng.gen_bool(cov) {
                            return None;
                        }
                        let acc = if y == 0 { a0 } else { a1 };
                        let l = if rng.gen_bool(acc) { y } else { 1 - y };
                        Some(Vote {
                            source: s,
                            scores: one_hot(l, 2),
                            confidence: 1.0,
                        })
                    })
                    .collect()
            })
            .collect();
        (truth, votes)
    }

    fn accuracy(
        pred: impl Fn(&[Vote]) -> Option<Vec<f32>>,
        truth: &[usize],
        votes: &[Vec<Vote>],
    ) -> f64 {
        let (mut ok, mut n) = (0, 0);
        for (y, v) in truth.iter().zip(votes) {
            if let Some(p) = pred(v) {
                n += 1;
                ok += usize::from(argmax(&p) == Some(*y));
            }
        }
        ok as f64 / n as f64
    }

    #[test]
    fn dawid_skene_learns_accuracies_from_agreement_alone() {
        // One good source and two poor ones: a majority vote lets the poor ones outvote the
        // good one; the model learns whom to believe.
        let sources = [(0.95, 0.95, 0.9), (0.75, 0.7, 0.9), (0.7, 0.7, 0.9)];
        let (truth, votes) = synthetic(4000, &sources, 1);
        let gold = vec![None; truth.len()];
        let obs = Observations {
            classes: 2,
            sources: 3,
            votes: &votes,
            gold: &gold,
        };
        let m = LabelModel::fit(&obs, &LabelModelConfig::default());
        assert_eq!(m.kind, LabelModelKind::DawidSkene);
        assert!((m.prior[1] - 0.15).abs() < 0.03, "prior {:?}", m.prior);
        // θ_1[1][1] is the second source's accuracy on class 1.
        assert!(
            (m.confusion[1][3] - 0.7).abs() < 0.08,
            "{:?}",
            m.confusion[1]
        );
        assert!(
            (m.confusion[0][0] - 0.95).abs() < 0.04,
            "{:?}",
            m.confusion[0]
        );
        let ds = accuracy(|v| m.posterior(v), &truth, &votes);
        let mean = accuracy(|v| mean_of(v, 2), &truth, &votes);
        assert!(ds > mean + 0.01, "dawid-skene {ds} vs mean {mean}");
        let la = m.learned_accuracy(0).unwrap();
        assert!((la - 0.95).abs() < 0.04, "{la}");
    }

    #[test]
    fn one_source_falls_back_without_gold_and_learns_from_gold() {
        let sources = [(0.95, 0.4, 1.0)];
        let (truth, votes) = synthetic(2000, &sources, 2);
        let none = vec![None; truth.len()];
        let obs = Observations {
            classes: 2,
            sources: 1,
            votes: &votes,
            gold: &none,
        };
        let m = LabelModel::fit(&obs, &LabelModelConfig::default());
        assert_eq!(m.kind, LabelModelKind::Mean);
        assert!(
            m.reason.contains("confidence-weighted mean"),
            "{}",
            m.reason
        );
        // With 300 gold labels the confusion is learned from them.
        let gold: Vec<Option<usize>> = truth
            .iter()
            .enumerate()
            .map(|(i, &y)| (i < 300).then_some(y))
            .collect();
        let obs = Observations { gold: &gold, ..obs };
        let m = LabelModel::fit(&obs, &LabelModelConfig::default());
        assert_eq!(m.kind, LabelModelKind::GoldConfusion);
        assert!((m.confusion[0][3] - 0.4).abs() < 0.12, "{:?}", m.confusion);
        let oof = out_of_fold_posteriors(&obs, &LabelModelConfig::default(), 5, 0);
        assert!(oof[..300].iter().all(|p| p.is_some()));
        assert!(oof[300..].iter().all(|p| p.is_none()));
    }

    /// `synthetic` with the labels swapped: the first label is the rare one (15%).
    fn rare_first(
        n: usize,
        sources: &[(f64, f64, f64)],
        seed: u64,
    ) -> (Vec<usize>, Vec<Vec<Vote>>) {
        let (truth, votes) = synthetic(n, sources, seed);
        let votes = votes
            .into_iter()
            .map(|vs| {
                vs.into_iter()
                    .map(|v| Vote {
                        scores: v.scores.iter().rev().copied().collect(),
                        ..v
                    })
                    .collect()
            })
            .collect();
        (truth.iter().map(|y| 1 - y).collect(), votes)
    }

    #[test]
    fn a_tie_in_the_mean_goes_to_the_label_likelier_among_tied_examples() {
        // Two sources alike: too few to learn accuracies from agreement, and with 25 gold
        // labels too few to learn them from gold, so the mean is used. Where the two disagree
        // the mean ties, and the tie goes to the common label, not to the first one listed.
        let (truth, votes) = rare_first(3000, &[(0.8, 0.8, 1.0), (0.8, 0.8, 1.0)], 4);
        let some_gold = |n: usize| -> Vec<Option<usize>> {
            truth
                .iter()
                .enumerate()
                .map(|(i, &y)| (i < n).then_some(y))
                .collect()
        };
        let is_tie = |v: &Vec<Vote>| v.len() == 2 && argmax(&v[0].scores) != argmax(&v[1].scores);
        let fit_with = |gold: &[Option<usize>], votes: &[Vec<Vote>]| {
            fit_sources(
                &Observations {
                    classes: 2,
                    sources: 2,
                    votes,
                    gold,
                },
                &LabelModelConfig::default(),
                StageMode::Auto,
                1.645,
                0,
            )
        };
        let tie_goes_to = |fit: &SourceFit, votes: &[Vec<Vote>]| -> Vec<Option<usize>> {
            let mut to: Vec<Option<usize>> = votes
                .iter()
                .filter(|v| is_tie(v))
                .map(|v| fit.used.posterior(v).and_then(|p| argmax(&p)))
                .collect();
            to.dedup();
            to
        };
        let says = |fit: &SourceFit, words: &str| {
            assert!(fit.stage.reason.contains(words), "{}", fit.stage.reason);
        };
        assert!(votes.iter().filter(|v| is_tie(v)).count() > 500);
        for gold in [25, 0] {
            let fit = fit_with(&some_gold(gold), &votes);
            if gold == 0 {
                says(&fit, "no gold example has votes that tie");
            }
            assert_eq!(fit.used.kind, LabelModelKind::Mean);
            assert!(fit.used.prior[1] > 0.6, "{:?}", fit.used.prior);
            says(&fit, "; a tie in the mean goes to the l");
            assert_eq!(tie_goes_to(&fit, &votes), [Some(1)], "{gold} gold");
            let leaning = accuracy(|v| fit.used.posterior(v), &truth, &votes);
            let first_listed = accuracy(|v| mean_of(v, 2), &truth, &votes);
            assert!(leaning > first_listed + 0.1, "{leaning} vs {first_listed}");
        }
        // Ties that fall on the rare class (a rule that fires for it against a default that
        // says the common label): the gold examples whose votes tie show it, and the tie
        // goes to the rare label although the prior favours the other.
        let votes: Vec<Vec<Vote>> = truth
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let vote = |source, l| Vote {
                    source,
                    scores: one_hot(l, 2),
                    confidence: 1.0,
                };
                if y == 0 && i % 4 != 0 {
                    vec![vote(0, 0), vote(1, 1)]
                } else {
                    vec![vote(1, y)]
                }
            })
            .collect();
        let fit = fit_with(&some_gold(60), &votes);
        assert_eq!(fit.used.kind, LabelModelKind::Mean, "{}", fit.stage.reason);
        assert!(fit.used.prior[0] > 0.5, "{:?}", fit.used.prior);
        says(&fit, "goes to the likelier label among tied examples");
        assert_eq!(tie_goes_to(&fit, &votes), [Some(0)]);
        // With 30 gold labels or more, their class shares are the prior ties start from.
        let gold = some_gold(40);
        let prior = tie_prior(&Observations {
            classes: 2,
            sources: 2,
            votes: &votes,
            gold: &gold,
        });
        let zeros = gold.iter().flatten().filter(|&&g| g == 0).count();
        assert!(
            (prior[0] - (zeros + 1) as f64 / 42.0).abs() < 1e-9,
            "{prior:?}"
        );
    }

    #[test]
    fn soft_votes_and_unknown_sources_are_handled() {
        let m = LabelModel::mean(2, "test");
        let votes = vec![
            Vote {
                source: 0,
                scores: vec![0.2, 0.8],
                confidence: 1.0,
            },
            Vote {
                source: 5,
                scores: vec![1.0, 0.0],
                confidence: 0.5,
            },
        ];
        let p = m.posterior(&votes).unwrap();
        assert!((p[1] - 0.8 / 1.5).abs() < 1e-5, "{p:?}");
        assert_eq!(m.posterior(&[]), None);
        // A fitted model given a source it never saw still answers.
        let sources = [(0.9, 0.9, 1.0), (0.8, 0.8, 1.0), (0.7, 0.7, 1.0)];
        let (truth, votes3) = synthetic(500, &sources, 3);
        let gold = vec![None; truth.len()];
        let ds = LabelModel::fit(
            &Observations {
                classes: 2,
                sources: 3,
                votes: &votes3,
                gold: &gold,
            },
            &LabelModelConfig::default(),
        );
        let p = ds.posterior(&votes).unwrap();
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
