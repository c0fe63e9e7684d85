#![cfg(feature = "nats")]
//! The NATS bus against the bus suite and a real nats-server, plus what only a networked bus
//! has: headers on the wire, several connections, losing the connection.
//!
//! The server comes from `FLEETCMD_NATS_URL` (start one with `deploy/engines/nats.sh install &&
//! deploy/engines/nats.sh start`, then `FLEETCMD_NATS_URL=nats://127.0.0.1:4222`). Without it the
//! tests print a skip line and pass, except under CI (`CI` set), where a missing URL fails
//! them: CI must never skip silently.
//!
//! Losing the server is simulated with a TCP proxy in front of the shared server, so these tests
//! never stop a server others use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetcmd_adapters::conformance::{self, WAIT, unique, within};
use fleetcmd_adapters::nats::{ConnectionState, NatsBus};
use fleetcmd_domain::ports::{BoxStream, Bus, BusMessage, PortError, PortResult};
use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// The server URL, or `None` (after a skip line) when it is not configured outside CI.
fn nats_url(test: &str) -> Option<String> {
    match std::env::var("FLEETCMD_NATS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
            assert!(
                !ci,
                "{test}: FLEETCMD_NATS_URL is not set, and CI must not skip the NATS tests: run \
                 `deploy/engines/nats.sh install && deploy/engines/nats.sh start` and set \
                 FLEETCMD_NATS_URL=nats://127.0.0.1:4222"
            );
            eprintln!(
                "skipped {test}: FLEETCMD_NATS_URL is not set (deploy/engines/nats.sh start, then \
                 FLEETCMD_NATS_URL=nats://127.0.0.1:4222)"
            );
            None
        }
    }
}

