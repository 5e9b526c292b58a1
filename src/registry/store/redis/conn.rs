//! Sending commands on the store's connection ([`Conn`](crate::redis_conn::Conn)) within the
//! command timeout, and what a Redis error means for the registry.

use std::future::Future;
use std::time::Duration;

use ::redis::{Cmd, ErrorKind, FromRedisValue, RedisError, RedisResult, Script, ServerErrorKind};

use super::RedisStore;
use crate::registry::store::{Kind, StoreError};

impl RedisStore {
    /// Sends `cmd` without a deadline of its own.
    pub(super) async fn conn_query<T: FromRedisValue>(&self, cmd: Cmd) -> RedisResult<T> {
        self.inner.conn.query(&cmd).await
    }

    /// Sends `cmd` within the command timeout.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: Cmd) -> Result<T, StoreError> {
        bounded(self.inner.command_timeout, self.conn_query(cmd)).await
    }

    /// Sends `pipe` (commands on one key: one slot on a cluster) in one round trip, within the
    /// command timeout.
    pub(super) async fn query_pipe<T: FromRedisValue>(
        &self,
        pipe: &::redis::Pipeline,
    ) -> Result<T, StoreError> {
        bounded(self.inner.command_timeout, self.inner.conn.query_pipe(pipe)).await
    }

    /// Runs `script` on `key` within the command timeout (loading it first where missing).
    pub(super) async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut invocation = script.key(key);
        for arg in args {
            invocation.arg(*arg);
        }
        self.invoke(invocation).await
    }

    /// Runs a prepared script invocation within the command timeout (loading the script
    /// first where missing).
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: ::redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        bounded(
            self.inner.command_timeout,
            self.inner.conn.invoke(&invocation),
        )
        .await
    }

    /// Runs `script` on `keys` (all in one slot) within the command timeout.
    pub(super) async fn eval_keys<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        self.invoke(invocation).await
    }
}

/// `fut`, or a timeout error once `deadline` has passed.
pub(super) async fn within<T>(
    deadline: tokio::time::Instant,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .unwrap_or_else(|_elapsed| Err(StoreError::timeout()))
}

/// Runs a Redis future within `limit`, mapping its outcome to ours.
pub(super) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = RedisResult<T>>,
) -> Result<T, StoreError> {
    within(tokio::time::Instant::now() + limit, async {
        fut.await.map_err(classify)
    })
    .await
}

/// What `err` means for the registry: a timeout, an unreachable store, or the store's own
/// error.
pub(super) fn classify(err: RedisError) -> StoreError {
    let kind = if err.is_timeout() {
        Kind::Timeout
    } else if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || matches!(
            err.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                )
        )
    {
        Kind::Unavailable
    } else {
        Kind::Backend
    };
    StoreError::with(kind, Some(Box::new(err)))
}
