//! The embedded store: the event log and the read model in ONE SQLite file.
//!
//! One writer connection, owned by a dedicated writer thread, performs every write, so
//! appends to a partition and projector commits are serialized without SQLite busy retries;
//! a small pool of reader connections serves reads concurrently (WAL mode lets readers run
//! beside the writer and see every committed transaction).
//!
//! Group commit: the writer thread takes every write queued at that moment (up to
//! [`MAX_GROUP`]) and runs them in ONE transaction, each under a savepoint of its own so a
//! failing write is rolled back alone. Nobody is answered before the group's COMMIT, so an
//! acknowledged write is as durable as before; but sixteen shard owners and the projector
//! now share a commit (and its WAL page writes) instead of paying one each.
//!
//! The event log keeps each partition's end offset in memory. It is advanced only after the
//! append's transaction committed, and reads never go past it, so a reader can never see a
//! record that `append` has not acknowledged. Waiters in `wait_for_records` are woken through
//! a [`Notify`] after every append.
//!
//! Page tokens are base64url of `kind|sort_time|id`; a token that does not decode is rejected
//! with [`crate::invalid_page_token`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use fleetcmd_domain::ports::{
    CommandQuery, CommandWrite, EventLog, ExecutionQuery, ExecutionWrite, LogRecord, Page,
    PortError, PortResult, ProjectionBatch, ReadModel,
};
use fleetcmd_domain::{Command, CommandId, Execution, ExecutionId, Target, TimestampMs};
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::{effective_page_size, invalid_page_token};

/// How far an acknowledged write survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: an acknowledged write survives a crash or kill of the
    /// process, but the last transactions may be lost if the machine loses power.
    #[default]
    Process,
    /// WAL with `synchronous=FULL`: every commit is fsynced; an acknowledged write survives an
    /// OS crash or power loss. Slower.
    Os,
}

