//! The ScyllaDB read model ([`ScyllaReadModel`]), on the `scylla` driver.
//!
//! Written for real ScyllaDB (or Cassandra): clustering order, per-write TTLs and write
//! timestamps do the work; see [Server requirements](#server-requirements).
//!
//! # Schema
//!
//! One keyspace (name and replication configurable), created with its tables when missing.
//! Every execution table is denormalized: each row carries the whole execution (`data`, JSON),
//! so a listing page is one partition read, never a lookup per item.
//!
//! | table | primary key | serves |
//! |---|---|---|
//! | `executions` | `execution_id` | Get, the projector's fold, deletes |
//! | `executions_by_target` | `((target, bucket), started_at DESC, execution_id DESC)` | List by target (and by target + command) |
//! | `executions_by_command` | `((command_id, bucket), started_at DESC, execution_id DESC)` | List by command |
//! | `executions_by_time` | `((scope, bucket), started_at DESC, execution_id DESC)` | List with neither (scope is always `all`) |
//! | `completed_by_target`, `completed_by_command`, `completed_by_time` | the same, on `completed_at` | the completion-time filter and sort |
//! | `execution_buckets` | `(scope, bucket DESC)` | which buckets of a listing partition hold rows |
//! | `executions_by_token` | `((target_kind, target_id, client_token), started_at DESC, execution_id DESC)` | FindExecutionByToken (ids only) |
//! | `commands` | `command_id` | GetCommand |
//! | `commands_by_created` | `(scope, created_at DESC, command_id DESC)` | ListCommands (scope `all`, and `ns:<namespace>`) |
//! | `things` | `thing_name` | GetThing; `scopes` names the listing partitions holding its rows |
//! | `things_by_name` | `(scope, thing_name ASC)` | ListThings (scope `all`, `attr:<len>:<name>=<value>`, `group:<name>`) |
//! | `positions` | `log_partition` | the projector's resume offsets |
//! | `settings` | `name` | the bucket widths fixed at creation |
//!
//! **Time buckets.** A listing partition holds the executions of one target (or command, or
//! of everything) whose sort time falls in one bucket (`floor(t / width) * width`, in ms), so
//! no partition grows without bound: a command fanned out to a large fleet, or a device
//! polled every minute for the six months of retention, would otherwise make partitions of
//! hundreds of megabytes. Widths are per listing kind ([`BucketWidths`]: 7 days per target,
//! 1 hour per command, 10 minutes for everything by default) and are stored in `settings`
//! when the keyspace is created; later connects use the stored ones (the layout depends on
//! them). `execution_buckets` records which buckets exist, so a listing visits only those,
//! newest (or oldest) first, and jumps straight between them with a range query. The
//! `executions_by_time` partitions take every write of their bucket; at very high start rates
//! make `BucketWidths::all_ms` smaller.
//!
//! **Client tokens.** `executions_by_token` maps a target and a client token to the
//! executions started with them (only executions that have a token get a row). A token can
//! be reused once its window has passed, so the partition may hold several executions: the
//! row key includes `started_at` and `execution_id`, so every execution keeps its own row
//! (one row per (target, token) would be versioned by `seq`, and an older execution with more
//! events would hide a newer one). The lookup reads the partition (a handful of rows), takes
//! the newest by `(started_at, execution_id)`, and loads it from `executions`; a row whose
//! execution is gone (deleted, expired) is skipped, so `executions` alone decides what exists.
//! Executions written before this table existed have no row there and are not found.
//!
//! **Filters.** A listing reads one partition chain chosen by the query: the target's when a
//! target is given (a device has far fewer executions than a command), else the command's,
//! else everything's; by start time, or by completion time when a completion filter is given.
//! The sort-time range is pushed down as a clustering slice. The other filters (statuses, a
//! command together with a target, the start range while sorting by completion) are applied
//! by the client while paging: each round trip fetches at most the number of items still
//! missing from the page (so the driver's paging state stays exact), which means a selective
//! filter costs many round trips. A page stops after [`MAX_ROWS_SCANNED`] rows or
//! [`MAX_FETCHES`] round trips and is then returned short (possibly empty) with a `next_token`
//! that resumes where it stopped.
//!
//! **Things** are listed from one `things_by_name` partition: the attribute's when the query
//! has one, else the group's, else everything's; the name prefix is a clustering slice
//! (`prefix <= name < prefix + '\x7f'`, as names are `[a-zA-Z0-9:_-]`). With both an
//! attribute and a group, the group is checked by the client. A page reads until it has
//! found one item more than it returns, so the last page carries no token; tokens resume
//! after the last name listed. (The `all` partition, and those of common attribute values,
//! grow with the fleet: one row per thing.)
//!
//! **Paging.** `next_token` is opaque: base64url of a version, the listing kind, a fingerprint
//! of the query (a token used with another query is rejected with
//! [`crate::invalid_page_token`]), the current bucket and the driver's paging state in it.
//!
//! # Writes: replays, overlapping projectors, retention
//!
//! `commit` runs the batch's writes concurrently (at most `write_concurrency` in flight) and
//! records the partition's position only after all of them succeeded, so a crash resumes at a
//! position whose writes are applied; replaying them is harmless because every write is
//! idempotent and versioned:
//! - An execution's cells are written `USING TIMESTAMP seq`. Cassandra/ScyllaDB keep, cell by
//!   cell, the value with the highest write timestamp, whatever order writes arrive in, so a
//!   replayed event or a lagging projector that still writes after a rebalance can never move
//!   a record backwards: no read-before-write and no lightweight transaction is needed. Within
//!   one batch, only the highest `seq` of each execution is written. Equal `seq`s are the same
//!   event (the fold is deterministic); if their contents differed anyway, ScyllaDB would keep
//!   the larger cell value.
//! - A delete is written `USING TIMESTAMP` [`DELETE_TIMESTAMP`], above every `seq`, so it beats
//!   every upsert of that execution, earlier or replayed later. That is right because
//!   execution ids are never reused (fresh UUIDv7s) and a deleted execution gets no further
//!   events. `ExecutionWrite::Delete` carries the execution's last state (the projector
//!   folds the log in order, so it knows it), whose fields name every listing row and
//!   client-token row the execution ever had: all are tombstoned above every `seq`, with no
//!   read, and a lagging projector that re-writes an older version after the delete brings
//!   back neither the `executions` row nor a listing row. (A delete without it, from a
//!   writer that never saw the execution, removes the rows of the stored version.)
//! - An execution's `started_at` never changes and its `completed_at` is set once, so its
//!   listing rows never move: updates rewrite the same rows, and a completed execution gains
//!   its `completed_*` rows.
//! - Commands carry no `seq`: they are written `USING TIMESTAMP last_updated_at` (µs), which
//!   every change moves forward, and deleted at the stored version's time + 999 µs, so a
//!   command re-created later with the same id is visible again.
//! - Things carry no usable version (`seq` and `version` restart when a thing is re-created):
//!   a batch keeps each thing's last write and writes it with a timestamp from the clock (µs),
//!   strictly increasing within the process and raised above the stored versions' write
//!   times, so a later batch wins (one writer per partition) even across coordinators or
//!   after a rebalance to a process whose clock is behind. Only re-creating a thing after its
//!   delete, from a process whose clock is behind the deleting one's, could stay hidden under
//!   the tombstone until that clock catches up. A thing's
//!   `scopes` always names a superset of its listing partitions (it is widened before rows
//!   are written and narrowed after stale ones are deleted), so a replayed batch finds every
//!   row to remove, whatever the batch boundaries.
//! - Positions are written `USING TIMESTAMP next_offset`, so a lagging projector cannot move a
//!   partition's position backwards.
//! - Reads and writes use the driver's default consistency (`LOCAL_QUORUM`), which gives the
//!   port's read-your-writes within a datacenter.
//! - Tombstones are dropped after the tables' `gc_grace_seconds` (ScyllaDB's default: 10
//!   days); replaying events older than that could bring a deleted execution back (until its
//!   TTL).
//!
//! **Retention** is CQL TTL: each execution write carries `USING TTL` = its `time_to_live`
//! minus now (rounded up to seconds), so ScyllaDB expires the record and its listing rows by
//! itself and `purge_expired` has nothing left to do (it returns 0). An execution whose
//! `time_to_live` has already passed is not written at all. The tables keep
//! `default_time_to_live = 0`, since the TTL is per execution. Don't use TWCS on these tables
//! (write timestamps are versions, not times).
//!
//! # Server requirements
//!
//! The server must understand ScyllaDB's and Cassandra's CQL: `USING TTL/TIMESTAMP`,
//! clustering slices and `ORDER BY`; the driver awaits schema agreement after every DDL
//! statement (the adapter checks once more after each). At connect the adapter checks that
//! the server counted the bind markers of the `USING TTL ? AND TIMESTAMP ?` clause, so a
//! server that ignores it fails the connect instead of every write.

