//! Bad input (docs/behaviour.md sections 1, 2, 5 and 6): tables of command lines
//! start_server cannot act on. Each case names what it gives and the words
//! its error line must contain (the bad value and the reason); the runner
//! checks the one-line error, the exit status, and that the sandbox is left
//! exactly as it was: no pid, status, temp or socket file, no truncated
//! file, no worker, no process carrying the sandbox's marker.
//!
//! Three outcomes: most inputs stop start_server before anything starts
//! (exit 1); a program, `--dir` or status file that is only used once
//! workers run is an error logged at every attempt while start_server keeps
//! running (as under the reference: the file may appear later), and then
//! shuts down cleanly on TERM.
//!
//! The cases that need an unprivileged user (permission errors, a privileged
//! port) are tests of their own, named `..._needs_<what>`: run as root they
//! start start_server as nobody; where they cannot run at all they print
//! `skipped: <test>: <reason>` and return (see `support::skip`).

use std::any::Any;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// What start_server does with a case's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A one-line error, a non-zero exit, nothing started.
    Exits,
    /// No worker can start: the error is logged at each attempt, no status
    /// file is written, and TERM ends it cleanly.
    Retries,
    /// Workers serve; writing the status file fails and is logged.
    Serves,
}

/// A case, prepared in its own sandbox.
struct Prepared {
    args: Vec<OsString>,
    /// Each must occur in the error line; `a|b` means either.
    needles: Vec<String>,
    /// Whatever must stay alive while start_server runs (a listener on the
    /// port, a lock).
    keep: Vec<Box<dyn Any>>,
}

struct Case {
    name: &'static str,
    outcome: Outcome,
    /// Run start_server as an unprivileged user (nobody when the tests run
    /// as root), for permission errors.
    unprivileged: bool,
    prepare: fn(&Sandbox) -> Prepared,
}

fn case(name: &'static str, outcome: Outcome, prepare: fn(&Sandbox) -> Prepared) -> Case {
    Case {
        name,
        outcome,
        unprivileged: false,
        prepare,
    }
}

fn unprivileged(name: &'static str, prepare: fn(&Sandbox) -> Prepared) -> Case {
    Case {
        name,
        outcome: Outcome::Exits,
        unprivileged: true,
        prepare,
    }
}

fn prepared<N: Into<String>>(
    args: Vec<OsString>,
    needles: impl IntoIterator<Item = N>,
) -> Prepared {
    Prepared {
        args,
        needles: needles.into_iter().map(Into::into).collect(),
        keep: Vec::new(),
    }
}

/// A supervisor command line: the sandbox's pid and status files,
/// `--interval=1` (a worker that fails is caught by the start check, never
/// listed), `opts`, then the test worker.
fn start(sb: &Sandbox, opts: &[String]) -> Vec<OsString> {
    start_program(sb, opts, &[test_worker_bin().into_os_string()])
}

fn start_program(sb: &Sandbox, opts: &[String], program: &[OsString]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        format!("--pid-file={}", sb.pid_file().display()).into(),
        format!("--status-file={}", sb.status_file().display()).into(),
        "--interval=1".into(),
    ];
    args.extend(opts.iter().map(OsString::from));
    args.push("--".into());
    args.extend(program.iter().cloned());
    args
}

/// `--port=VALUE` with the test worker.
fn port(sb: &Sandbox, value: &str) -> Vec<OsString> {
    start(sb, &[format!("--port={value}")])
}

fn words(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

/// A file in the sandbox with this content.
fn file(sb: &Sandbox, name: &str, content: &str) -> PathBuf {
    let path = sb.path(name);
    fs::write(&path, content).expect("write");
    path
}

/// A pid that belonged to a process of ours that has exited.
fn dead_pid() -> i32 {
    let mut child = Command::new("true")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn true");
    let pid = child.id() as i32;
    child.wait().expect("wait");
    pid
}

/// What is in the sandbox, apart from the harness's output files and the
/// workers' reports: each path with its type, mode and (for a regular
/// file) content, or (for a symlink) target.
fn snapshot(sb: &Sandbox) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, top: bool, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if top && (name == "tw" || name.starts_with("stdout") || name.starts_with("stderr")) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let kind = meta.file_type();
            let mode = meta.mode() & 0o7777;
            let what = if kind.is_symlink() {
                format!("symlink -> {:?}", fs::read_link(&path).ok())
            } else if kind.is_dir() {
                walk(&path, false, out);
                format!("dir {mode:o}")
            } else if kind.is_socket() {
                format!("socket {mode:o} inode {}", meta.ino())
            } else if kind.is_file() {
                format!("file {mode:o} {:?}", read_lossy(&path))
            } else {
                format!("other {mode:o}")
            };
            out.insert(path, what);
        }
    }
    let mut out = BTreeMap::new();
    walk(sb.dir(), true, &mut out);
    out
}

