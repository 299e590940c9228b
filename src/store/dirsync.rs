//! Group commit of directory fsyncs: one `fsync` of a directory makes every name created
//! in it before the call started durable, so transfers that finish together in one job
//! directory share fsyncs instead of queueing one each on the directory's lock.
//!
//! A caller that has just linked or renamed a file into `dir` calls [`DirSyncs::sync`].
//! It takes a ticket; if no fsync of `dir` is running, it runs one covering every ticket
//! taken so far; otherwise it waits for the running one to end and then, unless a later
//! fsync already covered its ticket, runs the next. An fsync that fails fails exactly the
//! tickets it covered. Blocking: call it on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// The directories being synced, each with its ticket counters.
#[derive(Debug, Default)]
pub(crate) struct DirSyncs {
    dirs: Mutex<HashMap<PathBuf, Arc<DirSync>>>,
}

/// One directory's group commit.
#[derive(Debug, Default)]
struct DirSync {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Tickets handed out.
    taken: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// An fsync is running.
    running: bool,
    /// The last failed fsync: the tickets it covered (`from..=to`) and its error.
    failed: Option<(u64, u64, std::io::ErrorKind, String)>,
}

impl DirSyncs {
    /// Makes every name created in `dir` before this call durable. Blocking.
    pub(crate) fn sync(&self, dir: &Path) -> std::io::Result<()> {
        let entry = Arc::clone(
            self.dirs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(dir.to_owned())
                .or_default(),
        );
        let result = entry.sync(dir);
        let mut dirs = self.dirs.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's reference and ours: no other caller has it (a new one would need
        // the map's lock to get it), so it leaves the map with us.
        if Arc::strong_count(&entry) == 2 {
            dirs.remove(dir);
        }
        result
    }

    /// Directories with a caller in [`Self::sync`] (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.dirs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl DirSync {
    fn sync(&self, dir: &Path) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.taken += 1;
        let ticket = state.taken;
        loop {
            if state.synced >= ticket {
                return Ok(());
            }
            if let Some((from, to, kind, msg)) = &state.failed
                && (*from..=*to).contains(&ticket)
            {
                return Err(std::io::Error::new(*kind, msg.clone()));
            }
            if state.running {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.running = true;
            let (from, to) = (state.synced + 1, state.taken);
            drop(state);
            let result = std::fs::File::open(dir).and_then(|d| d.sync_all());
            state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.running = false;
            match &result {
                Ok(()) => state.synced = state.synced.max(to),
                Err(e) => state.failed = Some((from, to, e.kind(), e.to_string())),
            }
            self.done.notify_all();
            return result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many threads syncing one directory all succeed, and the map is empty after.
    #[test]
    fn concurrent_syncs_share_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let syncs = Arc::new(DirSyncs::default());
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (syncs, dir) = (Arc::clone(&syncs), dir.path().to_owned());
                std::thread::spawn(move || {
                    for j in 0..20 {
                        std::fs::write(dir.join(format!("{i}-{j}")), b"x").unwrap();
                        syncs.sync(&dir).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(syncs.len(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 320);
    }

    /// A directory that cannot be opened fails the call that covered it, with the cause.
    #[test]
    fn a_failed_sync_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("gone");
        let syncs = DirSyncs::default();
        let err = syncs.sync(&missing).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(syncs.len(), 0);
        syncs.sync(dir.path()).unwrap();
    }
}
