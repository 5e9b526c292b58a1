//! Configuration of the affinity layer: scope, cookie attributes, modes, and its errors.

use std::{fmt, time::Duration};

use http::HeaderValue;

use crate::session::NodeTag;

/// The default scope (path prefix) and cookie path.
pub(crate) const DEFAULT_SCOPE: &str = "/mcp";
/// The ADR's cookie name.
pub(crate) const DEFAULT_COOKIE_NAME: &str = "_mcp_backend";
/// The longest cookie name accepted.
const MAX_COOKIE_NAME_LEN: usize = 64;
/// The longest scope or cookie path accepted.
const MAX_PATH_LEN: usize = 1024;

/// The `SameSite` attribute of the affinity cookie.
///
/// The default is [`Strict`](SameSite::Strict), as the ADR asks.
///
/// # Example
///
/// ```
/// use mcp_affinity::affinity::SameSite;
///
/// assert_eq!(SameSite::default(), SameSite::Strict);
/// assert_eq!(SameSite::Lax.as_str(), "Lax");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SameSite {
    /// `SameSite=Strict`: the browser sends the cookie only on same-site requests.
    #[default]
    Strict,
    /// `SameSite=Lax`: also sent on top-level cross-site navigations.
    Lax,
    /// `SameSite=None`: sent on every request, cross-site included. Browsers accept it only
    /// together with `Secure`.
    None,
}

impl SameSite {
    /// The attribute value as it appears in `Set-Cookie`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::SameSite;
    ///
    /// assert_eq!(SameSite::Strict.as_str(), "Strict");
    /// assert_eq!(SameSite::None.to_string(), "None");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Strict => "Strict",
            Self::Lax => "Lax",
            Self::None => "None",
        }
    }
}

impl fmt::Display for SameSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub use crate::config::ConfigError;

fn invalid(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::new("affinity", field, reason)
}

/// The layer's settings, validated by `SessionAffinityBuilder::build`.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) tag: NodeTag,
    pub(crate) scope: Box<str>,
    pub(crate) cookie_name: Box<str>,
    /// `None`: follows the scope.
    pub(crate) cookie_path: Option<Box<str>>,
    pub(crate) cookie_secure: bool,
    pub(crate) cookie_http_only: bool,
    pub(crate) cookie_same_site: SameSite,
    pub(crate) cookie_max_age: Option<Duration>,
    pub(crate) envelope: bool,
    pub(crate) strict: bool,
}

impl Config {
    pub(crate) fn new(tag: NodeTag) -> Self {
        Self {
            tag,
            scope: DEFAULT_SCOPE.into(),
            cookie_name: DEFAULT_COOKIE_NAME.into(),
            cookie_path: None,
            cookie_secure: true,
            cookie_http_only: true,
            cookie_same_site: SameSite::Strict,
            cookie_max_age: None,
            envelope: false,
            strict: false,
        }
    }

    /// The checks across settings (each string was parsed already).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(age) = self.cookie_max_age
            && (age < Duration::from_secs(1) || age.subsec_nanos() != 0)
        {
            return Err(invalid(
                "cookie_max_age",
                "must be a whole number of seconds, at least 1",
            ));
        }
        if self.cookie_same_site == SameSite::None && !self.cookie_secure {
            return Err(invalid(
                "cookie_same_site",
                "None needs a Secure cookie (browsers reject it otherwise)",
            ));
        }
        let name = &*self.cookie_name;
        let has_prefix = |p: &str| name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p);
        if (has_prefix("__Secure-") || has_prefix("__Host-")) && !self.cookie_secure {
            return Err(invalid(
                "cookie_name",
                "with a __Secure- or __Host- prefix needs a Secure cookie",
            ));
        }
        if has_prefix("__Host-") && self.cookie_path() != "/" {
            return Err(invalid(
                "cookie_name",
                "with a __Host- prefix needs the cookie path /",
            ));
        }
        Ok(())
    }

    pub(crate) fn cookie_path(&self) -> &str {
        self.cookie_path.as_deref().unwrap_or(&self.scope)
    }

    /// The `Set-Cookie` value, in the ADR's attribute order:
    /// `<name>=<tag>; Path=<path>; HttpOnly; Secure; SameSite=<s>[; Max-Age=<secs>]`.
    pub(crate) fn set_cookie_string(&self) -> String {
        let mut s = format!(
            "{}={}; Path={}",
            self.cookie_name,
            self.tag.as_str(),
            self.cookie_path()
        );
        if self.cookie_http_only {
            s.push_str("; HttpOnly");
        }
        if self.cookie_secure {
            s.push_str("; Secure");
        }
        s.push_str("; SameSite=");
        s.push_str(self.cookie_same_site.as_str());
        if let Some(age) = self.cookie_max_age {
            s.push_str("; Max-Age=");
            s.push_str(&age.as_secs().to_string());
        }
        s
    }

    /// The `Set-Cookie` header value. Every part was validated by the setters (a token name,
    /// a path of visible ASCII without `;`, a node tag), so this is `None` only if that
    /// validation is ever broken.
    pub(crate) fn set_cookie_header(&self) -> Option<HeaderValue> {
        HeaderValue::try_from(self.set_cookie_string()).ok()
    }
}

