//! The life of one pushed artifact after `push` returned ([`Transfer`]), and of one shared
//! download ([`FlightRun`]).
//!
//! A transfer first asks the cache: a push whose expected SHA-256 is cached (and still
//! trustworthy) is placed from the blob with no download. Otherwise it joins the flight
//! for its key (URI, expected digest, checksum file) or starts one; the flight takes a
//! worker (the place the push took in the FIFO queue), downloads once into
//! `cache/tmp/<flight>.part`, verifies, and moves the result into the cache. Every transfer
//! waiting on it then gets its own hard link (or copy), its own index row update and its
//! own statuses. A job that is cancelled leaves its flight; the last one to leave cancels
//! it and waits until its temporary file is gone.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, info, instrument, warn};

use super::cache::{self, BlobRow, FlightKey, FlightState, Landed, Ticket};
use super::fetch::{
    self, ByteCount, ChecksumDigest, Downloaded, Expected, FetchError, Fetched, Meter, Source,
};
use super::index::{Pending, StatusUpdate};
use super::pool::Slot;
use super::{Core, JobGuard, REASON_CLOSED, paths};
use crate::model::{
    ArtifactPath, ArtifactStatus, ArtifactStatusChange, ArtifactType, ChecksumSource, ChecksumType,
    JobId,
};

/// One queued or running pushed artifact.
pub(super) struct Transfer {
    /// The store.
    pub(super) core: Arc<Core>,
    /// Row id.
    pub(super) id: i64,
    /// The job.
    pub(super) job: JobId,
    /// The alias (for the temporary file's name and logs).
    pub(super) alias: String,
    /// The URI as given.
    pub(super) uri: String,
    /// The checked URI.
    pub(super) source: Source,
    /// Expected SHA-256, lower-case.
    pub(super) sha256: Option<String>,
    /// The checksum file to check against.
    pub(super) checksum: Option<(Source, ChecksumSource)>,
    /// The final path.
    pub(super) path: ArtifactPath,
    /// The artifact's type (its directory is the job's directory for it).
    pub(super) kind: ArtifactType,
    /// Its directory.
    pub(super) dir: std::path::PathBuf,
    /// Where statuses go.
    pub(super) collector: mpsc::Sender<ArtifactStatusChange>,
    /// Registration with the job (cancellation) and the store.
    pub(super) guard: JobGuard,
    /// Its place among the store's transfers (`max_transfers`).
    pub(super) room: tokio::sync::OwnedSemaphorePermit,
    /// The insert of its row, queued at push time; `None` once confirmed.
    pub(super) inserted: Option<Pending<()>>,
    /// `PENDING`, when the collector had no room for it at push time.
    pub(super) pending: Option<ArtifactStatusChange>,
    /// Its place in the worker queue, taken at push time; `None` once taken out.
    pub(super) slot: Option<oneshot::Receiver<Slot>>,
    /// The blob behind the file, pinned until `READY` is recorded.
    pub(super) hold: Option<Arc<Landed>>,
    /// The last byte count published for this artifact.
    pub(super) published: Option<ByteCount>,
}

impl Transfer {
    /// Gets the file in place, records and reports the outcome.
    #[instrument(name = "transfer", skip_all, fields(job = %self.job, id = self.id, alias = %self.alias))]
    pub(super) async fn run(mut self) {
        let outcome = match Box::pin(self.recorded()).await {
            Ok(()) => Box::pin(self.execute()).await,
            Err(e) => Err(e),
        };
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
                match Box::pin(core.index.update(update)).await {
                    Ok(()) => {
                        info!(size = fetched.size, sha256 = %fetched.sha256, "ready");
                        ArtifactStatusChange::new(self.path.clone(), ArtifactStatus::Ready)
                    }
                    Err(e) => {
                        let reason = format!("cannot record READY in the index: {e}");
                        warn!(reason, "failed");
                        fetch::remove_quietly(self.path.as_path()).await;
                        Box::pin(self.fail_in_index(&reason)).await;
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
                Box::pin(self.fail_in_index(&reason)).await;
                ArtifactStatusChange::failed(self.path.clone(), reason)
            }
        };
        // Released before the send: `cancel_job` and `close` wait for the clean-up, not
        // for room in the collector. The blob's pin goes too: the row references it now.
        let Transfer {
            collector,
            guard,
            room,
            ..
        } = self;
        drop(guard);
        drop(room);
        let _ = collector.send(change).await;
    }

