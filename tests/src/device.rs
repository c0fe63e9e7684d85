//! Raw MQTT devices for scenarios (MQTT 3.1.1 and 5), built on rumqttc.
//!
//! A [`Device`] connects with a client id, subscribes (QoS 1, returning only once the SUBACK
//! granted every filter), publishes QoS 1 (returning once the broker's PUBACK arrived), and
//! collects every publish it receives: topic, payload and, for MQTT 5, the content type and
//! the message-expiry interval. Waiting is event-driven: [`Device::expect`] awaits the next
//! matching message under a timeout and fails with a message that lists what did arrive.
//! Messages that do not match are kept, in arrival order, for later `expect`s.
//!
//! [`Topics`] builds the device-protocol topics of one target (`docs/device-protocol.md`, Topics).

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::wait::WAIT;

/// How long a device waits for the broker's CONNACK, SUBACK or PUBACK.
pub const ACK_TIMEOUT: Duration = WAIT;
/// The default for `expect`: scenarios wait on events, never on the clock, so this only
/// bounds how long a broken scenario takes to fail.
pub const EXPECT_TIMEOUT: Duration = WAIT;

/// The MQTT protocol version a device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// How a device connects.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub client_id: String,
    pub version: Version,
    /// MQTT 5 clean start / MQTT 3.1.1 clean session. False keeps a persistent session.
    pub clean_start: bool,
    /// MQTT 5 session expiry after disconnect (needed for a persistent session in MQTT 5).
    pub session_expiry_secs: Option<u32>,
    /// Connect over TLS with this configuration (the server's CA and, for a certificate
    /// login, the device's certificate).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// Username and password of a password login.
    pub login: Option<(String, String)>,
}

impl DeviceOptions {
    pub fn v5(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            version: Version::V5,
            clean_start: true,
            session_expiry_secs: None,
            tls: None,
            login: None,
        }
    }

    pub fn v311(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            version: Version::V311,
            clean_start: true,
            session_expiry_secs: None,
            tls: None,
            login: None,
        }
    }

    /// Over TLS with `config`.
    pub fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// With a password login.
    pub fn login(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.login = Some((username.into(), password.into()));
        self
    }

    /// A persistent session that survives a disconnect for `expiry_secs`.
    pub fn persistent(mut self, expiry_secs: u32) -> Self {
        self.clean_start = false;
        self.session_expiry_secs = Some(expiry_secs);
        self
    }
}

/// One publish a device received.
#[derive(Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    /// MQTT 5 content-type property (always `None` for MQTT 3.1.1).
    pub content_type: Option<String>,
    /// MQTT 5 message-expiry interval in seconds (always `None` for MQTT 3.1.1).
    pub message_expiry_secs: Option<u32>,
    /// MQTT 5 user properties, e.g. `traceparent` (always empty for MQTT 3.1.1).
    pub user_properties: Vec<(String, String)>,
}

