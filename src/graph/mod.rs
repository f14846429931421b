//! One task's similarity graph: the usearch index of its embeddings, the kNN graph over them,
//! and label spreading of the weak labels (README, "Graph smoothing").
//!
//! The database is the source of truth; this is a cache rebuilt from stored embeddings. A
//! snapshot (`graph.bin` + the index file it names) is saved now and then; on load the
//! service replays what the snapshot missed or rebuilds when it does not match.

mod balance;
pub mod index;
mod snapshot;
pub mod spreading;

use std::collections::HashMap;

use anyhow::{bail, Context};

use balance::{readout, scale_for, share_weights};
use index::VectorIndex;
use spreading::{full_pass, local_update, Graph, Params};

/// Smoothing settings of a task (see `service::settings`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphSettings {
    pub k: usize,
    pub alpha: f32,
    pub iterations: usize,
    pub hops: usize,
    /// Every this many incremental updates, run a full pass instead.
    pub full_pass_every: u32,
    pub class_balance: ClassBalance,
    /// Weight of an example's own weak label in its refined label, against what spreads in
    /// from its neighbours: 1 reads F as is (plain label spreading, where the own label
    /// almost always wins), 0 uses the neighbours only.
    pub self_weight: f32,
}

/// How the classes of F are weighed against each other before normalising a row.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ClassBalance {
    /// r_i = F_i / ΣF_i. Drifts towards the class that dominates the graph as α grows.
    None,
    /// Class mass normalisation (Zhu et al. 2003) to the weak labels' class proportions.
    WeakPrior,
    /// Each class's F divided by its total mass: a node takes the class whose share it holds
    /// most of, relative to that class's share overall. Resists drift on balanced tasks and
    /// pulls an imbalanced task's labels towards equal shares (it makes them worse there).
    Uniform,
    /// The refined labels' class shares follow the task's estimated class prior (gold labels,
    /// or the model of the weak sources; see `method::prior`): each class's mass-normalised
    /// F is weighted so that the argmax gives each class its prior share of the examples.
    /// Until a prior is set, the weak labels' class proportions stand in.
    Estimated,
}

/// A new example (or a new weak aggregate for a known one).
#[derive(Debug, Clone)]
pub struct Insert {
    pub example_id: i64,
    /// Required for a new example; ignored for a known one.
    pub embedding: Option<Vec<f32>>,
    pub weak: Option<Vec<f32>>,
}

/// A refined label that moved enough to be written back.
#[derive(Debug, Clone, PartialEq)]
pub struct RefinedChange {
    pub example_id: i64,
    pub refined: Option<Vec<f32>>,
    /// Its argmax changed (the example's decision must be recomputed).
    pub label_changed: bool,
}

#[derive(Debug, Clone, Default)]
pub struct UpdateReport {
    pub full_pass: bool,
    pub region: usize,
    pub changes: Vec<RefinedChange>,
}

/// A new node is offered as a neighbour to this many times k of its own nearest nodes. An
/// existing node should take it when it is closer than that node's k-th neighbour; such
/// "reverse neighbours" are not always among the new node's own k nearest, so a wider
/// candidate set keeps the incremental kNN graph equal to a from-scratch one (on clustered
/// test data 2k missed ~8% of edges, 4k ~1%; 8k missed 0.6% in one case of the property
/// test, a node in a sparse region whose new neighbour ranked past 8k from the other side;
/// 16k none).
const REVERSE_CANDIDATES: usize = 16;

/// Neighbours a new node's index search asks for: its reverse candidates and itself.
pub fn reverse_search_count(k: usize) -> usize {
    REVERSE_CANDIDATES * k + 1
}

/// Refined values closer than this to the stored ones are not written back.
const WRITE_TOLERANCE: f32 = 1e-3;

pub struct TaskGraph {
    classes: usize,
    settings: GraphSettings,
    index: VectorIndex,
    keys: Vec<i64>,
    nodes: HashMap<i64, u32>,
    graph: Graph,
    y: Vec<f32>,
    f: Vec<f32>,
    /// The refined labels as last reported (what the database holds); NaN = none.
    saved: Vec<f32>,
    updates_since_full: u32,
    /// Column sums of F and Y (for class balancing), kept up to date incrementally.
    mass_f: Vec<f64>,
    mass_y: Vec<f64>,
    /// The estimated class prior that `ClassBalance::Estimated` balances towards.
    prior: Option<Vec<f64>>,
    /// Per-class weights that make the refined labels' shares follow the prior; refitted at
    /// every full pass and prior change, kept between them.
    share_weights: Vec<f32>,
    /// Identifies the embeddings (the encoder that made them).
    pub encoder_id: String,
}

