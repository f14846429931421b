//! The model runs on its own thread behind a bounded queue (the text-embeddings-inference
//! pattern). Requests are split into texts, sorted by length to waste little on padding and
//! cut into batches of at most `max_batch_size` texts and `max_batch_tokens` padded tokens.
//! The queue is bounded in model passes — a text counts once per window it is read in, so
//! a long text read whole holds as much room as the work it brings: when the queue is full,
//! HTTP callers get 429 at once, while internal bulk work (jobs, re-scoring) waits for room.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::backbone::Backbone;
use super::encoder::Encoded;

/// What the model worker can answer besides embeddings; the service turns it into its own
/// error (429, 503, 500) at its edge.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The queue has no room for the texts now.
    #[error("the model queue is full; retry after {retry_after_secs} s")]
    Overloaded { retry_after_secs: u64 },
    /// The worker thread is gone (shutting down).
    #[error("the model worker has stopped")]
    Stopped,
    /// The model failed on a batch.
    #[error("the model failed: {0:#}")]
    Failed(anyhow::Error),
}

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_queue_texts: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 16_384,
            max_queue_texts: 4096,
        }
    }
}

struct Job {
    model: Arc<Backbone>,
    items: Vec<Encoded>,
    reply: oneshot::Sender<anyhow::Result<Vec<Vec<f32>>>>,
    _permit: OwnedSemaphorePermit,
}

/// A cloneable handle to the model thread.
#[derive(Clone)]
pub struct ModelWorker {
    tx: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    config: BatchConfig,
}

impl ModelWorker {
    pub fn start(config: BatchConfig) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sw2s-model".into())
            .spawn(move || run(rx, config))?;
        Ok(Self {
            tx,
            permits: Arc::new(Semaphore::new(config.max_queue_texts)),
            config,
        })
    }

    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// Windows (one per short text) waiting or running.
    pub fn queued_texts(&self) -> usize {
        self.config.max_queue_texts - self.permits.available_permits()
    }

    /// Whether the queue has room for one more full batch (readiness reports it).
    pub fn has_room(&self) -> bool {
        self.permits.available_permits()
            >= self.config.max_batch_size.min(self.config.max_queue_texts)
    }

    /// Embeds for a request: answers `Overloaded` at once when the queue has no room.
    pub async fn try_embed(
        &self,
        model: &Arc<Backbone>,
        items: Vec<Encoded>,
    ) -> Result<Vec<Vec<f32>>, WorkerError> {
        if items.is_empty() {
            return Ok(vec![]);
        }
        // One request larger than the whole queue still runs, alone.
        let n = slots(&items).min(self.config.max_queue_texts) as u32;
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| {
                metrics::counter!("sw2s_model_rejected_total").increment(1);
                WorkerError::Overloaded {
                    retry_after_secs: 1 + (self.queued_texts() / 100) as u64,
                }
            })?;
        self.submit(model, items, permit).await
    }

    /// Embeds for internal bulk work: waits for room, in chunks the queue can hold.
    pub async fn embed(
        &self,
        model: &Arc<Backbone>,
        items: Vec<Encoded>,
    ) -> Result<Vec<Vec<f32>>, WorkerError> {
        let chunk = (self.config.max_queue_texts / 4).max(1);
        let mut out = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let mut part: Vec<Encoded> = vec![];
            let mut need = 0;
            while let Some(next) = items.next_if(|e| part.is_empty() || need + cost(e) <= chunk) {
                need += cost(&next);
                part.push(next);
            }
            let permit = self
                .permits
                .clone()
                .acquire_many_owned(need.min(self.config.max_queue_texts) as u32)
                .await
                .map_err(|_| WorkerError::Stopped)?;
            out.extend(self.submit(model, part, permit).await?);
        }
        Ok(out)
    }

    async fn submit(
        &self,
        model: &Arc<Backbone>,
        items: Vec<Encoded>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Vec<Vec<f32>>, WorkerError> {
        let (reply, rx) = oneshot::channel();
        metrics::gauge!("sw2s_model_queue_texts").set(self.queued_texts() as f64);
        self.tx
            .send(Job {
                model: model.clone(),
                items,
                reply,
                _permit: permit,
            })
            .map_err(|_| WorkerError::Stopped)?;
        let result = rx.await.map_err(|_| WorkerError::Stopped)?;
        result.map_err(WorkerError::Failed)
    }
}

/// Queue room a text takes: one model pass per window.
fn cost(item: &Encoded) -> usize {
    item.windows().count()
}