impl Message {
    /// The payload as JSON.
    pub fn json(&self) -> anyhow::Result<Json> {
        serde_json::from_slice(&self.payload).with_context(|| {
            format!(
                "payload on {} is not JSON: {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }

    /// The payload as CBOR.
    pub fn cbor(&self) -> anyhow::Result<ciborium::Value> {
        ciborium::de::from_reader(self.payload.as_ref()).with_context(|| {
            format!(
                "payload on {} is not CBOR: {:02x?}",
                self.topic,
                self.payload.as_ref()
            )
        })
    }

    /// The execution id of a device-protocol topic: the level after `executions`.
    pub fn execution_id(&self) -> Option<&str> {
        let mut levels = self.topic.split('/');
        levels.by_ref().find(|l| *l == "executions")?;
        levels.next()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let payload = match std::str::from_utf8(&self.payload) {
            Ok(text) => text.to_string(),
            Err(_) => format!("{:02x?}", self.payload.as_ref()),
        };
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("payload", &payload)
            .field("content_type", &self.content_type)
            .field("message_expiry_secs", &self.message_expiry_secs)
            .field("user_properties", &self.user_properties)
            .finish()
    }
}

/// Acknowledgements and connection changes, from the event-loop task.
#[derive(Debug)]
enum Control {
    ConnAck {
        session_present: bool,
        refused: Option<String>,
    },
    SubAck {
        refused: Vec<String>,
    },
    PubAck,
    /// An MQTT 5 PUBACK with a failure reason code.
    PubRefused(String),
    Closed(String),
}

enum Link {
    V5(rumqttc::v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

/// A raw MQTT device connected to a broker.
pub struct Device {
    pub client_id: String,
    /// Whether the broker resumed a stored session on connect.
    pub session_present: bool,
    link: Link,
    messages: mpsc::Receiver<Message>,
    control: mpsc::Receiver<Control>,
    /// Received, not yet returned by `expect`/`recv`, in arrival order.
    pending: VecDeque<Message>,
    task: JoinHandle<()>,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Device {
    /// Connects an MQTT 5 device with a clean session.
    pub async fn v5(port: u16, client_id: &str) -> anyhow::Result<Self> {
        Self::connect(port, DeviceOptions::v5(client_id)).await
    }

    /// Connects an MQTT 3.1.1 device with a clean session.
    pub async fn v311(port: u16, client_id: &str) -> anyhow::Result<Self> {
        Self::connect(port, DeviceOptions::v311(client_id)).await
    }

    /// Connects to `127.0.0.1:<port>` and returns once the CONNACK accepted the connection.
    pub async fn connect(port: u16, options: DeviceOptions) -> anyhow::Result<Self> {
        let (messages_tx, messages) = mpsc::channel(4096);
        let (control_tx, mut control) = mpsc::channel(256);
        let (link, task) = match options.version {
            Version::V5 => {
                let mut o =
                    rumqttc::v5::MqttOptions::new(options.client_id.clone(), "127.0.0.1", port);
                o.set_keep_alive(Duration::from_secs(30))
                    .set_clean_start(options.clean_start)
                    .set_session_expiry_interval(options.session_expiry_secs)
                    .set_max_packet_size(Some(1024 * 1024));
                let mut net = o.network_options();
                net.set_tcp_nodelay(true);
                o.set_network_options(net);
                if let Some(tls) = &options.tls {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(tls.clone()),
                    ));
                }
                if let Some((user, password)) = &options.login {
                    o.set_credentials(user, password);
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, 256);
                (
                    Link::V5(client),
                    tokio::spawn(run_v5(eventloop, messages_tx, control_tx)),
                )
            }
            Version::V311 => {
                let mut o = rumqttc::MqttOptions::new(options.client_id.clone(), "127.0.0.1", port);
                o.set_keep_alive(Duration::from_secs(30))
                    .set_clean_session(options.clean_start)
                    .set_max_packet_size(1024 * 1024, 1024 * 1024);
                if let Some(tls) = &options.tls {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(tls.clone()),
                    ));
                }
                if let Some((user, password)) = &options.login {
                    o.set_credentials(user, password);
                }
                let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 256);
                let mut net = eventloop.network_options();
                net.set_tcp_nodelay(true);
                eventloop.set_network_options(net);
                (
                    Link::V311(client),
                    tokio::spawn(run_v311(eventloop, messages_tx, control_tx)),
                )
            }
        };
        let who = options.client_id.clone();
        let session_present = match tokio::time::timeout(ACK_TIMEOUT, control.recv()).await {
            Ok(Some(Control::ConnAck {
                session_present,
                refused: None,
            })) => session_present,
            Ok(Some(Control::ConnAck {
                refused: Some(code),
                ..
            })) => bail!("device {who}: connection refused: {code}"),
            Ok(Some(Control::Closed(why))) => {
                bail!("device {who}: could not connect to 127.0.0.1:{port}: {why}")
            }
            Ok(other) => bail!("device {who}: expected a CONNACK first, got {other:?}"),
            Err(_) => bail!("device {who}: no CONNACK within {ACK_TIMEOUT:?}"),
        };
        Ok(Self {
            client_id: options.client_id,
            session_present,
            link,
            messages,
            control,
            pending: VecDeque::new(),
            task,
        })
    }

    /// Waits for the next acknowledgement (or failure) from the event loop.
    async fn next_control(&mut self, what: &str) -> anyhow::Result<Control> {
        match tokio::time::timeout(ACK_TIMEOUT, self.control.recv()).await {
            Ok(Some(Control::Closed(why))) => bail!(
                "device {}: connection closed while waiting for {what}: {why}",
                self.client_id
            ),
            Ok(Some(c)) => Ok(c),
            Ok(None) => bail!(
                "device {}: event loop gone while waiting for {what}",
                self.client_id
            ),
            Err(_) => bail!(
                "device {}: no {what} within {ACK_TIMEOUT:?}",
                self.client_id
            ),
        }
    }

    /// Subscribes to `filters` at QoS 1; returns once the SUBACK granted every one of them,
    /// so no message published afterwards on a matching topic can be missed.
    pub async fn subscribe<S: AsRef<str>>(&mut self, filters: &[S]) -> anyhow::Result<()> {
        let filters: Vec<String> = filters.iter().map(|f| f.as_ref().to_string()).collect();
        match &self.link {
            Link::V5(c) => {
                let f = filters.iter().map(|t| {
                    rumqttc::v5::mqttbytes::v5::Filter::new(
                        t.clone(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    )
                });
                c.subscribe_many(f).await?;
            }
            Link::V311(c) => {
                let f = filters
                    .iter()
                    .map(|t| rumqttc::SubscribeFilter::new(t.clone(), rumqttc::QoS::AtLeastOnce));
                c.subscribe_many(f).await?;
            }
        }
        match self.next_control("SUBACK").await? {
            Control::SubAck { refused } if refused.is_empty() => Ok(()),
            Control::SubAck { refused } => {
                bail!(
                    "device {}: subscription to {filters:?} refused: {refused:?}",
                    self.client_id
                )
            }
            other => bail!(
                "device {}: expected a SUBACK, got {other:?}",
                self.client_id
            ),
        }
    }

    /// Waits until the broker closes the connection (it must, within the usual wait).
    pub async fn expect_closed(&mut self) -> anyhow::Result<()> {
        self.closed_in_time("the broker did not close the connection")
            .await
    }

    /// Returns once the connection is closed, or fails saying `late` after [`ACK_TIMEOUT`].
    async fn closed_in_time(&mut self, late: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.control.recv()).await {
                Ok(Some(Control::Closed(_)) | None) => return Ok(()),
                Ok(Some(_)) => continue,
                Err(_) => bail!("device {}: {late} within {ACK_TIMEOUT:?}", self.client_id),
            }
        }
    }

    /// Publishes QoS 1 (MQTT 5: no properties); returns once the broker's PUBACK arrived.
    pub async fn publish(
        &mut self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
    ) -> anyhow::Result<()> {
        let topic = topic.into();
        let payload = payload.into();
        match &self.link {
            Link::V5(c) => {
                c.publish(
                    topic.clone(),
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await?
            }
            Link::V311(c) => {
                c.publish(topic.clone(), rumqttc::QoS::AtLeastOnce, false, payload)
                    .await?
            }
        }
        match self.next_control(&format!("PUBACK for {topic}")).await? {
            Control::PubAck => Ok(()),
            Control::PubRefused(reason) => bail!(
                "device {}: publish to {topic} refused: {reason}",
                self.client_id
            ),
            other => bail!(
                "device {}: expected a PUBACK for {topic}, got {other:?}",
                self.client_id
            ),
        }
    }

    /// Publishes a JSON value.
    pub async fn publish_json(
        &mut self,
        topic: impl Into<String>,
        body: &Json,
    ) -> anyhow::Result<()> {
        self.publish(topic, Bytes::from(body.to_string())).await
    }

    /// The next message, whatever it is.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Message> {
        self.expect("any message", |_| true, timeout).await
    }

    /// Waits for the first message that satisfies `pred` (earlier non-matching messages are
    /// kept for later calls) and fails after `timeout` naming `what` and what did arrive.
    pub async fn expect(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Message) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Message> {
        if let Some(i) = self.pending.iter().position(&mut pred) {
            return Ok(self.pending.remove(i).expect("index is in range"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.messages.recv()).await {
                Ok(Some(m)) if pred(&m) => return Ok(m),
                Ok(Some(m)) => self.pending.push_back(m),
                Ok(None) => bail!(
                    "device {}: connection ended while waiting for {what}; received meanwhile: {:#?}",
                    self.client_id,
                    self.pending
                ),
                Err(_) => bail!(
                    "device {}: no {what} within {timeout:?}; received meanwhile: {:#?}",
                    self.client_id,
                    self.pending
                ),
            }
        }
    }

    /// Waits for a message on exactly `topic`.
    pub async fn expect_topic(
        &mut self,
        topic: &str,
        timeout: Duration,
    ) -> anyhow::Result<Message> {
        self.expect(
            &format!("a message on {topic}"),
            |m| m.topic == topic,
            timeout,
        )
        .await
    }

    /// Everything received so far and not yet returned, without waiting.
    pub fn take_received(&mut self) -> Vec<Message> {
        while let Ok(m) = self.messages.try_recv() {
            self.pending.push_back(m);
        }
        self.pending.drain(..).collect()
    }

    /// Sends DISCONNECT and returns once it was flushed and the connection closed (the
    /// event loop ends, dropping the socket, as the client must after a DISCONNECT).
    pub async fn disconnect(mut self) -> anyhow::Result<()> {
        match &self.link {
            Link::V5(c) => c.disconnect().await?,
            Link::V311(c) => c.disconnect().await?,
        }
        self.closed_in_time("DISCONNECT was not sent").await
    }
}

/// What one poll of an event loop yielded, whatever the protocol version.
enum Polled {
    Message(Message),
    Control(Control),
    /// The connection ended (an error, the broker's DISCONNECT, or ours flushed).
    Closed(String),
    Other,
}

/// Hands one polled event to the device; false once the event loop must stop.
async fn forward(
    polled: Polled,
    messages: &mpsc::Sender<Message>,
    control: &mpsc::Sender<Control>,
) -> bool {
    match polled {
        Polled::Message(m) => messages.send(m).await.is_ok(),
        Polled::Control(c) => control.send(c).await.is_ok(),
        Polled::Closed(why) => {
            let _ = control.try_send(Control::Closed(why));
            false
        }
        Polled::Other => true,
    }
}

fn connack(session_present: bool, accepted: bool, code: impl fmt::Debug) -> Polled {
    Polled::Control(Control::ConnAck {
        session_present,
        refused: (!accepted).then(|| format!("{code:?}")),
    })
}

fn suback<C: fmt::Debug>(codes: &[C], granted: impl Fn(&C) -> bool) -> Polled {
    let refused = codes
        .iter()
        .filter(|c| !granted(c))
        .map(|c| format!("{c:?}"))
        .collect();
    Polled::Control(Control::SubAck { refused })
}

/// The rest of what an event loop polls, which both protocol versions report alike.
/// rumqttc's v5 and 3.1.1 events have the same names and fields but are different types,
/// so this is a macro over the `Event`, `Packet`, `ConnectReturnCode` and
/// `SubscribeReasonCode` that each caller has in scope.
macro_rules! polled_alike {
    ($event:expr) => {
        match $event {
            Ok(Event::Incoming(Packet::ConnAck(c))) => connack(
                c.session_present,
                c.code == ConnectReturnCode::Success,
                c.code,
            ),
            Ok(Event::Incoming(Packet::SubAck(s))) => suback(&s.return_codes, |c| {
                matches!(c, SubscribeReasonCode::Success(_))
            }),
            Ok(Event::Incoming(Packet::PubAck(_))) => Polled::Control(Control::PubAck),
            // DISCONNECT is flushed; the client closes the connection (§3.14.4 in both).
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                Polled::Closed("disconnected".into())
            }
            Ok(_) => Polled::Other,
            Err(e) => Polled::Closed(e.to_string()),
        }
    };
}

async fn run_v5(
    mut eventloop: rumqttc::v5::EventLoop,
    messages: mpsc::Sender<Message>,
    control: mpsc::Sender<Control>,
) {
    use rumqttc::v5::Event;
    use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode, Packet, PubAckReason, SubscribeReasonCode,
    };
    loop {
        let polled = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let (content_type, message_expiry_secs, user_properties) =
                    p.properties.map_or((None, None, Vec::new()), |props| {
                        (
                            props.content_type,
                            props.message_expiry_interval,
                            props.user_properties,
                        )
                    });
                Polled::Message(Message {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    content_type,
                    message_expiry_secs,
                    user_properties,
                })
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                Polled::Closed(format!("the broker disconnected: {:?}", d.reason_code))
            }
            Ok(Event::Incoming(Packet::PubAck(a))) if a.reason != PubAckReason::Success => {
                Polled::Control(Control::PubRefused(format!("{:?}", a.reason)))
            }
            other => polled_alike!(other),
        };
        if !forward(polled, &messages, &control).await {
            return;
        }
    }
}

