//! The device side of `fleetcmd serve`: the embedded broker on its plain listener, the TLS
//! listener in front of it, and — unless device authentication is off — the guard that
//! makes every client prove who it is and keeps it to its own topics.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, bail};
use fleetcmd_adapters::embedded::broker::EmbeddedBroker;
use fleetcmd_adapters::embedded::broker::guard::DeviceGuard;
use fleetcmd_domain::credential::CertificateStatus;
use fleetcmd_domain::ids::{Target, TargetKind};
use fleetcmd_domain::ports::{DeviceCredentials, PortResult, ReadModel};
use fleetcmd_domain::topics::TopicRoot;
use fleetcmd_identity::{
    ClientAuth, MemoryTrustStore, PeerRegistry, TlsProxy, TrustedCa, server_config,
};
use fleetcmd_registry::DeviceTrust;

use crate::{ServeArgs, TlsIdentity};

/// Whether devices must authenticate (`--device-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceAuth {
    /// Every client proves its identity (certificate or password) and may touch only its
    /// own topics.
    Required,
    /// Anyone who can reach a listener may connect and read or write any topic.
    Open,
}

/// The mode in effect: as given, or `required` as soon as a listener binds beyond loopback.
/// Refuses a plain listener beyond loopback under `required`: passwords would cross the
/// network in clear.
pub fn device_auth(args: &ServeArgs) -> anyhow::Result<DeviceAuth> {
    let public = |a: SocketAddr| !a.ip().is_loopback();
    let mode =
        args.device_auth
            .unwrap_or(if public(args.mqtt_addr) || public(args.mqtt_tls_addr) {
                DeviceAuth::Required
            } else {
                DeviceAuth::Open
            });
    if mode == DeviceAuth::Required && public(args.mqtt_addr) {
        bail!(
            "refusing plain MQTT on {} with device authentication on: passwords and payloads \
             would travel in clear. Serve devices on --mqtt-tls-addr and keep --mqtt-addr on \
             loopback, or pass --device-auth open to accept anyone",
            args.mqtt_addr
        );
    }
    Ok(mode)
}

/// `--mqtt-event-reader`: `things/<name>` or `clients/<id>`.
pub fn parse_identity_arg(text: &str) -> Result<Target, String> {
    fleetcmd_domain::device_acl::parse_identity(text)
        .ok_or_else(|| format!("expected things/<name> or clients/<id>, got {text:?}"))
}

/// The credential registry as the broker's guard asks it: the read model's certificates and
/// password hashes. A thing's credentials count only while the thing is registered: deleting
/// a thing locks its devices out (and re-creating it lets them in again, as the credentials
/// are kept).
struct RegisteredCredentials(Arc<dyn ReadModel>);

impl RegisteredCredentials {
    async fn registered(&self, owner: &Target) -> PortResult<bool> {
        Ok(match owner.kind {
            TargetKind::Thing => self.0.get_thing(&owner.id).await?.is_some(),
            TargetKind::Client => true,
        })
    }
}

#[async_trait::async_trait]
impl DeviceCredentials for RegisteredCredentials {
    async fn certificate_owner(&self, certificate_id: &str) -> PortResult<Option<Target>> {
        let owner = self
            .0
            .get_certificate(certificate_id)
            .await?
            .filter(|c| c.status == CertificateStatus::Active)
            .map(|c| c.owner);
        Ok(match owner {
            Some(o) if self.registered(&o).await? => Some(o),
            _ => None,
        })
    }

    async fn password_hash(&self, owner: &Target) -> PortResult<Option<String>> {
        if !self.registered(owner).await? {
            return Ok(None);
        }
        self.0.get_password_hash(owner).await
    }
}

/// The broker and its TLS listener, running.
pub struct DeviceListeners {
    pub broker: EmbeddedBroker,
    pub mqtt_addr: SocketAddr,
    pub mqtt_tls_addr: SocketAddr,
    pub proxy: TlsProxy,
    /// Told of revocations (their handshakes fail and their connections end) and of newly
    /// registered CAs (their certificates are trusted from the next handshake on).
    pub trust: Arc<dyn DeviceTrust>,
}

/// The TLS listener's trust store and the connections it proxies.
struct ListenerTrust {
    trust: Arc<MemoryTrustStore>,
    peers: PeerRegistry,
}

impl DeviceTrust for ListenerTrust {
    fn certificate_revoked(&self, certificate_id: &str) {
        self.trust.revoke(certificate_id);
        let dropped = self.peers.disconnect_certificate(certificate_id);
        tracing::info!(
            certificate_id,
            dropped,
            "certificate revoked: its connections are closed"
        );
    }

    fn ca_registered(&self, ca: &TrustedCa) {
        if self.trust.add_ca(ca.clone()) {
            tracing::info!(
                ca_certificate_id = ca.id(),
                "CA registered: the device listener trusts it"
            );
        }
    }
}

