//! The worker side of Server::Starter: take the listening sockets that
//! `start_server` bound and handed down.
//!
//! `start_server` binds every socket once, before the first worker, and keeps
//! them open for its whole life. Each worker generation inherits the same
//! descriptors and learns what they are from two environment variables:
//!
//! - `SERVER_STARTER_PORT`: `KEY=FD` entries joined by `;`, ports first in
//!   command-line order, then unix socket paths. `KEY` is the `--path`
//!   value as given (`/tmp/app.sock`), or the `--port` value without what
//!   only `start_server` needs: no `u` before a UDP port (`u53` is keyed
//!   `53`), no `=N` descriptor pin (`80=5` is keyed `80`), no brackets
//!   around an IPv4 address (`80`, `127.0.0.1:80`, `[::1]:8080`). A socket
//!   passed on from systemd socket activation is keyed by its address. `FD`
//!   is the inherited descriptor number:
//!   `80=3;[::1]:8080=4;/tmp/app.sock=5`. The variable is set but empty when
//!   `start_server` was given no `--port` or `--path` at all. Two entries
//!   may share a key (`--port=53 --port=u53`); [`listener`] tells them
//!   apart by the kind its key asks for.
//! - `SERVER_STARTER_GENERATION`: which worker start this is, counting from 1.
//!
//! This crate gives a Rust worker what Perl's `Server::Starter::server_ports()`
//! gives a Perl one: [`server_ports`] parses the variable into key → fd, and
//! [`listeners`] turns those descriptors into ready std sockets by asking each
//! one what it is. [`listener`] takes one socket by its key, and
//! [`listener_or_bind`] binds the key's address itself when the process was
//! not started by `start_server`, so that the same worker also runs on its
//! own (`cargo run`) during development. [`encode_server_ports`] writes the
//! variable: `start_server` uses it, so one format has one reader and one
//! writer. It depends on `std` and `libc` only.
//!
//! A `--path` is a file name, and file names are bytes: `start_server` writes
//! such a key into the variable as it is, UTF-8 or not. The `String` API
//! refuses a value that is not UTF-8; its `OsString` twins
//! [`server_ports_os`], [`server_ports_from_os`] and [`listeners_os`] take
//! every value `start_server` writes and give each key back byte for byte.
//! (A path containing `;` is the one key the format cannot carry: nothing
//! escapes the separator, under the Perl original either.)
//!
//! # Examples
//!
//! A worker that serves whatever `start_server` gave it:
//!
//! ```no_run
//! use server_starter::Listener;
//!
//! fn main() -> Result<(), server_starter::Error> {
//!     for (key, listener) in server_starter::listeners()? {
//!         match listener {
//!             Listener::Tcp(tcp) => println!("{key}: tcp {:?}", tcp.local_addr()),
//!             Listener::Unix(unix) => println!("{key}: unix {:?}", unix.local_addr()),
//!             Listener::Udp(udp) => println!("{key}: udp {:?}", udp.local_addr()),
//!             // A unix datagram socket from systemd, and the like.
//!             other => println!("{key}: another socket: {other:?}"),
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! What a worker sees, done by hand here: a socket bound on an ephemeral
//! port, named in `SERVER_STARTER_PORT` the way `start_server` names it.
//!
//! ```
//! use std::net::TcpListener;
//! use std::os::fd::IntoRawFd;
//! use server_starter::Listener;
//!
//! let bound = TcpListener::bind("127.0.0.1:0")?;
//! let addr = bound.local_addr()?;
//! // start_server passes the descriptor across exec; here we give up our
//! // ownership of it so that `listeners()` can take it.
//! let fd = bound.into_raw_fd();
//! // SAFETY: the doctest is single-threaded; nothing reads the environment
//! // concurrently.
//! unsafe { std::env::set_var("SERVER_STARTER_PORT", format!("{addr}={fd}")) };
//!
//! let listeners = server_starter::listeners()?;
//! assert_eq!(listeners.len(), 1);
//! let (key, listener) = &listeners[0];
//! assert_eq!(key, &addr.to_string());
//! match listener {
//!     Listener::Tcp(tcp) => assert_eq!(tcp.local_addr()?, addr),
//!     other => panic!("expected a TCP listener, got {other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! One socket by its key, the way a worker that knows its address takes it;
//! run outside `start_server`, the same line binds the address itself:
//!
//! ```no_run
//! use std::io::{BufRead, BufReader, Write};
//!
//! // `start_server --port=127.0.0.1:8080 -- worker`, or just `worker`.
//! let listener = server_starter::listener_or_bind("127.0.0.1:8080")?.into_tcp()?;
//! for stream in listener.incoming() {
//!     let mut stream = stream?;
//!     // Read the request head before answering: closing a socket with
//!     // unread data resets the connection, and the client may lose the
//!     // answer.
//!     let mut reader = BufReader::new(&stream);
//!     let mut line = String::new();
//!     while reader.read_line(&mut line)? > 2 {
//!         line.clear();
//!     }
//!     stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello\n")?;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! This one ends on the first failed connection, and SIGTERM (how
//! `start_server` retires a generation) kills it with whatever it was
//! answering: `examples/std_worker.rs` stops accepting on SIGTERM, finishes,
//! and survives a failed `accept`.
//!
//! # Async runtimes
//!
//! The sockets come blocking, as `start_server` (like the Perl original)
//! creates them. An event loop wants them non-blocking:
//! [`Listener::into_nonblocking`] (or [`listeners_nonblocking`] for all of
//! them) sets `O_NONBLOCK`, after which the std socket goes to the runtime as
//! it is, e.g. with tokio:
//!
//! ```ignore
//! let listener = server_starter::listener_or_bind("127.0.0.1:8080")?
//!     .into_nonblocking()?
//!     .into_tcp()?;
//! let listener = tokio::net::TcpListener::from_std(listener)?;
//! ```
//!
//! (`examples/axum-worker` in the repository is a whole tokio + axum worker
//! with graceful shutdown.)
//!
//! `O_NONBLOCK` is a flag of the open file description, which every worker
//! generation shares: setting it here also changes it for the previous and the
//! next generation. That is fine: `start_server` never touches those flags
//! after binding, so a worker that sets them keeps them, and a blocking worker
//! of another generation that inherits a non-blocking socket sees `accept`
//! return `WouldBlock` instead of hanging. [`listeners`] and [`listener`]
//! themselves leave the file status flags alone.
//!
//! # Readiness
//!
//! A worker may tell its supervisor when it is ready to serve, with the
//! systemd notify protocol (`sd_notify(3)`): the supervisor names a unix
//! datagram socket in `NOTIFY_SOCKET` (a path, or `@name` in Linux's
//! abstract namespace), and the worker sends it `READY=1`. A supervisor
//! that waits for it (`start_server --notify-ready`, or systemd for a
//! `Type=notify` service) counts the worker as started on that message
//! rather than after a fixed delay. [`notify_ready`] sends `READY=1`,
//! [`notify`] any other state (`STATUS=...`, `EXTEND_TIMEOUT_USEC=...`,
//! `STOPPING=1`); both return `Ok(false)` and do nothing when the variable
//! is unset, so a worker calls them unconditionally:
//!
//! ```no_run
//! let listeners = server_starter::listeners()?;
//! // ... load, warm up ...
//! if let Err(err) = server_starter::notify_ready() {
//!     eprintln!("cannot report readiness: {err}");
//! }
//! # Ok::<(), server_starter::Error>(())
//! ```

#![warn(missing_docs)]

use std::ffi::{OsStr, OsString, c_int};
use std::fmt;
use std::io;
use std::mem::{self, ManuallyDrop};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The variable naming the inherited sockets.
const PORT_VAR: &str = "SERVER_STARTER_PORT";

/// The variable holding the worker's generation number.
const GENERATION_VAR: &str = "SERVER_STARTER_GENERATION";

/// The variable naming the supervisor's notify socket.
const NOTIFY_VAR: &str = "NOTIFY_SOCKET";

/// How long a notification waits for room in the receiver's queue.
/// libsystemd's `sd_notify()` waits without bound.
const NOTIFY_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The size of `sockaddr_un.sun_path` (108 bytes on Linux).
const SUN_PATH_LEN: usize =
    mem::size_of::<libc::sockaddr_un>() - mem::offset_of!(libc::sockaddr_un, sun_path);

/// `sendto` flags: no `SIGPIPE` (macOS has no such flag).
#[cfg(not(target_vendor = "apple"))]
const SEND_FLAGS: c_int = libc::MSG_NOSIGNAL;
#[cfg(target_vendor = "apple")]
const SEND_FLAGS: c_int = 0;

/// Which inherited descriptors this process has taken.
static TAKEN: Mutex<Taken> = Mutex::new(Taken {
    all: false,
    fds: Vec::new(),
});

/// What [`listeners`] (all of them) and [`listener`] (one each) handed out.
struct Taken {
    all: bool,
    fds: Vec<RawFd>,
}

