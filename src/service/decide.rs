//! Scoring examples with the active model version and recording decisions. A decision row
//! is appended when an example's (label, source) changes; the example row always carries the
//! latest scores, the refined weak label in force, and its current decision with its
//! calibrated confidence.

use std::collections::HashMap;

use futures::TryStreamExt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::version_cache::LoadedVersion;
use super::{dist_json, parse_dist, Service, TaskCtx};
use crate::error::Result;
use crate::method::confidence::{weak_side, WeakEvidence};
use crate::method::heads::Heads;
use crate::method::pik::{msp, PikSource};
use crate::method::pipeline::PipelineFit;
use crate::method::policy::Policy;
use crate::method::prior::{estimate, PriorEvidence};
use crate::method::rule::{decide, DecisionSource, Inputs, Rule, StrongSide, WeakSide};
use crate::method::safeguard::StageMode;
use crate::method::weak::{argmax, break_tie, tied_top};
use crate::store::examples;
use crate::store::weak_labels::{self, WeakLabelRow};
use crate::store::{bytes_to_f32s, decisions, keyset_pages, now_ms};

/// Where a decision's confidence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceSource {
    /// A human label.
    Gold,
    /// A trained P(IK) head.
    PIk,
    /// The strong model's maximum softmax probability (too few gold labels; uncalibrated).
    Msp,
    /// The weak-side trust model, trained on gold.
    Trust,
    /// The refined weak label's own probability (too few gold labels; uncalibrated).
    RefinedProbability,
}

impl ConfidenceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfidenceSource::Gold => "gold",
            ConfidenceSource::PIk => "p_ik",
            ConfidenceSource::Msp => "msp",
            ConfidenceSource::Trust => "trust",
            ConfidenceSource::RefinedProbability => "refined_probability",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ConfidenceSource::Gold,
            ConfidenceSource::PIk,
            ConfidenceSource::Msp,
            ConfidenceSource::Trust,
            ConfidenceSource::RefinedProbability,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// An example's current decision, as the API reports it.
#[derive(Debug, Clone)]
pub struct Current {
    pub example_id: i64,
    pub label: Option<usize>,
    pub source: DecisionSource,
    pub p_ik: Option<f32>,
    pub p_ik_source: PikSource,
    pub confidence: Option<f32>,
    pub confidence_source: Option<ConfidenceSource>,
    /// What an abstaining decision would have said.
    pub suggested: Option<usize>,
    pub reason: String,
    pub refined_label: Option<usize>,
    pub changed: bool,
}

/// The strong model's view of one embedding under a version's heads.
pub struct Scored {
    pub probs: Vec<f32>,
    pub p_ik: f32,
    pub source: PikSource,
}

pub fn score(heads: &Heads, embedding: &[f32]) -> Scored {
    let probs = heads.probs(embedding);
    match heads.trained_pik(embedding, &probs) {
        Some(q) => Scored {
            probs,
            p_ik: q,
            source: PikSource::Trained,
        },
        None => Scored {
            p_ik: msp(&probs),
            probs,
            source: PikSource::Msp,
        },
    }
}

/// τ in force: the task's fixed value, or the one fitted when the version was trained.
pub fn tau_for(task: &TaskCtx, version: Option<&LoadedVersion>) -> f32 {
    match (task.settings.tau.fixed(), version) {
        (Some(t), _) => t,
        (None, Some(v)) => v.manifest.pik.tau as f32,
        (None, None) => 0.5,
    }
}

/// How a task decides now: the active version's pipeline (fitted on gold at its job), or,
/// before any, the unchecked defaults (stages in `auto` stay off: nothing has checked them).
pub struct Decider<'a> {
    pub pipeline: Option<&'a PipelineFit>,
    pub rule: Rule,
    pub smoothing_on: bool,
    /// Before any pipeline: the class shares a tie in the refined label leans to, and where
    /// they come from (`tie_lean`). A fitted pipeline carries its own lean in its source model.
    pub lean: Option<(Vec<f64>, String)>,
}

