//! fleetcmd mode: StartCommandExecution over gRPC, the devices answering over MQTT, and
//! the end observed through WatchCommandExecutions.
//!
//! What is measured, per execution:
//! - **start RPC**: StartCommandExecution sent → its response. fleetcmd answers only once
//!   the execution is appended and projected (read-your-writes).
//! - **start→delivered**: StartCommandExecution sent → the request arrives at the device.
//! - **start→terminal**: StartCommandExecution sent → the WatchCommandExecutions event of
//!   the terminal status arrives here. The projector publishes that event only after the
//!   read-model commit, so from then on GetCommandExecution returns the terminal status;
//!   after the run, `--verify` executions are read back with Get to confirm it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use fleetcmd_contracts::pb;
use fleetcmd_domain::topics::TopicRoot;

use super::collector::{Collector, Expect, Note, Tally};
use super::devices::{Behavior, FleetSpec};
use super::pace::due_offset;
use super::stats::{Report, Storm, per_sec};
use super::{BenchArgs, Progress, Resources, parse_host_port, run_tag, start_devices, stop_after};
use fleetcmd_cli::{Api, ClientArgs, code_name};
use fleetcmd_standalone::{self as serve, ServeArgs};

/// `fleetcmd serve` flags, parsed the way the CLI does so new flags keep their defaults.
#[derive(Debug, clap::Parser)]
struct ServeOnly {
    #[command(flatten)]
    serve: ServeArgs,
}

/// Where the server under test is.
struct Target {
    endpoint: String,
    /// Where start calls go, spread over the gRPC channels (in a cluster: the dispatchers;
    /// empty: `endpoint` serves both APIs).
    dispatcher_endpoints: Vec<String>,
    mqtt_host: String,
    mqtt_port: u16,
    pids: Vec<u32>,
    in_process: bool,
    /// With `--secure`: the server's CA (devices trust it); `mqtt_port` is then the TLS one.
    ca_pem: Option<String>,
}

/// Runs the fleetcmd measurement.
pub async fn run(args: &BenchArgs, client: &ClientArgs) -> anyhow::Result<Report> {
    if let Some(mqtt) = &args.mqtt {
        let (mqtt_host, mqtt_port) = parse_host_port(mqtt)?;
        let target = Target {
            endpoint: client.endpoint.clone(),
            dispatcher_endpoints: client
                .dispatcher_endpoint
                .iter()
                .flat_map(|d| d.split(','))
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect(),
            mqtt_host,
            mqtt_port,
            pids: args.server_pid.clone(),
            in_process: false,
            ca_pem: None,
        };
        return drive(args, client.token.as_deref(), &target).await;
    }
    let (dir, remove_dir) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "fleetcmd-bench-{}-{}",
                std::process::id(),
                run_tag()
            )),
            true,
        ),
    };
    let shards = args.shards.to_string();
    let dir_text = dir.to_string_lossy().into_owned();
    let mut flags = vec![
        "serve",
        "--grpc-addr",
        "127.0.0.1:0",
        "--mqtt-addr",
        "127.0.0.1:0",
        "--mqtt-tls-addr",
        "127.0.0.1:0",
        "--data-dir",
        &dir_text,
        "--shards",
        &shards,
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    if args.secure {
        flags.extend(["--device-auth", "required"]);
    }
    let serve_args = ServeOnly::try_parse_from(flags)
        .context("building the in-process server's flags")?
        .serve;
    let running = serve::start(serve_args)
        .await
        .context("starting fleetcmd in-process")?;
    let (mqtt_port, ca_pem) = if args.secure {
        let ca = std::fs::read_to_string(dir.join("tls").join("ca.pem"))
            .context("reading the in-process server's CA")?;
        (running.mqtt_tls_addr.port(), Some(ca))
    } else {
        (running.mqtt_addr.port(), None)
    };
    let target = Target {
        endpoint: format!("http://{}", running.grpc_addr),
        dispatcher_endpoints: Vec::new(),
        mqtt_host: running.mqtt_addr.ip().to_string(),
        mqtt_port,
        pids: vec![std::process::id()],
        in_process: true,
        ca_pem,
    };
    let result = drive(args, client.token.as_deref(), &target).await;
    let stopped = running.stop().await;
    if remove_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = result?;
    stopped.context("stopping the in-process server")?;
    Ok(report)
}

