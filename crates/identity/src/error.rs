//! The crate's error type: one enum, each variant naming what failed and where.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::certs::CertificateError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a CA or server-certificate file failed.
    #[error("{op} {path}: {source}")]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data directory holds half of a key pair (for example `ca.key` without `ca.pem`).
    /// fleetcmd refuses to replace it: devices may trust the half that is there.
    #[error(
        "{present} exists but {missing} does not: restore it, or remove both to create new ones"
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    /// PEM or DER input that is not what it should be (`what` names the input).
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// A device identity that is not `things/<name>` or `clients/<id>`, or whose name breaks
    /// the naming rules.
    #[error("invalid device identity {value:?}: {reason}")]
    InvalidIdentity { value: String, reason: &'static str },
    /// A certificate that does not verify against the trusted CAs.
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    /// Generating or signing a certificate, CSR or CRL failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused a configuration (for example a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The operating system's random number generator failed.
    #[error("random number generator: {0}")]
    Random(getrandom::Error),
    /// The proxy could not bind its public address.
    #[error("bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl ToString) -> Self {
        Self::Invalid {
            what,
            reason: reason.to_string(),
        }
    }
}
