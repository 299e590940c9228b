//! The Store's shared cache against a counting test server on 127.0.0.1: single-flight
//! transfers, cache hits without network, corrupt blobs, revalidation by URL, eviction,
//! `remove_job`, cancellation of shared transfers, byte progress, and recovery at open.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use artifact_coordinator::{
    ArtifactFilter, ArtifactManager, ArtifactStatus, ByteProgress, ChecksumType, JobId, Page,
    REASON_CANCELLED,
};
use futures_util::future::join_all;
use support::{
    Fixture, Resource, assert_no_part_files, body, fast_builder, image, image_sha, sha256_file,
    sha256_hex, statuses,
};
use tokio::sync::broadcast::error::RecvError;

/// Most time a test waits for one event.
const WAIT: Duration = Duration::from_secs(20);

/// `<root>/cache/blobs/<sha256>`.
fn blob(root: &Path, sha256: &str) -> PathBuf {
    root.join("cache").join("blobs").join(sha256)
}

/// The blobs in the cache directory.
fn blob_files(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("cache").join("blobs"))
        .expect("blobs dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A body the server sends slowly enough (about a second) that pushes made at once all
/// find its transfer still running.
fn slow(data: Vec<u8>) -> Resource {
    let chunk = data.len().div_ceil(16).max(1);
    Resource::new(data).trickle(chunk, Duration::from_millis(60))
}

/// 20 jobs push the same URI at once: one request reaches the server, and each job gets
/// its own READY path holding the verified content (a hard link to the one blob).
#[tokio::test]
async fn twenty_jobs_share_one_transfer() {
    let fx = Fixture::new().await;
    let data = body(256 * 1024, 20);
    let sha = sha256_hex(&data);
    fx.server.serve("/rootfs.img", slow(data.clone()));
    let uri = fx.server.url("/rootfs.img");
    let pushes = (1..=20u64).map(|job| fx.push(image(job, "rootfs", &uri)));
    let pushed = join_all(pushes).await;
    let mut paths = Vec::new();
    for (path, mut statuses) in pushed {
        let last = statuses.terminal(&path).await;
        assert_eq!(last.status, ArtifactStatus::Ready, "{last:?}");
        paths.push(path);
    }
    assert_eq!(fx.server.hits("/rootfs.img"), 1, "one request for 20 jobs");
    let root = fx.root();
    let blob_ino = std::fs::metadata(blob(&root, &sha)).expect("blob").ino();
    let mut seen = std::collections::HashSet::new();
    for path in &paths {
        assert!(seen.insert(path.clone()), "paths are distinct");
        assert_eq!(std::fs::read(path.as_path()).expect("read"), data);
        let meta = std::fs::metadata(path.as_path()).expect("meta");
        assert_eq!(meta.ino(), blob_ino, "{path} is a hard link to the blob");
        assert!(meta.permissions().readonly(), "{path} is read-only");
        let record = fx.info(path).await;
        assert_eq!(record.status, ArtifactStatus::Ready);
        assert_eq!(record.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(record.size, Some(data.len() as u64));
    }
    let stats = fx.store.cache_stats().await.expect("stats");
    assert_eq!((stats.blobs, stats.bytes), (1, data.len() as u64));
    assert_eq!(stats.referenced_bytes, data.len() as u64);
    assert_eq!(stats.transfers, 0);
    assert_no_part_files(&root);
}

/// A push whose expected sha256 is cached is READY with no request at all, and never
/// reports DOWNLOADING.
#[tokio::test]
async fn cache_hit_makes_no_request() {
    let fx = Fixture::new().await;
    let data = body(100_000, 2);
    let sha = sha256_hex(&data);
    fx.server.serve("/a.img", Resource::new(data.clone()));
    let first = fx
        .fetch_desc(image_sha(1, "img", &fx.server.url("/a.img"), &sha))
        .await;
    first.assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/a.img"), 1);

    // Another job, another URI even (it would 404): the content is known by its digest.
    let second = fx
        .fetch_desc(image_sha(2, "img", &fx.server.url("/gone.img"), &sha))
        .await;
    second.assert_ready(&fx.root(), &data);
    assert_eq!(
        statuses(&second.changes),
        [ArtifactStatus::Pending, ArtifactStatus::Ready]
    );
    assert_eq!(fx.server.hits("/a.img"), 1);
    assert_eq!(fx.server.hits("/gone.img"), 0);
}

/// A blob whose bytes were changed on disk (same size, new mtime) is noticed at the next
/// hit, dropped, and downloaded again; the new job gets the right content.
#[tokio::test]
async fn corrupt_blob_is_downloaded_again() {
    let fx = Fixture::new().await;
    let data = body(64 * 1024, 3);
    let sha = sha256_hex(&data);
    fx.server.serve("/a.img", Resource::new(data.clone()));
    let uri = fx.server.url("/a.img");
    fx.fetch_desc(image_sha(1, "img", &uri, &sha))
        .await
        .assert_ready(&fx.root(), &data);
    let blob_path = blob(&fx.root(), &sha);
    corrupt(&blob_path, None);

    let again = fx.fetch_desc(image_sha(2, "img", &uri, &sha)).await;
    again.assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/a.img"), 2, "downloaded again");
    assert_eq!(sha256_file(&blob_path), sha, "the blob is whole again");
}

/// With `verify_cache_hits`, even a change that kept the size and the mtime is caught.
#[tokio::test]
async fn rehash_catches_corruption_that_kept_mtime() {
    let fx = Fixture::with(fast_builder().verify_cache_hits(true)).await;
    let data = body(64 * 1024, 4);
    let sha = sha256_hex(&data);
    fx.server.serve("/a.img", Resource::new(data.clone()));
    let uri = fx.server.url("/a.img");
    fx.fetch_desc(image_sha(1, "img", &uri, &sha))
        .await
        .assert_ready(&fx.root(), &data);
    let blob_path = blob(&fx.root(), &sha);
    let mtime = std::fs::metadata(&blob_path)
        .expect("meta")
        .modified()
        .expect("mtime");
    corrupt(&blob_path, Some(mtime));

    let again = fx.fetch_desc(image_sha(2, "img", &uri, &sha)).await;
    again.assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/a.img"), 2);
}

/// Flips the first byte of `path` in place, keeping its size (and its mtime if given).
fn corrupt(path: &Path, keep_mtime: Option<SystemTime>) {
    use std::io::{Seek, Write};
    let mut perms = std::fs::metadata(path).expect("meta").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).expect("chmod");
    let mut bytes = std::fs::read(path).expect("read");
    bytes[0] ^= 0xff;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    file.rewind().expect("rewind");
    file.write_all(&bytes).expect("write");
    if let Some(mtime) = keep_mtime {
        file.set_modified(mtime).expect("set mtime");
    } else {
        // Make sure the mtime moves even on a coarse clock.
        file.set_modified(SystemTime::now() + Duration::from_secs(5))
            .expect("set mtime");
    }
}

/// A URI without digest and without validators is downloaded again for the next job,
/// which gets the new content.
#[tokio::test]
async fn changed_content_without_validators_is_downloaded_again() {
    let fx = Fixture::new().await;
    let old = body(50_000, 5);
    let new = body(60_000, 6);
    fx.server.serve("/latest.img", Resource::new(old.clone()));
    let uri = fx.server.url("/latest.img");
    fx.fetch_desc(image(1, "img", &uri))
        .await
        .assert_ready(&fx.root(), &old);
    fx.server.serve("/latest.img", Resource::new(new.clone()));
    fx.fetch_desc(image(2, "img", &uri))
        .await
        .assert_ready(&fx.root(), &new);
    let requests = fx.server.requests("/latest.img");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].header("if-none-match"), None);
    assert_eq!(requests[1].header("if-modified-since"), None);
}

