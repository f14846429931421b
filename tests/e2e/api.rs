//! End-to-end tests of the task and example API over a real socket, on SQLite and on
//! PostgreSQL: success paths, idempotency, atomicity and every kind of bad input.

use crate::common::{assert_error, Backend, ModelKind, Options, TestServer};
use serde_json::{json, Value};

async fn server(backend: Backend, opts: impl FnOnce(Options) -> Options) -> Option<TestServer> {
    TestServer::start(opts(Options::new(backend, ModelKind::Tiny))).await
}

fn example(id: &str, text: &str, weak: Value) -> Value {
    json!({"id": id, "text": text, "weak_labels": weak})
}

async fn tasks_crud(backend: Backend) {
    let Some(s) = server(backend, |o| o).await else {
        return;
    };
    let created = s
        .post(
            "/v1/tasks",
            &json!({"name": "reviews", "labels": ["neg", "pos"], "settings": {"knn_k": 5}}),
        )
        .await;
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(created.1["name"], "reviews");
    assert_eq!(created.1["settings"]["knn_k"], 5);
    assert_eq!(
        created.1["settings"]["alpha"], 0.9,
        "unmentioned settings take defaults"
    );
    assert_eq!(created.1["active_model_version"], Value::Null);

    assert_error(
        &s.post(
            "/v1/tasks",
            &json!({"name": "reviews", "labels": ["a", "b"]}),
        )
        .await,
        409,
        "task_exists",
    );
    assert_error(
        &s.post(
            "/v1/tasks",
            &json!({"name": "bad name", "labels": ["a", "b"]}),
        )
        .await,
        422,
        "invalid_task_name",
    );
    assert_error(
        &s.post("/v1/tasks", &json!({"name": "one", "labels": ["a"]}))
            .await,
        422,
        "invalid_labels",
    );
    assert_error(
        &s.post("/v1/tasks", &json!({"name": "dup", "labels": ["a", "a"]}))
            .await,
        422,
        "invalid_labels",
    );
    assert_error(
        &s.post(
            "/v1/tasks",
            &json!({"name": "s", "labels": ["a", "b"], "settings": {"alpha": 2}}),
        )
        .await,
        422,
        "invalid_settings",
    );
    assert_error(
        &s.post(
            "/v1/tasks",
            &json!({"name": "s", "labels": ["a", "b"], "settings": {"nope": 1}}),
        )
        .await,
        422,
        "invalid_settings",
    );
    assert_error(
        &s.post("/v1/tasks", &json!({"name": "s"})).await,
        422,
        "invalid_body",
    );

    s.post(
        "/v1/tasks",
        &json!({"name": "topics", "labels": ["x", "y", "z"]}),
    )
    .await;
    let (status, list) = s.get("/v1/tasks").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["reviews", "topics"]);

    let (status, got) = s.get("/v1/tasks/topics").await;
    assert_eq!(status, 200);
    assert_eq!(got["labels"], json!(["x", "y", "z"]));
    assert_error(&s.get("/v1/tasks/nope").await, 404, "not_found");

    let (status, patched) = s
        .patch(
            "/v1/tasks/topics",
            &json!({"settings": {"tau": "fit", "train": {"epochs": 7}}}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["settings"]["tau"], "fit");
    assert_eq!(patched["settings"]["train"]["epochs"], 7);
    assert_eq!(patched["settings"]["train"]["batch_size"], 128);
    assert_error(
        &s.patch("/v1/tasks/topics", &json!({"settings": {"tau": "auto"}}))
            .await,
        422,
        "invalid_settings",
    );

    let (status, _) = s.delete("/v1/tasks/topics").await;
    assert_eq!(status, 204);
    assert_error(&s.get("/v1/tasks/topics").await, 404, "not_found");
    assert_error(&s.delete("/v1/tasks/topics").await, 404, "not_found");
    s.finish().await;
}
both_backends!(tasks_crud_and_errors, super::tasks_crud);

