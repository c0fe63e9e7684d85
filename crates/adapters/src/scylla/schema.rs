//! The keyspace and its tables (DDL), and the settings stored at creation (schema version,
//! bucket widths).

use scylla::client::session::Session;

use fleetcmd_domain::ports::{PortError, PortResult};

use super::error::{exec_error, rows_error};
use super::statements::prepare;
use super::tables::{INDEXES, index_table, key_column, sort_column};
use super::{BucketWidths, Replication};

/// Version of the table layout, recorded in `settings`.
const SCHEMA_VERSION: i64 = 1;

pub(super) fn valid_keyspace(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

/// A CQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

pub(super) fn replication_cql(r: &Replication) -> PortResult<String> {
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

/// DDL, in order (upper-case keywords, `AND` between options).
pub(super) fn schema_cql(ks: &str, replication: &str) -> Vec<String> {
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
    // `scopes`: every `things_by_name` partition that may hold a row of the thing.
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.things (thing_name text, data blob, \
         scopes frozen<set<text>>, PRIMARY KEY (thing_name))"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.things_by_name (scope text, thing_name text, \
         data blob, PRIMARY KEY ((scope), thing_name)) \
         WITH CLUSTERING ORDER BY (thing_name ASC)"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.positions (log_partition int, next_offset bigint, \
         PRIMARY KEY (log_partition))"
    ));
    ddl.extend(super::snapshots::snapshot_tables(ks));
    ddl.extend(super::credentials::credential_tables(ks));
    ddl.extend(super::groups::group_tables(ks));
    ddl
}

/// The bucket widths: the stored ones, or `wanted` (stored now) on a new keyspace.
pub(super) async fn settle_settings(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scylla::tables::index_slot;

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

    #[test]
    fn ddl_names_every_listing_table() {
        let ddl = schema_cql("ks", "{}").join("\n");
        for (per, sort) in INDEXES {
            assert!(ddl.contains(&format!("ks.{} (", index_table(per, sort))));
        }
        assert!(ddl.contains("ks.executions_by_token ("));
        assert!(ddl.contains("ks.things ("));
        assert!(ddl.contains("ks.things_by_name ("));
        assert_eq!(
            INDEXES
                .iter()
                .map(|(p, s)| index_slot(*p, *s))
                .collect::<Vec<_>>(),
            (0..6).collect::<Vec<_>>()
        );
    }
}
