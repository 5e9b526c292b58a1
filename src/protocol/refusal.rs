//! Why a layer refused a request for who sent it rather than for what it names.

/// A request refused because of *who* sent it (its `Origin`, its `Host`, its principal), not
/// because of the session it names: the session, if any, was not touched.
///
/// The transport puts it into the response extensions of such refusals (next to the
/// [`Rejection`](super::Rejection)), so outer layers can tell them apart from a session that
/// does not exist here. That matters where the status cannot: a principal mismatch answers the
/// same `404` as an unknown session id. The session registry reads it so that a refused
/// `DELETE` removes no record and a refused request ends no session.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use mcp_affinity::protocol::{codes, Refusal, Rejection, RejectionKind};
///
/// let res = Rejection::new(RejectionKind::SessionNotFound, codes::SESSION_NOT_FOUND, "session not found")
///     .with_refusal(Refusal::Principal)
///     .into_response(|b| b);
/// assert_eq!(res.status(), StatusCode::NOT_FOUND);
/// assert_eq!(res.extensions().get::<Refusal>(), Some(&Refusal::Principal));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// The `Origin` header is not allowed (`403`).
    Origin,
    /// The `Host` header is not allowed (DNS-rebinding protection, `421`).
    Host,
    /// The session belongs to another principal (`404`, like an unknown id).
    Principal,
}

impl Refusal {
    /// Whether a response is such a refusal: it carries a [`Refusal`], or its status is one no
    /// session lookup answers (`401`, `403`, `421`), so an inner service that does not mark its
    /// refusals is still understood.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::Refusal;
    ///
    /// let mut res = http::Response::new(());
    /// *res.status_mut() = http::StatusCode::NOT_FOUND;
    /// assert!(!Refusal::is_refused(&res));
    /// res.extensions_mut().insert(Refusal::Principal);
    /// assert!(Refusal::is_refused(&res));
    /// *res.status_mut() = http::StatusCode::FORBIDDEN;
    /// res.extensions_mut().clear();
    /// assert!(Refusal::is_refused(&res));
    /// ```
    pub fn is_refused<B>(res: &http::Response<B>) -> bool {
        use http::StatusCode;
        matches!(
            res.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::MISDIRECTED_REQUEST
        ) || res.extensions().get::<Self>().is_some()
    }
}
