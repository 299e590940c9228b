//! Shared helpers for the Downloader's integration tests (`downloader_seed000.rs`,
//! `downloader_fixes.rs`, `downloader_status_now.rs`): seed 000's job config, waiting
//! helpers (channels with a timeout, `stats()` polled with `yield_now`, never a sleep),
//! checks of status infos and answers, and hand-written fake collaborators.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use artifact_coordinator::{
    ArtifactDescription, ArtifactManager, ArtifactPath, ArtifactStatus, ArtifactStatusChange,
    BoxError, ChecksumType, Config, Deploy, DownloadError, Downloader, ImageDefinition, JobId,
    JobStatus, JobsController, Notification, Pull, Push, Stats, StatusNow, Test, TestAction,
    TestCase, async_trait,
};
use tokio::sync::{Semaphore, mpsc};

/// How long any "eventually" waits before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// The job of seed 000's suite.
pub const JOB: JobId = JobId(0xCAFE);

/// `path_<i>`, as seed 000 named the manager's paths.
pub fn path(i: usize) -> String {
    format!("path_{i}")
}

/// The error every failing collaborator of seed 000's suite returns.
pub fn test_error() -> BoxError {
    "test error".into()
}

fn image(uri: Option<&str>, checksum_uri: Option<&str>) -> ImageDefinition {
    ImageDefinition {
        uri: uri.map(str::to_owned),
        checksum_uri: checksum_uri.map(str::to_owned),
        checksum_type: checksum_uri.map(|_| ChecksumType::Md5),
        ..ImageDefinition::default()
    }
}

fn push(uri: &str, alias: &str) -> TestAction {
    TestAction::Push(Push {
        uri: uri.to_owned(),
        alias: alias.to_owned(),
        ..Push::default()
    })
}

fn pull(alias: &str) -> TestAction {
    TestAction::Pull(Pull {
        alias: alias.to_owned(),
        ..Pull::default()
    })
}

fn case(actions: Vec<TestAction>) -> TestCase {
    TestCase {
        test_actions: actions,
        ..TestCase::default()
    }
}

/// Seed 000's config: 3 images (4 pushes) and 3 test cases (3 pushes, 2 pulls).
pub fn seed_config() -> Config {
    let mut config = Config::default();
    config.action.deploy = Deploy {
        images: vec![
            image(Some("image_0"), Some("md5_0")),
            image(Some("image_1"), None),
            image(None, Some("md5_2")),
        ],
    };
    config.action.test = Test {
        test_cases: vec![
            case(vec![
                push("uri_0", "alias_0"),
                push("uri_1", "alias_1"),
                pull("alias_2"),
            ]),
            case(vec![push("uri_3", "alias_3")]),
            case(vec![pull("alias_4")]),
        ],
    };
    config
}

/// Seed 000's config with the paths the suite's manager hands out filled in.
pub fn seed_updated_config() -> Config {
    let mut config = seed_config();
    let images = &mut config.action.deploy.images;
    images[0].path = Some(path(0));
    images[0].checksum_path = Some(path(1));
    images[1].path = Some(path(2));
    images[2].checksum_path = Some(path(3));
    let cases = &mut config.action.test.test_cases;
    set_path(&mut cases[0].test_actions[0], 4);
    set_path(&mut cases[0].test_actions[1], 5);
    set_path(&mut cases[0].test_actions[2], 7);
    set_path(&mut cases[1].test_actions[0], 6);
    set_path(&mut cases[2].test_actions[0], 8);
    config
}

fn set_path(action: &mut TestAction, i: usize) {
    match action {
        TestAction::Push(p) => p.path = Some(path(i)),
        TestAction::Pull(p) => p.path = Some(path(i)),
        TestAction::Run(_) => unreachable!("no run actions in the seed config"),
    }
}

