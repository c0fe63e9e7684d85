//! Rollouts over gRPC (`fleetcmd.v1.Rollouts`). A rollout lives with the owner of the shard
//! of `rollout/<id>`, which decides its inputs and launches its attempts; these calls send
//! it inputs and read it back from it. The read model holds no rollouts: ListRollouts asks
//! every shard's owner.
//!
//! Authorization: StartRollout needs a grant of StartRollout on the command. A list's
//! targets must each be granted (the start is refused otherwise, naming the first that is
//! not); a group or a query is narrowed to the granted target patterns, so a caller allowed
//! `reboot` on `thing/lab-*` never reaches other things through a group (the others are
//! counted as `skipped_unauthorized`). Get, Watch and Cancel need a grant of their action on
//! the rollout's command, for any target; List shows the rollouts of the commands the caller
//! holds ListRollouts on.

use std::sync::Arc;
use std::time::Duration;

use fleetcmd_contracts::convert::{
    page_size_from_pb, rejection_status, rollout_status_from_pb, rollout_to_pb,
    start_rollout_from_pb, validation_status,
};
use fleetcmd_contracts::pb;
use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::ids::{CommandId, Target};
use fleetcmd_domain::policy::Action;
use fleetcmd_domain::ports::ThingQuery;
use fleetcmd_domain::protocol::{ShardReply, ShardRequest};
use fleetcmd_domain::rollout::{
    RolloutId, RolloutInput, RolloutSummary, TargetSelection, TargetSelector,
};
use fleetcmd_service_kit::{call_status, unexpected};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::RegistryDeps;

/// How often WatchRollout reads the rollout from its owner.
const WATCH_EVERY: Duration = Duration::from_millis(250);

pub(crate) type RolloutStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Rollout, Status>> + Send>>;

fn not_found(id: &RolloutId) -> Status {
    Status::not_found(format!("rollout {id} not found"))
}

fn parse_id(id: String) -> Result<RolloutId, Status> {
    RolloutId::parse(id).map_err(validation_status)
}

/// Sends `request` to the rollout's owner; the rollout after it (`None`: never started).
async fn ask(deps: &RegistryDeps, request: ShardRequest) -> Result<Option<RolloutSummary>, Status> {
    match deps.shards.call(&request).await.map_err(call_status)? {
        // The owner answers from its state: nothing to wait for.
        ShardReply::Rollout { rollout, .. } => Ok(rollout.map(|r| *r)),
        ShardReply::Rejected(r) => Err(rejection_status(r)),
        other => Err(unexpected(&other)),
    }
}

async fn read(deps: &RegistryDeps, id: &RolloutId) -> Result<Option<RolloutSummary>, Status> {
    ask(
        deps,
        ShardRequest::ReadRollout {
            rollout_id: id.clone(),
        },
    )
    .await
}

/// The rollout, once the caller may `action` on its command.
async fn authorized(
    deps: &RegistryDeps,
    metadata: &MetadataMap,
    action: Action,
    id: &RolloutId,
) -> Result<RolloutSummary, Status> {
    let caller = deps.auth.authenticate(metadata)?;
    let rollout = read(deps, id).await?.ok_or_else(|| not_found(id))?;
    caller.target_grant(action, rollout.spec.command_id.as_str())?;
    Ok(rollout)
}

pub(crate) async fn start(
    deps: &RegistryDeps,
    request: Request<pb::StartRolloutRequest>,
) -> Result<Response<pb::StartRolloutResponse>, Status> {
    let (audit, caller) = deps.auth.audit_caller(
        request.metadata(),
        Action::StartRollout,
        format!("rollout/{}", request.get_ref().rollout_id),
    );
    let result = async {
        let caller = caller?;
        let (id, mut spec) =
            start_rollout_from_pb(request.into_inner()).map_err(validation_status)?;
        let command = spec.command_id.as_str().to_owned();
        let allowed = caller.target_grant(Action::StartRollout, &command)?;
        if let TargetSelector::List(list) = &spec.targets {
            for t in list {
                caller.authorize(Action::StartRollout, Some(&command), Some(t))?;
            }
        }
        if spec.target_selection == TargetSelection::Continuous
            && let TargetSelector::Query(q) = &spec.targets
            && fleetcmd_domain::query::parse(q).is_ok_and(|q| q.uses_connectivity())
        {
            return Err(validation_status(ValidationError::new(
                "spec.targets.query",
                "a CONTINUOUS rollout cannot select by connectivity: its owner looks for new things in the registry, which does not know who is connected",
            )));
        }
        spec.allowed_targets = allowed;
        let known = deps
            .read_model
            .get_command(&spec.command_id)
            .await
            .map_err(fleetcmd_contracts::convert::port_status)?;
        if known.is_none() {
            return Err(Status::not_found(format!("command {command} not found")));
        }
        let selector = spec.targets.clone();
        let input = RolloutInput::Start {
            rollout_id: id.clone(),
            spec: Box::new(spec),
        };
        let mut started = ask(
            deps,
            ShardRequest::Rollout {
                rollout_id: id.clone(),
                input,
            },
        )
        .await?
        .ok_or_else(|| Status::internal(format!("rollout {id} was not kept by its owner")))?;
        if !started.targets_resolved {
            started = resolve(deps, &id, &selector).await?;
        }
        Ok(Response::new(pb::StartRolloutResponse {
            rollout_id: id.to_string(),
            status: pb::RolloutStatus::from(started.status) as i32,
        }))
    }
    .await;
    audit.finish(result)
}

