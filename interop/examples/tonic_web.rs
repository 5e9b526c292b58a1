//! A tonic gRPC-web service and MCP side by side on one port; the MCP layers wrap only `/mcp`.
//!
//! ```text
//! cargo run -p mcp-affinity-interop --example tonic_web -- 127.0.0.1:8080
//! ```
//!
//! - `POST /grpc.health.v1.Health/Check` (gRPC-web, `application/grpc-web+proto`): the
//!   standard gRPC health service, served through `tonic_web::GrpcWebLayer`.
//! - `/mcp`: `SessionAffinityLayer` → `SessionRegistryLayer` → `SseTransportLayer`.

#[path = "../../examples/common/mod.rs"]
mod common;

use tonic_health::ServingStatus;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let grpc = tonic::service::Routes::new(health)
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new());

    let app = axum::Router::new()
        .route_service("/mcp", common::mcp_service("tonic-node")?)
        .merge(grpc);

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "gRPC-web + MCP listening on http://{}/ (MCP at /mcp)",
        listener.local_addr()?
    );
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}
