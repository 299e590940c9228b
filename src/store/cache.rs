//! The shared content-addressed cache: verified blobs named by their SHA-256 under
//! `<root>/cache/blobs`, the single-flight table that lets concurrent pushes of one URI
//! share a transfer, pins that keep blobs in use safe from eviction, and eviction itself.
//!
//! # How a job's file relates to its blob
//!
//! Every `READY` download is first renamed into the cache as `cache/blobs/<sha256>`, made
//! read-only (mode `0444`). The job's path is then a *hard link* to the blob (or a private,
//! writable copy when a hard link is impossible: another file system, the link limit, or
//! [`StoreBuilder::copy_job_files`](super::StoreBuilder::copy_job_files)). A job may delete
//! its file, or replace it (write a new file and rename it over the path): the blob and the
//! other jobs' files keep their content, since they are other names of the old inode.
//! Writing *into* a hard-linked file in place would change the shared inode, which is why
//! the files are read-only; a process that ignores file modes (root) and writes in place
//! anyway is caught the next time the blob is used: its size or modification time no longer
//! match what the index recorded, the blob is re-hashed, and dropped if it is corrupt.
//!
//! # Index tables
//!
//! `blobs` (sha256, size, mtime_ns, created_ms, used_ms) and `sources` (uri, sha256, etag,
//! last_modified): what each URI last served and how to revalidate it. A blob is
//! *referenced* while a `READY` pushed artifact row has its digest; referenced blobs and
//! pinned blobs are never evicted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::StoreError;
use super::dirsync::DirSyncs;
use super::fetch::{ByteCount, FetchError, Validators};
use super::index::now_ms;
use super::paths::Layout;
use crate::model::{ArtifactPath, ChecksumType, JobId};

/// How many [`ByteProgress`] events a slow subscriber may fall behind before it loses the
/// oldest ones (it then gets `RecvError::Lagged` once and continues).
pub(crate) const PROGRESS_CAPACITY: usize = 4096;

/// Byte progress of one artifact, as published by
/// [`Store::subscribe_progress`](super::Store::subscribe_progress).
///
/// Events for one artifact come at most once per
/// [`StoreBuilder::progress_interval`](super::StoreBuilder::progress_interval), plus one
/// when the size becomes known and one when the transfer ends; `done == total` in the
/// last event of a successful artifact. Jobs sharing one transfer each get their own events,
/// with their own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteProgress {
    /// The job.
    pub job: JobId,
    /// The artifact's path (as returned by `push_artifact`).
    pub path: ArtifactPath,
    /// Bytes received so far (the whole size for a cache hit).
    pub done: u64,
    /// The whole size, once known.
    pub total: Option<u64>,
}

/// What the shared cache holds, from [`Store::cache_stats`](super::Store::cache_stats).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Blobs in the cache.
    pub blobs: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Bytes of the blobs that a `READY` artifact still references (never evicted).
    pub referenced_bytes: u64,
    /// The size bound, if any ([`StoreBuilder::cache_max_bytes`](super::StoreBuilder::cache_max_bytes)).
    pub max_bytes: Option<u64>,
    /// Transfers in flight (each possibly shared by several jobs).
    pub transfers: u64,
}

/// One row of the `blobs` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobRow {
    /// Its digest, lower-case hex.
    pub(crate) sha256: String,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// Its modification time when it was stored (nanoseconds since the epoch).
    pub(crate) mtime_ns: i64,
}

/// Blobs in use by transfers that have not recorded `READY` yet (digest → users).
#[derive(Debug, Default)]
pub(crate) struct Pins(Mutex<HashMap<String, usize>>);

impl Pins {
    /// Pins `sha256` until the returned guard is dropped.
    pub(crate) fn pin(self: &Arc<Self>, sha256: &str) -> Pin {
        *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(sha256.to_owned())
            .or_insert(0) += 1;
        Pin {
            pins: Arc::clone(self),
            sha256: sha256.to_owned(),
        }
    }
}

/// Keeps one blob from being evicted while it lives.
#[derive(Debug)]
pub(crate) struct Pin {
    /// The table.
    pins: Arc<Pins>,
    /// The blob.
    sha256: String,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = pins.get_mut(&self.sha256) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.sha256);
            }
        }
    }
}

