use super::*;
use proptest::prelude::*;

fn json_body(v: Json) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn cbor_body(v: Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(&v, &mut out).unwrap();
    out
}

fn text(s: &str) -> Cbor {
    Cbor::Text(s.into())
}

fn cmap(entries: Vec<(&str, Cbor)>) -> Cbor {
    Cbor::Map(entries.into_iter().map(|(k, v)| (text(k), v)).collect())
}

fn parse_json(v: Json) -> Result<DeviceUpdate, Rejection> {
    parse_update(UpdateFormat::Json, &json_body(v))
}

/// Asserts an `InvalidRequest` on `field` whose message contains `needle`.
/// Failures name the `needle`, which tells the cases of a table apart.
fn assert_invalid(r: Result<DeviceUpdate, Rejection>, field: &str, needle: &str) {
    let err = match r {
        Ok(u) => panic!("{needle:?}: expected a rejection, got {u:?}"),
        Err(err) => err,
    };
    assert_eq!(
        err.code,
        RejectionCode::InvalidRequest,
        "{needle:?}: {err:?}"
    );
    assert_eq!(err.field.as_deref(), Some(field), "{needle:?}: {err:?}");
    assert!(
        err.message.contains(needle),
        "{:?} lacks {needle:?}",
        err.message
    );
}

fn reason(code: &str, description: &str) -> StatusReason {
    StatusReason {
        reason_code: code.into(),
        reason_description: description.into(),
    }
}

/// Encodes an update the way a device SDK would (the inverse of `parse_update`).
fn encode_update(format: UpdateFormat, u: &DeviceUpdate) -> Vec<u8> {
    match format {
        UpdateFormat::Json => {
            let mut v = json!({ "status": u.status.as_str(), "deviceId": "ignored" });
            if let Some(r) = &u.status_reason {
                v["statusReason"] = reason_json(r);
            }
            if let Some(r) = &u.result {
                v["result"] = result_json(r);
            }
            if let Some(t) = &u.client_token {
                v["clientToken"] = json!(t);
            }
            json_body(v)
        }
        UpdateFormat::Cbor => {
            let mut m = vec![("status", text(u.status.as_str()))];
            if let Some(r) = &u.status_reason {
                m.push((
                    "statusReason",
                    cmap(vec![
                        ("reasonCode", text(&r.reason_code)),
                        ("reasonDescription", text(&r.reason_description)),
                    ]),
                ));
            }
            if let Some(r) = &u.result {
                let entries = r
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            ResultValue::S(s) => cmap(vec![("s", text(s))]),
                            ResultValue::B(b) => cmap(vec![("b", Cbor::Bool(*b))]),
                            ResultValue::Bin(b) => cmap(vec![("bin", Cbor::Bytes(b.clone()))]),
                        };
                        (text(k), v)
                    })
                    .collect();
                m.push(("result", Cbor::Map(entries)));
            }
            if let Some(t) = &u.client_token {
                m.push(("clientToken", text(t)));
            }
            cbor_body(cmap(m))
        }
    }
}

#[test]
fn status_reason_rules() {
    assert_eq!(
        validate_status_reason("r", &reason("DEVICE_TOO-HOT_2", "")),
        Ok(())
    );
    let max = reason(&"A".repeat(64), &"d".repeat(1024));
    assert_eq!(validate_status_reason("r", &max), Ok(()));
    let err = validate_status_reason("r", &reason("", "")).unwrap_err();
    assert_eq!(err.field, "r.reasonCode");
    let err = validate_status_reason("r", &reason(&"A".repeat(65), "")).unwrap_err();
    assert_eq!(err.field, "r.reasonCode");
    assert!(err.message.contains("64"), "{}", err.message);
    let err = validate_status_reason("r", &reason("too_hot", "")).unwrap_err();
    assert!(err.message.contains("[A-Z0-9_-]+") && err.message.contains("'t'"));
    let err = validate_status_reason("r", &reason("$NO_RESPONSE_FROM_DEVICE", "")).unwrap_err();
    assert!(err.message.contains("reserved"), "{}", err.message);
    let err = validate_status_reason("r", &reason("X", &"d".repeat(1025))).unwrap_err();
    assert_eq!(err.field, "r.reasonDescription");
    assert!(err.message.contains("1024"));
    let err = validate_status_reason("r", &reason("X", "line\nbreak")).unwrap_err();
    assert_eq!(err.field, "r.reasonDescription");
    assert!(err.message.contains("control"));
    assert_eq!(
        validate_status_reason("r", &reason("X", "ünïcode ok ✓")),
        Ok(())
    );
}

