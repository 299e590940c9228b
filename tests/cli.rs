//! The command line as a user meets it: the `download` example run as a process against an
//! HTTP server on 127.0.0.1 (exit codes 0, 1, 2 and 130, its JSON lines, its progress and
//! summary), and the `demo` example run to the end, offline.
//!
//! The example binaries are built once per test run with the same profile and features as
//! this test (a no-op when `cargo test` has already built them, which it does by default).

#[path = "../examples/common/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use server::Server;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::process::Command;

/// Longest a run of an example may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Path of the built example `name`, building both examples first (once per test run).
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT
        .get_or_init(build_examples)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"));
    dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Builds the examples next to this test binary (`<target>/<profile>/deps/cli-…`): same
/// target directory, profile and features, so cargo finds them fresh when `cargo test`
/// built them already. Returns the `examples` directory.
fn build_examples() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?;
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("no target directory above {}", profile_dir.display()))?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "--example",
            "download",
            "--example",
            "demo",
        ])
        .args(["--profile", profile])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", target_dir);
    if cfg!(feature = "mock") {
        cargo.args(["--features", "mock"]);
    }
    let output = cargo
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the examples failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(profile_dir.join("examples"))
}

/// Runs `download` with `args` (in `cwd`) and waits for it, with a timeout.
async fn download(cwd: &Path, args: &[&str]) -> Output {
    let child = Command::new(example("download"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the download example");
    tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("download did not finish in time")
        .expect("wait for download")
}

/// `n` deterministic pseudo-random bytes.
fn body(n: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A temporary directory with `files/` (served by a [`Server`]) and room for job files and
/// a store.
struct Fixture {
    dir: TempDir,
    server: Server,
}

impl Fixture {
    async fn new(files: &[(&str, &[u8])]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let served = dir.path().join("files");
        std::fs::create_dir(&served).expect("files dir");
        for (name, bytes) in files {
            std::fs::write(served.join(name), bytes).expect("write served file");
        }
        let server = Server::start(served).await.expect("start the server");
        Fixture { dir, server }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a job file and returns its name (relative to the fixture's directory).
    fn job(&self, name: &str, json: &str) -> String {
        std::fs::write(self.path().join(name), json).expect("write job file");
        name.to_owned()
    }

    fn store(&self) -> PathBuf {
        self.path().join("store")
    }
}

/// The JSON lines of `--json` output.
fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect()
}

/// Every file under `dir` whose name ends with `.part` (the store's temporary files).
fn part_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".part") {
                found.push(path);
            }
        }
    }
    found
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Two jobs run to OK: exit 0, one JSON line per job, and the paths in each saved config
/// hold exactly what the server served (an image with an expected SHA-256, an image
/// verified against an md5sum file, a pushed script); `--quiet` keeps stderr empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_paths_to_verified_files() {
    let rootfs = body(300_000, 1);
    let boot = body(120_000, 2);
    let script = b"#!/bin/sh\necho ok\n".to_vec();
    let boot_md5 = format!("{}  boot.img\n", hex::encode(md5::Md5::digest(&boot)));
    let fx = Fixture::new(&[
        ("rootfs.img", &rootfs),
        ("boot.img", &boot),
        ("boot.img.md5", boot_md5.as_bytes()),
        ("run.sh", &script),
    ])
    .await;
    let a = fx.job(
        "a.json",
        &serde_json::json!({
            "job_name": "a",
            "action": {
                "deploy": { "images": [ { "uri": fx.server.url("rootfs.img"), "sha256": sha256_hex(&rootfs) } ] },
                "test": { "test_cases": [ { "case_name": "smoke", "test_actions": [
                    { "push": { "uri": fx.server.url("run.sh"), "dest": "/tmp/run.sh", "alias": "run.sh" } },
                    { "run": { "name": "sh /tmp/run.sh" } },
                    { "pull": { "src": "/tmp/out.log", "alias": "out.log" } },
                ] } ] },
            },
        })
        .to_string(),
    );
    let b = fx.job(
        "b.json",
        &serde_json::json!({
            "action": { "deploy": { "images": [ {
                "uri": fx.server.url("boot.img"),
                "checksum_uri": fx.server.url("boot.img.md5"),
                "checksum_type": "md5",
            } ] } },
        })
        .to_string(),
    );
    let store = fx.store();
    let store = store.to_str().unwrap();

    let output = download(
        fx.path(),
        &[
            "--store",
            store,
            "--concurrency",
            "4",
            "--json",
            "--quiet",
            &a,
            &b,
        ],
    )
    .await;

    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert_eq!(stderr(&output), "", "--quiet shows nothing on stderr");
    let mut lines = json_lines(&output);
    assert_eq!(lines.len(), 2, "one line per job");
    lines.sort_by_key(|line| line["job"].as_u64());
    let [first, second] = &lines[..] else {
        unreachable!()
    };
    for (line, job, file) in [(first, 1, "a.json"), (second, 2, "b.json")] {
        assert_eq!(line["job"], job);
        assert_eq!(line["file"], file);
        assert_eq!(line["ok"], true, "{line}");
        assert_eq!(line["msg"], "");
    }
    let image_a = &first["config"]["action"]["deploy"]["images"][0];
    let actions = &first["config"]["action"]["test"]["test_cases"][0]["test_actions"];
    let image_b = &second["config"]["action"]["deploy"]["images"][0];
    let expect = [
        (&image_a["path"], &rootfs),
        (&actions[0]["push"]["path"], &script),
        (&image_b["path"], &boot),
        (&image_b["checksum_path"], &boot_md5.clone().into_bytes()),
    ];
    for (path, served) in expect {
        let path = path.as_str().unwrap_or_else(|| panic!("no path in {path}"));
        let path = fx.path().join(path);
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            sha256_hex(&on_disk),
            sha256_hex(served),
            "{}",
            path.display()
        );
    }
    let pull = actions[2]["pull"]["path"]
        .as_str()
        .expect("pull path filled");
    assert!(
        fx.path().join(pull).parent().unwrap().is_dir(),
        "the pull artifact's directory exists"
    );
    assert_eq!(part_files(&fx.store()), Vec::<PathBuf>::new());
}

