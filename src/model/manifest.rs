//! Model versions: a directory of safetensors files plus `manifest.json`, written under a
//! temporary name and renamed into place, so a reader never sees half a version. The same
//! heads and manifest are stored in the database, which is what serving reads.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EncoderRef {
    /// The base model, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    pub id: String,
    /// sha256 of the base model's `model.safetensors`.
    pub sha256: String,
    pub dims: usize,
    /// True for `full` jobs: the version carries its own encoder weights.
    pub fine_tuned: bool,
    /// sha256 of the fine-tuned `encoder.safetensors`, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
    /// What identifies the base features the heads were trained on: the weights' sha256, with
    /// `:mean` for a mean-pooled decoder. Absent in older manifests (then the sha256 alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
}

impl EncoderRef {
    /// Whether this version was made on the base model (and pooling) `info` describes: its
    /// heads read that model's features and nothing else's.
    pub fn made_on(&self, info: &crate::model::ModelInfo) -> bool {
        self.sha256 == info.sha256
            && self.features.as_deref().unwrap_or(&self.sha256) == info.features_id()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PikInfo {
    /// `trained`: a P(IK) head trained on gold labels; `msp`: too few gold labels, the
    /// classifier's maximum softmax probability stands in (see README, "P(IK) fallback").
    pub source: String,
    /// Why this source was chosen.
    pub reason: String,
    /// Selection threshold τ.
    pub tau: f64,
    /// `fixed` (task setting) or `fitted` (on held-out gold).
    pub tau_source: String,
    pub gold_examples: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Manifest {
    pub format: u32,
    pub task: String,
    pub version: i64,
    pub labels: Vec<String>,
    pub encoder: EncoderRef,
    /// `head` or `full`.
    pub mode: String,
    pub job_id: Option<i64>,
    pub created_at: i64,
    pub pik: PikInfo,
    /// Evaluation on held-out data (accuracy, P(IK) AUROC / ECE / Brier, …).
    #[schema(value_type = Object)]
    pub metrics: Value,
    /// Training settings and curve summary.
    #[schema(value_type = Object)]
    pub training: Value,
    /// The task's decision pipeline fitted on gold at this job (stages on/off and why, the
    /// class prior, the source model, the trust model, the decision policy); read by the
    /// service. Absent in versions made before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub pipeline: Option<Value>,
}

pub const MANIFEST_FORMAT: u32 = 1;

/// `DATA_DIR/versions/task-<id>/v<version>`.
pub fn version_dir(data_dir: &Path, task_id: i64, version: i64) -> PathBuf {
    data_dir
        .join("versions")
        .join(format!("task-{task_id}"))
        .join(format!("v{version}"))
}

/// Where a running job stages its files (a fine-tuned encoder) before they become a
/// version: `DATA_DIR/versions/task-<id>/.job-<job>`, removed when the job ends.
pub fn staging_dir(data_dir: &Path, task_id: i64, job_id: i64) -> PathBuf {
    data_dir
        .join("versions")
        .join(format!("task-{task_id}"))
        .join(format!(".job-{job_id}"))
}

/// Writes `heads.safetensors`, `manifest.json` and any extra files (a fine-tuned encoder) to
/// a temporary directory beside the target, syncs them and renames the directory into place.
pub fn write_version_dir(
    dir: &Path,
    manifest: &Manifest,
    heads: &[u8],
    extra: &[(&str, &Path)],
) -> anyhow::Result<()> {
    let parent = dir.parent().context("version dir has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)?;
    crate::fsio::write_synced(&staging.path().join("heads.safetensors"), heads)?;
    crate::fsio::write_synced(
        &staging.path().join("manifest.json"),
        serde_json::to_string_pretty(manifest)?.as_bytes(),
    )?;
    for (name, source) in extra {
        let target = staging.path().join(name);
        if std::fs::hard_link(source, &target).is_err() {
            std::fs::copy(source, &target)
                .with_context(|| format!("copying {}", source.display()))?;
        }
        std::fs::File::open(&target)?.sync_all()?;
    }
    let staged = staging.keep();
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&staged, dir).with_context(|| format!("renaming into {}", dir.display()))?;
    crate::fsio::sync_dir(parent);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelInfo;

    fn info(family: &str, pooling: &str) -> ModelInfo {
        ModelInfo {
            model_id: "m".into(),
            dims: 4,
            max_length: 8,
            sha256: "abc".into(),
            layers: 1,
            family: family.into(),
            pooling: pooling.into(),
            dtype: "F32".into(),
            jobs: vec!["head".into()],
        }
    }

    #[test]
    fn a_version_is_served_only_on_the_model_and_pooling_it_was_made_on() {
        let made = |sha: &str, features: Option<&str>| EncoderRef {
            id: "m".into(),
            sha256: sha.into(),
            dims: 4,
            fine_tuned: false,
            weights_sha256: None,
            features: features.map(str::to_string),
        };
        let last = info("llama", "last_token");
        let mean = info("llama", "mean");
        assert_eq!(mean.features_id(), "abc:mean");
        assert_eq!(info("bert", "mean").features_id(), "abc");
        // Manifests written before the features id: the sha256 alone, the default pooling.
        assert!(made("abc", None).made_on(&last));
        assert!(!made("abc", None).made_on(&mean));
        assert!(made("abc", Some("abc:mean")).made_on(&mean));
        assert!(!made("abc", Some("abc:mean")).made_on(&last));
        assert!(!made("other", None).made_on(&last));
        assert!(made("abc", Some("abc")).made_on(&info("bert", "mean")));
    }
}
