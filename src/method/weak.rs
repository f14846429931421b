//! Weak labels: hard labels become one-hot rows; an example's weak aggregate is the
//! confidence-weighted mean of its weak labels' distributions; a tie in it can be broken
//! towards the label given shares make likelier (not whichever label the task lists first).

/// One weak label as a distribution over the task's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct WeakVote {
    pub scores: Vec<f32>,
    pub confidence: f32,
}

pub fn one_hot(label: usize, k: usize) -> Vec<f32> {
    let mut v = vec![0.0; k];
    v[label] = 1.0;
    v
}

/// The confidence-weighted mean; `None` without votes (or with zero total confidence).
pub fn aggregate(votes: &[WeakVote], k: usize) -> Option<Vec<f32>> {
    let total: f32 = votes.iter().map(|v| v.confidence).sum();
    if votes.is_empty() || total <= 0.0 {
        return None;
    }
    let mut out = vec![0.0f32; k];
    for vote in votes {
        for (o, s) in out.iter_mut().zip(&vote.scores) {
            *o += vote.confidence * s / total;
        }
    }
    Some(out)
}

/// How much a tie's winner is nudged: enough to decide every `argmax`, too little to move
/// anything else (smoothing, the trust model's margin).
const TIE_NUDGE: f32 = 1e-4;

/// The labels tied at the top of `dist` (within float noise); empty without mass.
pub fn tied_top(dist: &[f32]) -> Vec<usize> {
    let top = dist.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (0..dist.len())
        .filter(|&c| top > 0.0 && dist[c] >= top - 1e-6)
        .collect()
}

/// Breaks a tie at the top of `dist` towards the tied label with the largest `prior`: with
/// two sources that disagree, or two against two, the mean has no answer, and `argmax` would
/// hand every such example to the label listed first, the rare class as often as not. The
/// winner gains [`TIE_NUDGE`] and the row is renormalised; a row without a tie, or whose tied
/// labels are equally likely a priori, is left as it is.
pub fn break_tie(dist: &mut [f32], prior: &[f64]) {
    if prior.len() != dist.len() {
        return;
    }
    let tied = tied_top(dist);
    let Some(&best) = tied
        .iter()
        .max_by(|&&a, &&b| prior[a].total_cmp(&prior[b]).then(b.cmp(&a)))
    else {
        return;
    };
    if tied.len() < 2 || tied.iter().all(|&c| prior[c] == prior[best]) {
        return;
    }
    dist[best] += TIE_NUDGE;
    let total: f32 = dist.iter().sum();
    for d in dist.iter_mut() {
        *d /= total;
    }
}

/// Index of the largest value (first on ties); `None` for an empty or all-zero vector.
pub fn argmax(v: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if best.map(|(_, b)| x > b).unwrap_or(true) {
            best = Some((i, x));
        }
    }
    best.filter(|&(_, b)| b > 0.0).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_weights_by_confidence() {
        let votes = vec![
            WeakVote {
                scores: one_hot(0, 2),
                confidence: 1.0,
            },
            WeakVote {
                scores: vec![0.2, 0.8],
                confidence: 3.0,
            },
        ];
        let agg = aggregate(&votes, 2).unwrap();
        assert!((agg[0] - (1.0 + 0.6) / 4.0).abs() < 1e-6);
        assert!((agg[1] - 2.4 / 4.0).abs() < 1e-6);
        assert!((agg.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(aggregate(&[], 2), None);
    }

    #[test]
    fn a_tie_goes_to_the_likelier_label() {
        // Two votes that disagree: the prior says the second label is the common one.
        let mut tie = vec![0.5f32, 0.5];
        break_tie(&mut tie, &[0.1, 0.9]);
        assert_eq!(argmax(&tie), Some(1));
        assert!((tie.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((tie[1] - 0.5).abs() < 1e-3, "only nudged: {tie:?}");
        // Three labels, two tied at the top: the likelier of those two, not of all three.
        let mut three = vec![0.4f32, 0.2, 0.4];
        break_tie(&mut three, &[0.2, 0.7, 0.1]);
        assert_eq!(argmax(&three), Some(0));
        // No tie, an equal prior, a prior of another length, no mass: left alone.
        for (row, prior) in [
            (vec![0.6f32, 0.4], vec![0.1, 0.9]),
            (vec![0.5, 0.5], vec![0.5, 0.5]),
            (vec![0.5, 0.5], vec![1.0]),
            (vec![0.0, 0.0], vec![0.1, 0.9]),
        ] {
            let mut r = row.clone();
            break_tie(&mut r, &prior);
            assert_eq!(r, row);
        }
    }

    #[test]
    fn argmax_prefers_first_and_rejects_zero() {
        assert_eq!(argmax(&[0.2, 0.5, 0.5]), Some(1));
        assert_eq!(argmax(&[0.0, 0.0]), None);
        assert_eq!(argmax(&[]), None);
    }
}
