#![cfg(feature = "kafka")]
//! Kafka shard membership against a real broker, through a consumer group: the split, the
//! hand-over on leave, the hand-over on SIGKILL (of a member and of the group's leader), and
//! a killed member that restarts. Brokers and compat mode as in `kafka_log.rs`
//! (`FLEETCMD_KAFKA_BROKERS`, `FLEETCMD_KAFKA_COMPAT`). Every test uses its own topic and
//! group.

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetcmd_adapters::conformance::{unique, within};
use fleetcmd_adapters::kafka::KafkaLog;
use fleetcmd_domain::ports::{
    AssignmentChange, AssignmentHandler, MembershipGuard, ShardMembership,
};
use tokio::sync::watch;

#[path = "support/kafka.rs"]
mod support;
use support::{brokers, membership, new_log};

/// Bound on membership waits: a group join and a session timeout fit well within it.
const GROUP_WAIT: Duration = Duration::from_secs(45);

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
    let membership = membership(&brokers, log.topic());
    let rec = Recorder::new();
    let work = Duration::from_millis(300);

    let a = within("a joins", membership.join(&group, rec.handler("a", work)))
        .await
        .expect("a joins");
    rec.wait_until("a alone owns every shard", |o| {
        owned_all(o, "a", partitions)
    })
    .await;

    let b = within("b joins", membership.join(&group, rec.handler("b", work)))
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
    let membership = membership(brokers, topic);
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

/// On tansu (`FLEETCMD_KAFKA_COMPAT=tansu`) this relies on the members' assignment check
/// (`KafkaCompat::assignment_check`): tansu notices the dead member and rebalances, but
/// re-delivers the previous assignment; the survivor then rejoins.
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
    let mut pair = Pair::start(&brokers, false).await;
    let killed = pair.kill_child();
    let _restarted = spawn_child(
        &brokers,
        pair.log.topic(),
        &pair.group,
        &pair.rec,
        "restarted",
    );
    pair.rec
        .wait_until(
            "the restarted member and the survivor split the shards",
            |o| split_between(o, "restarted", "survivor", PAIR_SHARDS),
        )
        .await;
    println!(
        "kill + restart: every shard owned again {:?} after the kill",
        killed.elapsed()
    );
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

/// The shards of a [`Pair`]'s log.
const PAIR_SHARDS: u32 = 4;

/// A member in a child process and a survivor here, splitting the shards of a log of their
/// own.
struct Pair {
    log: Arc<KafkaLog>,
    group: String,
    rec: Arc<Recorder>,
    child: ChildProcess,
    /// Dropped last: leaving revokes the survivor's shards.
    _survivor: Box<dyn MembershipGuard>,
}

impl Pair {
    /// `child_leads`: the child joins first, so it is the group's leader.
    async fn start(brokers: &str, child_leads: bool) -> Self {
        let log = new_log(brokers, PAIR_SHARDS).await;
        let group = unique("fleetcmd-test-group-");
        let rec = Recorder::new();
        let membership = membership(brokers, log.topic());
        let join_survivor = || {
            let joining = membership.join(&group, rec.handler("survivor", Duration::ZERO));
            within("the survivor joins", joining)
        };
        let mut survivor = None;
        if !child_leads {
            survivor = Some(join_survivor().await.expect("survivor joins"));
            rec.wait_until("the survivor owns every shard", |o| {
                owned_all(o, "survivor", PAIR_SHARDS)
            })
            .await;
        }
        let child = spawn_child(brokers, log.topic(), &group, &rec, "child");
        if child_leads {
            rec.wait_until("the child owns every shard", |o| {
                owned_all(o, "child", PAIR_SHARDS)
            })
            .await;
            survivor = Some(join_survivor().await.expect("survivor joins"));
        }
        rec.wait_until("the child and the survivor split the shards", |o| {
            split_between(o, "child", "survivor", PAIR_SHARDS)
        })
        .await;
        let Some(survivor) = survivor else {
            unreachable!("the survivor joined on either path")
        };
        Self {
            log,
            group,
            rec,
            child,
            _survivor: survivor,
        }
    }

    /// SIGKILLs the child: no revocation, no leave; the group notices after the session
    /// timeout. Returns when.
    fn kill_child(&mut self) -> Instant {
        self.child.0.kill().expect("kill the child");
        let killed = Instant::now();
        self.rec.push(Event::Died("child".into()));
        let _ = self.child.0.wait();
        killed
    }
}

/// After the child of a [`Pair`] is killed, the survivor owns every shard within the session
/// timeout and a rebalance.
async fn killed_member_hands_over(brokers: &str, child_leads: bool) {
    let mut pair = Pair::start(brokers, child_leads).await;
    let killed = pair.kill_child();
    pair.rec
        .wait_until("the survivor owns every shard", |o| {
            owned_all(o, "survivor", PAIR_SHARDS)
        })
        .await;
    let moved = pair.rec.last_assigned("survivor").expect("assigned") - killed;
    println!("SIGKILL: the survivor owned every shard {moved:?} after the kill");
    assert!(
        moved < Duration::from_secs(30),
        "a dead member's shards move within the session timeout and a rebalance: {moved:?}"
    );
}
