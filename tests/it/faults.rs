//! Faults (docs/behaviour.md sections 3 and 4): workers that fail, crash, linger or leave
//! orphans; output and status files that cannot be written; signal storms.
//! In each, start_server keeps serving and still shuts down cleanly.
//!
//! Covered elsewhere, not repeated here: exec and chdir failures logged and
//! retried (`workers::exec_failure_is_logged_and_retried`,
//! `workers::chdir_failure_is_logged_and_the_child_exits_255`), the old
//! generation serving while new ones fail
//! (`restart::old_worker_keeps_serving_while_new_generations_fail`), TERM
//! during the start check (`restart::term_during_the_start_check_ends_it_and_shuts_down`,
//! `restart::term_or_int_during_the_first_start_check_shuts_down`) and
//! during the kill-old delay
//! (`restart::term_during_the_kill_old_delay_shuts_down_promptly`), and the
//! status file's directory removed mid-run
//! (`status_file::a_failure_to_write_the_status_file_is_survived`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// start_server has no zombie child and is still running.
fn assert_no_zombies(srv: &Server) {
    srv.wait_for("start_server to have reaped every exited child", || {
        zombie_children(srv.pid()).is_empty()
    });
    srv.assert_running();
}

/// SIGTERM, a clean exit 0, and none of its files or processes left.
fn stop_and_check_clean(srv: &Server) {
    srv.stop();
    let sb = srv.sb;
    for path in [sb.pid_file(), sb.status_file()] {
        assert!(
            !path.exists(),
            "{} left behind\n{}",
            path.display(),
            srv.describe()
        );
    }
    srv.wait_for("no process of the sandbox left", || {
        sb.marked_pids().into_iter().all(|p| !pid_alive(p))
    });
}

#[test]
fn a_worker_failing_for_many_generations_then_starting_takes_over() {
    // Generations 1 to 19 exit at once. Each is caught by the start check
    // (`seems to have failed to start`), or, on a slow machine, right after
    // it (`died unexpectedly`): either way the next generation follows.
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("0.1")
        .env("TW_FAIL_IF_GEN_BELOW", "20")
        .spawn();
    let worker = srv.wait_current(20);
    let out = srv.output();
    let failed = count_lines(&out, "seems to have failed to start, exit status:256")
        + count_lines(&out, "died unexpectedly with status:256, restarting");
    assert_eq!(failed, 19, "{}", srv.describe());
    // Counted as substrings: a worker's own stderr line, written in pieces,
    // may have one of ours glued to its end.
    assert_eq!(
        out.matches("starting new worker ").count(),
        20,
        "{}",
        srv.describe()
    );
    srv.wait_serving(worker.pid);
    assert_no_zombies(&srv);
    // The next restart is an ordinary one.
    srv.signal(Signal::SIGHUP);
    let next = srv.wait_current(21);
    srv.wait_serving(next.pid);
    stop_and_check_clean(&srv);
}

#[test]
fn an_exec_failure_ends_once_the_program_appears() {
    let sb = Sandbox::new();
    let program = sb.path("app");
    let srv = sb.server().program([&program]).spawn();
    srv.wait_output_count("seems to have failed to start, exit status:65280", 2);
    assert!(
        srv.output()
            .contains(&format!("failed to exec {}", program.display())),
        "{}",
        srv.describe()
    );
    std::os::unix::fs::symlink(test_worker_bin(), &program).expect("symlink");
    let worker = srv.wait_value("a worker once the program exists", || {
        sb.worker_reports().into_iter().next()
    });
    srv.wait_current(worker.generation());
    srv.wait_serving(worker.pid);
    stop_and_check_clean(&srv);
}

#[test]
fn a_chdir_failure_ends_once_the_directory_appears() {
    let sb = Sandbox::new();
    let dir = sb.path("later");
    let srv = sb.server().arg(format!("--dir={}", dir.display())).spawn();
    srv.wait_output_count("seems to have failed to start, exit status:65280", 2);
    assert!(
        srv.output().contains(&dir.display().to_string()),
        "the failure does not name the directory\n{}",
        srv.describe()
    );
    fs::create_dir(&dir).expect("mkdir");
    let worker = srv.wait_value("a worker once the directory exists", || {
        sb.worker_reports().into_iter().next()
    });
    assert_eq!(
        Path::new(worker.cwd()),
        dir.canonicalize().expect("realpath")
    );
    srv.wait_current(worker.generation());
    stop_and_check_clean(&srv);
}

