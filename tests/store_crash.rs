//! Crash consistency: a child process (this test binary, re-run on its ignored
//! `crash_child` test) downloads from a slow server and is killed with SIGKILL mid-transfer;
//! reopening the root must leave it consistent: interrupted rows FAILED "interrupted", no
//! temporary file, every READY row's file present with its recorded size.

mod support;

use std::process::Stdio;
use std::time::Duration;

use artifact_coordinator::{ArtifactManager, ArtifactStatus, Store};
use support::{
    Resource, Statuses, Step, TestServer, WAIT, all_rows, body, eventually, fast_builder,
    files_under, image, part_files, sha256_file, sha256_hex,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Environment variable that carries the child's instructions:
/// `<root>\n<url of the small file>\n<url of the slow file>\n<url of the queued file>`.
const CHILD_ENV: &str = "ARTIFACT_COORDINATOR_CRASH_CHILD";

/// The child: opens a store on the given root, downloads a small file to READY, then
/// starts a slow one (and queues another behind it on a single worker), reports each
/// step on stdout, and waits to be killed. Does nothing without its environment variable.
#[test]
#[ignore = "run by crash tests as a child process"]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let lines: Vec<&str> = spec.lines().collect();
    let [root, small, slow, queued] = lines[..] else {
        panic!("bad {CHILD_ENV}: {spec:?}");
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = fast_builder()
            .workers(1)
            .idle_timeout(Duration::from_secs(120))
            .open(root)
            .await
            .expect("open");
        let (tx, mut statuses) = Statuses::channel();
        let p = store
            .push_artifact(image(1, "small.bin", small), tx.clone())
            .await
            .expect("push small");
        let last = statuses.terminal(&p).await;
        assert_eq!(last.status, ArtifactStatus::Ready, "{last:?}");
        println!("CHILD-READY {p}");
        let p = store
            .push_artifact(image(1, "slow.bin", slow), tx.clone())
            .await
            .expect("push slow");
        println!("CHILD-PUSHED {p}");
        let q = store
            .push_artifact(image(1, "queued.bin", queued), tx.clone())
            .await
            .expect("push queued");
        println!("CHILD-PUSHED {q}");
        // Wait to be killed.
        std::future::pending::<()>().await;
    });
}

/// Where the slow downloads of the crash test stall: past the store's first write to its
/// temporary file (it writes in 1 MiB chunks).
const STALL_AFTER: usize = 3 << 19;

/// The sizes of the temporary files of the store at `root` that process `pid` is
/// writing: named `.part` files, and unnamed ones it holds open in `cache/tmp` (Linux).
fn temp_file_sizes(pid: u32, root: &std::path::Path) -> Vec<u64> {
    let tmp = std::fs::canonicalize(root.join("cache").join("tmp")).unwrap_or_default();
    let mut sizes: Vec<u64> = part_files(root)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
        .collect();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            if target.parent() == Some(tmp.as_path()) {
                sizes.extend(std::fs::metadata(fd.path()).ok().map(|m| m.len()));
            }
        }
    }
    sizes
}

