# shellcheck shell=bash
# shellcheck disable=SC2154 # pid_file, log_file and server_cmd are set by the engine script
# The machinery shared by the engine scripts in this folder (nats.sh, mosquitto.sh, kafka.sh,
# cql.sh): pidfile, port check, start in the background with a log, stop, status and the
# install|start|stop|status dispatch. Sourced, not run: each script keeps only what is specific
# to its engine (how to install it, its command line and config, its port and name).
#
# An engine script does `set -euo pipefail`, sets ENGINE (its name: the prefix of every message
# and the name of its run-dir subfolder) and sources this file, which sets:
#   HOST      127.0.0.1, where every engine listens
#   repo_root the checkout
#   run_dir   ${FLEETCMD_ENGINES_DIR:-<repo>/.engines}/$ENGINE: config, data, pid, log
# Then the script sets:
#   PORT                the port the engine listens on
#   START_TIMEOUT_SECS  how long `start` waits for the port to answer
#   STOP_TIMEOUT_SECS   how long `stop` waits after SIGTERM before it sends SIGKILL
#   PROCESS_MATCH       a string in /proc/<pid>/cmdline that marks the engine's process
#   NOT_INSTALLED       what `start` says when the engine is not installed
#   pid_file, log_file  the engine's pidfile and log, in $run_dir: `engine_files NAME` sets
#                       them to $run_dir/NAME.pid and $run_dir/NAME.log
# and, when the defaults set here do not fit:
#   SERVER_NOUN    what start failure messages call the process (default: nothing)
#   URL_SCHEME     printed before host:port, e.g. nats:// (default: nothing)
#   STATE_WORDING  terse (default) or verbose: how stop and status word the state, see
#                  engine_status and engine_stop
#   port_file      for engines with a configurable port: where `start` records the port, so
#                  `start` refuses another port while running and `status` reports the
#                  recorded one (default: none)
# It defines the functions:
#   installed      succeeds when the engine is installed
#   cmd_install    the `install` command
#   prepare_start  run by `start` after it created $run_dir: writes the config, creates data
#                  folders and sets the array server_cmd to the server's command line
# and, when an open port does not yet mean that the engine serves:
#   engine_ready   succeeds once the engine serves; `start` waits for it after the port
#                  answers (default: always succeeds)
# and ends with: engine_main "$@"
# For engines that run on the JVM from Maven Central jars (kafka.sh, cql.sh) this file also has
# find_java (a java of a given version range) and maven_fetch_jars (artifacts and their
# dependencies into the install cache).

HOST=127.0.0.1
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
run_dir="${FLEETCMD_ENGINES_DIR:-$repo_root/.engines}/$ENGINE"
SERVER_NOUN=
URL_SCHEME=
STATE_WORDING=terse
port_file=

# Sets pid_file and log_file to $run_dir/$1.pid and $run_dir/$1.log: every engine keeps them
# there, named after its server process.
engine_files() {
    pid_file="$run_dir/$1.pid"
    log_file="$run_dir/$1.log"
}

# Succeeds when the engine is installed, saying "$ENGINE: $1 already installed $2" (what and
# where): `cmd_install` begins with `already_installed WHAT WHERE && return 0`, and asks again
# once it holds the install lock.
already_installed() {
    installed || return 1
    echo "$ENGINE: $1 already installed $2"
}

# The install cache of the engines that download or build something (FLEETCMD_ENGINES_CACHE,
# default $HOME/.cache/fleetcmd-engines), outside the checkout so CI runs on the same machine
# reuse it.
engines_cache_dir() {
    echo "${FLEETCMD_ENGINES_CACHE:-$HOME/.cache/fleetcmd-engines}"
}

