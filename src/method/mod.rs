//! The method (README, "How a label is decided"), as pure logic over in-memory data: the
//! model of the weak sources, class priors, the stage safeguards, P(IK), the weak-side trust
//! model, the decision rule and policy, metrics, the per-task heads and every kind of
//! training (heads, encoder fine-tuning). Nothing here does I/O; tests call it directly.
//! Label spreading lives with the graph (`graph::spreading`).

pub mod adamw;
pub mod confidence;
pub mod finetune;
pub mod gold;
pub mod heads;
pub mod label_model;
pub mod metrics;
pub mod pik;
pub mod pipeline;
pub mod policy;
pub mod prior;
pub mod rule;
pub mod safeguard;
pub mod training;
pub mod weak;

/// Indices grouped by key, whole groups in a seeded random order (keys are first sorted, so
/// the order depends only on the keys and the seed). Splits built from it never put one
/// group on both sides.
pub fn shuffled_groups<K: Ord>(keys: impl IntoIterator<Item = K>, seed: u64) -> Vec<Vec<usize>> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut members: std::collections::BTreeMap<K, Vec<usize>> = Default::default();
    for (i, k) in keys.into_iter().enumerate() {
        members.entry(k).or_default().push(i);
    }
    let mut groups: Vec<Vec<usize>> = members.into_values().collect();
    groups.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    groups
}
