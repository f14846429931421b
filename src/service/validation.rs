//! Validation of what clients send: a whole batch is checked before anything is written
//! (so a rejected batch writes nothing), with a 422 that names the offending field.

use std::collections::HashSet;

use super::ingest::{IngestRequest, ScoresIn, WeakLabelIn};
use super::{Service, TaskCtx};
use crate::error::{Error, Result};
use crate::method::gold::GoldPicked;
use crate::method::weak::one_hot;

#[derive(Debug, Clone)]
pub struct ParsedWeak {
    pub source: String,
    pub label: Option<usize>,
    pub scores: Vec<f32>,
    pub confidence: f32,
}

pub(super) struct Parsed<'a> {
    pub id: &'a str,
    pub text: &'a str,
    pub weak: Vec<ParsedWeak>,
    pub gold: Option<usize>,
    pub picked: Option<GoldPicked>,
}

const MAX_ID_CHARS: usize = 256;
const MAX_TASK_NAME_CHARS: usize = 64;
const MAX_LABEL_CHARS: usize = 200;
const MAX_LABELS: usize = 1000;

pub fn task_name(name: &str) -> Result<()> {
    // Starting with a letter or digit keeps `.` and `..` (and hidden names) out of paths.
    let ok = name.len() <= MAX_TASK_NAME_CHARS
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(Error::invalid(
            "invalid_task_name",
            "name must have 1 to 64 characters from ASCII letters, digits, '-', '_' and '.', starting with a letter or digit",
        ));
    }
    Ok(())
}

pub fn labels(labels: &[String]) -> Result<()> {
    if labels.len() < 2 || labels.len() > MAX_LABELS {
        return Err(Error::invalid(
            "invalid_labels",
            format!("a task needs 2 to {MAX_LABELS} labels"),
        ));
    }
    let mut seen = HashSet::new();
    for l in labels {
        if l.trim().is_empty()
            || l.chars().count() > MAX_LABEL_CHARS
            || l.chars().any(char::is_control)
        {
            return Err(Error::invalid(
                "invalid_labels",
                "labels must be non-empty, at most 200 characters, without control characters",
            ));
        }
        if !seen.insert(l.as_str()) {
            return Err(Error::invalid(
                "invalid_labels",
                format!("label {l:?} appears twice"),
            ));
        }
    }
    Ok(())
}
const MAX_SOURCE_CHARS: usize = 128;

fn invalid(code: &'static str, msg: String) -> Error {
    Error::invalid(code, msg)
}

pub fn parse_weak(task: &TaskCtx, w: &WeakLabelIn, at: &str) -> Result<ParsedWeak> {
    let k = task.k();
    if w.source.trim().is_empty()
        || w.source.chars().count() > MAX_SOURCE_CHARS
        || w.source.chars().any(char::is_control)
    {
        return Err(invalid(
            "invalid_source",
            format!(
                "{at}.source must have 1 to {MAX_SOURCE_CHARS} characters and no control characters"
            ),
        ));
    }
    let confidence = w.confidence.unwrap_or(1.0);
    if !(confidence > 0.0 && confidence <= 1.0) {
        return Err(invalid(
            "invalid_confidence",
            format!("{at}.confidence must be in (0, 1], got {confidence}"),
        ));
    }
    let (label, scores) = match (&w.label, &w.scores) {
        (Some(_), Some(_)) | (None, None) => {
            return Err(invalid(
                "invalid_weak_label",
                format!("{at} needs exactly one of \"label\" or \"scores\""),
            ))
        }
        (Some(name), None) => {
            let l = task.label_index(name).ok_or_else(|| {
                invalid(
                    "label_not_in_task",
                    format!(
                        "{at}.label {name:?} is not a label of task {:?} (labels: {:?})",
                        task.name, task.labels
                    ),
                )
            })?;
            (Some(l), one_hot(l, k))
        }
        (None, Some(scores)) => (None, parse_scores(task, scores, at)?),
    };
    Ok(ParsedWeak {
        source: w.source.clone(),
        label,
        scores,
        confidence,
    })
}

