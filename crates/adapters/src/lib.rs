//! Adapters: the implementations of the domain's ports (`fleetcmd_domain::ports`).
//!
//! The embedded adapters are always built and run fleetcmd in one process with no servers
//! to install: [`embedded::sqlite::SqliteStore`] (event log and read model in one SQLite
//! file), [`embedded::bus::InProcessBus`] (NATS-like subjects on tokio channels) and
//! [`embedded::broker::EmbeddedBroker`] (the rmqtt MQTT broker on its own runtime), and
//! [`clock::SystemClock`]. The cluster adapters (Kafka, NATS, ScyllaDB) go beside them,
//! behind Cargo features.
//!
//! Every adapter of a port runs the same suite from `conformance` (feature `test-util`, for
//! tests only), so the embedded and the cluster adapters are held to one behaviour.
//!
//! The one setting for a local stand-in of a cluster engine is explicit and defaults to the
//! real engine: `kafka::KafkaCompat` (`Tansu` for the tansu broker).
//!
//! Conventions shared by every adapter of the read model:
//! - A page size of 0 means [`DEFAULT_PAGE_SIZE`]; larger sizes are capped at
//!   [`MAX_PAGE_SIZE`] (the API layer enforces the reference's 1–100).
//! - A malformed or foreign `page_token` fails with [`PortError::InvalidPageToken`].

use fleetcmd_domain::ports::PortError;

pub mod clock;
#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
pub mod embedded;
pub mod error;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod mqtt;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "scylla")]
pub mod scylla;

pub use error::{Error, Result};

/// The page size used when a query asks for 0 items (the reference's ListCommands default).
pub const DEFAULT_PAGE_SIZE: u32 = 25;
/// The largest page an adapter returns, whatever the query asks.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The error for a page token that cannot be decoded; `detail` says why.
pub fn invalid_page_token(detail: impl std::fmt::Display) -> PortError {
    PortError::InvalidPageToken(detail.to_string())
}

/// True when `err` is a read model's rejection of a page token (an `INVALID_ARGUMENT` on the
/// `next_token` field at the API, not a backend failure).
pub fn is_invalid_page_token(err: &PortError) -> bool {
    matches!(err, PortError::InvalidPageToken(_))
}

/// The effective page size for a query's `page_size`.
pub fn effective_page_size(page_size: u32) -> u32 {
    match page_size {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}
