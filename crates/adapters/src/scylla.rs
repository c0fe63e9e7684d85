//! The ScyllaDB read model ([`ScyllaReadModel`]), on the `scylla` driver.
//!
//! Written for real ScyllaDB (or Cassandra): clustering order, per-write TTLs and write
//! timestamps do the work. It also runs against the in-memory CQL test server
//! (`crates/cql-test-server`), which ignores those clauses; see [Dialects](#dialects).
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
//!   events. `ExecutionWrite::Delete` carries only the id, so the adapter reads the stored
//!   execution to find its listing rows and client-token row; a lagging projector that
//!   re-writes an execution after it was deleted re-creates no `executions` row (the
//!   tombstone wins), but a listing row the adapter could not know about (from a version it
//!   never read) may reappear. A delete that carried the execution's keys and `seq` would
//!   close that gap. (A reappearing client-token row is harmless: the lookup checks
//!   `executions`.)
//! - An execution's `started_at` never changes and its `completed_at` is set once, so its
//!   listing rows never move: updates rewrite the same rows, and a completed execution gains
//!   its `completed_*` rows.
//! - Commands carry no `seq`: they are written `USING TIMESTAMP last_updated_at` (µs), which
//!   every change moves forward, and deleted at the stored version's time + 999 µs, so a
//!   command re-created later with the same id is visible again.
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
//! # Dialects
//!
//! At connect the adapter prepares the execution upsert with its `USING TTL ? AND TIMESTAMP ?`
//! clause and checks that the server counted those bind markers. ScyllaDB and Cassandra do
//! ([`Dialect::Full`]). The CQL test server's parser stops before them ([`Dialect::Limited`]):
//! the adapter then prepares every statement without `USING` clauses and clustering-range
//! conditions (that server would ignore them anyway), re-applies the range filters on the
//! client (it always does), and makes `purge_expired` scan and delete expired executions. On
//! that server: no ordering (it ignores `ORDER BY` and clustering order), no protection
//! against an older `seq` written in a later batch, no TTL. The conformance suite runs
//! accordingly with [`crate::conformance::read_model::Capabilities`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetcmd_domain::ports::{
    Clock, CommandQuery, CommandWrite, ExecutionQuery, ExecutionWrite, Page, PortError, PortResult,
    ProjectionBatch, ReadModel, TimeRange,
};
use fleetcmd_domain::{Command, CommandId, Execution, ExecutionId, Target, TimestampMs};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{DbError, ExecutionError, PrepareError, RequestAttemptError};
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use crate::clock::SystemClock;
use crate::{effective_page_size, invalid_page_token};

/// The write timestamp of every delete: above any execution `seq`, so a delete beats every
/// upsert of the execution (ids are never reused). Not `i64::MAX`, which ScyllaDB uses as a
/// sentinel in places.
pub const DELETE_TIMESTAMP: i64 = 1 << 62;

/// The most rows one `list_*` call reads before it returns a short page with a token.
pub const MAX_ROWS_SCANNED: usize = 10_000;
/// The most round trips one `list_*` call makes before it returns a short page with a token.
pub const MAX_FETCHES: usize = 500;

/// ScyllaDB refuses TTLs above 20 years.
const MAX_TTL_SECS: i64 = 20 * 365 * 24 * 3600;
/// Version of the table layout, recorded in `settings`.
const SCHEMA_VERSION: i64 = 1;
/// Concurrent point reads in `get_executions`.
const READ_CONCURRENCY: usize = 32;

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

/// What the connected server understands (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// ScyllaDB or Cassandra: `USING TTL/TIMESTAMP`, clustering slices, `ORDER BY`.
    Full,
    /// A server that does not parse `USING` clauses (the CQL test server).
    Limited,
}

/// The read model on ScyllaDB. Cheap to share: connect once, hand out the `Arc`.
pub struct ScyllaReadModel {
    session: Session,
    keyspace: String,
    dialect: Dialect,
    buckets: BucketWidths,
    write_concurrency: usize,
    clock: Arc<dyn Clock>,
    st: Statements,
    /// `(scope, bucket)` → the latest `time_to_live` written to `execution_buckets` by this
    /// process; a bucket row only needs rewriting when an execution outlives it.
    buckets_written: Mutex<HashMap<(String, i64), TimestampMs>>,
}

impl std::fmt::Debug for ScyllaReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaReadModel")
            .field("keyspace", &self.keyspace)
            .field("dialect", &self.dialect)
            .field("buckets", &self.buckets)
            .finish_non_exhaustive()
    }
}

// ---- errors ---------------------------------------------------------------------------------

fn db_error_is_retryable(e: &DbError) -> bool {
    matches!(
        e,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::RateLimitReached { .. }
    )
}

fn attempt_error(context: &str, e: &RequestAttemptError) -> PortError {
    let msg = format!("scylla: {context}: {e}");
    match e {
        RequestAttemptError::DbError(DbError::ReadTimeout { .. }, _)
        | RequestAttemptError::DbError(DbError::WriteTimeout { .. }, _) => PortError::Timeout(msg),
        RequestAttemptError::DbError(db, _) if db_error_is_retryable(db) => {
            PortError::Unavailable(msg)
        }
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => PortError::Unavailable(msg),
        _ => PortError::Backend(msg),
    }
}

/// Maps a driver error to a port error that says whether retrying may help.
fn exec_error(context: &str, e: ExecutionError) -> PortError {
    match &e {
        ExecutionError::LastAttemptError(a) => attempt_error(context, a),
        ExecutionError::RequestTimeout(_) => PortError::Timeout(format!("scylla: {context}: {e}")),
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => {
            PortError::Unavailable(format!("scylla: {context}: {e}"))
        }
        _ => PortError::Backend(format!("scylla: {context}: {e}")),
    }
}

fn prepare_error(cql: &str, e: PrepareError) -> PortError {
    match &e {
        PrepareError::ConnectionPoolError(_) => {
            PortError::Unavailable(format!("scylla: preparing `{cql}`: {e}"))
        }
        _ => PortError::Backend(format!("scylla: preparing `{cql}`: {e}")),
    }
}

fn rows_error(context: &str, e: impl std::fmt::Display) -> PortError {
    PortError::Corrupt(format!("scylla: {context}: unexpected result: {e}"))
}

fn encode_json<T: serde::Serialize>(what: &str, id: &str, v: &T) -> PortResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| PortError::Backend(format!("encoding {what} {id}: {e}")))
}

fn decode_json<T: serde::de::DeserializeOwned>(what: &str, data: &[u8]) -> PortResult<T> {
    serde_json::from_slice(data).map_err(|e| PortError::Corrupt(format!("{what}: {e}")))
}

fn to_i64(v: u64, what: &str) -> PortResult<i64> {
    i64::try_from(v)
        .map_err(|_| PortError::Backend(format!("{what} {v} exceeds the CQL bigint range")))
}

// ---- listing tables -------------------------------------------------------------------------

/// The six listing tables: (what the partition is per) × (which time sorts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Per {
    Target,
    Command,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Started,
    Completed,
}

const INDEXES: [(Per, SortBy); 6] = [
    (Per::Target, SortBy::Started),
    (Per::Command, SortBy::Started),
    (Per::All, SortBy::Started),
    (Per::Target, SortBy::Completed),
    (Per::Command, SortBy::Completed),
    (Per::All, SortBy::Completed),
];

fn index_slot(per: Per, sort: SortBy) -> usize {
    let p = match per {
        Per::Target => 0,
        Per::Command => 1,
        Per::All => 2,
    };
    match sort {
        SortBy::Started => p,
        SortBy::Completed => 3 + p,
    }
}

fn index_table(per: Per, sort: SortBy) -> &'static str {
    match (per, sort) {
        (Per::Target, SortBy::Started) => "executions_by_target",
        (Per::Command, SortBy::Started) => "executions_by_command",
        (Per::All, SortBy::Started) => "executions_by_time",
        (Per::Target, SortBy::Completed) => "completed_by_target",
        (Per::Command, SortBy::Completed) => "completed_by_command",
        (Per::All, SortBy::Completed) => "completed_by_time",
    }
}

fn key_column(per: Per) -> &'static str {
    match per {
        Per::Target => "target",
        Per::Command => "command_id",
        Per::All => "scope",
    }
}

