//! The project against the usual download tools, on the same data and the same server:
//! `curl --parallel --parallel-max 8`, `aria2c -j8` and `wget` (sequential, keep-alive),
//! as `../shared/bench/peers.sh` runs them, against the Store + Downloader with sha256
//! verification, the SQLite index and fsync all on (default workers).
//!
//! Data sets (made once, cached in `$BENCH_DIR/data`, shared with `benches/store.rs`):
//! `big` = 16 × 64 MiB, `small` = 5,000 × 4 KiB, `one` = 1 × 1 GiB, pseudo-random bytes.
//! Server: nginx on 127.0.0.1 (its own prefix and config in a temporary directory, a free
//! port, one worker, sendfile on, keep-alive), or, when `nginx` is not installed, an
//! in-process tokio file server in this process (the output says which).
//!
//! Every tool, the project included, runs as a child process and is timed from spawn to
//! exit, so process start-up counts for all alike. The project's side is this binary
//! re-executed with `AC_VS_PEERS_CHILD=1`: its peak RSS (`VmHWM`) is its own, not the
//! bench's (no data generation, no server in it).
//!
//! Method (see `../shared/bench/README.md`): rounds are interleaved (each tool once per
//! set per round, in a rotating order), and before every timed run the previous outputs
//! are put away, `sync` runs and the machine idles `BENCH_SETTLE_MS` (freed memory goes
//! cold on this VM; every run starts in the same state). Outputs of more than 100 files
//! are never deleted between runs (creating files right after deleting thousands is ~7×
//! slower): they are moved aside and deleted at the very end. Outputs of a few large
//! files are deleted before the pause (5 rounds × 4 tools × 2 GiB would not fit on the
//! disk, and deleting 16 files does not cause the slowdown). Every run's output is
//! checked (file count and bytes); the last round also compares the contents.
//!
//! Environment: `BENCH_ROUNDS` (5), `BENCH_SETS` (`big,small,one`; `many` = `small`),
//! `BENCH_TOOLS` (`project,curl,aria2c,wget`), `BENCH_SETTLE_MS` (2000), `BENCH_DIR`
//! (`/tmp/ac-bench`), `BENCH_WORKERS` (the store's default), `BENCH_NO_NGINX=1` (use the
//! in-process server even if nginx is installed), `BENCH_TIMEOUT_S` (120: a run that
//! takes longer is stopped and counted as failed), `BENCH_FSYNC=0` (the project without
//! fsync, to see what durability costs; the header says so; never for the targets).
//!
//! Run: `cargo bench --bench vs_peers` (quick: `BENCH_ROUNDS=1 BENCH_SETS=small,big`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use artifact_coordinator::{
    BoxError, Config, DEFAULT_WORKERS, Downloader, JobId, JobStatus, JobsController, Push, Store,
    Test, TestAction, TestCase, async_trait,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/mod.rs"]
mod common;
use common::{free_port, median, peak_rss_mib, read_manifest};

/// Set in the environment of the re-executed binary that runs the project's side.
const CHILD_ENV: &str = "AC_VS_PEERS_CHILD";

/// One data set: a directory of files served under `/<dir>/`.
struct DataSet {
    /// Name in the table and in `BENCH_SETS`.
    name: &'static str,
    /// Directory under `data/` (the names `benches/store.rs` uses, so the data is shared).
    dir: &'static str,
    count: usize,
    size: usize,
}

impl DataSet {
    fn bytes(&self) -> u64 {
        (self.count * self.size) as u64
    }
    /// Small files are compared in files/s, large ones in MiB/s.
    fn per_file(&self) -> bool {
        self.count > 100
    }
    fn describe(&self) -> String {
        if self.size >= 1 << 30 {
            format!("{} × {} GiB", self.count, self.size >> 30)
        } else if self.size >= 1 << 20 {
            format!("{} × {} MiB", self.count, self.size >> 20)
        } else {
            format!("{} × {} KiB", self.count, self.size >> 10)
        }
    }
}

