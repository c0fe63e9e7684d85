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
# The pidfile, start, stop, status and dispatch machinery is in lib.sh.
set -euo pipefail

ENGINE=cql
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=9042
START_TIMEOUT_SECS=${FLEETCMD_CQL_START_TIMEOUT_SECS:-30}
STOP_TIMEOUT_SECS=5
PROCESS_MATCH=fleetcmd-cql-test-server
SERVER_NOUN="the server"

target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
case "$target_dir" in
    /*) ;;
    *) target_dir="$repo_root/$target_dir" ;;
esac
# Debug profile: it shares its dependencies with the test build, so CI compiles them once.
server_bin="$target_dir/debug/fleetcmd-cql-test-server"
NOT_INSTALLED="$server_bin is missing"
pid_file="$run_dir/cql-test-server.pid"
log_file="$run_dir/cql-test-server.log"

installed() {
    [[ -x "$server_bin" ]]
}

cmd_install() {
    echo "cql: building fleetcmd-cql-test-server"
    (cd "$repo_root" && cargo build --locked -p fleetcmd-cql-test-server)
    installed || { echo "cql: $server_bin was not built" >&2; exit 1; }
    echo "cql: installed $server_bin"
}

prepare_start() {
    server_cmd=("$server_bin" --listen "$HOST:$PORT")
}

engine_main "$@"