async fn run_v311(
    mut eventloop: rumqttc::EventLoop,
    messages: mpsc::Sender<Message>,
    control: mpsc::Sender<Control>,
) {
    use rumqttc::{ConnectReturnCode, Event, Packet, SubscribeReasonCode};
    loop {
        let polled = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => Polled::Message(Message {
                topic: p.topic,
                payload: p.payload,
                content_type: None,
                message_expiry_secs: None,
                user_properties: Vec::new(),
            }),
            other => polled_alike!(other),
        };
        if !forward(polled, &messages, &control).await {
            return;
        }
    }
}

/// The wire format of a device update and of its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Cbor,
}

impl Format {
    fn suffix(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Cbor => "cbor",
        }
    }
}

/// The device-protocol topics of one target under the `$aws` root.
#[derive(Debug, Clone)]
pub struct Topics {
    /// `$aws/commands/{things|clients}/<id>`
    base: String,
}

impl Topics {
    pub fn thing(name: &str) -> Self {
        Self {
            base: format!("$aws/commands/things/{name}"),
        }
    }

    pub fn client(id: &str) -> Self {
        Self {
            base: format!("$aws/commands/clients/{id}"),
        }
    }

    fn execution(&self, execution_id: &str) -> String {
        format!("{}/executions/{execution_id}", self.base)
    }

