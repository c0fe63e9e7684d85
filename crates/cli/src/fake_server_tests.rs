//! The client verbs against an in-process gRPC server on 127.0.0.1:0 that fakes the API:
//! real HTTP/2, real interceptor, real streams. (End-to-end tests against `fleetcmd serve`
//! live with the server.)

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use fleetcmd_contracts::pb;
use futures::Stream;
use pb::command_dispatcher_server::{CommandDispatcher, CommandDispatcherServer};
use pb::command_registry_server::{CommandRegistry, CommandRegistryServer};
use prost_types::Timestamp;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use super::command::{self, CommandCmd};
use super::exec::{self, ExecCmd};
use super::{Api, Output, RetryPolicy};

const TOKEN: &str = "s3cret";

/// The service handle (the state is shared with the test).
#[derive(Clone)]
struct Svc(Arc<Fake>);

impl std::ops::Deref for Svc {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.0
    }
}

#[derive(Default)]
struct Fake {
    /// GetCommandExecution answers UNAVAILABLE this many times first.
    unavailable_first: AtomicU32,
    execution_calls: AtomicU32,
}

/// The request's message, once its bearer token is checked as the real interceptor would.
fn authed<T>(request: Request<T>) -> Result<T, Status> {
    match request.metadata().get("authorization") {
        Some(v) if v == format!("Bearer {TOKEN}").as_str() => Ok(request.into_inner()),
        Some(_) => Err(Status::permission_denied("wrong token")),
        None => Err(Status::unauthenticated("missing bearer token")),
    }
}

fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

