//! In-process gRPC round trips against a real `fleetcmd serve`: every method of
//! `CommandRegistry` and `CommandDispatcher`, their success paths and every error code they can
//! return (code, message naming the field or limit, and no change left behind), plus health,
//! reflection and the serve-time access-control guard.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Server, client, static_json_command, temp_data_dir, test_args, thing};
use pb::ExecutionStatus as St;
use tonic::Code;

type Result = anyhow::Result<()>;

const ARN_PREFIX: &str = "arn:aws:iot:local:000000000000:";

// =============================================================================================
// Health and reflection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() -> Result {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let server = Server::start("health").await?;
    let channel = channel(&server).await?;

    let mut health = HealthClient::new(channel.clone());
    for service in [
        "",
        "fleetcmd.v1.CommandRegistry",
        "fleetcmd.v1.CommandDispatcher",
    ] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "health of {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.v1.Nothing".into(),
        })
        .await;
    expect_code(unknown, Code::NotFound, &[]);

    let mut reflection = ServerReflectionClient::new(channel);
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "fleetcmd.v1.CommandDispatcher".into(),
        )),
    ];
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(requests))
        .await?
        .into_inner();
    let mut answers: Vec<ServerReflectionResponse> = Vec::new();
    for _ in 0..2 {
        let answer = tokio::time::timeout(WAIT, stream.message()).await??;
        answers.push(answer.ok_or_else(|| anyhow::anyhow!("reflection stream ended"))?);
    }
    let mut answers = answers.into_iter();
    match answers.next().and_then(|a| a.message_response) {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
            for expected in [
                "fleetcmd.v1.CommandRegistry",
                "fleetcmd.v1.CommandDispatcher",
                "grpc.health.v1.Health",
            ] {
                assert!(
                    names.contains(&expected),
                    "{expected} missing from {names:?}"
                );
            }
        }
        other => panic!("expected a service list, got {other:?}"),
    }
    match answers.next().and_then(|a| a.message_response) {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            let all: Vec<u8> = files.file_descriptor_proto.concat();
            let text = String::from_utf8_lossy(&all);
            for symbol in [
                "CommandDispatcher",
                "StartCommandExecution",
                "CancelCommandExecution",
            ] {
                assert!(
                    text.contains(symbol),
                    "{symbol} missing from the descriptor"
                );
            }
        }
        other => panic!("expected a file descriptor, got {other:?}"),
    }
    stop(server).await?;
    Ok(())
}

// =============================================================================================
// Commands: create and get

fn level_parameter() -> pb::CommandParameter {
    pb::CommandParameter {
        default_value: Some(pv_i(50)),
        value_conditions: vec![condition(
            pb::ComparisonOperator::InRange,
            op_range("0", "100"),
        )],
        description: "brightness in percent".into(),
        ..param("level", pb::ParameterType::Integer)
    }
}

/// One parameter of every type, with the conditions each type allows.
fn every_type_parameters() -> Vec<pb::CommandParameter> {
    use pb::ComparisonOperator as Op;
    use pb::ParameterType as T;
    vec![
        level_parameter(),
        pb::CommandParameter {
            default_value: Some(pv_s("eco")),
            value_conditions: vec![condition(Op::InSet, op_strings(&["eco", "boost"]))],
            ..param("mode", T::String)
        },
        pb::CommandParameter {
            default_value: Some(pv_b(true)),
            ..param("flag", T::Boolean)
        },
        pb::CommandParameter {
            default_value: Some(pv_d(0.5)),
            value_conditions: vec![condition(Op::LessThan, op_number("1.5"))],
            ..param("ratio", T::Double)
        },
        pb::CommandParameter {
            default_value: Some(pv_l(-7)),
            value_conditions: vec![condition(Op::NotInSet, op_numbers(&["1", "2"]))],
            ..param("count", T::Long)
        },
        pb::CommandParameter {
            default_value: Some(pv_ul("18446744073709551615")),
            value_conditions: vec![condition(Op::GreaterThanEquals, op_number("1"))],
            ..param("big", T::Unsignedlong)
        },
        pb::CommandParameter {
            default_value: Some(pv_bin(b"\x00\x01")),
            ..param("blob", T::Binary)
        },
        // A fixed value overrides the default (a value given at start still wins).
        pb::CommandParameter {
            value: Some(pv_s("v1")),
            ..param("version", T::String)
        },
    ]
}

