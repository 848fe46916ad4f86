//! The one table of options, and of the environment variables start_server
//! reads and sets, from which everything that lists them is made: the
//! parser's option tables (`cli`), the `--help` text, and, through the
//! tests in `man` and `completions`, the man page `docs/start_server.1` and
//! the bash, zsh and fish completions under `completions/`.
//!
//! Adding an option is adding a row to [`ALL`] (and handling its value in
//! `cli::parse`), then `UPDATE_GENERATED=1 cargo test --bin start_server
//! generated` to rewrite the generated files; without the variable that
//! test fails while a committed file is out of date.

use Kind::{Flag, Int, Str};

#[cfg(test)]
mod completions;
#[cfg(test)]
mod man;

/// How an option takes its value, as in Getopt::Long's spec (`=s`, `=i`, flag).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Flag,
    Str,
    Int,
}

/// Whether the Perl reference has the option too.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Origin {
    /// One of Server::Starter 0.35's options: matched by any unique
    /// prefix, as Getopt::Long does.
    Reference,
    /// One of ours: off by default and matched by its full name only, so
    /// that no abbreviation the reference accepts changes meaning
    /// (COMPATIBILITY.md, "Extensions").
    Extension,
}

/// What a value is, for the shell completions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Value {
    /// A flag: no value.
    None,
    /// Free text or a number: nothing to complete.
    Text,
    /// A file name.
    File,
    /// A directory name.
    Dir,
    /// A signal name.
    Signal,
}

/// One option.
#[derive(Debug)]
pub struct Opt {
    /// The full name, without dashes.
    pub name: &'static str,
    pub kind: Kind,
    pub origin: Origin,
    /// The value as the usage shows it (`SECS`); empty for a flag.
    pub placeholder: &'static str,
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the completions"))]
    pub value: Value,
    /// One sentence for `--help` and the completions; the part before the
    /// first `; ` or ` (default` is the short form the completions show.
    pub help: &'static str,
    /// More for the man page, after `help`; may be empty.
    #[cfg_attr(not(test), allow(dead_code, reason = "read by the man page"))]
    pub details: &'static str,
    /// Another way to write the option, with its own help line
    /// (`--log-file="| CMD"`): `(value, help)`.
    pub also: Option<(&'static str, &'static str)>,
}

impl Opt {
    /// `--name=PLACEHOLDER`, or `--name` for a flag.
    pub fn usage(&self) -> String {
        if self.placeholder.is_empty() {
            format!("--{}", self.name)
        } else {
            format!("--{}={}", self.name, self.placeholder)
        }
    }

    /// The help sentence without its default and its qualifications.
    #[cfg(test)]
    pub fn summary(&self) -> &'static str {
        let cut = [self.help.find("; "), self.help.find(" (default")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.help.len());
        &self.help[..cut]
    }
}

/// A row of [`ALL`]: one of the reference's options, without help yet.
const fn opt(name: &'static str, kind: Kind, placeholder: &'static str, value: Value) -> Opt {
    Opt {
        name,
        kind,
        origin: Origin::Reference,
        placeholder,
        value,
        help: "",
        details: "",
        also: None,
    }
}

/// The builders of a row.
impl Opt {
    const fn help(self, help: &'static str) -> Opt {
        Opt { help, ..self }
    }

    const fn details(self, details: &'static str) -> Opt {
        Opt { details, ..self }
    }

    const fn extension(self) -> Opt {
        Opt {
            origin: Origin::Extension,
            ..self
        }
    }

    const fn also(self, value: &'static str, help: &'static str) -> Opt {
        Opt {
            also: Some((value, help)),
            ..self
        }
    }
}

