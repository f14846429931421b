//! Publishing a trained version (directory and database, atomically activated), bringing
//! the task's weak aggregates and decisions in line with it, and re-embedding a task for a
//! version with another encoder.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use futures::TryStreamExt;
use serde_json::{json, Value};

use super::queue::Finished;
use super::Progress;
use crate::error::{Error, Result};
use crate::method::heads::Heads;
use crate::method::pik::PikReport;
use crate::method::pipeline::PipelineFit;
use crate::model::encoder::Encoded;
use crate::model::manifest::{
    version_dir, write_version_dir, EncoderRef, Manifest, PikInfo, MANIFEST_FORMAT,
};
use crate::service::settings::JobMode;
use crate::service::{Service, TaskCtx};
use crate::store::jobs::JobRow;
use crate::store::{examples, f32s_to_bytes, keyset_pages, models, now_ms};

const JOB_CHUNK: i64 = 2000;

/// A trained version ready to publish.
pub(super) struct Publish {
    pub mode: JobMode,
    pub heads: Heads,
    pub pik: PikReport,
    pub pipeline: PipelineFit,
    /// Training summary for the manifest.
    pub training: Value,
    pub encoder: EncoderChange,
}

/// The encoder a new version uses.
pub(super) struct EncoderChange {
    /// Relative path of the encoder weights the version uses (None: the base model).
    pub encoder_path: Option<String>,
    /// A fine-tuned encoder file to place in the version directory.
    pub new_encoder: Option<PathBuf>,
    /// New embeddings of every example (a new encoder).
    pub embeddings: Option<HashMap<i64, Vec<f32>>>,
}

impl Service {
    /// Activating a version with another encoder: re-embed everything with it first.
    pub(super) async fn run_reembed_job(
        self: &Arc<Self>,
        task: &TaskCtx,
        job: &JobRow,
        progress: &Arc<Progress>,
    ) -> Result<Finished> {
        let params: Value = serde_json::from_str(&job.params).unwrap_or(json!({}));
        let Some(version_id) = params["version_id"].as_i64() else {
            return self.reembed_long_texts(task, progress).await;
        };
        let version = self.load_version(version_id).await?;
        let embeddings = self.embed_task(task, &version.backbone, progress).await?;
        progress.check()?;
        progress.stage("activating");
        let mut tx = self.store.begin_task_write(task.id).await?;
        write_embeddings(&mut tx, &embeddings, &version.encoder_id).await?;
        crate::store::tasks::set_active_version(tx.conn(), task.id, Some(version_id), now_ms())
            .await?;
        examples::mark_task_dirty(tx.conn(), task.id).await?;
        tx.commit().await?;
        self.forget_graph(task.id, true);
        let changed = self.rescore_after_publish(task, progress).await;
        Ok(Finished {
            metrics: json!({ "model_version": version.version, "changed_decisions": changed, "reembedded": embeddings.len() }),
            version_id: Some(version_id),
        })
    }

    /// After a change of the task's `long_texts`: its texts over the model's window are
    /// embedded again, as the setting now says, with the encoder the task uses (texts that
    /// fit embed the same either way), and the task is re-scored on a rebuilt graph.
    async fn reembed_long_texts(
        self: &Arc<Self>,
        task: &TaskCtx,
        progress: &Arc<Progress>,
    ) -> Result<Finished> {
        let (backbone, encoder_id) = self.task_encoder(task).await?;
        let pool = self.store.pool();
        let total = crate::store::tasks::counts(pool, task.id).await?.examples;
        progress.stage("embedding long texts");
        let mut pages = std::pin::pin!(keyset_pages(
            0,
            |r: &examples::TextRow| r.id,
            |a| { examples::texts_page(pool, task.id, a, 256) }
        ));
        let (mut seen, mut embeddings) = (0, HashMap::new());
        while let Some(rows) = pages.try_next().await? {
            progress.check()?;
            seen += rows.len();
            let refs: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
            // Tokenized once, as the setting now says; only the texts over the window go on.
            let encoded = self
                .model
                .tokenizer
                .tokenize(&refs, task.settings.long_texts.overlong())?;
            let (ids, long): (Vec<i64>, Vec<Encoded>) = rows
                .iter()
                .zip(encoded)
                .filter(|(_, e)| e.over_window())
                .map(|(r, e)| (r.id, e))
                .unzip();
            if !long.is_empty() {
                let vectors = self.model.worker.embed(&backbone, long).await?;
                embeddings.extend(ids.into_iter().zip(vectors));
            }
            progress.set(json!({ "done": seen, "total": total, "long_texts": embeddings.len() }));
        }
        progress.check()?;
        if !embeddings.is_empty() {
            progress.stage("storing");
            let mut tx = self.store.begin_task_write(task.id).await?;
            write_embeddings(&mut tx, &embeddings, &encoder_id).await?;
            examples::mark_task_dirty(tx.conn(), task.id).await?;
            tx.commit().await?;
            self.forget_graph(task.id, true);
        }
        let changed = self.rescore_after_publish(task, progress).await;
        Ok(Finished {
            metrics: json!({
                "long_texts": task.settings.long_texts,
                "reembedded": embeddings.len(),
                "changed_decisions": changed,
            }),
            version_id: None,
        })
    }

