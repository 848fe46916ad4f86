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

/// One `GET / HTTP/1.0`: the body of a 200 answer, or what went wrong.
fn get(addr: SocketAddr) -> Result<String, String> {
    let timeout = Duration::from_secs(10);
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
                    let answer = get(addr);
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

/// Restarts the worker behind `srv` [`RESTARTS`] times while a client keeps
/// requesting; each restart is over once the status file lists the new
/// generation alone (the old one has exited) and the client had an answer
/// from it. Asserts that no request failed.
fn restart_while_requesting(srv: &Server) {
    let addr: SocketAddr = srv.sb.host_port().parse().expect("address");
    srv.wait_for_within(BOOT, "a first answer", || get(addr).is_ok());
    let client = Client::start(addr);
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
            || client.saw(generation),
        );
    }
    let seen = client.finish();
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed across {RESTARTS} restarts: {:#?}\n{}",
        seen.failures.len(),
        seen.failures.len() + seen.generations.len(),
        seen.failures,
        srv.describe()
    );
}

/// Runs `program ADDRESS` under start_server, and restarts it while
/// requesting.
fn restart_example_while_requesting(program: PathBuf) {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .program([program.into_os_string(), sb.host_port().into()])
        .spawn();
    restart_while_requesting(&srv);
}

#[test]
fn std_worker_restarts_without_a_failed_request() {
    restart_example_while_requesting(std_worker());
}

#[test]
fn axum_worker_restarts_without_a_failed_request() {
    restart_example_while_requesting(axum_worker());
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
            || get(addr).is_ok_and(|body| body.starts_with("generation=0 ")),
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
        assert!(
            stderr.contains(&sb.host_port()) && stderr.contains("127.0.0.1:1"),
            "{}: stderr should name the key and the keys there are:\n{stderr}",
            program.display()
        );
        assert!(
            TcpListener::bind(sb.host_port()).is_ok(),
            "{} bound {} itself",
            program.display(),
            sb.host_port()
        );
    }
}
