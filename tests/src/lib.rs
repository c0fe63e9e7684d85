//! Test harness for end-to-end scenarios: a real `fleetcmd serve` (started in this process
//! on ephemeral ports, over real sockets), gRPC clients, and raw MQTT devices.
//!
//! - [`Env`]: a running server with one client of each API, the "given" of every scenario;
//! - [`api`]: request builders, error assertions, paging, Watch streams and a one-shot
//!   device for the gRPC API tests;
//! - [`device`]: raw MQTT 3.1.1 and 5 devices; [`scenario`]: status-event observers and the
//!   assertions of the device scenarios;
//! - [`wait`]: every wait is bounded, so a hang fails naming what did not happen.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use fleetcmd_contracts::pb;
use fleetcmd_contracts::pb::command_dispatcher_client::CommandDispatcherClient;
use fleetcmd_contracts::pb::command_registry_client::CommandRegistryClient;
use fleetcmd_contracts::pb::thing_registry_client::ThingRegistryClient;
pub use fleetcmd_standalone::ServeArgs;
use fleetcmd_standalone::{Running, start};
use tonic::transport::{Channel, Endpoint};

/// A registry client.
pub type Registry = CommandRegistryClient<Channel>;
/// A dispatcher client.
pub type Dispatcher = CommandDispatcherClient<Channel>;
/// A thing registry client.
pub type Things = ThingRegistryClient<Channel>;
/// A rollouts client.
pub type Rollouts = fleetcmd_contracts::pb::rollouts_client::RolloutsClient<Channel>;

pub mod api;
pub mod device;
pub mod scenario;
pub mod wait;

pub use wait::{WAIT, eventually, within};

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty data directory under the system temp dir.
pub fn temp_data_dir(name: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("fleetcmd-e2e-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Serve arguments for a test: ephemeral loopback ports, a fresh data directory.
pub fn test_args(name: &str) -> ServeArgs {
    ServeArgs {
        grpc_addr: "127.0.0.1:0".parse().expect("valid address"),
        mqtt_addr: "127.0.0.1:0".parse().expect("valid address"),
        mqtt_tls_addr: "127.0.0.1:0".parse().expect("valid address"),
        device_auth: None,
        mqtt_event_readers: Vec::new(),
        data_dir: temp_data_dir(name),
        policy: None,
        allow_unauthenticated: false,
        grpc_tls: false,
        allow_plaintext_grpc: false,
        audit_log: None,
        topic_root: "$aws".into(),
        shards: 4,
        deletion_wait_secs: 43_200,
        client_token_memory_secs: 900,
        retention_secs: 183 * 24 * 3600,
        max_in_flight: None,
        log_json: false,
        metrics_addr: "127.0.0.1:0".parse().expect("valid address"),
        otlp_endpoint: None,
        tls_dir: None,
        tls_sans: Vec::new(),
    }
}

/// The token of the `admin` entry that [`with_admin`] adds to a policy.
pub const ADMIN_TOKEN: &str = "admin-secret-0123456789abcdef";

/// `policy` (TOML) and an `admin` entry for [`ADMIN_TOKEN`] allowed every action: the caller
/// that sets a policed scenario up.
pub fn with_admin(policy: &str) -> String {
    format!(
        r#"{policy}
[[tokens]]
name = "admin"
token = "{ADMIN_TOKEN}"
allow = [{{ actions = ["*"] }}]
"#
    )
}

/// [`test_args`] with a policy file of `policy` (TOML), written into the data directory so
/// that it goes when the server's data does.
pub fn policed_args(name: &str, policy: &str) -> anyhow::Result<ServeArgs> {
    let args = test_args(name);
    std::fs::create_dir_all(&args.data_dir)?;
    let path = args.data_dir.join("policy.toml");
    std::fs::write(&path, policy)?;
    Ok(ServeArgs {
        policy: Some(path),
        ..args
    })
}

/// Connects to `endpoint` with the limits of every test channel: calls fail after [`WAIT`].
async fn connect_bounded(what: &str, endpoint: Endpoint) -> anyhow::Result<Channel> {
    let endpoint = endpoint
        .tcp_nodelay(true)
        .connect_timeout(WAIT)
        .timeout(WAIT);
    within(format!("connecting to {what}"), endpoint.connect())
        .await?
        .map_err(Into::into)
}

/// A running server and clients for it.
pub struct Server {
    pub running: Running,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `fleetcmd serve` with default test arguments.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        Self::start_with(test_args(name)).await
    }

    pub async fn start_with(args: ServeArgs) -> anyhow::Result<Self> {
        let data_dir = args.data_dir.clone();
        let running = within("fleetcmd serve to start", start(args)).await??;
        Ok(Self { running, data_dir })
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.running.grpc_addr)
    }

    pub fn mqtt_port(&self) -> u16 {
        self.running.mqtt_addr.port()
    }

    /// The port of the MQTT-over-TLS listener.
    pub fn mqtt_tls_port(&self) -> u16 {
        self.running.mqtt_tls_addr.port()
    }

    /// A channel whose calls fail after [`WAIT`] instead of hanging (the limit covers a call
    /// up to its response headers: a Watch stream, once open, is not cut).
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        connect_bounded("the gRPC API", Channel::from_shared(self.grpc_endpoint())?).await
    }

    /// A channel over TLS that trusts the server's CA (`<data-dir>/tls/ca.pem`), presenting
    /// `identity` (certificate and key PEM) when given; bounded like [`Self::channel`].
    pub async fn tls_channel(&self, identity: Option<(&str, &str)>) -> anyhow::Result<Channel> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let ca = std::fs::read_to_string(self.data_dir.join("tls").join("ca.pem"))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let endpoint = Channel::from_shared(format!("https://{}", self.running.grpc_addr))?;
        connect_bounded("the gRPC API over TLS", endpoint.tls_config(tls)?).await
    }

    pub async fn registry(&self) -> anyhow::Result<Registry> {
        Ok(Registry::new(self.channel().await?))
    }

    pub async fn dispatcher(&self) -> anyhow::Result<Dispatcher> {
        Ok(Dispatcher::new(self.channel().await?))
    }

    pub async fn things(&self) -> anyhow::Result<Things> {
        Ok(Things::new(self.channel().await?))
    }

    pub async fn rollouts(&self) -> anyhow::Result<Rollouts> {
        Ok(Rollouts::new(self.channel().await?))
    }

    /// Stops the server; its data directory stays for a restart.
    pub async fn stop(self) -> anyhow::Result<PathBuf> {
        within("the server to stop", self.running.stop()).await??;
        Ok(self.data_dir)
    }

    /// Stops the server and removes its data directory (the end of a scenario).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let dir = self.stop().await?;
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// A running server and one client of each API: the "given" of every scenario.
pub struct Env {
    pub server: Server,
    pub registry: Registry,
    pub dispatcher: Dispatcher,
}

