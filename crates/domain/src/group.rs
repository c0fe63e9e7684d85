//! Thing groups (AWS IoT's CreateThingGroup, DescribeThingGroup, DeleteThingGroup): a
//! **static** group lists its members (each thing records the static groups it belongs to,
//! decided in the thing's shard); a **dynamic** group is a [query](crate::query) over the
//! things' attributes, names, static groups and connectivity, and its members are whatever
//! things match it when it is read. A group is an aggregate of its own, owned by the shard of
//! `group/<name>`, so creating it twice (a retry, or two callers at once) is decided in one
//! place.
//!
//! Rules where AWS left room or differs:
//! - Creating a group that exists with the same description and query records nothing and
//!   answers as the first call did; with a different one it is refused as a conflict.
//! - Deleting a static group that still has members is refused by the registry (which reads
//!   the members); AWS removes the memberships instead. Deleting a missing group records
//!   nothing, as in AWS.
//! - Things cannot be added to a dynamic group: its query says who is in it.

use serde::{Deserialize, Serialize};

use crate::error::{Rejection, RejectionCode, ValidationError, ensure};
use crate::model::TimestampMs;
use crate::thing::validate_group_name;

/// The longest group description (AWS: 2,028 characters).
pub const GROUP_DESCRIPTION_MAX_CHARS: usize = 2028;

/// A thing group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThingGroup {
    pub thing_group_name: String,
    pub description: String,
    /// A dynamic group's query, as its creator wrote it (it parses); `None` for a static group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_string: Option<String>,
    pub created_at: TimestampMs,
    /// The sequence number of its last event (1 after creation).
    pub version: u64,
}

impl ThingGroup {
    pub fn is_dynamic(&self) -> bool {
        self.query_string.is_some()
    }

    /// A dynamic group's parsed query (`None` for a static group).
    pub fn query(&self) -> Option<crate::query::Query> {
        // Parsed at creation: a stored query always parses again.
        self.query_string
            .as_deref()
            .and_then(|q| crate::query::parse(q).ok())
    }
}

/// An input aimed at a thing group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupInput {
    Create {
        description: String,
        query_string: Option<String>,
    },
    Delete,
}

/// Facts about a thing group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupEvent {
    Created(ThingGroup),
    Deleted,
}

impl GroupEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Created(_) => "ThingGroupCreated",
            Self::Deleted => "ThingGroupDeleted",
        }
    }
}

/// The routing key of a thing group: `group/<name>`.
pub fn routing_key(name: &str) -> String {
    format!("group/{name}")
}

/// Checks a create's description and query (the name is checked by `validate_group_name`).
pub fn validate_create(
    description: &str,
    query_string: Option<&str>,
) -> Result<(), ValidationError> {
    let (length, max) = (description.chars().count(), GROUP_DESCRIPTION_MAX_CHARS);
    ensure(length <= max, "description", || {
        format!("must be at most {max} characters, got {length}")
    })?;
    if let Some(c) = description.chars().find(|c| c.is_control() && *c != '\n') {
        return Err(ValidationError::new(
            "description",
            format!("must not contain control characters, found {c:?}"),
        ));
    }
    if let Some(q) = query_string {
        crate::query::parse(q).map_err(|e| ValidationError::new("query_string", e.message))?;
    }
    Ok(())
}

/// Decides an input for the group `name` whose state is `state`.
pub fn decide(
    name: &str,
    state: Option<&ThingGroup>,
    input: &GroupInput,
    now: TimestampMs,
) -> Result<Vec<GroupEvent>, Rejection> {
    validate_group_name(name)?;
    match input {
        GroupInput::Create {
            description,
            query_string,
        } => {
            validate_create(description, query_string.as_deref())?;
            if let Some(existing) = state {
                if existing.description == *description && existing.query_string == *query_string {
                    return Ok(vec![]);
                }
                return Err(Rejection::new(
                    RejectionCode::Conflict,
                    format!("thing group {name} exists with a different description or query"),
                ));
            }
            Ok(vec![GroupEvent::Created(ThingGroup {
                thing_group_name: name.to_owned(),
                description: description.clone(),
                query_string: query_string.clone(),
                created_at: now,
                version: 1,
            })])
        }
        GroupInput::Delete => Ok(if state.is_some() {
            vec![GroupEvent::Deleted]
        } else {
            vec![]
        }),
    }
}

/// Folds one logged event with sequence number `seq`. A group re-created after a delete
/// starts again at 1, so (unlike records that are never removed) an event is applied
/// whatever the stored version: each writer folds its partition's events once, in order.
pub fn fold(state: &mut Option<ThingGroup>, event: &GroupEvent, seq: u64) {
    match event {
        GroupEvent::Created(g) => {
            *state = Some(ThingGroup {
                version: seq,
                ..g.clone()
            });
        }
        GroupEvent::Deleted => *state = None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(description: &str, query: Option<&str>) -> GroupInput {
        GroupInput::Create {
            description: description.into(),
            query_string: query.map(Into::into),
        }
    }

    #[test]
    fn a_group_is_created_once_and_a_retry_records_nothing() {
        let mut state = None;
        let input = create("lamps", Some("attributes.model:lamp-v2"));
        let events = decide("lamps", state.as_ref(), &input, 50).unwrap();
        assert_eq!(events.len(), 1);
        fold(&mut state, &events[0], 1);
        let stored = state.clone().unwrap();
        assert_eq!((stored.created_at, stored.version), (50, 1));
        assert!(stored.is_dynamic());
        assert!(stored.query().is_some());
        assert!(
            decide("lamps", state.as_ref(), &input, 60)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn creating_an_existing_group_differently_is_a_conflict() {
        let mut state = None;
        let events = decide("g", None, &create("a", None), 1).unwrap();
        fold(&mut state, &events[0], 1);
        for other in [create("b", None), create("a", Some("thing_name:x"))] {
            let err = decide("g", state.as_ref(), &other, 2).unwrap_err();
            assert_eq!(err.code, RejectionCode::Conflict, "{other:?}");
        }
    }

    #[test]
    fn delete_removes_and_deleting_a_missing_group_records_nothing() {
        let mut state = None;
        assert!(
            decide("g", None, &GroupInput::Delete, 1)
                .unwrap()
                .is_empty()
        );
        let events = decide("g", None, &create("", None), 1).unwrap();
        fold(&mut state, &events[0], 1);
        let deleted = decide("g", state.as_ref(), &GroupInput::Delete, 2).unwrap();
        assert_eq!(deleted, vec![GroupEvent::Deleted]);
        fold(&mut state, &deleted[0], 2);
        assert_eq!(state, None);
    }

    #[test]
    fn bad_names_descriptions_and_queries_are_refused_by_field() {
        let long = "d".repeat(GROUP_DESCRIPTION_MAX_CHARS + 1);
        let cases = [
            ("bad name", create("", None), "thing_group_name"),
            ("g", create(&long, None), "description"),
            ("g", create("a\u{7}b", None), "description"),
            ("g", create("", Some("attributes.x:")), "query_string"),
            (
                "g",
                create("", Some("attributes.x >= lots")),
                "query_string",
            ),
        ];
        for (name, input, field) in cases {
            let err = decide(name, None, &input, 1).unwrap_err();
            assert_eq!(err.code, RejectionCode::InvalidRequest, "{input:?}");
            assert!(err.message.contains(field), "{field}: {}", err.message);
        }
    }
}