/// Why the inherited sockets could not be read or taken.
///
/// Every message names the key (or the descriptor) it is about and, for a
/// failed system call, its cause: printing the error alone says it all.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `SERVER_STARTER_PORT` is not set: the process was not started by
    /// `start_server`.
    NotStarted,
    /// An entry of `SERVER_STARTER_PORT` is not `KEY=FD` with a non-empty key
    /// and a descriptor number made of digits.
    Malformed {
        /// The offending entry, as it appears in the variable.
        entry: String,
    },
    /// `SERVER_STARTER_PORT` is not valid UTF-8 (a `--path` whose file name
    /// is not): the `String` API cannot carry its keys, [`server_ports_os`]
    /// and [`listeners_os`] can.
    NotUtf8 {
        /// The value, with the bytes that are not UTF-8 shown as U+FFFD.
        value: String,
    },
    /// Two entries of `SERVER_STARTER_PORT` name the same descriptor.
    DuplicateFd {
        /// The key of the second entry.
        key: String,
        /// The descriptor both name.
        fd: RawFd,
    },
    /// An entry names descriptor 1 or 2, standard output or standard error,
    /// where `start_server` never places a socket.
    ReservedFd {
        /// The entry's key.
        key: String,
        /// The descriptor it names.
        fd: RawFd,
    },
    /// The descriptor of an entry is not open, or is open but not a socket.
    NotASocket {
        /// The entry's key.
        key: String,
        /// The descriptor it names.
        fd: RawFd,
    },
    /// The descriptor is a connection, not a socket `start_server` hands
    /// down: a stream socket that does not listen (`SO_ACCEPTCONN` unset),
    /// or a datagram socket connected to a peer. Such a descriptor belongs
    /// to somebody else (a process that inherited `SERVER_STARTER_PORT`
    /// from a worker, and opened a connection that landed on the number),
    /// and is left alone.
    Connected {
        /// The entry's key.
        key: String,
        /// The descriptor it names.
        fd: RawFd,
    },
    /// [`listener`] found the entry, but its socket is bound to another
    /// address than the key says: the descriptor is not the socket
    /// `start_server` bound for it, and is left alone.
    AddressMismatch {
        /// The entry's key.
        key: String,
        /// The descriptor it names.
        fd: RawFd,
        /// The address the socket is bound to.
        bound: String,
    },
    /// The socket was already taken in this process: by a successful
    /// [`listeners`] (which takes them all), or, for [`listener`], by an
    /// earlier [`listener`] of the same socket; [`listeners`] also refuses
    /// once [`listener`] took one. The descriptors belong to the values
    /// returned then.
    AlreadyTaken {
        /// The key asked for, or `None` for [`listeners`] (all of them).
        key: Option<String>,
    },
    /// A system call on a socket failed for another reason.
    Io {
        /// The entry's key, when the socket was being taken.
        key: Option<String>,
        /// The descriptor.
        fd: RawFd,
        /// Why it failed.
        source: io::Error,
    },
    /// The notify socket address (`NOTIFY_SOCKET`, or the one given to
    /// [`notify_to`]) is not one a datagram can be sent to: it is neither an
    /// absolute path nor `@name`, or it is too long for a unix socket address
    /// (on Linux at most 107 bytes for a path, 107 after the `@` for a
    /// name), or it
    /// holds a NUL byte, or it is an abstract name on a system other than
    /// Linux.
    InvalidNotifySocket {
        /// The address, as given.
        socket: OsString,
    },
    /// Sending the notification datagram failed: nothing is bound at the
    /// address (`ENOENT`, `ECONNREFUSED`), no permission (`EACCES`), the
    /// state is larger than a datagram may be (`EMSGSIZE`), the receiver's
    /// queue stayed full for the whole send timeout (`EAGAIN`), and so on.
    NotifyFailed {
        /// The address the datagram was sent to, as given.
        socket: OsString,
        /// Why the send failed.
        source: io::Error,
    },
    /// `SERVER_STARTER_PORT` is set but has no entry for the key given to
    /// [`listener`] or [`listener_or_bind`]: `start_server` was given other
    /// `--port`/`--path` options than the worker expects. (Binding the
    /// address instead would give a socket that does not survive a restart,
    /// so this is an error, never a reason to bind.)
    NoSuchKey {
        /// The key asked for.
        key: String,
        /// The keys the variable has, in its order.
        available: Vec<String>,
    },
    /// More than one entry of `SERVER_STARTER_PORT` fits the key given to
    /// [`listener`], even after preferring the kind the key asks for
    /// (`u53` a UDP socket, `53` a TCP one): name the socket more
    /// precisely (`HOST:PORT`, `=FD`).
    Ambiguous {
        /// The key asked for.
        key: String,
        /// The entries that fit, as `KEY=FD`.
        entries: Vec<String>,
    },
    /// The socket is not of the kind asked for by [`Listener::into_tcp`],
    /// [`Listener::into_unix`] or [`Listener::into_udp`].
    WrongKind {
        /// The kind asked for: `"tcp"`, `"unix"` or `"udp"`.
        expected: &'static str,
        /// The kind the socket is: one of those, or `"other"`.
        found: &'static str,
        /// The socket's descriptor (closed by then).
        fd: RawFd,
    },
    /// [`listener_or_bind`], run outside `start_server`, could not bind the
    /// key's address: the system refused (`EADDRINUSE`, `EACCES`, ...), or
    /// the key is neither an address nor a path (`InvalidInput`).
    Bind {
        /// The address (the key), as given.
        address: String,
        /// Why binding failed.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotStarted => write!(
                f,
                "{PORT_VAR} is not set: the process was not started by start_server"
            ),
            Error::Malformed { entry } => {
                write!(f, "malformed {PORT_VAR} entry {entry:?}: expected KEY=FD")
            }
            Error::NotUtf8 { value } => write!(
                f,
                "{PORT_VAR} is not UTF-8 ({value:?}): use listeners_os or server_ports_os"
            ),
            Error::DuplicateFd { key, fd } => write!(
                f,
                "{key}: file descriptor {fd} is named twice in {PORT_VAR}"
            ),
            Error::ReservedFd { key, fd } => write!(
                f,
                "{key}: file descriptor {fd} is standard {}, never a socket from start_server",
                if *fd == 1 { "output" } else { "error" }
            ),
            Error::NotASocket { key, fd } => {
                write!(f, "{key}: file descriptor {fd} is not an open socket")
            }
            Error::Connected { key, fd } => write!(
                f,
                "{key}: file descriptor {fd} is a connection, not a listening socket"
            ),
            Error::AddressMismatch { key, fd, bound } => write!(
                f,
                "{key}: file descriptor {fd} is bound to {bound}, not to {key}"
            ),
            Error::AlreadyTaken { key: None } => {
                write!(f, "the inherited sockets were already taken")
            }
            Error::AlreadyTaken { key: Some(key) } => {
                write!(f, "{key}: the socket was already taken")
            }
            Error::Io {
                key: Some(key),
                fd,
                source,
            } => write!(f, "{key}: file descriptor {fd}: {source}"),
            Error::Io {
                key: None,
                fd,
                source,
            } => write!(f, "file descriptor {fd}: {source}"),
            Error::InvalidNotifySocket { socket } => write!(
                f,
                "invalid notify socket {:?}: {}",
                socket.to_string_lossy(),
                address_problem(socket.as_bytes()).unwrap_or_else(|| "unusable address".into())
            ),
            Error::NotifyFailed { socket, source } => write!(
                f,
                "cannot send a notification to {:?}: {source}",
                socket.to_string_lossy()
            ),
            Error::NoSuchKey { key, available } if available.is_empty() => {
                write!(f, "no socket {key:?} in {PORT_VAR}: it names none")
            }
            Error::NoSuchKey { key, available } => write!(
                f,
                "no socket {key:?} in {PORT_VAR}: it has {}",
                quoted(available)
            ),
            Error::Ambiguous { key, entries } => write!(
                f,
                "{key:?} fits more than one socket in {PORT_VAR}: {}",
                quoted(entries)
            ),
            Error::WrongKind {
                expected,
                found,
                fd,
            } => write!(
                f,
                "file descriptor {fd}: expected a {expected} socket, got a {found} socket"
            ),
            Error::Bind { address, source } => write!(f, "failed to bind {address:?}: {source}"),
        }
    }
}

/// The message carries the cause of a failed system call, so `source` is
/// `None`: a chain printer shows it once.
impl std::error::Error for Error {}

/// `"a", "b", "c"`.
fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|item| format!("{item:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An inherited socket, ready to use.
///
/// Sockets `start_server` binds are TCP, UDP or unix stream sockets; a
/// socket passed on from systemd socket activation may be any other kind
/// (a unix datagram or seqpacket socket, ...): [`Listener::Other`]. More
/// variants may come, so a `match` needs a `_` arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// A listening TCP socket (IPv4 or IPv6).
    Tcp(TcpListener),
    /// A listening unix stream socket (`--path`).
    Unix(UnixListener),
    /// A bound UDP socket (`--port=u53` and the like).
    Udp(UdpSocket),
    /// Any other socket: a unix datagram or seqpacket socket, another
    /// address family. A connection-oriented one listens (its
    /// `SO_ACCEPTCONN` is set); a datagram one has no peer.
    Other(OwnedFd),
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(socket) => socket.as_fd(),
            Listener::Unix(socket) => socket.as_fd(),
            Listener::Udp(socket) => socket.as_fd(),
            Listener::Other(socket) => socket.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Listener {
    /// Sets or clears `O_NONBLOCK` on the socket.
    ///
    /// The flag belongs to the open file description, which every worker
    /// generation shares (see the crate documentation).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        match self {
            Listener::Tcp(socket) => socket.set_nonblocking(nonblocking),
            Listener::Unix(socket) => socket.set_nonblocking(nonblocking),
            Listener::Udp(socket) => socket.set_nonblocking(nonblocking),
            Listener::Other(socket) => {
                set_status_flag(socket.as_raw_fd(), libc::O_NONBLOCK, nonblocking)
            }
        }
    }

    /// The same socket with `O_NONBLOCK` set, ready for an async runtime:
    /// `tokio::net::TcpListener::from_std` (and its unix and UDP twins)
    /// take the std socket inside as it is.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if `fcntl` fails (the socket is then closed).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use std::net::TcpListener;
    /// use server_starter::Listener;
    ///
    /// let listener = Listener::Tcp(TcpListener::bind("127.0.0.1:0")?).into_nonblocking()?;
    /// let tcp = listener.into_tcp()?;
    /// // Nobody is connecting: a non-blocking accept returns at once.
    /// assert_eq!(tcp.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_nonblocking(self) -> Result<Listener, Error> {
        match self.set_nonblocking(true) {
            Ok(()) => Ok(self),
            Err(source) => Err(Error::Io {
                key: None,
                fd: self.as_raw_fd(),
                source,
            }),
        }
    }

    /// The TCP listener inside.
    ///
    /// # Errors
    ///
    /// [`Error::WrongKind`] when the socket is of another kind (it is then
    /// closed: match on the enum instead to keep it).
    pub fn into_tcp(self) -> Result<TcpListener, Error> {
        match self {
            Listener::Tcp(socket) => Ok(socket),
            other => Err(other.wrong_kind("tcp")),
        }
    }

    /// The unix stream listener inside.
    ///
    /// # Errors
    ///
    /// [`Error::WrongKind`] when the socket is of another kind (it is then
    /// closed).
    pub fn into_unix(self) -> Result<UnixListener, Error> {
        match self {
            Listener::Unix(socket) => Ok(socket),
            other => Err(other.wrong_kind("unix")),
        }
    }

    /// The UDP socket inside.
    ///
    /// # Errors
    ///
    /// [`Error::WrongKind`] when the socket is of another kind (it is then
    /// closed).
    pub fn into_udp(self) -> Result<UdpSocket, Error> {
        match self {
            Listener::Udp(socket) => Ok(socket),
            other => Err(other.wrong_kind("udp")),
        }
    }

    fn wrong_kind(&self, expected: &'static str) -> Error {
        let found = match self {
            Listener::Tcp(_) => "tcp",
            Listener::Unix(_) => "unix",
            Listener::Udp(_) => "udp",
            Listener::Other(_) => "other",
        };
        Error::WrongKind {
            expected,
            found,
            fd: self.as_raw_fd(),
        }
    }
}

/// Reads `SERVER_STARTER_PORT` into `(key, fd)` pairs, in the variable's order.
///
/// This only parses: it does not check that the descriptors are open. See
/// [`server_ports_from`] for the format.
///
/// # Errors
///
/// [`Error::NotStarted`] when the variable is unset, [`Error::Malformed`] when
/// an entry cannot be parsed, [`Error::NotUtf8`] for a value that is not
/// valid UTF-8 ([`server_ports_os`] accepts it). A set but empty variable is
/// not an error: it gives an empty list.
///
/// # Examples
///
/// ```no_run
/// for (key, fd) in server_starter::server_ports()? {
///     println!("{key} is on file descriptor {fd}");
/// }
/// # Ok::<(), server_starter::Error>(())
/// ```
pub fn server_ports() -> Result<Vec<(String, RawFd)>, Error> {
    let value = std::env::var_os(PORT_VAR).ok_or(Error::NotStarted)?;
    match value.to_str() {
        Some(value) => server_ports_from(value),
        None => Err(Error::NotUtf8 {
            value: value.to_string_lossy().into_owned(),
        }),
    }
}

/// Parses a `SERVER_STARTER_PORT` value into `(key, fd)` pairs, in order.
///
/// Entries are separated by `;`; empty entries are skipped (as Perl's
/// `split` does, so a trailing `;` is harmless). Each entry is split at its
/// **last** `=`: the descriptor number is always the digits at the end, while
/// a key that is a unix socket path may itself contain `=` (Perl's
/// `server_ports()` splits at the first `=` and would get such a key wrong;
/// for every key without `=` both give the same result).
///
/// # Errors
///
/// [`Error::Malformed`] for an entry without `=`, with an empty key, or whose
/// descriptor is not a plain non-negative decimal number fitting a `RawFd`.
///
/// # Examples
///
/// ```
/// let ports = server_starter::server_ports_from("80=3;[::1]:8080=4;/tmp/app.sock=5")?;
/// assert_eq!(
///     ports,
///     [
///         ("80".to_string(), 3),
///         ("[::1]:8080".to_string(), 4),
///         ("/tmp/app.sock".to_string(), 5),
///     ]
/// );
/// assert!(server_starter::server_ports_from("")?.is_empty());
/// # Ok::<(), server_starter::Error>(())
/// ```
pub fn server_ports_from(value: &str) -> Result<Vec<(String, RawFd)>, Error> {
    parse_entries(value.as_bytes())
        .map(|entry| {
            // A key is a run of whole UTF-8 characters of `value`: the
            // separators are ASCII.
            entry.map(|(key, fd)| (String::from_utf8_lossy(key).into_owned(), fd))
        })
        .collect()
}

