//! `fleetcmd exec start|get|list|cancel|delete|watch`: command executions.

use std::io::Write;

use fleetcmd_contracts::pb;
use prost_types::Timestamp;
use tonic::Status;

use super::command::print_json;
use super::render;
use super::{Api, Output, RequiredTarget, SortArg, TargetFilter, collect_pages, params, timefmt};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ExecCmd {
    /// Start a command on one device; prints the execution id.
    Start(StartArgs),
    /// Show one execution.
    Get(GetArgs),
    /// List executions, filtered by command, device, status and time.
    List(ListArgs),
    /// Cancel a live execution (it ends as CANCELED and the device is told).
    Cancel(CancelArgs),
    /// Delete a finished execution's record.
    Delete(DeleteArgs),
    /// Print status changes as they happen, until Ctrl-C.
    Watch(WatchArgs),
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct StartArgs {
    /// The command to run.
    #[arg(long = "command", value_name = "ID")]
    pub command_id: String,
    #[command(flatten)]
    pub target: RequiredTarget,
    /// A parameter value, NAME=TYPE:VALUE with TYPE one of s, b, i, l, d, bin (base64), ul
    /// (repeatable), e.g. --param temp=i:21 --param mode=s:eco.
    #[arg(long = "param", value_name = "NAME=TYPE:VALUE", value_parser = params::parse_param_arg)]
    pub params: Vec<(String, pb::ParameterValue)>,
    /// Execution timeout in seconds, 1–43200 (server default 10).
    #[arg(long = "timeout", value_name = "SECS")]
    pub timeout_secs: Option<i64>,
    /// Idempotency token: the same token and request return the same execution. When left
    /// out a random one is used, so that retries after UNAVAILABLE cannot start twice.
    #[arg(long, value_name = "TOKEN")]
    pub client_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct GetArgs {
    #[arg(value_name = "EXECUTION_ID")]
    pub execution_id: String,
    #[command(flatten)]
    pub target: TargetFilter,
    /// Include the device's result.
    #[arg(long)]
    pub include_result: bool,
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ListArgs {
    /// Only executions of this command.
    #[arg(long = "command", value_name = "ID")]
    pub command_id: Option<String>,
    #[command(flatten)]
    pub target: TargetFilter,
    /// Only executions in this status (repeatable: any of them).
    #[arg(long = "status", value_name = "STATUS", value_parser = super::parse_status)]
    pub statuses: Vec<pb::ExecutionStatus>,
    /// Started at or after (RFC 3339, or yyyy-MM-ddTHH:mm in UTC).
    #[arg(long, value_name = "TIME", value_parser = timefmt::parse_time_arg)]
    pub started_after: Option<Timestamp>,
    /// Started at or before.
    #[arg(long, value_name = "TIME", value_parser = timefmt::parse_time_arg)]
    pub started_before: Option<Timestamp>,
    /// Completed at or after.
    #[arg(long, value_name = "TIME", value_parser = timefmt::parse_time_arg)]
    pub completed_after: Option<Timestamp>,
    /// Completed at or before.
    #[arg(long, value_name = "TIME", value_parser = timefmt::parse_time_arg)]
    pub completed_before: Option<Timestamp>,
    /// By start time (or completion time with a completed filter).
    #[arg(long, value_enum)]
    pub sort: Option<SortArg>,
    /// Page size, 1–100 (server default 25).
    #[arg(long, value_name = "N")]
    pub max_results: Option<i32>,
    /// Continue from a previous page.
    #[arg(long, value_name = "TOKEN")]
    pub next_token: Option<String>,
    /// Follow next_token to the end and print everything.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CancelArgs {
    #[arg(value_name = "EXECUTION_ID")]
    pub execution_id: String,
    #[command(flatten)]
    pub target: TargetFilter,
    /// Reason code recorded on the execution (server default $CANCELED).
    #[arg(long, value_name = "CODE")]
    pub reason_code: Option<String>,
    #[arg(long, value_name = "TEXT", requires = "reason_code")]
    pub reason_description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct DeleteArgs {
    #[arg(value_name = "EXECUTION_ID")]
    pub execution_id: String,
    #[command(flatten)]
    pub target: TargetFilter,
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct WatchArgs {
    /// Only executions of this command.
    #[arg(long = "command", value_name = "ID")]
    pub command_id: Option<String>,
    #[command(flatten)]
    pub target: TargetFilter,
    /// Only changes to these statuses (repeatable).
    #[arg(long = "status", value_name = "STATUS", value_parser = super::parse_status)]
    pub statuses: Vec<pb::ExecutionStatus>,
}

impl StartArgs {
    pub fn to_request(&self) -> anyhow::Result<pb::StartCommandExecutionRequest> {
        let parameters = params::collect_params(&self.params).map_err(anyhow::Error::msg)?;
        let execution_timeout_seconds = match self.timeout_secs {
            // On the wire 0 means "the default", so a typed 0 must not silently become 10 s.
            Some(0) => {
                anyhow::bail!("invalid --timeout: must be between 1 and 43200 seconds, got 0")
            }
            Some(secs) => secs,
            None => 0,
        };
        Ok(pb::StartCommandExecutionRequest {
            target: Some(self.target.to_pb()),
            command_id: self.command_id.clone(),
            parameters,
            execution_timeout_seconds,
            client_token: self
                .client_token
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        })
    }
}

impl GetArgs {
    pub fn to_request(&self) -> pb::GetCommandExecutionRequest {
        pb::GetCommandExecutionRequest {
            execution_id: self.execution_id.clone(),
            target: self.target.to_pb(),
            include_result: self.include_result,
        }
    }
}

fn time_filter(after: Option<Timestamp>, before: Option<Timestamp>) -> Option<pb::TimeFilter> {
    (after.is_some() || before.is_some()).then_some(pb::TimeFilter { after, before })
}

/// One status goes in the reference's single `status` field; several go in fleetcmd's
/// `statuses` (any of them).
fn status_filter(statuses: &[pb::ExecutionStatus]) -> (i32, Vec<i32>) {
    match statuses {
        [] => (pb::ExecutionStatus::Unspecified as i32, Vec::new()),
        [one] => (*one as i32, Vec::new()),
        many => (
            pb::ExecutionStatus::Unspecified as i32,
            many.iter().map(|s| *s as i32).collect(),
        ),
    }
}

impl ListArgs {
    pub fn to_request(&self) -> pb::ListCommandExecutionsRequest {
        let (status, statuses) = status_filter(&self.statuses);
        pb::ListCommandExecutionsRequest {
            max_results: self.max_results.unwrap_or(0),
            next_token: self.next_token.clone().unwrap_or_default(),
            namespace: String::new(),
            status,
            sort_order: self
                .sort
                .map_or(pb::SortOrder::Unspecified, pb::SortOrder::from)
                as i32,
            started_time_filter: time_filter(self.started_after, self.started_before),
            completed_time_filter: time_filter(self.completed_after, self.completed_before),
            command_id: self.command_id.clone().unwrap_or_default(),
            target: self.target.to_pb(),
            statuses,
        }
    }
}

impl CancelArgs {
    pub fn to_request(&self) -> pb::CancelCommandExecutionRequest {
        pb::CancelCommandExecutionRequest {
            execution_id: self.execution_id.clone(),
            target: self.target.to_pb(),
            status_reason: self.reason_code.as_ref().map(|code| pb::StatusReason {
                reason_code: code.clone(),
                reason_description: self.reason_description.clone().unwrap_or_default(),
            }),
        }
    }
}

impl DeleteArgs {
    pub fn to_request(&self) -> pb::DeleteCommandExecutionRequest {
        pb::DeleteCommandExecutionRequest {
            execution_id: self.execution_id.clone(),
            target: self.target.to_pb(),
        }
    }
}

impl WatchArgs {
    pub fn to_request(&self) -> pb::WatchCommandExecutionsRequest {
        pb::WatchCommandExecutionsRequest {
            command_id: self.command_id.clone().unwrap_or_default(),
            target: self.target.to_pb(),
            statuses: self.statuses.iter().map(|s| *s as i32).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// One function per verb

/// Retried on UNAVAILABLE; safe because the request carries a client token.
pub async fn start(
    api: &Api,
    request: pb::StartCommandExecutionRequest,
) -> Result<pb::StartCommandExecutionResponse, Status> {
    api.call(
        api.dispatcher(),
        request,
        |mut client, request| async move { client.start_command_execution(request).await },
    )
    .await
}

pub async fn get(
    api: &Api,
    request: pb::GetCommandExecutionRequest,
) -> Result<pb::CommandExecution, Status> {
    api.call(api.registry(), request, |mut client, request| async move {
        client.get_command_execution(request).await
    })
    .await
}

/// One page.
pub async fn list(
    api: &Api,
    request: pb::ListCommandExecutionsRequest,
) -> Result<pb::ListCommandExecutionsResponse, Status> {
    api.call(api.registry(), request, |mut client, request| async move {
        client.list_command_executions(request).await
    })
    .await
}

/// Every page from `request.next_token` on, concatenated.
pub async fn list_all(
    api: &Api,
    mut request: pb::ListCommandExecutionsRequest,
) -> anyhow::Result<pb::ListCommandExecutionsResponse> {
    let command_executions = collect_pages(request.next_token.clone(), |next_token| {
        request.next_token = next_token;
        let page = list(api, request.clone());
        async move {
            page.await
                .map(|page| (page.command_executions, page.next_token))
        }
    })
    .await?;
    Ok(pb::ListCommandExecutionsResponse {
        command_executions,
        next_token: String::new(),
    })
}

pub async fn cancel(
    api: &Api,
    request: pb::CancelCommandExecutionRequest,
) -> Result<pb::CancelCommandExecutionResponse, Status> {
    api.call(
        api.dispatcher(),
        request,
        |mut client, request| async move { client.cancel_command_execution(request).await },
    )
    .await
}

pub async fn delete(
    api: &Api,
    request: pb::DeleteCommandExecutionRequest,
) -> Result<pb::DeleteCommandExecutionResponse, Status> {
    api.call(api.registry(), request, |mut client, request| async move {
        client.delete_command_execution(request).await
    })
    .await
}

/// Opens the stream (opening is retried on UNAVAILABLE; a stream that breaks later is not
/// resumed, since events in the gap would be lost silently).
pub async fn watch(
    api: &Api,
    request: pb::WatchCommandExecutionsRequest,
) -> Result<tonic::Streaming<pb::CommandExecutionEvent>, Status> {
    api.call(api.registry(), request, |mut client, request| async move {
        client.watch_command_executions(request).await
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The CLI

pub async fn run(
    api: &Api,
    cmd: ExecCmd,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match cmd {
        ExecCmd::Start(args) => {
            let response = start(api, args.to_request()?).await?;
            match output {
                Output::Json => print_json(
                    out,
                    &serde_json::json!({"execution_id": response.execution_id}),
                )?,
                Output::Text => writeln!(out, "{}", response.execution_id)?,
            }
        }
        ExecCmd::Get(args) => {
            let execution = get(api, args.to_request()).await?;
            match output {
                Output::Json => print_json(out, &render::execution_json(&execution))?,
                Output::Text => write!(out, "{}", render::execution_text(&execution))?,
            }
        }
        ExecCmd::List(args) => {
            let request = args.to_request();
            let response = if args.all {
                list_all(api, request).await?
            } else {
                list(api, request).await?
            };
            match output {
                Output::Json => print_json(out, &render::list_executions_json(&response))?,
                Output::Text => {
                    write!(
                        out,
                        "{}",
                        render::execution_list_table(&response.command_executions).render()
                    )?;
                    if !response.next_token.is_empty() {
                        writeln!(out, "next token: {}", response.next_token)?;
                    }
                }
            }
        }
        ExecCmd::Cancel(args) => {
            let response = cancel(api, args.to_request()).await?;
            match output {
                Output::Json => print_json(out, &render::cancel_json(&response))?,
                Output::Text => writeln!(
                    out,
                    "{}  {}",
                    response.execution_id,
                    render::status_name(response.status)
                )?,
            }
        }
        ExecCmd::Delete(args) => {
            delete(api, args.to_request()).await?;
            match output {
                Output::Json => print_json(
                    out,
                    &serde_json::json!({"execution_id": args.execution_id, "deleted": true}),
                )?,
                Output::Text => writeln!(out, "deleted")?,
            }
        }
        ExecCmd::Watch(args) => {
            let mut stream = watch(api, args.to_request()).await?;
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            loop {
                let event = tokio::select! {
                    _ = &mut ctrl_c => break,
                    event = stream.message() => event?,
                };
                let Some(event) = event else { break };
                match output {
                    Output::Json => print_json(out, &render::execution_event_json(&event))?,
                    Output::Text => writeln!(out, "{}", render::execution_event_line(&event))?,
                }
                // One line per event as it happens, also when stdout is a pipe.
                out.flush()?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use clap::error::ErrorKind;
    use pb::parameter_value::Value;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ExecCmd,
    }

    fn parse(args: &[&str]) -> Result<ExecCmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("exec").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn start_builds_a_request_with_typed_params() {
        let ExecCmd::Start(args) = parse(&[
            "start",
            "--command",
            "heat",
            "--thing",
            "boiler-1",
            "--param",
            "temp=i:21",
            "--param",
            "mode=s:eco",
            "--timeout",
            "30",
            "--client-token",
            "tok-1",
        ])
        .unwrap() else {
            panic!()
        };
        let req = args.to_request().unwrap();
        assert_eq!(req.command_id, "heat");
        assert_eq!(
            req.target,
            Some(pb::Target {
                kind: pb::TargetKind::Thing as i32,
                id: "boiler-1".into()
            })
        );
        assert_eq!(req.parameters.len(), 2);
        assert_eq!(req.parameters["temp"].value, Some(Value::I(21)));
        assert_eq!(req.parameters["mode"].value, Some(Value::S("eco".into())));
        assert_eq!(req.execution_timeout_seconds, 30);
        assert_eq!(req.client_token, "tok-1");
    }

    #[test]
    fn start_fills_in_a_client_token_and_checks_the_timeout() {
        let ExecCmd::Start(args) =
            parse(&["start", "--command", "c", "--client", "dev-7"]).unwrap()
        else {
            panic!()
        };
        let a = args.to_request().unwrap();
        let b = args.to_request().unwrap();
        assert_eq!(
            a.target.as_ref().unwrap().kind,
            pb::TargetKind::Client as i32
        );
        assert_eq!(a.execution_timeout_seconds, 0, "server default");
        assert_eq!(a.client_token.len(), 36);
        assert_ne!(
            a.client_token, b.client_token,
            "a fresh token per invocation"
        );

        let ExecCmd::Start(args) =
            parse(&["start", "--command", "c", "--client", "d", "--timeout", "0"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            args.to_request().unwrap_err().to_string(),
            "invalid --timeout: must be between 1 and 43200 seconds, got 0"
        );
        let ExecCmd::Start(args) = parse(&[
            "start",
            "--command",
            "c",
            "--client",
            "d",
            "--param",
            "a=i:1",
            "--param",
            "a=i:2",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            args.to_request().unwrap_err().to_string(),
            "--param a is given more than once"
        );
    }

    #[test]
    fn start_flag_errors() {
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(
            kind(&["start", "--command", "c"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["start", "--command", "c", "--thing", "a", "--client", "b"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            kind(&["start", "--thing", "a"]),
            ErrorKind::MissingRequiredArgument
        );
        let err = parse(&[
            "start",
            "--command",
            "c",
            "--thing",
            "a",
            "--param",
            "t=int:1",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("unknown type \"int\""), "{err}");
        assert_eq!(
            kind(&[
                "start",
                "--command",
                "c",
                "--thing",
                "a",
                "--timeout",
                "ten"
            ]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn list_builds_filters() {
        let ExecCmd::List(args) = parse(&[
            "list",
            "--command",
            "reboot",
            "--client",
            "c1",
            "--status",
            "failed",
            "--started-after",
            "2024-11-01T03:00",
            "--started-before",
            "2024-11-02T00:00:00Z",
            "--sort",
            "asc",
            "--max-results",
            "50",
            "--next-token",
            "abc",
        ])
        .unwrap() else {
            panic!()
        };
        let req = args.to_request();
        assert_eq!(req.command_id, "reboot");
        assert_eq!(req.target.as_ref().unwrap().id, "c1");
        assert_eq!(req.status, pb::ExecutionStatus::Failed as i32);
        assert!(req.statuses.is_empty());
        let started = req.started_time_filter.unwrap();
        assert_eq!(started.after.unwrap().seconds, 1_730_430_000);
        assert_eq!(started.before.unwrap().seconds, 1_730_505_600);
        assert!(req.completed_time_filter.is_none());
        assert_eq!(req.sort_order, pb::SortOrder::Ascending as i32);
        assert_eq!(req.max_results, 50);
        assert_eq!(req.next_token, "abc");

        let ExecCmd::List(args) = parse(&[
            "list",
            "--status",
            "SUCCEEDED",
            "--status",
            "timed-out",
            "--completed-before",
            "2024-11-01",
        ])
        .unwrap() else {
            panic!()
        };
        let req = args.to_request();
        assert_eq!(req.status, 0);
        assert_eq!(
            req.statuses,
            vec![
                pb::ExecutionStatus::Succeeded as i32,
                pb::ExecutionStatus::TimedOut as i32
            ]
        );
        let completed = req.completed_time_filter.unwrap();
        assert!(completed.after.is_none());
        assert_eq!(completed.before.unwrap().seconds, 1_730_419_200);

        let err = parse(&["list", "--started-after", "yesterday"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("yyyy-MM-ddTHH:mm"), "{err}");
        assert_eq!(
            parse(&["list", "--status", "done"]).unwrap_err().kind(),
            ErrorKind::ValueValidation
        );
        let ExecCmd::List(args) = parse(&["list"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            args.to_request(),
            pb::ListCommandExecutionsRequest::default()
        );
    }

    #[test]
    fn get_cancel_delete_watch_requests() {
        let ExecCmd::Get(args) =
            parse(&["get", "e-1", "--thing", "lamp", "--include-result"]).unwrap()
        else {
            panic!()
        };
        let req = args.to_request();
        assert_eq!(req.execution_id, "e-1");
        assert!(req.include_result);
        assert_eq!(req.target.unwrap().id, "lamp");

        let ExecCmd::Cancel(args) = parse(&[
            "cancel",
            "e-1",
            "--reason-code",
            "OPERATOR",
            "--reason-description",
            "wrong device",
        ])
        .unwrap() else {
            panic!()
        };
        let req = args.to_request();
        assert!(req.target.is_none());
        let reason = req.status_reason.unwrap();
        assert_eq!(reason.reason_code, "OPERATOR");
        assert_eq!(reason.reason_description, "wrong device");
        let ExecCmd::Cancel(args) = parse(&["cancel", "e-1"]).unwrap() else {
            panic!()
        };
        assert!(args.to_request().status_reason.is_none());
        assert_eq!(
            parse(&["cancel", "e-1", "--reason-description", "x"])
                .unwrap_err()
                .kind(),
            ErrorKind::MissingRequiredArgument
        );

        let ExecCmd::Delete(args) = parse(&["delete", "e-1", "--client", "c"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            args.to_request().target.unwrap().kind,
            pb::TargetKind::Client as i32
        );

        let ExecCmd::Watch(args) = parse(&[
            "watch",
            "--command",
            "reboot",
            "--status",
            "succeeded",
            "--status",
            "failed",
        ])
        .unwrap() else {
            panic!()
        };
        let req = args.to_request();
        assert_eq!(req.command_id, "reboot");
        assert!(req.target.is_none());
        assert_eq!(
            req.statuses,
            vec![
                pb::ExecutionStatus::Succeeded as i32,
                pb::ExecutionStatus::Failed as i32
            ]
        );
    }
}
