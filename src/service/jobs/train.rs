//! Training a new version: the weak side first (`calibrate`), then the strong model on the
//! decisions confident enough to teach (the active version's training threshold) — heads
//! on stored embeddings (`head`) or the encoder fine-tuned (`full`) —, P(IK) on gold
//! predictions made without the example's label, and the decision policy (strong
//! selection's gold check, the target-precision and training thresholds).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};

use super::data::TaskData;
use super::publish::{EncoderChange, Publish};
use super::queue::Finished;
use super::{job_error, Progress};
use crate::error::{Error, Result};
use crate::method::heads::Heads;
use crate::method::heads::{softmax, LinearHead};
use crate::method::label_model::LabelModel;
use crate::method::pik::{train_pik, PikConfig, PikOutcome, PikSample};
use crate::method::pipeline::PipelineFit;
use crate::method::policy::{fit_policy, Policy, PolicyCase, PolicyConfig};
use crate::method::rule::{DecisionSource, Inputs, StrongSide};
use crate::method::safeguard::{self, Compared, Stage, StageMode, StageReport};
use crate::method::training::{cross_fit, train_softmax, Dataset, TrainConfig};
use crate::method::weak::{argmax, one_hot};
use crate::model::encoder::Encoded;
use crate::service::decide::score;
use crate::service::settings::{JobMode, Targets, TrainOn};
use crate::service::version_cache::LoadedVersion;
use crate::service::{Service, TaskCtx};
use crate::store::jobs::JobRow;

/// The rows the classifier trains on, with their targets.
struct TrainingSet {
    /// Indices into `TaskData`.
    rows: Vec<usize>,
    x: Vec<f32>,
    targets: Vec<f32>,
    counts: HashMap<&'static str, usize>,
}

/// The raw weak labels' training set: gold labels, else the confidence-weighted mean of the
/// votes (what naive weak-to-strong trains on). The decision targets are checked against it.
fn raw_training_set(data: &TaskData) -> TrainingSet {
    let k = data.k;
    let mean = LabelModel::mean(k, "raw weak labels");
    let mut set = TrainingSet {
        rows: vec![],
        x: vec![],
        targets: vec![],
        counts: HashMap::new(),
    };
    for i in 0..data.len() {
        let Some(embedding) = &data.embedding[i] else {
            continue;
        };
        let (label, source) = match data.gold[i] {
            Some(g) => (Some(g), "gold"),
            None => (
                mean.posterior(&data.votes[i]).as_deref().and_then(argmax),
                "weak",
            ),
        };
        let Some(l) = label else { continue };
        set.rows.push(i);
        set.x.extend_from_slice(embedding);
        set.targets.extend(one_hot(l, k));
        *set.counts.entry(source).or_default() += 1;
    }
    set
}

/// The policy whose training threshold says which decisions train the next model: the
/// active version's, while the task sets `train_precision`.
fn teaching_policy<'a>(task: &TaskCtx, active: Option<&'a LoadedVersion>) -> Option<&'a Policy> {
    task.settings.train_precision?;
    Some(&active?.pipeline.as_ref()?.policy)
}

