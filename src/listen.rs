//! Listening sockets: `--port`/`--path` specs, binding, fd pinning and the
//! `SERVER_STARTER_PORT` value.
//!
//! Invariant: once [`bind_all`] returns, every socket is open, blocking (as
//! the reference creates them) and inheritable (close-on-exec cleared), and
//! nothing here touches its file status flags again: they belong to the open
//! file description every worker generation shares.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, SockaddrIn6, UnixAddr, sockopt,
};
use nix::sys::stat::{Mode, umask};

/// Where a socket listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// IPv4: `None` is 0.0.0.0 (a bare port), else a host to resolve.
    Inet {
        host: Option<String>,
        port: u16,
    },
    /// IPv6, bound with IPV6_V6ONLY.
    Inet6 {
        addr: Ipv6Addr,
        port: u16,
    },
    Unix(PathBuf),
}

/// One `--port` or `--path` option, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSpec {
    /// The key workers see in `SERVER_STARTER_PORT` (for a path that is
    /// not UTF-8, a lossy rendering; the variable gets the real bytes).
    pub key: String,
    /// The option value as written, for error messages.
    pub given: String,
    pub target: Target,
    pub udp: bool,
    /// `=N`: the descriptor number the socket must have.
    pub pin: Option<RawFd>,
}

impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

fn invalid(spec: &str, why: &str) -> anyhow::Error {
    anyhow!("invalid port value {spec:?}: {why}")
}

impl ListenSpec {
    /// The key as `SERVER_STARTER_PORT` carries it: for a path, its bytes
    /// as given (not necessarily UTF-8); else [`ListenSpec::key`].
    pub fn env_key(&self) -> OsString {
        match &self.target {
            Target::Unix(path) => path.as_os_str().to_os_string(),
            _ => self.key.clone().into(),
        }
    }

    /// A `--path` option.
    pub fn unix(path: &OsStr) -> ListenSpec {
        ListenSpec {
            key: path.to_string_lossy().into_owned(),
            given: path.to_string_lossy().into_owned(),
            target: Target::Unix(PathBuf::from(path)),
            udp: false,
            pin: None,
        }
    }

    /// Parses every `--port` form of docs/behaviour.md section 2: `80`, `host:80`,
    /// `[v6]:80`, a `u` before the port for UDP, `=N` after it to pin the
    /// descriptor. White space around the parts is tolerated.
    pub fn parse_port(spec: &str) -> Result<ListenSpec> {
        let text = spec.trim();
        let (addr, pin) = match text.rsplit_once('=') {
            Some((addr, fd)) => {
                let fd = fd.trim();
                if fd.is_empty() || !fd.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid(
                        spec,
                        "the file descriptor after '=' must be a number",
                    ));
                }
                let fd: RawFd = fd
                    .parse()
                    .map_err(|_| invalid(spec, "file descriptor number too large"))?;
                (addr.trim_end(), Some(fd))
            }
            None => (text, None),
        };
        let (host, port) = match addr.rsplit_once(':') {
            Some((host, port)) => (Some(host.trim()), port.trim_start()),
            None => (None, addr),
        };
        let (udp, digits) = match port.strip_prefix('u') {
            Some(d) => (true, d),
            None => (false, port),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                spec,
                "expected PORT, HOST:PORT or [ADDRESS]:PORT, with u before PORT for UDP and =FD after it",
            ));
        }
        let number: u16 = digits
            .parse()
            .map_err(|_| invalid(spec, "port number out of range (0-65535)"))?;
        let (key, target) = match host {
            None => (
                digits.to_string(),
                Target::Inet {
                    host: None,
                    port: number,
                },
            ),
            Some(host) => {
                let bare = match host.strip_prefix('[') {
                    Some(inner) => inner
                        .strip_suffix(']')
                        .ok_or_else(|| invalid(spec, "unbalanced '[' in the address"))?
                        .trim(),
                    None if host.contains(']') => {
                        return Err(invalid(spec, "unbalanced ']' in the address"));
                    }
                    None if host.contains(':') => {
                        return Err(invalid(
                            spec,
                            "an IPv6 address must be written in brackets, as in [::1]:80",
                        ));
                    }
                    None => host,
                };
                if bare.is_empty() {
                    return Err(invalid(spec, "empty host"));
                }
                if bare.contains(['[', ']']) {
                    return Err(invalid(spec, "unbalanced brackets in the address"));
                }
                if bare.contains(':') {
                    let addr: Ipv6Addr = bare
                        .parse()
                        .map_err(|_| invalid(spec, "not an IPv6 address"))?;
                    (
                        format!("[{bare}]:{digits}"),
                        Target::Inet6 { addr, port: number },
                    )
                } else {
                    (
                        format!("{bare}:{digits}"),
                        Target::Inet {
                            host: Some(bare.to_string()),
                            port: number,
                        },
                    )
                }
            }
        };
        Ok(ListenSpec {
            key,
            given: spec.to_string(),
            target,
            udp,
            pin,
        })
    }
}