impl Env {
    /// Starts `fleetcmd serve` with default test arguments.
    pub async fn start(name: &str) -> anyhow::Result<Self> {
        Self::with(Server::start(name).await?).await
    }

    /// Starts `fleetcmd serve` with `args`.
    pub async fn start_with(args: ServeArgs) -> anyhow::Result<Self> {
        Self::with(Server::start_with(args).await?).await
    }

    /// Clients of a running server.
    pub async fn with(server: Server) -> anyhow::Result<Self> {
        let registry = server.registry().await?;
        let dispatcher = server.dispatcher().await?;
        Ok(Self {
            server,
            registry,
            dispatcher,
        })
    }

    /// The server's MQTT port.
    pub fn port(&self) -> u16 {
        self.server.mqtt_port()
    }

    /// Creates a command.
    pub async fn create(&mut self, request: pb::CreateCommandRequest) -> anyhow::Result<()> {
        let id = request.command_id.clone();
        self.registry
            .create_command(request)
            .await
            .with_context(|| format!("creating command {id}"))?;
        Ok(())
    }

    /// Creates static JSON commands `{}` with these ids.
    pub async fn with_commands(mut self, ids: &[&str]) -> anyhow::Result<Self> {
        for id in ids {
            self.create(static_json_command(id, "{}")).await?;
        }
        Ok(self)
    }

    /// Starts an execution and returns its id.
    pub async fn start_execution(
        &mut self,
        request: pb::StartCommandExecutionRequest,
    ) -> anyhow::Result<String> {
        let r = self
            .dispatcher
            .start_command_execution(request)
            .await
            .context("StartCommandExecution")?;
        Ok(r.into_inner().execution_id)
    }

    /// Reads an execution.
    pub async fn get(
        &mut self,
        execution_id: &str,
        include_result: bool,
    ) -> anyhow::Result<pb::CommandExecution> {
        let r = self
            .registry
            .get_command_execution(pb::GetCommandExecutionRequest {
                execution_id: execution_id.into(),
                target: None,
                include_result,
            })
            .await
            .with_context(|| format!("GetCommandExecution {execution_id}"))?;
        Ok(r.into_inner())
    }

    /// Stops the server and removes its data directory.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.server.shutdown().await
    }
}

/// A thing target.
pub fn thing(id: &str) -> pb::Target {
    pb::Target {
        kind: pb::TargetKind::Thing as i32,
        id: id.into(),
    }
}

/// A client target.
pub fn client(id: &str) -> pb::Target {
    pb::Target {
        kind: pb::TargetKind::Client as i32,
        id: id.into(),
    }
}

/// A CreateCommandRequest with a static JSON payload.
pub fn static_json_command(id: &str, payload: &str) -> pb::CreateCommandRequest {
    pb::CreateCommandRequest {
        command_id: id.into(),
        payload: Some(pb::Payload {
            content: payload.as_bytes().to_vec(),
            content_type: "application/json".into(),
        }),
        ..Default::default()
    }
}

/// A static command with any content type.
pub fn static_command(id: &str, content: &[u8], content_type: &str) -> pb::CreateCommandRequest {
    pb::CreateCommandRequest {
        command_id: id.into(),
        payload: Some(pb::Payload {
            content: content.to_vec(),
            content_type: content_type.into(),
        }),
        ..Default::default()
    }
}

/// A command with a payload template rendered to `format`.
pub fn template_command(
    id: &str,
    template: &str,
    format: pb::OutputFormat,
    parameters: Vec<pb::CommandParameter>,
) -> pb::CreateCommandRequest {
    pb::CreateCommandRequest {
        command_id: id.into(),
        payload_template: template.into(),
        preprocessor: Some(pb::Preprocessor {
            aws_json_substitution: Some(pb::AwsJsonSubstitution {
                output_format: format as i32,
            }),
        }),
        mandatory_parameters: parameters,
        ..Default::default()
    }
}

/// A template parameter of `kind`, optionally with a default value.
pub fn parameter(
    name: &str,
    kind: pb::ParameterType,
    default: Option<pb::parameter_value::Value>,
) -> pb::CommandParameter {
    pb::CommandParameter {
        name: name.into(),
        r#type: kind as i32,
        default_value: default.map(|v| pb::ParameterValue { value: Some(v) }),
        ..Default::default()
    }
}

/// A parameter value.
pub fn value(v: pb::parameter_value::Value) -> pb::ParameterValue {
    pb::ParameterValue { value: Some(v) }
}

/// Milliseconds since the epoch of a protobuf timestamp (`None` when unset).
pub fn millis(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|ts| ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000)
}
