//! Thing groups over gRPC (CreateThingGroup, DescribeThingGroup, ListThingGroups,
//! DeleteThingGroup, AddThingToThingGroup, RemoveThingFromThingGroup, ListThingsInThingGroup).
//!
//! A group is owned by the shard of `group/<name>`; a thing's memberships are part of the
//! thing, owned by the thing's shard. The two live in different shards, so the checks that
//! span them are made here, against the read model: a thing joins only a static group that
//! exists, and a static group is deleted only once it has no members. A dynamic group has
//! no stored members: its members are the things its query matches, found when listed.

use fleetcmd_contracts::convert::{
    group_members_query_from_pb, port_status, rejection_status, thing_group_to_pb, thing_to_pb,
    validation_status,
};
use fleetcmd_contracts::pb;
use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::group::{self, GroupInput, ThingGroup};
use fleetcmd_domain::ids::Target;
use fleetcmd_domain::policy::Action;
use fleetcmd_domain::ports::{GroupQuery, Page, ThingQuery};
use fleetcmd_domain::protocol::{ShardReply, ShardRequest};
use fleetcmd_domain::query::{Match, Query, Term};
use fleetcmd_domain::thing::{self, Connectivity, Thing, ThingInput};
use fleetcmd_service_kit::{await_projection, call_status, unexpected};
use tonic::{Request, Response, Status};

use crate::{RegistryDeps, connectivity, list_status};

fn not_found(name: &str) -> Status {
    Status::not_found(format!("thing group {name} not found"))
}

fn dynamic(name: &str, what: &str) -> Status {
    Status::invalid_argument(format!(
        "thing group {name} is dynamic: its members are the things its query matches, so things cannot be {what} it"
    ))
}

/// Sends a group input to its shard's owner and waits until the read model has it; returns
/// the group after it (`None`: deleted or never there).
async fn call(
    deps: &RegistryDeps,
    name: &str,
    input: GroupInput,
) -> Result<Option<ThingGroup>, Status> {
    let request = ShardRequest::Group {
        thing_group_name: name.to_owned(),
        input,
    };
    match deps.shards.call(&request).await.map_err(call_status)? {
        ShardReply::Group { group, position } => {
            await_projection(&deps.projection, position).await;
            Ok(group.map(|g| *g))
        }
        ShardReply::Rejected(r) => Err(rejection_status(r)),
        other => Err(unexpected(&other)),
    }
}

/// Sends a membership change to the thing's shard's owner and waits until it is read.
async fn call_thing(
    deps: &RegistryDeps,
    thing_name: &str,
    input: ThingInput,
) -> Result<(), Status> {
    let request = ShardRequest::Thing {
        thing_name: thing_name.to_owned(),
        input,
    };
    match deps.shards.call(&request).await.map_err(call_status)? {
        ShardReply::Thing { position, .. } => {
            await_projection(&deps.projection, position).await;
            Ok(())
        }
        ShardReply::Rejected(r) => Err(rejection_status(r)),
        other => Err(unexpected(&other)),
    }
}

async fn get(deps: &RegistryDeps, name: &str) -> Result<Option<ThingGroup>, Status> {
    thing::validate_group_name(name).map_err(validation_status)?;
    deps.read_model
        .get_thing_group(name)
        .await
        .map_err(port_status)
}

pub(crate) async fn create(
    deps: &RegistryDeps,
    request: Request<pb::CreateThingGroupRequest>,
) -> Result<Response<pb::ThingGroup>, Status> {
    deps.auth
        .check(request.metadata(), Action::CreateThingGroup, None, None)?;
    let r = request.into_inner();
    thing::validate_group_name(&r.thing_group_name).map_err(validation_status)?;
    let query_string = (!r.query_string.is_empty()).then_some(r.query_string);
    group::validate_create(&r.description, query_string.as_deref()).map_err(validation_status)?;
    let input = GroupInput::Create {
        description: r.description,
        query_string,
    };
    let group = call(deps, &r.thing_group_name, input)
        .await?
        .ok_or_else(|| Status::internal("the group's owner answered a create with no group"))?;
    Ok(Response::new(thing_group_to_pb(group, &deps.arns)))
}