    pub(super) async fn texts(&self, ids: &[i64]) -> Result<Vec<String>> {
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
    pub(super) fn tokenize_for_training(
        &self,
        texts: &[String],
        max_tokens: usize,
    ) -> Result<Vec<Encoded>> {
        let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
        let mut encoded = self
            .model
            .tokenizer
            .tokenize(&refs, crate::model::Overlong::Truncate)?;
        encoded.iter_mut().for_each(|e| e.truncate_to(max_tokens));
        Ok(encoded)
    }

    /// A task's stored texts through `model` on the model thread, long ones as the task's
    /// `long_texts` says (stored texts were accepted, so `refuse` does not apply to them).
    pub(super) async fn embed_stored(
        &self,
        task: &TaskCtx,
        model: &Arc<crate::model::Backbone>,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>> {
        let encoded = self
            .model
            .tokenizer
            .tokenize(texts, task.settings.long_texts.overlong())?;
        Ok(self.model.worker.embed(model, encoded).await?)
    }

    /// Embeds every example of the task with `model`, with progress.
    pub(super) async fn embed_task(
        &self,
        task: &TaskCtx,
        model: &Arc<crate::model::Backbone>,
        progress: &Arc<Progress>,
    ) -> Result<HashMap<i64, Vec<f32>>> {
        let total = crate::store::tasks::counts(self.store.pool(), task.id)
            .await?
            .examples;
        let mut out = HashMap::with_capacity(total as usize);
        progress.stage("embedding");
        let pool = self.store.pool();
        let mut pages = std::pin::pin!(keyset_pages(
            0,
            |r: &examples::TextRow| r.id,
            |a| { examples::texts_page(pool, task.id, a, 256) }
        ));
        while let Some(rows) = pages.try_next().await? {
            progress.check()?;
            let refs: Vec<&str> = rows.iter().map(|r| r.text.as_str()).collect();
            let vectors = self.embed_stored(task, model, &refs).await?;
            out.extend(rows.iter().map(|r| r.id).zip(vectors));
            progress.set(json!({ "done": out.len(), "total": total }));
        }
        Ok(out)
    }

    /// Writes the version (directory and database), activates it and marks the task's
    /// examples for re-scoring, in one transaction.
    pub(super) async fn publish(
        &self,
        task: &TaskCtx,
        job: &JobRow,
        publish: Publish,
        progress: &Progress,
    ) -> Result<(i64, i64)> {
        let Publish {
            heads,
            pik,
            pipeline,
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
                features: Some(info.features_id()),
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
            pipeline: Some(serde_json::to_value(pipeline).map_err(|e| Error::Internal(e.into()))?),
        };
        let bytes = heads.to_safetensors()?;
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
                manifest.encoder.weights_sha256 = Some(crate::fsio::sha256_file(file)?);
                Some(rel(&dir.join("encoder.safetensors")))
            }
            None => change.encoder_path.clone(),
        };
        let extra: Vec<(&str, &std::path::Path)> = change
            .new_encoder
            .iter()
            .map(|f| ("encoder.safetensors", f.as_path()))
            .collect();
        write_version_dir(&dir, &manifest, &bytes, &extra)?;
        let manifest_json =
            serde_json::to_string(&manifest).map_err(|e| Error::Internal(e.into()))?;
        models::set_manifest(tx.conn(), version_id, &manifest_json).await?;
        if let Some(path) = &encoder_path {
            models::set_encoder_path(tx.conn(), version_id, path).await?;
        }
        if let (Some(embeddings), Some(path)) = (&change.embeddings, &encoder_path) {
            write_embeddings(
                &mut tx,
                embeddings,
                &crate::service::version_cache::fine_tuned_encoder_id(path),
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
    pub(super) async fn rescore_after_publish(
        &self,
        task: &TaskCtx,
        progress: &Progress,
    ) -> Option<usize> {
        // Held so that the recovery sweep does not decide the marked examples alongside this
        // pass (twice the work, the first time with the previous aggregates).
        let _held = self.rescoring.start(task.id);
        progress.stage("refreshing weak aggregates");
        if let Err(e) = self.refresh_aggregates(task).await {
            tracing::warn!(task = %task.name, error = %e, "recomputing weak aggregates for the new version failed; decisions use the previous ones until the next job");
        }
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
        let pool = self.store.pool();
        let mut pages = std::pin::pin!(keyset_pages(
            0,
            |id: &i64| *id,
            |a| { examples::dirty_ids(pool, task.id, a, 500, i64::MAX) }
        ));
        while let Some(ids) = pages.try_next().await? {
            let report = self.settle(&task, &ids, "new model version").await?;
            changed += report.decisions.iter().filter(|d| d.changed).count();
            done += ids.len();
            progress.set(json!({ "done": done, "total": total }));
        }
        Ok(changed)
    }
}

pub(super) async fn write_embeddings(
    tx: &mut crate::store::WriteTx,
    embeddings: &HashMap<i64, Vec<f32>>,
    encoder_id: &str,
) -> Result<()> {
    for (id, v) in embeddings {
        examples::set_embedding(tx.conn(), *id, &f32s_to_bytes(v), encoder_id).await?;
    }
    Ok(())
}
