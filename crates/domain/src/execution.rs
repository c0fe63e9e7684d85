//! The execution state machine: `decide` turns an input into events or a rejection,
//! `apply` folds an event into the execution. Transition rules are AWS IoT Commands'
//! (`docs/device-protocol.md`, Statuses and transitions), plus our terminal CANCELED.

use std::collections::BTreeMap;

use crate::error::{Rejection, RejectionCode};
use crate::event::Event;
use crate::model::{
    CANCELED_BY_CALLER, Execution, ExecutionStatus, NO_RESPONSE_FROM_DEVICE, ResultValue,
    StatusReason, TimestampMs,
};

/// An input aimed at an existing execution.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ExecutionInput {
    /// A device update (already shape-validated by [`crate::device::parse_update`]).
    Report {
        status: ExecutionStatus,
        status_reason: Option<StatusReason>,
        result: Option<BTreeMap<String, ResultValue>>,
    },
    /// The cloud timer fired.
    CloudTimeout,
    /// An API caller asks to cancel.
    Cancel { status_reason: Option<StatusReason> },
    /// An API caller asks to delete the record.
    Delete,
}

/// True when the execution's status is a cloud-set TIMED_OUT (which is not terminal).
pub fn is_cloud_timed_out(e: &Execution) -> bool {
    e.status == ExecutionStatus::TimedOut && !e.terminal
}

