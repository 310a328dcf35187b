//! OCI images for sandboxes.
//!
//! [`ImageStore`] pulls images from OCI registries (token and basic auth through
//! `oci-client`; plain HTTP only for registries named insecure) and keeps them as a
//! content-addressed store under one directory:
//!
//! ```text
//! layers/sha256-<diff_id hex>/   one extracted layer, overlay-ready (see `extract`), shared
//!                                by every image that has it, whatever its compression
//! images/<sha256 of the name>.json  one image: name, manifest digest, config, layer ids
//! tmp/                           downloads and extractions in progress (emptied at open)
//! ```
//!
//! A layer appears under `layers/` only by a rename after its blob matched the manifest's
//! digest and its tar matched the config's `diff_id`; an image record only after all its
//! layers did. So a pull killed at any point leaves nothing that is used (the next open
//! empties `tmp/`), and a corrupt download is never used. Concurrent pulls of one layer
//! share the work. Layers no image names are removed by [`ImageStore::collect_garbage`].
//!
//! Builds add layers of their own: [`ImageStore::commit_layer`] stores a sandbox's upper
//! directory (or a directory [`copy_into_layer`] filled for a COPY) as a layer, and
//! [`ImageStore::put_image`] records the image made of them.

mod archive;
mod commit;
mod copy;
mod extract;
mod glob;
mod import;
mod tree;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info};

pub use archive::unpack_context;
pub use commit::{write_layer_tar, CommitOptions, Committed, LAYER_MEDIA_TYPE};
pub use copy::{copy_into_layer, CopyResult, CopySpec};
pub use extract::{extract, Compression, Extracted};

/// Everything that can go wrong with images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a valid image reference.
    #[error("invalid image reference {0:?}: {1}")]
    InvalidReference(String, String),
    /// The store has no image of that name.
    #[error("image {0} not found")]
    NotFound(String),
    /// The registry could not be reached, refused, or does not have the image.
    #[error("registry: {0}")]
    Registry(String),
    /// The registry wants credentials it was not given (or refused them).
    #[error("registry authentication: {0}")]
    Auth(String),
    /// What the registry sent does not match its digest, or is not a valid layer.
    #[error("corrupt image data: {0}")]
    Corrupt(String),
    /// Something this store does not handle (a media type, an OS or architecture).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The store's own files.
    #[error("image store: {0}")]
    Io(String),
    /// What a build was asked to do cannot be done with what it was given (a COPY source
    /// that matches nothing or leaves the build context, a destination that is not a
    /// directory): the client's to fix.
    #[error("build: {0}")]
    BuildInput(String),
}

fn io(what: impl std::fmt::Display) -> impl Fn(std::io::Error) -> ImageError {
    move |e| ImageError::Io(format!("{what}: {e}"))
}

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How registries are reached.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// `host:port` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Credentials by registry `host[:port]`; others are pulled anonymously (a registry's
    /// token service is used either way).
    pub auth: HashMap<String, RegistryCredentials>,
    /// Connect timeout (default 10 s).
    pub connect_timeout: Option<Duration>,
}

/// The parts of an image's config a sandbox uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=VALUE` entries.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub exposed_ports: Vec<String>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// `sha256:<hex>` of the uncompressed tar: the name of its directory.
    pub diff_id: String,
    /// `sha256:<hex>` of the blob it was pulled as.
    pub digest: String,
    /// Size of that blob.
    pub size: u64,
    pub media_type: String,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The name it is known by: the reference as pulled (`host:port/repo:tag`,
    /// `repo@sha256:…`), normalised.
    pub name: String,
    /// `sha256:<hex>` of its manifest.
    pub digest: String,
    pub config: ImageConfig,
    /// Bottom-most first (manifest order).
    pub layers: Vec<Layer>,
    /// Sum of the layers' blob sizes.
    pub size: u64,
    pub pulled_at: DateTime<Utc>,
    /// Set for an image built from a Dockerfile (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateMeta>,
}

/// What a template adds to its image: how it was built, and what its sandboxes run at
/// create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateMeta {
    pub base: String,
    pub dockerfile: String,
    #[serde(default)]
    pub start_cmd: Option<String>,
    #[serde(default)]
    pub ready_cmd: Option<String>,
    #[serde(default)]
    pub ready_timeout_secs: Option<u64>,
    pub build_ms: u64,
    pub steps: usize,
    pub cached_steps: usize,
}

