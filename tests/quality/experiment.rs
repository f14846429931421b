//! The experiment command on a small slice of real data: the table's structure, PGR computed
//! from the accuracies, the files it writes, both weak models and both modes. (The tiny
//! random BERT keeps it fast; the README's tables come from the real model.)

use clap::Parser;
use serde_json::Value;
use sw2s::cli::{Cli, Command};

fn experiment_args(extra: &[&str]) -> (sw2s::experiment::ExperimentArgs, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let model = crate::common::tiny_model_dir(dir.path());
    let data = crate::data::datasets_dir().join("sst2/validation.jsonl");
    let out = dir.path().join("out");
    let mut argv: Vec<String> = vec![
        "sw2s".into(),
        "experiment".into(),
        "--data".into(),
        data.display().to_string(),
        "--model-dir".into(),
        model.display().to_string(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let Command::Experiment(args) = Cli::try_parse_from(&argv).unwrap().command else {
        unreachable!()
    };
    (*args, dir)
}

fn md_has_per_seed(md: &str) -> bool {
    md.contains("| seed | raw weak labels % | default decisions % |")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn head_mode_table_has_every_method_and_correct_pgr() {
    if !crate::data::have_datasets() {
        return;
    }
    let (args, dir) = experiment_args(&["--limit", "400", "--seeds", "2"]);
    let report = sw2s::experiment::run(&args).unwrap();
    let names: Vec<String> = sw2s::experiment::catalogue(0.9)
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    assert_eq!(
        report
            .methods
            .iter()
            .map(|m| m.name.clone())
            .collect::<Vec<_>>(),
        names
    );
    assert_eq!(report.rows, 400);
    assert_eq!(report.labels, vec!["negative", "positive"]);
    assert_eq!(report.splits.len(), 2);
    let split = &report.splits[0];
    let total = split["weak_train"].as_u64().unwrap()
        + split["strong_train"].as_u64().unwrap()
        + split["test"].as_u64().unwrap();
    assert_eq!(total, 400);

    let weak = report
        .methods
        .iter()
        .find(|m| m.name == "weak")
        .unwrap()
        .accuracy_mean;
    let ceiling = report
        .methods
        .iter()
        .find(|m| m.name == "strong ceiling")
        .unwrap()
        .accuracy_mean;
    assert!(close(report.gap, ceiling - weak));
    assert_eq!(report.pgr_meaningful, report.gap >= 0.03);
    for m in &report.methods {
        assert_eq!(m.accuracies.len(), 2, "{}", m.name);
        assert!(m.accuracies.iter().all(|a| (0.0..=1.0).contains(a)));
        let mean = m.accuracies.iter().sum::<f64>() / 2.0;
        assert!(close(m.accuracy_mean, mean), "{}", m.name);
        if (ceiling - weak).abs() > 1e-12 {
            let expected = (m.accuracy_mean - weak) / (ceiling - weak);
            assert!(
                close(m.pgr.unwrap(), expected),
                "{}: pgr {:?} vs {expected}",
                m.name,
                m.pgr
            );
        }
    }
    assert!(
        close(report.methods[0].pgr.unwrap_or(0.0), 0.0),
        "weak has PGR 0"
    );
    let selective = report
        .methods
        .iter()
        .find(|m| m.name == "full selective (defaults)")
        .unwrap();
    assert!(selective.pik_auroc_strong_train.is_some() && selective.tau.is_some());
    assert!(selective.sources.values().map(|(n, _)| n).sum::<f64>() > 0.0);
    // Every selective run reports its four stages, and the labels' coverage.
    for run in &selective.runs {
        assert_eq!(run.stages.len(), 4);
        assert!(run.label_coverage.unwrap() > 0.0);
    }
    assert!(md_has_per_seed(&report.markdown()));
    // The per-seed table pairs the default with naive on each seed's test rows.
    for (run, split) in selective.runs.iter().zip(&report.splits) {
        assert_eq!(run.test_right.len() as u64, split["test"].as_u64().unwrap());
    }
    let markdown = report.markdown();
    let per_seed = markdown.split("Per seed").nth(1).unwrap();
    for seed in 1..=report.seeds {
        let row = per_seed
            .lines()
            .find(|l| l.starts_with(&format!("| {seed} |")))
            .unwrap();
        assert!(row.contains(" (± "), "{row}");
    }

    // The same table on disk, for people and for machines.
    let md = std::fs::read_to_string(dir.path().join("out/results.md")).unwrap();
    assert_eq!(md, report.markdown());
    assert!(md.contains("| method | test acc % (± sd) | PGR (± sd) |"));
    let table = md.split("Per seed").next().unwrap();
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| method"))
            .count(),
        names.len()
    );
    assert!(md.contains("Gap (ceiling − weak):"));
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["methods"].as_array().unwrap().len(), names.len());
    assert_eq!(json["mode"], "head");
}

#[test]
fn pgr_is_marked_not_meaningful_under_a_3_point_gap() {
    if !crate::data::have_datasets() {
        return;
    }
    let (args, _dir) = experiment_args(&[
        "--limit",
        "300",
        "--seeds",
        "1",
        "--methods",
        "weak,strong ceiling,naive weak-to-strong",
    ]);
    let report = sw2s::experiment::run(&args).unwrap();
    assert_eq!(report.methods.len(), 3);
    let md = report.markdown();
    if report.gap < 0.03 {
        assert!(!report.pgr_meaningful);
        assert!(md.contains("PGR is not meaningful"));
        // With no gap at all there is no PGR to print, only "–".
        assert!(md.contains("n/m (") || report.gap.abs() < 1e-12, "{md}");
    } else {
        assert!(report.pgr_meaningful && !md.contains("n/m ("));
    }
}

#[test]
fn layers_weak_model_and_full_mode_run() {
    if !crate::data::have_datasets() {
        return;
    }
    let (args, _dir) = experiment_args(&[
        "--limit",
        "200",
        "--seeds",
        "1",
        "--weak",
        "layers:1",
        "--mode",
        "full",
        "--full-examples",
        "60",
        "--full-epochs",
        "1",
        "--methods",
        "weak,strong ceiling,naive weak-to-strong,full selective (defaults)",
    ]);
    let report = sw2s::experiment::run(&args).unwrap();
    assert_eq!(report.mode, "full");
    assert_eq!(report.weak_model, "layers:1");
    assert_eq!(report.methods.len(), 4);
    assert!(report.methods.iter().all(|m| m.accuracies.len() == 1));

    let (bad, _dir) = experiment_args(&["--weak", "trees"]);
    assert!(sw2s::experiment::run(&bad)
        .unwrap_err()
        .to_string()
        .contains("--weak"));
    // A misspelt name among good ones is refused, not dropped from the table.
    let (bad, _dir) = experiment_args(&["--methods", "weak,nothing"]);
    let err = sw2s::experiment::run(&bad).unwrap_err().to_string();
    assert!(err.contains(r#"no method is called "nothing""#), "{err}");
    assert!(err.contains(r#""naive weak-to-strong""#), "{err}");
}

#[test]
fn class_ratio_and_noise_models_make_an_imbalanced_task() {
    if !crate::data::have_datasets() {
        return;
    }
    let (args, _dir) = experiment_args(&[
        "--class-ratio",
        "0.2",
        "--limit",
        "300",
        "--seeds",
        "1",
        "--weak",
        "lfs:4",
        "--methods",
        "weak,strong ceiling,naive weak-to-strong,full selective (defaults),· target precision 0.9",
    ]);
    let report = sw2s::experiment::run(&args).unwrap();
    assert_eq!(report.rows, 300);
    assert_eq!(report.weak_model, "lfs:4");
    let ceiling = report
        .methods
        .iter()
        .find(|m| m.name == "strong ceiling")
        .unwrap();
    // The ceiling trains on the truth: its label shares are the data's, 20% first class.
    assert!(
        (ceiling.label_shares[0] - 0.2).abs() < 0.08,
        "{:?}",
        ceiling.label_shares
    );
    let target = report
        .methods
        .iter()
        .find(|m| m.name == "· target precision 0.9")
        .unwrap();
    assert!(target.runs[0].target.is_some());
    // Beside the strong-train figure, what the same threshold accepted on gold when fitted.
    let (pool, gold) = (
        target.runs[0].target.as_ref().unwrap(),
        target.runs[0].target_gold.as_ref().unwrap(),
    );
    assert_eq!(pool.threshold, gold.threshold);
    assert_eq!(
        gold.examples,
        report.splits[0]["weak_train"].as_u64().unwrap() as usize
    );
    let md = report.markdown();
    assert!(md.contains(
        "target-precision decisions: precision % (coverage %) on strong-train / on gold"
    ));
    let row = md
        .split("Per seed")
        .nth(1)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("| 1 |"))
        .unwrap();
    let pct = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{:.1}", 100.0 * v));
    assert!(
        row.ends_with(&format!(
            " {} ({}) / {} ({}) |",
            pct(pool.precision),
            pct(Some(pool.coverage)),
            pct(gold.precision),
            pct(Some(gold.coverage))
        )),
        "{row}"
    );
    let (bad, _dir) = experiment_args(&["--class-ratio", "1.5"]);
    assert!(sw2s::experiment::run(&bad)
        .unwrap_err()
        .to_string()
        .contains("--class-ratio"));
}