async fn connect(url: &str, name: &str) -> Arc<NatsBus> {
    within("connect", NatsBus::connect(url, name))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

async fn next(what: &str, s: &mut BoxStream<BusMessage>) -> BusMessage {
    within(what, s.next())
        .await
        .unwrap_or_else(|| panic!("{what}: the subscription ended"))
}

/// Waits (bounded) until the bus reports `want`.
async fn wait_for_state(bus: &NatsBus, want: ConnectionState) {
    let mut states = bus.watch_connection_state();
    within(
        &format!("connection state {want}"),
        states.wait_for(|s| *s == want),
    )
    .await
    .unwrap_or_else(|_| panic!("the bus stopped reporting its state before {want}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_conformance() {
    let Some(url) = nats_url("nats_bus_conformance") else {
        return;
    };
    let bus = connect(&url, "fleetcmd-test-conformance").await;
    assert_eq!(bus.connection_state(), ConnectionState::Connected);
    conformance::bus::run(bus.clone()).await;
    // Twice on one connection: nothing the first run left behind disturbs the second.
    conformance::bus::run(bus.clone()).await;
    assert_eq!(bus.connection_state(), ConnectionState::Connected);
}

/// Publishes and requests on one connection, subscribes on another: what services on different
/// machines see. Subscriptions must be live on the server when `subscribe` returns.
///
/// Dropping a subscription sends its UNSUB on the receiver's connection, which the server
/// orders only with that connection's traffic: across connections an unsubscribe takes effect
/// a round trip later. The suite drops a queue member and publishes at once (which one
/// connection orders for free), so after a drop the next publish first waits for the
/// receiver's round trip.
struct TwoConnections {
    sender: Arc<NatsBus>,
    receiver: Arc<NatsBus>,
    dropped: Arc<AtomicBool>,
}

impl TwoConnections {
    async fn settle_unsubscribes(&self) -> PortResult<()> {
        if self.dropped.swap(false, Ordering::SeqCst) {
            self.receiver.ping(WAIT).await?;
        }
        Ok(())
    }
}

/// A subscription that tells its [`TwoConnections`] when it is dropped.
struct Tracked {
    inner: BoxStream<BusMessage>,
    dropped: Arc<AtomicBool>,
}

impl futures::Stream for Tracked {
    type Item = BusMessage;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<BusMessage>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Bus for TwoConnections {
    async fn publish(&self, message: BusMessage) -> PortResult<()> {
        self.settle_unsubscribes().await?;
        self.sender.publish(message).await
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> PortResult<BoxStream<BusMessage>> {
        let inner = self.receiver.subscribe(subject, queue_group).await?;
        Ok(Box::pin(Tracked {
            inner,
            dropped: self.dropped.clone(),
        }))
    }

    async fn request(&self, message: BusMessage, timeout: Duration) -> PortResult<BusMessage> {
        self.settle_unsubscribes().await?;
        self.sender.request(message, timeout).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_conformance_across_two_connections() {
    let Some(url) = nats_url("nats_bus_conformance_across_two_connections") else {
        return;
    };
    let bus = TwoConnections {
        sender: connect(&url, "fleetcmd-test-sender").await,
        receiver: connect(&url, "fleetcmd-test-receiver").await,
        dropped: Arc::new(AtomicBool::new(false)),
    };
    conformance::bus::run(Arc::new(bus)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_reply_subjects_round_trip_between_connections() {
    let Some(url) = nats_url("headers_and_reply_subjects_round_trip_between_connections") else {
        return;
    };
    let a = connect(&url, "fleetcmd-test-headers-a").await;
    let b = connect(&url, "fleetcmd-test-headers-b").await;
    let subject = format!("{}.headers", unique("nats"));
    let mut s = b.subscribe(&subject, None).await.expect("subscribe");

    let headers = vec![
        (
            "traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        ),
        ("X-Tenant".to_owned(), "lab".to_owned()),
        ("dup".to_owned(), "one".to_owned()),
        ("dup".to_owned(), "two".to_owned()),
        ("empty".to_owned(), String::new()),
        ("utf8".to_owned(), "grüße, 设备".to_owned()),
        ("inner-space".to_owned(), "a b\tc".to_owned()),
    ];
    let sent = BusMessage {
        subject: subject.clone(),
        reply: Some(format!("{subject}.answers")),
        headers: headers.clone(),
        payload: Bytes::from_static(b"\0\x01binary\xff"),
    };
    a.publish(sent.clone()).await.expect("publish");
    let got = next("headers message", &mut s).await;
    let mut expected = headers.clone();
    expected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        got.headers, expected,
        "every header arrives, by name, values of a repeated name in order, case kept"
    );
    assert_eq!(got.payload, sent.payload, "binary payload kept");
    assert_eq!(got.reply, sent.reply, "the reply subject travels");
    assert_eq!(got.subject, subject);

    // No headers at all: an empty list, not an empty map's artefacts.
    a.publish(BusMessage::new(subject.clone(), "plain"))
        .await
        .expect("publish");
    let plain = next("plain message", &mut s).await;
    assert!(plain.headers.is_empty(), "{:?}", plain.headers);
    assert_eq!(plain.reply, None);

    // Headers NATS would alter are refused before anything is sent.
    for (name, value) in [
        ("bad name", "x"),
        ("k", " padded "),
        ("k", "two\r\nlines"),
        ("", "x"),
    ] {
        let mut bad = BusMessage::new(subject.clone(), "must not arrive");
        bad.headers = vec![(name.to_owned(), value.to_owned())];
        let err = a.publish(bad.clone()).await.expect_err("invalid header");
        assert!(
            matches!(err, PortError::Backend(_)) && !err.is_retryable(),
            "header {name:?}={value:?}: {err:?}"
        );
        let err = a
            .request(bad, Duration::from_secs(1))
            .await
            .expect_err("invalid header in a request");
        assert!(matches!(err, PortError::Backend(_)), "{err:?}");
    }
    a.publish(BusMessage::new(subject.clone(), "marker"))
        .await
        .expect("publish");
    assert_eq!(
        next("after refused headers", &mut s).await.payload.as_ref(),
        b"marker",
        "refused messages were not published"
    );

    // Headers travel with requests and their replies.
    let service = format!("{subject}.svc");
    let mut requests = b.subscribe(&service, Some("svc")).await.expect("subscribe");
    let responder = {
        let b = b.clone();
        tokio::spawn(async move {
            while let Some(m) = requests.next().await {
                let Some(reply) = m.reply.clone() else {
                    continue;
                };
                let mut answer = BusMessage::new(reply, m.payload.clone());
                answer.headers = m.headers.clone();
                answer
                    .headers
                    .push(("answered-by".to_owned(), "b".to_owned()));
                if b.publish(answer).await.is_err() {
                    break;
                }
            }
        })
    };
    let mut req = BusMessage::new(service.clone(), "ping");
    req.headers = vec![("traceparent".to_owned(), "00-aa-bb-01".to_owned())];
    let reply = within("request", a.request(req, WAIT))
        .await
        .expect("request");
    assert_eq!(reply.payload.as_ref(), b"ping");
    assert_eq!(
        reply.headers,
        vec![
            ("answered-by".to_owned(), "b".to_owned()),
            ("traceparent".to_owned(), "00-aa-bb-01".to_owned()),
        ]
    );
    assert!(
        reply.subject.starts_with("_INBOX."),
        "a reply arrives on the requester's inbox: {}",
        reply.subject
    );
    responder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_round_trips_are_fast() {
    let Some(url) = nats_url("request_round_trips_are_fast") else {
        return;
    };
    // With Nagle's algorithm on either side a small request/reply costs ~40 ms (delayed ACKs);
    // async-nats sets TCP_NODELAY and nats-server does too. The median is robust to a busy
    // machine; 100 round trips at 40 ms would take 4 s.
    let bus = connect(&url, "fleetcmd-test-latency").await;
    let subject = format!("{}.echo", unique("nats"));
    let mut requests = bus.subscribe(&subject, None).await.expect("subscribe");
    let responder = {
        let bus = bus.clone();
        tokio::spawn(async move {
            while let Some(m) = requests.next().await {
                if let Some(reply) = m.reply
                    && bus
                        .publish(BusMessage::new(reply, m.payload))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        })
    };
    let mut rtts = Vec::new();
    for i in 0..100u32 {
        let t = Instant::now();
        let reply = within(
            "echo",
            bus.request(
                BusMessage::new(subject.clone(), i.to_be_bytes().to_vec()),
                WAIT,
            ),
        )
        .await
        .expect("echo request");
        rtts.push(t.elapsed());
        assert_eq!(reply.payload.as_ref(), i.to_be_bytes());
    }
    rtts.sort();
    let median = rtts[rtts.len() / 2];
    assert!(
        median < Duration::from_millis(15),
        "median request round trip {median:?}: Nagle's algorithm is probably on somewhere"
    );
    let ping = bus.ping(WAIT).await.expect("ping");
    assert!(ping < WAIT);
    responder.abort();
}

/// A TCP proxy to the real server that can be cut and restored, to lose the connection
/// without stopping a server other tests and engineers use.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: JoinSet<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let mut proxy = Self {
            addr,
            upstream,
            tasks: JoinSet::new(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        self.tasks.spawn(async move {
            // Connections live in this set: aborting the accept task closes them all.
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
    }

    /// Closes the listener and every proxied connection: to the client, the server is down.
    async fn cut(&mut self) {
        self.tasks.shutdown().await;
    }

    /// Listens again on the same address.
    async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("bind the proxy's address again");
        self.serve(listener);
    }
}

/// The host:port of the first server of a `nats://` URL.
async fn upstream_addr(url: &str) -> SocketAddr {
    let first = url.split(',').next().unwrap_or(url).trim();
    let hostport = first.split_once("://").map_or(first, |(_, rest)| rest);
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, hp)| hp);
    let hostport = hostport.trim_end_matches('/');
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:4222")
    };
    tokio::net::lookup_host(&hostport)
        .await
        .expect("resolve the NATS server")
        .next()
        .expect("the NATS server has an address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_server_fails_fast_and_retryably_then_recovers() {
    let Some(url) = nats_url("losing_the_server_fails_fast_and_retryably_then_recovers") else {
        return;
    };
    let direct = connect(&url, "fleetcmd-test-direct").await;
    let mut proxy = Proxy::start(upstream_addr(&url).await).await;
    let bus = connect(&format!("nats://{}", proxy.addr), "fleetcmd-test-proxied").await;
    let r = unique("nats");

    // A responder on the direct connection, a silent subscriber, and a subscription of the
    // proxied bus that must survive the outage.
    let service = format!("{r}.svc");
    let mut requests = direct.subscribe(&service, None).await.expect("subscribe");
    let responder = {
        let direct = direct.clone();
        tokio::spawn(async move {
            while let Some(m) = requests.next().await {
                if let Some(reply) = m.reply
                    && direct
                        .publish(BusMessage::new(reply, m.payload))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        })
    };
    let silent = format!("{r}.silent");
    let _silent_sub = direct.subscribe(&silent, None).await.expect("subscribe");
    let events = format!("{r}.events");
    let mut survivor = bus.subscribe(&events, None).await.expect("subscribe");
    let ok = within(
        "request through the proxy",
        bus.request(BusMessage::new(service.clone(), "1"), WAIT),
    )
    .await
    .expect("request through the proxy");
    assert_eq!(ok.payload.as_ref(), b"1");

    // A request waiting for its reply when the connection drops fails at once.
    let in_flight = {
        let bus = bus.clone();
        let silent = silent.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let r = bus
                .request(BusMessage::new(silent, "x"), Duration::from_secs(3600))
                .await;
            (r, t.elapsed())
        })
    };
    // The silent subscriber is on the direct connection: wait until the request reached the
    // server (a second request on the same connection, answered, comes after it).
    within(
        "request before the cut",
        bus.request(BusMessage::new(service.clone(), "2"), WAIT),
    )
    .await
    .expect("request before the cut");
    proxy.cut().await;
    let (result, took) = within("the in-flight request", in_flight)
        .await
        .expect("task");
    let err = result.expect_err("a request whose connection dropped must fail");
    assert!(
        matches!(err, PortError::Unavailable(_)) && err.is_retryable(),
        "connection loss during a request must be Unavailable: {err:?}"
    );
    assert!(took < WAIT, "the in-flight request took {took:?}");
    wait_for_state(&bus, ConnectionState::Disconnected).await;

    // While the server is down: every operation fails fast, retryably, without hanging.
    let t = Instant::now();
    let err = within(
        "request while the server is down",
        bus.request(
            BusMessage::new(service.clone(), "3"),
            Duration::from_secs(3600),
        ),
    )
    .await
    .expect_err("no server, no reply");
    assert!(
        matches!(err, PortError::Unavailable(_)) && err.is_retryable(),
        "a request while the server is down must be Unavailable: {err:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    let err = within(
        "publish while down",
        bus.publish(BusMessage::new(events.clone(), "lost")),
    )
    .await
    .expect_err("publish while the server is down");
    assert!(matches!(err, PortError::Unavailable(_)), "{err:?}");
    let err = within("subscribe while down", bus.subscribe(&events, None))
        .await
        .err()
        .expect("subscribe while the server is down");
    assert!(matches!(err, PortError::Unavailable(_)), "{err:?}");
    let err = within("ping while down", bus.ping(WAIT))
        .await
        .expect_err("ping while the server is down");
    assert!(err.is_retryable(), "{err:?}");

    // The server is back: the bus reconnects by itself, its subscription is live again and
    // requests work.
    proxy.restore().await;
    wait_for_state(&bus, ConnectionState::Connected).await;
    // The resubscription went out before anything published after reconnecting.
    within("ping after reconnect", bus.ping(WAIT))
        .await
        .expect("ping after reconnect");
    direct
        .publish(BusMessage::new(events.clone(), "after"))
        .await
        .expect("publish");
    assert_eq!(
        next("the subscription after a reconnect", &mut survivor)
            .await
            .payload
            .as_ref(),
        b"after",
        "a subscription survives the reconnect (and missed what was published while away)"
    );
    let again = within(
        "request after reconnect",
        bus.request(BusMessage::new(service, "4"), WAIT),
    )
    .await
    .expect("request after reconnect");
    assert_eq!(again.payload.as_ref(), b"4");
    responder.abort();
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast_and_retryably() {
    // No server needed: a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let t = Instant::now();
    let err = within(
        "connect to a closed port",
        NatsBus::connect(&format!("nats://127.0.0.1:{port}"), "fleetcmd-test-nothing"),
    )
    .await
    .expect_err("nothing listens there");
    assert!(
        matches!(err, PortError::Unavailable(_)) && err.is_retryable(),
        "{err:?}"
    );
    assert!(t.elapsed() < WAIT);

    for bad in ["", "http://127.0.0.1:4222", "nats://[::1"] {
        let err = NatsBus::connect(bad, "fleetcmd-test-bad-url")
            .await
            .expect_err("a bad url");
        assert!(
            matches!(err, PortError::Backend(_)) && !err.is_retryable(),
            "url {bad:?}: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_subscriptions_and_pending_requests() {
    let Some(url) = nats_url("shutdown_ends_subscriptions_and_pending_requests") else {
        return;
    };
    let bus = connect(&url, "fleetcmd-test-shutdown").await;
    let r = unique("nats");
    let mut s = bus
        .subscribe(&format!("{r}.a.>"), None)
        .await
        .expect("subscribe");
    let mut silent = bus
        .subscribe(&format!("{r}.svc"), Some("g"))
        .await
        .expect("subscribe");
    let requester = {
        let bus = bus.clone();
        let subject = format!("{r}.svc");
        tokio::spawn(async move {
            bus.request(BusMessage::new(subject, "x"), Duration::from_secs(3600))
                .await
        })
    };
    let req = next("request delivered", &mut silent).await;
    assert!(
        req.reply
            .as_deref()
            .is_some_and(|r| r.starts_with("_INBOX."))
    );

    bus.shutdown().await.expect("shutdown");
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
    wait_for_state(&bus, ConnectionState::Closed).await;
    let err = bus
        .publish(BusMessage::new(format!("{r}.a.b"), "late"))
        .await
        .expect_err("publish after shutdown");
    assert!(matches!(err, PortError::Unavailable(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_bus_ends_its_subscriptions() {
    let Some(url) = nats_url("dropping_the_bus_ends_its_subscriptions") else {
        return;
    };
    let bus = connect(&url, "fleetcmd-test-drop").await;
    let mut s = bus
        .subscribe(&format!("{}.x", unique("nats")), None)
        .await
        .expect("subscribe");
    drop(bus);
    assert_eq!(within("stream end", s.next()).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subjects_are_refused() {
    let Some(url) = nats_url("bad_subjects_are_refused") else {
        return;
    };
    let bus = connect(&url, "fleetcmd-test-subjects").await;
    for bad in ["", "a..b", "a.>.b", "a b"] {
        let err = bus.subscribe(bad, None).await.err().expect("subscribe");
        assert!(
            matches!(err, PortError::Backend(_)),
            "subscribe {bad:?}: {err:?}"
        );
    }
    for bad in ["", "a.*", "a.>", "a..b", "a b"] {
        let err = bus
            .publish(BusMessage::new(bad, "x"))
            .await
            .expect_err("publish");
        assert!(
            matches!(err, PortError::Backend(_)),
            "publish {bad:?}: {err:?}"
        );
        let err = bus
            .request(BusMessage::new(bad, "x"), Duration::from_secs(1))
            .await
            .expect_err("request");
        assert!(
            matches!(err, PortError::Backend(_)),
            "request {bad:?}: {err:?}"
        );
    }
    let mut bad_reply = BusMessage::new("a.b", "x");
    bad_reply.reply = Some("reply.*".into());
    assert!(matches!(
        bus.publish(bad_reply).await,
        Err(PortError::Backend(_))
    ));
    assert!(matches!(
        bus.subscribe("a", Some("")).await.err(),
        Some(PortError::Backend(_))
    ));
    // Too large for the server's max_payload: refused, not retryable.
    let huge = BusMessage::new("a.b", vec![0u8; 64 * 1024 * 1024]);
    let err = bus
        .publish(huge)
        .await
        .expect_err("payload over max_payload");
    assert!(matches!(err, PortError::Backend(_)), "{err:?}");
    assert_eq!(bus.connection_state(), ConnectionState::Connected);
}
