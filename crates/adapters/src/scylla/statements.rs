//! The CQL of every statement the adapter runs after the DDL, and their preparation at
//! connect.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

use super::error::prepare_error;
use super::tables::{INDEXES, index_table, key_column, sort_column};
use fleetcmd_domain::ports::PortResult;

/// The statements of one listing table (`S` = CQL text, then prepared statement).
pub(super) struct IndexStatements<S> {
    pub(super) upsert: S,
    pub(super) delete: S,
    pub(super) page_desc: S,
    pub(super) page_asc: S,
}

/// Every statement the adapter runs after the DDL, prepared once at connect.
pub(super) struct Statements<S = PreparedStatement> {
    pub(super) get_execution: S,
    pub(super) upsert_execution: S,
    pub(super) delete_execution: S,
    pub(super) index: Vec<IndexStatements<S>>,
    pub(super) upsert_bucket: S,
    pub(super) next_bucket_desc: S,
    pub(super) next_bucket_asc: S,
    pub(super) upsert_token: S,
    pub(super) delete_token: S,
    pub(super) tokens_of: S,
    pub(super) get_command: S,
    pub(super) upsert_command: S,
    pub(super) delete_command: S,
    pub(super) upsert_command_row: S,
    pub(super) delete_command_row: S,
    pub(super) commands_desc: S,
    pub(super) commands_asc: S,
    pub(super) get_thing: S,
    pub(super) thing_scopes: S,
    pub(super) upsert_thing: S,
    pub(super) set_thing_scopes: S,
    pub(super) delete_thing: S,
    pub(super) upsert_thing_row: S,
    pub(super) delete_thing_row: S,
    pub(super) things_from: S,
    pub(super) things_after: S,
    pub(super) get_position: S,
    pub(super) upsert_position: S,
}

pub(super) fn execution_upsert_cql(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.executions (execution_id, seq, data) VALUES (?, ?, ?) \
         USING TTL ? AND TIMESTAMP ?"
    )
}

/// The CQL of every statement. The bind markers of each one match the values its caller
/// builds (checked by a unit test): `USING TTL ? AND TIMESTAMP ?` and `VALUES (...) USING
/// TIMESTAMP ?` take their values last, `DELETE ... USING TIMESTAMP ? WHERE` first.
pub(super) fn statement_texts(ks: &str) -> Statements<String> {
    let index = INDEXES
        .iter()
        .map(|&(per, sort)| {
            let t = index_table(per, sort);
            let k = key_column(per);
            let s = sort_column(sort);
            let page = format!(
                "SELECT data FROM {ks}.{t} WHERE {k} = ? AND bucket = ? \
                 AND {s} >= ? AND {s} <= ?"
            );
            IndexStatements {
                upsert: format!(
                    "INSERT INTO {ks}.{t} ({k}, bucket, {s}, execution_id, data) \
                     VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
                ),
                delete: format!(
                    "DELETE FROM {ks}.{t} USING TIMESTAMP ? WHERE {k} = ? AND bucket = ? \
                     AND {s} = ? AND execution_id = ?"
                ),
                page_asc: format!("{page} ORDER BY {s} ASC, execution_id ASC"),
                page_desc: page,
            }
        })
        .collect();
    let buckets = format!(
        "SELECT bucket FROM {ks}.execution_buckets WHERE scope = ? \
         AND bucket >= ? AND bucket <= ?"
    );
    let commands = format!("SELECT data FROM {ks}.commands_by_created WHERE scope = ?");
    let things = format!("SELECT data FROM {ks}.things_by_name WHERE scope = ?");
    Statements {
        get_execution: format!("SELECT data FROM {ks}.executions WHERE execution_id = ?"),
        upsert_execution: execution_upsert_cql(ks),
        delete_execution: format!(
            "DELETE FROM {ks}.executions USING TIMESTAMP ? WHERE execution_id = ?"
        ),
        index,
        upsert_bucket: format!(
            "INSERT INTO {ks}.execution_buckets (scope, bucket) VALUES (?, ?) \
             USING TTL ? AND TIMESTAMP ?"
        ),
        next_bucket_desc: format!("{buckets} LIMIT 1"),
        next_bucket_asc: format!("{buckets} ORDER BY bucket ASC LIMIT 1"),
        upsert_token: format!(
            "INSERT INTO {ks}.executions_by_token (target_kind, target_id, client_token, \
             started_at, execution_id) VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
        ),
        delete_token: format!(
            "DELETE FROM {ks}.executions_by_token USING TIMESTAMP ? WHERE target_kind = ? \
             AND target_id = ? AND client_token = ? AND started_at = ? AND execution_id = ?"
        ),
        tokens_of: format!(
            "SELECT started_at, execution_id FROM {ks}.executions_by_token \
             WHERE target_kind = ? AND target_id = ? AND client_token = ?"
        ),
        get_command: format!("SELECT data FROM {ks}.commands WHERE command_id = ?"),
        upsert_command: format!(
            "INSERT INTO {ks}.commands (command_id, data) VALUES (?, ?) USING TIMESTAMP ?"
        ),
        delete_command: format!("DELETE FROM {ks}.commands USING TIMESTAMP ? WHERE command_id = ?"),
        upsert_command_row: format!(
            "INSERT INTO {ks}.commands_by_created (scope, created_at, command_id, data) \
             VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
        ),
        delete_command_row: format!(
            "DELETE FROM {ks}.commands_by_created USING TIMESTAMP ? WHERE scope = ? \
             AND created_at = ? AND command_id = ?"
        ),
        commands_asc: format!("{commands} ORDER BY created_at ASC, command_id ASC"),
        commands_desc: commands,
        get_thing: format!("SELECT data FROM {ks}.things WHERE thing_name = ?"),
        thing_scopes: format!(
            "SELECT scopes, WRITETIME(scopes) FROM {ks}.things WHERE thing_name = ?"
        ),
        upsert_thing: format!(
            "INSERT INTO {ks}.things (thing_name, data, scopes) VALUES (?, ?, ?) \
             USING TIMESTAMP ?"
        ),
        set_thing_scopes: format!(
            "UPDATE {ks}.things USING TIMESTAMP ? SET scopes = ? WHERE thing_name = ?"
        ),
        delete_thing: format!("DELETE FROM {ks}.things USING TIMESTAMP ? WHERE thing_name = ?"),
        upsert_thing_row: format!(
            "INSERT INTO {ks}.things_by_name (scope, thing_name, data) VALUES (?, ?, ?) \
             USING TIMESTAMP ?"
        ),
        delete_thing_row: format!(
            "DELETE FROM {ks}.things_by_name USING TIMESTAMP ? WHERE scope = ? \
             AND thing_name = ?"
        ),
        things_from: format!("{things} AND thing_name >= ? AND thing_name < ?"),
        things_after: format!("{things} AND thing_name > ? AND thing_name < ?"),
        get_position: format!("SELECT next_offset FROM {ks}.positions WHERE log_partition = ?"),
        upsert_position: format!(
            "INSERT INTO {ks}.positions (log_partition, next_offset) VALUES (?, ?) \
             USING TIMESTAMP ?"
        ),
    }
}

