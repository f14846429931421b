//! `sw2s experiment`: the weak-to-strong protocol (DESIGN.md §1, bottom) on a labelled JSONL
//! dataset, with the server's own components: the encoder, `TaskGraph` smoothing, head
//! training, cross-fitted-free P(IK) training (`train_pik`), the selection rule and τ fitting.
//!
//! Per seed: split by group into weak-train / strong-train / test; train the weak model on
//! weak-train with ground truth; it labels strong-train (and, cross-fitted, weak-train, whose
//! ground truth plays the gold labels); each method trains a strong model on strong-train
//! and is scored on test.

pub mod bow;
pub mod data;
pub mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args;
use serde::Serialize;

use crate::config::{ModelArgs, Overlong};
use crate::graph::{GraphSettings, Insert, TaskGraph};
use crate::method::metrics::auroc;
use crate::method::pik::PikFeatures;
use crate::method::selection::{decide, DecisionSource, Inputs};
use crate::method::selective::{train_pik, PikConfig, PikReport, PikSample};
use crate::method::training::{train_softmax, Dataset, LogConf, TrainConfig};
use crate::method::weak::{argmax, one_hot};
use crate::model::bert::{Bert, Pass};
use crate::model::encoder::{embed_batch, load_bert, read_config, Encoded, TextTokenizer};
use crate::model::finetune::{finetune, FinetuneParams, TrainableBert};
use crate::model::heads::{sigmoid, softmax, LinearHead};
use crate::service::settings::{JobMode, TaskSettings};
use data::{Row, Split};

#[derive(Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// A JSONL file or a folder of them (id, text, label, label_names, group per line).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// `head`: frozen encoder, linear heads; `full`: the encoder is fine-tuned per method.
    #[arg(long, value_enum, default_value_t = JobMode::Head)]
    pub mode: JobMode,
    /// Where results.md and results.json go.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Weak model: `bow` (hashed word n-gram logistic regression) or `layers:N` (the encoder
    /// cut to its first N layers, with a linear head).
    #[arg(long, default_value = "bow")]
    pub weak: String,
    #[arg(long, default_value_t = 0.4)]
    pub weak_fraction: f64,
    #[arg(long, default_value_t = 0.4)]
    pub strong_fraction: f64,
    /// Use only the first N rows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// `full` mode: longest training input in tokens.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// `full` mode: most fine-tuning examples per model.
    #[arg(long, default_value_t = 1000)]
    pub full_examples: usize,
    /// `full` mode: fine-tuning epochs.
    #[arg(long, default_value_t = 2)]
    pub full_epochs: usize,
    /// Only these methods (comma-separated names from the table); default all.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// A selection recipe the table compares; `selective` is the server's default.
#[derive(Debug, Clone, Serialize)]
pub struct Recipe {
    pub name: &'static str,
    /// Smooth the weak labels over the graph first (else raw weak labels).
    pub refine: bool,
    /// None: fit τ on gold.
    pub tau: Option<f32>,
    pub soft: bool,
    /// Drop low-P(IK) examples where the strong model and the weak label disagree, instead
    /// of relabelling them with the weak label.
    pub filter: bool,
    pub features: PikFeatures,
    /// Self-labels for strong-train come from models that did not train on the example
    /// (cross-fitting: 5 folds in head mode, 2 in full mode); else from the model trained on all of strong-train, whose
    /// in-sample predictions mostly repeat the labels it was trained on.
    pub out_of_fold: bool,
}

#[derive(Debug, Clone, Serialize)]
pub enum Method {
    Weak,
    Ceiling,
    Naive,
    LogConf,
    Graph,
    Selective(Recipe),
}

impl Method {
    pub fn name(&self) -> &str {
        match self {
            Method::Weak => "weak",
            Method::Ceiling => "strong ceiling",
            Method::Naive => "naive weak-to-strong",
            Method::LogConf => "logconf (Burns et al.)",
            Method::Graph => "graph smoothing only",
            Method::Selective(r) => r.name,
        }
    }
}

