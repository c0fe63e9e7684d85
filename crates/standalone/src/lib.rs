//! `fleetcmd serve`: the registry, dispatcher and edge in one process on the embedded
//! adapters (SQLite file, in-process bus, embedded MQTT broker). The shard owners project
//! into the read model in the transaction of each append (the log and the read model are one
//! SQLite file), so the projector's stage is not needed here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
pub mod devices;

use fleetcmd_adapters::clock::SystemClock;
use fleetcmd_adapters::embedded::broker::EmbeddedBroker;
use fleetcmd_adapters::embedded::bus::InProcessBus;
use fleetcmd_adapters::embedded::sqlite::{Durability, SqliteStore};
use fleetcmd_contracts::auth::Auth;
use fleetcmd_dispatcher::OwnerConfig;
use fleetcmd_dispatcher::owner::OwnerDeps;
use fleetcmd_domain::command::CommandSettings;
use fleetcmd_domain::policy::Policy;
use fleetcmd_domain::ports::{Bus, Clock, EventLog, ProjectingLog, ReadModel, SnapshotStore};
use fleetcmd_domain::topics::TopicRoot;
use fleetcmd_service_kit::grpc::{GrpcServer, ServeError};
use fleetcmd_service_kit::{ProjectionWatch, ShardClient};
use tokio::sync::watch;

/// Flags of `fleetcmd serve` (each also readable from a `FLEETCMD_*` environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where the gRPC API listens.
    #[arg(long, env = "FLEETCMD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Where the embedded MQTT broker listens for devices, in plain MQTT (keep it on
    /// loopback unless device authentication is off).
    #[arg(long, env = "FLEETCMD_MQTT_ADDR", default_value = "127.0.0.1:1883")]
    pub mqtt_addr: SocketAddr,
    /// Where devices connect over TLS 1.2/1.3 (MQTT over TLS, with an optional client
    /// certificate).
    #[arg(long, env = "FLEETCMD_MQTT_TLS_ADDR", default_value = "127.0.0.1:8883")]
    pub mqtt_tls_addr: SocketAddr,
    /// Whether devices must authenticate: `required` (a certificate or a password, and each
    /// device only on its own topics) or `open` (anyone, any topic). Default: `required` as
    /// soon as a device listener binds beyond loopback, else `open`.
    #[arg(long, env = "FLEETCMD_DEVICE_AUTH", value_enum)]
    pub device_auth: Option<devices::DeviceAuth>,
    /// An identity (`clients/<id>` or `things/<name>`) that may also subscribe to the
    /// status-change events under `<topic-root>/events/` when devices must authenticate
    /// (repeatable, or comma-separated). It logs in like a device, with a password or a
    /// certificate.
    #[arg(
        long = "mqtt-event-reader",
        env = "FLEETCMD_MQTT_EVENT_READERS",
        value_delimiter = ',',
        value_parser = devices::parse_identity_arg
    )]
    pub mqtt_event_readers: Vec<fleetcmd_domain::ids::Target>,
    /// Directory of the SQLite file that holds the event log and the read model.
    #[arg(long, env = "FLEETCMD_DATA_DIR", default_value = "./fleetcmd-data")]
    pub data_dir: PathBuf,
    /// Policy file (TOML) with bearer tokens and grants. Without one, the API is open and
    /// listens on loopback only.
    #[arg(long, env = "FLEETCMD_POLICY")]
    pub policy: Option<PathBuf>,
    /// Allow a non-loopback gRPC address without a policy (anyone who can reach it may do anything).
    #[arg(long, env = "FLEETCMD_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Serve the gRPC API over TLS with the server certificate of `--tls-dir`. Callers trust
    /// `<tls-dir>/ca.pem` (`--ca` in the CLI) and may present a client certificate from that
    /// CA instead of a bearer token (its subject CN is the policy's `certificate_subject`).
    #[arg(long, env = "FLEETCMD_GRPC_TLS")]
    pub grpc_tls: bool,
    /// Append the audit trail (one JSON line per mutating API call and credential change:
    /// who, what, on which resource, the result) to this file, besides the log.
    #[arg(long, env = "FLEETCMD_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Allow a non-loopback gRPC address without TLS (tokens and payloads in clear).
    #[arg(long, env = "FLEETCMD_ALLOW_PLAINTEXT_GRPC")]
    pub allow_plaintext_grpc: bool,
    /// Topic root of the device protocol.
    #[arg(long, env = "FLEETCMD_TOPIC_ROOT", default_value = "$aws")]
    pub topic_root: String,
    /// Number of shards (= event-log partitions); fixed for the life of the data directory.
    #[arg(long, env = "FLEETCMD_SHARDS", default_value_t = 16)]
    pub shards: u32,
    /// How long a command that is not deprecated (or was deprecated recently) waits before deletion.
    #[arg(long, env = "FLEETCMD_DELETION_WAIT_SECS", default_value_t = 43_200)]
    pub deletion_wait_secs: u64,
    /// How long a client token stays in the shard owners' memory after its start; a retry
    /// with an older token is answered from the read model (tokens count for the
    /// execution's timeout + 24 h either way).
    #[arg(long, env = "FLEETCMD_CLIENT_TOKEN_MEMORY_SECS", default_value_t = 900)]
    pub client_token_memory_secs: u64,
    /// How long execution records are kept.
    #[arg(long, env = "FLEETCMD_RETENTION_SECS", default_value_t = 183 * 24 * 3600)]
    pub retention_secs: u64,
    /// The most executions of a target with its device at once when its thing sets no
    /// `max_in_flight`; later ones wait, and go out in start order as earlier ones end
    /// (unset: no limit, as AWS).
    #[arg(long, env = "FLEETCMD_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Log as JSON lines (with `trace_id` and `span_id` while a traced span is active).
    #[arg(long, env = "FLEETCMD_LOG_JSON")]
    pub log_json: bool,
    /// Where Prometheus metrics are served (`GET /metrics`); port 0 picks a free one.
    #[arg(long, env = "FLEETCMD_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Directory of the device CA (`ca.pem`, `ca.key`) and the server certificate
    /// (`server.pem`, `server.key`); created on first start. Default: `<data-dir>/tls`. Put
    /// your own CA there to have fleetcmd issue device certificates from it.
    #[arg(long, env = "FLEETCMD_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// A name or address the server certificate must also cover (repeatable), besides
    /// `localhost`, `127.0.0.1`, `::1` and the host name.
    #[arg(long = "tls-san", env = "FLEETCMD_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
    /// OTLP/gRPC endpoint of a trace collector (e.g. `http://localhost:4317`); traces are
    /// exported only when one is set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Reads and validates a policy file.
