//! JSON-RPC parsing and era classification, directly (`Message::parse`) and as the server
//! does them (a POST through `SseTransport` with a `handler_fn` inner service).
//!
//! Input: one mode byte, then the POST body. Modes (`(byte - b'0') % 5`, so the seeds start
//! with a digit): 0 no `MCP-Protocol-Version`;
//! 1 `2025-11-25`; 2 modern headers mirrored from the body (`MCP-Protocol-Version` from the
//! `_meta` claim, `Mcp-Method`, `Mcp-Name`); 3 on a live `2025-11-25` session; 4 on a live
//! `2025-03-26` session (the revision with batches).
//!
//! Properties: `Message::parse` accepts only what a JSON-RPC 2.0 model accepts and reports
//! its fields as they are; every answer is a JSON-RPC answer (error statuses with error
//! bodies); the handler sees exactly the message sent, never a response, in the era the
//! body (then the header) claims; a session id is minted only for a legacy `initialize`.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use mcp_affinity::{
    SseTransportLayer,
    handler::handler_fn,
    protocol::{Era, Message, MessageKind, ParseError, ProtocolVersion, RequestId},
};
use mcp_affinity_fuzz::{RawRequest, call, check_answer, json_value, read, runtime};
use serde_json::{Value, json};
use tower_layer::Layer;

const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

#[derive(Debug, Clone)]
struct Seen {
    era: Era,
    method: String,
    id: Option<RequestId>,
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, body)) = input.split_first() else {
        return;
    };
    let parsed = Message::parse(body);
    let value = json_value(body);
    check_parse(&parsed, &value, body);
    runtime().block_on(serve(
        mode.wrapping_sub(b'0') % 5,
        body,
        parsed.ok(),
        value.ok().flatten(),
    ));
});

/// `Message::parse` against the JSON-RPC 2.0 model, computed from a `serde_json::Value`.
fn check_parse(
    parsed: &Result<Message, ParseError>,
    value: &Result<Option<Value>, serde_json::Error>,
    body: &[u8],
) {
    let text = String::from_utf8_lossy(body);
    match (parsed, value) {
        (Err(ParseError::Json), Ok(Some(_))) => {
            panic!("valid JSON reported as a parse error: {text:?}")
        }
        (Ok(_), Err(e)) => panic!("invalid JSON ({e}) accepted: {text:?}"),
        (Ok(m), Ok(Some(v))) => {
            let o = v.as_object().expect("a message is an object");
            assert_eq!(o.get("jsonrpc"), Some(&json!("2.0")), "{text:?}");
            let id = o.get("id");
            match id {
                Some(Value::String(s)) => assert_eq!(m.id(), Some(&RequestId::from(s.as_str()))),
                Some(n @ Value::Number(_)) => {
                    assert_eq!(
                        m.id(),
                        n.as_i64().map(RequestId::Number).as_ref(),
                        "{text:?}"
                    );
                }
                None => assert_eq!(m.id(), None),
                Some(other) => panic!("id {other} accepted: {text:?}"),
            }
            assert_eq!(
                m.method(),
                o.get("method").and_then(Value::as_str),
                "{text:?}"
            );
            let raw_eq = |raw: Option<&serde_json::value::RawValue>, key: &str| {
                let raw = raw.map(|r| serde_json::from_str::<Value>(r.get()).expect("raw JSON"));
                assert_eq!(raw.as_ref(), o.get(key), "{key} of {text:?}");
            };
            raw_eq(m.params(), "params");
            raw_eq(m.result(), "result");
            raw_eq(m.error(), "error");
            let kind = match (o.contains_key("method"), o.contains_key("id")) {
                (true, true) => MessageKind::Request,
                (true, false) => MessageKind::Notification,
                _ => MessageKind::Response,
            };
            assert_eq!(m.kind(), kind, "{text:?}");
            if kind == MessageKind::Response {
                assert!(
                    o.contains_key("result") != o.contains_key("error"),
                    "a response with both or neither of result and error: {text:?}"
                );
            } else {
                assert!(
                    !o.contains_key("result") && !o.contains_key("error"),
                    "{text:?}"
                );
            }
        }
        _ => {}
    }
}

fn legacy_revision(s: &str) -> bool {
    ProtocolVersion::parse(s).is_some_and(|v| v.era() == Era::Legacy)
}

/// The `_meta` protocol-version claim: `params._meta[META_VERSION]` of an object `params`.
fn claim(v: &Value) -> Option<&Value> {
    v.get("params")?
        .as_object()?
        .get("_meta")?
        .as_object()?
        .get(META_VERSION)
}