/// A verified blob in the cache, pinned while this lives.
#[derive(Debug)]
pub(crate) struct Landed {
    /// Its digest.
    pub(crate) sha256: String,
    /// Its size.
    pub(crate) size: u64,
    /// `cache/blobs/<sha256>`.
    pub(crate) path: PathBuf,
    /// Keeps it from eviction.
    pub(crate) _pin: Pin,
}

/// What identifies transfers that can be shared: the same URI, the same expected digest
/// and the same checksum file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FlightKey {
    /// The URI as given.
    pub(crate) uri: String,
    /// The expected SHA-256, lower-case.
    pub(crate) sha256: Option<String>,
    /// The checksum file's URI and algorithm.
    pub(crate) checksum: Option<(String, ChecksumType)>,
}

/// Where a shared transfer is.
#[derive(Debug, Clone)]
pub(crate) enum FlightState {
    /// Waiting for a worker.
    Queued,
    /// Transferring.
    Running,
    /// Finished: the blob, or why not (the reason every waiting job gets).
    Done(Result<Arc<Landed>, Arc<str>>),
}

/// One transfer, shared by every job that pushed its key while it ran.
#[derive(Debug)]
pub(crate) struct Flight {
    /// Names its temporary file.
    pub(crate) id: u64,
    /// Cancelled when its last waiting job is cancelled (or the store closes).
    pub(crate) token: CancellationToken,
    /// Its state; waiters subscribe.
    pub(crate) state: watch::Sender<FlightState>,
    /// Its byte progress (published at most once per progress interval).
    pub(crate) bytes: watch::Sender<ByteCount>,
}

/// A live flight and how many transfers wait on it.
#[derive(Debug)]
struct Entry {
    /// The flight.
    flight: Arc<Flight>,
    /// Transfers holding a [`Ticket`].
    waiters: usize,
    /// The job tokens of every transfer that joined (those that left are cancelled or
    /// done), to know at once that every waiter is being cancelled.
    jobs: Vec<CancellationToken>,
}

/// The in-memory side of the cache: pins, flights and the progress channel.
#[derive(Debug)]
pub(crate) struct Cache {
    /// Blobs in use.
    pub(crate) pins: Arc<Pins>,
    /// Flights by key, until they finish or lose their last waiter.
    flights: Mutex<HashMap<FlightKey, Entry>>,
    /// Source of flight ids.
    next_id: AtomicU64,
    /// Per-artifact byte progress for subscribers.
    pub(crate) progress: broadcast::Sender<ByteProgress>,
}

/// A transfer's share in a flight. Dropping (or [`release`](Ticket::release)) the last
/// ticket of a flight that has not finished cancels it.
#[derive(Debug)]
pub(crate) struct Ticket {
    /// The table.
    cache: Arc<Cache>,
    /// The key the flight is filed under.
    key: FlightKey,
    /// The flight.
    pub(crate) flight: Arc<Flight>,
    /// Set once released.
    released: bool,
}

impl Ticket {
    /// Gives up this share; returns whether it was the last one of a flight still running
    /// (which is now cancelled: wait for its state to reach `Done`).
    pub(crate) fn release(mut self) -> bool {
        self.released = true;
        self.cache.leave(&self.key, &self.flight)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.released {
            self.cache.leave(&self.key, &self.flight);
        }
    }
}

impl Cache {
    /// An empty table.
    pub(crate) fn new() -> Arc<Cache> {
        Arc::new(Cache {
            pins: Arc::default(),
            flights: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            progress: broadcast::channel(PROGRESS_CAPACITY).0,
        })
    }

