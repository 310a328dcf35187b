//! File search, replace and watch ([`Client::search_files`], [`Client::replace_in_files`],
//! [`Client::watch_files`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use reqwest::Method;
use warren_api::{
    ErrorBody, FileEvent, ReplaceRequest, ReplaceResult, SearchRequest, SearchResult,
};

use crate::{sse, ByteStream, Client, Error, SandboxHandle};

impl Client {
    /// `POST /v1/sandboxes/{id}/files/search`: file names matching `glob`, or lines matching
    /// `pattern`, below `req.path`.
    pub async fn search_files(&self, id: &str, req: &SearchRequest) -> Result<SearchResult, Error> {
        self.call(
            Method::POST,
            &["v1", "sandboxes", id, "files", "search"],
            Some(req),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/files/replace`: replace regex matches in the files below
    /// `req.path`, each rewritten atomically.
    pub async fn replace_in_files(
        &self,
        id: &str,
        req: &ReplaceRequest,
    ) -> Result<ReplaceResult, Error> {
        self.call(
            Method::POST,
            &["v1", "sandboxes", id, "files", "replace"],
            Some(req),
        )
        .await
    }

    /// `GET /v1/sandboxes/{id}/files/watch`: the changes below `path`, once the watch is
    /// active (when this returns). Dropping the stream ends the watch.
    pub async fn watch_files(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileWatch, Error> {
        let mut url = self.url(&["v1", "sandboxes", id, "files", "watch"]);
        url.query_pairs_mut()
            .append_pair("path", path)
            .append_pair("recursive", if recursive { "true" } else { "false" });
        let resp = self.get_event_stream(url).await?;
        Ok(FileWatch {
            body: Some(Box::pin(resp.bytes_stream())),
            parser: sse::SseParser::default(),
            pending: VecDeque::new(),
        })
    }
}

impl SandboxHandle {
    pub async fn search_files(&self, req: &SearchRequest) -> Result<SearchResult, Error> {
        self.client().search_files(self.id(), req).await
    }

    pub async fn replace_in_files(&self, req: &ReplaceRequest) -> Result<ReplaceResult, Error> {
        self.client().replace_in_files(self.id(), req).await
    }

    pub async fn watch_files(&self, path: &str, recursive: bool) -> Result<FileWatch, Error> {
        self.client().watch_files(self.id(), path, recursive).await
    }
}

/// The events of [`Client::watch_files`]; ends when the server ends the stream. A server-side
/// failure is the last item, as [`Error::Api`].
pub struct FileWatch {
    body: Option<ByteStream>,
    parser: sse::SseParser,
    pending: VecDeque<sse::SseEvent>,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch")
            .field("finished", &self.body.is_none())
            .finish()
    }
}

fn convert(ev: sse::SseEvent) -> Option<Result<FileEvent, Error>> {
    match ev.event.as_str() {
        "created" | "modified" | "deleted" | "renamed" => Some(
            serde_json::from_str(&ev.data)
                .map_err(|e| Error::Decode(format!("bad {} event: {e}", ev.event))),
        ),
        "error" => Some(match serde_json::from_str::<ErrorBody>(&ev.data) {
            Ok(body) => Err(Error::Api {
                status: 500,
                code: body.error.code,
                message: body.error.message,
            }),
            Err(e) => Err(Error::Decode(format!("bad error event: {e}"))),
        }),
        _ => None, // unknown events are skipped
    }
}

impl Stream for FileWatch {
    type Item = Result<FileEvent, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            while let Some(ev) = this.pending.pop_front() {
                if let Some(item) = convert(ev) {
                    if item.is_err() {
                        this.body = None;
                        this.pending.clear();
                    }
                    return Poll::Ready(Some(item));
                }
            }
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(None);
            };
            match futures::ready!(body.poll_next_unpin(cx)) {
                Some(Ok(bytes)) => this.parser.push(&bytes, &mut this.pending),
                Some(Err(e)) => {
                    this.body = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    this.body = None;
                    return Poll::Ready(None);
                }
            }
        }
    }
}
