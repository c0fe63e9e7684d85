//! Reaching a shard's owner over the bus: request/reply on the shard's subject, with a fast,
//! retryable "no owner" while a shard moves.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetcmd_contracts::codec;
use fleetcmd_domain::execution::ExecutionInput;
use fleetcmd_domain::ports::{Bus, BusMessage, PortError};
use fleetcmd_domain::protocol::{ShardReply, ShardRequest, shard_subject};
use fleetcmd_domain::shard::shard_of;
use tonic::Status;
use tracing::Instrument as _;

/// Why a call to a shard owner failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No owner answered within the retry budget (shard moving, owner starting): retry later.
    #[error("shard {shard} is unavailable ({why}); retry")]
    Unavailable { shard: u32, why: String },
    /// The owner did not answer in time; the outcome is unknown.
    #[error(
        "shard {shard} did not answer within {timeout_ms} ms; the outcome is unknown, retry with the same client token"
    )]
    Timeout { shard: u32, timeout_ms: u64 },
    /// The bus or the reply was broken.
    #[error("shard {shard}: {why}")]
    Internal { shard: u32, why: String },
}

/// Sends inputs to shard owners: request/reply on the shard's subject, retrying with
/// backoff while no owner answers (a fast, retryable condition).
#[derive(Clone)]
pub struct ShardClient {
    bus: Arc<dyn Bus>,
    shards: u32,
    /// How long one request may wait for its owner's answer.
    pub request_timeout: Duration,
    /// How long to keep retrying while the shard has no owner.
    pub retry_budget: Duration,
}

impl ShardClient {
    pub fn new(bus: Arc<dyn Bus>, shards: u32) -> Self {
        Self {
            bus,
            shards,
            request_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(2),
        }
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard that owns a routing key.
    pub fn shard_of(&self, key: &str) -> u32 {
        shard_of(key, self.shards)
    }

    /// Sends `request` to its shard's owner and returns the owner's reply. `Unavailable`
    /// replies and missing owners are retried within the retry budget.
    pub async fn call(&self, request: &ShardRequest) -> Result<ShardReply, CallError> {
        let shard = self.shard_of(&request.routing_key());
        if !fleetcmd_telemetry::context::enabled() {
            return self.call_shard(shard, request, Vec::new()).await;
        }
        // The owner parents its work on this span: its context travels in the bus headers.
        let span = tracing::info_span!(
            "shard.request",
            otel.kind = "client",
            shard,
            input = input_name(request),
        );
        let mut headers = Vec::with_capacity(1);
        fleetcmd_telemetry::context::inject(&span, &mut headers);
        self.call_shard(shard, request, headers)
            .instrument(span)
            .await
    }

    /// [`Self::call`] to shard `shard` itself (for a request that is about a shard, not a key).
    pub async fn call_on(
        &self,
        shard: u32,
        request: &ShardRequest,
    ) -> Result<ShardReply, CallError> {
        self.call_shard(shard, request, Vec::new()).await
    }

    async fn call_shard(
        &self,
        shard: u32,
        request: &ShardRequest,
        headers: Vec<(String, String)>,
    ) -> Result<ShardReply, CallError> {
        let payload = Bytes::from(codec::encode_shard_request(request));
        let subject = shard_subject(shard);
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(2);
        loop {
            let why = match self
                .bus
                .request(
                    BusMessage {
                        headers: headers.clone(),
                        ..BusMessage::new(subject.clone(), payload.clone())
                    },
                    self.request_timeout,
                )
                .await
            {
                Ok(reply) => match codec::decode_shard_reply(&reply.payload) {
                    Ok(ShardReply::Unavailable(why)) => why,
                    Ok(reply) => return Ok(reply),
                    Err(e) => {
                        return Err(CallError::Internal {
                            shard,
                            why: format!("malformed reply: {e}"),
                        });
                    }
                },
                Err(PortError::Timeout(_)) => {
                    return Err(CallError::Timeout {
                        shard,
                        timeout_ms: self.request_timeout.as_millis() as u64,
                    });
                }
                Err(e) if e.is_retryable() => e.to_string(),
                Err(e) => {
                    return Err(CallError::Internal {
                        shard,
                        why: e.to_string(),
                    });
                }
            };
            if started.elapsed() + backoff > self.retry_budget {
                return Err(CallError::Unavailable { shard, why });
            }
            tracing::debug!(shard, %why, "shard unavailable, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }
}

/// A short name of a shard input, for spans.
pub fn input_name(request: &ShardRequest) -> &'static str {
    match request {
        ShardRequest::Start(_) => "start",
        ShardRequest::Execution { input, .. } => match input {
            ExecutionInput::Report { .. } => "report",
            ExecutionInput::CloudTimeout => "timeout",
            ExecutionInput::Cancel { .. } => "cancel",
            ExecutionInput::Delete => "delete",
        },
        ShardRequest::Command { .. } => "command",
        ShardRequest::Thing { .. } => "thing",
        ShardRequest::Credential { .. } => "credential",
        ShardRequest::Ca { .. } => "ca",
        ShardRequest::Group { .. } => "group",
        ShardRequest::Rollout { .. } => "rollout",
        ShardRequest::ReadRollout { .. } => "read rollout",
        ShardRequest::ListRollouts { .. } => "list rollouts",
        ShardRequest::DeliverPending { .. } => "deliver pending",
    }
}

/// A failed call to a shard owner as a gRPC status.
pub fn call_status(e: CallError) -> Status {
    match e {
        CallError::Unavailable { .. } | CallError::Timeout { .. } => {
            Status::unavailable(e.to_string())
        }
        CallError::Internal { .. } => Status::internal(e.to_string()),
    }
}

/// A reply the caller did not expect (a bug if it happens).
pub fn unexpected(reply: &ShardReply) -> Status {
    tracing::error!(?reply, "unexpected shard reply");
    Status::internal("unexpected reply from the shard owner")
}