pub(crate) async fn describe(
    deps: &RegistryDeps,
    request: Request<pb::DescribeThingGroupRequest>,
) -> Result<Response<pb::ThingGroup>, Status> {
    deps.auth
        .check(request.metadata(), Action::DescribeThingGroup, None, None)?;
    let name = &request.get_ref().thing_group_name;
    let group = get(deps, name).await?.ok_or_else(|| not_found(name))?;
    Ok(Response::new(thing_group_to_pb(group, &deps.arns)))
}

pub(crate) async fn list(
    deps: &RegistryDeps,
    request: Request<pb::ListThingGroupsRequest>,
) -> Result<Response<pb::ListThingGroupsResponse>, Status> {
    deps.auth
        .check(request.metadata(), Action::ListThingGroups, None, None)?;
    let query = GroupQuery::try_from(request.into_inner()).map_err(validation_status)?;
    let page = deps
        .read_model
        .list_thing_groups(&query)
        .await
        .map_err(list_status)?;
    Ok(Response::new(pb::ListThingGroupsResponse {
        thing_groups: page
            .items
            .into_iter()
            .map(|g| thing_group_to_pb(g, &deps.arns))
            .collect(),
        next_token: page.next_token.unwrap_or_default(),
    }))
}

/// Deletes a group (a missing one is already deleted). A static group with members is
/// refused, naming one: its members leave it first, so no thing is left in a group that is
/// gone (or, if it is created again, in one it never joined).
pub(crate) async fn delete(
    deps: &RegistryDeps,
    request: Request<pb::DeleteThingGroupRequest>,
) -> Result<Response<pb::DeleteThingGroupResponse>, Status> {
    deps.auth
        .check(request.metadata(), Action::DeleteThingGroup, None, None)?;
    let name = &request.get_ref().thing_group_name;
    let Some(group) = get(deps, name).await? else {
        return Ok(Response::new(pb::DeleteThingGroupResponse {}));
    };
    if !group.is_dynamic() {
        let members = ThingQuery {
            group: Some(name.clone()),
            page_size: 1,
            ..ThingQuery::default()
        };
        let page = deps
            .read_model
            .list_things(&members)
            .await
            .map_err(port_status)?;
        if let Some(member) = page.items.first() {
            return Err(Status::failed_precondition(format!(
                "thing group {name} still has members (thing {} among them): remove them with RemoveThingFromThingGroup first",
                member.thing_name
            )));
        }
    }
    call(deps, name, GroupInput::Delete).await?;
    Ok(Response::new(pb::DeleteThingGroupResponse {}))
}

/// Checks the names and the caller's right to `action` on the thing; returns the group as
/// the read model has it.
async fn membership(
    deps: &RegistryDeps,
    metadata: &tonic::metadata::MetadataMap,
    action: Action,
    group: &str,
    thing_name: &str,
) -> Result<Option<ThingGroup>, Status> {
    thing::validate_thing_name(thing_name).map_err(validation_status)?;
    let target = Target::thing(thing_name).map_err(validation_status)?;
    deps.auth.check(metadata, action, None, Some(&target))?;
    get(deps, group).await
}

pub(crate) async fn add_thing(
    deps: &RegistryDeps,
    request: Request<pb::AddThingToThingGroupRequest>,
) -> Result<Response<pb::AddThingToThingGroupResponse>, Status> {
    let r = request.get_ref();
    let group = membership(
        deps,
        request.metadata(),
        Action::AddThingToThingGroup,
        &r.thing_group_name,
        &r.thing_name,
    )
    .await?
    .ok_or_else(|| not_found(&r.thing_group_name))?;
    if group.is_dynamic() {
        return Err(dynamic(&group.thing_group_name, "added to"));
    }
    let input = ThingInput::AddToGroup {
        group: group.thing_group_name,
    };
    call_thing(deps, &r.thing_name, input).await?;
    Ok(Response::new(pb::AddThingToThingGroupResponse {}))
}

