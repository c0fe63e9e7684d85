//! The device scenarios' vocabulary: devices with every subscription in place, observers of
//! the `$aws/events/commandExecution/...` status events, and the checks of replies, events
//! and execution records.
//!
//! Synchronisation is event-driven: a device waits for its SUBACK before anything is started,
//! statuses are awaited through the status events (the edge publishes them after the
//! projector's commit, so a Get issued afterwards sees the change), and "nothing else
//! happened" is proven with a later marker that travels the same ordered path, never with a
//! sleep.

use anyhow::{bail, ensure};
use fleetcmd_contracts::pb;
use serde_json::{Value as Json, json};

use crate::Env;
use crate::device::{Device, Reply, Topics};
use crate::wait::WAIT;

/// The ARN prefix of this server's resources (region `local`, account `000000000000`).
pub const ARN_PREFIX: &str = "arn:aws:iot:local:000000000000";

impl Env {
    /// An MQTT 5 device of `topics` with every device subscription in place (SUBACK received).
    pub async fn device(&self, client_id: &str, topics: &Topics) -> anyhow::Result<Device> {
        let mut d = Device::v5(self.port(), client_id).await?;
        d.subscribe(&topics.device_filters()).await?;
        Ok(d)
    }

    /// An MQTT observer of the status events of `command_ids`.
    pub async fn observer(&self, command_ids: &[&str]) -> anyhow::Result<Device> {
        let mut d = Device::v5(self.port(), &format!("observer-{}", command_ids.join("-"))).await?;
        let filters: Vec<String> = command_ids
            .iter()
            .map(|c| format!("$aws/events/commandExecution/{c}/+"))
            .collect();
        d.subscribe(&filters).await?;
        Ok(d)
    }

    /// Starts `command_id` on `target` with a timeout; returns the execution id.
    pub async fn start_simple(
        &mut self,
        target: pb::Target,
        command_id: &str,
        timeout_secs: i64,
    ) -> anyhow::Result<String> {
        self.start_execution(start_request(target, command_id, timeout_secs))
            .await
    }
}

/// A start of `command_id` on `target` with `timeout_secs`.
pub fn start_request(
    target: pb::Target,
    command_id: &str,
    timeout_secs: i64,
) -> pb::StartCommandExecutionRequest {
    pb::StartCommandExecutionRequest {
        execution_timeout_seconds: timeout_secs,
        ..crate::api::start_request(command_id, target)
    }
}

pub fn status_of(e: &pb::CommandExecution) -> pb::ExecutionStatus {
    pb::ExecutionStatus::try_from(e.status).unwrap_or(pb::ExecutionStatus::Unspecified)
}

/// Asserts that `e` ended as `status`: terminal, with its completion time.
#[track_caller]
pub fn assert_ended(e: &pb::CommandExecution, status: pb::ExecutionStatus) {
    assert_eq!(status_of(e), status, "{e:?}");
    assert!(
        e.terminal && e.completed_at.is_some(),
        "{status:?} is terminal: {e:?}"
    );
}

pub fn reason_code(e: &pb::CommandExecution) -> Option<&str> {
    e.status_reason.as_ref().map(|r| r.reason_code.as_str())
}

pub fn result_value(e: &pb::CommandExecution, key: &str) -> Option<pb::result_value::Value> {
    e.result.get(key).and_then(|v| v.value.clone())
}

