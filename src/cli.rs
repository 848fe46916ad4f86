//! Command-line parsing, compatible with the reference's Perl Getopt::Long
//! call, into a validated [`Mode`].
//!
//! Getopt::Long's defaults are what existing init scripts rely on, so they
//! are reproduced here rather than approximated with a general-purpose
//! parser: `--x=v` and `--x v`, a single dash or `+` for long options, case
//! insensitive names, unique abbreviations, permutation of non-options, and
//! POSIX mode when `POSIXLY_CORRECT` is set. Everything is checked before
//! anything happens: a bad port, signal name or number is an error here, not
//! a surprise at the first restart.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::listen::ListenSpec;
use crate::options::{ALL, Kind, Origin};
use crate::settings::Seconds;
use crate::signals::SignalName;

/// What start_server was asked to do.
#[derive(Debug)]
pub enum Mode {
    Help,
    Version,
    Restart(Client),
    Stop(Client),
    Upgrade(Client),
    Start(Box<Config>),
}

/// Options of the client modes `--restart`, `--stop` and `--upgrade`.
#[derive(Debug)]
pub struct Client {
    pub pid_file: Option<PathBuf>,
    pub status_file: Option<PathBuf>,
}

/// Options of the supervisor, validated.
#[derive(Debug)]
pub struct Config {
    pub listen: Vec<ListenSpec>,
    pub dir: Option<PathBuf>,
    pub interval: Duration,
    pub signal_on_hup: SignalName,
    pub signal_on_term: SignalName,
    pub pid_file: Option<PathBuf>,
    pub status_file: Option<PathBuf>,
    pub log_file: Option<OsString>,
    pub daemonize: bool,
    pub backlog: i32,
    /// `--signal-timeout`: SIGKILL a signalled worker still alive this long
    /// after its signal; `None` (0) = never, as the reference.
    pub signal_timeout: Option<Seconds>,
    /// `--max-retry-interval`: the cap of the backoff between failed
    /// starts; `None` (0) = one attempt per interval, as the reference.
    pub max_retry_interval: Option<Seconds>,
    /// `--notify-ready`: a generation is started when it sends `READY=1`
    /// to the notify socket named in its `NOTIFY_SOCKET`.
    pub notify_ready: bool,
    /// `--notify-timeout`: how long `--notify-ready` waits for `READY=1`
    /// before SIGKILL; `None` (0) = for ever. 90 by default.
    pub notify_timeout: Option<Seconds>,
    /// `--systemd-notify`: whether start_server speaks sd_notify to the
    /// service manager that started it.
    pub systemd_notify: SystemdNotify,
    /// `--systemd-listen-fds`: workers also get their sockets the socket
    /// activation way (fds 3.., `LISTEN_FDS`, `LISTEN_PID`).
    pub systemd_listen_fds: bool,
    /// `--subreaper`: orphans of workers become our children.
    pub subreaper: bool,
    /// Environment variables the options export (`ENVDIR`, ...), in order.
    pub exports: Vec<(&'static str, OsString)>,
    pub program: Vec<OsString>,
}

/// `--systemd-notify=auto|off|pass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemdNotify {
    /// Speak sd_notify when `NOTIFY_SOCKET` was set for us; strip it (and
    /// the watchdog variables) from the workers' environment.
    Auto,
    /// Send nothing; still strip.
    Off,
    /// Send nothing and hand the variables on to the workers, as the
    /// reference does.
    Pass,
}

/// The raw result of option parsing: every option as given, last one wins
/// (except `port` and `path`, which accumulate), and the non-option words.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    /// `(name, value)` for every option seen, in order; flags have no value.
    pub options: Vec<(&'static str, Option<OsString>)>,
    /// The worker's command line.
    pub args: Vec<OsString>,
}

impl Parsed {
    /// The last value given to option `name`, if any.
    fn last(&self, name: &str) -> Option<&OsStr> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a OsStr> + 'a {
        self.options
            .iter()
            .filter(move |(n, _)| *n == name)
            .filter_map(|(_, v)| v.as_deref())
    }

    /// The last value of `name` as text, for options that are not paths.
    fn text(&self, name: &str) -> Result<Option<&str>> {
        self.last(name).map(|v| utf8(name, v)).transpose()
    }

    fn flag(&self, name: &str) -> bool {
        self.options.iter().any(|(n, _)| *n == name)
    }
}

