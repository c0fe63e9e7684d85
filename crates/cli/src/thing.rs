//! `fleetcmd thing create|get|list|update|delete`: the thing registry (and, through
//! `credentials.rs`, `thing cert ...` and `thing password ...`).

use std::io::Write;

use clap::ArgGroup;
use fleetcmd_contracts::pb;
use serde_json::{Value as Json, json};
use tonic::Status;

use super::cas::{self, CaCmd};
use super::command::parse_tag;
use super::credentials::{self, CertCmd, PasswordCmd};
use super::groups::{self, GroupCmd};
use super::presence::{self, DeviceArgs};
use super::render::{self, KeyValues, Table, map_json, map_text, page_text, time_full};
use super::{Api, Output, PageArgs, list_pages};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ThingCmd {
    /// Register a thing (a device), with attributes.
    Create(CreateArgs),
    /// Show one thing.
    Get(NameArgs),
    /// List things by name, optionally those with an attribute value, a name prefix or
    /// matching a query.
    List(ListArgs),
    /// Change a thing's attributes or execution limit.
    Update(UpdateArgs),
    /// Delete a thing (deleting one that is not there succeeds, as in AWS).
    Delete(DeleteArgs),
    /// Thing groups: static (members by name) and dynamic (members by query).
    #[command(subcommand)]
    Group(GroupCmd),
    /// Device certificates: issue, list, revoke.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Device passwords, for devices without a client certificate.
    #[command(subcommand)]
    Password(PasswordCmd),
    /// CAs of your own whose device certificates fleetcmd accepts.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Whether a device is connected (its client id is the thing name), since when, and why
    /// it last disconnected.
    Connectivity(DeviceArgs),
    /// Print devices' connects and disconnects as they happen (one device's, or all).
    Watch(DeviceArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CreateArgs {
    /// The thing name: 1–128 of [a-zA-Z0-9:_-].
    #[arg(value_name = "NAME")]
    pub thing_name: String,
    /// An attribute (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub attributes: Vec<(String, String)>,
    /// Most executions of this thing live at once (default: the server's).
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct NameArgs {
    #[arg(value_name = "NAME")]
    pub thing_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub page: PageArgs,
    /// Only things with this attribute value.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub attribute: Option<(String, String)>,
    /// Only things whose name starts with this.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// Only things matching this query, e.g. 'attributes.model:lamp-v2 AND attributes.floor >= 3'.
    #[arg(long, value_name = "QUERY")]
    pub query: Option<String>,
    /// Only things whose device is connected now (where the broker reports presence).
    #[arg(long, conflicts_with = "disconnected")]
    pub connected: bool,
    /// Only things whose device is not connected now.
    #[arg(long)]
    pub disconnected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(group(
    ArgGroup::new("change")
        .required(true)
        .multiple(true)
        .args(["attributes", "max_in_flight", "clear_max_in_flight"])
))]
pub struct UpdateArgs {
    #[arg(value_name = "NAME")]
    pub thing_name: String,
    /// Set an attribute; `KEY=` removes it (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub attributes: Vec<(String, String)>,
    /// Replace all attributes with the `--attr` given instead of merging them.
    #[arg(long, requires = "attributes")]
    pub replace: bool,
    #[arg(long, value_name = "N", conflicts_with = "clear_max_in_flight")]
    pub max_in_flight: Option<u32>,
    /// Back to the server's default execution limit.
    #[arg(long)]
    pub clear_max_in_flight: bool,
    /// Refuse the update unless the thing is at this version.
    #[arg(long, value_name = "VERSION")]
    pub expected_version: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DeleteArgs {
    #[arg(value_name = "NAME")]
    pub thing_name: String,
    /// Refuse the delete unless the thing is at this version.
    #[arg(long, value_name = "VERSION")]
    pub expected_version: Option<i64>,
}

/// Attributes from `--attr` flags; a key given twice is an error rather than a silent pick.
fn attributes(
    pairs: &[(String, String)],
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut map = std::collections::HashMap::with_capacity(pairs.len());
    for (key, value) in pairs {
        if map.insert(key.clone(), value.clone()).is_some() {
            anyhow::bail!("--attr {key} is given more than once");
        }
    }
    Ok(map)
}

impl CreateArgs {
    pub fn to_request(&self) -> anyhow::Result<pb::CreateThingRequest> {
        Ok(pb::CreateThingRequest {
            thing_name: self.thing_name.clone(),
            attributes: attributes(&self.attributes)?,
            max_in_flight: self.max_in_flight.unwrap_or(0),
        })
    }
}

impl ListArgs {
    pub fn to_request(&self) -> pb::ListThingsRequest {
        let (attribute_name, attribute_value) = self.attribute.clone().unwrap_or_default();
        pb::ListThingsRequest {
            max_results: self.page.max_results.unwrap_or(0),
            next_token: self.page.next_token.clone().unwrap_or_default(),
            attribute_name,
            attribute_value,
            connectivity: if self.connected {
                pb::ConnectivityFilter::Connected as i32
            } else if self.disconnected {
                pb::ConnectivityFilter::Disconnected as i32
            } else {
                pb::ConnectivityFilter::Unspecified as i32
            },
            thing_name_prefix: self.prefix.clone().unwrap_or_default(),
            query_string: self.query.clone().unwrap_or_default(),
        }
    }
}

impl UpdateArgs {
    pub fn to_request(&self) -> anyhow::Result<pb::UpdateThingRequest> {
        Ok(pb::UpdateThingRequest {
            thing_name: self.thing_name.clone(),
            attributes: attributes(&self.attributes)?,
            replace_attributes: self.replace,
            max_in_flight: self.max_in_flight.unwrap_or(0),
            clear_max_in_flight: self.clear_max_in_flight,
            expected_version: self.expected_version.unwrap_or(0),
        })
    }
}

super::unary_verbs! {
    pub create: things.create_thing(pb::CreateThingRequest) -> pb::CreateThingResponse;
    pub list: things.list_things(pb::ListThingsRequest) -> pb::ListThingsResponse;
    pub update: things.update_thing(pb::UpdateThingRequest) -> pb::UpdateThingResponse;
    pub delete: things.delete_thing(pb::DeleteThingRequest) -> pb::DeleteThingResponse;
    get_request: things.get_thing(pb::GetThingRequest) -> pb::Thing;
}

pub async fn get(api: &Api, thing_name: &str) -> Result<pb::Thing, Status> {
    let thing_name = thing_name.to_string();
    get_request(api, pb::GetThingRequest { thing_name }).await
}

pub fn thing_json(t: &pb::Thing) -> Json {
    json!({
        "thing_name": t.thing_name,
        "thing_arn": t.thing_arn,
        "attributes": map_json(&t.attributes, |v| Json::String(v.clone())),
        "max_in_flight": t.max_in_flight,
        "thing_groups": t.thing_groups,
        "version": t.version,
        "created_at": render::timestamp_json(t.created_at.as_ref()),
        "last_updated_at": render::timestamp_json(t.last_updated_at.as_ref()),
    })
}

pub fn thing_text(t: &pb::Thing) -> String {
    let mut kv = KeyValues::new();
    kv.add("thing_name", &t.thing_name)
        .add("thing_arn", &t.thing_arn)
        .add("attributes", map_text(&t.attributes, String::clone))
        .add("max_in_flight", limit_text(t.max_in_flight))
        .add("thing_groups", t.thing_groups.join(", "))
        .add("version", t.version.to_string())
        .add("created_at", time_full(t.created_at.as_ref()))
        .add("last_updated_at", time_full(t.last_updated_at.as_ref()));
    kv.render()
}

/// 0 on the wire is "the server's default".
fn limit_text(max_in_flight: u32) -> String {
    match max_in_flight {
        0 => "default".to_string(),
        n => n.to_string(),
    }
}

pub(crate) fn list_table(things: &[pb::Thing]) -> Table {
    let columns = ["NAME", "VERSION", "MAX IN FLIGHT", "ATTRIBUTES"];
    Table::new(columns).with_rows(things, |t| {
        vec![
            t.thing_name.clone(),
            t.version.to_string(),
            limit_text(t.max_in_flight),
            map_text(&t.attributes, String::clone),
        ]
    })
}

pub async fn run(
    api: &Api,
    cmd: ThingCmd,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (json, text) = match cmd {
        ThingCmd::Group(cmd) => groups::run_group(api, cmd).await?,
        ThingCmd::Cert(cmd) => credentials::run_cert(api, cmd).await?,
        ThingCmd::Password(cmd) => credentials::run_password(api, cmd).await?,
        ThingCmd::Ca(cmd) => cas::run_ca(api, cmd).await?,
        ThingCmd::Connectivity(args) => presence::connectivity(api, args).await?,
        ThingCmd::Watch(args) => return presence::watch(api, args, output, out).await,
        ThingCmd::Create(args) => {
            let r = create(api, args.to_request()?).await?;
            let text = format!("created {} ({})\n", r.thing_name, r.thing_arn);
            (
                json!({"thing_name": r.thing_name, "thing_arn": r.thing_arn}),
                text,
            )
        }
        ThingCmd::Get(args) => {
            let t = get(api, &args.thing_name).await?;
            (thing_json(&t), thing_text(&t))
        }
        ThingCmd::List(args) => {
            let r = list_pages(|r| list(api, r), args.to_request(), args.page.all).await?;
            let json = json!({
                "things": r.things.iter().map(thing_json).collect::<Vec<_>>(),
                "next_token": r.next_token,
            });
            (json, page_text(&list_table(&r.things), &r.next_token))
        }
        ThingCmd::Update(args) => {
            let r = update(api, args.to_request()?).await?;
            let text = format!("updated {} to version {}\n", args.thing_name, r.version);
            (
                json!({"thing_name": args.thing_name, "version": r.version}),
                text,
            )
        }
        ThingCmd::Delete(args) => {
            let request = pb::DeleteThingRequest {
                thing_name: args.thing_name.clone(),
                expected_version: args.expected_version.unwrap_or(0),
            };
            delete(api, request).await?;
            let text = format!("deleted {}\n", args.thing_name);
            (
                json!({"thing_name": args.thing_name, "deleted": true}),
                text,
            )
        }
    };
    output.print(out, &json, &text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(line: &str) -> Result<ThingCmd, clap::Error> {
        crate::parse_verb("thing", line.split(' '))
    }

    #[test]
    fn connectivity_needs_one_device_and_watch_at_most_one() {
        let ThingCmd::Connectivity(args) = parse("connectivity lamp-1").unwrap() else {
            panic!()
        };
        assert_eq!(args.thing_name.as_deref(), Some("lamp-1"));
        let ThingCmd::Connectivity(args) = parse("connectivity --client-id s-7").unwrap() else {
            panic!()
        };
        assert_eq!(args.client_id.as_deref(), Some("s-7"));
        assert_eq!(
            parse("connectivity lamp-1 --client-id s-7")
                .unwrap_err()
                .kind(),
            ErrorKind::ArgumentConflict
        );
        let ThingCmd::Watch(args) = parse("watch").unwrap() else {
            panic!()
        };
        assert_eq!((args.thing_name, args.client_id), (None, None));
    }

    #[test]
    fn create_takes_attributes_and_a_limit() {
        let ThingCmd::Create(args) =
            parse("create lamp-1 --attr model=v2 --attr floor=3 --max-in-flight 2").unwrap()
        else {
            panic!()
        };
        let r = args.to_request().unwrap();
        assert_eq!(r.thing_name, "lamp-1");
        assert_eq!(
            (
                r.attributes["model"].as_str(),
                r.attributes["floor"].as_str()
            ),
            ("v2", "3")
        );
        assert_eq!(r.max_in_flight, 2);
        let ThingCmd::Create(args) = parse("create lamp-1 --attr a=1 --attr a=2").unwrap() else {
            panic!()
        };
        assert_eq!(
            args.to_request().unwrap_err().to_string(),
            "--attr a is given more than once"
        );
    }

    #[test]
    fn update_needs_a_change_and_keeps_its_flags_apart() {
        assert_eq!(
            parse("update lamp-1").unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse("update lamp-1 --max-in-flight 2 --clear-max-in-flight")
                .unwrap_err()
                .kind(),
            ErrorKind::ArgumentConflict
        );
        let ThingCmd::Update(args) =
            parse("update lamp-1 --attr floor= --replace --expected-version 3").unwrap()
        else {
            panic!()
        };
        let r = args.to_request().unwrap();
        assert_eq!(r.attributes["floor"], "");
        assert!(r.replace_attributes);
        assert_eq!((r.expected_version, r.max_in_flight), (3, 0));
    }

    #[test]
    fn list_filters_by_attribute_and_prefix() {
        let ThingCmd::List(args) =
            parse("list --attr model=v2 --prefix lamp- --query attributes.floor>=3 --all").unwrap()
        else {
            panic!()
        };
        let r = args.to_request();
        assert_eq!(
            (r.attribute_name.as_str(), r.attribute_value.as_str()),
            ("model", "v2")
        );
        assert_eq!(r.thing_name_prefix, "lamp-");
        assert_eq!(r.query_string, "attributes.floor>=3");
        assert_eq!(r.connectivity, pb::ConnectivityFilter::Unspecified as i32);
        for (flag, filter) in [
            ("--connected", pb::ConnectivityFilter::Connected),
            ("--disconnected", pb::ConnectivityFilter::Disconnected),
        ] {
            let ThingCmd::List(args) = parse(&format!("list {flag}")).unwrap() else {
                panic!()
            };
            assert_eq!(args.to_request().connectivity, filter as i32);
        }
        assert!(parse("list --connected --disconnected").is_err());
        assert!(args.page.all);
    }

    #[test]
    fn a_thing_reads_well() {
        let t = pb::Thing {
            thing_name: "lamp-1".into(),
            attributes: [("model".to_string(), "v2".to_string())].into(),
            version: 3,
            ..Default::default()
        };
        let text = thing_text(&t);
        assert!(
            text.contains("model=v2") && text.contains("default"),
            "{text}"
        );
        assert_eq!(thing_json(&t)["version"], 3);
    }
}
