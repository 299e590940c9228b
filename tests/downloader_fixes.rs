//! One test for each fix of the Downloader over seed 000's `DownloaderImpl` (design.md,
//! "Downloader contract", points 5 to 7), with hand-written fake collaborators. No test
//! sleeps to wait for something: every wait is on a channel (or on `stats()`), with a
//! timeout.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use artifact_coordinator::{
    ArtifactStatus, ArtifactStatusChange, DownloadError, Downloader, INFO_FAILED, JobId,
    Notification,
};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use common::{
    FakeController, FakeManager, Report, assert_no_notification, assert_ready_infos,
    eventually_empty, expect_job_1_panicked_job_2_ok, is_idle, next, next_notification, ok,
    pulls_only_config, pushes_config, ready_infos, seed_config, stats, wait_stats,
};

/// Every status call recorded so far.
fn drain(calls: &mut mpsc::UnboundedReceiver<(JobId, String)>) -> Vec<(JobId, String)> {
    let mut out = Vec::new();
    while let Ok(call) = calls.try_recv() {
        out.push(call);
    }
    out
}

/// Waits until `(job, info)` reaches the controller; returns every call seen on the way.
async fn wait_call(
    calls: &mut mpsc::UnboundedReceiver<(JobId, String)>,
    job: JobId,
    info: &str,
) -> Vec<(JobId, String)> {
    wait_call_where(calls, job, &format!("{info:?}"), |i| i == info).await
}

