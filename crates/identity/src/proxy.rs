//! The TLS-terminating proxy in front of the embedded broker.
//!
//! rmqtt is built with plain TCP only, so devices reach it through this proxy: it accepts TLS
//! on the public address, verifies the optional client certificate (through the
//! [`crate::tls::server_config`] it is given), opens a plain TCP connection to the broker's
//! private loopback listener, registers the peer's identity under that inner connection's local
//! address in the [`PeerRegistry`], and only then copies bytes both ways. Each connection can
//! be closed from outside (a revoked certificate) through the registry.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::certs::{certificate_id, common_name};
use crate::error::{Error, Result};
use crate::registry::{PeerIdentity, PeerRegistry, TlsVersion};

/// How long a client has to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many proxied connections may be open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// How long connecting to the broker's loopback listener may take.
const INNER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to back off after `accept` fails (out of file descriptors, typically), so a
/// persistent failure does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound proxy, not yet serving. Configure with the `with_*` methods, then [`Self::run`].
pub struct TlsProxy {
    listener: TcpListener,
    local_addr: SocketAddr,
    acceptor: TlsAcceptor,
    inner_addr: SocketAddr,
    registry: PeerRegistry,
    max_connections: usize,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsProxy")
            .field("local_addr", &self.local_addr)
            .field("inner_addr", &self.inner_addr)
            .field("max_connections", &self.max_connections)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsProxy {
    /// Binds `public_addr` (port 0 picks one: see [`Self::local_addr`]); connections will be
    /// forwarded to `inner_addr`, the broker's plain listener.
    pub async fn bind(
        public_addr: SocketAddr,
        config: Arc<ServerConfig>,
        inner_addr: SocketAddr,
    ) -> Result<Self> {
        let bind_err = |source| Error::Bind {
            addr: public_addr,
            source,
        };
        let listener = TcpListener::bind(public_addr).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            listener,
            local_addr,
            acceptor: TlsAcceptor::from(config),
            inner_addr,
            registry: PeerRegistry::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// Registers connections in `registry` (shared with the broker's authentication hook)
    /// instead of a registry of the proxy's own.
    pub fn with_registry(mut self, registry: PeerRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// At most `max` connections at once (at least 1). Past it the proxy stops accepting, and
    /// new clients wait in the kernel's backlog until a connection ends.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry the proxy records identities in.
    pub fn registry(&self) -> PeerRegistry {
        self.registry.clone()
    }

    /// Serves until `shutdown` completes, then closes every proxied connection and returns
    /// once their tasks have ended (the registry is empty by then). Failures are per
    /// connection (logged, never fatal), so there is nothing to return.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let permits = Arc::new(Semaphore::new(self.max_connections));
        // Broadcast to every connection task when the proxy stops.
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            acceptor: self.acceptor,
            inner_addr: self.inner_addr,
            registry: self.registry,
            handshake_timeout: self.handshake_timeout,
        });
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        tracing::info!(addr = %self.local_addr, inner = %self.inner_addr, "TLS proxy listening");
        loop {
            // The permit is taken before accepting, so at the limit connections queue in the
            // kernel instead of being accepted and dropped.
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // the semaphore is never closed
                },
            };
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS proxy accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            // Reap finished tasks so the set holds live connections only.
            while tasks.try_join_next().is_some() {}
            let shared = shared.clone();
            let stop = stop_rx.clone();
            tasks.spawn(async move {
                shared.serve(tcp, peer, stop).await;
                drop(permit);
            });
        }
        stop_tx.send_replace(true);
        while tasks.join_next().await.is_some() {}
        tracing::info!(addr = %self.local_addr, "TLS proxy stopped");
    }
}

struct Shared {
    acceptor: TlsAcceptor,
    inner_addr: SocketAddr,
    registry: PeerRegistry,
    handshake_timeout: Duration,
}

impl Shared {
    async fn serve(&self, tcp: TcpStream, peer: SocketAddr, mut stop: watch::Receiver<bool>) {
        // MQTT is small, latency-bound packets: no Nagle delay on either leg.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "set TCP_NODELAY failed");
        }
        let handshake = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp));
        let mut tls = tokio::select! {
            result = handshake => match result {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, timeout = ?self.handshake_timeout, "TLS handshake timed out");
                    return;
                }
            },
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let identity = {
            let (_, conn) = tls.get_ref();
            let leaf = conn.peer_certificates().and_then(|certs| certs.first());
            PeerIdentity {
                certificate_id: leaf.map(|der| certificate_id(der)),
                common_name: leaf.and_then(|der| common_name(der)),
                public_remote_addr: peer,
                tls_version: match conn.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_2) => TlsVersion::Tls12,
                    _ => TlsVersion::Tls13,
                },
            }
        };
        let connect =
            tokio::time::timeout(INNER_CONNECT_TIMEOUT, TcpStream::connect(self.inner_addr));
        let mut inner = match connect.await {
            Ok(Ok(inner)) => inner,
            Ok(Err(e)) => {
                tracing::warn!(%peer, inner = %self.inner_addr, error = %e, "connecting to the broker failed");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, inner = %self.inner_addr, "connecting to the broker timed out");
                return;
            }
        };
        if let Err(e) = inner.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "set TCP_NODELAY failed");
        }
        let inner_local = match inner.local_addr() {
            Ok(addr) => addr,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "reading the inner socket's address failed");
                return;
            }
        };
        // Registered before the first byte is forwarded: the broker cannot see the CONNECT
        // before it can find who sent it.
        let (registration, mut close) = self.registry.register(inner_local, identity.clone());
        tracing::debug!(
            %peer,
            %inner_local,
            certificate_id = identity.certificate_id.as_deref().unwrap_or("-"),
            common_name = identity.common_name.as_deref().unwrap_or("-"),
            tls = %identity.tls_version,
            "proxying"
        );
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut tls, &mut inner) => match result {
                Ok((up, down)) => tracing::debug!(%peer, up, down, "connection closed"),
                Err(e) => tracing::debug!(%peer, error = %e, "connection ended"),
            },
            // A dropped sender (the entry replaced) closes too: the connection is no longer
            // accounted for.
            _ = close.wait_for(|close| *close) => {
                tracing::info!(%peer, certificate_id = identity.certificate_id.as_deref().unwrap_or("-"), "connection closed on request");
            }
            _ = stop.wait_for(|stop| *stop) => {}
        }
        // The entry goes before the inner socket closes, so its port cannot be reused while
        // the entry still names it.
        drop(registration);
        drop(inner);
        drop(tls);
    }
}
