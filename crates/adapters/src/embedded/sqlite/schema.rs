//! The tables of the store, and the migrations of files written by older versions.

use rusqlite::Connection;

use crate::error::Result;

/// Schema version recorded in `meta`; bump with a migration when the tables change.
pub(super) const SCHEMA_VERSION: i64 = 1;

pub(super) const SCHEMA: &str = r#"
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

CREATE TABLE IF NOT EXISTS things (
    thing_name TEXT PRIMARY KEY NOT NULL,
    data       TEXT NOT NULL
);

-- The listing filters: one row per attribute and per static group of each thing.
CREATE TABLE IF NOT EXISTS thing_attributes (
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    PRIMARY KEY (name, value, thing_name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS thing_attributes_by_thing ON thing_attributes (thing_name);

CREATE TABLE IF NOT EXISTS thing_groups (
    group_name TEXT NOT NULL,
    thing_name TEXT NOT NULL,
    PRIMARY KEY (group_name, thing_name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS thing_groups_by_thing ON thing_groups (thing_name);

-- Device credentials: each owner's whole (certificates, password hash) as JSON, and one row
-- per certificate to find it by id and the revoked ones for the CRL.
CREATE TABLE IF NOT EXISTS credentials (
    owner   TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    data    TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS certificates (
    certificate_id TEXT PRIMARY KEY NOT NULL,
    owner          TEXT NOT NULL,
    status         TEXT NOT NULL,
    data           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_revoked
    ON certificates (certificate_id) WHERE status = 'REVOKED';

-- Registered CA certificates, each whole as JSON.
CREATE TABLE IF NOT EXISTS ca_certificates (
    ca_certificate_id TEXT PRIMARY KEY NOT NULL,
    version           INTEGER NOT NULL,
    data              TEXT NOT NULL
);

-- Thing groups, each whole as JSON (a static group's members are rows of thing_groups).
CREATE TABLE IF NOT EXISTS group_records (
    thing_group_name TEXT PRIMARY KEY NOT NULL,
    data             TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS snapshots (
    "partition" INTEGER PRIMARY KEY NOT NULL,
    next_offset INTEGER NOT NULL,
    data        BLOB NOT NULL
);
"#;

/// The format of the records in `events`, recorded in `meta` as `log_format`: 2 is the
/// protobuf `LogRecord` (one record per input). Files whose log was written in the earlier
/// JSON format (no `log_format`, but events) are refused with a clear message instead of
/// failing on their first record.
pub(super) const LOG_FORMAT: i64 = 2;

/// Files written before executions had a `client_token` column get it, filled from each
/// record's `data`; then the index the token lookup uses.
pub(super) fn migrate_client_token(conn: &Connection) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use fleetcmd_domain::ports::{ExecutionWrite, ProjectionBatch, ReadModel};
    use fleetcmd_domain::{Target, testing};
    use rusqlite::Connection;

    use crate::conformance::{TempDir, within};
    use crate::embedded::sqlite::{Durability, SqliteStore};

    #[tokio::test]
    async fn files_without_the_client_token_column_are_migrated() {
        let dir = TempDir::new("token-migration");
        let path = dir.path().join("s.sqlite");
        let target = Target::thing("t-1").expect("target");
        let mut e = testing::execution("e-1", "c", Some(target.clone()));
        e.client_token = Some("tok".into());
        e.time_to_live = i64::MAX;
        e.request_fingerprint = 42;
        let store = SqliteStore::open(&path, 1, Durability::Process).expect("open");
        let batch = ProjectionBatch {
            partition: 0,
            next_offset: 1,
            commands: Vec::new(),
            executions: vec![ExecutionWrite::Upsert(e.clone())],
            ..Default::default()
        };
        within("commit", store.commit(batch)).await.expect("commit");
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
            within("find", store.find_execution_by_token(&target, "tok"))
                .await
                .expect("find"),
            Some(e),
            "the token was filled in from the stored record"
        );
    }
}
