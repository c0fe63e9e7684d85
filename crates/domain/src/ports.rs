//! Ports: the narrow traits the services use for I/O. Each has an embedded adapter (one
//! process, no servers) and a cluster adapter, and every adapter of a port passes the same
//! conformance suite (`fleetcmd_adapters::conformance`).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::ca::CaCertificate;
use crate::credential::{CertificateRecord, Credentials};
use crate::group::ThingGroup;
use crate::ids::{CommandId, ExecutionId, Target};
use crate::model::{Command, Execution, ExecutionStatus, TimestampMs};
use crate::thing::Thing;

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

/// ListThings filters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ThingQuery {
    /// Keep things with this attribute set to this value.
    pub attribute: Option<(String, String)>,
    /// Keep things whose name starts with this.
    pub name_prefix: Option<String>,
    /// Keep only connected (`Some(true)`) or disconnected (`Some(false)`) things.
    pub connected: Option<bool>,
    /// Keep members of this static group.
    pub group: Option<String>,
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
    /// The execution is gone. `last` is its state just before the delete when the writer
    /// knows it: a read model whose rows are keyed by the execution's fields (its listing
    /// rows) removes every row it ever had from it, with no read, and a lagging writer that
    /// upserts an older version afterwards cannot bring one back. `None` leaves the adapter
    /// to find the rows from what it stored.
    Delete {
        id: ExecutionId,
        last: Option<Execution>,
    },
}

impl ExecutionWrite {
    /// A delete whose last state the writer does not know.
    pub fn delete(id: ExecutionId) -> Self {
        Self::Delete { id, last: None }
    }

    /// The execution this write is about.
    pub fn execution_id(&self) -> &ExecutionId {
        match self {
            Self::Upsert(e) => &e.execution_id,
            Self::Delete { id, .. } => id,
        }
    }
}

/// A write to the read model's things. Things of one partition are written in log order
/// (one writer per partition), so a later write always wins.
#[derive(Debug, Clone, PartialEq)]
pub enum ThingWrite {
    Upsert(Thing),
    Delete(String),
}

impl ThingWrite {
    /// The thing this write is about.
    pub fn thing_name(&self) -> &str {
        match self {
            Self::Upsert(t) => &t.thing_name,
            Self::Delete(name) => name,
        }
    }
}

/// A write to the read model's thing groups. Groups of one partition are written in log
/// order (one writer per partition), so a later write always wins.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupWrite {
    Upsert(ThingGroup),
    Delete(String),
}

impl GroupWrite {
    /// The group this write is about.
    pub fn group_name(&self) -> &str {
        match self {
            Self::Upsert(g) => &g.thing_group_name,
            Self::Delete(name) => name,
        }
    }
}

/// ListThingGroups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupQuery {
    /// Keep groups whose name starts with this.
    pub name_prefix: Option<String>,
    pub page_size: u32,
    pub page_token: Option<String>,
}

/// A write to the read model's credentials: the owner's credentials whole (its certificates,
/// its password hash and its version). Credentials are never deleted (certificates are
/// revoked, not removed), so an upsert is the only write. A store keeps the write with the
/// highest `version`: a replayed, older one changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialWrite {
    pub credentials: Credentials,
}

/// The writes of one projector batch of one partition.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProjectionBatch {
    pub partition: u32,
    /// The partition's next offset to read once this batch is applied.
    pub next_offset: u64,
    pub commands: Vec<CommandWrite>,
    pub executions: Vec<ExecutionWrite>,
    pub things: Vec<ThingWrite>,
    pub credentials: Vec<CredentialWrite>,
    /// Registered CA certificates, each whole; a store keeps the highest `version`.
    pub cas: Vec<CaCertificate>,
    pub groups: Vec<GroupWrite>,
}

