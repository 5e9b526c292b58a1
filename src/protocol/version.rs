//! MCP protocol revisions and the two eras they fall into.

use std::fmt;

/// A protocol revision this crate knows.
///
/// The legacy era (`2025-03-26`, `2025-06-18`, `2025-11-25`) has sessions; the modern era
/// (`2026-07-28`) is stateless.
///
/// # Example
///
/// ```
/// use mcp_affinity::protocol::{Era, ProtocolVersion};
///
/// let v = ProtocolVersion::parse("2025-11-25").unwrap();
/// assert_eq!(v.era(), Era::Legacy);
/// assert_eq!(v.as_str(), "2025-11-25");
/// assert_eq!(ProtocolVersion::parse("2026-07-28").unwrap().era(), Era::Modern);
/// assert!(ProtocolVersion::parse("1999-01-01").is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ProtocolVersion {
    /// `2025-03-26`: Streamable HTTP with sessions; batches allowed; no version header.
    V2025_03_26,
    /// `2025-06-18`: adds the `MCP-Protocol-Version` header, removes batches.
    V2025_06_18,
    /// `2025-11-25`: the last revision with sessions; SSE polling (SEP-1699), Origin → 403.
    V2025_11_25,
    /// `2026-07-28`: stateless, per-request `_meta`, no sessions.
    V2026_07_28,
}

/// The two eras of MCP Streamable HTTP.
///
/// # Example
///
/// ```
/// use mcp_affinity::protocol::Era;
/// assert_ne!(Era::Legacy, Era::Modern);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Era {
    /// Revisions up to `2025-11-25`: sessions, `initialize`, GET stream, DELETE, resumability.
    Legacy,
    /// Revision `2026-07-28` and later: stateless, POST only.
    Modern,
}

impl ProtocolVersion {
    /// Every revision this crate serves, oldest first.
    ///
    /// A slice, not an array: a release that adds a revision (the enum is
    /// `#[non_exhaustive]`) changes its length, not its type.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::ProtocolVersion;
    ///
    /// assert!(ProtocolVersion::ALL.len() >= 4);
    /// assert_eq!(ProtocolVersion::ALL[0].as_str(), "2025-03-26");
    /// assert!(ProtocolVersion::ALL.windows(2).all(|w| w[0] < w[1]));
    /// ```
    pub const ALL: &'static [Self] = &[
        Self::V2025_03_26,
        Self::V2025_06_18,
        Self::V2025_11_25,
        Self::V2026_07_28,
    ];

    /// The newest legacy (session) revision.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::{Era, ProtocolVersion};
    ///
    /// assert_eq!(ProtocolVersion::LATEST_LEGACY.as_str(), "2025-11-25");
    /// assert_eq!(ProtocolVersion::LATEST_LEGACY.era(), Era::Legacy);
    /// ```
    pub const LATEST_LEGACY: Self = Self::V2025_11_25;

    /// The newest modern (stateless) revision.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::{Era, ProtocolVersion};
    ///
    /// assert_eq!(ProtocolVersion::LATEST_MODERN.as_str(), "2026-07-28");
    /// assert_eq!(ProtocolVersion::LATEST_MODERN.era(), Era::Modern);
    /// ```
    pub const LATEST_MODERN: Self = Self::V2026_07_28;

    /// Parses a revision string; `None` for a revision this crate does not serve.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::ProtocolVersion;
    ///
    /// assert_eq!(ProtocolVersion::parse("2025-06-18"), Some(ProtocolVersion::V2025_06_18));
    /// assert_eq!(ProtocolVersion::parse("2025-6-18"), None);
    /// ```
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "2025-03-26" => Some(Self::V2025_03_26),
            "2025-06-18" => Some(Self::V2025_06_18),
            "2025-11-25" => Some(Self::V2025_11_25),
            "2026-07-28" => Some(Self::V2026_07_28),
            _ => None,
        }
    }

    /// The revision string, e.g. `"2025-11-25"`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::ProtocolVersion;
    ///
    /// assert_eq!(ProtocolVersion::V2025_03_26.as_str(), "2025-03-26");
    /// assert_eq!(ProtocolVersion::V2026_07_28.to_string(), "2026-07-28");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V2025_03_26 => "2025-03-26",
            Self::V2025_06_18 => "2025-06-18",
            Self::V2025_11_25 => "2025-11-25",
            Self::V2026_07_28 => "2026-07-28",
        }
    }

    /// The era this revision belongs to.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::{Era, ProtocolVersion};
    ///
    /// assert_eq!(ProtocolVersion::V2025_06_18.era(), Era::Legacy);
    /// assert_eq!(ProtocolVersion::V2026_07_28.era(), Era::Modern);
    /// ```
    pub const fn era(self) -> Era {
        match self {
            Self::V2026_07_28 => Era::Modern,
            _ => Era::Legacy,
        }
    }

    /// Whether JSON-RPC batches are allowed (only `2025-03-26`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::ProtocolVersion;
    ///
    /// assert!(ProtocolVersion::V2025_03_26.allows_batches());
    /// assert!(!ProtocolVersion::V2025_06_18.allows_batches());
    /// ```
    pub const fn allows_batches(self) -> bool {
        matches!(self, Self::V2025_03_26)
    }

    /// Whether SSE streams open with a priming event and `retry:` (SEP-1699, `2025-11-25`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::ProtocolVersion;
    ///
    /// assert!(ProtocolVersion::V2025_11_25.primes_streams());
    /// assert!(!ProtocolVersion::V2025_06_18.primes_streams());
    /// ```
    pub const fn primes_streams(self) -> bool {
        matches!(self, Self::V2025_11_25)
    }

    /// The revisions of one era, as strings (for `data.supported` in errors).
    pub(crate) fn supported_strings(era: Era) -> Vec<&'static str> {
        Self::ALL
            .iter()
            .filter(|v| v.era() == era)
            .map(|v| v.as_str())
            .collect()
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a revision string names the modern era even if this crate does not know it
/// (a date on or after `2026-07-28`).
pub(crate) fn is_modern_string(s: &str) -> bool {
    s.len() == 10
        && s.as_bytes()
            .iter()
            .all(|b| b.is_ascii_digit() || *b == b'-')
        && s >= "2026-07-28"
}
