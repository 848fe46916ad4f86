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
//! new generation, so a restart fails no request.
//!
//! The signal handler only writes a byte to a pipe (the self-pipe trick); the
//! loop waits in `poll` for either the listening socket or that pipe.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

/// The write end of the self-pipe, for the signal handler.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_term(_: libc::c_int) {
    // SAFETY: write(2) is async-signal-safe; the byte is a static.
    unsafe { libc::write(WAKE_FD.load(Ordering::Relaxed), b"T".as_ptr().cast(), 1) };
}

fn main() {
    let address = std::env::args().nth(1).unwrap_or("127.0.0.1:8080".into());
    if let Err(err) = run(&address) {
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
    let (wake_read, wake_write) = UnixStream::pair()?;
    WAKE_FD.store(wake_write.as_raw_fd(), Ordering::Relaxed);
    // SAFETY: the handler only calls write(2) on a descriptor that stays
    // open (`wake_write` lives until we return).
    if unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) }
        == libc::SIG_ERR
    {
        return Err(io::Error::last_os_error().into());
    }
    let generation = server_starter::generation().unwrap_or(0);
    let answer = format!("generation={generation} pid={}\n", std::process::id());
    while wait_readable(listener.as_raw_fd(), wake_read.as_raw_fd())? {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(err) = respond(stream, &answer) {
                    eprintln!("std_worker: {err}");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err.into()),
        }
    }
    drop(wake_write);
    Ok(())
}

/// Waits until a connection may be waiting (`true`) or SIGTERM came (`false`).
fn wait_readable(listener: RawFd, wake: RawFd) -> io::Result<bool> {
    let mut fds = [listener, wake].map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `fds` is valid for reads and writes of its length.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } >= 0 {
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
