//! ThingRegistry: creating, reading, listing, updating and deleting things, every refusal
//! naming what was wrong and changing nothing, things surviving a restart, and the policy
//! covering the thing calls.

use std::collections::HashMap;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{ADMIN_TOKEN, Server, Things, policed_args, test_args, with_admin, within};
use tonic::Code;

use crate::{ARN_PREFIX, Result};

fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn create(name: &str, attributes: &[(&str, &str)]) -> pb::CreateThingRequest {
    pb::CreateThingRequest {
        thing_name: name.into(),
        attributes: attrs(attributes),
        max_in_flight: 0,
    }
}

async fn get(things: &mut Things, name: &str) -> std::result::Result<pb::Thing, tonic::Status> {
    things
        .get_thing(pb::GetThingRequest {
            thing_name: name.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Every thing `request` lists, page after page, by name.
async fn list_names(things: &mut Things, request: pb::ListThingsRequest) -> Vec<String> {
    thing_names(|next_token| {
        let mut things = things.clone();
        let request = pb::ListThingsRequest {
            next_token,
            ..request.clone()
        };
        async move { things.list_things(request).await }
    })
    .await
}

async fn given_things(name: &str) -> anyhow::Result<(Server, Things)> {
    let server = Server::start(name).await?;
    let things = server.things().await?;
    Ok((server, things))
}

#[tokio::test]
async fn a_created_thing_reads_back_with_its_arn_attributes_limit_and_version() -> Result {
    let (server, mut things) = given_things("thing-create").await?;
    let created = things
        .create_thing(pb::CreateThingRequest {
            max_in_flight: 2,
            ..create("lamp-1", &[("model", "lamp-v2"), ("floor", "3")])
        })
        .await?
        .into_inner();
    assert_eq!(created.thing_name, "lamp-1");
    assert_eq!(created.thing_arn, format!("{ARN_PREFIX}thing/lamp-1"));
    let t = get(&mut things, "lamp-1").await?;
    assert_eq!(t.thing_arn, created.thing_arn);
    assert_eq!(t.attributes, attrs(&[("model", "lamp-v2"), ("floor", "3")]));
    assert_eq!((t.max_in_flight, t.version), (2, 1));
    assert!(t.created_at.is_some() && t.last_updated_at.is_some());
    // Creating the same thing again succeeds (as AWS); with other attributes it conflicts.
    things
        .create_thing(pb::CreateThingRequest {
            max_in_flight: 2,
            ..create("lamp-1", &[("model", "lamp-v2"), ("floor", "3")])
        })
        .await?;
    expect_code(
        things
            .create_thing(create("lamp-1", &[("model", "other")]))
            .await,
        Code::AlreadyExists,
        &["lamp-1", "already exists"],
    );
    assert_eq!(
        get(&mut things, "lamp-1").await?.version,
        1,
        "nothing changed"
    );
    server.shutdown().await
}

#[tokio::test]
async fn an_update_merges_or_replaces_attributes_and_checks_the_expected_version() -> Result {
    let (server, mut things) = given_things("thing-update").await?;
    things
        .create_thing(create("lamp-1", &[("model", "v1"), ("floor", "3")]))
        .await?;
    let update = |attributes: &[(&str, &str)]| pb::UpdateThingRequest {
        thing_name: "lamp-1".into(),
        attributes: attrs(attributes),
        ..Default::default()
    };
    // Merge: set one, remove one (an empty value).
    let v = things
        .update_thing(update(&[("model", "v2"), ("floor", "")]))
        .await?
        .into_inner()
        .version;
    assert_eq!(v, 2);
    assert_eq!(
        get(&mut things, "lamp-1").await?.attributes,
        attrs(&[("model", "v2")])
    );
    // A stale expected version is refused and changes nothing.
    expect_code(
        things
            .update_thing(pb::UpdateThingRequest {
                expected_version: 1,
                ..update(&[("model", "v3")])
            })
            .await,
        Code::Aborted,
        &["version 2, not 1"],
    );
    // Replace, at the right version, and set a limit.
    let v = things
        .update_thing(pb::UpdateThingRequest {
            replace_attributes: true,
            expected_version: 2,
            max_in_flight: 1,
            ..update(&[("room", "kitchen")])
        })
        .await?
        .into_inner()
        .version;
    let t = get(&mut things, "lamp-1").await?;
    assert_eq!((v, t.version, t.max_in_flight), (3, 3, 1));
    assert_eq!(t.attributes, attrs(&[("room", "kitchen")]));
    // Clearing the limit goes back to the server default (0 on the wire).
    things
        .update_thing(pb::UpdateThingRequest {
            clear_max_in_flight: true,
            ..update(&[])
        })
        .await?;
    assert_eq!(get(&mut things, "lamp-1").await?.max_in_flight, 0);
    expect_code(
        things
            .update_thing(pb::UpdateThingRequest {
                thing_name: "ghost".into(),
                ..update(&[("a", "b")])
            })
            .await,
        Code::NotFound,
        &["thing ghost not found"],
    );
    server.shutdown().await
}

#[tokio::test]
async fn listings_page_by_name_and_filter_by_attribute_and_prefix() -> Result {
    let (server, mut things) = given_things("thing-list").await?;
    for (name, model) in [
        ("lamp-3", "v2"),
        ("lamp-1", "v2"),
        ("plug-1", "v2"),
        ("lamp-2", "v1"),
    ] {
        things
            .create_thing(create(name, &[("model", model)]))
            .await?;
    }
    let all = pb::ListThingsRequest {
        max_results: 1,
        ..Default::default()
    };
    assert_eq!(
        list_names(&mut things, all.clone()).await,
        ["lamp-1", "lamp-2", "lamp-3", "plug-1"]
    );
    let v2_lamps = pb::ListThingsRequest {
        attribute_name: "model".into(),
        attribute_value: "v2".into(),
        thing_name_prefix: "lamp-".into(),
        ..all.clone()
    };
    assert_eq!(
        list_names(&mut things, v2_lamps).await,
        ["lamp-1", "lamp-3"]
    );
    let page = things
        .list_things(pb::ListThingsRequest {
            max_results: 3,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(page.things.len(), 3);
    assert_eq!(
        page.things[0].thing_arn,
        format!("{ARN_PREFIX}thing/lamp-1")
    );
    assert!(!page.next_token.is_empty(), "a fourth thing follows");
    server.shutdown().await
}

#[tokio::test]
async fn a_deleted_thing_is_gone_and_deleting_it_again_succeeds_as_in_aws() -> Result {
    let (server, mut things) = given_things("thing-delete").await?;
    things.create_thing(create("lamp-1", &[("a", "b")])).await?;
    let delete = |expected_version| pb::DeleteThingRequest {
        thing_name: "lamp-1".into(),
        expected_version,
    };
    expect_code(
        things.delete_thing(delete(7)).await,
        Code::Aborted,
        &["version 1, not 7"],
    );
    things.delete_thing(delete(1)).await?;
    expect_code(
        get(&mut things, "lamp-1").await.map(tonic::Response::new),
        Code::NotFound,
        &["thing lamp-1 not found"],
    );
    assert!(list_names(&mut things, Default::default()).await.is_empty());
    things.delete_thing(delete(0)).await?;
    expect_code(
        things.delete_thing(delete(1)).await,
        Code::NotFound,
        &["thing lamp-1 not found"],
    );
    // The name is free again.
    things.create_thing(create("lamp-1", &[])).await?;
    assert_eq!(get(&mut things, "lamp-1").await?.version, 1);
    server.shutdown().await
}

#[tokio::test]
async fn bad_requests_name_the_field_and_change_nothing() -> Result {
    let (server, mut things) = given_things("thing-invalid").await?;
    expect_invalid(
        things.create_thing(create("bad name", &[])).await,
        "thing_name",
        &["[a-zA-Z0-9:_-]"],
    );
    expect_invalid(
        things.create_thing(create(&"x".repeat(129), &[])).await,
        "thing_name",
        &[],
    );
    let many: Vec<(String, String)> = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
    expect_invalid(
        things
            .create_thing(pb::CreateThingRequest {
                attributes: many.into_iter().collect(),
                ..create("lamp-1", &[])
            })
            .await,
        "attributes",
        &["at most 50 attributes, got 51"],
    );
    expect_invalid(
        things
            .create_thing(create("lamp-1", &[("bad key", "v")]))
            .await,
        r#"attributes["bad key"]"#,
        &["attribute names must match"],
    );
    expect_invalid(
        things.create_thing(create("lamp-1", &[("k", "")])).await,
        r#"attributes["k"]"#,
        &["must not be empty"],
    );
    expect_invalid(
        things
            .create_thing(pb::CreateThingRequest {
                max_in_flight: 1001,
                ..create("lamp-1", &[])
            })
            .await,
        "max_in_flight",
        &["between 1 and 1000, got 1001"],
    );
    expect_invalid(
        things
            .list_things(pb::ListThingsRequest {
                attribute_name: "model".into(),
                ..Default::default()
            })
            .await,
        "attribute_value",
        &["is required with attribute_name"],
    );
    expect_code(
        things
            .list_things(pb::ListThingsRequest {
                next_token: "%%%".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["invalid next_token"],
    );
    expect_invalid(
        things
            .update_thing(pb::UpdateThingRequest {
                thing_name: "lamp-1".into(),
                max_in_flight: 2,
                clear_max_in_flight: true,
                ..Default::default()
            })
            .await,
        "clear_max_in_flight",
        &["cannot be set together with max_in_flight"],
    );
    expect_invalid(
        things
            .delete_thing(pb::DeleteThingRequest {
                thing_name: "lamp-1".into(),
                expected_version: -1,
            })
            .await,
        "expected_version",
        &["must not be negative"],
    );
    assert!(
        list_names(&mut things, Default::default()).await.is_empty(),
        "no refused call created a thing"
    );
    server.shutdown().await
}

#[tokio::test]
async fn things_survive_a_restart() -> Result {
    let args = test_args("thing-restart");
    let server = Server::start_with(args.clone()).await?;
    let mut things = server.things().await?;
    things
        .create_thing(create("lamp-1", &[("model", "v1")]))
        .await?;
    things
        .update_thing(pb::UpdateThingRequest {
            thing_name: "lamp-1".into(),
            attributes: attrs(&[("model", "v2")]),
            ..Default::default()
        })
        .await?;
    things.create_thing(create("lamp-2", &[])).await?;
    things
        .delete_thing(pb::DeleteThingRequest {
            thing_name: "lamp-2".into(),
            expected_version: 0,
        })
        .await?;
    let data_dir = server.stop().await?;
    let server = Server::start_with(fleetcmd_e2e::ServeArgs { data_dir, ..args }).await?;
    let mut things = server.things().await?;
    let t = get(&mut things, "lamp-1").await?;
    assert_eq!((t.version, t.attributes), (2, attrs(&[("model", "v2")])));
    assert_eq!(
        list_names(&mut things, Default::default()).await,
        ["lamp-1"]
    );
    // The owner rebuilt its state too: an update at the stored version is accepted.
    things
        .update_thing(pb::UpdateThingRequest {
            thing_name: "lamp-1".into(),
            attributes: attrs(&[("model", "v3")]),
            expected_version: 2,
            ..Default::default()
        })
        .await?;
    server.shutdown().await
}

const POLICY: &str = r#"
[[tokens]]
name = "lab-reader"
token = "lab-reader-0123456789abcdef"
[[tokens.allow]]
actions = ["GetThing", "UpdateThing"]
targets = ["thing/lab-*"]
"#;

#[tokio::test]
async fn the_policy_covers_the_thing_calls() -> Result {
    let server = Server::start_with(policed_args("thing-policy", &with_admin(POLICY))?).await?;
    let mut things = server.things().await?;
    let (admin, reader) = (ADMIN_TOKEN, "lab-reader-0123456789abcdef");
    for name in ["lab-1", "office-1"] {
        things
            .create_thing(with_token(create(name, &[]), admin))
            .await?;
    }
    let get_as = |name: &str, token: &str| {
        with_token(
            pb::GetThingRequest {
                thing_name: name.into(),
            },
            token,
        )
    };
    things.get_thing(get_as("lab-1", reader)).await?;
    expect_code(
        things.get_thing(get_as("office-1", reader)).await,
        Code::PermissionDenied,
        &["lab-reader", "GetThing", "thing/office-1"],
    );
    expect_code(
        things
            .create_thing(with_token(create("lab-2", &[]), reader))
            .await,
        Code::PermissionDenied,
        &["CreateThing"],
    );
    expect_code(
        things
            .list_things(with_token(pb::ListThingsRequest::default(), reader))
            .await,
        Code::PermissionDenied,
        &["ListThings"],
    );
    expect_code(
        things
            .get_thing(pb::GetThingRequest {
                thing_name: "lab-1".into(),
            })
            .await,
        Code::Unauthenticated,
        &[],
    );
    let names = within(
        "listing as admin",
        things.list_things(with_token(pb::ListThingsRequest::default(), admin)),
    )
    .await??;
    assert_eq!(
        names.into_inner().things.len(),
        2,
        "the refused create made nothing"
    );
    server.shutdown().await
}
