//! Thing groups: static groups with members added by name, dynamic groups whose members are
//! the things their query matches, every refusal naming what was wrong and changing nothing,
//! groups and memberships surviving a restart, and the policy covering the group calls.

use std::collections::HashMap;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{ADMIN_TOKEN, Server, Things, policed_args, test_args, with_admin};
use tonic::Code;

use crate::{ARN_PREFIX, Result};

async fn thing(things: &mut Things, name: &str, attributes: &[(&str, &str)]) -> Result {
    let attributes: HashMap<String, String> = attributes
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    things
        .create_thing(pb::CreateThingRequest {
            thing_name: name.into(),
            attributes,
            max_in_flight: 0,
        })
        .await?;
    Ok(())
}

fn static_group(name: &str, description: &str) -> pb::CreateThingGroupRequest {
    pb::CreateThingGroupRequest {
        thing_group_name: name.into(),
        description: description.into(),
        query_string: String::new(),
    }
}

fn dynamic_group(name: &str, query: &str) -> pb::CreateThingGroupRequest {
    pb::CreateThingGroupRequest {
        thing_group_name: name.into(),
        description: String::new(),
        query_string: query.into(),
    }
}

fn member(group: &str, thing: &str) -> pb::AddThingToThingGroupRequest {
    pb::AddThingToThingGroupRequest {
        thing_group_name: group.into(),
        thing_name: thing.into(),
    }
}

fn non_member(group: &str, thing: &str) -> pb::RemoveThingFromThingGroupRequest {
    pb::RemoveThingFromThingGroupRequest {
        thing_group_name: group.into(),
        thing_name: thing.into(),
    }
}

fn describe(name: &str) -> pb::DescribeThingGroupRequest {
    pb::DescribeThingGroupRequest {
        thing_group_name: name.into(),
    }
}

fn delete(name: &str) -> pb::DeleteThingGroupRequest {
    pb::DeleteThingGroupRequest {
        thing_group_name: name.into(),
    }
}

/// Every thing of `group`, page after page of `page_size`, by name.
async fn members(things: &mut Things, group: &str, page_size: i32) -> Vec<String> {
    thing_names(|next_token| {
        let mut things = things.clone();
        let request = pb::ListThingsInThingGroupRequest {
            thing_group_name: group.into(),
            max_results: page_size,
            next_token,
        };
        async move { things.list_things_in_thing_group(request).await }
    })
    .await
}

async fn group_names(things: &mut Things, prefix: &str) -> Vec<String> {
    let request = pb::ListThingGroupsRequest {
        name_prefix_filter: prefix.into(),
        ..Default::default()
    };
    let page = things
        .list_thing_groups(request)
        .await
        .expect("list")
        .into_inner();
    page.thing_groups
        .into_iter()
        .map(|g| g.thing_group_name)
        .collect()
}

async fn groups_of(things: &mut Things, name: &str) -> Vec<String> {
    let request = pb::GetThingRequest {
        thing_name: name.into(),
    };
    things
        .get_thing(request)
        .await
        .expect("get")
        .into_inner()
        .thing_groups
}

async fn given_things(name: &str) -> anyhow::Result<(Server, Things)> {
    let server = Server::start(name).await?;
    let things = server.things().await?;
    Ok((server, things))
}

