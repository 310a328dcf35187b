//! `filesystem.Filesystem`: stat, list, make, move, remove, and watches (a stream, or a
//! watcher the client polls) onto the engine's confined file operations and inotify
//! watches, with E2B's entry info and event types.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use warren_api::{FileEvent, FileEventKind, FileInfo, FileKind};
use warren_engine::files::AccountNames;

use super::connect::{self, Code, RpcError, RpcResult, Step};
use super::Call;
use crate::E2b;

/// Events a polled watcher keeps between polls (older ones are dropped).
const MAX_WATCHER_EVENTS: usize = 10_000;
/// Watchers one daemon keeps.
const MAX_WATCHERS: usize = 1024;
/// A watcher nobody polled for this long is removed.
const WATCHER_IDLE: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PathRequest {
    path: String,
    #[serde(deserialize_with = "lenient_depth")]
    depth: u32,
    recursive: bool,
    #[serde(alias = "include_entry")]
    include_entry: bool,
}

fn lenient_depth<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => Ok(n.as_u64().unwrap_or(0).min(u32::MAX as u64) as u32),
        serde_json::Value::String(s) => s.parse().map_err(D::Error::custom),
        _ => Ok(0),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MoveRequest {
    source: String,
    destination: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct WatcherRequest {
    #[serde(alias = "watcher_id")]
    watcher_id: String,
}

pub(super) async fn call(s: E2b, method: &str, call: Call) -> Response {
    let r = match method {
        "Stat" => stat(&s, &call).await,
        "ListDir" => list_dir(&s, &call).await,
        "MakeDir" => make_dir(&s, &call).await,
        "Move" => move_entry(&s, &call).await,
        "Remove" => remove(&s, &call).await,
        "WatchDir" => return watch_dir(s, call).await,
        "CreateWatcher" => create_watcher(&s, &call).await,
        "GetWatcherEvents" => watcher_events(&s, &call).await,
        "RemoveWatcher" => remove_watcher(&s, &call).await,
        other => Err(super::unknown_method("filesystem.Filesystem", other)),
    };
    match (r, call.kind) {
        (Ok(v), _) => connect::unary(&v),
        (Err(e), connect::Kind::Stream) => connect::stream_error(e),
        (Err(e), connect::Kind::Unary) => e.into_response(),
    }
}

/// How long a sandbox's account names are reused before `/etc/passwd` and `/etc/group`
/// are read again.
const NAMES_TTL: Duration = Duration::from_secs(10);
/// Sandboxes whose names are cached.
const MAX_NAMES: usize = 4096;

/// Account names of sandboxes, read at most every [`NAMES_TTL`] (two file reads saved on
/// every stat and listing).
#[derive(Default, Clone)]
pub(crate) struct NamesCache(Arc<Mutex<HashMap<String, CachedNames>>>);

/// When a sandbox's names were read, and what they were.
type CachedNames = (Instant, Arc<AccountNames>);

async fn names(s: &E2b, sid: &str) -> RpcResult<Arc<AccountNames>> {
    let cached = {
        let c = s.names.0.lock().unwrap_or_else(|p| p.into_inner());
        c.get(sid)
            .filter(|(at, _)| at.elapsed() < NAMES_TTL)
            .map(|(_, n)| n.clone())
    };
    if let Some(n) = cached {
        return Ok(n);
    }
    let n = Arc::new(s.engine.account_names(sid).await?);
    let mut c = s.names.0.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= MAX_NAMES {
        c.retain(|_, (at, _)| at.elapsed() < NAMES_TTL);
    }
    if c.len() < MAX_NAMES {
        c.insert(sid.to_string(), (Instant::now(), n.clone()));
    }
    Ok(n)
}

/// Go's `FileMode.String()` of a file: `drwxr-xr-x`, `-rw-r--r--`, `Lrwxrwxrwx`.
pub(crate) fn permissions(kind: FileKind, mode: u32) -> String {
    let mut out = String::new();
    match kind {
        FileKind::Dir => out.push('d'),
        FileKind::Symlink => out.push('L'),
        _ => {}
    }
    if mode & 0o4000 != 0 {
        out.push('u');
    }
    if mode & 0o2000 != 0 {
        out.push('g');
    }
    if mode & 0o1000 != 0 {
        out.push('t');
    }
    if out.is_empty() {
        out.push('-');
    }
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    out
}

fn file_type(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "FILE_TYPE_FILE",
        FileKind::Dir => "FILE_TYPE_DIRECTORY",
        FileKind::Symlink => "FILE_TYPE_SYMLINK",
        FileKind::Other => "FILE_TYPE_UNSPECIFIED",
    }
}

