//! `demo`: the whole stack, offline, in one command.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! Generates a few artifacts (deterministic pseudo-random bytes, about 50 MiB) in a
//! temporary directory, serves them with a small HTTP/1.1 server on 127.0.0.1, and runs
//! four jobs at once through the real Downloader and Store (in a temporary store):
//!
//! 1. `smoke-rpi4`: the shared root file system (with its expected SHA-256), a script,
//!    and a result file to pull;
//! 2. `smoke-odroid`: the same root file system URL, and a tarball;
//! 3. `flash-verified`: a boot image verified against an md5sum-style checksum file, and
//!    a device tree;
//! 4. `broken-on-purpose`: a firmware push whose expected SHA-256 is wrong, so the job
//!    fails.
//!
//! It shows progress like the `download` example, prints a summary table and how many
//! requests the shared image took at the server, removes its temporary directories, and
//! exits 0 when exactly the expected job failed (1 otherwise, 130 after Ctrl-C).

#[path = "common/mod.rs"]
mod common;
#[path = "common/server.rs"]
mod server;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use artifact_coordinator::{Config, JobId, Store};
use common::{Answer, JobSpec, Mode, Outcome, Progress};
use md5::Md5;
use serde_json::json;
use server::Server;
use sha2::{Digest, Sha256};

/// A MiB.
const MIB: usize = 1 << 20;

/// The job that fails on purpose, and the alias its failure must name.
const BROKEN_JOB: JobId = JobId(4);
/// The push of [`BROKEN_JOB`] with the wrong SHA-256.
const BROKEN_ALIAS: &str = "firmware.bin";

/// What was generated: each file's name, size and digests.
struct Generated {
    /// SHA-256 of `rootfs.img`, lower-case hex.
    rootfs_sha256: String,
    /// Total bytes generated.
    bytes: u64,
    /// Number of files.
    files: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    match demo().await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("demo: {err}");
            ExitCode::from(1)
        }
    }
}

async fn demo() -> io::Result<ExitCode> {
    // First thing: Ctrl-C during the setup below must not leave its files behind.
    let mut interrupt = common::Interrupt::new();
    let mut progress = Progress::new(Mode::detect(false));
    progress.init_tracing();

    let files = tempfile::Builder::new().prefix("demo-files-").tempdir()?;
    let store_dir = tempfile::Builder::new().prefix("demo-store-").tempdir()?;
    let dir = files.path().to_owned();
    let mut generating = tokio::task::spawn_blocking(move || generate(&dir));
    let generated = tokio::select! {
        generated = &mut generating => generated.map_err(io::Error::other)??,
        () = interrupt.wait() => {
            // Let the writing end, then the directories go (dropped on return).
            let _ = generating.await;
            eprintln!("demo: interrupted while generating its files; they are removed");
            return Ok(ExitCode::from(130));
        }
    };
    let server = Server::start(files.path()).await?;
    eprintln!(
        "demo: serving {} generated files ({}) on {}",
        generated.files,
        indicatif::HumanBytes(generated.bytes),
        server.url("")
    );
    eprintln!("demo: store in {}", store_dir.path().display());

    let store = Store::builder()
        .open(store_dir.path())
        .await
        .map_err(io::Error::other)?;
    let jobs = jobs(&server, &generated)?;
    let outcome = common::run(&store, jobs, &mut progress, &mut interrupt, |_| {}).await;
    let shared_requests = server.requests("rootfs.img");
    let store_root = store.root().to_owned();

    // Clean up before reporting: the store's files live in the temporary directories.
    drop(store);
    drop(server);
    files.close()?;
    store_dir.close()?;

    let answers = match outcome {
        Outcome::Finished(answers) => answers,
        Outcome::Interrupted { cancelled } => {
            eprintln!("demo: interrupted; cancelled {cancelled} jobs, temporary files removed");
            return Ok(ExitCode::from(130));
        }
    };
    let mut out = io::stdout().lock();
    writeln!(out)?;
    common::print_summary(&mut out, &answers)?;
    writeln!(out)?;
    writeln!(
        out,
        "demo: the shared image rootfs.img took {shared_requests} request{} at the server (jobs 1 and 2 both push it; the Store fetches it once)",
        if shared_requests == 1 { "" } else { "s" }
    )?;
    if let Some(config) = answers.first().and_then(|a| a.config.as_ref()) {
        writeln!(
            out,
            "demo: job 1's files, at the paths the Downloader wrote into its config (under the store):"
        )?;
        for path in common::pushed_paths(config) {
            let shown = path
                .as_path()
                .strip_prefix(&store_root)
                .unwrap_or(path.as_path());
            writeln!(out, "  {}", shown.display())?;
        }
    }
    verdict(&mut out, &answers)
}

/// Prints whether the run went as intended: every job OK except [`BROKEN_JOB`], which
/// failed because of [`BROKEN_ALIAS`].
fn verdict(out: &mut impl Write, answers: &[Answer]) -> io::Result<ExitCode> {
    let ok = answers.iter().filter(|a| a.ok).count();
    let failed: Vec<&Answer> = answers.iter().filter(|a| !a.ok).collect();
    let as_intended = answers.len() == 4
        && matches!(failed.as_slice(), [a] if a.job == BROKEN_JOB && a.msg.contains(BROKEN_ALIAS));
    if as_intended {
        writeln!(out, "demo: {ok} jobs OK, 1 failed as intended")?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(
            out,
            "demo: unexpected result: {ok} jobs OK, {} failed (expected only job {BROKEN_JOB} to fail, on {BROKEN_ALIAS})",
            failed.len()
        )?;
        Ok(ExitCode::from(1))
    }
}

