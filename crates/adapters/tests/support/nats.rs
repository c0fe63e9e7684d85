//! Helpers of the NATS bus tests (`nats_bus.rs`, `nats_outage.rs`): the server, connecting,
//! and bounded waits. Each test binary uses part of it.
#![allow(dead_code)]

use std::sync::Arc;

use tokio::task::JoinHandle;

use fleetcmd_adapters::conformance::within;
use fleetcmd_adapters::nats::{ConnectionState, NatsBus};
use fleetcmd_domain::ports::{BoxStream, Bus, BusMessage};
use futures::StreamExt;

/// The server URL, or `None` (after a skip line) when it is not configured outside CI.
pub fn nats_url(test: &str) -> Option<String> {
    match std::env::var("FLEETCMD_NATS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
            assert!(
                !ci,
                "{test}: FLEETCMD_NATS_URL is not set, and CI must not skip the NATS tests: run \
                 `deploy/engines/nats.sh install && deploy/engines/nats.sh start` and set \
                 FLEETCMD_NATS_URL=nats://127.0.0.1:4222"
            );
            eprintln!(
                "skipped {test}: FLEETCMD_NATS_URL is not set (deploy/engines/nats.sh start, then \
                 FLEETCMD_NATS_URL=nats://127.0.0.1:4222)"
            );
            None
        }
    }
}

/// A bus connected to `url` as client `name`.
pub async fn connect(url: &str, name: &str) -> Arc<NatsBus> {
    within("connect", NatsBus::connect(url, name))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// The next message of `s`; fails when it does not come or the subscription ends.
pub async fn next(what: &str, s: &mut BoxStream<BusMessage>) -> BusMessage {
    within(what, s.next())
        .await
        .unwrap_or_else(|| panic!("{what}: the subscription ended"))
}

/// Waits (bounded) until the bus reports `want`.
pub async fn wait_for_state(bus: &NatsBus, want: ConnectionState) {
    let mut states = bus.watch_connection_state();
    within(
        &format!("connection state {want}"),
        states.wait_for(|s| *s == want),
    )
    .await
    .unwrap_or_else(|_| panic!("the bus stopped reporting its state before {want}"));
}

/// Answers every request on `subject` with its own payload, until aborted.
pub async fn echo_responder(bus: &Arc<NatsBus>, subject: &str) -> JoinHandle<()> {
    let mut requests = within("subscribe", bus.subscribe(subject, None))
        .await
        .expect("subscribe");
    let bus = bus.clone();
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply
                && within("publish", bus.publish(BusMessage::new(reply, m.payload)))
                    .await
                    .is_err()
            {
                break;
            }
        }
    })
}