fn sort_column(sort: SortBy) -> &'static str {
    match sort {
        SortBy::Started => "started_at",
        SortBy::Completed => "completed_at",
    }
}

/// The partition-key value of `e` in a `per` table.
fn index_key(per: Per, e: &Execution) -> String {
    match per {
        Per::Target => e.target.resource_name(),
        Per::Command => e.command_id.as_str().to_owned(),
        Per::All => ALL_SCOPE.to_owned(),
    }
}

const ALL_SCOPE: &str = "all";

/// The `execution_buckets` scope of one listing partition chain.
fn bucket_scope(per: Per, sort: SortBy, key: &str) -> String {
    format!("{}/{key}", index_table(per, sort))
}

/// The start of the bucket holding `t`.
fn bucket_start(t: TimestampMs, width: i64) -> i64 {
    t.div_euclid(width).saturating_mul(width)
}

impl BucketWidths {
    fn of(&self, per: Per) -> i64 {
        match per {
            Per::Target => self.target_ms,
            Per::Command => self.command_ms,
            Per::All => self.all_ms,
        }
    }
}

// ---- statements -----------------------------------------------------------------------------

/// The statements of one listing table (`S` = CQL text, then prepared statement).
struct IndexStatements<S> {
    upsert: S,
    delete: S,
    page_desc: S,
    page_asc: S,
}

/// Every statement the adapter runs after the DDL, prepared once at connect.
struct Statements<S = PreparedStatement> {
    get_execution: S,
    scan_executions: S,
    upsert_execution: S,
    delete_execution: S,
    index: Vec<IndexStatements<S>>,
    upsert_bucket: S,
    next_bucket_desc: S,
    next_bucket_asc: S,
    upsert_token: S,
    delete_token: S,
    tokens_of: S,
    get_command: S,
    upsert_command: S,
    delete_command: S,
    upsert_command_row: S,
    delete_command_row: S,
    commands_desc: S,
    commands_asc: S,
    get_position: S,
    upsert_position: S,
}

/// `USING` clauses in the full dialect, nothing in the limited one.
fn using(dialect: Dialect, clause: &str) -> String {
    match dialect {
        Dialect::Full => format!(" USING {clause}"),
        Dialect::Limited => String::new(),
    }
}

/// `AND <range>` in the full dialect (the limited server would ignore it).
fn slice(dialect: Dialect, cond: &str) -> String {
    match dialect {
        Dialect::Full => format!(" AND {cond}"),
        Dialect::Limited => String::new(),
    }
}

/// `ORDER BY` in the full dialect (the limited server would ignore it).
fn order_by(dialect: Dialect, order: &str) -> String {
    match dialect {
        Dialect::Full => format!(" ORDER BY {order}"),
        Dialect::Limited => String::new(),
    }
}

fn execution_upsert_cql(ks: &str, dialect: Dialect) -> String {
    format!(
        "INSERT INTO {ks}.executions (execution_id, seq, data) VALUES (?, ?, ?){}",
        using(dialect, "TTL ? AND TIMESTAMP ?")
    )
}

/// The CQL of every statement. The bind markers of each one match the values its caller
/// builds (checked by a unit test): `USING TTL ? AND TIMESTAMP ?` and `VALUES (...) USING
/// TIMESTAMP ?` take their values last, `DELETE ... USING TIMESTAMP ? WHERE` first.
fn statement_texts(ks: &str, d: Dialect) -> Statements<String> {
    let index = INDEXES
        .iter()
        .map(|&(per, sort)| {
            let t = index_table(per, sort);
            let k = key_column(per);
            let s = sort_column(sort);
            let page = format!(
                "SELECT data FROM {ks}.{t} WHERE {k} = ? AND bucket = ?{}",
                slice(d, &format!("{s} >= ? AND {s} <= ?"))
            );
            IndexStatements {
                upsert: format!(
                    "INSERT INTO {ks}.{t} ({k}, bucket, {s}, execution_id, data) \
                     VALUES (?, ?, ?, ?, ?){}",
                    using(d, "TTL ? AND TIMESTAMP ?")
                ),
                delete: format!(
                    "DELETE FROM {ks}.{t}{} WHERE {k} = ? AND bucket = ? AND {s} = ? \
                     AND execution_id = ?",
                    using(d, "TIMESTAMP ?")
                ),
                page_asc: format!(
                    "{page}{}",
                    order_by(d, &format!("{s} ASC, execution_id ASC"))
                ),
                page_desc: page,
            }
        })
        .collect();
    let buckets = format!(
        "SELECT bucket FROM {ks}.execution_buckets WHERE scope = ?{}",
        slice(d, "bucket >= ? AND bucket <= ?")
    );
    let limit_one = |d: Dialect| match d {
        Dialect::Full => " LIMIT 1",
        Dialect::Limited => "",
    };
    let commands = format!("SELECT data FROM {ks}.commands_by_created WHERE scope = ?");
    Statements {
        get_execution: format!("SELECT data FROM {ks}.executions WHERE execution_id = ?"),
        scan_executions: format!("SELECT data FROM {ks}.executions"),
        upsert_execution: execution_upsert_cql(ks, d),
        delete_execution: format!(
            "DELETE FROM {ks}.executions{} WHERE execution_id = ?",
            using(d, "TIMESTAMP ?")
        ),
        index,
        upsert_bucket: format!(
            "INSERT INTO {ks}.execution_buckets (scope, bucket) VALUES (?, ?){}",
            using(d, "TTL ? AND TIMESTAMP ?")
        ),
        next_bucket_desc: format!("{buckets}{}", limit_one(d)),
        next_bucket_asc: format!("{buckets}{}{}", order_by(d, "bucket ASC"), limit_one(d)),
        upsert_token: format!(
            "INSERT INTO {ks}.executions_by_token (target_kind, target_id, client_token, \
             started_at, execution_id) VALUES (?, ?, ?, ?, ?){}",
            using(d, "TTL ? AND TIMESTAMP ?")
        ),
        delete_token: format!(
            "DELETE FROM {ks}.executions_by_token{} WHERE target_kind = ? AND target_id = ? \
             AND client_token = ? AND started_at = ? AND execution_id = ?",
            using(d, "TIMESTAMP ?")
        ),
        tokens_of: format!(
            "SELECT started_at, execution_id FROM {ks}.executions_by_token \
             WHERE target_kind = ? AND target_id = ? AND client_token = ?"
        ),
        get_command: format!("SELECT data FROM {ks}.commands WHERE command_id = ?"),
        upsert_command: format!(
            "INSERT INTO {ks}.commands (command_id, data) VALUES (?, ?){}",
            using(d, "TIMESTAMP ?")
        ),
        delete_command: format!(
            "DELETE FROM {ks}.commands{} WHERE command_id = ?",
            using(d, "TIMESTAMP ?")
        ),
        upsert_command_row: format!(
            "INSERT INTO {ks}.commands_by_created (scope, created_at, command_id, data) \
             VALUES (?, ?, ?, ?){}",
            using(d, "TIMESTAMP ?")
        ),
        delete_command_row: format!(
            "DELETE FROM {ks}.commands_by_created{} WHERE scope = ? AND created_at = ? \
             AND command_id = ?",
            using(d, "TIMESTAMP ?")
        ),
        commands_asc: format!(
            "{commands}{}",
            order_by(d, "created_at ASC, command_id ASC")
        ),
        commands_desc: commands,
        get_position: format!("SELECT next_offset FROM {ks}.positions WHERE log_partition = ?"),
        upsert_position: format!(
            "INSERT INTO {ks}.positions (log_partition, next_offset) VALUES (?, ?){}",
            using(d, "TIMESTAMP ?")
        ),
    }
}

async fn prepare(session: &Session, cql: String) -> PortResult<PreparedStatement> {
    let mut st = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| prepare_error(&cql, e))?;
    // Every statement is idempotent (versioned writes), so the driver may retry them.
    st.set_is_idempotent(true);
    Ok(st)
}

