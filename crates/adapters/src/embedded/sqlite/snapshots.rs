//! The [`SnapshotStore`] methods: one row per partition, replaced in the writer's group
//! commit only by a snapshot that is not older.

use bytes::Bytes;
use fleetcmd_domain::ports::{PortResult, SnapshotStore};
use rusqlite::{OptionalExtension as _, params};

use super::{SqliteStore, to_i64};

#[async_trait::async_trait]
impl SnapshotStore for SqliteStore {
    async fn save_snapshot(&self, partition: u32, next_offset: u64, data: Bytes) -> PortResult<()> {
        self.check_partition(partition)?;
        let offset =
            to_i64(next_offset, "next_offset").map_err(fleetcmd_domain::ports::PortError::from)?;
        self.write(move |_, conn, _| {
            conn.prepare_cached(
                r#"INSERT INTO snapshots ("partition", next_offset, data) VALUES (?1, ?2, ?3)
                   ON CONFLICT ("partition") DO UPDATE
                   SET next_offset = excluded.next_offset, data = excluded.data
                   WHERE excluded.next_offset >= snapshots.next_offset"#,
            )?
            .execute(params![partition, offset, data.as_ref()])?;
            Ok(())
        })
        .await
    }

    async fn load_snapshot(&self, partition: u32) -> PortResult<Option<(u64, Bytes)>> {
        self.check_partition(partition)?;
        self.read_with(move |_, conn| {
            let row = conn
                .prepare_cached(
                    r#"SELECT next_offset, data FROM snapshots WHERE "partition" = ?1"#,
                )?
                .query_row([partition], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()?;
            Ok(row.map(|(offset, data)| (offset as u64, Bytes::from(data))))
        })
        .await
    }
}
