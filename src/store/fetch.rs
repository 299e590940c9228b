//! The transfer engine: fetches one URI into a temporary file with constant memory,
//! hashing on the fly, retrying what is worth retrying, resuming when the server allows,
//! and verifying the result.
//!
//! [`Fetcher::download`] is deliberately independent of the index and of the final path:
//! it writes a temporary file, verifies it and hands it with its size and SHA-256 to the
//! caller's `keep` (which gives it its blob name), or drops it and returns why not. The
//! last write, the fsync, the check and `keep` run in one call on the blocking pool, so a
//! small file costs one trip there (each trip wakes a thread twice).
//!
//! # Failure handling
//!
//! - Retried (up to `max_attempts` attempts in all): connection errors, connect and idle
//!   timeouts, resets and truncated bodies, HTTP 408, 429 and 5xx except 501 and 505.
//!   Before retry *k* (0-based) the engine sleeps a random time in
//!   `0..=min(backoff_max, backoff_base * 2^k)`, or the server's `Retry-After` (capped)
//!   when the answer carried one. Sleeps use `tokio::time`.
//! - Failed at once: any other 4xx (and 501, 505), a size over the limit, a digest
//!   mismatch, a local I/O error, cancellation.
//! - Resume: when the answer that broke had `Accept-Ranges: bytes` and an ETag (strong)
//!   or Last-Modified, the partial file is kept and the next attempt asks for
//!   `Range: bytes=N-` with `If-Range`. A `200` answer, or a `206` whose `Content-Range`
//!   does not start at `N`, restarts from zero (file truncated, hashes reset). The hashes
//!   are kept across attempts, so they always cover exactly the bytes in the file.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use md5::Md5;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use url::Url;

use super::builder::Settings;
use super::staging::{TempFile, TempSpec};
use super::writeback::Writeback;
use crate::model::ChecksumType;

/// Bytes buffered before a write to the file (and the hashing of them) off the runtime.
/// 1 MiB rather than 256 KiB: a quarter of the trips to the blocking pool, and in
/// alternating runs the 1 GiB download took 1.65-1.84 s against 1.84-2.46 s (big set
/// 1.29-1.35 s against 1.42-1.51 s). A running transfer holds two such buffers.
const WRITE_CHUNK: usize = 1024 * 1024;

/// Largest checksum file the engine reads.
pub(crate) const MAX_CHECKSUM_FILE: u64 = 64 * 1024;

/// Most redirects followed.
const MAX_REDIRECTS: usize = 10;

/// Why a transfer did not produce a verified file. Its `Display` is the reason recorded in
/// the index and sent with `FAILED`.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// The job (or the store) was cancelled.
    Cancelled,
    /// An HTTP status that is not success.
    Status {
        /// The URI.
        uri: String,
        /// The status.
        status: StatusCode,
    },
    /// Connecting or talking to the server failed.
    Network {
        /// The URI.
        uri: String,
        /// The error and its causes.
        detail: String,
    },
    /// No response headers in time.
    HeaderTimeout {
        /// The URI.
        uri: String,
        /// How long the engine waited.
        waited: Duration,
    },
    /// No body bytes for the idle timeout.
    IdleTimeout {
        /// The URI.
        uri: String,
        /// The idle timeout.
        idle: Duration,
        /// Bytes received so far (in the file).
        got: u64,
    },
    /// The body ended (or broke) before `Content-Length` bytes.
    Truncated {
        /// The URI.
        uri: String,
        /// Bytes announced (whole file).
        expected: u64,
        /// Bytes received (whole file).
        got: u64,
        /// The transport error, if the body broke rather than ended.
        detail: Option<String>,
    },
    /// A range answer that cannot continue the partial file.
    BadRange {
        /// The URI.
        uri: String,
        /// What was wrong.
        detail: String,
    },
    /// The artifact is larger than the size limit.
    TooLarge {
        /// The URI.
        uri: String,
        /// The limit.
        limit: u64,
        /// The announced size, when it was announced.
        declared: Option<u64>,
    },
    /// A local file-system operation failed.
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's SHA-256 is not the expected one (from the description).
    Sha256Mismatch {
        /// Where the file came from.
        uri: String,
        /// Expected digest, lower-case hex.
        expected: String,
        /// Actual digest, lower-case hex.
        got: String,
    },
    /// The file's digest is not the one in its checksum file.
    ChecksumMismatch {
        /// The algorithm.
        kind: ChecksumType,
        /// The checksum file's URI.
        uri: String,
        /// Expected digest, lower-case hex.
        expected: String,
        /// Actual digest, lower-case hex.
        got: String,
    },
    /// The checksum file holds no digest of the right length.
    NoDigest {
        /// The checksum file's URI.
        uri: String,
        /// The algorithm looked for.
        kind: ChecksumType,
    },
    /// Fetching the checksum file failed.
    ChecksumFile {
        /// The checksum file's URI.
        uri: String,
        /// Why.
        source: Box<FetchError>,
    },
    /// A request that cannot succeed (too many redirects, a malformed request).
    Request {
        /// The URI.
        uri: String,
        /// The error and its causes.
        detail: String,
    },
    /// A shared transfer failed (the reason, already rendered, as every job sharing it
    /// gets it).
    Shared(std::sync::Arc<str>),
    /// Every attempt failed; the last error.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<FetchError>,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Cancelled => f.write_str("cancelled"),
            FetchError::Status { uri, status } => match status.canonical_reason() {
                Some(text) => write!(f, "HTTP {} {text} from {uri}", status.as_u16()),
                None => write!(f, "HTTP {} from {uri}", status.as_u16()),
            },
            FetchError::Network { uri, detail } => {
                write!(f, "connection error for {uri}: {detail}")
            }
            FetchError::HeaderTimeout { uri, waited } => {
                write!(f, "timeout: no response from {uri} within {waited:?}")
            }
            FetchError::IdleTimeout { uri, idle, got } => write!(
                f,
                "idle timeout: no data from {uri} for {idle:?} (after {got} bytes)"
            ),
            FetchError::Truncated {
                uri,
                expected,
                got,
                detail,
            } => {
                write!(
                    f,
                    "truncated body from {uri}: expected {expected} bytes, got {got}"
                )?;
                match detail {
                    Some(detail) => write!(f, " ({detail})"),
                    None => Ok(()),
                }
            }
            FetchError::BadRange { uri, detail } => {
                write!(f, "unusable range answer from {uri}: {detail}")
            }
            FetchError::TooLarge {
                uri,
                limit,
                declared: Some(size),
            } => write!(
                f,
                "{uri} exceeds size limit of {limit} bytes (Content-Length {size})"
            ),
            FetchError::TooLarge {
                uri,
                limit,
                declared: None,
            } => write!(
                f,
                "{uri} exceeds size limit of {limit} bytes (body grew past it)"
            ),
            FetchError::Io { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", path.display())
            }
            FetchError::Sha256Mismatch { uri, expected, got } => {
                write!(
                    f,
                    "sha256 mismatch for {uri}: expected {expected}, got {got}"
                )
            }
            FetchError::ChecksumMismatch {
                kind,
                uri,
                expected,
                got,
            } => write!(
                f,
                "{kind} mismatch (checksum file {uri}): expected {expected}, got {got}"
            ),
            FetchError::NoDigest { uri, kind } => {
                write!(f, "checksum file {uri} holds no {kind} digest")
            }
            FetchError::ChecksumFile { uri, source } => {
                write!(f, "checksum file {uri}: {source}")
            }
            FetchError::Request { uri, detail } => write!(f, "cannot fetch {uri}: {detail}"),
            FetchError::Shared(reason) => f.write_str(reason),
            FetchError::GaveUp { attempts, last } => {
                write!(f, "{last} (gave up after {attempts} attempts)")
            }
        }
    }
}

