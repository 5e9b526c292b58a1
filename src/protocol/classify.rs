//! Era classification (body-primary, header cross-checked) and modern header validation.
//!
//! The rules follow the 2026-07-28 dual-era guidance: a request carrying a modern `_meta`
//! protocol-version claim is modern and is validated strictly; `initialize` (or anything else)
//! without such a claim is legacy. A modern claim on a method the modern era removed
//! (`initialize`, `ping`, …) is a method-not-found, never a legacy handshake.

use http::HeaderMap;
use serde_json::Value;

use super::{
    Era, Message, ProtocolVersion, Rejection, RejectionKind, codes, headers, message::ParamsPeek,
    version::is_modern_string,
};

pub(crate) const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub(crate) const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

/// Methods the modern era removed; with a modern claim they are method-not-found (404/-32601).
pub(crate) const REMOVED_IN_MODERN: &[&str] = &[
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
    "notifications/initialized",
    "notifications/roots/list_changed",
];

/// Methods whose `Mcp-Name` header is required in the modern era, and the param it mirrors.
fn name_param(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    }
}

/// Reads the `MCP-Protocol-Version` header: `Ok(None)` when absent.
pub(crate) fn header_version(h: &HeaderMap) -> Result<Option<&str>, ()> {
    match h.get(headers::MCP_PROTOCOL_VERSION) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| ()),
    }
}

fn mismatch(msg: &'static str) -> Rejection {
    Rejection::new(RejectionKind::HeaderMismatch, codes::HEADER_MISMATCH, msg)
}

/// Classifies a single POSTed message. `Ok(Era::Modern)` means the modern checks passed.
/// `header` is [`header_version`] of `h` (read once by the caller, which needs it again).
pub(crate) fn classify_post(
    h: &HeaderMap,
    header: Result<Option<&str>, ()>,
    msg: &Message,
    peek: &ParamsPeek,
) -> Result<Era, Rejection> {
    let header = header.map_err(|()| {
        Rejection::new(
            RejectionKind::InvalidVersionHeader,
            codes::INVALID_REQUEST,
            "invalid MCP-Protocol-Version header",
        )
    })?;
    let claim = peek
        .meta
        .as_ref()
        .and_then(|m| m.get(META_PROTOCOL_VERSION));
    let Some(claim) = claim else {
        // No modern claim: legacy unless the header claims the modern era.
        return match header {
            Some(v) if is_modern_string(v) && msg.method().is_some() && msg.id().is_some() => {
                Err(Rejection::new(
                    RejectionKind::InvalidMeta,
                    codes::INVALID_PARAMS,
                    "missing _meta[\"io.modelcontextprotocol/protocolVersion\"] on a modern request",
                )
                .with_id(msg.id().cloned()))
            }
            Some(v) if is_modern_string(v) => Ok(Era::Modern),
            _ => Ok(Era::Legacy),
        };
    };
    let id = msg.id().cloned();
    let Some(claim) = claim.as_str() else {
        return Err(Rejection::new(
            RejectionKind::InvalidMeta,
            codes::INVALID_PARAMS,
            "_meta protocolVersion must be a string",
        )
        .with_id(id));
    };
    // A claim naming a legacy revision inside _meta: treat as legacy (the legacy era has no
    // per-request _meta rules).
    if !is_modern_string(claim)
        && ProtocolVersion::parse(claim).is_some_and(|v| v.era() == Era::Legacy)
    {
        return Ok(Era::Legacy);
    }
    // The header must repeat the claim (checked before support, as the reference server does).
    match header {
        Some(v) if v == claim => {}
        Some(_) => {
            return Err(mismatch("MCP-Protocol-Version header does not match _meta").with_id(id));
        }
        None => return Err(mismatch("missing MCP-Protocol-Version header").with_id(id)),
    }
    let supported = ProtocolVersion::parse(claim).filter(|v| v.era() == Era::Modern);
    if supported.is_none() {
        return Err(Rejection::new(
            RejectionKind::UnsupportedVersion,
            codes::UNSUPPORTED_PROTOCOL_VERSION,
            "unsupported protocol version",
        )
        .with_data(serde_json::json!({
            "supported": ProtocolVersion::supported_strings(Era::Modern),
            "requested": claim,
        }))
        .with_id(id));
    }
    let meta = peek.meta.as_ref();
    if msg.id().is_some()
        && !meta
            .and_then(|m| m.get(META_CLIENT_CAPABILITIES))
            .is_some_and(Value::is_object)
    {
        return Err(Rejection::new(
            RejectionKind::InvalidMeta,
            codes::INVALID_PARAMS,
            "missing _meta[\"io.modelcontextprotocol/clientCapabilities\"]",
        )
        .with_id(id));
    }
    // Mcp-Method and Mcp-Name (SEP-2243). The transport refused repeated copies of them (and
    // of `MCP-Protocol-Version`) before reading the body: see `single::check`.
    let method = msg.method().unwrap_or_default();
    if msg.id().is_some() {
        match h.get(headers::MCP_METHOD).map(|v| v.to_str()) {
            Some(Ok(m)) if m == method => {}
            Some(_) => {
                return Err(mismatch("Mcp-Method header does not match the body").with_id(id));
            }
            None => return Err(mismatch("missing Mcp-Method header").with_id(id)),
        }
        if let Some(param) = name_param(method) {
            let body_value = match param {
                "name" => peek.name.as_ref(),
                "uri" => peek.uri.as_ref(),
                _ => peek.task_id.as_ref(),
            };
            let header_value = h
                .get(headers::MCP_NAME)
                .map(|v| v.to_str().ok().map(decode_header_value));
            match (header_value, body_value) {
                (None, _) => return Err(mismatch("missing Mcp-Name header").with_id(id)),
                (Some(Some(Some(hv))), Some(Value::String(bv))) if hv == *bv => {}
                (Some(Some(Some(hv))), Some(Value::Number(n))) if hv == n.to_string() => {}
                _ => return Err(mismatch("Mcp-Name header does not match the body").with_id(id)),
            }
        }
    }
    Ok(Era::Modern)
}

