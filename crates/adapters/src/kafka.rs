//! The Kafka adapters (feature `kafka`): [`KafkaLog`], the cluster [`EventLog`], and
//! [`KafkaMembership`], the [`ShardMembership`] that spreads shards (= partitions of the log
//! topic) over the live members of a consumer group.
//!
//! Both use rdkafka with its bundled librdkafka (Debian's 2.0 cannot talk to tansu); every
//! client sets `socket.nagle.disable`. Tested against tansu 0.6 (`deploy/engines/kafka.sh`),
//! written for Apache Kafka; where tansu differs, the code says so.
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
//!   Kafka has no atomic multi-record append without transactions (which tansu lacks):
//!   **a failed append may have written a prefix of its records** (or all of them, when only
//!   the acknowledgement was lost, or when the append's future was dropped). Every failure
//!   after the records reached librdkafka is therefore retryable, and callers must take the log
//!   as the truth afterwards — the shard owner rebuilds its state from the log after a failed
//!   append, and its `first == expected offset` check catches anyone else's records.
//! - **Read** goes through one consumer shared by all partitions: manual assignment, one split
//!   queue per partition, created on the partition's first read. The reader remembers where
//!   the queue stands and only seeks when a read asks for another offset, so reading a
//!   partition in a loop costs no request while records are prefetched. The end of a partition
//!   comes from librdkafka's end-of-partition events (the high watermark of fetch responses):
//!   a read at the end returns nothing at once, as of the fetch's last answer (at most one
//!   fetch cycle old; our own appends are always seen). ListOffsets is only a hint: tansu 0.6
//!   answers "base offset of the newest batch + 1", short of the end for multi-record batches.
//!   A fetch positioned inside a record batch is restarted further back when it brings a gap
//!   or nothing ([`KafkaLogConfig::seek_retry`]), because tansu only serves batches that start
//!   at or after the fetch offset. A partition nobody used for
//!   [`KafkaLogConfig::idle_fetch`] stops being fetched.
//! - **end_offset** is exact as of after the call: it runs a fetch to the end-of-partition
//!   event (one fetch cycle).
//! - **wait_for_records** needs no request: it makes sure a fetch runs at the waited offset and
//!   sleeps on a per-partition [`Notify`], woken by librdkafka when the partition's queue
//!   becomes non-empty. The wake-up latency is the fetch latency: about a round trip on Kafka
//!   (its long poll answers as soon as data arrives), one to two `fetch.wait.max.ms` on tansu,
//!   which holds every fetch that long ([`KafkaLogConfig::fetch_wait_max`], 2 ms by default:
//!   4–5 ms median measured; an idle waiting client then costs tansu ~15 % of a core per 16
//!   partitions, ~3 % at 50 ms. Against Kafka, 100–500 ms is as fast and cheaper.)
//!
//! Memory: each fetched partition keeps at most `queued.max.messages.kbytes` (4 MiB) of
//! prefetched records in librdkafka, plus what a read asked for.
//!
//! # Shard membership
//! A consumer group (`group.id` = the group name) subscribed to the log topic with the eager
//! `range` assignor. Revocations reach the [`AssignmentHandler`] from `pre_rebalance`, before
//! the member rejoins, so the handler returns before any other member is assigned the shard;
//! assignments reach it from `post_rebalance`. The consumer is polled on a dedicated thread and
//! pauses every assigned partition: it never fetches records (the owners read through
//! [`KafkaLog`]). A member that dies loses its shards after `session.timeout.ms` (6 s).
//!
//! tansu 0.6 notices a dead member and rebalances, but its SyncGroup in a formed group returns
//! the previous assignment instead of the leader's, so the dead member's shards would stay
//! unowned. Members therefore check every 2 s that their shards are their range share of the
//! group's current members (DescribeGroups) and rejoin when they are not, twice in a row
//! ([`KafkaMembershipConfig::assignment_check`]); this never fires on Kafka, and on tansu moves a
//! killed member's shards within 16–24 s instead of never. Until a stale member notices, it
//! still holds shards the group gave to another: newly assigned shards are therefore handed to
//! the handler only after [`KafkaMembershipConfig::takeover_grace`] (5 s), which keeps one
//! owner per shard on tansu (zero is right on Kafka, which revokes before it reassigns). Members commit offset 0 for their
//! (never consumed) partitions: tansu only lists groups that committed something.

use std::collections::{BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_domain::ports::{
    AssignmentChange, AssignmentHandler, EventLog, LogRecord, MembershipGuard, PortError,
    PortResult, ShardMembership,
};
use futures::future::select_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::Notify;

// ---- errors ------------------------------------------------------------------------------

/// A failure of a Kafka adapter. Converted to [`PortError`] at the port boundary, keeping
/// whether a retry may help (see [`Error::is_retryable`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A librdkafka call failed; the error code says whether retrying may help.
    #[error("kafka {op}: {source}")]
    Client {
        op: String,
        #[source]
        source: KafkaError,
    },
    /// The broker answered a request with an error code.
    #[error("kafka {op}: {code}")]
    Broker { op: String, code: RDKafkaErrorCode },
    /// The topic exists with another partition count.
    #[error(
        "topic {topic} has {actual} partitions but {expected} were asked for; \
         the partition count is fixed for the life of the log"
    )]
    PartitionCount {
        topic: String,
        expected: u32,
        actual: usize,
    },
    /// A partition outside the topic.
    #[error("partition {partition} out of range (topic {topic} has {partitions})")]
    PartitionOutOfRange {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    /// The records of one append did not land at contiguous offsets (another producer wrote
    /// between them): the append is reported as failed and the caller rebuilds.
    #[error("append to partition {partition} was split by other records: offsets {offsets:?}")]
    NotContiguous { partition: u32, offsets: Vec<i64> },
    /// A read met an offset it did not expect (a gap, or a record that cannot be decoded).
    #[error("partition {partition}: {detail}")]
    Corrupt { partition: u32, detail: String },
    /// An operation did not finish in time; its outcome is unknown.
    #[error("kafka {0}: timed out")]
    Timeout(String),
    /// Settings that cannot work (empty topic, zero partitions).
    #[error("kafka misconfigured: {0}")]
    Config(String),
    /// A blocking task panicked or was cancelled.
    #[error("kafka background task failed: {0}")]
    Task(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn client(op: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let op = op.into();
    move |source| Error::Client { op, source }
}

/// The error code of a client error, including admin results (which rdkafka leaves out of
/// `rdkafka_error_code`).
fn code_of(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    match e {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    }
}

/// Codes whose operation timed out (outcome unknown).
fn is_timeout_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageTimedOut | C::OperationTimedOut | C::RequestTimedOut | C::TimedOutQueue
    )
}

/// Codes after which the same request may succeed later: the broker or the leader is not
/// reachable or not ready, a rebalance or a producer reset is in progress.
fn is_transient_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    is_timeout_code(code)
        || matches!(
            code,
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::Resolve
                | C::BrokerDestroy
                | C::DestroyBroker
                | C::QueueFull
                | C::WaitingForCoordinator
                | C::Retry
                | C::PurgeQueue
                | C::PurgeInflight
                | C::Fatal
                | C::Interrupted
                | C::UnknownTopicOrPartition
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::BrokerNotAvailable
                | C::ReplicaNotAvailable
                | C::NetworkException
                | C::CoordinatorLoadInProgress
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::RebalanceInProgress
                | C::KafkaStorageError
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::OffsetNotAvailable
                | C::PreferredLeaderNotAvailable
                | C::ThrottlingQuotaExceeded
                | C::OutOfOrderSequenceNumber
                | C::UnknownProducerId
                | C::InvalidProducerEpoch
                | C::ProducerFenced
        )
}

