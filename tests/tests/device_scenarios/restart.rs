//! After a restart on the same data directory, executions are still readable, client
//! tokens are remembered, a live execution's timer still fires, and device reports are
//! checked against the rebuilt state.

use std::time::Duration;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::device::Topics;
use fleetcmd_e2e::scenario::*;
use fleetcmd_e2e::{Env, Server, millis, test_args, thing};
use serde_json::json;

use crate::Result;

/// Before the restart: `done` SUCCEEDED, `live` CREATED with a 3 s timeout and a client
/// token; both as they were read just before the stop.
struct Restarted {
    env: Env,
    topics: Topics,
    done: String,
    live: String,
    live_req: pb::StartCommandExecutionRequest,
    done_before: pb::CommandExecution,
    live_before: pb::CommandExecution,
    /// From the stop to the restarted server's devices being subscribed.
    restart: Duration,
}

async fn given_a_restart(name: &str) -> anyhow::Result<Restarted> {
    let mut scene = Scene::thing(name, "gate-5", "open-gate", r#"{"open":true}"#).await?;
    let done = scene.start(30).await?;
    let ok = json!({"status": "SUCCEEDED", "result": {"state": {"s": "open"}}});
    assert_accepted(&scene.report(&done, &ok).await?, &done)?;
    scene.next_event(&done, "CREATED").await?;
    scene.next_event(&done, "SUCCEEDED").await?;
    let mut live_req = start_request(thing("gate-5"), "open-gate", 3);
    live_req.client_token = "restart-token".into();
    let live = scene.env.start_execution(live_req.clone()).await?;
    scene.next_event(&live, "CREATED").await?;
    let live_before = scene.env.get(&live, true).await?;
    let done_before = scene.env.get(&done, true).await?;
    let Scene { env, topics, .. } = scene;

    let stopping = std::time::Instant::now();
    let dir = env.server.stop().await?;
    let mut args = test_args(name);
    let _ = std::fs::remove_dir_all(&args.data_dir);
    args.data_dir = dir;
    let env = Env::with(Server::start_with(args).await?).await?;
    Ok(Restarted {
        env,
        topics,
        done,
        live,
        live_req,
        done_before,
        live_before,
        restart: stopping.elapsed(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_executions_and_client_tokens() -> Result {
    let Restarted {
        mut env,
        done,
        live,
        live_req,
        done_before,
        live_before,
        restart,
        ..
    } = given_a_restart("restart").await?;

    assert_unchanged(&done_before, &env.get(&done, true).await?)?;
    let e = env.get(&live, true).await?;
    assert_eq!(e.created_at, live_before.created_at);
    // The timer is due 3 s after the start; a restart takes a fraction of that.
    assert_eq!(
        status_of(&e),
        pb::ExecutionStatus::Created,
        "still live after a restart that took {restart:?} (if that is over 3 s the check cannot be made)"
    );
    // The same request with the same token is still the same execution.
    assert_eq!(env.start_execution(live_req).await?, live);
    env.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_timer_fires_and_reports_meet_the_rebuilt_state() -> Result {
    let Restarted {
        mut env,
        topics,
        done,
        live,
        ..
    } = given_a_restart("restart-timer").await?;
    let mut obs = env.observer(&["open-gate"]).await?;
    let mut dev = env.device("gate-5", &topics).await?;

    // The timer, rebuilt from the log, fires.
    let e = wait_status(&mut env, &mut obs, &live, pb::ExecutionStatus::TimedOut).await?;
    assert_eq!(reason_code(&e), Some("$NO_RESPONSE_FROM_DEVICE"));
    assert!(!e.terminal && e.completed_at.is_none());
    let timed_out_at = millis(e.last_updated_at.as_ref()).unwrap_or(0);
    assert!(
        timed_out_at >= millis(e.created_at.as_ref()).unwrap_or(i64::MAX) + 3000,
        "{e:?}"
    );

    // Device reports meet the rebuilt state.
    let reply = dev
        .report_json(&topics, &done, &json!({"status": "FAILED"}))
        .await?;
    assert_rejected(&reply, "TerminalStateReached", &done)?;
    assert_accepted(
        &dev.report_json(&topics, &live, &json!({"status": "SUCCEEDED"}))
            .await?,
        &live,
    )?;
    let e = wait_status(&mut env, &mut obs, &live, pb::ExecutionStatus::Succeeded).await?;
    assert!(e.terminal && e.completed_at.is_some());
    env.stop().await
}
