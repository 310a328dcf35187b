//! The image store against a real registry (Debian's `docker-registry` on loopback) with
//! images built offline by the test fixture (`warren_testkit::registry`).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use warren_image::{ImageError, ImageStore, Progress, RegistryConfig};
use warren_testkit::registry::{copy_image, push_test_images, Registry, BB_ENV, BB_LAYERS};

fn store(root: &Path, reg: &Registry) -> ImageStore {
    ImageStore::open(
        root,
        RegistryConfig {
            insecure: vec![reg.host()],
            ..Default::default()
        },
    )
    .expect("open the store")
}

fn layer_count(root: &Path) -> usize {
    std::fs::read_dir(root.join("layers")).unwrap().count()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn pull_verify_share_and_collect() {
    let mut reg = Registry::start().expect("registry");
    let images = push_test_images(&reg).expect("test images");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    rt().block_on(async {
        let s = store(root, &reg);
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = events.clone();
        let bb = s
            .pull(&images.bb, move |p| ev.lock().unwrap().push(p))
            .await
            .expect("pull bb");
        assert_eq!(bb.layers.len(), BB_LAYERS);
        assert_eq!(bb.config.env, BB_ENV.iter().map(|e| e.to_string()).collect::<Vec<_>>());
        assert_eq!(bb.config.working_dir.as_deref(), Some("/opt"));
        assert_eq!(bb.config.user.as_deref(), Some("app"));
        assert_eq!(bb.config.entrypoint, vec!["/bin/sh"]);
        let events = events.lock().unwrap().clone();
        assert!(matches!(events.first(), Some(Progress::Resolved { layers, .. }) if layers.len() == BB_LAYERS));
        let done = events
            .iter()
            .filter(|e| matches!(e, Progress::LayerDone { .. }))
            .count();
        assert_eq!(done, BB_LAYERS);

        // The layers are in overlay form: layer 2 hides /opt/b.txt with a whiteout device,
        // layer 3 makes /opt/dir opaque.
        let paths = s.layer_paths(&bb).unwrap();
        assert_eq!(paths.len(), 3);
        let (top, middle, bottom) = (&paths[0], &paths[1], &paths[2]);
        assert!(bottom.join("bin/busybox").is_file());
        assert_eq!(std::fs::read(bottom.join("opt/a.txt")).unwrap(), b"hello\n");
        let wh = std::fs::symlink_metadata(middle.join("opt/b.txt")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        let mut buf = [0u8; 4];
        let n = rustix::fs::getxattr(top.join("opt/dir"), "trusted.overlay.opaque", &mut buf)
            .unwrap();
        assert_eq!(&buf[..n], b"y");
        assert_eq!(
            std::fs::metadata(bottom.join("home/app")).unwrap().uid(),
            1000,
            "owners kept"
        );

        // The zstd copy has other blobs but the same tars: nothing new is stored.
        let z = s.pull(&images.bb_zstd, |_| {}).await.expect("pull zstd");
        assert_eq!(
            z.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>(),
            bb.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()
        );
        assert_ne!(z.layers[0].digest, bb.layers[0].digest);
        assert_eq!(layer_count(root), 3);

        // Two pulls of one image at once share the work and agree.
        let (a, b) = tokio::join!(s.pull(&images.big, |_| {}), s.pull(&images.big, |_| {}));
        let (a, b) = (a.expect("big"), b.expect("big again"));
        assert_eq!(a.digest, b.digest);
        // Its base layer is bb's: one new layer.
        assert_eq!(layer_count(root), 4);
        assert_eq!(s.list().unwrap().len(), 3);
        assert_eq!(s.get(&images.bb).unwrap().unwrap().digest, bb.digest);

        // Removing images and collecting keeps what the rest use.
        s.remove(&images.bb).await.unwrap();
        assert_eq!(s.collect_garbage().await.unwrap().layers, 0);
        s.remove(&images.bb_zstd).await.unwrap();
        let gone = s.collect_garbage().await.unwrap();
        assert_eq!(gone.layers, 2);
        assert!(gone.bytes > 0);
        assert_eq!(layer_count(root), 2);
        assert!(matches!(
            s.remove(&images.bb).await,
            Err(ImageError::NotFound(_))
        ));

        // A blob changed in the registry is refused, and nothing of it is kept.
        let victim = &bb.layers[2];
        let blob = reg.blob_path(&victim.digest);
        let mut bytes = std::fs::read(&blob).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&blob, &bytes).unwrap();
        let err = s.pull(&images.bb, |_| {}).await.unwrap_err();
        assert!(matches!(err, ImageError::Corrupt(_)), "{err}");
        assert!(s.get(&images.bb).unwrap().is_none());
        assert!(!s.layer_path(&victim.diff_id).unwrap().exists());
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);

        // An unknown tag and a registry that is down are typed errors.
        let missing = images.bb.replace(":latest", ":nope");
        assert!(matches!(
            s.pull(&missing, |_| {}).await,
            Err(ImageError::NotFound(_))
        ));
        reg.stop();
        let err = s.pull(&images.bb_zstd, |_| {}).await.unwrap_err();
        assert!(matches!(err, ImageError::Registry(_)), "{err}");
        assert!(matches!(
            s.pull("not a reference!", |_| {}).await,
            Err(ImageError::InvalidReference(..))
        ));
    });
    // What a killed pull left in tmp/ is gone at the next open.
    std::fs::create_dir_all(root.join("tmp/layer-dead/usr")).unwrap();
    std::fs::write(root.join("tmp/blob-dead"), b"partial").unwrap();
    let _s = store(root, &reg);
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
}

