#!/usr/bin/env bash
# Side-by-side load test: bare hyper (the limit), rmcp 3.11, and this crate's node example
# (transport only; all layers with a real local redis-server; two nodes sharing that Redis, for
# forwarding and adoption). Writes bench/results/.
#
#   scripts/bench.sh                      # the full run (about 10 minutes on 2 cores)
#   RUNS=1 SECS=2 scripts/bench.sh        # a quick look
#   TARGETS="rmcp ours-full" scripts/bench.sh
#   OUT=bench/results/ping-ratios WORKLOADS=ping PING_SESSIONS=64 RUNS=7 scripts/bench.sh
#                                         # the ping ratios alone, over more rounds
#
# Needs: cargo, taskset, redis-server, redis-cli, python3 (standard library only).
# The server (and redis-server) run on core $SERVER_CORE, the load generator on $CLIENT_CORE.
# Each number is the median of $RUNS runs, each against a freshly started server, the servers
# taking turns run by run. Redis shares the server's core because the generator's core is
# saturated in most workloads: there, Redis answers late and the registry's write queue backs
# up. Its CPU is reported separately.
#
# Two-node targets (both nodes, like Redis, on the server core; their CPU summed):
# - ours-forward: `ping` on sessions initialized at node A and sent to node B, which forwards
#   each to A (for the session counts in $FORWARD_SESSIONS; and on 64 sessions over one
#   connection, beside ours-full, for the latency a hop adds when nothing queues);
# - ours-adopt: $ADOPT_SESSIONS sessions initialized at A, A sent SIGTERM (it drains), then every
#   session's first request sent to B, $ADOPT_CONNS at once, which adopts it
#   (`loadgen --workload adopt`).
# - hyper-forward, haproxy-forward: references for ours-forward's `ping`, the same sessions
#   initialized at node A and the same requests, sent through a hop that does nothing else:
#   a bare hyper HTTP/1.1 forwarder (`peer-hyper --forward`, one upstream connection per
#   accepted connection) or HAProxy 1 thread, `mode http`, keep-alive both ways (skipped when
#   `haproxy` is not installed). Their CPU is the hop's plus A's, as ours-forward's is B's
#   plus A's.
# Three-node target (all three nodes, like Redis, on the server core):
# - ours-cluster: `fanout` only, its $FANOUT_STREAMS GET streams spread round-robin over three
#   nodes sharing one Redis (the trigger's session on the first), so each broadcast crosses the
#   cluster bus (one PUBLISH, each node delivering to its own streams); every node's CPU per
#   delivery on that node, against ours-full's single node (`loadgen --node-url --node-pid`).
# - ours-nolog: `fanout` only, ours-full with `--no-event-log`: the single node's CPU per
#   delivery and Redis commands per delivery without the shared event log, against ours-full's.
# Tasks (SEP-2663, `tasks` only, `loadgen --workload tasks`, the stateless 2026-07-28 wire):
# - ours-tasks: `examples/everything.rs --redis` (its TaskLayer over the RedisTaskStore, on the
#   bench's redis-server): phase 1 creates tasks (`tools/call slow_compute {seconds: 0}` with
#   the opt-in, answered by a CreateTaskResult once the store holds the task) over $CONNS
#   connections, phase 2 polls `tasks/get` on the ids it created; per phase ops/s, latency,
#   server CPU and Redis commands per operation;
# - rmcp-tasks: the same against `peer-rmcp --tasks` (rmcp's in-process TaskManager, no store).
# KEEP_WORK=1 keeps the work directory (node and generator logs) and prints where it is.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

RUNS=${RUNS:-3}
SECS=${SECS:-3}            # measured seconds per timed run (after WARMUP)
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-64}
PING_SESSIONS=${PING_SESSIONS:-"64 1000 10000"}
IDLE_SESSIONS=${IDLE_SESSIONS:-10000}
FANOUT_STREAMS=${FANOUT_STREAMS:-10000}
STREAM_STEPS=${STREAM_STEPS:-10}
FORWARD_SESSIONS=${FORWARD_SESSIONS:-64}
ADOPT_SESSIONS=${ADOPT_SESSIONS:-1000}
ADOPT_CONNS=${ADOPT_CONNS:-$CONNS}    # first requests in flight at once after the drain
# Workloads to run (default: all), e.g. WORKLOADS=ping for the ratio lines alone, over more
# rounds.
ALL_WORKLOADS="ping adopt call churn stream idle fanout tasks"
WORKLOADS=${WORKLOADS:-$ALL_WORKLOADS}
for w in $WORKLOADS; do
    if [[ " $ALL_WORKLOADS " != *" $w "* ]]; then
        echo "bench.sh: unknown workload '$w' in WORKLOADS (known: $ALL_WORKLOADS)" >&2
        exit 2
    fi