/// `=N` must not be our stdout or stderr, nor be used twice.
pub fn check_pins(specs: &[ListenSpec]) -> Result<()> {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let mut seen = Vec::new();
    for spec in specs {
        if let Some(fd) = spec.pin {
            if u64::try_from(fd).map_or(true, |n| n >= limit) {
                bail!(
                    "invalid port value {:?}: file descriptor {fd} is beyond the limit of open files ({limit})",
                    spec.given
                );
            }
            if fd == 1 || fd == 2 {
                bail!(
                    "invalid port value {:?}: file descriptor {fd} is start_server's {}",
                    spec.given,
                    if fd == 1 { "stdout" } else { "stderr" }
                );
            }
            if seen.contains(&fd) {
                bail!(
                    "invalid port value {:?}: file descriptor {fd} is already used by another --port",
                    spec.given
                );
            }
            seen.push(fd);
        }
    }
    Ok(())
}

/// A bound socket and the descriptor number workers find it at.
#[derive(Debug)]
pub struct Bound {
    pub key: String,
    /// The key as `SERVER_STARTER_PORT` carries it.
    env_key: OsString,
    pub fd: OwnedFd,
    /// For a unix socket we created: its path and inode, so that at exit we
    /// remove exactly that file and never one somebody put in its place.
    unix_file: Option<(PathBuf, u64, u64)>,
}

/// The sockets for the supervisor's whole life. Dropping them removes the
/// unix socket files this process created (a process that must leave them,
/// such as the ones that exit while daemonizing, exits without dropping).
#[derive(Debug, Default)]
pub struct Sockets {
    pub bound: Vec<Bound>,
}

impl Sockets {
    /// The `SERVER_STARTER_PORT` value of these sockets.
    pub fn env_value(&self) -> OsString {
        env_value_of(
            self.bound
                .iter()
                .map(|b| (b.env_key.as_os_str(), b.fd.as_raw_fd())),
        )
    }

    /// Whether a socket sits on stdin (`=0`), which daemonizing keeps.
    pub fn uses_stdin(&self) -> bool {
        self.bound.iter().any(|b| b.fd.as_raw_fd() == 0)
    }

    /// Closes every socket, then removes the socket files we created.
    pub fn close(mut self) {
        self.remove_files_now();
    }

