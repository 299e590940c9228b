//! The Store's happy paths and its index: layout, READY rows, expected digests, checksum
//! files, `create_artifact`, `list` with filters and keyset paging, `file://` and
//! unsupported schemes.

mod support;

use artifact_coordinator::{
    ArtifactFilter, ArtifactManager, ArtifactPath, ArtifactStatus, ArtifactType, ChecksumType,
    JobId, Page, Store,
};
use support::{
    Fixture, Resource, assert_no_part_files, body, fast_builder, files_under, image,
    image_checksum, image_sha, md5_hex, sha256_hex, statuses,
};

/// A plain download ends READY, at `<root>/jobs/<job>/<type>/<alias>`, with the whole
/// content, and its index row records the size and SHA-256.
#[tokio::test]
async fn plain_download_is_ready_with_index_row() {
    let fx = Fixture::new().await;
    let data = body(300_000, 1);
    fx.server.serve("/boot.img", Resource::new(data.clone()));
    let uri = fx.server.url("/boot.img");
    let out = fx.fetch_desc(image(7, "Image_0", &uri)).await;
    let root = fx.root();
    out.assert_ready(&root, &data);
    assert_eq!(
        statuses(&out.changes),
        [
            ArtifactStatus::Pending,
            ArtifactStatus::Downloading,
            ArtifactStatus::Ready
        ]
    );
    assert_eq!(
        out.path.as_path(),
        root.join("jobs").join("7").join("image").join("Image_0")
    );
    assert!(root.join("index.sqlite").is_file());
    let r = &out.record;
    assert!(r.id > 0, "{r:?}");
    assert_eq!(r.job, JobId(7));
    assert_eq!(r.kind, ArtifactType::Image);
    assert_eq!(r.alias, "Image_0");
    assert_eq!(r.uri, uri);
    assert!(r.created_ms > 0 && r.created_ms <= r.updated_ms, "{r:?}");
    assert_eq!(fx.server.hits("/boot.img"), 1);
}

/// An empty body is a valid, READY artifact of size 0.
#[tokio::test]
async fn empty_body_is_ready() {
    let fx = Fixture::new().await;
    fx.server.serve("/empty", Resource::new(Vec::new()));
    let out = fx.fetch("Image_0", "/empty").await;
    out.assert_ready(&fx.root(), b"");
}

/// `info` of a path the store never returned is `None`, not an error.
#[tokio::test]
async fn info_of_unknown_path_is_none() {
    let fx = Fixture::new().await;
    let missing = fx.root().join("jobs/1/image/nothing");
    let got = fx
        .store
        .info(&ArtifactPath::from(missing.to_string_lossy().into_owned()))
        .await
        .expect("info");
    assert!(got.is_none(), "{got:?}");
}

/// An expected SHA-256 that matches (lower- or upper-case) ends READY.
#[tokio::test]
async fn expected_sha256_matches() {
    let fx = Fixture::new().await;
    let data = body(70_000, 2);
    fx.server.serve("/a", Resource::new(data.clone()));
    let sha = sha256_hex(&data);
    let lower = fx
        .fetch_desc(image_sha(1, "lower", &fx.server.url("/a"), &sha))
        .await;
    lower.assert_ready(&fx.root(), &data);
    let upper = fx
        .fetch_desc(image_sha(
            1,
            "upper",
            &fx.server.url("/a"),
            &sha.to_uppercase(),
        ))
        .await;
    upper.assert_ready(&fx.root(), &data);
}

/// An expected SHA-256 that does not match: FAILED with "sha256 mismatch for URI:
/// expected X, got Y", no file, no temporary file.
#[tokio::test]
async fn expected_sha256_mismatch_fails() {
    let fx = Fixture::new().await;
    let data = body(70_000, 3);
    fx.server.serve("/a", Resource::new(data.clone()));
    let wrong = sha256_hex(b"something else");
    let out = fx
        .fetch_desc(image_sha(1, "Image_0", &fx.server.url("/a"), &wrong))
        .await;
    let want = format!(
        "sha256 mismatch for {}: expected {wrong}, got {}",
        fx.server.url("/a"),
        sha256_hex(&data)
    );
    out.assert_failed(&fx.root(), |r| r == want);
}