/// Decides what an input does to an execution. Pure: same state and input, same answer.
pub fn decide(e: &Execution, input: &ExecutionInput) -> Result<Vec<Event>, Rejection> {
    match input {
        ExecutionInput::Report {
            status,
            status_reason,
            result,
        } => {
            if e.terminal {
                return Err(Rejection::new(
                    RejectionCode::TerminalStateReached,
                    format!(
                        "Command Execution status cannot be updated to {} since execution has already completed with status {}",
                        status.as_str(),
                        e.status.as_str()
                    ),
                ));
            }
            let allowed = match (e.status, status) {
                (_, ExecutionStatus::Created | ExecutionStatus::Canceled) => false,
                // A cloud TIMED_OUT can only be settled, not resumed.
                (ExecutionStatus::TimedOut, ExecutionStatus::InProgress) => false,
                (
                    ExecutionStatus::Created
                    | ExecutionStatus::InProgress
                    | ExecutionStatus::TimedOut,
                    _,
                ) => true,
                _ => false,
            };
            if !allowed {
                return Err(Rejection::new(
                    RejectionCode::InvalidStateTransition,
                    format!(
                        "Command Execution status cannot be updated from {} to {}",
                        e.status.as_str(),
                        status.as_str()
                    ),
                ));
            }
            Ok(vec![Event::StatusReported {
                status: *status,
                status_reason: status_reason.clone(),
                result: result.clone(),
            }])
        }
        ExecutionInput::CloudTimeout => {
            if e.terminal || e.status == ExecutionStatus::TimedOut {
                Ok(vec![])
            } else {
                Ok(vec![Event::ExecutionTimedOut])
            }
        }
        ExecutionInput::Cancel { status_reason } => {
            if e.terminal {
                return Err(Rejection::new(
                    RejectionCode::FailedPrecondition,
                    format!(
                        "execution {} already completed with status {}; only a non-terminal execution can be canceled",
                        e.execution_id,
                        e.status.as_str()
                    ),
                ));
            }
            Ok(vec![Event::ExecutionCanceled {
                status_reason: Some(status_reason.clone().unwrap_or_else(|| StatusReason {
                    reason_code: CANCELED_BY_CALLER.into(),
                    reason_description: String::new(),
                })),
            }])
        }
        ExecutionInput::Delete => {
            if !e.terminal {
                return Err(Rejection::new(
                    RejectionCode::FailedPrecondition,
                    format!(
                        "execution {} is {}{}; only an execution in a terminal status can be deleted",
                        e.execution_id,
                        e.status.as_str(),
                        if is_cloud_timed_out(e) {
                            " (set by the cloud, not terminal)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            Ok(vec![Event::ExecutionDeleted])
        }
    }
}

/// Folds one event into an execution. `at` is the event's time, `seq` its sequence number.
/// Returns false for [`Event::ExecutionDeleted`]: the caller drops the record.
pub fn apply(e: &mut Execution, event: &Event, at: TimestampMs, seq: u64) -> bool {
    e.seq = seq;
    match event {
        Event::StatusReported {
            status,
            status_reason,
            result,
        } => {
            e.status = *status;
            e.status_reason = status_reason.clone();
            if let Some(result) = result {
                e.result = result.clone();
            }
            if *status != ExecutionStatus::InProgress {
                e.terminal = true;
                e.completed_at = Some(at);
            }
            e.last_updated_at = at;
        }
        Event::ExecutionTimedOut => {
            e.status = ExecutionStatus::TimedOut;
            e.status_reason = Some(StatusReason {
                reason_code: NO_RESPONSE_FROM_DEVICE.into(),
                reason_description: String::new(),
            });
            e.last_updated_at = at;
        }
        Event::ExecutionCanceled { status_reason } => {
            e.status = ExecutionStatus::Canceled;
            e.status_reason = status_reason.clone();
            e.terminal = true;
            e.completed_at = Some(at);
            e.last_updated_at = at;
        }
        Event::ExecutionDeleted => return false,
        Event::ExecutionStarted { execution, .. } => {
            *e = (**execution).clone();
            e.seq = seq;
        }
        Event::CommandCreated { .. }
        | Event::CommandUpdated { .. }
        | Event::CommandDeletionScheduled { .. }
        | Event::CommandDeleted
        | Event::Thing { .. }
        | Event::Credential { .. }
        | Event::Ca { .. }
        | Event::Group { .. }
        | Event::Rollout { .. } => {}
    }
    true
}

/// What folding one event did to an execution's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folded {
    /// Nothing changed: a replayed event (its `seq` is not above the state's), or an event of
    /// an execution that is unknown or already deleted.
    Unchanged,
    /// The event was applied.
    Applied,
    /// The execution was deleted: the state is now `None`.
    Deleted,
}

/// Folds one logged event of an execution into its state: the one fold every reader of the
/// log uses (shard owners rebuilding, the projector, tests). `at` and `seq` are the event's
/// time and sequence number. Idempotent: an event whose `seq` is not above the state's
/// changes nothing, so a replay or an overlapping read cannot move a record backwards.
pub fn fold(state: &mut Option<Execution>, event: &Event, at: TimestampMs, seq: u64) -> Folded {
    match state {
        Some(e) if seq <= e.seq => Folded::Unchanged,
        Some(e) => {
            if apply(e, event, at, seq) {
                Folded::Applied
            } else {
                *state = None;
                Folded::Deleted
            }
        }
        None => match event {
            Event::ExecutionStarted { execution, .. } => {
                let mut e = (**execution).clone();
                e.seq = seq;
                *state = Some(e);
                Folded::Applied
            }
            _ => Folded::Unchanged,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Target;
    use proptest::prelude::*;

    fn created() -> Execution {
        let mut e = crate::testing::execution("e1", "reboot", Some(Target::thing("t1").unwrap()));
        e.time_to_live = 9_999_999;
        e
    }

    fn started(e: &Execution) -> Event {
        Event::ExecutionStarted {
            execution: Box::new(e.clone()),
            payload: crate::model::Payload {
                content: b"{}".to_vec(),
                content_type: "application/json".into(),
            },
            request_fingerprint: 0,
        }
    }

    #[test]
    fn fold_starts_applies_in_order_and_ignores_replays() {
        let mut state = None;
        assert_eq!(
            fold(&mut state, &Event::ExecutionTimedOut, 5, 2),
            Folded::Unchanged
        );
        assert!(state.is_none(), "an event before the start is skipped");
        assert_eq!(
            fold(&mut state, &started(&created()), 1_000, 1),
            Folded::Applied
        );
        assert_eq!(
            state.as_ref().map(|e| (e.status, e.seq)),
            Some((Created, 1))
        );
        let progress = Event::StatusReported {
            status: InProgress,
            status_reason: None,
            result: None,
        };
        assert_eq!(fold(&mut state, &progress, 2_000, 2), Folded::Applied);
        // A replay of the start or of the update changes nothing.
        let before = state.clone();
        assert_eq!(
            fold(&mut state, &started(&created()), 1_000, 1),
            Folded::Unchanged
        );
        assert_eq!(
            fold(&mut state, &Event::ExecutionTimedOut, 3_000, 2),
            Folded::Unchanged
        );
        assert_eq!(state, before);
        assert_eq!(
            fold(&mut state, &Event::ExecutionDeleted, 4_000, 3),
            Folded::Deleted
        );
        assert!(state.is_none());
        assert_eq!(fold(&mut state, &progress, 5_000, 4), Folded::Unchanged);
        assert!(state.is_none(), "a deleted execution stays deleted");
    }

    fn report(status: ExecutionStatus) -> ExecutionInput {
        ExecutionInput::Report {
            status,
            status_reason: None,
            result: None,
        }
    }

    /// Given an execution, when `input` is decided and its events applied, then ...
    fn run(
        mut e: Execution,
        input: ExecutionInput,
        at: TimestampMs,
    ) -> Result<Execution, Rejection> {
        for ev in decide(&e, &input)? {
            let seq = e.seq + 1;
            apply(&mut e, &ev, at, seq);
        }
        Ok(e)
    }

    use ExecutionStatus::*;

    #[test]
    fn created_moves_to_every_device_status() {
        for s in [InProgress, Succeeded, Failed, Rejected, TimedOut] {
            let e = run(created(), report(s), 2_000).unwrap();
            assert_eq!(e.status, s);
            assert_eq!(e.terminal, s != InProgress, "{s:?}");
            assert_eq!(e.completed_at, (s != InProgress).then_some(2_000));
            assert_eq!(e.last_updated_at, 2_000);
            assert_eq!(e.seq, 2);
        }
    }

    #[test]
    fn in_progress_repeats_and_settles() {
        let e = run(created(), report(InProgress), 2_000).unwrap();
        let e = run(e, report(InProgress), 3_000).unwrap();
        assert_eq!((e.status, e.terminal, e.seq), (InProgress, false, 3));
        let e = run(e, report(Succeeded), 4_000).unwrap();
        assert_eq!(
            (e.status, e.terminal, e.completed_at),
            (Succeeded, true, Some(4_000))
        );
    }

    #[test]
    fn device_cannot_set_created_or_canceled() {
        for s in [Created, Canceled] {
            let err = run(created(), report(s), 2_000).unwrap_err();
            assert_eq!(err.code, RejectionCode::InvalidStateTransition);
        }
        let e = run(created(), report(InProgress), 2_000).unwrap();
        let err = run(e, report(Created), 3_000).unwrap_err();
        assert_eq!(err.code, RejectionCode::InvalidStateTransition);
    }

    #[test]
    fn terminal_states_are_final() {
        for s in [Succeeded, Failed, Rejected, TimedOut] {
            let e = run(created(), report(s), 2_000).unwrap();
            for next in [InProgress, Succeeded, Failed, Rejected, TimedOut] {
                let err = run(e.clone(), report(next), 3_000).unwrap_err();
                assert_eq!(err.code, RejectionCode::TerminalStateReached);
                assert!(err.message.contains(s.as_str()), "{}", err.message);
            }
            assert!(
                decide(&e, &ExecutionInput::CloudTimeout)
                    .unwrap()
                    .is_empty()
            );
            let err = run(
                e.clone(),
                ExecutionInput::Cancel {
                    status_reason: None,
                },
                3_000,
            )
            .unwrap_err();
            assert_eq!(err.code, RejectionCode::FailedPrecondition);
        }
    }

    #[test]
    fn cloud_timeout_is_not_terminal_and_a_late_report_settles_it() {
        let e = run(created(), ExecutionInput::CloudTimeout, 11_000).unwrap();
        assert_eq!(
            (e.status, e.terminal, e.completed_at),
            (TimedOut, false, None)
        );
        assert_eq!(
            e.status_reason.as_ref().unwrap().reason_code,
            NO_RESPONSE_FROM_DEVICE
        );
        // A second timer firing is a no-op.
        assert!(
            decide(&e, &ExecutionInput::CloudTimeout)
                .unwrap()
                .is_empty()
        );
        // Progress is no longer allowed, a delete neither.
        assert_eq!(
            run(e.clone(), report(InProgress), 12_000).unwrap_err().code,
            RejectionCode::InvalidStateTransition
        );
        assert_eq!(
            run(e.clone(), ExecutionInput::Delete, 12_000)
                .unwrap_err()
                .code,
            RejectionCode::FailedPrecondition
        );
        for s in [Succeeded, Failed, Rejected] {
            let late = run(e.clone(), report(s), 12_000).unwrap();
            assert_eq!(
                (late.status, late.terminal, late.completed_at),
                (s, true, Some(12_000))
            );
        }
    }

    #[test]
    fn device_timed_out_after_cloud_timeout_replaces_reason_and_ends() {
        let e = run(created(), ExecutionInput::CloudTimeout, 11_000).unwrap();
        let reason = StatusReason {
            reason_code: "TOO_SLOW".into(),
            reason_description: "x".into(),
        };
        let e = run(
            e,
            ExecutionInput::Report {
                status: TimedOut,
                status_reason: Some(reason.clone()),
                result: None,
            },
            12_000,
        )
        .unwrap();
        assert_eq!(
            (e.status, e.terminal, e.completed_at),
            (TimedOut, true, Some(12_000))
        );
        assert_eq!(e.status_reason, Some(reason));
    }

    #[test]
    fn cancel_ends_a_live_execution_and_delete_needs_terminal() {
        let err = run(created(), ExecutionInput::Delete, 2_000).unwrap_err();
        assert_eq!(err.code, RejectionCode::FailedPrecondition);
        let cancel = ExecutionInput::Cancel {
            status_reason: None,
        };
        let e = run(created(), cancel, 2_000).unwrap();
        assert_eq!(
            (e.status, e.terminal, e.completed_at),
            (Canceled, true, Some(2_000))
        );
        assert_eq!(
            e.status_reason.as_ref().unwrap().reason_code,
            CANCELED_BY_CALLER
        );
        assert_eq!(
            decide(&e, &ExecutionInput::Delete).unwrap(),
            vec![Event::ExecutionDeleted]
        );
        let mut gone = e.clone();
        assert!(!apply(
            &mut gone,
            &Event::ExecutionDeleted,
            3_000,
            e.seq + 1
        ));
    }

    #[test]
    fn result_is_kept_and_replaced_only_when_reported() {
        let mut r = BTreeMap::new();
        r.insert("pct".to_string(), ResultValue::S("50".into()));
        let e = run(
            created(),
            ExecutionInput::Report {
                status: InProgress,
                status_reason: None,
                result: Some(r.clone()),
            },
            2_000,
        )
        .unwrap();
        assert_eq!(e.result, r);
        let e = run(e, report(Succeeded), 3_000).unwrap();
        assert_eq!(e.result, r);
    }

    fn any_input() -> impl Strategy<Value = ExecutionInput> {
        prop_oneof![
            prop::sample::select(ExecutionStatus::ALL.to_vec()).prop_map(report),
            Just(ExecutionInput::CloudTimeout),
            Just(ExecutionInput::Cancel {
                status_reason: None
            }),
            Just(ExecutionInput::Delete),
        ]
    }

    proptest! {
        /// Whatever happens, a terminal execution never changes status again, seq grows by
        /// one per event, and completed_at is set exactly when terminal.
        #[test]
        fn invariants_hold_for_any_sequence(inputs in prop::collection::vec(any_input(), 0..20)) {
            let mut e = created();
            let mut at = 1_000;
            for input in inputs {
                at += 1;
                let before = e.clone();
                match decide(&e, &input) {
                    Ok(events) => {
                        for ev in &events {
                            let seq = e.seq + 1;
                            if !apply(&mut e, ev, at, seq) { return Ok(()); }
                        }
                        prop_assert_eq!(e.seq, before.seq + events.len() as u64);
                        if before.terminal { prop_assert_eq!(e.status, before.status); }
                    }
                    Err(_) => prop_assert_eq!(&e, &before),
                }
                prop_assert_eq!(e.terminal, e.completed_at.is_some());
                prop_assert!(e.status != Created || e.seq == 1);
            }
        }
    }
}
