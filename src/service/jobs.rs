//! Selective fine-tuning jobs (DESIGN.md §1.6). Jobs are rows in the database: one queued or
//! running job per task (a unique index is the lock, across processes), claimed by any
//! process that runs jobs, kept alive by heartbeats that carry progress and bring back
//! cancel requests. A successful job publishes a new model version, activates it and
//! re-scores the task; a failed or cancelled one leaves serving untouched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::settings::{JobMode, Targets, TrainOn};
use super::{parse_dist, Service, TaskCtx};
use crate::error::{Error, Result};
use crate::method::selection::DecisionSource;
use crate::method::selective::{cross_fit, train_pik, PikConfig, PikReport, PikSample};
use crate::method::training::{train_softmax, Cancelled, Dataset, TrainConfig};
use crate::method::weak::{argmax, one_hot};
use crate::model::encoder::Encoded;
use crate::model::heads::{softmax, LinearHead};
use crate::model::manifest::{
    version_dir, write_version_dir, EncoderRef, Manifest, PikInfo, MANIFEST_FORMAT,
};
use crate::model::Heads;
use crate::store::jobs::{self, JobRow};
use crate::store::{bytes_to_f32s, examples, f32s_to_bytes, is_unique_violation, models, now_ms};

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// `head` (default: the task's `job_mode`) or `full`.
    pub mode: Option<JobMode>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: i64,
    pub task: String,
    /// `head`, `full`, or `reembed` (activating a version with another encoder).
    pub mode: String,
    /// `request`, `new_examples`, `schedule`, `activate` or `retry`.
    pub trigger: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Stage, epoch, step, loss, done/total, as last reported.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Value>,
    /// Final metrics of a succeeded job.
    #[schema(value_type = Option<Object>)]
    pub metrics: Option<Value>,
    pub error: Option<String>,
    /// The version this job published.
    pub model_version: Option<i64>,
    pub retry_of: Option<i64>,
    pub cancel_requested: bool,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
}

/// Shared between the job's compute thread and its heartbeat.
#[derive(Default)]
pub struct Progress {
    value: Mutex<serde_json::Map<String, Value>>,
    cancel: AtomicBool,
}

impl Progress {
    pub fn set(&self, fields: Value) {
        if let (Ok(mut map), Value::Object(fields)) = (self.value.lock(), fields) {
            map.extend(fields);
        }
    }

    pub fn stage(&self, stage: &str) {
        if let Ok(mut map) = self.value.lock() {
            map.clear();
            map.insert("stage".into(), json!(stage));
        }
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> String {
        self.value
            .lock()
            .map(|m| Value::Object(m.clone()).to_string())
            .unwrap_or_else(|_| "{}".into())
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.cancelled() {
            Err(Cancelled.into())
        } else {
            Ok(())
        }
    }
}

/// The examples a job trains on, in memory.
struct TrainingData {
    ids: Vec<i64>,
    x: Vec<f32>,
    dims: usize,
    targets: Vec<f32>,
    sources: Vec<DecisionSource>,
    gold: Vec<Option<usize>>,
    refined_label: Vec<Option<usize>>,
}

impl TrainingData {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn gold_rows(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.gold[i].is_some())
            .collect()
    }

    fn counts(&self) -> Value {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for s in &self.sources {
            *counts.entry(s.as_str()).or_default() += 1;
        }
        json!(counts)
    }
}

/// A trained version ready to publish.
struct Publish {
    mode: JobMode,
    heads: Heads,
    pik: PikReport,
    /// Training summary for the manifest.
    training: Value,
    encoder: EncoderChange,
}

/// The encoder a new version uses.
struct EncoderChange {
    /// Relative path of the encoder weights the version uses (None: the base model).
    encoder_path: Option<String>,
    /// A fine-tuned encoder file to place in the version directory.
    new_encoder: Option<std::path::PathBuf>,
    /// New embeddings of every example (a new encoder).
    embeddings: Option<HashMap<i64, Vec<f32>>>,
}

const JOB_CHUNK: i64 = 2000;

