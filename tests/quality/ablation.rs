//! Not a test but a measurement (ignored by default): how the smoothing settings change the
//! accuracy of refined weak labels on SST-2 with MiniLM embeddings, over three noise draws.
//!
//!     cargo test --release --test smoothing_ablation -- --ignored --nocapture

use crate::common::real_model_dir;
use crate::data::read_rows;
use rand::{Rng, SeedableRng};
use sw2s::graph::{ClassBalance, GraphSettings, Insert, TaskGraph};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn smoothing_settings_on_sst2() {
    if !crate::data::have_datasets() {
        return;
    }
    let n = 1200;
    let mut rows = read_rows("sst2/validation.jsonl", n);
    rows.extend(read_rows("sst2/test.jsonl", n - rows.len()));
    let dir = tokio::task::spawn_blocking(real_model_dir).await.unwrap();
    let encoder = sw2s::model::Encoder::load(&dir).unwrap();
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let tokens = encoder
        .tokenizer
        .tokenize(&texts, sw2s::model::Overlong::Truncate)
        .unwrap();
    let worker = sw2s::model::ModelWorker::start(Default::default()).unwrap();
    let emb = worker.embed(&encoder.backbone, tokens).await.unwrap();
    let gold: Vec<usize> = rows.iter().map(|r| r.label).collect();
    let accuracy = |labels: &[usize]| {
        labels.iter().zip(&gold).filter(|(a, b)| a == b).count() as f64 / n as f64
    };

    println!("| noise | α | class balance | self weight | refined acc (3 draws) | raw acc |");
    println!("|---|---|---|---|---|---|");
    for noise in ["symmetric 30%", "class-dependent 35%/10%"] {
        for alpha in [0.5f32, 0.9, 0.95] {
            for balance in [
                ClassBalance::None,
                ClassBalance::WeakPrior,
                ClassBalance::Uniform,
                ClassBalance::Estimated,
            ] {
                for self_weight in [1.0f32, 0.5, 0.0] {
                    let mut refined = vec![];
                    let mut raw = vec![];
                    for seed in [2026u64, 1, 2] {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                        let weak: Vec<usize> = gold
                            .iter()
                            .map(|&g| {
                                let p = if noise.starts_with("sym") {
                                    0.3
                                } else if g == 1 {
                                    0.35
                                } else {
                                    0.10
                                };
                                if rng.gen_bool(p) {
                                    1 - g
                                } else {
                                    g
                                }
                            })
                            .collect();
                        let settings = GraphSettings {
                            k: 10,
                            alpha,
                            iterations: 300,
                            hops: 2,
                            full_pass_every: 1,
                            class_balance: balance,
                            self_weight,
                        };
                        let mut g = TaskGraph::new(384, 2, settings, "ablation").unwrap();
                        let items: Vec<Insert> = (0..n)
                            .map(|i| Insert {
                                example_id: i as i64 + 1,
                                embedding: Some(emb[i].clone()),
                                weak: Some(sw2s::method::weak::one_hot(weak[i], 2)),
                            })
                            .collect();
                        g.apply(&items).unwrap();
                        let labels: Vec<usize> = (0..n)
                            .map(|i| {
                                g.refined(i as i64 + 1)
                                    .map(|r| usize::from(r[1] > r[0]))
                                    .unwrap_or(0)
                            })
                            .collect();
                        refined.push(accuracy(&labels));
                        raw.push(accuracy(&weak));
                    }
                    let (m, s) = sw2s::method::metrics::mean_std(&refined);
                    let (rm, _) = sw2s::method::metrics::mean_std(&raw);
                    println!("| {noise} | {alpha} | {balance:?} | {self_weight} | {m:.3} ± {s:.3} | {rm:.3} |");
                }
            }
        }
    }
}
