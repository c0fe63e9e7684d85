//! The harness of the Mosquitto tests: the shipped config rendered for a test broker, the
//! PKI, the broker process, and MQTT clients that report what the broker did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetcmd_adapters::conformance::{TempDir, WAIT, within};
use fleetcmd_identity::{Ca, DeviceIdentity, Issued, RevokedEntry};
use rumqttc::v5;
use rumqttc::{QoS, TlsConfiguration, Transport};
use time::OffsetDateTime;
use tokio::sync::mpsc;

/// The shipped listeners, by the port `deploy/mosquitto-cluster.conf` gives them.
pub const MTLS_LISTENER: u16 = 8883;
pub const PASSWORD_LISTENER: u16 = 8884;
pub const EDGE_LISTENER: u16 = 1883;

pub const EDGE_USER: &str = "fleetcmd-edge";
pub const EDGE_PASSWORD: &str = "edge-secret-0123456789";

/// The ACL files as the cluster config names them, and the repository files they are.
pub const SHIPPED_ACL_FILES: [(&str, &str); 2] = [
    ("fleetcmd-acl.conf", "mosquitto-acl.conf"),
    ("fleetcmd-mtls-acl.conf", "mosquitto-mtls-acl.conf"),
];

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

pub fn request(identity: &str, execution: &str) -> String {
    format!("$aws/commands/{identity}/executions/{execution}/request/json")
}

pub fn update(identity: &str, execution: &str) -> String {
    format!("$aws/commands/{identity}/executions/{execution}/response/json")
}

// ---- the broker ----------------------------------------------------------------------------

/// `mosquitto` and `mosquitto_passwd`, or `None` (after a skip line) when they are not
/// installed outside CI.
pub fn tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    // Debian puts the broker in /usr/sbin, which a non-login PATH may lack.
    let find = |tool: &str| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    };
    match (find("mosquitto"), find("mosquitto_passwd")) {
        (Some(broker), Some(passwd)) => Some((broker, passwd)),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
            assert!(
                !ci,
                "{test}: mosquitto or mosquitto_passwd is not installed, and CI must not skip \
                 the Mosquitto tests: run `deploy/engines/mosquitto.sh install`"
            );
            eprintln!(
                "skipped {test}: mosquitto is not installed (deploy/engines/mosquitto.sh install)"
            );
            None
        }
    }
}

/// The fleetcmd side of a deployment: the device CA and the certificates it issued, and the
/// CAs a user registered (RegisterCaCertificate), whose certificates the broker trusts too.
pub struct Pki {
    pub ca: Ca,
    pub now: OffsetDateTime,
    pub registered_ca_pems: Vec<String>,
}

impl Pki {
    pub fn new() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            ca: Ca::generate(now).expect("generate the device CA"),
            now,
            registered_ca_pems: Vec::new(),
        }
    }

    /// A device certificate for `identity` (`things/<name>` or `clients/<id>`).
    pub fn device(&self, identity: &str) -> Issued {
        let identity = DeviceIdentity::parse(identity).expect("a device identity");
        fleetcmd_identity::issue(&self.ca, &identity, 1, self.now).expect("issue a certificate")
    }

    /// The device CA's CRL listing `revoked`, valid for a day.
    pub fn crl(&self, revoked: &[&Issued]) -> String {
        crl_of(&self.ca, revoked, self.now)
    }

    /// TLS to a device listener: trusting the device CA, with `certificate` if given.
    pub fn tls(&self, certificate: Option<&Issued>) -> TlsConfiguration {
        tls_trusting(&self.ca, certificate)
    }
}

/// The CRL of `ca` listing `revoked`, issued at `now` and valid for a day.
pub fn crl_of(ca: &Ca, revoked: &[&Issued], now: OffsetDateTime) -> String {
    let entries: Vec<RevokedEntry> = revoked
        .iter()
        .map(|c| RevokedEntry {
            serial_hex: c.serial_hex.clone(),
            revoked_at: now,
        })
        .collect();
    fleetcmd_identity::crl(ca, &entries, now, now + time::Duration::DAY).expect("sign the CRL")
}

pub fn tls_trusting(ca: &Ca, certificate: Option<&Issued>) -> TlsConfiguration {
    let client_auth = certificate.map(|c| {
        (
            c.certificate_pem.as_str(),
            c.private_key_pem.as_deref().expect("issued with its key"),
        )
    });
    let config = fleetcmd_identity::client_config(ca.certificate_pem(), client_auth)
        .expect("a client TLS config");
    TlsConfiguration::Rustls(Arc::new(config))
}

