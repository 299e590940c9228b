//! The [`Store`]: the real [`ArtifactManager`]. Files on disk under one root, an embedded
//! SQLite index, and a bounded pool of HTTP(S)/`file://` transfers.
//!
//! # Layout
//!
//! - `mod.rs` (this file): the [`Store`] handle, the [`ArtifactManager`] implementation,
//!   per-job cancellation and the life of one transfer (queue, status changes, placing).
//! - `builder`: [`StoreBuilder`] and the defaults.
//! - `index`: the SQLite index on its own thread; [`ArtifactRecord`], [`ArtifactFilter`],
//!   [`Page`], [`ArtifactPage`]; crash recovery at open.
//! - `paths`: the directory layout, alias validation, temporary file names.
//! - `staging`: a transfer's temporary file (unnamed `O_TMPFILE` where possible) and how
//!   it is sealed onto its blob.
//! - `fetch`: the transfer engine (streaming, hashing, retries, resume, verification,
//!   conditional requests, byte meters).
//! - `cache`: the content-addressed cache (blobs, pins, single-flight table, eviction).
//! - `transfer`: the life of one pushed artifact and of one shared download.
//! - `pool`: the FIFO worker pool.
//! - `error`: [`StoreError`].

mod builder;
mod cache;
mod dirsync;
mod error;
mod fetch;
mod index;
mod names;
mod paths;
mod pool;
mod staging;
mod transfer;
mod writeback;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, info, instrument, warn};

pub use builder::{
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_TRANSFERS, DEFAULT_PROGRESS_INTERVAL,
    DEFAULT_RETRY_AFTER_CAP, DEFAULT_WORKERS, StoreBuilder,
};
pub use cache::{ByteProgress, CacheStats};
pub use error::StoreError;
pub use index::{
    ArtifactFilter, ArtifactPage, ArtifactRecord, Page, REASON_INTERRUPTED, REASON_MISSING,
};

use builder::Settings;
use cache::{BlobRow, Cache, Landed, Pin};
use dirsync::DirSyncs;
use fetch::{Fetcher, Source, SourceError, Validators};
use index::{Index, NewArtifact};
use paths::Layout;
use pool::Pool;
use transfer::Transfer;

use crate::error::BoxError;
use crate::model::{
    ArtifactDescription, ArtifactPath, ArtifactStatus, ArtifactStatusChange, ArtifactType, JobId,
};
use crate::traits::ArtifactManager;

/// Reason of a transfer stopped by [`ArtifactManager::cancel_job`].
pub const REASON_CANCELLED: &str = "cancelled";
/// Reason of a transfer stopped because the store was closed or dropped.
pub const REASON_CLOSED: &str = "store closed";

