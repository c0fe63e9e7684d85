//! The read model suite.
//!
//! Every listing is checked against a model: the run's executions (or commands) filtered and
//! sorted in memory by the contract's rules, and compared page by page. Results that belong
//! to other runs (a shared server) are left out by id prefix before comparing. The suite
//! writes partition 0's position, and `purge_expired` only deletes records that expired
//! before the run started.
//!
//! [`run`] holds a store to every check. [`run_with`] takes the store's [`Capabilities`] and
//! skips or adapts the checks a backend cannot honour: the CQL test server, for instance,
//! ignores clustering order, write timestamps and TTLs, so the ScyllaDB adapter runs the
//! subset there and everything against a real cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use fleetcmd_domain::ports::{
    CommandQuery, CommandWrite, ExecutionQuery, ExecutionWrite, ProjectionBatch, ReadModel,
    TimeRange,
};
use fleetcmd_domain::{
    Command, CommandBody, CommandId, CommandParameter, Execution, ExecutionId, ExecutionStatus,
    OutputFormat, ParameterType, ParameterValue, Payload, PayloadTemplate, ResultValue,
    StatusReason, Target, TargetKind, TimestampMs,
};

use super::{unique, within};
use crate::clock::SystemClock;
use crate::is_invalid_page_token;
use fleetcmd_domain::ports::Clock;

const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;

fn command(
    run: &str,
    n: &str,
    namespace: &str,
    created_at: TimestampMs,
    params: &[&str],
) -> Command {
    let id = CommandId::parse(format!("{run}-{n}")).expect("valid command id");
    let body = if params.is_empty() {
        CommandBody::Static(Payload {
            content: vec![0, 1, 2, 255],
            content_type: "application/octet-stream".into(),
        })
    } else {
        CommandBody::Template(PayloadTemplate {
            template: r#"{"x": "${aws:iot:commandexecution::parameter:x}"}"#.into(),
            output_format: OutputFormat::Json,
        })
    };
    Command {
        command_id: id,
        namespace: namespace.to_owned(),
        display_name: format!("Command {n}"),
        description: "conformance".into(),
        body,
        parameters: params
            .iter()
            .map(|p| CommandParameter {
                name: (*p).to_owned(),
                r#type: ParameterType::String,
                default_value: Some(ParameterValue::S("d".into())),
                value: None,
                value_conditions: Vec::new(),
                description: String::new(),
            })
            .collect(),
        tags: BTreeMap::from([("team".to_owned(), "qa".to_owned())]),
        created_at,
        last_updated_at: created_at,
        deprecated: false,
        deprecated_at: None,
        delete_at: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn execution(
    id: &str,
    command_id: &CommandId,
    target: &Target,
    status: ExecutionStatus,
    started_at: TimestampMs,
    completed_at: Option<TimestampMs>,
    time_to_live: TimestampMs,
    seq: u64,
) -> Execution {
    Execution {
        execution_id: ExecutionId::parse(id).expect("valid execution id"),
        command_id: command_id.clone(),
        target: target.clone(),
        status,
        status_reason: completed_at.map(|_| StatusReason {
            reason_code: "DONE".into(),
            reason_description: "finished".into(),
        }),
        result: if completed_at.is_some() {
            BTreeMap::from([("out".to_owned(), ResultValue::S("ok".into()))])
        } else {
            BTreeMap::new()
        },
        parameters: BTreeMap::from([("x".to_owned(), ParameterValue::L(-5))]),
        timeout_secs: 10,
        client_token: Some(format!("tok-{id}")),
        created_at: started_at,
        last_updated_at: completed_at.unwrap_or(started_at),
        started_at,
        completed_at,
        time_to_live,
        terminal: completed_at.is_some(),
        seq,
        request_fingerprint: 7,
    }
}

async fn commit(store: &dyn ReadModel, batch: ProjectionBatch) {
    within("commit", store.commit(batch))
        .await
        .expect("commit must succeed");
}

fn executions_batch(next_offset: u64, writes: Vec<ExecutionWrite>) -> ProjectionBatch {
    ProjectionBatch {
        partition: 0,
        next_offset,
        commands: Vec::new(),
        executions: writes,
    }
}

/// What a store under test guarantees beyond the checks every store passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Listings come back in the contract's order (sort time, then id). Without it each
    /// listing is still checked for every matching item exactly once, as a set.
    pub ordering: bool,
    /// An execution upsert whose `seq` is not above the stored one changes nothing, also
    /// across batches (write timestamps, or a guarded update). Without it only the
    /// within-batch rule is checked.
    pub write_timestamps: bool,
    /// How execution records expire.
    pub expiry: Expiry,
}

/// How a store removes execution records past their `time_to_live`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// `purge_expired(now)` removes records whose `time_to_live` is before `now` and counts
    /// them; nothing expires by itself.
    Purge,
    /// The store expires records by itself at their `time_to_live` (CQL TTL): a record is
    /// never readable after it, and `purge_expired` may find nothing left to count.
    Ttl,
}