/// With an ETag, the next job revalidates: a changed resource (new ETag) is downloaded,
/// an unchanged one is answered `304` and served from the cache.
#[tokio::test]
async fn etag_revalidation() {
    let fx = Fixture::new().await;
    let old = body(50_000, 7);
    let new = body(70_000, 8);
    fx.server
        .serve("/latest.img", Resource::new(old.clone()).etag("v1"));
    let uri = fx.server.url("/latest.img");
    fx.fetch_desc(image(1, "img", &uri))
        .await
        .assert_ready(&fx.root(), &old);

    fx.server
        .serve("/latest.img", Resource::new(new.clone()).etag("v2"));
    fx.fetch_desc(image(2, "img", &uri))
        .await
        .assert_ready(&fx.root(), &new);
    let requests = fx.server.requests("/latest.img");
    assert_eq!(requests[1].header("if-none-match"), Some("\"v1\""));

    // Unchanged: 304, and job 3 gets the v2 content from the cache.
    let third = fx.fetch_desc(image(3, "img", &uri)).await;
    third.assert_ready(&fx.root(), &new);
    let requests = fx.server.requests("/latest.img");
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[2].header("if-none-match"), Some("\"v2\""));
    assert_eq!(
        fx.server.body_bytes_sent("/latest.img"),
        (old.len() + new.len()) as u64
    );
}

