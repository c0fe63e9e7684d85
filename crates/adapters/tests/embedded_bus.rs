//! The in-process bus against the bus suite, plus its own lifecycle.

use std::sync::Arc;
use std::time::Duration;

use fleetcmd_adapters::conformance::bus::sub;
use fleetcmd_adapters::conformance::{self, within};
use fleetcmd_adapters::embedded::bus::InProcessBus;
use fleetcmd_domain::ports::{Bus, BusMessage};
use futures::StreamExt;

mod conformance_suite {
    use super::*;
    fleetcmd_adapters::bus_conformance!(async || Arc::new(InProcessBus::new()));
}

/// Small buffers on one thread: in the 10k-message order check publishers constantly wait on
/// full subscribers. (The suite publishes up to ~50 messages before it reads, so it needs
/// buffers at least that deep.)
mod conformance_suite_on_one_thread_with_tiny_buffers {
    use super::*;
    fleetcmd_adapters::bus_conformance!(
        #[tokio::test]
        async || Arc::new(InProcessBus::with_capacity(64))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_leaves_no_subscription_behind() {
    let bus = InProcessBus::new();
    conformance::bus::all(Arc::new(bus.clone())).await;
    // Every subscription of the suite was dropped: nothing leaks in the registry.
    assert_eq!(
        bus.subscription_count(),
        0,
        "dropped subscriptions are removed"
    );
}

#[tokio::test]
async fn shutdown_ends_subscriptions_and_pending_requests() {
    let bus = InProcessBus::new();
    let mut s = sub(&bus, "a.>", None).await;
    let mut silent = sub(&bus, "svc", Some("g")).await;
    let requester = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.request(BusMessage::new("svc", "x"), Duration::from_secs(3600))
                .await
        })
    };
    // The request reached the responder, so it is pending.
    let req = within("request delivered", silent.next())
        .await
        .expect("request");
    assert!(
        req.reply
            .as_deref()
            .is_some_and(|r| r.starts_with("_INBOX."))
    );
    bus.shutdown();
    conformance::bus::check_shut_down(&mut s, requester).await;
    assert_eq!(bus.subscription_count(), 0);
    // Still usable afterwards.
    let mut s2 = sub(&bus, "a.b", None).await;
    within("publish", bus.publish(BusMessage::new("a.b", "y")))
        .await
        .expect("publish");
    assert_eq!(
        within("after shutdown", s2.next()).await.map(|m| m.payload),
        Some("y".into())
    );
}

#[tokio::test]
async fn dropping_the_bus_ends_subscriptions() {
    let bus = InProcessBus::new();
    let mut s = sub(&bus, "x", None).await;
    drop(bus);
    assert_eq!(within("stream end", s.next()).await, None);
}

#[tokio::test]
async fn bad_subjects_are_refused() {
    let bus = InProcessBus::new();
    for bad in ["", "a..b", "a.>.b", "a b"] {
        assert!(
            within("subscribe", bus.subscribe(bad, None)).await.is_err(),
            "subscribe {bad:?}"
        );
    }
    for bad in ["", "a.*", "a.>", "a..b"] {
        assert!(
            within("publish", bus.publish(BusMessage::new(bad, "x")))
                .await
                .is_err(),
            "publish {bad:?}"
        );
    }
    assert!(
        within("subscribe", bus.subscribe("a", Some("")))
            .await
            .is_err(),
        "empty queue group"
    );
}

#[tokio::test]
async fn a_slow_subscriber_applies_backpressure_without_loss() {
    let bus = InProcessBus::with_capacity(4);
    let mut s = sub(&bus, "slow", None).await;
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 0..100u32 {
                bus.publish(BusMessage::new("slow", i.to_be_bytes().to_vec()))
                    .await
                    .expect("publish");
            }
        })
    };
    for i in 0..100u32 {
        let m = within("slow consumer", s.next()).await.expect("message");
        assert_eq!(m.payload.as_ref(), i.to_be_bytes());
    }
    within("publisher", publisher)
        .await
        .expect("publisher task");
}
