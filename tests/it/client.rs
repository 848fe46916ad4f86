//! Client modes (docs/behaviour.md section 6): `--restart` and `--stop`, and their errors.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn restart_args(sb: &Sandbox) -> Vec<String> {
    vec![
        "--restart".into(),
        format!("--pid-file={}", sb.pid_file().display()),
        format!("--status-file={}", sb.status_file().display()),
    ]
}

fn stop_args(sb: &Sandbox) -> Vec<String> {
    vec![
        "--stop".into(),
        format!("--pid-file={}", sb.pid_file().display()),
    ]
}

/// A pid that belonged to a process of ours that has exited.
fn dead_pid() -> i32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id() as i32;
    child.wait().expect("wait");
    pid
}

/// A live process that is not a start_server and holds no lock; killed and
/// reaped on drop.
struct Bystander(std::process::Child);

impl Bystander {
    fn start(sb: &Sandbox) -> Bystander {
        let child = Command::new("sleep")
            .arg("60")
            .env("TW_DIR", sb.tw_dir())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        Bystander(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn still_running(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn restart_returns_once_the_new_generation_alone_is_running() {
    let sb = Sandbox::new();
    let srv = sb.server().interval("1").spawn();
    let old = srv.wait_current(1);
    let out = srv.client(restart_args(&sb)).finish(TIMEOUT);
    out.assert_success();
    let status = sb.status_lines().expect("status file");
    assert_eq!(status.len(), 1, "{status:?}\n{}", srv.describe());
    assert_eq!(status[0].0, 2);
    assert!(sb.signal_names_of(old.pid).contains(&"TERM".to_string()));
    srv.wait_serving(status[0].1);
}

#[test]
fn restart_notices_the_switch_promptly() {
    // docs/behaviour.md section 6: the reference polls once a second.
    let sb = Sandbox::new();
    let srv = sb.server().interval("1").spawn();
    let old = srv.wait_current(1);
    let client = srv.client(restart_args(&sb));
    let switched = srv.wait_value("the switch", || {
        let lines = sb.status_lines()?;
        (lines.len() == 1 && lines[0].0 == 2).then(Instant::now)
    });
    client.wait_exit(TIMEOUT);
    let lag = switched.elapsed();
    assert!(
        lag < Duration::from_millis(700),
        "--restart returned {lag:?} after the switch"
    );
    assert!(!pid_alive(old.pid) || sb.signal_names_of(old.pid).contains(&"TERM".to_string()));
}

#[test]
fn restart_does_not_hang_when_generations_fail_to_start() {
    // docs/behaviour.md section 8: the reference waits for exactly the next generation
    // and hangs forever.
    let sb = Sandbox::new();
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    let srv = sb
        .server()
        .interval("1")
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    let old = srv.wait_current(1);
    fs::write(envdir.join("TW_FAIL_IF_GEN_BELOW"), "4\n").expect("write");
    let out = srv.client(restart_args(&sb)).finish(TIMEOUT);
    out.assert_success();
    let fourth = srv.wait_worker(4);
    assert_eq!(
        sb.status_lines(),
        Some(vec![(4, fourth.pid)]),
        "{}",
        srv.describe()
    );
    srv.wait_signal(old.pid, "TERM");
}

/// A server whose new generations fail their start check while `TW_FAIL_IF_GEN_BELOW`
/// in `env/` says so; returns it with the envdir.
fn server_with_envdir(sb: &Sandbox) -> (Server<'_>, std::path::PathBuf) {
    let envdir = sb.path("env");
    fs::create_dir(&envdir).expect("mkdir");
    let srv = sb
        .server()
        .interval("1")
        .arg(format!("--envdir={}", envdir.display()))
        .spawn();
    (srv, envdir)
}

/// The `start_server/PID` names in /proc/net/unix (abstract: `@`).
fn abstract_names(pid: i32) -> usize {
    let table = fs::read_to_string("/proc/net/unix").expect("read /proc/net/unix");
    let name = format!("@start_server/{pid}");
    table
        .lines()
        .filter(|l| l.split_whitespace().nth(7) == Some(name.as_str()))
        .count()
}

#[test]
fn restart_gives_up_after_three_failed_starts_and_the_old_generation_serves() {
    // docs/behaviour.md section 8: the reference waits forever.
    let sb = Sandbox::new();
    let (srv, envdir) = server_with_envdir(&sb);
    let old = srv.wait_current(1);
    fs::write(envdir.join("TW_FAIL_IF_GEN_BELOW"), "100\n").expect("write");
    let started = Instant::now();
    let out = srv
        .client(restart_args(&sb))
        .finish(Duration::from_secs(20));
    assert!(!out.status.success(), "{}", out.describe());
    assert!(started.elapsed() < Duration::from_secs(15));
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.describe());
    assert!(
        lines[0].starts_with(
            "start_server: the new generation failed to start 3 times in a row (last: worker "
        ) && lines[0].ends_with(", exit status:256); the old generation keeps serving"),
        "{}",
        out.describe()
    );
    srv.wait_serving(old.pid);
    assert_eq!(sb.status_lines(), Some(vec![(1, old.pid)]));
    assert!(sb.signals_of(old.pid).is_empty());
    // The supervisor keeps trying; a fix deployed later is picked up.
    fs::remove_file(envdir.join("TW_FAIL_IF_GEN_BELOW")).expect("rm");
    let out = srv.client(restart_args(&sb)).finish(TIMEOUT);
    out.assert_success();
    assert_eq!(out.stderr, "", "{}", out.describe());
}

#[test]
fn restart_succeeds_when_a_start_fails_once_then_succeeds() {
    let sb = Sandbox::new();
    let (srv, envdir) = server_with_envdir(&sb);
    let old = srv.wait_current(1);
    fs::write(envdir.join("TW_FAIL_IF_GEN_BELOW"), "3\n").expect("write");
    let out = srv.client(restart_args(&sb)).finish(TIMEOUT);
    out.assert_success();
    // Not a terminal: silent, as the reference.
    assert_eq!(out.stderr, "", "{}", out.describe());
    let third = srv.wait_current(3);
    srv.wait_serving(third.pid);
    srv.wait_signal(old.pid, "TERM");
}

#[test]
fn restart_fails_when_the_supervisor_goes_away() {
    let sb = Sandbox::new();
    let (srv, envdir) = server_with_envdir(&sb);
    srv.wait_current(1);
    fs::write(envdir.join("TW_FAIL_IF_GEN_BELOW"), "100\n").expect("write");
    let client = srv.client(restart_args(&sb));
    srv.wait_output_count("starting new worker", 2);
    send_signal(srv.pid(), Signal::SIGKILL);
    let out = client.finish(TIMEOUT);
    assert!(!out.status.success(), "{}", out.describe());
    assert_eq!(
        out.stderr,
        format!(
            "start_server: start_server (pid:{}) exited before the restart completed\n",
            srv.pid()
        ),
        "{}",
        out.describe()
    );
}

#[test]
fn the_progress_channel_lives_and_goes_with_the_supervisor() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    srv.wait_current(1);
    assert_eq!(abstract_names(srv.pid()), 1, "{}", srv.describe());
    srv.client(stop_args(&sb)).finish(TIMEOUT).assert_success();
    srv.wait_exit(TIMEOUT);
    assert_eq!(abstract_names(srv.pid()), 0);
    // Nothing of the channel in the filesystem, before or after.
    let sockets: Vec<_> = fs::read_dir(sb.dir())
        .expect("ls")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.file_name())
        .collect();
    assert!(sockets.is_empty(), "{sockets:?}");
}

#[test]
fn restart_against_the_perl_reference_reads_the_status_file_needs_reference() {
    let Some(reference) = find_reference() else {
        skip(&format!(
            "the Perl reference is not installed (apt-get install {REFERENCE_PACKAGE})"
        ));
        return;
    };
    let sb = Sandbox::new();
    let script = format!("shift; exec {} \"$@\"", reference.display());
    let srv = sb
        .server()
        .interval("1")
        .wrapper(["/bin/sh", "-c", &script, "sh"])
        .spawn();
    let old = srv.wait_current(1);
    let ours = env!("CARGO_BIN_EXE_start_server");
    let mut client = Command::new(ours)
        .args(restart_args(&sb))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn --restart");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = client.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            let _ = client.wait();
            panic!(
                "--restart against the reference did not return\n{}",
                srv.describe()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(status.success(), "{status}: {stderr}\n{}", srv.describe());
    assert_eq!(stderr, "");
    let lines = sb.status_lines().expect("status file");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].0 > 1 && lines[0].1 != old.pid, "{lines:?}");
}

