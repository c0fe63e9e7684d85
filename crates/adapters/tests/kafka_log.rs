#![cfg(feature = "kafka")]
//! The Kafka adapters against a real broker: the event log suite (plus what only Kafka has:
//! offsets from 0 seen by a fresh client, the fixed partition count, latencies), and shard
//! membership through a consumer group (split, hand-over on leave, hand-over on SIGKILL).
//!
//! The broker comes from `FLEETCMD_KAFKA_BROKERS`:
//! `deploy/engines/kafka.sh install && deploy/engines/kafka.sh start`, then
//! `FLEETCMD_KAFKA_BROKERS=127.0.0.1:9092 cargo test -p fleetcmd-adapters --features kafka
//! --test kafka_log`. Without it the tests print a skip line and pass — unless `CI` is set,
//! where a missing broker fails them. Every test uses its own topic and group.

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_adapters::conformance::{self, unique};
use fleetcmd_adapters::kafka::{KafkaLog, KafkaLogConfig, KafkaMembership};
use fleetcmd_domain::ports::{
    AssignmentChange, AssignmentHandler, EventLog, MembershipGuard, PortError, ShardMembership,
};
use tokio::sync::watch;

const BROKERS_ENV: &str = "FLEETCMD_KAFKA_BROKERS";
/// Bound on membership waits: a group join and a session timeout fit well within it.
const GROUP_WAIT: Duration = Duration::from_secs(45);

/// The brokers to test against, or `None` (after printing why) to skip.
fn brokers() -> Option<String> {
    match std::env::var(BROKERS_ENV) {
        Ok(b) if !b.trim().is_empty() => Some(b),
        _ if std::env::var_os("CI").is_some() => panic!(
            "{BROKERS_ENV} is not set but CI is: start a broker (deploy/engines/kafka.sh start) \
             and set {BROKERS_ENV}=127.0.0.1:9092"
        ),
        _ => {
            println!(
                "skipped: {BROKERS_ENV} is not set (deploy/engines/kafka.sh start, then \
                 {BROKERS_ENV}=127.0.0.1:9092)"
            );
            None
        }
    }
}

async fn new_log(brokers: &str, partitions: u32) -> Arc<KafkaLog> {
    let topic = unique("fleetcmd-test-");
    conformance::within("connect", KafkaLog::connect(brokers, &topic, partitions))
        .await
        .expect("connect and create the topic")
}