/// Reads `SERVER_STARTER_PORT` into `(key, fd)` pairs, in the variable's
/// order, with each key exactly as `start_server` wrote it.
///
/// Unlike [`server_ports`], this accepts a value that is not valid UTF-8: a
/// `--path` whose file name is not UTF-8 comes back with its bytes intact,
/// ready to be used as a path. See [`server_ports_from_os`] for the format.
///
/// # Errors
///
/// [`Error::NotStarted`] when the variable is unset, [`Error::Malformed`] when
/// an entry cannot be parsed (its `entry` shows the bytes that are not UTF-8
/// as U+FFFD). A set but empty variable gives an empty list.
///
/// # Examples
///
/// ```no_run
/// use std::path::Path;
///
/// for (key, fd) in server_starter::server_ports_os()? {
///     println!("{} is on file descriptor {fd}", Path::new(&key).display());
/// }
/// # Ok::<(), server_starter::Error>(())
/// ```
pub fn server_ports_os() -> Result<Vec<(OsString, RawFd)>, Error> {
    let value = std::env::var_os(PORT_VAR).ok_or(Error::NotStarted)?;
    server_ports_from_os(&value)
}

/// Parses a `SERVER_STARTER_PORT` value into `(key, fd)` pairs, in order,
/// with each key's bytes as they are in `value`.
///
/// The format is that of [`server_ports_from`], read as bytes: entries
/// separated by `;` (empty ones skipped), each split at its last `=`. For a
/// value that is valid UTF-8 both give the same pairs.
///
/// # Errors
///
/// [`Error::Malformed`] for an entry without `=`, with an empty key, or whose
/// descriptor is not a plain non-negative decimal number fitting a `RawFd`.
///
/// # Examples
///
/// ```
/// use std::ffi::{OsStr, OsString};
/// use std::os::unix::ffi::OsStrExt;
///
/// // What start_server writes for `--port=80 --path=/tmp/caf\xe9.sock`.
/// let value = OsStr::from_bytes(b"80=3;/tmp/caf\xe9.sock=4");
/// let ports = server_starter::server_ports_from_os(value)?;
/// assert_eq!(
///     ports,
///     [
///         (OsString::from("80"), 3),
///         (OsStr::from_bytes(b"/tmp/caf\xe9.sock").to_owned(), 4),
///     ]
/// );
/// # Ok::<(), server_starter::Error>(())
/// ```
pub fn server_ports_from_os(value: &OsStr) -> Result<Vec<(OsString, RawFd)>, Error> {
    parse_entries(value.as_bytes())
        .map(|entry| entry.map(|(key, fd)| (OsString::from_vec(key.to_vec()), fd)))
        .collect()
}

/// Writes `(key, fd)` pairs as a `SERVER_STARTER_PORT` value: `KEY=FD`
/// entries joined by `;`, in the given order, each key byte for byte. This
/// is what `start_server` sets for its workers, and what
/// [`server_ports_from_os`] reads back.
///
/// Every key is written as it is, as `start_server` (like the Perl original)
/// writes every `--port` and `--path` as given. Two cannot be read back: an
/// empty key and one that holds a `;` (nothing escapes the separator).
///
/// # Examples
///
/// ```
/// use std::ffi::OsStr;
///
/// let value = server_starter::encode_server_ports([("80", 3), ("/tmp/app.sock", 4)]);
/// assert_eq!(value, "80=3;/tmp/app.sock=4");
/// assert_eq!(
///     server_starter::server_ports_from_os(&value)?,
///     [("80".into(), 3), ("/tmp/app.sock".into(), 4)]
/// );
/// assert_eq!(server_starter::encode_server_ports::<&OsStr>([]), "");
/// # Ok::<(), server_starter::Error>(())
/// ```
pub fn encode_server_ports<K: AsRef<OsStr>>(
    ports: impl IntoIterator<Item = (K, RawFd)>,
) -> OsString {
    let mut value = OsString::new();
    for (i, (key, fd)) in ports.into_iter().enumerate() {
        if i > 0 {
            value.push(";");
        }
        value.push(key.as_ref());
        value.push(format!("={fd}"));
    }
    value
}

/// The entries of a `SERVER_STARTER_PORT` value, each parsed.
fn parse_entries(value: &[u8]) -> impl Iterator<Item = Result<(&[u8], RawFd), Error>> {
    value
        .split(|&b| b == b';')
        .filter(|entry| !entry.is_empty())
        .map(parse_entry)
}

fn parse_entry(entry: &[u8]) -> Result<(&[u8], RawFd), Error> {
    let malformed = || Error::Malformed {
        entry: String::from_utf8_lossy(entry).into_owned(),
    };
    let split = entry
        .iter()
        .rposition(|&b| b == b'=')
        .ok_or_else(malformed)?;
    let (key, fd) = (&entry[..split], &entry[split + 1..]);
    // `parse` alone would also accept a leading `+`.
    if key.is_empty() || fd.is_empty() || !fd.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let fd = std::str::from_utf8(fd)
        .ok()
        .and_then(|fd| fd.parse::<RawFd>().ok())
        .ok_or_else(malformed)?;
    Ok((key, fd))
}

/// Reads `SERVER_STARTER_GENERATION`: 1 for the first worker `start_server`
/// started, 2 for the next, and so on.
///
/// `None` when the variable is unset or not a number.
///
/// # Examples
///
/// ```no_run
/// match server_starter::generation() {
///     Some(generation) => println!("worker generation {generation}"),
///     None => println!("not started by start_server"),
/// }
/// ```
pub fn generation() -> Option<u64> {
    std::env::var(GENERATION_VAR).ok()?.parse().ok()
}

/// Takes the sockets named in `SERVER_STARTER_PORT` as std sockets, in the
/// variable's order, each with its key.
///
/// Each descriptor is asked what it is (`SO_TYPE`, and the address family
/// from `getsockname`): an IPv4 or IPv6 stream socket becomes a
/// [`Listener::Tcp`], a unix stream socket a [`Listener::Unix`], an IPv4 or
/// IPv6 datagram socket a [`Listener::Udp`], any other socket (one passed
/// on from systemd socket activation) a [`Listener::Other`].
///
/// The variable is inherited by every process the worker starts, and a
/// descriptor number it names may there be something else: a database
/// connection that happened to land on fd 3. So a stream or seqpacket socket
/// must listen (`SO_ACCEPTCONN`), a datagram socket must have no peer, and
/// descriptors 1 and 2 (where `start_server` never puts a socket) are
/// refused, all before anything is taken. A worker's own child processes
/// should not see the variable at all:
/// `Command::new("helper").env_remove("SERVER_STARTER_PORT")`.
///
/// # Ownership
///
/// The returned values own the descriptors and close them when dropped, so
/// this succeeds once per process; later calls return
/// [`Error::AlreadyTaken`]. (Wrapping a descriptor yourself with
/// `from_raw_fd` after this call would make two owners: don't.) Every entry
/// is checked before any is taken, so on error no descriptor has been wrapped
/// or closed, and the call may be retried.
///
/// # Flags
///
/// Each taken descriptor gets `FD_CLOEXEC`, like every socket std creates:
/// the worker's own child processes do not inherit the listening sockets
/// (they would keep the port busy after the worker exits). `start_server`
/// clears the flag again for every new worker it starts, so this does not
/// affect later generations. The file status flags (`O_NONBLOCK`) are left
/// alone: they are shared with every other generation (see the crate
/// documentation).
///
/// # Errors
///
/// [`Error::NotStarted`], [`Error::Malformed`] and [`Error::NotUtf8`] as for
/// [`server_ports`]; [`Error::DuplicateFd`] when two entries name the same
/// descriptor; [`Error::ReservedFd`] for descriptor 1 or 2;
/// [`Error::NotASocket`] for a descriptor that is not open or not a socket;
/// [`Error::Connected`] for a connection; [`Error::Io`] when a system call
/// on a descriptor fails otherwise; [`Error::AlreadyTaken`] on a second
/// call, or once [`listener`] took one.
pub fn listeners() -> Result<Vec<(String, Listener)>, Error> {
    take_once(server_ports()?)
}

/// Takes the sockets named in `SERVER_STARTER_PORT` as std sockets, like
/// [`listeners`], with each key exactly as `start_server` wrote it.
///
/// Unlike [`listeners`], this accepts a value that is not valid UTF-8 (a
/// `--path` whose file name is not UTF-8): see [`server_ports_os`].
/// Ownership and flags are as for [`listeners`]; the two share one "taken"
/// state, so only the first successful call of either takes the sockets.
///
/// # Errors
///
/// As for [`listeners`], with [`Error::NotStarted`] and [`Error::Malformed`]
/// as for [`server_ports_os`]. The `key` of an error is the entry's key with
/// bytes that are not UTF-8 shown as U+FFFD.
///
/// # Examples
///
/// ```no_run
/// use std::path::Path;
/// use server_starter::Listener;
///
/// for (key, listener) in server_starter::listeners_os()? {
///     if let Listener::Unix(unix) = listener {
///         println!("{}: {:?}", Path::new(&key).display(), unix.local_addr());
///     }
/// }
/// # Ok::<(), server_starter::Error>(())
/// ```
pub fn listeners_os() -> Result<Vec<(OsString, Listener)>, Error> {
    take_once(server_ports_os()?)
}

/// Takes the socket named `key` in `SERVER_STARTER_PORT`, as a std socket.
///
/// `key` is the `--port` or `--path` value given to `start_server`:
/// `"8080"`, `"127.0.0.1:8080"`, `"[::1]:8080"`, `"u53"`, `"8080=5"`,
/// `"/tmp/app.sock"`. A key holding a `/` is a path and matches only as
/// written. Any other key is read as `start_server` reads a `--port` and
/// writes its key: a `u` before the port asks for the UDP socket and is not
/// part of the key, nor is an `=N` suffix, which asks for the entry on
/// descriptor N. It matches the entries with the same key or, when none
/// has it, those for the same IP address written another way: a bare port
/// is `0.0.0.0:PORT` (what `start_server` binds for it), and `localhost` is
/// `127.0.0.1`, so `"0.0.0.0:8080"` finds `--port=8080` and `"8080"` finds
/// `--port=0.0.0.0:8080`. When a TCP and a UDP socket share the key
/// (`--port=53 --port=u53` are both keyed `53`), `"53"` takes the TCP one
/// and `"u53"` the UDP one.
///
/// The socket is checked and flagged as by [`listeners`], and must be bound
/// where the key says: the port of a port key, the address of an IP
/// literal, the wildcard address of a bare port, the path of a path (host
/// names are not resolved for this). Each socket can be taken once per
/// process, by this or by [`listeners`].
///
/// # Errors
///
/// [`Error::NotStarted`] when `SERVER_STARTER_PORT` is unset (see
/// [`listener_or_bind`] for a worker that should then bind the address
/// itself), [`Error::Malformed`] when it cannot be parsed,
/// [`Error::NoSuchKey`] when it has no entry for `key`,
/// [`Error::Ambiguous`] when more than one entry fits,
/// [`Error::AddressMismatch`] when the socket is bound elsewhere,
/// [`Error::AlreadyTaken`] when the socket was taken before,
/// [`Error::DuplicateFd`], [`Error::ReservedFd`], [`Error::NotASocket`],
/// [`Error::Connected`] and [`Error::Io`] as for [`listeners`].
///
/// # Examples
///
/// What a worker sees under `start_server --port=127.0.0.1:PORT`, done by
/// hand: a socket bound on an ephemeral port, named in `SERVER_STARTER_PORT`.
///
/// ```
/// use std::net::TcpListener;
/// use std::os::fd::IntoRawFd;
///
/// let bound = TcpListener::bind("127.0.0.1:0")?;
/// let addr = bound.local_addr()?;
/// let fd = bound.into_raw_fd();
/// let value = server_starter::encode_server_ports([(addr.to_string(), fd)]);
/// // SAFETY: the doctest is single-threaded; nothing reads the environment
/// // concurrently.
/// unsafe { std::env::set_var("SERVER_STARTER_PORT", value) };
///
/// let error = server_starter::listener("127.0.0.1:1").unwrap_err();
/// assert!(matches!(error, server_starter::Error::NoSuchKey { .. }));
///
/// let tcp = server_starter::listener(addr.to_string())?.into_tcp()?;
/// assert_eq!(tcp.local_addr()?, addr);
///
/// // Taken once: `tcp` owns the descriptor now.
/// use server_starter::Error::AlreadyTaken;
/// assert!(matches!(server_starter::listener(addr.to_string()), Err(AlreadyTaken { .. })));
/// assert!(matches!(server_starter::listeners(), Err(AlreadyTaken { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn listener(key: impl AsRef<OsStr>) -> Result<Listener, Error> {
    let value = std::env::var_os(PORT_VAR).ok_or(Error::NotStarted)?;
    take_key(&value, key.as_ref())
}