pub fn load_policy(path: &std::path::Path) -> anyhow::Result<Policy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading policy file {}", path.display()))?;
    let policy: Policy =
        toml::from_str(&text).with_context(|| format!("parsing policy file {}", path.display()))?;
    policy
        .validate()
        .with_context(|| format!("policy file {}", path.display()))?;
    Ok(policy)
}

/// A running `fleetcmd serve`: its real addresses, and the handle that stops it.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub mqtt_addr: SocketAddr,
    /// Where devices connect over TLS.
    pub mqtt_tls_addr: SocketAddr,
    /// Whether devices must authenticate.
    pub device_auth: devices::DeviceAuth,
    /// Where `GET /metrics` is served.
    pub metrics_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<Result<(), ServeError>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    broker: EmbeddedBroker,
    bus: Arc<InProcessBus>,
}

impl Running {
    /// Stops accepting calls, lets in-flight ones finish, then stops the services and the broker.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.send_replace(true);
        let served = self.server.await.context("gRPC server task")?;
        for t in self.background {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.bus.shutdown();
        drop(self.broker);
        served.context("gRPC server")
    }
}

/// The device CA and the server certificate, from `--tls-dir` (created on first start).
pub struct TlsIdentity {
    pub ca: Arc<fleetcmd_identity::Ca>,
    pub server: fleetcmd_identity::ServerIdentity,
    pub dir: PathBuf,
}

impl TlsIdentity {
    pub fn load_or_create(args: &ServeArgs) -> anyhow::Result<Self> {
        let dir = args
            .tls_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("tls"));
        let ca = fleetcmd_identity::Ca::load_or_create(&dir)
            .with_context(|| format!("loading the device CA in {}", dir.display()))?;
        let server =
            fleetcmd_identity::ServerIdentity::load_or_create(&dir, &ca, &args.tls_sans)
                .with_context(|| format!("loading the server certificate in {}", dir.display()))?;
        if server.was_issued() {
            tracing::info!(sans = ?server.sans(), dir = %dir.display(), "issued the server certificate");
        }
        Ok(Self {
            ca: Arc::new(ca),
            server,
            dir,
        })
    }
}