impl Capabilities {
    /// Every check, with explicit purging: what [`run`] uses (the SQLite store).
    pub const ALL: Self = Self {
        ordering: true,
        write_timestamps: true,
        expiry: Expiry::Purge,
    };
}

/// Runs the whole read model suite against `store` ([`Capabilities::ALL`]).
pub async fn run(store: Arc<dyn ReadModel>) {
    run_with(store, Capabilities::ALL).await;
}

/// Runs the checks of the read model suite that a store with `caps` can pass.
pub async fn run_with(store: Arc<dyn ReadModel>, caps: Capabilities) {
    let run = unique("rm");
    let base = SystemClock.now_ms();
    positions(&*store).await;
    commands_round_trip_and_delete(&*store, &run, base).await;
    execution_seq_is_idempotent(&*store, &run, base, caps).await;
    list_executions(&*store, &run, base, caps).await;
    list_commands(&*store, &run, base, caps).await;
    find_by_client_token(&*store, &run, base).await;
    match caps.expiry {
        Expiry::Purge => purge_expired(&*store, &run, base).await,
        Expiry::Ttl => expire_by_ttl(&*store, &run, base).await,
    }
}

/// `got` against `want`: in order when the store orders listings, else as sets (each item
/// exactly once).
fn same_listing<T: Ord + Clone>(caps: Capabilities, got: &[T], want: &[T]) -> (Vec<T>, Vec<T>) {
    let (mut got, mut want) = (got.to_vec(), want.to_vec());
    if !caps.ordering {
        got.sort();
        want.sort();
    }
    (got, want)
}

async fn positions(store: &dyn ReadModel) {
    let before = store.position(0).await.expect("position");
    let next = before + 17;
    commit(store, executions_batch(next, Vec::new())).await;
    assert_eq!(
        store.position(0).await.expect("position"),
        next,
        "commit must record the batch's next offset as the partition's position"
    );
    commit(store, executions_batch(next + 3, Vec::new())).await;
    assert_eq!(store.position(0).await.expect("position"), next + 3);
}

async fn commands_round_trip_and_delete(store: &dyn ReadModel, run: &str, base: TimestampMs) {
    let mut c = command(run, "rt", "AWS-IoT", base, &["x", "y"]);
    let missing = CommandId::parse(format!("{run}-missing")).expect("id");
    assert_eq!(
        store.get_command(&missing).await.expect("get_command"),
        None,
        "an unknown command is None"
    );
    commit(
        store,
        ProjectionBatch {
            partition: 0,
            next_offset: store.position(0).await.expect("position") + 1,
            commands: vec![CommandWrite::Upsert(c.clone())],
            executions: Vec::new(),
        },
    )
    .await;
    assert_eq!(
        store.get_command(&c.command_id).await.expect("get_command"),
        Some(c.clone()),
        "a committed command reads back equal, every field"
    );

    // Updates replace the stored command (and its parameter index).
    c.display_name = "renamed".into();
    c.deprecated = true;
    c.deprecated_at = Some(base + 5);
    c.delete_at = Some(base + 1000);
    c.last_updated_at = base + 5;
    commit(
        store,
        ProjectionBatch {
            partition: 0,
            next_offset: store.position(0).await.expect("position") + 1,
            commands: vec![CommandWrite::Upsert(c.clone())],
            executions: Vec::new(),
        },
    )
    .await;
    let got = store
        .get_command(&c.command_id)
        .await
        .expect("get_command")
        .expect("updated command");
    assert_eq!(got, c, "an upsert replaces the command");
    assert!(
        got.pending_deletion(),
        "pending deletion survives the round trip"
    );

    commit(
        store,
        ProjectionBatch {
            partition: 0,
            next_offset: store.position(0).await.expect("position") + 1,
            commands: vec![CommandWrite::Delete(c.command_id.clone())],
            executions: Vec::new(),
        },
    )
    .await;
    assert_eq!(
        store.get_command(&c.command_id).await.expect("get_command"),
        None,
        "a deleted command is gone"
    );
    let page = store
        .list_commands(&CommandQuery {
            parameter_name: Some("x".into()),
            page_size: 100,
            ..CommandQuery::default()
        })
        .await
        .expect("list_commands");
    assert!(
        page.items.iter().all(|i| i.command_id != c.command_id),
        "a deleted command must leave the parameter-name index too"
    );
}

