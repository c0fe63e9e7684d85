//! The Kafka adapters (feature `kafka`): [`KafkaLog`], the cluster [`EventLog`], and
//! [`KafkaMembership`], the [`ShardMembership`] that spreads shards (= partitions of the log
//! topic) over the live members of a consumer group.
//!
//! Both use rdkafka with its bundled librdkafka; every client sets `socket.nagle.disable`.
//!
//! # The event log
//! One topic, one Kafka partition per log partition. Offsets are Kafka's own: without
//! transactions or compaction they start at 0 and are contiguous, as the port requires
//! (checked by the conformance suite against the broker, and again on every read).
//!
//! - **Append** produces each record keyed, to the explicit partition, with `acks=all` and the
//!   idempotent producer, and awaits every delivery report. The records of one call are
//!   enqueued under a per-partition lock, so concurrent appends of this process never
//!   interleave; the offsets of the delivery reports are checked to be contiguous. Kafka has no
//!   atomic multi-record append without transactions: **a failed append may have written a
//!   prefix of its records** (or all of them, when only the acknowledgement was lost). Every
//!   failure is therefore reported as retryable, and callers must treat the log as the truth
//!   afterwards (the shard owner rebuilds its state from the log after a failed append).
//! - **Read** goes through one consumer shared by all partitions, with manual assignment and
//!   one split queue per partition. A partition is assigned on its first read and stays
//!   assigned; the reader remembers where its queue stands and only seeks when a read asks for
//!   another offset, so reading a partition in a loop costs no round trip while records are
//!   buffered. Before blocking for a record the reader makes sure one exists (the end offset it
//!   knows, else a watermark request), so a read at the end returns at once with nothing.
//!   Records up to the high watermark are visible; with `acks=all` that is every record the
//!   broker acknowledged, which includes records of an append whose acknowledgement was lost.
//! - **wait_for_records** positions the same per-partition fetchers at the waited offsets and
//!   sleeps on a per-partition [`Notify`] woken by librdkafka when a partition queue becomes
//!   non-empty. The wake-up latency is the fetch latency: the broker answers a pending fetch
//!   as soon as data arrives (long poll), bounded by `fetch.wait.max.ms`
//!   ([`KafkaLogConfig::fetch_wait_max`], 10 ms by default, in case a broker does not answer
//!   early).
//!
//! Memory: each read partition keeps at most `queued.max.messages.kbytes` (4 MiB) of
//! prefetched records in librdkafka plus what a read asked for.
//!
//! # Shard membership
//! A consumer group (`group.id` = the group name) subscribed to the log topic with the eager
//! `range` assignor. Revocations reach the [`AssignmentHandler`] from `pre_rebalance`, before
//! the member rejoins, so the handler returns before any other member is assigned the shard;
//! assignments reach it from `post_rebalance`. The consumer is polled on a dedicated thread and
//! pauses every assigned partition: it never fetches records (the owners read through
//! [`KafkaLog`]). A member that dies loses its shards after `session.timeout.ms` (6 s).

use std::collections::{BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
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
    /// How long metadata, watermark and admin requests, and a read of a record known to exist,
    /// may take.
    pub request_timeout: Duration,
    /// Upper bound of the broker's long poll on fetches (`fetch.wait.max.ms`); the wake-up
    /// latency of `wait_for_records` when a broker does not answer a pending fetch early.
    pub fetch_wait_max: Duration,
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
            fetch_wait_max: Duration::from_millis(10),
        }
    }
}

/// Most records a waiter buffers while looking for a record past a far offset; older buffered
/// records are dropped (a later read fetches them again).
const WAIT_BUFFER_CAP: usize = 4096;
/// How often the reader's main queue (errors, statistics) is served.
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
    /// The partition's reader state; created on the first read or wait.
    fetch: Mutex<Option<Fetch>>,
    /// A lower bound of the partition's end offset, from delivery reports, watermarks and
    /// fetched records. Only grows.
    end: AtomicU64,
    /// Woken when the partition's queue becomes non-empty, when `end` grows, and when a
    /// holder of `fetch` releases it while a waiter asked for it (`pump_wanted`).
    notify: Arc<Notify>,
    /// Set by a waiter that found `fetch` taken: the holder wakes the waiters on release,
    /// since the queue may hold records whose non-empty wake-up already fired.
    pump_wanted: AtomicBool,
}

