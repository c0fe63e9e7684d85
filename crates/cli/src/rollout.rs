//! `fleetcmd rollout …`: start, get, cancel and watch rollouts (`fleetcmd.v1.Rollouts`).
//! `start --watch` and `watch` follow the rollout until it ends: on a terminal a progress
//! bar (targets with a final outcome), the counts per status, the rate and an ETA; otherwise
//! one line per change.

use std::io::{IsTerminal as _, Write};
use std::time::Instant;

use fleetcmd_contracts::pb;
use serde_json::{Value as Json, json};

use crate::render::{self, KeyValues, time_full};
use crate::{Api, Output, params};

// Parsed once per process: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum RolloutCmd {
    /// Start a rollout of a command to a list of things or clients, a thing group or a
    /// query (starting it again with the same --token returns the same rollout).
    Start(StartArgs),
    /// Show a rollout.
    Get(IdArgs),
    /// Stop a rollout's new starts; with --force also cancel its live executions.
    Cancel(CancelArgs),
    /// Follow a rollout until it ends.
    Watch(IdArgs),
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct StartArgs {
    /// The rollout id: 1–64 of [a-zA-Z0-9_-].
    #[arg(value_name = "ROLLOUT")]
    pub rollout_id: String,
    /// The command to run.
    #[arg(long = "command", value_name = "ID")]
    pub command_id: String,
    /// A thing to reach (repeatable).
    #[arg(long = "thing", value_name = "NAME")]
    pub things: Vec<String>,
    /// A bare MQTT client to reach (repeatable).
    #[arg(long = "client", value_name = "ID")]
    pub clients: Vec<String>,
    /// Every member of this static thing group.
    #[arg(long, value_name = "GROUP", conflicts_with_all = ["things", "clients", "query"])]
    pub group: Option<String>,
    /// Every thing matching this query (the language of dynamic groups).
    #[arg(long, value_name = "QUERY", conflicts_with_all = ["things", "clients"])]
    pub query: Option<String>,
    /// Starts per minute, evenly paced.
    #[arg(long = "per-minute", value_name = "N")]
    pub per_minute: u32,
    /// Most executions of the rollout live at once.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// A parameter value, NAME=TYPE:VALUE as for `exec start` (repeatable).
    #[arg(long = "param", value_name = "NAME=TYPE:VALUE", value_parser = params::parse_param_arg)]
    pub params: Vec<(String, pb::ParameterValue)>,
    /// Execution timeout of each attempt in seconds, 1–43200 (server default 10).
    #[arg(long = "timeout", value_name = "SECS")]
    pub timeout_secs: Option<i64>,
    /// Abort when PERCENT of the targets with a final outcome failed this way, once MIN
    /// have one: TYPE:PERCENT:MIN, TYPE one of failed, rejected, timed-out, all (repeatable).
    #[arg(long = "abort", value_name = "TYPE:PERCENT:MIN", value_parser = parse_abort)]
    pub abort: Vec<pb::AbortCriterion>,
    /// On an abort, also cancel the live executions.
    #[arg(long)]
    pub cancel_in_progress: bool,
    /// Retry failures of TYPE up to N times: TYPE:N, TYPE one of failed, timed-out, all
    /// (repeatable).
    #[arg(long = "retry", value_name = "TYPE:N", value_parser = parse_retry)]
    pub retry: Vec<pb::RetryCriterion>,
    /// Seconds before the first retry (doubled for each further one, at most an hour).
    #[arg(long = "retry-backoff", value_name = "SECS")]
    pub retry_backoff_secs: Option<u32>,
    /// Idempotency token: the same token and spec return the same rollout.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Follow the rollout until it ends.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct IdArgs {
    #[arg(value_name = "ROLLOUT")]
    pub rollout_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CancelArgs {
    #[arg(value_name = "ROLLOUT")]
    pub rollout_id: String,
    /// Also cancel the live executions, and end the rollout at once.
    #[arg(long)]
    pub force: bool,
}

fn failure_type(text: &str) -> Result<pb::FailureType, String> {
    Ok(match text {
        "failed" => pb::FailureType::Failed,
        "rejected" => pb::FailureType::Rejected,
        "timed-out" => pb::FailureType::TimedOut,
        "all" => pb::FailureType::All,
        other => {
            return Err(format!(
                "unknown failure type {other:?}: expected failed, rejected, timed-out or all"
            ));
        }
    })
}

fn parse_abort(text: &str) -> Result<pb::AbortCriterion, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let [kind, percent, min] = parts[..] else {
        return Err(format!("expected TYPE:PERCENT:MIN, got {text:?}"));
    };
    Ok(pb::AbortCriterion {
        failure_type: failure_type(kind)? as i32,
        threshold_percentage: percent
            .parse()
            .map_err(|_| format!("PERCENT must be a number, got {percent:?}"))?,
        min_number_of_executed_things: min
            .parse()
            .map_err(|_| format!("MIN must be a whole number, got {min:?}"))?,
    })
}

