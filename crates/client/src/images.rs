//! Image pulls with progress: `POST /v1/images/pull` read as Server-Sent Events.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::Method;
use warren_api::{Image, PullImageRequest, PullProgress};

use crate::{check, sse, Client, Error};

/// One event of [`Client::pull_image_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// Bytes of a layer so far (`complete` once it is stored).
    Progress(PullProgress),
    /// The pull is done: the stored image. The stream ends after it.
    Done(Image),
}

/// The events of a pull; an `error` event comes as an [`Error::Api`] and ends it.
pub struct PullEvents(sse::EventStream<PullEvent>);

impl std::fmt::Debug for PullEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullEvents")
            .field("finished", &self.0.finished())
            .finish()
    }
}

impl Stream for PullEvents {
    type Item = Result<PullEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}

/// The `error` event that ends a pull's or a build's event stream.
#[derive(serde::Deserialize)]
struct ErrorEvent {
    code: String,
    message: String,
}

/// An `error` event's data as the [`Error::Api`] the same failure gets without SSE.
pub(crate) fn error_event(data: &str) -> Result<Error, serde_json::Error> {
    let e: ErrorEvent = serde_json::from_str(data)?;
    Ok(Error::Api {
        status: match e.code.as_str() {
            "invalid_request" => 400,
            "image_not_found" => 404,
            "image_in_use" => 409,
            "build_failed" => 422,
            "registry_error" => 502,
            "deadline_exceeded" => 504,
            _ => 500,
        },
        code: e.code,
        message: e.message,
    })
}

fn convert(ev: sse::SseEvent) -> Option<Result<PullEvent, Error>> {
    let bad = |e: serde_json::Error| Error::Decode(format!("bad {} event: {e}", ev.event));
    match ev.event.as_str() {
        "progress" => Some(
            serde_json::from_str(&ev.data)
                .map(PullEvent::Progress)
                .map_err(bad),
        ),
        "image" => Some(
            serde_json::from_str(&ev.data)
                .map(PullEvent::Done)
                .map_err(bad),
        ),
        "error" => Some(match error_event(&ev.data) {
            Ok(e) => Err(e),
            Err(e) => Err(bad(e)),
        }),
        _ => None,
    }
}

impl Client {
    /// `POST /v1/images/pull` with `Accept: text/event-stream`: per-layer progress, then the
    /// image.
    pub async fn pull_image_events(&self, reference: &str) -> Result<PullEvents, Error> {
        let req = PullImageRequest {
            reference: reference.to_string(),
        };
        let resp = self
            .request(Method::POST, &["v1", "images", "pull"])
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"))
            .json(&req)
            .send()
            .await?;
        let resp = check(resp).await?;
        Ok(PullEvents(sse::EventStream::new(resp, convert, true)))
    }
}