/// Held by a build ([`ImageStore::lease`]): while any lease lives, garbage collection
/// removes nothing (a build's layers belong to no image until it records its result).
#[derive(Debug)]
pub struct Lease {
    store: ImageStore,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.store
            .inner
            .leases
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A scratch directory under the store's `tmp/` ([`ImageStore::scratch_dir`]), removed
/// with what it holds on drop (and at the next open if the process dies first).
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), error = %e, "removing a scratch dir");
            }
        }
    }
}

/// Progress of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The manifest is in: these layers will be fetched (those already stored are `cached`).
    Resolved {
        digest: String,
        layers: Vec<(String, u64, bool)>,
    },
    /// Bytes of a layer's blob received so far.
    Layer {
        digest: String,
        done: u64,
        total: u64,
    },
    /// A layer is stored (downloaded, verified, extracted).
    LayerDone { digest: String },
}

/// What [`ImageStore::collect_garbage`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    pub layers: usize,
    pub bytes: u64,
}

/// The image store (see the crate docs). Cheap to clone.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    client: Client,
    cfg: RegistryConfig,
    /// Layers being fetched, by diff_id: a second pull waits for the first.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while records or layers are added or removed (a collection never races a pull).
    records: tokio::sync::RwLock<()>,
    /// Live [`Lease`]s; a collection while any lives removes nothing and is owed.
    leases: std::sync::atomic::AtomicUsize,
    /// A collection was skipped for a lease ([`ImageStore::collection_owed`]).
    owed: std::sync::atomic::AtomicBool,
    /// The records, by name: read from `images/` at open, kept in step with it (so looking
    /// an image up never touches the disk).
    index: Mutex<BTreeMap<String, Image>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

/// The directory name of a layer (`sha256:ab…` → `sha256-ab…`).
fn layer_dir_name(diff_id: &str) -> Result<String, ImageError> {
    let hex = diff_id
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| ImageError::Unsupported(format!("layer id {diff_id:?} (sha256 only)")))?;
    Ok(format!("sha256-{}", hex.to_ascii_lowercase()))
}

fn record_file(name: &str) -> String {
    format!("{:x}.json", Sha256::digest(name.as_bytes()))
}

/// Parse and normalise a reference (`localhost:5000/a/b:1`, `a/b@sha256:…`).
pub fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    reference
        .parse::<Reference>()
        .map_err(|e| ImageError::InvalidReference(reference.to_string(), e.to_string()))
}