async fn execution_seq_is_idempotent(
    store: &dyn ReadModel,
    run: &str,
    base: TimestampMs,
    caps: Capabilities,
) {
    let cmd = CommandId::parse(format!("{run}-seq")).expect("id");
    let target = Target::thing(format!("{run}-seq-thing")).expect("target");
    let ttl = base + YEAR_MS;
    let id = format!("{run}-seq-e");
    let v2 = execution(
        &id,
        &cmd,
        &target,
        ExecutionStatus::InProgress,
        base,
        None,
        ttl,
        2,
    );
    let pos = store.position(0).await.expect("position");
    commit(
        store,
        executions_batch(pos + 1, vec![ExecutionWrite::Upsert(v2.clone())]),
    )
    .await;
    let eid = v2.execution_id.clone();
    assert_eq!(
        store.get_execution(&eid).await.expect("get_execution"),
        Some(v2.clone()),
        "a committed execution reads back equal, every field"
    );

    let v1 = execution(
        &id,
        &cmd,
        &target,
        ExecutionStatus::Created,
        base,
        None,
        ttl,
        1,
    );
    let mut v2_other = v2.clone();
    v2_other.status = ExecutionStatus::Failed;
    commit(
        store,
        executions_batch(
            pos + 2,
            vec![ExecutionWrite::Upsert(v1), ExecutionWrite::Upsert(v2_other)],
        ),
    )
    .await;
    if caps.write_timestamps {
        assert_eq!(
            store.get_execution(&eid).await.expect("get_execution"),
            Some(v2.clone()),
            "an upsert whose seq is not above the stored one must change nothing"
        );
    }

    let v4 = execution(
        &id,
        &cmd,
        &target,
        ExecutionStatus::Succeeded,
        base,
        Some(base + 10),
        ttl,
        4,
    );
    let mut v3 = v4.clone();
    v3.seq = 3;
    v3.status = ExecutionStatus::InProgress;
    commit(
        store,
        executions_batch(
            pos + 3,
            vec![
                ExecutionWrite::Upsert(v4.clone()),
                ExecutionWrite::Upsert(v3),
            ],
        ),
    )
    .await;
    assert_eq!(
        store.get_execution(&eid).await.expect("get_execution"),
        Some(v4.clone()),
        "within a batch too, a lower seq after a higher one must not win"
    );
    assert_eq!(store.position(0).await.expect("position"), pos + 3);

    let missing = ExecutionId::parse(format!("{run}-nope")).expect("id");
    assert_eq!(
        store.get_execution(&missing).await.expect("get_execution"),
        None
    );

    let other = execution(
        &format!("{run}-seq-f"),
        &cmd,
        &target,
        ExecutionStatus::Created,
        base,
        None,
        ttl,
        1,
    );
    commit(
        store,
        executions_batch(pos + 4, vec![ExecutionWrite::Upsert(other.clone())]),
    )
    .await;
    let mut got = store
        .get_executions(&[eid.clone(), missing.clone(), other.execution_id.clone()])
        .await
        .expect("get_executions");
    got.sort_by(|a, b| a.execution_id.cmp(&b.execution_id));
    assert_eq!(
        got,
        vec![v4, other.clone()],
        "get_executions returns the existing ones and leaves missing ones out"
    );
    assert!(
        store
            .get_executions(&[])
            .await
            .expect("get_executions of nothing")
            .is_empty()
    );

    commit(
        store,
        executions_batch(
            pos + 5,
            vec![
                ExecutionWrite::Delete(eid.clone()),
                ExecutionWrite::Delete(missing),
            ],
        ),
    )
    .await;
    assert_eq!(
        store.get_execution(&eid).await.expect("get_execution"),
        None,
        "a deleted execution is gone (deleting a missing one is fine)"
    );
    let page = store
        .list_executions(&ExecutionQuery {
            command_id: Some(cmd),
            page_size: 100,
            ..ExecutionQuery::default()
        })
        .await
        .expect("list_executions");
    let ids: Vec<_> = page.items.iter().map(|e| e.execution_id.clone()).collect();
    assert_eq!(
        ids,
        vec![other.execution_id],
        "a deleted execution leaves every listing"
    );
}

