//! Rust twins of every `It(...)` of seed 000's Ginkgo/gomock suite
//! (`controller/downloaderimpl_test.go`), with mockall mocks and `mockall::Sequence` where
//! the Go suite used `gomock.InOrder`.
//!
//! Differences from Go, by design: checksum aliases are `ImageChecksum_<i>`, pulls are
//! `ArtifactType::Result` with an empty URI, an image's description carries its checksum
//! source, and the FAIL messages are this crate's own. Where Go looked inside the maps,
//! the tests use `stats()` and `progress(job)`; the collector the mock receives is captured
//! so that the tests can send status changes like Go's `sendChange`.
#![cfg(feature = "mock")]

mod common;

use std::ops::Range;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use artifact_coordinator::{
    ArtifactDescription, ArtifactPath, ArtifactStatus, ArtifactStatusChange, ArtifactType,
    ChecksumSource, ChecksumType, DownloadError, Downloader, JobProgress, JobStatus,
    MockArtifactManager, MockJobsController, Notification, Stats,
};
use mockall::Sequence;
use mockall::predicate::eq;
use tokio::sync::mpsc;

use common::{
    JOB, assert_no_notification, eventually_empty, next, next_notification, path,
    pulls_only_config, pulls_only_updated_config, seed_config, seed_updated_config, stats,
    test_error, wait_stats,
};

/// Where the tests keep the collector the Downloader hands to `push_artifact`.
type CollectorSlot = Arc<Mutex<Option<mpsc::Sender<ArtifactStatusChange>>>>;

/// Keeps the first collector; every later push must get the same channel (Go matched
/// `h.collector` in every `PushArtifact` expectation).
fn remember(slot: &CollectorSlot, collector: mpsc::Sender<ArtifactStatusChange>) {
    let mut slot = slot.lock().unwrap();
    match slot.as_ref() {
        Some(known) => assert!(
            known.same_channel(&collector),
            "push_artifact got a different collector"
        ),
        None => *slot = Some(collector),
    }
}

/// The 7 pushes of seed 000's config, in order, each with the path the manager returns.
fn seed_pushes() -> Vec<(ArtifactDescription, String)> {
    let image =
        |alias: &str, uri: &str| ArtifactDescription::new(JOB, ArtifactType::Image, alias, uri);
    let test =
        |alias: &str, uri: &str| ArtifactDescription::new(JOB, ArtifactType::Test, alias, uri);
    let mut image_0 = image("Image_0", "image_0");
    image_0.checksum = Some(ChecksumSource {
        uri: "md5_0".into(),
        kind: ChecksumType::Md5,
    });
    vec![
        (image_0, path(0)),
        (image("ImageChecksum_0", "md5_0"), path(1)),
        (image("Image_1", "image_1"), path(2)),
        (image("ImageChecksum_2", "md5_2"), path(3)),
        (test("alias_0", "uri_0"), path(4)),
        (test("alias_1", "uri_1"), path(5)),
        (test("alias_3", "uri_3"), path(6)),
    ]
}

/// A pull's description: type RESULT, no URI.
fn pull_description(alias: &str) -> ArtifactDescription {
    ArtifactDescription::new(JOB, ArtifactType::Result, alias, "")
}

/// The mocks, before they are handed to a Downloader (mockall needs expectations first).
struct Mocks {
    jc: MockJobsController,
    am: MockArtifactManager,
    collector: CollectorSlot,
}

impl Mocks {
    fn new() -> Self {
        Mocks {
            jc: MockJobsController::new(),
            am: MockArtifactManager::new(),
            collector: Arc::new(Mutex::new(None)),
        }
    }

    /// One `set_status_and_info(JOB, DOWNLOADING, info)`, succeeding or failing with
    /// "test error".
    fn expect_status(&mut self, seq: Option<&mut Sequence>, info: &str, ok: bool) {
        let expectation = self
            .jc
            .expect_set_status_and_info()
            .with(eq(JOB), eq(JobStatus::Downloading), eq(info.to_owned()))
            .times(1);
        if let Some(seq) = seq {
            expectation.in_sequence(seq);
        }
        if ok {
            expectation.returning(|_, _, _| Ok(()));
        } else {
            expectation.returning(|_, _, _| Err(test_error()));
        }
    }

