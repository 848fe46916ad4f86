//! `--envdir` (docs/behaviour.md sections 1 and 3): daemontools-style variables, re-read
//! for every generation.

use std::fs;

use crate::support::*;

#[test]
fn envdir_variables_reach_the_worker() {
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    fs::write(envdir.join("IT_FROM_ENVDIR"), "hello\n").expect("write");
    fs::write(envdir.join("IT_MULTI_LINE"), "first\nsecond\n").expect("write");
    fs::write(envdir.join(".hidden"), "no\n").expect("write");
    let srv = sb
        .server()
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    let worker = srv.wait_current(1);
    let env = sb.worker_env(worker.pid);
    assert_eq!(env.get("IT_FROM_ENVDIR").map(String::as_str), Some("hello"));
    assert_eq!(env.get("IT_MULTI_LINE").map(String::as_str), Some("first"));
    assert!(!env.contains_key(".hidden"));
    assert_eq!(env.get("ENVDIR").map(String::as_str), envdir.to_str());
}

#[test]
fn envdir_given_through_the_environment() {
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    fs::write(envdir.join("IT_FROM_ENVDIR"), "via ENVDIR\n").expect("write");
    let srv = sb.server().env("ENVDIR", &envdir).spawn();
    let worker = srv.wait_current(1);
    let env = sb.worker_env(worker.pid);
    assert_eq!(
        env.get("IT_FROM_ENVDIR").map(String::as_str),
        Some("via ENVDIR")
    );
}

#[test]
fn a_variable_added_later_reaches_the_next_generation() {
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    let srv = sb
        .server()
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    let first = srv.wait_current(1);
    fs::write(envdir.join("IT_ADDED"), "later\n").expect("write");
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    assert!(!sb.worker_env(first.pid).contains_key("IT_ADDED"));
    assert_eq!(
        sb.worker_env(second.pid)
            .get("IT_ADDED")
            .map(String::as_str),
        Some("later")
    );
    // A changed value is re-read too.
    fs::write(envdir.join("IT_ADDED"), "changed\n").expect("write");
    srv.signal(Signal::SIGHUP);
    let third = srv.wait_current(3);
    assert_eq!(
        sb.worker_env(third.pid).get("IT_ADDED").map(String::as_str),
        Some("changed")
    );
    // And one added then removed is gone again.
    fs::remove_file(envdir.join("IT_ADDED")).expect("rm");
    srv.signal(Signal::SIGHUP);
    let fourth = srv.wait_current(4);
    assert!(!sb.worker_env(fourth.pid).contains_key("IT_ADDED"));
}

#[test]
fn a_variable_removed_from_the_envdir_disappears() {
    // docs/behaviour.md section 8: the reference keeps a variable that was there at
    // start-up.
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    fs::write(envdir.join("IT_REMOVED"), "at start\n").expect("write");
    let srv = sb
        .server()
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    let first = srv.wait_current(1);
    assert_eq!(
        sb.worker_env(first.pid)
            .get("IT_REMOVED")
            .map(String::as_str),
        Some("at start")
    );
    fs::remove_file(envdir.join("IT_REMOVED")).expect("rm");
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    let env = sb.worker_env(second.pid);
    assert!(!env.contains_key("IT_REMOVED"), "{env:?}");
}

#[test]
fn kill_old_delay_is_read_from_the_envdir() {
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    let srv = sb
        .server()
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    srv.wait_current(1);
    fs::write(envdir.join("KILL_OLD_DELAY"), "1\n").expect("write");
    srv.signal(Signal::SIGHUP);
    srv.wait_output("sleeping 1 secs before killing old workers");
}

#[test]
fn each_start_attempt_reads_the_envdir() {
    // docs/behaviour.md section 3 ("read at that moment"): the reference reads the
    // envdir once per turn of its loop, so its retries after a failed start
    // never see a fix written into the envdir.
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    fs::write(envdir.join("TW_EXIT_IMMEDIATELY"), "1\n").expect("write");
    let srv = sb
        .server()
        .interval("1")
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    srv.wait_output("seems to have failed to start, exit status:256");
    fs::remove_file(envdir.join("TW_EXIT_IMMEDIATELY")).expect("rm");
    let worker = srv.wait_value("a generation that starts", || {
        let report = sb.worker_reports().pop()?;
        (sb.status_lines()? == vec![(report.generation(), report.pid)]).then_some(report)
    });
    srv.wait_serving(worker.pid);
}