/// Targets: gold labels; the previous version's strong decisions (unless `train_on` says
/// not); else the refined weak label in `refined` (the one in force, or for the gold check of
/// the decision targets the one smoothed without the gold examples' votes). Abstentions,
/// decisions under `teaching`'s training threshold and examples without an embedding from
/// the current encoder do not train.
fn training_set(
    task: &TaskCtx,
    data: &TaskData,
    refined: &[Option<Vec<f32>>],
    teaching: Option<&Policy>,
) -> TrainingSet {
    let k = data.k;
    let mut set = TrainingSet {
        rows: vec![],
        x: vec![],
        targets: vec![],
        counts: HashMap::new(),
    };
    for i in 0..data.len() {
        let Some(embedding) = &data.embedding[i] else {
            continue;
        };
        let unsure = teaching.is_some_and(|p| !p.trains(data.confidence[i]));
        let (target, source) = match (data.gold[i], data.decision[i]) {
            (Some(g), _) => (one_hot(g, k), DecisionSource::Gold),
            (None, Some((_, DecisionSource::Abstain))) => continue,
            (None, Some(_)) if unsure => {
                *set.counts.entry("below_train_precision").or_default() += 1;
                continue;
            }
            (None, Some((Some(l), DecisionSource::Strong)))
                if task.settings.train_on == TrainOn::Decided =>
            {
                (one_hot(l, k), DecisionSource::Strong)
            }
            _ => {
                let Some(refined) = refined[i].as_ref() else {
                    continue;
                };
                let Some(l) = argmax(refined) else { continue };
                let t = match task.settings.targets {
                    Targets::Soft => refined.clone(),
                    Targets::Hard => one_hot(l, k),
                };
                (t, DecisionSource::WeakRefined)
            }
        };
        set.rows.push(i);
        set.x.extend_from_slice(embedding);
        set.targets.extend(target);
        *set.counts.entry(source.as_str()).or_default() += 1;
    }
    set
}

/// A trained strong side, ready to publish.
struct Trained {
    heads: Heads,
    pik: PikOutcome,
    /// Whether it trained on the decisions or on the raw weak labels, and why.
    targets: StageReport,
    /// Gold rows (indices into `TaskData`) P(IK) was measured on, with the out-of-fold
    /// class probabilities.
    gold: Vec<(usize, Vec<f32>)>,
    summary: Value,
    encoder: EncoderChange,
}

