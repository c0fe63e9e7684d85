//! Bounded waits. Every wait on the server — a stream event, an MQTT message, an
//! acknowledgement, a state reached by polling — goes through [`within`] (or
//! [`eventually`]), so a hang fails the test naming what did not happen instead of hanging
//! the suite. The limit is generous: scenarios wait on events, never on the clock, so it only
//! bounds how long a broken scenario takes to fail, even on a loaded machine.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// How often [`eventually`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// `fut`'s output, or an error naming `what` if it did not finish within [`WAIT`].
pub async fn within<T>(what: impl Display, fut: impl Future<Output = T>) -> anyhow::Result<T> {
    within_for(WAIT, what, fut).await
}

/// [`within`] with another limit (for waits that are long by design).
pub async fn within_for<T>(
    limit: Duration,
    what: impl Display,
    fut: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: did not happen within {limit:?}"))
}

/// Polls `probe` until it returns `Some` (or fails), for states no event announces (a
/// scheduled deletion, exported spans); fails naming `what` after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: impl Display, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    within(what, async {
        loop {
            if let Some(found) = probe().await? {
                return Ok(found);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    })
    .await?
}
