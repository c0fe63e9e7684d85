//! Executions: listing — order, paging, filters and their errors.

use std::collections::HashMap;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Server, client, thing};
use pb::ExecutionStatus as St;
use tonic::Code;

use crate::{Result, given};

/// Seven executions of `alpha` and `beta` on `thing/t1`, `thing/t2`, `client/k1` and
/// `thing/k1`, in every kind of state: e1 SUCCEEDED, e2 FAILED, e3 CANCELED, e4 CREATED,
/// e5 IN_PROGRESS, e6 CREATED, e7 CREATED; `full` holds each one as Get returns it.
struct Seven {
    server: Server,
    reg: Registry,
    e: [String; 7],
    full: HashMap<String, pb::CommandExecution>,
}

impl Seven {
    /// Descending by start time, ties broken by id: the default order.
    fn key(&self, id: &String) -> (i64, String) {
        (ms(&self.full[id].started_at), id.clone())
    }

    fn newest_first(&self, mut ids: Vec<String>) -> Vec<String> {
        ids.sort_by_key(|id| std::cmp::Reverse(self.key(id)));
        ids
    }

    fn all_newest_first(&self) -> Vec<String> {
        self.newest_first(self.full.keys().cloned().collect())
    }

    fn started(&self, id: &String) -> i64 {
        ms(&self.full[id].started_at)
    }

    fn completed(&self, id: &String) -> Option<i64> {
        self.full[id]
            .completed_at
            .as_ref()
            .map(|_| ms(&self.full[id].completed_at))
    }
}

async fn given_seven_executions(name: &str) -> anyhow::Result<Seven> {
    let (server, mut reg, mut disp) = given(name, &["alpha", "beta"]).await?;
    let (t1, t2, k1, thing_k1) = (thing("t1"), thing("t2"), client("k1"), thing("k1"));
    let e1 = start(&mut disp, "alpha", t1.clone()).await?;
    let e2 = start(&mut disp, "alpha", t2.clone()).await?;
    let e3 = start(&mut disp, "beta", t1.clone()).await?;
    let e4 = start(&mut disp, "beta", k1.clone()).await?;
    let e5 = start(&mut disp, "alpha", k1.clone()).await?;
    let e6 = start(&mut disp, "alpha", t1.clone()).await?;
    let e7 = start(&mut disp, "beta", thing_k1.clone()).await?;
    settle(&server, &mut reg, &t1, &e1, St::Succeeded).await?;
    settle(&server, &mut reg, &t2, &e2, St::Failed).await?;
    disp.cancel_command_execution(pb::CancelCommandExecutionRequest {
        execution_id: e3.clone(),
        ..Default::default()
    })
    .await?;
    settle(&server, &mut reg, &k1, &e5, St::InProgress).await?;

    let e = [e1, e2, e3, e4, e5, e6, e7];
    let mut full = HashMap::new();
    for id in &e {
        full.insert(id.clone(), get_execution(&mut reg, id).await?);
    }
    let status_of = |id: &str| full[id].status();
    assert_eq!(
        e.each_ref().map(|id| status_of(id)),
        [
            St::Succeeded,
            St::Failed,
            St::Canceled,
            St::Created,
            St::InProgress,
            St::Created,
            St::Created
        ]
    );
    Ok(Seven {
        server,
        reg,
        e,
        full,
    })
}

fn ascending() -> pb::ListCommandExecutionsRequest {
    pb::ListCommandExecutionsRequest {
        sort_order: pb::SortOrder::Ascending as i32,
        ..Default::default()
    }
}

fn range(after: Option<i64>, before: Option<i64>) -> pb::TimeFilter {
    pb::TimeFilter {
        after: after.map(ts_from_ms),
        before: before.map(ts_from_ms),
    }
}

