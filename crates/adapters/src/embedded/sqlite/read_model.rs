//! The [`ReadModel`] methods. A commit is one write of the writer thread: its upserts and
//! deletes and the partition's position commit together.

use fleetcmd_domain::ca::CaCertificate;
use fleetcmd_domain::credential::{CertificateRecord, Credentials};
use fleetcmd_domain::group::ThingGroup;
use fleetcmd_domain::ports::{
    CommandQuery, CommandWrite, CredentialWrite, ExecutionQuery, ExecutionWrite, GroupQuery,
    GroupWrite, Page, PortResult, ProjectionBatch, ProjectionWrites, ReadModel, ThingQuery,
    ThingWrite,
};
use fleetcmd_domain::thing::Thing;
use fleetcmd_domain::{Command, CommandId, Execution, ExecutionId, Target, TimestampMs};
use rusqlite::{Connection, OptionalExtension, params};

use super::paging::{
    COMMAND_TOKEN, EXECUTION_TOKEN, GROUP_TOKEN, THING_TOKEN, command_page_query,
    execution_page_query, group_page_query, run_page, thing_page_query,
};
use super::{SqliteStore, decode, to_i64};
use crate::error::{Error, Result};

/// Applies a projection's writes (inside the writer's transaction).
pub(super) fn apply_writes(tx: &Connection, writes: &ProjectionWrites) -> Result<()> {
    let ProjectionWrites {
        commands,
        executions,
        things,
        credentials,
        cas,
        groups,
    } = writes;
    for w in credentials {
        upsert_credentials(tx, w)?;
    }
    for c in cas {
        upsert_ca(tx, c)?;
    }
    for w in groups {
        match w {
            GroupWrite::Upsert(g) => upsert_group(tx, g)?,
            GroupWrite::Delete(name) => {
                tx.prepare_cached("DELETE FROM group_records WHERE thing_group_name = ?1")?
                    .execute([name])?;
            }
        }
    }
    for w in things {
        match w {
            ThingWrite::Upsert(t) => upsert_thing(tx, t)?,
            ThingWrite::Delete(name) => delete_thing(tx, name)?,
        }
    }
    for w in commands {
        match w {
            CommandWrite::Upsert(c) => upsert_command(tx, c)?,
            CommandWrite::Delete(id) => delete_command(tx, id)?,
        }
    }
    for w in executions {
        match w {
            ExecutionWrite::Upsert(e) => upsert_execution(tx, e)?,
            ExecutionWrite::Delete { id, .. } => {
                tx.prepare_cached("DELETE FROM executions WHERE execution_id = ?1")?
                    .execute([id.as_str()])?;
            }
        }
    }
    Ok(())
}

/// Records a partition's projected position (inside the writer's transaction).
pub(super) fn set_position(tx: &Connection, partition: u32, next_offset: u64) -> Result<()> {
    tx.prepare_cached(
        r#"INSERT INTO positions ("partition", next_offset) VALUES (?1, ?2)
           ON CONFLICT ("partition") DO UPDATE SET next_offset = excluded.next_offset"#,
    )?
    .execute(params![partition, to_i64(next_offset, "next_offset")?])?;
    Ok(())
}

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

fn upsert_thing(tx: &Connection, t: &Thing) -> Result<()> {
    let data = serde_json::to_string(t)
        .map_err(|e| Error::Encode(format!("thing {}: {e}", t.thing_name)))?;
    tx.prepare_cached(
        "INSERT INTO things (thing_name, data) VALUES (?1, ?2)
         ON CONFLICT (thing_name) DO UPDATE SET data = excluded.data",
    )?
    .execute(params![t.thing_name, data])?;
    // Things change rarely: their filter rows are rewritten whole.
    delete_thing_filters(tx, &t.thing_name)?;
    let mut attr = tx.prepare_cached(
        "INSERT INTO thing_attributes (name, value, thing_name) VALUES (?1, ?2, ?3)",
    )?;
    for (k, v) in &t.attributes {
        attr.execute(params![k, v, t.thing_name])?;
    }
    let mut group =
        tx.prepare_cached("INSERT INTO thing_groups (group_name, thing_name) VALUES (?1, ?2)")?;
    for g in &t.groups {
        group.execute(params![g, t.thing_name])?;
    }
    Ok(())
}

