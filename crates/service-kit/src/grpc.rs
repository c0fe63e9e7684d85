//! Serving gRPC: the one place that assembles a fleetcmd gRPC server — the telemetry layer
//! (metrics and server spans), the standard health service, reflection (v1 and v1alpha, so
//! `grpcurl` and older tools such as Python's grpcio-reflection both work) and TCP_NODELAY on
//! every accepted connection. Services hand their tonic services to a [`GrpcServer`]; the
//! binary decides which services share a listener.

use std::convert::Infallible;
use std::net::SocketAddr;

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
}

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
        })
    }

    /// Adds a service; its health entry turns SERVING when the server starts.
    pub fn add<S>(mut self, service: S) -> Self
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
        tonic::transport::Server::builder()
            .layer(fleetcmd_telemetry::grpc::GrpcLayer)
            .add_routes(self.routes.routes())
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await?;
        Ok(())
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