/// Whether every needle (`a|b`: one of the alternatives) is in `line`.
fn mentions_all(line: &str, needles: &[String]) -> bool {
    needles
        .iter()
        .all(|n| n.split('|').any(|alternative| line.contains(alternative)))
}

/// Whether the unprivileged user can run start_server and the test worker
/// (every directory above them searchable, the files executable by all).
fn unprivileged_user_can_run() -> bool {
    if !running_as_root() {
        return true;
    }
    [start_server_bin(), test_worker_bin()].iter().all(|bin| {
        bin.ancestors()
            .all(|p| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    })
}

/// For the `_needs_unprivileged_user` tests: true (after reporting the
/// skip) when they cannot run here. Run as root, they run start_server as
/// nobody, who must be able to reach the binaries.
fn no_unprivileged_user() -> bool {
    if unprivileged_user_can_run() {
        return false;
    }
    skip(&format!(
        "the unprivileged user (uid {}) cannot reach {} and {}",
        NOBODY.0,
        start_server_bin().display(),
        test_worker_bin().display()
    ));
    true
}

/// Runs every case in its own sandbox; panics naming the first that fails.
fn run_cases(cases: Vec<Case>) {
    assert!(!cases.is_empty());
    for case in cases {
        let sb = Sandbox::new();
        let mut builder = sb.server();
        if case.unprivileged {
            assert!(
                unprivileged_user_can_run(),
                "{}: check no_unprivileged_user() before running the case",
                case.name
            );
            fs::create_dir(sb.path("ro")).expect("mkdir");
            fs::set_permissions(sb.path("ro"), fs::Permissions::from_mode(0o555)).expect("chmod");
            if running_as_root() {
                // Its files go into the sandbox, like everybody else's.
                fs::set_permissions(sb.dir(), fs::Permissions::from_mode(0o777)).expect("chmod");
                builder = builder.user(NOBODY.0, NOBODY.1);
            }
        }
        let Prepared {
            args,
            needles,
            keep,
        } = (case.prepare)(&sb);
        let before = snapshot(&sb);
        let name = case.name;
        let srv = builder.raw_args(args).spawn();
        match case.outcome {
            Outcome::Exits => {
                let out = srv.finish(TIMEOUT);
                assert!(
                    out.status.code().is_some_and(|c| c != 0),
                    "{name}: expected a non-zero exit\n{}",
                    out.describe()
                );
                // One line of error; the lifecycle line that precedes setup
                // may come first.
                let errors: Vec<&str> = out
                    .stderr
                    .lines()
                    .filter(|l| {
                        !(l.starts_with("start_server (pid:") && l.ends_with("starting now..."))
                    })
                    .collect();
                assert!(
                    errors.len() == 1
                        && errors[0].starts_with("start_server: ")
                        && mentions_all(errors[0], &needles),
                    "{name}: expected one error line mentioning {needles:?}\n{}",
                    out.describe()
                );
                assert!(out.stdout.is_empty(), "{name}\n{}", out.describe());
            }
            Outcome::Retries | Outcome::Serves => {
                let line =
                    srv.wait_value(&format!("{name}: a line mentioning {needles:?}"), || {
                        srv.output()
                            .lines()
                            .find(|l| mentions_all(l, &needles))
                            .map(str::to_string)
                    });
                srv.assert_running();
                if case.outcome == Outcome::Retries {
                    assert!(
                        sb.worker_reports().is_empty() && !sb.status_file().exists(),
                        "{name}: a worker started ({line:?})\n{}",
                        srv.describe()
                    );
                } else {
                    let worker = srv.wait_worker(1);
                    srv.wait_serving(worker.pid);
                }
                srv.stop();
            }
        }
        drop(keep);
        let after = snapshot(&sb);
        assert!(
            after == before,
            "{name}: the sandbox changed\nbefore: {before:#?}\nafter: {after:#?}"
        );
        if case.outcome != Outcome::Serves {
            assert!(
                sb.worker_reports().is_empty(),
                "{name}: a worker started\n{}",
                sb.describe()
            );
        }
        wait_until(
            Duration::from_secs(2),
            &format!("{name}: no process of the sandbox left"),
            || sb.marked_pids().into_iter().all(|p| !pid_alive(p)),
            || sb.describe(),
        );
    }
}

#[test]
fn bad_option_values_are_refused_before_anything_starts() {
    use Outcome::Exits;
    run_cases(vec![
        case("port: letters", Exits, |sb| {
            prepared(port(sb, "abc"), ["\"abc\"", "invalid port"])
        }),
        case("port: out of range", Exits, |sb| {
            prepared(port(sb, "70000"), ["\"70000\"", "out of range"])
        }),
        case("port: negative", Exits, |sb| {
            prepared(port(sb, "-1"), ["\"-1\"", "invalid port"])
        }),
        case("port: host without a port", Exits, |sb| {
            prepared(port(sb, "127.0.0.1:"), ["\"127.0.0.1:\"", "invalid port"])
        }),
        case("port: IPv6 address without brackets", Exits, |sb| {
            let value = format!("::1:{}", sb.port);
            prepared(port(sb, &value), [format!("{value:?}"), "brackets".into()])
        }),
        case("port: unbalanced bracket", Exits, |sb| {
            let value = format!("[::1:{}", sb.port);
            prepared(
                port(sb, &value),
                [format!("{value:?}"), "unbalanced".into()],
            )
        }),
        case("port: not an IPv6 address in brackets", Exits, |sb| {
            let value = format!("[::g]:{}", sb.port);
            prepared(
                port(sb, &value),
                [format!("{value:?}"), "not an IPv6 address".into()],
            )
        }),
        case("port: descriptor not a number", Exits, |sb| {
            let value = format!("{}=x", sb.port);
            prepared(
                port(sb, &value),
                [format!("{value:?}"), "must be a number".into()],
            )
        }),
        case("port: descriptor number too large", Exits, |sb| {
            let value = format!("{}=99999999999", sb.port);
            prepared(port(sb, &value), [format!("{value:?}"), "too large".into()])
        }),
        case("port: pinned to stdout", Exits, |sb| {
            prepared(
                port(sb, &format!("{}=1", sb.host_port())),
                [sb.host_port(), "file descriptor 1".into(), "stdout".into()],
            )
        }),
        case("port: two pinned to one descriptor", Exits, |sb| {
            let other = format!("127.0.0.1:{}", free_port());
            let args = start(
                sb,
                &[
                    format!("--port={}=5", sb.host_port()),
                    format!("--port={other}=5"),
                ],
            );
            prepared(
                args,
                [other, "file descriptor 5".into(), "already used".into()],
            )
        }),
        case("interval: a word", Exits, |sb| {
            prepared(
                start(sb, &["--interval=soon".into()]),
                ["\"soon\"", "interval", "number expected"],
            )
        }),
        case("interval: negative", Exits, |sb| {
            prepared(
                start(sb, &["--interval=-1".into()]),
                ["\"-1\"", "--interval", "0 or more"],
            )
        }),
        case("backlog: negative", Exits, |sb| {
            prepared(
                start(sb, &["--backlog=-5".into()]),
                ["\"-5\"", "--backlog", "0 or more"],
            )
        }),
        case("backlog: beyond an int", Exits, |sb| {
            prepared(
                start(sb, &["--backlog=99999999999".into()]),
                ["\"99999999999\"", "--backlog", "whole number"],
            )
        }),
        case("kill-old-delay: negative", Exits, |sb| {
            prepared(
                start(sb, &["--kill-old-delay=-2".into()]),
                ["\"-2\"", "--kill-old-delay", "0 or more"],
            )
        }),
        case("auto-restart-interval: a word", Exits, |sb| {
            prepared(
                start(sb, &["--auto-restart-interval=later".into()]),
                ["\"later\"", "auto-restart-interval", "number expected"],
            )
        }),
        case("signal-timeout: negative", Exits, |sb| {
            prepared(
                start(sb, &["--signal-timeout=-1".into()]),
                ["\"-1\"", "--signal-timeout", "0 or more"],
            )
        }),
        case("signal-timeout: a word", Exits, |sb| {
            prepared(
                start(sb, &["--signal-timeout=abc".into()]),
                ["\"abc\"", "signal-timeout", "number expected"],
            )
        }),
        case("signal-timeout: abbreviated", Exits, |sb| {
            prepared(
                start(sb, &["--signal-t=5".into()]),
                ["signal-t", "Unknown option"],
            )
        }),
        case("notify-timeout: negative", Exits, |sb| {
            prepared(
                start(sb, &["--notify-ready".into(), "--notify-timeout=-1".into()]),
                ["\"-1\"", "--notify-timeout", "0 or more"],
            )
        }),
        case("notify-timeout: without notify-ready", Exits, |sb| {
            prepared(
                start(sb, &["--notify-timeout=5".into()]),
                ["--notify-timeout needs --notify-ready"],
            )
        }),
        case("notify-ready: abbreviated", Exits, |sb| {
            prepared(
                start(sb, &["--notify-r".into()]),
                ["notify-r", "Unknown option"],
            )
        }),
        case("max-retry-interval: negative", Exits, |sb| {
            prepared(
                start(sb, &["--max-retry-interval=-0.5".into()]),
                ["\"-0.5\"", "--max-retry-interval", "0 or more"],
            )
        }),
        case("max-retry-interval: a word", Exits, |sb| {
            prepared(
                start(sb, &["--max-retry-interval".into(), "soon".into()]),
                ["\"soon\"", "max-retry-interval", "number expected"],
            )
        }),
        case("signal-on-hup: unknown name", Exits, |sb| {
            prepared(
                start(sb, &["--signal-on-hup=BOGUS".into()]),
                ["\"BOGUS\"", "--signal-on-hup", "unknown signal"],
            )
        }),
        case("signal-on-term: unknown number", Exits, |sb| {
            prepared(
                start(sb, &["--signal-on-term=99".into()]),
                ["\"99\"", "--signal-on-term", "no signal"],
            )
        }),
        case("unknown option", Exits, |sb| {
            prepared(start(sb, &["--prot=80".into()]), ["prot", "Unknown option"])
        }),
        case("ambiguous abbreviation", Exits, |sb| {
            prepared(start(sb, &["--s=x".into()]), ["Option s ", "ambiguous"])
        }),
        case("ambiguous abbreviation next to an extension", Exits, |sb| {
            prepared(
                start(sb, &["--sig=TERM".into()]),
                ["Option sig ", "ambiguous", "signal-on-hup, signal-on-term)"],
            )
        }),
        case("value given to a flag", Exits, |sb| {
            prepared(
                start(sb, &["--daemonize=1".into()]),
                ["daemonize", "does not take an argument"],
            )
        }),
        case("no program", Exits, |sb| {
            let args = vec![
                format!("--pid-file={}", sb.pid_file().display()).into(),
                format!("--port={}", sb.host_port()).into(),
            ];
            prepared(args, ["program", "not specified"])
        }),
        case("daemonize without a log file", Exits, |sb| {
            prepared(
                start(sb, &["--daemonize".into()]),
                ["--daemonize", "--log-file"],
            )
        }),
    ]);
}

#[test]
fn sockets_that_cannot_be_made_are_refused_and_leave_nothing() {
    use Outcome::Exits;
    run_cases(vec![
        case("TCP port in use", Exits, |sb| {
            let taken = TcpListener::bind(("127.0.0.1", sb.port)).expect("bind");
            let mut p = prepared(port(sb, &sb.host_port()), [sb.host_port(), "in use".into()]);
            p.keep.push(Box::new(taken));
            p
        }),
        case("UDP port in use", Exits, |sb| {
            let taken = UdpSocket::bind(("127.0.0.1", sb.port)).expect("bind");
            let value = format!("127.0.0.1:u{}", sb.port);
            let mut p = prepared(port(sb, &value), [sb.host_port(), "in use".into()]);
            p.keep.push(Box::new(taken));
            p
        }),
        case(
            "second port in use, after the first was bound",
            Exits,
            |sb| {
                let taken = TcpListener::bind(("127.0.0.1", sb.port)).expect("bind");
                let free = format!("127.0.0.1:{}", free_port());
                let args = start(
                    sb,
                    &[
                        format!("--port={free}"),
                        format!("--port={}", sb.host_port()),
                    ],
                );
                let mut p = prepared(args, [sb.host_port(), "in use".into()]);
                p.keep.push(Box::new(taken));
                p
            },
        ),
        case(
            "second path fails, after the first socket file was made",
            Exits,
            |sb| {
                let made = show(&sb.path("a.sock"));
                let bad = show(&sb.path("missing/b.sock"));
                let args = start(sb, &[format!("--path={made}"), format!("--path={bad}")]);
                prepared(args, [bad, "No such file".into()])
            },
        ),
        case("unresolvable host", Exits, |sb| {
            let value = format!("no-such-host.invalid:{}", sb.port);
            prepared(port(sb, &value), ["no-such-host.invalid", "resolve"])
        }),
        case("descriptor beyond the process's limit", Exits, |sb| {
            let value = format!("{}=1000000000", sb.host_port());
            prepared(
                port(sb, &value),
                [
                    sb.host_port(),
                    "1000000000".into(),
                    "beyond the limit of open files".into(),
                ],
            )
        }),
        case("path in a missing directory", Exits, |sb| {
            let path = show(&sb.path("missing/s.sock"));
            prepared(
                start(sb, &[format!("--path={path}")]),
                [path, "No such file".into()],
            )
        }),
        case("path is a regular file", Exits, |sb| {
            let path = show(&file(sb, "precious", "precious data\n"));
            prepared(
                start(sb, &[format!("--path={path}")]),
                [path, "in use|not a socket".into()],
            )
        }),
        case("path is a directory", Exits, |sb| {
            fs::create_dir(sb.path("adir")).expect("mkdir");
            let path = show(&sb.path("adir"));
            prepared(
                start(sb, &[format!("--path={path}")]),
                [path, "in use|not a socket".into()],
            )
        }),
        case("path too long for a socket address", Exits, |sb| {
            let path = show(&sb.path(&"x".repeat(120)));
            prepared(
                start(sb, &[format!("--path={path}")]),
                [path, "too long".into()],
            )
        }),
        case("path where another process listens", Exits, |sb| {
            let path = sb.path("live.sock");
            let live = UnixListener::bind(&path).expect("bind");
            let mut p = prepared(
                start(sb, &[format!("--path={}", show(&path))]),
                [show(&path), "another process".into()],
            );
            p.keep.push(Box::new(live));
            p
        }),
    ]);
}

#[test]
fn a_socket_path_in_an_unwritable_directory_is_refused_needs_unprivileged_user() {
    if no_unprivileged_user() {
        return;
    }
    run_cases(vec![unprivileged(
        "path in a directory we may not write",
        |sb| {
            let path = show(&sb.path("ro/s.sock"));
            prepared(
                start(sb, &[format!("--path={path}")]),
                [path, "Permission denied".into()],
            )
        },
    )]);
}

#[test]
fn a_privileged_port_is_refused_needs_unprivileged_user_and_port_80_privileged() {
    let unprivileged_start = fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(1024);
    if unprivileged_start <= 80 {
        skip(&format!(
            "ip_unprivileged_port_start is {unprivileged_start}: anybody may bind port 80 here"
        ));
        return;
    }
    if !running_as_root() && has_net_bind_capability() {
        skip("this process has CAP_NET_BIND_SERVICE, and start_server would inherit it");
        return;
    }
    if no_unprivileged_user() {
        return;
    }
    run_cases(vec![unprivileged("port below 1024", |sb| {
        prepared(
            port(sb, "127.0.0.1:80"),
            ["127.0.0.1:80", "Permission denied"],
        )
    })]);
}

/// Whether this process may bind privileged ports without being root.
fn has_net_bind_capability() -> bool {
    const CAP_NET_BIND_SERVICE: u32 = 10;
    proc_status_field(std::process::id() as i32, "CapEff")
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_NET_BIND_SERVICE) != 0)
}