impl ImageStore {
    /// Open (or make) the store at `root`; partial work of an earlier run is removed.
    pub fn open(root: &Path, cfg: RegistryConfig) -> Result<ImageStore, ImageError> {
        for sub in ["layers", "images", "tmp", "build-cache"] {
            std::fs::create_dir_all(root.join(sub)).map_err(io(root.join(sub).display()))?;
        }
        let tmp = root.join("tmp");
        for e in std::fs::read_dir(&tmp)
            .map_err(io(tmp.display()))?
            .flatten()
        {
            let p = e.path();
            let gone = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            gone.map_err(io(p.display()))?;
        }
        let client = Client::new(ClientConfig {
            protocol: if cfg.insecure.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(cfg.insecure.clone())
            },
            connect_timeout: Some(cfg.connect_timeout.unwrap_or(Duration::from_secs(10))),
            ..Default::default()
        });
        let mut index = BTreeMap::new();
        let dir = root.join("images");
        for e in std::fs::read_dir(&dir)
            .map_err(io(dir.display()))?
            .flatten()
        {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&p).map_err(io(p.display()))?;
            match serde_json::from_slice::<Image>(&bytes) {
                Ok(img) => {
                    index.insert(img.name.clone(), img);
                }
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "unreadable image record")
                }
            }
        }
        Ok(ImageStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                client,
                cfg,
                inflight: Mutex::new(HashMap::new()),
                records: tokio::sync::RwLock::new(()),
                leases: Default::default(),
                owed: Default::default(),
                index: Mutex::new(index),
            }),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Image>> {
        self.inner.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory of layer `diff_id`.
    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self
            .inner
            .root
            .join("layers")
            .join(layer_dir_name(diff_id)?))
    }

    /// The layer directories of `image`, top-most first (the order overlayfs stacks them).
    pub fn layer_paths(&self, image: &Image) -> Result<Vec<PathBuf>, ImageError> {
        image
            .layers
            .iter()
            .rev()
            .map(|l| self.layer_path(&l.diff_id))
            .collect()
    }

    /// The image stored as `name` (a reference, normalised as by a pull). In memory.
    pub fn get(&self, name: &str) -> Result<Option<Image>, ImageError> {
        if let Some(img) = self.index().get(name) {
            return Ok(Some(img.clone()));
        }
        let name = parse_reference(name)?.whole();
        Ok(self.index().get(&name).cloned())
    }

    /// Every stored image, by name. In memory.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        Ok(self.index().values().cloned().collect())
    }

    /// Forget image `name` (its layers stay until [`ImageStore::collect_garbage`]).
    pub async fn remove(&self, name: &str) -> Result<Image, ImageError> {
        let _w = self.inner.records.write().await;
        let image = self
            .get(name)?
            .ok_or_else(|| ImageError::NotFound(name.to_string()))?;
        let path = self
            .inner
            .root
            .join("images")
            .join(record_file(&image.name));
        tokio::fs::remove_file(&path)
            .await
            .map_err(io(path.display()))?;
        self.index().remove(&image.name);
        info!(image = %image.name, "image removed");
        Ok(image)
    }

    /// A lease on every stored layer until dropped (see [`Lease`]). Taken after any
    /// collection under way has finished, so a layer seen after this stays.
    pub async fn lease(&self) -> Lease {
        let _r = self.inner.records.read().await;
        self.inner
            .leases
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Lease {
            store: self.clone(),
        }
    }

    /// Whether a collection was skipped for a lease since the last one ran.
    pub fn collection_owed(&self) -> bool {
        self.inner.owed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A new, empty scratch directory under `tmp/`.
    pub fn scratch_dir(&self, what: &str) -> Result<ScratchDir, ImageError> {
        let path = self.tmp_path(what);
        std::fs::create_dir(&path).map_err(io(path.display()))?;
        Ok(ScratchDir { path })
    }

    /// The layer the build cache has for `key` (a hex digest of a build step and all before
    /// it), if it is still stored.
    pub fn cache_get(&self, key: &str) -> Option<Layer> {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let p = self
            .inner
            .root
            .join("build-cache")
            .join(format!("{key}.json"));
        let layer: Layer = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        self.layer_path(&layer.diff_id)
            .ok()
            .filter(|d| d.is_dir())
            .map(|_| layer)
    }

    /// Remember that build step `key` made `layer`.
    pub fn cache_put(&self, key: &str, layer: &Layer) -> Result<(), ImageError> {
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::Io(format!("bad cache key {key:?}")));
        }
        let json = serde_json::to_vec(layer)
            .map_err(|e| ImageError::Io(format!("encoding a cache entry: {e}")))?;
        let tmp = self.tmp_path("cache");
        std::fs::write(&tmp, json).map_err(io(tmp.display()))?;
        let dest = self
            .inner
            .root
            .join("build-cache")
            .join(format!("{key}.json"));
        std::fs::rename(&tmp, &dest).map_err(io(dest.display()))
    }

    /// Remove the layers no image names (nothing while a [`Lease`] lives: the collection
    /// is then owed, see [`ImageStore::collection_owed`]), and the build cache's entries
    /// whose layer is gone.
    pub async fn collect_garbage(&self) -> Result<Collected, ImageError> {
        let _w = self.inner.records.write().await;
        if self.inner.leases.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.inner
                .owed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            debug!("collection deferred: a build holds a lease");
            return Ok(Collected::default());
        }
        self.inner
            .owed
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let keep: std::collections::HashSet<String> = self
            .list()?
            .iter()
            .flat_map(|i| i.layers.iter().map(|l| layer_dir_name(&l.diff_id)))
            .collect::<Result<_, _>>()?;
        let root = self.inner.root.clone();
        tokio::task::spawn_blocking(move || {
            let dir = root.join("layers");
            let mut out = Collected::default();
            for e in std::fs::read_dir(&dir)
                .map_err(io(dir.display()))?
                .flatten()
            {
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                out.bytes += disk_usage(&e.path());
                std::fs::remove_dir_all(e.path()).map_err(io(e.path().display()))?;
                out.layers += 1;
            }
            // Cache entries of removed layers would only ever miss.
            let cache = root.join("build-cache");
            for e in std::fs::read_dir(&cache).into_iter().flatten().flatten() {
                let stale = std::fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Layer>(&b).ok())
                    .and_then(|l| layer_dir_name(&l.diff_id).ok())
                    .is_none_or(|dir| !keep.contains(&dir));
                if stale {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            if out.layers > 0 {
                info!(
                    layers = out.layers,
                    bytes = out.bytes,
                    "unused layers removed"
                );
            }
            Ok(out)
        })
        .await
        .map_err(|e| ImageError::Io(format!("collecting: {e}")))?
    }

    /// Pull `reference` (unless the store already has the same manifest) and record it.
    /// `progress` hears about each step.
    pub async fn pull(
        &self,
        reference: &str,
        progress: impl Fn(Progress) + Send + Sync,
    ) -> Result<Image, ImageError> {
        let r = parse_reference(reference)?;
        let name = r.whole();
        let auth = self.auth_for(&r);
        let (manifest, digest, config) = self
            .inner
            .client
            .pull_manifest_and_config(&r, &auth)
            .await
            .map_err(registry_error)?;
        let parsed: oci_spec::image::ImageConfiguration = serde_json::from_str(&config)
            .map_err(|e| ImageError::Corrupt(format!("image config: {e}")))?;
        if parsed.os().to_string() != "linux" {
            return Err(ImageError::Unsupported(format!("image OS {}", parsed.os())));
        }
        let diff_ids = parsed.rootfs().diff_ids().clone();
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Corrupt(format!(
                "the manifest has {} layers, the config {}",
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let layers: Vec<Layer> = manifest
            .layers
            .iter()
            .zip(&diff_ids)
            .map(|(l, d)| Layer {
                diff_id: d.clone(),
                digest: l.digest.clone(),
                size: u64::try_from(l.size).unwrap_or(0),
                media_type: l.media_type.clone(),
            })
            .collect();
        for l in &layers {
            Compression::of_media_type(&l.media_type)?;
            layer_dir_name(&l.diff_id)?;
        }
        progress(Progress::Resolved {
            digest: digest.clone(),
            layers: layers
                .iter()
                .map(|l| {
                    let cached = self.layer_path(&l.diff_id).is_ok_and(|p| p.exists());
                    (l.digest.clone(), l.size, cached)
                })
                .collect(),
        });
        // A collection waits for the pull (its layers have no record until the end).
        let _r = self.inner.records.read().await;
        for (i, layer) in layers.iter().enumerate() {
            // Extracted layers below this one, top-most first (for hard links into them).
            let lowers: Vec<PathBuf> = layers[..i]
                .iter()
                .rev()
                .map(|l| self.layer_path(&l.diff_id))
                .collect::<Result<_, _>>()?;
            self.fetch_layer(&r, layer, lowers, &progress).await?;
            progress(Progress::LayerDone {
                digest: layer.digest.clone(),
            });
        }
        let image = Image {
            name: name.clone(),
            digest,
            config: image_config(&parsed),
            size: layers.iter().map(|l| l.size).sum(),
            layers,
            pulled_at: Utc::now(),
            template: None,
        };
        self.write_record(&image).await?;
        info!(image = %image.name, digest = %image.digest, layers = image.layers.len(), "image pulled");
        Ok(image)
    }

    /// Import the image of the tar stream `body` (see [`ImageStore::import_blocking`]): the
    /// stream is kept in `tmp/` while it arrives, then read.
    pub async fn import<S>(&self, name: &str, mut body: S) -> Result<Image, ImageError>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    {
        parse_reference(name)?;
        let spool = self.tmp_path("upload");
        let written = async {
            let mut f = tokio::fs::File::create(&spool)
                .await
                .map_err(io(spool.display()))?;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| ImageError::Io(format!("the upload: {e}")))?;
                f.write_all(&chunk).await.map_err(io(spool.display()))?;
            }
            f.flush().await.map_err(io(spool.display()))
        }
        .await;
        let result = match written {
            Ok(()) => {
                let (this, name, path) = (self.clone(), name.to_string(), spool.clone());
                tokio::task::spawn_blocking(move || {
                    let f = std::fs::File::open(&path).map_err(io(path.display()))?;
                    this.import_blocking(&name, std::io::BufReader::new(f))
                })
                .await
                .map_err(|e| ImageError::Io(format!("importing: {e}")))?
            }
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&spool).await;
        result
    }

    /// Import the image in `archive` (a tar stream of an OCI image layout or of a `docker
    /// save`) as `name`. Blocking: call it from `spawn_blocking` with a synchronous reader.
    pub fn import_blocking(
        &self,
        name: &str,
        archive: impl std::io::Read,
    ) -> Result<Image, ImageError> {
        let name = parse_reference(name)?.whole();
        let scratch = self.tmp_path("import");
        std::fs::create_dir(&scratch).map_err(io(scratch.display()))?;
        let result = self.import_from(&name, archive, &scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        result
    }

    fn import_from(
        &self,
        name: &str,
        archive: impl std::io::Read,
        scratch: &Path,
    ) -> Result<Image, ImageError> {
        let dir = scratch.join("archive");
        std::fs::create_dir(&dir).map_err(io(dir.display()))?;
        let imported = import::read_archive(archive, &dir)?;
        // Records and layers change under the store's lock (a collection waits).
        let _r = self.inner.records.blocking_read();
        for (i, (layer, blob)) in imported.layers.iter().enumerate() {
            let dest = self.layer_path(&layer.diff_id)?;
            let lock = self.layer_lock(&layer.diff_id);
            let _held = lock.blocking_lock();
            if dest.exists() {
                continue;
            }
            let lowers: Vec<PathBuf> = imported.layers[..i]
                .iter()
                .rev()
                .map(|(l, _)| self.layer_path(&l.diff_id))
                .collect::<Result<_, _>>()?;
            unpack(blob, layer, &self.tmp_path("layer"), &dest, &lowers)?;
        }
        let layers: Vec<Layer> = imported.layers.into_iter().map(|(l, _)| l).collect();
        let image = Image {
            name: name.to_string(),
            digest: imported.digest,
            config: imported.config,
            size: layers.iter().map(|l| l.size).sum(),
            layers,
            pulled_at: Utc::now(),
            template: None,
        };
        self.write_record_blocking(&image)?;
        info!(image = %image.name, layers = image.layers.len(), "image imported");
        Ok(image)
    }

    /// Store `src`, a directory in overlay form (a sandbox's upper directory, or one filled
    /// by [`copy_into_layer`]), as a layer (see the `commit` module docs for the tar it
    /// stands for). The layer is extracted from its own tar into `tmp/`, then renamed into
    /// place under the layer's lock; if the store has that layer already, the copy is
    /// dropped. Blocking (call it from `spawn_blocking`, not from an async task: it takes
    /// the store's locks blocking).
    ///
    /// The layer belongs to no image until [`ImageStore::put_image`] names it: a
    /// [`ImageStore::collect_garbage`] in between removes it.
    pub fn commit_layer_blocking(
        &self,
        src: &Path,
        opts: &CommitOptions,
    ) -> Result<Committed, ImageError> {
        let work = self.tmp_path("commit");
        std::fs::create_dir(&work).map_err(io(work.display()))?;
        let result = self.commit_from(src, opts, &work);
        if work.exists() {
            let _ = std::fs::remove_dir_all(&work);
        }
        result
    }

    fn commit_from(
        &self,
        src: &Path,
        opts: &CommitOptions,
        work: &Path,
    ) -> Result<Committed, ImageError> {
        let (extracted, entries) = commit::commit_into(src, opts, work)?;
        let committed = Committed::new(&extracted, entries);
        let diff_id = &committed.layer.diff_id;
        let dest = self.layer_path(diff_id)?;
        // As an import: records and layers change under the store's lock.
        let _r = self.inner.records.blocking_read();
        let lock = self.layer_lock(diff_id);
        let _held = lock.blocking_lock();
        if dest.exists() {
            debug!(layer = %diff_id, "committed layer already stored");
        } else {
            std::fs::rename(work, &dest).map_err(io(dest.display()))?;
            info!(layer = %diff_id, entries, bytes = extracted.tar_bytes, "layer committed");
        }
        Ok(committed)
    }

    /// [`ImageStore::commit_layer_blocking`] on a blocking thread.
    pub async fn commit_layer(
        &self,
        src: PathBuf,
        opts: CommitOptions,
    ) -> Result<Committed, ImageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.commit_layer_blocking(&src, &opts))
            .await
            .map_err(|e| ImageError::Io(format!("committing: {e}")))?
    }

    /// Record `image` (as a pull or an import does; one of the same name is replaced) under
    /// its name exactly as given (a template's name is its own, not a registry reference:
    /// [`ImageStore::get`] finds it by that name). Every layer it names must be stored already
    /// ([`ImageStore::commit_layer`]): otherwise [`ImageError::NotFound`].
    pub async fn put_image(&self, image: Image) -> Result<(), ImageError> {
        if image.name.is_empty() || image.name.contains('\0') {
            return Err(ImageError::InvalidReference(
                image.name.clone(),
                "an empty name".into(),
            ));
        }
        // A collection waits: the layers checked here are still there when it runs.
        let _r = self.inner.records.read().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            for l in &image.layers {
                if !this.layer_path(&l.diff_id)?.is_dir() {
                    return Err(ImageError::NotFound(format!(
                        "layer {} of {}",
                        l.diff_id, image.name
                    )));
                }
            }
            this.write_record_blocking(&image)?;
            info!(image = %image.name, layers = image.layers.len(), "image recorded");
            Ok(())
        })
        .await
        .map_err(|e| ImageError::Io(format!("recording the image: {e}")))?
    }

    fn write_record_blocking(&self, image: &Image) -> Result<(), ImageError> {
        let json = serde_json::to_vec_pretty(image)
            .map_err(|e| ImageError::Io(format!("encoding the record: {e}")))?;
        let tmp = self.tmp_path("record");
        std::fs::write(&tmp, &json).map_err(io(tmp.display()))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(tmp.display()))?;
        let path = self
            .inner
            .root
            .join("images")
            .join(record_file(&image.name));
        std::fs::rename(&tmp, &path).map_err(io(path.display()))?;
        self.index().insert(image.name.clone(), image.clone());
        Ok(())
    }

    fn auth_for(&self, r: &Reference) -> RegistryAuth {
        match self.inner.cfg.auth.get(r.resolve_registry()) {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    async fn write_record(&self, image: &Image) -> Result<(), ImageError> {
        let (this, image) = (self.clone(), image.clone());
        tokio::task::spawn_blocking(move || this.write_record_blocking(&image))
            .await
            .map_err(|e| ImageError::Io(format!("writing the record: {e}")))?
    }

    fn tmp_path(&self, what: &str) -> PathBuf {
        let n: u64 = rand::random();
        self.inner.root.join("tmp").join(format!("{what}-{n:016x}"))
    }

    /// Make sure layer `layer` is stored: download its blob (digest checked), extract it
    /// (diff_id checked), rename it into place. One fetch per layer at a time.
    async fn fetch_layer(
        &self,
        r: &Reference,
        layer: &Layer,
        lowers: Vec<PathBuf>,
        progress: &(impl Fn(Progress) + Send + Sync),
    ) -> Result<(), ImageError> {
        let dest = self.layer_path(&layer.diff_id)?;
        let lock = self.layer_lock(&layer.diff_id);
        let _held = lock.lock().await;
        if dest.exists() {
            debug!(layer = %layer.diff_id, "layer already stored");
            return Ok(());
        }
        let blob = self.tmp_path("blob");
        let result = self.download(r, layer, &blob, progress).await;
        let result = match result {
            Ok(()) => {
                let work = self.tmp_path("layer");
                let (blob2, layer2, dest2) = (blob.clone(), layer.clone(), dest.clone());
                tokio::task::spawn_blocking(move || unpack(&blob2, &layer2, &work, &dest2, &lowers))
                    .await
                    .map_err(|e| ImageError::Io(format!("extracting: {e}")))?
            }
            Err(e) => Err(e),
        };
        let _ = tokio::fs::remove_file(&blob).await;
        result
    }

    /// The lock of layer `diff_id`: whoever fetches or imports it holds it, so a second
    /// comer waits and then finds the layer stored. Kept for the process's life (one small
    /// entry per layer ever stored), so no two fetches of a layer ever run at once.
    fn layer_lock(&self, diff_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.entry(diff_id.to_string()).or_default().clone()
    }

    async fn download(
        &self,
        r: &Reference,
        layer: &Layer,
        to: &Path,
        progress: &(impl Fn(Progress) + Send + Sync),
    ) -> Result<(), ImageError> {
        let desc = oci_client::manifest::OciDescriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: i64::try_from(layer.size).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let mut stream = self
            .inner
            .client
            .pull_blob_stream(r, &desc)
            .await
            .map_err(registry_error)?;
        let mut file = tokio::fs::File::create(to)
            .await
            .map_err(io(to.display()))?;
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let mut last = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                // The client checks the digest as the bytes stream and says so in an I/O
                // error carrying its own digest error.
                let digest = e
                    .get_ref()
                    .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>());
                if digest {
                    ImageError::Corrupt(format!("blob {}: {e}", layer.digest))
                } else {
                    ImageError::Registry(format!("reading a blob: {e}"))
                }
            })?;
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io(to.display()))?;
            done += chunk.len() as u64;
            if done - last >= 1 << 20 || done == layer.size {
                last = done;
                progress(Progress::Layer {
                    digest: layer.digest.clone(),
                    done,
                    total: layer.size,
                });
            }
        }
        file.flush().await.map_err(io(to.display()))?;
        let got = format!("sha256:{:x}", hasher.finalize());
        if got != layer.digest {
            return Err(ImageError::Corrupt(format!(
                "blob {} arrived as {got} ({done} bytes)",
                layer.digest
            )));
        }
        Ok(())
    }
}