/// Waits for the next status event of `execution_id` on the observer and checks that it is
/// `status` on the event topic of `command_id`: events of one execution arrive in order, so
/// this also proves that no other status change came in between.
pub async fn next_event(
    obs: &mut Device,
    command_id: &str,
    execution_id: &str,
    status: &str,
) -> anyhow::Result<Json> {
    let m = obs
        .expect(
            &format!("the next status event of {execution_id} (expecting {status})"),
            |m| m.json().is_ok_and(|b| b["executionId"] == execution_id),
            WAIT,
        )
        .await?;
    let body = m.json()?;
    ensure!(
        body["status"] == status,
        "expected a {status} event for {execution_id}, got {body}"
    );
    ensure!(
        m.topic == format!("$aws/events/commandExecution/{command_id}/{status}"),
        "{status} event on the wrong topic {}",
        m.topic
    );
    ensure!(
        body["eventType"] == "COMMAND_EXECUTION",
        "eventType in {body}"
    );
    ensure!(
        body["commandArn"] == format!("{ARN_PREFIX}:command/{command_id}"),
        "commandArn in {body}"
    );
    ensure!(
        body["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "timestamp (epoch ms) in {body}"
    );
    ensure!(
        body["targetArn"]
            .as_str()
            .is_some_and(|t| t.starts_with(ARN_PREFIX)),
        "targetArn in {body}"
    );
    Ok(body)
}

/// Asserts that a reply was a rejection with `code`; returns its body.
pub fn assert_rejected(reply: &Reply, code: &str, execution_id: &str) -> anyhow::Result<Json> {
    let body = reply.body()?;
    ensure!(
        !reply.accepted,
        "expected a {code} rejection, got accepted on {}: {body}",
        reply.message.topic
    );
    ensure!(body["error"] == code, "expected error {code}, got {body}");
    ensure!(body["executionId"] == execution_id, "executionId in {body}");
    ensure!(
        body["errorMessage"].as_str().is_some_and(|m| !m.is_empty()),
        "errorMessage in {body}"
    );
    Ok(body)
}

/// Asserts that a reply accepted the update of `execution_id`.
pub fn assert_accepted(reply: &Reply, execution_id: &str) -> anyhow::Result<()> {
    let body = reply.body()?;
    ensure!(
        reply.accepted,
        "expected accepted, got rejected on {}: {body}",
        reply.message.topic
    );
    ensure!(
        body == json!({ "executionId": execution_id }),
        "accepted body {body}"
    );
    Ok(())
}

/// The same execution record, ignoring nothing: a rejected update must leave it untouched.
pub fn assert_unchanged(
    before: &pb::CommandExecution,
    after: &pb::CommandExecution,
) -> anyhow::Result<()> {
    ensure!(
        before == after,
        "the execution changed:\nbefore {before:?}\nafter  {after:?}"
    );
    Ok(())
}

/// Waits until Get shows `status`: each loop either sees it or awaits the execution's next
/// status event (the observer subscribed before the first Get, so no change is missed).
pub async fn wait_status(
    env: &mut Env,
    obs: &mut Device,
    execution_id: &str,
    status: pb::ExecutionStatus,
) -> anyhow::Result<pb::CommandExecution> {
    for _ in 0..10 {
        let e = env.get(execution_id, true).await?;
        if status_of(&e) == status {
            return Ok(e);
        }
        obs.expect(
            &format!("a status event of {execution_id} (waiting for {status:?})"),
            |m| m.json().is_ok_and(|b| b["executionId"] == execution_id),
            WAIT,
        )
        .await?;
    }
    bail!("{execution_id} did not reach {status:?} within 10 status events")
}

/// One device and one command on a running server: the "given" of most device scenarios.
pub struct Scene {
    pub env: Env,
    pub target: pb::Target,
    pub topics: Topics,
    pub command_id: String,
    /// An observer of the command's status events.
    pub obs: Device,
    /// The target's device (client id = the target id), every subscription in place.
    pub dev: Device,
}

impl Scene {
    /// A server, an observer of `command`'s status events, the device of `target` speaking
    /// `version`, and `command` created.
    pub async fn given(
        name: &str,
        target: pb::Target,
        version: crate::device::Version,
        command: pb::CreateCommandRequest,
    ) -> anyhow::Result<Self> {
        let mut env = Env::start(name).await?;
        let topics = if target.kind == pb::TargetKind::Client as i32 {
            Topics::client(&target.id)
        } else {
            Topics::thing(&target.id)
        };
        let command_id = command.command_id.clone();
        let obs = env.observer(&[&command_id]).await?;
        let options = match version {
            crate::device::Version::V5 => crate::device::DeviceOptions::v5(target.id.clone()),
            crate::device::Version::V311 => crate::device::DeviceOptions::v311(target.id.clone()),
        };
        let mut dev = Device::connect(env.port(), options).await?;
        dev.subscribe(&topics.device_filters()).await?;
        env.create(command).await?;
        Ok(Self {
            env,
            target,
            topics,
            command_id,
            obs,
            dev,
        })
    }

    /// [`Self::given`] for an MQTT 5 device of the thing `thing` and a static JSON command.
    pub async fn thing(
        name: &str,
        thing: &str,
        command_id: &str,
        payload: &str,
    ) -> anyhow::Result<Self> {
        let command = crate::static_json_command(command_id, payload);
        Self::given(
            name,
            crate::thing(thing),
            crate::device::Version::V5,
            command,
        )
        .await
    }

    /// The end of a scenario whose updates were refused: `execution_id` is unchanged since
    /// `before`, its own device can still settle it (accepted, SUCCEEDED announced), and the
    /// record then says SUCCEEDED.
    pub async fn then_unchanged_and_settled_by_its_device(
        &mut self,
        execution_id: &str,
        before: &pb::CommandExecution,
    ) -> anyhow::Result<()> {
        assert_unchanged(before, &self.env.get(execution_id, true).await?)?;
        let reply = self
            .report(execution_id, &json!({"status": "SUCCEEDED"}))
            .await?;
        assert_accepted(&reply, execution_id)?;
        self.next_event(execution_id, "SUCCEEDED").await?;
        let after = self.env.get(execution_id, false).await?;
        ensure!(
            status_of(&after) == pb::ExecutionStatus::Succeeded,
            "{execution_id} is {:?} after its device's SUCCEEDED",
            status_of(&after)
        );
        Ok(())
    }

    /// Starts the command on the target with `timeout_secs`; returns the execution id.
    pub async fn start(&mut self, timeout_secs: i64) -> anyhow::Result<String> {
        let request = start_request(self.target.clone(), &self.command_id, timeout_secs);
        self.env.start_execution(request).await
    }

    /// Starts an execution and waits for its request at the device and its CREATED event;
    /// returns its id and the event.
    pub async fn delivered(&mut self, timeout_secs: i64) -> anyhow::Result<(String, Json)> {
        let id = self.start(timeout_secs).await?;
        let request = self.dev.expect_request(&self.topics, WAIT).await?;
        ensure!(
            request.execution_id() == Some(id.as_str()),
            "the first request is another execution's: {request:?}"
        );
        let created = self.next_event(&id, "CREATED").await?;
        Ok((id, created))
    }

    /// The device reports `body` (JSON) for `execution_id` and gets the reply.
    pub async fn report(&mut self, execution_id: &str, body: &Json) -> anyhow::Result<Reply> {
        self.dev.report_json(&self.topics, execution_id, body).await
    }

    /// [`next_event`] of `execution_id` on the scene's observer.
    pub async fn next_event(&mut self, execution_id: &str, status: &str) -> anyhow::Result<Json> {
        next_event(&mut self.obs, &self.command_id, execution_id, status).await
    }

    /// Stops the server and removes its data directory.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.env.stop().await
    }
}