/// Last-Modified alone is a validator too.
#[tokio::test]
async fn last_modified_revalidation() {
    let fx = Fixture::new().await;
    let data = body(30_000, 9);
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    fx.server
        .serve("/a.img", Resource::new(data.clone()).last_modified(when));
    let uri = fx.server.url("/a.img");
    fx.fetch_desc(image(1, "img", &uri))
        .await
        .assert_ready(&fx.root(), &data);
    fx.fetch_desc(image(2, "img", &uri))
        .await
        .assert_ready(&fx.root(), &data);
    let requests = fx.server.requests("/a.img");
    assert_eq!(requests.len(), 2);
    assert!(requests[1].header("if-modified-since").is_some());
    assert_eq!(fx.server.body_bytes_sent("/a.img"), data.len() as u64);
}

/// Eviction: referenced blobs stay even above the bound; once released they go, least
/// recently used first, and every pass leaves the cache within its bound when it can.
#[tokio::test]
async fn eviction_keeps_referenced_blobs_and_the_bound() {
    const SIZE: usize = 100_000;
    let bound = 250_000u64;
    let fx = Fixture::with(fast_builder().cache_max_bytes(Some(bound))).await;
    let mut shas = Vec::new();
    for (job, seed) in [(1u64, 11u64), (2, 12), (3, 13)] {
        let data = body(SIZE, seed);
        let name = format!("/{job}.img");
        fx.server.serve(&name, Resource::new(data.clone()));
        fx.fetch_desc(image(job, "img", &fx.server.url(&name)))
            .await
            .assert_ready(&fx.root(), &data);
        shas.push(sha256_hex(&data));
    }
    // All three are referenced: over the bound, and nothing may go.
    let stats = fx.store.cache_stats().await.expect("stats");
    assert_eq!(stats.bytes, 3 * SIZE as u64);
    assert_eq!(stats.referenced_bytes, 3 * SIZE as u64);
    assert_eq!(blob_files(&fx.root()).len(), 3);

    // Job 1 goes: its blob is the only unreferenced one, and it is evicted.
    assert_eq!(fx.store.remove_job(JobId(1)).await.expect("remove"), 1);
    assert!(!fx.root().join("jobs").join("1").exists());
    assert!(!blob(&fx.root(), &shas[0]).exists());
    let stats = fx.store.cache_stats().await.expect("stats");
    assert!(stats.bytes <= bound, "{stats:?}");
    assert_eq!(stats.blobs, 2);

    // Jobs 2 and 3 go: both unreferenced, but the cache fits, so both stay.
    fx.store.remove_job(JobId(2)).await.expect("remove");
    fx.store.remove_job(JobId(3)).await.expect("remove");
    let stats = fx.store.cache_stats().await.expect("stats");
    assert_eq!((stats.blobs, stats.referenced_bytes), (2, 0));

    // A new download passes the bound: the least recently used (job 2's) goes.
    let data = body(SIZE, 14);
    fx.server.serve("/4.img", Resource::new(data.clone()));
    fx.fetch_desc(image(4, "img", &fx.server.url("/4.img")))
        .await
        .assert_ready(&fx.root(), &data);
    let stats = fx.store.cache_stats().await.expect("stats");
    assert!(stats.bytes <= bound, "{stats:?}");
    assert!(!blob(&fx.root(), &shas[1]).exists(), "LRU blob evicted");
    assert!(blob(&fx.root(), &shas[2]).exists(), "more recent blob kept");
    assert!(
        blob(&fx.root(), &sha256_hex(&data)).exists(),
        "new blob kept"
    );
    let rows = fx
        .store
        .list(ArtifactFilter::default(), Page::default())
        .await
        .expect("list");
    assert_eq!(rows.records.len(), 1, "only job 4's row is left");
}

