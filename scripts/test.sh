#!/usr/bin/env bash
# Runs every test of the repository; the one command for developers and CI.
#
#   scripts/test.sh           install what is missing, build, test, clippy, fmt, doc
#   scripts/test.sh --quick   build and test only (skips clippy, fmt and doc)
#
# Idempotent on a fresh Debian machine (run as root): installs redis-server with apt
# when it is missing, the TypeScript SDK client (npm ci, tests/clients/ts) and the
# Python SDK client (venv at tests/clients/py/.venv), each only when its lock file
# changed. Every step runs even after an earlier one failed; the last line is the
# summary `N passed, M failed[, K skipped]` (tests counted from cargo's `test result:`
# lines, plus one failure per other failed step), and the exit status is non-zero
# on any failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }

FAILED_STEPS=()
run_step() { # run_step NAME CMD...: runs CMD, records NAME when it fails
    local name=$1
    shift
    step "$name: ${STEP_LABEL:-$*}"
    if "$@"; then
        return 0
    fi
    echo "!! step failed: $name" >&2
    FAILED_STEPS+=("$name")
    return 0
}

# ---------------------------------------------------------------------------------------
# System packages
# ---------------------------------------------------------------------------------------
APT_PACKAGES=()
command -v redis-server >/dev/null 2>&1 || APT_PACKAGES+=(redis-server)
command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)
command -v python3 >/dev/null 2>&1 || APT_PACKAGES+=(python3)
# The cluster tests run HAProxy as a plain process (Debian installs it in /usr/sbin).
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || APT_PACKAGES+=(haproxy)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    APT_PACKAGES+=(python3-venv)
fi
if ((${#APT_PACKAGES[@]})); then
    step "apt-get install ${APT_PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
fi

# ---------------------------------------------------------------------------------------
# Real clients
# ---------------------------------------------------------------------------------------
TS_DIR="$ROOT/tests/clients/ts"
PY_DIR="$ROOT/tests/clients/py"
VENV="$PY_DIR/.venv"

stamp_of() { # stamp_of FILE EXTRA: content hash of FILE plus a tool version
    printf '%s %s\n' "$(sha256sum "$1" | cut -d' ' -f1)" "$2"
}

ts_stamp_file="$TS_DIR/node_modules/.mcp-affinity-stamp"
ts_stamp=$(stamp_of "$TS_DIR/package-lock.json" "node $(node --version)")
if [[ -f "$ts_stamp_file" && "$(cat "$ts_stamp_file")" == "$ts_stamp" ]]; then
    step "TypeScript client: node_modules up to date"
else
    step "TypeScript client: npm ci"
    npm ci --prefix "$TS_DIR" --no-audit --no-fund --loglevel=error
    printf '%s\n' "$ts_stamp" >"$ts_stamp_file"
fi

py_stamp_file="$VENV/.mcp-affinity-stamp"
py_stamp=$(stamp_of "$PY_DIR/requirements.txt" "$(python3 --version 2>&1)")
if [[ -x "$VENV/bin/python" && -f "$py_stamp_file" && "$(cat "$py_stamp_file")" == "$py_stamp" ]]; then
    step "Python client: venv up to date"
else
    step "Python client: venv + pip install -r requirements.txt"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PY_DIR/requirements.txt"
    printf '%s\n' "$py_stamp" >"$py_stamp_file"
fi

step "conformance suite: install (tests/conformance/run.sh --install)"
"$ROOT/tests/conformance/run.sh" --install

export MCP_TS_CLIENT_DIR="$TS_DIR"
export MCP_PY="$VENV/bin/python"
export MCP_PY_CLIENT="$PY_DIR/full_session.py"
export MCP_REQUIRE_CLIENTS=1

# ---------------------------------------------------------------------------------------
# Rust
# ---------------------------------------------------------------------------------------
LOG_DIR="$ROOT/target/test-logs"
mkdir -p "$LOG_DIR"
TEST_LOG="$LOG_DIR/cargo-test.log"
: >"$TEST_LOG"
# Figures the tests print for people (conformance totals, failover and rolling-restart times).
export MCP_TEST_REPORT="$LOG_DIR/report.txt"
: >"$MCP_TEST_REPORT"

run_step build cargo build --all-targets --all-features

cargo_test() { cargo test --all-features --no-fail-fast 2>&1 | tee "$TEST_LOG"; }
STEP_LABEL="cargo test --all-features --no-fail-fast (log: target/test-logs/cargo-test.log)" \
    run_step test cargo_test

# Any crate in a user's build can turn on serde_json's `arbitrary_precision`, which changes how
# numbers reach a deserializer (request ids are integers or strings): the JSON-RPC parsing and
# the transport are tested under it too.
run_step arbitrary-precision cargo test --all-features --features serde_json/arbitrary_precision \
    --lib --test transport --test modern -q

# Coverage-guided fuzzing (cargo-fuzz on stable, see fuzz/README.md): 8 s per target from the
# checked-in seeds; fails on a crash. Longer runs: scripts/fuzz.sh [SECONDS].
STEP_LABEL="scripts/fuzz.sh 8 (logs: fuzz/target/logs/)" run_step fuzz "$ROOT/scripts/fuzz.sh" 8

if ((QUICK == 0)); then
    run_step clippy cargo clippy --all-targets --all-features -- -D warnings
    run_step fmt cargo fmt --all -- --check
    run_step doc env RUSTDOCFLAGS="-D warnings -D rustdoc::broken_intra_doc_links" \
        cargo doc --no-deps --all-features
else
    step "--quick: skipping clippy, fmt and doc"
fi

# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------
# cargo prints one line per test binary, e.g.
#   test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.2s
read -r PASSED FAILED IGNORED BINARIES < <(
    awk '/^test result: /{
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/)  p += $(i-1)
                if ($(i) ~ /^failed;?$/)  f += $(i-1)
                if ($(i) ~ /^ignored;?$/) g += $(i-1)
            }
            n++
        }
        END { printf "%d %d %d %d\n", p, f, g, n }' "$TEST_LOG"
)

if [[ -s "$MCP_TEST_REPORT" ]]; then
    step "reported by the tests (also in target/test-logs/report.txt)"
    cat "$MCP_TEST_REPORT"
fi

step "summary"
echo "cargo test: $BINARIES test binaries, $PASSED passed, $FAILED failed, $IGNORED ignored"
if ((${#FAILED_STEPS[@]})); then
    echo "failed steps: ${FAILED_STEPS[*]}"
else
    echo "all steps passed"
fi
# A failed step counts once, except `test` when its failed tests are already counted.
TOTAL_FAILED=$FAILED
for name in "${FAILED_STEPS[@]}"; do
    if [[ "$name" != test ]] || ((FAILED == 0)); then
        TOTAL_FAILED=$((TOTAL_FAILED + 1))
    fi
done
if ((IGNORED > 0)); then
    echo "$PASSED passed, $TOTAL_FAILED failed, $IGNORED skipped"
else
    echo "$PASSED passed, $TOTAL_FAILED failed"
fi
((TOTAL_FAILED == 0))