fn slots(items: &[Encoded]) -> usize {
    items.iter().map(cost).sum()
}

fn run(rx: mpsc::Receiver<Job>, config: BatchConfig) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(job) = rx.try_recv() {
            jobs.push(job);
        }
        // Jobs for the same weights batch together; others run after.
        while !jobs.is_empty() {
            let model = jobs[0].model.clone();
            let (same, rest): (Vec<Job>, Vec<Job>) = jobs
                .into_iter()
                .partition(|j| Arc::ptr_eq(&j.model, &model));
            jobs = rest;
            run_group(&model, same, &config);
        }
    }
    tracing::info!("model worker stopped");
}

/// Whether a job's caller has gone (its request timed out or was dropped): its texts are
/// not worth the model's time.
fn abandoned(job: &Job) -> bool {
    job.reply.is_closed()
}

fn run_group(model: &Backbone, mut jobs: Vec<Job>, config: &BatchConfig) {
    let before = jobs.len();
    jobs.retain(|j| !abandoned(j));
    if jobs.len() < before {
        metrics::counter!("sw2s_model_abandoned_total").increment((before - jobs.len()) as u64);
    }
    let mut order: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.items.len()).map(move |i| (j, i)))
        .collect();
    order.sort_by_key(|&(j, i)| jobs[j].items[i].total_len());
    let mut results: Vec<Vec<Option<Vec<f32>>>> =
        jobs.iter().map(|job| vec![None; job.items.len()]).collect();
    let mut failed: Vec<Option<String>> = vec![None; jobs.len()];

    for batch in plan_batches(&order, |&(j, i)| jobs[j].items[i].total_len(), config) {
        // A caller may give up while earlier batches run.
        let batch: Vec<(usize, usize)> = batch
            .iter()
            .copied()
            .filter(|&(j, _)| !abandoned(&jobs[j]))
            .collect();
        if batch.is_empty() {
            continue;
        }
        let items: Vec<&Encoded> = batch.iter().map(|&(j, i)| &jobs[j].items[i]).collect();
        let started = Instant::now();
        match model.embed(&items) {
            Ok(vectors) => {
                for (&(j, i), v) in batch.iter().zip(vectors) {
                    results[j][i] = Some(v);
                }
                metrics::histogram!("sw2s_model_batch_size").record(items.len() as f64);
                metrics::histogram!("sw2s_model_batch_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("sw2s_model_texts_total").increment(items.len() as u64);
            }
            Err(e) => {
                tracing::error!(error = %e, "model batch failed");
                for &(j, _) in &batch {
                    failed[j] = Some(e.to_string());
                }
            }
        }
    }
    for ((job, result), failure) in jobs.into_iter().zip(results).zip(failed) {
        let answer = match failure {
            Some(e) => Err(anyhow::anyhow!("embedding failed: {e}")),
            None => Ok(result.into_iter().map(|v| v.unwrap_or_default()).collect()),
        };
        // Free the queue slots before answering: a caller that sends its next request the
        // moment it has this answer must find them free.
        let Job { reply, _permit, .. } = job;
        drop(_permit);
        let _ = reply.send(answer);
    }
}

/// Cuts length-sorted items into batches under both limits (a single over-long item still
/// forms its own batch).
pub fn plan_batches<'a, T>(
    sorted: &'a [T],
    len: impl Fn(&T) -> usize,
    config: &BatchConfig,
) -> Vec<&'a [T]> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < sorted.len() {
        let mut end = start + 1;
        while end < sorted.len()
            && end - start < config.max_batch_size
            && len(&sorted[end]) * (end - start + 1) <= config.max_batch_tokens
        {
            end += 1;
        }
        batches.push(&sorted[start..end]);
        start = end;
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_both_limits() {
        let lens: Vec<usize> = vec![3, 4, 5, 5, 9, 10, 10, 40, 300];
        let config = BatchConfig {
            max_batch_size: 3,
            max_batch_tokens: 30,
            max_queue_texts: 100,
        };
        let batches = plan_batches(&lens, |l| *l, &config);
        let flat: Vec<usize> = batches.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(flat, lens, "every item exactly once, in order");
        for b in &batches {
            assert!(b.len() <= 3);
            let padded = b.iter().max().unwrap() * b.len();
            assert!(padded <= 30 || b.len() == 1, "{b:?}");
        }
        assert_eq!(batches.last().unwrap(), &[300]);
    }
}
