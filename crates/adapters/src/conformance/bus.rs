//! The bus suite: one check per behaviour of [`Bus`]'s contract.
//!
//! "Nothing else arrived" is checked with a marker: per-publisher order means that once a
//! subscriber sees a marker published after some messages, everything it was going to get
//! from those messages is already in front of it. Checks publish at most ~50 messages before
//! they read, so a bus under test needs subscription buffers at least that deep.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_domain::ports::{BoxStream, Bus, BusMessage, PortError, PortResult};
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::{WAIT, unique, within};

#[doc(hidden)]
#[macro_export]
macro_rules! __bus_checks {
    ($callback:ident!($($args:tt)*)) => {
        $crate::$callback!($($args)*;
            every_plain_subscriber_gets_subject_payload_and_headers,
            subscribers_of_other_subjects_get_nothing,
            star_matches_exactly_one_token,
            greater_than_matches_one_or_more_tokens,
            exact_subscriptions_beside_wildcards_get_only_their_subject,
            greater_than_needs_at_least_one_token,
            a_queue_group_gets_each_message_once,
            plain_subscribers_and_other_groups_get_every_message_beside_a_queue_group,
            requests_get_the_answer_of_a_responder,
            concurrent_requests_each_get_their_own_answer,
            requests_without_responder_fail_fast,
            unanswered_requests_time_out,
            dropping_a_subscription_unsubscribes_it,
            a_dropped_queue_member_gets_nothing_more,
            messages_arrive_in_publish_order,
        );
    };
}

crate::__bus_checks!(__conformance_all!(Bus));

async fn next(what: &str, s: &mut BoxStream<BusMessage>) -> BusMessage {
    within(what, s.next())
        .await
        .unwrap_or_else(|| panic!("{what}: the subscription ended"))
}

/// Subscribes, failing the test (with the subject) if the bus refuses or takes too long.
pub async fn sub(bus: &dyn Bus, subject: &str, group: Option<&str>) -> BoxStream<BusMessage> {
    within("subscribe", bus.subscribe(subject, group))
        .await
        .unwrap_or_else(|e| panic!("subscribe {subject} ({group:?}): {e}"))
}

/// Publishes, failing the test (with the subject) if the bus refuses or takes too long.
pub async fn publish(bus: &dyn Bus, subject: &str, payload: impl Into<Bytes>) {
    within("publish", bus.publish(BusMessage::new(subject, payload)))
        .await
        .unwrap_or_else(|e| panic!("publish {subject}: {e}"));
}

/// What every bus promises of `shutdown`, for a test that has just shut its bus down (each
/// bus is shut down its own way): the subscription `s` has ended, and the request that
/// `requester` was waiting on failed as unavailable.
pub async fn check_shut_down(
    s: &mut BoxStream<BusMessage>,
    requester: JoinHandle<PortResult<BusMessage>>,
) {
    assert_eq!(
        within("stream end", s.next()).await,
        None,
        "shutdown ends streams"
    );
    let err = within("pending request", requester)
        .await
        .expect("task")
        .expect_err("shutdown fails pending requests");
    assert!(matches!(err, PortError::Unavailable(_)), "{err:?}");
}

/// Reads `s` up to the marker payload; returns what came before it.
async fn until_marker(what: &str, s: &mut BoxStream<BusMessage>, marker: &[u8]) -> Vec<BusMessage> {
    let mut before = Vec::new();
    loop {
        let m = next(what, s).await;
        if m.payload.as_ref() == marker {
            return before;
        }
        before.push(m);
    }
}

