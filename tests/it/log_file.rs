//! `--log-file` (docs/behaviour.md section 5): appending, what goes there and what stays
//! on the terminal, the `| command` form, reopening on SIGUSR1.

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
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

/// The test worker behind a shell that first prints a line naming its
/// generation on stdout (the worker's own output in the log).
fn chatty_worker() -> [String; 4] {
    [
        "/bin/sh".to_string(),
        "-c".to_string(),
        "echo \"output of generation $SERVER_STARTER_GENERATION\"; exec \"$0\"".to_string(),
        test_worker_bin().to_str().expect("utf-8 path").to_string(),
    ]
}

/// Where `pid`'s descriptor `fd` points.
fn fd_target(pid: i32, fd: i32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default()
}

#[test]
fn usr1_reopens_the_log_file_and_the_next_generation_writes_there() {
    let sb = Sandbox::new();
    let log = sb.log_file();
    let rotated = sb.path("start_server.log.1");
    let srv = sb.server().program(chatty_worker()).spawn();
    let first = srv.wait_current(1);
    srv.wait_output("output of generation 1");
    let fds_before = open_fds(srv.pid()).len();

    // What logrotate does: rename, then USR1 in postrotate.
    fs::rename(&log, &rotated).expect("rename");
    srv.signal(Signal::SIGUSR1);
    let reopened = format!("received USR1, reopened log file {}\n", log.display());
    srv.wait_for("the reopen line in a new log file", || {
        read_lossy(&log) == reopened
    });
    srv.assert_running();
    for fd in [1, 2] {
        assert_eq!(fd_target(srv.pid(), fd), log, "fd {fd}\n{}", srv.describe());
    }
    // The file opened is on 1 and 2 only; the old file is no longer ours.
    assert_eq!(open_fds(srv.pid()).len(), fds_before, "{}", srv.describe());

    // The next generation inherits the new file.
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    srv.wait_for("the second generation's lines in the new file", || {
        let new = read_lossy(&log);
        new.contains(&format!("starting new worker {}\n", second.pid))
            && new.contains("output of generation 2\n")
            && new.contains(&format!("old worker {} died", first.pid))
    });
    // The old worker got TERM for the restart, and never USR1.
    srv.wait_signal(first.pid, "TERM");
    assert_eq!(
        sb.signal_names_of(first.pid),
        ["TERM"],
        "{}",
        srv.describe()
    );
    srv.stop();
    assert_eq!(
        sb.signal_names_of(second.pid),
        ["TERM"],
        "{}",
        srv.describe()
    );

    let old = read_lossy(&rotated);
    assert!(
        old.contains(&format!("starting new worker {}\n", first.pid))
            && old.contains("output of generation 1\n"),
        "{}",
        srv.describe()
    );
    for later in ["USR1", "HUP", "generation 2", "exiting"] {
        assert!(!old.contains(later), "{later:?} in the old file\n{old}");
    }
    let new = read_lossy(&log);
    assert!(new.starts_with(&reopened), "{}", srv.describe());
    assert!(new.ends_with("exiting\n"), "{}", srv.describe());
    assert!(!new.contains("generation 1\n"), "{}", srv.describe());
}

#[test]
fn usr1_with_a_log_pipe_reopens_nothing() {
    let sb = Sandbox::new();
    let piped = sb.path("piped.log");
    let srv = sb
        .server()
        .no_log_file()
        .arg(format!("--log-file=| cat >> {}", piped.display()))
        .spawn();
    let worker = srv.wait_current(1);
    srv.signal(Signal::SIGUSR1);
    let line = "received USR1, log is a pipe, nothing to reopen\n";
    srv.wait_for("the USR1 line in the piped log", || {
        read_lossy(&piped).contains(line)
    });
    srv.signal(Signal::SIGHUP);
    srv.wait_current(2);
    srv.assert_running();
    assert_eq!(count_lines(&read_lossy(&piped), "USR1"), 1);
    srv.wait_signal(worker.pid, "TERM");
    assert_eq!(
        sb.signal_names_of(worker.pid),
        ["TERM"],
        "{}",
        srv.describe()
    );
}

#[test]
fn usr1_without_a_log_file_reopens_nothing() {
    let sb = Sandbox::new();
    let srv = sb.server().no_log_file().spawn();
    let worker = srv.wait_current(1);
    srv.signal(Signal::SIGUSR1);
    srv.wait_output("received USR1, no log file to reopen");
    srv.signal(Signal::SIGHUP);
    srv.wait_current(2);
    srv.assert_running();
    assert_eq!(count_lines(&srv.stderr(), "USR1"), 1, "{}", srv.describe());
    srv.wait_signal(worker.pid, "TERM");
    assert_eq!(
        sb.signal_names_of(worker.pid),
        ["TERM"],
        "{}",
        srv.describe()
    );
}

#[test]
fn a_log_file_that_cannot_be_reopened_stays_in_use() {
    let sb = Sandbox::new();
    fs::create_dir(sb.path("logs")).expect("mkdir");
    let log = sb.path("logs/app.log");
    let srv = sb
        .server()
        .no_log_file()
        .arg(format!("--log-file={}", log.display()))
        .program(chatty_worker())
        .spawn();
    srv.wait_current(1);
    let old = sb.path("logs.old/app.log");
    // The directory goes: the path cannot be opened again.
    fs::rename(sb.path("logs"), sb.path("logs.old")).expect("rename");
    srv.signal(Signal::SIGUSR1);
    let failed = format!(
        "received USR1, failed to reopen log file {}: No such file or directory",
        log.display()
    );
    srv.wait_for("the failure line in the old file", || {
        read_lossy(&old).contains(&failed)
    });
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    srv.wait_for("the second generation's lines in the old file", || {
        let text = read_lossy(&old);
        text.contains(&format!("starting new worker {}\n", second.pid))
            && text.contains("output of generation 2\n")
    });
    srv.assert_running();
    assert_eq!(fd_target(srv.pid(), 2), old, "{}", srv.describe());
    assert!(!log.exists() && !sb.path("logs").exists());
    srv.stop();
    assert!(read_lossy(&old).ends_with("exiting\n"));
}

#[test]
fn usr1_reopens_the_log_file_of_a_daemon() {
    let sb = Sandbox::new();
    let log = sb.log_file();
    let launcher = sb.server().arg("--daemonize").spawn();
    assert!(
        launcher.wait_exit(TIMEOUT).success(),
        "{}",
        launcher.describe()
    );
    let pid: i32 = launcher.wait_value("the daemon's pid file", || {
        fs::read_to_string(sb.pid_file()).ok()?.trim().parse().ok()
    });
    let worker = launcher.wait_current(1);
    fs::rename(&log, sb.path("start_server.log.1")).expect("rename");
    send_signal(pid, Signal::SIGUSR1);
    launcher.wait_for("the reopen line in a new log file", || {
        read_lossy(&log).contains("received USR1, reopened log file")
    });
    assert!(pid_alive(pid) && pid_alive(worker.pid));
    let stop = launcher
        .client([
            "--stop".to_string(),
            format!("--pid-file={}", sb.pid_file().display()),
        ])
        .finish(TIMEOUT);
    stop.assert_success();
    assert!(read_lossy(&log).ends_with("exiting\n"));
    assert_eq!(sb.signal_names_of(worker.pid), ["TERM"]);
}
