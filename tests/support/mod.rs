//! Shared helpers of the Store tests: the fault-injecting HTTP server, a collector that
//! waits for statuses with a timeout, `.part` file listing and digests.
#![allow(dead_code, unused_imports, unreachable_pub)]

pub mod server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use artifact_coordinator::{ArtifactPath, ArtifactStatus, ArtifactStatusChange};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub use server::{Cut, Framing, Request, Resource, Step, TestServer, Trickle};

pub mod store;
pub use store::*;

/// How long a test waits for something before it fails (generous: a shared 2-core box).
pub const WAIT: Duration = Duration::from_secs(30);

/// The receiving end of a collector channel, buffering changes of other paths so that
/// several artifacts can be awaited one after the other.
#[derive(Debug)]
pub struct Statuses {
    rx: mpsc::Receiver<ArtifactStatusChange>,
    buffered: Vec<ArtifactStatusChange>,
}

impl Statuses {
    /// A collector channel: the sender for `push_artifact` and this receiver.
    pub fn channel() -> (mpsc::Sender<ArtifactStatusChange>, Statuses) {
        let (tx, rx) = mpsc::channel(1024);
        (
            tx,
            Statuses {
                rx,
                buffered: Vec::new(),
            },
        )
    }

    /// Every change of `path` until (and including) its terminal one, waiting at most
    /// [`WAIT`]. Panics on timeout or when the channel closes first.
    pub async fn until_terminal(&mut self, path: &ArtifactPath) -> Vec<ArtifactStatusChange> {
        self.until_terminal_within(path, WAIT).await
    }

    /// Like [`Statuses::until_terminal`] with a chosen timeout.
    pub async fn until_terminal_within(
        &mut self,
        path: &ArtifactPath,
        within: Duration,
    ) -> Vec<ArtifactStatusChange> {
        let mut mine = Vec::new();
        let mut rest = Vec::new();
        for change in self.buffered.drain(..) {
            if change.path == *path && !mine.last().is_some_and(is_terminal) {
                mine.push(change);
            } else {
                rest.push(change);
            }
        }
        self.buffered = rest;
        if mine.last().is_some_and(is_terminal) {
            return mine;
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let change = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no terminal status for {path} within {within:?}; got {mine:?}")
                })
                .unwrap_or_else(|| {
                    panic!("collector closed before a terminal status for {path}; got {mine:?}")
                });
            if change.path == *path {
                let done = change.status.is_terminal();
                mine.push(change);
                if done {
                    return mine;
                }
            } else {
                self.buffered.push(change);
            }
        }
    }

    /// The final change of `path` (READY or FAILED), waiting at most [`WAIT`].
    pub async fn terminal(&mut self, path: &ArtifactPath) -> ArtifactStatusChange {
        self.until_terminal(path)
            .await
            .pop()
            .expect("until_terminal returns at least the terminal change")
    }

    /// Waits (at most [`WAIT`]) until `path` has reported `status`; the changes stay
    /// buffered for [`Statuses::until_terminal`].
    pub async fn wait_for(&mut self, path: &ArtifactPath, status: ArtifactStatus) {
        if self
            .buffered
            .iter()
            .any(|c| c.path == *path && c.status == status)
        {
            return;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let change = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {status} for {path} within {WAIT:?}"))
                .unwrap_or_else(|| {
                    panic!(
                        "collector closed before {status} for {path}; seen: {:?}",
                        self.buffered
                    )
                });
            let found = change.path == *path && change.status == status;
            self.buffered.push(change);
            if found {
                return;
            }
        }
    }

    /// Whatever has arrived already, without waiting (buffered ones first).
    pub fn drain_now(&mut self) -> Vec<ArtifactStatusChange> {
        let mut all: Vec<_> = self.buffered.drain(..).collect();
        while let Ok(change) = self.rx.try_recv() {
            all.push(change);
        }
        all
    }
}

fn is_terminal(change: &ArtifactStatusChange) -> bool {
    change.status.is_terminal()
}

/// The statuses of a list of changes, for `assert_eq!`.
pub fn statuses(changes: &[ArtifactStatusChange]) -> Vec<ArtifactStatus> {
    changes.iter().map(|c| c.status).collect()
}

/// Every file under `root` whose name ends in `.part`.
pub fn part_files(root: &Path) -> Vec<PathBuf> {
    files_under(root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".part"))
        })
        .collect()
}

/// Every regular file under `root`, recursively (empty when `root` does not exist).
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(_) => out.push(path),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    sha256_hex(&bytes)
}

/// Lower-case hex MD5 of `bytes`.
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Md5;
    hex::encode(Md5::digest(bytes))
}

/// `n` bytes of deterministic, non-repeating-looking content, different per `seed`.
pub fn body(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Panics unless no `.part` file is left under `root`.
pub fn assert_no_part_files(root: &Path) {
    let parts = part_files(root);
    assert!(parts.is_empty(), "temporary files left behind: {parts:?}");
}

/// Polls `check` every 10 ms until it holds, failing after [`WAIT`]. Only for state that
/// offers nothing to wait on (the file system, a snapshot API); everything else waits on
/// a channel.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