/// Most targets sent to the owner in one input.
const RESOLVE_CHUNK: usize = 1_000;

/// Hands the owner the things a group or a query selects now, page by page, then says the
/// list is complete. Safe to repeat (the owner ignores targets it has): a start retried
/// with its client token resumes a resolution that was cut short.
async fn resolve(
    deps: &RegistryDeps,
    id: &RolloutId,
    selector: &TargetSelector,
) -> Result<RolloutSummary, Status> {
    let query = selector.query().transpose().map_err(|e| {
        validation_status(ValidationError::new(format!("spec.{}", e.field), e.message))
    })?;
    let send = |input| {
        ask(
            deps,
            ShardRequest::Rollout {
                rollout_id: id.clone(),
                input,
            },
        )
    };
    if let Some(query) = query {
        let mut token = None;
        loop {
            let listing = ThingQuery {
                page_size: RESOLVE_CHUNK as u32,
                page_token: token,
                ..ThingQuery::default()
            };
            let page = crate::groups::matching(deps, &query, listing).await?;
            let targets = page
                .items
                .into_iter()
                .filter_map(|(t, _)| Target::thing(t.thing_name).ok())
                .collect::<Vec<_>>();
            if !targets.is_empty() {
                send(RolloutInput::AddTargets { targets }).await?;
            }
            token = page.next_token;
            if token.is_none() {
                break;
            }
        }
    }
    send(RolloutInput::TargetsResolved)
        .await?
        .ok_or_else(|| not_found(id))
}

pub(crate) async fn get(
    deps: &RegistryDeps,
    request: Request<pb::GetRolloutRequest>,
) -> Result<Response<pb::Rollout>, Status> {
    let id = parse_id(request.get_ref().rollout_id.clone())?;
    let rollout = authorized(deps, request.metadata(), Action::GetRollout, &id).await?;
    Ok(Response::new(rollout_to_pb(&rollout)))
}

pub(crate) async fn cancel(
    deps: &RegistryDeps,
    request: Request<pb::CancelRolloutRequest>,
) -> Result<Response<pb::CancelRolloutResponse>, Status> {
    let audit = deps.auth.audit(
        request.metadata(),
        Action::CancelRollout,
        format!("rollout/{}", request.get_ref().rollout_id),
    );
    let result = async {
        let id = parse_id(request.get_ref().rollout_id.clone())?;
        authorized(deps, request.metadata(), Action::CancelRollout, &id).await?;
        let input = RolloutInput::Cancel {
            force: request.get_ref().force,
        };
        let after = ask(
            deps,
            ShardRequest::Rollout {
                rollout_id: id.clone(),
                input,
            },
        )
        .await?
        .ok_or_else(|| not_found(&id))?;
        Ok(Response::new(pb::CancelRolloutResponse {
            rollout_id: id.to_string(),
            status: pb::RolloutStatus::from(after.status) as i32,
        }))
    }
    .await;
    audit.finish(result)
}