impl Statements {
    async fn prepare(session: &Session, texts: Statements<String>) -> PortResult<Self> {
        let mut index = Vec::with_capacity(texts.index.len());
        for i in texts.index {
            index.push(IndexStatements {
                upsert: prepare(session, i.upsert).await?,
                delete: prepare(session, i.delete).await?,
                page_desc: prepare(session, i.page_desc).await?,
                page_asc: prepare(session, i.page_asc).await?,
            });
        }
        Ok(Self {
            get_execution: prepare(session, texts.get_execution).await?,
            scan_executions: prepare(session, texts.scan_executions).await?,
            upsert_execution: prepare(session, texts.upsert_execution).await?,
            delete_execution: prepare(session, texts.delete_execution).await?,
            index,
            upsert_bucket: prepare(session, texts.upsert_bucket).await?,
            next_bucket_desc: prepare(session, texts.next_bucket_desc).await?,
            next_bucket_asc: prepare(session, texts.next_bucket_asc).await?,
            upsert_token: prepare(session, texts.upsert_token).await?,
            delete_token: prepare(session, texts.delete_token).await?,
            tokens_of: prepare(session, texts.tokens_of).await?,
            get_command: prepare(session, texts.get_command).await?,
            upsert_command: prepare(session, texts.upsert_command).await?,
            delete_command: prepare(session, texts.delete_command).await?,
            upsert_command_row: prepare(session, texts.upsert_command_row).await?,
            delete_command_row: prepare(session, texts.delete_command_row).await?,
            commands_desc: prepare(session, texts.commands_desc).await?,
            commands_asc: prepare(session, texts.commands_asc).await?,
            get_position: prepare(session, texts.get_position).await?,
            upsert_position: prepare(session, texts.upsert_position).await?,
        })
    }
}

// ---- schema ---------------------------------------------------------------------------------

fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

/// A CQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn replication_cql(r: &Replication) -> PortResult<String> {
    match r {
        Replication::Factor(0) => Err(PortError::Backend(
            "the replication factor must be at least 1".into(),
        )),
        Replication::Factor(n) => Ok(format!(
            "{{'class' : 'NetworkTopologyStrategy', 'replication_factor' : {n}}}"
        )),
        Replication::PerDatacenter(dcs) => {
            if dcs.is_empty() || dcs.iter().any(|(dc, n)| dc.is_empty() || *n == 0) {
                return Err(PortError::Backend(
                    "per-datacenter replication needs at least one datacenter, each with \
                     at least 1 replica"
                        .into(),
                ));
            }
            let mut s = String::from("{'class' : 'NetworkTopologyStrategy'");
            for (dc, n) in dcs {
                s.push_str(&format!(", {} : {n}", quote(dc)));
            }
            s.push('}');
            Ok(s)
        }
    }
}

/// DDL, in order. Written in the subset of CQL both ScyllaDB and the CQL test server parse
/// (upper-case keywords, `AND` between options).
fn schema_cql(ks: &str, replication: &str) -> Vec<String> {
    let mut ddl = vec![format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"
    )];
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.settings (name text, value bigint, PRIMARY KEY (name))"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.executions (execution_id text, seq bigint, data blob, \
         PRIMARY KEY (execution_id)) WITH default_time_to_live = 0"
    ));
    for (per, sort) in INDEXES {
        let t = index_table(per, sort);
        let k = key_column(per);
        let s = sort_column(sort);
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{t} ({k} text, bucket bigint, {s} bigint, \
             execution_id text, data blob, PRIMARY KEY (({k}, bucket), {s}, execution_id)) \
             WITH CLUSTERING ORDER BY ({s} DESC, execution_id DESC) AND default_time_to_live = 0"
        ));
    }
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.execution_buckets (scope text, bucket bigint, \
         PRIMARY KEY ((scope), bucket)) WITH CLUSTERING ORDER BY (bucket DESC)"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.executions_by_token (target_kind text, \
         target_id text, client_token text, started_at bigint, execution_id text, \
         PRIMARY KEY ((target_kind, target_id, client_token), started_at, execution_id)) \
         WITH CLUSTERING ORDER BY (started_at DESC, execution_id DESC) \
         AND default_time_to_live = 0"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.commands (command_id text, data blob, \
         PRIMARY KEY (command_id))"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.commands_by_created (scope text, created_at bigint, \
         command_id text, data blob, PRIMARY KEY ((scope), created_at, command_id)) \
         WITH CLUSTERING ORDER BY (created_at DESC, command_id DESC)"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.positions (log_partition int, next_offset bigint, \
         PRIMARY KEY (log_partition))"
    ));
    ddl
}

// ---- paging tokens --------------------------------------------------------------------------

const TOKEN_VERSION: &str = "s1";
const EXECUTION_TOKEN: &str = "e";
const COMMAND_TOKEN: &str = "c";

/// FNV-1a: a hash that is the same in every build, so tokens survive rolling upgrades.
fn fingerprint(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Where a listing resumes: a bucket (0 for commands) and the driver's paging state in it
/// (`None`: the bucket's start).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    bucket: i64,
    state: Option<Vec<u8>>,
}

fn encode_token(kind: &str, fp: u64, c: &Cursor) -> String {
    let state = c
        .state
        .as_deref()
        .map(|s| URL_SAFE_NO_PAD.encode(s))
        .unwrap_or_default();
    URL_SAFE_NO_PAD.encode(format!(
        "{TOKEN_VERSION}|{kind}|{fp:016x}|{}|{state}",
        c.bucket
    ))
}

fn decode_token(kind: &str, fp: u64, token: &str) -> PortResult<Cursor> {
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid_page_token("not base64url"))?;
    let text = String::from_utf8(raw).map_err(|_| invalid_page_token("not UTF-8"))?;
    let parts: Vec<&str> = text.split('|').collect();
    let [version, k, f, bucket, state] = parts.as_slice() else {
        return Err(invalid_page_token("missing fields"));
    };
    if *version != TOKEN_VERSION {
        return Err(invalid_page_token("unknown version"));
    }
    if *k != kind {
        return Err(invalid_page_token("issued for another listing"));
    }
    if u64::from_str_radix(f, 16).ok() != Some(fp) {
        return Err(invalid_page_token("issued for another query"));
    }
    let bucket = bucket
        .parse::<i64>()
        .map_err(|_| invalid_page_token("bad bucket"))?;
    let state = if state.is_empty() {
        None
    } else {
        Some(
            URL_SAFE_NO_PAD
                .decode(state)
                .map_err(|_| invalid_page_token("bad paging state"))?,
        )
    };
    Ok(Cursor { bucket, state })
}

// ---- listing plans --------------------------------------------------------------------------

/// How one execution query is served.
#[derive(Debug, Clone)]
struct ExecutionPlan {
    per: Per,
    sort: SortBy,
    key: String,
    width: i64,
    /// The sort-time range, inclusive.
    lo: i64,
    hi: i64,
    ascending: bool,
    fingerprint: u64,
}

impl ExecutionPlan {
    fn new(q: &ExecutionQuery, widths: &BucketWidths) -> Self {
        let (per, key) = match (&q.target, &q.command_id) {
            (Some(t), _) => (Per::Target, t.resource_name()),
            (None, Some(c)) => (Per::Command, c.as_str().to_owned()),
            (None, None) => (Per::All, ALL_SCOPE.to_owned()),
        };
        let (sort, range) = match q.completed {
            Some(r) => (SortBy::Completed, r),
            None => (SortBy::Started, q.started.unwrap_or_default()),
        };
        let lo = range.after.unwrap_or(i64::MIN);
        let hi = range.before.unwrap_or(i64::MAX);
        let lo_s = lo.to_string();
        let hi_s = hi.to_string();
        let fingerprint = fingerprint(&[
            index_table(per, sort),
            &key,
            if q.ascending { "asc" } else { "desc" },
            &lo_s,
            &hi_s,
        ]);
        Self {
            per,
            sort,
            key,
            width: widths.of(per),
            lo,
            hi,
            ascending: q.ascending,
            fingerprint,
        }
    }

    fn scope(&self) -> String {
        bucket_scope(self.per, self.sort, &self.key)
    }
}

fn in_range(r: &Option<TimeRange>, t: TimestampMs) -> bool {
    r.as_ref().is_none_or(|r| r.contains(t))
}

/// Every filter of the query, applied to a row read from a listing table.
fn matches(q: &ExecutionQuery, e: &Execution) -> bool {
    q.command_id.as_ref().is_none_or(|c| &e.command_id == c)
        && q.target.as_ref().is_none_or(|t| &e.target == t)
        && (q.statuses.is_empty() || q.statuses.contains(&e.status))
        && in_range(&q.started, e.started_at)
        && q.completed
            .as_ref()
            .is_none_or(|r| e.completed_at.is_some_and(|c| r.contains(c)))
}

