//! Which identity stands behind each connection the proxy opened to the broker.
//!
//! The embedded broker sees every proxied device as a plain TCP client on its loopback
//! listener; the only thing it knows about the connection is its remote address, which is the
//! local address of the proxy's inner socket. The proxy registers that address with the TLS
//! peer's identity before forwarding a single byte, so the broker's authentication hook,
//! running when the MQTT CONNECT arrives, always finds it. The entry is removed before the
//! inner socket is closed, so a port the OS hands out again never meets a stale entry.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use crate::identity::DeviceIdentity;

/// Shards of the map, by inner port: connections are spread evenly (ports are consecutive)
/// and a CONNECT storm does not serialise on one lock.
const SHARDS: usize = 16;

/// The TLS version a proxied connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tls12 => "TLSv1.2",
            Self::Tls13 => "TLSv1.3",
        })
    }
}

/// What the proxy learned about the device behind one inner connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The verified client certificate's id (hex SHA-256 of its DER); `None` when the device
    /// presented no certificate (it must then authenticate with a password).
    pub certificate_id: Option<String>,
    /// The client certificate's subject CN (for fleetcmd-issued certificates, the identity).
    pub common_name: Option<String>,
    /// The device's address on the public side.
    pub public_remote_addr: SocketAddr,
    pub tls_version: TlsVersion,
}

impl PeerIdentity {
    /// The CN read as a device identity, when it is one (`things/lamp-1`).
    pub fn device_identity(&self) -> Option<DeviceIdentity> {
        self.common_name
            .as_deref()
            .and_then(|cn| DeviceIdentity::parse(cn).ok())
    }
}

/// One live proxied connection, as [`PeerRegistry::connections_of`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedConnection {
    /// The inner socket's local address: the broker's view of the client's address.
    pub inner_local_addr: SocketAddr,
    pub identity: PeerIdentity,
}

struct Entry {
    /// Tells a re-registered address from the one a guard is about to remove.
    serial: u64,
    identity: PeerIdentity,
    /// Set to `true` to make the connection's task close both sockets.
    close: watch::Sender<bool>,
}

struct Inner {
    shards: [Mutex<HashMap<SocketAddr, Entry>>; SHARDS],
    next_serial: AtomicU64,
}

/// The shared map from inner connection to peer identity. Cloning is cheap (an `Arc`); give
/// one clone to the proxy ([`crate::TlsProxy::with_registry`]) and one to the broker hook.
#[derive(Clone)]
pub struct PeerRegistry {
    inner: Arc<Inner>,
}

impl Default for PeerRegistry {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
                next_serial: AtomicU64::new(0),
            }),
        }
    }
}

impl fmt::Debug for PeerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerRegistry")
            .field("connections", &self.len())
            .finish()
    }
}

impl PeerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn shard(&self, addr: &SocketAddr) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Entry>> {
        self.inner.shards[usize::from(addr.port()) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The identity behind the broker-side connection whose remote address (the proxy's inner
    /// local address) is `inner_local_addr`; `None` for a connection that did not come
    /// through the proxy.
    pub fn lookup(&self, inner_local_addr: SocketAddr) -> Option<PeerIdentity> {
        self.shard(&inner_local_addr)
            .get(&inner_local_addr)
            .map(|e| e.identity.clone())
    }

    /// The live connections that authenticated with this certificate. Scans every entry: it
    /// serves revocations, which are rare, not the connection path.
    pub fn connections_of(&self, certificate_id: &str) -> Vec<ProxiedConnection> {
        let mut found = Vec::new();
        for shard in &self.inner.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            found.extend(
                shard
                    .iter()
                    .filter(|(_, e)| e.identity.certificate_id.as_deref() == Some(certificate_id))
                    .map(|(addr, e)| ProxiedConnection {
                        inner_local_addr: *addr,
                        identity: e.identity.clone(),
                    }),
            );
        }
        found
    }

    /// Closes every live connection that authenticated with this certificate (both the TLS
    /// side and the broker side) and returns how many were told to close. Closing is
    /// asynchronous: each connection's task drops its sockets as it wakes.
    pub fn disconnect_certificate(&self, certificate_id: &str) -> usize {
        let mut closed = 0;
        for shard in &self.inner.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for entry in shard.values() {
                if entry.identity.certificate_id.as_deref() == Some(certificate_id) {
                    entry.close.send_replace(true);
                    closed += 1;
                }
            }
        }
        closed
    }

