//! The header readers as the server really runs them: a sequence of requests (method, path,
//! any headers, any body) through `SessionAffinityLayer` → `SessionRegistryLayer` (memory
//! store) → `SseTransportLayer` → a `handler_fn`, after one real `initialize`. That covers the
//! affinity cookie, the session id and its node tag (and the envelope), `Last-Event-ID`,
//! `Accept`, `Content-Type`, `Host`, `Origin` and `MCP-Protocol-Version`.
//!
//! Input: the request notation of `mcp_affinity_fuzz::parse_input` (see the seeds). An option
//! line `# envelope strict` sets those affinity modes. In header values and bodies `{sid}`
//! stands for the live session's id (as the client holds it) and `{inner}` for its part after
//! the node tag.
//!
//! Properties: every answer is a JSON-RPC answer (error statuses with error bodies); every
//! minted session id carries this node's tag; the affinity layer passes a single session id on
//! unchanged, or stripped of this node's tag in envelope mode; a misroute hint names another
//! valid node; the cookie is set exactly when an in-scope legacy request lacks a valid one for
//! this node; and unless a request was a `DELETE`, the live session still answers a `ping`.
#![no_main]

use std::sync::{Arc, Mutex};

use http::{HeaderValue, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use mcp_affinity::{
    SessionAffinityLayer, SessionRegistryLayer, SseTransportLayer, affinity::Misroute,
    handler::handler_fn, registry::MemoryStore, session::NodeTag,
};
use mcp_affinity_fuzz::{Probe, RawRequest, call, check_answer, parse_input, read, runtime};
use serde_json::{Value, json};
use tower_layer::Layer;

const TAG: &str = "n1";
/// At most this many requests of an input are sent (longer inputs are cut).
const MAX_REQUESTS: usize = 16;

fuzz_target!(|input: &[u8]| {
    let (options, requests) = parse_input(input);
    let has = |w: &str| options.iter().any(|o| o == w);
    runtime().block_on(serve(has("envelope"), has("strict"), requests));
});

fn headers(sid: Option<&str>) -> Vec<(&str, &str)> {
    let mut h = vec![
        ("host", "localhost"),
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    if let Some(sid) = sid {
        h.push(("mcp-session-id", sid));
    }
    h
}

async fn serve(envelope: bool, strict: bool, requests: Vec<RawRequest>) {
    let tag = NodeTag::new(TAG).expect("a tag");
    let affinity = SessionAffinityLayer::builder(tag)
        .with_envelope(envelope)
        .with_strict(strict)
        .build()
        .expect("a valid affinity layer");
    let mut transport = SseTransportLayer::builder();
    if !envelope {
        transport = transport.with_id_generator(affinity.id_generator());
    }
    let transport = transport.build().expect("a valid transport");
    let registry = SessionRegistryLayer::new(MemoryStore::new(), TAG).expect("a valid registry");
    let handler = handler_fn(|req, cx| async move {
        match req.method.as_str() {
            "initialize" => Ok(json!({
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "serverInfo": {"name": "fuzz", "version": "0"}
            })),
            "tools/call" => {
                // Something on the request's stream before the answer: an SSE answer.
                let _ = cx.notify(
                    "notifications/message",
                    Some(json!({"level": "info", "data": "x"})),
                );
                Ok(json!({"content": []}))
            }
            _ => Ok(json!({})),
        }
    });
    // What the affinity layer passed on: the session id headers of each request.
    let passed: Arc<Mutex<Vec<Vec<HeaderValue>>>> = Arc::default();
    let log = passed.clone();
    let probe = Probe {
        inner: registry.layer(transport.layer(handler)),
        seen: move |req: &Request<_>| {
            let ids = req
                .headers()
                .get_all("mcp-session-id")
                .iter()
                .cloned()
                .collect();
            log.lock().expect("log").push(ids);
        },
    };
    let mut svc = affinity.layer(probe);

    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    let req = RawRequest::new("POST", &headers(None), init)
        .to_http()
        .expect("a request");
    let res = read(call(&mut svc, req).await.expect("infallible")).await;
    check_answer(&res, "initialize");
    assert_eq!(res.status, StatusCode::OK);
    let sid = res.headers["mcp-session-id"]
        .to_str()
        .expect("visible ASCII")
        .to_owned();
    let inner_id = sid
        .strip_prefix("n1.")
        .unwrap_or_else(|| panic!("the session id {sid:?} carries the node tag"))
        .to_owned();

    let mut deleted = false;
    for mut raw in requests.into_iter().take(MAX_REQUESTS) {
        raw.substitute(b"{sid}", sid.as_bytes());
        raw.substitute(b"{inner}", inner_id.as_bytes());
        let Some(req) = raw.to_http() else { continue };
        deleted |= req.method() == http::Method::DELETE;
        let outer_ids: Vec<HeaderValue> = req
            .headers()
            .get_all("mcp-session-id")
            .iter()
            .cloned()
            .collect();
        let in_scope = req.uri().path() == "/mcp" || req.uri().path().starts_with("/mcp/");
        // The affinity layer leaves modern-era requests alone (a POST announcing a revision on
        // or after 2026-07-28).
        let modern = req.method() == http::Method::POST
            && req
                .headers()
                .get("mcp-protocol-version")
                .and_then(|v| v.to_str().ok())
                .is_some_and(is_modern_revision);
        let context = format!(
            "[envelope {envelope}, strict {strict}] {} {} {:?}",
            req.method(),
            req.uri(),
            req.headers()
        );
        // A repeated `Mcp-Session-Id` or `MCP-Protocol-Version` in scope is refused by the
        // affinity layer itself (400): a balancer in front may have read the other copy.
        let repeated = |name: &str| req.headers().get_all(name).iter().count() > 1;
        let refused = in_scope && (repeated("mcp-session-id") || repeated("mcp-protocol-version"));
        let cookie_here = names_this_node(req.headers());
        passed.lock().expect("log").clear();
        let res = read(call(&mut svc, req).await.expect("infallible")).await;
        check_answer(&res, &context);
        if refused {
            assert_eq!(res.status, 400, "{context}: a repeated routing header");
            assert!(
                passed.lock().expect("log").is_empty(),
                "{context}: a refused request reached the layers below"
            );
        }
        let touched = in_scope && !modern && !refused;
        check_affinity(
            &res,
            envelope,
            &outer_ids,
            &passed.lock().expect("log"),
            touched,
            in_scope,
            cookie_here,
            &context,
        );
    }

    if !deleted {
        let ping = r#"{"jsonrpc":"2.0","id":"last","method":"ping"}"#;
        let req = RawRequest::new("POST", &headers(Some(&sid)), ping)
            .to_http()
            .expect("a request");
        let res = read(call(&mut svc, req).await.expect("infallible")).await;
        check_answer(&res, "final ping");
        let v: Value = serde_json::from_slice(&res.body).unwrap_or_default();
        assert_eq!(
            (res.status, v.get("id")),
            (StatusCode::OK, Some(&json!("last"))),
            "the live session was harmed: {:?}",
            String::from_utf8_lossy(&res.body)
        );
    }
}

fn is_modern_revision(v: &str) -> bool {
    v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        })
        && v >= "2026-07-28"
}

