//! A small MCP server used by the framework examples (`hyper_server`, and `tonic_web` in
//! `interop/examples/`): the handler and the layer stack, so each example shows only its
//! framework's wiring.
#![allow(dead_code)]

use mcp_affinity::{
    SessionAffinityLayer, SessionRegistryLayer, SseTransportLayer,
    handler::{ErrorObject, HandlerRequest, handler_fn},
    protocol::{Era, ProtocolVersion},
    registry::MemoryStore,
    session::RequestContext,
};
use serde_json::{Value, json};

/// A minimal MCP handler: `initialize`, `ping`, `tools/list` and an `echo` tool.
pub(crate) async fn handle(req: HandlerRequest, cx: RequestContext) -> Result<Value, ErrorObject> {
    let mut result = match req.method.as_str() {
        "initialize" => {
            let version = req
                .params
                .get("protocolVersion")
                .and_then(Value::as_str)
                .and_then(ProtocolVersion::parse)
                .filter(|v| v.era() == Era::Legacy)
                .unwrap_or(ProtocolVersion::LATEST_LEGACY);
            json!({
                "protocolVersion": version.as_str(),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "mcp-affinity-example", "version": env!("CARGO_PKG_VERSION")}
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": [{
            "name": "echo",
            "description": "Returns its text.",
            "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}
        }]}),
        "tools/call" => {
            let text = req
                .params
                .pointer("/arguments/text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            json!({"content": [{"type": "text", "text": text}]})
        }
        m if m.starts_with("notifications/") => json!({}),
        other => return Err(ErrorObject::method_not_found(other)),
    };
    if cx.era() == Era::Modern
        && let Some(obj) = result.as_object_mut()
    {
        obj.insert("resultType".into(), json!("complete"));
    }
    Ok(result)
}

/// The three layers for node `name`, over the handler above, with the embedded registry.
pub(crate) fn mcp_service(
    name: &str,
) -> Result<
    impl tower::Service<
        http::Request<axum::body::Body>,
        Response = http::Response<
            impl http_body::Body<Data = bytes::Bytes, Error = impl Into<mcp_affinity::BoxError>>
            + Send
            + 'static,
        >,
        Error = std::convert::Infallible,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static,
    Box<dyn std::error::Error>,
> {
    let affinity = SessionAffinityLayer::builder(mcp_affinity::session::NodeTag::derive(name))
        .with_cookie_secure(false)
        .build()?;
    let transport = SseTransportLayer::builder()
        .with_id_generator(affinity.id_generator())
        .build()?;
    let registry = SessionRegistryLayer::new(MemoryStore::new(), name)?;
    Ok(tower::ServiceBuilder::new()
        .layer(affinity)
        .layer(registry)
        .layer(transport)
        .service(handler_fn(handle)))
}
