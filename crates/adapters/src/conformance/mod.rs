//! Conformance suites: one per port, run by every adapter of that port (feature `test-util`;
//! compiled for tests only).
//!
//! Each behaviour of a port's contract is one `pub async fn` taking the port as a trait object,
//! named after the behaviour (`appends_are_ordered_and_contiguous`,
//! `requests_without_responder_fail_fast`, ...); it panics with a message naming the violated
//! contract. Checks use ids and subjects unique to the run, so they can run against a shared
//! server (a NATS or Kafka cluster, a ScyllaDB keyspace) beside other runs, and every wait is
//! bounded ([`within`]): a hang is a failure that says what it waited for.
//!
//! An adapter's test file runs a suite with its macro, which expands to one `#[tokio::test]`
//! per check, so a failure names the behaviour:
//!
//! ```text
//! fleetcmd_adapters::event_log_conformance!(async || open_store());
//! fleetcmd_adapters::bus_conformance!(#[tokio::test] async || Arc::new(InProcessBus::new()));
//! fleetcmd_adapters::read_model_conformance!(async || connect().await, capabilities = caps());
//! ```
//!
//! The factory (an async closure) returns the port as an `Arc`, optionally with a guard that
//! must outlive it (`(store, temp_dir)`), or an `Option` of either: `None` skips the check
//! (the factory prints why: an engine that is not configured). Each check runs twice on the
//! same port, so none may depend on a fresh one. The optional `#[...]` replaces the default
//! test attribute (`tokio::test` on a two-worker multi-thread runtime).

pub mod bus;
pub mod event_log;
pub mod read_model;
pub mod snapshots;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetcmd_domain::ports::{Bus, EventLog, ReadModel, SnapshotStore};

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

/// A directory under the system temp dir, unique to the run, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(&format!("fleetcmd-{name}-")));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a conformance test's factory returns: the port under test and what must live as long
/// as it, or nothing (the check is skipped).
pub trait Subject<P: ?Sized> {
    /// Kept alive until the check is done (a temporary directory, a child process).
    type Guard;

    fn into_port(self) -> Option<(Arc<P>, Self::Guard)>;
}

macro_rules! subject_impls {
    ($($port:ident),+) => {$(
        impl<T: $port> Subject<dyn $port> for Arc<T> {
            type Guard = ();

            fn into_port(self) -> Option<(Arc<dyn $port>, ())> {
                Some((self, ()))
            }
        }

        impl<T: $port> Subject<dyn $port> for Option<Arc<T>> {
            type Guard = ();

            fn into_port(self) -> Option<(Arc<dyn $port>, ())> {
                self.map(|port| (port as Arc<dyn $port>, ()))
            }
        }

        impl<T: $port, G> Subject<dyn $port> for (Arc<T>, G) {
            type Guard = G;

            fn into_port(self) -> Option<(Arc<dyn $port>, G)> {
                Some((self.0, self.1))
            }
        }

        impl<T: $port, G> Subject<dyn $port> for Option<(Arc<T>, G)> {
            type Guard = G;

            fn into_port(self) -> Option<(Arc<dyn $port>, G)> {
                self.map(|(port, guard)| (port as Arc<dyn $port>, guard))
            }
        }
    )+};
}

subject_impls!(EventLog, Bus, ReadModel, SnapshotStore);

/// Runs `check` twice on the port `make` returns (nothing when it returns none): a check must
/// not depend on a fresh port.
pub async fn run_twice<P, S, Fut>(make: impl AsyncFnOnce() -> S, check: impl Fn(Arc<P>) -> Fut)
where
    P: ?Sized,
    S: Subject<P>,
    Fut: Future<Output = ()>,
{
    let Some((port, _guard)) = make().await.into_port() else {
        return;
    };
    check(port.clone()).await;
    check(port).await;
}

