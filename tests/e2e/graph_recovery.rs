//! The vector index is a cache of the database: a missing, corrupt or stale snapshot is
//! rebuilt (or caught up) from stored embeddings on start, and examples read back the same
//! refined labels and neighbours.

use std::collections::{BTreeSet, HashMap};

use crate::common::{Backend, ModelKind, Options, TestServer};
use serde_json::{json, Value};

const WORDS: &[&str] = &[
    "great",
    "awful",
    "movie",
    "plot",
    "actor",
    "boring",
    "brilliant",
    "slow",
    "funny",
    "dull",
    "sharp",
    "music",
];

fn text(i: usize) -> String {
    (0..6)
        .map(|j| WORDS[(i * 7 + j * 3 + i / 5) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(" {i}")
}

async fn ingest(s: &TestServer, range: std::ops::Range<usize>) {
    for chunk in range.collect::<Vec<_>>().chunks(50) {
        let examples: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                let label = if text(i).contains("great") || text(i).contains("brilliant") { "pos" } else { "neg" };
                json!({"id": format!("e{i}"), "text": text(i), "weak_labels": [{"source": "rules", "label": label}]})
            })
            .collect();
        let (status, body) = s
            .post("/v1/tasks/t/examples", &json!({ "examples": examples }))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// (refined label, neighbour ids) of the sampled examples.
async fn snapshot(s: &TestServer, ids: &[usize]) -> HashMap<usize, (Value, BTreeSet<String>)> {
    let mut out = HashMap::new();
    for &i in ids {
        let (status, e) = s.get(&format!("/v1/tasks/t/examples/e{i}")).await;
        assert_eq!(status, 200, "{e}");
        let neighbours = e["neighbours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect();
        out.insert(i, (e["refined"]["label"].clone(), neighbours));
    }
    out
}

fn assert_close(
    before: &HashMap<usize, (Value, BTreeSet<String>)>,
    after: &HashMap<usize, (Value, BTreeSet<String>)>,
    what: &str,
) {
    let mut same_label = 0;
    let (mut shared, mut total) = (0, 0);
    for (i, (label, neighbours)) in before {
        let (label2, neighbours2) = &after[i];
        assert!(
            !neighbours2.is_empty(),
            "{what}: example {i} lost its neighbours"
        );
        same_label += usize::from(label == label2);
        shared += neighbours.intersection(neighbours2).count();
        total += neighbours.len();
    }
    assert!(
        same_label * 100 >= before.len() * 95,
        "{what}: refined labels changed: {same_label}/{}",
        before.len()
    );
    assert!(
        shared * 100 >= total * 90,
        "{what}: neighbours changed: {shared}/{total} kept"
    );
}

fn graph_dir(s: &TestServer) -> std::path::PathBuf {
    s.dir.path().join("data").join("graphs").join("task-1")
}

async fn recovery(backend: Backend) {
    let Some(mut s) = TestServer::start(Options::new(backend, ModelKind::Tiny)).await else {
        return;
    };
    s.post("/v1/tasks", &json!({"name": "t", "labels": ["neg", "pos"]}))
        .await;
    ingest(&s, 0..150).await;
    let sample: Vec<usize> = (0..150).step_by(7).collect();
    let before = snapshot(&s, &sample).await;

    // A clean stop saves the snapshot; a restart loads it.
    s.stop().await;
    assert!(
        graph_dir(&s).join("graph.bin").is_file(),
        "no snapshot after a clean stop"
    );
    let stale_copy = s.dir.path().join("stale-graph");
    copy_dir(&graph_dir(&s), &stale_copy);
    s.launch(&[]).await;
    assert_close(&before, &snapshot(&s, &sample).await, "snapshot reload");

    // Missing: rebuilt from the stored embeddings.
    s.stop().await;
    std::fs::remove_dir_all(graph_dir(&s)).unwrap();
    s.launch(&[]).await;
    assert_close(&before, &snapshot(&s, &sample).await, "missing snapshot");

    // Corrupt: rebuilt too.
    s.stop().await;
    std::fs::write(
        graph_dir(&s).join("graph.bin"),
        b"SW2SGRAPH1 and then garbage",
    )
    .unwrap();
    s.launch(&[]).await;
    assert_close(&before, &snapshot(&s, &sample).await, "corrupt snapshot");

    // Stale: examples written after the snapshot are caught up from the database.
    ingest(&s, 150..250).await;
    let later: Vec<usize> = (150..250).step_by(9).collect();
    let before_later = snapshot(&s, &later).await;
    s.stop().await;
    std::fs::remove_dir_all(graph_dir(&s)).unwrap();
    copy_dir(&stale_copy, &graph_dir(&s));
    s.launch(&[]).await;
    assert_close(&before_later, &snapshot(&s, &later).await, "stale snapshot");
    let (_, e) = s.get("/v1/tasks/t/examples/e200").await;
    assert!(
        e["neighbours"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"].as_str().unwrap()[1..].parse::<usize>().unwrap() >= 150),
        "caught-up examples are in the graph: {e}"
    );
    s.finish().await;
}
both_backends!(missing_corrupt_or_stale_index_is_rebuilt, super::recovery);

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
