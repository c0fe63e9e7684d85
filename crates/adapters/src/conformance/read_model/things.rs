//! Things: round trips, replacing upserts, deletes, and listings (by name, with attribute,
//! group and name-prefix filters).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fleetcmd_domain::TimestampMs;
use fleetcmd_domain::ports::{ProjectionBatch, ReadModel, ThingQuery, ThingWrite};
use fleetcmd_domain::thing::Thing;

use super::{Capabilities, commit_writes, listed, start};
use crate::conformance::within;
use crate::is_invalid_page_token;

fn thing(
    run: &str,
    n: &str,
    at: TimestampMs,
    attributes: &[(&str, &str)],
    groups: &[&str],
) -> Thing {
    Thing {
        thing_name: format!("{run}-{n}"),
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        max_in_flight: Some(3),
        groups: groups
            .iter()
            .map(|g| (*g).to_owned())
            .collect::<BTreeSet<_>>(),
        version: 1,
        created_at: at,
        last_updated_at: at,
    }
}

/// Commits thing writes to partition 0 as the next batch.
async fn commit_things(store: &dyn ReadModel, things: Vec<ThingWrite>) {
    let writes = ProjectionBatch {
        things,
        ..ProjectionBatch::default()
    };
    commit_writes(store, writes).await;
}

async fn get_thing(store: &dyn ReadModel, name: &str) -> Option<Thing> {
    within("get_thing", store.get_thing(name))
        .await
        .expect("get_thing")
}

/// An unknown thing is `None`; a committed one reads back equal, every field.
pub async fn things_round_trip_every_field(store: Arc<dyn ReadModel>, _: Capabilities) {
    let store = &*store;
    let (run, base) = start("th");
    let t = thing(
        &run,
        "rt",
        base,
        &[("model", "lamp-v2"), ("floor", "3")],
        &["g1", "g2"],
    );
    commit_things(store, vec![ThingWrite::Upsert(t.clone())]).await;
    assert_eq!(get_thing(store, &format!("{run}-missing")).await, None);
    assert_eq!(get_thing(store, &t.thing_name).await, Some(t));
    let bare = Thing {
        attributes: BTreeMap::new(),
        max_in_flight: None,
        groups: BTreeSet::new(),
        ..thing(&run, "bare", base, &[], &[])
    };
    commit_things(store, vec![ThingWrite::Upsert(bare.clone())]).await;
    assert_eq!(
        get_thing(store, &bare.thing_name).await,
        Some(bare),
        "a thing without attributes, groups or limit reads back equal"
    );
}

/// An upsert replaces the stored thing and its listing rows (a removed attribute or group no
/// longer lists it); a delete removes it from gets and every listing; a later write of the
/// same batch wins over an earlier one.
pub async fn thing_upserts_replace_and_deletes_remove_it_everywhere(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (run, base) = start("th");
    let t = thing(&run, "up", base, &[("model", "a")], &["old"]);
    commit_things(store, vec![ThingWrite::Upsert(t.clone())]).await;
    let mut changed = t.clone();
    changed.attributes = BTreeMap::from([("model".to_owned(), "b".to_owned())]);
    changed.groups = BTreeSet::from(["new".to_owned()]);
    changed.max_in_flight = None;
    changed.version = 2;
    changed.last_updated_at = base + 1;
    commit_things(store, vec![ThingWrite::Upsert(changed.clone())]).await;
    assert_eq!(get_thing(store, &t.thing_name).await, Some(changed.clone()));
    let by = |attribute: Option<(&str, &str)>, group: Option<&str>| ThingQuery {
        attribute: attribute.map(|(k, v)| (k.to_owned(), v.to_owned())),
        group: group.map(str::to_owned),
        name_prefix: Some(run.clone()),
        page_size: 10,
        ..ThingQuery::default()
    };
    assert!(
        listed(store, &run, &by(Some(("model", "a")), None))
            .await
            .is_empty()
    );
    assert!(listed(store, &run, &by(None, Some("old"))).await.is_empty());
    assert_eq!(
        listed(store, &run, &by(Some(("model", "b")), Some("new"))).await,
        std::slice::from_ref(&t.thing_name)
    );
    // Deleted, then re-created and deleted again in one batch: the last write wins.
    commit_things(
        store,
        vec![
            ThingWrite::Delete(t.thing_name.clone()),
            ThingWrite::Upsert(t.clone()),
            ThingWrite::Delete(t.thing_name.clone()),
        ],
    )
    .await;
    assert_eq!(get_thing(store, &t.thing_name).await, None);
    for q in [
        by(None, None),
        by(Some(("model", "a")), None),
        by(Some(("model", "b")), None),
        by(None, Some("old")),
        by(None, Some("new")),
    ] {
        assert!(
            listed(store, &run, &q).await.is_empty(),
            "{q:?} lists a deleted thing"
        );
    }
    // And back: a thing created again after its deletion is there.
    commit_things(store, vec![ThingWrite::Upsert(t.clone())]).await;
    assert_eq!(get_thing(store, &t.thing_name).await, Some(t));
}