impl Service {
    /// Embeds, with the encoder this job trains on, the examples that have no embedding from
    /// it — made by another base model before the server restarted on this one, or still in
    /// flight — and stores them, so a model switch does not leave the task untrainable.
    async fn embed_missing(
        &self,
        task: &TaskCtx,
        data: &mut TaskData,
        backbone: &Arc<crate::model::Backbone>,
        encoder_id: &str,
        progress: &Arc<Progress>,
    ) -> Result<()> {
        let missing: Vec<usize> = (0..data.ids.len())
            .filter(|&i| data.embedding[i].is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        progress.stage("embedding");
        let mut done = 0;
        for chunk in missing.chunks(256) {
            progress.check()?;
            let ids: Vec<i64> = chunk.iter().map(|&i| data.ids[i]).collect();
            let texts = self.texts(&ids).await?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let vectors = self.embed_stored(task, backbone, &refs).await?;
            let embeddings: HashMap<i64, Vec<f32>> = ids.iter().copied().zip(vectors).collect();
            let mut tx = self.store.begin_task_write(task.id).await?;
            super::publish::write_embeddings(&mut tx, &embeddings, encoder_id).await?;
            tx.commit().await?;
            for &i in chunk {
                data.embedding[i] = embeddings.get(&data.ids[i]).cloned();
            }
            done += chunk.len();
            progress.set(json!({ "done": done, "total": missing.len() }));
        }
        tracing::info!(task = %task.name, embedded = done, "embedded examples the job's encoder had not");
        Ok(())
    }

    pub(super) async fn run_train_job(
        self: &Arc<Self>,
        task: &TaskCtx,
        job: &JobRow,
        progress: &Arc<Progress>,
        mode: JobMode,
    ) -> Result<Finished> {
        let active = self.active_version(task).await?;
        let (backbone, encoder_id) = self.task_encoder(task).await?;
        progress.stage("loading");
        let mut data = self.task_data(task, &encoder_id).await?;
        self.embed_missing(task, &mut data, &backbone, &encoder_id, progress)
            .await?;
        let mut train_cfg = task.settings.train.clone();
        train_cfg.seed = train_cfg.seed.wrapping_add(job.id as u64);
        let weak = self
            .calibrate(task, &data, train_cfg.seed, mode == JobMode::Head, progress)
            .await?;
        let teaching = teaching_policy(task, active.as_deref());
        let set = training_set(task, &data, &weak.refined, teaching);
        let raw = raw_training_set(&data);
        let check = weak
            .refined_without_gold
            .as_deref()
            .map(|refined| training_set(task, &data, refined, teaching));
        if set.rows.is_empty() {
            return Err(Error::invalid(
                "nothing_to_train_on",
                "no example has a label to train on: ingest examples with weak or gold labels first",
            ));
        }
        let pik_cfg = PikConfig {
            features: task.settings.pik_features,
            min_gold: task.settings.pik_min_gold,
            tau: task.settings.tau.fixed(),
            train: TrainConfig {
                holdout: 0.0,
                ..train_cfg.clone()
            },
        };
        let counts = json!(set.counts);
        let data = Arc::new(data);
        // The weak side's label of each example (τ fitting compares against it).
        let weak_labels: Arc<Vec<Option<usize>>> = Arc::new(
            weak.refined
                .iter()
                .map(|r| r.as_deref().and_then(argmax))
                .collect(),
        );
        let trained = match mode {
            JobMode::Head => {
                let (p, d) = (progress.clone(), data.clone());
                let (cfg, pcfg) = (train_cfg.clone(), pik_cfg.clone());
                let weak_labels = weak_labels.clone();
                let mode = task.settings.decision_targets;
                let z = task.settings.safeguard_z;
                let mut trained = tokio::task::spawn_blocking(move || {
                    let sets = Sets {
                        decisions: &set,
                        raw: &raw,
                        check: check.as_ref(),
                    };
                    train_heads(&d, &sets, mode, z, &weak_labels, &cfg, &pcfg, &p)
                })
                .await
                .map_err(|e| Error::Internal(e.into()))??;
                // A head job keeps the encoder the task uses now (a fine-tuned one included).
                trained.encoder.encoder_path = active.as_ref().and_then(|v| v.encoder_path.clone());
                trained
            }
            JobMode::Full => {
                self.finetune(
                    task,
                    job,
                    &data,
                    &set,
                    &weak_labels,
                    train_cfg,
                    pik_cfg,
                    progress,
                )
                .await?
            }
        };
        progress.check()?;
        // The examples without gold as the new version will decide them (embeddings from
        // its encoder: the new ones a full job made, else the stored ones).
        let embedding_of = |i: usize| -> Option<&[f32]> {
            match &trained.encoder.embeddings {
                Some(new) => new.get(&data.ids[i]).map(Vec::as_slice),
                None => data.embedding[i].as_deref(),
            }
        };
        let scored: Vec<(usize, Vec<f32>, f32)> = (0..data.len())
            .filter(|&i| data.gold[i].is_none())
            .filter_map(|i| {
                let s = score(&trained.heads, embedding_of(i)?);
                Some((i, s.probs, s.p_ik))
            })
            .collect();
        let pool: Vec<Inputs> = scored
            .iter()
            .map(|(i, probs, q)| Inputs {
                gold: None,
                strong: Some(StrongSide {
                    probs,
                    p_ik: *q,
                    calibrated: trained.pik.head.is_some(),
                }),
                weak: weak.weak_side(&data, *i),
            })
            .collect();
        let policy = fit_policy(
            &trained
                .gold
                .iter()
                .zip(&trained.pik.oof)
                .filter_map(|((i, probs), &q)| {
                    Some(PolicyCase {
                        gold: data.gold[*i]?,
                        judges: data.judge[*i].is_some(),
                        group: data.ids[*i] as u64,
                        strong: Some(StrongSide {
                            probs,
                            p_ik: q,
                            calibrated: trained.pik.head.is_some(),
                        }),
                        weak: weak.gold_weak.get(i).copied(),
                    })
                })
                .collect::<Vec<_>>(),
            &pool,
            &PolicyConfig {
                strong: task.settings.strong,
                selection: task.settings.selection,
                tau: trained.pik.report.tau,
                z: task.settings.safeguard_z,
                target_precision: task.settings.target_precision,
                train_precision: task.settings.train_precision,
            },
        );
        let pipeline = PipelineFit {
            sources: data.sources.clone(),
            source_model: weak.sources,
            prior: weak.prior,
            smoothing: weak.smoothing,
            trust: weak.trust.model,
            trust_report: weak.trust.report,
            trust_reason: weak.trust.reason,
            policy,
            decision_targets: trained.targets.clone(),
            gold: Some(data.gold_use.clone()),
        };
        let training = json!({ "examples_by_source": counts, "targets": task.settings.targets, "train_on": task.settings.train_on, "head": trained.summary });
        let publish = Publish {
            mode,
            heads: trained.heads,
            pik: trained.pik.report.clone(),
            pipeline: pipeline.clone(),
            training: training.clone(),
            encoder: trained.encoder,
        };
        let (version_id, version) = self.publish(task, job, publish, progress).await?;
        let changed = self.rescore_after_publish(task, progress).await;
        Ok(Finished {
            metrics: json!({
                "model_version": version,
                "changed_decisions": changed,
                "pik": trained.pik.report,
                "stages": [pipeline.source_model.stage, pipeline.smoothing, pipeline.policy.strong, pipeline.decision_targets],
                "gold": pipeline.gold,
                "training": training,
            }),
            version_id: Some(version_id),
        })
    }

    /// `full`: fine-tunes encoder and head on the decisions, holding part of the gold labels
    /// out for P(IK), then re-embeds every example with the new encoder.
    #[allow(clippy::too_many_arguments)]
    async fn finetune(
        self: &Arc<Self>,
        task: &TaskCtx,
        job: &JobRow,
        data: &Arc<TaskData>,
        set: &TrainingSet,
        weak_labels: &[Option<usize>],
        train_cfg: TrainConfig,
        pik_cfg: PikConfig,
        progress: &Arc<Progress>,
    ) -> Result<Trained> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let ft = task.settings.finetune.clone();
        let k = data.k;
        // Gold held out of fine-tuning: P(IK) learns from predictions on examples the encoder
        // never saw labelled.
        let mut gold_rows: Vec<usize> = data
            .gold_rows()
            .into_iter()
            .filter(|&i| data.embedding[i].is_some())
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(train_cfg.seed);
        gold_rows.shuffle(&mut rng);
        let n_hold = if gold_rows.len() >= 20 {
            (gold_rows.len() as f64 * 0.3).round() as usize
        } else {
            0
        };
        let held: HashSet<usize> = gold_rows[..n_hold].iter().copied().collect();
        let mut train_pos: Vec<usize> = (0..set.rows.len())
            .filter(|p| !held.contains(&set.rows[*p]))
            .collect();
        train_pos.shuffle(&mut rng);
        train_pos.truncate(ft.max_examples);

        progress.stage("tokenizing");
        let texts = self.texts(&data.ids).await?;
        let tokenized = self.tokenize_for_training(&texts, ft.max_tokens)?;
        let items: Vec<(Encoded, Vec<f32>)> = train_pos
            .iter()
            .map(|&p| {
                (
                    tokenized[set.rows[p]].clone(),
                    set.targets[p * k..(p + 1) * k].to_vec(),
                )
            })
            .collect();
        let active = self.active_version(task).await?;
        let weights = match active.as_ref().and_then(|v| v.encoder_path.as_ref()) {
            Some(rel) => self.data_dir.join(rel),
            None => self.model.dir.join("model.safetensors"),
        };
        let head_init = active
            .as_ref()
            .map(|v| v.heads.classifier.clone())
            .unwrap_or_else(|| LinearHead::zeros(data.dims, k));
        let staging = crate::model::manifest::staging_dir(&self.data_dir, task.id, job.id);
        std::fs::create_dir_all(&staging).map_err(|e| Error::Internal(e.into()))?;
        let encoder_file = staging.join("encoder.safetensors");
        let model_dir = self.model.dir.clone();
        let p = progress.clone();
        let params = crate::method::finetune::FinetuneParams {
            epochs: ft.epochs,
            lr: ft.lr,
            batch_size: ft.batch_size,
            seed: train_cfg.seed,
            head_lr: train_cfg.lr,
        };
        let file = encoder_file.clone();
        let total_steps = ft.epochs * items.len().div_ceil(ft.batch_size.max(1));
        progress.stage("fine-tuning");
        let head = tokio::task::spawn_blocking(move || -> anyhow::Result<LinearHead> {
            let device = candle_core::Device::Cpu;
            let config = crate::model::encoder::read_config(&model_dir)?;
            let model = crate::method::finetune::TrainableBert::load(&config, &weights, &device)?;
            let head = crate::method::finetune::finetune(&model, &head_init, &items, &params, &device, &mut |r| {
                p.set(json!({ "epoch": r.epoch, "step": r.step, "total_steps": total_steps, "loss": r.train_loss }));
                !p.cancelled()
            })?;
            model.save(&file)?;
            Ok(head)
        })
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .map_err(job_error)?;

        progress.stage("embedding");
        let bert = {
            let model_dir = self.model.dir.clone();
            let file = encoder_file.clone();
            let device = self.model.device.clone();
            tokio::task::spawn_blocking(move || {
                crate::model::Backbone::fine_tuned(&model_dir, &file, &device)
            })
            .await
            .map_err(|e| Error::Internal(e.into()))??
        };
        let embeddings = self.embed_task(task, &Arc::new(bert), progress).await?;

        // P(IK) from the held-out gold examples under the new encoder and head.
        let mut gold = vec![];
        let samples: Vec<PikSample> = gold_rows[..n_hold]
            .iter()
            .filter_map(|&i| {
                let e = embeddings.get(&data.ids[i])?;
                let probs = softmax(&head.forward(e));
                gold.push((i, probs.clone()));
                Some(PikSample {
                    probs,
                    embedding: e.clone(),
                    gold: data.gold[i]?,
                    refined_label: weak_labels[i],
                    group: data.ids[i] as u64,
                })
            })
            .collect();
        let pik = train_pik(&samples, &pik_cfg)?;
        let summary = json!({ "fine_tuned_examples": train_pos.len(), "epochs": ft.epochs, "held_out_gold": n_hold });
        let targets = safeguard::unavailable(
            Stage::DecisionTargets,
            task.settings.decision_targets,
            "on, unchecked: a full job fine-tunes once, on the decisions",
        );
        Ok(Trained {
            heads: Heads {
                classifier: head,
                pik: pik.head.clone(),
            },
            pik,
            targets: StageReport {
                on: true,
                ..targets
            },
            gold,
            summary,
            encoder: EncoderChange {
                encoder_path: None,
                new_encoder: Some(encoder_file),
                embeddings: Some(embeddings),
            },
        })
    }
}