/// The read model: what Get and List serve, folded from the log by the projector.
///
/// Contract:
/// - `commit` applies every write of the batch and records the partition's position, such
///   that after a crash the projector resumes at a position whose writes are all applied
///   (atomically in SQLite; in ScyllaDB writes go first and the position last, and write
///   timestamps derived from `seq` make a replay change nothing).
///   Writes are idempotent: an execution upsert whose `seq` is below the stored one changes
///   nothing, so replayed or overlapping batches cannot move a record backwards. (An equal
///   `seq` is the same event again, as there is one writer per partition; a store may keep
///   either copy.)
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

    async fn get_thing(&self, name: &str) -> PortResult<Option<Thing>>;

    /// Things by name, ascending, filtered by `query` (its connectivity filter is applied by
    /// the caller, which knows who is connected; `group` by the store).
    async fn list_things(&self, query: &ThingQuery) -> PortResult<Page<Thing>>;

    /// The stored credentials of `owner` (with their version), for the projector's fold.
    async fn get_credentials(&self, owner: &Target) -> PortResult<Option<Credentials>>;

    /// The certificate with this id, whoever owns it (the broker's authentication hook asks
    /// it for the certificate a device presented).
    async fn get_certificate(&self, certificate_id: &str) -> PortResult<Option<CertificateRecord>>;

    /// The certificates of `owner`, revoked ones included, by certificate id. The default
    /// reads the owner's credentials.
    async fn list_certificates(&self, owner: &Target) -> PortResult<Vec<CertificateRecord>> {
        Ok(self
            .get_credentials(owner)
            .await?
            .map(|c| c.certificates.into_values().collect())
            .unwrap_or_default())
    }

    /// Every revoked certificate, of every owner (for the CRL), by certificate id.
    async fn revoked_certificates(&self) -> PortResult<Vec<CertificateRecord>>;

    /// The registered CA certificate with this id.
    async fn get_ca_certificate(
        &self,
        ca_certificate_id: &str,
    ) -> PortResult<Option<CaCertificate>>;

    /// Every registered CA certificate, by id (few: they are trust anchors).
    async fn list_ca_certificates(&self) -> PortResult<Vec<CaCertificate>>;

    async fn get_thing_group(&self, name: &str) -> PortResult<Option<ThingGroup>>;

    /// Thing groups by name, ascending.
    async fn list_thing_groups(&self, query: &GroupQuery) -> PortResult<Page<ThingGroup>>;

    /// The argon2id PHC string of `owner`'s password, if one is set. The default reads the
    /// owner's credentials.
    async fn get_password_hash(&self, owner: &Target) -> PortResult<Option<String>> {
        Ok(self
            .get_credentials(owner)
            .await?
            .and_then(|c| c.password_hash))
    }

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

/// An event log that also projects what it appends into the read model, in the same durable
/// write (the embedded store: one SQLite transaction for both). A shard owner given one
/// writes its partition's read-model rows itself: a write is readable the moment it is
/// acknowledged, and no second stage runs. (In a cluster the log and the read model are
/// different engines, and the projector does this work.)
#[async_trait::async_trait]
pub trait ProjectingLog: EventLog {
    /// Appends `records` to `partition` as [`EventLog::append`] does and, in the same atomic
    /// write, applies the writes to the read model and records the
    /// partition's projected position as the end of the log after `records`. Returns the
    /// offset of the first record.
    async fn append_and_project(
        &self,
        partition: u32,
        records: Vec<(String, Bytes)>,
        writes: ProjectionWrites,
    ) -> PortResult<u64>;
}

/// The read-model writes of a [`ProjectingLog::append_and_project`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProjectionWrites {
    pub commands: Vec<CommandWrite>,
    pub executions: Vec<ExecutionWrite>,
    pub things: Vec<ThingWrite>,
    pub credentials: Vec<CredentialWrite>,
    /// Registered CA certificates, each whole; a store keeps the highest `version`.
    pub cas: Vec<CaCertificate>,
    pub groups: Vec<GroupWrite>,
}

/// Who a connecting device is, as the credential registry knows it: the embedded broker's
/// authentication hook asks at every CONNECT (so a revoked certificate or a replaced
/// password is refused from the next connection on).
#[async_trait::async_trait]
pub trait DeviceCredentials: Send + Sync + 'static {
    /// The owner of the registered certificate with this id (hex SHA-256 of its DER), if it
    /// is registered and active; `None` for an unknown or revoked one.
    async fn certificate_owner(&self, certificate_id: &str) -> PortResult<Option<Target>>;

    /// The password hash (PHC string) of `owner`, if it has a password.
    async fn password_hash(&self, owner: &Target) -> PortResult<Option<String>>;
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