/// Checks flags that clap cannot check by itself.
fn validate(args: &ServeArgs, policy: Option<&Policy>) -> anyhow::Result<TopicRoot> {
    let root = TopicRoot::new(args.topic_root.clone()).context("--topic-root")?;
    if !(1..=1024).contains(&args.shards) {
        bail!("--shards must be between 1 and 1024, got {}", args.shards);
    }
    if args.deletion_wait_secs < fleetcmd_domain::limits::TIMEOUT_MAX_SECS {
        // Allowed (tests and demos want it), but executions may then outlive their command.
        tracing::warn!(
            deletion_wait_secs = args.deletion_wait_secs,
            "the deletion wait is shorter than the longest execution timeout (43200 s)"
        );
    }
    if args.retention_secs < 60 {
        bail!(
            "--retention-secs must be at least 60, got {}",
            args.retention_secs
        );
    }
    if !args.grpc_addr.ip().is_loopback() && !args.grpc_tls && !args.allow_plaintext_grpc {
        bail!(
            "refusing to serve the API on {} without TLS: pass --grpc-tls, or --allow-plaintext-grpc to send tokens and payloads in clear",
            args.grpc_addr
        );
    }
    if policy.is_none() && !args.grpc_addr.ip().is_loopback() && !args.allow_unauthenticated {
        bail!(
            "refusing to serve the API on {} without a policy: pass --policy FILE, or --allow-unauthenticated to let anyone who can reach it do anything",
            args.grpc_addr
        );
    }
    Ok(root)
}