fn within_range(t: i64, after: Option<i64>, before: Option<i64>) -> bool {
    after.is_none_or(|a| t >= a) && before.is_none_or(|b| t <= b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_executions_defaults_to_newest_start_first_with_every_summary_field() -> Result {
    let mut s = given_seven_executions("list-executions-default").await?;

    let all = s
        .reg
        .list_command_executions(pb::ListCommandExecutionsRequest::default())
        .await?
        .into_inner();

    assert!(all.next_token.is_empty());
    assert_eq!(execution_ids(&all.command_executions), s.all_newest_first());
    for summary in &all.command_executions {
        let e = &s.full[&summary.execution_id];
        assert_eq!(
            (
                &summary.command_id,
                &summary.command_arn,
                &summary.target,
                &summary.target_arn
            ),
            (&e.command_id, &e.command_arn, &e.target, &e.target_arn)
        );
        assert_eq!(
            (
                summary.status,
                summary.created_at,
                summary.started_at,
                summary.completed_at
            ),
            (e.status, e.created_at, e.started_at, e.completed_at)
        );
    }
    s.server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_executions_sorts_ascending() -> Result {
    let mut s = given_seven_executions("list-executions-ascending").await?;
    let mut expected_asc = s.all_newest_first();
    expected_asc.reverse();

    let (listed, _) = list_all_executions(&mut s.reg, ascending()).await?;

    assert_eq!(execution_ids(&listed), expected_asc);
    s.server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_visits_every_execution_once_in_order_both_ways() -> Result {
    let mut s = given_seven_executions("list-executions-paging").await?;
    let expected = s.all_newest_first();
    let mut expected_asc = expected.clone();
    expected_asc.reverse();
    for size in [1, 2, 3, 7] {
        let (paged, pages) = list_all_executions(
            &mut s.reg,
            pb::ListCommandExecutionsRequest {
                max_results: size,
                ..Default::default()
            },
        )
        .await?;
        assert_eq!(execution_ids(&paged), expected, "page size {size}");
        assert_eq!(pages, 7usize.div_ceil(size as usize), "page size {size}");
        let (paged, _) = list_all_executions(
            &mut s.reg,
            pb::ListCommandExecutionsRequest {
                max_results: size,
                ..ascending()
            },
        )
        .await?;
        assert_eq!(
            execution_ids(&paged),
            expected_asc,
            "page size {size}, ascending"
        );
    }
    s.server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_executions_filters_by_command_target_and_status() -> Result {
    let mut s = given_seven_executions("list-executions-filters").await?;
    let [e1, e2, e3, e4, e5, e6, e7] = s.e.clone();
    let (t1, t2, k1, thing_k1) = (thing("t1"), thing("t2"), client("k1"), thing("k1"));
    let base = pb::ListCommandExecutionsRequest::default;
    let cases: Vec<(&str, pb::ListCommandExecutionsRequest, Vec<&String>)> = vec![
        (
            "command alpha",
            (pb::ListCommandExecutionsRequest {
                command_id: "alpha".into(),
                ..base()
            }),
            vec![&e1, &e2, &e5, &e6],
        ),
        (
            "command beta",
            (pb::ListCommandExecutionsRequest {
                command_id: "beta".into(),
                ..base()
            }),
            vec![&e3, &e4, &e7],
        ),
        (
            "unknown command",
            (pb::ListCommandExecutionsRequest {
                command_id: "ghost".into(),
                ..base()
            }),
            vec![],
        ),
        (
            "thing t1",
            (pb::ListCommandExecutionsRequest {
                target: Some(t1.clone()),
                ..base()
            }),
            vec![&e1, &e3, &e6],
        ),
        (
            "client k1",
            (pb::ListCommandExecutionsRequest {
                target: Some(k1.clone()),
                ..base()
            }),
            vec![&e4, &e5],
        ),
        (
            "thing k1 is not client k1",
            (pb::ListCommandExecutionsRequest {
                target: Some(thing_k1.clone()),
                ..base()
            }),
            vec![&e7],
        ),
        (
            "alpha on t1",
            (pb::ListCommandExecutionsRequest {
                command_id: "alpha".into(),
                target: Some(t1.clone()),
                ..base()
            }),
            vec![&e1, &e6],
        ),
        (
            "beta on t2",
            (pb::ListCommandExecutionsRequest {
                command_id: "beta".into(),
                target: Some(t2.clone()),
                ..base()
            }),
            vec![],
        ),
        (
            "SUCCEEDED",
            (pb::ListCommandExecutionsRequest {
                status: St::Succeeded as i32,
                ..base()
            }),
            vec![&e1],
        ),
        (
            "CREATED",
            (pb::ListCommandExecutionsRequest {
                status: St::Created as i32,
                ..base()
            }),
            vec![&e4, &e6, &e7],
        ),
        (
            "terminal statuses",
            (pb::ListCommandExecutionsRequest {
                statuses: vec![St::Succeeded as i32, St::Failed as i32, St::Canceled as i32],
                ..base()
            }),
            vec![&e1, &e2, &e3],
        ),
        (
            "status and statuses combine",
            (pb::ListCommandExecutionsRequest {
                status: St::InProgress as i32,
                statuses: vec![St::Canceled as i32, St::InProgress as i32],
                ..base()
            }),
            vec![&e3, &e5],
        ),
        (
            "CREATED alpha on t1",
            (pb::ListCommandExecutionsRequest {
                status: St::Created as i32,
                command_id: "alpha".into(),
                target: Some(t1.clone()),
                ..base()
            }),
            vec![&e6],
        ),
        (
            "REJECTED",
            (pb::ListCommandExecutionsRequest {
                status: St::Rejected as i32,
                ..base()
            }),
            vec![],
        ),
    ];
    for (label, req, ids) in cases {
        let want: Vec<String> = ids.into_iter().cloned().collect();
        let (got, _) = list_all_executions(
            &mut s.reg,
            pb::ListCommandExecutionsRequest {
                max_results: 2,
                ..req.clone()
            },
        )
        .await?;
        assert_eq!(sorted(execution_ids(&got)), sorted(want.clone()), "{label}");
        assert_eq!(
            execution_ids(&got),
            s.newest_first(want),
            "{label}: descending by start"
        );
    }
    s.server.shutdown().await
}

/// Time filters have inclusive bounds: compared with the same filter applied locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_time_filter_keeps_the_executions_started_in_its_range() -> Result {
    let mut s = given_seven_executions("list-executions-started").await?;
    let [_, e2, e3, e4, e5, e6, _] = &s.e;
    let started_ranges = [
        (Some(s.started(e3)), Some(s.started(e5))),
        (Some(s.started(e6)), None),
        (None, Some(s.started(e2))),
        (Some(s.started(e4)), Some(s.started(e4))),
        (Some(0), Some(1)),
    ];
    for (after, before) in started_ranges {
        let req = pb::ListCommandExecutionsRequest {
            started_time_filter: Some(range(after, before)),
            ..Default::default()
        };
        let (got, _) = list_all_executions(&mut s.reg, req).await?;
        let want = s.newest_first(
            s.full
                .keys()
                .filter(|id| within_range(s.started(id), after, before))
                .cloned()
                .collect(),
        );
        assert_eq!(
            execution_ids(&got),
            want,
            "started in {after:?}..={before:?}"
        );
    }
    s.server.shutdown().await
}

/// A completion filter keeps completed executions only, sorted by completion time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_time_filter_keeps_completed_executions_by_completion_time() -> Result {
    let s = given_seven_executions("list-executions-completed").await?;
    let [e1, e2, e3, ..] = s.e.clone();
    let completion_key = |id: &String| (s.completed(id).unwrap_or_default(), id.clone());
    for (after, before) in [
        (None, None),
        (s.completed(&e2), None),
        (None, s.completed(&e2)),
        (s.completed(&e1), s.completed(&e3)),
    ] {
        for ascending in [false, true] {
            let req = pb::ListCommandExecutionsRequest {
                completed_time_filter: Some(range(after, before)),
                sort_order: if ascending {
                    pb::SortOrder::Ascending as i32
                } else {
                    0
                },
                max_results: 1,
                ..Default::default()
            };
            let (got, _) = list_all_executions(&mut s.reg.clone(), req).await?;
            let mut want: Vec<String> = s
                .full
                .keys()
                .filter(|id| {
                    s.completed(id)
                        .is_some_and(|t| within_range(t, after, before))
                })
                .cloned()
                .collect();
            want.sort_by_key(completion_key);
            if !ascending {
                want.reverse();
            }
            assert_eq!(
                execution_ids(&got),
                want,
                "completed in {after:?}..={before:?}, ascending {ascending}"
            );
        }
    }
    assert_eq!(
        sorted(execution_ids(
            &list_all_executions(
                &mut s.reg.clone(),
                pb::ListCommandExecutionsRequest {
                    completed_time_filter: Some(range(None, None)),
                    ..Default::default()
                }
            )
            .await?
            .0
        )),
        sorted(vec![e1.clone(), e2.clone(), e3.clone()])
    );
    s.server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_time_filters_combine_with_a_command_filter() -> Result {
    let mut s = given_seven_executions("list-executions-both-filters").await?;
    let [e1, e2, ..] = s.e.clone();
    let both = pb::ListCommandExecutionsRequest {
        command_id: "alpha".into(),
        started_time_filter: Some(range(Some(s.started(&e1)), Some(s.started(&e2)))),
        completed_time_filter: Some(range(None, None)),
        ..Default::default()
    };

    let (listed, _) = list_all_executions(&mut s.reg, both).await?;

    assert_eq!(sorted(execution_ids(&listed)), sorted(vec![e1, e2]));
    s.server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_executions_refuses_bad_filters_and_page_tokens() -> Result {
    let (server, mut reg, _) = given("list-executions-errors", &["alpha", "beta"]).await?;
    let base = pb::ListCommandExecutionsRequest::default;
    let bad: Vec<(pb::ListCommandExecutionsRequest, &str, Vec<&str>)> = vec![
        (
            pb::ListCommandExecutionsRequest {
                max_results: 101,
                ..base()
            },
            "max_results",
            vec!["between 1 and 100", "101"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                max_results: -5,
                ..base()
            },
            "max_results",
            vec!["-5"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                started_time_filter: Some(range(Some(2_000), Some(1_999))),
                ..base()
            },
            "started_time_filter",
            vec!["after", "before", "2000", "1999"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                completed_time_filter: Some(range(Some(5), Some(4))),
                ..base()
            },
            "completed_time_filter",
            vec!["after", "before"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                started_time_filter: Some(pb::TimeFilter {
                    after: Some(prost_types::Timestamp {
                        seconds: 1,
                        nanos: -1,
                    }),
                    before: None,
                }),
                ..base()
            },
            "started_time_filter.after",
            vec!["nanos"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                status: 42,
                ..base()
            },
            "status",
            vec!["42"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                statuses: vec![St::Created as i32, 0],
                ..base()
            },
            "statuses[1]",
            vec!["EXECUTION_STATUS_UNSPECIFIED"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                namespace: "AWS-IoT-FleetWise".into(),
                ..base()
            },
            "namespace",
            vec!["AWS-IoT"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                command_id: "a/b".into(),
                ..base()
            },
            "command_id",
            vec!["'/'"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                target: Some(target_of_kind(0, "t1")),
                ..base()
            },
            "target.kind",
            vec!["THING, CLIENT"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                target: Some(client("a#b")),
                ..base()
            },
            "target.id",
            vec!["'#'"],
        ),
        (
            pb::ListCommandExecutionsRequest {
                sort_order: 3,
                ..base()
            },
            "sort_order",
            vec!["ASCENDING, DESCENDING"],
        ),
    ];
    for (req, field, needles) in bad {
        expect_invalid(reg.list_command_executions(req).await, field, &needles);
    }
    let command_token = {
        reg.list_commands(pb::ListCommandsRequest {
            max_results: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .next_token
    };
    assert!(!command_token.is_empty());
    for token in ["%%%", "Zm9v", command_token.as_str()] {
        let req = pb::ListCommandExecutionsRequest {
            next_token: token.into(),
            ..base()
        };
        expect_code(
            reg.list_command_executions(req).await,
            Code::InvalidArgument,
            &["next_token"],
        );
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_iot_namespace_is_the_default_one() -> Result {
    let mut s = given_seven_executions("list-executions-namespace").await?;
    let ns = pb::ListCommandExecutionsRequest {
        namespace: "AWS-IoT".into(),
        ..Default::default()
    };

    let (listed, _) = list_all_executions(&mut s.reg, ns).await?;

    assert_eq!(listed.len(), 7);
    s.server.shutdown().await
}
