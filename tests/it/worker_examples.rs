//! The worker examples people copy (`server-starter/examples/std_worker.rs`
//! and `examples/axum-worker`) and a real server that speaks Server::Starter
//! itself (Starlet, Perl's preforking PSGI server), each restarted under
//! start_server several times while a client keeps requesting: not one
//! request may fail (docs/behaviour.md section 4: the sockets never close).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::support::*;

/// Restarts per test.
const RESTARTS: u64 = 3;

/// How long a worker generation may take to boot and serve: Starlet loads
/// Plack first, and the machine may be busy.
const BOOT: Duration = Duration::from_secs(30);

/// A program built next to start_server, at `target/<profile>/<relative>`.
fn built(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_start_server"))
        .parent()
        .expect("binary has a parent directory")
        .join(relative);
    assert!(
        path.is_file(),
        "{} not found: `cargo test` at the workspace root builds it \
         (or `cargo build --workspace --examples`)",
        path.display()
    );
    path
}

fn std_worker() -> PathBuf {
    built("examples/std_worker")
}

fn axum_worker() -> PathBuf {
    built("axum-worker")
}

/// How long a probe for a first answer waits for it (it is retried).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// One `GET / HTTP/1.0`, waiting at most `timeout` for each step: the body
/// of a 200 answer, or what went wrong.
fn get(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket options: {e}"))?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e} after {response:?}"))?;
    let ok = response.starts_with("HTTP/1.") && response.split_whitespace().nth(1) == Some("200");
    match response.split_once("\r\n\r\n") {
        Some((_, body)) if ok => Ok(body.to_string()),
        _ => Err(format!("bad response {response:?}")),
    }
}

/// What the client saw: the answers' generations, and every failure.
#[derive(Default)]
struct Seen {
    generations: Vec<i32>,
    failures: Vec<String>,
}

/// A client that requests in a loop, one request at a time, until stopped.
/// Each request may take [`BOOT`]: a generation that is slow to start (Perl
/// loading Plack on a busy machine) delays an answer, and must not fail it.
struct Client {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    fn start(addr: SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let thread = thread::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let answer = get(addr, BOOT);
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    match answer {
                        Ok(body) => seen
                            .generations
                            .push(answer_generation(&body).unwrap_or(-1)),
                        Err(failure) => seen.failures.push(failure),
                    }
                    drop(seen);
                    // Pacing, so that a busy machine still runs the workers.
                    thread::sleep(Duration::from_millis(2));
                }
            }
        });
        Client {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Whether an answer from `generation` came in.
    fn saw(&self, generation: u64) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.generations.contains(&(generation as i32))
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("client thread");
        }
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Restarts the worker behind `srv` [`RESTARTS`] times while two clients
/// keep requesting; each restart is over once the status file lists the new
/// generation alone (the old one has exited) and a client had an answer
/// from it. Asserts that no request failed.
fn restart_while_requesting(srv: &Server) {
    let addr: SocketAddr = srv.sb.host_port().parse().expect("address");
    srv.wait_for_within(BOOT, "a first answer", || get(addr, PROBE_TIMEOUT).is_ok());
    let clients = [Client::start(addr), Client::start(addr)];
    for generation in 2..=RESTARTS + 1 {
        srv.signal(Signal::SIGHUP);
        srv.wait_for_within(
            BOOT,
            &format!("generation {generation} alone in the status file"),
            || {
                srv.sb
                    .status_lines()
                    .is_some_and(|lines| matches!(lines[..], [(g, _)] if g == generation))
            },
        );
        srv.wait_for_within(
            BOOT,
            &format!("an answer from generation {generation}"),
            || clients.iter().any(|client| client.saw(generation)),
        );
    }
    let mut seen = Seen::default();
    for client in clients {
        let Seen {
            generations,
            failures,
        } = client.finish();
        seen.generations.extend(generations);
        seen.failures.extend(failures);
    }
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed across {RESTARTS} restarts: {:#?}\n{}",
        seen.failures.len(),
        seen.failures.len() + seen.generations.len(),
        seen.failures,
        srv.describe()
    );
}

/// Runs `program ADDRESS` under start_server with `options`, and restarts
/// it while requesting.
fn restart_example_while_requesting(program: PathBuf, options: &[&str]) {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .args(options)
        .program([program.into_os_string(), sb.host_port().into()])
        .spawn();
    restart_while_requesting(&srv);
}

#[test]
fn std_worker_restarts_without_a_failed_request() {
    restart_example_while_requesting(std_worker(), &[]);
}

/// A generation counts as started only once it sent READY=1: a worker that
/// never did would stay the new generation beside the old one until the
/// notify timeout (longer than the test waits).
#[test]
fn worker_examples_report_readiness_under_notify_ready() {
    for program in [std_worker(), axum_worker()] {
        restart_example_while_requesting(program, &["--notify-ready", "--notify-timeout=120"]);
    }
}

#[test]
fn axum_worker_restarts_without_a_failed_request() {
    restart_example_while_requesting(axum_worker(), &[]);
}

/// The PSGI application Starlet serves: its generation and pid.
const STARLET_APP: &str = r#"
sub {
    my $generation = $ENV{SERVER_STARTER_GENERATION} // 'none';
    [200, ['Content-Type' => 'text/plain'], ["generation=$generation pid=$$\n"]];
};
"#;

