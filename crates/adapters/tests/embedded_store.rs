//! The SQLite store against the event log, read model and snapshot store suites, plus what only a file
//! store has: reopening, the fixed partition count, durability modes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fleetcmd_adapters::conformance::{TempDir, within};
use fleetcmd_adapters::embedded::sqlite::{Durability, SqliteStore};
use fleetcmd_domain::ports::{
    EventLog, ExecutionQuery, ExecutionWrite, PortError, ProjectionBatch, ReadModel,
};
use fleetcmd_domain::{Execution, ExecutionId, ExecutionStatus, Target, testing};

/// The store's file in `dir`, in a subdirectory that does not exist yet: `open` must create
/// it.
fn db_file(dir: &TempDir) -> PathBuf {
    dir.path().join("data").join("fleetcmd.db")
}

fn open(path: &Path, partitions: u32) -> Arc<SqliteStore> {
    SqliteStore::open(path, partitions, Durability::Process).expect("open store")
}

/// A store of `partitions` in a fresh directory, which lives as long as the test.
fn fresh(partitions: u32, durability: Durability) -> (Arc<SqliteStore>, TempDir) {
    let dir = TempDir::new("store");
    let store = SqliteStore::open(&db_file(&dir), partitions, durability).expect("open store");
    (store, dir)
}

mod event_log_on_four_partitions {
    use super::*;
    fleetcmd_adapters::event_log_conformance!(async || fresh(4, Durability::Process));
}

mod event_log_on_one_partition_with_fsync {
    use super::*;
    fleetcmd_adapters::event_log_conformance!(async || fresh(1, Durability::Os));
}

mod read_model {
    use super::*;
    fleetcmd_adapters::read_model_conformance!(async || fresh(2, Durability::Process));
}

mod snapshots {
    use super::*;
    fleetcmd_adapters::snapshot_store_conformance!(async || fresh(5, Durability::Process));
}

/// Execution `id` of command `reboot` on thing `dev-1`, kept forever, at `seq` in `status`.
fn exec(id: &str, seq: u64, status: ExecutionStatus) -> Execution {
    let mut e = testing::execution(id, "reboot", Some(Target::thing("dev-1").expect("target")));
    e.time_to_live = i64::MAX;
    e.seq = seq;
    e.status = status;
    e
}

fn batch(partition: u32, next_offset: u64, executions: Vec<Execution>) -> ProjectionBatch {
    ProjectionBatch {
        partition,
        next_offset,
        commands: Vec::new(),
        executions: executions.into_iter().map(ExecutionWrite::Upsert).collect(),
        ..Default::default()
    }
}

async fn get(store: &SqliteStore, id: &str) -> Option<Execution> {
    let id = ExecutionId::parse(id).expect("id");
    within("get_execution", store.get_execution(&id))
        .await
        .expect("get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_records_offsets_positions_and_executions() {
    let dir = TempDir::new("reopen");
    let path = db_file(&dir);
    {
        let store = open(&path, 3);
        let records = vec![
            ("k0".into(), Bytes::from_static(b"a")),
            ("k1".into(), Bytes::from_static(b"b")),
        ];
        let first = within("append", store.append(2, records))
            .await
            .expect("append");
        assert_eq!(first, 0, "a new log starts at offset 0");
        let e1 = exec("e1", 3, ExecutionStatus::InProgress);
        within("commit", store.commit(batch(2, 2, vec![e1])))
            .await
            .expect("commit");
    }
    let store = open(&path, 3);
    assert_eq!(store.partitions(), 3);
    let end = |p| within("end_offset", store.end_offset(p));
    assert_eq!(end(2).await.expect("end"), 2, "end offsets survive");
    assert_eq!(end(0).await.expect("end"), 0);
    let recs = within("read", store.read(2, 0, 10)).await.expect("read");
    assert_eq!(
        recs.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["k0", "k1"],
        "records survive"
    );
    assert_eq!(
        within("append", store.append(2, vec![("k2".into(), Bytes::new())])).await,
        Ok(2),
        "appends continue after the stored records"
    );
    let position = |p| within("position", store.position(p));
    assert_eq!(position(2).await.expect("position"), 2, "positions survive");
    assert_eq!(position(1).await.expect("position"), 0);
    let e = get(&store, "e1").await.expect("execution survives");
    assert_eq!(e.seq, 3);
    // The seq guard holds across reopen too.
    let older = exec("e1", 2, ExecutionStatus::Created);
    within("commit", store.commit(batch(2, 3, vec![older])))
        .await
        .expect("commit");
    assert_eq!(
        get(&store, "e1").await.map(|e| e.status),
        Some(ExecutionStatus::InProgress)
    );
}

#[tokio::test]
async fn reopening_with_another_partition_count_fails_and_says_why() {
    let dir = TempDir::new("parts");
    let path = db_file(&dir);
    drop(open(&path, 8));
    let err = SqliteStore::open(&path, 16, Durability::Process).expect_err("count mismatch");
    match &err {
        PortError::Backend(m) => {
            assert!(m.contains("8 partitions"), "names the stored count: {m}");
            assert!(m.contains("16"), "names the requested count: {m}");
        }
        other => panic!("expected a Backend error, got {other:?}"),
    }
    assert!(!err.is_retryable(), "a misconfiguration is not retryable");
    assert!(
        SqliteStore::open(&path, 8, Durability::Os).is_ok(),
        "the right count still opens (durability may change)"
    );
    assert!(
        SqliteStore::open(&dir.path().join("zero.db"), 0, Durability::Process).is_err(),
        "zero partitions is refused"
    );
}

#[tokio::test]
async fn commit_refuses_unknown_partitions_and_keeps_nothing() {
    let (store, _dir) = fresh(2, Durability::Process);
    let e9 = exec("e9", 1, ExecutionStatus::Created);
    let err = within("commit", store.commit(batch(2, 1, vec![e9])))
        .await
        .expect_err("partition 2 of 2");
    assert!(matches!(err, PortError::Backend(_)), "{err:?}");
    let page = within("list", store.list_executions(&ExecutionQuery::default()))
        .await
        .expect("list");
    assert!(page.items.is_empty(), "a refused batch writes nothing");
    assert_eq!(page.next_token, None);
}

#[tokio::test]
async fn page_size_zero_means_the_default() {
    let (store, _dir) = fresh(1, Durability::Process);
    let executions = (0..30)
        .map(|i| exec(&format!("e{i:02}"), 1, ExecutionStatus::Created))
        .collect();
    within("commit", store.commit(batch(0, 1, executions)))
        .await
        .expect("commit");
    let page = within("list", store.list_executions(&ExecutionQuery::default()))
        .await
        .expect("list");
    assert_eq!(
        page.items.len(),
        fleetcmd_adapters::DEFAULT_PAGE_SIZE as usize
    );
    assert!(page.next_token.is_some(), "more items follow");
    // Equal start times: the id breaks the tie, descending by default.
    assert_eq!(page.items[0].execution_id.as_str(), "e29");
}