/// The executions a query must return, in order (the contract, in memory).
fn expected(all: &[Execution], q: &ExecutionQuery) -> Vec<ExecutionId> {
    let by_completion = q.completed.is_some();
    let mut v: Vec<&Execution> = all
        .iter()
        .filter(|e| {
            q.command_id.as_ref().is_none_or(|c| &e.command_id == c)
                && q.target.as_ref().is_none_or(|t| &e.target == t)
                && (q.statuses.is_empty() || q.statuses.contains(&e.status))
                && q.started.is_none_or(|r| r.contains(e.started_at))
                && q.completed
                    .is_none_or(|r| e.completed_at.is_some_and(|c| r.contains(c)))
        })
        .collect();
    v.sort_by_key(|e| {
        let t = if by_completion {
            e.completed_at.unwrap_or_default()
        } else {
            e.started_at
        };
        (t, e.execution_id.clone())
    });
    if !q.ascending {
        v.reverse();
    }
    v.into_iter().map(|e| e.execution_id.clone()).collect()
}

/// Every page of `q`, checked for page size; only ids starting with `prefix`.
async fn all_execution_pages(
    store: &dyn ReadModel,
    prefix: &str,
    mut q: ExecutionQuery,
) -> Vec<ExecutionId> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let page = within("list_executions", store.list_executions(&q))
            .await
            .unwrap_or_else(|e| panic!("list_executions {q:?}: {e}"));
        assert!(
            page.items.len() <= q.page_size as usize,
            "a page holds at most page_size items: {} > {}",
            page.items.len(),
            q.page_size
        );
        out.extend(
            page.items
                .into_iter()
                .map(|e| e.execution_id)
                .filter(|id| id.as_str().starts_with(prefix)),
        );
        match page.next_token {
            Some(t) => q.page_token = Some(t),
            None => return out,
        }
    }
    panic!("paging never ended for {q:?}");
}

/// An execution is found by its target and client token, with every field (its request
/// fingerprint included); another target, another token or no token finds nothing; a
/// deleted execution is not found any more.
async fn find_by_client_token(store: &dyn ReadModel, run: &str, base: TimestampMs) {
    let cmd = CommandId::parse(format!("{run}-tok")).expect("id");
    let target = Target::thing(format!("{run}-tok-thing")).expect("target");
    let other = Target::thing(format!("{run}-tok-other")).expect("target");
    let ttl = base + YEAR_MS;
    let mut e = execution(
        &format!("{run}-tok-e"),
        &cmd,
        &target,
        ExecutionStatus::Created,
        base,
        None,
        ttl,
        1,
    );
    e.client_token = Some(format!("{run}-token"));
    e.request_fingerprint = 0x5eed_f00d_dead_beef;
    let mut untokened = execution(
        &format!("{run}-tok-n"),
        &cmd,
        &target,
        ExecutionStatus::Created,
        base,
        None,
        ttl,
        1,
    );
    untokened.client_token = None;
    let pos = store.position(0).await.expect("position");
    commit(
        store,
        executions_batch(
            pos + 1,
            vec![
                ExecutionWrite::Upsert(e.clone()),
                ExecutionWrite::Upsert(untokened),
            ],
        ),
    )
    .await;
    let token = format!("{run}-token");
    assert_eq!(
        found(store, &target, &token).await,
        Some(e.clone()),
        "found by target and token, every field"
    );
    for (t, tok, what) in [
        (&other, token.as_str(), "another target"),
        (&target, "no-such-token", "another token"),
    ] {
        assert_eq!(found(store, t, tok).await, None, "{what} finds nothing");
    }
    // A later status change keeps it findable, with its new state.
    let mut later = e.clone();
    later.status = ExecutionStatus::InProgress;
    later.seq = 2;
    commit(
        store,
        executions_batch(pos + 2, vec![ExecutionWrite::Upsert(later.clone())]),
    )
    .await;
    assert_eq!(
        found(store, &target, &token).await,
        Some(later),
        "the stored state, not the first one"
    );
    commit(
        store,
        executions_batch(
            pos + 3,
            vec![ExecutionWrite::Delete(e.execution_id.clone())],
        ),
    )
    .await;
    assert_eq!(
        found(store, &target, &token).await,
        None,
        "a deleted execution is not found"
    );
}

