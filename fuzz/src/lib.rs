//! What the fuzz targets share: the invariants of a device update (both body formats go
//! through the same rules) and the bound on what an error message may repeat.

use std::collections::BTreeMap;

use ciborium::Value as Cbor;
use fleetcmd_domain::device::{
    self, DeviceUpdate, encode_accepted, encode_rejected, peek_client_token,
};
use fleetcmd_domain::error::Rejection;
use fleetcmd_domain::ids::ExecutionId;
use fleetcmd_domain::limits::DEVICE_UPDATE_MAX_BYTES;
use fleetcmd_domain::model::ResultValue;
use fleetcmd_domain::topics::UpdateFormat;
use serde_json::{Map, Value as Json, json};

/// The most bytes an error message about untrusted input may have: every echo of the input
/// is cut to 64 characters (`fleetcmd_domain::error::quote`), so a message stays far below
/// this whatever the input's size.
pub const MESSAGE_MAX_BYTES: usize = 1024;

/// Parses `body` as a device update in `format` and checks, beyond "does not panic":
///
/// - `peek_client_token` finds exactly the token a successful parse returns;
/// - a parsed update, written back in the same format, parses to the same update;
/// - a refused one yields a bounded message, and its `/rejected` reply decodes as a map of
///   the device error code, the message and the token;
/// - the `/accepted` reply decodes too.
pub fn check_update(format: UpdateFormat, body: &[u8]) {
    let peeked = peek_client_token(format, body);
    let execution_id = ExecutionId::parse("e-1").expect("a valid id");
    match device::parse_update(format, body) {
        Ok(update) => {
            assert_eq!(
                peeked, update.client_token,
                "peek_client_token disagrees with parse_update"
            );
            let again = encode_update(format, &update);
            if again.len() <= DEVICE_UPDATE_MAX_BYTES {
                let reparsed = device::parse_update(format, &again)
                    .unwrap_or_else(|r| panic!("a re-encoded update is refused: {r:?}"));
                assert_eq!(reparsed, update, "the update does not survive re-encoding");
            }
            let accepted = decode_reply(
                format,
                &encode_accepted(format, &execution_id, update.client_token.as_deref()),
            );
            assert_eq!(accepted.get("executionId").map(String::as_str), Some("e-1"));
            assert_eq!(accepted.get("clientToken"), update.client_token.as_ref());
        }
        Err(rejection) => {
            check_message(&rejection);
            let reply = decode_reply(
                format,
                &encode_rejected(format, "e-1", peeked.as_deref(), &rejection),
            );
            assert_eq!(
                reply.get("error").map(String::as_str),
                Some(rejection.code.device_code())
            );
            assert_eq!(reply.get("errorMessage"), Some(&rejection.message));
            assert_eq!(reply.get("clientToken"), peeked.as_ref());
        }
    }
}

/// A refusal's message and field stay bounded whatever the input.
pub fn check_message(r: &Rejection) {
    assert!(
        r.message.len() <= MESSAGE_MAX_BYTES,
        "a {}-byte message: {:?}",
        r.message.len(),
        r.message.get(..200)
    );
    if let Some(field) = &r.field {
        assert!(
            field.len() <= MESSAGE_MAX_BYTES,
            "a {}-byte field",
            field.len()
        );
    }
}

/// An update in the device's own shape, in `format` (as a device SDK would write it).
pub fn encode_update(format: UpdateFormat, u: &DeviceUpdate) -> Vec<u8> {
    match format {
        UpdateFormat::Json => {
            let mut body = Map::new();
            body.insert("status".into(), json!(u.status.as_str()));
            if let Some(r) = &u.status_reason {
                body.insert(
                    "statusReason".into(),
                    json!({"reasonCode": r.reason_code, "reasonDescription": r.reason_description}),
                );
            }
            if let Some(result) = &u.result {
                let entries: Map<String, Json> = result
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            ResultValue::S(s) => json!({ "s": s }),
                            ResultValue::B(b) => json!({ "b": b }),
                            ResultValue::Bin(bytes) => json!({ "bin": base64(bytes) }),
                        };
                        (k.clone(), v)
                    })
                    .collect();
                body.insert("result".into(), Json::Object(entries));
            }
            if let Some(t) = &u.client_token {
                body.insert("clientToken".into(), json!(t));
            }
            Json::Object(body).to_string().into_bytes()
        }
        UpdateFormat::Cbor => {
            let text = |s: &str| Cbor::Text(s.to_string());
            let mut body = vec![(text("status"), text(u.status.as_str()))];
            if let Some(r) = &u.status_reason {
                body.push((
                    text("statusReason"),
                    Cbor::Map(vec![
                        (text("reasonCode"), text(&r.reason_code)),
                        (text("reasonDescription"), text(&r.reason_description)),
                    ]),
                ));
            }
            if let Some(result) = &u.result {
                let entries = result
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            ResultValue::S(s) => (text("s"), text(s)),
                            ResultValue::B(b) => (text("b"), Cbor::Bool(*b)),
                            ResultValue::Bin(bytes) => (text("bin"), Cbor::Bytes(bytes.clone())),
                        };
                        (text(k), Cbor::Map(vec![v]))
                    })
                    .collect();
                body.push((text("result"), Cbor::Map(entries)));
            }
            if let Some(t) = &u.client_token {
                body.push((text("clientToken"), text(t)));
            }
            let mut out = Vec::new();
            ciborium::ser::into_writer(&Cbor::Map(body), &mut out).expect("CBOR into a Vec");
            out
        }
    }
}

/// A reply body: a flat map of text members in the update's format.
fn decode_reply(format: UpdateFormat, body: &[u8]) -> BTreeMap<String, String> {
    match format {
        UpdateFormat::Json => {
            let Json::Object(m) = serde_json::from_slice(body).expect("a reply is JSON") else {
                panic!("a reply is a JSON object");
            };
            m.into_iter()
                .map(|(k, v)| match v {
                    Json::String(s) => (k, s),
                    other => panic!("reply member {k} is {other}"),
                })
                .collect()
        }
        UpdateFormat::Cbor => {
            let Cbor::Map(m) = ciborium::de::from_reader(body).expect("a reply is CBOR") else {
                panic!("a reply is a CBOR map");
            };
            m.into_iter()
                .map(|(k, v)| match (k, v) {
                    (Cbor::Text(k), Cbor::Text(v)) => (k, v),
                    other => panic!("reply member {other:?}"),
                })
                .collect()
        }
    }
}

/// Standard, padded base64 (what devices send for `bin` in JSON).
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
