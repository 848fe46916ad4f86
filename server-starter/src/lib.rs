//! The worker side of Server::Starter: take the listening sockets that
//! `start_server` bound and handed down.
//!
//! `start_server` binds every socket once, before the first worker, and keeps
//! them open for its whole life. Each worker generation inherits the same
//! descriptors and learns what they are from two environment variables:
//!
//! - `SERVER_STARTER_PORT`: `KEY=FD` entries joined by `;`, ports first in
//!   command-line order, then unix socket paths. `KEY` is the `--port` or
//!   `--path` value as the operator wrote it (`80`, `127.0.0.1:80`,
//!   `[::1]:8080`, `/tmp/app.sock`), `FD` the inherited descriptor number:
//!   `80=3;[::1]:8080=4;/tmp/app.sock=5`. The variable is set but empty when
//!   `start_server` was given no `--port` or `--path` at all.
//! - `SERVER_STARTER_GENERATION`: which worker start this is, counting from 1.
//!
//! This crate gives a Rust worker what Perl's `Server::Starter::server_ports()`
//! gives a Perl one: [`server_ports`] parses the variable into key → fd, and
//! [`listeners`] turns those descriptors into ready std sockets by asking each
//! one what it is. It depends on `std` and `libc` only.
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
//! # Async runtimes
//!
//! The sockets come blocking, as `start_server` (like the Perl original)
//! creates them. An event loop wants them non-blocking; set that yourself
//! before handing the socket over, e.g. with tokio:
//!
//! ```ignore
//! use server_starter::Listener;
//!
//! for (key, listener) in server_starter::listeners()? {
//!     if let Listener::Tcp(std_listener) = listener {
//!         std_listener.set_nonblocking(true)?;
//!         let listener = tokio::net::TcpListener::from_std(std_listener)?;
//!         tokio::spawn(serve(key, listener));
//!     }
//! }
//! ```
//!
//! `O_NONBLOCK` is a flag of the open file description, which every worker
//! generation shares: setting it here also changes it for the previous and the
//! next generation. That is fine: `start_server` never touches those flags
//! after binding, so a worker that sets them keeps them, and a blocking worker
//! of another generation that inherits a non-blocking socket sees `accept`
//! return `WouldBlock` instead of hanging. [`listeners`] itself leaves the file
//! status flags alone.
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
use std::mem;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Set once [`listeners`] has handed out the inherited descriptors.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Why the inherited sockets could not be read or taken.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `SERVER_STARTER_PORT` is not set: the process was not started by
    /// `start_server`.
    NotStarted,
    /// An entry of `SERVER_STARTER_PORT` is not `KEY=FD` with a non-empty key
    /// and a descriptor number made of digits, or names a descriptor that
    /// another entry already named.
    Malformed {
        /// The offending entry, as it appears in the variable.
        entry: String,
    },
    /// The descriptor of an entry is not open, or is open but not a socket.
    NotASocket {
        /// The entry's key.
        key: String,
        /// The descriptor it names.
        fd: RawFd,
    },
    /// The descriptor is a socket, but not one of TCP over IPv4/IPv6, UDP over
    /// IPv4/IPv6 or a unix stream socket.
    UnsupportedSocket {
        /// The entry's key.
        key: String,
        /// The descriptor it names.
        fd: RawFd,
        /// Its address family (`AF_*`).
        domain: c_int,
        /// Its type (`SOCK_*`).
        kind: c_int,
    },
    /// [`listeners`] was already called successfully in this process: the
    /// descriptors belong to the values it returned.
    AlreadyTaken,
    /// A system call on an inherited descriptor failed for another reason; the
    /// cause is the [`source`](std::error::Error::source).
    Io(io::Error),
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
    /// queue stayed full for the whole send timeout (`EAGAIN`), and so on;
    /// the cause is the [`source`](std::error::Error::source).
    NotifyFailed {
        /// The address the datagram was sent to, as given.
        socket: OsString,
        /// Why the send failed.
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
            Error::NotASocket { key, fd } => {
                write!(f, "{key}: file descriptor {fd} is not an open socket")
            }
            Error::UnsupportedSocket {
                key,
                fd,
                domain,
                kind,
            } => write!(
                f,
                "{key}: file descriptor {fd} is an unsupported socket ({}, {})",
                domain_name(*domain),
                kind_name(*kind)
            ),
            Error::AlreadyTaken => write!(f, "the inherited sockets were already taken"),
            Error::Io(_) => write!(f, "system call on an inherited socket failed"),
            Error::InvalidNotifySocket { socket } => write!(
                f,
                "invalid notify socket {:?}: {}",
                socket.to_string_lossy(),
                address_problem(socket.as_bytes()).unwrap_or_else(|| "unusable address".into())
            ),
            Error::NotifyFailed { socket, .. } => write!(
                f,
                "cannot send a notification to {:?}",
                socket.to_string_lossy()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(err) | Error::NotifyFailed { source: err, .. } => Some(err),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::Io(err)
    }
}