/// Every option, in the order `--help` and the man page list them: the
/// reference's first, then the extensions.
pub const ALL: &[Opt] = &[
    opt("port", Str, "[HOST:][u]PORT[=FD]", Value::Text)
        .help("TCP (or UDP with u) socket to listen on; IPv6 as [ADDR]:PORT; repeatable")
        .details(
            "A bare PORT listens on 0.0.0.0 (IPv4 only); HOST is resolved to IPv4; \
             [ADDR] is IPv6, with IPV6_V6ONLY set. With =FD the socket is placed on \
             that file descriptor (not 1 or 2). The key in SERVER_STARTER_PORT is the \
             value as written, without the u and the =FD.",
        ),
    opt("path", Str, "PATH", Value::File)
        .help("unix socket to listen on; repeatable")
        .details(
            "A stale socket file at PATH (nobody accepts on it) is removed first; \
             a live one is an error. The socket is made with mode 0777 and removed \
             at exit.",
        ),
    opt("dir", Str, "DIR", Value::Dir).help("working directory of the program"),
    opt("interval", Int, "SECS", Value::Text)
        .help("time a new program must stay up to count as started (default: 1)")
        .details(
            "Until then the old generation keeps serving; a program that exits \
             sooner is a failed start, retried once per interval.",
        ),
    opt("signal-on-hup", Str, "SIG", Value::Signal)
        .help("signal for old programs after a restart (default: TERM)"),
    opt("signal-on-term", Str, "SIG", Value::Signal)
        .help("signal for programs on SIGTERM (default: TERM)"),
    opt("pid-file", Str, "FILE", Value::File)
        .help("write our pid to FILE and lock it")
        .details(
            "The file is locked with flock(2) for the whole life of start_server \
             and removed at exit; a second start_server given the same file refuses \
             to start. --restart and --stop find the instance through it.",
        ),
    opt("status-file", Str, "FILE", Value::File)
        .help("keep GENERATION:PID lines of live programs")
        .details(
            "Replaced atomically at every change, sorted by generation, removed at \
             exit. --restart reads it.",
        ),
    opt("log-file", Str, "FILE", Value::File)
        .help("append stdout and stderr to FILE; SIGUSR1 reopens it (for logrotate)")
        .details("The programs inherit it as their stdout and stderr.")
        .also("\"| CMD\"", "pipe stdout and stderr to CMD"),
    opt("daemonize", Flag, "", Value::None)
        .help("run in the background (needs --log-file)")
        .details(
            "The command returns once the daemon has written its pid file: 0 then, \
             1 with the daemon's error if it could not start.",
        ),
    opt("envdir", Str, "DIR", Value::Dir)
        .help("directory of environment variables, re-read continuously")
        .details(
            "One file per variable, named after it, holding its value \
             (daemontools' envdir). Read again at every turn of the supervisor loop; \
             each new program gets the variables as they are then.",
        ),
    opt("enable-auto-restart", Flag, "", Value::None).help("restart the program periodically"),
    opt("auto-restart-interval", Int, "SECS", Value::Text)
        .help("period of the automatic restart (default: 360)"),
    opt("kill-old-delay", Int, "SECS", Value::Text)
        .help("wait before signalling old programs (default: 5 with auto-restart, else 0)"),
    opt("backlog", Int, "N", Value::Text).help("listen(2) backlog (default: SOMAXCONN)"),
    opt("restart", Flag, "", Value::None)
        .help("restart a running start_server and wait")
        .details(
            "Needs --pid-file and --status-file. Sends SIGHUP and exits 0 once a new \
             generation is the only one left, 1 with one line when three new \
             generations in a row failed to start, when start_server exited, or \
             after 300 seconds.",
        ),
    opt("stop", Flag, "", Value::None)
        .help("stop a running start_server and wait")
        .details(
            "Needs --pid-file. Sends SIGTERM and exits 0 once start_server is gone, \
             1 if it still runs after 300 seconds.",
        ),
    opt("help", Flag, "", Value::None).help("print this help"),
    opt("version", Flag, "", Value::None).help("print the version"),
    opt("signal-timeout", Int, "SECS", Value::Text)
        .extension()
        .help(
            "SIGKILL an old worker after a restart, or any worker at shutdown, still \
             running SECS after its signal (default: 0, never)",
        ),
    opt("max-retry-interval", Int, "SECS", Value::Text)
        .extension()
        .help(
            "space consecutive failed starts interval x 2^(k-1) apart, at most SECS; \
             a HUP retries at once (default: 0, one attempt per interval)",
        ),
    opt("notify-ready", Flag, "", Value::None)
        .extension()
        .help(
            "a new program counts as started when it sends READY=1 to $NOTIFY_SOCKET \
             (sd_notify), not after --interval, which then only spaces attempts",
        )
        .details(
            "Each generation gets its own NOTIFY_SOCKET, a datagram socket in a \
             private directory.",
        ),
    opt("notify-timeout", Int, "SECS", Value::Text)
        .extension()
        .help(
            "with --notify-ready, SIGKILL a new program that sent no READY=1 within \
             SECS; it may send EXTEND_TIMEOUT_USEC=N (default: 90; 0, never)",
        ),
    opt("systemd-notify", Str, "MODE", Value::Text)
        .extension()
        .help(
            "auto: tell the service manager in $NOTIFY_SOCKET when start_server is \
             ready, reloading (HUP) and stopping, and keep its variables from the \
             programs; off: tell it nothing; pass: hand $NOTIFY_SOCKET on to the \
             programs (default: auto)",
        )
        .details(
            "auto acts whenever start_server itself was given a NOTIFY_SOCKET it can \
             send to: systemd sets one for Type=notify and Type=notify-reload units, \
             and for any unit with NotifyAccess= or WatchdogSec=. It also sends \
             STATUS= lines, WATCHDOG=1 keep-alives when WATCHDOG_USEC is set for it, \
             and MAINPID= with --daemonize; a program that spoke to systemd itself \
             no longer reaches it (pass restores that).",
        ),
    opt("systemd-listen-fds", Flag, "", Value::None)
        .extension()
        .help(
            "also give the programs their sockets at fds 3, 4, ... with LISTEN_FDS, \
             LISTEN_FDNAMES and LISTEN_PID (socket activation)",
        )
        .details(
            "For programs that only speak systemd's socket activation; \
             SERVER_STARTER_PORT names the same sockets at their new numbers.",
        ),
    opt("subreaper", Flag, "", Value::None)
        .extension()
        .help(
            "adopt the programs' orphans: reap them, and stop them with the programs \
             (PR_SET_CHILD_SUBREAPER)",
        )
        .details("As PID 1 (in a container) start_server does so without the option."),
    opt("upgrade", Flag, "", Value::None)
        .extension()
        .help(
            "upgrade a running start_server to the binary now at the path it was \
             started as, keeping its pid, sockets and workers (SIGUSR2), and wait until \
             it did or say why not",
        )
        .details(
            "Needs --pid-file. Exits 0 once the new binary runs, 1 with the reason \
             when it could not take over (the running start_server then carries on \
             as before), or after 30 seconds. Never signals a start_server that cannot \
             upgrade itself.",
        ),
];

