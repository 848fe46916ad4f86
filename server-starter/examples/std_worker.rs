//! A plain std worker for `start_server`: no async runtime, no dependency
//! beyond this crate (and `libc` for the signal handler).
//!
//! ```text
//! start_server --port=127.0.0.1:8080 -- std_worker 127.0.0.1:8080
//! std_worker 127.0.0.1:8080     # on its own: binds the address itself
//! ```
//!
//! It answers every HTTP request with its generation and pid, one connection
//! at a time. On SIGTERM (what `start_server` sends an old generation once
//! the new one runs) it stops accepting, finishes the request in hand and
//! exits: connections still queued on the shared socket are accepted by the
//! new generation, so a restart fails no request. It reports readiness
//! (`start_server --notify-ready`) once it listens.
//!
//! The signal handler only writes a byte to a pipe (the self-pipe trick); the
//! loop waits in `poll` for either the listening socket or that pipe.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// The write end of the self-pipe, for the signal handler; -1 when there is
/// none.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// How long to wait before accepting again when the process or the system
/// is out of descriptors or memory: the connection stays queued (or goes to
/// another generation) meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

extern "C" fn on_term(_: libc::c_int) {
    // The interrupted code may be about to read errno: keep it.
    // SAFETY: errno is thread-local; this reads the calling thread's.
    let saved = unsafe { *errno() };
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the byte is a static. The
        // descriptor is non-blocking: with the pipe full, a wake-up is
        // pending anyway.
        unsafe { libc::write(fd, b"T".as_ptr().cast(), 1) };
    }
    // SAFETY: errno is thread-local; this writes the calling thread's.
    unsafe { *errno() = saved };
}

/// The calling thread's `errno`.
#[cfg(any(target_os = "linux", target_os = "emscripten", target_os = "redox"))]
fn errno() -> *mut libc::c_int {
    // SAFETY: always valid for the calling thread.
    unsafe { libc::__errno_location() }
}
#[cfg(any(target_os = "android", target_os = "netbsd", target_os = "openbsd"))]
fn errno() -> *mut libc::c_int {
    // SAFETY: always valid for the calling thread.
    unsafe { libc::__errno() }
}
#[cfg(any(
    target_vendor = "apple",
    target_os = "freebsd",
    target_os = "dragonfly"
))]
fn errno() -> *mut libc::c_int {
    // SAFETY: always valid for the calling thread.
    unsafe { libc::__error() }
}

/// The self-pipe; dropping it detaches the handler first, so that it never
/// writes to a closed (or reused) descriptor number.
struct SelfPipe {
    read: UnixStream,
    write: UnixStream,
}

impl SelfPipe {
    fn install() -> io::Result<SelfPipe> {
        let (read, write) = UnixStream::pair()?;
        write.set_nonblocking(true)?;
        let pipe = SelfPipe { read, write };
        WAKE_FD.store(pipe.write.as_raw_fd(), Ordering::Relaxed);
        // SAFETY: the handler only calls write(2) on WAKE_FD, which `drop`
        // clears before the descriptor closes.
        let handler = on_term as extern "C" fn(libc::c_int) as libc::sighandler_t;
        if unsafe { libc::signal(libc::SIGTERM, handler) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
        Ok(pipe)
    }
}

impl Drop for SelfPipe {
    fn drop(&mut self) {
        // The fields close after this: the handler lets go of the write
        // end first.
        WAKE_FD.store(-1, Ordering::Relaxed);
    }
}

fn main() {
    let address = std::env::args().nth(1).unwrap_or("127.0.0.1:8080".into());
    if let Err(err) = run(&address) {
        // The library's messages carry their cause ("failed to bind
        // "127.0.0.1:8080": Address already in use").
        eprintln!("std_worker: {err}");
        std::process::exit(1);
    }
}

fn run(address: &str) -> Result<(), Box<dyn std::error::Error>> {
    // Under start_server: the socket it bound for `--port=ADDRESS`; on our
    // own: bound here. Non-blocking, because another generation may accept
    // the connection `poll` announced.
    let listener = server_starter::listener_or_bind(address)?
        .into_nonblocking()?
        .into_tcp()?;
    let pipe = SelfPipe::install()?;
    let generation = server_starter::generation().unwrap_or(0);
    let answer = format!("generation={generation} pid={}\n", std::process::id());
    // For `start_server --notify-ready`; nothing is sent without it. A
    // failure is no reason to stop serving: the supervisor then falls back
    // to its timeout.
    if let Err(err) = server_starter::notify_ready() {
        eprintln!("std_worker: {err}");
    }
    while wait_readable(listener.as_raw_fd(), pipe.read.as_raw_fd(), None)? {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(err) = respond(stream, &answer) {
                    eprintln!("std_worker: {err}");
                }
            }
            // Another generation took it, or the client gave up first.
            Err(err) if is_transient(&err) => {}
            Err(err) if is_exhaustion(&err) => {
                eprintln!("std_worker: accept: {err}; retrying");
                // Wait, but wake up for SIGTERM.
                if !wait_readable(-1, pipe.read.as_raw_fd(), Some(ACCEPT_BACKOFF))? {
                    break;
                }
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// An `accept` error that concerns one connection, or none: try again.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || err.raw_os_error() == Some(libc::EPROTO)
}

/// An `accept` error that passes once descriptors or memory are freed.
fn is_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Waits until a connection may be waiting on `listener` (`true`; -1 for
/// none, then also when `timeout` passes) or SIGTERM came (`false`).
fn wait_readable(listener: RawFd, wake: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let mut fds = [listener, wake].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let timeout = timeout.map_or(-1, |timeout| timeout.as_millis() as libc::c_int);
    loop {
        // SAFETY: `fds` is valid for reads and writes of its length; poll
        // ignores a negative descriptor.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) } >= 0 {
            return Ok(fds[1].revents == 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Reads the request head, answers, closes.
fn respond(stream: TcpStream, body: &str) -> io::Result<()> {
    // Linux does not pass the listener's O_NONBLOCK on to the connection;
    // the BSDs do.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && !matches!(line.as_str(), "\r\n" | "\n") {
        line.clear();
    }
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    (&stream).write_all(head.as_bytes())?;
    (&stream).write_all(body.as_bytes())
}
