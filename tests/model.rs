//! The domain model against design.md ("Domain model"): its example config parses into
//! the expected values and round-trips through JSON; `path` / `checksum_path` are absent
//! until filled; unknown fields and bad values are rejected with errors that name them;
//! enum spellings are the contract's.

use artifact_coordinator::{
    ArtifactDescription, ArtifactStatus, ArtifactStatusChange, ArtifactType, ChecksumSource,
    ChecksumType, Config, ConfigError, JobId, JobStatus, Notification, Priority, Pull, Push, Run,
    TestAction,
};

/// design.md's example, with a full 64-digit digest where the document abbreviates it.
fn design_example() -> String {
    let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    r#"{
  "job_name": "flash-and-smoke",
  "device_type": "rpi4",
  "priority": "medium",
  "action": {
    "deploy": {
      "images": [
        { "uri": "http://files.example/boot.img", "checksum_uri": "http://files.example/boot.img.md5", "checksum_type": "md5" },
        { "uri": "http://files.example/rootfs.img", "sha256": "SHA" }
      ]
    },
    "test": {
      "test_cases": [
        { "case_name": "smoke",
          "test_actions": [
            { "push": { "uri": "http://files.example/run.sh", "dest": "/tmp/run.sh", "alias": "run.sh" } },
            { "run":  { "name": "sh /tmp/run.sh" } },
            { "pull": { "src": "/tmp/result.log", "alias": "result.log" } }
          ] }
      ]
    }
  }
}"#
    .replace("SHA", sha)
}

