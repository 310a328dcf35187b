//! File search, replace and watch ([`Client::search_files`], [`Client::replace_in_files`],
//! [`Client::watch_files`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use reqwest::Method;
use warren_api::{
    ErrorBody, FileEvent, ReplaceRequest, ReplaceResult, SearchRequest, SearchResult,
};

use crate::{sse, Client, Error, SandboxHandle};

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
        Ok(FileWatch(sse::EventStream::new(resp, convert, true)))
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
pub struct FileWatch(sse::EventStream<FileEvent>);

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch")
            .field("finished", &self.0.finished())
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
        self.get_mut().0.poll_next_unpin(cx)
    }
}