/// The methods of the table, the server's defaults first among the selective ones.
pub fn methods() -> Vec<Method> {
    let d = TaskSettings::default();
    let tau = d.tau.fixed();
    let base = Recipe {
        name: "",
        refine: true,
        tau,
        soft: false,
        filter: false,
        features: d.pik_features,
        out_of_fold: true,
    };
    vec![
        Method::Weak,
        Method::Ceiling,
        Method::Naive,
        Method::LogConf,
        Method::Graph,
        Method::Selective(Recipe {
            name: "P(IK) selection only",
            refine: false,
            ..base.clone()
        }),
        Method::Selective(Recipe {
            name: "full selective",
            ..base.clone()
        }),
        Method::Selective(Recipe {
            name: if tau.is_some() {
                "· τ fitted on gold"
            } else {
                "· τ fixed at 0.5"
            },
            tau: if tau.is_some() { None } else { Some(0.5) },
            ..base.clone()
        }),
        Method::Selective(Recipe {
            name: "· soft targets",
            soft: true,
            ..base.clone()
        }),
        Method::Selective(Recipe {
            name: "· filter, not relabel",
            filter: true,
            ..base.clone()
        }),
        Method::Selective(Recipe {
            name: "· P(IK) on embedding + probs",
            features: PikFeatures::EmbeddingAndProbs,
            ..base.clone()
        }),
        Method::Selective(Recipe {
            name: "· in-sample self-labels",
            out_of_fold: false,
            ..base.clone()
        }),
    ]
}

/// What one method gave on one seed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Run {
    pub accuracy: f64,
    /// P(IK) on held-out gold (selective methods).
    pub pik: Option<PikReport>,
    /// P(IK) AUROC on strong-train against the first-round model's correctness.
    pub pik_auroc_strong_train: Option<f64>,
    /// Strong-train labels by source: (count, accuracy against ground truth).
    pub sources: HashMap<String, (usize, f64)>,
    /// Accuracy of all strong-train labels the final model trained on: the quality of the
    /// decisions a labeling service would hand out.
    pub label_accuracy: Option<f64>,
    /// Share of each class among those labels (class drift shows here).
    pub label_shares: Vec<f64>,
    pub seconds: f64,
}

struct Ctx<'a> {
    k: usize,
    /// Group of each row (hashed), for group-aware splits inside a method.
    groups: &'a [u64],
    split: Split,
    truth: Vec<usize>,
    /// Weak labels (probabilities) for weak-train (cross-fitted) and strong-train rows.
    weak: HashMap<usize, Vec<f32>>,
    weak_test_accuracy: f64,
    /// Refined weak labels from the graph over weak-train ∪ strong-train.
    refined: HashMap<usize, Vec<f32>>,
    base_embeddings: &'a [Vec<f32>],
    seed: u64,
}

/// A trained strong model's view of the rows it was asked about.
struct Fitted {
    embeddings: HashMap<usize, Vec<f32>>,
    head: LinearHead,
}

impl Fitted {
    fn probs(&self, row: usize) -> Vec<f32> {
        softmax(&self.head.forward(&self.embeddings[&row]))
    }
}

trait Strong {
    /// Folds for out-of-fold self-labels.
    fn folds(&self) -> usize;
    fn fit(
        &mut self,
        ctx: &Ctx,
        rows: &[usize],
        targets: &[Vec<f32>],
        logconf: Option<LogConf>,
        predict: &[usize],
    ) -> anyhow::Result<Fitted>;
}

/// `head` mode: linear heads on the frozen encoder's stored embeddings.
struct HeadStrong;

impl Strong for HeadStrong {
    fn folds(&self) -> usize {
        5
    }