async fn found(store: &dyn ReadModel, target: &Target, token: &str) -> Option<Execution> {
    within("find", store.find_execution_by_token(target, token))
        .await
        .expect("find_execution_by_token")
}

async fn list_executions(store: &dyn ReadModel, run: &str, base: TimestampMs, caps: Capabilities) {
    let c1 = CommandId::parse(format!("{run}-c1")).expect("id");
    let c2 = CommandId::parse(format!("{run}-c2")).expect("id");
    let t1 = Target::thing(format!("{run}-t1")).expect("target");
    let t2 = Target::thing(format!("{run}-t2")).expect("target");
    // Same id as t1 but a client: the kind is part of the target.
    let t1c = Target::new(TargetKind::Client, format!("{run}-t1")).expect("target");
    let statuses = [
        ExecutionStatus::Created,
        ExecutionStatus::InProgress,
        ExecutionStatus::Succeeded,
        ExecutionStatus::Failed,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Canceled,
        ExecutionStatus::Rejected,
    ];
    let ttl = base + YEAR_MS;
    // Other executions of this run (and of other runs) fall in the time-only windows.
    let prefix = format!("{run}-e");
    let mut all = Vec::new();
    for i in 0..21u32 {
        let cmd = if i % 2 == 0 { &c1 } else { &c2 };
        let target = [&t1, &t2, &t1c][(i % 3) as usize];
        let status = statuses[(i % 7) as usize];
        // Pairs share a start time, so ties are broken by id.
        let started = base + i64::from(i / 2) * 1000;
        let completed = (status != ExecutionStatus::Created
            && status != ExecutionStatus::InProgress)
            .then(|| base + 100_000 - i64::from(i / 3) * 700);
        all.push(execution(
            &format!("{run}-e{i:02}"),
            cmd,
            target,
            status,
            started,
            completed,
            ttl,
            1,
        ));
    }
    let pos = store.position(0).await.expect("position");
    // Two batches, so listings span commits.
    let (first, second) = all.split_at(8);
    commit(
        store,
        executions_batch(
            pos + 1,
            first.iter().cloned().map(ExecutionWrite::Upsert).collect(),
        ),
    )
    .await;
    commit(
        store,
        executions_batch(
            pos + 2,
            second.iter().cloned().map(ExecutionWrite::Upsert).collect(),
        ),
    )
    .await;

    let window = |a: i64, b: i64| {
        Some(TimeRange {
            after: Some(base + a),
            before: Some(base + b),
        })
    };
    let mut queries = vec![
        ExecutionQuery {
            command_id: Some(c1.clone()),
            ..ExecutionQuery::default()
        },
        ExecutionQuery {
            command_id: Some(c2.clone()),
            ascending: true,
            ..ExecutionQuery::default()
        },
        ExecutionQuery {
            target: Some(t1.clone()),
            ..ExecutionQuery::default()
        },
        ExecutionQuery {
            target: Some(t1c.clone()),
            ascending: true,
            ..ExecutionQuery::default()
        },
        ExecutionQuery {
            command_id: Some(c1.clone()),
            target: Some(t2.clone()),
            ..ExecutionQuery::default()
        },
        ExecutionQuery {
            command_id: Some(c1.clone()),
            statuses: vec![ExecutionStatus::Succeeded, ExecutionStatus::Failed],
            ..ExecutionQuery::default()
        },
        ExecutionQuery {
            target: Some(t2.clone()),
            statuses: vec![ExecutionStatus::Created],
            ascending: true,
            ..ExecutionQuery::default()
        },
        // Inclusive bounds, landing exactly on start times.
        ExecutionQuery {
            command_id: Some(c1.clone()),
            started: window(2000, 6000),
            ..ExecutionQuery::default()
        },
        ExecutionQuery {
            target: Some(t1.clone()),
            started: Some(TimeRange {
                after: Some(base + 3000),
                before: None,
            }),
            ascending: true,
            ..ExecutionQuery::default()
        },
        // Completion range: sorted by completion time, running executions left out.
        ExecutionQuery {
            command_id: Some(c2.clone()),
            completed: Some(TimeRange::default()),
            ..ExecutionQuery::default()
        },
        ExecutionQuery {
            command_id: Some(c1.clone()),
            completed: window(100_000 - 4 * 700, 100_000 - 700),
            ascending: true,
            ..ExecutionQuery::default()
        },
        ExecutionQuery {
            target: Some(t1c.clone()),
            completed: Some(TimeRange {
                after: None,
                before: Some(base + 100_000 - 2 * 700),
            }),
            statuses: vec![
                ExecutionStatus::TimedOut,
                ExecutionStatus::Canceled,
                ExecutionStatus::Rejected,
            ],
            ..ExecutionQuery::default()
        },
        // No command or target: by time only.
        ExecutionQuery {
            started: window(0, 10_000),
            ..ExecutionQuery::default()
        },
        ExecutionQuery {
            completed: window(0, 100_000),
            ascending: true,
            ..ExecutionQuery::default()
        },
    ];
    for q in &mut queries {
        let want = expected(&all, q);
        assert!(!want.is_empty(), "suite bug: query {q:?} selects nothing");
        for page_size in [1, 2, 5, 100] {
            q.page_size = page_size;
            let got = all_execution_pages(store, &prefix, q.clone()).await;
            let (got, want) = same_listing(caps, &got, &want);
            assert_eq!(
                got, want,
                "list_executions {q:?} (page size {page_size}) must return every matching \
                 execution exactly once, sorted by the sort time then id"
            );
        }
    }

    // A full page of exactly page_size items with nothing after it may or may not carry a
    // token, but following it must end the listing.
    let n = expected(&all, &queries[0]).len() as u32;
    let got = all_execution_pages(
        store,
        &prefix,
        ExecutionQuery {
            page_size: n,
            ..queries[0].clone()
        },
    )
    .await;
    assert_eq!(got.len(), n as usize);

    let bad = store
        .list_executions(&ExecutionQuery {
            command_id: Some(c1.clone()),
            page_size: 2,
            page_token: Some("not a token!".into()),
            ..ExecutionQuery::default()
        })
        .await
        .expect_err("a malformed page token must fail");
    assert!(
        is_invalid_page_token(&bad),
        "a malformed token must be reported as PortError::InvalidPageToken, got {bad:?}"
    );
}

