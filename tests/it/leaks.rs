//! Leaks (docs/behaviour.md sections 2 and 3): thousands of restarts leave the
//! supervisor's descriptor count and memory flat, and every worker starts
//! with exactly stdio and the listening sockets, an empty signal mask and
//! only SIGPIPE ignored.
//!
//! The soak uses `sleep` as the worker: it starts in a millisecond, opens
//! nothing for long and changes no signal disposition, so `/proc/<pid>/fd`
//! and `/proc/<pid>/status` show what start_server handed it. The test
//! worker's own report of the same (taken before it opens anything) is
//! checked once more with every feature that opens a descriptor switched on.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use crate::support::*;

/// Restarts in the soak, and the one after which the baseline is taken
/// (allocators and the kernel settle during the first ones).
const RESTARTS: u64 = 2000;
const BASELINE_AT: u64 = 100;

/// How much start_server's resident set may grow between the baseline and
/// the end of the soak.
const RSS_SLACK_KIB: u64 = 256;

/// Polls `cond` every half millisecond (a restart takes a few): the 10 ms of
/// [`wait_until`] would make the soak wait more than it works.
fn poll_fast(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool, srv: &Server) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                srv.describe()
            );
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// The single `(generation, pid)` of the status file, if it lists one.
fn only_worker(sb: &Sandbox) -> Option<(u64, i32)> {
    match fs::read_to_string(sb.status_file()).ok()?.as_str() {
        "" => None,
        text => match parse_status(text)[..] {
            [only] => Some(only),
            _ => None,
        },
    }
}

/// The descriptors named in a process's `SERVER_STARTER_PORT`.
fn socket_fds_of(pid: i32) -> BTreeSet<i32> {
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let value = environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"SERVER_STARTER_PORT="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    value
        .split(';')
        .filter_map(|entry| entry.rsplit_once('=')?.1.parse().ok())
        .collect()
}

/// A signal set of `/proc/<pid>/status` (`SigBlk`, `SigIgn`), without the
/// two real-time signals glibc reserves (see `workers.rs`).
fn signal_set(pid: i32, field: &str) -> Option<u64> {
    let hex = proc_status_field(pid, field)?;
    u64::from_str_radix(&hex, 16)
        .ok()
        .map(|set| set & !(0b11 << 31))
}

