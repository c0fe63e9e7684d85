//! The writes of a commit: every row an execution or command upsert writes (versioned by
//! write timestamps, expiring by TTL), the deletes, and which write of a batch wins.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::PoisonError;

use fleetcmd_domain::ports::{ExecutionWrite, PortResult};
use fleetcmd_domain::{Command, Execution, ExecutionId, TimestampMs};
use futures::{StreamExt, TryStreamExt};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::error::{encode_json, exec_error, to_i64};
use super::tables::{
    ALL_SCOPE, INDEXES, SortBy, bucket_scope, bucket_start, index_key, index_slot,
};
use super::{DELETE_TIMESTAMP, ScyllaReadModel};

/// ScyllaDB refuses TTLs above 20 years.
const MAX_TTL_SECS: i64 = 20 * 365 * 24 * 3600;

/// One write, run with others by [`ScyllaReadModel::run_writes`].
pub(super) type WriteFuture<'a> = Pin<Box<dyn Future<Output = PortResult<()>> + Send + 'a>>;

/// Values plus `TTL ?, TIMESTAMP ?`.
fn with_ttl(mut values: Vec<CqlValue>, ttl_secs: i32, ts: i64) -> Vec<CqlValue> {
    values.push(CqlValue::Int(ttl_secs));
    values.push(CqlValue::BigInt(ts));
    values
}

/// `TIMESTAMP ?` first (deletes: `USING` precedes `WHERE`), then the values.
fn ts_first(ts: i64, values: Vec<CqlValue>) -> Vec<CqlValue> {
    std::iter::once(CqlValue::BigInt(ts))
        .chain(values)
        .collect()
}

/// Values plus `TIMESTAMP ?`.
pub(super) fn ts_last(mut values: Vec<CqlValue>, ts: i64) -> Vec<CqlValue> {
    values.push(CqlValue::BigInt(ts));
    values
}

