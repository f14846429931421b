//! Labels that never get worse, over HTTP, on an imbalanced task: 2,000 real SST-2 sentences
//! of which 15% are positive, three weak sources that abstain on part of the texts and have
//! class-dependent noise (hard rules that miss many positives, a soft model, a small crowd),
//! 10% gold, one head job. The refined weak labels must be no worse than the raw ones (an
//! example no source labels counts as wrong for both), the decisions no worse than the
//! refined labels and clearly better than the raw ones, every decision must carry a
//! calibrated confidence, and `GET /sources` must equal the figures computed here from what
//! was sent. (With the frozen MiniLM the strong model does not beat the refined labels on
//! this task; its stage's gold check says so and keeps it off, so decisions equal them.)

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::common::{Backend, ModelKind, Options, TestServer};
use crate::data::{all_examples, have_datasets, ingest, read_rows, run_job, settled, Row};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const N: usize = 2000;
const POSITIVE_SHARE: f64 = 0.15;
const GOLD: usize = 200;
const LABELS: [&str; 2] = ["negative", "positive"];

/// Sentences of at least five words, 15% positive, in file order.
fn rows() -> Vec<Row> {
    let all: Vec<Row> = read_rows("sst2/train.jsonl", 67_349)
        .into_iter()
        .filter(|r| r.text.split_whitespace().count() >= 5)
        .collect();
    let positives = (N as f64 * POSITIVE_SHARE).round() as usize;
    let mut pos = all.iter().filter(|r| r.label == 1).take(positives);
    let mut neg = all.iter().filter(|r| r.label == 0).take(N - positives);
    let mut out: Vec<Row> = pos.by_ref().cloned().chain(neg.by_ref().cloned()).collect();
    out.shuffle(&mut rand::rngs::StdRng::seed_from_u64(3));
    out
}

const POSITIVE_WORDS: &[&str] = &[
    "good",
    "great",
    "best",
    "fun",
    "funny",
    "beautiful",
    "love",
    "moving",
    "wonderful",
    "charming",
    "delightful",
    "enjoyable",
    "brilliant",
    "fine",
    "entertaining",
    "fresh",
    "smart",
    "solid",
    "powerful",
    "touching",
    "perfect",
    "terrific",
    "impressive",
];
const NEGATIVE_WORDS: &[&str] = &[
    "bad",
    "worst",
    "dull",
    "boring",
    "mess",
    "stupid",
    "waste",
    "awful",
    "flat",
    "tired",
    "lame",
    "failure",
    "nothing",
    "pretentious",
    "tedious",
    "unfunny",
    "mediocre",
    "poor",
    "ugly",
    "dumb",
    "annoying",
    "predictable",
    "no",
    "not",
    "never",
];

/// The lexicon rule: the side with more hits, or no label.
fn lexicon(text: &str) -> Option<usize> {
    let words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .map(String::from)
        .collect();
    let count = |list: &[&str]| words.iter().filter(|w| list.contains(&w.as_str())).count();
    let (pos, neg) = (count(POSITIVE_WORDS), count(NEGATIVE_WORDS));
    match pos.cmp(&neg) {
        std::cmp::Ordering::Greater => Some(1),
        std::cmp::Ordering::Less => Some(0),
        std::cmp::Ordering::Equal => None,
    }
}

/// One source's vote: the label it favours and what is sent.
#[derive(Clone)]
struct Vote {
    source: &'static str,
    label: usize,
    body: Value,
}

/// Three sources with their own noise (seeded).
fn votes(rows: &[Row]) -> HashMap<String, Vec<Vote>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    rows.iter()
        .map(|r| {
            let y = r.label;
            let mut v = vec![];
            // Keyword rules: a sentiment lexicon, abstaining when it finds nothing or a tie;
            // its mistakes follow the text (negation, irony), as real rules' do.
            if let Some(l) = lexicon(&r.text) {
                v.push(Vote {
                    source: "rules",
                    label: l,
                    body: json!({"source": "rules", "label": LABELS[l]}),
                });
            }
            // A small model: soft scores on the 60% of texts it was built for, right 80% of
            // the time.
            if rng.gen_bool(0.6) {
                let right = rng.gen_bool(0.8);
                let p: f64 = rng.gen_range(0.55..0.95);
                let favoured = if right { y } else { 1 - y };
                let mut scores = [0.0; 2];
                scores[favoured] = p;
                scores[1 - favoured] = 1.0 - p;
                v.push(Vote {
                    source: "model",
                    label: favoured,
                    body: json!({"source": "model", "scores": {"negative": scores[0], "positive": scores[1]}, "confidence": 0.9}),
                });
            }
            // A crowd labels 30% of the texts, 78% right.
            if rng.gen_bool(0.3) {
                let l = if rng.gen_bool(0.78) { y } else { 1 - y };
                v.push(Vote {
                    source: "crowd",
                    label: l,
                    body: json!({"source": "crowd", "label": LABELS[l]}),
                });
            }
            (r.id.clone(), v)
        })
        .collect()
}

