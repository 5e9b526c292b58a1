//! What the criterion benches share: the `initialize` body and the trivial handler.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};

/// A `2025-11-25` `initialize` request.
pub(crate) const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"b","version":"1"}}}"#;

/// The trivial handler: reads the message, answers a fixed JSON-RPC result.
pub(crate) async fn trivial<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: http_body::Body<Data = Bytes>,
{
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let init = body.windows(10).any(|w| w == b"initialize");
    let answer: &'static [u8] = if init {
        br#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"b","version":"1"}}}"#
    } else {
        br#"{"jsonrpc":"2.0","id":1,"result":{}}"#
    };
    Ok(Response::new(Full::new(Bytes::from_static(answer))))
}
