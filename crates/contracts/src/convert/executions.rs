//! Executions: StartCommandExecution, the list queries and their time filters, status
//! reasons, and the execution messages and events.

use std::collections::HashMap;

use fleetcmd_domain::command::check_namespace;
use fleetcmd_domain::error::ValidationError;
use fleetcmd_domain::ids::CommandId;
use fleetcmd_domain::model::{Execution, StatusReason};
use fleetcmd_domain::ports::{CommandQuery, ExecutionQuery, TimeRange};
use fleetcmd_domain::start::StartRequest;

use super::{
    Arns, index_path, non_empty, opt_timestamp_from_ms, opt_timestamp_to_ms, optional_target,
    page_size_from_pb, parameters_from_pb, parameters_to_pb, path, require_target, results_to_pb,
    sort_ascending_from_pb, status_from_pb, status_to_pb, timestamp_from_ms,
};
use crate::pb;

// ---------------------------------------------------------------------------------------------
// Starting executions

/// StartCommandExecution: `command_id` is parsed (naming `command_id`), `target` is
/// required, parameters are converted (naming `parameters["name"]...`),
/// `execution_timeout_seconds` 0 means the default (`None`) and a negative one is an error,
/// and an empty `client_token` means none. The timeout range and the token syntax are checked
/// by `start::validate_request`.
impl TryFrom<pb::StartCommandExecutionRequest> for StartRequest {
    type Error = ValidationError;

