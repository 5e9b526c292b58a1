#!/usr/bin/env bash
# Chaos run: three example nodes (examples/node.rs) behind HAProxy
# (examples/deploy/haproxy-header.cfg) sharing a real redis-server, under the load generator
# (bench/loadgen, workload chaos), while Redis is killed and restarted, paused (SIGSTOP) and
# resumed, and nodes are killed (SIGKILL) and restarted, once during a Redis pause.
#
#   scripts/chaos.sh [SECONDS]    SECONDS of load (default 60, at least 10)
#
# It ends with one line,
#   chaos: R requests, E errors (K on killed nodes' sessions), O orphan keys, rss n1 a→b MiB ...
# E: failed requests other than those on the sessions of a node that was killed (Redis faults
# must cost no session anything); K: those on a killed node's sessions (a request in flight
# when it died; its sessions are adopted by the live nodes); O: keys under mcp:session:*
# (but the node set) left in Redis once every session was DELETEd and the nodes stopped
# gracefully (SIGTERM);
# each node's RSS before and after the load (a restarted node's "after" is its new process).
# Exits non-zero when E or O is not 0, or when something fails to start or panics.
#
# Everything runs on 127.0.0.1 on free ports (never Redis's 6379), is stopped on exit and is
# bounded in time. Logs and the events file go to target/chaos/; Redis keeps an append-only
# file fsynced on every write (on /dev/shm when there is one), so a restarted Redis still
# holds every record it acknowledged. Environment: CHAOS_SESSIONS (64),
# CHAOS_CONNECTIONS (8), CHAOS_RATE (requests per second in all, 0 for a closed loop; 800),
# CHAOS_RENEW (every K-th request of a connection ends a session and a new one replaces it, so
# sessions start and end throughout the faults; 10), MCP_NODE_BIN and MCP_LOADGEN_BIN (binaries
# to run instead of building them with cargo).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

DURATION=60
for arg in "$@"; do
    case "$arg" in
        -h | --help)
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
            exit 0
            ;;
        *[!0-9]* | "")
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
        *) DURATION=$arg ;;
    esac
done
((DURATION >= 10)) || {
    echo "SECONDS must be at least 10" >&2
    exit 2
}

SESSIONS=${CHAOS_SESSIONS:-64}
CONNECTIONS=${CHAOS_CONNECTIONS:-8}
RATE=${CHAOS_RATE:-800}
RENEW=${CHAOS_RENEW:-10}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
NODE_BIN=${MCP_NODE_BIN:-$TARGET_DIR/debug/examples/node}
# Short, so that the records of sessions nobody adopted (a node killed while Redis was paused:
# its clients' next requests found no record and started over) are swept within the run; the
# load keeps every live session busy.
IDLE_TIMEOUT=4
LOADGEN_BIN=${MCP_LOADGEN_BIN:-$TARGET_DIR/debug/loadgen}
LOG_DIR="$TARGET_DIR/chaos"
EVENTS="$LOG_DIR/events.txt"

say() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'chaos: error: %s\n' "$*" >&2
    exit 1
}
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }
event() { echo "$* $(now_ms)" >>"$EVENTS"; }

find_tool() { # find_tool NAME: prints its path (PATH, then /usr/sbin)
    command -v "$1" 2>/dev/null || { [[ -x "/usr/sbin/$1" ]] && echo "/usr/sbin/$1"; } || true
}
REDIS_SERVER=$(find_tool redis-server)
REDIS_CLI=$(find_tool redis-cli)
HAPROXY=$(find_tool haproxy)
[[ -n "$REDIS_SERVER" && -n "$REDIS_CLI" ]] || die "redis-server and redis-cli are needed (apt-get install redis-server)"
[[ -n "$HAPROXY" ]] || die "haproxy is needed (apt-get install haproxy)"

if [[ -z "${MCP_NODE_BIN:-}" ]]; then
    say "building the node (cargo build --example node --all-features)"
    cargo build --quiet --example node --all-features