pub(crate) fn base_name(path: &str) -> &str {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some((_, name)) if !name.is_empty() => name,
        _ => "/",
    }
}

/// E2B's `EntryInfo` of a file.
pub(crate) fn entry(f: &FileInfo, names: &AccountNames) -> serde_json::Value {
    let mut v = json!({
        "name": base_name(&f.path),
        "type": file_type(f.kind),
        "path": f.path,
        "size": f.size.to_string(),
        "mode": f.mode & 0o777,
        "permissions": permissions(f.kind, f.mode),
        "owner": names.user(f.uid),
        "group": names.group(f.gid),
        "modifiedTime": f.modified_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    });
    if let Some(t) = &f.link_target {
        v["symlinkTarget"] = json!(t);
        v["isSymlink"] = json!(true);
    }
    if !f.metadata.is_empty() {
        v["metadata"] = json!(f.metadata);
    }
    v
}

async fn stat(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: PathRequest = call.message()?;
    let path = call.user.resolve(&req.path)?;
    let f = s.engine.stat(&call.sid, &path).await?;
    let names = names(s, &call.sid).await?;
    Ok(json!({"entry": entry(&f, &names)}))
}

async fn list_dir(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: PathRequest = call.message()?;
    let path = call.user.resolve(&req.path)?;
    let depth = req.depth.clamp(1, warren_engine::files::MAX_LIST_DEPTH);
    let list = s.engine.list_files(&call.sid, &path, depth).await?;
    let names = names(s, &call.sid).await?;
    let entries: Vec<_> = list.entries.iter().map(|f| entry(f, &names)).collect();
    Ok(json!({ "entries": entries }))
}

/// `MakeDir`: with parents; an existing path is `already_exists` (the SDK's `False`).
async fn make_dir(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: PathRequest = call.message()?;
    let path = call.user.resolve(&req.path)?;
    match s.engine.stat(&call.sid, &path).await {
        Ok(_) => {
            return Err(RpcError::new(
                Code::AlreadyExists,
                format!("{path} already exists"),
            ))
        }
        Err(e) if e.code() == warren_api::ErrorCode::FileNotFound => {}
        Err(e) => return Err(e.into()),
    }
    let f = s
        .engine
        .mkdir(&call.sid, &path, true, None, call.user.0)
        .await?;
    let names = names(s, &call.sid).await?;
    Ok(json!({"entry": entry(&f, &names)}))
}

/// `Move`: a rename that replaces an existing target, like envd's.
async fn move_entry(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: MoveRequest = call.message()?;
    let from = call.user.resolve(&req.source)?;
    let to = call.user.resolve(&req.destination)?;
    s.engine.move_path(&call.sid, &from, &to, true).await?;
    let f = s.engine.stat(&call.sid, &to).await?;
    let names = names(s, &call.sid).await?;
    Ok(json!({"entry": entry(&f, &names)}))
}

async fn remove(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: PathRequest = call.message()?;
    let path = call.user.resolve(&req.path)?;
    // A missing path is `not_found`, as in envd (the engine's remove succeeds on it).
    s.engine.stat(&call.sid, &path).await?;
    s.engine.remove(&call.sid, &path, true).await?;
    Ok(json!({}))
}

/// A watch's events in E2B's form: names relative to the watched directory; a rename
/// is `RENAME` of the old name and `CREATE` of the new one (what inotify-based envd
/// reports).
struct Translator {
    root: String,
    include_entry: bool,
    names: Arc<AccountNames>,
}

impl Translator {
    fn relative(&self, path: &str) -> Option<String> {
        let rest = path.strip_prefix(&self.root)?;
        if !rest.is_empty() && !rest.starts_with('/') && self.root != "/" {
            return None;
        }
        let rest = rest.trim_start_matches('/');
        (!rest.is_empty()).then(|| rest.to_string())
    }

    async fn events(&self, s: &E2b, sid: &str, e: FileEvent) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (kind, path) in plain_events(&e) {
            let Some(name) = self.relative(path) else {
                continue;
            };
            let mut v = json!({"name": name, "type": kind});
            if self.include_entry && matches!(kind, "EVENT_TYPE_CREATE" | "EVENT_TYPE_WRITE") {
                if let Ok(f) = s.engine.stat(sid, path).await {
                    v["entry"] = entry(&f, &self.names);
                }
            }
            out.push(v);
        }
        out
    }
}

