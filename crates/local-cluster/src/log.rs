//! The event log folded back into executions, with the domain's own fold, and compared
//! with what the API reads: the log is the truth every read must agree with.

use std::collections::HashMap;
use std::time::Duration;

use fleetcmd_adapters::kafka::KafkaLog;
use fleetcmd_contracts::codec::decode_record;
use fleetcmd_contracts::convert::{results_to_pb, status_to_pb};
use fleetcmd_contracts::pb;
use fleetcmd_domain::Execution;
use fleetcmd_domain::event::{Aggregate, Event, EventEnvelope};
use fleetcmd_domain::execution::{self, Folded};
use fleetcmd_domain::ports::EventLog;
use fleetcmd_domain::shard::shard_of;

use crate::SHARDS;
use crate::reads::status_name;

/// The executions of one command folded from the log, and what was wrong in it.
#[derive(Debug, Default)]
pub struct LogView {
    pub executions: HashMap<String, Execution>,
    /// `(target, client token)` → execution ids started with it.
    pub starts_by_token: HashMap<(String, String), Vec<String>>,
    /// Sequence gaps, duplicates, events without a start, executions in the wrong partition.
    pub problems: Vec<String>,
    pub events: usize,
}

/// Reads every partition of `topic` to its end and folds the executions of `command_id`.
pub async fn read_log(brokers: &str, topic: &str, command_id: &str) -> LogView {
    let log = tokio::time::timeout(
        Duration::from_secs(30),
        KafkaLog::connect(brokers, topic, SHARDS),
    )
    .await
    .expect("connecting to the log in time")
    .expect("connect to the log");
    let mut view = LogView::default();
    for partition in 0..SHARDS {
        let end = log.end_offset(partition).await.expect("end offset");
        let mut from = 0;
        while from < end {
            let records = log.read(partition, from, 4096).await.expect("read the log");
            assert!(
                !records.is_empty(),
                "partition {partition}: nothing at {from} below the end {end}"
            );
            for r in records {
                from = r.offset + 1;
                let events = decode_record(&r.payload)
                    .unwrap_or_else(|e| panic!("partition {partition} offset {}: {e}", r.offset));
                for env in &events {
                    view.fold(env, partition, command_id);
                }
            }
        }
    }
    view
}

impl LogView {
    /// Folds one event of `partition` (events of other commands' executions are skipped).
    pub fn fold(&mut self, env: &EventEnvelope, partition: u32, command_id: &str) {
        let Aggregate::Execution {
            execution_id,
            target,
        } = &env.aggregate
        else {
            return;
        };
        let id = execution_id.as_str().to_string();
        if let Event::ExecutionStarted { execution, .. } = &env.event {
            if execution.command_id.as_str() != command_id {
                return;
            }
            self.events += 1;
            let expected_partition = shard_of(&target.resource_name(), SHARDS);
            if partition != expected_partition {
                self.problems.push(format!(
                    "{id}: started in partition {partition}, its shard is {expected_partition}"
                ));
            }
            if env.seq != 1 {
                self.problems
                    .push(format!("{id}: started with seq {}", env.seq));
            }
            if self.executions.contains_key(&id) {
                self.problems.push(format!("{id}: started twice"));
            }
            let mut state = None;
            execution::fold(&mut state, &env.event, env.at, env.seq);
            let e = state.expect("a start folds into an execution");
            if let Some(token) = &e.client_token {
                self.starts_by_token
                    .entry((target.resource_name(), token.clone()))
                    .or_default()
                    .push(id.clone());
            }
            self.executions.insert(id, e);
            return;
        }
        let Some(e) = self.executions.remove(&id) else {
            // Another command's execution (or one started before this command existed: none).
            return;
        };
        self.events += 1;
        if env.seq != e.seq + 1 {
            self.problems.push(format!(
                "{id}: event seq {} after seq {} ({:?})",
                env.seq,
                e.seq,
                env.event.new_status()
            ));
        }
        let mut state = Some(e);
        if let Folded::Applied | Folded::Unchanged =
            execution::fold(&mut state, &env.event, env.at, env.seq)
            && let Some(e) = state
        {
            self.executions.insert(id, e);
        }
    }

    /// Asserts that the log is consistent and holds exactly `total` executions of the
    /// command, each client token started once.
    pub fn assert_consistent(&self, total: usize) {
        assert!(
            self.problems.is_empty(),
            "the log is inconsistent: {:?}",
            &self.problems[..self.problems.len().min(10)]
        );
        assert_eq!(
            self.executions.len(),
            total,
            "the log holds exactly {total} executions of the command"
        );
        let doubled: Vec<_> = self
            .starts_by_token
            .iter()
            .filter(|(_, v)| v.len() != 1)
            .collect();
        assert!(
            doubled.is_empty(),
            "client tokens started more than once in the log: {doubled:?}"
        );
    }

    /// The differences between what was read and the log's fold, for every read execution
    /// (one missing from the log is a difference too).
    pub fn differences<'a>(
        &self,
        reads: impl IntoIterator<Item = &'a pb::CommandExecution>,
    ) -> Vec<String> {
        let mut diffs = Vec::new();
        for read in reads {
            match self.executions.get(&read.execution_id) {
                Some(l) => diffs.extend(compare_with_log(read, l)),
                None => diffs.push(format!(
                    "{}: acknowledged but not in the log",
                    read.execution_id
                )),
            }
        }
        diffs
    }
}