/// The real [`ArtifactManager`]: downloads artifacts into a directory tree, records them
/// in an SQLite index, and reports their statuses.
///
/// A `Store` is a cheap handle (an `Arc` inside): clone it freely, for example into a
/// [`Downloader`](crate::Downloader) and into code that calls [`Store::list`]. When the
/// last clone is dropped, transfers still running are cancelled (`FAILED`, reason
/// `"store closed"`) and the index is closed once they have stopped.
///
/// # Layout
///
/// ```text
/// <root>/index.sqlite                      the index (WAL: also -wal and -shm)
/// <root>/jobs/<job>/<type>/<alias>         artifacts; <type> is image, result, test or yaml
/// <root>/jobs/<job>/<type>/<alias>~1       a second artifact with the same alias
/// <root>/jobs/<job>/<type>/.<alias>.<id>.part   a copy being made (copy mode)
/// <root>/cache/blobs/<sha256>              the shared cache: verified, read-only blobs
/// <root>/cache/tmp/<n>.part                a transfer in progress (on Linux an unnamed
///                                          O_TMPFILE in cache/tmp instead: nothing to see)
/// ```
///
/// # The shared cache
///
/// Every download lands in the cache first; the job's path is a read-only hard link to
/// the blob (see the `cache` module's notes, [`StoreBuilder::copy_job_files`]). A push
/// with an expected `sha256` that is cached needs no request; pushes of one URI in flight
/// at the same time share one transfer; a push without a digest revalidates with the
/// server (or downloads) and is never answered on the URL alone; see
/// [`StoreBuilder::cache_max_bytes`] for eviction and [`Store::remove_job`].
///
/// # Guarantees
///
/// - A path reported `READY` holds the complete file, verified against the description's
///   `sha256` and checksum file when it has them: files are streamed to a temporary file
///   in `cache/tmp` (unnamed where the file system allows), hashed on the fly, fsynced
///   (unless switched off), atomically named as their blob (linked, or renamed), and
///   linked (atomically) at the job's path, whose directory is then fsynced. A `FAILED`
///   artifact leaves neither a file nor a temporary file; an unnamed temporary file
///   vanishes even when the process is killed.
/// - Memory per transfer is constant (two 1 MiB buffers: one collecting from the
///   network while the other is hashed and written), whatever the file's size.
/// - Aliases are plain file names and nothing is written outside the root.
/// - SQLite never runs on the async runtime's worker threads.
/// - Opening a root after a crash makes it consistent again: transfers that were queued
///   or running become `FAILED` with reason `"interrupted"`, temporary files are removed,
///   and a `READY` row whose file is missing or has the wrong size becomes `FAILED` with
///   reason `"missing after restart"` (or `"size mismatch after restart: ..."`). A READY
///   file whose modification time is not its blob's (it was written since) is re-hashed
///   and becomes `FAILED` (`"sha256 mismatch after restart: ..."`) if its content
///   changed; see [`StoreBuilder::verify_on_open`] to re-hash every one.
///
/// # Created (pull) artifacts
///
/// [`create_artifact`](ArtifactManager::create_artifact) records a row with status
/// `PENDING` and no URI, and creates the parent directory. The store never downloads
/// or changes it: the job writes the file. Recovery at open leaves such rows and their
/// files alone.
///
/// # One store per root
///
/// Only one `Store` (in one process) may have a root open at a time: opening runs the
/// crash recovery above, which would fail the other store's transfers, and the store
/// hands out row ids and file names from memory, so it must be the index's only writer
/// (other processes may read it). Opening takes an exclusive lock on `<root>/store.lock`
/// (`flock`), held until [`Store::close`] or the drop of the store's last clone; a second
/// open of the same root, in this process or another, fails with [`StoreError::Locked`].
/// The kernel releases the lock of a process that dies.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use std::sync::Arc;
/// use artifact_coordinator::{ArtifactDescription, ArtifactManager, ArtifactType, JobId, Store};
/// use tokio::sync::mpsc;
///
/// let store = Store::open("/var/lib/artifacts").await?;
/// let (tx, mut rx) = mpsc::channel(64);
/// let description = ArtifactDescription::new(
///     JobId(1), ArtifactType::Image, "Image_0", "https://files.example/boot.img");
/// let path = store.push_artifact(description, tx).await?;
/// while let Some(change) = rx.recv().await {
///     println!("{}: {}", change.path, change.status);
///     if change.status.is_terminal() { break; }
/// }
/// let record = store.info(&path).await?.expect("recorded");
/// println!("{} bytes, sha256 {:?}", record.size.unwrap_or(0), record.sha256);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Store {
    /// Shared by every clone; its drop (with the last clone) cancels the transfers.
    handle: Arc<Handle>,
}

/// What the clones of a [`Store`] share.
struct Handle {
    /// The state transfers share too (they hold it while they run).
    core: Arc<Core>,
    /// Cancels every transfer when the last `Store` clone is dropped. Transfers do not
    /// hold the handle, only the core, so they cannot keep it alive.
    _cancel_on_drop: DropGuard,
}

