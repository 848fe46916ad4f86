//! `--notify-ready`: the generations' notify sockets (systemd's protocol,
//! `sd_notify(3)`), so that servers that already speak it work unchanged.
//!
//! [`Notifier`] owns a private directory, made once at start-up, and in it
//! one datagram socket per live generation, `gen-N.sock`, named to that
//! generation's worker in `NOTIFY_SOCKET`. A socket is created before its
//! generation's fork, read for the generation's whole life (servers keep
//! sending `READY=1` and `STATUS=`; a socket nobody reads makes their
//! blocking `sendmsg` stall after ten datagrams), and closed and removed
//! once its worker is reaped. Dropping the `Notifier` removes everything:
//! nothing is left behind, whether setup fails or start_server exits.
//!
//! Invariant: a datagram counts only when it carries credentials
//! (`SO_PASSCRED`) of our uid or root, fits the buffer, and has no
//! embedded NUL; every file descriptor passed with one is closed at once
//! (`systemd-notify --ready` waits for its `BARRIER=1` fd to be closed).
//!
//! Why a path, not an abstract `@name`: many sd_notify clients (the Rust
//! `sd-notify` crate, older Java and Rust libraries) only handle paths,
//! because systemd itself uses `/run/systemd/notify`. Why mode 0700: only
//! our uid (and root) may reach the sockets, the same rule the credentials
//! check applies to every datagram.

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use crate::state::{self, Decode, Encode, Reader, Writer};
use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, UnixCredentials,
    bind, recvmsg, setsockopt, socket, sockopt,
};
use nix::unistd::{Uid, mkdtemp};

/// The largest datagram read, as systemd (`NOTIFY_BUFFER_MAX`, `PIPE_BUF`):
/// a longer one is ignored.
const BUFFER: usize = 4096;

/// The file descriptors one datagram may pass (systemd's limit); all are
/// closed.
const MAX_FDS: usize = 768;

/// Datagrams read from one socket per wake-up, so that a flooding worker
/// cannot starve the loop; the rest wait for the next turn.
const DRAIN_LIMIT: usize = 64;

/// `sun_path` holds 108 bytes with its NUL.
const SUN_PATH_MAX: usize = 107;

/// What a generation said that the core acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ready,
    ExtendTimeout(Duration),
}

/// One generation's socket.
struct Channel {
    fd: OwnedFd,
    path: PathBuf,
    /// Its worker, once forked.
    pid: Option<i32>,
}

/// The private directory and the live generations' sockets.
pub struct Notifier {
    dir: PathBuf,
    channels: BTreeMap<u64, Channel>,
    uid: u32,
}

