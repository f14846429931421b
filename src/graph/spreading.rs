//! Label spreading (Zhou et al. 2004) over a symmetrised kNN graph, full and incremental.
//!
//! W_ij = max(0, cos(h_i, h_j)) when j is among the k nearest neighbours of i or i among
//! those of j; S = D^-1/2 W D^-1/2; F ← α S F + (1−α) Y. The refined label is F_i / ΣF_i.
//!
//! Passes run to the fixed point F* = (1−α)(I − αS)⁻¹Y (at most `iterations` steps). The
//! incremental pass updates only where the change goes: seeds (new nodes, nodes whose weak
//! label or edges changed) first, then, while a node moves by more than a threshold, its
//! neighbours, up to `hops` edges out. Why this stays close to a full pass: a change reaches a
//! node d hops away only through d multiplications by αS (rows of norm ≤ 1), so what the
//! cut-offs leave out is bounded by α^(h+1)/(1−α) times the change and is in practice far
//! smaller, being spread over the neighbours' degrees. A periodic full pass removes what has
//! accumulated.

/// Propagation settings.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub classes: usize,
    pub alpha: f32,
    pub iterations: usize,
}

/// The kNN graph: each node's out-list (its k nearest neighbours) and the symmetric
/// adjacency derived from all out-lists.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    k: usize,
    knn: Vec<Vec<(u32, f32)>>,
    adj: Vec<Vec<(u32, f32)>>,
    degree: Vec<f32>,
}

impl Graph {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            ..Default::default()
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn len(&self) -> usize {
        self.knn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.knn.is_empty()
    }

    pub fn add_node(&mut self) -> u32 {
        self.knn.push(Vec::new());
        self.adj.push(Vec::new());
        self.degree.push(0.0);
        (self.knn.len() - 1) as u32
    }

    pub fn knn(&self, i: u32) -> &[(u32, f32)] {
        &self.knn[i as usize]
    }

    pub fn neighbours(&self, i: u32) -> &[(u32, f32)] {
        &self.adj[i as usize]
    }

    pub fn degree(&self, i: u32) -> f32 {
        self.degree[i as usize]
    }

    pub fn edge_count(&self) -> usize {
        self.adj.iter().map(|a| a.len()).sum::<usize>() / 2
    }

    fn in_knn(&self, i: u32, j: u32) -> bool {
        self.knn[i as usize].iter().any(|&(n, _)| n == j)
    }

    fn link(&mut self, i: u32, j: u32, sim: f32, touched: &mut Vec<u32>) {
        let w = sim.max(0.0);
        if w <= 0.0 || self.adj[i as usize].iter().any(|&(n, _)| n == j) {
            return;
        }
        self.adj[i as usize].push((j, w));
        self.adj[j as usize].push((i, w));
        touched.extend([i, j]);
    }

    fn unlink_unless_kept(&mut self, i: u32, j: u32, touched: &mut Vec<u32>) {
        if self.in_knn(i, j) || self.in_knn(j, i) {
            return;
        }
        let before = self.adj[i as usize].len();
        self.adj[i as usize].retain(|&(n, _)| n != j);
        self.adj[j as usize].retain(|&(n, _)| n != i);
        if self.adj[i as usize].len() != before {
            touched.extend([i, j]);
        }
    }

    fn refresh_degree(&mut self, i: u32) {
        self.degree[i as usize] = self.adj[i as usize].iter().map(|&(_, w)| w).sum();
    }

    /// Sets node i's out-list (the caller gives its nearest neighbours, best first, without
    /// i itself); returns the nodes whose adjacency changed.
    pub fn set_knn(&mut self, i: u32, mut list: Vec<(u32, f32)>) -> Vec<u32> {
        list.retain(|&(j, _)| j != i);
        list.truncate(self.k);
        let old = std::mem::replace(&mut self.knn[i as usize], list.clone());
        let mut touched = Vec::new();
        for (j, _) in old {
            self.unlink_unless_kept(i, j, &mut touched);
        }
        for (j, s) in list {
            self.link(i, j, s, &mut touched);
        }
        self.finish(touched)
    }

    /// Offers j as a neighbour of i: it enters i's out-list if i has fewer than k neighbours
    /// or j is closer than i's farthest, which then leaves. Returns the changed nodes.
    pub fn offer(&mut self, i: u32, j: u32, sim: f32) -> Vec<u32> {
        if i == j || self.in_knn(i, j) {
            return vec![];
        }
        let list = &mut self.knn[i as usize];
        let full = list.len() >= self.k;
        if full && list.last().map(|&(_, s)| sim <= s).unwrap_or(true) {
            return vec![];
        }
        let pos = list
            .iter()
            .position(|&(_, s)| sim > s)
            .unwrap_or(list.len());
        list.insert(pos, (j, sim));
        let evicted = if list.len() > self.k {
            list.pop()
        } else {
            None
        };
        let mut touched = Vec::new();
        self.link(i, j, sim, &mut touched);
        if let Some((e, _)) = evicted {
            self.unlink_unless_kept(i, e, &mut touched);
        }
        self.finish(touched)
    }