impl ScyllaReadModel {
    pub(super) fn exec<'a>(
        &'a self,
        what: &'static str,
        st: &'a PreparedStatement,
        values: Vec<CqlValue>,
    ) -> WriteFuture<'a> {
        Box::pin(async move {
            self.session
                .execute_unpaged(st, values)
                .await
                .map(|_| ())
                .map_err(|e| exec_error(what, e))
        })
    }

    /// The CQL TTL of a record expiring at `time_to_live`, `None` when already expired.
    pub(super) fn ttl_secs(&self, time_to_live: TimestampMs) -> Option<i32> {
        let left_ms = time_to_live.saturating_sub(self.clock.now_ms());
        if left_ms <= 0 {
            return None;
        }
        let secs = (left_ms.saturating_add(999) / 1000).min(MAX_TTL_SECS);
        i32::try_from(secs).ok()
    }

    /// The index rows of `e`: (slot, partition key, bucket, sort time).
    pub(super) fn index_rows(&self, e: &Execution) -> Vec<(usize, String, i64, i64)> {
        let mut rows = Vec::with_capacity(6);
        for (per, sort) in INDEXES {
            let t = match sort {
                SortBy::Started => e.started_at,
                SortBy::Completed => match e.completed_at {
                    Some(c) => c,
                    None => continue,
                },
            };
            rows.push((
                index_slot(per, sort),
                index_key(per, e),
                bucket_start(t, self.buckets.of(per)),
                t,
            ));
        }
        rows
    }

    /// The primary key of `e`'s `executions_by_token` row, `None` when it has no client token.
    pub(super) fn token_row_key(e: &Execution) -> Option<Vec<CqlValue>> {
        let token = e.client_token.as_ref()?;
        Some(vec![
            CqlValue::Text(e.target.kind.resource().to_owned()),
            CqlValue::Text(e.target.id.clone()),
            CqlValue::Text(token.clone()),
            CqlValue::BigInt(e.started_at),
            CqlValue::Text(e.execution_id.as_str().to_owned()),
        ])
    }

    /// The writes of one execution upsert (nothing when it has already expired).
    pub(super) fn upsert_execution<'a>(
        &'a self,
        e: &'a Execution,
    ) -> PortResult<Vec<WriteFuture<'a>>> {
        let Some(ttl) = self.ttl_secs(e.time_to_live) else {
            return Ok(Vec::new());
        };
        let seq = to_i64(e.seq, "seq")?;
        let id = e.execution_id.as_str();
        let data = encode_json("execution", id, e)?;
        let mut out = Vec::with_capacity(15);
        // Its key never changes, but it is rewritten with every upsert, versioned and expiring
        // like the execution's other rows, so replays and out-of-order batches are harmless.
        if let Some(key) = Self::token_row_key(e) {
            out.push(self.exec(
                "writing an execution's client-token row",
                &self.st.upsert_token,
                with_ttl(key, ttl, seq),
            ));
        }
        out.push(self.exec(
            "writing an execution",
            &self.st.upsert_execution,
            with_ttl(
                vec![
                    CqlValue::Text(id.to_owned()),
                    CqlValue::BigInt(seq),
                    CqlValue::Blob(data.clone()),
                ],
                ttl,
                seq,
            ),
        ));
        for (slot, key, bucket, t) in self.index_rows(e) {
            let (per, sort) = INDEXES[slot];
            if let Some(f) = self.upsert_bucket(bucket_scope(per, sort, &key), bucket, e, ttl) {
                out.push(f);
            }
            out.push(self.exec(
                "writing an execution listing row",
                &self.st.index[slot].upsert,
                with_ttl(
                    vec![
                        CqlValue::Text(key),
                        CqlValue::BigInt(bucket),
                        CqlValue::BigInt(t),
                        CqlValue::Text(id.to_owned()),
                        CqlValue::Blob(data.clone()),
                    ],
                    ttl,
                    seq,
                ),
            ));
        }
        Ok(out)
    }

    /// Records that `(scope, bucket)` holds rows until `e.time_to_live`, unless this process
    /// already did for a time at least as late. The row's write timestamp is that time (µs),
    /// so the latest-expiring write wins, and its TTL ends then.
    pub(super) fn upsert_bucket<'a>(
        &'a self,
        scope: String,
        bucket: i64,
        e: &Execution,
        ttl: i32,
    ) -> Option<WriteFuture<'a>> {
        let until = e.time_to_live;
        {
            let written = self
                .buckets_written
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if written
                .get(&(scope.clone(), bucket))
                .is_some_and(|t| *t >= until)
            {
                return None;
            }
        }
        let values = with_ttl(
            vec![CqlValue::Text(scope.clone()), CqlValue::BigInt(bucket)],
            ttl,
            until.saturating_mul(1000),
        );
        Some(Box::pin(async move {
            self.session
                .execute_unpaged(&self.st.upsert_bucket, values)
                .await
                .map_err(|err| exec_error("writing an execution bucket", err))?;
            let mut written = self
                .buckets_written
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Bounded: forgetting only costs a rewrite of a bucket row.
            if written.len() >= 100_000 {
                written.clear();
            }
            let slot = written.entry((scope, bucket)).or_insert(until);
            *slot = (*slot).max(until);
            Ok(())
        }))
    }

    /// The writes that delete the listing rows and the client-token row of `e` (a stored
    /// version).
    pub(super) fn delete_listing_rows<'a>(&'a self, e: &Execution) -> Vec<WriteFuture<'a>> {
        let mut out = Vec::with_capacity(7);
        if let Some(key) = Self::token_row_key(e) {
            out.push(self.exec(
                "deleting an execution's client-token row",
                &self.st.delete_token,
                ts_first(DELETE_TIMESTAMP, key),
            ));
        }
        for (slot, key, bucket, t) in self.index_rows(e) {
            out.push(self.exec(
                "deleting an execution listing row",
                &self.st.index[slot].delete,
                ts_first(
                    DELETE_TIMESTAMP,
                    vec![
                        CqlValue::Text(key),
                        CqlValue::BigInt(bucket),
                        CqlValue::BigInt(t),
                        CqlValue::Text(e.execution_id.as_str().to_owned()),
                    ],
                ),
            ));
        }
        out
    }

    pub(super) fn delete_execution_by_id<'a>(&'a self, id: &ExecutionId) -> WriteFuture<'a> {
        self.exec(
            "deleting an execution",
            &self.st.delete_execution,
            ts_first(
                DELETE_TIMESTAMP,
                vec![CqlValue::Text(id.as_str().to_owned())],
            ),
        )
    }

    /// Command cells are versioned by `last_updated_at`, in µs.
    pub(super) fn command_ts(c: &Command) -> i64 {
        c.last_updated_at.saturating_mul(1000)
    }

    pub(super) fn command_scopes(c: &Command) -> [String; 2] {
        [ALL_SCOPE.to_owned(), format!("ns:{}", c.namespace)]
    }

    pub(super) fn upsert_command<'a>(&'a self, c: &'a Command) -> PortResult<Vec<WriteFuture<'a>>> {
        let id = c.command_id.as_str();
        let data = encode_json("command", id, c)?;
        let ts = Self::command_ts(c);
        let mut out = vec![self.exec(
            "writing a command",
            &self.st.upsert_command,
            ts_last(
                vec![CqlValue::Text(id.to_owned()), CqlValue::Blob(data.clone())],
                ts,
            ),
        )];
        for scope in Self::command_scopes(c) {
            out.push(self.exec(
                "writing a command listing row",
                &self.st.upsert_command_row,
                ts_last(
                    vec![
                        CqlValue::Text(scope),
                        CqlValue::BigInt(c.created_at),
                        CqlValue::Text(id.to_owned()),
                        CqlValue::Blob(data.clone()),
                    ],
                    ts,
                ),
            ));
        }
        Ok(out)
    }

    /// Deletes `stored` just above its version: older versions replayed later stay hidden, a
    /// command re-created later with the same id does not.
    pub(super) fn delete_command_rows<'a>(&'a self, stored: &Command) -> Vec<WriteFuture<'a>> {
        let ts = Self::command_ts(stored).saturating_add(999);
        let id = stored.command_id.as_str();
        let mut out = vec![self.exec(
            "deleting a command",
            &self.st.delete_command,
            ts_first(ts, vec![CqlValue::Text(id.to_owned())]),
        )];
        for scope in Self::command_scopes(stored) {
            out.push(self.exec(
                "deleting a command listing row",
                &self.st.delete_command_row,
                ts_first(
                    ts,
                    vec![
                        CqlValue::Text(scope),
                        CqlValue::BigInt(stored.created_at),
                        CqlValue::Text(id.to_owned()),
                    ],
                ),
            ));
        }
        out
    }

    /// Runs `writes` with at most `write_concurrency` in flight; fails with the first error.
    pub(super) async fn run_writes(&self, writes: Vec<WriteFuture<'_>>) -> PortResult<()> {
        futures::stream::iter(writes)
            .buffer_unordered(self.write_concurrency)
            .try_collect::<()>()
            .await
    }
}

