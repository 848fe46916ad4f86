//! The worker the benchmark harness in `bench/` runs behind `start_server`
//! (ours and the Perl reference alike).
//!
//! It must never be what a benchmark measures, so it is small and quick: it
//! takes the first inherited TCP socket through our own library
//! ([`server_starter::listeners`]), makes it non-blocking, and serves HTTP/1.x
//! from one thread in one poll(2) loop. Every request gets `200 OK` with the
//! body `pid=PID generation=GENERATION\n`, so a client can tell which worker
//! generation answered. Keep-alive works as HTTP/1.1 says (and `Connection:
//! close` is honoured).
//!
//! On SIGTERM or SIGINT it closes gracefully, so that a restart loses no
//! request: it stops accepting (the listening socket stays open in the
//! supervisor and the next generation, so nothing queued is lost), answers
//! the next request on every open connection with `Connection: close`, closes
//! connections that stay idle for half a second, and exits 0 when none is
//! left, or five seconds after the signal at the latest.
//!
//! When `BENCH_EXEC_STAMP` names a file, the first thing `main` does is
//! take CLOCK_MONOTONIC and append `PID NANOSECONDS\n` to that file (one
//! O_APPEND write), so that the harness can tell when each worker was
//! exec'd on the same clock it takes before sending a signal.
//!
//! For the readiness measurements (all three are off unless set):
//!
//! - `BENCH_BOOT_MS=N`: after taking its listener (and setting up its
//!   signal handlers) it waits N ms, a slow boot, before it accepts anything
//!   and before it calls [`server_starter::notify_ready`] (which does
//!   nothing when `NOTIFY_SOCKET` is unset). Without it, `notify_ready` is
//!   called right away, before the first accept.
//! - `BENCH_READY_STAMP=FILE`: right before sending `READY=1`, it appends
//!   `PID NANOSECONDS\n` (CLOCK_MONOTONIC) to FILE.
//! - `BENCH_SIGNAL_STAMP=FILE`: the TERM/INT handler takes CLOCK_MONOTONIC
//!   (clock_gettime(2) is async-signal-safe) into an atomic, first signal
//!   only; the main loop appends `PID NANOSECONDS\n` with that time to FILE
//!   when it sees the signal, so the stamp is the time the signal was
//!   received, even if it arrived during the boot wait.
//!
//! It also exits when its parent is gone (checked about once a second), so
//! an interrupted benchmark leaves no worker behind. Exit status 3 and a line
//! on stderr for a setup error (no TCP socket inherited, and the like).

use std::ffi::OsString;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use server_starter::Listener;
use signal_hook::consts::signal::{SIGINT, SIGTERM};

/// Set by the TERM and INT handlers.
static STOP: AtomicBool = AtomicBool::new(false);
/// CLOCK_MONOTONIC in nanoseconds when the first TERM or INT was received
/// (0: none yet).
static SIGNALLED_AT: AtomicU64 = AtomicU64::new(0);

/// While draining, a connection idle this long is closed.
const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// Draining never takes longer than this.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// How often the parent is checked for.
const PARENT_CHECK: Duration = Duration::from_secs(1);
/// A request head larger than this closes the connection.
const MAX_HEAD: usize = 16 * 1024;
/// Connections accepted per turn of the loop, so that one busy turn cannot
/// starve the connections already open.
const ACCEPT_BATCH: usize = 64;

/// One client connection: what it sent that was not answered yet, and what
/// we still have to write to it.
struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    close_after_output: bool,
    last_active: Instant,
}

/// What to do with a connection after serving it.
#[derive(PartialEq)]
enum Next {
    Keep,
    Close,
}

/// The two responses this worker ever sends, prepared once.
struct Responses {
    keep_alive: Vec<u8>,
    close: Vec<u8>,
}

impl Responses {
    fn new(pid: u32, generation: u64) -> Responses {
        let body = format!("pid={pid} generation={generation}\n");
        let build = |connection: &str| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        Responses {
            keep_alive: build("keep-alive"),
            close: build("close"),
        }
    }
}

fn main() -> ExitCode {
    stamp_exec();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "bench_worker: {e}");
            ExitCode::from(3)
        }
    }
}