impl Notifier {
    /// Makes the private directory, under the first usable of
    /// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`),
    /// `$XDG_RUNTIME_DIR`, `$TMPDIR` and `/tmp` whose socket paths fit
    /// `sun_path`.
    pub fn new() -> Result<Notifier> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        for var in ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR", "TMPDIR"] {
            if let Some(value) = std::env::var_os(var) {
                // RuntimeDirectory= may list several, separated by colons.
                let first = value.to_string_lossy().split(':').next().map(PathBuf::from);
                candidates.extend(first.filter(|p| p.is_absolute()));
            }
        }
        candidates.push(PathBuf::from("/tmp"));
        let mut last_error = None;
        for base in candidates {
            let template = base.join(format!("start_server.{}.XXXXXX", std::process::id()));
            // The longest socket name: gen-<u64>.sock.
            let longest = template.as_os_str().len() + "/gen-18446744073709551615.sock".len();
            if longest > SUN_PATH_MAX {
                continue;
            }
            match mkdtemp(&template) {
                Ok(dir) => {
                    return Ok(Notifier {
                        dir,
                        channels: BTreeMap::new(),
                        uid: Uid::current().as_raw(),
                    });
                }
                Err(e) => last_error = Some((template, e)),
            }
        }
        match last_error {
            Some((template, e)) => Err(e).with_context(|| {
                format!(
                    "failed to create the --notify-ready directory {}",
                    template.display()
                )
            }),
            None => bail!("--notify-ready: no directory short enough for a socket path"),
        }
    }

    /// Creates `generation`'s socket; returns its path for `NOTIFY_SOCKET`.
    pub fn open(&mut self, generation: u64) -> Result<PathBuf> {
        let path = self.dir.join(format!("gen-{generation}.sock"));
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .context("failed to create a notify socket")?;
        setsockopt(&fd, sockopt::PassCred, &true).context("failed to set SO_PASSCRED")?;
        let _ = std::fs::remove_file(&path);
        let addr = UnixAddr::new(&path)
            .with_context(|| format!("invalid notify socket path {}", path.display()))?;
        bind(fd.as_raw_fd(), &addr)
            .with_context(|| format!("failed to bind notify socket {}", path.display()))?;
        self.channels.insert(
            generation,
            Channel {
                fd,
                path: path.clone(),
                pid: None,
            },
        );
        Ok(path)
    }

    /// `generation`'s worker was forked as `pid`.
    pub fn attach(&mut self, generation: u64, pid: i32) {
        if let Some(channel) = self.channels.get_mut(&generation) {
            channel.pid = Some(pid);
        }
    }

    /// Closes and removes `generation`'s socket (its fork failed).
    pub fn close(&mut self, generation: u64) {
        if let Some(channel) = self.channels.remove(&generation) {
            let _ = std::fs::remove_file(&channel.path);
        }
    }

    /// The worker `pid` was reaped: its generation is gone.
    pub fn close_worker(&mut self, pid: i32) {
        let gone: Vec<u64> = self
            .channels
            .iter()
            .filter(|(_, c)| c.pid == Some(pid))
            .map(|(g, _)| *g)
            .collect();
        for generation in gone {
            self.close(generation);
        }
    }

    /// The sockets to poll for reading.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.channels.values().map(|c| c.fd.as_fd())
    }

    /// Reads what is waiting on every socket (up to [`DRAIN_LIMIT`]
    /// datagrams each): the messages that count, with their generation.
    pub fn drain(&mut self) -> Vec<(u64, Message)> {
        let mut out = Vec::new();
        for (generation, channel) in &self.channels {
            for _ in 0..DRAIN_LIMIT {
                match receive(channel.fd.as_raw_fd(), self.uid) {
                    Ok(Some(payload)) => {
                        out.extend(parse(&payload).into_iter().map(|m| (*generation, m)));
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
        out
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        for (_, channel) in std::mem::take(&mut self.channels) {
            let _ = std::fs::remove_file(&channel.path);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Reads one datagram. `Ok(None)`: read, but it does not count (no or
/// foreign credentials, too long, an embedded NUL). `Err`: nothing more to
/// read now (`EAGAIN`) or the socket failed.
fn receive(fd: RawFd, uid: u32) -> nix::Result<Option<Vec<u8>>> {
    let mut buffer = vec![0u8; BUFFER];
    let mut control = nix::cmsg_space!(UnixCredentials, [RawFd; MAX_FDS]);
    let (bytes, flags, credentials) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let msg = loop {
            match recvmsg::<()>(
                fd,
                &mut iov,
                Some(&mut control),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => continue,
                other => break other?,
            }
        };
        let mut credentials = None;
        // With MSG_CTRUNC nix cannot walk the control data; the kernel
        // closed the fds that did not fit, and the buffer holds systemd's
        // maximum, so that only a sender passing more loses its barrier.
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                match cmsg {
                    ControlMessageOwned::ScmCredentials(c) => credentials = Some(c.uid()),
                    ControlMessageOwned::ScmRights(fds) => {
                        for fd in fds {
                            // SAFETY: the kernel just installed this fd in
                            // our table for us; nothing else owns it.
                            drop(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                    _ => {}
                }
            }
        }
        (msg.bytes, msg.flags, credentials)
    };
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Ok(None);
    }
    if credentials.is_none_or(|c| c != uid && c != 0) {
        return Ok(None);
    }
    let mut payload = buffer;
    payload.truncate(bytes);
    if payload.last() == Some(&0) {
        payload.pop();
    }
    if payload.contains(&0) {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// The lines of a notification that the core acts on: exactly `READY=1`,
/// and `EXTEND_TIMEOUT_USEC=N`. Other keys are ignored, as systemd does.
pub fn parse(payload: &[u8]) -> Vec<Message> {
    let text = String::from_utf8_lossy(payload);
    text.split('\n')
        .filter_map(|line| {
            if line == "READY=1" {
                return Some(Message::Ready);
            }
            let usec: u64 = line.strip_prefix("EXTEND_TIMEOUT_USEC=")?.parse().ok()?;
            Some(Message::ExtendTimeout(Duration::from_micros(usec)))
        })
        .collect()
}

/// The directory, for tests.
#[cfg(test)]
impl Notifier {
    fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// Handed to a new image on an upgrade: the directory and every
/// generation's socket, still bound, with what was not read yet.
impl Encode for Notifier {
    fn encode(&self, w: &mut Writer) {
        let Notifier { dir, channels, uid } = self;
        w.put(dir);
        w.put(uid);
        let list: Vec<_> = channels
            .iter()
            .map(|(generation, Channel { fd, path, pid })| (generation, fd, path, pid))
            .collect();
        w.put(&list);
    }
}

impl Decode for Notifier {
    fn decode(r: &mut Reader<'_>) -> Result<Self, state::Error> {
        let dir = r.get()?;
        let uid = r.get()?;
        let mut channels = BTreeMap::new();
        for (generation, fd, path, pid) in r.get::<Vec<(u64, OwnedFd, PathBuf, Option<i32>)>>()? {
            channels.insert(generation, Channel { fd, path, pid });
        }
        Ok(Notifier { dir, channels, uid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn parses_exact_lines_only() {
        assert_eq!(parse(b"READY=1"), [Message::Ready]);
        assert_eq!(
            parse(b"STATUS=up\nREADY=1\nEXTEND_TIMEOUT_USEC=1500000"),
            [
                Message::Ready,
                Message::ExtendTimeout(Duration::from_millis(1500))
            ]
        );
        assert!(parse(b"READY=1 ").is_empty());
        assert!(parse(b"READY=0\nEXTEND_TIMEOUT_USEC=x").is_empty());
    }

    #[test]
    fn receives_ours_closes_passed_fds_and_removes_everything() {
        let mut notifier = Notifier::new().unwrap();
        let dir = notifier.dir().to_path_buf();
        let path = notifier.open(3).unwrap();
        notifier.attach(3, 4242);
        let sender = UnixDatagram::unbound().unwrap();
        sender.send_to(b"READY=1\n", &path).unwrap();
        sender.send_to(b"READY=1\0junk", &path).unwrap();
        sender.send_to(&vec![b'x'; BUFFER + 1], &path).unwrap();
        sender.send_to(b"EXTEND_TIMEOUT_USEC=10\0", &path).unwrap();
        assert_eq!(
            notifier.drain(),
            [
                (3, Message::Ready),
                (3, Message::ExtendTimeout(Duration::from_micros(10)))
            ]
        );
        assert!(notifier.drain().is_empty());
        notifier.close_worker(4242);
        assert!(!path.exists());
        notifier.open(4).unwrap();
        drop(notifier);
        assert!(!dir.exists());
    }
}
