//! rustls configurations for fleetcmd: the MQTT proxy, gRPC over TLS, and the clients (CLI,
//! simulator, bench, tests).
//!
//! Everything uses the ring provider explicitly (never the process default, so nothing depends
//! on which crate installed one first) and TLS 1.2 and 1.3 only. Client certificates are
//! checked by [`DynamicClientVerifier`], which asks a [`TrustStore`] on every handshake: a CA
//! registered or a certificate revoked while the server runs takes effect at the next
//! handshake, with no config to rebuild and no restart.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::certs::{CertificateError, TrustedCa, certificate_id, verify_client_chain};
use crate::error::{Error, Result};
use crate::util::pem_certificates;

/// The protocol versions fleetcmd speaks: 1.3, and 1.2 for older device stacks.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The ring provider, the only one compiled in.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where the client-certificate verifier learns, at each handshake, which CAs are trusted and
/// which certificates are revoked.
///
/// Both methods are called on the handshake path, from the runtime's worker threads: they
/// must answer from memory, without blocking on I/O.
pub trait TrustStore: Send + Sync + fmt::Debug {
    /// The CAs whose certificates are accepted now. Return the same `Arc` while the set is
    /// unchanged: the verifier then reuses its parsed anchors (a new `Arc` with the same CA
    /// ids is detected too, at the cost of comparing ids).
    fn trusted_cas(&self) -> Arc<[TrustedCa]>;

    /// Whether the certificate with this id (hex SHA-256 of its DER) is revoked. Asked only
    /// for certificates whose chain verified.
    fn is_revoked(&self, certificate_id: &str) -> bool;
}

/// A [`TrustStore`] held in memory: the service keeps it in step with its registry (a CA
/// registered, a certificate revoked) and the next handshake sees the change.
#[derive(Debug, Default)]
pub struct MemoryTrustStore {
    cas: RwLock<Arc<[TrustedCa]>>,
    revoked: RwLock<std::collections::HashSet<String>>,
}

impl MemoryTrustStore {
    pub fn new(cas: impl IntoIterator<Item = TrustedCa>) -> Self {
        let store = Self::default();
        for ca in cas {
            store.add_ca(ca);
        }
        store
    }

    /// Trusts `ca` from the next handshake on; `false` if it was trusted already.
    pub fn add_ca(&self, ca: TrustedCa) -> bool {
        let mut cas = self.cas.write().unwrap_or_else(PoisonError::into_inner);
        if cas.iter().any(|c| c.id() == ca.id()) {
            return false;
        }
        let mut next = cas.to_vec();
        next.push(ca);
        *cas = next.into();
        true
    }

    /// Stops trusting the CA with this id; `false` if it was not trusted.
    pub fn remove_ca(&self, ca_id: &str) -> bool {
        let mut cas = self.cas.write().unwrap_or_else(PoisonError::into_inner);
        let before = cas.len();
        let next: Vec<TrustedCa> = cas.iter().filter(|c| c.id() != ca_id).cloned().collect();
        *cas = next.into();
        cas.len() != before
    }

    /// Refuses the certificate with this id from the next handshake on. Live connections are
    /// closed separately, with [`crate::PeerRegistry::disconnect_certificate`].
    pub fn revoke(&self, certificate_id: &str) {
        self.revoked
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(certificate_id.to_ascii_lowercase());
    }

    /// Accepts a revoked certificate again (the AWS `ACTIVE` transition).
    pub fn reinstate(&self, certificate_id: &str) -> bool {
        self.revoked
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&certificate_id.to_ascii_lowercase())
    }
}

impl TrustStore for MemoryTrustStore {
    fn trusted_cas(&self) -> Arc<[TrustedCa]> {
        self.cas
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn is_revoked(&self, certificate_id: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(certificate_id)
    }
}

/// Whether and how a server asks for client certificates.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// No client certificates: devices authenticate with passwords, API callers with tokens.
    None,
    /// A certificate is asked for; a connection without one is accepted (and authenticates
    /// otherwise), one with a certificate that does not verify is refused.
    Optional(Arc<dyn TrustStore>),
    /// A verified certificate is required.
    Required(Arc<dyn TrustStore>),
}

