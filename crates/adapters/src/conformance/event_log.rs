//! The event log suite: one check per behaviour of [`EventLog`]'s contract.
//!
//! Each check appends to partitions chosen from its run's id and checks every offset relative
//! to the end it reads first, so it assumes no other writer appends to those partitions while
//! it runs.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_domain::ports::{EventLog, LogRecord};

use super::{WAIT, unique, within};

#[doc(hidden)]
#[macro_export]
macro_rules! __event_log_checks {
    ($callback:ident!($($args:tt)*)) => {
        $crate::$callback!($($args)*;
            appends_are_ordered_and_contiguous,
            reads_resume_from_any_offset,
            partitions_have_independent_offsets,
            concurrent_appends_keep_each_batch_contiguous,
            binary_keys_and_payloads_round_trip,
            waiting_for_an_existing_record_returns_at_once,
            waiting_without_new_records_times_out_with_ok,
            an_append_wakes_a_waiter_on_any_of_its_partitions,
            missing_partitions_are_refused,
        );
    };
}

crate::__event_log_checks!(__conformance_all!(EventLog));

/// `n` records keyed `<prefix>-k<i>` with payloads `<prefix>-payload-<i>`.
pub fn records(prefix: &str, n: usize) -> Vec<(String, Bytes)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}-k{i}"),
                Bytes::from(format!("{prefix}-payload-{i}")),
            )
        })
        .collect()
}

/// A run id and the two partitions a check uses, chosen from it (`q == p` on a log of one
/// partition).
fn run_and_partitions(log: &dyn EventLog) -> (String, u32, u32) {
    let run = unique("log");
    let parts = log.partitions();
    assert!(parts >= 1, "an event log has at least one partition");
    let mut h = DefaultHasher::new();
    run.hash(&mut h);
    let p = (h.finish() % u64::from(parts)) as u32;
    (run, p, (p + 1) % parts)
}

async fn end(log: &dyn EventLog, p: u32) -> u64 {
    within("end_offset", log.end_offset(p))
        .await
        .unwrap_or_else(|e| panic!("end_offset of partition {p}: {e}"))
}

async fn append(log: &dyn EventLog, p: u32, batch: Vec<(String, Bytes)>) -> u64 {
    within("append", log.append(p, batch))
        .await
        .unwrap_or_else(|e| panic!("append to partition {p}: {e}"))
}

async fn read(log: &dyn EventLog, p: u32, from: u64, max: usize) -> Vec<LogRecord> {
    within("read", log.read(p, from, max))
        .await
        .unwrap_or_else(|e| panic!("read partition {p} from {from}: {e}"))
}

/// Every record of `partition` in `from..until`, however many reads it takes.
async fn read_all(log: &dyn EventLog, partition: u32, from: u64, until: u64) -> Vec<LogRecord> {
    let mut out = Vec::new();
    let mut next = from;
    while next < until {
        let batch = read(log, partition, next, (until - next) as usize).await;
        assert!(
            !batch.is_empty(),
            "read(partition {partition}, from {next}) returned nothing below the end offset {until}"
        );
        next = batch.last().map_or(next, |r| r.offset + 1);
        out.extend(batch);
    }
    out
}

/// `append` returns the previous end as the first offset, the end advances by the records
/// appended, and a read returns them at contiguous offsets with their keys and payloads, in
/// order, also across appends.
pub async fn appends_are_ordered_and_contiguous(log: Arc<dyn EventLog>) {
    let (run, p, _) = run_and_partitions(&*log);
    let log = &*log;
    let end_before = end(log, p).await;
    let batch = records(&format!("{run}-a"), 3);
    let first = append(log, p, batch.clone()).await;
    assert_eq!(
        first, end_before,
        "append must return the previous end offset as the first offset"
    );
    assert_eq!(
        end(log, p).await,
        end_before + 3,
        "end_offset must advance by the number of appended records"
    );
    let got = read(log, p, end_before, 10).await;
    assert_eq!(got.len(), 3, "read must return every appended record");
    for (i, (r, (k, v))) in got.iter().zip(&batch).enumerate() {
        assert_eq!(
            r.offset,
            end_before + i as u64,
            "offsets must be contiguous"
        );
        assert_eq!(&r.key, k, "records must keep their key and order");
        assert_eq!(&r.payload, v, "records must keep their payload and order");
    }

    let second = append(log, p, records(&format!("{run}-b"), 2)).await;
    assert_eq!(
        second,
        end_before + 3,
        "the next append must continue right after the previous one"
    );
    let all = read_all(log, p, end_before, end_before + 5).await;
    let offsets: Vec<u64> = all.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (end_before..end_before + 5).collect::<Vec<_>>(),
        "offsets must be contiguous across appends"
    );
    assert_eq!(all[3].key, format!("{run}-b-k0"));
}