/// The store's state, shared by the handles and the running transfers.
struct Core {
    /// The root's exclusive lock, held until [`Store::close`] or the drop of the last
    /// clone.
    lock: Mutex<Option<std::fs::File>>,
    /// Directory layout under the canonical root.
    layout: Layout,
    /// Settings from the builder.
    settings: Settings,
    /// The index thread.
    index: Index,
    /// The transfer engine (with the one HTTP client).
    fetcher: Fetcher,
    /// One slot per worker: a transfer runs only while it holds one. Places are taken at
    /// push time, so the queue is served in push order.
    pool: Arc<Pool>,
    /// Per-job cancellation and tracking of the job's transfers. A std mutex: it is held
    /// only for map operations, never across an await.
    jobs: Mutex<HashMap<JobId, JobEntry>>,
    /// Parent of every job's token; cancelled by [`Store::close`] and on drop.
    root_token: CancellationToken,
    /// Every transfer until it has stopped touching files and the index (the collector
    /// send comes after), for [`Store::close`].
    tasks: TaskTracker,
    /// Source of [`JobEntry::generation`].
    generations: std::sync::atomic::AtomicU64,
    /// The shared cache's flights, pins and progress channel.
    cache: Arc<Cache>,
    /// Job directories known to exist (made or checked by this store), so that a push
    /// does not check them again; forgotten by [`Store::remove_job`].
    dirs_made: Mutex<std::collections::HashSet<(JobId, ArtifactType)>>,
    /// Group commit of directory fsyncs.
    dir_syncs: Arc<DirSyncs>,
    /// Row ids and file names handed out without waiting for the index.
    names: names::Names,
    /// One permit per transfer queued or running ([`StoreBuilder::max_transfers`]).
    room: Arc<tokio::sync::Semaphore>,
}

/// Takes the exclusive lock of the store at `root` (see "One store per root" on [`Store`]).
/// Blocking.
fn lock_root(root: &Path) -> Result<std::fs::File, StoreError> {
    let path = root.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Io {
            op: "open lock file",
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            root: root.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(StoreError::Io {
            op: "lock",
            path,
            source,
        }),
    }
}

/// The lock file in the root (see [`lock_root`]).
const LOCK_FILE: &str = "store.lock";

/// An artifact given its row and path by [`Core::record`].
struct Recorded {
    /// The job's directory for the artifact's type.
    dir: PathBuf,
    /// Its row id.
    id: i64,
    /// Its path.
    path: String,
    /// The row's insert, queued.
    inserted: index::Pending<()>,
}

