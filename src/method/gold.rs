//! Gold labels picked for review. The checks that keep a label-changing stage on, and the
//! class prior smoothing balances towards, assume the gold labels are a random sample of the
//! task. Gold given to the examples the review queue puts first (abstentions,
//! disagreements, the least confident) is not: measured over HTTP, judged on it a stage that
//! helps on hard examples passed its check and made the rest of the task worse than the raw
//! weak labels, and the prior leaned to the class that is hard (README, "Gold picked for
//! review"). So gold the client says was picked for review does not judge while at least
//! `MIN_JUDGING_GOLD` other gold labels remain. It still trains, and it still calibrates the
//! confidences (P(IK), the trust model, the arbiter) and fits the precision thresholds:
//! those are conditional on the features the queue picked by, and fitted on hard examples
//! the thresholds erred towards caution where it was measured.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How an example came to be gold-labelled, as the client says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GoldPicked {
    /// Drawn at random from the task (the review queue's `order=sample`).
    Random,
    /// Picked for being hard or doubtful (the review queue's default `priority` order).
    Review,
}

impl GoldPicked {
    pub fn as_str(self) -> &'static str {
        match self {
            GoldPicked::Random => "random",
            GoldPicked::Review => "review",
        }
    }

    /// The stored value; anything else (NULL, older rows) is unknown.
    pub fn parse(s: Option<&str>) -> Option<Self> {
        match s? {
            "random" => Some(GoldPicked::Random),
            "review" => Some(GoldPicked::Review),
            _ => None,
        }
    }
}

/// Gold labels left to judge before those picked for review are left out of judging: the
/// least the class prior is taken from gold on.
pub const MIN_JUDGING_GOLD: usize = super::prior::MIN_GOLD_FOR_PRIOR;

/// Which gold judged a job, and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GoldUse {
    /// Gold labels in the task (every one trains and calibrates).
    pub labels: usize,
    /// Of them, picked for review by the client's say.
    pub review_picked: usize,
    /// Gold labels the stage checks and the class prior were judged on.
    pub judging: usize,
    pub reason: String,
}

/// The gold labels that judge (`None` where an example's gold does not), and the account.
pub fn judging_gold(
    labels: &[String],
    gold: &[Option<usize>],
    picked: &[Option<GoldPicked>],
) -> (Vec<Option<usize>>, GoldUse) {
    let k = labels.len();
    let review = |i: usize| picked.get(i).copied().flatten() == Some(GoldPicked::Review);
    let (mut rest, mut hard) = (vec![0usize; k], vec![0usize; k]);
    for (i, g) in gold.iter().enumerate() {
        if let Some(g) = g.filter(|&g| g < k) {
            if review(i) {
                hard[g] += 1;
            } else {
                rest[g] += 1;
            }
        }
    }
    let (n_rest, n_review): (usize, usize) = (rest.iter().sum(), hard.iter().sum());
    let n = n_rest + n_review;
    let leave_out = n_review > 0 && n_rest >= MIN_JUDGING_GOLD;
    let judge: Vec<Option<usize>> = (0..gold.len())
        .map(|i| gold[i].filter(|_| !(leave_out && review(i))))
        .collect();
    // The class review-picked gold holds most more of than the rest shows its lean.
    let share = |c: &[usize], n: usize, i: usize| c[i] as f64 / n.max(1) as f64;
    let lean = (0..k)
        .max_by(|&a, &b| {
            let d = |i| share(&hard, n_review, i) - share(&rest, n_rest, i);
            d(a).total_cmp(&d(b))
        })
        .filter(|_| n_rest > 0 && n_review > 0)
        .map(|c| {
            format!(
                " ({:?} is {:.0}% of them, {:.0}% of the others)",
                labels[c],
                100.0 * share(&hard, n_review, c),
                100.0 * share(&rest, n_rest, c)
            )
        })
        .unwrap_or_default();
    let reason = if n_review == 0 {
        format!("all {n} gold labels judge (none was said to be picked for review)")
    } else if leave_out {
        format!(
            "{n_rest} gold labels judge the checks and the class prior; the {n_review} picked for review{lean} train and calibrate but do not judge, since a check on hard examples can pass a stage that harms the rest"
        )
    } else {
        format!(
            "all {n} gold labels judge, {n_review} of them picked for review{lean}: fewer than {MIN_JUDGING_GOLD} others, so the checks and the prior lean towards hard examples; label a random sample (review queue order=sample)"
        )
    };
    let judging = judge.iter().flatten().count();
    (
        judge,
        GoldUse {
            labels: n,
            review_picked: n_review,
            judging,
            reason,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_picked_gold_judges_only_when_too_little_else_is_left() {
        let labels = ["neg".to_string(), "pos".to_string()];
        // 40 gold labels unsaid or random (10 "neg"), 20 picked for review (15 "neg"), and
        // one example without gold.
        let mut gold: Vec<Option<usize>> = vec![];
        let mut picked: Vec<Option<GoldPicked>> = vec![];
        for i in 0..40 {
            gold.push(Some(usize::from(i >= 10)));
            picked.push((i % 2 == 0).then_some(GoldPicked::Random));
        }
        for i in 0..20 {
            gold.push(Some(usize::from(i >= 15)));
            picked.push(Some(GoldPicked::Review));
        }
        gold.push(None);
        picked.push(Some(GoldPicked::Review));
        let (judge, used) = judging_gold(&labels, &gold, &picked);
        assert_eq!(
            (used.labels, used.review_picked, used.judging),
            (60, 20, 40)
        );
        assert_eq!(judge[..40], gold[..40]);
        assert!(judge[40..].iter().all(Option::is_none));
        assert!(
            used.reason.contains("the 20 picked for review (\"neg\" is 75% of them, 25% of the others) train and calibrate but do not judge"),
            "{}",
            used.reason
        );
        // With only 20 others (fewer than 30), every gold label judges, and the account says
        // the figures lean.
        let few: Vec<Option<usize>> = gold[20..].to_vec();
        let (judge, used) = judging_gold(&labels, &few, &picked[20..]);
        assert_eq!(judge, few);
        assert_eq!((used.review_picked, used.judging), (20, 40));
        assert!(
            used.reason.contains("lean towards hard examples"),
            "{}",
            used.reason
        );
        // Nothing said (or `picked` shorter than `gold`, as for rows from before it): all judge.
        let (judge, used) = judging_gold(&labels, &gold, &[]);
        assert_eq!(judge, gold);
        assert_eq!((used.review_picked, used.judging), (0, 60));
        assert_eq!(GoldPicked::parse(Some("review")), Some(GoldPicked::Review));
        assert_eq!(GoldPicked::parse(Some("other")), None);
        assert_eq!(
            GoldPicked::parse(Some(GoldPicked::Random.as_str())),
            Some(GoldPicked::Random)
        );
    }
}