impl std::error::Error for FetchError {}

impl FetchError {
    /// Whether the transfer was cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        matches!(self, FetchError::Cancelled)
    }
}

impl From<FetchError> for std::sync::Arc<str> {
    fn from(e: FetchError) -> Self {
        e.to_string().into()
    }
}

/// What one attempt ended with, when it did not finish the transfer.
#[derive(Debug)]
enum AttemptError {
    /// Stop now with this error.
    Fatal(FetchError),
    /// Worth another attempt.
    Retry {
        /// Why this attempt failed.
        error: FetchError,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
        /// Retry without a backoff delay (a restart from zero after a bad range answer).
        immediate: bool,
    },
}

impl AttemptError {
    /// A retryable error with the usual backoff.
    fn retry(error: FetchError) -> Self {
        AttemptError::Retry {
            error,
            retry_after: None,
            immediate: false,
        }
    }
}

impl From<FetchError> for AttemptError {
    fn from(e: FetchError) -> Self {
        AttemptError::Fatal(e)
    }
}

/// Where an artifact comes from; checked at push time.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// An `http` or `https` URL.
    Http(Url),
    /// A local file (`file://` URI).
    File(PathBuf),
}

/// Why a URI cannot be a [`Source`].
#[derive(Debug)]
pub(crate) enum SourceError {
    /// Not a URI.
    Invalid(String),
    /// A scheme the store does not fetch.
    Scheme {
        /// The scheme.
        scheme: String,
        /// Which schemes are allowed.
        reason: &'static str,
    },
}

impl Source {
    /// Parses and checks `uri`.
    pub(crate) fn parse(uri: &str, allow_file: bool) -> Result<Source, SourceError> {
        if uri.trim().is_empty() {
            return Err(SourceError::Invalid("empty URI".into()));
        }
        let url = Url::parse(uri).map_err(|e| SourceError::Invalid(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(SourceError::Invalid("no host".into()));
                }
                Ok(Source::Http(url))
            }
            "file" if allow_file => {
                if !matches!(url.host_str(), None | Some("") | Some("localhost")) {
                    return Err(SourceError::Invalid(
                        "a file URI must not name a remote host".into(),
                    ));
                }
                let path = url
                    .to_file_path()
                    .map_err(|()| SourceError::Invalid("not a local file path".into()))?;
                Ok(Source::File(path))
            }
            "file" => Err(SourceError::Scheme {
                scheme: "file".into(),
                reason: "file URIs are switched off in this store; use http or https",
            }),
            other => Err(SourceError::Scheme {
                scheme: other.to_owned(),
                reason: if allow_file {
                    "supported schemes are http, https and file"
                } else {
                    "supported schemes are http and https"
                },
            }),
        }
    }
}

/// A digest to check the file against.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    /// Expected SHA-256 (from the description), lower-case hex.
    pub(crate) sha256: Option<String>,
    /// The checksum file's digest and where it came from.
    pub(crate) checksum: Option<ChecksumDigest>,
}

impl Expected {
    /// Checks the file's digests against what is expected.
    fn check(&self, uri: &str, sha256: &str, md5: Option<String>) -> Result<(), FetchError> {
        if let Some(want) = &self.sha256
            && want != sha256
        {
            return Err(FetchError::Sha256Mismatch {
                uri: uri.to_owned(),
                expected: want.clone(),
                got: sha256.to_owned(),
            });
        }
        if let Some(check) = &self.checksum {
            let got = match check.kind {
                ChecksumType::Sha256 => Some(sha256.to_owned()),
                ChecksumType::Md5 => md5,
            };
            if got.as_deref() != Some(check.digest.as_str()) {
                return Err(FetchError::ChecksumMismatch {
                    kind: check.kind,
                    uri: check.uri.clone(),
                    expected: check.digest.clone(),
                    got: got.unwrap_or_default(),
                });
            }
        }
        Ok(())
    }
}

/// A digest read from a checksum file.
#[derive(Debug, Clone)]
pub(crate) struct ChecksumDigest {
    /// Its algorithm.
    pub(crate) kind: ChecksumType,
    /// The digest, lower-case hex.
    pub(crate) digest: String,
    /// The checksum file's URI (for the error message).
    pub(crate) uri: String,
}

/// A verified temporary file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetched {
    /// Its size in bytes.
    pub(crate) size: u64,
    /// Its SHA-256, lower-case hex.
    pub(crate) sha256: String,
    /// The server's validators for this content (empty for `file://`).
    pub(crate) validators: Validators,
}

/// What [`Fetcher::download`] produced.
#[derive(Debug)]
pub(crate) enum Downloaded<T> {
    /// A verified file, and what its `keep` made of it.
    File(Fetched, T),
    /// The server answered `304 Not Modified` to the conditional request: the content
    /// the validators describe is still current. No file was written.
    NotModified,
}

/// An HTTP response's cache validators: sent back as `If-None-Match` /
/// `If-Modified-Since` to ask whether a cached copy is still current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Validators {
    /// `ETag` (strong or weak).
    pub(crate) etag: Option<String>,
    /// `Last-Modified`.
    pub(crate) last_modified: Option<String>,
}

