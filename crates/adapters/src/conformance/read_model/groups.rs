//! Thing groups: round trips, listings by name prefix in pages, deletes and re-creation.

use std::sync::Arc;

use fleetcmd_domain::TimestampMs;
use fleetcmd_domain::group::ThingGroup;
use fleetcmd_domain::ports::{GroupQuery, GroupWrite, ProjectionBatch, ReadModel};

use super::{Capabilities, commit_writes, listed, start};
use crate::conformance::within;
use crate::is_invalid_page_token;

fn group(run: &str, n: &str, at: TimestampMs, query: Option<&str>) -> ThingGroup {
    ThingGroup {
        thing_group_name: format!("{run}-{n}"),
        description: format!("group {n}"),
        query_string: query.map(str::to_owned),
        created_at: at,
        version: 1,
    }
}

async fn commit_groups(store: &dyn ReadModel, groups: Vec<GroupWrite>) {
    let writes = ProjectionBatch {
        groups,
        ..ProjectionBatch::default()
    };
    commit_writes(store, writes).await;
}

async fn get_group(store: &dyn ReadModel, name: &str) -> Option<ThingGroup> {
    within("get_thing_group", store.get_thing_group(name))
        .await
        .expect("get_thing_group")
}

fn by_prefix(run: &str, page_size: u32) -> GroupQuery {
    GroupQuery {
        name_prefix: Some(format!("{run}-")),
        page_size,
        page_token: None,
    }
}

/// Groups read back equal, are listed by name in pages, leave every read when deleted and
/// come back when created again (whose version starts at 1 again).
pub async fn thing_groups_round_trip_list_by_prefix_and_delete(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (run, at) = start("gr");
    let (a, b) = (
        group(&run, "a", at, None),
        group(&run, "b", at, Some("attributes.floor >= 3")),
    );
    let c = group(&run, "c", at, None);
    assert_eq!(get_group(store, &a.thing_group_name).await, None);
    let upserts = [&c, &a, &b].map(|g| GroupWrite::Upsert(g.clone()));
    commit_groups(store, upserts.to_vec()).await;
    assert_eq!(get_group(store, &b.thing_group_name).await, Some(b.clone()));
    let names = |gs: &[&ThingGroup]| -> Vec<String> {
        gs.iter().map(|g| g.thing_group_name.clone()).collect()
    };
    for page_size in [1, 2, 3, 25] {
        assert_eq!(
            listed(store, &run, &by_prefix(&run, page_size)).await,
            names(&[&a, &b, &c]),
            "page size {page_size}"
        );
    }
    // Another prefix lists none of them.
    let other = GroupQuery {
        name_prefix: Some(format!("{run}-z")),
        ..by_prefix(&run, 25)
    };
    assert!(listed(store, &run, &other).await.is_empty());

    commit_groups(store, vec![GroupWrite::Delete(b.thing_group_name.clone())]).await;
    assert_eq!(get_group(store, &b.thing_group_name).await, None);
    assert_eq!(
        listed(store, &run, &by_prefix(&run, 2)).await,
        names(&[&a, &c])
    );
    let again = ThingGroup {
        description: "again".into(),
        ..b.clone()
    };
    commit_groups(store, vec![GroupWrite::Upsert(again.clone())]).await;
    assert_eq!(get_group(store, &b.thing_group_name).await, Some(again));
}

/// A page token that is not one is refused as such.
pub async fn malformed_group_page_tokens_are_refused(store: Arc<dyn ReadModel>, _: Capabilities) {
    let (run, _) = start("gr");
    for token in ["%%%", "bm90IGEgdG9rZW4"] {
        let q = GroupQuery {
            page_token: Some(token.into()),
            ..by_prefix(&run, 2)
        };
        let bad = within("list_thing_groups", store.list_thing_groups(&q))
            .await
            .expect_err("a malformed page token must fail");
        assert!(is_invalid_page_token(&bad), "{token}: got {bad:?}");
    }
}