    fn fit(
        &mut self,
        ctx: &Ctx,
        rows: &[usize],
        targets: &[Vec<f32>],
        logconf: Option<LogConf>,
        predict: &[usize],
    ) -> anyhow::Result<Fitted> {
        let x: Vec<f32> = rows
            .iter()
            .flat_map(|&r| ctx.base_embeddings[r].iter().copied())
            .collect();
        let t: Vec<f32> = targets.iter().flatten().copied().collect();
        let dims = ctx.base_embeddings[0].len();
        let cfg = TrainConfig {
            seed: ctx.seed,
            ..TrainConfig::default()
        };
        let (head, _) = train_softmax(
            &Dataset {
                x: &x,
                dims,
                targets: &t,
                k: ctx.k,
                weights: None,
            },
            &cfg,
            logconf,
            &mut |_| true,
        )?;
        Ok(Fitted {
            embeddings: predict
                .iter()
                .map(|&r| (r, ctx.base_embeddings[r].clone()))
                .collect(),
            head,
        })
    }
}

/// `full` mode: the encoder and head are fine-tuned for every model.
struct FullStrong {
    tokenized: Vec<Encoded>,
    config: crate::model::bert::BertConfig,
    weights: PathBuf,
    examples: usize,
    epochs: usize,
}

impl Strong for FullStrong {
    fn folds(&self) -> usize {
        2
    }

    fn fit(
        &mut self,
        ctx: &Ctx,
        rows: &[usize],
        targets: &[Vec<f32>],
        logconf: Option<LogConf>,
        predict: &[usize],
    ) -> anyhow::Result<Fitted> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        if logconf.is_some() {
            bail!("logconf is only implemented for head mode");
        }
        let device = Device::Cpu;
        let model = TrainableBert::load(&self.config, &self.weights, &device)?;
        let mut idx: Vec<usize> = (0..rows.len()).collect();
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(ctx.seed));
        idx.truncate(self.examples);
        let items: Vec<(Encoded, Vec<f32>)> = idx
            .iter()
            .map(|&i| (self.tokenized[rows[i]].clone(), targets[i].clone()))
            .collect();
        let params = FinetuneParams {
            epochs: self.epochs,
            lr: 5e-5,
            batch_size: 16,
            seed: ctx.seed,
            head_lr: 1e-2,
        };
        let head = finetune(
            &model,
            &LinearHead::zeros(self.config.hidden_size, ctx.k),
            &items,
            &params,
            &device,
            &mut |_| true,
        )?;
        let embeddings = embed_rows(&model.bert, &self.tokenized, predict)?;
        Ok(Fitted { embeddings, head })
    }
}

fn embed_rows(
    bert: &Bert,
    tokenized: &[Encoded],
    rows: &[usize],
) -> anyhow::Result<HashMap<usize, Vec<f32>>> {
    let mut order: Vec<usize> = rows.to_vec();
    order.sort_by_key(|&r| tokenized[r].len());
    let mut out = HashMap::with_capacity(rows.len());
    for chunk in order.chunks(32) {
        let batch: Vec<&Encoded> = chunk.iter().map(|&r| &tokenized[r]).collect();
        for (&r, v) in chunk.iter().zip(embed_batch(bert, &batch, &Device::Cpu)?) {
            out.insert(r, v);
        }
    }
    Ok(out)
}

fn hard(dist: &[f32], k: usize) -> Vec<f32> {
    one_hot(argmax(dist).unwrap_or(0), k)
}

fn accuracy_on(fitted: &Fitted, rows: &[usize], truth: &[usize]) -> f64 {
    let ok = rows
        .iter()
        .filter(|&&r| argmax(&fitted.probs(r)) == Some(truth[r]))
        .count();
    ok as f64 / rows.len().max(1) as f64
}

fn label_shares(labels: &[(usize, Option<usize>, &str)], k: usize) -> Vec<f64> {
    let mut counts = vec![0usize; k];
    for l in labels.iter().filter_map(|(_, l, _)| *l) {
        counts[l] += 1;
    }
    let n = counts.iter().sum::<usize>().max(1) as f64;
    counts.into_iter().map(|c| c as f64 / n).collect()
}

