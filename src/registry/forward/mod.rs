//! Forwarding a request to the live node that owns its session (feature `forward`).
//!
//! [`Forwarder`] sends an HTTP request to a peer node over HTTP/1.1 and hands back the peer's
//! response as it streams: the request body is streamed to the peer, the response body (an SSE
//! stream that never ends on its own included) frame by frame back. Hop-by-hop headers are
//! removed both ways; every end-to-end header is kept as it is.
//!
//! Connections come from a small pool of its own over hyper's low-level client, keyed by the
//! peer's address: `TCP_NODELAY`, a connect timeout, a bounded number of idle connections per peer,
//! idle ones dropped once they have been idle for the idle timeout (noticed lazily, on the next
//! forward). HTTP/1.1 carries one exchange at a time, so a connection whose response body is
//! still streaming belongs to that body ([`PeerBody`]) and is never handed out; it goes back to
//! the pool when the body ends and is closed when the body is dropped before its end, which the
//! peer sees as the end of its stream. Nothing in the pool is scanned per request: the few
//! connections it holds are idle, and expire oldest first.

mod body;
mod peer_body;
mod pool;
mod rewrite;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::BoxError;

use body::OutBody;
pub(crate) use peer_body::PeerBody;
use pool::Pool;
use rewrite::Undo;

/// One side of a pooled connection: the handle requests are sent through.
type Sender = SendRequest<OutBody>;

/// Sends requests to peer nodes over HTTP/1.1, with a pool of connections per peer.
///
/// Clones share the pool.
#[derive(Clone)]
pub(crate) struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    connect_timeout: Duration,
    pool: Pool,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("max_idle_per_peer", &self.inner.pool.max_idle())
            .field("idle_timeout", &self.inner.pool.idle_timeout())
            .finish()
    }
}

/// Why a request was not forwarded.
#[allow(
    clippy::large_enum_variant,
    reason = "the request comes back by value, on a path taken when forwarding failed"
)]
pub(crate) enum ForwardError<B> {
    /// No connection could be made (refused, unreachable, connect timeout) or a pooled connection
    /// was closed before the request went out: the request comes back untouched, so the caller
    /// can serve it another way.
    NotSent(Request<B>, BoxError),
    /// The request was sent and the exchange failed (the peer died mid-request, a protocol error).
    Failed(BoxError),
}

impl<B> ForwardError<B> {
    /// The underlying error.
    pub(crate) fn error(&self) -> &BoxError {
        match self {
            Self::NotSent(_, err) | Self::Failed(err) => err,
        }
    }
}

impl<B> fmt::Debug for ForwardError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSent(req, err) => f
                .debug_struct("NotSent")
                .field("method", req.method())
                .field("uri", req.uri())
                .field("error", err)
                .finish(),
            Self::Failed(err) => f.debug_tuple("Failed").field(err).finish(),
        }
    }
}

impl<B> fmt::Display for ForwardError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSent(_, err) => write!(f, "request not forwarded: {err}"),
            Self::Failed(err) => write!(f, "forwarded exchange failed: {err}"),
        }
    }
}

impl<B> std::error::Error for ForwardError<B> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&**self.error())
    }
}

