//! What a forwarded request and its response lose and gain on the way (hop-by-hop headers,
//! origin-form URI, HTTP/1.1), and how a request that did not go out is given back as it came.

use std::mem;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};

use super::body::OutBody;
use crate::BoxError;
use crate::protocol::headers::MCP_FORWARDED_BY;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// non-standard `Keep-Alive` and `Proxy-Connection`.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// What [`prepare`] changed, for [`restore`].
pub(super) struct Undo {
    /// The original URI, when it was not in origin form.
    uri: Option<Uri>,
    version: Version,
    /// The hop-by-hop headers removed, values in order.
    removed: HeaderMap,
    /// Whether `Host` was added from the URI's authority.
    added_host: bool,
}

/// The request as it goes to the peer: hop-by-hop headers removed, `Host` from the authority if
/// missing, origin-form URI, HTTP/1.1, the body erased.
pub(super) fn prepare<B>(req: Request<B>) -> (Request<OutBody>, Undo)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let mut removed = HeaderMap::new();
    strip_hop_by_hop(&mut parts.headers, Some(&mut removed));
    let mut added_host = false;
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        // `user@host` is not a `Host`.
        && let Some(host) = authority.as_str().rsplit('@').next()
        && let Ok(value) = HeaderValue::from_str(host)
    {
        added_host = matches!(parts.headers.try_insert(header::HOST, value), Ok(None));
    }
    let uri = if parts.uri.scheme().is_none() && parts.uri.authority().is_none() {
        None
    } else {
        let origin_form = match parts.uri.path_and_query() {
            Some(path_and_query) => Uri::from(path_and_query.clone()),
            None => Uri::from_static("/"),
        };
        Some(mem::replace(&mut parts.uri, origin_form))
    };
    let version = mem::replace(&mut parts.version, Version::HTTP_11);
    let undo = Undo {
        uri,
        version,
        removed,
        added_host,
    };
    (Request::from_parts(parts, OutBody::new(body)), undo)
}

/// The request as the caller gave it to [`prepare`], or an error if its body had started going
/// out (it cannot be given back then).
pub(super) fn restore<B: 'static>(
    req: Request<OutBody>,
    undo: Undo,
) -> Result<Request<B>, BoxError> {
    let (mut parts, body) = req.into_parts();
    let body = body
        .into_inner::<B>()
        .ok_or("the request body had started going out")?;
    if let Some(uri) = undo.uri {
        parts.uri = uri;
    }
    parts.version = undo.version;
    if undo.added_host {
        parts.headers.remove(header::HOST);
    }
    for (name, value) in &undo.removed {
        // Cannot reach the map's limit: these were in it a moment ago.
        let _ = parts.headers.try_append(name, value.clone());
    }
    Ok(Request::from_parts(parts, body))
}

/// Removes the hop-by-hop headers from `headers`: the fixed set and every header `Connection`
/// names, except `Mcp-Forwarded-By` (a client naming it must not hide that a request was
/// forwarded). The values removed go to `removed` when given.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, mut removed: Option<&mut HeaderMap>) {
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes())
                && name != MCP_FORWARDED_BY
                && !HOP_BY_HOP.contains(&name)
            {
                named.push(name);
            }
        }
    }
    for name in HOP_BY_HOP.iter().chain(&named) {
        if !headers.contains_key(name) {
            continue;
        }
        if let Some(removed) = removed.as_deref_mut() {
            for value in headers.get_all(name) {
                let _ = removed.try_append(name, value.clone());
            }
        }
        headers.remove(name);
    }
}