/// A job may delete or replace its own file: the blob and the other job's file keep
/// their content.
#[tokio::test]
async fn a_job_replacing_its_file_leaves_others_alone() {
    let fx = Fixture::new().await;
    let data = body(40_000, 15);
    let sha = sha256_hex(&data);
    fx.server.serve("/a.img", Resource::new(data.clone()));
    let uri = fx.server.url("/a.img");
    let one = fx.fetch_desc(image_sha(1, "img", &uri, &sha)).await;
    let two = fx.fetch_desc(image_sha(2, "img", &uri, &sha)).await;
    // Replace (write elsewhere, rename over) job 1's file, then delete job 2's.
    let scratch = fx.dir.path().join("scratch");
    std::fs::write(&scratch, b"job 1's own bytes").expect("write");
    std::fs::rename(&scratch, one.path.as_path()).expect("rename");
    let blob_path = blob(&fx.root(), &sha);
    assert_eq!(sha256_file(&blob_path), sha);
    assert_eq!(std::fs::read(two.path.as_path()).expect("read"), data);
    std::fs::remove_file(two.path.as_path()).expect("remove");
    assert_eq!(sha256_file(&blob_path), sha);
    // The cache still answers a third job.
    fx.fetch_desc(image_sha(3, "img", &uri, &sha))
        .await
        .assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/a.img"), 1);
}

/// `copy_job_files` gives each job a private writable copy.
#[tokio::test]
async fn copy_mode_gives_private_copies() {
    let fx = Fixture::with(fast_builder().copy_job_files(true)).await;
    let data = body(40_000, 16);
    let sha = sha256_hex(&data);
    fx.server.serve("/a.img", Resource::new(data.clone()));
    let out = fx
        .fetch_desc(image_sha(1, "img", &fx.server.url("/a.img"), &sha))
        .await;
    out.assert_ready(&fx.root(), &data);
    let file = std::fs::metadata(out.path.as_path()).expect("meta");
    let blob_meta = std::fs::metadata(blob(&fx.root(), &sha)).expect("blob");
    assert_ne!(file.ino(), blob_meta.ino());
    assert!(!file.permissions().readonly());
    std::fs::write(out.path.as_path(), b"changed in place").expect("write");
    assert_eq!(sha256_file(&blob(&fx.root(), &sha)), sha);
    assert_no_part_files(&fx.root());
}

/// Two jobs share a transfer; cancelling one leaves the other's download running to
/// READY, with still one request.
#[tokio::test]
async fn cancelling_one_of_two_sharing_jobs() {
    let fx = Fixture::new().await;
    let data = body(256 * 1024, 17);
    fx.server.serve("/big.img", slow(data.clone()));
    let uri = fx.server.url("/big.img");
    let (p1, mut s1) = fx.push(image(1, "img", &uri)).await;
    let (p2, mut s2) = fx.push(image(2, "img", &uri)).await;
    // Both wait on the running transfer once both have reported DOWNLOADING.
    s1.wait_for(&p1, ArtifactStatus::Downloading).await;
    s2.wait_for(&p2, ArtifactStatus::Downloading).await;
    fx.store.cancel_job(JobId(1)).await.expect("cancel");
    let one = s1.terminal(&p1).await;
    assert_eq!(one.status, ArtifactStatus::Failed);
    assert_eq!(one.reason.as_deref(), Some(REASON_CANCELLED));
    assert!(!p1.as_path().exists());
    let two = s2.terminal(&p2).await;
    assert_eq!(two.status, ArtifactStatus::Ready, "{two:?}");
    assert_eq!(std::fs::read(p2.as_path()).expect("read"), data);
    assert_eq!(fx.server.hits("/big.img"), 1);
}