fn delete_thing_filters(tx: &Connection, name: &str) -> Result<()> {
    tx.prepare_cached("DELETE FROM thing_attributes WHERE thing_name = ?1")?
        .execute([name])?;
    tx.prepare_cached("DELETE FROM thing_groups WHERE thing_name = ?1")?
        .execute([name])?;
    Ok(())
}

fn delete_thing(tx: &Connection, name: &str) -> Result<()> {
    tx.prepare_cached("DELETE FROM things WHERE thing_name = ?1")?
        .execute([name])?;
    delete_thing_filters(tx, name)
}

fn upsert_group(tx: &Connection, g: &ThingGroup) -> Result<()> {
    let name = &g.thing_group_name;
    let data =
        serde_json::to_string(g).map_err(|e| Error::Encode(format!("thing group {name}: {e}")))?;
    tx.prepare_cached(
        "INSERT INTO group_records (thing_group_name, data) VALUES (?1, ?2)
         ON CONFLICT (thing_group_name) DO UPDATE SET data = excluded.data",
    )?
    .execute(params![name, data])?;
    Ok(())
}

fn upsert_credentials(tx: &Connection, w: &CredentialWrite) -> Result<()> {
    let c = &w.credentials;
    let owner = c.owner.resource_name();
    let data =
        serde_json::to_string(c).map_err(|e| Error::Encode(format!("credentials {owner}: {e}")))?;
    // An older or equal version (a replay) changes nothing, its certificates included.
    let changed = tx
        .prepare_cached(
            "INSERT INTO credentials (owner, version, data) VALUES (?1, ?2, ?3)
             ON CONFLICT (owner) DO UPDATE SET version = excluded.version, data = excluded.data
             WHERE excluded.version > credentials.version",
        )?
        .execute(params![owner, to_i64(c.version, "version")?, data])?;
    if changed == 0 {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO certificates (certificate_id, owner, status, data) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (certificate_id) DO UPDATE SET
             owner = excluded.owner, status = excluded.status, data = excluded.data",
    )?;
    for r in c.certificates.values() {
        let data = serde_json::to_string(r)
            .map_err(|e| Error::Encode(format!("certificate {}: {e}", r.certificate_id)))?;
        upsert.execute(params![r.certificate_id, owner, r.status.as_str(), data])?;
    }
    Ok(())
}

