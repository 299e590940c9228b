//! The two collaborator traits the Downloader talks to: the embedding controller
//! ([`JobsController`]) and the artifact store ([`ArtifactManager`]).

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::BoxError;
use crate::model::{
    ArtifactDescription, ArtifactPath, ArtifactStatusChange, Config, JobId, JobStatus,
};

/// What [`JobsController::try_set_status_and_info`] did with a status update.
#[derive(Debug)]
pub enum StatusNow {
    /// The update is made (`Ok`), or it failed at once (`Err`, which fails the job as a
    /// failed `set_status_and_info` does).
    Done(Result<(), BoxError>),
    /// The controller cannot make it without waiting: the info comes back, and the
    /// Downloader makes the update with `set_status_and_info` instead.
    Later(String),
}

/// The controller that embeds the Downloader: it owns jobs, their statuses and configs.
///
/// # Contract
///
/// - Methods may be called concurrently for different jobs; calls for one job are never
///   concurrent with each other *of the same method kind* except that
///   `set_status_and_info` may run while `set_config` for the same job is in progress
///   (status updates for READY artifacts do not wait for the config to be saved).
/// - Status updates for one job (`try_set_status_and_info` or `set_status_and_info`) are
///   made one at a time, in order. An update that `try_set_status_and_info` hands back
///   ([`StatusNow::Later`]) is made with `set_status_and_info`; while that call has not
///   finished, the job's next updates wait behind it and are then made with
///   `set_status_and_info` too, in order.
/// - A method must not block the thread: it is polled from the Downloader's tasks. Slow
///   work is fine as long as it awaits.
/// - An error fails the job: the Downloader answers FAIL with the error's text.
#[async_trait]
pub trait JobsController: Send + Sync + 'static {
    /// Sets the job's status and its human-readable info (e.g. `"3 / 7 artifacts ready"`).
    async fn set_status_and_info(
        &self,
        job: JobId,
        status: JobStatus,
        info: String,
    ) -> Result<(), BoxError>;

    /// Returns the job's config.
    async fn get_config(&self, job: JobId) -> Result<Config, BoxError>;

    /// Saves the job's config, with local paths filled in.
    async fn set_config(&self, job: JobId, config: Config) -> Result<(), BoxError>;

    /// Makes a status update at once if this controller can without waiting, or hands the
    /// info back ([`StatusNow::Later`], what the default does) for
    /// [`set_status_and_info`](Self::set_status_and_info) to make it.
    ///
    /// The Downloader tries this first for every update of a job whose earlier updates are
    /// all done. A controller that keeps its jobs in memory behind a lock (as Weles' job
    /// manager does, whose `SetStatusAndInfo` is a plain call) can make the update here
    /// and spare the Downloader a boxed future per READY artifact: about a tenth more
    /// status changes per second in `benches/downloader.rs`.
    ///
    /// # Contract
    ///
    /// - An update made here means what it means through `set_status_and_info`, and an
    ///   error fails the job the same way.
    /// - It runs on the Downloader's actor, so it must not block: no I/O, no waiting for a
    ///   lock that is held across an `.await` (a `try_lock` that hands the update back when
    ///   the lock is taken is fine).
    /// - [`StatusNow::Later`] must leave the job as it was: the update is made afterwards
    ///   with `set_status_and_info`.
    fn try_set_status_and_info(&self, job: JobId, status: JobStatus, info: String) -> StatusNow {
        let _ = (job, status);
        StatusNow::Later(info)
    }
}

#[cfg(any(test, feature = "mock"))]
mockall::mock! {
    /// A mockall mock of [`JobsController`] (feature `mock`). Every `async` method is
    /// driven by expectations; `try_set_status_and_info` is not mocked and keeps its
    /// default (every update goes through `set_status_and_info`), so tests set
    /// expectations on the async method only.
    pub JobsController {}

    #[async_trait]
    impl JobsController for JobsController {
        async fn set_status_and_info(
            &self,
            job: JobId,
            status: JobStatus,
            info: String,
        ) -> Result<(), BoxError>;
        async fn get_config(&self, job: JobId) -> Result<Config, BoxError>;
        async fn set_config(&self, job: JobId, config: Config) -> Result<(), BoxError>;
    }
}

/// The store that gets artifacts onto local disk.
///
/// # Contract
///
/// - `push_artifact` registers a download and returns the artifact's local path, unique
///   within the manager. Status changes for that path (`PENDING -> DOWNLOADING -> READY |
///   FAILED`) are sent later on `collector`; they may also be sent *before*
///   `push_artifact` returns (e.g. READY at once from a cache). Exactly one terminal
///   status (`READY` or `FAILED`) is sent per returned path, unless the job is cancelled.
///   A `FAILED` change carries its reason.
/// - A READY path holds the complete, verified file.
/// - `create_artifact` returns a path for a file the job will produce; its parent
///   directory exists. No status changes follow.
/// - Aliases are file names: empty, `.`, `..`, separators, NUL and names over 255 bytes
///   are rejected with an error. No description makes the manager write outside its root.
/// - `cancel_job` stops the job's transfers; after it returns, the manager may still send
///   a `FAILED` for them, which the Downloader ignores.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ArtifactManager: Send + Sync + 'static {
    /// Registers a download; returns the artifact's path. Statuses follow on `collector`.
    async fn push_artifact(
        &self,
        description: ArtifactDescription,
        collector: mpsc::Sender<ArtifactStatusChange>,
    ) -> Result<ArtifactPath, BoxError>;

    /// Allocates a path for an artifact the job will produce.
    async fn create_artifact(
        &self,
        description: ArtifactDescription,
    ) -> Result<ArtifactPath, BoxError>;

    /// Cancels every transfer of the job.
    async fn cancel_job(&self, job: JobId) -> Result<(), BoxError>;
}
