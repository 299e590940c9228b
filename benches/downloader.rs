//! Status changes per second through the Downloader's actor: 1,000 jobs × 100 artifacts,
//! an in-process fake manager and a no-op controller. The twin of
//! `../shared/bench/weles_core` (the Go hot path of Weles' DownloaderImpl): every job is
//! registered and its config saved, then one producer sends all READY changes,
//! interleaved across jobs, and the clock stops when every job has its OK.
//!
//! How it matches the Go twin:
//! - the `ArtifactStatusChange` values (path strings included) are built before the clock
//!   starts, as Go makes its paths before timing and then sends a string header without a
//!   copy; the actor owns and frees each change it receives, which is timed;
//! - the producer sends each change with `send().await` on the collector channel (Go: one
//!   goroutine, `collector <- change`);
//! - the controller's status update does nothing and is made at once, through
//!   `JobsController::try_set_status_and_info`, as Go's `SetStatusAndInfo` is a plain
//!   method call. Each run is also repeated with a controller that implements only the
//!   async `set_status_and_info` (the trait's default for the other), printed as
//!   `rust-actor-async`: every READY then costs a boxed future;
//! - every run, the notification reader included, is a task on a 2-worker runtime (Go:
//!   goroutines with `GOMAXPROCS=2`); `block_on`'s thread would be a third thread;
//! - `changes_per_s` = changes / feed seconds, first send to last OK, like Go's.
//!
//! Prints one line per run and a median line in the Go harness's format (for both
//! controllers, alternating, so that noise from other processes hits both alike), then a
//! scaling line (10,000 against 100,000 artifacts, see [`scaling`]), then runs the
//! Go-twin measurement under criterion.
//!
//! `benches/downloader_mimalloc.rs` runs the same with mimalloc as the global allocator
//! (`-mimalloc` labels, no scaling run or criterion).
//!
//! Environment: `BENCH_RUNS`, `BENCH_JOBS`, `BENCH_ARTIFACTS` (defaults 15, 1000, 100),
//! `BENCH_THREADS` (runtime workers, default 2 as `GOMAXPROCS=2` on this machine; 1 for a
//! current-thread runtime), `BENCH_SCALING_RUNS` (default 15), `BENCH_SKIP_SCALING=1`,
//! `BENCH_SKIP_CRITERION=1`. `benches/coordinator_vs_go.sh` runs this next to the Go twin.
//! `PERF_CTL_FIFO`/`PERF_ACK_FIFO` switch `perf record --control` on around each timed
//! feed only (around each registration instead with `BENCH_PERF_PHASE=register`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use artifact_coordinator::{
    ArtifactDescription, ArtifactManager, ArtifactPath, ArtifactStatus, ArtifactStatusChange,
    BoxError, Config, Downloader, JobId, JobStatus, JobsController, Push, StatusNow, Test,
    TestAction, TestCase, async_trait,
};
use criterion::{Criterion, Throughput};
use tokio::sync::mpsc;

#[path = "common/mod.rs"]
mod common;
use common::{PerfControl, median, peak_rss_mib};

/// A controller that does nothing, with a config of `artifacts` pushes. With `immediate`,
/// its status updates are made at once (`try_set_status_and_info`); without, only the
/// async `set_status_and_info` is implemented.
struct NoopController {
    config: Config,
    immediate: bool,
}

#[async_trait]
impl JobsController for NoopController {
    async fn set_status_and_info(&self, _: JobId, _: JobStatus, _: String) -> Result<(), BoxError> {
        Ok(())
    }
    async fn get_config(&self, _: JobId) -> Result<Config, BoxError> {
        Ok(self.config.clone())
    }
    async fn set_config(&self, _: JobId, _: Config) -> Result<(), BoxError> {
        Ok(())
    }
    fn try_set_status_and_info(&self, _: JobId, _: JobStatus, info: String) -> StatusNow {
        if self.immediate {
            StatusNow::Done(Ok(()))
        } else {
            StatusNow::Later(info)
        }
    }
}

/// A manager that hands out paths and keeps the collector for the producer.
#[derive(Default)]
struct FakeManager {
    collector: Mutex<Option<mpsc::Sender<ArtifactStatusChange>>>,
}

fn path_of(job: JobId, alias: &str) -> String {
    format!("/tmp/weles/{job}/TEST/{alias}")
}

