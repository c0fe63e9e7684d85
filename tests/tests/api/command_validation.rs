//! Commands: every create limit, refused beyond it and accepted exactly at it.

use std::collections::HashMap;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{static_json_command, template_command};
use pb::ComparisonOperator as Op;
use pb::ParameterType as T;

use crate::{Result, given, level_parameter};

fn stat(id: &str) -> pb::CreateCommandRequest {
    static_json_command(id, "{}")
}

/// A valid template using only the timeout placeholder, so any parameter list fits it.
fn tpl(params: Vec<pb::CommandParameter>) -> pb::CreateCommandRequest {
    template_command(
        "c",
        &format!("{{\"t\": \"{TIMEOUT_PLACEHOLDER}\"}}"),
        pb::OutputFormat::Json,
        params,
    )
}

fn with_default(ty: T, v: pb::ParameterValue) -> Vec<pb::CommandParameter> {
    vec![pb::CommandParameter {
        default_value: Some(v),
        ..param("p", ty)
    }]
}

fn with_condition(ty: T, c: pb::ValueCondition) -> Vec<pb::CommandParameter> {
    vec![pb::CommandParameter {
        value_conditions: vec![c],
        ..param("p", ty)
    }]
}

/// A valid template of exactly `len` characters.
fn padded_template(len: usize) -> String {
    let head = format!("{{\"t\": \"{TIMEOUT_PLACEHOLDER}\", \"pad\": \"");
    let tail = "\"}";
    format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
}

fn many_tags(n: usize) -> HashMap<String, String> {
    (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()
}

/// Every limit, one request just beyond it.
fn beyond_every_limit() -> Vec<Refused<pb::CreateCommandRequest>> {
    vec![
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
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refuses_every_value_beyond_a_limit_and_creates_nothing() -> Result {
    let (server, mut reg, _) = given("create-limits", &[]).await?;
    for (label, req, field, needles) in beyond_every_limit() {
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
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_create_limit_is_inclusive() -> Result {
    let (server, mut reg, _) = given("create-at-limits", &[]).await?;
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

    reg.create_command(at_limits.clone()).await?;
    reg.create_command(pb::CreateCommandRequest {
        command_id: "tpl-max".into(),
        ..template.clone()
    })
    .await?;

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
    server.shutdown().await
}
