//! "Do no harm": a stage that changes labels (the source model, graph smoothing, strong-model
//! selection) stays on for a task only while it beats its own input on gold labels it did
//! not learn from. The comparison is paired (McNemar): on the gold examples, `wins` are those
//! the stage got right and its input got wrong, `losses` the reverse. The stage is kept when
//! wins − losses ≥ max(1, z·√(wins + losses)), a margin that grows with the noise of a small
//! gold set, so a stage that merely ties its input, or cannot be checked, is bypassed. On an
//! imbalanced task accuracy alone would reward a stage that turns every rare label into the
//! common one, so the stage must also keep the macro-F1 of its input (within a small
//! tolerance). It would also miss a stage whose gain is in the rare class (smoothing that
//! gives the minority back its share): so a stage that changes labels is kept, too, when
//! the same paired test with each gold example weighted by the inverse of its class's size
//! (balanced accuracy) clears its margin, as long as it is not less accurate than its input.
//! Training on the decisions is judged by accuracy alone.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::metrics::macro_f1;

/// A task's choice for one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum StageMode {
    /// On while it beats its input on gold (the default).
    #[default]
    Auto,
    /// Always on (unchecked: the report still shows the gold figures).
    On,
    /// Always off.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The model of the weak sources, against the confidence-weighted mean.
    SourceModel,
    /// Graph smoothing, against the weak aggregate it smooths.
    Smoothing,
    /// Strong-model selection, against the weak side's labels alone.
    Strong,
    /// Training the next strong model on the decisions, against training it on the raw
    /// weak labels (the model's predictions on gold, neither trained on them).
    DecisionTargets,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::SourceModel => "source_model",
            Stage::Smoothing => "smoothing",
            Stage::Strong => "strong",
            Stage::DecisionTargets => "decision_targets",
        }
    }
}

/// Whether a stage is on, and the gold figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StageReport {
    pub stage: Stage,
    pub mode: StageMode,
    pub on: bool,
    pub reason: String,
    /// Gold examples compared.
    pub gold: usize,
    /// Accuracy on them of the stage's input and of its output (no label counts as wrong).
    pub input_accuracy: Option<f64>,
    pub output_accuracy: Option<f64>,
    /// Macro-F1 on them of the input and of the output.
    pub input_macro_f1: Option<f64>,
    pub output_macro_f1: Option<f64>,
    /// Gold examples the stage got right where its input was wrong, and the reverse.
    pub wins: usize,
    pub losses: usize,
    /// The lead over its input (wins − losses) the stage needed to stay on.
    pub margin: f64,
    /// The same lead with each gold example weighted by n / (classes · its class's count):
    /// the change in balanced accuracy, counted in examples.
    #[serde(default)]
    pub balanced_lead: f64,
    /// The balanced lead a label-changing stage needed to stay on by that test (with at
    /// least as many wins as losses).
    #[serde(default)]
    pub balanced_margin: f64,
}

/// z of the default margin: the stage must lead by a one-sided 95% margin of the paired
/// difference (and by at least one example).
pub const DEFAULT_Z: f64 = 1.645;

/// How far the output's macro-F1 may fall below the input's (noise of the point estimate).
pub const MACRO_F1_TOLERANCE: f64 = 0.005;

/// A stage's input and output labels on the gold examples.
pub struct Compared<'a> {
    pub classes: usize,
    pub gold: &'a [usize],
    pub input: &'a [Option<usize>],
    pub output: &'a [Option<usize>],
}

