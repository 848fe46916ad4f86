//! `--log-file` (SPEC section 5): appending, what goes there and what stays
//! on the terminal, the `| command` form.

use std::fs;

use crate::support::*;

#[test]
fn log_file_is_appended_to_and_gets_the_lifecycle_lines() {
    let sb = Sandbox::new();
    fs::write(sb.log_file(), "an earlier line\n").expect("write");
    let srv = sb.server().spawn();
    let worker = srv.wait_current(1);
    srv.stop();
    let log = srv.log();
    assert!(log.starts_with("an earlier line\n"), "{}", srv.describe());
    assert!(log.contains(&format!("starting new worker {}\n", worker.pid)));
    assert!(log.ends_with("exiting\n"), "{}", srv.describe());
    assert!(
        !srv.stderr().contains("starting new worker"),
        "{}",
        srv.describe()
    );
}

#[test]
fn the_starting_line_goes_to_stderr() {
    for with_log in [true, false] {
        let sb = Sandbox::new();
        let builder = sb.server();
        let builder = if with_log {
            builder
        } else {
            builder.no_log_file()
        };
        let srv = builder.spawn();
        srv.wait_current(1);
        let line = format!("start_server (pid:{}) starting now...\n", srv.pid());
        assert!(srv.stderr().starts_with(&line), "{}", srv.describe());
        assert!(!srv.log().contains("starting now"), "{}", srv.describe());
    }
}

#[test]
fn worker_output_goes_to_the_log_file() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .program([
            "/bin/sh",
            "-c",
            "echo to-stdout; echo to-stderr >&2; exec \"$0\"",
            test_worker_bin().to_str().expect("utf-8 path"),
        ])
        .spawn();
    srv.wait_current(1);
    srv.wait_output("to-stdout");
    srv.wait_output("to-stderr");
    assert!(srv.log().contains("to-stdout\n") && srv.log().contains("to-stderr\n"));
    assert!(srv.stdout().is_empty(), "{}", srv.describe());
}

#[test]
fn start_server_prints_nothing_on_stdout() {
    let sb = Sandbox::new();
    let srv = sb.server().no_log_file().spawn();
    srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    srv.wait_current(2);
    srv.stop();
    assert!(srv.stdout().is_empty(), "{}", srv.describe());
    assert!(srv.stderr().contains("exiting\n"), "{}", srv.describe());
}

#[test]
fn log_file_pipe_feeds_a_command() {
    let sb = Sandbox::new();
    let piped = sb.path("piped.log");
    let srv = sb
        .server()
        .no_log_file()
        .arg(format!("--log-file=| cat >> {}", piped.display()))
        .spawn();
    let worker = srv.wait_current(1);
    srv.wait_for("the piped log", || {
        read_lossy(&piped).contains(&format!("starting new worker {}\n", worker.pid))
    });
    srv.stop();
    srv.wait_for("the pipe to drain", || {
        read_lossy(&piped).ends_with("exiting\n")
    });
    assert!(
        !srv.stderr().contains("starting new worker"),
        "{}",
        srv.describe()
    );
}

#[test]
fn log_file_pipe_tolerates_white_space_around_the_bar() {
    let sb = Sandbox::new();
    let piped = sb.path("piped.log");
    let srv = sb
        .server()
        .no_log_file()
        .arg(format!("--log-file=  |  cat >> {}", piped.display()))
        .spawn();
    let worker = srv.wait_current(1);
    srv.wait_for("the piped log", || {
        read_lossy(&piped).contains(&format!("starting new worker {}\n", worker.pid))
    });
}

#[test]
fn setup_errors_reach_the_terminal() {
    let sb = Sandbox::new();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", sb.port)).expect("bind");
    let srv = sb.server().spawn();
    srv.wait_exit(TIMEOUT);
    assert!(srv.stderr().contains(&sb.host_port()), "{}", srv.describe());
}

#[test]
fn an_unopenable_log_file_is_an_error() {
    let sb = Sandbox::new();
    let log = sb.path("no/such/dir/log");
    let out = sb
        .server()
        .no_log_file()
        .arg(format!("--log-file={}", log.display()))
        .spawn()
        .finish(TIMEOUT);
    out.assert_failure(&log.display().to_string());
    assert!(sb.worker_reports().is_empty() && !sb.pid_file().exists());
}