#[test]
fn the_current_worker_killed_again_and_again_is_replaced_each_time() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    let mut killed = Vec::new();
    for generation in 1..=10 {
        let worker = srv.wait_current(generation);
        send_signal(worker.pid, Signal::SIGKILL);
        killed.push(worker.pid);
    }
    let survivor = srv.wait_current(11);
    srv.wait_serving(survivor.pid);
    let out = srv.output();
    for pid in killed {
        let line = format!("worker {pid} died unexpectedly with status:9, restarting\n");
        assert!(out.contains(&line), "no {line:?}\n{}", srv.describe());
    }
    assert_no_zombies(&srv);
    stop_and_check_clean(&srv);
}

#[test]
fn an_old_worker_ignoring_term_lingers_without_blocking_service_or_shutdown() {
    // Generation 1 ignores TERM (the envdir says so at its start); the
    // variable is gone by the time generation 2 starts.
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    fs::write(envdir.join("TW_IGNORE_TERM"), "1\n").expect("write");
    let srv = sb
        .server()
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    let old = srv.wait_current(1);
    fs::remove_file(envdir.join("TW_IGNORE_TERM")).expect("rm");
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_signal(old.pid, "TERM");
    srv.wait_status(&[(1, old.pid), (2, new.pid)]);
    srv.wait_serving(new.pid);
    assert!(pid_alive(old.pid), "{}", srv.describe());

    // Shutdown: the new one exits, the old one does not; start_server
    // waits for it, still holding its files.
    srv.signal(Signal::SIGTERM);
    srv.wait_output(&format!("worker {} died, status:0", new.pid));
    srv.wait_status(&[(1, old.pid)]);
    srv.assert_running();
    assert!(pid_file_is_locked(&sb), "{}", srv.describe());
    assert!(sb.signal_names_of(old.pid).len() >= 2);

    // Once it is gone, shutdown completes.
    send_signal(old.pid, Signal::SIGKILL);
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
    let out = srv.output();
    assert!(
        out.contains(&format!("worker {} died, status:9\n", old.pid)),
        "{}",
        srv.describe()
    );
    assert!(out.ends_with("exiting\n"), "{}", srv.describe());
    assert!(!sb.pid_file().exists() && !sb.status_file().exists());
}

#[test]
fn term_while_no_worker_is_alive_ends_at_once() {
    // Every start fails; TERM arrives between two attempts (or during
    // one), with no worker to wait for.
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("1")
        .env("TW_EXIT_IMMEDIATELY", "1")
        .spawn();
    srv.wait_output("seems to have failed to start");
    let sent = Instant::now();
    srv.signal(Signal::SIGTERM);
    let status = srv.wait_exit(TIMEOUT);
    let took = sent.elapsed();
    assert!(status.success(), "{}", srv.describe());
    assert!(
        took < Duration::from_secs(1),
        "shutdown took {took:?}\n{}",
        srv.describe()
    );
    assert!(!sb.pid_file().exists() && !sb.status_file().exists());
}

