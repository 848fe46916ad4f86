//! Our extension options (README "Extensions", COMPATIBILITY.md): each is
//! off by default and matched by its full name only.
//!
//! - `--signal-timeout=SECS`: a worker still running SECS after its signal
//!   (an old one after a restart, any at shutdown) is sent SIGKILL, with a
//!   log line naming it; `--stop` is bounded.
//! - `--max-retry-interval=SECS`: consecutive failed starts back off,
//!   `retrying in N secs` after each; a HUP retries at once.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::*;

/// A worker that ignores TERM (the ignored disposition survives exec) and
/// takes no socket.
const STUCK: [&str; 3] = ["sh", "-c", "trap '' TERM; exec sleep 1000"];

fn stop_args(sb: &Sandbox) -> Vec<String> {
    vec![
        "--stop".into(),
        format!("--pid-file={}", sb.pid_file().display()),
    ]
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

/// The `N` of every `retrying in N secs` line, in order.
fn retry_waits(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.strip_prefix("retrying in "))
        .filter_map(|rest| rest.split_once(" secs"))
        .map(|(n, _)| n.to_string())
        .collect()
}

#[test]
fn an_old_worker_ignoring_term_is_killed_after_the_signal_timeout() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .arg("--signal-timeout=1")
        .env("TW_IGNORE_TERM", "1")
        .spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    let termed_at = srv.wait_signal(old.pid, "TERM");
    let kill_line = format!(
        "old worker {} still running 1 secs after TERM, sending KILL",
        old.pid
    );
    srv.wait_output(&kill_line);
    srv.wait_output(&format!("old worker {} died, status:9", old.pid));
    let killed_after = epoch_ms().saturating_sub(termed_at);
    assert!(
        killed_after >= 900,
        "killed {killed_after} ms after its TERM\n{}",
        srv.describe()
    );
    srv.wait_status(&[(2, new.pid)]);
    assert!(!sb.worker_exited(old.pid), "{}", srv.describe());
    // The new generation was never signalled.
    assert!(sb.signal_names_of(new.pid).is_empty());
    srv.stop();
}

#[test]
fn a_restart_client_returns_once_the_stuck_old_worker_is_killed() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .arg("--signal-timeout=0.5")
        .env("TW_IGNORE_TERM", "1")
        .spawn();
    let old = srv.wait_current(1);
    let restart = srv.client([
        "--restart".to_string(),
        format!("--pid-file={}", sb.pid_file().display()),
        format!("--status-file={}", sb.status_file().display()),
    ]);
    restart.finish(TIMEOUT).assert_success();
    assert!(!pid_alive(old.pid), "{}", srv.describe());
    assert!(srv.output().contains(&format!(
        "old worker {} still running 0.5 secs after TERM, sending KILL\n",
        old.pid
    )));
    srv.stop();
}

#[test]
fn stop_is_bounded_by_the_signal_timeout() {
    let sb = Sandbox::new();
    let srv = sb.server().arg("--signal-timeout=1").program(STUCK).spawn();
    let worker = srv.wait_value("the worker in the status file", || {
        match sb.status_lines()?.as_slice() {
            [(1, pid)] => Some(*pid),
            _ => None,
        }
    });
    // The shell has exec'd sleep, with TERM still ignored.
    srv.wait_for("the worker to be sleep", || {
        std::fs::read_to_string(format!("/proc/{worker}/comm")).is_ok_and(|c| c == "sleep\n")
    });
    let asked = Instant::now();
    let out = srv.client(stop_args(&sb)).finish(TIMEOUT);
    let took = asked.elapsed();
    out.assert_success();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "--stop took {took:?}\n{}",
        srv.describe()
    );
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
    assert!(!pid_alive(worker));
    let log = srv.output();
    let expected = [
        format!("received TERM, sending TERM to all workers:{worker}"),
        format!("worker {worker} still running 1 secs after TERM, sending KILL"),
        format!("worker {worker} died, status:9"),
        "exiting".to_string(),
    ];
    let positions: Vec<Option<usize>> = expected
        .iter()
        .map(|e| log.lines().position(|l| l == e))
        .collect();
    assert!(
        positions.iter().all(Option::is_some) && positions.is_sorted(),
        "expected these lines in this order: {expected:#?}\n{}",
        srv.describe()
    );
    assert!(!sb.pid_file().exists() && !sb.status_file().exists());
}

