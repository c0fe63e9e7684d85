//! Shard owners: one task per owned shard, the single writer of its log partition.
//!
//! Each owner rebuilds its shard's state from the log before it subscribes to its subject, so
//! callers see "no responder" (retryable) until it is ready. It then drains requests in
//! batches: every input is decided against the current state, all resulting events go to
//! the log in one append, and only then are replies sent, deliveries handed to the edge and
//! timers armed. If an append fails, every request of the batch gets a retryable answer and
//! the state is rebuilt from the log, so nothing unacknowledged is assumed written.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetcmd_domain::command::{self, CommandInput, CommandSettings};
use fleetcmd_domain::device::encode_cancel_notice;
use fleetcmd_domain::error::{Rejection, RejectionCode};
use fleetcmd_domain::event::{Aggregate, Event, EventEnvelope, SCHEMA_VERSION};
use fleetcmd_domain::execution::{self, ExecutionInput};
use fleetcmd_domain::ids::{CommandId, ExecutionId, Target};
use fleetcmd_domain::limits::CLIENT_TOKEN_WINDOW_SECS;
use fleetcmd_domain::model::{Command, Execution, Payload, TimestampMs};
use fleetcmd_domain::ports::{Bus, BusMessage, Clock, EventLog, PortError, ReadModel};
use fleetcmd_domain::protocol::{
    DELIVER_SUBJECT, Delivery, LogPosition, ShardReply, ShardRequest, shard_subject,
};
use fleetcmd_domain::shard::shard_of;
use fleetcmd_domain::start::{self, StartRequest};
use fleetcmd_domain::topics::{RequestFormat, TopicRoot};
use fleetcmd_telemetry::{context as trace_context, metrics};
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tracing::{Instrument as _, Span};

/// Settings every owner shares.
#[derive(Debug, Clone)]
pub struct OwnerConfig {
    pub shards: u32,
    pub retention_secs: u64,
    pub command_settings: CommandSettings,
    pub topic_root: TopicRoot,
    /// Most requests decided and appended together.
    pub max_batch: usize,
    /// Terminal executions kept in memory per shard (older ones are read back on demand).
    pub terminal_cache: usize,
    /// How long a client token stays in the owner's memory after its start (once projected).
    /// A retry with an older token is answered from the read model, for the whole token
    /// window (the execution's timeout + 24 h): memory stays bounded by the start rate times
    /// this, not times a day.
    pub token_memory: Duration,
}

impl Default for OwnerConfig {
    fn default() -> Self {
        Self {
            shards: 16,
            retention_secs: fleetcmd_domain::limits::RETENTION_DEFAULT_SECS,
            command_settings: CommandSettings::default(),
            topic_root: TopicRoot::default(),
            max_batch: 512,
            terminal_cache: 2_048,
            token_memory: Duration::from_secs(15 * 60),
        }
    }
}

/// The engines an owner works with.
#[derive(Clone)]
pub struct OwnerDeps {
    pub log: Arc<dyn EventLog>,
    pub bus: Arc<dyn Bus>,
    pub read_model: Arc<dyn ReadModel>,
    pub clock: Arc<dyn Clock>,
}

/// Runs the owners of `shards` until `shutdown` turns true. Each owner retries its startup
/// (rebuild, subscribe) with backoff while the engines are unavailable.
pub async fn run_owners(
    deps: OwnerDeps,
    config: Arc<OwnerConfig>,
    shards: Vec<u32>,
    shutdown: watch::Receiver<bool>,
) {
    let mut tasks = Vec::new();
    for shard in shards {
        let deps = deps.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            run_owner(deps, config, shard, shutdown).await
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            tracing::error!(error = %e, "shard owner task failed");
        }
    }
}