/// Waits until a status call of `job` whose info matches reaches the controller; returns
/// every call seen on the way.
async fn wait_call_where(
    calls: &mut mpsc::UnboundedReceiver<(JobId, String)>,
    job: JobId,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> Vec<(JobId, String)> {
    let mut seen = Vec::new();
    loop {
        let call = next(calls, &format!("status {what} of job {job}")).await;
        let done = call.0 == job && matches(&call.1);
        seen.push(call);
        if done {
            return seen;
        }
    }
}

/// The infos of `job`'s calls, in order.
fn infos_of(calls: &[(JobId, String)], job: JobId) -> Vec<String> {
    calls
        .iter()
        .filter(|(j, _)| *j == job)
        .map(|(_, info)| info.clone())
        .collect()
}

/// Fix: a manager that reports READY before `push_artifact` returns (e.g. from its
/// cache). Seed 000 dropped such a change (path not mapped yet) and the job hung; here it
/// is parked until the path is registered, the job completes, and nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_reported_before_push_returns_still_completes() {
    let job = JobId(1);
    let manager = FakeManager::new(Report::Eager(ArtifactStatus::Ready));
    let (controller, mut calls) = FakeController::new(seed_config());
    let controller = Arc::new(controller);
    let (downloader, mut notifications) = Downloader::new(controller.clone(), manager.clone());

    downloader.download(job).await.unwrap();

    assert_eq!(next_notification(&mut notifications).await, ok(job));
    assert_eq!(infos_of(&drain(&mut calls), job), ready_infos(7));
    let saved = controller.saved(job).expect("the config is saved");
    assert!(saved.action.deploy.images[0].path.is_some());
    assert!(saved.action.deploy.images[2].checksum_path.is_some());
    assert_eq!(manager.paths(job).len(), 7);
    eventually_empty(&downloader).await;
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// Fix: the same with FAILED before `push_artifact` returns: the job fails, naming the
/// artifact and the reason, once; nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reported_before_push_returns_fails_the_job() {
    let job = JobId(2);
    let manager = FakeManager::new(Report::Eager(ArtifactStatus::Failed));
    let (controller, mut calls) = FakeController::new(seed_config());
    let (downloader, mut notifications) = Downloader::new(Arc::new(controller), manager.clone());

    downloader.download(job).await.unwrap();

    assert_eq!(
        next_notification(&mut notifications).await,
        Notification {
            job,
            ok: false,
            msg: "failed to download artifact Image_0 (/store/2/image/Image_0): boom".into(),
        }
    );
    eventually_empty(&downloader).await;
    assert_eq!(
        infos_of(&drain(&mut calls), job),
        vec![String::new(), INFO_FAILED.to_owned()]
    );
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// Fix: a controller that does not read its notifications for a while never stalls the
/// actor. Jobs run one after another while every answer stays unread; each job's status
/// calls still reach the controller, and all answers arrive, in order, once read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_notifications_do_not_stall_the_actor() {
    const JOBS: u64 = 200;
    let manager = FakeManager::new(Report::Spawned);
    let (controller, mut calls) = FakeController::new(pushes_config(3));
    let (downloader, mut notifications) = Downloader::new(Arc::new(controller), manager);

    for id in 1..=JOBS {
        let job = JobId(id);
        downloader.download(job).await.unwrap();
        let seen = wait_call(&mut calls, job, "3 / 3 artifacts ready").await;
        assert_ready_infos(&infos_of(&seen, job), 3);
    }
    // Every job was answered while nobody read.
    let s = wait_stats(&downloader, "every job answered", |s| s.jobs == 0).await;
    assert_eq!(s.planning, 0);

    for id in 1..=JOBS {
        assert_eq!(next_notification(&mut notifications).await, ok(JobId(id)));
    }
    eventually_empty(&downloader).await;
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// Fix: a controller whose calls for job A take 200 ms each does not delay job B. B is
/// started while A's first READY status call is in progress; B's OK comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_controller_for_one_job_does_not_delay_another() {
    let (a, b) = (JobId(10), JobId(20));
    let manager = FakeManager::new(Report::Spawned);
    let (controller, mut calls) = FakeController::new(pushes_config(2));
    let controller = controller.slow(a, Duration::from_millis(200));
    let (downloader, mut notifications) = Downloader::new(Arc::new(controller), manager);

    let handle = downloader.clone();
    let download_a = tokio::spawn(async move { handle.download(a).await });
    let mut seen = wait_call_where(&mut calls, a, "first READY", |i| i.starts_with("1 / ")).await;

    downloader.download(b).await.unwrap();
    assert_eq!(next_notification(&mut notifications).await, ok(b));

    assert_eq!(next_notification(&mut notifications).await, ok(a));
    download_a.await.unwrap().unwrap();
    seen.extend(drain(&mut calls));
    assert_ready_infos(&infos_of(&seen, a), 2);
    assert_ready_infos(&infos_of(&seen, b), 2);
    eventually_empty(&downloader).await;
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// Fix: `cancel(job)` while downloads are pending: the manager's `cancel_job` is called,
/// the job's state is gone, and after `cancel` returns no status call and no notification
/// is made for it, even when late READY/FAILED changes for its paths arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drops_the_job_and_silences_it() {
    let (a, b) = (JobId(1), JobId(2));
    let manager = FakeManager::new(Report::Never);
    let (controller, mut calls) = FakeController::new(pushes_config(3));
    let (downloader, mut notifications) = Downloader::new(Arc::new(controller), manager.clone());

    downloader.download(a).await.unwrap();
    let paths = manager.paths(a);
    assert_eq!(paths.len(), 3);
    let collector = manager.collector();
    collector
        .send(ArtifactStatusChange::new(
            paths[0].clone(),
            ArtifactStatus::Ready,
        ))
        .await
        .unwrap();
    let seen = wait_call(&mut calls, a, "1 / 3 artifacts ready").await;
    assert_eq!(infos_of(&seen, a), ready_infos(3)[..2].to_vec());

    downloader.cancel(a).await.unwrap();

    assert_eq!(manager.cancelled(), vec![a]);
    assert!(is_idle(&stats(&downloader).await));
    assert_eq!(downloader.progress(a).await.unwrap(), None);
    assert!(drain(&mut calls).is_empty());

    // Late changes for the cancelled job's paths.
    for change in [
        ArtifactStatusChange::new(paths[1].clone(), ArtifactStatus::Ready),
        ArtifactStatusChange::failed(paths[2].clone(), "cancelled"),
        ArtifactStatusChange::new(paths[0].clone(), ArtifactStatus::Ready),
    ] {
        collector.send(change).await.unwrap();
    }

    // A second job runs to completion: its OK is the only notification, and its calls
    // the only status calls.
    downloader.download(b).await.unwrap();
    manager.report_all(b, ArtifactStatus::Ready).await;
    assert_eq!(next_notification(&mut notifications).await, ok(b));
    let s = wait_stats(&downloader, "every change processed", |s| {
        s.status_changes == 1 + 3 + 3
    })
    .await;
    assert!(is_idle(&s), "{s:?}");
    let after = drain(&mut calls);
    assert!(after.iter().all(|(job, _)| *job == b), "{after:?}");
    assert_eq!(infos_of(&after, b), ready_infos(3));
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// Fix (cancel, continued): cancelling while a slow status call for the job is in
/// progress stops it; later READYs make no call and the job is never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_slow_status_call_silences_the_job() {
    let a = JobId(7);
    let manager = FakeManager::new(Report::Never);
    let (controller, mut calls) = FakeController::new(pushes_config(2));
    let controller = controller.slow(a, Duration::from_millis(200));
    let (downloader, mut notifications) = Downloader::new(Arc::new(controller), manager.clone());

    downloader.download(a).await.unwrap();
    let paths = manager.paths(a);
    let collector = manager.collector();
    collector
        .send(ArtifactStatusChange::new(
            paths[0].clone(),
            ArtifactStatus::Ready,
        ))
        .await
        .unwrap();
    wait_call(&mut calls, a, "1 / 2 artifacts ready").await;

    downloader.cancel(a).await.unwrap();
    assert_eq!(manager.cancelled(), vec![a]);

    collector
        .send(ArtifactStatusChange::new(
            paths[1].clone(),
            ArtifactStatus::Ready,
        ))
        .await
        .unwrap();
    let s = wait_stats(&downloader, "the late READY", |s| s.status_changes == 2).await;
    assert!(is_idle(&s), "{s:?}");
    assert!(drain(&mut calls).is_empty());
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// Fix (cancel, continued): cancelling while the config is still being processed stops
/// the processing; the pending `download` returns, and nothing is pushed or answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_planning_stops_the_job() {
    let a = JobId(3);
    let gate = Arc::new(Semaphore::new(0));
    let manager = FakeManager::new(Report::Spawned);
    let (controller, mut calls) = FakeController::new(pushes_config(2));
    let controller = controller.gate_config(a, gate.clone());
    let (downloader, mut notifications) = Downloader::new(Arc::new(controller), manager.clone());

    let handle = downloader.clone();
    let download = tokio::spawn(async move { handle.download(a).await });
    wait_call(&mut calls, a, "").await;
    assert_eq!(stats(&downloader).await.planning, 1);

    downloader.cancel(a).await.unwrap();
    download.await.unwrap().unwrap();
    gate.add_permits(1);

    assert!(is_idle(&stats(&downloader).await));
    assert!(manager.paths(a).is_empty());
    assert_eq!(manager.cancelled(), vec![a]);
    assert!(drain(&mut calls).is_empty());
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// Fix: `download(job)` for a job in flight is an error for the caller, not a second run,
/// both while its config is processed and while its artifacts download; the first run
/// completes normally and is answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_twice_while_in_flight_is_an_error() {
    let a = JobId(5);
    let gate = Arc::new(Semaphore::new(0));
    let manager = FakeManager::new(Report::Never);
    let (controller, mut calls) = FakeController::new(pushes_config(2));
    let controller = controller.gate_config(a, gate.clone());
    let (downloader, mut notifications) = Downloader::new(Arc::new(controller), manager.clone());

    let handle = downloader.clone();
    let first = tokio::spawn(async move { handle.download(a).await });
    wait_call(&mut calls, a, "").await;

    // While the config is processed.
    let err = downloader.download(a).await.unwrap_err();
    assert!(
        matches!(err, DownloadError::AlreadyInFlight { job } if job == a),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "job 5 is already being downloaded");

    gate.add_permits(1);
    first.await.unwrap().unwrap();
    assert_eq!(manager.paths(a).len(), 2);

    // While its artifacts download.
    let err = downloader.download(a).await.unwrap_err();
    assert!(
        matches!(err, DownloadError::AlreadyInFlight { job } if job == a),
        "{err:?}"
    );
    assert_eq!(manager.paths(a).len(), 2, "no second run");

    manager.report_all(a, ArtifactStatus::Ready).await;
    assert_eq!(next_notification(&mut notifications).await, ok(a));
    eventually_empty(&downloader).await;
    assert_eq!(
        infos_of(&drain(&mut calls), a),
        ready_infos(2)[1..].to_vec()
    );
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// `download` returns once the config is processed; when processing it answers the job
/// (OK for a job with nothing to push, FAIL when the config cannot be read), the answer
/// is already on the channel when `download` returns, as it was with seed 000's
/// synchronous `Download`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_returns_after_an_immediate_answer() {
    let manager = FakeManager::new(Report::Never);
    let (controller, _calls) = FakeController::new(pulls_only_config());
    let controller = controller.fail_config(|job| job.0 % 2 == 1);
    let (downloader, mut notifications) = Downloader::new(Arc::new(controller), manager);

    for id in 0..200 {
        let job = JobId(id);
        downloader.download(job).await.unwrap();
        let expected = if id % 2 == 0 {
            ok(job)
        } else {
            Notification {
                job,
                ok: false,
                msg: "failed to get job config: no such job".into(),
            }
        };
        assert_eq!(notifications.try_recv(), Ok(expected));
    }
    eventually_empty(&downloader).await;
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// Drives `jobs` jobs of `artifacts` pushes at once; every job must be answered OK
/// exactly once and nothing may be left behind.
async fn many_jobs_at_once(report: Report, jobs: u64, artifacts: usize) {
    let manager = FakeManager::new(report);
    let (controller, _calls) = FakeController::new(pushes_config(artifacts));
    let (downloader, mut notifications) = Downloader::new(Arc::new(controller), manager);

    let mut downloads = JoinSet::new();
    for id in 1..=jobs {
        let handle = downloader.clone();
        downloads.spawn(async move { handle.download(JobId(id)).await });
    }
    while let Some(result) = downloads.join_next().await {
        result.unwrap().unwrap();
    }

    let mut answered = HashSet::new();
    for _ in 0..jobs {
        let notification = next_notification(&mut notifications).await;
        assert!(notification.ok, "{notification:?}");
        assert!(notification.msg.is_empty());
        assert!(
            answered.insert(notification.job),
            "job {} answered twice",
            notification.job
        );
    }
    assert_eq!(answered, (1..=jobs).map(JobId).collect::<HashSet<_>>());
    let s = eventually_empty(&downloader).await;
    let per_artifact = if report == Report::Spawned { 2 } else { 1 };
    assert_eq!(s.status_changes, jobs * artifacts as u64 * per_artifact);
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// Fix (scale): 1,000 jobs × 10 artifacts at once, READY reported from spawned tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_jobs_of_ten_artifacts_at_once() {
    many_jobs_at_once(Report::Spawned, 1000, 10).await;
}

/// Fix (scale): the same with every READY reported before `push_artifact` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_jobs_reporting_before_push_returns() {
    many_jobs_at_once(Report::Eager(ArtifactStatus::Ready), 1000, 10).await;
}

