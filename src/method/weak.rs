//! Weak labels: hard labels become one-hot rows; an example's weak aggregate is the
//! confidence-weighted mean of its weak labels' distributions.

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
    fn argmax_prefers_first_and_rejects_zero() {
        assert_eq!(argmax(&[0.2, 0.5, 0.5]), Some(1));
        assert_eq!(argmax(&[0.0, 0.0]), None);
        assert_eq!(argmax(&[]), None);
    }
}