mod credentials;
mod error;
mod groups;
mod paging;
mod plan;
mod read_model;
mod reads;
mod schema;
mod snapshots;
mod statements;
mod tables;
mod things;
mod writes;

use std::collections::HashMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use fleetcmd_domain::TimestampMs;
use fleetcmd_domain::ports::{Clock, PortError, PortResult};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;

use self::error::exec_error;
use self::schema::{replication_cql, schema_cql, settle_settings, valid_keyspace};
use self::statements::{Statements, statement_texts};
use crate::clock::SystemClock;

/// The write timestamp of every delete: above any execution `seq`, so a delete beats every
/// upsert of the execution (ids are never reused). Not `i64::MAX`, which ScyllaDB uses as a
/// sentinel in places.
pub const DELETE_TIMESTAMP: i64 = 1 << 62;

/// The most rows one `list_*` call reads before it returns a short page with a token.
pub const MAX_ROWS_SCANNED: usize = 10_000;
/// The most round trips one `list_*` call makes before it returns a short page with a token.
pub const MAX_FETCHES: usize = 500;

/// How the keyspace is replicated (used only when it is created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `NetworkTopologyStrategy` with this many replicas in every datacenter.
    Factor(u32),
    /// `NetworkTopologyStrategy` with a replica count per datacenter.
    PerDatacenter(Vec<(String, u32)>),
}

