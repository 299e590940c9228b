//! The SQLite index: one row per artifact, owned by one dedicated thread.
//!
//! All SQLite work runs on the `artifact-index` thread, never on the async runtime's
//! worker threads: callers send it closures over a channel and await the answer on a
//! `oneshot`. The thread takes every request that is waiting, runs them in one
//! transaction and answers them after the commit, so a burst of status updates costs one
//! commit. Statements are prepared once and cached (`prepare_cached`). The database runs
//! in WAL mode, so other processes can read it while the store writes.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Row, ToSql, params};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::StoreError;
use super::paths::{self, Layout};
use crate::model::{ArtifactPath, ArtifactStatus, ArtifactType, JobId};

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

/// Most requests run in one transaction.
const MAX_BATCH: usize = 256;

/// Reason recorded at open for a transfer that was queued or running when the last
/// process using the store stopped.
pub const REASON_INTERRUPTED: &str = "interrupted";
/// Reason recorded at open for a READY artifact whose file is gone.
pub const REASON_MISSING: &str = "missing after restart";

/// The schema. `origin` is `push` (downloaded by the store) or `create` (a pull artifact
/// the job writes); job ids are stored as the `i64` with the same bits as the `u64`.
/// `blobs` is the shared cache (one row per file in `cache/blobs`, `used_ms` for LRU
/// eviction, `mtime_ns` to notice a blob changed in place); `sources` remembers, per URI,
/// the content last downloaded from it and the server's validators for revalidation.
/// Version 1 (no cache) is upgraded by adding the cache tables.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS artifacts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job        INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    alias      TEXT    NOT NULL,
    uri        TEXT    NOT NULL,
    path       TEXT    NOT NULL UNIQUE,
    status     TEXT    NOT NULL,
    size       INTEGER,
    sha256     TEXT,
    error      TEXT,
    origin     TEXT    NOT NULL DEFAULT 'push',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_job ON artifacts (job, kind, alias);
CREATE INDEX IF NOT EXISTS artifacts_status ON artifacts (status);
CREATE INDEX IF NOT EXISTS artifacts_alias ON artifacts (alias);
CREATE INDEX IF NOT EXISTS artifacts_sha256 ON artifacts (sha256);
CREATE TABLE IF NOT EXISTS blobs (
    sha256     TEXT    PRIMARY KEY,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    used_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_used ON blobs (used_ms);
CREATE TABLE IF NOT EXISTS sources (
    uri           TEXT    PRIMARY KEY,
    sha256        TEXT    NOT NULL,
    etag          TEXT,
    last_modified TEXT,
    fetched_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sources_sha256 ON sources (sha256);
";

/// Columns of an [`ArtifactRecord`], in [`record_from_row`]'s order.
const COLUMNS: &str =
    "id, job, kind, alias, uri, path, status, size, sha256, error, created_ms, updated_ms";

/// One artifact as the index records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    /// Row id: unique, never reused, increasing in push order (the paging key).
    pub id: i64,
    /// The job it belongs to.
    pub job: JobId,
    /// Its type.
    pub kind: ArtifactType,
    /// The alias it was pushed or created with (its file name may carry a `~<n>` suffix).
    pub alias: String,
    /// Where it is downloaded from; empty for a created (pull) artifact.
    pub uri: String,
    /// Its local path.
    pub path: ArtifactPath,
    /// Its status. A created (pull) artifact stays `PENDING`: the job writes its file.
    pub status: ArtifactStatus,
    /// Size in bytes, once READY.
    pub size: Option<u64>,
    /// SHA-256 of the file (lower-case hex), once READY.
    pub sha256: Option<String>,
    /// Why it failed, when FAILED.
    pub error: Option<String>,
    /// When the row was created (Unix time, milliseconds).
    pub created_ms: i64,
    /// When the row last changed (Unix time, milliseconds).
    pub updated_ms: i64,
}

/// Which rows [`Store::list`](crate::Store::list) returns; every field that is `Some` must
/// match (exact match for `alias`, which is the alias as pushed, without `~<n>`).
#[derive(Debug, Clone, Default)]
pub struct ArtifactFilter {
    /// Only this job's artifacts.
    pub job: Option<JobId>,
    /// Only artifacts of this type.
    pub kind: Option<ArtifactType>,
    /// Only artifacts in this status.
    pub status: Option<ArtifactStatus>,
    /// Only artifacts with this alias.
    pub alias: Option<String>,
}

/// A page request: rows with an id greater than `after` (all rows when `None`), at most
/// `limit` of them, in id order. A `limit` of 0 means the default, 100.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Return rows after this id (the previous page's [`ArtifactPage::next`]).
    pub after: Option<i64>,
    /// Most rows to return.
    pub limit: usize,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            after: None,
            limit: DEFAULT_PAGE_LIMIT,
        }
    }
}

