use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

use super::ResponseBody;

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, E>> + Send>>;

pin_project! {
    /// Response future of [`SseTransport`](super::SseTransport).
    ///
    /// Requests the transport answers itself (rejections, `GET`, `DELETE`) are ready at once;
    /// a `POST` reads its body and runs the handler behind one allocation.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use mcp_affinity::{handler::handler_fn, transport::ResponseFuture};
    /// use tower::{Layer, Service, ServiceExt};
    ///
    /// let mut svc = mcp_affinity::SseTransportLayer::new().layer(handler_fn(|_r, _c| async { Ok(serde_json::json!({})) }));
    /// // A rejected `Host` is answered at once, without reading the body or calling the handler.
    /// let req = http::Request::post("/mcp").header("host", "evil.example").body(String::new()).unwrap();
    /// let fut: ResponseFuture<_> = ServiceExt::<http::Request<String>>::ready(&mut svc).await.unwrap().call(req);
    /// assert_eq!(fut.await.unwrap().status(), http::StatusCode::MISDIRECTED_REQUEST);
    /// # }
    /// ```
    pub struct ResponseFuture<E> {
        #[pin]
        kind: Kind<E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<E> {
        Ready { response: Option<Response<ResponseBody>> },
        Post { future: BoxFuture<E> },
    }
}

impl<E> ResponseFuture<E> {
    pub(crate) fn ready(response: Response<ResponseBody>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn boxed(
        future: impl Future<Output = Result<Response<ResponseBody>, E>> + Send + 'static,
    ) -> Self {
        Self {
            kind: Kind::Post {
                future: Box::pin(future),
            },
        }
    }
}

impl<E> fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<E> Future for ResponseFuture<E> {
    type Output = Result<Response<ResponseBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => Poll::Pending,
            },
            KindProj::Post { future } => future.as_mut().poll(cx),
        }
    }
}
