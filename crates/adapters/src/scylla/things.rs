//! Things: their commits (the last write of each thing in a batch, applied in three phases
//! so a crash never leaves a listing row the stored thing does not name), gets and listings
//! by name.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};

use fleetcmd_domain::ports::{Page, PortResult, ThingQuery, ThingWrite};
use fleetcmd_domain::thing::Thing;
use futures::{StreamExt, TryStreamExt};
use scylla::value::CqlValue;

use super::error::{decode_json, encode_json, exec_error, rows_error};
use super::paging::{Cursor, THING_TOKEN, decode_token, encode_token, fingerprint};
use super::tables::ALL_SCOPE;
use super::writes::WriteFuture;
use super::{MAX_FETCHES, MAX_ROWS_SCANNED, ScyllaReadModel};
use crate::{effective_page_size, invalid_page_token};

/// Above every character of a thing name (`[a-zA-Z0-9:_-]`): `prefix..prefix + NAME_END`
/// holds exactly the names starting with `prefix`.
const NAME_END: char = '\u{7f}';

/// Rows asked per round trip, at least, when a filter is applied by the client: most rows
/// read are then dropped, and asking only for the items still missing would cost a round
/// trip per item. (Resuming by name, over-reading is harmless.)
const FILTERED_FETCH: usize = 256;

fn attribute_scope(name: &str, value: &str) -> String {
    // Attribute names may contain `=` and `:`: the length keeps `a=b`/`c` apart from `a`/`b=c`.
    format!("attr:{}:{name}={value}", name.len())
}

fn group_scope(group: &str) -> String {
    format!("group:{group}")
}

/// The `things_by_name` partitions listing `t`: everything's, one per attribute, one per group.
pub(super) fn thing_scopes(t: &Thing) -> BTreeSet<String> {
    std::iter::once(ALL_SCOPE.to_owned())
        .chain(t.attributes.iter().map(|(k, v)| attribute_scope(k, v)))
        .chain(t.groups.iter().map(|g| group_scope(g)))
        .collect()
}

fn text_set(scopes: &BTreeSet<String>) -> CqlValue {
    CqlValue::Set(scopes.iter().cloned().map(CqlValue::Text).collect())
}

/// What `things` holds of a thing before a commit.
struct Stored {
    /// A superset of the scopes its listing rows are in.
    scopes: BTreeSet<String>,
    /// The newest write timestamp of its rows.
    written_at: i64,
}

/// How one thing query is served: which partition, which name range, what the client checks.
#[derive(Debug, Clone)]
pub(super) struct ThingPlan {
    scope: String,
    /// Names in `[lo, hi)`.
    lo: String,
    hi: String,
    /// Applied to the rows read, beside what the partition and range select.
    client_filter: bool,
    fingerprint: u64,
}

impl ThingPlan {
    pub(super) fn new(q: &ThingQuery) -> Self {
        // An attribute value is usually rarer than a group membership.
        let scope = match (&q.attribute, &q.group) {
            (Some((k, v)), _) => attribute_scope(k, v),
            (None, Some(g)) => group_scope(g),
            (None, None) => ALL_SCOPE.to_owned(),
        };
        let lo = q.name_prefix.clone().unwrap_or_default();
        let hi = format!("{lo}{NAME_END}");
        let group = q.group.as_deref().map(group_scope).unwrap_or_default();
        let fingerprint = fingerprint(&["things_by_name", &scope, &group, &lo]);
        Self {
            scope,
            lo,
            hi,
            client_filter: q.attribute.is_some() && q.group.is_some(),
            fingerprint,
        }
    }

    /// The name a page token resumes after (`None`: the range's start).
    fn resume_after(&self, token: &str) -> PortResult<Option<String>> {
        let Some(raw) = decode_token(THING_TOKEN, self.fingerprint, token)?.state else {
            return Ok(None);
        };
        let name =
            String::from_utf8(raw).map_err(|_| invalid_page_token("thing name not UTF-8"))?;
        if name < self.lo || name >= self.hi {
            return Err(invalid_page_token("thing name outside the query's range"));
        }
        Ok(Some(name))
    }

    fn token(&self, after: Option<String>) -> String {
        encode_token(
            THING_TOKEN,
            self.fingerprint,
            &Cursor {
                bucket: 0,
                state: after.map(String::into_bytes),
            },
        )
    }
}