fn payloads(v: Vec<BusMessage>) -> Vec<String> {
    v.into_iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// A message with a reply-less subject, headers and a binary payload.
fn exact_message(subject: &str) -> BusMessage {
    BusMessage {
        subject: subject.to_owned(),
        reply: None,
        headers: vec![("traceparent".into(), "00-abc-def-01".into())],
        payload: Bytes::from_static(b"hello\0world"),
    }
}

/// Every plain subscriber of a subject gets each message on it, with its subject, payload
/// and headers.
pub async fn every_plain_subscriber_gets_subject_payload_and_headers(bus: Arc<dyn Bus>) {
    let bus = &*bus;
    let subject = format!("{}.exact.a", unique("bus"));
    let mut a = sub(bus, &subject, None).await;
    let mut b = sub(bus, &subject, None).await;
    let msg = exact_message(&subject);
    within("publish", bus.publish(msg.clone()))
        .await
        .expect("publish");
    for (name, s) in [("first", &mut a), ("second", &mut b)] {
        let got = next("exact delivery", s).await;
        assert_eq!(
            got.subject, subject,
            "{name} plain subscriber: subject must be kept"
        );
        assert_eq!(
            got.payload, msg.payload,
            "{name} plain subscriber: payload must be kept"
        );
        assert_eq!(
            got.headers, msg.headers,
            "{name} plain subscriber: headers must be kept"
        );
    }
}

/// A subscriber of one subject gets nothing published on another.
pub async fn subscribers_of_other_subjects_get_nothing(bus: Arc<dyn Bus>) {
    let bus = &*bus;
    let r = unique("bus");
    let subject = format!("{r}.exact.a");
    let mut other = sub(bus, &format!("{r}.exact.b"), None).await;
    within("publish", bus.publish(exact_message(&subject)))
        .await
        .expect("publish");
    publish(bus, &format!("{r}.exact.b"), "marker").await;
    let before = until_marker("other subject", &mut other, b"marker").await;
    assert!(
        before.is_empty(),
        "a subscriber of {r}.exact.b must not get messages on {subject}: {before:?}"
    );
}

/// Subscriptions `<r>.w.*.x`, `<r>.w.>` and `<r>.w.m`, after publishing to `a.x`, `a.b.x`,
/// `x` and `m` below `<r>.w`, then a marker on `<r>.w.end.x` and one on `<r>.w.m`.
async fn wildcard_fixture(bus: &dyn Bus) -> [BoxStream<BusMessage>; 3] {
    let r = unique("bus");
    let star = sub(bus, &format!("{r}.w.*.x"), None).await;
    let rest = sub(bus, &format!("{r}.w.>"), None).await;
    let exact = sub(bus, &format!("{r}.w.m"), None).await;
    for s in ["a.x", "a.b.x", "x", "m"] {
        publish(bus, &format!("{r}.w.{s}"), s.to_owned()).await;
    }
    // Markers on subjects each subscription matches.
    publish(bus, &format!("{r}.w.end.x"), "marker").await;
    publish(bus, &format!("{r}.w.m"), "marker").await;
    [star, rest, exact]
}

/// `*` matches exactly one token.
pub async fn star_matches_exactly_one_token(bus: Arc<dyn Bus>) {
    let [mut star, _, _] = wildcard_fixture(&*bus).await;
    assert_eq!(
        payloads(until_marker("'*' subscription", &mut star, b"marker").await),
        vec!["a.x"],
        "'*' matches exactly one token: <r>.w.*.x gets a.x, not a.b.x or x"
    );
}

/// A trailing `>` matches one or more tokens, in publish order.
pub async fn greater_than_matches_one_or_more_tokens(bus: Arc<dyn Bus>) {
    let [_, mut rest, _] = wildcard_fixture(&*bus).await;
    assert_eq!(
        payloads(until_marker("'>' subscription", &mut rest, b"marker").await),
        vec!["a.x", "a.b.x", "x", "m"],
        "'>' matches one or more tokens, in publish order"
    );
    // The '>' subscription also gets the second marker.
    assert_eq!(
        next("'>' subscription", &mut rest).await.payload.as_ref(),
        b"marker"
    );
}

/// An exact subscription beside wildcard ones gets only its subject.
pub async fn exact_subscriptions_beside_wildcards_get_only_their_subject(bus: Arc<dyn Bus>) {
    let [_, _, mut exact] = wildcard_fixture(&*bus).await;
    assert_eq!(
        payloads(until_marker("exact beside wildcards", &mut exact, b"marker").await),
        vec!["m"],
        "an exact subscription gets only its subject"
    );
}

/// `<prefix>.>` needs at least one token after the prefix: it does not match `<prefix>`.
pub async fn greater_than_needs_at_least_one_token(bus: Arc<dyn Bus>) {
    let bus = &*bus;
    let r = unique("bus");
    let mut root = sub(bus, &format!("{r}.w2.>"), None).await;
    let mut bare = sub(bus, &format!("{r}.w2"), None).await;
    publish(bus, &format!("{r}.w2"), "bare").await;
    publish(bus, &format!("{r}.w2.z"), "marker").await;
    assert!(
        until_marker("'>' with no tokens", &mut root, b"marker")
            .await
            .is_empty(),
        "{r}.w2.> must not match {r}.w2"
    );
    assert_eq!(
        next("bare subject", &mut bare).await.payload.as_ref(),
        b"bare"
    );
}

/// A queue group gets each message exactly once, on one of its members.
pub async fn a_queue_group_gets_each_message_once(bus: Arc<dyn Bus>) {
    let bus = &*bus;
    let subject = format!("{}.q.job", unique("bus"));
    let a = sub(bus, &subject, Some("workers")).await;
    let b = sub(bus, &subject, Some("workers")).await;
    let n = 40;
    for i in 0..n {
        publish(bus, &subject, format!("job-{i}")).await;
    }
    let mut members = futures::stream::select(a.map(|m| (0usize, m)), b.map(|m| (1usize, m)));
    let mut seen = BTreeSet::new();
    let mut per_member = [0usize; 2];
    while seen.len() < n {
        let (who, m) = within("queue group delivery", members.next())
            .await
            .expect("queue members ended");
        let p = String::from_utf8_lossy(&m.payload).into_owned();
        assert!(
            seen.insert(p.clone()),
            "queue group delivered {p} twice (exactly one member per message)"
        );
        per_member[who] += 1;
    }
    // Markers until both members have seen one: anything else that shows up is an extra copy.
    let mut marked = [false; 2];
    for k in 0.. {
        if marked == [true, true] {
            break;
        }
        assert!(k < 200, "markers never reached both queue members");
        publish(bus, &subject, "marker").await;
        let (who, m) = within("queue marker", members.next())
            .await
            .expect("queue members ended");
        assert_eq!(
            m.payload.as_ref(),
            b"marker",
            "member {who} got an extra message: {:?}",
            m.payload
        );
        marked[who] = true;
    }
    assert_eq!(
        per_member.iter().sum::<usize>(),
        n,
        "the group as a whole gets each message once"
    );
}

/// Beside a queue group, a plain subscriber and every other queue group get every message.
pub async fn plain_subscribers_and_other_groups_get_every_message_beside_a_queue_group(
    bus: Arc<dyn Bus>,
) {
    let bus = &*bus;
    let r = unique("bus");
    let subject = format!("{r}.q.job");
    let _workers = [
        sub(bus, &subject, Some("workers")).await,
        sub(bus, &subject, Some("workers")).await,
    ];
    let mut plain = sub(bus, &format!("{r}.q.*"), None).await;
    let mut other_group = sub(bus, &subject, Some("auditors")).await;
    let n = 40;
    for i in 0..n {
        publish(bus, &subject, format!("job-{i}")).await;
    }
    publish(bus, &subject, "marker").await;
    let plain_got = until_marker("plain beside a queue group", &mut plain, b"marker").await;
    assert_eq!(
        plain_got.len(),
        n,
        "a plain subscriber gets every message, whatever queue groups exist"
    );
    let audit = until_marker("second queue group", &mut other_group, b"marker").await;
    assert_eq!(
        audit.len(),
        n,
        "each queue group gets every message once (a single-member group gets all)"
    );
}

/// Answers every request on its subject with `re:<payload>` and the request's headers; stops
/// when dropped.
struct EchoResponder(JoinHandle<()>);

impl Drop for EchoResponder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn echo_responder(bus: &Arc<dyn Bus>, subject: &str) -> EchoResponder {
    let mut requests = sub(&**bus, subject, Some("svc")).await;
    let bus = bus.clone();
    EchoResponder(tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            let Some(reply) = m.reply.clone() else {
                continue;
            };
            let mut answer = BusMessage::new(reply, [b"re:".as_ref(), &m.payload].concat());
            answer.headers = m.headers.clone();
            if bus.publish(answer).await.is_err() {
                break;
            }
        }
    }))
}

