//! `fleetcmd device simulate`: one simulated device in the foreground, printing what it
//! sees and does.

use std::io::Write;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use fleetcmd_domain::Target;
use fleetcmd_domain::topics::TopicRoot;
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;

use super::protocol::format_name;
use super::{Behavior, DeviceEvent, DeviceEventKind, DeviceOptions, MqttVersion, Summary, run};
use fleetcmd_cli::{Output, RequiredTarget};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeviceCmd {
    /// Run a simulated device that answers command requests over MQTT, until Ctrl-C or
    /// --max-executions.
    Simulate(SimulateArgs),
}

#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub target: RequiredTarget,
    /// MQTT broker address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883", value_parser = parse_broker)]
    pub broker: (String, u16),
    /// MQTT protocol version.
    #[arg(long, value_enum, default_value = "5")]
    pub mqtt_version: MqttVersion,
    /// How to answer each request.
    #[arg(long, value_enum, default_value = "succeed")]
    pub behavior: Behavior,
    /// Wait this long before answering.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub delay_ms: u64,
    /// Exit after handling this many executions.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_executions: Option<u64>,
    /// Topic root of the device protocol.
    #[arg(long, value_name = "ROOT", default_value = "$aws")]
    pub topic_root: String,
    /// MQTT 5 session expiry: how long the broker queues requests while the device is away.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub session_expiry_secs: u64,
    #[command(flatten)]
    pub security: DeviceSecurity,
}

/// How a device proves who it is and checks the broker: TLS with the server's CA, a client
/// certificate, or a password.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct DeviceSecurity {
    /// Connect over TLS, trusting this CA for the broker's certificate (`root-ca.pem` from
    /// `fleetcmd thing cert create`, or fleetcmd's `tls/ca.pem`).
    #[arg(long = "ca", value_name = "PATH")]
    pub ca: Option<std::path::PathBuf>,
    /// The device's certificate (`NAME.cert.pem`); needs --ca and --key.
    #[arg(long, value_name = "PATH", requires_all = ["ca", "key"])]
    pub cert: Option<std::path::PathBuf>,
    /// The device's private key (`NAME.private.key`).
    #[arg(long, value_name = "PATH", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Log in with this password (from `fleetcmd thing password create`); the username is
    /// the device's identity, `things/<name>` or `clients/<id>`.
    #[arg(long, env = "FLEETCMD_DEVICE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

impl DeviceSecurity {
    /// The TLS configuration these flags describe (`None`: plain MQTT).
    pub fn tls(&self) -> anyhow::Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
        use anyhow::Context as _;
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("{flag}: reading {}", path.display()))
        };
        let ca = read("--ca", ca)?;
        let client = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((read("--cert", cert)?, read("--key", key)?)),
            _ => None,
        };
        let config = fleetcmd_identity::client_config(
            &ca,
            client.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        )
        .context("the TLS configuration")?;
        Ok(Some(std::sync::Arc::new(config)))
    }
}

/// `host:port`, `[v6]:port`.
pub fn parse_broker(text: &str) -> Result<(String, u16), String> {
    let bad = || "expected HOST:PORT (or [IPv6]:PORT)".to_string();
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty()
        || host.contains(['[', ']'])
        || (host.contains(':') && !text.starts_with('['))
    {
        return Err(bad());
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("the port must be 1–65535, got {port:?}"))?;
    Ok((host.to_string(), port))
}

impl SimulateArgs {
    pub fn to_options(&self) -> anyhow::Result<DeviceOptions> {
        let target = match (&self.target.thing, &self.target.client) {
            (Some(thing), _) => Target::thing(thing.clone())?,
            (None, Some(client)) => Target::client(client.clone())?,
            (None, None) => anyhow::bail!("give --thing NAME or --client ID"),
        };
        let mut opts = DeviceOptions::new(target, self.broker.0.clone(), self.broker.1);
        opts.mqtt_version = self.mqtt_version;
        opts.behavior = self.behavior;
        opts.delay = Duration::from_millis(self.delay_ms);
        opts.max_executions = self.max_executions;
        opts.topic_root = TopicRoot::new(self.topic_root.clone())?;
        opts.session_expiry = Duration::from_secs(self.session_expiry_secs);
        opts.tls = self.security.tls()?;
        opts.password = self.security.password.clone();
        Ok(opts)
    }
}

