//! Requests and pings share one wildcard inbox subscription per bus (`_INBOX.<random>.*`)
//! and a table of pending requests, keyed by the last token of their reply subject. An entry
//! is removed however the request ends (async-nats's own `request` leaves one behind for
//! every request that times out).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use tokio::sync::oneshot;

/// Pending requests (and pings), keyed by the last token of their reply subject.
pub(super) struct Inbox {
    /// `_INBOX.<random>.`; the bus subscribes to `<prefix>*`.
    pub(super) prefix: String,
    pub(super) pending: Mutex<HashMap<u64, oneshot::Sender<async_nats::Message>>>,
    pub(super) next_token: AtomicU64,
}

impl Inbox {
    pub(super) fn register(&self) -> (Pending<'_>, oneshot::Receiver<async_nats::Message>) {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(token, tx);
        (Pending { inbox: self, token }, rx)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<async_nats::Message>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A registered reply slot; removed from the inbox when the request ends in any way.
pub(super) struct Pending<'a> {
    inbox: &'a Inbox,
    token: u64,
}

impl Pending<'_> {
    pub(super) fn reply_subject(&self) -> String {
        format!("{}{}", self.inbox.prefix, self.token)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.inbox.lock().remove(&self.token);
    }
}

/// Hands each inbox message to the request waiting for it, until the inbox subscription ends
/// (the bus is drained); then fails every pending request.
pub(super) async fn dispatch_replies(mut subscription: async_nats::Subscriber, inbox: Arc<Inbox>) {
    while let Some(message) = subscription.next().await {
        let token = message
            .subject
            .strip_prefix(inbox.prefix.as_str())
            .and_then(|t| t.parse::<u64>().ok());
        let slot = token.and_then(|t| inbox.lock().remove(&t));
        if let Some(tx) = slot {
            // The requester may have given up already: a late reply, nothing to do.
            let _ = tx.send(message);
        }
    }
    // Dropping the senders fails every pending request with "shut down".
    inbox.lock().clear();
}
