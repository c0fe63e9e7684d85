//! The [`EventLog`] methods. Each partition's end offset is kept in memory, advanced only
//! after the append's transaction committed, and reads never go past it, so a reader can never
//! see a record that `append` has not acknowledged.

use std::time::Duration;

use bytes::Bytes;
use fleetcmd_domain::ports::{EventLog, LogRecord, PortResult, ProjectingLog, ProjectionWrites};
use rusqlite::{Connection, params};

use super::read_model::{apply_writes, set_position};
use super::writer::GroupEnds;
use super::{Shared, SqliteStore, to_i64};
use crate::error::Result;

/// Inserts one append's records (inside the writer's transaction); returns the first offset.
fn insert_records(
    shared: &Shared,
    conn: &Connection,
    ends: &mut GroupEnds,
    partition: u32,
    records: &[(String, Bytes)],
) -> Result<u64> {
    // Only the writer thread moves ends, so nothing changes them under us; an earlier append
    // of this group may have handed out offsets already.
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
}

/// The embedded store projects in the same transaction as it appends: the log and the read
/// model are one file.
#[async_trait::async_trait]
impl ProjectingLog for SqliteStore {
    async fn append_and_project(
        &self,
        partition: u32,
        records: Vec<(String, Bytes)>,
        writes: ProjectionWrites,
    ) -> PortResult<u64> {
        self.check_partition(partition)?;
        self.write(move |shared, conn, ends| {
            let first = insert_records(shared, conn, ends, partition, &records)?;
            apply_writes(conn, &writes)?;
            set_position(conn, partition, first + records.len() as u64)?;
            Ok(first)
        })
        .await
    }
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
        self.write(move |shared, conn, ends| {
            insert_records(shared, conn, ends, partition, &records)
        })
        .await
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