#[test]
fn a_status_directory_made_unwritable_mid_run_is_survived_and_recovered() {
    // Run as nobody, so that permissions apply (root ignores them).
    let sb = Sandbox::new();
    let open = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let run = sb.path("run");
    let sub = sb.path("sub");
    fs::create_dir(&run).expect("mkdir");
    fs::create_dir(&sub).expect("mkdir");
    let mut builder = sb.server().no_status_file().no_pid_file().no_log_file();
    if running_as_root() {
        open(sb.dir(), 0o755);
        open(&sb.tw_dir(), 0o777);
        open(&run, 0o777);
        open(&sub, 0o777);
        builder = builder.user(NOBODY.0, NOBODY.1);
    }
    let status = sub.join("status");
    let srv = builder
        .arg(format!("--status-file={}", status.display()))
        .arg(format!("--pid-file={}", run.join("pid").display()))
        .spawn();
    let first = srv.wait_worker(1);
    srv.wait_for("the first status file", || status.exists());

    open(&sub, 0o555);
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_worker(2);
    srv.wait_signal(first.pid, "TERM");
    srv.wait_output("failed to write status file");
    srv.wait_serving(second.pid);
    srv.assert_running();
    let out = srv.output();
    let line = out
        .lines()
        .find(|l| l.contains("failed to write status file"))
        .unwrap_or_default();
    assert!(
        line.contains(&status.display().to_string()) && line.contains("Permission denied"),
        "{line:?}\n{}",
        srv.describe()
    );

    // Writable again: the next change is written.
    open(&sub, 0o777);
    srv.signal(Signal::SIGHUP);
    let third = srv.wait_worker(3);
    srv.wait_for("the status file to list generation 3 alone", || {
        fs::read_to_string(&status).ok() == Some(format!("3:{}\n", third.pid))
    });
    srv.stop();
    assert!(!status.exists(), "{}", srv.describe());
    let leftovers: Vec<_> = fs::read_dir(&sub).expect("ls").flatten().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_log_file_on_dev_full_is_survived() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .no_log_file()
        .arg("--log-file=/dev/full")
        .spawn();
    let first = srv.wait_current(1);
    srv.wait_serving(first.pid);
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    send_signal(second.pid, Signal::SIGKILL);
    let third = srv.wait_current(3);
    srv.wait_serving(third.pid);
    assert_no_zombies(&srv);
    stop_and_check_clean(&srv);
}

#[test]
fn a_log_pipe_whose_reader_is_gone_is_survived() {
    let sb = Sandbox::new();
    let srv = sb.server().no_log_file().arg("--log-file=| exit 0").spawn();
    let first = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    srv.wait_serving(second.pid);
    srv.wait_gone(first.pid);
    assert_no_zombies(&srv);
    stop_and_check_clean(&srv);
}

