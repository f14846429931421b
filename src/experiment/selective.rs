//! The server's loop in miniature, with the server's own parts: the model of the weak
//! sources and its gold check; the class prior; graph smoothing balanced towards it and
//! its gold check; the weak-side trust model; a first strong model on the refined labels;
//! P(IK) trained on gold with predictions of a model that never saw those examples; the
//! decision policy (strong selection's gold check and the target-precision threshold);
//! then the decisions on strong-train, and a second model trained on them and tested.
//! Weak-train's ground truth plays the server's gold labels throughout.

use std::collections::{HashMap, HashSet};

use super::methods::{train_on_labels, Label, Recipe, Run};
use super::strong::{Fitted, Strong};
use super::{hard, Ctx};
use crate::method::confidence::{
    fit_trust, trust_features, uncalibrated_weak, CalibrationReport, PrecisionThreshold,
    TrustModel, WeakEvidence,
};
use crate::method::heads::sigmoid;
use crate::method::label_model::{
    fit_sources, LabelModelConfig, LabelModelKind, Observations, Vote,
};
use crate::method::metrics::auroc;
use crate::method::pik::{msp, pik_features};
use crate::method::pik::{train_pik, PikConfig, PikSample};
use crate::method::policy::{fit_policy, PolicyCase, PolicyConfig};
use crate::method::prior::{class_counts, class_mass, estimate, PriorEvidence};
use crate::method::rule::{decide, DecisionSource, Inputs, StrongSide, WeakSide};
use crate::method::safeguard::{check, Compared, Stage, StageMode, StageReport, DEFAULT_Z};
use crate::method::training::TrainConfig;
use crate::method::weak::argmax;
use crate::service::settings::TaskSettings;

/// The weak side of one row: the refined label in force, with its evidence.
struct WeakRow {
    refined: Option<Vec<f32>>,
    aggregate: Option<Vec<f32>>,
    smoothed: Option<Vec<f32>>,
    votes: usize,
}

impl WeakRow {
    fn evidence(&self, ctx: &Ctx, row: usize) -> Option<WeakEvidence<'_>> {
        let refined = self.refined.as_deref()?;
        let label = argmax(refined)?;
        let agreeing = ctx.votes[&row]
            .iter()
            .filter(|v| argmax(&v.scores) == Some(label))
            .count() as f32
            / self.votes.max(1) as f32;
        Some(WeakEvidence {
            label,
            refined,
            aggregate: self.aggregate.as_deref(),
            smoothed: self.smoothed.as_deref(),
            votes: self.votes,
            agreeing,
        })
    }
}

