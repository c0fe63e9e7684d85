#![cfg(feature = "kafka")]
//! The Kafka event log against a real broker: the event log suite, plus what only Kafka has:
//! offsets from 0 seen by a fresh client, the fixed partition count, latencies. Shard
//! membership is in `kafka_membership.rs`.
//!
//! The broker comes from `FLEETCMD_KAFKA_BROKERS`:
//! `deploy/engines/kafka.sh install && deploy/engines/kafka.sh start`, then
//! `FLEETCMD_KAFKA_BROKERS=127.0.0.1:9092 cargo test -p fleetcmd-adapters --features kafka
//! --test kafka_log`. Without it the tests print a skip line and pass — unless `CI` is set,
//! where a missing broker fails them. Every test uses its own topic.
//!
//! `FLEETCMD_KAFKA_COMPAT` (`none`, the default, or `tansu`) selects the adapters'
//! `KafkaCompat`, as `kafka.compat` does for `fleetcmd run`: `deploy/test.sh` sets `tansu`
//! when `deploy/engines/kafka.sh` runs the tansu stand-in (`FLEETCMD_KAFKA_ENGINE=tansu`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_adapters::conformance::event_log::records;
use fleetcmd_adapters::conformance::within;
use fleetcmd_adapters::kafka::{KafkaLog, KafkaLogConfig};
use fleetcmd_domain::ports::{EventLog, LogRecord, PortError};

#[path = "support/kafka.rs"]
mod support;
use support::{brokers, connect, new_log};

/// The log the event log suite runs on, `None` (skipped) without a broker.
async fn suite_log(partitions: u32) -> Option<Arc<KafkaLog>> {
    Some(new_log(&brokers()?, partitions).await)
}

mod event_log_on_four_partitions {
    use super::*;
    fleetcmd_adapters::event_log_conformance!(async || suite_log(4).await);
}

mod event_log_on_one_partition {
    use super::*;
    fleetcmd_adapters::event_log_conformance!(async || suite_log(1).await);
}

async fn append(log: &KafkaLog, partition: u32, records: Vec<(String, Bytes)>) -> u64 {
    within("append", log.append(partition, records))
        .await
        .expect("append")
}

async fn end(log: &KafkaLog, partition: u32) -> u64 {
    within("end_offset", log.end_offset(partition))
        .await
        .expect("end")
}

async fn read(log: &KafkaLog, partition: u32, from: u64, max: usize) -> Vec<LogRecord> {
    within("read", log.read(partition, from, max))
        .await
        .expect("read")
}

/// Kafka offsets (no transactions) start at 0 and are contiguous, as the port requires: a
/// fresh client rebuilds a partition the way a new shard owner does (read from 0 until
/// nothing comes back), in small pages and after seeking backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_start_at_zero_and_a_new_client_reads_everything() {
    let Some(brokers) = brokers() else { return };
    let writer = new_log(&brokers, 2).await;
    let topic = writer.topic().to_owned();
    let mut expected = Vec::new();
    for (i, n) in [1usize, 5, 17, 3, 40].into_iter().enumerate() {
        let records = records(&format!("b{i}"), n);
        let first = append(&writer, 1, records.clone()).await;
        assert_eq!(
            first,
            expected.len() as u64,
            "offsets of a new partition start at 0 and continue without gaps"
        );
        expected.extend(records);
    }
    assert_eq!(end(&writer, 0).await, 0, "untouched partition");

    let reader = connect(&brokers, &topic, 2).await;
    assert_eq!(end(&reader, 1).await, expected.len() as u64);
    let mut got = Vec::new();
    let mut from = 0;
    loop {
        let page = read(&reader, 1, from, 7).await;
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 7, "read must honour max");
        from = last.offset + 1;
        got.extend(page);
    }
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..expected.len() as u64).collect::<Vec<_>>());
    for (r, (k, v)) in got.iter().zip(&expected) {
        assert_eq!(
            (&r.key, &r.payload),
            (k, v),
            "records keep key, payload and order"
        );
    }
    assert!(
        read(&reader, 0, 0, 10).await.is_empty(),
        "an empty partition reads as empty"
    );

    // Backwards (a seek), then forwards again from the buffer.
    let again = read(&reader, 1, 3, 4).await;
    assert_eq!(
        again.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    let next = read(&reader, 1, 7, 2).await;
    assert_eq!(
        next.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![7, 8]
    );
    assert_eq!(next[0].key, expected[7].0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_refuses_another_partition_count() {
    let Some(brokers) = brokers() else { return };
    let log = new_log(&brokers, 3).await;
    let again = within("connect", KafkaLog::connect(&brokers, log.topic(), 3)).await;
    assert!(again.is_ok(), "reconnecting with the same count works");
    let err = within("connect", KafkaLog::connect(&brokers, log.topic(), 5))
        .await
        .expect_err("another partition count must be refused");
    assert!(
        matches!(&err, PortError::Backend(m) if m.contains('3') && m.contains('5')),
        "the error names both counts and is not retryable: {err:?}"
    );
}

/// Needs no broker: nothing listens on the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_retryable() {
    let mut config = KafkaLogConfig::new("127.0.0.1:1", "fleetcmd-nowhere", 2);
    config.request_timeout = Duration::from_secs(2);
    let t = Instant::now();
    let err = within("connect", KafkaLog::connect_with(config))
        .await
        .expect_err("nothing listens there");
    assert!(
        err.is_retryable(),
        "a broker that cannot be reached is retryable: {err:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "connect gives up within its request timeout"
    );
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Measures (and prints) the append round trip and how fast a waiter in another client wakes
/// after an append; bounds are loose, they catch a wait that only ends at its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_and_wake_up_latency() {
    let Some(brokers) = brokers() else { return };
    let writer = new_log(&brokers, 2).await;
    let waiter_log = connect(&brokers, writer.topic(), 2).await;

    let mut appends = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        append(&writer, 0, records(&format!("rt{i}"), 1)).await;
        appends.push(t.elapsed());
    }

    let mut wakes = Vec::new();
    let mut pos = end(&waiter_log, 1).await;
    for i in 0..50 {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let log = waiter_log.clone();
        let waiter = tokio::spawn(async move {
            let _ = ready_tx.send(());
            log.wait_for_records(&[(1, pos)], Duration::from_secs(10))
                .await
                .expect("wait");
            Instant::now()
        });
        within("the waiter starts", ready_rx)
            .await
            .expect("waiter started");
        let t = Instant::now();
        append(&writer, 1, records(&format!("w{i}"), 1)).await;
        let woke = within("the waiter wakes", waiter).await.expect("waiter");
        wakes.push(woke.saturating_duration_since(t));
        // Like the projector: read what arrived, then wait again from there.
        let got = read(&waiter_log, 1, pos, 10).await;
        assert_eq!(got.len(), 1, "the waiter's client reads the new record");
        pos += 1;
    }
    let (a50, a99) = (
        percentile(&mut appends, 0.5),
        percentile(&mut appends, 0.99),
    );
    let (w50, w99) = (percentile(&mut wakes, 0.5), percentile(&mut wakes, 0.99));
    println!("append round trip: p50 {a50:?}, p99 {a99:?} (200 single-record appends)");
    println!("append start -> waiter in another client woken: p50 {w50:?}, p99 {w99:?} (50 runs)");
    assert!(a50 < Duration::from_millis(200), "append p50 {a50:?}");
    assert!(w50 < Duration::from_millis(500), "wake-up p50 {w50:?}");
}
