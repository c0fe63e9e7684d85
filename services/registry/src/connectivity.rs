//! Device connectivity over gRPC (GetConnectivity, WatchConnectivity), answered from the
//! process's presence where the devices' broker reports connects and disconnects (the
//! embedded broker of `fleetcmd serve`). A target's connectivity is that of the MQTT client
//! id equal to its id (AWS's convention: a thing connects with its name as client id).

use std::sync::Arc;

use fleetcmd_contracts::convert::{
    optional_target, require_target, timestamp_from_ms, validation_status,
};
use fleetcmd_contracts::pb;
use fleetcmd_domain::ids::Target;
use fleetcmd_domain::policy::Action;
use fleetcmd_domain::presence::Connectivity;
use fleetcmd_service_kit::presence::Presence;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use crate::RegistryDeps;

/// Connectivity events buffered for one watcher before it is disconnected as too slow.
const WATCH_BUFFER: usize = 1024;

fn presence(deps: &RegistryDeps) -> Result<&Arc<Presence>, Status> {
    deps.presence.as_ref().ok_or_else(|| {
        Status::failed_precondition(
            "this deployment's device broker reports no connects or disconnects (an external broker): connectivity is not known",
        )
    })
}

fn to_pb(c: Option<&Connectivity>) -> pb::Connectivity {
    c.map_or_else(pb::Connectivity::default, |c| pb::Connectivity {
        connected: c.connected,
        since: Some(timestamp_from_ms(c.since)),
        disconnect_reason: c
            .last_disconnect_reason
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
    })
}

/// The target a client id's connectivity is reported as, when a watcher names none: the
/// thing of that name if it can be one, else the bare client.
fn target_of(client_id: &str) -> Option<Target> {
    Target::thing(client_id)
        .or_else(|_| Target::client(client_id))
        .ok()
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
    let c = presence(deps)?.connectivity(&target.id);
    Ok(Response::new(to_pb(c.as_ref())))
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
            let c = &change.connectivity;
            let event = pb::ConnectivityEvent {
                target: Some(pb::Target {
                    kind: pb::TargetKind::from(shown.kind) as i32,
                    id: shown.id,
                }),
                client_id: change.client_id,
                connected: c.connected,
                timestamp: Some(timestamp_from_ms(c.since)),
                disconnect_reason: c
                    .last_disconnect_reason
                    .map(|r| r.as_str().to_owned())
                    .unwrap_or_default(),
            };
            match tx.try_send(Ok(event)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let _ = tx
                        .send(Err(Status::resource_exhausted(format!(
                            "the watcher fell more than {WATCH_BUFFER} changes behind and was disconnected; reconnect"
                        ))))
                        .await;
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}
