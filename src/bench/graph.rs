//! `sw2s bench graph`: the incremental smoothing update of a 32-example batch against a full
//! pass, on synthetic kNN graphs of 10k–1M nodes; and the usearch index work per batch.

use std::time::Instant;

use rand::{Rng, SeedableRng};

use super::{median, percentile};
use crate::cli::GraphBench;
use crate::graph::index::VectorIndex;
use crate::graph::spreading::{full_pass, local_update, Graph, Params};

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

pub fn run(args: GraphBench) -> anyhow::Result<()> {
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
            crate::graph::reverse_search_count(args.k)
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
                index.search(v, crate::graph::reverse_search_count(args.k))?;
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
