//! Inputs the fuzz targets (`fuzz/fuzz_targets/`) found, kept as tests through the public API
//! (in-process calls, each bounded by a deadline). Each names its target.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_affinity::{
    SseTransportLayer,
    protocol::{Message, ParseError, codes},
    session::RequestContext,
    transport::HostPolicy,
};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};

const DEADLINE: Duration = Duration::from_secs(10);
const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;

fn post(body: impl Into<Bytes>, sid: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post("/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json");
    if let Some(sid) = sid {
        b = b
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", "2025-11-25");
    }
    b.body(Full::new(body.into())).unwrap()
}

async fn body_of<B: http_body::Body<Data = Bytes>>(res: Response<B>) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    tokio::time::timeout(DEADLINE, res.into_body().collect())
        .await
        .expect("the body ends in time")
        .unwrap()
        .to_bytes()
}

/// The `data` of each event of an SSE stream, as the WHATWG algorithm reads it: a line ends
/// at CRLF, LF or a bare CR, and `data` lines are joined with LF.
fn sse_data(stream: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    let stream = stream.replace("\r\n", "\n").replace('\r', "\n");
    for line in stream.split('\n') {
        if line.is_empty() {
            events.extend(data.take());
        } else if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(v);
                }
                None => data = Some(v.to_owned()),
            }
        }
    }
    events
}

/// Target `sse`: an answer whose JSON has a bare CR between tokens (legal JSON whitespace),
/// sent on an SSE stream. The encoder split lines on LF only, so every SSE parser cut the
/// `data:` line at the CR and dropped the rest of the answer.
#[tokio::test]
async fn sse_answer_with_a_bare_cr_reads_back_whole() {
    let inner = tower::service_fn(
        |req: Request<mcp_affinity::transport::RequestBody>| async move {
            if let Some(cx) = req.extensions().get::<RequestContext>() {
                // Something on the request's stream first: the answer then goes out as SSE.
                cx.notify("notifications/message", Some(json!({"level": "info"})))
                    .unwrap();
            }
            let msg = req.extensions().get::<Message>().unwrap();
            let body = if msg.method() == Some("initialize") {
                r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"s","version":"1"}}}"#.to_owned()
            } else {
                "{\"jsonrpc\":\"2.0\",\r\"id\":1,\r\"result\":{\"a\":\r1}}".to_owned()
            };
            let res = Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            Ok::<_, Infallible>(res)
        },
    );
    let svc = SseTransportLayer::new().layer(inner);
    let res = tokio::time::timeout(DEADLINE, svc.clone().oneshot(post(INIT, None)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = body_of(res).await;

    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#;
    let res = tokio::time::timeout(DEADLINE, svc.oneshot(post(call, Some(&sid))))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let stream = String::from_utf8(body_of(res).await.to_vec()).unwrap();
    let answer = sse_data(&stream)
        .into_iter()
        .filter(|d| !d.is_empty())
        .map(|d| serde_json::from_str::<Value>(&d).unwrap_or_else(|e| panic!("{e}: {d:?}")))
        .find(|v| v.get("id").is_some())
        .expect("the answer event");
    assert_eq!(
        answer,
        json!({"jsonrpc": "2.0", "id": 1, "result": {"a": 1}})
    );
}

/// Target `host_origin`: `HostPolicy` dropped whatever followed `]` in a bracketed host, so
/// `localhost()` allowed `[::1]:3inte` (and `[::1]evil`) as if it were `[::1]`.
#[test]
fn host_policy_refuses_text_after_a_bracketed_host() {
    let p = HostPolicy::localhost();
    for bad in ["[::1]:3inte", "[::1]evil.example", "[::1]:80:80", "[::1]]"] {
        assert!(!p.allows(bad), "{bad:?}");
    }
    for good in ["[::1]", "[::1]:3000", "[::1]:", "[::1]:0"] {
        assert!(p.allows(good), "{good:?}");
    }
    let p = HostPolicy::list(["[2001:db8::1]:8443"]);
    assert!(p.allows("[2001:db8::1]:8443"));
    assert!(!p.allows("[2001:db8::1]:8443x"));
    assert!(!p.allows("[2001:db8::1]"));
}

/// Target `jsonrpc`: a body that is not UTF-8 in a field the parser skips was accepted as a
/// message; JSON text is UTF-8 (RFC 8259 §8.1), so it is a parse error (`-32700`).
#[tokio::test]
async fn a_body_that_is_not_utf8_is_a_parse_error() {
    let body: &[u8] =
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"x\":{\"\xff\":\"\xc3\"}}";
    assert!(serde_json::from_slice::<Value>(body).is_err());
    assert_eq!(Message::parse(body).unwrap_err(), ParseError::Json);
    let batch: &[u8] = b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"x\":\"\xc3\"}]";

    let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(json!({})) });
    let svc = SseTransportLayer::new().layer(handler);
    for body in [body, batch] {
        let res = tokio::time::timeout(DEADLINE, svc.clone().oneshot(post(body.to_vec(), None)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let v: Value = serde_json::from_slice(&body_of(res).await).unwrap();
        assert_eq!(v["error"]["code"], codes::PARSE_ERROR, "{v}");
    }
}

/// Target `jsonrpc`: the era is read from `params._meta`, but a wrong-typed field elsewhere in
/// `params` (here `requestId: 1.5`) made the whole peek fail, so a request claiming the modern
/// era on a legacy session's connection was served as legacy. Each field is now read on its
/// own: the claim is seen, and the header that contradicts it is a `-32001` mismatch.
#[tokio::test]
async fn a_wrong_typed_param_does_not_hide_the_era_claim() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let handler = mcp_affinity::handler::handler_fn(move |req, cx| {
        log.lock().unwrap().push((req.method, cx.era()));
        async move {
            Ok(
                json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}),
            )
        }
    });
    let svc = SseTransportLayer::new().layer(handler);
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    let res = tokio::time::timeout(DEADLINE, svc.clone().oneshot(post(init, None)))
        .await
        .unwrap()
        .unwrap();
    let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    seen.lock().unwrap().clear();

    let meta = r#""_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#;
    for params in [
        format!(r#"{{"requestId":1.5,{meta}}}"#),
        format!(r#"{{"name":["x"],"uri":7,{meta},"clientInfo":3}}"#),
    ] {
        let body =
            format!(r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{params}}}"#);
        let res = tokio::time::timeout(DEADLINE, svc.clone().oneshot(post(body, Some(&sid))))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{params}");
        let v: Value = serde_json::from_slice(&body_of(res).await).unwrap();
        assert_eq!(v["error"]["code"], codes::HEADER_MISMATCH, "{params}: {v}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
}

/// Found by the `record` target: a JSON array (`["", "", 14]`, the sequence form serde's
/// derived struct decoding also takes) was accepted as a record owned by a node named "".
/// A record is a JSON object.
#[test]
fn a_json_array_is_not_a_record() {
    use mcp_affinity::registry::SessionRecord;

    for text in [
        "\r\r\r[\r\n\"\", \r\n\"\", \r\n\r14]",
        r#"["node-a","inc",1]"#,
        " [\"a\",\"b\",1] ",
    ] {
        let err = SessionRecord::from_json(text).expect_err(text);
        assert!(err.is_invalid_record(), "{text:?}: {err}");
    }
    let record = SessionRecord::from_json(" \r\n{\"n\":\"a\",\"i\":\"b\",\"c\":1}").unwrap();
    assert_eq!(record.node, "a");
}