/// A URL that 404s fails its job: exit 1, `ok: false` with a message naming the artifact
/// and the status, while the other job is still OK; a 404 is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_fails_its_job_and_exits_1() {
    let good = body(50_000, 3);
    let fx = Fixture::new(&[("good.img", &good)]).await;
    let bad = fx.job(
        "bad.json",
        &format!(
            r#"{{"action": {{"deploy": {{"images": [{{"uri": "{}"}}, {{"uri": "{}"}}]}}}}}}"#,
            fx.server.url("good.img"),
            fx.server.url("missing.img")
        ),
    );
    let ok = fx.job(
        "ok.json",
        &format!(
            r#"{{"action": {{"deploy": {{"images": [{{"uri": "{}"}}]}}}}}}"#,
            fx.server.url("good.img")
        ),
    );
    let store = fx.store();

    let output = download(
        fx.path(),
        &["--store", store.to_str().unwrap(), "--json", &bad, &ok],
    )
    .await;

    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2);
    let failed = lines
        .iter()
        .find(|l| l["job"] == 1)
        .expect("job 1 answered");
    assert_eq!(failed["file"], "bad.json");
    assert_eq!(failed["ok"], false);
    let msg = failed["msg"].as_str().unwrap();
    assert!(
        msg.contains("Image_1") && msg.contains("404"),
        "msg names the artifact and the failure: {msg}"
    );
    let fine = lines
        .iter()
        .find(|l| l["job"] == 2)
        .expect("job 2 answered");
    assert_eq!(fine["ok"], true, "{fine}");
    assert_eq!(fx.server.requests("missing.img"), 1, "a 404 is not retried");
    let err = stderr(&output);
    assert!(
        err.contains("FAIL") && err.contains("404"),
        "a failure line with its reason on stderr: {err}"
    );
    assert_eq!(part_files(&store), Vec::<PathBuf>::new());
}

/// Without `--json` and with stderr not a terminal: plain progress lines on stderr and a
/// summary on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_progress_and_summary_without_a_terminal() {
    let image = body(80_000, 4);
    let fx = Fixture::new(&[("image.img", &image)]).await;
    let job = fx.job(
        "job.json",
        &format!(
            r#"{{"action": {{"deploy": {{"images": [{{"uri": "{}"}}]}}}}}}"#,
            fx.server.url("image.img")
        ),
    );
    let store = fx.store();

    let output = download(fx.path(), &["--store", store.to_str().unwrap(), &job]).await;

    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("job 1 job.json: 1 / 1 artifacts ready"),
        "{err}"
    );
    assert!(err.contains("job 1 job.json: OK"), "{err}");
    assert!(!err.contains('\u{1b}'), "no terminal escapes: {err:?}");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("job.json"), "{out}");
    assert!(out.trim_end().ends_with("1 job: 1 OK, 0 failed"), "{out}");
}

/// A job file that does not parse, one with an unknown field and one that does not exist:
/// exit 2 before anything is downloaded, each named with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_or_malformed_job_files_exit_2() {
    let fx = Fixture::new(&[]).await;
    let syntax = fx.job("syntax.json", "{\n  \"action\": {\n    \"deploy\": ]\n}\n");
    let unknown = fx.job("unknown.json", r#"{"action": {"deploy": {"imagez": []}}}"#);
    let store = fx.store();

    let output = download(
        fx.path(),
        &[
            "--store",
            store.to_str().unwrap(),
            &syntax,
            &unknown,
            "missing.json",
        ],
    )
    .await;

    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("syntax.json") && err.contains("line 3"),
        "names the file and the line: {err}"
    );
    assert!(
        err.contains("unknown.json") && err.contains("imagez"),
        "names the file and the field: {err}"
    );
    assert!(
        err.contains("missing.json"),
        "names the missing file: {err}"
    );
    assert!(output.stdout.is_empty());
    assert!(
        !store.exists(),
        "nothing is downloaded when a job file is bad"
    );
}

