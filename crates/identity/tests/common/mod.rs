//! Shared fixtures: a CA, a proxy on 127.0.0.1 in front of a small echo server that plays the
//! broker (it looks the peer up in the registry when the first bytes arrive, as the broker's
//! authentication hook does at CONNECT), and TLS clients. Every await is bounded.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleetcmd_identity::{
    Ca, ClientAuth, DeviceIdentity, Issued, MemoryTrustStore, PeerIdentity, PeerRegistry, TlsProxy,
    TrustStore, client_config, issue, server_certificate, server_config,
};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The bound on every single await: long enough for a loaded 2-core machine, short enough
/// that a hang fails the test by name.
pub const STEP: Duration = Duration::from_secs(10);

pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// What the echo server ("broker") saw.
#[derive(Debug)]
pub enum EchoEvent {
    /// The first bytes of a connection arrived; `identity` is what the registry said then.
    FirstBytes {
        peer: SocketAddr,
        identity: Option<PeerIdentity>,
    },
    /// The connection reached end of stream (or failed).
    Closed { peer: SocketAddr },
}

pub struct Proxy {
    pub ca: Arc<Ca>,
    pub store: Arc<MemoryTrustStore>,
    pub registry: PeerRegistry,
    pub addr: SocketAddr,
    pub events: mpsc::Receiver<EchoEvent>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Optional,
    Required,
}

impl Proxy {
    pub async fn start(mode: Mode) -> Self {
        Self::start_with(mode, |p| p).await
    }

    pub async fn start_with(mode: Mode, configure: impl FnOnce(TlsProxy) -> TlsProxy) -> Self {
        let ca = Arc::new(Ca::generate(OffsetDateTime::now_utc()).unwrap());
        let store = Arc::new(MemoryTrustStore::new([ca.trusted()]));
        let registry = PeerRegistry::new();
        let (events_tx, events) = mpsc::channel(64);
        let echo_addr = spawn_echo(registry.clone(), events_tx).await;
        let (cert, key) = server_certificate(
            &ca,
            &[],
            time::Duration::days(30),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        let dyn_store: Arc<dyn TrustStore> = store.clone();
        let auth = match mode {
            Mode::Optional => ClientAuth::Optional(dyn_store),
            Mode::Required => ClientAuth::Required(dyn_store),
        };
        let config = Arc::new(server_config(&cert, &key, auth).unwrap());
        let proxy = TlsProxy::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config, echo_addr)
            .await
            .unwrap()
            .with_registry(registry.clone());
        let proxy = configure(proxy);
        let addr = proxy.local_addr();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async move {
            let _ = stop.await;
        }));
        Self {
            ca,
            store,
            registry,
            addr,
            events,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// A certificate for `identity` from this proxy's CA, valid for 30 days.
    pub fn issue(&self, identity: &str) -> Issued {
        issue(
            &self.ca,
            &DeviceIdentity::parse(identity).unwrap(),
            30,
            OffsetDateTime::now_utc(),
        )
        .unwrap()
    }

    /// A TLS client that trusts this proxy's CA, with an optional client certificate.
    pub async fn connect(&self, cert: Option<&Issued>) -> std::io::Result<TlsStream<TcpStream>> {
        let pair = cert.map(|c| {
            (
                c.certificate_pem.as_str(),
                c.private_key_pem.as_deref().unwrap(),
            )
        });
        let config = client_config(self.ca.certificate_pem(), pair).unwrap();
        self.connect_with(Arc::new(config)).await
    }

    pub async fn connect_with(
        &self,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = within("TCP connect to the proxy", TcpStream::connect(self.addr)).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        within(
            "TLS handshake",
            TlsConnector::from(config).connect(name, tcp),
        )
        .await
    }

    pub async fn next_event(&mut self) -> EchoEvent {
        within("the echo server's next event", self.events.recv())
            .await
            .expect("the echo server stopped")
    }

    /// Stops the proxy and waits for it (every connection closed, the registry drained).
    pub async fn stop(mut self) -> PeerRegistry {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            within("the proxy to stop", task).await.unwrap();
        }
        self.registry.clone()
    }
}

/// Writes `msg`, reads the echo back; both bounded.
pub async fn round_trip(stream: &mut TlsStream<TcpStream>, msg: &[u8]) -> Vec<u8> {
    within("write to the proxy", stream.write_all(msg))
        .await
        .unwrap();
    let mut buf = vec![0u8; msg.len()];
    within("read the echo", stream.read_exact(&mut buf))
        .await
        .unwrap();
    buf
}

/// The TLS error a refused client sees: in TLS 1.3 the client finishes its handshake before
/// the server judges its certificate, so the alert arrives on the first read.
pub async fn refusal(result: std::io::Result<TlsStream<TcpStream>>) -> rustls::Error {
    let mut stream = match result {
        Ok(stream) => stream,
        Err(e) => return tls_error(e),
    };
    let mut buf = [0u8; 16];
    match within("the read after a refused handshake", stream.read(&mut buf)).await {
        Ok(n) => panic!("expected the handshake to be refused, read {n} bytes"),
        Err(e) => tls_error(e),
    }
}

fn tls_error(e: std::io::Error) -> rustls::Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| panic!("not a TLS error: {e:?}"))
}

pub fn alert(description: rustls::AlertDescription) -> rustls::Error {
    rustls::Error::AlertReceived(description)
}

async fn spawn_echo(registry: PeerRegistry, events: mpsc::Sender<EchoEvent>) -> SocketAddr {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, peer)) = listener.accept().await {
            let registry = registry.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut first = true;
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if first {
                                first = false;
                                let identity = registry.lookup(peer);
                                let _ = events.send(EchoEvent::FirstBytes { peer, identity }).await;
                            }
                            if conn.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = events.send(EchoEvent::Closed { peer }).await;
            });
        }
    });
    addr
}