/// Before a task's first job nothing fitted breaks a tie in the weak mean (two sources that
/// disagree), and `argmax` would give every one to the label the task lists first, the rare
/// class as often as not. Until a job fits its own lean, ties go to the class the task's
/// labels make likelier: its gold labels' shares once there are enough of them, else the
/// shares of its weak labels, each example counted once (the same fallbacks as a job's
/// class prior, whose weak shares are the column sums of the examples' weak means).
pub async fn tie_lean(
    conn: &mut sqlx::AnyConnection,
    task: &TaskCtx,
) -> Result<(Vec<f64>, String)> {
    let k = task.k();
    let (mut gold, mut mass) = (vec![0usize; k], vec![0f64; k]);
    for row in weak_labels::class_counts(&mut *conn, task.id).await? {
        let Ok(l) = usize::try_from(row.label) else {
            continue;
        };
        match row.kind.as_str() {
            "gold" if l < k => gold[l] += row.n.round() as usize,
            "vote" if l < k => mass[l] += row.n,
            _ => {}
        }
    }
    // Each voted example's mass sums to one, so the total is how many there are.
    let voted = mass.iter().sum::<f64>().round() as usize;
    let prior = estimate(&PriorEvidence {
        classes: k,
        gold_counts: &gold,
        source_model: None,
        weak_mass: Some((&mass, voted)),
    });
    Ok((prior.shares, prior.reason))
}

impl<'a> Decider<'a> {
    pub fn new(task: &TaskCtx, version: Option<&'a LoadedVersion>) -> Self {
        let s = &task.settings;
        let tau = tau_for(task, version);
        let pipeline = version.and_then(|v| v.pipeline.as_ref());
        // A setting forced after the fit wins over the fitted decision.
        let forced = |mode: StageMode, fitted: bool| match mode {
            StageMode::On => true,
            StageMode::Off => false,
            StageMode::Auto => fitted,
        };
        match pipeline {
            Some(p) => {
                let mut rule = p.policy.rule();
                rule.strong = forced(s.strong, rule.strong);
                rule.tau = tau;
                // The target-precision threshold is fitted at a job; without a target, none.
                if s.target_precision.is_none() {
                    rule.abstain_below = None;
                }
                Decider {
                    pipeline,
                    rule,
                    smoothing_on: forced(s.smoothing, p.smoothing.on),
                    lean: None,
                }
            }
            None => Decider {
                pipeline: None,
                rule: Policy::unchecked(s.strong, s.selection, tau, "no model version yet").rule(),
                smoothing_on: s.smoothing == StageMode::On,
                lean: None,
            },
        }
    }

    /// Whether ties in the refined labels need a lean from the task's class counts: only
    /// before a pipeline, and only where one of `refined` is tied.
    pub fn needs_lean<'r>(&self, mut refined: impl Iterator<Item = &'r [f32]>) -> bool {
        self.pipeline.is_none() && refined.any(|r| tied_top(r).len() > 1)
    }

    /// The refined weak label in force: smoothed when smoothing is on (and the example is in
    /// the graph), else the weak aggregate.
    pub fn refined(&self, weak: Option<Vec<f32>>, smoothed: Option<Vec<f32>>) -> Option<Vec<f32>> {
        if self.smoothing_on {
            smoothed.or(weak)
        } else {
            weak
        }
    }

    /// `refined` with a tie at its top broken by the lean, and the words saying so.
    pub fn lean_on(&self, task: &TaskCtx, mut refined: Vec<f32>) -> (Vec<f32>, Option<String>) {
        let Some((shares, why)) = &self.lean else {
            return (refined, None);
        };
        if tied_top(&refined).len() < 2 {
            return (refined, None);
        }
        break_tie(&mut refined, shares);
        let note = argmax(&refined).and_then(|l| task.label_name(l)).map(|name| {
            format!("; its weak labels tie, and before any job a tie goes to the label the task's counts make likelier ({why}): {name}")
        });
        (refined, note)
    }

    /// The weak side's proposal and its confidence.
    pub fn weak_side(
        &self,
        refined: &[f32],
        aggregate: Option<&[f32]>,
        smoothed: Option<&[f32]>,
        votes: &[WeakLabelRow],
    ) -> Option<(WeakSide, ConfidenceSource)> {
        let label = argmax(refined)?;
        let agreeing = votes
            .iter()
            .filter(|v| parse_dist(Some(&v.scores)).and_then(|s| argmax(&s)) == Some(label))
            .count() as f32
            / votes.len().max(1) as f32;
        let evidence = WeakEvidence {
            label,
            refined,
            aggregate,
            smoothed,
            votes: votes.len(),
            agreeing,
        };
        let side = weak_side(self.pipeline.and_then(|p| p.trust.as_ref()), &evidence);
        let source = if side.calibrated {
            ConfidenceSource::Trust
        } else {
            ConfidenceSource::RefinedProbability
        };
        Some((side, source))
    }
}