fn parse_retry(text: &str) -> Result<pb::RetryCriterion, String> {
    let Some((kind, n)) = text.split_once(':') else {
        return Err(format!("expected TYPE:N, got {text:?}"));
    };
    Ok(pb::RetryCriterion {
        failure_type: failure_type(kind)? as i32,
        number_of_retries: n
            .parse()
            .map_err(|_| format!("N must be a whole number, got {n:?}"))?,
    })
}

impl StartArgs {
    pub fn to_request(&self) -> pb::StartRolloutRequest {
        use pb::rollout_targets::Selector;
        let selector = match (&self.group, &self.query) {
            (Some(g), _) => Selector::Group(g.clone()),
            (None, Some(q)) => Selector::Query(q.clone()),
            (None, None) => {
                let target = |kind: pb::TargetKind, id: &String| pb::Target {
                    kind: kind as i32,
                    id: id.clone(),
                };
                let targets = self
                    .things
                    .iter()
                    .map(|t| target(pb::TargetKind::Thing, t))
                    .chain(
                        self.clients
                            .iter()
                            .map(|c| target(pb::TargetKind::Client, c)),
                    )
                    .collect();
                Selector::List(pb::TargetList { targets })
            }
        };
        pb::StartRolloutRequest {
            rollout_id: self.rollout_id.clone(),
            spec: Some(pb::RolloutSpec {
                command_id: self.command_id.clone(),
                parameters: self.params.iter().cloned().collect(),
                execution_timeout_seconds: self.timeout_secs.unwrap_or(0),
                targets: Some(pb::RolloutTargets {
                    selector: Some(selector),
                }),
                rate: Some(pb::RolloutRate {
                    rate: Some(pb::rollout_rate::Rate::MaxPerMinute(self.per_minute)),
                }),
                max_in_flight: self.max_in_flight.unwrap_or(0),
                abort_criteria: self.abort.clone(),
                cancel_in_progress: self.cancel_in_progress,
                retries: self.retry.clone(),
                retry_backoff_base_seconds: self.retry_backoff_secs.unwrap_or(0),
                client_token: self.token.clone().unwrap_or_default(),
                ..Default::default()
            }),
        }
    }
}

crate::unary_verbs! {
    start: rollouts.start_rollout(pb::StartRolloutRequest) -> pb::StartRolloutResponse;
    get: rollouts.get_rollout(pb::GetRolloutRequest) -> pb::Rollout;
    cancel: rollouts.cancel_rollout(pb::CancelRolloutRequest) -> pb::CancelRolloutResponse;
}

fn status_name(status: i32) -> &'static str {
    match pb::RolloutStatus::try_from(status) {
        Ok(pb::RolloutStatus::Scheduled) => "SCHEDULED",
        Ok(pb::RolloutStatus::InProgress) => "IN_PROGRESS",
        Ok(pb::RolloutStatus::Completed) => "COMPLETED",
        Ok(pb::RolloutStatus::Canceled) => "CANCELED",
        Ok(pb::RolloutStatus::Aborted) => "ABORTED",
        _ => "UNSPECIFIED",
    }
}

fn ended(r: &pb::Rollout) -> bool {
    matches!(
        pb::RolloutStatus::try_from(r.status),
        Ok(pb::RolloutStatus::Completed | pb::RolloutStatus::Canceled | pb::RolloutStatus::Aborted)
    ) && r.counts.as_ref().is_none_or(|c| c.in_flight == 0)
}

pub fn rollout_json(r: &pb::Rollout) -> Json {
    let c = r.counts.unwrap_or_default();
    json!({
        "rollout_id": r.rollout_id,
        "status": status_name(r.status),
        "command_id": r.spec.as_ref().map(|s| s.command_id.clone()).unwrap_or_default(),
        "target_count": r.target_count,
        "targets_resolved": r.targets_resolved,
        "current_per_minute": r.current_per_minute,
        "stopping": r.stopping,
        "counts": {
            "queued": c.queued, "in_flight": c.in_flight, "succeeded": c.succeeded,
            "failed": c.failed, "rejected": c.rejected, "timed_out": c.timed_out,
            "canceled": c.canceled, "skipped_unauthorized": c.skipped_unauthorized,
            "notified": c.notified,
        },
        "aborted_by": r.aborted_by.as_ref().map(|a| json!({
            "failure_type": pb::FailureType::try_from(a.failure_type).map(|t| t.as_str_name()).unwrap_or("UNSPECIFIED"),
            "threshold_percentage": a.threshold_percentage,
            "min_number_of_executed_things": a.min_number_of_executed_things,
        })),
        "created_at": render::timestamp_json(r.created_at.as_ref()),
        "started_at": render::timestamp_json(r.started_at.as_ref()),
        "completed_at": render::timestamp_json(r.completed_at.as_ref()),
    })
}