fn every_type_template() -> String {
    let mut fields: Vec<String> = [
        "level", "mode", "flag", "ratio", "count", "big", "blob", "version",
    ]
    .iter()
    .map(|n| format!("\"{n}\": \"{}\"", placeholder(n)))
    .collect();
    fields.push(format!("\"timeout\": \"{TIMEOUT_PLACEHOLDER}\""));
    format!("{{{}}}", fields.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_get_returns_every_field() -> Result {
    let server = Server::start("create-get").await?;
    let mut reg = server.registry().await?;
    let before = now_ms();

    // A static JSON command with every optional field.
    let mut req = static_json_command("reboot", r#"{"action":"reboot"}"#);
    req.display_name = "Reboot".into();
    req.description = "Reboots the device — gently".into();
    req.tags = HashMap::from([
        ("team".into(), "ops".into()),
        ("empty".into(), String::new()),
    ]);
    let created = reg.create_command(req.clone()).await?.into_inner();
    assert_eq!(created.command_id, "reboot");
    assert_eq!(created.command_arn, format!("{ARN_PREFIX}command/reboot"));
    // Read-your-writes: Get right after Create.
    let c = get_command(&mut reg, "reboot").await?;
    let after = now_ms();
    assert_eq!(
        (c.command_id.as_str(), c.command_arn.as_str()),
        ("reboot", created.command_arn.as_str())
    );
    assert_eq!(c.namespace, "AWS-IoT");
    assert_eq!(
        (c.display_name.as_str(), c.description.as_str()),
        ("Reboot", "Reboots the device — gently")
    );
    assert_eq!(c.payload, req.payload);
    assert!(
        c.payload_template.is_empty()
            && c.preprocessor.is_none()
            && c.mandatory_parameters.is_empty()
    );
    assert_eq!(c.tags, req.tags);
    let created_at = ms(&c.created_at);
    assert!(
        (before..=after).contains(&created_at),
        "{before} <= {created_at} <= {after}"
    );
    assert_eq!(c.last_updated_at, c.created_at);
    assert!(!c.deprecated && !c.pending_deletion && c.deletion_scheduled_at.is_none());

    // A static payload without a content type gets application/octet-stream.
    let raw = pb::CreateCommandRequest {
        command_id: "raw".into(),
        payload: Some(pb::Payload {
            content: vec![0xde, 0xad],
            content_type: String::new(),
        }),
        ..Default::default()
    };
    reg.create_command(raw).await?;
    let c = get_command(&mut reg, "raw").await?;
    assert_eq!(
        c.payload,
        Some(pb::Payload {
            content: vec![0xde, 0xad],
            content_type: "application/octet-stream".into()
        })
    );

    // Templates: JSON and CBOR output, parameters of every type kept exactly.
    for (id, format) in [
        ("tpl-json", pb::OutputFormat::Json),
        ("tpl-cbor", pb::OutputFormat::Cbor),
    ] {
        let req = template_command(id, &every_type_template(), every_type_parameters(), format);
        let created = reg.create_command(req.clone()).await?.into_inner();
        assert_eq!(created.command_arn, format!("{ARN_PREFIX}command/{id}"));
        let c = get_command(&mut reg, id).await?;
        assert!(c.payload.is_none(), "{id}");
        assert_eq!(c.payload_template, req.payload_template, "{id}");
        assert_eq!(c.preprocessor, req.preprocessor, "{id}");
        assert_eq!(c.mandatory_parameters, req.mandatory_parameters, "{id}");
    }
    // Without a preprocessor a template renders to JSON.
    let mut req = template_command(
        "tpl-default",
        &format!("{{\"t\": \"{TIMEOUT_PLACEHOLDER}\"}}"),
        vec![],
        pb::OutputFormat::Json,
    );
    req.preprocessor = None;
    reg.create_command(req).await?;
    let c = get_command(&mut reg, "tpl-default").await?;
    assert_eq!(
        c.preprocessor
            .and_then(|p| p.aws_json_substitution)
            .map(|s| s.output_format),
        Some(pb::OutputFormat::Json as i32)
    );

    // Starting the template resolves fixed values, defaults and given values.
    let mut disp = server.dispatcher().await?;
    let mut start = start_request("tpl-cbor", thing("lamp-1"));
    start.parameters = HashMap::from([("level".into(), pv_i(80)), ("mode".into(), pv_s("boost"))]);
    let id = disp
        .start_command_execution(start)
        .await?
        .into_inner()
        .execution_id;
    let e = get_execution(&mut reg, &id).await?;
    assert_eq!(
        e.parameters.get("level"),
        Some(&pv_i(80)),
        "the given value wins over the default"
    );
    assert_eq!(e.parameters.get("mode"), Some(&pv_s("boost")));
    assert_eq!(
        e.parameters.get("version"),
        Some(&pv_s("v1")),
        "the fixed value, none was given"
    );
    assert_eq!(
        e.parameters.get("count"),
        Some(&pv_l(-7)),
        "the default, none was given"
    );
    assert_eq!(
        e.parameters.get("big"),
        Some(&pv_ul("18446744073709551615"))
    );
    assert_eq!(e.parameters.len(), 8);

    // ALREADY_EXISTS on a duplicate id, and the first command is untouched.
    let mut dup = static_json_command("reboot", r#"{"other":true}"#);
    dup.display_name = "Impostor".into();
    let s = expect_code(
        reg.create_command(dup).await,
        Code::AlreadyExists,
        &["reboot", "already exists"],
    );
    assert_eq!(error_reason(&s).as_deref(), Some("CONFLICT"));
    let c = get_command(&mut reg, "reboot").await?;
    assert_eq!(
        (c.display_name.as_str(), c.payload.map(|p| p.content)),
        ("Reboot", Some(br#"{"action":"reboot"}"#.to_vec()))
    );

    // NOT_FOUND and INVALID_ARGUMENT on Get.
    expect_code(
        get_command(&mut reg, "ghost")
            .await
            .map(tonic::Response::new),
        Code::NotFound,
        &["ghost"],
    );
    expect_invalid(
        get_command(&mut reg, "a/b").await.map(tonic::Response::new),
        "command_id",
        &["[a-zA-Z0-9_-]+"],
    );
    expect_invalid(
        get_command(&mut reg, "").await.map(tonic::Response::new),
        "command_id",
        &["empty"],
    );
    stop(server).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_command_enforces_every_limit() -> Result {
    use pb::ComparisonOperator as Op;
    use pb::ParameterType as T;
    let server = Server::start("create-limits").await?;
    let mut reg = server.registry().await?;

    let stat = |id: &str| static_json_command(id, "{}");
    // A valid template using only the timeout placeholder, so any parameter list fits it.
    let tpl = |params: Vec<pb::CommandParameter>| {
        template_command(
            "c",
            &format!("{{\"t\": \"{TIMEOUT_PLACEHOLDER}\"}}"),
            params,
            pb::OutputFormat::Json,
        )
    };
    let with_default = |ty: T, v: pb::ParameterValue| {
        vec![pb::CommandParameter {
            default_value: Some(v),
            ..param("p", ty)
        }]
    };
    let with_condition = |ty: T, c: pb::ValueCondition| {
        vec![pb::CommandParameter {
            value_conditions: vec![c],
            ..param("p", ty)
        }]
    };
    let padded_template = |len: usize| {
        let head = format!("{{\"t\": \"{TIMEOUT_PLACEHOLDER}\", \"pad\": \"");
        let tail = "\"}";
        format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
    };
    let many_tags = |n: usize| {
        (0..n)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect::<HashMap<_, _>>()
    };

    let cases: Vec<(&str, pb::CreateCommandRequest, &str, Vec<&str>)> = vec![
        (
            "empty id",
            stat(""),
            "command_id",
            vec!["must not be empty"],
        ),
        (
            "65-char id",
            stat(&"a".repeat(65)),
            "command_id",
            vec!["64"],
        ),
        (
            "id with a slash",
            stat("a/b"),
            "command_id",
            vec!["[a-zA-Z0-9_-]+", "'/'"],
        ),
        (
            "id with a space",
            stat("a b"),
            "command_id",
            vec!["[a-zA-Z0-9_-]+"],
        ),
        (
            "display name of 65",
            pb::CreateCommandRequest {
                display_name: "d".repeat(65),
                ..stat("c")
            },
            "display_name",
            vec!["64"],
        ),
        (
            "control char in display name",
            pb::CreateCommandRequest {
                display_name: "bell\u{7}".into(),
                ..stat("c")
            },
            "display_name",
            vec!["control"],
        ),
        (
            "description of 2029",
            pb::CreateCommandRequest {
                description: "d".repeat(2029),
                ..stat("c")
            },
            "description",
            vec!["2028"],
        ),
        (
            "control char in description",
            pb::CreateCommandRequest {
                description: "a\nb".into(),
                ..stat("c")
            },
            "description",
            vec!["control"],
        ),
        (
            "payload of 32 KB + 1",
            pb::CreateCommandRequest {
                payload: Some(pb::Payload {
                    content: vec![b'x'; 32 * 1024 + 1],
                    content_type: "text/plain".into(),
                }),
                ..stat("c")
            },
            "payload.content",
            vec!["32768", "32769"],
        ),
        (
            "content type that is not a MIME type",
            pb::CreateCommandRequest {
                payload: Some(pb::Payload {
                    content: b"x".to_vec(),
                    content_type: "nonsense".into(),
                }),
                ..stat("c")
            },
            "payload.content_type",
            vec!["type/subtype", "nonsense"],
        ),
        (
            "neither payload nor template",
            pb::CreateCommandRequest {
                command_id: "c".into(),
                ..Default::default()
            },
            "payload",
            vec!["required"],
        ),
        (
            "payload and template",
            pb::CreateCommandRequest {
                payload: stat("c").payload,
                ..tpl(vec![])
            },
            "payload",
            vec!["not both"],
        ),
        (
            "FleetWise namespace",
            pb::CreateCommandRequest {
                namespace: "AWS-IoT-FleetWise".into(),
                ..stat("c")
            },
            "namespace",
            vec!["AWS-IoT", "FleetWise"],
        ),
        (
            "parameters on a static command",
            pb::CreateCommandRequest {
                mandatory_parameters: vec![param("p", T::String)],
                ..stat("c")
            },
            "mandatory_parameters",
            vec!["payload_template"],
        ),
        (
            "preprocessor on a static command",
            pb::CreateCommandRequest {
                preprocessor: tpl(vec![]).preprocessor,
                ..stat("c")
            },
            "preprocessor",
            vec!["payload_template"],
        ),
        (
            "template of 32,769 chars",
            pb::CreateCommandRequest {
                payload_template: padded_template(32_769),
                ..tpl(vec![])
            },
            "payload_template",
            vec!["32768", "32769"],
        ),
        (
            "template that is not JSON",
            pb::CreateCommandRequest {
                payload_template: format!("{{\"t\": \"{TIMEOUT_PLACEHOLDER}\""),
                ..tpl(vec![])
            },
            "payload_template",
            vec!["valid JSON"],
        ),
        (
            "template with duplicate keys",
            pb::CreateCommandRequest {
                payload_template: format!("{{\"t\": \"{TIMEOUT_PLACEHOLDER}\", \"t\": 1}}"),
                ..tpl(vec![])
            },
            "payload_template",
            vec!["duplicate"],
        ),
        (
            "template without placeholder",
            pb::CreateCommandRequest {
                payload_template: r#"{"a": 1}"#.into(),
                ..tpl(vec![])
            },
            "payload_template",
            vec!["at least one placeholder"],
        ),
        (
            "placeholder of an undeclared parameter",
            pb::CreateCommandRequest {
                payload_template: format!("{{\"a\": \"{}\"}}", placeholder("ghost")),
                ..tpl(vec![param("p", T::String)])
            },
            "payload_template",
            vec!["ghost", "no declared parameter"],
        ),
        (
            "unknown placeholder",
            pb::CreateCommandRequest {
                payload_template: r#"{"a": "${aws:iot:commandexecution::nonsense}"}"#.into(),
                ..tpl(vec![])
            },
            "payload_template",
            vec!["unknown placeholder"],
        ),
        (
            "unterminated placeholder",
            pb::CreateCommandRequest {
                payload_template: r#"{"a": "${aws:iot:commandexecution::parameter:p"}"#.into(),
                ..tpl(vec![param("p", T::String)])
            },
            "payload_template",
            vec!["unterminated"],
        ),
        (
            "unknown output format",
            pb::CreateCommandRequest {
                preprocessor: Some(pb::Preprocessor {
                    aws_json_substitution: Some(pb::AwsJsonSubstitution { output_format: 9 }),
                }),
                ..tpl(vec![])
            },
            "preprocessor.aws_json_substitution.output_format",
            vec!["JSON, CBOR"],
        ),
        (
            "empty parameter name",
            tpl(vec![param("", T::String)]),
            "mandatory_parameters[0].name",
            vec!["1–192"],
        ),
        (
            "parameter name of 193",
            tpl(vec![param(&"p".repeat(193), T::String)]),
            "mandatory_parameters[0].name",
            vec!["192", "193"],
        ),
        (
            "parameter name with a space",
            tpl(vec![param("a b", T::String)]),
            "mandatory_parameters[0].name",
            vec!["^[.$a-zA-Z0-9_-]+$"],
        ),
        (
            "duplicate parameter names",
            tpl(vec![param("p", T::String), param("p", T::Integer)]),
            "mandatory_parameters[1].name",
            vec!["duplicate", "mandatory_parameters[0]"],
        ),
        (
            "unspecified parameter type",
            tpl(vec![param("p", T::Unspecified)]),
            "mandatory_parameters[0].type",
            vec!["INTEGER", "UNSIGNEDLONG"],
        ),
        (
            "parameter description of 2029",
            tpl(vec![pb::CommandParameter {
                description: "d".repeat(2029),
                ..param("p", T::String)
            }]),
            "mandatory_parameters[0].description",
            vec!["2028"],
        ),
        (
            "default of the wrong type",
            tpl(with_default(T::Integer, pv_s("5"))),
            "mandatory_parameters[0].default_value",
            vec!["INTEGER", "STRING"],
        ),
        (
            "fixed value of the wrong type",
            tpl(vec![pb::CommandParameter {
                value: Some(pv_b(true)),
                ..param("p", T::Long)
            }]),
            "mandatory_parameters[0].value",
            vec!["LONG", "BOOLEAN"],
        ),
        (
            "empty STRING default",
            tpl(with_default(T::String, pv_s(""))),
            "mandatory_parameters[0].default_value",
            vec!["at least 1 character"],
        ),
        (
            "empty BINARY default",
            tpl(with_default(T::Binary, pv_bin(b""))),
            "mandatory_parameters[0].default_value",
            vec!["at least 1 byte"],
        ),
        (
            "NaN DOUBLE default",
            tpl(with_default(T::Double, pv_d(f64::NAN))),
            "mandatory_parameters[0].default_value",
            vec!["finite"],
        ),
        (
            "UL default that is not digits",
            tpl(with_default(T::Unsignedlong, pv_ul("-1"))),
            "mandatory_parameters[0].default_value.ul",
            vec!["1–20 digits"],
        ),
        (
            "UL default above u64",
            tpl(with_default(T::Unsignedlong, pv_ul("18446744073709551616"))),
            "mandatory_parameters[0].default_value.ul",
            vec!["18446744073709551615"],
        ),
        (
            "empty default value",
            tpl(with_default(T::Integer, pb::ParameterValue { value: None })),
            "mandatory_parameters[0].default_value",
            vec!["exactly one of"],
        ),
        (
            "default outside its condition",
            tpl(vec![pb::CommandParameter {
                default_value: Some(pv_i(120)),
                ..level_parameter()
            }]),
            "mandatory_parameters[0].default_value",
            vec!["120", "does not satisfy", "IN_RANGE"],
        ),
        (
            "condition on a BOOLEAN",
            tpl(with_condition(
                T::Boolean,
                condition(Op::Equals, op_string("true")),
            )),
            "mandatory_parameters[0].value_conditions[0].operator",
            vec!["BOOLEAN", "no value conditions"],
        ),
        (
            "condition on a BINARY",
            tpl(with_condition(
                T::Binary,
                condition(Op::Equals, op_string("x")),
            )),
            "mandatory_parameters[0].value_conditions[0].operator",
            vec!["BINARY"],
        ),
        (
            "LESS_THAN on a STRING",
            tpl(with_condition(
                T::String,
                condition(Op::LessThan, op_number("3")),
            )),
            "mandatory_parameters[0].value_conditions[0].operator",
            vec!["LESS_THAN", "STRING"],
        ),
        (
            "IN_SET with 11 operands",
            tpl(with_condition(
                T::Integer,
                condition(
                    Op::InSet,
                    op_numbers(&["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"]),
                ),
            )),
            "mandatory_parameters[0].value_conditions[0].operand",
            vec!["1–10", "11"],
        ),
        (
            "IN_SET with no operand",
            tpl(with_condition(
                T::String,
                condition(Op::InSet, op_strings(&[])),
            )),
            "mandatory_parameters[0].value_conditions[0].operand",
            vec!["1–10", "0"],
        ),
        (
            "inverted range",
            tpl(with_condition(
                T::Integer,
                condition(Op::InRange, op_range("10", "1")),
            )),
            "mandatory_parameters[0].value_conditions[0].operand",
            vec!["greater than"],
        ),
        (
            "operand that is not a number",
            tpl(with_condition(
                T::Integer,
                condition(Op::Equals, op_number("abc")),
            )),
            "mandatory_parameters[0].value_conditions[0].operand",
            vec!["not a valid INTEGER number"],
        ),
        (
            "operand beyond INTEGER",
            tpl(with_condition(
                T::Integer,
                condition(Op::Equals, op_number("3000000000")),
            )),
            "mandatory_parameters[0].value_conditions[0].operand",
            vec!["INTEGER"],
        ),
        (
            "number operand on a STRING EQUALS",
            tpl(with_condition(
                T::String,
                condition(Op::Equals, op_number("3")),
            )),
            "mandatory_parameters[0].value_conditions[0].operand",
            vec!["a string"],
        ),
        (
            "unspecified operator",
            tpl(with_condition(
                T::Integer,
                condition(Op::Unspecified, op_number("3")),
            )),
            "mandatory_parameters[0].value_conditions[0].comparison_operator",
            vec!["IN_RANGE"],
        ),
        (
            "missing operand",
            tpl(vec![pb::CommandParameter {
                value_conditions: vec![pb::ValueCondition {
                    comparison_operator: Op::Equals as i32,
                    operand: None,
                }],
                ..param("p", T::Integer)
            }]),
            "mandatory_parameters[0].value_conditions[0].operand",
            vec!["required"],
        ),
        (
            "empty tag key",
            pb::CreateCommandRequest {
                tags: HashMap::from([(String::new(), "v".into())]),
                ..stat("c")
            },
            "tags",
            vec!["1–128"],
        ),
        (
            "tag key of 129",
            pb::CreateCommandRequest {
                tags: HashMap::from([("k".repeat(129), "v".into())]),
                ..stat("c")
            },
            "tags",
            vec!["128"],
        ),
        (
            "tag value of 257",
            pb::CreateCommandRequest {
                tags: HashMap::from([("k".into(), "v".repeat(257))]),
                ..stat("c")
            },
            "tags",
            vec!["256"],
        ),
        (
            "51 tags",
            pb::CreateCommandRequest {
                tags: many_tags(51),
                ..stat("c")
            },
            "tags",
            vec!["50"],
        ),
    ];
    for (label, req, field, needles) in cases {
        let id = req.command_id.clone();
        let status = expect_invalid(reg.create_command(req).await, field, &needles);
        assert!(
            status.message().starts_with(&format!("invalid {field}: ")),
            "{label}: {}",
            status.message()
        );
        // Nothing was created.
        if id == "c" {
            assert_no_command(&mut reg, "c").await;
        }
    }
    let (listed, _) = list_all_commands(&mut reg, pb::ListCommandsRequest::default()).await?;
    assert!(
        listed.is_empty(),
        "failed creates left commands behind: {listed:?}"
    );

    // Every limit is inclusive: exactly at the limit is accepted and kept.
    let at_limits = pb::CreateCommandRequest {
        display_name: "d".repeat(64),
        description: "é".repeat(2028),
        payload: Some(pb::Payload {
            content: vec![b'x'; 32 * 1024],
            content_type: "text/plain; charset=utf-8".into(),
        }),
        tags: {
            let mut t = many_tags(49);
            t.insert("k".repeat(128), "v".repeat(256));
            t
        },
        ..stat(&"a".repeat(64))
    };
    reg.create_command(at_limits.clone()).await?;
    let c = get_command(&mut reg, &"a".repeat(64)).await?;
    assert_eq!(
        (c.display_name, c.description, c.payload, c.tags),
        (
            at_limits.display_name,
            at_limits.description,
            at_limits.payload,
            at_limits.tags
        )
    );

    let long_name = "p".repeat(192);
    let ten: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
    let template = pb::CreateCommandRequest {
        payload_template: padded_template(32_768),
        mandatory_parameters: vec![pb::CommandParameter {
            value_conditions: vec![condition(Op::InSet, op_numbers(&ten))],
            description: "d".repeat(2028),
            ..param(&long_name, T::Integer)
        }],
        ..tpl(vec![])
    };
    reg.create_command(pb::CreateCommandRequest {
        command_id: "tpl-max".into(),
        ..template.clone()
    })
    .await?;
    let c = get_command(&mut reg, "tpl-max").await?;
    assert_eq!(c.payload_template.chars().count(), 32_768);
    assert_eq!(c.mandatory_parameters, template.mandatory_parameters);
    let (listed, _) = list_all_commands(
        &mut reg,
        pb::ListCommandsRequest {
            sort_order: pb::SortOrder::Ascending as i32,
            ..Default::default()
        },
    )
    .await?;
    let ids: Vec<&str> = listed.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(ids, vec!["a".repeat(64).as_str(), "tpl-max"]);
    stop(server).await?;
    Ok(())
}

// =============================================================================================
// Commands: list

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_commands_filters_sorts_and_pages() -> Result {
    let server = Server::start("list-commands").await?;
    let mut reg = server.registry().await?;
    // Seven commands; the template ones declare a parameter named "level".
    let mut created = Vec::new();
    for i in 0..7 {
        let id = format!("cmd-{i}");
        let req = if i % 3 == 0 {
            template_command(
                &id,
                &format!("{{\"l\": \"{}\"}}", placeholder("level")),
                vec![level_parameter()],
                pb::OutputFormat::Json,
            )
        } else {
            static_json_command(&id, "{}")
        };
        reg.create_command(pb::CreateCommandRequest {
            display_name: format!("Command {i}"),
            ..req
        })
        .await?;
        created.push(id);
    }

    // The default: descending by creation time, all fields of the summary.
    let page = reg
        .list_commands(pb::ListCommandsRequest::default())
        .await?
        .into_inner();
    assert!(page.next_token.is_empty());
    let desc: Vec<String> = page.commands.iter().map(|c| c.command_id.clone()).collect();
    let mut expected_desc = created.clone();
    expected_desc.reverse();
    assert_eq!(desc, expected_desc);
    for c in &page.commands {
        let full = get_command(&mut reg, &c.command_id).await?;
        assert_eq!(
            c.command_arn,
            format!("{ARN_PREFIX}command/{}", c.command_id)
        );
        assert_eq!(c.display_name, full.display_name);
        assert_eq!(
            (c.created_at, c.last_updated_at),
            (full.created_at, full.last_updated_at)
        );
        assert!(!c.deprecated && !c.pending_deletion);
    }
    let times: Vec<i64> = page.commands.iter().map(|c| ms(&c.created_at)).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "descending by creation: {times:?}"
    );

    let asc = |max_results: i32| pb::ListCommandsRequest {
        sort_order: pb::SortOrder::Ascending as i32,
        max_results,
        ..Default::default()
    };
    let (all_asc, _) = list_all_commands(&mut reg, asc(0)).await?;
    let asc_ids: Vec<String> = all_asc.iter().map(|c| c.command_id.clone()).collect();
    assert_eq!(asc_ids, created);
    let explicit_desc = pb::ListCommandsRequest {
        sort_order: pb::SortOrder::Descending as i32,
        ..Default::default()
    };
    let (all_desc, _) = list_all_commands(&mut reg, explicit_desc).await?;
    assert_eq!(
        all_desc
            .iter()
            .map(|c| c.command_id.clone())
            .collect::<Vec<_>>(),
        expected_desc
    );

    // Paging visits every command exactly once, in the same order, in both directions.
    for size in [1, 2, 3, 7, 100] {
        let (paged, pages) = list_all_commands(&mut reg, asc(size)).await?;
        assert_eq!(
            paged
                .iter()
                .map(|c| c.command_id.clone())
                .collect::<Vec<_>>(),
            created,
            "page size {size}"
        );
        assert_eq!(
            pages,
            7usize.div_ceil(size as usize),
            "pages for size {size}"
        );
        let (paged, _) = list_all_commands(
            &mut reg,
            pb::ListCommandsRequest {
                max_results: size,
                ..Default::default()
            },
        )
        .await?;
        assert_eq!(
            paged
                .iter()
                .map(|c| c.command_id.clone())
                .collect::<Vec<_>>(),
            expected_desc,
            "page size {size}, descending"
        );
    }
    let first = reg.list_commands(asc(3)).await?.into_inner();
    assert_eq!(first.commands.len(), 3);
    assert!(!first.next_token.is_empty());

    // Filter by parameter name (combined with paging), and by namespace.
    let by_param = pb::ListCommandsRequest {
        command_parameter_name: "level".into(),
        max_results: 1,
        ..asc(1)
    };
    let (with_level, pages) = list_all_commands(&mut reg, by_param).await?;
    assert_eq!(
        with_level
            .iter()
            .map(|c| c.command_id.as_str())
            .collect::<Vec<_>>(),
        vec!["cmd-0", "cmd-3", "cmd-6"]
    );
    assert_eq!(pages, 3);
    let none = pb::ListCommandsRequest {
        command_parameter_name: "nope".into(),
        ..Default::default()
    };
    assert!(
        reg.list_commands(none)
            .await?
            .into_inner()
            .commands
            .is_empty()
    );
    let ns = pb::ListCommandsRequest {
        namespace: "AWS-IoT".into(),
        ..Default::default()
    };
    assert_eq!(reg.list_commands(ns).await?.into_inner().commands.len(), 7);

    // INVALID_ARGUMENT: page size, sort order, page token.
    for bad in [101, -1] {
        expect_invalid(
            reg.list_commands(asc(bad)).await,
            "max_results",
            &["between 1 and 100", &bad.to_string()],
        );
    }
    let bad_sort = pb::ListCommandsRequest {
        sort_order: 7,
        ..Default::default()
    };
    expect_invalid(
        reg.list_commands(bad_sort).await,
        "sort_order",
        &["ASCENDING"],
    );
    for token in ["not a token!", "Zm9v"] {
        let bad = pb::ListCommandsRequest {
            next_token: token.into(),
            ..Default::default()
        };
        expect_code(
            reg.list_commands(bad).await,
            Code::InvalidArgument,
            &["next_token"],
        );
    }
    stop(server).await?;
    Ok(())
}

// =============================================================================================
// Commands: update, deprecate, restore

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_only_names_and_deprecation() -> Result {
    let server = Server::start("update").await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    reg.create_command(pb::CreateCommandRequest {
        display_name: "Reboot".into(),
        ..static_json_command("reboot", "{}")
    })
    .await?;
    let created = get_command(&mut reg, "reboot").await?;
    let update = |display_name: Option<&str>,
                  description: Option<&str>,
                  deprecated: Option<bool>| pb::UpdateCommandRequest {
        command_id: "reboot".into(),
        display_name: display_name.map(Into::into),
        description: description.map(Into::into),
        deprecated,
    };

    let r = reg
        .update_command(update(Some("Restart"), Some("Restarts it"), None))
        .await?
        .into_inner();
    assert_eq!(
        (
            r.command_id.as_str(),
            r.display_name.as_str(),
            r.description.as_str(),
            r.deprecated
        ),
        ("reboot", "Restart", "Restarts it", false)
    );
    assert!(ms(&r.last_updated_at) >= ms(&created.created_at));
    let c = get_command(&mut reg, "reboot").await?;
    assert_eq!(
        (c.display_name.as_str(), c.description.as_str()),
        ("Restart", "Restarts it")
    );
    assert_eq!(
        (c.last_updated_at, c.created_at),
        (r.last_updated_at, created.created_at)
    );
    assert_eq!(c.payload, created.payload, "the payload never changes");

    // An empty string clears a text; an unset field is left alone.
    let r = reg
        .update_command(update(None, Some(""), None))
        .await?
        .into_inner();
    assert_eq!(
        (r.display_name.as_str(), r.description.as_str()),
        ("Restart", "")
    );

    // INVALID_ARGUMENT, and nothing changed.
    let before = get_command(&mut reg, "reboot").await?;
    expect_invalid(
        reg.update_command(update(None, None, None)).await,
        "update",
        &["nothing to update"],
    );
    expect_invalid(
        reg.update_command(update(Some(&"n".repeat(65)), None, None))
            .await,
        "display_name",
        &["64"],
    );
    expect_invalid(
        reg.update_command(update(None, Some(&"n".repeat(2029)), None))
            .await,
        "description",
        &["2028"],
    );
    expect_invalid(
        reg.update_command(update(Some("tab\t"), None, None)).await,
        "display_name",
        &["control"],
    );
    let bad_id = pb::UpdateCommandRequest {
        command_id: "no such".into(),
        ..update(Some("x"), None, None)
    };
    expect_invalid(
        reg.update_command(bad_id).await,
        "command_id",
        &["[a-zA-Z0-9_-]+"],
    );
    assert_eq!(get_command(&mut reg, "reboot").await?, before);

    // NOT_FOUND.
    let ghost = pb::UpdateCommandRequest {
        command_id: "ghost".into(),
        ..update(Some("x"), None, None)
    };
    expect_code(reg.update_command(ghost).await, Code::NotFound, &["ghost"]);
    assert_no_command(&mut reg, "ghost").await;

    // Deprecate: readable, not startable, not editable except by restoring it.
    let r = reg
        .update_command(update(None, None, Some(true)))
        .await?
        .into_inner();
    assert!(r.deprecated);
    let deprecated = get_command(&mut reg, "reboot").await?;
    assert!(deprecated.deprecated && !deprecated.pending_deletion);
    assert!(
        ms(&deprecated.last_updated_at) >= ms(&before.last_updated_at),
        "the deprecation time shows in last_updated_at"
    );
    let s = expect_code(
        disp.start_command_execution(start_request("reboot", thing("t1")))
            .await,
        Code::FailedPrecondition,
        &["reboot", "deprecated"],
    );
    assert_eq!(error_reason(&s).as_deref(), Some("FAILED_PRECONDITION"));
    for edit in [
        update(Some("New"), None, None),
        update(None, Some("New"), None),
        update(Some("New"), None, Some(true)),
    ] {
        expect_code(
            reg.update_command(edit).await,
            Code::FailedPrecondition,
            &["deprecated", "restore"],
        );
    }
    assert_eq!(
        get_command(&mut reg, "reboot").await?,
        deprecated,
        "refused edits changed nothing"
    );
    let none = list_all_executions(&mut reg, pb::ListCommandExecutionsRequest::default())
        .await?
        .0;
    assert!(
        none.is_empty(),
        "a refused start created an execution: {none:?}"
    );
    // Deprecating again is allowed (no edit).
    assert!(
        reg.update_command(update(None, None, Some(true)))
            .await?
            .into_inner()
            .deprecated
    );

    // Restore, editing at the same time: startable again.
    let r = reg
        .update_command(update(Some("Reboot v2"), None, Some(false)))
        .await?
        .into_inner();
    assert_eq!(
        (r.display_name.as_str(), r.deprecated),
        ("Reboot v2", false)
    );
    let c = get_command(&mut reg, "reboot").await?;
    assert!(!c.deprecated);
    let summary = reg
        .list_commands(pb::ListCommandsRequest::default())
        .await?
        .into_inner()
        .commands;
    assert_eq!(
        (summary[0].display_name.as_str(), summary[0].deprecated),
        ("Reboot v2", false)
    );
    start(&mut disp, "reboot", thing("t1")).await?;
    stop(server).await?;
    Ok(())
}

// =============================================================================================
// Commands: delete

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_a_live_command_is_scheduled() -> Result {
    let server = Server::start("delete-scheduled").await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    reg.create_command(static_json_command("reboot", "{}"))
        .await?;
    reg.create_command(static_json_command("other", "{}"))
        .await?;
    let running = start(&mut disp, "reboot", thing("t1")).await?;

    let before = now_ms();
    let r = reg
        .delete_command(pb::DeleteCommandRequest {
            command_id: "reboot".into(),
        })
        .await?
        .into_inner();
    let after = now_ms();
    assert_eq!(r.status_code, 202);
    let at = ms(&r.deletion_scheduled_at);
    assert!(
        (before + 43_200_000..=after + 43_200_000).contains(&at),
        "scheduled 12 h ahead: {at}"
    );

    let c = get_command(&mut reg, "reboot").await?;
    assert!(c.pending_deletion && !c.deprecated);
    assert_eq!(c.deletion_scheduled_at, r.deletion_scheduled_at);
    let listed = reg
        .list_commands(pb::ListCommandsRequest::default())
        .await?
        .into_inner()
        .commands;
    let pending: Vec<(&str, bool)> = listed
        .iter()
        .map(|c| (c.command_id.as_str(), c.pending_deletion))
        .collect();
    assert_eq!(pending, vec![("other", false), ("reboot", true)]);

    // Pending deletion: no new executions, no updates, no re-create; running ones stay readable.
    expect_code(
        disp.start_command_execution(start_request("reboot", thing("t2")))
            .await,
        Code::FailedPrecondition,
        &["reboot", "pending deletion"],
    );
    let deprecate = pb::UpdateCommandRequest {
        command_id: "reboot".into(),
        deprecated: Some(true),
        ..Default::default()
    };
    expect_code(
        reg.update_command(deprecate).await,
        Code::FailedPrecondition,
        &["pending deletion"],
    );
    expect_code(
        reg.create_command(static_json_command("reboot", "{}"))
            .await,
        Code::AlreadyExists,
        &["reboot", "pending deletion"],
    );
    assert_eq!(
        get_command(&mut reg, "reboot").await?,
        c,
        "refused calls changed nothing"
    );
    assert_eq!(
        get_execution(&mut reg, &running).await?.status,
        St::Created as i32
    );
    let by_command = pb::ListCommandExecutionsRequest {
        command_id: "reboot".into(),
        ..Default::default()
    };
    assert_eq!(
        execution_ids(&list_all_executions(&mut reg, by_command).await?.0),
        vec![running.clone()]
    );

    // Deleting again is idempotent: same schedule.
    let again = reg
        .delete_command(pb::DeleteCommandRequest {
            command_id: "reboot".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (again.status_code, again.deletion_scheduled_at),
        (202, r.deletion_scheduled_at)
    );

    // NOT_FOUND and INVALID_ARGUMENT.
    expect_code(
        reg.delete_command(pb::DeleteCommandRequest {
            command_id: "ghost".into(),
        })
        .await,
        Code::NotFound,
        &["ghost"],
    );
    expect_invalid(
        reg.delete_command(pb::DeleteCommandRequest {
            command_id: "a.b".into(),
        })
        .await,
        "command_id",
        &["'.'"],
    );
    assert!(!get_command(&mut reg, "other").await?.pending_deletion);
    stop(server).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_the_deletion_wait() -> Result {
    let mut args = test_args("delete-wait");
    args.deletion_wait_secs = 1;
    let server = Server::start_with(args).await?;
    let mut reg = server.registry().await?;
    for id in ["old", "recent", "live"] {
        reg.create_command(static_json_command(id, "{}")).await?;
    }
    let deprecate = |id: &str| pb::UpdateCommandRequest {
        command_id: id.into(),
        deprecated: Some(true),
        ..Default::default()
    };
    let delete = |id: &str| pb::DeleteCommandRequest {
        command_id: id.into(),
    };

    reg.update_command(deprecate("old")).await?;
    let old_deprecated = Instant::now();
    reg.update_command(deprecate("recent")).await?;

    // Deprecated less than the wait ago, or not deprecated: scheduled.
    let mut scheduled = Vec::new();
    for id in ["recent", "live"] {
        let before = now_ms();
        let r = reg.delete_command(delete(id)).await?.into_inner();
        assert_eq!(r.status_code, 202, "{id}");
        let at = ms(&r.deletion_scheduled_at);
        assert!(
            (before + 1_000..=now_ms() + 1_000).contains(&at),
            "{id} scheduled one wait ahead: {at}"
        );
        assert!(get_command(&mut reg, id).await?.pending_deletion, "{id}");
        scheduled.push((id, at));
    }

    // Deprecated for longer than the wait: deleted at once. (Elapsed time is the rule under
    // test, so this is a real wait.)
    tokio::time::sleep_until((old_deprecated + Duration::from_millis(1_100)).into()).await;
    let r = reg.delete_command(delete("old")).await?.into_inner();
    assert_eq!((r.status_code, r.deletion_scheduled_at), (204, None));
    assert_no_command(&mut reg, "old").await;
    let listed = list_all_commands(&mut reg, pb::ListCommandsRequest::default())
        .await?
        .0;
    assert!(listed.iter().all(|c| c.command_id != "old"), "{listed:?}");
    expect_code(
        reg.delete_command(delete("old")).await,
        Code::NotFound,
        &["old"],
    );

    // The scheduled deletions happen by themselves, not before their time.
    for (id, at) in scheduled {
        let deadline = Instant::now() + WAIT;
        loop {
            match get_command(&mut reg, id).await {
                Err(s) if s.code() == Code::NotFound => {
                    assert!(now_ms() >= at, "{id} deleted before its scheduled time");
                    break;
                }
                Ok(c) => assert!(c.pending_deletion, "{id}"),
                Err(s) => return Err(s.into()),
            }
            assert!(
                Instant::now() < deadline,
                "{id} was not deleted within {WAIT:?} of its schedule"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let listed = list_all_commands(&mut reg, pb::ListCommandsRequest::default())
        .await?
        .0;
    assert!(listed.is_empty(), "{listed:?}");
    // The id is free again.
    reg.create_command(static_json_command("live", "{}"))
        .await?;
    assert!(!get_command(&mut reg, "live").await?.pending_deletion);
    stop(server).await?;
    Ok(())
}

// =============================================================================================
// Executions: start and get

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_then_get_execution() -> Result {
    let server = Server::start("start-get").await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    reg.create_command(static_json_command("reboot", "{}"))
        .await?;

    let before = now_ms();
    let req = pb::StartCommandExecutionRequest {
        execution_timeout_seconds: 0,
        client_token: "tok-1".into(),
        ..start_request("reboot", thing("lab-1:a"))
    };
    let id = disp
        .start_command_execution(req)
        .await?
        .into_inner()
        .execution_id;
    assert!(
        !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{id}"
    );
    // Read-your-writes: Get right after Start.
    let e = get_execution(&mut reg, &id).await?;
    let after = now_ms();
    assert_eq!(
        (e.execution_id.as_str(), e.command_id.as_str()),
        (id.as_str(), "reboot")
    );
    assert_eq!(e.command_arn, format!("{ARN_PREFIX}command/reboot"));
    assert_eq!(e.target, Some(thing("lab-1:a")));
    assert_eq!(e.target_arn, format!("{ARN_PREFIX}thing/lab-1:a"));
    assert_eq!(
        (e.status(), e.status_reason.clone(), e.terminal),
        (St::Created, None, false)
    );
    assert_eq!(e.execution_timeout_seconds, 10, "0 means the default, 10 s");
    assert_eq!(e.client_token, "tok-1");
    assert!(e.parameters.is_empty() && e.result.is_empty());
    let created = ms(&e.created_at);
    assert!((before..=after).contains(&created));
    assert_eq!(
        (e.started_at, e.last_updated_at),
        (e.created_at, e.created_at)
    );
    assert_eq!(e.completed_at, None);
    assert_eq!(
        ms(&e.time_to_live),
        created + 183 * 24 * 3600 * 1000,
        "kept six months"
    );

    // Clients are targets too; 43,200 s is the longest timeout.
    let req = pb::StartCommandExecutionRequest {
        execution_timeout_seconds: 43_200,
        ..start_request("reboot", client("dev.1@x"))
    };
    let id2 = disp
        .start_command_execution(req)
        .await?
        .into_inner()
        .execution_id;
    let e2 = get_execution(&mut reg, &id2).await?;
    assert_eq!(
        (e2.target, e2.target_arn.as_str()),
        (
            Some(client("dev.1@x")),
            format!("{ARN_PREFIX}client/dev.1@x").as_str()
        )
    );
    assert_eq!(e2.execution_timeout_seconds, 43_200);
    assert_ne!(id, id2);

    // The optional target must be the execution's.
    let get = |id: &str, target: Option<pb::Target>| pb::GetCommandExecutionRequest {
        execution_id: id.into(),
        target,
        include_result: false,
    };
    assert_eq!(
        reg.get_command_execution(get(&id, Some(thing("lab-1:a"))))
            .await?
            .into_inner()
            .execution_id,
        id
    );
    expect_code(
        reg.get_command_execution(get(&id, Some(thing("lab-2"))))
            .await,
        Code::NotFound,
        &[&id, "thing/lab-2"],
    );
    expect_code(
        reg.get_command_execution(get(&id, Some(client("lab-1:a"))))
            .await,
        Code::NotFound,
        &[&id],
    );
    expect_code(
        reg.get_command_execution(get("0190aaaa-0000-7000-8000-000000000000", None))
            .await,
        Code::NotFound,
        &["0190aaaa-0000-7000-8000-000000000000"],
    );
    expect_invalid(
        reg.get_command_execution(get("a/b", None)).await,
        "execution_id",
        &["[a-zA-Z0-9_-]+"],
    );
    expect_invalid(
        reg.get_command_execution(get("", None)).await,
        "execution_id",
        &["empty"],
    );
    expect_invalid(
        reg.get_command_execution(get(
            &id,
            Some(pb::Target {
                kind: 0,
                id: "x".into(),
            }),
        ))
        .await,
        "target.kind",
        &["THING, CLIENT"],
    );
    expect_invalid(
        reg.get_command_execution(get(
            &id,
            Some(pb::Target {
                kind: 5,
                id: "x".into(),
            }),
        ))
        .await,
        "target.kind",
        &["5"],
    );
    expect_invalid(
        reg.get_command_execution(get(&id, Some(thing("a/b"))))
            .await,
        "target.id",
        &["thing name"],
    );
    stop(server).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_rejects_every_bad_request() -> Result {
    use pb::ParameterType as T;
    let server = Server::start("start-errors").await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    reg.create_command(static_json_command("static", "{}"))
        .await?;
    let template = format!(
        "{{\"level\": \"{}\", \"mode\": \"{}\", \"n\": \"{}\"}}",
        placeholder("level"),
        placeholder("mode"),
        placeholder("n")
    );
    let params = vec![
        pb::CommandParameter {
            default_value: None,
            ..level_parameter()
        },
        pb::CommandParameter {
            default_value: Some(pv_s("eco")),
            value_conditions: vec![condition(
                pb::ComparisonOperator::InSet,
                op_strings(&["eco", "boost"]),
            )],
            ..param("mode", T::String)
        },
        pb::CommandParameter {
            default_value: Some(pv_ul("1")),
            ..param("n", T::Unsignedlong)
        },
    ];
    reg.create_command(template_command(
        "dim",
        &template,
        params,
        pb::OutputFormat::Json,
    ))
    .await?;

    let base = || pb::StartCommandExecutionRequest {
        parameters: HashMap::from([("level".into(), pv_i(50))]),
        ..start_request("dim", thing("t1"))
    };
    let with_params = |p: Vec<(&str, pb::ParameterValue)>| pb::StartCommandExecutionRequest {
        parameters: p.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ..base()
    };
    let invalid: Vec<(&str, pb::StartCommandExecutionRequest, &str, Vec<&str>)> = vec![
        (
            "bad command id",
            pb::StartCommandExecutionRequest {
                command_id: "a b".into(),
                ..base()
            },
            "command_id",
            vec!["[a-zA-Z0-9_-]+"],
        ),
        (
            "empty command id",
            pb::StartCommandExecutionRequest {
                command_id: String::new(),
                ..base()
            },
            "command_id",
            vec!["empty"],
        ),
        (
            "no target",
            pb::StartCommandExecutionRequest {
                target: None,
                ..base()
            },
            "target",
            vec!["required"],
        ),
        (
            "unspecified target kind",
            pb::StartCommandExecutionRequest {
                target: Some(pb::Target {
                    kind: 0,
                    id: "t1".into(),
                }),
                ..base()
            },
            "target.kind",
            vec!["THING, CLIENT"],
        ),
        (
            "unknown target kind",
            pb::StartCommandExecutionRequest {
                target: Some(pb::Target {
                    kind: 3,
                    id: "t1".into(),
                }),
                ..base()
            },
            "target.kind",
            vec!["3"],
        ),
        (
            "empty target id",
            pb::StartCommandExecutionRequest {
                target: Some(thing("")),
                ..base()
            },
            "target.id",
            vec!["empty"],
        ),
        (
            "thing name with a slash",
            pb::StartCommandExecutionRequest {
                target: Some(thing("a/b")),
                ..base()
            },
            "target.id",
            vec!["[a-zA-Z0-9:_-]+"],
        ),
        (
            "client id with a wildcard",
            pb::StartCommandExecutionRequest {
                target: Some(client("dev+1")),
                ..base()
            },
            "target.id",
            vec!["'+'"],
        ),
        (
            "target id of 129",
            pb::StartCommandExecutionRequest {
                target: Some(thing(&"t".repeat(129))),
                ..base()
            },
            "target.id",
            vec!["128"],
        ),
        (
            "timeout of 43,201",
            pb::StartCommandExecutionRequest {
                execution_timeout_seconds: 43_201,
                ..base()
            },
            "execution_timeout_seconds",
            vec!["43200", "43201"],
        ),
        (
            "negative timeout",
            pb::StartCommandExecutionRequest {
                execution_timeout_seconds: -1,
                ..base()
            },
            "execution_timeout_seconds",
            vec!["negative"],
        ),
        (
            "client token of 65",
            pb::StartCommandExecutionRequest {
                client_token: "k".repeat(65),
                ..base()
            },
            "client_token",
            vec!["1–64"],
        ),
        (
            "client token with a space",
            pb::StartCommandExecutionRequest {
                client_token: "a b".into(),
                ..base()
            },
            "client_token",
            vec!["printable ASCII"],
        ),
        (
            "client token not ASCII",
            pb::StartCommandExecutionRequest {
                client_token: "é".into(),
                ..base()
            },
            "client_token",
            vec!["printable ASCII"],
        ),
        (
            "unknown parameter",
            with_params(vec![("level", pv_i(1)), ("ghost", pv_i(1))]),
            "parameters[\"ghost\"]",
            vec!["declares no parameter", "ghost", "level"],
        ),
        (
            "parameter of the wrong type",
            with_params(vec![("level", pv_s("50"))]),
            "parameters[\"level\"]",
            vec!["INTEGER", "STRING"],
        ),
        (
            "value above IN_RANGE",
            with_params(vec![("level", pv_i(120))]),
            "parameters[\"level\"]",
            vec!["120", "IN_RANGE", "[0, 100]"],
        ),
        (
            "value below IN_RANGE",
            with_params(vec![("level", pv_i(-1))]),
            "parameters[\"level\"]",
            vec!["-1", "IN_RANGE"],
        ),
        (
            "value outside IN_SET",
            with_params(vec![("level", pv_i(1)), ("mode", pv_s("turbo"))]),
            "parameters[\"mode\"]",
            vec!["turbo", "IN_SET"],
        ),
        (
            "missing required parameter",
            with_params(vec![("mode", pv_s("eco"))]),
            "parameters[\"level\"]",
            vec!["required", "no default"],
        ),
        (
            "empty STRING value",
            with_params(vec![("level", pv_i(1)), ("mode", pv_s(""))]),
            "parameters[\"mode\"]",
            vec!["at least 1 character"],
        ),
        (
            "value with no member",
            with_params(vec![("level", pb::ParameterValue { value: None })]),
            "parameters[\"level\"]",
            vec!["exactly one of"],
        ),
        (
            "UL that is not digits",
            with_params(vec![("level", pv_i(1)), ("n", pv_ul("1e3"))]),
            "parameters[\"n\"].ul",
            vec!["digits"],
        ),
        (
            "parameters for a static command",
            pb::StartCommandExecutionRequest {
                command_id: "static".into(),
                ..with_params(vec![("level", pv_i(1))])
            },
            "parameters",
            vec!["static payload", "no parameters"],
        ),
    ];
    for (label, req, field, needles) in invalid {
        let s = expect_invalid(disp.start_command_execution(req).await, field, &needles);
        assert!(
            s.message().starts_with(&format!("invalid {field}: ")),
            "{label}: {}",
            s.message()
        );
    }
    expect_code(
        disp.start_command_execution(pb::StartCommandExecutionRequest {
            command_id: "ghost".into(),
            ..base()
        })
        .await,
        Code::NotFound,
        &["command ghost not found"],
    );
    let (listed, _) =
        list_all_executions(&mut reg, pb::ListCommandExecutionsRequest::default()).await?;
    assert!(
        listed.is_empty(),
        "refused starts created executions: {listed:?}"
    );

    // The edges of the same rules are accepted.
    for (req, timeout) in [
        (
            pb::StartCommandExecutionRequest {
                execution_timeout_seconds: 0,
                ..with_params(vec![("level", pv_i(0))])
            },
            10,
        ),
        (
            pb::StartCommandExecutionRequest {
                execution_timeout_seconds: 43_200,
                ..with_params(vec![("level", pv_i(100))])
            },
            43_200,
        ),
        (
            pb::StartCommandExecutionRequest {
                client_token: "~".repeat(64),
                ..with_params(vec![("level", pv_i(7)), ("mode", pv_s("boost"))])
            },
            LONG_TIMEOUT_SECS,
        ),
        (
            pb::StartCommandExecutionRequest {
                target: Some(thing(&"t".repeat(128))),
                ..base()
            },
            LONG_TIMEOUT_SECS,
        ),
        (
            pb::StartCommandExecutionRequest {
                command_id: "static".into(),
                parameters: HashMap::new(),
                ..base()
            },
            LONG_TIMEOUT_SECS,
        ),
    ] {
        let id = disp
            .start_command_execution(req)
            .await?
            .into_inner()
            .execution_id;
        assert_eq!(
            get_execution(&mut reg, &id)
                .await?
                .execution_timeout_seconds,
            timeout
        );
    }
    assert_eq!(
        list_all_executions(&mut reg, pb::ListCommandExecutionsRequest::default())
            .await?
            .0
            .len(),
        5
    );
    stop(server).await?;
    Ok(())
}

/// Creates the `dim` template command and returns a start of it on `thing/t1` carrying
/// `token`.
async fn create_dim_and_tokened_start(
    server: &Server,
    token: &str,
) -> anyhow::Result<pb::StartCommandExecutionRequest> {
    server
        .registry()
        .await?
        .create_command(template_command(
            "dim",
            &format!("{{\"l\": \"{}\"}}", placeholder("level")),
            vec![level_parameter()],
            pb::OutputFormat::Json,
        ))
        .await?;
    Ok(pb::StartCommandExecutionRequest {
        client_token: token.into(),
        parameters: HashMap::from([("level".into(), pv_i(10))]),
        ..start_request("dim", thing("t1"))
    })
}

/// Client tokens leave the shard owners' memory (here as soon as their start is projected;
/// the restart's rebuild drops them): a retry is then answered from the read model — the
/// same execution — and a different request with the token still conflicts.
#[tokio::test]
async fn client_tokens_stay_idempotent_after_they_leave_the_owners_memory() -> Result {
    let mut args = test_args("token-memory");
    args.client_token_memory_secs = 0;
    let server = Server::start_with(args.clone()).await?;
    let req = create_dim_and_tokened_start(&server, "retry-later").await?;
    let first = server
        .dispatcher()
        .await?
        .start_command_execution(req.clone())
        .await?
        .into_inner()
        .execution_id;
    let data_dir = server.stop().await?;

    let server = Server::start_with(fleetcmd::serve::ServeArgs { data_dir, ..args }).await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    let again = disp
        .start_command_execution(req.clone())
        .await?
        .into_inner()
        .execution_id;
    assert_eq!(first, again, "same token, same request: the same execution");
    let s = expect_code(
        disp.start_command_execution(pb::StartCommandExecutionRequest {
            parameters: HashMap::from([("level".into(), pv_i(11))]),
            ..req.clone()
        })
        .await,
        Code::AlreadyExists,
        &["client_token", "retry-later", &first],
    );
    assert_eq!(error_reason(&s).as_deref(), Some("CONFLICT"));
    let by_target = pb::ListCommandExecutionsRequest {
        target: Some(thing("t1")),
        ..Default::default()
    };
    assert_eq!(
        execution_ids(&list_all_executions(&mut reg, by_target).await?.0),
        vec![first]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_token_makes_start_idempotent() -> Result {
    let server = Server::start("client-token").await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    let req = create_dim_and_tokened_start(&server, "retry-me").await?;
    let first = disp
        .start_command_execution(req.clone())
        .await?
        .into_inner()
        .execution_id;
    let again = disp
        .start_command_execution(req.clone())
        .await?
        .into_inner()
        .execution_id;
    assert_eq!(first, again, "same token, same request: same execution");
    let by_target = pb::ListCommandExecutionsRequest {
        target: Some(thing("t1")),
        ..Default::default()
    };
    assert_eq!(
        execution_ids(&list_all_executions(&mut reg, by_target.clone()).await?.0),
        vec![first.clone()]
    );

    // Same token, different request: ALREADY_EXISTS, nothing started.
    let different = [
        pb::StartCommandExecutionRequest {
            parameters: HashMap::from([("level".into(), pv_i(11))]),
            ..req.clone()
        },
        pb::StartCommandExecutionRequest {
            parameters: HashMap::new(),
            ..req.clone()
        },
        pb::StartCommandExecutionRequest {
            execution_timeout_seconds: 60,
            ..req.clone()
        },
    ];
    for d in different {
        let s = expect_code(
            disp.start_command_execution(d).await,
            Code::AlreadyExists,
            &["client_token", "retry-me", &first],
        );
        assert_eq!(error_reason(&s).as_deref(), Some("CONFLICT"));
    }
    assert_eq!(
        execution_ids(&list_all_executions(&mut reg, by_target).await?.0),
        vec![first.clone()]
    );

    // A token is scoped to its target; no token means a new execution every time.
    let other = disp
        .start_command_execution(pb::StartCommandExecutionRequest {
            target: Some(thing("t2")),
            ..req.clone()
        })
        .await?
        .into_inner()
        .execution_id;
    assert_ne!(other, first);
    let untokened = pb::StartCommandExecutionRequest {
        client_token: String::new(),
        ..req
    };
    let a = disp
        .start_command_execution(untokened.clone())
        .await?
        .into_inner()
        .execution_id;
    let b = disp
        .start_command_execution(untokened)
        .await?
        .into_inner()
        .execution_id;
    assert_ne!(a, b);
    assert_eq!(
        list_all_executions(&mut reg, pb::ListCommandExecutionsRequest::default())
            .await?
            .0
            .len(),
        4
    );
    stop(server).await?;
    Ok(())
}

// =============================================================================================
// Executions: list

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_executions_filters_sorts_and_pages() -> Result {
    let server = Server::start("list-executions").await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    for id in ["alpha", "beta"] {
        reg.create_command(static_json_command(id, "{}")).await?;
    }
    let (t1, t2, k1, thing_k1) = (thing("t1"), thing("t2"), client("k1"), thing("k1"));
    let e1 = start(&mut disp, "alpha", t1.clone()).await?;
    let e2 = start(&mut disp, "alpha", t2.clone()).await?;
    let e3 = start(&mut disp, "beta", t1.clone()).await?;
    let e4 = start(&mut disp, "beta", k1.clone()).await?;
    let e5 = start(&mut disp, "alpha", k1.clone()).await?;
    let e6 = start(&mut disp, "alpha", t1.clone()).await?;
    let e7 = start(&mut disp, "beta", thing_k1.clone()).await?;
    settle(&server, &mut reg, &t1, &e1, St::Succeeded).await?;
    settle(&server, &mut reg, &t2, &e2, St::Failed).await?;
    disp.cancel_command_execution(pb::CancelCommandExecutionRequest {
        execution_id: e3.clone(),
        ..Default::default()
    })
    .await?;
    settle(&server, &mut reg, &k1, &e5, St::InProgress).await?;

    let mut full = HashMap::new();
    for id in [&e1, &e2, &e3, &e4, &e5, &e6, &e7] {
        full.insert(id.clone(), get_execution(&mut reg, id).await?);
    }
    let status_of = |id: &str| full[id].status();
    assert_eq!(
        [&e1, &e2, &e3, &e4, &e5, &e6, &e7].map(|id| status_of(id)),
        [
            St::Succeeded,
            St::Failed,
            St::Canceled,
            St::Created,
            St::InProgress,
            St::Created,
            St::Created
        ]
    );

    // Default: everything, descending by start time (ties broken by id).
    let all = reg
        .list_command_executions(pb::ListCommandExecutionsRequest::default())
        .await?
        .into_inner();
    assert!(all.next_token.is_empty());
    let key = |id: &String| (ms(&full[id].started_at), id.clone());
    let mut expected: Vec<String> = full.keys().cloned().collect();
    expected.sort_by_key(|id| std::cmp::Reverse(key(id)));
    assert_eq!(execution_ids(&all.command_executions), expected);
    for s in &all.command_executions {
        let e = &full[&s.execution_id];
        assert_eq!(
            (&s.command_id, &s.command_arn, &s.target, &s.target_arn),
            (&e.command_id, &e.command_arn, &e.target, &e.target_arn)
        );
        assert_eq!(
            (s.status, s.created_at, s.started_at, s.completed_at),
            (e.status, e.created_at, e.started_at, e.completed_at)
        );
    }
    let asc = pb::ListCommandExecutionsRequest {
        sort_order: pb::SortOrder::Ascending as i32,
        ..Default::default()
    };
    let mut expected_asc = expected.clone();
    expected_asc.reverse();
    assert_eq!(
        execution_ids(&list_all_executions(&mut reg, asc.clone()).await?.0),
        expected_asc
    );

    // Paging: every execution exactly once, in order, both directions.
    for size in [1, 2, 3, 7] {
        let (paged, pages) = list_all_executions(
            &mut reg,
            pb::ListCommandExecutionsRequest {
                max_results: size,
                ..Default::default()
            },
        )
        .await?;
        assert_eq!(execution_ids(&paged), expected, "page size {size}");
        assert_eq!(pages, 7usize.div_ceil(size as usize), "page size {size}");
        let (paged, _) = list_all_executions(
            &mut reg,
            pb::ListCommandExecutionsRequest {
                max_results: size,
                ..asc.clone()
            },
        )
        .await?;
        assert_eq!(
            execution_ids(&paged),
            expected_asc,
            "page size {size}, ascending"
        );
    }

    // Filters.
    let base = pb::ListCommandExecutionsRequest::default;
    let cases: Vec<(&str, pb::ListCommandExecutionsRequest, Vec<&String>)> = vec![
        (
            "command alpha",
            (pb::ListCommandExecutionsRequest {
                command_id: "alpha".into(),
                ..base()
            }),
            vec![&e1, &e2, &e5, &e6],
        ),
        (
            "command beta",
            (pb::ListCommandExecutionsRequest {
                command_id: "beta".into(),
                ..base()
            }),
            vec![&e3, &e4, &e7],
        ),
        (
            "unknown command",
            (pb::ListCommandExecutionsRequest {
                command_id: "ghost".into(),
                ..base()
            }),
            vec![],
        ),
        (
            "thing t1",
            (pb::ListCommandExecutionsRequest {
                target: Some(t1.clone()),
                ..base()
            }),
            vec![&e1, &e3, &e6],
        ),
        (
            "client k1",
            (pb::ListCommandExecutionsRequest {
                target: Some(k1.clone()),
                ..base()
            }),
            vec![&e4, &e5],
        ),
        (
            "thing k1 is not client k1",
            (pb::ListCommandExecutionsRequest {
                target: Some(thing_k1.clone()),
                ..base()
            }),
            vec![&e7],
        ),
        (
            "alpha on t1",
            (pb::ListCommandExecutionsRequest {
                command_id: "alpha".into(),
                target: Some(t1.clone()),
                ..base()
            }),
            vec![&e1, &e6],
        ),
        (
            "beta on t2",
            (pb::ListCommandExecutionsRequest {
                command_id: "beta".into(),
                target: Some(t2.clone()),
                ..base()
            }),
            vec![],
        ),
        (
            "SUCCEEDED",
            (pb::ListCommandExecutionsRequest {
                status: St::Succeeded as i32,
                ..base()
            }),
            vec![&e1],
        ),
        (
            "CREATED",
            (pb::ListCommandExecutionsRequest {
                status: St::Created as i32,
                ..base()
            }),
            vec![&e4, &e6, &e7],
        ),
        (
            "terminal statuses",
            (pb::ListCommandExecutionsRequest {
                statuses: vec![St::Succeeded as i32, St::Failed as i32, St::Canceled as i32],
                ..base()
            }),
            vec![&e1, &e2, &e3],
        ),
        (
            "status and statuses combine",
            (pb::ListCommandExecutionsRequest {
                status: St::InProgress as i32,
                statuses: vec![St::Canceled as i32, St::InProgress as i32],
                ..base()
            }),
            vec![&e3, &e5],
        ),
        (
            "CREATED alpha on t1",
            (pb::ListCommandExecutionsRequest {
                status: St::Created as i32,
                command_id: "alpha".into(),
                target: Some(t1.clone()),
                ..base()
            }),
            vec![&e6],
        ),
        (
            "REJECTED",
            (pb::ListCommandExecutionsRequest {
                status: St::Rejected as i32,
                ..base()
            }),
            vec![],
        ),
    ];
    for (label, req, ids) in cases {
        let want: Vec<String> = ids.into_iter().cloned().collect();
        let (got, _) = list_all_executions(
            &mut reg,
            pb::ListCommandExecutionsRequest {
                max_results: 2,
                ..req.clone()
            },
        )
        .await?;
        assert_eq!(sorted(execution_ids(&got)), sorted(want.clone()), "{label}");
        let mut in_order = want;
        in_order.sort_by_key(|id| std::cmp::Reverse(key(id)));
        assert_eq!(
            execution_ids(&got),
            in_order,
            "{label}: descending by start"
        );
    }

    // Time filters (inclusive bounds), compared with the same filter applied locally.
    let started = |id: &String| ms(&full[id].started_at);
    let completed = |id: &String| {
        full[id]
            .completed_at
            .as_ref()
            .map(|_| ms(&full[id].completed_at))
    };
    let range = |after: Option<i64>, before: Option<i64>| pb::TimeFilter {
        after: after.map(ts_from_ms),
        before: before.map(ts_from_ms),
    };
    let within = |t: i64, after: Option<i64>, before: Option<i64>| {
        after.is_none_or(|a| t >= a) && before.is_none_or(|b| t <= b)
    };
    let started_ranges = [
        (Some(started(&e3)), Some(started(&e5))),
        (Some(started(&e6)), None),
        (None, Some(started(&e2))),
        (Some(started(&e4)), Some(started(&e4))),
        (Some(0), Some(1)),
    ];
    for (after, before) in started_ranges {
        let req = pb::ListCommandExecutionsRequest {
            started_time_filter: Some(range(after, before)),
            ..Default::default()
        };
        let (got, _) = list_all_executions(&mut reg, req).await?;
        let mut want: Vec<String> = full
            .keys()
            .filter(|id| within(started(id), after, before))
            .cloned()
            .collect();
        want.sort_by_key(|id| std::cmp::Reverse(key(id)));
        assert_eq!(
            execution_ids(&got),
            want,
            "started in {after:?}..={before:?}"
        );
    }
    // A completion filter keeps completed executions only, sorted by completion time.
    let completion_key = |id: &String| (completed(id).unwrap_or_default(), id.clone());
    for (after, before) in [
        (None, None),
        (completed(&e2), None),
        (None, completed(&e2)),
        (completed(&e1), completed(&e3)),
    ] {
        for ascending in [false, true] {
            let req = pb::ListCommandExecutionsRequest {
                completed_time_filter: Some(range(after, before)),
                sort_order: if ascending {
                    pb::SortOrder::Ascending as i32
                } else {
                    0
                },
                max_results: 1,
                ..Default::default()
            };
            let (got, _) = list_all_executions(&mut reg, req).await?;
            let mut want: Vec<String> = full
                .keys()
                .filter(|id| completed(id).is_some_and(|t| within(t, after, before)))
                .cloned()
                .collect();
            want.sort_by_key(completion_key);
            if !ascending {
                want.reverse();
            }
            assert_eq!(
                execution_ids(&got),
                want,
                "completed in {after:?}..={before:?}, ascending {ascending}"
            );
        }
    }
    assert_eq!(
        sorted(execution_ids(
            &list_all_executions(
                &mut reg,
                pb::ListCommandExecutionsRequest {
                    completed_time_filter: Some(range(None, None)),
                    ..Default::default()
                }
            )
            .await?
            .0
        )),
        sorted(vec![e1.clone(), e2.clone(), e3.clone()])
    );
    // Both time filters at once, with a command filter.
    let both = pb::ListCommandExecutionsRequest {
        command_id: "alpha".into(),
        started_time_filter: Some(range(Some(started(&e1)), Some(started(&e2)))),
        completed_time_filter: Some(range(None, None)),
        ..Default::default()
    };
    assert_eq!(
        sorted(execution_ids(&list_all_executions(&mut reg, both).await?.0)),
        sorted(vec![e1.clone(), e2.clone()])
    );

    // INVALID_ARGUMENT.
    let bad: Vec<(pb::ListCommandExecutionsRequest, &str, Vec<&str>)> = vec![
        (
            pb::ListCommandExecutionsRequest {
                max_results: 101,
                ..base()
            },
            "max_results",
            vec!["between 1 and 100", "101"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                max_results: -5,
                ..base()
            },
            "max_results",
            vec!["-5"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                started_time_filter: Some(range(Some(2_000), Some(1_999))),
                ..base()
            },
            "started_time_filter",
            vec!["after", "before", "2000", "1999"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                completed_time_filter: Some(range(Some(5), Some(4))),
                ..base()
            },
            "completed_time_filter",
            vec!["after", "before"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                started_time_filter: Some(pb::TimeFilter {
                    after: Some(prost_types::Timestamp {
                        seconds: 1,
                        nanos: -1,
                    }),
                    before: None,
                }),
                ..base()
            },
            "started_time_filter.after",
            vec!["nanos"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                status: 42,
                ..base()
            },
            "status",
            vec!["42"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                statuses: vec![St::Created as i32, 0],
                ..base()
            },
            "statuses[1]",
            vec!["EXECUTION_STATUS_UNSPECIFIED"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                namespace: "AWS-IoT-FleetWise".into(),
                ..base()
            },
            "namespace",
            vec!["AWS-IoT"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                command_id: "a/b".into(),
                ..base()
            },
            "command_id",
            vec!["'/'"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                target: Some(pb::Target {
                    kind: 0,
                    id: "t1".into(),
                }),
                ..base()
            },
            "target.kind",
            vec!["THING, CLIENT"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                target: Some(client("a#b")),
                ..base()
            },
            "target.id",
            vec!["'#'"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                sort_order: 3,
                ..base()
            },
            "sort_order",
            vec!["ASCENDING, DESCENDING"],
        ),
    ];
    for (req, field, needles) in bad {
        expect_invalid(reg.list_command_executions(req).await, field, &needles);
    }
    let command_token = {
        reg.list_commands(pb::ListCommandsRequest {
            max_results: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .next_token
    };
    assert!(!command_token.is_empty());
    for token in ["%%%", "Zm9v", command_token.as_str()] {
        let req = pb::ListCommandExecutionsRequest {
            next_token: token.into(),
            ..base()
        };
        expect_code(
            reg.list_command_executions(req).await,
            Code::InvalidArgument,
            &["next_token"],
        );
    }
    // A namespace of AWS-IoT is the default one.
    let ns = pb::ListCommandExecutionsRequest {
        namespace: "AWS-IoT".into(),
        ..base()
    };
    assert_eq!(list_all_executions(&mut reg, ns).await?.0.len(), 7);
    stop(server).await?;
    Ok(())
}

// =============================================================================================
// Executions: delete

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_execution_only_when_terminal() -> Result {
    let server = Server::start("delete-execution").await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    reg.create_command(static_json_command("reboot", "{}"))
        .await?;
    let t1 = thing("t1");
    let delete = |id: &str, target: Option<pb::Target>| pb::DeleteCommandExecutionRequest {
        execution_id: id.into(),
        target,
    };

    // CREATED is not terminal.
    let created = start(&mut disp, "reboot", t1.clone()).await?;
    let s = expect_code(
        reg.delete_command_execution(delete(&created, None)).await,
        Code::FailedPrecondition,
        &[&created, "CREATED", "terminal"],
    );
    assert_eq!(error_reason(&s).as_deref(), Some("FAILED_PRECONDITION"));
    assert_eq!(
        get_execution(&mut reg, &created).await?.status(),
        St::Created
    );

    // A device-settled execution can be deleted; afterwards it is gone everywhere.
    let done = start(&mut disp, "reboot", t1.clone()).await?;
    settle(&server, &mut reg, &t1, &done, St::Succeeded).await?;
    expect_code(
        reg.delete_command_execution(delete(&done, Some(thing("t2"))))
            .await,
        Code::NotFound,
        &[&done],
    );
    expect_invalid(
        reg.delete_command_execution(delete(
            &done,
            Some(pb::Target {
                kind: 9,
                id: "t1".into(),
            }),
        ))
        .await,
        "target.kind",
        &["9"],
    );
    expect_invalid(
        reg.delete_command_execution(delete("x y", None)).await,
        "execution_id",
        &["' '"],
    );
    assert_eq!(
        get_execution(&mut reg, &done).await?.status(),
        St::Succeeded,
        "refused deletes changed nothing"
    );
    reg.delete_command_execution(delete(&done, Some(t1.clone())))
        .await?;
    expect_code(
        get_execution(&mut reg, &done)
            .await
            .map(tonic::Response::new),
        Code::NotFound,
        &[&done],
    );
    let listed = list_all_executions(&mut reg, pb::ListCommandExecutionsRequest::default())
        .await?
        .0;
    assert_eq!(execution_ids(&listed), vec![created.clone()]);
    expect_code(
        reg.delete_command_execution(delete(&done, None)).await,
        Code::NotFound,
        &[&done],
    );
    expect_code(
        disp.cancel_command_execution(pb::CancelCommandExecutionRequest {
            execution_id: done.clone(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        &[&done],
    );

    // A device-reported TIMED_OUT is terminal.
    let device_timeout = start(&mut disp, "reboot", t1.clone()).await?;
    settle(&server, &mut reg, &t1, &device_timeout, St::TimedOut).await?;
    let e = get_execution(&mut reg, &device_timeout).await?;
    assert!(e.terminal && e.completed_at.is_some());
    reg.delete_command_execution(delete(&device_timeout, None))
        .await?;

    // A cloud TIMED_OUT is not terminal: no delete until it is settled (here: canceled).
    let mut watch = Watch::open(&mut reg, watch_request("reboot", None, &[St::TimedOut])).await?;
    let req = pb::StartCommandExecutionRequest {
        execution_timeout_seconds: 1,
        ..start_request("reboot", thing("t3"))
    };
    let timed_out = disp
        .start_command_execution(req)
        .await?
        .into_inner()
        .execution_id;
    let event = watch.until(&timed_out, St::TimedOut).await?;
    assert!(!event.terminal);
    let e = get_execution(&mut reg, &timed_out).await?;
    assert_eq!(
        (e.status(), e.terminal, e.completed_at),
        (St::TimedOut, false, None)
    );
    assert_eq!(
        e.status_reason.map(|r| r.reason_code).as_deref(),
        Some("$NO_RESPONSE_FROM_DEVICE")
    );
    expect_code(
        reg.delete_command_execution(delete(&timed_out, None)).await,
        Code::FailedPrecondition,
        &[&timed_out, "TIMED_OUT", "not terminal"],
    );
    assert_eq!(
        get_execution(&mut reg, &timed_out).await?.status(),
        St::TimedOut
    );
    let canceled = disp
        .cancel_command_execution(pb::CancelCommandExecutionRequest {
            execution_id: timed_out.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(canceled.status(), St::Canceled);
    reg.delete_command_execution(delete(&timed_out, Some(thing("t3"))))
        .await?;
    expect_code(
        get_execution(&mut reg, &timed_out)
            .await
            .map(tonic::Response::new),
        Code::NotFound,
        &[],
    );
    assert_eq!(
        execution_ids(
            &list_all_executions(&mut reg, pb::ListCommandExecutionsRequest::default())
                .await?
                .0
        ),
        vec![created]
    );
    // Running::stop waits for open Watch streams, so end ours first.
    drop(watch);
    stop(server).await?;
    Ok(())
}

// =============================================================================================
// Executions: cancel

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_live_execution() -> Result {
    let server = Server::start("cancel").await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    reg.create_command(static_json_command("reboot", "{}"))
        .await?;
    let t1 = thing("t1");
    let cancel = |id: &str, target: Option<pb::Target>, reason: Option<(&str, &str)>| {
        pb::CancelCommandExecutionRequest {
            execution_id: id.into(),
            target,
            status_reason: reason.map(|(c, d)| pb::StatusReason {
                reason_code: c.into(),
                reason_description: d.into(),
            }),
        }
    };

    // CREATED → CANCELED, with the default reason.
    let a = start(&mut disp, "reboot", t1.clone()).await?;
    let before = now_ms();
    let r = disp
        .cancel_command_execution(cancel(&a, None, None))
        .await?
        .into_inner();
    assert_eq!(
        (r.execution_id.as_str(), r.status()),
        (a.as_str(), St::Canceled)
    );
    let e = get_execution(&mut reg, &a).await?;
    assert_eq!((e.status(), e.terminal), (St::Canceled, true));
    assert!(ms(&e.completed_at) >= before && ms(&e.completed_at) <= now_ms());
    assert_eq!(e.last_updated_at, e.completed_at);
    assert_eq!(
        e.status_reason.map(|r| r.reason_code).as_deref(),
        Some("$CANCELED")
    );

    // IN_PROGRESS → CANCELED with the caller's reason, and the matching target.
    let b = start(&mut disp, "reboot", t1.clone()).await?;
    settle(&server, &mut reg, &t1, &b, St::InProgress).await?;
    disp.cancel_command_execution(cancel(
        &b,
        Some(t1.clone()),
        Some(("OPERATOR_ABORT", "wrong device")),
    ))
    .await?;
    let e = get_execution(&mut reg, &b).await?;
    assert_eq!(e.status(), St::Canceled);
    assert_eq!(
        e.status_reason,
        Some(pb::StatusReason {
            reason_code: "OPERATOR_ABORT".into(),
            reason_description: "wrong device".into()
        })
    );
    // The device is told: its next update is refused as terminal.
    let (accepted, reply) =
        device_update(&server, &t1, &b, serde_json::json!({"status": "SUCCEEDED"})).await?;
    assert!(!accepted, "{reply}");
    assert_eq!(reply["error"], "TerminalStateReached");

    // FAILED_PRECONDITION on terminal executions (canceled, succeeded), nothing changes.
    let c = start(&mut disp, "reboot", t1.clone()).await?;
    settle(&server, &mut reg, &t1, &c, St::Succeeded).await?;
    for id in [&a, &c] {
        let before = get_execution(&mut reg, id).await?;
        let s = expect_code(
            disp.cancel_command_execution(cancel(id, None, None)).await,
            Code::FailedPrecondition,
            &[id, "already completed", before.status().as_str_name()],
        );
        assert_eq!(error_reason(&s).as_deref(), Some("FAILED_PRECONDITION"));
        assert_eq!(get_execution(&mut reg, id).await?, before);
    }

    // NOT_FOUND and INVALID_ARGUMENT; nothing changes.
    let d = start(&mut disp, "reboot", t1.clone()).await?;
    expect_code(
        disp.cancel_command_execution(cancel(&d, Some(thing("t2")), None))
            .await,
        Code::NotFound,
        &[&d],
    );
    expect_code(
        disp.cancel_command_execution(cancel("0190aaaa-0000-7000-8000-000000000000", None, None))
            .await,
        Code::NotFound,
        &["0190aaaa-0000-7000-8000-000000000000"],
    );
    expect_invalid(
        disp.cancel_command_execution(cancel("", None, None)).await,
        "execution_id",
        &["empty"],
    );
    expect_invalid(
        disp.cancel_command_execution(cancel(
            &d,
            Some(pb::Target {
                kind: 0,
                id: "t1".into(),
            }),
            None,
        ))
        .await,
        "target.kind",
        &[],
    );
    expect_invalid(
        disp.cancel_command_execution(cancel(&d, None, Some(("", "why"))))
            .await,
        "status_reason.reason_code",
        &["required"],
    );
    expect_invalid(
        disp.cancel_command_execution(cancel(&d, None, Some(("$MINE", ""))))
            .await,
        "status_reason.reason_code",
        &["[A-Z0-9_-]+", "reserved"],
    );
    expect_invalid(
        disp.cancel_command_execution(cancel(&d, None, Some(("lower", ""))))
            .await,
        "status_reason.reason_code",
        &["[A-Z0-9_-]+"],
    );
    expect_invalid(
        disp.cancel_command_execution(cancel(&d, None, Some((&"C".repeat(65), ""))))
            .await,
        "status_reason.reason_code",
        &["64"],
    );
    expect_invalid(
        disp.cancel_command_execution(cancel(&d, None, Some(("OK", &"d".repeat(1025)))))
            .await,
        "status_reason.reason_description",
        &["1024"],
    );
    let e = get_execution(&mut reg, &d).await?;
    assert_eq!(
        (e.status(), e.terminal, e.completed_at),
        (St::Created, false, None)
    );
    stop(server).await?;
    Ok(())
}

// =============================================================================================
// Watch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_filtered_status_changes() -> Result {
    let server = Server::start("watch").await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    for id in ["alpha", "beta"] {
        reg.create_command(static_json_command(id, "{}")).await?;
    }
    let (t1, t2) = (thing("t1"), thing("t2"));

    // Invalid filters are refused up front.
    expect_invalid(
        reg.watch_command_executions(watch_request("a b", None, &[]))
            .await,
        "command_id",
        &["' '"],
    );
    expect_invalid(
        reg.watch_command_executions(watch_request(
            "",
            Some(pb::Target {
                kind: 0,
                id: "t".into(),
            }),
            &[],
        ))
        .await,
        "target.kind",
        &[],
    );
    expect_invalid(
        reg.watch_command_executions(watch_request("", Some(thing("a/b")), &[]))
            .await,
        "target.id",
        &[],
    );
    expect_invalid(
        reg.watch_command_executions(watch_request("", None, &[St::Created, St::Unspecified]))
            .await,
        "statuses[1]",
        &["UNSPECIFIED"],
    );
    let bad_status = pb::WatchCommandExecutionsRequest {
        statuses: vec![99],
        ..Default::default()
    };
    expect_invalid(
        reg.watch_command_executions(bad_status).await,
        "statuses[0]",
        &["99"],
    );

    let mut all = Watch::open(&mut reg, watch_request("", None, &[])).await?;
    let mut by_command = Watch::open(&mut reg, watch_request("alpha", None, &[])).await?;
    let mut by_target = Watch::open(&mut reg, watch_request("", Some(t2.clone()), &[])).await?;
    let mut by_status = Watch::open(&mut reg, watch_request("", None, &[St::Succeeded])).await?;
    let mut combined = Watch::open(
        &mut reg,
        watch_request("alpha", Some(t2.clone()), &[St::Canceled, St::Succeeded]),
    )
    .await?;
    let mut unrelated = Watch::open(&mut reg, watch_request("beta", Some(t1.clone()), &[])).await?;

    // Each step is readable before the next starts, so every stream sees them in this order.
    let a1 = start(&mut disp, "alpha", t1.clone()).await?;
    let a2 = start(&mut disp, "beta", t2.clone()).await?;
    settle(&server, &mut reg, &t2, &a2, St::Succeeded).await?;
    let a3 = start(&mut disp, "alpha", t2.clone()).await?;
    disp.cancel_command_execution(pb::CancelCommandExecutionRequest {
        execution_id: a1.clone(),
        ..Default::default()
    })
    .await?;
    // The last step matches every filter but `unrelated`'s: anything unexpected before it shows.
    settle(&server, &mut reg, &t2, &a3, St::Succeeded).await?;
    // And `unrelated` gets its own last step.
    let a4 = start(&mut disp, "beta", t1.clone()).await?;

    type Expected<'a> = Vec<(&'a String, St)>;
    let expectations: Vec<(&str, &mut Watch, Expected)> = vec![
        (
            "all",
            &mut all,
            vec![
                (&a1, St::Created),
                (&a2, St::Created),
                (&a2, St::Succeeded),
                (&a3, St::Created),
                (&a1, St::Canceled),
                (&a3, St::Succeeded),
                (&a4, St::Created),
            ],
        ),
        (
            "command alpha",
            &mut by_command,
            vec![
                (&a1, St::Created),
                (&a3, St::Created),
                (&a1, St::Canceled),
                (&a3, St::Succeeded),
            ],
        ),
        (
            "target t2",
            &mut by_target,
            vec![
                (&a2, St::Created),
                (&a2, St::Succeeded),
                (&a3, St::Created),
                (&a3, St::Succeeded),
            ],
        ),
        (
            "SUCCEEDED",
            &mut by_status,
            vec![(&a2, St::Succeeded), (&a3, St::Succeeded)],
        ),
        (
            "alpha on t2, CANCELED or SUCCEEDED",
            &mut combined,
            vec![(&a3, St::Succeeded)],
        ),
        ("beta on t1", &mut unrelated, vec![(&a4, St::Created)]),
    ];
    for (label, watch, expected) in expectations {
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            let e = watch.next().await?;
            got.push((e.execution_id.clone(), e.status()));
        }
        let expected: Vec<(String, St)> = expected
            .into_iter()
            .map(|(id, s)| (id.clone(), s))
            .collect();
        assert_eq!(got, expected, "watch {label}");
    }

    // Events carry the whole change.
    let mut w = Watch::open(&mut reg, watch_request("alpha", None, &[])).await?;
    let before = now_ms();
    let a5 = start(&mut disp, "alpha", t1.clone()).await?;
    let created = w.next().await?;
    assert_eq!(
        (created.execution_id.as_str(), created.command_id.as_str()),
        (a5.as_str(), "alpha")
    );
    assert_eq!(
        (created.target.clone(), created.status(), created.terminal),
        (Some(t1.clone()), St::Created, false)
    );
    assert!(ms(&created.timestamp) >= before);
    disp.cancel_command_execution(pb::CancelCommandExecutionRequest {
        execution_id: a5.clone(),
        status_reason: Some(pb::StatusReason {
            reason_code: "STOP".into(),
            reason_description: "enough".into(),
        }),
        ..Default::default()
    })
    .await?;
    let canceled = w.next().await?;
    assert_eq!(
        (
            canceled.execution_id.as_str(),
            canceled.status(),
            canceled.terminal
        ),
        (a5.as_str(), St::Canceled, true)
    );
    assert_eq!(
        canceled.status_reason.map(|r| r.reason_code).as_deref(),
        Some("STOP")
    );
    assert_eq!(
        canceled.timestamp,
        get_execution(&mut reg, &a5).await?.completed_at
    );
    drop((
        all, by_command, by_target, by_status, combined, unrelated, w,
    ));
    stop(server).await?;
    Ok(())
}

// =============================================================================================
// Access control

const LAB_TOKEN: &str = "lab-operator-0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-secret-0123456789abcdef";

const POLICY: &str = r#"
[[tokens]]
name = "lab-operator"
token = "lab-operator-0123456789abcdef"
[[tokens.allow]]
actions = ["StartCommandExecution"]
commands = ["reboot"]
targets = ["thing/lab-*"]

[[tokens]]
name = "admin"
token = "admin-secret-0123456789abcdef"
[[tokens.allow]]
actions = ["*"]
"#;

/// One call of every method, authorised with `auth` (a full `authorization` value or none).
fn authed<T>(auth: Option<&str>, message: T) -> tonic::Request<T> {
    match auth {
        Some(a) => with_authorization(message, a),
        None => tonic::Request::new(message),
    }
}

async fn call_every_method(
    server: &Server,
    auth: Option<&str>,
    execution_id: &str,
) -> anyhow::Result<Vec<(&'static str, tonic::Status)>> {
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;
    let err = |r: std::result::Result<(), tonic::Status>| r.err();
    let mut out = Vec::new();
    let mut push = |name, e: Option<tonic::Status>| {
        if let Some(e) = e {
            out.push((name, e));
        }
    };
    push(
        "CreateCommand",
        err(reg
            .create_command(authed(auth, static_json_command("made-by-anyone", "{}")))
            .await
            .map(drop)),
    );
    push(
        "GetCommand",
        err(reg
            .get_command(authed(
                auth,
                pb::GetCommandRequest {
                    command_id: "reboot".into(),
                },
            ))
            .await
            .map(drop)),
    );
    push(
        "ListCommands",
        err(reg
            .list_commands(authed(auth, pb::ListCommandsRequest::default()))
            .await
            .map(drop)),
    );
    push(
        "UpdateCommand",
        err(reg
            .update_command(authed(
                auth,
                pb::UpdateCommandRequest {
                    command_id: "reboot".into(),
                    display_name: Some("x".into()),
                    ..Default::default()
                },
            ))
            .await
            .map(drop)),
    );
    push(
        "DeleteCommand",
        err(reg
            .delete_command(authed(
                auth,
                pb::DeleteCommandRequest {
                    command_id: "other".into(),
                },
            ))
            .await
            .map(drop)),
    );
    push(
        "GetCommandExecution",
        err(reg
            .get_command_execution(authed(
                auth,
                pb::GetCommandExecutionRequest {
                    execution_id: execution_id.into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop)),
    );
    push(
        "ListCommandExecutions",
        err(reg
            .list_command_executions(authed(auth, pb::ListCommandExecutionsRequest::default()))
            .await
            .map(drop)),
    );
    push(
        "DeleteCommandExecution",
        err(reg
            .delete_command_execution(authed(
                auth,
                pb::DeleteCommandExecutionRequest {
                    execution_id: execution_id.into(),
                    target: None,
                },
            ))
            .await
            .map(drop)),
    );
    push(
        "WatchCommandExecutions",
        err(reg
            .watch_command_executions(authed(auth, pb::WatchCommandExecutionsRequest::default()))
            .await
            .map(drop)),
    );
    push(
        "StartCommandExecution",
        err(disp
            .start_command_execution(authed(auth, start_request("other", thing("prod-1"))))
            .await
            .map(drop)),
    );
    push(
        "CancelCommandExecution",
        err(disp
            .cancel_command_execution(authed(
                auth,
                pb::CancelCommandExecutionRequest {
                    execution_id: execution_id.into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop)),
    );
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_authenticates_and_authorizes_every_call() -> Result {
    let policy_dir = temp_data_dir("policy");
    std::fs::create_dir_all(&policy_dir)?;
    let policy = policy_dir.join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let mut args = test_args("auth");
    args.policy = Some(policy);
    let server = Server::start_with(args).await?;
    let mut reg = server.registry().await?;
    let mut disp = server.dispatcher().await?;

    // The admin (actions "*") sets up.
    for id in ["reboot", "other"] {
        reg.create_command(with_token(static_json_command(id, "{}"), ADMIN_TOKEN))
            .await?;
    }

    // The lab operator may start reboot on thing/lab-* and nothing else.
    let lab_exec = disp
        .start_command_execution(with_token(
            start_request("reboot", thing("lab-1")),
            LAB_TOKEN,
        ))
        .await?
        .into_inner()
        .execution_id;
    let denied = [
        (
            start_request("reboot", thing("prod-1")),
            vec![
                "lab-operator",
                "StartCommandExecution",
                "reboot",
                "thing/prod-1",
            ],
        ),
        (
            start_request("other", thing("lab-1")),
            vec!["lab-operator", "other", "thing/lab-1"],
        ),
        (
            start_request("reboot", client("lab-1")),
            vec!["client/lab-1"],
        ),
        (
            start_request("reboot", thing("xlab-1")),
            vec!["thing/xlab-1"],
        ),
    ];
    for (req, needles) in denied {
        expect_code(
            disp.start_command_execution(with_token(req, LAB_TOKEN))
                .await,
            Code::PermissionDenied,
            &needles,
        );
    }
    // Every other method is denied to it, and nothing changed.
    let refused =
        call_every_method(&server, Some(&format!("Bearer {LAB_TOKEN}")), &lab_exec).await?;
    assert_eq!(refused.len(), 11, "{refused:?}");
    for (method, status) in &refused {
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{method}: {status:?}"
        );
        assert!(
            status.message().contains("lab-operator") && status.message().contains(method),
            "{method}: {}",
            status.message()
        );
    }
    let listed = list_all_executions_as(&mut reg, ADMIN_TOKEN).await?;
    assert_eq!(execution_ids(&listed), vec![lab_exec.clone()]);
    let e = reg
        .get_command_execution(with_token(
            pb::GetCommandExecutionRequest {
                execution_id: lab_exec.clone(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await?
        .into_inner();
    assert_eq!(
        (e.command_id.as_str(), e.target.clone(), e.status()),
        ("reboot", Some(thing("lab-1")), St::Created)
    );
    let commands = reg
        .list_commands(with_token(pb::ListCommandsRequest::default(), ADMIN_TOKEN))
        .await?
        .into_inner()
        .commands;
    let ids: Vec<&str> = commands.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(ids, vec!["other", "reboot"]);
    assert!(
        commands
            .iter()
            .all(|c| c.display_name.is_empty() && !c.pending_deletion)
    );

    // Missing, unknown and malformed credentials: UNAUTHENTICATED on every method.
    let unknown = format!("Bearer {}", "x".repeat(32));
    let cases: [(Option<&str>, &str); 5] = [
        (None, "missing authorization"),
        (Some(unknown.as_str()), "unknown bearer token"),
        (Some("Basic YWRtaW46YWRtaW4="), "Bearer <token>"),
        (Some(ADMIN_TOKEN), "Bearer <token>"),
        (
            Some("Bearer lab-operator-0123456789abcdeF"),
            "unknown bearer token",
        ),
    ];
    for (auth, needle) in cases {
        let refused = call_every_method(&server, auth, &lab_exec).await?;
        assert_eq!(refused.len(), 11, "{auth:?}: {refused:?}");
        for (method, status) in refused {
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{method} with {auth:?}: {status:?}"
            );
            assert!(
                status.message().contains(needle),
                "{method} with {auth:?}: {}",
                status.message()
            );
            assert!(
                !status.message().contains(ADMIN_TOKEN) && !status.message().contains(LAB_TOKEN),
                "never echo a token"
            );
        }
    }
    assert_eq!(
        execution_ids(&list_all_executions_as(&mut reg, ADMIN_TOKEN).await?),
        vec![lab_exec.clone()]
    );
    assert_eq!(
        reg.list_commands(with_token(pb::ListCommandsRequest::default(), ADMIN_TOKEN))
            .await?
            .into_inner()
            .commands
            .len(),
        2
    );

    // The admin may do everything.
    let mut watch = reg
        .watch_command_executions(with_token(
            pb::WatchCommandExecutionsRequest::default(),
            ADMIN_TOKEN,
        ))
        .await?
        .into_inner();
    reg.get_command(with_token(
        pb::GetCommandRequest {
            command_id: "reboot".into(),
        },
        ADMIN_TOKEN,
    ))
    .await?;
    reg.update_command(with_token(
        pb::UpdateCommandRequest {
            command_id: "other".into(),
            deprecated: Some(true),
            ..Default::default()
        },
        ADMIN_TOKEN,
    ))
    .await?;
    let admin_exec = disp
        .start_command_execution(with_token(
            start_request("reboot", thing("prod-1")),
            ADMIN_TOKEN,
        ))
        .await?
        .into_inner()
        .execution_id;
    let event = tokio::time::timeout(WAIT, watch.message())
        .await??
        .expect("an event");
    assert_eq!(
        (event.execution_id.as_str(), event.status()),
        (admin_exec.as_str(), St::Created)
    );
    for id in [&lab_exec, &admin_exec] {
        disp.cancel_command_execution(with_token(
            pb::CancelCommandExecutionRequest {
                execution_id: id.clone(),
                ..Default::default()
            },
            ADMIN_TOKEN,
        ))
        .await?;
        reg.delete_command_execution(with_token(
            pb::DeleteCommandExecutionRequest {
                execution_id: id.clone(),
                target: None,
            },
            ADMIN_TOKEN,
        ))
        .await?;
    }
    assert!(
        list_all_executions_as(&mut reg, ADMIN_TOKEN)
            .await?
            .is_empty()
    );
    let deleted = reg
        .delete_command(with_token(
            pb::DeleteCommandRequest {
                command_id: "other".into(),
            },
            ADMIN_TOKEN,
        ))
        .await?
        .into_inner();
    assert_eq!(deleted.status_code, 202);
    // "bearer" in lower case is accepted too.
    reg.list_commands(with_authorization(
        pb::ListCommandsRequest::default(),
        &format!("bearer {ADMIN_TOKEN}"),
    ))
    .await?;
    drop(watch);
    stop(server).await?;
    std::fs::remove_dir_all(&policy_dir)?;
    Ok(())
}

async fn list_all_executions_as(
    reg: &mut Registry,
    token: &str,
) -> anyhow::Result<Vec<pb::CommandExecutionSummary>> {
    Ok(reg
        .list_command_executions(with_token(
            pb::ListCommandExecutionsRequest {
                max_results: 100,
                ..Default::default()
            },
            token,
        ))
        .await?
        .into_inner()
        .command_executions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_public_address_without_a_policy() -> Result {
    let mut args = test_args("public");
    args.grpc_addr = "0.0.0.0:0".parse()?;
    let data_dir = args.data_dir.clone();
    let err = match fleetcmd::serve::start(args.clone()).await {
        Ok(running) => {
            running.stop().await?;
            panic!("serve started on 0.0.0.0 without a policy");
        }
        Err(e) => format!("{e:#}"),
    };
    for needle in [
        "refusing",
        "0.0.0.0:0",
        "--policy",
        "--allow-unauthenticated",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
    assert!(
        !data_dir.exists(),
        "a refused start created its data directory"
    );

    // A malformed policy file is refused too, naming the mistake but never the token.
    let dir = temp_data_dir("bad-policy");
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("policy.toml");
    std::fs::write(
        &bad,
        "[[tokens]]\nname = \"ci\"\ntoken = \"short-secret\"\n[[tokens.allow]]\nactions = [\"*\"]\n",
    )?;
    let with_bad = args_with_policy(&args, Some(bad.clone()));
    let err = match fleetcmd::serve::start(with_bad).await {
        Ok(running) => {
            running.stop().await?;
            panic!("serve started with a malformed policy");
        }
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("tokens[0].token") && err.contains("16"),
        "{err}"
    );
    assert!(!err.contains("short-secret"), "never echo a token: {err}");
    let missing = args_with_policy(&args, Some(dir.join("missing.toml")));
    let err = fleetcmd::serve::start(missing)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(err.contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(&dir)?;

    // With --allow-unauthenticated it serves (and answers) on every interface.
    let mut open = args.clone();
    open.allow_unauthenticated = true;
    let server = Server::start_with(open).await?;
    assert!(server.running.grpc_addr.ip().is_unspecified());
    let mut reg = fleetcmd_e2e::api::Registry::connect(format!(
        "http://127.0.0.1:{}",
        server.running.grpc_addr.port()
    ))
    .await?;
    assert!(
        reg.list_commands(pb::ListCommandsRequest::default())
            .await?
            .into_inner()
            .commands
            .is_empty()
    );
    stop(server).await?;
    Ok(())
}

fn args_with_policy(
    args: &fleetcmd::serve::ServeArgs,
    policy: Option<std::path::PathBuf>,
) -> fleetcmd::serve::ServeArgs {
    let mut a = args.clone();
    a.policy = policy;
    a.data_dir = temp_data_dir("policy-data");
    a
}

/// A graceful stop does not wait for open Watch streams: they end with UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_open_watch_streams() -> Result {
    let server = Server::start("stop-watch").await?;
    let mut registry = server.registry().await?;
    let mut stream = registry
        .watch_command_executions(pb::WatchCommandExecutionsRequest::default())
        .await?
        .into_inner();
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.stop()).await;
    assert!(stopped.is_ok(), "stop() waited on an open Watch stream");
    stopped??;
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message()).await?;
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(None) => {}
        Ok(Some(event)) => panic!("unexpected event after shutdown: {event:?}"),
    }
    Ok(())
}