fn batch(prefix: &str, n: usize) -> Vec<(String, Bytes)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}-{i}"),
                Bytes::from(format!("{prefix}-v{i}")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_event_log_conformance() {
    let Some(brokers) = brokers() else { return };
    let log = new_log(&brokers, 4).await;
    conformance::event_log::run(log.clone()).await;
    // Twice on the same log: the suite works from the current end, not from zero.
    conformance::event_log::run(log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_event_log_conformance_single_partition() {
    let Some(brokers) = brokers() else { return };
    conformance::event_log::run(new_log(&brokers, 1).await).await;
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
        let records = batch(&format!("b{i}"), n);
        let first = writer.append(1, records.clone()).await.expect("append");
        assert_eq!(
            first,
            expected.len() as u64,
            "offsets of a new partition start at 0 and continue without gaps"
        );
        expected.extend(records);
    }
    assert_eq!(
        writer.end_offset(0).await.expect("end"),
        0,
        "untouched partition"
    );

    let reader = KafkaLog::connect(&brokers, &topic, 2)
        .await
        .expect("second client");
    assert_eq!(
        reader.end_offset(1).await.expect("end"),
        expected.len() as u64
    );
    let mut got = Vec::new();
    let mut from = 0;
    loop {
        let page = reader.read(1, from, 7).await.expect("read");
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
        reader.read(0, 0, 10).await.expect("read empty").is_empty(),
        "an empty partition reads as empty"
    );

    // Backwards (a seek), then forwards again from the buffer.
    let again = reader.read(1, 3, 4).await.expect("seek back");
    assert_eq!(
        again.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    let next = reader.read(1, 7, 2).await.expect("continue");
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
    let again = KafkaLog::connect(&brokers, log.topic(), 3).await;
    assert!(again.is_ok(), "reconnecting with the same count works");
    let err = KafkaLog::connect(&brokers, log.topic(), 5)
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
    let err = KafkaLog::connect_with(config)
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
    let waiter_log = KafkaLog::connect(&brokers, writer.topic(), 2)
        .await
        .expect("second client");

    let mut appends = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        writer
            .append(0, batch(&format!("rt{i}"), 1))
            .await
            .expect("append");
        appends.push(t.elapsed());
    }

    let mut wakes = Vec::new();
    let mut pos = waiter_log.end_offset(1).await.expect("end");
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
        ready_rx.await.expect("waiter started");
        let t = Instant::now();
        writer
            .append(1, batch(&format!("w{i}"), 1))
            .await
            .expect("append");
        let woke = waiter.await.expect("waiter");
        wakes.push(woke.saturating_duration_since(t));
        // Like the projector: read what arrived, then wait again from there.
        let got = waiter_log.read(1, pos, 10).await.expect("read");
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

// ---- membership --------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Event {
    Assigned(String, Vec<u32>),
    RevokeStarted(String, Vec<u32>),
    /// The handler returned.
    Revoked(String, Vec<u32>),
    /// The member was killed; its shards are free once the group notices.
    Died(String),
}

/// Every assignment change of every member, in the order they happened.
struct Recorder {
    events: Mutex<Vec<(Instant, Event)>>,
    changed: watch::Sender<usize>,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
        })
    }

    fn push(&self, e: Event) {
        let n = {
            let mut events = self.events.lock().expect("recorder");
            events.push((Instant::now(), e));
            events.len()
        };
        self.changed.send_replace(n);
    }

    /// A handler whose revocations take `revoke_work` (an owner draining its shard), so a
    /// member assigned a shard before the revocation finished would show in the record.
    fn handler(self: &Arc<Self>, member: &str, revoke_work: Duration) -> AssignmentHandler {
        let rec = self.clone();
        let member = member.to_owned();
        Arc::new(move |change| match change {
            AssignmentChange::Assigned(s) => rec.push(Event::Assigned(member.clone(), s)),
            AssignmentChange::Revoked(s) => {
                rec.push(Event::RevokeStarted(member.clone(), s.clone()));
                std::thread::sleep(revoke_work);
                rec.push(Event::Revoked(member.clone(), s));
            }
        })
    }

    fn snapshot(&self) -> Vec<(Instant, Event)> {
        self.events.lock().expect("recorder").clone()
    }

    /// Replays the record: who owns what now. Panics if a shard was ever assigned to a member
    /// while another one still held it (its revocation had not returned).
    fn owners(&self) -> HashMap<u32, String> {
        let mut owners: HashMap<u32, String> = HashMap::new();
        let mut revoking: HashMap<String, Vec<u32>> = HashMap::new();
        for (_, e) in self.snapshot() {
            match e {
                Event::Assigned(m, shards) => {
                    for s in shards {
                        if let Some(o) = owners.get(&s) {
                            assert!(
                                *o == m,
                                "shard {s} assigned to {m} while {o} still held it: {:#?}",
                                self.snapshot()
                            );
                        }
                        owners.insert(s, m.clone());
                    }
                }
                Event::Revoked(m, shards) => {
                    if let Some(started) = revoking.remove(&m) {
                        assert_eq!(started, shards, "{m}'s revocation ended as it started");
                    }
                    for s in shards {
                        assert_eq!(owners.remove(&s).as_deref(), Some(m.as_str()));
                    }
                }
                Event::Died(m) => owners.retain(|_, o| *o != m),
                Event::RevokeStarted(m, shards) => {
                    revoking.insert(m, shards);
                }
            }
        }
        owners
    }

    fn owned_by(&self, member: &str) -> BTreeSet<u32> {
        self.owners()
            .into_iter()
            .filter(|(_, m)| m == member)
            .map(|(s, _)| s)
            .collect()
    }

    async fn wait_until(&self, what: &str, pred: impl Fn(&HashMap<u32, String>) -> bool) {
        let mut rx = self.changed.subscribe();
        let waited = tokio::time::timeout(GROUP_WAIT, async {
            loop {
                if pred(&self.owners()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{what}: not within {GROUP_WAIT:?}; record: {:#?}",
            self.snapshot()
        );
    }

    /// When `member` was last assigned something.
    fn last_assigned(&self, member: &str) -> Option<Instant> {
        self.snapshot()
            .into_iter()
            .rev()
            .find(|(_, e)| matches!(e, Event::Assigned(m, _) if m == member))
            .map(|(t, _)| t)
    }
}

fn all(partitions: u32) -> BTreeSet<u32> {
    (0..partitions).collect()
}

fn split_between(owners: &HashMap<u32, String>, a: &str, b: &str, partitions: u32) -> bool {
    let held: BTreeSet<u32> = owners.keys().copied().collect();
    held == all(partitions) && owners.values().any(|m| m == a) && owners.values().any(|m| m == b)
}

fn owned_all(owners: &HashMap<u32, String>, member: &str, partitions: u32) -> bool {
    owners.len() == partitions as usize && owners.values().all(|m| m == member)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_splits_shards_and_hands_them_over_on_leave() {
    let Some(brokers) = brokers() else { return };
    let partitions = 6;
    let log = new_log(&brokers, partitions).await;
    let group = unique("fleetcmd-test-group-");
    let membership = KafkaMembership::new(&brokers, log.topic()).expect("membership");
    let rec = Recorder::new();
    let work = Duration::from_millis(300);

    let a = membership
        .join(&group, rec.handler("a", work))
        .await
        .expect("a joins");
    rec.wait_until("a alone owns every shard", |o| {
        owned_all(o, "a", partitions)
    })
    .await;

    let b = membership
        .join(&group, rec.handler("b", work))
        .await
        .expect("b joins");
    rec.wait_until("a and b split the shards", |o| {
        split_between(o, "a", "b", partitions)
    })
    .await;
    let (held_a, held_b) = (rec.owned_by("a"), rec.owned_by("b"));
    assert!(held_a.is_disjoint(&held_b), "no shard has two owners");
    assert_eq!(
        held_a.union(&held_b).copied().collect::<BTreeSet<_>>(),
        all(partitions),
        "every shard is owned"
    );
    assert_eq!(
        held_a.len(),
        3,
        "range assignment splits 6 shards 3/3: {held_a:?} {held_b:?}"
    );

    let t = Instant::now();
    drop(a);
    let dropped_in = t.elapsed();
    let revoked = rec
        .snapshot()
        .into_iter()
        .rev()
        .find(|(_, e)| matches!(e, Event::Revoked(m, _) if m == "a"));
    let Some((revoked_at, Event::Revoked(_, shards))) = revoked else {
        panic!(
            "dropping a's guard must revoke its shards first: {:#?}",
            rec.snapshot()
        );
    };
    assert_eq!(
        shards.into_iter().collect::<BTreeSet<_>>(),
        held_a,
        "leaving revokes everything the member held"
    );
    rec.wait_until("b owns every shard after a left", |o| {
        owned_all(o, "b", partitions)
    })
    .await;
    let assigned_at = rec.last_assigned("b").expect("b was assigned");
    assert!(
        assigned_at > revoked_at,
        "b is assigned a's shards only after a's revocation returned"
    );
    println!(
        "leave: guard drop took {dropped_in:?} (incl. {work:?} of revoke work); b assigned \
         everything {:?} after a's revocation returned",
        assigned_at - revoked_at
    );
    // A final replay (panics on any overlap) over the whole record.
    rec.owners();
    drop(b);
    assert!(rec.owned_by("b").is_empty(), "leaving revokes everything");
}

const CHILD_ENV: &str = "FLEETCMD_KAFKA_CHILD_MEMBER";
const CHILD_PREFIX: &str = "FLEETCMD-CHILD";

/// Not a test on its own: `membership_moves_the_shards_of_a_killed_member` runs it in a
/// child process (which it then SIGKILLs) to have a member that dies without leaving.
#[test]
#[ignore = "run as a child process by membership_moves_the_shards_of_a_killed_member"]
fn membership_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let (Some(brokers), Some(topic), Some(group)) = (parts.next(), parts.next(), parts.next())
    else {
        panic!("{CHILD_ENV} must be brokers|topic|group");
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let membership = KafkaMembership::new(brokers, topic).expect("membership");
    let handler: AssignmentHandler = Arc::new(|change| {
        let (kind, shards) = match change {
            AssignmentChange::Assigned(s) => ("assigned", s),
            AssignmentChange::Revoked(s) => ("revoked", s),
        };
        let list: Vec<String> = shards.iter().map(u32::to_string).collect();
        println!("{CHILD_PREFIX} {kind} {}", list.join(","));
    });
    let _guard: Box<dyn MembershipGuard> = rt
        .block_on(membership.join(group, handler))
        .expect("child joins");
    loop {
        std::thread::park();
    }
}

/// Kills the child on drop, so a failing test leaves no member behind.
struct ChildProcess(std::process::Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// On tansu 0.6 this relies on the members' assignment check (see
/// `KafkaMembershipConfig::assignment_check`): tansu notices the dead member and rebalances,
/// but re-delivers the previous assignment; the survivor then rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_moves_the_shards_of_a_killed_member() {
    let Some(brokers) = brokers() else { return };
    killed_member_hands_over(&brokers, false).await;
}

/// The same when the killed member is the group's leader (it joined first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_moves_the_shards_of_a_killed_leader() {
    let Some(brokers) = brokers() else { return };
    killed_member_hands_over(&brokers, true).await;
}

/// A killed member that restarts (as a supervisor would restart it) joins as a new member:
/// the shards are spread over the live members again, none of them owned twice. Also what
/// ends tansu's stale assignment after a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_recovers_when_a_killed_member_restarts() {
    let Some(brokers) = brokers() else { return };
    let partitions = 4;
    let log = new_log(&brokers, partitions).await;
    let group = unique("fleetcmd-test-group-");
    let rec = Recorder::new();
    let membership = KafkaMembership::new(&brokers, log.topic()).expect("membership");
    let survivor = membership
        .join(&group, rec.handler("survivor", Duration::ZERO))
        .await
        .expect("survivor joins");
    rec.wait_until("the survivor owns every shard", |o| {
        owned_all(o, "survivor", partitions)
    })
    .await;
    let mut child = spawn_child(&brokers, log.topic(), &group, &rec, "child");
    rec.wait_until("the child and the survivor split the shards", |o| {
        split_between(o, "child", "survivor", partitions)
    })
    .await;

    child.0.kill().expect("kill the child");
    let killed = Instant::now();
    rec.push(Event::Died("child".into()));
    let _ = child.0.wait();
    let _restarted = spawn_child(&brokers, log.topic(), &group, &rec, "restarted");
    rec.wait_until(
        "the restarted member and the survivor split the shards",
        |o| split_between(o, "restarted", "survivor", partitions),
    )
    .await;
    println!(
        "kill + restart: every shard owned again {:?} after the kill",
        killed.elapsed()
    );
    drop(survivor);
}

/// Starts `membership_child` in a child process whose assignment changes are recorded as
/// `member`.
fn spawn_child(
    brokers: &str,
    topic: &str,
    group: &str,
    rec: &Arc<Recorder>,
    member: &str,
) -> ChildProcess {
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "membership_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{brokers}|{topic}|{group}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child member");
    let stdout = child.stdout.take().expect("piped stdout");
    let rec = rec.clone();
    let member = member.to_owned();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            // libtest may have printed "test membership_child ... " on the same line.
            let Some(at) = line.find(CHILD_PREFIX) else {
                continue;
            };
            let mut words = line[at + CHILD_PREFIX.len()..].split_whitespace();
            let kind = words.next().unwrap_or_default();
            let shards: Vec<u32> = words
                .next()
                .unwrap_or_default()
                .split(',')
                .filter_map(|s| s.parse().ok())
                .collect();
            match kind {
                "assigned" => rec.push(Event::Assigned(member.clone(), shards)),
                "revoked" => rec.push(Event::Revoked(member.clone(), shards)),
                _ => {}
            }
        }
    });
    ChildProcess(child)
}