fn label_of(r: &[f32]) -> Option<usize> {
    crate::method::weak::argmax(r)
}

impl TaskGraph {
    pub fn new(
        dims: usize,
        classes: usize,
        settings: GraphSettings,
        encoder_id: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            classes,
            settings,
            index: VectorIndex::new(dims)?,
            keys: vec![],
            nodes: HashMap::new(),
            graph: Graph::new(settings.k),
            y: vec![],
            f: vec![],
            saved: vec![],
            updates_since_full: 0,
            mass_f: vec![0.0; classes],
            mass_y: vec![0.0; classes],
            prior: None,
            share_weights: vec![1.0; classes],
            encoder_id: encoder_id.to_string(),
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn max_example_id(&self) -> i64 {
        self.keys.iter().copied().max().unwrap_or(0)
    }

    pub fn contains(&self, example_id: i64) -> bool {
        self.nodes.contains_key(&example_id)
    }

    pub fn settings(&self) -> GraphSettings {
        self.settings
    }

    fn params(&self) -> Params {
        Params {
            classes: self.classes,
            alpha: self.settings.alpha,
            iterations: self.settings.iterations,
        }
    }

    fn row(v: &[f32], node: u32, c: usize) -> &[f32] {
        &v[node as usize * c..(node as usize + 1) * c]
    }

    fn set_y(&mut self, node: u32, weak: Option<&[f32]>) -> bool {
        let c = self.classes;
        let new: Vec<f32> = weak.map(|w| w.to_vec()).unwrap_or_else(|| vec![0.0; c]);
        let row = &mut self.y[node as usize * c..(node as usize + 1) * c];
        if row == new.as_slice() {
            return false;
        }
        for (m, (old, new)) in self.mass_y.iter_mut().zip(row.iter().zip(&new)) {
            *m += (*new - *old) as f64;
        }
        row.copy_from_slice(&new);
        true
    }

    fn add_mass(mass: &mut [f64], v: &[f32], node: u32, sign: f64) {
        let c = mass.len();
        for (m, x) in mass
            .iter_mut()
            .zip(&v[node as usize * c..(node as usize + 1) * c])
        {
            *m += sign * *x as f64;
        }
    }

    /// Per-class factors applied before normalising a row of F.
    fn class_scale(&self) -> Vec<f32> {
        scale_for(
            self.settings,
            &self.share_weights,
            &self.mass_f,
            &self.mass_y,
        )
    }

    /// Refits the share weights to the prior (or the weak labels' shares without one).
    fn refit_share_weights(&mut self) {
        self.share_weights = share_weights(
            self.settings,
            self.prior.as_deref(),
            &self.f,
            &self.y,
            &self.mass_f,
            &self.mass_y,
            self.classes,
        );
    }

    /// Sets the estimated class prior; when it changes the refined labels of every node are
    /// re-read (no propagation is needed: the prior only rescales the readout).
    pub fn set_prior(&mut self, prior: Option<Vec<f64>>) -> UpdateReport {
        let prior = prior.filter(|p| p.len() == self.classes);
        if prior == self.prior {
            return UpdateReport::default();
        }
        self.prior = prior;
        self.refit_share_weights();
        let all: Vec<u32> = (0..self.len() as u32).collect();
        UpdateReport {
            full_pass: false,
            region: all.len(),
            changes: self.collect_changes(&all),
        }
    }

    pub fn prior(&self) -> Option<&[f64]> {
        self.prior.as_deref()
    }

    /// The refined labels the graph would give if the weak aggregates were `weak` (by example
    /// id; examples not named keep theirs), balanced by `balance` towards `prior`: a full
    /// pass on a copy, leaving the graph as it is. Used to check smoothing on gold before
    /// adopting new aggregates, and by the experiment to compare variants on one graph.
    pub fn refined_with(
        &self,
        weak: &HashMap<i64, Option<Vec<f32>>>,
        balance: ClassBalance,
        prior: Option<&[f64]>,
    ) -> HashMap<i64, Option<Vec<f32>>> {
        let c = self.classes;
        let mut y = self.y.clone();
        for (id, w) in weak {
            if let Some(&node) = self.nodes.get(id) {
                let row = &mut y[node as usize * c..(node as usize + 1) * c];
                match w {
                    Some(w) if w.len() == c => row.copy_from_slice(w),
                    _ => row.iter_mut().for_each(|v| *v = 0.0),
                }
            }
        }
        let f = full_pass(&self.graph, &y, &self.params()).0;
        let mut mass_f = vec![0.0f64; c];
        let mut mass_y = vec![0.0f64; c];
        for node in 0..self.len() as u32 {
            Self::add_mass(&mut mass_f, &f, node, 1.0);
            Self::add_mass(&mut mass_y, &y, node, 1.0);
        }
        let settings = GraphSettings {
            class_balance: balance,
            ..self.settings
        };
        let prior = prior.or(self.prior.as_deref());
        let weights = share_weights(settings, prior, &f, &y, &mass_f, &mass_y, c);
        let scale = scale_for(settings, &weights, &mass_f, &mass_y);
        self.keys
            .iter()
            .enumerate()
            .map(|(node, &id)| (id, readout(settings, &f, &y, node as u32, c, &scale)))
            .collect()
    }

    /// The readout h_i = F_i − discount·Y_i, class-scaled, normalised.
    fn refined_row(&self, node: u32, scale: &[f32]) -> Option<Vec<f32>> {
        readout(self.settings, &self.f, &self.y, node, self.classes, scale)
    }

    /// Adds new examples and new weak aggregates, then updates the refined labels: the
    /// affected region only, or everything every `full_pass_every` updates.
    pub fn apply(&mut self, items: &[Insert]) -> anyhow::Result<UpdateReport> {
        let (seeds, _) = self.insert_nodes(items)?;
        if seeds.is_empty() {
            return Ok(UpdateReport::default());
        }
        self.updates_since_full += 1;
        if self.updates_since_full >= self.settings.full_pass_every.max(1) {
            return Ok(self.full_update());
        }
        let params = self.params();
        // Worst case a few sweeps over everything, as a full pass would do.
        let max_updates = self
            .settings
            .iterations
            .saturating_mul(self.len().max(seeds.len()));
        let update = local_update(
            &self.graph,
            &self.y,
            &mut self.f,
            &seeds,
            self.settings.hops,
            &params,
            max_updates,
        );
        for (m, d) in self.mass_f.iter_mut().zip(&update.mass_delta) {
            *m += d;
        }
        let region = update.visited;
        Ok(UpdateReport {
            full_pass: false,
            region: region.len(),
            changes: self.collect_changes(&region),
        })
    }

    /// Inserts without propagating (bulk rebuilds propagate once at the end). Returns the
    /// seeds of the update: new nodes, nodes whose weak label changed and nodes whose edges
    /// changed.
    fn insert_nodes(&mut self, items: &[Insert]) -> anyhow::Result<(Vec<u32>, usize)> {
        let c = self.classes;
        let mut changed = Vec::new();
        let mut fresh = Vec::new();
        for item in items {
            if let Some(&node) = self.nodes.get(&item.example_id) {
                if self.set_y(node, item.weak.as_deref()) {
                    changed.push(node);
                }
                continue;
            }
            let embedding = item
                .embedding
                .as_ref()
                .with_context(|| format!("example {} has no embedding", item.example_id))?;
            if embedding.len() != self.index.dims() {
                bail!(
                    "example {} has a {}-d embedding, the index is {}-d",
                    item.example_id,
                    embedding.len(),
                    self.index.dims()
                );
            }
            self.index.reserve_for(items.len())?;
            self.index.add(item.example_id as u64, embedding)?;
            let node = self.graph.add_node();
            self.keys.push(item.example_id);
            self.nodes.insert(item.example_id, node);
            self.y.extend(std::iter::repeat_n(0.0, c));
            self.f.extend(std::iter::repeat_n(0.0, c));
            self.saved.extend(std::iter::repeat_n(f32::NAN, c));
            self.set_y(node, item.weak.as_deref());
            // Warm start: a new node begins at its own weak label.
            let yrow = Self::row(&self.y, node, c).to_vec();
            self.f[node as usize * c..(node as usize + 1) * c].copy_from_slice(&yrow);
            Self::add_mass(&mut self.mass_f, &self.f, node, 1.0);
            fresh.push((node, embedding));
        }
        // Search after every insert, so the batch's members find each other.
        let k = self.settings.k;
        let mut touched = Vec::new();
        for (node, embedding) in fresh.iter() {
            let found = self.index.search(embedding, reverse_search_count(k))?;
            let found: Vec<(u32, f32)> = found
                .into_iter()
                .filter_map(|(key, s)| self.nodes.get(&(key as i64)).map(|&n| (n, s)))
                .filter(|&(n, _)| n != *node)
                .collect();
            let own: Vec<(u32, f32)> = found.iter().take(k).copied().collect();
            touched.extend(self.graph.set_knn(*node, own));
            // The new node may displace an existing node's farthest neighbour.
            for &(other, s) in &found {
                touched.extend(self.graph.offer(other, *node, s));
            }
        }
        let new_nodes: Vec<u32> = fresh.iter().map(|(n, _)| *n).collect();
        let seeds = spreading::seeds(&self.graph, &new_nodes, &changed, &touched);
        Ok((seeds, fresh.len()))
    }

    /// Recomputes everything from Y.
    pub fn full_update(&mut self) -> UpdateReport {
        self.updates_since_full = 0;
        self.f = full_pass(&self.graph, &self.y, &self.params()).0;
        self.recompute_masses();
        let all: Vec<u32> = (0..self.len() as u32).collect();
        UpdateReport {
            full_pass: true,
            region: all.len(),
            changes: self.collect_changes(&all),
        }
    }

    /// Bulk load (rebuilds): inserts everything, then one full pass.
    pub fn bulk_insert(&mut self, items: &[Insert]) -> anyhow::Result<()> {
        self.insert_nodes(items)?;
        Ok(())
    }

    /// Exact column sums (after a full pass or a load; incremental updates drift by rounding).
    fn recompute_masses(&mut self) {
        let c = self.classes;
        self.mass_f = vec![0.0; c];
        self.mass_y = vec![0.0; c];
        for node in 0..self.len() as u32 {
            Self::add_mass(&mut self.mass_f, &self.f, node, 1.0);
            Self::add_mass(&mut self.mass_y, &self.y, node, 1.0);
        }
        self.refit_share_weights();
    }

    fn collect_changes(&mut self, nodes: &[u32]) -> Vec<RefinedChange> {
        let c = self.classes;
        let scale = self.class_scale();
        let mut changes = Vec::new();
        for &node in nodes {
            let new = self.refined_row(node, &scale);
            let old_row = Self::row(&self.saved, node, c);
            let old = if old_row[0].is_nan() {
                None
            } else {
                Some(old_row.to_vec())
            };
            let moved = match (&old, &new) {
                (None, None) => false,
                (Some(a), Some(b)) => a
                    .iter()
                    .zip(b)
                    .any(|(x, y)| (x - y).abs() > WRITE_TOLERANCE),
                _ => true,
            };
            if !moved {
                continue;
            }
            let label_changed =
                old.as_deref().and_then(label_of) != new.as_deref().and_then(label_of);
            let saved = &mut self.saved[node as usize * c..(node as usize + 1) * c];
            match &new {
                Some(r) => saved.copy_from_slice(r),
                None => saved.iter_mut().for_each(|v| *v = f32::NAN),
            }
            changes.push(RefinedChange {
                example_id: self.keys[node as usize],
                refined: new,
                label_changed,
            });
        }
        changes
    }

    /// The current refined label of an example.
    pub fn refined(&self, example_id: i64) -> Option<Vec<f32>> {
        let &node = self.nodes.get(&example_id)?;
        self.refined_row(node, &self.class_scale())
    }

    /// The example's graph neighbours (symmetrised kNN), most similar first.
    pub fn neighbours(&self, example_id: i64, limit: usize) -> Vec<(i64, f32)> {
        let Some(&node) = self.nodes.get(&example_id) else {
            return vec![];
        };
        let mut out: Vec<(i64, f32)> = self
            .graph
            .neighbours(node)
            .iter()
            .map(|&(n, w)| (self.keys[n as usize], w))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out.truncate(limit);
        out
    }

    /// The weak aggregates the graph holds, for reconciling with the database.
    pub fn weak_of(&self, example_id: i64) -> Option<Vec<f32>> {
        let &node = self.nodes.get(&example_id)?;
        let row = Self::row(&self.y, node, self.classes);
        if row.iter().all(|&v| v == 0.0) {
            None
        } else {
            Some(row.to_vec())
        }
    }

    /// Overwrites the refined values the database is known to hold (after a load).
    pub fn set_saved(&mut self, example_id: i64, refined: Option<&[f32]>) {
        if let Some(&node) = self.nodes.get(&example_id) {
            let c = self.classes;
            let row = &mut self.saved[node as usize * c..(node as usize + 1) * c];
            match refined {
                Some(r) if r.len() == c => row.copy_from_slice(r),
                _ => row.iter_mut().for_each(|v| *v = f32::NAN),
            }
        }
    }

    pub fn node_count_and_edges(&self) -> (usize, usize) {
        (self.len(), self.graph.edge_count())
    }
}

#[cfg(test)]
mod tests {
    use super::snapshot::GRAPH_FILE;
    use super::*;
    use rand::{Rng, SeedableRng};

