//! Error types of the crate: config parsing, the Downloader handle, and the boxed error
//! that collaborator traits return.

use crate::model::JobId;

/// The error type collaborator traits ([`JobsController`](crate::JobsController),
/// [`ArtifactManager`](crate::ArtifactManager)) return: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A job config that could not be parsed or is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The JSON does not parse or does not match the schema (serde names unknown fields).
    #[error("invalid job config at line {line}, column {column}: {message}")]
    Parse {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong, without the position (which `line` and `column` give).
        message: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A field has a value the schema allows but the contract does not.
    #[error("invalid job config: field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `action.deploy.images[0].sha256`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// An error returned to a caller of the [`Downloader`](crate::Downloader) handle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// `download` was called for a job that is still in flight.
    #[error("job {job} is already being downloaded")]
    AlreadyInFlight {
        /// The job.
        job: JobId,
    },
    /// The actor task has stopped (shut down, or every handle dropped).
    #[error("the downloader has shut down")]
    Closed,
    /// The artifact manager failed to cancel the job's downloads.
    #[error("artifact manager failed to cancel job {job}: {source}")]
    Cancel {
        /// The job.
        job: JobId,
        /// The manager's error.
        #[source]
        source: crate::error::BoxError,
    },
    /// A task of the downloader panicked (for example a mock whose expectation failed).
    #[error("a downloader task panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
}