    /// Joins the flight for `key`, or files a new one (a child of `parent`); returns the
    /// ticket and whether the flight is new (the caller must then run it).
    pub(crate) fn join(
        self: &Arc<Self>,
        key: FlightKey,
        parent: &CancellationToken,
        job: &CancellationToken,
    ) -> (Ticket, bool) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = flights.get_mut(&key) {
            entry.waiters += 1;
            entry.jobs.push(job.clone());
            let flight = Arc::clone(&entry.flight);
            drop(flights);
            debug!(flight = flight.id, uri = %key.uri, "joined a transfer in flight");
            return (self.ticket(key, flight), false);
        }
        let flight = Arc::new(Flight {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            token: parent.child_token(),
            state: watch::channel(FlightState::Queued).0,
            bytes: watch::channel(ByteCount::default()).0,
        });
        flights.insert(
            key.clone(),
            Entry {
                flight: Arc::clone(&flight),
                waiters: 1,
                jobs: vec![job.clone()],
            },
        );
        drop(flights);
        (self.ticket(key, flight), true)
    }

    fn ticket(self: &Arc<Self>, key: FlightKey, flight: Arc<Flight>) -> Ticket {
        Ticket {
            cache: Arc::clone(self),
            key,
            flight,
            released: false,
        }
    }

    /// Whether no job waits for `flight` any more, or every one that does is being
    /// cancelled: their transfers leave it soon, and a flight about to start should not.
    /// Unlike the flight's own token, this knows as soon as `cancel_job` starts.
    pub(crate) fn abandoned(&self, key: &FlightKey, flight: &Arc<Flight>) -> bool {
        let flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        match flights.get(key) {
            Some(entry) if Arc::ptr_eq(&entry.flight, flight) => {
                entry.jobs.iter().all(CancellationToken::is_cancelled)
            }
            _ => true,
        }
    }

    /// One waiter fewer; the last one out cancels the flight and unfiles it, so a later
    /// push starts afresh instead of joining a dying transfer.
    fn leave(&self, key: &FlightKey, flight: &Arc<Flight>) -> bool {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = flights.get_mut(key) else {
            return false;
        };
        if !Arc::ptr_eq(&entry.flight, flight) {
            return false;
        }
        entry.waiters -= 1;
        if entry.waiters > 0 {
            return false;
        }
        flights.remove(key);
        drop(flights);
        debug!(flight = flight.id, uri = %key.uri, "last waiting job gone; cancelling transfer");
        flight.token.cancel();
        true
    }

    /// Unfiles a finished flight and tells its waiters how it ended.
    pub(crate) fn finish(
        &self,
        key: &FlightKey,
        flight: &Arc<Flight>,
        result: Result<Arc<Landed>, Arc<str>>,
    ) {
        {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            if flights
                .get(key)
                .is_some_and(|e| Arc::ptr_eq(&e.flight, flight))
            {
                flights.remove(key);
            }
        }
        flight.state.send_replace(FlightState::Done(result));
    }

    /// Flights in the table.
    pub(crate) fn transfers(&self) -> u64 {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }

    /// Publishes a progress event if anyone listens.
    pub(crate) fn publish(&self, job: JobId, path: &ArtifactPath, count: ByteCount) {
        if self.progress.receiver_count() > 0 {
            let _ = self.progress.send(ByteProgress {
                job,
                path: path.clone(),
                done: count.done,
                total: count.total,
            });
        }
    }
}

/// Modification time of `meta` in nanoseconds since the epoch (0 when unknown).
pub(crate) fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// Why a cached blob cannot be trusted.
#[derive(Debug)]
pub(crate) struct Untrusted {
    /// For the log.
    pub(crate) reason: String,
    /// The file, when it is certainly not the content (wrong size, wrong digest, not a
    /// regular file): it may be removed, but only while it is still this file. `None`
    /// when it is missing or could not be read (perhaps for a passing reason).
    pub(crate) bad: Option<FileIdentity>,
}

/// Which file a path named when it was looked at: a file put there later differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    size: u64,
    mtime_ns: i64,
    /// The inode number (0 where there is none).
    inode: u64,
}

impl FileIdentity {
    /// The identity of the file `meta` describes.
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileIdentity {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileIdentity {
            size: meta.len(),
            mtime_ns: mtime_ns(meta),
            inode,
        }
    }

    /// The identity of what `path` names now, if anything.
    pub(crate) fn at(path: &Path) -> Option<FileIdentity> {
        std::fs::symlink_metadata(path).ok().map(|m| Self::of(&m))
    }
}

