//! Store fixtures and assertions shared by the `store_*` tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use artifact_coordinator::{
    ArtifactDescription, ArtifactFilter, ArtifactManager, ArtifactPath, ArtifactRecord,
    ArtifactStatus, ArtifactStatusChange, ArtifactType, ChecksumSource, ChecksumType, JobId, Page,
    Store, StoreBuilder,
};
use tempfile::TempDir;

use super::{Statuses, TestServer, assert_no_part_files, sha256_file, sha256_hex};

/// A builder with test-friendly delays: millisecond backoff, short timeouts.
pub fn fast_builder() -> StoreBuilder {
    Store::builder()
        .backoff_base(Duration::from_millis(1))
        .backoff_max(Duration::from_millis(20))
        .retry_after_cap(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(5))
}

/// A server, a temporary directory and a store whose root is `<dir>/root` (so that a
/// test can check that nothing appeared next to the root).
pub struct Fixture {
    /// The test server.
    pub server: TestServer,
    /// The directory holding the root; removed on drop.
    pub dir: TempDir,
    /// The store under test.
    pub store: Store,
}

impl Fixture {
    /// A fixture whose store is built by `builder`.
    pub async fn with(builder: StoreBuilder) -> Fixture {
        let server = TestServer::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = builder
            .open(dir.path().join("root"))
            .await
            .expect("open store");
        Fixture { server, dir, store }
    }

    /// A fixture with [`fast_builder`].
    pub async fn new() -> Fixture {
        Fixture::with(fast_builder()).await
    }

    /// The store's root.
    pub fn root(&self) -> PathBuf {
        self.store.root().to_path_buf()
    }

    /// Pushes `description` with a fresh collector; panics when the push is refused.
    pub async fn push(&self, description: ArtifactDescription) -> (ArtifactPath, Statuses) {
        let (tx, statuses) = Statuses::channel();
        let path = self
            .store
            .push_artifact(description.clone(), tx)
            .await
            .unwrap_or_else(|e| panic!("push {description:?} refused: {e}"));
        (path, statuses)
    }

    /// Pushes an IMAGE of job 1 from `server_path` and waits for its terminal status.
    pub async fn fetch(&self, alias: &str, server_path: &str) -> Outcome {
        self.fetch_desc(image(1, alias, &self.server.url(server_path)))
            .await
    }

    /// Pushes `description` and waits for its terminal status.
    pub async fn fetch_desc(&self, description: ArtifactDescription) -> Outcome {
        let (path, mut statuses) = self.push(description).await;
        let changes = statuses.until_terminal(&path).await;
        let record = self.info(&path).await;
        Outcome {
            path,
            changes,
            record,
        }
    }

    /// The index row of `path`; panics when there is none.
    pub async fn info(&self, path: &ArtifactPath) -> ArtifactRecord {
        self.store
            .info(path)
            .await
            .expect("info")
            .unwrap_or_else(|| panic!("no index row for {path}"))
    }

    /// Every row of the index, all pages.
    pub async fn all_rows(&self) -> Vec<ArtifactRecord> {
        all_rows(&self.store).await
    }
}

/// Every row of `store`'s index, all pages.
pub async fn all_rows(store: &Store) -> Vec<ArtifactRecord> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(ArtifactFilter::default(), Page { after, limit: 100 })
            .await
            .expect("list");
        out.extend(page.records);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

/// An IMAGE description of `job` with no digest and no checksum source.
pub fn image(job: u64, alias: &str, uri: &str) -> ArtifactDescription {
    ArtifactDescription::new(JobId(job), ArtifactType::Image, alias, uri)
}

/// An IMAGE description with an expected SHA-256.
pub fn image_sha(job: u64, alias: &str, uri: &str, sha256: &str) -> ArtifactDescription {
    let mut d = image(job, alias, uri);
    d.sha256 = Some(sha256.to_owned());
    d
}