#[test]
fn failed_starts_back_off_doubling_up_to_the_cap() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("0.2")
        .arg("--max-retry-interval=1")
        .program(["sh", "-c", "exit 3"])
        .spawn();
    let log = srv.wait_output_count("retrying in ", 5);
    assert_eq!(
        retry_waits(&log)[..5],
        ["0.2", "0.4", "0.8", "1", "1"],
        "{}",
        srv.describe()
    );
    // Each right after the reference's line, counting the failures.
    let lines: Vec<&str> = log.lines().collect();
    for (k, i) in lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("retrying in "))
        .map(|(i, _)| i)
        .enumerate()
        .take(5)
    {
        assert!(
            lines[i - 1].starts_with("new worker ")
                && lines[i - 1].ends_with("seems to have failed to start, exit status:768"),
            "{:?} before {:?}\n{}",
            lines[i - 1],
            lines[i],
            srv.describe()
        );
        let starts = if k == 0 { "start" } else { "starts" };
        assert!(
            lines[i].ends_with(&format!(" secs ({} failed {starts} in a row)", k + 1)),
            "{:?}",
            lines[i]
        );
    }
    assert!(sb.status_lines().is_none(), "{}", srv.describe());
    srv.stop();
}

#[test]
fn without_a_max_retry_interval_there_is_no_retry_line() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("0.1")
        .program(["sh", "-c", "exit 3"])
        .spawn();
    let log = srv.wait_output_count("seems to have failed to start", 3);
    assert!(!log.contains("retrying in"), "{}", srv.describe());
    srv.stop();
}

#[test]
fn a_hup_during_a_backoff_wait_retries_at_once() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("0.5")
        .arg("--max-retry-interval=30")
        .env("TW_FAIL_IF_GEN_BELOW", "4")
        .spawn();
    srv.wait_output("retrying in 2 secs (3 failed starts in a row)");
    let hup_at = Instant::now();
    srv.signal(Signal::SIGHUP);
    // The next attempt comes at once, not 2 s after the failure.
    srv.wait_for_within(
        Duration::from_millis(1500),
        "the retry after the HUP",
        || count_lines(&srv.output(), "starting new worker ") >= 4,
    );
    let retried_after = hup_at.elapsed();
    let worker = srv.wait_current(4);
    srv.wait_serving(worker.pid);
    assert!(
        retried_after < Duration::from_millis(1500),
        "{retried_after:?}"
    );
    srv.stop();
}

#[test]
fn extension_names_take_no_part_in_abbreviations() {
    let sb = Sandbox::new();
    let port = format!("--port={}", sb.host_port());
    for (option, message) in [
        (
            "--sig=TERM",
            "Option sig is ambiguous (signal-on-hup, signal-on-term)",
        ),
        ("--signal-t=5", "Unknown option: signal-t"),
        ("--max-retry=1", "Unknown option: max-retry"),
    ] {
        let out = sb.run([
            port.as_str(),
            option,
            "--",
            test_worker_bin().to_str().expect("utf-8 path"),
        ]);
        out.assert_usage_error(message);
        assert!(
            sb.worker_reports().is_empty(),
            "{option}: a worker started\n{}",
            out.describe()
        );
    }
    // The full names, in any case, with the value as a separate word.
    let srv = sb
        .server()
        .args(["--SIGNAL-TIMEOUT", "2", "--Max-Retry-Interval", "0.5"])
        .spawn();
    srv.wait_current(1);
    srv.stop();
}