#[tokio::test]
async fn a_static_group_gains_and_loses_members_and_is_deleted_once_empty() -> Result {
    let (server, mut things) = given_things("group-static").await?;
    for name in ["lamp-1", "lamp-2", "lamp-3"] {
        thing(&mut things, name, &[]).await?;
    }
    let created = things
        .create_thing_group(static_group("lab", "the lab bench"))
        .await?
        .into_inner();
    assert_eq!(
        created.thing_group_arn,
        format!("{ARN_PREFIX}thinggroup/lab")
    );
    assert_eq!(
        (created.description.as_str(), created.query_string.as_str()),
        ("the lab bench", "")
    );
    // Created again alike: the same group; differently: a conflict.
    let again = things
        .create_thing_group(static_group("lab", "the lab bench"))
        .await?
        .into_inner();
    assert_eq!(again, created);
    expect_code(
        things
            .create_thing_group(static_group("lab", "another bench"))
            .await,
        Code::AlreadyExists,
        &["lab", "different description"],
    );
    things.create_thing_group(static_group("field", "")).await?;
    assert_eq!(
        things
            .describe_thing_group(describe("lab"))
            .await?
            .into_inner(),
        created
    );
    assert_eq!(group_names(&mut things, "").await, ["field", "lab"]);
    assert_eq!(group_names(&mut things, "la").await, ["lab"]);

    for name in ["lamp-1", "lamp-2"] {
        things.add_thing_to_thing_group(member("lab", name)).await?;
    }
    things
        .add_thing_to_thing_group(member("lab", "lamp-1"))
        .await?;
    things
        .add_thing_to_thing_group(member("field", "lamp-1"))
        .await?;
    assert_eq!(members(&mut things, "lab", 1).await, ["lamp-1", "lamp-2"]);
    assert_eq!(members(&mut things, "field", 0).await, ["lamp-1"]);
    assert_eq!(groups_of(&mut things, "lamp-1").await, ["field", "lab"]);
    assert!(groups_of(&mut things, "lamp-3").await.is_empty());

    let refused = expect_code(
        things.delete_thing_group(delete("lab")).await,
        Code::FailedPrecondition,
        &["lab", "still has members", "RemoveThingFromThingGroup"],
    );
    assert!(refused.message().contains("lamp-"), "{}", refused.message());
    things.describe_thing_group(describe("lab")).await?;

    for name in ["lamp-1", "lamp-2"] {
        things
            .remove_thing_from_thing_group(non_member("lab", name))
            .await?;
    }
    // Removing a thing that is no member changes nothing and succeeds.
    things
        .remove_thing_from_thing_group(non_member("lab", "lamp-3"))
        .await?;
    assert!(members(&mut things, "lab", 0).await.is_empty());
    assert_eq!(groups_of(&mut things, "lamp-1").await, ["field"]);
    things.delete_thing_group(delete("lab")).await?;
    expect_code(
        things.describe_thing_group(describe("lab")).await,
        Code::NotFound,
        &["thing group lab not found"],
    );
    // Deleting it again succeeds, as a delete of a thing does.
    things.delete_thing_group(delete("lab")).await?;
    assert_eq!(group_names(&mut things, "").await, ["field"]);
    server.shutdown().await
}

