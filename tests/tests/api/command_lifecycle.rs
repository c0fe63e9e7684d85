//! Commands: update, deprecate, restore and delete.

use std::time::{Duration, Instant};

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Env, Server, eventually, static_json_command, test_args, thing};
use pb::ExecutionStatus as St;
use tonic::Code;

use crate::{Result, given};

fn update(
    display_name: Option<&str>,
    description: Option<&str>,
    deprecated: Option<bool>,
) -> pb::UpdateCommandRequest {
    pb::UpdateCommandRequest {
        command_id: "reboot".into(),
        display_name: display_name.map(Into::into),
        description: description.map(Into::into),
        deprecated,
    }
}

/// The command `reboot` ("Reboot"), as created.
async fn given_reboot(name: &str) -> anyhow::Result<(Server, Registry, Dispatcher, pb::Command)> {
    let (server, mut reg, disp) = given(name, &[]).await?;
    reg.create_command(pb::CreateCommandRequest {
        display_name: "Reboot".into(),
        ..static_json_command("reboot", "{}")
    })
    .await?;
    let created = get_command(&mut reg, "reboot").await?;
    Ok((server, reg, disp, created))
}

// ---- update ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_the_names_and_keeps_the_payload() -> Result {
    let (server, mut reg, _, created) = given_reboot("update").await?;

    let r = reg
        .update_command(update(Some("Restart"), Some("Restarts it"), None))
        .await?
        .into_inner();

    assert_eq!(
        (
            r.command_id.as_str(),
            r.display_name.as_str(),
            r.description.as_str(),
            r.deprecated
        ),
        ("reboot", "Restart", "Restarts it", false)
    );
    assert!(ms(&r.last_updated_at) >= ms(&created.created_at));
    let c = get_command(&mut reg, "reboot").await?;
    assert_eq!(
        (c.display_name.as_str(), c.description.as_str()),
        ("Restart", "Restarts it")
    );
    assert_eq!(
        (c.last_updated_at, c.created_at),
        (r.last_updated_at, created.created_at)
    );
    assert_eq!(c.payload, created.payload, "the payload never changes");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_string_clears_a_text_and_an_unset_field_is_kept() -> Result {
    let (server, mut reg, _, _) = given_reboot("update-clear").await?;
    reg.update_command(update(Some("Restart"), Some("Restarts it"), None))
        .await?;

    let r = reg
        .update_command(update(None, Some(""), None))
        .await?
        .into_inner();

    assert_eq!(
        (r.display_name.as_str(), r.description.as_str()),
        ("Restart", "")
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_updates_are_refused_and_change_nothing() -> Result {
    let (server, mut reg, _, before) = given_reboot("update-invalid").await?;
    expect_invalid(
        reg.update_command(update(None, None, None)).await,
        "update",
        &["nothing to update"],
    );
    expect_invalid(
        reg.update_command(update(Some(&"n".repeat(65)), None, None))
            .await,
        "display_name",
        &["64"],
    );
    expect_invalid(
        reg.update_command(update(None, Some(&"n".repeat(2029)), None))
            .await,
        "description",
        &["2028"],
    );
    expect_invalid(
        reg.update_command(update(Some("tab\t"), None, None)).await,
        "display_name",
        &["control"],
    );
    let bad_id = pb::UpdateCommandRequest {
        command_id: "no such".into(),
        ..update(Some("x"), None, None)
    };
    expect_invalid(
        reg.update_command(bad_id).await,
        "command_id",
        &["[a-zA-Z0-9_-]+"],
    );
    assert_eq!(get_command(&mut reg, "reboot").await?, before);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_of_an_unknown_command_is_not_found() -> Result {
    let (server, mut reg, _) = given("update-unknown", &[]).await?;
    let ghost = pb::UpdateCommandRequest {
        command_id: "ghost".into(),
        ..update(Some("x"), None, None)
    };

    expect_code(reg.update_command(ghost).await, Code::NotFound, &["ghost"]);

    assert_no_command(&mut reg, "ghost").await;
    server.shutdown().await
}

// ---- deprecate and restore ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecated_command_is_readable_but_not_startable_or_editable() -> Result {
    let (server, mut reg, mut disp, before) = given_reboot("deprecate").await?;

    let r = reg
        .update_command(update(None, None, Some(true)))
        .await?
        .into_inner();

    assert!(r.deprecated);
    let deprecated = get_command(&mut reg, "reboot").await?;
    assert!(deprecated.deprecated && !deprecated.pending_deletion);
    assert!(
        ms(&deprecated.last_updated_at) >= ms(&before.last_updated_at),
        "the deprecation time shows in last_updated_at"
    );
    let s = expect_code(
        disp.start_command_execution(start_request("reboot", thing("t1")))
            .await,
        Code::FailedPrecondition,
        &["reboot", "deprecated"],
    );
    assert_eq!(error_reason(&s).as_deref(), Some("FAILED_PRECONDITION"));
    for edit in [
        update(Some("New"), None, None),
        update(None, Some("New"), None),
        update(Some("New"), None, Some(true)),
    ] {
        expect_code(
            reg.update_command(edit).await,
            Code::FailedPrecondition,
            &["deprecated", "restore"],
        );
    }
    assert_eq!(
        get_command(&mut reg, "reboot").await?,
        deprecated,
        "refused edits changed nothing"
    );
    assert_no_executions(&mut reg, "a refused start created an execution").await?;
    // Deprecating again is allowed (no edit).
    assert!(
        reg.update_command(update(None, None, Some(true)))
            .await?
            .into_inner()
            .deprecated
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_deprecated_command_makes_it_startable_again() -> Result {
    let (server, mut reg, mut disp, _) = given_reboot("restore").await?;
    reg.update_command(update(None, None, Some(true))).await?;

    // Restore, editing at the same time.
    let r = reg
        .update_command(update(Some("Reboot v2"), None, Some(false)))
        .await?
        .into_inner();

    assert_eq!(
        (r.display_name.as_str(), r.deprecated),
        ("Reboot v2", false)
    );
    let c = get_command(&mut reg, "reboot").await?;
    assert!(!c.deprecated);
    let summary = reg
        .list_commands(pb::ListCommandsRequest::default())
        .await?
        .into_inner()
        .commands;
    assert_eq!(
        (summary[0].display_name.as_str(), summary[0].deprecated),
        ("Reboot v2", false)
    );
    start(&mut disp, "reboot", thing("t1")).await?;
    server.shutdown().await
}

// ---- delete ---------------------------------------------------------------------------------

fn delete(id: &str) -> pb::DeleteCommandRequest {
    pb::DeleteCommandRequest {
        command_id: id.into(),
    }
}

/// `reboot` (with a running execution) and `other`; `reboot`'s deletion is scheduled.
struct Scheduled {
    server: Server,
    reg: Registry,
    disp: Dispatcher,
    running: String,
    deleted: pb::DeleteCommandResponse,
    /// The epoch ms just before and just after the delete call.
    called: (i64, i64),
}

async fn given_a_scheduled_deletion(name: &str) -> anyhow::Result<Scheduled> {
    let (server, mut reg, mut disp) = given(name, &["reboot", "other"]).await?;
    let running = start(&mut disp, "reboot", thing("t1")).await?;
    let before = now_ms();
    let deleted = reg.delete_command(delete("reboot")).await?.into_inner();
    Ok(Scheduled {
        server,
        reg,
        disp,
        running,
        deleted,
        called: (before, now_ms()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_a_live_command_schedules_it_one_deletion_wait_ahead() -> Result {
    let Scheduled {
        server,
        mut reg,
        deleted: r,
        called: (before, after),
        ..
    } = given_a_scheduled_deletion("delete-scheduled").await?;

    assert_eq!(r.status_code, 202);
    let at = ms(&r.deletion_scheduled_at);
    assert!(
        (before + 43_200_000..=after + 43_200_000).contains(&at),
        "scheduled 12 h ahead: {at}"
    );
    let c = get_command(&mut reg, "reboot").await?;
    assert!(c.pending_deletion && !c.deprecated);
    assert_eq!(c.deletion_scheduled_at, r.deletion_scheduled_at);
    let listed = reg
        .list_commands(pb::ListCommandsRequest::default())
        .await?
        .into_inner()
        .commands;
    let pending: Vec<(&str, bool)> = listed
        .iter()
        .map(|c| (c.command_id.as_str(), c.pending_deletion))
        .collect();
    assert_eq!(pending, vec![("other", false), ("reboot", true)]);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_pending_deletion_refuses_starts_updates_and_recreation() -> Result {
    let Scheduled {
        server,
        mut reg,
        mut disp,
        running,
        ..
    } = given_a_scheduled_deletion("delete-pending").await?;
    let c = get_command(&mut reg, "reboot").await?;
    let deprecate = pb::UpdateCommandRequest {
        command_id: "reboot".into(),
        deprecated: Some(true),
        ..Default::default()
    };

    expect_code(
        disp.start_command_execution(start_request("reboot", thing("t2")))
            .await,
        Code::FailedPrecondition,
        &["reboot", "pending deletion"],
    );
    expect_code(
        reg.update_command(deprecate).await,
        Code::FailedPrecondition,
        &["pending deletion"],
    );
    expect_code(
        reg.create_command(static_json_command("reboot", "{}"))
            .await,
        Code::AlreadyExists,
        &["reboot", "pending deletion"],
    );

    assert_eq!(
        get_command(&mut reg, "reboot").await?,
        c,
        "refused calls changed nothing"
    );
    // Running executions stay readable.
    assert_eq!(
        get_execution(&mut reg, &running).await?.status,
        St::Created as i32
    );
    let by_command = pb::ListCommandExecutionsRequest {
        command_id: "reboot".into(),
        ..Default::default()
    };
    assert_eq!(
        execution_ids(&list_all_executions(&mut reg, by_command).await?.0),
        vec![running.clone()]
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_again_keeps_the_schedule() -> Result {
    let Scheduled {
        server,
        mut reg,
        deleted: r,
        ..
    } = given_a_scheduled_deletion("delete-again").await?;

    let again = reg.delete_command(delete("reboot")).await?.into_inner();

    assert_eq!(
        (again.status_code, again.deletion_scheduled_at),
        (202, r.deletion_scheduled_at)
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_of_an_unknown_or_malformed_id_is_refused() -> Result {
    let Scheduled {
        server, mut reg, ..
    } = given_a_scheduled_deletion("delete-errors").await?;
    expect_code(
        reg.delete_command(delete("ghost")).await,
        Code::NotFound,
        &["ghost"],
    );
    expect_invalid(
        reg.delete_command(delete("a.b")).await,
        "command_id",
        &["'.'"],
    );
    assert!(!get_command(&mut reg, "other").await?.pending_deletion);
    server.shutdown().await
}

// ---- the deletion wait ----------------------------------------------------------------------

/// A server whose deletion wait is 1 s, with static commands of these ids.
async fn given_a_one_second_deletion_wait(name: &str, ids: &[&str]) -> anyhow::Result<Env> {
    let mut args = test_args(name);
    args.deletion_wait_secs = 1;
    Env::start_with(args).await?.with_commands(ids).await
}

fn deprecate(id: &str) -> pb::UpdateCommandRequest {
    pb::UpdateCommandRequest {
        command_id: id.into(),
        deprecated: Some(true),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_deprecated_longer_than_the_wait_is_deleted_at_once() -> Result {
    let mut env = given_a_one_second_deletion_wait("delete-wait-old", &["old"]).await?;
    let reg = &mut env.registry;
    reg.update_command(deprecate("old")).await?;
    let old_deprecated = Instant::now();
    // Elapsed time is the rule under test, so this is a real wait.
    tokio::time::sleep_until((old_deprecated + Duration::from_millis(1_100)).into()).await;

    let r = reg.delete_command(delete("old")).await?.into_inner();

    assert_eq!((r.status_code, r.deletion_scheduled_at), (204, None));
    assert_no_command(reg, "old").await;
    let listed = list_all_commands(reg, pb::ListCommandsRequest::default())
        .await?
        .0;
    assert!(listed.iter().all(|c| c.command_id != "old"), "{listed:?}");
    expect_code(
        reg.delete_command(delete("old")).await,
        Code::NotFound,
        &["old"],
    );
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_deletions_happen_by_themselves_not_before_their_time() -> Result {
    let mut env = given_a_one_second_deletion_wait("delete-wait", &["recent", "live"]).await?;
    let reg = &mut env.registry;
    // Deprecated less than the wait ago, or not deprecated: scheduled.
    reg.update_command(deprecate("recent")).await?;
    let mut scheduled = Vec::new();
    for id in ["recent", "live"] {
        let before = now_ms();
        let r = reg.delete_command(delete(id)).await?.into_inner();
        assert_eq!(r.status_code, 202, "{id}");
        let at = ms(&r.deletion_scheduled_at);
        assert!(
            (before + 1_000..=now_ms() + 1_000).contains(&at),
            "{id} scheduled one wait ahead: {at}"
        );
        assert!(get_command(reg, id).await?.pending_deletion, "{id}");
        scheduled.push((id, at));
    }

    for (id, at) in scheduled {
        eventually(format!("{id} deleted on its schedule"), || {
            let mut reg = reg.clone();
            async move {
                match get_command(&mut reg, id).await {
                    Err(s) if s.code() == Code::NotFound => {
                        assert!(now_ms() >= at, "{id} deleted before its scheduled time");
                        Ok(Some(()))
                    }
                    Ok(c) => {
                        assert!(c.pending_deletion, "{id}");
                        Ok(None)
                    }
                    Err(s) => Err(s.into()),
                }
            }
        })
        .await?;
    }

    let listed = list_all_commands(reg, pb::ListCommandsRequest::default())
        .await?
        .0;
    assert!(listed.is_empty(), "{listed:?}");
    // The id is free again.
    reg.create_command(static_json_command("live", "{}"))
        .await?;
    assert!(!get_command(reg, "live").await?.pending_deletion);
    env.stop().await
}
