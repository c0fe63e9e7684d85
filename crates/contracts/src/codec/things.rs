//! The thing registry's events and inputs, as the log and the bus carry them.

use fleetcmd_domain::thing::{self, CreateThing, Thing, ThingEvent, ThingInput, UpdateThing};

use super::{CodecError, Result, required};
use crate::internal as ipb;

pub(super) fn thing_to_ipb(t: &Thing) -> ipb::Thing {
    ipb::Thing {
        thing_name: t.thing_name.clone(),
        attributes: t
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        max_in_flight: t.max_in_flight,
        groups: t.groups.iter().cloned().collect(),
        version: t.version,
        created_at_ms: t.created_at,
        last_updated_at_ms: t.last_updated_at,
    }
}

pub(super) fn thing_from_ipb(t: ipb::Thing) -> Result<Thing> {
    thing::validate_thing_name(&t.thing_name)?;
    Ok(Thing {
        thing_name: t.thing_name,
        attributes: t.attributes.into_iter().collect(),
        max_in_flight: t.max_in_flight,
        groups: t.groups.into_iter().collect(),
        version: t.version,
        created_at: t.created_at_ms,
        last_updated_at: t.last_updated_at_ms,
    })
}

fn group(name: &str) -> ipb::ThingGroupChanged {
    ipb::ThingGroupChanged {
        thing_group_name: name.to_owned(),
    }
}

pub(super) fn event_to_pb(event: &ThingEvent) -> ipb::event_envelope::Event {
    use ipb::event_envelope::Event as E;
    match event {
        ThingEvent::Created(t) => E::ThingCreated(ipb::ThingCreated {
            thing: Some(thing_to_ipb(t)),
        }),
        ThingEvent::Updated {
            attributes,
            max_in_flight,
        } => E::ThingUpdated(ipb::ThingUpdated {
            attributes: attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_in_flight: *max_in_flight,
        }),
        ThingEvent::Deleted => E::ThingDeleted(ipb::ThingDeleted {}),
        ThingEvent::AddedToGroup { group: g } => E::ThingAddedToGroup(group(g)),
        ThingEvent::RemovedFromGroup { group: g } => E::ThingRemovedFromGroup(group(g)),
    }
}

/// A thing event; the caller passes only the thing members of the oneof.
pub(super) fn event_from_pb(event: ipb::event_envelope::Event) -> Result<ThingEvent> {
    use ipb::event_envelope::Event as E;
    Ok(match event {
        E::ThingCreated(c) => {
            ThingEvent::Created(thing_from_ipb(required("thing_created.thing", c.thing)?)?)
        }
        E::ThingUpdated(u) => ThingEvent::Updated {
            attributes: u.attributes.into_iter().collect(),
            max_in_flight: u.max_in_flight,
        },
        E::ThingDeleted(_) => ThingEvent::Deleted,
        E::ThingAddedToGroup(g) => ThingEvent::AddedToGroup {
            group: g.thing_group_name,
        },
        E::ThingRemovedFromGroup(g) => ThingEvent::RemovedFromGroup {
            group: g.thing_group_name,
        },
        _ => return Err(CodecError::Missing("event.thing")),
    })
}

pub(super) fn input_to_pb(thing_name: &str, input: &ThingInput) -> ipb::ThingInput {
    use ipb::thing_input::Input as I;
    let input = match input {
        ThingInput::Create(c) => I::Create(ipb::CreateThing {
            attributes: c
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_in_flight: c.max_in_flight,
        }),
        ThingInput::Update(u) => I::Update(ipb::UpdateThing {
            attributes: u
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            replace_attributes: u.replace_attributes,
            max_in_flight: u.max_in_flight.flatten(),
            clear_max_in_flight: matches!(u.max_in_flight, Some(None)),
            expected_version: u.expected_version,
        }),
        ThingInput::Delete { expected_version } => I::Delete(ipb::DeleteThing {
            expected_version: *expected_version,
        }),
        ThingInput::AddToGroup { group: g } => I::AddToGroup(group(g)),
        ThingInput::RemoveFromGroup { group: g } => I::RemoveFromGroup(group(g)),
    };
    ipb::ThingInput {
        thing_name: thing_name.to_owned(),
        input: Some(input),
    }
}

pub(super) fn input_from_pb(t: ipb::ThingInput) -> Result<fleetcmd_domain::protocol::ShardRequest> {
    use ipb::thing_input::Input as I;
    let input = match required("thing_input.input", t.input)? {
        I::Create(c) => ThingInput::Create(CreateThing {
            thing_name: t.thing_name.clone(),
            attributes: c.attributes.into_iter().collect(),
            max_in_flight: c.max_in_flight,
        }),
        I::Update(u) => ThingInput::Update(UpdateThing {
            attributes: u.attributes.into_iter().collect(),
            replace_attributes: u.replace_attributes,
            max_in_flight: if u.clear_max_in_flight {
                Some(None)
            } else {
                u.max_in_flight.map(Some)
            },
            expected_version: u.expected_version,
        }),
        I::Delete(d) => ThingInput::Delete {
            expected_version: d.expected_version,
        },
        I::AddToGroup(g) => ThingInput::AddToGroup {
            group: g.thing_group_name,
        },
        I::RemoveFromGroup(g) => ThingInput::RemoveFromGroup {
            group: g.thing_group_name,
        },
    };
    Ok(fleetcmd_domain::protocol::ShardRequest::Thing {
        thing_name: t.thing_name,
        input,
    })
}