/// Every filter of the query but connectivity (the caller's).
fn keeps(q: &ThingQuery, t: &Thing) -> bool {
    q.attribute
        .as_ref()
        .is_none_or(|(k, v)| t.attributes.get(k) == Some(v))
        && q.group.as_ref().is_none_or(|g| t.groups.contains(g))
        && q.name_prefix
            .as_ref()
            .is_none_or(|p| t.thing_name.starts_with(p.as_str()))
}

/// A timestamp `t` at or above `now` and `floor` with `t` and `t + 1` above every one `last`
/// handed out before; `last` becomes `t + 1`.
fn reserve_timestamp(last: &AtomicI64, now: i64, floor: i64) -> i64 {
    let next = |last: i64| now.max(last.saturating_add(1)).max(floor).saturating_add(1);
    let prev = last
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| Some(next(l)))
        .unwrap_or_else(|l| l);
    next(prev) - 1
}

/// The last write of each thing of `writes`: one writer per partition writes in log order, so
/// it is the thing's state after the batch, and nothing before it needs writing.
fn last_writes(writes: &[ThingWrite]) -> Vec<&ThingWrite> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, w) in writes.iter().enumerate() {
        last.insert(w.thing_name(), i);
    }
    let mut won: Vec<usize> = last.into_values().collect();
    won.sort_unstable();
    won.into_iter().map(|i| &writes[i]).collect()
}

