//! The PyTorch side of the benchmarks: `scripts/bench_baseline.py` (compiled into the binary)
//! run by a virtual environment this command makes with pip on first use. The process stays
//! up and is asked for one measurement at a time, so sw2s and PyTorch alternate on the same
//! machine state instead of running minutes apart.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context};
use serde_json::{json, Value};

const SCRIPT: &str = include_str!("../../scripts/bench_baseline.py");

/// What the virtual environment gets (the versions the README's figures were measured with).
const PACKAGES: &[&str] = &[
    "torch==2.15.0",
    "transformers==5.24.0",
    "sentence-transformers==6.2.0",
];

/// Where the environment lives: `--venv`, else `DATA_DIR/bench-venv`.
pub fn venv_dir(venv: Option<&Path>, data_dir: &Path) -> PathBuf {
    venv.map(Path::to_path_buf)
        .unwrap_or_else(|| data_dir.join("bench-venv"))
}

/// The environment's python, making the environment first if it has none.
fn ensure_venv(venv: &Path) -> anyhow::Result<PathBuf> {
    let python = venv.join("bin").join("python");
    if python.is_file() {
        return Ok(python);
    }
    eprintln!(
        "making the PyTorch baseline's virtual environment in {} (pip install {}; once)",
        venv.display(),
        PACKAGES.join(" ")
    );
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .context("running python3 -m venv (is python3 installed?)")?;
    if !status.success() {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .args(PACKAGES)
        .status()
        .context("running pip")?;
    if !status.success() {
        // A half-made environment would be taken as ready next time.
        let _ = std::fs::remove_dir_all(venv);
        bail!("pip install {} failed", PACKAGES.join(" "));
    }
    Ok(python)
}

pub struct Baseline {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub torch: String,
    _files: tempfile::TempDir,
}

impl Baseline {
    /// Starts the PyTorch process on `model_dir` (a sentence-transformers directory) with
    /// these texts (and labels, for fine-tuning), embedding on `device` (`cpu`, `cuda:N`).
    pub fn start(
        venv: &Path,
        model_dir: &Path,
        texts: &[&str],
        labels: &[usize],
        device: &str,
    ) -> anyhow::Result<Self> {
        let python = ensure_venv(venv)?;
        let files = tempfile::tempdir()?;
        let script = files.path().join("bench_baseline.py");
        std::fs::write(&script, SCRIPT)?;
        let data = files.path().join("texts.json");
        std::fs::write(
            &data,
            serde_json::to_vec(&json!({ "texts": texts, "labels": labels }))?,
        )?;
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(model_dir)
            .arg(&data)
            .arg(device)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut baseline = Self {
            child,
            stdin,
            stdout,
            torch: String::new(),
            _files: files,
        };
        let ready = baseline.read()?;
        baseline.torch = ready["torch"].as_str().unwrap_or("?").to_string();
        Ok(baseline)
    }

    fn read(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the PyTorch process ended (its error is above)");
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("the PyTorch process answered {line:?}"))?;
        if let Some(e) = v["error"].as_str() {
            bail!("the PyTorch process: {e}");
        }
        Ok(v)
    }

    /// One measurement (see the script for the requests).
    pub fn ask(&mut self, request: Value) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        self.read()
    }

    /// `ask`, returning the answer's `rate`.
    pub fn rate(&mut self, request: Value) -> anyhow::Result<f64> {
        self.ask(request)?["rate"]
            .as_f64()
            .context("the PyTorch process gave no rate")
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