    fn finish(&mut self, mut touched: Vec<u32>) -> Vec<u32> {
        touched.sort_unstable();
        touched.dedup();
        for &t in &touched {
            self.refresh_degree(t);
        }
        touched
    }
}

/// Where an incremental update starts: new nodes and nodes whose weak label changed, plus
/// nodes whose edges changed but that no new node reaches directly (they lost an edge, so
/// nothing else would wake them). Nodes that gained an edge to a new node are its neighbours
/// and are woken by it.
pub fn seeds(graph: &Graph, new_nodes: &[u32], changed: &[u32], touched: &[u32]) -> Vec<u32> {
    let is_new: std::collections::HashSet<u32> = new_nodes.iter().copied().collect();
    let mut out: Vec<u32> = new_nodes.iter().chain(changed).copied().collect();
    out.extend(touched.iter().copied().filter(|t| {
        !is_new.contains(t) && !graph.neighbours(*t).iter().any(|(n, _)| is_new.contains(n))
    }));
    out.sort_unstable();
    out.dedup();
    out
}

/// One Jacobi step for node i: α Σ_j S_ij F_j + (1−α) Y_i, written into `out`.
fn step_node(graph: &Graph, f: &[f32], y: &[f32], p: &Params, i: u32, out: &mut [f32]) {
    let c = p.classes;
    let yi = &y[i as usize * c..(i as usize + 1) * c];
    for (o, &v) in out.iter_mut().zip(yi) {
        *o = (1.0 - p.alpha) * v;
    }
    let di = graph.degree(i);
    if di <= 0.0 {
        return;
    }
    for &(j, w) in graph.neighbours(i) {
        let dj = graph.degree(j);
        if dj <= 0.0 {
            continue;
        }
        let s = p.alpha * w / (di * dj).sqrt();
        let fj = &f[j as usize * c..(j as usize + 1) * c];
        for (o, &v) in out.iter_mut().zip(fj) {
            *o += s * v;
        }
    }
}

/// A pass stops once no value of F moves by more than this in one step.
pub const CONVERGED: f32 = 1e-5;

/// The full pass: F starts at Y and steps over every node until it converges (at most
/// `iterations` steps). Returns F and the steps taken.
pub fn full_pass(graph: &Graph, y: &[f32], p: &Params) -> (Vec<f32>, usize) {
    let c = p.classes;
    let mut f = y.to_vec();
    let mut next = vec![0f32; f.len()];
    for step in 1..=p.iterations {
        let mut moved = 0f32;
        for i in 0..graph.len() {
            let out = &mut next[i * c..(i + 1) * c];
            step_node(graph, &f, y, p, i as u32, out);
            moved = out
                .iter()
                .zip(&f[i * c..(i + 1) * c])
                .map(|(a, b)| (a - b).abs())
                .fold(moved, f32::max);
        }
        std::mem::swap(&mut f, &mut next);
        if moved < CONVERGED {
            return (f, step);
        }
    }
    (f, p.iterations)
}

/// What an incremental update did.
#[derive(Debug, Clone, Default)]
pub struct LocalUpdate {
    /// Nodes whose F was recomputed, in first-visit order.
    pub visited: Vec<u32>,
    /// Node updates made (a node may be updated several times).
    pub updates: usize,
    /// Change of each class's column sum of F.
    pub mass_delta: Vec<f64>,
}

/// Below this change a node does not wake its neighbours. Refined labels are written back
/// at the same resolution (`WRITE_TOLERANCE` in `graph`).
pub const PUSH_THRESHOLD: f32 = 1e-3;