/// Default page size.
const DEFAULT_PAGE_LIMIT: usize = 100;

/// One page of [`Store::list`](crate::Store::list).
#[derive(Debug, Clone)]
pub struct ArtifactPage {
    /// The rows, in id order.
    pub records: Vec<ArtifactRecord>,
    /// How many rows match the filter in all (all pages).
    pub total: u64,
    /// How many matching rows come after this page.
    pub remaining: u64,
    /// The `after` of the next page; `None` when this is the last one.
    pub next: Option<i64>,
}

/// What [`Index::insert`] records.
#[derive(Debug, Clone)]
pub(crate) struct NewArtifact {
    /// Its row id (handed out by the store, above every id the index has used).
    pub(crate) id: i64,
    /// The job.
    pub(crate) job: JobId,
    /// Its type.
    pub(crate) kind: ArtifactType,
    /// Its (validated) alias.
    pub(crate) alias: String,
    /// Its URI (empty for a created artifact).
    pub(crate) uri: String,
    /// Its path (a name reserved for it in its directory).
    pub(crate) path: String,
    /// `true` for a pushed artifact, `false` for a created one.
    pub(crate) pushed: bool,
}

/// A status update.
#[derive(Debug, Clone)]
pub(crate) struct StatusUpdate {
    /// Row id.
    pub(crate) id: i64,
    /// New status.
    pub(crate) status: ArtifactStatus,
    /// Size (READY).
    pub(crate) size: Option<u64>,
    /// SHA-256 (READY).
    pub(crate) sha256: Option<String>,
    /// Reason (FAILED).
    pub(crate) error: Option<String>,
}

/// Called after the batch's commit with the commit's error, if any.
type Finish = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;
/// A request to the index thread: run on the connection, or (`None`) not run at all
/// because its batch's transaction was already lost (its `Finish` then gets the error).
type Task = Box<dyn FnOnce(Option<&Connection>) -> Finish + Send>;

/// Handle of the index thread. The thread ends when every handle is dropped, or at
/// [`Index::stop`].
#[derive(Debug)]
pub(crate) struct Index {
    /// Requests to the thread (a std channel: the thread blocks on it); `None` stops it.
    tx: std_mpsc::Sender<Option<Task>>,
    /// The highest row id used when the index was opened.
    last_id: i64,
}

/// A request queued on the index thread; [`Pending::wait`] gives its result.
pub(crate) struct Pending<R> {
    /// What it does, for the error.
    op: &'static str,
    /// The answer, sent after the commit.
    answer: oneshot::Receiver<rusqlite::Result<R>>,
}