/// Killed mid-download, reopened: the running row and the queued row are FAILED
/// "interrupted", no temporary file is left, the READY file is intact with its size and
/// digest; the store works again after reopening.
#[tokio::test]
async fn killed_mid_download_reopens_consistent() {
    let server = TestServer::start().await;
    let small = body(20_000, 1);
    server.serve("/small", Resource::new(small.clone()));
    // Both slow files send 1.5 MiB (more than the store buffers before its first write),
    // then nothing until the child is gone. Both stall, so that whichever the single
    // worker takes first, the other is still queued at the kill (the FIFO order itself is
    // tested in store_cancel.rs).
    for (path, seed) in [("/slow", 2), ("/queued", 3)] {
        server.serve(
            path,
            Resource::new(body(4 << 20, seed)).trickle(8192, Duration::from_millis(1)),
        );
        server.script(path, [Step::stall_after(STALL_AFTER)]);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let spec = format!(
        "{}\n{}\n{}\n{}",
        root.display(),
        server.url("/small"),
        server.url("/slow"),
        server.url("/queued")
    );
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut ready = None;
    let mut pushed = Vec::new();
    tokio::time::timeout(WAIT * 2, async {
        while pushed.len() < 2 {
            let line = lines
                .next_line()
                .await
                .expect("read child")
                .expect("child ended early");
            // libtest may print "test crash_child ... " before the child's first line.
            if let Some((_, p)) = line.split_once("CHILD-READY ") {
                ready = Some(p.to_owned());
            } else if let Some((_, p)) = line.split_once("CHILD-PUSHED ") {
                pushed.push(p.to_owned());
            }
        }
    })
    .await
    .expect("child reported its pushes");
    tokio::time::timeout(WAIT, async {
        tokio::select! {
            () = server.wait_bytes_sent("/slow", STALL_AFTER as u64) => {}
            () = server.wait_bytes_sent("/queued", STALL_AFTER as u64) => {}
        }
    })
    .await
    .expect("a slow transfer is under way");
    // The child's store has the bytes on their way to its temporary file; wait for the
    // file to show up (nothing to wait on across processes but the file system).
    let pid = child.id().expect("child pid");
    eventually("a temporary file with data", || {
        let root = root.clone();
        async move { temp_file_sizes(pid, &root).iter().any(|&n| n > 0) }
    })
    .await;

    child.kill().await.expect("SIGKILL the child");
    let status = child.wait().await.expect("wait child");
    assert!(!status.success(), "{status:?}");
    // An unnamed temporary file (Linux) ends with the process; a named one stays behind
    // for the reopen to remove. Either way nothing else is left in `cache/tmp`.
    let left = files_under(&root.join("cache").join("tmp"));
    assert_eq!(left, part_files(&root.join("cache")), "{left:?}");

    let store = Store::open(&root).await.expect("reopen");
    assert!(part_files(&root).is_empty(), "{:?}", part_files(&root));
    let rows = all_rows(&store).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let ready = ready.expect("child reported READY");
    for row in &rows {
        if row.path.as_str() == ready {
            assert_eq!(row.status, ArtifactStatus::Ready, "{row:?}");
            assert_eq!(row.size, Some(small.len() as u64));
            assert_eq!(row.sha256.as_deref(), Some(sha256_hex(&small).as_str()));
            assert_eq!(sha256_file(row.path.as_path()), sha256_hex(&small));
        } else {
            assert!(pushed.contains(&row.path.0), "{row:?}");
            assert_eq!(row.status, ArtifactStatus::Failed, "{row:?}");
            assert_eq!(row.error.as_deref(), Some("interrupted"), "{row:?}");
            assert!(!row.path.as_path().exists(), "{row:?}");
        }
    }
    for row in rows.iter().filter(|r| r.status == ArtifactStatus::Ready) {
        let meta = std::fs::metadata(row.path.as_path()).expect("READY file exists");
        assert_eq!(Some(meta.len()), row.size, "{row:?}");
    }
    // One worker: exactly one of the two was requested, once; the other stayed queued.
    assert_eq!(server.hits("/slow") + server.hits("/queued"), 1);

    // The reopened store works.
    let (tx, mut statuses) = Statuses::channel();
    let again = store
        .push_artifact(image(1, "slow.bin", &server.url("/small")), tx)
        .await
        .expect("push after reopen");
    assert!(
        !pushed.contains(&again.0),
        "a new path, not an interrupted one"
    );
    assert_eq!(
        statuses.terminal(&again).await.status,
        ArtifactStatus::Ready
    );
}

/// Reopening a root removes stray temporary files left in job directories.
#[tokio::test]
async fn reopen_removes_stray_part_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    drop(Store::open(&root).await.expect("open"));
    let job_dir = root.join("jobs").join("4").join("image");
    std::fs::create_dir_all(&job_dir).expect("mkdir");
    let stray = job_dir.join(".Image_0.17.part");
    std::fs::write(&stray, b"half a file").expect("write");
    let _store = Store::open(&root).await.expect("reopen");
    assert!(!stray.exists(), "stray temporary file survived a reopen");
}

