//! The restart progress channel: how a supervisor tells `--restart`
//! clients of each start attempt, each failed start check and each
//! generation that became current, so that the client can tell the truth.
//!
//! A Linux abstract unix socket (unix(7)), `SOCK_SEQPACKET`, named
//! `start_server/PID` after the supervisor's pid: nothing in the
//! filesystem to clean up, gone with the process however it ends. One
//! message is one line: `attempt GEN PID`, `failed GEN PID STATUS`,
//! `current GEN PID`; and for `--upgrade`, `upgraded FROM TO` (versions)
//! or `upgrade-failed REASON`. The channel survives an upgrade: its
//! descriptors are handed to the new image, so a client connected before
//! hears how the upgrade ended from the new image. Only a peer of the same user or root is kept
//! (`SO_PEERCRED`); a client checks the listener's pid the same way, so a
//! name squatted by another process is never trusted.
//!
//! Invariant: the supervisor never blocks on the channel. Every socket is
//! non-blocking and close-on-exec; a client whose buffer is full, or that
//! went away, is dropped.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::state::record;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, UnixAddr, accept4, bind, connect,
    getsockopt, listen, recv, send, socket, sockopt,
};

/// More clients than this at once are turned away (closed at accept): a
/// bound on what the supervisor keeps for them.
const MAX_CLIENTS: usize = 64;

/// One event of a start, as the core reports it (pure data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Generation `generation` was spawned as `pid` and is in its start
    /// check.
    Attempt { generation: u64, pid: i32 },
    /// It exited before the end of its start check, with this wait status.
    Failed {
        generation: u64,
        pid: i32,
        status: i32,
    },
    /// It passed its start check: it is the current generation.
    Current { generation: u64, pid: i32 },
}

impl Progress {
    pub fn generation(&self) -> u64 {
        match *self {
            Progress::Attempt { generation, .. }
            | Progress::Failed { generation, .. }
            | Progress::Current { generation, .. } => generation,
        }
    }

    /// Parses one message; `None` for anything else (a later version may
    /// add kinds of lines, which older clients then skip).
    pub fn parse(line: &str) -> Option<Progress> {
        let mut words = line.trim_end_matches('\n').split(' ');
        let kind = words.next()?;
        let generation = words.next()?.parse().ok()?;
        let pid = words.next()?.parse().ok()?;
        let progress = match kind {
            "attempt" => Progress::Attempt { generation, pid },
            "failed" => Progress::Failed {
                generation,
                pid,
                status: words.next()?.parse().ok()?,
            },
            "current" => Progress::Current { generation, pid },
            _ => return None,
        };
        words.next().is_none().then_some(progress)
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Progress::Attempt { generation, pid } => write!(f, "attempt {generation} {pid}"),
            Progress::Failed {
                generation,
                pid,
                status,
            } => write!(f, "failed {generation} {pid} {status}"),
            Progress::Current { generation, pid } => write!(f, "current {generation} {pid}"),
        }
    }
}

/// How an upgrade of start_server itself ended, as `--upgrade` hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// The new image runs, having read the state: from version, to version.
    Done { from: String, to: String },
    /// The running image carries on as it was, for this reason.
    Failed(String),
}

impl Upgrade {
    fn parse(line: &str) -> Option<Upgrade> {
        let line = line.trim_end_matches('\n');
        if let Some(reason) = line.strip_prefix("upgrade-failed ") {
            return Some(Upgrade::Failed(reason.to_string()));
        }
        let mut words = line.strip_prefix("upgraded ")?.split(' ');
        let (from, to) = (words.next()?, words.next()?);
        words.next().is_none().then(|| Upgrade::Done {
            from: from.to_string(),
            to: to.to_string(),
        })
    }
}

impl fmt::Display for Upgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upgrade::Done { from, to } => write!(f, "upgraded {from} {to}"),
            // One line, and short enough for one message.
            Upgrade::Failed(reason) => {
                let reason: String = reason.replace('\n', " ").chars().take(1000).collect();
                write!(f, "upgrade-failed {reason}")
            }
        }
    }
}

/// The largest message a client reads.
const MESSAGE_MAX: usize = 4096;

fn address(pid: i32) -> nix::Result<UnixAddr> {
    UnixAddr::new_abstract(format!("start_server/{pid}").as_bytes())
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
}

/// The supervisor's end: the listening socket and the clients it keeps.
pub struct Channel {
    listener: OwnedFd,
    clients: Vec<OwnedFd>,
}

impl Channel {
    /// Listens on `start_server/PID` for our own pid.
    pub fn bind() -> nix::Result<Channel> {
        let listener = seqpacket()?;
        bind(listener.as_raw_fd(), &address(std::process::id() as i32)?)?;
        listen(&listener, Backlog::new(16)?)?;
        Ok(Channel {
            listener,
            clients: Vec::new(),
        })
    }

