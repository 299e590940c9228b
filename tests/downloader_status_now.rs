//! Status updates made at once (`JobsController::try_set_status_and_info`): a controller
//! that can make an update without waiting gets every update of a job through it, in
//! order; one that hands an update back gets it, and every later update of the job,
//! through `set_status_and_info`, still in order; an error or a panic there fails that
//! job only. (The default, which hands every update back, is what the mocks of
//! `downloader_seed000.rs` and the other tests use.) No test sleeps: every wait is on a
//! channel or on `stats()`, with a timeout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use artifact_coordinator::{ArtifactStatus, Downloader, JobId};
use tokio::sync::Semaphore;

use common::{
    FakeController, FakeManager, Report, Via, assert_no_notification, assert_ready_infos,
    eventually_empty, expect_job_1_panicked_job_2_ok, next_notification, ok, pushes_config,
    ready_infos, wait_stats,
};

/// The updates of `job`: infos and how each was made.
fn updates_of(controller: &FakeController, job: JobId) -> Vec<(String, Via)> {
    controller
        .updates()
        .into_iter()
        .filter(|(j, _, _)| *j == job)
        .map(|(_, info, via)| (info, via))
        .collect()
}

/// A controller that makes every update at once gets all of them that way, in order
/// (`""` included), and `set_status_and_info` is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_is_made_at_once_when_the_controller_can() {
    let (controller, _calls) = FakeController::new(pushes_config(5));
    let controller = Arc::new(controller.immediate(|_, _| Some(Ok(()))));
    let manager = FakeManager::new(Report::Spawned);
    let (downloader, mut notifications) = Downloader::new(controller.clone(), manager);
    for job in 1..=3 {
        downloader.download(JobId(job)).await.unwrap();
    }
    let mut answered: Vec<JobId> = Vec::new();
    for _ in 0..3 {
        let n = next_notification(&mut notifications).await;
        assert_eq!(n, ok(n.job));
        answered.push(n.job);
    }
    answered.sort();
    assert_eq!(answered, [JobId(1), JobId(2), JobId(3)]);
    for job in 1..=3 {
        let updates = updates_of(&controller, JobId(job));
        assert!(
            updates.iter().all(|(_, via)| *via == Via::Now),
            "{updates:?}"
        );
        let infos: Vec<String> = updates.into_iter().map(|(info, _)| info).collect();
        assert_ready_infos(&infos, 5);
    }
    eventually_empty(&downloader).await;
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// An update that fails at once fails the job with the error's text, like a failed
/// `set_status_and_info`; the job gets no update after it, and the other job is not
/// touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_failing_at_once_fails_the_job() {
    let (controller, _calls) = FakeController::new(pushes_config(3));
    let controller = Arc::new(controller.immediate(|job, info| {
        if job == JobId(1) && info.starts_with("2 /") {
            Some(Err("job table is read-only".into()))
        } else {
            Some(Ok(()))
        }
    }));
    let manager = FakeManager::new(Report::Never);
    let (downloader, mut notifications) = Downloader::new(controller.clone(), manager.clone());
    downloader.download(JobId(1)).await.unwrap();
    downloader.download(JobId(2)).await.unwrap();
    manager.report_all(JobId(1), ArtifactStatus::Ready).await;
    let n = next_notification(&mut notifications).await;
    assert_eq!(n.job, JobId(1));
    assert!(!n.ok, "{n:?}");
    assert_eq!(n.msg, "failed to set job status: job table is read-only");
    let infos: Vec<String> = updates_of(&controller, JobId(1))
        .into_iter()
        .map(|(info, _)| info)
        .collect();
    assert_eq!(
        infos,
        ready_infos(3)[..3],
        "nothing after the failed update"
    );

    manager.report_all(JobId(2), ArtifactStatus::Ready).await;
    assert_eq!(next_notification(&mut notifications).await, ok(JobId(2)));
    eventually_empty(&downloader).await;
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}

