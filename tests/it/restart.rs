//! Restarts (docs/behaviour.md section 4): on SIGHUP, after a crash; the order of the
//! switch, `--signal-on-hup`, `--kill-old-delay`, HUP coalescing, signals
//! during the start check and the delay.

use std::fs;
use std::time::{Duration, Instant};

use crate::support::*;

/// Margin for timing comparisons between our clock readings and the
/// worker's.
const SLACK_MS: u128 = 250;

#[test]
fn hup_starts_a_new_generation_before_signalling_the_old_one() {
    let sb = Sandbox::new();
    let srv = sb.server().interval("1").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    let term_ms = srv.wait_signal(old.pid, "TERM");
    assert!(
        term_ms + SLACK_MS >= new.written_ms + 1000,
        "old worker signalled {} ms after the new one started, before --interval=1 passed\n{}",
        term_ms as i128 - new.written_ms as i128,
        srv.describe()
    );
    srv.wait_current(2);
    srv.wait_serving(new.pid);
    let out = srv.wait_output(&format!("old worker {} died, status:0", old.pid));
    let expected = [
        "received HUP, spawning a new worker".to_string(),
        format!("starting new worker {}", new.pid),
        format!(
            "new worker is now running, sending TERM to old workers:{}",
            old.pid
        ),
        "killing old workers".to_string(),
        format!("old worker {} died, status:0", old.pid),
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
    assert_eq!(sb.signal_names_of(old.pid), ["TERM"]);
    assert!(sb.signals_of(new.pid).is_empty());
}

#[test]
fn generations_count_up_with_each_restart() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    for generation in 1..=4 {
        let worker = srv.wait_current(generation);
        let body = srv.wait_value("an answer from the current generation", || {
            http_get(sb.port)
                .ok()
                .filter(|b| answer_pid(b) == Some(worker.pid))
        });
        assert_eq!(answer_generation(&body), Some(generation as i32));
        if generation < 4 {
            srv.signal(Signal::SIGHUP);
        }
    }
}

#[test]
fn old_worker_that_ignores_the_signal_stays_listed_in_the_status_file() {
    let sb = Sandbox::new();
    let srv = sb.server().arg("--signal-on-hup=USR2").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_signal(old.pid, "USR2");
    srv.wait_status(&[(1, old.pid), (2, new.pid)]);
    assert_eq!(
        sb.status_text(),
        Some(format!("1:{}\n2:{}\n", old.pid, new.pid))
    );
    assert!(pid_alive(old.pid));
    srv.wait_serving(new.pid);
    assert!(srv.output().contains(&format!(
        "new worker is now running, sending USR2 to old workers:{}\n",
        old.pid
    )));
    // Both lingering generations are old at the next restart.
    srv.signal(Signal::SIGHUP);
    let newest = srv.wait_worker(3);
    srv.wait_status(&[(1, old.pid), (2, new.pid), (3, newest.pid)]);
    let running = "new worker is now running, sending USR2 to old workers:";
    let out = srv.wait_output_count(running, 2);
    let line = out
        .lines()
        .filter(|l| l.starts_with(running))
        .nth(1)
        .expect("counted")
        .to_string();
    let mut pids = pids_after_colon(&line);
    pids.sort_unstable();
    let mut expected = vec![old.pid, new.pid];
    expected.sort_unstable();
    assert_eq!(pids, expected, "{line:?}");
    srv.wait_signal(new.pid, "USR2");
    srv.wait_for("a second USR2 to the first generation", || {
        sb.signal_names_of(old.pid) == ["USR2", "USR2"]
    });
}

#[test]
fn signal_on_hup_is_sent_to_the_old_worker() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .arg("--signal-on-hup=USR1")
        .env("TW_EXIT_ON", "USR1")
        .spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    srv.wait_current(2);
    srv.wait_signal(old.pid, "USR1");
    srv.wait_gone(old.pid);
    assert_eq!(sb.signal_names_of(old.pid), ["USR1"]);
    srv.wait_output(&format!("sending USR1 to old workers:{}", old.pid));
}