impl Error {
    /// Whether retrying the operation may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Client { source, .. } => code_of(source).is_some_and(is_transient_code),
            Self::Broker { code, .. } => is_transient_code(*code),
            Self::NotContiguous { .. } | Self::Timeout(_) => true,
            Self::PartitionCount { .. }
            | Self::PartitionOutOfRange { .. }
            | Self::Corrupt { .. }
            | Self::Config(_)
            | Self::Task(_) => false,
        }
    }

    fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Client { source, .. } => code_of(source).is_some_and(is_timeout_code),
            Self::Broker { code, .. } => is_timeout_code(*code),
            _ => false,
        }
    }
}

impl From<Error> for PortError {
    fn from(e: Error) -> Self {
        if e.is_timeout() {
            PortError::Timeout(e.to_string())
        } else if e.is_retryable() {
            PortError::Unavailable(e.to_string())
        } else if matches!(e, Error::Corrupt { .. }) {
            PortError::Corrupt(e.to_string())
        } else {
            PortError::Backend(e.to_string())
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Task(e.to_string())
    }
}

// ---- client plumbing -------------------------------------------------------------------------

/// Forwards librdkafka's logs and global errors to `tracing` (rdkafka's default uses `log`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingContext;

fn forward_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
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

type Reader = BaseConsumer<TracingContext>;

fn base_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        // Latency matters more than packet count: no Nagle on any socket.
        .set("socket.nagle.disable", "true");
    c
}

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

fn partition_i32(partition: u32) -> i32 {
    // Partition counts are checked to fit an i32 at connect.
    i32::try_from(partition).unwrap_or(i32::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---- the event log ---------------------------------------------------------------------------

/// Settings of a [`KafkaLog`]. [`KafkaLogConfig::new`] gives working defaults.
#[derive(Debug, Clone)]
pub struct KafkaLogConfig {
    /// `host:port[,host:port...]`.
    pub brokers: String,
    pub topic: String,
    /// The partition count (= the shard count), fixed for the life of the topic.
    pub partitions: u32,
    /// Replication factor used when this client creates the topic (-1: the broker's default).
    pub replication_factor: i32,
    /// How long an append waits for its delivery reports (`message.timeout.ms`).
    pub append_timeout: Duration,
    /// How long metadata and admin requests, and a read of a record known to exist, may take.
    pub request_timeout: Duration,
    /// `fetch.wait.max.ms`: how long the broker may hold a fetch that found nothing. It bounds
    /// the wake-up latency of `wait_for_records` on brokers that do not answer a pending fetch
    /// as soon as data arrives (tansu holds every fetch this long), and it is the cost of an
    /// exact `end_offset`.
    pub fetch_wait_max: Duration,
    /// A partition nobody read or waited on for this long stops being fetched (its
    /// prefetched records are dropped; the next read starts a new fetch).
    pub idle_fetch: Duration,
    /// How long a fetch that was just positioned may bring neither a record nor the end before
    /// it is restarted further back. Kafka serves a fetch from inside a record batch; tansu
    /// 0.6 only serves batches that *start* at or after the fetch offset, so a fetch inside a
    /// batch skips it (or, inside the newest batch, gets nothing).
    pub seek_retry: Duration,
}

impl KafkaLogConfig {
    pub fn new(brokers: &str, topic: &str, partitions: u32) -> Self {
        Self {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            partitions,
            replication_factor: -1,
            append_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            fetch_wait_max: Duration::from_millis(2),
            idle_fetch: Duration::from_secs(30),
            seek_retry: Duration::from_millis(100),
        }
    }
}

/// Most records a waiter buffers while looking for a record past a far offset; older buffered
/// records are dropped (a later read fetches them again).
const WAIT_BUFFER_CAP: usize = 4096;
/// How often the reader's main queue (errors, statistics) is served and idle fetches are
/// stopped.
const MAIN_QUEUE_POLL: Duration = Duration::from_millis(200);

/// The event log on a Kafka topic. See the module docs for the guarantees.
pub struct KafkaLog {
    inner: Arc<Inner>,
    /// Serves the reader's main queue until the log is dropped.
    main_poller: Option<JoinHandle<()>>,
}

struct Inner {
    config: KafkaLogConfig,
    /// Replaced when librdkafka raises a fatal (producer-fencing) error.
    producer: RwLock<Arc<FutureProducer<TracingContext>>>,
    reader: Arc<Reader>,
    slots: Vec<Slot>,
    stop: AtomicBool,
}

/// Per partition.
struct Slot {
    /// Serializes the enqueueing of one append's records, so they are contiguous.
    append: tokio::sync::Mutex<()>,
    /// The partition's fetch; created by the first read or wait, dropped when idle.
    fetch: Mutex<Option<Fetch>>,
    /// A lower bound of the partition's end offset, from delivery reports, fetched records and
    /// end-of-partition events. Only grows.
    end: AtomicU64,
    /// Woken when the partition's queue becomes non-empty, when `end` grows, and when a
    /// holder of `fetch` releases it while a waiter asked for it (`pump_wanted`).
    notify: Arc<Notify>,
    /// Set by a waiter that found `fetch` taken: the holder wakes the waiters on release,
    /// since the queue may hold records whose non-empty wake-up already fired.
    pump_wanted: AtomicBool,
    /// Tasks in `wait_for_records` on this partition (its fetch is not idle).
    waiters: AtomicUsize,
}

/// A partition's split queue, fetching from where the reader stands.
struct Fetch {
    queue: PartitionQueue<TracingContext>,
    buf: Buffered,
    last_used: Instant,
}

/// Records taken off a partition queue, contiguous from `next`.
struct Buffered {
    /// Offset of `buffer[0]`; when the buffer is empty, the offset the queue delivers next.
    next: u64,
    buffer: VecDeque<LogRecord>,
    /// The last event taken off the queue was librdkafka's end-of-partition: a fetch response
    /// said the high watermark is `fetch_pos()`. Cleared by a record or a repositioning.
    at_end: bool,
    /// Set when the fetch was positioned, until its first record or end event.
    seeking: Option<Seeking>,
}

/// Where a fetch was (re)started, and when.
#[derive(Debug, Clone, Copy)]
struct Seeking {
    at: u64,
    since: Instant,
}

impl Buffered {
    /// The offset the queue delivers next.
    fn fetch_pos(&self) -> u64 {
        self.next + self.buffer.len() as u64
    }

    fn covers(&self, offset: u64) -> bool {
        offset >= self.next && offset < self.fetch_pos()
    }

    /// Drops the oldest records beyond `cap` (a later read fetches them again).
    fn trim(&mut self, cap: usize) {
        while self.buffer.len() > cap {
            self.buffer.pop_front();
            self.next += 1;
        }
    }

    fn take(&mut self, max: usize) -> Vec<LogRecord> {
        let n = max.min(self.buffer.len());
        self.next += n as u64;
        self.buffer.drain(..n).collect()
    }
}

/// The `fetch` lock of a slot; releasing it wakes the slot's waiters if one asked.
struct FetchGuard<'a> {
    guard: Option<MutexGuard<'a, Option<Fetch>>>,
    slot: &'a Slot,
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if self.slot.pump_wanted.swap(false, Ordering::AcqRel) {
            self.slot.notify.notify_waiters();
        }
    }
}

impl std::ops::Deref for FetchGuard<'_> {
    type Target = Option<Fetch>;
    fn deref(&self) -> &Option<Fetch> {
        self.guard.as_deref().unwrap_or(&None)
    }
}

impl std::ops::DerefMut for FetchGuard<'_> {
    fn deref_mut(&mut self) -> &mut Option<Fetch> {
        match self.guard.as_deref_mut() {
            Some(f) => f,
            // The guard is only taken in `drop`.
            None => unreachable!("fetch guard used after release"),
        }
    }
}

/// Counts a waiter on a slot for as long as it lives.
struct Waiting<'a>(&'a Slot);

