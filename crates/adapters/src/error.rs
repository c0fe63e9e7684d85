//! The adapters' errors, and how they map onto the ports' [`PortError`].

use fleetcmd_domain::ports::PortError;

/// A failure inside an adapter. Port methods convert it to [`PortError`], which keeps the
/// retryable/not-retryable distinction.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite failed; busy/locked databases are retryable, everything else is not.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file system operation failed (not retryable: permissions, missing disk).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Stored data could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A value could not be encoded for storage (not retryable: a bug).
    #[error("encoding: {0}")]
    Encode(String),
    /// The store was opened with settings that contradict what it holds.
    #[error("misconfigured: {0}")]
    Config(String),
    /// A blocking task panicked or was cancelled (not retryable: a bug).
    #[error("background task failed: {0}")]
    Task(String),
    /// The embedded broker failed to start or stopped.
    #[error("mqtt broker: {0}")]
    Broker(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}

impl From<Error> for PortError {
    fn from(e: Error) -> Self {
        if e.is_retryable() {
            return PortError::Unavailable(e.to_string());
        }
        match e {
            Error::Corrupt(m) => PortError::Corrupt(m),
            Error::Sqlite(rusqlite::Error::FromSqlConversionFailure(..))
            | Error::Sqlite(rusqlite::Error::InvalidColumnType(..)) => {
                PortError::Corrupt(e.to_string())
            }
            other => PortError::Backend(other.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Task(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_retryable_and_corrupt_is_not() {
        let busy = Error::Sqlite(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ));
        assert!(busy.is_retryable());
        assert!(matches!(PortError::from(busy), PortError::Unavailable(_)));
        let corrupt = PortError::from(Error::Corrupt("bad json".into()));
        assert_eq!(corrupt, PortError::Corrupt("bad json".into()));
        assert!(!corrupt.is_retryable());
        let cfg = PortError::from(Error::Config("partitions".into()));
        assert!(matches!(cfg, PortError::Backend(m) if m.contains("partitions")));
    }
}
