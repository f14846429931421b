//! `sw2s bench`: throughput figures, each against a baseline run in the same process.
//!
//! - `embed`: sentences/second of the encoder (tokenization included) for thread counts and
//!   batch sizes, sw2s's batching (length-sorted, padded to the longest) against the naive
//!   use of the model files (tokenizer.json's fixed padding to 128, input order).
//! - `graph`: the incremental smoothing update of a 32-example batch against a full pass, on
//!   synthetic kNN graphs of 10k–1M nodes; and the usearch index work per batch.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use rand::{Rng, SeedableRng};

use crate::cli::{BenchArgs, BenchKind, EmbedBench, GraphBench};
use crate::graph::index::VectorIndex;
use crate::graph::spreading::{full_pass, local_update, Graph, Params};
use crate::model::encoder::Encoded;
use crate::model::Encoder;
use crate::model::Overlong;

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.kind {
        BenchKind::Embed(b) => embed(b),
        BenchKind::Graph(b) => graph(b),
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

fn read_texts(path: &PathBuf, limit: usize) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let texts: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(limit)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            v["text"]
                .as_str()
                .map(String::from)
                .context("a line without \"text\"")
        })
        .collect::<anyhow::Result<_>>()?;
    if texts.is_empty() {
        bail!("{} has no texts", path.display());
    }
    Ok(texts)
}

fn embed(args: EmbedBench) -> anyhow::Result<()> {
    let dir = args.model.resolve()?;
    let encoder = Encoder::load(&dir)?;
    let texts = read_texts(&args.data, args.limit)?;
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    // The naive baseline: the model files as shipped (all-MiniLM's tokenizer.json pads every
    // text to 128 tokens and truncates there), batches in input order.
    // (BERT directories only: a decoder LM has no padded reference to compare with.)
    let naive_tokenizer = match encoder.backbone.as_bert() {
        Some(_) => Some(
            tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
                .map_err(|e| anyhow::anyhow!("loading tokenizer.json: {e}"))?,
        ),
        None => None,
    };
    let mean_tokens = encoder
        .tokenizer
        .tokenize(&refs, Overlong::Truncate)?
        .iter()
        .map(|e| e.len())
        .sum::<usize>() as f64
        / texts.len() as f64;
    println!(
        "embed benchmark: {} texts from {} (mean {:.1} tokens), model {} ({}, {}, {} pooling), {} run(s) each, median",
        texts.len(),
        args.data.display(),
        mean_tokens,
        encoder.info.model_id,
        encoder.info.family,
        encoder.info.dtype,
        encoder.info.pooling,
        args.repeats
    );
    println!("| threads | batch | naive sentences/s (tokenizer.json padding, input order) | sw2s sentences/s (sorted, pad to longest) | sw2s tokens/s | speed-up |");
    println!("|---|---|---|---|---|---|");
    for &threads in &args.thread_counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        // candle sizes its matmul parallelism from this variable.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        for &batch in &args.batch_sizes {
            let naive = match &naive_tokenizer {
                Some(tokenizer) => Some(median(
                    (0..args.repeats)
                        .map(|_| pool.install(|| run_naive(&encoder, tokenizer, &refs, batch)))
                        .collect::<anyhow::Result<Vec<f64>>>()?,
                )),
                None => None,
            };
            let ours = median(
                (0..args.repeats)
                    .map(|_| pool.install(|| run_sw2s(&encoder, &refs, batch)))
                    .collect::<anyhow::Result<Vec<f64>>>()?,
            );
            let (naive, ratio) = match naive {
                Some(n) => (format!("{n:.1}"), format!("{:.2}x", ours / n)),
                None => ("–".to_string(), "–".to_string()),
            };
            println!(
                "| {threads} | {batch} | {naive} | {ours:.1} | {:.0} | {ratio} |",
                ours * mean_tokens
            );
        }
    }
    Ok(())
}

