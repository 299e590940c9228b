//! # artifact-coordinator
//!
//! Gets every artifact a test job needs onto local disk before the job runs, and tells
//! the job controller when that is done.
//!
//! A controller embeds a [`Downloader`]: for each job it reads the job's [`Config`],
//! hands every file to download to an [`ArtifactManager`], allocates paths for the files
//! the job will produce, writes the local paths back into the config, reports
//! `"i / n artifacts ready"` to the [`JobsController`], and finally answers OK or FAIL
//! with a [`Notification`].
//!
//! ```
//! use std::sync::Arc;
//! use artifact_coordinator::{
//!     async_trait, ArtifactDescription, ArtifactManager, ArtifactPath, ArtifactStatus,
//!     ArtifactStatusChange, BoxError, Config, Downloader, JobId, JobStatus, JobsController,
//! };
//! use tokio::sync::mpsc;
//!
//! /// A controller that keeps one config in memory.
//! struct Controller;
//!
//! #[async_trait]
//! impl JobsController for Controller {
//!     async fn set_status_and_info(&self, job: JobId, _: JobStatus, info: String) -> Result<(), BoxError> {
//!         println!("job {job}: {info}");
//!         Ok(())
//!     }
//!     async fn get_config(&self, _: JobId) -> Result<Config, BoxError> {
//!         Ok(Config::from_json(r#"{"action": {"deploy": {"images": [{"uri": "http://x/boot.img"}]}}}"#)?)
//!     }
//!     async fn set_config(&self, _: JobId, config: Config) -> Result<(), BoxError> {
//!         assert!(config.action.deploy.images[0].path.is_some());
//!         Ok(())
//!     }
//! }
//!
//! /// A manager that has every file already.
//! struct Instant;
//!
//! #[async_trait]
//! impl ArtifactManager for Instant {
//!     async fn push_artifact(
//!         &self,
//!         description: ArtifactDescription,
//!         collector: mpsc::Sender<ArtifactStatusChange>,
//!     ) -> Result<ArtifactPath, BoxError> {
//!         let path = ArtifactPath(format!("/store/{}/{}", description.job, description.alias));
//!         collector.send(ArtifactStatusChange::new(path.clone(), ArtifactStatus::Ready)).await?;
//!         Ok(path)
//!     }
//!     async fn create_artifact(&self, d: ArtifactDescription) -> Result<ArtifactPath, BoxError> {
//!         Ok(ArtifactPath(format!("/store/{}/{}", d.job, d.alias)))
//!     }
//!     async fn cancel_job(&self, _: JobId) -> Result<(), BoxError> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (downloader, mut notifications) = Downloader::new(Arc::new(Controller), Arc::new(Instant));
//! downloader.download(JobId(1)).await?;
//! let answer = notifications.recv().await.expect("one answer per job");
//! assert!(answer.ok, "{}", answer.msg);
//! downloader.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - `model`: the job config (Weles-shaped JSON), identifiers, statuses and messages.
//! - `traits`: the collaborator traits [`JobsController`] and [`ArtifactManager`], with
//!   their contracts (and mockall mocks behind the `mock` feature); [`StatusNow`], for a
//!   controller that makes status updates at once
//!   ([`JobsController::try_set_status_and_info`]).
//! - `downloader`: the [`Downloader`] handle and its actor: path-to-job map, per-job
//!   progress, status reports and the OK/FAIL answer.
//! - `store`: the [`Store`], the real [`ArtifactManager`]: files under one root, an
//!   SQLite index ([`Store::list`], [`Store::info`]) and a bounded pool of HTTP(S) and
//!   `file://` transfers with retries, resume and verification ([`StoreBuilder`]), and a
//!   shared content-addressed cache: single-flight transfers, cache hits by sha256,
//!   revalidation by URL, eviction ([`Store::cache_stats`], [`Store::remove_job`]) and byte
//!   progress ([`Store::subscribe_progress`], [`ByteProgress`]).
//! - `error`: the error enums ([`ConfigError`], [`DownloadError`]) and [`BoxError`].
//!
//! # Features
//!
//! - `mock`: exports `MockJobsController` and `MockArtifactManager` (mockall) so a
//!   controller's own tests can use them.
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

mod downloader;
mod error;
mod model;
mod store;
mod traits;

pub use async_trait::async_trait;
pub use downloader::{
    DEFAULT_COLLECTOR_CAPACITY, Downloader, DownloaderBuilder, INFO_FAILED, JobBytes, JobProgress,
    Stats,
};
pub use error::{BoxError, ConfigError, DownloadError};
pub use model::{
    Action, ArtifactDescription, ArtifactPath, ArtifactStatus, ArtifactStatusChange, ArtifactType,
    ChecksumSource, ChecksumType, Config, Deploy, ImageDefinition, JobId, JobStatus, Notification,
    Priority, Pull, Push, Run, Test, TestAction, TestCase,
};
pub use store::{
    ArtifactFilter, ArtifactPage, ArtifactRecord, ByteProgress, CacheStats, DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_MAX, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_TRANSFERS, DEFAULT_PROGRESS_INTERVAL, DEFAULT_RETRY_AFTER_CAP, DEFAULT_WORKERS,
    Page, REASON_CANCELLED, REASON_CLOSED, REASON_INTERRUPTED, REASON_MISSING, Store, StoreBuilder,
    StoreError,
};
pub use traits::{ArtifactManager, JobsController, StatusNow};
#[cfg(any(test, feature = "mock"))]
pub use traits::{MockArtifactManager, MockJobsController};

/// Compile-time check that the public handle types can be shared across threads.
#[allow(dead_code)]
fn assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Downloader>();
    check::<Config>();
    check::<Notification>();
    check::<ArtifactStatusChange>();
    check::<Store>();
    check::<StoreBuilder>();
    check::<StoreError>();
    check::<ArtifactRecord>();
}

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
