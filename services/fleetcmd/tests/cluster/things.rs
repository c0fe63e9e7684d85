//! s7: the thing registry in cluster mode: a thing created through the registry is decided by
//! the owner of its shard, logged in Kafka, projected into the CQL read model and readable as
//! soon as the call returns; updates, listings and deletes go the same way, and so do device
//! passwords and CAs the user registers, whose device certificates are then attached (the
//! cluster has no device CA of its own, so it issues none), and thing groups, whose static
//! memberships span the group's shard and each thing's.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use fleetcmd_contracts::pb;
use tonic::{Code, Status};

use fleetcmd_local_cluster::Things;

use super::{given_a_cluster, given_the_engines};

/// Calls `call` with a fresh client and `request` until it answers something other than
/// UNAVAILABLE (shard owners may still be joining) or a minute has passed.
async fn retried<R: Clone, T, F, Fut>(
    what: &str,
    things: &Things,
    request: R,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut(Things, R) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = call(things.clone(), request.clone());
        match tokio::time::timeout(Duration::from_secs(30), answer).await {
            Ok(Err(s))
                if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(result) => return result.map(tonic::Response::into_inner),
            Err(_) => panic!("[s7] {what} did not answer within 30 s"),
        }
    }
}

/// [`retried`] of one thing registry method, which names the call.
macro_rules! call {
    ($things:expr, $method:ident($request:expr)) => {
        retried(
            stringify!($method),
            $things,
            $request,
            |mut c, r| async move { c.$method(r).await },
        )
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_things_are_registered_through_the_shard_owners_and_read_back() {
    let test = "s7_things_are_registered_through_the_shard_owners_and_read_back";
    let Some((_serial, engines)) = given_the_engines(test).await else {
        return;
    };
    let (mut cluster, _registry, _command) = given_a_cluster("s7", &engines, 1, 1).await;
    let things = cluster.things();
    let prefix = format!("{}-thing-", cluster.root());
    let names: Vec<String> = (0..5).map(|i| format!("{prefix}{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let request = pb::CreateThingRequest {
            thing_name: name.clone(),
            attributes: HashMap::from([("parity".to_string(), (i % 2).to_string())]),
            max_in_flight: 0,
        };
        call!(&things, create_thing(request))
            .await
            .unwrap_or_else(|s| panic!("[s7] create {name}: {:?} {}", s.code(), s.message()));
        // Readable as soon as the create returned: the registry waited for the projector.
        let get = pb::GetThingRequest {
            thing_name: name.clone(),
        };
        let got = call!(&things, get_thing(get))
            .await
            .unwrap_or_else(|s| panic!("[s7] get {name}: {:?} {}", s.code(), s.message()));
        assert_eq!(
            (got.version, got.attributes["parity"].as_str()),
            (1, if i % 2 == 0 { "0" } else { "1" })
        );
    }
    let update = pb::UpdateThingRequest {
        thing_name: names[0].clone(),
        attributes: HashMap::from([("parity".to_string(), "1".to_string())]),
        expected_version: 1,
        ..Default::default()
    };
    let updated = call!(&things, update_thing(update)).await.expect("update");
    assert_eq!(updated.version, 2);
    let delete = pb::DeleteThingRequest {
        thing_name: names[4].clone(),
        expected_version: 0,
    };
    call!(&things, delete_thing(delete)).await.expect("delete");
    let odd = pb::ListThingsRequest {
        max_results: 2,
        attribute_name: "parity".into(),
        attribute_value: "1".into(),
        thing_name_prefix: prefix.clone(),
        ..Default::default()
    };
    let mut listed = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let request = pb::ListThingsRequest {
            next_token: token.clone(),
            ..odd.clone()
        };
        let page = call!(&things, list_things(request)).await.expect("list");
        listed.extend(page.things.into_iter().map(|t| t.thing_name));
        token = page.next_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        listed,
        [names[0].clone(), names[1].clone(), names[3].clone()]
    );
    let get = pb::GetThingRequest {
        thing_name: names[4].clone(),
    };
    let gone = call!(&things, get_thing(get))
        .await
        .expect_err("a deleted thing");
    assert_eq!(gone.code(), Code::NotFound);
    thing_groups(&things, &prefix, &names).await;
    // Credentials: the cluster has no device CA, so certificates are refused; a password is
    // decided by the thing's shard owner and projected like the thing.
    let owner = Some(pb::CredentialOwner {
        owner: Some(pb::credential_owner::Owner::ThingName(names[0].clone())),
    });
    let cert = pb::CreateThingCertificateRequest {
        owner: owner.clone(),
        validity_days: 0,
    };
    let refused = call!(&things, create_thing_certificate(cert))
        .await
        .expect_err("no CA in the cluster");
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("no device CA"),
        "{}",
        refused.message()
    );
    let password = pb::CreateThingPasswordRequest {
        owner: owner.clone(),
    };
    let created = call!(&things, create_thing_password(password))
        .await
        .expect("password");
    assert_eq!(created.username, names[0]);
    assert!(!created.password.is_empty());
    let ghost = pb::CreateThingPasswordRequest {
        owner: Some(pb::CredentialOwner {
            owner: Some(pb::credential_owner::Owner::ThingName(names[4].clone())),
        }),
    };
    let refused = call!(&things, create_thing_password(ghost))
        .await
        .expect_err("a deleted thing has no credentials");
    assert_eq!(refused.code(), Code::NotFound);
    let list = pb::ListThingCertificatesRequest {
        owner: owner.clone(),
    };
    let listed = call!(&things, list_thing_certificates(list.clone()))
        .await
        .expect("list certificates");
    assert!(listed.certificates.is_empty());
    // A CA of the user's PKI: registered in the shard of ca/<id>, projected, listed; a
    // device certificate it signed is attached to the thing through the thing's shard.
    let now = time::OffsetDateTime::now_utc();
    let acme = fleetcmd_identity::Ca::generate(now).expect("a CA");
    let register = pb::RegisterCaCertificateRequest {
        ca_certificate_pem: acme.certificate_pem().to_owned(),
    };
    let registered = call!(&things, register_ca_certificate(register))
        .await
        .expect("register the CA");
    assert_eq!(registered.ca_certificate_id, acme.id());
    let cas = call!(
        &things,
        list_ca_certificates(pb::ListCaCertificatesRequest {})
    )
    .await
    .expect("list CAs");
    assert!(
        cas.ca_certificates
            .iter()
            .any(|c| c.ca_certificate_id == acme.id()),
        "{cas:?}"
    );
    let identity = fleetcmd_identity::DeviceIdentity::thing(names[0].clone()).expect("identity");
    let signed = fleetcmd_identity::issue(&acme, &identity, 1, now).expect("a certificate");
    let attach = pb::RegisterThingCertificateRequest {
        owner,
        certificate_pem: signed.certificate_pem.clone(),
        ..Default::default()
    };
    let attached = call!(&things, register_thing_certificate(attach))
        .await
        .expect("attach a certificate of the registered CA");
    assert_eq!(attached.certificate_id, signed.certificate_id);
    let listed = call!(&things, list_thing_certificates(list))
        .await
        .expect("list certificates");
    assert_eq!(listed.certificates.len(), 1);
    assert_eq!(listed.certificates[0].ca_certificate_id, acme.id());
    // Mosquitto tells nobody who connects: connectivity is not known, and says so.
    let unknown = call!(
        &things,
        get_connectivity(pb::GetConnectivityRequest {
            target: Some(pb::Target {
                kind: pb::TargetKind::Thing as i32,
                id: names[0].clone(),
            }),
        })
    )
    .await
    .expect_err("no presence from an external broker");
    assert_eq!(
        unknown.code(),
        Code::FailedPrecondition,
        "{}",
        unknown.message()
    );
    cluster.assert_all_alive();
}