const SETS: [DataSet; 3] = [
    DataSet {
        name: "big",
        dir: "big",
        count: 16,
        size: 64 << 20,
    },
    DataSet {
        name: "small",
        dir: "many",
        count: 5000,
        size: 4 << 10,
    },
    DataSet {
        name: "one",
        dir: "one",
        count: 1,
        size: 1 << 30,
    },
];

fn set_by_name(name: &str) -> Option<&'static DataSet> {
    let name = match name {
        "many" => "small",
        "1gib" | "huge" => "one",
        n => n,
    };
    SETS.iter().find(|s| s.name == name)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("# {name}={v:?} is not a number; using the default");
            default
        }),
        Err(_) => default,
    }
}

/// Splits a list given as `a,b c`.
fn list(value: &str) -> Vec<String> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Data

/// The set's files (made once; see `common::data_set`).
fn prepare(dir: &Path, set: &DataSet) -> Vec<(String, String)> {
    common::data_set(dir, set.dir, set.count, set.size)
}

/// Reads every file of the set once so that the server serves them from the page cache.
fn warm_sources(set_dir: &Path) {
    let mut buf = vec![0u8; 1 << 20];
    for entry in std::fs::read_dir(set_dir).expect("data dir").flatten() {
        if let Ok(mut f) = std::fs::File::open(entry.path()) {
            while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server

/// The HTTP server every tool downloads from.
enum Server {
    Nginx {
        child: Child,
        port: u16,
    },
    InProcess {
        port: u16,
        _rt: tokio::runtime::Runtime,
    },
}

impl Server {
    fn port(&self) -> u16 {
        match self {
            Server::Nginx { port, .. } | Server::InProcess { port, .. } => *port,
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Server::Nginx { .. } => "nginx (1 worker, sendfile on, keep-alive) on 127.0.0.1",
            Server::InProcess { .. } => {
                "the bench's in-process tokio file server on 127.0.0.1 (nginx not used: \
                 not installed or BENCH_NO_NGINX=1); the peer anchors assume nginx"
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Nginx { child, .. } = self {
            // SIGTERM lets the master stop its worker (SIGKILL would orphan it).
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

/// Starts nginx (not as a daemon, its own prefix, 127.0.0.1 only) serving `root`, with
/// its files in `conf_dir`. `None` when nginx is not installed or does not come up.
fn start_nginx(conf_dir: &Path, root: &Path) -> Option<Server> {
    let nginx = ["nginx", "/usr/sbin/nginx"].into_iter().find(|n| {
        Command::new(n)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })?;
    let port = free_port();
    std::fs::create_dir_all(conf_dir.join("tmp")).ok()?;
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;\n\
         keepalive_requests 100000; keepalive_timeout 60;\n\
         default_type application/octet-stream;\n\
         client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
         uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
         server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
        d = conf_dir.display(),
        root = root.display(),
    );
    std::fs::write(conf_dir.join("nginx.conf"), conf).ok()?;
    let mut child = Command::new(nginx)
        .arg("-p")
        .arg(conf_dir)
        .arg("-e")
        .arg(conf_dir.join("error.log"))
        .arg("-c")
        .arg(conf_dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(Server::Nginx { child, port });
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(conf_dir.join("error.log")).unwrap_or_default();
            eprintln!("# nginx exited ({status}): {}", log.trim());
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    None
}

/// A minimal HTTP/1.1 GET file server with keep-alive on its own runtime in this process,
/// for machines without nginx (the same as `benches/store.rs`).
fn start_in_process_server(root: PathBuf) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    rt.spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            let root = root.clone();
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let mut buf = Vec::with_capacity(4096);
                let mut chunk = vec![0u8; 256 << 10];
                loop {
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
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .trim_start_matches('/');
                    if path.split('/').any(|c| c == "..") {
                        return;
                    }
                    let Ok(mut f) = tokio::fs::File::open(root.join(path)).await else {
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
    Server::InProcess { port, _rt: rt }
}

// ---------------------------------------------------------------------------------------
// The project's side (child process)

/// A controller that serves one config and keeps what is saved, and when.
struct Controller {
    config: Config,
    saved: Mutex<Option<(Config, Instant)>>,
}

#[async_trait]
impl JobsController for Controller {
    async fn set_status_and_info(&self, _: JobId, _: JobStatus, _: String) -> Result<(), BoxError> {
        Ok(())
    }
    async fn get_config(&self, _: JobId) -> Result<Config, BoxError> {
        Ok(self.config.clone())
    }
    async fn set_config(&self, _: JobId, config: Config) -> Result<(), BoxError> {
        // The Downloader saves the config once every artifact is registered (pushes
        // are sequential): the time of this call ends the registration phase.
        *self.saved.lock().map_err(|_| "poisoned")? = Some((config, Instant::now()));
        Ok(())
    }
}

/// One job pushing every file of the set, each with its expected sha256.
fn job_config(base: &str, set: &DataSet, files: &[(String, String)]) -> Config {
    let mut config = Config::default();
    config.action.test = Test {
        test_cases: vec![TestCase {
            case_name: set.name.into(),
            test_actions: files
                .iter()
                .map(|(name, sha)| {
                    TestAction::Push(Push {
                        uri: format!("{base}/{}/{name}", set.dir),
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

/// The re-executed binary: downloads one set into a new store through the Downloader and
/// prints `download_s=<s> registered_s=<s> hwm_kib=<VmHWM> workers=<n>` on stdout
/// (`registered_s`: when the Downloader had registered every artifact and saved the config).
fn child_main() {
    let need = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("child: {k} not set"));
    let set = set_by_name(&need("AC_VS_PEERS_SET")).expect("child: unknown set");
    let dir = PathBuf::from(need("AC_VS_PEERS_DIR"));
    let root = PathBuf::from(need("AC_VS_PEERS_ROOT"));
    let base = need("AC_VS_PEERS_BASE");
    let workers: usize = env_num("BENCH_WORKERS", DEFAULT_WORKERS);
    let files = read_manifest(
        &dir.join("data").join(format!("{}.sha256", set.dir)),
        set.count,
    )
    .expect("child: manifest");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let secs = rt.block_on(async {
        let store = Store::builder()
            .workers(workers)
            .fsync(std::env::var("BENCH_FSYNC").map_or(true, |v| v != "0"))
            .open(&root)
            .await
            .expect("open store");
        let job = JobId(1);
        let controller = Arc::new(Controller {
            config: job_config(&base, set, &files),
            saved: Mutex::new(None),
        });
        let start = Instant::now();
        let (downloader, mut answers) =
            Downloader::new(controller.clone(), Arc::new(store.clone()));
        downloader.download(job).await.expect("download");
        let answer = answers.recv().await.expect("answer");
        let secs = start.elapsed().as_secs_f64();
        assert!(answer.ok, "{} failed: {}", set.name, answer.msg);
        downloader.shutdown().await.expect("shutdown");
        store.close().await;
        let registered = controller
            .saved
            .lock()
            .ok()
            .and_then(|s| {
                s.as_ref()
                    .map(|(_, at)| at.duration_since(start).as_secs_f64())
            })
            .unwrap_or(f64::NAN);
        (secs, registered)
    });
    // VmHWM of this process: the project's side only (no data generation, no server).
    let hwm_kib = (peak_rss_mib() * 1024.0).round() as i64;
    println!(
        "download_s={:.6} registered_s={:.6} hwm_kib={hwm_kib} workers={workers}",
        secs.0, secs.1
    );
}

// ---------------------------------------------------------------------------------------
// Tools

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Project,
    Curl,
    Aria2c,
    Wget,
}

impl Tool {
    const ALL: [Tool; 4] = [Tool::Project, Tool::Curl, Tool::Aria2c, Tool::Wget];

    fn key(self) -> &'static str {
        match self {
            Tool::Project => "project",
            Tool::Curl => "curl",
            Tool::Aria2c => "aria2c",
            Tool::Wget => "wget",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Tool::Project => "project (Store + Downloader)",
            Tool::Curl => "curl --parallel --parallel-max 8",
            Tool::Aria2c => "aria2c -j8 -x1",
            Tool::Wget => "wget (sequential)",
        }
    }

    /// The program, when this tool is an external one.
    fn program(self) -> Option<&'static str> {
        match self {
            Tool::Project => None,
            Tool::Curl => Some("curl"),
            Tool::Aria2c => Some("aria2c"),
            Tool::Wget => Some("wget"),
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Tool::Aria2c => "apt-get install -y aria2",
            Tool::Curl => "apt-get install -y curl",
            Tool::Wget => "apt-get install -y wget",
            Tool::Project => "",
        }
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            std::fs::metadata(d.join(program)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// Everything a run needs to know.
struct Bench {
    dir: PathBuf,
    work: PathBuf,
    base: String,
    settle: Duration,
    /// A run that takes longer is stopped and counted as failed.
    timeout: Duration,
    time_bin: Option<PathBuf>,
}

/// One timed run.
struct Run {
    wall: f64,
    /// user + sys of the tool (from `/usr/bin/time`), if available.
    cpu: Option<f64>,
    /// Peak RSS in KiB (the project: its own VmHWM; peers: `/usr/bin/time`).
    rss_kib: Option<u64>,
    /// The project's own download time (Downloader call to answer).
    inner: Option<f64>,
}

impl Bench {
    fn urls_file(&self, set: &DataSet) -> PathBuf {
        self.work.join(format!("{}.urls", set.name))
    }
    fn curl_cfg(&self, set: &DataSet) -> PathBuf {
        self.work.join(format!("{}.curlcfg", set.name))
    }

    fn write_url_lists(&self, set: &DataSet, files: &[(String, String)]) {
        let urls: String = files
            .iter()
            .map(|(n, _)| format!("{}/{}/{n}\n", self.base, set.dir))
            .collect();
        let cfg: String = files
            .iter()
            .map(|(n, _)| format!("url = \"{}/{}/{n}\"\n", self.base, set.dir))
            .collect();
        std::fs::write(self.urls_file(set), urls).expect("urls");
        std::fs::write(self.curl_cfg(set), cfg).expect("curl config");
    }

    /// The command for `tool` downloading `set` into `dest` (the project: a store root).
    fn command(&self, tool: Tool, set: &DataSet, dest: &Path) -> Command {
        let c = match tool {
            Tool::Project => {
                let mut c = Command::new(std::env::current_exe().expect("current exe"));
                c.env(CHILD_ENV, "1")
                    .env("AC_VS_PEERS_SET", set.name)
                    .env("AC_VS_PEERS_DIR", &self.dir)
                    .env("AC_VS_PEERS_ROOT", dest)
                    .env("AC_VS_PEERS_BASE", &self.base);
                c
            }
            Tool::Curl => {
                let mut c = Command::new("curl");
                c.args(["-sS", "--fail", "--parallel", "--parallel-max", "8"])
                    .args(["--remote-name-all", "--output-dir"])
                    .arg(dest)
                    .arg("-K")
                    .arg(self.curl_cfg(set));
                c
            }
            Tool::Aria2c => {
                let mut c = Command::new("aria2c");
                c.args(["-q", "-j", "8", "-x", "1", "--allow-overwrite=true"])
                    .args(["--auto-file-renaming=false", "-d"])
                    .arg(dest)
                    .arg("-i")
                    .arg(self.urls_file(set));
                c
            }
            Tool::Wget => {
                let mut c = Command::new("wget");
                c.args(["-q", "-P"])
                    .arg(dest)
                    .arg("-i")
                    .arg(self.urls_file(set));
                c
            }
        };
        if let Some(time) = &self.time_bin {
            let inner = c;
            let mut c = Command::new(time);
            c.args(["-f", "%U %S %M", "-o"])
                .arg(self.work.join("time.out"))
                .arg(inner.get_program())
                .args(inner.get_args());
            for (k, v) in inner.get_envs() {
                if let Some(v) = v {
                    c.env(k, v);
                }
            }
            return c;
        }
        c
    }

    /// Settles, runs `tool` once on `set` into the new directory `dest` and times it.
    fn run(&self, tool: Tool, set: &DataSet, dest: &Path) -> Result<Run, String> {
        std::fs::create_dir_all(dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
        let _ = std::fs::remove_file(self.work.join("time.out"));
        let mut cmd = self.command(tool, set, dest);
        let (out_path, err_path) = (self.work.join("run.out"), self.work.join("run.err"));
        let file = |p: &Path| std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()));
        cmd.stdin(Stdio::null())
            .stdout(file(&out_path)?)
            .stderr(file(&err_path)?);
        // Its own process group, so that a timeout stops the tool under /usr/bin/time too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let _ = Command::new("sync").status();
        std::thread::sleep(self.settle);
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > self.timeout => {
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{}", child.id())])
                        .status();
                    let _ = child.wait();
                    return Err(format!(
                        "timed out after {} s (BENCH_TIMEOUT_S)",
                        self.timeout.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(format!("wait: {e}")),
            }
        };
        let wall = start.elapsed().as_secs_f64();
        if !status.success() {
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            return Err(format!(
                "exit {status}: {}",
                err.chars().take(400).collect::<String>()
            ));
        }
        let (cpu, mut rss_kib) = std::fs::read_to_string(self.work.join("time.out"))
            .ok()
            .and_then(|t| {
                let v: Vec<f64> = t
                    .lines()
                    .last()?
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                (v.len() == 3).then(|| (Some(v[0] + v[1]), Some(v[2] as u64)))
            })
            .unwrap_or((None, None));
        let mut inner = None;
        if tool == Tool::Project {
            let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
            for kv in stdout.split_whitespace() {
                match kv.split_once('=') {
                    Some(("download_s", v)) => inner = v.parse().ok(),
                    Some(("hwm_kib", v)) => rss_kib = v.parse().ok(),
                    _ => {}
                }
            }
        }
        Ok(Run {
            wall,
            cpu,
            rss_kib,
            inner,
        })
    }
}

/// Where a tool's files end up under its run directory.
fn output_dir(tool: Tool, dest: &Path) -> PathBuf {
    match tool {
        Tool::Project => dest.join("jobs").join("1").join("test"),
        _ => dest.to_owned(),
    }
}

/// Checks the downloaded files: count and bytes, and with `contents` every byte.
fn check_output(
    out: &Path,
    src: &Path,
    set: &DataSet,
    files: &[(String, String)],
    contents: bool,
) -> Result<(), String> {
    let mut count = 0usize;
    let mut bytes = 0u64;
    for entry in std::fs::read_dir(out).map_err(|e| format!("{}: {e}", out.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let meta = entry.metadata().map_err(|e| e.to_string())?;
        if meta.is_file() {
            count += 1;
            bytes += meta.len();
        }
    }
    if count != set.count || bytes != set.bytes() {
        return Err(format!(
            "{} files / {bytes} bytes in {}, want {} / {}",
            count,
            out.display(),
            set.count,
            set.bytes()
        ));
    }
    if contents {
        let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        for (name, _) in files {
            let mut fa = std::fs::File::open(src.join(name)).map_err(|e| e.to_string())?;
            let mut fb = std::fs::File::open(out.join(name))
                .map_err(|e| format!("{}: {e}", out.join(name).display()))?;
            loop {
                let n = read_full(&mut fa, &mut a).map_err(|e| e.to_string())?;
                let m = read_full(&mut fb, &mut b).map_err(|e| e.to_string())?;
                if n != m || a[..n] != b[..m] {
                    return Err(format!(
                        "{} differs from the source",
                        out.join(name).display()
                    ));
                }
                if n == 0 {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Puts a finished run's directory away: deleted now when it holds few files (before the
/// settle pause), moved to `trash` (deleted at the end) when it holds many.
fn discard(dest: &Path, set: &DataSet, trash: &Path) {
    if set.per_file() {
        let _ = std::fs::create_dir_all(trash);
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if std::fs::rename(dest, trash.join(name)).is_ok() {
            return;
        }
    }
    let _ = std::fs::remove_dir_all(dest);
}

// ---------------------------------------------------------------------------------------
// Report

struct Row {
    set: &'static DataSet,
    tool: Tool,
    runs: Vec<Run>,
    failed: usize,
}

fn fmt_rate(set: &DataSet, secs: f64) -> String {
    if set.per_file() {
        format!("{:.0} files/s", set.count as f64 / secs)
    } else {
        format!("{:.0} MiB/s", set.bytes() as f64 / secs / (1 << 20) as f64)
    }
}

fn fmt_thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_table(rows: &[Row], rounds: usize, server: &str, workers: usize) {
    println!();
    println!(
        "## vs_peers: {rounds} interleaved rounds, median wall time of each command (process start to exit)"
    );
    println!();
    println!(
        "server: {server}; project: Store + Downloader, {workers} workers, sha256 given and \
         verified, SQLite index, {}; curl, wget: no verification, no fsync, \
         no index; aria2c: fsyncs each file (and its .aria2 control file, which it deletes), no \
         verification, no directory fsync, no index.",
        if std::env::var("BENCH_FSYNC").is_ok_and(|v| v == "0") {
            "**fsync OFF (BENCH_FSYNC=0)**"
        } else {
            "fsync of file and directory"
        }
    );
    println!(
        "ratio = tool median s / project median s: **above 1.00 the project is faster**, below 1.00 the tool is."
    );
    println!();
    println!(
        "| data set | tool | median s | min-max s | rate | ratio tool/project | cpu s | peak RSS MiB | ok |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let total = row.runs.len() + row.failed;
        let ok = format!("{}/{}", row.runs.len(), total);
        if row.runs.is_empty() {
            println!(
                "| {} ({}) | {} | FAILED | | | | | | {ok} |",
                row.set.name,
                row.set.describe(),
                row.tool.label()
            );
            continue;
        }
        let mut walls: Vec<f64> = row.runs.iter().map(|r| r.wall).collect();
        let m = median(&mut walls);
        let (lo, hi) = (walls[0], walls[walls.len() - 1]);
        let project = rows
            .iter()
            .find(|r| std::ptr::eq(r.set, row.set) && r.tool == Tool::Project)
            .filter(|r| !r.runs.is_empty())
            .map(|r| median(&mut r.runs.iter().map(|x| x.wall).collect::<Vec<_>>()));
        let ratio = project.map_or("–".to_owned(), |p| format!("{:.2}", m / p));
        let mut cpus: Vec<f64> = row.runs.iter().filter_map(|r| r.cpu).collect();
        let cpu = if cpus.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.2}", median(&mut cpus))
        };
        let mut rss: Vec<f64> = row
            .runs
            .iter()
            .filter_map(|r| r.rss_kib)
            .map(|k| k as f64 / 1024.0)
            .collect();
        let rss = if rss.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.1}", median(&mut rss))
        };
        let rate = if row.set.per_file() {
            format!("{} files/s", fmt_thousands(row.set.count as f64 / m))
        } else {
            fmt_rate(row.set, m)
        };
        println!(
            "| {} ({}) | {} | {m:.3} | {lo:.2}-{hi:.2} | {rate} | {ratio} | {cpu} | {rss} | {ok} |",
            row.set.name,
            row.set.describe(),
            row.tool.label()
        );
    }
}

/// The targets, checked against this run's medians: big set at least curl's
/// throughput, small set at least curl's and 5× aria2c's files/s, peak RSS for the
/// 1 GiB file at most 64 MiB.
fn print_targets(rows: &[Row]) {
    let med = |set: &str, tool: Tool| {
        rows.iter()
            .find(|r| r.set.name == set && r.tool == tool && !r.runs.is_empty())
            .map(|r| median(&mut r.runs.iter().map(|x| x.wall).collect::<Vec<_>>()))
    };
    let mut lines = Vec::new();
    let mut speed = |set: &str, tool: Tool, want: f64| {
        if let (Some(p), Some(t)) = (med(set, Tool::Project), med(set, tool)) {
            let got = t / p;
            lines.push(format!(
                "{set}: project {got:.2}× {} (target ≥ {want:.1}×): {}",
                tool.key(),
                if got >= want { "met" } else { "NOT met" }
            ));
        }
    };
    speed("big", Tool::Curl, 1.0);
    speed("small", Tool::Curl, 1.0);
    speed("small", Tool::Aria2c, 5.0);
    if let Some(row) = rows
        .iter()
        .find(|r| r.set.name == "one" && r.tool == Tool::Project && !r.runs.is_empty())
    {
        let max = row
            .runs
            .iter()
            .filter_map(|r| r.rss_kib)
            .map(|k| k as f64 / 1024.0)
            .fold(0.0, f64::max);
        lines.push(format!(
            "one: project peak RSS {max:.1} MiB (target ≤ 64 MiB): {}",
            if max <= 64.0 { "met" } else { "NOT met" }
        ));
    }
    if !lines.is_empty() {
        println!("\ntargets (issue 6, same-run medians):");
        for l in lines {
            println!("- {l}");
        }
    }
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        child_main();
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: skip quickly then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("vs_peers: not in bench mode (run `cargo bench --bench vs_peers`); skipping");
        return;
    }
    let dir = PathBuf::from(env_or("BENCH_DIR", "/tmp/ac-bench"));
    let rounds: usize = env_num("BENCH_ROUNDS", 5usize).max(1);
    let settle = Duration::from_millis(env_num("BENCH_SETTLE_MS", 2000u64));
    let workers: usize = env_num("BENCH_WORKERS", DEFAULT_WORKERS);
    let mut sets: Vec<&'static DataSet> = Vec::new();
    for name in list(&env_or("BENCH_SETS", "big,small,one")) {
        match set_by_name(&name) {
            Some(s) if !sets.iter().any(|x| std::ptr::eq(*x, s)) => sets.push(s),
            Some(_) => {}
            None => eprintln!("# BENCH_SETS: unknown set {name:?} (big, small, one); ignored"),
        }
    }
    let mut tools: Vec<Tool> = Vec::new();
    for name in list(&env_or("BENCH_TOOLS", "project,curl,aria2c,wget")) {
        let Some(tool) = Tool::ALL.into_iter().find(|t| t.key() == name) else {
            eprintln!(
                "# BENCH_TOOLS: unknown tool {name:?} (project, curl, aria2c, wget); ignored"
            );
            continue;
        };
        if let Some(p) = tool.program()
            && !on_path(p)
        {
            println!(
                "# skipping {}: `{p}` is not on the PATH (install: {})",
                tool.label(),
                tool.install_hint()
            );
            continue;
        }
        if !tools.contains(&tool) {
            tools.push(tool);
        }
    }
    if sets.is_empty() || tools.is_empty() {
        println!("vs_peers: nothing to run (BENCH_SETS / BENCH_TOOLS)");
        return;
    }

    let prepared: Vec<Vec<(String, String)>> = sets.iter().map(|s| prepare(&dir, s)).collect();
    for s in &sets {
        warm_sources(&dir.join("data").join(s.dir));
    }
    let work = tempfile::Builder::new()
        .prefix("vs-peers-")
        .tempdir_in(&dir)
        .expect("work dir");
    let want_nginx = std::env::var_os("BENCH_NO_NGINX").is_none_or(|v| v.is_empty() || v == "0");
    let server = match want_nginx
        .then(|| start_nginx(&work.path().join("nginx"), &dir.join("data")))
        .flatten()
    {
        Some(s) => s,
        None => {
            if want_nginx {
                println!(
                    "# nginx not found or not starting (apt-get install -y nginx-light): \
                     falling back to the in-process test server"
                );
            }
            start_in_process_server(dir.join("data"))
        }
    };
    let time_bin = Path::new("/usr/bin/time");
    let bench = Bench {
        dir: dir.clone(),
        work: work.path().to_owned(),
        base: format!("http://127.0.0.1:{}", server.port()),
        settle,
        timeout: Duration::from_secs(env_num("BENCH_TIMEOUT_S", 120u64).max(1)),
        time_bin: time_bin.exists().then(|| time_bin.to_owned()),
    };
    if bench.time_bin.is_none() {
        println!("# /usr/bin/time not found (apt-get install -y time): no cpu s, no peer RSS");
    }
    for (set, files) in sets.iter().zip(&prepared) {
        bench.write_url_lists(set, files);
    }
    let runs_total = rounds * sets.len() * tools.len();
    println!(
        "# vs_peers: {rounds} rounds × {} sets × {} tools = {runs_total} timed runs, {} ms settle each; \
         server: {}; work dir {}",
        sets.len(),
        tools.len(),
        settle.as_millis(),
        server.describe(),
        work.path().display()
    );

    let out_root = work.path().join("out");
    let trash = work.path().join("trash");
    let mut rows: Vec<Row> = Vec::new();
    for set in &sets {
        for tool in &tools {
            rows.push(Row {
                set,
                tool: *tool,
                runs: Vec::new(),
                failed: 0,
            });
        }
    }
    let started = Instant::now();
    let mut run_id = 0usize;
    let mut previous: Option<(PathBuf, &'static DataSet)> = None;
    for round in 0..rounds {
        for (si, set) in sets.iter().enumerate() {
            let src = dir.join("data").join(set.dir);
            for k in 0..tools.len() {
                // Rotate the order every round so no tool always runs first or after the same one.
                let tool = tools[(k + round) % tools.len()];
                if let Some((d, s)) = previous.take() {
                    discard(&d, s, &trash);
                }
                run_id += 1;
                let dest = out_root.join(format!("{run_id:03}-{}-{}", set.name, tool.key()));
                let result = bench.run(tool, set, &dest).and_then(|run| {
                    check_output(
                        &output_dir(tool, &dest),
                        &src,
                        set,
                        &prepared[si],
                        round + 1 == rounds,
                    )
                    .map(|()| run)
                });
                let row = rows
                    .iter_mut()
                    .find(|r| std::ptr::eq(r.set, *set) && r.tool == tool)
                    .expect("row");
                match result {
                    Ok(run) => {
                        let extra = match (run.inner, run.rss_kib) {
                            (Some(i), Some(k)) if tool == Tool::Project => {
                                format!("  (download {i:.3} s, VmHWM {:.1} MiB)", k as f64 / 1024.0)
                            }
                            _ => String::new(),
                        };
                        println!(
                            "round {} {:<5} {:<33} {:>7.3} s  {:>16}{extra}",
                            round + 1,
                            set.name,
                            tool.label(),
                            run.wall,
                            fmt_rate(set, run.wall)
                        );
                        row.runs.push(run);
                    }
                    Err(e) => {
                        println!(
                            "round {} {:<5} {:<33} FAILED: {e}",
                            round + 1,
                            set.name,
                            tool.label()
                        );
                        row.failed += 1;
                    }
                }
                previous = Some((dest, set));
            }
        }
    }
    if let Some((d, s)) = previous.take() {
        discard(&d, s, &trash);
    }
    let elapsed = started.elapsed().as_secs_f64();

    print_table(&rows, rounds, server.describe(), workers);
    if let Some(row) = rows
        .iter()
        .find(|r| r.set.name == "one" && r.tool == Tool::Project && !r.runs.is_empty())
    {
        let mut rss: Vec<f64> = row
            .runs
            .iter()
            .filter_map(|r| r.rss_kib)
            .map(|k| k as f64 / 1024.0)
            .collect();
        let max = rss.iter().copied().fold(0.0, f64::max);
        println!(
            "\nproject peak RSS (VmHWM of the project's own process) while downloading the 1 GiB \
             file: median {:.1} MiB, max {max:.1} MiB over {} runs",
            median(&mut rss),
            rss.len()
        );
    }
    let mut inner_lines = Vec::new();
    for row in rows.iter().filter(|r| r.tool == Tool::Project) {
        let mut inner: Vec<f64> = row.runs.iter().filter_map(|r| r.inner).collect();
        if !inner.is_empty() {
            let m = median(&mut inner);
            inner_lines.push(format!(
                "{} {:.3} s ({})",
                row.set.name,
                m,
                fmt_rate(row.set, m)
            ));
        }
    }
    if !inner_lines.is_empty() {
        println!(
            "project's own download time (Downloader call to answer, without process start and \
             store open), median: {}",
            inner_lines.join(", ")
        );
    }
    print_targets(&rows);
    let weles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/weles_core/run.sh");
    if weles.exists() {
        println!(
            "coordinator vs Go (Weles core, {}): run `bash benches/coordinator_vs_go.sh`; \
             not part of this table",
            weles.display()
        );
    }
    println!("# {runs_total} runs in {elapsed:.0} s");
    drop(server);
    let _ = std::fs::remove_dir_all(&out_root);
    let _ = std::fs::remove_dir_all(&trash);
}
