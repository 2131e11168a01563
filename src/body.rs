//! The body of every HTTP response: one buffer, shared with every other
//! response that sends it, and the request slot it was answered under.
//!
//! A `/metrics` body of several megabytes is one [`Bytes`] that the cache and
//! every response sending it share: twenty clients that never read it hold one
//! copy, not twenty. It goes out in frames of at most [`FRAME`] bytes (slices of
//! that buffer), so that the connection's write buffer never copies more than a
//! frame of it. The slot (`--web.max-requests`) is held until the body is sent
//! or the connection is closed (a client that stops reading is cut off after
//! [`crate::server::SEND_TIMEOUT`]), so stalled downloads count against the
//! limit like any other request.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

/// Largest frame a body hands to the connection.
pub const FRAME: usize = 64 * 1024;

/// A response body.
#[derive(Debug, Default)]
pub struct Body {
    /// Bytes not yet sent.
    rest: Bytes,
    /// The request slot, given back when the body is dropped.
    slot: Option<OwnedSemaphorePermit>,
}

impl Body {
    /// An empty body.
    pub fn empty() -> Self {
        Body::default()
    }

    /// Holds `slot` until the body is sent or dropped.
    pub fn with_slot(mut self, slot: OwnedSemaphorePermit) -> Self {
        self.slot = Some(slot);
        self
    }
}

impl From<Bytes> for Body {
    fn from(rest: Bytes) -> Self {
        Body { rest, slot: None }
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
        if self.rest.is_empty() {
            self.slot = None;
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(FRAME);
        let frame = self.rest.split_to(n);
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn a_body_arrives_whole_in_frames_sharing_its_buffer_and_frees_its_slot() {
        let data = Bytes::from((0..3 * FRAME + 5).map(|i| i as u8).collect::<Vec<u8>>());
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
        let slot = std::sync::Arc::clone(&limit).try_acquire_owned().unwrap();
        let mut body = Body::from(data.clone()).with_slot(slot);
        assert_eq!(
            hyper::body::Body::size_hint(&body).exact(),
            Some(data.len() as u64)
        );
        let mut got = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap().into_data().unwrap();
            assert!(frame.len() <= FRAME);
            let inside = data.as_ptr_range();
            assert!(inside.contains(&frame.as_ptr()), "a slice, not a copy");
            got.extend_from_slice(&frame);
        }
        assert_eq!(got, data);
        assert_eq!(limit.available_permits(), 1, "slot given back once sent");
        let empty = Body::empty();
        assert!(hyper::body::Body::is_end_stream(&empty));
        assert_eq!(hyper::body::Body::size_hint(&empty).exact(), Some(0));
    }
}