/// Compares a stage's output with its input on gold (a missing label is wrong).
pub fn check(stage: Stage, mode: StageMode, c: &Compared, z: f64) -> StageReport {
    let n = c.gold.len().min(c.input.len()).min(c.output.len());
    let right = |v: &[Option<usize>], i: usize| v[i] == Some(c.gold[i]);
    let wins = (0..n)
        .filter(|&i| right(c.output, i) && !right(c.input, i))
        .count();
    let losses = (0..n)
        .filter(|&i| !right(c.output, i) && right(c.input, i))
        .count();
    let acc = |v: &[Option<usize>]| {
        (n > 0).then(|| (0..n).filter(|&i| right(v, i)).count() as f64 / n as f64)
    };
    let f1 = |v: &[Option<usize>]| (n > 0).then(|| macro_f1(&v[..n], &c.gold[..n], c.classes));
    let (f1_in, f1_out) = (f1(c.input), f1(c.output));
    let margin = (z * ((wins + losses) as f64).sqrt()).max(1.0);
    let lead = wins as f64 - losses as f64;
    // Balanced accuracy's paired lead: a gold example of a class with m of the n examples
    // weighs n / (classes present · m); its null variance is the sum of squared weights of
    // the discordant examples.
    let mut per_class = vec![0usize; c.gold[..n].iter().max().map_or(0, |g| g + 1)];
    for &g in &c.gold[..n] {
        per_class[g] += 1;
    }
    let present = per_class.iter().filter(|&&m| m > 0).count().max(1) as f64;
    let (mut balanced_lead, mut weights2) = (0.0f64, 0.0f64);
    for i in 0..n {
        let (out, inp) = (right(c.output, i), right(c.input, i));
        if out != inp {
            let w = n as f64 / (present * per_class[c.gold[i]] as f64);
            balanced_lead += if out { w } else { -w };
            weights2 += w * w;
        }
    }
    let balanced_margin = (z * weights2.sqrt()).max(1.0);
    // Only for the stages that change labels: the next model is held to accuracy (never
    // below a model trained on the raw weak labels), so its check counts accuracy alone.
    let balanced_win =
        stage != Stage::DecisionTargets && balanced_lead >= balanced_margin && wins >= losses;
    let keeps_f1 = match (f1_in, f1_out) {
        (Some(a), Some(b)) if a.is_finite() && b.is_finite() => b >= a - MACRO_F1_TOLERANCE,
        _ => true,
    };
    let figures = format!(
        "on {n} gold labels it was right on {wins} its input got wrong and wrong on {losses} its input got right (lead {lead:+}, needed {margin:.1}; class-weighted {balanced_lead:+.1}, needed {balanced_margin:.1}); macro-F1 {} → {}",
        f1_in.map_or("–".into(), |v| format!("{v:.3}")),
        f1_out.map_or("–".into(), |v| format!("{v:.3}")),
    );
    let (on, reason) = match mode {
        StageMode::On => (true, format!("on by setting; {figures}")),
        StageMode::Off => (false, format!("off by setting; {figures}")),
        StageMode::Auto if n == 0 => (
            false,
            "bypassed: no gold labels to check it against (set it to \"on\" to use it unchecked)"
                .to_string(),
        ),
        StageMode::Auto if lead >= margin && keeps_f1 => {
            (true, format!("on: it beats its input; {figures}"))
        }
        StageMode::Auto if balanced_win => (
            true,
            format!(
                "on: it beats its input on balanced accuracy and is no less accurate; {figures}"
            ),
        ),
        StageMode::Auto if lead >= margin => (
            false,
            format!("bypassed: it gains accuracy by giving up a class (macro-F1 falls); {figures}"),
        ),
        StageMode::Auto => (
            false,
            format!("bypassed: it does not beat its input by the margin; {figures}"),
        ),
    };
    StageReport {
        stage,
        mode,
        on,
        reason,
        gold: n,
        input_accuracy: acc(c.input),
        output_accuracy: acc(c.output),
        input_macro_f1: f1_in,
        output_macro_f1: f1_out,
        wins,
        losses,
        margin,
        balanced_lead,
        balanced_margin,
    }
}

/// The labels a stage gives the examples without gold, beside its input's, and the gold
/// labels' class counts.
pub struct OnThePool<'a> {
    pub classes: usize,
    pub gold_counts: &'a [usize],
    pub input: &'a [Option<usize>],
    pub output: &'a [Option<usize>],
}

/// A class the gold labels show must keep a share of a stage's labels on the examples
/// without gold: at least half the one-sided lower bound (at `z`) of its share of gold, unless
/// the stage's input gave it no more. With two or three gold examples of the rare class the
/// paired test and the macro-F1 on gold cannot see a stage that calls nearly every other
/// example the common class (seen: strong selection on 25 gold labels, 1 in 1,000 left
/// `negative` where a tenth were). A stage on by the gold check that fails this is bypassed
/// (a stage forced on stays on); the reason gives the figures.
pub fn keep_classes(mut report: StageReport, pool: &OnThePool, z: f64) -> StageReport {
    if !report.on || report.mode != StageMode::Auto {
        return report;
    }
    let n_gold: usize = pool.gold_counts.iter().sum();
    let share = |labels: &[Option<usize>], c: usize| {
        let labelled = labels.iter().flatten().count();
        (labelled > 0)
            .then(|| labels.iter().flatten().filter(|&&l| l == c).count() as f64 / labelled as f64)
    };
    for (c, &g) in pool.gold_counts.iter().enumerate().take(pool.classes) {
        if g == 0 {
            continue;
        }
        let floor = super::confidence::wilson_lower(g, n_gold, z) / 2.0;
        let (Some(out), Some(inp)) = (share(pool.output, c), share(pool.input, c)) else {
            continue;
        };
        if out < floor && out < inp {
            report.on = false;
            report.reason = format!(
                "bypassed: it gives up a class the gold labels are too few to show it giving up: on the {} examples without gold it labels {:.1}% as label {c} (its input {:.1}%), where {g} of {n_gold} gold labels put that class at no less than {:.1}% (one-sided bound; half of it was needed); on gold it would have stayed on ({})",
                pool.output.len(),
                100.0 * out,
                100.0 * inp,
                200.0 * floor,
                report.reason
            );
            return report;
        }
    }
    report
}

