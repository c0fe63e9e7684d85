//! `fleetcmd thing connectivity NAME` and `fleetcmd thing watch [NAME]`: whether a device is
//! connected, and its connects and disconnects as they happen (GetConnectivity,
//! WatchConnectivity).

use std::io::Write;

use fleetcmd_contracts::pb;
use serde_json::{Value as Json, json};
use tonic::Status;

use super::render::{self, time_full};
use super::{Api, Output};

/// A thing by name, or a bare MQTT client by id (`watch`: every device when neither).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DeviceArgs {
    /// The thing name.
    #[arg(value_name = "NAME")]
    pub thing_name: Option<String>,
    /// A bare MQTT client id instead of a thing.
    #[arg(long, value_name = "ID", conflicts_with = "thing_name")]
    pub client_id: Option<String>,
}

impl DeviceArgs {
    fn target(&self) -> Option<pb::Target> {
        target(self.thing_name.as_ref(), self.client_id.as_ref())
    }
}

fn target(thing_name: Option<&String>, client_id: Option<&String>) -> Option<pb::Target> {
    let (kind, id) = match (thing_name, client_id) {
        (Some(name), _) => (pb::TargetKind::Thing, name),
        (None, Some(id)) => (pb::TargetKind::Client, id),
        (None, None) => return None,
    };
    Some(pb::Target {
        kind: kind as i32,
        id: id.clone(),
    })
}

super::unary_verbs! {
    pub get_connectivity: things.get_connectivity(pb::GetConnectivityRequest) -> pb::Connectivity;
}

pub fn connectivity_json(c: &pb::Connectivity) -> Json {
    json!({
        "connected": c.connected,
        "since": render::timestamp_json(c.since.as_ref()),
        "disconnect_reason": c.disconnect_reason,
    })
}

fn connectivity_text(c: &pb::Connectivity) -> String {
    let state = if c.connected {
        "connected"
    } else {
        "disconnected"
    };
    let since = c
        .since
        .as_ref()
        .map(|t| format!(" since {}", time_full(Some(t))))
        .unwrap_or_else(|| " (never seen)".to_owned());
    let reason = if c.connected || c.disconnect_reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", c.disconnect_reason)
    };
    format!("{state}{since}{reason}\n")
}

/// `thing connectivity`: answers in both forms, for the caller to print.
pub async fn connectivity(api: &Api, args: DeviceArgs) -> anyhow::Result<(Json, String)> {
    let Some(target) = args.target() else {
        anyhow::bail!("name a thing, or a bare client with --client-id");
    };
    let request = pb::GetConnectivityRequest {
        target: Some(target),
    };
    let c = get_connectivity(api, request).await?;
    Ok((connectivity_json(&c), connectivity_text(&c)))
}

async fn open(
    api: &Api,
    request: pb::WatchConnectivityRequest,
) -> Result<tonic::Streaming<pb::ConnectivityEvent>, Status> {
    api.call(api.things(), request, |mut client, request| async move {
        client.watch_connectivity(request).await
    })
    .await
}

fn event_json(e: &pb::ConnectivityEvent) -> Json {
    json!({
        "client_id": e.client_id,
        "connected": e.connected,
        "timestamp": render::timestamp_json(e.timestamp.as_ref()),
        "disconnect_reason": e.disconnect_reason,
    })
}

fn event_line(e: &pb::ConnectivityEvent) -> String {
    let what = if e.connected {
        "connected".to_owned()
    } else {
        format!("disconnected  {}", e.disconnect_reason)
    };
    format!(
        "{}  {}  {what}\n",
        time_full(e.timestamp.as_ref()),
        e.client_id
    )
}

/// `thing watch`: prints each change as it comes, until the stream ends or Ctrl-C.
pub async fn watch(
    api: &Api,
    args: DeviceArgs,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let request = pb::WatchConnectivityRequest {
        target: args.target(),
    };
    let mut stream = open(api, request).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            _ = &mut ctrl_c => break,
            event = stream.message() => event?,
        };
        let Some(event) = event else { break };
        output.print(out, &event_json(&event), &event_line(&event))?;
        // One line per change as it happens, also when stdout is a pipe.
        out.flush()?;
    }
    Ok(())
}