pub fn run(recipe: &Recipe, ctx: &Ctx, strong: &mut dyn Strong) -> anyhow::Result<Run> {
    let k = ctx.k;
    let settings = TaskSettings::default();
    let gold_rows = &ctx.split.weak_train;
    let st = &ctx.split.strong_train;
    let pool: Vec<usize> = gold_rows.iter().chain(st).copied().collect();
    let is_gold: HashSet<usize> = gold_rows.iter().copied().collect();

    // 1. The model of the weak sources, checked against the mean on gold.
    let votes: Vec<Vec<_>> = pool.iter().map(|r| ctx.votes[r].clone()).collect();
    let gold: Vec<Option<usize>> = pool
        .iter()
        .map(|r| is_gold.contains(r).then_some(ctx.truth[*r]))
        .collect();
    let obs = Observations {
        classes: k,
        sources: ctx.sources,
        votes: &votes,
        gold: &gold,
    };
    let sources = fit_sources(
        &obs,
        &LabelModelConfig::default(),
        recipe.source_model,
        DEFAULT_Z,
        ctx.seed,
    );
    let aggregate: HashMap<usize, Option<Vec<f32>>> = pool
        .iter()
        .zip(&votes)
        .map(|(&r, v)| (r, sources.used.posterior(v)))
        .collect();

    // 2. The class prior: gold, else the source model, else the weak labels.
    let gold_counts = class_counts(gold_rows.iter().map(|&r| ctx.truth[r]), k);
    let (mass, with_weak) = class_mass(aggregate.values().flatten(), k);
    let voted = votes.iter().filter(|v| !v.is_empty()).count();
    let prior = estimate(&PriorEvidence {
        classes: k,
        gold_counts: &gold_counts,
        source_model: (sources.fitted.kind != LabelModelKind::Mean)
            .then_some((sources.fitted.prior.as_slice(), voted)),
        weak_mass: Some((&mass, with_weak)),
    });

    // 3. Smoothing over the graph, balanced towards the prior, checked on gold.
    let posterior = |v: &[Vote]| sources.used.posterior(v);
    let smoothed = ctx.smooth(
        &posterior,
        &HashSet::new(),
        recipe.class_balance,
        &prior.shares,
    );
    let smoothed_of = |r: usize| smoothed.get(&(r as i64)).cloned().flatten();
    let label_of = |v: Option<&Vec<f32>>| v.and_then(|v| argmax(v));
    let gold_truth: Vec<usize> = gold_rows.iter().map(|&r| ctx.truth[r]).collect();
    let input: Vec<Option<usize>> = gold_rows
        .iter()
        .map(|r| label_of(aggregate[r].as_ref()))
        .collect();
    let output: Vec<Option<usize>> = gold_rows
        .iter()
        .map(|&r| label_of(smoothed_of(r).as_ref().or(aggregate[&r].as_ref())))
        .collect();
    let smoothing = check(
        Stage::Smoothing,
        recipe.smoothing,
        &Compared {
            classes: k,
            gold: &gold_truth,
            input: &input,
            output: &output,
        },
        DEFAULT_Z,
    );
    let weak: HashMap<usize, WeakRow> = pool
        .iter()
        .map(|&r| {
            let s = smoothed_of(r);
            let a = aggregate[&r].clone();
            (
                r,
                WeakRow {
                    refined: if smoothing.on { s.clone() } else { a.clone() },
                    aggregate: a,
                    smoothed: s,
                    votes: ctx.votes[&r].len(),
                },
            )
        })
        .collect();

    // 4. The weak-side trust model, on gold.
    let trust_rows: Vec<usize> = gold_rows
        .iter()
        .copied()
        .filter(|r| weak[r].evidence(ctx, *r).is_some())
        .collect();
    let trust_x: Vec<Vec<f32>> = trust_rows
        .iter()
        .filter_map(|&r| weak[&r].evidence(ctx, r).map(|e| trust_features(k, &e)))
        .collect();
    let trust_y: Vec<bool> = trust_rows
        .iter()
        .map(|&r| weak[&r].evidence(ctx, r).map(|e| e.label) == Some(ctx.truth[r]))
        .collect();
    let trust_groups: Vec<u64> = trust_rows.iter().map(|&r| ctx.groups[r]).collect();
    let trust = fit_trust(
        k,
        &trust_x,
        &trust_y,
        &trust_groups,
        settings.pik_min_gold,
        ctx.seed,
    );
    tracing::debug!(seed = ctx.seed, reason = %trust.reason, "weak-side trust");
    let trust_oof: HashMap<usize, f32> = trust_rows
        .iter()
        .copied()
        .zip(trust.oof.iter().copied())
        .collect();
    let weak_side = |r: usize, model: Option<&TrustModel>| -> Option<WeakSide> {
        let e = weak[&r].evidence(ctx, r)?;
        Some(WeakSide {
            label: e.label,
            confidence: match model {
                Some(m) => m.predict(&e),
                None => trust_oof
                    .get(&r)
                    .copied()
                    .unwrap_or_else(|| uncalibrated_weak(&e)),
            },
            calibrated: trust.model.is_some(),
        })
    };

    // 5. A first strong model on the refined labels of strong-train.
    let target = |r: usize| -> Option<Vec<f32>> {
        let refined = weak[&r].refined.as_ref()?;
        argmax(refined)?;
        Some(if recipe.soft {
            refined.clone()
        } else {
            hard(refined, k)
        })
    };
    let (first_rows, first): (Vec<usize>, Vec<Vec<f32>>) =
        st.iter().filter_map(|&r| target(r).map(|t| (r, t))).unzip();
    // Out of fold: five models, each trained without one fold of strong-train, predict that
    // fold and one fold of the gold rows (by group), so the gold predictions P(IK) learns
    // from come from the same kind of model as the self-labels it will judge. In sample:
    // one model on all of strong-train predicts everything.
    let mut probs_of: HashMap<usize, Vec<f32>> = HashMap::new();
    let mut embedding_of: HashMap<usize, Vec<f32>> = HashMap::new();
    let folds = if recipe.out_of_fold {
        strong.folds()
    } else {
        1
    };
    for f in 0..folds {
        let held: HashSet<usize> = st
            .iter()
            .enumerate()
            .filter(|(i, _)| recipe.out_of_fold && i % folds == f)
            .map(|(_, &r)| r)
            .collect();
        let (rows, targets): (Vec<usize>, Vec<Vec<f32>>) = first_rows
            .iter()
            .zip(&first)
            .filter(|(r, _)| !held.contains(r))
            .map(|(&r, t)| (r, t.clone()))
            .unzip();
        let predict: Vec<usize> = gold_rows
            .iter()
            .copied()
            .filter(|&r| ctx.groups[r] % folds as u64 == f as u64)
            .chain(
                st.iter()
                    .copied()
                    .filter(|r| !recipe.out_of_fold || held.contains(r)),
            )
            .collect();
        let m = strong.fit(ctx, &rows, &targets, None, &predict)?;
        for &r in &predict {
            probs_of.insert(r, m.probs(r));
            embedding_of.insert(r, m.embeddings[&r].clone());
        }
    }

    // 6. P(IK) on gold, predicted by a model that never saw those examples.
    let samples: Vec<PikSample> = gold_rows
        .iter()
        .map(|&r| PikSample {
            embedding: embedding_of[&r].clone(),
            probs: probs_of[&r].clone(),
            gold: ctx.truth[r],
            refined_label: weak[&r].refined.as_deref().and_then(argmax),
            group: ctx.groups[r],
        })
        .collect();
    let pik = train_pik(
        &samples,
        &PikConfig {
            features: recipe.features,
            min_gold: settings.pik_min_gold,
            tau: recipe.tau,
            train: TrainConfig {
                holdout: 0.0,
                seed: ctx.seed,
                ..TrainConfig::default()
            },
        },
    )?;
    let pik_calibrated = pik.head.is_some();
    let p_ik = |embedding: &[f32], probs: &[f32]| -> f32 {
        match &pik.head {
            Some(h) => sigmoid(
                h.linear
                    .forward(&pik_features(h.features, embedding, probs))[0],
            ),
            None => msp(probs),
        }
    };

    // 7. The decision policy, on gold (out-of-fold values only).
    let cases: Vec<PolicyCase> = gold_rows
        .iter()
        .zip(&samples)
        .zip(&pik.oof)
        .map(|((&r, s), &q)| PolicyCase {
            gold: ctx.truth[r],
            judges: true,
            group: ctx.groups[r],
            strong: Some(StrongSide {
                probs: &s.probs,
                p_ik: q,
                calibrated: pik_calibrated,
            }),
            weak: weak_side(r, None),
        })
        .collect();
    // Strong-train as the rule will decide it, for strong selection's class check.
    let pool_scored: Vec<(usize, f32)> = st
        .iter()
        .map(|&r| (r, p_ik(&embedding_of[&r], &probs_of[&r])))
        .collect();
    let pool: Vec<Inputs> = pool_scored
        .iter()
        .map(|&(r, q)| Inputs {
            gold: None,
            strong: Some(StrongSide {
                probs: &probs_of[&r],
                p_ik: q,
                calibrated: pik_calibrated,
            }),
            weak: weak_side(r, trust.model.as_ref()),
        })
        .collect();
    let policy = fit_policy(
        &cases,
        &pool,
        &PolicyConfig {
            strong: recipe.strong,
            selection: recipe.selection,
            tau: pik.report.tau,
            z: DEFAULT_Z,
            target_precision: recipe.target_precision,
            train_precision: recipe.train_precision,
        },
    );
    let rule = policy.rule();

    // 8. The decisions on strong-train, with the self-labels made above.
    let (self_probs, self_embeddings) = (&probs_of, &embedding_of);
    let mut labels: Vec<Label> = vec![];
    // The same, less the decisions below the training threshold (`train_precision`): those
    // are handed out but teach nothing.
    let mut taught: Vec<Label> = vec![];
    let mut targets: HashMap<usize, Vec<f32>> = HashMap::new();
    let (mut qs, mut right) = (vec![], vec![]);
    let (mut conf, mut conf_right) = (vec![], vec![]);
    for &r in st {
        let probs = &self_probs[&r];
        let q = p_ik(&self_embeddings[&r], probs);
        qs.push(q);
        right.push(argmax(probs) == Some(ctx.truth[r]));
        let outcome = decide(
            &Inputs {
                gold: None,
                strong: Some(StrongSide {
                    probs,
                    p_ik: q,
                    calibrated: pik_calibrated,
                }),
                weak: weak_side(r, trust.model.as_ref()),
            },
            &rule,
        );
        if let (Some(c), Some(l)) = (outcome.confidence, outcome.label.or(outcome.suggested)) {
            conf.push(c);
            conf_right.push(l == ctx.truth[r]);
        }
        // With no stage on the weak side, its labels are the raw weak labels.
        let raw_weak = !smoothing.on && sources.used.kind == LabelModelKind::Mean;
        let source = match outcome.source {
            DecisionSource::WeakRefined if raw_weak => "weak",
            s => s.as_str(),
        };
        if recipe.soft && outcome.source == DecisionSource::WeakRefined {
            if let Some(t) = target(r) {
                targets.insert(r, t);
            }
        }
        let teaches = policy.trains(outcome.confidence.map(f64::from));
        taught.push((r, outcome.label.filter(|_| teaches), source));
        labels.push((r, outcome.label, source));
    }
    let accepted = labels.iter().filter(|(_, l, _)| l.is_some()).count();
    let accepted_right = labels
        .iter()
        .filter(|(r, l, _)| *l == Some(ctx.truth[*r]))
        .count();
    let target_on_strong_train = policy.target.as_ref().map(|t| PrecisionThreshold {
        coverage: accepted as f64 / st.len().max(1) as f64,
        precision: (accepted > 0).then(|| accepted_right as f64 / accepted as f64),
        examples: st.len(),
        ..t.clone()
    });
    let smoothing_on = smoothing.on;
    let stages = vec![sources.stage, smoothing, policy.strong.clone()];
    let finish = |stage: StageReport, m: &Fitted| -> Run {
        let mut stages = stages.clone();
        stages.push(stage);
        Run {
            pik: Some(pik.report.clone()),
            pik_auroc_strong_train: auroc(&qs, &right),
            stages,
            decision_ece: CalibrationReport::measure(&conf, &conf_right).ece,
            target: target_on_strong_train.clone(),
            target_gold: policy.target.clone(),
            ..Default::default()
        }
        .with_labels(&labels, ctx)
        .with_test(m, ctx)
    };
    let raw_labels: Vec<Label> = st
        .iter()
        .map(|&r| (r, ctx.raw[&r].as_deref().and_then(argmax), "weak"))
        .collect();
    if recipe.decision_targets == StageMode::Off || accepted == 0 {
        let m = train_on_labels(ctx, strong, &raw_labels, None, None, &[])?;
        let stage = crate::method::safeguard::unavailable(
            Stage::DecisionTargets,
            recipe.decision_targets,
            if accepted == 0 {
                "off: every decision abstained, so the next model trains on the raw weak labels"
            } else {
                "off by setting: the next model trains on the raw weak labels"
            },
        );
        return Ok(finish(stage, &m));
    }
    let on_decisions = train_on_labels(ctx, strong, &taught, Some(&targets), None, gold_rows)?;
    // Do no harm to the next model: train on the decisions only while that beats training
    // on the raw weak labels, judged on gold (neither model trained on it). Smoothing carries
    // the gold rows' own votes into their neighbours' labels, so the decisions are judged by
    // a model trained on labels smoothed without those votes, as the server's job does.
    let (m2, targets_stage) =
        if recipe.decision_targets == StageMode::Auto && strong.checks_targets() {
            let on_raw = train_on_labels(ctx, strong, &raw_labels, None, None, gold_rows)?;
            let blind_model = if smoothing_on {
                let blind = ctx.smooth(&posterior, &is_gold, recipe.class_balance, &prior.shares);
                let blind_of = |r: usize| blind.get(&(r as i64)).cloned().flatten();
                let labels: Vec<Label> = taught
                    .iter()
                    .map(|&(r, l, source)| match (l, source) {
                        (Some(_), "weak_refined") => {
                            (r, blind_of(r).as_deref().and_then(argmax), source)
                        }
                        _ => (r, l, source),
                    })
                    .collect();
                let targets: HashMap<usize, Vec<f32>> = targets
                    .keys()
                    .filter_map(|&r| blind_of(r).map(|t| (r, t)))
                    .collect();
                Some(train_on_labels(
                    ctx,
                    strong,
                    &labels,
                    Some(&targets),
                    None,
                    gold_rows,
                )?)
            } else {
                None
            };
            let predicted = |m: &Fitted| -> Vec<Option<usize>> {
                gold_rows.iter().map(|&r| argmax(&m.probs(r))).collect()
            };
            let stage = check(
                Stage::DecisionTargets,
                recipe.decision_targets,
                &Compared {
                    classes: k,
                    gold: &gold_truth,
                    input: &predicted(&on_raw),
                    output: &predicted(blind_model.as_ref().unwrap_or(&on_decisions)),
                },
                DEFAULT_Z,
            );
            (if stage.on { on_decisions } else { on_raw }, stage)
        } else {
            let stage = crate::method::safeguard::unavailable(
                Stage::DecisionTargets,
                recipe.decision_targets,
                "on, unchecked (by setting, or in full mode)",
            );
            (on_decisions, StageReport { on: true, ..stage })
        };
    Ok(finish(targets_stage, &m2))
}
