//! [`StoreBuilder`]: the Store's knobs and their defaults.

use std::path::Path;
use std::time::Duration;

use super::{Store, StoreError};

/// Default number of concurrent transfers.
pub const DEFAULT_WORKERS: usize = 16;
/// Default most transfers queued or running ([`StoreBuilder::max_transfers`]).
pub const DEFAULT_MAX_TRANSFERS: usize = 1024;
/// Default number of attempts per transfer, the first included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default base of the exponential backoff between attempts.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Default ceiling of the backoff between attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default cap on a server's `Retry-After`.
pub const DEFAULT_RETRY_AFTER_CAP: Duration = Duration::from_secs(60);
/// Default TCP (and TLS) connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default idle timeout: no bytes for this long fails the attempt.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a [`Store`] with non-default settings.
///
/// | knob | default | meaning |
/// | --- | --- | --- |
/// | [`workers`](Self::workers) | 16 | transfers running at once; the rest wait in a FIFO queue |
/// | [`max_transfers`](Self::max_transfers) | 1024 | transfers queued or running; a push beyond it waits for one to end |
/// | [`max_attempts`](Self::max_attempts) | 5 | attempts per transfer, the first included |
/// | [`backoff_base`](Self::backoff_base) | 250 ms | delay before retry *k* is random in `0..=min(max, base * 2^k)` (full jitter) |
/// | [`backoff_max`](Self::backoff_max) | 30 s | ceiling of that range |
/// | [`retry_after_cap`](Self::retry_after_cap) | 60 s | a server's `Retry-After` is used instead of the backoff, up to this |
/// | [`connect_timeout`](Self::connect_timeout) | 10 s | TCP + TLS connect |
/// | [`idle_timeout`](Self::idle_timeout) | 30 s | no response headers or no body bytes for this long fails the attempt |
/// | [`max_size`](Self::max_size) | none | per-artifact size limit in bytes |
/// | [`allow_file_scheme`](Self::allow_file_scheme) | true | accept `file://` URIs |
/// | [`fsync`](Self::fsync) | true | fsync each file and its directory before it is READY |
/// | [`keep_page_cache`](Self::keep_page_cache) | false | leave downloaded data in the page cache (else dropped once on disk, with fsync on) |
/// | [`verify_on_open`](Self::verify_on_open) | false | re-hash every READY file when opening |
/// | [`cache_max_bytes`](Self::cache_max_bytes) | none | bound on the shared cache; LRU eviction of unreferenced blobs |
/// | [`verify_cache_hits`](Self::verify_cache_hits) | false | re-hash a cached blob on every hit (else size + mtime, re-hash if the mtime moved) |
/// | [`copy_job_files`](Self::copy_job_files) | false | give jobs writable copies instead of hard links to the blobs |
/// | [`progress_interval`](Self::progress_interval) | 100 ms | least time between two byte-progress events of one transfer |
///
/// ```no_run
/// # async fn run() -> Result<(), artifact_coordinator::StoreError> {
/// use std::time::Duration;
/// use artifact_coordinator::Store;
///
/// let store = Store::builder()
///     .workers(4)
///     .max_attempts(3)
///     .idle_timeout(Duration::from_secs(10))
///     .max_size(Some(8 << 30))
///     .open("/var/lib/artifacts")
///     .await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[must_use]
#[derive(Debug, Clone, Default)]
pub struct StoreBuilder {
    /// The settings being built; handed to the store as they are.
    pub(crate) settings: Settings,
}

/// The store's settings (what the builder sets).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Concurrent transfers (at least 1).
    pub(crate) workers: usize,
    /// Transfers queued or running (at least `workers`).
    pub(crate) max_transfers: usize,
    /// Attempts per transfer, the first included (at least 1).
    pub(crate) max_attempts: u32,
    /// Base of the exponential backoff.
    pub(crate) backoff_base: Duration,
    /// Ceiling of the backoff.
    pub(crate) backoff_max: Duration,
    /// Cap on `Retry-After`.
    pub(crate) retry_after_cap: Duration,
    /// Connect timeout.
    pub(crate) connect_timeout: Duration,
    /// Idle (per read) timeout.
    pub(crate) idle_timeout: Duration,
    /// Per-artifact size limit.
    pub(crate) max_size: Option<u64>,
    /// Whether `file://` is accepted.
    pub(crate) allow_file_scheme: bool,
    /// Whether files and directories are fsynced.
    pub(crate) fsync: bool,
    /// Whether written data stays in the page cache once it is on disk.
    pub(crate) keep_page_cache: bool,
    /// Whether READY files are re-hashed at open.
    pub(crate) verify_on_open: bool,
    /// Bound on the cache's size.
    pub(crate) cache_max_bytes: Option<u64>,
    /// Whether every cache hit re-hashes the blob.
    pub(crate) verify_cache_hits: bool,
    /// Whether jobs get copies instead of hard links.
    pub(crate) copy_job_files: bool,
    /// Least time between two progress events of one transfer.
    pub(crate) progress_interval: Duration,
    /// Named temporary files even where unnamed ones work (for tests of that path).
    pub(crate) named_temps: bool,
}

/// Default [`StoreBuilder::progress_interval`].
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: DEFAULT_WORKERS,
            max_transfers: DEFAULT_MAX_TRANSFERS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            retry_after_cap: DEFAULT_RETRY_AFTER_CAP,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_size: None,
            allow_file_scheme: true,
            fsync: true,
            keep_page_cache: false,
            verify_on_open: false,
            cache_max_bytes: None,
            verify_cache_hits: false,
            copy_job_files: false,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            named_temps: false,
        }
    }
}