/// A `mosquitto -c` of its own, killed on drop.
pub struct Broker {
    pub child: Child,
    /// Shipped listener port → the port it listens on here.
    pub ports: BTreeMap<u16, u16>,
    pub root: PathBuf,
    pub _dir: TempDir,
}

impl Broker {
    /// Writes the shipped config and ACL files, the CA, server certificate, CRL and password
    /// files they name under a temp dir, starts Mosquitto and waits until every listener
    /// accepts connections.
    pub async fn start(
        (mosquitto, mosquitto_passwd): &(PathBuf, PathBuf),
        pki: &Pki,
        crl_pem: &str,
        device_passwords: &[(&str, &str)],
    ) -> Self {
        let dir = TempDir::new("mosquitto");
        let root = dir.path().to_owned();
        let etc = root.join("etc");
        std::fs::create_dir_all(etc.join("certs")).expect("create etc/certs");
        std::fs::create_dir_all(root.join("data")).expect("create data");

        let (server_cert, server_key) =
            fleetcmd_identity::server_certificate(&pki.ca, &[], time::Duration::DAY, pki.now)
                .expect("issue the server certificate");
        write(&etc.join("certs/server.crt"), &server_cert);
        write(&etc.join("certs/server.key"), &server_key);
        // The device CA file holds every CA devices' certificates may chain to.
        let cas: String = std::iter::once(pki.ca.certificate_pem())
            .chain(pki.registered_ca_pems.iter().map(String::as_str))
            .collect();
        write(&etc.join("certs/device-ca.crt"), &cas);
        write(&etc.join("certs/device-ca.crl"), crl_pem);
        for (installed, shipped) in SHIPPED_ACL_FILES {
            std::fs::copy(deploy_dir().join(shipped), etc.join(installed))
                .unwrap_or_else(|e| panic!("copy deploy/{shipped}: {e}"));
        }
        let passwd = |file: &Path, users: &[(&str, &str)]| {
            // An empty file is a valid password file: nobody can log in.
            write(file, "");
            for (user, password) in users {
                let status = Command::new(mosquitto_passwd)
                    .arg("-b")
                    .arg(file)
                    .args([user, password])
                    .stdout(Stdio::null())
                    .status()
                    .expect("run mosquitto_passwd");
                assert!(status.success(), "mosquitto_passwd {user}: {status}");
            }
        };
        passwd(&etc.join("fleetcmd-devices.passwd"), device_passwords);
        passwd(
            &etc.join("fleetcmd-edge.passwd"),
            &[(EDGE_USER, EDGE_PASSWORD)],
        );

        let ports: BTreeMap<u16, u16> = [MTLS_LISTENER, PASSWORD_LISTENER, EDGE_LISTENER]
            .into_iter()
            .map(|shipped| (shipped, free_port()))
            .collect();
        let shipped = std::fs::read_to_string(deploy_dir().join("mosquitto-cluster.conf"))
            .expect("read deploy/mosquitto-cluster.conf");
        let config = render(&shipped, &root, &ports);
        let config_path = root.join("mosquitto.conf");
        write(&config_path, &config);

        let log = std::fs::File::create(root.join("stderr.log")).expect("create stderr.log");
        let child = Command::new(mosquitto)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        let mut broker = Self {
            child,
            ports,
            root,
            _dir: dir,
        };
        broker.wait_listening().await;
        broker
    }

    pub fn port(&self, shipped: u16) -> u16 {
        self.ports[&shipped]
    }

    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.root.join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("mosquitto.log"))
    }

    /// Polls each listener with a TCP connect until it accepts, within [`WAIT`]; fails at
    /// once if Mosquitto exits (a config it refuses).
    pub async fn wait_listening(&mut self) {
        let deadline = Instant::now() + WAIT;
        let ports: Vec<u16> = self.ports.values().copied().collect();
        for port in ports {
            loop {
                if let Some(status) = self.child.try_wait().expect("poll mosquitto") {
                    panic!(
                        "mosquitto exited ({status}) before listening:\n{}",
                        self.log()
                    );
                }
                match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        panic!(
                            "mosquitto does not listen on {port} after {WAIT:?}: {e}\n{}",
                            self.log()
                        )
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    }

    /// Replaces the CRL file and sends SIGHUP, as an operator does after a revocation.
    pub fn reload_crl(&self, crl_pem: &str) {
        write(&self.root.join("etc/certs/device-ca.crl"), crl_pem);
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP mosquitto: {status}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- mosquitto log ---\n{}", self.log());
        }
    }
}

