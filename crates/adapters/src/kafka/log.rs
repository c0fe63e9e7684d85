//! [`KafkaLog`]: its settings, connecting (producer, reader, topic), and the [`EventLog`]
//! methods. How reads find their records is in `reader`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_domain::ports::{EventLog, LogRecord, PortError, PortResult};
use futures::future::select_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use tokio::sync::Notify;

use super::KafkaCompat;
use super::client::{Reader, TracingContext, base_config, ms, partition_i32};
use super::error::{Error, Result, client, retryable};
use super::reader::{Slot, Waiting};

/// Settings of a [`KafkaLog`]. [`KafkaLogConfig::new`] gives working defaults for Apache Kafka.
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
    /// The broker's quirks to work around ([`KafkaCompat::None`] for Apache Kafka; `Tansu`
    /// restarts fetches positioned inside a record batch, see
    /// [`KafkaCompat::seek_retry`]).
    pub compat: KafkaCompat,
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
            fetch_wait_max: KafkaCompat::None.default_fetch_wait(),
            idle_fetch: Duration::from_secs(30),
            compat: KafkaCompat::None,
        }
    }
}

/// The event log on a Kafka topic. See the module docs for the guarantees.
pub struct KafkaLog {
    inner: Arc<Inner>,
    /// Serves the reader's main queue until the log is dropped.
    main_poller: Option<JoinHandle<()>>,
}

pub(super) struct Inner {
    pub(super) config: KafkaLogConfig,
    /// Replaced when librdkafka raises a fatal (producer-fencing) error.
    producer: RwLock<Arc<FutureProducer<TracingContext>>>,
    pub(super) reader: Arc<Reader>,
    pub(super) slots: Vec<Slot>,
    pub(super) stop: AtomicBool,
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
                    // A new topic's partitions get their leaders a moment after it exists;
                    // until then offsets cannot be listed (NotLeaderForPartition).
                    let leaderless = t
                        .partitions()
                        .iter()
                        .find(|p| p.leader() < 0 || p.error().is_some());
                    match leaderless {
                        None => return Ok(()),
                        Some(p) => Some(
                            p.error()
                                .map(RDKafkaErrorCode::from)
                                .unwrap_or(RDKafkaErrorCode::LeaderNotAvailable),
                        ),
                    }
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
    pub(super) fn check_partition(&self, partition: u32) -> Result<()> {
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

    pub(super) fn slot(&self, partition: u32) -> &Slot {
        &self.slots[partition as usize]
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
