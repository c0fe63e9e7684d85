//! The ScyllaDB read model against a CQL server, in a keyspace unique to the run.
//!
//! - `FLEETCMD_CQL_URI` (`host:port[,host:port...]`): the CQL test server
//!   (`deploy/engines/cql.sh start` serves `127.0.0.1:9042`). It is the in-memory `kassandra`
//!   library, not ScyllaDB: the adapter detects that it ignores `USING` clauses
//!   ([`Dialect::Limited`]) and the conformance suite runs the subset it supports. Unset: the
//!   test prints a skip line and passes, except under `CI`, where it fails.
//! - `FLEETCMD_SCYLLA_URI`: a real ScyllaDB (or Cassandra) cluster. When set, the full suite
//!   runs against it too.
//!
//! Checks that need a real ScyllaDB (they are skipped on the test server):
//! - listings in the contract's order (clustering order, `ORDER BY`): on the test server
//!   every listing is still checked to return each matching execution or command exactly
//!   once, but as a set;
//! - an execution upsert with a lower or equal `seq` in a *later* batch changing nothing
//!   (`USING TIMESTAMP`; within one batch the adapter keeps the highest `seq` itself, which is
//!   checked everywhere);
//! - retention by TTL: an expired execution is never written or readable, a live one expires
//!   by itself and leaves the listings (the test server has no TTL, so there the suite checks
//!   `purge_expired` instead, which the adapter implements as a scan on such a server);
//! - the position never moving backwards under an overlapping projector, and the schema's
//!   replication and clustering options (the test server accepts and ignores them).

#![cfg(feature = "scylla")]

use std::sync::Arc;

use fleetcmd_adapters::conformance::{
    self,
    read_model::{Capabilities, Expiry},
};
use fleetcmd_adapters::is_invalid_page_token;
use fleetcmd_adapters::scylla::{
    BucketWidths, Dialect, Replication, ScyllaConfig, ScyllaReadModel,
};
use fleetcmd_domain::ports::{
    CommandQuery, CommandWrite, ExecutionQuery, ExecutionWrite, ProjectionBatch, ReadModel,
};
use fleetcmd_domain::{
    Command, CommandBody, CommandId, Execution, ExecutionId, ExecutionStatus, Payload, Target,
};

/// The nodes in `var` (comma-separated), `None` when unset or empty.
fn nodes(var: &str) -> Option<Vec<String>> {
    let value = std::env::var(var).ok()?;
    let nodes: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    (!nodes.is_empty()).then_some(nodes)
}

/// The CQL test server's nodes; `None` (after a skip line) when not configured outside CI.
fn test_server() -> Option<Vec<String>> {
    match nodes("FLEETCMD_CQL_URI") {
        Some(n) => Some(n),
        None if std::env::var_os("CI").is_some() => panic!(
            "FLEETCMD_CQL_URI is not set but CI is: start the CQL test server \
             (deploy/engines/cql.sh install && deploy/engines/cql.sh start) and set \
             FLEETCMD_CQL_URI=127.0.0.1:9042"
        ),
        None => {
            println!(
                "skipped: FLEETCMD_CQL_URI is not set (deploy/engines/cql.sh start, then \
                 FLEETCMD_CQL_URI=127.0.0.1:9042)"
            );
            None
        }
    }
}

async fn connect(nodes: &[String]) -> Arc<ScyllaReadModel> {
    let keyspace = conformance::unique("fleetcmd_t");
    conformance::within("connect", ScyllaReadModel::connect(nodes, &keyspace, 1))
        .await
        .unwrap_or_else(|e| panic!("connecting to {nodes:?}: {e}"))
}

/// What the CQL test server supports: no ordering, write timestamps or TTL.
const TEST_SERVER: Capabilities = Capabilities {
    ordering: false,
    write_timestamps: false,
    expiry: Expiry::Purge,
};