/// Widths of the time buckets of the listing partitions, in milliseconds. Fixed when the
/// keyspace is created (stored in `settings`); later connects use the stored widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketWidths {
    /// Per target (`executions_by_target`, `completed_by_target`).
    pub target_ms: i64,
    /// Per command (`executions_by_command`, `completed_by_command`).
    pub command_ms: i64,
    /// For listings with neither (`executions_by_time`, `completed_by_time`).
    pub all_ms: i64,
}

impl Default for BucketWidths {
    fn default() -> Self {
        const HOUR_MS: i64 = 3600 * 1000;
        Self {
            target_ms: 7 * 24 * HOUR_MS,
            command_ms: HOUR_MS,
            all_ms: HOUR_MS / 6,
        }
    }
}

/// Settings of [`ScyllaReadModel::connect_with`].
#[derive(Clone)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// `[A-Za-z][A-Za-z0-9_]{0,47}`.
    pub keyspace: String,
    pub replication: Replication,
    pub buckets: BucketWidths,
    /// Most writes of one commit in flight at once.
    pub write_concurrency: usize,
    /// Turns `time_to_live` into CQL TTLs.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ScyllaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaConfig")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication", &self.replication)
            .field("buckets", &self.buckets)
            .field("write_concurrency", &self.write_concurrency)
            .finish_non_exhaustive()
    }
}

impl ScyllaConfig {
    pub fn new(nodes: &[String], keyspace: &str, replication: Replication) -> Self {
        Self {
            nodes: nodes.to_vec(),
            keyspace: keyspace.to_owned(),
            replication,
            buckets: BucketWidths::default(),
            write_concurrency: 64,
            clock: Arc::new(SystemClock),
        }
    }
}

/// The read model on ScyllaDB. Cheap to share: connect once, hand out the `Arc`.
pub struct ScyllaReadModel {
    session: Session,
    keyspace: String,
    buckets: BucketWidths,
    write_concurrency: usize,
    clock: Arc<dyn Clock>,
    st: Statements,
    snap: snapshots::SnapshotStatements,
    cred: credentials::CredentialStatements,
    groups: groups::GroupStatements,
    /// `(scope, bucket)` → the latest `time_to_live` written to `execution_buckets` by this
    /// process; a bucket row only needs rewriting when an execution outlives it.
    buckets_written: Mutex<HashMap<(String, i64), TimestampMs>>,
    /// The last write timestamp reserved for thing writes (µs): every commit's is above it.
    thing_clock: AtomicI64,
}

