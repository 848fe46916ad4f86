//! Upgrading start_server itself (docs/behaviour.md section 9): SIGUSR2
//! and `--upgrade` exec the binary now at the path start_server was
//! started as, in place: same pid, sockets, workers, generation, pid-file
//! lock and deadlines; and when the new binary cannot take over, nothing
//! changes but a log line.
//!
//! Each test runs its own copy of the binary from its sandbox, so that it
//! can replace, remove or break that file.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::*;

/// A copy of the binary under test in the sandbox.
pub fn installed_copy(sb: &Sandbox) -> PathBuf {
    let dir = sb.path("bin");
    fs::create_dir_all(&dir).expect("mkdir bin");
    let path = dir.join("start_server");
    fs::copy(env!("CARGO_BIN_EXE_start_server"), &path).expect("copy the binary");
    wait_executable(&path);
    path
}

/// Waits until `path` can be executed: a child that another test thread
/// forked while the copy was open for writing holds it open until that
/// child execs, and exec(2) meanwhile fails with ETXTBSY.
fn wait_executable(path: &Path) {
    wait_until(
        TIMEOUT,
        "the copied binary to be executable",
        || {
            std::process::Command::new(path)
                .arg("--version")
                .output()
                .is_ok_and(|out| out.status.success())
        },
        || path.display().to_string(),
    );
}

/// start_server run from its copy in the sandbox, with its first worker
/// current.
fn start_copy(sb: &Sandbox) -> (PathBuf, Server<'_>, WorkerReport) {
    let bin = installed_copy(sb);
    let srv = sb.server().binary(bin.clone()).spawn();
    let worker = srv.wait_current(1);
    (bin, srv, worker)
}

/// Puts a fresh copy of the binary at `path` the way a package upgrade
/// does (a new file renamed over the old one); returns its inode.
pub fn replace_binary(path: &Path) -> u64 {
    let new = path.with_extension("new");
    fs::copy(env!("CARGO_BIN_EXE_start_server"), &new).expect("copy the binary");
    fs::rename(&new, path).expect("rename over the binary");
    wait_executable(path);
    fs::metadata(path).expect("stat").ino()
}

/// Puts a script at `path` in place of the binary; it must exit 0 when
/// run with `--version`.
fn replace_with_script(path: &Path, script: &str) {
    let new = path.with_extension("new");
    fs::write(&new, script).expect("write script");
    fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::rename(&new, path).expect("rename over the binary");
    wait_executable(path);
}

/// The inode of the file process `pid` runs.
pub fn exe_inode(pid: i32) -> u64 {
    fs::metadata(format!("/proc/{pid}/exe"))
        .expect("stat /proc/PID/exe")
        .ino()
}

/// What `/proc/PID/fd/FD` links to (`socket:[N]` for a socket).
fn fd_target(pid: i32, fd: i32) -> String {
    fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

pub fn upgrade_args(sb: &Sandbox) -> Vec<String> {
    vec![
        "--upgrade".to_string(),
        format!("--pid-file={}", sb.pid_file().display()),
    ]
}

/// Requests `port` until `stop` is set, returning every failure.
fn request_until(port: u16, stop: &AtomicBool) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut failures = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match http_get(port) {
            Ok(body) if answer_pid(&body).is_some() => ok += 1,
            Ok(body) => failures.push(format!("bad answer {body:?}")),
            Err(e) => failures.push(e.to_string()),
        }
    }
    (ok, failures)
}