/// Takes the socket named `key` in `SERVER_STARTER_PORT` like [`listener`]
/// or, when the variable is not set at all (the process was not started by
/// `start_server`), binds `key` itself: run on its own (`cargo run`), the
/// worker listens on the address it would be given in production.
///
/// Outside `start_server`, `key` is read as `start_server` reads a `--port`
/// or `--path`: a key holding a `/` is the path of a unix socket, whose
/// stale file (a socket nobody accepts on any more) is removed first; a
/// bare port (`"8080"`) binds TCP `0.0.0.0:8080`, `"HOST:PORT"` and
/// `"[V6]:PORT"` bind TCP there (a host name is resolved), a `u` before the
/// port binds UDP instead, and an `=N` suffix is ignored. Anything else
/// (`":8080"`, `"127.0.0.1:80800"`, `"app.sock"`) is an [`Error::Bind`]
/// with an `InvalidInput` cause, and creates nothing: write `"./app.sock"`
/// for a socket in the working directory. Std binds TCP with
/// `SO_REUSEADDR` and a backlog of 128.
///
/// Under `start_server`, a missing key is an error, [`Error::NoSuchKey`],
/// never a reason to bind: a socket bound by the worker would close with it,
/// and connections would be refused during every restart.
///
/// # Errors
///
/// As for [`listener`], except [`Error::NotStarted`]; [`Error::Bind`] when
/// binding fails.
///
/// # Examples
///
/// ```
/// // SAFETY: the doctest is single-threaded; nothing reads the environment
/// // concurrently.
/// unsafe { std::env::remove_var("SERVER_STARTER_PORT") };
///
/// // Not under start_server: bound here (port 0 picks a free one).
/// let tcp = server_starter::listener_or_bind("127.0.0.1:0")?.into_tcp()?;
/// assert!(tcp.local_addr()?.ip().is_loopback());
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("app.sock");
/// let unix = server_starter::listener_or_bind(&path)?.into_unix()?;
/// assert_eq!(unix.local_addr()?.as_pathname(), Some(path.as_path()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn listener_or_bind(key: impl AsRef<OsStr>) -> Result<Listener, Error> {
    match std::env::var_os(PORT_VAR) {
        Some(value) => take_key(&value, key.as_ref()),
        None => bind_key(key.as_ref()),
    }
}

/// Takes the sockets named in `SERVER_STARTER_PORT` like [`listeners`], each
/// with `O_NONBLOCK` set (see [`Listener::into_nonblocking`]), ready for an
/// async runtime.
///
/// # Errors
///
/// As for [`listeners`]; [`Error::Io`] if `fcntl` fails.
///
/// # Examples
///
/// ```ignore
/// for (key, listener) in server_starter::listeners_nonblocking()? {
///     let listener = tokio::net::TcpListener::from_std(listener.into_tcp()?)?;
///     tokio::spawn(serve(key, listener));
/// }
/// ```
pub fn listeners_nonblocking() -> Result<Vec<(String, Listener)>, Error> {
    listeners()?
        .into_iter()
        .map(|(key, listener)| Ok((key, listener.into_nonblocking()?)))
        .collect()
}

/// The `TAKEN` registry, usable even if a thread panicked while holding it
/// (it is updated only after the descriptors were wrapped).
fn taken() -> MutexGuard<'static, Taken> {
    TAKEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `ports` unless some inherited socket was already taken.
fn take_once<K: AsRef<OsStr>>(ports: Vec<(K, RawFd)>) -> Result<Vec<(K, Listener)>, Error> {
    let mut taken = taken();
    if taken.all || !taken.fds.is_empty() {
        return Err(Error::AlreadyTaken { key: None });
    }
    // SAFETY: the descriptors in SERVER_STARTER_PORT were handed to this
    // process for its own use, `take_listeners` checks that each is a socket
    // that listens (not a connection that merely landed on the number), and
    // `TAKEN` makes sure they are taken once.
    let listeners = unsafe { take_listeners(ports) }?;
    taken.all = true;
    Ok(listeners)
}

/// Takes the entry of `value` (a `SERVER_STARTER_PORT`) that `key` names,
/// unless it was already taken.
fn take_key(value: &OsStr, key: &OsStr) -> Result<Listener, Error> {
    let ports = server_ports_from_os(value)?;
    let (found, fd) = find_port(&ports, key, is_udp)?;
    let found_lossy = found.to_string_lossy().into_owned();
    if ports.iter().filter(|(_, other)| *other == fd).count() > 1 {
        return Err(Error::DuplicateFd {
            key: found_lossy,
            fd,
        });
    }
    let mut taken = taken();
    if taken.all || taken.fds.contains(&fd) {
        return Err(Error::AlreadyTaken {
            key: Some(key.to_string_lossy().into_owned()),
        });
    }
    let kind = classify(&found_lossy, fd)?;
    check_address(found, fd, kind)?;
    // SAFETY: as in `take_once`, and the socket is bound where the key
    // says; `TAKEN` records the descriptor so that it is taken once.
    let listener = unsafe { take_listeners(vec![(found, fd)]) }?
        .pop()
        .map(|(_, listener)| listener)
        .ok_or(Error::AlreadyTaken { key: None })?;
    taken.fds.push(fd);
    Ok(listener)
}

/// A key as [`listener`] looks it up: the `--port` or `--path` value with
/// what `start_server` leaves out of its keys taken out.
#[derive(Debug, PartialEq)]
struct Lookup {
    /// The key as `start_server` writes it.
    key: OsString,
    /// The descriptor of an `=N` suffix.
    fd: Option<RawFd>,
    /// A `u` before the port: a UDP socket.
    udp: bool,
}

impl Lookup {
    /// Reads `key` as `start_server` reads a `--port` (`u53`, `host:u53`,
    /// `[::]:u53`, `80=5`, `[127.0.0.1]:80`) or a `--path` (anything with a
    /// `/`, taken as it is).
    fn parse(key: &OsStr) -> Lookup {
        let bytes = key.as_bytes();
        let mut lookup = Lookup {
            key: key.to_owned(),
            fd: None,
            udp: false,
        };
        if bytes.contains(&b'/') {
            return lookup;
        }
        let mut bytes = bytes.to_vec();
        if let Some(split) = bytes.iter().rposition(|&b| b == b'=') {
            let fd = std::str::from_utf8(&bytes[split + 1..]).ok();
            if let Some(fd) = fd.filter(|fd| is_digits(fd)).and_then(|fd| fd.parse().ok()) {
                lookup.fd = Some(fd);
                bytes.truncate(split);
            }
        }
        let port = bytes
            .iter()
            .rposition(|&b| b == b':')
            .map_or(0, |colon| colon + 1);
        if bytes.get(port) == Some(&b'u')
            && bytes.len() > port + 1
            && bytes[port + 1..].iter().all(u8::is_ascii_digit)
        {
            bytes.remove(port);
            lookup.udp = true;
        }
        // `[127.0.0.1]:80` is written `127.0.0.1:80`.
        if let Some(inner) = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.strip_prefix('['))
            .and_then(|text| text.split_once("]:"))
            .filter(|(ip, _)| ip.parse::<Ipv4Addr>().is_ok())
            .map(|(ip, port)| format!("{ip}:{port}"))
        {
            bytes = inner.into_bytes();
        }
        lookup.key = OsString::from_vec(bytes);
        lookup
    }
}

/// Whether `text` is a non-empty run of ASCII digits.
fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// The entry `key` names (see [`listener`]): those with the same key, or
/// else those for the same IP address; of these the one with the `=N`
/// descriptor if `key` has one, the UDP ones if `key` has a `u`, and, when
/// more than one is left, the ones that are not UDP. `is_udp` tells a UDP
/// socket by its descriptor.
fn find_port<'a>(
    ports: &'a [(OsString, RawFd)],
    key: &OsStr,
    is_udp: impl Fn(RawFd) -> bool,
) -> Result<(&'a OsStr, RawFd), Error> {
    let lookup = Lookup::parse(key);
    let pinned = |fd: RawFd| lookup.fd.is_none_or(|pin| pin == fd);
    let mut fits: Vec<&(OsString, RawFd)> = ports
        .iter()
        .filter(|(candidate, fd)| *candidate == lookup.key && pinned(*fd))
        .collect();
    if fits.is_empty() {
        if let Some(address) = ip_address(lookup.key.as_bytes()) {
            fits = ports
                .iter()
                .filter(|(candidate, fd)| {
                    ip_address(candidate.as_bytes()) == Some(address) && pinned(*fd)
                })
                .collect();
        }
    }
    if lookup.udp {
        fits.retain(|(_, fd)| is_udp(*fd));
    } else if fits.len() > 1 {
        fits.retain(|(_, fd)| !is_udp(*fd));
    }
    match fits[..] {
        [(found, fd)] => Ok((found.as_os_str(), *fd)),
        [] => Err(Error::NoSuchKey {
            key: key.to_string_lossy().into_owned(),
            available: ports
                .iter()
                .map(|(key, _)| key.to_string_lossy().into_owned())
                .collect(),
        }),
        _ => Err(Error::Ambiguous {
            key: key.to_string_lossy().into_owned(),
            entries: fits
                .iter()
                .map(|(key, fd)| format!("{}={fd}", key.to_string_lossy()))
                .collect(),
        }),
    }
}

/// Whether `fd` is a UDP socket (an IPv4 or IPv6 datagram socket).
fn is_udp(fd: RawFd) -> bool {
    socket_type(fd).is_ok_and(|kind| kind == libc::SOCK_DGRAM)
        && socket_domain(fd).is_ok_and(|domain| matches!(domain, libc::AF_INET | libc::AF_INET6))
}

/// The IP address a key stands for, when it is a port, an IP address and
/// port, or `localhost:PORT`; `None` for a path or any other host name.
fn ip_address(key: &[u8]) -> Option<SocketAddr> {
    let key = std::str::from_utf8(key).ok()?;
    if is_digits(key) {
        return Some(SocketAddr::from(([0, 0, 0, 0], key.parse().ok()?)));
    }
    if let Ok(address) = key.parse() {
        return Some(address);
    }
    match key.rsplit_once(':')? {
        (host, port) if host.eq_ignore_ascii_case("localhost") => {
            Some(SocketAddr::from(([127, 0, 0, 1], port.parse().ok()?)))
        }
        _ => None,
    }
}

/// Checks that the socket on `fd` is bound where the entry's `key` says,
/// as far as the key says it: the port (0: any) of a port key, the IP
/// address of an IP literal, the wildcard of a bare port, the path of a
/// path. Host names and abstract names are not checked.
fn check_address(key: &OsStr, fd: RawFd, kind: Kind) -> Result<(), Error> {
    let mismatch = |bound: String| Error::AddressMismatch {
        key: key.to_string_lossy().into_owned(),
        fd,
        bound,
    };
    let failed = |source| Error::Io {
        key: Some(key.to_string_lossy().into_owned()),
        fd,
        source,
    };
    match kind {
        Kind::Tcp | Kind::Udp => {
            let Some(expected) = ip_address(key.as_bytes()) else {
                return Ok(());
            };
            // SAFETY: `fd` is an open socket (`classify` said so) that the
            // `ManuallyDrop` never closes.
            let socket = ManuallyDrop::new(unsafe { UdpSocket::from_raw_fd(fd) });
            let bound = socket.local_addr().map_err(failed)?;
            let text = key.to_string_lossy();
            let ip_fits = if is_digits(&text) {
                bound.ip().is_unspecified()
            } else {
                text.parse::<SocketAddr>().is_err() || bound.ip() == expected.ip()
            };
            let port_fits = expected.port() == 0 || bound.port() == expected.port();
            if ip_fits && port_fits {
                Ok(())
            } else {
                Err(mismatch(bound.to_string()))
            }
        }
        Kind::Unix if key.as_bytes().contains(&b'/') => {
            // SAFETY: as above.
            let socket = ManuallyDrop::new(unsafe { UnixListener::from_raw_fd(fd) });
            let bound = socket.local_addr().map_err(failed)?;
            match bound.as_pathname() {
                Some(path) if path.as_os_str() == key => Ok(()),
                Some(path) => Err(mismatch(path.display().to_string())),
                None => Err(mismatch("no path".to_string())),
            }
        }
        Kind::Unix | Kind::Other => Ok(()),
    }
}