pub(super) async fn prepare(session: &Session, cql: String) -> PortResult<PreparedStatement> {
    let mut st = session
        .prepare(cql.as_str())
        .await
        .map_err(|e| prepare_error(&cql, e))?;
    // Every statement is idempotent (versioned writes), so the driver may retry them.
    st.set_is_idempotent(true);
    Ok(st)
}

impl Statements {
    pub(super) async fn prepare(session: &Session, texts: Statements<String>) -> PortResult<Self> {
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
            get_thing: prepare(session, texts.get_thing).await?,
            thing_scopes: prepare(session, texts.thing_scopes).await?,
            upsert_thing: prepare(session, texts.upsert_thing).await?,
            set_thing_scopes: prepare(session, texts.set_thing_scopes).await?,
            delete_thing: prepare(session, texts.delete_thing).await?,
            upsert_thing_row: prepare(session, texts.upsert_thing_row).await?,
            delete_thing_row: prepare(session, texts.delete_thing_row).await?,
            things_from: prepare(session, texts.things_from).await?,
            things_after: prepare(session, texts.things_after).await?,
            get_position: prepare(session, texts.get_position).await?,
            upsert_position: prepare(session, texts.upsert_position).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values each caller binds (see `upsert_execution`, `delete_listing_rows`,
    /// `page_values`, `next_bucket`, `upsert_command`, `commit`, `token_rows`, `commit_things`,
    /// `thing_page`...).
    #[test]
    fn bind_markers_match_the_values_each_statement_gets() {
        let markers = |cql: &str| cql.matches('?').count();
        let expected = [
            1, 5, 2, 7, 5, 4, 4, 4, 3, 3, 1, 3, 2, 5, 4, 1, 1, 1, 3, 7, 6, 3, 1, 1, 4, 3, 2, 4, 3,
            3, 3,
        ];
        let t = statement_texts("ks");
        for i in &t.index {
            let got = [&i.upsert, &i.delete, &i.page_desc, &i.page_asc].map(|c| markers(c));
            assert_eq!(got, [expected[3], expected[4], expected[5], expected[6]]);
        }
        let i = &t.index[0];
        let all = [
            &t.get_execution,
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
            &t.get_thing,
            &t.thing_scopes,
            &t.upsert_thing,
            &t.set_thing_scopes,
            &t.delete_thing,
            &t.upsert_thing_row,
            &t.delete_thing_row,
            &t.things_from,
            &t.things_after,
        ];
        assert_eq!(all.len(), expected.len());
        for (cql, want) in all.iter().zip(expected) {
            assert_eq!(markers(cql), want, "{cql}");
        }
        // `check_using_clauses` tells a server that ignores USING clauses by this count.
        assert_eq!(markers(&execution_upsert_cql("ks")), 5);
    }
}
