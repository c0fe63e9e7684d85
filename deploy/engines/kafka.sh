#!/usr/bin/env bash
# Installs, starts, stops and reports on a local Kafka-protocol broker (tansu 0.6.0, in-memory
# storage) for the Kafka adapter's tests and for local clusters.
#
#   deploy/engines/kafka.sh install   # cargo install tansu 0.6.0 (~10 min on 2 cores), cached
#   deploy/engines/kafka.sh start     # start on 127.0.0.1:9092 unless already running
#   deploy/engines/kafka.sh stop      # stop the broker started by `start` (pidfile)
#   deploy/engines/kafka.sh status    # exit 0 and print the address when running
#
# Environment:
#   FLEETCMD_ENGINES_CACHE  install root cache (default: $HOME/.cache/fleetcmd-engines)
#   FLEETCMD_ENGINES_DIR    runtime files: pid, log (default: <repo>/.engines)
#
# Every command is idempotent. tansu keeps everything in memory: a restart loses all topics.
set -euo pipefail

TANSU_VERSION=0.6.0
HOST=127.0.0.1
PORT=9092
START_TIMEOUT_SECS=${FLEETCMD_KAFKA_START_TIMEOUT_SECS:-30}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache_root=${FLEETCMD_ENGINES_CACHE:-$HOME/.cache/fleetcmd-engines}
install_root="$cache_root/tansu"
tansu_bin="$install_root/bin/tansu"
run_dir="${FLEETCMD_ENGINES_DIR:-$repo_root/.engines}/kafka"
pid_file="$run_dir/tansu.pid"
log_file="$run_dir/tansu.log"

installed() {
    [[ -x "$tansu_bin" ]] && "$tansu_bin" --version 2>/dev/null | grep -q " $TANSU_VERSION\b"
}

cmd_install() {
    if installed; then
        echo "kafka: tansu $TANSU_VERSION already installed at $tansu_bin"
        return 0
    fi
    echo "kafka: installing tansu $TANSU_VERSION into $install_root (takes ~10 minutes)"
    mkdir -p "$install_root"
    cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore \
        --root "$install_root"
    installed || { echo "kafka: $tansu_bin does not report version $TANSU_VERSION" >&2; exit 1; }
}

# The pid in the pidfile, when that process is alive and is a tansu broker.
running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid=$(<"$pid_file")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q tansu "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

port_answers() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

cmd_start() {
    if pid=$(running_pid); then
        echo "kafka: $HOST:$PORT (already running, pid $pid)"
        return 0
    fi
    installed || { echo "kafka: tansu $TANSU_VERSION is not installed; run '$0 install'" >&2; exit 1; }
    if port_answers; then
        echo "kafka: $HOST:$PORT is already taken by a process not started by this script" >&2
        exit 1
    fi
    mkdir -p "$run_dir"
    : >"$log_file"
    # setsid: the broker outlives this shell and is not killed with its process group.
    setsid "$tansu_bin" broker \
        --listener-url "tcp://$HOST:$PORT" \
        --advertised-listener-url "tcp://$HOST:$PORT" \
        --storage-engine "memory://tansu/" \
        >>"$log_file" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pid_file"
    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    until port_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "kafka: tansu exited during start; log tail ($log_file):" >&2
            tail -n 40 "$log_file" >&2
            rm -f "$pid_file"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "kafka: tansu did not answer on $HOST:$PORT within ${START_TIMEOUT_SECS}s; log tail:" >&2
            tail -n 40 "$log_file" >&2
            kill "$pid" 2>/dev/null || true
            rm -f "$pid_file"
            exit 1
        fi
        sleep 0.1
    done
    echo "kafka: $HOST:$PORT"
}

cmd_stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$pid_file"
        echo "kafka: not running"
        return 0
    fi
    kill "$pid"
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
    echo "kafka: stopped"
}

cmd_status() {
    if pid=$(running_pid) && port_answers; then
        echo "kafka: $HOST:$PORT (pid $pid)"
    else
        echo "kafka: not running"
        return 1
    fi
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 install|start|stop|status" >&2
        exit 2
        ;;
esac
