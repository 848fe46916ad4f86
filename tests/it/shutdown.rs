//! Shutdown on SIGTERM and SIGINT (docs/behaviour.md section 4): who gets which signal,
//! waiting for every worker, the log lines, the files removed.

use std::time::Duration;

use crate::support::*;

#[test]
fn term_stops_the_workers_logs_and_removes_the_files() {
    let sb = Sandbox::new();
    let sock = sb.path("app.sock");
    let srv = sb
        .server()
        .arg(format!("--path={}", sock.display()))
        .spawn();
    let worker = srv.wait_current(1);
    assert!(sb.pid_file().exists() && sb.status_file().exists() && sock.exists());
    srv.stop();
    let out = srv.output();
    let expected = [
        format!("received TERM, sending TERM to all workers:{}", worker.pid),
        format!("worker {} died, status:0", worker.pid),
        "exiting".to_string(),
    ];
    let positions: Vec<Option<usize>> = expected
        .iter()
        .map(|e| out.lines().position(|l| l == e))
        .collect();
    assert!(
        positions.iter().all(Option::is_some) && positions.is_sorted(),
        "expected these lines in this order: {expected:#?}\n{}",
        srv.describe()
    );
    assert_eq!(sb.signal_names_of(worker.pid), ["TERM"]);
    assert!(!pid_alive(worker.pid));
    for path in [sb.pid_file(), sb.status_file(), sock] {
        assert!(
            !path.exists(),
            "{} left behind\n{}",
            path.display(),
            srv.describe()
        );
    }
}

#[test]
fn int_sends_term_to_the_workers() {
    let sb = Sandbox::new();
    let srv = sb.server().arg("--signal-on-term=USR1").spawn();
    let worker = srv.wait_current(1);
    srv.signal(Signal::SIGINT);
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
    assert_eq!(sb.signal_names_of(worker.pid), ["TERM"]);
    assert!(srv.output().contains(&format!(
        "received INT, sending TERM to all workers:{}\n",
        worker.pid
    )));
}

#[test]
fn signal_on_term_is_sent_on_term() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .arg("--signal-on-term=USR1")
        .env("TW_EXIT_ON", "USR1")
        .spawn();
    let worker = srv.wait_current(1);
    srv.stop();
    assert_eq!(sb.signal_names_of(worker.pid), ["USR1"]);
    assert!(srv.output().contains(&format!(
        "received TERM, sending USR1 to all workers:{}\n",
        worker.pid
    )));
}

#[test]
fn term_reaches_old_workers_too() {
    let sb = Sandbox::new();
    let srv = sb.server().arg("--signal-on-hup=USR2").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_status(&[(1, old.pid), (2, new.pid)]);
    srv.stop();
    let out = srv.output();
    let line = out
        .lines()
        .find(|l| l.starts_with("received TERM, sending TERM to all workers:"))
        .unwrap_or_else(|| panic!("no shutdown line\n{}", srv.describe()));
    let mut pids = pids_after_colon(line);
    pids.sort_unstable();
    let mut expected = vec![old.pid, new.pid];
    expected.sort_unstable();
    assert_eq!(pids, expected, "{line:?}");
    for pid in [old.pid, new.pid] {
        assert!(
            out.contains(&format!("worker {pid} died, status:0\n")),
            "{}",
            srv.describe()
        );
        assert_eq!(
            sb.signal_names_of(pid).last().map(String::as_str),
            Some("TERM")
        );
    }
    assert!(!sb.status_file().exists());
}

#[test]
fn shutdown_waits_for_every_worker_and_rewrites_the_status_file() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .arg("--signal-on-hup=USR2")
        .env("TW_IGNORE_TERM", "1")
        .spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_status(&[(1, old.pid), (2, new.pid)]);
    srv.signal(Signal::SIGTERM);
    srv.wait_signal(old.pid, "TERM");
    srv.wait_signal(new.pid, "TERM");
    // Both ignore it: start_server keeps waiting.
    std::thread::sleep(Duration::from_millis(300));
    srv.assert_running();
    send_signal(old.pid, Signal::SIGKILL);
    srv.wait_output(&format!("worker {} died, status:9", old.pid));
    srv.wait_status(&[(2, new.pid)]);
    srv.assert_running();
    send_signal(new.pid, Signal::SIGKILL);
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
    let out = srv.output();
    assert!(out.contains(&format!("worker {} died, status:9\n", new.pid)));
    assert!(out.ends_with("exiting\n"), "{}", srv.describe());
    assert!(!sb.status_file().exists() && !sb.pid_file().exists());
}

#[test]
fn alrm_is_ignored_as_under_the_reference() {
    // The reference queues SIGALRM and skips it; its default action would
    // end start_server and orphan the worker.
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    let worker = srv.wait_current(1);
    srv.signal(Signal::SIGALRM);
    // The ALRM is pending before the HUP is sent, so by the time the HUP
    // took effect start_server had run, and the ALRM had been delivered.
    srv.signal(Signal::SIGHUP);
    srv.wait_current(2);
    srv.wait_gone(worker.pid);
    srv.assert_running();
    srv.stop();
}
