//! Unit tests of the whole store against a tiny scripted HTTP server on 127.0.0.1 (the
//! full fault suite lives in `tests/`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::index::StatusUpdate;
use super::*;
use crate::model::{ArtifactStatus, ChecksumSource, ChecksumType};

/// What the server does for one request.
#[derive(Clone, Default)]
struct Reply {
    /// Status line, e.g. `"200 OK"`.
    status: &'static str,
    /// Extra headers.
    headers: Vec<(String, String)>,
    /// The body.
    body: Vec<u8>,
    /// Content-Length to announce (default: the body's length).
    length: Option<usize>,
    /// Stop sending (and close) after this many body bytes.
    cut: Option<usize>,
    /// Send the headers, then nothing, forever.
    stall: bool,
    /// Send no Content-Length: the body ends when the connection closes.
    no_length: bool,
}

impl Reply {
    fn ok(body: &[u8]) -> Reply {
        Reply {
            status: "200 OK",
            body: body.to_vec(),
            ..Reply::default()
        }
    }
    fn status(status: &'static str) -> Reply {
        Reply {
            status,
            ..Reply::default()
        }
    }
    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
    /// A 200 of `body` that offers ranges (`Accept-Ranges`, ETag `"v1"`) and breaks after
    /// `cut` bytes.
    fn broken(body: &[u8], cut: usize) -> Reply {
        let mut reply = Reply::ok(body)
            .header("Accept-Ranges", "bytes")
            .header("ETag", "\"v1\"");
        reply.cut = Some(cut);
        reply
    }
    /// A `206 Partial Content` of `body`, announced with the Content-Range `range`.
    fn partial(body: &[u8], range: &str) -> Reply {
        Reply {
            status: "206 Partial Content",
            body: body.to_vec(),
            ..Reply::default()
        }
        .header("Content-Range", range)
    }
}

/// A server that answers each request with the next scripted reply (the last one repeats)
/// and records the request heads.
struct Server {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start(replies: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(replies)));
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                let script = Arc::clone(&script);
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    loop {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            match socket.read(&mut byte).await {
                                Ok(1) => head.push(byte[0]),
                                _ => return,
                            }
                        }
                        seen.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&head).into_owned());
                        let reply = {
                            let mut script = script.lock().unwrap();
                            if script.len() > 1 {
                                script.pop_front().unwrap()
                            } else {
                                script.front().cloned().unwrap()
                            }
                        };
                        let length = reply.length.unwrap_or(reply.body.len());
                        let mut out = if reply.no_length {
                            format!("HTTP/1.1 {}\r\nConnection: close\r\n", reply.status)
                        } else {
                            format!("HTTP/1.1 {}\r\nContent-Length: {length}\r\n", reply.status)
                        };
                        for (name, value) in &reply.headers {
                            out.push_str(&format!("{name}: {value}\r\n"));
                        }
                        out.push_str("\r\n");
                        if socket.write_all(out.as_bytes()).await.is_err() {
                            return;
                        }
                        if reply.stall {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        let end = reply.cut.unwrap_or(reply.body.len()).min(reply.body.len());
                        if socket.write_all(&reply.body[..end]).await.is_err() {
                            return;
                        }
                        if reply.no_length || reply.cut.is_some() || end < length {
                            return;
                        }
                    }
                });
            }
        });
        Server { url, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.url)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn store(dir: &Path) -> Store {
    Store::builder()
        .backoff_base(Duration::from_millis(1))
        .backoff_max(Duration::from_millis(5))
        .idle_timeout(Duration::from_millis(500))
        .max_attempts(3)
        .fsync(false)
        .open(dir)
        .await
        .expect("open")
}

/// Changes of one path until its terminal status.
async fn until_terminal(
    rx: &mut mpsc::Receiver<ArtifactStatusChange>,
) -> Vec<ArtifactStatusChange> {
    let mut out = Vec::new();
    loop {
        let change = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a status in time")
            .expect("collector open");
        let done = change.status.is_terminal();
        out.push(change);
        if done {
            return out;
        }
    }
}

/// Changes of `path` until it reports `status` (the others on `rx` are skipped).
async fn wait_for_status(
    rx: &mut mpsc::Receiver<ArtifactStatusChange>,
    path: &ArtifactPath,
    status: ArtifactStatus,
) {
    loop {
        let change = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a status in time")
            .expect("collector open");
        if change.path == *path && change.status == status {
            return;
        }
    }
}

/// A reply that sends its headers, then nothing, forever.
fn stalled() -> Reply {
    Reply {
        stall: true,
        ..Reply::ok(&data(1000))
    }
}

/// Temporary files left anywhere under the root.
fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_str().is_some_and(|p| p.ends_with(".part")) {
                found.push(path);
            }
        }
    }
    found
}

fn image(job: u64, alias: &str, uri: &str) -> ArtifactDescription {
    ArtifactDescription::new(JobId(job), ArtifactType::Image, alias, uri)
}

/// A server whose every answer is an md5 checksum file that matches nothing.
async fn wrong_md5_sums() -> Server {
    Server::start(vec![Reply::ok(
        b"00000000000000000000000000000000  boot.img\n",
    )])
    .await
}

/// How many rows the index holds for `job`.
async fn rows_of_job(store: &Store, job: u64) -> u64 {
    let filter = ArtifactFilter {
        job: Some(JobId(job)),
        ..ArtifactFilter::default()
    };
    store.list(filter, Page::default()).await.unwrap().total
}