#[test]
fn a_storm_of_a_thousand_hups_ends_in_one_generation() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    srv.wait_current(1);
    let start = Instant::now();
    for i in 0..1000u32 {
        srv.signal(Signal::SIGHUP);
        let next = start + Duration::from_millis(u64::from(i + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let storm = start.elapsed();
    // Settled: one generation in the status file, no HUP left to act on.
    let (generation, pid) = srv.wait_value("the storm to settle into one generation", || {
        let lines = sb.status_lines()?;
        let [(generation, pid)] = lines[..] else {
            return None;
        };
        let out = srv.output();
        let restarts = count_lines(&out, "received HUP, spawning a new worker");
        let switched = count_lines(&out, "new worker is now running");
        let started = out.matches("starting new worker ").count() as u64;
        (generation > 1 && restarts == switched && started == generation)
            .then_some((generation, pid))
    });
    srv.wait_serving(pid);
    let restarts = generation - 1;
    eprintln!("1000 HUPs in {storm:?}: {restarts} restarts");
    assert!(
        restarts <= 8,
        "{restarts} restarts for 1000 HUPs in {storm:?}\n{}",
        srv.describe()
    );
    assert_no_zombies(&srv);
    assert_eq!(children_of(srv.pid()), [pid], "{}", srv.describe());
    stop_and_check_clean(&srv);
}

#[test]
fn orphans_re_parented_to_start_server_are_reaped_silently() {
    // start_server is made a child subreaper, so that the orphans its
    // workers leave are re-parented to it rather than to init.
    let sb = Sandbox::new();
    let srv = sb.server().subreaper().env("TW_ORPHAN_MS", "300").spawn();
    let mut orphans = Vec::new();
    for generation in 1..=3 {
        let worker = srv.wait_current(generation);
        let orphan: i32 = srv.wait_value("the orphan's pid", || {
            fs::read_to_string(sb.tw_dir().join(format!("{}.orphan", worker.pid)))
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        if pid_alive(orphan) {
            assert_eq!(
                proc_stat_field(orphan, 4),
                Some(i64::from(srv.pid())),
                "orphan {orphan} was not re-parented to start_server\n{}",
                srv.describe()
            );
        }
        orphans.push(orphan);
        srv.signal(Signal::SIGHUP);
    }
    let last = srv.wait_current(4);
    for &orphan in &orphans {
        // Reaped: not a zombie, gone from /proc entirely.
        srv.wait_for(&format!("orphan {orphan} to be reaped"), || {
            !Path::new(&format!("/proc/{orphan}")).exists()
        });
    }
    assert_no_zombies(&srv);
    let out = srv.output();
    for orphan in orphans {
        assert!(
            !out.contains(&format!("worker {orphan} ")),
            "orphan {orphan} was logged as a worker\n{}",
            srv.describe()
        );
    }
    // Generation 4's orphan may still be sleeping; shutdown does not wait
    // for it, and no worker line names it either.
    srv.wait_serving(last.pid);
    stop_and_check_clean(&srv);
}

#[test]
fn a_huge_auto_restart_interval_from_the_environment_means_never() {
    // The option parser bounds --auto-restart-interval, but the variable
    // also comes from the environment or the envdir, unchecked: 1e30
    // seconds is a long time, not a reason to stop supervising.
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .env("ENABLE_AUTO_RESTART", "1")
        .env("AUTO_RESTART_INTERVAL", "1e30")
        .env("KILL_OLD_DELAY", "0")
        .spawn();
    let first = srv.wait_current(1);
    srv.wait_serving(first.pid);
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    srv.wait_serving(second.pid);
    srv.assert_running();
    stop_and_check_clean(&srv);
}

#[test]
fn a_huge_kill_old_delay_from_the_environment_means_never() {
    // As above, for KILL_OLD_DELAY: the old worker is kept, the new one
    // serves, and TERM still ends everything at once.
    let sb = Sandbox::new();
    let srv = sb.server().env("KILL_OLD_DELAY", "1e30").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_output("sleeping 1e30 secs before killing old workers");
    srv.wait_status(&[(1, old.pid), (2, new.pid)]);
    srv.wait_serving(new.pid);
    srv.assert_running();
    assert!(sb.signals_of(old.pid).is_empty(), "{}", srv.describe());
    stop_and_check_clean(&srv);
}

/// Whether `sig` is pending for the process (blocked and not yet delivered).
fn signal_pending(pid: i32, sig: Signal) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ShdPnd:")
                .or_else(|| l.strip_prefix("SigPnd:"))
        })
        .filter_map(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .any(|mask| mask & (1 << (sig as i32 - 1)) != 0)
}

/// Starts start_server with its log on a FIFO nobody reads yet: it locks
/// its pid file, then waits in setup for a reader. Sends `sig` there, waits
/// until start_server has either died of it or holds it pending, then lets
/// setup go on. Returns the server and a thread reading the log.
fn signal_during_setup(sb: &Sandbox, sig: Signal) -> (Server<'_>, std::thread::JoinHandle<String>) {
    let fifo = sb.path("log.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let srv = sb
        .server()
        .no_log_file()
        .arg(format!("--log-file={}", fifo.display()))
        .spawn();
    srv.wait_for("start_server to lock its pid file in setup", || {
        sb.pid_file().exists() && pid_file_is_locked(sb)
    });
    srv.signal(sig);
    srv.wait_for("the signal to be delivered or held pending", || {
        !srv.running() || signal_pending(srv.pid(), sig)
    });
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&fifo) {
            let _ = std::io::Read::read_to_string(&mut f, &mut text);
        }
        text
    });
    (srv, reader)
}

#[test]
fn a_hup_during_setup_is_acted_on_once_setup_is_done() {
    let sb = Sandbox::new();
    let (srv, reader) = signal_during_setup(&sb, Signal::SIGHUP);
    srv.assert_running();
    let first = srv.wait_worker(1);
    srv.wait_current(2);
    srv.wait_gone(first.pid);
    srv.stop();
    let log = reader.join().expect("log reader");
    assert_eq!(
        count_lines(&log, "received HUP, spawning a new worker"),
        1,
        "{log}"
    );
}

#[test]
fn a_term_during_setup_exits_cleanly_without_starting_a_worker() {
    let sb = Sandbox::new();
    let (srv, reader) = signal_during_setup(&sb, Signal::SIGTERM);
    let status = srv.wait_exit(Duration::from_secs(10));
    let log = reader.join().expect("log reader");
    assert!(status.success(), "{status:?}\n{log}\n{}", srv.describe());
    assert_eq!(
        log,
        "received TERM, sending TERM to all workers:\nexiting\n",
        "{}",
        srv.describe()
    );
    assert!(!sb.pid_file().exists(), "pid file left behind");
}
