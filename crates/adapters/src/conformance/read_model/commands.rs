//! Commands: round trips, replacing upserts, deletes, and listings.

use std::sync::Arc;

use fleetcmd_domain::ports::{CommandQuery, CommandWrite, ReadModel};
use fleetcmd_domain::{Command, CommandId, TimestampMs};

use super::{Capabilities, command, commit_next, listed, start};
use crate::conformance::within;
use crate::is_invalid_page_token;

async fn get_command(store: &dyn ReadModel, id: &CommandId) -> Option<Command> {
    within("get_command", store.get_command(id))
        .await
        .expect("get_command")
}

/// A command `<run>-<name>` with parameters `x` and `y`, committed; its run and start time.
async fn committed(store: &dyn ReadModel, name: &str) -> (String, TimestampMs, Command) {
    let (run, base) = start("rm");
    let c = command(&run, name, "AWS-IoT", base, &["x", "y"]);
    commit_next(store, vec![CommandWrite::Upsert(c.clone())], Vec::new()).await;
    (run, base, c)
}

/// An unknown command is `None`; a committed one reads back equal, every field.
pub async fn commands_round_trip_every_field(store: Arc<dyn ReadModel>, _: Capabilities) {
    let store = &*store;
    let (run, _, c) = committed(store, "rt").await;
    let missing = CommandId::parse(format!("{run}-missing")).expect("id");
    assert_eq!(
        get_command(store, &missing).await,
        None,
        "an unknown command is None"
    );
    assert_eq!(
        get_command(store, &c.command_id).await,
        Some(c.clone()),
        "a committed command reads back equal, every field"
    );
}

/// An upsert replaces the stored command (and its parameter index); pending deletion
/// survives the round trip.
pub async fn command_upserts_replace_the_stored_command(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (_, base, mut c) = committed(store, "up").await;
    c.display_name = "renamed".into();
    c.deprecated = true;
    c.deprecated_at = Some(base + 5);
    c.delete_at = Some(base + 1000);
    c.last_updated_at = base + 5;
    commit_next(store, vec![CommandWrite::Upsert(c.clone())], Vec::new()).await;
    let got = get_command(store, &c.command_id)
        .await
        .expect("updated command");
    assert_eq!(got, c, "an upsert replaces the command");
    assert!(
        got.pending_deletion(),
        "pending deletion survives the round trip"
    );
}

/// A deleted command is gone, from gets and from the parameter-name index.
pub async fn deleted_commands_leave_gets_and_the_parameter_index(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (run, _, c) = committed(store, "del").await;
    commit_next(
        store,
        vec![CommandWrite::Delete(c.command_id.clone())],
        Vec::new(),
    )
    .await;
    assert_eq!(
        get_command(store, &c.command_id).await,
        None,
        "a deleted command is gone"
    );
    let q = CommandQuery {
        parameter_name: Some("x".into()),
        page_size: 100,
        ..CommandQuery::default()
    };
    let ids = listed(store, &run, &q).await;
    assert!(
        !ids.iter().any(|id| id == c.command_id.as_str()),
        "a deleted command must leave the parameter-name index too"
    );
}

/// Listings by namespace and parameter name, either direction, in every page size: every
/// matching command exactly once, by creation time then id (pending deletion included).
pub async fn command_listings_filter_by_namespace_and_parameter(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (run, base) = start("rm");
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
            &run,
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
    commit_next(
        store,
        all.iter().cloned().map(CommandWrite::Upsert).collect(),
        Vec::new(),
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
            .map(|c| c.command_id.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let by_ns = |namespace: &str, ascending| CommandQuery {
        namespace: Some(namespace.to_owned()),
        ascending,
        ..CommandQuery::default()
    };
    let queries = [
        by_ns(&ns, false),
        by_ns(&ns, true),
        by_ns(&other_ns, false),
        CommandQuery {
            parameter_name: Some(param.clone()),
            ..CommandQuery::default()
        },
        CommandQuery {
            parameter_name: Some(param.clone()),
            ..by_ns(&ns, true)
        },
    ];
    for q in queries {
        let want = expect(&q);
        assert!(!want.is_empty(), "suite bug: {q:?} selects nothing");
        for page_size in [1, 2, 4, 100] {
            let q = CommandQuery {
                page_size,
                ..q.clone()
            };
            let got = listed(store, &run, &q).await;
            assert_eq!(
                got, want,
                "list_commands {q:?} (page size {page_size}) must return every matching \
                 command exactly once, sorted by creation time then id (pending deletion included)"
            );
        }
    }
}

/// A command listing refuses a page token that does not decode.
pub async fn malformed_command_page_tokens_are_refused(store: Arc<dyn ReadModel>, _: Capabilities) {
    let (run, _) = start("rm");
    let bad = within(
        "list_commands",
        store.list_commands(&CommandQuery {
            namespace: Some(format!("{run}-ns")),
            page_size: 2,
            page_token: Some("%%%".into()),
            ..CommandQuery::default()
        }),
    )
    .await
    .expect_err("a malformed page token must fail");
    assert!(is_invalid_page_token(&bad), "got {bad:?}");
}
