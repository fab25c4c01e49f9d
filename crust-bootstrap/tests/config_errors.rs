//! The user-edited config: defaults when missing, typed errors naming file, line and column.

use std::time::Duration;

use crust_bootstrap::{BootstrapConfig, Contact, Error};

fn load_text(text: &str) -> (tempfile::TempDir, Result<BootstrapConfig, Error>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, text).expect("write");
    let result = BootstrapConfig::load(&path);
    (dir, result)
}

#[test]
fn missing_file_gives_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = BootstrapConfig::load(dir.path().join("absent.json")).expect("defaults");
    assert_eq!(config, BootstrapConfig::default());
    assert!(config.use_cache);
    assert_eq!(config.max_cache_entries, 200);
    assert!(config.contacts.is_empty());
    assert_eq!(config.backoff.initial_delay, Duration::from_millis(500));
    assert_eq!(config.backoff.max_delay, Duration::from_secs(60));
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let (dir, result) = load_text("{\n  \"use_cache\": true,\n  \"contacts\": [\n}\n");
    match result {
        Err(Error::ConfigSyntax {
            path, line, column, ..
        }) => {
            assert_eq!(path, dir.path().join("bootstrap.json"));
            assert_eq!(line, 4);
            assert!(column >= 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    let (_dir, result) = load_text("{\n  \"use_cache\": true,\n  \"contacts\": [\n}\n");
    let message = result.expect_err("syntax error").to_string();
    assert!(message.contains("bootstrap.json"), "{message}");
    assert!(message.contains("line 4"), "{message}");
}

#[test]
fn wrong_type_is_a_syntax_error_with_position() {
    let (_dir, result) = load_text("{\"max_cache_entries\": \"many\"}");
    assert!(
        matches!(result, Err(Error::ConfigSyntax { line: 1, .. })),
        "{result:?}"
    );
}

#[test]
fn unknown_field_is_reported() {
    let (_dir, result) = load_text("{\"use_cahce\": false}");
    let message = result.expect_err("typo").to_string();
    assert!(message.contains("use_cahce"), "{message}");
}

#[test]
fn bad_endpoint_and_bad_peer_id_are_reported() {
    let (_dir, result) = load_text(r#"{"contacts": [{"endpoints": ["sctp://1.2.3.4:5"]}]}"#);
    let message = result.expect_err("bad endpoint").to_string();
    assert!(message.contains("sctp"), "{message}");

    let (_dir, result) =
        load_text(r#"{"contacts": [{"endpoints": ["tcp://1.2.3.4:5"], "peer_id": "abc"}]}"#);
    let message = result.expect_err("bad peer id").to_string();
    assert!(message.contains("peer id"), "{message}");
}

#[test]
fn out_of_range_values_name_file_and_field() {
    let (dir, result) = load_text(r#"{"backoff": {"initial_delay_ms": 5000, "max_delay_ms": 10}}"#);
    match result {
        Err(Error::ConfigValue { path, reason }) => {
            assert_eq!(path, Some(dir.path().join("bootstrap.json")));
            assert!(reason.contains("initial_delay_ms"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let (_dir, result) = load_text(r#"{"backoff": {"jitter": 2.0}}"#);
    assert!(
        matches!(result, Err(Error::ConfigValue { .. })),
        "{result:?}"
    );
    let (_dir, result) = load_text(r#"{"contacts": [{"endpoints": []}]}"#);
    assert!(
        matches!(result, Err(Error::ConfigValue { .. })),
        "{result:?}"
    );
}

#[test]
fn empty_and_garbage_files_are_errors_not_panics() {
    for text in [
        "",
        "   ",
        "\u{0}\u{1}garbage",
        "[]",
        "null",
        "{\"contacts\": 3}",
    ] {
        let (_dir, result) = load_text(text);
        assert!(
            matches!(result, Err(Error::ConfigSyntax { .. })),
            "{text:?}: {result:?}"
        );
    }
}

#[test]
fn unreadable_file_is_a_read_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let result = BootstrapConfig::load(dir.path());
    assert!(matches!(result, Err(Error::Read { .. })), "{result:?}");
}

#[test]
fn save_writes_a_loadable_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("conf/bootstrap.json");
    let config = BootstrapConfig::default()
        .with_contact(Contact::new(
            None,
            vec!["rudp://[2001:db8::1]:5483".parse().expect("endpoint")],
        ))
        .with_rudp_port(Some(5483))
        .with_use_cache(false)
        .with_max_cache_entries(7);
    config.save(&path).expect("save");
    assert_eq!(BootstrapConfig::load(&path).expect("load"), config);
}