fn source_stats(
    labels: &[(usize, Option<usize>, &str)],
    truth: &[usize],
) -> HashMap<String, (usize, f64)> {
    let mut acc: HashMap<String, (usize, usize)> = HashMap::new();
    for &(row, label, source) in labels {
        let e = acc.entry(source.to_string()).or_default();
        e.0 += 1;
        e.1 += usize::from(label == Some(truth[row]));
    }
    acc.into_iter()
        .map(|(s, (n, ok))| (s, (n, ok as f64 / n.max(1) as f64)))
        .collect()
}

fn run_method(method: &Method, ctx: &Ctx, strong: &mut dyn Strong) -> anyhow::Result<Run> {
    let started = Instant::now();
    let st = &ctx.split.strong_train;
    let test = &ctx.split.test;
    let k = ctx.k;
    let weak_hard: Vec<Vec<f32>> = st.iter().map(|r| hard(&ctx.weak[r], k)).collect();
    let weak_labels: Vec<(usize, Option<usize>, &str)> = st
        .iter()
        .map(|&r| (r, argmax(&ctx.weak[&r]), "weak"))
        .collect();
    let mut run = match method {
        Method::Weak => Run {
            accuracy: ctx.weak_test_accuracy,
            ..Default::default()
        },
        Method::Ceiling => {
            let targets: Vec<Vec<f32>> = st.iter().map(|&r| one_hot(ctx.truth[r], k)).collect();
            let m = strong.fit(ctx, st, &targets, None, test)?;
            let labels: Vec<(usize, Option<usize>, &str)> = st
                .iter()
                .map(|&r| (r, Some(ctx.truth[r]), "truth"))
                .collect();
            Run {
                accuracy: accuracy_on(&m, test, &ctx.truth),
                label_shares: label_shares(&labels, k),
                ..Default::default()
            }
        }
        Method::Naive | Method::LogConf => {
            let logconf = matches!(method, Method::LogConf).then_some(LogConf { alpha: 0.5 });
            let m = strong.fit(ctx, st, &weak_hard, logconf, test)?;
            Run {
                accuracy: accuracy_on(&m, test, &ctx.truth),
                sources: source_stats(&weak_labels, &ctx.truth),
                label_shares: label_shares(&weak_labels, k),
                ..Default::default()
            }
        }
        Method::Graph => {
            let targets: Vec<Vec<f32>> = st.iter().map(|r| hard(&ctx.refined[r], k)).collect();
            let labels: Vec<(usize, Option<usize>, &str)> = st
                .iter()
                .map(|&r| (r, argmax(&ctx.refined[&r]), "weak_refined"))
                .collect();
            let m = strong.fit(ctx, st, &targets, None, test)?;
            Run {
                accuracy: accuracy_on(&m, test, &ctx.truth),
                sources: source_stats(&labels, &ctx.truth),
                label_shares: label_shares(&labels, k),
                ..Default::default()
            }
        }
        Method::Selective(recipe) => selective(recipe, ctx, strong)?,
    };
    run.seconds = started.elapsed().as_secs_f64();
    let used: Vec<&(usize, f64)> = run
        .sources
        .iter()
        .filter(|(s, _)| s.as_str() != "dropped")
        .map(|(_, v)| v)
        .collect();
    let n: usize = used.iter().map(|(n, _)| n).sum();
    if n > 0 {
        run.label_accuracy =
            Some(used.iter().map(|(n, acc)| *n as f64 * acc).sum::<f64>() / n as f64);
    }
    Ok(run)
}