/// A bad expected digest (not 64 hex digits) is refused at push time.
#[tokio::test]
async fn malformed_expected_sha256_is_refused_at_push() {
    let fx = Fixture::new().await;
    fx.server.serve("/a", Resource::new(&b"x"[..]));
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let err = fx
        .store
        .push_artifact(image_sha(1, "Image_0", &fx.server.url("/a"), "abc"), tx)
        .await
        .expect_err("a 3-digit sha256 must be refused");
    assert!(err.to_string().contains("abc"), "{err}");
    assert_eq!(fx.server.hits("/a"), 0);
}

/// A checksum file in `md5sum` style ("HEX  name") that matches: READY.
#[tokio::test]
async fn checksum_file_md5_matches() {
    let fx = Fixture::new().await;
    let data = body(123_456, 4);
    fx.server.serve("/img", Resource::new(data.clone()));
    fx.server.serve(
        "/img.md5",
        Resource::new(format!("{}  img\n", md5_hex(&data)).into_bytes()),
    );
    let out = fx
        .fetch_desc(image_checksum(
            1,
            "Image_0",
            &fx.server.url("/img"),
            &fx.server.url("/img.md5"),
            ChecksumType::Md5,
        ))
        .await;
    out.assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/img.md5"), 1);
}

/// A checksum file with an upper-case digest and no file name also matches.
#[tokio::test]
async fn checksum_file_bare_uppercase_digest_matches() {
    let fx = Fixture::new().await;
    let data = body(10_000, 5);
    fx.server.serve("/img", Resource::new(data.clone()));
    fx.server.serve(
        "/img.sha256",
        Resource::new(sha256_hex(&data).to_uppercase().into_bytes()),
    );
    let out = fx
        .fetch_desc(image_checksum(
            1,
            "Image_0",
            &fx.server.url("/img"),
            &fx.server.url("/img.sha256"),
            ChecksumType::Sha256,
        ))
        .await;
    out.assert_ready(&fx.root(), &data);
}

/// A checksum file whose md5 does not match: FAILED with "md5 mismatch (checksum file
/// <uri>): expected X, got Y".
#[tokio::test]
async fn checksum_file_md5_mismatch_fails() {
    let fx = Fixture::new().await;
    let data = body(50_000, 6);
    let wrong = md5_hex(b"other content");
    fx.server.serve("/img", Resource::new(data.clone()));
    fx.server.serve(
        "/img.md5",
        Resource::new(format!("{wrong}  img\n").into_bytes()),
    );
    let checksum_uri = fx.server.url("/img.md5");
    let out = fx
        .fetch_desc(image_checksum(
            1,
            "Image_0",
            &fx.server.url("/img"),
            &checksum_uri,
            ChecksumType::Md5,
        ))
        .await;
    let want = format!(
        "md5 mismatch (checksum file {checksum_uri}): expected {wrong}, got {}",
        md5_hex(&data)
    );
    out.assert_failed(&fx.root(), |r| r == want);
}

/// A checksum file in `sha256sum` style that matches: READY.
#[tokio::test]
async fn checksum_file_sha256_matches() {
    let fx = Fixture::new().await;
    let data = body(99_999, 7);
    fx.server.serve("/img", Resource::new(data.clone()));
    fx.server.serve(
        "/img.sha256",
        Resource::new(format!("{}  img\n", sha256_hex(&data)).into_bytes()),
    );
    let out = fx
        .fetch_desc(image_checksum(
            1,
            "Image_0",
            &fx.server.url("/img"),
            &fx.server.url("/img.sha256"),
            ChecksumType::Sha256,
        ))
        .await;
    out.assert_ready(&fx.root(), &data);
}

/// A checksum file whose sha256 does not match: FAILED with "sha256 mismatch (checksum
/// file <uri>): expected X, got Y".
#[tokio::test]
async fn checksum_file_sha256_mismatch_fails() {
    let fx = Fixture::new().await;
    let data = body(99_999, 8);
    let wrong = sha256_hex(b"other content");
    fx.server.serve("/img", Resource::new(data.clone()));
    fx.server.serve(
        "/img.sha256",
        Resource::new(format!("{wrong} *img\n").into_bytes()),
    );
    let checksum_uri = fx.server.url("/img.sha256");
    let out = fx
        .fetch_desc(image_checksum(
            1,
            "Image_0",
            &fx.server.url("/img"),
            &checksum_uri,
            ChecksumType::Sha256,
        ))
        .await;
    let want = format!(
        "sha256 mismatch (checksum file {checksum_uri}): expected {wrong}, got {}",
        sha256_hex(&data)
    );
    out.assert_failed(&fx.root(), |r| r == want);
}