/// The shipped config with `/etc/mosquitto/` and `/var/lib/mosquitto/` moved under `root`,
/// each listener on its test port on 127.0.0.1, and the log in a file (stdout is not
/// captured). Every file it names must exist, and every shipped listener must be there.
pub fn render(shipped: &str, root: &Path, ports: &BTreeMap<u16, u16>) -> String {
    let etc = format!("{}/etc/", root.display());
    let data = format!("{}/data/", root.display());
    let mut out = String::new();
    let mut listeners = Vec::new();
    for line in shipped.lines() {
        let line = line
            .replace("/etc/mosquitto/", &etc)
            .replace("/var/lib/mosquitto/", &data);
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["listener", port, ..] => {
                let shipped: u16 = port.parse().expect("a listener port");
                let port = ports
                    .get(&shipped)
                    .unwrap_or_else(|| panic!("unexpected shipped listener {shipped}"));
                listeners.push(shipped);
                out.push_str(&format!("listener {port} 127.0.0.1\n"));
                continue;
            }
            ["log_dest", ..] => {
                out.push_str(&format!("log_dest file {}/mosquitto.log\n", root.display()));
                continue;
            }
            [
                "certfile" | "keyfile" | "cafile" | "crlfile" | "password_file" | "acl_file",
                path,
            ] => {
                assert!(
                    Path::new(path).is_file(),
                    "the config names {path}, which is missing"
                );
            }
            _ => {}
        }
        out.push_str(&line);
        out.push('\n');
    }
    listeners.sort_unstable();
    let mut expected: Vec<u16> = ports.keys().copied().collect();
    expected.sort_unstable();
    assert_eq!(listeners, expected, "the shipped listeners");
    // Started as root, Mosquitto would switch to the `mosquitto` user, which cannot read the
    // temp dir; as anyone else the option has no effect.
    let me = Command::new("id").arg("-un").output().expect("run id -un");
    out.push_str(&format!(
        "user {}\n",
        String::from_utf8_lossy(&me.stdout).trim()
    ));
    out
}

pub fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ---- MQTT clients --------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

/// How a client logs in.
#[derive(Clone)]
pub struct Login {
    pub port: u16,
    pub client_id: String,
    pub tls: Option<TlsConfiguration>,
    pub credentials: Option<(String, String)>,
}

impl Login {
    pub fn new(port: u16, client_id: &str) -> Self {
        Self {
            port,
            client_id: client_id.to_owned(),
            tls: None,
            credentials: None,
        }
    }

    pub fn tls(mut self, tls: TlsConfiguration) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn password(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }
}

/// What the broker acknowledged.
#[derive(Debug, PartialEq, Eq)]
pub enum Ack {
    /// SUBACK: whether every filter was granted.
    Subscribed(bool),
    /// PUBACK: `false` when it says "not authorized" (MQTT 5; 3.1.1 cannot say it).
    Published(bool),
}

pub enum Mqtt {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

/// A connected client. Its event loop runs on a task that hands over received messages and
/// acknowledgements; both channels close when the connection ends.
pub struct Client {
    pub name: String,
    pub mqtt: Mqtt,
    pub messages: mpsc::Receiver<(String, String)>,
    pub acks: mpsc::Receiver<Ack>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Dropping the event loop closes the connection.
        self.task.abort();
    }
}

/// The options of `login` for either protocol: rumqttc's `MqttOptions` of 3.1.1 and 5 are
/// separate types with the same setters.
macro_rules! options {
    ($options:ty, $login:expr, $transport:expr) => {{
        let mut opts = <$options>::new(&$login.client_id, "127.0.0.1", $login.port);
        opts.set_keep_alive(Duration::from_secs(30));
        if let Some(t) = $transport {
            opts.set_transport(t);
        }
        if let Some((user, password)) = &$login.credentials {
            opts.set_credentials(user, password);
        }
        opts
    }};
}

/// What a client's event loop heard, the same for both protocols.
#[derive(Debug)]
enum Heard {
    ConnAck,
    /// A message: its topic and payload.
    Message((String, String)),
    Ack(Ack),
    /// Anything else, as rumqttc shows it.
    Other(String),
}

