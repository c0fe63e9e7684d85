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
//! Page tokens are base64url of `kind|sort_time|id`; a token that does not decode, or was
//! issued for another listing, is rejected with [`crate::invalid_page_token`].
//!
//! Files: `schema.rs` (tables, migrations), `writer.rs` (the writer thread and group commit),
//! `log.rs` (the [`EventLog`] methods), `paging.rs` (listing queries and tokens),
//! `read_model.rs` (the [`ReadModel`] methods).

mod log;
mod paging;
mod read_model;
mod schema;
mod snapshots;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fleetcmd_domain::ports::{PortError, PortResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};

use self::schema::{LOG_FORMAT, SCHEMA, SCHEMA_VERSION, migrate_client_token};
use self::writer::{GroupEnds, Job, TypedJob, writer_loop};
use crate::error::{Error, Result};

pub use self::writer::MAX_GROUP;

#[cfg(doc)]
use fleetcmd_domain::ports::{EventLog, ReadModel};

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
/// Writes queued for the writer thread (callers wait when it is full).
const WRITE_QUEUE: usize = 4096;
/// How long a connection waits for a lock held by another one (checkpoints, other processes).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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

        let format: Option<i64> = writer
            .query_row("SELECT value FROM meta WHERE key = 'log_format'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let has_events = writer.prepare("SELECT 1 FROM events LIMIT 1")?.exists([])?;
        match format {
            Some(f) if f == LOG_FORMAT => {}
            None if !has_events => {
                writer.execute(
                    "INSERT INTO meta (key, value) VALUES ('log_format', ?1)",
                    params![LOG_FORMAT],
                )?;
            }
            other => {
                return Err(Error::Config(format!(
                    "{}: its event log was written by an older fleetcmd in another format \
                     ({}); this version reads format {LOG_FORMAT}. Start with a new data \
                     directory",
                    path.display(),
                    other.map_or("JSON".to_string(), |f| format!("format {f}"))
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

/// `v` as an SQLite integer.
fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Config(format!("{what} {v} exceeds the SQLite range")))
}

/// A record stored as JSON.
fn decode<T: serde::de::DeserializeOwned>(what: &str, id: &str, data: &str) -> Result<T> {
    serde_json::from_str(data).map_err(|e| Error::Corrupt(format!("{what} {id}: {e}")))
}