/// A checksum file that cannot be fetched (404) fails the image, and the reason says so.
#[tokio::test]
async fn missing_checksum_file_fails_the_image() {
    let fx = Fixture::new().await;
    let data = body(1000, 9);
    fx.server.serve("/img", Resource::new(data));
    let out = fx
        .fetch_desc(image_checksum(
            1,
            "Image_0",
            &fx.server.url("/img"),
            &fx.server.url("/img.md5"),
            ChecksumType::Md5,
        ))
        .await;
    out.assert_failed(&fx.root(), |r| r.contains("404"));
}

/// A checksum file with no digest of the right length in it fails the image.
#[tokio::test]
async fn garbage_checksum_file_fails_the_image() {
    let fx = Fixture::new().await;
    let data = body(1000, 10);
    fx.server.serve("/img", Resource::new(data));
    fx.server
        .serve("/img.md5", Resource::new(&b"<html>nope</html>\n"[..]));
    let out = fx
        .fetch_desc(image_checksum(
            1,
            "Image_0",
            &fx.server.url("/img"),
            &fx.server.url("/img.md5"),
            ChecksumType::Md5,
        ))
        .await;
    out.assert_failed(&fx.root(), |r| !r.is_empty());
}

/// Pushing the same alias twice in one job and type gives two distinct paths, each with
/// its own content.
#[tokio::test]
async fn duplicate_alias_gets_a_distinct_path() {
    let fx = Fixture::new().await;
    let one = body(1000, 11);
    let two = body(2000, 12);
    fx.server.serve("/one", Resource::new(one.clone()));
    fx.server.serve("/two", Resource::new(two.clone()));
    let first = fx
        .fetch_desc(image(3, "same.bin", &fx.server.url("/one")))
        .await;
    let second = fx
        .fetch_desc(image(3, "same.bin", &fx.server.url("/two")))
        .await;
    assert_ne!(first.path, second.path);
    assert_eq!(
        first.path.as_path().parent(),
        second.path.as_path().parent()
    );
    first.assert_ready(&fx.root(), &one);
    second.assert_ready(&fx.root(), &two);
    assert_ne!(first.record.id, second.record.id);
}

/// Pushing one alias twice concurrently (before either finishes) still gives distinct
/// paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicate_aliases_get_distinct_paths() {
    let fx = Fixture::new().await;
    let data = body(5000, 13);
    fx.server.serve("/f", Resource::new(data.clone()));
    let url = fx.server.url("/f");
    let pushes = futures_util::future::join_all((0..8).map(|_| fx.push(image(4, "dup", &url))));
    let mut paths = Vec::new();
    for (path, mut statuses) in pushes.await {
        let last = statuses.terminal(&path).await;
        assert_eq!(last.status, ArtifactStatus::Ready, "{last:?}");
        assert_eq!(support::sha256_file(path.as_path()), sha256_hex(&data));
        paths.push(path);
    }
    let mut unique = paths.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), paths.len(), "{paths:?}");
    assert_no_part_files(&fx.root());
}

/// `create_artifact` returns a path under `<root>/jobs/<job>/result/` whose parent
/// exists, records a row, and never touches the network.
#[tokio::test]
async fn create_artifact_makes_parent_and_records_row() {
    let fx = Fixture::new().await;
    let desc = artifact_coordinator::ArtifactDescription::new(
        JobId(5),
        ArtifactType::Result,
        "result.log",
        "",
    );
    let path = fx
        .store
        .create_artifact(desc.clone())
        .await
        .expect("create");
    let root = fx.root();
    assert_eq!(
        path.as_path(),
        root.join("jobs")
            .join("5")
            .join("result")
            .join("result.log")
    );
    assert!(path.as_path().parent().expect("parent").is_dir());
    let row = fx.info(&path).await;
    assert_eq!(row.job, JobId(5));
    assert_eq!(row.kind, ArtifactType::Result);
    assert_eq!(row.alias, "result.log");
    assert_eq!(row.path, path);
    // A second one with the same alias gets its own path.
    let again = fx.store.create_artifact(desc).await.expect("create again");
    assert_ne!(again, path);
    assert!(fx.store.info(&again).await.expect("info").is_some());
}