impl<'a> Waiting<'a> {
    fn new(slot: &'a Slot) -> Self {
        slot.waiters.fetch_add(1, Ordering::AcqRel);
        Self(slot)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.inner.config.brokers)
            .field("topic", &self.inner.config.topic)
            .field("partitions", &self.inner.config.partitions)
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Connects to `brokers` and opens the log on `topic`, creating the topic with
    /// `partitions` partitions if it is missing. Fails with [`PortError::Backend`] if the topic
    /// exists with another partition count, and with a retryable error when the brokers
    /// cannot be reached.
    pub async fn connect(brokers: &str, topic: &str, partitions: u32) -> PortResult<Arc<Self>> {
        Self::connect_with(KafkaLogConfig::new(brokers, topic, partitions)).await
    }

    /// [`KafkaLog::connect`] with every setting.
    pub async fn connect_with(config: KafkaLogConfig) -> PortResult<Arc<Self>> {
        Ok(Self::open(config).await?)
    }

    async fn open(config: KafkaLogConfig) -> Result<Arc<Self>> {
        if config.topic.is_empty() {
            return Err(Error::Config("the topic name is empty".into()));
        }
        if config.partitions == 0 || i32::try_from(config.partitions).is_err() {
            return Err(Error::Config(format!(
                "the partition count must be between 1 and {}, got {}",
                i32::MAX,
                config.partitions
            )));
        }
        let producer = Arc::new(new_producer(&config)?);
        let reader: Arc<Reader> = Arc::new(
            reader_config(&config)
                .create_with_context(TracingContext)
                .map_err(client("creating the reader"))?,
        );
        ensure_topic(&config, &reader).await?;

        let slots = (0..config.partitions)
            .map(|_| Slot {
                append: tokio::sync::Mutex::new(()),
                fetch: Mutex::new(None),
                end: AtomicU64::new(0),
                notify: Arc::new(Notify::new()),
                pump_wanted: AtomicBool::new(false),
                waiters: AtomicUsize::new(0),
            })
            .collect();
        let inner = Arc::new(Inner {
            config,
            producer: RwLock::new(producer),
            reader,
            slots,
            stop: AtomicBool::new(false),
        });
        let poller = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("kafka-log-main".into())
                .spawn(move || inner.serve_main_queue())
                .map_err(|e| Error::Task(format!("spawning the reader's poll thread: {e}")))?
        };
        Ok(Arc::new(Self {
            inner,
            main_poller: Some(poller),
        }))
    }

    /// The topic this log lives in.
    pub fn topic(&self) -> &str {
        &self.inner.config.topic
    }
}

impl Drop for KafkaLog {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        // The thread notices within MAIN_QUEUE_POLL; not joined, so dropping never blocks.
        drop(self.main_poller.take());
    }
}

fn new_producer(config: &KafkaLogConfig) -> Result<FutureProducer<TracingContext>> {
    let mut c = base_config(&config.brokers, "fleetcmd-log-producer");
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        // Send at once: an append waits for its delivery, so batching only adds latency.
        .set("linger.ms", "0")
        .set("message.timeout.ms", ms(config.append_timeout))
        .set(
            "request.timeout.ms",
            ms(config.request_timeout.min(config.append_timeout)),
        )
        .set("retry.backoff.ms", "20")
        .set("reconnect.backoff.ms", "20");
    c.create_with_context(TracingContext)
        .map_err(client("creating the producer"))
}

