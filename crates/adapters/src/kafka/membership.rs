//! [`KafkaMembership`]: shard membership through a consumer group (`group.id` = the group
//! name) subscribed to the log topic with the `cooperative-sticky` assignor (incremental
//! rebalancing: only the shards that move are revoked; `range` under [`KafkaCompat::Tansu`]).
//!
//! Revocations reach the [`AssignmentHandler`] from `pre_rebalance`, before the member
//! rejoins, so the handler returns before any other member is assigned the shard; assignments
//! reach it from `post_rebalance`. With the cooperative protocol both carry only the
//! partitions that change. The consumer is polled on a dedicated thread and pauses
//! every assigned partition: it never fetches records (the owners read through
//! [`super::KafkaLog`]). A member that dies loses its shards after `session.timeout.ms`.
//!
//! Under [`KafkaCompat::Tansu`] a member also checks its assignment against the group's
//! members ([`AssignmentCheck`]), hands newly assigned shards over after a grace, and commits
//! offset 0 for them; see [`KafkaCompat`] for why.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fleetcmd_domain::ports::{
    AssignmentChange, AssignmentHandler, MembershipGuard, PortResult, ShardMembership,
};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::KafkaCompat;
use super::client::{base_config, forward_log, lock, ms, partition_i32};
use super::error::{Error, Result, client};

/// Settings of a [`KafkaMembership`]. [`KafkaMembershipConfig::new`] gives working defaults
/// for Apache Kafka.
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
    /// The broker's quirks to work around: [`KafkaCompat::None`] (Apache Kafka) polls no
    /// group state and hands shards over at once; `Tansu` turns on the assignment check and
    /// the takeover grace (see [`KafkaCompat`]).
    pub compat: KafkaCompat,
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
            compat: KafkaCompat::None,
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
    /// ([`KafkaCompat::takeover_grace`]).
    pending: Mutex<Vec<(Instant, BTreeSet<u32>)>>,
    takeover_grace: Duration,
    /// Commit offset 0 for assigned partitions ([`KafkaCompat::commits_assignments`]).
    commit_assignments: bool,
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
            .set(
                "partition.assignment.strategy",
                c.compat.assignment_strategy(),
            )
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
            takeover_grace: c.compat.takeover_grace(),
            commit_assignments: c.compat.commits_assignments(),
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
        let check = c.compat.assignment_check().map(|interval| AssignmentCheck {
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

/// The state of the stale-assignment check ([`KafkaCompat::assignment_check`]): only on
/// brokers that re-deliver a stale assignment.
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
        if tpl.count() > 0
            && let Err(e) = consumer.pause(tpl)
        {
            tracing::warn!(group = %m.group, error = %e, "cannot pause the assigned partitions");
        }
        if tpl.count() > 0 && m.commit_assignments {
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
}
