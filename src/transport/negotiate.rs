//! What a request's headers allow: its `Accept` media types and its `MCP-Protocol-Version`.

use http::{HeaderMap, header, request::Parts};

use crate::{
    protocol::{self, Era, ProtocolVersion, Rejection, RejectionKind, codes},
    session::Session,
};

/// Whether the `Accept` header allows JSON and/or SSE.
///
/// Read as bytes: a media range is ASCII, so a value with other bytes elsewhere still counts
/// for the ranges it names. Hand-rolled rather than `str::split`, whose searcher costs more
/// than the whole comparison for a value this short (read on every POST and GET).
pub(super) fn accepts(h: &HeaderMap) -> (bool, bool) {
    let (mut json, mut sse) = (false, false);
    for v in h.get_all(header::ACCEPT) {
        // What the MCP SDKs send, byte for byte.
        if v.as_bytes() == b"application/json, text/event-stream" {
            return (true, true);
        }
        for item in v.as_bytes().split(|&b| b == b',') {
            let end = item.iter().position(|&b| b == b';').unwrap_or(item.len());
            let mt = item[..end].trim_ascii();
            let is = |m: &[u8]| mt.eq_ignore_ascii_case(m);
            if is(b"*/*") {
                (json, sse) = (true, true);
            } else if is(b"application/json") || is(b"application/*") {
                json = true;
            } else if is(b"text/event-stream") || is(b"text/*") {
                sse = true;
            }
        }
    }
    (json, sse)
}

/// Checks `MCP-Protocol-Version` on a request of an existing legacy session.
pub(super) fn check_legacy_version(parts: &Parts) -> Result<(), Rejection> {
    if legacy_version_ok(protocol::header_version(&parts.headers)) {
        Ok(())
    } else {
        Err(unsupported_version())
    }
}

/// Whether an `MCP-Protocol-Version` header (as [`protocol::header_version`] reads it) is
/// absent or names a legacy revision this crate knows.
pub(super) fn legacy_version_ok(header: Result<Option<&str>, ()>) -> bool {
    match header {
        Ok(None) => true,
        Ok(Some(v)) => ProtocolVersion::parse(v).is_some_and(|v| v.era() == Era::Legacy),
        Err(()) => false,
    }
}

pub(super) fn unsupported_version() -> Rejection {
    Rejection::new(
        RejectionKind::UnsupportedVersion,
        codes::BAD_REQUEST,
        "unsupported MCP-Protocol-Version",
    )
    .with_data(
        serde_json::json!({ "supported": ProtocolVersion::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>() }),
    )
}

pub(super) fn session_version(session: &Session) -> ProtocolVersion {
    session
        .protocol_version()
        .unwrap_or(ProtocolVersion::V2025_03_26)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn accept_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        assert_eq!(accepts(&h), (true, true));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json;q=0.9"),
        );
        assert_eq!(accepts(&h), (true, false));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(accepts(&h), (true, true));
        assert_eq!(accepts(&HeaderMap::new()), (false, false));
    }

    #[test]
    fn accept_parsing_edge_cases() {
        let one = |v: &'static [u8]| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_bytes(v).unwrap());
            accepts(&h)
        };
        assert_eq!(
            one(b"  Text/Event-Stream ; q=1 ,APPLICATION/*"),
            (true, true)
        );
        assert_eq!(one(b"text/*"), (false, true));
        assert_eq!(
            one(b"application/jsonx, text/event-streams"),
            (false, false)
        );
        assert_eq!(one(b"application/json;text/event-stream"), (true, false));
        assert_eq!(one(b",,;, ;"), (false, false));
        assert_eq!(one(b"application/json, t\xe9xt/html"), (true, false));
        let mut h = HeaderMap::new();
        h.append(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        assert_eq!(accepts(&h), (true, true));
    }
}
