//! `fleetcmd exec start|get|list|cancel|delete|watch`: command executions.

use std::io::Write;

use fleetcmd_contracts::pb;
use prost_types::Timestamp;
use tonic::Status;

use serde_json::json;

use super::render;
use super::{
    Api, Output, PageArgs, RequiredTarget, SortArg, TargetFilter, list_pages, params, timefmt,
};

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

/// `--command` and `--thing`/`--client`: the executions `list` and `watch` are about.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ExecutionScope {
    /// Only executions of this command.
    #[arg(long = "command", value_name = "ID")]
    pub command_id: Option<String>,
    #[command(flatten)]
    pub target: TargetFilter,
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub scope: ExecutionScope,
    /// Only executions in this status (repeatable: any of them).
    #[arg(long = "status", value_name = "STATUS", value_parser = super::parse_status)]
    pub statuses: Vec<pb::ExecutionStatus>,
    /// Only executions still waiting for their device (CREATED: not answered yet), in
    /// start order with `--sort asc`.
    #[arg(long, conflicts_with = "statuses")]
    pub undelivered: bool,
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
    #[command(flatten)]
    pub page: PageArgs,
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
    #[command(flatten)]
    pub scope: ExecutionScope,
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
        let waiting = [pb::ExecutionStatus::Created];
        let chosen = if self.undelivered {
            &waiting[..]
        } else {
            &self.statuses
        };
        let (status, statuses) = status_filter(chosen);
        pb::ListCommandExecutionsRequest {
            max_results: self.page.max_results.unwrap_or(0),
            next_token: self.page.next_token.clone().unwrap_or_default(),
            namespace: String::new(),
            status,
            sort_order: self
                .sort
                .map_or(pb::SortOrder::Unspecified, pb::SortOrder::from)
                as i32,
            started_time_filter: time_filter(self.started_after, self.started_before),
            completed_time_filter: time_filter(self.completed_after, self.completed_before),
            command_id: self.scope.command_id.clone().unwrap_or_default(),
            target: self.scope.target.to_pb(),
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
            command_id: self.scope.command_id.clone().unwrap_or_default(),
            target: self.scope.target.to_pb(),
            statuses: self.statuses.iter().map(|s| *s as i32).collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// One function per verb

// `start` is retried on UNAVAILABLE like the rest: safe because the request carries a
// client token. `list` answers one page; `super::list_pages` follows the tokens for `--all`.
super::unary_verbs! {
    pub start: dispatcher.start_command_execution(pb::StartCommandExecutionRequest) -> pb::StartCommandExecutionResponse;
    pub get: registry.get_command_execution(pb::GetCommandExecutionRequest) -> pb::CommandExecution;
    pub list: registry.list_command_executions(pb::ListCommandExecutionsRequest) -> pb::ListCommandExecutionsResponse;
    pub cancel: dispatcher.cancel_command_execution(pb::CancelCommandExecutionRequest) -> pb::CancelCommandExecutionResponse;
    pub delete: registry.delete_command_execution(pb::DeleteCommandExecutionRequest) -> pb::DeleteCommandExecutionResponse;
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
    let (json, text) = match cmd {
        ExecCmd::Start(args) => {
            let id = start(api, args.to_request()?).await?.execution_id;
            (json!({"execution_id": id}), format!("{id}\n"))
        }
        ExecCmd::Get(args) => {
            let execution = get(api, args.to_request()).await?;
            (
                render::execution_json(&execution),
                render::execution_text(&execution),
            )
        }
        ExecCmd::List(args) => {
            let response = list_pages(|r| list(api, r), args.to_request(), args.page.all).await?;
            (
                render::list_executions_json(&response),
                render::list_executions_text(&response),
            )
        }
        ExecCmd::Cancel(args) => {
            let response = cancel(api, args.to_request()).await?;
            let status = render::status_name(response.status);
            let text = format!("{}  {status}\n", response.execution_id);
            (render::cancel_json(&response), text)
        }
        ExecCmd::Delete(args) => {
            delete(api, args.to_request()).await?;
            let id = args.execution_id;
            (
                json!({"execution_id": id, "deleted": true}),
                "deleted\n".to_string(),
            )
        }
        ExecCmd::Watch(args) => return watch_and_print(api, args, output, out).await,
    };
    output.print(out, &json, &text)?;
    Ok(())
}

/// Prints each event as it comes, until the stream ends or Ctrl-C.
async fn watch_and_print(
    api: &Api,
    args: WatchArgs,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut stream = watch(api, args.to_request()).await?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            _ = &mut ctrl_c => break,
            event = stream.message() => event?,
        };
        let Some(event) = event else { break };
        let line = format!("{}\n", render::execution_event_line(&event));
        output.print(out, &render::execution_event_json(&event), &line)?;
        // One line per event as it happens, also when stdout is a pipe.
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use pb::parameter_value::Value;

    fn parse(args: &[&str]) -> Result<ExecCmd, clap::Error> {
        crate::parse_verb("exec", args.iter().copied())
    }

    /// [`parse`] of a command line written as one string (for arguments without spaces).
    fn parse_line(line: &str) -> Result<ExecCmd, clap::Error> {
        parse(&line.split(' ').collect::<Vec<_>>())
    }

    fn error_kind(line: &str) -> ErrorKind {
        parse_line(line).unwrap_err().kind()
    }

    /// The verb `line` parses to, or a panic naming the line.
    fn verb(line: &str) -> ExecCmd {
        parse_line(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn start_args(line: &str) -> StartArgs {
        match verb(line) {
            ExecCmd::Start(args) => args,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    fn list_request(line: &str) -> pb::ListCommandExecutionsRequest {
        match verb(line) {
            ExecCmd::List(args) => args.to_request(),
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn start_builds_a_request_with_typed_params() {
        let args = start_args(
            "start --command heat --thing boiler-1 --param temp=i:21 --param mode=s:eco \
             --timeout 30 --client-token tok-1",
        );
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
        let args = start_args("start --command c --client dev-7");
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

        let args = start_args("start --command c --client d --timeout 0");
        assert_eq!(
            args.to_request().unwrap_err().to_string(),
            "invalid --timeout: must be between 1 and 43200 seconds, got 0"
        );
        let args = start_args("start --command c --client d --param a=i:1 --param a=i:2");
        assert_eq!(
            args.to_request().unwrap_err().to_string(),
            "--param a is given more than once"
        );
    }

    #[test]
    fn start_flag_errors() {
        assert_eq!(
            error_kind("start --command c"),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            error_kind("start --command c --thing a --client b"),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            error_kind("start --thing a"),
            ErrorKind::MissingRequiredArgument
        );
        let err = parse_line("start --command c --thing a --param t=int:1").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("unknown type \"int\""), "{err}");
        assert_eq!(
            error_kind("start --command c --thing a --timeout ten"),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn list_builds_filters() {
        let req = list_request(
            "list --command reboot --client c1 --status failed --started-after 2024-11-01T03:00 \
             --started-before 2024-11-02T00:00:00Z --sort asc --max-results 50 --next-token abc",
        );
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

        let req = list_request("list --thing lamp-1 --undelivered");
        assert_eq!(req.status, pb::ExecutionStatus::Created as i32);
        assert_eq!(req.target.as_ref().unwrap().id, "lamp-1");
        assert!(
            crate::parse_verb::<ExecCmd>("exec", "list --undelivered --status failed".split(' '))
                .is_err()
        );

        let req = list_request(
            "list --status SUCCEEDED --status timed-out --completed-before 2024-11-01",
        );
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

        let err = parse_line("list --started-after yesterday").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("yyyy-MM-ddTHH:mm"), "{err}");
        assert_eq!(error_kind("list --status done"), ErrorKind::ValueValidation);
        assert_eq!(
            list_request("list"),
            pb::ListCommandExecutionsRequest::default()
        );
    }

    #[test]
    fn get_cancel_delete_watch_requests() {
        let ExecCmd::Get(args) = verb("get e-1 --thing lamp --include-result") else {
            panic!()
        };
        let req = args.to_request();
        assert_eq!(req.execution_id, "e-1");
        assert!(req.include_result);
        assert_eq!(req.target.unwrap().id, "lamp");

        // (The description has a space, so this one is spelled out.)
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
        let ExecCmd::Cancel(args) = verb("cancel e-1") else {
            panic!()
        };
        assert!(args.to_request().status_reason.is_none());
        assert_eq!(
            error_kind("cancel e-1 --reason-description x"),
            ErrorKind::MissingRequiredArgument
        );

        let ExecCmd::Delete(args) = verb("delete e-1 --client c") else {
            panic!()
        };
        assert_eq!(
            args.to_request().target.unwrap().kind,
            pb::TargetKind::Client as i32
        );

        let ExecCmd::Watch(args) =
            verb("watch --command reboot --status succeeded --status failed")
        else {
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
