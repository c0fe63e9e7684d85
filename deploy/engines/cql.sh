#!/usr/bin/env bash
# Installs, starts, stops and reports on a local CQL server for the ScyllaDB adapter's tests and
# for local clusters: Apache Cassandra 5.0.9 (the cassandra-all jars from Maven Central, run
# from a class path of their own; one node, data on disk). ScyllaDB itself is in no registry
# these machines reach; the adapter's driver talks to Cassandra over the same CQL protocol
# (ScyllaDB-only features, e.g. shard-aware ports, are not there).
#
#   deploy/engines/cql.sh install   # fetch cassandra-all and its 100 jars with mvn (~15 s)
#   deploy/engines/cql.sh start     # start on 127.0.0.1:9042 unless already running
#                                   # (~12-20 s on 2 busy cores; waits for the CQL port)
#   deploy/engines/cql.sh stop      # SIGTERM: Cassandra drains (flushes) and exits (~5 s)
#   deploy/engines/cql.sh status    # exit 0 and print the address when running
#
# Environment:
#   FLEETCMD_ENGINES_CACHE            install cache (default: $HOME/.cache/fleetcmd-engines);
#                                     the jars go to its cassandra-<version>/libs
#   FLEETCMD_ENGINES_DIR              runtime files: cassandra.yaml, logback.xml, data, pid,
#                                     log (default: <repo>/.engines; this script uses cql/)
#   FLEETCMD_CQL_START_TIMEOUT_SECS   how long `start` waits for the port (default: 120)
#   FLEETCMD_CQL_HEAP                 JVM heap options (default: -Xms2g -Xmx2g: the test suites
#                                     create many tables, and each costs heap)
#   FLEETCMD_CQL_FLUSH_SCHEMA         1: flush the schema after every DDL statement, as
#                                     Cassandra does by default (slower DDL; default 0, see
#                                     prepare_start: a killed node loses new keyspaces)
#   FLEETCMD_JAVA                     the java binary (default: the first Java 11-17 of
#                                     $JAVA_HOME, the PATH, /usr/lib/jvm; Cassandra 5.0 runs on
#                                     11 and 17 only)
#   FLEETCMD_CQL_ENGINE               cassandra (the default and only engine)
#
# The node: native transport (CQL) 127.0.0.1:9042, inter-node storage port 127.0.0.1:7000 (no
# other node ever joins), no JMX (so no nodetool), no authentication, SimpleSnitch, one token.
# Keyspaces live in <run dir>/data and survive stop/start; delete that folder for an empty node.
# Schema changes are slow on Cassandra (~0.1-0.5 s per CREATE TABLE here); the driver waits for
# schema agreement after each, which on one node is immediate.
#
# Every command is idempotent. The pidfile, start, stop, status and dispatch machinery is in
# lib.sh.
set -euo pipefail

ENGINE=cql
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=9042
CQL_ENGINE=${FLEETCMD_CQL_ENGINE:-cassandra}

