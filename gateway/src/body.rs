//! A response-body wrapper shared by the listener and the upstream layer.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// A body that keeps `guard` alive for as long as the body lives: what must last as long as an
/// answer does, such as a bulkhead slot or a count of requests being served. hyper drops a
/// response body once its last frame is written, and with it the guard.
#[derive(Debug)]
pub struct Holding<B, G> {
    body: B,
    _guard: G,
}

impl<B, G> Holding<B, G> {
    pub fn new(body: B, guard: G) -> Self {
        Self { body, _guard: guard }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Holding<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