    /// `""` then `"i / total artifacts ready"` for i in 1..=ok_up_to, in order; then, if
    /// `failing` is set, that info once more, failing.
    fn expect_statuses(&mut self, total: usize, ok_up_to: usize, failing: Option<&str>) {
        let mut seq = Sequence::new();
        self.expect_status(Some(&mut seq), "", true);
        for i in 1..=ok_up_to {
            self.expect_status(
                Some(&mut seq),
                &format!("{i} / {total} artifacts ready"),
                true,
            );
        }
        if let Some(info) = failing {
            self.expect_status(Some(&mut seq), info, false);
        }
    }

    /// Go's `defaultSetStatusAndInfo`: `""`, then `1 / 7` .. `7 / 7`, in order.
    fn default_set_status_and_info(&mut self) {
        self.expect_statuses(7, 7, None);
    }

    /// Go's `defaultGetConfig`.
    fn default_get_config(&mut self) {
        self.jc
            .expect_get_config()
            .with(eq(JOB))
            .times(1)
            .returning(|_| Ok(seed_config()));
    }

    /// The first `ok` pushes of the seed config succeed, in order; if `fail_next`, the
    /// next one fails with "test error".
    fn expect_pushes(&mut self, ok: usize, fail_next: bool) {
        let mut seq = Sequence::new();
        let pushes = seed_pushes();
        for (description, path) in pushes.iter().take(ok).cloned() {
            let slot = self.collector.clone();
            self.am
                .expect_push_artifact()
                .withf(move |d, _| *d == description)
                .times(1)
                .in_sequence(&mut seq)
                .returning(move |_, collector| {
                    remember(&slot, collector);
                    Ok(ArtifactPath(path.clone()))
                });
        }
        if fail_next {
            let (description, _) = pushes[ok].clone();
            let slot = self.collector.clone();
            self.am
                .expect_push_artifact()
                .withf(move |d, _| *d == description)
                .times(1)
                .in_sequence(&mut seq)
                .returning(move |_, collector| {
                    remember(&slot, collector);
                    Err(test_error())
                });
        }
    }

    /// Go's `defaultPush`: all 7 pushes succeed, in order.
    fn default_push(&mut self) {
        self.expect_pushes(7, false);
    }

    /// Go's `defaultCreate`: both pulls get a path, in order.
    fn default_create(&mut self) {
        let mut seq = Sequence::new();
        for (alias, i) in [("alias_2", 7), ("alias_4", 8)] {
            self.am
                .expect_create_artifact()
                .with(eq(pull_description(alias)))
                .times(1)
                .in_sequence(&mut seq)
                .returning(move |_| Ok(ArtifactPath(path(i))));
        }
    }

    /// Go's `defaultSetConfig`: the config with every path is saved.
    fn default_set_config(&mut self) {
        self.jc
            .expect_set_config()
            .with(eq(JOB), eq(seed_updated_config()))
            .times(1)
            .returning(|_, _| Ok(()));
    }

    /// `set_config` with every path, which signals `reached` and then blocks until
    /// `release` (Go's `setConfigReached` / `holdDownload` WaitGroups).
    fn hold_set_config(&mut self) -> (mpsc::UnboundedReceiver<()>, std_mpsc::Sender<()>) {
        let (reached_tx, reached) = mpsc::unbounded_channel();
        let (release, release_rx) = std_mpsc::channel::<()>();
        self.jc
            .expect_set_config()
            .with(eq(JOB), eq(seed_updated_config()))
            .times(1)
            .returning(move |_, _| {
                let _ = reached_tx.send(());
                hold(&release_rx);
                Ok(())
            });
        (reached, release)
    }

    fn start(self) -> Harness {
        let (downloader, notifications) = Downloader::new(Arc::new(self.jc), Arc::new(self.am));
        Harness {
            downloader,
            notifications,
            collector: self.collector,
        }
    }
}

/// Blocks the calling (worker) thread until `release` fires, handing the worker's other
/// tasks to another thread first so that the actor keeps running.
fn hold(release: &std_mpsc::Receiver<()>) {
    tokio::task::block_in_place(|| release.recv()).expect("the test released the hold");
}

/// A started Downloader, its notifications and the captured collector.
struct Harness {
    downloader: Downloader,
    notifications: mpsc::UnboundedReceiver<Notification>,
    collector: CollectorSlot,
}

impl Harness {
    fn collector(&self) -> mpsc::Sender<ArtifactStatusChange> {
        self.collector
            .lock()
            .unwrap()
            .clone()
            .expect("push_artifact has not been called")
    }

    /// Go's `sendChange(from, to, status)`.
    async fn send_change(&self, range: Range<usize>, status: ArtifactStatus) {
        let collector = self.collector();
        for i in range {
            collector
                .send(ArtifactStatusChange::new(path(i), status))
                .await
                .expect("the collector is open");
        }
    }

