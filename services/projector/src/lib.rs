//! The status projector: folds the event log into the read model and then announces what
//! changed. It reads each partition from the position the read model recorded, applies a
//! batch of events in one commit (writes and position together, so a crash resumes at a
//! consistent point and a replay changes nothing), and only after the commit publishes
//! `fleetcmd.events.<command>` notifications and its progress on `fleetcmd.projected`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use fleetcmd_domain::command;
use fleetcmd_domain::event::{Aggregate, Event, EventEnvelope};
use fleetcmd_domain::execution;
use fleetcmd_domain::ids::{CommandId, ExecutionId};
use fleetcmd_domain::model::{Command, Execution};
use fleetcmd_domain::ports::{
    Bus, BusMessage, CommandWrite, EventLog, ExecutionWrite, LogRecord, PortError, ProjectionBatch,
    ReadModel,
};
use fleetcmd_domain::protocol::{ExecutionChanged, PROJECTED_SUBJECT, Projected, events_subject};
use fleetcmd_telemetry::{context as trace_context, metrics};
use tokio::sync::watch;
use tracing::Span;

/// How often a projector samples its partitions' lag (log end offset − projected position).
pub const LAG_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Projector settings.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Most log records folded into one commit.
    pub batch_max: usize,
    /// How many tasks share the partitions.
    pub workers: usize,
    /// How often expired execution records are purged.
    pub purge_interval: Duration,
    /// Non-terminal executions each worker keeps after projecting them, so their next
    /// event folds without reading the read model back (0: always read back).
    pub live_cache: usize,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_max: 2048,
            workers: 2,
            purge_interval: Duration::from_secs(60),
            live_cache: 65_536,
        }
    }
}

/// The engines the projector works with.
#[derive(Clone)]
pub struct ProjectorDeps {
    pub log: Arc<dyn EventLog>,
    pub read_model: Arc<dyn ReadModel>,
    pub bus: Arc<dyn Bus>,
    pub clock: Arc<dyn fleetcmd_domain::ports::Clock>,
}

/// Projects `partitions` until `shutdown` turns true, restarting workers after failures.
pub async fn run(
    deps: ProjectorDeps,
    config: ProjectorConfig,
    partitions: Vec<u32>,
    shutdown: watch::Receiver<bool>,
) {
    let workers = config.workers.max(1).min(partitions.len().max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mine: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|p| *p as usize % workers == w)
            .collect();
        tasks.push(tokio::spawn(run_partitions(
            deps.clone(),
            config.clone(),
            mine,
            shutdown.clone(),
        )));
    }
    let purge = tokio::spawn(run_purger(
        deps.clone(),
        config.purge_interval,
        shutdown.clone(),
    ));
    for t in tasks {
        let _ = t.await;
    }
    purge.abort();
}

