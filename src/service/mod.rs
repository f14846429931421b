//! The service: the only place that orchestrates the store, the model, the graph and the
//! method. HTTP handlers call it; so do the job runner and the experiment command.

pub mod aggregates;
pub mod dashboard;
pub mod decide;
pub mod examples;
pub mod export;
pub mod graphs;
pub mod ingest;
pub mod jobs;
pub mod label_studio;
pub mod model_versions;
pub mod predict;
pub mod report;
pub mod rescoring;
pub mod retry;
pub mod review;
pub mod settings;
pub mod sources;
pub mod tasks;
pub mod validation;
pub mod version_cache;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::error::{Error, Result};
use crate::model::Backbone;
use crate::model::{BatchConfig, Encoded, Encoder, ModelInfo, ModelWorker, TextTokenizer};
use crate::model::{DecoderPooling, Overlong};
use crate::store::tasks::TaskRow;
use crate::store::Store;

pub use settings::TaskSettings;

/// Request limits (413 / 422 when exceeded).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_batch_examples: usize,
    pub max_text_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch_examples: 1000,
            max_text_chars: 20_000,
        }
    }
}

/// The base encoder and the thread that runs it.
pub struct Model {
    pub worker: ModelWorker,
    pub tokenizer: Arc<TextTokenizer>,
    pub base: Arc<Backbone>,
    pub info: ModelInfo,
    pub dir: PathBuf,
    pub overlong: Overlong,
    /// Where the model runs; fine-tuned versions are loaded onto it too.
    pub device: candle_core::Device,
}

impl Model {
    pub fn load(
        dir: &Path,
        batch: BatchConfig,
        overlong: Overlong,
        pooling: Option<DecoderPooling>,
        device: &candle_core::Device,
    ) -> anyhow::Result<Self> {
        let encoder = Encoder::load_on(dir, pooling, device)
            .with_context(|| format!("loading the model from {}", dir.display()))?;
        let worker = ModelWorker::start(batch)?;
        Ok(Self {
            worker,
            tokenizer: encoder.tokenizer,
            base: encoder.backbone,
            info: encoder.info,
            dir: encoder.dir,
            overlong,
            device: encoder.device,
        })
    }

    /// The id stored with embeddings made by the base encoder.
    pub fn base_encoder_id(&self) -> String {
        let id = self.info.features_id();
        // The weights' sha256 shortened, and the pooling when it is not the model's own.
        match id.split_once(':') {
            Some((sha, pooling)) => format!("base:{}:{pooling}", &sha[..16.min(sha.len())]),
            None => format!("base:{}", &id[..16.min(id.len())]),
        }
    }

    /// Tokenizes request texts as the server's `--on-overlong` says (`/v1/embed`); an
    /// over-long text is a 422 under `refuse`, naming the text with `name(index)`.
    pub fn tokenize(&self, texts: &[&str], name: &dyn Fn(usize) -> String) -> Result<Vec<Encoded>> {
        self.tokenize_as(texts, self.overlong, name)
    }

    /// Tokenizes a task's texts: as its `long_texts` setting says, unless the server refuses
    /// over-long texts.
    pub fn tokenize_for_task(
        &self,
        texts: &[&str],
        long_texts: crate::service::settings::LongTexts,
        name: &dyn Fn(usize) -> String,
    ) -> Result<Vec<Encoded>> {
        let overlong = match self.overlong {
            Overlong::Refuse => Overlong::Refuse,
            _ => long_texts.overlong(),
        };
        self.tokenize_as(texts, overlong, name)
    }

    fn tokenize_as(
        &self,
        texts: &[&str],
        overlong: Overlong,
        name: &dyn Fn(usize) -> String,
    ) -> Result<Vec<Encoded>> {
        let tokenizer = self.tokenizer.clone();
        tokio::task::block_in_place(|| tokenizer.tokenize(texts, overlong)).map_err(|e| {
            match e.downcast::<crate::model::encoder::OverlongText>() {
                Ok(o) => Error::invalid(
                    "text_too_long",
                    format!(
                        "{} has {} tokens; the model accepts at most {} (the server refuses over-long texts: --on-overlong refuse)",
                        name(o.index),
                        o.tokens,
                        o.max
                    ),
                ),
                Err(e) => Error::Internal(e),
            }
        })
    }
}

/// Records how long one phase of a write took (`sw2s_ingest_phase_seconds{phase}` in
/// /metrics; `sw2s bench ingest` prints them) and starts the next phase's clock.
pub(crate) fn record_phase(phase: &'static str, started: std::time::Instant) -> std::time::Instant {
    metrics::histogram!("sw2s_ingest_phase_seconds", "phase" => phase)
        .record(started.elapsed().as_secs_f64());
    std::time::Instant::now()
}