fi
if [[ -z "${MCP_LOADGEN_BIN:-}" ]]; then
    say "building the load generator (cargo build -p mcp-bench-loadgen)"
    cargo build --quiet -p mcp-bench-loadgen
fi
[[ -x "$NODE_BIN" ]] || die "$NODE_BIN missing"
[[ -x "$LOADGEN_BIN" ]] || die "$LOADGEN_BIN missing"

rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR"
: >"$EVENTS"

# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------
REDIS_PID=""
REDIS_DIR=""
HAPROXY_PID=""
LOADGEN_PID=""
declare -A NODE_PID NODE_PORT RSS_BEFORE RSS_AFTER RESTARTED

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # A stopped Redis acts on nothing but SIGKILL until it is continued.
    [[ -n "$REDIS_PID" ]] && kill -CONT "$REDIS_PID" 2>/dev/null
    local pids=($LOADGEN_PID $HAPROXY_PID "${NODE_PID[@]}" $REDIS_PID) pid i
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for ((i = 0; i < 50; i++)); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ "$REDIS_DIR" == /dev/shm/mcp-chaos-redis.* ]] && rm -rf "$REDIS_DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'echo "chaos: error: line $LINENO: exit status $?" >&2' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# Redis's append-only file, fsynced before each answer (so a killed Redis keeps every write it
# answered), on tmpfs where there is one: on a busy disk each fsync would stall Redis.
if [[ -d /dev/shm && -w /dev/shm ]]; then
    REDIS_DIR=$(mktemp -d /dev/shm/mcp-chaos-redis.XXXXXX)
else
    REDIS_DIR="$LOG_DIR/redis"
    mkdir -p "$REDIS_DIR"
fi

