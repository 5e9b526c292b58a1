use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::full_body::InnerOrFull;

pin_project! {
    /// The response body of [`SessionAffinity`](super::SessionAffinity): the inner service's
    /// body, untouched, or the JSON-RPC error body of a strict-mode `404`.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use http_body_util::Full;
    /// use mcp_affinity::affinity::ResponseBody;
    ///
    /// let body = ResponseBody::new(Full::new(Bytes::from_static(b"{}")));
    /// assert_eq!(body.size_hint().exact(), Some(2));
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        kind: InnerOrFull<B>,
    }
}

impl<B> ResponseBody<B> {
    /// Wraps an inner body; every frame is passed through.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http_body_util::BodyExt;
    /// use mcp_affinity::affinity::ResponseBody;
    ///
    /// let body = ResponseBody::new(String::from("inner bytes"));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "inner bytes");
    /// # }
    /// ```
    pub const fn new(body: B) -> Self {
        Self {
            kind: InnerOrFull::inner(body),
        }
    }

    /// A body of these bytes (empty bytes make an empty body).
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use mcp_affinity::affinity::ResponseBody;
    ///
    /// let body = ResponseBody::<String>::full(Bytes::from_static(b"{\"ok\":1}"));
    /// assert_eq!(body.size_hint().exact(), Some(8));
    /// assert!(ResponseBody::<String>::full(Bytes::new()).is_end_stream());
    /// ```
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: InnerOrFull::full(data),
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::full(Bytes::new())
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind.full_len() {
            None => f.debug_struct("ResponseBody").finish_non_exhaustive(),
            Some(len) => f.debug_struct("ResponseBody").field("len", &len).finish(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().kind.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
    }
}