/// Appends `PID NANOSECONDS\n` (CLOCK_MONOTONIC, taken first) to the file
/// named by `BENCH_EXEC_STAMP`, if set.
fn stamp_exec() {
    let now = monotonic_ns();
    if let Some(path) = std::env::var_os("BENCH_EXEC_STAMP") {
        append_stamp(path, now);
    }
}

/// CLOCK_MONOTONIC in nanoseconds. Async-signal-safe: clock_gettime(2) is.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Appends `PID NANOS\n` to `path`. Failures are ignored: the stamps are
/// for the harness, never a reason not to serve.
fn append_stamp(path: OsString, nanos: u64) {
    let line = format!("{} {nanos}\n", std::process::id());
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
    {
        // One write(2) of a short line: O_APPEND keeps lines whole.
        let _ = file.write_all(line.as_bytes());
    }
}

/// The slow boot of `BENCH_BOOT_MS`, then `READY=1` (stamped first when
/// `BENCH_READY_STAMP` is set).
fn boot_then_ready() {
    let boot_ms = std::env::var("BENCH_BOOT_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if boot_ms > 0 {
        std::thread::sleep(Duration::from_millis(boot_ms));
    }
    if let Some(path) = std::env::var_os("BENCH_READY_STAMP") {
        append_stamp(path, monotonic_ns());
    }
    // Ok(false): NOTIFY_SOCKET unset, nobody waits for it.
    if let Err(e) = server_starter::notify_ready() {
        let _ = writeln!(io::stderr(), "bench_worker: cannot report readiness: {e}");
    }
}

