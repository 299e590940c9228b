//! The Downloader: a cloneable handle over one actor task that owns the path-to-job map
//! and per-job progress, fans a job's artifacts out to the [`ArtifactManager`], reports
//! progress to the [`JobsController`] and answers OK or FAIL on the notifier channel.
//!
//! # How the actor is built
//!
//! - The actor owns all state; the handle only holds channel senders.
//! - Slow collaborator calls never run inside the actor's message handling: a job's config
//!   is processed by its own *planning* task (status `""`, `get_config`, pushes, creates,
//!   `set_config`), which feeds registrations back to the actor as events.
//! - Status calls for READY artifacts are polled once in place; a call that does not finish
//!   at once moves, with every later call of that job, to a per-job *worker* task, so a
//!   slow controller for one job never holds up another job. Calls of one job stay in order.
//! - Notifications go out on an unbounded channel: a controller that reads them late never
//!   stalls the actor.
//! - A status change that arrives before its path is registered (a manager may report
//!   READY before `push_artifact` returns) is parked as an *orphan* until the registration
//!   arrives. Only a run started before the change arrived can claim it, so an orphan is
//!   dropped once every such run has finished planning (and a stale change of an answered
//!   run is never applied to a later run that gets the same path).
//!
//! # The hot path (one READY change)
//!
//! The actor handles every status change of every job, so its per-change cost bounds the
//! Downloader's throughput. What keeps it small:
//!
//! - Paths are mapped by a 128-bit keyed hash ([`paths`]): a lookup reads one 32-byte
//!   bucket, never a key string, and the map keeps no path strings at all. Planning tasks
//!   hash the paths they register; the actor hashes the changes it receives.
//! - Changes are taken off the collector in batches of up to [`BATCH`]; the whole batch is
//!   hashed first, then each change is applied while the bucket of a change further on is
//!   prefetched, so the table's cache misses overlap instead of queueing.
//! - The READY info text is written into the change's own path buffer (the path is not
//!   needed once looked up), and the status call is boxed once (by the controller's
//!   `async_trait`), not twice ([`call`]).
//! - A batch's answers are sent when the batch is done: one wake-up of the receiver per
//!   batch, not per answer.
//! - After a batch the actor yields a few times before it waits ([`IDLE_YIELDS`]), so that
//!   a sender on another worker keeps streaming while the actor keeps its own worker.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use rustc_hash::FxHashMap as HashMap;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use crate::error::{BoxError, DownloadError};
use crate::model::{
    ArtifactDescription, ArtifactPath, ArtifactStatus, ArtifactStatusChange, ArtifactType, Config,
    JobId, JobStatus, Notification, TestAction,
};
use crate::store::ByteProgress;
use crate::traits::{ArtifactManager, JobsController, StatusNow};

mod call;
mod paths;
use call::{DetachedCall, StatusCall};
use paths::{PathEntry, PathKey, PathKeyer, PathTable};

/// Info set when an artifact fails (Weles' string).
pub const INFO_FAILED: &str = "Failed to download artifact";

/// Default capacity of the collector channel handed to the artifact manager.
///
/// Large, so that a manager reporting a burst (thousands of small files finishing at
/// once) rarely waits for room and the actor takes the changes in big batches (measured:
/// about 5 % more changes/s than 4,096 in `benches/downloader.rs`). Room is not reserved
/// up front: the channel allocates blocks of slots as changes arrive and reuses them.
pub const DEFAULT_COLLECTOR_CAPACITY: usize = 65536;

/// Most status changes taken off the collector at once.
const BATCH: usize = 512;

/// After a batch of changes, how many times the actor yields to the scheduler, when nothing
/// is ready, before it waits to be woken. While changes stream in, a waiting actor is woken
/// by every first change after it ran dry: on a multi-threaded runtime the wake-up puts it
/// on the sender's worker, behind the sender, so the two take turns on one core (and the
/// idle worker is parked and unparked, a system call each time). A yielding actor stays
/// scheduled on its own worker: the sender's wake-ups cost nothing and both run at once.
/// When the stream stops, this costs at most this many extra polls, and the actor adapts
/// the count to how often yielding found work (see `Actor::idle_yields`).
const IDLE_YIELDS: u32 = 32;

/// After this many batches of status changes in a row, the collector sits out one turn of
/// the actor's loop, so that tasks that ended are reaped (and `cancel` answered) even
/// while the collector never runs dry.
const FAIR_BATCHES: u32 = 8;

/// How many changes ahead of the one being hashed its path's bytes are prefetched.
const PATH_PREFETCH: usize = 4;

/// How many changes ahead of the one being applied its path's buckets are prefetched:
/// enough to cover a memory access, few enough that they are still cached when used.
const BUCKET_PREFETCH: usize = 16;

/// Snapshot of the Downloader's state, for tests and monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Jobs being tracked (in flight, not yet answered).
    pub jobs: usize,
    /// Paths in the path-to-job map (including paths of answered jobs whose late
    /// status change has not arrived yet).
    pub paths: usize,
    /// Status changes received on the collector since the start.
    pub status_changes: u64,
    /// Jobs whose config is still being processed.
    pub planning: usize,
    /// Status changes parked because their path was not registered yet.
    pub orphans: usize,
    /// Bytes of each job in flight that has byte progress, in job order; empty unless
    /// the builder was given a progress subscription
    /// ([`DownloaderBuilder::byte_progress`]).
    pub bytes: Vec<JobBytes>,
}

/// Byte totals of one job in flight, summed over its artifacts' latest
/// [`ByteProgress`] events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobBytes {
    /// The job.
    pub job: JobId,
    /// Bytes received so far (cache hits count whole).
    pub done: u64,
    /// Sum of the sizes known so far (an artifact whose size is not announced yet adds
    /// nothing).
    pub total: u64,
}

/// Progress of one job in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobProgress {
    /// Artifacts registered with the manager so far.
    pub paths: usize,
    /// Artifacts READY.
    pub ready: usize,
    /// Artifacts FAILED.
    pub failed: usize,
    /// Whether the config with local paths has been saved.
    pub config_saved: bool,
    /// Bytes received so far (with [`DownloaderBuilder::byte_progress`]; else 0).
    pub bytes_done: u64,
    /// Sum of the sizes known so far (with [`DownloaderBuilder::byte_progress`]; else 0).
    pub bytes_total: u64,
}

/// Builder for a [`Downloader`] with non-default settings.
#[derive(Debug, Clone)]
#[must_use]
pub struct DownloaderBuilder {
    collector_capacity: usize,
    command_capacity: usize,
    byte_progress: Option<ByteProgressSource>,
}

/// A subscription to byte progress, kept by the builder.
struct ByteProgressSource(broadcast::Receiver<ByteProgress>);

impl Clone for ByteProgressSource {
    fn clone(&self) -> Self {
        ByteProgressSource(self.0.resubscribe())
    }
}

