//! The decision log over HTTP: append-only history, the streamed JSON-lines export with its
//! filters (across several pages), and the review queue.

use std::collections::HashSet;

use crate::common::{assert_error, Backend, ModelKind, Options, TestServer};
use serde_json::{json, Value};

async fn export(s: &TestServer, query: &str) -> Vec<Value> {
    let r = s
        .client
        .get(s.url(&format!("/v1/tasks/t/decisions{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let body = r.text().await.unwrap();
    body.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

async fn decision_log(backend: Backend) {
    let Some(s) = TestServer::start(Options::new(backend, ModelKind::Tiny)).await else {
        return;
    };
    s.post("/v1/tasks", &json!({"name": "t", "labels": ["neg", "pos"]}))
        .await;
    // 1,300 examples: the export crosses its 1,000-row pages.
    for chunk in (0..1300).collect::<Vec<usize>>().chunks(650) {
        let examples: Vec<Value> = chunk
            .iter()
            .map(|i| {
                let label = if i % 2 == 0 { "pos" } else { "neg" };
                json!({"id": format!("e{i}"), "text": format!("review {i} says {label}"), "weak_labels": [{"source": "r", "label": label}]})
            })
            .collect();
        let (status, body) = s
            .post("/v1/tasks/t/examples", &json!({ "examples": examples }))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let before_gold = sw2s::store::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    for i in 0..10 {
        let (status, _) = s
            .put(
                &format!("/v1/tasks/t/examples/e{i}/gold"),
                &json!({"label": "neg"}),
            )
            .await;
        assert_eq!(status, 200);
    }

    let all = export(&s, "").await;
    assert!(
        all.len() >= 1310,
        "every decision, across pages: {}",
        all.len()
    );
    let ids: Vec<i64> = all
        .iter()
        .map(|d| d["decision_id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "oldest first, no repeats"
    );
    let first = &all[0];
    for field in [
        "id",
        "label",
        "source",
        "p_ik_source",
        "weak",
        "refined",
        "graph_version",
        "reason",
        "created_at",
        "current",
    ] {
        assert!(
            first.get(field).is_some(),
            "export line lacks {field}: {first}"
        );
    }

    let gold = export(&s, "?source=gold").await;
    assert_eq!(gold.len(), 10);
    assert!(gold
        .iter()
        .all(|d| d["source"] == "gold" && d["label"] == "neg" && d["current"] == true));
    let since = export(&s, &format!("?since={before_gold}")).await;
    assert!(since
        .iter()
        .all(|d| d["created_at"].as_i64().unwrap() >= before_gold));
    assert!(since.iter().any(|d| d["source"] == "gold"));
    let until = export(&s, &format!("?until={before_gold}")).await;
    assert_eq!(until.len() + since.len(), all.len());
    let current = export(&s, "?current=true").await;
    assert_eq!(current.len(), 1300, "one current decision per example");
    let unique: HashSet<&str> = current.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), 1300);
    let e0: Vec<&Value> = all.iter().filter(|d| d["id"] == "e0").collect();
    assert!(
        e0.len() >= 2 && e0.last().unwrap()["source"] == "gold",
        "history is appended, not overwritten"
    );

    assert_error(
        &s.get("/v1/tasks/t/decisions?source=oracle").await,
        422,
        "invalid_source",
    );
    assert_error(
        &s.get("/v1/tasks/t/decisions?since=yesterday").await,
        400,
        "invalid_query",
    );
    assert_error(&s.get("/v1/tasks/nope/decisions").await, 404, "not_found");

    let (status, queue) = s.get("/v1/tasks/t/review_queue?limit=5").await;
    assert_eq!(status, 200, "{queue}");
    let items = queue["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(|i| i["gold_label"].is_null()
        && !i["reason"].as_str().unwrap().is_empty()
        && i["picked"] == "review"));
    assert_error(
        &s.get("/v1/tasks/t/review_queue?limit=0").await,
        422,
        "invalid_limit",
    );

    // The fair sample: unlabelled examples only, the same page twice, spread over the task
    // (not the first ingested), and a label given moves the page on by one.
    let sample = |limit: usize| {
        let s = &s;
        async move {
            let (status, q) = s
                .get(&format!(
                    "/v1/tasks/t/review_queue?order=sample&limit={limit}"
                ))
                .await;
            assert_eq!(status, 200, "{q}");
            let items = q["items"].as_array().cloned().unwrap_or_default();
            assert!(items.iter().all(|i| i["gold_label"].is_null()
                && i["reason"].as_str().unwrap().starts_with("fair sample")
                && i["picked"] == "random"));
            items
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let page = sample(100).await;
    assert_eq!(page.len(), 100);
    assert_eq!(page, sample(100).await, "a fixed order");
    let ordinal = |id: &str| id.trim_start_matches('e').parse::<usize>().unwrap();
    let late = page.iter().filter(|id| ordinal(id) >= 650).count();
    assert!(
        (30..=70).contains(&late),
        "{late} of 100 from the later half of the ingest order"
    );
    let (status, body) = s
        .put(
            &format!("/v1/tasks/t/examples/{}/gold", page[0]),
            &json!({"label": "pos"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        sample(99).await,
        page[1..],
        "the rest of the page stays put"
    );
    assert_error(
        &s.get("/v1/tasks/t/review_queue?order=random").await,
        422,
        "invalid_order",
    );
    s.finish().await;
}
both_backends!(decision_log_export_and_review_queue, super::decision_log);
