//! A minimal rmcp 3.11 Streamable HTTP server: `StreamableHttpService` + `LocalSessionManager`
//! under axum at `/mcp`, default configuration (legacy sessions on, loopback `Host` allow-list,
//! 2026-07-28 requests served statelessly), `TCP_NODELAY` on accepted sockets.
//!
//! ```text
//! peer-rmcp --listen 127.0.0.1:8081 [--tasks]
//! ```
//!
//! Tools: `echo {text}`; `progress {steps}` (per step, sleeps 10 ms then sends a progress
//! notification for the request's progress token and a log message — the same work as the
//! node example's `progress` tool, so the `stream` workload compares like with like);
//! `slow_compute {seconds, label}` (sleeps `seconds`, as `examples/everything.rs`'s
//! conformance fixture does).
//!
//! `--tasks`: the Tasks extension (SEP-2663) with rmcp's in-process `TaskManager` (one for the
//! process, shared by the handler each request gets; default `TaskOptions`: 300 s TTL): the
//! server advertises it, `slow_compute` with the client's per-request opt-in is answered by a
//! `CreateTaskResult` and runs as a task, and `tasks/get|update|cancel` are answered from the
//! manager. Without `--tasks` nothing advertises it and `slow_compute` runs inline.

// Logging notifications are deprecated by SEP-2577 but still part of 2025-11-25, which is the
// era measured here; the node example sends them too.
#![allow(deprecated)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, serve::ListenerExt};
use rmcp::{
    ErrorData, Peer, RoleServer, ServerHandler,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock, CreateTaskResult,
        GetTaskParams, GetTaskResult, LoggingLevel, LoggingMessageNotificationParam,
        ProgressNotificationParam, RequestMetaObject, ServerCapabilities, ServerConfig,
        UpdateTaskParams,
    },
    schemars,
    service::RequestContext,
    task_manager::{TaskManager, TaskOptions},
    tool, tool_handler, tool_router,
    transport::{
        StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use serde::Deserialize;

#[derive(Clone)]
struct Bench {
    #[allow(dead_code, reason = "read by the code tool_handler generates")]
    tool_router: ToolRouter<Self>,
    /// `--tasks`: the process's task manager (every clone shares its state).
    tasks: Option<TaskManager>,
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

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct SlowComputeArgs {
    /// Seconds to sleep (default 1).
    seconds: Option<f64>,
    /// A label for the result.
    label: Option<String>,
}

#[tool_router]
impl Bench {
    fn new(tasks: Option<TaskManager>) -> Self {
        Self {
            tool_router: Self::tool_router(),
            tasks,
        }
    }

    fn task_manager(&self) -> Result<&TaskManager, ErrorData> {
        self.tasks
            .as_ref()
            .ok_or_else(|| ErrorData::internal_error("tasks are off (--tasks)", None))
    }

    #[tool(description = "Sleeps `seconds`, as a task when the client opts in (--tasks).")]
    async fn slow_compute(
        &self,
        Parameters(SlowComputeArgs { seconds, label }): Parameters<SlowComputeArgs>,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let seconds = seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(1.0)
            .min(3600.0);
        let label = label.unwrap_or_default();
        let work = async move {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            CallToolResult::success(vec![ContentBlock::text(format!(
                "slow_compute {label}: done after {seconds}s"
            ))])
        };
        let opted_in = cx
            .client_capabilities()
            .is_some_and(|caps| caps.supports_tasks());
        match self.tasks.as_ref().filter(|_| opted_in) {
            Some(tasks) => {
                let task = tasks.spawn(TaskOptions::default(), |_task| {
                    Box::pin(async move { Ok(work.await) })
                });
                Ok(CreateTaskResult::new(task).into())
            }
            None => Ok(work.await.into()),
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
        let caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_logging();
        ServerConfig::new(if self.tasks.is_some() {
            caps.enable_tasks().build()
        } else {
            caps.build()
        })
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let task = self.task_manager()?.get_task(&request.task_id)?;
        Ok(GetTaskResult::new(task))
    }

    async fn update_task(
        &self,
        request: UpdateTaskParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.task_manager()?
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        _cx: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.task_manager()?.cancel_task(&request.task_id)
    }
}

/// `--listen ADDR` and `--tasks`.
fn parse_args() -> Result<(SocketAddr, bool), String> {
    let mut listen = "127.0.0.1:8081".to_owned();
    let mut tasks = false;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--listen" => listen = it.next().ok_or("--listen needs a value")?,
            "--tasks" => tasks = true,
            "-h" | "--help" => {
                println!("usage: peer-rmcp [--listen ADDR] [--tasks]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    Ok((listen, tasks))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (listen, tasks) = parse_args()?;
    // One manager for the process: rmcp builds a handler per stateless request.
    let tasks = tasks.then(TaskManager::new);
    let service = StreamableHttpService::new(
        move || Ok(Bench::new(tasks.clone())),
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
