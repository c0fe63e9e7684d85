//! The thing registry's gRPC API (`fleetcmd.v1.ThingRegistry`). Things are created, updated
//! and deleted through the owner of the thing's shard (the shard of `thing/<name>`, which
//! also owns the thing's executions); reads are served from the read model.

use std::sync::Arc;

use fleetcmd_contracts::convert::{
    expected_version, port_status, rejection_status, thing_to_pb, update_thing_from_pb,
    validation_status,
};
use fleetcmd_contracts::pb;
use fleetcmd_domain::ids::Target;
use fleetcmd_domain::policy::Action;
use fleetcmd_domain::ports::ThingQuery;
use fleetcmd_domain::protocol::{ShardReply, ShardRequest};
use fleetcmd_domain::thing::{self, CreateThing, Thing, ThingInput};
use fleetcmd_service_kit::{await_projection, call_status, unexpected};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::{RegistryDeps, cas, connectivity, credentials, groups};

pub struct ThingService {
    deps: Arc<RegistryDeps>,
}

impl ThingService {
    pub(crate) fn new(deps: Arc<RegistryDeps>) -> Self {
        Self { deps }
    }

    /// Checks the name and the caller's right to `action` on the thing; returns its target.
    fn authorize(
        &self,
        metadata: &MetadataMap,
        action: Action,
        name: &str,
    ) -> Result<Target, Status> {
        thing::validate_thing_name(name).map_err(validation_status)?;
        let target = Target::thing(name).map_err(validation_status)?;
        self.deps
            .auth
            .check(metadata, action, None, Some(&target))?;
        Ok(target)
    }

    /// Sends a thing input to its shard's owner and waits until the read model has it;
    /// returns the thing after it (`None`: deleted or never there).
    async fn call(&self, thing_name: &str, input: ThingInput) -> Result<Option<Thing>, Status> {
        let request = ShardRequest::Thing {
            thing_name: thing_name.to_owned(),
            input,
        };
        match self.deps.shards.call(&request).await.map_err(call_status)? {
            ShardReply::Thing {
                thing, position, ..
            } => {
                await_projection(&self.deps.projection, position).await;
                Ok(thing.map(|t| *t))
            }
            ShardReply::Rejected(r) => Err(rejection_status(r)),
            other => Err(unexpected(&other)),
        }
    }
}

/// The resource an audit record names for a credential call: the owner, as policies write it.
fn owner_resource(owner: &Option<pb::CredentialOwner>) -> String {
    use pb::credential_owner::Owner;
    match owner.as_ref().and_then(|o| o.owner.as_ref()) {
        Some(Owner::ThingName(name)) => format!("thing/{name}"),
        Some(Owner::ClientId(id)) => format!("client/{id}"),
        None => "-".to_owned(),
    }
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("thing {name} not found"))
}

