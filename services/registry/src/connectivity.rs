//! Device connectivity over gRPC (GetConnectivity, WatchConnectivity), answered from the
//! process's presence where the devices' broker reports connects and disconnects (the
//! embedded broker of `fleetcmd serve`). A target's connectivity is that of the MQTT client
//! id equal to its id (AWS's convention: a thing connects with its name as client id).

use std::sync::Arc;

use fleetcmd_contracts::convert::{
    connectivity_event_to_pb, connectivity_to_pb, optional_target, require_target,
    validation_status,
};
use fleetcmd_contracts::pb;
use fleetcmd_domain::ids::Target;
use fleetcmd_domain::policy::Action;
use fleetcmd_domain::ports::{Page, ThingQuery};
use fleetcmd_domain::thing::{self, Thing};
use fleetcmd_service_kit::presence::Presence;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use crate::{RegistryDeps, forward, list_status};

/// Connectivity events buffered for one watcher before it is disconnected as too slow.
const WATCH_BUFFER: usize = 1024;
/// Registry pages one filtered ListThings page reads at most.
const FILTER_PAGES: usize = 20;

pub(crate) fn presence(deps: &RegistryDeps) -> Result<&Arc<Presence>, Status> {
    deps.presence.as_ref().ok_or_else(|| {
        Status::failed_precondition(
            "this deployment's device broker reports no connects or disconnects (an external broker): connectivity is not known",
        )
    })
}

/// The target a client id's connectivity is reported as, when a watcher names none: the
/// thing of that name if it can be one, else the bare client.
fn target_of(client_id: &str) -> Option<Target> {
    Target::thing(client_id)
        .or_else(|_| Target::client(client_id))
        .ok()
}

/// The connectivity of the thing `name` (of the client id equal to it), where known.
pub(crate) fn of_thing(deps: &RegistryDeps, name: &str) -> Option<thing::Connectivity> {
    let presence = deps.presence.as_ref()?;
    Some(
        presence
            .connectivity(name)
            .map(|c| c.to_thing())
            .unwrap_or_default(),
    )
}

/// ListThings, with each thing's connectivity where known. A connectivity filter needs
/// presence, and is applied by [`list_filtered`].
pub(crate) async fn list_things(
    deps: &RegistryDeps,
    mut query: ThingQuery,
) -> Result<Page<(Thing, Option<thing::Connectivity>)>, Status> {
    let Some(want) = query.connected.take() else {
        let page = deps
            .read_model
            .list_things(&query)
            .await
            .map_err(list_status)?;
        return Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|t| {
                    let c = of_thing(deps, &t.thing_name);
                    (t, c)
                })
                .collect(),
            next_token: page.next_token,
        });
    };
    presence(deps)?;
    list_filtered(deps, query, |_, c| c.connected == want).await
}

/// The things of the read model's listing `query` that `keep` (given each one's
/// connectivity, disconnected where unknown), with their connectivity where known. A page is
/// filled from up to [`FILTER_PAGES`] pages of the registry, so it may come back shorter than
/// asked (or empty) with a `next_token` to go on.
pub(crate) async fn list_filtered(
    deps: &RegistryDeps,
    mut query: ThingQuery,
    keep: impl Fn(&Thing, &thing::Connectivity) -> bool,
) -> Result<Page<(Thing, Option<thing::Connectivity>)>, Status> {
    let wanted = query.page_size as usize;
    let mut items = Vec::new();
    for _ in 0..FILTER_PAGES {
        // Never more things than there is room for: every match of a page fits, so the
        // next token never skips one.
        query.page_size = u32::try_from(wanted - items.len()).unwrap_or(u32::MAX);
        let page = deps
            .read_model
            .list_things(&query)
            .await
            .map_err(list_status)?;
        for t in page.items {
            let known = of_thing(deps, &t.thing_name);
            if keep(
                &t,
                known.as_ref().unwrap_or(&thing::Connectivity::default()),
            ) {
                items.push((t, known));
            }
        }
        query.page_token = page.next_token;
        if query.page_token.is_none() || items.len() >= wanted {
            break;
        }
    }
    Ok(Page {
        items,
        next_token: query.page_token,
    })
}

pub(crate) async fn get(
    deps: &RegistryDeps,
    request: Request<pb::GetConnectivityRequest>,
) -> Result<Response<pb::Connectivity>, Status> {
    let target = require_target(request.get_ref().target.clone()).map_err(validation_status)?;
    deps.auth.check(
        request.metadata(),
        Action::GetConnectivity,
        None,
        Some(&target),
    )?;
    let c = presence(deps)?
        .connectivity(&target.id)
        .map(|c| c.to_thing())
        .unwrap_or_default();
    Ok(Response::new(connectivity_to_pb(&c)))
}

pub(crate) async fn watch(
    deps: &RegistryDeps,
    request: Request<pb::WatchConnectivityRequest>,
) -> Result<Response<crate::things::ConnectivityStream>, Status> {
    let target = optional_target(request.get_ref().target.clone()).map_err(validation_status)?;
    deps.auth.check(
        request.metadata(),
        Action::WatchConnectivity,
        None,
        target.as_ref(),
    )?;
    let mut changes = presence(deps)?.watch();
    let mut shutdown = deps.shutdown.clone();
    let (tx, rx) = mpsc::channel::<Result<pb::ConnectivityEvent, Status>>(WATCH_BUFFER);
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                c = changes.recv() => c,
                _ = tx.closed() => return,
                _ = shutdown.wait_for(|s| *s) => Err(broadcast::error::RecvError::Closed),
            };
            let change = match change {
                Ok(c) => c,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let _ = tx
                        .send(Err(Status::resource_exhausted(format!(
                            "the watcher missed {n} connectivity changes and was disconnected; reconnect and read the connectivity again"
                        ))))
                        .await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx.try_send(Err(Status::unavailable(
                        "the server is shutting down; reconnect",
                    )));
                    return;
                }
            };
            let shown = match &target {
                Some(t) if t.id == change.client_id => t.clone(),
                Some(_) => continue,
                None => match target_of(&change.client_id) {
                    Some(t) => t,
                    None => continue,
                },
            };
            let c = change.connectivity.to_thing();
            let event = connectivity_event_to_pb(
                &shown,
                &change.client_id,
                c.connected,
                c.since,
                c.disconnect_reason.as_deref(),
            );
            let lag = "changes behind and was disconnected; reconnect";
            if !forward(&tx, event, WATCH_BUFFER, lag).await {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}
