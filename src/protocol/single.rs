//! Singleton headers: the headers a layer reads one value of must arrive once.
//!
//! `http::HeaderMap::get` returns the first of repeated values. A proxy in front may read
//! another one (the last, or all of them joined), so a request carrying two `Mcp-Session-Id`
//! headers (what a CRLF injection in a client library produces) could be routed for one
//! session and served for another. Every layer refuses such a request before it reads
//! anything: `400` with a JSON-RPC error naming the header.

use http::{HeaderMap, HeaderName, header};

use super::{Rejection, RejectionKind, codes, headers, version::is_modern_string};

/// The singleton headers the transport reads.
pub(crate) static TRANSPORT: [HeaderName; 8] = [
    headers::MCP_SESSION_ID,
    headers::MCP_PROTOCOL_VERSION,
    headers::MCP_METHOD,
    headers::MCP_NAME,
    headers::LAST_EVENT_ID,
    header::HOST,
    header::ORIGIN,
    header::CONTENT_TYPE,
];

/// The singleton headers the registry and the affinity layer read.
pub(crate) static ROUTING: [HeaderName; 2] =
    [headers::MCP_SESSION_ID, headers::MCP_PROTOCOL_VERSION];

/// The first of `names` that `h` carries more than once, if any.
///
/// A map without any repeated name (`len` counts values, `keys_len` names) answers at once;
/// otherwise each name is looked up and its values iterated, with no allocation.
pub(crate) fn repeated<'a>(h: &HeaderMap, names: &'a [HeaderName]) -> Option<&'a HeaderName> {
    if h.len() == h.keys_len() {
        return None;
    }
    names
        .iter()
        .find(|name| h.get_all(*name).iter().nth(1).is_some())
}

/// Refuses a request that repeats one of `names` (see [`repeated`]).
///
/// The rejection is `400` with `-32600` (invalid request), or `-32020` (header mismatch) when
/// a copy of `MCP-Protocol-Version` names a modern revision, whose era answers header
/// problems with that code; `error.data.header` names the header.
pub(crate) fn check(h: &HeaderMap, names: &[HeaderName]) -> Result<(), Rejection> {
    let Some(name) = repeated(h, names) else {
        return Ok(());
    };
    let modern = h
        .get_all(headers::MCP_PROTOCOL_VERSION)
        .iter()
        .any(|v| v.to_str().is_ok_and(is_modern_string));
    let code = if modern {
        codes::HEADER_MISMATCH
    } else {
        codes::INVALID_REQUEST
    };
    tracing::debug!(header = %name, "request refused: a singleton header is repeated");
    Err(Rejection::new(
        RejectionKind::RepeatedHeader,
        code,
        format!("repeated {name} header: it must appear once"),
    )
    .with_data(serde_json::json!({ "header": name.as_str() })))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn map(pairs: &[(&HeaderName, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn each_singleton_is_refused_when_repeated() {
        for name in &TRANSPORT {
            let h = map(&[
                (&header::ACCEPT, "application/json"),
                (name, "a"),
                (name, "b"),
            ]);
            assert_eq!(repeated(&h, &TRANSPORT), Some(name));
            let r = check(&h, &TRANSPORT).unwrap_err();
            assert_eq!(
                (r.status(), r.code()),
                (http::StatusCode::BAD_REQUEST, codes::INVALID_REQUEST)
            );
            assert!(r.message().contains(name.as_str()));
        }
    }

    #[test]
    fn list_headers_may_repeat_and_singletons_once_are_fine() {
        let h = map(&[
            (&header::ACCEPT, "application/json"),
            (&header::ACCEPT, "text/event-stream"),
            (&header::COOKIE, "a=1"),
            (&header::COOKIE, "b=2"),
            (&headers::MCP_SESSION_ID, "s"),
            (&header::HOST, "localhost"),
        ]);
        assert_eq!(repeated(&h, &TRANSPORT), None);
        assert!(check(&h, &TRANSPORT).is_ok());
        assert!(check(&HeaderMap::new(), &TRANSPORT).is_ok());
        // The same value twice is still two copies.
        let h = map(&[
            (&headers::MCP_SESSION_ID, "s"),
            (&headers::MCP_SESSION_ID, "s"),
        ]);
        assert!(check(&h, &ROUTING).is_err());
    }

    #[test]
    fn the_modern_era_gets_its_header_code() {
        let h = map(&[
            (&headers::MCP_PROTOCOL_VERSION, "2025-11-25"),
            (&headers::MCP_PROTOCOL_VERSION, "2026-07-28"),
        ]);
        assert_eq!(
            check(&h, &TRANSPORT).unwrap_err().code(),
            codes::HEADER_MISMATCH
        );
        let h = map(&[
            (&headers::MCP_PROTOCOL_VERSION, "2026-07-28"),
            (&headers::MCP_METHOD, "tools/list"),
            (&headers::MCP_METHOD, "tools/call"),
        ]);
        assert_eq!(
            check(&h, &TRANSPORT).unwrap_err().code(),
            codes::HEADER_MISMATCH
        );
    }
}
