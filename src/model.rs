//! The domain model: job configs (Weles-shaped JSON), identifiers, statuses and the
//! messages that flow between the Downloader, the controller and the artifact manager.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Identifier of a job, as the controller knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u64> for JobId {
    fn from(id: u64) -> Self {
        JobId(id)
    }
}

/// Status of a job in the controller (Weles' job states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Just submitted.
    New,
    /// The config is being parsed.
    Parsing,
    /// Artifacts are being downloaded (the only status the Downloader sets).
    Downloading,
    /// Waiting for a device.
    Waiting,
    /// Running on a device.
    Running,
    /// Finished successfully.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled by a user.
    Canceled,
}

/// Kind of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ArtifactType {
    /// An image to deploy (or its checksum file).
    Image,
    /// A file the job produces (a `pull` action).
    Result,
    /// A file pushed to the device by a test action.
    Test,
    /// The job's YAML definition.
    Yaml,
}

impl ArtifactType {
    /// Lower-case name, used for directory names and the index.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactType::Image => "image",
            ArtifactType::Result => "result",
            ArtifactType::Test => "test",
            ArtifactType::Yaml => "yaml",
        }
    }
}

impl fmt::Display for ArtifactType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Status of one artifact in the artifact manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ArtifactStatus {
    /// Registered, waiting for a worker.
    Pending,
    /// Being transferred.
    Downloading,
    /// Complete and verified on disk (terminal).
    Ready,
    /// Could not be made ready (terminal).
    Failed,
}

impl ArtifactStatus {
    /// `true` for `Ready` and `Failed`.
    pub fn is_terminal(self) -> bool {
        matches!(self, ArtifactStatus::Ready | ArtifactStatus::Failed)
    }

    /// Upper-case name, as stored in the index.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactStatus::Pending => "PENDING",
            ArtifactStatus::Downloading => "DOWNLOADING",
            ArtifactStatus::Ready => "READY",
            ArtifactStatus::Failed => "FAILED",
        }
    }
}

impl fmt::Display for ArtifactStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Local path of an artifact, unique within one artifact manager.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ArtifactPath(pub String);

impl ArtifactPath {
    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path as a [`Path`].
    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl fmt::Display for ArtifactPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ArtifactPath {
    fn from(s: &str) -> Self {
        ArtifactPath(s.to_owned())
    }
}

impl From<String> for ArtifactPath {
    fn from(s: String) -> Self {
        ArtifactPath(s)
    }
}

/// Algorithm of an image's checksum file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumType {
    /// MD5, 32 hex digits (`md5sum` output).
    Md5,
    /// SHA-256, 64 hex digits (`sha256sum` output).
    Sha256,
}

impl ChecksumType {
    /// Number of hex digits of a digest of this type.
    pub fn hex_len(self) -> usize {
        match self {
            ChecksumType::Md5 => 32,
            ChecksumType::Sha256 => 64,
        }
    }
}

impl fmt::Display for ChecksumType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChecksumType::Md5 => "md5",
            ChecksumType::Sha256 => "sha256",
        })
    }
}

/// Where an image's checksum can be fetched from: the URI of a small file holding the
/// digest, and the digest's algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChecksumSource {
    /// URI of the checksum file.
    pub uri: String,
    /// Algorithm of the digest in that file.
    pub kind: ChecksumType,
}

/// Priority of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Low priority.
    Low,
    /// Medium priority (the default in Weles).
    Medium,
    /// High priority.
    High,
}

/// A job's configuration (Weles-shaped).
///
/// Unknown fields are rejected; [`Config::from_json`] also checks the values
/// (digests, checksum sources) and names the offending field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Human-readable name of the job.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job_name: String,
    /// Device type the job runs on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_type: String,
    /// Scheduling priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// What the job does.
    #[serde(default)]
    pub action: Action,
}

/// The actions of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Images to deploy.
    #[serde(default)]
    pub deploy: Deploy,
    /// Test cases to run.
    #[serde(default)]
    pub test: Test,
}