fn upsert_ca(tx: &Connection, c: &CaCertificate) -> Result<()> {
    let id = &c.ca_certificate_id;
    let data =
        serde_json::to_string(c).map_err(|e| Error::Encode(format!("CA certificate {id}: {e}")))?;
    tx.prepare_cached(
        "INSERT INTO ca_certificates (ca_certificate_id, version, data) VALUES (?1, ?2, ?3)
         ON CONFLICT (ca_certificate_id) DO UPDATE SET version = excluded.version, data = excluded.data
         WHERE excluded.version > ca_certificates.version",
    )?
    .execute(params![id, to_i64(c.version, "version")?, data])?;
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

#[async_trait::async_trait]
impl ReadModel for SqliteStore {
    async fn commit(&self, batch: ProjectionBatch) -> PortResult<()> {
        self.check_partition(batch.partition)?;
        let ProjectionBatch {
            partition,
            next_offset,
            commands,
            executions,
            things,
            credentials,
            cas,
            groups,
        } = batch;
        let writes = ProjectionWrites {
            commands,
            executions,
            things,
            credentials,
            cas,
            groups,
        };
        self.write(move |_, tx, _| {
            apply_writes(tx, &writes)?;
            set_position(tx, partition, next_offset)
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
        let sql = "SELECT data FROM commands WHERE command_id = ?1";
        self.read_by_id("command", sql, id.as_str()).await
    }

    async fn list_commands(&self, query: &CommandQuery) -> PortResult<Page<Command>> {
        let q = command_page_query(query)?;
        self.read_with(move |_, conn| run_page(conn, "command", COMMAND_TOKEN, &q))
            .await
    }

    async fn get_execution(&self, id: &ExecutionId) -> PortResult<Option<Execution>> {
        let sql = "SELECT data FROM executions WHERE execution_id = ?1";
        self.read_by_id("execution", sql, id.as_str()).await
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

    async fn get_thing(&self, name: &str) -> PortResult<Option<Thing>> {
        let sql = "SELECT data FROM things WHERE thing_name = ?1";
        self.read_by_id("thing", sql, name).await
    }

    async fn list_things(&self, query: &ThingQuery) -> PortResult<Page<Thing>> {
        let q = thing_page_query(query)?;
        self.read_with(move |_, conn| run_page(conn, "thing", THING_TOKEN, &q))
            .await
    }

    async fn get_credentials(&self, owner: &Target) -> PortResult<Option<Credentials>> {
        let sql = "SELECT data FROM credentials WHERE owner = ?1";
        self.read_by_id("credentials", sql, &owner.resource_name())
            .await
    }

    async fn get_certificate(&self, certificate_id: &str) -> PortResult<Option<CertificateRecord>> {
        let sql = "SELECT data FROM certificates WHERE certificate_id = ?1";
        self.read_by_id("certificate", sql, certificate_id).await
    }

    async fn list_certificates(&self, owner: &Target) -> PortResult<Vec<CertificateRecord>> {
        let sql = "SELECT certificate_id, data FROM certificates WHERE owner = ?1
                   ORDER BY certificate_id";
        self.read_rows("certificate", sql, Some(owner.resource_name()))
            .await
    }

    async fn revoked_certificates(&self) -> PortResult<Vec<CertificateRecord>> {
        let sql = "SELECT certificate_id, data FROM certificates WHERE status = 'REVOKED'
                   ORDER BY certificate_id";
        self.read_rows("certificate", sql, None).await
    }

    async fn get_ca_certificate(
        &self,
        ca_certificate_id: &str,
    ) -> PortResult<Option<CaCertificate>> {
        let sql = "SELECT data FROM ca_certificates WHERE ca_certificate_id = ?1";
        self.read_by_id("CA certificate", sql, ca_certificate_id)
            .await
    }

    async fn list_ca_certificates(&self) -> PortResult<Vec<CaCertificate>> {
        let sql = "SELECT ca_certificate_id, data FROM ca_certificates ORDER BY ca_certificate_id";
        self.read_rows("CA certificate", sql, None).await
    }

    async fn get_thing_group(&self, name: &str) -> PortResult<Option<ThingGroup>> {
        let sql = "SELECT data FROM group_records WHERE thing_group_name = ?1";
        self.read_by_id("thing group", sql, name).await
    }

    async fn list_thing_groups(&self, query: &GroupQuery) -> PortResult<Page<ThingGroup>> {
        let q = group_page_query(query)?;
        self.read_with(move |_, conn| run_page(conn, "thing group", GROUP_TOKEN, &q))
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

impl SqliteStore {
    /// The records `sql` (`SELECT <id>, data ...`, with `?1` bound to `arg` when given)
    /// selects, decoded.
    async fn read_rows<T>(
        &self,
        what: &'static str,
        sql: &'static str,
        arg: Option<String>,
    ) -> PortResult<Vec<T>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        self.read_with(move |_, conn| {
            let mut stmt = conn.prepare_cached(sql)?;
            let map = |r: &rusqlite::Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
            let rows = match &arg {
                Some(a) => stmt.query_map([a], map)?.collect::<Result<Vec<_>, _>>()?,
                None => stmt.query_map([], map)?.collect::<Result<Vec<_>, _>>()?,
            };
            rows.iter()
                .map(|(id, data)| decode(what, id, data))
                .collect()
        })
        .await
    }

    /// The record `id` that `sql` (`SELECT data ... WHERE <id column> = ?1`) selects, decoded.
    async fn read_by_id<T>(
        &self,
        what: &'static str,
        sql: &'static str,
        id: &str,
    ) -> PortResult<Option<T>>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let id = id.to_owned();
        self.read_with(move |_, conn| {
            let data: Option<String> = conn
                .prepare_cached(sql)?
                .query_row([id.as_str()], |r| r.get(0))
                .optional()?;
            data.map(|d| decode(what, &id, &d)).transpose()
        })
        .await
    }
}
