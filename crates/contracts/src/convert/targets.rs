//! Targets (a thing or an MQTT client) and their kinds.

use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::ids::{Target, TargetKind};

use super::closed_enum;
use crate::pb;

closed_enum! {
    /// A `TargetKind` number: THING or CLIENT; anything else is an error naming `field`.
    pub fn target_kind_from_pb: TargetKind => pb::TargetKind {
        Thing => Thing,
        Client => Client,
    }
}

/// A target: `target.kind` must be THING or CLIENT, and `target.id` passes [`Target::new`].
/// (The API calls the field `target` everywhere, so the paths are fixed.)
impl TryFrom<pb::Target> for Target {
    type Error = ValidationError;

    fn try_from(t: pb::Target) -> Result<Self, Self::Error> {
        let kind = target_kind_from_pb("target.kind", t.kind)?;
        Target::new(kind, t.id)
    }
}

impl From<Target> for pb::Target {
    fn from(t: Target) -> Self {
        Self {
            kind: pb::TargetKind::from(t.kind) as i32,
            id: t.id,
        }
    }
}

impl From<&Target> for pb::Target {
    fn from(t: &Target) -> Self {
        t.clone().into()
    }
}

/// A required `target`: unset is an error naming `target`.
pub fn require_target(target: Option<pb::Target>) -> Result<Target, ValidationError> {
    match target {
        Some(t) => Target::try_from(t),
        None => Err(ValidationError::new("target", "is required")),
    }
}

/// An optional `target` (a filter, or a check against the execution's target).
pub fn optional_target(target: Option<pb::Target>) -> Result<Option<Target>, ValidationError> {
    target.map(Target::try_from).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::test_support::{err_field, pb_thing};

    #[test]
    fn targets_round_trip() {
        for t in [
            Target::thing("lab-1:a").unwrap(),
            Target::client("dev.1@x").unwrap(),
        ] {
            let p = pb::Target::from(&t);
            assert_eq!(p.id, t.id);
            assert_eq!(Target::try_from(p.clone()), Ok(t.clone()));
            assert_eq!(pb::Target::from(t.clone()), p);
        }
        assert_eq!(pb::Target::from(Target::client("c").unwrap()).kind, 2);
        assert_eq!(require_target(Some(pb_thing("x"))), Target::thing("x"));
        assert_eq!(optional_target(None), Ok(None));
        assert_eq!(
            optional_target(Some(pb_thing("x"))),
            Ok(Some(Target::thing("x").unwrap()))
        );
    }

    #[test]
    fn bad_targets_name_the_field() {
        let unspecified = pb::Target {
            kind: 0,
            id: "x".into(),
        };
        let e = Target::try_from(unspecified).unwrap_err();
        assert_eq!(e.field, "target.kind");
        assert!(e.message.contains("TARGET_KIND_UNSPECIFIED"), "{e}");
        let e = Target::try_from(pb::Target {
            kind: 9,
            id: "x".into(),
        })
        .unwrap_err();
        assert_eq!(e.field, "target.kind");
        assert!(e.message.contains('9'), "{e}");
        assert_eq!(e.message, "must be one of THING, CLIENT, got 9");
        assert_eq!(err_field(Target::try_from(pb_thing("a/b"))), "target.id");
        assert_eq!(err_field(Target::try_from(pb_thing(""))), "target.id");
        let e = require_target(None).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("target", "is required")
        );
        assert_eq!(
            err_field(optional_target(Some(pb_thing("a b")))),
            "target.id"
        );
    }
}
