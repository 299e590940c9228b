//! Streaming writeback for large downloads: hands written data to the disk while the
//! download goes on, instead of all at the final `fsync`.
//!
//! Without it, a multi-GiB download piles up as dirty page cache and the closing `fsync`
//! then writes all of it while the transfer waits. [`Writeback`] starts writeback of
//! every [`WINDOW`] as soon as it is written (`sync_file_range(WRITE)`), waits for the
//! window before it (so at most two windows are dirty at a time and the final `fsync`
//! has at most that much left) and, when asked, drops the pages of that written-back
//! window from the page cache (`posix_fadvise(DONTNEED)`), so a large download does not
//! push the rest of the machine's cache out and reuses the same few MiB of memory.
//!
//! Everything here is advice to the kernel: an error is ignored (logged at debug), and the
//! final `fsync` still decides whether the data is safe. On other systems than Linux it
//! does nothing.

use std::fs::File;

/// Bytes per writeback window.
pub(crate) const WINDOW: u64 = 8 << 20;

/// Where a file's writeback stands. Lives next to the file on the blocking pool.
#[derive(Debug, Clone, Default)]
pub(crate) struct Writeback {
    /// Whether anything is done at all (files that are fsynced at the end).
    enabled: bool,
    /// Whether written-back pages are dropped from the page cache.
    drop_pages: bool,
    /// Bytes written to the file so far.
    written: u64,
    /// Writeback started for `[0, started)`.
    started: u64,
    /// Writeback finished (waited for) for `[0, waited)`.
    waited: u64,
}

impl Writeback {
    /// Writeback for a file that will be fsynced (`enabled`), dropping written-back pages
    /// from the page cache when `drop_pages`.
    pub(crate) fn new(enabled: bool, drop_pages: bool) -> Self {
        Writeback {
            enabled,
            drop_pages,
            ..Writeback::default()
        }
    }

    /// The file was truncated to nothing: start over.
    pub(crate) fn reset(&mut self) {
        *self = Writeback::new(self.enabled, self.drop_pages);
    }

    /// Records `n` more bytes written at the end of `file`; once a window is full, starts
    /// its writeback and finishes the one before. Blocking.
    pub(crate) fn wrote(&mut self, file: &File, n: usize) {
        self.written += n as u64;
        if !self.enabled || self.written - self.started < WINDOW {
            return;
        }
        if self.started > self.waited {
            let (from, len) = (self.waited, self.started - self.waited);
            sys::wait(file, from, len);
            if self.drop_pages {
                sys::drop_pages(file, from, len);
            }
            self.waited = self.started;
        }
        sys::start(file, self.started, self.written - self.started);
        self.started = self.written;
    }

    /// After the final `fsync`: drops the pages not dropped yet (when asked). Blocking.
    pub(crate) fn synced(&mut self, file: &File) {
        if self.enabled && self.drop_pages && self.written > self.waited {
            sys::drop_pages(file, self.waited, self.written - self.waited);
            self.waited = self.written;
        }
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    use tracing::debug;

    /// Converts an offset or length for the C calls (clamped; files stay far below 2^63).
    fn off(n: u64) -> libc::off64_t {
        libc::off64_t::try_from(n).unwrap_or(libc::off64_t::MAX)
    }

    fn sync_range(file: &File, from: u64, len: u64, flags: libc::c_uint) {
        // SAFETY: a plain system call on an open descriptor that `file` keeps alive; it
        // reads no memory of ours.
        let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), off(from), off(len), flags) };
        if rc != 0 {
            debug!(cause = %std::io::Error::last_os_error(), "sync_file_range failed; the final fsync still runs");
        }
    }

    /// Starts writeback of `[from, from + len)` without waiting.
    pub(super) fn start(file: &File, from: u64, len: u64) {
        sync_range(file, from, len, libc::SYNC_FILE_RANGE_WRITE);
    }

    /// Writes back `[from, from + len)` and waits until it is on the disk.
    pub(super) fn wait(file: &File, from: u64, len: u64) {
        sync_range(
            file,
            from,
            len,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        );
    }

    /// Drops the (clean) pages of `[from, from + len)` from the page cache.
    pub(super) fn drop_pages(file: &File, from: u64, len: u64) {
        // SAFETY: as in `sync_range`.
        let rc = unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                off(from),
                off(len),
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if rc != 0 {
            debug!(
                cause = %std::io::Error::from_raw_os_error(rc),
                "posix_fadvise(DONTNEED) failed"
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::fs::File;

    pub(super) fn start(_: &File, _: u64, _: u64) {}
    pub(super) fn wait(_: &File, _: u64, _: u64) {}
    pub(super) fn drop_pages(_: &File, _: u64, _: u64) {}
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Windows are started and waited for in order, and a reset starts over; the file's
    /// content is untouched by any of it.
    #[test]
    fn windows_advance_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        let mut wb = Writeback::new(true, true);
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..20 {
            file.write_all(&chunk).unwrap();
            wb.wrote(&file, chunk.len());
        }
        assert_eq!(wb.written, 20 << 20);
        assert_eq!(wb.started, 16 << 20, "two full windows started");
        assert_eq!(wb.waited, 8 << 20, "the first window waited for");
        file.sync_all().unwrap();
        wb.synced(&file);
        assert_eq!(wb.waited, 20 << 20);
        wb.reset();
        assert_eq!((wb.written, wb.started, wb.waited), (0, 0, 0));
        assert!(wb.enabled && wb.drop_pages);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 20 << 20);
        assert!(data.iter().all(|&b| b == 7));
    }

    /// Disabled, it keeps count but never acts.
    #[test]
    fn disabled_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut wb = Writeback::new(false, true);
        wb.wrote(&file, 64 << 20);
        assert_eq!((wb.started, wb.waited), (0, 0));
    }
}
