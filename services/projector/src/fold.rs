//! Folding a batch of log records into read-model writes, in three steps: what the batch
//! [`needs`] from the read model (executions whose start is not in the batch nor in the
//! live cache, and the commands it touches), [`load`] them in batch reads, then [`fold`]
//! purely with the domain's one fold.

use std::collections::{HashMap, HashSet};

use fleetcmd_domain::ca::{self, CaCertificate};
use fleetcmd_domain::command;
use fleetcmd_domain::credential::{self, Credentials};
use fleetcmd_domain::event::{Aggregate, Event, EventEnvelope};
use fleetcmd_domain::execution::{self, Folded as Step};
use fleetcmd_domain::group::{self, ThingGroup};
use fleetcmd_domain::ids::{CommandId, ExecutionId, Target};
use fleetcmd_domain::model::{Command, Execution};
use fleetcmd_domain::ports::{
    CommandWrite, CredentialWrite, ExecutionWrite, GroupWrite, PortError, ProjectionBatch,
    ReadModel, ThingWrite,
};
use fleetcmd_domain::protocol::ExecutionChanged;
use fleetcmd_domain::thing::{self, Thing, ThingEvent};

use crate::live::LiveCache;

/// What a batch must read before it can be folded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Needs {
    pub executions: Vec<ExecutionId>,
    pub commands: Vec<CommandId>,
    /// Things whose first event in the batch is not their creation.
    pub things: Vec<String>,
    /// Credential owners the batch touches.
    pub credentials: Vec<Target>,
}

/// The stored states a batch folds onto (missing ones are absent).
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub executions: HashMap<ExecutionId, Execution>,
    pub commands: HashMap<CommandId, Command>,
    pub things: HashMap<String, Thing>,
    pub credentials: HashMap<Target, Credentials>,
}

/// What one batch writes, and the status changes to announce after the commit.
#[derive(Debug, Clone)]
pub struct Folded {
    pub batch: ProjectionBatch,
    pub changed: Vec<ExecutionChanged>,
    /// For each change, the index of the envelope that caused it (to parent its
    /// announcement on that event's trace).
    pub causes: Vec<usize>,
}

/// The stored states `envelopes` fold onto: executions whose first event in the batch is not
/// their start (unless `live` holds them), and every command the batch touches.
pub fn needs(envelopes: &[EventEnvelope], live: &LiveCache) -> Needs {
    let mut needs = Needs::default();
    let mut seen_e: HashSet<&ExecutionId> = HashSet::new();
    let mut seen_c: HashSet<&CommandId> = HashSet::new();
    let mut seen_t: HashSet<&str> = HashSet::new();
    let mut seen_o: HashSet<&Target> = HashSet::new();
    for env in envelopes {
        match &env.aggregate {
            Aggregate::Execution { execution_id, .. } => {
                if seen_e.insert(execution_id)
                    && !matches!(env.event, Event::ExecutionStarted { .. })
                    && live.get(execution_id).is_none()
                {
                    needs.executions.push(execution_id.clone());
                }
            }
            Aggregate::Command(id) => {
                if seen_c.insert(id) {
                    needs.commands.push(id.clone());
                }
            }
            Aggregate::Thing(name) => {
                let created = matches!(
                    env.event,
                    Event::Thing {
                        event: ThingEvent::Created(_)
                    }
                );
                if seen_t.insert(name) && !created {
                    needs.things.push(name.clone());
                }
            }
            Aggregate::Credential(owner) => {
                if seen_o.insert(owner) {
                    needs.credentials.push(owner.clone());
                }
            }
            // A CA's and a group's events carry them whole (or delete them): there is
            // nothing to fold onto. Rollouts have no read-model records yet.
            Aggregate::Ca(_) | Aggregate::Group(_) | Aggregate::Rollout(_) => {}
        }
    }
    needs
}