fn reader_config(config: &KafkaLogConfig) -> ClientConfig {
    let mut c = base_config(&config.brokers, "fleetcmd-log-reader");
    // Required by librdkafka to assign partitions; never joined (no subscription, no commit).
    c.set("group.id", "fleetcmd-log-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Never jump: the reader only positions at or below an end it saw.
        .set("auto.offset.reset", "error")
        // How the reader learns the end: the high watermark of fetch responses.
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_uncommitted")
        .set("fetch.wait.max.ms", ms(config.fetch_wait_max))
        .set("fetch.min.bytes", "1")
        .set("fetch.error.backoff.ms", "50")
        // Per partition (each has its own queue); refetch soon after the reader drained it.
        .set("queued.min.messages", "10000")
        .set("queued.max.messages.kbytes", "4096")
        .set("fetch.queue.backoff.ms", "5")
        .set("reconnect.backoff.ms", "20")
        .set("allow.auto.create.topics", "false");
    c
}

/// Creates the topic unless it exists, then checks its partition count.
async fn ensure_topic(config: &KafkaLogConfig, reader: &Arc<Reader>) -> Result<()> {
    let admin: AdminClient<TracingContext> = base_config(&config.brokers, "fleetcmd-log-admin")
        .create_with_context(TracingContext)
        .map_err(client("creating the admin client"))?;
    let topic = NewTopic::new(
        &config.topic,
        partition_i32(config.partitions),
        TopicReplication::Fixed(config.replication_factor),
    )
    // The log is the source of truth and owners rebuild from offset 0: never expire it.
    .set("retention.ms", "-1")
    .set("retention.bytes", "-1");
    let opts = AdminOptions::new()
        .request_timeout(Some(config.request_timeout))
        .operation_timeout(Some(config.request_timeout));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(client(format!("creating topic {}", config.topic)))?;
    for r in results {
        match r {
            Ok(_) => {
                tracing::info!(topic = %config.topic, partitions = config.partitions, "created the log topic")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(Error::Broker {
                    op: format!("creating topic {name}"),
                    code,
                });
            }
        }
    }

    // Check the count; a freshly created topic may take a moment to show in the metadata.
    let reader = reader.clone();
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + config.request_timeout;
        loop {
            let metadata = reader
                .fetch_metadata(Some(&config.topic), config.request_timeout)
                .map_err(client(format!("fetching the metadata of {}", config.topic)))?;
            let found = metadata.topics().iter().find(|t| t.name() == config.topic);
            let missing = match found {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    let actual = t.partitions().len();
                    if actual != config.partitions as usize {
                        return Err(Error::PartitionCount {
                            topic: config.topic.clone(),
                            expected: config.partitions,
                            actual,
                        });
                    }
                    return Ok(());
                }
                Some(t) => t.error().map(RDKafkaErrorCode::from),
                None => None,
            };
            if Instant::now() >= deadline {
                return Err(Error::Broker {
                    op: format!("looking up topic {}", config.topic),
                    code: missing.unwrap_or(RDKafkaErrorCode::UnknownTopicOrPartition),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await?
}

impl Inner {
    fn check_partition(&self, partition: u32) -> Result<()> {
        if partition < self.config.partitions {
            Ok(())
        } else {
            Err(Error::PartitionOutOfRange {
                topic: self.config.topic.clone(),
                partition,
                partitions: self.config.partitions,
            })
        }
    }

    fn slot(&self, partition: u32) -> &Slot {
        &self.slots[partition as usize]
    }

    /// Records that `partition` holds records below `end`; wakes waiters when it grows.
    fn raise_end(&self, partition: u32, end: u64) {
        let slot = self.slot(partition);
        if slot.end.fetch_max(end, Ordering::AcqRel) < end {
            slot.notify.notify_waiters();
        }
    }

    fn known_end(&self, partition: u32) -> u64 {
        self.slot(partition).end.load(Ordering::Acquire)
    }

    fn lock_fetch(&self, partition: u32) -> FetchGuard<'_> {
        let slot = self.slot(partition);
        FetchGuard {
            guard: Some(lock(&slot.fetch)),
            slot,
        }
    }

    /// Takes `fetch` if it is free; otherwise asks its holder to wake the waiters when it
    /// releases it (checking once more, in case it was released in between).
    fn try_lock_fetch(&self, partition: u32) -> Option<FetchGuard<'_>> {
        let slot = self.slot(partition);
        let try_lock = || match slot.fetch.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let guard = match try_lock() {
            Some(g) => g,
            None => {
                slot.pump_wanted.store(true, Ordering::Release);
                try_lock()?
            }
        };
        Some(FetchGuard {
            guard: Some(guard),
            slot,
        })
    }

    fn producer(&self) -> Arc<FutureProducer<TracingContext>> {
        self.producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the producer after librdkafka raised a fatal error (it is unusable then).
    fn replace_producer_if_fatal(&self, used: &Arc<FutureProducer<TracingContext>>) {
        let Some((code, reason)) = used.client().fatal_error() else {
            return;
        };
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&current, used) {
            return; // Already replaced.
        }
        tracing::error!(%code, %reason, "the Kafka producer failed fatally; creating a new one");
        match new_producer(&self.config) {
            Ok(p) => *current = Arc::new(p),
            Err(e) => tracing::error!(error = %e, "cannot create a new Kafka producer"),
        }
    }

    /// The end offset the broker lists (ListOffsets): exact on Kafka, but only a lower bound
    /// on tansu 0.6, which answers the base offset of the newest record batch plus one.
    fn listed_end(&self, partition: u32) -> Result<u64> {
        let (_, high) = self
            .reader
            .fetch_watermarks(
                &self.config.topic,
                partition_i32(partition),
                self.config.request_timeout,
            )
            .map_err(client(format!(
                "listing the end of {}/{partition}",
                self.config.topic
            )))?;
        Ok(u64::try_from(high).unwrap_or(0))
    }

    /// Makes the partition's queue deliver from `from` next (`from` must not be past the
    /// partition's end), creating the fetch on first use. `fresh`: restart the fetch even if it
    /// stands there already, so the next end-of-partition event reflects the broker after now.
    fn position(
        &self,
        partition: u32,
        fetch: &mut Option<Fetch>,
        from: u64,
        fresh: bool,
    ) -> Result<()> {
        let Some(f) = fetch.as_mut() else {
            *fetch = Some(self.open_fetch(partition, from)?);
            return Ok(());
        };
        f.last_used = Instant::now();
        if !fresh && f.buf.covers(from) {
            let skip = (from - f.buf.next) as usize;
            f.buf.buffer.drain(..skip);
            f.buf.next = from;
            return Ok(());
        }
        if !fresh && from == f.buf.fetch_pos() {
            return Ok(());
        }
        self.seek(partition, from)?;
        f.buf.buffer.clear();
        f.buf.next = from;
        f.buf.at_end = false;
        f.buf.seeking = Some(Seeking {
            at: from,
            since: Instant::now(),
        });
        Ok(())
    }

    fn open_fetch(&self, partition: u32, from: u64) -> Result<Fetch> {
        let topic = &self.config.topic;
        // Split before assigning: the queue then never forwards to the consumer's main queue
        // (librdkafka keeps an application-set forward across reassignments).
        let mut queue = self
            .reader
            .split_partition_queue(topic, partition_i32(partition))
            .ok_or_else(|| Error::Config(format!("cannot open a queue for {topic}/{partition}")))?;
        let notify = self.slot(partition).notify.clone();
        // Runs on a librdkafka thread with the queue locked: only wake, never call back in.
        queue.set_nonempty_callback(move || notify.notify_waiters());
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition_i32(partition), offset(from)?)
            .map_err(client("building an assignment"))?;
        self.reader
            .incremental_assign(&tpl)
            .map_err(client(format!("assigning {topic}/{partition}")))?;
        Ok(Fetch {
            queue,
            buf: Buffered {
                next: from,
                buffer: VecDeque::new(),
                at_end: false,
                seeking: Some(Seeking {
                    at: from,
                    since: Instant::now(),
                }),
            },
            last_used: Instant::now(),
        })
    }

    /// Stops fetching the partition and forgets what was prefetched.
    fn close_fetch(&self, partition: u32, fetch: &mut Option<Fetch>) {
        if fetch.take().is_none() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.topic, partition_i32(partition));
        if let Err(e) = self.reader.incremental_unassign(&tpl) {
            tracing::warn!(partition, error = %e, "cannot unassign a Kafka partition");
        }
    }

    /// Moves the partition's fetch to `to`; a new version for librdkafka, so nothing fetched
    /// before (records or end-of-partition events) is delivered after this returns.
    fn seek(&self, partition: u32, to: u64) -> Result<()> {
        let topic = &self.config.topic;
        let p = partition_i32(partition);
        match self
            .reader
            .seek(topic, p, offset(to)?, self.config.request_timeout)
        {
            Ok(()) => Ok(()),
            Err(e) => {
                // A fetch that has not started yet cannot seek: assign it again instead.
                tracing::debug!(topic, partition, error = %e, "seek failed; reassigning");
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, p);
                self.reader
                    .incremental_unassign(&tpl)
                    .map_err(client(format!("unassigning {topic}/{partition}")))?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, p, offset(to)?)
                    .map_err(client("building an assignment"))?;
                self.reader
                    .incremental_assign(&tpl)
                    .map_err(client(format!("assigning {topic}/{partition}")))
            }
        }
    }

    /// Takes one event off the queue: a record goes to the buffer (stale ones from before a
    /// seek are skipped, a gap is an error), an end-of-partition sets `at_end`.
    fn accept(
        &self,
        partition: u32,
        c: &mut Buffered,
        event: KafkaResult<BorrowedMessage<'_>>,
    ) -> Result<()> {
        let msg = match event {
            Ok(msg) => msg,
            Err(KafkaError::PartitionEOF(_)) => {
                c.seeking = None;
                // An end event older than records known to exist (our own appends) is stale.
                c.at_end = self.known_end(partition) <= c.fetch_pos();
                self.raise_end(partition, c.fetch_pos());
                return Ok(());
            }
            Err(e) => {
                return Err(Error::Client {
                    op: format!("reading {}/{partition}", self.config.topic),
                    source: e,
                });
            }
        };
        let offset = u64::try_from(msg.offset()).map_err(|_| Error::Corrupt {
            partition,
            detail: format!("negative offset {}", msg.offset()),
        })?;
        let expected = c.fetch_pos();
        if offset > expected && c.seeking.is_some() {
            // The fetch started inside a batch the broker skipped (tansu): start earlier.
            return self.back_off(partition, c);
        }
        c.seeking = None;
        if offset < expected {
            // Before the wanted offset (the fetch started earlier, or before a seek).
            return Ok(());
        }
        if offset > expected {
            return Err(Error::Corrupt {
                partition,
                detail: format!("expected offset {expected}, the broker returned {offset}"),
            });
        }
        let key = match msg.key() {
            None => String::new(),
            Some(k) => String::from_utf8(k.to_vec()).map_err(|_| Error::Corrupt {
                partition,
                detail: format!("the key at offset {offset} is not UTF-8"),
            })?,
        };
        let payload = msg
            .payload()
            .map(Bytes::copy_from_slice)
            .unwrap_or_default();
        c.buffer.push_back(LogRecord {
            offset,
            key,
            payload,
        });
        c.at_end = false;
        self.raise_end(partition, offset + 1);
        Ok(())
    }

    /// Restarts a positioned fetch that brought nothing usable further back: 8, 64, 512...
    /// records before the first missing one (records before it are skipped on arrival).
    fn back_off(&self, partition: u32, c: &mut Buffered) -> Result<()> {
        let pos = c.fetch_pos();
        let previous = c.seeking.map_or(pos, |s| s.at);
        let at = pos.saturating_sub(pos.saturating_sub(previous).max(1).saturating_mul(8));
        tracing::debug!(
            partition,
            pos,
            at,
            "the fetch brought nothing at its position; starting earlier"
        );
        self.seek(partition, at)?;
        c.at_end = false;
        c.seeking = Some(Seeking {
            at,
            since: Instant::now(),
        });
        Ok(())
    }

    /// Restarts the fetch further back if it was positioned `seek_retry` ago and brought
    /// nothing yet; returns when to check again while it is still positioning.
    fn check_seeking(&self, partition: u32, c: &mut Buffered) -> Result<Option<Instant>> {
        let Some(s) = c.seeking else {
            return Ok(None);
        };
        let retry_at = s.since + self.config.seek_retry;
        if Instant::now() < retry_at {
            return Ok(Some(retry_at));
        }
        self.back_off(partition, c)?;
        Ok(Some(Instant::now() + self.config.seek_retry))
    }

    /// Waits for the next event of the queue (until `deadline`) and takes it. False when the
    /// deadline passed.
    fn next_event(&self, partition: u32, f: &mut Fetch, deadline: Instant) -> Result<bool> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let until = self
                .check_seeking(partition, &mut f.buf)?
                .map_or(deadline, |t| t.min(deadline));
            if let Some(event) = f.queue.poll(until.saturating_duration_since(now)) {
                self.accept(partition, &mut f.buf, event)?;
                return Ok(true);
            }
        }
    }

    /// Takes what the queue holds, without blocking, until the buffer holds `limit` records.
    fn pump(&self, partition: u32, f: &mut Fetch, limit: usize) -> Result<()> {
        while f.buf.buffer.len() < limit {
            let Some(event) = f.queue.poll(Duration::ZERO) else {
                return Ok(());
            };
            self.accept(partition, &mut f.buf, event)?;
        }
        Ok(())
    }

    /// Blocks until the buffer holds a record or the fetch reached the end.
    fn fill(&self, partition: u32, f: &mut Fetch, limit: usize) -> Result<()> {
        self.pump(partition, f, limit)?;
        if self.known_end(partition) > f.buf.fetch_pos() {
            // Records are known to exist past the last end event (e.g. our own appends).
            f.buf.at_end = false;
        }
        let deadline = Instant::now() + self.config.request_timeout;
        while f.buf.buffer.is_empty() && !f.buf.at_end {
            if !self.next_event(partition, f, deadline)? {
                return Err(Error::Timeout(format!(
                    "reading {}/{partition} at {}",
                    self.config.topic,
                    f.buf.fetch_pos()
                )));
            }
            self.pump(partition, f, limit)?;
        }
        Ok(())
    }

    /// The exact end of the partition as of a fetch answered after this call started: the
    /// fetch restarts at the highest offset known to exist and runs to the end-of-partition
    /// event. Costs a ListOffsets and a fetch round trip (`fetch.wait.max.ms` on tansu).
    fn probe_end(&self, partition: u32, fetch: &mut Option<Fetch>) -> Result<u64> {
        let listed = self.listed_end(partition)?;
        let from = self.known_end(partition).max(listed);
        self.position(partition, fetch, from, true)?;
        let Some(f) = fetch.as_mut() else {
            return Err(Error::Task("the fetch vanished".into()));
        };
        let deadline = Instant::now() + self.config.request_timeout;
        while !f.buf.at_end {
            if !self.next_event(partition, f, deadline)? {
                return Err(Error::Timeout(format!(
                    "finding the end of {}/{partition}",
                    self.config.topic
                )));
            }
            f.buf.trim(WAIT_BUFFER_CAP);
        }
        Ok(f.buf.fetch_pos())
    }

    /// Runs `op` on the partition's fetch; an error closes the fetch, so the next call starts
    /// a new one instead of waiting on a fetch librdkafka stopped.
    fn with_fetch<T>(
        &self,
        partition: u32,
        op: impl FnOnce(&mut Option<Fetch>) -> Result<T>,
    ) -> Result<T> {
        let mut fetch = self.lock_fetch(partition);
        let result = op(&mut fetch);
        if result.is_err() {
            self.close_fetch(partition, &mut fetch);
        }
        result
    }

    fn read_blocking(&self, partition: u32, from: u64, max: usize) -> Result<Vec<LogRecord>> {
        self.with_fetch(partition, |fetch| {
            let positioned = fetch
                .as_ref()
                .is_some_and(|f| f.buf.covers(from) || f.buf.fetch_pos() == from);
            if !positioned && from > self.known_end(partition) {
                // Only position at offsets that exist: find the end first.
                let end = self.probe_end(partition, fetch)?;
                if from >= end {
                    return Ok(Vec::new());
                }
            }
            self.position(partition, fetch, from, false)?;
            let Some(f) = fetch.as_mut() else {
                return Ok(Vec::new());
            };
            // At the end (as of the fetch's last answer) this returns nothing at once.
            self.fill(partition, f, max)?;
            Ok(f.buf.take(max))
        })
    }

    fn end_blocking(&self, partition: u32) -> Result<u64> {
        self.with_fetch(partition, |fetch| self.probe_end(partition, fetch))
    }

    /// Prepares a wait at `(partition, offset)`: true if a record at or past it is known;
    /// otherwise makes sure a fetch runs at or below `offset` (never past the known end), whose
    /// queue wakes the slot when records arrive. No request to the broker.
    fn watch_blocking(&self, partition: u32, offset: u64) -> Result<bool> {
        if self.known_end(partition) > offset {
            return Ok(true);
        }
        self.with_fetch(partition, |fetch| {
            if let Some(f) = fetch.as_mut() {
                // fetch_pos <= known end <= offset: it fetches towards the offset.
                f.last_used = Instant::now();
                return Ok(false);
            }
            let at = self.known_end(partition).min(offset);
            *fetch = Some(self.open_fetch(partition, at)?);
            Ok(false)
        })
    }

    /// Takes what the partition's queue holds, without blocking (skipped when another task
    /// holds the fetch: it wakes the waiters when it releases it). Returns when to look again
    /// while the fetch is still being positioned.
    fn pump_for_wait(&self, partition: u32) -> Result<Option<Instant>> {
        let Some(mut fetch) = self.try_lock_fetch(partition) else {
            return Ok(None);
        };
        let Some(f) = fetch.as_mut() else {
            return Ok(None);
        };
        let pumped = (|| {
            while let Some(event) = f.queue.poll(Duration::ZERO) {
                self.accept(partition, &mut f.buf, event)?;
                f.buf.trim(WAIT_BUFFER_CAP);
            }
            self.check_seeking(partition, &mut f.buf)
        })();
        if pumped.is_err() {
            self.close_fetch(partition, &mut fetch);
        }
        pumped
    }

    /// Serves the reader's main queue (errors, statistics: partition records go to their own
    /// queues) and stops fetching partitions nobody uses.
    fn serve_main_queue(&self) {
        let mut last_sweep = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            match self.reader.poll(MAIN_QUEUE_POLL) {
                None => {}
                Some(Ok(msg)) => tracing::debug!(
                    partition = msg.partition(),
                    offset = msg.offset(),
                    "record on the reader's main queue ignored"
                ),
                Some(Err(e)) => tracing::debug!(error = %e, "Kafka reader"),
            }
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                last_sweep = Instant::now();
                self.close_idle_fetches();
            }
        }
    }

    fn close_idle_fetches(&self) {
        for p in 0..self.config.partitions {
            let slot = self.slot(p);
            if slot.waiters.load(Ordering::Acquire) > 0 {
                continue;
            }
            let Ok(mut fetch) = slot.fetch.try_lock() else {
                continue;
            };
            if fetch
                .as_ref()
                .is_some_and(|f| f.last_used.elapsed() >= self.config.idle_fetch)
            {
                tracing::debug!(partition = p, "closing an idle fetch");
                self.close_fetch(p, &mut fetch);
            }
        }
    }
}