/// The raw weak label: the confidence-weighted mean of the votes (the server's fallback
/// aggregate, recomputed here from what was sent).
fn raw_label(votes: &[Vote]) -> Option<usize> {
    let mut mass = [0.0f64; 2];
    for v in votes {
        if let Some(scores) = v.body.get("scores") {
            let c = v.body["confidence"].as_f64().unwrap_or(1.0);
            mass[0] += c * scores["negative"].as_f64().unwrap();
            mass[1] += c * scores["positive"].as_f64().unwrap();
        } else {
            mass[v.label] += 1.0;
        }
    }
    (mass[0] + mass[1] > 0.0).then(|| usize::from(mass[1] > mass[0]))
}

/// /sources against the figures computed from the votes sent.
fn check_sources(
    sources: &Value,
    votes: &HashMap<String, Vec<Vote>>,
    truth: &HashMap<String, usize>,
    gold: &HashSet<String>,
) {
    let n = votes.len() as f64;
    let listed = sources["sources"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{sources}");
    assert_eq!(sources["examples"], N);
    for name in ["crowd", "model", "rules"] {
        let (mut count, mut overlap, mut conflict, mut gold_votes, mut gold_right) =
            (0, 0, 0, 0, 0);
        let mut polarity: BTreeMap<&str, i64> = BTreeMap::new();
        for (id, vs) in votes {
            let Some(mine) = vs.iter().find(|v| v.source == name) else {
                continue;
            };
            count += 1;
            *polarity.entry(LABELS[mine.label]).or_default() += 1;
            if vs.iter().any(|v| v.source != name) {
                overlap += 1;
            }
            if vs.iter().any(|v| v.source != name && v.label != mine.label) {
                conflict += 1;
            }
            if gold.contains(id) {
                gold_votes += 1;
                gold_right += usize::from(mine.label == truth[id]);
            }
        }
        let got = listed.iter().find(|s| s["source"] == name).unwrap();
        let close = |field: &str, want: f64| {
            let v = got[field].as_f64().unwrap();
            assert!((v - want).abs() < 1e-9, "{name}.{field}: {v} vs {want}");
        };
        assert_eq!(got["votes"], count, "{name}");
        close("coverage", count as f64 / n);
        close("overlaps", overlap as f64 / n);
        close("conflicts", conflict as f64 / n);
        assert_eq!(got["gold_votes"], gold_votes, "{name}");
        close("empirical_accuracy", gold_right as f64 / gold_votes as f64);
        let want: Value = serde_json::to_value(&polarity).unwrap();
        assert_eq!(got["polarity"], want, "{name}");
        // The source model learned an accuracy near the empirical one.
        let learned = got["learned_accuracy"]
            .as_f64()
            .expect("learned accuracy after a job");
        assert!(
            (learned - gold_right as f64 / gold_votes as f64).abs() < 0.12,
            "{name}: learned {learned}"
        );
    }
}

async fn imbalanced_task(backend: Backend) {
    if !have_datasets() {
        return;
    }
    let Some(s) = TestServer::start(Options::new(backend, ModelKind::Real)).await else {
        return;
    };
    let rows = rows();
    assert_eq!(rows.len(), N);
    let truth: HashMap<String, usize> = rows.iter().map(|r| (r.id.clone(), r.label)).collect();
    let votes = votes(&rows);
    let (status, body) = s
        .post("/v1/tasks", &json!({"name": "imb", "labels": LABELS}))
        .await;
    assert_eq!(status, 201, "{body}");
    let examples: Vec<Value> = rows
        .iter()
        .map(|r| {
            let weak: Vec<&Value> = votes[&r.id].iter().map(|v| &v.body).collect();
            json!({"id": r.id, "text": r.text, "weak_labels": weak})
        })
        .collect();
    ingest(&s, "imb", &examples, 100).await;
    let mut ids: Vec<&String> = truth.keys().collect();
    ids.sort();
    ids.shuffle(&mut rand::rngs::StdRng::seed_from_u64(5));
    let gold: HashSet<String> = ids.iter().take(GOLD).map(|s| s.to_string()).collect();
    for id in &gold {
        let (status, body) = s
            .put(
                &format!("/v1/tasks/imb/examples/{id}/gold"),
                &json!({"label": LABELS[truth[id]]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Before any job nothing is checked: the report says so.
    let (status, report) = s.get("/v1/tasks/imb/report").await;
    assert_eq!(status, 200, "{report}");
    assert!(report["model_version"].is_null());
    assert_eq!(report["stages"][1]["on"], false, "{report}");

    let job = run_job(&s, "imb", json!({"mode": "head"})).await;
    settled(&s, "imb").await;
    let (_, report) = s.get("/v1/tasks/imb/report").await;
    eprintln!("report after the job: {report:#}");
    assert_eq!(report["model_version"], 1);
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 4);
    for st in stages {
        assert!(st["reason"].as_str().unwrap().len() > 10, "{st}");
        assert!(
            st["gold"].as_u64().unwrap() > 0 || !st["on"].as_bool().unwrap(),
            "{st}"
        );
    }
    assert_eq!(report["prior"]["source"], "gold", "{report}");
    let prior_positive = report["prior"]["shares"][1].as_f64().unwrap();
    assert!(
        (prior_positive - POSITIVE_SHARE).abs() < 0.06,
        "prior {prior_positive}"
    );

    let examples = all_examples(&s, "imb").await;
    assert_eq!(examples.len(), N);
    let (mut n, mut raw_ok, mut refined_ok, mut decided_ok) = (0, 0, 0, 0);
    let (mut conf, mut right) = (vec![], vec![]);
    for e in &examples {
        let id = e["id"].as_str().unwrap();
        if gold.contains(id) {
            continue;
        }
        let t = LABELS[truth[id]];
        n += 1;
        raw_ok += usize::from(raw_label(&votes[id]).map(|l| LABELS[l]) == Some(t));
        refined_ok += usize::from(e["refined_label"] == t);
        let ok = e["decision"]["label"] == t;
        decided_ok += usize::from(ok);
        if let Some(c) = e["decision"]["confidence"].as_f64() {
            conf.push(c as f32);
            right.push(ok);
        }
    }
    let (raw, refined, decided) = (
        raw_ok as f64 / n as f64,
        refined_ok as f64 / n as f64,
        decided_ok as f64 / n as f64,
    );
    let ece = sw2s::method::metrics::ece(&conf, &right, 10);
    eprintln!(
        "{backend:?}: {n} non-gold examples, 15% positive: raw weak {raw:.3}, refined {refined:.3}, decisions {decided:.3}; decision confidence ECE {ece:.3} over {} (job {})",
        conf.len(),
        job["metrics"]["stages"]
    );
    assert!(
        refined >= raw,
        "refined {refined:.3} is worse than raw {raw:.3}"
    );
    assert!(
        decided >= refined,
        "decisions {decided:.3} are worse than refined {refined:.3}"
    );
    assert!(
        decided > raw + 0.05,
        "decisions {decided:.3} vs raw {raw:.3}"
    );
    let strong_stage = &stages[2];
    if strong_stage["on"] == false {
        let differ: Vec<&Value> = examples
            .iter()
            .filter(|e| {
                !gold.contains(e["id"].as_str().unwrap_or(""))
                    && e["decision"]["label"] != e["refined_label"]
            })
            .take(3)
            .collect();
        assert!(
            differ.is_empty(),
            "strong off: decisions are the refined labels, but {differ:#?}"
        );
    }
    assert!(ece < 0.1, "decision confidence ECE {ece:.3}");
    assert_eq!(conf.len(), n, "every decision carries a confidence");

    let (status, sources) = s.get("/v1/tasks/imb/sources").await;
    assert_eq!(status, 200, "{sources}");
    check_sources(&sources, &votes, &truth, &gold);
    target_precision(&s, &truth, &gold).await;
    s.finish().await;
}

/// `target_precision = 0.9` set, one more head job: decisions below the fitted threshold
/// abstain (with the label they would have given) and lead the review queue; the accepted
/// ones are precise on the examples without gold too.
async fn target_precision(s: &TestServer, truth: &HashMap<String, usize>, gold: &HashSet<String>) {
    // `train_precision` (default 0.9): the first job fitted a training threshold; the next
    // job leaves out of training exactly the decisions less confident than it.
    let (_, report) = s.get("/v1/tasks/imb/report").await;
    let floor = report["train_precision"]["threshold"]
        .as_f64()
        .expect("a training threshold");
    assert!(
        report["train_precision"]["precision"].as_f64().unwrap() >= 0.9,
        "{report:#}"
    );
    let unsure = all_examples(s, "imb")
        .await
        .iter()
        .filter(|e| {
            !gold.contains(e["id"].as_str().unwrap_or(""))
                && e["decision"]["confidence"].as_f64().unwrap() < floor
        })
        .count();
    eprintln!(
        "train_precision 0.9: threshold {floor:.3}, {unsure} non-gold decisions below it (gold: {})",
        report["train_precision"]
    );
    assert!(
        unsure > 0,
        "some decisions under the training threshold {floor}"
    );
    let (status, body) = s
        .patch(
            "/v1/tasks/imb",
            &json!({"settings": {"target_precision": 0.9}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let job = run_job(s, "imb", json!({"mode": "head"})).await;
    let by_source = &job["metrics"]["training"]["examples_by_source"];
    assert_eq!(
        by_source["below_train_precision"].as_u64(),
        Some(unsure as u64),
        "{by_source}"
    );
    settled(s, "imb").await;
    let (_, report) = s.get("/v1/tasks/imb/report").await;
    let target = &report["target_precision"];
    let threshold = target["threshold"].as_f64().expect("a fitted threshold");
    // On gold (out of fold) the accepted decisions reach the target by construction, and
    // the report says so in words with the same threshold.
    assert!(target["precision"].as_f64().unwrap() >= 0.9, "{target:#}");
    let said = target["reason"].as_str().unwrap_or_default();
    assert!(
        said.starts_with(&format!("confidence >= {threshold:.3} reaches 0.9: ")),
        "{target:#}"
    );
    let examples = all_examples(s, "imb").await;
    let (mut accepted, mut right, mut abstained) = (0usize, 0usize, 0usize);
    for e in &examples {
        let id = e["id"].as_str().unwrap();
        if gold.contains(id) {
            continue;
        }
        let d = &e["decision"];
        let confidence = d["confidence"].as_f64().unwrap();
        if d["source"] == "abstain" {
            abstained += 1;
            assert!(
                d["label"].is_null() && d["suggested_label"].is_string(),
                "{e}"
            );
            assert!(confidence < threshold + 1e-6, "{e} above {threshold}");
        } else {
            accepted += 1;
            right += usize::from(d["label"] == LABELS[truth[id]]);
            assert!(confidence >= threshold - 1e-6, "{e} below {threshold}");
        }
    }
    let precision = right as f64 / accepted.max(1) as f64;
    eprintln!(
        "target precision 0.9: threshold {threshold:.3}, {accepted} accepted at precision {precision:.3}, {abstained} abstained (gold: {target})"
    );
    assert!(accepted > 0 && abstained > 0, "{target:#}");
    assert!(precision >= 0.85, "accepted precision {precision:.3}");
    let (status, queue) = s
        .get(&format!(
            "/v1/tasks/imb/review_queue?limit={}",
            abstained.min(20)
        ))
        .await;
    assert_eq!(status, 200, "{queue}");
    let items = queue["items"].as_array().unwrap();
    assert!(
        !items.is_empty() && items.iter().all(|i| i["decision"]["source"] == "abstain"),
        "abstentions lead the review queue: {queue:#}"
    );
    // Dropping the target stops abstaining at once: each abstention becomes its suggestion.
    let suggested: HashMap<String, Value> = examples
        .iter()
        .filter(|e| e["decision"]["source"] == "abstain")
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["decision"]["suggested_label"].clone(),
            )
        })
        .collect();
    let (status, body) = s
        .patch(
            "/v1/tasks/imb",
            &json!({"settings": {"target_precision": null}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for e in all_examples(s, "imb").await {
        let d = &e["decision"];
        assert_ne!(d["source"], "abstain", "{e}");
        if let Some(label) = suggested.get(e["id"].as_str().unwrap()) {
            assert_eq!(&d["label"], label, "{e}");
        }
    }
}

both_backends!(imbalanced_labels_never_get_worse, super::imbalanced_task);
