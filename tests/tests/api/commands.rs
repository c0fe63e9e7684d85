//! Commands: create, get and list.

use std::collections::HashMap;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{static_json_command, template_command, thing};
use tonic::Code;

use crate::{ARN_PREFIX, Result, given, level_parameter};

/// A static JSON command with every optional field.
fn reboot_with_every_field() -> pb::CreateCommandRequest {
    pb::CreateCommandRequest {
        display_name: "Reboot".into(),
        description: "Reboots the device — gently".into(),
        tags: HashMap::from([
            ("team".into(), "ops".into()),
            ("empty".into(), String::new()),
        ]),
        ..static_json_command("reboot", r#"{"action":"reboot"}"#)
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

fn every_type_command(id: &str, format: pb::OutputFormat) -> pb::CreateCommandRequest {
    template_command(id, &every_type_template(), format, every_type_parameters())
}

// ---- create and get -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_get_returns_every_field_of_a_static_command() -> Result {
    let (server, mut reg, _) = given("create-get", &[]).await?;
    let req = reboot_with_every_field();
    let before = now_ms();

    let created = reg.create_command(req.clone()).await?.into_inner();
    // Read-your-writes: Get right after Create.
    let c = get_command(&mut reg, "reboot").await?;
    let after = now_ms();

    assert_eq!(created.command_id, "reboot");
    assert_eq!(created.command_arn, format!("{ARN_PREFIX}command/reboot"));
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
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_payload_without_a_content_type_is_octet_stream() -> Result {
    let (server, mut reg, _) = given("create-raw", &[]).await?;
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
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_keep_parameters_of_every_type_exactly() -> Result {
    let (server, mut reg, _) = given("create-templates", &[]).await?;
    for (id, format) in [
        ("tpl-json", pb::OutputFormat::Json),
        ("tpl-cbor", pb::OutputFormat::Cbor),
    ] {
        let req = every_type_command(id, format);

        let created = reg.create_command(req.clone()).await?.into_inner();

        assert_eq!(created.command_arn, format!("{ARN_PREFIX}command/{id}"));
        let c = get_command(&mut reg, id).await?;
        assert!(c.payload.is_none(), "{id}");
        assert_eq!(c.payload_template, req.payload_template, "{id}");
        assert_eq!(c.preprocessor, req.preprocessor, "{id}");
        assert_eq!(c.mandatory_parameters, req.mandatory_parameters, "{id}");
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_without_a_preprocessor_renders_to_json() -> Result {
    let (server, mut reg, _) = given("create-default-format", &[]).await?;
    let mut req = template_command(
        "tpl-default",
        &format!("{{\"t\": \"{TIMEOUT_PLACEHOLDER}\"}}"),
        pb::OutputFormat::Json,
        vec![],
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
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_resolves_given_values_fixed_values_and_defaults() -> Result {
    let (server, mut reg, mut disp) = given("start-parameters", &[]).await?;
    reg.create_command(every_type_command("tpl-cbor", pb::OutputFormat::Cbor))
        .await?;
    let mut start = start_request("tpl-cbor", thing("lamp-1"));
    start.parameters = HashMap::from([("level".into(), pv_i(80)), ("mode".into(), pv_s("boost"))]);

    let id = start_execution(&mut disp, start).await?;

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
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_of_an_existing_id_is_already_exists_and_changes_nothing() -> Result {
    let (server, mut reg, _) = given("create-duplicate", &[]).await?;
    reg.create_command(reboot_with_every_field()).await?;
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
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_command_of_an_unknown_or_malformed_id_is_refused() -> Result {
    let (server, mut reg, _) = given("get-command-errors", &[]).await?;
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
    server.shutdown().await
}

// ---- list -----------------------------------------------------------------------------------

/// Seven commands `cmd-0` … `cmd-6` created in order; the template ones (0, 3, 6) declare
/// a parameter named "level".
async fn given_seven_commands(
    name: &str,
) -> anyhow::Result<(fleetcmd_e2e::Server, Registry, Vec<String>)> {
    let (server, mut reg, _) = given(name, &[]).await?;
    let mut created = Vec::new();
    for i in 0..7 {
        let id = format!("cmd-{i}");
        let req = if i % 3 == 0 {
            template_command(
                &id,
                &format!("{{\"l\": \"{}\"}}", placeholder("level")),
                pb::OutputFormat::Json,
                vec![level_parameter()],
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
    Ok((server, reg, created))
}

fn ascending(max_results: i32) -> pb::ListCommandsRequest {
    pb::ListCommandsRequest {
        sort_order: pb::SortOrder::Ascending as i32,
        max_results,
        ..Default::default()
    }
}

fn command_ids(list: &[pb::CommandSummary]) -> Vec<String> {
    list.iter().map(|c| c.command_id.clone()).collect()
}

fn reversed(mut ids: Vec<String>) -> Vec<String> {
    ids.reverse();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_commands_defaults_to_newest_first_with_every_summary_field() -> Result {
    let (server, mut reg, created) = given_seven_commands("list-commands-default").await?;

    let page = reg
        .list_commands(pb::ListCommandsRequest::default())
        .await?
        .into_inner();

    assert!(page.next_token.is_empty());
    assert_eq!(command_ids(&page.commands), reversed(created));
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
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_commands_sorts_ascending_or_descending() -> Result {
    let (server, mut reg, created) = given_seven_commands("list-commands-sort").await?;
    let explicit_desc = pb::ListCommandsRequest {
        sort_order: pb::SortOrder::Descending as i32,
        ..Default::default()
    };

    let (all_asc, _) = list_all_commands(&mut reg, ascending(0)).await?;
    let (all_desc, _) = list_all_commands(&mut reg, explicit_desc).await?;

    assert_eq!(command_ids(&all_asc), created);
    assert_eq!(command_ids(&all_desc), reversed(created));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_visits_every_command_once_in_order_both_ways() -> Result {
    let (server, mut reg, created) = given_seven_commands("list-commands-paging").await?;
    for size in [1, 2, 3, 7, 100] {
        let (paged, pages) = list_all_commands(&mut reg, ascending(size)).await?;
        assert_eq!(command_ids(&paged), created, "page size {size}");
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
            command_ids(&paged),
            reversed(created.clone()),
            "page size {size}, descending"
        );
    }
    let first = reg.list_commands(ascending(3)).await?.into_inner();
    assert_eq!(first.commands.len(), 3);
    assert!(!first.next_token.is_empty());
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_commands_filters_by_parameter_name_and_namespace() -> Result {
    let (server, mut reg, _) = given_seven_commands("list-commands-filters").await?;
    let by_param = pb::ListCommandsRequest {
        command_parameter_name: "level".into(),
        max_results: 1,
        ..ascending(1)
    };
    let none = pb::ListCommandsRequest {
        command_parameter_name: "nope".into(),
        ..Default::default()
    };
    let ns = pb::ListCommandsRequest {
        namespace: "AWS-IoT".into(),
        ..Default::default()
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
    assert!(
        reg.list_commands(none)
            .await?
            .into_inner()
            .commands
            .is_empty()
    );
    assert_eq!(reg.list_commands(ns).await?.into_inner().commands.len(), 7);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_commands_refuses_a_bad_page_size_sort_order_or_page_token() -> Result {
    let (server, mut reg, _) = given_seven_commands("list-commands-errors").await?;
    for bad in [101, -1] {
        expect_invalid(
            reg.list_commands(ascending(bad)).await,
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
    server.shutdown().await
}