#[tokio::test]
async fn a_dynamic_group_lists_the_things_its_query_matches_now() -> Result {
    let (server, mut things) = given_things("group-dynamic").await?;
    let fleet: [(&str, &[(&str, &str)]); 5] = [
        ("lamp-1", &[("model", "lamp-v2"), ("floor", "3")]),
        ("lamp-2", &[("model", "lamp-v2"), ("floor", "1")]),
        ("lamp-3", &[("model", "lamp-v2"), ("floor", "7")]),
        ("lamp-4", &[("model", "lamp-v1"), ("floor", "5")]),
        ("plug-1", &[("floor", "4")]),
    ];
    for (name, attributes) in fleet {
        thing(&mut things, name, attributes).await?;
    }
    let query = "attributes.model:lamp-v2 AND attributes.floor >= 3";
    let created = things
        .create_thing_group(dynamic_group("upstairs-v2", query))
        .await?
        .into_inner();
    assert_eq!(created.query_string, query);
    assert_eq!(
        members(&mut things, "upstairs-v2", 1).await,
        ["lamp-1", "lamp-3"]
    );
    // The members are whatever matches when listed.
    things
        .update_thing(pb::UpdateThingRequest {
            thing_name: "lamp-2".into(),
            attributes: HashMap::from([("floor".to_owned(), "9".to_owned())]),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        members(&mut things, "upstairs-v2", 2).await,
        ["lamp-1", "lamp-2", "lamp-3"]
    );
    // A query can read memberships, names and (in serve, whose broker reports it)
    // connectivity; none of these things is connected.
    things.create_thing_group(static_group("lab", "")).await?;
    things
        .add_thing_to_thing_group(member("lab", "plug-1"))
        .await?;
    things
        .add_thing_to_thing_group(member("lab", "lamp-4"))
        .await?;
    let query = "group:lab AND NOT thing_name:lamp-* AND connectivity.connected:false";
    things
        .create_thing_group(dynamic_group("lab-plugs", query))
        .await?;
    assert_eq!(members(&mut things, "lab-plugs", 0).await, ["plug-1"]);
    things
        .create_thing_group(dynamic_group(
            "old-or-low",
            "attributes.model:lamp-v1 OR attributes.floor < 3",
        ))
        .await?;
    assert_eq!(members(&mut things, "old-or-low", 1).await, ["lamp-4"]);

    for (verb, result) in [
        (
            "added to",
            things
                .add_thing_to_thing_group(member("upstairs-v2", "lamp-4"))
                .await
                .map(|_| tonic::Response::new(())),
        ),
        (
            "removed from",
            things
                .remove_thing_from_thing_group(non_member("upstairs-v2", "lamp-1"))
                .await
                .map(|_| tonic::Response::new(())),
        ),
    ] {
        expect_code(
            result,
            Code::InvalidArgument,
            &["upstairs-v2 is dynamic", verb],
        );
    }
    assert_eq!(groups_of(&mut things, "lamp-4").await, ["lab"]);
    // A dynamic group has no stored members, so it may be deleted at any time.
    things.delete_thing_group(delete("upstairs-v2")).await?;
    expect_code(
        things
            .list_things_in_thing_group(pb::ListThingsInThingGroupRequest {
                thing_group_name: "upstairs-v2".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        &["thing group upstairs-v2 not found"],
    );
    server.shutdown().await
}

async fn listed(things: &mut Things, request: pb::ListThingsRequest) -> Vec<String> {
    thing_names(|next_token| {
        let mut things = things.clone();
        let request = pb::ListThingsRequest {
            max_results: 1,
            next_token,
            ..request.clone()
        };
        async move { things.list_things(request).await }
    })
    .await
}

#[tokio::test]
async fn list_things_by_query_combines_the_query_with_the_other_filters() -> Result {
    let (server, mut things) = given_things("things-by-query").await?;
    let fleet: [(&str, &[(&str, &str)]); 4] = [
        ("lamp-1", &[("model", "lamp-v2"), ("floor", "3")]),
        ("lamp-2", &[("model", "lamp-v2"), ("floor", "1")]),
        ("lamp-3", &[("model", "lamp-v1"), ("floor", "7")]),
        ("plug-1", &[("model", "lamp-v2"), ("floor", "4")]),
    ];
    for (name, attributes) in fleet {
        thing(&mut things, name, attributes).await?;
    }
    let by_query = |query: &str| pb::ListThingsRequest {
        query_string: query.into(),
        ..Default::default()
    };
    assert_eq!(
        listed(&mut things, by_query("attributes.floor >= 3")).await,
        ["lamp-1", "lamp-3", "plug-1"]
    );
    assert_eq!(
        listed(
            &mut things,
            pb::ListThingsRequest {
                thing_name_prefix: "lamp-".into(),
                attribute_name: "model".into(),
                attribute_value: "lamp-v2".into(),
                ..by_query("attributes.floor >= 3 OR thing_name:lamp-2")
            }
        )
        .await,
        ["lamp-1", "lamp-2"]
    );
    assert_eq!(
        listed(
            &mut things,
            pb::ListThingsRequest {
                connectivity: pb::ConnectivityFilter::Disconnected.into(),
                ..by_query("NOT attributes.model:lamp-v2")
            }
        )
        .await,
        ["lamp-3"]
    );
    expect_invalid(
        things
            .list_things(by_query("attributes.floor >= three"))
            .await,
        "query_string",
        &["column"],
    );
    server.shutdown().await
}

#[tokio::test]
async fn bad_group_requests_name_the_field_and_change_nothing() -> Result {
    let (server, mut things) = given_things("group-bad").await?;
    thing(&mut things, "lamp-1", &[]).await?;
    things.create_thing_group(static_group("lab", "")).await?;
    expect_invalid(
        things.create_thing_group(static_group("lab/1", "")).await,
        "thing_group_name",
        &["[a-zA-Z0-9:_-]"],
    );
    expect_invalid(
        things.create_thing_group(static_group("", "")).await,
        "thing_group_name",
        &["1–128"],
    );
    expect_invalid(
        things
            .create_thing_group(static_group("long", &"d".repeat(2029)))
            .await,
        "description",
        &["at most 2028 characters"],
    );
    expect_invalid(
        things
            .create_thing_group(dynamic_group("broken", "attributes.model:v2 AND"))
            .await,
        "query_string",
        &[],
    );
    expect_code(
        things
            .add_thing_to_thing_group(member("nowhere", "lamp-1"))
            .await,
        Code::NotFound,
        &["thing group nowhere not found"],
    );
    expect_code(
        things
            .add_thing_to_thing_group(member("lab", "lamp-9"))
            .await,
        Code::NotFound,
        &["lamp-9"],
    );
    expect_invalid(
        things
            .add_thing_to_thing_group(member("lab", "lamp/1"))
            .await,
        "thing_name",
        &[],
    );
    expect_invalid(
        things
            .list_things_in_thing_group(pb::ListThingsInThingGroupRequest {
                thing_group_name: "lab".into(),
                max_results: 101,
                next_token: String::new(),
            })
            .await,
        "max_results",
        &[],
    );
    expect_code(
        things
            .list_things_in_thing_group(pb::ListThingsInThingGroupRequest {
                thing_group_name: "lab".into(),
                max_results: 0,
                next_token: "not-a-token".into(),
            })
            .await,
        Code::InvalidArgument,
        &["token"],
    );
    expect_code(
        things
            .list_thing_groups(pb::ListThingGroupsRequest {
                next_token: "not-a-token".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        &["token"],
    );
    assert_eq!(group_names(&mut things, "").await, ["lab"]);
    assert!(members(&mut things, "lab", 0).await.is_empty());
    assert!(groups_of(&mut things, "lamp-1").await.is_empty());
    server.shutdown().await
}

#[tokio::test]
async fn groups_and_memberships_survive_a_restart() -> Result {
    let args = test_args("group-restart");
    let server = Server::start_with(args.clone()).await?;
    let mut things = server.things().await?;
    thing(&mut things, "lamp-1", &[("model", "v2")]).await?;
    things
        .create_thing_group(static_group("lab", "bench"))
        .await?;
    things
        .create_thing_group(dynamic_group("v2", "attributes.model:v2"))
        .await?;
    things.create_thing_group(static_group("gone", "")).await?;
    things.delete_thing_group(delete("gone")).await?;
    things
        .add_thing_to_thing_group(member("lab", "lamp-1"))
        .await?;
    let data_dir = server.stop().await?;

    let server = Server::start_with(fleetcmd_e2e::ServeArgs { data_dir, ..args }).await?;
    let mut things = server.things().await?;
    assert_eq!(group_names(&mut things, "").await, ["lab", "v2"]);
    let lab = things
        .describe_thing_group(describe("lab"))
        .await?
        .into_inner();
    assert_eq!(lab.description, "bench");
    assert_eq!(members(&mut things, "lab", 0).await, ["lamp-1"]);
    assert_eq!(members(&mut things, "v2", 0).await, ["lamp-1"]);
    // The owners rebuilt their state too: the group is still there to refuse a different
    // create, and the membership to be removed.
    expect_code(
        things
            .create_thing_group(static_group("lab", "other"))
            .await,
        Code::AlreadyExists,
        &["lab"],
    );
    things
        .remove_thing_from_thing_group(non_member("lab", "lamp-1"))
        .await?;
    things.delete_thing_group(delete("lab")).await?;
    server.shutdown().await
}

const POLICY: &str = r#"
[[tokens]]
name = "lab-keeper"
token = "lab-keeper-0123456789abcdef"
[[tokens.allow]]
actions = ["AddThingToThingGroup", "RemoveThingFromThingGroup", "DescribeThingGroup"]
targets = ["thing/lab-*"]
"#;

#[tokio::test]
async fn the_policy_covers_the_group_calls() -> Result {
    let server = Server::start_with(policed_args("group-policy", &with_admin(POLICY))?).await?;
    let mut things = server.things().await?;
    let (admin, keeper) = (ADMIN_TOKEN, "lab-keeper-0123456789abcdef");
    for name in ["lab-1", "office-1"] {
        things
            .create_thing(with_token(
                pb::CreateThingRequest {
                    thing_name: name.into(),
                    ..Default::default()
                },
                admin,
            ))
            .await?;
    }
    things
        .create_thing_group(with_token(static_group("lab", ""), admin))
        .await?;

    things
        .add_thing_to_thing_group(with_token(member("lab", "lab-1"), keeper))
        .await?;
    expect_code(
        things
            .add_thing_to_thing_group(with_token(member("lab", "office-1"), keeper))
            .await,
        Code::PermissionDenied,
        &["lab-keeper", "AddThingToThingGroup", "thing/office-1"],
    );
    // Calls on a group as a whole are not narrowed to a thing, so a grant limited to
    // `thing/lab-*` does not cover them.
    expect_code(
        things
            .describe_thing_group(with_token(describe("lab"), keeper))
            .await,
        Code::PermissionDenied,
        &["DescribeThingGroup"],
    );
    for (method, result) in [
        (
            "CreateThingGroup",
            things
                .create_thing_group(with_token(static_group("lab-2", ""), keeper))
                .await
                .map(|_| tonic::Response::new(())),
        ),
        (
            "DeleteThingGroup",
            things
                .delete_thing_group(with_token(delete("lab"), keeper))
                .await
                .map(|_| tonic::Response::new(())),
        ),
        (
            "ListThingGroups",
            things
                .list_thing_groups(with_token(pb::ListThingGroupsRequest::default(), keeper))
                .await
                .map(|_| tonic::Response::new(())),
        ),
        (
            "ListThingsInThingGroup",
            things
                .list_things_in_thing_group(with_token(
                    pb::ListThingsInThingGroupRequest {
                        thing_group_name: "lab".into(),
                        ..Default::default()
                    },
                    keeper,
                ))
                .await
                .map(|_| tonic::Response::new(())),
        ),
    ] {
        expect_code(result, Code::PermissionDenied, &["lab-keeper", method]);
    }
    expect_code(
        things.create_thing_group(static_group("lab-3", "")).await,
        Code::Unauthenticated,
        &[],
    );
    let listed = things
        .list_thing_groups(with_token(pb::ListThingGroupsRequest::default(), admin))
        .await?
        .into_inner();
    let names: Vec<&str> = listed
        .thing_groups
        .iter()
        .map(|g| g.thing_group_name.as_str())
        .collect();
    assert_eq!(names, ["lab"], "no refused call made or deleted a group");
    let members = things
        .list_things_in_thing_group(with_token(
            pb::ListThingsInThingGroupRequest {
                thing_group_name: "lab".into(),
                ..Default::default()
            },
            admin,
        ))
        .await?
        .into_inner();
    assert_eq!(members.things.len(), 1);
    assert_eq!(members.things[0].thing_name, "lab-1");
    server.shutdown().await
}