/// A Warren watch event as E2B's event types, with the agent's write temporaries hidden
/// (envd writes in place): a temporary's own events vanish, and its rename onto the
/// target is the target's `CREATE` and `WRITE`. Another rename is `RENAME` of the old
/// name and `CREATE` of the new one (what inotify-based envd reports).
fn plain_events(e: &FileEvent) -> Vec<(&'static str, &str)> {
    use warren_engine::files::is_write_temp;
    let kind = match e.event {
        FileEventKind::Created => "EVENT_TYPE_CREATE",
        FileEventKind::Modified => "EVENT_TYPE_WRITE",
        FileEventKind::Deleted => "EVENT_TYPE_REMOVE",
        FileEventKind::Renamed => "EVENT_TYPE_RENAME",
    };
    match (e.event, e.to.as_deref()) {
        (FileEventKind::Renamed, Some(to)) if is_write_temp(&e.path) && !is_write_temp(to) => {
            vec![("EVENT_TYPE_CREATE", to), ("EVENT_TYPE_WRITE", to)]
        }
        _ if is_write_temp(&e.path) => Vec::new(),
        (FileEventKind::Renamed, Some(to)) => vec![(kind, &e.path), ("EVENT_TYPE_CREATE", to)],
        _ => vec![(kind, &e.path)],
    }
}

/// Start a watch on a directory (a file or a missing path is refused, as in envd).
async fn open_watch(
    s: &E2b,
    call: &Call,
    req: &PathRequest,
) -> RpcResult<(warren_engine::files::FileEvents, Translator)> {
    let path = call.user.resolve(&req.path)?;
    let f = s.engine.stat(&call.sid, &path).await?;
    if f.kind != FileKind::Dir {
        return Err(RpcError::invalid(format!("{path} is not a directory")));
    }
    let events = s
        .engine
        .watch_files(&call.sid, &path, req.recursive)
        .await?;
    let names = if req.include_entry {
        names(s, &call.sid).await?
    } else {
        Arc::default()
    };
    Ok((
        events,
        Translator {
            root: path.trim_end_matches('/').to_string(),
            include_entry: req.include_entry,
            names,
        },
    ))
}

