//! The request body type the pool's connections carry: any caller body, erased, and given back
//! as its own type while it has not started going out.

use std::any::Any;
use std::fmt;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;

/// A caller's request body behind one type, so one pool serves every body type.
///
/// Until its first frame is asked for, the body stays as it was given (boxed, not pinned) and
/// [`into_inner`](Self::into_inner) gives it back: a request hyper returns unsent still has its
/// body untouched.
pub(crate) struct OutBody(Box<dyn Erased>);

impl fmt::Debug for OutBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutBody")
            .field("size_hint", &self.0.size_hint())
            .finish_non_exhaustive()
    }
}

impl OutBody {
    pub(crate) fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self(Box::new(Slot::Unread(Box::new(body))))
    }

    /// The body as given to [`new`](Self::new), if no frame of it was asked for and `B` is its
    /// type.
    pub(crate) fn into_inner<B: 'static>(mut self) -> Option<B> {
        self.0.take_unread()?.downcast::<B>().ok().map(|body| *body)
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().0.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// [`Body`] as an object-safe trait with a way back to the concrete type.
trait Erased: Send {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    fn is_end_stream(&self) -> bool;
    fn size_hint(&self) -> SizeHint;
    /// The body, boxed as `Box<B>`, if it was never polled.
    fn take_unread(&mut self) -> Option<Box<dyn Any + Send>>;
}

/// A body not polled yet (movable, so it can be given back) or being read (pinned, in place).
enum Slot<B> {
    Unread(Box<B>),
    Reading(Pin<Box<B>>),
    Taken,
}

impl<B> Erased for Slot<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if matches!(self, Self::Unread(_))
            && let Self::Unread(body) = mem::replace(self, Self::Taken)
        {
            *self = Self::Reading(Box::into_pin(body));
        }
        match self {
            Self::Reading(body) => body
                .as_mut()
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(Into::into))),
            Self::Unread(_) | Self::Taken => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Unread(body) => body.is_end_stream(),
            Self::Reading(body) => body.is_end_stream(),
            Self::Taken => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Unread(body) => body.size_hint(),
            Self::Reading(body) => body.size_hint(),
            Self::Taken => SizeHint::with_exact(0),
        }
    }

    fn take_unread(&mut self) -> Option<Box<dyn Any + Send>> {
        match mem::replace(self, Self::Taken) {
            Self::Unread(body) => Some(body),
            other => {
                *self = other;
                None
            }
        }
    }
}
