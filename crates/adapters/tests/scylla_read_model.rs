//! The ScyllaDB read model against a CQL server, in a keyspace unique to the run.
//!
//! - `FLEETCMD_CQL_URI` (`host:port[,host:port...]`): the server `deploy/engines/cql.sh start`
//!   serves on `127.0.0.1:9042` (Apache Cassandra): the full suite runs against it. Unset:
//!   the tests print a skip line and pass, except under `CI`, where they fail.
//! - `FLEETCMD_SCYLLA_URI`: a real ScyllaDB (or Cassandra) cluster. When set, the full suite
//!   runs against it too.

#![cfg(feature = "scylla")]

use std::sync::Arc;

use fleetcmd_adapters::conformance::{
    self,
    read_model::{Capabilities, Expiry},
    within,
};
use fleetcmd_adapters::is_invalid_page_token;
use fleetcmd_adapters::scylla::{BucketWidths, Replication, ScyllaConfig, ScyllaReadModel};
use fleetcmd_domain::ports::{
    CommandQuery, CommandWrite, ExecutionWrite, ProjectionBatch, ReadModel,
};
use fleetcmd_domain::{Command, CommandBody, CommandId, ExecutionStatus, Payload, Target, testing};

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

/// The `FLEETCMD_CQL_URI` server's nodes; `None` (after a skip line) when not configured
/// outside CI.
fn test_server() -> Option<Vec<String>> {
    match nodes("FLEETCMD_CQL_URI") {
        Some(n) => Some(n),
        None if std::env::var_os("CI").is_some() => panic!(
            "FLEETCMD_CQL_URI is not set but CI is: start Cassandra \
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

/// The settings of a keyspace unique to the run on `nodes`.
fn config(nodes: &[String]) -> ScyllaConfig {
    let keyspace = conformance::unique("fleetcmd_t");
    ScyllaConfig::new(nodes, &keyspace, Replication::Factor(1))
}

/// The settings of the keyspace the suites of this test process share (`tag` tells apart
/// keyspaces created with different bucket widths). The checks use ids unique to each run, so
/// they share one keyspace the way they would share a production cluster; creating a
/// keyspace per test instead costs seconds of DDL each on a real server.
fn shared_config(nodes: &[String], tag: &str) -> ScyllaConfig {
    let keyspace = format!("fleetcmd_t{}_{tag}", std::process::id());
    ScyllaConfig::new(nodes, &keyspace, Replication::Factor(1))
}

/// Connecting runs the schema's DDL; on a real server under load that takes several
/// seconds, more than the suites' generic wait.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

async fn connect_with(config: ScyllaConfig) -> Arc<ScyllaReadModel> {
    let nodes = config.nodes.clone();
    match tokio::time::timeout(CONNECT_WAIT, ScyllaReadModel::connect_with(config)).await {
        Ok(store) => store.unwrap_or_else(|e| panic!("connecting to {nodes:?}: {e}")),
        Err(_) => panic!("connect: not done within {CONNECT_WAIT:?}"),
    }
}

/// Creates the shared keyspaces' tables once per process, before the suites connect to
/// them concurrently (concurrent CREATE TABLE of one table is unsafe on Cassandra).
static SHARED_SCHEMA: tokio::sync::Mutex<Vec<String>> = tokio::sync::Mutex::const_new(Vec::new());

async fn connect_shared(config: ScyllaConfig) -> Arc<ScyllaReadModel> {
    let mut created = SHARED_SCHEMA.lock().await;
    let store = connect_with(config.clone()).await;
    if !created.contains(&config.keyspace) {
        created.push(config.keyspace.clone());
    }
    drop(created);
    store
}

/// A new keyspace on the `FLEETCMD_CQL_URI` server.
async fn connect(nodes: &[String]) -> Arc<ScyllaReadModel> {
    connect_with(config(nodes)).await
}

/// A real cluster: everything, with retention by TTL.
const FULL: Capabilities = Capabilities {
    tombstones: true,
    expiry: Expiry::Ttl,
};

/// A store for the suite in a keyspace of its own on `nodes` (`None`: skipped), with
/// `buckets` when given.
async fn suite_store(
    nodes: Option<Vec<String>>,
    buckets: Option<BucketWidths>,
) -> Option<Arc<ScyllaReadModel>> {
    let tag = if buckets.is_some() {
        "narrow"
    } else {
        "default"
    };
    let mut config = shared_config(&nodes?, tag);
    if let Some(b) = buckets {
        config.buckets = b;
    }
    let store = connect_shared(config).await;
    if let Some(b) = buckets {
        assert_eq!(
            store.bucket_widths(),
            b,
            "a new keyspace stores the widths asked for"
        );
    }
    Some(store)
}

/// A real cluster's nodes (`FLEETCMD_SCYLLA_URI`), `None` after a skip line.
fn real_scylla() -> Option<Vec<String>> {
    let found = nodes("FLEETCMD_SCYLLA_URI");
    if found.is_none() {
        println!("skipped: FLEETCMD_SCYLLA_URI is not set (this needs a real ScyllaDB)");
    }
    found
}

/// The suite on the `FLEETCMD_CQL_URI` server, twice per keyspace: each check works from the
/// stored position and its own ids.
mod read_model_on_the_cql_server {
    use super::*;
    fleetcmd_adapters::read_model_conformance!(
        async || suite_store(test_server(), None).await,
        capabilities = FULL
    );
}

/// The suite's executions span ~10 s of start times and ~100 s of completion times: with
/// buckets of a second or two, every listing walks many buckets (and empty gaps).
mod snapshots_on_the_cql_server {
    use super::*;
    fleetcmd_adapters::snapshot_store_conformance!(async || suite_store(test_server(), None).await);
}

mod read_model_across_many_time_buckets {
    use super::*;

    const NARROW: BucketWidths = BucketWidths {
        target_ms: 1_000,
        command_ms: 1_500,
        all_ms: 2_000,
    };

    fleetcmd_adapters::read_model_conformance!(
        async || suite_store(test_server(), Some(NARROW)).await,
        capabilities = FULL
    );
}

/// The full suite on a real cluster (`FLEETCMD_SCYLLA_URI`).
mod read_model_on_real_scylla {
    use super::*;
    fleetcmd_adapters::read_model_conformance!(
        async || suite_store(real_scylla(), None).await,
        capabilities = FULL
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_keeps_the_schema_data_and_bucket_widths() {
    let Some(nodes) = test_server() else { return };
    let first = connect(&nodes).await;
    let widths = first.bucket_widths();
    let batch = ProjectionBatch {
        partition: 3,
        next_offset: 41,
        ..ProjectionBatch::default()
    };
    within("commit", first.commit(batch)).await.expect("commit");
    let mut c = ScyllaConfig {
        keyspace: first.keyspace().to_owned(),
        ..config(&nodes)
    };
    // Asking for other widths on an existing keyspace: the stored ones win.
    c.buckets.command_ms = 60_000;
    let again = connect_with(c).await;
    assert_eq!(again.bucket_widths(), widths);
    let position = |p| within("position", again.position(p));
    assert_eq!(position(3).await.expect("position"), 41);
    assert_eq!(position(4).await.expect("position"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_tokens_are_rejected() {
    let Some(nodes) = test_server() else { return };
    let err = within(
        "connect",
        ScyllaReadModel::connect(&nodes, "no-dashes-allowed", 1),
    )
    .await
    .expect_err("invalid keyspace name");
    assert!(err.to_string().contains("keyspace"), "{err}");
    assert!(!err.is_retryable());
    let err = within(
        "connect",
        ScyllaReadModel::connect(&nodes, "fleetcmd_rf0", 0),
    )
    .await
    .expect_err("replication factor 0");
    assert!(err.to_string().contains("replication"), "{err}");

    let store = connect(&nodes).await;
    let commands: Vec<CommandWrite> = (0..3)
        .map(|i| CommandWrite::Upsert(command(&format!("tok{i}"), 1000 + i)))
        .collect();
    let batch = ProjectionBatch {
        partition: 0,
        next_offset: 1,
        commands,
        executions: Vec::new(),
        ..Default::default()
    };
    within("commit", store.commit(batch)).await.expect("commit");
    let list = |q: CommandQuery| {
        let store = &store;
        async move { within("list_commands", store.list_commands(&q)).await }
    };
    let first = list(CommandQuery {
        page_size: 1,
        ..CommandQuery::default()
    })
    .await
    .expect("first page");
    assert_eq!(first.items.len(), 1);
    let token = first
        .next_token
        .expect("three commands, pages of one: a token");
    // A token is refused by another query of the same listing (fingerprinted; one used by
    // another listing is the suite's `page_tokens_from_another_listing_are_refused`).
    let other_query = list(CommandQuery {
        page_size: 1,
        ascending: true,
        page_token: Some(token.clone()),
        ..CommandQuery::default()
    })
    .await
    .expect_err("a token used with another sort order");
    assert!(is_invalid_page_token(&other_query), "{other_query:?}");
    // The right query goes on to the other two.
    let rest = list(CommandQuery {
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
        supersede_pending: false,
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
    let execution = |id: &str, started_at: i64, seq: u64| {
        let mut e = testing::execution(id, "reused-token-cmd", Some(target.clone()));
        e.status = ExecutionStatus::InProgress;
        e.client_token = Some("same-token".into());
        e.created_at = started_at;
        e.last_updated_at = started_at;
        e.started_at = started_at;
        e.time_to_live = now + 24 * 3600 * 1000;
        e.seq = seq;
        e.request_fingerprint = seq;
        e
    };
    let older = execution("reused-older", now - 5_000, 5);
    let newer = execution("reused-newer", now - 1_000, 1);
    let mut offset = within("position", store.position(0))
        .await
        .expect("position");
    let mut commit = |writes: Vec<ExecutionWrite>| {
        offset += 1;
        let batch = ProjectionBatch {
            partition: 0,
            next_offset: offset,
            commands: Vec::new(),
            executions: writes,
            ..Default::default()
        };
        within("commit", store.commit(batch))
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
    let find = || within("find", store.find_execution_by_token(&target, "same-token"));
    assert_eq!(
        find().await.expect("find"),
        Some(newer.clone()),
        "the newest start"
    );
    commit(vec![ExecutionWrite::delete(newer.execution_id.clone())])
        .await
        .expect("commit");
    assert_eq!(
        find().await.expect("find"),
        Some(older.clone()),
        "the newest stored one once the newer is deleted"
    );
    commit(vec![ExecutionWrite::delete(older.execution_id.clone())])
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

/// Beside the suite: reused client tokens, and positions written with their offset as write
/// timestamp, so a lagging projector's older commit cannot move a partition back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_scylla_finds_reused_tokens_and_keeps_positions_from_moving_back() {
    let Some(nodes) = real_scylla() else { return };
    let store = connect_with(config(&nodes)).await;
    reused_client_token_finds_the_newest(&store).await;
    let position = || within("position", store.position(0));
    let at = position().await.expect("position");
    let late = ProjectionBatch {
        partition: 0,
        next_offset: at.saturating_sub(5),
        ..ProjectionBatch::default()
    };
    within("a late commit", store.commit(late))
        .await
        .expect("a late commit");
    assert_eq!(position().await.expect("position"), at);
}
