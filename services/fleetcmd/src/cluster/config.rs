//! Configuration of the cluster processes (`fleetcmd run <service>`), layered:
//! built-in defaults → a TOML file (`--config`) → environment → flags (`--set key=value` and
//! the named flags). Every key `section.key` can be set from the environment as
//! `FLEETCMD_SECTION_KEY` (e.g. `kafka.brokers` → `FLEETCMD_KAFKA_BROKERS`; top-level keys
//! as `FLEETCMD_<KEY>`); lists are comma-separated. `--dump-config` prints the result.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use fleetcmd_adapters::kafka::KafkaCompat;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Number of shards = event-log partitions; fixed for the life of a deployment.
    pub shards: u32,
    /// Topic root of the device protocol.
    pub topic_root: String,
    /// How long execution records are kept.
    pub retention_secs: u64,
    /// Wait before a command that is not (long) deprecated is deleted.
    pub deletion_wait_secs: u64,
    /// How long a client token stays in a dispatcher's memory after its start; retries with
    /// older tokens are answered from the read model.
    pub client_token_memory_secs: u64,
    /// The most executions of a target with its device at once when its thing sets no
    /// `max_in_flight` (unset: no limit, as AWS).
    pub max_in_flight: Option<u32>,
    /// Log as JSON lines (with `trace_id` and `span_id` while a traced span is active).
    pub log_json: bool,
    pub grpc: GrpcConfig,
    pub health: HealthConfig,
    pub metrics: MetricsConfig,
    pub otlp: OtlpConfig,
    pub auth: AuthConfig,
    pub nats: NatsConfig,
    pub kafka: KafkaConfig,
    pub scylla: ScyllaConfig,
    pub mqtt: MqttConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Where the registry or dispatcher API listens (gRPC health is served there too).
    pub addr: SocketAddr,
    /// Serve the API over TLS with this certificate (PEM chain) and key; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// With TLS: the CA whose client certificates identify callers (the policy's
    /// `certificate_subject`), e.g. the device CA.
    pub client_ca: Option<PathBuf>,
    /// Allow a non-loopback API address without TLS (tokens and payloads in clear).
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Where the edge and the projector serve gRPC health (they have no API port).
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where Prometheus metrics are served (`GET /metrics`); port 0 picks a free one.
    pub addr: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC endpoint of a trace collector (e.g. `http://otel-collector:4317`); empty:
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else traces are not exported.
    pub endpoint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Policy file (TOML) with bearer tokens and grants; empty: no authentication.
    pub policy: Option<PathBuf>,
    /// Allow a non-loopback API address without a policy.
    pub allow_unauthenticated: bool,
    /// Append the audit trail (one JSON line per mutating call) to this file, besides the log.
    pub audit_log: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// The event-log topic (its partition count equals `shards`).
    pub topic: String,
    /// Consumer groups are `<group_prefix>-dispatchers` and `<group_prefix>-projectors`.
    pub group_prefix: String,
    /// `fetch.wait.max.ms` of the log readers (1–10000): how long the broker may hold a
    /// fetch that found nothing. Kafka answers a held fetch as soon as records arrive, so a
    /// long wait costs nothing there; brokers that hold every fetch this long (tansu) trade
    /// the readers' wake-up latency against their CPU. Unset: the compat mode's default
    /// (`KafkaCompat::default_fetch_wait`: 100 ms for Apache Kafka, 2 ms for tansu).
    pub fetch_wait_ms: Option<u64>,
    /// Workarounds for a broker that is not Apache Kafka: `none` (the default: Apache Kafka)
    /// or `tansu` (the tansu 0.6 stand-in of the local scripts: assignment checks against
    /// its stale SyncGroup answers, a takeover grace, fetches restarted inside record
    /// batches).
    pub compat: KafkaCompat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScyllaConfig {
    /// Contact points (`host:port`).
    pub nodes: Vec<String>,
    pub keyspace: String,
    pub replication_factor: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// The devices' broker.
    pub host: String,
    pub port: u16,
    /// This edge instance's MQTT client id (unique per instance; the session is persistent).
    pub client_id: String,
    /// Device updates are split across edge instances by target hash: this instance takes
    /// targets with `hash % instances == instance`.
    pub instances: u32,
    pub instance: u32,
    /// The edge's own login on the broker's private listener (`FLEETCMD_MQTT_USERNAME`,
    /// `FLEETCMD_MQTT_PASSWORD`); both or neither.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            shards: 64,
            topic_root: "$aws".into(),
            max_in_flight: None,
            retention_secs: fleetcmd_domain::limits::RETENTION_DEFAULT_SECS,
            deletion_wait_secs: fleetcmd_domain::limits::DELETION_WAIT_DEFAULT_SECS,
            client_token_memory_secs: 900,
            log_json: false,
            grpc: GrpcConfig::default(),
            health: HealthConfig::default(),
            metrics: MetricsConfig::default(),
            otlp: OtlpConfig::default(),
            auth: AuthConfig::default(),
            nats: NatsConfig::default(),
            kafka: KafkaConfig::default(),
            scylla: ScyllaConfig::default(),
            mqtt: MqttConfig::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            allow_plaintext: false,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 50061)),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "fleetcmd.events".into(),
            group_prefix: "fleetcmd".into(),
            fetch_wait_ms: None,
            compat: KafkaCompat::None,
        }
    }
}

