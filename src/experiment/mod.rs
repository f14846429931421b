//! `sw2s experiment`: the weak-to-strong protocol on a labelled JSONL dataset, with the
//! server's own components (encoder, `TaskGraph` smoothing, the source model, head training,
//! P(IK), the trust model, the decision policy and its safeguards).
//!
//! Per seed: split by group into weak-train / strong-train / test; the weak supervisor labels
//! every row (a weak model trained on weak-train's ground truth, cross-fitted on weak-train
//! itself, or a noise model); weak-train's ground truth plays the gold labels (with
//! `--gold held-out`, one fold of it, the rest only training the weak model); each method
//! trains a strong model on strong-train and is scored on test.

pub mod bow;
pub mod cache;
pub mod data;
pub mod methods;
pub mod report;
pub mod selective;
pub mod smooth;
pub mod strong;
pub mod weak;

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

pub use crate::cli::{ExperimentArgs, GoldFrom};
use data::{Row, Split};
pub use methods::{catalogue, Method, Run};
use strong::{FullStrong, HeadStrong, Strong};
use weak::{WeakKind, WeakLabeler};

use crate::graph::{GraphSettings, Insert, TaskGraph};
use crate::method::label_model::Vote;
use crate::method::prior::{estimate, PriorEstimate, PriorEvidence};
use crate::method::weak::{aggregate, argmax, one_hot, WeakVote};
use crate::model::encoder::read_config;
use crate::model::Overlong;
use crate::service::settings::{JobMode, TaskSettings};

/// What every method of one seed shares.
pub struct Ctx<'a> {
    pub k: usize,
    /// Group of each row (hashed), for group-aware splits inside a method.
    pub groups: &'a [u64],
    pub split: Split,
    pub truth: Vec<usize>,
    /// Each row's votes, and how many sources there are.
    pub votes: HashMap<usize, Vec<Vote>>,
    /// A cross-fitted weak model's votes on strong-train, per fold (`smooth`).
    pub passes: Vec<HashMap<usize, Vec<Vote>>>,
    pub sources: usize,
    /// The raw weak label: the confidence-weighted mean of the row's votes.
    pub raw: HashMap<usize, Option<Vec<f32>>>,
    pub weak_test_accuracy: f64,
    /// The kNN graph over weak-train ∪ strong-train, its weak labels the raw ones.
    pub graph: TaskGraph,
    pub base_embeddings: &'a [Vec<f32>],
    pub seed: u64,
}

impl Ctx<'_> {
    /// The class prior from the gold labels (weak-train's truth).
    pub fn gold_prior(&self) -> PriorEstimate {
        let mut counts = vec![0usize; self.k];
        for &r in &self.split.weak_train {
            counts[self.truth[r]] += 1;
        }
        estimate(&PriorEvidence {
            classes: self.k,
            gold_counts: &counts,
            source_model: None,
            weak_mass: None,
        })
    }
}

pub(crate) fn hard(dist: &[f32], k: usize) -> Vec<f32> {
    one_hot(argmax(dist).unwrap_or(0), k)
}

fn mean_vote(votes: &[Vote], k: usize) -> Option<Vec<f32>> {
    let v: Vec<WeakVote> = votes
        .iter()
        .map(|v| WeakVote {
            scores: v.scores.clone(),
            confidence: v.confidence,
        })
        .collect();
    aggregate(&v, k)
}

/// The methods selected by `--methods`.
fn selected(args: &ExperimentArgs) -> anyhow::Result<Vec<Method>> {
    let all = catalogue(args.target_precision);
    if args.methods.is_empty() {
        return Ok(all);
    }
    // A misspelt name would silently drop a row from the table.
    if let Some(unknown) = args
        .methods
        .iter()
        .find(|n| !all.iter().any(|m| m.name() == n.as_str()))
    {
        let names: Vec<String> = all.iter().map(|m| format!("\"{}\"", m.name())).collect();
        bail!(
            "--methods: no method is called \"{unknown}\"; the methods are {}",
            names.join(", ")
        );
    }
    Ok(all
        .into_iter()
        .filter(|m| args.methods.iter().any(|n| n == m.name()))
        .collect())
}

