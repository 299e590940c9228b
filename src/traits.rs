//! The two collaborator traits the Downloader talks to: the embedding controller
//! ([`JobsController`]) and the artifact store ([`ArtifactManager`]).

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::error::BoxError;
use crate::model::{
    ArtifactDescription, ArtifactPath, ArtifactStatusChange, Config, JobId, JobStatus,
};

/// The controller that embeds the Downloader: it owns jobs, their statuses and configs.
///
/// # Contract
///
/// - Methods may be called concurrently for different jobs; calls for one job are never
///   concurrent with each other *of the same method kind* except that
///   `set_status_and_info` may run while `set_config` for the same job is in progress
///   (status updates for READY artifacts do not wait for the config to be saved).
/// - `set_status_and_info` calls for one job are made one at a time, in order.
/// - A method must not block the thread: it is polled from the Downloader's tasks. Slow
///   work is fine as long as it awaits.
/// - An error fails the job: the Downloader answers FAIL with the error's text.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
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
