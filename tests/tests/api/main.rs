//! In-process gRPC round trips against a real `fleetcmd serve`: every method of
//! `CommandRegistry`, `CommandDispatcher` and the served part of `ThingRegistry` (things and device credentials), their success paths and every error code they can
//! return (code, message naming the field or limit, and no change left behind), plus health,
//! reflection and the serve-time access-control guard.
//!
//! One behaviour per test, each against a server of its own: the `given_*` functions set it
//! up, the test acts once and checks the outcome. Every call is bounded (the clients' channels
//! time out), and so is every stream read and device exchange.

mod audit;
mod auth;
mod cas;
mod command_lifecycle;
mod command_validation;
mod commands;
mod credentials;
mod execution_lifecycle;
mod execution_list;
mod executions;
mod groups;
mod health;
mod rollouts;
mod start_validation;
mod things;
mod tls;
mod watch;

use fleetcmd_contracts::pb;
use fleetcmd_e2e::api::*;
use fleetcmd_e2e::{Env, Server};

type Result = anyhow::Result<()>;

const ARN_PREFIX: &str = "arn:aws:iot:local:000000000000:";

/// A server with static JSON commands `{}` of these ids, and its clients.
async fn given(name: &str, commands: &[&str]) -> anyhow::Result<(Server, Registry, Dispatcher)> {
    let Env {
        server,
        registry,
        dispatcher,
    } = Env::start(name).await?.with_commands(commands).await?;
    Ok((server, registry, dispatcher))
}

/// The `level` parameter: INTEGER in 0..=100, default 50.
fn level_parameter() -> pb::CommandParameter {
    pb::CommandParameter {
        default_value: Some(pv_i(50)),
        value_conditions: vec![condition(
            pb::ComparisonOperator::InRange,
            op_range("0", "100"),
        )],
        description: "brightness in percent".into(),
        ..param("level", pb::ParameterType::Integer)
    }
}