async fn ingest_round_trip(backend: Backend) {
    let Some(s) = server(backend, |o| o).await else {
        return;
    };
    s.post("/v1/tasks", &json!({"name": "t", "labels": ["neg", "pos"]}))
        .await;
    let batch = json!({"examples": [
        example("a", "a wonderful film", json!([{"source": "rules", "label": "pos"}])),
        example("b", "a dull film", json!([{"source": "rules", "scores": {"neg": 0.8, "pos": 0.2}, "confidence": 0.5}])),
        example("c", "no labels yet", json!([])),
        {"id": "d", "text": "gold only", "gold_label": "neg"},
    ]});
    let (status, body) = s.post("/v1/tasks/t/examples", &batch).await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    assert!(results.iter().all(|r| r["created"] == true));
    assert_eq!(results[0]["decision"]["source"], "weak_refined");
    assert_eq!(results[0]["decision"]["label"], "pos");
    assert_eq!(
        results[0]["decision"]["p_ik_source"], "none",
        "no model version: no P(IK)"
    );
    assert_eq!(results[3]["decision"]["source"], "gold");
    assert_eq!(results[3]["decision"]["label"], "neg");

    let (status, a) = s.get("/v1/tasks/t/examples/a").await;
    assert_eq!(status, 200);
    assert_eq!(a["text"], "a wonderful film");
    assert_eq!(a["weak_labels"][0]["source"], "rules");
    assert_eq!(a["weak_labels"][0]["label"], "pos");
    assert_eq!(
        a["prediction"],
        Value::Null,
        "predictions are not invented before a model exists"
    );
    assert_eq!(a["decisions"].as_array().unwrap().len(), 1);
    let (_, b) = s.get("/v1/tasks/t/examples/b").await;
    assert_eq!(
        b["weak_labels"][0]["scores"],
        json!({"neg": 0.8, "pos": 0.2})
    );
    assert_eq!(b["weak_labels"][0]["confidence"], 0.5);

    // Re-sending is idempotent; a new source adds a label, the same source replaces its own.
    let resend = json!({"examples": [
        example("a", "a wonderful film", json!([{"source": "rules", "label": "pos"}, {"source": "crowd", "label": "neg"}])),
        example("b", "a dull film", json!([{"source": "rules", "label": "pos"}])),
    ]});
    let (status, body) = s.post("/v1/tasks/t/examples", &resend).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["created"] == false));
    let (_, a) = s.get("/v1/tasks/t/examples/a").await;
    assert_eq!(a["weak_labels"].as_array().unwrap().len(), 2);
    assert_eq!(
        a["weak_aggregate"]["scores"],
        json!({"neg": 0.5, "pos": 0.5})
    );
    let (_, b) = s.get("/v1/tasks/t/examples/b").await;
    assert_eq!(b["weak_labels"].as_array().unwrap().len(), 1);
    assert_eq!(b["weak_labels"][0]["label"], "pos");
    let (_, task) = s.get("/v1/tasks/t").await;
    assert_eq!(task["examples"], 4, "no duplicates: {task}");
    assert_eq!(task["gold_examples"], 1);

    // Weak labels and gold labels on an existing example.
    let (status, c) = s
        .post(
            "/v1/tasks/t/examples/c/weak_labels",
            &json!({"weak_labels": [{"source": "model", "scores": [0.3, 0.7]}]}),
        )
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["weak_aggregate"]["label"], "pos");
    let (status, c) = s
        .put("/v1/tasks/t/examples/c/gold", &json!({"label": "neg"}))
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["gold_label"], "neg");
    assert_eq!(c["decision"]["source"], "gold");
    assert_eq!(c["decision"]["label"], "neg");
    assert!(
        c["decisions"].as_array().unwrap().len() >= 2,
        "history keeps earlier decisions: {c}"
    );

    // Cursor paging visits every example once.
    let mut seen = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tasks/t/examples?limit=3&after={c}"),
            None => "/v1/tasks/t/examples?limit=3".to_string(),
        };
        let (status, page) = s.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["examples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, vec!["a", "b", "c", "d"]);
    assert_error(
        &s.get("/v1/tasks/t/examples?after=zzz").await,
        400,
        "invalid_cursor",
    );
    assert_error(
        &s.get("/v1/tasks/t/examples?limit=0").await,
        422,
        "invalid_limit",
    );
    assert_error(
        &s.get("/v1/tasks/t/examples?limit=abc").await,
        400,
        "invalid_query",
    );
    assert_error(&s.get("/v1/tasks/t/examples/zzz").await, 404, "not_found");
    s.finish().await;
}
both_backends!(
    ingest_round_trip_idempotency_and_paging,
    super::ingest_round_trip
);

