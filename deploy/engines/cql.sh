#!/usr/bin/env bash
# Builds, starts, stops and reports on the CQL test server (crates/cql-test-server: the
# in-memory kassandra library behind a small CQL v4 listener) for the ScyllaDB adapter's
# tests. It is a test tool, not ScyllaDB: no ScyllaDB or Cassandra can run on these machines
# (see shared/ENGINES.md), and the adapter's full suite needs a real cluster
# (FLEETCMD_SCYLLA_URI).
#
#   deploy/engines/cql.sh install   # cargo build -p fleetcmd-cql-test-server (fast when built)
#   deploy/engines/cql.sh start     # start on 127.0.0.1:9042 unless already running
#   deploy/engines/cql.sh stop      # stop the server started by `start` (pidfile)
#   deploy/engines/cql.sh status    # exit 0 and print the address when running
#
# Environment:
#   FLEETCMD_ENGINES_DIR            runtime files: pid, log (default: <repo>/.engines)
#   CARGO_TARGET_DIR                where cargo builds (default: <repo>/target)
#   FLEETCMD_CQL_START_TIMEOUT_SECS how long `start` waits for the port (default: 30)
#
# Every command is idempotent. Everything lives in memory: a restart loses all keyspaces.
set -euo pipefail

HOST=127.0.0.1
PORT=9042
START_TIMEOUT_SECS=${FLEETCMD_CQL_START_TIMEOUT_SECS:-30}

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
case "$target_dir" in
    /*) ;;
    *) target_dir="$repo_root/$target_dir" ;;
esac
# Debug profile: it shares its dependencies with the test build, so CI compiles them once.
server_bin="$target_dir/debug/fleetcmd-cql-test-server"
run_dir="${FLEETCMD_ENGINES_DIR:-$repo_root/.engines}/cql"
pid_file="$run_dir/cql-test-server.pid"
log_file="$run_dir/cql-test-server.log"

cmd_install() {
    echo "cql: building fleetcmd-cql-test-server"
    (cd "$repo_root" && cargo build --locked -p fleetcmd-cql-test-server)
    [[ -x "$server_bin" ]] || { echo "cql: $server_bin was not built" >&2; exit 1; }
    echo "cql: installed $server_bin"
}

# The pid in the pidfile, when that process is alive and is the CQL test server.
running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid=$(<"$pid_file")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q fleetcmd-cql-test-server "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

port_answers() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

cmd_start() {
    local pid
    if pid=$(running_pid); then
        echo "cql: $HOST:$PORT (already running, pid $pid)"
        return 0
    fi
    [[ -x "$server_bin" ]] || { echo "cql: $server_bin is missing; run '$0 install'" >&2; exit 1; }
    if port_answers; then
        echo "cql: $HOST:$PORT is already taken by a process not started by this script" >&2
        exit 1
    fi
    mkdir -p "$run_dir"
    : >"$log_file"
    # setsid: the server outlives this shell and is not killed with its process group.
    setsid "$server_bin" --listen "$HOST:$PORT" >>"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    until port_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "cql: the server exited during start; log tail ($log_file):" >&2
            tail -n 40 "$log_file" >&2
            rm -f "$pid_file"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "cql: no answer on $HOST:$PORT within ${START_TIMEOUT_SECS}s; log tail:" >&2
            tail -n 40 "$log_file" >&2
            kill "$pid" 2>/dev/null || true
            rm -f "$pid_file"
            exit 1
        fi
        sleep 0.1
    done
    echo "cql: $HOST:$PORT"
}

cmd_stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$pid_file"
        echo "cql: not running"
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
    echo "cql: stopped"
}

cmd_status() {
    local pid
    if pid=$(running_pid) && port_answers; then
        echo "cql: $HOST:$PORT (pid $pid)"
    else
        echo "cql: not running"
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