/// A partition's split queue and the records taken from it but not handed out yet.
struct Fetch {
    queue: PartitionQueue<TracingContext>,
    buf: Buffered,
}

/// Records taken off a partition queue, contiguous from `next`.
struct Buffered {
    /// Offset of `buffer[0]`; when the buffer is empty, the offset the queue delivers next.
    next: u64,
    buffer: VecDeque<LogRecord>,
}

impl Buffered {
    /// The offset the queue delivers next.
    fn fetch_pos(&self) -> u64 {
        self.next + self.buffer.len() as u64
    }

    fn covers(&self, offset: u64) -> bool {
        offset >= self.next && offset < self.fetch_pos()
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
        // Never jump: reads only seek below the high watermark, anything else is an error.
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_uncommitted")
        .set("fetch.wait.max.ms", ms(config.fetch_wait_max))
        .set("fetch.min.bytes", "1")
        .set("fetch.error.backoff.ms", "50")
        // Per partition, since every partition has its own queue.
        .set("queued.min.messages", "1000")
        .set("queued.max.messages.kbytes", "4096")
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
    );
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

    /// The high watermark of `partition` (a round trip to its leader).
    fn fetch_end(&self, partition: u32) -> Result<u64> {
        let (_, high) = self
            .reader
            .fetch_watermarks(
                &self.config.topic,
                partition_i32(partition),
                self.config.request_timeout,
            )
            .map_err(client(format!(
                "fetching the end of {}/{partition}",
                self.config.topic
            )))?;
        let high = u64::try_from(high).map_err(|_| Error::Corrupt {
            partition,
            detail: format!("negative high watermark {high}"),
        })?;
        self.raise_end(partition, high);
        Ok(high)
    }

    /// Makes the partition's queue deliver from `from` next, creating it on first use.
    fn position(&self, partition: u32, fetch: &mut Option<Fetch>, from: u64) -> Result<()> {
        let Some(f) = fetch.as_mut() else {
            *fetch = Some(self.open_fetch(partition, from)?);
            return Ok(());
        };
        let b = &mut f.buf;
        if b.covers(from) {
            let skip = (from - b.next) as usize;
            b.buffer.drain(..skip);
            b.next = from;
            return Ok(());
        }
        if from != b.fetch_pos() {
            self.seek(partition, from)?;
        }
        b.buffer.clear();
        b.next = from;
        Ok(())
    }