impl fmt::Debug for ByteProgressSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ByteProgressSource")
    }
}

impl Default for DownloaderBuilder {
    fn default() -> Self {
        DownloaderBuilder {
            collector_capacity: DEFAULT_COLLECTOR_CAPACITY,
            command_capacity: 1024,
            byte_progress: None,
        }
    }
}

impl DownloaderBuilder {
    /// Capacity of the collector channel (status changes from the manager); default
    /// [`DEFAULT_COLLECTOR_CAPACITY`].
    pub fn collector_capacity(mut self, capacity: usize) -> Self {
        self.collector_capacity = capacity.max(1);
        self
    }

    /// Capacity of the command channel from handles to the actor; default 1024.
    pub fn command_capacity(mut self, capacity: usize) -> Self {
        self.command_capacity = capacity.max(1);
        self
    }

    /// Byte progress to sum per job, e.g. [`Store::subscribe_progress`](crate::Store::subscribe_progress):
    /// [`Stats::bytes`] and [`JobProgress`] then report bytes done and known sizes per
    /// job. Events of jobs not in flight are ignored; the sums go with the job.
    pub fn byte_progress(mut self, progress: broadcast::Receiver<ByteProgress>) -> Self {
        self.byte_progress = Some(ByteProgressSource(progress));
        self
    }

    /// Spawns the actor on the current tokio runtime and returns the handle and the
    /// receiver of notifications.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime.
    pub fn build(
        self,
        jobs: Arc<dyn JobsController>,
        artifacts: Arc<dyn ArtifactManager>,
    ) -> (Downloader, mpsc::UnboundedReceiver<Notification>) {
        let (command_tx, command_rx) = mpsc::channel(self.command_capacity);
        let (collector_tx, collector_rx) = mpsc::channel(self.collector_capacity);
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (notify_tx, notify_rx) = mpsc::unbounded_channel();
        let actor = Actor {
            jobs: jobs.clone(),
            artifacts: artifacts.clone(),
            commands: command_rx,
            collector: collector_rx,
            collector_tx,
            events: event_rx,
            event_tx,
            notifier: notify_tx,
            path2job: PathTable::default(),
            keyer: PathKeyer::new(),
            keys: Vec::with_capacity(BATCH),
            outbox: None,
            outbox_spare: None,
            idle_yields: IDLE_YIELDS,
            fair_countdown: FAIR_BATCHES,
            info: HashMap::default(),
            orphans: HashMap::default(),
            orphan_order: VecDeque::new(),
            planning: BTreeMap::new(),
            planning_jobs: HashMap::default(),
            tasks: JoinSet::new(),
            task_owner: HashMap::default(),
            cancel_waiters: Vec::new(),
            next_run: 0,
            status_changes: 0,
            panic: None,
            byte_progress: self.byte_progress.map(|p| p.0),
        };
        let handle = tokio::spawn(actor.run());
        let downloader = Downloader {
            commands: command_tx,
            shared: Arc::new(Shared {
                artifacts,
                actor: std::sync::Mutex::new(Some(handle)),
            }),
        };
        (downloader, notify_rx)
    }
}

/// Handle to the Downloader actor. Cheap to clone (channel senders and an `Arc` inside);
/// every clone talks to the same actor.
///
/// The actor stops when [`Downloader::shutdown`] is called or every handle is dropped:
/// keep a handle alive while jobs are in flight.
#[derive(Clone)]
pub struct Downloader {
    /// Commands to the actor; bounded, so a flood of callers waits instead of growing memory.
    commands: mpsc::Sender<Command>,
    /// What the clones share: the manager (for `cancel_job`) and the actor's join handle.
    shared: Arc<Shared>,
}

struct Shared {
    /// The manager, called by `cancel` from the caller's task, never from the actor.
    artifacts: Arc<dyn ArtifactManager>,
    /// The actor task; taken by the first `shutdown`. A std mutex: held only to `take()`.
    actor: std::sync::Mutex<Option<JoinHandle<Result<(), String>>>>,
}

impl fmt::Debug for Downloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Downloader")
            .field("closed", &self.commands.is_closed())
            .finish_non_exhaustive()
    }
}

impl Downloader {
    /// Spawns a Downloader with default settings on the current tokio runtime; returns the
    /// handle and the receiver of [`Notification`]s (one per job: OK or FAIL).
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime.
    pub fn new(
        jobs: Arc<dyn JobsController>,
        artifacts: Arc<dyn ArtifactManager>,
    ) -> (Downloader, mpsc::UnboundedReceiver<Notification>) {
        DownloaderBuilder::default().build(jobs, artifacts)
    }

    /// A builder for non-default settings.
    pub fn builder() -> DownloaderBuilder {
        DownloaderBuilder::default()
    }

    /// Starts downloading the job's artifacts.
    ///
    /// Returns once the job's config has been processed: every artifact registered with
    /// the manager and the config saved (or the job answered FAIL). That can take a while:
    /// a manager may make a push wait (the Store does when
    /// [`max_transfers`](crate::StoreBuilder::max_transfers) transfers are queued), so
    /// with many jobs, spawn one call per job rather than awaiting them in turn.
    ///
    /// The answer, OK or FAIL, comes on the notification channel, exactly once. It may
    /// already be there when this returns (a job that failed while planning, that has
    /// nothing to download, or whose artifacts were all cached). If the job is
    /// [`cancel`](Self::cancel)led while planning, this returns `Ok(())` and no answer
    /// ever comes.
    ///
    /// # Errors
    ///
    /// [`DownloadError::AlreadyInFlight`] when the job is still in flight (its first run
    /// goes on unaffected), [`DownloadError::Closed`] when the actor has stopped.
    pub async fn download(&self, job: JobId) -> Result<(), DownloadError> {
        let (respond_to, response) = oneshot::channel();
        self.send(Command::Download { job, respond_to }).await?;
        response.await.map_err(|_| DownloadError::Closed)?
    }

    /// Cancels the job: its state is dropped, its tasks are stopped, and then the manager's
    /// `cancel_job` is called. After `cancel` returns, no status call and no notification
    /// is made for the job. Cancelling a job that is not in flight still calls the manager.
    ///
    /// # Errors
    ///
    /// [`DownloadError::Closed`] when the actor has stopped, [`DownloadError::Cancel`] when
    /// the manager fails to cancel.
    pub async fn cancel(&self, job: JobId) -> Result<(), DownloadError> {
        let (respond_to, response) = oneshot::channel();
        self.send(Command::Cancel { job, respond_to }).await?;
        response.await.map_err(|_| DownloadError::Closed)?;
        self.shared
            .artifacts
            .cancel_job(job)
            .await
            .map_err(|source| DownloadError::Cancel { job, source })
    }

