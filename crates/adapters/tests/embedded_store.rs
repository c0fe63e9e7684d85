//! The SQLite store against the event log and read model suites, plus what only a file
//! store has: reopening, the fixed partition count, durability modes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fleetcmd_adapters::conformance;
use fleetcmd_adapters::embedded::sqlite::{Durability, SqliteStore};
use fleetcmd_domain::ports::{
    EventLog, ExecutionQuery, ExecutionWrite, PortError, ProjectionBatch, ReadModel,
};
use fleetcmd_domain::{CommandId, Execution, ExecutionId, ExecutionStatus, Target};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(conformance::unique(&format!("fleetcmd-{name}-")));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    fn file(&self) -> PathBuf {
        // A subdirectory that does not exist yet: `open` must create it.
        self.0.join("data").join("fleetcmd.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path, partitions: u32) -> Arc<SqliteStore> {
    SqliteStore::open(path, partitions, Durability::Process).expect("open store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_event_log_conformance() {
    let dir = TempDir::new("log");
    let store = open(&dir.file(), 4);
    conformance::event_log::run(store.clone()).await;
    // Twice on the same store: the suite works from the current end, not from zero.
    conformance::event_log::run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_event_log_conformance_single_partition_fsync() {
    let dir = TempDir::new("log1");
    let store = SqliteStore::open(&dir.file(), 1, Durability::Os).expect("open");
    conformance::event_log::run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_model_conformance() {
    let dir = TempDir::new("rm");
    let store = open(&dir.file(), 2);
    conformance::read_model::run(store.clone()).await;
    conformance::read_model::run(store).await;
}

fn exec(id: &str, seq: u64, status: ExecutionStatus) -> Execution {
    Execution {
        execution_id: ExecutionId::parse(id).expect("id"),
        command_id: CommandId::parse("reboot").expect("id"),
        target: Target::thing("dev-1").expect("target"),
        status,
        status_reason: None,
        result: Default::default(),
        parameters: Default::default(),
        timeout_secs: 10,
        client_token: None,
        created_at: 1_000,
        last_updated_at: 1_000,
        started_at: 1_000,
        completed_at: None,
        time_to_live: i64::MAX,
        terminal: false,
        seq,
        request_fingerprint: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_records_offsets_positions_and_executions() {
    let dir = TempDir::new("reopen");
    let path = dir.file();
    {
        let store = open(&path, 3);
        let first = store
            .append(
                2,
                vec![
                    ("k0".into(), Bytes::from_static(b"a")),
                    ("k1".into(), Bytes::from_static(b"b")),
                ],
            )
            .await
            .expect("append");
        assert_eq!(first, 0, "a new log starts at offset 0");
        store
            .commit(ProjectionBatch {
                partition: 2,
                next_offset: 2,
                commands: Vec::new(),
                executions: vec![ExecutionWrite::Upsert(exec(
                    "e1",
                    3,
                    ExecutionStatus::InProgress,
                ))],
            })
            .await
            .expect("commit");
    }
    let store = open(&path, 3);
    assert_eq!(store.partitions(), 3);
    assert_eq!(
        store.end_offset(2).await.expect("end"),
        2,
        "end offsets survive"
    );
    assert_eq!(store.end_offset(0).await.expect("end"), 0);
    let recs = store.read(2, 0, 10).await.expect("read");
    assert_eq!(
        recs.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
        ["k0", "k1"],
        "records survive"
    );
    assert_eq!(
        store.append(2, vec![("k2".into(), Bytes::new())]).await,
        Ok(2),
        "appends continue after the stored records"
    );
    assert_eq!(
        store.position(2).await.expect("position"),
        2,
        "positions survive"
    );
    assert_eq!(store.position(1).await.expect("position"), 0);
    let e = store
        .get_execution(&ExecutionId::parse("e1").expect("id"))
        .await
        .expect("get")
        .expect("execution survives");
    assert_eq!(e.seq, 3);
    // The seq guard holds across reopen too.
    store
        .commit(ProjectionBatch {
            partition: 2,
            next_offset: 3,
            commands: Vec::new(),
            executions: vec![ExecutionWrite::Upsert(exec(
                "e1",
                2,
                ExecutionStatus::Created,
            ))],
        })
        .await
        .expect("commit");
    assert_eq!(
        store
            .get_execution(&ExecutionId::parse("e1").expect("id"))
            .await
            .expect("get")
            .map(|e| e.status),
        Some(ExecutionStatus::InProgress)
    );
}

#[tokio::test]
async fn reopening_with_another_partition_count_fails_and_says_why() {
    let dir = TempDir::new("parts");
    let path = dir.file();
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
        SqliteStore::open(&dir.0.join("zero.db"), 0, Durability::Process).is_err(),
        "zero partitions is refused"
    );
}

#[tokio::test]
async fn commit_refuses_unknown_partitions_and_keeps_nothing() {
    let dir = TempDir::new("badpart");
    let store = open(&dir.file(), 2);
    let err = store
        .commit(ProjectionBatch {
            partition: 2,
            next_offset: 1,
            commands: Vec::new(),
            executions: vec![ExecutionWrite::Upsert(exec(
                "e9",
                1,
                ExecutionStatus::Created,
            ))],
        })
        .await
        .expect_err("partition 2 of 2");
    assert!(matches!(err, PortError::Backend(_)), "{err:?}");
    let page = store
        .list_executions(&ExecutionQuery::default())
        .await
        .expect("list");
    assert!(page.items.is_empty(), "a refused batch writes nothing");
    assert_eq!(page.next_token, None);
}

#[tokio::test]
async fn page_size_zero_means_the_default() {
    let dir = TempDir::new("pagesize");
    let store = open(&dir.file(), 1);
    let writes = (0..30)
        .map(|i| ExecutionWrite::Upsert(exec(&format!("e{i:02}"), 1, ExecutionStatus::Created)))
        .collect();
    store
        .commit(ProjectionBatch {
            partition: 0,
            next_offset: 1,
            commands: Vec::new(),
            executions: writes,
        })
        .await
        .expect("commit");
    let page = store
        .list_executions(&ExecutionQuery::default())
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