/// Reads what [`needs`] named, and takes the rest from `live`.
pub async fn load(
    read_model: &dyn ReadModel,
    live: &LiveCache,
    envelopes: &[EventEnvelope],
    needs: &Needs,
) -> Result<Loaded, PortError> {
    let mut loaded = Loaded::default();
    for env in envelopes {
        if let Aggregate::Execution { execution_id, .. } = &env.aggregate
            && let Some(e) = live.get(execution_id)
        {
            loaded
                .executions
                .entry(execution_id.clone())
                .or_insert_with(|| e.clone());
        }
    }
    if !needs.executions.is_empty() {
        for e in read_model.get_executions(&needs.executions).await? {
            loaded.executions.insert(e.execution_id.clone(), e);
        }
    }
    for id in &needs.commands {
        if let Some(c) = read_model.get_command(id).await? {
            loaded.commands.insert(id.clone(), c);
        }
    }
    for name in &needs.things {
        if let Some(t) = read_model.get_thing(name).await? {
            loaded.things.insert(name.clone(), t);
        }
    }
    for owner in &needs.credentials {
        if let Some(c) = read_model.get_credentials(owner).await? {
            loaded.credentials.insert(owner.clone(), c);
        }
    }
    Ok(loaded)
}

/// Folds `envelopes` onto `loaded` (pure). Replayed events (seq not above the stored one)
/// change nothing, so a batch folded twice writes the same.
pub fn fold(
    envelopes: &[EventEnvelope],
    loaded: Loaded,
    partition: u32,
    next_offset: u64,
) -> Folded {
    let mut executions: HashMap<ExecutionId, Option<Execution>> = loaded
        .executions
        .into_iter()
        .map(|(id, e)| (id, Some(e)))
        .collect();
    let mut commands: HashMap<CommandId, Option<Command>> = loaded
        .commands
        .into_iter()
        .map(|(id, c)| (id, Some(c)))
        .collect();
    let mut order_e: Vec<ExecutionId> = Vec::new();
    let mut things: HashMap<String, Option<Thing>> = loaded
        .things
        .into_iter()
        .map(|(name, t)| (name, Some(t)))
        .collect();
    let mut order_c: Vec<CommandId> = Vec::new();
    let mut order_t: Vec<String> = Vec::new();
    let mut credentials: HashMap<Target, Option<Credentials>> = loaded
        .credentials
        .into_iter()
        .map(|(owner, c)| (owner, Some(c)))
        .collect();
    let mut order_o: Vec<Target> = Vec::new();
    let mut cas: Vec<CaCertificate> = Vec::new();
    // Few groups per batch, in first-seen order: a scan is cheaper than a map.
    let mut groups: Vec<(String, Option<ThingGroup>)> = Vec::new();
    let mut seen_t: HashSet<String> = HashSet::new();
    let mut seen_e: HashSet<ExecutionId> = HashSet::new();
    let mut seen_c: HashSet<CommandId> = HashSet::new();
    let mut changed = Vec::new();
    let mut causes = Vec::new();
    let mut last_before_delete: HashMap<ExecutionId, Execution> = HashMap::new();
    for (i, env) in envelopes.iter().enumerate() {
        match &env.aggregate {
            Aggregate::Execution { execution_id, .. } => {
                if seen_e.insert(execution_id.clone()) {
                    order_e.push(execution_id.clone());
                }
                let slot = executions.entry(execution_id.clone()).or_insert(None);
                if matches!(env.event, Event::ExecutionDeleted)
                    && let Some(e) = slot.as_ref()
                {
                    // Its listing rows are keyed by its fields: the delete names them all.
                    last_before_delete.insert(execution_id.clone(), e.clone());
                }
                let step = execution::fold(slot, &env.event, env.at, env.seq);
                if step == Step::Applied
                    && env.event.new_status().is_some()
                    && let Some(e) = slot.as_ref()
                {
                    changed.push(ExecutionChanged::from_execution(e, env.at));
                    causes.push(i);
                }
                if step == Step::Unchanged && slot.is_none() {
                    tracing::debug!(%execution_id, seq = env.seq, "event for an unknown or deleted execution skipped");
                }
            }
            Aggregate::Command(id) => {
                if seen_c.insert(id.clone()) {
                    order_c.push(id.clone());
                }
                let slot = commands.entry(id.clone()).or_insert(None);
                command::apply(slot, &env.event, env.at);
            }
            Aggregate::Thing(name) => {
                if let Event::Thing { event } = &env.event {
                    if seen_t.insert(name.clone()) {
                        order_t.push(name.clone());
                    }
                    let slot = things.entry(name.clone()).or_insert(None);
                    thing::fold(slot, event, env.at, env.seq);
                }
            }
            Aggregate::Credential(owner) => {
                if let Event::Credential { event } = &env.event {
                    if !order_o.contains(owner) {
                        // Few owners per batch: a scan is cheaper than a set.
                        order_o.push(owner.clone());
                    }
                    let slot = credentials.entry(owner.clone()).or_insert(None);
                    credential::fold(owner, slot, event, env.at, env.seq);
                }
            }
            Aggregate::Ca(id) => {
                if let Event::Ca { event } = &env.event {
                    let at = cas.iter().position(|c| c.ca_certificate_id == *id);
                    let mut slot = at.map(|i| cas.swap_remove(i));
                    ca::fold(&mut slot, event, env.seq);
                    cas.extend(slot);
                }
            }
            Aggregate::Group(name) => {
                if let Event::Group { event } = &env.event {
                    let at = match groups.iter().position(|(n, _)| n == name) {
                        Some(i) => i,
                        None => {
                            groups.push((name.clone(), None));
                            groups.len() - 1
                        }
                    };
                    group::fold(&mut groups[at].1, event, env.seq);
                }
            }
            // Folded by their owner only (docs/design.md, "Not implemented yet").
            Aggregate::Rollout(_) => {}
        }
    }
    let mut batch = ProjectionBatch {
        partition,
        next_offset,
        commands: Vec::with_capacity(order_c.len()),
        executions: Vec::with_capacity(order_e.len()),
        things: Vec::with_capacity(order_t.len()),
        credentials: Vec::with_capacity(order_o.len()),
        cas,
        groups: groups
            .into_iter()
            .map(|(name, g)| match g {
                Some(g) => GroupWrite::Upsert(g),
                None => GroupWrite::Delete(name),
            })
            .collect(),
    };
    for id in order_e {
        match executions.remove(&id) {
            Some(Some(e)) => batch.executions.push(ExecutionWrite::Upsert(e)),
            _ => {
                let last = last_before_delete.remove(&id);
                batch.executions.push(ExecutionWrite::Delete { id, last })
            }
        }
    }
    for id in order_c {
        match commands.remove(&id) {
            Some(Some(c)) => batch.commands.push(CommandWrite::Upsert(c)),
            _ => batch.commands.push(CommandWrite::Delete(id)),
        }
    }
    for name in order_t {
        match things.remove(&name) {
            Some(Some(t)) => batch.things.push(ThingWrite::Upsert(t)),
            _ => batch.things.push(ThingWrite::Delete(name)),
        }
    }
    for owner in order_o {
        if let Some(Some(c)) = credentials.remove(&owner) {
            batch.credentials.push(CredentialWrite { credentials: c });
        }
    }
    Folded {
        batch,
        changed,
        causes,
    }
}