#[test]
fn an_upgrade_keeps_the_pid_workers_sockets_and_lock_and_refuses_no_connection() {
    let sb = Sandbox::new();
    let (bin, srv, worker) = start_copy(&sb);
    srv.wait_serving(worker.pid);
    let pid = srv.pid();
    let listen_fd: i32 = worker
        .port_env()
        .rsplit_once('=')
        .and_then(|(_, fd)| fd.parse().ok())
        .expect("SERVER_STARTER_PORT names a descriptor");
    let socket_before = fd_target(pid, listen_fd);
    assert!(socket_before.starts_with("socket:"), "{socket_before}");
    let old_inode = exe_inode(pid);

    let stop = AtomicBool::new(false);
    let (requests, out) = std::thread::scope(|scope| {
        let client = scope.spawn(|| request_until(sb.port, &stop));
        // Some requests before, during and after.
        std::thread::sleep(Duration::from_millis(100));
        let new_inode = replace_binary(&bin);
        assert_ne!(new_inode, old_inode);
        let out = srv.client(upgrade_args(&sb)).finish(TIMEOUT);
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::SeqCst);
        let requests = client.join().expect("client thread");
        assert_eq!(exe_inode(pid), new_inode, "{}", srv.describe());
        (requests, out)
    });
    out.assert_success();
    assert!(
        out.stderr
            .contains(&format!("start_server (pid:{pid}) upgraded from ")),
        "{}",
        out.describe()
    );
    let (ok, failures) = requests;
    assert!(
        failures.is_empty() && ok > 0,
        "{ok} requests answered, failures: {failures:?}\n{}",
        srv.describe()
    );
    srv.assert_running();
    let log = srv.wait_output(&format!("start_server (pid:{pid}) upgraded from "));
    assert!(
        log.contains("received USR2, upgrading start_server from "),
        "{log}"
    );
    // The same socket, the same worker, the same generation.
    assert_eq!(fd_target(pid, listen_fd), socket_before);
    assert!(pid_alive(worker.pid));
    assert!(
        sb.signals_of(worker.pid).is_empty(),
        "the worker was signalled"
    );
    assert_eq!(sb.status_lines(), Some(vec![(1, worker.pid)]));
    srv.wait_serving(worker.pid);
    // Nothing of the state left open, no leak of the exec.
    let fds: Vec<String> = open_fds(pid).iter().map(|&fd| fd_target(pid, fd)).collect();
    assert!(!fds.iter().any(|t| t.contains("memfd")), "{fds:?}");
    // The lock was never released.
    assert!(pid_file_is_locked(&sb));
    let second = sb.server().binary(bin.clone()).no_status_file().spawn();
    let refused = second.finish(TIMEOUT);
    refused.assert_failure("another start_server");

    // A HUP restarts as usual, the generation counting on; --stop stops.
    srv.signal(Signal::SIGHUP);
    let next = srv.wait_current(2);
    srv.wait_serving(next.pid);
    let env = sb.worker_env(next.pid);
    assert!(
        !env.keys().any(|k| k.starts_with("START_SERVER_UPGRADE")),
        "{env:?}"
    );
    srv.client([
        "--stop".to_string(),
        format!("--pid-file={}", sb.pid_file().display()),
    ])
    .finish(TIMEOUT)
    .assert_success();
    srv.wait_exit(TIMEOUT);
    assert!(!sb.pid_file().exists());
}

#[test]
fn usr2_alone_upgrades_and_upgrades_can_follow_each_other() {
    let sb = Sandbox::new();
    let (bin, srv, worker) = start_copy(&sb);
    for n in 1..=3 {
        let inode = replace_binary(&bin);
        srv.signal(Signal::SIGUSR2);
        srv.wait_output_count("upgraded from", n);
        srv.wait_for("the new binary to run", || exe_inode(srv.pid()) == inode);
    }
    srv.wait_serving(worker.pid);
    srv.stop();
}

/// The failures: each leaves the supervisor serving, says why in the log
/// and on `--upgrade`'s stderr, and exits that client non-zero.
fn assert_upgrade_refused(sb: &Sandbox, srv: &Server<'_>, worker: i32, reason: &str) {
    let out = srv.client(upgrade_args(sb)).finish(TIMEOUT);
    out.assert_failure(reason);
    assert!(
        out.stderr.contains("upgrade failed: ") && out.stderr.contains("carries on as before"),
        "{}",
        out.describe()
    );
    let log = srv.wait_output("upgrade failed, carrying on as before: ");
    assert!(log.contains(reason), "{log}");
    srv.assert_running();
    srv.wait_serving(worker);
    assert_eq!(sb.status_lines(), Some(vec![(1, worker)]));
    assert!(pid_file_is_locked(sb));
    // And it still restarts and stops.
    srv.signal(Signal::SIGHUP);
    srv.wait_current(2);
    srv.stop();
}

