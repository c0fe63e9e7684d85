//! The owner's I/O loop: rebuild, subscribe, then drain requests in batches. For a batch it
//! reads what the decisions need from the read model ([`decide::needs`]), decides every
//! input against the state ([`decide::decide`], pure), appends one log record per input
//! that produced events (so an input's events are written all together or not at all), and
//! only then answers, hands deliveries to the edge and arms timers. If an append fails,
//! every request of the batch gets a retryable answer and the state is rebuilt from the log,
//! so nothing unacknowledged is assumed written.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetcmd_contracts::codec;
use fleetcmd_domain::device::encode_cancel_notice;
use fleetcmd_domain::error::{Rejection, RejectionCode};
use fleetcmd_domain::event::{Aggregate, Event, EventEnvelope, SCHEMA_VERSION};
use fleetcmd_domain::ids::{ExecutionId, Target};
use fleetcmd_domain::model::{Execution, ExecutionStatus, Payload, TimestampMs};
use fleetcmd_domain::ports::{
    BusMessage, CommandWrite, CredentialWrite, ExecutionWrite, GroupWrite, PortError,
    ProjectionWrites, ThingWrite,
};
use fleetcmd_domain::protocol::{
    DELIVER_SUBJECT, Delivery, ExecutionChanged, LogPosition, ShardReply, ShardRequest,
    events_subject, shard_subject,
};
use fleetcmd_domain::rollout::RolloutId;
use fleetcmd_domain::topics::RequestFormat;
use fleetcmd_telemetry::{context as trace_context, metrics};
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tracing::{Instrument as _, Span};

use super::decide::{self, Decision, Lookups, Outcome, Refusal, Settings};
use super::state::ShardState;
use super::trace;
use super::{OwnerConfig, OwnerDeps};

/// How many records a rebuild reads at once.
const REBUILD_READ: usize = 4096;
/// Batches between two evictions of terminal executions and old tokens.
const EVICT_EVERY_BATCHES: u32 = 64;

/// One input of a batch, decided, waiting for its record to be appended.
struct Staged {
    reply_to: Option<String>,
    outcome: Outcome,
    /// The envelopes of the input's record (empty: nothing to append).
    events: Vec<EventEnvelope>,
}

/// What a batch's records change, for the owner that projects inline: the status changes to
/// announce once durable (one per status-changing event, with the state right after it).
#[derive(Default)]
pub(super) struct Changes {
    changed: Vec<(ExecutionChanged, Option<String>)>,
    /// The projection span of each traced change; they end once the changes are announced.
    spans: Vec<Span>,
}

pub(super) struct Owner {
    pub(super) deps: OwnerDeps,
    pub(super) config: Arc<OwnerConfig>,
    shard: u32,
    settings: Settings,
    pub(super) state: ShardState,
    /// The `next_offset` of the latest snapshot saved or loaded.
    snapshot_at: u64,
    /// Waiting executions not handed to the edge because their target had as many with its
    /// device as its in-flight limit allows: each goes out once an earlier one ends.
    held: std::sync::Mutex<HashSet<ExecutionId>>,
    /// Per hosted rollout with attempts to settle: the task following its command's status
    /// changes.
    pub(super) settle_watchers: HashMap<RolloutId, tokio::task::JoinHandle<()>>,
    /// When each hosted rollout's live attempts were last read back.
    pub(super) last_sweeps: HashMap<RolloutId, TimestampMs>,
    /// When each CONTINUOUS rollout last read its group or query again.
    pub(super) last_resolves: HashMap<RolloutId, TimestampMs>,
}

/// How a rebuild went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// Where the snapshot it started from ended (0: no snapshot).
    pub snapshot_at: u64,
    /// Records replayed after it.
    pub tail_records: u64,
}