/// Whether the blob file at `path` still is `row`'s content (blocking). Size must match;
/// the content is re-hashed when `rehash` is set or the modification time moved. Returns
/// the file's current mtime when it differs from the row's (the content being right), or
/// why the blob cannot be trusted.
pub(crate) fn check_blob(
    path: &Path,
    row: &BlobRow,
    rehash: bool,
) -> Result<Option<i64>, Untrusted> {
    let unreadable = |e: std::io::Error| Untrusted {
        reason: format!("cannot read it: {e}"),
        bad: None,
    };
    let meta = std::fs::symlink_metadata(path).map_err(unreadable)?;
    let bad = |reason: String| Untrusted {
        reason,
        bad: Some(FileIdentity::of(&meta)),
    };
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() != row.size {
        return Err(bad(format!(
            "size {} bytes, recorded {} bytes",
            meta.len(),
            row.size
        )));
    }
    let mtime = mtime_ns(&meta);
    if !rehash && mtime == row.mtime_ns {
        return Ok(None);
    }
    match super::fetch::hash_file(path) {
        Ok(got) if got == row.sha256 => Ok((mtime != row.mtime_ns).then_some(mtime)),
        Ok(got) => Err(bad(format!("content changed: sha256 is now {got}"))),
        Err(e) => Err(unreadable(e)),
    }
}

/// Removes the untrusted blob file at `path` if it is still the one `bad` names (another
/// transfer may have put a good copy there since), and forgets the blob's row when the
/// path no longer names any file. Runs on the index thread, so a transfer recording a new
/// copy (after linking it) is not undone. Blocking.
pub(crate) fn drop_untrusted(
    conn: &Connection,
    path: &Path,
    sha256: &str,
    bad: Option<FileIdentity>,
) -> rusqlite::Result<()> {
    let now = FileIdentity::at(path);
    if bad.is_some() && now == bad {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(path = %path.display(), cause = %e, "cannot remove the untrusted blob");
            return Ok(());
        }
    } else if now.is_some() {
        // Unreadable for a moment, or replaced by a good copy since: left alone.
        return Ok(());
    }
    forget_blob(conn, sha256)
}

/// Gives the job its file at `target`: a hard link to `blob`, or (when `copy` is set or
/// linking is impossible) a copy made at `temp` and renamed into place. With `fsync`, the
/// copy and the directory are synced so the new name survives a power loss (the
/// directory's fsync shared with the other transfers placing files there, see
/// [`DirSyncs`]). Blocking.
pub(crate) fn place(
    blob: &Path,
    target: &Path,
    temp: &Path,
    dir: &Path,
    copy: bool,
    fsync: Option<&DirSyncs>,
) -> Result<(), FetchError> {
    let linked = if copy {
        false
    } else {
        match std::fs::hard_link(blob, target) {
            Ok(()) => true,
            Err(e) if can_copy_instead(&e) => {
                debug!(blob = %blob.display(), cause = %e, "cannot hard-link; copying");
                false
            }
            Err(source) => {
                return Err(FetchError::Io {
                    op: "link cached blob to",
                    path: target.to_owned(),
                    source,
                });
            }
        }
    };
    if !linked {
        copy_to(blob, target, temp, fsync.is_some())?;
    }
    if let Some(syncs) = fsync
        && let Err(source) = syncs.sync(dir)
    {
        // The name might not survive a power loss: not READY. The name goes, so that
        // the job does not find a file its artifact does not vouch for.
        let _ = std::fs::remove_file(target);
        return Err(FetchError::Io {
            op: "fsync directory",
            path: dir.to_owned(),
            source,
        });
    }
    Ok(())
}

/// Whether a failed hard link should fall back to a copy.
fn can_copy_instead(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::CrossesDevices
            | ErrorKind::PermissionDenied
            | ErrorKind::Unsupported
            | ErrorKind::TooManyLinks
    ) || e.raw_os_error() == Some(1) // EPERM: file systems without hard links
}

/// Copies `blob` to `temp` (writable), syncs it and renames it onto `target`.
fn copy_to(blob: &Path, target: &Path, temp: &Path, fsync: bool) -> Result<(), FetchError> {
    // Only a file this call made is removed on failure.
    let mut made = false;
    let result = (|| {
        let mut from = std::fs::File::open(blob).map_err(|source| FetchError::Io {
            op: "read cached blob",
            path: blob.to_owned(),
            source,
        })?;
        let io = |op| {
            move |source| FetchError::Io {
                op,
                path: temp.to_owned(),
                source,
            }
        };
        let mut to = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temp)
            .map_err(io("create temporary file"))?;
        made = true;
        std::io::copy(&mut from, &mut to).map_err(io("copy cached blob to"))?;
        // The blob's time, which recovery at open compares to know the copy unchanged.
        let modified = from.metadata().and_then(|m| m.modified());
        modified
            .and_then(|t| to.set_modified(t))
            .map_err(io("set the modification time of"))?;
        if fsync {
            to.sync_all().map_err(io("fsync"))?;
        }
        std::fs::rename(temp, target).map_err(|source| FetchError::Io {
            op: "rename temporary file onto",
            path: target.to_owned(),
            source,
        })
    })();
    if result.is_err() && made {
        let _ = std::fs::remove_file(temp);
    }
    result
}

