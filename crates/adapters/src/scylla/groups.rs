//! Thing groups in CQL: rows of the single `thing_groups` partition, clustered by name, so
//! ListThingGroups (a name prefix, in name order) is one slice of it. A static group's
//! members are the `things_by_name` rows of its `group:<name>` scope (see `things.rs`).
//!
//! A group re-created after a delete starts its versions again, so rows are written at a
//! timestamp from the clock (as things' rows are): strictly increasing within the process,
//! and above the stored row's own write time, so a writer whose clock is behind the previous
//! one's (after a rebalance) still replaces what it wrote.

use fleetcmd_domain::group::ThingGroup;
use fleetcmd_domain::ports::{GroupQuery, GroupWrite, Page, PortResult};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::ScyllaReadModel;
use super::error::{decode_json, encode_json, exec_error, rows_error};
use super::paging::{Cursor, GROUP_TOKEN, decode_token, encode_token, fingerprint};
use super::statements::prepare;
use super::tables::ALL_SCOPE;
use crate::effective_page_size;

/// DDL of the group table.
pub(super) fn group_tables(ks: &str) -> [String; 1] {
    [format!(
        "CREATE TABLE IF NOT EXISTS {ks}.thing_groups (scope text, thing_group_name text, \
         data blob, PRIMARY KEY ((scope), thing_group_name)) \
         WITH CLUSTERING ORDER BY (thing_group_name ASC)"
    )]
}

/// The prepared statements of the group table.
pub(super) struct GroupStatements {
    get: PreparedStatement,
    written_at: PreparedStatement,
    list: PreparedStatement,
    put: PreparedStatement,
    delete: PreparedStatement,
}

impl GroupStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> PortResult<Self> {
        let key = "scope = ? AND thing_group_name = ?";
        Ok(Self {
            get: prepare(
                session,
                format!("SELECT data FROM {ks}.thing_groups WHERE {key}"),
            )
            .await?,
            written_at: prepare(
                session,
                format!("SELECT WRITETIME(data) FROM {ks}.thing_groups WHERE {key}"),
            )
            .await?,
            list: prepare(
                session,
                format!(
                    "SELECT data FROM {ks}.thing_groups WHERE scope = ? \
                     AND thing_group_name >= ? AND thing_group_name < ?"
                ),
            )
            .await?,
            put: prepare(
                session,
                format!(
                    "INSERT INTO {ks}.thing_groups (scope, thing_group_name, data) \
                     VALUES (?, ?, ?) USING TIMESTAMP ?"
                ),
            )
            .await?,
            delete: prepare(
                session,
                format!("DELETE FROM {ks}.thing_groups USING TIMESTAMP ? WHERE {key}"),
            )
            .await?,
        })
    }
}

fn key(name: &str) -> Vec<CqlValue> {
    vec![
        CqlValue::Text(ALL_SCOPE.to_owned()),
        CqlValue::Text(name.to_owned()),
    ]
}

impl ScyllaReadModel {
    /// Writes each group's last write of the batch, one after the other (groups change
    /// rarely; a later write of the same group must land later).
    pub(super) async fn commit_groups(&self, writes: &[GroupWrite]) -> PortResult<()> {
        for w in writes {
            let name = w.group_name();
            let floor = self
                .group_written_at(name)
                .await?
                .map_or(i64::MIN, |t| t + 1);
            let ts = self.next_thing_timestamp(floor);
            let (what, st, values) = match w {
                GroupWrite::Upsert(g) => {
                    let mut values = key(name);
                    values.push(CqlValue::Blob(encode_json("thing group", name, g)?));
                    values.push(CqlValue::BigInt(ts));
                    ("writing a thing group", &self.groups.put, values)
                }
                GroupWrite::Delete(_) => {
                    let mut values = vec![CqlValue::BigInt(ts)];
                    values.extend(key(name));
                    ("deleting a thing group", &self.groups.delete, values)
                }
            };
            self.exec(what, st, values).await?;
        }
        Ok(())
    }

    async fn group_written_at(&self, name: &str) -> PortResult<Option<i64>> {
        let res = self
            .session
            .execute_unpaged(&self.groups.written_at, key(name))
            .await
            .map_err(|e| exec_error("reading a thing group's write time", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("thing group write time", e))?;
        let row = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| rows_error("thing group write time", e))?;
        Ok(row.and_then(|(t,)| t))
    }

    pub(super) async fn stored_group(&self, name: &str) -> PortResult<Option<ThingGroup>> {
        let res = self
            .session
            .execute_unpaged(&self.groups.get, key(name))
            .await
            .map_err(|e| exec_error("reading a thing group", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("thing group", e))?;
        match rows
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(|e| rows_error("thing group", e))?
        {
            Some((data,)) => decode_json(&format!("thing group {name}"), &data).map(Some),
            None => Ok(None),
        }
    }

    /// One page of groups by name; the token carries the driver's paging state.
    pub(super) async fn stored_groups(&self, q: &GroupQuery) -> PortResult<Page<ThingGroup>> {
        let prefix = q.name_prefix.clone().unwrap_or_default();
        let fp = fingerprint(&["thing_groups", &prefix]);
        let state = match &q.page_token {
            Some(t) => decode_token(GROUP_TOKEN, fp, t)?.state,
            None => None,
        };
        // Names are ASCII below DEL, so every name with the prefix sorts before prefix + DEL.
        let values = vec![
            CqlValue::Text(ALL_SCOPE.to_owned()),
            CqlValue::Text(prefix.clone()),
            CqlValue::Text(format!("{prefix}\u{7f}")),
        ];
        let limit = effective_page_size(q.page_size) as usize;
        let got = self
            .fetch(
                "listing thing groups",
                &self.groups.list,
                values,
                limit,
                state,
            )
            .await?;
        let items = got
            .rows
            .iter()
            .map(|data| decode_json("thing group", data))
            .collect::<PortResult<Vec<ThingGroup>>>()?;
        let next_token = got.more.map(|state| {
            encode_token(
                GROUP_TOKEN,
                fp,
                &Cursor {
                    bucket: 0,
                    state: Some(state),
                },
            )
        });
        Ok(Page { items, next_token })
    }
}
