//! The engines a cluster runs on, and the `deploy/engines/<engine>.sh` scripts that manage
//! them.
//!
//! Engines come from `FLEETCMD_NATS_URL`, `FLEETCMD_KAFKA_BROKERS`, `FLEETCMD_CQL_URI` (or
//! `FLEETCMD_SCYLLA_URI` for a real cluster) and `FLEETCMD_MQTT_BROKER` (`host:port`).
//! Without them a scenario prints a skip line and passes, unless `CI` is set, where a
//! missing engine fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the engines listen.
#[derive(Debug, Clone)]
pub struct Engines {
    pub nats_url: String,
    pub kafka_brokers: String,
    /// CQL contact points, comma-separated.
    pub cql_nodes: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Whether this is a CI run (a missing or unmanaged engine then fails instead of skipping).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

impl Engines {
    /// The engines to test against; `None` (after a skip line naming `test`) when one is
    /// not configured, or a panic naming the missing ones when `CI` is set.
    pub fn from_env(test: &str) -> Option<Self> {
        let nats = env_var("FLEETCMD_NATS_URL");
        let kafka = env_var("FLEETCMD_KAFKA_BROKERS");
        let cql = env_var("FLEETCMD_SCYLLA_URI").or_else(|| env_var("FLEETCMD_CQL_URI"));
        let mqtt = env_var("FLEETCMD_MQTT_BROKER");
        let missing: Vec<&str> = [
            (nats.is_none(), "FLEETCMD_NATS_URL"),
            (kafka.is_none(), "FLEETCMD_KAFKA_BROKERS"),
            (cql.is_none(), "FLEETCMD_CQL_URI (or FLEETCMD_SCYLLA_URI)"),
            (mqtt.is_none(), "FLEETCMD_MQTT_BROKER"),
        ]
        .into_iter()
        .filter_map(|(absent, name)| absent.then_some(name))
        .collect();
        let (Some(nats_url), Some(kafka_brokers), Some(cql_nodes), Some(mqtt)) =
            (nats, kafka, cql, mqtt)
        else {
            let hint = "start the engines (deploy/engines/{nats,mosquitto,kafka,cql}.sh start) and set \
                        FLEETCMD_NATS_URL=nats://127.0.0.1:4222 FLEETCMD_KAFKA_BROKERS=127.0.0.1:9092 \
                        FLEETCMD_CQL_URI=127.0.0.1:9042 FLEETCMD_MQTT_BROKER=127.0.0.1:1884";
            assert!(
                !in_ci(),
                "{test}: {} not set but CI is: {hint}",
                missing.join(", ")
            );
            println!("skipped {test}: {} not set ({hint})", missing.join(", "));
            return None;
        };
        let (mqtt_host, mqtt_port) = mqtt
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .unwrap_or_else(|| panic!("FLEETCMD_MQTT_BROKER must be host:port, got {mqtt:?}"));
        Some(Self {
            nats_url,
            kafka_brokers,
            cql_nodes,
            mqtt_host,
            mqtt_port,
        })
    }

    /// The MQTT broker as `host:port`.
    pub fn mqtt_broker(&self) -> String {
        format!("{}:{}", self.mqtt_host, self.mqtt_port)
    }
}

/// The root of the checkout (where `deploy/` is).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `deploy/engines/<engine>.sh <verb>`; returns whether it succeeded and its output.
pub fn engine_script(engine: &str, verb: &str) -> (bool, String) {
    let script = repo_root().join(format!("deploy/engines/{engine}.sh"));
    match Command::new("bash")
        .arg(&script)
        .arg(verb)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text.trim().to_string())
        }
        Err(e) => (false, format!("cannot run {}: {e}", script.display())),
    }
}

/// Whether the engine at `address` (host:port) is the one `deploy/engines/<engine>.sh`
/// manages, so that `test` may stop and restart it. Otherwise prints why (or fails in CI).
pub fn managed_by_script(test: &str, engine: &str, address: &str) -> bool {
    let (running, status) = engine_script(engine, "status");
    if running && status.contains(address) {
        return true;
    }
    let why = format!(
        "{test} stops and restarts {engine} through deploy/engines/{engine}.sh, but that script does not \
         manage {address} (status: {status:?})"
    );
    assert!(!in_ci(), "{why}");
    println!("skipped {test}: {why}");
    false
}

/// The `host:port` of a URL like `nats://127.0.0.1:4222` (or of a plain `host:port`).
pub fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', ',']).next().unwrap_or(rest)
}

/// An engine stopped through its script. It is started again by [`EngineOutage::restart`],
/// or when dropped (also on failure), so later tests and other users keep their engines.
pub struct EngineOutage {
    engine: &'static str,
    down: bool,
}

impl EngineOutage {
    /// Stops `engine` (panics if the script fails).
    pub fn stop(engine: &'static str) -> Self {
        let (ok, out) = engine_script(engine, "stop");
        assert!(ok, "stopping {engine}: {out}");
        println!("[{engine}] {out}");
        Self { engine, down: true }
    }

    /// Starts the engine again (panics if the script fails).
    pub fn restart(&mut self) {
        let (ok, out) = engine_script(self.engine, "start");
        assert!(ok, "starting {} again: {out}", self.engine);
        println!("[{}] {out}", self.engine);
        self.down = false;
    }
}

impl Drop for EngineOutage {
    fn drop(&mut self) {
        if self.down {
            let (ok, out) = engine_script(self.engine, "start");
            eprintln!(
                "[{}] restarted after a failure (ok: {ok}): {out}",
                self.engine
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_strips_the_scheme_path_and_other_brokers() {
        assert_eq!(host_port("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(host_port("127.0.0.1:9092,127.0.0.1:9093"), "127.0.0.1:9092");
        assert_eq!(host_port("http://h:1/x"), "h:1");
    }
}
