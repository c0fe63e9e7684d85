//! The owner of `rollout/<id>` acts on its rollouts' plans: it appends what a plan decides
//! (the intent to launch an attempt is logged before its start request goes out), sends the
//! start requests to the targets' shards and the cancels a plan lists, and plans again at
//! the plan's `wake_at`. The answers come back as ordinary rollout inputs over the bus
//! (`Launched`, `LaunchRefused`, `Settled`), so they are decided and logged like any other.
//!
//! Settles are learnt two ways: a watcher per rollout follows its command's status changes
//! (`fleetcmd.events.<commandId>`, at most once), and every [`SWEEP_MS`] while attempts are
//! live the owner reads them back from the read model, so a missed notification (or a
//! settle that overtook its `Launched`) only delays a settle, never loses it. After a
//! rebuild the owner re-sends the intents logged but not launched, with the same client
//! tokens, so no target is started twice. A CONTINUOUS rollout reads its group or query
//! again every [`RESOLVE_MS`] and hands the rollout what it finds (the rollout keeps only
//! the things it does not hold yet).

use std::time::Duration;

use fleetcmd_contracts::codec;
use fleetcmd_domain::error::RejectionCode;
use fleetcmd_domain::event::{Aggregate, Event, EventEnvelope};
use fleetcmd_domain::execution::ExecutionInput;
use fleetcmd_domain::ids::{ExecutionId, Target};
use fleetcmd_domain::model::{ExecutionStatus, StatusReason};
use fleetcmd_domain::protocol::{ShardReply, ShardRequest, events_subject};
use fleetcmd_domain::rollout::{self, RolloutId, RolloutInput, TargetSelection, TargetSelector};
use fleetcmd_domain::start::StartRequest;
use fleetcmd_domain::thing::Connectivity;
use fleetcmd_service_kit::ShardClient;
use futures::StreamExt as _;

use super::decide::{Decision, Outcome};
use super::serve::{Changes, Owner};
use fleetcmd_domain::ports::PortError;

/// How often live attempts are read back from the read model.
pub(super) const SWEEP_MS: i64 = 2_000;
/// How often a CONTINUOUS rollout looks for things that joined its group or came to match
/// its query.
pub(super) const RESOLVE_MS: i64 = 5_000;
/// Things read per page when a CONTINUOUS rollout looks again.
const RESOLVE_PAGE: u32 = 500;
/// The longest wait between two tries of a start or a cancel that found no owner.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a plan asks of the owner once its events are durable.
struct Acting {
    id: RolloutId,
    /// (target index, attempt) of each intent the plan logged.
    launches: Vec<(u32, u32)>,
    cancels: Vec<ExecutionId>,
    /// A CONTINUOUS rollout due to look for new targets: its selector.
    resolve: Option<TargetSelector>,
}

/// Whether a status ends an attempt of a rollout (a cloud TIMED_OUT does: the rollout
/// counts it as timed out, as AWS Jobs does).
fn settles(status: ExecutionStatus) -> bool {
    !matches!(
        status,
        ExecutionStatus::Created | ExecutionStatus::InProgress
    )
}

impl Owner {
    fn shard_client(&self) -> ShardClient {
        ShardClient::new(self.deps.bus.clone(), self.config.shards)
    }

