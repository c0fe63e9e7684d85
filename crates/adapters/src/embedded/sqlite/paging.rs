//! Listings: the SQL of one page of a command or execution query (every shape served by an
//! index, never sorted in memory), and page tokens (base64url of `kind|sort_time|id`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fleetcmd_domain::TimestampMs;
use fleetcmd_domain::ports::{
    CommandQuery, ExecutionQuery, GroupQuery, Page, PortResult, ThingQuery,
};
use rusqlite::Connection;
use rusqlite::types::Value;

use super::decode;
use crate::error::Result;
use crate::{effective_page_size, invalid_page_token};

/// A position in a sorted listing: the sort time and the id that breaks ties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PageKey {
    time: TimestampMs,
    id: String,
}

pub(super) const COMMAND_TOKEN: &str = "c";
pub(super) const EXECUTION_TOKEN: &str = "e";
pub(super) const THING_TOKEN: &str = "t";
pub(super) const GROUP_TOKEN: &str = "g";

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
pub(super) struct PageQuery {
    sql: String,
    params: Vec<Value>,
    limit: usize,
}

/// How a listing is sorted and where its pages start: by `(time_column, id_column)`, with
/// page tokens of `token_kind`.
struct Keyset<'a> {
    token_kind: &'a str,
    time_column: &'a str,
    id_column: &'a str,
}

impl<'a> Keyset<'a> {
    fn new(token_kind: &'a str, time_column: &'a str, id_column: &'a str) -> Self {
        Self {
            token_kind,
            time_column,
            id_column,
        }
    }

    /// Ends the query of one page (`sql` holds the filters, `params` their values): after
    /// the token's key in the sort direction, sorted, and one row more than the page size,
    /// which tells whether another page follows.
    fn finish(
        &self,
        mut sql: String,
        mut params: Vec<Value>,
        ascending: bool,
        page_token: Option<&str>,
        page_size: u32,
    ) -> PortResult<PageQuery> {
        let Keyset {
            token_kind,
            time_column,
            id_column,
        } = self;
        let (cmp, dir) = if ascending {
            (">", "ASC")
        } else {
            ("<", "DESC")
        };
        if let Some(token) = page_token {
            let key = decode_token(token_kind, token)?;
            params.push(Value::Integer(key.time));
            params.push(Value::Text(key.id));
            let n = params.len();
            sql.push_str(&format!(
                " AND ({time_column}, {id_column}) {cmp} (?{}, ?{n})",
                n - 1
            ));
        }
        let limit = effective_page_size(page_size) as usize;
        params.push(Value::Integer(limit as i64 + 1));
        sql.push_str(&format!(
            " ORDER BY {time_column} {dir}, {id_column} {dir} LIMIT ?{}",
            params.len()
        ));
        Ok(PageQuery { sql, params, limit })
    }
}

pub(super) fn command_page_query(q: &CommandQuery) -> PortResult<PageQuery> {
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
    Keyset::new(COMMAND_TOKEN, "created_at", "command_id").finish(
        sql,
        params,
        q.ascending,
        q.page_token.as_deref(),
        q.page_size,
    )
}

pub(super) fn execution_page_query(q: &ExecutionQuery) -> PortResult<PageQuery> {
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
    Keyset::new(EXECUTION_TOKEN, sort, "execution_id").finish(
        sql,
        params,
        q.ascending,
        q.page_token.as_deref(),
        q.page_size,
    )
}

/// Things sort by name alone (their tokens carry a sort time of 0), walking the primary key;
/// the filters are semi-joins on the attribute and group tables.
pub(super) fn thing_page_query(q: &ThingQuery) -> PortResult<PageQuery> {
    let mut sql = String::from("SELECT data, 0, thing_name FROM things t WHERE 1 = 1");
    let mut params = Vec::new();
    if let Some((name, value)) = &q.attribute {
        params.push(Value::Text(name.clone()));
        params.push(Value::Text(value.clone()));
        let n = params.len();
        sql.push_str(&format!(
            " AND thing_name IN (SELECT thing_name FROM thing_attributes
                                 WHERE name = ?{} AND value = ?{n})",
            n - 1
        ));
    }
    if let Some(group) = &q.group {
        params.push(Value::Text(group.clone()));
        sql.push_str(&format!(
            " AND thing_name IN (SELECT thing_name FROM thing_groups WHERE group_name = ?{})",
            params.len()
        ));
    }
    name_page(
        sql,
        params,
        "thing_name",
        THING_TOKEN,
        q.name_prefix.as_deref(),
        q.page_token.as_deref(),
        q.page_size,
    )
}

/// ListThingGroups: groups by name.
pub(super) fn group_page_query(q: &GroupQuery) -> PortResult<PageQuery> {
    let sql = String::from("SELECT data, 0, thing_group_name FROM group_records WHERE 1 = 1");
    name_page(
        sql,
        Vec::new(),
        "thing_group_name",
        GROUP_TOKEN,
        q.name_prefix.as_deref(),
        q.page_token.as_deref(),
        q.page_size,
    )
}

/// Completes a listing by name: the names with `prefix`, after the token's, in order.
fn name_page(
    mut sql: String,
    mut params: Vec<Value>,
    column: &str,
    token_kind: &str,
    prefix: Option<&str>,
    token: Option<&str>,
    page_size: u32,
) -> PortResult<PageQuery> {
    if let Some(prefix) = prefix {
        // Names are ASCII below DEL, so every name with the prefix sorts before prefix + DEL.
        params.push(Value::Text(prefix.to_owned()));
        params.push(Value::Text(format!("{prefix}\u{7f}")));
        let n = params.len();
        sql.push_str(&format!(" AND {column} >= ?{} AND {column} < ?{n}", n - 1));
    }
    if let Some(token) = token {
        let key = decode_token(token_kind, token)?;
        params.push(Value::Text(key.id));
        sql.push_str(&format!(" AND {column} > ?{}", params.len()));
    }
    let limit = effective_page_size(page_size) as usize;
    params.push(Value::Integer(limit as i64 + 1));
    sql.push_str(&format!(" ORDER BY {column} LIMIT ?{}", params.len()));
    Ok(PageQuery { sql, params, limit })
}

pub(super) fn run_page<T: serde::de::DeserializeOwned>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use fleetcmd_domain::ports::TimeRange;
    use fleetcmd_domain::{CommandId, ExecutionStatus, Target};

    use crate::embedded::sqlite::schema::SCHEMA;

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
