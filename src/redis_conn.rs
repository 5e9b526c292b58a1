//! The Redis connection under both Redis stores (the registry's and the tasks'): a single
//! server through an auto-reconnecting connection manager or, with feature `redis-cluster`, a
//! Redis Cluster. Building it from a target and two timeouts, and sending commands and scripts
//! on it.
//!
//! Nothing here bounds a call or names an error for the user: each store bounds its calls with
//! its command timeout and maps a [`BuildError`] or a [`RedisError`] to its own error type.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisError, RedisResult, ScriptInvocation,
};
use tokio::runtime::TryCurrentError;

/// Reconnect attempts per reconnect round of the connection manager; a failed round is retried
/// by the next command.
const RECONNECT_RETRIES: usize = 6;
/// The first delay between two reconnect attempts.
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
/// The longest delay between two reconnect attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// Where a store connects. Its `Debug` shows the [`topology`](Self::topology) only: the URLs
/// may carry passwords.
#[derive(Clone)]
pub(crate) enum Target {
    /// The URL of one server.
    Single(String),
    /// The URLs of some of a cluster's nodes.
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.topology())
    }
}

impl Target {
    /// `"single"` or `"cluster"`.
    pub(crate) fn topology(&self) -> &'static str {
        match self {
            Self::Single(_) => "single",
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(_) => "cluster",
        }
    }
}

/// Why no connection could be built, for the store to name in its own error.
#[derive(Debug)]
pub(crate) enum BuildError {
    /// The command timeout is zero.
    ZeroCommandTimeout,
    /// The connect timeout is zero.
    ZeroConnectTimeout,
    /// Not inside a Tokio runtime (the connections spawn their tasks on it).
    NoRuntime(TryCurrentError),
    /// The Redis client refused a URL (or the configuration built from it).
    Url(RedisError),
    /// A cluster target without a node.
    #[cfg(feature = "redis-cluster")]
    NoNodes,
}

/// A Redis client for a [`Target`], with the timeouts its connection will use: checked, not
/// connected.
pub(crate) struct Client {
    /// The client of the target's kind.
    kind: ClientKind,
    /// The response timeout of each command on the connection.
    command_timeout: Duration,
    /// The timeout of each attempt to open a connection.
    connect_timeout: Duration,
}

/// The client of one server or of a cluster.
enum ClientKind {
    /// One server.
    Single(::redis::Client),
    /// A cluster.
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<::redis::cluster::ClusterClient>),
}

impl Client {
    /// Checks the timeouts (not zero, the command timeout first) and that this runs inside a
    /// Tokio runtime, then opens the client for `target`, contacting no server.
    pub(crate) fn open(
        target: Target,
        command_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, BuildError> {
        if command_timeout.is_zero() {
            return Err(BuildError::ZeroCommandTimeout);
        }
        if connect_timeout.is_zero() {
            return Err(BuildError::ZeroConnectTimeout);
        }
        tokio::runtime::Handle::try_current().map_err(BuildError::NoRuntime)?;
        let kind = match target {
            Target::Single(url) => {
                ClientKind::Single(::redis::Client::open(url.as_str()).map_err(BuildError::Url)?)
            }
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(BuildError::NoNodes);
                }
                let client =
                    ::redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(connect_timeout)
                        .response_timeout(command_timeout)
                        .build()
                        .map_err(BuildError::Url)?;
                ClientKind::Cluster(Box::new(client))
            }
        };
        Ok(Self {
            kind,
            command_timeout,
            connect_timeout,
        })
    }

    /// The connection, without contacting Redis: it connects on first use.
    pub(crate) fn lazy(self) -> Result<Conn, BuildError> {
        match self.kind {
            ClientKind::Single(client) => Ok(Conn::Single(
                ConnectionManager::new_lazy_with_config(
                    client,
                    manager_config(self.command_timeout, self.connect_timeout),
                )
                .map_err(BuildError::Url)?,
            )),
            #[cfg(feature = "redis-cluster")]
            ClientKind::Cluster(client) => Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(cluster_config(
                    self.command_timeout,
                    self.connect_timeout,
                )),
            )),
        }
    }

    /// The connection, once Redis answered. On a single server: one direct connection attempt
    /// and a `PING`, which report the real cause (refused, timed out, auth) where the
    /// manager's retry loop would run into the caller's deadline, then the lazy manager. On a
    /// cluster: the cluster connection, opened now.
    ///
    /// `Err` is that first contact's failure; `Ok(Err)` a connection that could not be built
    /// after it. The caller bounds the whole.
    pub(crate) async fn connect(self) -> RedisResult<Result<Conn, BuildError>> {
        let (command_timeout, connect_timeout) = (self.command_timeout, self.connect_timeout);
        match self.kind {
            ClientKind::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(command_timeout));
                {
                    let mut probe = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    ::redis::cmd("PING").query_async::<()>(&mut probe).await?;
                }
                Ok(ConnectionManager::new_lazy_with_config(
                    client,
                    manager_config(command_timeout, connect_timeout),
                )
                .map(Conn::Single)
                .map_err(BuildError::Url))
            }
            #[cfg(feature = "redis-cluster")]
            ClientKind::Cluster(client) => client
                .get_async_connection_with_config(cluster_config(command_timeout, connect_timeout))
                .await
                .map(|conn| Ok(Conn::Cluster(conn))),
        }
    }
}

