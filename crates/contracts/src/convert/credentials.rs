//! Device credentials: the owner a request names, and certificates and registered CAs as the
//! API lists them.

use fleetcmd_domain::ca::CaCertificate;
use fleetcmd_domain::credential::{CertificateRecord, CertificateStatus};
use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::ids::{Target, TargetKind};

use super::time::{opt_timestamp_from_ms, timestamp_from_ms};
use crate::pb;

/// A required `owner` (`owner.thing_name` or `owner.client_id`): unset, empty or an id that
/// breaks the naming rules is an error naming the field.
pub fn credential_owner_from_pb(
    owner: Option<pb::CredentialOwner>,
) -> Result<Target, ValidationError> {
    use pb::credential_owner::Owner;
    match owner.and_then(|o| o.owner) {
        Some(Owner::ThingName(name)) => {
            Target::thing(name).map_err(|e| ValidationError::new("owner.thing_name", e.message))
        }
        Some(Owner::ClientId(id)) => {
            Target::client(id).map_err(|e| ValidationError::new("owner.client_id", e.message))
        }
        None => Err(ValidationError::new(
            "owner",
            "is required: set owner.thing_name or owner.client_id",
        )),
    }
}

impl From<&Target> for pb::CredentialOwner {
    fn from(t: &Target) -> Self {
        use pb::credential_owner::Owner;
        Self {
            owner: Some(match t.kind {
                TargetKind::Thing => Owner::ThingName(t.id.clone()),
                TargetKind::Client => Owner::ClientId(t.id.clone()),
            }),
        }
    }
}

impl From<CertificateStatus> for pb::CertificateStatus {
    fn from(s: CertificateStatus) -> Self {
        match s {
            CertificateStatus::Active => Self::Active,
            CertificateStatus::Revoked => Self::Revoked,
        }
    }
}

impl From<CertificateRecord> for pb::Certificate {
    fn from(c: CertificateRecord) -> Self {
        Self {
            owner: Some((&c.owner).into()),
            status: pb::CertificateStatus::from(c.status) as i32,
            certificate_id: c.certificate_id,
            certificate_pem: c.certificate_pem,
            ca_certificate_id: c.ca_certificate_id,
            not_before: Some(timestamp_from_ms(c.not_before)),
            not_after: Some(timestamp_from_ms(c.not_after)),
            created_at: Some(timestamp_from_ms(c.created_at)),
            revoked_at: opt_timestamp_from_ms(c.revoked_at),
        }
    }
}

impl From<CaCertificate> for pb::CaCertificate {
    fn from(c: CaCertificate) -> Self {
        Self {
            ca_certificate_id: c.ca_certificate_id,
            certificate_pem: c.certificate_pem,
            common_name: c.common_name.unwrap_or_default(),
            not_before: Some(timestamp_from_ms(c.not_before)),
            not_after: Some(timestamp_from_ms(c.not_after)),
            registered_at: Some(timestamp_from_ms(c.registered_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::credential_owner::Owner;

    fn owner(o: Owner) -> Option<pb::CredentialOwner> {
        Some(pb::CredentialOwner { owner: Some(o) })
    }

    #[test]
    fn owners_convert_both_ways_and_bad_ones_name_the_field() {
        let thing = credential_owner_from_pb(owner(Owner::ThingName("lamp-1".into()))).unwrap();
        assert_eq!(thing, Target::thing("lamp-1").unwrap());
        assert_eq!(
            pb::CredentialOwner::from(&thing).owner,
            Some(Owner::ThingName("lamp-1".into()))
        );
        let client = credential_owner_from_pb(owner(Owner::ClientId("s@7".into()))).unwrap();
        assert_eq!(client, Target::client("s@7").unwrap());
        for (bad, field) in [
            (owner(Owner::ThingName("a/b".into())), "owner.thing_name"),
            (owner(Owner::ThingName(String::new())), "owner.thing_name"),
            (owner(Owner::ClientId("a+b".into())), "owner.client_id"),
            (Some(pb::CredentialOwner { owner: None }), "owner"),
            (None, "owner"),
        ] {
            assert_eq!(credential_owner_from_pb(bad).unwrap_err().field, field);
        }
    }
}