    /// A snapshot of the actor's maps and counters.
    ///
    /// # Errors
    ///
    /// [`DownloadError::Closed`] when the actor has stopped.
    pub async fn stats(&self) -> Result<Stats, DownloadError> {
        let (respond_to, response) = oneshot::channel();
        self.send(Command::Stats { respond_to }).await?;
        response.await.map_err(|_| DownloadError::Closed)
    }

    /// Progress of a job in flight; `None` when the job is not tracked.
    ///
    /// # Errors
    ///
    /// [`DownloadError::Closed`] when the actor has stopped.
    pub async fn progress(&self, job: JobId) -> Result<Option<JobProgress>, DownloadError> {
        let (respond_to, response) = oneshot::channel();
        self.send(Command::Progress { job, respond_to }).await?;
        response.await.map_err(|_| DownloadError::Closed)
    }

    /// Stops the actor: in-flight jobs are abandoned (no answer), their tasks stopped, and
    /// the collaborators released. Waits for all of it.
    ///
    /// # Errors
    ///
    /// [`DownloadError::Panicked`] when a task of the Downloader panicked at any time (for
    /// example a mock collaborator whose expectations were not met).
    pub async fn shutdown(self) -> Result<(), DownloadError> {
        let (respond_to, response) = oneshot::channel();
        if self.send(Command::Shutdown { respond_to }).await.is_ok() {
            let _ = response.await;
        }
        let handle = self
            .shared
            .actor
            .lock()
            .map(|mut guard| guard.take())
            .unwrap_or(None);
        match handle {
            None => Ok(()),
            Some(handle) => match handle.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(DownloadError::Panicked { message }),
                Err(err) if err.is_panic() => Err(DownloadError::Panicked {
                    message: panic_message(err.into_panic()),
                }),
                Err(_) => Ok(()),
            },
        }
    }

    async fn send(&self, command: Command) -> Result<(), DownloadError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| DownloadError::Closed)
    }
}

/// Requests from handles to the actor.
enum Command {
    Download {
        job: JobId,
        respond_to: oneshot::Sender<Result<(), DownloadError>>,
    },
    Cancel {
        job: JobId,
        respond_to: oneshot::Sender<()>,
    },
    Stats {
        respond_to: oneshot::Sender<Stats>,
    },
    Progress {
        job: JobId,
        respond_to: oneshot::Sender<Option<JobProgress>>,
    },
    Shutdown {
        respond_to: oneshot::Sender<()>,
    },
}

/// Reports from the actor's own tasks (planning tasks and workers).
enum Event {
    /// The manager returned a path for one of the job's pushes.
    Registered {
        job: JobId,
        run: u64,
        key: PathKey,
        alias: Box<str>,
    },
    /// The planning task ended.
    PlanEnded {
        job: JobId,
        run: u64,
        result: PlanResult,
    },
    /// A worker's status call failed; the worker has stopped.
    StatusFailed { job: JobId, run: u64, msg: String },
    /// A worker reached the job's answer after all earlier status calls succeeded.
    Finished {
        job: JobId,
        run: u64,
        outcome: Outcome,
    },
}

/// How a planning task ended.
enum PlanResult {
    /// Config saved with every path.
    Saved,
    /// A collaborator call failed; the message says which and why.
    Failed(String),
    /// The job was answered or cancelled meanwhile; the task stopped early.
    Stopped,
}

/// The answer for a job.
#[derive(Debug, Clone)]
enum Outcome {
    Ok,
    Fail(String),
}

/// Commands for a job's worker.
enum WorkerCmd {
    Status(String),
    Finish(Outcome),
}

/// Which kind of task a `JoinSet` entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskKind {
    Planning,
    Worker,
}

/// Per-job progress (the twin of Weles' `jobArtifactsInfo`).
struct JobInfo {
    run: u64,
    paths: usize,
    ready: usize,
    failed: usize,
    config_saved: bool,
    /// The answer is decided (OK or FAIL queued); nothing more is reported for the job.
    finishing: bool,
    /// Tells the planning task to stop before its next collaborator call.
    stop: Arc<AtomicBool>,
    /// The job's worker, once a status call has not completed at once.
    worker: Option<Worker>,
    /// What a READY does not touch, kept out of line so the map's entries stay small.
    cold: Box<JobCold>,
}

/// The parts of a job's progress that only registration, failures and byte progress use.
#[derive(Default)]
struct JobCold {
    /// Aliases of the registered paths, to name the artifact in a FAIL message.
    aliases: Aliases,
    /// The FAIL message handed to the job's worker (sent after its pending status calls):
    /// kept so that a status call failing meanwhile does not hide why the job failed.
    failure: Option<String>,
    /// Byte progress per artifact, and the sums (only with a progress subscription).
    bytes: ByteSums,
}

/// A job's byte progress: the latest count per artifact and their sums.
#[derive(Default)]
struct ByteSums {
    /// (done, total) per path, as last reported.
    per_path: HashMap<ArtifactPath, (u64, Option<u64>)>,
    /// Sum of `done`.
    done: u64,
    /// Sum of the known totals.
    total: u64,
}

impl ByteSums {
    /// Replaces the count of `path` and adjusts the sums.
    fn update(&mut self, path: ArtifactPath, done: u64, total: Option<u64>) {
        let (old_done, old_total) = self
            .per_path
            .insert(path, (done, total))
            .unwrap_or_default();
        self.done = self.done.saturating_sub(old_done).saturating_add(done);
        self.total = self
            .total
            .saturating_sub(old_total.unwrap_or(0))
            .saturating_add(total.unwrap_or(0));
    }
}

/// The aliases of one job's paths, in one string (a job with many artifacts is answered
/// with two frees, not one per artifact). Searched only for a FAIL message, once per job.
#[derive(Default)]
struct Aliases {
    /// Every alias, one after the other.
    text: String,
    /// Path key, and where its alias ends in `text` (it starts where the previous ends).
    ends: Vec<(PathKey, usize)>,
}

impl Aliases {
    fn push(&mut self, key: PathKey, alias: &str) {
        self.text.push_str(alias);
        self.ends.push((key, self.text.len()));
    }

    fn get(&self, key: PathKey) -> Option<&str> {
        let i = self.ends.iter().position(|&(k, _)| k == key)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1].1 };
        Some(&self.text[start..self.ends[i].1])
    }
}

struct Worker {
    tx: mpsc::UnboundedSender<WorkerCmd>,
    id: tokio::task::Id,
    abort: tokio::task::AbortHandle,
}

/// A terminal status change whose path was not registered when it arrived.
struct Orphan {
    /// The number the next run would have got when the change arrived: only runs below
    /// it were started before, so only they can have pushed its path.
    tag: u64,
    change: ArtifactStatusChange,
}

