//! Paths: hostile aliases are refused at push time (and by `create_artifact`) with an
//! error naming them, nothing is ever written outside the root, and distinct artifacts
//! never share a path.

mod support;

use artifact_coordinator::{
    ArtifactDescription, ArtifactManager, ArtifactStatus, ArtifactType, JobId,
};
use support::{Fixture, Resource, body, files_under, image, names_alias};

/// The aliases no store may accept.
fn hostile_aliases() -> Vec<String> {
    vec![
        String::new(),
        ".".into(),
        "..".into(),
        "a/b".into(),
        "../escape".into(),
        "../../../../../../tmp/escape".into(),
        "/etc/passwd".into(),
        "..\\x".into(),
        "a\\b".into(),
        "a\0b".into(),
        "x".repeat(256),
        "é".repeat(128), // 256 bytes
    ]
}

/// Lists everything (files and directories) next to the root, to prove that nothing was
/// created outside it.
fn siblings(fx: &Fixture) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(fx.dir.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every hostile alias is refused by `push_artifact` with an error naming it; no status
/// is sent, no row is recorded, no request is made, nothing appears outside the root.
#[tokio::test]
async fn hostile_aliases_are_refused_at_push() {
    let fx = Fixture::new().await;
    fx.server.serve("/f", Resource::new(&b"payload"[..]));
    let before = siblings(&fx);
    for alias in hostile_aliases() {
        for kind in [ArtifactType::Image, ArtifactType::Test] {
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let desc = ArtifactDescription::new(JobId(1), kind, alias.clone(), fx.server.url("/f"));
            let err = fx
                .store
                .push_artifact(desc, tx)
                .await
                .expect_err(&format!("alias {alias:?} must be refused"));
            let text = err.to_string();
            assert!(
                names_alias(&text, &alias),
                "error for {alias:?} does not name it: {text}"
            );
            assert!(rx.try_recv().is_err(), "no status for a refused push");
        }
    }
    assert_eq!(fx.server.hits("/f"), 0);
    assert!(fx.all_rows().await.is_empty());
    assert_eq!(siblings(&fx), before);
    let files = files_under(&fx.root().join("jobs"));
    assert!(files.is_empty(), "{files:?}");
    assert!(!std::path::Path::new("/tmp/escape").exists());
}

/// Every hostile alias is refused by `create_artifact` too, with an error naming it.
#[tokio::test]
async fn hostile_aliases_are_refused_by_create() {
    let fx = Fixture::new().await;
    let before = siblings(&fx);
    for alias in hostile_aliases() {
        let desc = ArtifactDescription::new(JobId(2), ArtifactType::Result, alias.clone(), "");
        let err = fx
            .store
            .create_artifact(desc)
            .await
            .expect_err(&format!("alias {alias:?} must be refused"));
        let text = err.to_string();
        assert!(
            names_alias(&text, &alias),
            "error for {alias:?} does not name it: {text}"
        );
    }
    assert!(fx.all_rows().await.is_empty());
    assert_eq!(siblings(&fx), before);
    let files = files_under(&fx.root().join("jobs"));
    assert!(files.is_empty(), "{files:?}");
}

/// Names that look odd but are plain file names are accepted and land in the job's
/// directory: dots, spaces, unicode, a leading dash, and exactly 255 bytes.
#[tokio::test]
async fn odd_but_plain_aliases_are_accepted() {
    let fx = Fixture::new().await;
    let data = body(500, 1);
    fx.server.serve("/f", Resource::new(data.clone()));
    let dir = fx.root().join("jobs").join("9").join("image");
    for alias in [
        "...".to_owned(),
        ".hidden".to_owned(),
        "with space.img".to_owned(),
        "ünï©ødé".to_owned(),
        "-rf".to_owned(),
        "y".repeat(255),
        "é".repeat(127) + "z", // 255 bytes
    ] {
        let out = fx.fetch_desc(image(9, &alias, &fx.server.url("/f"))).await;
        out.assert_ready(&fx.root(), &data);
        assert_eq!(out.path.as_path(), dir.join(&alias), "{alias:?}");
    }
}

/// A 255-byte alias pushed twice still gets two distinct paths, each a valid file name.
#[tokio::test]
async fn long_duplicate_alias_stays_a_valid_name() {
    let fx = Fixture::new().await;
    let data = body(500, 2);
    fx.server.serve("/f", Resource::new(data.clone()));
    let alias = "q".repeat(255);
    let a = fx.fetch_desc(image(1, &alias, &fx.server.url("/f"))).await;
    let b = fx.fetch_desc(image(1, &alias, &fx.server.url("/f"))).await;
    a.assert_ready(&fx.root(), &data);
    b.assert_ready(&fx.root(), &data);
    assert_ne!(a.path, b.path);
    let name = b.path.as_path().file_name().expect("name");
    assert!(name.len() <= 255, "{}", name.len());
}

/// The same alias in different jobs and types goes to different directories; the
/// layout is `<root>/jobs/<job>/<type>/<alias>`.
#[tokio::test]
async fn same_alias_across_jobs_and_types() {
    let fx = Fixture::new().await;
    let data = body(100, 3);
    fx.server.serve("/f", Resource::new(data.clone()));
    let root = fx.root();
    let mut paths = Vec::new();
    for (job, kind) in [
        (1, ArtifactType::Image),
        (1, ArtifactType::Test),
        (2, ArtifactType::Image),
        (u64::MAX, ArtifactType::Yaml),
    ] {
        let desc = ArtifactDescription::new(JobId(job), kind, "same", fx.server.url("/f"));
        let out = fx.fetch_desc(desc).await;
        out.assert_ready(&root, &data);
        assert_eq!(
            out.path.as_path(),
            root.join("jobs")
                .join(job.to_string())
                .join(kind.as_str())
                .join("same")
        );
        paths.push(out.path);
    }
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 4);
}

