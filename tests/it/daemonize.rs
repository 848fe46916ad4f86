//! `--daemonize` (docs/behaviour.md section 5): detaching, the pid file, stdin, errors.

use std::fs;

use crate::support::*;

/// The daemon's pid, read from the pid file.
fn daemon_pid(sb: &Sandbox) -> Option<i32> {
    fs::read_to_string(sb.pid_file())
        .ok()?
        .strip_suffix('\n')?
        .parse()
        .ok()
}

#[test]
fn daemonize_detaches_and_stop_ends_it() {
    let sb = Sandbox::new();
    let launcher = sb.server().arg("--daemonize").spawn();
    let status = launcher.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", launcher.describe());
    let pid = launcher.wait_value("the daemon's pid file", || daemon_pid(&sb));
    assert_ne!(pid, launcher.pid());
    assert!(pid_alive(pid));
    // fork, setsid, fork: in a new session, not its leader.
    let session = proc_stat_field(pid, 6).expect("session");
    assert_ne!(
        session,
        proc_stat_field(std::process::id() as i32, 6).expect("ours")
    );
    assert_ne!(session, i64::from(pid));
    let worker = launcher.wait_current(1);
    assert_eq!(worker.ppid(), pid);
    launcher.wait_serving(worker.pid);
    launcher.wait_output(&format!("starting new worker {}", worker.pid));

    let stop = launcher.client([
        "--stop".into(),
        format!("--pid-file={}", sb.pid_file().display()),
    ]);
    let out = stop.finish(TIMEOUT);
    out.assert_success();
    assert!(!pid_alive(pid) && !pid_alive(worker.pid));
    assert!(!sb.pid_file().exists());
}

#[test]
fn daemonize_returns_only_once_the_pid_file_is_written() {
    // docs/behaviour.md section 8: the reference returns 0 at once.
    let sb = Sandbox::new();
    let launcher = sb.server().arg("--daemonize").spawn();
    let status = launcher.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", launcher.describe());
    let pid = daemon_pid(&sb);
    assert!(
        pid.is_some_and(pid_alive),
        "no live daemon pid in the pid file when the launcher returned\n{}",
        launcher.describe()
    );
}

#[test]
fn daemonize_reports_a_daemon_failure_before_the_pid_file() {
    // docs/behaviour.md section 8: the reference exits 0 and leaves the error to the log.
    let sb = Sandbox::new();
    let pid_file = sb.path("no/such/dir/pid");
    let launcher = sb
        .server()
        .no_pid_file()
        .arg(format!("--pid-file={}", pid_file.display()))
        .arg("--daemonize")
        .spawn();
    let status = launcher.wait_exit(TIMEOUT);
    assert!(!status.success(), "{}", launcher.describe());
    assert!(
        launcher.output().contains(&pid_file.display().to_string()),
        "{}",
        launcher.describe()
    );
}

#[test]
fn daemon_stdin_is_dev_null() {
    let sb = Sandbox::new();
    let input = sb.path("input");
    fs::write(&input, "not for the daemon\n").expect("write");
    let launcher = sb.server().arg("--daemonize").stdin_file(input).spawn();
    launcher.wait_exit(TIMEOUT);
    let worker = launcher.wait_current(1);
    let stdin = fs::read_link(format!("/proc/{}/fd/0", worker.pid)).expect("readlink");
    assert_eq!(stdin, std::path::Path::new("/dev/null"));
}

#[test]
fn daemon_keeps_a_socket_pinned_to_fd_0() {
    let sb = Sandbox::new();
    let launcher = sb
        .server()
        .no_port()
        .arg(format!("--port={}=0", sb.host_port()))
        .arg("--daemonize")
        .spawn();
    launcher.wait_exit(TIMEOUT);
    let worker = launcher.wait_current(1);
    assert_eq!(
        worker.socks().get(&0).map(|s| s.kind.as_str()),
        Some("tcp4")
    );
    launcher.wait_serving(worker.pid);
}

#[test]
fn the_exiting_parent_leaves_the_socket_files() {
    let sb = Sandbox::new();
    let sock = sb.path("app.sock");
    let launcher = sb
        .server()
        .arg(format!("--path={}", sock.display()))
        .arg("--daemonize")
        .spawn();
    launcher.wait_exit(TIMEOUT);
    let worker = launcher.wait_current(1);
    assert!(sock.exists());
    let body = http_get_unix(&sock).expect("GET over the unix socket");
    assert_eq!(answer_pid(&body), Some(worker.pid));
}