/// Parses arguments the way Getopt::Long does with its default
/// configuration, or its POSIX one when `posix` is true (see
/// `tests/data/GETOPT_NOTES.md`; `tests/data/getopt_matrix.tsv` holds the
/// reference's results for hundreds of command lines, checked below). Every
/// error is collected, as Getopt::Long warns about each before failing.
pub fn parse_options(args: Vec<OsString>, posix: bool) -> Result<Parsed> {
    let mut parsed = Parsed::default();
    let mut errors: Vec<String> = Vec::new();
    let mut rest = args.into_iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            break;
        }
        let Some((name, inline)) = split_option(&arg, posix) else {
            parsed.args.push(arg);
            if posix {
                // require_order: the first non-option ends option parsing,
                // and a later `--` is the worker's.
                parsed.args.extend(rest.by_ref());
            }
            continue;
        };
        let (canonical, kind) = match find_option(&name, posix) {
            Ok(found) => found,
            Err(message) => {
                errors.push(message);
                continue;
            }
        };
        if kind == Kind::Flag {
            if inline.is_some() {
                errors.push(format!("Option {canonical} does not take an argument"));
            } else {
                parsed.options.push((canonical, None));
            }
            continue;
        }
        let value = match inline {
            Some(v) if v.is_empty() => None,
            Some(v) => Some(v),
            None => rest.next(),
        };
        let Some(value) = value else {
            errors.push(format!("Option {canonical} requires an argument"));
            continue;
        };
        if kind == Kind::Int {
            match value.to_str().and_then(normalize_number) {
                Some(number) => parsed.options.push((canonical, Some(number.into()))),
                None => errors.push(format!(
                    "Value \"{}\" invalid for option {canonical} (number expected)",
                    value.to_string_lossy()
                )),
            }
        } else {
            parsed.options.push((canonical, Some(value)));
        }
    }
    parsed.args.extend(rest);
    if errors.is_empty() {
        Ok(parsed)
    } else {
        bail!(errors.join("\n"))
    }
}

/// Recognises an option word: `--name`, `-name`, or `+name` outside POSIX
/// mode; `=value` is split off after `--` always, after `-` and `+` only
/// outside POSIX mode. Returns the name as typed and the inline value.
fn split_option(arg: &OsStr, posix: bool) -> Option<(String, Option<OsString>)> {
    let bytes = arg.as_bytes();
    let (body, split) = if let Some(b) = bytes.strip_prefix(b"--") {
        (b, true)
    } else if let Some(b) = bytes.strip_prefix(b"-").filter(|b| !b.is_empty()) {
        (b, !posix)
    } else {
        (bytes.strip_prefix(b"+").filter(|_| !posix)?, true)
    };
    let name = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match body.iter().position(|&b| b == b'=') {
        Some(i) if split && i > 0 => Some((
            name(&body[..i]),
            Some(OsStr::from_bytes(&body[i + 1..]).to_os_string()),
        )),
        _ => Some((name(body), None)),
    }
}

/// Looks an option up, case-insensitively (Getopt::Long's `ignore_case`),
/// by exact name or, outside POSIX mode, by unique prefix of one of the
/// reference's options; an extension by its exact name only
/// ([`Origin::Extension`]).
fn find_option(typed: &str, posix: bool) -> Result<(&'static str, Kind), String> {
    if typed.is_empty() {
        return Err("Missing option after +".to_string());
    }
    let lower = typed.to_ascii_lowercase();
    if let Some(o) = ALL.iter().find(|o| o.name == lower) {
        return Ok((o.name, o.kind));
    }
    if posix {
        return Err(format!("Unknown option: {typed}"));
    }
    let mut hits: Vec<(&str, Kind)> = ALL
        .iter()
        .filter(|o| o.origin == Origin::Reference && o.name.starts_with(&lower))
        .map(|o| (o.name, o.kind))
        .collect();
    hits.sort_unstable_by_key(|(n, _)| *n);
    match hits.as_slice() {
        [] => Err(format!("Unknown option: {lower}")),
        [(name, kind)] => Ok((name, *kind)),
        many => {
            let names: Vec<&str> = many.iter().map(|(n, _)| *n).collect();
            Err(format!(
                "Option {lower} is ambiguous ({})",
                names.join(", ")
            ))
        }
    }
}

