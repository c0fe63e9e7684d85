//! Malformed updates get /rejected with InvalidJson or InvalidRequest in the update's
//! format, echo a valid clientToken, announce nothing and leave the execution unchanged.

use anyhow::Context;
use ciborium::Value as Cbor;
use fleetcmd_contracts::pb;
use fleetcmd_e2e::device::{Format, Reply, to_cbor};
use fleetcmd_e2e::scenario::*;
use serde_json::json;

use crate::Result;

/// `read` started on `meter-1`, delivered and CREATED.
struct Meter {
    scene: Scene,
    id: String,
    before: pb::CommandExecution,
}

async fn given_a_meter(name: &str) -> anyhow::Result<Meter> {
    let mut scene = Scene::thing(name, "meter-1", "read", r#"{"read":"all"}"#).await?;
    let (id, _) = scene.delivered(30).await?;
    let before = scene.env.get(&id, true).await?;
    Ok(Meter { scene, id, before })
}

impl Meter {
    /// The device's update in `format`, and the reply.
    async fn report(&mut self, format: Format, body: Vec<u8>) -> anyhow::Result<Reply> {
        let scene = &mut self.scene;
        scene
            .dev
            .report(&scene.topics, &self.id, format, body)
            .await
    }

    /// Nothing changed, and none of it made an event: the next one is the valid update's.
    async fn then_nothing_changed(mut self) -> anyhow::Result<()> {
        self.scene
            .then_unchanged_and_settled_by_its_device(&self.id, &self.before)
            .await?;
        assert!(self.scene.obs.take_received().is_empty());
        self.scene.stop().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_updates_are_rejected_naming_the_problem() -> Result {
    let mut m = given_a_meter("malformed-json").await?;
    let long_key = "k".repeat(33);
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "invalid JSON",
            b"{\"status\": \"SUCCEEDED\"".to_vec(),
            "InvalidJson",
            "JSON",
        ),
        (
            "not an object",
            b"[\"SUCCEEDED\"]".to_vec(),
            "InvalidJson",
            "object",
        ),
        (
            "no status",
            br#"{"result": {"a": {"s": "x"}}}"#.to_vec(),
            "InvalidRequest",
            "status",
        ),
        (
            "unknown status",
            br#"{"status": "DONE"}"#.to_vec(),
            "InvalidRequest",
            "DONE",
        ),
        (
            "status not a string",
            br#"{"status": 3}"#.to_vec(),
            "InvalidRequest",
            "status",
        ),
        (
            "bad reasonCode",
            br#"{"status": "FAILED", "statusReason": {"reasonCode": "disk full"}}"#.to_vec(),
            "InvalidRequest",
            "reasonCode",
        ),
        (
            "cloud reasonCode",
            br#"{"status": "FAILED", "statusReason": {"reasonCode": "$NO_RESPONSE_FROM_DEVICE"}}"#
                .to_vec(),
            "InvalidRequest",
            "reserved",
        ),
        (
            "result key too long",
            json!({"status": "SUCCEEDED", "result": {long_key.as_str(): {"s": "x"}}})
                .to_string()
                .into_bytes(),
            "InvalidRequest",
            "32",
        ),
        (
            "bad result type",
            br#"{"status": "SUCCEEDED", "result": {"n": {"i": 3}}}"#.to_vec(),
            "InvalidRequest",
            "result.n",
        ),
        (
            "bad base64",
            br#"{"status": "SUCCEEDED", "result": {"n": {"bin": "%%%"}}}"#.to_vec(),
            "InvalidRequest",
            "base64",
        ),
        (
            "CREATED",
            br#"{"status": "CREATED"}"#.to_vec(),
            "InvalidStateTransition",
            "CREATED",
        ),
        (
            "CANCELED",
            br#"{"status": "CANCELED"}"#.to_vec(),
            "InvalidRequest",
            "CANCELED",
        ),
    ];
    for (what, body, code, needle) in cases {
        let reply = m.report(Format::Json, body).await?;

        assert_eq!(
            reply.message.topic,
            m.scene.topics.rejected(&m.id, Format::Json),
            "{what}"
        );
        let body = assert_rejected(&reply, code, &m.id).with_context(|| what.to_string())?;
        let msg = body["errorMessage"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{what}: {msg:?} should mention {needle:?}"
        );
    }
    m.then_nothing_changed().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_client_token_is_echoed_even_on_a_rejection() -> Result {
    let mut m = given_a_meter("malformed-token").await?;

    let reply = m
        .scene
        .report(&m.id, &json!({"status": "DONE", "clientToken": "tok-7"}))
        .await?;

    assert_eq!(
        assert_rejected(&reply, "InvalidRequest", &m.id)?["clientToken"],
        "tok-7"
    );
    m.then_nothing_changed().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_cbor_updates_are_rejected_in_cbor() -> Result {
    let mut m = given_a_meter("malformed-cbor").await?;
    let no_status = to_cbor(&Cbor::Map(vec![(
        Cbor::Text("result".into()),
        Cbor::Map(vec![]),
    )]));

    // Invalid CBOR on /response/cbor: the rejection comes on /rejected/cbor, in CBOR.
    let reply = m.report(Format::Cbor, vec![0xff, 0x00, 0x13]).await?;
    assert_eq!(
        reply.message.topic,
        m.scene.topics.rejected(&m.id, Format::Cbor)
    );
    assert!(reply.message.json().is_err(), "a CBOR reply, not JSON");
    assert_rejected(&reply, "InvalidJson", &m.id)?;
    // Valid CBOR, bad shape: InvalidRequest.
    let reply = m.report(Format::Cbor, no_status).await?;
    assert_rejected(&reply, "InvalidRequest", &m.id)?;
    m.then_nothing_changed().await
}
