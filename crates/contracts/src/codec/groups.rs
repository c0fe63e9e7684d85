//! Thing groups' events and inputs, as the log and the bus carry them.

use fleetcmd_domain::group::{GroupEvent, GroupInput, ThingGroup};
use fleetcmd_domain::protocol::ShardRequest;
use fleetcmd_domain::thing::validate_group_name;

use super::{Result, required};
use crate::internal as ipb;

pub(super) fn group_to_ipb(g: &ThingGroup) -> ipb::ThingGroup {
    ipb::ThingGroup {
        thing_group_name: g.thing_group_name.clone(),
        description: g.description.clone(),
        query_string: g.query_string.clone(),
        created_at_ms: g.created_at,
        version: g.version,
    }
}

pub(super) fn group_from_ipb(g: ipb::ThingGroup) -> Result<ThingGroup> {
    validate_group_name(&g.thing_group_name)?;
    Ok(ThingGroup {
        thing_group_name: g.thing_group_name,
        description: g.description,
        query_string: g.query_string,
        created_at: g.created_at_ms,
        version: g.version,
    })
}

pub(super) fn event_to_pb(event: &GroupEvent) -> ipb::event_envelope::Event {
    use ipb::event_envelope::Event as E;
    match event {
        GroupEvent::Created(g) => E::ThingGroupCreated(group_to_ipb(g)),
        GroupEvent::Deleted => E::ThingGroupDeleted(ipb::ThingGroupDeleted {}),
    }
}

pub(super) fn created_from_pb(g: ipb::ThingGroup) -> Result<GroupEvent> {
    Ok(GroupEvent::Created(group_from_ipb(g)?))
}

pub(super) fn input_to_pb(thing_group_name: &str, input: &GroupInput) -> ipb::GroupInput {
    use ipb::group_input::Input;
    ipb::GroupInput {
        thing_group_name: thing_group_name.to_owned(),
        input: Some(match input {
            GroupInput::Create {
                description,
                query_string,
            } => Input::Create(ipb::CreateGroup {
                description: description.clone(),
                query_string: query_string.clone(),
            }),
            GroupInput::Delete => Input::Delete(ipb::DeleteGroup {}),
        }),
    }
}

pub(super) fn input_from_pb(g: ipb::GroupInput) -> Result<ShardRequest> {
    use ipb::group_input::Input;
    validate_group_name(&g.thing_group_name)?;
    let input = match required("group.input", g.input)? {
        Input::Create(c) => GroupInput::Create {
            description: c.description,
            query_string: c.query_string,
        },
        Input::Delete(_) => GroupInput::Delete,
    };
    Ok(ShardRequest::Group {
        thing_group_name: g.thing_group_name,
        input,
    })
}
