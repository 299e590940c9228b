//! The temporary file a transfer writes before its bytes are verified, and how it becomes
//! a blob.
//!
//! On Linux, where the file system allows it (probed once when the store opens), the file
//! is *unnamed* (`O_TMPFILE` in `cache/tmp`) and gets its blob name with `linkat` once it
//! is verified. No directory is locked while it is made, no cross-directory rename is
//! needed to seal it, and a killed process, a failed transfer or a dropped one leaves
//! nothing behind (after a power loss the file system reclaims the inode: ext4 through its
//! journal's orphan list, or `fsck` on a file system without a journal). Elsewhere it is
//! the named file `cache/tmp/<flight>.part`, renamed onto the blob and removed when
//! dropped unsealed (the store's open removes any a crash left).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use super::fetch::FetchError;

/// Where and under which name a transfer's temporary file is made (nothing is made yet).
#[derive(Debug, Clone)]
pub(crate) struct TempSpec {
    /// The directory (`cache/tmp`).
    dir: PathBuf,
    /// The name: the named file's, and the one errors show for an unnamed file.
    name: String,
    /// Whether the file is unnamed (`O_TMPFILE`).
    unnamed: bool,
}

impl TempSpec {
    /// A temporary file `name` in `dir`, unnamed when `unnamed` (see [`probe_unnamed`]).
    pub(crate) fn new(dir: PathBuf, name: String, unnamed: bool) -> TempSpec {
        TempSpec { dir, name, unnamed }
    }

    /// The path errors name: the named file, or where an unnamed one lives.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Makes the (empty) file. Blocking.
    pub(crate) fn create(&self) -> io::Result<TempFile> {
        #[cfg(target_os = "linux")]
        if self.unnamed {
            return Ok(TempFile {
                file: unnamed::create(&self.dir)?,
                path: self.path(),
                named: false,
            });
        }
        let path = self.path();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempFile {
            file,
            path,
            named: true,
        })
    }
}

/// A temporary file being written. Dropped unsealed, a named one is removed (an unnamed one
/// vanishes with its descriptor).
#[derive(Debug)]
pub(crate) struct TempFile {
    file: File,
    /// The named file, or (unnamed) the path errors show.
    path: PathBuf,
    /// Whether `path` exists and must be removed on drop.
    named: bool,
}

