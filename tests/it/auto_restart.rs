//! Automatic restarts (docs/behaviour.md section 4, step 5), switched on by option or
//! through the envdir.

use std::fs;
use std::time::Duration;

use crate::support::*;

#[test]
fn auto_restart_restarts_after_the_interval() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .args([
            "--enable-auto-restart",
            "--auto-restart-interval=1",
            "--kill-old-delay=0",
        ])
        .spawn();
    let old = srv.wait_current(1);
    srv.wait_output("autorestart triggered (interval=1)");
    let new = srv.wait_current(2);
    srv.wait_signal(old.pid, "TERM");
    srv.wait_serving(new.pid);
}

#[test]
fn auto_restart_is_forced_when_old_workers_linger() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .args([
            "--enable-auto-restart",
            "--auto-restart-interval=1",
            "--kill-old-delay=0",
            "--signal-on-hup=USR2",
        ])
        .spawn();
    let first = srv.wait_current(1);
    srv.wait_output("autorestart triggered (interval=1)");
    srv.wait_output("autorestart triggered (forced, interval=1)");
    srv.wait_worker(3);
    assert!(pid_alive(first.pid), "USR2 does not end the test worker");
}

#[test]
fn auto_restart_switched_on_later_through_the_envdir() {
    // docs/behaviour.md section 8: the reference ignores ENABLE_AUTO_RESTART written into
    // the envdir after start-up until something else wakes it up.
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    fs::write(envdir.join("AUTO_RESTART_INTERVAL"), "1\n").expect("write");
    fs::write(envdir.join("KILL_OLD_DELAY"), "0\n").expect("write");
    let srv = sb
        .server()
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    let old = srv.wait_current(1);
    // `0` is false, as in Perl: nothing happens for a while.
    fs::write(envdir.join("ENABLE_AUTO_RESTART"), "0\n").expect("write");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !srv.output().contains("autorestart triggered"),
        "{}",
        srv.describe()
    );
    fs::write(envdir.join("ENABLE_AUTO_RESTART"), "1\n").expect("write");
    srv.wait_output("autorestart triggered (interval=1)");
    srv.wait_current(2);
    srv.wait_signal(old.pid, "TERM");
}
