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
# The pidfile, start, stop, status and dispatch machinery is in lib.sh.
set -euo pipefail

ENGINE=mosquitto
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=${FLEETCMD_MOSQUITTO_PORT:-1884}
START_TIMEOUT_SECS=${FLEETCMD_MOSQUITTO_START_TIMEOUT_SECS:-20}
# SIGTERM: mosquitto saves its persistence file and exits.
STOP_TIMEOUT_SECS=20
PROCESS_MATCH=mosquitto
NOT_INSTALLED="not installed"
STATE_WORDING=verbose

conf_file="$run_dir/mosquitto.conf"
data_dir="$run_dir/data"
engine_files mosquitto
port_file="$run_dir/port"

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

# Writes the config (rewritten on every start) and sets the command line.
prepare_start() {
    mkdir -p "$data_dir"
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
    server_cmd=("$(mosquitto_bin)" -c "$conf_file")
}

engine_main "$@"