/// A stage that could not run at all (e.g. no model version yet for `strong`).
pub fn unavailable(stage: Stage, mode: StageMode, why: &str) -> StageReport {
    StageReport {
        stage,
        mode,
        on: false,
        reason: why.to_string(),
        gold: 0,
        input_accuracy: None,
        output_accuracy: None,
        input_macro_f1: None,
        output_macro_f1: None,
        wins: 0,
        losses: 0,
        margin: 1.0,
        balanced_lead: 0.0,
        balanced_margin: 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_that_gives_up_a_class_gold_shows_is_bypassed() {
        let on = || StageReport {
            on: true,
            reason: "on: it beats its input".into(),
            ..unavailable(Stage::Strong, StageMode::Auto, "")
        };
        // 3 of 25 gold labels are class 0 (lower bound ~4.7%); the weak side calls 28% of
        // the pool class 0.
        let gold_counts = [3, 22];
        let input: Vec<Option<usize>> = (0..1000).map(|i| Some(usize::from(i % 25 >= 7))).collect();
        let collapsed: Vec<Option<usize>> = (0..1000).map(|i| Some(usize::from(i != 0))).collect();
        let fair: Vec<Option<usize>> = (0..1000).map(|i| Some(usize::from(i % 10 != 0))).collect();
        let pool = |output: &[Option<usize>]| -> StageReport {
            keep_classes(
                on(),
                &OnThePool {
                    classes: 2,
                    gold_counts: &gold_counts,
                    input: &input,
                    output,
                },
                DEFAULT_Z,
            )
        };
        let r = pool(&collapsed);
        assert!(!r.on, "{}", r.reason);
        assert!(
            r.reason
                .contains("labels 0.1% as label 0 (its input 28.0%)")
                && r.reason
                    .contains("on gold it would have stayed on (on: it beats its input)"),
            "{}",
            r.reason
        );
        assert!(pool(&fair).on, "a tenth of class 0 keeps the class");
        // A stage forced on, or one the gold check bypassed, is left as it is.
        let forced = keep_classes(
            StageReport {
                mode: StageMode::On,
                ..on()
            },
            &OnThePool {
                classes: 2,
                gold_counts: &gold_counts,
                input: &input,
                output: &collapsed,
            },
            DEFAULT_Z,
        );
        assert!(forced.on);
        // Its input gave the class no more: nothing is given up by this stage.
        let none_before: Vec<Option<usize>> = vec![Some(1); 1000];
        let r = keep_classes(
            on(),
            &OnThePool {
                classes: 2,
                gold_counts: &gold_counts,
                input: &none_before,
                output: &collapsed,
            },
            DEFAULT_Z,
        );
        assert!(r.on, "{}", r.reason);
    }

    /// Gold all class 1 except every tenth row (class 0). The first `wins` rows: output
    /// right, input wrong; the next `losses`: the reverse; the rest equal and right.
    fn outcomes(
        n: usize,
        wins: usize,
        losses: usize,
    ) -> (Vec<usize>, Vec<Option<usize>>, Vec<Option<usize>>) {
        let gold: Vec<usize> = (0..n).map(|i| usize::from(i % 10 != 0)).collect();
        let wrong = |g: usize| Some(1 - g);
        let input = (0..n)
            .map(|i| {
                if i < wins {
                    wrong(gold[i])
                } else {
                    Some(gold[i])
                }
            })
            .collect();
        let output = (0..n)
            .map(|i| {
                if (wins..wins + losses).contains(&i) {
                    wrong(gold[i])
                } else {
                    Some(gold[i])
                }
            })
            .collect();
        (gold, input, output)
    }

    fn two_classes<'a>(
        gold: &'a [usize],
        input: &'a [Option<usize>],
        output: &'a [Option<usize>],
    ) -> Compared<'a> {
        Compared {
            classes: 2,
            gold,
            input,
            output,
        }
    }

    fn run(mode: StageMode, n: usize, wins: usize, losses: usize) -> StageReport {
        let (gold, input, output) = outcomes(n, wins, losses);
        check(
            Stage::Smoothing,
            mode,
            &two_classes(&gold, &input, &output),
            DEFAULT_Z,
        )
    }

    #[test]
    fn a_clear_win_is_kept_and_a_tie_or_loss_is_bypassed() {
        let r = run(StageMode::Auto, 200, 30, 10);
        assert!(r.on, "{r:?}");
        assert_eq!((r.wins, r.losses), (30, 10));
        assert!(r.output_accuracy.unwrap() > r.input_accuracy.unwrap());
        let r = run(StageMode::Auto, 200, 12, 10);
        assert!(
            !r.on,
            "a lead of 2 over 22 discordant pairs is noise: {r:?}"
        );
        assert!(r.reason.starts_with("bypassed"));
        assert!(!run(StageMode::Auto, 200, 0, 0).on);
    }

    #[test]
    fn a_stage_that_erases_the_rare_class_is_bypassed() {
        // 10% class 0. The input gets half the rare rows right and about 40 common ones
        // wrong; the output says class 1 everywhere: more accurate, and no class 0 left.
        let n = 400;
        let gold: Vec<usize> = (0..n).map(|i| usize::from(i % 10 != 0)).collect();
        let input: Vec<Option<usize>> = (0..n)
            .map(|i| match (gold[i], i % 20 == 0, i % 9 == 1) {
                (0, true, _) => Some(0),
                (0, false, _) => Some(1),
                (_, _, true) => Some(0),
                (g, _, _) => Some(g),
            })
            .collect();
        let output = vec![Some(1); n];
        let c = two_classes(&gold, &input, &output);
        let r = check(Stage::SourceModel, StageMode::Auto, &c, DEFAULT_Z);
        assert!(r.output_accuracy > r.input_accuracy, "{r:?}");
        assert!(!r.on, "{r:?}");
        assert!(r.reason.contains("macro-F1 falls"), "{}", r.reason);
    }

    #[test]
    fn a_stage_that_wins_the_rare_class_without_losing_accuracy_is_kept() {
        // 20% class 0 (rows i % 5 == 0). The output fixes 30 rare rows its input got wrong
        // and breaks 28 common ones: a lead of 2 in accuracy (noise), but of 30·2.5 − 28·0.625
        // = 57.5 in balanced accuracy, against a margin of 1.645·√(30·6.25 + 28·0.39) ≈ 23.
        let n = 500;
        let gold: Vec<usize> = (0..n).map(|i| usize::from(i % 5 != 0)).collect();
        let rare: Vec<usize> = (0..n).filter(|i| i % 5 == 0).take(30).collect();
        let common: Vec<usize> = (0..n).filter(|i| i % 5 != 0).take(28).collect();
        let input: Vec<Option<usize>> = (0..n)
            .map(|i| Some(if rare.contains(&i) { 1 } else { gold[i] }))
            .collect();
        let output: Vec<Option<usize>> = (0..n)
            .map(|i| Some(if common.contains(&i) { 0 } else { gold[i] }))
            .collect();
        let c = two_classes(&gold, &input, &output);
        let r = check(Stage::DecisionTargets, StageMode::Auto, &c, DEFAULT_Z);
        assert!(!r.on, "the next model is held to accuracy: {r:?}");
        let r = check(Stage::Smoothing, StageMode::Auto, &c, DEFAULT_Z);
        assert_eq!((r.wins, r.losses), (30, 28));
        assert!(r.margin > 2.0, "{r:?}");
        assert!((r.balanced_lead - 57.5).abs() < 1e-9, "{r:?}");
        assert!(r.on && r.reason.contains("balanced accuracy"), "{r:?}");
        // The same rare-class gain bought with more common errors than it fixes: less
        // accurate than its input, so bypassed.
        let worse: Vec<usize> = (0..n).filter(|i| i % 5 != 0).take(40).collect();
        let output: Vec<Option<usize>> = (0..n)
            .map(|i| Some(if worse.contains(&i) { 0 } else { gold[i] }))
            .collect();
        let c = Compared {
            output: &output,
            ..c
        };
        let r = check(Stage::Smoothing, StageMode::Auto, &c, DEFAULT_Z);
        assert!(r.balanced_lead > r.balanced_margin && !r.on, "{r:?}");
    }

    #[test]
    fn settings_force_a_stage_and_no_gold_bypasses_auto() {
        assert!(run(StageMode::On, 100, 0, 20).on);
        assert!(!run(StageMode::Off, 100, 40, 0).on);
        let r = run(StageMode::Auto, 0, 0, 0);
        assert!(!r.on && r.reason.contains("no gold"));
    }
}