done
TARGETS=${TARGETS:-"bare rmcp ours-transport ours-full ours-forward hyper-forward haproxy-forward ours-adopt ours-cluster ours-nolog ours-tasks rmcp-tasks"}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
OUT=${OUT:-$ROOT/bench/results}

for tool in cargo taskset redis-server redis-cli python3; do
    command -v "$tool" >/dev/null || { echo "bench.sh: $tool not found" >&2; exit 1; }
done
if [[ " $TARGETS " == *" haproxy-forward "* ]] && ! command -v haproxy >/dev/null; then
    echo "bench.sh: haproxy not found: haproxy-forward skipped (apt-get install haproxy)" >&2
    TARGETS=$(echo " $TARGETS " | sed 's/ haproxy-forward / /')
fi

echo "== building (release)"
cargo build --release --example node
# The tasks target serves the conformance example (its TaskLayer and the tasks fixtures).
[[ " $TARGETS " == *" ours-tasks "* ]] && cargo build --release --example everything
# The peer servers only for the targets that run them.
PEERS=()
[[ " $TARGETS " == *" bare "* || " $TARGETS " == *" rmcp "* || " $TARGETS " == *" rmcp-tasks "* ||
    " $TARGETS " == *" hyper-forward "* ]] &&
    PEERS=(-p mcp-bench-peers)
cargo build --release -p mcp-bench-loadgen "${PEERS[@]}"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
NODE=$BIN/examples/node
EVERYTHING=$BIN/examples/everything
LOADGEN=$BIN/loadgen

# 10,000 GET streams need as many sockets on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((FANOUT_STREAMS + IDLE_SESSIONS / 4 + 512)) ]; then
    echo "bench.sh: open-file limit $(ulimit -n) is too low for $FANOUT_STREAMS streams" >&2
    exit 1
fi

mkdir -p "$OUT"
RAW=$OUT/raw.jsonl
REDIS_TXT=$OUT/redis-commandstats.txt
: >"$RAW"
: >"$REDIS_TXT"
WORK=$(mktemp -d)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