#[test]
fn parses_a_full_json_update_and_ignores_extra_members() {
    let u = parse_json(json!({
        "deviceId": "lamp-1",
        "executionId": "e-1",
        "status": "SUCCEEDED",
        "statusReason": {"reasonCode": "DONE", "reasonDescription": "all good"},
        "result": {
            "log": {"s": "ok"},
            "rebooted": {"b": true},
            "blob": {"bin": "AAEC/w=="},
            "nopad": {"bin": "AAEC/w"}
        },
        "clientToken": "tok-1"
    }))
    .unwrap();
    assert_eq!(u.status, ExecutionStatus::Succeeded);
    assert_eq!(u.status_reason, Some(reason("DONE", "all good")));
    assert_eq!(u.client_token.as_deref(), Some("tok-1"));
    let r = u.result.unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(r["log"], ResultValue::S("ok".into()));
    assert_eq!(r["rebooted"], ResultValue::B(true));
    assert_eq!(r["blob"], ResultValue::Bin(vec![0, 1, 2, 255]));
    assert_eq!(r["nopad"], ResultValue::Bin(vec![0, 1, 2, 255]));

    // The minimal update; null optional members mean absent.
    let u = parse_json(
        json!({"status": "IN_PROGRESS", "statusReason": null, "result": null, "clientToken": null}),
    )
    .unwrap();
    assert_eq!(
        u,
        DeviceUpdate {
            status: ExecutionStatus::InProgress,
            status_reason: None,
            result: None,
            client_token: None
        }
    );
    let u = parse_json(json!({"status": "FAILED", "statusReason": {"reasonCode": "E1"}})).unwrap();
    assert_eq!(u.status_reason, Some(reason("E1", "")));
}

#[test]
fn parses_cbor_with_byte_strings_and_base64_text() {
    let body = cbor_body(cmap(vec![
        ("status", text("FAILED")),
        ("statusReason", cmap(vec![("reasonCode", text("E_DISK"))])),
        (
            "result",
            cmap(vec![
                ("raw", cmap(vec![("bin", Cbor::Bytes(vec![9, 8, 7]))])),
                ("b64", cmap(vec![("bin", text("CQgH"))])),
                (
                    "tagged",
                    cmap(vec![("bin", Cbor::Tag(22, Box::new(Cbor::Bytes(vec![1]))))]),
                ),
                ("flag", cmap(vec![("b", Cbor::Bool(false))])),
                ("big", cmap(vec![("s", text(&"x".repeat(10_000)))])),
            ]),
        ),
        ("executionId", text("e")),
        ("clientToken", text("c-1")),
    ]));
    let u = parse_update(UpdateFormat::Cbor, &body).unwrap();
    assert_eq!(u.status, ExecutionStatus::Failed);
    assert_eq!(u.status_reason, Some(reason("E_DISK", "")));
    assert_eq!(u.client_token.as_deref(), Some("c-1"));
    let r = u.result.unwrap();
    assert_eq!(r["raw"], ResultValue::Bin(vec![9, 8, 7]));
    assert_eq!(r["b64"], ResultValue::Bin(vec![9, 8, 7]));
    assert_eq!(r["tagged"], ResultValue::Bin(vec![1]));
    assert_eq!(r["flag"], ResultValue::B(false));
    assert_eq!(r["big"], ResultValue::S("x".repeat(10_000)));
}

