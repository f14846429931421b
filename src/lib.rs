//! sw2s: a selective weak-to-strong labeling server (see DESIGN.md).
//!
//! Layout, following the architecture:
//! - [`api`]: HTTP (axum): routing, extraction, auth, metrics, OpenAPI.
//! - [`service`]: the only place that orchestrates tasks, ingest, decisions and jobs.
//! - [`model`]: tokenizer, candle BERT encoder, heads, the batching worker.
//! - [`graph`]: usearch index per task and label spreading.
//! - [`method`]: pure logic: weak aggregation, P(IK), selection, metrics, training.
//! - [`store`]: sqlx persistence, SQLite and PostgreSQL.

pub mod api;
pub mod bench;
pub mod config;
pub mod error;
pub mod experiment;
pub mod graph;
pub mod method;
pub mod model;
pub mod server;
pub mod service;
pub mod store;