SERVER_PID=
PEER_PID=
NODE_PIDS=()
NODE_URLS=()
REDIS_PID=
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
    [ -n "$PEER_PID" ] && kill "$PEER_PID" 2>/dev/null && wait "$PEER_PID" 2>/dev/null || true
    for pid in "${NODE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    done
    [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null || true
    if [ -n "${KEEP_WORK:-}" ]; then
        echo "== work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# --- Redis for the full stack (never 6379) ------------------------------------------------------
REDIS_PORT=$(free_port)
while [ "$REDIS_PORT" = 6379 ]; do REDIS_PORT=$(free_port); done
taskset -c "$SERVER_CORE" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" \
    --appendonly no --protected-mode yes --logfile "$WORK/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
redis-cli -p "$REDIS_PORT" ping >/dev/null

if grep -q "SessionAffinityLayer\|McpStack" examples/node.rs; then
    FULL_STACK="SessionAffinityLayer + RedisSessionRegistryLayer + SseTransportLayer"
else
    FULL_STACK="RedisSessionRegistryLayer + SseTransportLayer (examples/node.rs has no SessionAffinityLayer yet)"
fi

# start_node_a PORT: node A of the two-node targets, on a free port other than PORT, with a
# fresh Redis: sets port_a, INIT_URL (where the sessions are initialized) and PEER_PID.
start_node_a() {
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    port_a=$(free_port)
    while [ "$port_a" = "$1" ]; do port_a=$(free_port); done
    INIT_URL=http://127.0.0.1:$port_a/mcp
    RUST_LOG=warn taskset -c "$SERVER_CORE" "$NODE" --listen "127.0.0.1:$port_a" --node a \
        --redis "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>"$WORK/node-a-run.log" &
    PEER_PID=$!
}

# --- one server per run -------------------------------------------------------------------------
start_server() { # TARGET WORKLOAD -> sets SERVER_PID, URL (for two nodes PEER_PID, INIT_URL;
    # for three, NODE_PIDS and NODE_URLS of the other two)
    local port port_a port_n n
    port=$(free_port)
    URL=http://127.0.0.1:$port/mcp
    case $1 in
        bare)
            # For the fan-out, the bare server also holds streams and broadcasts (--fanout).
            local mode=()
            [ "$2" = fanout ] && mode=(--fanout)
            taskset -c "$SERVER_CORE" "$BIN/peer-hyper" --listen "127.0.0.1:$port" "${mode[@]}" >/dev/null & ;;
        rmcp) taskset -c "$SERVER_CORE" "$BIN/peer-rmcp" --listen "127.0.0.1:$port" >/dev/null & ;;
        rmcp-tasks)
            taskset -c "$SERVER_CORE" "$BIN/peer-rmcp" --listen "127.0.0.1:$port" --tasks >/dev/null & ;;
        ours-tasks)
            # Tasks in Redis (RedisTaskStore), with the session registry and the cluster bus on
            # the same Redis, as a node of a cluster runs; the stateless requests touch only
            # the task store.
            redis-cli -p "$REDIS_PORT" flushall >/dev/null
            RUST_LOG=warn taskset -c "$SERVER_CORE" "$EVERYTHING" --listen "127.0.0.1:$port" \
                --redis "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>"$WORK/node-run.log" & ;;
        ours-transport)
            RUST_LOG=warn taskset -c "$SERVER_CORE" "$NODE" --listen "127.0.0.1:$port" \
                --transport-only >/dev/null 2>"$WORK/node-run.log" & ;;
        ours-full)
            redis-cli -p "$REDIS_PORT" flushall >/dev/null
            RUST_LOG=warn taskset -c "$SERVER_CORE" "$NODE" --listen "127.0.0.1:$port" \
                --redis "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>"$WORK/node-run.log" & ;;
        ours-nolog)
            # ours-full without the shared event log: what writing each GET-stream event to
            # Redis costs a notification.
            redis-cli -p "$REDIS_PORT" flushall >/dev/null
            RUST_LOG=warn taskset -c "$SERVER_CORE" "$NODE" --listen "127.0.0.1:$port" \
                --redis "redis://127.0.0.1:$REDIS_PORT" --no-event-log >/dev/null 2>"$WORK/node-run.log" & ;;
        ours-forward | ours-adopt)
            # Node A holds the sessions (initialized there); node B gets the requests. Each
            # node's liveness record names its listen address, where the other forwards.
            start_node_a "$port"
            RUST_LOG=warn taskset -c "$SERVER_CORE" "$NODE" --listen "127.0.0.1:$port" --node b \
                --redis "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>"$WORK/node-run.log" & ;;
        hyper-forward | haproxy-forward)
            # Node A holds the sessions (initialized there); the hop on $port passes every
            # request to it.
            start_node_a "$port"
            if [ "$1" = hyper-forward ]; then
                taskset -c "$SERVER_CORE" "$BIN/peer-hyper" --listen "127.0.0.1:$port" \
                    --forward "127.0.0.1:$port_a" >/dev/null &
            else
                cat >"$WORK/haproxy.cfg" <<CFG
global
    nbthread 1
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend hop
    bind 127.0.0.1:$port
    default_backend node_a
backend node_a
    server a 127.0.0.1:$port_a
CFG
                taskset -c "$SERVER_CORE" haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>"$WORK/haproxy.log" &
            fi ;;
        ours-cluster)
            # Nodes c2 and c3, then c1 (SERVER_PID, the trigger's node), on one Redis.
            redis-cli -p "$REDIS_PORT" flushall >/dev/null
            NODE_PIDS=()
            NODE_URLS=()
            for n in 2 3; do
                port_n=$(free_port)
                while [ "$port_n" = "$port" ]; do port_n=$(free_port); done
                NODE_URLS+=("http://127.0.0.1:$port_n/mcp")
                RUST_LOG=warn taskset -c "$SERVER_CORE" "$NODE" --listen "127.0.0.1:$port_n" --node "c$n" \
                    --redis "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>"$WORK/node-c$n-run.log" &
                NODE_PIDS+=($!)
            done
            RUST_LOG=warn taskset -c "$SERVER_CORE" "$NODE" --listen "127.0.0.1:$port" --node c1 \
                --redis "redis://127.0.0.1:$REDIS_PORT" >/dev/null 2>"$WORK/node-run.log" & ;;
    esac
    SERVER_PID=$!
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    if [ -n "$PEER_PID" ]; then
        # After `adopt` node A has drained and exited by itself (or is still draining).
        kill "$PEER_PID" 2>/dev/null || true
        wait "$PEER_PID" 2>/dev/null || true
        PEER_PID=
    fi
    local pid
    for pid in "${NODE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    NODE_PIDS=()
    NODE_URLS=()
}