fn progress_bar() -> ProgressBar {
    // Hidden when stderr is not a terminal (a log file gets the per-method log lines).
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-"),
    );
    bar
}

/// Runs the protocol and writes the table; returns the report.
pub fn run(args: &ExperimentArgs) -> anyhow::Result<report::Report> {
    let started = Instant::now();
    let progress = progress_bar();
    let mut rows = data::load(&args.data, args.class_ratio.map_or(args.limit, |_| None))?;
    if let Some(ratio) = args.class_ratio {
        rows = data::with_class_ratio(rows, ratio, args.limit)?;
    }
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
    let (model_dir, encoder) = args.model.load_encoder()?;
    let trainable = encoder.info.trainable();
    if matches!(weak_kind, WeakKind::Layers(_)) && !trainable {
        bail!(
            "--weak layers:N cuts the BERT encoder; {} is a {} decoder LM",
            encoder.info.model_id,
            encoder.info.family
        );
    }
    if args.mode == JobMode::Full && !trainable {
        bail!(
            "--mode full fine-tunes the encoder; {} ({} {}) is a quantized decoder LM and serves head mode only",
            encoder.info.model_id, encoder.info.family, encoder.info.dtype
        );
    }
    let texts: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
    let overlong = args.long_texts.overlong();
    let tokenized = encoder.tokenizer.tokenize(&texts, overlong)?;
    let long = tokenized.iter().filter(|e| e.over_window()).count();
    if long > 0 {
        tracing::info!(
            "{long} of {} texts are longer than the model's {} tokens: {}",
            texts.len(),
            encoder.info.max_length,
            match overlong {
                Overlong::Chunk => "each is embedded as the mean of its windows",
                _ => "only their first tokens are embedded (--long-texts chunk embeds all)",
            }
        );
    }
    // Chunked features differ from truncated ones only for long texts, and the cache must
    // not hand one out for the other.
    let sha = if overlong == Overlong::Chunk && long > 0 {
        format!("{}:chunk", encoder.info.features_id())
    } else {
        encoder.info.features_id()
    };
    let cache_dir = args.model.data_dir.join("experiment-cache");
    let texts_key = texts.join("\u{1}");
    let key = |layers| cache::CacheKey {
        dir: &cache_dir,
        sha: &sha,
        dims: encoder.info.dims,
        layers,
        texts: &texts_key,
    };
    let base = cache::cached_embeddings(&key(None), &tokenized, &progress, || {
        Ok(encoder.backbone.clone())
    })?;
    let layer_embeddings = match weak_kind {
        WeakKind::Layers(n) => Some(cache::cached_embeddings(
            &key(Some(n)),
            &tokenized,
            &progress,
            || {
                let config = read_config(&model_dir)?;
                let device = candle_core::Device::Cpu;
                let bert = crate::model::encoder::load_bert(
                    &config,
                    &model_dir.join("model.safetensors"),
                    Some(n),
                    &device,
                )?;
                Ok(std::sync::Arc::new(crate::model::Backbone::from_bert(
                    bert, &device,
                )?))
            },
        )?),
        _ => None,
    };
    let labeler = WeakLabeler {
        kind: weak_kind.clone(),
        rows: &rows,
        k,
        layer_embeddings,
        bow: if weak_kind == WeakKind::Bow {
            rows.iter().map(|r| bow::features(&r.text)).collect()
        } else {
            vec![]
        },
    };
    let selected = selected(args)?;
    let mut strong: Box<dyn Strong> = match args.mode {
        JobMode::Head => Box::new(HeadStrong),
        JobMode::Full => {
            let mut tokenized = tokenized.clone();
            tokenized
                .iter_mut()
                .for_each(|e| e.truncate_to(args.max_tokens));
            Box::new(FullStrong {
                tokenized,
                config: read_config(&model_dir)?,
                weights: model_dir.join("model.safetensors"),
                examples: args.full_examples,
                epochs: args.full_epochs,
            })
        }
    };
    let groups: Vec<u64> = rows.iter().map(group_hash).collect();
    let total = args.seeds * selected.len();
    progress.set_length(total as u64);
    progress.set_position(0);
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); selected.len()];
    let mut splits = vec![];
    for seed in 0..args.seeds as u64 {
        let ctx = seed_context(&rows, &labeler, &base, &groups, k, seed, args)?;
        splits.push(json_split(&ctx.split));
        for (i, method) in selected.iter().enumerate() {
            progress.set_message(format!("seed {} · {}", seed + 1, method.name()));
            let run = methods::run_method(method, &ctx, strong.as_mut())
                .with_context(|| format!("method {}", method.name()))?;
            if progress.is_hidden() {
                tracing::info!(
                    seed = seed + 1,
                    method = method.name(),
                    accuracy = run.accuracy,
                    seconds = run.seconds,
                    "method done"
                );
            }
            runs[i].push(run);
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
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

fn group_hash(r: &Row) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    r.group.as_deref().unwrap_or(&r.id).hash(&mut h);
    h.finish()
}

/// One seed's split, weak labels and graph.
fn seed_context<'a>(
    rows: &[Row],
    labeler: &WeakLabeler,
    base: &'a [Vec<f32>],
    groups: &'a [u64],
    k: usize,
    seed: u64,
    args: &ExperimentArgs,
) -> anyhow::Result<Ctx<'a>> {
    let mut split = data::split(rows, seed, args.weak_fraction, args.strong_fraction);
    let truth: Vec<usize> = rows.iter().map(|r| r.label).collect();
    let weak::WeakVotes { own: votes, passes } = labeler.label(&split, groups, seed, args.gold)?;
    if args.gold == GoldFrom::HeldOut && labeler.kind.learned() {
        // The rows the weak model trained on leave the run; its gold fold stays as the gold.
        split.weak_train.retain(|&r| weak::in_gold_fold(groups[r]));
    }
    let raw: HashMap<usize, Option<Vec<f32>>> =
        votes.iter().map(|(&r, v)| (r, mean_vote(v, k))).collect();
    let weak_test_accuracy = split
        .test
        .iter()
        .filter(|&&r| raw[&r].as_deref().and_then(argmax) == Some(truth[r]))
        .count() as f64
        / split.test.len().max(1) as f64;
    let graph = build_graph(&split, &raw, base, k)?;
    Ok(Ctx {
        k,
        groups,
        split,
        truth,
        votes,
        passes,
        sources: labeler.kind.sources(),
        raw,
        weak_test_accuracy,
        graph,
        base_embeddings: base,
        seed,
    })
}

fn json_split(s: &Split) -> serde_json::Value {
    serde_json::json!({ "weak_train": s.weak_train.len(), "strong_train": s.strong_train.len(), "test": s.test.len() })
}

/// The kNN graph of weak-train ∪ strong-train with the server's default smoothing settings;
/// methods read refined labels from it with their own weak labels and balance.
fn build_graph(
    split: &Split,
    raw: &HashMap<usize, Option<Vec<f32>>>,
    base: &[Vec<f32>],
    k: usize,
) -> anyhow::Result<TaskGraph> {
    let settings = GraphSettings {
        full_pass_every: 1,
        ..TaskSettings::default().graph()
    };
    let mut graph = TaskGraph::new(base[0].len(), k, settings, "experiment")?;
    let items: Vec<Insert> = split
        .weak_train
        .iter()
        .chain(&split.strong_train)
        .map(|&r| Insert {
            example_id: r as i64,
            embedding: Some(base[r].clone()),
            weak: raw[&r].clone(),
        })
        .collect();
    graph.bulk_insert(&items)?;
    Ok(graph)
}