/// The server's loop in miniature: decisions start as (refined) weak labels; a first model
/// trains on them; P(IK) learns on gold (weak-train ground truth, which the model never
/// trained on) when it is right; the selection rule re-decides strong-train; a second model
/// trains on the new decisions and is tested.
fn selective(recipe: &Recipe, ctx: &Ctx, strong: &mut dyn Strong) -> anyhow::Result<Run> {
    let k = ctx.k;
    let st = &ctx.split.strong_train;
    let gold = &ctx.split.weak_train;
    let base = |r: usize| -> &Vec<f32> {
        if recipe.refine {
            &ctx.refined[&r]
        } else {
            &ctx.weak[&r]
        }
    };
    let target = |r: usize| -> Vec<f32> {
        if recipe.soft {
            base(r).clone()
        } else {
            hard(base(r), k)
        }
    };
    let first: Vec<Vec<f32>> = st.iter().map(|&r| target(r)).collect();
    let predict: Vec<usize> = if recipe.out_of_fold {
        gold.clone()
    } else {
        gold.iter().chain(st).copied().collect()
    };
    let m1 = strong.fit(ctx, st, &first, None, &predict)?;
    let samples: Vec<PikSample> = gold
        .iter()
        .map(|&r| PikSample {
            embedding: m1.embeddings[&r].clone(),
            probs: m1.probs(r),
            gold: ctx.truth[r],
            refined_label: argmax(base(r)),
            group: ctx.groups[r],
        })
        .collect();
    let pik = train_pik(
        &samples,
        &PikConfig {
            features: recipe.features,
            min_gold: TaskSettings::default().pik_min_gold,
            calibration: 0.3,
            tau: recipe.tau,
            train: TrainConfig {
                holdout: 0.0,
                seed: ctx.seed,
                ..TrainConfig::default()
            },
        },
    )?;
    let p_ik = |embedding: &[f32], probs: &[f32]| -> f32 {
        match &pik.head {
            Some(h) => sigmoid(
                h.linear.forward(&crate::method::pik::pik_features(
                    h.features, embedding, probs,
                ))[0],
            ),
            None => crate::method::pik::msp(probs),
        }
    };
    // Self-labels: out of fold, each strong-train example predicted by a model that did not
    // see its weak label.
    let mut self_probs: HashMap<usize, Vec<f32>> = HashMap::new();
    let mut self_embeddings: HashMap<usize, Vec<f32>> = HashMap::new();
    if recipe.out_of_fold {
        // Fine-tuning is costly: two folds in full mode, five with frozen embeddings.
        let folds = strong.folds();
        for f in 0..folds {
            let held: Vec<usize> = st
                .iter()
                .enumerate()
                .filter(|(i, _)| i % folds == f)
                .map(|(_, &r)| r)
                .collect();
            let (train_rows, train_targets): (Vec<usize>, Vec<Vec<f32>>) = st
                .iter()
                .zip(&first)
                .enumerate()
                .filter(|(i, _)| i % folds != f)
                .map(|(_, (&r, t))| (r, t.clone()))
                .unzip();
            let m = strong.fit(ctx, &train_rows, &train_targets, None, &held)?;
            for &r in &held {
                self_probs.insert(r, m.probs(r));
                self_embeddings.insert(r, m.embeddings[&r].clone());
            }
        }
    } else {
        for &r in st {
            self_probs.insert(r, m1.probs(r));
            self_embeddings.insert(r, m1.embeddings[&r].clone());
        }
    }
    let (mut rows, mut targets, mut labels) = (vec![], vec![], vec![]);
    let (mut qs, mut right) = (vec![], vec![]);
    for &r in st {
        let probs = self_probs[&r].clone();
        let q = p_ik(&self_embeddings[&r], &probs);
        qs.push(q);
        right.push(argmax(&probs) == Some(ctx.truth[r]));
        let outcome = decide(
            &Inputs {
                gold: None,
                strong: Some((&probs, q)),
                refined: Some(base(r)),
            },
            pik.report.tau,
        );
        let disagree = argmax(&probs) != argmax(base(r));
        if recipe.filter && outcome.source == DecisionSource::WeakRefined && disagree {
            labels.push((r, None, "dropped"));
            continue;
        }
        let t = match outcome.source {
            DecisionSource::Strong => one_hot(outcome.label.unwrap_or(0), k),
            _ => target(r),
        };
        let source = if outcome.source == DecisionSource::WeakRefined && !recipe.refine {
            "weak"
        } else {
            outcome.source.as_str()
        };
        labels.push((r, outcome.label, source));
        rows.push(r);
        targets.push(t);
    }
    let m2 = strong.fit(ctx, &rows, &targets, None, &ctx.split.test)?;
    Ok(Run {
        accuracy: accuracy_on(&m2, &ctx.split.test, &ctx.truth),
        pik: Some(pik.report),
        pik_auroc_strong_train: auroc(&qs, &right),
        sources: source_stats(&labels, &ctx.truth),
        label_shares: label_shares(&labels, ctx.k),
        ..Default::default()
    })
}