/// The incremental pass: asynchronous (Gauss–Seidel) updates driven by a worklist. The seeds
/// are updated first; a node whose F moves by more than [`PUSH_THRESHOLD`] puts its
/// neighbours on the list, up to `hops` edges from the nearest seed. Work follows the size
/// of the change, not the size of the graph; `max_updates` bounds it in the worst case.
pub fn local_update(
    graph: &Graph,
    y: &[f32],
    f: &mut [f32],
    seeds: &[u32],
    hops: usize,
    p: &Params,
    max_updates: usize,
) -> LocalUpdate {
    use std::collections::hash_map::Entry;
    use std::collections::{HashMap, VecDeque};
    let c = p.classes;
    let mut depth: HashMap<u32, usize> = HashMap::with_capacity(seeds.len() * 8);
    let mut queued: HashMap<u32, bool> = HashMap::with_capacity(seeds.len() * 8);
    let mut queue: VecDeque<u32> = VecDeque::with_capacity(seeds.len() * 4);
    let mut out = LocalUpdate {
        mass_delta: vec![0.0; c],
        ..Default::default()
    };
    for &s in seeds {
        if let Entry::Vacant(e) = depth.entry(s) {
            e.insert(0);
            queued.insert(s, true);
            queue.push_back(s);
            out.visited.push(s);
        }
    }
    let mut new = vec![0f32; c];
    while let Some(i) = queue.pop_front() {
        queued.insert(i, false);
        step_node(graph, f, y, p, i, &mut new);
        let row = &mut f[i as usize * c..(i as usize + 1) * c];
        let mut moved = 0f32;
        for ((old, v), m) in row.iter_mut().zip(&new).zip(out.mass_delta.iter_mut()) {
            moved = moved.max((*v - *old).abs());
            *m += (*v - *old) as f64;
            *old = *v;
        }
        out.updates += 1;
        if out.updates >= max_updates {
            break;
        }
        let d = depth[&i];
        if moved <= PUSH_THRESHOLD || d >= hops {
            continue;
        }
        for &(j, _) in graph.neighbours(i) {
            let dj = depth.entry(j).or_insert_with(|| {
                out.visited.push(j);
                d + 1
            });
            *dj = (*dj).min(d + 1);
            let q = queued.entry(j).or_insert(false);
            if !*q {
                *q = true;
                queue.push_back(j);
            }
        }
    }
    out
}

/// r_i = F_i / ΣF_i; `None` when no weak evidence reaches the node (ΣF_i ≈ 0).
pub fn normalize(row: &[f32]) -> Option<Vec<f32>> {
    let sum: f32 = row.iter().map(|v| v.max(0.0)).sum();
    if sum <= 1e-12 {
        return None;
    }
    Some(row.iter().map(|v| v.max(0.0) / sum).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_graph(n: usize) -> Graph {
        let mut g = Graph::new(2);
        for _ in 0..n {
            g.add_node();
        }
        for i in 0..n as u32 {
            let mut list = vec![];
            if i > 0 {
                list.push((i - 1, 0.9));
            }
            if (i as usize) + 1 < n {
                list.push((i + 1, 0.9));
            }
            g.set_knn(i, list);
        }
        g
    }

    #[test]
    fn adjacency_is_symmetric_union_of_knn_lists() {
        let mut g = Graph::new(1);
        for _ in 0..3 {
            g.add_node();
        }
        g.set_knn(0, vec![(1, 0.8)]);
        g.set_knn(2, vec![(1, 0.5)]);
        g.set_knn(1, vec![(0, 0.8)]);
        assert_eq!(g.edge_count(), 2);
        assert!((g.degree(1) - 1.3).abs() < 1e-6);
        // 2 drops 1 for 0: edge 2–1 disappears (1 does not list 2), edge 2–0 appears.
        let touched = g.offer(2, 0, 0.6);
        assert_eq!(touched, vec![0, 1, 2]);
        assert_eq!(g.edge_count(), 2);
        assert!((g.degree(1) - 0.8).abs() < 1e-6);
        assert!((g.degree(0) - 1.4).abs() < 1e-6);
        // A worse offer to a full list changes nothing.
        assert!(g.offer(2, 1, 0.1).is_empty());
    }

    #[test]
    fn negative_similarities_give_no_edge() {
        let mut g = Graph::new(2);
        g.add_node();
        g.add_node();
        g.set_knn(0, vec![(1, -0.3)]);
        assert_eq!(g.edge_count(), 0);
        assert_eq!(g.knn(0).len(), 1);
    }

    #[test]
    fn labels_spread_along_a_line() {
        let g = line_graph(5);
        let p = Params {
            classes: 2,
            alpha: 0.5,
            iterations: 30,
        };
        let mut y = vec![0.0; 10];
        y[0] = 1.0; // node 0: class 0
        y[9] = 1.0; // node 4: class 1
        let (f, _) = full_pass(&g, &y, &p);
        let r: Vec<Vec<f32>> = (0..5)
            .map(|i| normalize(&f[i * 2..i * 2 + 2]).unwrap())
            .collect();
        assert!(r[1][0] > 0.5 && r[3][1] > 0.5);
        assert!(
            (r[2][0] - 0.5).abs() < 1e-5,
            "the middle node is undecided: {:?}",
            r[2]
        );
    }

    #[test]
    fn local_update_from_everything_converges_to_the_full_pass() {
        let g = line_graph(6);
        let p = Params {
            classes: 2,
            alpha: 0.5,
            iterations: 100,
        };
        let mut y = vec![0.0; 12];
        y[0] = 1.0;
        y[11] = 1.0;
        let (full, _) = full_pass(&g, &y, &p);
        let mut f = vec![0.0; 12];
        let all: Vec<u32> = (0..6).collect();
        let update = local_update(&g, &y, &mut f, &all, 10, &p, 100_000);
        assert_eq!(update.visited.len(), 6);
        for (a, b) in full.iter().zip(&f) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        assert_eq!(normalize(&[0.0, 0.0]), None);
    }
}
