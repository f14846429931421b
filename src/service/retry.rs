//! Work that lost a race between concurrent writers (a PostgreSQL deadlock or serialisation
//! failure, SQLite busy) was rolled back by the database, so it is run again: a bounded
//! number of times with jittered backoff, and a client never sees a conflict another client
//! caused. What is still conflicting afterwards is a 503 `write_conflict` saying to re-send.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::error::{Error, Result};

/// Attempts in all, the first included.
const ATTEMPTS: usize = 6;

pub fn is_conflict(e: &Error) -> bool {
    matches!(e, Error::Database(d) if crate::store::is_write_conflict(d))
}

/// Runs `attempt` (one whole transaction) again while it fails on a write conflict.
pub async fn on_conflict<T, F, Fut>(what: &'static str, attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(400))
        .with_max_times(ATTEMPTS - 1)
        .with_jitter();
    attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(is_conflict)
        .notify(|e: &Error, after: Duration| {
            metrics::counter!("sw2s_write_conflicts_retried_total", "what" => what).increment(1);
            tracing::info!(what, error = %e, retry_in_ms = after.as_millis() as u64, "write conflict; retrying");
        })
        .await
}