/// A planning task in progress.
struct Planning {
    job: JobId,
    id: tokio::task::Id,
    abort: tokio::task::AbortHandle,
    respond_to: Option<oneshot::Sender<Result<(), DownloadError>>>,
}

struct Actor {
    /// Byte progress events to sum per job, if configured.
    byte_progress: Option<broadcast::Receiver<ByteProgress>>,
    jobs: Arc<dyn JobsController>,
    artifacts: Arc<dyn ArtifactManager>,
    commands: mpsc::Receiver<Command>,
    collector: mpsc::Receiver<ArtifactStatusChange>,
    /// Handed (cloned) to the manager with every push.
    collector_tx: mpsc::Sender<ArtifactStatusChange>,
    events: mpsc::UnboundedReceiver<Event>,
    event_tx: mpsc::UnboundedSender<Event>,
    notifier: mpsc::UnboundedSender<Notification>,
    /// Which job (and run) each registered path belongs to, by [`PathKey`].
    path2job: PathTable,
    /// Hashes paths into [`PathKey`]s; planning tasks get a copy.
    keyer: PathKeyer,
    /// The keys of the batch being handled (kept to reuse its allocation).
    keys: Vec<PathKey>,
    /// While a batch of changes is handled: its answers, sent when the batch is done.
    outbox: Option<Vec<Notification>>,
    /// The outbox's allocation between batches.
    outbox_spare: Option<Vec<Notification>>,
    /// How many times the actor may yield after a batch of changes (see `idle_yields`).
    idle_yields: u32,
    /// Collector batches left before the collector sits out a turn (see `run`).
    fair_countdown: u32,
    /// Progress of every job in flight.
    info: HashMap<JobId, JobInfo>,
    /// Terminal changes whose path is not registered yet, by path key.
    orphans: HashMap<PathKey, Orphan>,
    /// The orphans' keys and tags in arrival order (tags never decrease along it), to
    /// drop the orphans no run can claim any more; a key may be listed more than once.
    orphan_order: VecDeque<(u64, PathKey)>,
    /// Planning tasks in progress, by run.
    planning: BTreeMap<u64, Planning>,
    /// How many planning tasks each job has (more than one only while a cancelled or
    /// answered run's task is still stopping).
    planning_jobs: HashMap<JobId, usize>,
    /// Every task the actor spawned; reaped in the main loop to notice panics.
    tasks: JoinSet<()>,
    /// Job, run and kind of every task in `tasks`.
    task_owner: HashMap<tokio::task::Id, (JobId, u64, TaskKind)>,
    /// `cancel` callers waiting for the job's tasks to be gone.
    cancel_waiters: Vec<(HashSet<tokio::task::Id>, oneshot::Sender<()>)>,
    next_run: u64,
    status_changes: u64,
    /// The first panic of any task, reported by `shutdown`.
    panic: Option<String>,
}

