//! The Label Studio ML backend, replayed with the request bodies Label Studio sends (setup,
//! predict, each webhook event, malformed ones) over HTTP, on both databases, with the
//! backend's credentials sent as HTTP Basic.

use base64::Engine;
use serde_json::{json, Value};

use crate::common::{assert_error, status_json, Backend, ModelKind, Options, TestServer};

const CONFIG: &str = r#"<View>
  <Text name="text" value="$review"/>
  <Choices name="sentiment" toName="text" choice="single" showInLine="true">
    <Choice value="neg"/>
    <Choice value="pos"/>
  </Choices>
</View>"#;

const KEY: &str = "ls-backend-key";

async fn ls(s: &TestServer, path: &str, body: Option<Value>) -> (u16, Value) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("labelstudio:{KEY}"));
    let url = s.url(&format!("/ls/t{path}"));
    let request = match body {
        Some(b) => s.client.post(url).json(&b),
        None => s.client.get(url),
    };
    status_json(
        request
            .header("Authorization", format!("Basic {basic}"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn ls_task(id: i64, text: &str) -> Value {
    json!({"id": id, "data": {"review": text}, "meta": {}, "created_at": "2026-11-28T05:00:00.000000Z",
           "updated_at": "2026-11-28T05:00:00.000000Z", "is_labeled": false, "overlap": 1,
           "inner_id": id, "total_annotations": 0, "cancelled_annotations": 0,
           "total_predictions": 0, "comment_count": 0, "project": 1, "annotations": [], "predictions": []})
}

fn annotation(action: &str, task_id: i64, label: &str) -> Value {
    json!({
        "action": action,
        "annotation": {
            "id": 100 + task_id, "task": task_id, "project": 1, "was_cancelled": false,
            "ground_truth": false, "lead_time": 3.2, "completed_by": 1,
            "result": [{"id": "r1", "type": "choices", "value": {"choices": [label]},
                        "origin": "manual", "to_name": "text", "from_name": "sentiment"}]
        },
        "task": ls_task(task_id, &format!("review number {task_id}")),
        "project": {"id": 1, "title": "reviews", "label_config": CONFIG}
    })
}

async fn gold_of(s: &TestServer, id: &str) -> Value {
    let (status, e) = s.get(&format!("/v1/tasks/t/examples/{id}")).await;
    assert_eq!(status, 200, "{e}");
    e["gold_label"].clone()
}

async fn label_studio_backend(backend: Backend) {
    let opts = Options::new(backend, ModelKind::Tiny).flag("api-key", KEY);
    let Some(mut s) = TestServer::start(opts).await else {
        return;
    };
    s.client = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_str(&format!("Bearer {KEY}")).unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let (status, _) = s
        .post(
            "/v1/tasks",
            &json!({"name": "t", "labels": ["neg", "pos"], "settings": {"job_every_new_gold": 3}}),
        )
        .await;
    assert_eq!(status, 201);

    // Without credentials: 401, as for the API.
    let bare = reqwest::Client::new()
        .get(s.url("/ls/t/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 401);
    let (status, health) = ls(&s, "/health", None).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("UP")));
    assert_eq!(ls(&s, "/", None).await.1["status"], "UP");
    assert_eq!(
        s.client
            .get(s.url("/ls/nope/health"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Setup: as Label Studio sends it; a config with other choices is a clear 422.
    let (status, body) = ls(
        &s,
        "/setup",
        Some(
            json!({"project": "1.1764306000", "schema": CONFIG, "hostname": "http://localhost:8089",
                    "access_token": "abc", "model_version": null, "extra_params": null}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "none");
    let wrong = CONFIG.replace("\"neg\"", "\"spam\"");
    let r = ls(&s, "/setup", Some(json!({"project": 2, "schema": wrong}))).await;
    assert_error(&r, 422, "label_config_mismatch");
    let r = ls(&s, "/setup", Some(json!({"project": 2, "schema": "<View"}))).await;
    assert_error(&r, 422, "invalid_label_config");
    // Validate: what Label Studio asks before it connects a project.
    let (status, body) = ls(&s, "/validate", Some(json!({"config": CONFIG}))).await;
    assert_eq!(
        (status, body["from_name"].as_str()),
        (200, Some("sentiment")),
        "{body}"
    );
    let r = ls(&s, "/validate", Some(json!({"config": wrong}))).await;
    assert_error(&r, 422, "label_config_mismatch");

    // Predict: one result per task, in order; the tasks become examples.
    let tasks: Vec<Value> = (1..=5)
        .map(|i| ls_task(i, &format!("review number {i}")))
        .collect();
    let body = json!({"tasks": tasks, "project": "1.1764306000", "label_config": CONFIG,
                      "params": {"login": null, "password": null, "context": null}});
    let (status, predicted) = ls(&s, "/predict", Some(body.clone())).await;
    assert_eq!(status, 200, "{predicted}");
    let results = predicted["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["sw2s"]["example_id"], format!("ls-{}", i + 1), "{r}");
        assert!(r["score"].as_f64().unwrap() >= 0.0, "{r}");
        assert!(r["model_version"].is_string(), "{r}");
    }
    // Re-sent: idempotent.
    assert_eq!(ls(&s, "/predict", Some(body)).await.0, 200);
    let (_, page) = s.get("/v1/tasks/t/examples?limit=100").await;
    assert_eq!(page["examples"].as_array().unwrap().len(), 5);
    // Weak labels carried in the task data reach the decision.
    let with_weak = json!({"id": 6, "data": {"review": "a clear one", "weak_labels": [{"source": "rules", "label": "pos"}]}});
    let (status, predicted) = ls(
        &s,
        "/predict",
        Some(json!({"tasks": [with_weak], "project": 1, "label_config": CONFIG})),
    )
    .await;
    assert_eq!(status, 200, "{predicted}");
    let r = &predicted["results"][0];
    assert_eq!(
        r["result"][0],
        json!({"from_name": "sentiment", "to_name": "text", "type": "choices", "value": {"choices": ["pos"]}})
    );
    assert_eq!(r["sw2s"]["source"], "weak_refined", "{r}");
    // Malformed tasks: 422 naming the field.
    let r = ls(
        &s,
        "/predict",
        Some(json!({"tasks": [{"id": 9, "data": {"other": "x"}}], "project": 1})),
    )
    .await;
    assert_error(&r, 422, "invalid_ls_task");
    let r = ls(&s, "/predict", Some(json!({"tasks": "nope"}))).await;
    assert!(r.0 == 422 || r.0 == 400, "{r:?}");

    // Webhooks: created and updated set gold, deleted withdraws it; others are ignored.
    let (status, r) = ls(
        &s,
        "/webhook",
        Some(annotation("ANNOTATION_CREATED", 1, "pos")),
    )
    .await;
    assert_eq!(
        (status, r["status"].as_str()),
        (200, Some("applied")),
        "{r}"
    );
    assert_eq!(gold_of(&s, "ls-1").await, "pos");
    ls(
        &s,
        "/webhook",
        Some(annotation("ANNOTATION_UPDATED", 1, "neg")),
    )
    .await;
    assert_eq!(gold_of(&s, "ls-1").await, "neg");
    // An annotation on a task never predicted creates the example from the task's data.
    ls(
        &s,
        "/webhook",
        Some(annotation("ANNOTATION_CREATED", 42, "pos")),
    )
    .await;
    assert_eq!(gold_of(&s, "ls-42").await, "pos");
    // Two annotators on task 4 (the second in the batch form); deleting one keeps the other's
    // label, deleting both withdraws the gold label. Label Studio sends only annotation ids.
    ls(
        &s,
        "/webhook",
        Some(annotation("ANNOTATION_CREATED", 4, "pos")),
    )
    .await;
    let mut second = annotation("ANNOTATIONS_CREATED", 4, "neg");
    second["annotation"]["id"] = json!(204);
    second["annotation"] = json!([second["annotation"].clone()]);
    second["task"] = json!([second["task"].clone()]);
    let (status, r) = ls(&s, "/webhook", Some(second)).await;
    assert_eq!(
        (status, r["status"].as_str()),
        (200, Some("applied")),
        "{r}"
    );
    assert_eq!(gold_of(&s, "ls-4").await, "neg");
    let deleted = |ids: Value| json!({"action": "ANNOTATIONS_DELETED", "annotations": ids, "project": {"id": 1}});
    let (status, r) = ls(&s, "/webhook", Some(deleted(json!([{"id": 204}])))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(gold_of(&s, "ls-4").await, "pos", "{r}");
    let (status, r) = ls(
        &s,
        "/webhook",
        Some(deleted(json!([{"id": 104}, {"id": 101}]))),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert!(gold_of(&s, "ls-4").await.is_null(), "{r}");
    assert!(gold_of(&s, "ls-1").await.is_null(), "{r}");
    // Unknown annotation ids change nothing.
    let (status, r) = ls(&s, "/webhook", Some(deleted(json!([{"id": 999}])))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(gold_of(&s, "ls-42").await, "pos");
    let (status, r) = ls(
        &s,
        "/webhook",
        Some(json!({"action": "PROJECT_UPDATED", "project": {"id": 1}})),
    )
    .await;
    assert_eq!((status, r["status"].as_str()), (200, Some("ignored")));
    let r = ls(&s, "/webhook", Some(json!({"project": {"id": 1}}))).await;
    assert_error(&r, 422, "invalid_webhook");
    let bad = json!({"action": "ANNOTATION_CREATED", "annotation": {"result": []}, "task": {"id": 2},
                     "project": {"id": 1, "label_config": CONFIG}});
    assert_error(&ls(&s, "/webhook", Some(bad)).await, 422, "invalid_webhook");

    // Retraining every 3 annotations: two more make three gold labels since no job ran.
    ls(
        &s,
        "/webhook",
        Some(annotation("ANNOTATION_CREATED", 2, "neg")),
    )
    .await;
    ls(
        &s,
        "/webhook",
        Some(annotation("ANNOTATION_CREATED", 3, "pos")),
    )
    .await;
    let mut triggered = None;
    for _ in 0..100 {
        let (_, jobs) = s.get("/v1/tasks/t/jobs").await;
        if let Some(j) = jobs["jobs"].as_array().and_then(|j| j.first()).cloned() {
            triggered = Some(j);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let job = triggered.expect("3 new gold labels did not start a job");
    assert_eq!(job["trigger"], "new_gold", "{job}");
    let job = crate::common::wait_job(&s, "t", job["id"].as_i64().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    // START_TRAINING queues another.
    let (status, r) = ls(
        &s,
        "/webhook",
        Some(json!({"action": "START_TRAINING", "project": {"id": 1}})),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert!(r["detail"].as_str().unwrap().contains("job"), "{r}");
    let (status, versions) = ls(&s, "/versions", None).await;
    assert_eq!(status, 200);
    assert_eq!(versions["versions"][0], "v1", "{versions}");
    let (_, e) = s.get("/v1/tasks/t/examples/ls-42").await;
    assert_eq!(e["gold_picked"], Value::Null, "sequential or unsaid: {e}");
    // A project on uncertainty sampling hands out its least confident tasks first: its
    // annotations are gold picked for review; on uniform sampling, picked at random.
    for (task_id, sampling, picked) in [
        (43, "Uncertainty sampling", "review"),
        (44, "Uniform sampling", "random"),
    ] {
        let mut event = annotation("ANNOTATION_CREATED", task_id, "neg");
        event["project"]["sampling"] = json!(sampling);
        let (status, r) = ls(&s, "/webhook", Some(event)).await;
        assert_eq!(status, 200, "{r}");
        let (_, e) = s.get(&format!("/v1/tasks/t/examples/ls-{task_id}")).await;
        assert_eq!(
            (&e["gold_label"], &e["gold_picked"]),
            (&json!("neg"), &json!(picked)),
            "{sampling}: {e}"
        );
    }
    // A second annotator on the uncertainty-sampled task, then deleting that annotation: the
    // first annotator's label stands and keeps saying how the task was picked.
    let mut second = annotation("ANNOTATION_CREATED", 43, "pos");
    second["annotation"]["id"] = json!(243);
    second["project"]["sampling"] = json!("Uncertainty sampling");
    assert_eq!(ls(&s, "/webhook", Some(second)).await.0, 200);
    assert_eq!(gold_of(&s, "ls-43").await, "pos");
    let mut event = deleted(json!([{"id": 243}]));
    event["project"]["sampling"] = json!("Uncertainty sampling");
    let (status, r) = ls(&s, "/webhook", Some(event)).await;
    assert_eq!(status, 200, "{r}");
    let (_, e) = s.get("/v1/tasks/t/examples/ls-43").await;
    assert_eq!(
        (&e["gold_label"], &e["gold_picked"]),
        (&json!("neg"), &json!("review")),
        "{e}"
    );
    s.finish().await;
}
both_backends!(label_studio_requests_replayed, super::label_studio_backend);
