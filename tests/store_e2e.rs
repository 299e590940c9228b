//! End to end: the real Downloader, the real Store and the test server. A job with three
//! images (one with a checksum file, one with an expected SHA-256) and push/run/pull test
//! actions goes through to OK with verified files at the saved config's paths; the same
//! job with a broken URL goes through to FAIL and leaves nothing behind.

mod support;

use std::sync::{Arc, Mutex};

use artifact_coordinator::{
    BoxError, Config, Downloader, JobId, JobStatus, JobsController, Notification, Store,
    TestAction, async_trait,
};
use support::{
    Resource, Step, TestServer, WAIT, all_rows, assert_no_part_files, body, eventually,
    fast_builder, md5_hex, sha256_file, sha256_hex,
};
use tokio::sync::mpsc;

/// A controller holding configs in memory and recording what the Downloader tells it.
#[derive(Default)]
struct Controller {
    /// The configs the jobs start with.
    configs: Mutex<std::collections::HashMap<JobId, Config>>,
    /// Configs saved by the Downloader.
    saved: Mutex<std::collections::HashMap<JobId, Config>>,
    /// Every status call, in order.
    infos: Mutex<Vec<(JobId, JobStatus, String)>>,
}

#[async_trait]
impl JobsController for Controller {
    async fn set_status_and_info(
        &self,
        job: JobId,
        status: JobStatus,
        info: String,
    ) -> Result<(), BoxError> {
        self.infos.lock().unwrap().push((job, status, info));
        Ok(())
    }

    async fn get_config(&self, job: JobId) -> Result<Config, BoxError> {
        self.configs
            .lock()
            .unwrap()
            .get(&job)
            .cloned()
            .ok_or_else(|| format!("no config for job {job}").into())
    }

    async fn set_config(&self, job: JobId, config: Config) -> Result<(), BoxError> {
        self.saved.lock().unwrap().insert(job, config);
        Ok(())
    }
}

/// What the server serves for the job, by name.
struct Served {
    boot: Vec<u8>,
    rootfs: Vec<u8>,
    dtb: Vec<u8>,
    boot_md5: Vec<u8>,
    script: Vec<u8>,
}

/// Serves the job's files; `boot.img` is flaky (a 503 and a reset) but recovers.
fn serve(server: &TestServer) -> Served {
    let boot = body(300_000, 1);
    let rootfs = body(500_000, 2);
    let dtb = body(20_000, 3);
    let script = b"#!/bin/sh\necho smoke\n".to_vec();
    let boot_md5 = format!("{}  boot.img\n", md5_hex(&boot)).into_bytes();
    server.serve(
        "/boot.img",
        Resource::new(boot.clone()).etag("b1").ranges(true),
    );
    server.script("/boot.img", [Step::status(503), Step::reset_after(100_000)]);
    server.serve("/boot.img.md5", Resource::new(boot_md5.clone()));
    server.serve("/rootfs.img", Resource::new(rootfs.clone()));
    server.serve("/board.dtb", Resource::new(dtb.clone()));
    server.serve("/run.sh", Resource::new(script.clone()));
    Served {
        boot,
        rootfs,
        dtb,
        boot_md5,
        script,
    }
}

/// The job: image 0 with an md5 checksum file, image 1 with an expected SHA-256, image 2
/// plain (from `dtb_path`), a push, a run and a pull.
fn job_config(server: &TestServer, served: &Served, dtb_path: &str) -> Config {
    let json = format!(
        r#"{{
  "job_name": "flash-and-smoke",
  "device_type": "rpi4",
  "priority": "medium",
  "action": {{
    "deploy": {{
      "images": [
        {{ "uri": "{boot}", "checksum_uri": "{boot_md5}", "checksum_type": "md5" }},
        {{ "uri": "{rootfs}", "sha256": "{rootfs_sha}" }},
        {{ "uri": "{dtb}" }}
      ]
    }},
    "test": {{
      "test_cases": [
        {{ "case_name": "smoke",
          "test_actions": [
            {{ "push": {{ "uri": "{script}", "dest": "/tmp/run.sh", "alias": "run.sh" }} }},
            {{ "run": {{ "name": "sh /tmp/run.sh" }} }},
            {{ "pull": {{ "src": "/tmp/result.log", "alias": "result.log" }} }}
          ] }}
      ]
    }}
  }}
}}"#,
        boot = server.url("/boot.img"),
        boot_md5 = server.url("/boot.img.md5"),
        rootfs = server.url("/rootfs.img"),
        rootfs_sha = sha256_hex(&served.rootfs),
        dtb = server.url(dtb_path),
        script = server.url("/run.sh"),
    );
    Config::from_json(&json).expect("job config")
}

/// Waits for the job's notification.
async fn answer(notifications: &mut mpsc::UnboundedReceiver<Notification>) -> Notification {
    tokio::time::timeout(WAIT, notifications.recv())
        .await
        .expect("an answer within the wait")
        .expect("the notifier is open")
}