/// `WatchDir`: a stream of events; first `start`, keepalives while idle.
async fn watch_dir(s: E2b, call: Call) -> Response {
    let opened = async {
        let req: PathRequest = call.message()?;
        open_watch(&s, &call, &req).await
    };
    let (mut events, tr) = match opened.await {
        Ok(w) => w,
        Err(e) => return connect::stream_error(e),
    };
    let timing = call.timing();
    let sid = call.sid;
    connect::stream(move |tx| async move {
        if tx.send_json(json!({"start": {}})).await.is_err() {
            return Ok(());
        }
        let keepalive = json!({"keepalive": {}});
        loop {
            let item = match connect::next_item(&mut events, &tx, &timing, &keepalive).await {
                Step::Item(item) => item,
                // The SDK's watch timeout: the stream ends normally.
                Step::Deadline | Step::Gone => return Ok(()),
            };
            match item {
                Some(Ok(e)) => {
                    for v in tr.events(&s, &sid, e).await {
                        if tx.send_json(json!({ "filesystem": v })).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                Some(Err(e)) => return Err(super::broken(&s, &sid, e).await),
                None => return Err(super::broken(&s, &sid, "the watch ended").await),
            }
        }
    })
}

/// A watcher the client polls (`CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`):
/// a task collects its events until it is removed, its sandbox goes away, or nobody
/// polls it for [`WATCHER_IDLE`].
struct Watcher {
    sid: String,
    events: Arc<Mutex<VecDeque<serde_json::Value>>>,
    /// Why the watch ended, once it has.
    ended: Arc<Mutex<Option<RpcError>>>,
    task: tokio::task::JoinHandle<()>,
    polled: Instant,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The daemon's polled watchers, by id.
#[derive(Default, Clone)]
pub(crate) struct Watchers(Arc<Mutex<HashMap<String, Watcher>>>);

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watcher>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn create_watcher(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: PathRequest = call.message()?;
    {
        let mut w = s.watchers.lock();
        w.retain(|_, w| w.polled.elapsed() < WATCHER_IDLE);
        if w.len() >= MAX_WATCHERS {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("{MAX_WATCHERS} watchers exist; remove some first"),
            ));
        }
    }
    let (mut events, tr) = open_watch(s, call, &req).await?;
    let queue: Arc<Mutex<VecDeque<serde_json::Value>>> = Arc::default();
    let ended: Arc<Mutex<Option<RpcError>>> = Arc::default();
    let (q, end, st, sid) = (queue.clone(), ended.clone(), s.clone(), call.sid.clone());
    let task = tokio::spawn(async move {
        let why = loop {
            match events.next().await {
                Some(Ok(e)) => {
                    let evs = tr.events(&st, &sid, e).await;
                    let mut q = q.lock().unwrap_or_else(|p| p.into_inner());
                    for v in evs {
                        if q.len() >= MAX_WATCHER_EVENTS {
                            q.pop_front();
                        }
                        q.push_back(v);
                    }
                }
                Some(Err(e)) => break super::broken(&st, &sid, e).await,
                None => break super::broken(&st, &sid, "the watch ended").await,
            }
        };
        *end.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    });
    let id = format!("w-{}", crate::random_hex(12));
    s.watchers.lock().insert(
        id.clone(),
        Watcher {
            sid: call.sid.clone(),
            events: queue,
            ended,
            task,
            polled: Instant::now(),
        },
    );
    Ok(json!({ "watcherId": id }))
}

fn watcher_not_found(id: &str) -> RpcError {
    RpcError::new(Code::NotFound, format!("watcher {id:?} does not exist"))
}

/// `GetWatcherEvents`: the events since the last poll. A watch that ended (its sandbox
/// went away) answers its last events, then its error.
async fn watcher_events(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: WatcherRequest = call.message()?;
    let mut all = s.watchers.lock();
    let w = all
        .get_mut(&req.watcher_id)
        .filter(|w| w.sid == call.sid)
        .ok_or_else(|| watcher_not_found(&req.watcher_id))?;
    w.polled = Instant::now();
    let events: Vec<_> = w
        .events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    if events.is_empty() {
        let ended = w.ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(e) = ended {
            all.remove(&req.watcher_id);
            return Err(e);
        }
    }
    Ok(json!({ "events": events }))
}

async fn remove_watcher(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: WatcherRequest = call.message()?;
    let mut all = s.watchers.lock();
    match all.get(&req.watcher_id) {
        Some(w) if w.sid == call.sid => {
            all.remove(&req.watcher_id);
            Ok(json!({}))
        }
        _ => Err(watcher_not_found(&req.watcher_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_strings_read_like_go() {
        assert_eq!(permissions(FileKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(permissions(FileKind::File, 0o644), "-rw-r--r--");
        assert_eq!(permissions(FileKind::Symlink, 0o777), "Lrwxrwxrwx");
        assert_eq!(permissions(FileKind::Dir, 0o1777), "dtrwxrwxrwx");
        assert_eq!(base_name("/a/b.txt"), "b.txt");
        assert_eq!(base_name("/"), "/");
    }

    #[test]
    fn watch_names_are_relative() {
        let tr = Translator {
            root: "/home/user/w".into(),
            include_entry: false,
            names: Arc::default(),
        };
        assert_eq!(tr.relative("/home/user/w/a/b").as_deref(), Some("a/b"));
        assert_eq!(tr.relative("/home/user/w"), None);
        assert_eq!(tr.relative("/elsewhere"), None);
        assert_eq!(tr.relative("/home/user/wx"), None);
    }

    #[test]
    fn write_temporaries_are_hidden() {
        let ev = |event, path: &str, to: Option<&str>| FileEvent {
            event,
            path: path.into(),
            kind: FileKind::File,
            to: to.map(str::to_string),
        };
        let tmp = "/w/.a.txt.warren-00000000000000ff";
        assert!(plain_events(&ev(FileEventKind::Created, tmp, None)).is_empty());
        assert!(plain_events(&ev(FileEventKind::Modified, tmp, None)).is_empty());
        assert_eq!(
            plain_events(&ev(FileEventKind::Renamed, tmp, Some("/w/a.txt"))),
            [
                ("EVENT_TYPE_CREATE", "/w/a.txt"),
                ("EVENT_TYPE_WRITE", "/w/a.txt")
            ]
        );
        assert_eq!(
            plain_events(&ev(FileEventKind::Renamed, "/w/a", Some("/w/b"))),
            [("EVENT_TYPE_RENAME", "/w/a"), ("EVENT_TYPE_CREATE", "/w/b")]
        );
        assert_eq!(
            plain_events(&ev(FileEventKind::Deleted, "/w/a", None)),
            [("EVENT_TYPE_REMOVE", "/w/a")]
        );
    }
}
