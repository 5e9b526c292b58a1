#!/usr/bin/env bash
# Checks the minimum supported Rust version, Cargo.toml's `rust-version` (the MSRV).
#
#   scripts/msrv.sh             both checks below
#   MSRV_INSTALL=0 scripts/msrv.sh    never installs a toolchain (check 2 then needs one already)
#
# 1. Every package the library builds from (normal and build dependencies, all features, every
#    target platform, at the versions Cargo.lock holds) declares a `rust-version` no newer than
#    ours, or none.
# 2. The library, with all features, compiles with that very toolchain (`cargo +MSRV check`,
#    into target/msrv). The toolchain is installed with rustup when missing (a one-time
#    download, `--profile minimal`); when it cannot be installed (no rustup, no network), the
#    check falls back to the stable toolchain with
#    `CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback` and says so: it then proves less
#    (the language and library features the code uses are not checked against the MSRV;
#    clippy's `incompatible_msrv` lint, part of `cargo clippy`, catches the std APIs).
#
# Idempotent; quick once the toolchain is there (an incremental check).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

METADATA=$(cargo metadata --format-version 1 --locked)
MSRV=$(python3 -c '
import json, sys
m = json.load(sys.stdin)
print(next(p["rust_version"] for p in m["packages"] if p["name"] == "mcp-affinity"))
' <<<"$METADATA")
echo "MSRV (Cargo.toml rust-version): $MSRV"

# 1. The dependencies' own rust-version.
DEPS=$(cargo tree --locked -p mcp-affinity --all-features -e normal,build --target all \
    --prefix none -f '{p}' | sed 's/ (.*//' | sort -u)
python3 -c '
import json, sys

msrv, deps_text = sys.argv[1], sys.argv[2]
key = lambda v: tuple(int(x) for x in v.split("."))
m = json.load(sys.stdin)
declared = {(p["name"], "v" + p["version"]): p.get("rust_version") for p in m["packages"]}
too_new, checked = [], 0
for line in deps_text.splitlines():
    name, version = line.split()[:2]
    if name == "mcp-affinity":
        continue
    checked += 1
    rv = declared.get((name, version))
    if rv and key(rv) > key(msrv):
        too_new.append(f"{name} {version} needs Rust {rv}")
if too_new:
    print(f"dependencies newer than the MSRV {msrv}:", *too_new, sep="\n  ")
    sys.exit(1)
print(f"{checked} dependencies: none declares a rust-version newer than {msrv}")
' "$MSRV" "$DEPS" <<<"$METADATA"

# 2. The library with the MSRV toolchain itself.
have_toolchain() { rustup run "$MSRV" rustc --version >/dev/null 2>&1; }
if command -v rustup >/dev/null 2>&1 && ! have_toolchain && [[ "${MSRV_INSTALL:-1}" != 0 ]]; then
    echo "installing Rust $MSRV (rustup toolchain install $MSRV --profile minimal)"
    rustup toolchain install "$MSRV" --profile minimal --no-self-update || true
fi
if command -v rustup >/dev/null 2>&1 && have_toolchain; then
    echo "cargo +$MSRV check -p mcp-affinity --all-features --lib"
    cargo "+$MSRV" check --locked --quiet -p mcp-affinity --all-features --lib --target-dir target/msrv
    echo "the library builds with Rust $MSRV"
else
    echo "!! Rust $MSRV is not installed and could not be installed: checking with the stable" \
        "toolchain and CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback instead (weaker)" >&2
    CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS=fallback \
        cargo check --locked --quiet -p mcp-affinity --all-features --lib
fi