impl Validators {
    /// Whether there is anything to revalidate with.
    pub(crate) fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    /// The validators of a response.
    fn of(headers: &HeaderMap) -> Validators {
        let text = |name| {
            headers
                .get(name)
                .and_then(|v: &header::HeaderValue| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Validators {
            etag: text(header::ETAG),
            last_modified: text(header::LAST_MODIFIED),
        }
    }
}

/// Bytes done and bytes expected (when known) of one transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ByteCount {
    /// Bytes received and kept.
    pub(crate) done: u64,
    /// The whole size, when the server announced it.
    pub(crate) total: Option<u64>,
}

/// Publishes a transfer's [`ByteCount`] on a `watch` channel, at most once per
/// `interval` (plus the final count), so a fast transfer does not flood subscribers.
#[derive(Debug)]
pub(crate) struct Meter {
    /// Where the counts go.
    tx: watch::Sender<ByteCount>,
    /// Least time between two publications.
    interval: Duration,
    /// When the last count was published.
    last: Option<Instant>,
    /// The total, once known.
    total: Option<u64>,
}

impl Meter {
    /// A meter publishing on `tx`.
    pub(crate) fn new(tx: watch::Sender<ByteCount>, interval: Duration) -> Meter {
        Meter {
            tx,
            interval,
            last: None,
            total: None,
        }
    }

    /// Publishes `done` if the interval has passed (or `force`).
    fn publish(&mut self, done: u64, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .last
                .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            return;
        }
        self.last = Some(now);
        let count = ByteCount {
            done,
            total: self.total,
        };
        self.tx.send_if_modified(|c| {
            let changed = *c != count;
            *c = count;
            changed
        });
    }
}

/// How one successful HTTP exchange ended.
#[derive(Debug)]
enum Answer {
    /// The body is in the sink; the response's validators.
    Body(Validators),
    /// `304 Not Modified` to a conditional request.
    NotModified,
}

/// The hashes computed while streaming.
#[derive(Clone)]
struct Hashes {
    /// Always computed (recorded in the index).
    sha256: Sha256,
    /// Computed when an md5 checksum file is to be checked.
    md5: Option<Md5>,
}

impl Hashes {
    fn new(md5: bool) -> Self {
        Hashes {
            sha256: Sha256::new(),
            md5: md5.then(Md5::new),
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(md5) = &mut self.md5 {
            md5.update(data);
        }
    }

    /// (sha256, md5) as lower-case hex.
    fn finish(self) -> (String, Option<String>) {
        (
            hex::encode(self.sha256.finalize()),
            self.md5.map(|m| hex::encode(m.finalize())),
        )
    }
}

/// Where the bytes go.
enum Target {
    /// A temporary file.
    File(FileSlot),
    /// Memory (checksum files).
    Memory(Vec<u8>),
}

/// A sink's temporary file: made by the first blocking write, so that a transfer that
/// fails before any byte arrives never makes one, and a small file is made, written and
/// synced in one trip to the blocking pool.
enum FileSlot {
    /// Not made yet.
    Unmade(TempSpec),
    /// Made.
    Made(TempFile),
    /// Lent to a blocking write in progress, or lost with an error.
    Lent,
}

/// What a blocking write hands back: the file (or why it failed), the hashes, the
/// writeback state and the (emptied) buffer.
struct Written {
    file: Result<TempFile, FetchError>,
    hashes: Hashes,
    writeback: Writeback,
    buf: Vec<u8>,
}

/// On the blocking pool: makes the file if needed, hashes `buf` and writes it. On an
/// error the file is dropped (a named one removed).
fn write_chunk(
    slot: FileSlot,
    hashes: &mut Hashes,
    writeback: &mut Writeback,
    buf: &[u8],
    path: &Path,
) -> Result<TempFile, FetchError> {
    let io = |op, source| FetchError::Io {
        op,
        path: path.to_owned(),
        source,
    };
    let mut file = match slot {
        FileSlot::Made(file) => file,
        FileSlot::Unmade(spec) => spec.create().map_err(|e| io("create temporary file", e))?,
        FileSlot::Lent => {
            return Err(io(
                "write",
                std::io::Error::other("file lost by an earlier error"),
            ));
        }
    };
    if !buf.is_empty() {
        hashes.update(buf);
        file.file_mut().write_all(buf).map_err(|e| io("write", e))?;
        writeback.wrote(file.file(), buf.len());
    }
    Ok(file)
}

/// A byte sink that hashes what it keeps and can start over.
///
/// For a file, bytes collect in `pending`; every [`WRITE_CHUNK`] they are hashed and
/// written on the blocking pool while the next chunk collects (two buffers, so the
/// network, the hashing and the disk overlap and memory stays at two chunks).
struct Sink {
    /// The file or buffer.
    target: Target,
    /// Hashes of every byte written to `target` (taken out while a blocking write runs).
    hashes: Option<Hashes>,
    /// Bytes not yet handed to a write.
    pending: Vec<u8>,
    /// An emptied buffer to collect the next chunk in.
    spare: Vec<u8>,
    /// The blocking write in progress, if any.
    inflight: Option<tokio::task::JoinHandle<Written>>,
    /// Bytes accepted: written, being written and pending.
    len: u64,
    /// Whether md5 is computed too.
    md5: bool,
    /// The file's path, for errors.
    path: PathBuf,
    /// Byte progress, if anyone listens.
    meter: Option<Meter>,
    /// Writeback of the file (taken out while a blocking write runs).
    writeback: Option<Writeback>,
}

impl Sink {
    /// A sink into the temporary file `spec` (made on the first write).
    fn file(spec: TempSpec, md5: bool, writeback: Writeback) -> Self {
        Sink {
            path: spec.path(),
            target: Target::File(FileSlot::Unmade(spec)),
            writeback: Some(writeback),
            hashes: Some(Hashes::new(md5)),
            pending: Vec::new(),
            spare: Vec::new(),
            inflight: None,
            len: 0,
            md5,
            meter: None,
        }
    }

    fn memory(md5: bool) -> Self {
        Sink {
            target: Target::Memory(Vec::new()),
            hashes: Some(Hashes::new(md5)),
            pending: Vec::new(),
            spare: Vec::new(),
            inflight: None,
            len: 0,
            md5,
            path: PathBuf::from("<memory>"),
            meter: None,
            writeback: None,
        }
    }

    fn len(&self) -> u64 {
        self.len
    }