impl Default for ScyllaConfig {
    fn default() -> Self {
        Self {
            nodes: vec!["127.0.0.1:9042".into()],
            keyspace: "fleetcmd".into(),
            replication_factor: 1,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "fleetcmd-edge-0".into(),
            instances: 1,
            instance: 0,
            username: None,
            password: None,
        }
    }
}

/// Builds the effective configuration from the layers. `env` is the process environment
/// (passed in for tests); `sets` are `key=value` overrides from flags, applied last.
pub fn load(
    file: Option<&std::path::Path>,
    env: &[(String, String)],
    sets: &[String],
) -> anyhow::Result<ClusterConfig> {
    let mut value = toml::Value::try_from(ClusterConfig::default()).context("encoding defaults")?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let overlay: toml::Value = toml::from_str(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        merge(&mut value, overlay);
        // Reject unknown keys in the file with its own name in the message.
        toml::from_str::<ClusterConfig>(&text)
            .with_context(|| format!("config file {}", path.display()))?;
    }
    let defaults = value.clone();
    for (key, leaf) in leaves(&defaults) {
        let var = format!("FLEETCMD_{}", key.replace('.', "_").to_uppercase());
        if let Some((_, raw)) = env.iter().find(|(k, _)| *k == var) {
            let parsed =
                parse_like(&leaf, raw).with_context(|| format!("environment variable {var}"))?;
            set(&mut value, &key, parsed);
        }
    }
    for s in sets {
        let (key, raw) = s
            .split_once('=')
            .with_context(|| format!("--set {s:?}: expected key=value"))?;
        let key = key.trim();
        let Some(leaf) = get(&defaults, key) else {
            bail!("--set {key}: unknown key (see --dump-config for every key)");
        };
        let parsed = parse_like(leaf, raw.trim()).with_context(|| format!("--set {key}"))?;
        set(&mut value, key, parsed);
    }
    normalize_choices(&mut value)?;
    let config: ClusterConfig = value.try_into().context("configuration")?;
    config.validate()?;
    Ok(config)
}

impl ClusterConfig {
    /// Checks values serde cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=1024).contains(&self.shards) {
            bail!("shards must be between 1 and 1024, got {}", self.shards);
        }
        fleetcmd_domain::topics::TopicRoot::new(self.topic_root.clone()).context("topic_root")?;
        if self.retention_secs < 60 {
            bail!(
                "retention_secs must be at least 60, got {}",
                self.retention_secs
            );
        }
        if self.nats.url.is_empty() {
            bail!("nats.url must not be empty");
        }
        if self.kafka.brokers.is_empty()
            || self.kafka.topic.is_empty()
            || self.kafka.group_prefix.is_empty()
        {
            bail!("kafka.brokers, kafka.topic and kafka.group_prefix must not be empty");
        }
        if let Some(ms) = self.kafka.fetch_wait_ms
            && !(1..=10_000).contains(&ms)
        {
            bail!("kafka.fetch_wait_ms must be between 1 and 10000, got {ms}");
        }
        if self.scylla.nodes.is_empty() || self.scylla.keyspace.is_empty() {
            bail!("scylla.nodes and scylla.keyspace must not be empty");
        }
        if !self
            .scylla
            .keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!(
                "scylla.keyspace must be letters, digits and underscores, got {:?}",
                self.scylla.keyspace
            );
        }
        if self.scylla.replication_factor == 0 {
            bail!("scylla.replication_factor must be at least 1");
        }
        if self.mqtt.host.is_empty() || self.mqtt.port == 0 || self.mqtt.client_id.is_empty() {
            bail!("mqtt.host, mqtt.port and mqtt.client_id must be set");
        }
        if self.mqtt.instances == 0 || self.mqtt.instance >= self.mqtt.instances {
            bail!(
                "mqtt.instance must be below mqtt.instances (got instance {} of {})",
                self.mqtt.instance,
                self.mqtt.instances
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// Keys whose value is one of a few names (`kafka.compat`): parsed here (in any case) so
/// that a bad value is reported with its key, and written back as the canonical name.
fn normalize_choices(value: &mut toml::Value) -> anyhow::Result<()> {
    fn canonical<T: std::str::FromStr + std::fmt::Display>(
        value: &toml::Value,
        key: &str,
    ) -> anyhow::Result<Option<String>>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let Some(raw) = get(value, key) else {
            return Ok(None);
        };
        let Some(text) = raw.as_str() else {
            bail!("{key}: expected a string, got {raw}");
        };
        let parsed: T = text.parse().with_context(|| key.to_owned())?;
        Ok(Some(parsed.to_string()))
    }
    if let Some(name) = canonical::<KafkaCompat>(value, "kafka.compat")? {
        set(value, "kafka.compat", toml::Value::String(name));
    }
    Ok(())
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Every leaf key of the defaults (`section.key`), with its default value.
fn leaves(value: &toml::Value) -> Vec<(String, toml::Value)> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    // Optional keys (absent from the defaults) that may still be set.
    out.push(("auth.policy".into(), toml::Value::String(String::new())));
    out
}

fn get<'a>(value: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    if key == "auth.policy" {
        static EMPTY: std::sync::OnceLock<toml::Value> = std::sync::OnceLock::new();
        return Some(EMPTY.get_or_init(|| toml::Value::String(String::new())));
    }
    key.split('.')
        .try_fold(value, |v, k| v.get(k))
        .filter(|v| !v.is_table())
}