/// A transfer that holds a worker: `job`'s `"a"`, from a server whose every answer
/// stalls, on a one-worker store (fsync off, then `configure`d), reported DOWNLOADING.
struct StalledTransfer {
    server: Server,
    dir: tempfile::TempDir,
    store: Store,
    tx: mpsc::Sender<ArtifactStatusChange>,
    rx: mpsc::Receiver<ArtifactStatusChange>,
    running: ArtifactPath,
}

async fn stalled_transfer(
    job: u64,
    configure: impl FnOnce(StoreBuilder) -> StoreBuilder,
) -> StalledTransfer {
    let server = Server::start(vec![stalled()]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = configure(Store::builder().workers(1).fsync(false))
        .open(dir.path())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let running = store
        .push_artifact(image(job, "a", &server.url("a")), tx.clone())
        .await
        .unwrap();
    wait_for_status(&mut rx, &running, ArtifactStatus::Downloading).await;
    StalledTransfer {
        server,
        dir,
        store,
        tx,
        rx,
        running,
    }
}

/// A plain download goes PENDING, DOWNLOADING, READY; the file and the row agree.
#[tokio::test]
async fn downloads_and_records() {
    let body = data(700_000);
    let server = Server::start(vec![Reply::ok(&body)]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let (tx, mut rx) = mpsc::channel(16);
    let path = store
        .push_artifact(image(3, "Image_0", &server.url("boot.img")), tx)
        .await
        .unwrap();
    assert_eq!(
        path.as_path(),
        store.root().join("jobs/3/image/Image_0").as_path()
    );
    let statuses: Vec<_> = until_terminal(&mut rx)
        .await
        .into_iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(
        statuses,
        [
            ArtifactStatus::Pending,
            ArtifactStatus::Downloading,
            ArtifactStatus::Ready
        ]
    );
    assert_eq!(std::fs::read(path.as_path()).unwrap(), body);
    let record = store.info(&path).await.unwrap().unwrap();
    assert_eq!(record.status, ArtifactStatus::Ready);
    assert_eq!(record.size, Some(body.len() as u64));
    assert_eq!(record.sha256.as_deref(), Some(sha256_hex(&body).as_str()));
    assert_eq!(record.alias, "Image_0");
    assert!(temp_files(dir.path()).is_empty());
}

/// A 404 fails at once, with the status in the reason; no file is left.
#[tokio::test]
async fn not_found_fails_at_once() {
    let server = Server::start(vec![Reply::status("404 Not Found")]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let (tx, mut rx) = mpsc::channel(16);
    let uri = server.url("missing");
    let path = store.push_artifact(image(1, "a", &uri), tx).await.unwrap();
    let last = until_terminal(&mut rx).await.pop().unwrap();
    assert_eq!(last.status, ArtifactStatus::Failed);
    assert_eq!(
        last.reason.as_deref(),
        Some(format!("HTTP 404 Not Found from {uri}").as_str())
    );
    assert_eq!(server.requests().len(), 1);
    assert!(!path.as_path().exists());
    let record = store.info(&path).await.unwrap().unwrap();
    assert_eq!(record.error, last.reason);
}

/// 503 and 429 (with Retry-After: 0) are retried.
#[tokio::test]
async fn retries_server_errors() {
    let body = data(1000);
    let server = Server::start(vec![
        Reply::status("503 Service Unavailable"),
        Reply::status("429 Too Many Requests").header("Retry-After", "0"),
        Reply::ok(&body),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let (tx, mut rx) = mpsc::channel(16);
    let path = store
        .push_artifact(image(1, "a", &server.url("f")), tx)
        .await
        .unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.pop().unwrap().status,
        ArtifactStatus::Ready
    );
    assert_eq!(server.requests().len(), 3);
    assert_eq!(std::fs::read(path.as_path()).unwrap(), body);
}

/// A body cut short without range support is retried from zero and then fails as
/// truncated; nothing is left behind.
#[tokio::test]
async fn truncated_body_never_becomes_ready() {
    let body = data(50_000);
    let mut cut = Reply::ok(&body);
    cut.cut = Some(20_000);
    let server = Server::start(vec![cut]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let (tx, mut rx) = mpsc::channel(16);
    let path = store
        .push_artifact(image(1, "a", &server.url("f")), tx)
        .await
        .unwrap();
    let last = until_terminal(&mut rx).await.pop().unwrap();
    assert_eq!(last.status, ArtifactStatus::Failed);
    let reason = last.reason.unwrap();
    assert!(
        reason.contains("truncated") && reason.contains("expected 50000 bytes, got 20000"),
        "{reason}"
    );
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert_eq!(server.requests().len(), 3);
    assert!(server.requests().iter().all(|r| !r.contains("range:")));
    assert!(!path.as_path().exists());
    assert!(temp_files(dir.path()).is_empty());
}

/// The replies of a resumable transfer of the 300,000-byte `body`: the first breaks after
/// 123,456 bytes (with `Accept-Ranges` and an ETag), the second is the `206` of the rest.
fn broken_then_resumed(body: &[u8]) -> [Reply; 2] {
    let first = Reply::broken(body, 123_456);
    let rest =
        Reply::partial(&body[123_456..], "bytes 123456-299999/300000").header("ETag", "\"v1\"");
    [first, rest]
}

/// A broken transfer resumes with Range + If-Range and the digest covers the whole file.
#[tokio::test]
async fn resumes_with_range() {
    let body = data(300_000);
    let [first, rest] = broken_then_resumed(&body);
    let server = Server::start(vec![first, rest]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let (tx, mut rx) = mpsc::channel(16);
    let path = store
        .push_artifact(image(1, "a", &server.url("f")), tx)
        .await
        .unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.pop().unwrap().status,
        ArtifactStatus::Ready
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let second = requests[1].to_ascii_lowercase();
    assert!(second.contains("range: bytes=123456-"), "{second}");
    assert!(second.contains("if-range: \"v1\""), "{second}");
    assert_eq!(std::fs::read(path.as_path()).unwrap(), body);
    let record = store.info(&path).await.unwrap().unwrap();
    assert_eq!(record.sha256.unwrap(), sha256_hex(&body));
}

/// Where unnamed temporary files cannot be made, the named `cache/tmp/<n>.part` works
/// the same: a broken transfer resumes into it, a verified one is renamed onto its blob
/// and linked at the job's path, a mismatched one is removed.
#[tokio::test]
async fn named_temporary_files_work_too() {
    let body = data(300_000);
    let [first, rest] = broken_then_resumed(&body);
    let server = Server::start(vec![first, rest, Reply::ok(&body)]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Store::builder()
        .backoff_base(Duration::from_millis(1))
        .max_attempts(3)
        .settings;
    settings.named_temps = true;
    let store = Store::open_with(dir.path(), settings).await.unwrap();

    let (tx, mut rx) = mpsc::channel(16);
    let path = store
        .push_artifact(image(1, "a", &server.url("f")), tx)
        .await
        .unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.pop().unwrap().status,
        ArtifactStatus::Ready
    );
    let second = server.requests()[1].to_ascii_lowercase();
    assert!(second.contains("range: bytes=123456-"), "{second}");
    assert_eq!(std::fs::read(path.as_path()).unwrap(), body);
    let blob = dir
        .path()
        .join("cache")
        .join("blobs")
        .join(sha256_hex(&body));
    assert_eq!(std::fs::read(&blob).unwrap(), body);

    let (tx, mut rx) = mpsc::channel(16);
    let mut d = image(2, "b", &server.url("g"));
    d.sha256 = Some("0".repeat(64));
    let bad = store.push_artifact(d, tx).await.unwrap();
    let last = until_terminal(&mut rx).await.pop().unwrap();
    assert_eq!(last.status, ArtifactStatus::Failed);
    assert!(last.reason.unwrap().contains("sha256 mismatch"));
    assert!(!bad.as_path().exists());
    assert!(
        temp_files(dir.path()).is_empty(),
        "{:?}",
        temp_files(dir.path())
    );
}

/// A 206 that starts elsewhere restarts from zero.
#[tokio::test]
async fn bad_content_range_restarts() {
    let body = data(100_000);
    let first = Reply::broken(&body, 40_000);
    let wrong = Reply::partial(&body[10_000..], "bytes 10000-99999/100000");
    let server = Server::start(vec![first, wrong, Reply::ok(&body)]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder()
        .backoff_base(Duration::from_millis(1))
        .max_attempts(5)
        .fsync(false)
        .open(dir.path())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    let path = store
        .push_artifact(image(1, "a", &server.url("f")), tx)
        .await
        .unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.pop().unwrap().status,
        ArtifactStatus::Ready
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert!(!requests[2].to_ascii_lowercase().contains("range:"));
    assert_eq!(std::fs::read(path.as_path()).unwrap(), body);
}

/// Expected sha256 and md5 checksum files are checked, with the exact reasons.
#[tokio::test]
async fn verifies_digests() {
    let body = data(10_000);
    let md5 = hex::encode(md5::Md5::digest(&body));
    let server = Server::start(vec![Reply::ok(&body)]).await;
    let sums = Server::start(vec![Reply::ok(format!("{md5}  boot.img\n").as_bytes())]).await;
    let bad_sums = wrong_md5_sums().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;

    let (tx, mut rx) = mpsc::channel(16);
    let mut d = image(1, "good", &server.url("f"));
    d.checksum = Some(ChecksumSource {
        uri: sums.url("f.md5"),
        kind: ChecksumType::Md5,
    });
    d.sha256 = Some(sha256_hex(&body).to_uppercase());
    store.push_artifact(d, tx).await.unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.pop().unwrap().status,
        ArtifactStatus::Ready
    );

    let (tx, mut rx) = mpsc::channel(16);
    let mut d = image(1, "bad-md5", &server.url("f"));
    let bad_uri = bad_sums.url("f.md5");
    d.checksum = Some(ChecksumSource {
        uri: bad_uri.clone(),
        kind: ChecksumType::Md5,
    });
    let path = store.push_artifact(d, tx).await.unwrap();
    let last = until_terminal(&mut rx).await.pop().unwrap();
    assert_eq!(
        last.reason.as_deref(),
        Some(
            format!(
                "md5 mismatch (checksum file {bad_uri}): expected 00000000000000000000000000000000, got {md5}"
            )
            .as_str()
        )
    );
    assert!(!path.as_path().exists());

    let (tx, mut rx) = mpsc::channel(16);
    let mut d = image(1, "bad-sha", &server.url("f"));
    let zeros = "0".repeat(64);
    d.sha256 = Some(zeros.clone());
    store.push_artifact(d, tx).await.unwrap();
    let last = until_terminal(&mut rx).await.pop().unwrap();
    assert_eq!(
        last.reason.unwrap(),
        format!(
            "sha256 mismatch for {}: expected {zeros}, got {}",
            server.url("f"),
            sha256_hex(&body)
        )
    );
    assert!(temp_files(dir.path()).is_empty());
}

/// A Content-Length over the limit fails before writing; so does a body that grows past it.
#[tokio::test]
async fn size_limit() {
    let body = data(5000);
    let server = Server::start(vec![Reply::ok(&body)]).await;
    let unannounced = Server::start(vec![Reply {
        no_length: true,
        ..Reply::ok(&body)
    }])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder()
        .max_size(Some(1000))
        .fsync(false)
        .open(dir.path())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    store
        .push_artifact(image(1, "a", &server.url("f")), tx)
        .await
        .unwrap();
    let reason = until_terminal(&mut rx).await.pop().unwrap().reason.unwrap();
    assert!(reason.contains("exceeds size limit"), "{reason}");
    assert!(reason.contains("Content-Length 5000"), "{reason}");
    assert_eq!(server.requests().len(), 1);

    let (tx, mut rx) = mpsc::channel(16);
    store
        .push_artifact(image(1, "b", &unannounced.url("f")), tx)
        .await
        .unwrap();
    let reason = until_terminal(&mut rx).await.pop().unwrap().reason.unwrap();
    assert!(reason.contains("exceeds size limit"), "{reason}");
    assert!(reason.contains("grew past"), "{reason}");
    assert_eq!(unannounced.requests().len(), 1);
    assert!(temp_files(dir.path()).is_empty());

    // Without a limit, a close-delimited body is complete.
    store.close().await;
    drop(store);
    let free = store_with_defaults(dir.path()).await;
    let (tx, mut rx) = mpsc::channel(16);
    let path = free
        .push_artifact(image(1, "c", &unannounced.url("f")), tx)
        .await
        .unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.pop().unwrap().status,
        ArtifactStatus::Ready
    );
    assert_eq!(std::fs::read(path.as_path()).unwrap(), body);
}

async fn store_with_defaults(dir: &Path) -> Store {
    Store::open(dir).await.expect("open")
}

/// Cancelling a job stops a stalled transfer and a queued one, promptly, with "cancelled".
#[tokio::test]
async fn cancel_stops_running_and_queued() {
    let StalledTransfer {
        server,
        dir,
        store,
        tx,
        mut rx,
        running,
    } = stalled_transfer(9, |builder| builder).await;
    let queued = store
        .push_artifact(image(9, "b", &server.url("b")), tx)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), store.cancel_job(JobId(9)))
        .await
        .expect("prompt")
        .unwrap();
    assert!(temp_files(dir.path()).is_empty());
    let mut failed = Vec::new();
    while failed.len() < 2 {
        let c = rx.recv().await.unwrap();
        if c.status == ArtifactStatus::Failed {
            assert_eq!(c.reason.as_deref(), Some(REASON_CANCELLED));
            failed.push(c.path);
        }
    }
    failed.sort();
    let mut want = vec![running.clone(), queued.clone()];
    want.sort();
    assert_eq!(failed, want);
    for path in [running, queued] {
        let record = store.info(&path).await.unwrap().unwrap();
        assert_eq!(record.status, ArtifactStatus::Failed);
        assert_eq!(record.error.as_deref(), Some(REASON_CANCELLED));
    }
}

/// A stall is an idle timeout (retried, then FAILED).
#[tokio::test]
async fn idle_timeout() {
    let server = Server::start(vec![stalled()]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder()
        .idle_timeout(Duration::from_millis(100))
        .backoff_base(Duration::from_millis(1))
        .max_attempts(2)
        .fsync(false)
        .open(dir.path())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    store
        .push_artifact(image(1, "a", &server.url("f")), tx)
        .await
        .unwrap();
    let reason = until_terminal(&mut rx).await.pop().unwrap().reason.unwrap();
    assert!(reason.starts_with("idle timeout"), "{reason}");
    assert!(reason.contains("gave up after 2 attempts"), "{reason}");
}

/// Bad descriptions are refused at push time and nothing is recorded.
#[tokio::test]
async fn refuses_bad_descriptions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder()
        .allow_file_scheme(false)
        .open(dir.path())
        .await
        .unwrap();
    let (tx, _rx) = mpsc::channel(16);
    for (alias, uri, needle) in [
        ("../x", "http://127.0.0.1/x", "\"../x\""),
        ("a", "ftp://127.0.0.1/x", "ftp://127.0.0.1/x"),
        ("a", "file:///etc/passwd", "file:///etc/passwd"),
        ("a", "not a uri", "not a uri"),
    ] {
        let err = store
            .push_artifact(image(1, alias, uri), tx.clone())
            .await
            .expect_err(uri);
        assert!(err.to_string().contains(needle), "{err}");
        assert!(err.downcast_ref::<StoreError>().is_some());
    }
    let page = store
        .list(ArtifactFilter::default(), Page::default())
        .await
        .unwrap();
    assert_eq!(page.total, 0);
}

/// file:// copies; repeated aliases get distinct paths; create_artifact records a row.
#[tokio::test]
async fn file_scheme_and_unique_paths() {
    let src = tempfile::tempdir().unwrap();
    let body = data(600_000);
    let file = src.path().join("src.bin");
    std::fs::write(&file, &body).unwrap();
    let uri = url::Url::from_file_path(&file).unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let (tx, mut rx) = mpsc::channel(16);
    let first = store
        .push_artifact(image(2, "same", &uri), tx.clone())
        .await
        .unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.pop().unwrap().status,
        ArtifactStatus::Ready
    );
    let second = store
        .push_artifact(image(2, "same", &uri), tx)
        .await
        .unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.pop().unwrap().status,
        ArtifactStatus::Ready
    );
    assert_ne!(first, second);
    assert!(second.as_str().ends_with("same~1"), "{second}");
    assert_eq!(std::fs::read(second.as_path()).unwrap(), body);

    let pulled = store
        .create_artifact(ArtifactDescription::new(
            JobId(2),
            ArtifactType::Result,
            "result.log",
            "",
        ))
        .await
        .unwrap();
    assert!(pulled.as_path().parent().unwrap().is_dir());
    assert!(!pulled.as_path().exists());
    let record = store.info(&pulled).await.unwrap().unwrap();
    assert_eq!(record.status, ArtifactStatus::Pending);
    assert_eq!(record.kind, ArtifactType::Result);
}

/// list filters and pages by keyset with total and remaining counts.
#[tokio::test]
async fn list_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    for job in 1..=3u64 {
        for i in 0..5 {
            let kind = if i % 2 == 0 {
                ArtifactType::Result
            } else {
                ArtifactType::Test
            };
            store
                .create_artifact(ArtifactDescription::new(
                    JobId(job),
                    kind,
                    format!("f{i}"),
                    "",
                ))
                .await
                .unwrap();
        }
    }
    let all = store
        .list(ArtifactFilter::default(), Page::default())
        .await
        .unwrap();
    assert_eq!((all.total, all.remaining, all.next), (15, 0, None));
    assert_eq!(all.records.len(), 15);

    let filter = ArtifactFilter {
        job: Some(JobId(2)),
        ..ArtifactFilter::default()
    };
    let mut after = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = store
            .list(filter.clone(), Page { after, limit: 2 })
            .await
            .unwrap();
        pages += 1;
        assert_eq!(page.total, 5);
        seen.extend(page.records.iter().map(|r| r.alias.clone()));
        assert_eq!(page.remaining as usize, 5 - seen.len());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["f0", "f1", "f2", "f3", "f4"]);

    let tests = store
        .list(
            ArtifactFilter {
                kind: Some(ArtifactType::Test),
                alias: Some("f1".into()),
                status: Some(ArtifactStatus::Pending),
                ..ArtifactFilter::default()
            },
            Page::default(),
        )
        .await
        .unwrap();
    assert_eq!(tests.total, 3);
    assert!(tests.records.iter().all(|r| r.alias == "f1"));
    let none = store
        .list(
            ArtifactFilter {
                status: Some(ArtifactStatus::Ready),
                ..ArtifactFilter::default()
            },
            Page::default(),
        )
        .await
        .unwrap();
    assert_eq!((none.total, none.records.len(), none.next), (0, 0, None));
}