/// Starts everything and returns once the API and the broker accept connections.
pub async fn start(args: ServeArgs) -> anyhow::Result<Running> {
    let policy = args.policy.as_deref().map(load_policy).transpose()?;
    let topic_root = validate(&args, policy.as_ref())?;
    if policy.is_none() {
        if args.grpc_addr.ip().is_loopback() {
            tracing::warn!(
                "no --policy given: the API is open to every local caller and listens on loopback only"
            );
        } else {
            tracing::warn!(addr = %args.grpc_addr, "no --policy given and --allow-unauthenticated set: the API is open to anyone who can reach it");
        }
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
    let identity = TlsIdentity::load_or_create(&args)?;
    let db = args.data_dir.join("fleetcmd.sqlite");
    let store = SqliteStore::open(&db, args.shards, Durability::Process)
        .with_context(|| format!("opening {}", db.display()))?;
    let log: Arc<dyn EventLog> = store.clone();
    let snapshots: Arc<dyn SnapshotStore> = store.clone();
    let inline: Arc<dyn ProjectingLog> = store.clone();
    let read_model: Arc<dyn ReadModel> = store;
    let in_process = Arc::new(InProcessBus::new());
    let bus: Arc<dyn Bus> = in_process.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let metrics_listener = fleetcmd_telemetry::metrics::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {}", args.metrics_addr))?;
    let metrics_addr = metrics_listener.local_addr()?;
    let device_auth = devices::device_auth(&args)?;
    let devices::DeviceListeners {
        broker,
        mqtt_addr,
        mqtt_tls_addr,
        proxy,
        trust,
    } = devices::start(
        &args,
        device_auth,
        &topic_root,
        &identity,
        read_model.clone(),
    )
    .await?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let shards: Vec<u32> = (0..args.shards).collect();
    let mut background = Vec::new();
    let mut stop_proxy = shutdown_rx.clone();
    background.push(tokio::spawn(proxy.run(async move {
        let _ = stop_proxy.wait_for(|s| *s).await;
    })));
    let mut stop_metrics = shutdown_rx.clone();
    background.push(tokio::spawn(fleetcmd_telemetry::metrics::serve(
        metrics_listener,
        async move {
            let _ = stop_metrics.wait_for(|s| *s).await;
        },
    )));

    let owner_config = Arc::new(OwnerConfig {
        shards: args.shards,
        retention_secs: args.retention_secs,
        command_settings: CommandSettings {
            deletion_wait_secs: args.deletion_wait_secs,
        },
        topic_root: topic_root.clone(),
        token_memory: Duration::from_secs(args.client_token_memory_secs),
        max_in_flight_default: args.max_in_flight.filter(|n| *n > 0),
        ..OwnerConfig::default()
    });
    let owner_deps = OwnerDeps {
        log: log.clone(),
        bus: bus.clone(),
        read_model: read_model.clone(),
        snapshots,
        clock: clock.clone(),
        // One SQLite file holds the log and the read model: each owner writes its read-model
        // rows in the transaction of its append, so there is no projector stage to wait for.
        inline_projection: Some(inline),
    };
    background.push(tokio::spawn(fleetcmd_dispatcher::run_owners(
        owner_deps,
        owner_config,
        shards.clone(),
        shutdown_rx.clone(),
    )));

    // No projector: the owners project inline. Only its purger of expired records runs.
    let projector_deps = fleetcmd_projector::ProjectorDeps {
        log: log.clone(),
        read_model: read_model.clone(),
        bus: bus.clone(),
        clock: clock.clone(),
    };
    background.push(tokio::spawn(fleetcmd_projector::run_purger(
        projector_deps,
        fleetcmd_projector::ProjectorConfig::default().purge_interval,
        shutdown_rx.clone(),
    )));

    let projection = ProjectionWatch::start(bus.clone(), read_model.clone(), args.shards).await?;
    let shard_client = ShardClient::new(bus.clone(), args.shards);

    // The edge works inside the broker: no MQTT client, no socket, no client id of its own.
    // It learns of connects and disconnects from the broker; the registry answers from it.
    let presence = Arc::new(fleetcmd_service_kit::presence::Presence::default());
    let edge_config = fleetcmd_edge::EdgeConfig {
        topic_root: topic_root.clone(),
        ..fleetcmd_edge::EdgeConfig::default()
    };
    let edge_deps = fleetcmd_edge::EdgeDeps {
        bus: bus.clone(),
        shards: shard_client.clone(),
        clock: clock.clone(),
        link: Arc::new(broker.link()),
        // The owners project inline: an accepted update is readable when they answer.
        projection: None,
        presence: presence.clone(),
    };
    fleetcmd_edge::run(edge_config, edge_deps, shutdown_rx.clone()).await?;

    let mut auth = Auth::new(policy.map(Arc::new));
    if let Some(path) = &args.audit_log {
        let log = fleetcmd_contracts::audit::AuditLog::to_file(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        auth = auth.with_audit(log);
    }
    let (commands, things, rollouts) = fleetcmd_registry::grpc(fleetcmd_registry::RegistryDeps {
        read_model: read_model.clone(),
        bus: bus.clone(),
        shards: shard_client.clone(),
        projection: projection.clone(),
        auth: auth.clone(),
        arns: Default::default(),
        ca: Some(identity.ca.clone()),
        device_trust: Some(trust),
        presence: Some(presence),
        shutdown: shutdown_rx.clone(),
    });
    let mut grpc = GrpcServer::new()?;
    if args.grpc_tls {
        grpc = grpc.with_tls(fleetcmd_service_kit::grpc::GrpcTls {
            certificate_pem: identity.server.certificate_pem().to_owned(),
            private_key_pem: identity.server.private_key_pem().to_owned(),
            client_ca_pem: Some(identity.ca.certificate_pem().to_owned()),
        });
    }
    let grpc =
        grpc.with(commands)
            .with(things)
            .with(rollouts)
            .with(fleetcmd_dispatcher::grpc::service(
                fleetcmd_dispatcher::grpc::DispatcherDeps {
                    read_model: read_model.clone(),
                    shards: shard_client,
                    projection,
                    auth,
                },
            ));
    let listener = fleetcmd_service_kit::grpc::bind(args.grpc_addr)
        .await
        .context("binding the gRPC API")?;
    let grpc_addr = listener.local_addr()?;
    let server = tokio::spawn(grpc.serve(listener, shutdown_rx.clone()));
    tracing::info!(%grpc_addr, %mqtt_addr, %mqtt_tls_addr, ?device_auth, %metrics_addr, data = %db.display(), shards = args.shards, "fleetcmd serving");
    Ok(Running {
        grpc_addr,
        mqtt_addr,
        mqtt_tls_addr,
        device_auth,
        metrics_addr,
        shutdown,
        server,
        background,
        broker,
        bus: in_process,
    })
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let telemetry = fleetcmd_telemetry::init(&fleetcmd_telemetry::TelemetryConfig {
        service_name: "fleetcmd".into(),
        log_json: args.log_json,
        otlp_endpoint: args.otlp_endpoint.clone(),
    })?;
    let running = start(args).await?;
    let devices = match running.device_auth {
        devices::DeviceAuth::Required => "devices must authenticate",
        devices::DeviceAuth::Open => "device authentication OFF",
    };
    eprintln!(
        "fleetcmd: gRPC API on {}, MQTT broker on {} and {} (TLS), {devices}, metrics on http://{}/metrics",
        running.grpc_addr, running.mqtt_addr, running.mqtt_tls_addr, running.metrics_addr
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    let stopped = running.stop().await;
    telemetry.shutdown().await;
    stopped
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