/// A panic in a status call that the actor polls in place fails that job only, as a panic
/// in a planning or worker task does: the other job still gets its OK, nothing is left,
/// and `shutdown` reports the panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_a_status_call_fails_only_that_job() {
    // Panics on job 1's first READY, as a mock does on an unexpected call.
    let (controller, _calls) = FakeController::new(pushes_config(1));
    let controller = controller.on_status(|job, info| {
        let bug = job == JobId(1) && info.starts_with("1 /");
        Box::pin(async move {
            assert!(!bug, "controller bug");
            Ok(())
        })
    });
    let manager = FakeManager::new(Report::Never);
    let (downloader, mut notifications) = Downloader::new(Arc::new(controller), manager.clone());
    downloader.download(JobId(1)).await.unwrap();
    downloader.download(JobId(2)).await.unwrap();
    expect_job_1_panicked_job_2_ok(downloader, &mut notifications, &manager, "controller bug")
        .await;
}

/// Job 9 is kept planning (its `get_config` waits on the returned gate), so that late
/// changes are parked; job 1 (two artifacts) is answered FAIL; then its second path gets
/// a late DOWNLOADING (which retires the path) and a late FAILED, which is parked.
async fn stale_change_parked(
    controller: FakeController,
) -> (
    Downloader,
    mpsc::UnboundedReceiver<Notification>,
    Arc<FakeManager>,
    Arc<Semaphore>,
    tokio::task::JoinHandle<Result<(), DownloadError>>,
) {
    let gate = Arc::new(Semaphore::new(0));
    let controller = Arc::new(controller.gate_config(JobId(9), gate.clone()));
    let manager = FakeManager::new(Report::Never);
    let (downloader, mut notifications) = Downloader::new(controller, manager.clone());
    let d = downloader.clone();
    let job9 = tokio::spawn(async move { d.download(JobId(9)).await });
    wait_stats(&downloader, "job 9 planning", |s| s.planning == 1).await;

    downloader.download(JobId(1)).await.unwrap();
    let paths = manager.paths(JobId(1));
    let collector = manager.collector();
    collector
        .send(ArtifactStatusChange::failed(paths[0].clone(), "boom"))
        .await
        .unwrap();
    assert!(!next_notification(&mut notifications).await.ok);
    collector
        .send(ArtifactStatusChange::new(
            paths[1].clone(),
            ArtifactStatus::Downloading,
        ))
        .await
        .unwrap();
    collector
        .send(ArtifactStatusChange::failed(paths[1].clone(), "stale"))
        .await
        .unwrap();
    let s = wait_stats(&downloader, "the late change", |s| s.status_changes == 3).await;
    assert_eq!(
        (s.jobs, s.orphans),
        (1, 1),
        "only job 9 is in flight: {s:?}"
    );
    (downloader, notifications, manager, gate, job9)
}