impl TempFile {
    /// The open file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The open file, to write.
    pub(crate) fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// Makes the verified file read-only and gives it the name `blob`, replacing a blob of
    /// the same digest (whose other names keep the old inode); returns its mtime in
    /// nanoseconds. Blocking.
    pub(crate) fn seal(mut self, blob: &Path) -> Result<i64, FetchError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| FetchError::Io { op, path, source }
        };
        let meta = self.file.metadata().map_err(io("inspect", &self.path))?;
        let mut perms = meta.permissions();
        perms.set_readonly(true);
        self.file
            .set_permissions(perms)
            .map_err(io("make read-only", &self.path))?;
        let named = self.named;
        if named {
            std::fs::rename(&self.path, blob).map_err(io("move into the cache", blob))?;
            // The name is the blob's now: nothing for `drop` to remove.
            self.named = false;
        }
        #[cfg(target_os = "linux")]
        if !named {
            unnamed::link_replacing(&self.file, blob, &self.path)
                .map_err(io("move into the cache", blob))?;
        }
        // Neither a rename nor a link changes the mtime the file has now.
        Ok(super::cache::mtime_ns(&meta))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.named {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether unnamed temporary files can be made in `dir` and linked to a name there; tried
/// once when the store opens (the probe leaves nothing behind). Blocking.
pub(crate) fn probe_unnamed(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        unnamed::probe(dir)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

#[cfg(target_os = "linux")]
mod unnamed {
    //! `O_TMPFILE` and `linkat`, Linux only.

    use std::ffi::CString;
    use std::fs::File;
    use std::io;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// An unnamed, writable file in `dir`, mode 0644.
    pub(super) fn create(dir: &Path) -> io::Result<File> {
        std::fs::OpenOptions::new()
            .write(true)
            .mode(0o644)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
    }

    fn c_path(path: &Path) -> io::Result<CString> {
        CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
    }

    /// Gives the unnamed `file` the name `to` (fails with `AlreadyExists` if taken).
    /// `linkat(fd, "", AT_EMPTY_PATH)` first; where that is refused (it needs
    /// `CAP_DAC_READ_SEARCH` before Linux 6.10), through `/proc/self/fd`.
    pub(super) fn link(file: &File, to: &Path) -> io::Result<()> {
        let to = c_path(to)?;
        let fd = file.as_raw_fd();
        // SAFETY: both strings are NUL-terminated and outlive the call; `fd` is open.
        let rc = unsafe {
            libc::linkat(
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EPERM | libc::ENOENT)) {
            return Err(err);
        }
        let proc = CString::new(format!("/proc/self/fd/{fd}")).map_err(io::Error::other)?;
        // SAFETY: as above.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Links `file` at `blob`; when that name is taken, links it at a hidden name beside
    /// it and renames that over `blob`, so the name always points at a whole file.
    /// `label` names the file in the hidden name.
    pub(super) fn link_replacing(file: &File, blob: &Path, label: &Path) -> io::Result<()> {
        match link(file, blob) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            done => return done,
        }
        let stem = label
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let side = blob.with_file_name(format!(".{stem}.new"));
        let _ = std::fs::remove_file(&side);
        link(file, &side)?;
        std::fs::rename(&side, blob).inspect_err(|_| {
            let _ = std::fs::remove_file(&side);
        })
    }

    /// Makes an unnamed file in `dir`, links it there under a fresh name and removes it.
    pub(super) fn probe(dir: &Path) -> bool {
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let Ok(file) = create(dir) else {
            return false;
        };
        let name = dir.join(format!(
            ".probe.{}.{}",
            std::process::id(),
            PROBES.fetch_add(1, Ordering::Relaxed)
        ));
        let linked = link(&file, &name).is_ok();
        if linked {
            let _ = std::fs::remove_file(&name);
        }
        linked
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Both kinds: written, sealed read-only under the blob name with its bytes, nothing
    /// else left in either directory; a second seal of the same name replaces the first.
    #[test]
    fn seal_names_the_file_and_leaves_nothing_else() {
        let root = tempfile::tempdir().unwrap();
        let (tmp, blobs) = (root.path().join("tmp"), root.path().join("blobs"));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::create_dir_all(&blobs).unwrap();
        let unnamed = probe_unnamed(&tmp);
        assert_eq!(
            unnamed,
            cfg!(target_os = "linux"),
            "O_TMPFILE on this machine"
        );
        assert!(names(&tmp).is_empty(), "the probe left {:?}", names(&tmp));
        for kind in [false, unnamed] {
            let blob = blobs.join(format!("blob-{kind}"));
            for content in [&b"first"[..], b"second, longer"] {
                let spec = TempSpec::new(tmp.clone(), "7.part".into(), kind);
                let mut file = spec.create().unwrap();
                assert_eq!(names(&tmp).is_empty(), kind, "{:?}", names(&tmp));
                file.file_mut().write_all(content).unwrap();
                let mtime = file.seal(&blob).unwrap();
                let meta = std::fs::metadata(&blob).unwrap();
                assert_eq!(mtime, crate::store::cache::mtime_ns(&meta));
                assert_eq!(meta.permissions().mode() & 0o222, 0, "read-only");
                assert_eq!(std::fs::read(&blob).unwrap(), content);
                assert!(names(&tmp).is_empty(), "{:?}", names(&tmp));
            }
        }
        let want: Vec<String> = [false, unnamed]
            .iter()
            .map(|k| format!("blob-{k}"))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(names(&blobs), want);
    }

    /// Dropped unsealed, neither kind leaves a file.
    #[test]
    fn a_dropped_file_is_gone() {
        let root = tempfile::tempdir().unwrap();
        for kind in [false, probe_unnamed(root.path())] {
            let spec = TempSpec::new(root.path().to_owned(), "3.part".into(), kind);
            let mut file = spec.create().unwrap();
            file.file_mut().write_all(b"half").unwrap();
            drop(file);
            assert!(names(root.path()).is_empty(), "{:?}", names(root.path()));
        }
    }

    /// Sealing onto a missing directory fails with the blob's path, and cleans up.
    #[test]
    fn sealing_into_a_missing_directory_fails_cleanly() {
        let root = tempfile::tempdir().unwrap();
        for kind in [false, probe_unnamed(root.path())] {
            let spec = TempSpec::new(root.path().to_owned(), "4.part".into(), kind);
            let file = spec.create().unwrap();
            let blob = root.path().join("missing").join("blob");
            let err = file.seal(&blob).unwrap_err().to_string();
            assert!(err.contains("missing/blob"), "{err}");
            assert!(names(root.path()).is_empty(), "{:?}", names(root.path()));
        }
    }
}