/// An IMAGE description with a checksum file.
pub fn image_checksum(
    job: u64,
    alias: &str,
    uri: &str,
    checksum_uri: &str,
    kind: ChecksumType,
) -> ArtifactDescription {
    let mut d = image(job, alias, uri);
    d.checksum = Some(ChecksumSource {
        uri: checksum_uri.to_owned(),
        kind,
    });
    d
}

/// What came of one transfer: its path, its changes on the collector, its index row.
#[derive(Debug)]
pub struct Outcome {
    /// The path `push_artifact` returned.
    pub path: ArtifactPath,
    /// Its changes, ending with the terminal one.
    pub changes: Vec<ArtifactStatusChange>,
    /// Its index row, read after the terminal change arrived.
    pub record: ArtifactRecord,
}

impl Outcome {
    /// The terminal change.
    pub fn last(&self) -> &ArtifactStatusChange {
        self.changes.last().expect("at least the terminal change")
    }

    /// Checks a READY outcome: the statuses, the file's content, the index row, and that
    /// no temporary file is left under `root`.
    pub fn assert_ready(&self, root: &Path, served: &[u8]) {
        let last = self.last();
        assert_eq!(
            last.status,
            ArtifactStatus::Ready,
            "expected READY for {}, got {:?}",
            self.path,
            self.changes
        );
        assert_eq!(last.reason, None, "{:?}", self.changes);
        self.assert_shape();
        let file = self.path.as_path();
        assert!(file.starts_with(root), "{file:?} outside {root:?}");
        let want = sha256_hex(served);
        assert_eq!(sha256_file(file), want, "content of {file:?}");
        let r = &self.record;
        assert_eq!(r.status, ArtifactStatus::Ready, "{r:?}");
        assert_eq!(r.path, self.path, "{r:?}");
        assert_eq!(r.size, Some(served.len() as u64), "{r:?}");
        assert_eq!(r.sha256.as_deref(), Some(want.as_str()), "{r:?}");
        assert_eq!(r.error, None, "{r:?}");
        assert_no_part_files(root);
    }

    /// Checks a FAILED outcome: `check` accepts the reason on the collector and in the
    /// index, no file is at the path, no temporary file is left under `root`.
    pub fn assert_failed(&self, root: &Path, check: impl Fn(&str) -> bool) -> String {
        let last = self.last();
        assert_eq!(
            last.status,
            ArtifactStatus::Failed,
            "expected FAILED for {}, got {:?}",
            self.path,
            self.changes
        );
        self.assert_shape();
        let reason = last
            .reason
            .clone()
            .unwrap_or_else(|| panic!("FAILED without a reason: {:?}", self.changes));
        assert!(
            check(&reason),
            "unexpected reason on the collector: {reason:?}"
        );
        let r = &self.record;
        assert_eq!(r.status, ArtifactStatus::Failed, "{r:?}");
        let error = r
            .error
            .clone()
            .unwrap_or_else(|| panic!("FAILED row without an error: {r:?}"));
        assert!(check(&error), "unexpected error in the index: {error:?}");
        assert!(
            !self.path.as_path().exists(),
            "a FAILED artifact left a file at {}",
            self.path
        );
        assert_no_part_files(root);
        reason
    }

    /// The changes start with PENDING, end with one terminal status, and only
    /// DOWNLOADING comes in between.
    fn assert_shape(&self) {
        let statuses: Vec<_> = self.changes.iter().map(|c| c.status).collect();
        assert_eq!(
            statuses.first(),
            Some(&ArtifactStatus::Pending),
            "{statuses:?}"
        );
        let middle = &statuses[1..statuses.len() - 1];
        assert!(
            middle.iter().all(|s| *s == ArtifactStatus::Downloading),
            "{statuses:?}"
        );
        assert!(
            self.changes.iter().all(|c| c.path == self.path),
            "{:?}",
            self.changes
        );
    }
}

/// Whether an error text names `alias` (as written, or escaped as Rust's `{:?}` does).
pub fn names_alias(text: &str, alias: &str) -> bool {
    if alias.is_empty() {
        return text.contains("\"\"") || text.contains("empty");
    }
    let debug = format!("{alias:?}");
    text.contains(alias) || text.contains(debug.trim_matches('"'))
}
