//! Worker starts (docs/behaviour.md section 3): generations, the start check and its
//! retries, what a worker inherits (fds, signal state, environment, cwd),
//! exec and chdir failures, children that are not workers.

use std::fs;
use std::time::Duration;

use crate::support::*;

#[test]
fn first_worker_is_generation_1_child_of_start_server() {
    let sb = Sandbox::new();
    let srv = sb.server().no_log_file().spawn();
    let worker = srv.wait_current(1);
    assert_eq!(worker.ppid(), srv.pid());
    let env = sb.worker_env(worker.pid);
    assert_eq!(
        env.get("SERVER_STARTER_GENERATION").map(String::as_str),
        Some("1")
    );
    let body = http_get(sb.port).expect("GET");
    assert_eq!(answer_pid(&body), Some(worker.pid));
    assert_eq!(answer_generation(&body), Some(1));
    let out = srv.output();
    assert!(
        out.contains(&format!("starting new worker {}\n", worker.pid)),
        "{}",
        srv.describe()
    );
}

#[test]
fn worker_fds_are_stdio_and_the_sockets_only() {
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    let srv = sb
        .server()
        .arg(format!("--port=u{}", free_port()))
        .arg(format!("--path={}", sb.path("s.sock").display()))
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    let first = srv.wait_current(1);
    // Again after a restart, when more of our own descriptors have been used.
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    for worker in [first, second] {
        let socks = worker.socks();
        assert_eq!(socks.len(), 3, "{socks:?}");
        let mut expected = vec![0, 1, 2];
        expected.extend(socks.keys());
        expected.sort_unstable();
        assert_eq!(
            worker.fds(),
            expected,
            "worker {} fds\n{}",
            worker.pid,
            srv.describe()
        );
        assert!(socks.values().all(|s| !s.cloexec_at_start), "{socks:?}");
    }
}

/// The ignored set without signals 32 and 33: glibc reserves them for its
/// own use (its `sigaction` refuses them), and `cargo test` already runs the
/// tests with them ignored, so no supervisor linked against glibc can reset
/// them.
fn ignored_standard_signals(worker: &WorkerReport) -> u64 {
    worker.sigign() & !(0b11 << 31)
}

#[test]
fn worker_has_an_empty_signal_mask_and_only_sigpipe_ignored() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    let worker = srv.wait_current(1);
    assert_eq!(worker.sigblk(), 0, "blocked signals");
    assert_eq!(
        ignored_standard_signals(&worker),
        1 << (libc::SIGPIPE - 1),
        "ignored signals"
    );
}

#[test]
fn worker_signal_dispositions_are_reset_even_when_start_server_inherited_ignored_ones() {
    // docs/behaviour.md section 3 (every signal at its default disposition except
    // SIGPIPE); the reference passes an inherited ignored USR2 on.
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .wrapper(["/bin/sh", "-c", "trap '' USR2 HUP; exec \"$@\"", "sh"])
        .spawn();
    let worker = srv.wait_current(1);
    assert_eq!(worker.sigblk(), 0, "blocked signals");
    assert_eq!(
        ignored_standard_signals(&worker),
        1 << (libc::SIGPIPE - 1),
        "ignored signals"
    );
    // And start_server itself still restarts on SIGHUP.
    srv.signal(Signal::SIGHUP);
    srv.wait_current(2);
}

#[test]
fn worker_gets_sigrtmax_at_its_default_even_when_start_server_inherited_it_ignored() {
    // The highest signal number is the easiest to miss when resetting
    // every disposition (an exclusive range stops one short of it).
    let sb = Sandbox::new();
    let srv = sb.server().ignore_signal(libc::SIGRTMAX()).spawn();
    let supervisor_ignored = proc_status_field(srv.pid(), "SigIgn")
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .expect("start_server's SigIgn");
    let rtmax_bit = 1u64 << (libc::SIGRTMAX() - 1);
    assert_ne!(
        supervisor_ignored & rtmax_bit,
        0,
        "start_server did not inherit SIGRTMAX ignored\n{}",
        srv.describe()
    );
    let worker = srv.wait_current(1);
    assert_eq!(
        ignored_standard_signals(&worker),
        1 << (libc::SIGPIPE - 1),
        "ignored signals (SIGRTMAX is bit {})",
        libc::SIGRTMAX() - 1
    );
}

