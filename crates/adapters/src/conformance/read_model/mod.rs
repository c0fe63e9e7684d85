//! The read model suite: one check per behaviour of [`ReadModel`]'s contract.
//!
//! Every listing is checked against a model: the check's executions (or commands) filtered
//! and sorted in memory by the contract's rules, and compared over every page
//! ([`fleetcmd_domain::paging::collect_pages`]). Results that belong to other runs (a shared
//! server, the first of the two runs on one store) are left out by id prefix before
//! comparing. Checks write partition 0's position, and `purge_expired` only deletes records
//! that expired before the check started.
//!
//! Each check takes the store's [`Capabilities`] and skips or adapts what a backend cannot
//! honour (a store without clustering order, write timestamps or TTLs runs the subset it
//! supports). [`Capabilities::ALL`] holds a store to every check (the SQLite store); the
//! ScyllaDB adapter runs everything, with tombstones and expiry by TTL.
//!
//! Files: `commands.rs`, `executions.rs` (gets, versions, client tokens), `listings.rs`
//! (execution listings and page tokens), `expiry.rs`, `things.rs`, `credentials.rs`.

mod commands;
mod credentials;
mod executions;
mod expiry;
mod groups;
mod listings;
mod things;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use fleetcmd_domain::group::ThingGroup;
use fleetcmd_domain::paging::{RepeatedToken, collect_pages};
use fleetcmd_domain::ports::{
    Clock, CommandQuery, CommandWrite, ExecutionQuery, ExecutionWrite, GroupQuery, Page,
    PortResult, ProjectionBatch, ReadModel, ThingQuery,
};
use fleetcmd_domain::thing::Thing;
use fleetcmd_domain::{
    Command, CommandBody, CommandId, CommandParameter, Execution, ExecutionStatus, OutputFormat,
    ParameterType, ParameterValue, Payload, PayloadTemplate, ResultValue, StatusReason, Target,
    TimestampMs, testing,
};

use super::within;
use crate::clock::SystemClock;

pub use commands::{
    command_listings_filter_by_namespace_and_parameter, command_upserts_replace_the_stored_command,
    commands_round_trip_every_field, deleted_commands_leave_gets_and_the_parameter_index,
    malformed_command_page_tokens_are_refused,
};
pub use credentials::{
    credentials_round_trip_every_field,
    registered_cas_round_trip_and_older_versions_change_nothing,
    revocations_are_listed_and_older_versions_change_nothing,
};
pub use executions::{
    a_lagging_upsert_after_a_delete_brings_nothing_back,
    a_lower_seq_after_a_higher_one_in_a_batch_changes_nothing,
    a_lower_seq_in_a_later_batch_changes_nothing, deleted_executions_are_not_found_by_token,
    deleted_executions_leave_gets_and_listings, executions_are_found_by_target_and_client_token,
    executions_round_trip_every_field, found_executions_have_their_latest_state,
    get_executions_leaves_missing_ones_out,
};
pub use expiry::{
    executions_expire_by_themselves_at_their_time_to_live, expired_executions_are_never_readable,
    expired_executions_are_purged,
};
pub use groups::{
    malformed_group_page_tokens_are_refused, thing_groups_round_trip_list_by_prefix_and_delete,
};
pub use listings::{
    a_full_last_page_ends_the_listing, execution_listings_filter_and_sort_by_completion_time,
    execution_listings_filter_by_command_and_target, execution_listings_filter_by_start_time,
    malformed_execution_page_tokens_are_refused, page_tokens_from_another_listing_are_refused,
};
pub use things::{
    malformed_thing_page_tokens_are_refused, thing_listings_sort_by_name_and_filter,
    thing_upserts_replace_and_deletes_remove_it_everywhere, things_round_trip_every_field,
};