async fn all_command_pages(
    store: &dyn ReadModel,
    run: &str,
    mut q: CommandQuery,
) -> Vec<CommandId> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let page = within("list_commands", store.list_commands(&q))
            .await
            .unwrap_or_else(|e| panic!("list_commands {q:?}: {e}"));
        assert!(page.items.len() <= q.page_size as usize);
        out.extend(
            page.items
                .into_iter()
                .map(|c| c.command_id)
                .filter(|id| id.as_str().starts_with(run)),
        );
        match page.next_token {
            Some(t) => q.page_token = Some(t),
            None => return out,
        }
    }
    panic!("paging never ended for {q:?}");
}

async fn list_commands(store: &dyn ReadModel, run: &str, base: TimestampMs, caps: Capabilities) {
    let ns = format!("{run}-ns");
    let other_ns = format!("{run}-ns2");
    let param = format!("{run}_p");
    let mut all = Vec::new();
    for i in 0..9u32 {
        let namespace = if i % 3 == 2 { &other_ns } else { &ns };
        let params: Vec<&str> = if i % 2 == 0 {
            vec![param.as_str(), "other"]
        } else {
            vec![]
        };
        // Pairs share a creation time, so ties are broken by id.
        let mut c = command(
            run,
            &format!("lc{i}"),
            namespace,
            base + i64::from(i / 2) * 10,
            &params,
        );
        if i == 4 {
            c.deprecated = true;
            c.delete_at = Some(base + 60_000);
        }
        all.push(c);
    }
    commit(
        store,
        ProjectionBatch {
            partition: 0,
            next_offset: store.position(0).await.expect("position") + 1,
            commands: all.iter().cloned().map(CommandWrite::Upsert).collect(),
            executions: Vec::new(),
        },
    )
    .await;

    let expect = |q: &CommandQuery| {
        let mut v: Vec<&Command> = all
            .iter()
            .filter(|c| {
                q.namespace.as_ref().is_none_or(|n| &c.namespace == n)
                    && q.parameter_name
                        .as_ref()
                        .is_none_or(|p| c.parameters.iter().any(|x| &x.name == p))
            })
            .collect();
        v.sort_by_key(|c| (c.created_at, c.command_id.clone()));
        if !q.ascending {
            v.reverse();
        }
        v.into_iter()
            .map(|c| c.command_id.clone())
            .collect::<Vec<_>>()
    };
    let queries = [
        CommandQuery {
            namespace: Some(ns.clone()),
            ..CommandQuery::default()
        },
        CommandQuery {
            namespace: Some(ns.clone()),
            ascending: true,
            ..CommandQuery::default()
        },
        CommandQuery {
            namespace: Some(other_ns.clone()),
            ..CommandQuery::default()
        },
        CommandQuery {
            parameter_name: Some(param.clone()),
            ..CommandQuery::default()
        },
        CommandQuery {
            namespace: Some(ns.clone()),
            parameter_name: Some(param.clone()),
            ascending: true,
            ..CommandQuery::default()
        },
    ];
    for q in queries {
        let want = expect(&q);
        assert!(!want.is_empty(), "suite bug: {q:?} selects nothing");
        for page_size in [1, 2, 4, 100] {
            let got = all_command_pages(
                store,
                run,
                CommandQuery {
                    page_size,
                    ..q.clone()
                },
            )
            .await;
            let (got, want) = same_listing(caps, &got, &want);
            assert_eq!(
                got, want,
                "list_commands {q:?} (page size {page_size}) must return every matching \
                 command exactly once, sorted by creation time then id (pending deletion included)"
            );
        }
    }

    let bad = store
        .list_commands(&CommandQuery {
            namespace: Some(ns.clone()),
            page_size: 2,
            page_token: Some("%%%".into()),
            ..CommandQuery::default()
        })
        .await
        .expect_err("a malformed page token must fail");
    assert!(is_invalid_page_token(&bad), "got {bad:?}");
}

