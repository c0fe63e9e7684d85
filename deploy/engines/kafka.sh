#!/usr/bin/env bash
# Installs, starts, stops and reports on a local Apache Kafka broker (Kafka 4.4.0 from Maven
# Central, KRaft, one node that is broker and controller, data on disk) for the Kafka adapter's
# tests and for local clusters.
#
#   deploy/engines/kafka.sh install   # fetch kafka_2.13 and its jars with mvn (~15 s), cached
#   deploy/engines/kafka.sh start     # start on 127.0.0.1:9092 unless already running (~7-10 s
#                                     # on 2 busy cores; the first start also formats the
#                                     # storage, ~18 s); waits until the broker serves
#   deploy/engines/kafka.sh stop      # controlled shutdown (SIGTERM, ~3 s), pidfile
#   deploy/engines/kafka.sh status    # exit 0 and print the address when running
#
# Environment:
#   FLEETCMD_ENGINES_CACHE              install cache (default: $HOME/.cache/fleetcmd-engines);
#                                       the jars go to its kafka-<version>/libs
#   FLEETCMD_ENGINES_DIR                runtime files: config, data, pid, log
#                                       (default: <repo>/.engines; this script uses kafka/)
#   FLEETCMD_KAFKA_START_TIMEOUT_SECS   how long `start` waits for the broker (default: 90)
#   FLEETCMD_KAFKA_HEAP                 JVM heap options (default: -Xms256m -Xmx512m)
#   FLEETCMD_JAVA                       the java binary (default: the first Java >= 17 of
#                                       $JAVA_HOME, the PATH, /usr/lib/jvm)
#   FLEETCMD_KAFKA_ENGINE               kafka (default) or tansu: the old stand-in (tansu 0.6.0,
#                                       in-memory, no transactions, loses its topics on a
#                                       restart; `install` builds it with cargo, ~10 min). Only
#                                       for comparing; the tests expect Apache Kafka.
#
# The broker: PLAINTEXT listener 127.0.0.1:9092, controller 127.0.0.1:9093, node.id 1,
# replication factor 1 everywhere, no topic auto-creation (the adapter creates its topic with
# the partition count it checks). Topics and offsets live in <run dir>/data and survive
# stop/start; delete that folder for an empty broker. Kafka sets TCP_NODELAY on its sockets.
#
# Clients: librdkafka >= 2.x (rdkafka's bundled 2.12, confluent-kafka's 2.16 tested). With
# group.protocol=consumer the client may not set session.timeout.ms, heartbeat.interval.ms or
# partition.assignment.strategy (librdkafka refuses them; group.remote.assignor instead).
# fetch.wait.max.ms is a long poll here (a fetch returns as soon as data arrives): a few ms
# only burns CPU (an idle consumer at 2 ms costs the broker ~55% of a core).
#
# Every command is idempotent; use the same FLEETCMD_KAFKA_ENGINE for start and stop. The
# pidfile, start, stop, status and dispatch machinery is in lib.sh.
set -euo pipefail

ENGINE=kafka
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT=9092
KAFKA_ENGINE=${FLEETCMD_KAFKA_ENGINE:-kafka}
cache_root=$(engines_cache_dir)