/// The thing names of the fleet (as `FleetSpec::thing` names them).
fn spec_names(devices: usize, tag: &str) -> Vec<String> {
    (0..devices).map(|i| format!("bench-{tag}-{i}")).collect()
}

/// Registers each device as a thing and issues it a certificate; returns each device's TLS
/// configuration (the server's CA, its own certificate). Sixteen calls at a time.
async fn provision(
    api: &Api,
    names: &[String],
    ca_pem: &str,
) -> anyhow::Result<Vec<Arc<rustls::ClientConfig>>> {
    use futures::StreamExt as _;
    let issued: Vec<anyhow::Result<Arc<rustls::ClientConfig>>> =
        futures::stream::iter(names.iter().cloned())
            .map(|name| async move {
                fleetcmd_cli::thing::create(
                    api,
                    pb::CreateThingRequest {
                        thing_name: name.clone(),
                        ..Default::default()
                    },
                )
                .await?;
                let cert = fleetcmd_cli::credentials::create_certificate(
                    api,
                    pb::CreateThingCertificateRequest {
                        owner: Some(pb::CredentialOwner {
                            owner: Some(pb::credential_owner::Owner::ThingName(name)),
                        }),
                        validity_days: 0,
                    },
                )
                .await?;
                let config = fleetcmd_identity::client_config(
                    ca_pem,
                    Some((&cert.certificate_pem, &cert.private_key_pem)),
                )?;
                Ok(Arc::new(config))
            })
            .buffered(16)
            .collect()
            .await;
    issued.into_iter().collect()
}

fn status_name(status: i32) -> &'static str {
    match pb::ExecutionStatus::try_from(status) {
        Ok(pb::ExecutionStatus::Created) => "CREATED",
        Ok(pb::ExecutionStatus::InProgress) => "IN_PROGRESS",
        Ok(pb::ExecutionStatus::Succeeded) => "SUCCEEDED",
        Ok(pb::ExecutionStatus::Failed) => "FAILED",
        Ok(pb::ExecutionStatus::Rejected) => "REJECTED",
        Ok(pb::ExecutionStatus::TimedOut) => "TIMED_OUT",
        Ok(pb::ExecutionStatus::Canceled) => "CANCELED",
        _ => "UNSPECIFIED",
    }
}

