//! `fleetcmd run <service>`: one service per process on the cluster engines — NATS (bus),
//! Kafka (event log and shard membership), ScyllaDB (read model) and an external MQTT broker.
//!
//! Each process connects to its engines with retries (engines may come up after it), serves
//! gRPC health whose status follows its engines (NOT_SERVING until they are reachable), and
//! drains on SIGTERM.

pub mod config;
pub mod pool;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fleetcmd_adapters::clock::SystemClock;
use fleetcmd_adapters::kafka::{KafkaLog, KafkaLogConfig, KafkaMembership, KafkaMembershipConfig};
use fleetcmd_adapters::nats::NatsBus;
use fleetcmd_adapters::scylla::{Replication, ScyllaReadModel};
use fleetcmd_contracts::auth::Auth;
use fleetcmd_dispatcher::OwnerConfig;
use fleetcmd_dispatcher::owner::OwnerDeps;
use fleetcmd_domain::command::CommandSettings;
use fleetcmd_domain::ports::{Bus, Clock, EventLog, ReadModel, ShardMembership};
use fleetcmd_domain::topics::TopicRoot;
use fleetcmd_service_kit::grpc::{GrpcServer, HealthAll};
use fleetcmd_service_kit::{ProjectionWatch, ShardClient};
use tokio::sync::watch;
use tonic::server::NamedService as _;
use tonic_health::ServingStatus;

pub use config::ClusterConfig;

/// The services `fleetcmd run` can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Registry,
    Dispatcher,
    Edge,
    Projector,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Dispatcher => "dispatcher",
            Self::Edge => "edge",
            Self::Projector => "projector",
        }
    }
}

/// Flags of `fleetcmd run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Which service this process runs.
    #[arg(value_enum)]
    pub service: Service,
    /// TOML configuration file (see `--dump-config` for every key).
    #[arg(long, env = "FLEETCMD_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Override one key, e.g. `--set kafka.brokers=k1:9092` (repeatable; applied last).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub dump_config: bool,
}

/// Connects with retries until it works or shutdown.
async fn connect<T, F, Fut>(
    what: &str,
    mut shutdown: watch::Receiver<bool>,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, fleetcmd_domain::ports::PortError>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => {
                tracing::info!(engine = what, "connected");
                return Ok(v);
            }
            Err(e) => {
                tracing::warn!(engine = what, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot connect yet");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => anyhow::bail!("shut down while connecting to {what}"),
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Runs one service until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = config::load(args.config.as_deref(), &env, &args.sets)?;
    if args.dump_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    let telemetry = fleetcmd_telemetry::init(&fleetcmd_telemetry::TelemetryConfig {
        service_name: format!("fleetcmd-{}", args.service.name()),
        log_json: config.log_json,
        otlp_endpoint: Some(config.otlp.endpoint.clone()),
    })?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        fleetcmd_standalone::shutdown_signal().await;
        tracing::info!("shutting down");
        shutdown_tx.send_replace(true);
    });
    let served = start(args.service, config, shutdown).await;
    telemetry.shutdown().await;
    served
}