/// A request gets its responder's answer; headers travel both ways.
pub async fn requests_get_the_answer_of_a_responder(bus: Arc<dyn Bus>) {
    let subject = format!("{}.svc.echo", unique("bus"));
    let _responder = echo_responder(&bus, &subject).await;
    let mut msg = BusMessage::new(subject.clone(), "ping");
    msg.headers = vec![("h".into(), "v".into())];
    let reply = within("request", bus.request(msg, WAIT))
        .await
        .expect("request with a responder must get its reply");
    assert_eq!(reply.payload.as_ref(), b"re:ping", "the reply's payload");
    assert_eq!(
        reply.headers,
        vec![("h".to_owned(), "v".to_owned())],
        "headers travel both ways"
    );
}

/// Concurrent requests each get the answer to themselves.
pub async fn concurrent_requests_each_get_their_own_answer(bus: Arc<dyn Bus>) {
    let subject = format!("{}.svc.echo", unique("bus"));
    let _responder = echo_responder(&bus, &subject).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let bus = bus.clone();
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            let reply = bus
                .request(BusMessage::new(subject, format!("q{i}")), WAIT)
                .await
                .expect("concurrent request");
            (i, reply)
        }));
    }
    for t in tasks {
        let (i, reply) = within("concurrent requests", t).await.expect("task");
        assert_eq!(
            reply.payload,
            Bytes::from(format!("re:q{i}")),
            "each request gets the answer to itself"
        );
    }
}