async fn drive(args: &BenchArgs, token: Option<&str>, target: &Target) -> anyhow::Result<Report> {
    let tag = run_tag();
    let mut progress = Progress::new(args.quiet);
    let apis: Vec<Api> = (0..args.channels)
        .map(|i| match target.dispatcher_endpoints.as_slice() {
            [] => Api::connect_lazy(&target.endpoint, token),
            d => Api::connect_lazy_split(&target.endpoint, &d[i % d.len()], token),
        })
        .collect::<anyhow::Result<_>>()?;
    let command_id = format!("bench-{tag}");
    apis[0]
        .registry()
        .create_command(pb::CreateCommandRequest {
            command_id: command_id.clone(),
            display_name: "fleetcmd bench".into(),
            payload: Some(pb::Payload {
                content: br#"{"bench":true}"#.to_vec(),
                content_type: "application/json".into(),
            }),
            ..Default::default()
        })
        .await
        .context("creating the bench command")?;

    let silent = args.behavior == Behavior::Silent;
    let collector = Collector::spawn(Expect {
        end: !silent,
        good_status: "SUCCEEDED",
        sample: args.verify,
    });
    let counters = collector.counters.clone();

    // The watcher gets a connection of its own, so start calls never hold its events back.
    let watch_api = Api::connect_lazy(&target.endpoint, token)?;
    let mut statuses = vec![
        pb::ExecutionStatus::Succeeded,
        pb::ExecutionStatus::Failed,
        pb::ExecutionStatus::Rejected,
        pb::ExecutionStatus::Canceled,
    ];
    if !silent {
        statuses.push(pb::ExecutionStatus::TimedOut);
    }
    let watch_request = pb::WatchCommandExecutionsRequest {
        command_id: command_id.clone(),
        target: None,
        statuses: statuses.into_iter().map(|s| s as i32).collect(),
    };
    let mut stream = watch_api
        .registry()
        .watch_command_executions(watch_request.clone())
        .await
        .context("WatchCommandExecutions")?
        .into_inner();
    let notes = collector.notes.clone();
    let watcher = tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(ev)) => {
                    let at = Instant::now();
                    let status = status_name(ev.status);
                    let note = if ev.terminal {
                        Note::Ended {
                            id: ev.execution_id,
                            at,
                            status,
                        }
                    } else {
                        Note::Incident {
                            kind: format!("status_{status}"),
                        }
                    };
                    let _ = notes.send(note).await;
                }
                other => {
                    let kind = match other {
                        Err(s) => format!("watch_{}", code_name(s.code())),
                        _ => "watch_ended".to_string(),
                    };
                    let _ = notes.send(Note::Incident { kind }).await;
                    // Reconnect; events missed meanwhile show up as not_terminal.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match watch_api
                        .registry()
                        .watch_command_executions(watch_request.clone())
                        .await
                    {
                        Ok(s) => stream = s.into_inner(),
                        Err(_) => continue,
                    }
                }
            }
        }
    });

    let spec = FleetSpec {
        host: target.mqtt_host.clone(),
        port: target.mqtt_port,
        prefix: format!("bench-{tag}"),
        count: args.devices,
        behavior: args.behavior,
        delay: Duration::from_millis(args.delay_ms),
        root: TopicRoot::default(),
        tls: match &target.ca_pem {
            Some(ca) => Some(provision(&apis[0], &spec_names(args.devices, &tag), ca).await?),
            None => None,
        },
    };
    let sample_every = Duration::from_secs(args.sample_secs);
    // The reconnect storm connects the devices only once every start has been answered.
    let (mut fleet, mut resources) = if args.offline_start {
        (None, None)
    } else {
        let fleet = start_devices(&spec, &collector.notes, &mut progress, "fleetcmd bench").await?;
        (
            Some(fleet),
            Some(Resources::start(target.pids.clone(), sample_every)),
        )
    };
    let mut storm: Option<(Instant, Storm)> = None;
    let budget = args.budget();
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let max_lag_us = Arc::new(AtomicU64::new(0));
    let t0 = tokio::time::Instant::now();
    let mut workers = Vec::with_capacity(args.concurrency);
    for w in 0..args.concurrency {
        let dispatcher = apis[w % apis.len()].dispatcher();
        let (next, stop, max_lag_us, notes) = (
            next.clone(),
            stop.clone(),
            max_lag_us.clone(),
            collector.notes.clone(),
        );
        let (spec, command_id, rate, timeout) = (
            spec.clone(),
            command_id.clone(),
            args.rate,
            args.timeout_secs,
        );
        let token_prefix = args.client_tokens.then(|| format!("{tag}-"));
        workers.push(tokio::spawn(async move {
            let mut dispatcher = dispatcher;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= budget || stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(rate) = rate {
                    let due = t0 + due_offset(i, rate);
                    let now = tokio::time::Instant::now();
                    if now > due {
                        let lag = u64::try_from((now - due).as_micros()).unwrap_or(u64::MAX);
                        max_lag_us.fetch_max(lag, Ordering::Relaxed);
                    } else {
                        tokio::time::sleep_until(due).await;
                    }
                }
                let request = pb::StartCommandExecutionRequest {
                    target: Some(pb::Target {
                        kind: pb::TargetKind::Thing as i32,
                        id: spec.thing(i as usize),
                    }),
                    command_id: command_id.clone(),
                    execution_timeout_seconds: timeout,
                    client_token: token_prefix
                        .as_ref()
                        .map(|p| format!("{p}{i}"))
                        .unwrap_or_default(),
                    ..Default::default()
                };
                let at = Instant::now();
                let note = match dispatcher.start_command_execution(request).await {
                    Ok(r) => Note::Started {
                        id: r.into_inner().execution_id,
                        at,
                        rpc: Some(at.elapsed()),
                    },
                    Err(s) => Note::Failed {
                        kind: code_name(s.code()).to_string(),
                    },
                };
                let _ = notes.send(note).await;
            }
        }));
    }
    stop_after(args.duration, &stop);

    // Wait for the starts, then for outstanding executions (at most --drain-secs).
    let begun = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let issued = next.load(Ordering::Relaxed).min(budget);
        let finished = counters.finished();
        let all_started = workers.iter().all(|w| w.is_finished());
        let secs = begun.elapsed().as_secs_f64();
        let Tally {
            started,
            delivered,
            completed,
            failed,
        } = counters.tally();
        let rate = per_sec(completed, secs);
        progress.show(&format!(
            "fleetcmd bench: {started} started, {delivered} delivered, {completed} done, \
             {failed} failed | {rate:.0}/s over {secs:.0} s"
        ));
        if let Some((from, figures)) = &mut storm {
            if figures.delivered_secs.is_none() && delivered >= started {
                figures.delivered_secs = Some(from.elapsed().as_secs_f64());
            }
            if figures.ended_secs.is_none() && finished >= issued {
                figures.ended_secs = Some(from.elapsed().as_secs_f64());
            }
        }
        if all_started && fleet.is_none() {
            // Every execution is started and every device offline: they all connect now.
            let from = Instant::now();
            resources = Some(Resources::start(target.pids.clone(), sample_every));
            fleet = Some(
                start_devices(&spec, &collector.notes, &mut progress, "reconnect storm").await?,
            );
            let subscribed_secs = from.elapsed().as_secs_f64();
            storm = Some((
                from,
                Storm {
                    subscribed_secs,
                    ..Storm::default()
                },
            ));
            continue;
        }
        if all_started {
            let deadline = *drain_deadline
                .get_or_insert_with(|| Instant::now() + Duration::from_secs(args.drain_secs));
            if finished >= issued || Instant::now() >= deadline {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.done();
    let attempted = next.load(Ordering::Relaxed).min(budget);
    let mut report = Report {
        mode: "fleetcmd",
        server: match (target.in_process, target.ca_pem.is_some()) {
            (true, true) => "in-process (TLS, devices authenticated)",
            (true, false) => "in-process",
            (false, _) => "external",
        },
        devices: args.devices,
        behavior: args.behavior.name(),
        concurrency: args.concurrency,
        rate: args.rate,
        attempted,
        ..Report::default()
    };
    report.storm = storm.map(|(_, figures)| figures);
    if let Some(resources) = resources {
        resources.finish(&mut report, target.in_process);
    }
    watcher.abort();
    let collected = collector.finish().await?;
    if let Some(fleet) = fleet {
        fleet.stop().await;
    }

    collected.fill(&mut report);
    report.start = collected.start.summary();
    if args.rate.is_some() {
        report.max_schedule_lag_ms = Some(max_lag_us.load(Ordering::Relaxed) as f64 / 1000.0);
    }

    // Read a sample back: the terminal status must be what Get returns.
    let registry = apis[0].registry();
    for id in &collected.sample {
        let got = registry
            .clone()
            .get_command_execution(pb::GetCommandExecutionRequest {
                execution_id: id.clone(),
                target: None,
                include_result: false,
            })
            .await;
        let kind = match got {
            Ok(e) => {
                let status = status_name(e.into_inner().status);
                let expected = if silent {
                    status != "UNSPECIFIED"
                } else {
                    status == "SUCCEEDED"
                };
                if expected {
                    report.verified += 1;
                    continue;
                }
                format!("verify_status_{status}")
            }
            Err(s) => format!("verify_{}", code_name(s.code())),
        };
        *report.errors.entry(kind).or_default() += 1;
    }

    report.what = vec![
        "start RPC: StartCommandExecution sent -> answered (fleetcmd answers once the execution is appended and projected)".into(),
        "start->delivered: StartCommandExecution sent -> the request reaches the device over MQTT".into(),
        if silent {
            "start->terminal: not measured (silent devices never answer)".into()
        } else {
            format!(
                "start->terminal: StartCommandExecution sent -> the WatchCommandExecutions event of the terminal status arrives (published after the read-model commit, so GetCommandExecution returns it from then on; {} checked with Get after the run)",
                report.verified
            )
        },
        "executions/s: completed executions / (last completion - first start)".into(),
    ];
    if report.storm.is_some() {
        report.what.push(
            "reconnect storm (--offline-start): every execution started while every device was offline (start->delivered includes that wait); then all devices connected at once with clean sessions; storm figures count from the first connect, read every 20 ms once all are subscribed".into(),
        );
    }
    Ok(report)
}