/// Cancelling both jobs of a shared transfer stops it: no `.part` file is left when the
/// second `cancel_job` returns, and no transfer is in flight.
#[tokio::test]
async fn cancelling_both_sharing_jobs_stops_the_transfer() {
    let fx = Fixture::new().await;
    let data = body(512 * 1024, 18);
    fx.server.serve("/big.img", slow(data.clone()));
    let uri = fx.server.url("/big.img");
    let mut progress = fx.store.subscribe_progress();
    let (p1, mut s1) = fx.push(image(1, "img", &uri)).await;
    let (p2, mut s2) = fx.push(image(2, "img", &uri)).await;
    // Both wait on the running transfer once both have reported DOWNLOADING.
    s1.wait_for(&p1, ArtifactStatus::Downloading).await;
    s2.wait_for(&p2, ArtifactStatus::Downloading).await;
    // DOWNLOADING comes when the transfer gets its worker; the first progress event,
    // when the response has arrived: the request has reached the server.
    tokio::time::timeout(WAIT, progress.recv())
        .await
        .expect("a progress event")
        .expect("progress open");
    fx.store.cancel_job(JobId(1)).await.expect("cancel");
    fx.store.cancel_job(JobId(2)).await.expect("cancel");
    assert_no_part_files(&fx.root());
    assert_eq!(fx.store.cache_stats().await.expect("stats").transfers, 0);
    for (path, statuses) in [(&p1, &mut s1), (&p2, &mut s2)] {
        let last = statuses.terminal(path).await;
        assert_eq!(last.status, ArtifactStatus::Failed);
        assert_eq!(last.reason.as_deref(), Some(REASON_CANCELLED));
        assert!(!path.as_path().exists());
    }
    assert!(blob_files(&fx.root()).is_empty());
    assert!(fx.server.body_bytes_sent("/big.img") < data.len() as u64);
    // A later push of the same URI starts a fresh transfer and completes.
    fx.fetch_desc(image(3, "img", &uri))
        .await
        .assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/big.img"), 2);
}

/// Receives progress events for `path` until its last one (`done == total`).
async fn progress_until_done(
    rx: &mut tokio::sync::broadcast::Receiver<ByteProgress>,
    total: u64,
) -> Vec<ByteProgress> {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Err(_) => panic!("no progress event within {WAIT:?}; got {events:?}"),
            Ok(Err(RecvError::Lagged(n))) => panic!("lagged by {n}"),
            Ok(Err(RecvError::Closed)) => panic!("progress channel closed"),
            Ok(Ok(event)) => {
                let last = event.done == total;
                events.push(event);
                if last {
                    return events;
                }
            }
        }
    }
}

/// Every event waiting in `rx`.
fn drain(rx: &mut tokio::sync::broadcast::Receiver<ByteProgress>) -> Vec<ByteProgress> {
    let mut events = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(event) => events.push(event),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty) => return events,
            Err(e) => panic!("progress channel: {e}"),
        }
    }
}