#[test]
fn restart_requires_the_pid_and_status_files() {
    let sb = Sandbox::new();
    let out = sb.run([
        "--restart".into(),
        format!("--pid-file={}", sb.pid_file().display()),
    ]);
    out.assert_failure("--status-file");
    let out = sb.run([
        "--restart".into(),
        format!("--status-file={}", sb.status_file().display()),
    ]);
    out.assert_failure("--pid-file");
}

#[test]
fn restart_with_a_missing_pid_file_fails() {
    let sb = Sandbox::new();
    fs::write(sb.status_file(), "1:1\n").expect("write");
    let out = sb.run(restart_args(&sb));
    out.assert_failure(&sb.pid_file().display().to_string());
}

#[test]
fn restart_with_a_dead_pid_fails() {
    let sb = Sandbox::new();
    let pid = dead_pid();
    fs::write(sb.pid_file(), format!("{pid}\n")).expect("write");
    fs::write(sb.status_file(), format!("1:{pid}\n")).expect("write");
    let out = sb.run(restart_args(&sb));
    assert!(!out.status.success(), "{}", out.describe());
    assert!(!out.stderr.is_empty(), "{}", out.describe());
}

#[test]
fn restart_with_an_unreadable_status_file_fails() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    let worker = srv.wait_current(1);
    let missing = sb.path("missing.status");
    let out = sb.run([
        "--restart".into(),
        format!("--pid-file={}", sb.pid_file().display()),
        format!("--status-file={}", missing.display()),
    ]);
    out.assert_failure(&missing.display().to_string());
    assert!(sb.signals_of(worker.pid).is_empty());
}

