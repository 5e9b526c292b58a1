//! The one-chunk body each layer's own responses carry (a JSON document, or nothing), and the
//! body of a layer that passes the inner service's body on or answers with its own.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// Bytes sent as one data frame; empty once sent, and an empty body sends no frame.
///
/// A bare `Bytes` rather than `Option<Bytes>`: `Bytes` has one spare niche, so the transport's
/// body (this or a boxed SSE stream) is the size of `Bytes` alone. The registry's and
/// affinity's bodies, which wrap that one, need a tag of their own. `Response<_>` is moved by
/// value through every layer's future, so its size counts (see the test below).
#[derive(Debug, Default, Clone)]
pub(crate) struct FullBytes(Bytes);

impl FullBytes {
    pub(crate) const fn new(data: Bytes) -> Self {
        Self(data)
    }

    /// The data frame, once; then the end of the body.
    pub(crate) fn poll_frame<E>(&mut self) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        Poll::Ready((!self.0.is_empty()).then(|| Ok(Frame::data(std::mem::take(&mut self.0)))))
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.len() as u64)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

pin_project! {
    /// The inner service's body, passed through, or a layer's own one-chunk answer: the body
    /// of the registry's and the affinity layer's responses.
    #[project = InnerOrFullProj]
    pub(crate) enum InnerOrFull<B> {
        Inner { #[pin] body: B },
        Full { data: FullBytes },
    }
}

impl<B> InnerOrFull<B> {
    pub(crate) const fn inner(body: B) -> Self {
        Self::Inner { body }
    }

    pub(crate) const fn full(data: Bytes) -> Self {
        Self::Full {
            data: FullBytes::new(data),
        }
    }

    /// The length of a layer's own answer; `None` for the inner service's body.
    pub(crate) fn full_len(&self) -> Option<usize> {
        match self {
            Self::Inner { .. } => None,
            Self::Full { data } => Some(data.len()),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for InnerOrFull<B> {
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            InnerOrFullProj::Inner { body } => body.poll_frame(cx),
            InnerOrFullProj::Full { data } => data.poll_frame(),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner { body } => body.is_end_stream(),
            Self::Full { data } => data.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner { body } => body.size_hint(),
            Self::Full { data } => data.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    #[test]
    fn sends_its_bytes_once_then_ends() {
        let mut b = FullBytes::new(Bytes::from_static(b"{}"));
        assert!(!b.is_end_stream());
        assert_eq!(b.size_hint().exact(), Some(2));
        let Poll::Ready(Some(Ok(frame))) = b.poll_frame::<Infallible>() else {
            panic!("expected the data frame");
        };
        assert_eq!(frame.into_data().unwrap(), "{}");
        assert!(b.is_end_stream());
        assert_eq!(b.size_hint().exact(), Some(0));
        assert!(matches!(b.poll_frame::<Infallible>(), Poll::Ready(None)));
    }

    // What the bodies' layout is for: a response through all three layers stays small (on
    // 64-bit targets; 256 bytes when the SSE stream was held inline).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn responses_through_the_layers_stay_small() {
        use std::mem::size_of;
        type Transport = crate::transport::ResponseBody;
        type Layered = crate::affinity::ResponseBody<crate::registry::ResponseBody<Transport>>;
        assert_eq!(size_of::<Transport>(), size_of::<Bytes>());
        assert!(size_of::<http::Response<Layered>>() <= 152);
    }

    #[test]
    fn an_empty_body_sends_no_frame() {
        let mut b = FullBytes::default();
        assert!(b.is_end_stream());
        assert!(matches!(b.poll_frame::<Infallible>(), Poll::Ready(None)));
    }
}
