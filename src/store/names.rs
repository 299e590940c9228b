//! Row ids and file names handed out when an artifact is pushed or created, so that
//! `push` returns its path without waiting for the index.
//!
//! The store keeps, per job directory it is working in, the file names its rows use and
//! how many rows each alias has (loaded from the index the first time, see
//! [`DirNames::from_rows`]). A new artifact gets the next free name for its alias (the
//! alias, then `<alias>~1`, `<alias>~2`, ...; a name a file already has is skipped) and the
//! next row id, above every id the index ever used. The row itself is inserted by the
//! index thread, in queue order, before any later request (a status update, a `list`)
//! runs, so the index reads as if the insert had been waited for. A directory's names are
//! dropped when the job has no transfer left, and loaded again when it has.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::paths;
use crate::model::{ArtifactType, JobId};

/// The names in use in one job directory.
#[derive(Debug, Default)]
pub(crate) struct DirNames {
    /// Per alias: the `n` to try next (at first, how many rows have the alias).
    next: HashMap<String, u32>,
    /// File names rows use.
    taken: HashSet<String>,
}

impl DirNames {
    /// From the directory's rows: (alias, path) of each.
    pub(crate) fn from_rows(rows: Vec<(String, String)>) -> Self {
        let mut names = DirNames::default();
        for (alias, path) in rows {
            *names.next.entry(alias).or_insert(0) += 1;
            if let Some(name) = Path::new(&path).file_name().and_then(|n| n.to_str()) {
                names.taken.insert(name.to_owned());
            }
        }
        names
    }
}

/// Ids and names handed out by this store.
#[derive(Debug)]
pub(crate) struct Names {
    /// The last id handed out.
    last_id: AtomicI64,
    /// The directories being worked in, and how many times names were forgotten.
    dirs: Mutex<Book>,
}

/// How many forget counters there are (jobs share them by id).
const EPOCHS: usize = 32;

/// What [`Names`] guards.
#[derive(Debug, Default)]
struct Book {
    dirs: HashMap<(JobId, ArtifactType), DirNames>,
    /// Bumped by every `forget` of a job whose id maps here: rows of that job read
    /// before it may miss a reservation made since. Per slot, so that other jobs ending
    /// rarely make a load start over; bounded, whatever the number of jobs.
    epochs: [u64; EPOCHS],
}

/// The forget counter of `job`.
fn slot(job: JobId) -> usize {
    (job.0 % EPOCHS as u64) as usize
}

impl Names {
    /// Ids continue after `last_id`.
    pub(crate) fn new(last_id: i64) -> Self {
        Names {
            last_id: AtomicI64::new(last_id),
            dirs: Mutex::default(),
        }
    }

    /// Whether the directory's names are loaded.
    #[cfg(test)]
    pub(crate) fn is_loaded(&self, job: JobId, kind: ArtifactType) -> bool {
        self.lock().dirs.contains_key(&(job, kind))
    }

    /// Taken before reading a job directory's rows, handed to [`Self::load`].
    pub(crate) fn epoch(&self, job: JobId) -> u64 {
        self.lock().epochs[slot(job)]
    }

    /// Adds the directory's names read from the index, unless another caller loaded them
    /// first (those are newer: they may hold reservations) or names were forgotten since
    /// `epoch` (the rows may miss a reservation whose row was queued after they were
    /// read; read them again). Returns whether the directory is loaded now.
    pub(crate) fn load(&self, job: JobId, kind: ArtifactType, names: DirNames, epoch: u64) -> bool {
        let mut book = self.lock();
        if book.dirs.contains_key(&(job, kind)) {
            return true;
        }
        if book.epochs[slot(job)] != epoch {
            return false;
        }
        book.dirs.insert((job, kind), names);
        true
    }

    /// Drops the job's directories (loaded again from the index when needed).
    pub(crate) fn forget(&self, job: JobId) {
        let mut book = self.lock();
        book.dirs.retain(|&(j, _), _| j != job);
        book.epochs[slot(job)] += 1;
    }

    /// The next id and a free path for `alias` in `dir` (the job's directory for `kind`),
    /// handed to `record` (which queues the row's insert) while the names are locked, so
    /// that rows read after a later `forget` include it. `None` when the directory's
    /// names are not loaded. Looks at the file system for each candidate name (one
    /// `lstat`).
    pub(crate) fn reserve<R>(
        &self,
        job: JobId,
        kind: ArtifactType,
        alias: &str,
        dir: &Path,
        record: impl FnOnce(i64, &Path) -> R,
    ) -> Option<(i64, PathBuf, R)> {
        let mut book = self.lock();
        let names = book.dirs.get_mut(&(job, kind))?;
        let mut n = names.next.get(alias).copied().unwrap_or(0);
        let (name, path) = loop {
            let name = paths::candidate_name(alias, n);
            n = n.saturating_add(1);
            if names.taken.contains(&name) {
                continue;
            }
            let path = dir.join(&name);
            if n < u32::MAX && std::fs::symlink_metadata(&path).is_ok() {
                continue;
            }
            break (name, path);
        };
        names.taken.insert(name);
        names.next.insert(alias.to_owned(), n);
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        let recorded = record(id, &path);
        Some((id, path, recorded))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.dirs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names continue after the rows' and skip files that exist; ids increase.
    #[test]
    fn reserve_skips_used_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = Names::new(41);
        let (job, kind) = (JobId(1), ArtifactType::Test);
        let reserve = |alias| {
            names
                .reserve(job, kind, alias, dir.path(), |id, _| id)
                .map(|(id, path, recorded)| {
                    assert_eq!(id, recorded, "record sees the id");
                    (id, path)
                })
        };
        assert!(reserve("a").is_none(), "not loaded");
        let rows = vec![("a".to_owned(), dir.path().join("a").display().to_string())];
        let epoch = names.epoch(job);
        assert!(names.load(job, kind, DirNames::from_rows(rows), epoch));
        std::fs::write(dir.path().join("a~1"), b"someone else's").unwrap();
        assert_eq!(reserve("a").unwrap(), (42, dir.path().join("a~2")));
        assert_eq!(reserve("a").unwrap(), (43, dir.path().join("a~3")));
        assert_eq!(reserve("b").unwrap().1, dir.path().join("b"));
        // A second load does not replace the reservations.
        assert!(names.load(job, kind, DirNames::default(), epoch));
        assert_eq!(reserve("b").unwrap().1, dir.path().join("b~1"));
        names.forget(job);
        assert!(!names.is_loaded(job, kind));
        // Rows read before the forget are refused.
        assert!(!names.load(job, kind, DirNames::default(), epoch));
        // Another job's end does not refuse them.
        let other = JobId(2);
        let epoch = names.epoch(job);
        names.forget(other);
        assert!(names.load(job, kind, DirNames::default(), epoch));
    }
}
