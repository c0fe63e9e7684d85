//! The [`ReadModel`] methods: commits (deletes, then upserts, then things and credentials,
//! then the position), gets, listings page by page, client-token lookups, and the purge (nothing to
//! do: TTLs expire the records).

use std::collections::HashMap;

use fleetcmd_domain::ca::CaCertificate;
use fleetcmd_domain::credential::{CertificateRecord, Credentials};
use fleetcmd_domain::group::ThingGroup;
use fleetcmd_domain::ports::{
    CommandQuery, CommandWrite, ExecutionQuery, ExecutionWrite, GroupQuery, Page, PortError,
    PortResult, ProjectionBatch, ReadModel, ThingQuery,
};
use fleetcmd_domain::thing::Thing;
use fleetcmd_domain::{Command, CommandId, Execution, ExecutionId, Target, TimestampMs};
use scylla::value::CqlValue;

use super::error::{decode_json, exec_error, rows_error, to_i64};
use super::paging::{
    COMMAND_TOKEN, Cursor, EXECUTION_TOKEN, decode_token, encode_token, fingerprint,
};
use super::plan::{ExecutionPlan, matches};
use super::tables::{ALL_SCOPE, bucket_start, index_slot};
use super::writes::{ts_last, winning_execution_writes};
use super::{MAX_FETCHES, MAX_ROWS_SCANNED, ScyllaReadModel};
use crate::{effective_page_size, invalid_page_token};

#[async_trait::async_trait]
impl ReadModel for ScyllaReadModel {
    async fn commit(&self, batch: ProjectionBatch) -> PortResult<()> {
        // Deletes run first, then upserts, then the position (with write timestamps the order
        // does not matter).
        let mut deletes = Vec::new();
        let mut upserts = Vec::new();

        // Commands: the last write of each id wins; a delete anywhere in the batch removes
        // the stored version (its listing rows and timestamp come from it).
        let mut last_command: HashMap<&CommandId, &CommandWrite> = HashMap::new();
        let mut command_order = Vec::new();
        let mut command_deletes = Vec::new();
        for w in &batch.commands {
            let id = match w {
                CommandWrite::Upsert(c) => &c.command_id,
                CommandWrite::Delete(id) => {
                    if !command_deletes.contains(&id) {
                        command_deletes.push(id);
                    }
                    id
                }
            };
            if last_command.insert(id, w).is_none() {
                command_order.push(id);
            }
        }
        let mut stored_commands = Vec::new();
        for id in command_deletes {
            if let Some(stored) = self.get_command(id).await? {
                stored_commands.push(stored);
            }
        }
        for stored in &stored_commands {
            deletes.extend(self.delete_command_rows(stored));
        }
        for id in &command_order {
            if let Some(CommandWrite::Upsert(c)) = last_command.get(id) {
                upserts.extend(self.upsert_command(c)?);
            }
        }

        // Executions: per id, the highest seq of the batch, or its delete.
        let winners = winning_execution_writes(&batch.executions);
        let mut deleted = Vec::new();
        // Versions whose listing rows a delete removes. A delete that carries the
        // execution's last state names all its rows (their keys never move: `started_at` is
        // fixed and `completed_at` set once), so nothing is read and a lagging projector's
        // later upsert of an older version finds every row already tombstoned above it.
        // Without it, the rows come from the stored version and this batch's upserts.
        let mut versions: Vec<Execution> = Vec::new();
        let mut unknown = Vec::new();
        for w in &winners {
            match w {
                ExecutionWrite::Upsert(e) => upserts.extend(self.upsert_execution(e)?),
                ExecutionWrite::Delete { id, last } => {
                    deleted.push(id);
                    match last {
                        Some(e) => versions.push(e.clone()),
                        None => unknown.push(id),
                    }
                }
            }
        }
        let unknown_ids: Vec<ExecutionId> = unknown.iter().map(|id| (*id).clone()).collect();
        let stored = self.stored_executions(unknown_ids.into_iter()).await?;
        versions.extend(stored.into_iter().flatten());
        for w in &batch.executions {
            if let ExecutionWrite::Upsert(e) = w
                && unknown.contains(&&e.execution_id)
            {
                versions.push(e.clone());
            }
        }
        for e in &versions {
            deletes.extend(self.delete_listing_rows(e));
        }
        for id in &deleted {
            deletes.push(self.delete_execution_by_id(id));
        }
        self.run_writes(deletes).await?;
        self.run_writes(upserts).await?;
        self.commit_things(&batch.things).await?;
        self.commit_credentials(&batch.credentials).await?;
        self.commit_cas(&batch.cas).await?;
        self.commit_groups(&batch.groups).await?;

        // Only now: a crash before this line replays the batch, which changes nothing.
        let next = to_i64(batch.next_offset, "next_offset")?;
        let partition = i32::try_from(batch.partition).map_err(|_| {
            PortError::Backend(format!(
                "partition {} exceeds the CQL int range",
                batch.partition
            ))
        })?;
        self.exec(
            "writing the projector position",
            &self.st.upsert_position,
            ts_last(vec![CqlValue::Int(partition), CqlValue::BigInt(next)], next),
        )
        .await
    }

