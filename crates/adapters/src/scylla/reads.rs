//! The reads behind gets and listings: one page of a statement (the driver's paging state
//! in and out), the next bucket of a partition chain, point reads, client-token rows.

use fleetcmd_domain::ports::PortResult;
use fleetcmd_domain::{Execution, ExecutionId, Target};
use futures::{StreamExt, TryStreamExt};
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlValue;

use super::ScyllaReadModel;
use super::error::{decode_json, exec_error, rows_error};
use super::plan::ExecutionPlan;
use super::tables::bucket_start;
use crate::invalid_page_token;

/// Concurrent point reads in `get_executions`.
const READ_CONCURRENCY: usize = 32;

/// Rows of one round trip, and where the partition continues.
pub(super) struct Fetched {
    pub(super) rows: Vec<Vec<u8>>,
    pub(super) more: Option<Vec<u8>>,
}

impl ScyllaReadModel {
    /// One round trip: at most `page_size` rows of `st` from `state`.
    pub(super) async fn fetch(
        &self,
        what: &'static str,
        st: &PreparedStatement,
        values: Vec<CqlValue>,
        page_size: usize,
        state: Option<Vec<u8>>,
    ) -> PortResult<Fetched> {
        let mut st = st.clone();
        st.set_page_size(i32::try_from(page_size.max(1)).unwrap_or(i32::MAX));
        let resumed = state.is_some();
        let state = match state {
            Some(s) => PagingState::new_from_raw_bytes(s),
            None => PagingState::start(),
        };
        let (res, more) = self
            .session
            .execute_single_page(&st, values, state)
            .await
            .map_err(|e| match e {
                // A forged or corrupted paging state in a token.
                ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                    DbError::Invalid | DbError::ProtocolError,
                    ref m,
                )) if resumed => {
                    invalid_page_token(format!("the server refused its paging state: {m}"))
                }
                e => exec_error(what, e),
            })?;
        let rows = res.into_rows_result().map_err(|e| rows_error(what, e))?;
        let rows = rows
            .rows::<(Vec<u8>,)>()
            .map_err(|e| rows_error(what, e))?
            .map(|r| r.map(|(data,)| data))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| rows_error(what, e))?;
        let more = match more {
            PagingStateResponse::HasMorePages { state } => {
                state.as_bytes_slice().map(|s| s.to_vec())
            }
            PagingStateResponse::NoMorePages => None,
        };
        Ok(Fetched { rows, more })
    }

    /// The next bucket of `plan`'s partition chain after `after` (exclusive; `None`: the
    /// first), in the plan's direction, within its range.
    pub(super) async fn next_bucket(
        &self,
        plan: &ExecutionPlan,
        after: Option<i64>,
    ) -> PortResult<Option<i64>> {
        let mut lo = bucket_start(plan.lo, plan.width);
        let mut hi = bucket_start(plan.hi, plan.width);
        match (after, plan.ascending) {
            (None, _) => {}
            (Some(b), true) => lo = lo.max(b.saturating_add(1)),
            (Some(b), false) => hi = hi.min(b.saturating_sub(1)),
        }
        if lo > hi {
            return Ok(None);
        }
        let scope = plan.scope();
        let st = if plan.ascending {
            &self.st.next_bucket_asc
        } else {
            &self.st.next_bucket_desc
        };
        let res = self
            .session
            .execute_unpaged(
                st,
                vec![
                    CqlValue::Text(scope),
                    CqlValue::BigInt(lo),
                    CqlValue::BigInt(hi),
                ],
            )
            .await
            .map_err(|e| exec_error("finding the next bucket", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("buckets", e))?;
        rows.maybe_first_row::<(i64,)>()
            .map(|r| r.map(|(b,)| b))
            .map_err(|e| rows_error("buckets", e))
    }

    pub(super) fn page_values(&self, plan: &ExecutionPlan, bucket: i64) -> Vec<CqlValue> {
        vec![
            CqlValue::Text(plan.key.clone()),
            CqlValue::BigInt(bucket),
            CqlValue::BigInt(plan.lo),
            CqlValue::BigInt(plan.hi),
        ]
    }

    /// Point reads in parallel, in input order: each id is its own partition (an `IN` over
    /// many partitions would make one coordinator do it all).
    pub(super) async fn stored_executions(
        &self,
        ids: impl Iterator<Item = ExecutionId> + Send,
    ) -> PortResult<Vec<Option<Execution>>> {
        futures::stream::iter(ids)
            .map(|id| async move { self.stored_execution(&id).await })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    /// The `(started_at, execution_id)` of every `executions_by_token` row of `target` and
    /// `client_token`, newest first (sorted here too, whatever order the rows arrive in).
    pub(super) async fn token_rows(
        &self,
        target: &Target,
        client_token: &str,
    ) -> PortResult<Vec<(i64, String)>> {
        let values = vec![
            CqlValue::Text(target.kind.resource().to_owned()),
            CqlValue::Text(target.id.clone()),
            CqlValue::Text(client_token.to_owned()),
        ];
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        loop {
            let (res, more) = self
                .session
                .execute_single_page(&self.st.tokens_of, values.clone(), paging)
                .await
                .map_err(|e| exec_error("reading client-token rows", e))?;
            let rows = res
                .into_rows_result()
                .map_err(|e| rows_error("client-token rows", e))?;
            for row in rows
                .rows::<(i64, String)>()
                .map_err(|e| rows_error("client-token rows", e))?
            {
                out.push(row.map_err(|e| rows_error("client-token rows", e))?);
            }
            match more {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => break,
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        Ok(out)
    }

    pub(super) async fn stored_execution(&self, id: &ExecutionId) -> PortResult<Option<Execution>> {
        let res = self
            .session
            .execute_unpaged(
                &self.st.get_execution,
                vec![CqlValue::Text(id.as_str().to_owned())],
            )
            .await
            .map_err(|e| exec_error("reading an execution", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("execution", e))?;
        match rows
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(|e| rows_error("execution", e))?
        {
            Some((data,)) => decode_json(&format!("execution {id}"), &data).map(Some),
            None => Ok(None),
        }
    }
}