#[test]
fn worker_environment_is_ours_plus_the_starter_variables() {
    let sb = Sandbox::new();
    let srv = sb.server().env("IT_CUSTOM", "some value").spawn();
    let worker = srv.wait_current(1);
    let env = sb.worker_env(worker.pid);
    assert_eq!(env.get("IT_CUSTOM").map(String::as_str), Some("some value"));
    assert_eq!(
        env.get("SERVER_STARTER_GENERATION").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        env.get("SERVER_STARTER_PORT").map(String::as_str),
        Some(worker.port_env())
    );
    for absent in [
        "ENVDIR",
        "ENABLE_AUTO_RESTART",
        "KILL_OLD_DELAY",
        "AUTO_RESTART_INTERVAL",
    ] {
        assert!(!env.contains_key(absent), "{absent} set: {env:?}");
    }
}

#[test]
fn option_variables_are_exported_to_the_worker() {
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    let srv = sb
        .server()
        .arg(format!("--envdir={}", envdir.display()))
        .args([
            "--enable-auto-restart",
            "--auto-restart-interval=1000",
            "--kill-old-delay=0",
        ])
        .spawn();
    let worker = srv.wait_current(1);
    let env = sb.worker_env(worker.pid);
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("ENVDIR"), envdir.to_str());
    assert_eq!(get("ENABLE_AUTO_RESTART"), Some("1"));
    assert_eq!(get("AUTO_RESTART_INTERVAL"), Some("1000"));
    assert_eq!(get("KILL_OLD_DELAY"), Some("0"));
}

#[test]
fn dir_is_the_workers_working_directory() {
    let sb = Sandbox::new();
    let workdir = sb.path("workdir");
    fs::create_dir(&workdir).expect("mkdir");
    let srv = sb
        .server()
        .arg(format!("--dir={}", workdir.display()))
        .spawn();
    let worker = srv.wait_current(1);
    assert_eq!(worker.cwd(), workdir.to_str().expect("utf-8 path"));
}

#[test]
fn program_is_looked_up_in_path() {
    let sb = Sandbox::new();
    let worker_dir = test_worker_bin().parent().expect("dir").to_owned();
    let path = format!(
        "{}:{}",
        worker_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let srv = sb
        .server()
        .env("PATH", path)
        .program(["test_worker", "arg"])
        .spawn();
    let worker = srv.wait_current(1);
    assert_eq!(worker.argv(), ["test_worker", "arg"]);
}

#[test]
fn failed_starts_consume_generation_numbers() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("1")
        .env("TW_FAIL_IF_GEN_BELOW", "3")
        .spawn();
    let worker = srv.wait_current(3);
    let out = srv.output();
    let pids = started_pids(&out);
    assert_eq!(pids.len(), 3, "{}", srv.describe());
    assert_eq!(pids[2], worker.pid);
    for failed in &pids[..2] {
        let line = format!("new worker {failed} seems to have failed to start, exit status:256\n");
        assert!(out.contains(&line), "no {line:?}\n{}", srv.describe());
    }
    assert_eq!(sb.worker_env(worker.pid)["SERVER_STARTER_GENERATION"], "3");
}

#[test]
fn a_worker_that_never_starts_is_retried_once_per_interval_forever() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("1")
        .env("TW_EXIT_IMMEDIATELY", "3")
        .spawn();
    let out = srv.wait_output_count("seems to have failed to start, exit status:768", 2);
    let pids = started_pids(&out);
    assert!(pids.len() >= 2, "{}", srv.describe());
    assert!(out.contains(&format!(
        "new worker {} seems to have failed to start, exit status:768\n",
        pids[0]
    )));
    srv.assert_running();
    assert!(
        sb.status_lines().is_none_or(|l| l.is_empty()),
        "{}",
        srv.describe()
    );
}

#[test]
fn a_crash_loop_with_interval_0_is_rate_limited() {
    // docs/behaviour.md section 8: the reference forks as fast as the machine allows.
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("0")
        .env("TW_EXIT_IMMEDIATELY", "1")
        .spawn();
    srv.wait_output("starting new worker");
    std::thread::sleep(Duration::from_secs(1));
    let starts = started_pids(&srv.output()).len();
    assert!(
        starts <= 15,
        "{starts} starts in about a second\n{}",
        srv.describe()
    );
    srv.assert_running();
}

#[test]
fn exec_failure_is_logged_and_retried() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("1")
        .program(["/nonexistent/program"])
        .spawn();
    let out = srv.wait_output_count("seems to have failed to start, exit status:65280", 2);
    let line = out
        .lines()
        .find(|l| l.contains("failed to exec /nonexistent/program"))
        .unwrap_or_else(|| panic!("no exec failure line\n{}", srv.describe()));
    assert!(line.contains("No such file or directory"), "{line:?}");
    srv.assert_running();
}