/// One decided example waiting to be written (`write_decided`).
struct Pending {
    example_id: i64,
    label: Option<i64>,
    source: &'static str,
    pred_label: Option<i64>,
    probs: Option<String>,
    p_ik: Option<f64>,
    pik_source: &'static str,
    weak: Option<String>,
    refined: Option<String>,
    refined_label: Option<i64>,
    confidence: Option<f64>,
    confidence_source: &'static str,
    suggested: Option<i64>,
    reason: String,
    changed: bool,
}

pub(super) const CHUNK: usize = 500;

impl Service {
    /// Recomputes and records the decisions of `ids`.
    pub async fn redecide(
        &self,
        task: &TaskCtx,
        ids: &[i64],
        graph_version: i64,
        trigger: &str,
    ) -> Result<Vec<Current>> {
        let version = self.active_version(task).await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let decided = super::retry::on_conflict("decide", || {
                self.redecide_chunk(task, version.as_deref(), chunk, graph_version, trigger)
            })
            .await?;
            out.extend(decided);
        }
        Ok(out)
    }

    /// Decides one chunk in one transaction. The rows are read inside it, under the task's
    /// write lock: a decision never rests on a state another writer has since replaced.
    async fn redecide_chunk(
        &self,
        task: &TaskCtx,
        version: Option<&LoadedVersion>,
        chunk: &[i64],
        graph_version: i64,
        trigger: &str,
    ) -> Result<Vec<Current>> {
        let mut tx = self.store.begin_task_write(task.id).await?;
        let out = self
            .decide_in(&mut tx, task, version, chunk, graph_version, trigger)
            .await?;
        tx.commit().await?;
        Ok(out)
    }

    /// Decides `chunk` inside `tx`, a transaction holding the task's write lock (the caller
    /// commits: settling writes refined labels and decisions in one transaction).
    pub(super) async fn decide_in(
        &self,
        tx: &mut crate::store::WriteTx,
        task: &TaskCtx,
        version: Option<&LoadedVersion>,
        chunk: &[i64],
        graph_version: i64,
        trigger: &str,
    ) -> Result<Vec<Current>> {
        let mut decider = Decider::new(task, version);
        let tau = decider.rule.tau;
        let mut out = Vec::with_capacity(chunk.len());
        {
            let rows = examples::by_ids(tx.conn(), chunk).await?;
            // Each row's weak aggregate, smoothed label and refined label in force (its
            // ties not yet broken), parsed once: whether any is tied decides the lean.
            let dists: Vec<_> = rows
                .iter()
                .map(|r| {
                    let weak = parse_dist(r.weak.as_deref());
                    let smoothed = parse_dist(r.smoothed.as_deref());
                    let refined = decider.refined(weak.clone(), smoothed.clone());
                    (weak, smoothed, refined)
                })
                .collect();
            if decider.needs_lean(dists.iter().filter_map(|(_, _, r)| r.as_deref())) {
                decider.lean = Some(tie_lean(tx.conn(), task).await?);
            }
            let embeddings: HashMap<i64, Vec<f32>> = match version {
                Some(_) => examples::embeddings_of(tx.conn(), chunk)
                    .await?
                    .into_iter()
                    .map(|r| (r.id, bytes_to_f32s(&r.embedding)))
                    .collect(),
                None => HashMap::new(),
            };
            let mut votes: HashMap<i64, Vec<WeakLabelRow>> = HashMap::new();
            for v in weak_labels::weak_labels(tx.conn(), chunk).await? {
                votes.entry(v.example_id).or_default().push(v);
            }
            let now = now_ms();
            let mut pending: Vec<Pending> = Vec::with_capacity(chunk.len());
            for (row, (weak, smoothed, refined)) in rows.into_iter().zip(dists) {
                // Only embeddings from the version's own encoder can be scored by its heads.
                let scored = version.and_then(|v| {
                    let same_encoder = row.encoder_id.as_deref() == Some(v.encoder_id.as_str());
                    embeddings
                        .get(&row.id)
                        .filter(|_| same_encoder)
                        .map(|e| score(&v.heads, e))
                });
                let (refined, tie_note) = match refined {
                    Some(r) => {
                        let (r, note) = decider.lean_on(task, r);
                        (Some(r), note)
                    }
                    None => (None, None),
                };
                let weak_side = refined.as_deref().and_then(|r| {
                    decider.weak_side(
                        r,
                        weak.as_deref(),
                        smoothed.as_deref(),
                        votes.get(&row.id).map(Vec::as_slice).unwrap_or(&[]),
                    )
                });
                let gold = row.gold_label.and_then(|g| usize::try_from(g).ok());
                let outcome = decide(
                    &Inputs {
                        gold,
                        strong: scored.as_ref().map(|s| StrongSide {
                            probs: &s.probs,
                            p_ik: s.p_ik,
                            calibrated: s.source == PikSource::Trained,
                        }),
                        weak: weak_side.map(|(w, _)| w),
                    },
                    &decider.rule,
                );
                let confidence_source = match outcome.branch {
                    DecisionSource::Gold => Some(ConfidenceSource::Gold),
                    DecisionSource::Strong => scored.as_ref().map(|s| match s.source {
                        PikSource::Trained => ConfidenceSource::PIk,
                        _ => ConfidenceSource::Msp,
                    }),
                    DecisionSource::WeakRefined => weak_side.map(|(_, c)| c),
                    DecisionSource::Abstain | DecisionSource::None => None,
                };
                let label = outcome.label.map(|l| l as i64);
                let changed = row.decision_id.is_none()
                    || row.decision_label != label
                    || row.decision_source.as_deref() != Some(outcome.source.as_str());
                let pik_source = scored.as_ref().map(|s| s.source).unwrap_or(PikSource::None);
                let refined_label = refined.as_deref().and_then(argmax);
                let reason = format!(
                    "{trigger}: {}{}",
                    outcome.reason,
                    tie_note
                        .filter(|_| outcome.branch != DecisionSource::Gold)
                        .unwrap_or_default()
                );
                pending.push(Pending {
                    example_id: row.id,
                    label,
                    source: outcome.source.as_str(),
                    pred_label: scored
                        .as_ref()
                        .and_then(|s| argmax(&s.probs))
                        .map(|l| l as i64),
                    probs: scored.as_ref().map(|s| dist_json(&s.probs)),
                    p_ik: scored.as_ref().map(|s| s.p_ik as f64),
                    pik_source: pik_source.as_str(),
                    weak: row.weak.clone(),
                    refined: refined.as_deref().map(dist_json),
                    refined_label: refined_label.map(|l| l as i64),
                    confidence: outcome.confidence.map(f64::from),
                    confidence_source: confidence_source.map(|c| c.as_str()).unwrap_or(""),
                    suggested: outcome.suggested.map(|l| l as i64),
                    reason: reason.clone(),
                    changed,
                });
                out.push(Current {
                    example_id: row.id,
                    label: outcome.label,
                    source: outcome.source,
                    p_ik: scored.as_ref().map(|s| s.p_ik),
                    p_ik_source: pik_source,
                    confidence: outcome.confidence,
                    confidence_source,
                    suggested: outcome.suggested,
                    reason,
                    refined_label,
                    changed,
                });
            }
            self.write_decided(tx, task, version, tau, graph_version, now, &pending)
                .await?;
        }
        Ok(out)
    }

    /// Records decided rows: a decision row for each that changed (multi-row inserts), then
    /// every row's current scores (multi-row updates) — a few statements per batch instead
    /// of two per example.
    #[allow(clippy::too_many_arguments)]
    async fn write_decided(
        &self,
        tx: &mut crate::store::WriteTx,
        task: &TaskCtx,
        version: Option<&LoadedVersion>,
        tau: f32,
        graph_version: i64,
        now: i64,
        pending: &[Pending],
    ) -> Result<()> {
        let changed: Vec<&Pending> = pending.iter().filter(|p| p.changed).collect();
        let news: Vec<decisions::NewDecision> = changed
            .iter()
            .map(|p| decisions::NewDecision {
                task_id: task.id,
                example_id: p.example_id,
                label: p.label,
                source: p.source,
                p_ik: p.p_ik,
                p_ik_source: p.pik_source,
                tau: version.map(|_| tau as f64),
                confidence: p.confidence,
                probs: p.probs.as_deref(),
                weak: p.weak.as_deref(),
                refined: p.refined.as_deref(),
                model_version_id: version.map(|v| v.id),
                graph_version,
                reason: &p.reason,
                created_at: now,
            })
            .collect();
        let ids: HashMap<i64, i64> = decisions::insert_many(tx.conn(), &news).await?;
        for p in &changed {
            metrics::counter!("sw2s_decisions_total", "source" => p.source).increment(1);
        }
        let updates: Vec<examples::CurrentUpdate> = pending
            .iter()
            .map(|p| examples::CurrentUpdate {
                id: p.example_id,
                scores: examples::Scores {
                    pred_label: p.pred_label,
                    pred_probs: p.probs.as_deref(),
                    p_ik: p.p_ik,
                    p_ik_source: p.pik_source,
                    version_id: version.map(|v| v.id),
                    refined: p.refined.as_deref(),
                    refined_label: p.refined_label,
                    confidence: p.confidence,
                    confidence_source: p.confidence_source,
                    suggested_label: p.suggested,
                },
                decision: ids.get(&p.example_id).map(|&id| (id, p.label, p.source)),
            })
            .collect();
        examples::set_current_many(tx.conn(), &updates).await?;
        Ok(())
    }

    /// Re-scores every example of the task (a new active version, a changed τ); returns how
    /// many decisions changed. `progress` sees (done, total).
    pub async fn rescore_task(
        &self,
        task: &TaskCtx,
        trigger: &str,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<usize> {
        let total = crate::store::tasks::counts(self.store.pool(), task.id)
            .await?
            .examples as usize;
        let graph_version = crate::store::tasks::by_id(self.store.pool(), task.id)
            .await?
            .map(|t| t.graph_version)
            .unwrap_or(task.graph_version);
        let mut done = 0;
        let mut changed = 0;
        let pool = self.store.pool();
        let mut pages = std::pin::pin!(keyset_pages(
            0,
            |id: &i64| *id,
            |a| { examples::ids_page(pool, task.id, a, CHUNK as i64) }
        ));
        while let Some(ids) = pages.try_next().await? {
            let results = self.redecide(task, &ids, graph_version, trigger).await?;
            changed += results.iter().filter(|c| c.changed).count();
            done += ids.len();
            progress(done, total);
        }
        Ok(changed)
    }
}
