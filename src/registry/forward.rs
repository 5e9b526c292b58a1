//! Forwarding to the node that holds a session (feature `forward`).

use std::{net::SocketAddr, time::Duration};

use crate::BoxError;

/// The HTTP/1.1 client that forwards requests to peer nodes.
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {}

/// Why a forward failed.
pub(crate) enum ForwardError<B> {
    /// Nothing was sent: the request comes back untouched.
    NotSent(http::Request<B>, BoxError),
    /// The request was sent and the exchange failed.
    Failed(BoxError),
}

impl Forwarder {
    pub(crate) fn new(_connect: Duration, _idle: usize, _idle_timeout: Duration) -> Self {
        Self {}
    }

    pub(crate) async fn forward<B>(
        &self,
        _peer: SocketAddr,
        req: http::Request<B>,
    ) -> Result<http::Response<hyper::body::Incoming>, ForwardError<B>> {
        Err(ForwardError::NotSent(req, "not built".into()))
    }
}