#[async_trait]
impl ArtifactManager for FakeManager {
    async fn push_artifact(
        &self,
        d: ArtifactDescription,
        collector: mpsc::Sender<ArtifactStatusChange>,
    ) -> Result<ArtifactPath, BoxError> {
        let mut slot = self.collector.lock().map_err(|_| "poisoned")?;
        if slot.is_none() {
            *slot = Some(collector);
        }
        Ok(ArtifactPath(path_of(d.job, &d.alias)))
    }
    async fn create_artifact(&self, d: ArtifactDescription) -> Result<ArtifactPath, BoxError> {
        Ok(ArtifactPath(path_of(d.job, &d.alias)))
    }
    async fn cancel_job(&self, _: JobId) -> Result<(), BoxError> {
        Ok(())
    }
}

fn config(artifacts: usize) -> Config {
    let mut config = Config::default();
    config.action.test = Test {
        test_cases: vec![TestCase {
            case_name: "bench".into(),
            test_actions: (0..artifacts)
                .map(|a| {
                    TestAction::Push(Push {
                        uri: format!("http://127.0.0.1/{a}"),
                        alias: format!("alias_{a}"),
                        ..Push::default()
                    })
                })
                .collect(),
        }],
    };
    config
}

/// One run: returns (register seconds, feed seconds).
async fn run_once(
    jobs: usize,
    artifacts: usize,
    immediate: bool,
    mut perf: PerfControl,
) -> (f64, f64, PerfControl) {
    let manager = Arc::new(FakeManager::default());
    let controller = Arc::new(NoopController {
        config: config(artifacts),
        immediate,
    });
    let (downloader, mut notifications) = Downloader::new(controller, manager.clone());

    let phase_register = std::env::var("BENCH_PERF_PHASE").is_ok_and(|p| p == "register");
    if phase_register {
        perf.enable();
    }
    let t0 = Instant::now();
    let mut registering = tokio::task::JoinSet::new();
    for j in 0..jobs {
        let d = downloader.clone();
        registering.spawn(async move { d.download(JobId(j as u64)).await });
    }
    while let Some(r) = registering.join_next().await {
        r.expect("join").expect("download");
    }
    let register = t0.elapsed().as_secs_f64();
    perf.disable();

    // Built before the clock starts, as the Go twin makes its paths before timing (it sends a
    // string header, no copy); the actor receives and drops each one.
    let mut changes = Vec::with_capacity(jobs * artifacts);
    for a in 0..artifacts {
        for j in 0..jobs {
            changes.push(ArtifactStatusChange::new(
                path_of(JobId(j as u64), &format!("alias_{a}")),
                ArtifactStatus::Ready,
            ));
        }
    }
    let collector = manager
        .collector
        .lock()
        .expect("lock")
        .clone()
        .expect("collector");

    if !phase_register {
        perf.enable();
    }
    let t1 = Instant::now();
    let producer = tokio::spawn(async move {
        for change in changes {
            collector.send(change).await.expect("collector open");
        }
    });
    let mut seen = vec![false; jobs];
    for _ in 0..jobs {
        let n = notifications.recv().await.expect("notification");
        assert!(n.ok && !seen[n.job.0 as usize], "unexpected {n:?}");
        seen[n.job.0 as usize] = true;
    }
    let feed = t1.elapsed().as_secs_f64();
    perf.disable();
    producer.await.expect("producer");

    let stats = downloader.stats().await.expect("stats");
    assert_eq!(
        (stats.jobs, stats.paths, stats.orphans),
        (0, 0, 0),
        "state left behind"
    );
    assert_eq!(stats.status_changes, (jobs * artifacts) as u64);
    downloader.shutdown().await.expect("shutdown");
    (register, feed, perf)
}

/// One run as a task on the runtime's workers, like every goroutine of the Go twin (the
/// thread that calls `block_on` would be a third thread on two cores).
fn measure(
    rt: &tokio::runtime::Runtime,
    jobs: usize,
    artifacts: usize,
    immediate: bool,
    perf: &mut PerfControl,
) -> (f64, f64) {
    let control = std::mem::take(perf);
    let (register, feed, control) = rt.block_on(async move {
        tokio::spawn(run_once(jobs, artifacts, immediate, control))
            .await
            .expect("bench task")
    });
    *perf = control;
    (register, feed)
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A 2-worker runtime (as GOMAXPROCS=2), or a single-threaded one with `BENCH_THREADS=1`.
fn runtime() -> tokio::runtime::Runtime {
    let mut builder = if env("BENCH_THREADS", 2) == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(env("BENCH_THREADS", 2));
        b
    };
    builder.enable_all().build().expect("runtime")
}

