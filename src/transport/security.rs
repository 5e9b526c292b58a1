//! The Host and Origin checks (DNS-rebinding protection) and the principal binding.

use http::{header, request::Parts};

use super::layer::Shared;
use crate::{
    protocol::{Refusal, Rejection, RejectionKind, codes},
    session::Session,
};

pub(super) fn check_security(shared: &Shared, parts: &Parts) -> Result<(), Rejection> {
    let cfg = &shared.config;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    if !cfg.hosts.is_any() && !cfg.hosts.allows(host) {
        tracing::warn!("request with a Host header not allowed (DNS-rebinding protection)");
        return Err(Rejection::new(
            RejectionKind::HostNotAllowed,
            codes::INVALID_REQUEST,
            "host not allowed",
        )
        .with_refusal(Refusal::Host));
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| cfg.origins.allows(o, host));
        if !ok {
            tracing::warn!("request with an Origin not allowed");
            return Err(Rejection::new(
                RejectionKind::OriginNotAllowed,
                codes::INVALID_REQUEST,
                "origin not allowed",
            )
            .with_refusal(Refusal::Origin));
        }
    }
    Ok(())
}

/// Whether the request's principal may use `session`: any may without a
/// [principal extractor](super::PrincipalExtractor), else only the one the session is bound to.
pub(super) fn principal_allowed(shared: &Shared, parts: &Parts, session: &Session) -> bool {
    match &shared.config.principal {
        Some(extractor) => session.principal_matches(extractor.principal(parts).as_deref()),
        None => true,
    }
}

/// What a new session is bound to: the digest of the request's principal, never the
/// principal itself (`None` without a principal extractor).
pub(super) fn principal_binding(shared: &Shared, parts: &Parts) -> Option<Box<str>> {
    let extractor = shared.config.principal.as_ref()?;
    extractor
        .principal(parts)
        .map(|p| crate::session::principal_digest(&p).into_boxed_str())
}
