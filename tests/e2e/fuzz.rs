//! Schemathesis against the served OpenAPI document, on both databases: generated valid and
//! invalid requests to every operation; no 5xx, every status and body as the spec declares,
//! invalid input refused. Schemathesis comes from PyPI into a virtual environment this test
//! makes (once per machine, in the test cache); outside CI a machine without pip skips it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

use crate::common::{in_ci, Backend, ModelKind, Options, TestServer};

const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// The `st` executable, installing it on first use.
fn schemathesis() -> Option<PathBuf> {
    let cache = std::env::var("SW2S_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("sw2s-test-cache"));
    let venv = cache.join("schemathesis-venv");
    let st = venv.join("bin").join("st");
    let pinned = venv.join(".pinned");
    if std::fs::read_to_string(&pinned).ok().as_deref() == Some(SCHEMATHESIS) && st.exists() {
        return Some(st);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", SCHEMATHESIS])
            .status()
            .is_ok_and(|s| s.success());
    if !made {
        assert!(!in_ci(), "installing {SCHEMATHESIS} with pip failed");
        eprintln!("SKIPPED: {SCHEMATHESIS} could not be installed with pip");
        return None;
    }
    std::fs::write(&pinned, SCHEMATHESIS).ok()?;
    Some(st)
}

async fn schemathesis_finds_nothing(backend: Backend) {
    let Some(st) = tokio::task::spawn_blocking(schemathesis).await.unwrap() else {
        return;
    };
    // With a key, as deployed: schemathesis also checks that a request without one is 401.
    let opts = Options::new(backend, ModelKind::Tiny).flag("api-key", "fuzz-key");
    let Some(mut s) = TestServer::start(opts).await else {
        return;
    };
    s.client = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                reqwest::header::HeaderValue::from_static("Bearer fuzz-key"),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    // A task with examples, so operations on `{task}` reach more than 404.
    let (status, _) = s
        .post("/v1/tasks", &json!({"name": "t", "labels": ["neg", "pos"]}))
        .await;
    assert_eq!(status, 201);
    let examples: Vec<_> = (0..20)
        .map(|i| {
            json!({"id": format!("e{i}"), "text": format!("text number {i}"),
            "weak_labels": [{"source": "s", "label": if i % 2 == 0 { "neg" } else { "pos" }}]})
        })
        .collect();
    let (status, body) = s
        .post("/v1/tasks/t/examples", &json!({ "examples": examples }))
        .await;
    assert_eq!(status, 200, "{body}");
    let report = s.dir.path().join("schemathesis");
    // Schemathesis keeps a cache in its working directory: the test's, not the repository.
    let workdir = s.dir.path().to_path_buf();
    let schema = s.url("/openapi.json");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .current_dir(workdir)
            .arg("run")
            .arg(schema)
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance,negative_data_rejection",
                "--max-examples",
                "25",
                "--seed",
                "1",
                // One worker: with two, Hypothesis's lambda-source cache races across
                // threads on Python 3.11 and reports an internal error now and then.
                "--workers",
                "1",
                "--phases",
                "examples,coverage,fuzzing",
                "--suppress-health-check",
                "all",
                "--request-timeout",
                "30",
                "--header",
                "Authorization: Bearer fuzz-key",
                "--report-dir",
            ])
            .arg(&report)
            .output()
            .expect("running schemathesis")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tail: String = stdout
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{backend:?}: schemathesis:\n{tail}");
    assert!(
        output.status.success(),
        "schemathesis found failures on {backend:?}:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    s.finish().await;
}
both_backends!(
    schemathesis_against_the_served_spec,
    super::schemathesis_finds_nothing
);