/// Decodes a header value that may use the `=?base64?…?=` sentinel form.
pub(crate) fn decode_header_value(v: &str) -> Option<std::borrow::Cow<'_, str>> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => base64_decode(b64)
            .and_then(|b| String::from_utf8(b).ok())
            .map(std::borrow::Cow::Owned),
        None => Some(std::borrow::Cow::Borrowed(v)),
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in s.as_bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn classify(h: &HeaderMap, body: &str) -> Result<Era, Rejection> {
        let m = Message::parse(body.as_bytes()).unwrap();
        classify_post(h, header_version(h), &m, &m.peek_params())
    }

    const MODERN_PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

    #[test]
    fn legacy_initialize() {
        let b = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#;
        assert_eq!(classify(&HeaderMap::new(), b).unwrap(), Era::Legacy);
    }

    #[test]
    fn modern_ok_and_mismatches() {
        let ok = hdrs(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        assert_eq!(classify(&ok, MODERN_PING).unwrap(), Era::Modern);
        let b64 = hdrs(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?ZWNobw==?="),
        ]);
        assert_eq!(classify(&b64, MODERN_PING).unwrap(), Era::Modern);
        for h in [
            hdrs(&[("mcp-method", "tools/call"), ("mcp-name", "echo")]),
            hdrs(&[("mcp-protocol-version", "2026-07-28"), ("mcp-name", "echo")]),
            hdrs(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
                ("mcp-name", "echo"),
            ]),
            hdrs(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "other"),
            ]),
            hdrs(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ]),
        ] {
            let r = classify(&h, MODERN_PING).unwrap_err();
            assert_eq!(
                (r.status(), r.code()),
                (http::StatusCode::BAD_REQUEST, codes::HEADER_MISMATCH)
            );
        }
    }

    #[test]
    fn modern_bad_version_and_meta() {
        let b = MODERN_PING.replace("2026-07-28", "2099-01-01");
        let r = classify(&hdrs(&[("mcp-protocol-version", "2099-01-01")]), &b).unwrap_err();
        assert_eq!(r.code(), codes::UNSUPPORTED_PROTOCOL_VERSION);
        let b = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        let r = classify(
            &hdrs(&[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
            ]),
            b,
        )
        .unwrap_err();
        assert_eq!(r.code(), codes::INVALID_PARAMS);
        let b = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        let r = classify(&hdrs(&[("mcp-protocol-version", "2026-07-28")]), b).unwrap_err();
        assert_eq!(r.code(), codes::INVALID_PARAMS);
    }

    #[test]
    fn base64() {
        assert_eq!(
            decode_header_value("=?base64?aMOpbGxv?=").as_deref(),
            Some("héllo")
        );
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
    }
}
