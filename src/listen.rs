//! Listening sockets: `--port`/`--path` specs, binding, fd pinning, the
//! sockets a service manager hands over (socket activation, `LISTEN_FDS`,
//! `sd_listen_fds(3)`) and the `SERVER_STARTER_PORT` value.
//!
//! A socket handed over is the service manager's: matched to a `--port` or
//! `--path` by its address, it is used instead of binding; it is never
//! listened on again, never unlinked, and its file status flags are left
//! alone.
//!
//! Invariant: once [`bind_all`] returns, every socket is open, blocking (as
//! the reference creates them) and inheritable (close-on-exec cleared), and
//! nothing here touches its file status flags again: they belong to the open
//! file description every worker generation shares.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::state::record;
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
    /// For a socket handed over by the service manager: the name it gave
    /// (`LISTEN_FDNAMES`), if any.
    pub fd_name: Option<String>,
    /// Its `=N`, if any.
    pin: Option<RawFd>,
    /// With `--systemd-listen-fds`, a pinned socket's second descriptor,
    /// at its place among fds 3, 4, ...
    activation_copy: Option<OwnedFd>,
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

    /// `--systemd-listen-fds`: puts socket i at fd 3+i as well, for the
    /// workers' `LISTEN_FDS`, once and for all in this process, so that
    /// the child needs no dup2 between fork and exec: any descriptor of
    /// ours in the way (`internal`, another socket) moves above 3+n first,
    /// and every descriptor opened later lands above by itself. A socket
    /// pinned with `=N` keeps N (and `SERVER_STARTER_PORT` names N); one
    /// pinned inside 3..3+n at another place than its own is an error.
    pub fn place_for_activation(&mut self, internal: &mut [&mut OwnedFd]) -> Result<()> {
        let n = RawFd::try_from(self.bound.len()).context("too many sockets")?;
        let end = 3 + n;
        let pins: Vec<Option<RawFd>> = self.bound.iter().map(|b| b.pin).collect();
        for (i, pin) in (0..).zip(&pins) {
            if let Some(pin) = *pin {
                if (3..end).contains(&pin) && pin != 3 + i {
                    bail!(
                        "--systemd-listen-fds puts the sockets at fds 3-{}, in order; the socket of {} cannot be pinned to fd {pin} (it goes to fd {}): pin it outside 3-{} or at its own place",
                        end - 1,
                        self.bound[i as usize].key,
                        3 + i,
                        end - 1
                    );
                }
            }
        }
        for i in 0..self.bound.len() {
            let target = 3 + RawFd::try_from(i).context("too many sockets")?;
            if self.bound[i].fd.as_raw_fd() == target {
                continue;
            }
            for (j, b) in self.bound.iter_mut().enumerate() {
                if j != i && b.fd.as_raw_fd() == target {
                    b.fd = move_above(&b.fd, end - 1)?;
                }
            }
            for fd in internal.iter_mut() {
                if fd.as_raw_fd() == target {
                    **fd = move_above(fd, end - 1)?;
                }
            }
            let b = &mut self.bound[i];
            let copy = dup_onto(&b.fd, target).with_context(|| {
                format!(
                    "failed to put the socket of {} at fd {target} (--systemd-listen-fds)",
                    b.key
                )
            })?;
            if b.pin.is_some() {
                b.activation_copy = Some(copy);
            } else {
                b.fd = copy;
            }
        }
        Ok(())
    }

    /// `LISTEN_FDNAMES` for `--systemd-listen-fds`: the service manager's
    /// name of a socket it handed over, else the key with what a name may
    /// not hold (`:`, anything outside printable ASCII) as `_`, at most
    /// 255 bytes (`systemd.socket(5)`, `FileDescriptorName=`).
    pub fn fd_names(&self) -> String {
        self.bound
            .iter()
            .map(|b| match &b.fd_name {
                Some(name) => name.clone(),
                None => b
                    .key
                    .chars()
                    .map(|c| {
                        if c.is_ascii_graphic() && c != ':' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .take(255)
                    .collect(),
            })
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Every descriptor of the sockets, the activation copies too.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.bound
            .iter()
            .flat_map(|b| std::iter::once(&b.fd).chain(&b.activation_copy))
            .map(AsRawFd::as_raw_fd)
            .collect()
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
    mut activated: Vec<Activated>,
) -> Result<Sockets> {
    let mut sockets = Sockets::default();
    let highest_pin = specs.iter().filter_map(|s| s.pin).max().unwrap_or(0);
    for spec in specs {
        let adopted = activated
            .iter()
            .position(|a| a.matches(spec))
            .map(|i| activated.remove(i));
        let mut bound = match adopted {
            Some(a) => {
                log_line!(
                    "using socket from systemd for {spec} (fd {})",
                    a.fd.as_raw_fd()
                );
                Bound {
                    key: spec.key.clone(),
                    env_key: spec.env_key(),
                    fd: a.fd,
                    unix_file: None,
                    fd_name: a.name,
                    activation_copy: None,
                    pin: spec.pin,
                }
            }
            None => {
                let (fd, unix_file) = bind_one(spec, backlog)?;
                Bound {
                    key: spec.key.clone(),
                    env_key: spec.env_key(),
                    fd,
                    unix_file,
                    fd_name: None,
                    activation_copy: None,
                    pin: spec.pin,
                }
            }
        };
        if let Some(pin) = spec.pin {
            if bound.fd.as_raw_fd() != pin {
                // Whatever of ours holds `pin` moves above every pin target.
                for other in sockets
                    .bound
                    .iter_mut()
                    .map(|b| &mut b.fd)
                    .chain(activated.iter_mut().map(|a| &mut a.fd))
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
    // What no option asked for is passed on too, keyed by its address.
    for a in activated {
        let Some(env_key) = a.key() else {
            log_line!(
                "socket from systemd at fd {} has no address to name it by; not passed on",
                a.fd.as_raw_fd()
            );
            continue;
        };
        let key = env_key.to_string_lossy().into_owned();
        log_line!(
            "using socket from systemd for {key} (fd {})",
            a.fd.as_raw_fd()
        );
        sockets.bound.push(Bound {
            key,
            env_key,
            fd: a.fd,
            unix_file: None,
            fd_name: a.name,
            activation_copy: None,
            pin: None,
        });
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

/// Where a socket handed over by the service manager is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    /// IP; `v6only` for an IPv6 socket with IPV6_V6ONLY.
    Inet {
        addr: SocketAddr,
        v6only: bool,
    },
    Unix(Vec<u8>),
    Abstract(Vec<u8>),
    /// Unnamed, or a family we do not name sockets of.
    Other,
}

/// A socket handed over by the service manager (socket activation).
#[derive(Debug)]
pub struct Activated {
    pub fd: OwnedFd,
    pub udp: bool,
    pub local: Local,
    /// Its `LISTEN_FDNAMES` entry.
    pub name: Option<String>,
}

impl Activated {
    /// Whether `spec` asks for this socket: the same kind, port and
    /// address, a bare port matching the wildcard of either family
    /// (`ListenStream=80` is a dual-stack `[::]:80`); a `--path` the same
    /// path, byte for byte.
    fn matches(&self, spec: &ListenSpec) -> bool {
        if self.udp != spec.udp {
            return false;
        }
        match (&spec.target, &self.local) {
            (Target::Inet { host: None, port }, Local::Inet { addr, .. }) => {
                addr.port() == *port && addr.ip().is_unspecified()
            }
            (
                Target::Inet {
                    host: Some(h),
                    port,
                },
                Local::Inet { addr, .. },
            ) => {
                addr.port() == *port
                    && resolve_v4(h).is_ok_and(|ip| addr.ip() == std::net::IpAddr::V4(ip))
            }
            (Target::Inet6 { addr: want, port }, Local::Inet { addr, .. }) => {
                addr.port() == *port && addr.ip() == std::net::IpAddr::V6(*want)
            }
            (Target::Unix(path), Local::Unix(bytes)) => path.as_os_str().as_bytes() == &bytes[..],
            _ => false,
        }
    }

    /// The `SERVER_STARTER_PORT` key of a socket no option asked for,
    /// written as the option that binds it would be.
    fn key(&self) -> Option<OsString> {
        use std::os::unix::ffi::OsStringExt;
        Some(match &self.local {
            Local::Inet { addr, v6only } => key_of_address(addr, *v6only).into(),
            Local::Unix(path) => OsString::from_vec(path.clone()),
            Local::Abstract(name) => {
                let mut key = b"@".to_vec();
                key.extend_from_slice(name);
                OsString::from_vec(key)
            }
            Local::Other => return self.name.clone().map(OsString::from),
        })
    }
}

/// `80` for a wildcard (0.0.0.0, or a dual-stack `[::]`), else
/// `ADDR:PORT` or `[ADDR]:PORT`.
fn key_of_address(addr: &SocketAddr, v6only: bool) -> String {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => a.port().to_string(),
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) if a.ip().is_unspecified() && !v6only => a.port().to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// The sockets the service manager handed over: fds 3.. when
/// `LISTEN_PID` is our pid (`sd_listen_fds(3)`). Checked before
/// `--daemonize` forks, while the pid is still the one it named. A
/// stream socket that is not listening (`Accept=yes` hands over
/// connections) is an error; anything that is not a socket is made
/// close-on-exec and left out.
pub fn activated_sockets(env: &crate::envdir::Env) -> Result<Vec<Activated>> {
    let ours = env
        .get_str("LISTEN_PID")
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if !ours || !pidfd_id_is_ours(env.get_str("LISTEN_PIDFDID").as_deref()) {
        return Ok(Vec::new());
    }
    let Some(count) = env
        .get_str("LISTEN_FDS")
        .and_then(|n| n.trim().parse::<RawFd>().ok())
        .filter(|&n| n > 0)
    else {
        return Ok(Vec::new());
    };
    let names: Option<Vec<String>> = env
        .get_str("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .filter(|n: &Vec<String>| n.len() == count as usize);
    let mut sockets = Vec::new();
    for i in 0..count {
        let raw = 3 + i;
        let name = names.as_ref().map(|n| n[i as usize].clone());
        let mode = file_mode(raw)
            .with_context(|| format!("fd {raw} from systemd (LISTEN_FDS) is not open"))?;
        // SAFETY: fds 3..3+LISTEN_FDS are ours by the protocol, open (fstat
        // just said so), and nothing else in this process owns them.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if mode & libc::S_IFMT != libc::S_IFSOCK {
            log_line!("fd {raw} from systemd is not a socket; not passed on");
            nix::fcntl::fcntl(
                fd.as_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )?;
            // Not ours to close (an fd-store entry, a FIFO).
            std::mem::forget(fd);
            continue;
        }
        sockets.push(describe(fd, name)?);
    }
    Ok(sockets)
}

/// `LISTEN_PIDFDID`, when given, must be the inode of a pidfd of ours
/// (systemd sets it since 258 so a recycled pid cannot take the sockets).
/// Where pidfds are not available, `LISTEN_PID` alone decides.
fn pidfd_id_is_ours(id: Option<&str>) -> bool {
    let Some(id) = id.and_then(|i| i.trim().parse::<u64>().ok()) else {
        return true;
    };
    // SAFETY: pidfd_open(2) returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    let Ok(raw) = RawFd::try_from(raw) else {
        return true;
    };
    if raw < 0 {
        return true;
    }
    // SAFETY: just opened, owned here.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    nix::sys::stat::fstat(&pidfd).map_or(true, |st| st.st_ino == id)
}

/// fstat(2)'s `st_mode` of a descriptor that may not be open.
fn file_mode(raw: RawFd) -> nix::Result<libc::mode_t> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat(2) fills `st` when it returns 0.
    if unsafe { libc::fstat(raw, st.as_mut_ptr()) } != 0 {
        return Err(Errno::last());
    }
    // SAFETY: initialised by the successful fstat.
    Ok(unsafe { st.assume_init() }.st_mode)
}

/// An inherited socket's kind and address.
fn describe(fd: OwnedFd, name: Option<String>) -> Result<Activated> {
    let raw = fd.as_raw_fd();
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(2) writes one int into `kind`.
    let got = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if got != 0 {
        bail!(
            "fd {raw} from systemd: getsockopt(SO_TYPE) failed: {}",
            Errno::last()
        );
    }
    if kind == libc::SOCK_STREAM && !socket::getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false) {
        bail!(
            "fd {raw} from systemd is a connection, not a listening socket (Accept=yes in the .socket unit?); start_server needs Accept=no"
        );
    }
    let addr: socket::SockaddrStorage = socket::getsockname(raw)
        .with_context(|| format!("fd {raw} from systemd: getsockname failed"))?;
    let local = if let Some(v4) = addr.as_sockaddr_in() {
        Local::Inet {
            addr: SocketAddr::V4(SocketAddrV4::from(*v4)),
            v6only: false,
        }
    } else if let Some(v6) = addr.as_sockaddr_in6() {
        Local::Inet {
            addr: SocketAddr::V6(SocketAddrV6::from(*v6)),
            v6only: socket::getsockopt(&fd, sockopt::Ipv6V6Only).unwrap_or(false),
        }
    } else if let Some(unix) = addr.as_unix_addr() {
        match (unix.path(), unix.as_abstract()) {
            (Some(path), _) => Local::Unix(path.as_os_str().as_bytes().to_vec()),
            (None, Some(name)) => Local::Abstract(name.to_vec()),
            _ => Local::Other,
        }
    } else {
        Local::Other
    };
    Ok(Activated {
        fd,
        udp: kind == libc::SOCK_DGRAM,
        local,
        name,
    })
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

// Handed to a new image of start_server on an upgrade: the same sockets,
// not bound again.
record!(Bound {
    key,
    env_key,
    fd,
    unix_file,
    fd_name,
    pin,
    activation_copy,
});

record!(Sockets { bound });

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