#[test]
fn starlet_restarts_without_a_failed_request_needs_starlet() {
    let has_starlet = Command::new("perl")
        .args(["-MStarlet", "-MPlack::Runner", "-e1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !has_starlet || !Path::new("/usr/bin/plackup").is_file() {
        return skip("Starlet is not installed (Debian package starlet)");
    }
    let sb = Sandbox::new();
    let app = sb.path("app.psgi");
    fs::write(&app, STARLET_APP).expect("write app.psgi");
    let srv = sb
        .server()
        .program([
            "/usr/bin/plackup".into(),
            "-s".into(),
            "Starlet".into(),
            "-E".into(),
            "deployment".into(),
            "--max-workers=2".into(),
            app.into_os_string(),
        ])
        .spawn();
    restart_while_requesting(&srv);
}

/// A worker run by the test itself, killed and reaped on drop.
struct Run(Child);

impl Run {
    fn start(sb: &Sandbox, program: &Path, env: &[(&str, &str)]) -> Run {
        seal_inherited_fds();
        let mut command = Command::new(program);
        command
            .arg(sb.host_port())
            .env_remove("SERVER_STARTER_PORT")
            .env_remove("SERVER_STARTER_GENERATION")
            .env_remove("NOTIFY_SOCKET")
            // The sandbox's marker: its drop kills the worker too.
            .env("TW_DIR", sb.tw_dir())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(sb.path("worker.stderr")).expect("create stderr file"));
        Run(command
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {}: {e}", program.display())))
    }

    /// The exit status, waiting at most `timeout`.
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.0.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => return None,
            }
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn worker_examples_bind_their_address_outside_start_server() {
    for program in [std_worker(), axum_worker()] {
        let sb = Sandbox::new();
        let addr: SocketAddr = sb.host_port().parse().expect("address");
        let _worker = Run::start(&sb, &program, &[]);
        wait_until(
            BOOT,
            &format!("{} to answer on {addr}", program.display()),
            || get(addr, PROBE_TIMEOUT).is_ok_and(|body| body.starts_with("generation=0 ")),
            || read_lossy(&sb.path("worker.stderr")),
        );
    }
}

#[test]
fn worker_examples_refuse_a_missing_key_under_start_server() {
    for program in [std_worker(), axum_worker()] {
        let sb = Sandbox::new();
        // Started with another --port than the worker expects: an error,
        // not a socket of its own that would close on every restart.
        let mut worker = Run::start(&sb, &program, &[("SERVER_STARTER_PORT", "127.0.0.1:1=3")]);
        let status = worker.wait(BOOT);
        let stderr = read_lossy(&sb.path("worker.stderr"));
        assert!(
            status.is_some_and(|s| !s.success()),
            "{}: expected a failure, got {status:?}; stderr:\n{stderr}",
            program.display()
        );
        // The reason is the missing key (not a failed bind of its own).
        assert!(
            stderr.contains(&format!("no socket \"{}\"", sb.host_port()))
                && stderr.contains("127.0.0.1:1"),
            "{}: stderr should name the key and the keys there are:\n{stderr}",
            program.display()
        );
    }
}

#[test]
fn worker_examples_name_the_cause_of_a_failed_bind() {
    for program in [std_worker(), axum_worker()] {
        let sb = Sandbox::new();
        let _taken = TcpListener::bind(sb.host_port()).expect("bind the port first");
        let mut worker = Run::start(&sb, &program, &[]);
        let status = worker.wait(BOOT);
        let stderr = read_lossy(&sb.path("worker.stderr"));
        assert!(
            status.is_some_and(|s| !s.success())
                && stderr.contains(&sb.host_port())
                && stderr.contains("Address already in use")
                && stderr.lines().count() == 1,
            "{}: expected one line naming the address and the cause, got {status:?}:\n{stderr}",
            program.display()
        );
    }
}

/// The lowest descriptor number `pid` does not have open.
fn lowest_free_fd(pid: u32) -> i32 {
    let open: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the worker's descriptors")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !open.contains(fd)).expect("a free number")
}

/// Sets the soft `RLIMIT_NOFILE` of `pid`, keeping the hard one; returns
/// the old soft limit.
fn set_fd_limit(pid: u32, soft: libc::rlim_t) -> libc::rlim_t {
    // SAFETY: all-zero is a valid `rlimit`.
    let mut old: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: reads the limit into `old`.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: sets the soft limit of our own child.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// Out of descriptors, `accept` fails with EMFILE while the connection
/// stays queued: the worker logs it and retries after a pause (no busy
/// loop, no exit), and answers once a descriptor is free again.
#[test]
fn worker_examples_survive_running_out_of_descriptors() {
    for program in [std_worker(), axum_worker()] {
        let sb = Sandbox::new();
        let addr: SocketAddr = sb.host_port().parse().expect("address");
        let worker = Run::start(&sb, &program, &[]);
        let stderr = || read_lossy(&sb.path("worker.stderr"));
        wait_until(
            BOOT,
            &format!("{} to answer on {addr}", program.display()),
            || get(addr, PROBE_TIMEOUT).is_ok(),
            stderr,
        );
        let pid = worker.0.id();
        let soft = set_fd_limit(pid, lowest_free_fd(pid) as libc::rlim_t);
        let started = Instant::now();
        let request = thread::spawn(move || get(addr, BOOT));
        wait_until(
            BOOT,
            &format!("{} to log a failed accept", program.display()),
            || stderr().contains("retrying"),
            stderr,
        );
        set_fd_limit(pid, soft);
        let answer = request.join().expect("request thread");
        let retries = stderr().matches("retrying").count();
        // A pause of 200 ms between attempts: a spinning loop would log
        // thousands a second.
        let bound = 10 * started.elapsed().as_secs() as usize + 20;
        assert!(
            answer.is_ok() && retries <= bound,
            "{}: {answer:?} after {retries} failed accepts (at most {bound}):\n{}",
            program.display(),
            stderr()
        );
        assert!(pid_alive(pid as i32), "{} exited", program.display());
    }
}