    /// Announces the whole size (or that it is unknown) to the meter.
    fn set_total(&mut self, total: Option<u64>) {
        let len = self.len;
        if let Some(meter) = &mut self.meter {
            meter.total = total;
            meter.publish(len, true);
        }
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> FetchError {
        FetchError::Io {
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Accepts `data` (written to the file in chunks, off the runtime).
    async fn write(&mut self, data: &[u8]) -> Result<(), FetchError> {
        self.len += data.len() as u64;
        if let Some(meter) = &mut self.meter {
            meter.publish(self.len, false);
        }
        match &mut self.target {
            Target::Memory(buf) => {
                if let Some(h) = &mut self.hashes {
                    h.update(data);
                }
                buf.extend_from_slice(data);
                Ok(())
            }
            Target::File(_) => {
                self.pending.extend_from_slice(data);
                if self.pending.len() >= WRITE_CHUNK {
                    self.settle().await?;
                    self.start_write()?;
                }
                Ok(())
            }
        }
    }

    /// Waits for the write in progress and takes the file, the hashes and the buffer back.
    async fn settle(&mut self) -> Result<(), FetchError> {
        let Some(inflight) = self.inflight.take() else {
            return Ok(());
        };
        let written = inflight
            .await
            .map_err(|e| self.io("write", std::io::Error::other(e.to_string())))?;
        self.hashes = Some(written.hashes);
        self.writeback = Some(written.writeback);
        self.spare = written.buf;
        let file = written.file?;
        if let Target::File(slot) = &mut self.target {
            *slot = FileSlot::Made(file);
        }
        Ok(())
    }

    /// Takes what a blocking call needs: the file slot, the hashes and the writeback
    /// state. Call after [`Self::settle`].
    fn lend(&mut self) -> Result<(FileSlot, Hashes, Writeback), FetchError> {
        let Target::File(slot) = &mut self.target else {
            return Err(self.io("write", std::io::Error::other("not a file")));
        };
        let slot = std::mem::replace(slot, FileSlot::Lent);
        let hashes = self
            .hashes
            .take()
            .ok_or_else(|| self.io("hash", std::io::Error::other("hashes lost")))?;
        Ok((slot, hashes, self.writeback.take().unwrap_or_default()))
    }

    /// Hands the pending bytes to a blocking write (hash, then write). Call after
    /// [`Self::settle`].
    fn start_write(&mut self) -> Result<(), FetchError> {
        if self.pending.is_empty() || !matches!(self.target, Target::File(_)) {
            return Ok(());
        }
        let (slot, mut hashes, mut writeback) = self.lend()?;
        let mut buf = std::mem::replace(&mut self.pending, std::mem::take(&mut self.spare));
        let path = self.path.clone();
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            let file = write_chunk(slot, &mut hashes, &mut writeback, &buf, &path);
            buf.clear();
            Written {
                file,
                hashes,
                writeback,
                buf,
            }
        }));
        Ok(())
    }

    /// Drops everything written so far: the file is truncated and the hashes restart.
    async fn reset(&mut self) -> Result<(), FetchError> {
        self.settle().await?;
        self.pending.clear();
        self.len = 0;
        if let Some(meter) = &mut self.meter {
            meter.publish(0, true);
        }
        self.hashes = Some(Hashes::new(self.md5));
        if let Some(writeback) = &mut self.writeback {
            writeback.reset();
        }
        let io = |source| FetchError::Io {
            op: "truncate",
            path: self.path.clone(),
            source,
        };
        match &mut self.target {
            Target::Memory(buf) => {
                buf.clear();
                Ok(())
            }
            Target::File(FileSlot::Unmade(_)) => Ok(()),
            Target::File(FileSlot::Lent) => {
                Err(io(std::io::Error::other("file lost by an earlier error")))
            }
            Target::File(slot) => {
                let FileSlot::Made(mut file) = std::mem::replace(slot, FileSlot::Lent) else {
                    return Ok(());
                };
                let joined = tokio::task::spawn_blocking(move || {
                    let f = file.file_mut();
                    let result = f.set_len(0).and_then(|()| std::io::Seek::rewind(f));
                    (file, result)
                })
                .await;
                match joined {
                    Ok((file, result)) => {
                        *slot = FileSlot::Made(file);
                        result.map_err(io)
                    }
                    Err(e) => Err(io(std::io::Error::other(e.to_string()))),
                }
            }
        }
    }

    /// The digests (sha256, md5) and the bytes of a memory sink.
    fn finish_memory(mut self) -> Result<(String, Option<String>, Vec<u8>), FetchError> {
        let hashes = self
            .hashes
            .take()
            .ok_or_else(|| self.io("hash", std::io::Error::other("hashes lost")))?;
        let (sha256, md5) = hashes.finish();
        match std::mem::replace(&mut self.target, Target::Memory(Vec::new())) {
            Target::Memory(buf) => Ok((sha256, md5, buf)),
            Target::File(_) => Err(self.io("read", std::io::Error::other("not in memory"))),
        }
    }

    /// Finishes a file sink in one blocking call: makes the file if no byte came yet,
    /// writes (and hashes) what is pending, fsyncs the file if asked, and hands it with its
    /// digests (sha256, md5) to `then`, whose result this returns.
    async fn finish_file<T, F>(mut self, fsync: bool, then: F) -> Result<T, FetchError>
    where
        T: Send + 'static,
        F: FnOnce(TempFile, String, Option<String>) -> Result<T, FetchError> + Send + 'static,
    {
        self.settle().await?;
        let len = self.len;
        if let Some(meter) = &mut self.meter {
            meter.publish(len, true);
        }
        let (slot, mut hashes, mut writeback) = self.lend()?;
        let buf = std::mem::take(&mut self.pending);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let file = write_chunk(slot, &mut hashes, &mut writeback, &buf, &path)?;
            if fsync {
                file.file().sync_all().map_err(|source| FetchError::Io {
                    op: "fsync",
                    path,
                    source,
                })?;
                writeback.synced(file.file());
            }
            let (sha256, md5) = hashes.finish();
            then(file, sha256, md5)
        })
        .await
        .map_err(|e| self.io("write", std::io::Error::other(e.to_string())))?
    }
}

/// The engine's settings and its HTTP client (one per store, reused for every transfer).
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    /// Built once: rustls, connect timeout, keep-alive pool, at most 10 redirects.
    client: reqwest::Client,
    /// Attempts per transfer.
    max_attempts: u32,
    /// Backoff base.
    backoff_base: Duration,
    /// Backoff ceiling.
    backoff_max: Duration,
    /// `Retry-After` cap.
    retry_after_cap: Duration,
    /// Connect timeout (plus idle timeout: how long to wait for response headers).
    connect_timeout: Duration,
    /// Per-read idle timeout.
    idle_timeout: Duration,
    /// Size limit.
    max_size: Option<u64>,
    /// Whether to fsync the file.
    fsync: bool,
    /// Whether written-back pages are dropped from the page cache.
    drop_written_pages: bool,
}