/// `skopeo copy` of a pushed image to an OCI archive and to a `docker save` archive; both
/// import to the pulled image's layers, and a changed byte is refused.
#[test]
fn oci_and_docker_archives_import() {
    let reg = Registry::start().expect("registry");
    let images = push_test_images(&reg).expect("test images");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let archives = dir.path().join("archives");
    std::fs::create_dir_all(&archives).unwrap();
    let copy = |dest: String| {
        copy_image(&images.bb, &dest).unwrap_or_else(|e| panic!("{dest}: {e}"));
    };
    let oci = archives.join("bb-oci.tar");
    let docker = archives.join("bb-docker.tar");
    copy(format!("oci-archive:{}", oci.display()));
    copy(format!(
        "docker-archive:{}:warren/bb:latest",
        docker.display()
    ));
    rt().block_on(async {
        let s = store(&root, &reg);
        let pulled = s.pull(&images.bb, |_| {}).await.unwrap();
        let ids = |i: &warren_image::Image| {
            i.layers
                .iter()
                .map(|l| l.diff_id.clone())
                .collect::<Vec<_>>()
        };
        for (name, path) in [("imported/oci:1", &oci), ("imported/docker:1", &docker)] {
            let (s2, path2, name2) = (s.clone(), path.clone(), name.to_string());
            let img = tokio::task::spawn_blocking(move || {
                s2.import_blocking(&name2, std::fs::File::open(path2).unwrap())
            })
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(ids(&img), ids(&pulled), "{name}");
            assert_eq!(img.config, pulled.config, "{name}");
            assert!(s.get(name).unwrap().is_some());
        }
        // Still three layer directories: the imports share the pulled layers.
        assert_eq!(layer_count(&root), 3);

        // A changed byte in a blob of the OCI archive: refused, nothing recorded.
        let mut bytes = std::fs::read(&oci).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x55;
        let bad = archives.join("bad.tar");
        std::fs::write(&bad, &bytes).unwrap();
        let s2 = s.clone();
        let err = tokio::task::spawn_blocking(move || {
            s2.import_blocking("imported/bad:1", std::fs::File::open(bad).unwrap())
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(matches!(err, ImageError::Corrupt(_)), "{err}");
        assert!(s.get("imported/bad:1").unwrap().is_none());
        assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
        // Not an image archive at all.
        let s2 = s.clone();
        let err = tokio::task::spawn_blocking(move || s2.import_blocking("x/y:1", &b"junk"[..]))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, ImageError::Corrupt(_)), "{err}");
    });
}
