//! The [`Store`]: the real [`ArtifactManager`]. Files on disk under one root, an embedded
//! SQLite index, and a bounded pool of HTTP(S)/`file://` transfers.
//!
//! # Layout
//!
//! - `mod.rs` (this file): the [`Store`] handle, the [`ArtifactManager`] implementation,
//!   per-job cancellation and the life of one transfer (queue, status changes, rename).
//! - `builder`: [`StoreBuilder`] and the defaults.
//! - `index`: the SQLite index on its own thread; [`ArtifactRecord`], [`ArtifactFilter`],
//!   [`Page`], [`ArtifactPage`]; crash recovery at open.
//! - `paths`: the directory layout, alias validation, temporary file names.
//! - `fetch`: the transfer engine (streaming, hashing, retries, resume, verification).
//! - `error`: [`StoreError`].

mod builder;
mod error;
mod fetch;
mod index;
mod paths;
mod pool;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, info, instrument, warn};

pub use builder::{
    DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_MAX, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_AFTER_CAP, DEFAULT_WORKERS, StoreBuilder,
};
pub use error::StoreError;
pub use index::{
    ArtifactFilter, ArtifactPage, ArtifactRecord, Page, REASON_INTERRUPTED, REASON_MISSING,
};

use builder::Settings;
use fetch::{Expected, FetchError, Fetched, Fetcher, Source, SourceError};
use index::{Index, NewArtifact, StatusUpdate};
use paths::Layout;
use pool::{Pool, Slot};