#[test]
fn restart_does_not_signal_a_process_that_is_not_start_server() {
    // docs/behaviour.md section 8: the reference signals whatever pid the file holds.
    let sb = Sandbox::new();
    let mut bystander = Bystander::start(&sb);
    fs::write(sb.pid_file(), format!("{}\n", bystander.pid())).expect("write");
    fs::write(sb.status_file(), format!("1:{}\n", bystander.pid())).expect("write");
    let out = sb.run(restart_args(&sb));
    assert!(!out.status.success(), "{}", out.describe());
    std::thread::sleep(Duration::from_millis(100));
    assert!(bystander.still_running(), "the bystander was signalled");
}

#[test]
fn stop_announces_itself_and_waits_until_the_server_is_gone() {
    let sb = Sandbox::new();
    let sock = sb.path("app.sock");
    let srv = sb
        .server()
        .arg(format!("--path={}", sock.display()))
        .spawn();
    let worker = srv.wait_current(1);
    let client = srv.client(stop_args(&sb));
    let client_pid = client.pid();
    let out = client.finish(TIMEOUT);
    out.assert_success();
    let line = format!(
        "stop_server (pid:{client_pid}) stopping now (pid:{})...\n",
        srv.pid()
    );
    assert!(out.stderr.contains(&line), "{}", out.describe());
    // By the time --stop returns, every worker is gone and the files too.
    assert!(!pid_alive(worker.pid), "worker still alive");
    assert!(!sock.exists() && !sb.pid_file().exists() && !sb.status_file().exists());
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
    assert_eq!(sb.signal_names_of(worker.pid), ["TERM"]);
}

#[test]
fn stop_waits_for_workers_that_take_their_time() {
    let sb = Sandbox::new();
    let srv = sb.server().env("TW_IGNORE_TERM", "1").spawn();
    let worker = srv.wait_current(1);
    let client = srv.client(stop_args(&sb));
    srv.wait_signal(worker.pid, "TERM");
    // The worker ignores it: start_server, and so --stop, keep waiting.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        client.running(),
        "--stop returned early\n{}",
        client.describe()
    );
    srv.assert_running();
    send_signal(worker.pid, Signal::SIGKILL);
    client.finish(TIMEOUT).assert_success();
    assert!(!sb.pid_file().exists());
    srv.wait_exit(TIMEOUT);
}

#[test]
fn stop_then_start_again_on_the_same_port_and_path() {
    let first = Sandbox::new();
    let sock = first.path("app.sock");
    let srv = first
        .server()
        .arg(format!("--path={}", sock.display()))
        .spawn();
    let worker = srv.wait_current(1);
    for _ in 0..5 {
        let body = http_get(first.port).expect("GET");
        assert_eq!(answer_pid(&body), Some(worker.pid));
        http_get_unix(&sock).expect("GET over the unix socket");
    }
    srv.client(stop_args(&first))
        .finish(TIMEOUT)
        .assert_success();
    let second = Sandbox::with_port(first.port);
    let again = second
        .server()
        .arg(format!("--path={}", sock.display()))
        .spawn();
    let worker = again.wait_current(1);
    again.wait_serving(worker.pid);
    let body = http_get_unix(&sock).expect("GET over the unix socket");
    assert_eq!(answer_pid(&body), Some(worker.pid));
}

#[test]
fn stop_requires_the_pid_file() {
    let sb = Sandbox::new();
    let out = sb.run(["--stop"]);
    out.assert_failure("--pid-file");
}

#[test]
fn stop_with_a_missing_pid_file_fails() {
    let sb = Sandbox::new();
    let out = sb.run(stop_args(&sb));
    out.assert_failure(&sb.pid_file().display().to_string());
}

#[test]
fn stop_with_a_dead_pid_fails() {
    let sb = Sandbox::new();
    fs::write(sb.pid_file(), format!("{}\n", dead_pid())).expect("write");
    let out = sb.run(stop_args(&sb));
    assert!(!out.status.success(), "{}", out.describe());
    assert!(!out.stderr.is_empty(), "{}", out.describe());
}

#[test]
fn stop_does_not_signal_a_process_that_is_not_start_server() {
    // docs/behaviour.md section 8: the reference signals whatever pid the file holds.
    let sb = Sandbox::new();
    let mut bystander = Bystander::start(&sb);
    fs::write(sb.pid_file(), format!("{}\n", bystander.pid())).expect("write");
    let out = sb.run(stop_args(&sb));
    assert!(!out.status.success(), "{}", out.describe());
    std::thread::sleep(Duration::from_millis(100));
    assert!(bystander.still_running(), "the bystander was signalled");
}
