//! Client plumbing shared by the log and the membership: librdkafka's logs to `tracing`, the
//! settings every client gets, and small conversions.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::Offset;

use super::error::{Error, Result};

/// Forwards librdkafka's logs and global errors to `tracing` (rdkafka's default uses `log`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingContext;

/// One librdkafka log line, at the matching `tracing` level.
pub(super) fn forward_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

impl ConsumerContext for TracingContext {}

/// The log's consumer (manual assignment, one split queue per partition).
pub(super) type Reader = BaseConsumer<TracingContext>;

/// The settings of every client this adapter creates.
pub(super) fn base_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        // Latency matters more than packet count: no Nagle on any socket.
        .set("socket.nagle.disable", "true");
    c
}

/// A librdkafka millisecond setting (at least 1: 0 often means "off" or "default").
pub(super) fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

pub(super) fn partition_i32(partition: u32) -> i32 {
    // Partition counts are checked to fit an i32 at connect.
    i32::try_from(partition).unwrap_or(i32::MAX)
}

/// Locks `m`; a panic elsewhere does not make its state unusable here.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(super) type KafkaResult<T> = std::result::Result<T, KafkaError>;

/// A Kafka offset from a log offset.
pub(super) fn offset(o: u64) -> Result<Offset> {
    i64::try_from(o)
        .map(Offset::Offset)
        .map_err(|_| Error::Config(format!("offset {o} exceeds Kafka's range")))
}
