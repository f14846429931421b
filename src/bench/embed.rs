//! `sw2s bench embed`: sentences/s of the encoder, tokenization included, for thread counts
//! and batch sizes — sw2s's packed path against candle's padded path (what served before)
//! and against sentence-transformers, alternating run by run. With `--http`, the same
//! through `POST /v1/embed` of a server this command starts, requests of `batch` texts in
//! input order, against sentence-transformers encoding the same groups.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use super::baseline::{venv_dir, Baseline};
use super::server::Server;
use super::{figure, median, ratio, read_rows, with_threads};
use crate::cli::EmbedBench;
use crate::model::encoder::{embed_batch, load_bert, read_config, Encoded};
use crate::model::{Encoder, Overlong};

pub fn run(args: EmbedBench) -> anyhow::Result<()> {
    let (dir, encoder) = args.model.load_encoder()?;
    let rows = read_rows(&args.data, args.limit)?;
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let mean_tokens = encoder
        .tokenizer
        .tokenize(&texts, Overlong::Truncate)?
        .iter()
        .map(|e| e.len())
        .sum::<usize>() as f64
        / texts.len() as f64;
    // BERT-family directories have a padded candle path to compare with and a
    // sentence-transformers reference; decoder LMs have neither here
    // (scripts/bench_decoder_pytorch.py measures them).
    let bert_family = dir.join("config.json").is_file() && encoder.info.trainable();
    let on_cpu = encoder.device.is_cpu();
    // On a GPU the served path is candle's padded one already.
    let candle = if bert_family && on_cpu && !args.no_padded {
        Some(load_bert(
            &read_config(&dir)?,
            &dir.join("model.safetensors"),
            None,
            &encoder.device,
        )?)
    } else {
        None
    };
    let mut baseline = if bert_family && !args.baseline.no_baseline {
        Some(Baseline::start(
            &venv_dir(args.baseline.venv.as_deref(), &args.model.data_dir),
            &dir,
            &texts,
            &[],
            &crate::model::device::name(&encoder.device),
        )?)
    } else {
        None
    };
    println!(
        "embed benchmark: {} texts from {} (mean {:.1} tokens), model {} ({}, {}, {} pooling), {} alternating run(s) each, median; PyTorch {}",
        texts.len(),
        args.data.display(),
        mean_tokens,
        encoder.info.model_id,
        encoder.info.family,
        encoder.info.dtype,
        encoder.info.pooling,
        args.repeats,
        baseline.as_ref().map(|b| b.torch.as_str()).unwrap_or("not run"),
    );
    if !on_cpu {
        parity_with_cpu(&args, &dir, &encoder, &texts)?;
    }
    println!();
    println!("In process (sorted by length; candle padded = the path before the packed one):");
    println!(
        "| threads | batch | candle padded | sw2s | sw2s tokens/s | PyTorch | sw2s / PyTorch |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &threads in &args.thread_counts {
        for &batch in &args.batch_sizes {
            let (mut padded, mut ours, mut theirs) = (vec![], vec![], vec![]);
            for _ in 0..args.repeats {
                if let Some(bert) = &candle {
                    padded.push(with_threads(threads, || {
                        run_sorted(&encoder, &texts, batch, |b| {
                            embed_batch(bert, b, &encoder.device)
                        })
                    })??);
                }
                ours.push(with_threads(threads, || {
                    run_sorted(&encoder, &texts, batch, |b| encoder.backbone.embed(b))
                })??);
                if let Some(b) = baseline.as_mut() {
                    theirs.push(b.rate(
                        json!({"op": "embed", "threads": threads, "batch": batch, "groups": false}),
                    )?);
                }
            }
            let ours = median(ours);
            let theirs = (!theirs.is_empty()).then(|| median(theirs));
            println!(
                "| {threads} | {batch} | {} | {ours:.1} | {:.0} | {} | {} |",
                figure((!padded.is_empty()).then(|| median(padded))),
                ours * mean_tokens,
                figure(theirs),
                ratio(ours, theirs)
            );
        }
    }
    if args.http {
        http(&args, &dir, &encoder, &texts, baseline.as_mut())?;
    }
    Ok(())
}