case "$KAFKA_ENGINE" in
    kafka)
        KAFKA_VERSION=4.4.0
        # kafka-server brings log4j-core 2.25.5 but no SLF4J binding (the Kafka distribution
        # ships one): without it Kafka's own log lines go nowhere.
        LOG4J_VERSION=2.25.5
        CONTROLLER_PORT=9093
        # About 10-20 s on 2 cores (more on the first start, which also formats the storage).
        START_TIMEOUT_SECS=${FLEETCMD_KAFKA_START_TIMEOUT_SECS:-90}
        # SIGTERM: controlled shutdown, flushes the logs; a few seconds.
        STOP_TIMEOUT_SECS=30
        PROCESS_MATCH=kafka.Kafka
        SERVER_NOUN=kafka
        NOT_INSTALLED="Apache Kafka $KAFKA_VERSION is not installed"

        install_dir="$cache_root/kafka-$KAFKA_VERSION"
        libs_dir="$install_dir/libs"
        conf_file="$run_dir/server.properties"
        log4j_file="$run_dir/log4j2.xml"
        data_dir="$run_dir/data"
        engine_files kafka

        installed() {
            [[ -f "$libs_dir/kafka_2.13-$KAFKA_VERSION.jar" ]]
        }

        cmd_install() {
            already_installed "Apache Kafka $KAFKA_VERSION" "in $install_dir" && return 0
            mkdir -p "$cache_root"
            # Two runs on one machine (a developer and CI) may install at once: take turns.
            exec 9>"$cache_root/kafka.lock"
            flock 9
            already_installed "Apache Kafka $KAFKA_VERSION" "in $install_dir" && return 0
            echo "kafka: fetching Apache Kafka $KAFKA_VERSION (kafka_2.13 and its jars) from Maven Central"
            maven_fetch_jars "$install_dir" \
                "org.apache.kafka:kafka_2.13:$KAFKA_VERSION" \
                "org.apache.logging.log4j:log4j-slf4j-impl:$LOG4J_VERSION"
            installed || {
                echo "kafka: $libs_dir has no kafka_2.13-$KAFKA_VERSION.jar" >&2
                exit 1
            }
            echo "kafka: installed Apache Kafka $KAFKA_VERSION ($(find "$libs_dir" -name '*.jar' | wc -l) jars in $libs_dir)"
        }

        # The broker binds its port a few seconds before it serves (it must first catch up
        # with the metadata log and be unfenced); it logs this line once it does.
        engine_ready() {
            grep -q "Kafka Server started" "$log_file"
        }

        java_bin() {
            find_java 17 99 || {
                echo "kafka: Kafka $KAFKA_VERSION needs Java 17 or newer; none found" >&2
                exit 1
            }
        }

        write_config() {
            cat >"$conf_file" <<EOF
# Written by deploy/engines/kafka.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data_dir
# One node: every internal topic with replication factor 1, and few partitions (the default
# 50 makes the first consumer group and the first transaction wait for 50 partitions).
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=4
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
# A group forms as soon as its first member joins, not 3 s later.
group.initial.rebalance.delay.ms=0
# The consumer group protocol (KIP-848, group.protocol=consumer): the broker, not the client,
# sets heartbeat interval and session timeout, and assignments travel in heartbeats. Kafka's
# defaults (5 s, 45 s) make a test wait 5 s for every reassignment; these let a group (or its
# group config, consumer.heartbeat.interval.ms / consumer.session.timeout.ms) go as low as
# the classic protocol's 6 s session and 1 s heartbeats, and make 1 s the default heartbeat.
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
group.consumer.min.session.timeout.ms=6000
# Topics are created explicitly (the adapter does, with its partition count): a producer's
# metadata request for a missing topic must not create it with num.partitions.
auto.create.topics.enable=false
EOF
            cat >"$log4j_file" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by deploy/engines/kafka.sh; rewritten on every start. To stdout, which the
     script sends to the log file. No shutdown hook: Kafka logs its own shutdown. -->
<Configuration status="warn" shutdownHook="disable">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="info"><AppenderRef ref="stdout"/></Root>
    <Logger name="kafka.request.logger" level="warn"/>
    <Logger name="org.apache.kafka.clients" level="warn"/>
    <Logger name="state.change.logger" level="warn"/>
    <Logger name="kafka.log.LogCleaner" level="warn"/>
    <!-- Its dumps of every config (server.properties has ours) are 2000 lines per start. -->
    <Logger name="org.apache.kafka.common.config.AbstractConfig" level="warn"/>
  </Loggers>
</Configuration>
EOF
        }

        # Formats the storage once (KRaft: a cluster id and a one-voter dynamic quorum); a
        # formatted data folder is kept, so topics survive restarts.
        format_storage() {
            local java=$1
            [[ -f "$data_dir/meta.properties" ]] && return 0
            local format_log="$run_dir/format.log" cluster_id
            cluster_id=$("$java" -Xmx128m -cp "$libs_dir/*" kafka.tools.StorageTool random-uuid 2>>"$format_log")
            if ! "$java" -Xmx256m -Dlog4j2.configurationFile="$log4j_file" -cp "$libs_dir/*" \
                kafka.tools.StorageTool format --standalone --ignore-formatted \
                -t "$cluster_id" -c "$conf_file" >>"$format_log" 2>&1; then
                echo "kafka: formatting $data_dir failed:" >&2
                tail -n 20 "$format_log" >&2
                exit 1
            fi
        }

        prepare_start() {
            local java
            java=$(java_bin)
            mkdir -p "$data_dir"
            write_config
            format_storage "$java"
            # shellcheck disable=SC2206 # the heap options are words
            local heap=(${FLEETCMD_KAFKA_HEAP:--Xms256m -Xmx512m})
            # The JVM options of Kafka's kafka-run-class.sh, with a small heap.
            server_cmd=("$java" "${heap[@]}"
                -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
                -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
                -Dlog4j2.configurationFile="$log4j_file"
                -cp "$libs_dir/*"
                kafka.Kafka "$conf_file")
        }
        ;;

    tansu)
        TANSU_VERSION=0.6.0
        START_TIMEOUT_SECS=${FLEETCMD_KAFKA_START_TIMEOUT_SECS:-30}
        STOP_TIMEOUT_SECS=5
        PROCESS_MATCH=tansu
        SERVER_NOUN=tansu
        NOT_INSTALLED="tansu $TANSU_VERSION is not installed"

        install_root="$cache_root/tansu"
        tansu_bin="$install_root/bin/tansu"
        engine_files tansu

        installed() {
            [[ -x "$tansu_bin" ]] && "$tansu_bin" --version 2>/dev/null | grep -q " $TANSU_VERSION\b"
        }

        cmd_install() {
            already_installed "tansu $TANSU_VERSION" "at $tansu_bin" && return 0
            echo "kafka: installing tansu $TANSU_VERSION into $install_root (takes ~10 minutes)"
            mkdir -p "$install_root"
            cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore \
                --root "$install_root"
            installed || {
                echo "kafka: $tansu_bin does not report version $TANSU_VERSION" >&2
                exit 1
            }
        }

        prepare_start() {
            server_cmd=("$tansu_bin" broker
                --listener-url "tcp://$HOST:$PORT"
                --advertised-listener-url "tcp://$HOST:$PORT"
                --storage-engine "memory://tansu/")
        }
        ;;

    *)
        echo "kafka: FLEETCMD_KAFKA_ENGINE must be kafka or tansu, not '$KAFKA_ENGINE'" >&2
        exit 2
        ;;
esac

engine_main "$@"