/// A pre-existing file at an alias's path (left by someone else) is not overwritten by
/// a new artifact with that alias: it gets a distinct path.
#[tokio::test]
async fn existing_file_is_not_clobbered() {
    let fx = Fixture::new().await;
    let data = body(100, 4);
    fx.server.serve("/f", Resource::new(data.clone()));
    let dir = fx.root().join("jobs").join("1").join("image");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("Image_0"), b"precious").expect("write");
    let out = fx.fetch("Image_0", "/f").await;
    assert_eq!(
        out.last().status,
        ArtifactStatus::Ready,
        "{:?}",
        out.changes
    );
    assert_eq!(
        std::fs::read(dir.join("Image_0")).expect("read"),
        b"precious"
    );
    assert_ne!(out.path.as_path(), dir.join("Image_0"));
    assert_eq!(std::fs::read(out.path.as_path()).expect("read"), data);
}

/// A symbolic link planted under the root (a job directory pointing outside) cannot make
/// the store write outside its root: the push is refused or the file lands inside.
#[cfg(unix)]
#[tokio::test]
async fn planted_symlink_cannot_redirect_writes() {
    let fx = Fixture::new().await;
    let data = body(100, 5);
    fx.server.serve("/f", Resource::new(data.clone()));
    let outside = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(outside.path(), fx.root().join("jobs").join("66")).expect("symlink");
    let (tx, mut statuses_rx) = support::Statuses::channel();
    match fx
        .store
        .push_artifact(image(66, "Image_0", &fx.server.url("/f")), tx)
        .await
    {
        Err(_) => {}
        Ok(path) => {
            let _ = statuses_rx.until_terminal(&path).await;
            assert!(path.as_path().starts_with(fx.root()), "{path}");
        }
    }
    let leaked = files_under(outside.path());
    assert!(leaked.is_empty(), "written outside the root: {leaked:?}");
}