/// The next byte-progress event (only polled while the subscription exists).
async fn recv_byte_progress(
    rx: &mut Option<broadcast::Receiver<ByteProgress>>,
) -> Result<ByteProgress, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self) -> Result<(), String> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut events = Vec::with_capacity(BATCH);
        loop {
            // A manager that never lets the collector run dry must not hold up `cancel`,
            // `download` or `stats`, nor the tasks that end: the collector sits out one
            // turn when a command is waiting (one atomic load to know) and after every
            // [`FAIR_BATCHES`] batches (for the tasks, which cannot be checked that
            // cheaply), so each of them waits for a few batches at most.
            let collector_turn = self.commands.is_empty() && self.fair_countdown > 0;
            tokio::select! {
                biased;
                // The actor holds a sender, so the event channel never closes either.
                _ = self.events.recv_many(&mut events, BATCH) => self.handle_events(&mut events),
                n = self.collector.recv_many(&mut batch, BATCH), if collector_turn => {
                    // The actor holds a sender, so the collector never closes.
                    debug_assert!(n > 0);
                    self.fair_countdown -= 1;
                    self.handle_changes(&mut batch);
                    self.idle_yields().await;
                }
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.handle_joined(joined);
                }
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { respond_to }) => {
                        self.stop().await;
                        let _ = respond_to.send(());
                        break;
                    }
                    Some(command) => self.handle_command(command),
                    None => {
                        self.stop().await;
                        break;
                    }
                },
                // Nothing else was ready during the collector's skipped turn.
                () = std::future::ready(()), if !collector_turn => {
                    self.fair_countdown = FAIR_BATCHES;
                }
                event = recv_byte_progress(&mut self.byte_progress), if self.byte_progress.is_some() => {
                    self.handle_byte_progress(event);
                }
            }
        }
        let panic = self.panic.take();
        // Release the collaborators here, inside the actor's task, so that a mock's
        // drop-time verification panics where `shutdown` sees it.
        drop(self);
        match panic {
            Some(message) => Err(message),
            None => Ok(()),
        }
    }

    /// Yields until a change, an event or a command is waiting, at most `idle_yields`
    /// times. Only looks at the channels: waiting on them would register the actor's waker
    /// each time, a write to a cache line that the sender writes on every send.
    ///
    /// The limit adapts: it doubles (up to [`IDLE_YIELDS`]) when work came while yielding
    /// and halves (down to 1) when it did not, so that yielding stops costing CPU when the
    /// stream has ended or when the sender does not get a core to run on.
    async fn idle_yields(&mut self) {
        for _ in 0..self.idle_yields {
            if !self.collector.is_empty() || !self.events.is_empty() || !self.commands.is_empty() {
                self.idle_yields = (self.idle_yields * 2).min(IDLE_YIELDS);
                return;
            }
            tokio::task::yield_now().await;
        }
        self.idle_yields = (self.idle_yields / 2).max(1);
    }

    /// Stops every task and waits for them, recording panics.
    async fn stop(&mut self) {
        for info in self.info.values() {
            info.stop.store(true, Ordering::Release);
        }
        self.tasks.abort_all();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            if let Err(err) = joined
                && err.is_panic()
            {
                self.record_panic(panic_message(err.into_panic()));
            }
        }
        self.info.clear();
        self.path2job.clear();
        self.orphans.clear();
        self.orphan_order.clear();
        self.planning_jobs.clear();
        for (_, planning) in std::mem::take(&mut self.planning) {
            if let Some(respond_to) = planning.respond_to {
                let _ = respond_to.send(Err(DownloadError::Closed));
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Download { job, respond_to } => self.start(job, respond_to),
            Command::Cancel { job, respond_to } => self.cancel(job, respond_to),
            Command::Stats { respond_to } => {
                let _ = respond_to.send(Stats {
                    jobs: self.info.len(),
                    paths: self.path2job.len(),
                    status_changes: self.status_changes,
                    planning: self.planning.len(),
                    orphans: self.orphans.len(),
                    bytes: self.job_bytes(),
                });
            }
            Command::Progress { job, respond_to } => {
                let _ = respond_to.send(self.info.get(&job).map(|i| JobProgress {
                    paths: i.paths,
                    ready: i.ready,
                    failed: i.failed,
                    config_saved: i.config_saved,
                    bytes_done: i.cold.bytes.done,
                    bytes_total: i.cold.bytes.total,
                }));
            }
            Command::Shutdown { .. } => unreachable!("handled in the main loop"),
        }
    }

    /// The byte sums of the jobs that have any, in job order.
    fn job_bytes(&self) -> Vec<JobBytes> {
        let mut bytes: Vec<JobBytes> = self
            .info
            .iter()
            .filter(|(_, i)| !i.cold.bytes.per_path.is_empty())
            .map(|(job, i)| JobBytes {
                job: *job,
                done: i.cold.bytes.done,
                total: i.cold.bytes.total,
            })
            .collect();
        bytes.sort_by_key(|b| b.job);
        bytes
    }

    /// One byte-progress event (or the subscription's end).
    fn handle_byte_progress(&mut self, event: Result<ByteProgress, broadcast::error::RecvError>) {
        match event {
            Ok(p) => {
                if let Some(info) = self.info.get_mut(&p.job) {
                    info.cold.bytes.update(p.path, p.done, p.total);
                }
            }
            // Later events carry absolute counts, so the sums recover by themselves.
            Err(broadcast::error::RecvError::Lagged(n)) => {
                debug!(missed = n, "byte progress lagged");
            }
            Err(broadcast::error::RecvError::Closed) => self.byte_progress = None,
        }
    }

    /// `download(job)`: registers the job and spawns its planning task.
    fn start(&mut self, job: JobId, respond_to: oneshot::Sender<Result<(), DownloadError>>) {
        if self.info.contains_key(&job) || self.planning_jobs.contains_key(&job) {
            let _ = respond_to.send(Err(DownloadError::AlreadyInFlight { job }));
            return;
        }
        let run = self.next_run;
        self.next_run += 1;
        let stop = Arc::new(AtomicBool::new(false));
        self.info.insert(
            job,
            JobInfo {
                run,
                paths: 0,
                ready: 0,
                failed: 0,
                config_saved: false,
                finishing: false,
                stop: stop.clone(),
                worker: None,
                cold: Box::default(),
            },
        );
        let plan = Plan {
            job,
            run,
            jobs: self.jobs.clone(),
            artifacts: self.artifacts.clone(),
            collector: self.collector_tx.clone(),
            events: self.event_tx.clone(),
            keyer: self.keyer,
            stop,
        };
        let abort = self.tasks.spawn(plan.run());
        let id = abort.id();
        self.task_owner.insert(id, (job, run, TaskKind::Planning));
        *self.planning_jobs.entry(job).or_default() += 1;
        self.planning.insert(
            run,
            Planning {
                job,
                id,
                abort,
                respond_to: Some(respond_to),
            },
        );
        debug!(%job, run, "download started");
    }

    /// `cancel(job)`: drops the job's state and stops its tasks; answers once they are gone.
    fn cancel(&mut self, job: JobId, respond_to: oneshot::Sender<()>) {
        let mut waiting = HashSet::new();
        if let Some(info) = self.info.remove(&job) {
            info.stop.store(true, Ordering::Release);
            if let Some(worker) = info.worker {
                worker.abort.abort();
                waiting.insert(worker.id);
            }
        }
        for planning in self.planning.values().filter(|p| p.job == job) {
            planning.abort.abort();
            waiting.insert(planning.id);
        }
        self.path2job.retain(|entry| entry.job != job.0);
        debug!(%job, tasks = waiting.len(), "job cancelled");
        if waiting.is_empty() {
            let _ = respond_to.send(());
        } else {
            self.cancel_waiters.push((waiting, respond_to));
        }
    }

    /// A batch of events; the buckets of the registered paths are prefetched first (a
    /// burst of registrations inserts into a table much bigger than the cache).
    fn handle_events(&mut self, events: &mut Vec<Event>) {
        for event in events.iter() {
            if let Event::Registered { key, .. } = event {
                self.path2job.prefetch(*key);
            }
        }
        for event in events.drain(..) {
            self.handle_event(event);
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Registered {
                job,
                run,
                key,
                alias,
            } => {
                // Only a change that arrived after this run started can be its own.
                let orphan = self.orphans.remove(&key).filter(|orphan| run < orphan.tag);
                let Some(info) = self
                    .info
                    .get_mut(&job)
                    .filter(|i| i.run == run && !i.finishing)
                else {
                    return;
                };
                info.paths += 1;
                info.cold.aliases.push(key, &alias);
                self.path2job.insert(key, PathEntry { job: job.0, run });
                if let Some(orphan) = orphan {
                    self.apply_change(orphan.change, key);
                }
            }
            Event::PlanEnded { job, run, result } => {
                let respond_to = self
                    .remove_planning(run)
                    .and_then(|mut planning| planning.respond_to.take());
                self.forget_orphans_if_idle();
                match result {
                    PlanResult::Saved => {
                        if let Some(info) = self.current(job, run) {
                            info.config_saved = true;
                            self.answer_if_ready(job);
                        }
                    }
                    PlanResult::Failed(msg) => {
                        if self.current(job, run).is_some_and(|i| !i.finishing) {
                            self.finish(job, Outcome::Fail(msg));
                        }
                    }
                    PlanResult::Stopped => {}
                }
                // `download` returns only now, after the answer (if any) has been sent.
                if let Some(respond_to) = respond_to {
                    let _ = respond_to.send(Ok(()));
                }
            }
            Event::StatusFailed { job, run, msg } => {
                if let Some(info) = self.current(job, run) {
                    let msg = match info.cold.failure.take() {
                        Some(failure) => failed_then(&failure, &msg),
                        None => msg,
                    };
                    self.answer(job, Outcome::Fail(msg));
                }
            }
            Event::Finished { job, run, outcome } => {
                if self.current(job, run).is_some() {
                    self.answer(job, outcome);
                }
            }
        }
    }

    /// Whether the job's run is in flight and its answer not yet decided.
    fn is_live(&self, job: JobId, run: u64) -> bool {
        self.info
            .get(&job)
            .is_some_and(|i| i.run == run && !i.finishing)
    }

    /// The job's info if it is still the given run.
    fn current(&mut self, job: JobId, run: u64) -> Option<&mut JobInfo> {
        self.info.get_mut(&job).filter(|i| i.run == run)
    }

    /// A batch off the collector. Every path is hashed first; then, while each change is
    /// applied, the buckets of a change a little further on are prefetched, so the lookups
    /// find their buckets in cache instead of waiting for memory one after the other.
    fn handle_changes(&mut self, batch: &mut Vec<ArtifactStatusChange>) {
        self.status_changes += batch.len() as u64;
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        for (i, change) in batch.iter().enumerate() {
            if let Some(ahead) = batch.get(i + PATH_PREFETCH) {
                paths::prefetch(ahead.path.0.as_ptr());
            }
            keys.push(self.keyer.key(&change.path.0));
        }
        for &key in keys.iter().take(BUCKET_PREFETCH) {
            self.path2job.prefetch(key);
        }
        // The batch's answers go out together at its end: the receiver is woken once per
        // batch instead of once per answer (a wake-up can cost a system call).
        let mut outbox = self.outbox_spare.take().unwrap_or_default();
        outbox.clear();
        self.outbox = Some(outbox);
        for (i, (change, &key)) in batch.drain(..).zip(&keys).enumerate() {
            if let Some(&ahead) = keys.get(i + BUCKET_PREFETCH) {
                self.path2job.prefetch(ahead);
            }
            self.apply_change(change, key);
        }
        self.keys = keys;
        if let Some(mut outbox) = self.outbox.take() {
            for notification in outbox.drain(..) {
                self.notify(notification);
            }
            self.outbox_spare = Some(outbox);
        }
    }

    /// Applies one status change; `key` is the key of its path.
    fn apply_change(&mut self, change: ArtifactStatusChange, key: PathKey) {
        if !change.status.is_terminal() {
            // Non-terminal statuses change nothing, except that they retire the path of
            // an answered job (as Weles did).
            if let Some(entry) = self.path2job.get(key)
                && !self.is_live(JobId(entry.job), entry.run)
            {
                self.path2job.remove(key);
            }
            return;
        }
        let Some(entry) = self.path2job.remove(key) else {
            // Not registered (yet): a manager may report before `push_artifact` returns.
            if !self.planning.is_empty() {
                let tag = self.next_run;
                self.orphans.insert(key, Orphan { tag, change });
                self.orphan_order.push_back((tag, key));
            }
            return;
        };
        let job = JobId(entry.job);
        let Some(info) = self
            .info
            .get_mut(&job)
            .filter(|i| i.run == entry.run && !i.finishing)
        else {
            // The job was answered: the late change just retires the path.
            return;
        };
        match change.status {
            ArtifactStatus::Pending | ArtifactStatus::Downloading => {}
            ArtifactStatus::Ready => {
                info.ready += 1;
                let ready = info.ready;
                // The path is not needed any more: its buffer carries the info.
                let text = ready_info(change.path.0, ready, info.paths);
                let complete = info.config_saved && info.failed == 0 && info.ready == info.paths;
                let called = call_status(
                    &self.jobs,
                    job,
                    info,
                    text,
                    &mut self.tasks,
                    &mut self.task_owner,
                    &self.event_tx,
                );
                match called {
                    Err(failed) => {
                        let msg = self.call_failed(failed);
                        self.answer(job, Outcome::Fail(msg));
                    }
                    Ok(()) if complete => self.finish(job, Outcome::Ok),
                    Ok(()) => {}
                }
            }
            ArtifactStatus::Failed => {
                info.failed += 1;
                let alias = info.cold.aliases.get(key).unwrap_or("?");
                let reason = change.reason.as_deref().unwrap_or("unknown reason");
                let msg = format!(
                    "failed to download artifact {alias} ({}): {reason}",
                    change.path
                );
                let called = call_status(
                    &self.jobs,
                    job,
                    info,
                    INFO_FAILED.to_owned(),
                    &mut self.tasks,
                    &mut self.task_owner,
                    &self.event_tx,
                );
                match called {
                    Err(failed) => {
                        let status = self.call_failed(failed);
                        self.answer(job, Outcome::Fail(failed_then(&msg, &status)));
                    }
                    Ok(()) => self.finish(job, Outcome::Fail(msg)),
                }
            }
        }
    }

    /// Sends OK when the config is saved and every registered artifact is READY.
    fn answer_if_ready(&mut self, job: JobId) {
        let ready = self
            .info
            .get(&job)
            .is_some_and(|i| !i.finishing && i.config_saved && i.failed == 0 && i.ready == i.paths);
        if ready {
            self.finish(job, Outcome::Ok);
        }
    }

    /// Decides the job's answer; it goes out after the job's pending status calls.
    fn finish(&mut self, job: JobId, outcome: Outcome) {
        let Some(info) = self.info.get_mut(&job) else {
            return;
        };
        info.finishing = true;
        info.stop.store(true, Ordering::Release);
        match &info.worker {
            Some(worker) => {
                if let Outcome::Fail(msg) = &outcome {
                    info.cold.failure = Some(msg.clone());
                }
                let _ = worker.tx.send(WorkerCmd::Finish(outcome));
            }
            None => self.answer(job, outcome),
        }
    }

    /// Sends the answer and drops the job's progress. Its unfinished paths stay mapped
    /// until their late status change arrives.
    fn answer(&mut self, job: JobId, outcome: Outcome) {
        let Some(info) = self.info.remove(&job) else {
            return;
        };
        info.stop.store(true, Ordering::Release);
        if let Some(worker) = info.worker {
            // Whatever it still holds must not run after the answer.
            worker.abort.abort();
        }
        let notification = match outcome {
            Outcome::Ok => Notification {
                job,
                ok: true,
                msg: String::new(),
            },
            Outcome::Fail(msg) => {
                warn!(%job, %msg, "job failed");
                Notification {
                    job,
                    ok: false,
                    msg,
                }
            }
        };
        debug!(%job, ok = notification.ok, "job answered");
        match &mut self.outbox {
            Some(outbox) => outbox.push(notification),
            None => self.notify(notification),
        }
    }

    fn notify(&self, notification: Notification) {
        let job = notification.job;
        if self.notifier.send(notification).is_err() {
            debug!(%job, "notification receiver dropped");
        }
    }

    fn handle_joined(&mut self, joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        // A task sends its events before it ends, but `select!` can still see its end
        // first (the event branch was polled just before the task sent and returned).
        // Handle those events now: otherwise a planning task would be dropped from
        // `planning` before its `Registered` events, and `forget_orphans_if_idle` could
        // drop a READY parked for one of its paths, leaving the job hanging.
        while let Ok(event) = self.events.try_recv() {
            self.handle_event(event);
        }
        let (id, panic) = match joined {
            Ok((id, ())) => (id, None),
            Err(err) => {
                let id = err.id();
                let panic = err.is_panic().then(|| panic_message(err.into_panic()));
                (id, panic)
            }
        };
        let owner = self.task_owner.remove(&id);
        if let Some(message) = panic {
            self.record_panic(message.clone());
            if let Some((job, run, kind)) = owner
                && self.current(job, run).is_some()
            {
                let what = match kind {
                    TaskKind::Planning => "planning",
                    TaskKind::Worker => "status",
                };
                self.answer(
                    job,
                    Outcome::Fail(format!("internal error: {what} task panicked: {message}")),
                );
            }
        }
        if let Some((_, run, TaskKind::Planning)) = owner
            && let Some(mut planning) = self.remove_planning(run)
        {
            // Aborted or panicked before reporting its end.
            if let Some(respond_to) = planning.respond_to.take() {
                let _ = respond_to.send(Ok(()));
            }
            self.forget_orphans_if_idle();
        }
        let mut i = 0;
        while i < self.cancel_waiters.len() {
            self.cancel_waiters[i].0.remove(&id);
            if self.cancel_waiters[i].0.is_empty() {
                let (_, respond_to) = self.cancel_waiters.swap_remove(i);
                let _ = respond_to.send(());
            } else {
                i += 1;
            }
        }
    }

    /// Forgets the planning task of `run`.
    fn remove_planning(&mut self, run: u64) -> Option<Planning> {
        let planning = self.planning.remove(&run)?;
        if let Some(count) = self.planning_jobs.get_mut(&planning.job) {
            *count -= 1;
            if *count == 0 {
                self.planning_jobs.remove(&planning.job);
            }
        }
        Some(planning)
    }

    /// Drops the orphans that no run can claim any more: an orphan can only belong to a run
    /// started before it arrived (below its tag) that is still registering paths.
    fn forget_orphans_if_idle(&mut self) {
        // Every run below this one has finished planning.
        let oldest = self.planning.keys().next().copied().unwrap_or(u64::MAX);
        let before = self.orphans.len();
        while let Some(&(tag, key)) = self.orphan_order.front() {
            if tag > oldest {
                break;
            }
            self.orphan_order.pop_front();
            if self.orphans.get(&key).is_some_and(|o| o.tag == tag) {
                self.orphans.remove(&key);
            }
        }
        if self.orphans.is_empty() {
            // Entries of claimed orphans may remain; nothing is parked.
            self.orphan_order.clear();
        }
        if self.orphans.len() < before {
            debug!(
                count = before - self.orphans.len(),
                "dropping unclaimed status changes"
            );
        }
    }

    /// The FAIL message of a status call that failed at once; a panic is also recorded
    /// for `shutdown`, as a task's panic is.
    fn call_failed(&mut self, failed: CallFailed) -> String {
        match failed {
            CallFailed::Error(msg) => msg,
            CallFailed::Panic(message) => {
                let msg = format!("internal error: status call panicked: {message}");
                self.record_panic(message);
                msg
            }
        }
    }

    fn record_panic(&mut self, message: String) {
        warn!(%message, "downloader task panicked");
        self.panic.get_or_insert(message);
    }
}

