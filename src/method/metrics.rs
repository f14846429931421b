//! Evaluation metrics: accuracy, macro-F1 and balanced accuracy (which imbalanced tasks need
//! beside accuracy), AUROC, expected calibration error, Brier score, and the two curves a
//! reader of a confidence wants drawn: reliability bins and precision against coverage.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return f64::NAN;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

/// Area under the ROC curve of `scores` for binary `labels` (Mann–Whitney U, ties count
/// half). `None` when one class is absent.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties.
    let mut rank_sum_pos = 0.0f64;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if labels[k] {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos as f64 * neg as f64))
}

/// Expected calibration error with `bins` equal-width bins.
pub fn ece(probs: &[f32], outcomes: &[bool], bins: usize) -> f64 {
    if probs.is_empty() {
        return f64::NAN;
    }
    let n = probs.len() as f64;
    reliability(probs, outcomes, bins)
        .iter()
        .map(|b| (b.count as f64 / n) * (b.confidence - b.accuracy).abs())
        .sum()
}

pub fn brier(probs: &[f32], outcomes: &[bool]) -> f64 {
    if probs.is_empty() {
        return f64::NAN;
    }
    probs
        .iter()
        .zip(outcomes)
        .map(|(&p, &o)| (p as f64 - o as u8 as f64).powi(2))
        .sum::<f64>()
        / probs.len() as f64
}

/// Per-class (true positives, predicted, actual) counts; `None` predictions are misses.
fn per_class(pred: &[Option<usize>], gold: &[usize], k: usize) -> Vec<(usize, usize, usize)> {
    let mut c = vec![(0, 0, 0); k];
    for (p, &g) in pred.iter().zip(gold) {
        if g < k {
            c[g].2 += 1;
        }
        if let Some(p) = p.filter(|&p| p < k) {
            c[p].1 += 1;
            if p == g {
                c[p].0 += 1;
            }
        }
    }
    c
}

/// Unweighted mean of the per-class F1 scores over the classes present in `gold` or `pred`.
pub fn macro_f1(pred: &[Option<usize>], gold: &[usize], k: usize) -> f64 {
    let scores: Vec<f64> = per_class(pred, gold, k)
        .into_iter()
        .filter(|&(_, p, a)| p + a > 0)
        .map(|(tp, p, a)| 2.0 * tp as f64 / (p + a) as f64)
        .collect();
    if scores.is_empty() {
        return f64::NAN;
    }
    scores.iter().sum::<f64>() / scores.len() as f64
}

/// Mean recall over the classes present in `gold`.
pub fn balanced_accuracy(pred: &[Option<usize>], gold: &[usize], k: usize) -> f64 {
    let recalls: Vec<f64> = per_class(pred, gold, k)
        .into_iter()
        .filter(|&(_, _, a)| a > 0)
        .map(|(tp, _, a)| tp as f64 / a as f64)
        .collect();
    if recalls.is_empty() {
        return f64::NAN;
    }
    recalls.iter().sum::<f64>() / recalls.len() as f64
}

/// Mean and sample standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Two models' accuracy difference on the same examples (`a` − `b`, from who was right
/// where) and its paired standard error: how far apart two models must test before the
/// test set itself can tell them apart.
pub fn paired_difference(a: &[bool], b: &[bool]) -> Option<(f64, f64)> {
    let n = a.len();
    if n == 0 || n != b.len() {
        return None;
    }
    let (mut only_a, mut only_b) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        only_a += usize::from(x && !y);
        only_b += usize::from(y && !x);
    }
    let n = n as f64;
    let diff = (only_a as f64 - only_b as f64) / n;
    let second = (only_a + only_b) as f64 / n;
    Some((diff, ((second - diff * diff).max(0.0) / n).sqrt()))
}