    /// The three request filters an AWS device SDK subscribes to (json, cbor, raw).
    pub fn request_filters(&self) -> Vec<String> {
        let any = self.execution("+");
        vec![
            format!("{any}/request/json"),
            format!("{any}/request/cbor"),
            format!("{any}/request"),
        ]
    }

    /// Accepted and rejected replies in both formats (`.../response/+/{json,cbor}`), which
    /// do not match the device's own updates on `.../response/{json,cbor}`.
    pub fn reply_filters(&self) -> Vec<String> {
        let any = self.execution("+");
        vec![
            format!("{any}/response/+/json"),
            format!("{any}/response/+/cbor"),
        ]
    }

    /// fleetcmd's cancel notices.
    pub fn cancel_filter(&self) -> String {
        format!("{}/cancel/json", self.execution("+"))
    }

    /// Requests, replies and cancel notices: what a complete device subscribes to.
    pub fn device_filters(&self) -> Vec<String> {
        let mut f = self.request_filters();
        f.extend(self.reply_filters());
        f.push(self.cancel_filter());
        f
    }

    /// True for `<base>/executions/<id>/request[/json|/cbor]`.
    pub fn is_request(&self, topic: &str) -> bool {
        let Some(rest) = topic.strip_prefix(&format!("{}/executions/", self.base)) else {
            return false;
        };
        matches!(
            rest.split('/').collect::<Vec<_>>().as_slice(),
            [_, "request"] | [_, "request", "json" | "cbor"]
        )
    }

