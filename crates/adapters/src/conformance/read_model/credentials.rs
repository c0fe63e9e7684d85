//! Device credentials: round trips of an owner's whole, certificates found by id and by
//! owner, the revoked listing, and replays (an older version changes nothing); registered CA
//! certificates found by id and listed.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use fleetcmd_domain::ca::CaCertificate;
use fleetcmd_domain::credential::{CertificateRecord, CertificateStatus, Credentials};
use fleetcmd_domain::ports::{CredentialWrite, ProjectionBatch, ReadModel};
use fleetcmd_domain::{Target, TimestampMs};

use super::{Capabilities, commit, commit_writes, position, start};
use crate::conformance::within;

/// A certificate id (64 hex characters) unique to `run` and `n`.
fn certificate_id(run: &str, n: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (run, n).hash(&mut h);
    format!("{:016x}", h.finish()).repeat(4)
}

fn certificate(run: &str, n: &str, owner: &Target, at: TimestampMs) -> CertificateRecord {
    CertificateRecord {
        certificate_id: certificate_id(run, n),
        owner: owner.clone(),
        status: CertificateStatus::Active,
        certificate_pem: format!(
            "-----BEGIN CERTIFICATE-----\n{run}{n}\n-----END CERTIFICATE-----\n"
        ),
        ca_certificate_id: certificate_id(run, "ca"),
        not_before: at - 3_600_000,
        not_after: at + 86_400_000,
        created_at: at,
        revoked_at: None,
    }
}

fn revoked(mut c: CertificateRecord, at: TimestampMs) -> CertificateRecord {
    c.status = CertificateStatus::Revoked;
    c.revoked_at = Some(at);
    c
}

fn credentials(
    owner: &Target,
    certificates: &[&CertificateRecord],
    password_hash: Option<&str>,
    version: u64,
) -> Credentials {
    Credentials {
        owner: owner.clone(),
        certificates: certificates
            .iter()
            .map(|c| (c.certificate_id.clone(), (*c).clone()))
            .collect::<BTreeMap<_, _>>(),
        password_hash: password_hash.map(str::to_owned),
        version,
    }
}

/// Commits credential writes to partition 0 as the next batch.
async fn commit_credentials(store: &dyn ReadModel, writes: Vec<Credentials>) {
    let credentials = writes
        .into_iter()
        .map(|credentials| CredentialWrite { credentials })
        .collect();
    commit_writes(
        store,
        ProjectionBatch {
            credentials,
            ..ProjectionBatch::default()
        },
    )
    .await;
}

async fn get_credentials(store: &dyn ReadModel, owner: &Target) -> Option<Credentials> {
    within("get_credentials", store.get_credentials(owner))
        .await
        .expect("get_credentials")
}

async fn get_certificate(store: &dyn ReadModel, id: &str) -> Option<CertificateRecord> {
    within("get_certificate", store.get_certificate(id))
        .await
        .expect("get_certificate")
}

async fn list_certificates(store: &dyn ReadModel, owner: &Target) -> Vec<CertificateRecord> {
    within("list_certificates", store.list_certificates(owner))
        .await
        .expect("list_certificates")
}

async fn get_password_hash(store: &dyn ReadModel, owner: &Target) -> Option<String> {
    within("get_password_hash", store.get_password_hash(owner))
        .await
        .expect("get_password_hash")
}

/// This run's revoked certificates (other runs may share the store).
async fn revoked_of(store: &dyn ReadModel, ids: &[&str]) -> Vec<CertificateRecord> {
    within("revoked_certificates", store.revoked_certificates())
        .await
        .expect("revoked_certificates")
        .into_iter()
        .filter(|c| ids.contains(&c.certificate_id.as_str()))
        .collect()
}

/// Unknown owners and ids are `None` or empty; a committed owner reads back whole, its
/// certificates by id and by owner (sorted by id), its password hash; a thing and a client
/// of the same id are different owners.
pub async fn credentials_round_trip_every_field(store: Arc<dyn ReadModel>, _: Capabilities) {
    let store = &*store;
    let (run, at) = start("cr");
    let thing = Target::thing(format!("{run}-lamp")).expect("thing");
    let client = Target::client(format!("{run}-lamp")).expect("client");
    assert_eq!(get_credentials(store, &thing).await, None);
    assert!(list_certificates(store, &thing).await.is_empty());
    assert_eq!(get_password_hash(store, &thing).await, None);
    assert_eq!(
        get_certificate(store, &certificate_id(&run, "a")).await,
        None
    );
    let a = certificate(&run, "a", &thing, at);
    let b = revoked(certificate(&run, "b", &thing, at + 1), at + 2);
    let hash = "$argon2id$v=19$m=4096,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
    let whole = credentials(&thing, &[&a, &b], Some(hash), 3);
    let c = certificate(&run, "c", &client, at);
    let bare = credentials(&client, &[&c], None, 1);
    commit_credentials(store, vec![whole.clone(), bare.clone()]).await;
    assert_eq!(get_credentials(store, &thing).await, Some(whole));
    assert_eq!(get_credentials(store, &client).await, Some(bare));
    assert_eq!(
        get_certificate(store, &a.certificate_id).await,
        Some(a.clone())
    );
    assert_eq!(
        get_certificate(store, &b.certificate_id).await,
        Some(b.clone())
    );
    assert_eq!(
        get_certificate(store, &c.certificate_id).await,
        Some(c.clone())
    );
    let mut both = vec![a.clone(), b.clone()];
    both.sort_by(|x, y| x.certificate_id.cmp(&y.certificate_id));
    assert_eq!(list_certificates(store, &thing).await, both);
    assert_eq!(list_certificates(store, &client).await, vec![c]);
    assert_eq!(
        get_password_hash(store, &thing).await.as_deref(),
        Some(hash)
    );
    assert_eq!(get_password_hash(store, &client).await, None);
}