/// The counts on one line: `3/10 done: 2 succeeded, 1 failed; 4 in flight, 3 queued`.
fn counts_line(r: &pb::Rollout) -> String {
    let c = r.counts.unwrap_or_default();
    let done =
        c.succeeded + c.failed + c.rejected + c.timed_out + c.canceled + c.skipped_unauthorized;
    let mut parts = vec![format!("{} succeeded", c.succeeded)];
    for (n, what) in [
        (c.failed, "failed"),
        (c.rejected, "rejected"),
        (c.timed_out, "timed out"),
        (c.canceled, "canceled"),
        (c.skipped_unauthorized, "skipped"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!(
        "{done}/{} done: {}; {} in flight, {} queued",
        r.target_count,
        parts.join(", "),
        c.in_flight,
        c.queued
    )
}

fn rollout_text(r: &pb::Rollout) -> String {
    let mut kv = KeyValues::new();
    kv.add("rollout_id", &r.rollout_id)
        .add("status", status_name(r.status))
        .add(
            "command_id",
            r.spec.as_ref().map(|s| s.command_id.as_str()).unwrap_or(""),
        )
        .add("targets", counts_line(r))
        .add("rate", format!("{}/min", r.current_per_minute))
        .add("created_at", time_full(r.created_at.as_ref()))
        .add("completed_at", time_full(r.completed_at.as_ref()));
    if let Some(a) = &r.aborted_by {
        kv.add(
            "aborted_by",
            format!(
                "{} >= {} % of at least {}",
                pb::FailureType::try_from(a.failure_type)
                    .map(|t| t.as_str_name())
                    .unwrap_or("?"),
                a.threshold_percentage,
                a.min_number_of_executed_things
            ),
        );
    }
    kv.render()
}

/// Follows `rollout_id` until it ends (or Ctrl-C): a live bar on a terminal, one line per
/// change otherwise (JSON lines with `--json`).
pub async fn watch(
    api: &Api,
    rollout_id: &str,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let request = pb::WatchRolloutRequest {
        rollout_id: rollout_id.to_owned(),
    };
    let mut stream = api
        .call(api.rollouts(), request, |mut c, r| async move {
            c.watch_rollout(r).await
        })
        .await?;
    let bar = (output == Output::Text && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {pos}/{len} {msg} ({elapsed}, ETA {eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let started = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last: Option<pb::Rollout> = None;
    loop {
        let update = tokio::select! {
            _ = &mut ctrl_c => break,
            u = stream.message() => u?,
        };
        let Some(r) = update else { break };
        match &bar {
            Some(bar) => {
                let c = r.counts.unwrap_or_default();
                let done = u64::from(
                    r.target_count - c.queued.min(r.target_count) - c.in_flight.min(r.target_count),
                );
                bar.set_length(u64::from(r.target_count));
                bar.set_position(done.min(u64::from(r.target_count)));
                bar.set_message(format!(
                    "{} | {}/min | {}",
                    status_name(r.status),
                    r.current_per_minute,
                    counts_line(&r)
                ));
            }
            None => {
                let line = format!(
                    "{:>7.1}s  {}  {}\n",
                    started.elapsed().as_secs_f64(),
                    status_name(r.status),
                    counts_line(&r)
                );
                output.print(out, &rollout_json(&r), &line)?;
                out.flush()?;
            }
        }
        let over = ended(&r);
        last = Some(r);
        if over {
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
        if let Some(r) = &last {
            out.write_all(rollout_text(r).as_bytes())?;
        }
    }
    Ok(())
}

/// Runs a `rollout` verb.
pub async fn run(
    api: &Api,
    cmd: RolloutCmd,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (json, text) = match cmd {
        RolloutCmd::Start(args) => {
            let r = start(api, args.to_request()).await?;
            let json = json!({"rollout_id": r.rollout_id, "status": status_name(r.status)});
            let text = format!("started {} ({})\n", r.rollout_id, status_name(r.status));
            if args.watch {
                output.print(out, &json, &text)?;
                return watch(api, &r.rollout_id, output, out).await;
            }
            (json, text)
        }
        RolloutCmd::Get(args) => {
            let r = get(
                api,
                pb::GetRolloutRequest {
                    rollout_id: args.rollout_id,
                },
            )
            .await?;
            (rollout_json(&r), rollout_text(&r))
        }
        RolloutCmd::Cancel(args) => {
            let r = cancel(
                api,
                pb::CancelRolloutRequest {
                    rollout_id: args.rollout_id,
                    force: args.force,
                },
            )
            .await?;
            let json = json!({"rollout_id": r.rollout_id, "status": status_name(r.status)});
            let text = format!("{} is {}\n", r.rollout_id, status_name(r.status));
            (json, text)
        }
        RolloutCmd::Watch(args) => return watch(api, &args.rollout_id, output, out).await,
    };
    output.print(out, &json, &text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<RolloutCmd, clap::Error> {
        crate::parse_verb("rollout", line.split(' '))
    }

    #[test]
    fn start_takes_a_list_a_group_or_a_query_and_the_rollout_settings() {
        let RolloutCmd::Start(args) = parse(
            "start r-1 --command reboot --thing lab-1 --client c-1 --per-minute 600 \
             --max-in-flight 5 --abort failed:10:20 --retry timed-out:3 --retry-backoff 30 \
             --timeout 60 --token t --param delay=i:5",
        )
        .unwrap() else {
            panic!()
        };
        let r = args.to_request();
        let spec = r.spec.unwrap();
        let Some(pb::rollout_targets::Selector::List(list)) = spec.targets.unwrap().selector else {
            panic!("a list")
        };
        assert_eq!(
            list.targets
                .iter()
                .map(|t| (t.kind, t.id.as_str()))
                .collect::<Vec<_>>(),
            [
                (pb::TargetKind::Thing as i32, "lab-1"),
                (pb::TargetKind::Client as i32, "c-1")
            ]
        );
        assert_eq!(
            spec.rate.unwrap().rate,
            Some(pb::rollout_rate::Rate::MaxPerMinute(600))
        );
        assert_eq!(spec.max_in_flight, 5);
        assert_eq!(
            spec.abort_criteria[0].failure_type,
            pb::FailureType::Failed as i32
        );
        assert_eq!(
            (
                spec.abort_criteria[0].threshold_percentage,
                spec.abort_criteria[0].min_number_of_executed_things
            ),
            (10.0, 20)
        );
        assert_eq!(
            spec.retries[0].failure_type,
            pb::FailureType::TimedOut as i32
        );
        assert_eq!(spec.retries[0].number_of_retries, 3);
        assert_eq!(
            (
                spec.retry_backoff_base_seconds,
                spec.execution_timeout_seconds
            ),
            (30, 60)
        );
        assert_eq!(spec.client_token, "t");
        assert!(spec.parameters.contains_key("delay"));

        let RolloutCmd::Start(args) =
            parse("start r-2 --command reboot --group lab --per-minute 60").unwrap()
        else {
            panic!()
        };
        let selector = args.to_request().spec.unwrap().targets.unwrap().selector;
        assert_eq!(
            selector,
            Some(pb::rollout_targets::Selector::Group("lab".into()))
        );
        assert!(parse("start r-3 --command reboot --group lab --thing x --per-minute 60").is_err());
        assert!(
            parse("start r-3 --command reboot --thing x --per-minute 60 --abort failed:x:1")
                .is_err()
        );
        assert!(
            parse("start r-3 --command reboot --thing x --per-minute 60 --retry sometimes:1")
                .is_err()
        );
        assert!(
            parse("start r-3 --command reboot --thing x").is_err(),
            "--per-minute is required"
        );
    }

    #[test]
    fn cancel_and_watch_name_the_rollout() {
        assert_eq!(
            parse("cancel r-1 --force").unwrap(),
            RolloutCmd::Cancel(CancelArgs {
                rollout_id: "r-1".into(),
                force: true
            })
        );
        assert_eq!(
            parse("watch r-1").unwrap(),
            RolloutCmd::Watch(IdArgs {
                rollout_id: "r-1".into()
            })
        );
    }

    #[test]
    fn the_counts_line_says_where_the_targets_stand() {
        let r = pb::Rollout {
            target_count: 10,
            counts: Some(pb::RolloutCounts {
                succeeded: 2,
                failed: 1,
                in_flight: 4,
                queued: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            counts_line(&r),
            "3/10 done: 2 succeeded, 1 failed; 4 in flight, 3 queued"
        );
    }
}
