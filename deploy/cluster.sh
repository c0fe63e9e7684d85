#!/usr/bin/env bash
# Starts, stops and reports on a fleetcmd cluster on this machine: the registry, two
# dispatchers, the projector and two edges, each its own process, on the local engines
# (start those first: deploy/engines/<name>.sh start for nats, mosquitto, kafka and cql).
#
#   deploy/cluster.sh start    # start the six processes, wait until each answers
#   deploy/cluster.sh stop     # SIGTERM each, wait for it to exit
#   deploy/cluster.sh status   # one line per process; exit 0 only when all run
#   deploy/cluster.sh pids     # the running processes' pids, comma-separated (bench --server-pid)
#
# Environment:
#   FLEETCMD_BIN          the binary (default: <repo>/target/release/fleetcmd, built with
#                         `cargo build --release -p fleetcmd --features cluster`)
#   FLEETCMD_ENGINES_DIR  runtime files; this script uses its cluster/ subfolder
#                         (default: <repo>/.engines)
#   plus every FLEETCMD_<SECTION>_<KEY> variable `fleetcmd run` reads (engines' addresses;
#   FLEETCMD_KAFKA_COMPAT follows the engine's choice below).
#
# Ports (127.0.0.1): registry gRPC 50051, dispatchers 50052 and 50053, projector health
# 50061, edges' health 50062 and 50063, metrics 9464-9469 in the same order. The edges share
# the device updates (mqtt.instances=2) and connect to Mosquitto on 1884.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir="${FLEETCMD_ENGINES_DIR:-$repo_root/.engines}/cluster"
bin="${FLEETCMD_BIN:-$repo_root/target/release/fleetcmd}"
HOST=127.0.0.1

# ---- compat mode of the engines -------------------------------------------------------------
# fleetcmd's adapters default to the real engines (kafka.compat = "none"), which
# deploy/engines/kafka.sh and cql.sh run by default: Apache Kafka, Cassandra. The old Kafka
# stand-in, still selectable with FLEETCMD_KAFKA_ENGINE=tansu, needs workarounds, asked for
# here and only here (the same block is in deploy/test.sh): FLEETCMD_KAFKA_COMPAT, which the
# adapter tests and `fleetcmd run` read. A value already in the environment wins.
if [[ "${FLEETCMD_KAFKA_ENGINE:-kafka}" == tansu ]]; then
    export FLEETCMD_KAFKA_COMPAT=${FLEETCMD_KAFKA_COMPAT:-tansu}
fi

# name | service | port to wait for | flags
processes=(
    "registry|registry|50051|--set grpc.addr=$HOST:50051 --set metrics.addr=$HOST:9464"
    "dispatcher-0|dispatcher|50052|--set grpc.addr=$HOST:50052 --set metrics.addr=$HOST:9465"
    "dispatcher-1|dispatcher|50053|--set grpc.addr=$HOST:50053 --set metrics.addr=$HOST:9466"
    "projector|projector|50061|--set health.addr=$HOST:50061 --set metrics.addr=$HOST:9467"
    "edge-0|edge|50062|--set health.addr=$HOST:50062 --set metrics.addr=$HOST:9468 --set mqtt.port=1884 --set mqtt.client_id=edge-0 --set mqtt.instances=2 --set mqtt.instance=0"
    "edge-1|edge|50063|--set health.addr=$HOST:50063 --set metrics.addr=$HOST:9469 --set mqtt.port=1884 --set mqtt.client_id=edge-1 --set mqtt.instances=2 --set mqtt.instance=1"
)

# The pid in $run_dir/$1.pid when that process is alive and is a `fleetcmd run`.
running_pid() {
    local f="$run_dir/$1.pid" pid
    [[ -f "$f" ]] || return 1
    pid=$(<"$f")
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q " run " || return 1
    echo "$pid"
}

port_answers() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

cmd_start() {
    [[ -x "$bin" ]] || {
        echo "cluster: $bin not found; build it with: cargo build --release -p fleetcmd --features cluster" >&2
        exit 1
    }
    mkdir -p "$run_dir"
    local p name service port flags pid
    for p in "${processes[@]}"; do
        IFS='|' read -r name service port flags <<<"$p"
        if pid=$(running_pid "$name"); then
            echo "cluster: $name already running (pid $pid)"
            continue
        fi
        if port_answers "$port"; then
            echo "cluster: $HOST:$port (for $name) is taken by a process not started by this script" >&2
            exit 1
        fi
        # shellcheck disable=SC2086 # flags is a list of words
        setsid "$bin" run "$service" $flags >"$run_dir/$name.log" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$run_dir/$name.pid"
        local deadline=$((SECONDS + 60))
        until port_answers "$port"; do
            if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
                echo "cluster: $name did not come up on $HOST:$port; log tail ($run_dir/$name.log):" >&2
                tail -n 30 "$run_dir/$name.log" >&2
                kill "$pid" 2>/dev/null || true
                rm -f "$run_dir/$name.pid"
                exit 1
            fi
            sleep 0.1
        done
        echo "cluster: $name on $HOST:$port (pid $pid)"
    done
}

cmd_stop() {
    local p name pid
    for p in "${processes[@]}"; do
        name=${p%%|*}
        if pid=$(running_pid "$name"); then
            kill "$pid" 2>/dev/null || true
            local deadline=$((SECONDS + 30))
            while kill -0 "$pid" 2>/dev/null; do
                if ((SECONDS >= deadline)); then
                    echo "cluster: $name (pid $pid) still running after 30 s; killing it" >&2
                    kill -9 "$pid" 2>/dev/null || true
                    break
                fi
                sleep 0.1
            done
            echo "cluster: $name stopped"
        fi
        rm -f "$run_dir/$name.pid"
    done
}

cmd_status() {
    local p name pid all=0
    for p in "${processes[@]}"; do
        name=${p%%|*}
        if pid=$(running_pid "$name"); then
            echo "cluster: $name running (pid $pid)"
        else
            echo "cluster: $name stopped"
            all=1
        fi
    done
    return "$all"
}

cmd_pids() {
    local p pid out=()
    for p in "${processes[@]}"; do
        if pid=$(running_pid "${p%%|*}"); then out+=("$pid"); fi
    done
    (IFS=,; echo "${out[*]}")
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
pids) cmd_pids ;;
*)
    echo "usage: $0 start|stop|status|pids" >&2
    exit 2
    ;;
esac