#[test]
fn files_that_cannot_be_opened_are_refused_or_logged() {
    use Outcome::{Exits, Serves};
    run_cases(vec![
        case("pid file in a missing directory", Exits, |sb| {
            let path = show(&sb.path("missing/pid"));
            let args = start_program(
                sb,
                &[format!("--pid-file={path}")],
                &[test_worker_bin().into_os_string()],
            );
            prepared(args, [path, "No such file".into()])
        }),
        case("pid file is a directory", Exits, |sb| {
            fs::create_dir(sb.path("adir")).expect("mkdir");
            let path = show(&sb.path("adir"));
            prepared(
                start(sb, &[format!("--pid-file={path}")]),
                [path, "Is a directory".into()],
            )
        }),
        case("pid file locked by a running instance", Exits, |sb| {
            // The file is neither truncated nor removed: the snapshot
            // taken before the run still matches after it.
            let path = file(sb, "start_server.pid", "4242\n");
            let lock = nix::fcntl::Flock::lock(
                fs::File::open(&path).expect("open"),
                nix::fcntl::FlockArg::LockExclusiveNonblock,
            )
            .map_err(|(_, e)| e)
            .expect("lock");
            let mut p = prepared(start(sb, &[]), ["4242", "another start_server"]);
            p.keep.push(Box::new(lock));
            p
        }),
        case("log file in a missing directory", Exits, |sb| {
            let path = show(&sb.path("missing/log"));
            prepared(
                start(sb, &[format!("--log-file={path}")]),
                [path, "No such file".into()],
            )
        }),
        case("log file is a directory", Exits, |sb| {
            fs::create_dir(sb.path("adir")).expect("mkdir");
            let path = show(&sb.path("adir"));
            prepared(
                start(sb, &[format!("--log-file={path}")]),
                [path, "Is a directory".into()],
            )
        }),
        case("status file in a missing directory", Serves, |sb| {
            let path = show(&sb.path("missing/status"));
            let args = start(
                sb,
                &[
                    format!("--status-file={path}"),
                    format!("--port={}", sb.host_port()),
                ],
            );
            prepared(args, [path, "No such file".into()])
        }),
        case("status file below a regular file", Serves, |sb| {
            file(sb, "afile", "data\n");
            let path = show(&sb.path("afile/status"));
            let args = start(
                sb,
                &[
                    format!("--status-file={path}"),
                    format!("--port={}", sb.host_port()),
                ],
            );
            prepared(args, [path, "Not a directory".into()])
        }),
    ]);
}