#[test]
fn signal_names_are_case_insensitive_with_or_without_sig_or_numeric() {
    for name in ["usr1", "SIGUSR1", "sigUsr1", "10"] {
        let sb = Sandbox::new();
        let srv = sb
            .server()
            .arg(format!("--signal-on-hup={name}"))
            .env("TW_EXIT_ON", "USR1")
            .spawn();
        let old = srv.wait_current(1);
        srv.signal(Signal::SIGHUP);
        srv.wait_current(2);
        srv.wait_signal(old.pid, "USR1");
        assert_eq!(
            sb.signal_names_of(old.pid),
            ["USR1"],
            "--signal-on-hup={name}"
        );
    }
}

#[test]
fn old_worker_keeps_serving_while_new_generations_fail() {
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    let srv = sb
        .server()
        .interval("1")
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    let old = srv.wait_current(1);
    // Generations 2 and 3 exit at once; 4 stays.
    fs::write(envdir.join("TW_FAIL_IF_GEN_BELOW"), "4\n").expect("write envdir");
    srv.signal(Signal::SIGHUP);
    srv.wait_output_count("seems to have failed to start, exit status:256", 2);
    // Generation 4 is in its start check for another second.
    assert!(sb.signals_of(old.pid).is_empty(), "{}", srv.describe());
    assert_eq!(sb.status_lines(), Some(vec![(1, old.pid)]));
    let body = http_get(sb.port).expect("GET");
    assert_eq!(answer_pid(&body), Some(old.pid));
    // Once a generation starts, the old one goes.
    let new = srv.wait_current(4);
    srv.wait_signal(old.pid, "TERM");
    srv.wait_serving(new.pid);
}

#[test]
fn hups_during_a_restart_cause_one_more_restart() {
    // docs/behaviour.md section 8: the reference restarts once per SIGHUP.
    let sb = Sandbox::new();
    let srv = sb.server().interval("1").spawn();
    srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    srv.wait_worker(2);
    // Two more while generation 2 is in its start check, far enough apart
    // that the kernel does not merge them into one pending signal.
    srv.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(150));
    srv.signal(Signal::SIGHUP);
    let third = srv.wait_current(3);
    // Watch for a fourth generation for twice the start interval.
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        assert!(
            started_pids(&srv.output()).len() <= 3,
            "a fourth generation was started\n{}",
            srv.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sb.status_lines(), Some(vec![(3, third.pid)]));
}

#[test]
fn hup_during_the_start_check_does_not_shorten_it() {
    // docs/behaviour.md section 8: in the reference the signal cuts the check short.
    let sb = Sandbox::new();
    let srv = sb.server().interval("2").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.signal(Signal::SIGHUP);
    let term_ms = srv.wait_signal(old.pid, "TERM");
    assert!(
        term_ms + SLACK_MS >= new.written_ms + 2000,
        "old worker signalled {} ms after the new one started (--interval=2)\n{}",
        term_ms as i128 - new.written_ms as i128,
        srv.describe()
    );
}

#[test]
fn term_during_the_start_check_ends_it_and_shuts_down() {
    let sb = Sandbox::new();
    let srv = sb.server().interval("5").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    let sent = Instant::now();
    srv.signal(Signal::SIGTERM);
    let status = srv.wait_exit(Duration::from_secs(4));
    assert!(status.success(), "{}", srv.describe());
    assert!(sent.elapsed() < Duration::from_secs(4));
    for pid in [old.pid, new.pid] {
        assert!(
            sb.signal_names_of(pid).contains(&"TERM".to_string()),
            "{}",
            srv.describe()
        );
        assert!(!pid_alive(pid));
    }
}

#[test]
fn term_or_int_during_the_first_start_check_shuts_down() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let sb = Sandbox::new();
        let srv = sb.server().interval("5").spawn();
        let worker = srv.wait_worker(1);
        srv.signal(signal);
        let status = srv.wait_exit(Duration::from_secs(4));
        assert!(status.success(), "{}", srv.describe());
        assert_eq!(sb.signal_names_of(worker.pid), ["TERM"]);
        assert!(!pid_alive(worker.pid));
    }
}

