//! The configuration error every builder of this crate reports.
//!
//! Each layer is configured the same way: a constructor with the required values
//! (`SseTransportLayer::builder()`, `SessionRegistryLayer::builder(store, node)`,
//! `SessionAffinityLayer::builder(tag)`, `McpStack::builder(node, store)`), `with_*` setters
//! that only record a value, and a `build()` that validates every value and returns the layer
//! or a [`ConfigError`] naming the first invalid setting and why. An invalid value is always an
//! error, never replaced by a default nor clamped into range.

use std::fmt;

/// An invalid setting, reported by a `build()`: which component, which setting, and why.
///
/// One type for every layer (re-exported as `transport::ConfigError`,
/// `registry::ConfigError` and `affinity::ConfigError`), so a program that builds the whole
/// stack handles one error.
///
/// # Example
///
/// ```
/// use mcp_affinity::{ConfigError, SseTransportLayer};
///
/// let err: ConfigError = SseTransportLayer::builder().with_max_sessions(0).build().unwrap_err();
/// assert_eq!(err.component(), "transport");
/// assert_eq!(err.field(), "max_sessions");
/// assert_eq!(err.reason(), "must be at least 1");
/// assert_eq!(err.to_string(), "invalid transport configuration: max_sessions must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    component: &'static str,
    field: &'static str,
    reason: &'static str,
}

impl ConfigError {
    pub(crate) const fn new(
        component: &'static str,
        field: &'static str,
        reason: &'static str,
    ) -> Self {
        Self {
            component,
            field,
            reason,
        }
    }

    /// What was being built: `"transport"`, `"registry"`, `"affinity"` or `"stack"`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let err = SessionRegistryLayer::new(MemoryStore::new(), "").unwrap_err();
    /// assert_eq!(err.component(), "registry");
    /// ```
    pub fn component(&self) -> &'static str {
        self.component
    }

    /// The name of the offending setting, as its `with_*` setter names it (`"idle_timeout"`
    /// for `with_idle_timeout`).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let builder = SessionRegistryLayer::builder(MemoryStore::new(), "node-a").with_ttl(Duration::ZERO);
    /// assert_eq!(builder.build().unwrap_err().field(), "ttl");
    /// ```
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was refused, as a phrase that follows the field name
    /// (`"must start with '/'"`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::SessionAffinityLayer;
    ///
    /// let err = SessionAffinityLayer::builder(mcp_affinity::session::NodeTag::derive("n1")).with_scope("mcp").build().unwrap_err();
    /// assert_eq!((err.field(), err.reason()), ("scope", "must start with '/'"));
    /// ```
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} configuration: {} {}",
            self.component, self.field, self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

/// Checks that build a [`ConfigError`] for one component.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checks(pub(crate) &'static str);

impl Checks {
    /// `Err` naming `field` with `reason` unless `ok`.
    pub(crate) fn require(
        self,
        ok: bool,
        field: &'static str,
        reason: &'static str,
    ) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(ConfigError::new(self.0, field, reason))
        }
    }

    /// A duration that must not be zero.
    pub(crate) fn positive(
        self,
        d: std::time::Duration,
        field: &'static str,
    ) -> Result<(), ConfigError> {
        self.require(!d.is_zero(), field, "must not be zero")
    }

    /// A count that must be at least 1.
    pub(crate) fn at_least_one(self, n: usize, field: &'static str) -> Result<(), ConfigError> {
        self.require(n > 0, field, "must be at least 1")
    }
}