#[test]
fn a_pid_file_in_an_unwritable_directory_is_refused_needs_unprivileged_user() {
    if no_unprivileged_user() {
        return;
    }
    run_cases(vec![unprivileged(
        "pid file in a directory we may not write",
        |sb| {
            let path = show(&sb.path("ro/pid"));
            prepared(
                start(sb, &[format!("--pid-file={path}")]),
                [path, "Permission denied".into()],
            )
        },
    )]);
}

#[test]
fn a_log_file_in_an_unwritable_directory_is_refused_needs_unprivileged_user() {
    if no_unprivileged_user() {
        return;
    }
    run_cases(vec![unprivileged(
        "log file in a directory we may not write",
        |sb| {
            let path = show(&sb.path("ro/log"));
            prepared(
                start(sb, &[format!("--log-file={path}")]),
                [path, "Permission denied".into()],
            )
        },
    )]);
}

#[test]
fn programs_and_directories_that_cannot_be_used_are_logged_at_each_attempt() {
    use Outcome::Retries;
    fn run(sb: &Sandbox, program: &Path, opts: &[String]) -> Vec<OsString> {
        start_program(sb, opts, &[program.as_os_str().to_owned()])
    }
    run_cases(vec![
        case("program missing", Retries, |sb| {
            let program = sb.path("missing-program");
            prepared(
                run(sb, &program, &[]),
                [show(&program), "No such file".into()],
            )
        }),
        case("program not executable", Retries, |sb| {
            let program = file(sb, "not-executable", "#!/bin/sh\nexit 0\n");
            prepared(
                run(sb, &program, &[]),
                [show(&program), "Permission denied".into()],
            )
        }),
        case("program is a directory", Retries, |sb| {
            fs::create_dir(sb.path("adir")).expect("mkdir");
            let program = sb.path("adir");
            prepared(
                run(sb, &program, &[]),
                [show(&program), "Permission denied".into()],
            )
        }),
        case("program not found in PATH", Retries, |sb| {
            let args = start_program(sb, &[], &words(&["no-such-program-4c2e"]));
            prepared(args, ["no-such-program-4c2e", "No such file"])
        }),
        case("dir missing", Retries, |sb| {
            let dir = show(&sb.path("nowhere"));
            prepared(
                start(sb, &[format!("--dir={dir}")]),
                [dir, "No such file".into()],
            )
        }),
        case("dir is a regular file", Retries, |sb| {
            let dir = show(&file(sb, "afile", "data\n"));
            prepared(
                start(sb, &[format!("--dir={dir}")]),
                [dir, "Not a directory".into()],
            )
        }),
    ]);
}