#[test]
fn kill_old_delay_postpones_the_signal_to_old_workers() {
    let sb = Sandbox::new();
    let srv = sb.server().arg("--kill-old-delay=1").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_output("sleeping 1 secs before killing old workers");
    let term_ms = srv.wait_signal(old.pid, "TERM");
    assert!(
        term_ms + SLACK_MS >= new.written_ms + 1000,
        "old worker signalled {} ms after the new one started (--kill-old-delay=1)\n{}",
        term_ms as i128 - new.written_ms as i128,
        srv.describe()
    );
    let out = srv.wait_output("killing old workers");
    let sleeping = out
        .lines()
        .position(|l| l == "sleeping 1 secs before killing old workers");
    let killing = out.lines().position(|l| l == "killing old workers");
    assert!(sleeping < killing, "{}", srv.describe());
}

#[test]
fn kill_old_delay_is_read_from_the_environment() {
    let sb = Sandbox::new();
    let srv = sb.server().env("KILL_OLD_DELAY", "1").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    srv.wait_output("sleeping 1 secs before killing old workers");
    srv.wait_signal(old.pid, "TERM");
}

#[test]
fn kill_old_delay_defaults_to_5_with_auto_restart() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .args(["--enable-auto-restart", "--auto-restart-interval=1000"])
        .spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    srv.wait_output("sleeping 5 secs before killing old workers");
    assert!(sb.signals_of(old.pid).is_empty());
}

#[test]
fn term_during_the_kill_old_delay_shuts_down_promptly() {
    // docs/behaviour.md section 8: the reference waits for the delay to end.
    let sb = Sandbox::new();
    let srv = sb.server().arg("--kill-old-delay=5").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_output("sleeping 5 secs before killing old workers");
    let sent = Instant::now();
    srv.signal(Signal::SIGTERM);
    let status = srv.wait_exit(TIMEOUT);
    let took = sent.elapsed();
    assert!(status.success(), "{}", srv.describe());
    assert!(
        took < Duration::from_secs(2),
        "shutdown took {took:?}\n{}",
        srv.describe()
    );
    for pid in [old.pid, new.pid] {
        assert!(!pid_alive(pid), "worker {pid} left running");
    }
}

#[test]
fn a_signal_during_the_kill_old_delay_does_not_shorten_it() {
    // docs/behaviour.md section 8: in the reference any signal cuts a second off.
    let sb = Sandbox::new();
    let srv = sb.server().arg("--kill-old-delay=2").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_output("sleeping 2 secs before killing old workers");
    srv.signal(Signal::SIGHUP);
    let term_ms = srv.wait_signal(old.pid, "TERM");
    assert!(
        term_ms + SLACK_MS >= new.written_ms + 2000,
        "old worker signalled {} ms after the new one started (--kill-old-delay=2)\n{}",
        term_ms as i128 - new.written_ms as i128,
        srv.describe()
    );
    // The HUP was kept for later: one more restart follows.
    srv.wait_worker(3);
}

#[test]
fn a_crashed_worker_is_restarted() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    let first = srv.wait_current(1);
    send_signal(first.pid, Signal::SIGKILL);
    srv.wait_output(&format!(
        "worker {} died unexpectedly with status:9, restarting",
        first.pid
    ));
    let second = srv.wait_current(2);
    srv.wait_serving(second.pid);
}

#[test]
fn a_worker_exiting_on_its_own_is_restarted_with_its_status_logged() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .env("TW_EXIT_AFTER_MS", "300")
        .env("TW_EXIT_CODE", "3")
        .spawn();
    let first = srv.wait_worker(1);
    srv.wait_output(&format!(
        "worker {} died unexpectedly with status:768, restarting",
        first.pid
    ));
    srv.wait_worker(2);
}

#[test]
fn a_burst_of_hups_becomes_one_restart() {
    // docs/behaviour.md section 8: the reference restarts once per SIGHUP. Ours starts
    // at the first HUP; the rest, arriving during its start check, make
    // one more restart after it, whose worker starts after the last HUP.
    let sb = Sandbox::new();
    let srv = sb.server().interval("1").spawn();
    let old = srv.wait_current(1);
    for _ in 0..50 {
        srv.signal(Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(1));
    }
    srv.wait_current(2);
    srv.wait_gone(old.pid);
    // Watch for more generations for longer than a start interval. One
    // restart is expected; a sender descheduled mid-burst may split it in
    // two, but never into one per HUP.
    let deadline = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < deadline {
        assert!(
            started_pids(&srv.output()).len() <= 3,
            "a burst of 50 HUPs caused more than two restarts\n{}",
            srv.describe()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sb.status_lines().map(|l| l.len()), Some(1));
}