    /// Sends `PENDING` if `push` could not, and waits until the row is in the index.
    async fn recorded(&mut self) -> Result<(), FetchError> {
        if let Some(change) = self.pending.take() {
            tokio::select! {
                biased;
                _ = self.collector.send(change) => {}
                () = self.guard.cancel.cancelled() => {}
            }
        }
        match self.inserted.take() {
            Some(inserted) => inserted.wait().await.map_err(|e| {
                FetchError::Shared(format!("cannot record the artifact in the index: {e}").into())
            }),
            None => Ok(()),
        }
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
        let core = Arc::clone(&self.core);
        let cancel = self.guard.cancel.clone();
        let Some(queued) = self.slot.take() else {
            return Err(FetchError::Cancelled);
        };
        if cancel.is_cancelled() {
            return Err(FetchError::Cancelled);
        }
        if let Some(sha256) = &self.sha256
            && let Some(landed) = Box::pin(core.hit(sha256)).await
        {
            debug!(sha256, "cache hit");
            drop(queued);
            if let Some((source, checksum)) = &self.checksum {
                Box::pin(check_blob_against(
                    &core, &landed, source, checksum, &cancel,
                ))
                .await?;
            }
            return Box::pin(self.deliver(landed, &cancel)).await;
        }
        let conditional = match (&self.sha256, &self.source) {
            (None, Source::Http(_)) => Box::pin(core.revalidation(&self.uri)).await,
            _ => None,
        };
        let key = FlightKey {
            uri: self.uri.clone(),
            sha256: self.sha256.clone(),
            checksum: self.checksum.as_ref().map(|(_, c)| (c.uri.clone(), c.kind)),
        };
        let (ticket, created) = core.cache.join(key.clone(), &core.root_token, &cancel);
        if created {
            let run = FlightRun {
                core: Arc::clone(&core),
                flight: Arc::clone(&ticket.flight),
                key,
                source: self.source.clone(),
                checksum: self.checksum.clone(),
                conditional,
                slot: queued,
                _tracked: core.tasks.token(),
                finished: false,
            };
            tokio::spawn(run.run());
        } else {
            drop(queued);
        }
        let landed = self.wait(ticket, &cancel).await?;
        Box::pin(self.deliver(landed, &cancel)).await
    }

    /// Waits for the flight, reporting `DOWNLOADING` when it starts and forwarding its
    /// byte progress. On cancellation, leaves it (the last one out waits until it has
    /// cleaned up).
    async fn wait(
        &mut self,
        ticket: Ticket,
        cancel: &CancellationToken,
    ) -> Result<Arc<Landed>, FetchError> {
        let flight = Arc::clone(&ticket.flight);
        let mut state = flight.state.subscribe();
        let mut bytes = flight.bytes.subscribe();
        let mut downloading = false;
        'waiting: loop {
            let current = state.borrow_and_update().clone();
            match current {
                FlightState::Done(Ok(landed)) => return Ok(landed),
                FlightState::Done(Err(reason)) => {
                    if cancel.is_cancelled() {
                        break 'waiting;
                    }
                    return Err(FetchError::Shared(reason));
                }
                FlightState::Running if !downloading => {
                    downloading = true;
                    self.core.index.update_later(StatusUpdate {
                        id: self.id,
                        status: ArtifactStatus::Downloading,
                        size: None,
                        sha256: None,
                        error: None,
                    });
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => break 'waiting,
                        _ = self.collector.send(ArtifactStatusChange::new(
                            self.path.clone(),
                            ArtifactStatus::Downloading,
                        )) => {}
                    }
                }
                FlightState::Queued | FlightState::Running => {}
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => break 'waiting,
                changed = state.changed() => {
                    if changed.is_err() {
                        return Err(FetchError::Shared("the shared transfer was lost".into()));
                    }
                }
                Ok(()) = bytes.changed() => {
                    let count = *bytes.borrow_and_update();
                    self.publish(count);
                }
            }
        }
        if ticket.release() {
            while !matches!(*state.borrow_and_update(), FlightState::Done(_)) {
                if state.changed().await.is_err() {
                    break;
                }
            }
        }
        Err(FetchError::Cancelled)
    }

    /// Publishes this artifact's byte count, unless it is the one published last.
    fn publish(&mut self, count: ByteCount) {
        if self.published != Some(count) {
            self.published = Some(count);
            self.core.cache.publish(self.job, &self.path, count);
        }
    }

    /// Gives the job its file from the blob and keeps the blob pinned until `READY` is
    /// recorded.
    async fn deliver(
        &mut self,
        landed: Arc<Landed>,
        cancel: &CancellationToken,
    ) -> Result<Fetched, FetchError> {
        if cancel.is_cancelled() {
            return Err(FetchError::Cancelled);
        }
        let blob = landed.path.clone();
        let target = self.path.as_path().to_owned();
        let temp = self.dir.join(paths::temp_name(&self.alias, self.id));
        let dir = self.dir.clone();
        let copy = self.core.settings.copy_job_files;
        let syncs = self
            .core
            .settings
            .fsync
            .then(|| Arc::clone(&self.core.dir_syncs));
        let (layout, job, kind) = (self.core.layout.clone(), self.job, self.kind);
        let durable = self.core.settings.fsync;
        tokio::task::spawn_blocking(move || {
            let place = || cache::place(&blob, &target, &temp, &dir, copy, syncs.as_deref());
            match place() {
                // The directory went missing since the push checked it: make it again.
                Err(FetchError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    layout
                        .ensure_type_dir(job, kind, durable)
                        .map_err(|e| FetchError::Io {
                            op: "create directory",
                            path: dir.clone(),
                            source: std::io::Error::other(e.to_string()),
                        })?;
                    place()
                }
                placed => placed,
            }
        })
        .await
        .map_err(|e| FetchError::Io {
            op: "place",
            path: self.path.as_path().to_owned(),
            source: std::io::Error::other(e.to_string()),
        })??;
        self.publish(ByteCount {
            done: landed.size,
            total: Some(landed.size),
        });
        let fetched = Fetched {
            size: landed.size,
            sha256: landed.sha256.clone(),
            validators: fetch::Validators::default(),
        };
        self.hold = Some(landed);
        Ok(fetched)
    }
}

