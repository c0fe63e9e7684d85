//! Executions: round trips, the `seq` guard, batch gets, deletes, and the client-token
//! lookup.

use std::sync::Arc;

use fleetcmd_domain::ports::{ExecutionQuery, ExecutionWrite, ReadModel, TimeRange};
use fleetcmd_domain::{CommandId, Execution, ExecutionId, ExecutionStatus, Target};

use super::{Capabilities, commit_next, execution, get_execution, listed, moved, position, start};
use crate::conformance::within;

/// A command, a thing and one execution of them (`<run>-<name>-e`), created at the check's
/// start.
fn one_execution(name: &str) -> (String, CommandId, Target, Execution) {
    let (run, base) = start("rm");
    let cmd = CommandId::parse(format!("{run}-{name}")).expect("id");
    let target = Target::thing(format!("{run}-{name}-thing")).expect("target");
    let e = execution(&format!("{run}-{name}-e"), &cmd, &target, base);
    (run, cmd, target, e)
}

fn upserts(executions: &[&Execution]) -> Vec<ExecutionWrite> {
    executions
        .iter()
        .map(|e| ExecutionWrite::Upsert((*e).clone()))
        .collect()
}

/// A committed execution reads back equal, every field; an unknown one is `None`.
pub async fn executions_round_trip_every_field(store: Arc<dyn ReadModel>, _: Capabilities) {
    let store = &*store;
    let (run, _, _, e) = one_execution("seq");
    let v2 = moved(e, ExecutionStatus::InProgress, None, 2);
    commit_next(store, Vec::new(), upserts(&[&v2])).await;
    assert_eq!(
        get_execution(store, &v2).await,
        Some(v2.clone()),
        "a committed execution reads back equal, every field"
    );
    let missing = ExecutionId::parse(format!("{run}-nope")).expect("id");
    assert_eq!(
        within("get_execution", store.get_execution(&missing))
            .await
            .expect("get_execution"),
        None
    );
}

/// An upsert whose `seq` is below the stored one, in a later batch, changes nothing
/// (checked on stores with write timestamps; others still accept the batch).
pub async fn a_lower_seq_in_a_later_batch_changes_nothing(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (_, _, _, e) = one_execution("seq");
    let v2 = moved(e.clone(), ExecutionStatus::InProgress, None, 2);
    commit_next(store, Vec::new(), upserts(&[&v2])).await;
    // A lower seq with other data (what a lagging projector would replay) must lose. (An
    // equal seq carries the same event, one writer per partition: stores with write
    // timestamps may keep either copy of it.)
    let mut v1_other = e.clone();
    v1_other.status = ExecutionStatus::Failed;
    commit_next(store, Vec::new(), upserts(&[&e, &v1_other])).await;
    assert_eq!(
        get_execution(store, &v2).await,
        Some(v2.clone()),
        "an upsert whose seq is below the stored one must change nothing"
    );
}

/// Within one batch too, a lower `seq` after a higher one does not win; the batch's position
/// is recorded.
pub async fn a_lower_seq_after_a_higher_one_in_a_batch_changes_nothing(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (_, _, _, e) = one_execution("seq");
    let base = e.started_at;
    let v4 = moved(e, ExecutionStatus::Succeeded, Some(base + 10), 4);
    let mut v3 = v4.clone();
    v3.seq = 3;
    v3.status = ExecutionStatus::InProgress;
    let at = commit_next(store, Vec::new(), upserts(&[&v4, &v3])).await;
    assert_eq!(
        get_execution(store, &v4).await,
        Some(v4.clone()),
        "within a batch too, a lower seq after a higher one must not win"
    );
    assert_eq!(position(store).await, at);
}

/// `get_executions` returns the existing executions and leaves missing ones out; of nothing,
/// nothing.
pub async fn get_executions_leaves_missing_ones_out(store: Arc<dyn ReadModel>, _: Capabilities) {
    let store = &*store;
    let (run, cmd, target, e) = one_execution("seq");
    let other = execution(&format!("{run}-seq-f"), &cmd, &target, e.started_at);
    commit_next(store, Vec::new(), upserts(&[&e, &other])).await;
    let missing = ExecutionId::parse(format!("{run}-nope")).expect("id");
    let ids = [e.execution_id.clone(), missing, other.execution_id.clone()];
    let mut got = within("get_executions", store.get_executions(&ids))
        .await
        .expect("get_executions");
    got.sort_by(|a, b| a.execution_id.cmp(&b.execution_id));
    assert_eq!(
        got,
        vec![e, other],
        "get_executions returns the existing ones and leaves missing ones out"
    );
    assert!(
        within("get_executions", store.get_executions(&[]))
            .await
            .expect("get_executions of nothing")
            .is_empty()
    );
}

