//! Test harness for end-to-end scenarios: a real `fleetcmd serve` (started in this process
//! on ephemeral ports, over real sockets), gRPC clients, and raw MQTT devices.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use fleetcmd::serve::{Running, ServeArgs, start};
use fleetcmd_contracts::pb;
use fleetcmd_contracts::pb::command_dispatcher_client::CommandDispatcherClient;
use fleetcmd_contracts::pb::command_registry_client::CommandRegistryClient;
use tonic::transport::Channel;

pub mod api;
pub mod device;

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
        data_dir: temp_data_dir(name),
        policy: None,
        allow_unauthenticated: false,
        topic_root: "$aws".into(),
        shards: 4,
        deletion_wait_secs: 43_200,
        client_token_memory_secs: 900,
        retention_secs: 183 * 24 * 3600,
        log_json: false,
        metrics_addr: "127.0.0.1:0".parse().expect("valid address"),
        otlp_endpoint: None,
    }
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
        let running = start(args).await?;
        Ok(Self { running, data_dir })
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.running.grpc_addr)
    }

    pub fn mqtt_port(&self) -> u16 {
        self.running.mqtt_addr.port()
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.grpc_endpoint())?
            .tcp_nodelay(true)
            .connect()
            .await?)
    }

    pub async fn registry(&self) -> anyhow::Result<CommandRegistryClient<Channel>> {
        Ok(CommandRegistryClient::new(self.channel().await?))
    }

    pub async fn dispatcher(&self) -> anyhow::Result<CommandDispatcherClient<Channel>> {
        Ok(CommandDispatcherClient::new(self.channel().await?))
    }

    /// Stops the server; its data directory stays for a restart.
    pub async fn stop(self) -> anyhow::Result<PathBuf> {
        self.running.stop().await?;
        Ok(self.data_dir)
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

impl Server {
    /// Stops the server and removes its data directory (the end of a scenario).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let dir = self.stop().await?;
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
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
