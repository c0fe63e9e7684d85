#![cfg(feature = "nats")]
//! The NATS bus losing its server and getting it back: in-flight and new operations fail fast
//! and retryably, and the bus reconnects by itself with its subscriptions. Losing the server
//! is simulated with a TCP proxy in front of the shared server (`FLEETCMD_NATS_URL`, as in
//! `nats_bus.rs`), so these tests never stop a server others use.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleetcmd_adapters::conformance::bus::publish;
use fleetcmd_adapters::conformance::{WAIT, unique, within};
use fleetcmd_adapters::nats::ConnectionState;
use fleetcmd_domain::ports::{Bus, BusMessage, PortError};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

#[path = "support/nats.rs"]
mod support;
use support::{connect, echo_responder, nats_url, next, wait_for_state};

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
    let upstream = within("resolve the server", upstream_addr(&url)).await;
    let mut proxy = within("start the proxy", Proxy::start(upstream)).await;
    let bus = connect(&format!("nats://{}", proxy.addr), "fleetcmd-test-proxied").await;
    let r = unique("nats");

    // A responder on the direct connection, a silent subscriber, and a subscription of the
    // proxied bus that must survive the outage.
    let service = format!("{r}.svc");
    let responder = echo_responder(&direct, &service).await;
    let silent = format!("{r}.silent");
    let _silent_sub = within("subscribe", direct.subscribe(&silent, None))
        .await
        .expect("subscribe");
    let events = format!("{r}.events");
    let mut survivor = within("subscribe", bus.subscribe(&events, None))
        .await
        .expect("subscribe");
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
            let r = within(
                "request",
                bus.request(BusMessage::new(silent, "x"), Duration::from_secs(3600)),
            )
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
    within("cut the proxy", proxy.cut()).await;
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
    within("restore the proxy", proxy.restore()).await;
    wait_for_state(&bus, ConnectionState::Connected).await;
    // The resubscription went out before anything published after reconnecting.
    within("ping after reconnect", bus.ping(WAIT))
        .await
        .expect("ping after reconnect");
    publish(direct.as_ref(), &events, "after").await;
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