/// Runs `service` with `config` until `shutdown` turns true.
pub async fn start(
    service: Service,
    config: ClusterConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let topic_root = TopicRoot::new(config.topic_root.clone()).context("topic_root")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut grpc = GrpcServer::new()?;
    if matches!(service, Service::Registry | Service::Dispatcher) {
        if let Some(tls) = grpc_tls(&config.grpc)? {
            grpc = grpc.with_tls(tls);
        } else if !config.grpc.addr.ip().is_loopback() && !config.grpc.allow_plaintext {
            anyhow::bail!(
                "refusing to serve the API on {} without TLS: set grpc.tls_cert and grpc.tls_key, or grpc.allow_plaintext = true",
                config.grpc.addr
            );
        }
    }
    let health_reporter = grpc.health();
    health_reporter.set_not_serving::<HealthAll>().await;
    tracing::info!(service = service.name(), "starting");
    let metrics_listener = fleetcmd_telemetry::metrics::bind(config.metrics.addr)
        .await
        .with_context(|| format!("binding the metrics endpoint on {}", config.metrics.addr))?;
    tracing::info!(addr = %metrics_listener.local_addr()?, "serving metrics");
    let mut stop_metrics = shutdown.clone();
    tokio::spawn(fleetcmd_telemetry::metrics::serve(
        metrics_listener,
        async move {
            let _ = stop_metrics.wait_for(|s| *s).await;
        },
    ));

    let nats_name = format!("fleetcmd-{}", service.name());
    let url = config.nats.url.clone();
    let bus_impl = connect("nats", shutdown.clone(), || {
        NatsBus::connect(&url, &nats_name)
    })
    .await?;
    let bus: Arc<dyn Bus> = bus_impl.clone();

    match service {
        Service::Registry => {
            let read_model = scylla(&config, shutdown.clone()).await?;
            let projection =
                ProjectionWatch::start(bus.clone(), read_model.clone(), config.shards).await?;
            let shards = ShardClient::new(bus.clone(), config.shards);
            let auth = auth(&config)?;
            let (commands, things, rollouts) =
                fleetcmd_registry::grpc(fleetcmd_registry::RegistryDeps {
                    read_model,
                    bus: bus.clone(),
                    shards,
                    projection,
                    auth,
                    arns: Default::default(),
                    // A cluster's device CA is not configured yet: the certificate calls say so.
                    ca: None,
                    device_trust: None,
                    presence: None,
                    shutdown: shutdown.clone(),
                });
            let grpc = grpc.with(commands).with(things).with(rollouts);
            spawn_readiness(health_reporter, bus_impl.clone(), None, shutdown.clone());
            Ok(grpc.bind_and_serve(config.grpc.addr, shutdown).await?)
        }
        Service::Dispatcher => {
            let log = kafka_log(&config, shutdown.clone()).await?;
            let store = scylla_store(&config, shutdown.clone()).await?;
            let read_model: Arc<dyn ReadModel> = store.clone();
            let owner_config = Arc::new(OwnerConfig {
                shards: config.shards,
                retention_secs: config.retention_secs,
                command_settings: CommandSettings {
                    deletion_wait_secs: config.deletion_wait_secs,
                },
                topic_root: topic_root.clone(),
                token_memory: Duration::from_secs(config.client_token_memory_secs),
                max_in_flight_default: config.max_in_flight.filter(|n| *n > 0),
                ..OwnerConfig::default()
            });
            let deps = OwnerDeps {
                log,
                bus: bus.clone(),
                read_model: read_model.clone(),
                snapshots: store,
                clock: clock.clone(),
                // The projector projects: the log and the read model are different engines.
                inline_projection: None,
            };
            let pool = pool::ShardTasks::new(shutdown.clone(), move |shard, stop| {
                Box::pin(fleetcmd_dispatcher::owner::run_owner(
                    deps.clone(),
                    owner_config.clone(),
                    shard,
                    stop,
                ))
            });
            let membership = kafka_membership(&config, shutdown.clone()).await?;
            let _guard = membership
                .join(
                    &format!("{}-dispatchers", config.kafka.group_prefix),
                    pool.handler(),
                )
                .await
                .context("joining the dispatcher group")?;
            let projection =
                ProjectionWatch::start(bus.clone(), read_model.clone(), config.shards).await?;
            let grpc = grpc.with(fleetcmd_dispatcher::grpc::service(
                fleetcmd_dispatcher::grpc::DispatcherDeps {
                    read_model,
                    shards: ShardClient::new(bus.clone(), config.shards),
                    projection,
                    auth: auth(&config)?,
                },
            ));
            spawn_readiness(health_reporter, bus_impl.clone(), None, shutdown.clone());
            let served = grpc.bind_and_serve(config.grpc.addr, shutdown).await;
            pool.stop_all();
            Ok(served?)
        }
        Service::Edge => {
            let edge_config = fleetcmd_edge::EdgeConfig {
                topic_root,
                instances: config.mqtt.instances,
                instance: config.mqtt.instance,
                ..fleetcmd_edge::EdgeConfig::default()
            };
            let mut mqtt = fleetcmd_adapters::mqtt::MqttClientConfig::new(
                config.mqtt.host.clone(),
                config.mqtt.port,
                config.mqtt.client_id.clone(),
            );
            mqtt.credentials = match (&config.mqtt.username, &config.mqtt.password) {
                (Some(user), Some(password)) => Some((user.clone(), password.clone())),
                (None, None) => None,
                _ => anyhow::bail!("mqtt.username and mqtt.password go together"),
            };
            let link = fleetcmd_adapters::mqtt::MqttClientLink::start(mqtt, shutdown.clone());
            // The projector writes the read model: an accepted update is answered once it
            // is readable there.
            let projection = ProjectionWatch::follow(bus.clone(), config.shards).await?;
            let deps = fleetcmd_edge::EdgeDeps {
                bus: bus.clone(),
                shards: ShardClient::new(bus.clone(), config.shards),
                clock,
                link: link.clone(),
                projection: Some(projection),
                // An external broker reports no connects: nothing is folded into it.
                presence: Default::default(),
            };
            fleetcmd_edge::run(edge_config, deps, shutdown.clone()).await?;
            let link: Arc<dyn fleetcmd_domain::ports::MqttLink> = link;
            // Readiness follows the NATS connection and the MQTT link.
            spawn_readiness(
                health_reporter,
                bus_impl.clone(),
                Some(link),
                shutdown.clone(),
            );
            Ok(grpc.bind_and_serve(config.health.addr, shutdown).await?)
        }
        Service::Projector => {
            let log = kafka_log(&config, shutdown.clone()).await?;
            let read_model = scylla(&config, shutdown.clone()).await?;
            let deps = fleetcmd_projector::ProjectorDeps {
                log,
                read_model,
                bus: bus.clone(),
                clock,
            };
            let projector_config = fleetcmd_projector::ProjectorConfig::default();
            let purger = tokio::spawn(fleetcmd_projector::run_purger(
                deps.clone(),
                projector_config.purge_interval,
                shutdown.clone(),
            ));
            let pool = pool::ShardTasks::new(shutdown.clone(), move |partition, stop| {
                Box::pin(fleetcmd_projector::run_partitions(
                    deps.clone(),
                    projector_config.clone(),
                    vec![partition],
                    stop,
                ))
            });
            let membership = kafka_membership(&config, shutdown.clone()).await?;
            let _guard = membership
                .join(
                    &format!("{}-projectors", config.kafka.group_prefix),
                    pool.handler(),
                )
                .await
                .context("joining the projector group")?;
            spawn_readiness(health_reporter, bus_impl.clone(), None, shutdown.clone());
            let served = grpc.bind_and_serve(config.health.addr, shutdown).await;
            pool.stop_all();
            purger.abort();
            Ok(served?)
        }
    }
}

