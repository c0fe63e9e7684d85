//! Shard owners' snapshots as protobuf (`fleetcmd.internal.v1.ShardSnapshot`), versioned.

use fleetcmd_domain::event::{ShardSnapshot, SnapshotToken};

use super::*;

/// The snapshot format this version writes (and the only one it reads).
pub const SNAPSHOT_VERSION: u32 = 1;

/// A shard owner's snapshot.
pub fn encode_snapshot(s: &ShardSnapshot) -> Vec<u8> {
    ipb::ShardSnapshot {
        version: SNAPSHOT_VERSION,
        next_offset: s.next_offset,
        executions: s
            .executions
            .iter()
            .map(|(e, last_offset)| ipb::SnapshotExecution {
                execution: Some(execution_to_ipb(e)),
                last_offset: *last_offset,
            })
            .collect(),
        undelivered: s
            .undelivered
            .iter()
            .map(|(id, p)| ipb::SnapshotPayload {
                execution_id: id.as_str().to_owned(),
                payload: Some(p.clone().into()),
            })
            .collect(),
        traces: s
            .traces
            .iter()
            .map(|(id, t)| ipb::SnapshotTrace {
                execution_id: id.as_str().to_owned(),
                traceparent: t.clone(),
            })
            .collect(),
        tokens: s
            .tokens
            .iter()
            .map(|t| ipb::SnapshotToken {
                target: Some((&t.target).into()),
                token: t.token.clone(),
                execution_id: t.execution_id.as_str().to_owned(),
                fingerprint: t.fingerprint,
                memory_until_ms: t.memory_until,
                offset: t.offset,
            })
            .collect(),
        commands: s
            .commands
            .iter()
            .map(|(c, seq)| ipb::SnapshotCommand {
                command: Some(command_to_ipb(c)),
                seq: *seq,
            })
            .collect(),
        things: s
            .things
            .iter()
            .map(|(t, seq)| ipb::SnapshotThing {
                thing: Some(things::thing_to_ipb(t)),
                seq: *seq,
            })
            .collect(),
        credentials: s
            .credentials
            .iter()
            .map(credentials::credentials_to_ipb)
            .collect(),
        cas: s.cas.iter().map(cas::ca_to_ipb).collect(),
        groups: s.groups.iter().map(groups::group_to_ipb).collect(),
        rollouts: s
            .rollouts
            .iter()
            .map(|(r, seq)| rollouts::snapshot_to_ipb(r, *seq))
            .collect(),
    }
    .encode_to_vec()
}

/// The inverse of [`encode_snapshot`]; a snapshot of another format version is refused.
pub fn decode_snapshot(bytes: &[u8]) -> Result<ShardSnapshot> {
    let s: ipb::ShardSnapshot = decode("shard snapshot", bytes)?;
    if s.version != SNAPSHOT_VERSION {
        return Err(ValidationError::new(
            "snapshot.version",
            format!("unknown snapshot version {}", s.version),
        )
        .into());
    }
    Ok(ShardSnapshot {
        next_offset: s.next_offset,
        executions: s
            .executions
            .into_iter()
            .map(|e| {
                let execution = execution_from_ipb(required("snapshot.execution", e.execution)?)?;
                Ok((execution, e.last_offset))
            })
            .collect::<Result<_>>()?,
        undelivered: s
            .undelivered
            .into_iter()
            .map(|u| {
                Ok((
                    ExecutionId::parse(u.execution_id)?,
                    required("snapshot.payload", u.payload)?.into(),
                ))
            })
            .collect::<Result<_>>()?,
        traces: s
            .traces
            .into_iter()
            .map(|t| Ok((ExecutionId::parse(t.execution_id)?, t.traceparent)))
            .collect::<Result<_>>()?,
        tokens: s
            .tokens
            .into_iter()
            .map(|t| {
                Ok(SnapshotToken {
                    target: target_from(t.target)?,
                    token: t.token,
                    execution_id: ExecutionId::parse(t.execution_id)?,
                    fingerprint: t.fingerprint,
                    memory_until: t.memory_until_ms,
                    offset: t.offset,
                })
            })
            .collect::<Result<_>>()?,
        commands: s
            .commands
            .into_iter()
            .map(|c| {
                Ok((
                    command_from_ipb(required("snapshot.command", c.command)?)?,
                    c.seq,
                ))
            })
            .collect::<Result<_>>()?,
        things: s
            .things
            .into_iter()
            .map(|t| {
                Ok((
                    things::thing_from_ipb(required("snapshot.thing", t.thing)?)?,
                    t.seq,
                ))
            })
            .collect::<Result<_>>()?,
        credentials: s
            .credentials
            .into_iter()
            .map(credentials::credentials_from_ipb)
            .collect::<Result<_>>()?,
        cas: s
            .cas
            .into_iter()
            .map(cas::ca_from_ipb)
            .collect::<Result<_>>()?,
        groups: s
            .groups
            .into_iter()
            .map(groups::group_from_ipb)
            .collect::<Result<_>>()?,
        rollouts: s
            .rollouts
            .into_iter()
            .map(rollouts::snapshot_from_ipb)
            .collect::<Result<_>>()?,
    })
}