type KafkaResult<T> = std::result::Result<T, KafkaError>;

fn offset(o: u64) -> Result<Offset> {
    i64::try_from(o)
        .map(Offset::Offset)
        .map_err(|_| Error::Config(format!("offset {o} exceeds Kafka's range")))
}

async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
) -> Result<T> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || f(&inner)).await?
}

#[async_trait::async_trait]
impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.inner.config.partitions
    }

    /// See the module docs: on `Err` a prefix of the records may have been written, and
    /// every error after the records were handed to librdkafka is retryable.
    async fn append(&self, partition: u32, records: Vec<(String, Bytes)>) -> PortResult<u64> {
        self.inner.check_partition(partition)?;
        if records.is_empty() {
            return self.end_offset(partition).await;
        }
        let inner = &self.inner;
        let topic = inner.config.topic.as_str();
        let producer = inner.producer();
        let p = partition_i32(partition);
        let mut deliveries = Vec::with_capacity(records.len());
        {
            let _order = inner.slot(partition).append.lock().await;
            for (key, payload) in &records {
                let mut record = FutureRecord::to(topic)
                    .partition(p)
                    .key(key.as_str())
                    .payload(payload.as_ref());
                let deadline = Instant::now() + inner.config.append_timeout;
                loop {
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            deliveries.push(delivery);
                            break;
                        }
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                            if Instant::now() < deadline =>
                        {
                            record = r;
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err((e, _)) => {
                            let e = Error::Client {
                                op: format!("appending to {topic}/{partition}"),
                                source: e,
                            };
                            // Nothing of this record is written; earlier ones may be.
                            return Err(if deliveries.is_empty() && !e.is_retryable() {
                                PortError::Backend(e.to_string())
                            } else {
                                retryable(e)
                            });
                        }
                    }
                }
            }
        }

        let waited = tokio::time::timeout(
            inner.config.append_timeout + Duration::from_secs(1),
            futures::future::join_all(deliveries),
        )
        .await;
        let Ok(results) = waited else {
            return Err(PortError::Timeout(format!(
                "appending to {topic}/{partition}: no delivery report"
            )));
        };
        let mut offsets = Vec::with_capacity(results.len());
        let mut failure = None;
        for result in results {
            match result {
                Ok(Ok(delivery)) => offsets.push(delivery.offset),
                Ok(Err((e, _))) => {
                    failure.get_or_insert(Error::Client {
                        op: format!("appending to {topic}/{partition}"),
                        source: e,
                    });
                }
                Err(_) => {
                    failure.get_or_insert(Error::Task("the producer dropped a delivery".into()));
                }
            }
        }
        if let Some(max) = offsets.iter().max() {
            inner.raise_end(partition, u64::try_from(*max).unwrap_or(0) + 1);
        }
        if let Some(e) = failure {
            inner.replace_producer_if_fatal(&producer);
            return Err(retryable(e));
        }
        let first = offsets[0];
        if offsets
            .iter()
            .enumerate()
            .any(|(i, o)| *o != first + i as i64)
        {
            return Err(retryable(Error::NotContiguous { partition, offsets }));
        }
        u64::try_from(first).map_err(|_| {
            PortError::Corrupt(format!(
                "{topic}/{partition}: negative offset {first} in a delivery report"
            ))
        })
    }

    /// At the end this returns nothing at once; "the end" is the high watermark of the
    /// partition fetch's last answer, at most one fetch cycle old (a read that repositions
    /// the fetch, like the first read of a rebuild, sees the end as of after the call).
    async fn read(&self, partition: u32, from: u64, max: usize) -> PortResult<Vec<LogRecord>> {
        self.inner.check_partition(partition)?;
        if max == 0 {
            return Ok(Vec::new());
        }
        Ok(blocking(&self.inner, move |inner| {
            inner.read_blocking(partition, from, max)
        })
        .await?)
    }

    /// Exact as of after the call started; costs a fetch round trip (see [`KafkaLogConfig`]).
    async fn end_offset(&self, partition: u32) -> PortResult<u64> {
        self.inner.check_partition(partition)?;
        Ok(blocking(&self.inner, move |inner| inner.end_blocking(partition)).await?)
    }

    /// Wakes within the fetch latency of a record landing: about a network round trip on
    /// Kafka (long poll), between one and two `fetch_wait_max` on tansu (2–4 ms by default).
    async fn wait_for_records(
        &self,
        positions: &[(u32, u64)],
        timeout: Duration,
    ) -> PortResult<()> {
        for &(p, _) in positions {
            self.inner.check_partition(p)?;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        if positions.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return Ok(());
        }
        let inner = &self.inner;
        let satisfied = || positions.iter().any(|&(p, o)| inner.known_end(p) > o);
        if satisfied() {
            return Ok(());
        }
        let _waiting: Vec<Waiting<'_>> = positions
            .iter()
            .map(|&(p, _)| Waiting::new(inner.slot(p)))
            .collect();
        let wanted = positions.to_vec();
        let found = tokio::time::timeout_at(
            deadline,
            blocking(inner, move |inner| {
                for (p, o) in wanted {
                    if inner.watch_blocking(p, o)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }),
        )
        .await;
        match found {
            Err(_) | Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
        loop {
            let mut woken: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = positions
                .iter()
                .map(|&(p, _)| Box::pin(inner.slot(p).notify.notified()))
                .collect();
            for n in &mut woken {
                n.as_mut().enable();
            }
            let mut recheck = deadline;
            for &(p, _) in positions {
                if let Some(at) = inner.pump_for_wait(p)? {
                    recheck = recheck.min(tokio::time::Instant::from_std(at));
                }
            }
            if satisfied() {
                return Ok(());
            }
            if tokio::time::timeout_at(recheck, select_all(woken))
                .await
                .is_err()
                && recheck >= deadline
            {
                return Ok(());
            }
        }
    }
}

/// An append failure whose outcome is unknown: always retryable.
fn retryable(e: Error) -> PortError {
    if e.is_timeout() {
        PortError::Timeout(e.to_string())
    } else {
        PortError::Unavailable(e.to_string())
    }
}

// ---- shard membership ------------------------------------------------------------------------

/// Settings of a [`KafkaMembership`]. [`KafkaMembershipConfig::new`] gives working defaults.
#[derive(Debug, Clone)]
pub struct KafkaMembershipConfig {
    pub brokers: String,
    /// The log topic: its partitions are the shards.
    pub topic: String,
    /// How long a member may be silent before the group gives its shards to others
    /// (`session.timeout.ms`; the broker bounds it, 6 s is Kafka's minimum by default).
    pub session_timeout: Duration,
    /// `heartbeat.interval.ms`.
    pub heartbeat_interval: Duration,
    /// How long `join` waits for the topic's metadata, and the group check for its answer.
    pub request_timeout: Duration,
    /// How long dropping the guard waits for the revocation and the group leave.
    pub leave_timeout: Duration,
    /// How often a member checks that its shards are its range share of the group's current
    /// members, and rejoins when they are not, twice in a row (`None`: never). Never fires
    /// on Kafka; it repairs tansu 0.6, whose SyncGroup in a formed group re-delivers the old
    /// assignment after a member's session expired, leaving the dead member's shards unowned.
    pub assignment_check: Option<Duration>,
    /// How long newly assigned shards wait before they are handed to the handler. On a
    /// broker that re-delivers stale assignments (tansu 0.6) a member may still hold a shard
    /// the group has already given to another one, until its assignment check notices (up
    /// to twice `assignment_check`); waiting this long keeps one owner per shard there.
    /// Kafka revokes before it reassigns: zero is right for it (with `assignment_check`
    /// `None`).
    pub takeover_grace: Duration,
}

impl KafkaMembershipConfig {
    pub fn new(brokers: &str, topic: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            session_timeout: Duration::from_secs(6),
            heartbeat_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            leave_timeout: Duration::from_secs(60),
            assignment_check: Some(Duration::from_secs(2)),
            takeover_grace: Duration::from_secs(5),
        }
    }
}