impl<R> Pending<R> {
    /// Waits for the request's result (after its transaction committed).
    pub(crate) async fn wait(self) -> Result<R, StoreError> {
        match self.answer.await {
            Ok(result) => result.map_err(|source| StoreError::Index {
                op: self.op,
                source,
            }),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// What opening the index found and repaired.
#[derive(Debug, Default, Clone)]
pub(crate) struct Recovery {
    /// Rows that were PENDING or DOWNLOADING, now FAILED "interrupted".
    pub(crate) interrupted: u64,
    /// READY rows whose file was missing, damaged or of the wrong size, now FAILED.
    pub(crate) damaged: u64,
    /// Temporary files removed.
    pub(crate) temp_files: u64,
    /// Cache blobs (or their rows) dropped because they were missing, damaged or unknown.
    pub(crate) blobs_dropped: u64,
}

impl Index {
    /// Opens (or creates) the index under `layout`, repairs it after a crash (see
    /// [`recover`]) and starts its thread. Blocking.
    pub(crate) fn open(layout: &Layout, verify: bool) -> Result<(Index, Recovery), StoreError> {
        let path = layout.index_path();
        let mut conn = open_connection(&path)?;
        let mut recovery = recover(&mut conn, layout, verify)?;
        recovery.blobs_dropped = super::cache::recover(&mut conn, layout)?;
        let last_id = last_id(&conn).map_err(|source| StoreError::Index {
            op: "read the last row id",
            source,
        })?;
        let (tx, rx) = std_mpsc::channel::<Option<Task>>();
        std::thread::Builder::new()
            .name("artifact-index".into())
            .spawn(move || run(conn, rx))
            .map_err(|source| StoreError::Io {
                op: "start index thread for",
                path,
                source,
            })?;
        Ok((Index { tx, last_id }, recovery))
    }

    /// Runs `f` on the index thread and returns its result.
    pub(crate) async fn call<R, F>(&self, op: &'static str, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        self.submit(op, f).wait().await
    }

    /// Queues `f` for the index thread at once (requests run in the order they are
    /// queued); its result, after the commit, is awaited with [`Pending::wait`].
    pub(crate) fn submit<R, F>(&self, op: &'static str, f: F) -> Pending<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let task: Task = Box::new(move |conn| {
            let result = conn.map(f);
            Box::new(move |commit: Option<&rusqlite::Error>| {
                let result = match (result, commit) {
                    (Some(Ok(_)) | None, Some(e)) => Err(clone_error(e)),
                    (Some(result), _) => result,
                    (None, None) => Err(batch_lost()),
                };
                let _ = reply.send(result);
            })
        });
        // If the thread has stopped, `answer` ends at once and `wait` says `Closed`.
        let _ = self.tx.send(Some(task));
        Pending { op, answer }
    }

    /// Runs every request queued so far, then stops the thread: later requests fail
    /// with [`StoreError::Closed`]. Returns once the thread no longer writes.
    pub(crate) async fn stop(&self) {
        let (done, stopped) = oneshot::channel::<()>();
        // Dropped by the thread when it ends, after the requests queued before it.
        let task: Task = Box::new(move |_| {
            Box::new(move |_| {
                let _ = done.send(());
            })
        });
        if self.tx.send(Some(task)).is_ok() && self.tx.send(None).is_ok() {
            let _ = stopped.await;
        }
    }

    /// Runs `f` on the index thread without waiting for it; a failure is logged.
    pub(crate) fn cast<F>(&self, op: &'static str, f: F)
    where
        F: FnOnce(&Connection) -> rusqlite::Result<()> + Send + 'static,
    {
        let task: Task = Box::new(move |conn| {
            let result = conn.map(f).unwrap_or_else(|| Err(batch_lost()));
            Box::new(move |commit: Option<&rusqlite::Error>| {
                if let Err(e) = result.as_ref().map_err(|e| e as &dyn std::fmt::Display) {
                    warn!(op, cause = %e, "index update failed");
                } else if let Some(e) = commit {
                    warn!(op, cause = %e, "index commit failed");
                }
            })
        });
        if self.tx.send(Some(task)).is_err() {
            warn!(op, "index thread has stopped; update dropped");
        }
    }

    /// Queues the insert of a new row (id and path chosen by the store); returns at once.
    pub(crate) fn insert(&self, new: NewArtifact) -> Pending<()> {
        self.submit("insert artifact", move |conn| insert(conn, &new))
    }

    /// Alias and path of every row of the job's directory for `kind` (the names in use).
    pub(crate) async fn dir_rows(
        &self,
        job: JobId,
        kind: ArtifactType,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.call("list names in use", move |conn| {
            let mut stmt = conn
                .prepare_cached("SELECT alias, path FROM artifacts WHERE job = ?1 AND kind = ?2")?;
            let rows = stmt.query_map(params![job_key(job), kind.as_str()], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?;
            rows.collect()
        })
        .await
    }

    /// The highest row id the index has ever used (ids are never reused).
    pub(crate) fn last_id(&self) -> i64 {
        self.last_id
    }

    /// Records a status change (waits for the commit).
    pub(crate) async fn update(&self, update: StatusUpdate) -> Result<(), StoreError> {
        self.call("update artifact status", move |conn| {
            apply_update(conn, &update)
        })
        .await
    }

    /// Records a status change without waiting.
    pub(crate) fn update_later(&self, update: StatusUpdate) {
        self.cast("update artifact status", move |conn| {
            apply_update(conn, &update)
        });
    }

    /// The row whose path is `path`.
    pub(crate) async fn get_by_path(
        &self,
        path: String,
    ) -> Result<Option<ArtifactRecord>, StoreError> {
        self.call("look up artifact", move |conn| {
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM artifacts WHERE path = ?1"))?
                .query_row([path], record_from_row)
                .optional()
        })
        .await
    }

    /// One page of the rows that match `filter`.
    pub(crate) async fn list(
        &self,
        filter: ArtifactFilter,
        page: Page,
    ) -> Result<ArtifactPage, StoreError> {
        self.call("list artifacts", move |conn| list(conn, &filter, page))
            .await
    }
}

/// Current Unix time in milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The `i64` stored for a job id (same bits).
fn job_key(job: JobId) -> i64 {
    job.0 as i64
}

/// A copy of a commit error, for every request of the batch.
/// The error of requests whose batch's transaction an error ended (SQLite rolls a
/// transaction back by itself on, e.g., a full disk or an I/O error).
fn batch_lost() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some("an error rolled back the transaction of this request's batch".to_owned()),
    )
}

fn clone_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!("commit failed: {other}")),
        ),
    }
}

