//! Device identity for fleetcmd: who stands behind an MQTT connection, and how that is proven.
//!
//! Every device beyond loopback authenticates the AWS IoT way, as `things/<thing name>` or
//! `clients/<client id>` ([`DeviceIdentity`]), with an X.509 client certificate or a per-device
//! password. This crate holds the pieces that are not tied to a broker or a store:
//!
//! - [`ca`]: fleetcmd's own certificate authority (created once in the data directory) and the
//!   server certificate that the MQTT proxy and gRPC share;
//! - [`certs`]: device certificates (issued with a new key, or signed from a CSR), chain
//!   verification against the trusted CAs, certificate ids and the CRL that Mosquitto reads;
//! - [`password`]: device passwords (argon2id) and bearer-token digests;
//! - [`tls`]: rustls configurations (ring provider, TLS 1.2 and 1.3) with a client-certificate
//!   verifier that consults a [`TrustStore`] on every handshake, so a CA registered or a
//!   certificate revoked at run time takes effect at the next handshake;
//! - [`proxy`]: the TLS-terminating proxy in front of the embedded broker's plain TCP listener,
//!   and the [`PeerRegistry`] through which the broker's authentication hook learns which
//!   certificate stands behind each inner connection.
//!
//! The crate performs file and socket I/O only in [`Ca::load_or_create`],
//! [`ServerIdentity::load_or_create`] and [`TlsProxy`]; everything else is pure and takes the
//! clock as a parameter.

pub mod ca;
pub mod certs;
mod error;
mod identity;
pub mod password;
pub mod proxy;
mod registry;
pub mod tls;
mod util;

pub use ca::{Ca, ServerIdentity, server_certificate};
pub use certs::{
    CertificateError, Issued, ParsedCertificate, RevokedEntry, TrustedCa, certificate_id,
    certificate_pem, certificate_serial_hex, common_name, crl, issue, parse_and_verify, sign_csr,
};
pub use error::{Error, Result};
pub use identity::DeviceIdentity;
pub use proxy::TlsProxy;
pub use registry::{PeerIdentity, PeerRegistry, ProxiedConnection, TlsVersion};
pub use tls::{ClientAuth, MemoryTrustStore, TrustStore, client_config, server_config};