async fn bad_inputs(backend: Backend) {
    let Some(s) = server(backend, |o| {
        o.flag("max-batch-examples", "3")
            .flag("max-text-chars", "40")
            .flag("max-body-bytes", "4096")
    })
    .await
    else {
        return;
    };
    s.post("/v1/tasks", &json!({"name": "t", "labels": ["neg", "pos"]}))
        .await;
    malformed_requests(&s).await;
    invalid_examples_write_nothing(&s).await;
    limits_and_duplicates(&s).await;
    text_conflicts(&s).await;
    other_routes(&s).await;
    s.finish().await;
}

fn ingest(examples: Value) -> Value {
    json!({ "examples": examples })
}

fn ok_example() -> Value {
    example("ok1", "fine text", json!([{"source": "r", "label": "pos"}]))
}

/// Bodies that are not JSON, not the right JSON, or sent to an unknown task.
async fn malformed_requests(s: &TestServer) {
    assert_error(
        &s.post_raw(
            "/v1/tasks/t/examples",
            "application/json",
            b"{\"examples\": [".to_vec(),
        )
        .await,
        400,
        "malformed_json",
    );
    assert_error(
        &s.post_raw("/v1/tasks/t/examples", "text/plain", b"{}".to_vec())
            .await,
        415,
        "unsupported_media_type",
    );
    assert_error(
        &s.post("/v1/tasks/t/examples", &json!({"examples": "nope"}))
            .await,
        422,
        "invalid_body",
    );
    assert_error(
        &s.post("/v1/tasks/nope/examples", &ingest(json!([ok_example()])))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &s.post("/v1/tasks/t/examples", &ingest(json!([]))).await,
        422,
        "empty_batch",
    );
}

/// Every kind of invalid example, each after a valid one in its batch: a clear 422 that names
/// the example, and nothing written.
async fn invalid_examples_write_nothing(s: &TestServer) {
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            example("x", "t", json!([{"source": "r", "label": "maybe"}])),
            422,
            "label_not_in_task",
        ),
        (example("x", "   ", json!([])), 422, "empty_text"),
        (
            json!({"id": "x", "text": "t", "gold_picked": "review"}),
            422,
            "invalid_gold_picked",
        ),
        (
            json!({"id": "x", "text": "t", "gold_label": "neg", "gold_picked": "later"}),
            422,
            "invalid_body",
        ),
        (
            example("x", &"long ".repeat(20), json!([])),
            422,
            "text_too_long",
        ),
        (example("", "t", json!([])), 422, "invalid_id"),
        (
            example(
                "x",
                "t",
                json!([{"source": "r", "scores": {"neg": 0.5, "other": 0.5}}]),
            ),
            422,
            "scores_label_mismatch",
        ),
        (
            example(
                "x",
                "t",
                json!([{"source": "r", "scores": [0.2, 0.3, 0.5]}]),
            ),
            422,
            "scores_label_mismatch",
        ),
        (
            example(
                "x",
                "t",
                json!([{"source": "r", "scores": {"neg": 0.5, "pos": 0.6}}]),
            ),
            422,
            "scores_not_normalized",
        ),
        (
            example("x", "t", json!([{"source": "r", "scores": [1.5, -0.5]}])),
            422,
            "invalid_scores",
        ),
        (
            example(
                "x",
                "t",
                json!([{"source": "r", "label": "pos", "scores": [0.5, 0.5]}]),
            ),
            422,
            "invalid_weak_label",
        ),
        (
            example("x", "t", json!([{"source": "r"}])),
            422,
            "invalid_weak_label",
        ),
        (
            example(
                "x",
                "t",
                json!([{"source": "r", "label": "pos", "confidence": 0}]),
            ),
            422,
            "invalid_confidence",
        ),
        (
            example(
                "x",
                "t",
                json!([{"source": "r", "label": "pos"}, {"source": "r", "label": "neg"}]),
            ),
            422,
            "duplicate_weak_source",
        ),
        (
            json!({"id": "x", "text": "t", "gold_label": "maybe"}),
            422,
            "label_not_in_task",
        ),
        (
            json!({"id": "x", "text": "t", "extra": 1}),
            422,
            "invalid_body",
        ),
    ];
    for (bad, status, code) in cases {
        // The bad example comes after a good one: the good one must not be written either.
        let resp = s
            .post(
                "/v1/tasks/t/examples",
                &ingest(json!([ok_example(), bad.clone()])),
            )
            .await;
        assert_error(&resp, status, code);
        let message = resp.1["error"]["message"].as_str().unwrap();
        if status == 422 && code != "invalid_body" {
            assert!(
                message.contains("examples[1]"),
                "the message names the example: {message}"
            );
        }
    }
    let (_, task) = s.get("/v1/tasks/t").await;
    assert_eq!(
        task["examples"], 0,
        "rejected batches wrote nothing: {task}"
    );
}

