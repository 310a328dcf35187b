//! Importing an image from a tar stream: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`, as `skopeo copy … oci-archive:` writes it) or a `docker save` archive
//! (`manifest.json` naming a config file and layer tars). Blocking: call it from
//! `spawn_blocking`.
//!
//! The archive is unpacked into a scratch directory first (`tar` refuses entries that leave
//! it); every blob named by a digest is checked against it, every layer's tar against the
//! config's `diff_id`, before the layer is stored; the image is recorded only after all its
//! layers are.

use std::fs;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::extract::Compression;
use crate::{ImageConfig, ImageError, Layer};

/// What an archive holds, ready to be stored.
pub(crate) struct Imported {
    /// `sha256:…` of its manifest (OCI) or of its config (docker save, which has none).
    pub digest: String,
    pub config: ImageConfig,
    /// Bottom-most first, each with the file holding its blob.
    pub layers: Vec<(Layer, PathBuf)>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: u64,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn corrupt(what: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt(format!("import: {what}"))
}

fn sha256_file(path: &Path) -> Result<String, ImageError> {
    let mut f = fs::File::open(path).map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
    Ok(format!("sha256:{:x}", h.finalize()))
}

/// `dir/blobs/sha256/<hex>` of `digest`, checked against it.
fn blob(dir: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| corrupt(format!("digest {digest:?} (sha256 only)")))?;
    let path = dir.join("blobs/sha256").join(hex);
    let got = sha256_file(&path)?;
    if got != digest {
        return Err(corrupt(format!("blob {digest} holds {got}")));
    }
    Ok(path)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ImageError> {
    let bytes = fs::read(path).map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("{}: {e}", path.display())))
}

/// The compression of a file, from its first bytes (docker save's layers carry no type).
fn sniff(path: &Path) -> Result<Compression, ImageError> {
    let mut f = fs::File::open(path).map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(corrupt)?;
    f.rewind().map_err(corrupt)?;
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    })
}

fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// Unpack `archive` into `scratch` (an empty directory) and read the image in it.
pub(crate) fn read_archive(archive: impl Read, scratch: &Path) -> Result<Imported, ImageError> {
    let mut tar = tar::Archive::new(archive);
    tar.set_preserve_permissions(false);
    tar.set_overwrite(true);
    for entry in tar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            // Layouts hold files and directories only; links could point anywhere.
            continue;
        }
        if !entry.unpack_in(scratch).map_err(corrupt)? {
            return Err(corrupt("an entry leaves the archive"));
        }
    }
    if scratch.join("index.json").is_file() {
        read_oci(scratch)
    } else if scratch.join("manifest.json").is_file() {
        read_docker(scratch)
    } else {
        Err(corrupt(
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ))
    }
}

fn config_of(path: &Path) -> Result<(ImageConfig, Vec<String>), ImageError> {
    let parsed: oci_spec::image::ImageConfiguration = read_json(path)?;
    if parsed.os().to_string() != "linux" {
        return Err(ImageError::Unsupported(format!("image OS {}", parsed.os())));
    }
    Ok((
        crate::image_config(&parsed),
        parsed.rootfs().diff_ids().clone(),
    ))
}

fn read_oci(dir: &Path) -> Result<Imported, ImageError> {
    let index: Index = read_json(&dir.join("index.json"))?;
    let [desc] = index.manifests.as_slice() else {
        return Err(corrupt(format!(
            "the layout holds {} manifests; import one image at a time",
            index.manifests.len()
        )));
    };
    if desc.media_type.contains("index") || desc.media_type.contains("manifest.list") {
        return Err(ImageError::Unsupported(
            "a multi-platform index inside the layout".into(),
        ));
    }
    let manifest: Manifest = read_json(&blob(dir, &desc.digest)?)?;
    let (config, diff_ids) = config_of(&blob(dir, &manifest.config.digest)?)?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(corrupt(
            "the manifest and the config disagree on the layers",
        ));
    }
    let layers = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(l, diff_id)| {
            Compression::of_media_type(&l.media_type)?;
            Ok((
                Layer {
                    diff_id,
                    digest: l.digest.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                },
                blob(dir, &l.digest)?,
            ))
        })
        .collect::<Result<_, ImageError>>()?;
    Ok(Imported {
        digest: desc.digest.clone(),
        config,
        layers,
    })
}

fn read_docker(dir: &Path) -> Result<Imported, ImageError> {
    let entries: Vec<DockerEntry> = read_json(&dir.join("manifest.json"))?;
    let [entry] = entries.as_slice() else {
        return Err(corrupt(format!(
            "the archive holds {} images; import one at a time",
            entries.len()
        )));
    };
    let inside = |rel: &str| -> Result<PathBuf, ImageError> {
        let p = Path::new(rel);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(corrupt(format!("path {rel:?} leaves the archive")));
        }
        Ok(dir.join(p))
    };
    let config_path = inside(&entry.config)?;
    let (config, diff_ids) = config_of(&config_path)?;
    if diff_ids.len() != entry.layers.len() {
        return Err(corrupt(
            "manifest.json and the config disagree on the layers",
        ));
    }
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(rel, diff_id)| {
            let path = inside(rel)?;
            let c = sniff(&path)?;
            let size = fs::metadata(&path).map_err(corrupt)?.len();
            Ok((
                Layer {
                    diff_id,
                    digest: sha256_file(&path)?,
                    size,
                    media_type: media_type(c).to_string(),
                },
                path,
            ))
        })
        .collect::<Result<_, ImageError>>()?;
    Ok(Imported {
        digest: sha256_file(&config_path)?,
        config,
        layers,
    })
}
