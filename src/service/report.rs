//! What a task's labels rest on, in one place: which label-changing stages are on and why
//! (with their gold figures), the class prior, how calibrated each side's confidence is,
//! the target-precision threshold and the coverage it leaves, and the live decision mix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::decide::Decider;
use super::{Service, TaskCtx};
use crate::error::Result;
use crate::method::confidence::{CalibrationReport, PrecisionThreshold};
use crate::method::gold::GoldUse;
use crate::method::pik::PikReport;
use crate::method::policy::Selection;
use crate::method::prior::PriorEstimate;
use crate::method::safeguard::{self, Stage, StageMode, StageReport};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SideCalibration {
    /// True when a model trained on gold gives this side's confidence.
    pub trained: bool,
    pub reason: String,
    /// Out of fold on gold, at the last job.
    pub calibration: CalibrationReport,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskReport {
    pub task: String,
    /// The active model version (null before any job: nothing has been checked yet).
    pub model_version: Option<i64>,
    pub examples: i64,
    pub gold: i64,
    /// Which gold labels judged the last job's stage checks and class prior (gold picked for
    /// review trains and calibrates but does not judge while 30 others remain).
    pub gold_use: Option<GoldUse>,
    /// Current decisions by source.
    pub decisions: BTreeMap<String, i64>,
    /// Share of examples whose current decision carries a label (gold, strong, weak_refined).
    pub coverage: f64,
    /// The source model, graph smoothing and strong selection: on or off, and why.
    pub stages: Vec<StageReport>,
    /// The class prior smoothing balances towards.
    pub prior: Option<PriorEstimate>,
    pub selection: Selection,
    pub tau: f32,
    pub target_precision: Option<PrecisionThreshold>,
    /// The training threshold fitted at the last job for `train_precision`: decisions less
    /// confident than it are handed out but do not train the next model.
    pub train_precision: Option<PrecisionThreshold>,
    /// The decisions' confidence on gold at the last job (out of fold).
    pub decision_calibration: Option<CalibrationReport>,
    pub strong_confidence: Option<PikReport>,
    pub weak_confidence: Option<SideCalibration>,
}

impl Service {
    pub async fn report(&self, task_name: &str) -> Result<TaskReport> {
        let task = self.task(task_name).await?;
        let pool = self.store.pool();
        let counts = crate::store::tasks::counts(pool, task.id).await?;
        let decisions: BTreeMap<String, i64> =
            crate::store::decisions::current_counts(pool, task.id)
                .await?
                .into_iter()
                .map(|c| (c.source, c.n))
                .collect();
        self.report_for(&task, counts.examples, counts.gold, decisions)
            .await
    }

    /// The report from counts the caller already has (the dashboard's task view).
    pub async fn report_for(
        &self,
        task: &TaskCtx,
        examples: i64,
        gold: i64,
        decisions: BTreeMap<String, i64>,
    ) -> Result<TaskReport> {
        let labelled: i64 = ["gold", "strong", "weak_refined"]
            .iter()
            .filter_map(|s| decisions.get(*s))
            .sum();
        let version = self.active_version(task).await?;
        let decider = Decider::new(task, version.as_deref());
        let s = &task.settings;
        let pipeline = decider.pipeline;
        let stages = match pipeline {
            Some(p) => vec![
                p.source_model.stage.clone(),
                p.smoothing.clone(),
                p.policy.strong.clone(),
                p.decision_targets.clone(),
            ],
            None => {
                let unchecked = |stage: Stage, mode: StageMode, what: &str| {
                    let mut r = safeguard::unavailable(
                        stage,
                        mode,
                        &format!("{what} (no job has checked it on gold yet)"),
                    );
                    r.on = mode == StageMode::On;
                    r
                };
                vec![
                    unchecked(
                        Stage::SourceModel,
                        StageMode::Off,
                        "off until a job fits it: the confidence-weighted mean is used",
                    ),
                    unchecked(
                        Stage::Smoothing,
                        s.smoothing,
                        if s.smoothing == StageMode::On {
                            "on by setting"
                        } else {
                            "bypassed"
                        },
                    ),
                    unchecked(
                        Stage::Strong,
                        s.strong,
                        if s.strong == StageMode::On {
                            "on by setting"
                        } else {
                            "no strong model yet"
                        },
                    ),
                ]
            }
        };
        Ok(TaskReport {
            task: task.name.clone(),
            model_version: version.as_ref().map(|v| v.version),
            examples,
            gold,
            coverage: labelled as f64 / examples.max(1) as f64,
            decisions,
            stages,
            gold_use: pipeline.and_then(|p| p.gold.clone()),
            prior: pipeline.map(|p| p.prior.clone()),
            selection: pipeline.map_or(s.selection, |p| p.policy.selection),
            tau: decider.rule.tau,
            target_precision: pipeline.and_then(|p| p.policy.target.clone()),
            train_precision: pipeline
                .filter(|_| s.train_precision.is_some())
                .and_then(|p| p.policy.train.clone()),
            decision_calibration: pipeline.map(|p| p.policy.decisions.clone()),
            strong_confidence: version.as_ref().and_then(|v| {
                v.manifest
                    .metrics
                    .get("pik")
                    .and_then(|p| serde_json::from_value(p.clone()).ok())
            }),
            weak_confidence: pipeline.map(|p| SideCalibration {
                trained: p.trust.is_some(),
                reason: p.trust_reason.clone(),
                calibration: p.trust_report.clone(),
            }),
        })
    }
}