/// Seed 000's "nothing to download" config: two pulls only.
pub fn pulls_only_config() -> Config {
    let mut config = Config::default();
    config.action.test = Test {
        test_cases: vec![case(vec![pull("alias_2")]), case(vec![pull("alias_4")])],
    };
    config
}

/// The same, with the pulls' paths filled in (`path_7`, `path_8`).
pub fn pulls_only_updated_config() -> Config {
    let mut config = pulls_only_config();
    let cases = &mut config.action.test.test_cases;
    set_path(&mut cases[0].test_actions[0], 7);
    set_path(&mut cases[1].test_actions[0], 8);
    config
}

/// A config of `n` test-file pushes (aliases `a_0`..) and one pull.
pub fn pushes_config(n: usize) -> Config {
    let mut actions: Vec<TestAction> = (0..n)
        .map(|i| push(&format!("http://files.example/{i}"), &format!("a_{i}")))
        .collect();
    actions.push(pull("result.log"));
    let mut config = Config::default();
    config.action.test = Test {
        test_cases: vec![case(actions)],
    };
    config
}

/// The next notification, or a panic after [`PATIENCE`].
pub async fn next_notification(rx: &mut mpsc::UnboundedReceiver<Notification>) -> Notification {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("timed out waiting for a notification")
        .expect("the notification channel closed")
}

/// Asserts that nothing has been notified (yet).
pub fn assert_no_notification(rx: &mut mpsc::UnboundedReceiver<Notification>) {
    match rx.try_recv() {
        Err(mpsc::error::TryRecvError::Empty) => {}
        other => panic!("expected no notification, got {other:?}"),
    }
}

/// The next item of a channel, or a panic after [`PATIENCE`].
pub async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("channel closed while waiting for {what}"))
}

/// `stats()`, failing the test after [`PATIENCE`].
pub async fn stats(downloader: &Downloader) -> Stats {
    tokio::time::timeout(PATIENCE, downloader.stats())
        .await
        .expect("timed out waiting for stats()")
        .expect("stats() failed")
}

