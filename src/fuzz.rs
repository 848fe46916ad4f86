//! Property tests for the parsers of outside input: `--port` specs and
//! `=N` pins, the command line (Getopt::Long emulation and validation),
//! signal names, Perl-style numbers and settings from the environment, the
//! status file reader used by `--restart`, and the pid file reader used by
//! `--stop` and `--restart`; and the `SERVER_STARTER_PORT` value, from the
//! specs through our writer to the worker library's reader.
//!
//! Invariant checked: none of them panics on any input, errors name the
//! value, and well-formed input parses to what it says.
//! Each property runs 1024 cases by default (the whole module takes a few
//! seconds); `PROPTEST_CASES=N` runs N instead, for a longer search.

#![cfg(test)]

use std::ffi::{OsStr, OsString};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::cli::{self, Mode};
use crate::envdir::Env;
use crate::listen::{ListenSpec, Target, check_pins, env_value_of};
use crate::settings;
use crate::signals::SignalName;
use crate::status;

/// 1024 cases unless `PROPTEST_CASES` says otherwise; failures are reported,
/// not written into the source tree.
fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 1024;
    }
    config.failure_persistence = None;
    config
}

/// Text made mostly of the characters the parsers give meaning to, so that
/// random input reaches deep into them; sometimes any text at all.
fn port_like() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[0-9u:=\\[\\] .a-fA-F-]{0,24}",
        1 => any::<String>(),
    ]
}

/// One command-line word: an option of the reference's table (maybe
/// abbreviated, in any case, with `-`, `--` or `+`, maybe with `=value`), a
/// value-looking word, `--`, or arbitrary bytes (not always UTF-8).
fn word() -> impl Strategy<Value = OsString> {
    const NAMES: &[&str] = &[
        "port",
        "path",
        "interval",
        "log-file",
        "pid-file",
        "dir",
        "signal-on-hup",
        "signal-on-term",
        "backlog",
        "envdir",
        "enable-auto-restart",
        "daemonize",
        "auto-restart-interval",
        "kill-old-delay",
        "status-file",
        "restart",
        "stop",
        "help",
        "version",
    ];
    let option = (
        prop::sample::select(NAMES),
        0usize..20,
        prop::sample::select(&["--", "-", "+", "---", ""][..]),
        any::<bool>(),
        prop::option::of(value_like()),
    )
        .prop_map(|(name, cut, dash, upper, value)| {
            let mut name = name[..cut.clamp(1, name.len())].to_string();
            if upper {
                name = name.to_ascii_uppercase();
            }
            let mut text = format!("{dash}{name}");
            if let Some(value) = value {
                text.push('=');
                text.push_str(&value);
            }
            OsString::from(text)
        });
    prop_oneof![
        6 => option,
        3 => value_like().prop_map(OsString::from),
        1 => Just(OsString::from("--")),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(OsString::from_vec),
    ]
}

/// Values options are given: numbers (signed, fractional, with `_`),
/// signal names, port specs, paths, and noise.
fn value_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "[-+]?[0-9_]{0,22}(\\.[0-9]{0,3})?\n?",
        "(SIG)?(HUP|TERM|INT|KILL|USR1|usr2|BOGUS|[0-9]{1,3})",
        port_like(),
        "/[a-z/.]{0,12}",
        "\\| ?[a-z ]{0,8}",
        any::<String>(),
    ]
}