#[cfg(test)]
mod tests {
    use fleetcmd_domain::model::ExecutionStatus;
    use fleetcmd_domain::testing;

    use super::*;

    /// `event` of the fixture execution `id` (command `c` on the thing `t`).
    fn env(id: &str, seq: u64, event: Event) -> EventEnvelope {
        let e = testing::execution(id, "c", None);
        testing::execution_envelope(&e, seq, 1_000 + seq as i64, event)
    }

    fn started(id: &str) -> EventEnvelope {
        env(
            id,
            1,
            testing::started_event(&testing::execution(id, "c", None)),
        )
    }

    fn succeeded(id: &str, seq: u64) -> EventEnvelope {
        env(
            id,
            seq,
            Event::StatusReported {
                status: ExecutionStatus::Succeeded,
                status_reason: None,
                result: None,
            },
        )
    }

    #[test]
    fn given_a_start_in_the_batch_nothing_is_read_back() {
        let batch = [started("a"), succeeded("a", 2)];
        let live = LiveCache::new(8);
        assert_eq!(needs(&batch, &live), Needs::default());
        let folded = fold(&batch, Loaded::default(), 3, 17);
        assert_eq!((folded.batch.partition, folded.batch.next_offset), (3, 17));
        let [ExecutionWrite::Upsert(e)] = folded.batch.executions.as_slice() else {
            panic!("one upsert: {:?}", folded.batch.executions)
        };
        assert_eq!(
            (e.status, e.seq, e.terminal),
            (ExecutionStatus::Succeeded, 2, true)
        );
        let statuses: Vec<_> = folded.changed.iter().map(|c| c.status).collect();
        assert_eq!(
            statuses,
            [ExecutionStatus::Created, ExecutionStatus::Succeeded]
        );
        assert_eq!(folded.causes, [0, 1]);
    }