/// Shard membership through a Kafka consumer group. See the module docs.
#[derive(Debug)]
pub struct KafkaMembership {
    config: KafkaMembershipConfig,
}

impl KafkaMembership {
    /// No I/O: the brokers are contacted by [`ShardMembership::join`].
    pub fn new(brokers: &str, topic: &str) -> PortResult<Arc<Self>> {
        Self::with_config(KafkaMembershipConfig::new(brokers, topic))
    }

    pub fn with_config(config: KafkaMembershipConfig) -> PortResult<Arc<Self>> {
        if config.brokers.trim().is_empty() || config.topic.is_empty() {
            return Err(Error::Config("brokers and topic must not be empty".into()).into());
        }
        Ok(Arc::new(Self { config }))
    }
}

/// How often the membership thread polls (it wakes at once for rebalances).
const MEMBER_POLL: Duration = Duration::from_millis(100);

#[async_trait::async_trait]
impl ShardMembership for KafkaMembership {
    /// Joins the group; the handler is called on the membership's thread. Fails when the
    /// brokers cannot be reached (retryable) or the topic does not exist.
    async fn join(
        &self,
        group: &str,
        handler: AssignmentHandler,
    ) -> PortResult<Box<dyn MembershipGuard>> {
        Ok(Box::new(self.join_group(group, handler).await?))
    }
}

