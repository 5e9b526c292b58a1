#!/usr/bin/env bash
# Starts a local 3-node MCP cluster and prints its URL; Ctrl-C stops everything.
#
#   scripts/cluster.sh            HAProxy pinning /mcp on Mcp-Session-Id (examples/deploy/haproxy-header.cfg)
#   scripts/cluster.sh --cookie   HAProxy pinning /mcp on the nodes' _mcp_backend cookie (haproxy-cookie.cfg)
#   scripts/cluster.sh --nginx    nginx pinning /mcp on the node tag in the session id (nginx.conf)
#   scripts/cluster.sh --roundrobin  HAProxy with no affinity: plain round robin on /mcp, the nodes
#                                 forward and adopt (haproxy-roundrobin.cfg)
#   scripts/cluster.sh --roll     (from another terminal) rolling restart of the running cluster:
#                                 each node in turn gets SIGTERM (it drains), is started again and
#                                 is waited for; connected clients keep their sessions
#
# What runs, all on 127.0.0.1: redis-server on 16380, three example nodes (examples/node.rs)
# n1, n2, n3 on 18081-18083 sharing that Redis, and the balancer on 8080 (HAProxy's stats
# page on 8404). Every path other than /mcp is round-robin. Logs go to target/cluster/.
# Installs what is missing with apt (haproxy, redis-server; nginx with --nginx), using sudo
# when not root, and builds the node with cargo (MCP_NODE_BIN=<path> runs that binary instead).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

MODE=header
for arg in "$@"; do
    case "$arg" in
        --cookie) MODE=cookie ;;
        --nginx) MODE=nginx ;;
        --header) MODE=header ;;
        --roundrobin) MODE=roundrobin ;;
        --roll) MODE=roll ;;
        -h | --help)
            sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

LB_PORT=8080
STATS_PORT=8404
REDIS_PORT=16380
NODE_PORTS=(18081 18082 18083)
LOG_DIR="$ROOT/target/cluster"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
NODE_BIN=${MCP_NODE_BIN:-$TARGET_DIR/debug/examples/node}

say() { printf '==> %s\n' "$*"; }

if [[ "$MODE" == roll ]]; then
    pid=$(cat "$LOG_DIR/cluster.pid" 2>/dev/null || true)
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || {
        echo "no running cluster (start scripts/cluster.sh first)" >&2
        exit 1
    }
    kill -USR1 "$pid"
    echo "rolling restart requested; the cluster's terminal shows its progress"
    exit 0
fi
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------
find_tool() { # find_tool NAME: prints its path (PATH, then /usr/sbin)
    command -v "$1" 2>/dev/null || { [[ -x "/usr/sbin/$1" ]] && echo "/usr/sbin/$1"; } || true
}

missing=()
[[ -n "$(find_tool redis-server)" ]] || missing+=(redis-server)
if [[ "$MODE" == nginx ]]; then
    [[ -n "$(find_tool nginx)" ]] || missing+=(nginx)
else
    [[ -n "$(find_tool haproxy)" ]] || missing+=(haproxy)
