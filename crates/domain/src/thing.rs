//! Things: registered devices, their attributes, static group memberships and connectivity,
//! as `decide`/`apply` like executions. A thing is owned by the shard of `thing/<name>`, the
//! same shard that owns its executions, so per-device rules (how many executions may be
//! live at once, whether the device is online) are decided where its executions are.
//!
//! Field names and limits follow AWS IoT's thing registry: names `[a-zA-Z0-9:_-]{1,128}`, at
//! most 50 attributes, attribute names `[a-zA-Z0-9_.,@/:#=\[\]-]{1,128}` and values of the
//! same characters, up to 800.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Rejection, RejectionCode, ValidationError, check_chars, ensure};
use crate::ids::Target;
use crate::model::TimestampMs;

/// Attributes per thing.
pub const ATTRIBUTES_MAX: usize = 50;
pub const ATTRIBUTE_NAME_MAX_CHARS: usize = 128;
pub const ATTRIBUTE_VALUE_MAX_CHARS: usize = 800;
/// Static groups a thing may belong to (AWS: 10).
pub const GROUPS_PER_THING_MAX: usize = 10;
/// Thing group names: `[a-zA-Z0-9:_-]{1,128}`.
pub const GROUP_NAME_MAX_CHARS: usize = 128;
/// The largest per-thing `max_in_flight`.
pub const MAX_IN_FLIGHT_MAX: u32 = 1000;

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thing {
    pub thing_name: String,
    pub attributes: BTreeMap<String, String>,
    /// Most executions of this thing live (not terminal) at once; further ones wait,
    /// undelivered, in start order. `None`: the server default.
    pub max_in_flight: Option<u32>,
    /// The static thing groups it belongs to.
    pub groups: BTreeSet<String>,
    /// Bumped by every change (AWS's `version`).
    pub version: u64,
    pub created_at: TimestampMs,
    pub last_updated_at: TimestampMs,
}

impl Thing {
    pub fn target(&self) -> Target {
        Target::thing(self.thing_name.clone()).expect("a stored thing has a valid name")
    }
}

/// Whether a device is connected, as the broker last told.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Connectivity {
    pub connected: bool,
    /// When it last connected or disconnected (0: never seen).
    pub since: TimestampMs,
    /// Why it last disconnected (AWS's lifecycle reasons: `CLIENT_INITIATED_DISCONNECT`,
    /// `CONNECTION_LOST`, `DUPLICATE_CLIENTID`, `AUTH_ERROR`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect_reason: Option<String>,
}

/// CreateThing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CreateThing {
    pub thing_name: String,
    pub attributes: BTreeMap<String, String>,
    pub max_in_flight: Option<u32>,
}

/// UpdateThing: attributes are merged (an empty value removes the attribute, as AWS's
/// `merge: true`), or replaced as a whole when `replace_attributes`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpdateThing {
    pub attributes: BTreeMap<String, String>,
    pub replace_attributes: bool,
    /// `Some(None)` clears the thing's own limit (back to the server default).
    pub max_in_flight: Option<Option<u32>>,
    /// Refuse the update unless the thing is at this version (optimistic concurrency).
    pub expected_version: Option<u64>,
}

/// An input aimed at a thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThingInput {
    Create(CreateThing),
    Update(UpdateThing),
    Delete { expected_version: Option<u64> },
    AddToGroup { group: String },
    RemoveFromGroup { group: String },
}

/// Facts about a thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ThingEvent {
    Created(Thing),
    /// The new attributes (whole) and limit.
    Updated {
        attributes: BTreeMap<String, String>,
        max_in_flight: Option<u32>,
    },
    Deleted,
    AddedToGroup {
        group: String,
    },
    RemovedFromGroup {
        group: String,
    },
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-')
}

fn is_attribute_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.,@/:#=[]-".contains(c)
}

/// A thing name (also a thing target's id).
pub fn validate_thing_name(name: &str) -> Result<(), ValidationError> {
    Target::thing(name)
        .map(|_| ())
        .map_err(|e| ValidationError::new("thing_name", e.message))
}

