//! A server for the HTTP benchmarks: this binary's own `serve`, started on a free loopback
//! port with a fresh data directory, stopped when dropped. Its log goes to a file in the data
//! directory (printed if it fails to come up).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Server {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
    data: tempfile::TempDir,
}

impl Server {
    /// Starts `sw2s serve` on `model_dir` with `threads` model threads (and a decoder's
    /// pooling, when given); `database_url` None means SQLite in the temporary data directory.
    pub async fn start(
        model_dir: &Path,
        threads: usize,
        model: &crate::cli::ModelArgs,
        database_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(data.path().join("server.log"))?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("serve")
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data.path())
            .arg("--model-dir")
            .arg(model_dir)
            .arg("--threads")
            .arg(threads.to_string())
            .env("SW2S_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(url) = database_url {
            cmd.arg("--database-url").arg(url);
        }
        if let Some(value) = model
            .decoder_pooling
            .and_then(|p| clap::ValueEnum::to_possible_value(&p))
        {
            cmd.arg("--decoder-pooling").arg(value.get_name());
        }
        cmd.arg("--device").arg(model.device.to_string());
        let child = cmd.spawn().context("starting sw2s serve")?;
        let server = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()?,
            data,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(180) {
            if let Ok(r) = self.client.get(format!("{}/ready", self.base)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default();
        bail!("the server did not become ready in 180 s; its log:\n{log}")
    }

    /// POSTs JSON and returns the answer's JSON, failing on a non-2xx status.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("POST {path}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }
}

impl Server {
    /// GETs a text document (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        if !r.status().is_success() {
            bail!("GET {path}: {}", r.status());
        }
        Ok(r.text().await?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