/// Runs the device in the foreground; every event is one line (one JSON object with
/// `--json`). Ends on Ctrl-C or after `--max-executions`.
pub async fn run_cli(cmd: DeviceCmd, output: Output, out: &mut dyn Write) -> anyhow::Result<()> {
    let DeviceCmd::Simulate(args) = cmd;
    let opts = args.to_options()?;
    let (tx, mut rx) = mpsc::channel(256);
    let device = tokio::spawn(run(opts, Some(tx), async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handler: run until max-executions instead.
            std::future::pending::<()>().await;
        }
    }));
    while let Some(event) = rx.recv().await {
        match output {
            Output::Json => {
                serde_json::to_writer(&mut *out, &event_json(&event))?;
                writeln!(out)?;
            }
            Output::Text => writeln!(out, "{}", event_line(&event))?,
        }
        out.flush()?;
    }
    let summary = device.await??;
    match output {
        Output::Json => {
            serde_json::to_writer(&mut *out, &summary_json(&summary))?;
            writeln!(out)?;
        }
        Output::Text => writeln!(out, "{}", summary_line(&summary))?,
    }
    Ok(())
}

fn payload_json(payload: &[u8]) -> (&'static str, Json) {
    match std::str::from_utf8(payload) {
        Ok(text) => ("payload", Json::String(text.to_string())),
        Err(_) => ("payload_base64", Json::String(BASE64.encode(payload))),
    }
}

