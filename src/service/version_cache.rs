//! Loading model versions for serving: heads and manifest from the database, a fine-tuned
//! encoder from the data dir (shared storage when several processes serve one database).

use std::sync::Arc;

use anyhow::Context;

use super::{Service, TaskCtx};
use crate::error::{Error, Result};
use crate::method::heads::Heads;
use crate::method::pipeline::PipelineFit;
use crate::model::manifest::Manifest;
use crate::model::Backbone;

pub struct LoadedVersion {
    pub id: i64,
    pub version: i64,
    pub heads: Heads,
    pub manifest: Manifest,
    /// The decision pipeline fitted with this version (None for versions made before).
    pub pipeline: Option<PipelineFit>,
    pub backbone: Arc<Backbone>,
    /// Stored with the embeddings this version's encoder makes.
    pub encoder_id: String,
    /// False when the version was made on another base model or pooling than this server
    /// runs: its heads would read features they were not trained on, so it is not served.
    pub usable: bool,
    /// The fine-tuned encoder's weights, relative to the data dir (None: the base model).
    pub encoder_path: Option<String>,
}

impl Service {
    pub async fn load_version(&self, version_id: i64) -> Result<Arc<LoadedVersion>> {
        if let Some(v) = self.cached_version(version_id) {
            return Ok(v);
        }
        let row = crate::store::models::by_id(self.store.pool(), version_id)
            .await?
            .ok_or_else(|| {
                Error::not_found(format!("model version id {version_id} does not exist"))
            })?;
        let manifest: Manifest = serde_json::from_str(&row.manifest).map_err(|e| {
            Error::Internal(anyhow::anyhow!(
                "version {version_id} has a corrupt manifest: {e}"
            ))
        })?;
        let heads = Heads::from_safetensors(&row.heads)?;
        let usable = manifest.encoder.made_on(&self.model.info);
        if !usable {
            tracing::warn!(
                version_id,
                made_on = %manifest.encoder.id,
                running = %self.model.info.model_id,
                "model version made on another base model or pooling: not served; the task's next job trains one for this model"
            );
        }
        let (backbone, encoder_id) = match &row.encoder_path {
            Some(rel) if usable => {
                let path = self.data_dir.join(rel);
                let dir = self.model.dir.clone();
                let device = self.model.device.clone();
                let model =
                    tokio::task::spawn_blocking(move || Backbone::fine_tuned(&dir, &path, &device))
                        .await
                        .map_err(|e| Error::Internal(e.into()))?
                        .with_context(|| {
                            format!("loading the fine-tuned encoder of version id {version_id}")
                        })?;
                (Arc::new(model), fine_tuned_encoder_id(rel))
            }
            _ => (self.model.base.clone(), self.model.base_encoder_id()),
        };
        let pipeline = match &manifest.pipeline {
            Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
                Error::Internal(anyhow::anyhow!(
                    "version {version_id} has a corrupt pipeline: {e}"
                ))
            })?),
            None => None,
        };
        let loaded = Arc::new(LoadedVersion {
            id: row.id,
            version: row.version,
            heads,
            pipeline,
            manifest,
            backbone,
            encoder_id,
            encoder_path: row.encoder_path.clone(),
            usable,
        });
        if let Ok(mut cache) = self.versions.lock() {
            // Fine-tuned encoders are ~90 MB each: keep a handful.
            if cache.len() >= 8 {
                cache.clear();
            }
            cache.insert(version_id, loaded.clone());
        }
        Ok(loaded)
    }

    fn cached_version(&self, version_id: i64) -> Option<Arc<LoadedVersion>> {
        self.versions.lock().ok()?.get(&version_id).cloned()
    }

    pub fn forget_versions(&self) {
        if let Ok(mut cache) = self.versions.lock() {
            cache.clear();
        }
    }

    pub async fn active_version(&self, task: &TaskCtx) -> Result<Option<Arc<LoadedVersion>>> {
        match task.active_version_id {
            // A version made on another model is treated as none until a job makes one.
            Some(id) => Ok(Some(self.load_version(id).await?).filter(|v| v.usable)),
            None => Ok(None),
        }
    }

    /// The encoder that embeds this task's texts now, and the id its embeddings carry.
    pub async fn task_encoder(&self, task: &TaskCtx) -> Result<(Arc<Backbone>, String)> {
        match self.active_version(task).await? {
            Some(v) => Ok((v.backbone.clone(), v.encoder_id.clone())),
            None => Ok((self.model.base.clone(), self.model.base_encoder_id())),
        }
    }
}

/// Embeddings carry the encoder that made them: a fine-tuned encoder is named by its file,
/// which every later version built on it shares.
pub fn fine_tuned_encoder_id(rel_path: &str) -> String {
    format!("finetuned:{rel_path}")
}