/// The standard deviation of the AUROC of an uninformative score (Mann–Whitney under the
/// null) with `pos` positives and `neg` negatives; 0.5 when a class is empty (nothing to rank).
pub fn auroc_null_se(pos: usize, neg: usize) -> f64 {
    if pos == 0 || neg == 0 {
        return 0.5;
    }
    let (p, q) = (pos as f64, neg as f64);
    ((p + q + 1.0) / (12.0 * p * q)).sqrt()
}

/// One bin of a reliability diagram: the examples whose confidence fell in `[lo, hi)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean confidence in the bin.
    pub confidence: f64,
    /// Share right in the bin.
    pub accuracy: f64,
}

/// The non-empty bins of `bins` equal-width confidence bins (the ones `ece` sums over).
pub fn reliability(probs: &[f32], outcomes: &[bool], bins: usize) -> Vec<ReliabilityBin> {
    let mut count = vec![0usize; bins];
    let mut conf = vec![0f64; bins];
    let mut hits = vec![0f64; bins];
    for (&p, &o) in probs.iter().zip(outcomes) {
        let b = ((p.clamp(0.0, 1.0) * bins as f32) as usize).min(bins - 1);
        count[b] += 1;
        conf[b] += p as f64;
        hits[b] += o as u8 as f64;
    }
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| ReliabilityBin {
            lo: b as f64 / bins as f64,
            hi: (b + 1) as f64 / bins as f64,
            count: count[b],
            confidence: conf[b] / count[b] as f64,
            accuracy: hits[b] / count[b] as f64,
        })
        .collect()
}

/// A point of the precision-versus-coverage curve: keeping the examples whose confidence is at
/// least `threshold` covers `coverage` of them with `precision` right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CoveragePoint {
    pub threshold: f64,
    pub coverage: f64,
    pub precision: f64,
}