/// `"<ready> / <total> artifacts ready"`, written into `buf` (cleared first) without the
/// formatting machinery: this runs once per READY artifact, and `buf` is the change's own
/// path string, so the info usually costs no allocation at all. The text is put together
/// back to front in a buffer on the stack, then copied into `buf` at once as bytes: a
/// `String` would encode every character as UTF-8 on the way in, and checking the bytes
/// afterwards would cost as much as writing them.
fn ready_info(buf: String, ready: usize, total: usize) -> String {
    const SEPARATOR: &[u8] = b" / ";
    const SUFFIX: &[u8] = b" artifacts ready";
    // Two numbers of at most 20 digits each, the separator and the suffix.
    let mut text = [0u8; 2 * 20 + SEPARATOR.len() + SUFFIX.len()];
    let mut start = text.len() - SUFFIX.len();
    text[start..].copy_from_slice(SUFFIX);
    start = put_decimal(&mut text[..start], total);
    start -= SEPARATOR.len();
    text[start..start + SEPARATOR.len()].copy_from_slice(SEPARATOR);
    start = put_decimal(&mut text[..start], ready);
    let mut bytes = buf.into_bytes();
    bytes.clear();
    bytes.extend_from_slice(&text[start..]);
    // SAFETY: `text` holds ASCII digits and ASCII text from `start` on (all written
    // above), so `bytes` is valid UTF-8.
    unsafe { String::from_utf8_unchecked(bytes) }
}

