//! [`StoreError`]: what the [`Store`](crate::Store)'s own methods return, with the alias,
//! URI, path or job it concerns.

use std::path::PathBuf;

use crate::model::JobId;

/// An error of the [`Store`](crate::Store).
///
/// Returned by [`Store::open`](crate::Store::open), [`Store::info`](crate::Store::info),
/// [`Store::list`](crate::Store::list), and (boxed, so it can be downcast) by the
/// [`ArtifactManager`](crate::ArtifactManager) methods. A transfer that fails after
/// `push_artifact` returned is not an error of a method: it is a `FAILED` status with its
/// reason, on the collector and in the index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The alias is not a plain file name.
    #[error("invalid alias {alias:?} for job {job}: {reason}")]
    InvalidAlias {
        /// The job that asked for it.
        job: JobId,
        /// The alias as given.
        alias: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The URI's scheme is not one the store fetches (or `file` is switched off).
    #[error("unsupported URI scheme {scheme:?} in <{uri}> (alias {alias:?}, job {job}): {reason}")]
    UnsupportedScheme {
        /// The job.
        job: JobId,
        /// The artifact's alias.
        alias: String,
        /// The URI as given.
        uri: String,
        /// Its scheme.
        scheme: String,
        /// Which schemes are allowed.
        reason: &'static str,
    },
    /// The URI does not parse, or cannot be fetched as written.
    #[error("invalid URI <{uri}> (alias {alias:?}, job {job}): {reason}")]
    InvalidUri {
        /// The job.
        job: JobId,
        /// The artifact's alias.
        alias: String,
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The expected SHA-256 in the description is not 64 hex digits.
    #[error(
        "invalid expected sha256 {value:?} (alias {alias:?}, job {job}): expected 64 hex digits"
    )]
    InvalidDigest {
        /// The job.
        job: JobId,
        /// The artifact's alias.
        alias: String,
        /// The digest as given.
        value: String,
    },
    /// A path would leave the store's root (for example through a symbolic link planted
    /// under it).
    #[error("path {path} is outside the store root {root}")]
    OutsideRoot {
        /// The offending path.
        path: PathBuf,
        /// The store's root.
        root: PathBuf,
    },
    /// The store's root is not valid UTF-8 (artifact paths are strings).
    #[error("store root {path} is not valid UTF-8")]
    RootNotUtf8 {
        /// The root as given.
        path: PathBuf,
    },
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. `"create directory"`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The SQLite index failed.
    #[error("artifact index ({op}): {source}")]
    Index {
        /// What was being done, e.g. `"insert artifact"`.
        op: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The index's database was written by an incompatible version of this crate.
    #[error("artifact index {path}: schema version {found} is not supported (expected {expected})")]
    IndexVersion {
        /// The database file.
        path: PathBuf,
        /// The version found in it.
        found: i64,
        /// The version this crate writes.
        expected: i64,
    },
    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("cannot build the HTTP client: {source}")]
    Client {
        /// reqwest's error.
        #[source]
        source: reqwest::Error,
    },
    /// The store is closed: [`Store::close`](crate::Store::close) was called (no new
    /// pushes or creates), or its background index thread has stopped.
    #[error("the store is closed (closed by its owner, or its index thread stopped)")]
    Closed,
    /// Another `Store` has the root open (in this process or another): only one may.
    #[error("the store at {root} is open elsewhere (its store.lock is held)")]
    Locked {
        /// The root.
        root: PathBuf,
    },
    /// `cancel_job` ran for the job while the push waited for room among the transfers
    /// ([`StoreBuilder::max_transfers`](crate::StoreBuilder::max_transfers)): nothing was
    /// recorded or downloaded.
    #[error("push of {alias:?} for job {job} cancelled while waiting for room among the transfers")]
    Cancelled {
        /// The job.
        job: JobId,
        /// The artifact's alias.
        alias: String,
    },
}