impl Service {
    pub async fn create_job(&self, task_name: &str, req: CreateJob) -> Result<JobView> {
        let task = self.task(task_name).await?;
        let mode = req.mode.unwrap_or(task.settings.job_mode);
        let row = self
            .enqueue_job(&task, mode.as_str(), "request", json!({}), None)
            .await?;
        Ok(self.job_view(&task, row))
    }

    /// Queues a job; 409 with the active job when the task already has one.
    pub async fn enqueue_job(
        &self,
        task: &TaskCtx,
        mode: &str,
        trigger: &str,
        params: Value,
        retry_of: Option<i64>,
    ) -> Result<JobRow> {
        let mut tx = self.store.begin_write().await?;
        let inserted = jobs::insert(
            tx.conn(),
            task.id,
            mode,
            trigger,
            &params.to_string(),
            retry_of,
            now_ms(),
        )
        .await;
        match inserted {
            Ok(row) => {
                tx.commit().await?;
                tracing::info!(task = %task.name, job = row.id, mode, trigger, "job queued");
                Ok(row)
            }
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                let active = jobs::active_for_task(self.store.pool(), task.id).await?;
                Err(Error::Conflict {
                    code: "job_active",
                    message: format!(
                        "task {:?} already has a queued or running job; cancel it or wait",
                        task.name
                    ),
                    details: active.map(|j| json!({ "job": self.job_view(task, j) })),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn job_view(&self, task: &TaskCtx, row: JobRow) -> JobView {
        let parse = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str(s).ok());
        let model_version = row
            .metrics
            .as_deref()
            .and_then(|m| serde_json::from_str::<Value>(m).ok())
            .and_then(|m| m["model_version"].as_i64());
        JobView {
            id: row.id,
            task: task.name.clone(),
            progress: parse(&row.progress),
            metrics: parse(&row.metrics),
            mode: row.mode,
            trigger: row.trigger_kind,
            state: row.state,
            error: row.error,
            model_version,
            retry_of: row.retry_of,
            cancel_requested: row.cancel_requested != 0,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }

    async fn job_row(&self, task: &TaskCtx, id: i64) -> Result<JobRow> {
        jobs::by_id(self.store.pool(), task.id, id)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!("job {id} does not exist in task {:?}", task.name))
            })
    }

    pub async fn get_job(&self, task_name: &str, id: i64) -> Result<JobView> {
        let task = self.task(task_name).await?;
        let row = self.job_row(&task, id).await?;
        Ok(self.job_view(&task, row))
    }

    pub async fn list_jobs(&self, task_name: &str) -> Result<JobList> {
        let task = self.task(task_name).await?;
        let rows = jobs::list(self.store.pool(), task.id, 100).await?;
        Ok(JobList {
            jobs: rows.into_iter().map(|r| self.job_view(&task, r)).collect(),
        })
    }

    pub async fn cancel_job(&self, task_name: &str, id: i64) -> Result<JobView> {
        let task = self.task(task_name).await?;
        let row = self.job_row(&task, id).await?;
        if !matches!(row.state.as_str(), "queued" | "running") {
            return Err(Error::conflict(
                "job_finished",
                format!("job {id} is already {}", row.state),
            ));
        }
        jobs::request_cancel(self.store.pool(), id, now_ms()).await?;
        Ok(self.job_view(&task, self.job_row(&task, id).await?))
    }

    pub async fn retry_job(&self, task_name: &str, id: i64) -> Result<JobView> {
        let task = self.task(task_name).await?;
        let row = self.job_row(&task, id).await?;
        if !matches!(row.state.as_str(), "failed" | "cancelled") {
            return Err(Error::conflict(
                "job_not_retryable",
                format!(
                    "job {id} is {}; only failed or cancelled jobs are re-run",
                    row.state
                ),
            ));
        }
        let params: Value = serde_json::from_str(&row.params).unwrap_or(json!({}));
        let new = self
            .enqueue_job(&task, &row.mode, "retry", params, Some(id))
            .await?;
        Ok(self.job_view(&task, new))
    }

    /// Starts jobs whose trigger is due: N new examples, or the schedule.
    pub async fn schedule_due_jobs(&self) -> Result<()> {
        let now = now_ms();
        for row in crate::store::tasks::list(self.store.pool()).await? {
            let task = TaskCtx::from_row(row)?;
            let s = &task.settings;
            let due_new = s
                .job_every_new_examples
                .map(|n| task.examples_since_job >= n as i64)
                .unwrap_or(false);
            let due_schedule = match s.job_every_secs {
                Some(secs) => {
                    let last = jobs::last_finished_at(self.store.pool(), task.id)
                        .await?
                        .unwrap_or(task.created_at);
                    now - last >= secs as i64 * 1000
                }
                None => false,
            };
            let trigger = if due_new {
                "new_examples"
            } else if due_schedule {
                "schedule"
            } else {
                continue;
            };
            match self
                .enqueue_job(&task, s.job_mode.as_str(), trigger, json!({}), None)
                .await
            {
                Ok(_) | Err(Error::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Fails jobs whose process stopped sending heartbeats.
    pub async fn reap_dead_jobs(&self, lease: Duration) -> Result<()> {
        let now = now_ms();
        for id in jobs::reap_dead(self.store.pool(), now - lease.as_millis() as i64, now).await? {
            tracing::warn!(
                job = id,
                "job lost its process (no heartbeat); marked failed"
            );
        }
        Ok(())
    }

    /// On start: jobs this instance was running when it stopped are failed, and can be re-run.
    pub async fn fail_interrupted_jobs(&self) -> Result<()> {
        let n = jobs::fail_owned_by(self.store.pool(), &self.instance_id, now_ms()).await?;
        if n > 0 {
            tracing::warn!(
                jobs = n,
                "jobs interrupted by the last shutdown were marked failed"
            );
        }
        Ok(())
    }

    /// Claims and runs one queued job to its end; false when there was none.
    pub async fn run_next_job(self: &Arc<Self>) -> Result<bool> {
        let Some(job) = jobs::claim_next(self.store.pool(), &self.instance_id, now_ms()).await?
        else {
            return Ok(false);
        };
        let progress = Arc::new(Progress::default());
        progress.stage("starting");
        let beat = {
            let service = self.clone();
            let progress = progress.clone();
            let id = job.id;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match jobs::heartbeat(service.store.pool(), id, &progress.snapshot(), now_ms())
                        .await
                    {
                        Ok(true) => progress.cancel.store(true, Ordering::Relaxed),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(job = id, error = %e, "job heartbeat failed"),
                    }
                }
            })
        };
        tracing::info!(job = job.id, task_id = job.task_id, mode = %job.mode, "job started");
        let started = std::time::Instant::now();
        let outcome = self.execute(&job, &progress).await;
        beat.abort();
        let staging = self
            .data_dir
            .join("versions")
            .join(format!("task-{}", job.task_id))
            .join(format!(".job-{}", job.id));
        let _ = std::fs::remove_dir_all(staging);
        let (state, metrics, error, version_id) = match outcome {
            Ok((metrics, version_id)) => (
                "succeeded",
                Some(metrics.to_string()),
                None,
                Some(version_id),
            ),
            Err(e) if is_cancel(&e) => (
                "cancelled",
                None,
                Some("cancelled on request".to_string()),
                None,
            ),
            Err(e) => ("failed", None, Some(e.to_string()), None),
        };
        let mut tx = self.store.begin_write().await?;
        jobs::finish(
            tx.conn(),
            job.id,
            state,
            metrics.as_deref(),
            error.as_deref(),
            version_id,
            now_ms(),
        )
        .await?;
        tx.commit().await?;
        metrics::counter!("sw2s_jobs_total", "state" => state).increment(1);
        metrics::histogram!("sw2s_job_seconds").record(started.elapsed().as_secs_f64());
        match &error {
            Some(e) if state == "failed" => tracing::error!(job = job.id, error = %e, "job failed"),
            _ => tracing::info!(
                job = job.id,
                state,
                seconds = started.elapsed().as_secs_f64(),
                "job finished"
            ),
        }
        Ok(true)
    }

    async fn execute(
        self: &Arc<Self>,
        job: &JobRow,
        progress: &Arc<Progress>,
    ) -> Result<(Value, i64)> {
        let task = self
            .task_by_id(job.task_id)
            .await?
            .ok_or_else(|| Error::not_found("the job's task was deleted"))?;
        {
            let mut tx = self.store.begin_write().await?;
            crate::store::tasks::reset_examples_since_job(tx.conn(), task.id).await?;
            tx.commit().await?;
        }
        match job.mode.as_str() {
            "head" => {
                self.run_train_job(&task, job, progress, JobMode::Head)
                    .await
            }
            "full" => {
                self.run_train_job(&task, job, progress, JobMode::Full)
                    .await
            }
            "reembed" => self.run_reembed_job(&task, job, progress).await,
            other => Err(Error::Internal(anyhow::anyhow!(
                "unknown job mode {other:?}"
            ))),
        }
    }

    /// Every decided example with an embedding from `encoder_id`, with its training target.
    async fn training_data(&self, task: &TaskCtx, encoder_id: &str) -> Result<TrainingData> {
        let k = task.k();
        let mut data = TrainingData {
            ids: vec![],
            x: vec![],
            dims: self.model.info.dims,
            targets: vec![],
            sources: vec![],
            gold: vec![],
            refined_label: vec![],
        };
        let mut after = 0;
        loop {
            let rows =
                examples::training_rows_page(self.store.pool(), task.id, after, JOB_CHUNK).await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            for r in rows {
                let (Some(embedding), Some(label), Some(source)) = (
                    r.embedding
                        .as_deref()
                        .filter(|_| r.encoder_id.as_deref() == Some(encoder_id)),
                    r.decision_label
                        .and_then(|l| usize::try_from(l).ok())
                        .filter(|&l| l < k),
                    r.decision_source.as_deref().and_then(DecisionSource::parse),
                ) else {
                    continue;
                };
                if source == DecisionSource::None
                    || (source == DecisionSource::Strong
                        && task.settings.train_on == TrainOn::GoldAndWeak)
                {
                    continue;
                }
                let refined = parse_dist(r.refined.as_deref());
                let target = match (task.settings.targets, source, &refined) {
                    (Targets::Soft, DecisionSource::WeakRefined, Some(dist)) if dist.len() == k => {
                        dist.clone()
                    }
                    _ => one_hot(label, k),
                };
                data.ids.push(r.id);
                data.x.extend(bytes_to_f32s(embedding));
                data.targets.extend(target);
                data.sources.push(source);
                data.gold
                    .push(r.gold_label.and_then(|g| usize::try_from(g).ok()));
                data.refined_label.push(refined.as_deref().and_then(argmax));
            }
        }
        if data.ids.is_empty() {
            return Err(Error::invalid(
                "nothing_to_train_on",
                "no example has a decision to train on: ingest examples with weak or gold labels first",
            ));
        }
        Ok(data)
    }

    async fn run_train_job(
        self: &Arc<Self>,
        task: &TaskCtx,
        job: &JobRow,
        progress: &Arc<Progress>,
        mode: JobMode,
    ) -> Result<(Value, i64)> {
        let active = self.active_version(task).await?;
        let (_, encoder_id) = self.task_encoder(task).await?;
        progress.stage("loading");
        let data = self.training_data(task, &encoder_id).await?;
        let mut train_cfg = task.settings.train.clone();
        train_cfg.seed = train_cfg.seed.wrapping_add(job.id as u64);
        let pik_cfg = PikConfig {
            features: task.settings.pik_features,
            min_gold: task.settings.pik_min_gold,
            calibration: 0.3,
            tau: task.settings.tau.fixed(),
            train: TrainConfig {
                holdout: 0.0,
                ..train_cfg.clone()
            },
        };
        let counts = data.counts();
        let (heads, pik, summary, encoder) = match mode {
            JobMode::Head => {
                let p = progress.clone();
                let k = task.k();
                let (heads, pik, summary) = tokio::task::spawn_blocking(move || {
                    train_heads(&data, k, &train_cfg, &pik_cfg, &p)
                })
                .await
                .map_err(|e| Error::Internal(e.into()))?
                .map_err(job_error)?;
                // A head job keeps the encoder the task uses now (a fine-tuned one included).
                let encoder_path = active.as_ref().and_then(|v| v.encoder_path.clone());
                (
                    heads,
                    pik,
                    summary,
                    EncoderChange {
                        encoder_path,
                        new_encoder: None,
                        embeddings: None,
                    },
                )
            }
            JobMode::Full => {
                self.finetune(task, job, data, train_cfg, pik_cfg, progress)
                    .await?
            }
        };
        progress.check().map_err(job_error)?;
        let training = json!({ "examples_by_source": counts, "targets": task.settings.targets, "train_on": task.settings.train_on, "head": summary });
        let publish = Publish {
            mode,
            heads,
            pik: pik.clone(),
            training: training.clone(),
            encoder,
        };
        let (version_id, version) = self.publish(task, job, publish, progress).await?;
        let changed = self.rescore_after_publish(task, progress).await;
        Ok((
            json!({ "model_version": version, "changed_decisions": changed, "pik": pik, "training": training }),
            version_id,
        ))
    }

    /// `full`: fine-tunes encoder and head on the decisions, holding part of the gold labels
    /// out for P(IK), then re-embeds every example with the new encoder.
    async fn finetune(
        self: &Arc<Self>,
        task: &TaskCtx,
        job: &JobRow,
        data: TrainingData,
        train_cfg: TrainConfig,
        pik_cfg: PikConfig,
        progress: &Arc<Progress>,
    ) -> Result<(Heads, PikReport, Value, EncoderChange)> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let ft = task.settings.finetune.clone();
        let k = task.k();
        // Gold held out of fine-tuning: P(IK) learns from predictions on examples the encoder
        // never saw labelled.
        let mut gold_rows = data.gold_rows();
        let mut rng = rand::rngs::StdRng::seed_from_u64(train_cfg.seed);
        gold_rows.shuffle(&mut rng);
        let n_hold = if gold_rows.len() >= 20 {
            (gold_rows.len() as f64 * 0.3).round() as usize
        } else {
            0
        };
        let held: std::collections::HashSet<usize> = gold_rows[..n_hold].iter().copied().collect();
        let mut train_rows: Vec<usize> = (0..data.len()).filter(|i| !held.contains(i)).collect();
        train_rows.shuffle(&mut rng);
        train_rows.truncate(ft.max_examples);

        progress.stage("tokenizing");
        let texts = self.texts(&data.ids).await?;
        let tokenized = self.tokenize_for_training(&texts, ft.max_tokens)?;
        let items: Vec<(Encoded, Vec<f32>)> = train_rows
            .iter()
            .map(|&i| {
                (
                    tokenized[i].clone(),
                    data.targets[i * k..(i + 1) * k].to_vec(),
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
        let staging = self
            .data_dir
            .join("versions")
            .join(format!("task-{}", task.id))
            .join(format!(".job-{}", job.id));
        std::fs::create_dir_all(&staging).map_err(|e| Error::Internal(e.into()))?;
        let encoder_file = staging.join("encoder.safetensors");
        let model_dir = self.model.dir.clone();
        let p = progress.clone();
        let params = crate::model::finetune::FinetuneParams {
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
            let model = crate::model::finetune::TrainableBert::load(&config, &weights, &device)?;
            let head = crate::model::finetune::finetune(&model, &head_init, &items, &params, &device, &mut |r| {
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
            tokio::task::spawn_blocking(move || -> anyhow::Result<crate::model::bert::Bert> {
                let config = crate::model::encoder::read_config(&model_dir)?;
                crate::model::encoder::load_bert(&config, &file, None, &candle_core::Device::Cpu)
            })
            .await
            .map_err(|e| Error::Internal(e.into()))?
            .map_err(Error::Internal)?
        };
        let embeddings = self.embed_task(task, &Arc::new(bert), progress).await?;

        // P(IK) from the held-out gold examples under the new encoder and head.
        let samples: Vec<PikSample> = gold_rows[..n_hold]
            .iter()
            .filter_map(|&i| {
                let e = embeddings.get(&data.ids[i])?;
                Some(PikSample {
                    probs: softmax(&head.forward(e)),
                    embedding: e.clone(),
                    gold: data.gold[i]?,
                    refined_label: data.refined_label[i],
                    group: data.ids[i] as u64,
                })
            })
            .collect();
        let outcome = train_pik(&samples, &pik_cfg).map_err(Error::Internal)?;
        let summary = json!({ "fine_tuned_examples": train_rows.len(), "epochs": ft.epochs, "held_out_gold": n_hold });
        Ok((
            Heads {
                classifier: head,
                pik: outcome.head,
            },
            outcome.report,
            summary,
            EncoderChange {
                encoder_path: None,
                new_encoder: Some(encoder_file),
                embeddings: Some(embeddings),
            },
        ))
    }

    /// Activating a version with another encoder: re-embed everything with it first.
    async fn run_reembed_job(
        self: &Arc<Self>,
        task: &TaskCtx,
        job: &JobRow,
        progress: &Arc<Progress>,
    ) -> Result<(Value, i64)> {
        let params: Value = serde_json::from_str(&job.params).unwrap_or(json!({}));
        let version_id = params["version_id"]
            .as_i64()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("reembed job without version_id")))?;
        let version = self.load_version(version_id).await?;
        let embeddings = self.embed_task(task, &version.bert, progress).await?;
        progress.check().map_err(job_error)?;
        progress.stage("activating");
        let mut tx = self.store.begin_write().await?;
        write_embeddings(&mut tx, &embeddings, &version.encoder_id).await?;
        crate::store::tasks::set_active_version(tx.conn(), task.id, Some(version_id), now_ms())
            .await?;
        examples::mark_task_dirty(tx.conn(), task.id).await?;
        tx.commit().await?;
        self.forget_graph(task.id, true);
        let changed = self.rescore_after_publish(task, progress).await;
        Ok((
            json!({ "model_version": version.version, "changed_decisions": changed, "reembedded": embeddings.len() }),
            version_id,
        ))
    }

    async fn texts(&self, ids: &[i64]) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(JOB_CHUNK as usize) {
            let rows = examples::texts_of(self.store.pool(), chunk).await?;
            let by_id: HashMap<i64, String> = rows.into_iter().map(|r| (r.id, r.text)).collect();
            out.extend(
                chunk
                    .iter()
                    .map(|id| by_id.get(id).cloned().unwrap_or_default()),
            );
        }
        Ok(out)
    }

    /// Tokenized for training: cut to `max_tokens`, keeping the closing special token.
    fn tokenize_for_training(&self, texts: &[String], max_tokens: usize) -> Result<Vec<Encoded>> {
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let mut encoded = self
            .model
            .tokenizer
            .tokenize(&refs, crate::config::Overlong::Truncate)
            .map_err(Error::Internal)?;
        for e in &mut encoded {
            if e.ids.len() > max_tokens {
                let last = *e.ids.last().unwrap_or(&0);
                e.ids.truncate(max_tokens);
                e.type_ids.truncate(max_tokens);
                if let Some(x) = e.ids.last_mut() {
                    *x = last;
                }
            }
        }
        Ok(encoded)
    }

    /// Embeds every example of the task with `bert`, with progress.
    async fn embed_task(
        &self,
        task: &TaskCtx,
        bert: &Arc<crate::model::bert::Bert>,
        progress: &Arc<Progress>,
    ) -> Result<HashMap<i64, Vec<f32>>> {
        let total = crate::store::tasks::counts(self.store.pool(), task.id)
            .await?
            .examples;
        let mut out = HashMap::with_capacity(total as usize);
        let mut after = 0;
        progress.stage("embedding");
        loop {
            progress.check().map_err(job_error)?;
            let rows = examples::texts_page(self.store.pool(), task.id, after, 256).await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            let refs: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
            let encoded = self
                .model
                .tokenizer
                .tokenize(&refs, crate::config::Overlong::Truncate)
                .map_err(Error::Internal)?;
            let vectors = self.model.worker.embed(bert, encoded).await?;
            out.extend(rows.iter().map(|r| r.id).zip(vectors));
            progress.set(json!({ "done": out.len(), "total": total }));
        }
        Ok(out)
    }

    /// Writes the version (directory and database), activates it and marks the task's
    /// examples for re-scoring, in one transaction.
    async fn publish(
        &self,
        task: &TaskCtx,
        job: &JobRow,
        publish: Publish,
        progress: &Progress,
    ) -> Result<(i64, i64)> {
        let Publish {
            heads,
            pik,
            training,
            encoder: change,
            ..
        } = &publish;
        progress.stage("publishing");
        let info = &self.model.info;
        let mut manifest = Manifest {
            format: MANIFEST_FORMAT,
            task: task.name.clone(),
            version: 0,
            labels: task.labels.clone(),
            encoder: EncoderRef {
                id: info.model_id.clone(),
                sha256: info.sha256.clone(),
                dims: info.dims,
                fine_tuned: change.new_encoder.is_some() || change.encoder_path.is_some(),
                weights_sha256: None,
            },
            mode: publish.mode.as_str().into(),
            job_id: Some(job.id),
            created_at: now_ms(),
            pik: PikInfo {
                source: pik.source.clone(),
                reason: pik.reason.clone(),
                tau: pik.tau as f64,
                tau_source: pik.tau_source.clone(),
                gold_examples: pik.gold_examples,
            },
            metrics: json!({ "pik": pik }),
            training: training.clone(),
        };
        let bytes = heads.to_safetensors().map_err(Error::Internal)?;
        let mut tx = self.store.begin_write().await?;
        let (version_id, version) = models::insert(
            tx.conn(),
            task.id,
            "{}",
            &bytes,
            None,
            Some(job.id),
            now_ms(),
        )
        .await?;
        manifest.version = version;
        let dir = version_dir(&self.data_dir, task.id, version);
        let rel = |p: &std::path::Path| {
            p.strip_prefix(&self.data_dir)
                .unwrap_or(p)
                .display()
                .to_string()
        };
        let encoder_path = match &change.new_encoder {
            Some(file) => {
                manifest.encoder.weights_sha256 =
                    Some(crate::model::encoder::sha256_file(file).map_err(Error::Internal)?);
                Some(rel(&dir.join("encoder.safetensors")))
            }
            None => change.encoder_path.clone(),
        };
        let extra: Vec<(&str, &std::path::Path)> = change
            .new_encoder
            .iter()
            .map(|f| ("encoder.safetensors", f.as_path()))
            .collect();
        write_version_dir(&dir, &manifest, heads, &extra).map_err(Error::Internal)?;
        let manifest_json =
            serde_json::to_string(&manifest).map_err(|e| Error::Internal(e.into()))?;
        models::set_manifest(tx.conn(), version_id, &manifest_json).await?;
        if let Some(path) = &encoder_path {
            sqlx::query("UPDATE model_versions SET encoder_path = $1 WHERE id = $2")
                .bind(path.as_str())
                .bind(version_id)
                .execute(tx.conn())
                .await?;
        }
        if let (Some(embeddings), Some(path)) = (&change.embeddings, &encoder_path) {
            write_embeddings(
                &mut tx,
                embeddings,
                &super::versions::fine_tuned_encoder_id(path),
            )
            .await?;
        }
        crate::store::tasks::set_active_version(tx.conn(), task.id, Some(version_id), now_ms())
            .await?;
        examples::mark_task_dirty(tx.conn(), task.id).await?;
        tx.commit().await?;
        if change.embeddings.is_some() {
            self.forget_graph(task.id, true);
        }
        tracing::info!(task = %task.name, version, "model version published and active");
        Ok((version_id, version))
    }

    /// Settles the task's examples after a new version became active; returns how many
    /// decisions changed. The version is live by now, so a failure here does not fail the
    /// job: the examples stay marked and the recovery sweep finishes them (null is returned).
    async fn rescore_after_publish(&self, task: &TaskCtx, progress: &Progress) -> Option<usize> {
        match self.rescore_dirty(task, progress).await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(task = %task.name, error = %e, "re-scoring after a new version failed; the recovery sweep continues it");
                None
            }
        }
    }

    async fn rescore_dirty(&self, task: &TaskCtx, progress: &Progress) -> Result<usize> {
        progress.stage("rescoring");
        let task = self
            .task_by_id(task.id)
            .await?
            .ok_or_else(|| Error::not_found("task deleted"))?;
        let total = examples::dirty_count(self.store.pool(), task.id).await?;
        let mut done = 0;
        let mut changed = 0;
        let mut after = 0;
        loop {
            let ids = examples::dirty_ids(self.store.pool(), task.id, after, 500).await?;
            let Some(&last) = ids.last() else { break };
            after = last;
            let report = self.settle(&task, &ids, "new model version").await?;
            changed += report.decisions.iter().filter(|d| d.changed).count();
            done += ids.len();
            progress.set(json!({ "done": done, "total": total }));
        }
        Ok(changed)
    }
}

/// Cross-fits the classifier on gold, trains P(IK) on the out-of-fold predictions, then the
/// final classifier on everything.
fn train_heads(
    data: &TrainingData,
    k: usize,
    train_cfg: &TrainConfig,
    pik_cfg: &PikConfig,
    progress: &Progress,
) -> anyhow::Result<(Heads, PikReport, Value)> {
    let dataset = Dataset {
        x: &data.x,
        dims: data.dims,
        targets: &data.targets,
        k,
        weights: None,
    };
    let gold_rows = data.gold_rows();
    let oof = if gold_rows.len() >= 10 {
        progress.stage("cross-fitting");
        cross_fit(&dataset, &gold_rows, 5, train_cfg, &mut |fold| {
            progress.set(json!({ "fold": fold + 1, "folds": 5 }));
            !progress.cancelled()
        })?
    } else {
        vec![]
    };
    let samples: Vec<PikSample> = gold_rows
        .iter()
        .zip(oof)
        .filter_map(|(&row, probs)| {
            Some(PikSample {
                embedding: data.x[row * data.dims..(row + 1) * data.dims].to_vec(),
                probs,
                gold: data.gold[row]?,
                refined_label: data.refined_label[row],
                group: data.ids[row] as u64,
            })
        })
        .collect();
    progress.stage("training P(IK)");
    let pik = train_pik(&samples, pik_cfg)?;
    progress.check()?;
    progress.stage("training");
    let (classifier, summary) = train_softmax(&dataset, train_cfg, None, &mut |r| {
        progress.set(json!({ "epoch": r.epoch, "step": r.step, "loss": r.train_loss, "val_loss": r.val_loss }));
        !progress.cancelled()
    })?;
    Ok((
        Heads {
            classifier,
            pik: pik.head,
        },
        pik.report,
        serde_json::to_value(summary)?,
    ))
}

async fn write_embeddings(
    tx: &mut crate::store::WriteTx,
    embeddings: &HashMap<i64, Vec<f32>>,
    encoder_id: &str,
) -> Result<()> {
    for (id, v) in embeddings {
        examples::set_embedding(tx.conn(), *id, &f32s_to_bytes(v), encoder_id).await?;
    }
    Ok(())
}

fn is_cancel(e: &Error) -> bool {
    matches!(e, Error::Internal(inner) if inner.downcast_ref::<Cancelled>().is_some())
}

fn job_error(e: anyhow::Error) -> Error {
    Error::Internal(e)
}
