//! Property tests for the worker library's parser of `SERVER_STARTER_PORT`
//! ([`server_starter::server_ports_from`]): it never panics, what
//! start_server writes reads back exactly, and a malformed value is
//! reported as one of its own entries, on one line.
//!
//! 1024 cases per property by default; `PROPTEST_CASES=N` runs N.

use proptest::prelude::*;
use proptest::test_runner::Config;
use server_starter::{Error, server_ports_from};

fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 1024;
    }
    config.failure_persistence = None;
    config
}

/// Keys as start_server writes them: port specs and unix socket paths
/// (which may contain `=`, never `;`, never empty).
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,5}",
        "(127\\.0\\.0\\.1|localhost|[a-z]{1,8}):[0-9]{1,5}",
        "\\[[0-9a-f:]{2,16}\\]:[0-9]{1,5}",
        "/[a-z0-9=._/ -]{1,20}",
        "[^;\u{0}]{1,12}",
    ]
}

/// Values a parser may meet: mostly `KEY=FD;...` shapes, with noise.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "([0-9a-z:/\\[\\]=. +-]{0,10}=?[0-9+-]{0,11};?){0,4}",
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn what_start_server_writes_reads_back(
        entries in prop::collection::vec((key(), 0i32..=i32::MAX), 0..6),
    ) {
        let value = entries
            .iter()
            .map(|(k, fd)| format!("{k}={fd}"))
            .collect::<Vec<_>>()
            .join(";");
        let parsed = server_ports_from(&value);
        prop_assert!(parsed.is_ok(), "{:?}: {:?}", value, parsed);
        prop_assert_eq!(parsed.unwrap(), entries);
    }

    #[test]
    fn any_value_parses_or_names_one_of_its_entries(value in value()) {
        match server_ports_from(&value) {
            Ok(ports) => {
                for (key, fd) in ports {
                    prop_assert!(!key.is_empty() && !key.contains(';'));
                    prop_assert!(fd >= 0);
                    let written = format!("{key}=");
                    prop_assert!(value.contains(&written));
                }
            }
            Err(Error::Malformed { entry }) => {
                prop_assert!(value.split(';').any(|e| e == entry), "{:?} in {:?}", entry, value);
                let message = Error::Malformed { entry }.to_string();
                prop_assert!(!message.contains('\n'), "{}", message);
            }
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }

    #[test]
    fn empty_entries_are_ignored(
        entries in prop::collection::vec((key(), 0i32..1000), 1..4),
        extra in prop::collection::vec(0usize..3, 1..5),
    ) {
        // `;` doubled, leading or trailing: the same ports.
        let mut value = String::new();
        for (i, (k, fd)) in entries.iter().enumerate() {
            value.push_str(&";".repeat(extra[i % extra.len()]));
            value.push_str(&format!("{k}={fd};"));
        }
        prop_assert_eq!(server_ports_from(&value).ok(), Some(entries));
    }
}