/// An inherited socket, ready to use.
#[derive(Debug)]
pub enum Listener {
    /// A listening TCP socket (IPv4 or IPv6).
    Tcp(TcpListener),
    /// A listening unix stream socket (`--path`).
    Unix(UnixListener),
    /// A bound UDP socket (`--port=u53` and the like).
    Udp(UdpSocket),
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(socket) => socket.as_fd(),
            Listener::Unix(socket) => socket.as_fd(),
            Listener::Udp(socket) => socket.as_fd(),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
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
/// an entry cannot be parsed (a value that is not valid UTF-8 is reported as
/// one malformed entry: [`server_ports_os`] accepts it). A set but empty
/// variable is not an error: it gives an empty list.
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
        None => Err(Error::Malformed {
            entry: value.to_string_lossy().into_owned(),
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
/// IPv6 datagram socket a [`Listener::Udp`].
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
/// [`Error::NotStarted`] and [`Error::Malformed`] as for [`server_ports`];
/// [`Error::Malformed`] too when two entries name the same descriptor;
/// [`Error::NotASocket`] for a descriptor that is not open or not a socket;
/// [`Error::UnsupportedSocket`] for any other kind of socket;
/// [`Error::AlreadyTaken`] on a second call.
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

/// Takes `ports` unless the inherited sockets were already taken.
fn take_once<K: AsRef<OsStr>>(ports: Vec<(K, RawFd)>) -> Result<Vec<(K, Listener)>, Error> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(Error::AlreadyTaken);
    }
    // SAFETY: the descriptors in SERVER_STARTER_PORT were handed to this
    // process for its own use, and `TAKEN` makes sure they are taken once.
    let result = unsafe { take_listeners(ports) };
    if result.is_err() {
        TAKEN.store(false, Ordering::SeqCst);
    }
    result
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
            return Err(Error::Malformed {
                entry: format!("{key}={fd}"),
            });
        }
        checked.push(classify(&key, *fd)?);
    }
    for (_, fd) in &ports {
        set_cloexec(*fd)?;
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
                }
            };
            (key, listener)
        })
        .collect();
    Ok(listeners)
}

/// Asks a descriptor what kind of socket it is, without changing it.
fn classify(key: &str, fd: RawFd) -> Result<Kind, Error> {
    let not_a_socket = |err: io::Error| match err.raw_os_error() {
        Some(libc::ENOTSOCK) | Some(libc::EBADF) => Error::NotASocket {
            key: key.to_string(),
            fd,
        },
        _ => Error::Io(err),
    };
    let kind = socket_type(fd).map_err(not_a_socket)?;
    let domain = socket_domain(fd).map_err(not_a_socket)?;
    match (domain, kind) {
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM) => Ok(Kind::Tcp),
        (libc::AF_UNIX, libc::SOCK_STREAM) => Ok(Kind::Unix),
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_DGRAM) => Ok(Kind::Udp),
        _ => Err(Error::UnsupportedSocket {
            key: key.to_string(),
            fd,
            domain,
            kind,
        }),
    }
}

/// `getsockopt(SO_TYPE)`: `SOCK_STREAM`, `SOCK_DGRAM`, ...
fn socket_type(fd: RawFd) -> io::Result<c_int> {
    let mut kind: c_int = 0;
    let mut len = mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `kind` and `len` are valid for writes and `len` is the size of
    // `kind`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &mut len,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(kind)
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

fn domain_name(domain: c_int) -> String {
    match domain {
        libc::AF_INET => "AF_INET".to_string(),
        libc::AF_INET6 => "AF_INET6".to_string(),
        libc::AF_UNIX => "AF_UNIX".to_string(),
        other => format!("address family {other}"),
    }
}

fn kind_name(kind: c_int) -> String {
    match kind {
        libc::SOCK_STREAM => "SOCK_STREAM".to_string(),
        libc::SOCK_DGRAM => "SOCK_DGRAM".to_string(),
        libc::SOCK_SEQPACKET => "SOCK_SEQPACKET".to_string(),
        libc::SOCK_RAW => "SOCK_RAW".to_string(),
        other => format!("socket type {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            Error::UnsupportedSocket {
                key: "80".to_string(),
                fd: 3,
                domain: libc::AF_UNIX,
                kind: libc::SOCK_DGRAM,
            },
            Error::AlreadyTaken,
            Error::Io(io::Error::from_raw_os_error(libc::EBADF)),
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
    fn io_error_is_the_source() {
        use std::error::Error as _;
        let error = Error::Io(io::Error::from_raw_os_error(libc::EBADF));
        assert!(error.source().is_some());
        assert!(Error::NotStarted.source().is_none());
        let error = Error::NotifyFailed {
            socket: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(error.source().is_some());
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
        let (datagram, _peer) = UnixDatagram::pair().unwrap();
        let list = vec![
            ("tcp".to_string(), tcp.as_raw_fd()),
            ("dgram".to_string(), datagram.as_raw_fd()),
        ];
        // SAFETY: take_listeners fails before wrapping anything, so the
        // descriptors stay owned by `tcp` and `datagram`.
        let error = unsafe { take_listeners(list) }.unwrap_err();
        assert!(
            matches!(error, Error::UnsupportedSocket { ref key, domain, kind, .. }
                if key == "dgram" && domain == libc::AF_UNIX && kind == libc::SOCK_DGRAM),
            "{error:?}"
        );
        // Still open, still ours.
        assert!(tcp.local_addr().is_ok());

        let file = tempfile::tempfile().unwrap();
        // SAFETY: as above.
        let error = unsafe { take_listeners(ports(&[("file", file.as_raw_fd())])) }.unwrap_err();
        assert!(matches!(error, Error::NotASocket { fd, .. } if fd == file.as_raw_fd()));

        // SAFETY: as above.
        let error =
            unsafe { take_listeners(ports(&[("a", tcp.as_raw_fd()), ("b", tcp.as_raw_fd())])) }
                .unwrap_err();
        assert!(matches!(error, Error::Malformed { .. }));
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