/// [`run_twice`] for checks that also take what the port guarantees (`ctx`).
pub async fn run_twice_with<P, S, C, Fut>(
    make: impl AsyncFnOnce() -> S,
    ctx: C,
    check: impl Fn(Arc<P>, C) -> Fut,
) where
    P: ?Sized,
    S: Subject<P>,
    C: Copy,
    Fut: Future<Output = ()>,
{
    let Some((port, _guard)) = make().await.into_port() else {
        return;
    };
    check(port.clone(), ctx).await;
    check(port, ctx).await;
}

/// One `#[$test]` per check of a suite; the list comes from the suite's `__*_checks!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    (#[$test:meta] $suite:ident, $make:expr, $ctx:expr; $($check:ident),+ $(,)?) => {
        $(
            #[$test]
            async fn $check() {
                $crate::conformance::run_twice_with(
                    $make,
                    $ctx,
                    $crate::conformance::$suite::$check,
                )
                .await;
            }
        )+
    };
    (#[$test:meta] $suite:ident, $make:expr; $($check:ident),+ $(,)?) => {
        $(
            #[$test]
            async fn $check() {
                $crate::conformance::run_twice($make, $crate::conformance::$suite::$check).await;
            }
        )+
    };
}

/// `pub async fn all`: every check of a suite in order, on one port.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_all {
    ($port:ident; $($check:ident),+ $(,)?) => {
        /// Every check of this suite, one after the other, on one port: for what only the
        /// whole suite shows (what it leaves behind). Tests of single behaviours use the
        /// suite's macro.
        pub async fn all(port: std::sync::Arc<dyn $port>) {
            $($check(port.clone()).await;)+
        }
    };
    ($port:ident, $ctx:ty; $($check:ident),+ $(,)?) => {
        /// Every check of this suite, one after the other, on one port: for what only the
        /// whole suite shows (what it leaves behind). Tests of single behaviours use the
        /// suite's macro.
        pub async fn all(port: std::sync::Arc<dyn $port>, ctx: $ctx) {
            $($check(port.clone(), ctx).await;)+
        }
    };
}

/// One test per check of the event log suite ([`event_log`]) against the log `$make`
/// returns (see the module docs).
#[macro_export]
macro_rules! event_log_conformance {
    ($($args:tt)+) => {
        $crate::__suite_conformance!(__event_log_checks, event_log, $($args)+);
    };
}

/// One test per check of the snapshot store suite ([`snapshots`]) against the store
/// `$make` returns (see the module docs).
#[macro_export]
macro_rules! snapshot_store_conformance {
    ($($args:tt)+) => {
        $crate::__suite_conformance!(__snapshot_store_checks, snapshots, $($args)+);
    };
}

/// One test per check of the bus suite ([`bus`]) against the bus `$make` returns (see the
/// module docs).
#[macro_export]
macro_rules! bus_conformance {
    ($($args:tt)+) => {
        $crate::__suite_conformance!(__bus_checks, bus, $($args)+);
    };
}

/// The tests of a suite whose checks take only the port, with the default test attribute
/// unless one is given.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_conformance {
    ($checks:ident, $suite:ident, #[$test:meta] $make:expr $(,)?) => {
        $crate::$checks!(__conformance_tests!(
            #[$test]
            $suite,
            $make
        ));
    };
    ($checks:ident, $suite:ident, $make:expr $(,)?) => {
        $crate::__suite_conformance!(
            $checks,
            $suite,
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $make
        );
    };
}

/// One test per check of the read model suite ([`read_model`]) against the store `$make`
/// returns, holding it to `capabilities` ([`read_model::Capabilities::ALL`] when left out).
#[macro_export]
macro_rules! read_model_conformance {
    (#[$test:meta] $make:expr $(, capabilities = $caps:expr)? $(,)?) => {
        $crate::__read_model_checks!(__conformance_tests!(
            #[$test] read_model, $make,
            $crate::__capabilities_or_all!($($caps)?)
        ));
    };
    ($make:expr $(, capabilities = $caps:expr)? $(,)?) => {
        $crate::read_model_conformance!(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)] $make
            $(, capabilities = $caps)?
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __capabilities_or_all {
    () => {
        $crate::conformance::read_model::Capabilities::ALL
    };
    ($caps:expr) => {
        $caps
    };
}