/// A read starts at `from` (inclusive), returns at most `max` records, and returns nothing at
/// or past the end.
pub async fn reads_resume_from_any_offset(log: Arc<dyn EventLog>) {
    let (run, p, _) = run_and_partitions(&*log);
    let log = &*log;
    let first = append(log, p, records(&format!("{run}-r"), 3)).await;
    let got = read(log, p, first, 10).await;
    assert_eq!(got.len(), 3, "read must return every appended record");
    let two = read(log, p, first, 2).await;
    assert_eq!(two, got[..2].to_vec(), "read must honour max");
    let tail = read(log, p, first + 1, 10).await;
    assert_eq!(
        tail,
        got[1..].to_vec(),
        "read must start at `from` inclusive"
    );
    let past = read(log, p, first + 3, 10).await;
    assert!(
        past.is_empty(),
        "read at the end offset must return nothing, got {past:?}"
    );
    let far = read(log, p, first + 1000, 10).await;
    assert!(far.is_empty(), "read past the end must return nothing");
}

/// Each partition has its own offsets: appending to one moves no other.
pub async fn partitions_have_independent_offsets(log: Arc<dyn EventLog>) {
    let (run, p, q) = run_and_partitions(&*log);
    if q == p {
        println!("skipped: a log of one partition");
        return;
    }
    let log = &*log;
    let end_p = end(log, p).await;
    let end_q = end(log, q).await;
    append(log, p, records(&format!("{run}-ip"), 4)).await;
    assert_eq!(
        end(log, q).await,
        end_q,
        "appending to partition {p} must not move partition {q}"
    );
    let first_q = append(log, q, records(&format!("{run}-iq"), 2)).await;
    assert_eq!(
        first_q, end_q,
        "partition {q} has its own offsets, independent of {p}"
    );
    let got_q = read_all(log, q, end_q, end_q + 2).await;
    assert!(
        got_q
            .iter()
            .all(|r| r.key.starts_with(&format!("{run}-iq"))),
        "partition {q} must hold only its own records: {got_q:?}"
    );
    assert_eq!(
        end(log, p).await,
        end_p + 4,
        "appending to {q} must not move {p}"
    );
}

/// Concurrent appends all land, each batch at contiguous offsets from the first offset its
/// append returned, in order.
pub async fn concurrent_appends_keep_each_batch_contiguous(log: Arc<dyn EventLog>) {
    let (run, p, _) = run_and_partitions(&*log);
    let start = end(&*log, p).await;
    let writers = 4;
    let per_batch = 10;
    let rounds = 3;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for r in 0..rounds {
                let batch = records(&format!("{run}-w{w}r{r}"), per_batch);
                firsts.push((r, append(&*log, p, batch).await));
            }
            firsts
        }));
    }
    let mut firsts = Vec::new();
    for (w, t) in tasks.into_iter().enumerate() {
        for (r, first) in within("concurrent appends", t).await.expect("append task") {
            firsts.push((first, w, r));
        }
    }
    let total = (writers * rounds * per_batch) as u64;
    assert_eq!(
        end(&*log, p).await,
        start + total,
        "concurrent appends must all land"
    );
    let all = read_all(&*log, p, start, start + total).await;
    for (first, w, r) in firsts {
        for i in 0..per_batch {
            let rec = &all[(first - start) as usize + i];
            assert_eq!(
                rec.key,
                format!("{run}-w{w}r{r}-k{i}"),
                "a batch must occupy contiguous offsets from the returned first offset, in order"
            );
        }
    }
}

