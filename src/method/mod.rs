//! The method's pure logic (DESIGN.md §1): weak-label aggregation, P(IK) features, the
//! selection rule, metrics and head training. Nothing here does I/O; tests call it directly.
//! Label spreading lives with the graph (`graph::spreading`).

pub mod metrics;
pub mod pik;
pub mod selection;
pub mod selective;
pub mod training;
pub mod weak;
