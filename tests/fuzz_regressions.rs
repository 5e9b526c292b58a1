//! Inputs the fuzz targets (`fuzz/fuzz_targets/`) found, kept as tests through the public API
//! (in-process calls, each bounded by a deadline). Each names its target.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_affinity::{
    SseTransportLayer,
    protocol::{Message, ParseError, codes},
    transport::HostPolicy,
};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};

const DEADLINE: Duration = Duration::from_secs(10);

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
