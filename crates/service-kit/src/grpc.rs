//! Serving gRPC: the one place that assembles a fleetcmd gRPC server — the telemetry layer
//! (metrics and server spans), the standard health service, reflection (v1 and v1alpha, so
//! `grpcurl` and older tools such as Python's grpcio-reflection both work), a bound on every
//! error status it sends ([`BoundedStatusLayer`]), TCP_NODELAY on every accepted
//! connection, and, when configured, TLS with optional client certificates whose subject
//! reaches the handlers as [`PEER_SUBJECT_HEADER`] ([`PeerSubjectLayer`]). Services hand their tonic services to a [`GrpcServer`]; the binary decides
//! which services share a listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use fleetcmd_contracts::convert::{
    STATUS_DETAILS_MAX_BYTES, STATUS_MESSAGE_MAX_BYTES, bounded_status,
};
use futures::FutureExt as _;
use futures::future::Map;
use tonic::Status;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Why a gRPC server could not be built or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("listener address: {0}")]
    LocalAddr(std::io::Error),
}

/// A gRPC server being assembled: health and reflection are always there.
pub struct GrpcServer {
    routes: RoutesBuilder,
    health: HealthReporter,
    /// Service names reported SERVING once [`GrpcServer::serve`] starts.
    serving: Vec<&'static str>,
    tls: Option<GrpcTls>,
}

/// TLS for a gRPC server: its certificate (chain, PEM) and key, and optionally the CA whose
/// client certificates identify callers (mutual TLS; a caller without one may still use a
/// bearer token).
#[derive(Clone)]
pub struct GrpcTls {
    pub certificate_pem: String,
    pub private_key_pem: String,
    pub client_ca_pem: Option<String>,
}

impl std::fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("GrpcTls")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

pub use fleetcmd_contracts::auth::PEER_SUBJECT_HEADER;

impl GrpcServer {
    /// A server with the health service and reflection of fleetcmd's and the health
    /// service's descriptors.
    pub fn new() -> Result<Self, ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let descriptors = [
            fleetcmd_contracts::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ];
        let mut v1 = tonic_reflection::server::Builder::configure();
        let mut v1alpha = tonic_reflection::server::Builder::configure();
        for set in descriptors {
            v1 = v1.register_encoded_file_descriptor_set(set);
            v1alpha = v1alpha.register_encoded_file_descriptor_set(set);
        }
        let mut routes = RoutesBuilder::default();
        routes
            .add_service(health_service)
            .add_service(v1.build_v1()?)
            .add_service(v1alpha.build_v1alpha()?);
        Ok(Self {
            routes,
            health,
            serving: Vec::new(),
            tls: None,
        })
    }

    /// Serves over TLS (1.2 and 1.3) instead of plain HTTP/2.
    pub fn with_tls(mut self, tls: GrpcTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Adds a service; its health entry turns SERVING when the server starts.
    pub fn with<S>(mut self, service: S) -> Self
    where
        S: tonic::codegen::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.serving.push(S::NAME);
        self
    }

    /// The health reporter, to follow engines (e.g. NOT_SERVING while NATS is unreachable).
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Binds `addr` and serves; see [`GrpcServer::serve`].
    pub async fn bind_and_serve(
        self,
        addr: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), ServeError> {
        let listener = bind(addr).await?;
        self.serve(listener, shutdown).await
    }

    /// Serves on `listener` until `shutdown` turns true, then lets in-flight calls finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ServeError> {
        for name in &self.serving {
            self.health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        let addr = listener.local_addr().map_err(ServeError::LocalAddr)?;
        tracing::info!(%addr, "serving gRPC");
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            use tonic::transport::{Certificate, Identity, ServerTlsConfig};
            let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
                &tls.certificate_pem,
                &tls.private_key_pem,
            ));
            if let Some(ca) = &tls.client_ca_pem {
                config = config
                    .client_ca_root(Certificate::from_pem(ca))
                    .client_auth_optional(true);
            }
            builder = builder.tls_config(config)?;
        }
        builder
            .layer(PeerSubjectLayer)
            .layer(fleetcmd_telemetry::grpc::GrpcLayer)
            .layer(BoundedStatusLayer)
            .add_routes(self.routes.routes())
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await?;
        Ok(())
    }
}

/// Puts the subject CN of the caller's verified client certificate (if any) into the request
/// as [`PEER_SUBJECT_HEADER`], after removing whatever the caller sent under that name: the
/// policy can then treat a certificate subject as an identity, and nobody can claim one by
/// sending the header.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerSubjectLayer;

impl<S> tower_layer::Layer<S> for PeerSubjectLayer {
    type Service = PeerSubject<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PeerSubject { inner }
    }
}

/// The service [`PeerSubjectLayer`] makes.
#[derive(Debug, Clone)]
pub struct PeerSubject<S> {
    inner: S,
}