/// Keeps the overall health entry in step with the engines: SERVING while the NATS
/// connection (and, for the edge, the MQTT link) is up, NOT_SERVING otherwise.
fn spawn_readiness(
    reporter: tonic_health::server::HealthReporter,
    bus: Arc<NatsBus>,
    link: Option<Arc<dyn fleetcmd_domain::ports::MqttLink>>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let ready = bus.connection_state()
                == fleetcmd_adapters::nats::ConnectionState::Connected
                && link.as_ref().is_none_or(|l| l.is_ready());
            if last != Some(ready) {
                let status = if ready {
                    ServingStatus::Serving
                } else {
                    tracing::warn!("an engine is unreachable: reporting NOT_SERVING");
                    ServingStatus::NotServing
                };
                reporter.set_service_status(HealthAll::NAME, status).await;
                last = Some(ready);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    });
}

/// The API's TLS from `grpc.tls_cert`, `grpc.tls_key` and `grpc.client_ca` (`None`: plain).
fn grpc_tls(
    grpc: &config::GrpcConfig,
) -> anyhow::Result<Option<fleetcmd_service_kit::grpc::GrpcTls>> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("{key}: reading {}", path.display()))
    };
    let (cert, key) = match (&grpc.tls_cert, &grpc.tls_key) {
        (Some(c), Some(k)) => (read("grpc.tls_cert", c)?, read("grpc.tls_key", k)?),
        (None, None) => {
            anyhow::ensure!(
                grpc.client_ca.is_none(),
                "grpc.client_ca needs grpc.tls_cert and grpc.tls_key"
            );
            return Ok(None);
        }
        _ => anyhow::bail!("grpc.tls_cert and grpc.tls_key go together"),
    };
    Ok(Some(fleetcmd_service_kit::grpc::GrpcTls {
        certificate_pem: cert,
        private_key_pem: key,
        client_ca_pem: grpc
            .client_ca
            .as_deref()
            .map(|p| read("grpc.client_ca", p))
            .transpose()?,
    }))
}