impl Fetcher {
    /// Builds the engine and its HTTP client.
    pub(crate) fn new(settings: &Settings) -> Result<Fetcher, reqwest::Error> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(settings.connect_timeout)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(settings.workers.max(1))
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(60))
            .user_agent(concat!(
                env!("CARGO_PKG_NAME"),
                "/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()?;
        Ok(Fetcher {
            client,
            max_attempts: settings.max_attempts.max(1),
            backoff_base: settings.backoff_base,
            backoff_max: settings.backoff_max,
            retry_after_cap: settings.retry_after_cap,
            connect_timeout: settings.connect_timeout,
            idle_timeout: settings.idle_timeout,
            max_size: settings.max_size,
            fsync: settings.fsync,
            drop_written_pages: !settings.keep_page_cache,
        })
    }

    /// Downloads `source` into the temporary file `temp`, verifies it against `expected`
    /// and hands it to `keep` (with its size, SHA-256 and validators) on the blocking
    /// pool, in the same call that writes its last bytes and fsyncs it (if configured):
    /// `keep` names it (see [`TempFile::seal`]) or drops it. On `Err` or `NotModified`
    /// the file is gone (a named one removed).
    ///
    /// With `conditional`, the first request asks `If-None-Match` / `If-Modified-Since`
    /// and a `304` answer is [`Downloaded::NotModified`]. `meter` receives byte progress.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn download<T, F>(
        &self,
        source: &Source,
        uri: &str,
        temp: TempSpec,
        expected: &Expected,
        conditional: Option<&Validators>,
        meter: Option<Meter>,
        cancel: &CancellationToken,
        keep: F,
    ) -> Result<Downloaded<T>, FetchError>
    where
        T: Send + 'static,
        F: FnOnce(TempFile, &Fetched) -> Result<T, FetchError> + Send + 'static,
    {
        let md5 = expected
            .checksum
            .as_ref()
            .is_some_and(|c| c.kind == ChecksumType::Md5);
        let mut sink = Sink::file(
            temp,
            md5,
            Writeback::new(self.fsync, self.drop_written_pages),
        );
        sink.meter = meter;
        let filled = self
            .fill(source, uri, &mut sink, self.max_size, conditional, cancel)
            .await;
        let validators = match filled {
            Ok(Answer::NotModified) => return Ok(Downloaded::NotModified),
            Ok(Answer::Body(validators)) => validators,
            Err(e) => {
                // A write still running holds the file: let it end, so the file is gone
                // when this returns.
                let _ = sink.settle().await;
                return Err(e);
            }
        };
        let size = sink.len();
        let expected = expected.clone();
        let uri = uri.to_owned();
        sink.finish_file(self.fsync, move |file, sha256, md5| {
            expected.check(&uri, &sha256, md5)?;
            let fetched = Fetched {
                size,
                sha256,
                validators,
            };
            let kept = keep(file, &fetched)?;
            Ok(Downloaded::File(fetched, kept))
        })
        .await
    }

    /// Fetches a checksum file (into memory, at most [`MAX_CHECKSUM_FILE`] bytes, with the
    /// same retries) and returns the first digest of the right length in it.
    pub(crate) async fn fetch_checksum(
        &self,
        source: &Source,
        uri: &str,
        kind: ChecksumType,
        cancel: &CancellationToken,
    ) -> Result<ChecksumDigest, FetchError> {
        let wrap = |e: FetchError| match e {
            FetchError::Cancelled => FetchError::Cancelled,
            e => FetchError::ChecksumFile {
                uri: uri.to_owned(),
                source: Box::new(e),
            },
        };
        let mut sink = Sink::memory(false);
        self.fill(
            source,
            uri,
            &mut sink,
            Some(MAX_CHECKSUM_FILE),
            None,
            cancel,
        )
        .await
        .map_err(wrap)?;
        let (_, _, body) = sink.finish_memory().map_err(wrap)?;
        let digest = parse_checksum(&body, kind).ok_or_else(|| FetchError::NoDigest {
            uri: uri.to_owned(),
            kind,
        })?;
        Ok(ChecksumDigest {
            kind,
            digest,
            uri: uri.to_owned(),
        })
    }

    /// Fills `sink` from `source`, with retries for HTTP.
    async fn fill(
        &self,
        source: &Source,
        uri: &str,
        sink: &mut Sink,
        limit: Option<u64>,
        conditional: Option<&Validators>,
        cancel: &CancellationToken,
    ) -> Result<Answer, FetchError> {
        match source {
            Source::Http(url) => {
                self.fill_http(url, uri, sink, limit, conditional, cancel)
                    .await
            }
            Source::File(path) => {
                self.fill_file(path, uri, sink, limit, cancel).await?;
                Ok(Answer::Body(Validators::default()))
            }
        }
    }

    /// The retry loop around [`Self::attempt`].
    async fn fill_http(
        &self,
        url: &Url,
        uri: &str,
        sink: &mut Sink,
        limit: Option<u64>,
        conditional: Option<&Validators>,
        cancel: &CancellationToken,
    ) -> Result<Answer, FetchError> {
        let mut resume: Option<ResumeFrom> = None;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let (error, retry_after, immediate) = match self
                .attempt(url, uri, sink, limit, &mut resume, conditional, cancel)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(AttemptError::Fatal(e)) => return Err(e),
                Err(AttemptError::Retry {
                    error,
                    retry_after,
                    immediate,
                }) => (error, retry_after, immediate),
            };
            if attempt >= self.max_attempts {
                return Err(FetchError::GaveUp {
                    attempts: attempt,
                    last: Box::new(error),
                });
            }
            let delay = if immediate {
                Duration::ZERO
            } else {
                match retry_after {
                    Some(d) => d.min(self.retry_after_cap),
                    None => backoff_delay(self.backoff_base, self.backoff_max, attempt - 1),
                }
            };
            debug!(
                uri,
                attempt,
                delay_ms = delay.as_millis() as u64,
                kept = sink.len(),
                cause = %error,
                "retrying"
            );
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(FetchError::Cancelled),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One HTTP request: resumes the partial file when `from` allows it, and asks
    /// whether `conditional` still describes the content when starting from zero.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        url: &Url,
        uri: &str,
        sink: &mut Sink,
        limit: Option<u64>,
        from: &mut Option<ResumeFrom>,
        conditional: Option<&Validators>,
        cancel: &CancellationToken,
    ) -> Result<Answer, AttemptError> {
        let offset = sink.len();
        let resume = offset > 0 && from.is_some();
        if offset > 0 && !resume {
            sink.reset().await?;
        }
        let mut request = self.client.get(url.clone());
        if let (true, Some(f)) = (resume, from.as_ref()) {
            request = request
                .header(header::RANGE, format!("bytes={offset}-"))
                .header(header::IF_RANGE, &f.validator.value);
        } else if let Some(c) = conditional {
            if let Some(etag) = &c.etag {
                request = request.header(header::IF_NONE_MATCH, etag);
            }
            if let Some(date) = &c.last_modified {
                request = request.header(header::IF_MODIFIED_SINCE, date);
            }
        }
        let waited = self.connect_timeout + self.idle_timeout;
        let response = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(FetchError::Cancelled.into()),
            r = tokio::time::timeout(waited, request.send()) => r,
        };
        let response = match response {
            Err(_) => {
                return Err(AttemptError::retry(FetchError::HeaderTimeout {
                    uri: uri.to_owned(),
                    waited,
                }));
            }
            Ok(Err(e)) => return Err(classify(uri, &e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let headers = response.headers();
        let next_validator = resume_validator(headers);
        let validators = Validators::of(headers);
        let content_length = response.content_length();
        // The bytes the whole file will have once this body is written.
        let expected_total;
        if status == StatusCode::NOT_MODIFIED && !resume && conditional.is_some() {
            debug!(uri, "not modified");
            return Ok(Answer::NotModified);
        }
        if status == StatusCode::PARTIAL_CONTENT {
            let wanted = if resume { offset } else { 0 };
            let continued = partial_continues(
                headers,
                wanted,
                content_length,
                from.as_ref().filter(|_| resume),
            );
            let (end, len) = match continued {
                Ok(range) => range,
                Err(detail) => {
                    warn!(uri, detail, "restarting from zero");
                    sink.reset().await?;
                    *from = None;
                    return Err(AttemptError::Retry {
                        error: FetchError::BadRange {
                            uri: uri.to_owned(),
                            detail,
                        },
                        retry_after: None,
                        immediate: true,
                    });
                }
            };
            expected_total = Some(end);
            if !resume {
                *from = next_validator.map(|validator| ResumeFrom {
                    validator,
                    total: len,
                });
            }
        } else if status.is_success() {
            if sink.len() > 0 {
                debug!(uri, "server sent the whole file; restarting from zero");
                sink.reset().await?;
            }
            expected_total = content_length;
            *from = next_validator.map(|validator| ResumeFrom {
                validator,
                total: content_length,
            });
        } else if status == StatusCode::RANGE_NOT_SATISFIABLE && resume {
            sink.reset().await?;
            *from = None;
            return Err(AttemptError::Retry {
                error: FetchError::BadRange {
                    uri: uri.to_owned(),
                    detail: format!("416 for bytes from {offset}"),
                },
                retry_after: None,
                immediate: true,
            });
        } else {
            let error = FetchError::Status {
                uri: uri.to_owned(),
                status,
            };
            if is_retryable(status) {
                let retry_after = headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                return Err(AttemptError::Retry {
                    error,
                    retry_after,
                    immediate: false,
                });
            }
            return Err(AttemptError::Fatal(error));
        }

        sink.set_total(expected_total);
        if let (Some(limit), Some(total)) = (limit, expected_total)
            && total > limit
        {
            return Err(FetchError::TooLarge {
                uri: uri.to_owned(),
                limit,
                declared: Some(total),
            }
            .into());
        }
        let mut body = response.bytes_stream();
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(FetchError::Cancelled.into()),
                next = tokio::time::timeout(self.idle_timeout, body.next()) => next,
            };
            match next {
                Err(_) => {
                    return Err(AttemptError::retry(FetchError::IdleTimeout {
                        uri: uri.to_owned(),
                        idle: self.idle_timeout,
                        got: sink.len(),
                    }));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let detail = error_chain(&e);
                    let error = match expected_total {
                        Some(expected) => FetchError::Truncated {
                            uri: uri.to_owned(),
                            expected,
                            got: sink.len(),
                            detail: Some(detail),
                        },
                        None => FetchError::Network {
                            uri: uri.to_owned(),
                            detail: format!("body broke after {} bytes: {detail}", sink.len()),
                        },
                    };
                    return Err(AttemptError::retry(error));
                }
                Ok(Some(Ok(chunk))) => {
                    if let Some(limit) = limit
                        && sink.len().saturating_add(chunk.len() as u64) > limit
                    {
                        return Err(FetchError::TooLarge {
                            uri: uri.to_owned(),
                            limit,
                            declared: None,
                        }
                        .into());
                    }
                    sink.write(&chunk).await?;
                }
            }
        }
        if let Some(expected) = expected_total
            && sink.len() != expected
        {
            return Err(AttemptError::retry(FetchError::Truncated {
                uri: uri.to_owned(),
                expected,
                got: sink.len(),
                detail: None,
            }));
        }
        Ok(Answer::Body(validators))
    }

    /// Copies a local file (no retries: local errors do not go away by waiting).
    async fn fill_file(
        &self,
        path: &Path,
        uri: &str,
        sink: &mut Sink,
        limit: Option<u64>,
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        let io = |op, source| FetchError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| io("open", e))?;
        let meta = file.metadata().await.map_err(|e| io("inspect", e))?;
        if !meta.is_file() {
            return Err(io("read", std::io::Error::other("not a regular file")));
        }
        if let Some(limit) = limit
            && meta.len() > limit
        {
            return Err(FetchError::TooLarge {
                uri: uri.to_owned(),
                limit,
                declared: Some(meta.len()),
            });
        }
        sink.set_total(Some(meta.len()));
        let mut buf = vec![0u8; WRITE_CHUNK];
        loop {
            let n = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(FetchError::Cancelled),
                n = file.read(&mut buf) => n.map_err(|e| io("read", e))?,
            };
            if n == 0 {
                // A file written to while it was read gave a mixture of two versions.
                let now = file.metadata().await.map_err(|e| io("inspect", e))?;
                if sink.len() != meta.len()
                    || now.len() != meta.len()
                    || now.modified().ok() != meta.modified().ok()
                {
                    return Err(io(
                        "read",
                        std::io::Error::other(format!(
                            "the file changed while it was copied ({} bytes when opened, \
                             {} read, {} now)",
                            meta.len(),
                            sink.len(),
                            now.len()
                        )),
                    ));
                }
                return Ok(());
            }
            if let Some(limit) = limit
                && sink.len().saturating_add(n as u64) > limit
            {
                return Err(FetchError::TooLarge {
                    uri: uri.to_owned(),
                    limit,
                    declared: None,
                });
            }
            sink.write(&buf[..n]).await?;
        }
    }
}