# The Java feature version (17, 21, ...) of the java binary $1; fails for a pre-9 "1.x" or an
# unusable binary.
java_feature_version() {
    local v
    v=$("$1" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')
    [[ "$v" =~ ^[0-9]+$ ]] || return 1
    echo "$v"
}

# Prints the first java whose feature version is between $1 and $2 (inclusive), looking at
# $FLEETCMD_JAVA (a java binary), $JAVA_HOME, `java` on the PATH and /usr/lib/jvm/*, in that
# order; fails when there is none.
find_java() {
    local min=$1 max=$2 candidate v
    local candidates=("${FLEETCMD_JAVA:-}" "${JAVA_HOME:+$JAVA_HOME/bin/java}"
        "$(command -v java 2>/dev/null || true)")
    candidates+=(/usr/lib/jvm/*/bin/java)
    for candidate in "${candidates[@]}"; do
        [[ -n "$candidate" && -x "$candidate" ]] || continue
        v=$(java_feature_version "$candidate") || continue
        if ((v >= min && v <= max)); then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# The maven-dependency-plugin that copies the jars (pinned: Debian's Maven 3.8 would pick an
# old default).
MAVEN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

# Fetches the artifacts $2... (group:artifact:version) and their runtime dependencies from Maven
# Central into the folder $1/libs, through a generated $1/pom.xml and `mvn dependency:copy-
# dependencies` (Maven's own cache, ~/.m2, keeps a second copy). The folder appears only when
# complete: the jars land in a temporary sibling that is renamed at the end, so an interrupted
# fetch leaves nothing half-done behind. Callers skip it when $1/libs is there.
maven_fetch_jars() {
    local dest=$1
    shift
    command -v mvn >/dev/null || {
        echo "$ENGINE: mvn (Maven) is not installed; apt-get install -y maven" >&2
        return 1
    }
    mkdir -p "$(dirname "$dest")"
    rm -rf "$dest".tmp.*
    local work
    work=$(mktemp -d "$dest.tmp.XXXXXX")
    {
        cat <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by deploy/engines (lib.sh maven_fetch_jars): the jars of a local engine. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>fleetcmd.engines</groupId>
  <artifactId>engine-jars</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
EOF
        local coord g a v
        for coord in "$@"; do
            IFS=: read -r g a v <<<"$coord"
            printf '    <dependency><groupId>%s</groupId><artifactId>%s</artifactId><version>%s</version></dependency>\n' \
                "$g" "$a" "$v"
        done
        cat <<'EOF'
  </dependencies>
</project>
EOF
    } >"$work/pom.xml"
    # -q: only errors; Maven 3.8 still prints colour resets, hence the sed.
    if ! mvn -q -B -Dstyle.color=never -f "$work/pom.xml" "$MAVEN_DEPENDENCY_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$work/libs" 2>&1 |
        sed -e $'s/\e\\[[0-9;]*m//g' -e '/^$/d' >&2; then
        echo "$ENGINE: mvn could not fetch $* (pom: $work/pom.xml, kept for a look)" >&2
        return 1
    fi
    rm -rf "$dest"
    mv "$work" "$dest"
}

# The pid in the pidfile, when that process is alive and is the engine's ($PROCESS_MATCH in its
# command line); fails otherwise, so a stale pidfile or a reused pid does not count.
running_pid() {
    [[ -f "$pid_file" ]] || return 1
    local pid
    pid=$(<"$pid_file")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    grep -q "$PROCESS_MATCH" "/proc/$pid/cmdline" 2>/dev/null || return 1
    echo "$pid"
}

# Overridden by engine scripts whose port opens before they serve (see the header).
engine_ready() {
    return 0
}

# Succeeds when something accepts TCP connections on $HOST:$PORT.
port_answers() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

# The engine's address as the scripts print it: $URL_SCHEME$HOST:$PORT.
engine_address() {
    echo "$URL_SCHEME$HOST:$PORT"
}

# Prints the last 40 lines of the engine's log to stderr.
print_log_tail() {
    tail -n 40 "$log_file" >&2
}

# Starts "$@" in the background with its output in a fresh $log_file, records its pid in the
# pidfile (and the port in $port_file, if any) and sets started_pid.
start_in_background() {
    : >"$log_file"
    # setsid: the server outlives this shell and is not killed with its process group.
    setsid "$@" >>"$log_file" 2>&1 </dev/null &
    started_pid=$!
    echo "$started_pid" >"$pid_file"
    if [[ -n "$port_file" ]]; then
        echo "$PORT" >"$port_file"
    fi
}

# Waits until $HOST:$PORT answers and engine_ready succeeds. When process $1 exits first, or
# after START_TIMEOUT_SECS (then kills it), prints the log tail, removes the pidfile and exits 1.
wait_for_port() {
    local pid=$1
    local deadline=$((SECONDS + START_TIMEOUT_SECS))
    local what="$ENGINE: ${SERVER_NOUN:+$SERVER_NOUN }"
    until port_answers && engine_ready; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "${what}exited during start; log tail ($log_file):" >&2
            print_log_tail
            rm -f "$pid_file"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "${what}did not answer on $HOST:$PORT within ${START_TIMEOUT_SECS}s; log tail ($log_file):" >&2
            print_log_tail
            kill "$pid" 2>/dev/null || true
            rm -f "$pid_file"
            exit 1
        fi
        sleep 0.1
    done
}

# Sends SIGTERM to process $1 and waits for it to exit; SIGKILL after STOP_TIMEOUT_SECS.
terminate_and_wait() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT_SECS))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            echo "$ENGINE: pid $pid still running after ${STOP_TIMEOUT_SECS}s; killing it" >&2
            kill -9 "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
}

# `start`: a no-op when the engine already runs from this run dir (an error when it runs on
# another port than $PORT); fails when it is not installed or when another process holds the
# port; otherwise prepares, starts it in the background and waits for its port.
engine_start() {
    local pid
    if pid=$(running_pid); then
        if [[ -n "$port_file" ]]; then
            local running_port
            running_port=$(cat "$port_file" 2>/dev/null || echo "$PORT")
            if [[ "$running_port" != "$PORT" ]]; then
                echo "$ENGINE: already running from $run_dir on port $running_port, not $PORT; stop it first" >&2
                exit 1
            fi
        fi
        echo "$ENGINE: $(engine_address) (already running, pid $pid)"
        return 0
    fi
    installed || {
        echo "$ENGINE: $NOT_INSTALLED; run '$0 install'" >&2
        exit 1
    }
    if port_answers; then
        echo "$ENGINE: $HOST:$PORT is already taken by a process not started by this script" >&2
        exit 1
    fi
    mkdir -p "$run_dir"
    prepare_start
    start_in_background "${server_cmd[@]}"
    wait_for_port "$started_pid"
    echo "$ENGINE: $(engine_address)"
}

# `stop`: stops the process in the pidfile, if it is the engine's, and removes the pidfile.
# Prints "stopped", or when nothing ran "not running" (terse) / "stopped (was not running)"
# (verbose).
engine_stop() {
    local pid
    if ! pid=$(running_pid); then
        rm -f "$pid_file"
        if [[ "$STATE_WORDING" == verbose ]]; then
            echo "$ENGINE: stopped (was not running)"
        else
            echo "$ENGINE: not running"
        fi
        return 0
    fi
    terminate_and_wait "$pid"
    rm -f "$pid_file"
    if [[ -n "$port_file" ]]; then
        rm -f "$port_file"
    fi
    echo "$ENGINE: stopped"
}

# `status`: exit 0 when the engine in the pidfile runs and its port answers. Prints
# "<address> (pid N)" / "not running" (terse) or "running at <address> (pid N)" / "stopped"
# (verbose); the address has the port it was started with when there is a $port_file.
engine_status() {
    local pid
    if pid=$(running_pid); then
        if [[ -n "$port_file" && -f "$port_file" ]]; then
            PORT=$(<"$port_file")
        fi
        if port_answers; then
            if [[ "$STATE_WORDING" == verbose ]]; then
                echo "$ENGINE: running at $(engine_address) (pid $pid)"
            else
                echo "$ENGINE: $(engine_address) (pid $pid)"
            fi
            return 0
        fi
    fi
    if [[ "$STATE_WORDING" == verbose ]]; then
        echo "$ENGINE: stopped"
    else
        echo "$ENGINE: not running"
    fi
    return 1
}

# Runs the command named by $1: install (the script's cmd_install), start, stop or status;
# anything else prints the usage and exits 2.
engine_main() {
    case "${1:-}" in
        install) cmd_install ;;
        start) engine_start ;;
        stop) engine_stop ;;
        status) engine_status ;;
        *)
            echo "usage: $0 install|start|stop|status" >&2
            exit 2
            ;;
    esac
}
