//! The Store end to end through the Downloader, from a local HTTP server on 127.0.0.1:
//! aggregate MB/s for 16 × 64 MiB, files/s for 5,000 × 4 KiB, and the peak RSS while
//! downloading one 1 GiB artifact. sha256 verification, the index and fsync are all on.
//!
//! The server is nginx when `nginx` is on the PATH (as in `../shared/bench/peers.sh`:
//! one worker, sendfile on), otherwise an in-process tokio server reading the files in
//! 256 KiB chunks (the output says which). Following `../shared/bench/README.md`, the
//! bench idles before every timed run (freed memory goes cold on this VM) and never
//! deletes a store between runs (creating files right after deleting thousands is 7×
//! slower); the stores are removed at the end.
//!
//! The `cache` part (issue 4) times one push of a 256 MiB artifact with its sha256, first
//! downloaded into a fresh store, then answered from the cache for a second job (median
//! of the rounds, and the ratio), and counts the requests that reach a counting in-process
//! server when 20 jobs of the Downloader push the same URI at once (must be 1).
//!
//! Environment: `BENCH_ROUNDS` (default 3), `BENCH_SETS` (default `big many one cache`),
//! `BENCH_DIR` (default `/tmp/ac-bench`), `BENCH_SETTLE_MS` (default 2000),
//! `BENCH_WORKERS` (default 16).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use artifact_coordinator::{
    ArtifactDescription, ArtifactStatus, ArtifactType, BoxError, Config, Downloader, JobId,
    JobStatus, JobsController, Push, Store, Test, TestAction, TestCase, async_trait,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/mod.rs"]
mod common;
use common::{free_port, median, peak_rss_mib};

/// One data set: a directory of files served under `/<name>/`.
struct DataSet {
    name: &'static str,
    count: usize,
    size: usize,
}

/// The artifact of the cache part.
const CACHE_SET: DataSet = DataSet {
    name: "cache",
    count: 1,
    size: 256 << 20,
};

const SETS: [DataSet; 3] = [
    DataSet {
        name: "big",
        count: 16,
        size: 64 << 20,
    },
    DataSet {
        name: "many",
        count: 5000,
        size: 4 << 10,
    },
    DataSet {
        name: "one",
        count: 1,
        size: 1 << 30,
    },
];

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The set's files (made once; see `common::data_set`).
fn prepare(dir: &Path, set: &DataSet) -> Vec<(String, String)> {
    common::data_set(dir, set.name, set.count, set.size)
}

/// The HTTP server the bench downloads from.
enum Server {
    Nginx { child: Child, port: u16 },
    Tokio { port: u16 },
}

