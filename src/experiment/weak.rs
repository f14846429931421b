//! The weak supervisor of the protocol: a weak model trained on weak-train's ground truth
//! (`bow`, `layers:N`), or a noise model applied to the truth (`flip:…`, `lfs:N`), so the
//! method can be measured under noise that is not a model's (class-dependent flips, several
//! labeling functions that abstain).
//!
//! Every labeler gives each row a list of votes, as a labeling pipeline would send them.

use std::collections::HashMap;

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};

use super::bow;
use super::data::{Row, Split};
use crate::cli::GoldFrom;
use crate::method::heads::softmax;
use crate::method::label_model::Vote;
use crate::method::training::{train_softmax, Dataset, TrainConfig};
use crate::method::weak::one_hot;

#[derive(Debug, Clone, PartialEq)]
pub enum WeakKind {
    Bow,
    Layers(usize),
    /// Flip rate per true class (one value: the same for all).
    Flip(Vec<f64>),
    /// This many labeling functions.
    Lfs(usize),
}

impl WeakKind {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s == "bow" {
            return Ok(WeakKind::Bow);
        }
        if let Some(n) = s.strip_prefix("layers:") {
            return Ok(WeakKind::Layers(
                n.parse().context("layers:N needs a number")?,
            ));
        }
        if let Some(rates) = s.strip_prefix("flip:") {
            let rates: Vec<f64> = rates
                .split(',')
                .map(|r| r.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .context("flip:P or flip:P0,P1,… needs numbers")?;
            if rates.is_empty() || rates.iter().any(|r| !(0.0..1.0).contains(r)) {
                bail!("flip rates must be in [0, 1)");
            }
            return Ok(WeakKind::Flip(rates));
        }
        if let Some(n) = s.strip_prefix("lfs:") {
            let n: usize = n.parse().context("lfs:N needs a number")?;
            if n == 0 {
                bail!("lfs:N needs at least one labeling function");
            }
            return Ok(WeakKind::Lfs(n));
        }
        bail!("--weak must be `bow`, `layers:N`, `flip:P[,P…]` or `lfs:N`, got {s:?}")
    }

    /// A model trained on weak-train's ground truth (rather than noise on the truth).
    pub fn learned(&self) -> bool {
        matches!(self, WeakKind::Bow | WeakKind::Layers(_))
    }

    pub fn sources(&self) -> usize {
        match self {
            WeakKind::Lfs(n) => *n,
            _ => 1,
        }
    }
}

pub struct WeakLabeler<'a> {
    pub kind: WeakKind,
    pub rows: &'a [Row],
    pub k: usize,
    pub layer_embeddings: Option<Vec<Vec<f32>>>,
    pub bow: Vec<bow::Sparse>,
}

fn soft(source: usize, scores: Vec<f32>) -> Vec<Vote> {
    vec![Vote {
        source,
        scores,
        confidence: 1.0,
    }]
}

/// Folds of weak-train for a learned weak model, whole groups each.
const FOLDS: u64 = 5;

/// A row's fold, from its group.
pub fn fold_of(group: u64) -> usize {
    (group % FOLDS) as usize
}

/// With `--gold held-out`, the weak-train rows that are the gold set (one fold); the
/// learned weak model trains on the others.
pub fn in_gold_fold(group: u64) -> bool {
    fold_of(group) == 0
}

/// What the weak supervisor gives one seed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WeakVotes {
    /// Each row's votes.
    pub own: HashMap<usize, Vec<Vote>>,
    /// A cross-fitted learned model only: per fold, that fold's model's votes on all of
    /// strong-train (its own gold fold's are in `own`), so that smoothing can run once per
    /// fold on the labels of one model that saw none of the rows it refines
    /// (`Ctx::smooth`).
    pub passes: Vec<HashMap<usize, Vec<Vote>>>,
}

impl From<HashMap<usize, Vec<Vote>>> for WeakVotes {
    fn from(own: HashMap<usize, Vec<Vote>>) -> Self {
        WeakVotes {
            own,
            passes: vec![],
        }
    }
}