/// Writes `n` in decimal at the end of `out`; returns where it starts. `out` has room for
/// the 20 digits of the largest `usize`.
fn put_decimal(out: &mut [u8], mut n: usize) -> usize {
    let mut start = out.len();
    loop {
        start -= 1;
        out[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return start;
        }
    }
}

/// The text of a FAIL for an artifact that failed (`failure`) and whose status call then
/// failed too (`status`): both reasons.
fn failed_then(failure: &str, status: &str) -> String {
    format!("{failure}; then {status}")
}

/// The text of a FAIL caused by a failed status call.
fn status_failed(err: &BoxError) -> String {
    format!("failed to set job status: {err}")
}

/// Why a status call made in place failed at once.
enum CallFailed {
    /// It returned this error (the FAIL message).
    Error(String),
    /// The controller panicked (the panic's message): the actor must not die of it.
    Panic(String),
}

/// Makes one status call for the job, in order with its earlier calls: through the job's
/// worker when it has one; otherwise with `try_set_status_and_info` first (no future at
/// all for a controller that makes the update at once), then, when that hands the info
/// back, `set_status_and_info` polled once in place (a controller that answers at once
/// costs no task) and moved to a new worker when it does not finish at once, with every
/// later call of the job after it. `Err` is a call that failed at once (an error,
/// or a panic of the controller, caught here as a task's panic is by the runtime); the
/// caller answers the job with it.
fn call_status(
    jobs: &Arc<dyn JobsController>,
    job: JobId,
    info: &mut JobInfo,
    text: String,
    tasks: &mut JoinSet<()>,
    task_owner: &mut HashMap<tokio::task::Id, (JobId, u64, TaskKind)>,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<(), CallFailed> {
    if let Some(worker) = &info.worker {
        let _ = worker.tx.send(WorkerCmd::Status(text));
        return Ok(());
    }
    // A controller that can make the update at once does, without a future. Nothing the
    // closures below touch outlives a panic in them but `jobs`, which they only read.
    let now = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        jobs.try_set_status_and_info(job, JobStatus::Downloading, text)
    }));
    let text = match now.map_err(|payload| CallFailed::Panic(panic_message(payload)))? {
        StatusNow::Done(Ok(())) => return Ok(()),
        StatusNow::Done(Err(err)) => return Err(CallFailed::Error(status_failed(&err))),
        StatusNow::Later(text) => text,
    };
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut call = StatusCall::new(jobs, job, text);
        let poll = call.poll_once();
        (call, poll)
    }));
    let (call, poll) = polled.map_err(|payload| CallFailed::Panic(panic_message(payload)))?;
    match poll {
        Poll::Ready(Ok(())) => Ok(()),
        Poll::Ready(Err(err)) => Err(CallFailed::Error(status_failed(&err))),
        Poll::Pending => {
            let run = info.run;
            let (tx, rx) = mpsc::unbounded_channel();
            let task = worker(job, run, jobs.clone(), call.detach(), rx, events.clone());
            let abort = tasks.spawn(task);
            let id = abort.id();
            task_owner.insert(id, (job, run, TaskKind::Worker));
            info.worker = Some(Worker { tx, id, abort });
            Ok(())
        }
    }
}