fn summary(id: &str) -> pb::CommandSummary {
    pb::CommandSummary {
        command_id: id.to_string(),
        display_name: format!("{id} name"),
        created_at: ts(1_730_430_000),
        ..Default::default()
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CommandExecutionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl CommandRegistry for Svc {
    type WatchCommandExecutionsStream = EventStream;

    async fn create_command(
        &self,
        request: Request<pb::CreateCommandRequest>,
    ) -> Result<Response<pb::CreateCommandResponse>, Status> {
        let r = authed(request)?;
        Ok(Response::new(pb::CreateCommandResponse {
            command_arn: format!("arn:fleetcmd:command/{}", r.command_id),
            command_id: r.command_id,
        }))
    }

    async fn get_command(
        &self,
        request: Request<pb::GetCommandRequest>,
    ) -> Result<Response<pb::Command>, Status> {
        let r = authed(request)?;
        Err(Status::not_found(format!(
            "command {} not found",
            r.command_id
        )))
    }

    /// Three commands, two per page.
    async fn list_commands(
        &self,
        request: Request<pb::ListCommandsRequest>,
    ) -> Result<Response<pb::ListCommandsResponse>, Status> {
        let r = authed(request)?;
        let page = match r.next_token.as_str() {
            "" => pb::ListCommandsResponse {
                commands: vec![summary("a"), summary("b")],
                next_token: "p2".into(),
            },
            "p2" => pb::ListCommandsResponse {
                commands: vec![summary("c")],
                next_token: String::new(),
            },
            other => return Err(Status::invalid_argument(format!("bad next_token {other}"))),
        };
        Ok(Response::new(page))
    }

    async fn update_command(
        &self,
        _request: Request<pb::UpdateCommandRequest>,
    ) -> Result<Response<pb::UpdateCommandResponse>, Status> {
        Err(Status::unimplemented("update"))
    }

    async fn delete_command(
        &self,
        request: Request<pb::DeleteCommandRequest>,
    ) -> Result<Response<pb::DeleteCommandResponse>, Status> {
        authed(request)?;
        Ok(Response::new(pb::DeleteCommandResponse {
            status_code: 202,
            deletion_scheduled_at: ts(1_730_473_200),
        }))
    }

    async fn get_command_execution(
        &self,
        request: Request<pb::GetCommandExecutionRequest>,
    ) -> Result<Response<pb::CommandExecution>, Status> {
        let r = authed(request)?;
        self.execution_calls.fetch_add(1, Ordering::SeqCst);
        if self
            .unavailable_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("shard 3 has no owner"));
        }
        Ok(Response::new(pb::CommandExecution {
            execution_id: r.execution_id,
            command_id: "reboot".into(),
            status: pb::ExecutionStatus::Succeeded as i32,
            terminal: true,
            ..Default::default()
        }))
    }

    async fn delete_command_execution(
        &self,
        _request: Request<pb::DeleteCommandExecutionRequest>,
    ) -> Result<Response<pb::DeleteCommandExecutionResponse>, Status> {
        Err(Status::failed_precondition(
            "execution e-1 is IN_PROGRESS; only terminal executions can be deleted",
        ))
    }

    async fn watch_command_executions(
        &self,
        request: Request<pb::WatchCommandExecutionsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let command_id = authed(request)?.command_id;
        let events = [pb::ExecutionStatus::Created, pb::ExecutionStatus::Succeeded].map(|s| {
            Ok(pb::CommandExecutionEvent {
                execution_id: "e-1".into(),
                command_id: command_id.clone(),
                status: s as i32,
                terminal: s == pb::ExecutionStatus::Succeeded,
                timestamp: ts(1_730_430_000),
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(events))))
    }

    async fn list_command_executions(
        &self,
        _request: Request<pb::ListCommandExecutionsRequest>,
    ) -> Result<Response<pb::ListCommandExecutionsResponse>, Status> {
        Err(Status::unimplemented("list executions"))
    }
}

#[tonic::async_trait]
impl CommandDispatcher for Svc {
    /// Echoes the client token as the execution id, so the test sees what was sent.
    async fn start_command_execution(
        &self,
        request: Request<pb::StartCommandExecutionRequest>,
    ) -> Result<Response<pb::StartCommandExecutionResponse>, Status> {
        let r = authed(request)?;
        if r.execution_timeout_seconds > 43_200 {
            return Err(Status::invalid_argument(format!(
                "invalid execution_timeout_seconds: must be between 1 and 43200 seconds, got {}",
                r.execution_timeout_seconds
            )));
        }
        Ok(Response::new(pb::StartCommandExecutionResponse {
            execution_id: format!("{}:{}", r.command_id, r.client_token),
        }))
    }

    async fn cancel_command_execution(
        &self,
        request: Request<pb::CancelCommandExecutionRequest>,
    ) -> Result<Response<pb::CancelCommandExecutionResponse>, Status> {
        let execution_id = authed(request)?.execution_id;
        Ok(Response::new(pb::CancelCommandExecutionResponse {
            execution_id,
            status: pb::ExecutionStatus::Canceled as i32,
        }))
    }
}

/// Serves the fake on an ephemeral port; returns its endpoint.
async fn serve(fake: Arc<Fake>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CommandRegistryServer::new(Svc(fake.clone())))
            .add_service(CommandDispatcherServer::new(Svc(fake)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: std::time::Duration::from_millis(5),
        max_backoff: std::time::Duration::from_millis(20),
    }
}

/// The verb families these tests drive, nested as in the binary.
#[derive(clap::Subcommand)]
enum Verb {
    #[command(subcommand)]
    Command(CommandCmd),
    #[command(subcommand)]
    Exec(ExecCmd),
}

/// Runs `fleetcmd <args>` against `api`; returns what it printed.
async fn run(api: &Api, args: &[&str], output: Output) -> anyhow::Result<String> {
    let mut out = Vec::new();
    match super::parse_verb("fleetcmd", args.iter().copied())? {
        Verb::Command(cmd) => command::run(api, cmd, output, &mut out).await?,
        Verb::Exec(cmd) => exec::run(api, cmd, output, &mut out).await?,
    }
    Ok(String::from_utf8(out)?)
}

async fn run_command(api: &Api, args: &[&str], output: Output) -> anyhow::Result<String> {
    run(api, &[&["command"], args].concat(), output).await
}

async fn run_exec(api: &Api, args: &[&str], output: Output) -> anyhow::Result<String> {
    run(api, &[&["exec"], args].concat(), output).await
}

#[tokio::test]
async fn the_bearer_token_reaches_the_server() {
    let endpoint = serve(Arc::new(Fake::default())).await;
    let api = Api::connect_lazy(&endpoint, Some(TOKEN)).unwrap();
    let out = run_command(
        &api,
        &["create", "--id", "reboot", "--payload", "x"],
        Output::Text,
    )
    .await
    .unwrap();
    assert_eq!(out, "created reboot (arn:fleetcmd:command/reboot)\n");

    let anonymous = Api::connect_lazy(&endpoint, None).unwrap();
    let err = run_command(&anonymous, &["delete", "reboot"], Output::Text)
        .await
        .unwrap_err();
    let status = err.downcast_ref::<Status>().unwrap();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        super::describe_status(status),
        "UNAUTHENTICATED: missing bearer token"
    );
    let wrong = Api::connect_lazy(&endpoint, Some("nope")).unwrap();
    let err = command::delete(&wrong, "reboot").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn list_all_follows_next_token_and_prints_one_table() {
    let endpoint = serve(Arc::new(Fake::default())).await;
    let api = Api::connect_lazy(&endpoint, Some(TOKEN)).unwrap();

    let one_page = run_command(&api, &["list"], Output::Text).await.unwrap();
    let lines: Vec<&str> = one_page.lines().collect();
    assert_eq!(lines.len(), 4, "{one_page}");
    assert!(lines[0].starts_with("COMMAND_ID  DISPLAY_NAME  DEPRECATED"));
    assert!(
        lines[1].starts_with("a           a name        false"),
        "{one_page}"
    );
    assert_eq!(lines[3], "next token: p2");

    let all = run_command(&api, &["list", "--all"], Output::Text)
        .await
        .unwrap();
    assert_eq!(all.lines().count(), 4, "header + 3 rows, no token: {all}");
    assert!(all.lines().nth(3).unwrap().starts_with("c "));

    let json = run_command(&api, &["list", "--all"], Output::Json)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["commands"].as_array().unwrap().len(), 3);
    assert_eq!(v["commands"][2]["command_id"], "c");
    assert_eq!(v["commands"][0]["created_at"], "2024-11-01T03:00:00Z");
    assert_eq!(v["next_token"], "");
}