/// The curve at (at most) `points` coverages, from the most confident example to all of them.
pub fn precision_coverage(probs: &[f32], outcomes: &[bool], points: usize) -> Vec<CoveragePoint> {
    let n = probs.len();
    if n == 0 || points == 0 {
        return vec![];
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut right = 0usize;
    let mut out: Vec<CoveragePoint> = Vec::with_capacity(points);
    let step = n.div_ceil(points).max(1);
    for (k, &i) in idx.iter().enumerate() {
        right += outcomes[i] as usize;
        let kept = k + 1;
        // A cut between equal confidences is not a threshold anyone can pick.
        let tie_follows = idx.get(k + 1).is_some_and(|&j| probs[j] == probs[i]);
        if (kept % step == 0 || kept == n) && !tie_follows {
            out.push(CoveragePoint {
                threshold: probs[i] as f64,
                coverage: kept as f64 / n as f64,
                precision: right as f64 / kept as f64,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_difference_counts_discordant_pairs() {
        // 100 examples: both right on 70, only a on 6, only b on 4, both wrong on 20.
        let a: Vec<bool> = (0..100).map(|i| i < 76).collect();
        let b: Vec<bool> = (0..100).map(|i| i < 70 || (76..80).contains(&i)).collect();
        let (d, se) = paired_difference(&a, &b).unwrap();
        assert!((d - 0.02).abs() < 1e-12);
        assert!((se - ((0.10f64 - 0.0004) / 100.0).sqrt()).abs() < 1e-12);
        assert_eq!(paired_difference(&a, &b[..10]), None);
        assert_eq!(paired_difference(&a, &a), Some((0.0, 0.0)));
    }

    #[test]
    fn auroc_known_values() {
        assert_eq!(
            auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(
            auroc(&[0.5, 0.5, 0.5, 0.5], &[false, true, false, true]),
            Some(0.5)
        );
        // One swapped pair out of four.
        assert_eq!(
            auroc(&[0.1, 0.6, 0.5, 0.9], &[false, false, true, true]),
            Some(0.75)
        );
        assert_eq!(auroc(&[0.1, 0.2], &[true, true]), None);
    }

    #[test]
    fn calibration_metrics() {
        let probs = [1.0, 1.0, 0.0, 0.0];
        let outcomes = [true, true, false, false];
        assert!(ece(&probs, &outcomes, 10) < 1e-9);
        assert!(brier(&probs, &outcomes) < 1e-9);
        let probs = [0.8; 10];
        let outcomes: Vec<bool> = (0..10).map(|i| i < 5).collect();
        assert!((ece(&probs, &outcomes, 10) - 0.3).abs() < 1e-6);
        assert!((brier(&[0.5, 0.5], &[true, false]) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn imbalance_aware_metrics() {
        // 9 negatives, 1 positive; always predicting negative: accuracy 0.9, but balanced
        // accuracy 0.5 and macro-F1 0.47.
        let gold: Vec<usize> = (0..10).map(|i| usize::from(i == 9)).collect();
        let all_neg = vec![Some(0); 10];
        assert!((balanced_accuracy(&all_neg, &gold, 2) - 0.5).abs() < 1e-12);
        assert!((macro_f1(&all_neg, &gold, 2) - (18.0 / 19.0) / 2.0).abs() < 1e-12);
        let perfect: Vec<Option<usize>> = gold.iter().map(|&g| Some(g)).collect();
        assert_eq!(macro_f1(&perfect, &gold, 2), 1.0);
        assert_eq!(balanced_accuracy(&perfect, &gold, 2), 1.0);
        // A missing prediction is a miss for recall.
        let mut missing = perfect.clone();
        missing[9] = None;
        assert!((balanced_accuracy(&missing, &gold, 2) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn accuracy_and_spread() {
        assert_eq!(accuracy(&[1, 0, 1, 1], &[1, 1, 1, 0]), 0.5);
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
    }

    #[test]
    fn reliability_bins_match_ece() {
        let p = [0.05, 0.15, 0.9, 0.95, 0.92, 0.55];
        let o = [false, false, true, true, false, true];
        let bins = reliability(&p, &o, 10);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 6);
        let top = bins.iter().find(|b| b.lo == 0.9).unwrap();
        assert_eq!(top.count, 3);
        assert!((top.accuracy - 2.0 / 3.0).abs() < 1e-9);
        // |0.05 - 0| + |0.15 - 0| + |0.55 - 1| + 3 · |0.9233 - 0.6667|, over 6.
        assert!((ece(&p, &o, 10) - 1.42 / 6.0).abs() < 1e-6);
    }

    #[test]
    fn precision_falls_as_coverage_grows_on_a_calibrated_order() {
        let p = [0.99, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3];
        let o = [true, true, true, true, false, true, false, false];
        let curve = precision_coverage(&p, &o, 4);
        assert_eq!(curve.len(), 4);
        assert_eq!(curve[0].coverage, 0.25);
        assert_eq!(curve[0].precision, 1.0);
        assert_eq!(curve[0].threshold, 0.9f32 as f64);
        let last = curve.last().unwrap();
        assert_eq!((last.coverage, last.precision), (1.0, 5.0 / 8.0));
        // Ties are never split.
        let tied = precision_coverage(&[0.5, 0.5, 0.5], &[true, false, true], 3);
        assert_eq!(tied.len(), 1);
        assert!(precision_coverage(&[], &[], 5).is_empty());
    }

    #[test]
    fn the_null_spread_of_auroc_matches_a_simulation() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let labels: Vec<bool> = (0..100).map(|i| i < 40).collect();
        let runs: Vec<f64> = (0..2000)
            .map(|_| {
                let scores: Vec<f32> = (0..100).map(|_| rng.gen()).collect();
                auroc(&scores, &labels).unwrap()
            })
            .collect();
        let mean = runs.iter().sum::<f64>() / runs.len() as f64;
        let sd = (runs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / runs.len() as f64).sqrt();
        let se = auroc_null_se(40, 60);
        assert!((sd - se).abs() < 0.1 * se, "simulated {sd}, formula {se}");
        assert_eq!(auroc_null_se(0, 5), 0.5);
    }
}
