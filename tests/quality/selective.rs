//! The method end to end, over HTTP, with the real MiniLM on real data: SST-2 training
//! sentences with noisy weak labels, a small gold set from "annotators", a `head` job; then
//! the current decisions must be no worse than the refined weak labels and clearly better
//! than the raw ones, every stage must say on the gold figures why it is on or off, and
//! P(IK) must rank the strong model's correct predictions above its wrong ones.

use std::collections::HashMap;
use std::time::Instant;

use crate::common::{Backend, ModelKind, Options, TestServer};
use crate::data::{all_examples, have_datasets, read_rows, run_job, settled, Row};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const N: usize = 3000;
const GOLD: usize = 300;
const LABELS: [&str; 2] = ["negative", "positive"];

/// Sentences of at least five words from SST-2 train (its short rows are phrases).
fn sentences() -> Vec<Row> {
    read_rows("sst2/train.jsonl", 60_000)
        .into_iter()
        .filter(|r| r.text.split_whitespace().count() >= 5)
        .take(N)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selective_decisions_beat_weak_labels_on_sst2() {
    if !have_datasets() {
        return;
    }
    let rows = sentences();
    assert_eq!(rows.len(), N);
    let truth: HashMap<String, usize> = rows.iter().map(|r| (r.id.clone(), r.label)).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // A weak labeler that is wrong on 30% of the sentences.
    let weak: HashMap<String, usize> = rows
        .iter()
        .map(|r| {
            (
                r.id.clone(),
                if rng.gen_bool(0.3) {
                    1 - r.label
                } else {
                    r.label
                },
            )
        })
        .collect();

    let s = TestServer::start(Options::new(Backend::Sqlite, ModelKind::Real))
        .await
        .unwrap();
    let (status, _) = s
        .post(
            "/v1/tasks",
            &json!({"name": "sst2", "labels": LABELS, "settings": {"tau": "fit"}}),
        )
        .await;
    assert_eq!(status, 201);
    let examples: Vec<Value> = rows
        .iter()
        .map(|r| json!({"id": r.id, "text": r.text, "weak_labels": [{"source": "noisy-rules", "label": LABELS[weak[&r.id]]}]}))
        .collect();
    crate::data::ingest(&s, "sst2", &examples, 250).await;
    // Annotators label a random sample.
    let mut gold_ids: Vec<&String> = truth.keys().collect();
    gold_ids.sort();
    gold_ids.shuffle(&mut rng);
    gold_ids.truncate(GOLD);
    for id in &gold_ids {
        let (status, body) = s
            .put(
                &format!("/v1/tasks/sst2/examples/{id}/gold"),
                &json!({"label": LABELS[truth[*id]]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    let started = Instant::now();
    let job = run_job(&s, "sst2", json!({"mode": "head"})).await;
    let wall = started.elapsed().as_secs_f64();
    settled(&s, "sst2").await;

    let examples = all_examples(&s, "sst2").await;
    assert_eq!(examples.len(), N);
    let gold: std::collections::HashSet<&str> = gold_ids.iter().map(|s| s.as_str()).collect();
    let (mut n, mut raw_ok, mut refined_ok, mut decided_ok) = (0, 0, 0, 0);
    let mut sources: HashMap<String, (usize, usize)> = HashMap::new();
    let (mut scores, mut correct) = (vec![], vec![]);
    for e in &examples {
        let id = e["id"].as_str().unwrap();
        if gold.contains(id) {
            continue;
        }
        let t = LABELS[truth[id]];
        n += 1;
        raw_ok += usize::from(LABELS[weak[id]] == t);
        refined_ok += usize::from(e["refined_label"] == t);
        let ok = e["decision"]["label"] == t;
        decided_ok += usize::from(ok);
        let entry = sources
            .entry(
                e["decision"]["source"]
                    .as_str()
                    .unwrap_or("none")
                    .to_string(),
            )
            .or_default();
        entry.0 += 1;
        entry.1 += usize::from(ok);
        if let (Some(q), Some(pred)) = (e["p_ik"].as_f64(), e["predicted_label"].as_str()) {
            scores.push(q as f32);
            correct.push(pred == t);
        }
    }
    let (raw, refined, decided) = (
        raw_ok as f64 / n as f64,
        refined_ok as f64 / n as f64,
        decided_ok as f64 / n as f64,
    );
    let strong_acc = correct.iter().filter(|c| **c).count() as f64 / correct.len() as f64;
    let auroc = sw2s::method::metrics::auroc(&scores, &correct).unwrap();
    eprintln!("SST-2, {N} sentences, 30% weak-label noise, {GOLD} gold; head job {wall:.1} s");
    eprintln!("  on the {n} non-gold examples: raw weak {raw:.3}, refined weak {refined:.3}, current decisions {decided:.3}");
    eprintln!(
        "  strong model {strong_acc:.3}; P(IK) AUROC {auroc:.3} (job: {})",
        job["metrics"]["pik"]
    );
    for stage in job["metrics"]["stages"].as_array().unwrap() {
        eprintln!("  stage {}: {}", stage["stage"], stage["reason"]);
    }
    for (source, (count, ok)) in &sources {
        eprintln!(
            "  decisions from {source}: {count}, {:.3} correct",
            *ok as f64 / *count as f64
        );
    }
    assert!(
        decided > raw + 0.03,
        "decisions {decided:.3} vs raw weak {raw:.3}"
    );
    assert!(
        decided >= refined,
        "decisions {decided:.3} vs refined weak {refined:.3}"
    );
    for stage in job["metrics"]["stages"].as_array().unwrap() {
        assert!(stage["gold"].as_u64().unwrap() > 0, "{stage}");
        assert!(
            stage["reason"].as_str().unwrap().contains("gold labels"),
            "{stage}"
        );
    }
    assert!(auroc > 0.6, "P(IK) AUROC {auroc:.3}");
    s.finish().await;
}