#[doc(hidden)]
#[macro_export]
macro_rules! __read_model_checks {
    ($callback:ident!($($args:tt)*)) => {
        $crate::$callback!($($args)*;
            commits_record_the_partition_position,
            commands_round_trip_every_field,
            command_upserts_replace_the_stored_command,
            deleted_commands_leave_gets_and_the_parameter_index,
            command_listings_filter_by_namespace_and_parameter,
            malformed_command_page_tokens_are_refused,
            executions_round_trip_every_field,
            a_lower_seq_in_a_later_batch_changes_nothing,
            a_lower_seq_after_a_higher_one_in_a_batch_changes_nothing,
            get_executions_leaves_missing_ones_out,
            deleted_executions_leave_gets_and_listings,
            a_lagging_upsert_after_a_delete_brings_nothing_back,
            executions_are_found_by_target_and_client_token,
            found_executions_have_their_latest_state,
            deleted_executions_are_not_found_by_token,
            execution_listings_filter_by_command_and_target,
            execution_listings_filter_by_start_time,
            execution_listings_filter_and_sort_by_completion_time,
            a_full_last_page_ends_the_listing,
            malformed_execution_page_tokens_are_refused,
            page_tokens_from_another_listing_are_refused,
            expired_executions_are_purged,
            expired_executions_are_never_readable,
            executions_expire_by_themselves_at_their_time_to_live,
            things_round_trip_every_field,
            thing_upserts_replace_and_deletes_remove_it_everywhere,
            thing_listings_sort_by_name_and_filter,
            malformed_thing_page_tokens_are_refused,
            credentials_round_trip_every_field,
            revocations_are_listed_and_older_versions_change_nothing,
            registered_cas_round_trip_and_older_versions_change_nothing,
            thing_groups_round_trip_list_by_prefix_and_delete,
            malformed_group_page_tokens_are_refused,
        );
    };
}

crate::__read_model_checks!(__conformance_all!(ReadModel, Capabilities));

/// What a store under test guarantees beyond the checks every store passes. (Every store
/// returns listings in the contract's order and ignores an upsert whose `seq` is not above
/// the stored one, across batches too.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// A delete outlives the upserts that arrive after it from a lagging writer (a former
    /// projector of the partition): they bring back neither the execution nor a listing
    /// row. A store with one writer at a time (SQLite, in one process) needs no such
    /// tombstones.
    pub tombstones: bool,
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
    /// The SQLite store: explicit purging, one writer.
    pub const ALL: Self = Self {
        tombstones: false,
        expiry: Expiry::Purge,
    };
}

const YEAR_MS: i64 = 365 * 24 * 3600 * 1000;

/// A check's run id (the prefix of its ids) and its start time.
fn start(prefix: &str) -> (String, TimestampMs) {
    (super::unique(prefix), SystemClock.now_ms())
}

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
        // Both values, so each store keeps the field either way.
        supersede_pending: n.len() % 2 == 1,
    }
}

/// A created execution of the suite, started at `started_at` and kept for a year, with a
/// client token, a parameter and a request fingerprint, so every field is compared.
fn execution(id: &str, command: &CommandId, target: &Target, started_at: TimestampMs) -> Execution {
    let mut e = testing::execution(id, command.as_str(), Some(target.clone()));
    e.parameters = BTreeMap::from([("x".to_owned(), ParameterValue::L(-5))]);
    e.client_token = Some(format!("tok-{id}"));
    e.created_at = started_at;
    e.last_updated_at = started_at;
    e.started_at = started_at;
    e.time_to_live = started_at + YEAR_MS;
    e.request_fingerprint = 7;
    e
}

/// `e` moved to `status` with `seq`; finished (a reason, a result, terminal) at `completed_at`
/// when given.
fn moved(
    mut e: Execution,
    status: ExecutionStatus,
    completed_at: Option<TimestampMs>,
    seq: u64,
) -> Execution {
    e.status = status;
    e.seq = seq;
    e.completed_at = completed_at;
    e.terminal = completed_at.is_some();
    e.last_updated_at = completed_at.unwrap_or(e.started_at);
    if completed_at.is_some() {
        e.status_reason = Some(StatusReason {
            reason_code: "DONE".into(),
            reason_description: "finished".into(),
        });
        e.result = BTreeMap::from([("out".to_owned(), ResultValue::S("ok".into()))]);
    }
    e
}

async fn position(store: &dyn ReadModel) -> u64 {
    within("position", store.position(0))
        .await
        .expect("position")
}

async fn commit(store: &dyn ReadModel, batch: ProjectionBatch) {
    within("commit", store.commit(batch))
        .await
        .expect("commit must succeed");
}

