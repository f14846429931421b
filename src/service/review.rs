//! The review queue: the examples a human label would help most, with the reason; or a
//! fair sample of the unlabelled ones, because every gold check and the prior assume gold
//! labels are a random sample of the task, which labels given where the model is least sure
//! are not. Each item says what to send as `picked` with its label (`method::gold`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::examples::ExampleSummary;
use super::Service;
use crate::error::{Error, Result};
use crate::method::gold::GoldPicked;
use crate::store::examples;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReviewItem {
    #[serde(flatten)]
    pub example: ExampleSummary,
    /// Why a human label would help here.
    pub reason: String,
    /// What to send as `picked` with its gold label (`PUT …/gold`): `review` from the
    /// priority order, whose gold does not judge the checks; `random` from the fair sample.
    pub picked: GoldPicked,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReviewQueue {
    pub items: Vec<ReviewItem>,
}

/// Which examples the queue offers first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewOrder {
    /// Where a label helps most: abstentions, disagreements, undecided, least confident.
    Priority,
    /// A uniform random sample, in an order fixed per task (a keyed hash of the id), so a
    /// page stays put while it is labelled and the next page follows on.
    Sample,
}

impl ReviewOrder {
    /// How a gold label given from this order picked its example.
    pub fn picked(self) -> GoldPicked {
        match self {
            Self::Priority => GoldPicked::Review,
            Self::Sample => GoldPicked::Random,
        }
    }

    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s {
            None | Some("priority") => Ok(Self::Priority),
            Some("sample") => Ok(Self::Sample),
            Some(other) => Err(Error::invalid(
                "invalid_order",
                format!("order must be priority or sample, not {other:?}"),
            )),
        }
    }
}

/// The fair sample's position of example `id` in task `task_id`: splitmix64 of the id keyed by
/// the task, so every task gets its own order and neighbouring ids land far apart.
pub fn sample_key(task_id: i64, id: i64) -> u64 {
    let mut z = (id as u64) ^ (task_id as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `n` ids that come first in the fair sample, in its order.
pub fn first_in_sample(task_id: i64, ids: &[i64], n: usize) -> Vec<i64> {
    let mut keyed: Vec<(u64, i64)> = ids
        .iter()
        .map(|&id| (sample_key(task_id, id), id))
        .collect();
    if keyed.len() > n {
        keyed.select_nth_unstable(n);
        keyed.truncate(n);
    }
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, id)| id).collect()
}

impl Service {
    pub async fn review_queue(
        &self,
        task_name: &str,
        limit: Option<i64>,
        order: Option<&str>,
    ) -> Result<ReviewQueue> {
        let task = self.task(task_name).await?;
        let limit = limit.unwrap_or(20);
        if !(1..=1000).contains(&limit) {
            return Err(Error::invalid("invalid_limit", "limit must be in 1..=1000"));
        }
        let order = ReviewOrder::parse(order)?;
        let pool = self.store.pool();
        let rows = match order {
            ReviewOrder::Priority => examples::review_candidates(pool, task.id, limit).await?,
            ReviewOrder::Sample => {
                let ids = examples::unlabelled_ids(pool, task.id).await?;
                let first = first_in_sample(task.id, &ids, limit as usize);
                let mut rows = examples::by_ids(pool, &first).await?;
                rows.sort_by_key(|r| sample_key(task.id, r.id));
                rows
            }
        };
        let items = rows
            .iter()
            .map(|r| {
                let predicted = task.name_of(r.pred_label);
                let refined = task.name_of(r.refined_label);
                let p_ik = r.p_ik.map(|p| p as f32);
                let reason = match (&predicted, &refined, p_ik) {
                    _ if order == ReviewOrder::Sample => "fair sample: drawn at random, not for the model's doubt, so this label keeps the gold a fair sample of the task (which the checks and thresholds assume)".into(),
                    (Some(p), Some(w), Some(q)) if p != w => format!(
                        "the strong model says {p:?} (P(IK) {q:.2}) but the refined weak label says {w:?}"
                    ),
                    _ if r.decision_source.as_deref().unwrap_or("none") == "none" => {
                        "no decision: no weak evidence reaches it and the strong model is not trusted".into()
                    }
                    (_, _, Some(q)) => format!("low P(IK) ({q:.2}): the strong model is unsure"),
                    _ => "no trained model yet; labels here seed the first one".into(),
                };
                ReviewItem {
                    example: super::examples::summary(&task, r),
                    reason,
                    picked: order.picked(),
                }
            })
            .collect();
        Ok(ReviewQueue { items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_fixed_per_task_and_spread_over_the_ids() {
        let ids: Vec<i64> = (1..=10_000).collect();
        let a = first_in_sample(1, &ids, 500);
        assert_eq!(
            a,
            first_in_sample(1, &ids, 500),
            "the same order every time"
        );
        assert_ne!(a, first_in_sample(2, &ids, 500), "each task its own order");
        // Labelling the first ten leaves the rest of the page where it was.
        let rest: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !a[..10].contains(id))
            .collect();
        assert_eq!(first_in_sample(1, &rest, 490), a[10..]);
        // Uniform over the ids: each tenth of them holds about a tenth of the sample
        // (50 expected, sd ~6.7).
        for decile in 0..10 {
            let n = a.iter().filter(|&&id| (id - 1) / 1000 == decile).count();
            assert!((30..=70).contains(&n), "decile {decile}: {n} of 500");
        }
        // Every second id (a task ingested as alternating classes) is half the sample.
        let even = a.iter().filter(|&&id| id % 2 == 0).count();
        assert!((200..=300).contains(&even), "{even} even of 500");
    }

    #[test]
    fn order_parses_or_says_what_it_takes() {
        assert_eq!(ReviewOrder::parse(None).ok(), Some(ReviewOrder::Priority));
        assert_eq!(
            ReviewOrder::parse(Some("sample")).ok(),
            Some(ReviewOrder::Sample)
        );
        let err = ReviewOrder::parse(Some("random"))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("priority or sample")));
    }
}