/// Reopening after a crash: interrupted rows FAILED, temporary files and half-placed files
/// removed, READY rows whose file vanished FAILED, created rows untouched.
#[tokio::test]
async fn recovers_after_crash() {
    let body = data(1000);
    let server = Server::start(vec![Reply::ok(&body)]).await;
    let dir = tempfile::tempdir().unwrap();
    let (ready, gone, created) = {
        let store = store(dir.path()).await;
        let (tx, mut rx) = mpsc::channel(16);
        let ready = store
            .push_artifact(image(1, "ready", &server.url("f")), tx.clone())
            .await
            .unwrap();
        until_terminal(&mut rx).await;
        let gone = store
            .push_artifact(image(1, "gone", &server.url("f")), tx)
            .await
            .unwrap();
        until_terminal(&mut rx).await;
        let created = store
            .create_artifact(ArtifactDescription::new(
                JobId(1),
                ArtifactType::Result,
                "out",
                "",
            ))
            .await
            .unwrap();
        std::fs::write(created.as_path(), b"job output").unwrap();
        store.close().await;
        (ready, gone, created)
    };
    std::fs::remove_file(gone.as_path()).unwrap();
    // A transfer that was running when the process died: row DOWNLOADING, a temp file.
    let (id, interrupted) = {
        let layout = Layout::create(dir.path()).unwrap();
        let (index, _) = Index::open(&layout, false).unwrap();
        let dir = layout
            .ensure_type_dir(JobId(1), ArtifactType::Image, false)
            .unwrap();
        let id = index.last_id() + 1;
        let path = dir.join("running").to_str().unwrap().to_owned();
        index
            .insert(NewArtifact {
                id,
                job: JobId(1),
                kind: ArtifactType::Image,
                alias: "running".into(),
                uri: server.url("f"),
                path: path.clone(),
                pushed: true,
            })
            .wait()
            .await
            .unwrap();
        index
            .update(StatusUpdate {
                id,
                status: ArtifactStatus::Downloading,
                size: None,
                sha256: None,
                error: None,
            })
            .await
            .unwrap();
        std::fs::write(dir.join(paths::temp_name("running", id)), b"half").unwrap();
        (id, ArtifactPath(path))
    };
    let store = store(dir.path()).await;
    assert!(temp_files(dir.path()).is_empty());
    let r = store.info(&interrupted).await.unwrap().unwrap();
    assert_eq!((r.id, r.status), (id, ArtifactStatus::Failed));
    assert_eq!(r.error.as_deref(), Some("interrupted"));
    let r = store.info(&gone).await.unwrap().unwrap();
    assert_eq!(r.status, ArtifactStatus::Failed);
    assert_eq!(r.error.as_deref(), Some("missing after restart"));
    let r = store.info(&ready).await.unwrap().unwrap();
    assert_eq!(r.status, ArtifactStatus::Ready);
    let r = store.info(&created).await.unwrap().unwrap();
    assert_eq!(r.status, ArtifactStatus::Pending);
    assert_eq!(std::fs::read(created.as_path()).unwrap(), b"job output");
}

