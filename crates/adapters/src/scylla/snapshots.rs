//! The [`SnapshotStore`] methods. A snapshot is written in chunks of at most
//! [`CHUNK_BYTES`] (a CQL mutation has a size limit) under its own `(partition, next_offset)`
//! partition of `snapshot_chunks`, and only then made current by the head row in
//! `snapshots`, written with `USING TIMESTAMP next_offset`: the newest offset wins whatever
//! order two savers' writes arrive in, so an older snapshot never replaces a newer one. The
//! chunks of the generation it replaced are deleted afterwards (a reader that loses that
//! race finds an incomplete generation and rebuilds from the log: a snapshot is a cache).

use bytes::{Bytes, BytesMut};
use fleetcmd_domain::ports::{PortError, PortResult, SnapshotStore};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::ScyllaReadModel;
use super::error::{exec_error, rows_error};
use super::statements::prepare;

/// The largest chunk of a snapshot in one row.
pub(super) const CHUNK_BYTES: usize = 512 * 1024;

/// DDL of the snapshot tables.
pub(super) fn snapshot_tables(ks: &str) -> [String; 2] {
    [
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.snapshots (log_partition int, next_offset bigint, \
             chunks int, PRIMARY KEY (log_partition))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.snapshot_chunks (log_partition int, \
             next_offset bigint, chunk int, data blob, \
             PRIMARY KEY ((log_partition, next_offset), chunk))"
        ),
    ]
}

pub(super) struct SnapshotStatements {
    get_head: PreparedStatement,
    put_head: PreparedStatement,
    get_chunks: PreparedStatement,
    put_chunk: PreparedStatement,
    delete_chunks: PreparedStatement,
}

impl SnapshotStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> PortResult<Self> {
        Ok(Self {
            get_head: prepare(
                session,
                format!("SELECT next_offset, chunks FROM {ks}.snapshots WHERE log_partition = ?"),
            )
            .await?,
            put_head: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.snapshots (log_partition, next_offset, chunks) \
                     VALUES (?, ?, ?) USING TIMESTAMP ?"
                ),
            )
            .await?,
            get_chunks: prepare(
                session,
                format!(
                    "SELECT chunk, data FROM {ks}.snapshot_chunks \
                     WHERE log_partition = ? AND next_offset = ?"
                ),
            )
            .await?,
            put_chunk: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.snapshot_chunks (log_partition, next_offset, chunk, data) \
                     VALUES (?, ?, ?, ?)"
                ),
            )
            .await?,
            delete_chunks: prepare(
                session,
                format!(
                    "DELETE FROM {ks}.snapshot_chunks WHERE log_partition = ? AND next_offset = ?"
                ),
            )
            .await?,
        })
    }
}

fn cql_partition(partition: u32) -> PortResult<i32> {
    i32::try_from(partition)
        .map_err(|_| PortError::Backend(format!("partition {partition} out of range")))
}

fn cql_offset(offset: u64) -> PortResult<i64> {
    i64::try_from(offset).map_err(|_| PortError::Backend(format!("offset {offset} out of range")))
}

impl ScyllaReadModel {
    async fn snapshot_head(&self, partition: i32) -> PortResult<Option<(i64, i32)>> {
        let res = self
            .session
            .execute_unpaged(&self.snap.get_head, vec![CqlValue::Int(partition)])
            .await
            .map_err(|e| exec_error("reading a snapshot head", e))?;
        res.into_rows_result()
            .map_err(|e| rows_error("snapshot head", e))?
            .maybe_first_row::<(i64, i32)>()
            .map_err(|e| rows_error("snapshot head", e))
    }
}

#[async_trait::async_trait]
impl SnapshotStore for ScyllaReadModel {
    async fn save_snapshot(&self, partition: u32, next_offset: u64, data: Bytes) -> PortResult<()> {
        let p = cql_partition(partition)?;
        let offset = cql_offset(next_offset)?;
        let previous = self.snapshot_head(p).await?;
        let chunks: Vec<Bytes> = if data.is_empty() {
            vec![Bytes::new()]
        } else {
            (0..data.len())
                .step_by(CHUNK_BYTES)
                .map(|start| data.slice(start..(start + CHUNK_BYTES).min(data.len())))
                .collect()
        };
        for (i, chunk) in chunks.iter().enumerate() {
            self.session
                .execute_unpaged(
                    &self.snap.put_chunk,
                    vec![
                        CqlValue::Int(p),
                        CqlValue::BigInt(offset),
                        CqlValue::Int(i as i32),
                        CqlValue::Blob(chunk.to_vec()),
                    ],
                )
                .await
                .map_err(|e| exec_error("writing a snapshot chunk", e))?;
        }
        let head = vec![
            CqlValue::Int(p),
            CqlValue::BigInt(offset),
            CqlValue::Int(chunks.len() as i32),
            // The write timestamp is the offset: the newest snapshot wins.
            CqlValue::BigInt(offset),
        ];
        self.session
            .execute_unpaged(&self.snap.put_head, head)
            .await
            .map_err(|e| exec_error("writing a snapshot head", e))?;
        if let Some((old, _)) = previous
            && old != offset
        {
            let current = self.snapshot_head(p).await?;
            // Delete the replaced generation only if it really was replaced (an older save
            // loses to the stored head and must then delete its own chunks instead).
            let stale = match current {
                Some((now, _)) if now == offset => old,
                _ => offset,
            };
            self.session
                .execute_unpaged(
                    &self.snap.delete_chunks,
                    vec![CqlValue::Int(p), CqlValue::BigInt(stale)],
                )
                .await
                .map_err(|e| exec_error("deleting replaced snapshot chunks", e))?;
        }
        Ok(())
    }

    async fn load_snapshot(&self, partition: u32) -> PortResult<Option<(u64, Bytes)>> {
        let p = cql_partition(partition)?;
        let Some((offset, chunks)) = self.snapshot_head(p).await? else {
            return Ok(None);
        };
        let res = self
            .session
            .execute_unpaged(
                &self.snap.get_chunks,
                vec![CqlValue::Int(p), CqlValue::BigInt(offset)],
            )
            .await
            .map_err(|e| exec_error("reading snapshot chunks", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("snapshot chunks", e))?;
        let mut parts: Vec<(i32, Vec<u8>)> = rows
            .rows::<(i32, Vec<u8>)>()
            .map_err(|e| rows_error("snapshot chunks", e))?
            .collect::<Result<_, _>>()
            .map_err(|e| rows_error("snapshot chunks", e))?;
        parts.sort_by_key(|(i, _)| *i);
        let complete = parts.len() == chunks as usize
            && parts.iter().enumerate().all(|(i, (n, _))| *n == i as i32);
        if !complete {
            tracing::warn!(partition, offset, "incomplete snapshot; ignoring it");
            return Ok(None);
        }
        let mut data = BytesMut::with_capacity(parts.iter().map(|(_, d)| d.len()).sum());
        for (_, d) in parts {
            data.extend_from_slice(&d);
        }
        Ok(Some((offset as u64, data.freeze())))
    }
}
