//! A task as a Label Studio ML backend: `setup` remembers which `Choices` control of a
//! project's label config carries the task's labels, `predict` ingests Label Studio's tasks
//! as examples (idempotent by Label Studio task id) and answers their decisions as
//! predictions, `webhook` turns annotations into gold labels and `START_TRAINING` into a job.
//!
//! The score of a prediction is the calibrated probability that its label is right (the
//! decision's confidence), so Label Studio's "sort by prediction score" puts the labels most
//! worth a human look first. An annotation's gold label says how its task was picked from
//! the project's sampling (`picked_by`), so uncertainty sampling's gold does not judge.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::ingest::{IngestRequest, NewExample, WeakLabelIn};
use super::jobs::CreateJob;
use super::{parse_dist, Service, TaskCtx};
use crate::error::{Error, Result};
use crate::method::gold::GoldPicked;
use crate::store::examples::{self, ExampleRow};
use crate::store::label_studio::{self as projects, ProjectRow};
use crate::store::now_ms;

/// The part of a label config sw2s uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoicesControl {
    pub from_name: String,
    pub to_name: String,
    /// The task data field holding the text (`$text` → `text`).
    pub text_field: String,
    pub choices: Vec<String>,
}

/// Finds the `Choices` control whose choices are exactly the task's labels, and the `Text`
/// object it labels. A config without one is a 422 naming what it has.
pub fn parse_label_config(config: &str, labels: &[String]) -> Result<ChoicesControl> {
    let doc = roxmltree::Document::parse(config).map_err(|e| {
        Error::invalid(
            "invalid_label_config",
            format!("the label config is not valid XML: {e}"),
        )
    })?;
    let texts: HashMap<&str, &str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("Text"))
        .filter_map(|n| Some((n.attribute("name")?, n.attribute("value")?)))
        .collect();
    let wanted: BTreeSet<&str> = labels.iter().map(String::as_str).collect();
    let mut seen = Vec::new();
    for control in doc.descendants().filter(|n| n.has_tag_name("Choices")) {
        let (Some(from_name), Some(to_name)) =
            (control.attribute("name"), control.attribute("toName"))
        else {
            continue;
        };
        let choices: Vec<String> = control
            .descendants()
            .filter(|n| n.has_tag_name("Choice"))
            .filter_map(|n| n.attribute("value").or_else(|| n.attribute("alias")))
            .map(String::from)
            .collect();
        let got: BTreeSet<&str> = choices.iter().map(String::as_str).collect();
        if got != wanted {
            seen.push(format!("{from_name}: {choices:?}"));
            continue;
        }
        let Some(value) = texts.get(to_name) else {
            return Err(Error::invalid(
                "label_config_mismatch",
                format!("Choices {from_name:?} labels {to_name:?}, which is not a Text object with a $field value"),
            ));
        };
        return Ok(ChoicesControl {
            from_name: from_name.into(),
            to_name: to_name.into(),
            text_field: value.trim_start_matches('$').into(),
            choices,
        });
    }
    Err(Error::invalid(
        "label_config_mismatch",
        format!(
            "no Choices control of the label config has exactly the task's labels {labels:?} (found: {})",
            if seen.is_empty() { "no Choices".to_string() } else { seen.join("; ") }
        ),
    ))
}

/// Label Studio sends the project as a number or as `"<id>.<timestamp>"`.
fn project_id(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => s
            .split('.')
            .next()
            .filter(|p| !p.is_empty())
            .map(String::from),
        Value::Object(o) => o.get("id").and_then(project_id),
        _ => None,
    }
}