/// Every key of a JSON document, at any depth.
fn keys(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                out.push(key.clone());
                keys(value, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

fn keys_of(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    keys(&serde_json::from_str(json).expect("json"), &mut out);
    out
}

/// The example parses into the values it spells, and serializes back to the same config
/// without inventing `path` / `checksum_path`; once the Downloader's paths are filled in,
/// they are written and read back too.
#[test]
fn design_example_round_trips() {
    let config = Config::from_json(&design_example()).expect("the example parses");
    assert_eq!(config.job_name, "flash-and-smoke");
    assert_eq!(config.device_type, "rpi4");
    assert_eq!(config.priority, Some(Priority::Medium));
    let images = &config.action.deploy.images;
    assert_eq!(images.len(), 2);
    assert_eq!(images[0].checksum_type, Some(ChecksumType::Md5));
    let source = images[0].checksum_source().expect("checksum source");
    assert_eq!(source.uri, "http://files.example/boot.img.md5");
    assert_eq!(images[1].sha256.as_deref().map(str::len), Some(64));
    assert_eq!(
        (images[0].path.as_ref(), images[0].checksum_path.as_ref()),
        (None, None)
    );
    let case = &config.action.test.test_cases[0];
    assert_eq!(case.case_name, "smoke");
    assert_eq!(
        case.test_actions,
        vec![
            TestAction::Push(Push {
                uri: "http://files.example/run.sh".into(),
                dest: "/tmp/run.sh".into(),
                alias: "run.sh".into(),
                sha256: None,
                path: None,
            }),
            TestAction::Run(Run {
                name: "sh /tmp/run.sh".into(),
            }),
            TestAction::Pull(Pull {
                src: "/tmp/result.log".into(),
                alias: "result.log".into(),
                path: None,
            }),
        ]
    );

    let json = config.to_json();
    let written = keys_of(&json);
    assert!(
        !written.iter().any(|k| k == "path" || k == "checksum_path"),
        "paths are absent until filled: {json}"
    );
    assert_eq!(Config::from_json(&json).expect("reparse"), config);
    assert_eq!(
        keys_of(&json).len(),
        keys_of(&design_example()).len(),
        "the same keys as the input"
    );

    let mut filled = config.clone();
    filled.action.deploy.images[0].path = Some("/store/jobs/1/image/Image_0".into());
    filled.action.deploy.images[0].checksum_path =
        Some("/store/jobs/1/image/ImageChecksum_0".into());
    if let TestAction::Pull(pull) = &mut filled.action.test.test_cases[0].test_actions[2] {
        pull.path = Some("/store/jobs/1/result/result.log".into());
    }
    let json = filled.to_json();
    let written = keys_of(&json);
    assert_eq!(written.iter().filter(|k| *k == "path").count(), 2);
    assert_eq!(written.iter().filter(|k| *k == "checksum_path").count(), 1);
    assert_eq!(Config::from_json(&json).expect("reparse filled"), filled);
}

/// An unknown field anywhere is an error naming the field, with its position given once.
#[test]
fn unknown_fields_are_rejected_naming_the_field() {
    let example = design_example();
    for (from, to) in [
        (r#""job_name""#, r#""bogus": 1, "job_name""#),
        (
            r#""checksum_type": "md5""#,
            r#""checksum_type": "md5", "bogus": 1"#,
        ),
        (r#""alias": "run.sh""#, r#""alias": "run.sh", "bogus": 1"#),
        (r#""test_cases""#, r#""bogus": [], "test_cases""#),
    ] {
        let json = example.replacen(from, to, 1);
        let err = Config::from_json(&json).expect_err("unknown field");
        let text = err.to_string();
        assert!(text.contains("unknown field `bogus`"), "{text}");
        assert!(
            matches!(err, ConfigError::Parse { line, .. } if line > 1),
            "{text}"
        );
        assert_eq!(
            text.matches("line").count(),
            1,
            "position given once: {text}"
        );
    }
    let err = Config::from_json(r#"{"action": {"deploy": {"images": [{"url": "x"}]}}}"#)
        .expect_err("unknown field");
    let text = err.to_string();
    assert!(
        text.starts_with("invalid job config at line 1, column "),
        "{text}"
    );
    assert!(text.contains("unknown field `url`"), "{text}");
}

/// Syntax errors and wrong types give the line and column.
#[test]
fn syntax_errors_give_the_position() {
    let err = Config::from_json("{\n  \"job_name\": \"x\",\n  oops\n}").expect_err("syntax");
    match &err {
        ConfigError::Parse { line, column, .. } => assert_eq!((*line, *column), (3, 3)),
        other => panic!("expected Parse, got {other:?}"),
    }
    let err = Config::from_json(r#"{"priority": "urgent"}"#).expect_err("bad enum");
    assert!(
        err.to_string().contains("unknown variant `urgent`"),
        "{err}"
    );
}

/// Values serde accepts but the contract does not are errors naming the field.
#[test]
fn bad_values_name_the_field() {
    let example = design_example();
    let cases = [
        (
            example.replacen(r#""sha256": "9f86"#, r#""sha256": "zz86"#, 1),
            "action.deploy.images[1].sha256",
        ),
        (
            example.replacen(r#", "checksum_type": "md5""#, "", 1),
            "action.deploy.images[0].checksum_type",
        ),
        (
            example.replacen(
                r#""checksum_uri": "http://files.example/boot.img.md5", "#,
                "",
                1,
            ),
            "action.deploy.images[0].checksum_uri",
        ),
        (
            example.replacen(
                r#""alias": "run.sh""#,
                r#""alias": "run.sh", "sha256": "abc""#,
                1,
            ),
            "action.test.test_cases[0].test_actions[0].push.sha256",
        ),
    ];
    for (json, field) in cases {
        let err = Config::from_json(&json).expect_err(field);
        match &err {
            ConfigError::Invalid { field: named, .. } => assert_eq!(named, field),
            other => panic!("expected Invalid for {field}, got {other:?}"),
        }
        assert!(err.to_string().contains(field), "{err}");
    }
}

/// Enum spellings and the other serialized types are the contract's.
#[test]
fn enums_and_values_serialize_as_the_contract_spells_them() {
    let json = |v: &dyn Erased| v.json();
    assert_eq!(json(&ArtifactType::Image), r#""IMAGE""#);
    assert_eq!(json(&ArtifactType::Result), r#""RESULT""#);
    assert_eq!(json(&ArtifactStatus::Downloading), r#""DOWNLOADING""#);
    assert_eq!(json(&JobStatus::Canceled), r#""CANCELED""#);
    assert_eq!(json(&ChecksumType::Sha256), r#""sha256""#);
    assert_eq!(json(&Priority::High), r#""high""#);
    assert_eq!(json(&JobId(7)), "7");
    let notification = Notification {
        job: JobId(3),
        ok: false,
        msg: "why".into(),
    };
    assert_eq!(json(&notification), r#"{"job":3,"ok":false,"msg":"why"}"#);
    let change = ArtifactStatusChange::failed("/store/a", "boom");
    let text = json(&change);
    assert_eq!(
        text,
        r#"{"path":"/store/a","status":"FAILED","reason":"boom"}"#
    );
    let back: ArtifactStatusChange = serde_json::from_str(&text).expect("parse change");
    assert_eq!(back, change);
    let ready = ArtifactStatusChange::new("/store/b", ArtifactStatus::Ready);
    assert_eq!(json(&ready), r#"{"path":"/store/b","status":"READY"}"#);
    let mut description = ArtifactDescription::new(
        JobId(1),
        ArtifactType::Image,
        "Image_0",
        "http://x/boot.img",
    );
    assert_eq!(
        json(&description),
        r#"{"job":1,"kind":"IMAGE","alias":"Image_0","uri":"http://x/boot.img"}"#
    );
    description.checksum = Some(ChecksumSource {
        uri: "http://x/boot.img.md5".into(),
        kind: ChecksumType::Md5,
    });
    let back: ArtifactDescription =
        serde_json::from_str(&json(&description)).expect("parse description");
    assert_eq!(back, description);
}

/// Serializes any of the model's values (a tiny object-safe wrapper over `Serialize`).
trait Erased {
    fn json(&self) -> String;
}

impl<T: serde::Serialize> Erased for T {
    fn json(&self) -> String {
        serde_json::to_string(self).expect("serialize")
    }
}

/// serde would read a struct from an array of its field values; a config must be objects
/// all the way down, with arrays only as its lists (of objects).
#[test]
fn arrays_in_place_of_objects_are_rejected() {
    for (json, field) in [
        (r#"["myjob", "rpi4", "high"]"#, "(the config)"),
        ("[]", "(the config)"),
        (r#"{"action": [{"images": []}]}"#, "action"),
        (
            r#"{"action": {"deploy": {"images": [["http://x/boot.img"]]}}}"#,
            "action.deploy.images[0]",
        ),
        (
            r#"{"action": {"test": {"test_cases": [{"test_actions": [{"run": ["ls"]}]}]}}}"#,
            "action.test.test_cases[0].test_actions[0].run",
        ),
    ] {
        let err = Config::from_json(json).expect_err(json);
        match &err {
            ConfigError::Invalid { field: named, .. } => assert_eq!(named, field, "{json}"),
            other => panic!("expected Invalid for {json}, got {other:?}"),
        }
    }
    let json = r#"{"action": {"deploy": {"images": [{"uri": "http://x/a"}]}}}"#;
    Config::from_json(json).expect("lists of objects are fine");
}