/// `list` filters by job, type, status and alias, and pages by id with total, remaining
/// and next.
#[tokio::test]
async fn list_filters_and_keyset_paging() {
    let fx = Fixture::new().await;
    fx.server.serve("/ok", Resource::new(&b"fine"[..]));
    let ok = fx.server.url("/ok");
    let bad = fx.server.url("/missing");
    // job 1: 3 images (one failing), 1 test; job 2: 2 images; job 3: 1 result (created).
    let plan = [
        (1, ArtifactType::Image, "Image_0", ok.as_str()),
        (1, ArtifactType::Image, "Image_1", bad.as_str()),
        (1, ArtifactType::Image, "Image_2", ok.as_str()),
        (1, ArtifactType::Test, "run.sh", ok.as_str()),
        (2, ArtifactType::Image, "Image_0", ok.as_str()),
        (2, ArtifactType::Image, "Image_1", ok.as_str()),
    ];
    let mut ids = Vec::new();
    for (job, kind, alias, uri) in plan {
        let desc = artifact_coordinator::ArtifactDescription::new(JobId(job), kind, alias, uri);
        let out = fx.fetch_desc(desc).await;
        ids.push(out.record.id);
    }
    let created = fx
        .store
        .create_artifact(artifact_coordinator::ArtifactDescription::new(
            JobId(3),
            ArtifactType::Result,
            "out.log",
            "",
        ))
        .await
        .expect("create");
    ids.push(fx.info(&created).await.id);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "ids grow in push order");

    let list = |filter: ArtifactFilter, page: Page| {
        let store = fx.store.clone();
        async move { store.list(filter, page).await.expect("list") }
    };
    let everything = list(ArtifactFilter::default(), Page::default()).await;
    assert_eq!(everything.total, 7);
    assert_eq!(everything.remaining, 0);
    assert_eq!(everything.next, None);
    assert_eq!(
        everything.records.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids
    );

    let job1 = ArtifactFilter {
        job: Some(JobId(1)),
        ..ArtifactFilter::default()
    };
    assert_eq!(list(job1.clone(), Page::default()).await.total, 4);
    let images1 = ArtifactFilter {
        kind: Some(ArtifactType::Image),
        ..job1.clone()
    };
    let page = list(images1.clone(), Page::default()).await;
    assert_eq!(page.total, 3);
    assert!(page.records.iter().all(|r| r.job == JobId(1)));
    assert!(page.records.iter().all(|r| r.kind == ArtifactType::Image));

    let failed = list(
        ArtifactFilter {
            status: Some(ArtifactStatus::Failed),
            ..ArtifactFilter::default()
        },
        Page::default(),
    )
    .await;
    assert_eq!(failed.total, 1);
    assert_eq!(failed.records[0].alias, "Image_1");
    assert_eq!(failed.records[0].job, JobId(1));

    let by_alias = list(
        ArtifactFilter {
            alias: Some("Image_1".to_owned()),
            ..ArtifactFilter::default()
        },
        Page::default(),
    )
    .await;
    assert_eq!(by_alias.total, 2);
    let ready_alias = list(
        ArtifactFilter {
            alias: Some("Image_1".to_owned()),
            status: Some(ArtifactStatus::Ready),
            ..ArtifactFilter::default()
        },
        Page::default(),
    )
    .await;
    assert_eq!(ready_alias.total, 1);
    assert_eq!(ready_alias.records[0].job, JobId(2));

    let results = list(
        ArtifactFilter {
            kind: Some(ArtifactType::Result),
            ..ArtifactFilter::default()
        },
        Page::default(),
    )
    .await;
    assert_eq!(results.total, 1);
    assert_eq!(results.records[0].path, created);

    // Keyset paging over everything, 3 at a time: 3 + 3 + 1.
    let p1 = list(
        ArtifactFilter::default(),
        Page {
            after: None,
            limit: 3,
        },
    )
    .await;
    assert_eq!(p1.records.len(), 3);
    assert_eq!((p1.total, p1.remaining), (7, 4));
    assert_eq!(p1.next, Some(ids[2]));
    let p2 = list(
        ArtifactFilter::default(),
        Page {
            after: p1.next,
            limit: 3,
        },
    )
    .await;
    assert_eq!(
        p2.records.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids[3..6]
    );
    assert_eq!((p2.total, p2.remaining), (7, 1));
    assert_eq!(p2.next, Some(ids[5]));
    let p3 = list(
        ArtifactFilter::default(),
        Page {
            after: p2.next,
            limit: 3,
        },
    )
    .await;
    assert_eq!(p3.records.len(), 1);
    assert_eq!(p3.records[0].id, ids[6]);
    assert_eq!((p3.total, p3.remaining), (7, 0));
    assert_eq!(p3.next, None);

    // Paging combined with a filter: job 1, 2 at a time.
    let f1 = list(
        job1.clone(),
        Page {
            after: None,
            limit: 2,
        },
    )
    .await;
    assert_eq!((f1.records.len(), f1.total, f1.remaining), (2, 4, 2));
    let f2 = list(
        job1,
        Page {
            after: f1.next,
            limit: 2,
        },
    )
    .await;
    assert_eq!((f2.records.len(), f2.total, f2.remaining), (2, 4, 0));
    assert_eq!(f2.next, None);
    assert_eq!(f2.records[1].id, ids[3]);
}