impl StoreBuilder {
    /// A builder with the default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of transfers that run at once (default 16; 0 is taken as 1). Pushed
    /// artifacts beyond that wait in a FIFO queue, as `PENDING`.
    pub fn workers(mut self, n: usize) -> Self {
        self.settings.workers = n.max(1);
        self
    }

    /// Most transfers queued or running at once (default 1024; never fewer than
    /// [`workers`](Self::workers)). A push beyond it waits until a transfer ends, so a job
    /// with 100,000 artifacts is registered only as fast as they download and the
    /// queue's memory stays bounded (a queued transfer holds a few KiB).
    pub fn max_transfers(mut self, n: usize) -> Self {
        self.settings.max_transfers = n;
        self
    }

    /// Attempts per transfer, the first included (default 5; 0 is taken as 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.settings.max_attempts = n.max(1);
        self
    }

    /// Base of the exponential backoff (default 250 ms): before retry *k* (0-based) the
    /// store sleeps a random time in `0..=min(backoff_max, base * 2^k)` ("full jitter").
    pub fn backoff_base(mut self, d: Duration) -> Self {
        self.settings.backoff_base = d;
        self
    }

    /// Ceiling of the backoff (default 30 s).
    pub fn backoff_max(mut self, d: Duration) -> Self {
        self.settings.backoff_max = d;
        self
    }

    /// Cap on a server's `Retry-After` (default 60 s). When a retryable answer carries
    /// `Retry-After` (seconds or an HTTP date), the store waits that long, up to this cap,
    /// instead of the jittered backoff.
    pub fn retry_after_cap(mut self, d: Duration) -> Self {
        self.settings.retry_after_cap = d;
        self
    }

    /// TCP and TLS connect timeout (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.settings.connect_timeout = d;
        self
    }

    /// Idle timeout (default 30 s): an attempt fails (and is retried) when the response
    /// headers do not arrive within connect timeout + idle timeout, or when no body bytes
    /// arrive for this long.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.settings.idle_timeout = d;
        self
    }

    /// Per-artifact size limit in bytes (default `None`, unlimited). A `Content-Length`
    /// over it fails before anything is written; a body that grows past it fails as soon
    /// as it does.
    pub fn max_size(mut self, bytes: Option<u64>) -> Self {
        self.settings.max_size = bytes;
        self
    }

    /// Whether `file://` URIs are accepted (default `true`). When off, pushing one is an
    /// error at push time.
    pub fn allow_file_scheme(mut self, yes: bool) -> Self {
        self.settings.allow_file_scheme = yes;
        self
    }

    /// Whether each file (and then its directory) is fsynced before it is renamed into
    /// place and reported READY (default `true`). Turning it off is faster and still never
    /// shows a partial file at a READY path, but a power loss may lose recent files.
    pub fn fsync(mut self, yes: bool) -> Self {
        self.settings.fsync = yes;
        self
    }

    /// Whether downloaded data stays in the kernel's page cache once it is on disk
    /// (default `false`). With [`fsync`](Self::fsync) on, a download is written back to
    /// the disk in 8 MiB windows while it goes on, so the closing fsync has little left to
    /// do; by default each window's pages are then dropped from the page cache, so a
    /// multi-GiB image neither pushes the rest of the machine's cache out nor makes the
    /// kernel find fresh memory for every window. Turn it on when jobs read their
    /// artifacts right after they are READY and memory is plentiful. No effect without
    /// fsync, or off Linux.
    pub fn keep_page_cache(mut self, yes: bool) -> Self {
        self.settings.keep_page_cache = yes;
        self
    }

    /// Whether opening the store re-hashes every READY file and compares it with the
    /// recorded SHA-256 (default `false`: existence and size are checked, and only a file
    /// whose modification time is not its blob's, i.e. written since, is re-hashed, which
    /// is cheap). A file that does not match is removed and its row marked FAILED.
    pub fn verify_on_open(mut self, yes: bool) -> Self {
        self.settings.verify_on_open = yes;
        self
    }

    /// Bound on the shared cache's size in bytes (default `None`: unbounded). After each
    /// download that adds a blob, and after [`Store::remove_job`], blobs that no `READY`
    /// artifact references and no transfer is using are removed, least recently used
    /// first, until the cache fits. Referenced blobs are never evicted, so the cache can
    /// stay above the bound while jobs hold more than it.
    pub fn cache_max_bytes(mut self, bytes: Option<u64>) -> Self {
        self.settings.cache_max_bytes = bytes;
        self
    }

    /// Whether a push answered from the cache re-hashes the blob first (default `false`:
    /// the size must match and the content is re-hashed only when the blob's modification
    /// time moved since it was stored). A blob that does not match is dropped and the
    /// artifact downloaded again.
    pub fn verify_cache_hits(mut self, yes: bool) -> Self {
        self.settings.verify_cache_hits = yes;
        self
    }

    /// Whether each job gets its own writable copy of a cached blob (default `false`:
    /// a read-only hard link, which costs no space and no time). Turn it on when jobs
    /// modify their files in place.
    pub fn copy_job_files(mut self, yes: bool) -> Self {
        self.settings.copy_job_files = yes;
        self
    }

    /// Least time between two byte-progress events of one transfer (default 100 ms); see
    /// [`Store::subscribe_progress`].
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.settings.progress_interval = interval;
        self
    }

    /// Opens (creating if needed) the store at `root` with these settings. See
    /// [`Store::open`].
    ///
    /// # Errors
    ///
    /// See [`Store::open`].
    pub async fn open(self, root: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with(root.as_ref(), self.settings).await
    }
}
