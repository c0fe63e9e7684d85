//! How driver errors map onto [`PortError`] (whether a retry may help), and the JSON and
//! integer conversions of stored values.

use fleetcmd_domain::ports::{PortError, PortResult};
use scylla::errors::{DbError, ExecutionError, PrepareError, RequestAttemptError};

fn db_error_is_retryable(e: &DbError) -> bool {
    matches!(
        e,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::RateLimitReached { .. }
    )
}

fn attempt_error(context: &str, e: &RequestAttemptError) -> PortError {
    let msg = format!("scylla: {context}: {e}");
    match e {
        RequestAttemptError::DbError(DbError::ReadTimeout { .. }, _)
        | RequestAttemptError::DbError(DbError::WriteTimeout { .. }, _) => PortError::Timeout(msg),
        RequestAttemptError::DbError(db, _) if db_error_is_retryable(db) => {
            PortError::Unavailable(msg)
        }
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => PortError::Unavailable(msg),
        _ => PortError::Backend(msg),
    }
}

/// Maps a driver error to a port error that says whether retrying may help.
pub(super) fn exec_error(context: &str, e: ExecutionError) -> PortError {
    match &e {
        ExecutionError::LastAttemptError(a) => attempt_error(context, a),
        ExecutionError::RequestTimeout(_) => PortError::Timeout(format!("scylla: {context}: {e}")),
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => {
            PortError::Unavailable(format!("scylla: {context}: {e}"))
        }
        _ => PortError::Backend(format!("scylla: {context}: {e}")),
    }
}

pub(super) fn prepare_error(cql: &str, e: PrepareError) -> PortError {
    match &e {
        PrepareError::ConnectionPoolError(_) => {
            PortError::Unavailable(format!("scylla: preparing `{cql}`: {e}"))
        }
        _ => PortError::Backend(format!("scylla: preparing `{cql}`: {e}")),
    }
}

pub(super) fn rows_error(context: &str, e: impl std::fmt::Display) -> PortError {
    PortError::Corrupt(format!("scylla: {context}: unexpected result: {e}"))
}

pub(super) fn encode_json<T: serde::Serialize>(what: &str, id: &str, v: &T) -> PortResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| PortError::Backend(format!("encoding {what} {id}: {e}")))
}

pub(super) fn decode_json<T: serde::de::DeserializeOwned>(
    what: &str,
    data: &[u8],
) -> PortResult<T> {
    serde_json::from_slice(data).map_err(|e| PortError::Corrupt(format!("{what}: {e}")))
}

pub(super) fn to_i64(v: u64, what: &str) -> PortResult<i64> {
    i64::try_from(v)
        .map_err(|_| PortError::Backend(format!("{what} {v} exceeds the CQL bigint range")))
}