/// The whole stack to OK: every path in the saved config holds the served content, the
/// progress reached "5 / 5 artifacts ready", the pull's directory exists, and the
/// Downloader holds no state for the job afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_with_three_images_goes_through_to_ok() {
    let server = TestServer::start().await;
    let served = serve(&server);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = fast_builder()
        .open(dir.path().join("root"))
        .await
        .expect("open");
    let root = store.root().to_path_buf();
    let controller = Arc::new(Controller::default());
    let job = JobId(1);
    controller
        .configs
        .lock()
        .unwrap()
        .insert(job, job_config(&server, &served, "/board.dtb"));
    let (downloader, mut notifications) =
        Downloader::new(controller.clone(), Arc::new(store.clone()));

    downloader.download(job).await.expect("download");
    let note = answer(&mut notifications).await;
    assert_eq!(
        note,
        Notification {
            job,
            ok: true,
            msg: String::new()
        }
    );

    let saved = controller
        .saved
        .lock()
        .unwrap()
        .get(&job)
        .cloned()
        .expect("config saved");
    let images = &saved.action.deploy.images;
    let path = |p: &Option<String>| std::path::PathBuf::from(p.as_deref().expect("a path"));
    for (image, content) in images
        .iter()
        .zip([&served.boot, &served.rootfs, &served.dtb])
    {
        let p = path(&image.path);
        assert!(p.starts_with(&root), "{p:?}");
        assert_eq!(sha256_file(&p), sha256_hex(content), "{p:?}");
    }
    let checksum = path(&images[0].checksum_path);
    assert_eq!(
        std::fs::read(&checksum).expect("checksum file"),
        served.boot_md5
    );
    assert_eq!(images[1].checksum_path, None);
    let actions = &saved.action.test.test_cases[0].test_actions;
    let TestAction::Push(push) = &actions[0] else {
        panic!("{actions:?}")
    };
    assert_eq!(sha256_file(&path(&push.path)), sha256_hex(&served.script));
    let TestAction::Pull(pull) = &actions[2] else {
        panic!("{actions:?}")
    };
    let pulled = path(&pull.path);
    assert!(pulled.starts_with(&root));
    assert!(pulled.parent().expect("parent").is_dir());

    let infos = controller.infos.lock().unwrap().clone();
    assert_eq!(
        infos.first(),
        Some(&(job, JobStatus::Downloading, String::new()))
    );
    // One call per READY, in order; the total is the number registered so far (a READY
    // may arrive while later artifacts are still being pushed), and ends at 5.
    let progress: Vec<_> = infos[1..].iter().map(|(_, _, i)| i.clone()).collect();
    assert_eq!(progress.len(), 5, "{progress:?}");
    for (i, info) in progress.iter().enumerate() {
        let prefix = format!("{} / ", i + 1);
        assert!(
            info.starts_with(&prefix) && info.ends_with(" artifacts ready"),
            "{progress:?}"
        );
    }
    assert_eq!(progress[4], "5 / 5 artifacts ready");
    // The flaky image really was retried and resumed.
    let boot_reqs = server.requests("/boot.img");
    assert_eq!(boot_reqs.len(), 3, "{boot_reqs:?}");
    assert!(boot_reqs[2].header("range").is_some(), "{boot_reqs:?}");

    let stats = downloader.stats().await.expect("stats");
    assert_eq!(
        (stats.jobs, stats.paths, stats.orphans, stats.planning),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    let rows = all_rows(&store).await;
    assert_eq!(rows.len(), 6, "5 downloads and 1 pull: {rows:?}");
    assert_no_part_files(&root);
    downloader.shutdown().await.expect("shutdown");
}

/// The same job with a broken image URL (404): FAIL naming the artifact and the HTTP
/// status, then, once every other transfer has ended, no state left in the Downloader,
/// no temporary file, and the broken artifact FAILED in the index without a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_with_a_broken_url_goes_through_to_fail() {
    let server = TestServer::start().await;
    let served = serve(&server);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = fast_builder()
        .open(dir.path().join("root"))
        .await
        .expect("open");
    let root = store.root().to_path_buf();
    let controller = Arc::new(Controller::default());
    let job = JobId(2);
    controller
        .configs
        .lock()
        .unwrap()
        .insert(job, job_config(&server, &served, "/gone.dtb"));
    let (downloader, mut notifications) =
        Downloader::new(controller.clone(), Arc::new(store.clone()));

    downloader.download(job).await.expect("download");
    let note = answer(&mut notifications).await;
    assert_eq!(note.job, job);
    assert!(!note.ok, "{note:?}");
    assert!(note.msg.contains("Image_2"), "{note:?}");
    assert!(note.msg.contains("404"), "{note:?}");

    // Every transfer of the job ends (the others may finish after the FAIL). The FAIL
    // may come before every push was made: planning stops once the job is answered.
    eventually("every artifact of the job to end", || {
        let store = store.clone();
        async move {
            let rows = all_rows(&store).await;
            rows.iter().any(|r| r.alias == "Image_2")
                && rows.iter().all(|r| {
                    r.kind == artifact_coordinator::ArtifactType::Result || r.status.is_terminal()
                })
        }
    })
    .await;
    eventually("the Downloader to drop the job's state", || {
        let downloader = downloader.clone();
        async move {
            let s = downloader.stats().await.expect("stats");
            (s.jobs, s.paths, s.orphans, s.planning) == (0, 0, 0, 0)
        }
    })
    .await;
    assert_no_part_files(&root);
    let broken = all_rows(&store)
        .await
        .into_iter()
        .find(|r| r.alias == "Image_2")
        .expect("row of the broken image");
    assert_eq!(broken.status, artifact_coordinator::ArtifactStatus::Failed);
    assert!(
        broken
            .error
            .as_deref()
            .is_some_and(|e| e.contains("HTTP 404")),
        "{broken:?}"
    );
    assert!(!broken.path.as_path().exists());
    // Nothing more is said about the job.
    assert!(notifications.try_recv().is_err());
    let infos = controller.infos.lock().unwrap().clone();
    assert!(
        infos
            .iter()
            .any(|(_, _, i)| i == artifact_coordinator::INFO_FAILED),
        "{infos:?}"
    );
    downloader.shutdown().await.expect("shutdown");
}