/// Per execution id, the write of the batch that wins: the highest `seq` of its upserts,
/// and a delete over any upsert (ids are never reused).
pub(super) fn winning_execution_writes(writes: &[ExecutionWrite]) -> Vec<&ExecutionWrite> {
    let mut order: Vec<&ExecutionId> = Vec::new();
    let mut win: HashMap<&ExecutionId, &ExecutionWrite> = HashMap::new();
    for w in writes {
        let id = w.execution_id();
        match win.get(id) {
            None => {
                order.push(id);
                win.insert(id, w);
            }
            Some(ExecutionWrite::Delete { .. }) => {}
            Some(ExecutionWrite::Upsert(old)) => {
                let replace = match w {
                    ExecutionWrite::Delete { .. } => true,
                    ExecutionWrite::Upsert(new) => new.seq > old.seq,
                };
                if replace {
                    win.insert(id, w);
                }
            }
        }
    }
    order
        .into_iter()
        .filter_map(|id| win.get(id).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetcmd_domain::testing;

    fn execution(id: &str, seq: u64) -> Execution {
        let mut e = testing::execution(id, "c", None);
        e.seq = seq;
        e
    }

    #[test]
    fn the_highest_seq_of_a_batch_wins_and_deletes_beat_upserts() {
        let a1 = ExecutionWrite::Upsert(execution("a", 1));
        let a3 = ExecutionWrite::Upsert(execution("a", 3));
        let a2 = ExecutionWrite::Upsert(execution("a", 2));
        let b1 = ExecutionWrite::Upsert(execution("b", 1));
        let b_del = ExecutionWrite::delete(ExecutionId::parse("b").expect("id"));
        let b5 = ExecutionWrite::Upsert(execution("b", 5));
        let writes = vec![a1, a3.clone(), b1, a2, b_del.clone(), b5];
        let won = winning_execution_writes(&writes);
        assert_eq!(won, vec![&a3, &b_del]);
    }
}