/// Binds `key` as [`listener_or_bind`] reads it outside `start_server`.
fn bind_key(key: &OsStr) -> Result<Listener, Error> {
    let failed = |source| Error::Bind {
        address: key.to_string_lossy().into_owned(),
        source,
    };
    if key.as_bytes().contains(&b'/') {
        let path = Path::new(key);
        remove_stale_socket(path).map_err(failed)?;
        return UnixListener::bind(path).map(Listener::Unix).map_err(failed);
    }
    let lookup = Lookup::parse(key);
    let bind = |address: &str| -> io::Result<Listener> {
        if lookup.udp {
            UdpSocket::bind(address).map(Listener::Udp)
        } else {
            TcpListener::bind(address).map(Listener::Tcp)
        }
    };
    let text = lookup.key.to_str().unwrap_or_default();
    if let Some(address) = ip_address(text.as_bytes()) {
        return bind(&address.to_string()).map_err(failed);
    }
    if is_host_port(text) {
        return bind(text).map_err(failed);
    }
    Err(failed(io::Error::new(
        io::ErrorKind::InvalidInput,
        "neither PORT, HOST:PORT, [IPV6]:PORT nor a path (a path holds a '/')",
    )))
}

/// `HOST:PORT` with a host name: no white space, a numeric port.
fn is_host_port(key: &str) -> bool {
    key.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.bytes().any(|b| b.is_ascii_whitespace())
            && is_digits(port)
            && port.parse::<u16>().is_ok()
    })
}

/// Removes the socket file at `path` if nothing accepts on it any more (left
/// by an earlier run): anything else there makes the bind fail, as it should.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket());
    if !is_socket {
        return Ok(());
    }
    match UnixStream::connect(path) {
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        _ => Ok(()),
    }
}

/// Sends `state` to the supervisor's notify socket, named by `NOTIFY_SOCKET`,
/// as one datagram: the systemd notify protocol (`sd_notify(3)`).
///
/// `state` is newline-separated `KEY=VALUE` assignments, sent as they are:
/// `READY=1` (ready to serve, see [`notify_ready`]), `STATUS=text`,
/// `EXTEND_TIMEOUT_USEC=n` (more time to get ready), `STOPPING=1`, ...
/// Receivers ignore assignments they do not know, and drop a whole message
/// that holds a NUL byte or does not fit their buffer (4096 bytes for
/// systemd).
///
/// `NOTIFY_SOCKET` is an absolute path (`/run/app/notify.sock`) or, on
/// Linux, `@name`: a socket in the abstract namespace, which has no file.
/// [`notify_to`] says how the datagram is sent.
///
/// # Outcomes
///
/// - `Ok(true)`: the datagram was queued at the receiving socket. That is
///   all: the supervisor reads it later, and may ignore it.
/// - `Ok(false)`: `NOTIFY_SOCKET` is unset, or set but empty (as go-systemd
///   reads it, so that `NOTIFY_SOCKET= worker` turns notifications off).
///   Nothing was sent, and this is not an error: the worker runs without a
///   supervisor that listens (a shell, a plain `start_server`).
/// - [`Error::InvalidNotifySocket`]: the variable holds something else than
///   such an address.
/// - [`Error::NotifyFailed`]: the send failed.
///
/// # The variable stays set
///
/// Unlike `sd_notify()` with `unset_environment`, this never removes
/// `NOTIFY_SOCKET`. A worker may exec another program that must notify in
/// its turn (a wrapper that execs the real server, a new binary of itself),
/// and may notify again itself (`STATUS=`, `STOPPING=1`). Removing a
/// variable is also unsound while another thread may read the environment
/// (hence `unsafe` [`std::env::remove_var`]), and a library cannot know that
/// no other thread does. A worker whose children must not notify in its
/// name (a notify-aware sidecar daemon would report *its* readiness)
/// removes the variable for them:
/// `Command::new("sidecar").env_remove("NOTIFY_SOCKET")`.
///
/// # Examples
///
/// ```no_run
/// server_starter::notify("READY=1\nSTATUS=serving on 2 sockets")?;
/// // ... serve until told to stop ...
/// server_starter::notify("STOPPING=1")?;
/// # Ok::<(), server_starter::Error>(())
/// ```
pub fn notify(state: &str) -> Result<bool, Error> {
    notify_from(std::env::var_os(NOTIFY_VAR).as_deref(), state)
}

/// Tells the supervisor that the worker is ready to serve: [`notify`] with
/// `READY=1`.
///
/// Call it once the worker has taken its sockets and can answer on them,
/// after whatever slow start-up it does (loading, warming caches): a
/// supervisor that waits for readiness counts the worker as started from
/// then on. Calling it again is harmless.
///
/// # Outcomes
///
/// As for [`notify`]: `Ok(true)` when sent; `Ok(false)` when
/// `NOTIFY_SOCKET` is unset or empty (nobody listens: not an error);
/// [`Error::InvalidNotifySocket`] or [`Error::NotifyFailed`] otherwise.
///
/// # Examples
///
/// What a supervisor that waits for readiness does, done by hand: a
/// datagram socket to receive on, named in `NOTIFY_SOCKET`.
///
/// ```
/// use std::os::unix::net::UnixDatagram;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("notify.sock");
/// let supervisor = UnixDatagram::bind(&path)?;
/// // SAFETY: the doctest is single-threaded; nothing reads the environment
/// // concurrently.
/// unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
///
/// assert!(server_starter::notify_ready()?);
/// let mut buf = [0; 4096];
/// let len = supervisor.recv(&mut buf)?;
/// assert_eq!(&buf[..len], b"READY=1");
///
/// // Without a supervisor that listens there is nothing to do.
/// // SAFETY: as above.
/// unsafe { std::env::remove_var("NOTIFY_SOCKET") };
/// assert!(!server_starter::notify_ready()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn notify_ready() -> Result<bool, Error> {
    notify("READY=1")
}

/// Sends `state` as one datagram to the unix datagram socket at `socket`:
/// an absolute path, or `@name` for a name in Linux's abstract namespace.
/// This is [`notify`] with the address given rather than read from
/// `NOTIFY_SOCKET`.
///
/// The datagram goes out from a new unbound `SOCK_DGRAM` socket, created
/// close-on-exec so that it never leaks into a program another thread
/// starts meanwhile, and closed before this returns. `sendto` gets
/// `MSG_NOSIGNAL` (no `SIGPIPE`, whatever the receiver did) and is retried
/// on `EINTR`. While the receiver's queue is full (a unix datagram socket
/// queues 10 by default) the send waits for room, for at most 5 seconds:
/// long for a supervisor that reads as it should, short enough that a
/// worker does not hang on one that stopped reading.
///
/// # Outcomes
///
/// - `Ok(())`: the datagram was queued at the receiving socket.
/// - [`Error::InvalidNotifySocket`]: `socket` is empty, relative, too long
///   for a unix socket address, holds a NUL byte, or is `@name` on a system
///   other than Linux. Nothing was sent.
/// - [`Error::NotifyFailed`]: the send failed, with the system's error as
///   the source: `ENOENT` when nothing exists at the path, `ECONNREFUSED`
///   when nothing is bound there (a stale socket file, a file that is not a
///   socket, an abstract name nobody holds), `EACCES`, `EPROTOTYPE` for a
///   stream socket, `EMSGSIZE` for a state too large for one datagram,
///   `EAGAIN` when the queue stayed full.
///
/// # Examples
///
/// ```
/// use std::os::unix::net::UnixDatagram;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("notify.sock");
/// let supervisor = UnixDatagram::bind(&path)?;
///
/// server_starter::notify_to(path.as_os_str(), "READY=1\nSTATUS=warm")?;
/// let mut buf = [0; 4096];
/// let len = supervisor.recv(&mut buf)?;
/// assert_eq!(&buf[..len], b"READY=1\nSTATUS=warm");
///
/// let error = server_starter::notify_to("notify.sock".as_ref(), "READY=1").unwrap_err();
/// assert!(matches!(error, server_starter::Error::InvalidNotifySocket { .. }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn notify_to(socket: &OsStr, state: &str) -> Result<(), Error> {
    let (address, len) =
        socket_address(socket.as_bytes()).ok_or_else(|| Error::InvalidNotifySocket {
            socket: socket.to_owned(),
        })?;
    send_datagram(&address, len, state.as_bytes()).map_err(|source| Error::NotifyFailed {
        socket: socket.to_owned(),
        source,
    })
}