#[tokio::test]
async fn unavailable_is_retried_then_succeeds() {
    let fake = Arc::new(Fake::default());
    fake.unavailable_first.store(2, Ordering::SeqCst);
    let endpoint = serve(fake.clone()).await;
    let api = Api::connect_lazy(&endpoint, Some(TOKEN))
        .unwrap()
        .with_retry(fast_retry());
    let out = run_exec(&api, &["get", "e-1"], Output::Text).await.unwrap();
    assert!(
        out.contains("status                     SUCCEEDED (terminal)"),
        "{out}"
    );
    assert_eq!(fake.execution_calls.load(Ordering::SeqCst), 3);

    fake.unavailable_first.store(10, Ordering::SeqCst);
    fake.execution_calls.store(0, Ordering::SeqCst);
    let err = run_exec(&api, &["get", "e-1"], Output::Text)
        .await
        .unwrap_err();
    assert_eq!(
        super::describe_status(err.downcast_ref::<Status>().unwrap()),
        "UNAVAILABLE: shard 3 has no owner"
    );
    assert_eq!(
        fake.execution_calls.load(Ordering::SeqCst),
        4,
        "max_attempts"
    );
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable() {
    // Bind and drop to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let api = Api::connect_lazy(&format!("127.0.0.1:{port}"), None)
        .unwrap()
        .with_retry(fast_retry());
    let err = command::get(&api, "reboot").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        super::describe_status(&err).starts_with("UNAVAILABLE: "),
        "{}",
        super::describe_status(&err)
    );
}

#[tokio::test]
async fn exec_verbs_print_ids_statuses_and_events() {
    let endpoint = serve(Arc::new(Fake::default())).await;
    let api = Api::connect_lazy(&endpoint, Some(TOKEN)).unwrap();

    let start = |tail: &[&'static str]| {
        let mut args = vec!["start", "--command", "reboot", "--thing", "lamp"];
        args.extend_from_slice(tail);
        args
    };
    let token = start(&["--client-token", "t-1"]);
    let out = run_exec(&api, &token, Output::Text).await.unwrap();
    assert_eq!(out, "reboot:t-1\n", "just the id");
    let out = run_exec(&api, &token, Output::Json).await.unwrap();
    assert_eq!(out, "{\"execution_id\":\"reboot:t-1\"}\n");
    let err = run_exec(&api, &start(&["--timeout", "50000"]), Output::Text)
        .await
        .unwrap_err();
    assert_eq!(
        super::describe_status(err.downcast_ref::<Status>().unwrap()),
        "INVALID_ARGUMENT: invalid execution_timeout_seconds: must be between 1 and 43200 \
         seconds, got 50000"
    );

    let out = run_exec(&api, &["cancel", "e-9"], Output::Text)
        .await
        .unwrap();
    assert_eq!(out, "e-9  CANCELED\n");

    let err = run_exec(&api, &["delete", "e-1"], Output::Text)
        .await
        .unwrap_err();
    assert_eq!(
        err.downcast_ref::<Status>().unwrap().code(),
        tonic::Code::FailedPrecondition
    );

    let out = run_exec(&api, &["watch", "--command", "reboot"], Output::Text)
        .await
        .unwrap();
    assert_eq!(
        out,
        "2024-11-01T03:00:00Z  e-1  reboot  -  CREATED\n\
         2024-11-01T03:00:00Z  e-1  reboot  -  SUCCEEDED (terminal)\n"
    );
    let out = run_exec(&api, &["watch"], Output::Json).await.unwrap();
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "one JSON object per line");
    assert_eq!(lines[1]["status"], "SUCCEEDED");
    assert_eq!(lines[1]["terminal"], true);

    let out = run_command(&api, &["delete", "reboot"], Output::Text)
        .await
        .unwrap();
    assert_eq!(out, "deletion scheduled at 2024-11-01T15:00:00Z\n");
}