    /// What poll(2) waits on for new clients.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// Takes every pending connection, keeping those of our user or root.
    pub fn accept_clients(&mut self) {
        // SAFETY: geteuid(2) cannot fail and touches no memory of ours.
        let uid = unsafe { libc::geteuid() };
        loop {
            let client = match accept4(&self.listener, SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => fd,
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(_) => return,
            };
            let allowed = getsockopt(&client, sockopt::PeerCredentials)
                .is_ok_and(|peer| peer.uid() == uid || peer.uid() == 0);
            if allowed && self.clients.len() < MAX_CLIENTS {
                self.clients.push(client);
            }
        }
    }

    /// Sends `progress` to every client, dropping those it cannot reach
    /// at once.
    pub fn send(&mut self, progress: &Progress) {
        self.send_line(&format!("{progress}\n"));
    }

    /// Tells every client how an upgrade ended.
    pub fn send_upgrade(&mut self, upgrade: &Upgrade) {
        self.send_line(&format!("{upgrade}\n"));
    }

    fn send_line(&mut self, line: &str) {
        self.clients.retain(|client| {
            send(
                client.as_raw_fd(),
                line.as_bytes(),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            )
            .is_ok()
        });
    }
}

/// A client's end, connected to a supervisor.
pub struct Subscription {
    fd: OwnedFd,
}

/// What [`Subscription::next`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Progress(Progress),
    Upgrade(Upgrade),
    /// Nothing within the timeout.
    Quiet,
    /// The supervisor is gone.
    Closed,
}

/// Connects to the channel of supervisor `pid`, if it has one (a Perl
/// start_server has not) and it is that process that listens on it.
pub fn subscribe(pid: i32) -> Option<Subscription> {
    let fd = seqpacket().ok()?;
    match connect(fd.as_raw_fd(), &address(pid).ok()?) {
        Ok(()) => {}
        // A full backlog on a non-blocking socket; the fallback will do.
        Err(_) => return None,
    }
    let peer = getsockopt(&fd, sockopt::PeerCredentials).ok()?;
    (peer.pid() == pid).then_some(Subscription { fd })
}

impl Subscription {
    /// The next message, waiting at most `timeout` for it.
    pub fn next(&self, timeout: Duration) -> Next {
        let mut buf = [0u8; MESSAGE_MAX];
        loop {
            match recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Next::Closed,
                Ok(n) => {
                    let Ok(line) = std::str::from_utf8(&buf[..n]) else {
                        continue;
                    };
                    if let Some(progress) = Progress::parse(line) {
                        return Next::Progress(progress);
                    }
                    if let Some(upgrade) = Upgrade::parse(line) {
                        return Next::Upgrade(upgrade);
                    }
                    continue;
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {}
                Err(_) => return Next::Closed,
            }
            let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => return Next::Quiet,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return Next::Closed,
            }
        }
    }
}

// Handed to a new image on an upgrade: the listener keeps its name, and
// connected clients hear how the upgrade ended from the new image.
record!(Channel { listener, clients });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let all = [
            Progress::Attempt {
                generation: 2,
                pid: 4321,
            },
            Progress::Failed {
                generation: 3,
                pid: 77,
                status: 256,
            },
            Progress::Current {
                generation: 18446744073709551615,
                pid: 1,
            },
        ];
        for progress in all {
            let line = format!("{progress}\n");
            assert_eq!(Progress::parse(&line), Some(progress), "{line:?}");
        }
        assert_eq!(
            Progress::Failed {
                generation: 3,
                pid: 77,
                status: 256
            }
            .to_string(),
            "failed 3 77 256"
        );
    }

    #[test]
    fn upgrade_lines_round_trip() {
        for upgrade in [
            Upgrade::Done {
                from: "0.1.0".to_string(),
                to: "0.2.0".to_string(),
            },
            Upgrade::Failed("/usr/bin/start_server did not answer within 2 s".to_string()),
        ] {
            let line = format!("{upgrade}\n");
            assert_eq!(Upgrade::parse(&line), Some(upgrade), "{line:?}");
        }
        assert_eq!(
            Upgrade::Failed("a\nb".to_string()).to_string(),
            "upgrade-failed a b"
        );
        for line in [
            "upgraded 1",
            "upgraded 1 2 3",
            "upgrade 1 2",
            "current 2 10",
        ] {
            assert_eq!(Upgrade::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn anything_else_is_skipped() {
        for line in [
            "",
            "\n",
            "attempt",
            "attempt 2",
            "attempt 2 x",
            "attempt -2 10",
            "failed 3 77",
            "current 2 10 extra",
            "current  2 10",
            "ready 2 10",
            "CURRENT 2 10",
        ] {
            assert_eq!(Progress::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_subscriber_gets_the_lines_and_sees_the_supervisor_go() {
        let mut channel = Channel::bind().expect("bind");
        let sub = subscribe(std::process::id() as i32).expect("subscribe");
        channel.accept_clients();
        assert_eq!(sub.next(Duration::from_millis(10)), Next::Quiet);
        let current = Progress::Current {
            generation: 2,
            pid: 10,
        };
        channel.send(&current);
        assert_eq!(sub.next(Duration::from_secs(5)), Next::Progress(current));
        drop(channel);
        assert_eq!(sub.next(Duration::from_secs(5)), Next::Closed);
        assert!(subscribe(std::process::id() as i32).is_none());
    }
}
