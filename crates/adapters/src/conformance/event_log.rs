//! The event log suite.
//!
//! It appends to two partitions chosen from the run's id and checks every offset relative to
//! the end it reads first, so it assumes no other writer appends to those partitions while
//! it runs.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_domain::ports::{EventLog, LogRecord};

use super::{WAIT, unique, within};

fn records(prefix: &str, n: usize) -> Vec<(String, Bytes)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}-k{i}"),
                Bytes::from(format!("{prefix}-payload-{i}")),
            )
        })
        .collect()
}

async fn read_all(log: &dyn EventLog, partition: u32, from: u64, until: u64) -> Vec<LogRecord> {
    let mut out = Vec::new();
    let mut next = from;
    while next < until {
        let batch = within("read", log.read(partition, next, (until - next) as usize))
            .await
            .expect("read must succeed below the end offset");
        assert!(
            !batch.is_empty(),
            "read(partition {partition}, from {next}) returned nothing below the end offset {until}"
        );
        next = batch.last().map_or(next, |r| r.offset + 1);
        out.extend(batch);
    }
    out
}

/// Runs the event log suite against `log`.
pub async fn run(log: Arc<dyn EventLog>) {
    let run = unique("log");
    let parts = log.partitions();
    assert!(parts >= 1, "an event log has at least one partition");
    let mut h = DefaultHasher::new();
    run.hash(&mut h);
    let p = (h.finish() % u64::from(parts)) as u32;
    let q = (p + 1) % parts;

    append_read_and_end(&*log, p, &run).await;
    if q != p {
        partitions_are_independent(&*log, p, q, &run).await;
    }
    concurrent_appends_are_atomic(&log, p, &run).await;
    binary_payloads_round_trip(&*log, p).await;
    wait_for_records(&log, p, q, &run).await;
    bad_partitions_are_refused(&*log, parts).await;
}

async fn append_read_and_end(log: &dyn EventLog, p: u32, run: &str) {
    let end = log.end_offset(p).await.expect("end_offset");
    let batch = records(&format!("{run}-a"), 3);
    let first = within("append", log.append(p, batch.clone()))
        .await
        .expect("append");
    assert_eq!(
        first, end,
        "append must return the previous end offset as the first offset"
    );
    assert_eq!(
        log.end_offset(p).await.expect("end_offset"),
        end + 3,
        "end_offset must advance by the number of appended records"
    );

    let got = log.read(p, end, 10).await.expect("read");
    assert_eq!(got.len(), 3, "read must return every appended record");
    for (i, (r, (k, v))) in got.iter().zip(&batch).enumerate() {
        assert_eq!(r.offset, end + i as u64, "offsets must be contiguous");
        assert_eq!(&r.key, k, "records must keep their key and order");
        assert_eq!(&r.payload, v, "records must keep their payload and order");
    }

    let two = log.read(p, end, 2).await.expect("read with max");
    assert_eq!(two, got[..2].to_vec(), "read must honour max");
    let tail = log.read(p, end + 1, 10).await.expect("read from middle");
    assert_eq!(
        tail,
        got[1..].to_vec(),
        "read must start at `from` inclusive"
    );
    let past = log.read(p, end + 3, 10).await.expect("read at end");
    assert!(
        past.is_empty(),
        "read at the end offset must return nothing, got {past:?}"
    );
    let far = log.read(p, end + 1000, 10).await.expect("read past end");
    assert!(far.is_empty(), "read past the end must return nothing");

    let second = log
        .append(p, records(&format!("{run}-b"), 2))
        .await
        .expect("second append");
    assert_eq!(
        second,
        end + 3,
        "the next append must continue right after the previous one"
    );
    let all = read_all(log, p, end, end + 5).await;
    let offsets: Vec<u64> = all.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        (end..end + 5).collect::<Vec<_>>(),
        "offsets must be contiguous across appends"
    );
    assert_eq!(all[3].key, format!("{run}-b-k0"));
}