#[test]
fn client_modes_refuse_unusable_pid_files_without_signalling_anyone() {
    use Outcome::Exits;
    fn restart(sb: &Sandbox) -> Vec<OsString> {
        vec![
            "--restart".into(),
            format!("--pid-file={}", show(&sb.pid_file())).into(),
            format!("--status-file={}", show(&sb.status_file())).into(),
        ]
    }
    fn stop(sb: &Sandbox) -> Vec<OsString> {
        vec![
            "--stop".into(),
            format!("--pid-file={}", show(&sb.pid_file())).into(),
        ]
    }
    /// The pid file holding `content`, for `--stop` and for `--restart`.
    fn holding(sb: &Sandbox, content: &str) -> String {
        file(sb, "start_server.pid", content);
        file(sb, "start_server.status", "1:4242\n");
        show(&sb.pid_file())
    }
    run_cases(vec![
        case("restart without files", Exits, |_| {
            prepared(
                words(&["--restart"]),
                ["--pid-file", "--status-file", "requires"],
            )
        }),
        case("stop without a pid file", Exits, |_| {
            prepared(words(&["--stop"]), ["--pid-file", "requires"])
        }),
        case("restart: pid file missing", Exits, |sb| {
            prepared(restart(sb), [show(&sb.pid_file()), "No such file".into()])
        }),
        case("stop: pid file missing", Exits, |sb| {
            prepared(stop(sb), [show(&sb.pid_file()), "No such file".into()])
        }),
        case("restart: pid file empty", Exits, |sb| {
            let path = holding(sb, "");
            prepared(restart(sb), [path, "does not hold a process id".into()])
        }),
        case("stop: pid file empty", Exits, |sb| {
            let path = holding(sb, "");
            prepared(stop(sb), [path, "does not hold a process id".into()])
        }),
        case("restart: pid file holds garbage", Exits, |sb| {
            holding(sb, "garbage\n");
            prepared(restart(sb), ["garbage", "does not hold a process id"])
        }),
        case("stop: pid file holds garbage", Exits, |sb| {
            holding(sb, "\u{0}\u{1}binary\n");
            prepared(stop(sb), ["binary", "does not hold a process id"])
        }),
        // kill(2) with 0 or -1 would signal our process group or every
        // process we may signal.
        case("stop: pid file holds 0", Exits, |sb| {
            holding(sb, "0\n");
            prepared(stop(sb), ["\"0\"", "does not hold a process id"])
        }),
        case("stop: pid file holds -1", Exits, |sb| {
            holding(sb, "-1\n");
            prepared(stop(sb), ["\"-1\"", "does not hold a process id"])
        }),
        case("restart: pid file holds -1", Exits, |sb| {
            holding(sb, "-1\n");
            prepared(restart(sb), ["\"-1\"", "does not hold a process id"])
        }),
        case("restart: stale pid file (dead pid)", Exits, |sb| {
            let pid = dead_pid();
            let path = holding(sb, &format!("{pid}\n"));
            prepared(restart(sb), [path, pid.to_string(), "stale".into()])
        }),
        case("stop: stale pid file (dead pid)", Exits, |sb| {
            let pid = dead_pid();
            let path = holding(sb, &format!("{pid}\n"));
            prepared(stop(sb), [path, pid.to_string(), "stale".into()])
        }),
        // A live process that is not ours: this test process itself. Were
        // it signalled, the test binary would die with it.
        case(
            "stop: pid file names a live process that is not ours",
            Exits,
            |sb| {
                let me = std::process::id().to_string();
                let path = holding(sb, &format!("{me}\n"));
                prepared(stop(sb), [path, me, "stale".into()])
            },
        ),
        case(
            "restart: pid file names a live process that is not ours",
            Exits,
            |sb| {
                let me = std::process::id().to_string();
                let path = holding(sb, &format!("{me}\n"));
                prepared(restart(sb), [path, me, "stale".into()])
            },
        ),
        case("stop: pid file is a directory", Exits, |sb| {
            fs::create_dir(sb.pid_file()).expect("mkdir");
            prepared(stop(sb), [show(&sb.pid_file()), "Is a directory".into()])
        }),
    ]);
}

