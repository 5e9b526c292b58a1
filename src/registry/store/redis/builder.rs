//! Building a [`RedisStore`](super::RedisStore): its target, key prefix and timeouts.

use std::fmt;
use std::time::Duration;

use ::redis::AsyncConnectionConfig;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Conn, RedisStore, bounded};
use crate::registry::store::{RecordKey, StoreError};

const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect attempts per reconnect round of the connection manager; a failed round is retried
/// by the next command.
const RECONNECT_RETRIES: usize = 6;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// Builds a [`RedisStore`]. Created by [`RedisStore::builder`] (and `RedisStore::cluster_builder`
/// with feature `redis-cluster`).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::RedisStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
/// // Building lazily contacts no server.
/// let store = RedisStore::builder("redis://127.0.0.1:6379/")
///     .with_prefix("staging:mcp:session:")
///     .with_command_timeout(Duration::from_millis(100))
///     .with_connect_timeout(Duration::from_millis(500))
///     .build_lazy()?;
/// assert_eq!(store.keys().session("s1"), "staging:mcp:session:{s1}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    target: Target,
    prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
}

#[derive(Clone)]
pub(super) enum Target {
    Single(String),
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
}

enum Client {
    Single(::redis::Client),
    #[cfg(feature = "redis-cluster")]
    Cluster(Box<::redis::cluster::ClusterClient>),
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords: they are not shown.
        let target = match &self.target {
            Target::Single(_) => "single",
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStoreBuilder")
            .field("target", &target)
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl RedisStoreBuilder {
    pub(super) fn new(target: Target) -> Self {
        Self {
            target,
            prefix: RecordKey::DEFAULT_PREFIX.to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Sets the key prefix (default `mcp:session:`); see [`RecordKey`] for the keys built from
    /// it. It must not contain `{` or `}`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// let builder = RedisStore::builder("redis://127.0.0.1/").with_prefix("tenant-a:mcp:session:");
    /// ```
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the timeout of every store call, including the time to wait for a reconnect
    /// (default 250 ms). Keep it short: the registry must never hold a request up for long.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// let builder = RedisStore::builder("redis://127.0.0.1/").with_command_timeout(Duration::from_millis(50));
    /// ```
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets the timeout of each attempt to open a connection (default 1 s).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// let builder = RedisStore::builder("redis://127.0.0.1/").with_connect_timeout(Duration::from_millis(300));
    /// ```
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    fn prepare(self) -> Result<(Client, RecordKey, Duration, Duration), StoreError> {
        if self.prefix.contains(['{', '}']) {
            return Err(StoreError::config(
                "the key prefix must not contain `{` or `}`",
            ));
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(StoreError::config("timeouts must be greater than zero"));
        }
        // The connections spawn background tasks on the current Tokio runtime.
        tokio::runtime::Handle::try_current().map_err(StoreError::config)?;
        let client = match self.target {
            Target::Single(url) => {
                Client::Single(::redis::Client::open(url.as_str()).map_err(StoreError::config)?)
            }
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(StoreError::config("no cluster node given"));
                }
                let client =
                    ::redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                        .connection_timeout(self.connect_timeout)
                        .response_timeout(self.command_timeout)
                        .build()
                        .map_err(StoreError::config)?;
                Client::Cluster(Box::new(client))
            }
        };
        Ok((
            client,
            RecordKey::new(self.prefix),
            self.command_timeout,
            self.connect_timeout,
        ))
    }

    fn manager_config(
        command_timeout: Duration,
        connect_timeout: Duration,
    ) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(command_timeout))
            .set_connection_timeout(Some(connect_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(RECONNECT_MIN_DELAY)
            .set_max_delay(RECONNECT_MAX_DELAY)
    }

    #[cfg(feature = "redis-cluster")]
    fn cluster_config(
        command_timeout: Duration,
        connect_timeout: Duration,
    ) -> ::redis::cluster::ClusterConfig {
        ::redis::cluster::ClusterConfig::new()
            .set_connection_timeout(connect_timeout)
            .set_response_timeout(command_timeout)
    }

    /// Builds the store without contacting Redis; it connects on first use.
    ///
    /// Use this to start a node while Redis may be down: calls fail (fast, with
    /// [`StoreError::is_unavailable`] or [`StoreError::is_timeout`]) until Redis is reachable
    /// and succeed from then on.
    ///
    /// # Errors
    ///
    /// A [`StoreError::is_config`] error if the URL or prefix is invalid, a timeout is zero, or
    /// this is called outside a Tokio runtime.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = RedisStore::builder("redis://127.0.0.1:6379/").build_lazy()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build_lazy(self) -> Result<RedisStore, StoreError> {
        let (client, keys, command_timeout, connect_timeout) = self.prepare()?;
        let conn = match client {
            Client::Single(client) => Conn::Single(
                ConnectionManager::new_lazy_with_config(
                    client,
                    Self::manager_config(command_timeout, connect_timeout),
                )
                .map_err(StoreError::config)?,
            ),
            #[cfg(feature = "redis-cluster")]
            Client::Cluster(client) => {
                Conn::Cluster(client.get_pending_async_connection_with_config(
                    Self::cluster_config(command_timeout, connect_timeout),
                ))
            }
        };
        Ok(RedisStore::from_parts(conn, keys, command_timeout))
    }

    /// Connects, checks that Redis answers, and builds the store.
    ///
    /// # Errors
    ///
    /// A [`StoreError::is_config`] error as for [`build_lazy`](Self::build_lazy), or the error
    /// of the first connection attempt: [`StoreError::is_unavailable`] if Redis refused it,
    /// [`StoreError::is_timeout`] if it did not answer within the connect timeout plus the command
    /// timeout.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::registry::StoreError> {
    /// let store = RedisStore::builder("redis://127.0.0.1:6379/").connect().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let (client, keys, command_timeout, connect_timeout) = self.prepare()?;
        let limit = connect_timeout.saturating_add(command_timeout);
        let conn = match client {
            Client::Single(client) => {
                // One direct attempt reports the real cause (refused, timed out, auth) instead of
                // the manager's retry loop running into our deadline.
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(command_timeout));
                bounded(limit, async {
                    let mut probe = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    ::redis::cmd("PING").query_async::<()>(&mut probe).await
                })
                .await?;
                let manager = ConnectionManager::new_lazy_with_config(
                    client,
                    Self::manager_config(command_timeout, connect_timeout),
                )
                .map_err(StoreError::config)?;
                Conn::Single(manager)
            }
            #[cfg(feature = "redis-cluster")]
            Client::Cluster(client) => Conn::Cluster(
                bounded(
                    limit,
                    client.get_async_connection_with_config(Self::cluster_config(
                        command_timeout,
                        connect_timeout,
                    )),
                )
                .await?,
            ),
        };
        let store = RedisStore::from_parts(conn, keys, command_timeout);
        // Open the store's own connection now, with the connect timeout to spare.
        bounded(limit, store.conn_query::<()>(::redis::cmd("PING"))).await?;
        Ok(store)
    }
}
