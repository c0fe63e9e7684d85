//! Ports: the narrow traits the services use for I/O. Each has an embedded adapter (one
//! process, no servers) and a cluster adapter, and every adapter of a port passes the same
//! conformance suite (`fleetcmd_adapters::conformance`).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::ids::{CommandId, ExecutionId, Target};
use crate::model::{Command, Execution, ExecutionStatus, TimestampMs};

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// An infrastructure failure. Adapters say whether retrying may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The backend cannot be reached or is not ready (retryable).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The operation did not finish in time (retryable; the outcome is unknown).
    #[error("timed out: {0}")]
    Timeout(String),
    /// A request found nobody listening on its subject (retryable: an owner may appear).
    #[error("no responder for {0}")]
    NoResponders(String),
    /// Stored data could not be decoded (not retryable).
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The backend refused the operation (not retryable: a bug or a misconfiguration).
    #[error("backend error: {0}")]
    Backend(String),
    /// A page token that this listing cannot decode, or one issued for another listing
    /// (the caller's mistake, not the backend's).
    #[error("invalid next_token: {0}")]
    InvalidPageToken(String),
}

impl PortError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Timeout(_) | Self::NoResponders(_)
        )
    }
}

pub type PortResult<T> = Result<T, PortError>;

/// Wall-clock time, injected so the domain and tests control it.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> TimestampMs;
}

/// One record of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub offset: u64,
    pub key: String,
    pub payload: Bytes,
}

/// The event log: partitioned, append-only, the source of truth.
///
/// Contract:
/// - The partition count is fixed for the life of the log.
/// - Offsets in a partition start at 0 and are contiguous.
/// - `append` is ordered: when it returns `Ok(first)`, all records are durable, readable, and
///   hold offsets `first..first + n` in the order given. On `Err` none of them may be assumed
///   written — and, on engines without transactions (Kafka here), a prefix of them may have
///   been: a writer that gets an error rebuilds its state from the log before going on, and
///   events carry ids and sequence numbers so every consumer stays idempotent.
/// - The log is never trimmed while it is the source of truth (Kafka topics are created with
///   retention off).
/// - Reads never return a record that was not acknowledged by `append`, and return records
///   in offset order.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    fn partitions(&self) -> u32;

    /// Appends `(key, payload)` records to `partition`; returns the offset of the first.
    async fn append(&self, partition: u32, records: Vec<(String, Bytes)>) -> PortResult<u64>;

    /// Reads up to `max` records of `partition` from offset `from` (inclusive).
    async fn read(&self, partition: u32, from: u64, max: usize) -> PortResult<Vec<LogRecord>>;

    /// The offset the next append to `partition` will get.
    async fn end_offset(&self, partition: u32) -> PortResult<u64>;

    /// Returns once any `(partition, offset)` in `positions` has a record at or past `offset`,
    /// or when `timeout` passes (also `Ok`: callers just read again).
    async fn wait_for_records(&self, positions: &[(u32, u64)], timeout: Duration)
    -> PortResult<()>;
}

/// A message on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BusMessage {
    pub subject: String,
    /// Where a responder sends its answer (set on requests).
    pub reply: Option<String>,
    /// Small string headers (trace context and the like).
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl BusMessage {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            payload: payload.into(),
            ..Self::default()
        }
    }
}

/// Subjects are `.`-separated tokens; subscriptions may use `*` (exactly one token) and a
/// trailing `>` (one or more tokens), as in NATS.
///
/// Contract:
/// - `publish` is at-most-once: delivered to every matching plain subscriber and to exactly
///   one member of each matching queue group, in publish order per publisher and subject.
/// - `request` publishes with a fresh reply subject and waits for the first answer; with no
///   subscriber on the subject it fails fast with [`PortError::NoResponders`], and after
///   `timeout` with [`PortError::Timeout`].
/// - A subscription ends when the bus shuts down; dropping it unsubscribes.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, message: BusMessage) -> PortResult<()>;

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> PortResult<BoxStream<BusMessage>>;

    async fn request(&self, message: BusMessage, timeout: Duration) -> PortResult<BusMessage>;
}

/// A page of results and the token for the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: Option<String>,
}

/// ListCommands filters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandQuery {
    pub namespace: Option<String>,
    /// Keep only commands with a parameter of this name.
    pub parameter_name: Option<String>,
    /// Ascending by creation time (default: descending).
    pub ascending: bool,
    pub page_size: u32,
    pub page_token: Option<String>,
}

/// A closed time range; either bound may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    pub after: Option<TimestampMs>,
    pub before: Option<TimestampMs>,
}

impl TimeRange {
    pub fn contains(&self, t: TimestampMs) -> bool {
        self.after.is_none_or(|a| t >= a) && self.before.is_none_or(|b| t <= b)
    }
}

