//! Fine-tuning jobs and model versions over HTTP (tiny model, both databases): one job per
//! task, progress and metrics, versions, activation and rollback, cancel and retry, `full`
//! jobs with re-embedding, interrupted jobs after a restart, a restart on another base model,
//! and the new-examples trigger.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{assert_error, send_patch, wait_job, Backend, ModelKind, Options, TestServer};
use crate::data::all_examples;
use serde_json::{json, Value};

const POS: &[&str] = &["great", "superb", "lovely", "brilliant", "moving"];
const NEG: &[&str] = &["awful", "dull", "boring", "clumsy", "tedious"];

fn text(i: usize) -> (String, usize) {
    let label = i % 2;
    let words = if label == 1 { POS } else { NEG };
    (
        format!(
            "a {} and {} film number {i}",
            words[i % 5],
            words[(i / 5) % 5]
        ),
        label,
    )
}

/// Examples `range`, weak labels 20% wrong, gold on every third one if `gold`.
async fn ingest(s: &TestServer, task: &str, range: std::ops::Range<usize>, gold: bool) {
    let labels = ["neg", "pos"];
    let examples: Vec<Value> = range
        .map(|i| {
            let (t, l) = text(i);
            let weak = if i % 5 == 0 { 1 - l } else { l };
            let mut e = json!({"id": format!("e{i}"), "text": t, "weak_labels": [{"source": "rules", "label": labels[weak]}]});
            if gold && i % 3 == 0 {
                e["gold_label"] = json!(labels[l]);
            }
            e
        })
        .collect();
    let (status, body) = s
        .post(
            &format!("/v1/tasks/{task}/examples"),
            &json!({ "examples": examples }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn start_job(s: &TestServer, task: &str, body: Value) -> i64 {
    let (status, job) = s.post(&format!("/v1/tasks/{task}/jobs"), &body).await;
    assert_eq!(status, 202, "{job}");
    job["id"].as_i64().unwrap()
}

async fn predict_version(s: &TestServer, task: &str) -> Value {
    let (status, p) = s
        .post(
            &format!("/v1/tasks/{task}/predict"),
            &json!({"texts": ["a great and lovely film"]}),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    p["model_version"].clone()
}

async fn lifecycle(backend: Backend) {
    // First without a job runner, so queued jobs stay queued.
    let Some(mut s) =
        TestServer::start(Options::new(backend, ModelKind::Tiny).switch("no-jobs")).await
    else {
        return;
    };
    s.post(
        "/v1/tasks",
        &json!({"name": "t", "labels": ["neg", "pos"], "settings": {"pik_min_gold": 20}}),
    )
    .await;
    ingest(&s, "t", 0..180, true).await;
    review_picked_gold(&s).await;
    let queued = queue_rules(&s).await;
    // With a job runner the queued job runs.
    s.stop().await;
    s.launch(&[]).await;
    first_version(&s, queued).await;
    predictions_follow_the_version(&s).await;
    ties_between_sources(&s).await;
    tie_lean_counts_examples(&s).await;
    rollback(&s).await;
    cancel_running_job(&s).await;
    full_job_and_reembedding(&s).await;
    interrupted_job_is_failed_and_retried(&mut s).await;
    another_base_model(&mut s).await;
    s.finish().await;
}

/// Gold labels that say how their example was picked: 20 more, picked for review (all of one
/// class), beside the 60 unsaid. The job (`first_version`) trains and calibrates on all 80
/// but judges its checks and the class prior on the 60.
async fn review_picked_gold(s: &TestServer) {
    // All "neg", where the other gold is half and half: a hard-first queue that leans.
    for i in (0..120).filter(|i| i % 3 != 0 && i % 2 == 0).take(20) {
        let label = ["neg", "pos"][text(i).1];
        let (status, view) = s
            .put(
                &format!("/v1/tasks/t/examples/e{i}/gold"),
                &json!({"label": label, "picked": "review"}),
            )
            .await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(
            (view["gold_label"].as_str(), view["gold_picked"].as_str()),
            (Some(label), Some("review"))
        );
    }
    let (_, unsaid) = s.get("/v1/tasks/t/examples/e0").await;
    assert_eq!(unsaid["gold_picked"], Value::Null, "{unsaid}");
    // The example list says it too.
    let (_, page) = s.get("/v1/tasks/t/examples?limit=3").await;
    let picked: Vec<&Value> = page["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["gold_picked"])
        .collect();
    assert_eq!(
        picked,
        [&Value::Null, &Value::Null, &json!("review")],
        "{page}"
    );
    // Ingest can say it too: e3 (already gold, unsaid) re-sent as a random pick.
    let (t, l) = text(3);
    let label = ["neg", "pos"][l];
    let (status, body) = s
        .post(
            "/v1/tasks/t/examples",
            &json!({"examples": [{"id": "e3", "text": t, "gold_label": label, "gold_picked": "random"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, e3) = s.get("/v1/tasks/t/examples/e3").await;
    assert_eq!(e3["gold_picked"], "random", "{e3}");
    let bad = s
        .put(
            "/v1/tasks/t/examples/e2/gold",
            &json!({"label": "neg", "picked": "by hand"}),
        )
        .await;
    assert_error(&bad, 422, "invalid_body");
    let (_, kept) = s.get("/v1/tasks/t/examples/e2").await;
    assert_eq!(
        kept["gold_picked"], "review",
        "a refused write changes nothing"
    );
}

/// One job per task: a second request while the first is queued gets 409 naming it;
/// cancelling a queued job is immediate and a cancelled job can be re-run. Returns the
/// re-run's id.
async fn queue_rules(s: &TestServer) -> i64 {
    let response = s
        .client
        .post(s.url("/v1/tasks/t/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        202,
        "an empty body uses the task's job mode"
    );
    let first: Value = response.json().await.unwrap();
    assert_eq!(
        (first["mode"].as_str(), first["state"].as_str()),
        (Some("head"), Some("queued"))
    );
    let conflict = s.post("/v1/tasks/t/jobs", &json!({"mode": "full"})).await;
    assert_error(&conflict, 409, "job_active");
    assert_eq!(conflict.1["error"]["details"]["job"]["id"], first["id"]);
    // A change of long_texts comes with its re-embedding job, so it waits too, unsaved.
    let conflict = s
        .patch(
            "/v1/tasks/t",
            &json!({"settings": {"long_texts": "truncate"}}),
        )
        .await;
    assert_error(&conflict, 409, "job_active");
    assert_eq!(conflict.1["error"]["details"]["job"]["id"], first["id"]);
    let (_, task) = s.get("/v1/tasks/t").await;
    assert_eq!(task["settings"]["long_texts"], "chunk", "{task}");
    assert_error(
        &s.post("/v1/tasks/t/jobs", &json!({"mode": "sideways"}))
            .await,
        422,
        "invalid_body",
    );

    let first_id = first["id"].as_i64().unwrap();
    let (status, cancelled) = s
        .post(&format!("/v1/tasks/t/jobs/{first_id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    assert_error(
        &s.post(&format!("/v1/tasks/t/jobs/{first_id}/cancel"), &json!({}))
            .await,
        409,
        "job_finished",
    );
    let (status, retried) = s
        .post(&format!("/v1/tasks/t/jobs/{first_id}/retry"), &json!({}))
        .await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(
        (retried["retry_of"].as_i64(), retried["trigger"].as_str()),
        (Some(first_id), Some("retry"))
    );
    assert_error(&s.get("/v1/tasks/t/jobs/999").await, 404, "not_found");
    retried["id"].as_i64().unwrap()
}

/// The first job publishes version 1 with P(IK), its stage checks and its files.
async fn first_version(s: &TestServer, id: i64) {
    let job = wait_job(s, "t", id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["model_version"], 1);
    assert!(job["started_at"].as_i64().unwrap() <= job["finished_at"].as_i64().unwrap());
    assert_eq!(job["metrics"]["pik"]["source"], "trained", "{job}");
    // Every gold example gets a P(IK) from a head that never saw it (cross-fitted).
    assert!(
        job["metrics"]["pik"]["brier"].is_number() && job["metrics"]["pik"]["ece"].is_number(),
        "{job}"
    );
    // Every gold label calibrates: P(IK) on all 80. The 20 picked for review do not judge:
    // the stage checks and the class prior rest on the other 60.
    assert_eq!(job["metrics"]["pik"]["calibration_examples"], 80);
    let gold = &job["metrics"]["gold"];
    assert_eq!(
        (&gold["labels"], &gold["review_picked"], &gold["judging"]),
        (&json!(80), &json!(20), &json!(60)),
        "{job}"
    );
    assert!(
        gold["reason"].as_str().unwrap().contains(
            "the 20 picked for review (\"neg\" is 100% of them, 50% of the others) train and calibrate but do not judge"
        ),
        "{gold}"
    );
    let (_, report) = s.get("/v1/tasks/t/report").await;
    assert_eq!(report["gold_use"], *gold, "{report}");
    assert_eq!(report["gold"], 80);
    assert_eq!(
        (&report["prior"]["source"], &report["prior"]["examples"]),
        (&json!("gold"), &json!(60)),
        "{report}"
    );
    let stages = job["metrics"]["stages"].as_array().unwrap();
    assert!(
        stages.iter().all(|s| s["gold"].as_u64() <= Some(60)),
        "{job}"
    );
    assert!(stages.iter().any(|s| s["gold"] == 60), "{job}");
    // The job checked each label-changing stage on gold and says why it is on or off.
    let stages = job["metrics"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 4, "{job}");
    assert!(stages
        .iter()
        .all(|s| s["reason"].is_string() && s["on"].is_boolean()));
    assert!(
        job["metrics"]["training"]["head"]["epochs_run"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(job["metrics"]["training"]["examples_by_source"]["gold"], 80);
    assert_error(
        &s.post(&format!("/v1/tasks/t/jobs/{}/retry", job["id"]), &json!({}))
            .await,
        409,
        "job_not_retryable",
    );

    let (_, models) = s.get("/v1/tasks/t/models").await;
    assert_eq!(models["active_version"], 1, "{models}");
    let manifest = &models["versions"][0]["manifest"];
    assert_eq!(manifest["labels"], json!(["neg", "pos"]));
    assert_eq!(manifest["mode"], "head");
    assert_eq!(manifest["encoder"]["fine_tuned"], false);
    assert!(manifest["pik"]["source"].is_string());
    let version_dir = s.dir.path().join("data/versions/task-1/v1");
    assert!(
        version_dir.join("manifest.json").is_file()
            && version_dir.join("heads.safetensors").is_file()
    );
}

/// Predictions now come from version 1, with P(IK) and its source, and every example was
/// re-scored under it.
async fn predictions_follow_the_version(s: &TestServer) {
    let (_, p) = s
        .post(
            "/v1/tasks/t/predict",
            &json!({"texts": ["a great and lovely film"]}),
        )
        .await;
    assert_eq!(p["model_version"], 1, "{p}");
    assert!(p["predictions"][0]["label"].is_string());
    assert!(p["predictions"][0]["p_ik"].is_number());
    assert!(matches!(
        p["predictions"][0]["p_ik_source"].as_str(),
        Some("trained" | "msp")
    ));
    let (_, page) = s.get("/v1/tasks/t/examples?limit=1000").await;
    assert!(
        page["examples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["p_ik"].is_number()),
        "{page}"
    );
    forcing_strong_selection(s).await;
}

/// The current decisions' sources, counted.
async fn decision_sources(s: &TestServer, task: &str) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for e in all_examples(s, task).await {
        let source = e["decision"]["source"].as_str().unwrap_or("none");
        *n.entry(source.to_string()).or_default() += 1;
    }
    n
}

/// Forcing strong selection off re-decides the task at once and /predict follows the task's
/// rule, saying why. A task of its own on the τ rule, where τ = 0.5 gives the model some
/// examples first; back to the fitted settings, the fitted decisions return.
async fn forcing_strong_selection(s: &TestServer) {
    s.post(
        "/v1/tasks",
        &json!({"name": "sel", "labels": ["neg", "pos"],
                "settings": {"pik_min_gold": 20, "selection": "tau"}}),
    )
    .await;
    ingest(s, "sel", 0..180, true).await;
    let job = start_job(s, "sel", json!({"mode": "head"})).await;
    assert_eq!(wait_job(s, "sel", job).await["state"], "succeeded");
    let fitted = decision_sources(s, "sel").await;
    let predict = || async {
        let (status, p) = s
            .post(
                "/v1/tasks/sel/predict",
                &json!({"texts": ["a great and lovely film"]}),
            )
            .await;
        assert_eq!(status, 200, "{p}");
        p["predictions"][0].clone()
    };
    let steps = [
        json!({"strong": "on", "tau": 0.5}),
        json!({"strong": "off"}),
        json!({"strong": "auto", "tau": "fit"}),
    ];
    // The decisions the first step's PATCH answered with.
    let mut first = None;
    for (step, settings) in steps.iter().enumerate() {
        let (status, body) = s
            .patch("/v1/tasks/sel", &json!({ "settings": settings }))
            .await;
        assert_eq!(status, 200, "{body}");
        let now = decision_sources(s, "sel").await;
        let p = predict().await;
        let reason = p["reason"].as_str().unwrap_or_default().to_string();
        assert!(
            reason.starts_with("as a decision with no weak or gold label: "),
            "{p}"
        );
        assert_eq!(now.values().sum::<usize>(), 180);
        // Trusted exactly when the task's rule takes the model alone.
        let taken = reason.contains(">= tau") && !reason.contains("abstain");
        assert_eq!(p["trusted"], taken, "{p}");
        match step {
            0 => {
                assert!(now.get("strong").is_some_and(|&n| n > 0), "{now:?}");
                first = Some(now.clone());
                let p_ik = p["p_ik"].as_f64().unwrap();
                assert_eq!(p["trusted"], p_ik >= 0.5, "{p}");
            }
            1 => {
                assert_eq!(now.get("strong"), None, "{now:?}");
                assert_eq!(p["trusted"], false, "{p}");
                assert!(reason.contains("strong selection is off"), "{p}");
            }
            _ => assert_eq!(now, fitted, "the fitted decisions again"),
        }
    }
    // A client that hangs up while its PATCH is under way (once the setting is saved, as
    // the examples are decided again): the re-decision runs to its end all the same.
    let settings = &steps[0];
    let socket = send_patch(
        &s.addr.to_string(),
        "/v1/tasks/sel",
        &json!({ "settings": settings }),
    )
    .await;
    let saved = |task: &Value| {
        task["settings"]["strong"] == settings["strong"]
            && task["settings"]["tau"] == settings["tau"]
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !saved(&s.get("/v1/tasks/sel").await.1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the PATCH was not saved"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(socket);
    loop {
        let now = decision_sources(s, "sel").await;
        if Some(&now) == first.as_ref() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after a PATCH whose client hung up: {now:?}, where the same PATCH answered gave {first:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = s.delete("/v1/tasks/sel").await;
    assert_eq!(status, 204);
}

/// A task with every label-changing stage off, so the mean of the weak labels alone decides.
async fn mean_only_task(s: &TestServer, task: &str, labels: [&str; 2]) {
    let settings = json!({"source_model": "off", "smoothing": "off", "strong": "off"});
    let (status, body) = s
        .post(
            "/v1/tasks",
            &json!({"name": task, "labels": labels, "settings": settings}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// The reason of an example's current decision, from its history (the list view has none).
fn current_reason(example: &Value) -> &str {
    example["decisions"]
        .as_array()
        .and_then(|h| h.iter().find(|d| d["current"] == true))
        .and_then(|d| d["reason"].as_str())
        .unwrap_or_default()
}

/// Two sources that disagree leave the mean of their votes tied. Before any job the tie goes
/// to the label the weak labels' votes make likelier, and the decision says so; after a job
/// it goes to the label likelier among tied examples (the gold examples whose votes tie,
/// with the class prior) on every tied example, whatever the order of the task's labels, and
/// the report says so. Every stage is off, so the mean alone decides.
async fn ties_between_sources(s: &TestServer) {
    for labels in [["rare", "common"], ["common", "rare"]] {
        let task = format!("ties-{}", labels[0]);
        mean_only_task(s, &task, labels).await;
        // 150 examples, one in five rare; the sources disagree on two in three; gold on every
        // other one.
        let truth = |i: usize| if i % 5 == 0 { "rare" } else { "common" };
        let other = |l: &str| if l == "rare" { "common" } else { "rare" };
        let tied = |i: usize| i % 3 != 2;
        let gold = |i: usize| i % 2 == 0;
        // Sent without their gold labels first: a's votes are 20% rare, b's 60%.
        let example = |i: usize, with_gold: bool| {
            let (t, _) = text(i);
            let b = if tied(i) { other(truth(i)) } else { truth(i) };
            let mut e = json!({"id": format!("x{i}"), "text": t, "weak_labels": [
                {"source": "a", "label": truth(i)}, {"source": "b", "label": b}]});
            if with_gold {
                e["gold_label"] = json!(truth(i));
            }
            e
        };
        let examples: Vec<Value> = (0..150).map(|i| example(i, false)).collect();
        crate::data::ingest(s, &task, &examples, examples.len()).await;
        let decided = || async {
            all_examples(s, &task)
                .await
                .into_iter()
                .filter(|e| {
                    let i = e["id"].as_str().unwrap()[1..].parse().unwrap();
                    tied(i) && !gold(i)
                })
                .map(|e| {
                    e["decision"]["label"]
                        .as_str()
                        .unwrap_or("none")
                        .to_string()
                })
                .collect::<Vec<String>>()
        };
        let before = decided().await;
        assert_eq!(before.len(), 50);
        assert!(before.iter().all(|l| l == "common"), "{before:?}");
        // x1 is tied and has no gold label: its decision says why.
        let (_, x1) = s.get(&format!("/v1/tasks/{task}/examples/x1")).await;
        let current = current_reason(&x1);
        assert!(
            current.contains("a tie goes to the label the task's counts make likelier")
                && current.contains("class shares of the weak labels")
                && current.ends_with(": common"),
            "{x1}"
        );
        let gold_examples: Vec<Value> = (0..150)
            .filter(|&i| gold(i))
            .map(|i| example(i, true))
            .collect();
        crate::data::ingest(s, &task, &gold_examples, gold_examples.len()).await;
        crate::data::run_job(s, &task, json!({"mode": "head"})).await;
        let (_, report) = s.get(&format!("/v1/tasks/{task}/report")).await;
        assert_eq!(report["prior"]["source"], "gold", "{report}");
        let said = report["stages"][0]["reason"].as_str().unwrap_or_default();
        assert!(
            said.contains("a tie in the mean goes to the likelier label among tied examples")
                && said.contains("the true labels of the 50 gold examples whose votes tie"),
            "{report}"
        );
        let after = decided().await;
        assert!(after.iter().all(|l| l == "common"), "{after:?}");
        let (status, _) = s.delete(&format!("/v1/tasks/{task}")).await;
        assert_eq!(status, 204);
    }
}

/// Before any job a tie leans by examples, not by labels sent: 40 examples with one vote for
/// `common` outweigh 10 with five votes each for `rare` (50 votes to 40).
async fn tie_lean_counts_examples(s: &TestServer) {
    for labels in [["rare", "common"], ["common", "rare"]] {
        let task = format!("lean-{}", labels[0]);
        mean_only_task(s, &task, labels).await;
        let mut examples: Vec<Value> = (0..40)
            .map(|i| {
                json!({"id": format!("c{i}"), "text": format!("a plain sentence {i}"),
                    "weak_labels": [{"source": "a", "label": "common"}]})
            })
            .collect();
        examples.extend((0..10).map(|i| {
            let votes: Vec<Value> = (1..=5)
                .map(|r| json!({"source": format!("r{r}"), "label": "rare"}))
                .collect();
            json!({"id": format!("r{i}"), "text": format!("an odd sentence {i}"), "weak_labels": votes})
        }));
        crate::data::ingest(s, &task, &examples, examples.len()).await;
        let tied = json!({"id": "x", "text": "a sentence the sources split on", "weak_labels": [
            {"source": "a", "label": "rare"}, {"source": "b", "label": "common"}]});
        crate::data::ingest(s, &task, &[tied], 1).await;
        let (status, x) = s.get(&format!("/v1/tasks/{task}/examples/x")).await;
        assert_eq!(status, 200, "{x}");
        assert_eq!(x["decision"]["label"], "common", "{x}");
        let reason = current_reason(&x);
        assert!(
            reason.contains("class shares of the weak labels") && reason.ends_with(": common"),
            "{x}"
        );
        let (status, _) = s.delete(&format!("/v1/tasks/{task}")).await;
        assert_eq!(status, 204);
    }
}

/// A second version, then roll back to the first.
async fn rollback(s: &TestServer) {
    let second = start_job(s, "t", json!({"mode": "head"})).await;
    assert_eq!(wait_job(s, "t", second).await["model_version"], 2);
    assert_eq!(predict_version(s, "t").await, 2);
    let (status, act) = s.post("/v1/tasks/t/models/1/activate", &json!({})).await;
    assert_eq!(status, 200, "{act}");
    assert_eq!(act["active_version"], 1);
    assert_eq!(predict_version(s, "t").await, 1);
    assert_error(
        &s.post("/v1/tasks/t/models/9/activate", &json!({})).await,
        404,
        "not_found",
    );
}

/// Cancelling a running job stops it; serving stays on version 1.
async fn cancel_running_job(s: &TestServer) {
    s.patch(
        "/v1/tasks/t",
        &json!({"settings": {"finetune": {"epochs": 100}}}),
    )
    .await;
    let long = start_job(s, "t", json!({"mode": "full"})).await;
    for _ in 0..600 {
        let (_, job) = s.get(&format!("/v1/tasks/t/jobs/{long}")).await;
        if job["progress"]["stage"] == "fine-tuning"
            && job["progress"]["step"].as_u64().unwrap_or(0) > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = s
        .post(&format!("/v1/tasks/t/jobs/{long}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202);
    let job = wait_job(s, "t", long).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(
        predict_version(s, "t").await,
        1,
        "a cancelled job leaves serving untouched"
    );
    let (_, models) = s.get("/v1/tasks/t/models").await;
    assert_eq!(
        models["versions"].as_array().unwrap().len(),
        2,
        "no version from the cancelled job"
    );
    s.patch(
        "/v1/tasks/t",
        &json!({"settings": {"finetune": {"epochs": 2}}}),
    )
    .await;
}

/// `full`: the encoder is fine-tuned, every example re-embedded, the graph rebuilt; back to
/// version 1 (base encoder), a job re-embeds the task first.
async fn full_job_and_reembedding(s: &TestServer) {
    let full = start_job(s, "t", json!({"mode": "full"})).await;
    let job = wait_job(s, "t", full).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let full_version = job["model_version"].as_i64().unwrap();
    let (_, models) = s.get("/v1/tasks/t/models").await;
    let manifest = &models["versions"][0]["manifest"];
    assert_eq!(manifest["mode"], "full");
    assert_eq!(manifest["encoder"]["fine_tuned"], true);
    assert_eq!(
        manifest["encoder"]["weights_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert!(s
        .dir
        .path()
        .join(format!(
            "data/versions/task-1/v{full_version}/encoder.safetensors"
        ))
        .is_file());
    assert_eq!(predict_version(s, "t").await, full_version);
    let (_, e) = s.get("/v1/tasks/t/examples/e4").await;
    assert!(
        !e["neighbours"].as_array().unwrap().is_empty(),
        "the graph is rebuilt on the new embeddings: {e}"
    );
    assert_eq!(e["prediction"]["model_version"], full_version);

    let (status, act) = s.post("/v1/tasks/t/models/1/activate", &json!({})).await;
    assert_eq!(status, 202, "{act}");
    assert_eq!(
        act["active_version"], full_version,
        "serving is unchanged until the job is done"
    );
    let job = wait_job(s, "t", act["job"]["id"].as_i64().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(predict_version(s, "t").await, 1);
}

/// A job running when the process stopped is failed on restart and can be re-run.
async fn interrupted_job_is_failed_and_retried(s: &mut TestServer) {
    let task_id = s.service().task("t").await.unwrap().id;
    let instance = s.service().instance_id.clone();
    sqlx::query(
        "INSERT INTO jobs (task_id, mode, trigger_kind, state, params, owner, heartbeat_at, created_at, started_at) \
         VALUES ($1, 'head', 'request', 'running', '{}', $2, $3, $3, $3)",
    )
    .bind(task_id)
    .bind(instance.as_str())
    .bind(sw2s::store::now_ms())
    .execute(s.service().store.pool())
    .await
    .unwrap();
    s.stop().await;
    s.launch(&[]).await;
    let (_, jobs) = s.get("/v1/tasks/t/jobs").await;
    let interrupted = &jobs["jobs"][0];
    assert_eq!(interrupted["state"], "failed", "{interrupted}");
    assert!(
        interrupted["error"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{interrupted}"
    );
    let (status, retried) = s
        .post(
            &format!("/v1/tasks/t/jobs/{}/retry", interrupted["id"]),
            &json!({}),
        )
        .await;
    assert_eq!(status, 202, "{retried}");
    assert_eq!(
        wait_job(s, "t", retried["id"].as_i64().unwrap()).await["state"],
        "succeeded"
    );
}
/// Restarted on another base model, the server does not serve versions made on the old one
/// (their heads read other features): predictions carry no version, activating one is 409,
/// and the next job trains a version for the new model.
async fn another_base_model(s: &mut TestServer) {
    let before = predict_version(s, "t").await;
    let before = before.as_i64().expect("a version is served");
    s.stop().await;
    let other = s.dir.path().join("tiny-bert-other");
    sw2s::model::testing::write_tiny_bert(&other, 43).unwrap();
    s.model_dir = other;
    s.launch(&[]).await;
    assert_eq!(predict_version(s, "t").await, Value::Null);
    assert_error(
        &s.post(&format!("/v1/tasks/t/models/{before}/activate"), &json!({}))
            .await,
        409,
        "version_model_mismatch",
    );
    let id = start_job(s, "t", json!({})).await;
    let job = wait_job(s, "t", id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(predict_version(s, "t").await, json!(before + 1));
    let (_, models) = s.get("/v1/tasks/t/models").await;
    let manifest = &models["versions"][0]["manifest"];
    assert_eq!(
        manifest["encoder"]["features"], manifest["encoder"]["sha256"],
        "{manifest}"
    );
}

both_backends!(job_lifecycle, super::lifecycle);

/// With `job_every_new_examples`, enough new examples start a job by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_examples_trigger_a_job() {
    let s = TestServer::start(Options::new(Backend::Sqlite, ModelKind::Tiny))
        .await
        .unwrap();
    s.post("/v1/tasks", &json!({"name": "auto", "labels": ["neg", "pos"], "settings": {"job_every_new_examples": 50}})).await;
    ingest(&s, "auto", 0..30, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, jobs) = s.get("/v1/tasks/auto/jobs").await;
    assert!(
        jobs["jobs"].as_array().unwrap().is_empty(),
        "30 < 50: no job yet"
    );
    ingest(&s, "auto", 30..60, false).await;
    let mut job = Value::Null;
    for _ in 0..100 {
        let (_, jobs) = s.get("/v1/tasks/auto/jobs").await;
        if let Some(j) = jobs["jobs"].as_array().unwrap().first() {
            job = j.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(job["trigger"], "new_examples", "{job}");
    let done = wait_job(&s, "auto", job["id"].as_i64().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["metrics"]["pik"]["source"], "msp",
        "no gold labels: the MSP fallback, said so"
    );
    let (_, p) = s
        .post("/v1/tasks/auto/predict", &json!({"texts": ["a dull film"]}))
        .await;
    assert_eq!(p["predictions"][0]["p_ik_source"], "msp");
    s.finish().await;
}

/// With `job_every_secs`, jobs start on a schedule (the first one that long after the task
/// was created), and not again before the interval has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_start_on_a_schedule() {
    let s = TestServer::start(Options::new(Backend::Sqlite, ModelKind::Tiny))
        .await
        .unwrap();
    s.post(
        "/v1/tasks",
        &json!({"name": "timed", "labels": ["neg", "pos"], "settings": {"job_every_secs": 2}}),
    )
    .await;
    ingest(&s, "timed", 0..40, true).await;
    let mut job = Value::Null;
    for _ in 0..100 {
        let (_, jobs) = s.get("/v1/tasks/timed/jobs").await;
        if let Some(j) = jobs["jobs"].as_array().unwrap().first() {
            job = j.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(job["trigger"], "schedule", "{job}");
    let done = wait_job(&s, "timed", job["id"].as_i64().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, jobs) = s.get("/v1/tasks/timed/jobs").await;
    assert_eq!(
        jobs["jobs"].as_array().unwrap().len(),
        1,
        "the next one waits for the interval"
    );
    s.finish().await;
}