/// Lists the rollouts of every shard (each owner answers from its state), newest first,
/// filtered by command and status, a page at a time. A caller sees the rollouts of the
/// commands it holds a ListRollouts grant on.
pub(crate) async fn list(
    deps: &RegistryDeps,
    request: Request<pb::ListRolloutsRequest>,
) -> Result<Response<pb::ListRolloutsResponse>, Status> {
    let caller = deps.auth.authenticate(request.metadata())?;
    let r = request.into_inner();
    let page_size = page_size_from_pb(r.max_results).map_err(validation_status)? as usize;
    let command = match r.command_id.as_str() {
        "" => None,
        c => Some(CommandId::parse(c).map_err(validation_status)?),
    };
    let status = match r.status {
        0 => None,
        s => Some(rollout_status_from_pb("status", s).map_err(validation_status)?),
    };
    let after = match r.next_token.as_str() {
        "" => None,
        t => Some(parse_token(t)?),
    };
    let shards = deps.shards.shards();
    let answers: Vec<_> = futures::stream::iter(0..shards)
        .map(|shard| async move {
            deps.shards
                .call_on(shard, &ShardRequest::ListRollouts { shard })
                .await
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut all: Vec<RolloutSummary> = Vec::new();
    for answer in answers {
        match answer.map_err(call_status)? {
            ShardReply::Rollouts { rollouts } => all.extend(rollouts),
            ShardReply::Rejected(r) => return Err(rejection_status(r)),
            other => return Err(unexpected(&other)),
        }
    }
    all.retain(|x| {
        command.as_ref().is_none_or(|c| x.spec.command_id == *c)
            && status.is_none_or(|s| x.status == s)
            && caller
                .target_grant(Action::ListRollouts, x.spec.command_id.as_str())
                .is_ok()
    });
    // Newest first; the id breaks ties, so the order is total and a token resumes it.
    let key = |x: &RolloutSummary| (std::cmp::Reverse(x.created_at), x.rollout_id.to_string());
    all.sort_by_key(key);
    if let Some((created_at, id)) = after {
        let from = (std::cmp::Reverse(created_at), id);
        all.retain(|x| key(x) > from);
    }
    let more = all.len() > page_size;
    all.truncate(page_size);
    let next_token = match (more, all.last()) {
        (true, Some(last)) => format!("{}:{}", last.created_at, last.rollout_id),
        _ => String::new(),
    };
    Ok(Response::new(pb::ListRolloutsResponse {
        rollouts: all.iter().map(rollout_to_pb).collect(),
        next_token,
    }))
}

/// A ListRollouts page token: `<created_at_ms>:<rollout_id>` of the last rollout listed.
fn parse_token(token: &str) -> Result<(i64, String), Status> {
    let bad = || {
        validation_status(ValidationError::new(
            "next_token",
            "is not a token this call returned",
        ))
    };
    let (at, id) = token.split_once(':').ok_or_else(bad)?;
    let at: i64 = at.parse().map_err(|_| bad())?;
    RolloutId::parse(id).map_err(|_| bad())?;
    Ok((at, id.to_owned()))
}

/// The rollout now, then each time it changes, until it has ended and nothing of it is in
/// flight (the stream then ends), or the server shuts down (UNAVAILABLE).
pub(crate) async fn watch(
    deps: Arc<RegistryDeps>,
    request: Request<pb::WatchRolloutRequest>,
) -> Result<Response<RolloutStream>, Status> {
    let id = parse_id(request.get_ref().rollout_id.clone())?;
    let first = authorized(&deps, request.metadata(), Action::WatchRollout, &id).await?;
    let (tx, rx) = mpsc::channel::<Result<pb::Rollout, Status>>(4);
    tokio::spawn(async move {
        let mut shutdown = deps.shutdown.clone();
        let mut last = first;
        if tx.send(Ok(rollout_to_pb(&last))).await.is_err() {
            return;
        }
        while !(last.status.is_terminal() && last.counts.in_flight == 0) {
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = tx.closed() => return,
                _ = shutdown.wait_for(|s| *s) => {
                    let _ = tx.try_send(Err(Status::unavailable("the server is shutting down; reconnect")));
                    return;
                }
            }
            let now = match read(&deps, &id).await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                // The owner may be moving: try again at the next tick.
                Err(_) => continue,
            };
            if now != last {
                if tx.send(Ok(rollout_to_pb(&now))).await.is_err() {
                    return;
                }
                last = now;
            }
        }
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

pub struct RolloutService {
    deps: Arc<RegistryDeps>,
}

pub(crate) fn server(
    deps: Arc<RegistryDeps>,
) -> pb::rollouts_server::RolloutsServer<RolloutService> {
    pb::rollouts_server::RolloutsServer::new(RolloutService { deps })
}

#[tonic::async_trait]
impl pb::rollouts_server::Rollouts for RolloutService {
    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::StartRolloutResponse>, Status> {
        start(&self.deps, request).await
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        get(&self.deps, request).await
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        list(&self.deps, request).await
    }

    async fn cancel_rollout(
        &self,
        request: Request<pb::CancelRolloutRequest>,
    ) -> Result<Response<pb::CancelRolloutResponse>, Status> {
        cancel(&self.deps, request).await
    }

    type WatchRolloutStream = RolloutStream;

    async fn watch_rollout(
        &self,
        request: Request<pb::WatchRolloutRequest>,
    ) -> Result<Response<RolloutStream>, Status> {
        watch(self.deps.clone(), request).await
    }
}
