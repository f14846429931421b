//! The weak side of a job, fitted on the task's gold labels before any strong model: the
//! source model (kept only if it beats the confidence-weighted mean on gold), the class
//! prior, graph smoothing balanced towards it (kept only if it beats the weak aggregate on
//! gold), and the trust model that gives weak-side decisions a calibrated confidence.

use std::collections::HashMap;

use super::data::TaskData;
use super::Progress;
use crate::error::Result;
use crate::method::confidence::{
    fit_trust, trust_features, uncalibrated_weak, weak_side, TrustFit, WeakEvidence,
};
use crate::method::label_model::{
    fit_sources, LabelModelConfig, LabelModelKind, Observations, SourceFit,
};
use crate::method::prior::{class_counts, class_mass, estimate, PriorEstimate, PriorEvidence};
use crate::method::rule::WeakSide;
use crate::method::safeguard::{check, Compared, Stage, StageMode, StageReport};
use crate::method::weak::argmax;
use crate::service::{Service, TaskCtx};

/// The weak side as fitted, with each example's aggregate, smoothed and refined label.
pub(crate) struct WeakFit {
    pub sources: SourceFit,
    pub prior: PriorEstimate,
    pub smoothing: StageReport,
    pub trust: TrustFit,
    pub aggregate: Vec<Option<Vec<f32>>>,
    pub smoothed: Vec<Option<Vec<f32>>>,
    /// The refined weak label in force (smoothed if smoothing is on, else the aggregate).
    pub refined: Vec<Option<Vec<f32>>>,
    /// The same, smoothed without the gold examples' weak labels (present while smoothing is
    /// on and the decision targets are checked): spreading carries a gold example's own votes
    /// into its neighbours' labels, so a model trained on those would be judged on gold
    /// partly by votes it was shown, which flatters it where the votes' errors do not depend
    /// on the text.
    pub refined_without_gold: Option<Vec<Option<Vec<f32>>>>,
    /// Each gold example's weak side with an out-of-fold trust confidence.
    pub gold_weak: HashMap<usize, WeakSide>,
}

impl WeakFit {
    /// An example's weak side as decisions will see it: the trust model's confidence, or
    /// the refined label's own probability without one.
    pub fn weak_side(&self, data: &TaskData, i: usize) -> Option<WeakSide> {
        let e = self.evidence(data, i)?;
        Some(weak_side(self.trust.model.as_ref(), &e))
    }

    fn evidence<'a>(&'a self, data: &TaskData, i: usize) -> Option<WeakEvidence<'a>> {
        let refined = self.refined[i].as_deref()?;
        let label = argmax(refined)?;
        let votes = &data.votes[i];
        let agreeing = votes
            .iter()
            .filter(|v| argmax(&v.scores) == Some(label))
            .count() as f32
            / votes.len().max(1) as f32;
        Some(WeakEvidence {
            label,
            refined,
            aggregate: self.aggregate[i].as_deref(),
            smoothed: self.smoothed[i].as_deref(),
            votes: votes.len(),
            agreeing,
        })
    }
}

fn label_of(dist: Option<&Vec<f32>>) -> Option<usize> {
    dist.and_then(|d| argmax(d))
}