/// The names of the things a listing of a group (or a query) returns, page by page.
async fn members(things: &Things, group: &str) -> Vec<String> {
    let mut listed = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let request = pb::ListThingsInThingGroupRequest {
            thing_group_name: group.into(),
            max_results: 1,
            next_token: token.clone(),
        };
        let page = call!(things, list_things_in_thing_group(request))
            .await
            .unwrap_or_else(|s| panic!("[s7] list {group}: {:?} {}", s.code(), s.message()));
        listed.extend(page.things.into_iter().map(|t| t.thing_name));
        token = page.next_token;
        if token.is_empty() {
            return listed;
        }
    }
    panic!("[s7] the listing of {group} did not end within 10 pages");
}

/// A static group gains members through their shards and is deleted once empty; a dynamic
/// group lists what its query matches in the CQL read model. `names[4]` was deleted and
/// `names[0]` made odd: the odd things are 0, 1 and 3.
async fn thing_groups(things: &Things, prefix: &str, names: &[String]) {
    let lab = format!("{prefix}lab");
    let create = pb::CreateThingGroupRequest {
        thing_group_name: lab.clone(),
        description: "the bench".into(),
        ..Default::default()
    };
    let created = call!(things, create_thing_group(create))
        .await
        .expect("create a static group");
    assert_eq!(created.description, "the bench");
    for name in [&names[3], &names[1]] {
        let add = pb::AddThingToThingGroupRequest {
            thing_group_name: lab.clone(),
            thing_name: name.clone(),
        };
        call!(things, add_thing_to_thing_group(add))
            .await
            .unwrap_or_else(|s| panic!("[s7] add {name}: {:?} {}", s.code(), s.message()));
    }
    let ghost = pb::AddThingToThingGroupRequest {
        thing_group_name: lab.clone(),
        thing_name: names[4].clone(),
    };
    let refused = call!(things, add_thing_to_thing_group(ghost))
        .await
        .expect_err("a deleted thing joins no group");
    assert_eq!(refused.code(), Code::NotFound, "{}", refused.message());
    assert_eq!(
        members(things, &lab).await,
        [names[1].clone(), names[3].clone()]
    );
    let odd = format!("{prefix}odd");
    let create = pb::CreateThingGroupRequest {
        thing_group_name: odd.clone(),
        query_string: format!("thing_name:{prefix}* AND attributes.parity:1 AND NOT group:{lab}"),
        ..Default::default()
    };
    call!(things, create_thing_group(create))
        .await
        .expect("create a dynamic group");
    assert_eq!(members(things, &odd).await, [names[0].clone()]);
    let delete = pb::DeleteThingGroupRequest {
        thing_group_name: lab.clone(),
    };
    let refused = call!(things, delete_thing_group(delete.clone()))
        .await
        .expect_err("a static group with members");
    assert_eq!(
        refused.code(),
        Code::FailedPrecondition,
        "{}",
        refused.message()
    );
    for name in [&names[1], &names[3]] {
        let remove = pb::RemoveThingFromThingGroupRequest {
            thing_group_name: lab.clone(),
            thing_name: name.clone(),
        };
        call!(things, remove_thing_from_thing_group(remove))
            .await
            .unwrap_or_else(|s| panic!("[s7] remove {name}: {:?} {}", s.code(), s.message()));
    }
    call!(things, delete_thing_group(delete))
        .await
        .expect("delete the emptied group");
    assert_eq!(
        members(things, &odd).await,
        [names[0].clone(), names[1].clone(), names[3].clone()]
    );
}