/// The parts of an image configuration a sandbox uses.
pub(crate) fn image_config(parsed: &oci_spec::image::ImageConfiguration) -> ImageConfig {
    let c = parsed.config().clone().unwrap_or_default();
    ImageConfig {
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
        user: c.user().clone().filter(|u| !u.is_empty()),
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        labels: c.labels().clone().unwrap_or_default().into_iter().collect(),
        exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
    }
}

/// Extract `blob` into `work` and rename it to `dest` if its diff_id is the expected one.
fn unpack(
    blob: &Path,
    layer: &Layer,
    work: &Path,
    dest: &Path,
    lowers: &[PathBuf],
) -> Result<(), ImageError> {
    let compression = Compression::of_media_type(&layer.media_type)?;
    std::fs::create_dir(work).map_err(io(work.display()))?;
    let result = std::fs::File::open(blob)
        .map_err(io(blob.display()))
        .and_then(|f| extract(std::io::BufReader::new(f), compression, work, lowers));
    let done = match result {
        Ok(x) if x.diff_id == layer.diff_id => {
            // The layer's root is readable by all, as the image's own `/` usually is.
            std::fs::rename(work, dest).map_err(io(dest.display()))
        }
        Ok(x) => Err(ImageError::Corrupt(format!(
            "layer {} unpacks to {}, the config says {}",
            layer.digest, x.diff_id, layer.diff_id
        ))),
        Err(e) => Err(e),
    };
    if done.is_err() {
        let _ = std::fs::remove_dir_all(work);
    }
    done
}

fn registry_error(e: oci_client::errors::OciDistributionError) -> ImageError {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::AuthenticationFailure(m) => ImageError::Auth(m),
        E::UnauthorizedError { url } => ImageError::Auth(format!("unauthorized at {url}")),
        E::DigestError(d) => ImageError::Corrupt(d.to_string()),
        E::ImageManifestNotFoundError(m) => ImageError::NotFound(m),
        E::RegistryError { envelope, url }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                )
            }) =>
        {
            ImageError::NotFound(format!("the registry has no such image ({url})"))
        }
        other => ImageError::Registry(other.to_string()),
    }
}

/// Bytes of the files below `path` (not following symlinks).
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    total
}
