//! Retention: executions past their `time_to_live` are purged ([`Expiry::Purge`]) or expire
//! by themselves ([`Expiry::Ttl`]).

use std::sync::Arc;
use std::time::Duration;

use fleetcmd_domain::ports::{Clock, ExecutionQuery, ExecutionWrite, ReadModel};
use fleetcmd_domain::{CommandId, Execution, ExecutionStatus, Target, TimestampMs};

use super::{Capabilities, Expiry, commit_next, execution, get_execution, listed, moved, start};
use crate::clock::SystemClock;
use crate::conformance::{WAIT, within};

/// The executions of one retention check, all of command `cmd`.
struct Retention {
    prefix: String,
    cmd: CommandId,
    target: Target,
    base: TimestampMs,
}

impl Retention {
    /// A retention check of a store that expires executions `how`, or `None` (with a skip
    /// line) for a store that does it the other way.
    fn of(caps: Capabilities, how: Expiry) -> Option<Self> {
        if caps.expiry != how {
            println!("skipped: the store expires executions by {:?}", caps.expiry);
            return None;
        }
        let (run, base) = start("rm");
        Some(Self {
            prefix: format!("{run}-ttl-"),
            cmd: CommandId::parse(format!("{run}-ttl")).expect("id"),
            target: Target::thing(format!("{run}-ttl-thing")).expect("target"),
            base,
        })
    }

    /// An execution `name` kept until `time_to_live`, finished 1.5 s before the check when it
    /// expired before it started.
    fn execution(&self, name: &str, time_to_live: TimestampMs) -> Execution {
        let id = format!("{}{name}", self.prefix);
        let mut e = if time_to_live <= self.base {
            let e = execution(&id, &self.cmd, &self.target, self.base - 2000);
            moved(e, ExecutionStatus::Succeeded, Some(self.base - 1500), 1)
        } else {
            execution(&id, &self.cmd, &self.target, self.base)
        };
        e.time_to_live = time_to_live;
        e
    }

    /// The ids of the check's executions a listing by command returns.
    async fn listed(&self, store: &dyn ReadModel, ascending: bool) -> Vec<String> {
        let q = ExecutionQuery {
            command_id: Some(self.cmd.clone()),
            ascending,
            page_size: 10,
            ..ExecutionQuery::default()
        };
        listed(store, &self.prefix, &q).await
    }
}

async fn upsert(store: &dyn ReadModel, executions: &[&Execution]) {
    let writes = executions
        .iter()
        .map(|e| ExecutionWrite::Upsert((*e).clone()))
        .collect();
    commit_next(store, Vec::new(), writes).await;
}

/// [`Expiry::Purge`]: `purge_expired(now)` removes, and counts, executions whose
/// `time_to_live` is before `now` (not at it), from gets and listings.
pub async fn expired_executions_are_purged(store: Arc<dyn ReadModel>, caps: Capabilities) {
    let Some(r) = Retention::of(caps, Expiry::Purge) else {
        return;
    };
    let store = &*store;
    let old = r.execution("old", r.base - 1);
    let edge = r.execution("edge", r.base);
    let young = r.execution("young", r.base + super::YEAR_MS);
    upsert(store, &[&old, &edge, &young]).await;
    let n = within("purge_expired", store.purge_expired(r.base))
        .await
        .expect("purge_expired");
    assert!(n >= 1, "purge_expired must count what it removed, got {n}");
    assert_eq!(
        get_execution(store, &old).await,
        None,
        "an execution whose time_to_live is before now is purged"
    );
    assert_eq!(
        get_execution(store, &edge).await,
        Some(edge),
        "time_to_live == now is not expired yet"
    );
    assert_eq!(
        get_execution(store, &young).await,
        Some(young.clone()),
        "a live execution survives the purge"
    );
    let left = r.listed(store, true).await;
    assert!(
        !left.iter().any(|id| id == old.execution_id.as_str()),
        "a purged execution leaves the listings"
    );
    assert_eq!(left.len(), 2);
}

/// [`Expiry::Ttl`]: an execution already expired when written is never readable or listed, a
/// live one is; `purge_expired` succeeds with nothing left to purge.
pub async fn expired_executions_are_never_readable(store: Arc<dyn ReadModel>, caps: Capabilities) {
    let Some(r) = Retention::of(caps, Expiry::Ttl) else {
        return;
    };
    let store = &*store;
    let old = r.execution("old", r.base - 1);
    let young = r.execution("young", r.base + super::YEAR_MS);
    upsert(store, &[&old, &young]).await;
    assert_eq!(
        get_execution(store, &old).await,
        None,
        "an execution whose time_to_live has passed is never readable"
    );
    assert_eq!(
        get_execution(store, &young).await,
        Some(young.clone()),
        "a live execution is readable"
    );
    let ids = r.listed(store, false).await;
    assert!(
        !ids.iter().any(|id| id == old.execution_id.as_str()),
        "an expired execution is not listed"
    );
    assert!(ids.iter().any(|id| id == young.execution_id.as_str()));
    within("purge_expired", store.purge_expired(SystemClock.now_ms()))
        .await
        .expect("purge_expired succeeds even with nothing left to purge");
}

/// [`Expiry::Ttl`]: a live execution stays readable until its `time_to_live`, then
/// disappears from reads and listings without any purge.
pub async fn executions_expire_by_themselves_at_their_time_to_live(
    store: Arc<dyn ReadModel>,
    caps: Capabilities,
) {
    let Some(r) = Retention::of(caps, Expiry::Ttl) else {
        return;
    };
    let store = &*store;
    let young = r.execution("young", r.base + super::YEAR_MS);
    // TTLs have a granularity of seconds: this one lives for one or two.
    let soon_ttl = SystemClock.now_ms() + 1500;
    let soon = moved(
        r.execution("soon", soon_ttl),
        ExecutionStatus::InProgress,
        None,
        1,
    );
    upsert(store, &[&young, &soon]).await;
    // Wait (bounded) for the short-lived one to expire by itself.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = get_execution(store, &soon).await;
        let now = SystemClock.now_ms();
        match got {
            None => {
                // A second of slack for the server's clock.
                assert!(
                    now + 1000 >= soon_ttl,
                    "an execution must stay readable until its time_to_live ({} ms early)",
                    soon_ttl - now
                );
                break;
            }
            Some(e) => assert_eq!(e, soon),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an execution must expire by itself after its time_to_live"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        r.listed(store, false).await,
        vec![young.execution_id.as_str().to_owned()],
        "an expired execution leaves the listings too"
    );
}
