//! The error of a registry store.

use std::error::Error;
use std::fmt;

use crate::BoxError;

/// An error from a [`RegistryStore`](super::RegistryStore).
///
/// Opaque: ask it what happened with the `is_*` methods and walk [`Error::source`] for the
/// cause. The registry layer treats every store error as "registry unavailable" and keeps
/// serving (fail-open) unless configured otherwise.
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::StoreError;
///
/// let err = StoreError::timeout();
/// assert!(err.is_timeout());
/// assert_eq!(err.to_string(), "registry store timed out");
///
/// let err = StoreError::unavailable(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
/// assert!(err.is_unavailable());
/// assert!(std::error::Error::source(&err).is_some());
/// ```
pub struct StoreError {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Timeout,
    Unavailable,
    Backend,
    InvalidRecord,
    Config,
}

impl StoreError {
    pub(super) fn with(kind: Kind, source: Option<BoxError>) -> Self {
        Self { kind, source }
    }

    /// The store did not answer in time.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// assert!(StoreError::timeout().is_timeout());
    /// ```
    #[must_use]
    pub fn timeout() -> Self {
        Self::with(Kind::Timeout, None)
    }

    /// The store cannot be reached: connection refused or dropped, not connected yet, cluster
    /// down.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// assert!(StoreError::unavailable("connection refused").is_unavailable());
    /// ```
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::with(Kind::Unavailable, Some(source.into()))
    }

    /// The store answered with an error, or failed in some other way.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// let err = StoreError::backend("WRONGTYPE");
    /// assert!(!err.is_timeout() && !err.is_unavailable());
    /// ```
    pub fn backend(source: impl Into<BoxError>) -> Self {
        Self::with(Kind::Backend, Some(source.into()))
    }

    /// The store holds something under the session's key that is not a [`SessionRecord`](super::SessionRecord).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// assert!(StoreError::invalid_record("truncated").is_invalid_record());
    /// ```
    pub fn invalid_record(source: impl Into<BoxError>) -> Self {
        Self::with(Kind::InvalidRecord, Some(source.into()))
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn config(source: impl Into<BoxError>) -> Self {
        Self::with(Kind::Config, Some(source.into()))
    }

    /// Whether the store did not answer in time.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// assert!(StoreError::timeout().is_timeout());
    /// assert!(!StoreError::unavailable("down").is_timeout());
    /// ```
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// Whether the store could not be reached.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::StoreError;
    ///
    /// assert!(StoreError::unavailable("down").is_unavailable());
    /// assert!(!StoreError::timeout().is_unavailable());
    /// ```
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }

    /// Whether the stored value is not a valid [`SessionRecord`](super::SessionRecord).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::SessionRecord;
    ///
    /// assert!(SessionRecord::from_json("{}").unwrap_err().is_invalid_record());
    /// ```
    #[must_use]
    pub fn is_invalid_record(&self) -> bool {
        self.kind == Kind::InvalidRecord
    }

    /// Whether the store was configured wrongly (a bad URL or prefix, no Tokio runtime). Such
    /// errors come from building a store, never from a later call.
    ///
    /// # Example
    ///
    /// ```
    /// # #[cfg(feature = "redis")] {
    /// use mcp_affinity::registry::RedisStore;
    ///
    /// let err = RedisStore::builder("redis://127.0.0.1:1/")
    ///     .with_prefix("bad{prefix}:")
    ///     .build_lazy()
    ///     .unwrap_err();
    /// assert!(err.is_config());
    /// # }
    /// ```
    #[must_use]
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StoreError");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Timeout => "registry store timed out",
            Kind::Unavailable => "registry store unavailable",
            Kind::Backend => "registry store failed",
            Kind::InvalidRecord => "invalid session record",
            Kind::Config => "invalid registry store configuration",
        })
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_and_source() {
        let err = StoreError::backend(std::io::Error::other("boom"));
        assert_eq!(err.to_string(), "registry store failed");
        assert_eq!(
            err.source().map(ToString::to_string).as_deref(),
            Some("boom")
        );
        assert!(StoreError::timeout().source().is_none());
        assert_eq!(
            StoreError::config("x").to_string(),
            "invalid registry store configuration"
        );
        assert!(StoreError::config("x").is_config());
    }
}
