//! Reading the affinity cookie from a request (never trusting or echoing it).

use http::{HeaderMap, header};

use crate::session::NodeTag;

/// A `Cookie` header line longer than this is not parsed at all.
pub(crate) const MAX_COOKIE_HEADER_BYTES: usize = 4096;

/// What a request's `Cookie` headers say about affinity.
///
/// Several affinity cookies may arrive (a browser sends one per matching `Path`/`Domain`,
/// HTTP/2 splits cookies over lines). They count only when every valid one names the same
/// node: when they disagree, a balancer in front may have followed any of them, so they
/// confirm no node (`here` and `other` stay unset) and the node sets its cookie again.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CookieView {
    /// The valid cookies name this node (and no other).
    pub(crate) here: bool,
    /// The valid cookies name this other node (and no other).
    pub(crate) other: Option<String>,
    /// Affinity cookies ignored: values that are not a node tag, and oversized or non-text
    /// header lines that mention the cookie's name.
    pub(crate) malformed: u64,
}

/// Reads every `Cookie` header line (HTTP/2 may split cookies over several).
pub(crate) fn read(headers: &HeaderMap, name: &str, here: &NodeTag) -> CookieView {
    let mut view = CookieView::default();
    let mut disagree = false;
    for line in headers.get_all(header::COOKIE) {
        let bytes = line.as_bytes();
        // Cheap filter: most lines carry only other cookies.
        if !contains(bytes, name.as_bytes()) {
            continue;
        }
        if bytes.len() > MAX_COOKIE_HEADER_BYTES {
            view.malformed += 1;
            continue;
        }
        let Ok(text) = line.to_str() else {
            view.malformed += 1;
            continue;
        };
        // Pieces that do not parse are someone else's business: skip them.
        for value in values_named(text, name) {
            if value == here.as_str() {
                view.here = true;
            } else if NodeTag::is_valid(value) {
                match &view.other {
                    None => view.other = Some(value.to_owned()),
                    Some(o) => disagree |= o != value,
                }
            } else {
                view.malformed += 1;
            }
        }
    }
    if disagree || (view.here && view.other.is_some()) {
        view.here = false;
        view.other = None;
    }
    view
}

/// The values of the cookies called `name` in one `Cookie` header line (RFC 6265 §4.2.1:
/// `name=value` pairs separated by `;` and optional whitespace; a value may be wrapped in
/// double quotes). Hand-written rather than `cookie::Cookie::split_parse`: this runs on every
/// request in scope, needs one name and no attributes, and the full parser costs several
/// times more (it builds a complete `Cookie` per pair).
fn values_named<'a>(line: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    line.split(';').filter_map(move |pair| {
        let (n, v) = pair.split_once('=')?;
        if n.trim_matches(is_ows) != name {
            return None;
        }
        let v = v.trim_matches(is_ows);
        Some(
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v),
        )
    })
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn view(lines: &[&[u8]]) -> CookieView {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(header::COOKIE, HeaderValue::from_bytes(l).unwrap());
        }
        read(&h, "_mcp_backend", &NodeTag::new("n1").unwrap())
    }

    #[test]
    fn reads_this_and_other_nodes() {
        assert_eq!(view(&[]), CookieView::default());
        assert!(view(&[b"a=1; _mcp_backend=n1"]).here);
        assert!(view(&[b"a=1", b"_mcp_backend=n1"]).here);
        // Cookies that disagree confirm no node.
        assert_eq!(
            view(&[b"_mcp_backend=n2; _mcp_backend=n1"]),
            CookieView::default()
        );
        assert_eq!(
            view(&[b"_mcp_backend=n1", b"_mcp_backend=n2"]),
            CookieView::default()
        );
        assert_eq!(
            view(&[b"_mcp_backend=n2; _mcp_backend=n3"]),
            CookieView::default()
        );
        let v = view(&[b"_mcp_backend=n2", b"_mcp_backend=n2"]);
        assert_eq!(v.other.as_deref(), Some("n2"));
        assert!(view(&[b"_mcp_backend=n1; _mcp_backend=n1"]).here);
        let v = view(&[b"_mcp_backend=n2"]);
        assert!(!v.here);
        assert_eq!(v.other.as_deref(), Some("n2"));
        // Another cookie whose name contains ours.
        assert_eq!(view(&[b"x_mcp_backend=n1"]), CookieView::default());
    }

    #[test]
    fn malformed_are_counted_not_trusted() {
        let v = view(&[b"_mcp_backend=; _mcp_backend=../x; _mcp_backend=a%3Bb"]);
        assert_eq!(
            v,
            CookieView {
                malformed: 3,
                ..Default::default()
            }
        );
        let long = format!("_mcp_backend={}", "a".repeat(33));
        assert_eq!(view(&[long.as_bytes()]).malformed, 1);
        let huge = format!("_mcp_backend=n1; pad={}", "x".repeat(5000));
        let v = view(&[huge.as_bytes()]);
        assert!(!v.here);
        assert_eq!(v.malformed, 1);
        let v = view(&[b"_mcp_backend=n1\xff"]);
        assert!(!v.here);
        assert_eq!(v.malformed, 1);
        // Unparseable pieces of other cookies are skipped.
        assert!(view(&[b"=; ;; _mcp_backend=n1"]).here);
        // Whitespace around pairs and a quoted value, as RFC 6265 allows.
        assert!(view(&[b"a=1 ;\t_mcp_backend = \"n1\" "]).here);
        assert_eq!(view(&[b"_mcp_backend=\"n1"]).malformed, 1);
    }
}