/// The weak model's label distributions: weak-train rows cross-fitted over two halves (as an
/// outside labeler would label them), strong-train and test rows from a model trained on
/// all of weak-train.
struct WeakModel<'a> {
    kind: WeakKind,
    rows: &'a [Row],
    k: usize,
    layer_embeddings: Option<Vec<Vec<f32>>>,
    bow: Vec<bow::Sparse>,
}

#[derive(Debug, Clone, Copy)]
enum WeakKind {
    Bow,
    Layers(usize),
}

impl WeakKind {
    fn parse(s: &str) -> anyhow::Result<Self> {
        if s == "bow" {
            return Ok(WeakKind::Bow);
        }
        if let Some(n) = s.strip_prefix("layers:") {
            return Ok(WeakKind::Layers(
                n.parse().context("layers:N needs a number")?,
            ));
        }
        bail!("--weak must be `bow` or `layers:N`, got {s:?}")
    }
}

impl WeakModel<'_> {
    fn train_predict(
        &self,
        train: &[usize],
        predict: &[usize],
        seed: u64,
    ) -> anyhow::Result<HashMap<usize, Vec<f32>>> {
        let y: Vec<usize> = train.iter().map(|&r| self.rows[r].label).collect();
        match self.kind {
            WeakKind::Bow => {
                let x: Vec<bow::Sparse> = train.iter().map(|&r| self.bow[r].clone()).collect();
                let m = bow::BowModel::train(&x, &y, self.k, 10, seed);
                Ok(predict
                    .iter()
                    .map(|&r| (r, m.probs(&self.bow[r])))
                    .collect())
            }
            WeakKind::Layers(_) => {
                let e = self.layer_embeddings.as_ref().context("layer embeddings")?;
                let x: Vec<f32> = train.iter().flat_map(|&r| e[r].iter().copied()).collect();
                let t: Vec<f32> = y.iter().flat_map(|&l| one_hot(l, self.k)).collect();
                let cfg = TrainConfig {
                    seed,
                    ..TrainConfig::default()
                };
                let (head, _) = train_softmax(
                    &Dataset {
                        x: &x,
                        dims: e[0].len(),
                        targets: &t,
                        k: self.k,
                        weights: None,
                    },
                    &cfg,
                    None,
                    &mut |_| true,
                )?;
                Ok(predict
                    .iter()
                    .map(|&r| (r, softmax(&head.forward(&e[r]))))
                    .collect())
            }
        }
    }
}

/// Embeddings of every row, cached on disk by model, layer count and texts.
fn cached_embeddings(
    cache_dir: &Path,
    model_dir: &Path,
    sha: &str,
    layers: Option<usize>,
    tokenized: &[Encoded],
    texts_key: &str,
    progress: &mut Progress,
) -> anyhow::Result<Vec<Vec<f32>>> {
    use sha2::{Digest, Sha256};
    let key = hex::encode(Sha256::digest(
        format!("{sha}|{layers:?}|{texts_key}").as_bytes(),
    ));
    let path = cache_dir.join(format!("{}.f32", &key[..24]));
    let config = read_config(model_dir)?;
    let dims = config.hidden_size;
    if let Ok(bytes) = std::fs::read(&path) {
        let v = crate::store::bytes_to_f32s(&bytes);
        if v.len() == dims * tokenized.len() {
            return Ok(v.chunks(dims).map(|c| c.to_vec()).collect());
        }
    }
    let bert = load_bert(
        &config,
        &model_dir.join("model.safetensors"),
        layers,
        &Device::Cpu,
    )?;
    let mut out = vec![Vec::new(); tokenized.len()];
    let mut order: Vec<usize> = (0..tokenized.len()).collect();
    order.sort_by_key(|&i| tokenized[i].len());
    let label = match layers {
        Some(n) => format!("embedding (first {n} layers)"),
        None => "embedding".to_string(),
    };
    for (done, chunk) in order.chunks(32).enumerate() {
        let batch: Vec<&Encoded> = chunk.iter().map(|&i| &tokenized[i]).collect();
        let (ids, types, mask) = crate::model::encoder::batch_tensors(&batch, &Device::Cpu)?;
        let vectors = bert
            .embed(&ids, &types, &mask, Pass::Inference)?
            .to_vec2::<f32>()?;
        for (&i, v) in chunk.iter().zip(vectors) {
            out[i] = v;
        }
        progress.tick(&label, (done + 1) * 32, tokenized.len());
    }
    std::fs::create_dir_all(cache_dir)?;
    crate::model::manifest::write_atomic(&path, &crate::store::f32s_to_bytes(&out.concat()))?;
    Ok(out)
}