    /// Closes the one connection behind `inner_local_addr`; `false` if there is none.
    pub fn disconnect(&self, inner_local_addr: SocketAddr) -> bool {
        match self.shard(&inner_local_addr).get(&inner_local_addr) {
            Some(entry) => {
                entry.close.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// How many proxied connections are live.
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a connection. The guard removes the entry when dropped (also when the task
    /// is aborted); the receiver turns `true` when the connection must close.
    pub(crate) fn register(
        &self,
        inner_local_addr: SocketAddr,
        identity: PeerIdentity,
    ) -> (Registration, watch::Receiver<bool>) {
        let serial = self.inner.next_serial.fetch_add(1, Ordering::Relaxed);
        let (close, closed) = watch::channel(false);
        let previous = self.shard(&inner_local_addr).insert(
            inner_local_addr,
            Entry {
                serial,
                identity,
                close,
            },
        );
        if previous.is_some() {
            // Cannot happen while guards drop before sockets close; say so if it does.
            tracing::warn!(%inner_local_addr, "replaced a live registry entry for a reused address");
        }
        let guard = Registration {
            registry: self.clone(),
            addr: inner_local_addr,
            serial,
        };
        (guard, closed)
    }
}

/// Removes its connection's entry when dropped.
pub(crate) struct Registration {
    registry: PeerRegistry,
    addr: SocketAddr,
    serial: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut shard = self.registry.shard(&self.addr);
        if shard
            .get(&self.addr)
            .is_some_and(|e| e.serial == self.serial)
        {
            shard.remove(&self.addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(cert: Option<&str>, port: u16) -> PeerIdentity {
        PeerIdentity {
            certificate_id: cert.map(str::to_owned),
            common_name: cert.map(|_| "things/lamp-1".to_owned()),
            public_remote_addr: SocketAddr::from(([192, 0, 2, 1], port)),
            tls_version: TlsVersion::Tls13,
        }
    }

    #[test]
    fn entries_live_as_long_as_their_guard() {
        let registry = PeerRegistry::new();
        let addr = SocketAddr::from(([127, 0, 0, 1], 40001));
        let (guard, _closed) = registry.register(addr, identity(Some("abc"), 1));
        let found = registry.lookup(addr).unwrap();
        assert_eq!(
            found.device_identity(),
            DeviceIdentity::thing("lamp-1").ok()
        );
        assert_eq!(registry.len(), 1);
        drop(guard);
        assert_eq!(registry.lookup(addr), None);
        assert!(registry.is_empty());
    }

    #[test]
    fn a_stale_guard_does_not_remove_a_newer_entry() {
        let registry = PeerRegistry::new();
        let addr = SocketAddr::from(([127, 0, 0, 1], 40002));
        let (old, _a) = registry.register(addr, identity(Some("old"), 1));
        let (_new, _b) = registry.register(addr, identity(Some("new"), 2));
        drop(old);
        let found = registry.lookup(addr).unwrap();
        assert_eq!(found.certificate_id.as_deref(), Some("new"));
    }

    #[test]
    fn disconnect_signals_only_the_certificate_s_connections() {
        let registry = PeerRegistry::new();
        let a = SocketAddr::from(([127, 0, 0, 1], 40003));
        let b = SocketAddr::from(([127, 0, 0, 1], 40004));
        let c = SocketAddr::from(([127, 0, 0, 1], 40005));
        let (_ga, ra) = registry.register(a, identity(Some("cert-1"), 1));
        let (_gb, rb) = registry.register(b, identity(Some("cert-1"), 2));
        let (_gc, rc) = registry.register(c, identity(None, 3));
        let mut of = registry.connections_of("cert-1");
        of.sort_by_key(|c| c.inner_local_addr);
        assert_eq!(
            of.iter().map(|c| c.inner_local_addr).collect::<Vec<_>>(),
            vec![a, b]
        );
        assert_eq!(registry.disconnect_certificate("cert-1"), 2);
        assert!(*ra.borrow() && *rb.borrow());
        assert!(!*rc.borrow());
        assert_eq!(registry.disconnect_certificate("cert-2"), 0);
        assert!(registry.disconnect(c));
        assert!(*rc.borrow());
    }
}