# run ROUND TARGET WORKLOAD ARGS... : one fresh-server run of one workload, its JSON line
# appended to $RAW. A timed run during which other processes kept more than $MAX_OTHER of a
# core busy, or the hypervisor took more than $MAX_STEAL of a core from this machine (`steal`
# in /proc/stat: on a shared host the same server then measures up to twice as slow), is
# repeated (at most twice); the line records both either way.
MAX_OTHER=${MAX_OTHER:-0.2}
MAX_STEAL=${MAX_STEAL:-0.1}
run() {
    local i=$1 target=$2 workload=$3
    shift 3
    local ping_full=
    [ "$target" = ours-full ] && [ "$workload" = ping ] && ping_full=1
    local attempt line other
    for attempt in 1 2 3; do
        start_server "$target" "$workload"
        local extra=()
        case $target in
            ours-full | ours-nolog | ours-tasks)
                extra=(--redis "127.0.0.1:$REDIS_PORT" --redis-pid "$REDIS_PID") ;;
            ours-forward | hyper-forward | haproxy-forward)
                extra=(--redis "127.0.0.1:$REDIS_PORT" --redis-pid "$REDIS_PID"
                    --init-url "$INIT_URL" --peer-pid "$PEER_PID") ;;
            ours-adopt)
                extra=(--redis "127.0.0.1:$REDIS_PORT" --redis-pid "$REDIS_PID"
                    --init-url "$INIT_URL" --peer-pid "$PEER_PID" --drain-pid "$PEER_PID") ;;
            ours-cluster)
                extra=(--redis "127.0.0.1:$REDIS_PORT" --redis-pid "$REDIS_PID")
                local k
                for k in "${!NODE_PIDS[@]}"; do
                    extra+=(--node-url "${NODE_URLS[$k]}" --node-pid "${NODE_PIDS[$k]}")
                done ;;
        esac
        # Redis commands are counted twice for ping on the full stack: here around the whole
        # run (session setup and teardown included), and by the generator over its measured
        # window only (it starts the window once Redis has been quiet for 300 ms, i.e. the
        # registry has written the new sessions).
        [ -n "$ping_full" ] && redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
        line=$(taskset -c "$CLIENT_CORE" "$LOADGEN" --url "$URL" --server-pid "$SERVER_PID" \
            --label "$target" --run "$i" --duration "$SECS" --warmup "$WARMUP" "${extra[@]}" --workload "$workload" "$@" \
            2>>"$WORK/loadgen.log") || true
        if [ -n "$ping_full" ]; then
            {
                echo "## ping on the full stack ($*), run $i, attempt $attempt: whole run (open the sessions, ping, close them)"
                redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | grep '^cmdstat_' || true
                echo "## measured window only (from the generator): $(python3 -c '
import json,sys; v=json.loads(sys.argv[1]); print(v.get("redis_commands"), "commands", v.get("redis_commandstats"))' "$line" 2>/dev/null)"
                echo
            } >>"$REDIS_TXT"
        fi
        if [ "$target" = ours-tasks ]; then
            python3 -c '
import json, sys
v = json.loads(sys.argv[1])
print(f"## tasks on ours-tasks, run {sys.argv[2]}, attempt {sys.argv[3]}: Redis commands per operation (measured windows)")
for phase, what in (("create", "task created, run and completed"), ("get", "tasks/get")):
    total, stats = v.get(phase + "_redis_commands_per_op"), v.get(phase + "_redis_commandstats_per_op")
    print(f"- {phase} (per {what}): {total} commands: {stats}")