/// The single-server connection manager's settings: the two timeouts and the reconnect
/// backoff.
fn manager_config(command_timeout: Duration, connect_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(command_timeout))
        .set_connection_timeout(Some(connect_timeout))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_min_delay(RECONNECT_MIN_DELAY)
        .set_max_delay(RECONNECT_MAX_DELAY)
}

/// The cluster connection's settings: the two timeouts.
#[cfg(feature = "redis-cluster")]
fn cluster_config(
    command_timeout: Duration,
    connect_timeout: Duration,
) -> ::redis::cluster::ClusterConfig {
    ::redis::cluster::ClusterConfig::new()
        .set_connection_timeout(connect_timeout)
        .set_response_timeout(command_timeout)
}

/// The connection to a [`Target`]. Clones share it.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One server, through an auto-reconnecting connection manager.
    Single(ConnectionManager),
    /// A Redis Cluster.
    #[cfg(feature = "redis-cluster")]
    Cluster(::redis::cluster_async::ClusterConnection),
}

/// `$send` with `$c` bound to the connection of `$conn` (a [`Conn`], consumed), whichever kind it
/// is: the two kinds are different types behind the same `ConnectionLike` calls.
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $send:expr) => {
        match $conn {
            Conn::Single(mut $c) => $send,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(mut $c) => $send,
        }
    };
}

impl Conn {
    /// `"single"` or `"cluster"`.
    pub(crate) fn topology(&self) -> &'static str {
        match self {
            Self::Single(_) => "single",
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(_) => "cluster",
        }
    }

    /// Sends `cmd` (without a deadline of its own).
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        on_conn!(self.clone(), |conn| cmd.query_async(&mut conn).await)
    }

    /// Sends `pipe` in one round trip (without a deadline of its own).
    pub(crate) async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        on_conn!(self.clone(), |conn| pipe.query_async(&mut conn).await)
    }

    /// Runs a script invocation, loading the script first where missing (without a deadline
    /// of its own).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        on_conn!(self.clone(), |conn| invocation
            .invoke_async(&mut conn)
            .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn single(url: &str) -> Target {
        Target::Single(url.to_owned())
    }

    #[test]
    fn outside_a_runtime_nothing_is_built() {
        let err = Client::open(single("redis://127.0.0.1:1/"), SECOND, SECOND).err();
        assert!(matches!(err, Some(BuildError::NoRuntime(_))), "{err:?}");
    }

    #[tokio::test]
    async fn the_timeouts_are_checked_first_the_command_timeout_before_the_other() {
        let both = Client::open(single("not a url"), Duration::ZERO, Duration::ZERO).err();
        assert!(
            matches!(both, Some(BuildError::ZeroCommandTimeout)),
            "{both:?}"
        );
        let connect = Client::open(single("not a url"), SECOND, Duration::ZERO).err();
        assert!(
            matches!(connect, Some(BuildError::ZeroConnectTimeout)),
            "{connect:?}"
        );
    }

    #[tokio::test]
    async fn a_bad_url_is_refused_and_a_good_one_contacts_no_server() {
        let bad = Client::open(single("not a url"), SECOND, SECOND).err();
        assert!(matches!(bad, Some(BuildError::Url(_))), "{bad:?}");
        let conn = Client::open(single("redis://127.0.0.1:1/"), SECOND, SECOND)
            .and_then(Client::lazy)
            .expect("lazy");
        assert_eq!(conn.topology(), "single");
        assert_eq!(single("redis://127.0.0.1:1/").topology(), "single");
    }

    #[test]
    fn a_target_shows_no_url() {
        let shown = format!("{:?}", single("redis://user:secret@10.0.0.1:6380/"));
        assert_eq!(shown, "single");
    }

    #[cfg(feature = "redis-cluster")]
    #[tokio::test]
    async fn a_cluster_needs_a_node() {
        let none = Client::open(Target::Cluster(Vec::new()), SECOND, SECOND).err();
        assert!(matches!(none, Some(BuildError::NoNodes)), "{none:?}");
        let target = Target::Cluster(vec!["redis://127.0.0.1:1/".to_owned()]);
        assert_eq!(target.topology(), "cluster");
        let conn = Client::open(target, SECOND, SECOND)
            .and_then(Client::lazy)
            .expect("lazy");
        assert_eq!(conn.topology(), "cluster");
    }
}
