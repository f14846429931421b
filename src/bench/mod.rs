//! `sw2s bench`: throughput of the three workloads a labeling server lives on — embedding,
//! fine-tuning and ingest — each beside PyTorch run in the same command (a Python process
//! kept running and asked for one measurement at a time, so the two sides alternate), and
//! the graph smoothing update.
//!
//! - `embed`: sentences/s of the encoder in process (and, with `--http`, through
//!   `POST /v1/embed` of a server this command starts) against sentence-transformers.
//! - `finetune`: forward + backward + AdamW steps, examples/s and tokens/s, against a plain
//!   PyTorch loop on the same batches.
//! - `ingest`: examples/s of `POST /v1/tasks/{task}/examples` with weak labels (SQLite or
//!   PostgreSQL) against the raw encoder's sentences/s on the same texts.
//! - `graph`: incremental smoothing against full passes on synthetic graphs.

mod baseline;
mod embed;
mod finetune;
mod graph;
mod ingest;
mod server;

use std::path::Path;

use anyhow::{bail, Context};

use crate::cli::{BenchArgs, BenchKind};

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.kind {
        BenchKind::Embed(b) => embed::run(b),
        BenchKind::Finetune(b) => finetune::run(b),
        BenchKind::Ingest(b) => ingest::run(b),
        BenchKind::Graph(b) => graph::run(b),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A labelled text from a JSONL dataset (`label` and `label_names` when present).
pub(crate) struct Row {
    text: String,
    label: Option<usize>,
    label_names: Option<Vec<String>>,
}

fn read_rows(path: &Path, limit: usize) -> anyhow::Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rows: Vec<Row> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(limit)
        .enumerate()
        .map(|(n, l)| {
            let v: serde_json::Value = serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))?;
            let text = v["text"]
                .as_str()
                .map(String::from)
                .with_context(|| format!("{} line {}: no \"text\"", path.display(), n + 1))?;
            Ok(Row {
                text,
                label: v["label"].as_u64().map(|l| l as usize),
                label_names: serde_json::from_value(v["label_names"].clone()).ok(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    if rows.is_empty() {
        bail!("{} has no texts", path.display());
    }
    Ok(rows)
}

/// Runs `f` on a rayon pool of `threads` threads (the packed encoder and gemm size their
/// work from it; candle's matmuls read `RAYON_NUM_THREADS`).
fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    Ok(pool.install(f))
}

fn ratio(ours: f64, theirs: Option<f64>) -> String {
    match theirs {
        Some(t) if t > 0.0 => format!("{:.2}x", ours / t),
        _ => "–".into(),
    }
}

fn figure(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into())
}