/// A revocation shows in the certificate, the owner's listing and the revoked listing; a
/// replayed older version (an earlier batch again) changes none of them, nor the password.
pub async fn revocations_are_listed_and_older_versions_change_nothing(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (run, at) = start("cv");
    let owner = Target::thing(format!("{run}-lamp")).expect("thing");
    let a = certificate(&run, "a", &owner, at);
    let b = certificate(&run, "b", &owner, at);
    let ids = [a.certificate_id.as_str(), b.certificate_id.as_str()];
    let v1 = credentials(&owner, &[&a], Some("$argon2id$old"), 1);
    let v2 = credentials(&owner, &[&a, &b], Some("$argon2id$old"), 2);
    commit_credentials(store, vec![v1.clone(), v2.clone()]).await;
    assert!(revoked_of(store, &ids).await.is_empty());
    let a_revoked = revoked(a.clone(), at + 5);
    let v4 = credentials(&owner, &[&a_revoked, &b], Some("$argon2id$new"), 4);
    commit_credentials(store, vec![v4.clone()]).await;
    assert_eq!(revoked_of(store, &ids).await, vec![a_revoked.clone()]);
    // The earlier batches again, in their order, then each alone.
    commit_credentials(store, vec![v1.clone(), v2.clone()]).await;
    commit_credentials(store, vec![v2]).await;
    commit_credentials(store, vec![v1]).await;
    assert_eq!(get_credentials(store, &owner).await, Some(v4));
    assert_eq!(
        get_certificate(store, &a.certificate_id).await,
        Some(a_revoked.clone())
    );
    assert_eq!(
        get_password_hash(store, &owner).await.as_deref(),
        Some("$argon2id$new")
    );
    assert_eq!(revoked_of(store, &ids).await, vec![a_revoked]);
    let listed = list_certificates(store, &owner).await;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed
            .iter()
            .filter(|c| c.status == CertificateStatus::Revoked)
            .count(),
        1
    );
}

fn registered_ca(run: &str, n: &str, at: TimestampMs, version: u64) -> CaCertificate {
    CaCertificate {
        ca_certificate_id: certificate_id(run, n),
        certificate_pem: format!(
            "-----BEGIN CERTIFICATE-----\n{run}{n}{version}\n-----END CERTIFICATE-----\n"
        ),
        common_name: Some(format!("{run} {n} CA")),
        not_before: at - 3_600_000,
        not_after: at + 86_400_000,
        registered_at: at,
        version,
    }
}

/// This run's registered CA certificates (other runs may share the store).
async fn cas_of(store: &dyn ReadModel, ids: &[&str]) -> Vec<CaCertificate> {
    within("list_ca_certificates", store.list_ca_certificates())
        .await
        .expect("list_ca_certificates")
        .into_iter()
        .filter(|c| ids.contains(&c.ca_certificate_id.as_str()))
        .collect()
}

async fn get_ca(store: &dyn ReadModel, id: &str) -> Option<CaCertificate> {
    within("get_ca_certificate", store.get_ca_certificate(id))
        .await
        .expect("get_ca_certificate")
}

/// A registered CA reads back whole by id and in the listing (sorted by id); an unknown id
/// is `None`; a replayed older version changes nothing.
pub async fn registered_cas_round_trip_and_older_versions_change_nothing(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (run, at) = start("ca");
    let (a1, b) = (
        registered_ca(&run, "a", at, 1),
        registered_ca(&run, "b", at, 1),
    );
    let (id_a, id_b) = (a1.ca_certificate_id.clone(), b.ca_certificate_id.clone());
    let ids = [id_a.as_str(), id_b.as_str()];
    assert_eq!(get_ca(store, ids[0]).await, None);
    assert!(cas_of(store, &ids).await.is_empty());
    let next_offset = position(store).await + 1;
    let batch = |cas: Vec<CaCertificate>, next_offset: u64| ProjectionBatch {
        partition: 0,
        next_offset,
        cas,
        ..ProjectionBatch::default()
    };
    commit(store, batch(vec![a1.clone(), b.clone()], next_offset)).await;
    assert_eq!(get_ca(store, ids[0]).await, Some(a1.clone()));
    let mut both = vec![a1.clone(), b.clone()];
    both.sort_by(|x, y| x.ca_certificate_id.cmp(&y.ca_certificate_id));
    assert_eq!(cas_of(store, &ids).await, both);
    let a2 = registered_ca(&run, "a", at, 2);
    commit(store, batch(vec![a2.clone()], next_offset + 1)).await;
    commit(store, batch(vec![a1], next_offset + 2)).await;
    assert_eq!(get_ca(store, ids[0]).await, Some(a2));
}