/// The example id of a Label Studio task.
pub fn example_id(ls_task_id: i64) -> String {
    format!("ls-{ls_task_id}")
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LsSetupRequest {
    /// The project: a number or `"<id>.<timestamp>"`.
    #[schema(value_type = Object)]
    pub project: Value,
    /// The project's label config (XML).
    pub schema: Option<String>,
    /// Older Label Studio versions send it as `label_config`.
    pub label_config: Option<String>,
    pub hostname: Option<String>,
    pub access_token: Option<String>,
    pub model_version: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub extra_params: Option<Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LsSetupResponse {
    pub model_version: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LsValidateRequest {
    /// The label config (XML) Label Studio is about to connect.
    pub config: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LsPredictRequest {
    /// Label Studio tasks: `{"id", "data": {<text field>: "...", "weak_labels"?: [...]}}`.
    #[schema(value_type = Vec<Object>)]
    pub tasks: Vec<Value>,
    #[schema(value_type = Option<Object>)]
    pub project: Option<Value>,
    pub label_config: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub params: Option<Value>,
    #[serde(default)]
    pub force_reload: Option<bool>,
    #[serde(default)]
    pub try_fetch: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LsPredictResponse {
    /// One prediction per task, in order.
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<Value>,
    pub model_version: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LsWebhookResponse {
    /// `applied` or `ignored`.
    pub status: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Service {
    /// `model_version` as Label Studio shows it: the active version, or `none`.
    async fn ls_model_version(&self, task: &TaskCtx) -> Result<String> {
        Ok(match self.active_version(task).await? {
            Some(v) => format!("v{}", v.version),
            None => "none".into(),
        })
    }

    async fn ls_remember(&self, task: &TaskCtx, project: &str, config: &str) -> Result<ProjectRow> {
        let control = parse_label_config(config, &task.labels)?;
        let row = ProjectRow {
            task_id: task.id,
            project: project.to_string(),
            from_name: control.from_name,
            to_name: control.to_name,
            text_field: control.text_field,
            label_config: config.to_string(),
            updated_at: now_ms(),
        };
        super::retry::on_conflict("label studio setup", || async {
            let mut tx = self.store.begin_write().await?;
            projects::upsert(tx.conn(), &row).await?;
            Ok(tx.commit().await?)
        })
        .await?;
        Ok(row)
    }

    /// The project's remembered config, or the one sent now (remembered too).
    async fn ls_project(
        &self,
        task: &TaskCtx,
        project: Option<&Value>,
        config: Option<&str>,
    ) -> Result<ProjectRow> {
        let project = project.and_then(project_id).unwrap_or_else(|| "0".into());
        if let Some(row) = projects::get(self.store.pool(), task.id, &project).await? {
            if config.is_none_or(|c| c == row.label_config) {
                return Ok(row);
            }
        }
        match config {
            Some(c) => self.ls_remember(task, &project, c).await,
            None => Err(Error::invalid(
                "label_studio_not_set_up",
                format!("project {project} was never set up with task {:?}: send its label config (POST setup)", task.name),
            )),
        }
    }

    pub async fn ls_setup(&self, task_name: &str, req: LsSetupRequest) -> Result<LsSetupResponse> {
        let task = self.task(task_name).await?;
        let project = project_id(&req.project).ok_or_else(|| {
            Error::invalid(
                "invalid_project",
                "project must be a number or \"<id>.<timestamp>\"",
            )
        })?;
        let config = req
            .schema
            .as_deref()
            .or(req.label_config.as_deref())
            .ok_or_else(|| {
                Error::invalid(
                    "missing_label_config",
                    "setup needs the project's label config in `schema`",
                )
            })?;
        self.ls_remember(&task, &project, config).await?;
        Ok(LsSetupResponse {
            model_version: self.ls_model_version(&task).await?,
        })
    }

    /// Label Studio's config check before it connects a project: 422 unless some `Choices`
    /// control has exactly the task's labels. Nothing is remembered.
    pub async fn ls_validate(&self, task_name: &str, req: LsValidateRequest) -> Result<Value> {
        let task = self.task(task_name).await?;
        let control = parse_label_config(&req.config, &task.labels)?;
        Ok(json!({
            "status": "ok",
            "from_name": control.from_name,
            "to_name": control.to_name,
            "text_field": control.text_field,
        }))
    }

    /// Ingests Label Studio's tasks as examples and answers each one's decision.
    pub async fn ls_predict(
        &self,
        task_name: &str,
        req: LsPredictRequest,
    ) -> Result<LsPredictResponse> {
        let task = self.task(task_name).await?;
        let project = self
            .ls_project(&task, req.project.as_ref(), req.label_config.as_deref())
            .await?;
        let mut ids = Vec::with_capacity(req.tasks.len());
        let mut batch = Vec::with_capacity(req.tasks.len());
        for (i, t) in req.tasks.iter().enumerate() {
            let ls_id = t["id"].as_i64().ok_or_else(|| {
                Error::invalid(
                    "invalid_ls_task",
                    format!("tasks[{i}].id must be an integer"),
                )
            })?;
            let text = t["data"][&project.text_field].as_str().ok_or_else(|| {
                Error::invalid(
                    "invalid_ls_task",
                    format!("tasks[{i}].data.{} must be the text", project.text_field),
                )
            })?;
            let weak_labels: Vec<WeakLabelIn> = match t["data"].get("weak_labels") {
                Some(w) => serde_json::from_value(w.clone()).map_err(|e| {
                    Error::invalid(
                        "invalid_ls_task",
                        format!("tasks[{i}].data.weak_labels: {e}"),
                    )
                })?,
                None => vec![],
            };
            ids.push(example_id(ls_id));
            batch.push(NewExample {
                id: example_id(ls_id),
                text: text.to_string(),
                weak_labels,
                gold_label: None,
                gold_picked: None,
            });
        }
        // Within the server's batch limit per ingest; the order of ids is kept.
        let chunk = self.limits.max_batch_examples.max(1);
        let mut batch = batch.into_iter().peekable();
        while batch.peek().is_some() {
            let examples: Vec<NewExample> = batch.by_ref().take(chunk).collect();
            self.ingest(task_name, IngestRequest { examples }).await?;
        }
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut rows: HashMap<String, ExampleRow> = HashMap::new();
        for part in id_refs.chunks(500) {
            for r in examples::by_external_ids(self.store.pool(), task.id, part).await? {
                rows.insert(r.external_id.clone(), r);
            }
        }
        let model_version = self.ls_model_version(&task).await?;
        let results = ids
            .iter()
            .map(|id| match rows.get(id) {
                Some(r) => prediction(&task, &project, r, &model_version),
                None => json!({"model_version": model_version, "score": 0.0, "result": []}),
            })
            .collect();
        Ok(LsPredictResponse {
            results,
            model_version,
        })
    }

    /// Applies one Label Studio webhook event.
    pub async fn ls_webhook(&self, task_name: &str, body: Value) -> Result<LsWebhookResponse> {
        let task = self.task(task_name).await?;
        let action = body["action"]
            .as_str()
            .ok_or_else(|| Error::invalid("invalid_webhook", "the event has no `action`"))?
            .to_string();
        let answer = |status: &str, detail: Option<String>| LsWebhookResponse {
            status: status.into(),
            action: action.clone(),
            detail,
        };
        match action.as_str() {
            "ANNOTATION_CREATED" | "ANNOTATION_UPDATED" | "ANNOTATIONS_CREATED" => {
                let config = body["project"]["label_config"].as_str();
                let project = self.ls_project(&task, body.get("project"), config).await?;
                let ls_tasks = one_or_many(&body["task"]);
                let picked = picked_by(&body["project"]);
                let mut applied = Vec::new();
                for annotation in one_or_many(&body["annotation"]) {
                    let ls_id = ls_task_id(&annotation["task"])
                        .or_else(|| match ls_tasks.as_slice() {
                            [only] => only["id"].as_i64(),
                            _ => None,
                        })
                        .ok_or_else(|| {
                            Error::invalid("invalid_webhook", "an annotation has no task id")
                        })?;
                    let ls_task = ls_tasks
                        .iter()
                        .find(|t| t["id"].as_i64() == Some(ls_id))
                        .copied()
                        .unwrap_or(&Value::Null);
                    if let Some(done) = self
                        .ls_annotation(&task, &project, annotation, ls_id, ls_task, picked)
                        .await?
                    {
                        applied.push(done);
                    }
                }
                if applied.is_empty() {
                    return Ok(answer("ignored", Some("the annotation was skipped".into())));
                }
                Ok(answer("applied", Some(applied.join("; "))))
            }
            "ANNOTATION_DELETED" | "ANNOTATIONS_DELETED" => {
                let mut affected = BTreeSet::new();
                let annotations = match body.get("annotations") {
                    Some(a) => one_or_many(a),
                    None => one_or_many(&body["annotation"]),
                };
                for a in annotations {
                    // Label Studio sends only the annotation's id; older payloads carry the task.
                    let known = match a["id"].as_i64() {
                        Some(annotation_id) => {
                            super::retry::on_conflict("label studio annotation", || async {
                                let mut tx = self.store.begin_write().await?;
                                let known =
                                    projects::remove_annotation(tx.conn(), task.id, annotation_id)
                                        .await?;
                                tx.commit().await?;
                                Ok(known)
                            })
                            .await?
                        }
                        None => None,
                    };
                    let from_task = ls_task_id(&a["task"]).map(example_id);
                    if let Some(id) = known.or(from_task) {
                        affected.insert(id);
                    }
                }
                // The remaining annotation's task was picked as the project samples.
                let picked = picked_by(&body["project"]);
                let mut withdrawn = 0;
                let mut kept = 0;
                for id in &affected {
                    // Another annotation of the same task still stands: its label stays gold.
                    match projects::latest_label(self.store.pool(), task.id, id).await? {
                        Some(label) => {
                            self.set_gold(
                                task_name,
                                id,
                                super::ingest::GoldRequest { label, picked },
                            )
                            .await?;
                            kept += 1;
                        }
                        None => withdrawn += usize::from(self.withdraw_gold(&task, id).await?),
                    }
                }
                Ok(answer(
                    "applied",
                    Some(format!(
                        "{withdrawn} gold label(s) withdrawn, {kept} kept from another annotation"
                    )),
                ))
            }
            "START_TRAINING" => match self.create_job(task_name, CreateJob { mode: None }).await {
                Ok(job) => Ok(answer("applied", Some(format!("job {} queued", job.id)))),
                Err(Error::Conflict { message, .. }) => Ok(answer("ignored", Some(message))),
                Err(e) => Err(e),
            },
            _ => Ok(answer("ignored", None)),
        }
    }

    /// Applies one annotation as the example's gold label (creating the example from the Label
    /// Studio task's data when it was never predicted); None when it was skipped.
    async fn ls_annotation(
        &self,
        task: &TaskCtx,
        project: &ProjectRow,
        annotation: &Value,
        ls_id: i64,
        ls_task: &Value,
        picked: Option<GoldPicked>,
    ) -> Result<Option<String>> {
        if annotation["was_cancelled"] == true {
            return Ok(None);
        }
        let label = annotation["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["from_name"] == project.from_name.as_str())
            .find_map(|r| r["value"]["choices"].get(0).and_then(Value::as_str))
            .ok_or_else(|| {
                Error::invalid(
                    "invalid_webhook",
                    format!("the annotation has no choice from {:?}", project.from_name),
                )
            })?
            .to_string();
        let id = example_id(ls_id);
        if examples::by_external_id(self.store.pool(), task.id, &id)
            .await?
            .is_none()
        {
            let text = ls_task["data"][&project.text_field]
                .as_str()
                .ok_or_else(|| {
                    Error::invalid(
                        "invalid_webhook",
                        format!(
                            "example {id} is unknown and task.data.{} has no text",
                            project.text_field
                        ),
                    )
                })?;
            let examples = vec![NewExample {
                id: id.clone(),
                text: text.into(),
                weak_labels: vec![],
                gold_label: None,
                gold_picked: None,
            }];
            self.ingest(&task.name, IngestRequest { examples }).await?;
        }
        self.set_gold(
            &task.name,
            &id,
            super::ingest::GoldRequest {
                label: label.clone(),
                picked,
            },
        )
        .await?;
        if let Some(annotation_id) = annotation["id"].as_i64() {
            super::retry::on_conflict("label studio annotation", || async {
                let mut tx = self.store.begin_write().await?;
                projects::upsert_annotation(
                    tx.conn(),
                    task.id,
                    annotation_id,
                    &id,
                    &label,
                    now_ms(),
                )
                .await?;
                Ok(tx.commit().await?)
            })
            .await?;
        }
        Ok(Some(format!("{id}: gold {label:?}")))
    }

    /// Removes an example's gold label; false when it had none or does not exist.
    async fn withdraw_gold(&self, task: &TaskCtx, external_id: &str) -> Result<bool> {
        let Some(row) = examples::by_external_id(self.store.pool(), task.id, external_id).await?
        else {
            return Ok(false);
        };
        if row.gold_label.is_none() {
            return Ok(false);
        }
        super::retry::on_conflict("gold withdrawn", || async {
            let mut tx = self.store.begin_task_write(task.id).await?;
            examples::clear_gold(tx.conn(), row.id, now_ms()).await?;
            Ok(tx.commit().await?)
        })
        .await?;
        self.settle(task, &[row.id], "gold withdrawn").await?;
        Ok(true)
    }

    /// The task's model versions as Label Studio lists them.
    pub async fn ls_versions(&self, task_name: &str) -> Result<Value> {
        let list = self.list_models(task_name).await?;
        let versions: Vec<String> = list
            .versions
            .iter()
            .map(|v| format!("v{}", v.version))
            .collect();
        Ok(json!({
            "versions": versions,
            "model_version": list.active_version.map(|v| format!("v{v}")).unwrap_or_else(|| "none".into()),
        }))
    }
}

/// How a Label Studio project hands tasks to annotators (its `sampling`, sent with every
/// webhook's project): uncertainty sampling picks the least confident first (the review
/// queue's way), uniform sampling at random; sequential order says nothing either way.
pub fn picked_by(project: &Value) -> Option<GoldPicked> {
    match project["sampling"].as_str()? {
        "Uncertainty sampling" => Some(GoldPicked::Review),
        "Uniform sampling" => Some(GoldPicked::Random),
        _ => None,
    }
}

/// A Label Studio task reference: its id, or the task object itself.
fn ls_task_id(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v["id"].as_i64())
}

/// A webhook field that is one object in some events and a list in others.
fn one_or_many(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        Value::Null => vec![],
        one => vec![one],
    }
}

/// One Label Studio prediction from an example's current decision: its label (or, for an
/// abstention, what it would have said; without a decision, the strong model's guess) with
/// the probability that it is right as the score.
fn prediction(task: &TaskCtx, project: &ProjectRow, r: &ExampleRow, model_version: &str) -> Value {
    let decision = task.current_decision(r);
    let label = r
        .decision_label
        .or(r.suggested_label)
        .or(r.pred_label)
        .and_then(|l| task.name_of(Some(l)));
    let score = match &decision {
        Some(d) if d.label.is_some() || d.suggested_label.is_some() => d.confidence.or(d.p_ik),
        _ => r.p_ik.map(|p| p as f32),
    }
    .unwrap_or(0.0);
    let probabilities = parse_dist(r.pred_probs.as_deref()).map(|p| task.named(&p));
    let result = match &label {
        Some(l) => json!([{
            "from_name": project.from_name,
            "to_name": project.to_name,
            "type": "choices",
            "value": {"choices": [l]},
        }]),
        None => json!([]),
    };
    json!({
        "model_version": model_version,
        "score": score,
        "result": result,
        "sw2s": {
            "example_id": r.external_id,
            "source": decision.as_ref().map(|d| d.source),
            "confidence_source": decision.as_ref().and_then(|d| d.confidence_source),
            "p_ik": r.p_ik,
            "probabilities": probabilities,
            "refined_label": task.name_of(r.refined_label),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"<View>
  <Text name="text" value="$review"/>
  <Choices name="sentiment" toName="text" choice="single">
    <Choice value="neg"/><Choice value="pos"/>
  </Choices>
</View>"#;

    #[test]
    fn the_matching_choices_control_is_found() {
        let labels = vec!["neg".to_string(), "pos".to_string()];
        let c = parse_label_config(CONFIG, &labels).unwrap();
        assert_eq!(c.from_name, "sentiment");
        assert_eq!(c.to_name, "text");
        assert_eq!(c.text_field, "review");
        let other = vec!["spam".to_string(), "ham".to_string()];
        let err = parse_label_config(CONFIG, &other).unwrap_err();
        assert_eq!(err.code(), "label_config_mismatch");
        assert!(err.to_string().contains("sentiment"), "{err}");
        assert_eq!(
            parse_label_config("<View", &labels).unwrap_err().code(),
            "invalid_label_config"
        );
    }

    #[test]
    fn projects_come_as_numbers_or_id_dot_timestamp() {
        assert_eq!(project_id(&json!(3)).as_deref(), Some("3"));
        assert_eq!(project_id(&json!("3.1716213")).as_deref(), Some("3"));
        assert_eq!(project_id(&json!({"id": 7})).as_deref(), Some("7"));
        assert_eq!(project_id(&json!(null)), None);
    }

    #[test]
    fn the_projects_sampling_says_how_gold_was_picked() {
        let p = |sampling: Value| picked_by(&json!({"id": 1, "sampling": sampling}));
        assert_eq!(p(json!("Uncertainty sampling")), Some(GoldPicked::Review));
        assert_eq!(p(json!("Uniform sampling")), Some(GoldPicked::Random));
        assert_eq!(p(json!("Sequential sampling")), None);
        assert_eq!(p(json!(null)), None);
        assert_eq!(picked_by(&json!({"id": 1})), None);
    }
}