/// Duplicate ids in a batch, too many examples, too large a body.
async fn limits_and_duplicates(s: &TestServer) {
    assert_error(
        &s.post(
            "/v1/tasks/t/examples",
            &ingest(json!([ok_example(), ok_example()])),
        )
        .await,
        422,
        "duplicate_id",
    );
    let four: Vec<Value> = (0..4)
        .map(|i| example(&format!("e{i}"), "t", json!([])))
        .collect();
    assert_error(
        &s.post("/v1/tasks/t/examples", &ingest(json!(four))).await,
        413,
        "too_large",
    );
    let huge = json!({"examples": [example("big", &"x".repeat(5000), json!([]))]});
    assert_error(
        &s.post("/v1/tasks/t/examples", &huge).await,
        413,
        "too_large",
    );
}

/// A changed text under a known id is a conflict, and the whole batch is rejected.
async fn text_conflicts(s: &TestServer) {
    let (status, _) = s
        .post("/v1/tasks/t/examples", &ingest(json!([ok_example()])))
        .await;
    assert_eq!(status, 200);
    let conflict = s
        .post(
            "/v1/tasks/t/examples",
            &ingest(json!([
                example("new1", "t", json!([])),
                example("ok1", "another text", json!([]))
            ])),
        )
        .await;
    assert_error(&conflict, 409, "example_text_conflict");
    assert_eq!(conflict.1["error"]["details"]["ids"], json!(["ok1"]));
    assert_error(&s.get("/v1/tasks/t/examples/new1").await, 404, "not_found");
}

/// Gold labels, weak labels, embed and predict refuse bad input the same way.
async fn other_routes(s: &TestServer) {
    assert_error(
        &s.put("/v1/tasks/t/examples/ok1/gold", &json!({"label": "maybe"}))
            .await,
        422,
        "label_not_in_task",
    );
    assert_error(
        &s.put("/v1/tasks/t/examples/zzz/gold", &json!({"label": "pos"}))
            .await,
        404,
        "not_found",
    );
    assert_error(
        &s.post(
            "/v1/tasks/t/examples/ok1/weak_labels",
            &json!({"weak_labels": []}),
        )
        .await,
        422,
        "empty_batch",
    );
    assert_error(&s.get("/v1/nowhere").await, 404, "not_found");
    assert_error(&s.delete("/v1/embed").await, 405, "method_not_allowed");
    assert_error(
        &s.post("/v1/embed", &json!({"texts": []})).await,
        422,
        "empty_batch",
    );
    assert_error(
        &s.post("/v1/tasks/t/predict", &json!({"texts": ["", "x"]}))
            .await,
        422,
        "empty_text",
    );
}
both_backends!(
    bad_inputs_get_clear_4xx_and_write_nothing,
    super::bad_inputs
);

async fn call(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = s.client.request(method, s.url(path));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.unwrap()
}