    /// Plans each of `ids` now, appends what the plans decide (one record per rollout),
    /// then sends their launches and cancels and arms their next plan.
    pub(super) async fn drive_rollouts(&mut self, ids: Vec<RolloutId>) -> Result<(), PortError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = self.deps.clock.now_ms();
        let mut records: Vec<Vec<EventEnvelope>> = Vec::new();
        let mut work: Vec<Acting> = Vec::new();
        let mut changes = Changes::default();
        for id in ids {
            let Some(r) = self.state.rollout(&id) else {
                continue;
            };
            let plan = rollout::plan(r, now);
            let live = r.counts().in_flight > 0;
            let continuous = r.spec().target_selection == TargetSelection::Continuous
                && !r.status().is_terminal()
                && !r.is_stopping();
            let mut next = match (plan.wake_at, live) {
                (Some(w), true) => Some(w.min(now + SWEEP_MS)),
                (Some(w), false) => Some(w),
                (None, true) => Some(now + SWEEP_MS),
                (None, false) => None,
            };
            let resolve =
                (continuous && now >= self.resolve_due(&id)).then(|| r.spec().targets.clone());
            if continuous {
                next = Some(next.map_or(now + RESOLVE_MS, |w| w.min(now + RESOLVE_MS)));
            }
            if let Some(at) = next {
                self.state.arm_rollout(&id, at);
            }
            let launches = plan.launches();
            if !plan.events.is_empty() {
                let decision = Decision {
                    hydrate: None,
                    events: plan
                        .events
                        .into_iter()
                        .map(|event| (Aggregate::Rollout(id.clone()), Event::Rollout { event }))
                        .collect(),
                    outcome: Outcome::Reply(ShardReply::Unavailable(String::new())),
                };
                let (_, envelopes) =
                    self.stage(decision, records.len() as u64, now, None, &mut changes);
                records.push(envelopes);
            }
            work.push(Acting {
                id,
                launches,
                cancels: plan.cancel,
                resolve,
            });
        }
        let slices: Vec<&[EventEnvelope]> = records.iter().map(Vec::as_slice).collect();
        self.append(&slices).await?;
        for Acting {
            id,
            launches,
            cancels,
            resolve,
        } in work
        {
            if let Some(selector) = resolve {
                self.look_again(&id, selector);
            }
            let Some(r) = self.state.rollout(&id) else {
                continue;
            };
            for (index, attempt) in launches {
                if let Some(start) = r.start_request(index, attempt) {
                    self.launch(&id, attempt, start);
                }
            }
            for execution_id in cancels {
                if let Some(target) = r.execution_target(&execution_id) {
                    self.cancel(execution_id, target.clone());
                }
            }
            let (watch, live) = (live_or_launching(r), r.live_executions());
            if watch {
                self.watch_settles(&id);
            } else {
                self.unwatch_settles(&id);
            }
            if now >= self.sweep_due(&id) {
                self.sweep(&id, live);
            }
        }
        Ok(())
    }

    /// After a rebuild: re-send every logged intent not yet launched and every logged cancel
    /// (both idempotent), then plan every rollout that still has something to do.
    pub(super) async fn resume_rollouts(&mut self) -> Result<(), PortError> {
        let ids = self.state.live_rollouts();
        for id in &ids {
            let Some(r) = self.state.rollout(id) else {
                continue;
            };
            for p in r.pending_launches() {
                if let Some(start) = r.start_request(p.target_index, p.attempt) {
                    self.launch(id, p.attempt, start);
                }
            }
            for execution_id in r.pending_cancels() {
                if let Some(target) = r.execution_target(&execution_id) {
                    self.cancel(execution_id, target.clone());
                }
            }
        }
        self.drive_rollouts(ids).await
    }

    /// Sends one attempt's start to its target's shard (retried while no owner answers;
    /// the client token makes a retry the same start) and its outcome back to the rollout.
    fn launch(&self, id: &RolloutId, attempt: u32, start: StartRequest) {
        let client = self.shard_client();
        let id = id.clone();
        tokio::spawn(async move {
            let target = start.target.clone();
            let request = ShardRequest::Start(start);
            let mut wait = Duration::from_millis(100);
            let input = loop {
                match client.call(&request).await {
                    Ok(ShardReply::Started { execution_id, .. }) => {
                        break RolloutInput::Launched {
                            target,
                            attempt,
                            execution_id,
                        };
                    }
                    Ok(ShardReply::Rejected(r)) => {
                        break RolloutInput::LaunchRefused {
                            target,
                            attempt,
                            code: r.code,
                        };
                    }
                    Ok(other) => {
                        tracing::debug!(rollout = %id, ?other, "start not answered; retrying");
                    }
                    Err(e) => tracing::debug!(rollout = %id, error = %e, "start failed; retrying"),
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            };
            tell(&client, &id, input).await;
        });
    }

    /// Cancels one live execution of a rollout (the settle comes back as for any other).
    fn cancel(&self, execution_id: ExecutionId, target: Target) {
        let client = self.shard_client();
        tokio::spawn(async move {
            let request = ShardRequest::Execution {
                execution_id,
                target,
                input: ExecutionInput::Cancel {
                    status_reason: Some(StatusReason {
                        reason_code: "$ROLLOUT_CANCELED".into(),
                        reason_description: "canceled by its rollout".into(),
                    }),
                },
            };
            let mut wait = Duration::from_millis(100);
            for _ in 0..10 {
                match client.call(&request).await {
                    Ok(ShardReply::Execution { .. } | ShardReply::Rejected(_)) => return,
                    _ => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
        });
    }

    /// Follows the status changes of `id`'s command and reports those that settle an
    /// attempt (the rollout ignores executions that are not its own).
    fn watch_settles(&mut self, id: &RolloutId) {
        if self.settle_watchers.contains_key(id) {
            return;
        }
        let Some(r) = self.state.rollout(id) else {
            return;
        };
        let subject = events_subject(&r.spec().command_id);
        let (bus, client, rollout_id) = (self.deps.bus.clone(), self.shard_client(), id.clone());
        let task = tokio::spawn(async move {
            let Ok(mut sub) = bus.subscribe(&subject, None).await else {
                return;
            };
            while let Some(m) = sub.next().await {
                let Ok(change) = codec::decode_changed(&m.payload) else {
                    continue;
                };
                if settles(change.status) {
                    let input = RolloutInput::Settled {
                        execution_id: change.execution_id,
                        status: change.status,
                    };
                    tell(&client, &rollout_id, input).await;
                }
            }
        });
        self.settle_watchers.insert(id.clone(), task);
    }

    fn unwatch_settles(&mut self, id: &RolloutId) {
        if let Some(task) = self.settle_watchers.remove(id) {
            task.abort();
        }
    }

    /// When `id`'s live attempts are next read back.
    fn sweep_due(&self, id: &RolloutId) -> i64 {
        self.last_sweeps.get(id).map_or(0, |at| at + SWEEP_MS)
    }

    /// Reads `live` back from the read model and reports the ones that settled.
    fn sweep(&mut self, id: &RolloutId, live: Vec<(ExecutionId, Target)>) {
        self.last_sweeps
            .insert(id.clone(), self.deps.clock.now_ms());
        if live.is_empty() {
            return;
        }
        let (read_model, client, id) = (
            self.deps.read_model.clone(),
            self.shard_client(),
            id.clone(),
        );
        tokio::spawn(async move {
            let ids: Vec<ExecutionId> = live.into_iter().map(|(e, _)| e).collect();
            let Ok(read) = read_model.get_executions(&ids).await else {
                return;
            };
            for e in read.into_iter().filter(|e| settles(e.status)) {
                let input = RolloutInput::Settled {
                    execution_id: e.execution_id,
                    status: e.status,
                };
                tell(&client, &id, input).await;
            }
        });
    }

    /// When `id`'s selector is next read again (CONTINUOUS).
    fn resolve_due(&self, id: &RolloutId) -> i64 {
        self.last_resolves.get(id).map_or(0, |at| at + RESOLVE_MS)
    }

    /// Reads the things `selector` selects now, page by page, and hands them to the rollout
    /// (which keeps only the new ones). Connectivity is unknown here: a query reading it
    /// is refused for a CONTINUOUS rollout when it starts.
    fn look_again(&mut self, id: &RolloutId, selector: TargetSelector) {
        self.last_resolves
            .insert(id.clone(), self.deps.clock.now_ms());
        // A query that does not parse was refused when the rollout started.
        let Some(Ok(query)) = selector.query() else {
            return;
        };
        let (read_model, client, id) = (
            self.deps.read_model.clone(),
            self.shard_client(),
            id.clone(),
        );
        tokio::spawn(async move {
            let mut token = None;
            loop {
                let Ok(page) = read_model
                    .list_things(&query.scan(RESOLVE_PAGE, token))
                    .await
                else {
                    return;
                };
                let targets: Vec<Target> = page
                    .items
                    .into_iter()
                    .filter(|t| query.matches(t, &Connectivity::default()))
                    .filter_map(|t| Target::thing(t.thing_name).ok())
                    .collect();
                if !targets.is_empty() {
                    tell(&client, &id, RolloutInput::AddTargets { targets }).await;
                }
                token = page.next_token;
                if token.is_none() {
                    return;
                }
            }
        });
    }

    /// Stops the settle watchers (the shard is leaving this owner).
    pub(super) fn stop_rollouts(&mut self) {
        for (_, task) in self.settle_watchers.drain() {
            task.abort();
        }
    }
}

/// Whether a rollout still waits for settles.
fn live_or_launching(r: &rollout::Rollout) -> bool {
    r.counts().in_flight > 0 || !r.status().is_terminal()
}

/// Sends an input to a rollout's owner. A refusal is logged, not retried: the input no
/// longer applies (the attempt was settled or the rollout ended).
async fn tell(client: &ShardClient, id: &RolloutId, input: RolloutInput) {
    let request = ShardRequest::Rollout {
        rollout_id: id.clone(),
        input,
    };
    let mut wait = Duration::from_millis(100);
    for _ in 0..10 {
        match client.call(&request).await {
            Ok(ShardReply::Rejected(r)) if r.code != RejectionCode::InternalError => {
                tracing::debug!(rollout = %id, reason = %r.message, "rollout input refused");
                return;
            }
            Ok(ShardReply::Rollout { .. }) => return,
            _ => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
    tracing::warn!(rollout = %id, "could not reach the rollout's owner; the next sweep retries");
}
