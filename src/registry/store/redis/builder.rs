//! Building a [`RedisStore`](super::RedisStore): its target, key prefix and timeouts.

use std::fmt;
use std::time::Duration;

use super::{RedisStore, bounded};
use crate::redis_conn::{BuildError, Client, Target};
use crate::registry::store::{RecordKey, StoreError};

/// The default [`with_command_timeout`](RedisStoreBuilder::with_command_timeout).
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);
/// The default [`with_connect_timeout`](RedisStoreBuilder::with_connect_timeout).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

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

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords: they are not shown.
        f.debug_struct("RedisStoreBuilder")
            .field("target", &self.target.topology())
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl RedisStoreBuilder {
    /// A builder for `target` with the default settings.
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

    /// Checks the settings and opens the client, contacting no server.
    fn prepare(self) -> Result<(Client, RecordKey, Duration), StoreError> {
        if self.prefix.contains(['{', '}']) {
            return Err(StoreError::config(
                "the key prefix must not contain `{` or `}`",
            ));
        }
        let client = Client::open(self.target, self.command_timeout, self.connect_timeout)
            .map_err(config_error)?;
        Ok((client, RecordKey::new(self.prefix), self.command_timeout))
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
        let (client, keys, command_timeout) = self.prepare()?;
        let conn = client.lazy().map_err(config_error)?;
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
        let limit = self.connect_timeout.saturating_add(self.command_timeout);
        let (client, keys, command_timeout) = self.prepare()?;
        // On a single server one direct attempt first: it reports the real cause (refused,
        // timed out, auth) instead of the manager's retry loop running into our deadline.
        let conn = bounded(limit, client.connect())
            .await?
            .map_err(config_error)?;
        let store = RedisStore::from_parts(conn, keys, command_timeout);
        // Open the store's own connection now, with the connect timeout to spare.
        bounded(limit, store.conn_query::<()>(::redis::cmd("PING"))).await?;
        Ok(store)
    }
}

/// A connection that could not be built, as the registry names it: a
/// [`StoreError::is_config`] error.
fn config_error(err: BuildError) -> StoreError {
    match err {
        BuildError::ZeroCommandTimeout | BuildError::ZeroConnectTimeout => {
            StoreError::config("timeouts must be greater than zero")
        }
        BuildError::NoRuntime(err) => StoreError::config(err),
        BuildError::Url(err) => StoreError::config(err),
        #[cfg(feature = "redis-cluster")]
        BuildError::NoNodes => StoreError::config("no cluster node given"),
    }
}