impl Server {
    fn port(&self) -> u16 {
        match self {
            Server::Nginx { port, .. } | Server::Tokio { port } => *port,
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Server::Nginx { .. } => "nginx (1 worker, sendfile on) on 127.0.0.1",
            Server::Tokio { .. } => "in-process tokio server on 127.0.0.1 (nginx not found)",
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Nginx { child, .. } = self {
            // SIGTERM lets the master stop its workers (SIGKILL would orphan them).
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

fn start_nginx(dir: &Path) -> Option<Server> {
    let nginx = ["nginx", "/usr/sbin/nginx"].into_iter().find(|n| {
        Command::new(n)
            .arg("-v")
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })?;
    let port = free_port();
    let conf_dir = dir.join("nginx");
    std::fs::create_dir_all(conf_dir.join("tmp")).ok()?;
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n\
         client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
         uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
         server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
        d = conf_dir.display(),
        root = dir.join("data").display(),
    );
    std::fs::write(conf_dir.join("nginx.conf"), conf).ok()?;
    let child = Command::new(nginx)
        .args(["-p", &conf_dir.to_string_lossy(), "-c"])
        .arg(conf_dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Wait until it accepts connections (bounded).
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Server::Nginx { child, port });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A minimal HTTP/1.1 GET file server with keep-alive, for machines without nginx. Counts
/// the requests it reads in `requests`.
async fn start_tokio_server(root: PathBuf, requests: Arc<AtomicUsize>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let root = root.clone();
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let mut buf = Vec::with_capacity(4096);
                let mut chunk = vec![0u8; 256 << 10];
                loop {
                    // Read one request head.
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        let mut tmp = [0u8; 4096];
                        match socket.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    requests.fetch_add(1, Ordering::Relaxed);
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .trim_start_matches('/');
                    let file = root.join(path);
                    let Ok(mut f) = tokio::fs::File::open(&file).await else {
                        let _ = socket
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        continue;
                    };
                    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                    let header = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: none\r\n\r\n"
                    );
                    if socket.write_all(header.as_bytes()).await.is_err() {
                        return;
                    }
                    loop {
                        match f.read(&mut chunk).await {
                            Ok(0) => break,
                            Ok(n) => {
                                if socket.write_all(&chunk[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                }
            });
        }
    });
    Server::Tokio { port }
}

/// A controller that serves one config per job and keeps what is saved.
struct Controller {
    configs: HashMap<JobId, Config>,
    saved: Mutex<HashMap<JobId, Config>>,
}

#[async_trait]
impl JobsController for Controller {
    async fn set_status_and_info(&self, _: JobId, _: JobStatus, _: String) -> Result<(), BoxError> {
        Ok(())
    }
    async fn get_config(&self, job: JobId) -> Result<Config, BoxError> {
        self.configs
            .get(&job)
            .cloned()
            .ok_or_else(|| "no such job".into())
    }
    async fn set_config(&self, job: JobId, config: Config) -> Result<(), BoxError> {
        self.saved
            .lock()
            .map_err(|_| "poisoned")?
            .insert(job, config);
        Ok(())
    }
}

fn job_config(base: &str, set: &DataSet, files: &[(String, String)]) -> Config {
    let mut config = Config::default();
    config.action.test = Test {
        test_cases: vec![TestCase {
            case_name: set.name.into(),
            test_actions: files
                .iter()
                .map(|(name, sha)| {
                    TestAction::Push(Push {
                        uri: format!("{base}/{}/{name}", set.name),
                        alias: name.clone(),
                        sha256: Some(sha.clone()),
                        ..Push::default()
                    })
                })
                .collect(),
        }],
    };
    config
}

/// Downloads one set into a fresh store root; returns seconds.
async fn run_set(
    root: &Path,
    base: &str,
    set: &DataSet,
    files: &[(String, String)],
    workers: usize,
) -> f64 {
    let store = Store::builder()
        .workers(workers)
        .open(root)
        .await
        .expect("open store");
    let job = JobId(1);
    let controller = Arc::new(Controller {
        configs: HashMap::from([(job, job_config(base, set, files))]),
        saved: Mutex::new(HashMap::new()),
    });
    let start = Instant::now();
    let (downloader, mut answers) = Downloader::new(controller.clone(), Arc::new(store.clone()));
    downloader.download(job).await.expect("download");
    let answer = answers.recv().await.expect("answer");
    let secs = start.elapsed().as_secs_f64();
    assert!(answer.ok, "{} failed: {}", set.name, answer.msg);
    downloader.shutdown().await.expect("shutdown");
    store.close().await;
    secs
}

/// Resets the peak RSS counter (Linux: writing 5 to clear_refs).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--test`-like flags: skip quickly.
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let dir = PathBuf::from(env_or("BENCH_DIR", "/tmp/ac-bench"));
    let rounds: usize = env_or("BENCH_ROUNDS", "3").parse().unwrap_or(3);
    let settle = Duration::from_millis(env_or("BENCH_SETTLE_MS", "2000").parse().unwrap_or(2000));
    let workers: usize = env_or("BENCH_WORKERS", "16").parse().unwrap_or(16);
    let wanted = env_or("BENCH_SETS", "big many one cache");
    let sets: Vec<&DataSet> = SETS
        .iter()
        .filter(|s| wanted.split_whitespace().any(|w| w == s.name))
        .collect();

    let prepared: Vec<Vec<(String, String)>> = sets.iter().map(|s| prepare(&dir, s)).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = match start_nginx(&dir) {
        Some(s) => s,
        None => rt.block_on(start_tokio_server(
            dir.join("data"),
            Arc::new(AtomicUsize::new(0)),
        )),
    };
    let base = format!("http://127.0.0.1:{}", server.port());
    println!(
        "# store bench: {} rounds, {workers} workers, sha256 + index + fsync on; server: {}",
        rounds,
        server.describe()
    );

    let stores = dir.join("stores");
    let _ = std::fs::remove_dir_all(&stores);
    let mut results: Vec<(usize, Vec<f64>)> = (0..sets.len()).map(|i| (i, Vec::new())).collect();
    let mut one_rss = None;
    let mut run_id = 0;
    for round in 0..rounds {
        for (i, set) in sets.iter().enumerate() {
            std::thread::sleep(settle);
            run_id += 1;
            let root = stores.join(format!("run-{run_id}"));
            let measure_rss = set.name == "one" && reset_peak_rss();
            let secs = rt.block_on(run_set(&root, &base, set, &prepared[i], workers));
            if measure_rss {
                let rss = peak_rss_mib();
                one_rss = Some(one_rss.map_or(rss, |r: f64| r.max(rss)));
            }
            let bytes = (set.count * set.size) as f64;
            println!(
                "round {} {:<5} {:.3} s  {:.0} MB/s  {:.0} files/s",
                round + 1,
                set.name,
                secs,
                bytes / secs / 1e6,
                set.count as f64 / secs
            );
            results[i].1.push(secs);
        }
    }
    if !results.is_empty() {
        println!("\n| set | files | median s | MB/s | files/s |\n|---|---:|---:|---:|---:|");
    }
    for (i, secs) in &results {
        let set = sets[*i];
        let m = median(&mut secs.clone());
        println!(
            "| {} | {} × {} KiB | {:.3} | {:.0} | {:.0} |",
            set.name,
            set.count,
            set.size >> 10,
            m,
            (set.count * set.size) as f64 / m / 1e6,
            set.count as f64 / m
        );
    }
    if let Some(rss) = one_rss {
        println!(
            "\npeak RSS while downloading the 1 GiB artifact (whole process, server included when in-process): {rss:.1} MiB"
        );
    }
    if wanted.split_whitespace().any(|w| w == "cache") {
        let files = prepare(&dir, &CACHE_SET);
        cache_part(&rt, &base, &stores, &files[0], rounds, settle);
        single_flight_part(&rt, &dir, &stores, &files[0]);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&stores);
}

/// Pushes one artifact of `job` with its sha256 and waits for READY; returns seconds.
async fn push_once(store: &Store, job: u64, uri: &str, sha256: &str) -> f64 {
    let mut description = ArtifactDescription::new(JobId(job), ArtifactType::Image, "img", uri);
    description.sha256 = Some(sha256.to_owned());
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let start = Instant::now();
    let path = store.push(description, tx).await.expect("push");
    loop {
        let change = rx.recv().await.expect("status");
        if change.path == path && change.status.is_terminal() {
            assert_eq!(change.status, ArtifactStatus::Ready, "{change:?}");
            return start.elapsed().as_secs_f64();
        }
    }
}

/// Download vs cache hit of the same 256 MiB push, in a fresh store per round.
fn cache_part(
    rt: &tokio::runtime::Runtime,
    base: &str,
    stores: &Path,
    file: &(String, String),
    rounds: usize,
    settle: Duration,
) {
    let uri = format!("{base}/{}/{}", CACHE_SET.name, file.0);
    let (mut downloads, mut hits) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        std::thread::sleep(settle);
        let root = stores.join(format!("cache-{round}"));
        let (download, hit) = rt.block_on(async {
            let store = Store::open(&root).await.expect("open store");
            let download = push_once(&store, 1, &uri, &file.1).await;
            let hit = push_once(&store, 2, &uri, &file.1).await;
            store.close().await;
            (download, hit)
        });
        println!(
            "round {} cache  download {:.4} s  hit {:.6} s  ({:.0}x)",
            round + 1,
            download,
            hit,
            download / hit
        );
        downloads.push(download);
        hits.push(hit);
    }
    let (d, h) = (median(&mut downloads), median(&mut hits));
    println!(
        "\ncache: 256 MiB push downloaded {d:.4} s, from the cache {h:.6} s: {:.0}x faster (target >= 50x)",
        d / h
    );
}

/// 20 Downloader jobs with the same URI (no digest) at once, against a counting server.
fn single_flight_part(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    stores: &Path,
    file: &(String, String),
) {
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = rt.block_on(async {
        let server = start_tokio_server(dir.join("data"), Arc::clone(&requests)).await;
        let uri = format!(
            "http://127.0.0.1:{}/{}/{}",
            server.port(),
            CACHE_SET.name,
            file.0
        );
        let mut config = Config::default();
        config.action.test = Test {
            test_cases: vec![TestCase {
                case_name: "shared".into(),
                test_actions: vec![TestAction::Push(Push {
                    uri,
                    alias: "rootfs".into(),
                    ..Push::default()
                })],
            }],
        };
        let jobs: Vec<JobId> = (1..=20).map(JobId).collect();
        let controller = Arc::new(Controller {
            configs: jobs.iter().map(|j| (*j, config.clone())).collect(),
            saved: Mutex::new(HashMap::new()),
        });
        let store = Store::open(stores.join("single-flight"))
            .await
            .expect("open store");
        let (downloader, mut answers) = Downloader::new(controller, Arc::new(store.clone()));
        let start = Instant::now();
        for job in &jobs {
            downloader.download(*job).await.expect("download");
        }
        for _ in &jobs {
            let answer = answers.recv().await.expect("answer");
            assert!(answer.ok, "job {} failed: {}", answer.job, answer.msg);
        }
        let secs = start.elapsed().as_secs_f64();
        downloader.shutdown().await.expect("shutdown");
        store.close().await;
        drop(server);
        secs
    });
    println!(
        "single flight: 20 jobs pushing one 256 MiB URI at once: {} request(s) reached the server, all 20 OK in {counted:.3} s (target: 1 request)",
        requests.load(Ordering::Relaxed)
    );
}
