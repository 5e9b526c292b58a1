//! A minimal rmcp 3.11 Streamable HTTP server: `StreamableHttpService` + `LocalSessionManager`
//! under axum at `/mcp`, default configuration (legacy sessions on, loopback `Host` allow-list,
//! 2026-07-28 requests served statelessly), `TCP_NODELAY` on accepted sockets.
//!
//! ```text
//! peer-rmcp --listen 127.0.0.1:8081
//! ```
//!
//! Tools: `echo {text}`; `progress {steps}` (per step, sleeps 10 ms then sends a progress
//! notification for the request's progress token and a log message — the same work as the
//! node example's `progress` tool, so the `stream` workload compares like with like).

// Logging notifications are deprecated by SEP-2577 but still part of 2025-11-25, which is the
// era measured here; the node example sends them too.
#![allow(deprecated)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, serve::ListenerExt};
use rmcp::{
    ErrorData, Peer, RoleServer, ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        LoggingLevel, LoggingMessageNotificationParam, ProgressNotificationParam,
        RequestMetaObject, ServerCapabilities, ServerConfig,
    },
    schemars, tool, tool_handler, tool_router,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use serde::Deserialize;

#[derive(Debug, Clone)]
struct Bench {
    #[allow(dead_code, reason = "read by the code tool_handler generates")]
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// The text to return.
    text: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ProgressArgs {
    /// Number of steps (default 3, at most 1000).
    steps: Option<u64>,
}

#[tool_router]
impl Bench {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Returns its text.")]
    async fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Sends progress and log notifications, then returns.")]
    async fn progress(
        &self,
        Parameters(ProgressArgs { steps }): Parameters<ProgressArgs>,
        meta: RequestMetaObject,
        client: Peer<RoleServer>,
    ) -> Result<String, ErrorData> {
        let steps = steps.unwrap_or(3).min(1000);
        let token = meta.get_progress_token();
        for i in 1..=steps {
            if let Some(token) = &token {
                let _ = client
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), i as f64)
                            .with_total(steps as f64),
                    )
                    .await;
            }
            let _ = client
                .notify_logging_message(LoggingMessageNotificationParam::new(
                    LoggingLevel::Info,
                    format!("step {i} of {steps}").into(),
                ))
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok("done".into())
    }
}

#[tool_handler]
impl ServerHandler for Bench {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .build(),
        )
    }
}

fn listen_arg() -> Result<SocketAddr, String> {
    let mut listen = "127.0.0.1:8081".to_owned();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--listen" => listen = it.next().ok_or("--listen needs a value")?,
            "-h" | "--help" => {
                println!("usage: peer-rmcp [--listen ADDR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = listen_arg()?;
    let service = StreamableHttpService::new(
        || Ok(Bench::new()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let router = Router::new().route_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "rmcp peer listening on http://{}/mcp",
        listener.local_addr()?
    );
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