    fn remove_files_now(&mut self) {
        for b in self.bound.drain(..) {
            let file = b.unix_file;
            drop(b.fd);
            if let Some((path, dev, ino)) = file {
                if let Ok(meta) = std::fs::symlink_metadata(&path) {
                    if meta.file_type().is_socket() && meta.dev() == dev && meta.ino() == ino {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        self.remove_files_now();
    }
}

/// A `SERVER_STARTER_PORT` value: `KEY=FD` joined with `;`, keys as bytes,
/// written by the worker library that reads it.
pub fn env_value_of<'a>(entries: impl IntoIterator<Item = (&'a OsStr, RawFd)>) -> OsString {
    server_starter::encode_server_ports(entries)
}

/// Binds every spec in order (ports first, then paths, as given), applies
/// `=N` pins, and clears close-on-exec on the results. `internal` are our
/// own descriptors opened earlier (log file, pid file): a pin that lands on
/// one of them moves ours out of the way first.
pub fn bind_all(
    specs: &[ListenSpec],
    backlog: i32,
    internal: &mut [&mut OwnedFd],
) -> Result<Sockets> {
    let mut sockets = Sockets::default();
    let highest_pin = specs.iter().filter_map(|s| s.pin).max().unwrap_or(0);
    for spec in specs {
        let (fd, unix_file) = bind_one(spec, backlog)?;
        let mut bound = Bound {
            key: spec.key.clone(),
            env_key: spec.env_key(),
            fd,
            unix_file,
        };
        if let Some(pin) = spec.pin {
            if bound.fd.as_raw_fd() != pin {
                // Whatever of ours holds `pin` moves above every pin target.
                for other in sockets
                    .bound
                    .iter_mut()
                    .map(|b| &mut b.fd)
                    .chain(internal.iter_mut().map(|f| &mut **f))
                {
                    if other.as_raw_fd() == pin {
                        *other = move_above(other, highest_pin)?;
                    }
                }
                bound.fd = dup_onto(&bound.fd, pin).with_context(|| {
                    format!("failed to move the socket of {spec} to file descriptor {pin}")
                })?;
            }
            // Logged even when the socket already had that number, as the
            // reference does (it then closes the socket by mistake; we don't).
            log_line!("socket is duplicated to file descriptor {pin}");
        }
        sockets.bound.push(bound);
    }
    for b in &sockets.bound {
        // F_SETFD (not F_SETFL): the descriptor flag only, never the status
        // flags of the shared open file description.
        nix::fcntl::fcntl(
            b.fd.as_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .with_context(|| format!("failed to make the socket of {} inheritable", b.key))?;
    }
    Ok(sockets)
}

/// Duplicates `fd` to the lowest free number above `floor`, close-on-exec.
fn move_above(fd: &OwnedFd, floor: RawFd) -> Result<OwnedFd> {
    let new = nix::fcntl::fcntl(
        fd.as_fd(),
        nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(floor.saturating_add(1)),
    )
    .context("failed to move a descriptor out of the way of a pinned socket")?;
    // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// dup2(2) onto a fixed number; the original is closed when dropped.
fn dup_onto(fd: &OwnedFd, target: RawFd) -> Result<OwnedFd> {
    // SAFETY: the returned OwnedFd is the only owner of `target`: the caller
    // moved any descriptor of ours out of the way first, and whatever else
    // was there (inherited, unowned) is replaced, as the user asked.
    Ok(unsafe { nix::unistd::dup2_raw(fd, target) }?)
}

type UnixFile = Option<(PathBuf, u64, u64)>;

fn bind_one(spec: &ListenSpec, backlog: i32) -> Result<(OwnedFd, UnixFile)> {
    let kind = if spec.udp {
        SockType::Datagram
    } else {
        SockType::Stream
    };
    let backlog = Backlog::new(backlog).unwrap_or(Backlog::MAXCONN);
    match &spec.target {
        Target::Inet { host, port } => {
            let ip = match host {
                None => Ipv4Addr::UNSPECIFIED,
                Some(h) => resolve_v4(h).with_context(|| format!("failed to resolve host:{h}"))?,
            };
            let fd = socket::socket(AddressFamily::Inet, kind, SockFlag::SOCK_CLOEXEC, None)
                .context("failed to create socket")?;
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
                .context("failed to set SO_REUSEADDR")?;
            let addr = SockaddrIn::from(SocketAddrV4::new(ip, *port));
            socket::bind(fd.as_raw_fd(), &addr)
                .with_context(|| format!("failed to bind to {spec}"))?;
            if !spec.udp {
                socket::listen(&fd, backlog)
                    .with_context(|| format!("failed to listen on {spec}"))?;
            }
            Ok((fd, None))
        }
        Target::Inet6 { addr, port } => {
            let fd = socket::socket(AddressFamily::Inet6, kind, SockFlag::SOCK_CLOEXEC, None)
                .context("failed to create socket")?;
            socket::setsockopt(&fd, sockopt::ReuseAddr, &true)
                .context("failed to set SO_REUSEADDR")?;
            socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)
                .context("failed to set IPV6_V6ONLY")?;
            let sa = SockaddrIn6::from(SocketAddrV6::new(*addr, *port, 0, 0));
            socket::bind(fd.as_raw_fd(), &sa)
                .with_context(|| format!("failed to bind to {spec}"))?;
            if !spec.udp {
                socket::listen(&fd, backlog)
                    .with_context(|| format!("failed to listen on {spec}"))?;
            }
            Ok((fd, None))
        }
        Target::Unix(path) => bind_unix(path, backlog)
            .with_context(|| format!("failed to listen to file {}", path.display())),
    }
}

fn resolve_v4(host: &str) -> Result<Ipv4Addr> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    (host, 0)
        .to_socket_addrs()?
        .find_map(|a| match a {
            SocketAddr::V4(v4) => Some(*v4.ip()),
            SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| anyhow!("no IPv4 address"))
}

fn bind_unix(path: &Path, backlog: Backlog) -> Result<(OwnedFd, UnixFile)> {
    remove_stale_socket(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("failed to create socket")?;
    let addr = UnixAddr::new(path)?;
    // umask 0 so the socket is srwxrwxrwx, as the reference makes it.
    let saved = umask(Mode::empty());
    let bound = socket::bind(fd.as_raw_fd(), &addr);
    umask(saved);
    bound?;
    let meta = std::fs::symlink_metadata(path)?;
    let file = Some((path.to_path_buf(), meta.dev(), meta.ino()));
    if let Err(e) = socket::listen(&fd, backlog) {
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    Ok((fd, file))
}

/// A socket file nobody accepts on is a leftover: warn and remove it. A
/// live one belongs to another instance: refuse. Anything that is not a
/// socket is left alone, and refused (the reference deletes it).
fn remove_stale_socket(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!("it exists and is not a socket (left untouched)");
    }
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    match socket::connect(probe.as_raw_fd(), &UnixAddr::new(path)?) {
        Err(Errno::ECONNREFUSED) => {
            log_line!("removing existing socket file:{}", path.display());
            std::fs::remove_file(path).with_context(|| {
                format!("failed to remove existing socket file:{}", path.display())
            })
        }
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => {
            bail!("another process is listening on it (is start_server already running?)")
        }
        Err(e) => bail!("cannot tell whether the existing socket is in use: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ListenSpec {
        ListenSpec::parse_port(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn port_forms() {
        let p = parse("80");
        assert_eq!((p.key.as_str(), p.udp, p.pin), ("80", false, None));
        assert_eq!(
            p.target,
            Target::Inet {
                host: None,
                port: 80
            }
        );
        assert_eq!(parse("127.0.0.1:80").key, "127.0.0.1:80");
        assert_eq!(parse("localhost:80").key, "localhost:80");
        assert_eq!(parse("[127.0.0.1]:80").key, "127.0.0.1:80");
        let v6 = parse("[::1]:8080");
        assert_eq!(v6.key, "[::1]:8080");
        assert_eq!(
            v6.target,
            Target::Inet6 {
                addr: Ipv6Addr::LOCALHOST,
                port: 8080
            }
        );
        let u = parse("u53");
        assert_eq!((u.key.as_str(), u.udp), ("53", true));
        assert_eq!(parse("host:u53").key, "host:53");
        assert_eq!(parse("[::]:u53").key, "[::]:53");
        let pinned = parse("127.0.0.1:80=0");
        assert_eq!((pinned.key.as_str(), pinned.pin), ("127.0.0.1:80", Some(0)));
        assert_eq!(parse(" 80 = 3 ").pin, Some(3));
        assert_eq!(parse(" [ ::1 ] : 80 ").key, "[::1]:80");
        assert_eq!(parse("080").key, "080");
    }

    #[test]
    fn bad_ports() {
        for bad in [
            "",
            "abc",
            "80a",
            "host:",
            ":80",
            "::1:80",
            "[::1:80",
            "::1]:80",
            "[nothost:]:80",
            "70000",
            "80=",
            "80=x",
            "80=-1",
            "x80",
            "uu80",
            "[]:80",
            "80=99999999999",
        ] {
            assert!(ListenSpec::parse_port(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn pins_checked() {
        let specs = |v: &[&str]| v.iter().map(|s| parse(s)).collect::<Vec<_>>();
        assert!(check_pins(&specs(&["80=3", "81=4", "82=0"])).is_ok());
        assert!(check_pins(&specs(&["80=1"])).is_err());
        assert!(check_pins(&specs(&["80=2"])).is_err());
        assert!(check_pins(&specs(&["80=5", "81=5"])).is_err());
    }
}
