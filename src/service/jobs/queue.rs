//! The job queue: requests, enqueue / cancel / retry, the schedule, reaping jobs whose
//! process died, claiming, the heartbeat and recording how a job ended.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{CreateJob, JobKind, JobList, JobState, JobView, Progress, Trigger};
use crate::error::{Error, Result};
use crate::service::settings::JobMode;
use crate::service::{Service, TaskCtx};
use crate::store::jobs::{self, JobRow};
use crate::store::{is_unique_violation, now_ms, WriteTx};

/// A job to queue: what it does, why, and its parameters.
pub(crate) struct JobRequest {
    pub kind: JobKind,
    pub trigger: Trigger,
    pub params: Value,
    /// The failed or cancelled job this one re-runs.
    pub retry_of: Option<i64>,
}

impl JobRequest {
    pub fn new(kind: JobKind, trigger: Trigger) -> Self {
        JobRequest {
            kind,
            trigger,
            params: json!({}),
            retry_of: None,
        }
    }

    pub fn with_params(self, params: Value) -> Self {
        JobRequest { params, ..self }
    }
}

/// What a finished job recorded.
pub(super) struct Finished {
    pub metrics: Value,
    /// The version the job published or activated (none: it re-embedded for a setting).
    pub version_id: Option<i64>,
}

impl Service {
    /// `full` jobs fine-tune the encoder, which only the project's own BERT can do: on a
    /// quantized decoder LM they are refused (422), as a job request or as a task setting.
    pub fn check_job_mode(&self, mode: JobMode) -> Result<()> {
        if mode == JobMode::Full && !self.model.info.trainable() {
            return Err(Error::invalid(
                "model_not_trainable",
                format!(
                    "`full` jobs fine-tune the encoder, and the served model ({}, {} {}) cannot be \
                     trained here: quantized decoder LMs serve `head` jobs only (linear heads and \
                     P(IK) on their hidden states). Use mode `head`, or serve a BERT-family model",
                    self.model.info.model_id, self.model.info.family, self.model.info.dtype
                ),
            ));
        }
        Ok(())
    }

    pub async fn create_job(&self, task_name: &str, req: CreateJob) -> Result<JobView> {
        let task = self.task(task_name).await?;
        let kind = JobKind::from(req.mode.unwrap_or(task.settings.job_mode));
        let row = self
            .enqueue_job(&task, JobRequest::new(kind, Trigger::Request))
            .await?;
        Ok(self.job_view(&task, row))
    }

    /// Queues a job; 409 with the active job when the task already has one.
    pub(crate) async fn enqueue_job(&self, task: &TaskCtx, req: JobRequest) -> Result<JobRow> {
        if req.kind == JobKind::Full {
            self.check_job_mode(JobMode::Full)?;
        }
        let tx = self.store.begin_write().await?;
        self.enqueue_job_in(tx, task, req).await
    }