    /// `.../executions/<id>/request[/json|/cbor]`; `suffix` is `"json"`, `"cbor"` or `""`.
    pub fn request(&self, execution_id: &str, suffix: &str) -> String {
        if suffix.is_empty() {
            format!("{}/request", self.execution(execution_id))
        } else {
            format!("{}/request/{suffix}", self.execution(execution_id))
        }
    }

    pub fn update(&self, execution_id: &str, format: Format) -> String {
        format!(
            "{}/response/{}",
            self.execution(execution_id),
            format.suffix()
        )
    }

    pub fn accepted(&self, execution_id: &str, format: Format) -> String {
        format!(
            "{}/response/accepted/{}",
            self.execution(execution_id),
            format.suffix()
        )
    }

    pub fn rejected(&self, execution_id: &str, format: Format) -> String {
        format!(
            "{}/response/rejected/{}",
            self.execution(execution_id),
            format.suffix()
        )
    }

    pub fn cancel(&self, execution_id: &str) -> String {
        format!("{}/cancel/json", self.execution(execution_id))
    }
}

/// The cloud's answer to a device update.
#[derive(Debug, Clone)]
pub struct Reply {
    pub accepted: bool,
    pub message: Message,
}

impl Reply {
    /// The reply body as JSON (JSON replies), or CBOR converted to JSON (CBOR replies).
    pub fn body(&self) -> anyhow::Result<Json> {
        if self.message.topic.ends_with("/cbor") {
            let v = self.message.cbor()?;
            cbor_to_json(&v)
        } else {
            self.message.json()
        }
    }

