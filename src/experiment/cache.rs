//! Embeddings of every row, cached on disk by model, layer count and texts: a rerun of the
//! experiment on the same data skips the encoder.

use std::path::Path;

use indicatif::ProgressBar;

use crate::model::encoder::Encoded;
use crate::model::Backbone;

pub struct CacheKey<'a> {
    pub dir: &'a Path,
    pub sha: &'a str,
    pub dims: usize,
    /// `Some(n)`: the encoder cut to its first n layers.
    pub layers: Option<usize>,
    /// Identifies the texts (all of them, joined).
    pub texts: &'a str,
}

/// `model` is called only when the cache misses.
pub fn cached_embeddings(
    key: &CacheKey,
    tokenized: &[Encoded],
    progress: &ProgressBar,
    model: impl FnOnce() -> anyhow::Result<std::sync::Arc<Backbone>>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(
        format!("{}|{:?}|{}", key.sha, key.layers, key.texts).as_bytes(),
    ));
    let path = key.dir.join(format!("{}.f32", &digest[..24]));
    let dims = key.dims;
    if let Ok(bytes) = std::fs::read(&path) {
        let v = crate::store::bytes_to_f32s(&bytes);
        if v.len() == dims * tokenized.len() {
            return Ok(v.chunks(dims).map(|c| c.to_vec()).collect());
        }
    }
    let model = model()?;
    let mut out = vec![Vec::new(); tokenized.len()];
    let mut order: Vec<usize> = (0..tokenized.len()).collect();
    order.sort_by_key(|&i| tokenized[i].total_len());
    progress.set_length(tokenized.len() as u64);
    progress.set_position(0);
    progress.set_message(match key.layers {
        Some(n) => format!("embedding (first {n} layers)"),
        None => "embedding".to_string(),
    });
    // The server's batch limits, so that texts cut into many windows come a few at a time.
    let batches = crate::model::worker::plan_batches(
        &order,
        |&i| tokenized[i].total_len(),
        &crate::model::worker::BatchConfig::default(),
    );
    for chunk in batches {
        let batch: Vec<&Encoded> = chunk.iter().map(|&i| &tokenized[i]).collect();
        let vectors = model.embed(&batch)?;
        for (&i, v) in chunk.iter().zip(vectors) {
            out[i] = v;
        }
        progress.inc(chunk.len() as u64);
    }
    std::fs::create_dir_all(key.dir)?;
    crate::fsio::write_atomic(&path, &crate::store::f32s_to_bytes(&out.concat()))?;
    Ok(out)
}