/// Projects one group of partitions in one task until `shutdown` turns true, restarting
/// after failures with backoff (a restart resumes from the read model's positions).
pub async fn run_partitions(
    deps: ProjectorDeps,
    config: ProjectorConfig,
    partitions: Vec<u32>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match project(&deps, &config, &partitions, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, ?partitions, "projector worker failed; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Purges expired execution records every `every` until `shutdown` turns true.
pub async fn run_purger(deps: ProjectorDeps, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        match deps.read_model.purge_expired(deps.clock.now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired execution records purged"),
            Err(e) => tracing::warn!(error = %e, "purging expired executions failed"),
        }
    }
}

async fn project(
    deps: &ProjectorDeps,
    config: &ProjectorConfig,
    partitions: &[u32],
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), PortError> {
    let mut positions: Vec<(u32, u64)> = Vec::with_capacity(partitions.len());
    for p in partitions {
        positions.push((*p, deps.read_model.position(*p).await?));
    }
    let _lag = LagSeries(partitions);
    // Rebuilt empty on every (re)start: it only ever holds this run's own folds.
    let mut live = LiveCache::new(config.live_cache);
    let mut next_lag_sample = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= next_lag_sample {
            next_lag_sample = now + LAG_SAMPLE_INTERVAL;
            sample_lag(deps.log.as_ref(), &positions).await;
        }
        let mut progressed = false;
        for (partition, position) in positions.iter_mut() {
            let records = deps
                .log
                .read(*partition, *position, config.batch_max)
                .await?;
            if records.is_empty() {
                continue;
            }
            progressed = true;
            let next = records.last().map_or(*position, |r| r.offset + 1);
            let changes = fold(deps.read_model.as_ref(), &live, *partition, next, &records).await?;
            live.remember(&changes.batch.executions);
            deps.read_model.commit(changes.batch).await?;
            *position = next;
            announce(
                deps.bus.as_ref(),
                *partition,
                next,
                &changes.changed,
                &changes.traces,
            )
            .await;
            drop(changes.spans);
        }
        if !progressed {
            tokio::select! {
                r = deps.log.wait_for_records(&positions, Duration::from_secs(1)) => r?,
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Samples the lag of each partition; a failed read of the end offset skips that sample.
async fn sample_lag(log: &dyn EventLog, positions: &[(u32, u64)]) {
    for (partition, position) in positions {
        match log.end_offset(*partition).await {
            Ok(end) => metrics::projector_lag(*partition, end.saturating_sub(*position)),
            Err(e) => tracing::debug!(partition, error = %e, "sampling projector lag"),
        }
    }
}

/// Removes the lag series of partitions this worker stops projecting (they may move to
/// another process).
struct LagSeries<'a>(&'a [u32]);

impl Drop for LagSeries<'_> {
    fn drop(&mut self) {
        for p in self.0 {
            metrics::forget_projector_partition(*p);
        }
    }
}

/// What one batch writes, and the status changes to announce after the commit.
pub struct Folded {
    pub batch: ProjectionBatch,
    pub changed: Vec<ExecutionChanged>,
    /// The `traceparent` of each change's projection span, aligned with `changed` (empty when
    /// nothing is traced).
    pub traces: Vec<Option<String>>,
    /// One span per traced event, parented on the envelope's `trace`; they end after the
    /// commit and the announcements.
    pub spans: Vec<Span>,
}

/// The non-terminal executions a projector worker wrote last, as its own fold of the log
/// left them. The next event of such an execution (a device update, a timeout) then folds
/// from here instead of from a read-model read. Terminal executions are not kept (nothing
/// but a deletion follows them); beyond `capacity` the oldest entries go, and a miss simply
/// reads the read model as before. Overlapping projectors stay harmless: the read model's
/// writes are ordered by `seq`, so an older state never overwrites a newer one.
pub struct LiveCache {
    capacity: usize,
    executions: HashMap<ExecutionId, Execution>,
    /// Insertion order, for eviction; may hold ids already removed (skipped when popped).
    order: VecDeque<ExecutionId>,
}

impl LiveCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            executions: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, id: &ExecutionId) -> Option<&Execution> {
        self.executions.get(id)
    }

    /// Records a batch's writes. Called before the commit: should the commit fail, the
    /// worker restarts with an empty cache.
    pub fn remember(&mut self, writes: &[ExecutionWrite]) {
        if self.capacity == 0 {
            return;
        }
        for w in writes {
            match w {
                ExecutionWrite::Upsert(e) if !e.terminal => {
                    if self
                        .executions
                        .insert(e.execution_id.clone(), e.clone())
                        .is_none()
                    {
                        self.order.push_back(e.execution_id.clone());
                    }
                }
                ExecutionWrite::Upsert(e) => {
                    self.executions.remove(&e.execution_id);
                }
                ExecutionWrite::Delete(id) => {
                    self.executions.remove(id);
                }
            }
        }
        if self.order.len() > 2 * self.capacity {
            let executions = &self.executions;
            self.order.retain(|id| executions.contains_key(id));
        }
        while self.executions.len() > self.capacity {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            self.executions.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.executions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.executions.is_empty()
    }
}

/// Folds log records into read-model writes, starting from the states in `live` or else
/// the stored records.
pub async fn fold(
    read_model: &dyn ReadModel,
    live: &LiveCache,
    partition: u32,
    next_offset: u64,
    records: &[LogRecord],
) -> Result<Folded, PortError> {
    let mut envelopes = Vec::with_capacity(records.len());
    for r in records {
        let env: EventEnvelope = serde_json::from_slice(&r.payload).map_err(|e| {
            PortError::Corrupt(format!("partition {partition} offset {}: {e}", r.offset))
        })?;
        envelopes.push(env);
    }
    // Executions in order of first appearance; those whose first event is not their start
    // have stored state to load.
    let mut order_e: Vec<ExecutionId> = Vec::new();
    let mut needed: Vec<ExecutionId> = Vec::new();
    let mut known: HashSet<&ExecutionId> = HashSet::with_capacity(envelopes.len());
    for env in &envelopes {
        if let Aggregate::Execution { execution_id, .. } = &env.aggregate
            && known.insert(execution_id)
        {
            order_e.push(execution_id.clone());
            if !matches!(env.event, Event::ExecutionStarted { .. }) {
                needed.push(execution_id.clone());
            }
        }
    }
    let mut executions: HashMap<ExecutionId, Option<Execution>> = HashMap::new();
    needed.retain(|id| match live.get(id) {
        Some(e) => {
            executions.insert(id.clone(), Some(e.clone()));
            false
        }
        None => true,
    });
    if !needed.is_empty() {
        for e in read_model.get_executions(&needed).await? {
            executions.insert(e.execution_id.clone(), Some(e));
        }
    }
    let mut commands: HashMap<CommandId, Option<Command>> = HashMap::new();
    let mut order_c: Vec<CommandId> = Vec::new();
    let mut changed = Vec::new();
    let mut traces: Vec<Option<String>> = Vec::new();
    let mut spans: Vec<Span> = Vec::new();
    for env in &envelopes {
        let span = project_span(env, partition);
        let trace = trace_context::traceparent(&span);
        if !span.is_none() {
            spans.push(span);
        }
        let changes_before = changed.len();
        match &env.aggregate {
            Aggregate::Execution { execution_id, .. } => {
                let slot = executions.entry(execution_id.clone()).or_insert(None);
                match (&env.event, slot.as_mut()) {
                    (Event::ExecutionStarted { execution, .. }, None) => {
                        let mut e = (**execution).clone();
                        e.seq = env.seq;
                        changed.push(ExecutionChanged::from_execution(&e, env.at));
                        *slot = Some(e);
                    }
                    // Replayed events (seq not above the stored one) change nothing.
                    (_, Some(e)) if env.seq <= e.seq => {}
                    (event, Some(e)) => {
                        if execution::apply(e, event, env.at, env.seq) {
                            if event.new_status().is_some() {
                                changed.push(ExecutionChanged::from_execution(e, env.at));
                            }
                        } else {
                            *slot = None;
                        }
                    }
                    (_, None) => {
                        tracing::debug!(%execution_id, seq = env.seq, "event for an unknown or deleted execution skipped");
                    }
                }
            }
            Aggregate::Command(id) => {
                if !commands.contains_key(id) {
                    commands.insert(id.clone(), read_model.get_command(id).await?);
                    order_c.push(id.clone());
                }
                let slot = commands.get_mut(id).expect("inserted above");
                command::apply(slot, &env.event, env.at);
            }
        }
        if trace.is_some() || !traces.is_empty() {
            traces.resize(changes_before, None);
            traces.resize(changed.len(), trace);
        }
    }
    let mut batch = ProjectionBatch {
        partition,
        next_offset,
        commands: Vec::new(),
        executions: Vec::new(),
    };
    for id in order_e {
        match executions.remove(&id) {
            Some(Some(e)) => batch.executions.push(ExecutionWrite::Upsert(e)),
            _ => batch.executions.push(ExecutionWrite::Delete(id)),
        }
    }
    for id in order_c {
        match commands.remove(&id) {
            Some(Some(c)) => batch.commands.push(CommandWrite::Upsert(c)),
            _ => batch.commands.push(CommandWrite::Delete(id)),
        }
    }
    Ok(Folded {
        batch,
        changed,
        traces,
        spans,
    })
}

/// The span of one event's projection, parented on the envelope's `trace` (none when the
/// event is untraced or export is off).
fn project_span(env: &EventEnvelope, partition: u32) -> Span {
    match &env.trace {
        Some(parent) if trace_context::enabled() => {
            let span = tracing::info_span!(
                "projector.project",
                otel.kind = "consumer",
                partition,
                seq = env.seq,
                event = event_name(&env.event),
            );
            trace_context::set_parent(&span, parent);
            span
        }
        _ => Span::none(),
    }
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::CommandCreated { .. } => "CommandCreated",
        Event::CommandUpdated { .. } => "CommandUpdated",
        Event::CommandDeletionScheduled { .. } => "CommandDeletionScheduled",
        Event::CommandDeleted => "CommandDeleted",
        Event::ExecutionStarted { .. } => "ExecutionStarted",
        Event::StatusReported { .. } => "StatusReported",
        Event::ExecutionTimedOut => "ExecutionTimedOut",
        Event::ExecutionCanceled { .. } => "ExecutionCanceled",
        Event::ExecutionDeleted => "ExecutionDeleted",
    }
}

