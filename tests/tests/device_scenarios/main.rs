//! End-to-end scenarios: real MQTT devices (rumqttc, MQTT 5 and 3.1.1) and gRPC clients
//! against an in-process `fleetcmd serve` on loopback sockets.
//!
//! Synchronisation is event-driven throughout (see `fleetcmd_e2e::scenario`): a device waits
//! for SUBACK before anything is started, statuses are awaited through the
//! `$aws/events/commandExecution/...` topics, and "nothing else happened" is proven with a
//! later marker that travels the same ordered path, never with a sleep. One behaviour per
//! test: a `given_*` function sets the scene, the test acts and checks.

mod cancel;
mod delivery;
mod idempotency;
mod isolation;
mod malformed;
mod presence;
mod requests;
mod restart;
mod security;
mod timeouts;
mod updates;
mod watch;

use fleetcmd_e2e::device::{Device, Topics, Version};
use fleetcmd_e2e::scenario::Scene;
use fleetcmd_e2e::{client, static_json_command, thing};

type Result = anyhow::Result<()>;

/// `ping` and an MQTT 3.1.1 device `legacy-1`.
async fn given_a_legacy_device(name: &str) -> anyhow::Result<Scene> {
    let ping = static_json_command("ping", r#"{"ping":"pong"}"#);
    Scene::given(name, thing("legacy-1"), Version::V311, ping).await
}

/// `sample`, the device of the client `sensor-77`, and a device of the thing of the same
/// name (with its topics).
async fn given_a_client_and_its_thing_namesake(
    name: &str,
) -> anyhow::Result<(Scene, Topics, Device)> {
    let sample = static_json_command("sample", r#"{"rate":10}"#);
    let scene = Scene::given(name, client("sensor-77"), Version::V5, sample).await?;
    let as_thing = Topics::thing("sensor-77");
    let thing_dev = scene.env.device("sensor-77-thing", &as_thing).await?;
    Ok((scene, as_thing, thing_dev))
}
