//! Tasks that follow a shard assignment: one task per owned shard, started when the shard is
//! assigned and stopped — and awaited — when it is revoked, so a shard never has two owners.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetcmd_domain::ports::{AssignmentChange, AssignmentHandler};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

type Spawn = dyn Fn(u32, watch::Receiver<bool>) -> BoxFuture<'static, ()> + Send + Sync;

/// Per shard: its stop signal and its task.
type Tasks = HashMap<u32, (watch::Sender<bool>, JoinHandle<()>)>;

/// How long a revoke waits for a shard's task to stop before giving up on it.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ShardTasks {
    runtime: tokio::runtime::Handle,
    spawn: Box<Spawn>,
    /// Per shard: its stop signal and its task.
    tasks: Mutex<Tasks>,
    /// The process-wide shutdown; new tasks are not started once it is set.
    shutdown: watch::Receiver<bool>,
}

impl ShardTasks {
    /// Must be called inside the tokio runtime the tasks run on.
    pub fn new(
        shutdown: watch::Receiver<bool>,
        spawn: impl Fn(u32, watch::Receiver<bool>) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            runtime: tokio::runtime::Handle::current(),
            spawn: Box::new(spawn),
            tasks: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// The handler to give a [`fleetcmd_domain::ports::ShardMembership`].
    pub fn handler(self: &Arc<Self>) -> AssignmentHandler {
        let this = self.clone();
        Arc::new(move |change| this.apply(change))
    }

    /// Shards with a running task.
    pub fn owned(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts tasks for assigned shards; stops revoked ones and blocks until they ended.
    /// Called from the membership's own thread, never from a runtime worker (it blocks).
    pub fn apply(&self, change: AssignmentChange) {
        match change {
            AssignmentChange::Assigned(shards) => {
                if *self.shutdown.borrow() {
                    return;
                }
                let mut tasks = self.lock();
                for shard in shards {
                    if tasks.contains_key(&shard) {
                        continue;
                    }
                    let (tx, rx) = watch::channel(false);
                    let handle = self.runtime.spawn((self.spawn)(shard, rx));
                    tasks.insert(shard, (tx, handle));
                }
                tracing::info!(owned = ?tasks.keys().collect::<Vec<_>>(), "shards assigned");
            }
            AssignmentChange::Revoked(shards) => {
                let stopping: Vec<(u32, JoinHandle<()>)> = {
                    let mut tasks = self.lock();
                    shards
                        .into_iter()
                        .filter_map(|s| {
                            tasks.remove(&s).map(|(tx, h)| {
                                tx.send_replace(true);
                                (s, h)
                            })
                        })
                        .collect()
                };
                for (shard, handle) in stopping {
                    let stopped = self.runtime.block_on(async {
                        tokio::time::timeout(STOP_TIMEOUT, handle).await.is_ok()
                    });
                    if !stopped {
                        tracing::error!(shard, "a revoked shard's task did not stop in time");
                    }
                }
            }
        }
    }

    /// Stops every task (process shutdown); does not wait.
    pub fn stop_all(&self) {
        for (_, (tx, _)) in self.lock().drain() {
            tx.send_replace(true);
        }
    }
}