print()' "$line" "$i" "$attempt" >>"$REDIS_TXT" 2>/dev/null || true
        fi
        stop_server
        if [[ $target == ours-* ]]; then
            # The registry's "queue full: operation dropped" warnings of this run (every
            # node's for the two- and three-node targets), into its line.
            [ -f "$WORK/node-a-run.log" ] || : >"$WORK/node-a-run.log"
            local logs=("$WORK/node-run.log" "$WORK"/node-*-run.log)
            line=$(python3 -c '
import json, sys
v = json.loads(sys.argv[1])
v["registry_drops"] = sum("queue full" in l for f in sys.argv[2:] for l in open(f, errors="replace"))
print(json.dumps(v))' "$line" "${logs[@]}" 2>/dev/null || echo "$line")
            cat "${logs[@]}" >>"$WORK/node.log" 2>/dev/null || true
            local log
            for log in "${logs[@]}"; do : >"$log"; done
        fi
        other=$(python3 -c '
import json, sys
v = json.loads(sys.argv[1])
other, steal = v.get("other_cpu_util") or 0, v.get("steal_util") or 0
if other > float(sys.argv[2]):
    print(f"other processes used {other} of a core")
elif steal > float(sys.argv[3]):
    print(f"the hypervisor took {steal} of a core")' "$line" "$MAX_OTHER" "$MAX_STEAL" 2>/dev/null || true)
        if [ "$attempt" -lt 3 ] && [ -n "$other" ]; then
            echo "    ($target run $i disturbed: $other; repeating)"
            continue
        fi
        break
    done
    echo "$line" >>"$RAW"
    python3 - "$line" <<'EOF'
import json, sys
try:
    v = json.loads(sys.argv[1])
except Exception:
    print("   (no result)", sys.argv[1][:200]); sys.exit()
keys = ["ops_per_s", "p50_ms", "p99_ms", "max_ms", "server_cpu_us_per_op", "peer_cpu_us_per_op",
        "servers_cpu_us_per_op", "node_cpu_us_per_op", "client_cpu_util", "other_cpu_util", "errors", "statuses",
        "second_p99_ms", "kib_per_session", "reopen_growth_kib_per_session", "fanout_last_ms_median",
        "missing", "redis_publish_per_notification", "redis_commands", "redis_commands_per_session", "redis_drain_s", "redis_keys_left",
        "registry_drops", "create_ops_per_s", "create_p50_ms", "create_p99_ms", "create_server_cpu_us_per_op",
        "create_redis_commands_per_op", "get_ops_per_s", "get_p50_ms", "get_p99_ms", "get_server_cpu_us_per_op",
        "get_redis_commands_per_op", "tasks_created", "get_not_completed", "error_sample", "fatal"]
extra = " ".join(f"{a}" for a in [v.get("sessions")] if a)
if v.get("connections") == 1:
    extra += " 1conn"
stats = v.get("node_stats")
if isinstance(stats, dict):
    v["node_b"] = ",".join(f"{k}:{stats[k]}" for k in ("forwarded", "forward_failures", "adopted",
                                                      "adoptions_lost", "unknown", "misroutes", "error")
                           if stats.get(k))
    keys.append("node_b")
print(f"    {v.get('label'):15} {v.get('workload'):7} {extra:6}", " ".join(
    f"{k}={v[k]}" for k in keys if v.get(k) is not None and v.get(k) != ""))
EOF
}

# The value of loadgen option NAME in ARGS ("" if absent).
arg_of() { # NAME ARGS...
    local name=$1
    shift
    while [ $# -gt 0 ]; do
        [ "$1" = "--$name" ] && { echo "${2:-}"; return; }
        shift
    done
}

# Which servers a workload applies to: bare hyper only answers requests (no sessions, no
# tools); rmcp has no broadcast trigger for the fan-out; the two-node targets run `ping`
# (forwarded: on $FORWARD_SESSIONS sessions, and over one connection) and `adopt`, which
# nothing else runs. `ping` over one connection (the latency a hop adds) runs on ours-full and
# ours-forward only. `tasks` runs on the two tasks targets only, and they run nothing else.
applies() { # TARGET WORKLOAD ARGS...
    local target=$1 workload=$2
    shift 2
    if [ "$workload" = ping ] && [ "$(arg_of connections "$@")" = 1 ]; then
        [ "$target" = ours-full ] || [ "$target" = ours-forward ]
        return
    fi
    case "$target:$workload" in
        ours-forward:ping | hyper-forward:ping | haproxy-forward:ping)
            [[ " $FORWARD_SESSIONS " == *" $(arg_of sessions "$@") "* ]] ;;
        ours-adopt:adopt) return 0 ;;
        ours-cluster:fanout | ours-nolog:fanout) return 0 ;;
        ours-tasks:tasks | rmcp-tasks:tasks) return 0 ;;
        ours-forward:* | hyper-forward:* | haproxy-forward:* | ours-adopt:* | ours-cluster:* | ours-nolog:* | *:adopt) return 1 ;;
        ours-tasks:* | rmcp-tasks:* | *:tasks) return 1 ;;
        bare:ping | bare:fanout) return 0 ;;
        bare:*) return 1 ;;
        rmcp:fanout) return 1 ;;
        *) return 0 ;;
    esac
}

