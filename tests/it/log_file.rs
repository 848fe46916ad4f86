//! `--log-file` (SPEC section 5): appending, what goes there and what stays
//! on the terminal, the `| command` form.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

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

/// What a chatty worker writes: more than any pipe holds (64 KiB by default).
const FLOOD: &str = "204800";

/// Whether the pipe on `pid`'s stderr is full: no page left for a write
/// (poll(2) finds no room), seen through a descriptor of our own on the
/// same pipe (`/proc/PID/fd/2`). The worker's flood writes whole pages, so
/// no line can be merged into the last one either.
fn log_pipe_is_full(pid: i32) -> bool {
    let Ok(pipe) = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/2"))
    else {
        return false;
    };
    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO) == Ok(0)
}

/// start_server's own lines in a log that also holds the flood: `x` lines
/// left out, and a supervisor line written between two parts of a worker
/// line (the worker's long write is not atomic) freed of its `x` prefix.
fn lifecycle_lines(log: &str) -> Vec<String> {
    log.lines()
        .map(|l| l.trim_start_matches('x'))
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_log_reader_that_never_reads_stops_neither_restart_nor_stop() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .no_log_file()
        .arg("--log-file=| sleep 300")
        .env("TW_WRITE_STDOUT", FLOOD)
        .spawn();
    let first = srv.wait_current(1);
    srv.wait_for("the log pipe to fill up", || log_pipe_is_full(srv.pid()));

    srv.signal(Signal::SIGHUP);
    // Exactly generation 2: the new worker is up and the old one reaped.
    let second = srv.wait_current(2);
    assert!(!pid_alive(first.pid), "{}", srv.describe());

    let started = Instant::now();
    let stop = srv
        .client([
            "--stop".to_string(),
            format!("--pid-file={}", sb.pid_file().display()),
        ])
        .finish(TIMEOUT);
    let took = started.elapsed();
    stop.assert_success();
    assert!(
        took < Duration::from_secs(2),
        "--stop took {took:?}\n{}",
        srv.describe()
    );
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
    srv.wait_gone(second.pid);
}

#[test]
fn a_stopped_log_reader_gets_the_count_of_dropped_lines_once_resumed() {
    let sb = Sandbox::new();
    let piped = sb.path("piped.log");
    let reader_pid = sb.path("reader.pid");
    // The reader stops itself before reading anything.
    let srv = sb
        .server()
        .no_log_file()
        .arg(format!(
            "--log-file=| echo $$ > {}; kill -STOP $$; exec cat >> {}",
            reader_pid.display(),
            piped.display()
        ))
        .env("TW_WRITE_STDOUT", FLOOD)
        .spawn();
    let reader: i32 = srv.wait_value("the log reader's pid", || {
        fs::read_to_string(&reader_pid).ok()?.trim().parse().ok()
    });
    srv.wait_for("the log reader to stop", || proc_state(reader) == Some('T'));
    let first = srv.wait_current(1);
    srv.wait_for("the log pipe to fill up", || log_pipe_is_full(srv.pid()));

    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);

    send_signal(reader, Signal::SIGCONT);
    srv.wait_for("the count of dropped lines", || {
        read_lossy(&piped).contains(" log lines dropped\n")
    });
    // Once the second worker's flood is out, the pipe has room again.
    let wrote = sb.tw_dir().join(format!("{}.wrote", second.pid));
    srv.wait_for("the second worker's output", || wrote.exists());
    srv.stop();
    srv.wait_for("the pipe to drain", || {
        read_lossy(&piped).ends_with("exiting\n")
    });

    // The five lines of the restart found the pipe full: counted, then
    // reported once, before the next line.
    assert_eq!(
        lifecycle_lines(&read_lossy(&piped)),
        [
            format!("starting new worker {}", first.pid),
            "5 log lines dropped".to_string(),
            format!("received TERM, sending TERM to all workers:{}", second.pid),
            format!("worker {} died, status:0", second.pid),
            "exiting".to_string(),
        ],
        "{}",
        srv.describe()
    );
}