/// Snapshots of shard owners' state, so a new owner rebuilds from the latest snapshot plus
/// the log after it instead of from offset 0. The data is opaque here (the owner encodes it).
///
/// Contract:
/// - `load` returns a snapshot that was saved completely, never part of one.
/// - A snapshot replaces the stored one only when its `next_offset` is not lower: a slow
///   former owner cannot put an older state back.
/// - A snapshot is a cache of the log: losing one costs rebuild time, never correctness.
#[async_trait::async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Stores the state of `partition` folded up to (not including) `next_offset`.
    async fn save_snapshot(&self, partition: u32, next_offset: u64, data: Bytes) -> PortResult<()>;

    /// The latest snapshot of `partition`: its `next_offset` and data.
    async fn load_snapshot(&self, partition: u32) -> PortResult<Option<(u64, Bytes)>>;
}

/// A QoS 1 publish from fleetcmd to devices (a request, a reply, a cancel notice, a status
/// event). MQTT 5 properties are given to MQTT 5 subscribers; 3.1.1 ones get the payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MqttMessage {
    pub topic: String,
    pub payload: Bytes,
    pub content_type: Option<String>,
    /// Seconds the broker keeps the message for an offline subscriber (MQTT 5 message expiry).
    pub message_expiry_secs: Option<u32>,
    pub user_properties: Vec<(String, String)>,
}

/// A message a device published on one of the link's filters, and how to acknowledge it.
pub struct DeviceMessage {
    pub topic: String,
    pub payload: Bytes,
    /// The publisher's MQTT client id (empty when the broker does not say).
    pub client_id: String,
    /// Acknowledges the message (the device's PUBACK): call it once the update is handled,
    /// so a device that sees its PUBACK knows its update was decided. Dropping it without a
    /// call acknowledges too.
    pub ack: Box<dyn FnOnce() + Send + Sync>,
}

impl std::fmt::Debug for DeviceMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMessage")
            .field("topic", &self.topic)
            .field("client_id", &self.client_id)
            .field("payload_bytes", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// What a broker tells of its device sessions, where it tells anything: the embedded broker
/// does, from its own hooks; an external broker seen through a plain MQTT client does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The client `client_id` subscribed to `filter` (the broker granted it).
    Subscribed { client_id: String, filter: String },
    /// A client connected or disconnected.
    Lifecycle(crate::presence::Lifecycle),
}

/// The edge's link to an MQTT broker: the broker's own API when it is embedded in the process,
/// an MQTT client of an external broker otherwise.
///
/// Contract:
/// - `publish` hands one QoS 1 message to the broker, which delivers it to every matching
///   subscription (queued for offline persistent sessions); it returns once the broker took
///   it (an error when it cannot: retryable).
/// - `device_messages` delivers every message devices publish on `filters` from then on, each
///   once (an external broker may redeliver after a reconnect: consumers are idempotent),
///   in publish order per device. It may be called once.
/// - `is_ready` is true while messages flow both ways (connected and subscribed).
#[async_trait::async_trait]
pub trait MqttLink: Send + Sync + 'static {
    async fn publish(&self, message: MqttMessage) -> PortResult<()>;

    async fn device_messages(&self, filters: Vec<String>) -> PortResult<BoxStream<DeviceMessage>>;

    fn is_ready(&self) -> bool;

    /// Whether a publish to `topic` would reach any subscriber (online, or persistent and
    /// offline); true when the broker cannot tell. Lets the edge skip status events nobody
    /// would receive.
    async fn has_subscribers(&self, topic: &str) -> bool {
        let _ = topic;
        true
    }

    /// The broker's session events from then on, or `None` when it tells none. May be
    /// called once.
    async fn session_events(&self) -> PortResult<Option<BoxStream<SessionEvent>>> {
        Ok(None)
    }
}