fi
if ((${#missing[@]})); then
    say "installing ${missing[*]} with apt"
    SUDO=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "${missing[*]} missing; install them (apt-get install ${missing[*]})"
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
REDIS_SERVER=$(find_tool redis-server)
HAPROXY=$(find_tool haproxy)
NGINX=$(find_tool nginx)

if [[ -z "${MCP_NODE_BIN:-}" ]]; then
    say "building the node (cargo build --example node)"
    cargo build --quiet --example node
fi
[[ -x "$NODE_BIN" ]] || die "$NODE_BIN missing"

NODE_ARGS=()
if [[ "$MODE" == cookie ]]; then
    # Plain HTTP: cookie-keeping clients (the Python SDK's httpx) drop `Secure` cookies.
    "$NODE_BIN" --help | grep -q -- '--cookie-secure' ||
        die "cookie mode needs the node's --cookie-secure flag (SessionAffinityLayer)"
    NODE_ARGS+=(--cookie-secure false)
fi

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
listening() { # listening PORT: something accepts connections on 127.0.0.1:PORT
    (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

http_ok() { # http_ok PORT PATH: GET answers 200
    local status
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
    IFS= read -r -t 2 status <&3 || status=""
    exec 3>&- 3<&-
    [[ "$status" == *" 200 "* ]]
}

PIDS=()
NAMES=()
started() { # started NAME PID
    NAMES+=("$1")
    PIDS+=("$2")
}

cleanup() { # cleanup [STATUS]: stops what was started, exits with STATUS (default: $?)
    local status=${1:-$?}
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        echo
        say "stopping"
        # Balancer first, then the nodes (SIGTERM: each drains; its sessions' records stay for
        # adoption until the idle timeout), then Redis.
        local i
        for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
            kill -TERM "${PIDS[i]}" 2>/dev/null || true
            wait "${PIDS[i]}" 2>/dev/null || true
        done
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'cleanup 0' INT
trap 'cleanup 143' TERM

wait_until() { # wait_until WHAT SECONDS CMD...: polls CMD every 0.1 s
    local what=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < deadline)) || die "$what not ready after ${seconds}s (logs: $LOG_DIR)"
        sleep 0.1
    done
}

for port in "$LB_PORT" "$STATS_PORT" "$REDIS_PORT" "${NODE_PORTS[@]}"; do
    listening "$port" && die "port $port on 127.0.0.1 is in use (another cluster running?)"
done
mkdir -p "$LOG_DIR"

# ---------------------------------------------------------------------------------------
# Redis, nodes, balancer
# ---------------------------------------------------------------------------------------
say "starting redis-server on 127.0.0.1:$REDIS_PORT"
"$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --logfile "$LOG_DIR/redis.log" &
started redis $!
wait_until "redis-server" 10 listening "$REDIS_PORT"

start_node() { # start_node I: starts node nI (appending to its log), sets NODE_PID
    local port=${NODE_PORTS[$1 - 1]}
    say "starting node n$1 on 127.0.0.1:$port"
    "$NODE_BIN" --listen "127.0.0.1:$port" --node "n$1" --redis "redis://127.0.0.1:$REDIS_PORT/" \
        "${NODE_ARGS[@]}" >>"$LOG_DIR/n$1.log" 2>&1 &
    NODE_PID=$!
}
for i in 1 2 3; do
    : >"$LOG_DIR/n$i.log"
    start_node "$i"
    started "n$i" "$NODE_PID"
done
for port in "${NODE_PORTS[@]}"; do
    wait_until "node on port $port" 30 http_ok "$port" /healthz
done

case "$MODE" in
    header | cookie | roundrobin)
        config="$ROOT/examples/deploy/haproxy-$MODE.cfg"
        say "starting HAProxy with ${config#"$ROOT"/}"
        "$HAPROXY" -f "$config" -db >"$LOG_DIR/haproxy.log" 2>&1 &
        started haproxy $!
        ;;
    nginx)
        config="$ROOT/examples/deploy/nginx.conf"
        prefix="$LOG_DIR/nginx"
        mkdir -p "$prefix"
        say "starting nginx with ${config#"$ROOT"/}"
        "$NGINX" -p "$prefix" -c "$config" -g 'daemon off;' >"$LOG_DIR/nginx.log" 2>&1 &
        started nginx $!
        ;;
esac
wait_until "balancer" 10 http_ok "$LB_PORT" /healthz

cat <<EOF

MCP cluster ready ($MODE mode)

  MCP endpoint    http://127.0.0.1:$LB_PORT/mcp
  other paths     http://127.0.0.1:$LB_PORT/graphql   (round-robin, no cookie)
EOF
[[ "$MODE" == nginx ]] || echo "  HAProxy stats   http://127.0.0.1:$STATS_PORT/stats"
cat <<EOF
  nodes           http://127.0.0.1:${NODE_PORTS[0]}/mcp (n1), :${NODE_PORTS[1]} (n2), :${NODE_PORTS[2]} (n3)
  Redis           redis-cli -p $REDIS_PORT --scan --pattern 'mcp:session:*'
  logs            ${LOG_DIR#"$ROOT"/}/

Every response names its node in the x-mcp-node header, e.g.
  curl -si http://127.0.0.1:$LB_PORT/graphql | grep -i x-mcp-node
Stop a node to see failover: kill -9 <pid> (pids below), or SIGTERM for a graceful stop.
Press Ctrl-C to stop everything.

EOF
for ((i = 0; i < ${#PIDS[@]}; i++)); do
    printf '  %-8s pid %s\n' "${NAMES[i]}" "${PIDS[i]}"
done

# A rolling restart on SIGUSR1 (scripts/cluster.sh --roll): each node drains and exits on
# SIGTERM, starts again, and is waited for (healthy, then two HAProxy checks) before the next.
ROLL=0
trap 'ROLL=1' USR1
echo $$ >"$LOG_DIR/cluster.pid"
roll() {
    local i j
    for ((j = 0; j < ${#PIDS[@]}; j++)); do
        [[ "${NAMES[j]}" == n[123] ]] || continue
        i=${NAMES[j]#n}
        say "rolling: n$i (SIGTERM, drain)"
        kill -TERM "${PIDS[j]}" 2>/dev/null || true
        wait "${PIDS[j]}" 2>/dev/null || true
        start_node "$i"
        PIDS[j]=$NODE_PID
        wait_until "node n$i" 30 http_ok "${NODE_PORTS[i - 1]}" /healthz
        sleep 3
    done
    say "rolling restart done"
}

# Run until Ctrl-C, or until the balancer or Redis exits (a node may be stopped on purpose).
while true; do
    if ((ROLL)); then
        ROLL=0
        roll
    fi
    for ((i = 0; i < ${#PIDS[@]}; i++)); do
        case "${NAMES[i]}" in
            redis | haproxy | nginx)
                if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
                    echo "${NAMES[i]} exited; see $LOG_DIR/${NAMES[i]}.log" >&2
                    cleanup 1
                fi
                ;;
        esac
    done
    sleep 1 &
    wait $! || true
done