case "$CQL_ENGINE" in
    cassandra)
        CASSANDRA_VERSION=5.0.9
        # The version cassandra-all 5.0.9 depends on; Cassandra's scripts load it as an agent.
        JAMM_VERSION=0.4.0
        STORAGE_PORT=7000
        START_TIMEOUT_SECS=${FLEETCMD_CQL_START_TIMEOUT_SECS:-120}
        # SIGTERM: Cassandra's shutdown hook drains (flushes every memtable), a few seconds.
        STOP_TIMEOUT_SECS=60
        PROCESS_MATCH=org.apache.cassandra.service.CassandraDaemon
        SERVER_NOUN=cassandra
        NOT_INSTALLED="Apache Cassandra $CASSANDRA_VERSION is not installed"

        cache_root=$(engines_cache_dir)
        install_dir="$cache_root/cassandra-$CASSANDRA_VERSION"
        libs_dir="$install_dir/libs"
        conf_file="$run_dir/cassandra.yaml"
        logback_file="$run_dir/logback.xml"
        data_dir="$run_dir/data"
        engine_files cassandra

        installed() {
            [[ -f "$libs_dir/cassandra-all-$CASSANDRA_VERSION.jar" && -f "$libs_dir/jamm-$JAMM_VERSION.jar" ]]
        }

        cmd_install() {
            already_installed "Apache Cassandra $CASSANDRA_VERSION" "in $install_dir" && return 0
            mkdir -p "$cache_root"
            # Two runs on one machine (a developer and CI) may install at once: take turns.
            exec 9>"$cache_root/cassandra.lock"
            flock 9
            already_installed "Apache Cassandra $CASSANDRA_VERSION" "in $install_dir" && return 0
            echo "cql: fetching Apache Cassandra $CASSANDRA_VERSION (cassandra-all and its jars) from Maven Central"
            maven_fetch_jars "$install_dir" "org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION"
            installed || {
                echo "cql: $libs_dir lacks cassandra-all-$CASSANDRA_VERSION.jar or jamm-$JAMM_VERSION.jar" >&2
                exit 1
            }
            echo "cql: installed Apache Cassandra $CASSANDRA_VERSION ($(find "$libs_dir" -name '*.jar' | wc -l) jars in $libs_dir)"
        }

        java_bin() {
            find_java 11 17 || {
                echo "cql: Cassandra $CASSANDRA_VERSION needs Java 11 or 17; none found (FLEETCMD_JAVA, JAVA_HOME, PATH, /usr/lib/jvm)" >&2
                exit 1
            }
        }

        write_config() {
            cat >"$conf_file" <<EOF
# Written by deploy/engines/cql.sh; rewritten on every start. One local Cassandra 5.0 node.
cluster_name: fleetcmd-local
# One token: a single node owns the whole ring, and range scans (TRUNCATE, full-table reads)
# need not visit 16 vnode ranges.
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$STORAGE_PORT"
listen_address: $HOST
storage_port: $STORAGE_PORT
rpc_address: $HOST
start_native_transport: true
native_transport_port: $PORT
data_file_directories:
  - $data_dir/data
commitlog_directory: $data_dir/commitlog
saved_caches_directory: $data_dir/saved_caches
hints_directory: $data_dir/hints
cdc_raw_directory: $data_dir/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
# Test data: TRUNCATE and DROP need not snapshot (hard links and a flush each time).
auto_snapshot: false
# No other node: nothing to hint, nothing to wait for.
hinted_handoff_enabled: false
EOF
            cat >"$logback_file" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by deploy/engines/cql.sh; rewritten on every start. To stdout, which the script
     sends to the log file. -->
<configuration scan="false">
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="STDOUT"/>
  </root>
</configuration>
EOF
        }

        prepare_start() {
            local java
            java=$(java_bin)
            mkdir -p "$data_dir"
            write_config
            # shellcheck disable=SC2206 # the heap options are words
            local heap=(${FLEETCMD_CQL_HEAP:--Xms2g -Xmx2g})
            # jvm17-server.options of Cassandra 5.0 (its module options must all be there: it
            # reaches into JDK internals), jvm-server.options' general settings, the jamm agent
            # of cassandra.in.sh, and the system properties that make one node start fast.
            local jpms=(
                -Djdk.attach.allowAttachSelf=true
                --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
                --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
                --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
                --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
                --add-exports java.sql/java.sql=ALL-UNNAMED
                --add-exports java.base/java.lang.ref=ALL-UNNAMED
                --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
                --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
                --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
                --add-opens java.base/java.lang.module=ALL-UNNAMED
                --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
                --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
                --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
                --add-opens java.base/jdk.internal.math=ALL-UNNAMED
                --add-opens java.base/jdk.internal.module=ALL-UNNAMED
                --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
                --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
                --add-opens java.base/sun.nio.ch=ALL-UNNAMED
                --add-opens java.base/java.io=ALL-UNNAMED
                --add-opens java.base/java.lang.reflect=ALL-UNNAMED
                --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
                --add-opens java.base/java.lang=ALL-UNNAMED
                --add-opens java.base/java.util=ALL-UNNAMED
            )
            # Cassandra mlockall()s its memory at start; as root (CAP_IPC_LOCK) that succeeds
            # and faults in and pins the whole heap: 5 s more to start and 1.5 GB resident on
            # an idle node. Without the capability the call fails (RLIMIT_MEMLOCK) and
            # Cassandra goes on with a warning. glibc arenas capped as cassandra-env.sh does.
            local launcher=(env MALLOC_ARENA_MAX=4)
            if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null; then
                launcher+=(setpriv --inh-caps=-ipc_lock --bounding-set=-ipc_lock)
            fi
            # One node, no peers: nothing to wait for or to announce to.
            local fast=(
                -Dcassandra.skip_wait_for_gossip_to_settle=0
                -Dcassandra.ring_delay_ms=1000
                -Dcassandra.shutdown_announce_in_ms=0
                # Estimating the memtable row overhead takes 2-4 s of a start at the default
                # 100000 steps; Cassandra's own test setting.
                -Dcassandra.memtable_row_overhead_computation_step=100
            )
            # Cassandra flushes the schema tables after every DDL statement; without that a
            # keyspace with the adapter's 13 tables is created in ~1-3 s instead of ~5-7 s on 2
            # busy cores. The schema is still flushed by `stop` (drain), but a node that is
            # killed (SIGKILL, OOM) loses the keyspaces and tables created since its last start
            # (their commit log entries are then skipped). FLEETCMD_CQL_FLUSH_SCHEMA=1 keeps
            # Cassandra's default.
            if [[ "${FLEETCMD_CQL_FLUSH_SCHEMA:-0}" != 1 ]]; then
                fast+=(-Dcassandra.test.flush_local_schema_changes=false)
            fi
            server_cmd=("${launcher[@]}" "$java" "${heap[@]}" -Xss512k
                -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
                -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
                -XX:+UseThreadPriorities -XX:+HeapDumpOnOutOfMemoryError -XX:HeapDumpPath="$run_dir"
                -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError
                -ea -da:net.openhft...
                -Djava.net.preferIPv4Stack=true
                "${jpms[@]}"
                -Dio.netty.tryReflectionSetAccessible=true
                -Dio.netty.allocator.useCacheForAllThreads=true
                -Dio.netty.allocator.maxOrder=11
                -javaagent:"$libs_dir/jamm-$JAMM_VERSION.jar"
                -Dcassandra.config="file://$conf_file"
                -Dcassandra.storagedir="$data_dir"
                -Dcassandra.logdir="$run_dir"
                -Dlogback.configurationFile="$logback_file"
                -Dcassandra-foreground=yes
                "${fast[@]}"
                -cp "$libs_dir/*"
                org.apache.cassandra.service.CassandraDaemon)
        }
        ;;

    *)
        echo "cql: FLEETCMD_CQL_ENGINE must be cassandra, not '$CQL_ENGINE'" >&2
        exit 2
        ;;
esac

engine_main "$@"
