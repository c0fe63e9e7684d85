//! The snapshot store suite: one check per behaviour of [`SnapshotStore`]'s contract.
//! Each check has partitions of its own (the store must have at least 5: checks run in
//! parallel against a shared store, and a newer snapshot of another check would win), and the
//! offsets it saves start above anything an earlier run of the same check saved there.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fleetcmd_domain::ports::SnapshotStore;

use super::{unique, within};

#[doc(hidden)]
#[macro_export]
macro_rules! __snapshot_store_checks {
    ($callback:ident!($($args:tt)*)) => {
        $crate::$callback!($($args)*;
            the_latest_snapshot_is_loaded_whole,
            an_older_snapshot_never_replaces_a_newer_one,
            partitions_keep_their_own_snapshots,
            large_snapshots_round_trip,
        );
    };
}

crate::__snapshot_store_checks!(__conformance_all!(SnapshotStore));

/// Offsets above every earlier run's (runs of one check share the partitions): the time in
/// microseconds, times a thousand.
fn base_offset() -> u64 {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    micros.saturating_mul(1000)
}

async fn save(store: &dyn SnapshotStore, p: u32, offset: u64, data: &[u8]) {
    within(
        "save_snapshot",
        store.save_snapshot(p, offset, Bytes::copy_from_slice(data)),
    )
    .await
    .unwrap_or_else(|e| panic!("save_snapshot of partition {p} at {offset}: {e}"));
}

async fn load(store: &dyn SnapshotStore, p: u32) -> Option<(u64, Bytes)> {
    within("load_snapshot", store.load_snapshot(p))
        .await
        .unwrap_or_else(|e| panic!("load_snapshot of partition {p}: {e}"))
}

/// A saved snapshot is loaded back with its offset and every byte; a later one replaces it.
pub async fn the_latest_snapshot_is_loaded_whole(store: Arc<dyn SnapshotStore>) {
    let run = unique("snap");
    let p = 0;
    let base = base_offset();
    save(store.as_ref(), p, base + 10, format!("{run}-a").as_bytes()).await;
    assert_eq!(
        load(store.as_ref(), p).await,
        Some((base + 10, Bytes::from(format!("{run}-a")))),
        "the snapshot just saved"
    );
    save(store.as_ref(), p, base + 20, format!("{run}-b").as_bytes()).await;
    assert_eq!(
        load(store.as_ref(), p).await,
        Some((base + 20, Bytes::from(format!("{run}-b")))),
        "a newer snapshot replaces the older one"
    );
    // The same offset again (a new owner saving right after its rebuild) replaces it too.
    save(store.as_ref(), p, base + 20, format!("{run}-c").as_bytes()).await;
    assert_eq!(
        load(store.as_ref(), p).await,
        Some((base + 20, Bytes::from(format!("{run}-c"))))
    );
}

/// A slow former owner saving an older state cannot put it back over a newer one.
pub async fn an_older_snapshot_never_replaces_a_newer_one(store: Arc<dyn SnapshotStore>) {
    let p = 1;
    let base = base_offset();
    save(store.as_ref(), p, base + 100, b"newer").await;
    save(store.as_ref(), p, base + 50, b"older").await;
    assert_eq!(
        load(store.as_ref(), p).await,
        Some((base + 100, Bytes::from_static(b"newer"))),
        "the older snapshot must not replace the newer one"
    );
}

/// Each partition has its own snapshot.
pub async fn partitions_keep_their_own_snapshots(store: Arc<dyn SnapshotStore>) {
    let run = unique("snap");
    let (p, q) = (2, 3);
    let base = base_offset();
    save(store.as_ref(), p, base + 1, format!("{run}-p").as_bytes()).await;
    save(store.as_ref(), q, base + 2, format!("{run}-q").as_bytes()).await;
    assert_eq!(
        load(store.as_ref(), p).await,
        Some((base + 1, Bytes::from(format!("{run}-p"))))
    );
    assert_eq!(
        load(store.as_ref(), q).await,
        Some((base + 2, Bytes::from(format!("{run}-q"))))
    );
}

/// A snapshot of several megabytes (a shard with tens of thousands of live executions)
/// loads back byte for byte.
pub async fn large_snapshots_round_trip(store: Arc<dyn SnapshotStore>) {
    let p = 4;
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 17)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let offset = base_offset() + 7;
    save(store.as_ref(), p, offset, &data).await;
    let (loaded_offset, loaded) = load(store.as_ref(), p).await.expect("a snapshot");
    assert_eq!(loaded_offset, offset);
    assert_eq!(loaded.len(), data.len(), "every byte comes back");
    assert!(
        loaded.as_ref() == data.as_slice(),
        "the bytes come back unchanged"
    );
}