#[test]
fn status_must_be_one_a_device_may_report() {
    for s in [
        "IN_PROGRESS",
        "SUCCEEDED",
        "FAILED",
        "REJECTED",
        "TIMED_OUT",
        "CREATED",
    ] {
        let u = parse_json(json!({ "status": s })).unwrap();
        assert_eq!(u.status.as_str(), s);
    }
    assert_invalid(parse_json(json!({})), "status", "required");
    assert_invalid(parse_json(json!({"status": null})), "status", "required");
    assert_invalid(
        parse_json(json!({"status": 3})),
        "status",
        "must be a string, got a number",
    );
    assert_invalid(
        parse_json(json!({"status": ["SUCCEEDED"]})),
        "status",
        "got an array",
    );
    assert_invalid(
        parse_json(json!({"status": "CANCELED"})),
        "status",
        "cannot report status \"CANCELED\"",
    );
    assert_invalid(
        parse_json(json!({"status": "succeeded"})),
        "status",
        "IN_PROGRESS, SUCCEEDED",
    );
    assert_invalid(parse_json(json!({"status": "DONE"})), "status", "\"DONE\"");
    let cbor = cbor_body(cmap(vec![("status", Cbor::Bytes(b"SUCCEEDED".to_vec()))]));
    assert_invalid(
        parse_update(UpdateFormat::Cbor, &cbor),
        "status",
        "got a byte string",
    );
}