/// Checks what worker `pid` was handed: descriptors 0, 1, 2 and the
/// sockets, no blocked signal, only SIGPIPE ignored. Polls briefly, since
/// `sleep` may still be in its start-up (a locale file open) when first
/// looked at.
fn assert_clean_worker(srv: &Server, pid: i32, sockets: &BTreeSet<i32>) {
    let mut expected: BTreeSet<i32> = [0, 1, 2].into();
    expected.extend(sockets);
    let state = || {
        (
            open_fds(pid).into_iter().collect::<BTreeSet<i32>>(),
            signal_set(pid, "SigBlk"),
            signal_set(pid, "SigIgn"),
        )
    };
    let want = (expected, Some(0), Some(1u64 << (libc::SIGPIPE - 1)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = state();
    while seen != want && pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        seen = state();
    }
    assert_eq!(
        seen,
        want,
        "worker {pid}: (fds, SigBlk, SigIgn)\n{}",
        srv.describe()
    );
}

#[test]
fn thousands_of_restarts_leak_no_descriptor_and_no_memory() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .arg(format!("--port=u{}", free_port()))
        .arg(format!("--path={}", sb.path("s.sock").display()))
        .program(["sleep", "3600"])
        .spawn();
    let (mut generation, first) = srv.wait_value("the first worker", || only_worker(&sb));
    assert_eq!(generation, 1);
    let sockets = socket_fds_of(first);
    assert_eq!(sockets.len(), 3, "{}", srv.describe());
    assert_clean_worker(&srv, first, &sockets);

    let started = Instant::now();
    let mut baseline = None;
    for restart in 1..=RESTARTS {
        srv.signal(Signal::SIGHUP);
        let mut current = 0;
        poll_fast(
            TIMEOUT,
            &format!("restart {restart}: one generation newer than {generation}"),
            || match only_worker(&sb) {
                Some((g, pid)) if g > generation => {
                    (generation, current) = (g, pid);
                    true
                }
                _ => false,
            },
            &srv,
        );
        // Every worker is looked at; the check costs a few /proc reads.
        assert_clean_worker(&srv, current, &sockets);
        if restart == BASELINE_AT {
            baseline = Some((settled_fds(&srv), rss_kib(srv.pid())));
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{RESTARTS} restarts in {elapsed:?} ({:.0} per second)",
        RESTARTS as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(generation, RESTARTS + 1, "{}", srv.describe());

    let (fds_then, rss_then) = baseline.expect("taken during the soak");
    // A descriptor open now for a moment (the status temp file is closed
    // just after its rename) goes; a leaked one stays.
    let mut fds_now = open_fds(srv.pid());
    let deadline = Instant::now() + Duration::from_secs(2);
    while fds_now != fds_then && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        fds_now = open_fds(srv.pid());
    }
    let rss_now = rss_kib(srv.pid());
    eprintln!(
        "start_server after {BASELINE_AT} restarts: {} fds, VmRSS {rss_then:?} KiB; \
         after {RESTARTS}: {} fds, VmRSS {rss_now:?} KiB",
        fds_then.len(),
        fds_now.len()
    );
    assert_eq!(
        fds_now,
        fds_then,
        "start_server's descriptors after {BASELINE_AT} and after {RESTARTS} restarts\n{}",
        srv.describe()
    );
    let (rss_then, rss_now) = (rss_then.expect("VmRSS"), rss_now.expect("VmRSS"));
    assert!(
        rss_now <= rss_then + RSS_SLACK_KIB,
        "start_server's VmRSS grew from {rss_then} KiB after {BASELINE_AT} restarts \
         to {rss_now} KiB after {RESTARTS}\n{}",
        srv.describe()
    );
    // Every old worker was reaped: the current one is the only child.
    srv.wait_for("no child but the current worker", || {
        children_of(srv.pid()) == [current_pid(&sb)]
    });
    srv.stop();
}

/// start_server's descriptors once the same set was seen three times in a
/// row, a millisecond apart: none held only for a moment.
fn settled_fds(srv: &Server) -> Vec<i32> {
    let mut seen = Vec::new();
    let mut same = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while same < 3 && Instant::now() < deadline {
        let now = open_fds(srv.pid());
        same = if now == seen { same + 1 } else { 0 };
        seen = now;
        std::thread::sleep(Duration::from_millis(1));
    }
    seen
}

fn current_pid(sb: &Sandbox) -> i32 {
    only_worker(sb).map_or(0, |(_, pid)| pid)
}

#[test]
fn workers_inherit_nothing_of_ours_with_every_descriptor_we_open() {
    // Pid file lock, status file writes, a log pipe, the envdir's inotify
    // descriptor, a pinned socket, UDP and unix sockets: after a restart
    // and a crash, each worker still has stdio and the sockets only, an
    // empty signal mask and only SIGPIPE ignored.
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    let srv = sb
        .server()
        .no_log_file()
        .arg(format!(
            "--log-file=| cat >> {}",
            sb.path("piped.log").display()
        ))
        .arg(format!("--envdir={}", envdir.display()))
        .arg(format!("--port=127.0.0.1:{}=9", free_port()))
        .arg(format!("--port=u{}", free_port()))
        .arg(format!("--path={}", sb.path("s.sock").display()))
        .spawn();
    let first = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    send_signal(second.pid, Signal::SIGKILL);
    let third = srv.wait_current(3);
    for worker in [first, second, third] {
        let socks = worker.socks();
        assert_eq!(socks.len(), 4, "{socks:?}\n{}", srv.describe());
        assert!(socks.contains_key(&9), "{socks:?}");
        let mut expected = vec![0, 1, 2];
        expected.extend(socks.keys());
        expected.sort_unstable();
        assert_eq!(
            worker.fds(),
            expected,
            "worker {} of generation {}\n{}",
            worker.pid,
            worker.generation(),
            srv.describe()
        );
        assert_eq!(worker.sigblk(), 0, "blocked signals of {}", worker.pid);
        assert_eq!(
            worker.sigign() & !(0b11 << 31),
            1 << (libc::SIGPIPE - 1),
            "ignored signals of {}",
            worker.pid
        );
    }
    srv.stop();
}