/// Validates a scope prefix and normalizes it (a trailing `/` is dropped, except for `/`).
pub(crate) fn parse_scope(prefix: &str) -> Result<Box<str>, ConfigError> {
    let p = validate_path("scope", prefix)?;
    let trimmed = p.trim_end_matches('/');
    Ok(if trimmed.is_empty() { "/" } else { trimmed }.into())
}

/// Validates a cookie `Path` attribute.
pub(crate) fn parse_cookie_path(path: &str) -> Result<Box<str>, ConfigError> {
    validate_path("cookie_path", path).map(Into::into)
}

fn validate_path<'a>(field: &'static str, p: &'a str) -> Result<&'a str, ConfigError> {
    if !p.starts_with('/') {
        return Err(invalid(field, "must start with '/'"));
    }
    if p.len() > MAX_PATH_LEN {
        return Err(invalid(field, "is too long"));
    }
    // Visible ASCII only; `;` would end a cookie attribute, `?` and `#` are not path parts.
    if !p
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b';' | b',' | b'?' | b'#'))
    {
        return Err(invalid(
            field,
            "must be visible ASCII without spaces, ';', ',', '?' or '#'",
        ));
    }
    Ok(p)
}

/// Validates a cookie name: 1–64 HTTP token characters (RFC 9110 `tchar`).
pub(crate) fn parse_cookie_name(name: &str) -> Result<Box<str>, ConfigError> {
    if name.is_empty() || name.len() > MAX_COOKIE_NAME_LEN {
        return Err(invalid("cookie_name", "must be 1 to 64 characters"));
    }
    if !name.bytes().all(is_tchar) {
        return Err(invalid("cookie_name", "must contain only token characters"));
    }
    Ok(name.into())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(&*parse_scope("/mcp").unwrap(), "/mcp");
        assert_eq!(&*parse_scope("/mcp/").unwrap(), "/mcp");
        assert_eq!(&*parse_scope("/").unwrap(), "/");
        assert_eq!(&*parse_scope("//").unwrap(), "/");
        assert_eq!(parse_scope("mcp").unwrap_err().field(), "scope");
        assert!(parse_scope("/m cp").is_err());
        assert!(parse_scope("/mcp;x").is_err());
        assert!(parse_scope("/mcp?x").is_err());
        assert!(parse_scope("").is_err());
    }

    #[test]
    fn cookie_names() {
        assert!(parse_cookie_name("_mcp_backend").is_ok());
        assert!(parse_cookie_name("__Host-x").is_ok());
        assert!(parse_cookie_name("").is_err());
        assert!(parse_cookie_name("a=b").is_err());
        assert!(parse_cookie_name("a b").is_err());
        assert!(parse_cookie_name("a;b").is_err());
        assert!(parse_cookie_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn default_cookie() {
        let c = Config::new(NodeTag::new("n1").unwrap());
        assert_eq!(
            c.set_cookie_string(),
            "_mcp_backend=n1; Path=/mcp; HttpOnly; Secure; SameSite=Strict"
        );
        assert!(c.set_cookie_header().is_some());
    }
}