/// rumqttc's event loop of either protocol (separate types), one event at a time.
trait Events: Send + 'static {
    /// The next event; `Err` carries rumqttc's error once the connection failed.
    fn next(&mut self) -> impl Future<Output = Result<Heard, String>> + Send;
}

impl Events for rumqttc::EventLoop {
    async fn next(&mut self) -> Result<Heard, String> {
        use rumqttc::{Event, Packet, SubscribeReasonCode};
        Ok(match self.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::ConnAck(_)) => Heard::ConnAck,
            Event::Incoming(Packet::Publish(p)) => {
                Heard::Message((p.topic, String::from_utf8_lossy(&p.payload).into_owned()))
            }
            Event::Incoming(Packet::SubAck(s)) => Heard::Ack(Ack::Subscribed(
                s.return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
            )),
            Event::Incoming(Packet::PubAck(_)) => Heard::Ack(Ack::Published(true)),
            other => Heard::Other(format!("{other:?}")),
        })
    }
}

impl Events for v5::EventLoop {
    async fn next(&mut self) -> Result<Heard, String> {
        use v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
        let event = self.poll().await.map_err(|e| e.to_string())?;
        let v5::Event::Incoming(packet) = event else {
            return Ok(Heard::Other(format!("{event:?}")));
        };
        Ok(match packet {
            Packet::ConnAck(_) => Heard::ConnAck,
            Packet::Publish(p) => Heard::Message((
                String::from_utf8_lossy(&p.topic).into_owned(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )),
            Packet::SubAck(s) => Heard::Ack(Ack::Subscribed(
                s.return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
            )),
            // Any other failure is not an ACL denial: it fails the assertions that expect
            // `Published(false)`.
            Packet::PubAck(a) => {
                Heard::Ack(Ack::Published(a.reason != PubAckReason::NotAuthorized))
            }
            other => Heard::Other(format!("{:?}", v5::Event::Incoming(other))),
        })
    }
}

/// Awaits the first event, which connects (TLS handshake, CONNECT, CONNACK), then hands
/// over what the client hears on a task of its own until the connection ends or nobody
/// listens. `Err` carries rumqttc's error, or the event that came instead of the CONNACK.
async fn listen(
    name: &str,
    mut events: impl Events,
    message_tx: mpsc::Sender<(String, String)>,
    ack_tx: mpsc::Sender<Ack>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    match within(&format!("{name}: connect"), events.next()).await? {
        Heard::ConnAck => {}
        Heard::Other(event) => return Err(format!("expected CONNACK, got {event}")),
        heard => return Err(format!("expected CONNACK, got {heard:?}")),
    }
    Ok(tokio::spawn(async move {
        while let Ok(heard) = events.next().await {
            let listening = match heard {
                Heard::Message(m) => message_tx.send(m).await.is_ok(),
                Heard::Ack(a) => ack_tx.send(a).await.is_ok(),
                Heard::ConnAck | Heard::Other(_) => true,
            };
            if !listening {
                break;
            }
        }
    }))
}

/// Connects; `Err` carries rumqttc's error when the handshake or CONNECT is refused.
pub async fn connect(protocol: Protocol, login: &Login) -> Result<Client, String> {
    let (message_tx, messages) = mpsc::channel(256);
    let (ack_tx, acks) = mpsc::channel(256);
    let name = format!("{} ({protocol:?})", login.client_id);
    let transport = login.tls.clone().map(Transport::tls_with_config);
    let (mqtt, task) = match protocol {
        Protocol::V311 => {
            let opts = options!(rumqttc::MqttOptions, login, transport);
            let (client, events) = rumqttc::AsyncClient::new(opts, 64);
            (
                Mqtt::V311(client),
                listen(&name, events, message_tx, ack_tx).await?,
            )
        }
        Protocol::V5 => {
            let opts = options!(v5::MqttOptions, login, transport);
            let (client, events) = v5::AsyncClient::new(opts, 64);
            (
                Mqtt::V5(client),
                listen(&name, events, message_tx, ack_tx).await?,
            )
        }
    };
    Ok(Client {
        name,
        mqtt,
        messages,
        acks,
        task,
    })
}

/// Connects, failing the test with `what` when refused.
pub async fn connected(what: &str, protocol: Protocol, login: &Login) -> Client {
    connect(protocol, login)
        .await
        .unwrap_or_else(|e| panic!("{what}: connection refused: {e}"))
}

/// Connects expecting a refusal; returns rumqttc's error.
pub async fn refused(what: &str, protocol: Protocol, login: &Login) -> String {
    match connect(protocol, login).await {
        Ok(_) => panic!("{what}: the broker accepted the connection"),
        Err(e) => {
            eprintln!("{what} ({protocol:?}): refused: {e}");
            e
        }
    }
}

/// Connects (MQTT 3.1.1) until refused, within [`WAIT`]: for a change the broker makes
/// asynchronously, such as loading a CRL on SIGHUP. Returns rumqttc's error.
pub async fn refused_eventually(what: &str, login: &Login) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        match connect(Protocol::V311, login).await {
            Err(e) => {
                eprintln!("{what}: refused: {e}");
                return e;
            }
            Ok(_) if Instant::now() > deadline => panic!("{what}: still accepted after {WAIT:?}"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Asserts that the TLS handshake failed with the broker's `alert` (rustls' name for it),
/// not at CONNECT.
pub fn assert_alert(error: &str, alert: &str) {
    assert!(
        error.contains(&format!("received fatal alert: {alert}")),
        "expected the TLS alert {alert}, got: {error}"
    );
}

impl Client {
    pub async fn ack(&mut self, what: &str) -> Ack {
        let what = format!("{}: {what}", self.name);
        within(&what, self.acks.recv())
            .await
            .unwrap_or_else(|| panic!("{what}: the connection ended"))
    }

    /// Fails the test if `request` could not be queued (`sent`), then waits for its
    /// acknowledgement, which must be of `kind`; returns what it says.
    async fn acked(
        &mut self,
        request: &str,
        sent: Result<(), String>,
        kind: fn(bool) -> Ack,
    ) -> bool {
        sent.unwrap_or_else(|e| panic!("{}: {request}: {e}", self.name));
        let ack = self.ack(&format!("the acknowledgement of {request}")).await;
        [true, false]
            .into_iter()
            .find(|&says| ack == kind(says))
            .unwrap_or_else(|| panic!("{}: {request}: unexpected {ack:?}", self.name))
    }

    /// Subscribes at QoS 1 and waits for the SUBACK; returns whether it was granted.
    pub async fn subscribe(&mut self, filter: &str) -> bool {
        let sent = match &self.mqtt {
            Mqtt::V311(c) => c
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Mqtt::V5(c) => c
                .subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
        };
        self.acked(&format!("subscribe {filter}"), sent, Ack::Subscribed)
            .await
    }

    /// Publishes at QoS 1 and waits for the PUBACK; `false` when it says "not authorized".
    pub async fn publish(&mut self, topic: &str, payload: &str) -> bool {
        let payload = payload.as_bytes().to_vec();
        let sent = match &self.mqtt {
            Mqtt::V311(c) => c
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
            Mqtt::V5(c) => c
                .publish(topic, v5::mqttbytes::QoS::AtLeastOnce, false, payload)
                .await
                .map_err(|e| e.to_string()),
        };
        self.acked(&format!("publish {topic}"), sent, Ack::Published)
            .await
    }

    /// The next message this client receives, as (topic, payload).
    pub async fn next_message(&mut self, what: &str) -> (String, String) {
        let what = format!("{}: {what}", self.name);
        within(&what, self.messages.recv())
            .await
            .unwrap_or_else(|| panic!("{what}: the connection ended"))
    }

    /// Asserts that the next message is `payload` on `topic`.
    pub async fn expect(&mut self, what: &str, topic: &str, payload: &str) {
        let got = self.next_message(what).await;
        assert_eq!(
            (got.0.as_str(), got.1.as_str()),
            (topic, payload),
            "{}: {what}",
            self.name
        );
    }
}

/// The edge: `fleetcmd-edge` on the private listener, subscribed to every device update as
/// fleetcmd's edge is (`fleetcmd_domain::topics`).
pub async fn edge(broker: &Broker, client_id: &str) -> Client {
    let login =
        Login::new(broker.port(EDGE_LISTENER), client_id).password(EDGE_USER, EDGE_PASSWORD);
    let mut edge = connected("the edge", Protocol::V5, &login).await;
    for filter in [
        "$aws/commands/+/+/executions/+/response/json",
        "$aws/commands/+/+/executions/+/response/cbor",
    ] {
        assert!(edge.subscribe(filter).await, "the edge may read {filter}");
    }
    edge
}