#[test]
fn undecodable_bodies_are_invalid_json() {
    let cases: Vec<(UpdateFormat, Vec<u8>, &str)> = vec![
        (UpdateFormat::Json, b"".to_vec(), "not valid JSON"),
        (
            UpdateFormat::Json,
            b"{\"status\":".to_vec(),
            "not valid JSON",
        ),
        (
            UpdateFormat::Json,
            b"{\"status\":\"SUCCEEDED\"} x".to_vec(),
            "not valid JSON",
        ),
        (
            UpdateFormat::Json,
            b"[1,2]".to_vec(),
            "must be a JSON object, got an array",
        ),
        (
            UpdateFormat::Json,
            b"\"SUCCEEDED\"".to_vec(),
            "got a string",
        ),
        (UpdateFormat::Json, vec![0xff, 0xfe], "not valid JSON"),
        (UpdateFormat::Cbor, b"".to_vec(), "not valid CBOR"),
        (UpdateFormat::Cbor, vec![0xa1, 0x66], "not valid CBOR"),
        (
            UpdateFormat::Cbor,
            cbor_body(Cbor::Array(vec![])),
            "must be a CBOR map, got an array",
        ),
        (
            UpdateFormat::Cbor,
            cbor_body(Cbor::Integer(5.into())),
            "got a number",
        ),
    ];
    for (format, body, needle) in cases {
        let err = parse_update(format, &body).unwrap_err();
        assert_eq!(err.code, RejectionCode::InvalidJson, "{body:?}");
        assert_eq!(err.code.device_code(), "InvalidJson");
        assert!(
            err.message.contains(needle),
            "{:?} lacks {needle:?}",
            err.message
        );
    }
    // Trailing bytes after a CBOR item, and JSON sent on the CBOR topic.
    let mut body = cbor_body(cmap(vec![("status", text("SUCCEEDED"))]));
    body.push(0x00);
    let err = parse_update(UpdateFormat::Cbor, &body).unwrap_err();
    assert_eq!(err.code, RejectionCode::InvalidJson);
    assert!(err.message.contains("1 bytes after"), "{}", err.message);
    let err = parse_update(UpdateFormat::Cbor, br#"{"status":"SUCCEEDED"}"#).unwrap_err();
    assert_eq!(err.code, RejectionCode::InvalidJson);
}

#[test]
fn body_size_limit() {
    let base = br#"{"status":"SUCCEEDED"}"#;
    let mut body = base.to_vec();
    body.resize(DEVICE_UPDATE_MAX_BYTES, b' ');
    assert_eq!(
        parse_update(UpdateFormat::Json, &body).unwrap().status,
        ExecutionStatus::Succeeded
    );
    body.push(b' ');
    let err = parse_update(UpdateFormat::Json, &body).unwrap_err();
    assert_eq!(err.code, RejectionCode::InvalidRequest);
    assert!(err.message.contains(&DEVICE_UPDATE_MAX_BYTES.to_string()));
    assert_eq!(
        parse_update(UpdateFormat::Cbor, &body).unwrap_err().code,
        RejectionCode::InvalidRequest,
        "the size is checked before decoding"
    );
}

#[test]
fn status_reason_shape_errors() {
    let with = |r: Json| parse_json(json!({"status": "FAILED", "statusReason": r}));
    assert_invalid(
        with(json!("E1")),
        "statusReason",
        "must be an object, got a string",
    );
    assert_invalid(with(json!({})), "statusReason.reasonCode", "required");
    assert_invalid(
        with(json!({"reasonDescription": "x"})),
        "statusReason.reasonCode",
        "required",
    );
    assert_invalid(
        with(json!({"reasonCode": 1})),
        "statusReason.reasonCode",
        "got a number",
    );
    assert_invalid(
        with(json!({"reasonCode": "E", "reasonDescription": true})),
        "statusReason.reasonDescription",
        "got a boolean",
    );
    assert_invalid(
        with(json!({"reasonCode": "bad code"})),
        "statusReason.reasonCode",
        "[A-Z0-9_-]+",
    );
    assert_invalid(
        with(json!({"reasonCode": "E", "reasonDescription": "a\u{0}b"})),
        "statusReason.reasonDescription",
        "control",
    );
    assert_invalid(
        with(json!({"reasonCode": "A".repeat(65)})),
        "statusReason.reasonCode",
        "64",
    );
}

#[test]
fn result_shape_errors_and_limits() {
    let with = |r: Json| parse_json(json!({"status": "SUCCEEDED", "result": r}));
    assert_invalid(with(json!("ok")), "result", "must be an object");
    assert_invalid(with(json!({})), "result", "at least 1");
    let many: Map<String, Json> = (0..=RESULT_ENTRIES_MAX)
        .map(|i| (format!("k{i}"), json!({"b": true})))
        .collect();
    assert_invalid(
        with(Json::Object(many.clone())),
        "result",
        &RESULT_ENTRIES_MAX.to_string(),
    );
    let exactly: Map<String, Json> = many.into_iter().take(RESULT_ENTRIES_MAX).collect();
    assert_eq!(
        with(Json::Object(exactly)).unwrap().result.unwrap().len(),
        RESULT_ENTRIES_MAX
    );

    let k32 = "k".repeat(32);
    assert!(with(json!({ k32.clone(): {"s": "x"} })).is_ok());
    let k33 = "k".repeat(33);
    assert_invalid(
        with(json!({ k33.clone(): {"s": "x"} })),
        &format!("result.{k33}"),
        "1–32",
    );
    assert_invalid(with(json!({ "": {"s": "x"} })), "result.", "1–32");
    assert_invalid(with(json!({ "a.b": {"s": "x"} })), "result.a.b", "'.'");

    // (result, the field named, what the message says)
    let cases = [
        (
            json!({"k": "x"}),
            "result.k",
            "must be an object with one of",
        ),
        (json!({"k": {}}), "result.k", "found none"),
        (
            json!({"k": {"s": "x", "b": true}}),
            "result.k",
            "exactly one",
        ),
        (
            json!({"k": {"i": 3}}),
            "result.k",
            "unknown result type \"i\"",
        ),
        (
            json!({"k": {"S": "x"}}),
            "result.k",
            "unknown result type \"S\"",
        ),
        (json!({"k": {"s": 1}}), "result.k.s", "must be a string"),
        (
            json!({"k": {"b": "true"}}),
            "result.k.b",
            "must be a boolean",
        ),
        (
            json!({"k": {"bin": "not base64!"}}),
            "result.k.bin",
            "base64",
        ),
        (
            json!({"k": {"bin": [1, 2]}}),
            "result.k.bin",
            "got an array",
        ),
    ];
    for (result, field, message) in cases {
        assert_invalid(with(result), field, message);
    }
    // A null sibling is as good as absent.
    let u = with(json!({"k": {"s": "x", "b": null}})).unwrap();
    assert_eq!(u.result.unwrap()["k"], ResultValue::S("x".into()));
}

#[test]
fn client_token_rules_and_cbor_keys() {
    let with = |t: Json| parse_json(json!({"status": "SUCCEEDED", "clientToken": t}));
    assert_eq!(
        with(json!("~!tok")).unwrap().client_token.as_deref(),
        Some("~!tok")
    );
    assert!(with(json!("t".repeat(64))).is_ok());
    assert_invalid(with(json!("t".repeat(65))), "clientToken", "1–64");
    assert_invalid(with(json!("")), "clientToken", "1–64");
    assert_invalid(with(json!("a b")), "clientToken", "printable ASCII");
    assert_invalid(with(json!(12)), "clientToken", "must be a string");

    let body = cbor_body(Cbor::Map(vec![
        (text("status"), text("SUCCEEDED")),
        (Cbor::Integer(1.into()), text("x")),
    ]));
    let err = parse_update(UpdateFormat::Cbor, &body).unwrap_err();
    assert_eq!(err.code, RejectionCode::InvalidRequest);
    assert!(err.message.contains("text strings"), "{}", err.message);
    let body = cbor_body(cmap(vec![
        ("status", text("SUCCEEDED")),
        (
            "result",
            Cbor::Map(vec![(
                Cbor::Bytes(vec![1]),
                cmap(vec![("b", Cbor::Bool(true))]),
            )]),
        ),
    ]));
    assert_invalid(
        parse_update(UpdateFormat::Cbor, &body),
        "result",
        "text strings",
    );
}

#[test]
fn peek_finds_the_token_of_a_bad_update() {
    let body = json_body(json!({"status": "NOPE", "clientToken": "c-9"}));
    assert!(parse_update(UpdateFormat::Json, &body).is_err());
    assert_eq!(
        peek_client_token(UpdateFormat::Json, &body).as_deref(),
        Some("c-9")
    );
    assert_eq!(peek_client_token(UpdateFormat::Json, b"{oops"), None);
    let bad_token = json_body(json!({"status": "SUCCEEDED", "clientToken": ""}));
    assert_eq!(peek_client_token(UpdateFormat::Json, &bad_token), None);
    let cbor = cbor_body(cmap(vec![("clientToken", text("c-3"))]));
    assert_eq!(
        peek_client_token(UpdateFormat::Cbor, &cbor).as_deref(),
        Some("c-3")
    );
}

fn decode_cbor(bytes: &[u8]) -> Cbor {
    ciborium::de::from_reader(bytes).unwrap()
}

#[test]
fn accepted_replies_in_both_formats() {
    let id = ExecutionId::parse("e-1").unwrap();
    let v: Json = serde_json::from_slice(&encode_accepted(UpdateFormat::Json, &id, None)).unwrap();
    assert_eq!(v, json!({"executionId": "e-1"}));
    let v: Json =
        serde_json::from_slice(&encode_accepted(UpdateFormat::Json, &id, Some("t"))).unwrap();
    assert_eq!(v, json!({"executionId": "e-1", "clientToken": "t"}));
    let c = decode_cbor(&encode_accepted(UpdateFormat::Cbor, &id, Some("t")));
    assert_eq!(
        c,
        cmap(vec![
            ("executionId", text("e-1")),
            ("clientToken", text("t"))
        ])
    );
    let c = decode_cbor(&encode_accepted(UpdateFormat::Cbor, &id, None));
    assert_eq!(c, cmap(vec![("executionId", text("e-1"))]));
}

#[test]
fn rejected_replies_carry_the_device_code() {
    let r = Rejection::new(RejectionCode::TerminalStateReached, "already SUCCEEDED");
    let v: Json =
        serde_json::from_slice(&encode_rejected(UpdateFormat::Json, "e-1", Some("t"), &r)).unwrap();
    assert_eq!(
        v,
        json!({"error": "TerminalStateReached", "errorMessage": "already SUCCEEDED", "executionId": "e-1", "clientToken": "t"})
    );
    let hidden = Rejection::new(RejectionCode::PermissionDenied, "not yours");
    let v: Json =
        serde_json::from_slice(&encode_rejected(UpdateFormat::Json, "e-2", None, &hidden)).unwrap();
    assert_eq!(v["error"], "ResourceNotFound");
    assert!(v.get("clientToken").is_none());
    let throttled = Rejection::new(RejectionCode::QuotaExceeded, "slow down");
    let c = decode_cbor(&encode_rejected(
        UpdateFormat::Cbor,
        "e-3",
        None,
        &throttled,
    ));
    assert_eq!(
        c,
        cmap(vec![
            ("error", text("RequestThrottled")),
            ("errorMessage", text("slow down")),
            ("executionId", text("e-3")),
        ])
    );
    // The execution id of an unparsable topic may be anything; it is still encoded.
    let v: Json =
        serde_json::from_slice(&encode_rejected(UpdateFormat::Json, "bad\"id", None, &r)).unwrap();
    assert_eq!(v["executionId"], "bad\"id");
}

#[test]
fn status_events_have_the_reference_fields_plus_result() {
    let reason = reason("E_HOT", "");
    let mut result = BTreeMap::new();
    result.insert("log".to_string(), ResultValue::S("x".into()));
    result.insert("ok".to_string(), ResultValue::B(false));
    result.insert("raw".to_string(), ResultValue::Bin(vec![0xff, 0]));
    let event = StatusEvent {
        execution_id: "e-1",
        status: ExecutionStatus::Failed,
        status_reason: Some(&reason),
        command_arn: "arn:aws:iot:local:000000000000:command/reboot",
        target_arn: "arn:aws:iot:local:000000000000:thing/lamp",
        timestamp: 1_700_000_000_123,
        result: Some(&result),
    };
    let v: Json = serde_json::from_slice(&encode_status_event(&event)).unwrap();
    assert_eq!(
        v,
        json!({
            "executionId": "e-1",
            "status": "FAILED",
            "statusReason": {"reasonCode": "E_HOT"},
            "eventType": "COMMAND_EXECUTION",
            "commandArn": "arn:aws:iot:local:000000000000:command/reboot",
            "targetArn": "arn:aws:iot:local:000000000000:thing/lamp",
            "timestamp": 1_700_000_000_123_i64,
            "result": {"log": {"s": "x"}, "ok": {"b": false}, "raw": {"bin": "/wA="}}
        })
    );
    assert!(v["timestamp"].is_i64());
    let bare = StatusEvent {
        status: ExecutionStatus::Created,
        status_reason: None,
        result: None,
        ..event
    };
    let v: Json = serde_json::from_slice(&encode_status_event(&bare)).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 6);
    assert!(v.get("statusReason").is_none() && v.get("result").is_none());
    assert_eq!(v["status"], "CREATED");
}