/// Sorts a reqwest error from `send` into retry or fail.
fn classify(uri: &str, e: &reqwest::Error) -> AttemptError {
    let detail = error_chain(e);
    if e.is_redirect() || e.is_builder() {
        return AttemptError::Fatal(FetchError::Request {
            uri: uri.to_owned(),
            detail,
        });
    }
    AttemptError::retry(FetchError::Network {
        uri: uri.to_owned(),
        detail,
    })
}

/// An error and its causes, joined with `": "`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether an HTTP status is worth another attempt: 408, 429 and 5xx except 501 and 505.
pub(crate) fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429)
        || (status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
}

/// The delay before retry `retry` (0-based): random in `0..=min(max, base * 2^retry)`.
pub(crate) fn backoff_delay(base: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 2u32.checked_pow(retry).unwrap_or(u32::MAX);
    let ceiling = base.checked_mul(factor).unwrap_or(max).min(max);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// A `Retry-After` value: delta-seconds or an HTTP date (relative to `now`; a date in the
/// past is zero). `None` when it is neither.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `If-Range` value to resume with, when the response allows resuming: it has
/// `Accept-Ranges: bytes` and a strong ETag (preferred) or a Last-Modified date.
fn resume_validator(headers: &HeaderMap) -> Option<ResumeValidator> {
    let ranges = headers
        .get_all(header::ACCEPT_RANGES)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("bytes"));
    if !ranges {
        return None;
    }
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &header::HeaderValue| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    match text(header::ETAG) {
        Some(etag) if !etag.starts_with("W/") => Some(ResumeValidator {
            value: etag.to_owned(),
            etag: true,
        }),
        _ => text(header::LAST_MODIFIED).map(|date| ResumeValidator {
            value: date.to_owned(),
            etag: false,
        }),
    }
}