/// On a GPU: the features against the CPU path's for the same texts (the GPU runs candle's
/// kernels, the CPU sw2s's own or candle's CPU ones), as the lowest cosine.
fn parity_with_cpu(
    args: &EmbedBench,
    dir: &Path,
    encoder: &Encoder,
    texts: &[&str],
) -> anyhow::Result<()> {
    let cpu = Encoder::load_on(dir, args.model.decoder_pooling, &candle_core::Device::Cpu)?;
    let encoded = encoder.tokenizer.tokenize(texts, Overlong::Truncate)?;
    let (mut worst, mut worst_at) = (f64::INFINITY, 0);
    for (n, chunk) in encoded.chunks(32).enumerate() {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let here = encoder.backbone.embed(&refs)?;
        let there = cpu.backbone.embed(&refs)?;
        for (i, (a, b)) in here.iter().zip(&there).enumerate() {
            let c = cosine(a, b);
            if c < worst {
                (worst, worst_at) = (c, n * 32 + i);
            }
        }
    }
    println!(
        "parity with the CPU path ({} on {}, the CPU on {}): lowest cosine {worst:.6} (text {worst_at}) over {} texts",
        encoder.info.model_id,
        crate::model::device::name(&encoder.device),
        cpu.info.dtype,
        texts.len()
    );
    Ok(())
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| *p as f64 * *q as f64)
            .sum::<f64>()
    };
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt()).max(1e-12)
}

/// The server path: a fresh server per thread count, requests of `batch` texts in input
/// order, one at a time.
fn http(
    args: &EmbedBench,
    dir: &Path,
    encoder: &Encoder,
    texts: &[&str],
    mut baseline: Option<&mut Baseline>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!();
    println!("Through POST /v1/embed (requests of `batch` texts in input order, one at a time; PyTorch encodes the same groups):");
    println!("| threads | batch | sw2s in process, same groups | sw2s via /v1/embed | PyTorch, same groups | HTTP / PyTorch |");
    println!("|---|---|---|---|---|---|");
    for &threads in &args.thread_counts {
        let server = runtime.block_on(Server::start(dir, threads, &args.model, None))?;
        for &batch in &args.batch_sizes {
            let (mut inproc, mut remote, mut theirs) = (vec![], vec![], vec![]);
            for _ in 0..args.repeats {
                inproc.push(with_threads(threads, || {
                    run_groups(encoder, texts, batch)
                })??);
                remote.push(runtime.block_on(run_http(&server, texts, batch))?);
                if let Some(b) = baseline.as_deref_mut() {
                    theirs.push(b.rate(
                        json!({"op": "embed", "threads": threads, "batch": batch, "groups": true}),
                    )?);
                }
            }
            let remote = median(remote);
            let theirs = (!theirs.is_empty()).then(|| median(theirs));
            println!(
                "| {threads} | {batch} | {:.1} | {remote:.1} | {} | {} |",
                median(inproc),
                figure(theirs),
                ratio(remote, theirs)
            );
        }
    }
    Ok(())
}

async fn run_http(server: &Server, texts: &[&str], batch: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    for group in texts.chunks(batch) {
        let answer = server.post("/v1/embed", &json!({ "texts": group })).await?;
        let n = answer["embeddings"]
            .as_array()
            .map(|a| a.len())
            .context("no embeddings in the answer")?;
        anyhow::ensure!(n == group.len(), "{n} embeddings for {} texts", group.len());
    }
    Ok(texts.len() as f64 / started.elapsed().as_secs_f64())
}

/// The texts sorted by length, then cut into batches of `batch`, each given to `embed`
/// (sw2s's packed backbone, or candle's padded BERT as served before).
fn run_sorted(
    encoder: &Encoder,
    texts: &[&str],
    batch: usize,
    embed: impl Fn(&[&Encoded]) -> candle_core::Result<Vec<Vec<f32>>>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut encoded = encoder.tokenizer.tokenize(texts, Overlong::Truncate)?;
    encoded.sort_by_key(|e| e.len());
    for chunk in encoded.chunks(batch) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        embed(&refs)?;
    }
    Ok(texts.len() as f64 / started.elapsed().as_secs_f64())
}

/// Groups of `batch` texts in input order, each tokenized and embedded on its own (what one
/// request of a client brings).
pub(super) fn run_groups(encoder: &Encoder, texts: &[&str], batch: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    for group in texts.chunks(batch) {
        let encoded = encoder.tokenizer.tokenize(group, Overlong::Truncate)?;
        let refs: Vec<&Encoded> = encoded.iter().collect();
        encoder.backbone.embed(&refs)?;
    }
    Ok(texts.len() as f64 / started.elapsed().as_secs_f64())
}
