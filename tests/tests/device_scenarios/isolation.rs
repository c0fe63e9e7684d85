//! A device may only act on its own executions: another device's execution id on its own
//! topic, a bogus id on the other's topic, or the right id under the other target kind are
//! all ResourceNotFound, change nothing, and leave the execution to its own device.

use fleetcmd_contracts::pb;
use fleetcmd_e2e::device::{Device, Format, Topics};
use fleetcmd_e2e::scenario::*;
use serde_json::json;

use crate::{Result, given_a_client_and_its_thing_namesake};

/// `unlock` started on `door-a`, delivered and CREATED; `door-b` is another device.
struct Doors {
    scene: Scene,
    b: Topics,
    dev_b: Device,
    id: String,
    before: pb::CommandExecution,
}

async fn given_two_doors(name: &str) -> anyhow::Result<Doors> {
    let mut scene = Scene::thing(name, "door-a", "unlock", r#"{"unlock":true}"#).await?;
    let b = Topics::thing("door-b");
    let dev_b = scene.env.device("door-b", &b).await?;
    let (id, _) = scene.delivered(30).await?;
    let before = scene.env.get(&id, true).await?;
    Ok(Doors {
        scene,
        b,
        dev_b,
        id,
        before,
    })
}

impl Doors {
    /// The refused update changed nothing; A's own report still works, and the only status
    /// change was A's.
    async fn then_only_door_a_settles_it(mut self) -> anyhow::Result<()> {
        self.scene
            .then_unchanged_and_settled_by_its_device(&self.id, &self.before)
            .await?;
        self.scene.stop().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_devices_execution_id_on_its_own_topic_is_not_found() -> Result {
    let mut doors = given_two_doors("isolation-own-topic").await?;

    let reply = doors
        .dev_b
        .report_json(&doors.b, &doors.id, &json!({"status": "SUCCEEDED"}))
        .await?;

    assert_eq!(
        reply.message.topic,
        doors.b.rejected(&doors.id, Format::Json)
    );
    assert_rejected(&reply, "ResourceNotFound", &doors.id)?;
    doors.then_only_door_a_settles_it().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_id_on_another_devices_topic_is_not_found() -> Result {
    let mut doors = given_two_doors("isolation-bogus-id").await?;
    let bogus = "00000000-0000-7000-8000-000000000000";
    // B listens for the answer on A's topic.
    doors
        .dev_b
        .subscribe(&[format!(
            "$aws/commands/things/door-a/executions/{bogus}/response/+/json"
        )])
        .await?;

    let reply = doors
        .dev_b
        .report_json(&doors.scene.topics, bogus, &json!({"status": "FAILED"}))
        .await?;

    assert_rejected(&reply, "ResourceNotFound", bogus)?;
    doors.then_only_door_a_settles_it().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_id_under_the_client_kind_is_another_target() -> Result {
    let mut doors = given_two_doors("isolation-kind").await?;
    let as_client = Topics::client("door-a");
    doors.dev_b.subscribe(&as_client.reply_filters()).await?;

    let reply = doors
        .dev_b
        .report_json(&as_client, &doors.id, &json!({"status": "SUCCEEDED"}))
        .await?;

    assert_rejected(&reply, "ResourceNotFound", &doors.id)?;
    doors.then_only_door_a_settles_it().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_execution_does_not_exist_under_the_thing_of_the_same_name() -> Result {
    let (mut scene, as_thing, mut thing_dev) =
        given_a_client_and_its_thing_namesake("isolation-thing-kind").await?;
    let (id, _) = scene.delivered(10).await?;

    let reply = thing_dev
        .report_json(&as_thing, &id, &json!({"status": "SUCCEEDED"}))
        .await?;

    assert_rejected(&reply, "ResourceNotFound", &id)?;
    assert_accepted(
        &scene.report(&id, &json!({"status": "SUCCEEDED"})).await?,
        &id,
    )?;
    scene.stop().await
}