    /// Go's `expectPath(0, n)`: `n` paths are mapped.
    async fn expect_paths(&self, n: usize) {
        assert_eq!(stats(&self.downloader).await.paths, n, "mapped paths");
    }

    /// Go's `expectInfo(config, paths)`: one job, nothing ready or failed yet.
    async fn expect_info(&self, config_saved: bool, paths: usize) {
        assert_eq!(stats(&self.downloader).await.jobs, 1, "tracked jobs");
        assert_eq!(
            self.downloader.progress(JOB).await.unwrap(),
            Some(JobProgress {
                paths,
                ready: 0,
                failed: 0,
                config_saved,
                ..JobProgress::default()
            })
        );
    }

    /// Go's `eventuallyNoti(ok, msg)`.
    async fn eventually_noti(&mut self, ok: bool, msg: &str) {
        let notification = next_notification(&mut self.notifications).await;
        assert_eq!(
            notification,
            Notification {
                job: JOB,
                ok,
                msg: msg.to_owned(),
            }
        );
    }

    /// Go's `expectFail(pathsNo, msg)`: FAIL with `msg`, the `n` registered paths still
    /// mapped and the job's info gone; late READYs for them leave nothing behind.
    async fn expect_fail(&mut self, n: usize, msg: &str) {
        self.eventually_noti(false, msg).await;
        self.expect_paths(n).await;
        let s = wait_stats(&self.downloader, "the job's info to go", |s| s.jobs == 0).await;
        assert_eq!(s.planning, 0);
        assert_eq!(self.downloader.progress(JOB).await.unwrap(), None);
        if n > 0 {
            self.send_change(0..n, ArtifactStatus::Ready).await;
        }
        eventually_empty(&self.downloader).await;
        assert_no_notification(&mut self.notifications);
    }
}

/// Mirrors `Describe("NewDownloader") / It("should create a new object")`.
#[tokio::test]
async fn new_downloader_creates_a_new_object() {
    let mut h = Mocks::new().start();
    assert_eq!(stats(&h.downloader).await, Stats::default());
    assert_eq!(h.downloader.progress(JOB).await.unwrap(), None);
    assert_no_notification(&mut h.notifications);
    assert!(format!("{:?}", h.downloader).starts_with("Downloader"));
    // Clones are handles on the same actor.
    let clone = h.downloader.clone();
    assert_eq!(clone.stats().await.unwrap(), Stats::default());
    h.downloader.shutdown().await.unwrap();
    assert!(matches!(clone.stats().await, Err(DownloadError::Closed)));
}