/// A member in a child process (SIGKILLed: no revocation, no leave) and a survivor here;
/// `child_leads`: the child joins first, so it is the group's leader.
async fn killed_member_hands_over(brokers: &str, child_leads: bool) {
    let partitions = 4;
    let log = new_log(brokers, partitions).await;
    let group = unique("fleetcmd-test-group-");
    let rec = Recorder::new();
    let membership = KafkaMembership::new(brokers, log.topic()).expect("membership");
    let join_survivor = || membership.join(&group, rec.handler("survivor", Duration::ZERO));
    let mut survivor = None;
    if !child_leads {
        survivor = Some(join_survivor().await.expect("survivor joins"));
        rec.wait_until("the survivor owns every shard", |o| {
            owned_all(o, "survivor", partitions)
        })
        .await;
    }
    let mut child = spawn_child(brokers, log.topic(), &group, &rec, "child");
    if child_leads {
        rec.wait_until("the child owns every shard", |o| {
            owned_all(o, "child", partitions)
        })
        .await;
        survivor = Some(join_survivor().await.expect("survivor joins"));
    }
    rec.wait_until("the child and the survivor split the shards", |o| {
        split_between(o, "child", "survivor", partitions)
    })
    .await;

    // SIGKILL: no revocation, no leave; the group notices after the session timeout.
    child.0.kill().expect("kill the child");
    let killed = Instant::now();
    rec.push(Event::Died("child".into()));
    let _ = child.0.wait();
    rec.wait_until("the survivor owns every shard", |o| {
        owned_all(o, "survivor", partitions)
    })
    .await;
    let moved = rec.last_assigned("survivor").expect("assigned") - killed;
    println!("SIGKILL: the survivor owned every shard {moved:?} after the kill");
    assert!(
        moved < Duration::from_secs(30),
        "a dead member's shards move within the session timeout and a rebalance: {moved:?}"
    );
    drop(survivor);
}