fn set(value: &mut toml::Value, key: &str, new: toml::Value) {
    let mut cur = value;
    let parts: Vec<&str> = key.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        let toml::Value::Table(t) = cur else { return };
        cur = t
            .entry((*p).to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    if let toml::Value::Table(t) = cur {
        t.insert(parts[parts.len() - 1].to_string(), new);
    }
}

/// Parses `raw` as the same type as `like`.
fn parse_like(like: &toml::Value, raw: &str) -> anyhow::Result<toml::Value> {
    Ok(match like {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.parse()
                .with_context(|| format!("expected an integer, got {raw:?}"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            raw.parse()
                .with_context(|| format!("expected true or false, got {raw:?}"))?,
        ),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.into()))
                .collect(),
        ),
        other => bail!("cannot set a {} from text", other.type_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("fleetcmd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "shards = 8\n[kafka]\nbrokers = \"k1:9092\"\ntopic = \"t\"\n",
        )
        .unwrap();
        let c = load(
            Some(&file),
            &env(&[
                ("FLEETCMD_KAFKA_BROKERS", "k2:9092"),
                ("FLEETCMD_SCYLLA_NODES", "a:9042, b:9042"),
            ]),
            &["kafka.topic=events".into(), "mqtt.port=1884".into()],
        )
        .unwrap();
        assert_eq!(c.shards, 8, "file over default");
        assert_eq!(c.kafka.brokers, "k2:9092", "env over file");
        assert_eq!(c.kafka.topic, "events", "flag over file");
        assert_eq!(
            c.scylla.nodes,
            vec!["a:9042".to_string(), "b:9042".to_string()]
        );
        assert_eq!(c.mqtt.port, 1884);
        assert_eq!(c.nats.url, NatsConfig::default().url, "untouched default");
        assert_eq!(c.metrics.addr, SocketAddr::from(([127, 0, 0, 1], 9464)));
        let c = load(
            None,
            &env(&[
                ("FLEETCMD_METRICS_ADDR", "0.0.0.0:9464"),
                ("FLEETCMD_OTLP_ENDPOINT", "http://collector:4317"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.metrics.addr, SocketAddr::from(([0, 0, 0, 0], 9464)));
        assert_eq!(c.otlp.endpoint, "http://collector:4317");
    }

    #[test]
    fn bad_input_is_named() {
        let e = load(None, &env(&[("FLEETCMD_SHARDS", "many")]), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("FLEETCMD_SHARDS"), "{e:#}");
        let e = load(None, &[], &["nope.key=1".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("unknown key"), "{e:#}");
        let e = load(None, &[], &["shards=0".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("between 1 and 1024"), "{e:#}");
        let e = load(None, &[], &["mqtt.instance=2".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("mqtt.instance"), "{e:#}");
        let e = load(None, &[], &["kafka.fetch_wait_ms=0".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("kafka.fetch_wait_ms"), "{e:#}");
        let dir = std::env::temp_dir().join(format!("fleetcmd-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "[kafka]\nbrokerz = \"x\"\n").unwrap();
        let e = load(Some(&file), &[], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("brokerz"), "{e:#}");
    }

    #[test]
    fn compat_settings_default_to_the_real_engines_and_are_layered() {
        let c = load(None, &[], &[]).unwrap();
        assert_eq!(c.kafka.compat, KafkaCompat::None, "Apache Kafka by default");
        let dumped = c.to_toml().unwrap();
        assert!(dumped.contains("compat = \"none\""), "{dumped}");
        let c = load(None, &env(&[("FLEETCMD_KAFKA_COMPAT", "Tansu")]), &[]).unwrap();
        assert_eq!(c.kafka.compat, KafkaCompat::Tansu, "names in any case");
        let c = load(
            None,
            &env(&[("FLEETCMD_KAFKA_COMPAT", "tansu")]),
            &["kafka.compat=none".into()],
        )
        .unwrap();
        assert_eq!(c.kafka.compat, KafkaCompat::None, "flag over env");
        let e = load(None, &[], &["kafka.compat=kafka".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("kafka.compat"), "{e:#}");
    }

    #[test]
    fn policy_path_and_dump_round_trip() {
        let c = load(
            None,
            &env(&[("FLEETCMD_AUTH_POLICY", "/etc/fleetcmd/policy.toml")]),
            &[],
        )
        .unwrap();
        assert_eq!(
            c.auth.policy,
            Some(PathBuf::from("/etc/fleetcmd/policy.toml"))
        );
        let dumped = c.to_toml().unwrap();
        let back: ClusterConfig = toml::from_str(&dumped).unwrap();
        assert_eq!(back, c);
    }
}