type MemberConsumer = BaseConsumer<MemberContext>;

/// What a member's consumers share (a member recreates its consumer to rejoin).
struct Member {
    group: String,
    topic: String,
    config: ClientConfig,
    handler: AssignmentHandler,
    /// The shards handed to the handler and not revoked since.
    owned: Mutex<BTreeSet<u32>>,
    /// Shards assigned but not handed over yet, and when they will be
    /// ([`KafkaMembershipConfig::takeover_grace`]).
    pending: Mutex<Vec<(Instant, BTreeSet<u32>)>>,
    takeover_grace: Duration,
    /// When `owned` last changed.
    changed_at: Mutex<Instant>,
    /// Set when the member leaves: assignments are no longer passed on.
    leaving: AtomicBool,
    /// Set when the handler panicked: the member leaves the group.
    failed: AtomicBool,
}

impl KafkaMembership {
    async fn join_group(&self, group: &str, handler: AssignmentHandler) -> Result<MemberGuard> {
        let c = &self.config;
        let mut cfg = base_config(&c.brokers, "fleetcmd-member");
        cfg.set("group.id", group)
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", ms(c.session_timeout))
            .set("heartbeat.interval.ms", ms(c.heartbeat_interval))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "latest")
            .set("enable.partition.eof", "false")
            // Assigned partitions are paused; should a fetch slip through, keep it tiny.
            .set("queued.min.messages", "1")
            .set("queued.max.messages.kbytes", "64")
            .set("fetch.message.max.bytes", "1024")
            .set("reconnect.backoff.ms", "50")
            .set("allow.auto.create.topics", "false");
        let member = Arc::new(Member {
            group: group.to_owned(),
            topic: c.topic.clone(),
            config: cfg,
            handler,
            owned: Mutex::new(BTreeSet::new()),
            pending: Mutex::new(Vec::new()),
            takeover_grace: c.takeover_grace,
            changed_at: Mutex::new(Instant::now()),
            leaving: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        });
        let consumer = member.new_consumer(false)?;

        // Fail fast on unreachable brokers or a missing topic (which would never assign).
        let topic = c.topic.clone();
        let timeout = c.request_timeout;
        let checked = consumer.clone();
        let partitions = tokio::task::spawn_blocking(move || -> Result<u32> {
            let metadata = checked
                .fetch_metadata(Some(&topic), timeout)
                .map_err(client(format!("fetching the metadata of {topic}")))?;
            match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    Ok(u32::try_from(t.partitions().len()).unwrap_or(u32::MAX))
                }
                other => Err(Error::Config(format!(
                    "topic {topic} does not exist ({:?}); KafkaLog::connect creates it",
                    other.and_then(|t| t.error()).map(RDKafkaErrorCode::from)
                ))),
            }
        })
        .await??;
        member.subscribe(&consumer)?;

        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let check = c.assignment_check.map(|interval| AssignmentCheck {
            interval,
            timeout: c.request_timeout,
            partitions,
            next: Instant::now() + interval,
            strikes: 0,
            strike_mark: None,
        });
        let thread = {
            let stop = stop.clone();
            let done = done.clone();
            std::thread::Builder::new()
                .name(format!("kafka-member-{group}"))
                .spawn(move || {
                    member.run(consumer, &stop, check);
                    *lock(&done.0) = true;
                    done.1.notify_all();
                })
                .map_err(|e| Error::Task(format!("spawning the membership thread: {e}")))?
        };
        Ok(MemberGuard {
            group: group.to_owned(),
            stop,
            done,
            leave_timeout: c.leave_timeout,
            thread: Some(thread),
        })
    }
}

/// The state of the stale-assignment check (see [`KafkaMembershipConfig::assignment_check`]).
struct AssignmentCheck {
    interval: Duration,
    timeout: Duration,
    partitions: u32,
    next: Instant,
    /// Consecutive checks that found the assignment stale, all since `strike_mark` (the
    /// assignment's last change).
    strikes: u32,
    strike_mark: Option<Instant>,
}

/// The shards of member `i` of `members` (sorted by id) under the range assignor.
fn range_share(partitions: u32, members: u32, i: u32) -> BTreeSet<u32> {
    let (per, extra) = (partitions / members, partitions % members);
    let start = i * per + i.min(extra);
    let len = per + u32::from(i < extra);
    (start..start + len).collect()
}

impl Member {
    fn new_consumer(self: &Arc<Self>, subscribe: bool) -> Result<Arc<MemberConsumer>> {
        let consumer: MemberConsumer = self
            .config
            .create_with_context(MemberContext(self.clone()))
            .map_err(client(format!("creating the member of {}", self.group)))?;
        let consumer = Arc::new(consumer);
        if subscribe {
            self.subscribe(&consumer)?;
        }
        Ok(consumer)
    }

    fn subscribe(&self, consumer: &MemberConsumer) -> Result<()> {
        *lock(&self.changed_at) = Instant::now();
        consumer
            .subscribe(&[self.topic.as_str()])
            .map_err(client(format!(
                "subscribing {} to {}",
                self.group, self.topic
            )))
    }

    fn call(&self, change: AssignmentChange) {
        tracing::info!(group = %self.group, ?change, "shard assignment change");
        *lock(&self.changed_at) = Instant::now();
        let handler = &self.handler;
        if catch_unwind(AssertUnwindSafe(|| handler(change))).is_err() {
            tracing::error!(group = %self.group, "the assignment handler panicked; leaving the group");
            self.failed.store(true, Ordering::Release);
        }
    }

    /// Hands the pending shards whose grace is over to the handler.
    fn hand_over_due(&self) {
        let now = Instant::now();
        let due: Vec<u32> = {
            let mut pending = lock(&self.pending);
            let mut due = Vec::new();
            pending.retain(|(at, shards)| {
                let ready = *at <= now;
                if ready {
                    due.extend(shards.iter().copied());
                }
                !ready
            });
            due
        };
        if due.is_empty() || self.leaving.load(Ordering::Acquire) {
            return;
        }
        lock(&self.owned).extend(due.iter().copied());
        self.call(AssignmentChange::Assigned(due));
    }

    /// The shards this member holds: handed over or pending.
    fn held(&self) -> BTreeSet<u32> {
        let mut held = lock(&self.owned).clone();
        for (_, shards) in lock(&self.pending).iter() {
            held.extend(shards.iter().copied());
        }
        held
    }

    fn revoke_all(&self) {
        lock(&self.pending).clear();
        let owned: Vec<u32> = std::mem::take(&mut *lock(&self.owned))
            .into_iter()
            .collect();
        if !owned.is_empty() {
            self.call(AssignmentChange::Revoked(owned));
        }
    }

