//! The executions still waiting for their device: CREATED, with the payload to deliver, by id
//! and by target in the order they started. A device that subscribes to its requests gets its
//! target's waiting executions in that order; a new owner delivers them all again after a
//! rebuild (the previous one may have died between its append and its delivery).

use std::collections::HashMap;

use fleetcmd_domain::ids::{ExecutionId, Target};
use fleetcmd_domain::model::Payload;

#[derive(Debug, Default, Clone)]
pub struct Pending {
    payloads: HashMap<ExecutionId, (Target, Payload)>,
    /// Each target's waiting executions, in start order.
    by_target: HashMap<Target, Vec<ExecutionId>>,
}

impl Pending {
    /// Adds an execution that just started (after every earlier one of its target).
    pub fn insert(&mut self, target: &Target, id: &ExecutionId, payload: &Payload) {
        let earlier = self
            .payloads
            .insert(id.clone(), (target.clone(), payload.clone()));
        if earlier.is_none() {
            // Looked up first: most starts find their target's list, and need no key copy.
            match self.by_target.get_mut(target) {
                Some(ids) => ids.push(id.clone()),
                None => {
                    self.by_target.insert(target.clone(), vec![id.clone()]);
                }
            }
        }
    }

    /// Removes an execution that no longer waits (its device answered, it ended or it was
    /// deleted); nothing when it was not waiting.
    pub fn remove(&mut self, id: &ExecutionId) {
        let Some((target, _)) = self.payloads.remove(id) else {
            return;
        };
        if let Some(ids) = self.by_target.get_mut(&target) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_target.remove(&target);
            }
        }
    }

    pub fn payload(&self, id: &ExecutionId) -> Option<&Payload> {
        self.payloads.get(id).map(|(_, p)| p)
    }

    /// Every waiting execution, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&ExecutionId, &Payload)> {
        self.payloads.iter().map(|(id, (_, p))| (id, p))
    }

    /// The waiting executions of `target`, in start order.
    pub fn of_target(&self, target: &Target) -> &[ExecutionId] {
        self.by_target.get(target).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ExecutionId {
        ExecutionId::parse(s).unwrap()
    }

    #[test]
    fn a_targets_waiting_executions_keep_their_start_order_as_others_leave() {
        let (lamp, fan) = (
            Target::thing("lamp").unwrap(),
            Target::thing("fan").unwrap(),
        );
        let payload = Payload {
            content: b"{}".to_vec(),
            content_type: "application/json".into(),
        };
        let mut p = Pending::default();
        for (t, e) in [(&lamp, "e1"), (&fan, "e2"), (&lamp, "e3"), (&lamp, "e4")] {
            p.insert(t, &id(e), &payload);
        }
        p.insert(&lamp, &id("e1"), &payload);
        assert_eq!(p.of_target(&lamp), [id("e1"), id("e3"), id("e4")]);
        p.remove(&id("e3"));
        p.remove(&id("e9"));
        assert_eq!(p.of_target(&lamp), [id("e1"), id("e4")]);
        assert_eq!(p.of_target(&fan), [id("e2")]);
        p.remove(&id("e2"));
        assert!(p.of_target(&fan).is_empty());
        assert!(p.payload(&id("e2")).is_none() && p.payload(&id("e4")).is_some());
        assert_eq!(p.iter().count(), 2);
    }
}