/// Whether a `Cookie` header names this node (RFC 6265 §4.2.1: `name=value` pairs separated by
/// `;` and optional whitespace, a value optionally in double quotes). Lines longer than the
/// layer's 4096-byte bound, or not visible ASCII, are not read.
fn names_this_node(h: &http::HeaderMap) -> bool {
    // RFC 6265 pairs; a value may be quoted. Cookies count only when every one that is a
    // node tag names this node: cookies that disagree confirm no node.
    let ows = |c: char| c == ' ' || c == '\t';
    let values: Vec<&str> = h
        .get_all("cookie")
        .iter()
        .filter(|v| v.len() <= 4096)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(';'))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| name.trim_matches(ows) == "_mcp_backend")
        .map(|(_, value)| {
            let value = value.trim_matches(ows);
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
        .collect();
    values.contains(&TAG)
        && values
            .iter()
            .all(|v| *v == TAG || NodeTag::new(*v).is_err())
}

#[allow(clippy::too_many_arguments)]
fn check_affinity(
    res: &mcp_affinity_fuzz::Answer,
    envelope: bool,
    outer: &[HeaderValue],
    passed: &[Vec<HeaderValue>],
    touched: bool,
    in_scope: bool,
    cookie_here: bool,
    context: &str,
) {
    // A minted id carries the tag: the transport's own generator tags it, or (envelope mode)
    // the affinity layer wraps it, on the requests in its scope.
    if !envelope || touched {
        for v in res.headers.get_all("mcp-session-id") {
            let v = v.to_str().expect("a minted id is visible ASCII");
            assert!(
                v.starts_with("n1."),
                "{context}: minted {v:?} without this node's tag"
            );
        }
    }
    if let Some(m) = res.extensions.get::<Misroute>() {
        assert!(
            NodeTag::is_valid(&m.owner_tag),
            "{context}: hint names {:?}",
            m.owner_tag
        );
        assert_ne!(m.owner_tag, TAG, "{context}: a misroute to this very node");
    }
    if !in_scope {
        assert!(
            res.extensions.get::<Misroute>().is_none(),
            "{context}: out of scope"
        );
        assert!(
            res.headers.get("set-cookie").is_none(),
            "{context}: a cookie out of scope"
        );
    }
    // This node's cookie is set on every legacy answer in scope unless the request has it.
    assert_eq!(
        res.headers.contains_key("set-cookie"),
        touched && !cookie_here,
        "{context}: Set-Cookie"
    );
    // What the layer below saw (nothing when strict mode or a check answered first).
    let Some(seen) = passed.first() else { return };
    let [one] = outer else {
        if !envelope || !touched || outer.is_empty() {
            assert_eq!(seen.as_slice(), outer, "{context}: session ids changed");
        }
        return;
    };
    let want = match one.to_str().ok().and_then(|s| s.strip_prefix("n1.")) {
        Some(rest) if envelope && touched && !rest.is_empty() => {
            HeaderValue::from_str(rest).unwrap_or_else(|_| one.clone())
        }
        _ => one.clone(),
    };
    assert_eq!(
        seen.as_slice(),
        [want],
        "{context}: the session id passed on"
    );
}