/// The validator a partial file is resumed with (sent as `If-Range`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResumeValidator {
    /// The header's value.
    value: String,
    /// Whether it is the strong `ETag` (else the `Last-Modified` date).
    etag: bool,
}

impl ResumeValidator {
    /// Whether a response does not say it carries other content: it has the same header
    /// with the same value, or not that header at all.
    fn matches(&self, headers: &HeaderMap) -> bool {
        let name = if self.etag {
            header::ETAG
        } else {
            header::LAST_MODIFIED
        };
        match headers.get(name).map(|v| v.to_str().map(str::trim)) {
            None => true,
            Some(Ok(value)) => value == self.value,
            Some(Err(_)) => false,
        }
    }
}

/// What a partial file may be resumed from: the content's validator and the complete
/// length the server gave for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResumeFrom {
    /// Sent as `If-Range`; a `206` carrying another one is another version of the file.
    validator: ResumeValidator,
    /// The complete length, when the server said; a `206` for another length is another
    /// version of the file.
    total: Option<u64>,
}

/// A `Content-Range: bytes <start>-<end>/<len>` header: `(start, end, len)`, `len` being
/// `None` for `*`.
fn content_range(headers: &HeaderMap) -> Option<(u64, u64, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?.trim();
    let rest = value.strip_prefix("bytes")?.trim_start();
    let (range, len) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    let len = match len.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    (start <= end).then_some((start, end, len))
}

