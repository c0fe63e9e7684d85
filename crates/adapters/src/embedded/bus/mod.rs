//! The in-process bus: NATS-like subjects on bounded tokio channels.
//!
//! Subjects are `.`-separated tokens; a subscription may use `*` (exactly one token) and a
//! trailing `>` (one or more tokens). Exact subscriptions are found with one hash lookup;
//! wildcard subscriptions live in a separate list that is scanned per publish (there are few).
//! Queue groups are identified by name: a message goes to exactly one member of each
//! matching group name (round robin, skipping members whose channel is full or gone).
//!
//! Backpressure: each subscription has a bounded channel ([`DEFAULT_CAPACITY`] messages by
//! default). A publish first tries every receiver without waiting; if a receiver is full, the
//! publish waits for room in it (outside the registry lock) before returning, so a slow
//! subscriber slows its publishers down rather than growing memory or losing messages. A task
//! must therefore not publish to a subject it subscribes to while it stops reading that
//! subscription. Messages to a subscription that was dropped are discarded (at-most-once).
//!
//! Requests use reply subjects `_INBOX.<bus>.<n>`, answered through a one-shot slot so a reply
//! costs no channel or registry change.

mod subjects;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use fleetcmd_domain::ports::{BoxStream, Bus, BusMessage, PortError, PortResult};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use self::subjects::{Pattern, check_subject, parse_filter};

/// The default capacity of each subscription's channel.
pub const DEFAULT_CAPACITY: usize = 8192;

const INBOX_ROOT: &str = "_INBOX.";

/// The in-process bus. Clones share one registry; dropping the last clone (or calling
/// [`InProcessBus::shutdown`]) ends every subscription.
#[derive(Clone)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

struct Inner {
    registry: RwLock<Registry>,
    /// Pending requests by inbox number; the responder's publish takes the slot.
    replies: Mutex<HashMap<u64, oneshot::Sender<BusMessage>>>,
    /// `_INBOX.<bus id>.`: distinct per bus so two buses never mix replies.
    inbox_prefix: String,
    next_id: AtomicU64,
    capacity: usize,
}

#[derive(Default)]
struct Registry {
    exact: HashMap<String, Entry>,
    /// Keyed by the subscription's subject; scanned on every publish.
    wildcard: HashMap<String, (Pattern, Entry)>,
}

/// The subscribers of one subscription subject.
#[derive(Default)]
struct Entry {
    plain: Vec<Member>,
    groups: Vec<Group>,
}

struct Group {
    name: String,
    members: Vec<Member>,
    /// Round-robin cursor.
    next: AtomicUsize,
}

struct Member {
    id: u64,
    tx: mpsc::Sender<BusMessage>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    fn remove(&mut self, id: u64, group: Option<&str>) {
        match group {
            None => self.plain.retain(|m| m.id != id),
            Some(name) => {
                for g in self.groups.iter_mut().filter(|g| g.name == name) {
                    g.members.retain(|m| m.id != id);
                }
                self.groups.retain(|g| !g.members.is_empty());
            }
        }
    }

    fn add(&mut self, member: Member, group: Option<&str>) {
        match group {
            None => self.plain.push(member),
            Some(name) => match self.groups.iter_mut().find(|g| g.name == name) {
                Some(g) => g.members.push(member),
                None => self.groups.push(Group {
                    name: name.to_owned(),
                    members: vec![member],
                    next: AtomicUsize::new(0),
                }),
            },
        }
    }
}