/// A thing group name: `[a-zA-Z0-9:_-]{1,128}`.
pub fn validate_group_name(name: &str) -> Result<(), ValidationError> {
    let (field, max) = ("thing_group_name", GROUP_NAME_MAX_CHARS);
    let length_ok = (1..=max).contains(&name.chars().count());
    ensure(length_ok, field, || format!("must be 1–{max} characters"))?;
    check_chars(field, name, is_name_char, "must match [a-zA-Z0-9:_-]+")
}

/// Attribute names and values. `allow_empty_values`: an update may send `""` to remove one.
pub fn validate_attributes(
    attributes: &BTreeMap<String, String>,
    allow_empty_values: bool,
) -> Result<(), ValidationError> {
    let (count, max) = (attributes.len(), ATTRIBUTES_MAX);
    ensure(count <= max, "attributes", || {
        format!("at most {max} attributes, got {count}")
    })?;
    let (name_max, value_max) = (ATTRIBUTE_NAME_MAX_CHARS, ATTRIBUTE_VALUE_MAX_CHARS);
    for (name, value) in attributes {
        let field = format!("attributes[{name:?}]");
        let name_ok = (1..=name_max).contains(&name.chars().count());
        let message = || format!("attribute names must be 1–{name_max} characters");
        ensure(name_ok, &field, message)?;
        let rule = "attribute names must match [a-zA-Z0-9_.,@/:#=\\[\\]-]+";
        check_chars(&field, name, is_attribute_char, rule)?;
        let message = || "attribute values must not be empty".to_string();
        ensure(!value.is_empty() || allow_empty_values, &field, message)?;
        let value_ok = value.chars().count() <= value_max;
        let message = || format!("attribute values must be at most {value_max} characters");
        ensure(value_ok, &field, message)?;
        let rule = "attribute values must match [a-zA-Z0-9_.,@/:#=\\[\\]-]*";
        check_chars(&field, value, is_attribute_char, rule)?;
    }
    Ok(())
}

fn validate_max_in_flight(value: Option<u32>) -> Result<(), ValidationError> {
    match value {
        Some(n) if n == 0 || n > MAX_IN_FLIGHT_MAX => Err(ValidationError::new(
            "max_in_flight",
            format!("must be between 1 and {MAX_IN_FLIGHT_MAX}, got {n}"),
        )),
        _ => Ok(()),
    }
}

fn check_version(thing: &Thing, expected: Option<u64>) -> Result<(), Rejection> {
    match expected {
        Some(v) if v != thing.version => Err(Rejection::new(
            RejectionCode::DataConflict,
            format!(
                "thing {} is at version {}, not {v}",
                thing.thing_name, thing.version
            ),
        )),
        _ => Ok(()),
    }
}

fn not_found(name: &str) -> Rejection {
    Rejection::new(
        RejectionCode::ResourceNotFound,
        format!("thing {name} not found"),
    )
}