/// Whether a 206 answer continues a file of `offset` bytes through to its end, and is the
/// same version of the file as `from` (when resuming): its range starts at `offset`, ends
/// at the last byte when the complete length is given, agrees with `Content-Length`, and
/// neither the complete length nor the validator differs from `from`'s. `Ok((end, len))`:
/// the size of the file once the body is written, and the complete length if given;
/// `Err`: why not, for the log and the error.
fn partial_continues(
    headers: &HeaderMap,
    offset: u64,
    content_length: Option<u64>,
    from: Option<&ResumeFrom>,
) -> Result<(u64, Option<u64>), String> {
    let raw = || {
        headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let Some((start, last, len)) = content_range(headers) else {
        return Err(format!(
            "asked for bytes from {offset}, got Content-Range {:?}",
            raw()
        ));
    };
    // `last` is the last byte's offset: the file ends after it.
    let Some(end) = last
        .checked_add(1)
        .filter(|&end| start == offset && len.is_none_or(|len| len == end))
    else {
        return Err(format!(
            "asked for bytes from {offset} to the end, got Content-Range {:?}",
            raw()
        ));
    };
    if let Some(n) = content_length
        && start.checked_add(n) != Some(end)
    {
        return Err(format!(
            "Content-Length {n} does not match Content-Range {:?}",
            raw()
        ));
    }
    if let Some(from) = from {
        if let (Some(was), Some(len)) = (from.total, len)
            && was != len
        {
            return Err(format!(
                "the file changed: {was} bytes when the transfer started, {len} now"
            ));
        }
        if !from.validator.matches(headers) {
            let name = if from.validator.etag {
                "ETag"
            } else {
                "Last-Modified"
            };
            return Err(format!(
                "the file changed: {name} {:?} when the transfer started, another now",
                from.validator.value
            ));
        }
    }
    Ok((end, len))
}

/// The first whitespace-separated token of `body` that is `kind.hex_len()` hex digits,
/// lower-cased. Accepts `md5sum`/`sha256sum` output (`HEX  name`, `HEX *name`, `\HEX`),
/// BSD style (`MD5 (name) = HEX`) and a bare digest.
pub(crate) fn parse_checksum(body: &[u8], kind: ChecksumType) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    text.split_whitespace()
        .map(|token| token.strip_prefix('\\').unwrap_or(token))
        .find(|token| token.len() == kind.hex_len() && token.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
}

/// SHA-256 of a file, lower-case hex (blocking).
pub(crate) fn hash_file(path: &Path) -> std::io::Result<String> {
    digest_file::<Sha256>(path)
}

/// MD5 of a file, lower-case hex (blocking).
pub(crate) fn md5_file(path: &Path) -> std::io::Result<String> {
    digest_file::<Md5>(path)
}

/// Digest `D` of a file, lower-case hex (blocking).
fn digest_file<D: Digest>(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; WRITE_CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// Removes a file, ignoring "not found" and logging anything else.
pub(crate) async fn remove_quietly(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(path = %path.display(), cause = %e, "cannot remove temporary file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delta-seconds and HTTP dates parse; garbage does not; past dates are zero.
    #[test]
    fn retry_after_parses_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    /// Full jitter stays within `0..=min(max, base * 2^k)`, also for huge `k`.
    #[test]
    fn backoff_is_bounded() {
        let base = Duration::from_millis(250);
        let max = Duration::from_secs(30);
        for retry in 0..40 {
            let ceiling = if retry < 20 {
                (base * 2u32.pow(retry)).min(max)
            } else {
                max
            };
            for _ in 0..50 {
                let d = backoff_delay(base, max, retry);
                assert!(d <= ceiling, "retry {retry}: {d:?} > {ceiling:?}");
            }
        }
        assert_eq!(backoff_delay(Duration::ZERO, max, 3), Duration::ZERO);
        assert!(backoff_delay(Duration::MAX, Duration::from_secs(1), 60) <= Duration::from_secs(1));
    }

    /// The retryable statuses are exactly 408, 429 and 5xx but 501 and 505.
    #[test]
    fn retryable_statuses() {
        for code in [408, 429, 500, 502, 503, 504, 507, 599] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 416, 501, 505, 301, 304] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    /// Checksum files in the usual shapes give the first digest of the right length.
    #[test]
    fn checksum_files_parse() {
        let md5 = "d41d8cd98f00b204e9800998ecf8427e";
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let md5_kind = ChecksumType::Md5;
        let sha_kind = ChecksumType::Sha256;
        assert_eq!(
            parse_checksum(md5.as_bytes(), md5_kind).as_deref(),
            Some(md5)
        );
        let line = format!("{}  boot.img\n", md5.to_uppercase());
        assert_eq!(
            parse_checksum(line.as_bytes(), md5_kind).as_deref(),
            Some(md5)
        );
        let binary = format!("{md5} *boot.img\r\n");
        assert_eq!(
            parse_checksum(binary.as_bytes(), md5_kind).as_deref(),
            Some(md5)
        );
        let bsd = format!("SHA256 (boot.img) = {sha}\n");
        assert_eq!(
            parse_checksum(bsd.as_bytes(), sha_kind).as_deref(),
            Some(sha)
        );
        let escaped = format!("\\{sha}  boot\\nimg\n");
        assert_eq!(
            parse_checksum(escaped.as_bytes(), sha_kind).as_deref(),
            Some(sha)
        );
        let both = format!("{md5}  a\n{sha}  b\n");
        assert_eq!(
            parse_checksum(both.as_bytes(), sha_kind).as_deref(),
            Some(sha)
        );
        assert_eq!(parse_checksum(sha.as_bytes(), md5_kind), None);
        assert_eq!(parse_checksum(b"", md5_kind), None);
        assert_eq!(parse_checksum(b"not a digest", md5_kind), None);
    }

    /// Only `Accept-Ranges: bytes` with a strong ETag or a Last-Modified allows resuming.
    #[test]
    fn resume_needs_ranges_and_a_validator() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, "\"abc\"".parse().unwrap());
        assert_eq!(resume_validator(&h), None);
        h.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
        let value = |h: &HeaderMap| resume_validator(h).map(|v| (v.value, v.etag));
        assert_eq!(value(&h), Some(("\"abc\"".to_owned(), true)));
        h.insert(header::ETAG, "W/\"abc\"".parse().unwrap());
        assert_eq!(resume_validator(&h), None);
        h.insert(
            header::LAST_MODIFIED,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            value(&h),
            Some(("Wed, 21 Oct 2015 07:28:00 GMT".to_owned(), false))
        );
        h.insert(header::ACCEPT_RANGES, "none".parse().unwrap());
        assert_eq!(resume_validator(&h), None);
    }

    /// Content-Range parses; only a range from the offset to the end continues a file.
    #[test]
    fn content_range_parses() {
        let continues = |h: &HeaderMap, offset| partial_continues(h, offset, None, None).is_ok();
        let mut h = HeaderMap::new();
        assert_eq!(content_range(&h), None);
        assert!(!continues(&h, 0));
        h.insert(header::CONTENT_RANGE, "bytes 100-199/200".parse().unwrap());
        assert_eq!(content_range(&h), Some((100, 199, Some(200))));
        assert_eq!(partial_continues(&h, 100, None, None), Ok((200, Some(200))));
        assert!(!continues(&h, 0));
        h.insert(header::CONTENT_RANGE, "bytes 0-9/*".parse().unwrap());
        assert_eq!(content_range(&h), Some((0, 9, None)));
        assert_eq!(partial_continues(&h, 0, None, None), Ok((10, None)));
        h.insert(header::CONTENT_RANGE, "bytes 100-149/200".parse().unwrap());
        assert!(!continues(&h, 100), "stops short of the end");
        let max = u64::MAX;
        h.insert(
            header::CONTENT_RANGE,
            format!("bytes 0-{max}/{max}").parse().unwrap(),
        );
        assert!(!continues(&h, 0), "no file ends after byte u64::MAX");
        for bad in ["bytes */200", "bytes 9-1/20", "items 0-1/2", "bytes 0-1"] {
            h.insert(header::CONTENT_RANGE, bad.parse().unwrap());
            assert_eq!(content_range(&h), None, "{bad}");
        }
    }

    /// A 206 continues the file only if it is the same version: the same complete length,
    /// the same validator (or none), and a Content-Length that agrees with its range.
    #[test]
    fn partial_answers_must_be_the_same_version() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 100-199/200".parse().unwrap());
        let etag = |value: &str, total| ResumeFrom {
            validator: ResumeValidator {
                value: value.to_owned(),
                etag: true,
            },
            total,
        };
        let v1 = etag("\"v1\"", Some(200));
        assert!(partial_continues(&h, 100, Some(100), Some(&v1)).is_ok());
        let err = partial_continues(&h, 100, Some(99), Some(&v1)).unwrap_err();
        assert!(err.contains("Content-Length 99"), "{err}");
        let longer = etag("\"v1\"", Some(300));
        let err = partial_continues(&h, 100, None, Some(&longer)).unwrap_err();
        assert!(
            err.contains("300 bytes when the transfer started, 200 now"),
            "{err}"
        );
        h.insert(header::ETAG, "\"v1\"".parse().unwrap());
        assert!(partial_continues(&h, 100, None, Some(&v1)).is_ok());
        h.insert(header::ETAG, "\"v2\"".parse().unwrap());
        let err = partial_continues(&h, 100, None, Some(&v1)).unwrap_err();
        assert!(err.contains("ETag \"\\\"v1\\\"\""), "{err}");
        // A Last-Modified validator is compared with Last-Modified, not with the ETag.
        let dated = ResumeFrom {
            validator: ResumeValidator {
                value: "Wed, 21 Oct 2015 07:28:00 GMT".to_owned(),
                etag: false,
            },
            total: None,
        };
        assert!(partial_continues(&h, 100, None, Some(&dated)).is_ok());
        h.insert(
            header::LAST_MODIFIED,
            "Thu, 22 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert!(partial_continues(&h, 100, None, Some(&dated)).is_err());
    }

    /// Only http, https and (when allowed) local file URIs are sources.
    #[test]
    fn sources_are_checked() {
        assert!(matches!(
            Source::parse("http://127.0.0.1:8080/a", true),
            Ok(Source::Http(_))
        ));
        assert!(matches!(
            Source::parse("https://example.com/a", false),
            Ok(Source::Http(_))
        ));
        assert!(matches!(
            Source::parse("file:///tmp/a", true),
            Ok(Source::File(_))
        ));
        assert!(matches!(
            Source::parse("file:///tmp/a", false),
            Err(SourceError::Scheme { .. })
        ));
        assert!(matches!(
            Source::parse("file://remote/tmp/a", true),
            Err(SourceError::Invalid(_))
        ));
        for bad in ["ftp://x/a", "gopher://x", "data:,hello"] {
            assert!(
                matches!(Source::parse(bad, true), Err(SourceError::Scheme { .. })),
                "{bad}"
            );
        }
        for bad in ["", "  ", "not a uri", "/etc/passwd", "http://"] {
            assert!(
                matches!(Source::parse(bad, true), Err(SourceError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
