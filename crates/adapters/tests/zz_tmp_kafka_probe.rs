#![cfg(feature = "kafka")]
use bytes::Bytes;
use fleetcmd_adapters::kafka::KafkaLog;
use fleetcmd_domain::ports::EventLog;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let topic = fleetcmd_adapters::conformance::unique("probe-");
    let log = KafkaLog::connect("127.0.0.1:9092", &topic, 1)
        .await
        .unwrap();
    for n in [3usize, 1, 2, 5] {
        let recs: Vec<(String, Bytes)> = (0..n)
            .map(|i| (format!("k{i}"), Bytes::from(format!("v{i}"))))
            .collect();
        let first = log.append(0, recs).await;
        let end = log.end_offset(0).await;
        println!("append {n}: first {first:?} end {end:?}");
    }
    let recs = log.read(0, 0, 100).await;
    println!(
        "read: {:?}",
        recs.map(|v| v
            .iter()
            .map(|r| (r.offset, r.key.clone()))
            .collect::<Vec<_>>())
    );
}