/// A request nobody listens to fails at once with the retryable `NoResponders`, whatever its
/// timeout.
pub async fn requests_without_responder_fail_fast(bus: Arc<dyn Bus>) {
    let t = Instant::now();
    let err = within(
        "request with no responder",
        bus.request(
            BusMessage::new(format!("{}.nobody", unique("bus")), "x"),
            Duration::from_secs(3600),
        ),
    )
    .await
    .expect_err("a request nobody listens to must fail");
    assert!(
        matches!(err, PortError::NoResponders(_)),
        "no subscriber must give NoResponders, got {err:?}"
    );
    assert!(err.is_retryable(), "NoResponders is retryable");
    assert!(t.elapsed() < WAIT, "NoResponders must come fast");
}

/// A request whose subscriber never answers fails with `Timeout`, not before its timeout.
pub async fn unanswered_requests_time_out(bus: Arc<dyn Bus>) {
    let silent = format!("{}.silent", unique("bus"));
    let _silent = sub(&*bus, &silent, None).await;
    let timeout = Duration::from_millis(200);
    let t = Instant::now();
    let err = within(
        "request to a silent subscriber",
        bus.request(BusMessage::new(silent, "x"), timeout),
    )
    .await
    .expect_err("an unanswered request must fail");
    assert!(
        matches!(err, PortError::Timeout(_)),
        "an unanswered request must time out, got {err:?}"
    );
    assert!(
        t.elapsed() >= timeout / 2,
        "the request gave up after {:?}, before its timeout {timeout:?}",
        t.elapsed()
    );
}

/// Dropping the only subscription of a subject unsubscribes it (requests find no responder),
/// and leaves other subscriptions alone.
pub async fn dropping_a_subscription_unsubscribes_it(bus: Arc<dyn Bus>) {
    let bus = &*bus;
    let r = unique("bus");
    let subject = format!("{r}.unsub");
    let dropped = sub(bus, &subject, None).await;
    let mut kept = sub(bus, &format!("{r}.unsub2"), None).await;
    drop(dropped);
    // Unsubscribing may travel to a server: retry until it has taken effect.
    let deadline = Instant::now() + WAIT;
    loop {
        let probe = bus.request(
            BusMessage::new(subject.clone(), "x"),
            Duration::from_millis(100),
        );
        match within("request after an unsubscribe", probe).await {
            Err(PortError::NoResponders(_)) => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "dropping the only subscription must unsubscribe it, request gave {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    publish(bus, &format!("{r}.unsub2"), "still here").await;
    assert_eq!(
        next("a subscription beside a dropped one", &mut kept)
            .await
            .payload
            .as_ref(),
        b"still here"
    );
}

/// A dropped queue member stops getting messages; the rest of the group gets them all.
pub async fn a_dropped_queue_member_gets_nothing_more(bus: Arc<dyn Bus>) {
    let bus = &*bus;
    let qs = format!("{}.unsubq", unique("bus"));
    let gone = sub(bus, &qs, Some("g")).await;
    let mut stays = sub(bus, &qs, Some("g")).await;
    drop(gone);
    let n = 10;
    for i in 0..n {
        publish(bus, &qs, format!("m{i}")).await;
    }
    for i in 0..n {
        let m = next("remaining queue member", &mut stays).await;
        assert_eq!(
            m.payload,
            Bytes::from(format!("m{i}")),
            "after a member is dropped, the remaining member gets every message"
        );
    }
}

/// 10,000 messages of one publisher reach a plain subscriber and a single-member queue group
/// in publish order.
pub async fn messages_arrive_in_publish_order(bus: Arc<dyn Bus>) {
    let subject = format!("{}.order", unique("bus"));
    let n = 10_000u32;
    let plain = sub(&*bus, &subject, None).await;
    let grouped = sub(&*bus, &subject, Some("one")).await;
    let consume = |mut s: BoxStream<BusMessage>, name: &'static str| {
        tokio::spawn(async move {
            for i in 0..n {
                let m = within(name, s.next())
                    .await
                    .unwrap_or_else(|| panic!("{name}: subscription ended"));
                let got = u32::from_be_bytes(
                    m.payload
                        .as_ref()
                        .try_into()
                        .unwrap_or_else(|_| panic!("{name}: bad payload {:?}", m.payload)),
                );
                assert_eq!(got, i, "{name}: messages must arrive in publish order");
            }
        })
    };
    let a = consume(plain, "plain subscriber");
    let b = consume(grouped, "single-member queue group");
    for i in 0..n {
        publish(&*bus, &subject, i.to_be_bytes().to_vec()).await;
    }
    within("ordered consumer", a).await.expect("plain consumer");
    within("ordered consumer", b)
        .await
        .expect("grouped consumer");
}