    /// Polls until told to stop (or the handler panicked), then revokes everything and
    /// leaves. Rejoins with a new consumer (a new member id) when the check finds the
    /// assignment stale.
    fn run(
        self: &Arc<Self>,
        mut consumer: Arc<MemberConsumer>,
        stop: &AtomicBool,
        mut check: Option<AssignmentCheck>,
    ) {
        while !stop.load(Ordering::Acquire) && !self.failed.load(Ordering::Acquire) {
            match consumer.poll(MEMBER_POLL) {
                None | Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(group = %self.group, error = %e, "Kafka membership"),
            }
            self.hand_over_due();
            let Some(check) = check.as_mut() else {
                continue;
            };
            if !self.assignment_is_stale(&consumer, check) {
                continue;
            }
            tracing::warn!(
                group = %self.group,
                owned = ?*lock(&self.owned),
                "the shards of this member are not its share of the group's members (a broker \
                 that re-delivers a stale assignment, like tansu 0.6); rejoining"
            );
            // Revoke before the group learns we leave, as when the guard is dropped.
            self.revoke_all();
            drop(consumer);
            consumer = loop {
                match self.new_consumer(true) {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::error!(group = %self.group, error = %e, "cannot rejoin; retrying");
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            };
        }
        // Revoke before the group learns we leave, so nobody else is assigned our shards while
        // the handler still serves them; later rebalance callbacks (during close) are ignored.
        self.leaving.store(true, Ordering::Release);
        self.revoke_all();
        // Dropping the last reference closes the consumer: it leaves the group.
        drop(consumer);
        tracing::info!(group = %self.group, "left the group");
    }

    /// True when the check is due and found the assignment stale a second time in a row with
    /// no assignment change in between, the group being stable all along.
    fn assignment_is_stale(&self, consumer: &MemberConsumer, check: &mut AssignmentCheck) -> bool {
        let now = Instant::now();
        if now < check.next {
            return false;
        }
        check.next = now + check.interval;
        let changed_at = *lock(&self.changed_at);
        let stale = changed_at.elapsed() >= check.interval && self.share_mismatch(consumer, check);
        if !stale {
            check.strikes = 0;
            return false;
        }
        if check.strike_mark != Some(changed_at) {
            check.strike_mark = Some(changed_at);
            check.strikes = 0;
        }
        check.strikes += 1;
        if check.strikes < 2 {
            return false;
        }
        check.strikes = 0;
        check.strike_mark = None;
        true
    }

    /// Whether the group is stable and this member's shards are none of the range shares of
    /// its current members (errors count as "no").
    fn share_mismatch(&self, consumer: &MemberConsumer, check: &AssignmentCheck) -> bool {
        let groups = match consumer.fetch_group_list(Some(&self.group), check.timeout) {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(group = %self.group, error = %e, "describing the group");
                return false;
            }
        };
        let Some(info) = groups.groups().iter().find(|g| g.name() == self.group) else {
            return false;
        };
        let members = u32::try_from(info.members().len()).unwrap_or(0);
        if info.state() != "Stable" || members == 0 || check.partitions == 0 {
            return false;
        }
        let held = self.held();
        !(0..members).any(|i| range_share(check.partitions, members, i) == held)
    }
}

/// The consumer context of a member: rebalance callbacks reach its handler.
struct MemberContext(Arc<Member>);

fn partitions_of(tpl: &TopicPartitionList) -> Vec<u32> {
    let mut v: Vec<u32> = tpl
        .elements()
        .iter()
        .filter_map(|e| u32::try_from(e.partition()).ok())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl ClientContext for MemberContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        forward_log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", group = %self.0.group, %error, "{reason}");
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let m = &self.0;
        match rebalance {
            Rebalance::Revoke(tpl) => {
                if consumer.assignment_lost() {
                    tracing::warn!(group = %m.group, "assignment lost (session timed out)");
                }
                let all = partitions_of(tpl);
                for (_, shards) in lock(&m.pending).iter_mut() {
                    shards.retain(|p| !all.contains(p));
                }
                lock(&m.pending).retain(|(_, shards)| !shards.is_empty());
                let revoked: Vec<u32> = {
                    let mut owned = lock(&m.owned);
                    partitions_of(tpl)
                        .into_iter()
                        .filter(|p| owned.remove(p))
                        .collect()
                };
                if !revoked.is_empty() {
                    // Blocks the rebalance (and so every other member's assignment) until the
                    // handler has stopped serving these shards.
                    m.call(AssignmentChange::Revoked(revoked));
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(group = %m.group, error = %e, "rebalance"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let m = &self.0;
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        if tpl.count() > 0 {
            if let Err(e) = consumer.pause(tpl) {
                tracing::warn!(group = %m.group, error = %e, "cannot pause the assigned partitions");
            }
            // Offsets are never used (the partitions are never consumed), but a group with a
            // commit is one tansu lists, which the assignment check needs to describe it.
            let mut commit = TopicPartitionList::new();
            for p in partitions_of(tpl) {
                let _ = commit.add_partition_offset(&m.topic, partition_i32(p), Offset::Offset(0));
            }
            if let Err(e) = consumer.commit(&commit, CommitMode::Async) {
                tracing::debug!(group = %m.group, error = %e, "committing the assignment");
            }
        }
        *lock(&m.changed_at) = Instant::now();
        if m.leaving.load(Ordering::Acquire) {
            return;
        }
        let held = m.held();
        let assigned: BTreeSet<u32> = partitions_of(tpl)
            .into_iter()
            .filter(|p| !held.contains(p))
            .collect();
        if assigned.is_empty() {
            return;
        }
        if m.takeover_grace.is_zero() {
            lock(&m.owned).extend(assigned.iter().copied());
            m.call(AssignmentChange::Assigned(assigned.into_iter().collect()));
        } else {
            lock(&m.pending).push((Instant::now() + m.takeover_grace, assigned));
        }
    }
}

/// Membership in one group; dropping it revokes every shard (the handler returns first) and
/// leaves the group. Dropping blocks until then (at most `leave_timeout`); on a multi-thread
/// tokio runtime the worker is handed over with `block_in_place`.
struct MemberGuard {
    group: String,
    stop: Arc<AtomicBool>,
    /// Set by the membership thread once it left the group.
    done: Arc<(Mutex<bool>, Condvar)>,
    leave_timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

impl MembershipGuard for MemberGuard {}

impl MemberGuard {
    fn wait_left(&self) -> bool {
        let (flag, cv) = &*self.done;
        let guard = lock(flag);
        let (guard, _) = cv
            .wait_timeout_while(guard, self.leave_timeout, |left| !*left)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }
}

impl Drop for MemberGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let left = if on_worker {
            tokio::task::block_in_place(|| self.wait_left())
        } else {
            self.wait_left()
        };
        if left {
            if let Some(t) = self.thread.take()
                && t.join().is_err()
            {
                tracing::error!(group = %self.group, "the membership thread panicked");
            }
        } else {
            tracing::error!(group = %self.group, timeout = ?self.leave_timeout,
                "leaving the group did not finish in time; detaching");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_shares_cover_every_partition_once() {
        for partitions in 1..10 {
            for members in 1..12 {
                let mut seen = Vec::new();
                for i in 0..members {
                    seen.extend(range_share(partitions, members, i));
                }
                assert_eq!(
                    seen,
                    (0..partitions).collect::<Vec<_>>(),
                    "{partitions}/{members}"
                );
            }
        }
        assert_eq!(range_share(4, 3, 0), BTreeSet::from([0, 1]));
        assert_eq!(range_share(4, 3, 2), BTreeSet::from([3]));
        assert!(range_share(2, 3, 2).is_empty());
    }

    #[test]
    fn errors_say_whether_a_retry_may_help() {
        let down = Error::Client {
            op: "appending".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown),
        };
        assert!(matches!(PortError::from(down), PortError::Unavailable(_)));
        let late = Error::Client {
            op: "appending".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        };
        assert!(matches!(PortError::from(late), PortError::Timeout(_)));
        let count = Error::PartitionCount {
            topic: "t".into(),
            expected: 4,
            actual: 3,
        };
        assert!(matches!(PortError::from(count), PortError::Backend(m) if m.contains('4')));
        let gap = Error::Corrupt {
            partition: 1,
            detail: "gap".into(),
        };
        assert!(matches!(PortError::from(gap), PortError::Corrupt(_)));
        let too_big = Error::Client {
            op: "appending".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        };
        assert!(!too_big.is_retryable());
        assert!(
            retryable(too_big).is_retryable(),
            "an append's unknown outcome is retryable"
        );
    }
}