/// A one-line progress bar on stderr.
pub struct Progress {
    started: Instant,
}

impl Progress {
    fn tick(&mut self, label: &str, done: usize, total: usize) {
        let done = done.min(total);
        let width = 30;
        let filled = width * done / total.max(1);
        eprint!(
            "\r[{}{}] {done}/{total} {label} ({:.0} s)\x1b[K",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.started.elapsed().as_secs_f64()
        );
        if done == total {
            eprintln!();
        }
    }
}

/// Runs the protocol and writes the table; returns the report.
pub fn run(args: &ExperimentArgs) -> anyhow::Result<report::Report> {
    let started = Instant::now();
    let mut progress = Progress { started };
    let rows = data::load(&args.data, args.limit)?;
    let k = data::classes(&rows);
    let weak_kind = WeakKind::parse(&args.weak)?;
    if !(args.weak_fraction > 0.0
        && args.strong_fraction > 0.0
        && args.weak_fraction + args.strong_fraction < 1.0)
    {
        bail!(
            "--weak-fraction and --strong-fraction must be positive and leave room for a test part"
        );
    }
    let model_dir = crate::model::fetch::resolve_model_dir(
        &args.model.data_dir,
        args.model.model_dir.as_deref(),
    )?;
    let config = read_config(&model_dir)?;
    let max_len = crate::model::encoder::max_length(&model_dir, &config);
    let tokenizer = TextTokenizer::load(&model_dir, max_len)?;
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let tokenized = tokenizer.tokenize(&texts, Overlong::Truncate)?;
    let sha = crate::model::encoder::sha256_file(&model_dir.join("model.safetensors"))?;
    let cache_dir = args.model.data_dir.join("experiment-cache");
    let texts_key = texts.join("\u{1}");
    let base = cached_embeddings(
        &cache_dir,
        &model_dir,
        &sha,
        None,
        &tokenized,
        &texts_key,
        &mut progress,
    )?;
    let layer_embeddings = match weak_kind {
        WeakKind::Layers(n) => Some(cached_embeddings(
            &cache_dir,
            &model_dir,
            &sha,
            Some(n),
            &tokenized,
            &texts_key,
            &mut progress,
        )?),
        WeakKind::Bow => None,
    };
    let weak_model = WeakModel {
        kind: weak_kind,
        rows: &rows,
        k,
        layer_embeddings,
        bow: if matches!(weak_kind, WeakKind::Bow) {
            rows.iter().map(|r| bow::features(&r.text)).collect()
        } else {
            vec![]
        },
    };
    let mut selected = methods();
    if !args.methods.is_empty() {
        selected.retain(|m| args.methods.iter().any(|n| n == m.name()));
        if selected.is_empty() {
            bail!(
                "--methods matched none of: {}",
                methods()
                    .iter()
                    .map(|m| m.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let mut strong: Box<dyn Strong> = match args.mode {
        JobMode::Head => Box::new(HeadStrong),
        JobMode::Full => {
            let mut tokenized = tokenized.clone();
            tokenized
                .iter_mut()
                .for_each(|e| e.truncate_to(args.max_tokens));
            Box::new(FullStrong {
                tokenized,
                config: config.clone(),
                weights: model_dir.join("model.safetensors"),
                examples: args.full_examples,
                epochs: args.full_epochs,
            })
        }
    };
    let groups: Vec<u64> = rows
        .iter()
        .map(|r| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            r.group.as_deref().unwrap_or(&r.id).hash(&mut h);
            h.finish()
        })
        .collect();
    let total = args.seeds * selected.len();
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); selected.len()];
    let mut splits = vec![];
    for seed in 0..args.seeds as u64 {
        let split = data::split(&rows, seed, args.weak_fraction, args.strong_fraction);
        let truth: Vec<usize> = rows.iter().map(|r| r.label).collect();
        // The weak model labels strong-train and test; weak-train is labelled cross-fitted,
        // in two halves of whole groups (alternate rows would put every SciQ question's
        // right answer in one half and its wrong one in the other: one class per half).
        let (half, other): (Vec<usize>, Vec<usize>) =
            split.weak_train.iter().partition(|&&r| groups[r] % 2 == 0);
        let predict: Vec<usize> = split
            .strong_train
            .iter()
            .chain(&split.test)
            .copied()
            .collect();
        let mut weak = weak_model.train_predict(&split.weak_train, &predict, seed)?;
        weak.extend(weak_model.train_predict(&half, &other, seed)?);
        weak.extend(weak_model.train_predict(&other, &half, seed)?);
        let weak_test_accuracy = split
            .test
            .iter()
            .filter(|&&r| argmax(&weak[&r]) == Some(truth[r]))
            .count() as f64
            / split.test.len().max(1) as f64;
        let refined = smooth(&split, &weak, &base, k)?;
        splits.push(json_split(&split));
        let ctx = Ctx {
            k,
            groups: &groups,
            split,
            truth,
            weak,
            weak_test_accuracy,
            refined,
            base_embeddings: &base,
            seed,
        };
        for (i, method) in selected.iter().enumerate() {
            progress.tick(
                &format!("seed {} · {}", seed + 1, method.name()),
                seed as usize * selected.len() + i,
                total,
            );
            runs[i].push(
                run_method(method, &ctx, strong.as_mut())
                    .with_context(|| format!("method {}", method.name()))?,
            );
        }
    }
    progress.tick("done", total, total);
    let report = report::Report::build(
        args,
        &rows,
        &selected,
        runs,
        started.elapsed().as_secs_f64(),
        splits,
    );
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("results.md"), report.markdown())?;
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    Ok(report)
}