impl Forwarder {
    /// A forwarder that connects within `connect_timeout` (TCP connect and HTTP/1.1 handshake),
    /// keeps at most `max_idle_per_peer` idle connections per peer (`0`: none, every request
    /// gets a connection of its own) and drops an idle connection once it has been idle for
    /// `idle_timeout`.
    ///
    /// `idle_timeout` should be shorter than the peer's own keep-alive timeout, if it has one:
    /// a request sent on a connection the peer is closing at that moment fails
    /// ([`ForwardError::Failed`]), since it cannot be told from one the peer received.
    pub(crate) fn new(
        connect_timeout: Duration,
        max_idle_per_peer: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                connect_timeout,
                pool: Pool::new(max_idle_per_peer, idle_timeout),
            }),
        }
    }

    /// Sends `req` to `peer` over HTTP/1.1 and returns the owner's response as it streams.
    ///
    /// The request goes out in origin form (the path and query of its URI) as HTTP/1.1, with
    /// its hop-by-hop headers removed (`Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`,
    /// `Trailer`, `Transfer-Encoding`, `Upgrade` and every header `Connection` names, except
    /// `Mcp-Forwarded-By`) and a `Host` taken from the URI's authority when it has none (a
    /// request that arrived over HTTP/2). The response's hop-by-hop headers are removed too.
    ///
    /// A pooled connection that turns out closed before the request went out is replaced by a
    /// new one, once. The response arrives when the peer sends its head; there is no timeout on
    /// it here (the caller bounds the exchange). Dropping the response body before its end
    /// closes the connection.
    pub(crate) async fn forward<B>(
        &self,
        peer: SocketAddr,
        req: Request<B>,
    ) -> Result<Response<PeerBody>, ForwardError<B>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let pooled = self.inner.pool.checkout(peer, Instant::now());
        self.send(peer, pooled, req).await
    }

    /// [`forward`](Self::forward) on `pooled` if given, else (or when it turns out closed before
    /// the request went out) on a new connection.
    async fn send<B>(
        &self,
        peer: SocketAddr,
        pooled: Option<Sender>,
        req: Request<B>,
    ) -> Result<Response<PeerBody>, ForwardError<B>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut req, undo) = rewrite::prepare(req);
        if let Some(mut sender) = pooled {
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(self.finish(peer, sender, res)),
                Err(mut err) => match err.take_message() {
                    Some(back) => {
                        tracing::debug!(%peer, err = %err.error(), "forward: pooled connection closed before the request went out; retrying on a new one");
                        req = back;
                    }
                    None => return Err(ForwardError::Failed(err.into_error().into())),
                },
            }
        }
        // Boxed: a new connection is the rare case, and its future is most of this one's size.
        let mut sender = match Box::pin(self.connect(peer)).await {
            Ok(sender) => sender,
            Err(err) => {
                tracing::debug!(%peer, %err, "forward: no connection");
                return Err(not_sent(req, undo, err));
            }
        };
        match sender.try_send_request(req).await {
            Ok(res) => Ok(self.finish(peer, sender, res)),
            Err(mut err) => match err.take_message() {
                Some(back) => Err(not_sent(back, undo, err.into_error().into())),
                None => Err(ForwardError::Failed(err.into_error().into())),
            },
        }
    }

    /// The response head arrived: the body takes the connection (it goes back to the pool when
    /// the body ends) and the response loses its hop-by-hop headers.
    fn finish(
        &self,
        peer: SocketAddr,
        sender: Sender,
        res: Response<Incoming>,
    ) -> Response<PeerBody> {
        let (mut parts, body) = res.into_parts();
        rewrite::strip_hop_by_hop(&mut parts.headers, None);
        let body = PeerBody::new(body, sender, Arc::clone(&self.inner), peer);
        Response::from_parts(parts, body)
    }

    /// A new connection to `peer`, ready for a request, within the connect timeout. Its
    /// connection task runs until the connection closes.
    async fn connect(&self, peer: SocketAddr) -> Result<Sender, BoxError> {
        let connect = async {
            let stream = TcpStream::connect(peer).await?;
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(%peer, %err, "forward: TCP_NODELAY not set");
            }
            let (mut sender, conn) = http1::Builder::new()
                .handshake::<_, OutBody>(TokioIo::new(stream))
                .await?;
            let span = tracing::debug_span!("forward_connection", %peer);
            tokio::spawn(
                async move {
                    if let Err(err) = conn.await {
                        tracing::debug!(%err, "forward: connection ended with an error");
                    }
                }
                .instrument(span),
            );
            // A peer that closes at once fails here, before the request was given away.
            sender.ready().await?;
            Ok::<_, BoxError>(sender)
        };
        match tokio::time::timeout(self.inner.connect_timeout, connect).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out").into()),
        }
    }

    /// How many idle connections the pool holds for `peer` at `now`, after moving finished
    /// exchanges to idle and dropping closed, expired and surplus ones.
    #[cfg(test)]
    fn settle(&self, peer: SocketAddr, now: Instant) -> usize {
        self.inner.pool.settle(peer, now)
    }
}

/// `NotSent` with the request as the caller gave it, or `Failed` if its body cannot be given
/// back (it had started going out).
fn not_sent<B: 'static>(req: Request<OutBody>, undo: Undo, err: BoxError) -> ForwardError<B> {
    match rewrite::restore(req, undo) {
        Ok(req) => ForwardError::NotSent(req, err),
        Err(lost) => {
            tracing::debug!(%lost, %err, "forward: request body not recoverable");
            ForwardError::Failed(err)
        }
    }
}
