//! `cancel_job`: running and queued transfers of the job stop promptly, end FAILED with
//! "cancelled", leave no file and no temporary file; other jobs go on.

mod support;

use std::time::Duration;

use artifact_coordinator::{ArtifactManager, ArtifactStatus, JobId};
use support::{
    Fixture, Outcome, Resource, Statuses, Step, assert_no_part_files, body, fast_builder, image,
};

/// How long a cancelled transfer may take to report FAILED: "promptly" with room for a
/// loaded machine (the server would otherwise stall for a minute).
const PROMPT: Duration = Duration::from_secs(5);

/// A transfer stalled mid-body (idle timeout 60 s) is cancelled: FAILED "cancelled" at
/// once, in the index too, with its temporary file gone.
#[tokio::test]
async fn cancel_running_transfer() {
    let fx = Fixture::with(fast_builder().idle_timeout(Duration::from_secs(60))).await;
    fx.server.serve(
        "/slow",
        Resource::new(body(1 << 20, 1)).trickle(4096, Duration::from_millis(1)),
    );
    fx.server.script("/slow", [Step::stall_after(64 * 1024)]);
    let (path, mut statuses) = fx.push(image(1, "Image_0", &fx.server.url("/slow"))).await;
    tokio::time::timeout(support::WAIT, fx.server.wait_bytes_sent("/slow", 64 * 1024))
        .await
        .expect("the transfer started");
    fx.store.cancel_job(JobId(1)).await.expect("cancel");
    let changes = statuses.until_terminal_within(&path, PROMPT).await;
    let out = Outcome {
        record: fx.info(&path).await,
        path,
        changes,
    };
    out.assert_failed(&fx.root(), |r| r == "cancelled");
    assert_eq!(
        fx.server.hits("/slow"),
        1,
        "a cancelled transfer is not retried"
    );
}

/// A slow trickle (not stalled) is cancelled within one read.
#[tokio::test]
async fn cancel_trickling_transfer() {
    let fx = Fixture::with(fast_builder().idle_timeout(Duration::from_secs(60))).await;
    fx.server.serve(
        "/slow",
        Resource::new(body(4 << 20, 2)).trickle(1024, Duration::from_millis(20)),
    );
    let (path, mut statuses) = fx.push(image(1, "Image_0", &fx.server.url("/slow"))).await;
    tokio::time::timeout(support::WAIT, fx.server.wait_bytes_sent("/slow", 8 * 1024))
        .await
        .expect("the transfer started");
    fx.store.cancel_job(JobId(1)).await.expect("cancel");
    let changes = statuses.until_terminal_within(&path, PROMPT).await;
    let out = Outcome {
        record: fx.info(&path).await,
        path,
        changes,
    };
    out.assert_failed(&fx.root(), |r| r == "cancelled");
}

/// With one worker busy on a stalled transfer, the job's queued transfers are cancelled
/// too (never requested), and another job's queued transfer then runs to READY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_transfers() {
    let fx = Fixture::with(
        fast_builder()
            .workers(1)
            .idle_timeout(Duration::from_secs(60)),
    )
    .await;
    fx.server.serve("/stall", Resource::new(body(100_000, 3)));
    fx.server.script("/stall", [Step::stall_after(10_000)]);
    let other = body(5_000, 4);
    fx.server.serve("/other", Resource::new(other.clone()));
    for i in 0..3 {
        fx.server
            .serve(&format!("/q{i}"), Resource::new(body(1000, 10 + i)));
    }

    let (tx, mut statuses) = Statuses::channel();
    let running = fx
        .store
        .push_artifact(image(1, "Image_0", &fx.server.url("/stall")), tx.clone())
        .await
        .expect("push");
    tokio::time::timeout(support::WAIT, fx.server.wait_bytes_sent("/stall", 10_000))
        .await
        .expect("the transfer started");
    let mut queued = Vec::new();
    for i in 0..3 {
        let p = fx
            .store
            .push_artifact(
                image(
                    1,
                    &format!("Image_{}", i + 1),
                    &fx.server.url(&format!("/q{i}")),
                ),
                tx.clone(),
            )
            .await
            .expect("push");
        queued.push(p);
    }
    let other_path = fx
        .store
        .push_artifact(image(2, "Image_0", &fx.server.url("/other")), tx.clone())
        .await
        .expect("push");

    fx.store.cancel_job(JobId(1)).await.expect("cancel");
    for path in std::iter::once(&running).chain(&queued) {
        let changes = statuses.until_terminal_within(path, PROMPT).await;
        let out = Outcome {
            record: fx.info(path).await,
            path: path.clone(),
            changes,
        };
        let last = out.last();
        assert_eq!(last.status, ArtifactStatus::Failed, "{:?}", out.changes);
        assert_eq!(last.reason.as_deref(), Some("cancelled"));
        assert_eq!(out.record.status, ArtifactStatus::Failed);
        assert_eq!(out.record.error.as_deref(), Some("cancelled"));
        assert!(!path.as_path().exists());
    }
    for i in 0..3 {
        assert_eq!(
            fx.server.hits(&format!("/q{i}")),
            0,
            "queued /q{i} was requested"
        );
    }
    let changes = statuses.until_terminal(&other_path).await;
    let out = Outcome {
        record: fx.info(&other_path).await,
        path: other_path,
        changes,
    };
    out.assert_ready(&fx.root(), &other);
    assert_no_part_files(&fx.root());
}

