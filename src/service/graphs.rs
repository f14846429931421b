//! Each task's graph in memory: loaded from its snapshot or rebuilt from stored embeddings,
//! kept in step with the database, and "settling" examples whose inputs changed (graph
//! update, refined labels written back, decisions recomputed).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{dist_json, parse_dist, Service, TaskCtx};
use crate::error::{Error, Result};
use crate::graph::{Insert, TaskGraph, UpdateReport};
use crate::store::examples::{self, GraphRow};
use crate::store::{bytes_to_f32s, keyset_pages};

pub struct Slot {
    pub graph: Option<TaskGraph>,
    updates_since_save: u32,
    last_save: Instant,
    /// When the graph was last counted against the stored embeddings (see `catch_up`).
    gaps_checked: Option<Instant>,
}

/// How often a request may pay for counting the task's stored embeddings: rows another
/// process committed out of id order join the graph within this long of the next request.
const GAP_CHECK_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Registry {
    slots: std::sync::Mutex<HashMap<i64, Arc<Mutex<Slot>>>>,
}

impl Registry {
    fn slot(&self, task_id: i64) -> Arc<Mutex<Slot>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry(task_id)
            .or_insert_with(|| {
                Arc::new(Mutex::new(Slot {
                    graph: None,
                    updates_since_save: 0,
                    last_save: Instant::now(),
                    gaps_checked: None,
                }))
            })
            .clone()
    }

    pub fn remove(&self, task_id: i64) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.remove(&task_id);
    }

    pub async fn save_all(&self, data_dir: &Path) {
        let slots: Vec<(i64, Arc<Mutex<Slot>>)> = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        for (task_id, slot) in slots {
            let mut slot = slot.lock().await;
            if slot.updates_since_save > 0 {
                if let Some(graph) = &slot.graph {
                    match graph.save(&TaskGraph::snapshot_dir(data_dir, task_id)) {
                        Ok(()) => slot.updates_since_save = 0,
                        Err(e) => {
                            tracing::warn!(task_id, error = %e, "saving graph snapshot failed")
                        }
                    }
                }
            }
        }
    }
}

/// The state of a task's similarity graph against the database.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GraphCheck {
    /// Examples in the in-memory graph, after catching up.
    pub nodes: usize,
    /// Examples stored with an embedding from the graph's encoder: `nodes` should equal it.
    pub stored_embeddings: i64,
    /// Examples this check found missing from the graph and added.
    pub added: usize,
    pub encoder_id: String,
    /// The task's graph version (bumped by every write of refined labels).
    pub graph_version: i64,
    /// Whether `nodes == stored_embeddings`.
    pub consistent: bool,
}

/// What settling did.
#[derive(Debug, Clone, Default)]
pub struct SettleReport {
    pub graph_version: i64,
    pub full_pass: bool,
    pub region: usize,
    pub refined_changed: usize,
    pub decisions: Vec<super::decide::Current>,
}

const PAGE: i64 = 2000;

fn to_insert(row: &GraphRow, with_embedding: bool) -> Insert {
    Insert {
        example_id: row.id,
        embedding: if with_embedding {
            row.embedding.as_deref().map(bytes_to_f32s)
        } else {
            None
        },
        weak: parse_dist(row.weak.as_deref()),
    }
}

/// The examples whose decision an update may change: those it was about, and those whose
/// refined label changed class.
fn to_redecide(ids: &[i64], report: &UpdateReport) -> Vec<i64> {
    let mut redo: BTreeSet<i64> = ids.iter().copied().collect();
    redo.extend(
        report
            .changes
            .iter()
            .filter(|c| c.label_changed)
            .map(|c| c.example_id),
    );
    redo.into_iter().collect()
}

/// How old a dirty example must be before the recovery sweep settles it.
const SWEEP_GRACE_MS: i64 = 10_000;

