#!/usr/bin/env bash
# Runs every test of the repository; the one command for developers and CI.
#
#   scripts/test.sh           install what is missing, build, test, clippy, fmt, doc, package, MSRV
#   scripts/test.sh --quick   build and test only (skips clippy, fmt, doc, package and MSRV)
#
# Idempotent on a fresh Debian machine (run as root): installs redis-server with apt when
# it is missing, the TypeScript SDK clients (npm ci: tests/clients/ts, SDK 1.x, and
# tests/clients/ts2, the v2 client) and the Python SDK client (venv at tests/clients/py/.venv),
# each only when its lock file changed. Every step runs even after an earlier one failed (an
# install too); the last line is the summary `N passed, M failed[, K skipped]` (tests counted
# from the `test result:` lines of every cargo test run, plus one failure per other failed
# step), and the exit status is non-zero on any failure. Each cargo test run is bounded by
# MCP_TEST_TIMEOUT seconds (default 2700): a hanging test fails its step, it never hangs the
# run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
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
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
}
if ((${#APT_PACKAGES[@]})); then
    STEP_LABEL="apt-get install ${APT_PACKAGES[*]}" run_step apt-install apt_install
fi

# ---------------------------------------------------------------------------------------
# Real clients
# ---------------------------------------------------------------------------------------
TS_DIR="$ROOT/tests/clients/ts"
TS2_DIR="$ROOT/tests/clients/ts2"
PY_DIR="$ROOT/tests/clients/py"
VENV="$PY_DIR/.venv"

stamp_of() { # stamp_of FILE EXTRA: content hash of FILE plus a tool version
    printf '%s %s\n' "$(sha256sum "$1" | cut -d' ' -f1)" "$2"
}

npm_install() { # npm_install DIR STAMP: npm ci in DIR, then record STAMP
    npm ci --prefix "$1" --no-audit --no-fund --loglevel=error &&
        printf '%s\n' "$2" >"$1/node_modules/.mcp-affinity-stamp"
}
npm_client() { # npm_client DIR STEP LABEL: npm ci in DIR unless its lock file is installed
    local stamp
    stamp=$(stamp_of "$1/package-lock.json" "node $(node --version)")
    if [[ "$(cat "$1/node_modules/.mcp-affinity-stamp" 2>/dev/null)" == "$stamp" ]]; then
        step "$3: node_modules up to date"
    else
        STEP_LABEL="$3: npm ci" run_step "$2" npm_install "$1" "$stamp"
    fi
}
npm_client "$TS_DIR" ts-client-install "TypeScript client"
npm_client "$TS2_DIR" ts2-client-install "TypeScript v2 client"

py_stamp_file="$VENV/.mcp-affinity-stamp"
py_stamp=$(stamp_of "$PY_DIR/requirements.txt" "$(python3 --version 2>&1)")
py_install() {
    rm -rf "$VENV" &&
        python3 -m venv "$VENV" &&
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PY_DIR/requirements.txt" &&
        printf '%s\n' "$py_stamp" >"$py_stamp_file"
}
if [[ -x "$VENV/bin/python" && -f "$py_stamp_file" && "$(cat "$py_stamp_file")" == "$py_stamp" ]]; then
    step "Python client: venv up to date"
else
    STEP_LABEL="Python client: venv + pip install -r requirements.txt" run_step py-client-install py_install
fi

run_step conformance-install "$ROOT/tests/conformance/run.sh" --install

export MCP_TS_CLIENT_DIR="$TS_DIR"
export MCP_TS2_CLIENT_DIR="$TS2_DIR"
export MCP_PY="$VENV/bin/python"
export MCP_PY_CLIENT="$PY_DIR/full_session.py"
export MCP_REQUIRE_CLIENTS=1

# ---------------------------------------------------------------------------------------
# Rust
# ---------------------------------------------------------------------------------------
# A run builds everything once, from scratch on a fresh clone: incremental compilation would
# only add its caches (7 GiB of target/ with it on). CARGO_INCREMENTAL=1 turns it back on.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# What a run from a fresh clone writes (target/ with the tests, the arbitrary_precision build
# and the MSRV check, fuzz/target, the test clients): with too little free, it would fail late,
# on `No space left on device`, so it says so first.
WRITES_GIB=4.5
NEED_GIB=8
free_kib=$(df -Pk "$ROOT" | awk 'NR == 2 { print $4 }')
if [[ "$free_kib" =~ ^[0-9]+$ ]] && ((free_kib < NEED_GIB * 1024 * 1024)); then
    echo "!! only $((free_kib / 1024)) MiB free on the file system of $ROOT: a run from a fresh" \
        "clone writes about $WRITES_GIB GiB and wants $NEED_GIB GiB free (cargo clean frees target/)" >&2
fi
LOG_DIR="$ROOT/target/test-logs"
mkdir -p "$LOG_DIR"
TEST_LOG="$LOG_DIR/cargo-test.log"
: >"$TEST_LOG"
TEST_TIMEOUT=${MCP_TEST_TIMEOUT:-2700}
# Figures the tests print for people (conformance totals, failover and rolling-restart times).
export MCP_TEST_REPORT="$LOG_DIR/report.txt"
: >"$MCP_TEST_REPORT"

# The root package, the tests over real peers (interop/) and the criterion benches (benches/):
# every target builds, benches included (cargo test does not build them).
PACKAGE_NAMES=(mcp-affinity mcp-affinity-interop mcp-affinity-benches)
PACKAGES=()
for package in "${PACKAGE_NAMES[@]}"; do PACKAGES+=(-p "$package"); done
# package_list_is_clean: `cargo package --list` holds no test clients, conformance suite, bench
# results, node_modules, virtualenvs, fuzz targets or scripts.
package_list_is_clean() {
    local list unwanted
    list=$(cargo package --list --allow-dirty -p mcp-affinity) || return 1
    unwanted=$(grep -E '^tests/(clients|conformance)/|(^|/)(benches|bench|fuzz|scripts|node_modules|\.venv|interop|target)(/|$)' <<<"$list" || true)
    if [[ -n "$unwanted" ]]; then
        echo "the package holds files it should not (Cargo.toml include):" >&2
        echo "$unwanted" >&2
        return 1
    fi
    echo "$(wc -l <<<"$list") files, none of the test clients, benches, bench results, fuzz, scripts"
}
# One package at a time, as the test steps select them: a build of the three together unifies
# their dependencies' features differently, and the test steps would then build everything again.
build_each_package() {
    local status=0 package
    for package in "${PACKAGE_NAMES[@]}"; do
        cargo build -p "$package" --all-targets --all-features || status=1
    done
    return "$status"
}
STEP_LABEL="cargo build -p PACKAGE --all-targets --all-features for ${PACKAGE_NAMES[*]}" \
    run_step build build_each_package

# Every cargo test run: its log (whose `test result:` lines the summary counts) per step.
declare -A TEST_LOGS=()
TIMED_OUT_STEPS=()
# cargo_test_step NAME ARGS...: `cargo test ARGS` as step NAME, bounded by TEST_TIMEOUT, its
# output shown and kept in target/test-logs/NAME.log (cargo-test.log for the step `test`).
cargo_test_step() {
    local name=$1
    shift
    local log="$LOG_DIR/$name.log"
    [[ "$name" == test ]] && log=$TEST_LOG
    TEST_LOGS[$name]=$log
    STEP_LABEL="cargo test $* (log: ${log#"$ROOT"/})" run_step "$name" bounded_cargo_test "$name" "$log" "$@"
}
bounded_cargo_test() { # bounded_cargo_test NAME LOG ARGS...
    local name=$1 log=$2 status=0
    shift 2
    timeout --kill-after=30 "$TEST_TIMEOUT" cargo test "$@" 2>&1 | tee "$log" || status=$?
    if ((status == 124 || status == 137)); then
        echo "!! $name: cargo test did not finish within ${TEST_TIMEOUT}s (MCP_TEST_TIMEOUT) and was" \
            "stopped: a test hangs; the last test started is in ${log#"$ROOT"/}" | tee -a "$log" >&2
        TIMED_OUT_STEPS+=("$name")
    fi
    return "$status"
}

cargo_test_step test --all-features --no-fail-fast
# The tests over real peers: HTTP clients, rmcp, the SDK clients, the conformance suite, the
# cluster behind HAProxy (a workspace member, so that their dependencies stay out of the
# examples' build).
cargo_test_step interop -p mcp-affinity-interop --all-features --no-fail-fast

# Any crate in a user's build can turn on serde_json's `arbitrary_precision`, which changes how
# numbers reach a deserializer (request ids are integers or strings): the JSON-RPC parsing and
# the transport are tested under it too.
cargo_test_step arbitrary-precision --all-features --features serde_json/arbitrary_precision \
    --no-fail-fast --lib
cargo_test_step arbitrary-precision-interop -p mcp-affinity-interop --all-features \
    --features serde_json/arbitrary_precision --no-fail-fast --test transport --test modern

# The other workspace members' unit tests: the load generator's (bench/peers has none).
cargo_test_step loadgen -p mcp-bench-loadgen --no-fail-fast

# Chaos: three nodes behind HAProxy with a real Redis, under the load generator, while Redis is
# killed, paused and restarted and nodes are killed and restarted; fails on any error outside a
# killed node's sessions and on any registry key left once everything closed. Reuses the node
# the build step built (debug) and builds bench/loadgen once.
run_step chaos scripts/chaos.sh 60

# Coverage-guided fuzzing (cargo-fuzz on stable, see fuzz/README.md): 8 s per target from the
# checked-in seeds; fails on a crash. The seed is fixed, so this step explores the same inputs
# on every run (a regression check, not a lottery); exploring is for longer runs, with a random
# seed: scripts/fuzz.sh [SECONDS].
STEP_LABEL="FUZZ_SEED=1 scripts/fuzz.sh 8 (logs: fuzz/target/logs/)" \
    run_step fuzz env FUZZ_SEED=1 "$ROOT/scripts/fuzz.sh" 8

if ((QUICK == 0)); then
    # The load generator too (its tests run above); the peer servers (rmcp, axum) are built
    # by scripts/bench.sh only.
    run_step clippy cargo clippy "${PACKAGES[@]}" -p mcp-bench-loadgen --all-targets --all-features -- -D warnings
    run_step fmt cargo fmt --all -- --check
    run_step doc env RUSTDOCFLAGS="-D warnings -D rustdoc::broken_intra_doc_links" \
        cargo doc --no-deps --all-features
    # docs.rs's flags on a stable toolchain (`--cfg docsrs` must not need nightly).
    run_step docsrs env RUSTDOCFLAGS="--cfg docsrs -D warnings" \
        cargo doc --no-deps --all-features
    # The crate as it would be published: its file list holds nothing of the test and bench
    # machinery, and it builds from the package alone (`cargo publish --dry-run` verifies that).
    run_step package-list package_list_is_clean
    run_step publish-dry-run cargo publish --dry-run --allow-dirty --locked -p mcp-affinity
    # The MSRV (Cargo.toml's rust-version): the dependencies' rust-version and a build with that
    # toolchain (installed with rustup when missing; see scripts/msrv.sh).
    run_step msrv "$ROOT/scripts/msrv.sh"
else
    step "--quick: skipping clippy, fmt, doc, package and MSRV"
fi

# ---------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------
# cargo prints one line per test binary, e.g.
#   test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.2s
# test_counts LOG: "passed failed ignored binaries" of one cargo test run.
test_counts() {
    awk '/^test result: /{
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/)  p += $(i-1)
                if ($(i) ~ /^failed;?$/)  f += $(i-1)
                if ($(i) ~ /^ignored;?$/) g += $(i-1)
            }
            n++
        }
        END { printf "%d %d %d %d\n", p, f, g, n }' "$1"
}
PASSED=0 FAILED=0 IGNORED=0 BINARIES=0
declare -A STEP_FAILED_TESTS=()
for name in "${!TEST_LOGS[@]}"; do
    [[ -f "${TEST_LOGS[$name]}" ]] || continue
    read -r p f g n < <(test_counts "${TEST_LOGS[$name]}")
    PASSED=$((PASSED + p)) FAILED=$((FAILED + f)) IGNORED=$((IGNORED + g)) BINARIES=$((BINARIES + n))
    STEP_FAILED_TESTS[$name]=$f
done

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
if ((${#TIMED_OUT_STEPS[@]})); then
    echo "timed out (after ${TEST_TIMEOUT}s): ${TIMED_OUT_STEPS[*]}"
fi
# A failed step counts once, except a cargo test step whose failed tests are already counted
# (and which did not time out: a hanging test is counted on top of those that failed).
TOTAL_FAILED=$FAILED
for name in "${FAILED_STEPS[@]}"; do
    if ((${STEP_FAILED_TESTS[$name]:-0} == 0)) || [[ " ${TIMED_OUT_STEPS[*]} " == *" $name "* ]]; then
        TOTAL_FAILED=$((TOTAL_FAILED + 1))
    fi
done
if ((IGNORED > 0)); then
    echo "$PASSED passed, $TOTAL_FAILED failed, $IGNORED skipped"
else
    echo "$PASSED passed, $TOTAL_FAILED failed"
fi
((TOTAL_FAILED == 0))