fn run_naive(
    encoder: &Encoder,
    tokenizer: &tokenizers::Tokenizer,
    texts: &[&str],
    batch: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    for chunk in texts.chunks(batch) {
        let encodings = tokenizer
            .encode_batch(chunk.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        // The fixed padding stays: the attention mask marks it, so results are unchanged.
        let encoded: Vec<Encoded> = encodings
            .iter()
            .map(|e| Encoded {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
                truncated: false,
            })
            .collect();
        let refs: Vec<&Encoded> = encoded.iter().collect();
        embed_padded(encoder, &refs, &encodings)?;
    }
    Ok(texts.len() as f64 / started.elapsed().as_secs_f64())
}

/// Runs a batch at its fixed padded length, with the tokenizer's own attention mask.
fn embed_padded(
    encoder: &Encoder,
    batch: &[&Encoded],
    encodings: &[tokenizers::Encoding],
) -> anyhow::Result<()> {
    use candle_core::Tensor;
    let seq = batch.iter().map(|e| e.len()).max().unwrap_or(1);
    let n = batch.len();
    let flat = |f: &dyn Fn(usize) -> Vec<u32>| -> Vec<u32> { (0..n).flat_map(f).collect() };
    let ids = Tensor::from_vec(flat(&|i| batch[i].ids.clone()), (n, seq), &encoder.device)?;
    let types = Tensor::from_vec(
        flat(&|i| batch[i].type_ids.clone()),
        (n, seq),
        &encoder.device,
    )?;
    let mask = Tensor::from_vec(
        flat(&|i| encodings[i].get_attention_mask().to_vec()),
        (n, seq),
        &encoder.device,
    )?;
    encoder
        .backbone
        .as_bert()
        .context("the padded baseline needs a BERT model")?
        .embed(&ids, &types, &mask, crate::model::bert::Pass::Inference)?
        .to_vec2::<f32>()?;
    Ok(())
}

fn run_sw2s(encoder: &Encoder, texts: &[&str], batch: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut encoded = encoder.tokenizer.tokenize(texts, Overlong::Truncate)?;
    encoded.sort_by_key(|e| e.len());
    for chunk in encoded.chunks(batch) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        encoder.backbone.embed(&refs, &encoder.device)?;
    }
    Ok(texts.len() as f64 / started.elapsed().as_secs_f64())
}

/// A synthetic kNN graph with the structure of real ones: clusters of 100 nodes, 80% of a
/// node's neighbours inside its cluster, 20% anywhere.
struct Synthetic {
    rng: rand::rngs::StdRng,
    k: usize,
    sims: std::ops::Range<f32>,
}

const CLUSTER: usize = 100;

impl Synthetic {
    fn neighbours(&mut self, node: usize, n: usize) -> Vec<(u32, f32)> {
        let cluster = node / CLUSTER;
        let mut out: Vec<(u32, f32)> = (0..self.k)
            .map(|_| {
                let j = if self.rng.gen_bool(0.8) {
                    (cluster * CLUSTER + self.rng.gen_range(0..CLUSTER)).min(n - 1)
                } else {
                    self.rng.gen_range(0..n)
                };
                (j as u32, self.rng.gen_range(self.sims.clone()))
            })
            .filter(|&(j, _)| j as usize != node)
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.dedup_by_key(|x| x.0);
        out
    }
}