async fn partitions_are_independent(log: &dyn EventLog, p: u32, q: u32, run: &str) {
    let end_p = log.end_offset(p).await.expect("end_offset p");
    let end_q = log.end_offset(q).await.expect("end_offset q");
    log.append(p, records(&format!("{run}-ip"), 4))
        .await
        .expect("append p");
    assert_eq!(
        log.end_offset(q).await.expect("end_offset q"),
        end_q,
        "appending to partition {p} must not move partition {q}"
    );
    let first_q = log
        .append(q, records(&format!("{run}-iq"), 2))
        .await
        .expect("append q");
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
        log.end_offset(p).await.expect("end_offset p"),
        end_p + 4,
        "appending to {q} must not move {p}"
    );
}

async fn concurrent_appends_are_atomic(log: &Arc<dyn EventLog>, p: u32, run: &str) {
    let start = log.end_offset(p).await.expect("end_offset");
    let writers = 4;
    let per_batch = 10;
    let rounds = 3;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let run = run.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for r in 0..rounds {
                let batch = records(&format!("{run}-w{w}r{r}"), per_batch);
                firsts.push((r, log.append(p, batch).await.expect("concurrent append")));
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
        log.end_offset(p).await.expect("end_offset"),
        start + total,
        "concurrent appends must all land"
    );
    let all = read_all(&**log, p, start, start + total).await;
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

async fn binary_payloads_round_trip(log: &dyn EventLog, p: u32) {
    let mut big = vec![0u8; 256 * 1024];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let batch = vec![
        ("k-empty".to_owned(), Bytes::new()),
        ("k-big".to_owned(), Bytes::from(big)),
        ("k-\u{e9}".to_owned(), Bytes::from_static(&[0, 255, 0, 1])),
    ];
    let first = log.append(p, batch.clone()).await.expect("append binary");
    let got = read_all(log, p, first, first + 3).await;
    for (r, (k, v)) in got.iter().zip(&batch) {
        assert_eq!(&r.key, k, "keys must round trip byte for byte");
        assert_eq!(&r.payload, v, "payloads must round trip byte for byte");
    }
}

async fn wait_for_records(log: &Arc<dyn EventLog>, p: u32, q: u32, run: &str) {
    let end = log.end_offset(p).await.expect("end_offset");

    // Already there: returns at once, long before the timeout.
    let t = Instant::now();
    within(
        "wait_for_records on an existing record",
        log.wait_for_records(&[(p, end - 1)], Duration::from_secs(3600)),
    )
    .await
    .expect("wait_for_records");
    assert!(t.elapsed() < WAIT, "must not wait for records that exist");

    // Nothing comes: returns Ok after the timeout.
    let timeout = Duration::from_millis(200);
    let t = Instant::now();
    within(
        "wait_for_records timing out",
        log.wait_for_records(&[(p, end)], timeout),
    )
    .await
    .expect("a timeout is Ok, not an error");
    assert!(
        t.elapsed() >= timeout / 2,
        "wait_for_records returned after {:?}, before its timeout {timeout:?} with no record",
        t.elapsed()
    );

    // An append wakes a waiter, also one watching several partitions.
    let waiter = {
        let log = log.clone();
        let far = log.end_offset(q).await.expect("end_offset q") + 1_000_000;
        tokio::spawn(async move {
            let positions = if q == p {
                vec![(p, end)]
            } else {
                vec![(q, far), (p, end)]
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
    log.append(p, records(&format!("{run}-wake"), 1))
        .await
        .expect("append");
    within("a waiter woken by an append", waiter)
        .await
        .expect("waiter task")
        .expect("wait_for_records");
}

async fn bad_partitions_are_refused(log: &dyn EventLog, parts: u32) {
    assert!(
        log.append(parts, records("bad", 1)).await.is_err(),
        "append to partition {parts} of {parts} must fail"
    );
    assert!(
        log.read(parts, 0, 1).await.is_err(),
        "read of a missing partition must fail"
    );
    assert!(
        log.end_offset(parts).await.is_err(),
        "end_offset of a missing partition must fail"
    );
}