/// Decides a thing input. Joining a static group needs the group to exist and be static:
/// groups live in other shards, so the registry checks that before it asks.
pub fn decide(
    name: &str,
    state: Option<&Thing>,
    input: &ThingInput,
    now: TimestampMs,
) -> Result<Vec<ThingEvent>, Rejection> {
    match input {
        ThingInput::Create(req) => {
            validate_thing_name(&req.thing_name)?;
            validate_attributes(&req.attributes, false)?;
            validate_max_in_flight(req.max_in_flight)?;
            if let Some(existing) = state {
                // AWS: creating an identical thing again succeeds; a different one conflicts.
                if existing.attributes == req.attributes
                    && existing.max_in_flight == req.max_in_flight
                {
                    return Ok(vec![]);
                }
                return Err(Rejection::new(
                    RejectionCode::Conflict,
                    format!("thing {name} already exists with other attributes"),
                ));
            }
            Ok(vec![ThingEvent::Created(Thing {
                thing_name: req.thing_name.clone(),
                attributes: req.attributes.clone(),
                max_in_flight: req.max_in_flight,
                groups: BTreeSet::new(),
                version: 1,
                created_at: now,
                last_updated_at: now,
            })])
        }
        ThingInput::Update(req) => {
            let thing = state.ok_or_else(|| not_found(name))?;
            check_version(thing, req.expected_version)?;
            validate_attributes(&req.attributes, !req.replace_attributes)?;
            let max_in_flight = match req.max_in_flight {
                Some(v) => {
                    validate_max_in_flight(v)?;
                    v
                }
                None => thing.max_in_flight,
            };
            let attributes = if req.replace_attributes {
                req.attributes.clone()
            } else {
                let mut merged = thing.attributes.clone();
                for (k, v) in &req.attributes {
                    if v.is_empty() {
                        merged.remove(k);
                    } else {
                        merged.insert(k.clone(), v.clone());
                    }
                }
                merged
            };
            validate_attributes(&attributes, false)?;
            Ok(vec![ThingEvent::Updated {
                attributes,
                max_in_flight,
            }])
        }
        ThingInput::Delete { expected_version } => match state {
            Some(thing) => {
                check_version(thing, *expected_version)?;
                Ok(vec![ThingEvent::Deleted])
            }
            // AWS: deleting a thing that does not exist succeeds, unless a version was
            // expected (there is nothing at that version).
            None if expected_version.is_some() => Err(not_found(name)),
            None => Ok(vec![]),
        },
        ThingInput::AddToGroup { group } => {
            validate_group_name(group)?;
            let thing = state.ok_or_else(|| not_found(name))?;
            if thing.groups.contains(group) {
                return Ok(vec![]);
            }
            if thing.groups.len() >= GROUPS_PER_THING_MAX {
                return Err(Rejection::new(
                    RejectionCode::QuotaExceeded,
                    format!(
                        "thing {name} already belongs to {GROUPS_PER_THING_MAX} groups, the most a thing may"
                    ),
                ));
            }
            Ok(vec![ThingEvent::AddedToGroup {
                group: group.clone(),
            }])
        }
        ThingInput::RemoveFromGroup { group } => {
            validate_group_name(group)?;
            let thing = state.ok_or_else(|| not_found(name))?;
            Ok(if thing.groups.contains(group) {
                vec![ThingEvent::RemovedFromGroup {
                    group: group.clone(),
                }]
            } else {
                vec![]
            })
        }
    }
}

/// Folds one logged thing event, `at` and `seq` its time and sequence number, the way every
/// reader that may see an event again (the projector after a restart) must: an event of the
/// thing's current life whose `seq` the state's version already reached changes nothing.
/// (A thing's version is the sequence number of its last event: both start at 1 when it is
/// created and grow by one per event.) A creation is whole, so it always applies.
pub fn fold(state: &mut Option<Thing>, event: &ThingEvent, at: TimestampMs, seq: u64) {
    if !matches!(event, ThingEvent::Created(_)) && state.as_ref().is_some_and(|t| t.version >= seq)
    {
        return;
    }
    apply(state, event, at);
}

