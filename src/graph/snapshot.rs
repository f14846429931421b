//! Graph snapshots: `graph.bin` (nodes, weak labels, F, what the database holds, kNN lists)
//! and the usearch index file it names, each written atomically, the index first, so
//! `graph.bin` never names a missing index. Any inconsistency on load is an error, and the
//! service rebuilds from the database.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::index::VectorIndex;
use super::spreading::Graph;
use super::{GraphSettings, TaskGraph};

impl TaskGraph {
    /// Saves `graph.bin` and the index it names into `dir`, each atomically; the index is
    /// written first, so `graph.bin` never names a missing index.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let index_name = format!("index-{generation}.usearch");
        self.index.save(&dir.join(&index_name))?;
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        write_str(&mut buf, &index_name);
        write_str(&mut buf, &self.encoder_id);
        for v in [
            self.index.dims() as u64,
            self.classes as u64,
            self.settings.k as u64,
            self.keys.len() as u64,
            self.updates_since_full as u64,
        ] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        for key in &self.keys {
            buf.extend_from_slice(&key.to_le_bytes());
        }
        for v in self.y.iter().chain(&self.f).chain(&self.saved) {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        for node in 0..self.keys.len() as u32 {
            let list = self.graph.knn(node);
            buf.extend_from_slice(&(list.len() as u32).to_le_bytes());
            for &(n, s) in list {
                buf.extend_from_slice(&n.to_le_bytes());
                buf.extend_from_slice(&s.to_le_bytes());
            }
        }
        crate::fsio::write_atomic(&dir.join(GRAPH_FILE), &buf)?;
        // Older index files are no longer named by graph.bin.
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("index-") && name.ends_with(".usearch") && name != index_name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Loads a snapshot; any inconsistency (truncation, other dims/classes/k, an index of
    /// another size) is an error, and the caller rebuilds from the database.
    pub fn load(
        dir: &Path,
        dims: usize,
        classes: usize,
        settings: GraphSettings,
    ) -> anyhow::Result<Self> {
        let path = dir.join(GRAPH_FILE);
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .with_context(|| format!("opening {}", path.display()))?
            .read_to_end(&mut bytes)?;
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
        };
        if r.take(MAGIC.len())? != MAGIC {
            bail!("{} is not a sw2s graph snapshot", path.display());
        }
        let index_name = r.string()?;
        let encoder_id = r.string()?;
        let (file_dims, file_classes, file_k, n, since_full) =
            (r.u64()?, r.u64()?, r.u64()?, r.u64()? as usize, r.u64()?);
        if (file_dims as usize, file_classes as usize, file_k as usize)
            != (dims, classes, settings.k)
        {
            bail!("snapshot was made with other dims/classes/k");
        }
        let keys: Vec<i64> = (0..n).map(|_| r.i64()).collect::<anyhow::Result<_>>()?;
        let mut floats =
            |count: usize| -> anyhow::Result<Vec<f32>> { (0..count).map(|_| r.f32()).collect() };
        let y = floats(n * classes)?;
        let f = floats(n * classes)?;
        let saved = floats(n * classes)?;
        let mut graph = Graph::new(settings.k);
        for _ in 0..n {
            graph.add_node();
        }
        let mut lists = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u32()? as usize;
            let mut list = Vec::with_capacity(len);
            for _ in 0..len {
                let node = r.u32()?;
                if node as usize >= n {
                    bail!("snapshot names node {node} of {n}");
                }
                list.push((node, r.f32()?));
            }
            lists.push(list);
        }
        for (node, list) in lists.into_iter().enumerate() {
            graph.set_knn(node as u32, list);
        }
        let index = VectorIndex::load(&dir.join(&index_name), dims)?;
        if index.len() != n {
            bail!("index holds {} vectors, snapshot {n}", index.len());
        }
        let nodes = keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, i as u32))
            .collect();
        let mut graph = Self {
            classes,
            settings,
            index,
            keys,
            nodes,
            graph,
            y,
            f,
            saved,
            updates_since_full: since_full as u32,
            mass_f: vec![],
            mass_y: vec![],
            prior: None,
            share_weights: vec![1.0; classes],
            encoder_id,
        };
        graph.recompute_masses();
        Ok(graph)
    }

    pub fn snapshot_dir(data_dir: &Path, task_id: i64) -> PathBuf {
        data_dir.join("graphs").join(format!("task-{task_id}"))
    }
}

const MAGIC: &[u8] = b"SW2SGRAPH1";
pub(super) const GRAPH_FILE: &str = "graph.bin";

fn write_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.write_all(s.as_bytes()).ok();
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> anyhow::Result<&[u8]> {
        if self.pos + n > self.bytes.len() {
            bail!("snapshot is truncated");
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    fn u32(&mut self) -> anyhow::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> anyhow::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn i64(&mut self) -> anyhow::Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn f32(&mut self) -> anyhow::Result<f32> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn string(&mut self) -> anyhow::Result<String> {
        let len = self.u32()? as usize;
        Ok(String::from_utf8(self.take(len)?.to_vec())?)
    }
}