/// An environment variable start_server reads or sets: `(name, help)`.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "SERVER_STARTER_PORT",
        "set for the program: its sockets as KEY=FD entries joined by ; \
         (80=3;/tmp/app.sock=4)",
    ),
    (
        "SERVER_STARTER_GENERATION",
        "set for the program: its generation, 1 for the first",
    ),
    (
        "ENVDIR",
        "the envdir to load, set by --envdir; read at every turn of the loop, as \
         are the three below",
    ),
    (
        "ENABLE_AUTO_RESTART",
        "1 turns auto-restart on; set by --enable-auto-restart",
    ),
    ("AUTO_RESTART_INTERVAL", "set by --auto-restart-interval"),
    ("KILL_OLD_DELAY", "set by --kill-old-delay"),
    (
        "NOTIFY_SOCKET",
        "read by start_server under --systemd-notify=auto (and then kept from the \
         program, with WATCHDOG_USEC and WATCHDOG_PID); set for the program with \
         --notify-ready",
    ),
    (
        "LISTEN_FDS",
        "with LISTEN_PID naming start_server and LISTEN_FDNAMES: sockets handed over by \
         the service manager, adopted instead of bound; set for the program with \
         --systemd-listen-fds",
    ),
    (
        "POSIXLY_CORRECT",
        "options end at the first non-option and may not be abbreviated",
    ),
];

