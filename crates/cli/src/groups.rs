//! `fleetcmd thing group create|get|list|delete|add|remove|things`: thing groups, static
//! (members added by name) and dynamic (members are the things a query matches).

use fleetcmd_contracts::pb;
use serde_json::{Value as Json, json};

use super::render::{self, KeyValues, Table, page_text, time_cell, time_full};
use super::thing::{list_table, thing_json};
use super::{Api, PageArgs, list_pages};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum GroupCmd {
    /// Create a group: static, or dynamic with `--query` (creating it again with the same
    /// description and query succeeds and changes nothing).
    Create(CreateArgs),
    /// Show one group.
    Get(GroupArgs),
    /// List groups by name.
    List(ListArgs),
    /// Delete a group (a static one once it has no members; a missing one is already deleted).
    Delete(GroupArgs),
    /// Add a thing to a static group.
    Add(MemberArgs),
    /// Remove a thing from a static group.
    Remove(MemberArgs),
    /// List a group's things (a dynamic group's: the things its query matches now).
    Things(ThingsArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CreateArgs {
    /// The group name: 1–128 of [a-zA-Z0-9:_-].
    #[arg(value_name = "GROUP")]
    pub thing_group_name: String,
    #[arg(long, default_value = "")]
    pub description: String,
    /// Make it dynamic: its members are the things matching this query, e.g.
    /// 'attributes.model:lamp-v2 AND attributes.floor >= 3'.
    #[arg(long, value_name = "QUERY")]
    pub query: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct GroupArgs {
    #[arg(value_name = "GROUP")]
    pub thing_group_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub page: PageArgs,
    /// Only groups whose name starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct MemberArgs {
    #[arg(value_name = "GROUP")]
    pub thing_group_name: String,
    #[arg(value_name = "THING")]
    pub thing_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ThingsArgs {
    #[arg(value_name = "GROUP")]
    pub thing_group_name: String,
    #[command(flatten)]
    pub page: PageArgs,
}

super::unary_verbs! {
    create: things.create_thing_group(pb::CreateThingGroupRequest) -> pb::ThingGroup;
    describe: things.describe_thing_group(pb::DescribeThingGroupRequest) -> pb::ThingGroup;
    list: things.list_thing_groups(pb::ListThingGroupsRequest) -> pb::ListThingGroupsResponse;
    delete: things.delete_thing_group(pb::DeleteThingGroupRequest) -> pb::DeleteThingGroupResponse;
    add: things.add_thing_to_thing_group(pb::AddThingToThingGroupRequest) -> pb::AddThingToThingGroupResponse;
    remove: things.remove_thing_from_thing_group(pb::RemoveThingFromThingGroupRequest) -> pb::RemoveThingFromThingGroupResponse;
    members: things.list_things_in_thing_group(pb::ListThingsInThingGroupRequest) -> pb::ListThingsResponse;
}

pub fn group_json(g: &pb::ThingGroup) -> Json {
    json!({
        "thing_group_name": g.thing_group_name,
        "thing_group_arn": g.thing_group_arn,
        "description": g.description,
        "query_string": g.query_string,
        "created_at": render::timestamp_json(g.created_at.as_ref()),
    })
}

fn group_text(g: &pb::ThingGroup) -> String {
    let kind = if g.query_string.is_empty() {
        "static"
    } else {
        "dynamic"
    };
    let mut kv = KeyValues::new();
    kv.add("thing_group_name", &g.thing_group_name)
        .add("thing_group_arn", &g.thing_group_arn)
        .add("kind", kind)
        .add("description", &g.description)
        .add("query_string", &g.query_string)
        .add("created_at", time_full(g.created_at.as_ref()));
    kv.render()
}

fn group_table(groups: &[pb::ThingGroup]) -> Table {
    Table::new(["NAME", "CREATED", "QUERY"]).with_rows(groups, |g| {
        vec![
            g.thing_group_name.clone(),
            time_cell(g.created_at.as_ref()),
            g.query_string.clone(),
        ]
    })
}

impl ListArgs {
    fn to_request(&self) -> pb::ListThingGroupsRequest {
        pb::ListThingGroupsRequest {
            max_results: self.page.max_results.unwrap_or(0),
            next_token: self.page.next_token.clone().unwrap_or_default(),
            name_prefix_filter: self.prefix.clone().unwrap_or_default(),
        }
    }
}

impl ThingsArgs {
    fn to_request(&self) -> pb::ListThingsInThingGroupRequest {
        pb::ListThingsInThingGroupRequest {
            thing_group_name: self.thing_group_name.clone(),
            max_results: self.page.max_results.unwrap_or(0),
            next_token: self.page.next_token.clone().unwrap_or_default(),
        }
    }
}

/// Runs a `thing group` verb and answers in both forms, for the caller to print.
pub async fn run_group(api: &Api, cmd: GroupCmd) -> anyhow::Result<(Json, String)> {
    Ok(match cmd {
        GroupCmd::Create(args) => {
            let request = pb::CreateThingGroupRequest {
                thing_group_name: args.thing_group_name,
                description: args.description,
                query_string: args.query.unwrap_or_default(),
            };
            let g = create(api, request).await?;
            let text = format!("created {} ({})\n", g.thing_group_name, g.thing_group_arn);
            (group_json(&g), text)
        }
        GroupCmd::Get(args) => {
            let request = pb::DescribeThingGroupRequest {
                thing_group_name: args.thing_group_name,
            };
            let g = describe(api, request).await?;
            (group_json(&g), group_text(&g))
        }
        GroupCmd::List(args) => {
            let r = list_pages(|r| list(api, r), args.to_request(), args.page.all).await?;
            let json = json!({
                "thing_groups": r.thing_groups.iter().map(group_json).collect::<Vec<_>>(),
                "next_token": r.next_token,
            });
            (
                json,
                page_text(&group_table(&r.thing_groups), &r.next_token),
            )
        }
        GroupCmd::Delete(args) => {
            let name = args.thing_group_name;
            let request = pb::DeleteThingGroupRequest {
                thing_group_name: name.clone(),
            };
            delete(api, request).await?;
            let text = format!("deleted {name}\n");
            (json!({"thing_group_name": name, "deleted": true}), text)
        }
        GroupCmd::Add(args) => {
            let request = pb::AddThingToThingGroupRequest {
                thing_group_name: args.thing_group_name.clone(),
                thing_name: args.thing_name.clone(),
            };
            add(api, request).await?;
            let text = format!("added {} to {}\n", args.thing_name, args.thing_group_name);
            (member_json(&args, true), text)
        }
        GroupCmd::Remove(args) => {
            let request = pb::RemoveThingFromThingGroupRequest {
                thing_group_name: args.thing_group_name.clone(),
                thing_name: args.thing_name.clone(),
            };
            remove(api, request).await?;
            let text = format!(
                "removed {} from {}\n",
                args.thing_name, args.thing_group_name
            );
            (member_json(&args, false), text)
        }
        GroupCmd::Things(args) => {
            let r = list_pages(|r| members(api, r), args.to_request(), args.page.all).await?;
            let json = json!({
                "things": r.things.iter().map(thing_json).collect::<Vec<_>>(),
                "next_token": r.next_token,
            });
            (json, page_text(&list_table(&r.things), &r.next_token))
        }
    })
}

fn member_json(args: &MemberArgs, member: bool) -> Json {
    json!({
        "thing_group_name": args.thing_group_name,
        "thing_name": args.thing_name,
        "member": member,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    enum Cli {
        #[command(subcommand)]
        Group(GroupCmd),
    }

    fn parse(line: &str) -> Result<GroupCmd, clap::Error> {
        let Cli::Group(cmd) = Cli::try_parse_from(std::iter::once("t").chain(line.split(' ')))?;
        Ok(cmd)
    }

    #[test]
    fn create_is_static_unless_given_a_query() {
        let GroupCmd::Create(args) = parse("group create lab --description bench").unwrap() else {
            panic!()
        };
        assert_eq!(
            (args.thing_group_name.as_str(), args.description.as_str()),
            ("lab", "bench")
        );
        assert_eq!(args.query, None);
        let GroupCmd::Create(args) =
            parse("group create lamps --query attributes.model:v2").unwrap()
        else {
            panic!()
        };
        assert_eq!(args.query.as_deref(), Some("attributes.model:v2"));
    }

    #[test]
    fn membership_takes_the_group_then_the_thing_and_listings_page() {
        let GroupCmd::Add(args) = parse("group add lab lamp-1").unwrap() else {
            panic!()
        };
        assert_eq!(
            (args.thing_group_name.as_str(), args.thing_name.as_str()),
            ("lab", "lamp-1")
        );
        assert_eq!(
            parse("group remove lab").unwrap_err().kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        let GroupCmd::Things(args) = parse("group things lab --all").unwrap() else {
            panic!()
        };
        assert!(args.page.all);
        assert_eq!(args.to_request().thing_group_name, "lab");
        let GroupCmd::List(args) = parse("group list --prefix la").unwrap() else {
            panic!()
        };
        assert_eq!(args.to_request().name_prefix_filter, "la");
    }
}