/// Folds one thing event at `at` (a deletion empties the state).
pub fn apply(state: &mut Option<Thing>, event: &ThingEvent, at: TimestampMs) {
    match event {
        ThingEvent::Created(t) => *state = Some(t.clone()),
        ThingEvent::Deleted => *state = None,
        ThingEvent::Updated {
            attributes,
            max_in_flight,
        } => {
            if let Some(t) = state {
                t.attributes = attributes.clone();
                t.max_in_flight = *max_in_flight;
                t.version += 1;
                t.last_updated_at = at;
            }
        }
        ThingEvent::AddedToGroup { group } => {
            if let Some(t) = state {
                t.groups.insert(group.clone());
                t.version += 1;
                t.last_updated_at = at;
            }
        }
        ThingEvent::RemovedFromGroup { group } => {
            if let Some(t) = state {
                t.groups.remove(group);
                t.version += 1;
                t.last_updated_at = at;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn create(name: &str, a: &[(&str, &str)]) -> ThingInput {
        ThingInput::Create(CreateThing {
            thing_name: name.into(),
            attributes: attrs(a),
            max_in_flight: None,
        })
    }

    fn run(state: &mut Option<Thing>, input: ThingInput, at: TimestampMs) -> Result<(), Rejection> {
        for e in decide("lamp-1", state.as_ref(), &input, at)? {
            apply(state, &e, at);
        }
        Ok(())
    }

    #[test]
    fn create_is_idempotent_for_the_same_thing_and_conflicts_otherwise() {
        let mut t = None;
        run(&mut t, create("lamp-1", &[("model", "v2")]), 1).unwrap();
        assert_eq!(t.as_ref().map(|t| t.version), Some(1));
        run(&mut t, create("lamp-1", &[("model", "v2")]), 2).unwrap();
        assert_eq!(t.as_ref().map(|t| (t.version, t.created_at)), Some((1, 1)));
        let err = run(&mut t, create("lamp-1", &[("model", "v3")]), 3).unwrap_err();
        assert_eq!(err.code, RejectionCode::Conflict);
    }

    #[test]
    fn names_attributes_and_limits_are_validated() {
        let bad = [
            create("lamp/1", &[]),
            create("lamp-1", &[("bad key", "v")]),
            create("lamp-1", &[("k", "")]),
            create("lamp-1", &[("k", &"v".repeat(801))]),
            ThingInput::Create(CreateThing {
                thing_name: "lamp-1".into(),
                attributes: (0..51)
                    .map(|i| (format!("k{i}"), "v".to_string()))
                    .collect(),
                max_in_flight: None,
            }),
            ThingInput::Create(CreateThing {
                thing_name: "lamp-1".into(),
                attributes: BTreeMap::new(),
                max_in_flight: Some(0),
            }),
        ];
        let fields = [
            "thing_name",
            "attributes[\"bad key\"]",
            "attributes[\"k\"]",
            "attributes[\"k\"]",
            "attributes",
            "max_in_flight",
        ];
        for (input, field) in bad.into_iter().zip(fields) {
            let err = decide("lamp-1", None, &input, 0).unwrap_err();
            assert_eq!(
                (err.code, err.field.as_deref()),
                (RejectionCode::InvalidRequest, Some(field)),
                "{input:?}: {err}"
            );
        }
        assert!(validate_attributes(&attrs(&[("a.b/c:d#e=[f]-g", "x,y@z")]), false).is_ok());
    }

    #[test]
    fn update_merges_removes_replaces_and_checks_the_version() {
        let mut t = None;
        run(
            &mut t,
            create("lamp-1", &[("model", "v2"), ("floor", "3")]),
            1,
        )
        .unwrap();
        let merge = ThingInput::Update(UpdateThing {
            attributes: attrs(&[("floor", ""), ("room", "12")]),
            expected_version: Some(1),
            ..UpdateThing::default()
        });
        run(&mut t, merge, 2).unwrap();
        let thing = t.clone().unwrap();
        assert_eq!(thing.attributes, attrs(&[("model", "v2"), ("room", "12")]));
        assert_eq!((thing.version, thing.last_updated_at), (2, 2));
        let stale = ThingInput::Update(UpdateThing {
            expected_version: Some(1),
            ..UpdateThing::default()
        });
        assert_eq!(
            run(&mut t, stale, 3).unwrap_err().code,
            RejectionCode::DataConflict
        );
        let replace = ThingInput::Update(UpdateThing {
            attributes: attrs(&[("only", "this")]),
            replace_attributes: true,
            max_in_flight: Some(Some(1)),
            ..UpdateThing::default()
        });
        run(&mut t, replace, 4).unwrap();
        let thing = t.clone().unwrap();
        assert_eq!(thing.attributes, attrs(&[("only", "this")]));
        assert_eq!(thing.max_in_flight, Some(1));
        let clear = ThingInput::Update(UpdateThing {
            max_in_flight: Some(None),
            ..UpdateThing::default()
        });
        run(&mut t, clear, 5).unwrap();
        assert_eq!(t.as_ref().unwrap().max_in_flight, None);
    }

    #[test]
    fn group_memberships_are_bounded_and_joining_twice_records_nothing() {
        let mut t = None;
        let add = |g: &str| ThingInput::AddToGroup { group: g.into() };
        let err = decide("lamp-1", None, &add("lab"), 2).unwrap_err();
        assert_eq!(err.code, RejectionCode::ResourceNotFound);
        run(&mut t, create("lamp-1", &[]), 1).unwrap();
        run(&mut t, add("lab"), 2).unwrap();
        assert!(
            decide("lamp-1", t.as_ref(), &add("lab"), 3)
                .unwrap()
                .is_empty()
        );
        for i in 1..GROUPS_PER_THING_MAX {
            run(&mut t, add(&format!("g{i}")), 4).unwrap();
        }
        assert_eq!(
            run(&mut t, add("one-more"), 5).unwrap_err().code,
            RejectionCode::QuotaExceeded
        );
        run(
            &mut t,
            ThingInput::RemoveFromGroup {
                group: "lab".into(),
            },
            6,
        )
        .unwrap();
        assert!(!t.as_ref().unwrap().groups.contains("lab"));
        run(
            &mut t,
            ThingInput::Delete {
                expected_version: None,
            },
            7,
        )
        .unwrap();
        assert!(t.is_none());
        // As AWS: deleting what is not there succeeds and records nothing, unless a version
        // was expected.
        let gone = decide(
            "lamp-1",
            None,
            &ThingInput::Delete {
                expected_version: None,
            },
            8,
        )
        .unwrap();
        assert!(gone.is_empty());
        let err = decide(
            "lamp-1",
            None,
            &ThingInput::Delete {
                expected_version: Some(3),
            },
            8,
        )
        .unwrap_err();
        assert_eq!(err.code, RejectionCode::ResourceNotFound);
    }

    /// A reader that sees a suffix of the log again (the projector after a restart, from a
    /// stored state that already includes part of it) ends where one pass ends.
    #[test]
    fn folding_events_again_onto_a_state_that_has_them_changes_nothing() {
        let created = Thing {
            thing_name: "lamp-1".into(),
            attributes: attrs(&[("model", "v1")]),
            max_in_flight: None,
            groups: BTreeSet::new(),
            version: 1,
            created_at: 1,
            last_updated_at: 1,
        };
        let log = [
            (1, ThingEvent::Created(created)),
            (
                2,
                ThingEvent::Updated {
                    attributes: attrs(&[("model", "v2")]),
                    max_in_flight: Some(2),
                },
            ),
            (
                3,
                ThingEvent::AddedToGroup {
                    group: "lab".into(),
                },
            ),
            (4, ThingEvent::Deleted),
            (
                1,
                ThingEvent::Created(Thing {
                    thing_name: "lamp-1".into(),
                    attributes: BTreeMap::new(),
                    max_in_flight: None,
                    groups: BTreeSet::new(),
                    version: 1,
                    created_at: 9,
                    last_updated_at: 9,
                }),
            ),
            (
                2,
                ThingEvent::Updated {
                    attributes: attrs(&[("room", "hall")]),
                    max_in_flight: None,
                },
            ),
        ];
        let fold_from = |mut state: Option<Thing>, events: &[(u64, ThingEvent)]| {
            for (i, (seq, e)) in events.iter().enumerate() {
                fold(&mut state, e, 10 + i as i64, *seq);
            }
            state
        };
        let once = fold_from(None, &log);
        assert_eq!(once.as_ref().map(|t| t.version), Some(2));
        // Restarting from any point with the state after any later point gives the same end.
        for from in 0..log.len() {
            for stored in from..=log.len() {
                let state = fold_from(None, &log[..stored]);
                let again = fold_from(state, &log[from..]);
                assert_eq!(
                    again.as_ref().map(|t| (&t.attributes, t.version)),
                    once.as_ref().map(|t| (&t.attributes, t.version)),
                    "replaying from {from} onto the state after {stored}"
                );
            }
        }
    }
}
