//! Streaming body wrappers that count bytes (and log when a forwarded
//! exchange ends) without buffering anything.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::broker::Counters;

/// Which counter a [`CountingBody`] feeds.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    /// Request body, sandbox → upstream.
    Up,
    /// Response body, upstream → sandbox.
    Down,
}

/// What to log when a forwarded response body ends (or is dropped).
pub(crate) struct ExchangeLog {
    pub sandbox: Arc<str>,
    pub index: usize,
    pub method: hyper::Method,
    pub path: String,
    pub status: u16,
    pub started: Instant,
    pub headers_after_ms: u128,
}

/// A body that passes frames through unchanged, one by one, and counts
/// their data bytes.
pub struct CountingBody<B> {
    inner: B,
    counters: Arc<Counters>,
    direction: Direction,
    bytes: u64,
    finished: bool,
    log: Option<ExchangeLog>,
}

impl<B> CountingBody<B> {
    pub(crate) fn new(inner: B, counters: Arc<Counters>, direction: Direction) -> Self {
        CountingBody {
            inner,
            counters,
            direction,
            bytes: 0,
            finished: false,
            log: None,
        }
    }

    /// Log the exchange when this body ends.
    pub(crate) fn with_log(mut self, log: ExchangeLog) -> Self
    where
        B: Body,
    {
        self.finished = self.inner.is_end_stream();
        self.log = Some(log);
        self
    }

    fn counter(&self) -> &AtomicU64 {
        match self.direction {
            Direction::Up => &self.counters.bytes_up,
            Direction::Down => &self.counters.bytes_down,
        }
    }
}

impl<B> Body for CountingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.bytes += n;
                    this.counter().fetch_add(n, Ordering::Relaxed);
                }
            }
            Poll::Ready(None) => this.finished = true,
            _ => {}
        }
        if this.inner.is_end_stream() {
            this.finished = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountingBody<B> {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let complete = self.finished;
            tracing::info!(
                sandbox = &*log.sandbox,
                credential = log.index,
                method = %log.method,
                path = %log.path,
                status = log.status,
                duration_ms = log.started.elapsed().as_millis() as u64,
                headers_ms = log.headers_after_ms as u64,
                bytes_down = self.bytes,
                complete,
                "broker: forwarded"
            );
        }
    }
}