/// Out-of-fold class probabilities of the gold rows of `set` (positions into `set.rows`).
fn gold_oof(
    data: &TaskData,
    set: &TrainingSet,
    cfg: &TrainConfig,
    progress: &Progress,
    what: &str,
) -> Result<Vec<(usize, Vec<f32>)>> {
    let gold_pos: Vec<usize> = (0..set.rows.len())
        .filter(|&p| data.gold[set.rows[p]].is_some())
        .collect();
    if gold_pos.len() < 10 {
        return Ok(vec![]);
    }
    progress.stage(what);
    let dataset = Dataset {
        x: &set.x,
        dims: data.dims,
        targets: &set.targets,
        k: data.k,
        weights: None,
    };
    let oof = cross_fit(&dataset, &gold_pos, 5, cfg, &mut |fold| {
        progress.set(json!({ "fold": fold + 1, "folds": 5 }));
        !progress.cancelled()
    })
    .map_err(job_error)?;
    Ok(gold_pos.into_iter().zip(oof).collect())
}

/// What a head job trains on, and what checks it.
struct Sets<'a> {
    decisions: &'a TrainingSet,
    raw: &'a TrainingSet,
    /// The decisions with refined labels smoothed without the gold examples' votes: what
    /// the decision targets are judged by on gold (`None`: the decisions themselves, where
    /// smoothing is off and nothing of a gold example reaches another's label).
    check: Option<&'a TrainingSet>,
}