/// Opens the database, sets WAL mode and creates or checks the schema.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let index = |op| move |source| StoreError::Index { op, source };
    let conn = Connection::open(path).map_err(index("open database"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(index("set busy timeout"))?;
    // Two statements per filter combination in `list`, plus the rest.
    conn.set_prepared_statement_cache_capacity(64);
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(index("enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        warn!(mode, "the index could not switch to WAL mode");
    }
    // Checkpoints (each with fsyncs) every ~40 MiB of WAL instead of every 4 MiB: a burst
    // of small artifacts writes a few pages per file; the WAL file is cut back to 64 MiB
    // after a checkpoint.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 10000; \
         PRAGMA journal_size_limit = 67108864;",
    )
    .map_err(index("set synchronous"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(index("read schema version"))?;
    if version != 0 && version != SCHEMA_VERSION {
        return Err(StoreError::IndexVersion {
            path: path.to_owned(),
            found: version,
            expected: SCHEMA_VERSION,
        });
    }
    conn.execute_batch(SCHEMA).map_err(index("create schema"))?;
    conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
        .map_err(index("write schema version"))?;
    Ok(conn)
}

/// Makes the index and the files agree after a crash:
///
/// - pushed rows that were `PENDING` or `DOWNLOADING` become `FAILED` "interrupted", and a
///   file at their path (renamed into place just before the crash) is removed;
/// - temporary files (`.<alias>.<id>.part`) under `jobs/` are removed;
/// - every `READY` row's file must exist with its recorded size (and, with `verify`, its
///   recorded SHA-256); otherwise the file is removed and the row becomes `FAILED`
///   "missing after restart" (or a reason saying what differs).
///
/// Created (pull) rows and their files are left alone.
fn recover(conn: &mut Connection, layout: &Layout, verify: bool) -> Result<Recovery, StoreError> {
    let index = |op| move |source| StoreError::Index { op, source };
    let mut recovery = Recovery::default();
    let now = now_ms();
    let tx = conn.transaction().map_err(index("begin recovery"))?;
    let known: std::collections::HashSet<String>;
    {
        // Interrupted transfers.
        let mut stmt = tx
            .prepare(
                "SELECT id, path FROM artifacts
                 WHERE origin = 'push' AND status IN ('PENDING', 'DOWNLOADING')",
            )
            .map_err(index("find interrupted transfers"))?;
        let rows: Vec<(i64, String)> = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(index("find interrupted transfers"))?;
        for (id, path) in rows {
            remove_artifact_file(layout, Path::new(&path));
            tx.execute(
                "UPDATE artifacts SET status = 'FAILED', error = ?1, size = NULL, sha256 = NULL,
                 updated_ms = ?2 WHERE id = ?3",
                params![REASON_INTERRUPTED, now, id],
            )
            .map_err(index("mark interrupted transfer"))?;
            recovery.interrupted += 1;
        }

        // READY files must be there, whole, and still their content: re-hashed when
        // their modification time is not their blob's (or with `verify`).
        let mut stmt = tx
            .prepare(
                "SELECT a.id, a.path, a.size, a.sha256, b.mtime_ns
                 FROM artifacts a LEFT JOIN blobs b ON b.sha256 = a.sha256
                 WHERE a.status = 'READY'",
            )
            .map_err(index("find ready artifacts"))?;
        type ReadyRow = (i64, String, Option<i64>, Option<String>, Option<i64>);
        let rows: Vec<ReadyRow> = stmt
            .query_map([], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .and_then(Iterator::collect)
            .map_err(index("find ready artifacts"))?;
        for (id, path, size, sha256, blob_mtime) in rows {
            let expected = ReadyFile {
                size,
                sha256: sha256.as_deref(),
                blob_mtime,
            };
            let Some(reason) = check_ready_file(Path::new(&path), &expected, verify) else {
                continue;
            };
            warn!(path, reason, "READY artifact is damaged; marking it FAILED");
            remove_artifact_file(layout, Path::new(&path));
            tx.execute(
                "UPDATE artifacts SET status = 'FAILED', error = ?1, updated_ms = ?2 WHERE id = ?3",
                params![reason, now, id],
            )
            .map_err(index("mark damaged artifact"))?;
            recovery.damaged += 1;
        }

        let mut stmt = tx
            .prepare("SELECT path FROM artifacts")
            .map_err(index("list artifact paths"))?;
        known = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .and_then(Iterator::collect)
            .map_err(index("list artifact paths"))?;
    }
    tx.commit().map_err(index("commit recovery"))?;
    recovery.temp_files = remove_temp_files(&layout.jobs_dir(), &known);
    if recovery.interrupted + recovery.damaged + recovery.temp_files > 0 {
        warn!(
            interrupted = recovery.interrupted,
            damaged = recovery.damaged,
            temp_files = recovery.temp_files,
            "repaired the store after an unclean stop"
        );
    }
    Ok(recovery)
}

/// What a READY row says its file is.
struct ReadyFile<'a> {
    /// Its size.
    size: Option<i64>,
    /// Its SHA-256.
    sha256: Option<&'a str>,
    /// The modification time of its blob, when the cache has a row for it: a job's file
    /// is a hard link of the blob (a copy gets the blob's time too), so another time
    /// means the file was written since.
    blob_mtime: Option<i64>,
}

/// Why a READY row's file is not acceptable, or `None` when it is. The content is
/// re-hashed when `verify` is set or the file's modification time is not its blob's.
fn check_ready_file(path: &Path, expected: &ReadyFile<'_>, verify: bool) -> Option<String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return Some(format!("{REASON_MISSING}: not a regular file")),
        Err(_) => return Some(REASON_MISSING.to_owned()),
    };
    if let Some(size) = expected.size
        && u64::try_from(size).ok() != Some(meta.len())
    {
        return Some(format!(
            "size mismatch after restart: expected {size} bytes, found {}",
            meta.len()
        ));
    }
    let rehash = verify || expected.blob_mtime != Some(super::cache::mtime_ns(&meta));
    if rehash && let Some(expected) = expected.sha256 {
        match super::fetch::hash_file(path) {
            Ok(got) if got == expected => {}
            Ok(got) => {
                return Some(format!(
                    "sha256 mismatch after restart: expected {expected}, got {got}"
                ));
            }
            Err(e) => return Some(format!("unreadable after restart: {e}")),
        }
    }
    None
}

/// Removes the file at an artifact's path, if it is under the root's `jobs` directory.
fn remove_artifact_file(layout: &Layout, path: &Path) {
    if !layout.is_inside(path) {
        warn!(path = %path.display(), "index row points outside the store; not touching it");
        return;
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "removed"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %path.display(), cause = %e, "cannot remove file"),
    }
}

/// Removes temporary files in `jobs/<job>/<type>/` that are not artifact paths; returns
/// how many.
fn remove_temp_files(jobs: &Path, known: &std::collections::HashSet<String>) -> u64 {
    let mut removed = 0;
    let dirs = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for job_dir in dirs(jobs) {
        for type_dir in dirs(&job_dir) {
            let Ok(entries) = std::fs::read_dir(&type_dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let is_file = entry.file_type().is_ok_and(|t| t.is_file());
                let name = entry.file_name();
                let temp = name.to_str().is_some_and(paths::is_temp_name);
                let known = path.to_str().is_some_and(|p| known.contains(p));
                if is_file && temp && !known {
                    match std::fs::remove_file(&path) {
                        Ok(()) => removed += 1,
                        Err(e) => {
                            warn!(path = %path.display(), cause = %e, "cannot remove temporary file")
                        }
                    }
                }
            }
        }
    }
    removed
}

/// The index thread: runs requests in batches, one transaction per batch, until every
/// handle is gone or a `None` arrives (requests queued after it are dropped unanswered).
fn run(conn: Connection, rx: std_mpsc::Receiver<Option<Task>>) {
    let mut stop = false;
    while !stop && let Ok(Some(first)) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Some(task)) => batch.push(task),
                Ok(None) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let in_tx = match conn.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => true,
            Err(e) => {
                warn!(cause = %e, "cannot begin a transaction; running requests one by one");
                false
            }
        };
        // If a request's error ends the transaction (SQLite rolls it back by itself on a
        // full disk, an I/O error, ...), the requests after it must not run outside it
        // and be committed one by one while the batch is reported as failed: they are
        // not run, and every request of the batch gets the error.
        let mut lost = false;
        let finishers: Vec<Finish> = batch
            .into_iter()
            .map(|task| {
                if lost {
                    return task(None);
                }
                let finish = task(Some(&conn));
                lost = in_tx && conn.is_autocommit();
                finish
            })
            .collect();
        let commit = if lost {
            warn!("an error rolled back a batch of index requests");
            Some(batch_lost())
        } else if in_tx {
            conn.execute_batch("COMMIT").err()
        } else {
            None
        };
        if let Some(e) = &commit {
            warn!(cause = %e, "index commit failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
        for finish in finishers {
            finish(commit.as_ref());
        }
    }
    debug!("index thread stopping");
}