    /// The `error` code of a rejection.
    pub fn error(&self) -> anyhow::Result<String> {
        let body = self.body()?;
        body["error"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("reply without an error code: {body}"))
    }
}

/// A CBOR value of text, bools, integers, byte strings (as base64), arrays and text-keyed maps
/// as JSON, for assertions.
pub fn cbor_to_json(v: &ciborium::Value) -> anyhow::Result<Json> {
    use base64::Engine;
    use ciborium::Value as C;
    Ok(match v {
        C::Null => Json::Null,
        C::Bool(b) => Json::Bool(*b),
        C::Text(s) => Json::String(s.clone()),
        C::Integer(i) => {
            let i: i128 = (*i).into();
            serde_json::Number::from_i128(i)
                .map(Json::Number)
                .ok_or_else(|| anyhow!("integer {i} out of JSON range"))?
        }
        C::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| anyhow!("float {f} not JSON"))?,
        C::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        C::Array(items) => Json::Array(
            items
                .iter()
                .map(cbor_to_json)
                .collect::<anyhow::Result<_>>()?,
        ),
        C::Map(entries) => {
            let mut m = serde_json::Map::new();
            for (k, v) in entries {
                let C::Text(k) = k else {
                    bail!("CBOR map key {k:?} is not text")
                };
                m.insert(k.clone(), cbor_to_json(v)?);
            }
            Json::Object(m)
        }
        other => bail!("unsupported CBOR value {other:?}"),
    })
}

/// CBOR bytes of a value.
pub fn to_cbor(v: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).expect("writing CBOR into a Vec cannot fail");
    out
}

impl Device {
    /// Waits for a request (any format) of this device; returns the message.
    pub async fn expect_request(
        &mut self,
        topics: &Topics,
        timeout: Duration,
    ) -> anyhow::Result<Message> {
        self.expect(
            &format!("a request under {}", topics.base),
            |m| topics.is_request(&m.topic),
            timeout,
        )
        .await
    }

    /// Publishes an update on `.../executions/<id>/response/<format>` and waits for the
    /// accepted or rejected reply for that execution in that format.
    pub async fn report(
        &mut self,
        topics: &Topics,
        execution_id: &str,
        format: Format,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        self.publish(topics.update(execution_id, format), body)
            .await?;
        let accepted = topics.accepted(execution_id, format);
        let rejected = topics.rejected(execution_id, format);
        let message = self
            .expect(
                &format!("a reply on {accepted} or {rejected}"),
                |m| m.topic == accepted || m.topic == rejected,
                EXPECT_TIMEOUT,
            )
            .await?;
        Ok(Reply {
            accepted: message.topic == accepted,
            message,
        })
    }

    /// [`Self::report`] with a JSON body on `/response/json`.
    pub async fn report_json(
        &mut self,
        topics: &Topics,
        execution_id: &str,
        body: &Json,
    ) -> anyhow::Result<Reply> {
        self.report(
            topics,
            execution_id,
            Format::Json,
            Bytes::from(body.to_string()),
        )
        .await
    }
}
