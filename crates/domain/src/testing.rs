//! Fixtures shared by the tests of every crate (feature `test-util`, never in release builds).

use std::collections::BTreeMap;

use crate::TimestampMs;
use crate::event::{Aggregate, Event, EventEnvelope, SCHEMA_VERSION};
use crate::ids::{CommandId, ExecutionId, Target};
use crate::model::{Execution, ExecutionStatus, Payload};

/// A freshly created execution `id` of command `command` on `target` (the thing `t` when
/// `None`): created at 1 s after the epoch, 10 s timeout, no token, `seq` 1, kept for 1,000 s.
/// Tests set whatever else they need on the returned value.
pub fn execution(id: &str, command: &str, target: Option<Target>) -> Execution {
    Execution {
        execution_id: ExecutionId::parse(id).expect("fixture execution id"),
        command_id: CommandId::parse(command).expect("fixture command id"),
        target: target.unwrap_or_else(|| Target::thing("t").expect("fixture target")),
        status: ExecutionStatus::Created,
        status_reason: None,
        result: BTreeMap::new(),
        parameters: BTreeMap::new(),
        timeout_secs: 10,
        client_token: None,
        created_at: 1_000,
        last_updated_at: 1_000,
        started_at: 1_000,
        completed_at: None,
        time_to_live: 1_000_000,
        terminal: false,
        seq: 1,
        request_fingerprint: 0,
    }
}

/// [`execution`] moved to `status` (terminal unless IN_PROGRESS or CREATED; completed at
/// 2 s when terminal), with `seq` 2.
pub fn execution_in(id: &str, command: &str, status: ExecutionStatus) -> Execution {
    let mut e = execution(id, command, None);
    if status != ExecutionStatus::Created {
        e.status = status;
        e.seq = 2;
        e.last_updated_at = 2_000;
        e.terminal = !matches!(status, ExecutionStatus::InProgress);
        if e.terminal {
            e.completed_at = Some(2_000);
        }
    }
    e
}

/// `event` of execution `e` as the log holds it: number `seq` of its events, recorded at
/// `at`, with the event id `<execution id>-<seq>`.
pub fn execution_envelope(e: &Execution, seq: u64, at: TimestampMs, event: Event) -> EventEnvelope {
    EventEnvelope {
        event_id: format!("{}-{seq}", e.execution_id.as_str()),
        schema: SCHEMA_VERSION,
        aggregate: Aggregate::Execution {
            execution_id: e.execution_id.clone(),
            target: e.target.clone(),
        },
        seq,
        at,
        trace: None,
        event,
    }
}

/// The ExecutionStarted event of `e`, sent with the JSON payload `{}`.
pub fn started_event(e: &Execution) -> Event {
    Event::ExecutionStarted {
        execution: Box::new(e.clone()),
        payload: Payload {
            content: b"{}".to_vec(),
            content_type: "application/json".into(),
        },
        request_fingerprint: 0,
    }
}
