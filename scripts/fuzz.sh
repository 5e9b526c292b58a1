#!/usr/bin/env bash
# Runs every fuzz target in fuzz/fuzz_targets/ (cargo-fuzz, libFuzzer) for SECONDS each.
#
#   scripts/fuzz.sh [SECONDS]    default 60 seconds per target
#   FUZZ_CODEGEN_UNITS=1 scripts/fuzz.sh 3600   slower build, faster targets
#   FUZZ_SEED=1 scripts/fuzz.sh 8                 libFuzzer's random seed fixed (the test
#                                                 command's brief run: from the same corpus it
#                                                 explores the same inputs every time)
#
# Each target starts from its checked-in seed corpus (fuzz/seeds/<target>/) plus what earlier
# runs found (fuzz/corpus/<target>/, not checked in). The exit status is non-zero when a target
# crashed (a panic, a violated property, a timeout or an out-of-memory); the input is kept in
# fuzz/artifacts/<target>/ and the command to reproduce it is printed.
#
# Works on the stable toolchain: the targets are built with `--sanitizer none` (cargo-fuzz's
# default, AddressSanitizer, needs a nightly `-Z` flag; safe Rust needs no sanitizer to find
# panics). Installs cargo-fuzz into .tools/ when missing (cargo install --locked).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

case "${1:-}" in
    -h | --help)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
esac
DURATION=${1:-60}
if ! [[ "$DURATION" =~ ^[1-9][0-9]*$ ]]; then
    echo "SECONDS must be a positive integer, not '$DURATION' (try --help)" >&2
    exit 2
fi

CARGO_FUZZ_VERSION=0.13.2
TOOLS="$ROOT/.tools"
if [[ "$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    echo "==> cargo install cargo-fuzz $CARGO_FUZZ_VERSION (into .tools/)"
    cargo install --quiet --locked --root "$TOOLS" --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi
export PATH="$TOOLS/bin:$PATH"

FUZZ="$ROOT/fuzz"
LOGS="$FUZZ/target/logs"
mkdir -p "$LOGS"

# cargo-fuzz compiles every crate as one codegen unit by default. 16 let both cores of a small
# machine work on the crates at the end of the graph (this crate, the targets): the cold build
# took 74 s instead of 102 s here, for fewer executions per second (about a third fewer in one
# noisy comparison). Long runs may prefer FUZZ_CODEGEN_UNITS=1 (a change rebuilds everything).
FLAGS=(--sanitizer none --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")

start=$(date +%s)
echo "==> cargo fuzz build ${FLAGS[*]}"
cargo fuzz build "${FLAGS[@]}"
echo "built in $(($(date +%s) - start)) s"

mapfile -t TARGETS < <(cargo fuzz list)
FAILED=()
for t in "${TARGETS[@]}"; do
    mkdir -p "$FUZZ/corpus/$t"
    args=(-max_total_time="$DURATION" -timeout=10 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1)
    [[ -f "$FUZZ/dict/$t.dict" ]] && args+=(-dict="$FUZZ/dict/$t.dict")
    [[ -n "${FUZZ_SEED:-}" ]] && args+=(-seed="$FUZZ_SEED")
    log="$LOGS/$t.log"
    printf '==> fuzz %s for %s s (log: fuzz/target/logs/%s.log): ' "$t" "$DURATION" "$t"
    if cargo fuzz run "${FLAGS[@]}" "$t" "$FUZZ/corpus/$t" "$FUZZ/seeds/$t" -- "${args[@]}" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
        echo "ok, ${runs:-?} runs"
    else
        echo "FAILED"
        # The panic and libFuzzer's report (the artifact's path and how to reproduce it).
        grep -E -A12 "panicked at|ERROR: libFuzzer|SUMMARY" "$log" | head -n 60 >&2 || tail -n 40 "$log" >&2
        grep -E -A2 "^Reproduce with" "$log" >&2 || true
        FAILED+=("$t")
    fi
done

if ((${#FAILED[@]})); then
    echo "fuzz: ${#FAILED[@]} of ${#TARGETS[@]} targets crashed: ${FAILED[*]}" >&2
    exit 1
fi
echo "fuzz: ${#TARGETS[@]} targets, no crash ($((($(date +%s) - start))) s in all)"
