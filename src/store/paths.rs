//! Where files live under the store's root, alias validation, and the names of
//! temporary files.
//!
//! ```text
//! <root>/index.sqlite                       the index (plus its -wal and -shm files)
//! <root>/jobs/<job>/<type>/<name>           an artifact; <type> is ArtifactType::as_str()
//! <root>/jobs/<job>/<type>/.<alias>.<id>.part   a copy being made (row id <id>)
//! <root>/cache/blobs/<sha256>               a verified, read-only blob
//! <root>/cache/tmp/<flight>.part            a transfer in progress (on Linux an unnamed
//!                                           O_TMPFILE there instead, see `staging`)
//! ```
//!
//! `<name>` is the alias, or `<alias>~<n>` when an earlier artifact of the same job and type
//! already has that name. Nothing outside the root is ever written: aliases are plain file
//! names, job ids are numbers, and every directory is resolved and checked to be under the
//! (canonical) root before a file is created in it.

use std::path::{Path, PathBuf};

use super::StoreError;
use super::staging::{self, TempSpec};
use crate::model::{ArtifactType, JobId};

/// Longest alias accepted, in bytes (a file-name component on common file systems).
pub(crate) const MAX_ALIAS_BYTES: usize = 255;

/// How many bytes of the alias go into a temporary file's name, so that the name stays
/// under the file-name limit with its dot, id and `.part`.
const TEMP_ALIAS_BYTES: usize = 200;

/// Name of the index database under the root.
pub(crate) const INDEX_FILE: &str = "index.sqlite";

/// Name of the directory under the root that holds one directory per job.
pub(crate) const JOBS_DIR: &str = "jobs";

/// The shared cache's directory under the root.
pub(crate) const CACHE_DIR: &str = "cache";