/// The `blobs` row of `sha256`.
pub(crate) fn get_blob(conn: &Connection, sha256: &str) -> rusqlite::Result<Option<BlobRow>> {
    conn.prepare_cached("SELECT sha256, size, mtime_ns FROM blobs WHERE sha256 = ?1")?
        .query_row([sha256], |row| {
            Ok(BlobRow {
                sha256: row.get(0)?,
                size: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                mtime_ns: row.get(2)?,
            })
        })
        .optional()
}

/// Records (or refreshes) a blob, and what `uri` served, with its validators.
pub(crate) fn put_blob(
    conn: &Connection,
    row: &BlobRow,
    uri: &str,
    validators: &Validators,
) -> rusqlite::Result<()> {
    let now = now_ms();
    conn.prepare_cached(
        "INSERT INTO blobs (sha256, size, mtime_ns, created_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT (sha256) DO UPDATE SET size = ?2, mtime_ns = ?3, used_ms = ?4",
    )?
    .execute(params![
        row.sha256,
        i64::try_from(row.size).unwrap_or(i64::MAX),
        row.mtime_ns,
        now
    ])?;
    if validators.is_empty() {
        conn.prepare_cached("DELETE FROM sources WHERE uri = ?1")?
            .execute([uri])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO sources (uri, sha256, etag, last_modified, fetched_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (uri) DO UPDATE SET sha256 = ?2, etag = ?3, last_modified = ?4,
             fetched_ms = ?5",
        )?
        .execute(params![
            uri,
            row.sha256,
            validators.etag,
            validators.last_modified,
            now
        ])?;
    }
    Ok(())
}

/// Marks a blob used now (and records a new mtime after a successful re-hash).
pub(crate) fn touch(
    conn: &Connection,
    sha256: &str,
    mtime_ns: Option<i64>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE blobs SET used_ms = ?2, mtime_ns = COALESCE(?3, mtime_ns) WHERE sha256 = ?1",
    )?
    .execute(params![sha256, now_ms(), mtime_ns])?;
    Ok(())
}

/// Forgets a blob (and the URIs that served it).
pub(crate) fn forget_blob(conn: &Connection, sha256: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM blobs WHERE sha256 = ?1")?
        .execute([sha256])?;
    conn.prepare_cached("DELETE FROM sources WHERE sha256 = ?1")?
        .execute([sha256])?;
    Ok(())
}

/// What `uri` served last time and its validators, when it had any.
pub(crate) fn get_source(
    conn: &Connection,
    uri: &str,
) -> rusqlite::Result<Option<(BlobRow, Validators)>> {
    conn.prepare_cached(
        "SELECT b.sha256, b.size, b.mtime_ns, s.etag, s.last_modified
         FROM sources s JOIN blobs b ON b.sha256 = s.sha256 WHERE s.uri = ?1",
    )?
    .query_row([uri], |row| {
        Ok((
            BlobRow {
                sha256: row.get(0)?,
                size: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                mtime_ns: row.get(2)?,
            },
            Validators {
                etag: row.get(3)?,
                last_modified: row.get(4)?,
            },
        ))
    })
    .optional()
}

/// Total size of the blobs and of the referenced ones.
pub(crate) fn usage(conn: &Connection) -> rusqlite::Result<(u64, u64, u64)> {
    let (blobs, bytes): (i64, i64) = conn
        .prepare_cached("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let referenced: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(size), 0) FROM blobs b WHERE EXISTS (
                SELECT 1 FROM artifacts a
                WHERE a.sha256 = b.sha256 AND a.status = 'READY' AND a.origin = 'push')",
        )?
        .query_row([], |row| row.get(0))?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok((n(blobs), n(bytes), n(referenced)))
}

