//! Graph smoothing on real data: SST-2 sentences embedded with the real MiniLM, weak labels
//! from two simulated labelers, ingested over HTTP. Turned on (as a user may do on a task
//! known to be balanced), smoothing must make the weak labels more accurate; left at its
//! default with no gold label to check it against, it must leave them as they are.

use crate::common::{Backend, ModelKind, Options, TestServer};
use crate::data::read_rows;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const N: usize = 1200;

async fn ingest(
    s: &TestServer,
    task: &str,
    settings: Value,
    texts: &[(String, String)],
    weak: &[usize],
) {
    let (status, body) = s
        .post(
            "/v1/tasks",
            &json!({"name": task, "labels": ["negative", "positive"], "settings": settings}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let examples: Vec<Value> = texts
        .iter()
        .zip(weak)
        .map(|((id, text), &l)| {
            let label = ["negative", "positive"][l];
            json!({"id": id, "text": text, "weak_labels": [{"source": "noisy", "label": label}]})
        })
        .collect();
    crate::data::ingest(s, task, &examples, 100).await;
}

/// Refined labels by example id.
async fn refined_labels(s: &TestServer, task: &str) -> std::collections::HashMap<String, String> {
    crate::data::all_examples(s, task)
        .await
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["refined_label"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoothing_improves_noisy_weak_labels_on_sst2() {
    if !crate::data::have_datasets() {
        return;
    }
    let mut rows = read_rows("sst2/validation.jsonl", N);
    rows.extend(read_rows("sst2/test.jsonl", N - rows.len()));
    let texts: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.id.clone(), r.text.clone()))
        .collect();
    let gold: Vec<usize> = rows.iter().map(|r| r.label).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    // Labeler 1: 30% of labels flipped at random.
    let symmetric: Vec<usize> = gold
        .iter()
        .map(|&g| if rng.gen_bool(0.3) { 1 - g } else { g })
        .collect();
    // Labeler 2: class-dependent noise, a labeler that misses praise (35% of positives called
    // negative, 10% of negatives called positive).
    let skewed: Vec<usize> = gold
        .iter()
        .map(|&g| {
            if rng.gen_bool(if g == 1 { 0.35 } else { 0.10 }) {
                1 - g
            } else {
                g
            }
        })
        .collect();

    let s = TestServer::start(Options::new(Backend::Sqlite, ModelKind::Real))
        .await
        .unwrap();
    let mut report = vec![];
    let on = json!({"smoothing": "on", "class_balance": "uniform"});
    for (task, weak) in [("symmetric", &symmetric), ("skewed", &skewed)] {
        ingest(&s, task, on.clone(), &texts, weak).await;
        let refined = refined_labels(&s, task).await;
        let raw_acc = weak.iter().zip(&gold).filter(|(w, g)| w == g).count() as f64 / N as f64;
        let refined_acc = rows
            .iter()
            .filter(|r| refined[&r.id] == ["negative", "positive"][r.label])
            .count() as f64
            / N as f64;
        eprintln!(
            "SST-2 ({N} sentences), {task} noise: raw weak {raw_acc:.3}, refined {refined_acc:.3}"
        );
        report.push((task, raw_acc, refined_acc));
    }
    for (task, raw, refined) in report {
        assert!(
            refined > raw + 0.02,
            "{task}: smoothing did not help: raw {raw:.3}, refined {refined:.3}"
        );
    }
    // Defaults, no gold: nothing can check smoothing, so it is bypassed and the refined
    // labels are the weak labels; the graph's own output is still there to see.
    ingest(&s, "unchecked", json!({}), &texts, &skewed).await;
    let refined = refined_labels(&s, "unchecked").await;
    let same = rows
        .iter()
        .zip(&skewed)
        .filter(|(r, &w)| refined[&r.id] == ["negative", "positive"][w])
        .count();
    assert_eq!(
        same, N,
        "with smoothing unchecked the refined labels are the weak ones"
    );
    let (_, example) = s
        .get(&format!("/v1/tasks/unchecked/examples/{}", rows[0].id))
        .await;
    assert!(example["smoothed"]["label"].is_string(), "{example}");
    let (_, report) = s.get("/v1/tasks/unchecked/report").await;
    assert_eq!(report["stages"][1]["stage"], "smoothing");
    assert_eq!(report["stages"][1]["on"], false, "{report}");
    assert!(
        report["stages"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("bypassed"),
        "{report}"
    );
    s.finish().await;
}
