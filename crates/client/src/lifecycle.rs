//! Pause, resume, stop, start, stats, snapshots, rollback, fork and lifecycle events.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use reqwest::Method;

use warren_api::{
    CreateSnapshotRequest, ForkRequest, RollbackRequest, Sandbox, SandboxEvent, SandboxStats,
    Snapshot,
};

use crate::{check, decode, sse, Client, Error, SandboxHandle};

impl Client {
    /// `POST /v1/sandboxes/{id}/pause`: freeze every process (a no-op when paused).
    pub async fn pause(&self, id: &str) -> Result<Sandbox, Error> {
        self.transition(id, "pause").await
    }

    /// `POST /v1/sandboxes/{id}/resume`: thaw a paused sandbox (a no-op when running).
    pub async fn resume(&self, id: &str) -> Result<Sandbox, Error> {
        self.transition(id, "resume").await
    }

    /// `POST /v1/sandboxes/{id}/stop`: end every process, keep the files (a no-op when
    /// stopped).
    pub async fn stop(&self, id: &str) -> Result<Sandbox, Error> {
        self.transition(id, "stop").await
    }

    /// `POST /v1/sandboxes/{id}/start`: boot a stopped sandbox again (a no-op when running).
    pub async fn start(&self, id: &str) -> Result<Sandbox, Error> {
        self.transition(id, "start").await
    }

    async fn transition(&self, id: &str, verb: &str) -> Result<Sandbox, Error> {
        self.call(Method::POST, &["v1", "sandboxes", id, verb], None::<&()>)
            .await
    }

    /// `GET /v1/sandboxes/{id}/stats`: CPU, memory, processes, disk and network figures.
    pub async fn stats(&self, id: &str) -> Result<SandboxStats, Error> {
        self.call(Method::GET, &["v1", "sandboxes", id, "stats"], None::<&()>)
            .await
    }

    /// `GET /v1/sandboxes/{id}/network`: mode, address and the egress policy in force.
    pub async fn network(&self, id: &str) -> Result<warren_api::SandboxNetwork, Error> {
        self.call(
            Method::GET,
            &["v1", "sandboxes", id, "network"],
            None::<&()>,
        )
        .await
    }

    /// `PUT /v1/sandboxes/{id}/network`: replace the egress policy, live.
    pub async fn set_network(
        &self,
        id: &str,
        req: &warren_api::UpdateNetworkRequest,
    ) -> Result<warren_api::SandboxNetwork, Error> {
        self.call(Method::PUT, &["v1", "sandboxes", id, "network"], Some(req))
            .await
    }

    /// `POST /v1/sandboxes/{id}/snapshots`: snapshot the sandbox's files.
    pub async fn create_snapshot(
        &self,
        id: &str,
        req: &CreateSnapshotRequest,
    ) -> Result<Snapshot, Error> {
        self.call(
            Method::POST,
            &["v1", "sandboxes", id, "snapshots"],
            Some(req),
        )
        .await
    }

    /// `GET /v1/snapshots[?sandbox_id=]`: every snapshot, or those of one sandbox, oldest
    /// first.
    pub async fn list_snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<Snapshot>, Error> {
        let mut url = self.url(&["v1", "snapshots"]);
        if let Some(id) = sandbox_id {
            url.query_pairs_mut().append_pair("sandbox_id", id);
        }
        let resp = self.http_request(Method::GET, url).send().await?;
        decode(check(resp).await?).await
    }

    /// `GET /v1/snapshots/{id}`.
    pub async fn get_snapshot(&self, snapshot_id: &str) -> Result<Snapshot, Error> {
        self.call(Method::GET, &["v1", "snapshots", snapshot_id], None::<&()>)
            .await
    }