/// What one eviction pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Evicted {
    /// Blobs removed.
    pub(crate) blobs: u64,
    /// Their bytes.
    pub(crate) bytes: u64,
    /// Total size of the cache after the pass.
    pub(crate) left: u64,
}

/// Evicts unreferenced, unpinned blobs, least recently used first, until the cache holds
/// at most `bound` bytes (or nothing more can go). Runs on the index thread; the pins stay
/// locked for the whole pass, so a blob pinned before the pass is kept and a pin taken
/// after it finds the blob gone (and downloads again).
pub(crate) fn evict(
    conn: &Connection,
    layout: &Layout,
    bound: u64,
    pins: &Pins,
) -> rusqlite::Result<Evicted> {
    let (_, total, _) = usage(conn)?;
    let mut evicted = Evicted {
        left: total,
        ..Evicted::default()
    };
    if total <= bound {
        return Ok(evicted);
    }
    let candidates: Vec<(String, i64)> = conn
        .prepare_cached(
            "SELECT sha256, size FROM blobs b WHERE NOT EXISTS (
                SELECT 1 FROM artifacts a
                WHERE a.sha256 = b.sha256 AND a.status = 'READY' AND a.origin = 'push')
             ORDER BY used_ms, created_ms",
        )?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let pins = pins.0.lock().unwrap_or_else(PoisonError::into_inner);
    for (sha256, size) in candidates {
        if evicted.left <= bound {
            break;
        }
        if pins.contains_key(&sha256) || !is_digest(&sha256) {
            continue;
        }
        let path = layout.blob_path(&sha256);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %path.display(), cause = %e, "cannot evict blob");
                continue;
            }
        }
        forget_blob(conn, &sha256)?;
        let size = u64::try_from(size).unwrap_or(0);
        evicted.blobs += 1;
        evicted.bytes += size;
        evicted.left = evicted.left.saturating_sub(size);
        debug!(sha256, size, "evicted");
    }
    if evicted.blobs > 0 {
        info!(
            blobs = evicted.blobs,
            bytes = evicted.bytes,
            left = evicted.left,
            bound,
            "evicted from the cache"
        );
    }
    Ok(evicted)
}

/// Deletes a job's rows; returns how many.
pub(crate) fn delete_job_rows(conn: &Connection, job: JobId) -> rusqlite::Result<u64> {
    let n = conn
        .prepare_cached("DELETE FROM artifacts WHERE job = ?1")?
        .execute([job.0 as i64])?;
    Ok(n as u64)
}

/// Whether `s` is 64 lower-case hex digits (a blob's file name).
pub(crate) fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Makes the cache agree with its table after a crash (blocking, at open): removes every
/// temporary file in `cache/tmp`, forgets rows whose blob is missing or of the wrong size,
/// and removes blob files that have no row (renamed in just before a crash). Returns how
/// many blobs or rows were dropped.
pub(crate) fn recover(conn: &mut Connection, layout: &Layout) -> Result<u64, StoreError> {
    let index = |op| move |source| StoreError::Index { op, source };
    if let Ok(entries) = std::fs::read_dir(layout.cache_tmp_dir()) {
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT sha256, size FROM blobs")
        .and_then(|mut stmt| {
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .map_err(index("list cached blobs"))?;
    let mut dropped = 0;
    let mut known = std::collections::HashSet::with_capacity(rows.len());
    let tx = conn.transaction().map_err(index("begin cache recovery"))?;
    for (sha256, size) in rows {
        let path = layout.blob_path(&sha256);
        let ok = is_digest(&sha256)
            && std::fs::symlink_metadata(&path)
                .is_ok_and(|m| m.is_file() && i64::try_from(m.len()).ok() == Some(size));
        if ok {
            known.insert(sha256);
        } else {
            warn!(sha256, "cached blob is missing or damaged; forgetting it");
            let _ = std::fs::remove_file(&path);
            forget_blob(&tx, &sha256).map_err(index("forget cached blob"))?;
            dropped += 1;
        }
    }
    tx.commit().map_err(index("commit cache recovery"))?;
    if let Ok(entries) = std::fs::read_dir(layout.blobs_dir()) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let unknown = name.to_str().is_none_or(|n| !known.contains(n));
            if unknown && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
                dropped += 1;
            }
        }
    }
    Ok(dropped)
}