/// Fix (stale orphans): a late FAILED of an answered run, parked because another job was
/// planning, is not applied to the job's next run even when that run gets the same path
/// (a manager may hand out the same path again): the new run completes with its own READYs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_change_is_not_applied_to_the_next_run() {
    let (controller, _calls) = FakeController::new(pushes_config(2));
    let (downloader, mut notifications, manager, gate, job9) =
        stale_change_parked(controller).await;
    downloader.download(JobId(1)).await.unwrap();
    assert_no_notification(&mut notifications);
    let s = stats(&downloader).await;
    assert_eq!((s.jobs, s.paths, s.orphans), (2, 2, 0), "{s:?}");
    // The run's pushes came second: the last two paths are the new run's.
    let paths = manager.paths(JobId(1));
    assert_eq!(paths.len(), 4);
    let collector = manager.collector();
    for path in &paths[2..] {
        collector
            .send(ArtifactStatusChange::new(
                path.clone(),
                ArtifactStatus::Ready,
            ))
            .await
            .unwrap();
    }
    assert_eq!(next_notification(&mut notifications).await, ok(JobId(1)));
    gate.add_permits(1);
    job9.await.unwrap().unwrap();
    manager.report_all(JobId(9), ArtifactStatus::Ready).await;
    assert_eq!(next_notification(&mut notifications).await, ok(JobId(9)));
    eventually_empty(&downloader).await;
    assert_no_notification(&mut notifications);
}