/// A `file://` URI is copied into the store and READY.
#[tokio::test]
async fn file_scheme_is_copied() {
    let fx = Fixture::new().await;
    let data = body(200_000, 14);
    let source = fx.dir.path().join("source.img");
    std::fs::write(&source, &data).expect("write source");
    let uri = url::Url::from_file_path(&source)
        .expect("file url")
        .to_string();
    let out = fx.fetch_desc(image(1, "Image_0", &uri)).await;
    out.assert_ready(&fx.root(), &data);
    assert_eq!(out.record.uri, uri);
    assert!(source.exists(), "the source is left alone");
}

/// A `file://` URI to a missing file is FAILED (not an error at push time).
#[tokio::test]
async fn file_scheme_missing_file_fails() {
    let fx = Fixture::new().await;
    let source = fx.dir.path().join("does-not-exist.img");
    let uri = url::Url::from_file_path(&source)
        .expect("file url")
        .to_string();
    let out = fx.fetch_desc(image(1, "Image_0", &uri)).await;
    out.assert_failed(&fx.root(), |r| !r.is_empty());
}

/// A `file://` source whose bytes do not match its size (here a `/proc` file: size 0,
/// content non-empty, as a file written to while it is copied) is FAILED, not READY with
/// whatever was read.
#[tokio::test]
async fn file_scheme_changing_file_fails() {
    let fx = Fixture::new().await;
    let out = fx
        .fetch_desc(image(1, "Image_0", "file:///proc/self/status"))
        .await;
    out.assert_failed(&fx.root(), |r| r.contains("changed while it was copied"));
}

/// With `allow_file_scheme(false)`, a `file://` URI is refused at push time, naming the
/// scheme, and nothing is recorded.
#[tokio::test]
async fn file_scheme_can_be_switched_off() {
    let fx = Fixture::with(fast_builder().allow_file_scheme(false)).await;
    let source = fx.dir.path().join("source.img");
    std::fs::write(&source, b"secret").expect("write source");
    let uri = url::Url::from_file_path(&source)
        .expect("file url")
        .to_string();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let err = fx
        .store
        .push_artifact(image(1, "Image_0", &uri), tx)
        .await
        .expect_err("file:// must be refused");
    assert!(err.to_string().contains("file"), "{err}");
    assert!(fx.all_rows().await.is_empty());
    assert!(rx.try_recv().is_err(), "no status for a refused push");
}

/// Unsupported schemes and unparsable URIs are refused at push time with a clear error,
/// before any row or file is created.
#[tokio::test]
async fn unsupported_schemes_are_refused_at_push() {
    let fx = Fixture::new().await;
    for uri in [
        "ftp://127.0.0.1/x.img",
        "gopher://127.0.0.1/x",
        "not a uri",
        "",
        "data:text/plain,hello",
        "javascript:alert(1)",
    ] {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let err = fx
            .store
            .push_artifact(image(1, "Image_0", uri), tx)
            .await
            .expect_err(uri);
        let text = err.to_string();
        assert!(!text.is_empty());
        if let Some((scheme, _)) = uri.split_once("://") {
            assert!(text.contains(scheme), "{uri}: {text}");
        }
        assert!(
            rx.try_recv().is_err(),
            "{uri}: no status for a refused push"
        );
    }
    assert!(fx.all_rows().await.is_empty());
    let root = fx.root();
    let files: Vec<_> = files_under(&root.join("jobs"));
    assert!(files.is_empty(), "{files:?}");
}