fn auth(config: &ClusterConfig) -> anyhow::Result<Auth> {
    let policy = config
        .auth
        .policy
        .as_deref()
        .map(fleetcmd_standalone::load_policy)
        .transpose()?;
    if policy.is_none()
        && !config.grpc.addr.ip().is_loopback()
        && !config.auth.allow_unauthenticated
    {
        anyhow::bail!(
            "refusing to serve the API on {} without a policy: set auth.policy, or auth.allow_unauthenticated = true",
            config.grpc.addr
        );
    }
    let auth = Auth::new(policy.map(Arc::new));
    Ok(match &config.auth.audit_log {
        Some(path) => auth.with_audit(
            fleetcmd_contracts::audit::AuditLog::to_file(path)
                .with_context(|| format!("opening the audit log {}", path.display()))?,
        ),
        None => auth,
    })
}

async fn scylla(
    config: &ClusterConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Arc<dyn ReadModel>> {
    Ok(scylla_store(config, shutdown).await?)
}

/// The ScyllaDB store: the read model, and the shard owners' snapshots.
async fn scylla_store(
    config: &ClusterConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Arc<ScyllaReadModel>> {
    let c = config.scylla.clone();
    let store = connect("scylla", shutdown, || {
        let replication = Replication::Factor(c.replication_factor);
        let sc = fleetcmd_adapters::scylla::ScyllaConfig::new(&c.nodes, &c.keyspace, replication);
        ScyllaReadModel::connect_with(sc)
    })
    .await?;
    Ok(store)
}

async fn kafka_log(
    config: &ClusterConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Arc<dyn EventLog>> {
    let c = config.kafka.clone();
    let shards = config.shards;
    let log = connect("kafka", shutdown, || {
        let mut lc = KafkaLogConfig::new(&c.brokers, &c.topic, shards);
        lc.fetch_wait_max = c
            .fetch_wait_ms
            .map_or(c.compat.default_fetch_wait(), Duration::from_millis);
        lc.compat = c.compat;
        KafkaLog::connect_with(lc)
    })
    .await?;
    Ok(log)
}

async fn kafka_membership(
    config: &ClusterConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Arc<dyn ShardMembership>> {
    let c = config.kafka.clone();
    let m = connect("kafka membership", shutdown, || async {
        KafkaMembership::with_config(KafkaMembershipConfig {
            compat: c.compat,
            ..KafkaMembershipConfig::new(&c.brokers, &c.topic)
        })
    })
    .await?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(addr: &str) -> config::GrpcConfig {
        config::GrpcConfig {
            addr: addr.parse().unwrap(),
            ..config::GrpcConfig::default()
        }
    }

    #[tokio::test]
    async fn a_public_api_without_tls_is_refused_unless_plaintext_is_allowed() {
        let config = ClusterConfig {
            grpc: grpc("0.0.0.0:0"),
            ..ClusterConfig::default()
        };
        let (_stop, shutdown) = watch::channel(false);
        let err = start(Service::Registry, config, shutdown)
            .await
            .expect_err("a public plaintext API");
        let text = format!("{err:#}");
        assert!(
            text.contains("without TLS") && text.contains("grpc.allow_plaintext"),
            "{text}"
        );
    }

    #[test]
    fn tls_files_go_together_and_are_read() {
        let only_cert = config::GrpcConfig {
            tls_cert: Some("/nonexistent/cert.pem".into()),
            ..grpc("127.0.0.1:0")
        };
        let err = grpc_tls(&only_cert).unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
        let ca_alone = config::GrpcConfig {
            client_ca: Some("/nonexistent/ca.pem".into()),
            ..grpc("127.0.0.1:0")
        };
        assert!(grpc_tls(&ca_alone).is_err());
        let missing = config::GrpcConfig {
            tls_cert: Some("/nonexistent/cert.pem".into()),
            tls_key: Some("/nonexistent/key.pem".into()),
            ..grpc("127.0.0.1:0")
        };
        let err = format!("{:#}", grpc_tls(&missing).unwrap_err());
        assert!(
            err.contains("grpc.tls_cert: reading /nonexistent/cert.pem"),
            "{err}"
        );
        assert!(grpc_tls(&grpc("127.0.0.1:0")).unwrap().is_none());
    }
}