impl ScyllaReadModel {
    /// Applies the batch's thing writes. A thing's rows are written in three phases: its
    /// `things` row, naming the scopes of both the stored and the new version; then its
    /// listing rows (the new version's written, the ones of scopes it left deleted); then
    /// `scopes` narrowed to the new version's (or the row deleted). A crash between phases
    /// leaves `scopes` naming every listing row that exists, so the replay (whatever its
    /// batch boundaries) finds and removes the stale ones.
    pub(super) async fn commit_things(&self, writes: &[ThingWrite]) -> PortResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let writes = last_writes(writes);
        let names: Vec<String> = writes.iter().map(|w| w.thing_name().to_owned()).collect();
        let stored: Vec<Option<Stored>> = futures::stream::iter(names)
            .map(|name| async move { self.stored_thing_scopes(&name).await })
            .buffered(self.write_concurrency)
            .try_collect()
            .await?;
        let floor = stored
            .iter()
            .flatten()
            .map(|s| s.written_at.saturating_add(1))
            .max()
            .unwrap_or(i64::MIN);
        let ts = self.next_thing_timestamp(floor);
        let mut first = Vec::new();
        let mut rows = Vec::new();
        let mut last = Vec::new();
        for (w, stored) in writes.into_iter().zip(stored) {
            let old = stored.map(|s| s.scopes).unwrap_or_default();
            let name = w.thing_name();
            match w {
                ThingWrite::Upsert(t) => {
                    let data = encode_json("thing", name, t)?;
                    let new = thing_scopes(t);
                    let both: BTreeSet<String> = old.union(&new).cloned().collect();
                    first.push(self.exec(
                        "writing a thing",
                        &self.st.upsert_thing,
                        vec![
                            CqlValue::Text(name.to_owned()),
                            CqlValue::Blob(data.clone()),
                            text_set(&both),
                            CqlValue::BigInt(ts),
                        ],
                    ));
                    rows.extend(self.delete_thing_rows(
                        name,
                        old.difference(&new).cloned().collect(),
                        ts,
                    ));
                    for scope in &new {
                        rows.push(self.exec(
                            "writing a thing listing row",
                            &self.st.upsert_thing_row,
                            vec![
                                CqlValue::Text(scope.clone()),
                                CqlValue::Text(name.to_owned()),
                                CqlValue::Blob(data.clone()),
                                CqlValue::BigInt(ts),
                            ],
                        ));
                    }
                    if both != new {
                        last.push(self.exec(
                            "narrowing a thing's scopes",
                            &self.st.set_thing_scopes,
                            vec![
                                CqlValue::BigInt(ts.saturating_add(1)),
                                text_set(&new),
                                CqlValue::Text(name.to_owned()),
                            ],
                        ));
                    }
                }
                ThingWrite::Delete(_) => {
                    rows.extend(self.delete_thing_rows(name, old, ts));
                    last.push(self.exec(
                        "deleting a thing",
                        &self.st.delete_thing,
                        vec![CqlValue::BigInt(ts), CqlValue::Text(name.to_owned())],
                    ));
                }
            }
        }
        self.run_writes(first).await?;
        self.run_writes(rows).await?;
        self.run_writes(last).await
    }

    /// The write timestamp of a commit's thing writes (µs; `+ 1` is reserved for narrowing
    /// `scopes`). Seqs restart when a thing is re-created, so timestamps come from the clock:
    /// strictly increasing within the process, so a later batch wins even when coordinators'
    /// clocks disagree, and above `floor` (the stored versions' write times), so a writer whose
    /// clock is behind the previous one's (after a rebalance) still replaces what it wrote, and
    /// keeps later timestamps above those too.
    pub(super) fn next_thing_timestamp(&self, floor: i64) -> i64 {
        reserve_timestamp(
            &self.thing_clock,
            self.clock.now_ms().saturating_mul(1000),
            floor,
        )
    }

    fn delete_thing_rows<'a>(
        &'a self,
        name: &str,
        scopes: BTreeSet<String>,
        ts: i64,
    ) -> Vec<WriteFuture<'a>> {
        scopes
            .into_iter()
            .map(|scope| {
                self.exec(
                    "deleting a thing listing row",
                    &self.st.delete_thing_row,
                    vec![
                        CqlValue::BigInt(ts),
                        CqlValue::Text(scope),
                        CqlValue::Text(name.to_owned()),
                    ],
                )
            })
            .collect()
    }

    async fn stored_thing_scopes(&self, name: &str) -> PortResult<Option<Stored>> {
        let res = self
            .session
            .execute_unpaged(&self.st.thing_scopes, vec![CqlValue::Text(name.to_owned())])
            .await
            .map_err(|e| exec_error("reading a thing's scopes", e))?;
        let rows = res
            .into_rows_result()
            .map_err(|e| rows_error("thing scopes", e))?;
        let row = rows
            .maybe_first_row::<(Option<BTreeSet<String>>, Option<i64>)>()
            .map_err(|e| rows_error("thing scopes", e))?;
        Ok(row.map(|(scopes, written_at)| Stored {
            scopes: scopes.unwrap_or_default(),
            written_at: written_at.unwrap_or(0),
        }))
    }

    pub(super) async fn stored_thing(&self, name: &str) -> PortResult<Option<Thing>> {
        let res = self
            .session
            .execute_unpaged(&self.st.get_thing, vec![CqlValue::Text(name.to_owned())])
            .await
            .map_err(|e| exec_error("reading a thing", e))?;
        let rows = res.into_rows_result().map_err(|e| rows_error("thing", e))?;
        match rows
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(|e| rows_error("thing", e))?
        {
            Some((data,)) => decode_json(&format!("thing {name}"), &data).map(Some),
            None => Ok(None),
        }
    }

    /// One page: rows are read until one more item than the page holds is found (so the
    /// last page has no token), the partition's range ends, or a scan limit is hit (a short
    /// page, resuming after the last name read).
    pub(super) async fn thing_page(&self, q: &ThingQuery) -> PortResult<Page<Thing>> {
        let plan = ThingPlan::new(q);
        let after = match &q.page_token {
            Some(t) => plan.resume_after(t)?,
            None => None,
        };
        let (st, from) = match &after {
            Some(name) => (&self.st.things_after, name.clone()),
            None => (&self.st.things_from, plan.lo.clone()),
        };
        let values = vec![
            CqlValue::Text(plan.scope.clone()),
            CqlValue::Text(from),
            CqlValue::Text(plan.hi.clone()),
        ];
        let limit = effective_page_size(q.page_size) as usize;
        let want = limit + 1;
        let mut items = Vec::with_capacity(want.min(128));
        let mut last_read = after;
        let mut state = None;
        let (mut scanned, mut fetches) = (0usize, 0usize);
        let ended = loop {
            let missing = want - items.len();
            let size = if plan.client_filter {
                missing.max(FILTERED_FETCH)
            } else {
                missing
            };
            let got = self
                .fetch("listing things", st, values.clone(), size, state.take())
                .await?;
            fetches += 1;
            scanned += got.rows.len();
            for data in got.rows {
                let t: Thing = decode_json("thing", &data)?;
                last_read = Some(t.thing_name.clone());
                if keeps(q, &t) {
                    items.push(t);
                    if items.len() == want {
                        break;
                    }
                }
            }
            state = got.more;
            if state.is_none() {
                break true;
            }
            if items.len() == want || scanned >= MAX_ROWS_SCANNED || fetches >= MAX_FETCHES {
                break false;
            }
        };
        let next_token = if items.len() > limit {
            items.truncate(limit);
            Some(plan.token(items.last().map(|t| t.thing_name.clone())))
        } else if ended {
            None
        } else {
            Some(plan.token(last_read))
        };
        Ok(Page { items, next_token })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn thing(name: &str, attributes: &[(&str, &str)], groups: &[&str]) -> Thing {
        Thing {
            thing_name: name.to_owned(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            max_in_flight: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            version: 1,
            created_at: 0,
            last_updated_at: 0,
        }
    }

    #[test]
    fn scopes_tell_apart_attributes_whose_names_hold_separators() {
        let a = thing("t", &[("a=b", "c")], &["g"]);
        let b = thing("t", &[("a", "b=c")], &[]);
        assert_eq!(
            thing_scopes(&a),
            BTreeSet::from([
                "all".to_owned(),
                "attr:3:a=b=c".to_owned(),
                "group:g".to_owned()
            ])
        );
        let other = attribute_scope("a", "b=c");
        assert_eq!(other, "attr:1:a=b=c");
        assert!(thing_scopes(&b).contains(&other));
        assert!(!thing_scopes(&a).contains(&other));
    }

    #[test]
    fn timestamps_increase_and_stay_above_every_floor_seen() {
        let last = AtomicI64::new(i64::MIN);
        assert_eq!(reserve_timestamp(&last, 1_000, i64::MIN), 1_000);
        // The clock did not move: the next one is above the reserved `+ 1`.
        assert_eq!(reserve_timestamp(&last, 1_000, i64::MIN), 1_002);
        // A stored version written by a clock ahead of ours.
        assert_eq!(reserve_timestamp(&last, 1_010, 5_000), 5_000);
        // Later commits stay above it, though our clock is still behind.
        assert_eq!(reserve_timestamp(&last, 1_020, i64::MIN), 5_002);
        assert_eq!(reserve_timestamp(&last, 9_000, i64::MIN), 9_000);
    }

    #[test]
    fn the_last_write_of_each_thing_wins() {
        let t = thing("a", &[], &[]);
        let writes = vec![
            ThingWrite::Delete("a".into()),
            ThingWrite::Upsert(t.clone()),
            ThingWrite::Delete("b".into()),
            ThingWrite::Upsert(thing("b", &[], &[])),
            ThingWrite::Delete("b".into()),
        ];
        assert_eq!(
            last_writes(&writes),
            vec![&ThingWrite::Upsert(t), &ThingWrite::Delete("b".into())]
        );
    }

    #[test]
    fn plans_pick_one_partition_and_tokens_stay_in_their_range() {
        let both = ThingQuery {
            attribute: Some(("model".into(), "v2".into())),
            group: Some("east".into()),
            name_prefix: Some("dev-".into()),
            ..ThingQuery::default()
        };
        let plan = ThingPlan::new(&both);
        assert_eq!(plan.scope, "attr:5:model=v2");
        assert!(plan.client_filter);
        assert_eq!((plan.lo.as_str(), plan.hi.as_str()), ("dev-", "dev-\u{7f}"));
        let token = plan.token(Some("dev-7".into()));
        assert_eq!(plan.resume_after(&token), Ok(Some("dev-7".into())));
        assert_eq!(plan.resume_after(&plan.token(None)), Ok(None));
        let outside = plan.token(Some("other".into()));
        assert!(crate::is_invalid_page_token(
            &plan.resume_after(&outside).expect_err("outside the range")
        ));
        // Another filter is another query: its tokens are refused.
        let group_only = ThingPlan::new(&ThingQuery {
            attribute: None,
            ..both.clone()
        });
        assert!(!group_only.client_filter);
        assert!(crate::is_invalid_page_token(
            &group_only.resume_after(&token).expect_err("another query")
        ));
        assert!(keeps(&both, &thing("dev-1", &[("model", "v2")], &["east"])));
        assert!(!keeps(
            &both,
            &thing("dev-1", &[("model", "v2")], &["west"])
        ));
        assert!(!keeps(
            &both,
            &thing("dev-1", &[("model", "v1")], &["east"])
        ));
        assert!(!keeps(&both, &thing("pc-1", &[("model", "v2")], &["east"])));
    }
}
