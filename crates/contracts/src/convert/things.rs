//! Things: ThingRegistry requests to domain inputs and queries, things and connectivity to
//! messages.

use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::group::ThingGroup;
use fleetcmd_domain::ids::Target;
use fleetcmd_domain::model::TimestampMs;
use fleetcmd_domain::ports::{GroupQuery, ThingQuery};
use fleetcmd_domain::thing::{Connectivity, CreateThing, Thing, UpdateThing};

use super::non_empty;
use crate::convert::{Arns, opt_timestamp_from_ms, page_size_from_pb, timestamp_from_ms};
use crate::pb;

/// CreateThing, converted but not validated (`thing::decide` checks the name, attributes and
/// limit).
impl From<pb::CreateThingRequest> for CreateThing {
    fn from(r: pb::CreateThingRequest) -> Self {
        Self {
            thing_name: r.thing_name,
            attributes: r.attributes.into_iter().collect(),
            max_in_flight: (r.max_in_flight != 0).then_some(r.max_in_flight),
        }
    }
}

/// UpdateThing: `max_in_flight` 0 leaves the limit alone, `clear_max_in_flight` removes it
/// (both at once is an error naming `clear_max_in_flight`); `expected_version` 0 is "any",
/// negative is an error.
pub fn update_thing_from_pb(
    r: pb::UpdateThingRequest,
) -> Result<(String, UpdateThing), ValidationError> {
    if r.clear_max_in_flight && r.max_in_flight != 0 {
        return Err(ValidationError::new(
            "clear_max_in_flight",
            "cannot be set together with max_in_flight",
        ));
    }
    let max_in_flight = if r.clear_max_in_flight {
        Some(None)
    } else {
        (r.max_in_flight != 0).then_some(Some(r.max_in_flight))
    };
    Ok((
        r.thing_name,
        UpdateThing {
            attributes: r.attributes.into_iter().collect(),
            replace_attributes: r.replace_attributes,
            max_in_flight,
            expected_version: expected_version("expected_version", r.expected_version)?,
        },
    ))
}

/// An optional expected version: 0 is "any".
pub fn expected_version(field: &str, v: i64) -> Result<Option<u64>, ValidationError> {
    match u64::try_from(v) {
        Ok(0) => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(_) => Err(ValidationError::new(
            field,
            format!("must not be negative, got {v}"),
        )),
    }
}

/// ListThings filters: `attribute_name` and `attribute_value` go together.
impl TryFrom<pb::ListThingsRequest> for ThingQuery {
    type Error = ValidationError;

    fn try_from(r: pb::ListThingsRequest) -> Result<Self, Self::Error> {
        let attribute = match (non_empty(r.attribute_name), non_empty(r.attribute_value)) {
            (Some(n), Some(v)) => Some((n, v)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ValidationError::new(
                    "attribute_value",
                    "is required with attribute_name",
                ));
            }
            (None, Some(_)) => {
                return Err(ValidationError::new(
                    "attribute_name",
                    "is required with attribute_value",
                ));
            }
        };
        let connected = match pb::ConnectivityFilter::try_from(r.connectivity) {
            Ok(pb::ConnectivityFilter::Unspecified) => None,
            Ok(pb::ConnectivityFilter::Connected) => Some(true),
            Ok(pb::ConnectivityFilter::Disconnected) => Some(false),
            Err(_) => {
                return Err(ValidationError::new(
                    "connectivity",
                    format!("must be CONNECTED or DISCONNECTED, got {}", r.connectivity),
                ));
            }
        };
        Ok(Self {
            attribute,
            name_prefix: non_empty(r.thing_name_prefix),
            connected,
            group: None,
            page_size: page_size_from_pb(r.max_results)?,
            page_token: non_empty(r.next_token),
        })
    }
}

/// Connectivity as GetConnectivity returns it (`since` unset when never seen).
pub fn connectivity_to_pb(c: &Connectivity) -> pb::Connectivity {
    pb::Connectivity {
        connected: c.connected,
        since: (c.since != 0).then(|| timestamp_from_ms(c.since)),
        disconnect_reason: c.disconnect_reason.clone().unwrap_or_default(),
    }
}

/// A thing as GetThing and ListThings return it.
pub fn thing_to_pb(t: Thing, connectivity: Option<&Connectivity>, arns: &Arns) -> pb::Thing {
    let target = Target::thing(t.thing_name.clone()).ok();
    pb::Thing {
        thing_arn: target.as_ref().map(|t| arns.target(t)).unwrap_or_default(),
        thing_name: t.thing_name,
        attributes: t.attributes.into_iter().collect(),
        max_in_flight: t.max_in_flight.unwrap_or(0),
        thing_groups: t.groups.into_iter().collect(),
        version: i64::try_from(t.version).unwrap_or(i64::MAX),
        created_at: Some(timestamp_from_ms(t.created_at)),
        last_updated_at: opt_timestamp_from_ms(Some(t.last_updated_at)),
        connectivity: connectivity.map(connectivity_to_pb),
    }
}

/// A thing group as CreateThingGroup, DescribeThingGroup and ListThingGroups return it.
pub fn thing_group_to_pb(g: ThingGroup, arns: &Arns) -> pb::ThingGroup {
    pb::ThingGroup {
        thing_group_arn: arns.thing_group(&g.thing_group_name),
        thing_group_name: g.thing_group_name,
        description: g.description,
        query_string: g.query_string.unwrap_or_default(),
        created_at: Some(timestamp_from_ms(g.created_at)),
    }
}