/// Checks a number against Getopt::Long's integer syntax
/// (`[-+]?_*[0-9][0-9_]*`, one trailing newline tolerated) and returns it
/// as Perl stores it (underscores and leading zeros gone, `+3` is `3`).
/// Fractions (`0.5`) are accepted too, an extension of ours.
fn normalize_number(value: &str) -> Option<String> {
    let text = value.strip_suffix('\n').unwrap_or(value);
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let is_int = digits
        .trim_start_matches('_')
        .starts_with(|c: char| c.is_ascii_digit())
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    if is_int {
        let clean: String = digits.chars().filter(|&c| c != '_').collect();
        let magnitude = clean.trim_start_matches('0');
        let magnitude = if magnitude.is_empty() { "0" } else { magnitude };
        let sign = if negative && magnitude != "0" {
            "-"
        } else {
            ""
        };
        let fits = magnitude.len() < 19
            || format!("{sign}{magnitude}").parse::<i64>().is_ok()
            || (!negative && magnitude.parse::<u64>().is_ok());
        if fits {
            return Some(format!("{sign}{magnitude}"));
        }
        // Beyond 64 bits Perl keeps a double and prints it like %.15g.
        let (mantissa, exponent) = format!("{:.14e}", magnitude.parse::<f64>().ok()?)
            .split_once('e')
            .map(|(m, e)| {
                (
                    m.trim_end_matches('0').trim_end_matches('.').to_string(),
                    e.to_string(),
                )
            })?;
        return Some(format!("{sign}{mantissa}e+{exponent:0>2}"));
    }
    let (int, frac) = digits.split_once('.')?;
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let number: f64 = text.parse().ok()?;
    Some(number.to_string())
}

/// Parses a number of seconds: whole or fractional, not negative.
fn parse_seconds(option: &str, value: &str) -> Result<Duration> {
    let secs: f64 = value
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid --{option} value {value:?}: not a number"))?;
    if !(secs >= 0.0 && secs.is_finite() && secs < 1e9) {
        bail!("invalid --{option} value {value:?}: must be a number of seconds, 0 or more");
    }
    Ok(Duration::from_secs_f64(secs))
}

fn utf8<'a>(option: &str, value: &'a OsStr) -> Result<&'a str> {
    value
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("invalid --{option} value {value:?}: not valid UTF-8"))
}