/// A rustls server configuration from a PEM certificate (chain, leaf first) and its PKCS#8 key.
/// ALPN is left empty: set `alpn_protocols` to `[b"h2"]` for gRPC. With client
/// authentication, session resumption is off, so every handshake consults the trust store.
pub fn server_config(
    server_cert_pem: &str,
    server_key_pem: &str,
    client_auth: ClientAuth,
) -> Result<ServerConfig> {
    let chain = pem_certificates("server certificate", server_cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(server_key_pem.as_bytes())
        .map_err(|e| Error::invalid("server key", e))?;
    let provider = crypto_provider();
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(VERSIONS)?;
    let (builder, verifies_clients) = match client_auth {
        ClientAuth::None => (builder.with_no_client_auth(), false),
        ClientAuth::Optional(store) => (
            builder.with_client_cert_verifier(Arc::new(DynamicClientVerifier::new(
                store, false, &provider,
            ))),
            true,
        ),
        ClientAuth::Required(store) => (
            builder.with_client_cert_verifier(Arc::new(DynamicClientVerifier::new(
                store, true, &provider,
            ))),
            true,
        ),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    if verifies_clients {
        // A resumed session (TLS 1.2 session id, TLS 1.3 ticket) skips the client-certificate
        // verifier and reuses the chain verified back then: a revoked certificate would get
        // back in. Every handshake is therefore a full one; MQTT and gRPC connections are
        // long-lived, so the cost is small.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(config)
}

/// A rustls client configuration trusting the CA certificates in `ca_pem` (one or more), with
/// an optional client certificate and PKCS#8 key (both PEM).
pub fn client_config(
    ca_pem: &str,
    client_cert_and_key: Option<(&str, &str)>,
) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in pem_certificates("CA certificate", ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| Error::invalid("CA certificate", e))?;
    }
    let provider = crypto_provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::invalid("CA certificate", e))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)?
        .with_webpki_verifier(verifier);
    Ok(match client_cert_and_key {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = pem_certificates("client certificate", cert_pem)?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|e| Error::invalid("client key", e))?;
            builder.with_client_auth_cert(chain, key)?
        }
    })
}

/// Parsed trust anchors for one snapshot of the store's CA set.
struct Anchors {
    cas: Arc<[TrustedCa]>,
    anchors: Arc<Vec<TrustAnchor<'static>>>,
}

/// A client-certificate verifier that asks its [`TrustStore`] on every handshake. Chains are
/// verified by rustls-webpki for the client-auth usage (as [`crate::parse_and_verify`] does),
/// then the certificate id is checked against the revoked set.
pub struct DynamicClientVerifier {
    store: Arc<dyn TrustStore>,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
    /// The anchors parsed for the last CA set seen; replaced when the set changes. The lock is
    /// held only to compare and swap `Arc`s, never while a chain is verified.
    cache: Mutex<Option<Anchors>>,
}

impl fmt::Debug for DynamicClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamicClientVerifier")
            .field("store", &self.store)
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl DynamicClientVerifier {
    pub fn new(store: Arc<dyn TrustStore>, mandatory: bool, provider: &CryptoProvider) -> Self {
        Self {
            store,
            mandatory,
            algorithms: provider.signature_verification_algorithms,
            cache: Mutex::new(None),
        }
    }

    fn anchors(&self) -> (Arc<[TrustedCa]>, Arc<Vec<TrustAnchor<'static>>>) {
        let cas = self.store.trusted_cas();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = cache.as_ref() {
            let same = Arc::ptr_eq(&cached.cas, &cas)
                || (cached.cas.len() == cas.len()
                    && cached
                        .cas
                        .iter()
                        .zip(cas.iter())
                        .all(|(a, b)| a.id() == b.id()));
            if same {
                return (cached.cas.clone(), cached.anchors.clone());
            }
        }
        let anchors = Arc::new(cas.iter().map(|ca| ca.anchor().clone()).collect::<Vec<_>>());
        *cache = Some(Anchors {
            cas: cas.clone(),
            anchors: anchors.clone(),
        });
        (cas, anchors)
    }
}

fn to_rustls(e: CertificateError) -> rustls::Error {
    use rustls::CertificateError as R;
    rustls::Error::InvalidCertificate(match e {
        CertificateError::Expired { .. } => R::Expired,
        CertificateError::NotYetValid { .. } => R::NotValidYet,
        CertificateError::UnknownIssuer => R::UnknownIssuer,
        CertificateError::WrongUsage => R::InvalidPurpose,
        CertificateError::Revoked => R::Revoked,
        CertificateError::BadSignature => R::BadSignature,
        CertificateError::Malformed(_) => R::BadEncoding,
        CertificateError::Invalid(other) => R::Other(rustls::OtherError(Arc::new(other))),
    })
}

impl ClientCertVerifier for DynamicClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    /// No CA names are sent: the set changes at run time and this method must return a
    /// borrowed slice. Hints are optional in TLS 1.2 and 1.3, and clients holding one
    /// certificate (rustls, OpenSSL, mbedTLS device stacks) send it regardless.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let (cas, anchors) = self.anchors();
        let verdict =
            verify_client_chain(end_entity, intermediates, &anchors, now, self.algorithms.all)
                .and_then(|index| {
                    let id = certificate_id(end_entity);
                    if self.store.is_revoked(&id) {
                        Err(CertificateError::Revoked)
                    } else {
                        tracing::trace!(certificate_id = %id, ca_id = %cas[index].id(), "client certificate verified");
                        Ok(())
                    }
                });
        match verdict {
            Ok(()) => Ok(ClientCertVerified::assertion()),
            Err(e) => {
                tracing::debug!(error = %e, "client certificate refused");
                Err(to_rustls(e))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