fn json_split(s: &Split) -> serde_json::Value {
    serde_json::json!({ "weak_train": s.weak_train.len(), "strong_train": s.strong_train.len(), "test": s.test.len() })
}

/// Refined labels of weak-train ∪ strong-train with the server's default smoothing.
fn smooth(
    split: &Split,
    weak: &HashMap<usize, Vec<f32>>,
    base: &[Vec<f32>],
    k: usize,
) -> anyhow::Result<HashMap<usize, Vec<f32>>> {
    let d = TaskSettings::default();
    let settings = GraphSettings {
        full_pass_every: 1,
        ..d.graph()
    };
    let mut graph = TaskGraph::new(base[0].len(), k, settings, "experiment")?;
    let rows: Vec<usize> = split
        .weak_train
        .iter()
        .chain(&split.strong_train)
        .copied()
        .collect();
    let items: Vec<Insert> = rows
        .iter()
        .map(|&r| Insert {
            example_id: r as i64,
            embedding: Some(base[r].clone()),
            weak: Some(hard(&weak[&r], k)),
        })
        .collect();
    graph.apply(&items)?;
    Ok(rows
        .iter()
        .map(|&r| {
            (
                r,
                graph.refined(r as i64).unwrap_or_else(|| weak[&r].clone()),
            )
        })
        .collect())
}