/// Starts the broker (guarded unless `mode` is open) and binds the TLS listener; the caller
/// runs `proxy`.
pub async fn start(
    args: &ServeArgs,
    mode: DeviceAuth,
    root: &TopicRoot,
    identity: &TlsIdentity,
    read_model: Arc<dyn ReadModel>,
) -> anyhow::Result<DeviceListeners> {
    let peers = PeerRegistry::new();
    let broker = match mode {
        DeviceAuth::Required => {
            let guard = DeviceGuard::new(
                root.clone(),
                peers.clone(),
                Arc::new(RegisteredCredentials(read_model.clone())),
            )
            .with_event_readers(args.mqtt_event_readers.iter().cloned());
            EmbeddedBroker::start_guarded(args.mqtt_addr, guard)
        }
        DeviceAuth::Open => {
            let warning = "DEVICE AUTHENTICATION IS OFF (--device-auth open): any MQTT client can read and settle every device's commands";
            if args.mqtt_addr.ip().is_loopback() && args.mqtt_tls_addr.ip().is_loopback() {
                tracing::warn!("{warning}; the listeners are on loopback only");
            } else {
                tracing::error!(mqtt_addr = %args.mqtt_addr, mqtt_tls_addr = %args.mqtt_tls_addr, "{warning}, and a listener is reachable beyond loopback");
            }
            EmbeddedBroker::start(args.mqtt_addr)
        }
    }
    .with_context(|| format!("starting the MQTT broker on {}", args.mqtt_addr))?;
    let mqtt_addr = broker.local_addr();

    let trust = Arc::new(MemoryTrustStore::new([identity.ca.trusted()]));
    for registered in read_model
        .list_ca_certificates()
        .await
        .context("reading the registered CA certificates")?
    {
        // Each was verified when it was registered: one that no longer parses is a fault of
        // the store, said loudly, and not a reason to keep every device out.
        match TrustedCa::from_pem(&registered.certificate_pem) {
            Ok(ca) => {
                trust.add_ca(ca);
            }
            Err(e) => {
                tracing::error!(ca_certificate_id = %registered.ca_certificate_id, error = %e, "a registered CA certificate does not parse; not trusted");
            }
        }
    }
    for revoked in read_model
        .revoked_certificates()
        .await
        .context("reading the revoked certificates")?
    {
        trust.revoke(&revoked.certificate_id);
    }
    let tls = server_config(
        identity.server.certificate_pem(),
        identity.server.private_key_pem(),
        ClientAuth::Optional(trust.clone()),
    )
    .context("the MQTT TLS configuration")?;
    let proxy = TlsProxy::bind(args.mqtt_tls_addr, Arc::new(tls), dialable(mqtt_addr))
        .await
        .with_context(|| format!("binding the MQTT TLS listener on {}", args.mqtt_tls_addr))?
        .with_registry(peers.clone());
    let mqtt_tls_addr = proxy.local_addr();
    Ok(DeviceListeners {
        broker,
        mqtt_addr,
        mqtt_tls_addr,
        proxy,
        trust: Arc::new(ListenerTrust { trust, peers }),
    })
}

/// Where the proxy reaches a listener bound to `addr` (an unspecified address is reached on
/// loopback).
fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn mode(flags: &str) -> anyhow::Result<DeviceAuth> {
        let args = Cli::try_parse_from(std::iter::once("serve").chain(flags.split_whitespace()))?;
        device_auth(&args.serve)
    }

    #[test]
    fn authentication_is_required_as_soon_as_a_device_listener_leaves_loopback() {
        assert_eq!(mode("").unwrap(), DeviceAuth::Open);
        assert_eq!(
            mode("--mqtt-tls-addr 0.0.0.0:8883").unwrap(),
            DeviceAuth::Required
        );
        assert_eq!(
            mode("--device-auth required").unwrap(),
            DeviceAuth::Required
        );
        assert_eq!(
            mode("--mqtt-tls-addr 0.0.0.0:8883 --device-auth open").unwrap(),
            DeviceAuth::Open,
            "an explicit open is the operator's choice"
        );
    }

    #[test]
    fn plain_mqtt_beyond_loopback_is_refused_when_devices_authenticate() {
        let err = mode("--mqtt-addr 0.0.0.0:1883").unwrap_err().to_string();
        assert!(err.contains("refusing plain MQTT on 0.0.0.0:1883"), "{err}");
        assert_eq!(
            mode("--mqtt-addr 0.0.0.0:1883 --device-auth open").unwrap(),
            DeviceAuth::Open
        );
    }

    #[test]
    fn the_proxy_dials_an_unspecified_listener_on_loopback() {
        assert_eq!(
            dialable("0.0.0.0:1883".parse().unwrap()),
            "127.0.0.1:1883".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            dialable("[::]:1883".parse().unwrap()),
            "[::1]:1883".parse::<SocketAddr>().unwrap()
        );
        let exact: SocketAddr = "10.0.0.5:1883".parse().unwrap();
        assert_eq!(dialable(exact), exact);
    }
}