/// A `--port` or `--path` start_server accepts, with the key a worker
/// must read back for it: the port spec's key, or the path's bytes (any
/// but NUL, which no argument holds, and `;`, which the format cannot
/// carry; often not UTF-8, often with `=` and digits).
fn listen_spec() -> impl Strategy<Value = (ListenSpec, OsString)> {
    let port = (
        prop_oneof![
            Just(String::new()),
            any::<[u8; 4]>().prop_map(|a| format!("{}:", Ipv4Addr::from(a))),
            "[a-z][a-z0-9-]{0,10}:",
            any::<[u16; 8]>().prop_map(|a| format!("[{}]:", Ipv6Addr::from(a))),
        ],
        any::<u16>(),
        any::<bool>(),
        prop::option::of(0i32..1000),
    )
        .prop_map(|(host, port, udp, pin)| {
            let u = if udp { "u" } else { "" };
            let pin = pin.map(|fd| format!("={fd}")).unwrap_or_default();
            let spec = ListenSpec::parse_port(&format!("{host}{u}{port}{pin}"))
                .expect("a well-formed port spec");
            let key = OsString::from(&spec.key);
            (spec, key)
        });
    let byte = prop_oneof![
        Just(b'/'),
        Just(b'='),
        b'0'..=b'9',
        0x80u8..=0xff,
        any::<u8>().prop_map(|b| if b == 0 || b == b';' { b'_' } else { b }),
    ];
    let path = prop::collection::vec(byte, 1..40).prop_map(|bytes| {
        let path = OsString::from_vec(bytes);
        (ListenSpec::unix(&path), path)
    });
    prop_oneof![port, path]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_worker_library_reads_back_the_port_value_start_server_writes(
        specs in prop::collection::vec((listen_spec(), 0..=RawFd::MAX), 0..6),
    ) {
        let written: Vec<(OsString, RawFd)> =
            specs.iter().map(|((spec, _), fd)| (spec.env_key(), *fd)).collect();
        let value = env_value_of(written.iter().map(|(key, fd)| (key.as_os_str(), *fd)));
        let expected: Vec<(OsString, RawFd)> =
            specs.iter().map(|((_, key), fd)| (key.clone(), *fd)).collect();
        let read = server_starter::server_ports_from_os(&value);
        prop_assert!(read.is_ok(), "{:?} -> {:?}", value, read);
        prop_assert_eq!(read.unwrap(), expected.clone(), "{:?}", value);
        // The String API agrees whenever the value is UTF-8.
        if let Some(text) = value.to_str() {
            let strings = server_starter::server_ports_from(text);
            prop_assert!(strings.is_ok(), "{:?}", text);
            let strings: Vec<(OsString, RawFd)> = strings
                .unwrap()
                .into_iter()
                .map(|(key, fd)| (key.into(), fd))
                .collect();
            prop_assert_eq!(strings, expected);
        }
        prop_assert!(value.is_empty() == specs.is_empty());
        prop_assert!(!OsStr::new(&value).as_bytes().contains(&0));
    }

    #[test]
    fn port_specs_never_panic_and_errors_name_the_value(spec in port_like()) {
        match ListenSpec::parse_port(&spec) {
            Ok(parsed) => {
                prop_assert!(!parsed.key.is_empty());
                // What a worker sees as the key parses again to the same
                // socket (without the pin and the UDP marker).
                let again = ListenSpec::parse_port(&parsed.key);
                prop_assert!(again.is_ok(), "{:?} -> key {:?}", spec, parsed.key);
                let again = again.unwrap();
                prop_assert_eq!(&again.key, &parsed.key);
                prop_assert_eq!(&again.target, &parsed.target);
            }
            Err(e) => {
                let message = format!("{e:#}");
                prop_assert!(message.starts_with("invalid port value "), "{}", message);
                prop_assert!(message.contains(&format!("{spec:?}")), "{}", message);
                prop_assert!(!message.contains('\n'), "{}", message);
            }
        }
    }

    #[test]
    fn well_formed_port_specs_parse_to_what_they_say(
        host in prop_oneof![
            Just(None),
            any::<[u8; 4]>().prop_map(|a| Some((Ipv4Addr::from(a).to_string(), false))),
            "[a-z][a-z0-9-]{0,10}(\\.[a-z]{1,5})?".prop_map(|h| Some((h, false))),
            any::<[u16; 8]>().prop_map(|a| Some((Ipv6Addr::from(a).to_string(), true))),
        ],
        port in any::<u16>(),
        udp in any::<bool>(),
        pin in prop::option::of(0i32..100_000),
        pad in "[ \t]{0,2}",
    ) {
        let u = if udp { "u" } else { "" };
        let mut spec = match &host {
            None => format!("{pad}{u}{port}{pad}"),
            Some((h, true)) => format!("{pad}[{pad}{h}{pad}]{pad}:{pad}{u}{port}"),
            Some((h, false)) => format!("{pad}{h}{pad}:{pad}{u}{port}"),
        };
        if let Some(fd) = pin {
            spec.push_str(&format!("{pad}={pad}{fd}{pad}"));
        }
        let parsed = ListenSpec::parse_port(&spec);
        prop_assert!(parsed.is_ok(), "{:?}: {:?}", spec, parsed);
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.udp, udp);
        prop_assert_eq!(parsed.pin, pin);
        match host {
            None => {
                prop_assert_eq!(parsed.key, port.to_string());
                prop_assert_eq!(parsed.target, Target::Inet { host: None, port });
            }
            Some((h, true)) => {
                prop_assert_eq!(parsed.key, format!("[{h}]:{port}"));
                let addr: Ipv6Addr = h.parse().unwrap();
                prop_assert_eq!(parsed.target, Target::Inet6 { addr, port });
            }
            Some((h, false)) => {
                prop_assert_eq!(parsed.key, format!("{h}:{port}"));
                prop_assert_eq!(parsed.target, Target::Inet { host: Some(h), port });
            }
        }
    }

    #[test]
    fn pins_are_refused_exactly_for_stdout_stderr_and_repeats(
        pins in prop::collection::vec(prop::option::of(0i32..8), 0..6),
    ) {
        let specs: Vec<ListenSpec> = pins
            .iter()
            .enumerate()
            .map(|(i, pin)| ListenSpec {
                key: format!("{}", 8000 + i),
                given: format!("{}", 8000 + i),
                target: Target::Inet { host: None, port: 8000 + i as u16 },
                udp: false,
                pin: *pin,
            })
            .collect();
        let given: Vec<i32> = pins.iter().flatten().copied().collect();
        let repeated = given.iter().enumerate().any(|(i, fd)| given[..i].contains(fd));
        let bad = repeated || given.iter().any(|&fd| fd == 1 || fd == 2);
        prop_assert_eq!(check_pins(&specs).is_err(), bad, "{:?}", pins);
    }

    #[test]
    fn command_lines_never_panic_and_errors_are_lines(
        args in prop::collection::vec(word(), 0..8),
        posix in any::<bool>(),
    ) {
        // One line per bad option, as Getopt::Long warns; the words are
        // printed as given, like the reference does.
        if let Err(e) = cli::parse_options(args.clone(), posix) {
            prop_assert!(!e.to_string().is_empty());
        }
        match cli::parse(args, posix) {
            Ok(Mode::Start(config)) => {
                prop_assert!(!config.program.is_empty());
                prop_assert!(config.backlog > 0);
                prop_assert!(check_pins(&config.listen).is_ok());
            }
            Ok(_) => {}
            Err(e) => {
                let message = format!("{e:#}");
                prop_assert!(!message.is_empty());
            }
        }
    }

    #[test]
    fn words_after_the_double_dash_are_the_workers_untouched(
        before in prop::collection::vec(word(), 0..5),
        after in prop::collection::vec(word(), 0..5),
        posix in any::<bool>(),
    ) {
        // An option that lacks its value takes the `--` as its value, as in
        // Getopt::Long: only command lines complete before `--` count.
        if cli::parse_options(before.clone(), posix).is_err() {
            return Ok(());
        }
        let mut args = before;
        args.push("--".into());
        args.extend(after.iter().cloned());
        if let Ok(parsed) = cli::parse_options(args, posix) {
            prop_assert!(parsed.args.ends_with(&after), "{:?}", parsed.args);
        }
    }

    #[test]
    fn signal_names_never_panic_and_round_trip(text in value_like()) {
        if let Ok(signal) = SignalName::parse(&text) {
            let again = SignalName::parse(&signal.to_string());
            prop_assert!(again.is_ok());
            prop_assert_eq!(again.unwrap().signal, signal.signal);
        }
    }

    #[test]
    fn settings_from_any_environment_never_panic(
        enable in prop::option::of(value_like()),
        interval in prop::option::of(value_like()),
        delay in prop::option::of(value_like()),
    ) {
        let mut env = Env::default();
        for (name, value) in [
            ("ENABLE_AUTO_RESTART", enable),
            ("AUTO_RESTART_INTERVAL", interval),
            ("KILL_OLD_DELAY", delay),
        ] {
            if let Some(value) = value {
                env.set(name, value);
            }
        }
        let read = settings::read(&env);
        let _ = read.kill_old_delay.duration();
        if let Some(period) = &read.auto_restart {
            prop_assert!(!period.text.is_empty() && period.text != "0");
            let _ = period.duration();
        }
    }

    #[test]
    fn perl_numbers_read_the_leading_number(
        number in -1e12f64..1e12,
        tail in "[a-z ]{0,4}",
        lead in "[ \t]{0,2}",
    ) {
        let text = format!("{lead}{number}{tail}");
        let tail_is_exponent = tail.starts_with('e');
        if !tail_is_exponent {
            prop_assert_eq!(settings::perl_number(&text), number, "{:?}", text);
        }
    }

    #[test]
    fn perl_numbers_never_panic(text in any::<String>()) {
        let _ = settings::perl_number(&text);
    }

    #[test]
    fn status_files_of_any_content_never_panic(text in any::<String>()) {
        let gens = status::generations(&text);
        prop_assert!(gens.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn status_files_read_back_what_was_written(
        entries in prop::collection::vec((any::<u64>(), 1i32..i32::MAX), 0..6),
    ) {
        let text = status::format(&entries);
        prop_assert!(text.is_empty() || text.ends_with('\n'));
        let mut expected: Vec<u64> = entries.iter().map(|(g, _)| *g).collect();
        expected.sort_unstable();
        expected.dedup();
        prop_assert_eq!(status::generations(&text), expected);
    }

    #[test]
    fn pid_files_of_any_content_never_panic(
        content in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..24),
            "[ \t]?[-+]?[0-9]{0,12}[ \t]?\n?[0-9a-z]{0,3}".prop_map(String::into_bytes),
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pid");
        std::fs::write(&path, &content).unwrap();
        match crate::pidfile::read_pid(&path) {
            Ok(pid) => {
                prop_assert!(pid > 1);
                let text = String::from_utf8(content).unwrap();
                let first = text.lines().next().unwrap().trim();
                prop_assert_eq!(first.parse::<i32>(), Ok(pid));
            }
            Err(e) => {
                let message = format!("{e:#}");
                prop_assert!(!message.contains('\n'), "{}", message);
            }
        }
    }
}