/// Keys (any UTF-8) and payloads (empty, 256 KiB, any bytes) come back byte for byte.
pub async fn binary_keys_and_payloads_round_trip(log: Arc<dyn EventLog>) {
    let (_, p, _) = run_and_partitions(&*log);
    let log = &*log;
    let mut big = vec![0u8; 256 * 1024];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let batch = vec![
        ("k-empty".to_owned(), Bytes::new()),
        ("k-big".to_owned(), Bytes::from(big)),
        ("k-\u{e9}".to_owned(), Bytes::from_static(&[0, 255, 0, 1])),
    ];
    let first = append(log, p, batch.clone()).await;
    let got = read_all(log, p, first, first + 3).await;
    for (r, (k, v)) in got.iter().zip(&batch) {
        assert_eq!(&r.key, k, "keys must round trip byte for byte");
        assert_eq!(&r.payload, v, "payloads must round trip byte for byte");
    }
}

/// Waiting for a record that exists returns at once, long before the timeout.
pub async fn waiting_for_an_existing_record_returns_at_once(log: Arc<dyn EventLog>) {
    let (run, p, _) = run_and_partitions(&*log);
    let first = append(&*log, p, records(&format!("{run}-there"), 1)).await;
    let t = Instant::now();
    within(
        "wait_for_records on an existing record",
        log.wait_for_records(&[(p, first)], Duration::from_secs(3600)),
    )
    .await
    .expect("wait_for_records");
    assert!(t.elapsed() < WAIT, "must not wait for records that exist");
}

/// With no record at the waited offset, the wait ends with `Ok` once its timeout passed (not
/// before, not with an error).
pub async fn waiting_without_new_records_times_out_with_ok(log: Arc<dyn EventLog>) {
    let (_, p, _) = run_and_partitions(&*log);
    let at = end(&*log, p).await;
    let timeout = Duration::from_millis(200);
    let t = Instant::now();
    within(
        "wait_for_records timing out",
        log.wait_for_records(&[(p, at)], timeout),
    )
    .await
    .expect("a timeout is Ok, not an error");
    assert!(
        t.elapsed() >= timeout / 2,
        "wait_for_records returned after {:?}, before its timeout {timeout:?} with no record",
        t.elapsed()
    );
}

/// An append wakes a waiter, also one that watches several partitions.
pub async fn an_append_wakes_a_waiter_on_any_of_its_partitions(log: Arc<dyn EventLog>) {
    let (run, p, q) = run_and_partitions(&*log);
    let at = end(&*log, p).await;
    let far = end(&*log, q).await + 1_000_000;
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move {
            let positions = if q == p {
                vec![(p, at)]
            } else {
                vec![(q, far), (p, at)]
            };
            log.wait_for_records(&positions, Duration::from_secs(3600))
                .await
        })
    };
    // Give the waiter a chance to park first (correct either way: a record already there
    // also ends the wait).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    append(&*log, p, records(&format!("{run}-wake"), 1)).await;
    within("a waiter woken by an append", waiter)
        .await
        .expect("waiter task")
        .expect("wait_for_records");
}

/// A partition outside the log is refused by every method.
pub async fn missing_partitions_are_refused(log: Arc<dyn EventLog>) {
    let parts = log.partitions();
    assert!(
        within("append", log.append(parts, records("bad", 1)))
            .await
            .is_err(),
        "append to partition {parts} of {parts} must fail"
    );
    assert!(
        within("read", log.read(parts, 0, 1)).await.is_err(),
        "read of a missing partition must fail"
    );
    assert!(
        within("end_offset", log.end_offset(parts)).await.is_err(),
        "end_offset of a missing partition must fail"
    );
}
