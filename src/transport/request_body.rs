use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// The request body handlers receive: the client's JSON-RPC message, already read (and
/// size-checked) by the transport. The parsed [`Message`](crate::protocol::Message) is in the
/// request extensions too.
///
/// # Example
///
/// ```
/// use http_body_util::BodyExt;
/// use mcp_affinity::transport::RequestBody;
///
/// # async fn f() {
/// let body = RequestBody::new(bytes::Bytes::from_static(b"{}"));
/// assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
/// # }
/// ```
#[derive(Debug, Default, Clone)]
pub struct RequestBody {
    data: Option<Bytes>,
}

impl RequestBody {
    /// A body of these bytes.
    ///
    /// # Example
    ///
    /// ```
    /// use http_body::Body;
    /// use mcp_affinity::transport::RequestBody;
    ///
    /// assert_eq!(RequestBody::new(bytes::Bytes::from_static(b"{}")).size_hint().exact(), Some(2));
    /// assert!(RequestBody::new(bytes::Bytes::new()).is_end_stream());
    /// ```
    pub fn new(data: Bytes) -> Self {
        Self {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
