//! The decision log, read back: every decision with its provenance, streamed as JSON lines.

use bytes::Bytes;
use futures::stream::{self, Stream};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::examples::DecisionRecord;
use super::{Service, TaskCtx};
use crate::error::{Error, Result};
use crate::method::rule::DecisionSource;
use crate::store::decisions::{export_page, ExportFilter};

/// One line of the export.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExportLine {
    pub decision_id: i64,
    /// The example's id.
    pub id: String,
    #[serde(flatten)]
    pub decision: DecisionRecord,
}

const EXPORT_PAGE: i64 = 1000;

impl Service {
    /// The task's decisions as JSON lines, read a page at a time while the client consumes
    /// them (memory stays flat however many there are).
    pub async fn export_decisions(
        &self,
        task_name: &str,
        filter: ExportFilter,
    ) -> Result<impl Stream<Item = std::result::Result<Bytes, Error>> + Send + 'static> {
        let task = self.task(task_name).await?;
        if let Some(source) = &filter.source {
            if DecisionSource::parse(source).is_none() {
                return Err(Error::invalid(
                    "invalid_source",
                    format!("source {source:?} is not one of gold, strong, weak_refined, none"),
                ));
            }
        }
        let pool = self.store.pool().clone();
        Ok(stream::try_unfold(Some(0i64), move |state| {
            let pool = pool.clone();
            let filter = filter.clone();
            let task: TaskCtx = task.clone();
            async move {
                let Some(after) = state else { return Ok(None) };
                let rows = export_page(&pool, task.id, after, &filter, EXPORT_PAGE).await?;
                let Some(last) = rows.last().map(|r| r.id) else {
                    return Ok(None);
                };
                let next = (rows.len() as i64 == EXPORT_PAGE).then_some(last);
                let mut buf = Vec::with_capacity(rows.len() * 300);
                for row in &rows {
                    let line = ExportLine {
                        decision_id: row.id,
                        id: row.external_id.clone(),
                        decision: task.decision_record(row),
                    };
                    serde_json::to_writer(&mut buf, &line)
                        .map_err(|e| Error::Internal(e.into()))?;
                    buf.push(b'\n');
                }
                Ok(Some((Bytes::from(buf), next)))
            }
        }))
    }
}