fn run() -> io::Result<()> {
    let listener = take_tcp_listener()?;
    listener.set_nonblocking(true)?;
    let responses = Responses::new(
        std::process::id(),
        server_starter::generation().unwrap_or(0),
    );
    let (wake_read, wake_write) = UnixStream::pair()?;
    wake_read.set_nonblocking(true)?;
    for signal in [SIGTERM, SIGINT] {
        // The time first, then the flag: actions run in registration order,
        // so both are set before the loop is woken.
        // SAFETY: the action only calls clock_gettime(2) and touches an
        // atomic, both async-signal-safe.
        unsafe {
            signal_hook::low_level::register(signal, || {
                let _ = SIGNALLED_AT.compare_exchange(
                    0,
                    monotonic_ns(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            })?;
        }
        signal_hook::flag::register(signal, &STOP)?;
        signal_hook::low_level::pipe::register(signal, wake_write.try_clone()?)?;
    }
    drop(wake_write);
    boot_then_ready();
    serve(listener, wake_read, &responses)
}

/// The first TCP socket in `SERVER_STARTER_PORT`.
fn take_tcp_listener() -> io::Result<TcpListener> {
    server_starter::listeners()
        .map_err(io::Error::other)?
        .into_iter()
        .find_map(|(_, listener)| match listener {
            Listener::Tcp(tcp) => Some(tcp),
            _ => None,
        })
        .ok_or_else(|| io::Error::other("no TCP socket in SERVER_STARTER_PORT"))
}

/// The poll loop, until drained after TERM/INT or orphaned.
fn serve(listener: TcpListener, mut wake: UnixStream, responses: &Responses) -> io::Result<()> {
    // SAFETY: getppid(2) cannot fail and has no side effects.
    let parent = unsafe { libc::getppid() };
    let mut last_parent_check = Instant::now();
    let mut listener = Some(listener);
    let mut draining_since: Option<Instant> = None;
    let mut conns: Vec<Conn> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        if let Some(since) = draining_since {
            if conns.is_empty() || since.elapsed() >= DRAIN_LIMIT {
                return Ok(());
            }
        }
        if last_parent_check.elapsed() >= PARENT_CHECK {
            last_parent_check = Instant::now();
            // SAFETY: as above.
            if unsafe { libc::getppid() } != parent {
                return Ok(());
            }
        }

        fds.clear();
        fds.push(pollfd(wake.as_raw_fd(), libc::POLLIN));
        if let Some(l) = &listener {
            fds.push(pollfd(l.as_raw_fd(), libc::POLLIN));
        }
        let first_conn = fds.len();
        for c in &conns {
            let events = if c.written < c.output.len() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            };
            fds.push(pollfd(c.stream.as_raw_fd(), events));
        }
        let timeout_ms = if draining_since.is_some() { 100 } else { 1000 };
        // SAFETY: poll(2) on a valid array of pollfd that we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }

        if fds[0].revents != 0 {
            let mut buf = [0u8; 64];
            while matches!(wake.read(&mut buf), Ok(n) if n > 0) {}
        }
        if STOP.load(Ordering::SeqCst) && draining_since.is_none() {
            // Closing our descriptor does not close the socket: the
            // supervisor and the next generation hold it too, and whatever
            // waits in its queue is theirs.
            listener = None;
            draining_since = Some(Instant::now());
            if let Some(path) = std::env::var_os("BENCH_SIGNAL_STAMP") {
                append_stamp(path, SIGNALLED_AT.load(Ordering::SeqCst));
            }
        } else if let Some(l) = &listener {
            if fds[1].revents != 0 {
                accept_batch(l, &mut conns);
            }
        }

        // Only the connections that were polled; newly accepted ones are
        // behind them and wait for the next turn. Backwards, so that
        // swap_remove never moves an unvisited polled connection.
        let polled = fds.len() - first_conn;
        let draining = draining_since.is_some();
        for i in (0..polled).rev() {
            let revents = fds[first_conn + i].revents;
            let next = if revents != 0 {
                serve_conn(&mut conns[i], responses, draining)
            } else if draining && conns[i].is_idle() {
                // Answer what a drain left unanswered, or close when idle.
                if !conns[i].input.is_empty() || conns[i].last_active.elapsed() < DRAIN_IDLE {
                    serve_conn(&mut conns[i], responses, true)
                } else {
                    Next::Close
                }
            } else {
                Next::Keep
            };
            if next == Next::Close {
                let conn = conns.swap_remove(i);
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
        }
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn accept_batch(listener: &TcpListener, conns: &mut Vec<Conn>) {
    for _ in 0..ACCEPT_BATCH {
        match listener.accept() {
            Ok((stream, _)) => {
                // An accepted socket does not inherit O_NONBLOCK on Linux.
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                conns.push(Conn {
                    stream,
                    input: Vec::new(),
                    output: Vec::new(),
                    written: 0,
                    close_after_output: false,
                    last_active: Instant::now(),
                });
            }
            // WouldBlock: another generation took it, or the queue is empty.
            // Anything else (ECONNABORTED, EMFILE): try again next turn.
            Err(_) => return,
        }
    }
}

impl Conn {
    fn is_idle(&self) -> bool {
        self.written >= self.output.len()
    }
}

/// Reads what is there, answers every complete request, writes what it can.
fn serve_conn(conn: &mut Conn, responses: &Responses, draining: bool) -> Next {
    if conn.is_idle() && !conn.close_after_output {
        let mut buf = [0u8; 4096];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => return Next::Close,
                Ok(n) => {
                    conn.input.extend_from_slice(&buf[..n]);
                    conn.last_active = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Next::Close,
            }
        }
        answer_requests(conn, responses, draining);
        if conn.input.len() > MAX_HEAD {
            return Next::Close;
        }
    }
    while conn.written < conn.output.len() {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(n) => {
                conn.written += n;
                conn.last_active = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Keep,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Next::Close,
        }
    }
    conn.output.clear();
    conn.written = 0;
    if conn.close_after_output {
        Next::Close
    } else {
        Next::Keep
    }
}

/// Queues one response per complete request head in `conn.input`.
fn answer_requests(conn: &mut Conn, responses: &Responses, draining: bool) {
    while let Some(end) = find(&conn.input, b"\r\n\r\n") {
        let keep_alive = !draining && wants_keep_alive(&conn.input[..end]);
        conn.input.drain(..end + 4);
        if keep_alive {
            conn.output.extend_from_slice(&responses.keep_alive);
        } else {
            conn.output.extend_from_slice(&responses.close);
            conn.close_after_output = true;
            conn.input.clear();
            return;
        }
    }
}

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes it
/// unless told `keep-alive`.
fn wants_keep_alive(head: &[u8]) -> bool {
    let head = head.to_ascii_lowercase();
    let http10 = head
        .split(|&b| b == b'\n')
        .next()
        .is_some_and(|line| find(line, b"http/1.0").is_some());
    let connection = head
        .split(|&b| b == b'\n')
        .skip(1)
        .find_map(|line| line.strip_prefix(b"connection:"));
    match connection {
        Some(value) if find(value, b"close").is_some() => false,
        Some(value) if find(value, b"keep-alive").is_some() => true,
        _ => !http10,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
