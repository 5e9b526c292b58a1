//! The `Host` and `Origin` readers of the DNS-rebinding protection (`HostPolicy`,
//! `OriginPolicy`): properties for any entry, host and origin.
//!
//! Input: `entry \0 host \0 origin` (lossy UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_affinity::transport::{HostPolicy, OriginPolicy};

fuzz_target!(|input: &[u8]| {
    let mut parts = input.splitn(3, |&b| b == 0).map(String::from_utf8_lossy);
    let entry = parts.next().unwrap_or_default();
    let host = parts.next().unwrap_or_default();
    let origin = parts.next().unwrap_or_default();
    hosts(&entry, &host);
    origins(&entry, &host, &origin);
});

/// `rest` is what may follow an allowed host name: nothing, or `:` and a port (RFC 9110
/// `uri-host [ ":" port ]`, `port = *DIGIT`).
fn is_port_suffix(rest: &str) -> bool {
    rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

fn hosts(entry: &str, host: &str) {
    let list = HostPolicy::list([entry]);
    // An entry allows itself, in any ASCII case.
    assert!(list.allows(entry), "{entry:?} allows itself");
    assert!(list.allows(&entry.to_ascii_uppercase()));
    // Matching ignores ASCII case, nothing else.
    let allowed = list.allows(host);
    assert_eq!(allowed, list.allows(&host.to_ascii_uppercase()), "{host:?}");
    assert_eq!(allowed, list.allows(&host.to_ascii_lowercase()), "{host:?}");
    // Allowed: the entry itself, or the entry's name with a port (when the entry has none).
    if allowed {
        let (h, e) = (host.to_ascii_lowercase(), entry.to_ascii_lowercase());
        assert!(
            h == e || h.strip_prefix(e.as_str()).is_some_and(is_port_suffix),
            "{entry:?} allows {host:?}"
        );
    }
    // A portless name allows every port.
    if !entry.is_empty() && !entry.contains([':', '[', ']']) {
        assert!(list.allows(&format!("{entry}:8080")), "{entry:?} on a port");
    }
    // The default list: only the loopback names, on any port.
    if HostPolicy::localhost().allows(host) {
        let h = host.to_ascii_lowercase();
        assert!(
            ["localhost", "127.0.0.1", "[::1]"]
                .iter()
                .any(|name| h.strip_prefix(name).is_some_and(is_port_suffix)),
            "localhost() allows {host:?}"
        );
    }
    assert!(HostPolicy::any().allows(host));
}

fn origins(entry: &str, host: &str, origin: &str) {
    // Same origin: `scheme://` and exactly the request's host (ASCII case ignored).
    if OriginPolicy::same_origin().allows(origin, host) {
        let authority = origin.split_once("://").map(|(_, a)| a);
        assert!(
            !host.is_empty() && authority.is_some_and(|a| a.eq_ignore_ascii_case(host)),
            "same_origin allows {origin:?} for host {host:?}"
        );
    }
    assert!(!OriginPolicy::same_origin().allows("null", host));
    // An added origin is allowed for any host, in any ASCII case; others are not made so.
    let listed = OriginPolicy::same_origin().allow(entry);
    assert!(listed.allows(entry, host));
    assert!(listed.allows(&entry.to_ascii_uppercase(), host));
    assert_eq!(
        listed.allows(origin, host),
        origin.eq_ignore_ascii_case(entry) || OriginPolicy::same_origin().allows(origin, host)
    );
    assert!(OriginPolicy::any().allows(origin, host));
}