/// Fix (stale orphans): a parked change is dropped once every run started before it
/// arrived has finished planning, even while later jobs keep planning (with a steady
/// stream of jobs, "no job planning" may never happen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_change_is_dropped_while_later_jobs_plan() {
    let gate10 = Arc::new(Semaphore::new(0));
    let (controller, _calls) = FakeController::new(pushes_config(2));
    let controller = controller.gate_config(JobId(10), gate10.clone());
    let (downloader, mut notifications, manager, gate9, job9) =
        stale_change_parked(controller).await;
    // Job 10 starts after the change arrived and stays planning.
    let d = downloader.clone();
    let job10 = tokio::spawn(async move { d.download(JobId(10)).await });
    wait_stats(&downloader, "jobs 9 and 10 planning", |s| s.planning == 2).await;
    gate9.add_permits(1);
    job9.await.unwrap().unwrap();
    let s = wait_stats(&downloader, "the parked change dropped", |s| s.orphans == 0).await;
    assert_eq!(s.planning, 1, "job 10 still plans: {s:?}");
    gate10.add_permits(1);
    job10.await.unwrap().unwrap();
    for job in [JobId(9), JobId(10)] {
        manager.report_all(job, ArtifactStatus::Ready).await;
    }
    let mut answered: Vec<Notification> = vec![
        next_notification(&mut notifications).await,
        next_notification(&mut notifications).await,
    ];
    answered.sort_by_key(|n| n.job);
    assert_eq!(answered, vec![ok(JobId(9)), ok(JobId(10))]);
    eventually_empty(&downloader).await;
}

