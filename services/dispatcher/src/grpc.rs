//! The `CommandDispatcher` gRPC service: start and cancel, routed to the shard owner of the
//! target, answered once the owner has appended and the projector has made it readable.

use std::sync::Arc;

use fleetcmd_contracts::auth::Auth;
use fleetcmd_contracts::convert::{
    optional_status_reason, optional_target, rejection_status, status_to_pb, validation_status,
};
use fleetcmd_contracts::pb;
use fleetcmd_domain::error::Rejection;
use fleetcmd_domain::execution::ExecutionInput;
use fleetcmd_domain::ids::ExecutionId;
use fleetcmd_domain::policy::Action;
use fleetcmd_domain::ports::ReadModel;
use fleetcmd_domain::protocol::{ShardReply, ShardRequest};
use fleetcmd_domain::start::StartRequest;
use tonic::{Request, Response, Status};

use fleetcmd_service_kit::{
    ProjectionWatch, ShardClient, await_projection, call_status, unexpected,
};

/// What the dispatcher's API needs.
pub struct DispatcherDeps {
    pub read_model: Arc<dyn ReadModel>,
    pub shards: ShardClient,
    pub projection: Arc<ProjectionWatch>,
    pub auth: Auth,
}

pub struct DispatcherService {
    deps: Arc<DispatcherDeps>,
}

/// The `CommandDispatcher` gRPC service, for a `fleetcmd_service_kit::grpc::GrpcServer`.
pub fn service(
    deps: DispatcherDeps,
) -> pb::command_dispatcher_server::CommandDispatcherServer<DispatcherService> {
    pb::command_dispatcher_server::CommandDispatcherServer::new(DispatcherService::new(deps))
}

impl DispatcherService {
    pub fn new(deps: DispatcherDeps) -> Self {
        Self {
            deps: Arc::new(deps),
        }
    }
}

/// The target an audit record names, as policies write it.
fn target_resource(target: &Option<pb::Target>) -> String {
    match optional_target(target.clone()) {
        Ok(Some(t)) => t.resource_name(),
        _ => "-".to_owned(),
    }
}

fn rejected(r: Rejection) -> Status {
    rejection_status(r)
}

#[tonic::async_trait]
impl pb::command_dispatcher_server::CommandDispatcher for DispatcherService {
    async fn start_command_execution(
        &self,
        request: Request<pb::StartCommandExecutionRequest>,
    ) -> Result<Response<pb::StartCommandExecutionResponse>, Status> {
        let (audit, caller) = self.deps.auth.audit_caller(
            request.metadata(),
            Action::StartCommandExecution,
            format!(
                "command/{} on {}",
                request.get_ref().command_id,
                target_resource(&request.get_ref().target)
            ),
        );
        audit.finish(
            async move {
                let caller = caller?;
                let req =
                    StartRequest::try_from(request.get_ref().clone()).map_err(validation_status)?;
                caller.authorize(
                    Action::StartCommandExecution,
                    Some(req.command_id.as_str()),
                    Some(&req.target),
                )?;
                fleetcmd_domain::start::validate_request(&req).map_err(validation_status)?;
                let reply = self
                    .deps
                    .shards
                    .call(&ShardRequest::Start(req))
                    .await
                    .map_err(call_status)?;
                match reply {
                    ShardReply::Started {
                        execution_id,
                        position,
                        ..
                    } => {
                        await_projection(&self.deps.projection, position).await;
                        Ok(Response::new(pb::StartCommandExecutionResponse {
                            execution_id: execution_id.into_string(),
                        }))
                    }
                    ShardReply::Rejected(r) => Err(rejected(r)),
                    other => Err(unexpected(&other)),
                }
            }
            .await,
        )
    }

    async fn cancel_command_execution(
        &self,
        request: Request<pb::CancelCommandExecutionRequest>,
    ) -> Result<Response<pb::CancelCommandExecutionResponse>, Status> {
        let (audit, caller) = self.deps.auth.audit_caller(
            request.metadata(),
            Action::CancelCommandExecution,
            format!("execution/{}", request.get_ref().execution_id),
        );
        audit.finish(
            async move {
                let caller = caller?;
                let req = request.get_ref().clone();
                let execution_id =
                    ExecutionId::parse(req.execution_id).map_err(validation_status)?;
                let target = optional_target(req.target).map_err(validation_status)?;
                let reason =
                    optional_status_reason(req.status_reason).map_err(validation_status)?;
                if let Some(r) = &reason {
                    fleetcmd_domain::device::validate_status_reason("status_reason", r).map_err(
                        |mut e| {
                            // The device rules name the MQTT body's camelCase keys; the API's fields are snake_case.
                            e.field = e
                                .field
                                .replace("reasonCode", "reason_code")
                                .replace("reasonDescription", "reason_description");
                            validation_status(e)
                        },
                    )?;
                }
                let found = self
                    .deps
                    .read_model
                    .get_execution(&execution_id)
                    .await
                    .map_err(fleetcmd_contracts::convert::port_status)?
                    .filter(|e| target.as_ref().is_none_or(|t| *t == e.target));
                let Some(execution) = found else {
                    // Narrow callers get PERMISSION_DENIED for unknown ids too, so ids cannot be probed.
                    if !caller.allows(Action::CancelCommandExecution, None, None) {
                        return Err(Status::permission_denied(format!(
                            "the caller may not CancelCommandExecution on execution {execution_id}"
                        )));
                    }
                    return Err(Status::not_found(format!(
                        "execution {execution_id} not found"
                    )));
                };
                caller.authorize(
                    Action::CancelCommandExecution,
                    Some(execution.command_id.as_str()),
                    Some(&execution.target),
                )?;
                let request = ShardRequest::Execution {
                    execution_id: execution_id.clone(),
                    target: execution.target.clone(),
                    input: ExecutionInput::Cancel {
                        status_reason: reason,
                    },
                };
                match self.deps.shards.call(&request).await.map_err(call_status)? {
                    ShardReply::Execution {
                        execution,
                        position,
                    } => {
                        await_projection(&self.deps.projection, position).await;
                        Ok(Response::new(pb::CancelCommandExecutionResponse {
                            execution_id: execution_id.into_string(),
                            status: status_to_pb(execution.status),
                        }))
                    }
                    ShardReply::Rejected(r) => Err(rejected(r)),
                    other => Err(unexpected(&other)),
                }
            }
            .await,
        )
    }
}