/// Removes a thing from a static group. A group that is gone is no obstacle: whatever
/// membership the thing still holds of it is removed.
pub(crate) async fn remove_thing(
    deps: &RegistryDeps,
    request: Request<pb::RemoveThingFromThingGroupRequest>,
) -> Result<Response<pb::RemoveThingFromThingGroupResponse>, Status> {
    let r = request.get_ref();
    let group = membership(
        deps,
        request.metadata(),
        Action::RemoveThingFromThingGroup,
        &r.thing_group_name,
        &r.thing_name,
    )
    .await?;
    if group.as_ref().is_some_and(ThingGroup::is_dynamic) {
        return Err(dynamic(&r.thing_group_name, "removed from"));
    }
    let input = ThingInput::RemoveFromGroup {
        group: r.thing_group_name.clone(),
    };
    call_thing(deps, &r.thing_name, input).await?;
    Ok(Response::new(pb::RemoveThingFromThingGroupResponse {}))
}

pub(crate) async fn list_things(
    deps: &RegistryDeps,
    request: Request<pb::ListThingsInThingGroupRequest>,
) -> Result<Response<pb::ListThingsResponse>, Status> {
    deps.auth.check(
        request.metadata(),
        Action::ListThingsInThingGroup,
        None,
        None,
    )?;
    let (name, members) =
        group_members_query_from_pb(request.into_inner()).map_err(validation_status)?;
    let group = get(deps, &name).await?.ok_or_else(|| not_found(&name))?;
    let page = match group.query() {
        None => connectivity::list_things(deps, members).await?,
        Some(query) => matching(deps, &query, members).await?,
    };
    Ok(Response::new(pb::ListThingsResponse {
        things: page
            .items
            .into_iter()
            .map(|(t, c)| thing_to_pb(t, c.as_ref(), &deps.arns))
            .collect(),
        next_token: page.next_token.unwrap_or_default(),
    }))
}

/// The things `query` matches, a page of them (the page and its token as in `listing`).
pub(crate) async fn matching(
    deps: &RegistryDeps,
    query: &Query,
    listing: ThingQuery,
) -> Result<Page<(Thing, Option<Connectivity>)>, Status> {
    if query.uses_connectivity() {
        connectivity::presence(deps)?;
    }
    let scan = query.scan(listing.page_size, listing.page_token);
    connectivity::list_filtered(deps, scan, |t, c| query.matches(t, c)).await
}

/// ListThings with a `query_string`: the listing's own filters join the query as terms, so
/// they narrow the scan like any other term.
pub(crate) async fn list_by_query(
    deps: &RegistryDeps,
    query_string: &str,
    mut listing: ThingQuery,
) -> Result<Page<(Thing, Option<Connectivity>)>, Status> {
    let query = fleetcmd_domain::query::parse(query_string)
        .map_err(|e| validation_status(ValidationError::new("query_string", e.message)))?;
    let mut all = vec![query];
    if let Some((name, value)) = listing.attribute.take() {
        all.push(Query::Term(Term::Attribute {
            name,
            value: Match::Exact(value),
        }));
    }
    if let Some(prefix) = listing.name_prefix.take() {
        all.push(Query::Term(Term::ThingName(Match::Prefix(prefix))));
    }
    if let Some(connected) = listing.connected.take() {
        all.push(Query::Term(Term::Connected(connected)));
    }
    if let Some(group) = listing.group.take() {
        all.push(Query::Term(Term::Group(group)));
    }
    let query = Query::all(all).expect("the query itself is one operand");
    matching(deps, &query, listing).await
}
