//! Tasks: create, read, change settings, delete.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::jobs::{JobKind, JobRequest, Trigger};
use super::{Service, TaskCtx, TaskSettings};
use crate::error::{Error, Result};
use crate::store::{examples, is_unique_violation, now_ms, tasks};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTask {
    /// 1–64 characters: ASCII letters, digits, `-`, `_`, `.`, starting with a letter or digit.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )]
    pub name: String,
    /// The label set, 2–1000 distinct names (each 1–200 characters, not blank, no control
    /// characters), in a fixed order.
    #[schema(min_items = 2, max_items = 1000)]
    pub labels: Vec<String>,
    /// Any subset of the settings; the rest take their defaults.
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTask {
    /// Settings to change; the others keep their values.
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub name: String,
    pub labels: Vec<String>,
    pub settings: TaskSettings,
    pub created_at: i64,
    /// The version serving predictions; null until a job has trained one.
    pub active_model_version: Option<i64>,
    pub graph_version: i64,
    pub examples: i64,
    pub gold_examples: i64,
    /// Examples whose decision is being recomputed (new inputs, a new model version).
    pub pending: i64,
    /// Current decisions by source (`undecided` for examples not settled yet).
    pub decisions: BTreeMap<String, i64>,
    /// The job this request queued: a change of `long_texts` re-embeds the task's texts
    /// that are over the model's window. Only in the answer to that change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<super::jobs::JobView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
}

/// Applies a partial settings object over `base`; unknown or out-of-range fields are 422.
fn merge_settings(base: &TaskSettings, patch: Option<&serde_json::Value>) -> Result<TaskSettings> {
    let mut value = serde_json::to_value(base).map_err(|e| Error::Internal(e.into()))?;
    if let Some(patch) = patch {
        let serde_json::Value::Object(patch) = patch else {
            return Err(Error::invalid(
                "invalid_settings",
                "settings must be an object",
            ));
        };
        merge_json(&mut value, patch);
    }
    let settings: TaskSettings = serde_json::from_value(value)
        .map_err(|e| Error::invalid("invalid_settings", format!("settings: {e}")))?;
    settings
        .validate()
        .map_err(|e| Error::invalid("invalid_settings", format!("settings: {e}")))?;
    Ok(settings)
}

fn merge_json(target: &mut serde_json::Value, patch: &serde_json::Map<String, serde_json::Value>) {
    let serde_json::Value::Object(target) = target else {
        return;
    };
    for (k, v) in patch {
        match (target.get_mut(k), v) {
            (Some(t @ serde_json::Value::Object(_)), serde_json::Value::Object(p)) => {
                merge_json(t, p)
            }
            _ => {
                target.insert(k.clone(), v.clone());
            }
        }
    }
}

impl Service {
    pub async fn create_task(&self, req: CreateTask) -> Result<TaskView> {
        super::validation::task_name(&req.name)?;
        super::validation::labels(&req.labels)?;
        let settings = merge_settings(&TaskSettings::default(), req.settings.as_ref())?;
        self.check_job_mode(settings.job_mode)?;
        let labels = serde_json::to_string(&req.labels).map_err(|e| Error::Internal(e.into()))?;
        let settings_json =
            serde_json::to_string(&settings).map_err(|e| Error::Internal(e.into()))?;
        let mut tx = self.store.begin_write().await?;
        let row = match tasks::insert(tx.conn(), &req.name, &labels, &settings_json, now_ms()).await
        {
            Ok(row) => row,
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::conflict(
                    "task_exists",
                    format!("a task named {:?} already exists", req.name),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        // A task of this id may have left files behind (ids are not reused, but be safe).
        self.forget_graph(row.id, true);
        self.task_view(TaskCtx::from_row(row)?).await
    }

    pub async fn task_view(&self, task: TaskCtx) -> Result<TaskView> {
        let counts = tasks::counts(self.store.pool(), task.id).await?;
        let decisions = crate::store::decisions::current_counts(self.store.pool(), task.id)
            .await?
            .into_iter()
            .map(|c| (c.source, c.n))
            .collect();
        let active_model_version = match task.active_version_id {
            Some(id) => crate::store::models::by_id(self.store.pool(), id)
                .await?
                .map(|v| v.version),
            None => None,
        };
        Ok(TaskView {
            name: task.name,
            labels: task.labels,
            settings: task.settings,
            created_at: task.created_at,
            active_model_version,
            graph_version: task.graph_version,
            examples: counts.examples,
            gold_examples: counts.gold,
            pending: counts.pending,
            decisions,
            job: None,
        })
    }

    pub async fn list_tasks(&self) -> Result<TaskList> {
        let mut out = Vec::new();
        for row in tasks::list(self.store.pool()).await? {
            out.push(self.task_view(TaskCtx::from_row(row)?).await?);
        }
        Ok(TaskList { tasks: out })
    }

    pub async fn get_task(&self, name: &str) -> Result<TaskView> {
        let task = self.task(name).await?;
        self.task_view(task).await
    }

    /// Carried out on a task of its own: a PATCH once received is applied in full (the
    /// setting and the re-decision it owes) whether or not its client waits for the answer.
    pub async fn update_task(self: &Arc<Self>, name: &str, req: UpdateTask) -> Result<TaskView> {
        let (service, name) = (self.clone(), name.to_string());
        super::detached(async move { service.apply_update(&name, req).await }).await
    }

    async fn apply_update(&self, name: &str, req: UpdateTask) -> Result<TaskView> {
        let task = self.task(name).await?;
        let settings = merge_settings(&task.settings, Some(&req.settings))?;
        self.check_job_mode(settings.job_mode)?;
        let json = serde_json::to_string(&settings).map_err(|e| Error::Internal(e.into()))?;
        // Stored embeddings of long texts follow `long_texts`: a change queues their
        // re-embedding in the same transaction, so it is saved only with its job (409 while
        // another job holds the task).
        let reembed = settings.long_texts != task.settings.long_texts;
        let redecide = decision_setting_changed(&task.settings, &settings);
        // Held from before the mark below until the re-decision ends (the sweep leaves the
        // task to it).
        let held = redecide.map(|_| self.rescoring.start(task.id));
        let mut tx = self.store.begin_write().await?;
        tasks::update_settings(tx.conn(), task.id, &json, now_ms()).await?;
        // Committed with the setting: should the process die before every example is decided
        // again below, the recovery sweep decides the rest.
        if redecide.is_some() {
            examples::mark_task_dirty(tx.conn(), task.id).await?;
        }
        let job = if reembed {
            let params = serde_json::json!({ "long_texts": settings.long_texts });
            Some(
                self.enqueue_job_in(
                    tx,
                    &task,
                    JobRequest::new(JobKind::Reembed, Trigger::Settings).with_params(params),
                )
                .await?,
            )
        } else {
            tx.commit().await?;
            None
        };
        let updated = self.task(name).await?;
        // Settings the decision rule reads change decisions now (a new target precision's
        // threshold is fitted at the next job; null stops abstaining at once); graph settings
        // apply at the next graph update.
        if let Some(what) = redecide {
            self.rescore_task(&updated, &format!("{what} changed"), &mut |_, _| {})
                .await?;
        }
        drop(held);
        let job = job.map(|row| self.job_view(&updated, row));
        Ok(TaskView {
            job,
            ..self.task_view(updated).await?
        })
    }

    /// On a task of its own, like a PATCH: once the rows are gone, the task's graph and
    /// model files go too, whether or not the client waits.
    pub async fn delete_task(self: &Arc<Self>, name: &str) -> Result<()> {
        let (service, name) = (self.clone(), name.to_string());
        super::detached(async move { service.remove_task(&name).await }).await
    }

    async fn remove_task(&self, name: &str) -> Result<()> {
        let task = self.task(name).await?;
        let mut tx = self.store.begin_task_write(task.id).await?;
        tasks::delete(tx.conn(), task.id).await?;
        tx.commit().await?;
        self.forget_graph(task.id, true);
        let _ = std::fs::remove_dir_all(
            self.data_dir
                .join("versions")
                .join(format!("task-{}", task.id)),
        );
        Ok(())
    }
}

/// The first setting the decision rule reads that differs between `old` and `new`.
fn decision_setting_changed(old: &TaskSettings, new: &TaskSettings) -> Option<&'static str> {
    [
        ("tau", old.tau != new.tau),
        ("strong", old.strong != new.strong),
        ("smoothing", old.smoothing != new.smoothing),
        // A new target's threshold is fitted at the next job; dropping it stops abstaining.
        (
            "target_precision",
            old.target_precision.is_some() && new.target_precision.is_none(),
        ),
    ]
    .into_iter()
    .find_map(|(name, changed)| changed.then_some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_are_checked() {
        assert!(crate::service::validation::task_name("sst2-v1.0_b").is_ok());
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "has space",
            "ü",
            &"x".repeat(65),
        ] {
            assert!(
                crate::service::validation::task_name(bad).is_err(),
                "{bad:?}"
            );
        }
        assert!(crate::service::validation::labels(&["a".into(), "b".into()]).is_ok());
        assert!(crate::service::validation::labels(&["a".into()]).is_err());
        assert!(crate::service::validation::labels(&["a".into(), "a".into()]).is_err());
        assert!(crate::service::validation::labels(&["a".into(), " ".into()]).is_err());
        assert!(crate::service::validation::labels(&["a".into(), "b\u{7}".into()]).is_err());
    }

    #[test]
    fn settings_merge_keeps_unmentioned_fields() {
        let base = TaskSettings {
            knn_k: 7,
            ..Default::default()
        };
        let merged = merge_settings(
            &base,
            Some(&serde_json::json!({"alpha": 0.3, "train": {"epochs": 5}})),
        )
        .unwrap();
        assert_eq!(merged.knn_k, 7);
        assert_eq!(merged.alpha, 0.3);
        assert_eq!(merged.train.epochs, 5);
        assert_eq!(merged.train.lr, base.train.lr);
        let err = merge_settings(&base, Some(&serde_json::json!({"knn_k": 0}))).unwrap_err();
        assert_eq!(err.code(), "invalid_settings");
        let err = merge_settings(&base, Some(&serde_json::json!({"bogus": true}))).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn settings_the_rule_reads_are_told_apart_from_the_rest() {
        let base = TaskSettings::default();
        let with = |v: serde_json::Value| merge_settings(&base, Some(&v)).unwrap();
        assert_eq!(decision_setting_changed(&base, &base), None);
        // `selection` is fitted into the version's policy: it applies at the next job.
        for unread in [
            serde_json::json!({"knn_k": 5}),
            serde_json::json!({"selection": "tau"}),
        ] {
            assert_eq!(decision_setting_changed(&base, &with(unread)), None);
        }
        for (field, value) in [
            ("tau", serde_json::json!(0.7)),
            ("strong", serde_json::json!("off")),
            ("smoothing", serde_json::json!("on")),
        ] {
            let changed = with(serde_json::json!({ field: value }));
            assert_eq!(decision_setting_changed(&base, &changed), Some(field));
        }
        let target = with(serde_json::json!({"target_precision": 0.95}));
        assert_eq!(
            decision_setting_changed(&base, &target),
            None,
            "fitted at the next job"
        );
        assert_eq!(
            decision_setting_changed(&target, &base),
            Some("target_precision"),
            "dropped: no more abstaining"
        );
    }
}