#[test]
fn pinning_onto_a_descriptor_another_of_our_sockets_holds_moves_that_socket() {
    // docs/behaviour.md section 2: a pin landing on a descriptor of ours moves ours out
    // of the way. Without pid, status or log file, the first socket gets
    // descriptor 3; the second is pinned there.
    let sb = Sandbox::new();
    let other = free_port();
    let srv = sb
        .server()
        .no_port()
        .no_pid_file()
        .no_log_file()
        .arg(format!("--port=127.0.0.1:{other}"))
        .arg(format!("--port={}=3", sb.host_port()))
        .spawn();
    let worker = srv.wait_current(1);
    let socks = worker.socks();
    assert_eq!(socks.len(), 2, "{socks:?}\n{}", srv.describe());
    assert!(socks.contains_key(&3), "{socks:?}");
    assert!(
        worker
            .port_env()
            .ends_with(&format!(";{}=3", sb.host_port())),
        "{}",
        worker.port_env()
    );
    srv.wait_serving(worker.pid);
    let body = http_get(other).expect("GET the moved socket");
    assert_eq!(answer_pid(&body), Some(worker.pid));
    srv.stop();
}

#[test]
fn a_pin_at_the_largest_descriptor_number_is_an_error_not_a_crash() {
    // With the pid file on descriptor 3, pinning one socket to 3 moves the
    // pid file's descriptor above the largest pin, here i32::MAX.
    run_cases(vec![case("pin to i32::MAX", Outcome::Exits, |sb| {
        let args = start(
            sb,
            &[
                format!("--port={}=3", sb.host_port()),
                format!("--port=127.0.0.1:{}=2147483647", free_port()),
            ],
        );
        prepared(args, ["2147483647", "descriptor"])
    })]);
}