/// `Store::open` on a path that is a file fails with an error naming it.
#[tokio::test]
async fn open_on_a_file_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let err = Store::open(&file).await.expect_err("a file is not a root");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

/// A root that is a file is refused with a message that says so.
#[tokio::test]
async fn a_file_is_not_a_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("afile");
    std::fs::write(&file, b"x").expect("write");
    let err = Store::open(&file).await.map(|_| ()).expect_err("a file");
    let text = err.to_string();
    assert!(text.contains("exists and is not a directory"), "{text}");
    assert!(text.contains("afile"), "{text}");
}

/// The store's root is created when missing, and `root()` is where files go.
#[tokio::test]
async fn open_creates_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("a").join("b");
    let store = Store::open(&root).await.expect("open");
    assert!(root.is_dir());
    assert_eq!(
        store.root(),
        std::fs::canonicalize(&root).expect("canonical")
    );
    assert!(store.root().join("index.sqlite").is_file());
}

/// Only one store may have a root open: a second open (even through another path to the
/// same directory) fails with `Locked` and changes nothing; after `close`, or once the
/// first store is dropped, the root opens again. A closed store refuses every call.
#[tokio::test]
async fn a_root_is_opened_by_one_store_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    let first = Store::open(&root).await.expect("open");
    let err = Store::open(root.join("."))
        .await
        .map(|_| ())
        .expect_err("the root is locked");
    match &err {
        artifact_coordinator::StoreError::Locked { root: locked } => {
            assert_eq!(locked, first.root())
        }
        other => panic!("expected Locked, got {other}"),
    }
    assert!(err.to_string().contains("store.lock"), "{err}");
    let err = Store::open(&root)
        .await
        .map(|_| ())
        .expect_err("still locked");
    assert!(
        matches!(err, artifact_coordinator::StoreError::Locked { .. }),
        "{err}"
    );

    first.close().await;
    let filter = artifact_coordinator::ArtifactFilter::default;
    let refused = first
        .list(filter(), artifact_coordinator::Page::default())
        .await;
    assert!(
        matches!(refused, Err(artifact_coordinator::StoreError::Closed)),
        "{refused:?}"
    );
    let second = Store::open(&root).await.expect("open after close");
    second
        .list(filter(), artifact_coordinator::Page::default())
        .await
        .expect("list");
    drop(second);
    let third = Store::open(&root).await.expect("open after drop");
    third.close().await;
}

/// A store reopened on the same root continues the names of a job's directory from its
/// index: the same alias pushed again gets `~1`, and row ids keep increasing.
#[tokio::test]
async fn names_and_ids_continue_after_reopening() {
    let fx = Fixture::new().await;
    let data = body(1000, 14);
    fx.server.serve("/f", Resource::new(data.clone()));
    let url = fx.server.url("/f");
    let first = fx.fetch_desc(image(5, "again", &url)).await;
    first.assert_ready(&fx.root(), &data);
    fx.store.close().await;
    let store = Store::open(fx.root()).await.expect("reopen");
    let (tx, mut statuses) = support::Statuses::channel();
    let path = store
        .push_artifact(image(5, "again", &url), tx)
        .await
        .expect("push");
    assert_eq!(path.as_path().file_name().unwrap(), "again~1");
    assert_eq!(statuses.terminal(&path).await.status, ArtifactStatus::Ready);
    let record = store.info(&path).await.expect("info").expect("row");
    assert!(
        record.id > first.record.id,
        "{} > {}",
        record.id,
        first.record.id
    );
    store.close().await;
}