/// Bad usage exits 2: an unknown flag, no job file, a concurrency of 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [
        &["--no-such-flag", "job.json"][..],
        &[][..],
        &["--concurrency", "0", "job.json"][..],
    ] {
        let output = download(dir.path(), args).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).is_empty(), "{args:?} explains itself");
    }
    let help = download(dir.path(), &["--help"]).await;
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--store", "--concurrency", "--json", "--quiet"] {
        assert!(help.contains(flag), "--help documents {flag}: {help}");
    }
}

/// Ctrl-C while a transfer hangs: every job is cancelled (with `--json`, one FAIL line
/// each), no temporary file is left, and the exit status is 130.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_and_exits_130() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // A server that sends part of a large body and then stalls; it reports each request.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}/huge.img", listener.local_addr().unwrap());
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let stall = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n";
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body(256 * 1024, 5)).await;
            let _ = started_tx.send(());
            held.push(stream);
        }
    });
    let fx = Fixture::new(&[]).await;
    let job = fx.job(
        "huge.json",
        &format!(r#"{{"action": {{"deploy": {{"images": [{{"uri": "{url}"}}]}}}}}}"#),
    );
    let store = fx.store();

    let child = Command::new(example("download"))
        .args(["--store", store.to_str().unwrap(), "--json", &job])
        .current_dir(fx.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the download example");
    tokio::time::timeout(RUN_TIMEOUT, started.recv())
        .await
        .expect("the transfer did not start in time")
        .expect("the server is running");
    let pid = child.id().expect("still running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("download did not stop in time after Ctrl-C")
        .expect("wait for download");
    stall.abort();

    assert_eq!(
        output.status.code(),
        Some(130),
        "stderr: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("interrupted"),
        "{}",
        stderr(&output)
    );
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 1, "one line for the cancelled job");
    assert_eq!(lines[0]["job"], 1);
    assert_eq!(lines[0]["ok"], false);
    assert_eq!(lines[0]["msg"], "interrupted (cancelled)");
    assert!(lines[0]["config"].is_null(), "{}", lines[0]);
    assert_eq!(part_files(&store), Vec::<PathBuf>::new());
}

/// A store another process has open (its lock is held): every job fails, exit 1, and with
/// `--json` one FAIL line per job says why; nothing is downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_open_elsewhere_fails_every_job() {
    let fx = Fixture::new(&[("a.img", b"a")]).await;
    let json = format!(
        r#"{{"action": {{"deploy": {{"images": [{{"uri": "{}"}}]}}}}}}"#,
        fx.server.url("a.img")
    );
    let (one, two) = (fx.job("one.json", &json), fx.job("two.json", &json));
    let store = fx.store();
    let holder = artifact_coordinator::Store::open(&store)
        .await
        .expect("hold the store");

    let output = download(
        fx.path(),
        &["--store", store.to_str().unwrap(), "--json", &one, &two],
    )
    .await;

    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2, "one line per job");
    for (line, file) in lines.iter().zip(["one.json", "two.json"]) {
        assert_eq!(line["file"], file);
        assert_eq!(line["ok"], false);
        let msg = line["msg"].as_str().unwrap_or_default();
        assert!(msg.contains("open elsewhere"), "{msg}");
        assert!(line["config"].is_null());
    }
    assert!(stderr(&output).contains("open elsewhere"));
    assert_eq!(fx.server.requests("a.img"), 0);
    holder.close().await;
}

/// The demo runs to the end offline: exit 0, exactly one failed job (the intended one),
/// and its temporary directories are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_offline_with_exactly_one_failure() {
    let child = Command::new(example("demo"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the demo");
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("the demo did not finish in time")
        .expect("wait for the demo");

    let out = String::from_utf8_lossy(&output.stdout);
    let err = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {out}\nstderr: {err}"
    );
    let rows: Vec<&str> = out
        .lines()
        .filter(|line| line.contains(" OK") || line.contains(" FAIL"))
        .filter(|line| line.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 4, "one summary row per job: {out}");
    let failed: Vec<&&str> = rows.iter().filter(|row| row.contains("FAIL")).collect();
    assert_eq!(failed.len(), 1, "exactly one failed job: {out}");
    assert!(failed[0].contains("broken-on-purpose"), "{out}");
    assert!(
        out.contains("demo: 3 jobs OK, 1 failed as intended"),
        "{out}"
    );
    assert!(
        out.contains("rootfs.img took 1 request at the server"),
        "the image two jobs share is fetched once: {out}"
    );
    let store = err
        .lines()
        .find_map(|line| line.strip_prefix("demo: store in "))
        .expect("the demo names its store");
    assert!(!Path::new(store).exists(), "the demo removed {store}");
}