impl Service {
    pub(crate) async fn calibrate(
        &self,
        task: &TaskCtx,
        data: &TaskData,
        seed: u64,
        checks_targets: bool,
        progress: &Progress,
    ) -> Result<WeakFit> {
        let s = &task.settings;
        let k = data.k;
        progress.stage("fitting the source model");
        let obs = Observations {
            classes: k,
            sources: data.sources.len(),
            votes: &data.votes,
            gold: &data.judge,
        };
        let sources = tokio::task::block_in_place(|| {
            fit_sources(
                &obs,
                &LabelModelConfig::default(),
                s.source_model,
                s.safeguard_z,
                seed,
            )
        });
        let aggregate: Vec<Option<Vec<f32>>> = data
            .votes
            .iter()
            .map(|v| sources.used.posterior(v))
            .collect();
        progress.check()?;

        let gold_counts = class_counts(data.judge.iter().flatten().copied(), k);
        let (mass, with_weak) = class_mass(aggregate.iter().flatten(), k);
        let voted = data.votes.iter().filter(|v| !v.is_empty()).count();
        let prior = estimate(&PriorEvidence {
            classes: k,
            gold_counts: &gold_counts,
            source_model: (sources.fitted.kind != LabelModelKind::Mean)
                .then_some((sources.fitted.prior.as_slice(), voted)),
            weak_mass: Some((&mass, with_weak)),
        });

        progress.stage("checking smoothing");
        let by_id: HashMap<i64, Option<Vec<f32>>> = data
            .ids
            .iter()
            .zip(&aggregate)
            .map(|(&id, a)| (id, a.clone()))
            .collect();
        // Only a head job checks its decision targets (a full job fine-tunes once, on them).
        let gold_rows = data.judging_rows();
        let blind = checks_targets
            && s.decision_targets == StageMode::Auto
            && s.smoothing != StageMode::Off
            && !gold_rows.is_empty();
        let (smoothed_by_id, blind_by_id) = {
            let slot = self.graph_guard(task).await?;
            match slot.graph.as_ref() {
                Some(graph) => tokio::task::block_in_place(|| {
                    let smooth = |y: &HashMap<i64, Option<Vec<f32>>>| {
                        graph.refined_with(y, s.class_balance, Some(&prior.shares))
                    };
                    let without_gold = blind.then(|| {
                        let mut y = by_id.clone();
                        for &i in &gold_rows {
                            y.insert(data.ids[i], None);
                        }
                        smooth(&y)
                    });
                    (smooth(&by_id), without_gold)
                }),
                None => (HashMap::new(), None),
            }
        };
        let by_row = |m: &HashMap<i64, Option<Vec<f32>>>| -> Vec<Option<Vec<f32>>> {
            data.ids
                .iter()
                .map(|id| m.get(id).cloned().flatten())
                .collect()
        };
        let smoothed = by_row(&smoothed_by_id);
        let (mut gold, mut input, mut output) = (vec![], vec![], vec![]);
        for &i in &gold_rows {
            let Some(g) = data.judge[i] else { continue };
            gold.push(g);
            input.push(label_of(aggregate[i].as_ref()));
            output.push(label_of(smoothed[i].as_ref().or(aggregate[i].as_ref())));
        }
        let smoothing = check(
            Stage::Smoothing,
            s.smoothing,
            &Compared {
                classes: k,
                gold: &gold,
                input: &input,
                output: &output,
            },
            s.safeguard_z,
        );
        let in_force = |smoothed: &[Option<Vec<f32>>]| -> Vec<Option<Vec<f32>>> {
            aggregate
                .iter()
                .zip(smoothed)
                .map(|(a, sm)| {
                    if smoothing.on {
                        sm.clone().or(a.clone())
                    } else {
                        a.clone()
                    }
                })
                .collect()
        };
        let refined = in_force(&smoothed);
        let refined_without_gold = blind_by_id
            .filter(|_| smoothing.on)
            .map(|m| in_force(&by_row(&m)));
        progress.check()?;

        progress.stage("training the trust model");
        let mut fit = WeakFit {
            sources,
            prior,
            smoothing,
            trust: TrustFit {
                model: None,
                oof: vec![],
                report: Default::default(),
                reason: String::new(),
            },
            aggregate,
            smoothed,
            refined,
            refined_without_gold,
            gold_weak: HashMap::new(),
        };
        // Every gold label calibrates: the trust model is conditional on its features.
        let rows: Vec<usize> = data
            .gold_rows()
            .into_iter()
            .filter(|&i| fit.evidence(data, i).is_some())
            .collect();
        let x: Vec<Vec<f32>> = rows
            .iter()
            .filter_map(|&i| fit.evidence(data, i).map(|e| trust_features(k, &e)))
            .collect();
        let y: Vec<bool> = rows
            .iter()
            .map(|&i| fit.evidence(data, i).map(|e| e.label) == data.gold[i])
            .collect();
        let groups: Vec<u64> = rows.iter().map(|&i| data.ids[i] as u64).collect();
        let trust = fit_trust(k, &x, &y, &groups, s.pik_min_gold, seed);
        for (&i, &q) in rows.iter().zip(&trust.oof) {
            if let Some(e) = fit.evidence(data, i) {
                let confidence = if trust.model.is_some() {
                    q
                } else {
                    uncalibrated_weak(&e)
                };
                fit.gold_weak.insert(
                    i,
                    WeakSide {
                        label: e.label,
                        confidence,
                        calibrated: trust.model.is_some(),
                    },
                );
            }
        }
        fit.trust = trust;
        Ok(fit)
    }
}
