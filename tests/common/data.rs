//! The quality tests' helpers: the datasets in ../shared (skipped without them outside CI)
//! and reading a task's state back over HTTP.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{in_ci, wait_job, TestServer};

/// Rows of a ../shared/datasets JSONL file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Row {
    pub id: String,
    pub text: String,
    pub label: usize,
}

pub fn datasets_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SW2S_DATASETS") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets")
}

/// Whether `../shared/datasets` (or `SW2S_DATASETS`) is there. Outside CI a test that needs
/// it is skipped with a message; under `CI=true` its absence fails the test.
pub fn have_datasets() -> bool {
    let dir = datasets_dir();
    if dir.join("sst2/train.jsonl").is_file() {
        return true;
    }
    if in_ci() {
        panic!(
            "the datasets are required in CI but {} has no sst2/train.jsonl; set SW2S_DATASETS",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: {} has no sst2/train.jsonl; set SW2S_DATASETS to ../shared/datasets",
        dir.display()
    );
    false
}

pub fn read_rows(rel: &str, limit: usize) -> Vec<Row> {
    let path = datasets_dir().join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {} (set SW2S_DATASETS): {e}", path.display()));
    text.lines()
        .take(limit)
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect()
}

/// Every example of a task, read through the paged list.
pub async fn all_examples(s: &TestServer, task: &str) -> Vec<Value> {
    let mut out = vec![];
    let mut cursor = String::new();
    loop {
        let (status, page) = s
            .get(&format!(
                "/v1/tasks/{task}/examples?limit=1000&after={cursor}"
            ))
            .await;
        assert_eq!(status, 200, "{page}");
        out.extend(
            page["examples"]
                .as_array()
                .expect("examples")
                .iter()
                .cloned(),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return out,
        }
    }
}

/// Ingests `examples` into the task in requests of `batch`, each of which must succeed.
pub async fn ingest(s: &TestServer, task: &str, examples: &[Value], batch: usize) {
    for chunk in examples.chunks(batch) {
        let (status, body) = s
            .post(
                &format!("/v1/tasks/{task}/examples"),
                &serde_json::json!({ "examples": chunk }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Starts a job and waits for it to succeed.
pub async fn run_job(s: &TestServer, task: &str, body: Value) -> Value {
    let (status, job) = s.post(&format!("/v1/tasks/{task}/jobs"), &body).await;
    assert_eq!(status, 202, "{job}");
    let job = wait_job(s, task, job["id"].as_i64().expect("job id")).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    job
}

/// Waits until no example of the task waits for a new decision.
pub async fn settled(s: &TestServer, task: &str) {
    for _ in 0..600 {
        let (_, t) = s.get(&format!("/v1/tasks/{task}")).await;
        if t["pending"] == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the examples of {task} never settled");
}