/// A READY file deleted or truncated while the store was closed is not READY after a
/// reopen (every READY row's file exists with its recorded size).
#[tokio::test]
async fn reopen_demotes_missing_or_resized_ready_files() {
    let server = TestServer::start().await;
    server.serve("/a", Resource::new(body(3000, 4)));
    server.serve("/b", Resource::new(body(3000, 5)));
    server.serve("/c", Resource::new(body(3000, 6)));
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let mut paths = Vec::new();
    {
        let store = fast_builder().open(&root).await.expect("open");
        let (tx, mut statuses) = Statuses::channel();
        for name in ["a", "b", "c"] {
            let p = store
                .push_artifact(image(2, name, &server.url(name)), tx.clone())
                .await
                .expect("push");
            assert_eq!(statuses.terminal(&p).await.status, ArtifactStatus::Ready);
            paths.push(p);
        }
    }
    std::fs::remove_file(paths[0].as_path()).expect("remove");
    std::fs::write(paths[1].as_path(), b"short").expect("truncate");
    let store = Store::open(&root).await.expect("reopen");
    for row in all_rows(&store).await {
        if row.status == ArtifactStatus::Ready {
            let meta = std::fs::metadata(row.path.as_path())
                .unwrap_or_else(|e| panic!("READY row without its file: {row:?}: {e}"));
            assert_eq!(Some(meta.len()), row.size, "{row:?}");
        }
    }
    let c = store.info(&paths[2]).await.expect("info").expect("row");
    assert_eq!(c.status, ArtifactStatus::Ready, "{c:?}");
}

/// Two READY artifacts of job 1, `good` and `bad`, downloaded into a store at `root`
/// (opened with `open`, then closed); then `bad`'s file is rewritten in place with
/// other bytes of the same size, as if while the store was closed.
struct Rewritten {
    _server: TestServer,
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    good: Vec<u8>,
    good_path: artifact_coordinator::ArtifactPath,
    bad_path: artifact_coordinator::ArtifactPath,
}

impl Rewritten {
    async fn new(open: impl Fn() -> artifact_coordinator::StoreBuilder, seed: u64) -> Rewritten {
        let server = TestServer::start().await;
        let good = body(4000, seed);
        server.serve("/good", Resource::new(good.clone()));
        server.serve("/bad", Resource::new(body(4000, seed + 1)));
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let store = open().open(&root).await.expect("open");
        let (tx, mut statuses) = Statuses::channel();
        let good_path = store
            .push_artifact(image(1, "good", &server.url("/good")), tx.clone())
            .await
            .expect("push");
        let bad_path = store
            .push_artifact(image(1, "bad", &server.url("/bad")), tx)
            .await
            .expect("push");
        for path in [&good_path, &bad_path] {
            assert_eq!(statuses.terminal(path).await.status, ArtifactStatus::Ready);
        }
        store.close().await;
        std::fs::write(bad_path.as_path(), body(4000, seed + 2)).expect("rewrite");
        Rewritten {
            _server: server,
            _dir: dir,
            root,
            good,
            good_path,
            bad_path,
        }
    }

    /// The intact file is still READY after the reopen, with its content.
    async fn assert_good_stays(&self, store: &Store, what: &str) {
        let good_row = store
            .info(&self.good_path)
            .await
            .expect("info")
            .expect("row");
        assert_eq!(
            good_row.status,
            ArtifactStatus::Ready,
            "{what}: {good_row:?}"
        );
        assert_eq!(
            sha256_file(self.good_path.as_path()),
            sha256_hex(&self.good)
        );
    }
}

/// With `verify_on_open(true)`, a READY file whose content changed (same size) while the
/// store was closed is re-hashed at open: its row is no longer READY and the file is gone;
/// an intact file stays READY.
#[tokio::test]
async fn verify_on_open_catches_corrupted_ready_files() {
    let fx = Rewritten::new(fast_builder, 7).await;
    let store = fast_builder()
        .verify_on_open(true)
        .open(&fx.root)
        .await
        .expect("reopen");
    let bad = store.info(&fx.bad_path).await.expect("info").expect("row");
    assert_ne!(bad.status, ArtifactStatus::Ready, "{bad:?}");
    assert!(!fx.bad_path.as_path().exists());
    fx.assert_good_stays(&store, "verify_on_open").await;
}

/// Without `verify_on_open`, a READY file whose content was rewritten (same size) while the
/// store was closed is still caught at open: its modification time is no longer its
/// blob's, so it is re-hashed. Intact files stay READY, linked or copied (a copy keeps the
/// blob's time).
#[tokio::test]
async fn rewritten_ready_files_are_caught_at_open() {
    for copy in [false, true] {
        let open = || fast_builder().copy_job_files(copy);
        let fx = Rewritten::new(open, 17).await;
        let store = open().open(&fx.root).await.expect("reopen");
        let bad = store.info(&fx.bad_path).await.expect("info").expect("row");
        assert_eq!(bad.status, ArtifactStatus::Failed, "copy {copy}: {bad:?}");
        let reason = bad.error.unwrap_or_default();
        assert!(reason.contains("sha256 mismatch after restart"), "{reason}");
        fx.assert_good_stays(&store, &format!("copy {copy}")).await;
    }
}
