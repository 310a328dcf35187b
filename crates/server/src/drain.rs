//! Lingering close. An error answered before a request's body was read (a body over the
//! limit, an upload refused at its first bytes) leaves the client still sending; if the
//! server then closed at once, the kernel would reset the connection and the client would
//! see a broken pipe instead of the answer. So the rest of such a body is read and thrown
//! away (up to [`DRAIN_BYTES`] or [`DRAIN_TIME`]) before the error goes out, with
//! `Connection: close`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::sync::oneshot;

/// Most of a refused body read before the answer.
pub const DRAIN_BYTES: u64 = 64 << 20;
/// Longest wait for it.
pub const DRAIN_TIME: Duration = Duration::from_secs(2);

/// A request body that, dropped before its end, hands what is left of it back.
struct Handback {
    inner: Option<Body>,
    ended: bool,
    rest: Option<oneshot::Sender<Body>>,
}

impl HttpBody for Handback {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(HttpBody::size_hint)
            .unwrap_or_default()
    }
}

impl Drop for Handback {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let (Some(body), Some(tx)) = (self.inner.take(), self.rest.take()) {
            let _ = tx.send(body);
        }
    }
}

fn has_body(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "0")
        || req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// The middleware: errors to requests with a body drain what is left of it and close.
pub(crate) async fn close_after_refused_body(req: Request, next: Next) -> Response {
    if !has_body(&req) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let (tx, mut rx) = oneshot::channel();
    let body = Body::new(Handback {
        inner: Some(body),
        ended: false,
        rest: Some(tx),
    });
    let mut resp = next.run(Request::from_parts(parts, body)).await;
    if resp.status().is_client_error() || resp.status().is_server_error() {
        if let Ok(rest) = rx.try_recv() {
            let drain = async {
                let mut read = 0u64;
                let mut data = rest.into_data_stream();
                while let Some(Ok(chunk)) = data.next().await {
                    read += chunk.len() as u64;
                    if read >= DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        }
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