/// Runs `work` on a task of its own and waits for it. The HTTP server drops a handler whose
/// client hangs up; work that must not stop half-way (after its first commit) is not dropped
/// with it.
pub(crate) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| Error::Internal(e.into()))?
}

pub struct Service {
    pub store: Store,
    pub model: Model,
    pub limits: Limits,
    pub data_dir: PathBuf,
    /// Identifies this process's jobs (stable across restarts of the same data dir).
    pub instance_id: String,
    graphs: graphs::Registry,
    versions: Mutex<HashMap<i64, Arc<version_cache::LoadedVersion>>>,
    ready: AtomicBool,
    /// Tasks this process is deciding again in full; the recovery sweep leaves them be.
    rescoring: rescoring::Rescoring,
}

/// A task as the service uses it: the row with its labels and settings parsed.
#[derive(Debug, Clone)]
pub struct TaskCtx {
    pub id: i64,
    pub name: String,
    pub labels: Vec<String>,
    pub settings: TaskSettings,
    pub active_version_id: Option<i64>,
    pub graph_version: i64,
    pub examples_since_job: i64,
    pub created_at: i64,
}

impl TaskCtx {
    pub fn from_row(row: TaskRow) -> Result<Self> {
        let labels: Vec<String> = serde_json::from_str(&row.labels).map_err(|e| {
            Error::Internal(anyhow::anyhow!("task {} has corrupt labels: {e}", row.name))
        })?;
        let settings: TaskSettings = serde_json::from_str(&row.settings).map_err(|e| {
            Error::Internal(anyhow::anyhow!(
                "task {} has corrupt settings: {e}",
                row.name
            ))
        })?;
        Ok(Self {
            id: row.id,
            name: row.name,
            labels,
            settings,
            active_version_id: row.active_version_id,
            graph_version: row.graph_version,
            examples_since_job: row.examples_since_job,
            created_at: row.created_at,
        })
    }

    pub fn k(&self) -> usize {
        self.labels.len()
    }

    pub fn label_index(&self, name: &str) -> Option<usize> {
        self.labels.iter().position(|l| l == name)
    }

    pub fn label_name(&self, index: usize) -> Option<&str> {
        self.labels.get(index).map(|s| s.as_str())
    }
}

impl Service {
    pub fn new(
        store: Store,
        model: Model,
        limits: Limits,
        data_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating the data dir {}", data_dir.display()))?;
        let instance_id = instance_id(&data_dir)?;
        Ok(Self {
            store,
            model,
            limits,
            data_dir,
            instance_id,
            graphs: graphs::Registry::default(),
            versions: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            rescoring: rescoring::Rescoring::default(),
        })
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Runs one text through the model; `/ready` turns true only after this answered.
    pub async fn warm_up(&self) -> Result<()> {
        let encoded = self
            .model
            .tokenize(&["warm up"], &|_| "warm-up text".into())?;
        let v = self.model.worker.embed(&self.model.base, encoded).await?;
        if v.first().map(|v| v.len()) != Some(self.model.info.dims) {
            return Err(Error::Internal(anyhow::anyhow!(
                "warm-up returned a wrong-sized embedding"
            )));
        }
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub async fn task(&self, name: &str) -> Result<TaskCtx> {
        let row = crate::store::tasks::by_name(self.store.pool(), name)
            .await?
            .ok_or_else(|| Error::not_found(format!("task {name:?} does not exist")))?;
        TaskCtx::from_row(row)
    }

    pub async fn task_by_id(&self, id: i64) -> Result<Option<TaskCtx>> {
        match crate::store::tasks::by_id(self.store.pool(), id).await? {
            Some(row) => Ok(Some(TaskCtx::from_row(row)?)),
            None => Ok(None),
        }
    }

    /// Saves every loaded graph (graceful shutdown).
    pub async fn save_graphs(&self) {
        self.graphs.save_all(&self.data_dir).await;
    }
}

/// A stable id for this data dir's process, kept in `DATA_DIR/instance-id`. Jobs record it,
/// so a restart can tell its own interrupted jobs from another process's running ones.
fn instance_id(data_dir: &Path) -> anyhow::Result<String> {
    if let Ok(id) = std::env::var("SW2S_INSTANCE_ID") {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_string());
        }
    }
    let path = data_dir.join("instance-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        if !id.trim().is_empty() {
            return Ok(id.trim().to_string());
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    crate::fsio::write_atomic(&path, id.as_bytes())?;
    Ok(id)
}

/// Parses a stored distribution (a JSON array).
pub fn parse_dist(json: Option<&str>) -> Option<Vec<f32>> {
    json.and_then(|s| serde_json::from_str(s).ok())
}

pub fn dist_json(v: &[f32]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}