/// `push` does not wait for room in the collector: with the channel full it returns the
/// path at once, and `PENDING` follows (before the other statuses) once there is room.
#[tokio::test]
async fn push_with_a_full_collector_returns_and_sends_pending_later() {
    let fx = Fixture::new().await;
    let data = body(1000, 15);
    fx.server.serve("/f", Resource::new(data.clone()));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let filler = artifact_coordinator::ArtifactStatusChange::new(
        ArtifactPath("filler".into()),
        ArtifactStatus::Pending,
    );
    tx.try_send(filler.clone()).expect("room for one");
    let path = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        fx.store
            .push_artifact(image(6, "f", &fx.server.url("/f")), tx),
    )
    .await
    .expect("push returns with the collector full")
    .expect("push");
    assert_eq!(rx.recv().await, Some(filler));
    let mut seen = Vec::new();
    while let Some(change) = rx.recv().await {
        assert_eq!(change.path, path);
        let done = change.status.is_terminal();
        seen.push(change.status);
        if done {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            ArtifactStatus::Pending,
            ArtifactStatus::Downloading,
            ArtifactStatus::Ready
        ]
    );
    assert_eq!(std::fs::read(path.as_path()).expect("read"), data);
}

/// A row the store cannot insert (a writer behind the store's back took the path it
/// reserved; the store expects to be the index's only writer) makes the artifact FAILED
/// with the index's error, and no file is left at the path.
#[tokio::test]
async fn a_failed_row_insert_fails_the_artifact() {
    // Job 8 stays busy (a stalled transfer, no idle timeout within the test) until it is
    // cancelled, so the store keeps its names for the job's directory loaded.
    let fx = Fixture::with(fast_builder().idle_timeout(std::time::Duration::from_secs(600))).await;
    fx.server.serve("/stall", Resource::new(body(100_000, 2)));
    fx.server
        .script("/stall", [support::Step::stall_after(1000)]);
    let data = body(64 * 1024, 16);
    fx.server.serve("/f", Resource::new(data.clone()));
    let (busy, mut busy_statuses) = fx.push(image(8, "busy", &fx.server.url("/stall"))).await;
    // DOWNLOADING: its row is in (the other writer below must not take its id).
    busy_statuses
        .wait_for(&busy, ArtifactStatus::Downloading)
        .await;
    let planted = fx.root().join("jobs").join("8").join("image").join("x");
    let db = rusqlite::Connection::open(fx.root().join("index.sqlite")).expect("open db");
    db.busy_timeout(std::time::Duration::from_secs(5))
        .expect("timeout");
    db.execute(
        "INSERT INTO artifacts (id, job, kind, alias, uri, path, status, created_ms, updated_ms)
         VALUES (1000000, 8, 'image', 'x', '', ?1, 'FAILED', 0, 0)",
        [planted.to_str().expect("utf-8")],
    )
    .expect("plant a row");
    let (tx, mut statuses) = support::Statuses::channel();
    let path = fx
        .store
        .push_artifact(image(8, "x", &fx.server.url("/f")), tx)
        .await
        .expect("push");
    assert_eq!(path.as_path(), planted);
    let last = statuses.terminal(&path).await;
    assert_eq!(last.status, ArtifactStatus::Failed);
    let reason = last.reason.expect("reason");
    assert!(
        reason.contains("cannot record the artifact in the index"),
        "{reason}"
    );
    assert!(!planted.exists());
    assert_eq!(fx.server.hits("/f"), 0, "nothing is downloaded for it");
    fx.store.cancel_job(JobId(8)).await.expect("cancel");
    let busy_last = busy_statuses.terminal(&busy).await;
    assert_eq!(busy_last.status, ArtifactStatus::Failed, "{busy_last:?}");
    assert_no_part_files(&fx.root());
}

/// A download larger than a few writeback windows (8 MiB) is complete and verified,
/// whether its pages are dropped from the page cache once on disk (the default) or kept.
#[tokio::test]
async fn large_download_is_intact_with_and_without_keeping_pages() {
    let data = body(20 << 20, 17);
    let sha = sha256_hex(&data);
    for keep in [false, true] {
        let fx = Fixture::with(fast_builder().keep_page_cache(keep)).await;
        fx.server.serve("/big", Resource::new(data.clone()));
        let out = fx
            .fetch_desc(image_sha(9, "big", &fx.server.url("/big"), &sha))
            .await;
        out.assert_ready(&fx.root(), &data);
        assert_eq!(out.record.size, Some(data.len() as u64), "keep={keep}");
        assert_eq!(support::sha256_file(out.path.as_path()), sha, "keep={keep}");
    }
}