/// How many reader connections the pool holds.
const READERS: usize = 4;
/// Most writes folded into one transaction by the writer thread.
pub const MAX_GROUP: usize = 512;
/// Writes queued for the writer thread (callers wait when it is full).
const WRITE_QUEUE: usize = 4096;
/// How long a connection waits for a lock held by another one (checkpoints, other processes).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Schema version recorded in `meta`; bump with a migration when the tables change.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS events (
    "partition" INTEGER NOT NULL,
    "offset"    INTEGER NOT NULL,
    key         TEXT NOT NULL,
    payload     BLOB NOT NULL,
    PRIMARY KEY ("partition", "offset")
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS positions (
    "partition" INTEGER PRIMARY KEY NOT NULL,
    next_offset INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY NOT NULL,
    namespace  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS commands_by_created ON commands (created_at, command_id);
CREATE INDEX IF NOT EXISTS commands_by_namespace ON commands (namespace, created_at, command_id);

CREATE TABLE IF NOT EXISTS command_parameters (
    command_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    PRIMARY KEY (command_id, name)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS executions (
    execution_id TEXT PRIMARY KEY NOT NULL,
    command_id   TEXT NOT NULL,
    target_kind  TEXT NOT NULL,
    target_id    TEXT NOT NULL,
    status       TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    completed_at INTEGER,
    time_to_live INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    data         TEXT NOT NULL,
    client_token TEXT
);
CREATE INDEX IF NOT EXISTS executions_by_command_started
    ON executions (command_id, started_at, execution_id);
CREATE INDEX IF NOT EXISTS executions_by_command_completed
    ON executions (command_id, completed_at, execution_id) WHERE completed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_by_target_started
    ON executions (target_kind, target_id, started_at, execution_id);
CREATE INDEX IF NOT EXISTS executions_by_target_completed
    ON executions (target_kind, target_id, completed_at, execution_id)
    WHERE completed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_by_started ON executions (started_at, execution_id);
CREATE INDEX IF NOT EXISTS executions_by_completed
    ON executions (completed_at, execution_id) WHERE completed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_by_ttl ON executions (time_to_live);
"#;

/// The event log and the read model in one SQLite file. Cheap to share: open once, hand out
/// the `Arc` as `Arc<dyn EventLog>` and `Arc<dyn ReadModel>`.
pub struct SqliteStore {
    shared: Arc<Shared>,
    /// To the writer thread, which owns the only connection that writes. Dropping the
    /// store closes the queue and so ends the thread.
    writes: mpsc::Sender<Box<dyn Job>>,
}

struct Shared {
    path: PathBuf,
    partitions: u32,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Per partition: the offset the next append gets. Stored only after the append's
    /// transaction committed, so everything below it is acknowledged and readable.
    ends: Vec<AtomicU64>,
    /// Woken after every append.
    appended: Notify,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .field("partitions", &self.shared.partitions)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`, creating its directory if needed.
    ///
    /// The partition count is recorded on creation; reopening with another count fails
    /// (`PortError::Backend`, naming both counts). `path` must be a file, not `:memory:`
    /// (the reader connections open it too). Blocking: call it at startup, or from
    /// `spawn_blocking`.
    pub fn open(path: &Path, partitions: u32, durability: Durability) -> PortResult<Arc<Self>> {
        let (shared, writer) = Self::open_inner(path, partitions, durability)?;
        let shared = Arc::new(shared);
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("fleetcmd-sqlite-writer".into())
            .spawn(move || writer_loop(&thread_shared, writer, queue))
            .map_err(|source| Error::Io {
                context: "spawning the SQLite writer thread".into(),
                source,
            })?;
        Ok(Arc::new(Self { shared, writes }))
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn open_inner(
        path: &Path,
        partitions: u32,
        durability: Durability,
    ) -> Result<(Shared, Connection)> {
        if partitions == 0 {
            return Err(Error::Config(
                "the partition count must be at least 1".into(),
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
        }
        let writer = Connection::open(path)?;
        let mode: String = writer.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Config(format!(
                "{} cannot use WAL journaling (got {mode})",
                path.display()
            )));
        }
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Os => "FULL",
        };
        writer.pragma_update(None, "synchronous", sync)?;
        writer.busy_timeout(BUSY_TIMEOUT)?;
        writer.set_prepared_statement_cache_capacity(64);
        writer.execute_batch(SCHEMA)?;
        migrate_client_token(&writer)?;

        let stored: Option<i64> = writer
            .query_row("SELECT value FROM meta WHERE key = 'partitions'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match stored {
            None => {
                writer.execute(
                    "INSERT INTO meta (key, value) VALUES ('partitions', ?1), ('schema_version', ?2)",
                    params![i64::from(partitions), SCHEMA_VERSION],
                )?;
            }
            Some(n) if n == i64::from(partitions) => {}
            Some(n) => {
                return Err(Error::Config(format!(
                    "{} was created with {n} partitions but is opened with {partitions}; \
                     the partition count is fixed for the life of the log",
                    path.display()
                )));
            }
        }

        let mut ends = Vec::with_capacity(partitions as usize);
        {
            let mut stmt =
                writer.prepare(r#"SELECT MAX("offset") FROM events WHERE "partition" = ?1"#)?;
            for p in 0..partitions {
                let max: Option<i64> = stmt.query_row([p], |r| r.get(0))?;
                ends.push(AtomicU64::new(max.map_or(0, |m| m as u64 + 1)));
            }
        }

        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.set_prepared_statement_cache_capacity(64);
            readers.push(Mutex::new(conn));
        }

        let shared = Shared {
            path: path.to_path_buf(),
            partitions,
            readers,
            next_reader: AtomicUsize::new(0),
            ends,
            appended: Notify::new(),
        };
        Ok((shared, writer))
    }

    fn check_partition(&self, partition: u32) -> PortResult<()> {
        if partition < self.shared.partitions {
            Ok(())
        } else {
            Err(PortError::Backend(format!(
                "partition {partition} out of range (the log has {})",
                self.shared.partitions
            )))
        }
    }

    fn end(&self, partition: u32) -> u64 {
        self.shared.ends[partition as usize].load(Ordering::Acquire)
    }

    /// Runs `f` on the writer thread inside a group transaction and returns its result once
    /// the group has committed. `f` may run twice: when another write of its group fails,
    /// the group is rolled back and run again with a savepoint per write.
    async fn write<T, F>(&self, f: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnMut(&Shared, &Connection, &mut GroupEnds) -> Result<T> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(TypedJob {
            work: f,
            output: None,
            done,
        });
        let closed = || PortError::Unavailable("the SQLite writer thread has stopped".into());
        self.writes.send(job).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    /// Runs `f` on a pooled reader connection on the blocking pool.
    async fn read_with<T, F>(&self, f: F) -> PortResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared, &mut Connection) -> Result<T> + Send + 'static,
    {
        let shared = self.shared.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut conn = shared.reader();
            f(&shared, &mut conn)
        })
        .await;
        joined
            .map_err(Error::from)
            .and_then(|r| r)
            .map_err(PortError::from)
    }
}

impl Shared {
    /// A free reader connection, or (all busy) waits for one in round-robin order.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let n = self.readers.len();
        for i in 0..n {
            if let Ok(guard) = self.readers[(start + i) % n].try_lock() {
                return guard;
            }
        }
        self.readers[start % n]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

// ---- the writer thread ---------------------------------------------------------------------

/// Partition ends handed out by the current group: visible to later appends of the group,
/// published to [`Shared::ends`] only after the group committed.
#[derive(Default)]
struct GroupEnds {
    /// Ends of writes whose savepoint was released.
    group: HashMap<u32, u64>,
    /// Ends staged by the write running now (dropped if it fails).
    staged: Vec<(u32, u64)>,
}

impl GroupEnds {
    /// The offset the next append to `partition` gets.
    fn next(&self, shared: &Shared, partition: u32) -> u64 {
        if let Some(&(_, end)) = self.staged.iter().rev().find(|(p, _)| *p == partition) {
            return end;
        }
        self.group
            .get(&partition)
            .copied()
            .unwrap_or_else(|| shared.ends[partition as usize].load(Ordering::Acquire))
    }

    fn stage(&mut self, partition: u32, end: u64) {
        self.staged.push((partition, end));
    }
}

/// A write waiting for the writer thread.
trait Job: Send {
    /// Runs the write on the group's transaction.
    fn run(&mut self, shared: &Shared, conn: &Connection, ends: &mut GroupEnds) -> Result<()>;
    /// Answers the caller: `Ok` once the group committed, or the error.
    fn finish(self: Box<Self>, result: PortResult<()>);
}

struct TypedJob<T, F> {
    work: F,
    output: Option<T>,
    done: oneshot::Sender<PortResult<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnMut(&Shared, &Connection, &mut GroupEnds) -> Result<T> + Send,
{
    fn run(&mut self, shared: &Shared, conn: &Connection, ends: &mut GroupEnds) -> Result<()> {
        self.output = None;
        self.output = Some((self.work)(shared, conn, ends)?);
        Ok(())
    }

    fn finish(self: Box<Self>, result: PortResult<()>) {
        let this = *self;
        let answer = result.and_then(|()| {
            this.output
                .ok_or_else(|| PortError::Backend("a write finished without a result".into()))
        });
        // The caller may have given up (dropped its future); nothing to do then.
        let _ = this.done.send(answer);
    }
}

/// The writer thread: takes every queued write, runs them in one transaction, commits,
/// publishes the new partition ends, then answers. Ends when the store is dropped.
fn writer_loop(shared: &Shared, mut conn: Connection, mut queue: mpsc::Receiver<Box<dyn Job>>) {
    let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = queue.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        write_group(shared, &mut conn, &mut group);
    }
}

/// Runs one write of a group; a panic is that write's failure, not the writer thread's end.
fn run_job(
    job: &mut Box<dyn Job>,
    shared: &Shared,
    conn: &Connection,
    ends: &mut GroupEnds,
) -> Result<()> {
    std::panic::catch_unwind(AssertUnwindSafe(|| job.run(shared, conn, ends)))
        .map_err(|_| Error::Task("a write panicked".into()))?
}

/// Writes a group in one transaction. Every write first runs straight on the transaction;
/// should one fail, the whole transaction is rolled back and the group runs again with a
/// savepoint per write, so a failing write rolls back alone. (Savepoints on the common
/// path cost a copy of every page a write touches, ~5 % of all CPU under load.)
fn write_group(shared: &Shared, conn: &mut Connection, group: &mut Vec<Box<dyn Job>>) {
    // Answers every write of the group with `e`.
    fn fail_all(group: &mut Vec<Box<dyn Job>>, e: rusqlite::Error) {
        let e = PortError::from(Error::from(e));
        for job in group.drain(..) {
            job.finish(Err(e.clone()));
        }
    }
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return fail_all(group, e),
    };
    let mut ends = GroupEnds::default();
    let mut all_ok = true;
    for job in group.iter_mut() {
        ends.staged.clear();
        if run_job(job, shared, &tx, &mut ends).is_err() {
            all_ok = false;
            break;
        }
        for (p, end) in ends.staged.drain(..) {
            ends.group.insert(p, end);
        }
    }
    let written: Vec<Box<dyn Job>> = if all_ok {
        std::mem::take(group)
    } else {
        if let Err(e) = tx.rollback() {
            return fail_all(group, e);
        }
        tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => return fail_all(group, e),
        };
        ends = GroupEnds::default();
        let mut written = Vec::with_capacity(group.len());
        for mut job in group.drain(..) {
            ends.staged.clear();
            // The savepoint's drop rolls a failed write's changes back.
            let outcome = tx.savepoint().map_err(Error::from).and_then(|sp| {
                run_job(&mut job, shared, &sp, &mut ends)?;
                sp.commit()?;
                Ok(())
            });
            match outcome {
                Ok(()) => {
                    for (p, end) in ends.staged.drain(..) {
                        ends.group.insert(p, end);
                    }
                    written.push(job);
                }
                Err(e) => job.finish(Err(PortError::from(e))),
            }
        }
        written
    };
    match tx.commit() {
        Ok(()) => {
            for (p, end) in &ends.group {
                shared.ends[*p as usize].store(*end, Ordering::Release);
            }
            for job in written {
                job.finish(Ok(()));
            }
            if !ends.group.is_empty() {
                shared.appended.notify_waiters();
            }
        }
        Err(e) => {
            let e = PortError::from(Error::from(e));
            for job in written {
                job.finish(Err(e.clone()));
            }
        }
    }
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Config(format!("{what} {v} exceeds the SQLite range")))
}

#[async_trait::async_trait]
impl EventLog for SqliteStore {
    fn partitions(&self) -> u32 {
        self.shared.partitions
    }

    async fn append(&self, partition: u32, records: Vec<(String, Bytes)>) -> PortResult<u64> {
        self.check_partition(partition)?;
        if records.is_empty() {
            return Ok(self.end(partition));
        }
        let first = self
            .write(move |shared, conn, ends| {
                // Only the writer thread moves ends, so nothing changes them under us; an
                // earlier append of this group may have handed out offsets already.
                let first = ends.next(shared, partition);
                let mut stmt = conn.prepare_cached(
                    r#"INSERT INTO events ("partition", "offset", key, payload)
                       VALUES (?1, ?2, ?3, ?4)"#,
                )?;
                for (i, (key, payload)) in records.iter().enumerate() {
                    let offset = to_i64(first + i as u64, "offset")?;
                    stmt.execute(params![partition, offset, key, payload.as_ref()])?;
                }
                ends.stage(partition, first + records.len() as u64);
                Ok(first)
            })
            .await?;
        Ok(first)
    }

    async fn read(&self, partition: u32, from: u64, max: usize) -> PortResult<Vec<LogRecord>> {
        self.check_partition(partition)?;
        let end = self.end(partition);
        if from >= end || max == 0 {
            return Ok(Vec::new());
        }
        self.read_with(move |_, conn| {
            let mut stmt = conn.prepare_cached(
                r#"SELECT "offset", key, payload FROM events
                   WHERE "partition" = ?1 AND "offset" >= ?2 AND "offset" < ?3
                   ORDER BY "offset" LIMIT ?4"#,
            )?;
            let limit = i64::try_from(max).unwrap_or(i64::MAX);
            let rows = stmt.query_map(
                params![
                    partition,
                    to_i64(from, "offset")?,
                    to_i64(end, "offset")?,
                    limit
                ],
                |r| {
                    Ok(LogRecord {
                        offset: r.get::<_, i64>(0)? as u64,
                        key: r.get(1)?,
                        payload: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn end_offset(&self, partition: u32) -> PortResult<u64> {
        self.check_partition(partition)?;
        Ok(self.end(partition))
    }

    async fn wait_for_records(
        &self,
        positions: &[(u32, u64)],
        timeout: Duration,
    ) -> PortResult<()> {
        for &(p, _) in positions {
            self.check_partition(p)?;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register interest before checking, so an append between the check and the
            // await still wakes us.
            let notified = self.shared.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if positions.iter().any(|&(p, off)| self.end(p) > off) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(());
            }
        }
    }
}

// ---- read model ---------------------------------------------------------------------------

fn upsert_command(tx: &Connection, c: &Command) -> Result<()> {
    let data = serde_json::to_string(c)
        .map_err(|e| Error::Encode(format!("command {}: {e}", c.command_id)))?;
    tx.prepare_cached(
        "INSERT INTO commands (command_id, namespace, created_at, data) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (command_id) DO UPDATE SET
             namespace = excluded.namespace, created_at = excluded.created_at, data = excluded.data",
    )?
    .execute(params![
        c.command_id.as_str(),
        c.namespace,
        c.created_at,
        data
    ])?;
    tx.prepare_cached("DELETE FROM command_parameters WHERE command_id = ?1")?
        .execute([c.command_id.as_str()])?;
    let mut ins = tx.prepare_cached(
        "INSERT OR IGNORE INTO command_parameters (command_id, name) VALUES (?1, ?2)",
    )?;
    for p in &c.parameters {
        ins.execute(params![c.command_id.as_str(), p.name])?;
    }
    Ok(())
}

fn delete_command(tx: &Connection, id: &CommandId) -> Result<()> {
    tx.prepare_cached("DELETE FROM commands WHERE command_id = ?1")?
        .execute([id.as_str()])?;
    tx.prepare_cached("DELETE FROM command_parameters WHERE command_id = ?1")?
        .execute([id.as_str()])?;
    Ok(())
}

/// Files written before executions had a `client_token` column get it, filled from each
/// record's `data`; then the index the token lookup uses.
fn migrate_client_token(conn: &Connection) -> Result<()> {
    let has_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('executions') WHERE name = 'client_token'")?
        .exists([])?;
    if !has_column {
        conn.execute_batch(
            "ALTER TABLE executions ADD COLUMN client_token TEXT;
             UPDATE executions SET client_token = json_extract(data, '$.client_token');",
        )?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS executions_by_token
             ON executions (target_kind, target_id, client_token, started_at)
             WHERE client_token IS NOT NULL;",
    )?;
    Ok(())
}

fn upsert_execution(tx: &Connection, e: &Execution) -> Result<()> {
    let data = serde_json::to_string(e)
        .map_err(|err| Error::Encode(format!("execution {}: {err}", e.execution_id)))?;
    // The WHERE makes replays and overlapping batches harmless: an older or equal `seq`
    // never overwrites what is stored. The update sets only the columns an execution's
    // events can change (its command, target, start time and time to live are fixed when
    // it starts): SQLite rewrites the entries of every index that covers a SET column, so
    // naming the fixed ones too would rewrite all seven indexes on every status change.
    tx.prepare_cached(
        "INSERT INTO executions (execution_id, command_id, target_kind, target_id, status,
                                 started_at, completed_at, time_to_live, seq, data,
                                 client_token)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (execution_id) DO UPDATE SET
             status = excluded.status, completed_at = excluded.completed_at,
             seq = excluded.seq, data = excluded.data
         WHERE excluded.seq > executions.seq",
    )?
    .execute(params![
        e.execution_id.as_str(),
        e.command_id.as_str(),
        e.target.kind.resource(),
        e.target.id,
        e.status.as_str(),
        e.started_at,
        e.completed_at,
        e.time_to_live,
        to_i64(e.seq, "seq")?,
        data,
        e.client_token
    ])?;
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, id: &str, data: &str) -> Result<T> {
    serde_json::from_str(data).map_err(|e| Error::Corrupt(format!("{what} {id}: {e}")))
}

/// A position in a sorted listing: the sort time and the id that breaks ties.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PageKey {
    time: TimestampMs,
    id: String,
}

const COMMAND_TOKEN: &str = "c";
const EXECUTION_TOKEN: &str = "e";

fn encode_token(kind: &str, key: &PageKey) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}|{}|{}", key.time, key.id))
}

fn decode_token(kind: &str, token: &str) -> PortResult<PageKey> {
    let raw = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid_page_token("not base64url"))?;
    let text = String::from_utf8(raw).map_err(|_| invalid_page_token("not UTF-8"))?;
    let mut parts = text.splitn(3, '|');
    let (Some(k), Some(time), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid_page_token("missing fields"));
    };
    if k != kind {
        return Err(invalid_page_token("issued for another listing"));
    }
    let time = time
        .parse::<i64>()
        .map_err(|_| invalid_page_token("bad sort key"))?;
    if id.is_empty() {
        return Err(invalid_page_token("empty id"));
    }
    Ok(PageKey {
        time,
        id: id.to_owned(),
    })
}

/// SQL and parameters of one listing page.
struct PageQuery {
    sql: String,
    params: Vec<Value>,
    limit: usize,
}

fn command_page_query(q: &CommandQuery) -> PortResult<PageQuery> {
    let mut sql = String::from("SELECT data, created_at, command_id FROM commands c WHERE 1 = 1");
    let mut params = Vec::new();
    if let Some(ns) = &q.namespace {
        params.push(Value::Text(ns.clone()));
        sql.push_str(&format!(" AND namespace = ?{}", params.len()));
    }
    if let Some(name) = &q.parameter_name {
        params.push(Value::Text(name.clone()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM command_parameters p
                          WHERE p.command_id = c.command_id AND p.name = ?{})",
            params.len()
        ));
    }
    let (cmp, dir) = if q.ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    if let Some(token) = &q.page_token {
        let key = decode_token(COMMAND_TOKEN, token)?;
        params.push(Value::Integer(key.time));
        params.push(Value::Text(key.id));
        let n = params.len();
        sql.push_str(&format!(
            " AND (created_at, command_id) {cmp} (?{}, ?{n})",
            n - 1
        ));
    }
    let limit = effective_page_size(q.page_size) as usize;
    params.push(Value::Integer(limit as i64 + 1));
    sql.push_str(&format!(
        " ORDER BY created_at {dir}, command_id {dir} LIMIT ?{}",
        params.len()
    ));
    Ok(PageQuery { sql, params, limit })
}

fn execution_page_query(q: &ExecutionQuery) -> PortResult<PageQuery> {
    let by_completion = q.completed.is_some();
    let sort = if by_completion {
        "completed_at"
    } else {
        "started_at"
    };
    let mut sql = format!("SELECT data, {sort}, execution_id FROM executions WHERE 1 = 1");
    let mut params = Vec::new();
    let mut push = |sql: &mut String, cond: &str, v: Value| {
        params.push(v);
        sql.push_str(&format!(" AND {cond} ?{}", params.len()));
    };
    if let Some(c) = &q.command_id {
        push(&mut sql, "command_id =", Value::Text(c.as_str().to_owned()));
    }
    if let Some(t) = &q.target {
        push(
            &mut sql,
            "target_kind =",
            Value::Text(t.kind.resource().to_owned()),
        );
        push(&mut sql, "target_id =", Value::Text(t.id.clone()));
    }
    if let Some(r) = &q.started {
        if let Some(a) = r.after {
            push(&mut sql, "started_at >=", Value::Integer(a));
        }
        if let Some(b) = r.before {
            push(&mut sql, "started_at <=", Value::Integer(b));
        }
    }
    if let Some(r) = &q.completed {
        // Spelled out so SQLite can use the partial `completed_at` indexes.
        sql.push_str(" AND completed_at IS NOT NULL");
        if let Some(a) = r.after {
            push(&mut sql, "completed_at >=", Value::Integer(a));
        }
        if let Some(b) = r.before {
            push(&mut sql, "completed_at <=", Value::Integer(b));
        }
    }
    if !q.statuses.is_empty() {
        let mut list = String::new();
        for s in &q.statuses {
            params.push(Value::Text(s.as_str().to_owned()));
            if !list.is_empty() {
                list.push_str(", ");
            }
            list.push_str(&format!("?{}", params.len()));
        }
        sql.push_str(&format!(" AND status IN ({list})"));
    }
    let (cmp, dir) = if q.ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    if let Some(token) = &q.page_token {
        let key = decode_token(EXECUTION_TOKEN, token)?;
        params.push(Value::Integer(key.time));
        params.push(Value::Text(key.id));
        let n = params.len();
        sql.push_str(&format!(
            " AND ({sort}, execution_id) {cmp} (?{}, ?{n})",
            n - 1
        ));
    }
    let limit = effective_page_size(q.page_size) as usize;
    params.push(Value::Integer(limit as i64 + 1));
    sql.push_str(&format!(
        " ORDER BY {sort} {dir}, execution_id {dir} LIMIT ?{}",
        params.len()
    ));
    Ok(PageQuery { sql, params, limit })
}

/// Runs a page query whose columns are `(data, sort_time, id)`.
fn run_page<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    what: &str,
    token_kind: &str,
    q: &PageQuery,
) -> Result<Page<T>> {
    let mut stmt = conn.prepare_cached(&q.sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(q.params.iter()), |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut items = Vec::with_capacity(q.limit.min(128));
    let mut last = None;
    let mut more = false;
    for row in rows {
        let (data, time, id) = row?;
        if items.len() == q.limit {
            more = true;
            break;
        }
        items.push(decode(what, &id, &data)?);
        last = Some(PageKey { time, id });
    }
    let next_token = match (more, last) {
        (true, Some(key)) => Some(encode_token(token_kind, &key)),
        _ => None,
    };
    Ok(Page { items, next_token })
}

#[async_trait::async_trait]
impl ReadModel for SqliteStore {
    async fn commit(&self, batch: ProjectionBatch) -> PortResult<()> {
        self.check_partition(batch.partition)?;
        self.write(move |_, tx, _| {
            for w in &batch.commands {
                match w {
                    CommandWrite::Upsert(c) => upsert_command(tx, c)?,
                    CommandWrite::Delete(id) => delete_command(tx, id)?,
                }
            }
            for w in &batch.executions {
                match w {
                    ExecutionWrite::Upsert(e) => upsert_execution(tx, e)?,
                    ExecutionWrite::Delete(id) => {
                        tx.prepare_cached("DELETE FROM executions WHERE execution_id = ?1")?
                            .execute([id.as_str()])?;
                    }
                }
            }
            tx.prepare_cached(
                r#"INSERT INTO positions ("partition", next_offset) VALUES (?1, ?2)
                   ON CONFLICT ("partition") DO UPDATE SET next_offset = excluded.next_offset"#,
            )?
            .execute(params![
                batch.partition,
                to_i64(batch.next_offset, "next_offset")?
            ])?;
            Ok(())
        })
        .await
    }

    async fn position(&self, partition: u32) -> PortResult<u64> {
        self.check_partition(partition)?;
        self.read_with(move |_, conn| {
            let pos: Option<i64> = conn
                .prepare_cached(r#"SELECT next_offset FROM positions WHERE "partition" = ?1"#)?
                .query_row([partition], |r| r.get(0))
                .optional()?;
            Ok(pos.map_or(0, |p| p as u64))
        })
        .await
    }

    async fn get_command(&self, id: &CommandId) -> PortResult<Option<Command>> {
        let id = id.clone();
        self.read_with(move |_, conn| {
            let data: Option<String> = conn
                .prepare_cached("SELECT data FROM commands WHERE command_id = ?1")?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()?;
            data.map(|d| decode("command", id.as_str(), &d)).transpose()
        })
        .await
    }

    async fn list_commands(&self, query: &CommandQuery) -> PortResult<Page<Command>> {
        let q = command_page_query(query)?;
        self.read_with(move |_, conn| run_page(conn, "command", COMMAND_TOKEN, &q))
            .await
    }

    async fn get_execution(&self, id: &ExecutionId) -> PortResult<Option<Execution>> {
        let id = id.clone();
        self.read_with(move |_, conn| {
            let data: Option<String> = conn
                .prepare_cached("SELECT data FROM executions WHERE execution_id = ?1")?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()?;
            data.map(|d| decode("execution", id.as_str(), &d))
                .transpose()
        })
        .await
    }

    async fn find_execution_by_token(
        &self,
        target: &Target,
        client_token: &str,
    ) -> PortResult<Option<Execution>> {
        let keys = [(target.clone(), client_token.to_owned())];
        Ok(self.find_executions_by_tokens(&keys).await?.pop().flatten())
    }

    async fn find_executions_by_tokens(
        &self,
        keys: &[(Target, String)],
    ) -> PortResult<Vec<Option<Execution>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = keys.to_vec();
        self.read_with(move |_, conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT data FROM executions
                 WHERE target_kind = ?1 AND target_id = ?2 AND client_token = ?3
                 ORDER BY started_at DESC LIMIT 1",
            )?;
            let mut found = Vec::with_capacity(keys.len());
            for (target, token) in &keys {
                let data: Option<String> = stmt
                    .query_row(params![target.kind.resource(), target.id, token], |r| {
                        r.get(0)
                    })
                    .optional()?;
                found.push(data.map(|d| decode("execution", token, &d)).transpose()?);
            }
            Ok(found)
        })
        .await
    }

    async fn get_executions(&self, ids: &[ExecutionId]) -> PortResult<Vec<Execution>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        self.read_with(move |_, conn| {
            // One read transaction: every execution comes from the same snapshot.
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(ids.len());
            {
                let mut stmt =
                    tx.prepare_cached("SELECT data FROM executions WHERE execution_id = ?1")?;
                for id in &ids {
                    let data: Option<String> =
                        stmt.query_row([id.as_str()], |r| r.get(0)).optional()?;
                    if let Some(d) = data {
                        out.push(decode("execution", id.as_str(), &d)?);
                    }
                }
            }
            tx.finish()?;
            Ok(out)
        })
        .await
    }

    async fn list_executions(&self, query: &ExecutionQuery) -> PortResult<Page<Execution>> {
        let q = execution_page_query(query)?;
        self.read_with(move |_, conn| run_page(conn, "execution", EXECUTION_TOKEN, &q))
            .await
    }

    async fn purge_expired(&self, now: TimestampMs) -> PortResult<u64> {
        self.write(move |_, conn, _| {
            let n = conn
                .prepare_cached("DELETE FROM executions WHERE time_to_live < ?1")?
                .execute([now])?;
            Ok(n as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetcmd_domain::ports::TimeRange;
    use fleetcmd_domain::{ExecutionStatus, Target};

    /// A fresh directory for one test's database file.
    fn temp_dir(prefix: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "{prefix}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ))
    }

    fn plan(conn: &Connection, q: &PageQuery) -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", q.sql))
            .expect("explain");
        let rows = stmt
            .query_map(rusqlite::params_from_iter(q.params.iter()), |r| {
                r.get::<_, String>(3)
            })
            .expect("plan rows");
        rows.map(|r| r.expect("plan row"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Concurrent writes share group transactions: appends to one partition still get
    /// contiguous, distinct offsets, and a failing write is rolled back alone.
    #[tokio::test]
    async fn files_without_the_client_token_column_are_migrated() {
        let dir = temp_dir("fleetcmd-token-migration");
        let path = dir.join("s.sqlite");
        let target = Target::thing("t-1").expect("target");
        let e = Execution {
            execution_id: ExecutionId::parse("e-1").expect("id"),
            command_id: CommandId::parse("c").expect("id"),
            target: target.clone(),
            status: ExecutionStatus::Created,
            status_reason: None,
            result: Default::default(),
            parameters: Default::default(),
            timeout_secs: 10,
            client_token: Some("tok".into()),
            created_at: 1,
            last_updated_at: 1,
            started_at: 1,
            completed_at: None,
            time_to_live: i64::MAX,
            terminal: false,
            seq: 1,
            request_fingerprint: 42,
        };
        let store = SqliteStore::open(&path, 1, Durability::Process).expect("open");
        store
            .commit(ProjectionBatch {
                partition: 0,
                next_offset: 1,
                commands: Vec::new(),
                executions: vec![ExecutionWrite::Upsert(e.clone())],
            })
            .await
            .expect("commit");
        drop(store);
        // Back to the layout of files written before the column existed.
        let conn = Connection::open(&path).expect("open raw");
        conn.execute_batch(
            "DROP INDEX executions_by_token; ALTER TABLE executions DROP COLUMN client_token;",
        )
        .expect("old layout");
        drop(conn);
        let store = SqliteStore::open(&path, 1, Durability::Process).expect("reopen");
        assert_eq!(
            store
                .find_execution_by_token(&target, "tok")
                .await
                .expect("find"),
            Some(e),
            "the token was filled in from the stored record"
        );
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_failing_write_in_a_group_fails_alone_and_the_others_commit() {
        let dir = temp_dir("fleetcmd-group-fail");
        let store = SqliteStore::open(&dir.join("s.sqlite"), 1, Durability::Process).expect("open");
        // Hold the writer thread so the next three writes queue up and form one group.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let mut held = Some(held);
        let mut blocker = Box::pin(store.write(move |_, _, _| {
            if let Some(h) = held.take() {
                let _ = h.recv();
            }
            Ok(())
        }));
        assert!(futures::poll!(&mut blocker).is_pending());
        let record = |k: &str| vec![(k.to_string(), Bytes::from_static(b"x"))];
        let mut a = Box::pin(store.append(0, record("a")));
        let mut failing = Box::pin(
            store.write(|_, conn, _| Ok(conn.execute("INSERT INTO no_such_table VALUES (1)", [])?)),
        );
        let mut b = Box::pin(store.append(0, record("b")));
        assert!(futures::poll!(&mut a).is_pending());
        assert!(futures::poll!(&mut failing).is_pending());
        assert!(futures::poll!(&mut b).is_pending());
        release.send(()).expect("writer waits");
        blocker.await.expect("blocker");
        assert_eq!(a.await.expect("a"), 0);
        assert!(failing.await.is_err());
        assert_eq!(b.await.expect("b"), 1, "the failed write took no offset");
        let keys: Vec<String> = store
            .read(0, 0, 10)
            .await
            .expect("read")
            .into_iter()
            .map(|r| r.key)
            .collect();
        assert_eq!(keys, ["a", "b"]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_writes_keep_offsets_contiguous_and_fail_alone() {
        let dir = temp_dir("fleetcmd-group-commit");
        let store = SqliteStore::open(&dir.join("s.sqlite"), 2, Durability::Process).expect("open");
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let records = vec![
                    (format!("k{i}"), Bytes::from(format!("a{i}"))),
                    (format!("k{i}"), Bytes::from(format!("b{i}"))),
                ];
                (
                    i,
                    store.append((i % 2) as u32, records).await.expect("append"),
                )
            }));
        }
        // A write that fails (no such table) in the middle of the others.
        let failing = store
            .write(|_, conn, _| Ok(conn.execute("INSERT INTO no_such_table VALUES (1)", [])?))
            .await;
        assert!(failing.is_err());
        let mut firsts = [Vec::new(), Vec::new()];
        for t in tasks {
            let (i, first) = t.await.expect("task");
            firsts[(i % 2) as usize].push(first);
        }
        for (p, mut f) in firsts.into_iter().enumerate() {
            f.sort_unstable();
            assert_eq!(
                f,
                (0..32).map(|n| n * 2).collect::<Vec<u64>>(),
                "partition {p}"
            );
            assert_eq!(store.end_offset(p as u32).await.expect("end"), 64);
            let records = store.read(p as u32, 0, 1000).await.expect("read");
            assert_eq!(records.len(), 64);
            // Each append's two records are adjacent and in order.
            for pair in records.chunks(2) {
                assert_eq!(pair[0].key, pair[1].key);
                assert!(pair[0].payload.starts_with(b"a") && pair[1].payload.starts_with(b"b"));
            }
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn schema_conn() -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory db");
        conn.execute_batch(SCHEMA).expect("schema");
        conn
    }

    #[test]
    fn every_execution_query_shape_uses_an_index_without_sorting() {
        let conn = schema_conn();
        let cmd = Some(CommandId::parse("c").expect("id"));
        let target = Some(Target::thing("t").expect("target"));
        let range = Some(TimeRange {
            after: Some(1),
            before: Some(2),
        });
        let token = Some(encode_token(
            EXECUTION_TOKEN,
            &PageKey {
                time: 5,
                id: "x".into(),
            },
        ));
        let mut shapes = Vec::new();
        for (command_id, target) in [(cmd.clone(), None), (None, target.clone()), (None, None)] {
            for (started, completed) in [(None, None), (range, None), (None, range)] {
                for ascending in [false, true] {
                    for page_token in [None, token.clone()] {
                        shapes.push(ExecutionQuery {
                            command_id: command_id.clone(),
                            target: target.clone(),
                            statuses: vec![ExecutionStatus::Succeeded, ExecutionStatus::Failed],
                            started,
                            completed,
                            ascending,
                            page_size: 10,
                            page_token: page_token.clone(),
                        });
                    }
                }
            }
        }
        for q in &shapes {
            let pq = execution_page_query(q).expect("query");
            let plan = plan(&conn, &pq);
            assert!(
                !plan.contains("TEMP B-TREE"),
                "query {q:?} sorts in memory: {plan}"
            );
            assert!(plan.contains("USING INDEX"), "query {q:?} scans: {plan}");
        }
    }

    #[test]
    fn command_queries_use_an_index_without_sorting() {
        let conn = schema_conn();
        for namespace in [None, Some("AWS-IoT".to_owned())] {
            for parameter_name in [None, Some("p".to_owned())] {
                for ascending in [false, true] {
                    let q = CommandQuery {
                        namespace: namespace.clone(),
                        parameter_name: parameter_name.clone(),
                        ascending,
                        page_size: 0,
                        page_token: Some(encode_token(
                            COMMAND_TOKEN,
                            &PageKey {
                                time: 1,
                                id: "c".into(),
                            },
                        )),
                    };
                    let pq = command_page_query(&q).expect("query");
                    assert_eq!(pq.limit, crate::DEFAULT_PAGE_SIZE as usize);
                    let plan = plan(&conn, &pq);
                    assert!(!plan.contains("TEMP B-TREE"), "{q:?} sorts: {plan}");
                    assert!(plan.contains("USING"), "{q:?} scans: {plan}");
                }
            }
        }
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let key = PageKey {
            time: -42,
            id: "exec-1_a".into(),
        };
        let t = encode_token(EXECUTION_TOKEN, &key);
        assert_eq!(decode_token(EXECUTION_TOKEN, &t), Ok(key));
        let foreign = decode_token(COMMAND_TOKEN, &t).expect_err("foreign token");
        assert!(crate::is_invalid_page_token(&foreign), "{foreign}");
        for bad in ["", "!!!", "Zm9v", &URL_SAFE_NO_PAD.encode("e|x|id")] {
            let err = decode_token(EXECUTION_TOKEN, bad).expect_err(bad);
            assert!(crate::is_invalid_page_token(&err), "{bad}: {err}");
        }
    }
}