use crate::error::BoxError;
use crate::model::{
    ArtifactDescription, ArtifactPath, ArtifactStatus, ArtifactStatusChange, ArtifactType,
    ChecksumSource, JobId,
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
/// <root>/jobs/<job>/<type>/.<alias>.<id>.part   a transfer in progress
/// ```
///
/// # Guarantees
///
/// - A path reported `READY` holds the complete file, verified against the description's
///   `sha256` and checksum file when it has them: files are streamed to a temporary file
///   beside the target, hashed on the fly, fsynced (unless switched off), and atomically
///   renamed into place. A `FAILED` artifact leaves neither a file nor a temporary file.
/// - Memory per transfer is constant (two 256 KiB buffers: one collecting from the
///   network while the other is hashed and written), whatever the file's size.
/// - Aliases are plain file names and nothing is written outside the root.
/// - SQLite never runs on the async runtime's worker threads.
/// - Opening a root after a crash makes it consistent again: transfers that were queued
///   or running become `FAILED` with reason `"interrupted"`, temporary files are removed,
///   and a `READY` row whose file is missing or has the wrong size becomes `FAILED` with
///   reason `"missing after restart"` (or `"size mismatch after restart: ..."`); see
///   [`StoreBuilder::verify_on_open`] to re-hash them too.
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
/// crash recovery above, which would fail the other store's transfers.
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
        let owned = root.to_owned();
        let (layout, index, recovery) = blocking(root, "open store", move || {
            let root = owned;
            let layout = Layout::create(&root)?;
            let (index, recovery) = Index::open(&layout, verify)?;
            Ok((layout, index, recovery))
        })
        .await?;
        let fetcher = Fetcher::new(&settings).map_err(|source| StoreError::Client { source })?;
        info!(
            root = %layout.root().display(),
            workers = settings.workers,
            interrupted = recovery.interrupted,
            damaged = recovery.damaged,
            temp_files = recovery.temp_files,
            "store opened"
        );
        let root_token = CancellationToken::new();
        let core = Arc::new(Core {
            layout,
            pool: Pool::new(settings.workers),
            settings,
            index,
            fetcher,
            jobs: Mutex::new(HashMap::new()),
            root_token: root_token.clone(),
            tasks: TaskTracker::new(),
            generations: std::sync::atomic::AtomicU64::new(0),
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
    /// returns its path. `DOWNLOADING` and then `READY` or `FAILED` (with its reason)
    /// follow on `collector` and in the index. Statuses are sent with `send().await`;
    /// errors (the receiver is gone) are ignored, and no worker is held while the
    /// terminal status waits for room in the channel.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidAlias`], [`StoreError::UnsupportedScheme`],
    /// [`StoreError::InvalidUri`], [`StoreError::InvalidDigest`] (nothing is recorded),
    /// [`StoreError::OutsideRoot`] / [`StoreError::Io`] when the directory cannot be
    /// made, [`StoreError::Index`], [`StoreError::Closed`] after [`Store::close`].
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
        // Registered before anything is recorded, so a `cancel_job` that runs while this
        // push is under way cancels this transfer too. The rest runs in its own task: if
        // the caller stops waiting, the row and its transfer still go together.
        let guard = core.register(job);
        let core = Arc::clone(core);
        let root = core.layout.root().to_owned();
        tokio::spawn(async move {
            let dir = core.type_dir(job, kind).await?;
            let (id, path) = core
                .index
                .insert(NewArtifact {
                    job,
                    kind,
                    alias: alias.clone(),
                    uri: uri.clone(),
                    dir: dir.clone(),
                    pushed: true,
                })
                .await?;
            let path = ArtifactPath(path);
            debug!(id, %path, %uri, "queued");
            tokio::select! {
                biased;
                _ = collector.send(ArtifactStatusChange::new(
                    path.clone(),
                    ArtifactStatus::Pending,
                )) => {}
                () = guard.cancel.cancelled() => {}
            }
            let slot = core.pool.enqueue();
            let transfer = Transfer {
                core,
                id,
                job,
                alias,
                uri,
                source,
                sha256,
                checksum,
                path: path.clone(),
                dir,
                collector,
                guard,
                slot: Some(slot),
            };
            tokio::spawn(transfer.run());
            Ok(path)
        })
        .await
        .map_err(|e| StoreError::Io {
            op: "register artifact in",
            path: root,
            source: std::io::Error::other(e.to_string()),
        })?
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
        let dir = core.type_dir(description.job, description.kind).await?;
        let (id, path) = core
            .index
            .insert(NewArtifact {
                job: description.job,
                kind: description.kind,
                alias: description.alias,
                uri: description.uri,
                dir,
                pushed: false,
            })
            .await?;
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
    }

    /// Stops the store: refuses new pushes and creates, cancels every transfer (`FAILED`,
    /// reason `"store closed"`) and waits until they have stopped. The index stays
    /// readable ([`info`](Self::info), [`list`](Self::list)) until the last clone is
    /// dropped.
    pub async fn close(&self) {
        let core = &self.handle.core;
        core.root_token.cancel();
        core.tasks.close();
        core.tasks.wait().await;
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

    /// Creates (if needed) and returns the job's directory for `kind`.
    async fn type_dir(
        self: &Arc<Self>,
        job: JobId,
        kind: ArtifactType,
    ) -> Result<PathBuf, StoreError> {
        let core = Arc::clone(self);
        let dir = core.layout.type_dir(job, kind);
        blocking(&dir, "create directory", move || {
            core.layout.ensure_type_dir(job, kind)
        })
        .await
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
        }
    }
}

/// One queued or running transfer.
struct Transfer {
    /// The store.
    core: Arc<Core>,
    /// Row id.
    id: i64,
    /// The job.
    job: JobId,
    /// The alias (for the temporary file's name and logs).
    alias: String,
    /// The URI as given.
    uri: String,
    /// The checked URI.
    source: Source,
    /// Expected SHA-256, lower-case.
    sha256: Option<String>,
    /// The checksum file to fetch first.
    checksum: Option<(Source, ChecksumSource)>,
    /// The final path.
    path: ArtifactPath,
    /// Its directory.
    dir: PathBuf,
    /// Where statuses go.
    collector: mpsc::Sender<ArtifactStatusChange>,
    /// Registration with the job (cancellation) and the store.
    guard: JobGuard,
    /// Its place in the worker queue, taken at push time; `None` once taken out.
    slot: Option<oneshot::Receiver<Slot>>,
}

impl Transfer {
    /// Waits for a worker, transfers, records and reports the outcome.
    #[instrument(name = "transfer", skip_all, fields(job = %self.job, id = self.id, alias = %self.alias))]
    async fn run(mut self) {
        let outcome = self.execute().await;
        let core = &self.core;
        let change = match outcome {
            Ok(fetched) => {
                let update = StatusUpdate {
                    id: self.id,
                    status: ArtifactStatus::Ready,
                    size: Some(fetched.size),
                    sha256: Some(fetched.sha256.clone()),
                    error: None,
                };
                match core.index.update(update).await {
                    Ok(()) => {
                        info!(size = fetched.size, sha256 = %fetched.sha256, "ready");
                        ArtifactStatusChange::new(self.path.clone(), ArtifactStatus::Ready)
                    }
                    Err(e) => {
                        let reason = format!("cannot record READY in the index: {e}");
                        warn!(reason, "failed");
                        fetch::remove_quietly(self.path.as_path()).await;
                        self.fail_in_index(&reason).await;
                        ArtifactStatusChange::failed(self.path.clone(), reason)
                    }
                }
            }
            Err(e) => {
                let reason = if e.is_cancelled() && core.root_token.is_cancelled() {
                    REASON_CLOSED.to_owned()
                } else {
                    e.to_string()
                };
                if e.is_cancelled() {
                    info!(reason, "stopped");
                } else {
                    warn!(reason, "failed");
                }
                self.fail_in_index(&reason).await;
                ArtifactStatusChange::failed(self.path.clone(), reason)
            }
        };
        // Released before the send: `cancel_job` and `close` wait for the clean-up, not
        // for room in the collector.
        let Transfer {
            collector, guard, ..
        } = self;
        drop(guard);
        let _ = collector.send(change).await;
    }

    /// Records FAILED (logged if the index fails too).
    async fn fail_in_index(&self, reason: &str) {
        let update = StatusUpdate {
            id: self.id,
            status: ArtifactStatus::Failed,
            size: None,
            sha256: None,
            error: Some(reason.to_owned()),
        };
        if let Err(e) = self.core.index.update(update).await {
            warn!(cause = %e, "cannot record FAILED in the index");
        }
    }

    /// Everything up to a file at the final path.
    async fn execute(&mut self) -> Result<Fetched, FetchError> {
        let core = &self.core;
        let cancel = &self.guard.cancel;
        let Some(queued) = self.slot.take() else {
            return Err(FetchError::Cancelled);
        };
        let _slot = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(FetchError::Cancelled),
            slot = queued => slot.map_err(|_| FetchError::Cancelled)?,
        };
        core.index.update_later(StatusUpdate {
            id: self.id,
            status: ArtifactStatus::Downloading,
            size: None,
            sha256: None,
            error: None,
        });
        tokio::select! {
            biased;
            _ = self.collector.send(ArtifactStatusChange::new(
                self.path.clone(),
                ArtifactStatus::Downloading,
            )) => {}
            () = cancel.cancelled() => return Err(FetchError::Cancelled),
        }
        let mut expected = Expected {
            sha256: self.sha256.clone(),
            checksum: None,
        };
        if let Some((source, checksum)) = &self.checksum {
            expected.checksum = Some(
                core.fetcher
                    .fetch_checksum(source, &checksum.uri, checksum.kind, cancel)
                    .await?,
            );
        }
        let temp = self.dir.join(paths::temp_name(&self.alias, self.id));
        let fetched = core
            .fetcher
            .download(&self.source, &self.uri, &temp, &expected, cancel)
            .await?;
        if cancel.is_cancelled() {
            fetch::remove_quietly(&temp).await;
            return Err(FetchError::Cancelled);
        }
        let target = self.path.as_path().to_owned();
        let dir = self.dir.clone();
        let fsync = core.settings.fsync;
        let placed = tokio::task::spawn_blocking(move || place(&temp, &target, &dir, fsync))
            .await
            .map_err(|e| FetchError::Io {
                op: "rename",
                path: self.path.as_path().to_owned(),
                source: std::io::Error::other(e.to_string()),
            })
            .and_then(|r| r);
        if let Err(e) = placed {
            fetch::remove_quietly(&self.dir.join(paths::temp_name(&self.alias, self.id))).await;
            return Err(e);
        }
        Ok(fetched)
    }
}

/// Renames the verified temporary file onto the final path and fsyncs the directory, so
/// the rename survives a power loss (blocking).
fn place(temp: &Path, target: &Path, dir: &Path, fsync: bool) -> Result<(), FetchError> {
    std::fs::rename(temp, target).map_err(|source| FetchError::Io {
        op: "rename temporary file onto",
        path: target.to_owned(),
        source,
    })?;
    if fsync {
        let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
        if let Err(source) = synced {
            // The file is complete; only its durability across a power loss is in doubt,
            // and recovery at open handles that. Do not fail a good file for it.
            warn!(dir = %dir.display(), cause = %source, "cannot fsync directory");
        }
    }
    Ok(())
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
