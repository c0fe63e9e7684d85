//! Conformance suites: one per port, run by every adapter of that port.
//!
//! Each suite is a `pub async fn` taking the port as a trait object; it panics with a message
//! naming the violated contract. Suites use ids and subjects unique to the run, so they can
//! run against a shared server (a NATS or Kafka cluster, a ScyllaDB keyspace) beside other
//! runs.

pub mod bus;
pub mod event_log;
pub mod read_model;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A guard on every wait in the suites: generous, since they may run against remote servers.
pub const WAIT: Duration = Duration::from_secs(10);

/// A token unique to this run of a suite (`[a-z0-9]`, usable in ids, subjects and keys).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{:x}{n:x}", nanos, std::process::id())
}

/// Awaits `fut`, panicking with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {WAIT:?}"),
    }
}
