//! Reading a whole body into one [`Bytes`].

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError};

use crate::BoxError;

/// Why [`read_to_bytes`] gave up.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The body is (or announced itself as) longer than the limit: this one's, or an outer
    /// layer's (`http_body_util::Limited`, tower-http's `RequestBodyLimitLayer`), whose body
    /// fails with [`LengthLimitError`].
    TooLarge,
    /// The body failed.
    Body(BoxError),
}

impl ReadError {
    fn from_body<E: Into<BoxError>>(e: E) -> Self {
        let e = e.into();
        if e.is::<LengthLimitError>() {
            Self::TooLarge
        } else {
            Self::Body(e)
        }
    }
}

/// Reads `body` to its end, at most `limit` bytes of data; trailers are ignored.
///
/// A body of one data frame (a JSON-RPC message almost always is) is returned as that frame,
/// without a copy and without the queue `BodyExt::collect` allocates for every body; longer
/// bodies are joined into one buffer.
pub(crate) async fn read_to_bytes<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut one: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(ReadError::from_body)?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(ReadError::TooLarge);
        }
        if let Some(first) = one.take() {
            joined.reserve(len);
            joined.extend_from_slice(&first);
            joined.extend_from_slice(&data);
        } else if joined.is_empty() {
            one = Some(data);
        } else {
            joined.extend_from_slice(&data);
        }
    }
    Ok(one.unwrap_or_else(|| joined.freeze()))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body::Frame;
    use http_body_util::{Full, StreamBody};

    use super::*;

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = Infallible> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .chain(std::iter::once(Ok(Frame::trailers(http::HeaderMap::new()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn one_frame_is_returned_as_it_is() {
        let data = Bytes::from_static(b"{\"jsonrpc\":\"2.0\"}");
        let out = read_to_bytes(Full::new(data.clone()), 1024).await.unwrap();
        assert_eq!(out, data);
        assert_eq!(out.as_ptr(), data.as_ptr(), "no copy of a single frame");
    }

    #[tokio::test]
    async fn frames_are_joined_in_order_and_trailers_ignored() {
        let out = read_to_bytes(chunks(&["ab", "", "cd", "e"]), 5)
            .await
            .unwrap();
        assert_eq!(out, "abcde");
        let empty = read_to_bytes(chunks(&[]), 5).await.unwrap();
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn an_outer_limit_is_too_large_and_other_failures_are_body_errors() {
        let limited = http_body_util::Limited::new(Full::new(Bytes::from_static(b"abcdef")), 3);
        assert!(matches!(
            read_to_bytes(limited, 1024).await,
            Err(ReadError::TooLarge)
        ));
        let failing = StreamBody::new(futures_util::stream::iter([Err::<Frame<Bytes>, _>(
            std::io::Error::other("reset"),
        )]));
        assert!(matches!(
            read_to_bytes(failing, 1024).await,
            Err(ReadError::Body(e)) if e.to_string() == "reset"
        ));
    }

    #[tokio::test]
    async fn the_limit_holds_across_frames_and_on_the_size_hint() {
        assert!(matches!(
            read_to_bytes(chunks(&["abc", "def"]), 5).await,
            Err(ReadError::TooLarge)
        ));
        assert!(matches!(
            read_to_bytes(Full::new(Bytes::from_static(b"abcdef")), 5).await,
            Err(ReadError::TooLarge)
        ));
        assert_eq!(
            read_to_bytes(chunks(&["abc", "de"]), 5).await.unwrap(),
            "abcde"
        );
    }
}