/// The deploy action: images flashed onto the device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// Images, in order (`Image_<i>` is the alias of the i-th).
    #[serde(default)]
    pub images: Vec<ImageDefinition>,
}

/// One image, and optionally a checksum file for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDefinition {
    /// URI of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// URI of the image's checksum file (`md5sum`/`sha256sum` style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_uri: Option<String>,
    /// Algorithm of the checksum file; required with `checksum_uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<ChecksumType>,
    /// Expected SHA-256 of the image (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Local path of the image, filled by the Downloader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Local path of the checksum file, filled by the Downloader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_path: Option<String>,
}

impl ImageDefinition {
    /// The image's checksum source, when both `checksum_uri` and `checksum_type` are set.
    pub fn checksum_source(&self) -> Option<ChecksumSource> {
        match (&self.checksum_uri, self.checksum_type) {
            (Some(uri), Some(kind)) => Some(ChecksumSource {
                uri: uri.clone(),
                kind,
            }),
            _ => None,
        }
    }
}

/// The test action: test cases in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Test {
    /// Test cases.
    #[serde(default)]
    pub test_cases: Vec<TestCase>,
}

/// One test case: a name and a list of actions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Name of the case.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub case_name: String,
    /// Actions, in order.
    #[serde(default)]
    pub test_actions: Vec<TestAction>,
}

/// One action of a test case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TestAction {
    /// Copy a file onto the device (downloaded first).
    Push(Push),
    /// Run a command on the device.
    Run(Run),
    /// Copy a file from the device (a path is allocated for it).
    Pull(Pull),
}

/// A file to download and push onto the device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// Where to download it from.
    pub uri: String,
    /// Where it goes on the device.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dest: String,
    /// Its file name in the store.
    pub alias: String,
    /// Expected SHA-256 (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Local path, filled by the Downloader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A command to run on the device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// The command line.
    pub name: String,
}

/// A file the job produces on the device and that is copied back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pull {
    /// Where it is on the device.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub src: String,
    /// Its file name in the store.
    pub alias: String,
    /// Local path, filled by the Downloader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl Config {
    /// Parses a config from JSON and validates it.
    ///
    /// Errors name the offending field (unknown fields, bad digests, a checksum URI
    /// without its type) and, for syntax errors, the line and column.
    pub fn from_json(json: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_json::from_str(json).map_err(parse_error)?;
        // serde also reads a struct from an array of its field values: the shape is
        // checked on the JSON too (it parsed once, so it parses again).
        let value: serde_json::Value = serde_json::from_str(json).map_err(parse_error)?;
        check_shape(&value, "")?;
        config.validate()?;
        Ok(config)
    }

    /// Serializes the config as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks values serde cannot: digests are hex of the right length, a checksum URI
    /// has a type (and the other way round).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, image) in self.action.deploy.images.iter().enumerate() {
            let field = |name: &str| format!("action.deploy.images[{i}].{name}");
            if let Some(digest) = &image.sha256 {
                check_hex(&field("sha256"), digest, 64)?;
            }
            match (&image.checksum_uri, image.checksum_type) {
                (Some(_), None) => {
                    return Err(ConfigError::Invalid {
                        field: field("checksum_type"),
                        reason: "required when checksum_uri is set".into(),
                    });
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Invalid {
                        field: field("checksum_uri"),
                        reason: "required when checksum_type is set".into(),
                    });
                }
                _ => {}
            }
        }
        for (c, case) in self.action.test.test_cases.iter().enumerate() {
            for (a, action) in case.test_actions.iter().enumerate() {
                if let TestAction::Push(push) = action
                    && let Some(digest) = &push.sha256
                {
                    check_hex(
                        &format!("action.test.test_cases[{c}].test_actions[{a}].push.sha256"),
                        digest,
                        64,
                    )?;
                }
            }
        }
        Ok(())
    }
}