#[test]
fn a_missing_binary_cancels_the_upgrade() {
    let sb = Sandbox::new();
    let (bin, srv, worker) = start_copy(&sb);
    fs::remove_file(&bin).expect("rm");
    assert_upgrade_refused(&sb, &srv, worker.pid, "No such file or directory");
}

#[test]
fn a_binary_that_is_not_executable_cancels_the_upgrade() {
    let sb = Sandbox::new();
    let (bin, srv, worker) = start_copy(&sb);
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o644)).expect("chmod");
    if running_as_root() && fs::metadata(&bin).is_ok_and(|m| m.mode() & 0o111 != 0) {
        unreachable!("chmod did not take");
    }
    assert_upgrade_refused(&sb, &srv, worker.pid, "Permission denied");
}

#[test]
fn another_program_at_the_path_cancels_the_upgrade() {
    let sb = Sandbox::new();
    let rx = std::os::unix::net::UnixDatagram::bind(sb.path("notify.sock")).expect("bind");
    let bin = installed_copy(&sb);
    let srv = sb
        .server()
        .binary(bin.clone())
        .env("NOTIFY_SOCKET", sb.path("notify.sock"))
        .spawn();
    let worker = srv.wait_current(1);
    // It records what it was given: the running start_server's command
    // line, none of its sockets, no systemd variable.
    let seen = sb.path("probe.seen");
    replace_with_script(
        &bin,
        &format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\n\
             {{ echo \"args: $*\"; ls -l /proc/$$/fd; env; }} > {}\necho hello\n",
            seen.display()
        ),
    );
    assert_upgrade_refused(&sb, &srv, worker.pid, "it answered \"hello\"");
    let seen = fs::read_to_string(&seen).expect("the probe ran");
    assert!(
        seen.contains(&format!("args: --port=127.0.0.1:{}", sb.port)),
        "{seen}"
    );
    assert!(
        !seen.contains("socket:"),
        "the probe inherited a socket:\n{seen}"
    );
    assert!(!seen.contains("NOTIFY_SOCKET="), "{seen}");
    drop(rx);
}

#[test]
fn a_probe_that_writes_without_end_is_cut_off() {
    let sb = Sandbox::new();
    let (bin, srv, worker) = start_copy(&sb);
    replace_with_script(
        &bin,
        "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\nexec cat /dev/zero\n",
    );
    assert_upgrade_refused(&sb, &srv, worker.pid, "bytes without answering");
}

#[test]
fn a_probe_that_hangs_is_killed_and_cancels_the_upgrade() {
    let sb = Sandbox::new();
    let (bin, srv, worker) = start_copy(&sb);
    let marker = sb.path("probe.pid");
    // The probe leaves a child behind: it goes with the probe's group.
    replace_with_script(
        &bin,
        &format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\nsleep 300 &\necho $! > {}\nwait\n",
            marker.display()
        ),
    );
    let started = Instant::now();
    assert_upgrade_refused(&sb, &srv, worker.pid, "did not answer within 2 s");
    assert!(started.elapsed() >= Duration::from_secs(2));
    let sleeper: i32 = fs::read_to_string(&marker)
        .expect("the probe ran")
        .trim()
        .parse()
        .expect("pid");
    srv.wait_gone(sleeper);
}

/// Whether worker `pid` was signalled with TERM at least `at_least` and
/// less than `before` after `since` (ms since the epoch).
fn signalled_between(srv: &Server<'_>, pid: i32, since: u128, at_least: u128, before: u128) {
    let term = srv.wait_signal(pid, "TERM");
    let after = term.saturating_sub(since);
    assert!(
        after + 250 >= at_least && after < before,
        "old worker signalled {after} ms after the restart began, expected [{at_least}, {before})\n{}",
        srv.describe()
    );
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
}