async fn announce(
    bus: &dyn Bus,
    partition: u32,
    next_offset: u64,
    changed: &[ExecutionChanged],
    traces: &[Option<String>],
) {
    for (i, c) in changed.iter().enumerate() {
        match serde_json::to_vec(c) {
            Ok(bytes) => {
                let mut message = BusMessage::new(events_subject(&c.command_id), bytes);
                if let Some(Some(tp)) = traces.get(i) {
                    message
                        .headers
                        .push((trace_context::TRACEPARENT.to_string(), tp.clone()));
                }
                if let Err(e) = bus.publish(message).await {
                    tracing::warn!(error = %e, "publishing a status notification failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "encoding a status notification"),
        }
    }
    match serde_json::to_vec(&Projected {
        partition,
        next_offset,
    }) {
        Ok(bytes) => {
            if let Err(e) = bus.publish(BusMessage::new(PROJECTED_SUBJECT, bytes)).await {
                tracing::warn!(error = %e, "publishing projection progress failed");
            }
        }
        Err(e) => tracing::error!(error = %e, "encoding projection progress"),
    }
}

#[cfg(test)]
mod tests {
    use fleetcmd_domain::ids::Target;
    use fleetcmd_domain::model::ExecutionStatus;

    use super::*;

    fn execution(id: &str, terminal: bool) -> Execution {
        Execution {
            execution_id: ExecutionId::parse(id).expect("id"),
            command_id: CommandId::parse("c").expect("command id"),
            target: Target::thing("t").expect("target"),
            status: if terminal {
                ExecutionStatus::Succeeded
            } else {
                ExecutionStatus::InProgress
            },
            status_reason: None,
            result: Default::default(),
            parameters: Default::default(),
            timeout_secs: 10,
            client_token: None,
            created_at: 1,
            last_updated_at: 1,
            started_at: 1,
            completed_at: None,
            time_to_live: 100,
            terminal,
            seq: 1,
            request_fingerprint: 0,
        }
    }

    fn id(s: &str) -> ExecutionId {
        ExecutionId::parse(s).expect("id")
    }

    #[test]
    fn live_cache_keeps_open_executions_and_drops_finished_and_deleted_ones() {
        let mut live = LiveCache::new(8);
        live.remember(&[
            ExecutionWrite::Upsert(execution("a", false)),
            ExecutionWrite::Upsert(execution("b", false)),
            ExecutionWrite::Upsert(execution("c", true)),
        ]);
        assert!(live.get(&id("a")).is_some());
        assert!(live.get(&id("b")).is_some());
        assert!(
            live.get(&id("c")).is_none(),
            "terminal executions are not kept"
        );
        live.remember(&[
            ExecutionWrite::Upsert(execution("a", true)),
            ExecutionWrite::Delete(id("b")),
        ]);
        assert!(live.is_empty(), "a finished and a deleted execution leave");
    }

    #[test]
    fn live_cache_evicts_the_oldest_beyond_its_capacity() {
        let mut live = LiveCache::new(3);
        for i in 0..10 {
            live.remember(&[ExecutionWrite::Upsert(execution(&format!("e{i}"), false))]);
            assert!(live.len() <= 3);
        }
        assert!(live.get(&id("e6")).is_none());
        for i in 7..10 {
            assert!(live.get(&id(&format!("e{i}"))).is_some(), "e{i}");
        }
        // Many short-lived entries do not grow the order queue without bound.
        for i in 0..100 {
            let e = format!("t{i}");
            live.remember(&[ExecutionWrite::Upsert(execution(&e, false))]);
            live.remember(&[ExecutionWrite::Upsert(execution(&e, true))]);
        }
        assert!(
            live.order.len() <= 2 * 3 + 1,
            "order queue: {}",
            live.order.len()
        );
    }

    #[test]
    fn a_zero_capacity_cache_keeps_nothing() {
        let mut live = LiveCache::new(0);
        live.remember(&[ExecutionWrite::Upsert(execution("a", false))]);
        assert!(live.is_empty());
    }
}