# each ROUND WORKLOAD ARGS... : one run per target, targets interleaved so that slow phases of
# a shared machine hit every server alike.
each() {
    local i=$1 workload=$2 target
    shift 2
    [[ " $WORKLOADS " == *" $workload "* ]] || return 0
    for target in $TARGETS; do
        applies "$target" "$workload" "$@" && run "$i" "$target" "$workload" "$@"
    done
    return 0
}

START=$(date +%s)
for i in $(seq "$RUNS"); do
    echo "== round $i of $RUNS"
    for n in $PING_SESSIONS; do
        each "$i" ping --sessions "$n" --connections "$CONNS"
    done
    # The latency a forwarding hop adds when nothing queues: one request in flight.
    each "$i" ping --sessions 64 --connections 1
    # The first request on each session of a node that drained (node B adopts them).
    each "$i" adopt --sessions "$ADOPT_SESSIONS" --connections "$ADOPT_CONNS"
    each "$i" call --sessions 64 --connections "$CONNS"
    each "$i" call --stateless --connections "$CONNS"
    each "$i" churn --connections "$CONNS"
    each "$i" stream --sessions 128 --connections 128 --steps "$STREAM_STEPS"
    each "$i" idle --sessions "$IDLE_SESSIONS" --connections "$CONNS" --settle 0.5
    each "$i" idle --sessions "$IDLE_SESSIONS" --connections "$CONNS" --settle 0.5 --with-get
    # Needs a broadcast trigger: the node example's `broadcast` tool.
    each "$i" fanout --sessions "$FANOUT_STREAMS" --connections "$CONNS" --settle 0.5
    # Task creation, then `tasks/get` on the tasks created (stateless 2026-07-28).
    each "$i" tasks --connections "$CONNS"
done
ELAPSED=$(( $(date +%s) - START ))

if grep -q "queue full" "$WORK/node.log" 2>/dev/null; then
    REGISTRY_DROPS=$(grep -c "queue full" "$WORK/node.log")
else
    REGISTRY_DROPS=0
fi
# The node's warnings over the whole bench, counted per distinct message (timestamps cut).
{
    echo "# count, message (node example stderr at RUST_LOG=warn, whole bench)"
    sed -E 's/^[0-9T:.-]+Z +//' "$WORK/node.log" 2>/dev/null | sort | uniq -c | sort -rn | head -50
} >"$OUT/node-warnings.txt"

COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
DIRTY=
if [ -n "$(git status --porcelain --untracked-files=no -- src examples Cargo.toml Cargo.lock bench scripts/bench.sh ':!bench/results' 2>/dev/null)" ]; then
    DIRTY=" (plus uncommitted changes)"
fi
python3 "$ROOT/bench/report.py" "$RAW" "$OUT" \
    --commit "$COMMIT$DIRTY" \
    --cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
    --cores "$(nproc)" \
    --rustc "$(rustc --version)" \
    --redis "$(redis-server --version | awk '{print $3}')" \
    --settings "runs=$RUNS, ${SECS}s measured after ${WARMUP}s warm-up, $CONNS connections, server and redis-server on core $SERVER_CORE, generator on core $CLIENT_CORE" \
    --full-stack "$FULL_STACK" \
    --registry-drops "$REGISTRY_DROPS" \
    --elapsed "$ELAPSED"
echo "== Redis commands during the ping workload (ours-full) and the tasks workload (ours-tasks)"
cat "$REDIS_TXT"
echo "== against the issue's targets"
sed -n '/^## Against the issue/,$p' "$OUT/results.md" | tail -n +2
echo "== wrote $OUT/results.md, $OUT/chart.svg, $RAW (${ELAPSED}s)"