/// Runs the owner of one shard until `shutdown` turns true, restarting it (rebuild first)
/// after failures with backoff.
pub async fn run_owner(
    deps: OwnerDeps,
    config: Arc<OwnerConfig>,
    shard: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut owner = Owner::new(deps.clone(), config.clone(), shard);
        match owner.serve(&mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(shard, error = %e, "shard owner stopped; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    Execution(ExecutionId),
    CommandDeletion(String),
}

struct TokenEntry {
    fingerprint: u64,
    execution_id: ExecutionId,
    /// Until when the token is kept in memory.
    memory_until: TimestampMs,
    /// Offset of the start: the token leaves memory only once the read model has it.
    offset: u64,
}

/// A shard's live state, folded from its log partition.
#[derive(Default)]
struct ShardState {
    executions: HashMap<ExecutionId, Execution>,
    /// Offset of the last event of each in-memory execution (eviction waits for projection).
    last_offsets: HashMap<ExecutionId, u64>,
    terminal_order: VecDeque<ExecutionId>,
    /// Client tokens of recent starts (see [`OwnerConfig::token_memory`]).
    tokens: HashMap<(Target, String), TokenEntry>,
    token_order: VecDeque<((Target, String), TimestampMs)>,
    /// [`OwnerConfig::token_memory`] in ms.
    token_memory_ms: i64,
    commands: HashMap<String, (Command, u64)>,
    timers: BinaryHeap<Reverse<(TimestampMs, TimerKey)>>,
    next_offset: u64,
    /// The `traceparent` each traced execution started under: later inputs (device updates,
    /// timeouts, cancels) join that trace, so one execution is one trace.
    traces: HashMap<ExecutionId, String>,
    /// The payloads of executions still CREATED: a new owner delivers them again after a
    /// rebuild, since the previous owner may have died between its append and its delivery.
    undelivered: HashMap<ExecutionId, Payload>,
}

impl ShardState {
    /// Folds one logged event into the state.
    fn apply(&mut self, env: &EventEnvelope, offset: u64) {
        match &env.aggregate {
            Aggregate::Execution { execution_id, .. } => {
                if let Event::ExecutionStarted {
                    execution,
                    request_fingerprint,
                    ..
                } = &env.event
                {
                    let e = (**execution).clone();
                    self.timers.push(Reverse((
                        e.deadline(),
                        TimerKey::Execution(e.execution_id.clone()),
                    )));
                    if let Some(token) = &e.client_token {
                        let key = (e.target.clone(), token.clone());
                        let memory_until = env.at + self.token_memory_ms;
                        self.tokens.insert(
                            key.clone(),
                            TokenEntry {
                                fingerprint: *request_fingerprint,
                                execution_id: e.execution_id.clone(),
                                memory_until,
                                offset,
                            },
                        );
                        self.token_order.push_back((key, memory_until));
                    }
                    if let Some(trace) = &env.trace {
                        self.traces.insert(e.execution_id.clone(), trace.clone());
                    }
                    if let Event::ExecutionStarted { payload, .. } = &env.event {
                        self.undelivered
                            .insert(e.execution_id.clone(), payload.clone());
                    }
                    self.executions.insert(e.execution_id.clone(), e);
                    self.last_offsets.insert(execution_id.clone(), offset);
                    return;
                }
                let Some(e) = self.executions.get_mut(execution_id) else {
                    return;
                };
                let was_terminal = e.terminal;
                // Any status change means the device got it, or it no longer matters.
                self.undelivered.remove(execution_id);
                if execution::apply(e, &env.event, env.at, env.seq) {
                    self.last_offsets.insert(execution_id.clone(), offset);
                    if e.terminal && !was_terminal {
                        self.terminal_order.push_back(execution_id.clone());
                    }
                } else {
                    self.executions.remove(execution_id);
                    self.last_offsets.remove(execution_id);
                    self.traces.remove(execution_id);
                }
            }
            Aggregate::Command(id) => {
                let key = id.as_str().to_string();
                let mut state = self.commands.remove(&key).map(|(c, _)| c);
                command::apply(&mut state, &env.event, env.at);
                if let Some(c) = state {
                    if let Event::CommandDeletionScheduled { delete_at } = &env.event {
                        self.timers.push(Reverse((
                            *delete_at,
                            TimerKey::CommandDeletion(key.clone()),
                        )));
                    }
                    self.commands.insert(key, (c, env.seq));
                }
            }
        }
    }

    /// Drops terminal executions beyond the cache size whose last event is already projected
    /// (they can be read back from the read model), and client tokens past their time in
    /// memory whose start is projected.
    fn evict(&mut self, cache: usize, projected: u64, now: TimestampMs) {
        while self.terminal_order.len() > cache {
            let Some(id) = self.terminal_order.front() else {
                break;
            };
            if self.last_offsets.get(id).is_some_and(|o| *o >= projected) {
                break;
            }
            let id = self.terminal_order.pop_front().expect("front exists");
            if self.executions.get(&id).is_some_and(|e| e.terminal) {
                self.executions.remove(&id);
                self.last_offsets.remove(&id);
                self.traces.remove(&id);
            }
        }
        // Tokens leave memory in start order once their time is up and the read model has
        // their start; later retries find them there.
        while let Some((key, memory_until)) = self.token_order.front() {
            if *memory_until > now {
                break;
            }
            // A newer start with the same token replaced the entry: this one is stale.
            let current = self
                .tokens
                .get(key)
                .filter(|t| t.memory_until == *memory_until);
            if current.is_some_and(|t| t.offset >= projected) {
                break;
            }
            let (key, _) = self.token_order.pop_front().expect("front exists");
            if current.is_some() {
                self.tokens.remove(&key);
            }
        }
    }
}

/// What one batch looked up in the read model, shared by its inputs.
#[derive(Default)]
struct BatchMemo {
    commands: HashMap<CommandId, Option<Command>>,
    /// The stored start of each client token the batch's starts carry and the owner no
    /// longer holds in memory (looked up for the whole batch at once), or why the lookup
    /// failed.
    tokens: HashMap<(Target, String), Option<Execution>>,
    tokens_failed: Option<PortError>,
}

/// What to do once a decided input's events are durable.
enum Outcome {
    Reply(ShardReply),
    /// Reply with the position of the batch once appended.
    Started {
        execution_id: ExecutionId,
    },
    Execution {
        execution_id: ExecutionId,
        before: Option<Box<Execution>>,
    },
    Command {
        command_id: String,
    },
}

struct Owner {
    deps: OwnerDeps,
    config: Arc<OwnerConfig>,
    shard: u32,
    state: ShardState,
    /// The `traceparent` written into the envelopes of the input being decided (set only
    /// while a traced input is decided).
    trace: Option<String>,
}

impl Owner {
    fn new(deps: OwnerDeps, config: Arc<OwnerConfig>, shard: u32) -> Self {
        Self {
            deps,
            config,
            shard,
            state: ShardState::default(),
            trace: None,
        }
    }

    /// Rebuilds the shard's state from its log partition.
    async fn rebuild(&mut self) -> Result<(), PortError> {
        self.state = ShardState {
            token_memory_ms: i64::try_from(self.config.token_memory.as_millis())
                .unwrap_or(i64::MAX),
            ..ShardState::default()
        };
        let mut from = 0;
        loop {
            let records = self.deps.log.read(self.shard, from, 4096).await?;
            let Some(last) = records.last() else { break };
            from = last.offset + 1;
            for r in &records {
                let env: EventEnvelope = serde_json::from_slice(&r.payload).map_err(|e| {
                    PortError::Corrupt(format!("partition {} offset {}: {e}", self.shard, r.offset))
                })?;
                self.state.apply(&env, r.offset);
            }
            let projected = self.deps.read_model.position(self.shard).await?;
            self.state.evict(
                self.config.terminal_cache,
                projected,
                self.deps.clock.now_ms(),
            );
        }
        self.state.next_offset = from;
        Ok(())
    }

    async fn serve(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), PortError> {
        self.rebuild().await?;
        self.redeliver().await;
        let mut sub = self
            .deps
            .bus
            .subscribe(&shard_subject(self.shard), Some("dispatcher"))
            .await?;
        tracing::debug!(
            shard = self.shard,
            next_offset = self.state.next_offset,
            live = self.state.executions.len(),
            "shard owner ready"
        );
        let _owned = metrics::OwnedShard::acquire();
        let mut batches_since_evict = 0u32;
        loop {
            let next_timer = self.state.timers.peek().map(|Reverse((at, _))| *at);
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
                    batches_since_evict += 1;
                    if batches_since_evict >= 64 {
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

    fn envelope(
        &self,
        aggregate: Aggregate,
        seq: u64,
        event: Event,
        now: TimestampMs,
    ) -> EventEnvelope {
        EventEnvelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            schema: SCHEMA_VERSION,
            aggregate,
            seq,
            at: now,
            trace: self.trace.clone(),
            event,
        }
    }

    async fn process_batch(&mut self, batch: Vec<BusMessage>) -> Result<(), PortError> {
        let now = self.deps.clock.now_ms();
        let mut events: Vec<EventEnvelope> = Vec::new();
        let mut outcomes: Vec<(Option<String>, Outcome)> = Vec::with_capacity(batch.len());
        // Spans of the traced inputs: they end once their events are durable, answered and
        // handed to the edge.
        let mut spans: Vec<Span> = Vec::new();
        let parsed: Vec<(BusMessage, Result<ShardRequest, serde_json::Error>)> = batch
            .into_iter()
            .map(|msg| {
                let req = serde_json::from_slice::<ShardRequest>(&msg.payload);
                (msg, req)
            })
            .collect();
        let mut memo = BatchMemo::default();
        self.look_up_tokens(&parsed, &mut memo).await;
        for (msg, parsed) in parsed {
            let outcome = match parsed {
                Err(e) => Outcome::Reply(ShardReply::Rejected(Rejection::new(
                    RejectionCode::InvalidRequest,
                    format!("malformed shard request: {e}"),
                ))),
                Ok(req) if shard_of(&req.routing_key(), self.config.shards) != self.shard => {
                    Outcome::Reply(ShardReply::Unavailable(format!(
                        "request for {} reached shard {}",
                        req.routing_key(),
                        self.shard
                    )))
                }
                Ok(req) => {
                    let span = self.input_span(&req, &msg.headers);
                    self.trace = trace_context::traceparent(&span);
                    let decided = self
                        .decide(req, now, &mut memo, &mut events)
                        .instrument(span.clone())
                        .await;
                    self.trace = None;
                    if !span.is_none() {
                        spans.push(span);
                    }
                    match decided {
                        Ok(o) => o,
                        Err(DecideError::Rejected(r)) => Outcome::Reply(ShardReply::Rejected(r)),
                        Err(DecideError::Port(e)) => {
                            Outcome::Reply(ShardReply::Unavailable(e.to_string()))
                        }
                    }
                }
            };
            outcomes.push((msg.reply, outcome));
        }
        let position = match self.append(&events).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, "append failed; answering retryable and rebuilding");
                for (reply, outcome) in outcomes {
                    let answer = match outcome {
                        Outcome::Reply(r) => r,
                        _ => ShardReply::Unavailable(format!("event log unavailable: {e}")),
                    };
                    self.reply(reply, &answer).await;
                }
                return Err(e);
            }
        };
        for (reply, outcome) in outcomes {
            let answer = match outcome {
                Outcome::Reply(r) => r,
                Outcome::Started { execution_id } => ShardReply::Started {
                    execution_id,
                    position,
                    replayed: false,
                },
                Outcome::Execution {
                    execution_id,
                    before,
                } => {
                    let execution = match before {
                        Some(b) => b,
                        None => match self.state.executions.get(&execution_id) {
                            Some(e) => Box::new(e.clone()),
                            None => continue,
                        },
                    };
                    ShardReply::Execution {
                        execution,
                        position,
                    }
                }
                Outcome::Command { command_id } => {
                    let command = self
                        .state
                        .commands
                        .get(&command_id)
                        .map(|(c, _)| Box::new(c.clone()));
                    let deleted = command.is_none();
                    ShardReply::Command {
                        command,
                        deleted,
                        position,
                    }
                }
            };
            self.reply(reply, &answer).await;
        }
        self.after_append(&events, now).await;
        drop(spans);
        Ok(())
    }

    async fn fire_timers(&mut self) -> Result<(), PortError> {
        let now = self.deps.clock.now_ms();
        let mut events = Vec::new();
        let mut spans: Vec<Span> = Vec::new();
        while let Some(Reverse((at, _))) = self.state.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.state.timers.pop() else {
                break;
            };
            match key {
                TimerKey::Execution(id) => {
                    if let Some(e) = self.state.executions.get(&id) {
                        let decided =
                            execution::decide(e, &ExecutionInput::CloudTimeout).unwrap_or_default();
                        let span = self.execution_span("shard.owner timeout", &id, None);
                        self.trace = trace_context::traceparent(&span);
                        self.stage_execution_events(&id, decided, now, &mut events);
                        self.trace = None;
                        if !span.is_none() {
                            spans.push(span);
                        }
                    }
                }
                TimerKey::CommandDeletion(id) => {
                    if let Some((c, _)) = self.state.commands.get(&id) {
                        let decided = command::decide(
                            &id,
                            Some(c),
                            &CommandInput::Expire,
                            now,
                            self.config.command_settings,
                        )
                        .unwrap_or_default();
                        self.stage_command_events(&id, decided, now, &mut events);
                    }
                }
            }
        }
        self.append(&events).await?;
        self.after_append(&events, now).await;
        drop(spans);
        Ok(())
    }

    /// Appends staged events (already applied to the state) and returns the batch's position.
    async fn append(&mut self, events: &[EventEnvelope]) -> Result<Option<LogPosition>, PortError> {
        if events.is_empty() {
            return Ok(None);
        }
        let mut records = Vec::with_capacity(events.len());
        for env in events {
            let payload = serde_json::to_vec(env)
                .map_err(|e| PortError::Backend(format!("encoding event: {e}")))?;
            records.push((env.aggregate.routing_key(), Bytes::from(payload)));
        }
        let n = records.len() as u64;
        let first = self.deps.log.append(self.shard, records).await?;
        if first != self.state.next_offset {
            // Someone else wrote to our partition: our state is stale. Rebuild before serving on.
            return Err(PortError::Unavailable(format!(
                "partition {} expected offset {} but the append landed at {first}; another owner is writing",
                self.shard, self.state.next_offset
            )));
        }
        self.state.next_offset = first + n;
        for (i, env) in events.iter().enumerate() {
            let offset = first + i as u64;
            if let Aggregate::Execution { execution_id, .. } = &env.aggregate {
                self.state.last_offsets.insert(execution_id.clone(), offset);
            }
            // Decided before the append, a start's token holds a provisional offset.
            if let Event::ExecutionStarted { execution, .. } = &env.event
                && let Some(token) = &execution.client_token
                && let Some(t) = self
                    .state
                    .tokens
                    .get_mut(&(execution.target.clone(), token.clone()))
            {
                t.offset = offset;
            }
        }
        Ok(Some(LogPosition {
            partition: self.shard,
            next_offset: first + n,
        }))
    }

    /// Deliveries and cancel notices go to the edge once the events are durable.
    /// Delivers again every execution that is still CREATED and not expired: the previous
    /// owner may have appended it and died before handing it to the edge. Devices see each
    /// request at least once (as with any QoS 1 delivery) and recognise repeats by id.
    async fn redeliver(&self) {
        let now = self.deps.clock.now_ms();
        let mut count = 0usize;
        for (id, payload) in &self.state.undelivered {
            let Some(e) = self.state.executions.get(id) else {
                continue;
            };
            if e.status != fleetcmd_domain::model::ExecutionStatus::Created || e.deadline() <= now {
                continue;
            }
            let d = self.delivery(e, payload);
            match serde_json::to_vec(&d) {
                Ok(bytes) => {
                    if let Err(err) = self
                        .deps
                        .bus
                        .publish(BusMessage::new(DELIVER_SUBJECT, bytes))
                        .await
                    {
                        tracing::warn!(topic = %d.topic, error = %err, "could not hand a redelivery to the edge");
                    } else {
                        count += 1;
                    }
                }
                Err(err) => tracing::error!(error = %err, "encoding a redelivery"),
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

    async fn after_append(&self, events: &[EventEnvelope], _now: TimestampMs) {
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
                ) => Some(self.delivery(execution, payload)),
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
                match serde_json::to_vec(&d) {
                    Ok(bytes) => {
                        let mut message = BusMessage::new(DELIVER_SUBJECT, bytes);
                        // The edge's publish joins the execution's trace.
                        let span = match &env.trace {
                            Some(parent) if trace_context::enabled() => {
                                let span = tracing::info_span!(
                                    "shard.deliver",
                                    otel.kind = "producer",
                                    shard = self.shard,
                                    topic = %d.topic,
                                );
                                trace_context::set_parent(&span, parent);
                                trace_context::inject(&span, &mut message.headers);
                                span
                            }
                            _ => Span::none(),
                        };
                        if let Err(e) = self.deps.bus.publish(message).instrument(span).await {
                            tracing::warn!(topic = %d.topic, error = %e, "could not hand a delivery to the edge");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "encoding a delivery"),
                }
            }
        }
    }

    /// The span of one input, when traced. A start or command input is parented on its
    /// caller's context (the bus headers). An execution input joins the trace its execution
    /// started under, linked to its caller's context (a device update's edge span): devices
    /// send no trace context, and one execution stays one trace.
    fn input_span(&self, req: &ShardRequest, headers: &[(String, String)]) -> Span {
        if !trace_context::enabled() {
            return Span::none();
        }
        let caller = trace_context::find(headers);
        match req {
            ShardRequest::Execution {
                execution_id,
                input,
                ..
            } => {
                let name = match input {
                    ExecutionInput::Report { .. } => "shard.owner report",
                    ExecutionInput::CloudTimeout => "shard.owner timeout",
                    ExecutionInput::Cancel { .. } => "shard.owner cancel",
                    ExecutionInput::Delete => "shard.owner delete",
                };
                self.execution_span(name, execution_id, caller)
            }
            ShardRequest::Start(_) | ShardRequest::Command { .. } => {
                let name = if matches!(req, ShardRequest::Start(_)) {
                    "shard.owner start"
                } else {
                    "shard.owner command"
                };
                let span = tracing::info_span!(
                    "shard.owner",
                    otel.name = name,
                    otel.kind = "server",
                    shard = self.shard,
                    input = fleetcmd_service_kit::input_name(req),
                );
                if let Some(parent) = caller {
                    trace_context::set_parent(&span, parent);
                }
                span
            }
        }
    }

    /// A span in the trace of execution `id` (or of `caller` when the execution has none).
    fn execution_span(&self, name: &'static str, id: &ExecutionId, caller: Option<&str>) -> Span {
        if !trace_context::enabled() {
            return Span::none();
        }
        let stored = self.state.traces.get(id).map(String::as_str);
        let Some(parent) = stored.or(caller) else {
            return Span::none();
        };
        let span = tracing::info_span!(
            "shard.owner",
            otel.name = name,
            otel.kind = "server",
            shard = self.shard,
            execution_id = %id,
        );
        trace_context::set_parent(&span, parent);
        if let (Some(_), Some(caller)) = (stored, caller) {
            trace_context::add_link(&span, caller);
        }
        span
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
        match serde_json::to_vec(answer) {
            Ok(bytes) => {
                if let Err(e) = self.deps.bus.publish(BusMessage::new(subject, bytes)).await {
                    tracing::debug!(error = %e, "could not answer a shard request");
                }
            }
            Err(e) => tracing::error!(error = %e, "encoding a shard reply"),
        }
    }

    fn stage_execution_events(
        &mut self,
        id: &ExecutionId,
        decided: Vec<Event>,
        now: TimestampMs,
        out: &mut Vec<EventEnvelope>,
    ) {
        for event in decided {
            let Some(e) = self.state.executions.get(id) else {
                return;
            };
            let aggregate = Aggregate::Execution {
                execution_id: id.clone(),
                target: e.target.clone(),
            };
            let env = self.envelope(aggregate, e.seq + 1, event, now);
            self.state.apply(&env, self.state.next_offset);
            out.push(env);
        }
    }

    fn stage_command_events(
        &mut self,
        id: &str,
        decided: Vec<Event>,
        now: TimestampMs,
        out: &mut Vec<EventEnvelope>,
    ) {
        for event in decided {
            let seq = self.state.commands.get(id).map_or(0, |(_, s)| *s) + 1;
            let Ok(command_id) = CommandId::parse(id) else {
                return;
            };
            let env = self.envelope(Aggregate::Command(command_id), seq, event, now);
            self.state.apply(&env, self.state.next_offset);
            out.push(env);
        }
    }

    /// Looks up, in one read-model call, the client tokens of the batch's starts that are
    /// not in memory.
    async fn look_up_tokens(
        &self,
        parsed: &[(BusMessage, Result<ShardRequest, serde_json::Error>)],
        memo: &mut BatchMemo,
    ) {
        let mut keys: Vec<(Target, String)> = Vec::new();
        for (_, req) in parsed {
            if let Ok(ShardRequest::Start(req)) = req
                && let Some(token) = &req.client_token
            {
                let key = (req.target.clone(), token.clone());
                if !self.state.tokens.contains_key(&key) && !memo.tokens.contains_key(&key) {
                    memo.tokens.insert(key.clone(), None);
                    keys.push(key);
                }
            }
        }
        if keys.is_empty() {
            return;
        }
        match self.deps.read_model.find_executions_by_tokens(&keys).await {
            Ok(found) => {
                for (key, e) in keys.into_iter().zip(found) {
                    memo.tokens.insert(key, e);
                }
            }
            Err(e) => memo.tokens_failed = Some(e),
        }
    }

    async fn decide(
        &mut self,
        req: ShardRequest,
        now: TimestampMs,
        memo: &mut BatchMemo,
        out: &mut Vec<EventEnvelope>,
    ) -> Result<Outcome, DecideError> {
        match req {
            ShardRequest::Start(req) => self.decide_start(req, now, memo, out).await,
            ShardRequest::Execution {
                execution_id,
                target,
                input,
            } => {
                if !self.state.executions.contains_key(&execution_id) {
                    // Evicted (terminal and projected) or unknown: read it back.
                    match self.deps.read_model.get_execution(&execution_id).await? {
                        Some(e) if e.terminal && e.target == target => {
                            self.state.executions.insert(execution_id.clone(), e);
                            self.state.terminal_order.push_back(execution_id.clone());
                        }
                        _ => return Err(not_found(&execution_id, &target).into()),
                    }
                }
                let e = self
                    .state
                    .executions
                    .get(&execution_id)
                    .ok_or_else(|| not_found(&execution_id, &target))?;
                if e.target != target {
                    return Err(not_found(&execution_id, &target).into());
                }
                let decided = execution::decide(e, &input)?;
                let before = matches!(input, ExecutionInput::Delete).then(|| Box::new(e.clone()));
                self.stage_execution_events(&execution_id, decided, now, out);
                Ok(Outcome::Execution {
                    execution_id,
                    before,
                })
            }
            ShardRequest::Command { command_id, input } => {
                let state = self.state.commands.get(&command_id).map(|(c, _)| c);
                let decided = command::decide(
                    &command_id,
                    state,
                    &input,
                    now,
                    self.config.command_settings,
                )?;
                self.stage_command_events(&command_id, decided, now, out);
                Ok(Outcome::Command { command_id })
            }
        }
    }

    async fn decide_start(
        &mut self,
        req: StartRequest,
        now: TimestampMs,
        memo: &mut BatchMemo,
        out: &mut Vec<EventEnvelope>,
    ) -> Result<Outcome, DecideError> {
        start::validate_request(&req).map_err(Rejection::from)?;
        let fingerprint = start::fingerprint(&req);
        if let Some(token) = &req.client_token
            && let Some(entry) = self.state.tokens.get(&(req.target.clone(), token.clone()))
        {
            if entry.fingerprint == fingerprint {
                return Ok(Outcome::Reply(ShardReply::Started {
                    execution_id: entry.execution_id.clone(),
                    position: None,
                    replayed: true,
                }));
            }
            return Err(token_conflict(token, &entry.execution_id).into());
        }
        // Not in memory: an older start with this token is in the read model (tokens leave
        // memory only once projected), and counts for the whole token window.
        if let Some(token) = &req.client_token {
            let key = (req.target.clone(), token.clone());
            if let Some(e) = &memo.tokens_failed
                && memo.tokens.contains_key(&key)
            {
                return Err(DecideError::Port(e.clone()));
            }
            let stored = match memo.tokens.get(&key) {
                Some(found) => found.clone(),
                // Not looked up with the batch (every start of a batch is): ask now.
                None => {
                    let found = self
                        .deps
                        .read_model
                        .find_execution_by_token(&req.target, token)
                        .await?;
                    memo.tokens.insert(key, found.clone());
                    found
                }
            };
            if let Some(e) = stored
                && e.deadline() + (CLIENT_TOKEN_WINDOW_SECS as i64) * 1000 > now
            {
                // 0: a record written before fingerprints were kept; the token decides.
                if e.request_fingerprint == fingerprint || e.request_fingerprint == 0 {
                    return Ok(Outcome::Reply(ShardReply::Started {
                        execution_id: e.execution_id,
                        position: None,
                        replayed: true,
                    }));
                }
                return Err(token_conflict(token, &e.execution_id).into());
            }
        }
        let command = match memo.commands.get(&req.command_id) {
            Some(c) => c.clone(),
            None => {
                let c = self.deps.read_model.get_command(&req.command_id).await?;
                memo.commands.insert(req.command_id.clone(), c.clone());
                c
            }
        };
        let Some(command) = command else {
            return Err(Rejection::new(
                RejectionCode::ResourceNotFound,
                format!("command {} not found", req.command_id),
            )
            .into());
        };
        let execution_id =
            ExecutionId::parse(uuid::Uuid::now_v7().to_string()).map_err(Rejection::from)?;
        let (execution, payload) = start::plan(
            &command,
            &req,
            execution_id.clone(),
            now,
            self.config.retention_secs,
        )?;
        let aggregate = Aggregate::Execution {
            execution_id: execution_id.clone(),
            target: execution.target.clone(),
        };
        let env = self.envelope(
            aggregate,
            1,
            Event::ExecutionStarted {
                execution: Box::new(execution),
                payload,
                request_fingerprint: fingerprint,
            },
            now,
        );
        self.state.apply(&env, self.state.next_offset);
        out.push(env);
        Ok(Outcome::Started { execution_id })
    }
}

fn token_conflict(token: &str, execution_id: &ExecutionId) -> Rejection {
    Rejection::new(
        RejectionCode::Conflict,
        format!(
            "client_token {token:?} was already used for a different request (execution {execution_id}); use a new token for a new request"
        ),
    )
}

fn not_found(id: &ExecutionId, target: &Target) -> Rejection {
    Rejection::new(
        RejectionCode::ResourceNotFound,
        format!("execution {id} not found for target {target}"),
    )
}

enum DecideError {
    Rejected(Rejection),
    Port(PortError),
}

impl From<Rejection> for DecideError {
    fn from(r: Rejection) -> Self {
        Self::Rejected(r)
    }
}

impl From<PortError> for DecideError {
    fn from(e: PortError) -> Self {
        Self::Port(e)
    }
}
