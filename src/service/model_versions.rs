//! Model versions of a task: listing and activation (roll back or forward).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::jobs::{JobKind, JobRequest, JobView, Trigger};
use super::Service;
use crate::error::{Error, Result};
use crate::model::manifest::Manifest;
use crate::store::{examples, models, now_ms};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelVersionView {
    pub version: i64,
    pub active: bool,
    pub created_at: i64,
    pub job_id: Option<i64>,
    pub manifest: Manifest,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    pub active_version: Option<i64>,
    pub versions: Vec<ModelVersionView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Activation {
    /// The version serving now (unchanged while a re-embedding job runs).
    pub active_version: Option<i64>,
    /// Set when the version uses another encoder: a job re-embeds the task, then activates it.
    pub job: Option<JobView>,
    pub message: String,
}

impl Service {
    pub async fn list_models(&self, task_name: &str) -> Result<ModelList> {
        let task = self.task(task_name).await?;
        let rows = models::list(self.store.pool(), task.id).await?;
        let mut versions = Vec::with_capacity(rows.len());
        let mut active_version = None;
        for r in rows {
            let manifest: Manifest = serde_json::from_str(&r.manifest).map_err(|e| {
                Error::Internal(anyhow::anyhow!(
                    "version {} has a corrupt manifest: {e}",
                    r.version
                ))
            })?;
            let active = task.active_version_id == Some(r.id);
            if active {
                active_version = Some(r.version);
            }
            versions.push(ModelVersionView {
                version: r.version,
                active,
                created_at: r.created_at,
                job_id: r.job_id,
                manifest,
            });
        }
        Ok(ModelList {
            active_version,
            versions,
        })
    }

    /// Makes `version` the serving version. With the same encoder as now this is immediate
    /// (decisions are re-scored in the background); with another encoder a job re-embeds
    /// the task first.
    ///
    /// On a task of its own (`detached`): once the version is active, the weak aggregates
    /// follow it even if the client hangs up.
    pub async fn activate(
        self: &Arc<Self>,
        task_name: &str,
        version: i64,
    ) -> Result<(bool, Activation)> {
        let (service, task_name) = (self.clone(), task_name.to_string());
        super::detached(async move { service.activate_version(&task_name, version).await }).await
    }

    async fn activate_version(&self, task_name: &str, version: i64) -> Result<(bool, Activation)> {
        let task = self.task(task_name).await?;
        let row = models::by_version(self.store.pool(), task.id, version)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!("task {task_name:?} has no model version {version}"))
            })?;
        let target = self.load_version(row.id).await?;
        if !target.usable {
            let e = &target.manifest.encoder;
            return Err(Error::conflict(
                "version_model_mismatch",
                format!(
                    "version {version} was made on {} (sha256 {}, features {}); this server runs \
                     {} ({}): its heads cannot read these features. Run a job to train a version \
                     for this model",
                    e.id,
                    e.sha256,
                    e.features.as_deref().unwrap_or(&e.sha256),
                    self.model.info.model_id,
                    self.model.info.features_id()
                ),
            ));
        }
        let current = self.active_version(&task).await?.map(|v| v.version);
        if task.active_version_id == Some(row.id) {
            return Ok((
                false,
                Activation {
                    active_version: current,
                    job: None,
                    message: format!("version {version} is already active"),
                },
            ));
        }
        let (_, encoder_now) = self.task_encoder(&task).await?;
        if target.encoder_id != encoder_now {
            let job = self
                .enqueue_job(
                    &task,
                    JobRequest::new(JobKind::Reembed, Trigger::Activate)
                        .with_params(json!({ "version_id": row.id })),
                )
                .await?;
            return Ok((
                true,
                Activation {
                    active_version: current,
                    job: Some(self.job_view(&task, job)),
                    message: format!("version {version} uses another encoder: a job re-embeds the task, then activates it"),
                },
            ));
        }
        // The recovery sweep re-scores the marked examples, once their aggregates follow the
        // new version (not twice, before and after).
        let held = self.rescoring.start(task.id);
        let mut tx = self.store.begin_task_write(task.id).await?;
        crate::store::tasks::set_active_version(tx.conn(), task.id, Some(row.id), now_ms()).await?;
        let dirty = examples::mark_task_dirty(tx.conn(), task.id).await?;
        tx.commit().await?;
        // Its source model may differ: the weak aggregates follow it.
        self.refresh_aggregates(&task).await?;
        drop(held);
        tracing::info!(task = %task.name, version, "model version activated");
        Ok((
            false,
            Activation {
                active_version: Some(version),
                job: None,
                message: format!(
                    "version {version} is active; {dirty} examples are being re-scored"
                ),
            },
        ))
    }
}