    /// Queues a job as the last write of `tx` and commits it, so what `tx` wrote before is
    /// saved only with the job; on 409 (the task already has one, named in the error) `tx`
    /// is rolled back. The job mode is the caller's to check.
    pub(crate) async fn enqueue_job_in(
        &self,
        mut tx: WriteTx,
        task: &TaskCtx,
        req: JobRequest,
    ) -> Result<JobRow> {
        let (kind, trigger) = (req.kind, req.trigger);
        let inserted = jobs::insert(
            tx.conn(),
            task.id,
            kind.as_str(),
            trigger.as_str(),
            &req.params.to_string(),
            req.retry_of,
            now_ms(),
        )
        .await;
        match inserted {
            Ok(row) => {
                tx.commit().await?;
                tracing::info!(task = %task.name, job = row.id, mode = kind.as_str(), trigger = trigger.as_str(), "job queued");
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
            mode: JobKind::parse(&row.mode).unwrap_or(JobKind::Head),
            trigger: Trigger::parse(&row.trigger_kind).unwrap_or(Trigger::Request),
            state: JobState::parse(&row.state).unwrap_or(JobState::Failed),
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
        Ok(JobList {
            jobs: self.recent_jobs(task_name, 100).await?,
        })
    }

    /// The task's newest `limit` jobs, newest first.
    pub async fn recent_jobs(&self, task_name: &str, limit: i64) -> Result<Vec<JobView>> {
        let task = self.task(task_name).await?;
        let rows = jobs::list(self.store.pool(), task.id, limit).await?;
        Ok(rows.into_iter().map(|r| self.job_view(&task, r)).collect())
    }

    pub async fn cancel_job(&self, task_name: &str, id: i64) -> Result<JobView> {
        let task = self.task(task_name).await?;
        let view = self.job_view(&task, self.job_row(&task, id).await?);
        if !view.state.is_active() {
            return Err(Error::conflict(
                "job_finished",
                format!("job {id} is already {}", view.state.as_str()),
            ));
        }
        jobs::request_cancel(self.store.pool(), id, now_ms()).await?;
        Ok(self.job_view(&task, self.job_row(&task, id).await?))
    }

    pub async fn retry_job(&self, task_name: &str, id: i64) -> Result<JobView> {
        let task = self.task(task_name).await?;
        let row = self.job_row(&task, id).await?;
        let view = self.job_view(&task, row.clone());
        if !matches!(view.state, JobState::Failed | JobState::Cancelled) {
            return Err(Error::conflict(
                "job_not_retryable",
                format!(
                    "job {id} is {}; only failed or cancelled jobs are re-run",
                    view.state.as_str()
                ),
            ));
        }
        let params: Value = serde_json::from_str(&row.params).unwrap_or(json!({}));
        let new = self
            .enqueue_job(
                &task,
                JobRequest {
                    retry_of: Some(id),
                    ..JobRequest::new(view.mode, Trigger::Retry).with_params(params)
                },
            )
            .await?;
        Ok(self.job_view(&task, new))
    }

    /// Starts jobs whose trigger is due: N new examples, N new gold labels, or the schedule.
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
            let due_gold = match s.job_every_new_gold {
                Some(n) => {
                    let since = jobs::last_created_at(self.store.pool(), task.id)
                        .await?
                        .unwrap_or(0);
                    crate::store::examples::gold_since(self.store.pool(), task.id, since).await?
                        >= n as i64
                }
                None => false,
            };
            let trigger = if due_new {
                Trigger::NewExamples
            } else if due_gold {
                Trigger::NewGold
            } else if due_schedule {
                Trigger::Schedule
            } else {
                continue;
            };
            match self
                .enqueue_job(&task, JobRequest::new(s.job_mode.into(), trigger))
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
                        Ok(true) => progress.request_cancel(),
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
        let _ = std::fs::remove_dir_all(crate::model::manifest::staging_dir(
            &self.data_dir,
            job.task_id,
            job.id,
        ));
        let (state, metrics, error, version_id) = match outcome {
            Ok(done) => (
                JobState::Succeeded,
                Some(done.metrics.to_string()),
                None,
                done.version_id,
            ),
            Err(Error::Cancelled) => (
                JobState::Cancelled,
                None,
                Some("cancelled on request".to_string()),
                None,
            ),
            Err(e) => (JobState::Failed, None, Some(e.to_string()), None),
        };
        // The last progress (and the whole loss curve) stays with the finished job.
        progress.set(json!({"stage": state.as_str()}));
        let last_progress = progress.snapshot();
        let mut tx = self.store.begin_write().await?;
        jobs::finish(
            tx.conn(),
            job.id,
            jobs::Finished {
                state: state.as_str(),
                progress: &last_progress,
                metrics: metrics.as_deref(),
                error: error.as_deref(),
                model_version_id: version_id,
            },
            now_ms(),
        )
        .await?;
        tx.commit().await?;
        metrics::counter!("sw2s_jobs_total", "state" => state.as_str()).increment(1);
        metrics::histogram!("sw2s_job_seconds").record(started.elapsed().as_secs_f64());
        match &error {
            Some(e) if state == JobState::Failed => {
                tracing::error!(job = job.id, error = %e, "job failed")
            }
            _ => tracing::info!(
                job = job.id,
                state = state.as_str(),
                seconds = started.elapsed().as_secs_f64(),
                "job finished"
            ),
        }
        Ok(true)
    }

    async fn execute(self: &Arc<Self>, job: &JobRow, progress: &Arc<Progress>) -> Result<Finished> {
        let task = self
            .task_by_id(job.task_id)
            .await?
            .ok_or_else(|| Error::not_found("the job's task was deleted"))?;
        {
            let mut tx = self.store.begin_write().await?;
            crate::store::tasks::reset_examples_since_job(tx.conn(), task.id).await?;
            tx.commit().await?;
        }
        match JobKind::parse(&job.mode) {
            Some(JobKind::Head) => {
                self.run_train_job(
                    &task,
                    job,
                    progress,
                    crate::service::settings::JobMode::Head,
                )
                .await
            }
            Some(JobKind::Full) => {
                self.run_train_job(
                    &task,
                    job,
                    progress,
                    crate::service::settings::JobMode::Full,
                )
                .await
            }
            Some(JobKind::Reembed) => self.run_reembed_job(&task, job, progress).await,
            None => Err(Error::Internal(anyhow::anyhow!(
                "unknown job mode {:?}",
                job.mode
            ))),
        }
    }
}