/// Inserts a row with the id and path the store chose.
fn insert(conn: &Connection, new: &NewArtifact) -> rusqlite::Result<()> {
    let now = now_ms();
    let origin = if new.pushed { "push" } else { "create" };
    conn.prepare_cached(
        "INSERT INTO artifacts (id, job, kind, alias, uri, path, status, origin, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'PENDING', ?7, ?8, ?8)",
    )?
    .execute(params![
        new.id,
        job_key(new.job),
        new.kind.as_str(),
        new.alias,
        new.uri,
        new.path,
        origin,
        now
    ])?;
    Ok(())
}

/// The highest row id ever used: `sqlite_sequence` remembers ids of deleted rows too.
fn last_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'artifacts'), 0),
                    COALESCE((SELECT MAX(id) FROM artifacts), 0))",
        [],
        |row| row.get(0),
    )
}

/// Applies a status change.
fn apply_update(conn: &Connection, u: &StatusUpdate) -> rusqlite::Result<()> {
    let size = u.size.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    let changed = conn
        .prepare_cached(
            "UPDATE artifacts SET status = ?1, size = ?2, sha256 = ?3, error = ?4, updated_ms = ?5
             WHERE id = ?6",
        )?
        .execute(params![
            u.status.as_str(),
            size,
            u.sha256,
            u.error,
            now_ms(),
            u.id
        ])?;
    if changed == 0 {
        // The job was removed meanwhile: a status without a row would be READY for a
        // file the index does not know (nor protects from eviction).
        return Err(rusqlite::Error::ToSqlConversionFailure(
            format!("row {} is gone (its job was removed)", u.id).into(),
        ));
    }
    Ok(())
}