listening() { # listening PORT: something accepts connections on 127.0.0.1:PORT
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

node_of() { # node_of PORT: prints the x-mcp-node of a 200 answer to GET /healthz on PORT
    local line status="" node=""
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
    IFS= read -r -t 2 status <&3 || status=""
    while IFS= read -r -t 2 line <&3; do
        line=${line%$'\r'}
        [[ -z "$line" ]] && break
        [[ "${line,,}" == x-mcp-node:* ]] && node=${line#*: }
    done
    exec 3>&- 3<&-
    [[ "$status" == *" 200 "* && -n "$node" ]] || return 1
    echo "$node"
}

# Redis ------------------------------------------------------------------------------------
REDIS_PORT=""
redis() { timeout 5 "$REDIS_CLI" -p "$REDIS_PORT" "$@"; }

redis_ours() { # the server answering on REDIS_PORT is the process we started
    kill -0 "$REDIS_PID" 2>/dev/null || return 2
    [[ "$(redis ping 2>/dev/null)" == PONG ]] || return 1
    [[ "$(redis info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')" == "$REDIS_PID" ]]
}

redis_start() { # redis_start: (re)starts redis-server on REDIS_PORT; fails when it exits
    "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always \
        --dir "$REDIS_DIR" --logfile "$LOG_DIR/redis.log" &
    REDIS_PID=$!
    local deadline=$(($(now_ms) + 10000)) rc
    while true; do
        redis_ours && return 0 || rc=$?
        ((rc != 2 && $(now_ms) < deadline)) || return 1
        sleep 0.05
    done
}

for _ in 1 2 3 4 5; do
    REDIS_PORT=$((20000 + RANDOM % 30000))
    listening "$REDIS_PORT" && continue
    redis_start && break
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
done
[[ -n "$REDIS_PID" ]] || die "redis-server did not start (see $LOG_DIR/redis.log)"
say "redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"

# Nodes ------------------------------------------------------------------------------------
node_start() { # node_start NAME: starts the node on its port (0 the first time: any free one)
    local name=$1 port=${NODE_PORT[$1]:-0} log="$LOG_DIR/$1.log"
    echo "--- start $(now_ms)" >>"$log"
    RUST_LOG=${RUST_LOG:-info,mcp_affinity=debug} "$NODE_BIN" --listen "127.0.0.1:$port" \
        --node "$name" --redis "redis://127.0.0.1:$REDIS_PORT/" --idle-timeout "$IDLE_TIMEOUT" \
        >>"$log" 2>&1 &
    NODE_PID[$name]=$!
    local deadline=$(($(now_ms) + 30000))
    if [[ "$port" == 0 ]]; then
        # The node prints "MCP node <name> (tag …) listening on http://127.0.0.1:<port>/mcp".
        until port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\)/mcp.*|\1|p' "$log" | tail -1) && [[ -n "$port" ]]; do
            kill -0 "${NODE_PID[$name]}" 2>/dev/null || die "node $name exited (see $log)"
            (($(now_ms) < deadline)) || die "node $name not listening after 30s (see $log)"
            sleep 0.05
        done
        NODE_PORT[$name]=$port
    fi
    until [[ "$(node_of "$port" 2>/dev/null)" == "$name" ]]; do
        kill -0 "${NODE_PID[$name]}" 2>/dev/null || die "node $name exited (see $log)"
        (($(now_ms) < deadline)) || die "node $name not healthy after 30s (see $log)"
        sleep 0.05
    done
}

for name in n1 n2 n3; do
    node_start "$name"
    say "node $name on 127.0.0.1:${NODE_PORT[$name]} (pid ${NODE_PID[$name]})"
done

# HAProxy ----------------------------------------------------------------------------------
TEMPLATE="$ROOT/examples/deploy/haproxy-header.cfg"
for from in 127.0.0.1:8080 127.0.0.1:8404 127.0.0.1:18081 127.0.0.1:18082 127.0.0.1:18083; do
    grep -q "$from" "$TEMPLATE" || die "$TEMPLATE no longer names $from; update scripts/chaos.sh"
done
FRONT_PORT=""
for attempt in 1 2 3 4 5; do
    front=$((20000 + RANDOM % 30000))
    stats=$((20000 + RANDOM % 30000))
    listening "$front" || listening "$stats" && continue
    cfg="$LOG_DIR/haproxy-$attempt.cfg"
    sed -e "s/127\.0\.0\.1:8080/127.0.0.1:$front/" -e "s/127\.0\.0\.1:8404/127.0.0.1:$stats/" \
        -e "s/127\.0\.0\.1:18081/127.0.0.1:${NODE_PORT[n1]}/" \
        -e "s/127\.0\.0\.1:18082/127.0.0.1:${NODE_PORT[n2]}/" \
        -e "s/127\.0\.0\.1:18083/127.0.0.1:${NODE_PORT[n3]}/" "$TEMPLATE" >"$cfg"
    "$HAPROXY" -f "$cfg" -db >"$LOG_DIR/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    deadline=$(($(now_ms) + 10000))
    while kill -0 "$HAPROXY_PID" 2>/dev/null && ! node_of "$front" >/dev/null 2>&1 &&
        (($(now_ms) < deadline)); do
        sleep 0.05
    done
    if kill -0 "$HAPROXY_PID" 2>/dev/null && node_of "$front" >/dev/null 2>&1; then
        FRONT_PORT=$front
        break
    fi
    kill -KILL "$HAPROXY_PID" 2>/dev/null || true
    wait "$HAPROXY_PID" 2>/dev/null || true
    HAPROXY_PID=""
done
[[ -n "$FRONT_PORT" ]] || die "HAProxy did not start (see $LOG_DIR/haproxy.log)"
say "HAProxy on 127.0.0.1:$FRONT_PORT (pid $HAPROXY_PID)"

rss_of() { # rss_of PID: VmRSS in KiB
    sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status" 2>/dev/null || true
}
for name in n1 n2 n3; do RSS_BEFORE[$name]=$(rss_of "${NODE_PID[$name]}"); done

# ---------------------------------------------------------------------------------------
# Load and chaos
# ---------------------------------------------------------------------------------------
say "load: $SESSIONS sessions over $CONNECTIONS connections, ${RATE} requests/s (every ${RENEW}th renews a session), ${DURATION}s"
timeout $((DURATION + 120)) "$LOADGEN_BIN" --url "http://127.0.0.1:$FRONT_PORT/mcp" \
    --workload chaos --sessions "$SESSIONS" --connections "$CONNECTIONS" --rate "$RATE" \
    --renew "$RENEW" \
    --duration "$DURATION" --events "$EVENTS" >"$LOG_DIR/loadgen.json" 2>"$LOG_DIR/loadgen.log" &
LOADGEN_PID=$!
LOAD_END=$(($(now_ms) + DURATION * 1000))

# One slot of chaos: 1 to 3 s. The last faults end at least TAIL_MS before the load does, so
# the restarted nodes' cleanup (retried with a backoff of at most 5 s) is over by then.
SLOT_MS=$((DURATION * 50))
((SLOT_MS < 1000)) && SLOT_MS=1000
((SLOT_MS > 3000)) && SLOT_MS=3000
TAIL_MS=7000
pause_slot() { sleep "$((SLOT_MS / 1000)).$(printf '%03d' $((SLOT_MS % 1000)))"; }

redis_kill() {
    say "redis: SIGKILL"
    event redis kill
    kill -KILL "$REDIS_PID"
    wait "$REDIS_PID" 2>/dev/null || true
}
redis_restart() {
    redis_start || die "redis-server did not restart on port $REDIS_PORT (see $LOG_DIR/redis.log)"
    event redis up
    say "redis: restarted (pid $REDIS_PID)"
}
node_kill() { # node_kill NAME
    say "node $1: SIGKILL"
    event kill "$1"
    kill -KILL "${NODE_PID[$1]}"
    wait "${NODE_PID[$1]}" 2>/dev/null || true
    RESTARTED[$1]=1
}
node_restart() { # node_restart NAME
    node_start "$1"
    event up "$1"
    say "node $1: restarted (pid ${NODE_PID[$1]})"
}

pause_slot
cycle=0
nodes=(n1 n2 n3)
# A cycle is six slots plus the restarts (about a second each).
while ((cycle == 0 || $(now_ms) + 6 * SLOT_MS + 3000 + TAIL_MS <= LOAD_END)); do
    cycle=$((cycle + 1))
    victim=${nodes[cycle % 3]}
    redis_kill
    pause_slot
    redis_restart
    pause_slot
    say "redis: SIGSTOP"
    event redis pause
    kill -STOP "$REDIS_PID"
    if ((cycle % 2 == 0)); then
        # A node dies and comes back while Redis does not answer.
        node_kill "$victim"
        node_restart "$victim"
    fi
    pause_slot
    kill -CONT "$REDIS_PID"
    event redis resume
    say "redis: SIGCONT"
    pause_slot
    if ((cycle % 2 == 1)); then
        node_kill "$victim"
        node_restart "$victim"
    fi
    pause_slot
done
say "chaos over after $cycle cycle(s); the load goes on"

# Once the faults are over the registry catches up: at most one record per live session (the
# killed nodes' old records removed, every queued write landed). Reported, not judged: renewed
# sessions are briefly missing.
low="" high=""
while (($(now_ms) + 1000 < LOAD_END)); do
    if records=$(redis --scan --pattern 'mcp:session:{*' | wc -l); then
        [[ -z "$low" ]] || ((records < low)) && low=$records
        [[ -z "$high" ]] || ((records > high)) && high=$records
    fi
    sleep 0.2
done
say "registry after the faults: ${low:-?} to ${high:-?} records in Redis for $SESSIONS live sessions"

load_status=0
wait "$LOADGEN_PID" || load_status=$?
LOADGEN_PID=""
for name in n1 n2 n3; do RSS_AFTER[$name]=$(rss_of "${NODE_PID[$name]}"); done

# ---------------------------------------------------------------------------------------
# Graceful stop, then what is left in Redis
# ---------------------------------------------------------------------------------------
kill -TERM "$HAPROXY_PID" 2>/dev/null || true
wait "$HAPROXY_PID" 2>/dev/null || true
HAPROXY_PID=""
stop_failed=0
for name in n1 n2 n3; do kill -TERM "${NODE_PID[$name]}" 2>/dev/null || true; done
for name in n1 n2 n3; do
    pid=${NODE_PID[$name]}
    deadline=$(($(now_ms) + 30000))
    while kill -0 "$pid" 2>/dev/null && (($(now_ms) < deadline)); do sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "chaos: node $name still running 30s after SIGTERM" >&2
        kill -KILL "$pid" 2>/dev/null || true
        stop_failed=1
    fi
    status=0
    wait "$pid" 2>/dev/null || status=$?
    if ((status != 0)); then
        echo "chaos: node $name exited with status $status (see $LOG_DIR/$name.log)" >&2
        stop_failed=1
    fi
    unset "NODE_PID[$name]"
done

redis_ours || die "redis-server is not answering at the end"
# The node set (`mcp:session:nodes`) is the cluster's membership, kept by design.
mapfile -t orphans < <(redis --scan --pattern 'mcp:session:*' | grep -vx 'mcp:session:nodes')
for key in "${orphans[@]:0:10}"; do
    case "$(redis type "$key")" in
        string) value=$(redis get "$key") ;;
        zset) value=$(redis zrange "$key" 0 -1 | tr '\n' ' ') ;;
        *) value="" ;;
    esac
    echo "chaos: orphan key $key: $value" >&2