/// Cross-fits the classifier on gold (on the decisions and, to check them, on the raw weak
/// labels), keeps the decisions as targets only while their model beats the raw one on gold,
/// trains P(IK) on the chosen out-of-fold predictions, then the final classifier.
#[allow(clippy::too_many_arguments)]
fn train_heads(
    data: &TaskData,
    sets: &Sets,
    mode: StageMode,
    z: f64,
    weak_labels: &[Option<usize>],
    train_cfg: &TrainConfig,
    pik_cfg: &PikConfig,
    progress: &Progress,
) -> Result<Trained> {
    let k = data.k;
    let Sets { decisions, raw, .. } = *sets;
    let oof = gold_oof(data, decisions, train_cfg, progress, "cross-fitting")?;
    let (set, oof, targets) = if mode == StageMode::Auto {
        let (checked, checked_oof) = match sets.check {
            Some(c) => (
                c,
                gold_oof(
                    data,
                    c,
                    train_cfg,
                    progress,
                    "cross-fitting (labels smoothed without gold)",
                )?,
            ),
            None => (decisions, oof.clone()),
        };
        let raw_oof = gold_oof(
            data,
            raw,
            train_cfg,
            progress,
            "cross-fitting (raw weak labels)",
        )?;
        let by_row: HashMap<usize, Option<usize>> = raw_oof
            .iter()
            .map(|(p, probs)| (raw.rows[*p], argmax(probs)))
            .collect();
        let (mut gold, mut input, mut output) = (vec![], vec![], vec![]);
        for (p, probs) in &checked_oof {
            let row = checked.rows[*p];
            let (Some(g), Some(r)) = (data.judge[row], by_row.get(&row)) else {
                continue;
            };
            gold.push(g);
            input.push(*r);
            output.push(argmax(probs));
        }
        let stage = safeguard::check(
            Stage::DecisionTargets,
            mode,
            &Compared {
                classes: k,
                gold: &gold,
                input: &input,
                output: &output,
            },
            z,
        );
        if stage.on {
            (decisions, oof, stage)
        } else {
            (raw, raw_oof, stage)
        }
    } else {
        let stage = safeguard::unavailable(Stage::DecisionTargets, mode, "");
        let on = mode == StageMode::On;
        let stage = StageReport {
            on,
            reason: format!("{} by setting", if on { "on" } else { "off" }),
            ..stage
        };
        if on {
            (decisions, oof, stage)
        } else {
            let raw_oof = gold_oof(data, raw, train_cfg, progress, "cross-fitting")?;
            (raw, raw_oof, stage)
        }
    };
    let mut gold = vec![];
    let samples: Vec<PikSample> = oof
        .into_iter()
        .filter_map(|(p, probs)| {
            let row = set.rows[p];
            gold.push((row, probs.clone()));
            Some(PikSample {
                embedding: set.x[p * data.dims..(p + 1) * data.dims].to_vec(),
                probs,
                gold: data.gold[row]?,
                refined_label: weak_labels[row],
                group: data.ids[row] as u64,
            })
        })
        .collect();
    progress.stage("training P(IK)");
    let pik = train_pik(&samples, pik_cfg).map_err(job_error)?;
    progress.check()?;
    progress.stage("training");
    let dataset = Dataset {
        x: &set.x,
        dims: data.dims,
        targets: &set.targets,
        k,
        weights: None,
    };
    let (classifier, summary) = train_softmax(&dataset, train_cfg, None, &mut |r| {
        progress.set(json!({ "epoch": r.epoch, "step": r.step, "loss": r.train_loss, "val_loss": r.val_loss }));
        !progress.cancelled()
    })
    .map_err(job_error)?;
    Ok(Trained {
        heads: Heads {
            classifier,
            pik: pik.head.clone(),
        },
        pik,
        targets,
        gold,
        summary: serde_json::to_value(summary).map_err(|e| Error::Internal(e.into()))?,
        encoder: EncoderChange {
            encoder_path: None,
            new_encoder: None,
            embeddings: None,
        },
    })
}
