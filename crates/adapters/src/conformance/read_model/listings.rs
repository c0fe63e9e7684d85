//! Execution listings, against the contract computed in memory, and page tokens.

use std::sync::Arc;

use fleetcmd_domain::ports::{
    CommandQuery, CommandWrite, ExecutionQuery, ExecutionWrite, ReadModel, TimeRange,
};
use fleetcmd_domain::{CommandId, Execution, ExecutionStatus, Target, TargetKind};

use super::{Capabilities, command, commit_next, execution, listed, moved, start};
use crate::conformance::within;
use crate::is_invalid_page_token;

/// The executions a query must return, in order (the contract, in memory).
fn expected(all: &[Execution], q: &ExecutionQuery) -> Vec<String> {
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
    v.into_iter()
        .map(|e| e.execution_id.as_str().to_owned())
        .collect()
}

/// 21 executions over two commands, two things and a client with a thing's id, in every
/// status, committed in two batches so listings span commits. Pairs share a start time, so
/// ties are broken by id.
struct Fixture {
    base: i64,
    /// The prefix of the fixture's execution ids; other executions (of other checks and runs)
    /// also fall in the time-only windows.
    prefix: String,
    all: Vec<Execution>,
    c1: CommandId,
    c2: CommandId,
    t1: Target,
    t2: Target,
    /// Same id as `t1` but a client: the kind is part of the target.
    t1c: Target,
}

async fn fixture(store: &dyn ReadModel) -> Fixture {
    let (run, base) = start("rm");
    let c1 = CommandId::parse(format!("{run}-c1")).expect("id");
    let c2 = CommandId::parse(format!("{run}-c2")).expect("id");
    let t1 = Target::thing(format!("{run}-t1")).expect("target");
    let t2 = Target::thing(format!("{run}-t2")).expect("target");
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
    let mut all = Vec::new();
    for i in 0..21u32 {
        let cmd = if i % 2 == 0 { &c1 } else { &c2 };
        let target = [&t1, &t2, &t1c][(i % 3) as usize];
        let status = statuses[(i % 7) as usize];
        let started = base + i64::from(i / 2) * 1000;
        let completed = (status != ExecutionStatus::Created
            && status != ExecutionStatus::InProgress)
            .then(|| base + 100_000 - i64::from(i / 3) * 700);
        let e = execution(&format!("{run}-e{i:02}"), cmd, target, started);
        all.push(moved(e, status, completed, 1));
    }
    let (first, second) = all.split_at(8);
    for part in [first, second] {
        let writes = part.iter().cloned().map(ExecutionWrite::Upsert).collect();
        commit_next(store, Vec::new(), writes).await;
    }
    Fixture {
        base,
        prefix: format!("{run}-e"),
        all,
        c1,
        c2,
        t1,
        t2,
        t1c,
    }
}

impl Fixture {
    /// `[base + a, base + b]`.
    fn window(&self, a: i64, b: i64) -> Option<TimeRange> {
        Some(TimeRange {
            after: Some(self.base + a),
            before: Some(self.base + b),
        })
    }

    /// Each query in every page size must return every matching execution exactly once,
    /// sorted by the sort time then id.
    async fn check(&self, store: &dyn ReadModel, queries: Vec<ExecutionQuery>) {
        for mut q in queries {
            let want = expected(&self.all, &q);
            assert!(!want.is_empty(), "suite bug: query {q:?} selects nothing");
            for page_size in [1, 2, 5, 100] {
                q.page_size = page_size;
                let got = listed(store, &self.prefix, &q).await;
                assert_eq!(
                    got, want,
                    "list_executions {q:?} (page size {page_size}) must return every matching \
                     execution exactly once, sorted by the sort time then id"
                );
            }
        }
    }

    fn by_command(&self, c: &CommandId) -> ExecutionQuery {
        ExecutionQuery {
            command_id: Some(c.clone()),
            ..ExecutionQuery::default()
        }
    }

    fn by_target(&self, t: &Target) -> ExecutionQuery {
        ExecutionQuery {
            target: Some(t.clone()),
            ..ExecutionQuery::default()
        }
    }
}

/// Listings by command, by target (whose kind counts), by both, and by statuses.
pub async fn execution_listings_filter_by_command_and_target(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let f = fixture(&*store).await;
    let queries = vec![
        f.by_command(&f.c1),
        ExecutionQuery {
            ascending: true,
            ..f.by_command(&f.c2)
        },
        f.by_target(&f.t1),
        ExecutionQuery {
            ascending: true,
            ..f.by_target(&f.t1c)
        },
        ExecutionQuery {
            target: Some(f.t2.clone()),
            ..f.by_command(&f.c1)
        },
        ExecutionQuery {
            statuses: vec![ExecutionStatus::Succeeded, ExecutionStatus::Failed],
            ..f.by_command(&f.c1)
        },
        ExecutionQuery {
            statuses: vec![ExecutionStatus::Created],
            ascending: true,
            ..f.by_target(&f.t2)
        },
    ];
    f.check(&*store, queries).await;
}