async fn purge_expired(store: &dyn ReadModel, run: &str, base: TimestampMs) {
    let cmd = CommandId::parse(format!("{run}-ttl")).expect("id");
    let target = Target::thing(format!("{run}-ttl-thing")).expect("target");
    let old = execution(
        &format!("{run}-ttl-old"),
        &cmd,
        &target,
        ExecutionStatus::Succeeded,
        base - 2000,
        Some(base - 1500),
        base - 1,
        1,
    );
    let edge = execution(
        &format!("{run}-ttl-edge"),
        &cmd,
        &target,
        ExecutionStatus::Succeeded,
        base - 2000,
        Some(base - 1500),
        base,
        1,
    );
    let young = execution(
        &format!("{run}-ttl-young"),
        &cmd,
        &target,
        ExecutionStatus::Created,
        base,
        None,
        base + YEAR_MS,
        1,
    );
    commit(
        store,
        executions_batch(
            store.position(0).await.expect("position") + 1,
            vec![
                ExecutionWrite::Upsert(old.clone()),
                ExecutionWrite::Upsert(edge.clone()),
                ExecutionWrite::Upsert(young.clone()),
            ],
        ),
    )
    .await;
    let n = within("purge_expired", store.purge_expired(base))
        .await
        .expect("purge_expired");
    assert!(n >= 1, "purge_expired must count what it removed, got {n}");
    assert_eq!(
        store.get_execution(&old.execution_id).await.expect("get"),
        None,
        "an execution whose time_to_live is before now is purged"
    );
    assert_eq!(
        store.get_execution(&edge.execution_id).await.expect("get"),
        Some(edge),
        "time_to_live == now is not expired yet"
    );
    assert_eq!(
        store.get_execution(&young.execution_id).await.expect("get"),
        Some(young.clone()),
        "a live execution survives the purge"
    );
    let left = all_execution_pages(
        store,
        &format!("{run}-ttl-"),
        ExecutionQuery {
            command_id: Some(cmd),
            ascending: true,
            page_size: 10,
            ..ExecutionQuery::default()
        },
    )
    .await;
    assert!(
        !left.contains(&old.execution_id),
        "a purged execution leaves the listings"
    );
    assert_eq!(left.len(), 2);
}

