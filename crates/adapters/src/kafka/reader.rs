//! How [`super::KafkaLog`] reads: one consumer shared by all partitions, with manual
//! assignment and one split queue per partition, created on the partition's first read or
//! wait.
//!
//! The reader remembers where each queue stands ([`Buffered`]) and only seeks when a read asks
//! for another offset, so reading a partition in a loop costs no request while records are
//! prefetched. The end of a partition comes from librdkafka's end-of-partition events (the high
//! watermark of fetch responses): a read at the end returns nothing at once, as of the fetch's
//! last answer. Waiters sleep on a per-partition [`Notify`] that librdkafka wakes when the
//! queue becomes non-empty. A partition nobody used for `idle_fetch` stops being fetched.
//!
//! Under [`KafkaCompat::Tansu`](super::KafkaCompat::Tansu) a fetch positioned inside a record
//! batch is restarted further back when it brings a gap or nothing within `seek_retry`
//! ([`Inner::back_off`]); on Apache Kafka such a gap is an error.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_domain::ports::LogRecord;
use rdkafka::consumer::Consumer as _;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::topic_partition_list::TopicPartitionList;
use tokio::sync::Notify;

use super::client::{KafkaResult, TracingContext, lock, offset, partition_i32};
use super::error::{Error, Result, client};
use super::log::Inner;

/// Most records a waiter buffers while looking for a record past a far offset; older buffered
/// records are dropped (a later read fetches them again).
const WAIT_BUFFER_CAP: usize = 4096;
/// How often the reader's main queue (errors, statistics) is served and idle fetches are
/// stopped.
const MAIN_QUEUE_POLL: Duration = Duration::from_millis(200);

/// Per partition.
pub(super) struct Slot {
    /// Serializes the enqueueing of one append's records, so they are contiguous.
    pub(super) append: tokio::sync::Mutex<()>,
    /// The partition's fetch; created by the first read or wait, dropped when idle.
    pub(super) fetch: Mutex<Option<Fetch>>,
    /// A lower bound of the partition's end offset, from delivery reports, fetched records and
    /// end-of-partition events. Only grows.
    pub(super) end: AtomicU64,
    /// Woken when the partition's queue becomes non-empty, when `end` grows, and when a
    /// holder of `fetch` releases it while a waiter asked for it (`pump_wanted`).
    pub(super) notify: Arc<Notify>,
    /// Set by a waiter that found `fetch` taken: the holder wakes the waiters on release,
    /// since the queue may hold records whose non-empty wake-up already fired.
    pub(super) pump_wanted: AtomicBool,
    /// Tasks in `wait_for_records` on this partition (its fetch is not idle).
    pub(super) waiters: AtomicUsize,
}

/// A partition's split queue, fetching from where the reader stands.
pub(super) struct Fetch {
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
pub(super) struct Waiting<'a>(&'a Slot);

impl<'a> Waiting<'a> {
    pub(super) fn new(slot: &'a Slot) -> Self {
        slot.waiters.fetch_add(1, Ordering::AcqRel);
        Self(slot)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    /// Records that `partition` holds records below `end`; wakes waiters when it grows.
    pub(super) fn raise_end(&self, partition: u32, end: u64) {
        let slot = self.slot(partition);
        if slot.end.fetch_max(end, Ordering::AcqRel) < end {
            slot.notify.notify_waiters();
        }
    }

    pub(super) fn known_end(&self, partition: u32) -> u64 {
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

    /// The end offset the broker lists (ListOffsets): exact on Kafka, but only a lower bound
    /// on tansu 0.6, which answers the base offset of the newest record batch plus one.
    fn listed_end(&self, partition: u32) -> Result<u64> {
        // A partition whose leadership is still moving (a topic created a moment ago, a
        // broker restarting) answers NotLeader or LeaderNotAvailable for a short while:
        // retried here, within the request timeout, instead of failing the caller's read.
        let deadline = Instant::now() + self.config.request_timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let listed = self
                .reader
                .fetch_watermarks(
                    &self.config.topic,
                    partition_i32(partition),
                    self.config.request_timeout,
                )
                .map_err(client(format!(
                    "listing the end of {}/{partition}",
                    self.config.topic
                )));
            match listed {
                Ok((_, high)) => return Ok(u64::try_from(high).unwrap_or(0)),
                Err(e) if e.is_leadership_change() && Instant::now() + backoff < deadline => {
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
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
        if offset > expected && c.seeking.is_some() && self.config.compat.seek_retry().is_some() {
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
    /// nothing yet; returns when to check again while it is still positioning. Only for
    /// brokers that skip batches a fetch starts inside of (`KafkaCompat::seek_retry`): on
    /// Kafka a positioned fetch always brings a record or the end.
    fn check_seeking(&self, partition: u32, c: &mut Buffered) -> Result<Option<Instant>> {
        let (Some(s), Some(seek_retry)) = (c.seeking, self.config.compat.seek_retry()) else {
            return Ok(None);
        };
        let retry_at = s.since + seek_retry;
        if Instant::now() < retry_at {
            return Ok(Some(retry_at));
        }
        self.back_off(partition, c)?;
        Ok(Some(Instant::now() + seek_retry))
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
        // Records known to exist (our own acknowledged appends, an end seen earlier) that the
        // queue has not delivered yet: a read returns them too rather than a short page, so a
        // reader right after an append sees all of it. librdkafka may deliver one produce
        // request's batches in separate fetch responses.
        while f.buf.buffer.len() < limit && self.known_end(partition) > f.buf.fetch_pos() {
            if !self.next_event(partition, f, deadline)? {
                break;
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

    pub(super) fn read_blocking(
        &self,
        partition: u32,
        from: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>> {
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

    pub(super) fn end_blocking(&self, partition: u32) -> Result<u64> {
        self.with_fetch(partition, |fetch| self.probe_end(partition, fetch))
    }

    /// Prepares a wait at `(partition, offset)`: true if a record at or past it is known;
    /// otherwise makes sure a fetch runs at or below `offset` (never past the known end), whose
    /// queue wakes the slot when records arrive. No request to the broker.
    pub(super) fn watch_blocking(&self, partition: u32, offset: u64) -> Result<bool> {
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
    pub(super) fn pump_for_wait(&self, partition: u32) -> Result<Option<Instant>> {
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
    pub(super) fn serve_main_queue(&self) {
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