impl WeakLabeler<'_> {
    /// Votes for every row of the split. A weak model is trained five times, each time on
    /// weak-train without one fold of whole groups; each weak-train row is labelled by the
    /// model that did not see its fold, and each strong-train or test row by one of the five
    /// picked by its group. So every row's weak label comes from the same kind of model and
    /// none from a model that saw its label: the gold examples' own weak labels behave like
    /// everyone else's. Their neighbours' do not (four of the five models trained on each
    /// gold label), which is why each model's votes on all of strong-train are kept too
    /// (`WeakVotes::passes`). A noise model labels every row alike.
    ///
    /// With `GoldFrom::HeldOut` a learned weak model is trained once on weak-train without
    /// its gold fold and labels that fold, strong-train and test: no gold label reaches a
    /// model that labels anything in the run (the training rows get no votes).
    pub fn label(
        &self,
        split: &Split,
        groups: &[u64],
        seed: u64,
        gold: GoldFrom,
    ) -> anyhow::Result<WeakVotes> {
        let all: Vec<usize> = split
            .weak_train
            .iter()
            .chain(&split.strong_train)
            .chain(&split.test)
            .copied()
            .collect();
        match &self.kind {
            WeakKind::Bow | WeakKind::Layers(_) if gold == GoldFrom::HeldOut => {
                let (held, fit): (Vec<usize>, Vec<usize>) = split
                    .weak_train
                    .iter()
                    .partition(|&&r| in_gold_fold(groups[r]));
                let predict: Vec<usize> = held
                    .into_iter()
                    .chain(split.strong_train.iter().chain(&split.test).copied())
                    .collect();
                Ok(WeakVotes {
                    own: self.train_predict(&fit, &predict, seed)?,
                    passes: vec![],
                })
            }
            WeakKind::Bow | WeakKind::Layers(_) => {
                // Folds keep groups whole (alternate rows would put every SciQ question's right
                // answer in one fold and its wrong one in another).
                let mut out = WeakVotes::default();
                for f in 0..FOLDS as usize {
                    let (held, rest): (Vec<usize>, Vec<usize>) = split
                        .weak_train
                        .iter()
                        .partition(|&&r| fold_of(groups[r]) == f);
                    let predict: Vec<usize> = held
                        .into_iter()
                        .chain(split.strong_train.iter().copied())
                        .chain(
                            split
                                .test
                                .iter()
                                .copied()
                                .filter(|&r| fold_of(groups[r]) == f),
                        )
                        .collect();
                    let mut votes = self.train_predict(&rest, &predict, seed)?;
                    out.passes.push(
                        split
                            .strong_train
                            .iter()
                            .filter_map(|r| votes.get(r).map(|v| (*r, v.clone())))
                            .collect(),
                    );
                    votes.retain(|r, _| fold_of(groups[*r]) == f);
                    out.own.extend(votes);
                }
                Ok(out)
            }
            WeakKind::Flip(rates) => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xf1_1f);
                let mut order = all.clone();
                order.sort_unstable();
                Ok(order
                    .into_iter()
                    .map(|r| {
                        let y = self.rows[r].label;
                        let rate = rates.get(y).or(rates.last()).copied().unwrap_or(0.0);
                        let l = if self.k > 1 && rng.gen_bool(rate) {
                            let other = rng.gen_range(0..self.k - 1);
                            if other >= y {
                                other + 1
                            } else {
                                other
                            }
                        } else {
                            y
                        };
                        (r, soft(0, one_hot(l, self.k)))
                    })
                    .collect::<HashMap<_, _>>()
                    .into())
            }
            WeakKind::Lfs(n) => {
                // Each function: its own accuracy on each class and its coverage.
                let params: Vec<(Vec<f64>, f64)> = (0..*n)
                    .map(|s| {
                        let mut rng =
                            rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1000) + s as u64);
                        let acc = (0..self.k).map(|_| rng.gen_range(0.55..0.95)).collect();
                        (acc, rng.gen_range(0.3..0.8))
                    })
                    .collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x1f5);
                let mut order = all.clone();
                order.sort_unstable();
                Ok(order
                    .into_iter()
                    .map(|r| {
                        let y = self.rows[r].label;
                        let votes = params
                            .iter()
                            .enumerate()
                            .filter_map(|(s, (acc, coverage))| {
                                if !rng.gen_bool(*coverage) {
                                    return None;
                                }
                                let l = if self.k < 2 || rng.gen_bool(acc[y]) {
                                    y
                                } else {
                                    let other = rng.gen_range(0..self.k - 1);
                                    if other >= y {
                                        other + 1
                                    } else {
                                        other
                                    }
                                };
                                Some(Vote {
                                    source: s,
                                    scores: one_hot(l, self.k),
                                    confidence: 1.0,
                                })
                            })
                            .collect();
                        (r, votes)
                    })
                    .collect::<HashMap<_, _>>()
                    .into())
            }
        }
    }

    fn train_predict(
        &self,
        train: &[usize],
        predict: &[usize],
        seed: u64,
    ) -> anyhow::Result<HashMap<usize, Vec<Vote>>> {
        let y: Vec<usize> = train.iter().map(|&r| self.rows[r].label).collect();
        match self.kind {
            WeakKind::Bow => {
                let x: Vec<bow::Sparse> = train.iter().map(|&r| self.bow[r].clone()).collect();
                let m = bow::BowModel::train(&x, &y, self.k, 10, seed);
                Ok(predict
                    .iter()
                    .map(|&r| (r, soft(0, m.probs(&self.bow[r]))))
                    .collect())
            }
            WeakKind::Layers(_) => {
                let e = self.layer_embeddings.as_ref().context("layer embeddings")?;
                let x: Vec<f32> = train.iter().flat_map(|&r| e[r].iter().copied()).collect();
                let t: Vec<f32> = y.iter().flat_map(|&l| one_hot(l, self.k)).collect();
                let cfg = TrainConfig {
                    seed,
                    ..TrainConfig::default()
                };
                let (head, _) = train_softmax(
                    &Dataset {
                        x: &x,
                        dims: e[0].len(),
                        targets: &t,
                        k: self.k,
                        weights: None,
                    },
                    &cfg,
                    None,
                    &mut |_| true,
                )?;
                Ok(predict
                    .iter()
                    .map(|&r| (r, soft(0, softmax(&head.forward(&e[r])))))
                    .collect())
            }
            _ => bail!("only weak models are trained"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<Row> {
        (0..n)
            .map(|i| Row {
                id: format!("r{i}"),
                text: String::new(),
                label: usize::from(i % 4 == 0),
                label_names: vec![],
                group: None,
            })
            .collect()
    }

    #[test]
    fn noise_models_parse_and_flip_at_their_rates() {
        assert_eq!(
            WeakKind::parse("flip:0.3").unwrap(),
            WeakKind::Flip(vec![0.3])
        );
        assert_eq!(WeakKind::parse("lfs:5").unwrap().sources(), 5);
        assert!(WeakKind::parse("flip:1.5").is_err());
        assert!(WeakKind::parse("nope").is_err());
        let rows = rows(4000);
        let split = Split {
            weak_train: (0..4000).collect(),
            strong_train: vec![],
            test: vec![],
        };
        let groups: Vec<u64> = (0..4000).collect();
        let labeler = WeakLabeler {
            kind: WeakKind::Flip(vec![0.1, 0.4]),
            rows: &rows,
            k: 2,
            layer_embeddings: None,
            bow: vec![],
        };
        let votes = labeler
            .label(&split, &groups, 1, GoldFrom::CrossFitted)
            .unwrap()
            .own;
        let flipped = |class: usize| {
            let of: Vec<usize> = (0..4000).filter(|&r| rows[r].label == class).collect();
            of.iter()
                .filter(|&&r| votes[&r][0].scores[class] == 0.0)
                .count() as f64
                / of.len() as f64
        };
        assert!((flipped(0) - 0.1).abs() < 0.03, "{}", flipped(0));
        assert!((flipped(1) - 0.4).abs() < 0.05, "{}", flipped(1));
        // The same seed gives the same labels.
        assert_eq!(
            labeler
                .label(&split, &groups, 1, GoldFrom::CrossFitted)
                .unwrap()
                .own,
            votes
        );
        let lfs = WeakLabeler {
            kind: WeakKind::Lfs(3),
            ..labeler
        };
        let votes = lfs.label(&split, &groups, 1, GoldFrom::HeldOut).unwrap();
        assert!(votes.passes.is_empty(), "noise has no folds");
        let votes = votes.own;
        let n_votes: usize = votes.values().map(|v| v.len()).sum();
        assert!(n_votes > 3000 && n_votes < 10000, "{n_votes}");
        assert!(votes.values().any(|v| v.is_empty()), "functions abstain");
    }

    #[test]
    fn held_out_gold_is_labelled_by_a_model_that_never_saw_any_gold() {
        let rows: Vec<Row> = (0..600)
            .map(|i| Row {
                id: format!("r{i}"),
                text: if i % 2 == 0 {
                    "a good film"
                } else {
                    "a bad film"
                }
                .into(),
                label: i % 2,
                label_names: vec![],
                group: None,
            })
            .collect();
        let split = Split {
            weak_train: (0..300).collect(),
            strong_train: (300..500).collect(),
            test: (500..600).collect(),
        };
        let groups: Vec<u64> = (0..600).collect();
        let labeler = WeakLabeler {
            kind: WeakKind::Bow,
            rows: &rows,
            k: 2,
            layer_embeddings: None,
            bow: rows.iter().map(|r| bow::features(&r.text)).collect(),
        };
        let crossed = labeler
            .label(&split, &groups, 1, GoldFrom::CrossFitted)
            .unwrap();
        assert_eq!(
            crossed.own.len(),
            600,
            "every row, each by a model without its fold"
        );
        // Each fold's model labels all of strong-train, and a row's own votes are its
        // fold's model's.
        assert_eq!(crossed.passes.len(), 5);
        for (f, pass) in crossed.passes.iter().enumerate() {
            assert_eq!(pass.len(), 200);
            for r in (300..500).filter(|&r| fold_of(groups[r]) == f) {
                assert_eq!(pass[&r], crossed.own[&r]);
            }
        }
        let held = labeler
            .label(&split, &groups, 1, GoldFrom::HeldOut)
            .unwrap();
        assert!(held.passes.is_empty());
        let held = held.own;
        let gold: Vec<usize> = (0..300).filter(|&r| in_gold_fold(groups[r])).collect();
        assert_eq!(gold.len(), 60);
        let mut labelled: Vec<usize> = held.keys().copied().collect();
        labelled.sort_unstable();
        let expected: Vec<usize> = gold.iter().copied().chain(300..600).collect();
        assert_eq!(
            labelled, expected,
            "the weak model's training rows get no votes"
        );
        // The model learned the task from the other four fifths.
        let right = expected
            .iter()
            .filter(|&&r| crate::method::weak::argmax(&held[&r][0].scores) == Some(rows[r].label))
            .count();
        assert_eq!(right, expected.len());
    }
}