/// A real cluster: everything, with retention by TTL.
const REAL_SCYLLA: Capabilities = Capabilities {
    ordering: true,
    write_timestamps: true,
    expiry: Expiry::Ttl,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_conformance_on_the_cql_test_server() {
    let Some(nodes) = test_server() else { return };
    let store = connect(&nodes).await;
    assert_eq!(
        store.dialect(),
        Dialect::Limited,
        "FLEETCMD_CQL_URI should point at the CQL test server; use FLEETCMD_SCYLLA_URI for a \
         real cluster"
    );
    conformance::read_model::run_with(store.clone(), TEST_SERVER).await;
    // Twice on the same keyspace: the suite works from the stored position and its own ids.
    conformance::read_model::run_with(store, TEST_SERVER).await;
}

/// The suite's executions span ~10 s of start times and ~100 s of completion times: with
/// buckets of a second or two, every listing walks many buckets (and empty gaps).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_conformance_across_many_time_buckets() {
    let Some(nodes) = test_server() else { return };
    let mut config = ScyllaConfig::new(
        &nodes,
        &conformance::unique("fleetcmd_b"),
        Replication::Factor(1),
    );
    config.buckets = BucketWidths {
        target_ms: 1_000,
        command_ms: 1_500,
        all_ms: 2_000,
    };
    let store = conformance::within("connect", ScyllaReadModel::connect_with(config))
        .await
        .expect("connect");
    assert_eq!(store.bucket_widths().target_ms, 1_000);
    conformance::read_model::run_with(store, TEST_SERVER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_keeps_the_schema_data_and_bucket_widths() {
    let Some(nodes) = test_server() else { return };
    let first = connect(&nodes).await;
    let widths = first.bucket_widths();
    first
        .commit(ProjectionBatch {
            partition: 3,
            next_offset: 41,
            ..ProjectionBatch::default()
        })
        .await
        .expect("commit");
    let again = ScyllaReadModel::connect_with({
        let mut c = ScyllaConfig::new(&nodes, first.keyspace(), Replication::Factor(1));
        // Asking for other widths on an existing keyspace: the stored ones win.
        c.buckets.command_ms = 60_000;
        c
    })
    .await
    .expect("second connect to an existing keyspace");
    assert_eq!(again.bucket_widths(), widths);
    assert_eq!(again.position(3).await.expect("position"), 41);
    assert_eq!(again.position(4).await.expect("position"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_tokens_are_rejected() {
    let Some(nodes) = test_server() else { return };
    let err = ScyllaReadModel::connect(&nodes, "no-dashes-allowed", 1)
        .await
        .expect_err("invalid keyspace name");
    assert!(err.to_string().contains("keyspace"), "{err}");
    assert!(!err.is_retryable());
    let err = ScyllaReadModel::connect(&nodes, "fleetcmd_rf0", 0)
        .await
        .expect_err("replication factor 0");
    assert!(err.to_string().contains("replication"), "{err}");

    let store = connect(&nodes).await;
    let commands: Vec<CommandWrite> = (0..3)
        .map(|i| CommandWrite::Upsert(command(&format!("tok{i}"), 1000 + i)))
        .collect();
    store
        .commit(ProjectionBatch {
            partition: 0,
            next_offset: 1,
            commands,
            executions: Vec::new(),
        })
        .await
        .expect("commit");
    let first = store
        .list_commands(&CommandQuery {
            page_size: 1,
            ..CommandQuery::default()
        })
        .await
        .expect("first page");
    assert_eq!(first.items.len(), 1);
    let token = first
        .next_token
        .expect("three commands, pages of one: a token");
    // A token issued for one listing is refused by another, and by another query.
    let foreign = store
        .list_executions(&ExecutionQuery {
            page_size: 1,
            page_token: Some(token.clone()),
            ..ExecutionQuery::default()
        })
        .await
        .expect_err("a command-listing token used for executions");
    assert!(is_invalid_page_token(&foreign), "{foreign:?}");
    let other_query = store
        .list_commands(&CommandQuery {
            page_size: 1,
            ascending: true,
            page_token: Some(token.clone()),
            ..CommandQuery::default()
        })
        .await
        .expect_err("a token used with another sort order");
    assert!(is_invalid_page_token(&other_query), "{other_query:?}");
    // The right query goes on to the other two.
    let rest = store
        .list_commands(&CommandQuery {
            page_size: 5,
            page_token: Some(token),
            ..CommandQuery::default()
        })
        .await
        .expect("second page");
    assert_eq!(rest.items.len(), 2);
    assert!(
        rest.items
            .iter()
            .all(|c| c.command_id != first.items[0].command_id)
    );
}

fn command(id: &str, created_at: i64) -> Command {
    Command {
        command_id: CommandId::parse(id).expect("command id"),
        namespace: "AWS-IoT".into(),
        display_name: id.into(),
        description: String::new(),
        body: CommandBody::Static(Payload {
            content: vec![1, 2, 3],
            content_type: "application/octet-stream".into(),
        }),
        parameters: Vec::new(),
        tags: Default::default(),
        created_at,
        last_updated_at: created_at,
        deprecated: false,
        deprecated_at: None,
        delete_at: None,
    }
}

/// A client token reused on a target (after its window) keeps one `executions_by_token` row
/// per execution: the newest start is found even when an older execution has more events
/// and its batch is replayed later, and deleting the newest finds the older one again.
async fn reused_client_token_finds_the_newest(store: &ScyllaReadModel) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let target = Target::thing("reused-token-thing").expect("target");
    let execution = |id: &str, started_at: i64, seq: u64| Execution {
        execution_id: ExecutionId::parse(id).expect("execution id"),
        command_id: CommandId::parse("reused-token-cmd").expect("command id"),
        target: target.clone(),
        status: ExecutionStatus::InProgress,
        status_reason: None,
        result: Default::default(),
        parameters: Default::default(),
        timeout_secs: 10,
        client_token: Some("same-token".into()),
        created_at: started_at,
        last_updated_at: started_at,
        started_at,
        completed_at: None,
        time_to_live: now + 24 * 3600 * 1000,
        terminal: false,
        seq,
        request_fingerprint: seq,
    };
    let older = execution("reused-older", now - 5_000, 5);
    let newer = execution("reused-newer", now - 1_000, 1);
    let mut offset = store.position(0).await.expect("position");
    let mut commit = |writes: Vec<ExecutionWrite>| {
        offset += 1;
        store.commit(ProjectionBatch {
            partition: 0,
            next_offset: offset,
            commands: Vec::new(),
            executions: writes,
        })
    };
    commit(vec![ExecutionWrite::Upsert(older.clone())])
        .await
        .expect("commit");
    commit(vec![ExecutionWrite::Upsert(newer.clone())])
        .await
        .expect("commit");
    // A replay of the older execution's last batch.
    commit(vec![ExecutionWrite::Upsert(older.clone())])
        .await
        .expect("commit");
    let find = || store.find_execution_by_token(&target, "same-token");
    assert_eq!(
        find().await.expect("find"),
        Some(newer.clone()),
        "the newest start"
    );
    commit(vec![ExecutionWrite::Delete(newer.execution_id.clone())])
        .await
        .expect("commit");
    assert_eq!(
        find().await.expect("find"),
        Some(older.clone()),
        "the newest stored one once the newer is deleted"
    );
    commit(vec![ExecutionWrite::Delete(older.execution_id.clone())])
        .await
        .expect("commit");
    assert_eq!(find().await.expect("find"), None, "none left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_client_token_finds_the_newest_execution() {
    let Some(nodes) = test_server() else { return };
    let store = connect(&nodes).await;
    reused_client_token_finds_the_newest(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_conformance_on_real_scylla() {
    let Some(nodes) = nodes("FLEETCMD_SCYLLA_URI") else {
        println!("skipped: FLEETCMD_SCYLLA_URI is not set (the full suite needs a real ScyllaDB)");
        return;
    };
    let store = connect(&nodes).await;
    assert_eq!(
        store.dialect(),
        Dialect::Full,
        "FLEETCMD_SCYLLA_URI points at a server that ignores USING clauses (the CQL test \
         server?)"
    );
    conformance::read_model::run_with(store.clone(), REAL_SCYLLA).await;
    conformance::read_model::run_with(store.clone(), REAL_SCYLLA).await;
    reused_client_token_finds_the_newest(&store).await;

    // Positions are written with their offset as write timestamp: a lagging projector's
    // older commit cannot move a partition back.
    let at = store.position(0).await.expect("position");
    store
        .commit(ProjectionBatch {
            partition: 0,
            next_offset: at.saturating_sub(5),
            ..ProjectionBatch::default()
        })
        .await
        .expect("a late commit");
    assert_eq!(store.position(0).await.expect("position"), at);
}
