//! A small worker for `start_server`: answers every HTTP request with its pid
//! and generation, echoes UDP datagrams back, and exits gracefully on SIGTERM.
//!
//! ```text
//! cargo build --example echo_server
//! start_server --port=127.0.0.1:8080 -- target/debug/examples/echo_server
//! curl http://127.0.0.1:8080/          # pid=1234 generation=1
//! kill -HUP <start_server pid>         # a new generation takes over
//! curl http://127.0.0.1:8080/          # pid=1240 generation=2, no request lost
//! ```
//!
//! It takes its sockets with [`server_starter::listeners`], says it is ready
//! with [`server_starter::notify_ready`] (a no-op unless the supervisor set
//! `NOTIFY_SOCKET`), and serves them all from one `poll` loop, which also watches a self-pipe that SIGTERM and SIGINT
//! write to. On either signal it stops accepting, lets the connections in
//! flight finish, and exits 0: that is what lets `start_server` replace it
//! without dropping requests, since the listening sockets stay open in the
//! supervisor and the next generation accepts on them.
//!
//! The listeners are made non-blocking: when two generations poll the same
//! socket during a restart, both wake up for one connection and the loser's
//! `accept` must return `WouldBlock` instead of hanging. `O_NONBLOCK` is
//! shared with the other generations, which is fine: `start_server` never
//! touches it, and a blocking worker only sees `WouldBlock` where it would
//! otherwise have waited.

use std::error::Error;
use std::io::{self, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use server_starter::Listener;
use signal_hook::consts::signal::{SIGINT, SIGTERM};

/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest request head read before answering anyway.
const MAX_REQUEST: usize = 64 * 1024;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("echo_server: {}", error_chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, joined by `: `.
fn error_chain(err: &dyn Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

fn run() -> Result<(), Box<dyn Error>> {
    let listeners = server_starter::listeners().map_err(|err| match err {
        server_starter::Error::NotStarted => "not started by start_server; run it as: \
             start_server --port=127.0.0.1:8080 -- target/debug/examples/echo_server"
            .into(),
        other => Box::<dyn Error>::from(other),
    })?;
    let body: Arc<str> = format!(
        "pid={} generation={}\n",
        std::process::id(),
        server_starter::generation().map_or_else(|| "none".to_string(), |g| g.to_string())
    )
    .into();

    // The self-pipe: the signal handler only writes a byte to it, the loop
    // below decides what to do.
    let (shutdown, shutdown_writer) = UnixStream::pair()?;
    for signal in [SIGTERM, SIGINT] {
        signal_hook::low_level::pipe::register(signal, shutdown_writer.try_clone()?)?;
    }

    // A socket of another kind (a unix datagram socket from systemd) has
    // nothing to echo on: it is left alone, and never polled.
    let listeners: Vec<_> = listeners
        .into_iter()
        .filter(|(key, listener)| {
            let served = kind(listener) != "other";
            if !served {
                eprintln!("echo_server: not serving {key}: not a TCP, UDP or unix stream socket");
            }
            served
        })
        .collect();
    for (key, listener) in &listeners {
        listener.set_nonblocking(true)?;
        eprintln!("echo_server: serving {key} ({})", kind(listener));
    }
    // Everything is in place: the next accept succeeds. A supervisor that
    // waits for READY=1 may now retire the
    // previous generation. Not being able to say so is no reason to stop
    // serving: without the message the supervisor falls back to its timeout.
    if let Err(err) = server_starter::notify_ready() {
        eprintln!("echo_server: {}", error_chain(&err));
    }

    let mut connections = serve_until_shutdown(&listeners, &shutdown, &body)?;
    eprintln!("echo_server: shutting down");
    drop(listeners);
    for connection in connections.drain(..) {
        let _ = connection.join();
    }
    Ok(())
}

/// Waits on every listener and the self-pipe; returns once a signal arrived,
/// with the connections still in flight.
fn serve_until_shutdown(
    listeners: &[(String, Listener)],
    shutdown: &UnixStream,
    body: &Arc<str>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut pollfds: Vec<libc::pollfd> = std::iter::once(shutdown.as_raw_fd())
        .chain(listeners.iter().map(|(_, listener)| listener.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    loop {
        poll(&mut pollfds)?;
        if pollfds[0].revents != 0 {
            return Ok(connections);
        }
        for ((key, listener), pollfd) in listeners.iter().zip(&pollfds[1..]) {
            if pollfd.revents == 0 {
                continue;
            }
            let result = match listener {
                Listener::Tcp(tcp) => accept_all(|| tcp.accept().map(|(s, _)| Stream::Tcp(s))),
                Listener::Unix(unix) => accept_all(|| unix.accept().map(|(s, _)| Stream::Unix(s))),
                Listener::Udp(udp) => echo_datagrams(udp, body).map(|()| Vec::new()),
                // Filtered out before the loop.
                _ => Ok(Vec::new()),
            };
            match result {
                Ok(streams) => {
                    for stream in streams {
                        let body = Arc::clone(body);
                        connections.push(thread::spawn(move || serve_connection(stream, &body)));
                    }
                }
                // One bad accept (out of descriptors, say) must not stop the
                // others; the pause keeps a persisting error from spinning.
                Err(err) => {
                    eprintln!("echo_server: {key}: {err}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
        connections.retain(|connection| !connection.is_finished());
    }
}

/// `poll(2)` until something is readable; EINTR is a wake-up, not an error.
fn poll(pollfds: &mut [libc::pollfd]) -> io::Result<()> {
    loop {
        // SAFETY: `pollfds` is a valid, initialised slice of its length.
        let ready = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, -1) };
        if ready >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// An accepted connection.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Accepts until the backlog is empty (`WouldBlock`), which may be at once if
/// another generation took the connection.
fn accept_all(mut accept: impl FnMut() -> io::Result<Stream>) -> io::Result<Vec<Stream>> {
    let mut streams = Vec::new();
    loop {
        match accept() {
            Ok(stream) => streams.push(stream),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(streams),
            Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(err) if streams.is_empty() => return Err(err),
            Err(err) => {
                eprintln!("echo_server: accept: {err}");
                return Ok(streams);
            }
        }
    }
}

fn echo_datagrams(socket: &UdpSocket, body: &str) -> io::Result<()> {
    let mut buf = [0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                socket.send_to(body.as_bytes(), peer)?;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) => return Err(err),
        }
    }
}

fn serve_connection(stream: Stream, body: &str) {
    let result = match stream {
        Stream::Tcp(stream) => stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(READ_TIMEOUT)))
            .and_then(|()| answer(stream, body)),
        Stream::Unix(stream) => stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(READ_TIMEOUT)))
            .and_then(|()| answer(stream, body)),
    };
    if let Err(err) = result {
        eprintln!("echo_server: connection: {err}");
    }
}

/// Reads the request head (up to a blank line, EOF or the read timeout), then
/// writes a minimal HTTP/1.0 response.
fn answer<S: Read + Write>(mut stream: S, body: &str) -> io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !ends_head(&request) && request.len() < MAX_REQUEST {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(err) => return Err(err),
        }
    }
    write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

fn ends_head(request: &[u8]) -> bool {
    request.windows(4).any(|w| w == b"\r\n\r\n") || request.windows(2).any(|w| w == b"\n\n")
}

fn kind(listener: &Listener) -> &'static str {
    match listener {
        Listener::Tcp(_) => "tcp",
        Listener::Unix(_) => "unix",
        Listener::Udp(_) => "udp",
        _ => "other",
    }
}