fn graph(args: GraphBench) -> anyhow::Result<()> {
    println!(
        "graph benchmark: incremental update of a {}-example batch (k = {}, hops = {}, α = {}) vs a full pass; synthetic clustered kNN graphs",
        args.batch, args.k, args.hops, args.alpha
    );
    println!("| nodes | edges | full pass ms (steps) | incremental ms median | p95 | nodes visited median | speed-up |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &args.sizes {
        let mut syn = Synthetic {
            rng: rand::rngs::StdRng::seed_from_u64(n as u64),
            k: args.k,
            sims: 0.5..0.9,
        };
        let mut g = Graph::new(args.k);
        for _ in 0..n {
            g.add_node();
        }
        for i in 0..n {
            let list = syn.neighbours(i, n);
            g.set_knn(i as u32, list);
        }
        let classes = 2;
        let mut y: Vec<f32> = (0..n)
            .flat_map(|i| {
                let has = syn.rng.gen_bool(0.7);
                let c = (i / CLUSTER) % 2;
                [
                    if has && c == 0 { 1.0 } else { 0.0 },
                    if has && c == 1 { 1.0 } else { 0.0 },
                ]
            })
            .collect();
        let params = Params {
            classes,
            alpha: args.alpha,
            iterations: 100,
        };
        let started = Instant::now();
        let (mut f, steps) = full_pass(&g, &y, &params);
        let full_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut times = vec![];
        let mut regions = vec![];
        for _ in 0..args.updates {
            let started = Instant::now();
            let mut touched = vec![];
            let mut new_nodes = vec![];
            for _ in 0..args.batch {
                let node = g.add_node();
                let total = g.len();
                let list = syn.neighbours(node as usize, total);
                y.extend([1.0, 0.0]);
                f.extend([1.0, 0.0]);
                touched.extend(g.set_knn(node, list.clone()));
                // Reverse-neighbour offers, as the server makes to 8k candidates: farther
                // than the node's own neighbours, so that (as in real kNN graphs) a new node
                // enters about k other lists.
                let (saved_k, saved_sims) = (syn.k, syn.sims.clone());
                syn.k = 8 * args.k;
                syn.sims = 0.2..0.55;
                let candidates = syn.neighbours(node as usize, total);
                syn.k = saved_k;
                syn.sims = saved_sims;
                for (other, s) in list.into_iter().chain(candidates) {
                    touched.extend(g.offer(other, node, s));
                }
                new_nodes.push(node);
            }
            let seeds = crate::graph::spreading::seeds(&g, &new_nodes, &[], &touched);
            let max_updates = params.iterations * g.len();
            let update = local_update(&g, &y, &mut f, &seeds, args.hops, &params, max_updates);
            times.push(started.elapsed().as_secs_f64() * 1e3);
            regions.push(update.visited.len() as f64);
        }
        let inc = median(times.clone());
        println!(
            "| {n} | {} | {full_ms:.1} ({steps}) | {inc:.2} | {:.2} | {:.0} | {:.0}x |",
            g.edge_count(),
            percentile(times, 0.95),
            median(regions),
            full_ms / inc
        );
    }

    let index_sizes: Vec<usize> = args
        .index_sizes
        .iter()
        .copied()
        .filter(|&n| n > 0)
        .collect();
    if !index_sizes.is_empty() {
        println!();
        println!(
            "usearch per batch of {} (384-d, add + search {} neighbours each):",
            args.batch,
            8 * args.k + 1
        );
        println!("| index size | build vectors/s | add ms per batch | search ms per batch |");
        println!("|---|---|---|---|");
    }
    for &n in &index_sizes {
        let dims = 384;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let centres: Vec<Vec<f32>> = (0..(n / CLUSTER).max(1))
            .map(|_| (0..dims).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
            .collect();
        let mut vector = |i: usize| -> Vec<f32> {
            let c = &centres[(i / CLUSTER) % centres.len()];
            let v: Vec<f32> = c.iter().map(|x| x + rng.gen_range(-0.8f32..0.8)).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        };
        let index = VectorIndex::new(dims)?;
        index.reserve_for(n + args.batch * args.updates)?;
        let started = Instant::now();
        for i in 0..n {
            index.add(i as u64, &vector(i))?;
        }
        let build_rate = n as f64 / started.elapsed().as_secs_f64();
        let (mut adds, mut searches) = (vec![], vec![]);
        for u in 0..args.updates {
            let batch: Vec<Vec<f32>> = (0..args.batch)
                .map(|j| vector(n + u * args.batch + j))
                .collect();
            let started = Instant::now();
            for (j, v) in batch.iter().enumerate() {
                index.add((n + u * args.batch + j) as u64, v)?;
            }
            adds.push(started.elapsed().as_secs_f64() * 1e3);
            let started = Instant::now();
            for v in &batch {
                index.search(v, 8 * args.k + 1)?;
            }
            searches.push(started.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "| {n} | {build_rate:.0} | {:.1} | {:.1} |",
            median(adds),
            median(searches)
        );
    }
    Ok(())
}
