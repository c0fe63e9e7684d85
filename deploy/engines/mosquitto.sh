#!/usr/bin/env bash
# Installs, starts, stops and reports on a local Mosquitto broker (Debian's 2.0.x) for tests
# that need an external MQTT broker and for local clusters.
#
#   deploy/engines/mosquitto.sh install   # apt-get install mosquitto mosquitto-clients if missing
#   deploy/engines/mosquitto.sh start     # start on 127.0.0.1:1884 unless already running
#   deploy/engines/mosquitto.sh stop      # stop the broker started by `start` (pidfile), wait
#   deploy/engines/mosquitto.sh status    # print running/stopped; exit 0 only when running
#
# Port 1884, not 1883: `fleetcmd serve` listens on 1883 with its embedded broker.
#
# Environment:
#   FLEETCMD_ENGINES_DIR     runtime files: config, persistence, pid, log
#                            (default: <repo>/.engines; this script uses its mosquitto/ subfolder)
#   FLEETCMD_MOSQUITTO_PORT  listener port (default 1884)
#
# Every command is idempotent. The broker is anonymous and local: for a production
# configuration with device ACLs see deploy/mosquitto-cluster.conf and deploy/mosquitto-acl.conf.
set -euo pipefail

HOST=127.0.0.1
PORT=${FLEETCMD_MOSQUITTO_PORT:-1884}
START_TIMEOUT_SECS=${FLEETCMD_MOSQUITTO_START_TIMEOUT_SECS:-20}
STOP_TIMEOUT_SECS=20

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
run_dir="${FLEETCMD_ENGINES_DIR:-$repo_root/.engines}/mosquitto"
conf_file="$run_dir/mosquitto.conf"
data_dir="$run_dir/data"
pid_file="$run_dir/mosquitto.pid"
port_file="$run_dir/port"
log_file="$run_dir/mosquitto.log"

# Debian puts the broker in /usr/sbin, which a non-login PATH may lack.
mosquitto_bin() {
    command -v mosquitto 2>/dev/null || { [[ -x /usr/sbin/mosquitto ]] && echo /usr/sbin/mosquitto; }
}

installed() {
    mosquitto_bin >/dev/null && command -v mosquitto_pub >/dev/null && command -v mosquitto_sub >/dev/null
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

cmd_install() {
    if installed; then
        echo "mosquitto: already installed ($("$(mosquitto_bin)" -h 2>/dev/null | head -n 1))"
        return 0
    fi
    echo "mosquitto: installing mosquitto and mosquitto-clients"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be missing or stale on a fresh machine: update only if needed.
    if ! as_root apt-get install -y mosquitto mosquitto-clients; then
        as_root apt-get update
        as_root apt-get install -y mosquitto mosquitto-clients
    fi
    installed || {
        echo "mosquitto: installed, but mosquitto/mosquitto_pub/mosquitto_sub are not found" >&2
        exit 1
    }
}

# The pid in the pidfile, when that process is alive and is a mosquitto.
running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid=$(<"$pid_file")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q mosquitto "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

port_answers() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

write_config() {
    cat >"$conf_file" <<EOF
# Written by deploy/engines/mosquitto.sh; rewritten on every start.
listener $PORT $HOST
allow_anonymous true
# Without it every QoS 1 request/response pays Nagle + delayed ACK (~40 ms).
set_tcp_nodelay true
persistence true
persistence_location $data_dir/
# Offline devices with persistent sessions may have many commands queued.
max_queued_messages 100000
max_inflight_messages 1000
# Started as root, mosquitto would switch to the 'mosquitto' user, which cannot write here.
user $(id -un)
# A file, not stdout: mosquitto buffers stdout when it is not a terminal.
log_dest file $log_file
log_type error
log_type warning
log_type notice
log_type information
EOF
}

cmd_start() {
    local pid
    if pid=$(running_pid); then
        local running_port
        running_port=$(cat "$port_file" 2>/dev/null || echo "$PORT")
        if [[ "$running_port" != "$PORT" ]]; then
            echo "mosquitto: already running from $run_dir on port $running_port, not $PORT; stop it first" >&2
            exit 1
        fi
        echo "mosquitto: $HOST:$PORT (already running, pid $pid)"
        return 0
    fi
    installed || {
        echo "mosquitto: not installed; run '$0 install'" >&2
        exit 1
    }
    if port_answers; then
        echo "mosquitto: $HOST:$PORT is already taken by a process not started by this script" >&2
        exit 1
    fi
    mkdir -p "$run_dir" "$data_dir"
    write_config
    : >"$log_file"
    # setsid: the broker outlives this shell and is not killed with its process group.
    setsid "$(mosquitto_bin)" -c "$conf_file" >>"$log_file" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$pid_file"
    echo "$PORT" >"$port_file"
    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    until port_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "mosquitto: exited during start; log tail ($log_file):" >&2
            tail -n 40 "$log_file" >&2
            rm -f "$pid_file"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "mosquitto: did not answer on $HOST:$PORT within ${START_TIMEOUT_SECS}s; log tail ($log_file):" >&2
            tail -n 40 "$log_file" >&2
            kill "$pid" 2>/dev/null || true
            rm -f "$pid_file"
            exit 1
        fi
        sleep 0.1
    done
    echo "mosquitto: $HOST:$PORT"
}

cmd_stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$pid_file"
        echo "mosquitto: stopped (was not running)"
        return 0
    fi
    # SIGTERM: mosquitto saves its persistence file and exits.
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT_SECS))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "mosquitto: pid $pid still running after ${STOP_TIMEOUT_SECS}s; killing it" >&2
            kill -9 "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$pid_file" "$port_file"
    echo "mosquitto: stopped"
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        # The port it was started with (FLEETCMD_MOSQUITTO_PORT may differ now).
        if [[ -f "$port_file" ]]; then
            PORT=$(<"$port_file")
        fi
        if port_answers; then
            echo "mosquitto: running at $HOST:$PORT (pid $pid)"
            return 0
        fi
    fi
    echo "mosquitto: stopped"
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
