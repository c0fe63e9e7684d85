//! The executions a projector worker projected last and that are still open, so that their
//! next event folds without reading the read model back.

use std::collections::{HashMap, VecDeque};

use fleetcmd_domain::ids::ExecutionId;
use fleetcmd_domain::model::Execution;
use fleetcmd_domain::ports::ExecutionWrite;

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

    pub(crate) fn get(&self, id: &ExecutionId) -> Option<&Execution> {
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
                ExecutionWrite::Delete { id, .. } => {
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

#[cfg(test)]
mod tests {
    use fleetcmd_domain::ids::Target;
    use fleetcmd_domain::model::ExecutionStatus;

    use super::*;
    use fleetcmd_domain::ids::CommandId;

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
            ExecutionWrite::delete(id("b")),
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
