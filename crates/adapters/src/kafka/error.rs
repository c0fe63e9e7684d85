//! The Kafka adapters' errors, and how they map onto [`PortError`] (whether a retry may help).

use fleetcmd_domain::ports::PortError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A failure of a Kafka adapter. Converted to [`PortError`] at the port boundary, keeping
/// whether a retry may help (see [`Error::is_retryable`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A librdkafka call failed; the error code says whether retrying may help.
    #[error("kafka {op}: {source}")]
    Client {
        op: String,
        #[source]
        source: KafkaError,
    },
    /// The broker answered a request with an error code.
    #[error("kafka {op}: {code}")]
    Broker { op: String, code: RDKafkaErrorCode },
    /// The topic exists with another partition count.
    #[error(
        "topic {topic} has {actual} partitions but {expected} were asked for; \
         the partition count is fixed for the life of the log"
    )]
    PartitionCount {
        topic: String,
        expected: u32,
        actual: usize,
    },
    /// A partition outside the topic.
    #[error("partition {partition} out of range (topic {topic} has {partitions})")]
    PartitionOutOfRange {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    /// The records of one append did not land at contiguous offsets (another producer wrote
    /// between them): the append is reported as failed and the caller rebuilds.
    #[error("append to partition {partition} was split by other records: offsets {offsets:?}")]
    NotContiguous { partition: u32, offsets: Vec<i64> },
    /// A read met an offset it did not expect (a gap, or a record that cannot be decoded).
    #[error("partition {partition}: {detail}")]
    Corrupt { partition: u32, detail: String },
    /// An operation did not finish in time; its outcome is unknown.
    #[error("kafka {0}: timed out")]
    Timeout(String),
    /// Settings that cannot work (empty topic, zero partitions).
    #[error("kafka misconfigured: {0}")]
    Config(String),
    /// A blocking task panicked or was cancelled.
    #[error("kafka background task failed: {0}")]
    Task(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps a librdkafka error of operation `op`.
pub(super) fn client(op: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    let op = op.into();
    move |source| Error::Client { op, source }
}

/// The error code of a client error, including admin results (which rdkafka leaves out of
/// `rdkafka_error_code`).
fn code_of(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    match e {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    }
}

/// Codes whose operation timed out (outcome unknown).
fn is_timeout_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageTimedOut | C::OperationTimedOut | C::RequestTimedOut | C::TimedOutQueue
    )
}

/// Codes after which the same request may succeed later: the broker or the leader is not
/// reachable or not ready, a rebalance or a producer reset is in progress.
fn is_transient_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    is_timeout_code(code)
        || matches!(
            code,
            C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::Resolve
                | C::BrokerDestroy
                | C::DestroyBroker
                | C::QueueFull
                | C::WaitingForCoordinator
                | C::Retry
                | C::PurgeQueue
                | C::PurgeInflight
                | C::Fatal
                | C::Interrupted
                | C::UnknownTopicOrPartition
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::BrokerNotAvailable
                | C::ReplicaNotAvailable
                | C::NetworkException
                | C::CoordinatorLoadInProgress
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::RebalanceInProgress
                | C::KafkaStorageError
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::OffsetNotAvailable
                | C::PreferredLeaderNotAvailable
                | C::ThrottlingQuotaExceeded
                | C::OutOfOrderSequenceNumber
                | C::UnknownProducerId
                | C::InvalidProducerEpoch
                | C::ProducerFenced
        )
}

impl Error {
    /// Whether retrying the operation may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Client { source, .. } => code_of(source).is_some_and(is_transient_code),
            Self::Broker { code, .. } => is_transient_code(*code),
            Self::NotContiguous { .. } | Self::Timeout(_) => true,
            Self::PartitionCount { .. }
            | Self::PartitionOutOfRange { .. }
            | Self::Corrupt { .. }
            | Self::Config(_)
            | Self::Task(_) => false,
        }
    }

    /// A partition's leadership is moving (created a moment ago, a broker restarting).
    pub(super) fn is_leadership_change(&self) -> bool {
        use RDKafkaErrorCode as C;
        let code = match self {
            Self::Client { source, .. } => code_of(source),
            Self::Broker { code, .. } => Some(*code),
            _ => None,
        };
        matches!(
            code,
            Some(C::NotLeaderForPartition | C::LeaderNotAvailable | C::UnknownTopicOrPartition)
        )
    }

    pub(super) fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Client { source, .. } => code_of(source).is_some_and(is_timeout_code),
            Self::Broker { code, .. } => is_timeout_code(*code),
            _ => false,
        }
    }
}

impl From<Error> for PortError {
    fn from(e: Error) -> Self {
        if e.is_timeout() {
            PortError::Timeout(e.to_string())
        } else if e.is_retryable() {
            PortError::Unavailable(e.to_string())
        } else if matches!(e, Error::Corrupt { .. }) {
            PortError::Corrupt(e.to_string())
        } else {
            PortError::Backend(e.to_string())
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Task(e.to_string())
    }
}

/// An append failure whose outcome is unknown: always retryable.
pub(super) fn retryable(e: Error) -> PortError {
    if e.is_timeout() {
        PortError::Timeout(e.to_string())
    } else {
        PortError::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_whether_a_retry_may_help() {
        let down = Error::Client {
            op: "appending".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown),
        };
        assert!(matches!(PortError::from(down), PortError::Unavailable(_)));
        let late = Error::Client {
            op: "appending".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        };
        assert!(matches!(PortError::from(late), PortError::Timeout(_)));
        let count = Error::PartitionCount {
            topic: "t".into(),
            expected: 4,
            actual: 3,
        };
        assert!(matches!(PortError::from(count), PortError::Backend(m) if m.contains('4')));
        let gap = Error::Corrupt {
            partition: 1,
            detail: "gap".into(),
        };
        assert!(matches!(PortError::from(gap), PortError::Corrupt(_)));
        let too_big = Error::Client {
            op: "appending".into(),
            source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        };
        assert!(!too_big.is_retryable());
        assert!(
            retryable(too_big).is_retryable(),
            "an append's unknown outcome is retryable"
        );
    }
}