/// The command line `--help` and the man page give as an example.
pub const EXAMPLE: &str =
    "start_server --port=8080 --pid-file=app.pid --status-file=app.status -- ./app";

/// Where the help of an option starts, and the width it wraps to.
const HELP_COLUMN: usize = 30;
const WIDTH: usize = 77;

/// The `--help` text.
pub fn usage() -> String {
    let mut out = String::from(
        "\
Usage:
  start_server [options] -- program [args...]
  start_server --restart --pid-file=FILE --status-file=FILE
  start_server --stop --pid-file=FILE
  start_server --upgrade --pid-file=FILE

A superdaemon for hot-deploying server programs: binds the listening sockets
once, passes them to the program through SERVER_STARTER_PORT, and on SIGHUP
starts a new generation of the program before retiring the old one.

Options:
",
    );
    let mut origin = Origin::Reference;
    for o in ALL {
        if o.origin != origin {
            origin = o.origin;
            out.push_str(
                "\nExtensions (not in the Perl version; off by default; full names only):\n",
            );
        }
        push_entry(&mut out, &o.usage(), o.help);
        if let Some((value, help)) = o.also {
            push_entry(&mut out, &format!("--{}={value}", o.name), help);
        }
    }
    out.push_str("\nEnvironment:\n");
    for (name, help) in ENVIRONMENT {
        push_entry(&mut out, name, help);
    }
    out.push_str(&format!("\nExample:\n  {EXAMPLE}\n"));
    out
}

/// One `  term   help...` entry: the help starts at [`HELP_COLUMN`], on the
/// next line when the term is too wide, and wraps at [`WIDTH`].
fn push_entry(out: &mut String, term: &str, help: &str) {
    let mut line = format!("  {term}");
    if line.len() + 2 > HELP_COLUMN {
        out.push_str(&line);
        out.push('\n');
        line.clear();
    }
    let mut empty = true;
    for word in help.split_whitespace() {
        if !empty && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line.clear();
            empty = true;
        }
        if empty {
            line = format!("{line:HELP_COLUMN$}{word}");
            empty = false;
        } else {
            line.push(' ');
            line.push_str(word);
        }
    }
    out.push_str(&line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lowercase_words() {
        for (i, o) in ALL.iter().enumerate() {
            assert!(
                !o.name.is_empty() && o.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{}",
                o.name
            );
            assert!(
                ALL[..i].iter().all(|p| p.name != o.name),
                "{} twice",
                o.name
            );
            assert_eq!(o.kind == Kind::Flag, o.placeholder.is_empty(), "{}", o.name);
            assert_eq!(o.kind == Kind::Flag, o.value == Value::None, "{}", o.name);
            assert!(!o.help.is_empty(), "{} has no help", o.name);
        }
        // The reference's options come first, as --help lists them.
        let first_extension = ALL
            .iter()
            .position(|o| o.origin == Origin::Extension)
            .unwrap_or(ALL.len());
        assert!(
            ALL[first_extension..]
                .iter()
                .all(|o| o.origin == Origin::Extension)
        );
    }

    #[test]
    fn usage_lines_fit_80_columns_and_list_every_option() {
        let text = usage();
        for line in text.lines() {
            assert!(line.len() < 80, "too long: {line:?}");
        }
        for o in ALL {
            assert!(
                text.contains(&format!("\n  {}", o.usage())),
                "{} missing",
                o.name
            );
        }
        assert!(text.starts_with("Usage:\n"));
        assert!(
            text.contains("\n  --auto-restart-interval=SECS\n                              period")
        );
    }

    /// A file made from the tables: equal to `expected`, or rewritten when
    /// `UPDATE_GENERATED` is set.
    pub fn check_generated(relative: &str, expected: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        if actual == expected {
            return;
        }
        if std::env::var_os("UPDATE_GENERATED").is_some_and(|v| !v.is_empty()) {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).expect("create the directory");
            }
            std::fs::write(&path, expected).expect("write the generated file");
            return;
        }
        panic!(
            "{relative} is out of date with src/options.rs: run \
             `UPDATE_GENERATED=1 cargo test --bin start_server generated` and commit it"
        );
    }
}