/// ListCommandExecutions filters. Unlike the reference, fleetcmd allows filtering by command
/// and target together, and by both time ranges at once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecutionQuery {
    pub command_id: Option<CommandId>,
    pub target: Option<Target>,
    /// Keep executions in any of these statuses (empty: all).
    pub statuses: Vec<ExecutionStatus>,
    pub started: Option<TimeRange>,
    pub completed: Option<TimeRange>,
    /// Ascending by the sort time (completed_at when filtering on completion, else started_at);
    /// default descending.
    pub ascending: bool,
    pub page_size: u32,
    pub page_token: Option<String>,
}

/// A write to the read model's commands.
// Batches are short-lived; boxing would cost an allocation per write.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CommandWrite {
    Upsert(Command),
    Delete(CommandId),
}

/// A write to the read model's executions.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutionWrite {
    Upsert(Execution),
    Delete(ExecutionId),
}

/// The writes of one projector batch of one partition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProjectionBatch {
    pub partition: u32,
    /// The partition's next offset to read once this batch is applied.
    pub next_offset: u64,
    pub commands: Vec<CommandWrite>,
    pub executions: Vec<ExecutionWrite>,
}

/// The read model: what Get and List serve, folded from the log by the projector.
///
/// Contract:
/// - `commit` applies every write of the batch and records the partition's position, such
///   that after a crash the projector resumes at a position whose writes are all applied
///   (atomically in SQLite; in ScyllaDB writes go first and the position last, and write
///   timestamps derived from `seq` make a replay change nothing).
///   Writes are idempotent: an execution upsert whose `seq` is not above the stored one
///   changes nothing, so replayed or overlapping batches cannot move a record backwards.
/// - Reads see every committed batch (read-your-writes within one store).
#[async_trait::async_trait]
pub trait ReadModel: Send + Sync + 'static {
    async fn commit(&self, batch: ProjectionBatch) -> PortResult<()>;

    /// The next offset to read for `partition` (0 when nothing was projected yet).
    async fn position(&self, partition: u32) -> PortResult<u64>;

    async fn get_command(&self, id: &CommandId) -> PortResult<Option<Command>>;

    async fn list_commands(&self, query: &CommandQuery) -> PortResult<Page<Command>>;

    async fn get_execution(&self, id: &ExecutionId) -> PortResult<Option<Execution>>;

    /// Loads the given executions (missing ones are left out), for the projector's fold.
    async fn get_executions(&self, ids: &[ExecutionId]) -> PortResult<Vec<Execution>>;

    async fn list_executions(&self, query: &ExecutionQuery) -> PortResult<Page<Execution>>;

    /// The execution started for `target` with `client_token`, if one is stored (the
    /// newest, should several share it). Shard owners ask it for tokens they no longer hold
    /// in memory, so a retried start stays idempotent for the whole token window.
    async fn find_execution_by_token(
        &self,
        target: &Target,
        client_token: &str,
    ) -> PortResult<Option<Execution>>;

    /// [`find_execution_by_token`](Self::find_execution_by_token) for several keys at once
    /// (one answer per key, in order): a shard owner looks up a whole batch's tokens in one
    /// call. The default asks one key after the other.
    async fn find_executions_by_tokens(
        &self,
        keys: &[(Target, String)],
    ) -> PortResult<Vec<Option<Execution>>> {
        let mut found = Vec::with_capacity(keys.len());
        for (target, token) in keys {
            found.push(self.find_execution_by_token(target, token).await?);
        }
        Ok(found)
    }

    /// Removes execution records whose `time_to_live` is before `now`; returns how many. A
    /// store that expires records by itself (ScyllaDB TTLs) may return 0.
    async fn purge_expired(&self, now: TimestampMs) -> PortResult<u64>;
}

/// A change of the shards (= log partitions) this instance owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentChange {
    /// These shards are now ours: rebuild their state, then serve them.
    Assigned(Vec<u32>),
    /// These shards are no longer ours: stop serving them before the handler returns.
    Revoked(Vec<u32>),
}

/// Called on every assignment change. It runs on the membership's own thread and may block
/// (e.g. with `futures::executor::block_on`) until revoked shards have stopped.
pub type AssignmentHandler = std::sync::Arc<dyn Fn(AssignmentChange) + Send + Sync>;

/// Group membership that spreads shards over the live instances of a service.
///
/// Contract:
/// - Every shard is assigned to at most one member of a group at a time: a `Revoked` handler
///   call returns before the shard is assigned to another member. A member that dies loses
///   its shards after a bounded session timeout.
/// - When a member joins or leaves, shards move by themselves (rebalance).
#[async_trait::async_trait]
pub trait ShardMembership: Send + Sync + 'static {
    /// Joins `group`; `handler` is called with every change until the returned guard is dropped
    /// (leaving the group, which revokes everything first).
    async fn join(
        &self,
        group: &str,
        handler: AssignmentHandler,
    ) -> PortResult<Box<dyn MembershipGuard>>;
}

/// Keeps a membership alive; dropping it leaves the group.
pub trait MembershipGuard: Send + Sync {}
