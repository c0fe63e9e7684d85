//! Helpers of the Kafka adapters' tests (`kafka_log.rs`, `kafka_membership.rs`): which broker,
//! which compat mode, and clients on topics of their own. Each test binary uses part of it.
#![allow(dead_code)]

use std::sync::Arc;

use fleetcmd_adapters::conformance::{unique, within};
use fleetcmd_adapters::kafka::{
    KafkaCompat, KafkaLog, KafkaLogConfig, KafkaMembership, KafkaMembershipConfig,
};

pub const BROKERS_ENV: &str = "FLEETCMD_KAFKA_BROKERS";
pub const COMPAT_ENV: &str = "FLEETCMD_KAFKA_COMPAT";

/// The brokers to test against, or `None` (after printing why) to skip.
pub fn brokers() -> Option<String> {
    match std::env::var(BROKERS_ENV) {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ if std::env::var_os("CI").is_some() => panic!(
            "{BROKERS_ENV} is not set but CI is: start a broker (deploy/engines/kafka.sh start) \
             and set {BROKERS_ENV}=127.0.0.1:9092"
        ),
        _ => {
            println!(
                "skipped: {BROKERS_ENV} is not set (deploy/engines/kafka.sh start, then \
                 {BROKERS_ENV}=127.0.0.1:9092)"
            );
            None
        }
    }
}

/// The broker quirks to work around, from `FLEETCMD_KAFKA_COMPAT` (none when unset).
pub fn compat() -> KafkaCompat {
    match std::env::var(COMPAT_ENV) {
        Ok(v) if !v.trim().is_empty() => v.parse().unwrap_or_else(|e| panic!("{COMPAT_ENV}: {e}")),
        _ => KafkaCompat::None,
    }
}

/// A client of the log on `topic` (created with `partitions` if missing).
pub async fn connect(brokers: &str, topic: &str, partitions: u32) -> Arc<KafkaLog> {
    let config = KafkaLogConfig {
        compat: compat(),
        fetch_wait_max: compat().default_fetch_wait(),
        ..KafkaLogConfig::new(brokers, topic, partitions)
    };
    within("connect", KafkaLog::connect_with(config))
        .await
        .expect("connect and create the topic")
}

/// A log on a topic of its own.
pub async fn new_log(brokers: &str, partitions: u32) -> Arc<KafkaLog> {
    connect(brokers, &unique("fleetcmd-test-"), partitions).await
}

/// A membership of the log on `topic`, in the compat mode of the tests.
pub fn membership(brokers: &str, topic: &str) -> Arc<KafkaMembership> {
    KafkaMembership::with_config(KafkaMembershipConfig {
        compat: compat(),
        ..KafkaMembershipConfig::new(brokers, topic)
    })
    .expect("membership")
}