/// Commits `writes` to partition 0 as the next batch (its position + 1); returns the new
/// position.
async fn commit_writes(store: &dyn ReadModel, writes: ProjectionBatch) -> u64 {
    let next_offset = position(store).await + 1;
    let batch = ProjectionBatch {
        partition: 0,
        next_offset,
        ..writes
    };
    commit(store, batch).await;
    next_offset
}

/// Commits command and execution writes as the next batch; returns the new position.
async fn commit_next(
    store: &dyn ReadModel,
    commands: Vec<CommandWrite>,
    executions: Vec<ExecutionWrite>,
) -> u64 {
    let writes = ProjectionBatch {
        commands,
        executions,
        ..ProjectionBatch::default()
    };
    commit_writes(store, writes).await
}

async fn get_execution(store: &dyn ReadModel, e: &Execution) -> Option<Execution> {
    within("get_execution", store.get_execution(&e.execution_id))
        .await
        .expect("get_execution")
}

/// One page of a listing, as the port returns it.
type PageFuture<'a, T> = Pin<Box<dyn Future<Output = PortResult<Page<T>>> + Send + 'a>>;

/// A listing query the suite pages through.
trait Listing: Clone + std::fmt::Debug {
    type Item;

    fn page_size(&self) -> u32;

    /// This query at page `token`.
    fn at(&self, token: Option<String>) -> Self;

    fn list<'a>(store: &'a dyn ReadModel, q: &'a Self) -> PageFuture<'a, Self::Item>;

    /// The item's id.
    fn id(item: Self::Item) -> String;
}

macro_rules! listing {
    ($query:ty, $item:ty, $list:ident, $id:ident) => {
        impl Listing for $query {
            type Item = $item;

            fn page_size(&self) -> u32 {
                self.page_size
            }

            fn at(&self, page_token: Option<String>) -> Self {
                Self {
                    page_token,
                    ..self.clone()
                }
            }

            fn list<'a>(store: &'a dyn ReadModel, q: &'a Self) -> PageFuture<'a, $item> {
                store.$list(q)
            }

            fn id(item: $item) -> String {
                item.$id.as_str().to_owned()
            }
        }
    };
}

listing!(CommandQuery, Command, list_commands, command_id);
listing!(ExecutionQuery, Execution, list_executions, execution_id);
listing!(ThingQuery, Thing, list_things, thing_name);
listing!(GroupQuery, ThingGroup, list_thing_groups, thing_group_name);

/// The ids of every item `q` lists (every page, from the first) that start with `prefix`;
/// each page holds at most `page_size` items.
async fn listed<Q: Listing>(store: &dyn ReadModel, prefix: &str, q: &Q) -> Vec<String> {
    let what = format!("listing {q:?}");
    let page_size = q.page_size();
    let mut pages = 0usize;
    let items = collect_pages(None, |token| {
        pages += 1;
        assert!(pages <= 10_000, "{what}: paging never ended");
        let what = &what;
        async move {
            let page_q = q.at(token);
            let page = within(what, Q::list(store, &page_q))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                page.items.len() <= page_size as usize,
                "a page holds at most page_size items: {} > {page_size}",
                page.items.len(),
            );
            Ok::<_, RepeatedToken>((page.items, page.next_token))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    items
        .into_iter()
        .map(Q::id)
        .filter(|id| id.starts_with(prefix))
        .collect()
}

/// A commit records the batch's next offset as the partition's position.
pub async fn commits_record_the_partition_position(store: Arc<dyn ReadModel>, _: Capabilities) {
    let store = &*store;
    let before = position(store).await;
    let next = before + 17;
    commit(
        store,
        ProjectionBatch {
            partition: 0,
            next_offset: next,
            ..ProjectionBatch::default()
        },
    )
    .await;
    assert_eq!(
        position(store).await,
        next,
        "commit must record the batch's next offset as the partition's position"
    );
    commit(
        store,
        ProjectionBatch {
            partition: 0,
            next_offset: next + 3,
            ..ProjectionBatch::default()
        },
    )
    .await;
    assert_eq!(position(store).await, next + 3);
}