    fn settings() -> GraphSettings {
        GraphSettings {
            k: 5,
            alpha: 0.5,
            iterations: 10,
            hops: 2,
            full_pass_every: 1000,
            class_balance: ClassBalance::None,
            self_weight: 1.0,
        }
    }

    fn random_unit(rng: &mut impl Rng, dims: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dims).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn snapshot_round_trip_keeps_everything() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut g = TaskGraph::new(8, 2, settings(), "enc").unwrap();
        let items: Vec<Insert> = (0..60)
            .map(|i| Insert {
                example_id: 100 + i,
                embedding: Some(random_unit(&mut rng, 8)),
                weak: (i % 3 != 0).then(|| crate::method::weak::one_hot((i % 2) as usize, 2)),
            })
            .collect();
        let report = g.apply(&items).unwrap();
        assert!(!report.changes.is_empty());
        let dir = tempfile::tempdir().unwrap();
        g.save(dir.path()).unwrap();
        g.save(dir.path()).unwrap();
        let indexes = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("index-")
            })
            .count();
        assert_eq!(indexes, 1, "old index files are removed");
        let loaded = TaskGraph::load(dir.path(), 8, 2, settings()).unwrap();
        assert_eq!(loaded.len(), 60);
        assert_eq!(loaded.encoder_id, "enc");
        for i in 0..60 {
            assert_eq!(loaded.refined(100 + i), g.refined(100 + i));
            assert_eq!(loaded.neighbours(100 + i, 10), g.neighbours(100 + i, 10));
        }
        assert!(TaskGraph::load(dir.path(), 8, 3, settings()).is_err());
        let file = dir.path().join(GRAPH_FILE);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
        assert!(TaskGraph::load(dir.path(), 8, 2, settings()).is_err());
    }

    #[test]
    fn weak_label_update_of_a_known_example_propagates() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut g = TaskGraph::new(4, 2, settings(), "enc").unwrap();
        let items: Vec<Insert> = (0..20)
            .map(|i| Insert {
                example_id: i,
                embedding: Some(random_unit(&mut rng, 4)),
                weak: None,
            })
            .collect();
        let report = g.apply(&items).unwrap();
        assert!(report.changes.is_empty(), "no weak evidence anywhere yet");
        assert_eq!(g.refined(3), None);
        let report = g
            .apply(&[Insert {
                example_id: 3,
                embedding: None,
                weak: Some(vec![0.0, 1.0]),
            }])
            .unwrap();
        assert!(report
            .changes
            .iter()
            .any(|c| c.example_id == 3 && c.label_changed));
        assert_eq!(g.refined(3).map(|r| r[1] > 0.99), Some(true));
        let neighbour = g.neighbours(3, 1)[0].0;
        assert_eq!(g.refined(neighbour).and_then(|r| label_of(&r)), Some(1));
        // A new example without an embedding is an error, not a panic.
        assert!(g
            .apply(&[Insert {
                example_id: 99,
                embedding: None,
                weak: None
            }])
            .is_err());
    }
}
