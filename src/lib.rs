//! sw2s: a selective weak-to-strong labeling server (README, "Architecture").
//!
//! Layers point down: [`api`] → [`service`] → [`graph`] / [`method`] → [`model`] → [`store`],
//! with [`fsio`] (durable files) below them all. Beside them: [`cli`] (every command's
//! arguments), [`server`] (start/stop, the background loop), [`error`] (the service's one
//! error type and its HTTP form), and the commands [`bench`] and [`experiment`], which use
//! the service's parts directly.
//! - [`api`]: HTTP (axum): routing, extraction, auth, metrics, OpenAPI.
//! - [`service`]: the only place that orchestrates tasks, ingest, decisions and jobs.
//! - [`graph`]: usearch index per task and label spreading.
//! - [`method`]: pure logic: source model, priors, safeguards, P(IK), trust, decisions,
//!   metrics, heads and training.
//! - [`model`]: tokenizer, candle BERT encoder, the batching worker, version files.
//! - [`store`]: sqlx persistence, SQLite and PostgreSQL.

pub mod api;
pub mod bench;
pub mod cli;
pub mod error;
pub mod experiment;
pub mod fsio;
pub mod graph;
pub mod method;
pub mod model;
pub mod server;
pub mod service;
pub mod store;