impl<S, B> tower_service::Service<http::Request<B>> for PeerSubject<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
        req.headers_mut().remove(PEER_SUBJECT_HEADER);
        let subject = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| {
                certs
                    .first()
                    .and_then(|c| fleetcmd_identity::common_name(c))
            });
        if let Some(value) = subject.and_then(|s| http::HeaderValue::from_str(&s).ok()) {
            req.headers_mut().insert(PEER_SUBJECT_HEADER, value);
        }
        self.inner.call(req)
    }
}

/// Bounds the status of every failed call, whoever made it (a handler, auth, tonic itself), to
/// what gRPC metadata can carry: [`bounded_status`] cuts a message over
/// [`STATUS_MESSAGE_MAX_BYTES`] and details over [`STATUS_DETAILS_MAX_BYTES`]. Without it, an
/// error that repeated a huge request field would reach the client as a transport failure
/// instead of its own code.
///
/// It reads the status where tonic puts a failed call's: in the headers of a trailers-only
/// response. A stream that fails after its first message carries its status in the trailers,
/// which this layer does not see; fleetcmd's streams end only with fixed messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct BoundedStatusLayer;

impl<S> tower_layer::Layer<S> for BoundedStatusLayer {
    type Service = BoundedStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BoundedStatus { inner }
    }
}

/// The service [`BoundedStatusLayer`] makes.
#[derive(Debug, Clone)]
pub struct BoundedStatus<S> {
    inner: S,
}

type Bound<B, E> = fn(Result<http::Response<B>, E>) -> Result<http::Response<B>, E>;

impl<S, Req, B> tower_service::Service<Req> for BoundedStatus<S>
where
    S: tower_service::Service<Req, Response = http::Response<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Map<S::Future, Bound<B, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let bound: Bound<B, S::Error> = |result| {
            result.map(|mut response| {
                bound_headers(response.headers_mut());
                response
            })
        };
        self.inner.call(req).map(bound)
    }
}

/// Rewrites an oversized status in `headers` (`grpc-message` is percent-encoded, so its length
/// is at least the message's; `grpc-status-details-bin` is base64, 4/3 of the details).
fn bound_headers(headers: &mut http::HeaderMap) {
    let len = |name: &http::HeaderName| headers.get(name).map_or(0, |v| v.len());
    let oversized = len(&Status::GRPC_MESSAGE) > STATUS_MESSAGE_MAX_BYTES
        || len(&Status::GRPC_STATUS_DETAILS) > STATUS_DETAILS_MAX_BYTES / 3 * 4 + 4;
    if !oversized {
        return;
    }
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let bounded = bounded_status(status);
    headers.remove(Status::GRPC_MESSAGE);
    headers.remove(Status::GRPC_STATUS_DETAILS);
    if bounded.add_header(headers).is_err() {
        // Cannot happen (a cut message encodes as well as the whole one did); never send the
        // oversized original.
        headers.remove(Status::GRPC_MESSAGE);
    }
}

/// Binds a TCP listener for a gRPC server.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// The overall health entry (service name ""), which probes without a service name ask for.
pub struct HealthAll;

impl NamedService for HealthAll {
    const NAME: &'static str = "";
}

#[cfg(test)]
mod tests {
    use std::future::{Ready, ready};

    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt};
    use tower_layer::Layer as _;
    use tower_service::Service as _;

    use super::*;

    /// A service that answers every call with a fixed status, as tonic answers a failed call.
    #[derive(Clone)]
    struct Fails(Status);

    impl tower_service::Service<()> for Fails {
        type Response = http::Response<()>;
        type Error = Infallible;
        type Future = Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            ready(Ok(self.0.clone().into_http()))
        }
    }

    async fn answer(status: Status) -> Status {
        let response = BoundedStatusLayer
            .layer(Fails(status))
            .call(())
            .await
            .unwrap();
        Status::from_header_map(response.headers()).expect("a status in the headers")
    }

    #[tokio::test]
    async fn oversized_statuses_are_bounded_on_the_way_out() {
        for len in [5_000, 100_000] {
            // Not made by the status mapping: a handler's own status.
            let huge = "ä".repeat(len);
            let s = answer(Status::not_found(format!("no {huge}"))).await;
            assert_eq!(s.code(), Code::NotFound);
            assert!(s.message().len() <= STATUS_MESSAGE_MAX_BYTES, "{len}");
            assert!(s.message().starts_with("no ää"), "{}", s.message());

            let details = ErrorDetails::with_bad_request_violation("namespace", huge.clone());
            let s = answer(Status::with_error_details(
                Code::InvalidArgument,
                huge.clone(),
                details,
            ))
            .await;
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(s.message().len() <= STATUS_MESSAGE_MAX_BYTES);
            assert!(s.details().len() <= STATUS_DETAILS_MAX_BYTES);
            let details = s.get_error_details();
            let v = &details.bad_request().unwrap().field_violations[0];
            assert_eq!(v.field, "namespace");
        }
        // Small statuses pass untouched.
        let s = answer(Status::invalid_argument("invalid namespace: only AWS-IoT")).await;
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "invalid namespace: only AWS-IoT")
        );
    }
}
