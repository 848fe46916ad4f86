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

#![warn(missing_docs)]

use std::ffi::{OsStr, OsString, c_int};
use std::fmt;
use std::io;
use std::mem;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

/// The variable naming the inherited sockets.
const PORT_VAR: &str = "SERVER_STARTER_PORT";

/// The variable holding the worker's generation number.
const GENERATION_VAR: &str = "SERVER_STARTER_GENERATION";

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
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(err) => Some(err),
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
    fn io_error_is_the_source() {
        use std::error::Error as _;
        let error = Error::Io(io::Error::from_raw_os_error(libc::EBADF));
        assert!(error.source().is_some());
        assert!(Error::NotStarted.source().is_none());
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
