//! The peer's response body, which hands its connection back to the pool when it ends.

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::{Inner, Sender};

/// A forwarded response's body, as the peer sends it.
///
/// It holds its connection's request handle: HTTP/1.1 carries one exchange at a time, so the
/// connection is this body's until the body ends, and goes back to the pool then. Dropped
/// before its end, the body closes the connection (hyper's connection task ends when both the
/// body and the handle are gone), which the peer sees as the end of its stream.
pub(crate) struct PeerBody {
    body: Incoming,
    /// `None` once handed back, or given up after an error.
    sender: Option<Sender>,
    home: Arc<Inner>,
    peer: SocketAddr,
}

impl PeerBody {
    pub(super) fn new(body: Incoming, sender: Sender, home: Arc<Inner>, peer: SocketAddr) -> Self {
        Self {
            body,
            sender: Some(sender),
            home,
            peer,
        }
    }

    /// The body ended: its connection is free for the next exchange.
    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.home.pool.put(self.peer, sender, Instant::now());
        }
    }
}

impl fmt::Debug for PeerBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerBody")
            .field("peer", &self.peer)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl Body for PeerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if this.body.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            None => this.release(),
            Some(Err(_)) => this.sender = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PeerBody {
    fn drop(&mut self) {
        // Ended without its end being read here (an empty body is never polled): the
        // connection is still good.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}