#[test]
fn cancel_notice() {
    let id = ExecutionId::parse("e-9").unwrap();
    let v: Json = serde_json::from_slice(&encode_cancel_notice(&id, None)).unwrap();
    assert_eq!(v, json!({"executionId": "e-9", "status": "CANCELED"}));
    let r = reason("$CANCELED", "operator request");
    let v: Json = serde_json::from_slice(&encode_cancel_notice(&id, Some(&r))).unwrap();
    assert_eq!(
        v,
        json!({"executionId": "e-9", "status": "CANCELED", "statusReason": {"reasonCode": "$CANCELED", "reasonDescription": "operator request"}})
    );
}

fn any_update() -> impl Strategy<Value = DeviceUpdate> {
    let status = prop::sample::select(vec![
        ExecutionStatus::Created,
        ExecutionStatus::InProgress,
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
        ExecutionStatus::Rejected,
        ExecutionStatus::TimedOut,
    ]);
    let reason =
        prop::option::of(
            ("[A-Z0-9_-]{1,64}", "[^\\p{C}]{0,40}").prop_map(|(c, d)| StatusReason {
                reason_code: c,
                reason_description: d,
            }),
        );
    let value = prop_oneof![
        ".{0,40}".prop_map(ResultValue::S),
        any::<bool>().prop_map(ResultValue::B),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(ResultValue::Bin),
    ];
    let result = prop::option::of(prop::collection::btree_map(
        "[a-zA-Z0-9_-]{1,32}",
        value,
        1..8,
    ));
    let token = prop::option::of("[!-~]{1,64}");
    (status, reason, result, token).prop_map(|(status, status_reason, result, client_token)| {
        DeviceUpdate {
            status,
            status_reason,
            result,
            client_token,
        }
    })
}