fn headers_for(
    mode: u8,
    v: Option<&Value>,
    session: Option<(&str, &str)>,
) -> Vec<(String, String)> {
    let mut h = vec![
        ("host".to_owned(), "localhost".to_owned()),
        (
            "accept".to_owned(),
            "application/json, text/event-stream".to_owned(),
        ),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    match (mode, session) {
        (1, _) => h.push(("mcp-protocol-version".into(), "2025-11-25".into())),
        (2, _) => {
            let version = v
                .and_then(claim)
                .and_then(Value::as_str)
                .unwrap_or("2026-07-28");
            h.push(("mcp-protocol-version".into(), version.into()));
            if let Some(m) = v.and_then(|v| v.get("method")).and_then(Value::as_str) {
                h.push(("mcp-method".into(), m.into()));
            }
            let params = v.and_then(|v| v.get("params"));
            let name = ["name", "uri", "taskId"]
                .iter()
                .find_map(|k| params.and_then(|p| p.get(k)))
                .map(|n| match n {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            if let Some(n) = name {
                h.push(("mcp-name".into(), n));
            }
        }
        (_, Some((sid, version))) => {
            h.push(("mcp-session-id".into(), sid.into()));
            h.push(("mcp-protocol-version".into(), version.into()));
        }
        _ => {}
    }
    h
}

async fn serve(mode: u8, body: &[u8], parsed: Option<Message>, value: Option<Value>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let handler = handler_fn(move |req, cx| {
        let log = log.clone();
        async move {
            let version = req
                .params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .filter(|v| legacy_revision(v))
                .unwrap_or("2025-11-25")
                .to_owned();
            log.lock().expect("log").push(Seen {
                era: cx.era(),
                method: req.method.clone(),
                id: req.id.clone(),
            });
            Ok(match req.method.as_str() {
                "initialize" => json!({
                    "protocolVersion": version,
                    "capabilities": {},
                    "serverInfo": {"name": "fuzz", "version": "0"}
                }),
                _ => json!({}),
            })
        }
    });
    let mut svc = SseTransportLayer::new().layer(handler);

    let session_version = match mode {
        3 => Some("2025-11-25"),
        4 => Some("2025-03-26"),
        _ => None,
    };
    let mut sid = None;
    if let Some(version) = session_version {
        let init = format!(
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{version}","capabilities":{{}},"clientInfo":{{"name":"c","version":"1"}}}}}}"#
        );
        let h = headers_for(0, None, None);
        let h: Vec<_> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let req = RawRequest::new("POST", &h, &init)
            .to_http()
            .expect("a request");
        let res = read(call(&mut svc, req).await.expect("infallible")).await;
        check_answer(&res, "initialize");
        let id = res
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok());
        sid = Some(id.expect("initialize mints a session").to_owned());
        seen.lock().expect("log").clear();
    }

    let h = headers_for(mode, value.as_ref(), sid.as_deref().zip(session_version));
    let h: Vec<_> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let mut raw = RawRequest::new("POST", &h, "");
    raw.body = body.to_vec();
    let req = raw.to_http().expect("a request");
    let res = read(call(&mut svc, req).await.expect("infallible")).await;
    let context = format!("POST {:?} (mode {mode})", String::from_utf8_lossy(body));
    check_answer(&res, &context);

    let seen = seen.lock().expect("log").clone();
    if res.headers.contains_key("mcp-session-id") {
        assert!(
            seen.iter()
                .any(|s| s.method == "initialize" && s.era == Era::Legacy),
            "{context}: a session minted without a legacy initialize: {seen:?}"
        );
        assert!(res.status.is_success(), "{context}");
    }
    let Some(msg) = parsed else {
        // Not one message (a batch or invalid): the handler sees only valid elements.
        let is_batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
        if !is_batch {
            assert!(
                seen.is_empty(),
                "{context}: the handler saw an invalid message: {seen:?}"
            );
        }
        return;
    };
    if msg.kind() == MessageKind::Response {
        assert!(seen.is_empty(), "{context}: a response reached the handler");
        return;
    }
    let Some(s) = seen.first() else {
        return;
    };
    assert_eq!(seen.len(), 1, "{context}: {seen:?}");
    assert_eq!(Some(s.method.as_str()), msg.method(), "{context}");
    assert_eq!(s.id.as_ref(), msg.id(), "{context}");
    // A message whose JSON no `Value` holds (a huge number somewhere): no model to compare.
    let Some(v) = value else { return };
    let header_modern = h
        .iter()
        .find(|(n, _)| *n == "mcp-protocol-version")
        .is_some_and(|(_, v)| ProtocolVersion::parse(v).is_some_and(|v| v.era() == Era::Modern));
    let expected = match claim(&v) {
        Some(Value::String(c)) if legacy_revision(c) => Era::Legacy,
        Some(Value::String(_)) => Era::Modern,
        Some(other) => panic!("{context}: a non-string claim {other} was served"),
        None if header_modern => Era::Modern,
        None => Era::Legacy,
    };
    assert_eq!(s.era, expected, "{context}: classified as {:?}", s.era);
    if msg.kind() == MessageKind::Request && res.status.is_success() && !res.body.is_empty() {
        // The answer of a request the handler answered carries its id.
        if let Ok(a) = serde_json::from_slice::<Value>(&res.body) {
            let want = serde_json::to_value(msg.id()).expect("an id");
            assert_eq!(a.get("id"), Some(&want), "{context}");
        }
    }
}