/// One page of matching rows, with counts.
fn list(conn: &Connection, filter: &ArtifactFilter, page: Page) -> rusqlite::Result<ArtifactPage> {
    let mut clauses: Vec<&str> = Vec::new();
    let mut values: Vec<Box<dyn ToSql>> = Vec::new();
    if let Some(job) = filter.job {
        clauses.push("job = ?");
        values.push(Box::new(job_key(job)));
    }
    if let Some(kind) = filter.kind {
        clauses.push("kind = ?");
        values.push(Box::new(kind.as_str()));
    }
    if let Some(status) = filter.status {
        clauses.push("status = ?");
        values.push(Box::new(status.as_str()));
    }
    if let Some(alias) = &filter.alias {
        clauses.push("alias = ?");
        values.push(Box::new(alias.clone()));
    }
    let filter_sql = if clauses.is_empty() {
        "1".to_owned()
    } else {
        clauses.join(" AND ")
    };
    fn refs<'a>(values: &'a [Box<dyn ToSql>], extra: &[&'a dyn ToSql]) -> Vec<&'a dyn ToSql> {
        values
            .iter()
            .map(|v| v.as_ref() as &dyn ToSql)
            .chain(extra.iter().copied())
            .collect()
    }
    let count_after = |after: i64| -> rusqlite::Result<u64> {
        let n: i64 = conn
            .prepare_cached(&format!(
                "SELECT COUNT(*) FROM artifacts WHERE {filter_sql} AND id > ?"
            ))?
            .query_row(
                rusqlite::params_from_iter(refs(&values, &[&after])),
                |row| row.get(0),
            )?;
        Ok(u64::try_from(n).unwrap_or(0))
    };

    let total = count_after(i64::MIN)?;
    let limit = if page.limit == 0 {
        DEFAULT_PAGE_LIMIT
    } else {
        page.limit
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let after = page.after.unwrap_or(i64::MIN);
    let records: Vec<ArtifactRecord> = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM artifacts WHERE {filter_sql} AND id > ? ORDER BY id LIMIT ?"
        ))?
        .query_map(
            rusqlite::params_from_iter(refs(&values, &[&after, &limit])),
            record_from_row,
        )?
        .collect::<rusqlite::Result<_>>()?;
    let last = records.last().map_or(after, |r| r.id);
    let remaining = count_after(last)?;
    let next = (remaining > 0 && !records.is_empty()).then_some(last);
    Ok(ArtifactPage {
        records,
        total,
        remaining,
        next,
    })
}