/// Polls `stats()` (yielding in between, no sleep) until `done` holds; panics with the
/// last snapshot after [`PATIENCE`].
pub async fn wait_stats(
    downloader: &Downloader,
    what: &str,
    done: impl Fn(&Stats) -> bool,
) -> Stats {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let s = stats(downloader).await;
        if done(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last stats: {s:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Nothing left behind: no job, no path, no planning task, no parked change.
pub fn is_idle(s: &Stats) -> bool {
    s.jobs == 0 && s.paths == 0 && s.planning == 0 && s.orphans == 0
}

/// Waits until the Downloader holds nothing (seed 000's `eventuallyEmpty`).
pub async fn eventually_empty(downloader: &Downloader) -> Stats {
    wait_stats(downloader, "the downloader to hold nothing", is_idle).await
}

/// What a test makes a status call do once it is recorded: given the job and the info,
/// the future the call then awaits (to fail, panic, block or yield).
pub type StatusHook = Box<
    dyn Fn(JobId, &str) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync,
>;

/// What a test makes `try_set_status_and_info` do: given the job and the info, `None` to
/// hand the update back (it is then made with `set_status_and_info`), or the result of an
/// update made at once. It may panic.
pub type NowHook = Box<dyn Fn(JobId, &str) -> Option<Result<(), BoxError>> + Send + Sync>;

/// How a status update reached a [`FakeController`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `try_set_status_and_info` made it at once.
    Now,
    /// `set_status_and_info`.
    Async,
}

/// A hand-written [`JobsController`]: the same config for every job, every status call
/// recorded (on entry) on a channel, optionally slow or gated for one job, or doing what
/// a test's [`StatusHook`] says.
pub struct FakeController {
    config: Config,
    calls: mpsc::UnboundedSender<(JobId, String)>,
    saved: Mutex<HashMap<JobId, Config>>,
    slow: Option<(JobId, Duration)>,
    gates: Vec<(JobId, Arc<Semaphore>)>,
    config_fails: Option<Box<dyn Fn(JobId) -> bool + Send + Sync>>,
    on_status: Option<StatusHook>,
    now: Option<NowHook>,
    via: Mutex<Vec<(JobId, String, Via)>>,
}

impl FakeController {
    /// A controller handing out `config`; the receiver gets `(job, info)` of every
    /// `set_status_and_info` call as it starts.
    pub fn new(config: Config) -> (Self, mpsc::UnboundedReceiver<(JobId, String)>) {
        let (calls, rx) = mpsc::unbounded_channel();
        let controller = FakeController {
            config,
            calls,
            saved: Mutex::new(HashMap::new()),
            slow: None,
            gates: Vec::new(),
            config_fails: None,
            on_status: None,
            now: None,
            via: Mutex::new(Vec::new()),
        };
        (controller, rx)
    }

    /// Every call for `job` takes `delay` (an awaited `tokio::time::sleep`).
    pub fn slow(mut self, job: JobId, delay: Duration) -> Self {
        self.slow = Some((job, delay));
        self
    }

    /// `get_config(job)` waits for a permit of `gate` (one gate per job; any number of
    /// jobs).
    pub fn gate_config(mut self, job: JobId, gate: Arc<Semaphore>) -> Self {
        self.gates.push((job, gate));
        self
    }

    /// `get_config` fails ("no such job") for the jobs `fails` selects.
    pub fn fail_config(mut self, fails: impl Fn(JobId) -> bool + Send + Sync + 'static) -> Self {
        self.config_fails = Some(Box::new(fails));
        self
    }

    /// Every status call, once recorded, awaits what `hook` returns for it.
    pub fn on_status(
        mut self,
        hook: impl Fn(JobId, &str) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.on_status = Some(Box::new(hook));
        self
    }

    /// `try_set_status_and_info` does what `hook` says (without it, the default: every
    /// update is handed back). An update made there is recorded on the channel too.
    pub fn immediate(
        mut self,
        hook: impl Fn(JobId, &str) -> Option<Result<(), BoxError>> + Send + Sync + 'static,
    ) -> Self {
        self.now = Some(Box::new(hook));
        self
    }

    /// Every status update made so far, with how it was made, in order.
    pub fn updates(&self) -> Vec<(JobId, String, Via)> {
        self.via.lock().unwrap().clone()
    }

    /// The config saved for `job`, if any.
    pub fn saved(&self, job: JobId) -> Option<Config> {
        self.saved.lock().unwrap().get(&job).cloned()
    }

    /// Records a status update: in [`updates`](Self::updates), and on the channel.
    fn record(&self, job: JobId, info: String, via: Via) {
        self.via.lock().unwrap().push((job, info.clone(), via));
        let _ = self.calls.send((job, info));
    }

    async fn delay(&self, job: JobId) {
        if let Some((slow, delay)) = self.slow
            && slow == job
        {
            tokio::time::sleep(delay).await;
        }
    }
}

#[async_trait]
impl JobsController for FakeController {
    async fn set_status_and_info(
        &self,
        job: JobId,
        status: JobStatus,
        info: String,
    ) -> Result<(), BoxError> {
        assert_eq!(status, JobStatus::Downloading);
        let hooked = self.on_status.as_ref().map(|hook| hook(job, &info));
        self.record(job, info, Via::Async);
        self.delay(job).await;
        match hooked {
            Some(hooked) => hooked.await,
            None => Ok(()),
        }
    }

    async fn get_config(&self, job: JobId) -> Result<Config, BoxError> {
        if let Some((_, gate)) = self.gates.iter().find(|(gated, _)| *gated == job) {
            gate.acquire().await?.forget();
        }
        self.delay(job).await;
        if self.config_fails.as_ref().is_some_and(|fails| fails(job)) {
            return Err("no such job".into());
        }
        Ok(self.config.clone())
    }

    async fn set_config(&self, job: JobId, config: Config) -> Result<(), BoxError> {
        self.delay(job).await;
        self.saved.lock().unwrap().insert(job, config);
        Ok(())
    }

    fn try_set_status_and_info(&self, job: JobId, status: JobStatus, info: String) -> StatusNow {
        let Some(result) = self.now.as_ref().and_then(|hook| hook(job, &info)) else {
            return StatusNow::Later(info);
        };
        assert_eq!(status, JobStatus::Downloading);
        self.record(job, info, Via::Now);
        StatusNow::Done(result)
    }
}

/// Reports every artifact of jobs 1 and 2 READY, then checks the outcome of a controller
/// that panics in job 1's first READY update: job 1 FAIL with the panic's message, job 2
/// OK, nothing left, and `shutdown` reporting the first panic of the run,
/// `first_panic`.
pub async fn expect_job_1_panicked_job_2_ok(
    downloader: Downloader,
    notifications: &mut mpsc::UnboundedReceiver<Notification>,
    manager: &FakeManager,
    first_panic: &str,
) {
    manager.report_all(JobId(1), ArtifactStatus::Ready).await;
    manager.report_all(JobId(2), ArtifactStatus::Ready).await;
    let mut got = vec![
        next_notification(notifications).await,
        next_notification(notifications).await,
    ];
    got.sort_by_key(|n| n.job);
    assert_eq!(got[0].job, JobId(1));
    assert!(!got[0].ok, "{got:?}");
    assert_eq!(
        got[0].msg,
        "internal error: status call panicked: controller bug"
    );
    assert_eq!(got[1], ok(JobId(2)));
    eventually_empty(&downloader).await;
    assert_no_notification(notifications);
    match downloader.shutdown().await {
        Err(DownloadError::Panicked { message }) => assert_eq!(message, first_panic),
        other => panic!("shutdown should report the panic, got {other:?}"),
    }
}

/// Checks a job's status infos: `""`, then one `"i / registered artifacts ready"` per
/// READY with i counting up, ending with `"n / n artifacts ready"`. (As in seed 000, the
/// total is the number of artifacts registered so far: a READY that arrives while the
/// config is still being processed shows a smaller total.)
pub fn assert_ready_infos(infos: &[String], n: usize) {
    assert_eq!(infos.len(), n + 1, "{infos:?}");
    assert_eq!(infos[0], "", "{infos:?}");
    for (i, info) in infos[1..].iter().enumerate() {
        let (ready, rest) = info
            .split_once(" / ")
            .unwrap_or_else(|| panic!("bad info {info:?}"));
        let total = rest
            .strip_suffix(" artifacts ready")
            .unwrap_or_else(|| panic!("bad info {info:?}"));
        let (ready, total): (usize, usize) = (ready.parse().unwrap(), total.parse().unwrap());
        assert_eq!(ready, i + 1, "{infos:?}");
        assert!(ready <= total && total <= n, "{infos:?}");
    }
    assert_eq!(infos[n], format!("{n} / {n} artifacts ready"), "{infos:?}");
}

/// `""` then `"1 / n artifacts ready"` .. `"n / n artifacts ready"`.
pub fn ready_infos(n: usize) -> Vec<String> {
    std::iter::once(String::new())
        .chain((1..=n).map(|i| format!("{i} / {n} artifacts ready")))
        .collect()
}

/// The OK answer for `job`.
pub fn ok(job: JobId) -> Notification {
    Notification {
        job,
        ok: true,
        msg: String::new(),
    }
}

/// When a [`FakeManager`] reports a pushed artifact's terminal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Never: the test sends the changes itself.
    Never,
    /// Before `push_artifact` returns (READY from a cache, or FAILED "boom").
    Eager(ArtifactStatus),
    /// READY from a spawned task, after `push_artifact` has returned (most of the time).
    Spawned,
}

/// A hand-written [`ArtifactManager`]: paths `/store/<job>/<type>/<alias>`, terminal
/// statuses per [`Report`], every push and cancel recorded.
pub struct FakeManager {
    report: Report,
    pushed: Mutex<Vec<(JobId, ArtifactPath)>>,
    collector: Mutex<Option<mpsc::Sender<ArtifactStatusChange>>>,
    cancelled: Mutex<Vec<JobId>>,
}

impl FakeManager {
    /// A manager reporting per `report`.
    pub fn new(report: Report) -> Arc<Self> {
        Arc::new(FakeManager {
            report,
            pushed: Mutex::new(Vec::new()),
            collector: Mutex::new(None),
            cancelled: Mutex::new(Vec::new()),
        })
    }

    /// The path the manager hands out for an artifact.
    pub fn path_of(job: JobId, kind: &str, alias: &str) -> ArtifactPath {
        ArtifactPath(format!("/store/{job}/{kind}/{alias}"))
    }

    /// Paths pushed for `job`, in push order.
    pub fn paths(&self, job: JobId) -> Vec<ArtifactPath> {
        let pushed = self.pushed.lock().unwrap();
        pushed
            .iter()
            .filter(|(j, _)| *j == job)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// The collector the Downloader handed over (after the first push).
    pub fn collector(&self) -> mpsc::Sender<ArtifactStatusChange> {
        self.collector
            .lock()
            .unwrap()
            .clone()
            .expect("no push has been made yet")
    }

    /// Jobs `cancel_job` was called for.
    pub fn cancelled(&self) -> Vec<JobId> {
        self.cancelled.lock().unwrap().clone()
    }

    /// Sends `status` for every path pushed for `job`.
    pub async fn report_all(&self, job: JobId, status: ArtifactStatus) {
        let collector = self.collector();
        for path in self.paths(job) {
            let change = match status {
                ArtifactStatus::Failed => ArtifactStatusChange::failed(path, "boom"),
                status => ArtifactStatusChange::new(path, status),
            };
            collector.send(change).await.expect("collector closed");
        }
    }
}

#[async_trait]
impl ArtifactManager for FakeManager {
    async fn push_artifact(
        &self,
        description: ArtifactDescription,
        collector: mpsc::Sender<ArtifactStatusChange>,
    ) -> Result<ArtifactPath, BoxError> {
        let path = Self::path_of(
            description.job,
            description.kind.as_str(),
            &description.alias,
        );
        {
            let mut slot = self.collector.lock().unwrap();
            if let Some(known) = slot.as_ref() {
                assert!(known.same_channel(&collector), "a second collector");
            } else {
                *slot = Some(collector.clone());
            }
        }
        self.pushed
            .lock()
            .unwrap()
            .push((description.job, path.clone()));
        match self.report {
            Report::Never => {}
            Report::Eager(ArtifactStatus::Failed) => {
                collector
                    .send(ArtifactStatusChange::failed(path.clone(), "boom"))
                    .await?;
            }
            Report::Eager(status) => {
                collector
                    .send(ArtifactStatusChange::new(path.clone(), status))
                    .await?;
            }
            Report::Spawned => {
                let path = path.clone();
                tokio::spawn(async move {
                    let _ = collector
                        .send(ArtifactStatusChange::new(
                            path.clone(),
                            ArtifactStatus::Downloading,
                        ))
                        .await;
                    let _ = collector
                        .send(ArtifactStatusChange::new(path, ArtifactStatus::Ready))
                        .await;
                });
            }
        }
        Ok(path)
    }

    async fn create_artifact(
        &self,
        description: ArtifactDescription,
    ) -> Result<ArtifactPath, BoxError> {
        Ok(Self::path_of(
            description.job,
            description.kind.as_str(),
            &description.alias,
        ))
    }

    async fn cancel_job(&self, job: JobId) -> Result<(), BoxError> {
        self.cancelled.lock().unwrap().push(job);
        Ok(())
    }
}
