//! Shard owners: one task per owned shard, the single writer of its log partition.
//!
//! Each owner rebuilds its shard's state from the log before it subscribes to its subject,
//! so callers see "no responder" (retryable) until it is ready. The owner is split in three:
//! - [`state`]: the shard's live state, a pure fold of the log;
//! - [`decide`]: what an input does to that state, pure (given what the batch read from the
//!   read model);
//! - `serve`: the I/O loop that reads, decides, appends, answers and delivers.

pub mod decide;
mod pending;
mod rollouts;
mod serve;
pub mod state;
mod trace;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use fleetcmd_domain::command::CommandSettings;
use fleetcmd_domain::ports::{Bus, Clock, EventLog, ProjectingLog, ReadModel, SnapshotStore};
use fleetcmd_domain::topics::TopicRoot;
use tokio::sync::watch;

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
    /// A snapshot of the shard's state is saved after this many records since the last one
    /// (0: never), so a new owner replays at most about this many.
    pub snapshot_every_records: u64,
    /// A new owner that replayed at least this many records after the latest snapshot saves
    /// one as soon as it is ready (after a hand-over), so the next hand-over is quick.
    pub snapshot_after_tail_records: u64,
    /// The most executions of a target with its device at once when its thing sets no
    /// `max_in_flight` (`None`: no limit, as AWS).
    pub max_in_flight_default: Option<u32>,
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
            snapshot_every_records: 100_000,
            snapshot_after_tail_records: 10_000,
            max_in_flight_default: None,
        }
    }
}

/// The engines an owner works with.
#[derive(Clone)]
pub struct OwnerDeps {
    pub log: Arc<dyn EventLog>,
    pub bus: Arc<dyn Bus>,
    pub read_model: Arc<dyn ReadModel>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub clock: Arc<dyn Clock>,
    /// The log again, when it projects what it appends in the same write (the embedded
    /// store): the owner then writes its read-model rows with each append and announces the
    /// status changes itself, and no projector runs. `None` in a cluster.
    pub inline_projection: Option<Arc<dyn ProjectingLog>>,
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
        let mut owner = serve::Owner::new(deps.clone(), config.clone(), shard);
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
