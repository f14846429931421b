//! End to end, over real sockets: the API, the service behind it and its recovery, each
//! scenario on SQLite and on PostgreSQL (a fresh database per test), the server started from
//! argv. One test binary, so candle, usearch and sqlx are linked once.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;
// The datasets helpers, shared with the quality tests; the dashboard test seeds from SST-2.
#[allow(dead_code)]
#[path = "../common/data.rs"]
mod data;

mod api;
mod crash;
mod decisions;
mod decoder;
mod deploy;
mod fuzz;
mod graph_recovery;
mod jobs;
mod label_studio;
mod model;
mod ui;
