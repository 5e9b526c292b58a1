use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::Response;
use pin_project_lite::pin_project;

use super::{
    ResponseBody,
    service::{Finish, misrouted_response},
};
use crate::protocol::Rejection;

pin_project! {
    /// Response future of [`SessionAffinity`](super::SessionAffinity).
    ///
    /// It polls the inner service's future and then adds the cookie, the envelope and the
    /// misroute hint to the response; a strict-mode `404` (or the `400` for a repeated
    /// singleton header) is ready at once.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{SessionAffinityLayer, affinity::ResponseFuture};
    /// use tower::{Layer, Service};
    ///
    /// let inner = tower::service_fn(|_req: http::Request<String>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// });
    /// let mut svc = SessionAffinityLayer::for_node("a").layer(inner);
    /// let future = svc.call(http::Request::new(String::new()));
    /// # fn is_response_future<F>(_: &ResponseFuture<F>) {}
    /// is_response_future(&future);
    /// ```
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        PassThrough { #[pin] future: F },
        Legacy { #[pin] future: F, finish: Option<Finish> },
        Rejected { finish: Option<Finish> },
        Refused { rejection: Option<Rejection> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn pass_through(future: F) -> Self {
        Self {
            kind: Kind::PassThrough { future },
        }
    }

    pub(crate) fn legacy(future: F, finish: Finish) -> Self {
        Self {
            kind: Kind::Legacy {
                future,
                finish: Some(finish),
            },
        }
    }

    pub(crate) fn refused(rejection: Rejection) -> Self {
        Self {
            kind: Kind::Refused {
                rejection: Some(rejection),
            },
        }
    }

    pub(crate) fn rejected(finish: Finish) -> Self {
        Self {
            kind: Kind::Rejected {
                finish: Some(finish),
            },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::PassThrough { .. } => "pass_through",
            Kind::Legacy { .. } => "legacy",
            Kind::Rejected { .. } => "rejected",
            Kind::Refused { .. } => "refused",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::PassThrough { future } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(res.map(ResponseBody::new)))
            }
            KindProj::Legacy { future, finish } => {
                let mut res = ready!(future.poll(cx))?;
                if let Some(finish) = finish.take() {
                    finish.apply(&mut res);
                }
                Poll::Ready(Ok(res.map(ResponseBody::new)))
            }
            KindProj::Rejected { finish } => match finish.take() {
                Some(finish) => {
                    let mut res = misrouted_response().into_response(ResponseBody::full);
                    finish.apply(&mut res);
                    Poll::Ready(Ok(res))
                }
                // Polled again after completion.
                None => Poll::Pending,
            },
            KindProj::Refused { rejection } => match rejection.take() {
                Some(r) => Poll::Ready(Ok(r.into_response(ResponseBody::full))),
                None => Poll::Pending,
            },
        }
    }
}