/// Listings by start time: inclusive bounds landing exactly on start times, an open bound,
/// and a window with neither command nor target.
pub async fn execution_listings_filter_by_start_time(store: Arc<dyn ReadModel>, _: Capabilities) {
    let f = fixture(&*store).await;
    let queries = vec![
        ExecutionQuery {
            started: f.window(2000, 6000),
            ..f.by_command(&f.c1)
        },
        ExecutionQuery {
            started: Some(TimeRange {
                after: Some(f.base + 3000),
                before: None,
            }),
            ascending: true,
            ..f.by_target(&f.t1)
        },
        ExecutionQuery {
            started: f.window(0, 10_000),
            ..ExecutionQuery::default()
        },
    ];
    f.check(&*store, queries).await;
}

/// A completion range sorts by completion time and leaves running executions out; with
/// statuses, an open bound, and with neither command nor target.
pub async fn execution_listings_filter_and_sort_by_completion_time(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let f = fixture(&*store).await;
    let queries = vec![
        ExecutionQuery {
            completed: Some(TimeRange::default()),
            ..f.by_command(&f.c2)
        },
        ExecutionQuery {
            completed: f.window(100_000 - 4 * 700, 100_000 - 700),
            ascending: true,
            ..f.by_command(&f.c1)
        },
        ExecutionQuery {
            completed: Some(TimeRange {
                after: None,
                before: Some(f.base + 100_000 - 2 * 700),
            }),
            statuses: vec![
                ExecutionStatus::TimedOut,
                ExecutionStatus::Canceled,
                ExecutionStatus::Rejected,
            ],
            ..f.by_target(&f.t1c)
        },
        ExecutionQuery {
            completed: f.window(0, 100_000),
            ascending: true,
            ..ExecutionQuery::default()
        },
    ];
    f.check(&*store, queries).await;
}

/// A full page of exactly `page_size` items with nothing after it may or may not carry a
/// token, but following it must end the listing.
pub async fn a_full_last_page_ends_the_listing(store: Arc<dyn ReadModel>, _: Capabilities) {
    let f = fixture(&*store).await;
    let q = f.by_command(&f.c1);
    let n = expected(&f.all, &q).len() as u32;
    let full = ExecutionQuery {
        page_size: n,
        ..q.clone()
    };
    let got = listed(&*store, &f.prefix, &full).await;
    assert_eq!(got.len(), n as usize);
}

/// An execution listing refuses a page token that does not decode.
pub async fn malformed_execution_page_tokens_are_refused(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let (run, _) = start("rm");
    let bad = within(
        "list_executions",
        store.list_executions(&ExecutionQuery {
            command_id: Some(CommandId::parse(format!("{run}-c1")).expect("id")),
            page_size: 2,
            page_token: Some("not a token!".into()),
            ..ExecutionQuery::default()
        }),
    )
    .await
    .expect_err("a malformed page token must fail");
    assert!(
        is_invalid_page_token(&bad),
        "a malformed token must be reported as PortError::InvalidPageToken, got {bad:?}"
    );
}

/// A token a command listing issued is refused by an execution listing, and the other way
/// round.
pub async fn page_tokens_from_another_listing_are_refused(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (run, base) = start("rm");
    let ns = format!("{run}-ns");
    let cmd = CommandId::parse(format!("{run}-c")).expect("id");
    let target = Target::thing(format!("{run}-t")).expect("target");
    let commands = (0..3)
        .map(|i| CommandWrite::Upsert(command(&run, &format!("tok{i}"), &ns, base + i, &[])))
        .collect();
    let executions = (0..3)
        .map(|i| ExecutionWrite::Upsert(execution(&format!("{run}-e{i}"), &cmd, &target, base)))
        .collect();
    commit_next(store, commands, executions).await;
    let commands_query = CommandQuery {
        namespace: Some(ns),
        page_size: 1,
        ..CommandQuery::default()
    };
    let executions_query = ExecutionQuery {
        command_id: Some(cmd),
        page_size: 1,
        ..ExecutionQuery::default()
    };
    let command_token = within("list_commands", store.list_commands(&commands_query))
        .await
        .expect("first page of commands")
        .next_token
        .expect("three commands, pages of one: a token");
    let execution_token = within("list_executions", store.list_executions(&executions_query))
        .await
        .expect("first page of executions")
        .next_token
        .expect("three executions, pages of one: a token");

    let foreign = within(
        "list_executions",
        store.list_executions(&ExecutionQuery {
            page_token: Some(command_token),
            ..executions_query
        }),
    )
    .await
    .expect_err("a command-listing token used for executions");
    assert!(is_invalid_page_token(&foreign), "{foreign:?}");
    let foreign = within(
        "list_commands",
        store.list_commands(&CommandQuery {
            page_token: Some(execution_token),
            ..commands_query
        }),
    )
    .await
    .expect_err("an execution-listing token used for commands");
    assert!(is_invalid_page_token(&foreign), "{foreign:?}");
}