/// Waits until `ms` past `since` (ms since the epoch): where the test
/// wants the upgrade to fall, not a wait for something to happen.
fn wait_past(since: u128, ms: u128) {
    while now_ms() < since + ms {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_upgrade_during_a_start_check_keeps_its_deadline() {
    let sb = Sandbox::new();
    let bin = installed_copy(&sb);
    let srv = sb.server().binary(bin.clone()).interval("4").spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    wait_past(new.written_ms, 2000);
    replace_binary(&bin);
    srv.client(upgrade_args(&sb))
        .finish(TIMEOUT)
        .assert_success();
    // Kept: TERM at 4 s after the spawn; a check started afresh by the
    // upgrade would end at 6 s or later.
    signalled_between(&srv, old.pid, new.written_ms, 4000, 5500);
    srv.wait_current(2);
    srv.stop();
}

#[test]
fn an_upgrade_during_a_kill_old_delay_keeps_its_deadline() {
    let sb = Sandbox::new();
    let bin = installed_copy(&sb);
    let srv = sb
        .server()
        .binary(bin.clone())
        .arg("--kill-old-delay=4")
        .spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_output("new worker is now running");
    let since = now_ms();
    wait_past(since, 2000);
    replace_binary(&bin);
    srv.client(upgrade_args(&sb))
        .finish(TIMEOUT)
        .assert_success();
    signalled_between(&srv, old.pid, since, 4000, 5500);
    srv.wait_current(2);
    srv.wait_serving(new.pid);
    srv.stop();
}

#[test]
fn signals_sent_with_the_upgrade_are_not_lost() {
    let sb = Sandbox::new();
    let bin = installed_copy(&sb);
    let srv = sb.server().binary(bin.clone()).spawn();
    srv.wait_current(1);
    srv.signal(Signal::SIGUSR2);
    srv.signal(Signal::SIGHUP);
    srv.wait_output("upgraded from");
    srv.wait_current(2);
    srv.signal(Signal::SIGUSR2);
    srv.signal(Signal::SIGTERM);
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
}

#[test]
fn an_upgrade_works_daemonized_with_a_log_pipe_and_an_envdir() {
    let sb = Sandbox::new();
    let bin = installed_copy(&sb);
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    fs::write(envdir.join("GREETING"), "before\n").expect("write");
    let log = sb.path("piped.log");
    let srv = sb
        .server()
        .binary(bin.clone())
        .no_log_file()
        .arg("--daemonize")
        .arg(format!("--log-file=| cat >> {}", log.display()))
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    srv.wait_exit(TIMEOUT);
    let first = srv.wait_current(1);
    let daemon = srv.wait_value("the daemon's pid", || {
        fs::read_to_string(sb.pid_file())
            .ok()?
            .trim()
            .parse::<i32>()
            .ok()
    });
    let inode = replace_binary(&bin);
    srv.client(upgrade_args(&sb))
        .finish(TIMEOUT)
        .assert_success();
    assert_eq!(exe_inode(daemon), inode);
    srv.wait_for("the upgrade line in the piped log", || {
        read_lossy(&log).contains(&format!("start_server (pid:{daemon}) upgraded from"))
    });
    fs::write(envdir.join("GREETING"), "after\n").expect("write");
    send_signal(daemon, Signal::SIGHUP);
    let second = srv.wait_current(2);
    assert_eq!(
        sb.worker_env(second.pid)
            .get("GREETING")
            .map(String::as_str),
        Some("after")
    );
    assert!(!pid_alive(first.pid) || sb.signal_names_of(first.pid) == ["TERM"]);
    srv.client([
        "--stop".to_string(),
        format!("--pid-file={}", sb.pid_file().display()),
    ])
    .finish(TIMEOUT)
    .assert_success();
    srv.wait_for("the daemon to exit", || !pid_alive(daemon));
}

#[test]
fn upgrade_needs_a_pid_file() {
    let sb = Sandbox::new();
    let out = sb.run(["--upgrade"]);
    out.assert_failure("--upgrade option requires --pid-file");
}

#[test]
fn upgrade_never_signals_a_perl_start_server_needs_reference() {
    let Some(reference) = find_reference() else {
        skip(&format!(
            "the Perl reference is not installed (apt-get install {REFERENCE_PACKAGE})"
        ));
        return;
    };
    let sb = Sandbox::new();
    let srv = sb.server().binary(reference.to_path_buf()).spawn();
    let worker = srv.wait_current(1);
    let out = srv.client(upgrade_args(&sb)).finish(TIMEOUT);
    out.assert_failure("cannot upgrade itself");
    srv.assert_running();
    srv.wait_serving(worker.pid);
    srv.stop();
}

#[test]
fn an_upgrade_keeps_the_auto_restart_deadline() {
    let sb = Sandbox::new();
    let bin = installed_copy(&sb);
    let srv = sb
        .server()
        .binary(bin.clone())
        .env("ENABLE_AUTO_RESTART", "1")
        .env("AUTO_RESTART_INTERVAL", "3")
        .env("KILL_OLD_DELAY", "0")
        .spawn();
    let first = srv.wait_current(1);
    wait_past(first.written_ms, 1500);
    replace_binary(&bin);
    srv.client(upgrade_args(&sb))
        .finish(TIMEOUT)
        .assert_success();
    // Kept: the next generation 3 s after the first; a period started
    // afresh by the upgrade would put it at 4.5 s or later.
    let second = srv.wait_worker(2);
    let after = second.written_ms.saturating_sub(first.written_ms);
    assert!(
        (2750..4250).contains(&after),
        "auto-restart {after} ms after the first generation\n{}",
        srv.describe()
    );
    srv.stop();
}

#[test]
fn a_generation_booting_across_an_upgrade_is_heard_when_ready() {
    let sb = Sandbox::new();
    let run = sb.path("run");
    fs::create_dir_all(&run).expect("mkdir run");
    let bin = installed_copy(&sb);
    let srv = sb
        .server()
        .binary(bin.clone())
        .arg("--notify-ready")
        .env("RUNTIME_DIRECTORY", &run)
        .env("TW_READY", "after:1500")
        .spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    replace_binary(&bin);
    srv.client(upgrade_args(&sb))
        .finish(TIMEOUT)
        .assert_success();
    assert!(
        sb.signals_of(old.pid).is_empty(),
        "the old worker was signalled before the new one was ready\n{}",
        srv.describe()
    );
    srv.wait_signal(old.pid, "TERM");
    srv.wait_status(&[(2, new.pid)]);
    srv.stop();
    let left: Vec<_> = fs::read_dir(&run).expect("ls run").flatten().collect();
    assert!(left.is_empty(), "{left:?}\n{}", srv.describe());
}

#[test]
fn a_failed_exec_after_a_yes_leaves_everything_as_it_was() {
    let sb = Sandbox::new();
    let (bin, srv, worker) = start_copy(&sb);
    let fds_before = open_fds(srv.pid());
    // Answers the probe as start_server would (state version 1), having
    // made itself not executable, so that the exec that follows fails.
    replace_with_script(
        &bin,
        "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\n\
         chmod a-x \"$0\"\necho 'start_server reads state version 1'\n",
    );
    let out = srv.client(upgrade_args(&sb)).finish(TIMEOUT);
    out.assert_failure("execve");
    assert!(
        out.stderr.contains("Permission denied"),
        "{}",
        out.describe()
    );
    srv.assert_running();
    srv.wait_serving(worker.pid);
    // Our own descriptors are close-on-exec again: a new worker inherits
    // only the sockets and stdio.
    srv.signal(Signal::SIGHUP);
    let next = srv.wait_current(2);
    assert_eq!(next.fds(), worker.fds(), "{}", srv.describe());
    // Nothing of the attempt is left open (the gone client's connection
    // went with the restart's first message).
    assert_eq!(open_fds(srv.pid()), fds_before, "{}", srv.describe());
    srv.stop();
}

#[test]
fn a_binary_replaced_after_it_answered_is_not_run() {
    let sb = Sandbox::new();
    let (bin, srv, worker) = start_copy(&sb);
    // Answers as start_server would, then puts something else in its place.
    replace_with_script(
        &bin,
        "#!/bin/sh\n[ \"$1\" = --version ] && exit 0\n\
         cp \"$0\" \"$0.x\" && mv \"$0.x\" \"$0\"\n\
         echo 'start_server reads state version 1'\n",
    );
    let out = srv.client(upgrade_args(&sb)).finish(TIMEOUT);
    out.assert_failure("was replaced after it answered");
    srv.assert_running();
    srv.wait_serving(worker.pid);
    srv.stop();
}