/// Listings are sorted by name, page after page, and keep the things with the attribute
/// value, in the group, and with the name prefix asked for (all together).
pub async fn thing_listings_sort_by_name_and_filter(store: Arc<dyn ReadModel>, _: Capabilities) {
    let store = &*store;
    let (run, base) = start("th");
    let things = [
        thing(
            &run,
            "d",
            base,
            &[("model", "v2"), ("floor", "1")],
            &["east"],
        ),
        thing(&run, "a", base, &[("model", "v2")], &["west"]),
        thing(&run, "c", base, &[("model", "v1")], &["east", "west"]),
        thing(&run, "b-1", base, &[("model", "v2")], &["east"]),
        thing(&run, "b-2", base, &[], &[]),
    ];
    commit_things(
        store,
        things.iter().cloned().map(ThingWrite::Upsert).collect(),
    )
    .await;
    let q = |attribute: Option<(&str, &str)>, group: Option<&str>, prefix: &str| ThingQuery {
        attribute: attribute.map(|(k, v)| (k.to_owned(), v.to_owned())),
        group: group.map(str::to_owned),
        name_prefix: Some(format!("{run}-{prefix}").trim_end_matches('-').to_owned()),
        page_size: 2,
        ..ThingQuery::default()
    };
    let names = |ns: &[&str]| -> Vec<String> { ns.iter().map(|n| format!("{run}-{n}")).collect() };
    let cases = [
        (q(None, None, ""), names(&["a", "b-1", "b-2", "c", "d"])),
        (q(None, None, "b-"), names(&["b-1", "b-2"])),
        (
            q(Some(("model", "v2")), None, ""),
            names(&["a", "b-1", "d"]),
        ),
        (q(Some(("model", "v2")), None, "b"), names(&["b-1"])),
        (q(Some(("floor", "1")), None, ""), names(&["d"])),
        (q(Some(("model", "v3")), None, ""), names(&[])),
        (q(None, Some("east"), ""), names(&["b-1", "c", "d"])),
        (
            q(Some(("model", "v2")), Some("east"), ""),
            names(&["b-1", "d"]),
        ),
        (q(None, Some("west"), "c"), names(&["c"])),
    ];
    for (query, want) in cases {
        assert_eq!(listed(store, &run, &query).await, want, "{query:?}");
    }
    // A page size of one still pages through everything, in order.
    let one = ThingQuery {
        page_size: 1,
        ..q(None, None, "")
    };
    assert_eq!(
        listed(store, &run, &one).await,
        names(&["a", "b-1", "b-2", "c", "d"])
    );
}

/// A malformed page token, or one from another listing, is refused.
pub async fn malformed_thing_page_tokens_are_refused(store: Arc<dyn ReadModel>, _: Capabilities) {
    let (run, _) = start("th");
    for token in ["%%%", "bm90IGEgdG9rZW4"] {
        let bad = within(
            "list_things",
            store.list_things(&ThingQuery {
                name_prefix: Some(run.clone()),
                page_size: 2,
                page_token: Some(token.into()),
                ..ThingQuery::default()
            }),
        )
        .await
        .expect_err("a malformed page token must fail");
        assert!(is_invalid_page_token(&bad), "{token}: got {bad:?}");
    }
}