/// Checks a cached blob against the push's checksum file (which is fetched: only the
/// artifact itself comes from the cache).
async fn check_blob_against(
    core: &Arc<Core>,
    landed: &Landed,
    source: &Source,
    checksum: &ChecksumSource,
    cancel: &CancellationToken,
) -> Result<(), FetchError> {
    let want = core
        .fetcher
        .fetch_checksum(source, &checksum.uri, checksum.kind, cancel)
        .await?;
    check_blob_digest(landed, &want).await
}

/// Checks a cached blob against a checksum file's digest (hashing it again for MD5; its
/// SHA-256 is known).
async fn check_blob_digest(landed: &Landed, want: &ChecksumDigest) -> Result<(), FetchError> {
    let got = match want.kind {
        ChecksumType::Sha256 => landed.sha256.clone(),
        ChecksumType::Md5 => {
            let path = landed.path.clone();
            tokio::task::spawn_blocking(move || fetch::md5_file(&path))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r)
                .map_err(|source| FetchError::Io {
                    op: "hash cached blob",
                    path: landed.path.clone(),
                    source,
                })?
        }
    };
    if got != want.digest {
        return Err(FetchError::ChecksumMismatch {
            kind: want.kind,
            uri: want.uri.clone(),
            expected: want.digest.clone(),
            got,
        });
    }
    Ok(())
}

/// One shared download, run by the transfer that filed it.
pub(super) struct FlightRun {
    /// The store.
    core: Arc<Core>,
    /// The flight (state, progress, cancellation).
    flight: Arc<cache::Flight>,
    /// What it is filed under.
    key: FlightKey,
    /// Where from.
    source: Source,
    /// The checksum file.
    checksum: Option<(Source, ChecksumSource)>,
    /// A cached blob this URI served before, with the server's validators: asked about
    /// with a conditional request.
    conditional: Option<(fetch::Validators, Arc<Landed>)>,
    /// The worker place the first push took.
    slot: oneshot::Receiver<Slot>,
    /// Counts in the store's tracker, so `close` waits for the clean-up.
    _tracked: TaskTrackerToken,
    /// Whether the waiters were told how it ended; if not when it is dropped (its task
    /// panicked, or the runtime dropped it), `drop` tells them it failed.
    finished: bool,
}

impl Drop for FlightRun {
    fn drop(&mut self) {
        if !self.finished {
            warn!(uri = %self.key.uri, "transfer task ended without an answer");
            self.finish(Err(Arc::from(
                "the transfer task ended without an answer (it panicked or was dropped)",
            )));
        }
    }
}

impl FlightRun {
    /// Downloads, moves the file into the cache and tells the waiters.
    #[instrument(name = "flight", skip_all, fields(id = self.flight.id, uri = %self.key.uri))]
    async fn run(mut self) {
        let result = self.execute().await.map_err(|e| match e {
            FetchError::Shared(reason) => reason,
            e => Arc::<str>::from(e.to_string()),
        });
        match &result {
            // The new blob is pinned, so the pass cannot take it; running it before the
            // waiters hear of the blob means the cache is back within its bound by the
            // time any of them is READY.
            Ok(_) => self.core.evict().await,
            Err(reason) => debug!(%reason, "transfer ended without a blob"),
        }
        self.finish(result);
    }