/// The Downloader with a real Store: a job with an image, an image with an md5 checksum
/// file, a push and a pull goes through to OK, with the config's paths on verified files.
#[tokio::test]
async fn downloader_end_to_end() {
    use crate::{Config, Downloader, JobStatus, JobsController};

    struct Controller {
        config: Mutex<Config>,
    }

    #[async_trait]
    impl JobsController for Controller {
        async fn set_status_and_info(
            &self,
            _: JobId,
            _: JobStatus,
            _: String,
        ) -> Result<(), BoxError> {
            Ok(())
        }
        async fn get_config(&self, _: JobId) -> Result<Config, BoxError> {
            Ok(self.config.lock().unwrap().clone())
        }
        async fn set_config(&self, _: JobId, config: Config) -> Result<(), BoxError> {
            *self.config.lock().unwrap() = config;
            Ok(())
        }
    }

    let boot = data(200_000);
    let md5 = hex::encode(md5::Md5::digest(&boot));
    let boot_server = Server::start(vec![Reply::ok(&boot)]).await;
    let sums = Server::start(vec![Reply::ok(format!("{md5}  boot.img\n").as_bytes())]).await;
    let script = b"#!/bin/sh\necho hi\n".to_vec();
    let script_server = Server::start(vec![Reply::ok(&script)]).await;
    let json = format!(
        r#"{{"action": {{"deploy": {{"images": [
            {{"uri": "{}", "checksum_uri": "{}", "checksum_type": "md5"}},
            {{"uri": "{}", "sha256": "{}"}}]}},
          "test": {{"test_cases": [{{"case_name": "smoke", "test_actions": [
            {{"push": {{"uri": "{}", "dest": "/tmp/run.sh", "alias": "run.sh"}}}},
            {{"pull": {{"src": "/tmp/out.log", "alias": "out.log"}}}}]}}]}}}}}}"#,
        boot_server.url("boot.img"),
        sums.url("boot.img.md5"),
        boot_server.url("boot.img"),
        sha256_hex(&boot),
        script_server.url("run.sh"),
    );
    let controller = Arc::new(Controller {
        config: Mutex::new(Config::from_json(&json).unwrap()),
    });
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let (downloader, mut notifications) = Downloader::new(
        Arc::clone(&controller) as Arc<dyn JobsController>,
        Arc::new(store.clone()),
    );
    downloader.download(JobId(5)).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), notifications.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(answer.ok, "{}", answer.msg);
    downloader.shutdown().await.unwrap();
    let config = controller.config.lock().unwrap().clone();
    let images = &config.action.deploy.images;
    for image in images {
        assert_eq!(std::fs::read(image.path.as_ref().unwrap()).unwrap(), boot);
    }
    let sums_path = images[0].checksum_path.as_ref().unwrap();
    assert!(
        std::fs::read_to_string(sums_path)
            .unwrap()
            .starts_with(&md5)
    );
    assert_eq!(rows_of_job(&store, 5).await, 5);
    assert!(temp_files(dir.path()).is_empty());
}
/// A resumed 206 of another version of the file (a server or proxy that ignores
/// `If-Range` after the file was replaced by a shorter one: another ETag, another length)
/// is not appended to the old bytes: the transfer starts again from zero and gets the new
/// version whole.
#[tokio::test]
async fn resume_restarts_when_the_file_changed() {
    let old = data(300_000);
    let new: Vec<u8> = data(200_000).iter().map(|b| b ^ 0x5a).collect();
    let first = Reply::broken(&old, 123_456);
    let rest =
        Reply::partial(&new[123_456..], "bytes 123456-199999/200000").header("ETag", "\"v2\"");
    let server = Server::start(vec![first, rest, Reply::ok(&new).header("ETag", "\"v2\"")]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let (tx, mut rx) = mpsc::channel(16);
    let path = store
        .push_artifact(image(1, "a", &server.url("f")), tx)
        .await
        .unwrap();
    let last = until_terminal(&mut rx).await.pop().unwrap();
    assert_eq!(last.status, ArtifactStatus::Ready, "{last:?}");
    let got = std::fs::read(path.as_path()).unwrap();
    assert!(
        got == new,
        "READY file of {} bytes is not the new version",
        got.len()
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(
        requests[1].to_ascii_lowercase().contains("if-range"),
        "{requests:?}"
    );
    assert!(
        !requests[2].to_ascii_lowercase().contains("range"),
        "{requests:?}"
    );
}

/// A resumed 206 of the same version with a validator but a complete length that differs
/// from the first answer's is not appended either.
#[tokio::test]
async fn resume_restarts_when_the_length_changed() {
    let old = data(300_000);
    let first = Reply::broken(&old, 100_000);
    // No ETag on the 206 (allowed), but the file is now 250,000 bytes long.
    let rest = Reply::partial(&old[100_000..250_000], "bytes 100000-249999/250000");
    let server = Server::start(vec![first, rest, Reply::ok(&old).header("ETag", "\"v1\"")]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let (tx, mut rx) = mpsc::channel(16);
    let path = store
        .push_artifact(image(1, "a", &server.url("f")), tx)
        .await
        .unwrap();
    let last = until_terminal(&mut rx).await.pop().unwrap();
    assert_eq!(last.status, ArtifactStatus::Ready, "{last:?}");
    assert!(std::fs::read(path.as_path()).unwrap() == old);
    assert_eq!(server.requests().len(), 3);
}

/// A push without a sha256 but with a checksum file, answered `304 Not Modified` for a
/// cached blob, still compares the blob with the checksum file: a mismatch is FAILED.
#[tokio::test]
async fn not_modified_still_checks_the_checksum_file() {
    let body = data(10_000);
    let server = Server::start(vec![
        Reply::ok(&body).header("ETag", "\"e1\""),
        Reply::status("304 Not Modified").header("ETag", "\"e1\""),
    ])
    .await;
    let bad_sums = wrong_md5_sums().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;

    // Job 1: no checksum; fills the cache and records the ETag.
    let (tx, mut rx) = mpsc::channel(16);
    store
        .push_artifact(image(1, "img", &server.url("boot.img")), tx)
        .await
        .unwrap();
    assert_eq!(
        until_terminal(&mut rx).await.pop().unwrap().status,
        ArtifactStatus::Ready
    );

    // Job 2: same URI, with an md5 checksum file that does not match.
    let (tx, mut rx) = mpsc::channel(16);
    let mut d = image(2, "img", &server.url("boot.img"));
    d.checksum = Some(ChecksumSource {
        uri: bad_sums.url("boot.img.md5"),
        kind: ChecksumType::Md5,
    });
    let path = store.push_artifact(d, tx).await.unwrap();
    let last = until_terminal(&mut rx).await.pop().unwrap();
    let reqs = server.requests();
    assert!(
        reqs[1].to_ascii_lowercase().contains("if-none-match"),
        "{reqs:?}"
    );
    assert_eq!(
        last.status,
        ArtifactStatus::Failed,
        "md5 mismatch with the checksum file, yet READY at {path}"
    );
    let reason = last.reason.unwrap_or_default();
    assert!(reason.contains("boot.img.md5"), "{reason}");
}

/// A Content-Range whose end is the largest number (no file ends after it) is a bad range,
/// not an overflow: the artifact fails after its retries instead of hanging.
#[tokio::test]
async fn absurd_content_range_fails_the_artifact() {
    let evil = Reply::partial(b"x", "bytes 0-18446744073709551615/18446744073709551615");
    let server = Server::start(vec![evil.clone(), evil.clone(), evil]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let (tx, mut rx) = mpsc::channel(16);
    store
        .push_artifact(image(1, "a", &server.url("f")), tx)
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rx.recv().await {
                Some(c) if c.status.is_terminal() => return Some(c),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    let last = outcome.expect("no terminal status within 5 s: the transfer hangs");
    let last = last.expect("collector closed");
    assert_eq!(last.status, ArtifactStatus::Failed);
    let reason = last.reason.unwrap_or_default();
    assert!(reason.contains("Content-Range"), "{reason}");
}

/// Whether the index has a row for the blob `sha`.
async fn has_blob_row(index: &Index, sha: &str) -> bool {
    let sha = sha.to_owned();
    index
        .call("get", move |conn| cache::get_blob(conn, &sha))
        .await
        .unwrap()
        .is_some()
}

/// An untrusted blob is removed only while the path still names the file that was found
/// bad, and its row forgotten only when no file is left: a good copy another transfer put
/// there meanwhile, or a file that could not be read for a moment, stays with its row.
#[tokio::test]
async fn untrusted_blob_is_dropped_only_while_it_is_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let (index, _) = Index::open(&layout, false).unwrap();
    let sha = "ab".repeat(32);
    let path = layout.blob_path(&sha);
    let put = |size: u64| {
        let row = cache::BlobRow {
            sha256: sha.clone(),
            size,
            mtime_ns: 1,
        };
        move |conn: &rusqlite::Connection| {
            cache::put_blob(conn, &row, "http://127.0.0.1/x", &Validators::default())
        }
    };
    let drop_it = |bad: Option<cache::FileIdentity>| {
        let (path, sha) = (path.clone(), sha.clone());
        index.call("drop", move |conn| {
            cache::drop_untrusted(conn, &path, &sha, bad)
        })
    };

    // Found bad and still there: removed, row forgotten.
    std::fs::write(&path, b"bad").unwrap();
    index.call("put", put(3)).await.unwrap();
    let bad = cache::FileIdentity::at(&path);
    drop_it(bad).await.unwrap();
    assert!(!path.exists());
    assert!(!has_blob_row(&index, &sha).await);

    // Found bad, then replaced by a good copy (a new file) and its row: both stay.
    std::fs::write(&path, b"bad").unwrap();
    let bad = cache::FileIdentity::at(&path);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"good copy").unwrap();
    index.call("put", put(9)).await.unwrap();
    drop_it(bad).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"good copy");
    assert!(has_blob_row(&index, &sha).await);

    // Could not be read (no identity), but the file is there: left alone.
    drop_it(None).await.unwrap();
    assert!(path.exists());
    assert!(has_blob_row(&index, &sha).await);

    // Missing: the row is forgotten.
    std::fs::remove_file(&path).unwrap();
    drop_it(None).await.unwrap();
    assert!(!has_blob_row(&index, &sha).await);
}

/// A push waiting for room among the transfers (`max_transfers`) is cancelled by
/// `cancel_job` of its job: it returns `Cancelled` at once, records nothing and never
/// downloads, while the transfer that holds the room goes on.
#[tokio::test]
async fn cancel_stops_a_push_waiting_for_room() {
    // The root and the collector are kept until the end: the store works on both.
    let StalledTransfer {
        server,
        dir: _dir,
        store,
        tx,
        rx: _rx,
        ..
    } = stalled_transfer(1, |builder| builder.max_transfers(1)).await;
    let waiting = {
        let (store, tx, uri) = (store.clone(), tx.clone(), server.url("b"));
        tokio::spawn(async move { store.push(image(2, "b", &uri), tx).await })
    };
    // The push registers its job before it waits: `cancel_job` finds it.
    let registered = async {
        while !store
            .handle
            .core
            .jobs
            .lock()
            .unwrap()
            .contains_key(&JobId(2))
        {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), registered)
        .await
        .expect("the waiting push registers its job");
    tokio::time::timeout(Duration::from_secs(5), store.cancel_job(JobId(2)))
        .await
        .expect("prompt")
        .unwrap();
    let pushed = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting push returns")
        .unwrap();
    match pushed {
        Err(StoreError::Cancelled { job, alias }) => {
            assert_eq!((job, alias.as_str()), (JobId(2), "b"));
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert_eq!(
        rows_of_job(&store, 2).await,
        0,
        "nothing recorded for the cancelled push"
    );
    assert_eq!(server.requests().len(), 1, "only the first transfer asked");
    store.cancel_job(JobId(1)).await.unwrap();
}

/// A READY or FAILED status for a row that is gone (its job was removed while the
/// transfer ran) is an error, not a silent success: the transfer then fails and takes its
/// file away instead of reporting READY for a file the index does not know.
#[tokio::test]
async fn status_of_a_removed_row_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let err = store
        .handle
        .core
        .index
        .update(StatusUpdate {
            id: 12_345,
            status: ArtifactStatus::Ready,
            size: Some(1),
            sha256: Some("00".repeat(32)),
            error: None,
        })
        .await
        .expect_err("no such row");
    assert!(err.to_string().contains("row 12345 is gone"), "{err}");
}

/// Copying a blob to a job's path (copy mode) never removes a file it did not make: when
/// its temporary name is taken, it fails and the file there stays.
#[test]
fn copy_failure_leaves_a_file_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    std::fs::write(&blob, b"content").unwrap();
    let temp = dir.path().join(paths::temp_name("img", 2));
    std::fs::write(&temp, b"someone else's").unwrap();
    let target = dir.path().join("img");
    let err = cache::place(&blob, &target, &temp, dir.path(), true, None).expect_err("taken");
    assert!(err.to_string().contains("create temporary file"), "{err}");
    assert_eq!(std::fs::read(&temp).unwrap(), b"someone else's");
    assert!(!target.exists());
}

/// When a request's error ends its batch's transaction (SQLite rolls back by itself on a
/// full disk or an I/O error; here the request ends it itself), the requests after it
/// are not run outside the transaction: every request of the batch gets an error and
/// none of their writes stays.
#[tokio::test]
async fn a_lost_transaction_fails_its_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::create(dir.path()).unwrap();
    let (index, _) = Index::open(&layout, false).unwrap();
    index
        .call("table", |conn| {
            conn.execute_batch("CREATE TABLE t (x INTEGER)")
        })
        .await
        .unwrap();
    // Hold the thread so that the three requests below are queued together.
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let gate = index.submit("gate", move |_| {
        let _ = entered_tx.send(());
        let _ = release_rx.recv();
        Ok(())
    });
    entered.await.unwrap();
    let insert = |x: i64| {
        index.submit("insert", move |conn| {
            conn.execute("INSERT INTO t VALUES (?1)", [x]).map(|_| ())
        })
    };
    let first = insert(1);
    let lost = index.submit("end the transaction", |conn| conn.execute_batch("ROLLBACK"));
    let after = insert(2);
    release.send(()).unwrap();
    gate.wait().await.unwrap();
    for (what, result) in [
        ("before", first.wait().await),
        ("the one that ended it", lost.wait().await),
        ("after", after.wait().await),
    ] {
        let err = result.expect_err(what);
        assert!(err.to_string().contains("rolled back"), "{what}: {err}");
    }
    let rows: i64 = index
        .call("count", |conn| {
            conn.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
        })
        .await
        .unwrap();
    assert_eq!(rows, 0, "no write of the batch stays");
}
