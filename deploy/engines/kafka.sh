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
# The pidfile, start, stop, status and dispatch machinery is in lib.sh.
set -euo pipefail

ENGINE=kafka
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TANSU_VERSION=0.6.0
PORT=9092
START_TIMEOUT_SECS=${FLEETCMD_KAFKA_START_TIMEOUT_SECS:-30}
STOP_TIMEOUT_SECS=5
PROCESS_MATCH=tansu
SERVER_NOUN=tansu
NOT_INSTALLED="tansu $TANSU_VERSION is not installed"

install_root="$(engines_cache_dir)/tansu"
tansu_bin="$install_root/bin/tansu"
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

prepare_start() {
    server_cmd=("$tansu_bin" broker
        --listener-url "tcp://$HOST:$PORT"
        --advertised-listener-url "tcp://$HOST:$PORT"
        --storage-engine "memory://tansu/")
}

engine_main "$@"