#[test]
fn refusals_quote_huge_members_cut() {
    let huge = "Q".repeat(100_000);
    let e = parse_json(json!({ "status": huge })).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("status"));
    assert!(e.message.contains("(100000 characters)"), "{}", e.message);
    assert!(e.message.len() < 300, "{}", e.message.len());

    let e = parse_json(json!({ "status": "SUCCEEDED", "result": { huge.clone(): { "s": "x" } } }))
        .unwrap_err();
    assert!(
        e.field.as_deref().is_some_and(|f| f.len() < 100),
        "{:?}",
        e.field
    );

    // Many members in a result value: a few are named, the rest counted.
    let members: serde_json::Map<String, Json> = (0..1_000)
        .map(|i| (format!("{i}{}", "k".repeat(100)), json!(1)))
        .collect();
    let e = parse_json(json!({ "status": "SUCCEEDED", "result": { "log": members } })).unwrap_err();
    assert!(e.message.contains("and 995 more"), "{}", e.message);
    assert!(e.message.len() < 1_000, "{}", e.message.len());
    let e = parse_json(json!({ "status": "SUCCEEDED", "result": { "log": { huge.clone(): 1 } } }))
        .unwrap_err();
    assert!(e.message.len() < 300, "{}", e.message.len());
}

proptest! {
    #[test]
    fn updates_round_trip_in_both_formats(u in any_update()) {
        for format in [UpdateFormat::Json, UpdateFormat::Cbor] {
            let body = encode_update(format, &u);
            prop_assert_eq!(&parse_update(format, &body).unwrap(), &u);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), cbor in any::<bool>()) {
        let format = if cbor { UpdateFormat::Cbor } else { UpdateFormat::Json };
        if let Err(e) = parse_update(format, &body) {
            prop_assert!(matches!(e.code, RejectionCode::InvalidJson | RejectionCode::InvalidRequest));
        }
    }

    #[test]
    fn replies_round_trip(message in ".{0,80}", token in prop::option::of("[!-~]{1,64}"), cbor in any::<bool>()) {
        let format = if cbor { UpdateFormat::Cbor } else { UpdateFormat::Json };
        let r = Rejection::new(RejectionCode::InvalidStateTransition, message.clone());
        let bytes = encode_rejected(format, "e-1", token.as_deref(), &r);
        let decoded: BTreeMap<String, String> = match format {
            UpdateFormat::Json => serde_json::from_slice(&bytes).unwrap(),
            UpdateFormat::Cbor => ciborium::de::from_reader(bytes.as_slice()).unwrap(),
        };
        prop_assert_eq!(decoded.get("error").map(String::as_str), Some("InvalidStateTransition"));
        prop_assert_eq!(decoded.get("errorMessage"), Some(&message));
        prop_assert_eq!(decoded.get("executionId").map(String::as_str), Some("e-1"));
        prop_assert_eq!(decoded.get("clientToken"), token.as_ref());
        // A device that echoes our reply back as an update gets a precise refusal.
        let err = parse_update(format, &bytes).unwrap_err();
        prop_assert_eq!(err.field.as_deref(), Some("status"));
    }
}