/// [`notify`] with the value of `NOTIFY_SOCKET` passed in.
fn notify_from(socket: Option<&OsStr>, state: &str) -> Result<bool, Error> {
    match socket {
        Some(socket) if !socket.is_empty() => notify_to(socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// What is wrong with a notify socket address, if anything.
fn address_problem(address: &[u8]) -> Option<String> {
    // A path needs room for its terminating NUL; an abstract name follows a
    // leading NUL.
    let max = SUN_PATH_LEN - 1;
    let too_long =
        |len: usize| format!("too long for a unix socket address ({len} bytes, at most {max})");
    match address {
        [] => Some("empty".to_string()),
        _ if address.contains(&0) => Some("contains a NUL byte".to_string()),
        [b'/', ..] if address.len() > max => Some(too_long(address.len())),
        [b'/', ..] => None,
        [b'@'] => Some("empty abstract name".to_string()),
        [b'@', name @ ..] if name.len() > max => Some(too_long(name.len())),
        [b'@', ..] if !cfg!(any(target_os = "linux", target_os = "android")) => {
            Some("abstract socket names exist on Linux only".to_string())
        }
        [b'@', ..] => None,
        _ => Some("neither an absolute path nor @name".to_string()),
    }
}

/// The `sockaddr_un` for a notify socket address (`/path` or `@name`) and
/// its length; `None` if [`address_problem`] finds one.
fn socket_address(address: &[u8]) -> Option<(libc::sockaddr_un, libc::socklen_t)> {
    if address_problem(address).is_some() {
        return None;
    }
    // SAFETY: all-zero bytes are a valid `sockaddr_un`.
    let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    // A path is NUL-terminated. An abstract name is a NUL byte and the
    // name, not terminated: the length passed says where it ends
    // (unix(7)).
    let (start, bytes, used) = match address {
        [b'@', name @ ..] => (1, name, 1 + name.len()),
        path => (0, path, path.len() + 1),
    };
    for (slot, &byte) in addr.sun_path[start..].iter_mut().zip(bytes) {
        *slot = byte as libc::c_char;
    }
    let len = mem::offset_of!(libc::sockaddr_un, sun_path) + used;
    Some((addr, len as libc::socklen_t))
}

/// Sends one datagram from a new socket, closed on return.
fn send_datagram(
    address: &libc::sockaddr_un,
    len: libc::socklen_t,
    datagram: &[u8],
) -> io::Result<()> {
    // std creates it with SOCK_CLOEXEC (FD_CLOEXEC at once where that flag
    // does not exist).
    let socket = UnixDatagram::unbound()?;
    socket.set_write_timeout(Some(NOTIFY_SEND_TIMEOUT))?;
    loop {
        // SAFETY: `datagram` is valid for reads of its length, `address`
        // for reads of `len` bytes (at most its size).
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                datagram.as_ptr().cast(),
                datagram.len(),
                SEND_FLAGS,
                (address as *const libc::sockaddr_un).cast(),
                len,
            )
        };
        // A datagram goes out whole or not at all.
        if sent >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The kinds of socket a [`Listener`] can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Unix,
    Udp,
    Other,
}

/// Checks every entry, then wraps every descriptor.
///
/// # Safety
///
/// The caller must own every descriptor in `ports`: nothing else may use or
/// close them afterwards.
unsafe fn take_listeners<K: AsRef<OsStr>>(
    ports: Vec<(K, RawFd)>,
) -> Result<Vec<(K, Listener)>, Error> {
    let mut checked = Vec::with_capacity(ports.len());
    for (index, (key, fd)) in ports.iter().enumerate() {
        let key = key.as_ref().to_string_lossy();
        if ports[..index].iter().any(|(_, earlier)| earlier == fd) {
            return Err(Error::DuplicateFd {
                key: key.into_owned(),
                fd: *fd,
            });
        }
        checked.push(classify(&key, *fd)?);
    }
    for (key, fd) in &ports {
        set_cloexec(*fd).map_err(|source| Error::Io {
            key: Some(key.as_ref().to_string_lossy().into_owned()),
            fd: *fd,
            source,
        })?;
    }
    let listeners = ports
        .into_iter()
        .zip(checked)
        .map(|((key, fd), kind)| {
            // SAFETY: the caller owns `fd`, it was checked above to be an
            // open socket of this kind, and each fd appears once.
            let listener = unsafe {
                match kind {
                    Kind::Tcp => Listener::Tcp(TcpListener::from_raw_fd(fd)),
                    Kind::Unix => Listener::Unix(UnixListener::from_raw_fd(fd)),
                    Kind::Udp => Listener::Udp(UdpSocket::from_raw_fd(fd)),
                    Kind::Other => Listener::Other(OwnedFd::from_raw_fd(fd)),
                }
            };
            (key, listener)
        })
        .collect();
    Ok(listeners)
}

/// Asks a descriptor what kind of socket it is, without changing it, and
/// refuses what `start_server` never hands down: standard output and error,
/// a connection.
fn classify(key: &str, fd: RawFd) -> Result<Kind, Error> {
    if fd == 1 || fd == 2 {
        return Err(Error::ReservedFd {
            key: key.to_string(),
            fd,
        });
    }
    let failed = |source: io::Error| match source.raw_os_error() {
        Some(libc::ENOTSOCK) | Some(libc::EBADF) => Error::NotASocket {
            key: key.to_string(),
            fd,
        },
        _ => Error::Io {
            key: Some(key.to_string()),
            fd,
            source,
        },
    };
    let kind = socket_type(fd).map_err(failed)?;
    let domain = socket_domain(fd).map_err(failed)?;
    let inet = matches!(domain, libc::AF_INET | libc::AF_INET6);
    let connected = match kind {
        libc::SOCK_STREAM | libc::SOCK_SEQPACKET => !is_listening(fd).map_err(failed)?,
        libc::SOCK_DGRAM if inet || domain == libc::AF_UNIX => has_peer(fd).map_err(failed)?,
        _ => false,
    };
    if connected {
        return Err(Error::Connected {
            key: key.to_string(),
            fd,
        });
    }
    Ok(match (inet, domain, kind) {
        (true, _, libc::SOCK_STREAM) => Kind::Tcp,
        (_, libc::AF_UNIX, libc::SOCK_STREAM) => Kind::Unix,
        (true, _, libc::SOCK_DGRAM) => Kind::Udp,
        _ => Kind::Other,
    })
}

/// `getsockopt(SO_ACCEPTCONN)`: whether a connection-oriented socket
/// listens.
fn is_listening(fd: RawFd) -> io::Result<bool> {
    socket_option(fd, libc::SO_ACCEPTCONN).map(|listening| listening != 0)
}

/// Whether a datagram socket is connected to a peer (`getpeername`).
fn has_peer(fd: RawFd) -> io::Result<bool> {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is valid for writes of `len` bytes.
    if unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &mut len) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOTCONN) => Ok(false),
        _ => Err(err),
    }
}

/// `getsockopt(SO_TYPE)`: `SOCK_STREAM`, `SOCK_DGRAM`, ...
fn socket_type(fd: RawFd) -> io::Result<c_int> {
    socket_option(fd, libc::SO_TYPE)
}

/// An integer `SOL_SOCKET` option.
fn socket_option(fd: RawFd, option: c_int) -> io::Result<c_int> {
    let mut value: c_int = 0;
    let mut len = mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` is the size
    // of `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The address family from `getsockname` (portable, unlike `SO_DOMAIN`).
fn socket_domain(fd: RawFd) -> io::Result<c_int> {
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is valid for writes of `len` bytes.
    let rc = unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(c_int::from(addr.ss_family))
}

/// Sets or clears a file status flag (`O_NONBLOCK`) of `fd`.
fn set_status_flag(fd: RawFd, flag: c_int, on: bool) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL only reads and writes the file
    // status flags of `fd`.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    let wanted = if on { flags | flag } else { flags & !flag };
    // SAFETY: as above.
    if wanted != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, wanted) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `FD_CLOEXEC` (a descriptor flag, unlike the shared file status flags).
fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFD/F_SETFD only reads and writes the
    // descriptor flags of `fd`.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::FD_CLOEXEC == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixDatagram;

    fn ports(list: &[(&str, RawFd)]) -> Vec<(String, RawFd)> {
        list.iter().map(|(k, fd)| (k.to_string(), *fd)).collect()
    }

    fn malformed_entry(value: &str) -> Option<String> {
        match server_ports_from(value) {
            Err(Error::Malformed { entry }) => Some(entry),
            _ => None,
        }
    }

    #[test]
    fn parses_the_spec_example_in_order() {
        let parsed = server_ports_from("80=3;[::1]:8080=4;/tmp/app.sock=5").unwrap();
        assert_eq!(
            parsed,
            ports(&[("80", 3), ("[::1]:8080", 4), ("/tmp/app.sock", 5)])
        );
    }

    #[test]
    fn round_trips_what_start_server_writes() {
        let list = ports(&[
            ("127.0.0.1:80", 3),
            ("localhost:8080", 0),
            ("[::]:53", 10),
            ("/run/app.sock", 7),
        ]);
        let value = list
            .iter()
            .map(|(key, fd)| format!("{key}={fd}"))
            .collect::<Vec<_>>()
            .join(";");
        assert_eq!(server_ports_from(&value).unwrap(), list);
    }

    #[test]
    fn os_keys_keep_their_bytes() {
        let value = OsStr::from_bytes(b"80=3;/tmp/caf\xe9=x.sock=4;;");
        assert_eq!(
            server_ports_from_os(value).unwrap(),
            [
                (OsString::from("80"), 3),
                (OsStr::from_bytes(b"/tmp/caf\xe9=x.sock").to_owned(), 4),
            ]
        );
        let utf8 = "80=3;[::1]:8080=4;/tmp/a=b.sock=5";
        let as_strings: Vec<(OsString, RawFd)> = server_ports_from(utf8)
            .unwrap()
            .into_iter()
            .map(|(key, fd)| (key.into(), fd))
            .collect();
        assert_eq!(server_ports_from_os(OsStr::new(utf8)).unwrap(), as_strings);
        match server_ports_from_os(OsStr::from_bytes(b"80=3;caf\xe9")) {
            Err(Error::Malformed { entry }) => assert_eq!(entry, "caf\u{fffd}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_value_is_an_empty_list() {
        assert!(server_ports_from("").unwrap().is_empty());
    }

    #[test]
    fn empty_entries_are_skipped() {
        assert_eq!(
            server_ports_from(";80=3;;81=4;").unwrap(),
            ports(&[("80", 3), ("81", 4)])
        );
    }

    #[test]
    fn key_with_equals_sign_splits_at_the_last_one() {
        assert_eq!(
            server_ports_from("/tmp/a=b.sock=5;/tmp/x==6").unwrap(),
            ports(&[("/tmp/a=b.sock", 5), ("/tmp/x=", 6)])
        );
    }

    #[test]
    fn malformed_entries_are_named() {
        assert_eq!(malformed_entry("80=3;8080").as_deref(), Some("8080"));
        assert_eq!(malformed_entry("80=").as_deref(), Some("80="));
        assert_eq!(malformed_entry("=3").as_deref(), Some("=3"));
        assert_eq!(malformed_entry("80=-3").as_deref(), Some("80=-3"));
        assert_eq!(malformed_entry("80=+3").as_deref(), Some("80=+3"));
        assert_eq!(malformed_entry("80=3x").as_deref(), Some("80=3x"));
        assert_eq!(malformed_entry("80= 3").as_deref(), Some("80= 3"));
        assert_eq!(
            malformed_entry("80=99999999999").as_deref(),
            Some("80=99999999999")
        );
        assert_eq!(
            malformed_entry("/tmp/a=b.sock").as_deref(),
            Some("/tmp/a=b.sock")
        );
    }

    #[test]
    fn display_is_lowercase_without_period() {
        let errors = [
            Error::NotStarted,
            Error::Malformed {
                entry: "x".to_string(),
            },
            Error::NotASocket {
                key: "80".to_string(),
                fd: 3,
            },
            Error::NotUtf8 {
                value: "/tmp/caf\u{fffd}.sock=3".to_string(),
            },
            Error::DuplicateFd {
                key: "80".to_string(),
                fd: 3,
            },
            Error::ReservedFd {
                key: "80".to_string(),
                fd: 2,
            },
            Error::Connected {
                key: "80".to_string(),
                fd: 3,
            },
            Error::AddressMismatch {
                key: "80".to_string(),
                fd: 3,
                bound: "127.0.0.1:80".to_string(),
            },
            Error::AlreadyTaken { key: None },
            Error::AlreadyTaken {
                key: Some("80".to_string()),
            },
            Error::Io {
                key: Some("80".to_string()),
                fd: 3,
                source: io::Error::from_raw_os_error(libc::EBADF),
            },
            Error::Ambiguous {
                key: "80".to_string(),
                entries: vec!["80=3".to_string(), "80=4".to_string()],
            },
        ];
        for error in errors {
            let text = error.to_string();
            assert!(!text.ends_with('.'), "{text}");
            // The variable's own name is the one capitalised opening allowed.
            assert!(
                !text.starts_with(|c: char| c.is_ascii_uppercase()) || text.starts_with(PORT_VAR),
                "{text}"
            );
        }
    }

    #[test]
    fn notify_errors_display_lowercase_and_name_the_socket() {
        let errors = [
            Error::InvalidNotifySocket {
                socket: "run/notify".into(),
            },
            Error::NotifyFailed {
                socket: "/run/notify".into(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            },
        ];
        for error in errors {
            let text = error.to_string();
            assert!(!text.ends_with('.'), "{text}");
            assert!(text.starts_with(|c: char| c.is_ascii_lowercase()), "{text}");
            assert!(text.contains("run/notify"), "{text}");
        }
    }

    #[test]
    fn messages_name_the_socket_and_carry_the_cause_once() {
        use std::error::Error as _;
        let cause = |errno| io::Error::from_raw_os_error(errno).to_string();
        let cases = [
            (
                Error::Io {
                    key: Some("80".to_string()),
                    fd: 3,
                    source: io::Error::from_raw_os_error(libc::EBADF),
                },
                format!("80: file descriptor 3: {}", cause(libc::EBADF)),
            ),
            (
                Error::Io {
                    key: None,
                    fd: 3,
                    source: io::Error::from_raw_os_error(libc::EBADF),
                },
                format!("file descriptor 3: {}", cause(libc::EBADF)),
            ),
            (
                Error::NotifyFailed {
                    socket: "/x".into(),
                    source: io::Error::from_raw_os_error(libc::ENOENT),
                },
                format!(
                    "cannot send a notification to \"/x\": {}",
                    cause(libc::ENOENT)
                ),
            ),
            (
                Error::Bind {
                    address: "127.0.0.1:80".into(),
                    source: io::Error::from_raw_os_error(libc::EADDRINUSE),
                },
                format!(
                    "failed to bind \"127.0.0.1:80\": {}",
                    cause(libc::EADDRINUSE)
                ),
            ),
            (
                Error::DuplicateFd {
                    key: "8080".into(),
                    fd: 4,
                },
                "8080: file descriptor 4 is named twice in SERVER_STARTER_PORT".to_string(),
            ),
            (
                Error::AlreadyTaken {
                    key: Some("8080".into()),
                },
                "8080: the socket was already taken".to_string(),
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
            // A chain printer shows the cause once, from the message.
            assert!(error.source().is_none(), "{error:?}");
        }
    }

    /// A datagram socket bound in a fresh temporary directory, as a
    /// supervisor would hold it.
    fn notify_receiver() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_nonblocking(true).unwrap();
        (dir, path, receiver)
    }

    /// Every datagram waiting on `receiver`.
    fn received(receiver: &UnixDatagram) -> Vec<Vec<u8>> {
        let mut datagrams = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match receiver.recv(&mut buf) {
                Ok(len) => datagrams.push(buf[..len].to_vec()),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return datagrams,
                Err(err) => panic!("recv: {err}"),
            }
        }
    }

    #[test]
    fn notify_sends_exactly_the_state_as_one_datagram() {
        let (_dir, path, receiver) = notify_receiver();
        let state = "READY=1\nSTATUS=serving 2 sockets\nEXTEND_TIMEOUT_USEC=5000000";
        assert!(notify_from(Some(path.as_os_str()), state).unwrap());
        notify_to(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(
            received(&receiver),
            [state.as_bytes().to_vec(), b"READY=1".to_vec()]
        );
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn notify_reaches_an_abstract_name() {
        #[cfg(target_os = "android")]
        use std::os::android::net::SocketAddrExt;
        #[cfg(target_os = "linux")]
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;

        let name = format!("server-starter-test-{}-notify", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let socket = format!("@{name}");
        assert!(notify_from(Some(OsStr::new(&socket)), "READY=1").unwrap());
        assert_eq!(received(&receiver), [b"READY=1".to_vec()]);

        // The name is exactly what follows the `@`: a longer or shorter one
        // is another address, held by nobody.
        for other in [format!("@{name}x"), format!("@{}", &name[1..])] {
            let error = notify_to(OsStr::new(&other), "READY=1").unwrap_err();
            assert!(
                matches!(&error, Error::NotifyFailed { source, .. }
                    if source.raw_os_error() == Some(libc::ECONNREFUSED)),
                "{other}: {error:?}"
            );
        }
    }

    #[test]
    fn notify_without_a_socket_is_not_an_error() {
        assert!(!notify_from(None, "READY=1").unwrap());
        assert!(!notify_from(Some(OsStr::new("")), "READY=1").unwrap());
    }

    #[test]
    fn notify_to_nothing_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody.sock");
        let error = notify_from(Some(path.as_os_str()), "READY=1").unwrap_err();
        match &error {
            Error::NotifyFailed { socket, source } => {
                assert_eq!(socket, path.as_os_str());
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            error.to_string().contains(path.to_str().unwrap()),
            "{error}"
        );

        // A socket file nobody holds any more, and a file that is no socket.
        let stale = dir.path().join("stale.sock");
        drop(UnixDatagram::bind(&stale).unwrap());
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        for path in [stale, file] {
            let error = notify_to(path.as_os_str(), "READY=1").unwrap_err();
            assert!(
                matches!(&error, Error::NotifyFailed { source, .. }
                    if source.raw_os_error() == Some(libc::ECONNREFUSED)),
                "{}: {error:?}",
                path.display()
            );
        }

        // A stream socket is not a datagram socket.
        let stream = dir.path().join("stream.sock");
        let _listener = UnixListener::bind(&stream).unwrap();
        let error = notify_to(stream.as_os_str(), "READY=1").unwrap_err();
        assert!(
            matches!(&error, Error::NotifyFailed { source, .. }
                if source.raw_os_error() == Some(libc::EPROTOTYPE)),
            "{error:?}"
        );
    }

    #[test]
    fn notify_refuses_what_is_no_address() {
        let longest_path = format!("/{}", "x".repeat(SUN_PATH_LEN - 2));
        let too_long_path = format!("/{}", "x".repeat(SUN_PATH_LEN - 1));
        let longest_name = format!("@{}", "x".repeat(SUN_PATH_LEN - 1));
        let too_long_name = format!("@{}", "x".repeat(SUN_PATH_LEN));
        assert_eq!(address_problem(longest_path.as_bytes()), None);
        assert_eq!(
            address_problem(longest_name.as_bytes()).is_none(),
            cfg!(any(target_os = "linux", target_os = "android"))
        );
        for socket in [
            "",
            "notify.sock",
            "./notify.sock",
            "~/notify.sock",
            "@",
            "/run/no\0tify",
            &too_long_path,
            &too_long_name,
        ] {
            let error = notify_to(OsStr::new(socket), "READY=1").unwrap_err();
            match &error {
                Error::InvalidNotifySocket { socket: named } => assert_eq!(named, socket),
                other => panic!("{socket:?}: {other:?}"),
            }
            if socket.len() > SUN_PATH_LEN {
                assert!(error.to_string().contains("too long"), "{error}");
            }
        }
        // From the variable, too: set but malformed is an error.
        assert!(matches!(
            notify_from(Some(OsStr::new("notify.sock")), "READY=1"),
            Err(Error::InvalidNotifySocket { .. })
        ));
    }

    #[test]
    fn notify_reaches_the_longest_path() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("{}/", dir.path().display());
        let longest = format!("{prefix}{}", "x".repeat(SUN_PATH_LEN - 1 - prefix.len()));
        assert_eq!(longest.len(), SUN_PATH_LEN - 1);
        let receiver = UnixDatagram::bind(&longest).unwrap();
        receiver.set_nonblocking(true).unwrap();
        notify_to(OsStr::new(&longest), "READY=1").unwrap();
        assert_eq!(received(&receiver), [b"READY=1".to_vec()]);
    }

    #[test]
    fn takes_each_kind_of_socket() {
        let dir = tempfile::tempdir().unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_addr = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_addr = udp.local_addr().unwrap();
        let path = dir.path().join("s.sock");
        let unix = UnixListener::bind(&path).unwrap();
        let list = vec![
            ("tcp".to_string(), tcp.into_raw_fd()),
            ("udp".to_string(), udp.into_raw_fd()),
            ("unix".to_string(), unix.into_raw_fd()),
        ];
        // SAFETY: the test owns these descriptors and gave up its handles.
        let taken = unsafe { take_listeners(list) }.unwrap();
        assert!(
            matches!(&taken[0], (k, Listener::Tcp(l)) if k == "tcp" && l.local_addr().unwrap() == tcp_addr)
        );
        assert!(
            matches!(&taken[1], (k, Listener::Udp(s)) if k == "udp" && s.local_addr().unwrap() == udp_addr)
        );
        assert!(matches!(&taken[2], (k, Listener::Unix(l))
            if k == "unix" && l.local_addr().unwrap().as_pathname() == Some(path.as_path())));
    }

    #[test]
    fn rejects_what_is_not_a_listener_without_touching_anything() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        // A connection, such as one a helper process that inherited the
        // variable opened, landing on a number the variable names.
        let client = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let (unix_client, _unix_peer) = UnixStream::pair().unwrap();
        let (datagram, _datagram_peer) = UnixDatagram::pair().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.connect(tcp.local_addr().unwrap()).unwrap();
        for (key, fd) in [
            ("tcp-client", client.as_raw_fd()),
            ("unix-client", unix_client.as_raw_fd()),
            ("unix-dgram-peer", datagram.as_raw_fd()),
            ("udp-peer", udp.as_raw_fd()),
        ] {
            let list = ports(&[("tcp", tcp.as_raw_fd()), (key, fd)]);
            // SAFETY: take_listeners fails before wrapping anything, so the
            // descriptors stay owned by their handles.
            let error = unsafe { take_listeners(list) }.unwrap_err();
            assert!(
                matches!(&error, Error::Connected { key: k, fd: f } if k == key && *f == fd),
                "{key}: {error:?}"
            );
            assert_eq!(
                error.to_string(),
                format!("{key}: file descriptor {fd} is a connection, not a listening socket")
            );
        }
        // Still open, still ours.
        assert!(tcp.local_addr().is_ok());
        assert!(client.peer_addr().is_ok());

        // Standard output and error are never sockets from start_server.
        for fd in [1, 2] {
            // SAFETY: as above.
            let error = unsafe { take_listeners(ports(&[("80", fd)])) }.unwrap_err();
            assert!(
                matches!(error, Error::ReservedFd { fd: f, .. } if f == fd),
                "{error:?}"
            );
        }

        let file = tempfile::tempfile().unwrap();
        // SAFETY: as above.
        let error = unsafe { take_listeners(ports(&[("file", file.as_raw_fd())])) }.unwrap_err();
        assert!(matches!(error, Error::NotASocket { fd, .. } if fd == file.as_raw_fd()));

        // SAFETY: as above.
        let error =
            unsafe { take_listeners(ports(&[("a", tcp.as_raw_fd()), ("b", tcp.as_raw_fd())])) }
                .unwrap_err();
        assert!(
            matches!(&error, Error::DuplicateFd { key, fd } if key == "b" && *fd == tcp.as_raw_fd()),
            "{error:?}"
        );
    }

    #[test]
    fn takes_any_other_listening_socket_as_other() {
        let dir = tempfile::tempdir().unwrap();
        let datagram = UnixDatagram::bind(dir.path().join("dgram.sock")).unwrap();
        let seqpacket = seqpacket_listener(&dir.path().join("seq.sock"));
        let list = ports(&[
            ("dgram", datagram.into_raw_fd()),
            ("seq", seqpacket.into_raw_fd()),
        ]);
        // SAFETY: the test gave up its handles.
        let taken = unsafe { take_listeners(list) }.unwrap();
        for (key, listener) in taken {
            assert!(matches!(listener, Listener::Other(_)), "{key}");
            let fd = listener.as_raw_fd();
            let listener = listener.into_nonblocking().unwrap();
            // SAFETY: fcntl on a descriptor `listener` owns.
            assert_ne!(
                unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK,
                0
            );
            let error = listener.into_tcp().unwrap_err();
            assert!(
                matches!(error, Error::WrongKind { found: "other", .. }),
                "{error:?}"
            );
        }
    }

    /// A listening unix seqpacket socket at `path` (std has none).
    fn seqpacket_listener(path: &Path) -> OwnedFd {
        // SAFETY: plain socket calls on a descriptor this function owns.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
            assert!(fd >= 0);
            let owned = OwnedFd::from_raw_fd(fd);
            let (addr, len) = socket_address(path.as_os_str().as_bytes()).unwrap();
            assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0);
            assert_eq!(libc::listen(fd, 1), 0);
            owned
        }
    }

    #[test]
    fn encoded_ports_read_back() {
        let ports = [("80", 3), ("[::1]:8080", 4), ("/tmp/a=b.sock", 10)];
        let value = encode_server_ports(ports);
        assert_eq!(value, "80=3;[::1]:8080=4;/tmp/a=b.sock=10");
        let read = server_ports_from_os(&value).unwrap();
        let expected: Vec<(OsString, RawFd)> = ports
            .iter()
            .map(|(k, fd)| (OsString::from(k), *fd))
            .collect();
        assert_eq!(read, expected);
        let bytes = OsStr::from_bytes(b"/tmp/caf\xe9.sock");
        assert_eq!(
            server_ports_from_os(&encode_server_ports([(bytes, 5)])).unwrap(),
            [(bytes.to_owned(), 5)]
        );
    }

    #[test]
    fn keys_stand_for_tcp_addresses() {
        let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(ip_address(b"8080"), addr("0.0.0.0:8080"));
        assert_eq!(ip_address(b"0.0.0.0:8080"), addr("0.0.0.0:8080"));
        assert_eq!(ip_address(b"localhost:80"), addr("127.0.0.1:80"));
        assert_eq!(ip_address(b"[::1]:80"), addr("[::1]:80"));
        for other in [
            &b""[..],
            b"99999",
            b"/tmp/app.sock",
            b"example.com:80",
            b"localhost:http",
            b"app.sock",
        ] {
            assert_eq!(ip_address(other), None, "{other:?}");
        }
    }

    #[test]
    fn finds_a_port_by_key_or_by_address() {
        let ports: Vec<(OsString, RawFd)> = [
            ("8080", 3),
            ("127.0.0.1:9000", 4),
            ("localhost:9001", 5),
            ("/tmp/app.sock", 6),
        ]
        .iter()
        .map(|(k, fd)| (OsString::from(k), *fd))
        .collect();
        let find = |key: &str| {
            find_port(&ports, OsStr::new(key), |_| false).map(|(k, fd)| (k.to_owned(), fd))
        };
        assert_eq!(find("8080").unwrap(), ("8080".into(), 3));
        assert_eq!(find("0.0.0.0:8080").unwrap(), ("8080".into(), 3));
        assert_eq!(
            find("localhost:9000").unwrap(),
            ("127.0.0.1:9000".into(), 4)
        );
        assert_eq!(
            find("127.0.0.1:9001").unwrap(),
            ("localhost:9001".into(), 5)
        );
        assert_eq!(find("/tmp/app.sock").unwrap(), ("/tmp/app.sock".into(), 6));
        match find("127.0.0.1:8080").unwrap_err() {
            Error::NoSuchKey { key, available } => {
                assert_eq!(key, "127.0.0.1:8080");
                assert_eq!(available.len(), 4);
                let message = Error::NoSuchKey { key, available }.to_string();
                assert_eq!(
                    message,
                    "no socket \"127.0.0.1:8080\" in SERVER_STARTER_PORT: it has \"8080\", \
                     \"127.0.0.1:9000\", \"localhost:9001\", \"/tmp/app.sock\""
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            find("/tmp/app.sock2"),
            Err(Error::NoSuchKey { .. })
        ));
        let none = find_port(&[], OsStr::new("80"), |_| false).unwrap_err();
        assert_eq!(
            none.to_string(),
            "no socket \"80\" in SERVER_STARTER_PORT: it names none"
        );
    }

    #[test]
    fn binds_a_key_outside_start_server() {
        let tcp = bind_key(OsStr::new("127.0.0.1:0"))
            .unwrap()
            .into_tcp()
            .unwrap();
        assert!(tcp.local_addr().unwrap().ip().is_loopback());
        let tcp = bind_key(OsStr::new("localhost:0"))
            .unwrap()
            .into_tcp()
            .unwrap();
        assert!(tcp.local_addr().unwrap().ip().is_loopback());

        // The address is taken: the error names it and keeps the cause.
        let taken = tcp.local_addr().unwrap().to_string();
        let error = bind_key(OsStr::new(&taken)).unwrap_err();
        assert!(
            matches!(&error, Error::Bind { address, source }
                if address == &taken && source.kind() == io::ErrorKind::AddrInUse),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "failed to bind {taken:?}: {}",
                io::Error::from_raw_os_error(libc::EADDRINUSE)
            )
        );

        // A path: a stale socket file is replaced, a live one is not.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        drop(UnixListener::bind(&path).unwrap());
        let unix = bind_key(path.as_os_str()).unwrap().into_unix().unwrap();
        assert_eq!(
            unix.local_addr().unwrap().as_pathname(),
            Some(path.as_path())
        );
        let error = bind_key(path.as_os_str()).unwrap_err();
        assert!(
            matches!(&error, Error::Bind { source, .. }
            if source.kind() == io::ErrorKind::AddrInUse),
            "{error:?}"
        );
        // A file that is no socket stays.
        let file = dir.path().join("file");
        std::fs::write(&file, "data").unwrap();
        assert!(bind_key(file.as_os_str()).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
    }

    #[test]
    fn binds_only_an_address_or_a_path() {
        let dir = tempfile::tempdir().unwrap();
        for key in [
            ":8080",
            "127.0.0.1:80800",
            "u8080x",
            "8080 ",
            "app.sock",
            "x:y",
        ] {
            let error = bind_key(OsStr::new(key)).unwrap_err();
            assert!(
                matches!(&error, Error::Bind { address, source }
                    if address == key && source.kind() == io::ErrorKind::InvalidInput),
                "{key}: {error:?}"
            );
            assert!(error.to_string().contains(&format!("{key:?}")), "{error}");
        }
        // Nothing was created in the working directory for any of them.
        assert!(!Path::new("app.sock").exists());
        // A `u` asks for UDP, as in `--port=u53`; `=N` is for start_server.
        let udp = bind_key(OsStr::new("127.0.0.1:u0"))
            .unwrap()
            .into_udp()
            .unwrap();
        assert!(udp.local_addr().unwrap().ip().is_loopback());
        let tcp = bind_key(OsStr::new("127.0.0.1:0=5"))
            .unwrap()
            .into_tcp()
            .unwrap();
        assert!(tcp.local_addr().unwrap().ip().is_loopback());
        // A path is anything with a `/`, `=` and `:` included.
        let path = dir.path().join("a=1:2.sock");
        let unix = bind_key(path.as_os_str()).unwrap().into_unix().unwrap();
        assert_eq!(
            unix.local_addr().unwrap().as_pathname(),
            Some(path.as_path())
        );
    }

    #[test]
    fn lookups_read_keys_as_start_server_writes_them() {
        let lookup = |key: &str| {
            let lookup = Lookup::parse(OsStr::new(key));
            (lookup.key.into_string().unwrap(), lookup.fd, lookup.udp)
        };
        let expect = |key: &str, fd, udp| (key.to_string(), fd, udp);
        assert_eq!(lookup("8080"), expect("8080", None, false));
        assert_eq!(lookup("u53"), expect("53", None, true));
        assert_eq!(lookup("localhost:u53"), expect("localhost:53", None, true));
        assert_eq!(lookup("[::]:u53"), expect("[::]:53", None, true));
        assert_eq!(lookup("80=5"), expect("80", Some(5), false));
        assert_eq!(lookup("u53=7"), expect("53", Some(7), true));
        assert_eq!(
            lookup("[127.0.0.1]:80"),
            expect("127.0.0.1:80", None, false)
        );
        assert_eq!(lookup("[::1]:80"), expect("[::1]:80", None, false));
        // A path is taken as it is.
        assert_eq!(lookup("/tmp/u1=2"), expect("/tmp/u1=2", None, false));
        assert_eq!(lookup("./u53"), expect("./u53", None, false));
    }

    #[test]
    fn a_lookup_prefers_the_kind_asked_for_and_refuses_ambiguity() {
        // `--port=8080 --port=u8080`: two entries keyed `8080`, fd 4 UDP.
        let ports: Vec<(OsString, RawFd)> = [("8080", 3), ("8080", 4), ("/tmp/s", 5)]
            .iter()
            .map(|(k, fd)| (OsString::from(k), *fd))
            .collect();
        let udp = |fd| fd == 4;
        let find = |key: &str| find_port(&ports, OsStr::new(key), udp).map(|(_, fd)| fd);
        assert_eq!(find("8080").unwrap(), 3);
        assert_eq!(find("0.0.0.0:8080").unwrap(), 3);
        assert_eq!(find("u8080").unwrap(), 4);
        assert_eq!(find("8080=4").unwrap(), 4);
        assert_eq!(find("u8080=4").unwrap(), 4);
        assert!(matches!(find("8080=5"), Err(Error::NoSuchKey { .. })));
        assert!(matches!(find("u8080=3"), Err(Error::NoSuchKey { .. })));
        assert!(matches!(find("u5"), Err(Error::NoSuchKey { .. })));

        // Two TCP entries for one key (only a hand-made value has them).
        let twice: Vec<(OsString, RawFd)> = vec![("80".into(), 3), ("0.0.0.0:80".into(), 4)];
        assert_eq!(find_port(&twice, OsStr::new("80"), |_| false).unwrap().1, 3);
        let error = find_port(&twice, OsStr::new("127.0.0.1:80"), |_| false);
        assert!(matches!(error, Err(Error::NoSuchKey { .. })));
        let same: Vec<(OsString, RawFd)> = vec![("80".into(), 3), ("80".into(), 4)];
        let error = find_port(&same, OsStr::new("80"), |_| false).unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"80\" fits more than one socket in SERVER_STARTER_PORT: \"80=3\", \"80=4\""
        );
    }

    #[test]
    fn takes_the_kind_a_key_asks_for() {
        // `--port=P --port=uP`, and a connection on a third number.
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        let client = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
        let key = format!("127.0.0.1:{port}");
        let (tcp_fd, udp_fd) = (tcp.into_raw_fd(), udp.into_raw_fd());
        let value = encode_server_ports([
            (key.as_str(), tcp_fd),
            (key.as_str(), udp_fd),
            ("127.0.0.1:1", client.as_raw_fd()),
        ]);
        let error = take_key(&value, OsStr::new("127.0.0.1:1")).unwrap_err();
        assert!(matches!(error, Error::Connected { .. }), "{error:?}");
        assert!(client.peer_addr().is_ok());

        let udp = take_key(&value, OsStr::new(&format!("127.0.0.1:u{port}")))
            .unwrap()
            .into_udp()
            .unwrap();
        assert_eq!(udp.as_raw_fd(), udp_fd);
        let tcp = take_key(&value, OsStr::new(&key))
            .unwrap()
            .into_tcp()
            .unwrap();
        assert_eq!(tcp.as_raw_fd(), tcp_fd);
        let again = take_key(&value, OsStr::new(&key)).unwrap_err();
        assert_eq!(
            again.to_string(),
            format!("{key}: the socket was already taken")
        );
    }

    #[test]
    fn a_taken_key_is_bound_where_it_says() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let fd = tcp.as_raw_fd();
        let wrong = SocketAddr::from(([127, 0, 0, 2], addr.port()));
        for (key, fits) in [
            (addr.to_string(), true),
            (format!("localhost:{}", addr.port()), true),
            ("127.0.0.1:0".to_string(), true),
            (wrong.to_string(), false),
            (
                format!("127.0.0.1:{}", addr.port().wrapping_add(1).max(1)),
                false,
            ),
            // A bare port is the wildcard address.
            (addr.port().to_string(), false),
            ("/tmp/x.sock".to_string(), false),
        ] {
            let kind = if key.starts_with('/') {
                Kind::Unix
            } else {
                Kind::Tcp
            };
            let checked = check_address(OsStr::new(&key), fd, kind);
            if key.starts_with('/') {
                // A TCP socket has no path: refused, not wrapped.
                assert!(checked.is_err(), "{key}");
                continue;
            }
            assert_eq!(checked.is_ok(), fits, "{key}: {checked:?}");
            if let Err(error) = checked {
                assert_eq!(
                    error.to_string(),
                    format!("{key}: file descriptor {fd} is bound to {addr}, not to {key}")
                );
            }
        }
        let any = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = any.local_addr().unwrap().port().to_string();
        assert!(check_address(OsStr::new(&port), any.as_raw_fd(), Kind::Tcp).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let unix = UnixListener::bind(&path).unwrap();
        assert!(check_address(path.as_os_str(), unix.as_raw_fd(), Kind::Unix).is_ok());
        let other = dir.path().join("other.sock");
        let error = check_address(other.as_os_str(), unix.as_raw_fd(), Kind::Unix).unwrap_err();
        assert!(matches!(error, Error::AddressMismatch { .. }), "{error:?}");
        // Still open: nothing was closed.
        assert!(tcp.local_addr().is_ok() && unix.local_addr().is_ok());
    }

    #[test]
    fn converts_to_the_kind_asked_for() {
        let tcp = Listener::Tcp(TcpListener::bind("127.0.0.1:0").unwrap());
        let fd = tcp.as_raw_fd();
        let error = tcp.into_unix().unwrap_err();
        assert!(matches!(
            error,
            Error::WrongKind {
                expected: "unix",
                found: "tcp",
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            format!("file descriptor {fd}: expected a unix socket, got a tcp socket")
        );
        let udp = Listener::Udp(UdpSocket::bind("127.0.0.1:0").unwrap());
        let udp = udp.into_nonblocking().unwrap().into_udp().unwrap();
        let mut buf = [0; 1];
        assert_eq!(
            udp.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn leaves_file_status_flags_and_sets_cloexec() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let fd = tcp.into_raw_fd();
        // SAFETY: fcntl on a descriptor this test owns.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            assert_eq!(libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC), 0);
        }
        // SAFETY: the test owns `fd` and gave up its handle.
        let taken = unsafe { take_listeners(ports(&[("tcp", fd)])) }.unwrap();
        // SAFETY: fcntl on a descriptor `taken` owns and keeps open.
        let (status, descriptor) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        assert_ne!(status & libc::O_NONBLOCK, 0);
        assert_ne!(descriptor & libc::FD_CLOEXEC, 0);
        drop(taken);
    }
}