/// Byte progress: events per artifact, done growing to total; a long interval keeps it to
/// the size-known and final events whatever the number of chunks.
#[tokio::test]
async fn byte_progress_is_reported_and_rate_limited() {
    let fx = Fixture::with(fast_builder().progress_interval(Duration::from_secs(3600))).await;
    let mut rx = fx.store.subscribe_progress();
    let data = body(256 * 1024, 19);
    let total = data.len() as u64;
    fx.server.serve("/a.img", slow(data.clone()));
    let (path, mut statuses) = fx.push(image(1, "img", &fx.server.url("/a.img"))).await;
    assert_eq!(statuses.terminal(&path).await.status, ArtifactStatus::Ready);
    // Every event of an artifact is published before its READY is sent.
    let events = drain(&mut rx);
    assert!(events.iter().all(|e| e.job == JobId(1) && e.path == path));
    assert!(
        events.windows(2).all(|w| w[0].done <= w[1].done),
        "{events:?}"
    );
    assert_eq!(events.last().map(|e| e.total), Some(Some(total)));
    // 16 chunks arrived, but only two events: the size known, and the final count.
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].done, 0);
    assert_eq!(events[1].done, total);

    // A cache hit reports the whole size at once.
    let sha = sha256_hex(&data);
    let (hit, mut statuses) = fx
        .push(image_sha(2, "img", &fx.server.url("/a.img"), &sha))
        .await;
    assert_eq!(statuses.terminal(&hit).await.status, ArtifactStatus::Ready);
    let events = drain(&mut rx);
    assert_eq!(
        events,
        [ByteProgress {
            job: JobId(2),
            path: hit,
            done: total,
            total: Some(total)
        }]
    );
}

/// With a short interval, a slow download reports intermediate progress.
#[tokio::test]
async fn byte_progress_shows_intermediate_counts() {
    let fx = Fixture::with(fast_builder().progress_interval(Duration::ZERO)).await;
    let mut rx = fx.store.subscribe_progress();
    let data = body(256 * 1024, 21);
    let total = data.len() as u64;
    fx.server.serve("/a.img", slow(data));
    let (path, _statuses) = fx.push(image(1, "img", &fx.server.url("/a.img"))).await;
    let events = progress_until_done(&mut rx, total).await;
    assert!(
        events.iter().any(|e| e.done > 0 && e.done < total),
        "{events:?}"
    );
    assert!(events.iter().all(|e| e.path == path));
}

/// Opening a store repairs its cache: leftover temporary files go, a row whose blob is
/// missing is forgotten (the next push downloads), and a blob file without a row goes.
#[tokio::test]
async fn reopening_repairs_the_cache() {
    let fx = Fixture::new().await;
    let data = body(30_000, 22);
    let sha = sha256_hex(&data);
    fx.server.serve("/a.img", Resource::new(data.clone()));
    let uri = fx.server.url("/a.img");
    fx.fetch_desc(image_sha(1, "img", &uri, &sha))
        .await
        .assert_ready(&fx.root(), &data);
    let root = fx.root();
    fx.store.close().await;
    let Fixture { server, dir, store } = fx;
    drop(store);
    std::fs::remove_file(blob(&root, &sha)).expect("remove blob");
    std::fs::write(root.join("cache").join("tmp").join("7.part"), b"half").expect("tmp");
    let stray = "ab".repeat(32);
    std::fs::write(blob(&root, &stray), b"no row").expect("stray");

    let store = fast_builder().open(&root).await.expect("reopen");
    assert_no_part_files(&root);
    assert!(!blob(&root, &stray).exists());
    let stats = store.cache_stats().await.expect("stats");
    assert_eq!(stats.blobs, 0);
    let fx = Fixture { server, dir, store };
    fx.fetch_desc(image_sha(2, "img", &uri, &sha))
        .await
        .assert_ready(&fx.root(), &data);
    assert_eq!(fx.server.hits("/a.img"), 2);
}