/// Carries out the job's status calls, one at a time and in order, then its answer.
async fn worker(
    job: JobId,
    run: u64,
    jobs: Arc<dyn JobsController>,
    first: DetachedCall,
    mut rx: mpsc::UnboundedReceiver<WorkerCmd>,
    events: mpsc::UnboundedSender<Event>,
) {
    if let Err(err) = first.await {
        let _ = events.send(Event::StatusFailed {
            job,
            run,
            msg: status_failed(&err),
        });
        return;
    }
    while let Some(cmd) = rx.recv().await {
        match cmd {
            WorkerCmd::Status(text) => {
                if let Err(err) = jobs
                    .set_status_and_info(job, JobStatus::Downloading, text)
                    .await
                {
                    let _ = events.send(Event::StatusFailed {
                        job,
                        run,
                        msg: status_failed(&err),
                    });
                    return;
                }
            }
            WorkerCmd::Finish(outcome) => {
                let _ = events.send(Event::Finished { job, run, outcome });
                return;
            }
        }
    }
}

/// Everything a planning task needs.
struct Plan {
    job: JobId,
    run: u64,
    jobs: Arc<dyn JobsController>,
    artifacts: Arc<dyn ArtifactManager>,
    collector: mpsc::Sender<ArtifactStatusChange>,
    events: mpsc::UnboundedSender<Event>,
    /// The actor's keyer, to hash the returned paths.
    keyer: PathKeyer,
    stop: Arc<AtomicBool>,
}

impl Plan {
    async fn run(self) {
        let result = match self.process().await {
            Ok(()) => PlanResult::Saved,
            Err(result) => result,
        };
        let _ = self.events.send(Event::PlanEnded {
            job: self.job,
            run: self.run,
            result,
        });
    }

    fn check(&self) -> Result<(), PlanResult> {
        if self.stop.load(Ordering::Acquire) {
            Err(PlanResult::Stopped)
        } else {
            Ok(())
        }
    }

    /// Contract point 1: status `""`, config, pushes, creates, save.
    async fn process(&self) -> Result<(), PlanResult> {
        let job = self.job;
        self.check()?;
        // The job's first update: nothing is before it, so it may be made at once.
        let status =
            match self
                .jobs
                .try_set_status_and_info(job, JobStatus::Downloading, String::new())
            {
                StatusNow::Done(result) => result,
                StatusNow::Later(info) => {
                    self.jobs
                        .set_status_and_info(job, JobStatus::Downloading, info)
                        .await
                }
            };
        status.map_err(|e| PlanResult::Failed(status_failed(&e)))?;
        self.check()?;
        let mut config = self
            .jobs
            .get_config(job)
            .await
            .map_err(|e| PlanResult::Failed(format!("failed to get job config: {e}")))?;
        config
            .validate()
            .map_err(|e| PlanResult::Failed(e.to_string()))?;
        self.register(&mut config).await?;
        self.check()?;
        self.jobs
            .set_config(job, config)
            .await
            .map_err(|e| PlanResult::Failed(format!("failed to save job config: {e}")))
    }

    async fn register(&self, config: &mut Config) -> Result<(), PlanResult> {
        let job = self.job;
        for (i, image) in config.action.deploy.images.iter_mut().enumerate() {
            if let Some(uri) = image.uri.as_ref().filter(|u| !u.is_empty()) {
                let description = ArtifactDescription {
                    job,
                    kind: ArtifactType::Image,
                    alias: format!("Image_{i}"),
                    uri: uri.clone(),
                    sha256: image.sha256.clone(),
                    checksum: image.checksum_source(),
                };
                image.path = Some(self.push(description, uri).await?.0);
            }
            if let Some(uri) = image.checksum_uri.as_ref().filter(|u| !u.is_empty()) {
                let description = ArtifactDescription::new(
                    job,
                    ArtifactType::Image,
                    format!("ImageChecksum_{i}"),
                    uri.clone(),
                );
                image.checksum_path = Some(self.push(description, uri).await?.0);
            }
        }
        for case in &mut config.action.test.test_cases {
            for action in &mut case.test_actions {
                match action {
                    TestAction::Push(push) => {
                        let mut description = ArtifactDescription::new(
                            job,
                            ArtifactType::Test,
                            push.alias.clone(),
                            push.uri.clone(),
                        );
                        description.sha256 = push.sha256.clone();
                        push.path = Some(self.push(description, &push.uri).await?.0);
                    }
                    TestAction::Pull(pull) => {
                        self.check()?;
                        let description = ArtifactDescription::new(
                            job,
                            ArtifactType::Result,
                            pull.alias.clone(),
                            "",
                        );
                        let path = self.artifacts.create_artifact(description).await.map_err(|e| {
                            PlanResult::Failed(format!(
                                "failed to create a path for pull artifact {} in the artifact manager: {e}",
                                pull.alias
                            ))
                        })?;
                        pull.path = Some(path.0);
                    }
                    TestAction::Run(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Registers one artifact; `uri` (the config's, not a copy) names it in the error.
    async fn push(
        &self,
        description: ArtifactDescription,
        uri: &str,
    ) -> Result<ArtifactPath, PlanResult> {
        self.check()?;
        let alias: Box<str> = description.alias.as_str().into();
        let path = self
            .artifacts
            .push_artifact(description, self.collector.clone())
            .await
            .map_err(|e| {
                PlanResult::Failed(format!(
                    "failed to register URI <{uri}> (alias {alias}) in the artifact manager: {e}"
                ))
            })?;
        // Hashed here, on the planning task, not in the actor.
        let _ = self.events.send(Event::Registered {
            job: self.job,
            run: self.run,
            key: self.keyer.key(&path.0),
            alias,
        });
        Ok(path)
    }
}

/// The message of a panic payload.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "non-string panic payload".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::ready_info;

    #[test]
    fn ready_info_matches_format() {
        for (r, t) in [
            (0, 0),
            (1, 7),
            (7, 7),
            (9, 10),
            (10, 10),
            (10, 11),
            (123_456, 1_000_000),
            (usize::MAX, usize::MAX),
        ] {
            assert_eq!(
                ready_info(String::new(), r, t),
                format!("{r} / {t} artifacts ready")
            );
            let path = String::from("/tmp/weles/123456/TEST/alias_123456");
            let text = ready_info(path, r, t);
            assert_eq!(text, format!("{r} / {t} artifacts ready"));
        }
    }
}
