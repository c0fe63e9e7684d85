//! The `fleetcmd` binary: `serve` runs the whole service in one process; `command`, `exec`
//! and `thing` call the API; `device simulate` runs a simulated device. Errors go to stderr as
//! `error: CODE: message` with a non-zero exit code.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleetcmd_cli::{
    self as client, ClientArgs, command::CommandCmd, exec::ExecCmd, rollout::RolloutCmd,
    thing::ThingCmd,
};
use fleetcmd_simulator::{self as simulator, DeviceCmd};
use fleetcmd_standalone::ServeArgs;

/// mimalloc: the hot paths allocate many small, short-lived buffers across threads (MQTT
/// packets, bus messages, JSON); glibc malloc showed up at ~10 % of CPU in the profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Send commands to IoT devices over MQTT and track every execution.
#[derive(Debug, Parser)]
#[command(name = "fleetcmd", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run registry, dispatcher, edge and projector in one process on the embedded
    /// adapters (SQLite, in-process bus, embedded MQTT broker).
    Serve(ServeArgs),
    /// Run one service (registry, dispatcher, edge or projector) on the cluster engines:
    /// NATS, Kafka, ScyllaDB and an external MQTT broker.
    #[cfg(feature = "cluster")]
    Run(fleetcmd::cluster::RunArgs),
    /// Manage commands: create, get, list, update, delete.
    #[command(subcommand)]
    Command(CommandCmd),
    /// Run commands on devices and follow them: start, get, list, cancel, delete, watch.
    #[command(subcommand)]
    Exec(ExecCmd),
    /// Manage things (registered devices): create, get, list, update, delete.
    #[command(subcommand)]
    Thing(ThingCmd),
    /// Send one command to many devices at a controlled rate: start, get, cancel, watch.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Device tools.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Load generator: simulated devices over MQTT plus start calls over gRPC; reports
    /// executions/s, latency percentiles, errors, memory and CPU (see BENCHMARKS.md).
    Bench(fleetcmd_bench::BenchArgs),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let output = cli.client.output();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Cmd::Serve(args) => fleetcmd_standalone::run(args).await,
        #[cfg(feature = "cluster")]
        Cmd::Run(args) => fleetcmd::cluster::run(args).await,
        Cmd::Command(cmd) => client::command::run(&cli.client.api()?, cmd, output, &mut out).await,
        Cmd::Exec(cmd) => client::exec::run(&cli.client.api()?, cmd, output, &mut out).await,
        Cmd::Thing(cmd) => client::thing::run(&cli.client.api()?, cmd, output, &mut out).await,
        Cmd::Rollout(cmd) => client::rollout::run(&cli.client.api()?, cmd, output, &mut out).await,
        Cmd::Device(cmd) => simulator::run_cli(cmd, output, &mut out).await,
        Cmd::Bench(args) => fleetcmd_bench::run(args, &cli.client, &mut out).await,
    }?;
    out.flush()?;
    Ok(())
}

/// `error: CODE: message` for gRPC statuses, the error chain for everything else.
fn error_text(err: &anyhow::Error) -> String {
    match err.downcast_ref::<tonic::Status>() {
        Some(status) => client::describe_status(status),
        None => format!("{err:#}"),
    }
}

/// Output cut short by a closed pipe (`fleetcmd exec list | head`) is not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error_text(&err));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use fleetcmd_cli::{command, exec};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fleetcmd").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_client_flags_go_anywhere() {
        let cli = parse(&[
            "--endpoint",
            "http://10.0.0.1:50051",
            "command",
            "get",
            "reboot",
            "--token",
            "t0k",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.client.endpoint, "http://10.0.0.1:50051");
        assert_eq!(cli.client.token.as_deref(), Some("t0k"));
        assert!(cli.client.json);
        assert_eq!(cli.client.output(), client::Output::Json);
        let Cmd::Command(CommandCmd::Get(get)) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(get.command_id, "reboot");
    }

    #[test]
    fn endpoint_has_a_default() {
        // (FLEETCMD_ENDPOINT is not set in the test environment.)
        if std::env::var_os("FLEETCMD_ENDPOINT").is_none() {
            let cli = parse(&["exec", "get", "e-1"]).unwrap();
            assert_eq!(cli.client.endpoint, client::DEFAULT_ENDPOINT);
            assert!(!cli.client.json);
        }
    }

    /// `parse` of a command line written as one string (no argument has a space).
    fn parse_line(line: &str) -> Result<Cli, clap::Error> {
        parse(&line.split(' ').collect::<Vec<_>>())
    }

    #[test]
    fn every_subcommand_parses() {
        let ok = [
            "serve",
            "serve --grpc-addr 127.0.0.1:6000 --shards 4",
            "command create --id c --payload x",
            "command get c",
            "command list --all",
            "command update c --description d",
            "command delete c",
            "exec start --command c --thing t --param a=i:1",
            "exec get e --include-result",
            "exec list --status failed",
            "exec cancel e",
            "exec delete e",
            "exec watch --client c",
            "bench --devices 10 --executions 100 --rate 500",
            "bench --raw-mqtt --mqtt 127.0.0.1:1884",
            "device simulate --client c --behavior silent",
        ];
        for line in ok {
            parse_line(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        }
        let cli = parse_line("serve --shards 4").unwrap();
        let Cmd::Serve(serve) = cli.command else {
            panic!()
        };
        assert_eq!(serve.shards, 4);
        let cli = parse_line("exec start --command c --thing t --timeout 30").unwrap();
        let Cmd::Exec(ExecCmd::Start(start)) = cli.command else {
            panic!()
        };
        assert_eq!(start.timeout_secs, Some(30));
        let cli = parse_line("exec watch --status succeeded").unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Exec(ExecCmd::Watch(exec::WatchArgs { .. }))
        ));
        let cli = parse_line("command delete c").unwrap();
        assert!(matches!(
            cli.command,
            Cmd::Command(CommandCmd::Delete(command::DeleteArgs { .. }))
        ));
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        assert_eq!(
            parse(&[]).unwrap_err().kind(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(
            parse(&["launch"]).unwrap_err().kind(),
            ErrorKind::InvalidSubcommand
        );
        assert_eq!(
            parse(&["exec", "start", "--command", "c"])
                .unwrap_err()
                .kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["exec", "list", "--sort", "sideways"])
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn errors_print_the_grpc_code_readably() {
        let err = anyhow::Error::from(tonic::Status::invalid_argument(
            "invalid execution_timeout_seconds: must be between 1 and 43200 seconds, got 0",
        ));
        assert_eq!(
            format!("error: {}", error_text(&err)),
            "error: INVALID_ARGUMENT: invalid execution_timeout_seconds: must be between 1 and \
             43200 seconds, got 0"
        );
        let err = anyhow::Error::from(tonic::Status::not_found("command reboot not found"));
        assert_eq!(error_text(&err), "NOT_FOUND: command reboot not found");
        let err = anyhow::anyhow!("disk full").context("--payload-file: reading p.bin");
        assert_eq!(error_text(&err), "--payload-file: reading p.bin: disk full");
    }

    #[test]
    fn broken_pipes_are_recognised() {
        let err = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