/// Checks that `alias` is a plain file name.
pub(crate) fn validate_alias(job: JobId, alias: &str) -> Result<(), StoreError> {
    let reason = if alias.is_empty() {
        Some("empty")
    } else if alias == "." || alias == ".." {
        Some("`.` and `..` are not file names")
    } else if alias.contains('/') || alias.contains('\\') {
        Some("contains a path separator")
    } else if alias.contains('\0') {
        Some("contains a NUL byte")
    } else if alias.len() > MAX_ALIAS_BYTES {
        Some("longer than 255 bytes")
    } else if is_temp_name(alias) {
        Some("names of the form `.<name>.<digits>.part` are the store's temporary files")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StoreError::InvalidAlias {
            job,
            alias: alias.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_to(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The file name tried for the `n`-th artifact with this alias in one directory: the alias
/// itself for `n == 0`, `<alias>~<n>` after that (the alias shortened so the name stays
/// within 255 bytes).
pub(crate) fn candidate_name(alias: &str, n: u32) -> String {
    if n == 0 {
        return alias.to_owned();
    }
    let suffix = format!("~{n}");
    let stem = truncate_to(alias, MAX_ALIAS_BYTES - suffix.len());
    format!("{stem}{suffix}")
}

/// Name of the temporary file of the artifact with row id `id`: `.<alias>.<id>.part`.
pub(crate) fn temp_name(alias: &str, id: i64) -> String {
    format!(".{}.{id}.part", truncate_to(alias, TEMP_ALIAS_BYTES))
}

/// Whether `name` looks like a temporary file of the store (`.<something>.<digits>.part`).
pub(crate) fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|r| r.strip_suffix(".part")) else {
        return false;
    };
    match rest.rsplit_once('.') {
        Some((_, id)) => !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// The store's directory layout, anchored at its canonical root.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// The canonical root (symbolic links resolved), so that containment checks compare
    /// like with like.
    root: PathBuf,
    /// Whether transfers write unnamed temporary files (probed in `cache/tmp` at open).
    unnamed_temps: bool,
}

impl Layout {
    /// Creates `root` if needed and anchors the layout at its canonical form.
    pub(crate) fn create(root: &Path) -> Result<Layout, StoreError> {
        if std::fs::metadata(root).is_ok_and(|meta| !meta.is_dir()) {
            return Err(StoreError::Io {
                op: "use as store root",
                path: root.to_owned(),
                source: std::io::Error::other("it exists and is not a directory"),
            });
        }
        std::fs::create_dir_all(root).map_err(|source| StoreError::Io {
            op: "create store root",
            path: root.to_owned(),
            source,
        })?;
        let canonical = std::fs::canonicalize(root).map_err(|source| StoreError::Io {
            op: "resolve store root",
            path: root.to_owned(),
            source,
        })?;
        if canonical.to_str().is_none() {
            return Err(StoreError::RootNotUtf8 { path: canonical });
        }
        let jobs = canonical.join(JOBS_DIR);
        std::fs::create_dir_all(&jobs).map_err(|source| StoreError::Io {
            op: "create directory",
            path: jobs.clone(),
            source,
        })?;
        let mut layout = Layout {
            root: canonical,
            unnamed_temps: false,
        };
        for dir in [layout.blobs_dir(), layout.cache_tmp_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                op: "create directory",
                path: dir.clone(),
                source,
            })?;
        }
        layout.unnamed_temps = staging::probe_unnamed(&layout.cache_tmp_dir());
        Ok(layout)
    }

    /// `<root>/cache/blobs`: one read-only file per content, named by its SHA-256.
    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join(CACHE_DIR).join("blobs")
    }

    /// `<root>/cache/tmp`: transfers in progress (`<flight>.part`), on the same file
    /// system as the blobs so a finished one is renamed into place.
    pub(crate) fn cache_tmp_dir(&self) -> PathBuf {
        self.root.join(CACHE_DIR).join("tmp")
    }

    /// Makes transfers use named temporary files even where unnamed ones work.
    pub(crate) fn use_named_temps(&mut self) {
        self.unnamed_temps = false;
    }

    /// The temporary file `name` of a transfer in `cache/tmp` (unnamed where possible).
    pub(crate) fn temp(&self, name: String) -> TempSpec {
        TempSpec::new(self.cache_tmp_dir(), name, self.unnamed_temps)
    }

    /// The blob of content `sha256` (lower-case hex, checked by the caller).
    pub(crate) fn blob_path(&self, sha256: &str) -> PathBuf {
        self.blobs_dir().join(sha256)
    }

    /// `<root>/jobs/<job>` (not created).
    pub(crate) fn job_dir(&self, job: JobId) -> PathBuf {
        self.jobs_dir().join(job.0.to_string())
    }

    /// The canonical root.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/index.sqlite`.
    pub(crate) fn index_path(&self) -> PathBuf {
        self.root.join(INDEX_FILE)
    }

    /// `<root>/jobs`.
    pub(crate) fn jobs_dir(&self) -> PathBuf {
        self.root.join(JOBS_DIR)
    }

    /// `<root>/jobs/<job>/<type>` (not created).
    pub(crate) fn type_dir(&self, job: JobId, kind: ArtifactType) -> PathBuf {
        self.job_dir(job).join(kind.as_str())
    }

    /// Creates `<root>/jobs/<job>/<type>` if needed, one level at a time and without
    /// following symbolic links: a symbolic link (or a file) planted under the root where a
    /// directory should be is an error, so no write can be redirected outside the root.
    /// Blocking: call it off the async worker threads.
    ///
    /// With `durable`, a directory it creates has its name fsynced too (its parent is
    /// fsynced), so that a file placed in it and fsynced with it is reachable after a power
    /// loss.
    pub(crate) fn ensure_type_dir(
        &self,
        job: JobId,
        kind: ArtifactType,
        durable: bool,
    ) -> Result<PathBuf, StoreError> {
        let mut dir = self.root.clone();
        for part in [JOBS_DIR, &job.0.to_string(), kind.as_str()] {
            let parent = dir.clone();
            dir.push(part);
            if ensure_real_dir(&dir, &self.root)? && durable {
                sync_dir(&parent).map_err(|source| StoreError::Io {
                    op: "fsync directory",
                    path: parent,
                    source,
                })?;
            }
        }
        Ok(dir)
    }

    /// Whether `path` is a file path strictly under the root's `jobs` directory, with no
    /// `..` or other non-normal component.
    pub(crate) fn is_inside(&self, path: &Path) -> bool {
        match path.strip_prefix(self.jobs_dir()) {
            Ok(rest) => {
                rest.components().count() > 0
                    && rest
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
            }
            Err(_) => false,
        }
    }
}

