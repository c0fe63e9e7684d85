//! The audit trail: one record per mutating API call and per credential change — who (the
//! policy caller's name, `anonymous` without a policy, `unauthenticated` when the call could
//! not say), what (the action), on which resource, and the result (`OK` or the gRPC code).
//!
//! Every record is a `tracing` event of target [`AUDIT_TARGET`] (so it lands in the logs,
//! JSON with `--log-json`) — at `info` for the control plane, at `debug` for the data plane
//! (starts and cancels, thousands a second: `RUST_LOG=fleetcmd::audit=debug` shows them) —
//! and, when a file is configured, a JSON line appended to it by a writer thread of its own
//! (every call, data plane included): handlers hand the line over and go on, the thread writes in
//! batches and flushes whenever it has caught up. Records are never dropped; a writer that
//! cannot keep up makes handlers wait at the channel's bound.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use fleetcmd_domain::policy::Action;
use tonic::Status;

/// The `tracing` target of audit records.
pub const AUDIT_TARGET: &str = "fleetcmd::audit";

/// Lines queued for the file before handlers wait.
const QUEUE: usize = 65_536;

/// How much of a caller-supplied resource name a record keeps.
const RESOURCE_MAX_CHARS: usize = 256;

/// Where audit records go besides the log.
#[derive(Clone, Debug, Default)]
pub struct AuditLog {
    file: Option<mpsc::SyncSender<String>>,
}

impl AuditLog {
    /// Records to the log only.
    pub fn log_only() -> Self {
        Self::default()
    }

    /// Records to the log and, appended as JSON lines, to `path` (created if missing, mode
    /// 0600 on Unix: records name callers and resources).
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options.open(path)?;
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("fleetcmd-audit".into())
            .spawn(move || write_lines(BufWriter::new(file), &rx, &shown))?;
        Ok(Self { file: Some(tx) })
    }

    /// Records one call.
    pub fn record<T>(
        &self,
        caller: &str,
        action: Action,
        resource: &str,
        result: &Result<T, Status>,
    ) {
        let resource = cut(resource);
        let (outcome, message) = match result {
            Ok(_) => ("OK", ""),
            Err(status) => (crate::convert::code_name(status.code()), status.message()),
        };
        if matches!(
            action,
            Action::StartCommandExecution | Action::CancelCommandExecution
        ) {
            tracing::debug!(target: AUDIT_TARGET, caller, action = action.name(), resource = %resource, result = outcome, "audit");
        } else {
            tracing::info!(target: AUDIT_TARGET, caller, action = action.name(), resource = %resource, result = outcome, "audit");
        }
        if let Some(file) = &self.file {
            let at_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let line = serde_json::json!({
                "at_ms": at_ms,
                "caller": caller,
                "action": action.name(),
                "resource": resource,
                "result": outcome,
                "message": cut(message),
            })
            .to_string();
            if file.send(line).is_err() {
                tracing::error!(target: AUDIT_TARGET, "the audit file writer stopped: a record is in the log only");
            }
        }
    }
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(RESOURCE_MAX_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// Writes lines as they come, flushing once the queue is drained (a burst is one write).
fn write_lines(mut out: BufWriter<std::fs::File>, rx: &mpsc::Receiver<String>, path: &str) {
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(line) = next {
            if let Err(e) = writeln!(out, "{line}") {
                tracing::error!(target: AUDIT_TARGET, path, error = %e, "writing the audit file failed");
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            tracing::error!(target: AUDIT_TARGET, path, error = %e, "flushing the audit file failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_reach_the_file_as_json_lines_in_order() {
        let dir = std::env::temp_dir().join(format!("fleetcmd-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let log = AuditLog::to_file(&path).unwrap();
        log.record(
            "ops",
            Action::CreateThing,
            "thing/lamp-1",
            &Ok::<(), Status>(()),
        );
        let denied: Result<(), Status> = Err(Status::permission_denied("caller \"lab\" may not"));
        log.record("lab", Action::DeleteThing, &"x".repeat(1000), &denied);
        drop(log);
        // The writer ends once every sender is gone; wait for its lines with a bound.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let lines = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.len() == 2 || std::time::Instant::now() > deadline {
                break lines;
            }
            std::thread::yield_now();
        };
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["caller"], "ops");
        assert_eq!(lines[0]["action"], "CreateThing");
        assert_eq!(lines[0]["resource"], "thing/lamp-1");
        assert_eq!(lines[0]["result"], "OK");
        assert_eq!(lines[1]["result"], "PERMISSION_DENIED");
        assert!(lines[1]["resource"].as_str().unwrap().chars().count() <= RESOURCE_MAX_CHARS + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