fn parse_scores(task: &TaskCtx, scores: &ScoresIn, at: &str) -> Result<Vec<f32>> {
    let k = task.k();
    let values: Vec<f64> = match scores {
        ScoresIn::List(list) => {
            if list.len() != k {
                return Err(invalid(
                    "scores_label_mismatch",
                    format!(
                        "{at}.scores has {} values; task {:?} has {k} labels {:?}",
                        list.len(),
                        task.name,
                        task.labels
                    ),
                ));
            }
            list.clone()
        }
        ScoresIn::Map(map) => {
            let mut v = vec![0.0; k];
            for (name, p) in map {
                let l = task.label_index(name).ok_or_else(|| {
                    invalid(
                        "scores_label_mismatch",
                        format!("{at}.scores names {name:?}, which is not a label of task {:?} (labels: {:?})", task.name, task.labels),
                    )
                })?;
                v[l] = *p;
            }
            v
        }
    };
    if values
        .iter()
        .any(|p| !p.is_finite() || *p < 0.0 || *p > 1.0)
    {
        return Err(invalid(
            "invalid_scores",
            format!("{at}.scores must be probabilities in [0, 1]"),
        ));
    }
    let sum: f64 = values.iter().sum();
    if (sum - 1.0).abs() > 1e-3 {
        return Err(invalid(
            "scores_not_normalized",
            format!("{at}.scores sum to {sum}, not 1"),
        ));
    }
    Ok(values.iter().map(|&p| (p / sum) as f32).collect())
}

pub(super) fn parse_gold(task: &TaskCtx, label: &str, at: &str) -> Result<usize> {
    task.label_index(label).ok_or_else(|| {
        invalid(
            "label_not_in_task",
            format!(
                "{at} {label:?} is not a label of task {:?} (labels: {:?})",
                task.name, task.labels
            ),
        )
    })
}

pub(super) fn check_weak_sources(weak: &[ParsedWeak], at: &str) -> Result<()> {
    let mut seen = HashSet::new();
    for w in weak {
        if !seen.insert(w.source.as_str()) {
            return Err(invalid(
                "duplicate_weak_source",
                format!(
                    "{at} has two labels from source {:?}; a source gives one label per example",
                    w.source
                ),
            ));
        }
    }
    Ok(())
}

impl Service {
    pub(super) fn validate_batch<'a>(
        &self,
        task: &TaskCtx,
        req: &'a IngestRequest,
    ) -> Result<Vec<Parsed<'a>>> {
        if req.examples.is_empty() {
            return Err(invalid("empty_batch", "examples is empty".into()));
        }
        if req.examples.len() > self.limits.max_batch_examples {
            return Err(Error::TooLarge(format!(
                "a batch holds at most {} examples, got {}",
                self.limits.max_batch_examples,
                req.examples.len()
            )));
        }
        let mut seen = HashSet::new();
        let mut parsed = Vec::with_capacity(req.examples.len());
        for (i, ex) in req.examples.iter().enumerate() {
            let at = format!("examples[{i}]");
            if ex.id.is_empty()
                || ex.id.chars().count() > MAX_ID_CHARS
                || ex.id.chars().any(char::is_control)
            {
                return Err(invalid(
                    "invalid_id",
                    format!("{at}.id must have 1 to {MAX_ID_CHARS} characters and no control characters"),
                ));
            }
            if !seen.insert(ex.id.as_str()) {
                return Err(invalid(
                    "duplicate_id",
                    format!("{at}.id {:?} appears twice in the batch", ex.id),
                ));
            }
            self.check_text(&ex.text, &format!("{at}.text"))?;
            let weak = ex
                .weak_labels
                .iter()
                .enumerate()
                .map(|(j, w)| parse_weak(task, w, &format!("{at}.weak_labels[{j}]")))
                .collect::<Result<Vec<_>>>()?;
            check_weak_sources(&weak, &at)?;
            let gold = ex
                .gold_label
                .as_deref()
                .map(|g| parse_gold(task, g, &format!("{at}.gold_label")))
                .transpose()?;
            if ex.gold_picked.is_some() && gold.is_none() {
                return Err(invalid(
                    "invalid_gold_picked",
                    format!("{at}.gold_picked says how a gold label's example was picked: send it with gold_label"),
                ));
            }
            parsed.push(Parsed {
                id: &ex.id,
                text: &ex.text,
                weak,
                gold,
                picked: ex.gold_picked,
            });
        }
        Ok(parsed)
    }

    pub fn check_text(&self, text: &str, at: &str) -> Result<()> {
        if text.trim().is_empty() {
            return Err(invalid("empty_text", format!("{at} is empty")));
        }
        // PostgreSQL cannot store NUL in text: refused on both databases alike.
        if text.contains('\0') {
            return Err(invalid(
                "invalid_text",
                format!("{at} contains a NUL character (\\u0000)"),
            ));
        }
        let chars = text.chars().count();
        if chars > self.limits.max_text_chars {
            return Err(invalid(
                "text_too_long",
                format!(
                    "{at} has {chars} characters; the limit is {}",
                    self.limits.max_text_chars
                ),
            ));
        }
        Ok(())
    }
}