/// How the coordinator's time grows with the number of artifacts in flight: 100 jobs × 100
/// artifacts (10,000) against 1,000 jobs × 100 (100,000), the Go twin's shape. Only the
/// number of jobs changes, so every job does the same work and a linear coordinator takes
/// 10× as long. `t` is register + feed (the whole run: every job registered, every READY
/// handled, every OK received), the median of `runs` runs, the two shapes alternating so
/// that noise from other processes hits both alike.
fn scaling(rt: &tokio::runtime::Runtime, runs: usize, perf: &mut PerfControl) {
    const ARTIFACTS: usize = 100;
    let (small, large) = (100, 1000);
    let (mut t1, mut t2, mut f1, mut f2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let (register, feed) = measure(rt, small, ARTIFACTS, true, perf);
        t1.push(register + feed);
        f1.push(feed);
        let (register, feed) = measure(rt, large, ARTIFACTS, true, perf);
        t2.push(register + feed);
        f2.push(feed);
    }
    let (t1, t2) = (median(&mut t1), median(&mut t2));
    let (f1, f2) = (median(&mut f1), median(&mut f2));
    println!(
        "scaling coordinator n1={} t1_s={t1:.5} n2={} t2_s={t2:.5} ratio={:.2} feed_ratio={:.2} runs={} (t = register + feed, median)",
        small * ARTIFACTS,
        large * ARTIFACTS,
        t2 / t1,
        f2 / f1,
        runs.max(1)
    );
}

/// The runs of one controller kind.
struct Series {
    label: String,
    immediate: bool,
    rates: Vec<f64>,
    feeds: Vec<f64>,
    regs: Vec<f64>,
}

impl Series {
    fn new(label: String, immediate: bool) -> Self {
        Series {
            label,
            immediate,
            rates: Vec::new(),
            feeds: Vec::new(),
            regs: Vec::new(),
        }
    }
}

// Unused when `benches/downloader_mimalloc.rs` includes this file.
#[allow(dead_code)]
fn main() {
    run("", true);
}

/// The whole bench; `suffix` is appended to the series' labels, and `extras` adds the
/// scaling run and criterion (each still skippable through the environment).
pub fn run(suffix: &str, extras: bool) {
    let runs = env("BENCH_RUNS", 15);
    let jobs = env("BENCH_JOBS", 1000);
    let artifacts = env("BENCH_ARTIFACTS", 100);
    let total = (jobs * artifacts) as f64;
    let rt = runtime();
    let mut perf = PerfControl::from_env();

    // The Go twin (updates made at once) and the async-only controller, alternating.
    let mut series = [
        Series::new(format!("rust-actor{suffix}"), true),
        Series::new(format!("rust-actor-async{suffix}"), false),
    ];
    for _ in 0..runs {
        for s in &mut series {
            let (register, feed) = measure(&rt, jobs, artifacts, s.immediate, &mut perf);
            println!(
                "{} changes_per_s={:.0} jobs={jobs} artifacts={artifacts} feed_s={feed:.4} register_s={register:.4} wall_s={:.4} peak_rss_mib={:.1}",
                s.label,
                total / feed,
                register + feed,
                peak_rss_mib()
            );
            s.rates.push(total / feed);
            s.feeds.push(feed);
            s.regs.push(register);
        }
    }
    for s in &mut series {
        let (min, max) = s
            .rates
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        println!(
            "{} median runs={runs} jobs={jobs} artifacts={artifacts} changes_per_s={:.0} feed_s={:.4} register_s={:.4} peak_rss_mib={:.1} changes_per_s_min={min:.0} changes_per_s_max={max:.0}",
            s.label,
            median(&mut s.rates),
            median(&mut s.feeds),
            median(&mut s.regs),
            peak_rss_mib()
        );
    }

    if !extras {
        return;
    }
    if std::env::var_os("BENCH_SKIP_SCALING").is_none() {
        scaling(&rt, env("BENCH_SCALING_RUNS", 15), &mut perf);
    }

    if std::env::var_os("BENCH_SKIP_CRITERION").is_some() {
        return;
    }
    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let mut group = criterion.benchmark_group("downloader");
    group.throughput(Throughput::Elements(total as u64));
    group.bench_function(format!("ready_changes_{jobs}x{artifacts}"), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    Duration::from_secs_f64(
                        measure(&rt, jobs, artifacts, true, &mut PerfControl::default()).1,
                    )
                })
                .sum()
        })
    });
    group.finish();
    criterion.final_summary();
}