/// A serde_json error as [`ConfigError::Parse`], its position given once (in `line` and
/// `column`, not repeated in the message).
fn parse_error(source: serde_json::Error) -> ConfigError {
    let (line, column) = (source.line(), source.column());
    let text = source.to_string();
    let message = text
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&text)
        .to_owned();
    ConfigError::Parse {
        line,
        column,
        message,
        source,
    }
}

/// The config's lists: the only places where an array may appear, holding objects.
const LIST_FIELDS: [&str; 3] = ["images", "test_cases", "test_actions"];

/// Checks that a parsed config has the schema's shape where serde is lenient: the config
/// is an object, and arrays appear only as its lists and hold objects (serde would read
/// a struct from an array of its field values). `at` is the dotted path of `value`.
fn check_shape(value: &serde_json::Value, at: &str) -> Result<(), ConfigError> {
    use serde_json::Value;
    let field = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    let not_object = |field: String, found: &Value| ConfigError::Invalid {
        field: if field.is_empty() {
            "(the config)".to_owned()
        } else {
            field
        },
        reason: format!("expected an object, found {}", kind(found)),
    };
    let Value::Object(map) = value else {
        return Err(not_object(at.to_owned(), value));
    };
    for (name, value) in map {
        match value {
            Value::Object(_) => check_shape(value, &field(name))?,
            Value::Array(items) if LIST_FIELDS.contains(&name.as_str()) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{}[{i}]", field(name));
                    match item {
                        Value::Object(_) => check_shape(item, &at)?,
                        other => return Err(not_object(at, other)),
                    }
                }
            }
            Value::Array(_) => {
                return Err(ConfigError::Invalid {
                    field: field(name),
                    reason: "expected an object or a value, found an array".to_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// How a JSON value is named in an error.
fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Checks that `value` is `len` hex digits.
pub(crate) fn check_hex(field: &str, value: &str, len: usize) -> Result<(), ConfigError> {
    if value.len() != len || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ConfigError::Invalid {
            field: field.to_owned(),
            reason: format!("expected {len} hex digits, got {value:?}"),
        });
    }
    Ok(())
}

/// What the Downloader asks the artifact manager to fetch (or to allocate a path for).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactDescription {
    /// The job the artifact belongs to.
    pub job: JobId,
    /// Its kind.
    pub kind: ArtifactType,
    /// Its file name (`Image_<i>`, `ImageChecksum_<i>` or the action's alias).
    pub alias: String,
    /// Where to download it from; empty for a pull artifact.
    pub uri: String,
    /// Expected SHA-256 (lower- or upper-case hex), if the config gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// For an image: where its checksum file is, so the manager can verify it while streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<ChecksumSource>,
}

impl ArtifactDescription {
    /// A description with no expected digest and no checksum source.
    pub fn new(
        job: JobId,
        kind: ArtifactType,
        alias: impl Into<String>,
        uri: impl Into<String>,
    ) -> Self {
        ArtifactDescription {
            job,
            kind,
            alias: alias.into(),
            uri: uri.into(),
            sha256: None,
            checksum: None,
        }
    }
}

/// A status change of one artifact, sent by the manager on the collector channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactStatusChange {
    /// The artifact's path, as returned by `push_artifact`.
    pub path: ArtifactPath,
    /// Its new status.
    pub status: ArtifactStatus,
    /// Why it failed (for `Failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ArtifactStatusChange {
    /// A change to `status` with no reason.
    pub fn new(path: impl Into<ArtifactPath>, status: ArtifactStatus) -> Self {
        ArtifactStatusChange {
            path: path.into(),
            status,
            reason: None,
        }
    }

    /// A change to `Failed` with its reason.
    pub fn failed(path: impl Into<ArtifactPath>, reason: impl Into<String>) -> Self {
        ArtifactStatusChange {
            path: path.into(),
            status: ArtifactStatus::Failed,
            reason: Some(reason.into()),
        }
    }
}

/// The Downloader's answer for a job: OK (every artifact ready, config saved) or FAIL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// The job.
    pub job: JobId,
    /// `true` for OK.
    pub ok: bool,
    /// Empty for OK; why it failed for FAIL.
    pub msg: String,
}