/// One line of text per event.
pub fn event_line(event: &DeviceEvent) -> String {
    match &event.kind {
        DeviceEventKind::Connected { session_present } => format!(
            "connected  {}  session_present={session_present}",
            event.device
        ),
        DeviceEventKind::Subscribed { granted, refused } => {
            if *refused == 0 {
                format!("subscribed  {granted} filters")
            } else {
                format!("subscribed  {granted} filters, {refused} REFUSED by the broker")
            }
        }
        DeviceEventKind::ConnectionLost { error, retry_in } => {
            format!(
                "connection lost  {error}  (retrying in {} ms)",
                retry_in.as_millis()
            )
        }
        DeviceEventKind::Request(r) => {
            let mut line = format!(
                "request  {}  {}  {} bytes",
                r.execution_id,
                format_name(r.format),
                r.payload.len()
            );
            if let Some(ct) = &r.content_type {
                line.push_str(&format!("  content-type={ct}"));
            }
            if let Some(expiry) = r.message_expiry_secs {
                line.push_str(&format!("  expiry={expiry}s"));
            }
            if r.duplicate {
                line.push_str("  (duplicate, not answered again)");
            }
            line
        }
        DeviceEventKind::Responded {
            execution_id,
            status,
        } => format!("response  {execution_id}  {status}"),
        DeviceEventKind::Accepted { execution_id } => format!("accepted  {execution_id}"),
        DeviceEventKind::Rejected {
            execution_id,
            error,
            message,
        } => format!(
            "rejected  {execution_id}  {}{}",
            error.as_deref().unwrap_or("?"),
            message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        DeviceEventKind::ReplyTimedOut { execution_id } => {
            format!("no reply  {execution_id}  (giving up on it)")
        }
        DeviceEventKind::Canceled {
            execution_id,
            reason_code,
        } => match reason_code {
            Some(code) => format!("canceled  {execution_id}  {code}"),
            None => format!("canceled  {execution_id}"),
        },
        DeviceEventKind::Unexpected { topic } => format!("unexpected message on {topic}"),
    }
}

/// One JSON object per event: `{"event": "request", "device": ..., ...}`.
pub fn event_json(event: &DeviceEvent) -> Json {
    let mut j = match &event.kind {
        DeviceEventKind::Connected { session_present } => {
            json!({"event": "connected", "session_present": session_present})
        }
        DeviceEventKind::Subscribed { granted, refused } => {
            json!({"event": "subscribed", "granted": granted, "refused": refused})
        }
        DeviceEventKind::ConnectionLost { error, retry_in } => json!({
            "event": "connection_lost",
            "error": error,
            "retry_in_ms": u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
        }),
        DeviceEventKind::Request(r) => {
            let mut j = json!({
                "event": "request",
                "execution_id": r.execution_id,
                "format": format_name(r.format),
                "payload_bytes": r.payload.len(),
                "content_type": r.content_type,
                "message_expiry_secs": r.message_expiry_secs,
                "duplicate": r.duplicate,
            });
            let (key, value) = payload_json(&r.payload);
            j[key] = value;
            j
        }
        DeviceEventKind::Responded {
            execution_id,
            status,
        } => json!({"event": "responded", "execution_id": execution_id, "status": status}),
        DeviceEventKind::Accepted { execution_id } => {
            json!({"event": "accepted", "execution_id": execution_id})
        }
        DeviceEventKind::Rejected {
            execution_id,
            error,
            message,
        } => json!({
            "event": "rejected",
            "execution_id": execution_id,
            "error": error,
            "error_message": message,
        }),
        DeviceEventKind::ReplyTimedOut { execution_id } => {
            json!({"event": "reply_timed_out", "execution_id": execution_id})
        }
        DeviceEventKind::Canceled {
            execution_id,
            reason_code,
        } => json!({"event": "canceled", "execution_id": execution_id, "reason_code": reason_code}),
        DeviceEventKind::Unexpected { topic } => json!({"event": "unexpected", "topic": topic}),
    };
    j["device"] = Json::String(event.device.to_string());
    j
}

pub fn summary_line(s: &Summary) -> String {
    format!(
        "done  handled={}  requests={}  duplicates={}  accepted={}  rejected={}  canceled={}",
        s.handled, s.requests, s.duplicates, s.accepted, s.rejected, s.canceled
    )
}

pub fn summary_json(s: &Summary) -> Json {
    json!({
        "event": "done",
        "handled": s.handled,
        "requests": s.requests,
        "duplicates": s.duplicates,
        "accepted": s.accepted,
        "rejected": s.rejected,
        "canceled": s.canceled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestEvent;
    use bytes::Bytes;
    use clap::Parser;
    use fleetcmd_domain::TargetKind;
    use fleetcmd_domain::topics::RequestFormat;
    use std::sync::Arc;
    use std::time::Instant;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: DeviceCmd,
    }

    fn args(list: &[&str]) -> Result<SimulateArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("device").chain(list.iter().copied())).map(|c| match c
            .cmd
        {
            DeviceCmd::Simulate(a) => a,
        })
    }

    #[test]
    fn defaults_and_flags() {
        let a = args(&["simulate", "--thing", "lamp"]).unwrap();
        assert_eq!(a.broker, ("127.0.0.1".to_string(), 1883));
        assert_eq!(a.mqtt_version, MqttVersion::V5);
        assert_eq!(a.behavior, Behavior::Succeed);
        let opts = a.to_options().unwrap();
        assert_eq!(opts.target.kind, TargetKind::Thing);
        assert_eq!(opts.client_id(), "lamp");
        assert_eq!(opts.topic_root.as_str(), "$aws");
        assert_eq!(opts.max_executions, None);

        let a = args(&[
            "simulate",
            "--client",
            "dev-9",
            "--broker",
            "broker.local:8883",
            "--mqtt-version",
            "3",
            "--behavior",
            "progress",
            "--delay-ms",
            "250",
            "--max-executions",
            "3",
            "--topic-root",
            "fleet/prod",
        ])
        .unwrap();
        let opts = a.to_options().unwrap();
        assert_eq!(opts.target.kind, TargetKind::Client);
        assert_eq!(opts.client_id(), "dev-9");
        assert_eq!(
            (opts.broker_host.as_str(), opts.broker_port),
            ("broker.local", 8883)
        );
        assert_eq!(opts.mqtt_version, MqttVersion::V3);
        assert_eq!(opts.behavior, Behavior::Progress);
        assert_eq!(opts.delay, Duration::from_millis(250));
        assert_eq!(opts.max_executions, Some(3));
        assert_eq!(opts.topic_root.as_str(), "fleet/prod");
        assert_eq!(
            args(&["simulate", "--thing", "a", "--mqtt-version", "3.1.1"])
                .unwrap()
                .mqtt_version,
            MqttVersion::V3
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(args(&["simulate"]).is_err(), "a target is required");
        assert!(args(&["simulate", "--thing", "a", "--client", "b"]).is_err());
        assert!(args(&["simulate", "--thing", "a", "--mqtt-version", "4.5"]).is_err());
        assert!(args(&["simulate", "--thing", "a", "--behavior", "explode"]).is_err());
        assert!(args(&["simulate", "--thing", "a", "--max-executions", "0"]).is_err());
        assert!(args(&["simulate", "--thing", "a", "--broker", "nohost"]).is_err());
        let err = args(&["simulate", "--thing", "a/b"])
            .unwrap()
            .to_options()
            .unwrap_err();
        assert!(err.to_string().contains("target.id"), "{err}");
        let err = args(&["simulate", "--thing", "a", "--topic-root", "x/+"])
            .unwrap()
            .to_options()
            .unwrap_err();
        assert!(err.to_string().contains("topic_root"), "{err}");
    }

    #[test]
    fn broker_addresses() {
        assert_eq!(
            parse_broker("localhost:1883").unwrap(),
            ("localhost".into(), 1883)
        );
        assert_eq!(parse_broker("[::1]:1883").unwrap(), ("::1".into(), 1883));
        for bad in [
            "localhost",
            ":1883",
            "h:0",
            "h:70000",
            "h:x",
            "::1:1883",
            "[::1]",
        ] {
            assert!(parse_broker(bad).is_err(), "{bad}");
        }
    }

    fn event(kind: DeviceEventKind) -> DeviceEvent {
        DeviceEvent {
            at: Instant::now(),
            device: Arc::from("lamp"),
            kind,
        }
    }

    #[test]
    fn request_lines_show_format_size_and_mqtt5_properties() {
        let e = event(DeviceEventKind::Request(RequestEvent {
            execution_id: "e-1".into(),
            format: RequestFormat::Json,
            payload: Bytes::from_static(b"{\"op\":1}"),
            content_type: Some("application/json".into()),
            message_expiry_secs: Some(9),
            duplicate: false,
        }));
        assert_eq!(
            event_line(&e),
            "request  e-1  json  8 bytes  content-type=application/json  expiry=9s"
        );
        let j = event_json(&e);
        assert_eq!(j["event"], "request");
        assert_eq!(j["device"], "lamp");
        assert_eq!(j["payload_bytes"], 8);
        assert_eq!(j["payload"], "{\"op\":1}");
        assert_eq!(j["message_expiry_secs"], 9);

        let raw = event(DeviceEventKind::Request(RequestEvent {
            execution_id: "e-2".into(),
            format: RequestFormat::Raw,
            payload: Bytes::from_static(&[0xff]),
            content_type: None,
            message_expiry_secs: None,
            duplicate: true,
        }));
        assert_eq!(
            event_line(&raw),
            "request  e-2  raw  1 bytes  (duplicate, not answered again)"
        );
        assert_eq!(event_json(&raw)["payload_base64"], "/w==");
    }

    #[test]
    fn reply_and_cancel_lines() {
        assert_eq!(
            event_line(&event(DeviceEventKind::Rejected {
                execution_id: "e".into(),
                error: Some("TerminalStateReached".into()),
                message: Some("already SUCCEEDED".into()),
            })),
            "rejected  e  TerminalStateReached: already SUCCEEDED"
        );
        assert_eq!(
            event_line(&event(DeviceEventKind::Canceled {
                execution_id: "e".into(),
                reason_code: Some("$CANCELED".into()),
            })),
            "canceled  e  $CANCELED"
        );
        assert_eq!(
            event_line(&event(DeviceEventKind::Responded {
                execution_id: "e".into(),
                status: "SUCCEEDED"
            })),
            "response  e  SUCCEEDED"
        );
        assert_eq!(
            summary_line(&Summary {
                handled: 2,
                requests: 3,
                duplicates: 1,
                accepted: 2,
                ..Default::default()
            }),
            "done  handled=2  requests=3  duplicates=1  accepted=2  rejected=0  canceled=0"
        );
    }
}