#[test]
fn stop_refuses_a_locked_pid_file_that_names_another_process() {
    // docs/behaviour.md section 6: never a signal to a wrong process. Here some process
    // holds the pid file's lock, but the pid the file names is another one,
    // which must not be signalled.
    let sb = Sandbox::new();
    let mut bystander = Command::new("sleep")
        .arg("60")
        .env("TW_DIR", sb.tw_dir())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sleep");
    let path = file(&sb, "start_server.pid", &format!("{}\n", bystander.id()));
    let _lock = nix::fcntl::Flock::lock(
        fs::File::open(&path).expect("open"),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .map_err(|(_, e)| e)
    .expect("lock");
    let srv = sb
        .server()
        .raw_args(["--stop".to_string(), format!("--pid-file={}", show(&path))])
        .spawn();
    // Not `finish`: a client that hangs on the lock must not keep the
    // bystander from being checked.
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let alive = bystander.try_wait().expect("try_wait").is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(alive, "the bystander was signalled\n{}", srv.describe());
    assert!(
        srv.try_exit()
            .is_some_and(|s| s.code().is_some_and(|c| c != 0)),
        "expected a prompt non-zero exit\n{}",
        srv.describe()
    );
}

#[test]
fn brackets_around_anything_but_an_address_are_an_invalid_port() {
    // docs/behaviour.md section 2: brackets hold an IPv6 or IPv4 address; any other form
    // is an `invalid port` error naming the value (the reference's pattern
    // refuses `[]]:N` too).
    run_cases(vec![case("port: ] in brackets", Outcome::Exits, |sb| {
        let value = format!("[]]:{}", sb.port);
        prepared(
            port(sb, &value),
            [format!("{value:?}"), "invalid port".into()],
        )
    })]);
}

#[test]
fn paths_that_are_not_utf8_are_used_byte_for_byte() {
    // File names are bytes: a name in Latin-1 is as good as any (the
    // reference, in Perl, uses them as given).
    let sb = Sandbox::new();
    let name = |stem: &str| {
        let mut bytes = sb.dir().as_os_str().as_bytes().to_vec();
        bytes.extend_from_slice(format!("/{stem}-caf").as_bytes());
        bytes.push(0xe9);
        PathBuf::from(OsString::from_vec(bytes))
    };
    let (dir, pid_file) = (name("dir"), name("pid"));
    fs::create_dir(&dir).expect("mkdir");
    let mut dir_arg = OsString::from("--dir=");
    dir_arg.push(&dir);
    let mut pid_arg = OsString::from("--pid-file=");
    pid_arg.push(&pid_file);
    let srv = sb.server().no_pid_file().arg(dir_arg).arg(pid_arg).spawn();
    let worker = srv.wait_current(1);
    assert_eq!(
        fs::read_link(format!("/proc/{}/cwd", worker.pid)).ok(),
        Some(dir.clone()),
        "{}",
        srv.describe()
    );
    assert_eq!(
        fs::read_to_string(&pid_file).ok(),
        Some(format!("{}\n", srv.pid())),
        "{}",
        srv.describe()
    );
    srv.stop();
    assert!(!pid_file.exists());
}
