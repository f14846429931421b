//! Class priors, estimated and never assumed: most labeling tasks are imbalanced, and a
//! smoothing step that balances towards equal shares makes their labels worse. The estimate
//! comes from the gold labels when there are enough of them, else from the model of the
//! weak sources, else from the weak labels' own class shares, and always carries its
//! standard error and where it came from.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriorSource {
    /// Class shares of the gold labels (add-one smoothed).
    Gold,
    /// The prior π learned by the model of the weak sources.
    SourceModel,
    /// Class shares of the weak aggregates.
    WeakLabels,
    /// Nothing to estimate from: equal shares.
    Uniform,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PriorEstimate {
    pub shares: Vec<f64>,
    /// Standard error of each share (binomial, on the examples it was estimated from).
    pub stderr: Vec<f64>,
    pub source: PriorSource,
    /// How many examples it rests on.
    pub examples: usize,
    pub reason: String,
}

/// What the estimate may be made from.
pub struct PriorEvidence<'a> {
    pub classes: usize,
    /// Gold label counts per class.
    pub gold_counts: &'a [usize],
    /// The source model's π and the number of weakly labelled examples it was fitted on.
    pub source_model: Option<(&'a [f64], usize)>,
    /// Column sums of the weak aggregates and how many examples have one.
    pub weak_mass: Option<(&'a [f64], usize)>,
}

/// How many of `labels` fall in each of `classes` (labels out of range are left out).
pub fn class_counts(labels: impl IntoIterator<Item = usize>, classes: usize) -> Vec<usize> {
    let mut counts = vec![0usize; classes];
    for l in labels.into_iter().filter(|&l| l < classes) {
        counts[l] += 1;
    }
    counts
}

/// Column sums of the distributions over `classes` and how many there are: the weak mass
/// of `PriorEvidence`.
pub fn class_mass<D: AsRef<[f32]>>(
    dists: impl IntoIterator<Item = D>,
    classes: usize,
) -> (Vec<f64>, usize) {
    let (mut mass, mut n) = (vec![0.0f64; classes], 0);
    for d in dists {
        n += 1;
        for (m, p) in mass.iter_mut().zip(d.as_ref()) {
            *m += *p as f64;
        }
    }
    (mass, n)
}

/// Gold labels needed before their class shares are the prior.
pub const MIN_GOLD_FOR_PRIOR: usize = 30;

fn with_stderr(shares: Vec<f64>, n: usize) -> Vec<f64> {
    shares
        .iter()
        .map(|p| (p * (1.0 - p) / n.max(1) as f64).sqrt())
        .collect()
}

pub fn estimate(e: &PriorEvidence) -> PriorEstimate {
    let k = e.classes.max(1);
    let n_gold: usize = e.gold_counts.iter().sum();
    if n_gold >= MIN_GOLD_FOR_PRIOR {
        let shares: Vec<f64> = (0..k)
            .map(|c| {
                (e.gold_counts.get(c).copied().unwrap_or(0) as f64 + 1.0) / (n_gold + k) as f64
            })
            .collect();
        return PriorEstimate {
            stderr: with_stderr(shares.clone(), n_gold),
            shares,
            source: PriorSource::Gold,
            examples: n_gold,
            reason: format!("class shares of {n_gold} gold labels"),
        };
    }
    let short = format!("{n_gold} gold labels (fewer than {MIN_GOLD_FOR_PRIOR})");
    if let Some((pi, n)) = e.source_model.filter(|(pi, n)| *n > 0 && pi.len() == k) {
        return PriorEstimate {
            shares: pi.to_vec(),
            stderr: with_stderr(pi.to_vec(), n),
            source: PriorSource::SourceModel,
            examples: n,
            reason: format!("{short}: the prior learned by the model of the weak sources"),
        };
    }
    if let Some((mass, n)) = e.weak_mass.filter(|(m, n)| *n > 0 && m.len() == k) {
        let total: f64 = mass.iter().sum();
        if total > 0.0 {
            let shares: Vec<f64> = mass.iter().map(|m| m / total).collect();
            return PriorEstimate {
                stderr: with_stderr(shares.clone(), n),
                shares,
                source: PriorSource::WeakLabels,
                examples: n,
                reason: format!("{short}: class shares of the weak labels"),
            };
        }
    }
    PriorEstimate {
        shares: vec![1.0 / k as f64; k],
        stderr: vec![f64::NAN; k],
        source: PriorSource::Uniform,
        examples: 0,
        reason: format!("{short} and no weak labels: equal shares"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gold_wins_when_there_is_enough_of_it() {
        let p = estimate(&PriorEvidence {
            classes: 2,
            gold_counts: &[85, 15],
            source_model: Some((&[0.5, 0.5], 1000)),
            weak_mass: None,
        });
        assert_eq!(p.source, PriorSource::Gold);
        assert!((p.shares[1] - 16.0 / 102.0).abs() < 1e-9);
        assert!((p.stderr[1] - (p.shares[1] * (1.0 - p.shares[1]) / 100.0).sqrt()).abs() < 1e-9);
    }

    #[test]
    fn falls_back_in_order_and_says_why() {
        let p = estimate(&PriorEvidence {
            classes: 2,
            gold_counts: &[3, 1],
            source_model: Some((&[0.8, 0.2], 500)),
            weak_mass: Some((&[10.0, 30.0], 40)),
        });
        assert_eq!(p.source, PriorSource::SourceModel);
        assert!(p.reason.contains("4 gold labels"));
        let p = estimate(&PriorEvidence {
            classes: 2,
            gold_counts: &[0, 0],
            source_model: None,
            weak_mass: Some((&[10.0, 30.0], 40)),
        });
        assert_eq!(p.source, PriorSource::WeakLabels);
        assert!((p.shares[0] - 0.25).abs() < 1e-9);
        let p = estimate(&PriorEvidence {
            classes: 3,
            gold_counts: &[],
            source_model: None,
            weak_mass: None,
        });
        assert_eq!(p.source, PriorSource::Uniform);
        assert_eq!(p.shares.len(), 3);
    }
}