/// Cancelling a job the store does not know, or one already finished, is fine and
/// changes nothing.
#[tokio::test]
async fn cancel_unknown_or_finished_job_is_ok() {
    let fx = Fixture::new().await;
    let data = body(1000, 5);
    fx.server.serve("/f", Resource::new(data.clone()));
    fx.store
        .cancel_job(JobId(12345))
        .await
        .expect("cancel unknown");
    let out = fx.fetch("Image_0", "/f").await;
    out.assert_ready(&fx.root(), &data);
    fx.store
        .cancel_job(JobId(1))
        .await
        .expect("cancel finished");
    let row = fx.info(&out.path).await;
    assert_eq!(row.status, ArtifactStatus::Ready);
    assert_eq!(
        support::sha256_file(out.path.as_path()),
        support::sha256_hex(&data)
    );
}

/// A cancelled job can push again later: the new artifact downloads normally.
#[tokio::test]
async fn job_can_push_after_cancel() {
    let fx = Fixture::with(fast_builder().idle_timeout(Duration::from_secs(60))).await;
    fx.server.serve("/stall", Resource::new(body(50_000, 6)));
    fx.server.script("/stall", [Step::stall_after(1000)]);
    let (path, mut statuses) = fx.push(image(3, "Image_0", &fx.server.url("/stall"))).await;
    tokio::time::timeout(support::WAIT, fx.server.wait_bytes_sent("/stall", 1000))
        .await
        .expect("started");
    fx.store.cancel_job(JobId(3)).await.expect("cancel");
    let last = statuses
        .until_terminal_within(&path, PROMPT)
        .await
        .pop()
        .expect("terminal");
    assert_eq!(last.reason.as_deref(), Some("cancelled"));
    let data = body(2000, 7);
    fx.server.serve("/next", Resource::new(data.clone()));
    let out = fx
        .fetch_desc(image(3, "Image_0", &fx.server.url("/next")))
        .await;
    out.assert_ready(&fx.root(), &data);
}

/// With one worker, queued transfers run in push order (the builder documents a FIFO
/// queue): a stalled transfer holds the worker while 20 more are pushed one after the
/// other; once it is cancelled, the server sees the 20 requests in push order. On a
/// multi-thread runtime, as an embedding controller would run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_served_in_push_order() {
    let fx = Fixture::with(
        fast_builder()
            .workers(1)
            .idle_timeout(Duration::from_secs(60)),
    )
    .await;
    fx.server.serve("/stall", Resource::new(body(100_000, 20)));
    fx.server.script("/stall", [Step::stall_after(1000)]);
    let (tx, mut statuses) = Statuses::channel();
    let blocker = fx
        .store
        .push_artifact(image(1, "blocker", &fx.server.url("/stall")), tx.clone())
        .await
        .expect("push");
    tokio::time::timeout(support::WAIT, fx.server.wait_bytes_sent("/stall", 1000))
        .await
        .expect("the blocker started");
    let mut queued = Vec::new();
    for i in 0..20 {
        let path = format!("/q{i}");
        fx.server.serve(&path, Resource::new(body(100, 100 + i)));
        let p = fx
            .store
            .push_artifact(
                image(2, &format!("Q_{i:02}"), &fx.server.url(&path)),
                tx.clone(),
            )
            .await
            .expect("push");
        queued.push(p);
    }
    fx.store.cancel_job(JobId(1)).await.expect("cancel");
    let last = statuses.terminal(&blocker).await;
    assert_eq!(last.reason.as_deref(), Some("cancelled"));
    for p in &queued {
        assert_eq!(statuses.terminal(p).await.status, ArtifactStatus::Ready);
    }
    let order: Vec<usize> = {
        let mut firsts: Vec<(std::time::Instant, usize)> = (0..20)
            .map(|i| (fx.server.requests(&format!("/q{i}"))[0].at, i))
            .collect();
        firsts.sort();
        firsts.into_iter().map(|(_, i)| i).collect()
    };
    assert_eq!(
        order,
        (0..20).collect::<Vec<_>>(),
        "requests out of push order"
    );
}

/// With `max_transfers` reached, a push waits for a transfer to end (nothing of it is
/// recorded or requested meanwhile), then goes on normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_waits_for_room_among_the_transfers() {
    // The stuck transfer must stay stuck until it is cancelled, however slow the machine:
    // no idle timeout (and retry) within the test.
    let fx = Fixture::with(
        fast_builder()
            .workers(1)
            .max_transfers(1)
            .idle_timeout(std::time::Duration::from_secs(600)),
    )
    .await;
    fx.server.serve("/stall", Resource::new(body(100_000, 2)));
    fx.server.script("/stall", [Step::stall_after(1000)]);
    let data = body(5000, 3);
    fx.server.serve("/f", Resource::new(data.clone()));
    let (stuck, mut stuck_statuses) = fx.push(image(1, "stuck", &fx.server.url("/stall"))).await;
    stuck_statuses
        .wait_for(&stuck, ArtifactStatus::Downloading)
        .await;
    let (tx, mut statuses) = Statuses::channel();
    let store = fx.store.clone();
    let uri = fx.server.url("/f");
    let second = tokio::spawn(async move { store.push_artifact(image(2, "f", &uri), tx).await });
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    if second.is_finished() {
        panic!(
            "the push should wait while the only place is taken: {:?}",
            second.await
        );
    }
    assert_eq!(fx.server.hits("/f"), 0);
    fx.store.cancel(JobId(1)).await;
    let path = tokio::time::timeout(std::time::Duration::from_secs(20), second)
        .await
        .expect("the push goes on once the stuck transfer ends")
        .expect("join")
        .expect("push");
    let last = statuses.terminal(&path).await;
    assert_eq!(last.status, ArtifactStatus::Ready, "{last:?}");
    assert_eq!(std::fs::read(path.as_path()).expect("read"), data);
}