/// Mirrors `It("should delegate downloading of all artifacts successfully")`.
#[tokio::test]
async fn delegates_downloading_of_all_artifacts_successfully() {
    let mut m = Mocks::new();
    m.default_set_status_and_info();
    m.default_get_config();
    m.default_push();
    m.default_create();
    m.default_set_config();
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_paths(7).await;
    h.expect_info(true, 7).await;

    h.send_change(0..7, ArtifactStatus::Ready).await;

    h.eventually_noti(true, "").await;
    eventually_empty(&h.downloader).await;
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should fail if cannot set config")`.
#[tokio::test]
async fn fails_if_cannot_set_config() {
    let mut m = Mocks::new();
    m.expect_status(None, "", true);
    m.default_get_config();
    m.default_push();
    m.default_create();
    m.jc.expect_set_config()
        .with(eq(JOB), eq(seed_updated_config()))
        .times(1)
        .returning(|_, _| Err(test_error()));
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_fail(7, "failed to save job config: test error")
        .await;
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should fail if pull fails")`.
#[tokio::test]
async fn fails_if_pull_fails() {
    let mut m = Mocks::new();
    m.expect_status(None, "", true);
    m.default_get_config();
    m.expect_pushes(6, false);
    m.am.expect_create_artifact()
        .with(eq(pull_description("alias_2")))
        .times(1)
        .returning(|_| Err(test_error()));
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_fail(
        6,
        "failed to create a path for pull artifact alias_2 in the artifact manager: test error",
    )
    .await;
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should fail if push for TESTFILE fails")`.
#[tokio::test]
async fn fails_if_push_for_testfile_fails() {
    let mut m = Mocks::new();
    m.expect_status(None, "", true);
    m.default_get_config();
    m.expect_pushes(4, true);
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_fail(
        4,
        "failed to register URI <uri_0> (alias alias_0) in the artifact manager: test error",
    )
    .await;
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should fail if push for MD5 fails")` (the checksum file's push).
#[tokio::test]
async fn fails_if_push_for_md5_fails() {
    let mut m = Mocks::new();
    m.expect_status(None, "", true);
    m.default_get_config();
    m.expect_pushes(1, true);
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_fail(
        1,
        "failed to register URI <md5_0> (alias ImageChecksum_0) in the artifact manager: test error",
    )
    .await;
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should fail if push for image fails")`.
#[tokio::test]
async fn fails_if_push_for_image_fails() {
    let mut m = Mocks::new();
    m.expect_status(None, "", true);
    m.default_get_config();
    m.expect_pushes(2, true);
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_fail(
        2,
        "failed to register URI <image_1> (alias Image_1) in the artifact manager: test error",
    )
    .await;
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should fail if getting config fails")`.
#[tokio::test]
async fn fails_if_getting_config_fails() {
    let mut m = Mocks::new();
    m.expect_status(None, "", true);
    m.jc.expect_get_config()
        .with(eq(JOB))
        .times(1)
        .returning(|_| Err(test_error()));
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_fail(0, "failed to get job config: test error")
        .await;
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should fail if setting status fails")`.
#[tokio::test]
async fn fails_if_setting_status_fails() {
    let mut m = Mocks::new();
    m.expect_status(None, "", false);
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_fail(0, "failed to set job status: test error")
        .await;
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should succeed when there is nothing to download")`.
#[tokio::test]
async fn succeeds_when_there_is_nothing_to_download() {
    let mut m = Mocks::new();
    m.expect_status(None, "", true);
    m.jc.expect_get_config()
        .with(eq(JOB))
        .times(1)
        .returning(|_| Ok(pulls_only_config()));
    m.default_create();
    m.jc.expect_set_config()
        .with(eq(JOB), eq(pulls_only_updated_config()))
        .times(1)
        .returning(|_, _| Ok(()));
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    eventually_empty(&h.downloader).await;
    h.eventually_noti(true, "").await;
    assert_no_notification(&mut h.notifications);
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should handle downloading failure")`.
#[tokio::test]
async fn handles_downloading_failure() {
    let mut m = Mocks::new();
    let mut seq = Sequence::new();
    m.expect_status(Some(&mut seq), "", true);
    for i in 1..=3 {
        m.expect_status(Some(&mut seq), &format!("{i} / 7 artifacts ready"), true);
    }
    m.expect_status(Some(&mut seq), "Failed to download artifact", true);
    m.default_get_config();
    m.default_push();
    m.default_create();
    m.default_set_config();
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_paths(7).await;
    h.expect_info(true, 7).await;

    h.send_change(0..3, ArtifactStatus::Ready).await;
    h.collector()
        .send(ArtifactStatusChange::failed(path(3), "connection reset"))
        .await
        .unwrap();

    h.eventually_noti(
        false,
        "failed to download artifact ImageChecksum_2 (path_3): connection reset",
    )
    .await;
    h.expect_paths(3).await;
    wait_stats(&h.downloader, "the job's info to go", |s| s.jobs == 0).await;

    h.send_change(4..7, ArtifactStatus::Downloading).await;
    wait_stats(&h.downloader, "no path left", |s| s.paths == 0).await;
    eventually_empty(&h.downloader).await;
    assert_no_notification(&mut h.notifications);
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should block reply until configuration is saved and all artifacts are
/// downloaded")`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_reply_until_configuration_is_saved_and_all_artifacts_are_downloaded() {
    let mut m = Mocks::new();
    m.default_set_status_and_info();
    m.default_get_config();
    m.default_push();
    m.default_create();
    let (mut set_config_reached, release) = m.hold_set_config();
    let mut h = m.start();

    let downloader = h.downloader.clone();
    let download = tokio::spawn(async move { downloader.download(JOB).await });

    next(&mut set_config_reached, "set_config to be called").await;

    h.expect_paths(7).await;
    h.expect_info(false, 7).await;

    h.send_change(0..7, ArtifactStatus::Ready).await;

    // Every READY is counted, but the answer waits for the config.
    wait_stats(&h.downloader, "7 status changes", |s| s.status_changes == 7).await;
    assert_eq!(
        h.downloader.progress(JOB).await.unwrap(),
        Some(JobProgress {
            paths: 7,
            ready: 7,
            failed: 0,
            config_saved: false,
            ..JobProgress::default()
        })
    );
    assert_no_notification(&mut h.notifications);

    release.send(()).unwrap();
    download.await.unwrap().unwrap();

    h.eventually_noti(true, "").await;
    eventually_empty(&h.downloader).await;
    assert_no_notification(&mut h.notifications);
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should handle failure in updating info")`.
#[tokio::test]
async fn handles_failure_in_updating_info() {
    let mut m = Mocks::new();
    m.expect_statuses(7, 4, Some("5 / 7 artifacts ready"));
    m.default_get_config();
    m.default_push();
    m.default_create();
    m.default_set_config();
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_paths(7).await;
    h.expect_info(true, 7).await;

    h.send_change(0..7, ArtifactStatus::Ready).await;

    h.eventually_noti(false, "failed to set job status: test error")
        .await;
    eventually_empty(&h.downloader).await;
    assert_no_notification(&mut h.notifications);
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should leave no data left if failure response is sent while still
/// processing config")`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_no_data_if_failure_response_is_sent_while_still_processing_config() {
    let mut m = Mocks::new();
    m.expect_statuses(7, 4, Some("5 / 7 artifacts ready"));
    m.default_get_config();
    m.default_push();
    m.default_create();
    let (mut set_config_reached, release) = m.hold_set_config();
    let mut h = m.start();

    let downloader = h.downloader.clone();
    let download = tokio::spawn(async move { downloader.download(JOB).await });
    next(&mut set_config_reached, "set_config to be called").await;

    h.expect_paths(7).await;
    h.expect_info(false, 7).await;

    h.send_change(0..7, ArtifactStatus::Ready).await;

    h.eventually_noti(false, "failed to set job status: test error")
        .await;

    release.send(()).unwrap();
    download.await.unwrap().unwrap();

    eventually_empty(&h.downloader).await;
    assert_no_notification(&mut h.notifications);
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should leave no data left if failure response is sent while pushing")`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_no_data_if_failure_response_is_sent_while_pushing() {
    let mut m = Mocks::new();
    m.expect_statuses(1, 0, Some("1 / 1 artifacts ready"));
    m.default_get_config();
    let (push_reached_tx, mut push_reached) = mpsc::unbounded_channel();
    let (release, release_rx) = std_mpsc::channel::<()>();
    let mut seq = Sequence::new();
    let pushes = seed_pushes();
    {
        let (description, returned) = pushes[0].clone();
        let slot = m.collector.clone();
        m.am.expect_push_artifact()
            .withf(move |d, _| *d == description)
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, collector| {
                remember(&slot, collector);
                Ok(ArtifactPath(returned.clone()))
            });
    }
    {
        let (description, returned) = pushes[1].clone();
        let slot = m.collector.clone();
        m.am.expect_push_artifact()
            .withf(move |d, _| *d == description)
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_, collector| {
                remember(&slot, collector);
                let _ = push_reached_tx.send(());
                hold(&release_rx);
                Ok(ArtifactPath(returned.clone()))
            });
    }
    // After the FAIL, the job stops: no further push, create or set_config (the mocks
    // panic on any unexpected call).
    let mut h = m.start();

    let downloader = h.downloader.clone();
    let download = tokio::spawn(async move { downloader.download(JOB).await });
    next(&mut push_reached, "the second push").await;

    h.expect_paths(1).await;
    h.expect_info(false, 1).await;

    h.send_change(0..1, ArtifactStatus::Ready).await;

    h.eventually_noti(false, "failed to set job status: test error")
        .await;

    release.send(()).unwrap();
    h.send_change(1..2, ArtifactStatus::Ready).await;
    download.await.unwrap().unwrap();

    eventually_empty(&h.downloader).await;
    assert_no_notification(&mut h.notifications);
    h.downloader.shutdown().await.unwrap();
}

/// Mirrors `It("should ignore changes to non-terminal states")`.
#[tokio::test]
async fn ignores_changes_to_non_terminal_states() {
    let mut m = Mocks::new();
    m.default_set_status_and_info();
    m.default_get_config();
    m.default_push();
    m.default_create();
    m.default_set_config();
    let mut h = m.start();

    h.downloader.download(JOB).await.unwrap();

    h.expect_paths(7).await;
    h.expect_info(true, 7).await;

    h.send_change(0..7, ArtifactStatus::Downloading).await;
    h.send_change(0..7, ArtifactStatus::Pending).await;
    wait_stats(&h.downloader, "14 status changes", |s| {
        s.status_changes == 14
    })
    .await;

    h.expect_paths(7).await;
    h.expect_info(true, 7).await;
    assert_no_notification(&mut h.notifications);

    h.send_change(0..7, ArtifactStatus::Ready).await;

    h.eventually_noti(true, "").await;
    eventually_empty(&h.downloader).await;
    h.downloader.shutdown().await.unwrap();
}
