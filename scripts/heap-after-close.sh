#!/usr/bin/env bash
# Where the memory goes after every session closes: the node example's RSS next to what
# glibc's allocator reports as in use (malloc_stats, read with gdb) before and after
# `loadgen --workload idle` (10,000 sessions opened and closed twice).
#
#   scripts/heap-after-close.sh              # idle sessions, no streams
#   scripts/heap-after-close.sh --with-get   # each session also holds a GET stream
#
# Needs: gdb, taskset, python3, and release builds of the node example and the load
# generator (scripts/bench.sh builds them). Linux with glibc only.
set -euo pipefail

cd "$(dirname "$0")/.."
for tool in gdb taskset python3; do
    command -v "$tool" >/dev/null || { echo "heap-after-close.sh: $tool not found" >&2; exit 1; }
done
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
[ -x "$BIN/examples/node" ] && [ -x "$BIN/loadgen" ] || {
    echo "heap-after-close.sh: build first: cargo build --release --example node && cargo build --release -p mcp-bench-loadgen" >&2
    exit 1
}
SESSIONS=${SESSIONS:-10000}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp)
RUST_LOG=warn taskset -c 0 "$BIN/examples/node" --listen "127.0.0.1:$PORT" --transport-only >/dev/null 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 100); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.1)' "$PORT" 2>/dev/null && break
    sleep 0.05
done

heap() { # malloc_stats() prints to the node's stderr; the "Total" block is the last three lines
    gdb -p "$PID" -batch -ex 'call (void)malloc_stats()' >/dev/null 2>&1
    grep -A2 '^Total' "$LOG" | tail -2 | awk -F= '{gsub(/ /, "", $2); printf "%s ", $2}'
}
read -r sys0 use0 <<<"$(heap)"
line=$(taskset -c 1 "$BIN/loadgen" --url "http://127.0.0.1:$PORT/mcp" --server-pid "$PID" \
    --workload idle --sessions "$SESSIONS" --connections 64 --settle 0.5 "$@")
read -r sys1 use1 <<<"$(heap)"
python3 - "$line" "$sys0" "$use0" "$sys1" "$use1" <<'PY'
import json, sys
v = json.loads(sys.argv[1])
sys0, use0, sys1, use1 = (int(x) / 1024 for x in sys.argv[2:])
before = v["rss_before_kib"]
print(f"sessions {v['sessions']} (GET streams: {v['streams']}), opened and closed twice")
print(f"RSS            before {before:9.0f} KiB   after {v['rss_final_kib']:9.0f} KiB   "
      f"({(v['rss_final_kib'] - before) / before * 100:+.1f} %)")
print(f"heap in use    before {use0:9.0f} KiB   after {use1:9.0f} KiB   "
      f"(+{use1 - use0:.0f} KiB = {(use1 - use0) / before * 100:+.1f} % of the starting RSS)")
print(f"heap from OS   before {sys0:9.0f} KiB   after {sys1:9.0f} KiB   "
      f"(freed, kept by the allocator: {sys1 - use1:.0f} KiB)")
PY