/// A job with transfers in flight.
struct JobEntry {
    /// Cancelled by `cancel_job`; a child of the root token.
    token: CancellationToken,
    /// The job's transfers, until they have cleaned up (the collector send comes after),
    /// so `cancel_job` can wait for them without waiting on the collector.
    tracker: TaskTracker,
    /// Tells this entry from a later one for the same job.
    generation: u64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &self.handle.core;
        f.debug_struct("Store")
            .field("root", &core.layout.root())
            .field("settings", &core.settings)
            .field("running", &core.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root` with the default settings (see
    /// [`StoreBuilder`] for them), and repairs it if the last process using it crashed.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the root cannot be created or read,
    /// [`StoreError::RootNotUtf8`], [`StoreError::Index`] /
    /// [`StoreError::IndexVersion`] when the index cannot be opened,
    /// [`StoreError::Client`] when the TLS backend cannot start.
    pub async fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with(root.as_ref(), Settings::default()).await
    }

    /// A builder for a store with non-default settings.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    /// Opens the store with `settings`.
    pub(crate) async fn open_with(root: &Path, settings: Settings) -> Result<Store, StoreError> {
        let verify = settings.verify_on_open;
        let named_temps = settings.named_temps;
        let owned = root.to_owned();
        let (layout, index, recovery, lock) = blocking(root, "open store", move || {
            let root = owned;
            let mut layout = Layout::create(&root)?;
            let lock = lock_root(layout.root())?;
            if named_temps {
                layout.use_named_temps();
            }
            let (index, recovery) = Index::open(&layout, verify)?;
            Ok((layout, index, recovery, lock))
        })
        .await?;
        let fetcher = Fetcher::new(&settings).map_err(|source| StoreError::Client { source })?;
        info!(
            root = %layout.root().display(),
            workers = settings.workers,
            interrupted = recovery.interrupted,
            damaged = recovery.damaged,
            temp_files = recovery.temp_files,
            blobs_dropped = recovery.blobs_dropped,
            "store opened"
        );
        let root_token = CancellationToken::new();
        let last_id = index.last_id();
        let max_transfers = settings
            .max_transfers
            .clamp(settings.workers, tokio::sync::Semaphore::MAX_PERMITS);
        let core = Arc::new(Core {
            lock: Mutex::new(Some(lock)),
            layout,
            pool: Pool::new(settings.workers),
            settings,
            index,
            fetcher,
            jobs: Mutex::new(HashMap::new()),
            root_token: root_token.clone(),
            tasks: TaskTracker::new(),
            generations: std::sync::atomic::AtomicU64::new(0),
            cache: Cache::new(),
            dirs_made: Mutex::default(),
            dir_syncs: Arc::default(),
            names: names::Names::new(last_id),
            room: Arc::new(tokio::sync::Semaphore::new(max_transfers)),
        });
        Ok(Store {
            handle: Arc::new(Handle {
                core,
                _cancel_on_drop: root_token.drop_guard(),
            }),
        })
    }

    /// The store's root directory, canonical (symbolic links resolved). Artifact paths
    /// start with it.
    pub fn root(&self) -> &Path {
        self.handle.core.layout.root()
    }

    /// The index row of the artifact at `path` (as returned by `push_artifact` or
    /// `create_artifact`), or `None` when the store has no artifact there.
    ///
    /// # Errors
    ///
    /// [`StoreError::Index`] when the query fails, [`StoreError::Closed`].
    pub async fn info(&self, path: &ArtifactPath) -> Result<Option<ArtifactRecord>, StoreError> {
        self.handle.core.index.get_by_path(path.0.clone()).await
    }

    /// One page of the index rows matching `filter`, in id order, with the total number
    /// of matches and how many come after this page. Pass the page's
    /// [`next`](ArtifactPage::next) as the next [`Page::after`] to continue.
    ///
    /// # Errors
    ///
    /// [`StoreError::Index`] when the query fails, [`StoreError::Closed`].
    pub async fn list(
        &self,
        filter: ArtifactFilter,
        page: Page,
    ) -> Result<ArtifactPage, StoreError> {
        self.handle.core.index.list(filter, page).await
    }

    /// Like [`ArtifactManager::push_artifact`], with the store's own error type.
    ///
    /// Checks the description (alias, URI scheme, expected digest, checksum URI), records
    /// the artifact as `PENDING`, sends `PENDING` on `collector`, queues the transfer and
    /// returns its path. Nothing here waits for the disk: the path is reserved in memory
    /// and the row's insert queued on the index thread (a later [`list`](Self::list) or
    /// [`info`](Self::info) sees it); only the first push of a job reads the index for
    /// the names its directory already uses. If the collector is full, `PENDING` is sent
    /// by the transfer right after; if the insert fails, the artifact goes `FAILED` with
    /// the index's error. When [`StoreBuilder::max_transfers`] transfers are queued or
    /// running, the push first waits for one of them to end. `DOWNLOADING` and then
    /// `READY` or `FAILED` (with its reason) follow on `collector` and in the index. Statuses are sent with `send().await`;
    /// errors (the receiver is gone) are ignored, and no worker is held while the
    /// terminal status waits for room in the channel.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidAlias`], [`StoreError::UnsupportedScheme`],
    /// [`StoreError::InvalidUri`], [`StoreError::InvalidDigest`] (nothing is recorded),
    /// [`StoreError::OutsideRoot`] / [`StoreError::Io`] when the directory cannot be
    /// made, [`StoreError::Index`], [`StoreError::Closed`] after [`Store::close`],
    /// [`StoreError::Cancelled`] when [`Store::cancel`] runs for the job while the push
    /// waits for room (nothing is recorded).
    #[instrument(skip_all, fields(job = %description.job, alias = %description.alias))]
    pub async fn push(
        &self,
        description: ArtifactDescription,
        collector: mpsc::Sender<ArtifactStatusChange>,
    ) -> Result<ArtifactPath, StoreError> {
        let core = &self.handle.core;
        if core.root_token.is_cancelled() {
            return Err(StoreError::Closed);
        }
        let ArtifactDescription {
            job,
            kind,
            alias,
            uri,
            sha256,
            checksum,
        } = description;
        paths::validate_alias(job, &alias)?;
        let source = core.source(job, &alias, &uri)?;
        let sha256 = match sha256 {
            Some(value) => {
                let value = value.trim();
                if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(StoreError::InvalidDigest {
                        job,
                        alias,
                        value: value.to_owned(),
                    });
                }
                Some(value.to_ascii_lowercase())
            }
            None => None,
        };
        let checksum = match checksum {
            Some(c) => Some((core.source(job, &alias, &c.uri)?, c)),
            None => None,
        };
        // First the job registration, so that a `cancel_job` that runs while this push is
        // under way cancels it too (or its transfer); then a place among the transfers
        // (the only wait that can be long). Once the name is reserved nothing waits: the
        // row's insert is queued, PENDING sent if the collector has room (else by the
        // transfer, first thing) and the transfer spawned, so a caller that stops waiting
        // cannot separate the row from its transfer.
        let guard = core.register(job);
        let room = tokio::select! {
            biased;
            () = core.root_token.cancelled() => return Err(StoreError::Closed),
            () = guard.cancel.cancelled() => {
                return Err(StoreError::Cancelled { job, alias });
            }
            room = Arc::clone(&core.room).acquire_owned() => {
                room.map_err(|_| StoreError::Closed)?
            }
        };
        let Recorded {
            dir,
            id,
            path,
            inserted,
        } = core.record(job, kind, &alias, &uri, true).await?;
        let path = ArtifactPath(path);
        debug!(id, %path, %uri, "queued");
        let pending = match collector.try_send(ArtifactStatusChange::new(
            path.clone(),
            ArtifactStatus::Pending,
        )) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
            Err(mpsc::error::TrySendError::Full(change)) => Some(change),
        };
        let slot = core.pool.enqueue();
        let transfer = Transfer {
            core: Arc::clone(core),
            id,
            job,
            alias,
            uri,
            source,
            sha256,
            checksum,
            path: path.clone(),
            kind,
            dir,
            collector,
            guard,
            room,
            inserted: Some(inserted),
            pending,
            slot: Some(slot),
            hold: None,
            published: None,
        };
        tokio::spawn(transfer.run());
        Ok(path)
    }

    /// Like [`ArtifactManager::create_artifact`], with the store's own error type: checks
    /// the alias, creates the directory, records the artifact (status `PENDING`, never
    /// downloaded) and returns its path.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidAlias`], [`StoreError::OutsideRoot`], [`StoreError::Io`],
    /// [`StoreError::Index`], [`StoreError::Closed`].
    #[instrument(skip_all, fields(job = %description.job, alias = %description.alias))]
    pub async fn create(
        &self,
        description: ArtifactDescription,
    ) -> Result<ArtifactPath, StoreError> {
        let core = &self.handle.core;
        if core.root_token.is_cancelled() {
            return Err(StoreError::Closed);
        }
        paths::validate_alias(description.job, &description.alias)?;
        let ArtifactDescription {
            job,
            kind,
            alias,
            uri,
            ..
        } = description;
        // Held while the row is recorded, so the job's names stay loaded meanwhile.
        let _guard = core.register(job);
        let Recorded {
            id, path, inserted, ..
        } = core.record(job, kind, &alias, &uri, false).await?;
        inserted.wait().await?;
        debug!(id, path, "created");
        Ok(ArtifactPath(path))
    }

    /// Like [`ArtifactManager::cancel_job`]: stops the job's queued and running transfers
    /// (a running one within one read) and returns once each has removed its temporary
    /// file and is recorded `FAILED` with reason `"cancelled"`; the `FAILED` changes are
    /// sent on the collector right after. A transfer that had already finished stays
    /// `READY`. Cancelling a job with nothing in flight does nothing.
    pub async fn cancel(&self, job: JobId) {
        let core = &self.handle.core;
        let entry = core
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&job);
        if let Some(entry) = entry {
            info!(%job, running = entry.tracker.len(), "cancelling job");
            entry.token.cancel();
            entry.tracker.close();
            entry.tracker.wait().await;
        }
        core.forget_dirs(job);
    }

    /// Removes a job from the store: cancels its transfers (as [`cancel`](Self::cancel)),
    /// deletes its index rows and its directory `<root>/jobs/<job>`, and releases its
    /// cached blobs (an eviction pass follows when the cache is bounded). Other jobs, and
    /// transfers they share with this job, are not disturbed. Returns how many artifacts
    /// (pushed and created) the job had.
    ///
    /// # Errors
    ///
    /// [`StoreError::Index`], [`StoreError::Io`] when the directory cannot be removed (the
    /// rows are gone by then), [`StoreError::Closed`].
    pub async fn remove_job(&self, job: JobId) -> Result<u64, StoreError> {
        self.cancel(job).await;
        let core = &self.handle.core;
        let removed = core
            .index
            .call("remove job", move |conn| cache::delete_job_rows(conn, job))
            .await?;
        let dir = core.layout.job_dir(job);
        let target = dir.clone();
        let removed_dir =
            blocking(
                &dir,
                "remove job directory",
                move || match std::fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => {
                        std::fs::remove_dir_all(&target).map_err(|source| StoreError::Io {
                            op: "remove job directory",
                            path: target.clone(),
                            source,
                        })
                    }
                    Ok(_) => std::fs::remove_file(&target).map_err(|source| StoreError::Io {
                        op: "remove",
                        path: target.clone(),
                        source,
                    }),
                    Err(_) => Ok(()),
                },
            )
            .await;
        // Again (`cancel` did it first): a push that checked the directory, or loaded its
        // names, while the job was being removed.
        core.forget_dirs(job);
        removed_dir?;
        info!(%job, artifacts = removed, "job removed");
        core.evict().await;
        Ok(removed)
    }

    /// What the shared cache holds: blobs, bytes, referenced bytes, the bound and the
    /// transfers in flight.
    ///
    /// # Errors
    ///
    /// [`StoreError::Index`], [`StoreError::Closed`].
    pub async fn cache_stats(&self) -> Result<CacheStats, StoreError> {
        let core = &self.handle.core;
        let (blobs, bytes, referenced_bytes) = core.index.call("cache usage", cache::usage).await?;
        Ok(CacheStats {
            blobs,
            bytes,
            referenced_bytes,
            max_bytes: core.settings.cache_max_bytes,
            transfers: core.cache.transfers(),
        })
    }

    /// Subscribes to byte progress: one [`ByteProgress`] per artifact at most every
    /// [`StoreBuilder::progress_interval`], plus one when its size is known and one at its
    /// end (a cache hit gets just the last). A subscriber that falls more than a few
    /// thousand events behind loses the oldest (`RecvError::Lagged`) and goes on;
    /// transfers never wait for subscribers. Events published before the call are not
    /// seen.
    pub fn subscribe_progress(&self) -> broadcast::Receiver<ByteProgress> {
        self.handle.core.cache.progress.subscribe()
    }

    /// Stops the store: refuses new pushes and creates, cancels every transfer (`FAILED`,
    /// reason `"store closed"`), waits until they have stopped, lets the index finish
    /// what was asked of it and stops it (later calls of any method fail with
    /// [`StoreError::Closed`]), then releases the root's lock, so that the root can be
    /// opened again (see "One store per root").
    pub async fn close(&self) {
        let core = &self.handle.core;
        core.root_token.cancel();
        core.tasks.close();
        core.tasks.wait().await;
        // Nothing writes any more: the root may be opened again.
        core.index.stop().await;
        drop(
            core.lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

#[async_trait]
impl ArtifactManager for Store {
    async fn push_artifact(
        &self,
        description: ArtifactDescription,
        collector: mpsc::Sender<ArtifactStatusChange>,
    ) -> Result<ArtifactPath, BoxError> {
        Ok(self.push(description, collector).await?)
    }

    async fn create_artifact(
        &self,
        description: ArtifactDescription,
    ) -> Result<ArtifactPath, BoxError> {
        Ok(self.create(description).await?)
    }

    async fn cancel_job(&self, job: JobId) -> Result<(), BoxError> {
        self.cancel(job).await;
        Ok(())
    }
}

impl Core {
    /// Checks a URI for the description of `alias`.
    fn source(&self, job: JobId, alias: &str, uri: &str) -> Result<Source, StoreError> {
        Source::parse(uri, self.settings.allow_file_scheme).map_err(|e| match e {
            SourceError::Invalid(reason) => StoreError::InvalidUri {
                job,
                alias: alias.to_owned(),
                uri: uri.to_owned(),
                reason,
            },
            SourceError::Scheme { scheme, reason } => StoreError::UnsupportedScheme {
                job,
                alias: alias.to_owned(),
                uri: uri.to_owned(),
                scheme,
                reason,
            },
        })
    }

    /// Creates (if needed) and returns the job's directory for `kind`. With `reuse`, a
    /// directory this store made or checked before is not checked again (a push's file is
    /// placed later, and placing remakes a directory that went missing).
    async fn type_dir(
        self: &Arc<Self>,
        job: JobId,
        kind: ArtifactType,
        reuse: bool,
    ) -> Result<PathBuf, StoreError> {
        let known = || {
            self.dirs_made
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&(job, kind))
        };
        if reuse && known() {
            return Ok(self.layout.type_dir(job, kind));
        }
        let core = Arc::clone(self);
        let dir = core.layout.type_dir(job, kind);
        let made = blocking(&dir, "create directory", move || {
            core.layout.ensure_type_dir(job, kind, core.settings.fsync)
        })
        .await?;
        self.dirs_made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((job, kind));
        Ok(made)
    }

    /// Forgets the job's directories and the names in them (they are being removed, or
    /// the job has nothing in flight).
    fn forget_dirs(&self, job: JobId) {
        self.dirs_made
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|&(j, _)| j != job);
        self.names.forget(job);
    }

    /// Makes sure the job's directory for `kind` is there, reserves the next id and a free
    /// path for `alias` in it (see [`names`]) and queues the row's insert; loads the
    /// directory's names from the index first if needed. A pushed artifact's directory
    /// is not checked again if this store knew it (placing its file remakes it); a
    /// created one's is, since the job writes the file itself.
    async fn record(
        self: &Arc<Self>,
        job: JobId,
        kind: ArtifactType,
        alias: &str,
        uri: &str,
        pushed: bool,
    ) -> Result<Recorded, StoreError> {
        let dir = self.type_dir(job, kind, pushed).await?;
        loop {
            let reserved = self.names.reserve(job, kind, alias, &dir, |id, path| {
                let path = path.to_str()?.to_owned();
                let inserted = self.index.insert(NewArtifact {
                    id,
                    job,
                    kind,
                    alias: alias.to_owned(),
                    uri: uri.to_owned(),
                    path: path.clone(),
                    pushed,
                });
                Some((path, inserted))
            });
            match reserved {
                Some((id, _, Some((path, inserted)))) => {
                    return Ok(Recorded {
                        dir,
                        id,
                        path,
                        inserted,
                    });
                }
                Some((_, path, None)) => {
                    return Err(StoreError::Io {
                        op: "name artifact",
                        path,
                        source: std::io::Error::other("the path is not valid UTF-8"),
                    });
                }
                None => {
                    let epoch = self.names.epoch(job);
                    let rows = self.index.dir_rows(job, kind).await?;
                    self.names
                        .load(job, kind, names::DirNames::from_rows(rows), epoch);
                }
            }
        }
    }

    /// A blob of content `sha256` in the cache that can be trusted (see
    /// [`Self::trust`]), pinned; `None` when there is none.
    async fn hit(self: &Arc<Self>, sha256: &str) -> Option<Arc<Landed>> {
        let pin = self.cache.pins.pin(sha256);
        let key = sha256.to_owned();
        let row = self
            .index
            .call("look up cached blob", move |conn| {
                cache::get_blob(conn, &key)
            })
            .await;
        match row {
            Ok(Some(row)) => self.trust(row, pin).await,
            Ok(None) => None,
            Err(e) => {
                warn!(sha256, cause = %e, "cannot look up the cache; downloading");
                None
            }
        }
    }

    /// Checks the blob of `row` (size; mtime, or the full content with
    /// [`StoreBuilder::verify_cache_hits`]). A blob that fails is removed and forgotten,
    /// so the artifact is downloaded again.
    async fn trust(self: &Arc<Self>, row: BlobRow, pin: Pin) -> Option<Arc<Landed>> {
        let path = self.layout.blob_path(&row.sha256);
        let rehash = self.settings.verify_cache_hits;
        let checked = {
            let (path, row) = (path.clone(), row.clone());
            tokio::task::spawn_blocking(move || cache::check_blob(&path, &row, rehash)).await
        };
        let sha256 = row.sha256.clone();
        match checked {
            Ok(Ok(mtime)) => {
                self.index.cast("mark cached blob used", move |conn| {
                    cache::touch(conn, &sha256, mtime)
                });
                Some(Arc::new(Landed {
                    sha256: row.sha256,
                    size: row.size,
                    path,
                    _pin: pin,
                }))
            }
            Ok(Err(untrusted)) => {
                let reason = untrusted.reason;
                warn!(
                    sha256,
                    reason, "cached blob cannot be trusted; downloading again"
                );
                let bad = untrusted.bad;
                let forgotten = self
                    .index
                    .call("forget cached blob", move |conn| {
                        cache::drop_untrusted(conn, &path, &sha256, bad)
                    })
                    .await;
                if let Err(e) = forgotten {
                    warn!(cause = %e, "cannot forget the damaged blob");
                }
                None
            }
            Err(e) => {
                warn!(cause = %e, "blob check failed");
                None
            }
        }
    }

    /// What `uri` served last time, still in the cache and trustworthy, with the
    /// server's validators to ask whether it is still current.
    async fn revalidation(self: &Arc<Self>, uri: &str) -> Option<(Validators, Arc<Landed>)> {
        let key = uri.to_owned();
        let found = self
            .index
            .call("look up source", move |conn| cache::get_source(conn, &key))
            .await;
        let (row, validators) = match found {
            Ok(found) => found?,
            Err(e) => {
                warn!(uri, cause = %e, "cannot look up the cache; downloading");
                return None;
            }
        };
        let pin = self.cache.pins.pin(&row.sha256);
        let landed = self.trust(row, pin).await?;
        Some((validators, landed))
    }

    /// One eviction pass, when the cache is bounded (failures are logged).
    async fn evict(self: &Arc<Self>) {
        let Some(bound) = self.settings.cache_max_bytes else {
            return;
        };
        let layout = self.layout.clone();
        let pins = Arc::clone(&self.cache.pins);
        let evicted = self
            .index
            .call("evict", move |conn| {
                cache::evict(conn, &layout, bound, &pins)
            })
            .await;
        if let Err(e) = evicted {
            warn!(cause = %e, "eviction failed");
        }
    }

    /// Registers one more transfer for `job`.
    fn register(self: &Arc<Self>, job: JobId) -> JobGuard {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = jobs.entry(job).or_insert_with(|| JobEntry {
            token: self.root_token.child_token(),
            tracker: TaskTracker::new(),
            generation: self
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        JobGuard {
            core: Arc::clone(self),
            job,
            generation: entry.generation,
            cancel: entry.token.clone(),
            job_token: Some(entry.tracker.token()),
            store_token: Some(self.tasks.token()),
        }
    }
}

/// A transfer's registration with its job and with the store. Released (by drop) once the
/// transfer has cleaned up; the job's entry goes when its last transfer is released.
struct JobGuard {
    /// For the job map.
    core: Arc<Core>,
    /// The job.
    job: JobId,
    /// The job entry this guard belongs to.
    generation: u64,
    /// The job's cancellation token.
    cancel: CancellationToken,
    /// Counts in the job's tracker (what `cancel_job` waits for).
    job_token: Option<TaskTrackerToken>,
    /// Counts in the store's tracker (what `close` waits for).
    store_token: Option<TaskTrackerToken>,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.job_token = None;
        self.store_token = None;
        let mut jobs = self
            .core
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = jobs.get(&self.job)
            && entry.generation == self.generation
            && entry.tracker.is_empty()
        {
            jobs.remove(&self.job);
            // Nothing in flight: its names are read from the index again when needed.
            self.core.forget_dirs(self.job);
        }
    }
}

/// Runs blocking work on the blocking pool.
async fn blocking<T, F>(path: &Path, op: &'static str, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io {
            op,
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
}

#[cfg(test)]
mod tests;
