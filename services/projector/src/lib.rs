//! The status projector: folds the event log into the read model and then announces what
//! changed. It reads each partition from the position the read model recorded, applies a
//! batch of events in one commit (writes and position together, so a crash resumes at a
//! consistent point and a replay changes nothing), and only after the commit publishes
//! `fleetcmd.events.<command>` notifications and its progress on `fleetcmd.projected`.

use std::sync::Arc;
use std::time::Duration;

use fleetcmd_contracts::codec;
use fleetcmd_domain::event::EventEnvelope;
use fleetcmd_domain::ports::{Bus, BusMessage, EventLog, LogRecord, PortError, ReadModel};
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
    // Declared before the sampler, so the sampler stops before the series are removed.
    let _lag = LagSeries(partitions);
    let mut sampler = LagSampler(None);
    // Rebuilt empty on every (re)start: it only ever holds this run's own folds.
    let mut live = LiveCache::new(config.live_cache);
    let mut next_lag_sample = tokio::time::Instant::now();
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= next_lag_sample && sampler.idle() {
            // In a task of its own: an exact end offset costs a fetch cycle per partition
            // (up to `fetch.wait.max.ms` on Kafka), which must not hold up projecting.
            next_lag_sample = now + LAG_SAMPLE_INTERVAL;
            let log = deps.log.clone();
            let at = positions.clone();
            sampler.0 = Some(tokio::spawn(
                async move { sample_lag(log.as_ref(), &at).await },
            ));
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
            let envelopes = decode(*partition, &records)?;
            // One span per traced event, parented on its envelope's trace; they end after
            // the commit and the announcements.
            let spans: Vec<Span> = envelopes
                .iter()
                .map(|env| project_span(env, *partition))
                .collect();
            let needs = fold::needs(&envelopes, &live);
            let loaded = fold::load(deps.read_model.as_ref(), &live, &envelopes, &needs).await?;
            let folded = fold::fold(&envelopes, loaded, *partition, next);
            live.remember(&folded.batch.executions);
            deps.read_model.commit(folded.batch).await?;
            *position = next;
            let traces: Vec<Option<String>> = folded
                .causes
                .iter()
                .map(|i| spans.get(*i).and_then(trace_context::traceparent))
                .collect();
            announce(
                deps.bus.as_ref(),
                *partition,
                next,
                &folded.changed,
                &traces,
            )
            .await;
            drop(spans);
        }
        if !progressed {
            tokio::select! {
                r = deps.log.wait_for_records(&positions, Duration::from_secs(1)) => r?,
                _ = shutdown.changed() => {}
            }
        }
    }
}

/// Samples the lag of each partition (the end offsets read concurrently) against the
/// positions of when the sample started; a failed read of an end offset skips that partition.
async fn sample_lag(log: &dyn EventLog, positions: &[(u32, u64)]) {
    let ends = futures::future::join_all(positions.iter().map(|(p, _)| log.end_offset(*p))).await;
    for ((partition, position), end) in positions.iter().zip(ends) {
        match end {
            Ok(end) => metrics::projector_lag(*partition, end.saturating_sub(*position)),
            Err(e) => tracing::debug!(partition, error = %e, "sampling projector lag"),
        }
    }
}

/// The running lag sample, aborted when the worker stops (so it cannot set a series after
/// [`LagSeries`] removed it).
struct LagSampler(Option<tokio::task::JoinHandle<()>>);

impl LagSampler {
    fn idle(&self) -> bool {
        self.0.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for LagSampler {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
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

pub mod fold;
mod live;

pub use live::LiveCache;

/// The events of `records`, in order.
fn decode(partition: u32, records: &[LogRecord]) -> Result<Vec<EventEnvelope>, PortError> {
    let mut envelopes = Vec::with_capacity(records.len());
    for r in records {
        let events = codec::decode_record(&r.payload).map_err(|e| {
            PortError::Corrupt(format!("partition {partition} offset {}: {e}", r.offset))
        })?;
        envelopes.extend(events);
    }
    Ok(envelopes)
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
                event = env.event.name(),
            );
            trace_context::set_parent(&span, parent);
            span
        }
        _ => Span::none(),
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
        let mut message = BusMessage::new(events_subject(&c.command_id), codec::encode_changed(c));
        if let Some(Some(tp)) = traces.get(i) {
            message
                .headers
                .push((trace_context::TRACEPARENT.to_string(), tp.clone()));
        }
        if let Err(e) = bus.publish(message).await {
            tracing::warn!(error = %e, "publishing a status notification failed");
        }
    }
    let progress = codec::encode_projected(&Projected {
        partition,
        next_offset,
    });
    if let Err(e) = bus
        .publish(BusMessage::new(PROJECTED_SUBJECT, progress))
        .await
    {
        tracing::warn!(error = %e, "publishing projection progress failed");
    }
}
