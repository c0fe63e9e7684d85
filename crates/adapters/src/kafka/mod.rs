//! The Kafka adapters (feature `kafka`): [`KafkaLog`], the cluster [`EventLog`], and
//! [`KafkaMembership`], the [`ShardMembership`] that spreads shards (= partitions of the log
//! topic) over the live members of a consumer group.
//!
//! Both use rdkafka with its bundled librdkafka; every client sets `socket.nagle.disable`.
//! Written for Apache Kafka. Brokers that only speak its protocol may need workarounds: they
//! are all behind one setting, [`KafkaCompat`] (`kafka.compat` in the cluster configuration,
//! `FLEETCMD_KAFKA_COMPAT` for the tests), whose default [`KafkaCompat::None`] is right for
//! Kafka; [`KafkaCompat::Tansu`] is for the tansu 0.6 broker the local scripts used as a
//! stand-in.
//!
//! # The event log
//! One topic, one Kafka partition per log partition. Offsets are Kafka's own: without
//! transactions or compaction they start at 0 and are contiguous, as the port requires
//! (checked by the conformance suite against the broker, and again on every read).
//!
//! - **Append** produces each record keyed, to the explicit partition, with `acks=all`, the
//!   idempotent producer and `linger.ms=0`, and awaits every delivery report. The records of
//!   one call are enqueued under a per-partition lock, so concurrent appends of this process
//!   never interleave, and the offsets of the delivery reports are checked to be contiguous.
//!   Kafka has no atomic multi-record append without transactions (which the log does not
//!   use): **a failed append may have written a prefix of its records** (or all of them, when
//!   only the acknowledgement was lost, or when the append's future was dropped). Every
//!   failure after the records reached librdkafka is therefore retryable, and callers must
//!   take the log as the truth afterwards — the shard owner rebuilds its state from the log
//!   after a failed append, and its `first == expected offset` check catches anyone else's
//!   records.
//! - **Read** goes through one consumer shared by all partitions (manual assignment, one split
//!   queue per partition, see `reader.rs`), which only seeks when a read asks for another
//!   offset than the one its queue stands at. A read at the end returns nothing at once, as of
//!   the fetch's last answer (at most one fetch cycle old; our own appends are always seen).
//!   A partition nobody used for [`KafkaLogConfig::idle_fetch`] stops being fetched.
//! - **end_offset** is exact as of after the call: it runs a fetch to the end-of-partition
//!   event (one fetch cycle).
//! - **wait_for_records** needs no request: it makes sure a fetch runs at the waited offset and
//!   sleeps on a per-partition [`Notify`](tokio::sync::Notify), woken by librdkafka when the
//!   partition's queue becomes non-empty. The wake-up latency is the fetch latency: about a
//!   round trip on Kafka (its long poll answers as soon as data arrives), one to two
//!   `fetch.wait.max.ms` on brokers that hold every fetch that long, like tansu
//!   ([`KafkaLogConfig::fetch_wait_max`]; [`KafkaCompat::default_fetch_wait`] gives 100 ms
//!   for Kafka, where only an exact `end_offset` may wait that long, and 2 ms for tansu.)
//!
//! Memory: each fetched partition keeps at most `queued.max.messages.kbytes` (4 MiB) of
//! prefetched records in librdkafka, plus what a read asked for.
//!
//! # Shard membership
//! A consumer group (`group.id` = the group name) subscribed to the log topic with the
//! revocation-aware `cooperative-sticky` assignor (the eager `range` one only for tansu, see
//! [`KafkaCompat`]): a rebalance moves only the shards that change owner. Revocations reach the
//! [`AssignmentHandler`](fleetcmd_domain::ports::AssignmentHandler) from `pre_rebalance`,
//! before the member rejoins, so the handler returns before any other member is assigned the
//! shard; assignments reach it from `post_rebalance`, at once. Members never fetch records
//! (the owners read through [`KafkaLog`]). A member that dies loses its shards after
//! `session.timeout.ms` (6 s). [`KafkaCompat::Tansu`] adds a periodic check of the
//! assignment against the group's members and a grace before newly assigned shards are handed
//! over, because tansu re-delivers stale assignments.

mod client;
mod compat;
mod error;
mod log;
mod membership;
mod reader;

pub use client::TracingContext;
pub use compat::{KafkaCompat, UnknownCompat};
pub use error::{Error, Result};
pub use log::{KafkaLog, KafkaLogConfig};
pub use membership::{KafkaMembership, KafkaMembershipConfig};

#[cfg(doc)]
use fleetcmd_domain::ports::{EventLog, ShardMembership};
