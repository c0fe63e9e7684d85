//! The command registry: the control plane's gRPC API. Commands are created, updated and
//! deleted through the owner of the command's shard (event-sourced like executions); reads
//! of commands and executions are served from the read model; WatchCommandExecutions streams
//! the projector's status-change notifications. The thing registry (`things.rs`) works the
//! same way for things, and for device credentials (`credentials.rs`).

mod cas;
mod connectivity;
mod credentials;
mod groups;
pub mod rollouts;
mod things;

pub use things::ThingService;

use std::pin::Pin;
use std::sync::Arc;

use fleetcmd_contracts::auth::Auth;
use fleetcmd_contracts::convert::{
    Arns, command_summary_to_pb, command_to_pb, create_command_response, execution_summary_to_pb,
    execution_to_pb, optional_target, port_status, rejection_status, results_to_pb, status_from_pb,
    status_to_pb, timestamp_from_ms, update_command_response, validation_status,
};
use fleetcmd_contracts::pb;
use fleetcmd_domain::command::{CommandInput, CreateCommand, UpdateCommand};
use fleetcmd_domain::execution::ExecutionInput;
use fleetcmd_domain::ids::{CommandId, ExecutionId};
use fleetcmd_domain::model::{Command, Execution};
use fleetcmd_domain::policy::Action;
use fleetcmd_domain::ports::{Bus, CommandQuery, ExecutionQuery, ReadModel};
use fleetcmd_domain::protocol::{
    EVENTS_ALL, ExecutionChanged, LogPosition, ShardReply, ShardRequest, events_subject,
};
use fleetcmd_service_kit::{
    ProjectionWatch, ShardClient, await_projection, call_status, unexpected,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// Whoever serves devices and must hear of a change of trust once it is durable: the
/// embedded broker's TLS listener in `fleetcmd serve`. (A cluster's external broker reads the
/// CRL and the registered CAs from the API instead.)
pub trait DeviceTrust: Send + Sync {
    /// A certificate's revocation is durable: refuse it and close its connections.
    fn certificate_revoked(&self, certificate_id: &str);
    /// A CA's registration is durable: trust the device certificates it signs.
    fn ca_registered(&self, ca: &fleetcmd_identity::TrustedCa);
}

/// What the registry needs.
pub struct RegistryDeps {
    pub read_model: Arc<dyn ReadModel>,
    pub bus: Arc<dyn Bus>,
    pub shards: ShardClient,
    pub projection: Arc<ProjectionWatch>,
    pub auth: Auth,
    pub arns: Arns,
    /// The device CA that issues and verifies thing certificates (`None`: this deployment
    /// has none, and the certificate calls say so).
    pub ca: Option<Arc<fleetcmd_identity::Ca>>,
    /// Told of revocations and registered CAs once durable, so whoever serves devices (the
    /// embedded broker) drops a revoked certificate's connections and trusts a new CA.
    pub device_trust: Option<Arc<dyn DeviceTrust>>,
    /// Device presence, where the devices' broker reports it (`fleetcmd serve`); `None`
    /// when it does not (an external broker), and the connectivity calls say so.
    pub presence: Option<Arc<fleetcmd_service_kit::presence::Presence>>,
    /// Turns true when the process shuts down: open Watch streams end with UNAVAILABLE, so
    /// a graceful shutdown does not wait on them.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

pub struct RegistryService {
    deps: Arc<RegistryDeps>,
}

/// The `CommandRegistry` and `ThingRegistry` gRPC services, sharing `deps`, for a
/// `fleetcmd_service_kit::grpc::GrpcServer`.
pub fn grpc(
    deps: RegistryDeps,
) -> (
    pb::command_registry_server::CommandRegistryServer<RegistryService>,
    pb::thing_registry_server::ThingRegistryServer<ThingService>,
    pb::rollouts_server::RolloutsServer<rollouts::RolloutService>,
) {
    let deps = Arc::new(deps);
    (
        pb::command_registry_server::CommandRegistryServer::new(RegistryService {
            deps: deps.clone(),
        }),
        things::server(deps.clone()),
        rollouts::server(deps),
    )
}

/// Serves the registry API (commands and things) on `listener` until `shutdown` turns true.
pub async fn run(
    deps: RegistryDeps,
    listener: tokio::net::TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), fleetcmd_service_kit::grpc::ServeError> {
    let (commands, things, rollouts) = grpc(deps);
    fleetcmd_service_kit::grpc::GrpcServer::new()?
        .with(commands)
        .with(things)
        .with(rollouts)
        .serve(listener, shutdown)
        .await
}

impl RegistryService {
    pub fn new(deps: RegistryDeps) -> Self {
        Self {
            deps: Arc::new(deps),
        }
    }

    async fn command_call(
        &self,
        command_id: &CommandId,
        input: CommandInput,
    ) -> Result<(Option<Box<Command>>, bool, Option<LogPosition>), Status> {
        let request = ShardRequest::Command {
            command_id: command_id.as_str().to_string(),
            input,
        };
        match self.deps.shards.call(&request).await.map_err(call_status)? {
            ShardReply::Command {
                command,
                deleted,
                position,
            } => {
                await_projection(&self.deps.projection, position).await;
                Ok((command, deleted, position))
            }
            ShardReply::Rejected(r) => Err(rejection_status(r)),
            other => Err(unexpected(&other)),
        }
    }

    /// Loads an execution, checking the optional target given by the caller and the caller's
    /// right to `action` on it. A caller whose grants are narrower than `*` gets
    /// PERMISSION_DENIED rather than NOT_FOUND for an unknown id, so ids cannot be probed.
    async fn authorized_execution(
        &self,
        caller: &fleetcmd_contracts::auth::Caller<'_>,
        action: Action,
        id: &str,
        target: Option<pb::Target>,
    ) -> Result<Execution, Status> {
        match self.load_execution(id, target).await {
            Ok(e) => {
                caller.authorize(action, Some(e.command_id.as_str()), Some(&e.target))?;
                Ok(e)
            }
            Err(status)
                if status.code() == tonic::Code::NotFound && !caller.allows(action, None, None) =>
            {
                Err(Status::permission_denied(format!(
                    "the caller may not {} on execution {id}",
                    action.name()
                )))
            }
            Err(status) => Err(status),
        }
    }

    /// Loads an execution, checking the optional target given by the caller.
    async fn load_execution(
        &self,
        id: &str,
        target: Option<pb::Target>,
    ) -> Result<Execution, Status> {
        let execution_id = ExecutionId::parse(id).map_err(validation_status)?;
        let target = optional_target(target).map_err(validation_status)?;
        self.deps
            .read_model
            .get_execution(&execution_id)
            .await
            .map_err(port_status)?
            .filter(|e| target.as_ref().is_none_or(|t| *t == e.target))
            .ok_or_else(|| match &target {
                Some(t) => {
                    Status::not_found(format!("execution {execution_id} not found for target {t}"))
                }
                None => Status::not_found(format!("execution {execution_id} not found")),
            })
    }
}

impl RegistryService {
    /// The command id a request names, once the caller is known to be allowed `action` on it.
    fn authorized_command(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        action: Action,
        raw_id: &str,
    ) -> Result<CommandId, Status> {
        let id = command_id(raw_id)?;
        self.deps
            .auth
            .check(metadata, action, Some(id.as_str()), None)?;
        Ok(id)
    }
}

fn command_id(id: &str) -> Result<CommandId, Status> {
    CommandId::parse(id).map_err(validation_status)
}

/// A read-model listing error: a bad page token is the caller's mistake.
pub(crate) fn list_status(e: fleetcmd_domain::ports::PortError) -> Status {
    match &e {
        fleetcmd_domain::ports::PortError::InvalidPageToken(_) => {
            Status::invalid_argument(e.to_string())
        }
        _ => port_status(e),
    }
}

fn changed_to_pb(c: ExecutionChanged) -> pb::CommandExecutionEvent {
    pb::CommandExecutionEvent {
        execution_id: c.execution_id.into_string(),
        command_id: c.command_id.into_string(),
        target: Some(c.target.into()),
        status: status_to_pb(c.status),
        status_reason: c.status_reason.map(Into::into),
        result: results_to_pb(c.result),
        timestamp: Some(timestamp_from_ms(c.timestamp)),
        terminal: c.terminal,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::CommandExecutionEvent, Status>> + Send>>;

/// How many events a Watch stream may fall behind before it is ended (the bus must never
/// wait on a slow watcher).
const WATCH_BUFFER: usize = 4096;

#[tonic::async_trait]
impl pb::command_registry_server::CommandRegistry for RegistryService {
    async fn create_command(
        &self,
        request: Request<pb::CreateCommandRequest>,
    ) -> Result<Response<pb::CreateCommandResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::CreateCommand,
            format!("command/{}", request.get_ref().command_id),
        );
        audit.finish(
            async move {
                let id = self.authorized_command(
                    request.metadata(),
                    Action::CreateCommand,
                    &request.get_ref().command_id,
                )?;
                let create =
                    CreateCommand::try_from(request.into_inner()).map_err(validation_status)?;
                fleetcmd_domain::command::validate_create(&create, 0).map_err(validation_status)?;
                self.command_call(&id, CommandInput::Create(Box::new(create)))
                    .await?;
                Ok(Response::new(create_command_response(&id, &self.deps.arns)))
            }
            .await,
        )
    }

    async fn get_command(
        &self,
        request: Request<pb::GetCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let id = self.authorized_command(
            request.metadata(),
            Action::GetCommand,
            &request.get_ref().command_id,
        )?;
        let command = self
            .deps
            .read_model
            .get_command(&id)
            .await
            .map_err(port_status)?
            .ok_or_else(|| Status::not_found(format!("command {id} not found")))?;
        Ok(Response::new(command_to_pb(command, &self.deps.arns)))
    }

    async fn list_commands(
        &self,
        request: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        self.deps
            .auth
            .check(request.metadata(), Action::ListCommands, None, None)?;
        let query = CommandQuery::try_from(request.into_inner()).map_err(validation_status)?;
        let page = self
            .deps
            .read_model
            .list_commands(&query)
            .await
            .map_err(list_status)?;
        Ok(Response::new(pb::ListCommandsResponse {
            commands: page
                .items
                .into_iter()
                .map(|c| command_summary_to_pb(c, &self.deps.arns))
                .collect(),
            next_token: page.next_token.unwrap_or_default(),
        }))
    }

    async fn update_command(
        &self,
        request: Request<pb::UpdateCommandRequest>,
    ) -> Result<Response<pb::UpdateCommandResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::UpdateCommand,
            format!("command/{}", request.get_ref().command_id),
        );
        audit.finish(
            async move {
                let id = self.authorized_command(
                    request.metadata(),
                    Action::UpdateCommand,
                    &request.get_ref().command_id,
                )?;
                let update = UpdateCommand::from(request.into_inner());
                let (command, _, _) = self.command_call(&id, CommandInput::Update(update)).await?;
                let command =
                    command.ok_or_else(|| Status::not_found(format!("command {id} not found")))?;
                Ok(Response::new(update_command_response(*command)))
            }
            .await,
        )
    }

    async fn delete_command(
        &self,
        request: Request<pb::DeleteCommandRequest>,
    ) -> Result<Response<pb::DeleteCommandResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::DeleteCommand,
            format!("command/{}", request.get_ref().command_id),
        );
        audit.finish(
            async move {
                let id = self.authorized_command(
                    request.metadata(),
                    Action::DeleteCommand,
                    &request.get_ref().command_id,
                )?;
                let (command, deleted, _) = self.command_call(&id, CommandInput::Delete).await?;
                Ok(Response::new(if deleted {
                    pb::DeleteCommandResponse {
                        status_code: 204,
                        deletion_scheduled_at: None,
                    }
                } else {
                    pb::DeleteCommandResponse {
                        status_code: 202,
                        deletion_scheduled_at: command
                            .and_then(|c| c.delete_at)
                            .map(timestamp_from_ms),
                    }
                }))
            }
            .await,
        )
    }

    async fn get_command_execution(
        &self,
        request: Request<pb::GetCommandExecutionRequest>,
    ) -> Result<Response<pb::CommandExecution>, Status> {
        let caller = self.deps.auth.authenticate(request.metadata())?;
        let req = request.get_ref();
        let execution = self
            .authorized_execution(
                &caller,
                Action::GetCommandExecution,
                &req.execution_id,
                req.target.clone(),
            )
            .await?;
        Ok(Response::new(execution_to_pb(
            execution,
            &self.deps.arns,
            req.include_result,
        )))
    }

    async fn list_command_executions(
        &self,
        request: Request<pb::ListCommandExecutionsRequest>,
    ) -> Result<Response<pb::ListCommandExecutionsResponse>, Status> {
        let caller = self.deps.auth.authenticate(request.metadata())?;
        let query = ExecutionQuery::try_from(request.into_inner()).map_err(validation_status)?;
        caller.authorize(
            Action::ListCommandExecutions,
            query.command_id.as_ref().map(CommandId::as_str),
            query.target.as_ref(),
        )?;
        let page = self
            .deps
            .read_model
            .list_executions(&query)
            .await
            .map_err(list_status)?;
        Ok(Response::new(pb::ListCommandExecutionsResponse {
            command_executions: page
                .items
                .into_iter()
                .map(|e| execution_summary_to_pb(e, &self.deps.arns))
                .collect(),
            next_token: page.next_token.unwrap_or_default(),
        }))
    }

    async fn delete_command_execution(
        &self,
        request: Request<pb::DeleteCommandExecutionRequest>,
    ) -> Result<Response<pb::DeleteCommandExecutionResponse>, Status> {
        let audit = self.deps.auth.audit(
            request.metadata(),
            Action::DeleteCommandExecution,
            format!("execution/{}", request.get_ref().execution_id),
        );
        audit.finish(
            async move {
                let caller = self.deps.auth.authenticate(request.metadata())?;
                let req = request.get_ref();
                let execution = self
                    .authorized_execution(
                        &caller,
                        Action::DeleteCommandExecution,
                        &req.execution_id,
                        req.target.clone(),
                    )
                    .await?;
                let request = ShardRequest::Execution {
                    execution_id: execution.execution_id.clone(),
                    target: execution.target.clone(),
                    input: ExecutionInput::Delete,
                };
                match self.deps.shards.call(&request).await.map_err(call_status)? {
                    ShardReply::Execution { position, .. } => {
                        await_projection(&self.deps.projection, position).await;
                        Ok(Response::new(pb::DeleteCommandExecutionResponse {}))
                    }
                    ShardReply::Rejected(r) => Err(rejection_status(r)),
                    other => Err(unexpected(&other)),
                }
            }
            .await,
        )
    }

    type WatchCommandExecutionsStream = WatchStream;

    async fn watch_command_executions(
        &self,
        request: Request<pb::WatchCommandExecutionsRequest>,
    ) -> Result<Response<Self::WatchCommandExecutionsStream>, Status> {
        let caller = self.deps.auth.authenticate(request.metadata())?;
        let req = request.into_inner();
        let command = if req.command_id.is_empty() {
            None
        } else {
            Some(command_id(&req.command_id)?)
        };
        let target = optional_target(req.target).map_err(validation_status)?;
        let statuses = req
            .statuses
            .iter()
            .enumerate()
            .map(|(i, s)| status_from_pb(&format!("statuses[{i}]"), *s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(validation_status)?;
        caller.authorize(
            Action::WatchCommandExecutions,
            command.as_ref().map(CommandId::as_str),
            target.as_ref(),
        )?;
        let subject = command
            .as_ref()
            .map_or_else(|| EVENTS_ALL.to_string(), events_subject);
        let mut sub = self
            .deps
            .bus
            .subscribe(&subject, None)
            .await
            .map_err(port_status)?;
        let mut shutdown = self.deps.shutdown.clone();
        let (tx, rx) = mpsc::channel::<Result<pb::CommandExecutionEvent, Status>>(WATCH_BUFFER);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = sub.next() => m,
                    _ = tx.closed() => return,
                    _ = shutdown.wait_for(|s| *s) => None,
                };
                let Some(msg) = msg else {
                    let _ = tx.try_send(Err(Status::unavailable(
                        "the server is shutting down; reconnect",
                    )));
                    return;
                };
                let changed = match fleetcmd_contracts::codec::decode_changed(&msg.payload) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "malformed status notification");
                        continue;
                    }
                };
                if target.as_ref().is_some_and(|t| *t != changed.target)
                    || (!statuses.is_empty() && !statuses.contains(&changed.status))
                {
                    continue;
                }
                let lag = "events behind and was disconnected; reconnect and list to resynchronise";
                if !forward(&tx, changed_to_pb(changed), WATCH_BUFFER, lag).await {
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Hands `item` to a watcher's stream of `buffer` items; false once the stream is over (the
/// watcher left, or fell a whole buffer behind and was told so, `lag` saying how: never stall
/// the source for one slow reader).
pub(crate) async fn forward<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    item: T,
    buffer: usize,
    lag: &str,
) -> bool {
    match tx.try_send(Ok(item)) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            let message = format!("the watcher fell more than {buffer} {lag}");
            let _ = tx.send(Err(Status::resource_exhausted(message))).await;
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}