/// The four jobs, as JSON configs pointing at `server`.
fn jobs(server: &Server, generated: &Generated) -> io::Result<Vec<JobSpec>> {
    // Matches nothing that is served (nor anything a cache could hold).
    let wrong_sha256 = hex::encode(Sha256::digest(b"not the firmware"));
    let configs = [
        (
            "smoke-rpi4",
            json!({
                "job_name": "smoke-rpi4",
                "device_type": "rpi4",
                "priority": "medium",
                "action": {
                    "deploy": { "images": [
                        { "uri": server.url("rootfs.img"), "sha256": generated.rootfs_sha256 },
                    ] },
                    "test": { "test_cases": [ {
                        "case_name": "smoke",
                        "test_actions": [
                            { "push": { "uri": server.url("run.sh"), "dest": "/tmp/run.sh", "alias": "run.sh" } },
                            { "run": { "name": "sh /tmp/run.sh" } },
                            { "pull": { "src": "/tmp/result.log", "alias": "result.log" } },
                        ],
                    } ] },
                },
            }),
        ),
        (
            "smoke-odroid",
            json!({
                "job_name": "smoke-odroid",
                "device_type": "odroid-u3",
                "action": {
                    "deploy": { "images": [ { "uri": server.url("rootfs.img"), "sha256": generated.rootfs_sha256 } ] },
                    "test": { "test_cases": [ {
                        "case_name": "modules",
                        "test_actions": [
                            { "push": { "uri": server.url("modules.tar"), "dest": "/tmp/modules.tar", "alias": "modules.tar" } },
                            { "run": { "name": "tar -xf /tmp/modules.tar -C /lib/modules" } },
                        ],
                    } ] },
                },
            }),
        ),
        (
            "flash-verified",
            json!({
                "job_name": "flash-verified",
                "device_type": "rpi4",
                "action": {
                    "deploy": { "images": [
                        {
                            "uri": server.url("boot.img"),
                            "checksum_uri": server.url("boot.img.md5"),
                            "checksum_type": "md5",
                        },
                        { "uri": server.url("board.dtb") },
                    ] },
                },
            }),
        ),
        (
            "broken-on-purpose",
            json!({
                "job_name": "broken-on-purpose",
                "device_type": "rpi4",
                "action": {
                    "deploy": { "images": [ { "uri": server.url("kernel.img") } ] },
                    "test": { "test_cases": [ {
                        "case_name": "firmware",
                        "test_actions": [
                            { "push": {
                                "uri": server.url("firmware.bin"),
                                "dest": "/lib/firmware/fw.bin",
                                "alias": BROKEN_ALIAS,
                                "sha256": wrong_sha256,
                            } },
                        ],
                    } ] },
                },
            }),
        ),
    ];
    configs
        .into_iter()
        .enumerate()
        .map(|(i, (name, config))| {
            let config = Config::from_json(&config.to_string()).map_err(io::Error::other)?;
            Ok(JobSpec {
                id: JobId(i as u64 + 1),
                label: name.to_owned(),
                config,
            })
        })
        .collect()
}

/// Writes the demo's files into `dir`.
fn generate(dir: &Path) -> io::Result<Generated> {
    let mut bytes = 0;
    let mut files = 0;
    let mut add = |name: &str, size: usize, seed: u64| -> io::Result<(String, String)> {
        let digests = write_random(&dir.join(name), size, seed)?;
        bytes += size as u64;
        files += 1;
        Ok(digests)
    };
    let (rootfs_sha256, _) = add("rootfs.img", 24 * MIB, 1)?;
    let (_, boot_md5) = add("boot.img", 12 * MIB, 2)?;
    add("board.dtb", 64 * 1024, 3)?;
    add("modules.tar", 6 * MIB, 4)?;
    add("kernel.img", 4 * MIB, 5)?;
    add("firmware.bin", 2 * MIB, 6)?;
    let checksum = format!("{boot_md5}  boot.img\n");
    std::fs::write(dir.join("boot.img.md5"), &checksum)?;
    let script = "#!/bin/sh\necho smoke > /tmp/result.log\n";
    std::fs::write(dir.join("run.sh"), script)?;
    Ok(Generated {
        rootfs_sha256,
        bytes: bytes + (checksum.len() + script.len()) as u64,
        files: files + 2,
    })
}

/// Writes `size` pseudo-random bytes (splitmix64 from `seed`) to `path`; returns their
/// SHA-256 and MD5 (lower-case hex).
fn write_random(path: &Path, size: usize, seed: u64) -> io::Result<(String, String)> {
    let mut out = BufWriter::new(File::create(path)?);
    let mut sha256 = Sha256::new();
    let mut md5 = Md5::new();
    let mut state = seed;
    let mut chunk = vec![0u8; MIB];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        for word in chunk[..n].chunks_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
        }
        out.write_all(&chunk[..n])?;
        sha256.update(&chunk[..n]);
        md5.update(&chunk[..n]);
        left -= n;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok((hex::encode(sha256.finalize()), hex::encode(md5.finalize())))
}
