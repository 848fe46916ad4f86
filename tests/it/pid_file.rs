//! The pid file (docs/behaviour.md section 5): content, lock, removal, second instances.

use std::fs;

use crate::support::*;

#[test]
fn pid_file_holds_our_pid_under_an_exclusive_lock() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    srv.wait_current(1);
    assert_eq!(
        fs::read_to_string(sb.pid_file()).ok(),
        Some(format!("{}\n", srv.pid()))
    );
    assert!(pid_file_is_locked(&sb), "{}", srv.describe());
    srv.stop();
    assert!(!sb.pid_file().exists());
}

#[test]
fn a_second_instance_with_the_same_pid_file_refuses_and_leaves_it_intact() {
    // docs/behaviour.md section 8: the reference truncates the file, then blocks on the
    // lock.
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    let worker = srv.wait_current(1);
    let other = Sandbox::new();
    let out = other
        .server()
        .no_pid_file()
        .arg(format!("--pid-file={}", sb.pid_file().display()))
        .spawn()
        .finish(TIMEOUT);
    out.assert_failure(&srv.pid().to_string());
    assert_eq!(
        fs::read_to_string(sb.pid_file()).ok(),
        Some(format!("{}\n", srv.pid()))
    );
    assert!(other.worker_reports().is_empty(), "{}", out.describe());
    assert!(pid_file_is_locked(&sb));
    srv.assert_running();
    srv.wait_serving(worker.pid);
}

#[test]
fn no_pid_file_is_left_after_a_setup_error() {
    let sb = Sandbox::new();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", sb.port)).expect("bind");
    let out = sb.server().spawn().finish(TIMEOUT);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(!sb.pid_file().exists() && !sb.status_file().exists());
}

#[test]
fn a_pid_file_that_is_not_a_regular_file_is_never_removed() {
    // A FIFO stands for a device (`--pid-file=/dev/null`): written to,
    // locked, but never unlinked, whatever happens.
    let sb = Sandbox::new();
    let fifo = sb.path("pid.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let out = sb
        .server()
        .no_pid_file()
        .arg(format!("--pid-file={}", fifo.display()))
        .spawn()
        .finish(TIMEOUT);
    let kind = std::fs::symlink_metadata(&fifo).map(|m| m.file_type());
    assert!(
        kind.as_ref()
            .is_ok_and(std::os::unix::fs::FileTypeExt::is_fifo),
        "the FIFO given as the pid file is gone ({kind:?})\n{}",
        out.describe()
    );
}