/// Fsyncs a directory (its entries: the names in it). Blocking.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Makes sure `dir` is a real directory (not a symbolic link), creating it if missing;
/// returns whether it was created.
fn ensure_real_dir(dir: &Path, root: &Path) -> Result<bool, StoreError> {
    let io = |op, source| StoreError::Io {
        op,
        path: dir.to_owned(),
        source,
    };
    let check = |meta: std::fs::Metadata| -> Result<bool, StoreError> {
        if meta.file_type().is_symlink() {
            Err(StoreError::OutsideRoot {
                path: dir.to_owned(),
                root: root.to_owned(),
            })
        } else if meta.is_dir() {
            Ok(false)
        } else {
            Err(io(
                "use as directory",
                std::io::Error::other("exists and is not a directory"),
            ))
        }
    };
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => check(meta),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                check(std::fs::symlink_metadata(dir).map_err(|e| io("inspect directory", e))?)
            }
            Err(e) => Err(io("create directory", e)),
        },
        Err(e) => Err(io("inspect directory", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hostile alias is rejected, with the alias in the message.
    #[test]
    fn hostile_aliases_are_rejected() {
        let long = "x".repeat(256);
        for alias in [
            "",
            ".",
            "..",
            "a/b",
            "../etc/passwd",
            "/abs",
            "a\\b",
            "..\\x",
            "nul\0byte",
            long.as_str(),
            ".img.2.part",
            ".a.b.0.part",
        ] {
            let err = validate_alias(JobId(7), alias).expect_err(alias);
            let text = err.to_string();
            assert!(text.contains(&format!("{alias:?}")), "{text}");
            assert!(text.contains("job 7"), "{text}");
        }
    }

    /// Ordinary names, dotted names and a 255-byte name are accepted.
    #[test]
    fn plain_names_are_accepted() {
        let max = "y".repeat(255);
        for alias in [
            "Image_0",
            "run.sh",
            ".hidden",
            "...",
            "a b",
            "é",
            max.as_str(),
            "img.2.part",
            ".img.part",
            ".img.v2.part",
        ] {
            validate_alias(JobId(1), alias).expect(alias);
        }
    }

    /// Suffixed names stay within 255 bytes and on a character boundary.
    #[test]
    fn candidate_names_fit() {
        assert_eq!(candidate_name("run.sh", 0), "run.sh");
        assert_eq!(candidate_name("run.sh", 1), "run.sh~1");
        let long = "é".repeat(127) + "x"; // 255 bytes
        let name = candidate_name(&long, 12);
        assert!(name.len() <= 255, "{}", name.len());
        assert!(name.ends_with("~12"));
    }

    /// Temporary names are recognised; artifact names are not.
    #[test]
    fn temp_names_are_recognised() {
        assert!(is_temp_name(&temp_name("Image_0", 42)));
        assert!(is_temp_name(&temp_name(&"z".repeat(255), 1)));
        assert!(temp_name(&"z".repeat(255), i64::MAX).len() <= 255);
        for name in [
            "Image_0",
            ".part",
            "..part",
            ".x.part",
            ".x.12a.part",
            "x.1.part",
        ] {
            assert!(!is_temp_name(name), "{name}");
        }
    }

    /// The layout keeps everything under the canonical root and refuses symlinked escapes.
    #[cfg(unix)]
    #[test]
    fn layout_refuses_symlink_escape() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let layout = Layout::create(dir.path()).expect("layout");
        let ok = layout
            .ensure_type_dir(JobId(1), ArtifactType::Image, true)
            .expect("dir");
        assert!(ok.starts_with(layout.root()));
        assert!(layout.is_inside(&ok.join("a")));
        assert!(!layout.is_inside(&layout.root().join("index.sqlite")));
        assert!(!layout.is_inside(&ok.join("..").join("..").join("x")));
        std::os::unix::fs::symlink(outside.path(), layout.jobs_dir().join("2")).expect("symlink");
        let err = layout
            .ensure_type_dir(JobId(2), ArtifactType::Test, true)
            .expect_err("escape");
        assert!(matches!(err, StoreError::OutsideRoot { .. }), "{err}");
        assert!(!outside.path().join("test").exists());
    }
}