/// A cache hit for a push that also names a checksum file still checks the blob against
/// it: only the small checksum file is fetched, and a checksum that disagrees fails the
/// job instead of handing it the cached file.
#[tokio::test]
async fn cache_hit_still_checks_the_checksum_file() {
    let fx = Fixture::new().await;
    let data = body(80_000, 23);
    let sha = sha256_hex(&data);
    fx.server.serve("/a.img", Resource::new(data.clone()));
    let md5_line = format!("{}  a.img\n", support::md5_hex(&data));
    fx.server
        .serve("/a.img.md5", Resource::new(md5_line.into_bytes()));
    fx.server.serve(
        "/wrong.md5",
        Resource::new(b"00000000000000000000000000000000  a.img\n".to_vec()),
    );
    let uri = fx.server.url("/a.img");
    fx.fetch_desc(image_sha(1, "img", &uri, &sha))
        .await
        .assert_ready(&fx.root(), &data);

    let mut good = support::image_checksum(
        2,
        "img",
        &uri,
        &fx.server.url("/a.img.md5"),
        ChecksumType::Md5,
    );
    good.sha256 = Some(sha.clone());
    fx.fetch_desc(good).await.assert_ready(&fx.root(), &data);
    assert_eq!(
        fx.server.hits("/a.img"),
        1,
        "the artifact came from the cache"
    );
    assert_eq!(fx.server.hits("/a.img.md5"), 1);

    let mut bad = support::image_checksum(
        3,
        "img",
        &uri,
        &fx.server.url("/wrong.md5"),
        ChecksumType::Md5,
    );
    bad.sha256 = Some(sha);
    let out = fx.fetch_desc(bad).await;
    let last = out.changes.last().expect("a terminal change");
    assert_eq!(last.status, ArtifactStatus::Failed);
    assert!(
        last.reason
            .as_deref()
            .is_some_and(|r| r.contains("md5 mismatch")),
        "{last:?}"
    );
    assert!(!out.path.as_path().exists());
    assert_eq!(fx.server.hits("/a.img"), 1);
}

/// `remove_job` while another job's download runs (a transfer the two share): the other
/// job still gets its file, the removed job leaves nothing, and one request was made.
#[tokio::test]
async fn removing_a_job_while_a_shared_download_runs() {
    let fx = Fixture::with(fast_builder().cache_max_bytes(Some(1))).await;
    let data = body(256 * 1024, 24);
    fx.server.serve("/big.img", slow(data.clone()));
    let uri = fx.server.url("/big.img");
    let (p1, mut s1) = fx.push(image(1, "img", &uri)).await;
    let (p2, mut s2) = fx.push(image(2, "img", &uri)).await;
    s1.wait_for(&p1, ArtifactStatus::Downloading).await;
    s2.wait_for(&p2, ArtifactStatus::Downloading).await;
    fx.store.remove_job(JobId(1)).await.expect("remove");
    assert!(!fx.root().join("jobs").join("1").exists());
    let two = s2.terminal(&p2).await;
    assert_eq!(two.status, ArtifactStatus::Ready, "{two:?}");
    assert_eq!(std::fs::read(p2.as_path()).expect("read"), data);
    // Over the 1-byte bound, but referenced by job 2: kept.
    let stats = fx.store.cache_stats().await.expect("stats");
    assert_eq!(stats.blobs, 1);
    assert_eq!(fx.server.hits("/big.img"), 1);
    let rows = fx
        .store
        .list(ArtifactFilter::default(), Page::default())
        .await
        .expect("list");
    assert!(rows.records.iter().all(|r| r.job == JobId(2)), "{rows:?}");
    assert_no_part_files(&fx.root());
}

/// The store checks a job's directory once; if it disappears behind the store's back (or
/// through `remove_job`), the next push for the job makes it again and is READY.
#[tokio::test]
async fn a_job_directory_that_went_missing_is_made_again() {
    let fx = Fixture::new().await;
    let data = body(10_000, 25);
    fx.server.serve("/a.img", Resource::new(data.clone()));
    let uri = fx.server.url("/a.img");
    fx.fetch_desc(image(7, "first", &uri))
        .await
        .assert_ready(&fx.root(), &data);
    let job_dir = fx.root().join("jobs").join("7");
    std::fs::remove_dir_all(&job_dir).expect("remove by hand");
    let second = fx.fetch_desc(image(7, "second", &uri)).await;
    second.assert_ready(&fx.root(), &data);
    assert!(job_dir.is_dir());

    fx.store.remove_job(JobId(7)).await.expect("remove_job");
    assert!(!job_dir.exists());
    let third = fx.fetch_desc(image(7, "third", &uri)).await;
    third.assert_ready(&fx.root(), &data);
}
