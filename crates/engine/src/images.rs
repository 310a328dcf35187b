//! Images in the engine: the names a create may use (the runtime's built-in `host`, and the
//! OCI images of the image store), pulling a missing one, the layers a runtime spec gets,
//! and what an image's config gives its commands (environment, working directory, user).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::info;
use warren_api::{Image, ImageConfigView, SandboxState};
use warren_image::{ImageError, ImageStore, Progress};

use crate::{Engine, EngineError};
use warren_runtime::RuntimeError;

/// Whether a create may pull an image the store does not have (`warren serve --pull`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull it first (the default).
    #[default]
    Missing,
    /// Refuse: 404 `image_not_found`.
    Never,
}

/// What commands in a sandbox of an OCI image get from its config.
#[derive(Debug, Clone, Default)]
pub(crate) struct ImageDefaults {
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub user: Option<ImageUser>,
}

/// The image's `User`, resolved against its own `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: String,
}

pub(crate) fn image_error(e: ImageError) -> EngineError {
    match e {
        ImageError::InvalidReference(..) => EngineError::InvalidRequest(e.to_string()),
        ImageError::NotFound(_) => EngineError::ImageNotFound(e.to_string()),
        ImageError::Registry(_) | ImageError::Auth(_) | ImageError::Corrupt(_) => {
            EngineError::Registry(e.to_string())
        }
        ImageError::Unsupported(_) | ImageError::BuildInput(_) => {
            EngineError::InvalidRequest(e.to_string())
        }
        ImageError::Io(_) => EngineError::Store(e.to_string()),
    }
}

pub(crate) fn view(i: &warren_image::Image) -> Image {
    Image {
        name: i.name.clone(),
        digest: Some(i.digest.clone()),
        size_bytes: i.size,
        layers: i.layers.len(),
        config: ImageConfigView {
            env: i.config.env.clone(),
            working_dir: i.config.working_dir.clone(),
            user: i.config.user.clone(),
            entrypoint: i.config.entrypoint.clone(),
            cmd: i.config.cmd.clone(),
        },
        builtin: false,
        pulled_at: Some(i.pulled_at),
    }
}

/// The top-most regular `rel` file of `layers` (top-most first), honouring whiteouts.
fn read_from_layers(layers: &[PathBuf], rel: &str) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    for l in layers {
        let p = l.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() => return None,
            Ok(m) if m.is_file() => return std::fs::read_to_string(&p).ok(),
            _ => {}
        }
    }
    None
}

