//! Test support: the HTTP client every test request goes through, with deadlines, so that a
//! server that stops answering fails the test instead of hanging it (and CI with it).
//!
//! The deadlines bound connecting and each read of a response: its head, then each chunk of
//! its body. They are per read, not per request, so an SSE stream may stay open for as long as
//! the test needs it, while a stream that goes quiet still fails the read.
//!
//! Include it from a test file with
//!
//! ```ignore
//! #[path = "support/http.rs"]
//! mod http_support;
//! ```
//!
//! (`support/mcp.rs` includes it and re-exports its items.)
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

/// Upper bound for establishing a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for each read of a response: its head, then each chunk of its body.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A client builder with the deadlines set; add what a test needs and build it.
pub fn http_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
}

/// A client with the deadlines set (and reqwest's default pooling).
pub fn http_client() -> reqwest::Client {
    http_builder().build().expect("build the test HTTP client")
}