    fn try_from(req: pb::StartCommandExecutionRequest) -> Result<Self, Self::Error> {
        let command_id = CommandId::parse(req.command_id)?;
        let target = require_target(req.target)?;
        let parameters = parameters_from_pb("parameters", req.parameters)?;
        let timeout_secs = match req.execution_timeout_seconds {
            0 => None,
            t => Some(u64::try_from(t).map_err(|_| {
                ValidationError::new(
                    "execution_timeout_seconds",
                    format!("must not be negative (0 means the default), got {t}"),
                )
            })?),
        };
        Ok(StartRequest {
            command_id,
            target,
            parameters,
            timeout_secs,
            client_token: non_empty(req.client_token),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Listing

/// ListCommands: page size per [`page_size_from_pb`], sort order per
/// [`sort_ascending_from_pb`], empty strings as unset filters. `namespace` must be empty or
/// `AWS-IoT` (`command::check_namespace`), as for every other call.
impl TryFrom<pb::ListCommandsRequest> for CommandQuery {
    type Error = ValidationError;

    fn try_from(req: pb::ListCommandsRequest) -> Result<Self, Self::Error> {
        check_namespace(&req.namespace)?;
        Ok(CommandQuery {
            namespace: non_empty(req.namespace),
            parameter_name: non_empty(req.command_parameter_name),
            ascending: sort_ascending_from_pb(req.sort_order)?,
            page_size: page_size_from_pb(req.max_results)?,
            page_token: non_empty(req.next_token),
        })
    }
}

/// A time filter at `field` (e.g. `started_time_filter`). Both bounds are inclusive and
/// optional; `after` later than `before` is an error naming `field`. A filter message with no
/// bounds is kept as an open range: its presence still chooses the sort time.
pub fn time_range_from_pb(
    field: &str,
    filter: Option<pb::TimeFilter>,
) -> Result<Option<TimeRange>, ValidationError> {
    let Some(f) = filter else {
        return Ok(None);
    };
    let after = opt_timestamp_to_ms(&path(field, "after"), f.after)?;
    let before = opt_timestamp_to_ms(&path(field, "before"), f.before)?;
    if let (Some(a), Some(b)) = (after, before)
        && a > b
    {
        return Err(ValidationError::new(
            field,
            format!("after ({a} ms) must not be later than before ({b} ms)"),
        ));
    }
    Ok(Some(TimeRange { after, before }))
}

impl From<TimeRange> for pb::TimeFilter {
    fn from(r: TimeRange) -> Self {
        Self {
            after: opt_timestamp_from_ms(r.after),
            before: opt_timestamp_from_ms(r.before),
        }
    }
}

/// ListCommandExecutions. Paging and sort order as for commands; `status` (when set) and
/// `statuses` are merged into one sorted, duplicate-free `statuses` (UNSPECIFIED inside
/// `statuses` is an error naming `statuses[i]`). fleetcmd deliberately allows `command_id`
/// together with `target`, and both time filters at once. `namespace` must be empty or
/// `AWS-IoT`, the only one fleetcmd serves (`command::check_namespace`).
impl TryFrom<pb::ListCommandExecutionsRequest> for ExecutionQuery {
    type Error = ValidationError;

    fn try_from(req: pb::ListCommandExecutionsRequest) -> Result<Self, Self::Error> {
        let page_size = page_size_from_pb(req.max_results)?;
        check_namespace(&req.namespace)?;
        let mut statuses = Vec::with_capacity(req.statuses.len() + 1);
        if req.status != pb::ExecutionStatus::Unspecified as i32 {
            statuses.push(status_from_pb("status", req.status)?);
        }
        for (i, s) in req.statuses.into_iter().enumerate() {
            statuses.push(status_from_pb(&index_path("statuses", i), s)?);
        }
        statuses.sort_unstable();
        statuses.dedup();
        let command_id = non_empty(req.command_id)
            .map(CommandId::parse)
            .transpose()?;
        Ok(ExecutionQuery {
            command_id,
            target: optional_target(req.target)?,
            statuses,
            started: time_range_from_pb("started_time_filter", req.started_time_filter)?,
            completed: time_range_from_pb("completed_time_filter", req.completed_time_filter)?,
            ascending: sort_ascending_from_pb(req.sort_order)?,
            page_size,
            page_token: non_empty(req.next_token),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Executions

/// A status reason: `reason_code` must not be empty (error naming
/// `status_reason.reason_code`). Its pattern and the lengths are not checked here: callers
/// and devices follow different rules (cloud codes start with `$`).
impl TryFrom<pb::StatusReason> for StatusReason {
    type Error = ValidationError;

    fn try_from(r: pb::StatusReason) -> Result<Self, Self::Error> {
        if r.reason_code.is_empty() {
            return Err(ValidationError::new(
                "status_reason.reason_code",
                "is required when status_reason is set",
            ));
        }
        Ok(StatusReason {
            reason_code: r.reason_code,
            reason_description: r.reason_description,
        })
    }
}

impl From<StatusReason> for pb::StatusReason {
    fn from(r: StatusReason) -> Self {
        Self {
            reason_code: r.reason_code,
            reason_description: r.reason_description,
        }
    }
}

/// An optional `status_reason` (e.g. CancelCommandExecution's).
pub fn optional_status_reason(
    reason: Option<pb::StatusReason>,
) -> Result<Option<StatusReason>, ValidationError> {
    reason.map(StatusReason::try_from).transpose()
}

/// An execution as GetCommandExecution returns it; `result` only with `include_result`, as in
/// the reference. `terminal` tells a cloud TIMED_OUT (false) from a device one (true).
pub fn execution_to_pb(
    execution: Execution,
    arns: &Arns,
    include_result: bool,
) -> pb::CommandExecution {
    let e = execution;
    pb::CommandExecution {
        command_arn: arns.command(&e.command_id),
        target_arn: arns.target(&e.target),
        execution_id: e.execution_id.into_string(),
        command_id: e.command_id.into_string(),
        target: Some(e.target.into()),
        status: status_to_pb(e.status),
        status_reason: e.status_reason.map(Into::into),
        result: if include_result {
            results_to_pb(e.result)
        } else {
            HashMap::new()
        },
        parameters: parameters_to_pb(e.parameters),
        // The domain caps timeouts at 12 h; saturate rather than wrap if that ever changes.
        execution_timeout_seconds: i64::try_from(e.timeout_secs).unwrap_or(i64::MAX),
        created_at: Some(timestamp_from_ms(e.created_at)),
        last_updated_at: Some(timestamp_from_ms(e.last_updated_at)),
        started_at: Some(timestamp_from_ms(e.started_at)),
        completed_at: opt_timestamp_from_ms(e.completed_at),
        time_to_live: Some(timestamp_from_ms(e.time_to_live)),
        client_token: e.client_token.unwrap_or_default(),
        terminal: e.terminal,
    }
}

/// An execution as ListCommandExecutions returns it.
pub fn execution_summary_to_pb(execution: Execution, arns: &Arns) -> pb::CommandExecutionSummary {
    let e = execution;
    pb::CommandExecutionSummary {
        command_arn: arns.command(&e.command_id),
        target_arn: arns.target(&e.target),
        command_id: e.command_id.into_string(),
        execution_id: e.execution_id.into_string(),
        target: Some(e.target.into()),
        status: status_to_pb(e.status),
        created_at: Some(timestamp_from_ms(e.created_at)),
        started_at: Some(timestamp_from_ms(e.started_at)),
        completed_at: opt_timestamp_from_ms(e.completed_at),
    }
}

/// The status change an execution's current state describes, as WatchCommandExecutions
/// streams it: `timestamp` is `last_updated_at` (when the change happened), and the result is
/// always included (a fleetcmd addition over the reference's events).
pub fn execution_event_to_pb(execution: Execution) -> pb::CommandExecutionEvent {
    let e = execution;
    pb::CommandExecutionEvent {
        execution_id: e.execution_id.into_string(),
        command_id: e.command_id.into_string(),
        target: Some(e.target.into()),
        status: status_to_pb(e.status),
        status_reason: e.status_reason.map(Into::into),
        result: results_to_pb(e.result),
        timestamp: Some(timestamp_from_ms(e.last_updated_at)),
        terminal: e.terminal,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use fleetcmd_domain::command::NAMESPACE_AWS_IOT;
    use fleetcmd_domain::ids::{ExecutionId, Target};
    use fleetcmd_domain::limits::PAGE_SIZE_DEFAULT;
    use fleetcmd_domain::model::{ExecutionStatus, ParameterValue, ResultValue};

    use super::*;
    use crate::convert::results_from_pb;
    use crate::convert::test_support::{err_field, pb_thing, pv, start_req, ts, ul};

    fn execution() -> Execution {
        Execution {
            execution_id: ExecutionId::parse("e-1").unwrap(),
            command_id: CommandId::parse("reboot").unwrap(),
            target: Target::client("dev.1").unwrap(),
            status: ExecutionStatus::TimedOut,
            status_reason: Some(StatusReason {
                reason_code: "$NO_RESPONSE_FROM_DEVICE".into(),
                reason_description: String::new(),
            }),
            result: BTreeMap::from([("log".to_string(), ResultValue::S("ok".into()))]),
            parameters: BTreeMap::from([("n".to_string(), ParameterValue::Ul(u64::MAX))]),
            timeout_secs: 30,
            client_token: Some("tok".into()),
            created_at: 1_000,
            last_updated_at: 31_000,
            started_at: 1_000,
            completed_at: None,
            time_to_live: 9_000_000,
            terminal: false,
            seq: 2,
            request_fingerprint: 0,
        }
    }

    // --- start ---------------------------------------------------------------------------

    #[test]
    fn start_request_converts() {
        let r = StartRequest::try_from(start_req()).unwrap();
        assert_eq!(r.command_id.as_str(), "set-temp");
        assert_eq!(r.target, Target::thing("lab-1").unwrap());
        assert_eq!(r.parameters.get("temp"), Some(&ParameterValue::D(21.0)));
        assert_eq!(r.parameters.get("n"), Some(&ParameterValue::Ul(u64::MAX)));
        assert_eq!(r.timeout_secs, Some(60));
        assert_eq!(r.client_token.as_deref(), Some("tok-1"));

        let r = StartRequest::try_from(pb::StartCommandExecutionRequest {
            execution_timeout_seconds: 0,
            client_token: String::new(),
            parameters: HashMap::new(),
            ..start_req()
        })
        .unwrap();
        assert_eq!((r.timeout_secs, r.client_token.as_deref()), (None, None));
        assert_eq!(r.effective_timeout_secs(), 10);
        assert!(r.parameters.is_empty());
    }

    #[test]
    fn start_request_errors_name_the_field() {
        let e = StartRequest::try_from(pb::StartCommandExecutionRequest {
            execution_timeout_seconds: -5,
            ..start_req()
        })
        .unwrap_err();
        assert_eq!(e.field, "execution_timeout_seconds");
        assert!(e.message.contains("-5"), "{e}");
        let no_target = pb::StartCommandExecutionRequest {
            target: None,
            ..start_req()
        };
        assert_eq!(err_field(StartRequest::try_from(no_target)), "target");
        let bad_id = pb::StartCommandExecutionRequest {
            command_id: "no spaces".into(),
            ..start_req()
        };
        assert_eq!(err_field(StartRequest::try_from(bad_id)), "command_id");
        let empty_id = pb::StartCommandExecutionRequest {
            command_id: String::new(),
            ..start_req()
        };
        assert_eq!(err_field(StartRequest::try_from(empty_id)), "command_id");
        let mut bad_param = start_req();
        bad_param
            .parameters
            .insert("n".into(), ul("18446744073709551616"));
        assert_eq!(
            err_field(StartRequest::try_from(bad_param)),
            "parameters[\"n\"].ul"
        );
        let mut empty_param = start_req();
        empty_param
            .parameters
            .insert("temp".into(), pb::ParameterValue::default());
        assert_eq!(
            err_field(StartRequest::try_from(empty_param)),
            "parameters[\"temp\"]"
        );
        for d in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut non_finite = start_req();
            non_finite
                .parameters
                .insert("v".into(), pv(pb::parameter_value::Value::D(d)));
            let e = StartRequest::try_from(non_finite).unwrap_err();
            assert_eq!(e.field, "parameters[\"v\"]", "{d}");
            assert!(e.message.contains("finite"), "{d}: {e}");
        }
        let bad_kind = pb::StartCommandExecutionRequest {
            target: Some(pb::Target {
                kind: 0,
                id: "x".into(),
            }),
            ..start_req()
        };
        assert_eq!(err_field(StartRequest::try_from(bad_kind)), "target.kind");
    }

    // --- listing -------------------------------------------------------------------------

    #[test]
    fn list_commands_request() {
        let q = CommandQuery::try_from(pb::ListCommandsRequest::default()).unwrap();
        assert_eq!(
            q,
            CommandQuery {
                namespace: None,
                parameter_name: None,
                ascending: false,
                page_size: PAGE_SIZE_DEFAULT,
                page_token: None,
            }
        );
        let q = CommandQuery::try_from(pb::ListCommandsRequest {
            max_results: 100,
            next_token: "t".into(),
            namespace: "AWS-IoT".into(),
            command_parameter_name: "temp".into(),
            sort_order: pb::SortOrder::Ascending as i32,
        })
        .unwrap();
        assert_eq!(q.page_size, 100);
        assert_eq!(q.page_token.as_deref(), Some("t"));
        assert_eq!(q.namespace.as_deref(), Some("AWS-IoT"));
        assert_eq!(q.parameter_name.as_deref(), Some("temp"));
        assert!(q.ascending);
        for max_results in [101, -1] {
            let req = pb::ListCommandsRequest {
                max_results,
                ..Default::default()
            };
            assert_eq!(err_field(CommandQuery::try_from(req)), "max_results");
        }
        let req = pb::ListCommandsRequest {
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(err_field(CommandQuery::try_from(req)), "sort_order");
    }

    #[test]
    fn list_commands_refuses_other_namespaces_like_the_other_calls() {
        for namespace in ["AWS-IoT-FleetWise", "aws-iot", " AWS-IoT", "x"] {
            let req = pb::ListCommandsRequest {
                namespace: namespace.into(),
                ..Default::default()
            };
            let e = CommandQuery::try_from(req).unwrap_err();
            assert_eq!(e.field, "namespace", "{namespace:?}");
            assert!(e.message.contains("only AWS-IoT"), "{e}");
            assert!(e.message.contains(namespace), "{e}");
            // The same answer as ListCommandExecutions gives.
            let executions = ExecutionQuery::try_from(pb::ListCommandExecutionsRequest {
                namespace: namespace.into(),
                ..Default::default()
            })
            .unwrap_err();
            assert_eq!(executions, e);
        }
        // A long one is quoted cut, with its length.
        let e = CommandQuery::try_from(pb::ListCommandsRequest {
            namespace: "n".repeat(5_000),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "namespace");
        assert!(e.message.len() < 200, "{}", e.message);
        assert!(e.message.contains("(5000 characters)"), "{}", e.message);
    }

    #[test]
    fn list_executions_request_filters() {
        let q = ExecutionQuery::try_from(pb::ListCommandExecutionsRequest::default()).unwrap();
        assert_eq!(
            q,
            ExecutionQuery {
                page_size: PAGE_SIZE_DEFAULT,
                ..Default::default()
            }
        );
        let req = pb::ListCommandExecutionsRequest {
            max_results: 1,
            next_token: "n".into(),
            namespace: NAMESPACE_AWS_IOT.into(),
            status: pb::ExecutionStatus::Failed as i32,
            sort_order: pb::SortOrder::Ascending as i32,
            started_time_filter: Some(pb::TimeFilter {
                after: Some(ts(1, 0)),
                before: Some(ts(2, 0)),
            }),
            completed_time_filter: Some(pb::TimeFilter {
                after: None,
                before: Some(ts(3, 0)),
            }),
            // fleetcmd allows command and target together, and both time filters.
            command_id: "reboot".into(),
            target: Some(pb_thing("lab-1")),
            statuses: vec![
                pb::ExecutionStatus::TimedOut as i32,
                pb::ExecutionStatus::Failed as i32,
                pb::ExecutionStatus::Created as i32,
            ],
        };
        let q = ExecutionQuery::try_from(req).unwrap();
        assert_eq!(
            q.statuses,
            vec![
                ExecutionStatus::Created,
                ExecutionStatus::Failed,
                ExecutionStatus::TimedOut
            ],
            "status and statuses merged, sorted, without duplicates"
        );
        assert_eq!(
            q.started,
            Some(TimeRange {
                after: Some(1_000),
                before: Some(2_000)
            })
        );
        assert_eq!(
            q.completed,
            Some(TimeRange {
                after: None,
                before: Some(3_000)
            })
        );
        assert_eq!(q.command_id, Some(CommandId::parse("reboot").unwrap()));
        assert_eq!(q.target, Some(Target::thing("lab-1").unwrap()));
        assert!(q.ascending);
        assert_eq!((q.page_size, q.page_token.as_deref()), (1, Some("n")));

        // Only `status`; an empty filter message is kept as an open range.
        let q = ExecutionQuery::try_from(pb::ListCommandExecutionsRequest {
            status: pb::ExecutionStatus::Canceled as i32,
            completed_time_filter: Some(pb::TimeFilter::default()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(q.statuses, vec![ExecutionStatus::Canceled]);
        assert_eq!((q.started, q.completed), (None, Some(TimeRange::default())));
    }

    #[test]
    fn list_executions_request_errors_name_the_field() {
        let base = pb::ListCommandExecutionsRequest::default;
        let cases: Vec<(pb::ListCommandExecutionsRequest, &str)> = vec![
            (
                pb::ListCommandExecutionsRequest {
                    max_results: 101,
                    ..base()
                },
                "max_results",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    status: 42,
                    ..base()
                },
                "status",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    statuses: vec![1, 0],
                    ..base()
                },
                "statuses[1]",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    namespace: "AWS-IoT-FleetWise".into(),
                    ..base()
                },
                "namespace",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    command_id: "a/b".into(),
                    ..base()
                },
                "command_id",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    target: Some(pb::Target::default()),
                    ..base()
                },
                "target.kind",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    sort_order: -1,
                    ..base()
                },
                "sort_order",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    completed_time_filter: Some(pb::TimeFilter {
                        after: None,
                        before: Some(ts(0, -5)),
                    }),
                    ..base()
                },
                "completed_time_filter.before",
            ),
            (
                pb::ListCommandExecutionsRequest {
                    started_time_filter: Some(pb::TimeFilter {
                        after: Some(ts(2, 0)),
                        before: Some(ts(1, 999_999_999)),
                    }),
                    ..base()
                },
                "started_time_filter",
            ),
        ];
        for (req, field) in cases {
            let e = ExecutionQuery::try_from(req.clone()).unwrap_err();
            assert_eq!(e.field, field, "{req:?}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn time_filters() {
        assert_eq!(time_range_from_pb("f", None), Ok(None));
        let equal = pb::TimeFilter {
            after: Some(ts(5, 0)),
            before: Some(ts(5, 0)),
        };
        assert_eq!(
            time_range_from_pb("f", Some(equal)),
            Ok(Some(TimeRange {
                after: Some(5_000),
                before: Some(5_000)
            })),
            "equal bounds are a valid (inclusive) range"
        );
        let inverted = pb::TimeFilter {
            after: Some(ts(5, 1_000_000)),
            before: Some(ts(5, 0)),
        };
        let e = time_range_from_pb("started_time_filter", Some(inverted)).unwrap_err();
        assert_eq!(e.field, "started_time_filter");
        assert!(
            e.message.contains("5001") && e.message.contains("5000"),
            "{e}"
        );
        let bad = pb::TimeFilter {
            after: Some(ts(i64::MAX, 0)),
            before: None,
        };
        assert_eq!(err_field(time_range_from_pb("f", Some(bad))), "f.after");
        for r in [
            TimeRange::default(),
            TimeRange {
                after: Some(-5),
                before: None,
            },
            TimeRange {
                after: Some(1),
                before: Some(2),
            },
        ] {
            assert_eq!(time_range_from_pb("f", Some(r.into())), Ok(Some(r)));
        }
    }

    // --- executions ----------------------------------------------------------------------

    #[test]
    fn status_reasons_both_ways() {
        let r = StatusReason {
            reason_code: "OVERHEAT".into(),
            reason_description: "too hot".into(),
        };
        let p = pb::StatusReason::from(r.clone());
        assert_eq!(p.reason_code, "OVERHEAT");
        assert_eq!(StatusReason::try_from(p.clone()), Ok(r.clone()));
        // The pattern is not checked here: cloud codes start with `$`.
        let cloud = pb::StatusReason {
            reason_code: "$CANCELED".into(),
            reason_description: String::new(),
        };
        assert_eq!(
            StatusReason::try_from(cloud).unwrap().reason_code,
            "$CANCELED"
        );
        let e = StatusReason::try_from(pb::StatusReason {
            reason_code: String::new(),
            reason_description: "why".into(),
        })
        .unwrap_err();
        assert_eq!(e.field, "status_reason.reason_code");
        assert!(e.message.contains("required"), "{e}");
        assert_eq!(optional_status_reason(None), Ok(None));
        assert_eq!(optional_status_reason(Some(p)), Ok(Some(r)));
        assert_eq!(
            err_field(optional_status_reason(Some(pb::StatusReason::default()))),
            "status_reason.reason_code"
        );
    }

    #[test]
    fn execution_to_pb_with_and_without_result() {
        let arns = Arns::default();
        let p = execution_to_pb(execution(), &arns, true);
        assert_eq!(p.execution_id, "e-1");
        assert_eq!(p.command_id, "reboot");
        assert_eq!(
            p.command_arn,
            "arn:aws:iot:local:000000000000:command/reboot"
        );
        assert_eq!(p.target_arn, "arn:aws:iot:local:000000000000:client/dev.1");
        assert_eq!(
            p.target.clone().map(Target::try_from),
            Some(Target::client("dev.1"))
        );
        assert_eq!(p.status, pb::ExecutionStatus::TimedOut as i32);
        assert_eq!(
            p.status_reason.as_ref().map(|r| r.reason_code.as_str()),
            Some("$NO_RESPONSE_FROM_DEVICE")
        );
        assert_eq!(
            results_from_pb("result", p.result.clone()),
            Ok(execution().result)
        );
        assert_eq!(
            parameters_from_pb("parameters", p.parameters.clone()),
            Ok(execution().parameters)
        );
        assert_eq!(p.execution_timeout_seconds, 30);
        assert_eq!(
            (p.created_at, p.last_updated_at, p.started_at),
            (Some(ts(1, 0)), Some(ts(31, 0)), Some(ts(1, 0)))
        );
        assert_eq!(
            p.completed_at, None,
            "a cloud TIMED_OUT has no completed_at"
        );
        assert_eq!(p.time_to_live, Some(ts(9_000, 0)));
        assert_eq!(p.client_token, "tok");
        assert!(!p.terminal);

        let without = execution_to_pb(execution(), &arns, false);
        assert!(without.result.is_empty());
        assert_eq!(
            without.parameters.len(),
            1,
            "parameters do not depend on include_result"
        );

        let done = Execution {
            status: ExecutionStatus::Succeeded,
            status_reason: None,
            completed_at: Some(40_000),
            client_token: None,
            terminal: true,
            ..execution()
        };
        let p = execution_to_pb(done, &arns, true);
        assert_eq!(p.status, pb::ExecutionStatus::Succeeded as i32);
        assert_eq!((p.status_reason, p.client_token.as_str()), (None, ""));
        assert_eq!(p.completed_at, Some(ts(40, 0)));
        assert!(p.terminal);
    }

    #[test]
    fn execution_summary_and_event() {
        let done = Execution {
            completed_at: Some(40_500),
            terminal: true,
            ..execution()
        };
        let s = execution_summary_to_pb(done.clone(), &Arns::new("r", "a"));
        assert_eq!(
            (s.execution_id.as_str(), s.command_id.as_str()),
            ("e-1", "reboot")
        );
        assert_eq!(s.command_arn, "arn:aws:iot:r:a:command/reboot");
        assert_eq!(s.target_arn, "arn:aws:iot:r:a:client/dev.1");
        assert_eq!(s.target, Some(pb::Target::from(&done.target)));
        assert_eq!(
            status_from_pb("status", s.status),
            Ok(ExecutionStatus::TimedOut)
        );
        assert_eq!(
            (s.created_at, s.started_at),
            (Some(ts(1, 0)), Some(ts(1, 0)))
        );
        assert_eq!(s.completed_at, Some(ts(40, 500_000_000)));

        let ev = execution_event_to_pb(done.clone());
        assert_eq!(
            (ev.execution_id.as_str(), ev.command_id.as_str()),
            ("e-1", "reboot")
        );
        assert_eq!(ev.target, Some(pb::Target::from(&done.target)));
        assert_eq!(ev.status, status_to_pb(ExecutionStatus::TimedOut));
        assert_eq!(
            ev.status_reason.map(StatusReason::try_from),
            Some(Ok(done.status_reason.clone().unwrap()))
        );
        assert_eq!(results_from_pb("result", ev.result), Ok(done.result));
        assert_eq!(ev.timestamp, Some(ts(31, 0)), "the time of the last change");
        assert!(ev.terminal);
    }
}