/// Hands `msg` to the receivers of `entry` that do not need waiting; the ones that are full
/// are pushed to `waits`. Returns how many receivers got (or will get) the message.
fn deliver<'a>(
    entry: &'a Entry,
    msg: &BusMessage,
    waits: &mut Vec<(mpsc::Sender<BusMessage>, BusMessage)>,
    groups_done: &mut Vec<&'a str>,
) -> usize {
    let mut n = 0;
    for m in &entry.plain {
        match m.tx.try_send(msg.clone()) {
            Ok(()) => n += 1,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                waits.push((m.tx.clone(), msg));
                n += 1;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    for g in &entry.groups {
        // One member per group name across all matching subscriptions; the first
        // matching subscription subject with that name chooses.
        if groups_done.contains(&g.name.as_str()) {
            continue;
        }
        if deliver_to_group(g, msg, waits) {
            groups_done.push(&g.name);
            n += 1;
        }
    }
    n
}

/// Gives `msg` to one member of `g`: round robin, skipping full and closed members; when all
/// live members are full, waits on the round-robin choice. False if every member is gone.
fn deliver_to_group(
    g: &Group,
    msg: &BusMessage,
    waits: &mut Vec<(mpsc::Sender<BusMessage>, BusMessage)>,
) -> bool {
    let len = g.members.len();
    let start = g.next.fetch_add(1, Ordering::Relaxed);
    let mut full = None;
    for i in 0..len {
        let m = &g.members[(start + i) % len];
        match m.tx.try_send(msg.clone()) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                if full.is_none() {
                    full = Some((m.tx.clone(), msg));
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
    match full {
        Some(w) => {
            waits.push(w);
            true
        }
        None => false,
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessBus {
    /// A bus whose subscriptions buffer [`DEFAULT_CAPACITY`] messages each.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A bus whose subscriptions buffer `capacity` messages each (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        static BUS_IDS: AtomicU64 = AtomicU64::new(0);
        let bus_id = BUS_IDS.fetch_add(1, Ordering::Relaxed);
        Self {
            inner: Arc::new(Inner {
                registry: RwLock::new(Registry::default()),
                replies: Mutex::new(HashMap::new()),
                inbox_prefix: format!("{INBOX_ROOT}{bus_id}."),
                next_id: AtomicU64::new(1),
                capacity: capacity.max(1),
            }),
        }
    }

    /// Ends every subscription (their streams return `None`) and fails pending requests.
    /// The bus stays usable: later subscriptions work as usual.
    pub fn shutdown(&self) {
        let registry = std::mem::take(&mut *self.inner.write());
        drop(registry);
        self.inner
            .replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// How many subscriptions are registered (for tests and metrics).
    pub fn subscription_count(&self) -> usize {
        let r = self.inner.read();
        r.exact
            .values()
            .chain(r.wildcard.values().map(|(_, e)| e))
            .map(|e| e.plain.len() + e.groups.iter().map(|g| g.members.len()).sum::<usize>())
            .sum()
    }

    /// Delivers `message`; returns how many receivers it went to (0: nobody listens).
    async fn route(&self, message: BusMessage) -> PortResult<usize> {
        check_subject(&message.subject)?;
        let mut delivered = 0;
        if let Some(rest) = message.subject.strip_prefix(&self.inner.inbox_prefix)
            && let Ok(n) = rest.parse::<u64>()
        {
            let slot = self
                .inner
                .replies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&n);
            if let Some(tx) = slot {
                // The requester may have given up already; that is a lost reply, not an error.
                let _ = tx.send(message.clone());
                delivered += 1;
            }
        }
        let mut waits = Vec::new();
        {
            let registry = self.inner.read();
            let mut groups_done: Vec<&str> = Vec::new();
            if let Some(e) = registry.exact.get(&message.subject) {
                delivered += deliver(e, &message, &mut waits, &mut groups_done);
            }
            for (pattern, e) in registry.wildcard.values() {
                if pattern.matches(&message.subject) {
                    delivered += deliver(e, &message, &mut waits, &mut groups_done);
                }
            }
        }
        // Full receivers: wait for room, in order, without holding the registry lock.
        for (tx, msg) in waits {
            // A receiver dropped while we waited: at-most-once, nothing to do.
            let _ = tx.send(msg).await;
        }
        Ok(delivered)
    }
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn unsubscribe(&self, subject: &str, group: Option<&str>, id: u64) {
        let mut r = self.write();
        if let Some(e) = r.exact.get_mut(subject) {
            e.remove(id, group);
            if e.is_empty() {
                r.exact.remove(subject);
            }
        } else if let Some((_, e)) = r.wildcard.get_mut(subject) {
            e.remove(id, group);
            if e.is_empty() {
                r.wildcard.remove(subject);
            }
        }
    }
}

/// A subscription's stream; dropping it unsubscribes.
struct Subscription {
    rx: mpsc::Receiver<BusMessage>,
    bus: Weak<Inner>,
    subject: String,
    group: Option<String>,
    id: u64,
}

impl Stream for Subscription {
    type Item = BusMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unsubscribe(&self.subject, self.group.as_deref(), self.id);
        }
    }
}

/// Removes a pending request's reply slot when the request ends in any way.
struct PendingReply<'a> {
    inner: &'a Inner,
    n: u64,
}

impl Drop for PendingReply<'_> {
    fn drop(&mut self) {
        self.inner
            .replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.n);
    }
}

#[async_trait::async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, message: BusMessage) -> PortResult<()> {
        self.route(message).await.map(|_| ())
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> PortResult<BoxStream<BusMessage>> {
        let pattern = parse_filter(subject)?;
        if let Some(g) = queue_group
            && (g.is_empty() || g.contains([' ', '\t', '\r', '\n']))
        {
            return Err(PortError::Backend(format!(
                "invalid queue group {g:?}: must be non-empty, without whitespace"
            )));
        }
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut r = self.inner.write();
            let entry = match pattern {
                None => r.exact.entry(subject.to_owned()).or_default(),
                Some(p) => {
                    &mut r
                        .wildcard
                        .entry(subject.to_owned())
                        .or_insert((p, Entry::default()))
                        .1
                }
            };
            entry.add(Member { id, tx }, queue_group);
        }
        Ok(Box::pin(Subscription {
            rx,
            bus: Arc::downgrade(&self.inner),
            subject: subject.to_owned(),
            group: queue_group.map(str::to_owned),
            id,
        }))
    }

    async fn request(&self, mut message: BusMessage, timeout: Duration) -> PortResult<BusMessage> {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner
            .replies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(n, tx);
        let _pending = PendingReply {
            inner: &self.inner,
            n,
        };
        let subject = message.subject.clone();
        message.reply = Some(format!("{}{n}", self.inner.inbox_prefix));
        if self.route(message).await? == 0 {
            return Err(PortError::NoResponders(subject));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(PortError::Unavailable(format!(
                "the bus shut down while waiting for a reply on {subject}"
            ))),
            Err(_) => Err(PortError::Timeout(format!(
                "no reply on {subject} within {timeout:?}"
            ))),
        }
    }
}