/// Rows of one round trip, and where the partition continues.
struct Fetched {
    rows: Vec<Vec<u8>>,
    more: Option<Vec<u8>>,
}

type WriteFuture<'a> = Pin<Box<dyn Future<Output = PortResult<()>> + Send + 'a>>;

// ---- the adapter ----------------------------------------------------------------------------

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
            // Schema agreement is awaited explicitly after the DDL below; the automatic
            // wait after every schema change does not work against the CQL test server.
            .auto_await_schema_agreement(false)
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
        let dialect = Self::detect_dialect(&session, &ks).await?;
        let st = Statements::prepare(&session, statement_texts(&ks, dialect)).await?;
        let buckets = Self::settle_settings(&session, &ks, config.buckets).await?;
        tracing::info!(keyspace = %ks, ?dialect, ?buckets, "ScyllaDB read model ready");
        Ok(Arc::new(Self {
            session,
            keyspace: ks,
            dialect,
            buckets,
            write_concurrency: config.write_concurrency.max(1),
            clock: config.clock,
            st,
            buckets_written: Mutex::new(HashMap::new()),
        }))
    }

    /// What the connected server understands.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The bucket widths in use (the ones stored when the keyspace was created).
    pub fn bucket_widths(&self) -> BucketWidths {
        self.buckets
    }

    /// The keyspace, as stored (lower case).
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Full when the server counted the bind markers of a `USING TTL ? AND TIMESTAMP ?`
    /// clause (it parsed it), Limited when it did not.
    async fn detect_dialect(session: &Session, ks: &str) -> PortResult<Dialect> {
        let cql = execution_upsert_cql(ks, Dialect::Full);
        let probe = session
            .prepare(cql.as_str())
            .await
            .map_err(|e| prepare_error(&cql, e))?;
        Ok(match probe.get_variable_col_specs().len() {
            5 => Dialect::Full,
            3 => Dialect::Limited,
            n => {
                return Err(PortError::Backend(format!(
                    "the server reports {n} bind markers for `{cql}` (expected 5, or 3 from a \
                     server that ignores USING clauses)"
                )));
            }
        })
    }

    /// The bucket widths: the stored ones, or `wanted` (stored now) on a new keyspace.
    async fn settle_settings(
        session: &Session,
        ks: &str,
        wanted: BucketWidths,
    ) -> PortResult<BucketWidths> {
        let get = prepare(
            session,
            format!("SELECT value FROM {ks}.settings WHERE name = ?"),
        )
        .await?;
        let put = prepare(
            session,
            format!("INSERT INTO {ks}.settings (name, value) VALUES (?, ?)"),
        )
        .await?;
        let read = |name: &'static str| {
            let get = &get;
            async move {
                let res = session
                    .execute_unpaged(get, (name,))
                    .await
                    .map_err(|e| exec_error("reading settings", e))?;
                let rows = res
                    .into_rows_result()
                    .map_err(|e| rows_error("settings", e))?;
                rows.maybe_first_row::<(i64,)>()
                    .map(|r| r.map(|(v,)| v))
                    .map_err(|e| rows_error("settings", e))
            }
        };
        let fields = [
            ("schema_version", SCHEMA_VERSION),
            ("bucket_target_ms", wanted.target_ms),
            ("bucket_command_ms", wanted.command_ms),
            ("bucket_all_ms", wanted.all_ms),
        ];
        let mut got = Vec::with_capacity(fields.len());
        for (name, value) in fields {
            let v = match read(name).await? {
                Some(v) => v,
                None => {
                    // First connect to this keyspace. Concurrent first connects must agree
                    // on the widths (they come from the same deployment's config).
                    session
                        .execute_unpaged(&put, (name, value))
                        .await
                        .map_err(|e| exec_error("writing settings", e))?;
                    value
                }
            };
            got.push(v);
        }
        if got[0] != SCHEMA_VERSION {
            return Err(PortError::Backend(format!(
                "keyspace {ks} has schema version {} but this build uses {SCHEMA_VERSION}",
                got[0]
            )));
        }
        let stored = BucketWidths {
            target_ms: got[1],
            command_ms: got[2],
            all_ms: got[3],
        };
        if stored.target_ms <= 0 || stored.command_ms <= 0 || stored.all_ms <= 0 {
            return Err(PortError::Corrupt(format!(
                "keyspace {ks} stores invalid bucket widths {stored:?}"
            )));
        }
        if stored != wanted {
            tracing::info!(
                keyspace = %ks,
                ?stored,
                ?wanted,
                "using the bucket widths stored when the keyspace was created"
            );
        }
        Ok(stored)
    }

    fn exec<'a>(
        &'a self,
        what: &'static str,
        st: &'a PreparedStatement,
        values: Vec<CqlValue>,
    ) -> WriteFuture<'a> {
        Box::pin(async move {
            self.session
                .execute_unpaged(st, values)
                .await
                .map(|_| ())
                .map_err(|e| exec_error(what, e))
        })
    }

    /// Values plus `TTL ?, TIMESTAMP ?` (full dialect).
    fn with_ttl(&self, mut values: Vec<CqlValue>, ttl_secs: i32, ts: i64) -> Vec<CqlValue> {
        if self.dialect == Dialect::Full {
            values.push(CqlValue::Int(ttl_secs));
            values.push(CqlValue::BigInt(ts));
        }
        values
    }

    /// `TIMESTAMP ?` first (deletes: `USING` precedes `WHERE`), then the values.
    fn ts_first(&self, ts: i64, values: Vec<CqlValue>) -> Vec<CqlValue> {
        match self.dialect {
            Dialect::Full => std::iter::once(CqlValue::BigInt(ts))
                .chain(values)
                .collect(),
            Dialect::Limited => values,
        }
    }

    /// Values plus `TIMESTAMP ?` (full dialect).
    fn ts_last(&self, mut values: Vec<CqlValue>, ts: i64) -> Vec<CqlValue> {
        if self.dialect == Dialect::Full {
            values.push(CqlValue::BigInt(ts));
        }
        values
    }

    /// The CQL TTL of a record expiring at `time_to_live`, `None` when already expired.
    fn ttl_secs(&self, time_to_live: TimestampMs) -> Option<i32> {
        let left_ms = time_to_live.saturating_sub(self.clock.now_ms());
        if left_ms <= 0 {
            return None;
        }
        let secs = (left_ms.saturating_add(999) / 1000).min(MAX_TTL_SECS);
        i32::try_from(secs).ok()
    }

    /// The index rows of `e`: (slot, partition key, bucket, sort time).
    fn index_rows(&self, e: &Execution) -> Vec<(usize, String, i64, i64)> {
        let mut rows = Vec::with_capacity(6);
        for (per, sort) in INDEXES {
            let t = match sort {
                SortBy::Started => e.started_at,
                SortBy::Completed => match e.completed_at {
                    Some(c) => c,
                    None => continue,
                },
            };
            rows.push((
                index_slot(per, sort),
                index_key(per, e),
                bucket_start(t, self.buckets.of(per)),
                t,
            ));
        }
        rows
    }

    /// The primary key of `e`'s `executions_by_token` row, `None` when it has no client token.
    fn token_row_key(e: &Execution) -> Option<Vec<CqlValue>> {
        let token = e.client_token.as_ref()?;
        Some(vec![
            CqlValue::Text(e.target.kind.resource().to_owned()),
            CqlValue::Text(e.target.id.clone()),
            CqlValue::Text(token.clone()),
            CqlValue::BigInt(e.started_at),
            CqlValue::Text(e.execution_id.as_str().to_owned()),
        ])
    }

    /// The writes of one execution upsert (nothing when it has already expired).
    fn upsert_execution<'a>(&'a self, e: &'a Execution) -> PortResult<Vec<WriteFuture<'a>>> {
        let ttl = match (self.dialect, self.ttl_secs(e.time_to_live)) {
            (Dialect::Full, None) => return Ok(Vec::new()),
            (_, ttl) => ttl.unwrap_or(0),
        };
        let seq = to_i64(e.seq, "seq")?;
        let id = e.execution_id.as_str();
        let data = encode_json("execution", id, e)?;
        let mut out = Vec::with_capacity(15);
        // Its key never changes, but it is rewritten with every upsert, versioned and expiring
        // like the execution's other rows, so replays and out-of-order batches are harmless.
        if let Some(key) = Self::token_row_key(e) {
            out.push(self.exec(
                "writing an execution's client-token row",
                &self.st.upsert_token,
                self.with_ttl(key, ttl, seq),
            ));
        }
        out.push(self.exec(
            "writing an execution",
            &self.st.upsert_execution,
            self.with_ttl(
                vec![
                    CqlValue::Text(id.to_owned()),
                    CqlValue::BigInt(seq),
                    CqlValue::Blob(data.clone()),
                ],
                ttl,
                seq,
            ),
        ));
        for (slot, key, bucket, t) in self.index_rows(e) {
            let (per, sort) = INDEXES[slot];
            if let Some(f) = self.upsert_bucket(bucket_scope(per, sort, &key), bucket, e, ttl) {
                out.push(f);
            }
            out.push(self.exec(
                "writing an execution listing row",
                &self.st.index[slot].upsert,
                self.with_ttl(
                    vec![
                        CqlValue::Text(key),
                        CqlValue::BigInt(bucket),
                        CqlValue::BigInt(t),
                        CqlValue::Text(id.to_owned()),
                        CqlValue::Blob(data.clone()),
                    ],
                    ttl,
                    seq,
                ),
            ));
        }
        Ok(out)
    }

    /// Records that `(scope, bucket)` holds rows until `e.time_to_live`, unless this process
    /// already did for a time at least as late. The row's write timestamp is that time (µs),
    /// so the latest-expiring write wins, and its TTL ends then.
    fn upsert_bucket<'a>(
        &'a self,
        scope: String,
        bucket: i64,
        e: &Execution,
        ttl: i32,
    ) -> Option<WriteFuture<'a>> {
        let until = e.time_to_live;
        {
            let written = self
                .buckets_written
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if written
                .get(&(scope.clone(), bucket))
                .is_some_and(|t| *t >= until)
            {
                return None;
            }
        }
        let values = self.with_ttl(
            vec![CqlValue::Text(scope.clone()), CqlValue::BigInt(bucket)],
            ttl,
            until.saturating_mul(1000),
        );
        Some(Box::pin(async move {
            self.session
                .execute_unpaged(&self.st.upsert_bucket, values)
                .await
                .map_err(|err| exec_error("writing an execution bucket", err))?;
            let mut written = self
                .buckets_written
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Bounded: forgetting only costs a rewrite of a bucket row.
            if written.len() >= 100_000 {
                written.clear();
            }
            let slot = written.entry((scope, bucket)).or_insert(until);
            *slot = (*slot).max(until);
            Ok(())
        }))
    }

    /// The writes that delete the listing rows and the client-token row of `e` (a stored
    /// version).
    fn delete_listing_rows<'a>(&'a self, e: &Execution) -> Vec<WriteFuture<'a>> {
        let mut out = Vec::with_capacity(7);
        if let Some(key) = Self::token_row_key(e) {
            out.push(self.exec(
                "deleting an execution's client-token row",
                &self.st.delete_token,
                self.ts_first(DELETE_TIMESTAMP, key),
            ));
        }
        for (slot, key, bucket, t) in self.index_rows(e) {
            out.push(self.exec(
                "deleting an execution listing row",
                &self.st.index[slot].delete,
                self.ts_first(
                    DELETE_TIMESTAMP,
                    vec![
                        CqlValue::Text(key),
                        CqlValue::BigInt(bucket),
                        CqlValue::BigInt(t),
                        CqlValue::Text(e.execution_id.as_str().to_owned()),
                    ],
                ),
            ));
        }
        out
    }

    fn delete_execution_by_id<'a>(&'a self, id: &ExecutionId) -> WriteFuture<'a> {
        self.exec(
            "deleting an execution",
            &self.st.delete_execution,
            self.ts_first(
                DELETE_TIMESTAMP,
                vec![CqlValue::Text(id.as_str().to_owned())],
            ),
        )
    }

    /// Command cells are versioned by `last_updated_at`, in µs.
    fn command_ts(c: &Command) -> i64 {
        c.last_updated_at.saturating_mul(1000)
    }

    fn command_scopes(c: &Command) -> [String; 2] {
        [ALL_SCOPE.to_owned(), format!("ns:{}", c.namespace)]
    }

    fn upsert_command<'a>(&'a self, c: &'a Command) -> PortResult<Vec<WriteFuture<'a>>> {
        let id = c.command_id.as_str();
        let data = encode_json("command", id, c)?;
        let ts = Self::command_ts(c);
        let mut out = vec![self.exec(
            "writing a command",
            &self.st.upsert_command,
            self.ts_last(
                vec![CqlValue::Text(id.to_owned()), CqlValue::Blob(data.clone())],
                ts,
            ),
        )];
        for scope in Self::command_scopes(c) {
            out.push(self.exec(
                "writing a command listing row",
                &self.st.upsert_command_row,
                self.ts_last(
                    vec![
                        CqlValue::Text(scope),
                        CqlValue::BigInt(c.created_at),
                        CqlValue::Text(id.to_owned()),
                        CqlValue::Blob(data.clone()),
                    ],
                    ts,
                ),
            ));
        }
        Ok(out)
    }

    /// Deletes `stored` just above its version: older versions replayed later stay hidden, a
    /// command re-created later with the same id does not.
    fn delete_command_rows<'a>(&'a self, stored: &Command) -> Vec<WriteFuture<'a>> {
        let ts = Self::command_ts(stored).saturating_add(999);
        let id = stored.command_id.as_str();
        let mut out = vec![self.exec(
            "deleting a command",
            &self.st.delete_command,
            self.ts_first(ts, vec![CqlValue::Text(id.to_owned())]),
        )];
        for scope in Self::command_scopes(stored) {
            out.push(self.exec(
                "deleting a command listing row",
                &self.st.delete_command_row,
                self.ts_first(
                    ts,
                    vec![
                        CqlValue::Text(scope),
                        CqlValue::BigInt(stored.created_at),
                        CqlValue::Text(id.to_owned()),
                    ],
                ),
            ));
        }
        out
    }

    /// Runs `writes` with at most `write_concurrency` in flight; fails with the first error.
    async fn run_writes(&self, writes: Vec<WriteFuture<'_>>) -> PortResult<()> {
        futures::stream::iter(writes)
            .buffer_unordered(self.write_concurrency)
            .try_collect::<()>()
            .await
    }

    /// One round trip: at most `page_size` rows of `st` from `state`.
    async fn fetch(
        &self,
        what: &'static str,
        st: &PreparedStatement,
        values: Vec<CqlValue>,
        page_size: usize,
        state: Option<Vec<u8>>,
    ) -> PortResult<Fetched> {
        let mut st = st.clone();
        st.set_page_size(i32::try_from(page_size.max(1)).unwrap_or(i32::MAX));
        let resumed = state.is_some();
        let state = match state {
            Some(s) => PagingState::new_from_raw_bytes(s),
            None => PagingState::start(),
        };
        let (res, more) = self
            .session
            .execute_single_page(&st, values, state)
            .await
            .map_err(|e| match e {
                // A forged or corrupted paging state in a token.
                ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                    DbError::Invalid | DbError::ProtocolError,
                    ref m,
                )) if resumed => {
                    invalid_page_token(format!("the server refused its paging state: {m}"))
                }
                e => exec_error(what, e),
            })?;
        let rows = res.into_rows_result().map_err(|e| rows_error(what, e))?;
        let rows = rows
            .rows::<(Vec<u8>,)>()
            .map_err(|e| rows_error(what, e))?
            .map(|r| r.map(|(data,)| data))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| rows_error(what, e))?;
        let more = match more {
            PagingStateResponse::HasMorePages { state } => {
                state.as_bytes_slice().map(|s| s.to_vec())
            }
            PagingStateResponse::NoMorePages => None,
        };
        Ok(Fetched { rows, more })
    }

    /// The next bucket of `plan`'s partition chain after `after` (exclusive; `None`: the
    /// first), in the plan's direction, within its range.
    async fn next_bucket(
        &self,
        plan: &ExecutionPlan,
        after: Option<i64>,
    ) -> PortResult<Option<i64>> {
        let mut lo = bucket_start(plan.lo, plan.width);
        let mut hi = bucket_start(plan.hi, plan.width);
        match (after, plan.ascending) {
            (None, _) => {}
            (Some(b), true) => lo = lo.max(b.saturating_add(1)),
            (Some(b), false) => hi = hi.min(b.saturating_sub(1)),
        }
        if lo > hi {
            return Ok(None);
        }
        let scope = plan.scope();
        match self.dialect {
            Dialect::Full => {
                let st = if plan.ascending {
                    &self.st.next_bucket_asc
                } else {
                    &self.st.next_bucket_desc
                };
                let res = self
                    .session
                    .execute_unpaged(
                        st,
                        vec![
                            CqlValue::Text(scope),
                            CqlValue::BigInt(lo),
                            CqlValue::BigInt(hi),
                        ],
                    )
                    .await
                    .map_err(|e| exec_error("finding the next bucket", e))?;
                let rows = res
                    .into_rows_result()
                    .map_err(|e| rows_error("buckets", e))?;
                rows.maybe_first_row::<(i64,)>()
                    .map(|r| r.map(|(b,)| b))
                    .map_err(|e| rows_error("buckets", e))
            }
            Dialect::Limited => {
                // No slices or ordering on that server: read the scope's buckets and pick.
                let mut best: Option<i64> = None;
                let mut state = None;
                loop {
                    let res = {
                        let mut st = self.st.next_bucket_desc.clone();
                        st.set_page_size(1000);
                        let paging = match state.take() {
                            Some(s) => PagingState::new_from_raw_bytes(s),
                            None => PagingState::start(),
                        };
                        self.session
                            .execute_single_page(&st, vec![CqlValue::Text(scope.clone())], paging)
                            .await
                            .map_err(|e| exec_error("reading buckets", e))?
                    };
                    let (res, more) = res;
                    let rows = res
                        .into_rows_result()
                        .map_err(|e| rows_error("buckets", e))?;
                    for row in rows
                        .rows::<(i64,)>()
                        .map_err(|e| rows_error("buckets", e))?
                    {
                        let (b,) = row.map_err(|e| rows_error("buckets", e))?;
                        if b < lo || b > hi {
                            continue;
                        }
                        best = Some(match best {
                            None => b,
                            Some(x) if plan.ascending => x.min(b),
                            Some(x) => x.max(b),
                        });
                    }
                    match more {
                        PagingStateResponse::HasMorePages { state: s } => {
                            state = s.as_bytes_slice().map(|s| s.to_vec());
                            if state.is_none() {
                                break;
                            }
                        }
                        PagingStateResponse::NoMorePages => break,
                    }
                }
                Ok(best)
            }
        }
    }

    fn page_values(&self, plan: &ExecutionPlan, bucket: i64) -> Vec<CqlValue> {
        let mut v = vec![CqlValue::Text(plan.key.clone()), CqlValue::BigInt(bucket)];
        if self.dialect == Dialect::Full {
            v.push(CqlValue::BigInt(plan.lo));
            v.push(CqlValue::BigInt(plan.hi));
        }
        v
    }

    /// Point reads in parallel, in input order: each id is its own partition (an `IN` over
    /// many partitions would make one coordinator do it all).
    async fn stored_executions(
        &self,
        ids: impl Iterator<Item = ExecutionId> + Send,
    ) -> PortResult<Vec<Option<Execution>>> {
        futures::stream::iter(ids)
            .map(|id| async move { self.stored_execution(&id).await })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    /// The `(started_at, execution_id)` of every `executions_by_token` row of `target` and
    /// `client_token`, newest first (sorted here: the test server ignores clustering order).
    async fn token_rows(
        &self,
        target: &Target,
        client_token: &str,
    ) -> PortResult<Vec<(i64, String)>> {
        let values = vec![
            CqlValue::Text(target.kind.resource().to_owned()),
            CqlValue::Text(target.id.clone()),
            CqlValue::Text(client_token.to_owned()),
        ];
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        loop {
            let (res, more) = self
                .session
                .execute_single_page(&self.st.tokens_of, values.clone(), paging)
                .await
                .map_err(|e| exec_error("reading client-token rows", e))?;
            let rows = res
                .into_rows_result()
                .map_err(|e| rows_error("client-token rows", e))?;
            for row in rows
                .rows::<(i64, String)>()
                .map_err(|e| rows_error("client-token rows", e))?
            {
                out.push(row.map_err(|e| rows_error("client-token rows", e))?);
            }
            match more {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => break,
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        Ok(out)
    }

    async fn stored_execution(&self, id: &ExecutionId) -> PortResult<Option<Execution>> {
        let res = self
            .session
            .execute_unpaged(
                &self.st.get_execution,
                vec![CqlValue::Text(id.as_str().to_owned())],
            )
            .await
            .map_err(|e| exec_error("reading an execution", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("execution", e))?;
        match rows
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(|e| rows_error("execution", e))?
        {
            Some((data,)) => decode_json(&format!("execution {id}"), &data).map(Some),
            None => Ok(None),
        }
    }
}

/// Per execution id, the write of the batch that wins: the highest `seq` of its upserts,
/// and a delete over any upsert (ids are never reused).
fn winning_execution_writes(writes: &[ExecutionWrite]) -> Vec<&ExecutionWrite> {
    let mut order: Vec<&ExecutionId> = Vec::new();
    let mut win: HashMap<&ExecutionId, &ExecutionWrite> = HashMap::new();
    for w in writes {
        let id = match w {
            ExecutionWrite::Upsert(e) => &e.execution_id,
            ExecutionWrite::Delete(id) => id,
        };
        match win.get(id) {
            None => {
                order.push(id);
                win.insert(id, w);
            }
            Some(ExecutionWrite::Delete(_)) => {}
            Some(ExecutionWrite::Upsert(old)) => {
                let replace = match w {
                    ExecutionWrite::Delete(_) => true,
                    ExecutionWrite::Upsert(new) => new.seq > old.seq,
                };
                if replace {
                    win.insert(id, w);
                }
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| win.get(id).copied())
        .collect()
}

#[async_trait::async_trait]
impl ReadModel for ScyllaReadModel {
    async fn commit(&self, batch: ProjectionBatch) -> PortResult<()> {
        // Deletes run first, then upserts, then the position. With write timestamps the
        // order would not matter; without them (the limited dialect) a command deleted and
        // re-created in one batch must end up re-created.
        let mut deletes = Vec::new();
        let mut upserts = Vec::new();

        // Commands: the last write of each id wins; a delete anywhere in the batch removes
        // the stored version (its listing rows and timestamp come from it).
        let mut last_command: HashMap<&CommandId, &CommandWrite> = HashMap::new();
        let mut command_order = Vec::new();
        let mut command_deletes = Vec::new();
        for w in &batch.commands {
            let id = match w {
                CommandWrite::Upsert(c) => &c.command_id,
                CommandWrite::Delete(id) => {
                    if !command_deletes.contains(&id) {
                        command_deletes.push(id);
                    }
                    id
                }
            };
            if last_command.insert(id, w).is_none() {
                command_order.push(id);
            }
        }
        let mut stored_commands = Vec::new();
        for id in command_deletes {
            if let Some(stored) = self.get_command(id).await? {
                stored_commands.push(stored);
            }
        }
        for stored in &stored_commands {
            deletes.extend(self.delete_command_rows(stored));
        }
        for id in &command_order {
            if let Some(CommandWrite::Upsert(c)) = last_command.get(id) {
                upserts.extend(self.upsert_command(c)?);
            }
        }

        // Executions: per id, the highest seq of the batch, or its delete.
        let winners = winning_execution_writes(&batch.executions);
        let mut deleted = Vec::new();
        for w in &winners {
            match w {
                ExecutionWrite::Upsert(e) => upserts.extend(self.upsert_execution(e)?),
                ExecutionWrite::Delete(id) => deleted.push(id),
            }
        }
        // A deleted execution's listing rows: from the stored version and from any upsert of
        // it in this batch.
        let deleted_ids: Vec<ExecutionId> = deleted.iter().map(|id| (*id).clone()).collect();
        let stored = self.stored_executions(deleted_ids.into_iter()).await?;
        let mut versions: Vec<Execution> = stored.into_iter().flatten().collect();
        for w in &batch.executions {
            if let ExecutionWrite::Upsert(e) = w
                && deleted.contains(&&e.execution_id)
            {
                versions.push(e.clone());
            }
        }
        for e in &versions {
            deletes.extend(self.delete_listing_rows(e));
        }
        for id in &deleted {
            deletes.push(self.delete_execution_by_id(id));
        }
        self.run_writes(deletes).await?;
        self.run_writes(upserts).await?;

        // Only now: a crash before this line replays the batch, which changes nothing.
        let next = to_i64(batch.next_offset, "next_offset")?;
        let partition = i32::try_from(batch.partition).map_err(|_| {
            PortError::Backend(format!(
                "partition {} exceeds the CQL int range",
                batch.partition
            ))
        })?;
        self.exec(
            "writing the projector position",
            &self.st.upsert_position,
            self.ts_last(vec![CqlValue::Int(partition), CqlValue::BigInt(next)], next),
        )
        .await
    }

    async fn position(&self, partition: u32) -> PortResult<u64> {
        let partition = i32::try_from(partition)
            .map_err(|_| PortError::Backend(format!("partition {partition} out of range")))?;
        let res = self
            .session
            .execute_unpaged(&self.st.get_position, vec![CqlValue::Int(partition)])
            .await
            .map_err(|e| exec_error("reading the projector position", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("position", e))?;
        match rows
            .maybe_first_row::<(i64,)>()
            .map_err(|e| rows_error("position", e))?
        {
            Some((n,)) => {
                u64::try_from(n).map_err(|_| PortError::Corrupt(format!("negative position {n}")))
            }
            None => Ok(0),
        }
    }

    async fn get_command(&self, id: &CommandId) -> PortResult<Option<Command>> {
        let res = self
            .session
            .execute_unpaged(
                &self.st.get_command,
                vec![CqlValue::Text(id.as_str().to_owned())],
            )
            .await
            .map_err(|e| exec_error("reading a command", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("command", e))?;
        match rows
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(|e| rows_error("command", e))?
        {
            Some((data,)) => decode_json(&format!("command {id}"), &data).map(Some),
            None => Ok(None),
        }
    }

    async fn list_commands(&self, query: &CommandQuery) -> PortResult<Page<Command>> {
        let scope = match &query.namespace {
            Some(ns) => format!("ns:{ns}"),
            None => ALL_SCOPE.to_owned(),
        };
        let fp = fingerprint(&[
            "commands_by_created",
            &scope,
            if query.ascending { "asc" } else { "desc" },
        ]);
        let mut state = match &query.page_token {
            Some(t) => decode_token(COMMAND_TOKEN, fp, t)?.state,
            None => None,
        };
        let st = if query.ascending {
            &self.st.commands_asc
        } else {
            &self.st.commands_desc
        };
        let limit = effective_page_size(query.page_size) as usize;
        let mut items = Vec::with_capacity(limit.min(128));
        let (mut scanned, mut fetches) = (0usize, 0usize);
        let more = loop {
            let got = self
                .fetch(
                    "listing commands",
                    st,
                    vec![CqlValue::Text(scope.clone())],
                    limit - items.len(),
                    state.take(),
                )
                .await?;
            fetches += 1;
            scanned += got.rows.len();
            for data in got.rows {
                let c: Command = decode_json("command", &data)?;
                let keep = query.namespace.as_ref().is_none_or(|n| &c.namespace == n)
                    && query
                        .parameter_name
                        .as_ref()
                        .is_none_or(|p| c.parameters.iter().any(|x| &x.name == p));
                if keep {
                    items.push(c);
                }
            }
            state = got.more;
            if state.is_none()
                || items.len() >= limit
                || scanned >= MAX_ROWS_SCANNED
                || fetches >= MAX_FETCHES
            {
                break state;
            }
        };
        Ok(Page {
            items,
            next_token: more.map(|s| {
                encode_token(
                    COMMAND_TOKEN,
                    fp,
                    &Cursor {
                        bucket: 0,
                        state: Some(s),
                    },
                )
            }),
        })
    }

    async fn get_execution(&self, id: &ExecutionId) -> PortResult<Option<Execution>> {
        self.stored_execution(id).await
    }

    async fn get_executions(&self, ids: &[ExecutionId]) -> PortResult<Vec<Execution>> {
        Ok(self
            .stored_executions(ids.iter().cloned())
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    async fn list_executions(&self, query: &ExecutionQuery) -> PortResult<Page<Execution>> {
        let plan = ExecutionPlan::new(query, &self.buckets);
        let limit = effective_page_size(query.page_size) as usize;
        let mut cursor = match &query.page_token {
            Some(t) => {
                let c = decode_token(EXECUTION_TOKEN, plan.fingerprint, t)?;
                if c.bucket < bucket_start(plan.lo, plan.width)
                    || c.bucket > bucket_start(plan.hi, plan.width)
                    || c.bucket.rem_euclid(plan.width) != 0
                {
                    return Err(invalid_page_token("bucket outside the query's range"));
                }
                Some(c)
            }
            None => self.next_bucket(&plan, None).await?.map(|bucket| Cursor {
                bucket,
                state: None,
            }),
        };
        let slot = index_slot(plan.per, plan.sort);
        let st = if plan.ascending {
            &self.st.index[slot].page_asc
        } else {
            &self.st.index[slot].page_desc
        };
        let mut items = Vec::with_capacity(limit.min(128));
        let (mut scanned, mut fetches) = (0usize, 0usize);
        while let Some(c) = cursor.take() {
            let got = self
                .fetch(
                    "listing executions",
                    st,
                    self.page_values(&plan, c.bucket),
                    limit - items.len(),
                    c.state,
                )
                .await?;
            fetches += 1;
            scanned += got.rows.len();
            for data in got.rows {
                let e: Execution = decode_json("execution", &data)?;
                if matches(query, &e) {
                    items.push(e);
                }
            }
            cursor = match got.more {
                Some(state) => Some(Cursor {
                    bucket: c.bucket,
                    state: Some(state),
                }),
                None => self
                    .next_bucket(&plan, Some(c.bucket))
                    .await?
                    .map(|bucket| Cursor {
                        bucket,
                        state: None,
                    }),
            };
            if items.len() >= limit || scanned >= MAX_ROWS_SCANNED || fetches >= MAX_FETCHES {
                break;
            }
        }
        Ok(Page {
            items,
            next_token: cursor.map(|c| encode_token(EXECUTION_TOKEN, plan.fingerprint, &c)),
        })
    }

    async fn find_execution_by_token(
        &self,
        target: &Target,
        client_token: &str,
    ) -> PortResult<Option<Execution>> {
        // Newest first; `executions` decides whether an execution still exists (a token row
        // can outlive its execution: a delete this adapter could not see, a TTL rounding).
        for (_, id) in self.token_rows(target, client_token).await? {
            let id = ExecutionId::parse(id.as_str()).map_err(|e| {
                PortError::Corrupt(format!("client-token row holds execution id {id:?}: {e}"))
            })?;
            if let Some(e) = self.stored_execution(&id).await?
                && e.target == *target
                && e.client_token.as_deref() == Some(client_token)
            {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    async fn find_executions_by_tokens(
        &self,
        keys: &[(Target, String)],
    ) -> PortResult<Vec<Option<Execution>>> {
        // Concurrently: a batch's lookups cost about one round trip, not one per key.
        futures::future::try_join_all(
            keys.iter()
                .map(|(target, token)| self.find_execution_by_token(target, token)),
        )
        .await
    }

    async fn purge_expired(&self, now: TimestampMs) -> PortResult<u64> {
        if self.dialect == Dialect::Full {
            // Every execution row carries its TTL: ScyllaDB has already removed them.
            return Ok(0);
        }
        // A server without TTLs: scan and delete (fine for the test server it exists for).
        let mut state = None;
        let mut purged = 0u64;
        loop {
            let got = self
                .fetch(
                    "scanning executions",
                    &self.st.scan_executions,
                    Vec::new(),
                    500,
                    state.take(),
                )
                .await?;
            let mut expired = Vec::new();
            for data in got.rows {
                let e: Execution = decode_json("execution", &data)?;
                if e.time_to_live < now {
                    expired.push(e);
                }
            }
            let writes: Vec<_> = expired
                .iter()
                .flat_map(|e| {
                    let mut w = self.delete_listing_rows(e);
                    w.push(self.delete_execution_by_id(&e.execution_id));
                    w
                })
                .collect();
            self.run_writes(writes).await?;
            purged += expired.len() as u64;
            match got.more {
                Some(s) => state = Some(s),
                None => return Ok(purged),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetcmd_domain::ExecutionStatus;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let c = Cursor {
            bucket: -3_600_000,
            state: Some(vec![0, 1, 2, 255]),
        };
        let t = encode_token(EXECUTION_TOKEN, 42, &c);
        assert_eq!(decode_token(EXECUTION_TOKEN, 42, &t), Ok(c.clone()));
        let start = Cursor {
            bucket: 7,
            state: None,
        };
        let t2 = encode_token(EXECUTION_TOKEN, 1, &start);
        assert_eq!(decode_token(EXECUTION_TOKEN, 1, &t2), Ok(start));
        for (kind, fp, token) in [
            (COMMAND_TOKEN, 42, t.as_str()),
            (EXECUTION_TOKEN, 43, t.as_str()),
            (EXECUTION_TOKEN, 42, "not a token!"),
            (EXECUTION_TOKEN, 42, ""),
            (EXECUTION_TOKEN, 42, "Zm9v"),
        ] {
            let err = decode_token(kind, fp, token).expect_err(token);
            assert!(crate::is_invalid_page_token(&err), "{token}: {err}");
        }
    }

    #[test]
    fn buckets_floor_toward_minus_infinity() {
        assert_eq!(bucket_start(0, 10), 0);
        assert_eq!(bucket_start(19, 10), 10);
        assert_eq!(bucket_start(-1, 10), -10);
        // Open ranges use i64::MIN: the floor saturates instead of overflowing.
        assert_eq!(bucket_start(i64::MIN, 10), i64::MIN);
        assert_eq!(bucket_start(i64::MAX, 1_000), i64::MAX - i64::MAX % 1_000);
    }

    #[test]
    fn replication_is_quoted_and_validated() {
        assert_eq!(
            replication_cql(&Replication::Factor(3)).expect("rf"),
            "{'class' : 'NetworkTopologyStrategy', 'replication_factor' : 3}"
        );
        assert_eq!(
            replication_cql(&Replication::PerDatacenter(vec![("d'c1".into(), 2)])).expect("dc"),
            "{'class' : 'NetworkTopologyStrategy', 'd''c1' : 2}"
        );
        assert!(replication_cql(&Replication::Factor(0)).is_err());
        assert!(replication_cql(&Replication::PerDatacenter(vec![])).is_err());
        assert!(valid_keyspace("fleetcmd_1"));
        assert!(!valid_keyspace("1fleet"));
        assert!(!valid_keyspace("fleet-cmd"));
        assert!(!valid_keyspace(""));
    }

    fn execution(id: &str, seq: u64) -> Execution {
        let cmd = CommandId::parse("c").expect("command id");
        Execution {
            execution_id: ExecutionId::parse(id).expect("id"),
            command_id: cmd,
            target: fleetcmd_domain::Target::thing("t").expect("target"),
            status: ExecutionStatus::Created,
            status_reason: None,
            result: Default::default(),
            parameters: Default::default(),
            timeout_secs: 10,
            client_token: None,
            created_at: 1,
            last_updated_at: 1,
            started_at: 1,
            completed_at: None,
            time_to_live: 100,
            terminal: false,
            seq,
            request_fingerprint: 0,
        }
    }

    #[test]
    fn the_highest_seq_of_a_batch_wins_and_deletes_beat_upserts() {
        let a1 = ExecutionWrite::Upsert(execution("a", 1));
        let a3 = ExecutionWrite::Upsert(execution("a", 3));
        let a2 = ExecutionWrite::Upsert(execution("a", 2));
        let b1 = ExecutionWrite::Upsert(execution("b", 1));
        let b_del = ExecutionWrite::Delete(ExecutionId::parse("b").expect("id"));
        let b5 = ExecutionWrite::Upsert(execution("b", 5));
        let writes = vec![a1, a3.clone(), b1, a2, b_del.clone(), b5];
        let won = winning_execution_writes(&writes);
        assert_eq!(won, vec![&a3, &b_del]);
    }

    #[test]
    fn plans_pick_the_narrowest_partition_chain() {
        let widths = BucketWidths::default();
        let t = fleetcmd_domain::Target::thing("dev").expect("target");
        let c = CommandId::parse("cmd").expect("command");
        let both = ExecutionPlan::new(
            &ExecutionQuery {
                target: Some(t.clone()),
                command_id: Some(c.clone()),
                ..ExecutionQuery::default()
            },
            &widths,
        );
        assert_eq!((both.per, both.sort), (Per::Target, SortBy::Started));
        assert_eq!(both.key, "thing/dev");
        let done = ExecutionPlan::new(
            &ExecutionQuery {
                command_id: Some(c),
                completed: Some(TimeRange {
                    after: Some(5),
                    before: None,
                }),
                ..ExecutionQuery::default()
            },
            &widths,
        );
        assert_eq!((done.per, done.sort), (Per::Command, SortBy::Completed));
        assert_eq!((done.lo, done.hi), (5, i64::MAX));
        let all = ExecutionPlan::new(&ExecutionQuery::default(), &widths);
        assert_eq!((all.per, all.key.as_str()), (Per::All, ALL_SCOPE));
        assert_ne!(all.fingerprint, done.fingerprint);
    }

    /// The values each caller binds (see `upsert_execution`, `delete_listing_rows`,
    /// `page_values`, `next_bucket`, `upsert_command`, `commit`, `token_rows`...), per
    /// dialect.
    #[test]
    fn bind_markers_match_the_values_each_statement_gets() {
        let markers = |cql: &str| cql.matches('?').count();
        for (d, expected) in [
            (
                Dialect::Full,
                [
                    1, 0, 5, 2, 7, 5, 4, 4, 4, 3, 3, 1, 3, 2, 5, 4, 1, 1, 1, 3, 7, 6, 3,
                ],
            ),
            (
                Dialect::Limited,
                [
                    1, 0, 3, 1, 5, 4, 2, 2, 2, 1, 1, 1, 2, 1, 4, 3, 1, 1, 1, 2, 5, 5, 3,
                ],
            ),
        ] {
            let t = statement_texts("ks", d);
            for i in &t.index {
                let got = [&i.upsert, &i.delete, &i.page_desc, &i.page_asc].map(|c| markers(c));
                assert_eq!(
                    got,
                    [expected[4], expected[5], expected[6], expected[7]],
                    "{d:?}"
                );
            }
            let i = &t.index[0];
            let all = [
                &t.get_execution,
                &t.scan_executions,
                &t.upsert_execution,
                &t.delete_execution,
                &i.upsert,
                &i.delete,
                &i.page_desc,
                &i.page_asc,
                &t.upsert_bucket,
                &t.next_bucket_desc,
                &t.next_bucket_asc,
                &t.get_command,
                &t.upsert_command,
                &t.delete_command,
                &t.upsert_command_row,
                &t.delete_command_row,
                &t.commands_desc,
                &t.commands_asc,
                &t.get_position,
                &t.upsert_position,
                &t.upsert_token,
                &t.delete_token,
                &t.tokens_of,
            ];
            for (cql, want) in all.iter().zip(expected) {
                assert_eq!(markers(cql), want, "{d:?}: {cql}");
                let full_only = cql.contains("USING") || cql.contains("ORDER BY");
                assert!(!(full_only && d == Dialect::Limited), "{cql}");
            }
        }
        // The probe's two shapes are told apart by their marker counts.
        assert_eq!(markers(&execution_upsert_cql("ks", Dialect::Full)), 5);
        assert_eq!(markers(&execution_upsert_cql("ks", Dialect::Limited)), 3);
    }

    #[test]
    fn ddl_names_every_listing_table() {
        let ddl = schema_cql("ks", "{}").join("\n");
        for (per, sort) in INDEXES {
            assert!(ddl.contains(&format!("ks.{} (", index_table(per, sort))));
        }
        assert!(ddl.contains("ks.executions_by_token ("));
        assert_eq!(
            INDEXES
                .iter()
                .map(|(p, s)| index_slot(*p, *s))
                .collect::<Vec<_>>(),
            (0..6).collect::<Vec<_>>()
        );
    }
}
