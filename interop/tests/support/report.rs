//! Figures a test prints for people: recovery times, failure histograms, suite totals.
//!
//! Each line goes to stderr (shown with `--nocapture` or when the test fails) and, when
//! `MCP_TEST_REPORT` names a file, is appended to it: `scripts/test.sh` prints that file after
//! the run, so the figures show on every run, passing or not.

use std::io::Write;

/// Prints `text` and appends it to the `MCP_TEST_REPORT` file, if any.
pub(crate) fn report(text: &str) {
    eprintln!("{text}");
    let Some(path) = std::env::var_os("MCP_TEST_REPORT") else {
        return;
    };
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{text}"));
    if let Err(e) = appended {
        eprintln!(
            "could not append to MCP_TEST_REPORT ({}): {e}",
            path.display()
        );
    }
}