/// Admin keys from `--api-key` (a comma list), scoped and task-bound keys from a key file
/// re-read when it changes; 401 with `WWW-Authenticate` without a valid key, 403 for a
/// valid key without the scope or the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_keys_guard_v1_but_not_health() {
    use reqwest::Method;
    let keys = tempfile::NamedTempFile::new().unwrap();
    let entry = |name: &str, key: &str, scope: &str, tasks: Option<&[&str]>| {
        let mut e = json!({"name": name, "sha256": sw2s::api::auth::hash_key(key), "scope": scope});
        if let Some(t) = tasks {
            e["tasks"] = json!(t);
        }
        e
    };
    let file = json!({"keys": [
        entry("reader", "k-read", "read", None),
        entry("pipeline-a", "k-write-a", "write", Some(&["a"])),
    ]});
    std::fs::write(keys.path(), file.to_string()).unwrap();
    let Some(s) = server(Backend::Sqlite, |o| {
        o.flag("api-key", "s3cret, second")
            .flag("keys-file", &keys.path().display().to_string())
    })
    .await
    else {
        return;
    };
    let none = call(&s, Method::GET, "/v1/tasks", None, None).await;
    let challenges: Vec<&str> = none
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        challenges,
        [
            "Bearer realm=\"sw2s\"",
            "Basic realm=\"sw2s\", charset=\"UTF-8\""
        ]
    );
    assert_error(&crate::common::status_json(none).await, 401, "unauthorized");
    let wrong = call(&s, Method::GET, "/v1/tasks", Some("nope"), None).await;
    assert_error(
        &crate::common::status_json(wrong).await,
        401,
        "unauthorized",
    );
    for admin in ["s3cret", "second"] {
        assert_eq!(
            call(&s, Method::GET, "/v1/tasks", Some(admin), None)
                .await
                .status(),
            200
        );
    }
    for name in ["a", "b"] {
        let r = call(
            &s,
            Method::POST,
            "/v1/tasks",
            Some("s3cret"),
            Some(json!({"name": name, "labels": ["neg", "pos"]})),
        )
        .await;
        assert_eq!(r.status(), 201);
    }
    // The dashboard: the same keys (a browser sends them as Basic), assets for everyone, and a
    // key bound to task a does not see task b's page.
    let page = |path: &str, user_key: Option<&str>| {
        let mut r = s.client.get(s.url(path));
        if let Some(k) = user_key {
            r = r.basic_auth("lead", Some(k));
        }
        r.send()
    };
    assert_eq!(page("/ui/", None).await.unwrap().status(), 401);
    let ok = page("/ui/tasks/a", Some("k-read")).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(ok.text().await.unwrap().contains("/ui/assets/dashboard.js"));
    assert_eq!(
        page("/ui/tasks/b/review", Some("k-write-a"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(page("/ui/assets/ui.css", None).await.unwrap().status(), 200);
    assert_eq!(
        page("/ui/assets/nope.js", None).await.unwrap().status(),
        404
    );
    let batch =
        json!({"examples": [example("e1", "good", json!([{"source": "s", "label": "pos"}]))]});
    // A read key reads but does not write.
    assert_eq!(
        call(&s, Method::GET, "/v1/tasks/a", Some("k-read"), None)
            .await
            .status(),
        200
    );
    let r = call(
        &s,
        Method::POST,
        "/v1/tasks/a/examples",
        Some("k-read"),
        Some(batch.clone()),
    )
    .await;
    let (status, body) = crate::common::status_json(r).await;
    assert_error(&(status, body.clone()), 403, "forbidden");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("write"),
        "{body}"
    );
    // A write key bound to task a writes there, and nowhere else; it cannot create tasks.
    let r = call(
        &s,
        Method::POST,
        "/v1/tasks/a/examples",
        Some("k-write-a"),
        Some(batch.clone()),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = call(
        &s,
        Method::POST,
        "/v1/tasks/b/examples",
        Some("k-write-a"),
        Some(batch.clone()),
    )
    .await;
    assert_error(&crate::common::status_json(r).await, 403, "forbidden");
    let r = call(&s, Method::GET, "/v1/tasks/%62", Some("k-write-a"), None).await;
    assert_error(&crate::common::status_json(r).await, 403, "forbidden");
    let r = call(&s, Method::DELETE, "/v1/tasks/a", Some("k-write-a"), None).await;
    assert_error(&crate::common::status_json(r).await, 403, "forbidden");
    // Health and readiness stay open.
    assert_eq!(s.get("/health").await.0, 200);
    assert_eq!(s.get("/ready").await.0, 200);
    // The key file is re-read when it changes: the reader's key stops working.
    std::fs::write(
        keys.path(),
        json!({"keys": [entry("pipeline-a", "k-write-a", "write", Some(&["a"]))]}).to_string(),
    )
    .unwrap();
    let mut revoked = false;
    for _ in 0..100 {
        if call(&s, Method::GET, "/v1/tasks", Some("k-read"), None)
            .await
            .status()
            == 401
        {
            revoked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(revoked, "the key file change was not picked up");
    assert_eq!(
        call(&s, Method::GET, "/v1/tasks/a", Some("k-write-a"), None)
            .await
            .status(),
        200
    );
    s.finish().await;
}

#[test]
fn keys_that_would_turn_auth_off_are_refused() {
    use clap::Parser;
    let parse = |extra: &[&str]| {
        let mut argv = vec![
            "sw2s",
            "serve",
            "--data-dir",
            "/nonexistent/sw2s-never-created",
        ];
        argv.extend_from_slice(extra);
        let sw2s::cli::Command::Serve(args) = sw2s::cli::Cli::try_parse_from(argv).unwrap().command
        else {
            unreachable!()
        };
        args
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (flags, why) in [
        (vec!["--api-key", ""], "empty key"),
        (vec!["--api-key", "a,,b"], "empty key in a list"),
        (vec!["--addr", "0.0.0.0:0"], "no key off loopback"),
    ] {
        let args = parse(&flags);
        let err = rt.block_on(sw2s::server::start(&args)).err();
        assert!(err.is_some(), "{why}: the server started");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_endpoints_answer() {
    let Some(s) = server(Backend::Sqlite, |o| o).await else {
        return;
    };
    assert_eq!(s.get("/health").await, (200, json!({"status": "ok"})));
    assert_eq!(s.get("/ready").await, (200, json!({"status": "ready"})));
    let (status, info) = s.get("/info").await;
    assert_eq!(status, 200);
    assert_eq!(info["model"]["model_id"], "sw2s/tiny-random-bert");
    assert_eq!(info["model"]["dims"], 32);
    assert_eq!(info["model"]["max_length"], 64);
    assert_eq!(info["database"], "sqlite");
    assert_eq!(info["model"]["sha256"].as_str().unwrap().len(), 64);
    s.get("/v1/tasks").await;
    let metrics = s
        .client
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("sw2s_http_requests_total"), "{metrics}");
    assert!(metrics.contains("path=\"/v1/tasks\""), "{metrics}");
    s.finish().await;
}

/// The served OpenAPI document equals the checked-in one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_is_checked_in_and_served() {
    let Some(s) = server(Backend::Sqlite, |o| o).await else {
        return;
    };
    let served = s
        .client
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        served.trim() == checked_in.trim(),
        "openapi/openapi.json is out of date; regenerate it with:\n    cargo run -- openapi > openapi/openapi.json"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    for path in [
        "/v1/tasks",
        "/v1/tasks/{task}/examples",
        "/v1/tasks/{task}/examples/{id}",
        "/v1/embed",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    s.finish().await;
}

/// Shutdown lets an in-flight request finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let Some(mut s) = server(Backend::Sqlite, |o| o).await else {
        return;
    };
    s.post("/v1/tasks", &json!({"name": "t", "labels": ["a", "b"]}))
        .await;
    let examples: Vec<Value> = (0..800)
        .map(|i| {
            example(
                &format!("e{i}"),
                &format!("example number {i} with some words"),
                json!([{"source": "r", "label": "a"}]),
            )
        })
        .collect();
    let request = s
        .client
        .post(s.url("/v1/tasks/t/examples"))
        .json(&json!({"examples": examples}))
        .send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    s.stop().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request got an answer");
    assert_eq!(response.status(), 200);
    // The write was durable: a restarted server sees all of it.
    s.launch(&[]).await;
    let (_, task) = s.get("/v1/tasks/t").await;
    assert_eq!(task["examples"], 800);
    s.finish().await;
}
