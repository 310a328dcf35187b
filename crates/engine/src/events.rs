//! Lifecycle events: a server-wide sequence of [`SandboxEvent`]s, kept in a bounded ring
//! (for replay with `Last-Event-ID`) and broadcast to live subscribers.
//!
//! Sequence numbers grow by one per event. After a restart they continue above the
//! persisted high-water mark plus a margin ([`RESTART_GAP`]), so a client resuming with an
//! old `Last-Event-ID` never mistakes a new event for one it has seen.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;

use chrono::Utc;
use futures::Stream;
use tokio::sync::broadcast;
use warren_api::{EventKind, SandboxEvent, SandboxState};

/// Events kept for replay.
const RING: usize = 4096;
/// Live events a slow subscriber may fall behind by before it is told it lagged.
const CHANNEL: usize = 1024;
/// Added to the persisted sequence at startup: more than the events that can happen between
/// two persists of the high-water mark.
pub const RESTART_GAP: u64 = 100_000;

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum EventItem {
    Event(SandboxEvent),
    /// `missed` events were dropped (the subscriber was too slow, or asked to resume from
    /// before the oldest event kept).
    Lagged {
        missed: u64,
    },
}

pub type EventStream = Pin<Box<dyn Stream<Item = EventItem> + Send>>;

/// What an event says, besides its sandbox and kind.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    pub state: Option<SandboxState>,
    pub previous: Option<SandboxState>,
    pub reason: Option<String>,
    pub snapshot: Option<String>,
}

pub struct Events {
    inner: Mutex<Ring>,
    tx: broadcast::Sender<SandboxEvent>,
}

struct Ring {
    next_seq: u64,
    events: VecDeque<SandboxEvent>,
}