/// Resolve an image's `User` (`name`, `uid`, `name:group`, `uid:gid`) against its
/// `/etc/passwd` and `/etc/group`.
pub(crate) fn resolve_user(spec: &str, layers: &[PathBuf]) -> Result<ImageUser, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_from_layers(layers, "etc/passwd").unwrap_or_default();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && (f[0] == user || f[2] == user)).then(|| {
            (
                f[0].to_string(),
                f[2].parse::<u32>().ok(),
                f[3].parse::<u32>().ok(),
                f[5].to_string(),
            )
        })
    });
    let (name, uid, gid, home) = match (entry, user.parse::<u32>()) {
        (Some((n, Some(u), Some(g), h)), _) => (n, u, g, h),
        (None, Ok(uid)) => (user.to_string(), uid, uid, "/".to_string()),
        _ => return Err(format!("user {user:?} is not in the image's /etc/passwd")),
    };
    let gid = match group {
        None => gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read_from_layers(layers, "etc/group")
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g)
                        .then(|| f[2].parse::<u32>().ok())
                        .flatten()
                })
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
    };
    Ok(ImageUser {
        uid,
        gid,
        name,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

impl Engine {
    pub(crate) fn image_store(&self) -> Option<&ImageStore> {
        self.inner.config.images.as_ref()
    }

    pub(crate) fn is_builtin_image(&self, name: &str) -> bool {
        self.builtin(name)
    }

    /// Drop what was read of image `name`'s config (it was replaced or removed).
    pub(crate) fn forget_image_defaults(&self, name: &str) {
        self.defaults_cache().remove(name);
    }

    fn builtin(&self, name: &str) -> bool {
        self.inner.runtime.info().images.iter().any(|i| i == name)
    }

    /// The names a create may use, for error messages.
    fn known_images(&self) -> String {
        let mut names = self.inner.runtime.info().images;
        if let Some(s) = self.image_store() {
            names.extend(
                s.list()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| i.name)
                    .filter(|n| !n.starts_with(crate::templates::BUILD_PREFIX)),
            );
        }
        names.join(", ")
    }

    fn not_found(&self, name: &str) -> EngineError {
        EngineError::ImageNotFound(format!(
            "image {name} not found (this server has: {})",
            self.known_images()
        ))
    }

    /// The stored name a create's `image` stands for, pulling it first when it is missing
    /// and the pull policy allows.
    pub(crate) async fn resolve_image(&self, name: &str) -> Result<String, EngineError> {
        if self.builtin(name) {
            return Ok(name.to_string());
        }
        let Some(store) = self.image_store() else {
            return Err(self.not_found(name));
        };
        if let Some(img) = store.get(name).map_err(image_error)? {
            return Ok(img.name);
        }
        if self.inner.config.pull_policy == PullPolicy::Never {
            return Err(self.not_found(name));
        }
        info!(image = name, "pulling a missing image for a create");
        Ok(self.pull_image(name, |_| {}).await?.name)
    }

    /// The stored name `name` stands for, without pulling (pools).
    pub(crate) fn known_image(&self, name: &str) -> Result<String, EngineError> {
        if self.builtin(name) {
            return Ok(name.to_string());
        }
        match self.image_store().map(|s| s.get(name)) {
            Some(Ok(Some(img))) => Ok(img.name),
            Some(Err(e)) => Err(image_error(e)),
            _ => Err(self.not_found(name)),
        }
    }

    /// The layer directories of image `name`, top-most first (empty for a built-in one).
    pub(crate) fn image_layers(&self, name: &str) -> Result<Vec<PathBuf>, EngineError> {
        if self.builtin(name) {
            return Ok(Vec::new());
        }
        let store = self.image_store().ok_or_else(|| self.not_found(name))?;
        let img = store
            .get(name)
            .map_err(image_error)?
            .ok_or_else(|| self.not_found(name))?;
        store.layer_paths(&img).map_err(image_error)
    }

    /// What image `name`'s config gives commands (`None` for a built-in image). Read once.
    pub(crate) fn image_defaults(&self, name: &str) -> Option<Arc<ImageDefaults>> {
        if self.builtin(name) {
            return None;
        }
        if let Some(d) = self.defaults_cache().get(name) {
            return Some(d.clone());
        }
        let store = self.image_store()?;
        let img = store.get(name).ok()??;
        let layers = store.layer_paths(&img).ok()?;
        let env = img
            .config
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let user = img.config.user.as_deref().and_then(|u| {
            resolve_user(u, &layers)
                .inspect_err(|e| tracing::warn!(image = name, error = %e, "image user"))
                .ok()
        });
        let d = Arc::new(ImageDefaults {
            env,
            cwd: img.config.working_dir.clone(),
            user,
        });
        self.defaults_cache().insert(name.to_string(), d.clone());
        Some(d)
    }

    fn defaults_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ImageDefaults>>> {
        self.inner
            .image_defaults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// An image's `WorkingDir` is made (root's, 0755) in a new sandbox where the image
    /// lacks it, as Docker does.
    pub(crate) async fn make_workdir(&self, id: &str, image: &str) {
        let Some(dir) = self.image_defaults(image).and_then(|d| d.cwd.clone()) else {
            return;
        };
        if dir == "/" {
            return;
        }
        let Ok(sid) = crate::sandbox_id(id) else {
            return;
        };
        let op = warren_runtime::FileOp::Mkdir {
            path: dir.clone(),
            parents: true,
            mode: Some(0o755),
            uid: 0,
            gid: 0,
        };
        match self.agent(&sid).file_op(op).await {
            Ok(_) => {}
            Err(RuntimeError::File {
                code: warren_runtime::AgentCode::Exists,
                ..
            }) => {}
            Err(e) => {
                tracing::warn!(sandbox = %id, %dir, error = %e, "making the image's WorkingDir")
            }
        }
    }

    /// Pull `reference` into the store; `progress` hears about each layer.
    pub async fn pull_image(
        &self,
        reference: &str,
        progress: impl Fn(Progress) + Send + Sync,
    ) -> Result<Image, EngineError> {
        self.check_open()?;
        if self.builtin(reference) {
            return Err(EngineError::InvalidRequest(format!(
                "{reference} is built in; it cannot be pulled"
            )));
        }
        let store = self
            .image_store()
            .ok_or(EngineError::NotSupported("images"))?;
        let img = store.pull(reference, progress).await.map_err(image_error)?;
        self.defaults_cache().remove(&img.name);
        Ok(view(&img))
    }

    /// Import the image of the tar stream `body` (an OCI image layout or a `docker save`
    /// archive) as `name`.
    pub async fn import_image<S>(&self, name: &str, body: S) -> Result<Image, EngineError>
    where
        S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
    {
        self.check_open()?;
        if self.builtin(name) {
            return Err(EngineError::InvalidRequest(format!(
                "{name} is built in; import under another name"
            )));
        }
        let store = self
            .image_store()
            .ok_or(EngineError::NotSupported("images"))?;
        let img = store.import(name, body).await.map_err(|e| match e {
            ImageError::Corrupt(m) => EngineError::InvalidRequest(m),
            e => image_error(e),
        })?;
        self.defaults_cache().remove(&img.name);
        Ok(view(&img))
    }

    /// Every image: the built-in ones, then the store's.
    pub fn list_images(&self) -> Result<Vec<Image>, EngineError> {
        let mut out: Vec<Image> = self
            .inner
            .runtime
            .info()
            .images
            .into_iter()
            .map(|name| Image {
                name,
                digest: None,
                size_bytes: 0,
                layers: 0,
                config: ImageConfigView::default(),
                builtin: true,
                pulled_at: None,
            })
            .collect();
        if let Some(s) = self.image_store() {
            out.extend(
                s.list()
                    .map_err(image_error)?
                    .iter()
                    .filter(|i| !i.name.starts_with(crate::templates::BUILD_PREFIX))
                    .map(view),
            );
        }
        Ok(out)
    }

    pub fn get_image(&self, name: &str) -> Result<Image, EngineError> {
        self.list_images()?
            .into_iter()
            .find(|i| i.name == name)
            .or_else(|| {
                let s = self.image_store()?;
                s.get(name).ok().flatten().map(|i| view(&i))
            })
            .ok_or_else(|| self.not_found(name))
    }

    /// Delete image `name` and the layers no other image uses; 409 `image_in_use` while a
    /// sandbox or pool uses it.
    /// 409 `image_in_use` while a sandbox (not being deleted), a snapshot or a pool uses
    /// image `name`.
    pub(crate) fn check_image_unused(&self, name: &str) -> Result<(), EngineError> {
        let users: Vec<String> = self
            .map()
            .values()
            .filter(|e| e.record.image == name && e.record.state != SandboxState::Deleting)
            .map(|e| e.record.id.clone())
            .take(5)
            .collect();
        if !users.is_empty() {
            return Err(EngineError::ImageInUse(format!(
                "image {name} is used by sandboxes {}",
                users.join(", ")
            )));
        }
        let snapshot = self
            .snapshots_map()
            .values()
            .find(|s| s.image.as_deref() == Some(name))
            .map(|s| s.id.clone());
        if let Some(snap) = snapshot {
            return Err(EngineError::ImageInUse(format!(
                "image {name} is used by snapshot {snap} (a restore needs it)"
            )));
        }
        if let Some(pool) = self.pool_using_image(name) {
            return Err(EngineError::ImageInUse(format!(
                "image {name} is used by pool {pool}"
            )));
        }
        Ok(())
    }

    pub async fn delete_image(&self, name: &str) -> Result<(), EngineError> {
        if self.builtin(name) {
            return Err(EngineError::InvalidRequest(format!(
                "{name} is built in; it cannot be deleted"
            )));
        }
        let store = self.image_store().ok_or_else(|| self.not_found(name))?;
        let img = store
            .get(name)
            .map_err(image_error)?
            .ok_or_else(|| self.not_found(name))?;
        self.check_image_unused(&img.name)?;
        store.remove(&img.name).await.map_err(image_error)?;
        self.defaults_cache().remove(&img.name);
        store.collect_garbage().await.map_err(image_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_against_the_images_files() {
        let top = tempfile_dir("top");
        let base = tempfile_dir("base");
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(
            base.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(base.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = vec![top.clone(), base.clone()];
        let app = resolve_user("app", &layers).unwrap();
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1001, "/home/app")
        );
        assert_eq!(resolve_user("1000", &layers).unwrap().name, "app");
        assert_eq!(resolve_user("app:staff", &layers).unwrap().gid, 50);
        assert_eq!(resolve_user("4242:7", &layers).unwrap().gid, 7);
        assert!(resolve_user("nobody-here", &layers).is_err());
        // A whiteout in a higher layer hides the file.
        std::fs::create_dir_all(top.join("etc")).unwrap();
        let made = std::process::Command::new("mknod")
            .arg(top.join("etc/passwd"))
            .args(["c", "0", "0"])
            .status()
            .unwrap();
        assert!(made.success());
        assert!(resolve_user("app", &layers).is_err());
        let _ = std::fs::remove_dir_all(&top);
        let _ = std::fs::remove_dir_all(&base);
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "warren-image-user-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
