//! Datasets in the format of ../shared/datasets and the group-aware split of the protocol.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub id: String,
    pub text: String,
    pub label: usize,
    #[serde(default)]
    pub label_names: Vec<String>,
    #[serde(default)]
    pub group: Option<String>,
}

/// Rows of one JSONL file, or of every `*.jsonl` file of a folder (in name order).
pub fn load(path: &Path, limit: Option<usize>) -> anyhow::Result<Vec<Row>> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().map(|x| x == "jsonl").unwrap_or(false))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        bail!("{} holds no .jsonl files", path.display());
    }
    let mut rows = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row: Row = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a dataset row", file.display(), n + 1))?;
            rows.push(row);
            if limit.map(|l| rows.len() >= l).unwrap_or(false) {
                return check(rows);
            }
        }
    }
    check(rows)
}

fn check(rows: Vec<Row>) -> anyhow::Result<Vec<Row>> {
    let classes = classes(&rows);
    if classes < 2 {
        bail!("the dataset needs at least two labels");
    }
    Ok(rows)
}

pub fn classes(rows: &[Row]) -> usize {
    rows.iter()
        .map(|r| r.label_names.len().max(r.label + 1))
        .max()
        .unwrap_or(0)
}

pub fn label_names(rows: &[Row]) -> Vec<String> {
    let k = classes(rows);
    rows.iter()
        .find(|r| r.label_names.len() == k)
        .map(|r| r.label_names.clone())
        .unwrap_or_else(|| (0..k).map(|i| format!("class{i}")).collect())
}

/// Subsamples `rows` so that the first class (label 0) makes up `ratio` of them: an
/// imbalanced task from a balanced dataset. Rows are taken in file order within each class
/// (deterministic), as many as the rarer side allows, at most `limit`, and keep file order.
pub fn with_class_ratio(
    rows: Vec<Row>,
    ratio: f64,
    limit: Option<usize>,
) -> anyhow::Result<Vec<Row>> {
    if !(ratio > 0.0 && ratio < 1.0) {
        bail!("--class-ratio must be in (0, 1), got {ratio}");
    }
    let first = rows.iter().filter(|r| r.label == 0).count();
    let rest = rows.len() - first;
    let most = ((first as f64 / ratio).floor() as usize)
        .min((rest as f64 / (1.0 - ratio)).floor() as usize);
    let total = limit.map_or(most, |l| l.min(most));
    let want_first = (total as f64 * ratio).round() as usize;
    let want_rest = total - want_first;
    if want_first == 0 || want_rest == 0 {
        bail!("--class-ratio {ratio} leaves no row of one side ({first} rows of the first class, {rest} others)");
    }
    let (mut a, mut b) = (0, 0);
    let kept: Vec<Row> = rows
        .into_iter()
        .filter(|r| {
            if r.label == 0 {
                a += 1;
                a <= want_first
            } else {
                b += 1;
                b <= want_rest
            }
        })
        .collect();
    check(kept)
}

/// Row indices of the three parts.
#[derive(Debug, Clone)]
pub struct Split {
    pub weak_train: Vec<usize>,
    pub strong_train: Vec<usize>,
    pub test: Vec<usize>,
}

/// Splits by group (rows without one are their own group), so no group straddles parts.
pub fn split(rows: &[Row], seed: u64, weak_frac: f64, strong_frac: f64) -> Split {
    let groups = crate::method::shuffled_groups(
        rows.iter().map(|r| r.group.as_deref().unwrap_or(&r.id)),
        seed,
    );
    let n = groups.len() as f64;
    let cut1 = (n * weak_frac).round() as usize;
    let cut2 = ((n * (weak_frac + strong_frac)).round() as usize).min(groups.len());
    let take = |gs: &[Vec<usize>]| -> Vec<usize> { gs.concat() };
    Split {
        weak_train: take(&groups[..cut1]),
        strong_train: take(&groups[cut1..cut2]),
        test: take(&groups[cut2..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_ratio_subsamples_the_first_class() {
        let rows: Vec<Row> = (0..1000)
            .map(|i| Row {
                id: format!("r{i}"),
                text: String::new(),
                label: i % 2,
                label_names: vec![],
                group: None,
            })
            .collect();
        let sub = with_class_ratio(rows.clone(), 0.1, Some(300)).unwrap();
        assert_eq!(sub.len(), 300);
        assert_eq!(sub.iter().filter(|r| r.label == 0).count(), 30);
        // Without a limit: as many as the other class allows (555 rows, 56 of the first).
        let sub = with_class_ratio(rows.clone(), 0.1, None).unwrap();
        assert_eq!(sub.len(), 555);
        assert_eq!(sub.iter().filter(|r| r.label == 0).count(), 56);
        // File order is kept.
        let ids: Vec<usize> = sub.iter().map(|r| r.id[1..].parse().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(with_class_ratio(rows, 1.5, None).is_err());
    }

    #[test]
    fn split_keeps_groups_together_and_is_seeded() {
        let rows: Vec<Row> = (0..100)
            .map(|i| Row {
                id: format!("r{i}"),
                text: String::new(),
                label: i % 2,
                label_names: vec!["a".into(), "b".into()],
                group: Some(format!("g{}", i / 2)),
            })
            .collect();
        let s = split(&rows, 1, 0.4, 0.4);
        assert_eq!(
            s.weak_train.len() + s.strong_train.len() + s.test.len(),
            100
        );
        assert_eq!(
            (s.weak_train.len(), s.strong_train.len(), s.test.len()),
            (40, 40, 20)
        );
        let group_of = |i: &usize| rows[*i].group.clone().unwrap();
        let w: std::collections::HashSet<_> = s.weak_train.iter().map(group_of).collect();
        assert!(s
            .strong_train
            .iter()
            .chain(&s.test)
            .all(|i| !w.contains(&group_of(i))));
        assert_eq!(split(&rows, 1, 0.4, 0.4).test, s.test);
        assert_ne!(split(&rows, 2, 0.4, 0.4).test, s.test);
    }
}
