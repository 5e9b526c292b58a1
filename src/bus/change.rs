//! The change feed: what a server announces to every client that asked for it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A change of the server's lists or resources, published once on the
/// [`ClusterBus`](super::ClusterBus) and delivered on every node: to every legacy session (list
/// changes on its standalone stream; `resources/updated` only to the sessions
/// [subscribed](crate::session::Session::subscribe_resource) to the URI) and to every local
/// [`changes`](super::ClusterBus::changes) receiver, which modern `subscriptions/listen`
/// handlers filter.
///
/// # Example
///
/// ```
/// use mcp_affinity::bus::Change;
///
/// assert_eq!(Change::ToolsListChanged.method(), "notifications/tools/list_changed");
/// let updated = Change::resource_updated("file:///a");
/// assert_eq!(updated.method(), "notifications/resources/updated");
/// assert_eq!(updated.params().unwrap()["uri"], "file:///a");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Change {
    /// `notifications/tools/list_changed`.
    #[serde(rename = "t")]
    ToolsListChanged,
    /// `notifications/prompts/list_changed`.
    #[serde(rename = "p")]
    PromptsListChanged,
    /// `notifications/resources/list_changed`.
    #[serde(rename = "r")]
    ResourcesListChanged,
    /// `notifications/resources/updated` for one URI.
    #[serde(rename = "u")]
    ResourceUpdated {
        /// The resource that changed.
        uri: String,
    },
}

impl Change {
    /// A [`Change::ResourceUpdated`] for `uri`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::bus::Change;
    ///
    /// assert_eq!(Change::resource_updated("file:///a").uri(), Some("file:///a"));
    /// ```
    pub fn resource_updated(uri: impl Into<String>) -> Self {
        Self::ResourceUpdated { uri: uri.into() }
    }

    /// The notification's method.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::bus::Change;
    ///
    /// assert_eq!(Change::PromptsListChanged.method(), "notifications/prompts/list_changed");
    /// ```
    pub fn method(&self) -> &'static str {
        match self {
            Self::ToolsListChanged => "notifications/tools/list_changed",
            Self::PromptsListChanged => "notifications/prompts/list_changed",
            Self::ResourcesListChanged => "notifications/resources/list_changed",
            Self::ResourceUpdated { .. } => "notifications/resources/updated",
        }
    }

    /// The notification's params: `{"uri": …}` for a resource update, none for a list change.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::bus::Change;
    ///
    /// assert_eq!(Change::ToolsListChanged.params(), None);
    /// ```
    pub fn params(&self) -> Option<Value> {
        match self {
            Self::ResourceUpdated { uri } => Some(json!({ "uri": uri })),
            _ => None,
        }
    }

    /// The resource URI of a [`Change::ResourceUpdated`].
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::bus::Change;
    ///
    /// assert_eq!(Change::ToolsListChanged.uri(), None);
    /// ```
    pub fn uri(&self) -> Option<&str> {
        match self {
            Self::ResourceUpdated { uri } => Some(uri),
            _ => None,
        }
    }
}