/// Turns parsed options into what to do. `posix` reflects `POSIXLY_CORRECT`.
pub fn parse(args: Vec<OsString>, posix: bool) -> Result<Mode> {
    let parsed = parse_options(args, posix)?;
    if parsed.flag("help") {
        return Ok(Mode::Help);
    }
    if parsed.flag("version") {
        return Ok(Mode::Version);
    }
    let path_option = |name: &str| parsed.last(name).map(PathBuf::from);
    let client = || Client {
        pid_file: path_option("pid-file"),
        status_file: path_option("status-file"),
    };
    if parsed.flag("restart") {
        return Ok(Mode::Restart(client()));
    }
    if parsed.flag("stop") {
        return Ok(Mode::Stop(client()));
    }
    if parsed.flag("upgrade") {
        return Ok(Mode::Upgrade(client()));
    }
    let daemonize = parsed.flag("daemonize");
    let log_file = parsed.last("log-file").map(OsStr::to_os_string);
    if daemonize && log_file.is_none() {
        bail!("--daemonize needs --log-file: a daemon's output must go somewhere");
    }
    if parsed.args.is_empty() {
        bail!("server program not specified (usage: start_server [options] -- program [args...])");
    }

    let mut listen = Vec::new();
    for spec in parsed.all("port") {
        listen.push(ListenSpec::parse_port(utf8("port", spec)?)?);
    }
    for path in parsed.all("path") {
        listen.push(ListenSpec::unix(path));
    }
    crate::listen::check_pins(&listen)?;

    let interval = match parsed.text("interval")? {
        Some(v) => parse_seconds("interval", v)?,
        None => Duration::from_secs(1),
    };
    let signal = |name: &str| -> Result<SignalName> {
        match parsed.text(name)? {
            Some(v) => SignalName::parse(v)
                .map_err(|e| anyhow::anyhow!("invalid --{name} value {v:?}: {e}")),
            None => Ok(SignalName::term()),
        }
    };
    let backlog = match parsed.text("backlog")? {
        Some(v) => match v.parse::<i32>() {
            // Like the reference (`||= SOMAXCONN`), 0 means the default.
            Ok(0) => libc::SOMAXCONN,
            Ok(n) if n > 0 => n,
            _ => bail!("invalid --backlog value {v:?}: must be a whole number, 0 or more"),
        },
        None => libc::SOMAXCONN,
    };

    // Extensions: 0 is off.
    let extension = |name: &str| -> Result<Option<Seconds>> {
        let Some(text) = parsed.text(name)? else {
            return Ok(None);
        };
        let value = parse_seconds(name, text)?;
        Ok((!value.is_zero()).then(|| Seconds {
            text: text.to_string(),
            value: value.as_secs_f64(),
        }))
    };
    let signal_timeout = extension("signal-timeout")?;
    let max_retry_interval = extension("max-retry-interval")?;
    let notify_ready = parsed.flag("notify-ready");
    let notify_timeout = match parsed.text("notify-timeout")? {
        Some(_) if !notify_ready => bail!("--notify-timeout needs --notify-ready"),
        Some(_) => extension("notify-timeout")?,
        None => Some(Seconds {
            text: "90".to_string(),
            value: 90.0,
        }),
    };

    let systemd_notify = match parsed.text("systemd-notify")? {
        None | Some("auto") => SystemdNotify::Auto,
        Some("off") => SystemdNotify::Off,
        Some("pass") => SystemdNotify::Pass,
        Some(v) => bail!("invalid --systemd-notify value {v:?}: must be auto, off or pass"),
    };
    if systemd_notify == SystemdNotify::Pass && notify_ready {
        bail!(
            "--systemd-notify=pass cannot go with --notify-ready: the workers' NOTIFY_SOCKET is start_server's then"
        );
    }

    // These four are read back from the environment at every turn of the
    // supervisor loop, so that an envdir can change them (docs/behaviour.md section 1).
    let mut exports = Vec::new();
    if let Some(dir) = parsed.last("envdir") {
        exports.push(("ENVDIR", dir.to_os_string()));
    }
    if parsed.flag("enable-auto-restart") {
        exports.push(("ENABLE_AUTO_RESTART", "1".into()));
    }
    for (option, var) in [
        ("kill-old-delay", "KILL_OLD_DELAY"),
        ("auto-restart-interval", "AUTO_RESTART_INTERVAL"),
    ] {
        if let Some(v) = parsed.text(option)? {
            parse_seconds(option, v)?;
            exports.push((var, v.into()));
        }
    }

    Ok(Mode::Start(Box::new(Config {
        listen,
        dir: path_option("dir"),
        interval,
        signal_on_hup: signal("signal-on-hup")?,
        signal_on_term: signal("signal-on-term")?,
        pid_file: path_option("pid-file"),
        status_file: path_option("status-file"),
        log_file,
        daemonize,
        backlog,
        signal_timeout,
        max_retry_interval,
        notify_ready,
        notify_timeout,
        systemd_notify,
        systemd_listen_fds: parsed.flag("systemd-listen-fds"),
        subreaper: parsed.flag("subreaper"),
        exports,
        program: parsed.args,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    fn opts(s: &str) -> Result<Parsed> {
        parse_options(words(s), false)
    }

    #[test]
    fn equals_and_separate_values() {
        let p = opts("--port=80 --port 81 -path /tmp/s app").unwrap();
        assert_eq!(
            p.options,
            vec![
                ("port", Some("80".into())),
                ("port", Some("81".into())),
                ("path", Some("/tmp/s".into()))
            ]
        );
        assert_eq!(p.args, words("app"));
    }

    #[test]
    fn abbreviations_and_case() {
        let p = opts("--pid=x --STATUS=y +int 3 app").unwrap();
        assert_eq!(p.last("pid-file"), Some(OsStr::new("x")));
        assert_eq!(p.last("status-file"), Some(OsStr::new("y")));
        assert_eq!(p.last("interval"), Some(OsStr::new("3")));
        let e = opts("--s app").unwrap_err().to_string();
        assert_eq!(
            e,
            "Option s is ambiguous (signal-on-hup, signal-on-term, status-file, stop)"
        );
    }

    #[test]
    fn extensions_are_matched_by_their_full_name_only() {
        let p = opts("--signal-timeout=5 --MAX-RETRY-INTERVAL 0.5 app").unwrap();
        assert_eq!(p.last("signal-timeout"), Some(OsStr::new("5")));
        assert_eq!(p.last("max-retry-interval"), Some(OsStr::new("0.5")));
        let p = parse_options(words("--signal-timeout=1 app"), true).unwrap();
        assert_eq!(p.last("signal-timeout"), Some(OsStr::new("1")));
        // They take no part in abbreviations: the reference's meanings stay.
        assert_eq!(
            opts("--sig=TERM app").unwrap_err().to_string(),
            "Option sig is ambiguous (signal-on-hup, signal-on-term)"
        );
        assert_eq!(
            opts("--s app").unwrap_err().to_string(),
            "Option s is ambiguous (signal-on-hup, signal-on-term, status-file, stop)"
        );
        assert!(opts("--re app").unwrap().flag("restart"));
        // A prefix of an extension is unknown, as any unknown option.
        for (typed, name) in [
            ("--signal-t=5", "signal-t"),
            ("--signal-timeou 5", "signal-timeou"),
            ("--max-retry=1", "max-retry"),
            ("--max", "max"),
            ("--m=1", "m"),
        ] {
            assert_eq!(
                opts(&format!("{typed} app")).unwrap_err().to_string(),
                format!("Unknown option: {name}"),
                "{typed}"
            );
        }
    }

    #[test]
    fn systemd_and_container_options() {
        let start = |s: &str| match parse(words(s), false) {
            Ok(Mode::Start(c)) => c,
            other => panic!("{s}: {other:?}"),
        };
        let c = start("app");
        assert_eq!(c.systemd_notify, SystemdNotify::Auto);
        assert!(!c.systemd_listen_fds && !c.subreaper);
        for (mode, want) in [
            ("auto", SystemdNotify::Auto),
            ("off", SystemdNotify::Off),
            ("pass", SystemdNotify::Pass),
        ] {
            assert_eq!(
                start(&format!("--systemd-notify={mode} app")).systemd_notify,
                want
            );
        }
        let c = start("--systemd-listen-fds --subreaper app");
        assert!(c.systemd_listen_fds && c.subreaper);
        for (args, message) in [
            (
                "--systemd-notify=yes app",
                "invalid --systemd-notify value \"yes\": must be auto, off or pass",
            ),
            (
                "--systemd-notify=pass --notify-ready app",
                "--systemd-notify=pass cannot go with --notify-ready",
            ),
        ] {
            let error = parse(words(args), false).unwrap_err().to_string();
            assert!(error.starts_with(message), "{args}: {error}");
        }
        // Full names only: a prefix is unknown, the reference's
        // abbreviations keep their meaning.
        for typed in ["--systemd", "--subreap", "--systemd-listen"] {
            assert!(
                opts(&format!("{typed} app"))
                    .unwrap_err()
                    .to_string()
                    .starts_with("Unknown option"),
                "{typed}"
            );
        }
        assert_eq!(
            opts("--s app").unwrap_err().to_string(),
            "Option s is ambiguous (signal-on-hup, signal-on-term, status-file, stop)"
        );
        assert!(opts("--st app").is_err());
    }

    #[test]
    fn extension_values() {
        let start = |s: &str| match parse(words(s), false) {
            Ok(Mode::Start(c)) => c,
            other => panic!("{s}: {other:?}"),
        };
        let c = start("app");
        assert!(c.signal_timeout.is_none() && c.max_retry_interval.is_none());
        let c = start("--signal-timeout=0 --max-retry-interval=0 app");
        assert!(c.signal_timeout.is_none() && c.max_retry_interval.is_none());
        let c = start("--signal-timeout=0.5 --max-retry-interval=1_0 app");
        let timeout = c.signal_timeout.unwrap();
        assert_eq!((timeout.text.as_str(), timeout.value), ("0.5", 0.5));
        assert_eq!(c.max_retry_interval.unwrap().text, "10");
        let c = start("app");
        assert!(!c.notify_ready);
        let c = start("--notify-ready app");
        assert!(c.notify_ready && c.notify_timeout.unwrap().text == "90");
        let c = start("--notify-ready --notify-timeout=0 app");
        assert!(c.notify_timeout.is_none());
        let c = start("--notify-ready --notify-timeout=0.5 app");
        assert_eq!(c.notify_timeout.unwrap().value, 0.5);
        for (args, message) in [
            (
                "--signal-timeout=-1 app",
                "invalid --signal-timeout value \"-1\": must be a number of seconds, 0 or more",
            ),
            (
                "--signal-timeout=abc app",
                "Value \"abc\" invalid for option signal-timeout (number expected)",
            ),
            (
                "--notify-ready --notify-timeout=-1 app",
                "invalid --notify-timeout value \"-1\": must be a number of seconds, 0 or more",
            ),
            (
                "--notify-timeout=5 app",
                "--notify-timeout needs --notify-ready",
            ),
            (
                "--max-retry-interval=-0.5 app",
                "invalid --max-retry-interval value \"-0.5\": must be a number of seconds, 0 or \
                 more",
            ),
        ] {
            assert_eq!(parse(words(args), false).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn permutes_unless_posix() {
        let p = opts("app --port=80 -- --x").unwrap();
        assert_eq!(p.last("port"), Some(OsStr::new("80")));
        assert_eq!(p.args, words("app --x"));
        let p = parse_options(words("app --port=80"), true).unwrap();
        assert!(p.options.is_empty());
        assert_eq!(p.args, words("app --port=80"));
        assert!(parse_options(words("--pid=x app"), true).is_err());
    }

    #[test]
    fn errors_name_the_option() {
        assert_eq!(
            opts("--foo app").unwrap_err().to_string(),
            "Unknown option: foo"
        );
        assert_eq!(
            opts("--daemonize=1 app").unwrap_err().to_string(),
            "Option daemonize does not take an argument"
        );
        assert_eq!(
            opts("--interval").unwrap_err().to_string(),
            "Option interval requires an argument"
        );
        assert_eq!(
            opts("--interval=abc app").unwrap_err().to_string(),
            "Value \"abc\" invalid for option interval (number expected)"
        );
    }

    #[test]
    fn numbers() {
        for (given, stored) in [
            ("0", "0"),
            ("5", "5"),
            ("+3", "3"),
            ("-1", "-1"),
            ("05", "5"),
            ("-0", "0"),
            ("1_000", "1000"),
            ("_5", "5"),
            ("5\n", "5"),
            ("0.5", "0.5"),
            ("1.", "1"),
            (".5", "0.5"),
        ] {
            assert_eq!(
                normalize_number(given).as_deref(),
                Some(stored),
                "{given:?}"
            );
        }
        for bad in [
            "", "abc", "1e3", "0x10", ".", "1.2.3", " 5", "5 ", "--1", "_", "+", "-",
        ] {
            assert_eq!(normalize_number(bad), None, "{bad:?}");
        }
        assert!(parse(words("--interval=-1 app"), false).is_err());
        assert!(parse(words("--kill-old-delay=-1 app"), false).is_err());
    }

    #[test]
    fn modes() {
        assert!(matches!(parse(words("--help"), false), Ok(Mode::Help)));
        assert!(matches!(parse(words("--vers"), false), Ok(Mode::Version)));
        assert!(matches!(
            parse(words("--restart app"), false),
            Ok(Mode::Restart(_))
        ));
        assert!(parse(words("--port=80"), false).is_err());
        assert!(parse(words("--daemonize app"), false).is_err());
        assert!(parse(words("--signal-on-hup=BOGUS app"), false).is_err());
        let Ok(Mode::Start(c)) =
            parse(words("--enable-auto-restart --kill-old-delay=2 app"), false)
        else {
            panic!("expected a start");
        };
        assert_eq!(
            c.exports,
            vec![
                ("ENABLE_AUTO_RESTART", "1".into()),
                ("KILL_OLD_DELAY", "2".into())
            ]
        );
    }

    /// A minimal reader for the matrix's JSON (strings, arrays, objects, 1).
    #[derive(Debug, PartialEq)]
    enum Json {
        Str(String),
        Num(String),
        Arr(Vec<Json>),
        Obj(Vec<(String, Json)>),
    }

    fn json(text: &str) -> Json {
        fn value(s: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Json {
            match s.peek() {
                Some('"') => {
                    s.next();
                    let mut out = String::new();
                    while let Some(c) = s.next() {
                        match c {
                            '"' => break,
                            '\\' => match s.next() {
                                Some('n') => out.push('\n'),
                                Some('t') => out.push('\t'),
                                Some(other) => out.push(other),
                                None => break,
                            },
                            c => out.push(c),
                        }
                    }
                    Json::Str(out)
                }
                Some('[') => {
                    s.next();
                    let mut items = Vec::new();
                    while s.peek() != Some(&']') {
                        items.push(value(s));
                        if s.peek() == Some(&',') {
                            s.next();
                        }
                    }
                    s.next();
                    Json::Arr(items)
                }
                Some('{') => {
                    s.next();
                    let mut items = Vec::new();
                    while s.peek() != Some(&'}') {
                        let Json::Str(k) = value(s) else {
                            panic!("key")
                        };
                        assert_eq!(s.next(), Some(':'));
                        items.push((k, value(s)));
                        if s.peek() == Some(&',') {
                            s.next();
                        }
                    }
                    s.next();
                    Json::Obj(items)
                }
                _ => {
                    let mut n = String::new();
                    while let Some(&c) = s.peek() {
                        if c == ',' || c == ']' || c == '}' {
                            break;
                        }
                        n.push(c);
                        s.next();
                    }
                    Json::Num(n)
                }
            }
        }
        value(&mut text.chars().peekable())
    }

    /// Our result in the matrix's shape.
    fn as_json(parsed: &Parsed) -> Json {
        let mut opts: Vec<(String, Json)> = Vec::new();
        for (name, value) in &parsed.options {
            let entry = match value {
                None => Json::Num("1".into()),
                Some(v) => Json::Str(v.to_string_lossy().into_owned()),
            };
            if *name == "port" || *name == "path" {
                match opts.iter_mut().find(|(k, _)| k == name) {
                    Some((_, Json::Arr(list))) => list.push(entry),
                    _ => opts.push((name.to_string(), Json::Arr(vec![entry]))),
                }
            } else {
                opts.retain(|(k, _)| k != name);
                opts.push((name.to_string(), entry));
            }
        }
        opts.sort_by(|a, b| a.0.cmp(&b.0));
        let argv = parsed
            .args
            .iter()
            .map(|a| Json::Str(a.to_string_lossy().into_owned()))
            .collect();
        Json::Obj(vec![
            ("argv".into(), Json::Arr(argv)),
            ("opts".into(), Json::Obj(opts)),
        ])
    }

    /// Fractional seconds are our one deliberate extension (docs/behaviour.md section 8).
    fn is_fraction(word: &str) -> bool {
        let v = word.rsplit('=').next().unwrap_or(word);
        v.contains('.') && normalize_number(v).is_some()
    }

    #[test]
    fn matches_the_reference_getopt_matrix() {
        let matrix = include_str!("../tests/data/getopt_matrix.tsv");
        let mut checked = 0;
        for line in matrix.lines() {
            let cols: Vec<&str> = line.split('\t').collect();
            let [posix, argv, outcome, result] = cols[..] else {
                panic!("bad matrix line {line:?}");
            };
            let Json::Arr(argv) = json(argv) else {
                panic!("argv of {line}")
            };
            let words: Vec<String> = argv
                .into_iter()
                .map(|w| match w {
                    Json::Str(s) => s,
                    other => panic!("{other:?}"),
                })
                .collect();
            let ours = parse_options(words.iter().map(OsString::from).collect(), posix == "1");
            match (outcome, ours) {
                ("ok", Ok(parsed)) => {
                    let mut expected = json(result);
                    if let Json::Obj(fields) = &mut expected {
                        for (_, v) in fields.iter_mut() {
                            if let Json::Obj(opts) = v {
                                opts.sort_by(|a, b| a.0.cmp(&b.0));
                            }
                        }
                    }
                    assert_eq!(as_json(&parsed), expected, "{line}");
                }
                ("error", Err(e)) => {
                    let Json::Str(expected) = json(result) else {
                        panic!("{line}")
                    };
                    assert_eq!(format!("{e}\n"), expected, "{line}");
                }
                ("error", Ok(_)) if words.iter().any(|w| is_fraction(w)) => {}
                (outcome, ours) => panic!("{line}\nreference: {outcome}, ours: {ours:?}"),
            }
            checked += 1;
        }
        assert!(checked >= 300, "only {checked} cases");
    }
}
