//! A usearch HNSW index (cosine) of one task's embeddings, keyed by example id.
//!
//! usearch's `add` fails without room and never grows by itself, so capacity is reserved
//! ahead (doubling); its `save` is not atomic, so saves go to a temporary file that is
//! fsynced and renamed.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

pub struct VectorIndex {
    index: Index,
    dims: usize,
}

fn options(dims: usize) -> IndexOptions {
    IndexOptions {
        dimensions: dims,
        metric: MetricKind::Cos,
        quantization: ScalarKind::F32,
        connectivity: 16,
        expansion_add: 128,
        expansion_search: 64,
        multi: false,
    }
}

impl VectorIndex {
    pub fn new(dims: usize) -> anyhow::Result<Self> {
        let index =
            Index::new(&options(dims)).map_err(|e| anyhow!("creating usearch index: {e}"))?;
        index
            .reserve(1024)
            .map_err(|e| anyhow!("reserving index capacity: {e}"))?;
        Ok(Self { index, dims })
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, key: u64) -> bool {
        self.index.contains(key)
    }

    /// Makes room for `additional` more vectors, doubling to keep reservations rare.
    pub fn reserve_for(&self, additional: usize) -> anyhow::Result<()> {
        let needed = self.index.size() + additional;
        if needed > self.index.capacity() {
            let target = needed.max(self.index.capacity() * 2).max(1024);
            self.index
                .reserve(target)
                .map_err(|e| anyhow!("reserving index capacity for {target}: {e}"))?;
        }
        Ok(())
    }

    pub fn add(&self, key: u64, vector: &[f32]) -> anyhow::Result<()> {
        if vector.len() != self.dims {
            bail!("vector has {} dims, index has {}", vector.len(), self.dims);
        }
        self.reserve_for(1)?;
        self.index
            .add(key, vector)
            .map_err(|e| anyhow!("adding key {key} to the index: {e}"))
    }

    /// The `count` nearest keys with their cosine similarity, best first.
    pub fn search(&self, vector: &[f32], count: usize) -> anyhow::Result<Vec<(u64, f32)>> {
        if self.is_empty() || count == 0 {
            return Ok(vec![]);
        }
        let found = self
            .index
            .search(vector, count)
            .map_err(|e| anyhow!("searching the index: {e}"))?;
        Ok(found
            .keys
            .into_iter()
            .zip(found.distances)
            .map(|(k, d)| (k, 1.0 - d))
            .collect())
    }

    /// Saves to `path` atomically (temporary file in the same directory, fsync, rename).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path.parent().context("index path has no parent")?;
        std::fs::create_dir_all(dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(".index-")
            .tempfile_in(dir)?
            .into_temp_path();
        let tmp_str = tmp.to_str().context("index path is not UTF-8")?;
        self.index
            .save(tmp_str)
            .map_err(|e| anyhow!("saving the index: {e}"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        crate::fsio::sync_dir(dir);
        Ok(())
    }

    /// Loads an index saved by [`save`](Self::save); fails on a missing, truncated or
    /// foreign file, or one of another dimension.
    pub fn load(path: &Path, dims: usize) -> anyhow::Result<Self> {
        let path_str = path.to_str().context("index path is not UTF-8")?;
        let meta = Index::metadata(path_str).map_err(|e| anyhow!("reading index header: {e}"))?;
        if meta.dimensions as usize != dims {
            bail!("index has {} dims, expected {dims}", meta.dimensions);
        }
        let index =
            Index::new(&options(dims)).map_err(|e| anyhow!("creating usearch index: {e}"))?;
        index
            .load(path_str)
            .map_err(|e| anyhow!("loading the index: {e}"))?;
        Ok(Self { index, dims })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn add_grows_past_the_initial_reservation_and_search_finds_neighbours() {
        let index = VectorIndex::new(4).unwrap();
        for i in 0..3000u64 {
            let a = i as f32 * 0.001;
            index.add(i, &unit(&[a.cos(), a.sin(), 0.1, 0.0])).unwrap();
        }
        assert_eq!(index.len(), 3000);
        let found = index
            .search(&unit(&[(1.5f32).cos(), (1.5f32).sin(), 0.1, 0.0]), 3)
            .unwrap();
        assert_eq!(found.len(), 3);
        assert!(found.iter().any(|&(k, _)| k == 1500));
        assert!(found[0].1 > 0.999 && found[0].1 <= 1.0 + 1e-6);
        assert!(index.add(5000, &[1.0, 0.0]).is_err());
    }

    #[test]
    fn save_and_load_round_trip_and_reject_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.usearch");
        let index = VectorIndex::new(3).unwrap();
        index.add(7, &unit(&[1.0, 2.0, 3.0])).unwrap();
        index.add(9, &unit(&[-1.0, 0.0, 1.0])).unwrap();
        index.save(&path).unwrap();
        let loaded = VectorIndex::load(&path, 3).unwrap();
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded.search(&unit(&[1.0, 2.0, 3.0]), 1).unwrap()[0].0, 7);
        assert!(VectorIndex::load(&path, 4).is_err());
        std::fs::write(&path, b"not an index").unwrap();
        assert!(VectorIndex::load(&path, 3).is_err());
        assert!(VectorIndex::load(&dir.path().join("missing"), 3).is_err());
    }
}