impl std::fmt::Debug for ScyllaReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaReadModel")
            .field("keyspace", &self.keyspace)
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

impl ScyllaReadModel {
    /// Connects to `nodes` (`host:port`), creates keyspace `keyspace` (replicated
    /// `replication_factor` times in every datacenter) and its tables when missing, and
    /// prepares every statement.
    pub async fn connect(
        nodes: &[String],
        keyspace: &str,
        replication_factor: u32,
    ) -> Result<Arc<Self>, PortError> {
        Self::connect_with(ScyllaConfig::new(
            nodes,
            keyspace,
            Replication::Factor(replication_factor),
        ))
        .await
    }

    /// [`connect`](Self::connect) with every setting.
    pub async fn connect_with(config: ScyllaConfig) -> Result<Arc<Self>, PortError> {
        let ks = config.keyspace.to_ascii_lowercase();
        if !valid_keyspace(&ks) {
            return Err(PortError::Backend(format!(
                "invalid keyspace name {:?}: expected a letter then up to 47 letters, digits \
                 or underscores",
                config.keyspace
            )));
        }
        let b = config.buckets;
        if b.target_ms <= 0 || b.command_ms <= 0 || b.all_ms <= 0 {
            return Err(PortError::Backend(format!(
                "bucket widths must be positive, got {b:?}"
            )));
        }
        if config.nodes.is_empty() {
            return Err(PortError::Backend(
                "no ScyllaDB contact points given".into(),
            ));
        }
        let replication = replication_cql(&config.replication)?;
        let session = SessionBuilder::new()
            .known_nodes(&config.nodes)
            .tcp_nodelay(true)
            // Agreement is also awaited after each DDL below.
            .auto_await_schema_agreement(true)
            .build()
            .await
            .map_err(|e| {
                PortError::Unavailable(format!("scylla: connecting to {:?}: {e}", config.nodes))
            })?;
        for ddl in schema_cql(&ks, &replication) {
            session
                .query_unpaged(ddl.as_str(), ())
                .await
                .map_err(|e| exec_error(&format!("running `{ddl}`"), e))?;
            // Every node must know the keyspace before its tables are created, and the
            // tables before statements are prepared on every node.
            session.await_schema_agreement().await.map_err(|e| {
                PortError::Unavailable(format!("scylla: awaiting schema agreement: {e}"))
            })?;
        }
        let st = Statements::prepare(&session, statement_texts(&ks)).await?;
        let snap = snapshots::SnapshotStatements::prepare(&session, &ks).await?;
        let cred = credentials::CredentialStatements::prepare(&session, &ks).await?;
        let groups = groups::GroupStatements::prepare(&session, &ks).await?;
        check_using_clauses(&st.upsert_execution)?;
        let buckets = settle_settings(&session, &ks, config.buckets).await?;
        tracing::info!(keyspace = %ks, ?buckets, "ScyllaDB read model ready");
        Ok(Arc::new(Self {
            session,
            keyspace: ks,
            buckets,
            write_concurrency: config.write_concurrency.max(1),
            clock: config.clock,
            st,
            snap,
            cred,
            groups,
            buckets_written: Mutex::new(HashMap::new()),
            thing_clock: AtomicI64::new(i64::MIN),
        }))
    }

    /// The bucket widths in use (the ones stored when the keyspace was created).
    pub fn bucket_widths(&self) -> BucketWidths {
        self.buckets
    }

    /// The keyspace, as stored (lower case).
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }
}

/// Fails the connect when the server did not count the bind markers of the execution
/// upsert's `USING TTL ? AND TIMESTAMP ?` (a server that ignores the clause): every write
/// would fail otherwise.
fn check_using_clauses(upsert_execution: &PreparedStatement) -> PortResult<()> {
    match upsert_execution.get_variable_col_specs().len() {
        5 => Ok(()),
        3 => Err(PortError::Backend(
            "the server ignores USING clauses: the read model needs ScyllaDB or Cassandra \
             (USING TTL/TIMESTAMP, clustering order)"
                .into(),
        )),
        n => Err(PortError::Backend(format!(
            "the server reports {n} bind markers for the execution upsert, expected 5"
        ))),
    }
}