done

panics=$(cat "$LOG_DIR"/n[123].log | grep -c 'panicked' || true)
((panics == 0)) || echo "chaos: $panics panic(s) in the node logs ($LOG_DIR)" >&2

# ---------------------------------------------------------------------------------------
# The closing line
# ---------------------------------------------------------------------------------------
json=$(tail -1 "$LOG_DIR/loadgen.json" 2>/dev/null || true)
field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" <<<"$json"; }
requests=$(field requests)
errors=$(field errors)
killed=$(field killed_errors)
if ((load_status != 0)) || [[ -z "$requests" || -z "$errors" || -z "$killed" ]]; then
    tail -5 "$LOG_DIR/loadgen.log" >&2 || true
    die "the load generator failed (status $load_status; $LOG_DIR/loadgen.json)"
fi
if ((errors > 0)); then
    grep '^chaos: error' "$LOG_DIR/loadgen.log" >&2 || true
    # A live node that HAProxy took for dead sends its sessions elsewhere.
    grep -h 'is DOWN\|is UP' "$LOG_DIR/haproxy.log" >&2 || true
fi

mib() { awk -v k="${1:-0}" 'BEGIN { printf "%.1f", k / 1024 }'; }
rss=""
for name in n1 n2 n3; do
    rss+=" $name $(mib "${RSS_BEFORE[$name]}")→$(mib "${RSS_AFTER[$name]}") MiB"
    [[ -n "${RESTARTED[$name]:-}" ]] && rss+=" (restarted)"
done
line="chaos: $requests requests, $errors errors ($killed on killed nodes' sessions), ${#orphans[@]} orphan keys, rss$rss"
echo "$line"
[[ -n "${MCP_TEST_REPORT:-}" ]] && echo "$line" >>"$MCP_TEST_REPORT"
if ((${#orphans[@]})) && [[ "$REDIS_DIR" != "$LOG_DIR/redis" ]]; then
    # What Redis executed, in order, for the post-mortem.
    cp -r "$REDIS_DIR" "$LOG_DIR/redis" 2>/dev/null || true
fi
if ((errors == 0 && ${#orphans[@]} == 0 && panics == 0 && stop_failed == 0)); then
    exit 0
fi
exit 1