/// Reads a row selected with [`COLUMNS`].
fn record_from_row(row: &Row<'_>) -> rusqlite::Result<ArtifactRecord> {
    let text_error = |col: usize, what: &str, value: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            col,
            rusqlite::types::Type::Text,
            format!("unknown {what} {value:?}").into(),
        )
    };
    let kind: String = row.get(2)?;
    let kind = match kind.as_str() {
        "image" => ArtifactType::Image,
        "result" => ArtifactType::Result,
        "test" => ArtifactType::Test,
        "yaml" => ArtifactType::Yaml,
        other => return Err(text_error(2, "artifact type", other)),
    };
    let status: String = row.get(6)?;
    let status = match status.as_str() {
        "PENDING" => ArtifactStatus::Pending,
        "DOWNLOADING" => ArtifactStatus::Downloading,
        "READY" => ArtifactStatus::Ready,
        "FAILED" => ArtifactStatus::Failed,
        other => return Err(text_error(6, "artifact status", other)),
    };
    let job: i64 = row.get(1)?;
    let size: Option<i64> = row.get(7)?;
    Ok(ArtifactRecord {
        id: row.get(0)?,
        job: JobId(job as u64),
        kind,
        alias: row.get(3)?,
        uri: row.get(4)?,
        path: ArtifactPath(row.get(5)?),
        status,
        size: size.map(|s| u64::try_from(s).unwrap_or(0)),
        sha256: row.get(8)?,
        error: row.get(9)?,
        created_ms: row.get(10)?,
        updated_ms: row.get(11)?,
    })
}