/// Fix (fairness): a command waits for at most one batch of status changes, however many
/// are queued: `stats` sent while 200,000 changes wait on the collector is answered
/// before them, and `cancel` of a planning job (which waits for its task to be reaped)
/// returns a few batches later. With a manager that never lets the collector run dry,
/// they would otherwise never get a turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_status_changes_do_not_hold_up_commands() {
    const QUEUED: u64 = 200_000;
    // The first READY's status call blocks the actor's thread until released (a
    // controller doing blocking work), so that work queues behind it; job 2's config
    // never comes (its gate is never opened).
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
    let (controller, _calls) = FakeController::new(pushes_config(1));
    let controller = controller
        .gate_config(JobId(2), Arc::new(Semaphore::new(0)))
        .on_status(move |_, info| {
            let (first, entered_tx, release_rx) = (
                info.starts_with("1 /"),
                entered_tx.clone(),
                Arc::clone(&release_rx),
            );
            Box::pin(async move {
                if first {
                    let _ = entered_tx.send(());
                    let release = release_rx.lock().map_err(|_| "poisoned")?;
                    release.recv()?;
                }
                Ok(())
            })
        });
    let manager = FakeManager::new(Report::Never);
    let (downloader, mut notifications) = Downloader::builder()
        .collector_capacity(2 * QUEUED as usize)
        .build(Arc::new(controller), manager.clone());
    downloader.download(JobId(1)).await.unwrap();
    let d = downloader.clone();
    let job2 = tokio::spawn(async move { d.download(JobId(2)).await });
    wait_stats(&downloader, "job 2 planning", |s| s.planning == 1).await;
    // The READY's status call blocks the actor; the flood queues up behind it.
    manager.report_all(JobId(1), ArtifactStatus::Ready).await;
    next(&mut entered, "the blocking status call").await;
    let collector = manager.collector();
    for _ in 0..QUEUED {
        let change = ArtifactStatusChange::new("/not/registered", ArtifactStatus::Downloading);
        collector.send(change).await.unwrap();
    }
    // Queue the command (its first poll sends it), then let the actor go on.
    let queued = downloader.stats();
    tokio::pin!(queued);
    tokio::select! {
        biased;
        _ = &mut queued => panic!("answered while the actor is blocked"),
        () = std::future::ready(()) => {}
    }
    release.send(()).unwrap();
    let s = tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("stats answered")
        .unwrap();
    assert!(
        s.status_changes < QUEUED,
        "stats waited for the queued changes: {s:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), downloader.cancel(JobId(2)))
        .await
        .expect("cancel answered")
        .unwrap();
    let s = stats(&downloader).await;
    assert!(
        s.status_changes < QUEUED,
        "cancel waited for the queued changes: {s:?}"
    );
    job2.await.unwrap().unwrap();
    assert_eq!(next_notification(&mut notifications).await, ok(JobId(1)));
    let s = wait_stats(&downloader, "the queue handled", |s| {
        s.status_changes == QUEUED + 1
    })
    .await;
    assert!(is_idle(&s), "{s:?}");
    assert_no_notification(&mut notifications);
}

/// Fix (FAIL message): when the status call of a FAILED artifact fails too, the FAIL
/// names both: why the artifact failed and why the status call did, whether the call
/// failed at once or in the job's worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_message_keeps_the_download_failure_when_the_status_call_fails() {
    for later in [false, true] {
        // The "Failed to download artifact" call fails, at once or (`later`) after it was
        // first found pending, so that the job's worker carries it out.
        let (controller, _calls) = FakeController::new(pushes_config(2));
        let controller = controller.on_status(move |_, info| {
            let fails = info == INFO_FAILED;
            Box::pin(async move {
                if fails {
                    if later {
                        tokio::task::yield_now().await;
                    }
                    return Err("status store down".into());
                }
                Ok(())
            })
        });
        let manager = FakeManager::new(Report::Never);
        let (downloader, mut notifications) =
            Downloader::new(Arc::new(controller), manager.clone());
        downloader.download(JobId(1)).await.unwrap();
        let path = manager.paths(JobId(1))[0].clone();
        manager
            .collector()
            .send(ArtifactStatusChange::failed(path.clone(), "boom"))
            .await
            .unwrap();
        let n = next_notification(&mut notifications).await;
        assert!(!n.ok);
        assert_eq!(
            n.msg,
            format!(
                "failed to download artifact a_0 ({path}): boom; \
                 then failed to set job status: status store down"
            ),
            "later: {later}"
        );
        // The late change of the other artifact retires its path.
        let other = manager.paths(JobId(1))[1].clone();
        manager
            .collector()
            .send(ArtifactStatusChange::failed(other, "cancelled"))
            .await
            .unwrap();
        eventually_empty(&downloader).await;
        downloader.shutdown().await.unwrap();
    }
}