    fn open_fetch(&self, partition: u32, from: u64) -> Result<Fetch> {
        let topic = &self.config.topic;
        // Split before assigning: the queue then never forwards to the consumer's main queue.
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
            },
        })
    }

    fn seek(&self, partition: u32, to: u64) -> Result<()> {
        let topic = &self.config.topic;
        let p = partition_i32(partition);
        match self
            .reader
            .seek(topic, p, offset(to)?, self.config.request_timeout)
        {
            Ok(()) => Ok(()),
            Err(e) => {
                // A fetcher that has not started yet cannot seek: assign it again instead.
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

    /// Takes one message off the queue into the buffer (stale ones from before a seek are
    /// skipped; a gap is an error).
    fn accept(
        &self,
        partition: u32,
        b: &mut Buffered,
        msg: KafkaResult<BorrowedMessage<'_>>,
    ) -> Result<()> {
        let msg = msg.map_err(client(format!("reading {}/{partition}", self.config.topic)))?;
        let offset = u64::try_from(msg.offset()).map_err(|_| Error::Corrupt {
            partition,
            detail: format!("negative offset {}", msg.offset()),
        })?;
        let expected = b.fetch_pos();
        if offset < expected {
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
        b.buffer.push_back(LogRecord {
            offset,
            key,
            payload,
        });
        self.raise_end(partition, offset + 1);
        Ok(())
    }

    /// Moves what the queue holds into the buffer, without blocking, until it holds `limit`.
    fn pump(&self, partition: u32, f: &mut Fetch, limit: usize) -> Result<()> {
        while f.buf.buffer.len() < limit {
            let Some(msg) = f.queue.poll(Duration::ZERO) else {
                return Ok(());
            };
            self.accept(partition, &mut f.buf, msg)?;
        }
        Ok(())
    }

    fn read_blocking(&self, partition: u32, from: u64, max: usize) -> Result<Vec<LogRecord>> {
        let mut fetch = self.lock_fetch(partition);
        let buffered = fetch.as_ref().is_some_and(|f| f.buf.covers(from));
        if !buffered && from >= self.known_end(partition) && from >= self.fetch_end(partition)? {
            return Ok(Vec::new());
        }
        self.position(partition, &mut fetch, from)?;
        let Some(f) = fetch.as_mut() else {
            return Ok(Vec::new());
        };
        self.pump(partition, f, max)?;
        // A record at `from` exists (below the end): wait for the fetcher to bring it.
        let deadline = Instant::now() + self.config.request_timeout;
        while f.buf.buffer.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(format!(
                    "reading {}/{partition} at {from} (end {})",
                    self.config.topic,
                    self.known_end(partition)
                )));
            }
            if let Some(msg) = f.queue.poll(left) {
                self.accept(partition, &mut f.buf, msg)?;
                self.pump(partition, f, max)?;
            }
        }
        let b = &mut f.buf;
        let n = max.min(b.buffer.len());
        b.next += n as u64;
        Ok(b.buffer.drain(..n).collect())
    }

    /// Prepares a wait at `(partition, offset)`: true if a record at or past it exists;
    /// otherwise the partition's fetcher is left at `offset` (or at the end, when `offset`
    /// is past it), so its queue wakes the slot when records arrive.
    fn watch_blocking(&self, partition: u32, offset: u64) -> Result<bool> {
        if self.known_end(partition) > offset {
            return Ok(true);
        }
        let mut fetch = self.lock_fetch(partition);
        if fetch.as_ref().is_some_and(|f| f.buf.fetch_pos() == offset) {
            return Ok(false);
        }
        let end = self.fetch_end(partition)?;
        if end > offset {
            return Ok(true);
        }
        let at = match fetch.as_ref().map(|f| f.buf.fetch_pos()) {
            // Already fetching between the end and the offset: keep its buffer.
            Some(pos) if pos >= end && pos <= offset => pos,
            _ => end,
        };
        self.position(partition, &mut fetch, at)?;
        Ok(false)
    }

    /// Drains the partition's queue into its buffer without blocking (skipped when another
    /// task holds the partition: it wakes the waiters when it releases it).
    fn pump_for_wait(&self, partition: u32) -> Result<()> {
        let Some(mut fetch) = self.try_lock_fetch(partition) else {
            return Ok(());
        };
        let Some(f) = fetch.as_mut() else {
            return Ok(());
        };
        loop {
            let Some(msg) = f.queue.poll(Duration::ZERO) else {
                return Ok(());
            };
            self.accept(partition, &mut f.buf, msg)?;
            if f.buf.buffer.len() > WAIT_BUFFER_CAP {
                f.buf.buffer.pop_front();
                f.buf.next += 1;
            }
        }
    }

    /// Serves the reader's main queue (errors, statistics): partition messages go to their
    /// own queues, so nothing else arrives here.
    fn serve_main_queue(&self) {
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

        let mut offsets = Vec::with_capacity(deliveries.len());
        let mut failure = None;
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

    async fn end_offset(&self, partition: u32) -> PortResult<u64> {
        self.inner.check_partition(partition)?;
        Ok(blocking(&self.inner, move |inner| inner.fetch_end(partition)).await?)
    }

    /// Wakes within the fetch latency of a record landing (a few ms against a local broker;
    /// at most `fetch_wait_max` plus a round trip when the broker does not answer a pending
    /// fetch early).
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
            for &(p, _) in positions {
                inner.pump_for_wait(p)?;
            }
            if satisfied() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, select_all(woken))
                .await
                .is_err()
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
    /// How long `join` waits for the topic's metadata.
    pub request_timeout: Duration,
    /// How long dropping the guard waits for the revocation and the group leave.
    pub leave_timeout: Duration,
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
        let context = MemberContext {
            group: group.to_owned(),
            handler,
            owned: Mutex::new(BTreeSet::new()),
            leaving: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        };
        let consumer: BaseConsumer<MemberContext> = cfg
            .create_with_context(context)
            .map_err(client(format!("creating the member of {group}")))?;
        let consumer = Arc::new(consumer);

        // Fail fast on unreachable brokers or a missing topic (which would never assign).
        let topic = c.topic.clone();
        let timeout = c.request_timeout;
        let checked = consumer.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let metadata = checked
                .fetch_metadata(Some(&topic), timeout)
                .map_err(client(format!("fetching the metadata of {topic}")))?;
            match metadata.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                other => Err(Error::Config(format!(
                    "topic {topic} does not exist ({:?}); KafkaLog::connect creates it",
                    other.and_then(|t| t.error()).map(RDKafkaErrorCode::from)
                ))),
            }
        })
        .await??;

        consumer
            .subscribe(&[c.topic.as_str()])
            .map_err(client(format!("subscribing {group} to {}", c.topic)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = stop.clone();
            let done = done.clone();
            std::thread::Builder::new()
                .name(format!("kafka-member-{group}"))
                .spawn(move || {
                    run_member(consumer, &stop);
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

/// Polls until told to stop (or the handler panicked), then revokes everything and leaves.
fn run_member(consumer: Arc<BaseConsumer<MemberContext>>, stop: &AtomicBool) {
    let ctx = consumer.context().clone();
    while !stop.load(Ordering::Acquire) && !ctx.failed.load(Ordering::Acquire) {
        match consumer.poll(MEMBER_POLL) {
            None | Some(Ok(_)) => {}
            Some(Err(e)) => tracing::warn!(group = %ctx.group, error = %e, "Kafka membership"),
        }
    }
    // Revoke before the group learns we leave, so nobody else is assigned our shards while
    // the handler still serves them; later rebalance callbacks (during close) are ignored.
    ctx.leaving.store(true, Ordering::Release);
    let owned: Vec<u32> = std::mem::take(&mut *lock(&ctx.owned)).into_iter().collect();
    if !owned.is_empty() {
        ctx.call(AssignmentChange::Revoked(owned));
    }
    // Dropping the last reference closes the consumer: it leaves the group.
    drop(consumer);
    tracing::info!(group = %ctx.group, "left the group");
}

struct MemberContext {
    group: String,
    handler: AssignmentHandler,
    /// The shards handed to the handler and not revoked since.
    owned: Mutex<BTreeSet<u32>>,
    /// Set when the member leaves: assignments are no longer passed on.
    leaving: AtomicBool,
    /// Set when the handler panicked: the member leaves the group.
    failed: AtomicBool,
}

impl MemberContext {
    fn call(&self, change: AssignmentChange) {
        tracing::info!(group = %self.group, ?change, "shard assignment change");
        let handler = &self.handler;
        if catch_unwind(AssertUnwindSafe(|| handler(change))).is_err() {
            tracing::error!(group = %self.group, "the assignment handler panicked; leaving the group");
            self.failed.store(true, Ordering::Release);
        }
    }
}

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
        tracing::warn!(target: "librdkafka", group = %self.group, %error, "{reason}");
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                if consumer.assignment_lost() {
                    tracing::warn!(group = %self.group, "assignment lost (session timed out)");
                }
                let revoked: Vec<u32> = {
                    let mut owned = lock(&self.owned);
                    partitions_of(tpl)
                        .into_iter()
                        .filter(|p| owned.remove(p))
                        .collect()
                };
                if !revoked.is_empty() {
                    // Blocks the rebalance (and so every other member's assignment) until the
                    // handler has stopped serving these shards.
                    self.call(AssignmentChange::Revoked(revoked));
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(group = %self.group, error = %e, "rebalance"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        if tpl.count() > 0
            && let Err(e) = consumer.pause(tpl)
        {
            tracing::warn!(group = %self.group, error = %e, "cannot pause the assigned partitions");
        }
        if self.leaving.load(Ordering::Acquire) {
            return;
        }
        let assigned: Vec<u32> = {
            let mut owned = lock(&self.owned);
            partitions_of(tpl)
                .into_iter()
                .filter(|p| owned.insert(*p))
                .collect()
        };
        if !assigned.is_empty() {
            self.call(AssignmentChange::Assigned(assigned));
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