    /// `DELETE /v1/snapshots/{id}`.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), Error> {
        let resp = self
            .request(Method::DELETE, &["v1", "snapshots", snapshot_id])
            .send()
            .await?;
        check(resp).await.map(drop)
    }

    /// `POST /v1/sandboxes/{id}/rollback`: replace the sandbox's files with the snapshot's
    /// (a running sandbox is stopped and started again, with fresh processes).
    pub async fn rollback(&self, id: &str, snapshot_id: &str) -> Result<Sandbox, Error> {
        let req = RollbackRequest {
            snapshot: snapshot_id.to_string(),
        };
        self.call(
            Method::POST,
            &["v1", "sandboxes", id, "rollback"],
            Some(&req),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/fork`: a new running sandbox with a copy of this one's
    /// files; fields `req` leaves out are copied from the source.
    pub async fn fork(&self, id: &str, req: &ForkRequest) -> Result<Sandbox, Error> {
        self.call(Method::POST, &["v1", "sandboxes", id, "fork"], Some(req))
            .await
    }

    /// `GET /v1/events` (`sandbox` `None`) or `GET /v1/sandboxes/{id}/events`: lifecycle
    /// events as they happen. `after` resumes after that `seq` (events the server still
    /// keeps are replayed first). Without `after`, a sandbox's stream replays its kept
    /// events and the server-wide one starts with the next event. A sandbox's stream ends
    /// after its `deleted` event; the server-wide one lasts until dropped. Nothing
    /// reconnects by itself: to resume, call again with the last `seq` seen.
    pub async fn events(
        &self,
        sandbox: Option<&str>,
        after: Option<u64>,
    ) -> Result<LifecycleEvents, Error> {
        let mut url = match sandbox {
            Some(id) => self.url(&["v1", "sandboxes", id, "events"]),
            None => self.url(&["v1", "events"]),
        };
        if let Some(after) = after {
            url.query_pairs_mut()
                .append_pair("after", &after.to_string());
        }
        let resp = self.get_event_stream(url).await?;
        Ok(LifecycleEvents(sse::EventStream::new(resp, convert, false)))
    }
}

impl SandboxHandle {
    pub async fn pause(&self) -> Result<Sandbox, Error> {
        self.client().pause(self.id()).await
    }

    pub async fn resume(&self) -> Result<Sandbox, Error> {
        self.client().resume(self.id()).await
    }

    pub async fn stop(&self) -> Result<Sandbox, Error> {
        self.client().stop(self.id()).await
    }

    pub async fn start(&self) -> Result<Sandbox, Error> {
        self.client().start(self.id()).await
    }

    pub async fn stats(&self) -> Result<SandboxStats, Error> {
        self.client().stats(self.id()).await
    }

    /// Its network: mode, address and the egress policy in force.
    pub async fn network(&self) -> Result<warren_api::SandboxNetwork, Error> {
        self.client().network(self.id()).await
    }

    /// Replace its egress policy, live.
    pub async fn set_egress(
        &self,
        egress: warren_api::EgressPolicy,
    ) -> Result<warren_api::SandboxNetwork, Error> {
        self.client()
            .set_network(self.id(), &warren_api::UpdateNetworkRequest { egress })
            .await
    }

    /// Snapshot the sandbox's files, with an optional label.
    pub async fn snapshot(&self, name: Option<&str>) -> Result<Snapshot, Error> {
        let req = CreateSnapshotRequest {
            name: name.map(str::to_string),
        };
        self.client().create_snapshot(self.id(), &req).await
    }

    /// The sandbox's snapshots.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>, Error> {
        self.client().list_snapshots(Some(self.id())).await
    }

    pub async fn rollback(&self, snapshot_id: &str) -> Result<Sandbox, Error> {
        self.client().rollback(self.id(), snapshot_id).await
    }

    pub async fn fork(&self, req: &ForkRequest) -> Result<Sandbox, Error> {
        self.client().fork(self.id(), req).await
    }

    pub async fn events(&self, after: Option<u64>) -> Result<LifecycleEvents, Error> {
        self.client().events(Some(self.id()), after).await
    }
}

/// One item of [`Client::events`].
#[derive(Debug, Clone, PartialEq)]
pub enum LifecycleEvent {
    Event(SandboxEvent),
    /// `missed` events were dropped before they could be sent (the client was too slow, or
    /// resumed from before the oldest event the server keeps).
    Lost {
        missed: u64,
    },
}

/// The stream of [`Client::events`]; ends when the server ends it.
pub struct LifecycleEvents(sse::EventStream<LifecycleEvent>);

impl std::fmt::Debug for LifecycleEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleEvents")
            .field("finished", &self.0.finished())
            .finish()
    }
}

fn convert(ev: sse::SseEvent) -> Option<Result<LifecycleEvent, Error>> {
    match ev.event.as_str() {
        // Every kind (including ones newer than this client) carries a SandboxEvent;
        // a kind this client cannot decode is skipped.
        "lost" => Some(
            serde_json::from_str::<warren_api::EventsLost>(&ev.data)
                .map(|l| LifecycleEvent::Lost { missed: l.missed })
                .map_err(|e| Error::Decode(format!("bad lost event: {e}"))),
        ),
        "message" => None,
        _ => serde_json::from_str::<SandboxEvent>(&ev.data)
            .ok()
            .map(|e| Ok(LifecycleEvent::Event(e))),
    }
}

impl Stream for LifecycleEvents {
    type Item = Result<LifecycleEvent, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_next_unpin(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(event: &str, data: &str) -> sse::SseEvent {
        sse::SseEvent {
            event: event.into(),
            data: data.into(),
            id: None,
        }
    }

    #[test]
    fn converts_events_and_lost() {
        assert_eq!(
            convert(sse("lost", r#"{"missed":4}"#)).unwrap().unwrap(),
            LifecycleEvent::Lost { missed: 4 }
        );
        assert!(convert(sse("lost", "{}")).unwrap().is_err());
        let data = r#"{"seq":3,"time":"2026-11-23T12:00:00Z","sandbox_id":"sb-1","kind":"state","state":"paused","previous":"pausing","reason":"api"}"#;
        match convert(sse("state", data)).unwrap().unwrap() {
            LifecycleEvent::Event(e) => {
                assert_eq!((e.seq, e.sandbox_id.as_str()), (3, "sb-1"));
                assert_eq!(e.state, Some(warren_api::SandboxState::Paused));
            }
            other => panic!("{other:?}"),
        }
        // Kinds or shapes this client does not know are skipped.
        assert!(convert(sse("future_kind", r#"{"x":1}"#)).is_none());
        assert!(convert(sse("message", data)).is_none());
    }
}
