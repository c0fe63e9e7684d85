//! The owner's spans, when trace export is on (otherwise every function returns
//! `Span::none()` without reading any context). One execution is one trace: inputs about an
//! execution join the trace it started under, linked to their caller's context.

use fleetcmd_domain::execution::ExecutionInput;
use fleetcmd_domain::ids::ExecutionId;
use fleetcmd_domain::protocol::ShardRequest;
use fleetcmd_telemetry::context as trace_context;
use tracing::Span;

use super::state::ShardState;

/// The span of one input. A start or command input is parented on its caller's context (the
/// bus headers). An execution input joins the trace its execution started under, linked to
/// its caller's context (a device update's edge span): devices send no trace context.
pub fn input_span(
    state: &ShardState,
    shard: u32,
    req: &ShardRequest,
    headers: &[(String, String)],
) -> Span {
    if !trace_context::enabled() {
        return Span::none();
    }
    let caller = trace_context::find(headers);
    match req {
        ShardRequest::Execution {
            execution_id,
            input,
            ..
        } => {
            let name = match input {
                ExecutionInput::Report { .. } => "shard.owner report",
                ExecutionInput::CloudTimeout => "shard.owner timeout",
                ExecutionInput::Cancel { .. } => "shard.owner cancel",
                ExecutionInput::Delete => "shard.owner delete",
            };
            execution_span(state, shard, name, execution_id, caller)
        }
        ShardRequest::Start(_)
        | ShardRequest::Command { .. }
        | ShardRequest::Thing { .. }
        | ShardRequest::Credential { .. }
        | ShardRequest::Ca { .. }
        | ShardRequest::Group { .. }
        | ShardRequest::Rollout { .. }
        | ShardRequest::ReadRollout { .. }
        | ShardRequest::ListRollouts { .. }
        | ShardRequest::DeliverPending { .. } => {
            let name = match req {
                ShardRequest::Start(_) => "shard.owner start",
                ShardRequest::Thing { .. } => "shard.owner thing",
                ShardRequest::Credential { .. } => "shard.owner credential",
                ShardRequest::Ca { .. } => "shard.owner ca",
                ShardRequest::Group { .. } => "shard.owner group",
                ShardRequest::Rollout { .. } => "shard.owner rollout",
                ShardRequest::ReadRollout { .. } => "shard.owner read rollout",
                ShardRequest::ListRollouts { .. } => "shard.owner list rollouts",
                ShardRequest::DeliverPending { .. } => "shard.owner deliver pending",
                _ => "shard.owner command",
            };
            let span = tracing::info_span!(
                "shard.owner",
                otel.name = name,
                otel.kind = "server",
                shard,
                input = fleetcmd_service_kit::input_name(req),
            );
            if let Some(parent) = caller {
                trace_context::set_parent(&span, parent);
            }
            span
        }
    }
}

/// A span in the trace of execution `id` (or of `caller` when the execution has none).
pub fn execution_span(
    state: &ShardState,
    shard: u32,
    name: &'static str,
    id: &ExecutionId,
    caller: Option<&str>,
) -> Span {
    if !trace_context::enabled() {
        return Span::none();
    }
    let stored = state.trace(id);
    let Some(parent) = stored.or(caller) else {
        return Span::none();
    };
    let span = tracing::info_span!(
        "shard.owner",
        otel.name = name,
        otel.kind = "server",
        shard,
        execution_id = %id,
    );
    trace_context::set_parent(&span, parent);
    if let (Some(_), Some(caller)) = (stored, caller) {
        trace_context::add_link(&span, caller);
    }
    span
}

/// The span of a delivery handed to the edge, in the execution's trace; its context goes
/// into the bus headers.
pub fn delivery_span(
    shard: u32,
    trace: Option<&str>,
    topic: &str,
    headers: &mut Vec<(String, String)>,
) -> Span {
    match trace {
        Some(parent) if trace_context::enabled() => {
            let span = tracing::info_span!(
                "shard.deliver",
                otel.kind = "producer",
                shard,
                topic = %topic,
            );
            trace_context::set_parent(&span, parent);
            trace_context::inject(&span, headers);
            span
        }
        _ => Span::none(),
    }
}

/// The span of an event projected inline (by the owner, in its append), parented on the
/// envelope's trace; none when untraced.
pub fn projection_span(shard: u32, env: &fleetcmd_domain::event::EventEnvelope) -> Span {
    match &env.trace {
        Some(parent) if trace_context::enabled() => {
            let span = tracing::info_span!(
                "shard.project",
                otel.kind = "internal",
                shard,
                seq = env.seq,
                event = env.event.name(),
            );
            trace_context::set_parent(&span, parent);
            span
        }
        _ => Span::none(),
    }
}