fn ts_ms(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

/// Compares one read execution with the log's fold: status, terminal flag, reason, result,
/// client token and times.
pub fn compare_with_log(read: &pb::CommandExecution, log: &Execution) -> Vec<String> {
    let mut diffs = Vec::new();
    let id = &read.execution_id;
    if read.status != status_to_pb(log.status) {
        diffs.push(format!(
            "{id}: status read {} vs log {}",
            status_name(read.status),
            log.status.as_str()
        ));
    }
    if read.terminal != log.terminal {
        diffs.push(format!(
            "{id}: terminal read {} vs log {}",
            read.terminal, log.terminal
        ));
    }
    let read_reason = read.status_reason.as_ref().map(|r| r.reason_code.clone());
    let log_reason = log.status_reason.as_ref().map(|r| r.reason_code.clone());
    if read_reason != log_reason {
        diffs.push(format!(
            "{id}: reason read {read_reason:?} vs log {log_reason:?}"
        ));
    }
    if read.result != results_to_pb(log.result.clone()) {
        diffs.push(format!(
            "{id}: result read {:?} vs log {:?}",
            read.result, log.result
        ));
    }
    // The API reads "no token" as an empty string.
    let read_token = (!read.client_token.is_empty()).then_some(read.client_token.as_str());
    if read_token != log.client_token.as_deref() {
        diffs.push(format!(
            "{id}: client token read {:?} vs log {:?}",
            read.client_token, log.client_token
        ));
    }
    for (what, r, l) in [
        (
            "created_at",
            ts_ms(read.created_at.as_ref()),
            Some(log.created_at),
        ),
        (
            "last_updated_at",
            ts_ms(read.last_updated_at.as_ref()),
            Some(log.last_updated_at),
        ),
        (
            "completed_at",
            ts_ms(read.completed_at.as_ref()),
            log.completed_at,
        ),
    ] {
        if r != l {
            diffs.push(format!("{id}: {what} read {r:?} vs log {l:?}"));
        }
    }
    diffs
}

#[cfg(test)]
mod tests {
    use fleetcmd_contracts::convert::{Arns, execution_to_pb};
    use fleetcmd_domain::ExecutionStatus;
    use fleetcmd_domain::testing::{execution, execution_envelope, execution_in, started_event};

    use super::*;

    fn envelope(e: &Execution, seq: u64, event: Event) -> EventEnvelope {
        execution_envelope(e, seq, 2_000, event)
    }

    fn started(e: &Execution) -> EventEnvelope {
        envelope(e, 1, started_event(e))
    }

    fn partition_of(e: &Execution) -> u32 {
        shard_of(&e.target.resource_name(), SHARDS)
    }

    #[test]
    fn a_read_equal_to_the_logs_fold_has_no_differences() {
        let e = execution_in("e1", "blink", ExecutionStatus::Succeeded);
        let read = execution_to_pb(e.clone(), &Arns::default(), true);

        let diffs = compare_with_log(&read, &e);

        assert!(diffs.is_empty(), "{diffs:?}");
    }

    #[test]
    fn every_differing_field_is_named() {
        let log = execution_in("e1", "blink", ExecutionStatus::Succeeded);
        let mut read = execution_to_pb(log.clone(), &Arns::default(), true);
        read.status = status_to_pb(ExecutionStatus::Failed);
        read.terminal = false;
        read.client_token = "tok".into();

        let diffs = compare_with_log(&read, &log).join("\n");

        for needle in ["status read FAILED", "terminal read false", "client token"] {
            assert!(diffs.contains(needle), "{needle:?} not in {diffs}");
        }
    }

    #[test]
    fn the_fold_follows_an_execution_and_skips_other_commands() {
        let e = execution("e1", "blink", None);
        let other = execution("e2", "other", None);
        let mut view = LogView::default();

        view.fold(&started(&e), partition_of(&e), "blink");
        view.fold(&started(&other), partition_of(&other), "blink");
        view.fold(
            &envelope(&e, 2, Event::ExecutionTimedOut),
            partition_of(&e),
            "blink",
        );

        assert!(view.problems.is_empty(), "{:?}", view.problems);
        assert_eq!(view.events, 2);
        assert_eq!(view.executions.len(), 1);
        assert_eq!(view.executions["e1"].status, ExecutionStatus::TimedOut);
    }

    #[test]
    fn gaps_doubled_starts_and_wrong_partitions_are_problems() {
        let e = execution("e1", "blink", None);
        let wrong_partition = (partition_of(&e) + 1) % SHARDS;
        let mut view = LogView::default();

        view.fold(&started(&e), wrong_partition, "blink");
        view.fold(&started(&e), partition_of(&e), "blink");
        view.fold(
            &envelope(&e, 3, Event::ExecutionTimedOut),
            partition_of(&e),
            "blink",
        );

        let problems = view.problems.join("\n");
        for needle in ["its shard is", "started twice", "event seq 3 after seq 1"] {
            assert!(problems.contains(needle), "{needle:?} not in {problems}");
        }
    }
}