    async fn position(&self, partition: u32) -> PortResult<u64> {
        let partition = i32::try_from(partition)
            .map_err(|_| PortError::Backend(format!("partition {partition} out of range")))?;
        let res = self
            .session
            .execute_unpaged(&self.st.get_position, vec![CqlValue::Int(partition)])
            .await
            .map_err(|e| exec_error("reading the projector position", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("position", e))?;
        match rows
            .maybe_first_row::<(i64,)>()
            .map_err(|e| rows_error("position", e))?
        {
            Some((n,)) => {
                u64::try_from(n).map_err(|_| PortError::Corrupt(format!("negative position {n}")))
            }
            None => Ok(0),
        }
    }

    async fn get_command(&self, id: &CommandId) -> PortResult<Option<Command>> {
        let res = self
            .session
            .execute_unpaged(
                &self.st.get_command,
                vec![CqlValue::Text(id.as_str().to_owned())],
            )
            .await
            .map_err(|e| exec_error("reading a command", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("command", e))?;
        match rows
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(|e| rows_error("command", e))?
        {
            Some((data,)) => decode_json(&format!("command {id}"), &data).map(Some),
            None => Ok(None),
        }
    }

    async fn list_commands(&self, query: &CommandQuery) -> PortResult<Page<Command>> {
        let scope = match &query.namespace {
            Some(ns) => format!("ns:{ns}"),
            None => ALL_SCOPE.to_owned(),
        };
        let fp = fingerprint(&[
            "commands_by_created",
            &scope,
            if query.ascending { "asc" } else { "desc" },
        ]);
        let mut state = match &query.page_token {
            Some(t) => decode_token(COMMAND_TOKEN, fp, t)?.state,
            None => None,
        };
        let st = if query.ascending {
            &self.st.commands_asc
        } else {
            &self.st.commands_desc
        };
        let limit = effective_page_size(query.page_size) as usize;
        let mut items = Vec::with_capacity(limit.min(128));
        let (mut scanned, mut fetches) = (0usize, 0usize);
        let more = loop {
            let got = self
                .fetch(
                    "listing commands",
                    st,
                    vec![CqlValue::Text(scope.clone())],
                    limit - items.len(),
                    state.take(),
                )
                .await?;
            fetches += 1;
            scanned += got.rows.len();
            for data in got.rows {
                let c: Command = decode_json("command", &data)?;
                let keep = query.namespace.as_ref().is_none_or(|n| &c.namespace == n)
                    && query
                        .parameter_name
                        .as_ref()
                        .is_none_or(|p| c.parameters.iter().any(|x| &x.name == p));
                if keep {
                    items.push(c);
                }
            }
            state = got.more;
            if state.is_none()
                || items.len() >= limit
                || scanned >= MAX_ROWS_SCANNED
                || fetches >= MAX_FETCHES
            {
                break state;
            }
        };
        Ok(Page {
            items,
            next_token: more.map(|s| {
                encode_token(
                    COMMAND_TOKEN,
                    fp,
                    &Cursor {
                        bucket: 0,
                        state: Some(s),
                    },
                )
            }),
        })
    }

    async fn get_execution(&self, id: &ExecutionId) -> PortResult<Option<Execution>> {
        self.stored_execution(id).await
    }

    async fn get_executions(&self, ids: &[ExecutionId]) -> PortResult<Vec<Execution>> {
        Ok(self
            .stored_executions(ids.iter().cloned())
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    async fn list_executions(&self, query: &ExecutionQuery) -> PortResult<Page<Execution>> {
        let plan = ExecutionPlan::new(query, &self.buckets);
        let limit = effective_page_size(query.page_size) as usize;
        let mut cursor = match &query.page_token {
            Some(t) => {
                let c = decode_token(EXECUTION_TOKEN, plan.fingerprint, t)?;
                if c.bucket < bucket_start(plan.lo, plan.width)
                    || c.bucket > bucket_start(plan.hi, plan.width)
                    || c.bucket.rem_euclid(plan.width) != 0
                {
                    return Err(invalid_page_token("bucket outside the query's range"));
                }
                Some(c)
            }
            None => self.next_bucket(&plan, None).await?.map(|bucket| Cursor {
                bucket,
                state: None,
            }),
        };
        let slot = index_slot(plan.per, plan.sort);
        let st = if plan.ascending {
            &self.st.index[slot].page_asc
        } else {
            &self.st.index[slot].page_desc
        };
        let mut items = Vec::with_capacity(limit.min(128));
        let (mut scanned, mut fetches) = (0usize, 0usize);
        while let Some(c) = cursor.take() {
            let got = self
                .fetch(
                    "listing executions",
                    st,
                    self.page_values(&plan, c.bucket),
                    limit - items.len(),
                    c.state,
                )
                .await?;
            fetches += 1;
            scanned += got.rows.len();
            for data in got.rows {
                let e: Execution = decode_json("execution", &data)?;
                if matches(query, &e) {
                    items.push(e);
                }
            }
            cursor = match got.more {
                Some(state) => Some(Cursor {
                    bucket: c.bucket,
                    state: Some(state),
                }),
                None => self
                    .next_bucket(&plan, Some(c.bucket))
                    .await?
                    .map(|bucket| Cursor {
                        bucket,
                        state: None,
                    }),
            };
            if items.len() >= limit || scanned >= MAX_ROWS_SCANNED || fetches >= MAX_FETCHES {
                break;
            }
        }
        Ok(Page {
            items,
            next_token: cursor.map(|c| encode_token(EXECUTION_TOKEN, plan.fingerprint, &c)),
        })
    }

    async fn get_thing(&self, name: &str) -> PortResult<Option<Thing>> {
        self.stored_thing(name).await
    }

    async fn list_things(&self, query: &ThingQuery) -> PortResult<Page<Thing>> {
        self.thing_page(query).await
    }

    async fn get_credentials(&self, owner: &Target) -> PortResult<Option<Credentials>> {
        self.stored_credentials(owner).await
    }

    async fn get_certificate(&self, certificate_id: &str) -> PortResult<Option<CertificateRecord>> {
        self.stored_certificate(certificate_id).await
    }

    async fn get_ca_certificate(
        &self,
        ca_certificate_id: &str,
    ) -> PortResult<Option<CaCertificate>> {
        // Few rows in one partition: the listing is one read either way.
        let all = self.stored_cas().await?;
        Ok(all
            .into_iter()
            .find(|c| c.ca_certificate_id == ca_certificate_id))
    }

    async fn list_ca_certificates(&self) -> PortResult<Vec<CaCertificate>> {
        self.stored_cas().await
    }

    async fn get_thing_group(&self, name: &str) -> PortResult<Option<ThingGroup>> {
        self.stored_group(name).await
    }

    async fn list_thing_groups(&self, query: &GroupQuery) -> PortResult<Page<ThingGroup>> {
        self.stored_groups(query).await
    }

    async fn revoked_certificates(&self) -> PortResult<Vec<CertificateRecord>> {
        self.stored_revoked().await
    }

    async fn find_execution_by_token(
        &self,
        target: &Target,
        client_token: &str,
    ) -> PortResult<Option<Execution>> {
        // Newest first; `executions` decides whether an execution still exists (a token row
        // can outlive its execution: a delete this adapter could not see, a TTL rounding).
        for (_, id) in self.token_rows(target, client_token).await? {
            let id = ExecutionId::parse(id.as_str()).map_err(|e| {
                PortError::Corrupt(format!("client-token row holds execution id {id:?}: {e}"))
            })?;
            if let Some(e) = self.stored_execution(&id).await?
                && e.target == *target
                && e.client_token.as_deref() == Some(client_token)
            {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    async fn find_executions_by_tokens(
        &self,
        keys: &[(Target, String)],
    ) -> PortResult<Vec<Option<Execution>>> {
        // Concurrently: a batch's lookups cost about one round trip, not one per key.
        futures::future::try_join_all(
            keys.iter()
                .map(|(target, token)| self.find_execution_by_token(target, token)),
        )
        .await
    }

    async fn purge_expired(&self, _now: TimestampMs) -> PortResult<u64> {
        // Every execution row carries its TTL: ScyllaDB has already removed them.
        Ok(0)
    }
}
