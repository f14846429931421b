//! What the dashboard shows of a task, in one answer (`GET /v1/tasks/{task}/dashboard`):
//! the task with its decision mix, the report (stages, calibration with reliability bins and
//! precision-coverage curves), label shares by kind, decisions over time by source, the weak
//! sources, jobs and model versions. Shares and the timeline are aggregated in SQL.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::jobs::JobView;
use super::model_versions::ModelList;
use super::report::TaskReport;
use super::sources::SourcesView;
use super::tasks::TaskView;
use super::Service;
use crate::error::Result;
use crate::store::dashboard;

/// At most this many time buckets in the timeline.
const TIMELINE_BUCKETS: i64 = 48;
/// Jobs listed on the dashboard (newest first).
const JOBS_SHOWN: i64 = 20;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LabelShares {
    /// The task's labels, in order; every count list follows it.
    pub labels: Vec<String>,
    /// Examples per label whose weak aggregate's argmax is that label.
    pub weak: Vec<i64>,
    /// Examples per label of the refined weak label in force.
    pub refined: Vec<i64>,
    /// Current decisions per label (abstentions and undecided examples are not counted).
    pub decision: Vec<i64>,
    pub gold: Vec<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Timeline {
    pub bucket_ms: i64,
    /// Bucket starts (Unix ms).
    pub buckets: Vec<i64>,
    /// Decisions made per bucket, by source (`gold`, `strong`, `weak_refined`, `abstain`, ...).
    pub series: BTreeMap<String, Vec<i64>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Dashboard {
    pub task: TaskView,
    pub report: TaskReport,
    pub shares: LabelShares,
    pub timeline: Timeline,
    pub sources: SourcesView,
    /// The newest jobs, with progress (and its loss curve) while they run.
    pub jobs: Vec<JobView>,
    pub models: ModelList,
}

/// A bucket width that puts the span into at most `TIMELINE_BUCKETS` buckets, rounded up to a
/// whole second, minute, hour or day so that the axis reads well.
pub fn bucket_width(span_ms: i64) -> i64 {
    let raw = (span_ms / TIMELINE_BUCKETS).max(1);
    [
        1_000,
        10_000,
        60_000,
        600_000,
        3_600_000,
        6 * 3_600_000,
        86_400_000,
        7 * 86_400_000,
    ]
    .into_iter()
    .find(|&w| w >= raw)
    .unwrap_or((raw + 86_399_999) / 86_400_000 * 86_400_000)
}

impl Service {
    pub async fn dashboard(&self, task_name: &str) -> Result<Dashboard> {
        let ctx = self.task(task_name).await?;
        let pool = self.store.pool();
        let k = ctx.labels.len();
        let mut shares = LabelShares {
            labels: ctx.labels.clone(),
            weak: vec![0; k],
            refined: vec![0; k],
            decision: vec![0; k],
            gold: vec![0; k],
        };
        for row in dashboard::label_shares(pool, ctx.id).await? {
            let counts = match row.kind.as_str() {
                "weak" => &mut shares.weak,
                "refined" => &mut shares.refined,
                "decision" => &mut shares.decision,
                _ => &mut shares.gold,
            };
            if let Some(c) = usize::try_from(row.label)
                .ok()
                .and_then(|l| counts.get_mut(l))
            {
                *c += row.n;
            }
        }
        let timeline = match dashboard::decision_span(pool, ctx.id).await? {
            None => Timeline {
                bucket_ms: 0,
                buckets: vec![],
                series: BTreeMap::new(),
            },
            Some((first, last)) => {
                let width = bucket_width(last - first);
                let from = first - first % width;
                let n = ((last - from) / width + 1) as usize;
                let buckets: Vec<i64> = (0..n as i64).map(|i| from + i * width).collect();
                let mut series: BTreeMap<String, Vec<i64>> = BTreeMap::new();
                for row in dashboard::decisions_over_time(pool, ctx.id, from, width).await? {
                    let i = ((row.bucket - from) / width) as usize;
                    if let Some(c) = series
                        .entry(row.source)
                        .or_insert_with(|| vec![0; n])
                        .get_mut(i)
                    {
                        *c += row.n;
                    }
                }
                Timeline {
                    bucket_ms: width,
                    buckets,
                    series,
                }
            }
        };
        // The report reads the same counts as the task view: counted once.
        let task = self.task_view(ctx.clone()).await?;
        let report = self
            .report_for(
                &ctx,
                task.examples,
                task.gold_examples,
                task.decisions.clone(),
            )
            .await?;
        Ok(Dashboard {
            task,
            report,
            shares,
            timeline,
            sources: self.sources(task_name).await?,
            jobs: self.recent_jobs(task_name, JOBS_SHOWN).await?,
            models: self.list_models(task_name).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_round_and_few() {
        assert_eq!(bucket_width(0), 1_000);
        assert_eq!(bucket_width(30_000), 1_000);
        assert_eq!(bucket_width(3_600_000), 600_000);
        assert_eq!(bucket_width(30 * 86_400_000), 86_400_000);
        let year = 365 * 86_400_000;
        let w = bucket_width(year);
        assert!(year / w <= TIMELINE_BUCKETS && w % 86_400_000 == 0, "{w}");
    }
}
