//! Datasets in the format of ../shared/datasets and the group-aware split of the protocol.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub text: String,
    pub label: usize,
    pub label_names: Vec<String>,
    pub group: Option<String>,
}

/// A line as written: ../shared's format (`{"id": str, "text": str, "label": int,
/// "label_names": [str], "group": str}`), or the looser shapes other exports use — no id
/// (the file and line stand in), numbers for ids and groups, a label by name.
#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    id: Option<Scalar>,
    text: String,
    label: Scalar,
    #[serde(default)]
    label_names: Vec<String>,
    #[serde(default)]
    group: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Index(u64),
    Name(String),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Index(n) => n.to_string(),
            Scalar::Name(s) => s,
        }
    }
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
    let mut lines = Vec::new();
    'files: for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{}:{}", file.display(), n + 1);
            let row: Line = serde_json::from_str(line).with_context(|| {
                format!("{at}: not a dataset row (needs \"text\" and \"label\", an integer from 0 or a label name)")
            })?;
            lines.push((at, row));
            if limit.map(|l| lines.len() >= l).unwrap_or(false) {
                break 'files;
            }
        }
    }
    check(resolve(lines)?)
}

/// Turns labels given by name into indices: the order of `label_names` where a row gives
/// them, else the names sorted (so `--class-ratio`'s "first class" is the first in that
/// order). A file mixes neither indices with names nor two lists of names.
fn resolve(lines: Vec<(String, Line)>) -> anyhow::Result<Vec<Row>> {
    let mut names: Vec<String> = lines
        .iter()
        .map(|(_, l)| &l.label_names)
        .find(|n| !n.is_empty())
        .cloned()
        .unwrap_or_default();
    if let Some((at, l)) = lines
        .iter()
        .find(|(_, l)| !l.label_names.is_empty() && l.label_names != names)
    {
        bail!(
            "{at}: label_names {:?} differ from an earlier row's {:?}",
            l.label_names,
            names
        );
    }
    let by_name = lines
        .iter()
        .any(|(_, l)| matches!(l.label, Scalar::Name(_)));
    if by_name && names.is_empty() {
        let mut seen: Vec<String> = lines
            .iter()
            .filter_map(|(_, l)| match &l.label {
                Scalar::Name(s) => Some(s.clone()),
                Scalar::Index(_) => None,
            })
            .collect();
        seen.sort();
        seen.dedup();
        names = seen;
    }
    lines
        .into_iter()
        .map(|(at, l)| {
            let label = match &l.label {
                Scalar::Index(_) if by_name => {
                    bail!("{at}: a label index where other rows name their label")
                }
                Scalar::Index(i) => usize::try_from(*i)?,
                Scalar::Name(s) => names
                    .iter()
                    .position(|n| n == s)
                    .with_context(|| format!("{at}: label {s:?} is not one of {names:?}"))?,
            };
            Ok(Row {
                id: l.id.map_or_else(|| at.clone(), Scalar::text),
                text: l.text,
                label,
                label_names: names.clone(),
                group: l.group.map(Scalar::text),
            })
        })
        .collect()
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

    fn load_str(jsonl: &str) -> anyhow::Result<Vec<Row>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rows.jsonl");
        std::fs::write(&path, jsonl)?;
        load(&path, None)
    }

    #[test]
    fn rows_may_name_their_label_and_leave_out_ids() {
        // ../shared's shape.
        let rows = load_str(
            r#"{"id": "a", "text": "x", "label": 1, "label_names": ["neg", "pos"], "group": "g"}
{"id": "b", "text": "y", "label": 0, "label_names": ["neg", "pos"]}"#,
        )
        .unwrap();
        assert_eq!((rows[0].label, rows[1].label), (1, 0));
        assert_eq!(rows[0].group.as_deref(), Some("g"));
        // Names without a list: sorted; numbers for ids and groups; no id at all.
        let rows = load_str(
            r#"{"text": "x", "label": "spam"}
{"id": 7, "text": "y", "label": "ham", "group": 3}

{"text": "z", "label": "spam"}"#,
        )
        .unwrap();
        assert_eq!(rows.iter().map(|r| r.label).collect::<Vec<_>>(), [1, 0, 1]);
        assert_eq!(rows[0].label_names, ["ham", "spam"]);
        assert_eq!(label_names(&rows), ["ham", "spam"]);
        assert_eq!(rows[1].id, "7");
        assert_eq!(rows[1].group.as_deref(), Some("3"));
        assert!(rows[0].id.ends_with("rows.jsonl:1") && rows[2].id.ends_with(":4"));
        // Names with a list follow the list's order.
        let rows = load_str(
            r#"{"text": "x", "label": "pos", "label_names": ["pos", "neg"]}
{"text": "y", "label": "neg"}"#,
        )
        .unwrap();
        assert_eq!((rows[0].label, rows[1].label), (0, 1));
        // Mistakes are named with their line.
        let err = |s: &str| format!("{:#}", load_str(s).unwrap_err());
        assert!(
            err(r#"{"text": "x", "label": "a", "label_names": ["b", "c"]}"#)
                .contains(r#"label "a" is not one of"#)
        );
        assert!(
            err("{\"text\": \"x\", \"label\": \"a\"}\n{\"text\": \"y\", \"label\": 1}")
                .contains(":2: a label index where other rows name")
        );
        assert!(err(r#"{"text": "x", "label": -1}"#).contains(":1: not a dataset row"));
        assert!(err(r#"{"text": "x", "label": 0}"#).contains("at least two labels"));
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