/// ListThingsInThingGroup: the group's name and the listing of its static members (a
/// dynamic group's members are listed by its query instead).
pub fn group_members_query_from_pb(
    r: pb::ListThingsInThingGroupRequest,
) -> Result<(String, ThingQuery), ValidationError> {
    let query = ThingQuery {
        group: Some(r.thing_group_name.clone()),
        page_size: page_size_from_pb(r.max_results)?,
        page_token: non_empty(r.next_token),
        ..ThingQuery::default()
    };
    Ok((r.thing_group_name, query))
}

impl TryFrom<pb::ListThingGroupsRequest> for GroupQuery {
    type Error = ValidationError;

    fn try_from(r: pb::ListThingGroupsRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            name_prefix: non_empty(r.name_prefix_filter),
            page_size: page_size_from_pb(r.max_results)?,
            page_token: non_empty(r.next_token),
        })
    }
}

/// A presence change as WatchConnectivity streams it.
pub fn connectivity_event_to_pb(
    target: &Target,
    client_id: &str,
    connected: bool,
    at: TimestampMs,
    reason: Option<&str>,
) -> pb::ConnectivityEvent {
    pb::ConnectivityEvent {
        target: Some(target.into()),
        client_id: client_id.to_owned(),
        connected,
        timestamp: Some(timestamp_from_ms(at)),
        disconnect_reason: reason.unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    use super::*;

    #[test]
    fn create_and_update_requests_convert_with_their_optional_fields() {
        let create = CreateThing::from(pb::CreateThingRequest {
            thing_name: "lamp-1".into(),
            attributes: HashMap::from([("model".to_string(), "v2".to_string())]),
            max_in_flight: 0,
        });
        assert_eq!(create.max_in_flight, None);
        assert_eq!(
            create.attributes.get("model").map(String::as_str),
            Some("v2")
        );
        let (name, u) = update_thing_from_pb(pb::UpdateThingRequest {
            thing_name: "lamp-1".into(),
            max_in_flight: 2,
            expected_version: 3,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (name.as_str(), u.max_in_flight, u.expected_version),
            ("lamp-1", Some(Some(2)), Some(3))
        );
        let (_, cleared) = update_thing_from_pb(pb::UpdateThingRequest {
            clear_max_in_flight: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (cleared.max_in_flight, cleared.expected_version),
            (Some(None), None)
        );
        let both = update_thing_from_pb(pb::UpdateThingRequest {
            clear_max_in_flight: true,
            max_in_flight: 1,
            ..Default::default()
        });
        assert_eq!(both.unwrap_err().field, "clear_max_in_flight");
        let negative = update_thing_from_pb(pb::UpdateThingRequest {
            expected_version: -1,
            ..Default::default()
        });
        assert_eq!(negative.unwrap_err().field, "expected_version");
    }

    #[test]
    fn list_filters_need_both_attribute_fields_and_a_known_connectivity() {
        let q = ThingQuery::try_from(pb::ListThingsRequest {
            attribute_name: "floor".into(),
            attribute_value: "3".into(),
            connectivity: pb::ConnectivityFilter::Disconnected as i32,
            thing_name_prefix: "lab-".into(),
            max_results: 10,
            next_token: "t".into(),
            query_string: String::new(),
        })
        .unwrap();
        assert_eq!(q.attribute, Some(("floor".into(), "3".into())));
        assert_eq!(
            (q.connected, q.name_prefix.as_deref()),
            (Some(false), Some("lab-"))
        );
        assert_eq!((q.page_size, q.page_token.as_deref()), (10, Some("t")));
        for (req, field) in [
            (
                pb::ListThingsRequest {
                    attribute_name: "floor".into(),
                    ..Default::default()
                },
                "attribute_value",
            ),
            (
                pb::ListThingsRequest {
                    attribute_value: "3".into(),
                    ..Default::default()
                },
                "attribute_name",
            ),
            (
                pb::ListThingsRequest {
                    connectivity: 9,
                    ..Default::default()
                },
                "connectivity",
            ),
            (
                pb::ListThingsRequest {
                    max_results: 101,
                    ..Default::default()
                },
                "max_results",
            ),
        ] {
            assert_eq!(ThingQuery::try_from(req).unwrap_err().field, field);
        }
    }

    #[test]
    fn things_and_connectivity_convert_with_arns() {
        let thing = Thing {
            thing_name: "lamp-1".into(),
            attributes: BTreeMap::from([("model".to_string(), "v2".to_string())]),
            max_in_flight: Some(1),
            groups: BTreeSet::from(["lab".to_string()]),
            version: 4,
            created_at: 1_000,
            last_updated_at: 2_000,
        };
        let c = Connectivity {
            connected: false,
            since: 3_000,
            disconnect_reason: Some("CONNECTION_LOST".into()),
        };
        let pb = thing_to_pb(thing, Some(&c), &Arns::default());
        assert_eq!(pb.thing_arn, "arn:aws:iot:local:000000000000:thing/lamp-1");
        assert_eq!((pb.max_in_flight, pb.version), (1, 4));
        assert_eq!(pb.thing_groups, ["lab"]);
        let conn = pb.connectivity.unwrap();
        assert_eq!(
            (conn.connected, conn.disconnect_reason.as_str()),
            (false, "CONNECTION_LOST")
        );
        assert_eq!(conn.since.map(|t| t.seconds), Some(3));
        assert!(
            connectivity_to_pb(&Connectivity::default()).since.is_none(),
            "never seen"
        );
    }
}