/// An update handed back is made with `set_status_and_info`; while that call waits, the
/// job's next updates queue behind it and go the same way, in order, although the
/// controller would make them at once. Once they are all done, the job is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_back_update_keeps_the_order() {
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let (controller, _calls) = FakeController::new(pushes_config(4));
    let controller = Arc::new(
        controller
            // "2 / 4" is handed back; everything else is made at once.
            .immediate(|_, info| (!info.starts_with("2 /")).then_some(Ok(())))
            // The awaited call for "2 / 4" waits for the gate.
            .on_status(move |_, info| {
                let gate = (info.starts_with("2 /")).then(|| held.clone());
                Box::pin(async move {
                    if let Some(gate) = gate {
                        gate.acquire().await?.forget();
                    }
                    Ok(())
                })
            }),
    );
    let manager = FakeManager::new(Report::Never);
    let (downloader, mut notifications) = Downloader::new(controller.clone(), manager.clone());
    downloader.download(JobId(1)).await.unwrap();
    manager.report_all(JobId(1), ArtifactStatus::Ready).await;
    // Once the actor has handled all four changes, "2 / 4" waits at the gate (the gate has
    // no permit yet), and "3 / 4" and "4 / 4" wait behind it.
    wait_stats(&downloader, "the four changes", |s| s.status_changes >= 4).await;
    assert_no_notification(&mut notifications);
    let infos = ready_infos(4);
    assert_eq!(
        updates_of(&controller, JobId(1)),
        [
            (infos[0].clone(), Via::Now),
            (infos[1].clone(), Via::Now),
            (infos[2].clone(), Via::Async),
        ]
    );
    gate.add_permits(1);
    assert_eq!(next_notification(&mut notifications).await, ok(JobId(1)));
    assert_eq!(
        updates_of(&controller, JobId(1)),
        [
            (infos[0].clone(), Via::Now),
            (infos[1].clone(), Via::Now),
            (infos[2].clone(), Via::Async),
            (infos[3].clone(), Via::Async),
            (infos[4].clone(), Via::Async),
        ]
    );
    eventually_empty(&downloader).await;
    downloader.shutdown().await.unwrap();
}

/// A panic in `try_set_status_and_info` fails that job only (the actor survives it), and
/// `shutdown` reports it; the first update's panic, made by the job's planning task, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_an_update_made_at_once_fails_only_that_job() {
    let (controller, _calls) = FakeController::new(pushes_config(2));
    let controller = Arc::new(controller.immediate(|job, info| {
        assert!(
            !(job == JobId(1) && info.starts_with("1 /")),
            "controller bug"
        );
        assert!(!(job == JobId(3) && info.is_empty()), "first update bug");
        Some(Ok(()))
    }));
    let manager = FakeManager::new(Report::Never);
    let (downloader, mut notifications) = Downloader::new(controller.clone(), manager.clone());
    for job in 1..=3 {
        downloader.download(JobId(job)).await.unwrap();
    }
    let failed = next_notification(&mut notifications).await;
    assert_eq!(failed.job, JobId(3));
    assert!(
        !failed.ok && failed.msg.contains("first update bug"),
        "{failed:?}"
    );
    expect_job_1_panicked_job_2_ok(downloader, &mut notifications, &manager, "first update bug")
        .await;
}

/// Many jobs at once through a controller that makes every other update at once and
/// hands the rest back: each job is answered once, with all its updates in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_updates_for_many_jobs_stay_in_order() {
    let turn = Arc::new(AtomicUsize::new(0));
    let (controller, _calls) = FakeController::new(pushes_config(10));
    let controller = Arc::new(controller.immediate(move |_, _| {
        turn.fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(2)
            .then_some(Ok(()))
    }));
    let manager = FakeManager::new(Report::Spawned);
    let (downloader, mut notifications) = Downloader::new(controller.clone(), manager);
    for job in 1..=200 {
        downloader.download(JobId(job)).await.unwrap();
    }
    let mut answered = std::collections::HashSet::new();
    for _ in 1..=200 {
        let n = next_notification(&mut notifications).await;
        assert!(n.ok, "{n:?}");
        assert!(answered.insert(n.job), "{} answered twice", n.job);
    }
    for job in 1..=200 {
        let infos: Vec<String> = updates_of(&controller, JobId(job))
            .into_iter()
            .map(|(info, _)| info)
            .collect();
        assert_ready_infos(&infos, 10);
    }
    eventually_empty(&downloader).await;
    assert_no_notification(&mut notifications);
    downloader.shutdown().await.unwrap();
}
