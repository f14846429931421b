//! Selective fine-tuning jobs. Jobs are rows in the database: one queued or running job per
//! task (a unique index is the lock, across processes), claimed by any process that runs
//! jobs, kept alive by heartbeats that carry progress and bring back cancel requests.
//!
//! - `queue`: requests, enqueue / cancel / retry / schedule / reap, claiming, heartbeat,
//!   finishing;
//! - `data`: what a job reads (examples with their embeddings, labels and weak votes);
//! - `calibrate`: the weak side fitted on gold (source model, class prior, smoothing check,
//!   trust model);
//! - `train`: head training or fine-tuning, P(IK) and the decision policy;
//! - `publish`: writing and activating a version, re-scoring, re-embedding.
//!
//! A successful job publishes a new model version, activates it and re-scores the task; a
//! failed or cancelled one leaves serving untouched.

mod calibrate;
mod data;
mod publish;
mod queue;
mod train;

pub(crate) use queue::JobRequest;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::settings::JobMode;
use crate::error::Error;
use crate::method::training::Cancelled;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// `head` (default: the task's `job_mode`) or `full`.
    pub mode: Option<JobMode>,
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Heads on stored embeddings.
    Head,
    /// Encoder fine-tuning.
    Full,
    /// Re-embedding the task for a version with another encoder, then activating it; or,
    /// after a change of `long_texts`, re-embedding its texts over the model's window.
    Reembed,
}

/// Why a job was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Request,
    NewExamples,
    /// N new gold labels (annotations from a tool such as Label Studio).
    NewGold,
    Schedule,
    Activate,
    Retry,
    /// A settings change (`long_texts`).
    Settings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// The text form each of these enums has in the database.
macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(<$t>::$v),)+ _ => None }
            }
        }
    };
}

text_enum!(JobKind { Head => "head", Full => "full", Reembed => "reembed" });
text_enum!(Trigger {
    Request => "request",
    NewExamples => "new_examples",
    NewGold => "new_gold",
    Schedule => "schedule",
    Activate => "activate",
    Retry => "retry",
    Settings => "settings",
});
text_enum!(JobState {
    Queued => "queued",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
});

impl From<JobMode> for JobKind {
    fn from(m: JobMode) -> Self {
        match m {
            JobMode::Head => JobKind::Head,
            JobMode::Full => JobKind::Full,
        }
    }
}

impl JobState {
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: i64,
    pub task: String,
    pub mode: JobKind,
    pub trigger: Trigger,
    pub state: JobState,
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

const LOSS_CURVE_POINTS: usize = 400;

/// Shared between the job's compute thread and its heartbeat.
#[derive(Default)]
pub struct Progress {
    value: Mutex<serde_json::Map<String, Value>>,
    cancel: AtomicBool,
}

impl Progress {
    /// Merges the fields; a `loss` is also appended to `loss_curve` (what the dashboard draws),
    /// thinned to every other point when it reaches `LOSS_CURVE_POINTS`.
    pub fn set(&self, fields: Value) {
        if let (Ok(mut map), Value::Object(fields)) = (self.value.lock(), fields) {
            if let Some(loss) = fields.get("loss").filter(|l| l.is_number()) {
                let point = json!({
                    "stage": map.get("stage"),
                    "epoch": fields.get("epoch"),
                    "step": fields.get("step"),
                    "loss": loss,
                    "val_loss": fields.get("val_loss"),
                });
                let curve = map.entry("loss_curve").or_insert_with(|| json!([]));
                if let Value::Array(points) = curve {
                    if points.len() >= LOSS_CURVE_POINTS {
                        *points = points.iter().step_by(2).cloned().collect();
                    }
                    points.push(point);
                }
            }
            map.extend(fields);
        }
    }

    /// A new stage: the fields of the last one go, the loss curve stays.
    pub fn stage(&self, stage: &str) {
        if let Ok(mut map) = self.value.lock() {
            let curve = map.remove("loss_curve");
            map.clear();
            map.insert("stage".into(), json!(stage));
            if let Some(curve) = curve {
                map.insert("loss_curve".into(), curve);
            }
        }
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    fn request_cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    fn snapshot(&self) -> String {
        self.value
            .lock()
            .map(|m| Value::Object(m.clone()).to_string())
            .unwrap_or_else(|_| "{}".into())
    }

    fn check(&self) -> crate::error::Result<()> {
        if self.cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// Training code reports cancellation as `method::training::Cancelled` inside an
/// `anyhow::Error`; here, at the edge of the job, it becomes `Error::Cancelled`.
fn job_error(e: anyhow::Error) -> Error {
    if e.is::<Cancelled>() {
        Error::Cancelled
    } else {
        Error::Internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_make_a_curve_that_survives_stages_and_stays_short() {
        let p = Progress::default();
        p.stage("training");
        for step in 0..(LOSS_CURVE_POINTS + 10) {
            p.set(json!({"epoch": 0, "step": step, "loss": 1.0 / (step + 1) as f64}));
        }
        p.set(json!({"done": 3}));
        p.stage("publishing");
        let v: Value = serde_json::from_str(&p.snapshot()).unwrap();
        assert_eq!(v["stage"], "publishing");
        assert!(v.get("done").is_none(), "{v}");
        let curve = v["loss_curve"].as_array().unwrap();
        assert!(curve.len() <= LOSS_CURVE_POINTS, "{}", curve.len());
        assert!(curve.len() > LOSS_CURVE_POINTS / 2);
        assert_eq!(curve[0]["step"], 0);
        assert_eq!(curve[0]["stage"], "training");
        assert_eq!(
            curve.last().unwrap()["step"],
            LOSS_CURVE_POINTS + 9,
            "the newest point is kept"
        );
    }
}