    #[test]
    fn given_a_stored_execution_its_update_folds_onto_it_and_replays_change_nothing() {
        let batch = [succeeded("b", 2)];
        let live = LiveCache::new(8);
        assert_eq!(
            needs(&batch, &live).executions,
            [ExecutionId::parse("b").unwrap()]
        );
        let stored = testing::execution("b", "c", None);
        let loaded = Loaded {
            executions: HashMap::from([(stored.execution_id.clone(), stored.clone())]),
            ..Loaded::default()
        };
        let folded = fold(&batch, loaded, 0, 1);
        assert_eq!(folded.changed.len(), 1);
        // Folding the same events onto the already updated state writes the same and
        // announces nothing.
        let ExecutionWrite::Upsert(after) = &folded.batch.executions[0] else {
            panic!("an upsert")
        };
        let again = fold(
            &batch,
            Loaded {
                executions: HashMap::from([(after.execution_id.clone(), after.clone())]),
                ..Loaded::default()
            },
            0,
            1,
        );
        assert_eq!(again.batch.executions, folded.batch.executions);
        assert!(again.changed.is_empty());
    }

    #[test]
    fn given_no_stored_state_an_update_writes_a_delete_and_announces_nothing() {
        let folded = fold(&[succeeded("gone", 5)], Loaded::default(), 0, 1);
        assert_eq!(
            folded.batch.executions,
            [ExecutionWrite::delete(ExecutionId::parse("gone").unwrap())]
        );
        assert!(folded.changed.is_empty());
    }

    #[test]
    fn live_executions_are_not_read_back() {
        let mut live = LiveCache::new(8);
        let mut open = testing::execution("c", "c", None);
        open.status = ExecutionStatus::InProgress;
        open.seq = 2;
        live.remember(&[ExecutionWrite::Upsert(open)]);
        let batch = [succeeded("c", 3)];
        assert_eq!(needs(&batch, &live), Needs::default());
    }

    fn credential_env(
        owner: &Target,
        seq: u64,
        event: credential::CredentialEvent,
    ) -> EventEnvelope {
        EventEnvelope {
            event_id: format!("c-{seq}"),
            schema: fleetcmd_domain::event::SCHEMA_VERSION,
            aggregate: Aggregate::Credential(owner.clone()),
            seq,
            at: 100 * seq as i64,
            trace: None,
            event: Event::Credential { event },
        }
    }

    #[test]
    fn credentials_fold_onto_the_stored_owner_and_replays_change_nothing() {
        use fleetcmd_domain::credential::{CertificateRecord, CertificateStatus, CredentialEvent};
        let owner = Target::thing("lamp-1").unwrap();
        let record = CertificateRecord {
            certificate_id: "ab".repeat(32),
            owner: owner.clone(),
            status: CertificateStatus::Active,
            certificate_pem: "pem".into(),
            ca_certificate_id: "cd".repeat(32),
            not_before: 1,
            not_after: 2,
            created_at: 100,
            revoked_at: None,
        };
        let batch = [
            credential_env(
                &owner,
                1,
                CredentialEvent::CertificateAttached(record.clone()),
            ),
            credential_env(
                &owner,
                2,
                CredentialEvent::CertificateRevoked {
                    certificate_id: record.certificate_id.clone(),
                },
            ),
            credential_env(
                &owner,
                3,
                CredentialEvent::PasswordSet {
                    hash: "$argon2id$h".into(),
                },
            ),
        ];
        let live = LiveCache::new(8);
        assert_eq!(
            needs(&batch, &live).credentials,
            std::slice::from_ref(&owner)
        );
        let folded = fold(&batch, Loaded::default(), 0, 3);
        let [CredentialWrite { credentials: c }] = folded.batch.credentials.as_slice() else {
            panic!("one write per owner: {:?}", folded.batch.credentials)
        };
        assert_eq!(c.version, 3);
        assert_eq!(c.password_hash.as_deref(), Some("$argon2id$h"));
        let stored = &c.certificates[&record.certificate_id];
        assert_eq!(
            (stored.status, stored.revoked_at),
            (CertificateStatus::Revoked, Some(200))
        );
        // The same batch again, onto what it wrote, writes the same.
        let loaded = Loaded {
            credentials: HashMap::from([(owner.clone(), c.clone())]),
            ..Loaded::default()
        };
        let again = fold(&batch, loaded, 0, 3);
        assert_eq!(again.batch.credentials, folded.batch.credentials);
    }
}