impl Owner {
    pub(super) fn new(deps: OwnerDeps, config: Arc<OwnerConfig>, shard: u32) -> Self {
        let settings = Settings {
            shard,
            shards: config.shards,
            retention_secs: config.retention_secs,
            command_settings: config.command_settings,
        };
        Self {
            state: ShardState::new(token_memory_ms(&config)),
            deps,
            config,
            shard,
            settings,
            snapshot_at: 0,
            held: Default::default(),
            settle_watchers: HashMap::new(),
            last_sweeps: HashMap::new(),
            last_resolves: HashMap::new(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<ExecutionId>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn in_flight_limit(&self, target: &Target) -> Option<usize> {
        self.state
            .in_flight_limit(target, self.config.max_in_flight_default)
    }

    /// Whether `e` may go to its device now; when it may not, it is held until an earlier
    /// execution of its target ends.
    fn release_or_hold(&self, e: &Execution) -> bool {
        let within = self.state.within_limit(e, self.in_flight_limit(&e.target));
        if !within {
            self.held().insert(e.execution_id.clone());
        }
        within
    }

    /// Hands the edge the held executions of `target` that its in-flight limit now lets
    /// through (an earlier one ended, or the limit was raised).
    async fn release(&self, target: &Target) {
        let now = self.deps.clock.now_ms();
        let limit = self.in_flight_limit(target);
        let released: Vec<Delivery> = {
            let mut held = self.held();
            if held.is_empty() {
                return;
            }
            self.state
                .in_flight_window(target, limit)
                .iter()
                .filter(|id| held.remove(*id))
                .filter_map(|id| self.state.waiting_execution(id, now))
                .map(|(e, payload)| self.delivery(e, payload))
                .collect()
        };
        for d in released {
            let message = BusMessage::new(DELIVER_SUBJECT, codec::encode_delivery(&d));
            if let Err(err) = self.deps.bus.publish(message).await {
                tracing::warn!(topic = %d.topic, error = %err, "could not hand a released execution to the edge");
            }
        }
    }

    /// Rebuilds the shard's state from its latest snapshot and the log after it (from offset
    /// 0 when there is no snapshot, or it cannot be read).
    pub(super) async fn rebuild(&mut self) -> Result<Rebuilt, PortError> {
        self.state = ShardState::new(token_memory_ms(&self.config));
        self.held().clear();
        self.snapshot_at = 0;
        match self.deps.snapshots.load_snapshot(self.shard).await {
            Ok(Some((offset, data))) => match codec::decode_snapshot(&data) {
                Ok(snapshot) if snapshot.next_offset == offset => {
                    self.state = ShardState::from_snapshot(snapshot, token_memory_ms(&self.config));
                    self.snapshot_at = offset;
                }
                Ok(_) => tracing::warn!(
                    shard = self.shard,
                    offset,
                    "snapshot offset mismatch; rebuilding from offset 0"
                ),
                Err(e) => {
                    tracing::warn!(shard = self.shard, error = %e, "unreadable snapshot; rebuilding from offset 0")
                }
            },
            Ok(None) => {}
            // A snapshot is only a shortcut: without one the log still has everything.
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, "cannot load the snapshot; rebuilding from offset 0")
            }
        }
        let mut from = self.snapshot_at;
        loop {
            let records = self.deps.log.read(self.shard, from, REBUILD_READ).await?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for r in &records {
                let events = codec::decode_record(&r.payload).map_err(|e| {
                    PortError::Corrupt(format!("partition {} offset {}: {e}", self.shard, r.offset))
                })?;
                self.state.apply_record(&events, r.offset);
            }
            let projected = self.deps.read_model.position(self.shard).await?;
            self.state.evict(
                self.config.terminal_cache,
                projected,
                self.deps.clock.now_ms(),
            );
        }
        self.state.appended(from, 0);
        Ok(Rebuilt {
            snapshot_at: self.snapshot_at,
            tail_records: from - self.snapshot_at,
        })
    }

    /// Saves a snapshot of the state (a failure only costs the next rebuild some time).
    pub(super) async fn save_snapshot(&mut self) {
        let snapshot = self.state.to_snapshot();
        let offset = snapshot.next_offset;
        let data = bytes::Bytes::from(codec::encode_snapshot(&snapshot));
        let size = data.len();
        match self
            .deps
            .snapshots
            .save_snapshot(self.shard, offset, data)
            .await
        {
            Ok(()) => {
                self.snapshot_at = offset;
                tracing::debug!(shard = self.shard, offset, bytes = size, "snapshot saved");
            }
            Err(e) => tracing::warn!(shard = self.shard, error = %e, "saving a snapshot failed"),
        }
    }

    /// Saves a snapshot when enough records were appended since the last one.
    async fn maybe_snapshot(&mut self) {
        let every = self.config.snapshot_every_records;
        if every > 0 && self.state.next_offset() >= self.snapshot_at + every {
            self.save_snapshot().await;
        }
    }

    pub(super) async fn serve(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), PortError> {
        let rebuilt = self.rebuild().await?;
        if self.config.snapshot_every_records > 0
            && rebuilt.tail_records >= self.config.snapshot_after_tail_records.max(1)
        {
            self.save_snapshot().await;
        }
        self.redeliver().await;
        let mut sub = self
            .deps
            .bus
            .subscribe(&shard_subject(self.shard), Some("dispatcher"))
            .await?;
        tracing::debug!(
            shard = self.shard,
            next_offset = self.state.next_offset(),
            live = self.state.len(),
            "shard owner ready"
        );
        // Launch replies come back over the subscription above.
        self.resume_rollouts().await?;
        let _owned = metrics::OwnedShard::acquire();
        if self.deps.inline_projection.is_some() {
            // Projected in the append's own write: the read model is never behind the log.
            metrics::projector_lag(self.shard, 0);
        }
        let mut batches_since_evict = 0u32;
        loop {
            let next_timer = self.state.next_timer();
            let sleep = match next_timer {
                Some(at) => Duration::from_millis((at - self.deps.clock.now_ms()).max(0) as u64),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                biased;
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        // The shard is moving (or the process stops): answer what is queued
                        // with a fast, retryable UNAVAILABLE instead of letting it time out.
                        while let Some(Some(m)) = sub.next().now_or_never() {
                            let why = format!("shard {} is moving to another owner", self.shard);
                            self.reply(m.reply, &ShardReply::Unavailable(why)).await;
                        }
                        self.stop_rollouts();
                        return Ok(());
                    }
                }
                msg = sub.next() => {
                    let Some(first) = msg else {
                        return Err(PortError::Unavailable(format!("subscription to shard {} ended", self.shard)));
                    };
                    let mut batch = vec![first];
                    while batch.len() < self.config.max_batch {
                        match sub.next().now_or_never() {
                            Some(Some(m)) => batch.push(m),
                            _ => break,
                        }
                    }
                    self.process_batch(batch).await?;
                    self.maybe_snapshot().await;
                    batches_since_evict += 1;
                    if batches_since_evict >= EVICT_EVERY_BATCHES {
                        batches_since_evict = 0;
                        let projected = self.deps.read_model.position(self.shard).await?;
                        self.state.evict(self.config.terminal_cache, projected, self.deps.clock.now_ms());
                    }
                }
                _ = tokio::time::sleep(sleep), if next_timer.is_some() => {
                    self.fire_timers().await?;
                }
            }
        }
    }

    /// Reads what the batch's decisions need from the read model, in as few calls as it can.
    async fn look_up(&self, requests: &[Option<ShardRequest>]) -> Lookups {
        let needs = decide::needs(&self.state, requests.iter().flatten());
        let mut lookups = Lookups::default();
        if needs.is_empty() {
            return lookups;
        }
        let rm = &self.deps.read_model;
        let read = async {
            for id in &needs.commands {
                lookups
                    .commands
                    .insert(id.clone(), rm.get_command(id).await?);
            }
            if !needs.tokens.is_empty() {
                let found = rm.find_executions_by_tokens(&needs.tokens).await?;
                lookups
                    .tokens
                    .extend(needs.tokens.iter().cloned().zip(found));
            }
            if !needs.executions.is_empty() {
                for id in &needs.executions {
                    lookups.executions.insert(id.clone(), None);
                }
                for e in rm.get_executions(&needs.executions).await? {
                    lookups.executions.insert(e.execution_id.clone(), Some(e));
                }
            }
            Ok::<_, PortError>(())
        };
        if let Err(e) = read.await {
            lookups.failed = Some(e.to_string());
        }
        lookups
    }

    async fn process_batch(&mut self, batch: Vec<BusMessage>) -> Result<(), PortError> {
        let now = self.deps.clock.now_ms();
        let requests: Vec<Option<ShardRequest>> = batch
            .iter()
            .map(|m| codec::decode_shard_request(&m.payload).ok())
            .collect();
        let lookups = self.look_up(&requests).await;
        let mut staged: Vec<Staged> = Vec::with_capacity(batch.len());
        let mut changes = Changes::default();
        // Spans of the traced inputs: they end once their events are durable, answered and
        // handed to the edge.
        let mut spans: Vec<Span> = Vec::new();
        for (msg, request) in batch.into_iter().zip(requests) {
            let Some(request) = request else {
                let why = codec::decode_shard_request(&msg.payload)
                    .err()
                    .map_or_else(String::new, |e| e.to_string());
                staged.push(Staged {
                    reply_to: msg.reply,
                    outcome: Outcome::Reply(ShardReply::Rejected(Rejection::new(
                        RejectionCode::InvalidRequest,
                        format!("malformed shard request: {why}"),
                    ))),
                    events: Vec::new(),
                });
                continue;
            };
            let span = trace::input_span(&self.state, self.shard, &request, &msg.headers);
            let trace = trace_context::traceparent(&span);
            let decided = span.in_scope(|| {
                decide::decide(
                    &self.state,
                    &request,
                    &lookups,
                    now,
                    &self.settings,
                    &mut new_execution_id,
                )
            });
            if !span.is_none() {
                spans.push(span);
            }
            let (outcome, events) = match decided {
                Ok(decision) => {
                    let index = staged.iter().filter(|s| !s.events.is_empty()).count() as u64;
                    self.stage(decision, index, now, trace, &mut changes)
                }
                Err(Refusal::Rejected(r)) => (Outcome::Reply(ShardReply::Rejected(r)), Vec::new()),
                Err(Refusal::Unavailable(why)) => {
                    (Outcome::Reply(ShardReply::Unavailable(why)), Vec::new())
                }
            };
            staged.push(Staged {
                reply_to: msg.reply,
                outcome,
                events,
            });
        }
        let records: Vec<&[EventEnvelope]> = staged
            .iter()
            .filter(|s| !s.events.is_empty())
            .map(|s| s.events.as_slice())
            .collect();
        let positions = match self.append(&records).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, "append failed; answering retryable and rebuilding");
                for s in staged {
                    let answer = match s.outcome {
                        Outcome::Reply(r) => r,
                        _ => ShardReply::Unavailable(format!("event log unavailable: {e}")),
                    };
                    self.reply(s.reply_to, &answer).await;
                }
                return Err(e);
            }
        };
        let mut record = 0usize;
        for s in &staged {
            let position = if s.events.is_empty() {
                None
            } else {
                record += 1;
                positions.get(record - 1).copied()
            };
            let answer = self.answer(&s.outcome, position);
            if let Some(answer) = answer {
                self.reply(s.reply_to.clone(), &answer).await;
            }
        }
        for s in &staged {
            self.after_append(&s.events).await;
            if let Outcome::DeliverPending { target } = &s.outcome {
                self.deliver_pending(target).await;
            }
        }
        self.announce(changes).await;
        drop(spans);
        let mut touched: Vec<RolloutId> = Vec::new();
        for env in staged.iter().flat_map(|s| s.events.iter()) {
            if let Aggregate::Rollout(id) = &env.aggregate
                && !touched.contains(id)
            {
                touched.push(id.clone());
            }
        }
        self.drive_rollouts(touched).await
    }

    /// Publishes the status changes of an inline projection (nothing otherwise: the
    /// projector announces what it projects).
    async fn announce(&self, changes: Changes) {
        let Changes { changed, spans } = changes;
        for (c, trace) in changed {
            let mut message =
                BusMessage::new(events_subject(&c.command_id), codec::encode_changed(&c));
            if let Some(tp) = trace {
                message
                    .headers
                    .push((trace_context::TRACEPARENT.to_string(), tp));
            }
            if let Err(e) = self.deps.bus.publish(message).await {
                tracing::warn!(error = %e, "publishing a status notification failed");
            }
        }
        drop(spans);
    }

    /// Applies a decision's events to the state (at the provisional offset of the batch's
    /// `index`-th record) and returns what to answer and the record's envelopes.
    pub(super) fn stage(
        &mut self,
        decision: Decision,
        index: u64,
        now: TimestampMs,
        trace: Option<String>,
        changes: &mut Changes,
    ) -> (Outcome, Vec<EventEnvelope>) {
        if let Some(e) = decision.hydrate {
            self.state.hydrate(e);
        }
        let offset = self.state.next_offset() + index;
        let mut envelopes = Vec::with_capacity(decision.events.len());
        for (aggregate, event) in decision.events {
            let seq = self.state.next_seq(&aggregate);
            let env = EventEnvelope {
                event_id: uuid::Uuid::now_v7().to_string(),
                schema: SCHEMA_VERSION,
                aggregate,
                seq,
                at: now,
                trace: trace.clone(),
                event,
            };
            self.state.apply(&env, offset);
            if self.deps.inline_projection.is_some()
                && env.event.new_status().is_some()
                && let Aggregate::Execution { execution_id, .. } = &env.aggregate
                && let Some(e) = self.state.execution(execution_id)
            {
                // The projection of a traced event, as the projector would have spanned it:
                // the status event published for it joins the trace here.
                let span = trace::projection_span(self.shard, &env);
                let tp = trace_context::traceparent(&span).or_else(|| env.trace.clone());
                if !span.is_none() {
                    changes.spans.push(span);
                }
                changes
                    .changed
                    .push((ExecutionChanged::from_execution(e, now), tp));
            }
            envelopes.push(env);
        }
        (decision.outcome, envelopes)
    }

    /// The answer to a decided input once its record is at `position`.
    fn answer(&self, outcome: &Outcome, position: Option<LogPosition>) -> Option<ShardReply> {
        Some(match outcome {
            Outcome::Reply(r) => r.clone(),
            Outcome::Started { execution_id } => ShardReply::Started {
                execution_id: execution_id.clone(),
                position,
                replayed: false,
            },
            Outcome::Execution {
                execution_id,
                before,
            } => {
                let execution = match before {
                    Some(b) => b.clone(),
                    None => Box::new(self.state.execution(execution_id)?.clone()),
                };
                ShardReply::Execution {
                    execution,
                    position,
                }
            }
            Outcome::Command { command_id } => {
                let command = self.state.command(command_id).cloned().map(Box::new);
                ShardReply::Command {
                    deleted: command.is_none(),
                    command,
                    position,
                }
            }
            Outcome::Thing { thing_name } => {
                let thing = self.state.thing(thing_name).cloned().map(Box::new);
                ShardReply::Thing {
                    deleted: thing.is_none(),
                    thing,
                    position,
                }
            }
            Outcome::Credential {
                owner,
                certificate_id,
            } => ShardReply::Credential {
                certificate: certificate_id.as_ref().and_then(|id| {
                    let stored = self.state.credentials(owner)?.certificates.get(id)?;
                    Some(Box::new(stored.clone()))
                }),
                position,
            },
            Outcome::Ca { ca_certificate_id } => ShardReply::Ca {
                ca: self.state.ca(ca_certificate_id).cloned().map(Box::new),
                position,
            },
            Outcome::Group { thing_group_name } => ShardReply::Group {
                group: self.state.group(thing_group_name).cloned().map(Box::new),
                position,
            },
            Outcome::Rollout { rollout_id } => ShardReply::Rollout {
                rollout: self
                    .state
                    .rollout(rollout_id)
                    .map(|r| Box::new(r.summary())),
                position,
            },
            Outcome::DeliverPending { target } => {
                let now = self.deps.clock.now_ms();
                let count = self.state.undelivered_of(target, now).count();
                ShardReply::DeliveredPending {
                    count: u32::try_from(count).unwrap_or(u32::MAX),
                }
            }
        })
    }

    async fn fire_timers(&mut self) -> Result<(), PortError> {
        let now = self.deps.clock.now_ms();
        let mut records: Vec<Vec<EventEnvelope>> = Vec::new();
        let mut spans: Vec<Span> = Vec::new();
        let mut changes = Changes::default();
        let mut rollouts: Vec<RolloutId> = Vec::new();
        for timer in self.state.take_due_timers(now) {
            if let super::state::TimerKey::Rollout(id) = &timer {
                rollouts.push(id.clone());
                continue;
            }
            let events = decide::decide_timer(&self.state, &timer, now, &self.settings);
            if events.is_empty() {
                continue;
            }
            let span = match &timer {
                super::state::TimerKey::Execution(id) => {
                    trace::execution_span(&self.state, self.shard, "shard.owner timeout", id, None)
                }
                super::state::TimerKey::CommandDeletion(_) | super::state::TimerKey::Rollout(_) => {
                    Span::none()
                }
            };
            let trace = trace_context::traceparent(&span);
            let decision = Decision {
                hydrate: None,
                events,
                outcome: Outcome::Reply(ShardReply::Unavailable(String::new())),
            };
            let (_, envelopes) =
                self.stage(decision, records.len() as u64, now, trace, &mut changes);
            records.push(envelopes);
            if !span.is_none() {
                spans.push(span);
            }
        }
        let slices: Vec<&[EventEnvelope]> = records.iter().map(Vec::as_slice).collect();
        self.append(&slices).await?;
        for envelopes in &records {
            self.after_append(envelopes).await;
        }
        self.announce(changes).await;
        drop(spans);
        self.drive_rollouts(rollouts).await
    }

    /// Appends one record per input (their events already applied to the state) and returns
    /// each record's position.
    pub(super) async fn append(
        &mut self,
        records: &[&[EventEnvelope]],
    ) -> Result<Vec<LogPosition>, PortError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let encoded: Vec<(String, Bytes)> = records
            .iter()
            .map(|events| {
                let key = events
                    .first()
                    .map(|e| e.aggregate.routing_key())
                    .unwrap_or_default();
                (key, Bytes::from(codec::encode_record(events)))
            })
            .collect();
        let n = encoded.len() as u64;
        let expected = self.state.next_offset();
        let first = match &self.deps.inline_projection {
            Some(log) => {
                log.append_and_project(self.shard, encoded, self.projection_writes(records))
                    .await?
            }
            None => self.deps.log.append(self.shard, encoded).await?,
        };
        if first != expected {
            // Someone else wrote to our partition: our state is stale. Rebuild before serving on.
            return Err(PortError::Unavailable(format!(
                "partition {} expected offset {expected} but the append landed at {first}; another owner is writing",
                self.shard
            )));
        }
        self.state.appended(first, n);
        if self.deps.inline_projection.is_some() {
            // Readable already: callers have nothing to wait for.
            return Ok(Vec::new());
        }
        Ok((0..n)
            .map(|i| LogPosition {
                partition: self.shard,
                next_offset: first + i + 1,
            })
            .collect())
    }

    /// The read-model writes of `records` (already applied to the state): each execution,
    /// command, thing and credential owner they touch, as the state now holds it, or its
    /// deletion.
    fn projection_writes(&self, records: &[&[EventEnvelope]]) -> ProjectionWrites {
        let mut writes = ProjectionWrites::default();
        let mut seen_c = std::collections::HashSet::new();
        let mut seen_e = std::collections::HashSet::new();
        let mut seen_t = std::collections::HashSet::new();
        let mut seen_o = std::collections::HashSet::new();
        for env in records.iter().flat_map(|r| r.iter()) {
            match &env.aggregate {
                Aggregate::Execution { execution_id, .. } => {
                    if seen_e.insert(execution_id) {
                        writes
                            .executions
                            .push(match self.state.execution(execution_id) {
                                Some(e) => ExecutionWrite::Upsert(e.clone()),
                                // Inline projection is SQLite's, which deletes by id.
                                None => ExecutionWrite::delete(execution_id.clone()),
                            });
                    }
                }
                Aggregate::Command(id) => {
                    if seen_c.insert(id) {
                        writes.commands.push(match self.state.command(id.as_str()) {
                            Some(c) => CommandWrite::Upsert(c.clone()),
                            None => CommandWrite::Delete(id.clone()),
                        });
                    }
                }
                Aggregate::Thing(name) => {
                    if seen_t.insert(name) {
                        writes.things.push(match self.state.thing(name) {
                            Some(t) => ThingWrite::Upsert(t.clone()),
                            None => ThingWrite::Delete(name.clone()),
                        });
                    }
                }
                Aggregate::Credential(owner) => {
                    if seen_o.insert(owner)
                        && let Some(c) = self.state.credentials(owner)
                    {
                        writes.credentials.push(CredentialWrite {
                            credentials: c.clone(),
                        });
                    }
                }
                Aggregate::Ca(id) => {
                    if let Some(c) = self.state.ca(id)
                        && !writes.cas.iter().any(|w| w.ca_certificate_id == *id)
                    {
                        writes.cas.push(c.clone());
                    }
                }
                Aggregate::Group(name) => {
                    if !writes.groups.iter().any(|w| w.group_name() == name) {
                        writes.groups.push(match self.state.group(name) {
                            Some(g) => GroupWrite::Upsert(g.clone()),
                            None => GroupWrite::Delete(name.clone()),
                        });
                    }
                }
                // Rollouts are folded by their owner only; the read model has no rollout
                // records yet (docs/design.md, "Not implemented yet").
                Aggregate::Rollout(_) => {}
            }
        }
        writes
    }

    /// Hands the edge every execution of `target` that still waits, in start order: its
    /// device has just subscribed to its requests.
    async fn deliver_pending(&self, target: &Target) {
        let now = self.deps.clock.now_ms();
        let limit = self.in_flight_limit(target);
        let deliveries: Vec<Delivery> = self
            .state
            .undelivered_of(target, now)
            .filter(|(e, _)| self.state.within_limit(e, limit))
            .map(|(e, payload)| self.delivery(e, payload))
            .collect();
        for d in deliveries {
            let message = BusMessage::new(DELIVER_SUBJECT, codec::encode_delivery(&d));
            if let Err(err) = self.deps.bus.publish(message).await {
                tracing::warn!(topic = %d.topic, error = %err, "could not hand a waiting execution to the edge");
            }
        }
    }

    /// Delivers again every execution that is still CREATED and not expired: the previous
    /// owner may have appended it and died before handing it to the edge. Devices see each
    /// request at least once (as with any QoS 1 delivery) and recognise repeats by id.
    async fn redeliver(&self) {
        let now = self.deps.clock.now_ms();
        let mut count = 0usize;
        for (e, payload) in self.state.undelivered(now) {
            if !self.release_or_hold(e) {
                continue;
            }
            let d = self.delivery(e, payload);
            let message = BusMessage::new(DELIVER_SUBJECT, codec::encode_delivery(&d));
            match self.deps.bus.publish(message).await {
                Ok(()) => count += 1,
                Err(err) => {
                    tracing::warn!(topic = %d.topic, error = %err, "could not hand a redelivery to the edge")
                }
            }
        }
        if count > 0 {
            tracing::info!(
                shard = self.shard,
                count,
                "redelivered executions still CREATED after a rebuild"
            );
        }
    }

    /// Once a record is durable: transition metrics, and requests and cancel notices to the
    /// edge.
    async fn after_append(&self, events: &[EventEnvelope]) {
        for env in events {
            if let Some(status) = env.event.new_status() {
                metrics::execution_transition(status.as_str());
            }
            let delivery = match (&env.event, &env.aggregate) {
                (
                    Event::ExecutionStarted {
                        execution, payload, ..
                    },
                    _,
                ) => self
                    .release_or_hold(execution)
                    .then(|| self.delivery(execution, payload)),
                (
                    Event::ExecutionCanceled { status_reason },
                    Aggregate::Execution {
                        execution_id,
                        target,
                    },
                ) => Some(Delivery {
                    topic: self.config.topic_root.cancel(target, execution_id),
                    payload: encode_cancel_notice(execution_id, status_reason.as_ref()),
                    content_type: "application/json".into(),
                    expires_at: None,
                }),
                _ => None,
            };
            if let Some(d) = delivery {
                let mut message = BusMessage::new(DELIVER_SUBJECT, codec::encode_delivery(&d));
                // The edge's publish joins the execution's trace.
                let span = trace::delivery_span(
                    self.shard,
                    env.trace.as_deref(),
                    &d.topic,
                    &mut message.headers,
                );
                if let Err(e) = self.deps.bus.publish(message).instrument(span).await {
                    tracing::warn!(topic = %d.topic, error = %e, "could not hand a delivery to the edge");
                }
            }
        }
        // An execution that ended, or a thing whose limit changed, may let a held one go
        // (nothing to do, and nothing to look at, while none is held: the common case).
        if self.held().is_empty() {
            return;
        }
        let mut freed: Vec<Target> = Vec::new();
        for env in events {
            let ended = |event: &Event| {
                matches!(event, Event::ExecutionDeleted)
                    || event.new_status().is_some_and(|s| {
                        !matches!(s, ExecutionStatus::Created | ExecutionStatus::InProgress)
                    })
            };
            let target = match (&env.aggregate, &env.event) {
                (
                    Aggregate::Execution {
                        target,
                        execution_id,
                    },
                    event,
                ) if ended(event) => {
                    // Held and ended before its turn: it never goes out.
                    self.held().remove(execution_id);
                    target.clone()
                }
                (Aggregate::Thing(name), _) => match Target::thing(name.clone()) {
                    Ok(t) => t,
                    Err(_) => continue,
                },
                _ => continue,
            };
            if !freed.contains(&target) {
                freed.push(target);
            }
        }
        for target in &freed {
            self.release(target).await;
        }
    }

    fn delivery(&self, e: &Execution, payload: &Payload) -> Delivery {
        let format = RequestFormat::from_content_type(&payload.content_type);
        Delivery {
            topic: self
                .config
                .topic_root
                .request(&e.target, &e.execution_id, format),
            payload: payload.content.clone(),
            content_type: payload.content_type.clone(),
            expires_at: Some(e.deadline()),
        }
    }

    async fn reply(&self, reply_to: Option<String>, answer: &ShardReply) {
        let Some(subject) = reply_to else { return };
        let message = BusMessage::new(subject, codec::encode_shard_reply(answer));
        if let Err(e) = self.deps.bus.publish(message).await {
            tracing::debug!(error = %e, "could not answer a shard request");
        }
    }
}

fn new_execution_id() -> ExecutionId {
    // A UUIDv7 always passes the id rules (hex digits and dashes, 36 characters).
    ExecutionId::parse(uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid execution id")
}

fn token_memory_ms(config: &OwnerConfig) -> i64 {
    i64::try_from(config.token_memory.as_millis()).unwrap_or(i64::MAX)
}
