use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::full_body::FullBytes;

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
    data: FullBytes,
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
            data: FullBytes::new(data),
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
        self.data.poll_frame()
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.data.size_hint()
    }
}