impl Events {
    pub fn new(first_seq: u64) -> Events {
        Events {
            inner: Mutex::new(Ring {
                next_seq: first_seq.max(1),
                events: VecDeque::with_capacity(RING),
            }),
            tx: broadcast::channel(CHANNEL).0,
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.ring().next_seq
    }

    /// Whether any kept event concerns `sandbox_id`.
    pub fn has_sandbox(&self, sandbox_id: &str) -> bool {
        self.ring()
            .events
            .iter()
            .any(|e| e.sandbox_id == sandbox_id)
    }

    pub fn emit(&self, sandbox_id: &str, kind: EventKind, d: Detail) -> u64 {
        let mut ring = self.ring();
        let ev = SandboxEvent {
            seq: ring.next_seq,
            time: Utc::now(),
            sandbox_id: sandbox_id.to_string(),
            kind,
            state: d.state,
            previous: d.previous,
            reason: d.reason,
            snapshot: d.snapshot,
        };
        ring.next_seq += 1;
        if ring.events.len() == RING {
            ring.events.pop_front();
        }
        ring.events.push_back(ev.clone());
        // Sent under the lock, so subscribers see events in sequence order. No receiver is
        // fine.
        let _ = self.tx.send(ev.clone());
        ev.seq
    }

    /// Events of `sandbox` (all sandboxes when `None`): those kept with a sequence number
    /// above `after`, then live ones. Without `after`, a per-sandbox subscription replays
    /// every kept event of that sandbox and a server-wide one starts with the next event.
    pub fn subscribe(&self, sandbox: Option<String>, after: Option<u64>) -> EventStream {
        self.subscribe_with(sandbox, after, true)
    }

    /// [`Events::subscribe`]; without `follow` the stream ends after the kept events.
    pub fn subscribe_with(
        &self,
        sandbox: Option<String>,
        after: Option<u64>,
        follow: bool,
    ) -> EventStream {
        let ring = self.ring();
        let rx = self.tx.subscribe();
        let matches = |e: &SandboxEvent| sandbox.as_deref().is_none_or(|s| e.sandbox_id == s);
        let mut backlog: VecDeque<EventItem> = VecDeque::new();
        let from = match (after, &sandbox) {
            (Some(a), _) => Some(a),
            (None, Some(_)) => Some(0),
            (None, None) => None,
        };
        if let Some(after) = from {
            let oldest = ring.events.front().map(|e| e.seq).unwrap_or(ring.next_seq);
            if after > 0 && after + 1 < oldest {
                backlog.push_back(EventItem::Lagged {
                    missed: oldest - after - 1,
                });
            }
            backlog.extend(
                ring.events
                    .iter()
                    .filter(|e| e.seq > after && matches(e))
                    .cloned()
                    .map(EventItem::Event),
            );
        }
        let last_seen = ring.next_seq - 1;
        drop(ring);
        if !follow {
            return Box::pin(futures::stream::iter(backlog));
        }
        let state = Sub {
            backlog,
            rx,
            sandbox,
            last_seen,
        };
        Box::pin(futures::stream::unfold(state, |mut s| async move {
            if let Some(item) = s.backlog.pop_front() {
                return Some((item, s));
            }
            loop {
                match s.rx.recv().await {
                    Ok(ev) => {
                        // Already replayed from the ring.
                        if ev.seq <= s.last_seen {
                            continue;
                        }
                        s.last_seen = ev.seq;
                        if s.sandbox.as_deref().is_none_or(|id| ev.sandbox_id == id) {
                            return Some((EventItem::Event(ev), s));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Some((EventItem::Lagged { missed: n }, s));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }
}

struct Sub {
    backlog: VecDeque<EventItem>,
    rx: broadcast::Receiver<SandboxEvent>,
    sandbox: Option<String>,
    last_seen: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn state(s: SandboxState) -> Detail {
        Detail {
            state: Some(s),
            ..Detail::default()
        }
    }

    #[tokio::test]
    async fn replay_then_follow_in_order() {
        let ev = Events::new(10);
        ev.emit("a", EventKind::Created, state(SandboxState::Creating));
        ev.emit("b", EventKind::Created, state(SandboxState::Creating));
        ev.emit("a", EventKind::State, state(SandboxState::Running));
        // Per sandbox: everything kept for it, then live.
        let mut a = ev.subscribe(Some("a".into()), None);
        // Server-wide, resuming after seq 10.
        let mut all = ev.subscribe(None, Some(10));
        // Server-wide, live only.
        let mut live = ev.subscribe(None, None);
        ev.emit("b", EventKind::Deleted, Detail::default());
        ev.emit("a", EventKind::Deleted, Detail::default());
        let seqs = |items: Vec<EventItem>| -> Vec<(u64, String)> {
            items
                .into_iter()
                .map(|i| match i {
                    EventItem::Event(e) => (e.seq, e.sandbox_id),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        let got = seqs(a.by_ref().take(3).collect().await);
        assert_eq!(got, [(10, "a".into()), (12, "a".into()), (14, "a".into())]);
        let got = seqs(all.by_ref().take(4).collect().await);
        assert_eq!(
            got,
            [
                (11, "b".into()),
                (12, "a".into()),
                (13, "b".into()),
                (14, "a".into())
            ]
        );
        let got = seqs(live.by_ref().take(2).collect().await);
        assert_eq!(got, [(13, "b".into()), (14, "a".into())]);
    }

    #[tokio::test]
    async fn resuming_from_before_the_ring_reports_the_gap() {
        let ev = Events::new(1);
        for _ in 0..RING + 5 {
            ev.emit("a", EventKind::State, state(SandboxState::Running));
        }
        let mut s = ev.subscribe(None, Some(2));
        // Kept: 6..=4101; 3, 4 and 5 are gone.
        assert_eq!(s.next().await, Some(EventItem::Lagged { missed: 3 }));
        match s.next().await {
            Some(EventItem::Event(e)) => assert_eq!(e.seq, 6),
            other => panic!("{other:?}"),
        }
    }
}