impl Service {
    /// Locks the task's graph, loading or rebuilding it when absent or stale, and catches up
    /// with examples other processes (or a crash) left out.
    pub async fn graph_guard(&self, task: &TaskCtx) -> Result<OwnedMutexGuard<Slot>> {
        let (_, encoder_id) = self.task_encoder(task).await?;
        let mut slot = self.graphs.slot(task.id).lock_owned().await;
        let stale = match &slot.graph {
            Some(g) => g.encoder_id != encoder_id || g.settings() != task.settings.graph(),
            None => true,
        };
        if stale {
            slot.graph = None;
            let graph = self.load_graph(task, &encoder_id).await?;
            slot.graph = Some(graph);
            slot.updates_since_save = 1;
            // Loading reconciled the whole id set.
            slot.gaps_checked = Some(Instant::now());
        }
        let check_gaps = slot
            .gaps_checked
            .is_none_or(|t| t.elapsed() >= GAP_CHECK_EVERY);
        let graph = slot
            .graph
            .as_mut()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("graph missing")))?;
        self.apply_prior(task, graph).await?;
        self.catch_up(task, graph, check_gaps).await?;
        if check_gaps {
            slot.gaps_checked = Some(Instant::now());
        }
        Ok(slot)
    }

    async fn load_graph(&self, task: &TaskCtx, encoder_id: &str) -> Result<TaskGraph> {
        let dims = self.model.info.dims;
        let dir = TaskGraph::snapshot_dir(&self.data_dir, task.id);
        let settings = task.settings.graph();
        let loaded =
            tokio::task::block_in_place(|| TaskGraph::load(&dir, dims, task.k(), settings));
        let mut graph = match loaded {
            Ok(g) if g.encoder_id == encoder_id => {
                tracing::info!(task = %task.name, nodes = g.len(), "graph snapshot loaded");
                g
            }
            other => {
                match other {
                    Err(e) if dir.exists() => {
                        tracing::warn!(task = %task.name, error = %e, "graph snapshot unusable; rebuilding")
                    }
                    Ok(_) => {
                        tracing::info!(task = %task.name, "graph snapshot is for another encoder; rebuilding")
                    }
                    Err(_) => {}
                }
                self.rebuild_graph(task, encoder_id).await?
            }
        };
        self.reconcile(task, &mut graph).await?;
        Ok(graph)
    }

    /// Builds the graph from every stored embedding of the task made by `encoder_id`.
    async fn rebuild_graph(&self, task: &TaskCtx, encoder_id: &str) -> Result<TaskGraph> {
        let total = crate::store::tasks::counts(self.store.pool(), task.id)
            .await?
            .embedded;
        let mut graph = TaskGraph::new(
            self.model.info.dims,
            task.k(),
            task.settings.graph(),
            encoder_id,
        )?;
        let started = Instant::now();
        let mut last_log = Instant::now();
        let pool = self.store.pool();
        let mut pages = std::pin::pin!(keyset_pages(
            0,
            |r: &GraphRow| r.id,
            |a| { examples::graph_rows_page(pool, task.id, a, PAGE, true, false) }
        ));
        while let Some(rows) = pages.try_next().await? {
            let inserts: Vec<Insert> = rows
                .iter()
                .filter(|r| r.encoder_id.as_deref() == Some(encoder_id))
                .map(|r| to_insert(r, true))
                .collect();
            tokio::task::block_in_place(|| graph.bulk_insert(&inserts))?;
            if last_log.elapsed() > Duration::from_secs(5) {
                tracing::info!(task = %task.name, done = graph.len(), total, "rebuilding graph");
                last_log = Instant::now();
            }
        }
        tracing::info!(
            task = %task.name,
            nodes = graph.len(),
            seconds = started.elapsed().as_secs_f64(),
            "graph rebuilt from stored embeddings"
        );
        Ok(graph)
    }

    /// Aligns a loaded graph with the database: weak labels changed since the snapshot, and
    /// the refined labels the database holds (so only real changes are written back).
    async fn reconcile(&self, task: &TaskCtx, graph: &mut TaskGraph) -> Result<()> {
        let mut changed_weak = Vec::new();
        let pool = self.store.pool();
        let mut pages = std::pin::pin!(keyset_pages(
            0,
            |r: &GraphRow| r.id,
            |a| { examples::graph_rows_page(pool, task.id, a, PAGE * 5, false, false) }
        ));
        let mut missing = Vec::new();
        while let Some(rows) = pages.try_next().await? {
            for row in &rows {
                if !graph.contains(row.id) {
                    if row.encoder_id.as_deref() == Some(graph.encoder_id.as_str()) {
                        missing.push(row.id);
                    }
                    continue;
                }
                let weak = parse_dist(row.weak.as_deref());
                if graph.weak_of(row.id) != weak {
                    changed_weak.push(to_insert(row, false));
                }
                graph.set_saved(row.id, parse_dist(row.smoothed.as_deref()).as_deref());
            }
        }
        // Stored examples the snapshot lacks (written by another process, or committed
        // after the snapshot was saved, in any id order) join the graph now.
        if !missing.is_empty() {
            tracing::info!(task = %task.name, examples = missing.len(), "adding stored examples the graph snapshot lacks");
        }
        for ids in missing.chunks(PAGE as usize) {
            let rows = examples::graph_rows_of(self.store.pool(), ids).await?;
            changed_weak.extend(rows.iter().map(|r| to_insert(r, true)));
        }
        let report = tokio::task::block_in_place(|| -> anyhow::Result<UpdateReport> {
            graph.apply(&changed_weak)?;
            Ok(graph.full_update())
        })?;
        self.write_refined(task, &report).await?;
        Ok(())
    }

    /// Adds embedded examples the graph lacks: first those above its newest node (the
    /// common case, cheap), then, with `check_gaps`, when the count of stored embeddings
    /// still differs from the graph's, any others (rows that committed out of id order, from
    /// another process or across a crash). Counting scans the task's rows, so requests do it
    /// at most every `GAP_CHECK_EVERY`.
    async fn catch_up(
        &self,
        task: &TaskCtx,
        graph: &mut TaskGraph,
        check_gaps: bool,
    ) -> Result<()> {
        self.catch_up_newer(task, graph).await?;
        if !check_gaps {
            return Ok(());
        }
        let stored =
            examples::embedded_count(self.store.pool(), task.id, &graph.encoder_id).await?;
        if stored as usize != graph.len() {
            self.fill_gaps(task, graph).await?;
        }
        Ok(())
    }

    /// Walks the ids of the task's embedded examples and adds those the graph lacks.
    async fn fill_gaps(&self, task: &TaskCtx, graph: &mut TaskGraph) -> Result<usize> {
        let pool = self.store.pool();
        let encoder_id = graph.encoder_id.clone();
        let mut missing = Vec::new();
        let mut pages = std::pin::pin!(keyset_pages(
            0,
            |id: &i64| *id,
            |a| { examples::embedded_ids_page(pool, task.id, &encoder_id, a, PAGE * 5) }
        ));
        while let Some(ids) = pages.try_next().await? {
            missing.extend(ids.into_iter().filter(|id| !graph.contains(*id)));
        }
        for ids in missing.chunks(PAGE as usize) {
            let rows = examples::graph_rows_of(pool, ids).await?;
            let inserts: Vec<Insert> = rows.iter().map(|r| to_insert(r, true)).collect();
            let report = tokio::task::block_in_place(|| graph.apply(&inserts))?;
            self.commit_settle(task, &report, &to_redecide(ids, &report), "catch-up")
                .await?;
        }
        if !missing.is_empty() {
            tracing::info!(task = %task.name, examples = missing.len(), "graph caught up with examples committed out of id order");
        }
        Ok(missing.len())
    }

    /// Adds settled examples newer than the graph's newest node (another process's writes).
    /// Dirty ones are left to the writes that made them, which settle them next (or, after a
    /// crash, to the recovery sweep): catching them up here would decide them twice.
    async fn catch_up_newer(&self, task: &TaskCtx, graph: &mut TaskGraph) -> Result<()> {
        let pool = self.store.pool();
        let mut pages = std::pin::pin!(keyset_pages(
            graph.max_example_id(),
            |r: &GraphRow| r.id,
            |a| { examples::graph_rows_page(pool, task.id, a, PAGE, true, true) }
        ));
        while let Some(rows) = pages.try_next().await? {
            let inserts: Vec<Insert> = rows
                .iter()
                .filter(|r| r.encoder_id.as_deref() == Some(graph.encoder_id.as_str()))
                .map(|r| to_insert(r, true))
                .collect();
            if inserts.is_empty() {
                continue;
            }
            let ids: Vec<i64> = inserts.iter().map(|i| i.example_id).collect();
            let report = tokio::task::block_in_place(|| graph.apply(&inserts))?;
            self.commit_settle(task, &report, &to_redecide(&ids, &report), "catch-up")
                .await?;
        }
        Ok(())
    }

    /// Writes the graph outputs that moved and bumps the task's graph version; returns it.
    /// Nothing moved: nothing is written (no contention on the task row).
    async fn write_refined(&self, task: &TaskCtx, report: &UpdateReport) -> Result<i64> {
        if report.changes.is_empty() {
            return Ok(crate::store::tasks::graph_version(self.store.pool(), task.id).await?);
        }
        let updates = refined_updates(report);
        super::retry::on_conflict("refined labels", || async {
            let mut tx = self.store.begin_task_write(task.id).await?;
            let version = crate::store::tasks::bump_graph_version(tx.conn(), task.id).await?;
            examples::set_smoothed(tx.conn(), &updates).await?;
            tx.commit().await?;
            Ok(version)
        })
        .await
    }

    /// Writes the graph outputs that moved and the decisions of `ids` in one transaction
    /// (one commit, and no moment where another reader sees refined labels without their
    /// decisions); returns the graph version and the decisions.
    async fn commit_settle(
        &self,
        task: &TaskCtx,
        report: &UpdateReport,
        ids: &[i64],
        trigger: &str,
    ) -> Result<(i64, Vec<super::decide::Current>)> {
        let updates = refined_updates(report);
        let version = self.active_version(task).await?;
        super::retry::on_conflict("settle", || async {
            let mut tx = self.store.begin_task_write(task.id).await?;
            let graph_version = if updates.is_empty() {
                crate::store::tasks::graph_version(tx.conn(), task.id).await?
            } else {
                let v = crate::store::tasks::bump_graph_version(tx.conn(), task.id).await?;
                examples::set_smoothed(tx.conn(), &updates).await?;
                v
            };
            let mut decided = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(super::decide::CHUNK) {
                decided.extend(
                    self.decide_in(
                        &mut tx,
                        task,
                        version.as_deref(),
                        chunk,
                        graph_version,
                        trigger,
                    )
                    .await?,
                );
            }
            tx.commit().await?;
            Ok((graph_version, decided))
        })
        .await
    }

    /// Points the graph at the active version's estimated class prior; the examples whose
    /// smoothed label changed class are decided again.
    async fn apply_prior(&self, task: &TaskCtx, graph: &mut TaskGraph) -> Result<()> {
        let prior = self
            .active_version(task)
            .await?
            .and_then(|v| v.pipeline.as_ref().map(|p| p.prior.shares.clone()));
        let report = tokio::task::block_in_place(|| graph.set_prior(prior));
        if report.changes.is_empty() {
            return Ok(());
        }
        self.commit_settle(task, &report, &to_redecide(&[], &report), "class prior")
            .await?;
        Ok(())
    }

    /// Brings examples whose inputs changed up to date: graph, refined labels, decisions.
    pub async fn settle(&self, task: &TaskCtx, ids: &[i64], trigger: &str) -> Result<SettleReport> {
        let started = Instant::now();
        let mut slot = self.graph_guard(task).await?;
        let started = super::record_phase("settle_lock", started);
        let rows = examples::graph_rows_of(self.store.pool(), ids).await?;
        let graph = slot
            .graph
            .as_mut()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("graph missing")))?;
        let inserts: Vec<Insert> = rows
            .iter()
            .filter(|r| {
                graph.contains(r.id) || r.encoder_id.as_deref() == Some(graph.encoder_id.as_str())
            })
            .map(|r| to_insert(r, !graph.contains(r.id)))
            .collect();
        let report = tokio::task::block_in_place(|| graph.apply(&inserts))?;
        let started = super::record_phase("settle_graph", started);
        let (graph_version, decisions) = self
            .commit_settle(task, &report, &to_redecide(ids, &report), trigger)
            .await?;
        let started = super::record_phase("settle_commit", started);
        slot.updates_since_save += 1;
        if slot.updates_since_save >= 20 || slot.last_save.elapsed() > Duration::from_secs(60) {
            let dir = TaskGraph::snapshot_dir(&self.data_dir, task.id);
            if let Some(graph) = &slot.graph {
                match tokio::task::block_in_place(|| graph.save(&dir)) {
                    Ok(()) => {
                        slot.updates_since_save = 0;
                        slot.last_save = Instant::now();
                    }
                    Err(e) => {
                        tracing::warn!(task = %task.name, error = %e, "saving graph snapshot failed")
                    }
                }
            }
        }
        super::record_phase("settle_snapshot", started);
        drop(slot);
        Ok(SettleReport {
            graph_version,
            full_pass: report.full_pass,
            region: report.region,
            refined_changed: report.changes.len(),
            decisions,
        })
    }

    /// Settles every example left dirty (a crash between commit and decision, or another
    /// process's writes). Run by the scheduler.
    pub async fn settle_dirty(&self) -> Result<usize> {
        let mut total = 0;
        // A write settles itself before it is answered; the sweep takes only what a crash
        // or another process left behind, not writes still in flight.
        let before = crate::store::now_ms() - SWEEP_GRACE_MS;
        for task_id in examples::tasks_with_dirty(self.store.pool(), before).await? {
            if self.rescoring.contains(task_id) {
                continue;
            }
            let Some(task) = self.task_by_id(task_id).await? else {
                continue;
            };
            let pool = self.store.pool();
            let mut pages = std::pin::pin!(keyset_pages(
                0,
                |id: &i64| *id,
                |a| { examples::dirty_ids(pool, task.id, a, 500, before) }
            ));
            while let Some(ids) = pages.try_next().await? {
                self.settle(&task, &ids, "recovery").await?;
                total += ids.len();
            }
        }
        Ok(total)
    }

    /// Checks a task's graph against every stored embedding, adding any example it lacks.
    pub async fn check_graph(&self, task_name: &str) -> Result<GraphCheck> {
        let task = self.task(task_name).await?;
        let mut slot = self.graph_guard(&task).await?;
        let graph = slot
            .graph
            .as_mut()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("graph missing")))?;
        let added = self.fill_gaps(&task, graph).await?;
        let stored =
            examples::embedded_count(self.store.pool(), task.id, &graph.encoder_id).await?;
        let nodes = graph.len();
        let encoder_id = graph.encoder_id.clone();
        if added > 0 {
            slot.updates_since_save += 1;
        }
        drop(slot);
        let graph_version = crate::store::tasks::graph_version(self.store.pool(), task.id).await?;
        Ok(GraphCheck {
            nodes,
            stored_embeddings: stored,
            added,
            encoder_id,
            graph_version,
            consistent: nodes as i64 == stored,
        })
    }

    /// Drops a task's graph from memory and disk (task deleted or re-embedded).
    pub fn forget_graph(&self, task_id: i64, remove_snapshot: bool) {
        self.graphs.remove(task_id);
        if remove_snapshot {
            let _ = std::fs::remove_dir_all(TaskGraph::snapshot_dir(&self.data_dir, task_id));
        }
    }

    /// Neighbours and the in-memory refined label of one example, for explanations.
    pub async fn neighbours(
        &self,
        task: &TaskCtx,
        example_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, f32)>> {
        let slot = self.graph_guard(task).await?;
        Ok(slot
            .graph
            .as_ref()
            .map(|g| g.neighbours(example_id, limit))
            .unwrap_or_default())
    }
}

/// The refined labels an update moved, as stored (JSON distributions).
fn refined_updates(report: &UpdateReport) -> Vec<(i64, String)> {
    report
        .changes
        .iter()
        .map(|c| {
            let json = c
                .refined
                .as_deref()
                .map(dist_json)
                .unwrap_or_else(|| "null".into());
            (c.example_id, json)
        })
        .collect()
}