    /// Tells the waiters how the transfer ended (once).
    fn finish(&mut self, result: Result<Arc<Landed>, Arc<str>>) {
        if !std::mem::replace(&mut self.finished, true) {
            self.core.cache.finish(&self.key, &self.flight, result);
        }
    }

    async fn execute(&mut self) -> Result<Arc<Landed>, FetchError> {
        let core = Arc::clone(&self.core);
        let token = self.flight.token.clone();
        let slot = &mut self.slot;
        let slot = tokio::select! {
            biased;
            () = token.cancelled() => return Err(FetchError::Cancelled),
            slot = slot => slot.map_err(|_| FetchError::Cancelled)?,
        };
        // Its jobs may be being cancelled while their transfers have not left it yet
        // (the worker it got may be one that cancellation just freed).
        if core.cache.abandoned(&self.key, &self.flight) {
            return Err(FetchError::Cancelled);
        }
        self.flight.state.send_replace(FlightState::Running);
        // Boxed: a flight waiting for its worker keeps only a small task; the download's
        // (large) state exists for running ones only.
        Box::pin(self.fetch_and_seal(&core, &token, slot)).await
    }

    /// With the worker `slot`: fetches the checksum file if any, downloads, verifies and
    /// seals the result as its blob, gives the worker back, and records the blob.
    async fn fetch_and_seal(
        &mut self,
        core: &Arc<Core>,
        token: &CancellationToken,
        slot: Slot,
    ) -> Result<Arc<Landed>, FetchError> {
        let mut expected = Expected {
            sha256: self.key.sha256.clone(),
            checksum: None,
        };
        if let Some((source, checksum)) = &self.checksum {
            expected.checksum = Some(
                core.fetcher
                    .fetch_checksum(source, &checksum.uri, checksum.kind, token)
                    .await?,
            );
        }
        let temp = core.layout.temp(format!("{}.part", self.flight.id));
        let meter = Meter::new(self.flight.bytes.clone(), core.settings.progress_interval);
        // Sealed in the blocking call that writes the file's last bytes: pinned first, so
        // no eviction pass can take the blob before its row is written.
        let (pins, layout, seal_token) = (
            Arc::clone(&core.cache.pins),
            core.layout.clone(),
            token.clone(),
        );
        let downloaded = core
            .fetcher
            .download(
                &self.source,
                &self.key.uri,
                temp,
                &expected,
                self.conditional.as_ref().map(|(v, _)| v),
                Some(meter),
                token,
                move |file, fetched| {
                    if seal_token.is_cancelled() {
                        return Err(FetchError::Cancelled);
                    }
                    let pin = pins.pin(&fetched.sha256);
                    let mtime_ns = file.seal(&layout.blob_path(&fetched.sha256))?;
                    Ok((pin, mtime_ns))
                },
            )
            .await?;
        // The network and the file are done with: the next transfer may start while this
        // one is recorded.
        drop(slot);
        let (fetched, (pin, mtime_ns)) = match downloaded {
            Downloaded::NotModified => {
                let Some((_, landed)) = self.conditional.take() else {
                    return Err(FetchError::Shared(
                        "the server answered 304 to an unconditional request".into(),
                    ));
                };
                // The cached blob is what the server has, but this push's checksum
                // file has not vouched for it yet.
                if let Some(want) = &expected.checksum {
                    check_blob_digest(&landed, want).await?;
                }
                debug!(sha256 = %landed.sha256, "not modified; cached blob is current");
                return Ok(landed);
            }
            Downloaded::File(fetched, sealed) => (fetched, sealed),
        };
        let blob = core.layout.blob_path(&fetched.sha256);
        let row = BlobRow {
            sha256: fetched.sha256.clone(),
            size: fetched.size,
            mtime_ns,
        };
        let uri = self.key.uri.clone();
        let validators = fetched.validators.clone();
        let recorded = core
            .index
            .call("record cached blob", move |conn| {
                cache::put_blob(conn, &row, &uri, &validators)
            })
            .await;
        if let Err(e) = recorded {
            // The blob file stays; without a row it is removed at the next open.
            return Err(FetchError::Shared(
                format!("cannot record the downloaded file in the cache index: {e}").into(),
            ));
        }
        debug!(sha256 = %fetched.sha256, size = fetched.size, "cached");
        Ok(Arc::new(Landed {
            sha256: fetched.sha256,
            size: fetched.size,
            path: blob,
            _pin: pin,
        }))
    }
}
