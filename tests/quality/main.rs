//! Quality on real data: the method measured end to end over HTTP with the real MiniLM on
//! SST-2 (labels never worse than the weak ones on an imbalanced task and on a three-class
//! task of two domains, smoothing, selective decisions), and the experiment command. These
//! need `../shared/datasets` (or `SW2S_DATASETS`): without it they are skipped with a
//! message, except under `CI=true`, where they fail.

// The harness is shared with the end-to-end tests; this binary uses part of it.
#[allow(dead_code)]
#[macro_use]
#[path = "../common/mod.rs"]
mod common;
#[path = "../common/data.rs"]
mod data;

mod ablation;
mod experiment;
mod imbalanced;
mod multiclass;
mod selective;
mod smoothing;