#[test]
fn exec_failure_message_separates_the_os_error() {
    // docs/behaviour.md section 8: the reference prints `failed to exec PROGNo such file
    // or directory`.
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("1")
        .program(["/nonexistent/program"])
        .spawn();
    let out = srv.wait_output("seems to have failed to start");
    assert!(
        !out.contains("/nonexistent/programNo such"),
        "OS error glued to the program name\n{}",
        srv.describe()
    );
}

/// Starts a server whose workers cannot start, with a pid file, status
/// file and unix socket; checks the failed child touched none of them.
fn assert_failed_child_leaves_files_alone(sb: &Sandbox, builder: Builder) {
    let sock = sb.path("app.sock");
    let srv = builder.arg(format!("--path={}", sock.display())).spawn();
    srv.wait_output("seems to have failed to start");
    srv.assert_running();
    assert_eq!(
        fs::read_to_string(sb.pid_file()).ok(),
        Some(format!("{}\n", srv.pid())),
        "{}",
        srv.describe()
    );
    assert!(sock.exists(), "socket file removed\n{}", srv.describe());
    let body = http_get_unix(&sock);
    assert!(body.is_err(), "no worker should answer: {body:?}");
}

#[test]
fn a_child_whose_exec_failed_leaves_the_supervisors_files_alone() {
    // docs/behaviour.md section 8: the reference's child deletes them on its way out.
    let sb = Sandbox::new();
    let builder = sb.server().interval("1").program(["/nonexistent/program"]);
    assert_failed_child_leaves_files_alone(&sb, builder);
}

#[test]
fn a_child_whose_chdir_failed_leaves_the_supervisors_files_alone() {
    // docs/behaviour.md section 8: the reference's child deletes them on its way out.
    let sb = Sandbox::new();
    let builder = sb.server().interval("1").arg("--dir=/nonexistent/dir");
    assert_failed_child_leaves_files_alone(&sb, builder);
}

#[test]
fn chdir_failure_is_logged_and_the_child_exits_255() {
    // docs/behaviour.md section 8: the reference's child exits with the errno (status 512).
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("1")
        .arg("--dir=/nonexistent/dir")
        .spawn();
    let out = srv.wait_output("seems to have failed to start");
    assert!(out.contains("/nonexistent/dir"), "{}", srv.describe());
    assert!(
        out.contains("seems to have failed to start, exit status:65280\n"),
        "{}",
        srv.describe()
    );
    assert!(sb.worker_reports().is_empty());
}

#[test]
fn a_child_that_is_not_a_worker_is_reaped_silently() {
    // docs/behaviour.md section 8: the reference logs it as an old worker. The shell
    // forks `sleep` and then execs start_server, which so inherits a child.
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .wrapper([
            "/bin/sh",
            "-c",
            "sleep 0.3 & echo $! > stray.pid; exec \"$@\"",
            "sh",
        ])
        .spawn();
    let worker = srv.wait_current(1);
    let stray: i32 = srv.wait_value("stray.pid", || {
        fs::read_to_string(sb.path("stray.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    // Reaped (by start_server, its parent): gone from /proc entirely.
    srv.wait_for("the stray child to be reaped", || {
        !std::path::Path::new(&format!("/proc/{stray}")).exists()
    });
    // Let the loop turn once more, then check nothing was said about it.
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    srv.wait_output(&format!("old worker {} died", worker.pid));
    let out = srv.output();
    assert!(
        !out.contains(&format!(" {stray} ")) && !out.contains(&format!(" {stray},")),
        "the stray child {stray} was mentioned\n{}",
        srv.describe()
    );
    assert_eq!(sb.status_lines(), Some(vec![(2, second.pid)]));
}

#[test]
fn an_orphan_left_by_a_worker_does_not_disturb_the_supervisor() {
    let sb = Sandbox::new();
    let srv = sb.server().env("TW_ORPHAN_MS", "200").spawn();
    let worker = srv.wait_current(1);
    let orphan: i32 = srv.wait_value("the orphan's pid", || {
        fs::read_to_string(sb.tw_dir().join(format!("{}.orphan", worker.pid)))
            .ok()?
            .trim()
            .parse()
            .ok()
    });
    srv.wait_gone(orphan);
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    srv.wait_serving(second.pid);
    let out = srv.output();
    assert!(
        !out.contains(&format!("worker {orphan} ")),
        "{}",
        srv.describe()
    );
}