pub(crate) type ConnectivityStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ConnectivityEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::thing_registry_server::ThingRegistry for ThingService {
    async fn create_thing(
        &self,
        request: Request<pb::CreateThingRequest>,
    ) -> Result<Response<pb::CreateThingResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::CreateThing,
            format!("thing/{}", request.get_ref().thing_name),
        );
        audit.finish(
            async move {
                let target = self.authorize(
                    request.metadata(),
                    Action::CreateThing,
                    &request.get_ref().thing_name,
                )?;
                let create = CreateThing::from(request.into_inner());
                let name = create.thing_name.clone();
                self.call(&name, ThingInput::Create(create)).await?;
                Ok(Response::new(pb::CreateThingResponse {
                    thing_arn: self.deps.arns.target(&target),
                    thing_name: name,
                }))
            }
            .await,
        )
    }

    async fn get_thing(
        &self,
        request: Request<pb::GetThingRequest>,
    ) -> Result<Response<pb::Thing>, Status> {
        let name = &request.get_ref().thing_name;
        self.authorize(request.metadata(), Action::GetThing, name)?;
        let thing = self
            .deps
            .read_model
            .get_thing(name)
            .await
            .map_err(port_status)?
            .ok_or_else(|| not_found(name))?;
        let c = connectivity::of_thing(&self.deps, &thing.thing_name);
        Ok(Response::new(thing_to_pb(
            thing,
            c.as_ref(),
            &self.deps.arns,
        )))
    }

    async fn list_things(
        &self,
        request: Request<pb::ListThingsRequest>,
    ) -> Result<Response<pb::ListThingsResponse>, Status> {
        self.deps
            .auth
            .check(request.metadata(), Action::ListThings, None, None)?;
        let mut request = request.into_inner();
        let query_string = std::mem::take(&mut request.query_string);
        let query = ThingQuery::try_from(request).map_err(validation_status)?;
        if let Some((name, value)) = &query.attribute {
            let one = std::collections::BTreeMap::from([(name.clone(), value.clone())]);
            thing::validate_attributes(&one, false).map_err(validation_status)?;
        }
        let page = if query_string.is_empty() {
            connectivity::list_things(&self.deps, query).await?
        } else {
            groups::list_by_query(&self.deps, &query_string, query).await?
        };
        Ok(Response::new(pb::ListThingsResponse {
            things: page
                .items
                .into_iter()
                .map(|(t, c)| thing_to_pb(t, c.as_ref(), &self.deps.arns))
                .collect(),
            next_token: page.next_token.unwrap_or_default(),
        }))
    }

    async fn update_thing(
        &self,
        request: Request<pb::UpdateThingRequest>,
    ) -> Result<Response<pb::UpdateThingResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::UpdateThing,
            format!("thing/{}", request.get_ref().thing_name),
        );
        audit.finish(
            async move {
                let metadata = request.metadata().clone();
                let (name, update) =
                    update_thing_from_pb(request.into_inner()).map_err(validation_status)?;
                self.authorize(&metadata, Action::UpdateThing, &name)?;
                let thing = self
                    .call(&name, ThingInput::Update(update))
                    .await?
                    .ok_or_else(|| not_found(&name))?;
                Ok(Response::new(pb::UpdateThingResponse {
                    version: i64::try_from(thing.version).unwrap_or(i64::MAX),
                }))
            }
            .await,
        )
    }

    async fn delete_thing(
        &self,
        request: Request<pb::DeleteThingRequest>,
    ) -> Result<Response<pb::DeleteThingResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::DeleteThing,
            format!("thing/{}", request.get_ref().thing_name),
        );
        audit.finish(
            async move {
                let name = &request.get_ref().thing_name;
                self.authorize(request.metadata(), Action::DeleteThing, name)?;
                let expected_version =
                    expected_version("expected_version", request.get_ref().expected_version)
                        .map_err(validation_status)?;
                self.call(name, ThingInput::Delete { expected_version })
                    .await?;
                Ok(Response::new(pb::DeleteThingResponse {}))
            }
            .await,
        )
    }

    async fn create_thing_certificate(
        &self,
        request: Request<pb::CreateThingCertificateRequest>,
    ) -> Result<Response<pb::CreateThingCertificateResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::CreateThingCertificate,
            owner_resource(&request.get_ref().owner),
        );
        audit
            .finish(async move { credentials::create_certificate(&self.deps, request).await }.await)
    }

    async fn register_thing_certificate(
        &self,
        request: Request<pb::RegisterThingCertificateRequest>,
    ) -> Result<Response<pb::RegisterThingCertificateResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::RegisterThingCertificate,
            owner_resource(&request.get_ref().owner),
        );
        audit.finish(
            async move { credentials::register_certificate(&self.deps, request).await }.await,
        )
    }

    async fn list_thing_certificates(
        &self,
        request: Request<pb::ListThingCertificatesRequest>,
    ) -> Result<Response<pb::ListThingCertificatesResponse>, Status> {
        credentials::list_certificates(&self.deps, request).await
    }

    async fn revoke_thing_certificate(
        &self,
        request: Request<pb::RevokeThingCertificateRequest>,
    ) -> Result<Response<pb::RevokeThingCertificateResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::RevokeThingCertificate,
            format!("certificate/{}", request.get_ref().certificate_id),
        );
        audit
            .finish(async move { credentials::revoke_certificate(&self.deps, request).await }.await)
    }

    async fn get_certificate_revocation_list(
        &self,
        request: Request<pb::GetCertificateRevocationListRequest>,
    ) -> Result<Response<pb::GetCertificateRevocationListResponse>, Status> {
        credentials::revocation_list(&self.deps, request).await
    }

    async fn create_thing_password(
        &self,
        request: Request<pb::CreateThingPasswordRequest>,
    ) -> Result<Response<pb::CreateThingPasswordResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::CreateThingPassword,
            owner_resource(&request.get_ref().owner),
        );
        audit.finish(async move { credentials::create_password(&self.deps, request).await }.await)
    }

    async fn register_ca_certificate(
        &self,
        request: Request<pb::RegisterCaCertificateRequest>,
    ) -> Result<Response<pb::RegisterCaCertificateResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::RegisterCaCertificate,
            "ca".to_owned(),
        );
        audit.finish(async move { cas::register(&self.deps, request).await }.await)
    }

    async fn list_ca_certificates(
        &self,
        request: Request<pb::ListCaCertificatesRequest>,
    ) -> Result<Response<pb::ListCaCertificatesResponse>, Status> {
        cas::list(&self.deps, request).await
    }

    async fn create_thing_group(
        &self,
        request: Request<pb::CreateThingGroupRequest>,
    ) -> Result<Response<pb::ThingGroup>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::CreateThingGroup,
            format!("thinggroup/{}", request.get_ref().thing_group_name),
        );
        audit.finish(async move { groups::create(&self.deps, request).await }.await)
    }

    async fn describe_thing_group(
        &self,
        request: Request<pb::DescribeThingGroupRequest>,
    ) -> Result<Response<pb::ThingGroup>, Status> {
        groups::describe(&self.deps, request).await
    }

    async fn list_thing_groups(
        &self,
        request: Request<pb::ListThingGroupsRequest>,
    ) -> Result<Response<pb::ListThingGroupsResponse>, Status> {
        groups::list(&self.deps, request).await
    }

    async fn delete_thing_group(
        &self,
        request: Request<pb::DeleteThingGroupRequest>,
    ) -> Result<Response<pb::DeleteThingGroupResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::DeleteThingGroup,
            format!("thinggroup/{}", request.get_ref().thing_group_name),
        );
        audit.finish(async move { groups::delete(&self.deps, request).await }.await)
    }

    async fn add_thing_to_thing_group(
        &self,
        request: Request<pb::AddThingToThingGroupRequest>,
    ) -> Result<Response<pb::AddThingToThingGroupResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::AddThingToThingGroup,
            format!(
                "thinggroup/{}/thing/{}",
                request.get_ref().thing_group_name,
                request.get_ref().thing_name
            ),
        );
        audit.finish(async move { groups::add_thing(&self.deps, request).await }.await)
    }

    async fn remove_thing_from_thing_group(
        &self,
        request: Request<pb::RemoveThingFromThingGroupRequest>,
    ) -> Result<Response<pb::RemoveThingFromThingGroupResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::RemoveThingFromThingGroup,
            format!(
                "thinggroup/{}/thing/{}",
                request.get_ref().thing_group_name,
                request.get_ref().thing_name
            ),
        );
        audit.finish(async move { groups::remove_thing(&self.deps, request).await }.await)
    }

    async fn list_things_in_thing_group(
        &self,
        request: Request<pb::ListThingsInThingGroupRequest>,
    ) -> Result<Response<pb::ListThingsResponse>, Status> {
        groups::list_things(&self.deps, request).await
    }

    type WatchConnectivityStream = ConnectivityStream;

    async fn watch_connectivity(
        &self,
        request: Request<pb::WatchConnectivityRequest>,
    ) -> Result<Response<Self::WatchConnectivityStream>, Status> {
        connectivity::watch(&self.deps, request).await
    }

    async fn get_connectivity(
        &self,
        request: Request<pb::GetConnectivityRequest>,
    ) -> Result<Response<pb::Connectivity>, Status> {
        connectivity::get(&self.deps, request).await
    }
}

/// The `ThingRegistry` gRPC service.
pub(crate) fn server(
    deps: Arc<RegistryDeps>,
) -> pb::thing_registry_server::ThingRegistryServer<ThingService> {
    pb::thing_registry_server::ThingRegistryServer::new(ThingService::new(deps))
}
