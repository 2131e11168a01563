//! The body of every HTTP response: one or more chunks of bytes, sent as they
//! are.
//!
//! Most responses are one chunk. A `/metrics` body is a few thousand: the gzip
//! header, each section's header and the runs of pieces the exposition cache
//! keeps ([`crate::exposition`]), and the trailer. Sending them as they are
//! saves copying a body of several megabytes into a buffer of its own for every
//! scrape, and keeping that copy in memory beside the runs. Its length is known
//! in advance, so the response has a `Content-Length`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

/// A response body of chunks.
#[derive(Debug, Default)]
pub struct Body {
    chunks: VecDeque<Bytes>,
    /// Bytes not yet sent.
    remaining: u64,
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Body::default()
    }

    /// A body of `chunks`, in order.
    pub fn chunks(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Body { chunks, remaining }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::chunks([bytes])
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Body::from(Bytes::from(text))
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Body::from(Bytes::from_static(text.as_bytes()))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let chunk = self.chunks.pop_front();
        if let Some(c) = &chunk {
            self.remaining -= c.len() as u64;
        }
        Poll::Ready(chunk.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn chunks_arrive_in_order_with_their_length_known() {
        let body = Body::chunks([
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
        ]);
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(5));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcde");
        let empty = Body::empty();
        assert!(hyper::body::Body::is_end_stream(&empty));
        assert_eq!(hyper::body::Body::size_hint(&empty).exact(), Some(0));
    }
}