/// A deleted execution is gone from gets and from every listing; deleting a missing one is
/// fine.
pub async fn deleted_executions_leave_gets_and_listings(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (run, cmd, target, e) = one_execution("seq");
    let other = execution(&format!("{run}-seq-f"), &cmd, &target, e.started_at);
    commit_next(store, Vec::new(), upserts(&[&e, &other])).await;
    let missing = ExecutionId::parse(format!("{run}-nope")).expect("id");
    commit_next(
        store,
        Vec::new(),
        vec![
            ExecutionWrite::delete(e.execution_id.clone()),
            ExecutionWrite::delete(missing),
        ],
    )
    .await;
    assert_eq!(
        get_execution(store, &e).await,
        None,
        "a deleted execution is gone (deleting a missing one is fine)"
    );
    let q = ExecutionQuery {
        command_id: Some(cmd),
        page_size: 100,
        ..ExecutionQuery::default()
    };
    assert_eq!(
        listed(store, &run, &q).await,
        vec![other.execution_id.as_str().to_owned()],
        "a deleted execution leaves every listing"
    );
}

/// A delete that carries the execution's last state removes every row it had, even one
/// the store never saw: a lagging writer (a former projector of the partition) that upserts
/// the completed version after the delete brings back neither the execution nor a listing
/// row (checked on stores that keep tombstones; the others have one writer at a time).
pub async fn a_lagging_upsert_after_a_delete_brings_nothing_back(
    store: Arc<dyn ReadModel>,
    caps: Capabilities,
) {
    let store = &*store;
    let (run, cmd, _, e) = one_execution("lag");
    let done = moved(
        e.clone(),
        ExecutionStatus::Succeeded,
        Some(e.started_at + 10),
        3,
    );
    // The store holds the started version only; the completed one went to a writer that
    // lags behind.
    commit_next(store, Vec::new(), upserts(&[&e])).await;
    commit_next(
        store,
        Vec::new(),
        vec![ExecutionWrite::Delete {
            id: e.execution_id.clone(),
            last: Some(done.clone()),
        }],
    )
    .await;
    commit_next(store, Vec::new(), upserts(&[&done])).await;
    if !caps.tombstones {
        println!("not checked: the store has one writer at a time and keeps no tombstones");
        return;
    }
    assert_eq!(
        get_execution(store, &done).await,
        None,
        "an upsert after the delete must not bring the execution back"
    );
    let by_command = ExecutionQuery {
        command_id: Some(cmd.clone()),
        page_size: 100,
        ..ExecutionQuery::default()
    };
    let by_completion = ExecutionQuery {
        command_id: Some(cmd),
        completed: Some(TimeRange {
            after: None,
            before: None,
        }),
        page_size: 100,
        ..ExecutionQuery::default()
    };
    for q in [by_command, by_completion] {
        assert_eq!(
            listed(store, &run, &q).await,
            Vec::<String>::new(),
            "no listing row may come back after the delete ({q:?})"
        );
    }
}

async fn found(store: &dyn ReadModel, target: &Target, token: &str) -> Option<Execution> {
    within("find", store.find_execution_by_token(target, token))
        .await
        .expect("find_execution_by_token")
}

/// An execution with a client token (and one without), committed; returns its target, its
/// token and the execution.
async fn tokened(store: &dyn ReadModel) -> (Target, String, Execution) {
    let (run, cmd, target, mut e) = one_execution("tok");
    let token = format!("{run}-token");
    e.client_token = Some(token.clone());
    e.request_fingerprint = 0x5eed_f00d_dead_beef;
    let mut untokened = execution(&format!("{run}-tok-n"), &cmd, &target, e.started_at);
    untokened.client_token = None;
    commit_next(store, Vec::new(), upserts(&[&e, &untokened])).await;
    (target, token, e)
}

/// An execution is found by its target and client token, with every field (its request
/// fingerprint included); another target or another token finds nothing.
pub async fn executions_are_found_by_target_and_client_token(
    store: Arc<dyn ReadModel>,
    _: Capabilities,
) {
    let store = &*store;
    let (target, token, e) = tokened(store).await;
    assert_eq!(
        found(store, &target, &token).await,
        Some(e.clone()),
        "found by target and token, every field"
    );
    let other = Target::thing(format!("{}-other", target.id)).expect("target");
    for (t, tok, what) in [
        (&other, token.as_str(), "another target"),
        (&target, "no-such-token", "another token"),
    ] {
        assert_eq!(found(store, t, tok).await, None, "{what} finds nothing");
    }
}

/// A later status change keeps an execution findable by its token, with its new state.
pub async fn found_executions_have_their_latest_state(store: Arc<dyn ReadModel>, _: Capabilities) {
    let store = &*store;
    let (target, token, e) = tokened(store).await;
    let later = moved(e, ExecutionStatus::InProgress, None, 2);
    commit_next(store, Vec::new(), upserts(&[&later])).await;
    assert_eq!(
        found(store, &target, &token).await,
        Some(later),
        "the stored state, not the first one"
    );
}

/// A deleted execution is not found by its token any more.
pub async fn deleted_executions_are_not_found_by_token(store: Arc<dyn ReadModel>, _: Capabilities) {
    let store = &*store;
    let (target, token, e) = tokened(store).await;
    commit_next(
        store,
        Vec::new(),
        vec![ExecutionWrite::delete(e.execution_id.clone())],
    )
    .await;
    assert_eq!(
        found(store, &target, &token).await,
        None,
        "a deleted execution is not found"
    );
}
