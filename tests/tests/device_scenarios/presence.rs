//! Presence: AWS's lifecycle events on `$aws/events/presence/{connected,disconnected}/<clientId>`
//! and each target's connectivity (GetConnectivity, WatchConnectivity) follow connects, clean
//! disconnects, dropped connections and client-id takeovers.
//!
//! Each step waits for its lifecycle event before it reads the connectivity: the edge folds
//! an event into the connectivity before it publishes it.

use fleetcmd_contracts::pb;
use fleetcmd_e2e::device::{Device, Message};
use fleetcmd_e2e::{Env, Things, WAIT, thing};
use serde_json::Value as Json;

use crate::Result;

/// A server, its thing registry client, and an observer of `lamp-1`'s lifecycle events.
async fn given_an_observer(name: &str) -> anyhow::Result<(Env, Things, Device)> {
    let env = Env::start(name).await?;
    let things = env.server.things().await?;
    let mut observer = Device::v5(env.port(), "observer").await?;
    observer
        .subscribe(&["$aws/events/presence/+/lamp-1"])
        .await?;
    Ok((env, things, observer))
}

/// The next lifecycle event of `lamp-1` of `kind` (`connected` or `disconnected`).
async fn next_event(observer: &mut Device, kind: &str) -> anyhow::Result<Json> {
    let topic = format!("$aws/events/presence/{kind}/lamp-1");
    let m: Message = observer.expect_topic(&topic, WAIT).await?;
    let body = m.json()?;
    assert_eq!(body["eventType"], kind, "{body}");
    assert_eq!(body["clientId"], "lamp-1", "{body}");
    Ok(body)
}

async fn connectivity(things: &mut Things) -> anyhow::Result<pb::Connectivity> {
    Ok(things
        .get_connectivity(pb::GetConnectivityRequest {
            target: Some(thing("lamp-1")),
        })
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_and_a_clean_disconnect_are_published_and_change_the_connectivity() -> Result {
    let (env, mut things, mut observer) = given_an_observer("presence-clean").await?;
    assert_eq!(
        connectivity(&mut things).await?,
        pb::Connectivity::default()
    );
    let mut watch = things
        .watch_connectivity(pb::WatchConnectivityRequest {
            target: Some(thing("lamp-1")),
        })
        .await?
        .into_inner();
    let device = Device::v5(env.port(), "lamp-1").await?;
    let connected = next_event(&mut observer, "connected").await?;
    assert_eq!(connected["versionNumber"], 0);
    assert!(
        connected["sessionIdentifier"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(connected["timestamp"].as_i64().is_some_and(|t| t > 0));
    let now = connectivity(&mut things).await?;
    assert!(now.connected && now.since.is_some(), "{now:?}");
    // The CLI says the same.
    let api = fleetcmd_cli::Api::connect_lazy(&env.server.grpc_endpoint(), None)?;
    let mut out = Vec::new();
    let verb = fleetcmd_cli::thing::ThingCmd::Connectivity(fleetcmd_cli::presence::DeviceArgs {
        thing_name: Some("lamp-1".into()),
        client_id: None,
    });
    fleetcmd_cli::thing::run(&api, verb, fleetcmd_cli::Output::Json, &mut out).await?;
    let printed: Json = serde_json::from_slice(&out)?;
    assert_eq!(printed["connected"], true, "{printed}");
    device.disconnect().await?;
    let gone = next_event(&mut observer, "disconnected").await?;
    assert_eq!(gone["clientInitiatedDisconnect"], true);
    assert_eq!(gone["disconnectReason"], "CLIENT_INITIATED_DISCONNECT");
    assert_eq!(gone["sessionIdentifier"], connected["sessionIdentifier"]);
    let now = connectivity(&mut things).await?;
    assert!(!now.connected, "{now:?}");
    assert_eq!(now.disconnect_reason, "CLIENT_INITIATED_DISCONNECT");
    // The watcher saw both changes, in order.
    for want in [true, false] {
        let event = tokio::time::timeout(WAIT, watch.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
        assert_eq!(
            (event.client_id.as_str(), event.connected),
            ("lamp-1", want)
        );
        assert_eq!(event.target, Some(thing("lamp-1")));
    }
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_keeps_the_client_id_connected_and_a_dropped_connection_is_lost() -> Result {
    let (env, mut things, mut observer) = given_an_observer("presence-takeover").await?;
    let first = Device::v5(env.port(), "lamp-1").await?;
    let first_event = next_event(&mut observer, "connected").await?;
    let second = Device::v5(env.port(), "lamp-1").await?;
    let second_event = next_event(&mut observer, "connected").await?;
    assert_eq!(second_event["versionNumber"], 1);
    let taken = next_event(&mut observer, "disconnected").await?;
    assert_eq!(taken["disconnectReason"], "DUPLICATE_CLIENTID");
    assert_eq!(taken["sessionIdentifier"], first_event["sessionIdentifier"]);
    let now = connectivity(&mut things).await?;
    assert!(
        now.connected,
        "the new session holds the client id: {now:?}"
    );
    drop(first);
    // Gone without a DISCONNECT: the socket closes under the broker.
    drop(second);
    let lost = next_event(&mut observer, "disconnected").await?;
    assert_eq!(lost["sessionIdentifier"], second_event["sessionIdentifier"]);
    assert_eq!(lost["clientInitiatedDisconnect"], false);
    assert_eq!(lost["disconnectReason"], "CONNECTION_LOST");
    let now = connectivity(&mut things).await?;
    assert!(!now.connected, "{now:?}");
    assert_eq!(now.disconnect_reason, "CONNECTION_LOST");
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn things_list_by_connectivity_page_by_page_and_carry_it() -> Result {
    let env = Env::start("presence-list").await?;
    let mut things = env.server.things().await?;
    for name in ["lamp-1", "lamp-2", "lamp-3", "lamp-4"] {
        things
            .create_thing(pb::CreateThingRequest {
                thing_name: name.into(),
                ..Default::default()
            })
            .await?;
    }
    let mut observer = Device::v5(env.port(), "observer").await?;
    observer
        .subscribe(&["$aws/events/presence/connected/+"])
        .await?;
    let mut online = Vec::new();
    for name in ["lamp-1", "lamp-3"] {
        online.push(Device::v5(env.port(), name).await?);
        let topic = format!("$aws/events/presence/connected/{name}");
        observer.expect_topic(&topic, WAIT).await?;
    }
    let list = |filter: pb::ConnectivityFilter, next_token: String| pb::ListThingsRequest {
        connectivity: filter as i32,
        max_results: 1,
        next_token,
        ..Default::default()
    };
    for (filter, want) in [
        (pb::ConnectivityFilter::Connected, ["lamp-1", "lamp-3"]),
        (pb::ConnectivityFilter::Disconnected, ["lamp-2", "lamp-4"]),
    ] {
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let page = things.list_things(list(filter, token)).await?.into_inner();
            assert!(page.things.len() <= 1, "{page:?}");
            for t in &page.things {
                let c = t.connectivity.clone().unwrap_or_default();
                assert_eq!(c.connected, filter == pb::ConnectivityFilter::Connected);
                names.push(t.thing_name.clone());
            }
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        assert_eq!(names, want, "{filter:?}");
    }
    let lamp = things
        .get_thing(pb::GetThingRequest {
            thing_name: "lamp-3".into(),
        })
        .await?
        .into_inner();
    assert!(lamp.connectivity.is_some_and(|c| c.connected));
    drop(online);
    env.stop().await
}