/// [`Expiry::Ttl`]: records expire by themselves. One already expired when written is never
/// readable, a live one is until its `time_to_live`, and then disappears from reads and
/// listings without any purge.
async fn expire_by_ttl(store: &dyn ReadModel, run: &str, base: TimestampMs) {
    let cmd = CommandId::parse(format!("{run}-ttl")).expect("id");
    let target = Target::thing(format!("{run}-ttl-thing")).expect("target");
    let old = execution(
        &format!("{run}-ttl-old"),
        &cmd,
        &target,
        ExecutionStatus::Succeeded,
        base - 2000,
        Some(base - 1500),
        base - 1,
        1,
    );
    let young = execution(
        &format!("{run}-ttl-young"),
        &cmd,
        &target,
        ExecutionStatus::Created,
        base,
        None,
        base + YEAR_MS,
        1,
    );
    // TTLs have a granularity of seconds: this one lives for one or two.
    let soon_ttl = SystemClock.now_ms() + 1500;
    let soon = execution(
        &format!("{run}-ttl-soon"),
        &cmd,
        &target,
        ExecutionStatus::InProgress,
        base,
        None,
        soon_ttl,
        1,
    );
    commit(
        store,
        executions_batch(
            store.position(0).await.expect("position") + 1,
            vec![
                ExecutionWrite::Upsert(old.clone()),
                ExecutionWrite::Upsert(young.clone()),
                ExecutionWrite::Upsert(soon.clone()),
            ],
        ),
    )
    .await;
    assert_eq!(
        store.get_execution(&old.execution_id).await.expect("get"),
        None,
        "an execution whose time_to_live has passed is never readable"
    );
    assert_eq!(
        store.get_execution(&young.execution_id).await.expect("get"),
        Some(young.clone()),
        "a live execution is readable"
    );
    let ids = all_execution_pages(
        store,
        &format!("{run}-ttl-"),
        ExecutionQuery {
            command_id: Some(cmd.clone()),
            page_size: 10,
            ..ExecutionQuery::default()
        },
    )
    .await;
    assert!(
        !ids.contains(&old.execution_id),
        "an expired execution is not listed"
    );
    assert!(ids.contains(&young.execution_id));
    within("purge_expired", store.purge_expired(SystemClock.now_ms()))
        .await
        .expect("purge_expired succeeds even with nothing left to purge");

    // Wait (bounded) for the short-lived one to expire by itself.
    let deadline = tokio::time::Instant::now() + super::WAIT;
    loop {
        let got = store.get_execution(&soon.execution_id).await.expect("get");
        let now = SystemClock.now_ms();
        match got {
            None => {
                // A second of slack for the server's clock.
                assert!(
                    now + 1000 >= soon_ttl,
                    "an execution must stay readable until its time_to_live ({} ms early)",
                    soon_ttl - now
                );
                break;
            }
            Some(e) => assert_eq!(e, soon),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an execution must expire by itself after its time_to_live"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let ids = all_execution_pages(
        store,
        &format!("{run}-ttl-"),
        ExecutionQuery {
            command_id: Some(cmd),
            page_size: 10,
            ..ExecutionQuery::default()
        },
    )
    .await;
    assert_eq!(
        ids,
        vec![young.execution_id],
        "an expired execution leaves the listings too"
    );
}