/// A hostile alias in a job config is refused by the Store: the job FAILs with the
/// alias in the message, and nothing is written outside the root.
#[tokio::test]
async fn hostile_alias_in_config_fails_the_job() {
    let server = TestServer::start().await;
    server.serve("/run.sh", Resource::new(&b"echo hi\n"[..]));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("root")).await.expect("open");
    let controller = Arc::new(Controller::default());
    let job = JobId(3);
    let json = format!(
        r#"{{"action": {{"test": {{"test_cases": [{{"test_actions": [
            {{"push": {{"uri": "{}", "alias": "../../../escape.sh"}}}}]}}]}}}}}}"#,
        server.url("/run.sh")
    );
    controller
        .configs
        .lock()
        .unwrap()
        .insert(job, Config::from_json(&json).expect("config"));
    let (downloader, mut notifications) =
        Downloader::new(controller.clone(), Arc::new(store.clone()));
    let _ = downloader.download(job).await;
    let note = answer(&mut notifications).await;
    assert!(!note.ok, "{note:?}");
    assert!(note.msg.contains("../../../escape.sh"), "{note:?}");
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(entries, ["root"]);
    assert_eq!(server.hits("/run.sh"), 0);
    downloader.shutdown().await.expect("shutdown");
}

/// Byte progress through the Downloader: with the Store's subscription, `stats()` and
/// `progress()` sum each job's bytes while it is in flight (a slow image keeps it there),
/// and nothing is left once the job is answered.
#[tokio::test]
async fn downloader_reports_byte_totals_per_job() {
    let server = TestServer::start().await;
    let slow = body(400_000, 31);
    let fast = body(50_000, 32);
    let chunk = slow.len().div_ceil(40);
    server.serve(
        "/slow.img",
        Resource::new(slow.clone()).trickle(chunk, std::time::Duration::from_millis(25)),
    );
    server.serve("/fast.img", Resource::new(fast.clone()));
    let json = format!(
        r#"{{ "job_name": "bytes", "action": {{ "deploy": {{ "images": [
            {{ "uri": "{}" }}, {{ "uri": "{}" }} ] }} }} }}"#,
        server.url("/slow.img"),
        server.url("/fast.img"),
    );
    let controller = Arc::new(Controller::default());
    let job = JobId(9);
    controller
        .configs
        .lock()
        .unwrap()
        .insert(job, Config::from_json(&json).expect("config"));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = fast_builder()
        .progress_interval(std::time::Duration::from_millis(10))
        .open(dir.path().join("root"))
        .await
        .expect("store");
    let (downloader, mut notifications) = Downloader::builder()
        .byte_progress(store.subscribe_progress())
        .build(controller.clone(), Arc::new(store.clone()));
    downloader.download(job).await.expect("download");
    let both = (slow.len() + fast.len()) as u64;
    // Both sizes known, the fast image done, the slow one part way.
    eventually(
        "byte totals of both images while the slow one runs",
        || async {
            let stats = downloader.stats().await.expect("stats");
            stats.bytes.iter().any(|b| {
                b.job == job && b.total == both && b.done > fast.len() as u64 && b.done < both
            })
        },
    )
    .await;
    let progress = downloader
        .progress(job)
        .await
        .expect("progress")
        .expect("in flight");
    assert_eq!(progress.bytes_total, both);
    assert!(progress.bytes_done <= both);
    let answer = answer(&mut notifications).await;
    assert!(answer.ok, "{answer:?}");
    let stats = downloader.stats().await.expect("stats");
    assert!(stats.bytes.is_empty(), "{stats:?}");
    downloader.shutdown().await.expect("shutdown");
    store.close().await;
}
