//! The signal queue and signal names.
//!
//! Invariant: a signal handler only sets an atomic flag and writes one byte
//! to a non-blocking, close-on-exec self-pipe (the s6/skalibs pattern);
//! every decision is taken in the supervisor loop, which sleeps in poll(2)
//! on the pipe's read end. Flags rather than the bytes carry the meaning, so
//! a full pipe during a signal storm loses nothing: HUPs coalesce by design
//! and the first TERM/INT is kept.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::sys::signal::{SigHandler, Signal};
use signal_hook::SigId;

use crate::state::{self, Decode, Encode, Reader, Writer};

static HUP: AtomicBool = AtomicBool::new(false);
static USR1: AtomicBool = AtomicBool::new(false);
static USR2: AtomicBool = AtomicBool::new(false);
/// The first of TERM/INT received, 0 while none.
static SHUTDOWN: AtomicI32 = AtomicI32::new(0);
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// Signals received since the last [`SignalQueue::drain`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub hup: bool,
    /// USR1: reopen the log file (logrotate). Never forwarded to workers.
    pub usr1: bool,
    /// USR2: upgrade start_server itself (`upgrade.rs`). Never forwarded.
    pub usr2: bool,
    pub shutdown: Option<Signal>,
}

impl Pending {
    /// Both sets of signals: what an old image received during an upgrade
    /// and what came since.
    pub fn merge(self, other: Pending) -> Pending {
        Pending {
            hup: self.hup || other.hup,
            usr1: self.usr1 || other.usr1,
            usr2: self.usr2 || other.usr2,
            shutdown: self.shutdown.or(other.shutdown),
        }
    }
}

/// Carried across an upgrade: signals the old image took but did not act
/// on, for the new one to act on in its first turn.
impl Encode for Pending {
    fn encode(&self, w: &mut Writer) {
        let Pending {
            hup,
            usr1,
            usr2,
            shutdown,
        } = self;
        w.put(hup);
        w.put(usr1);
        w.put(usr2);
        w.put(&shutdown.map(|s| s as i32));
    }
}

impl Decode for Pending {
    fn decode(r: &mut Reader<'_>) -> Result<Self, state::Error> {
        Ok(Pending {
            hup: r.get()?,
            usr1: r.get()?,
            usr2: r.get()?,
            shutdown: r
                .get::<Option<i32>>()?
                .map(|n| Signal::try_from(n).map_err(|_| state::Error::new(format!("signal {n}"))))
                .transpose()?,
        })
    }
}

/// Handlers for HUP, USR1, USR2, TERM, INT, ALRM and CHLD feeding a
/// self-pipe.
pub struct SignalQueue {
    read: OwnedFd,
    _write: OwnedFd,
    ids: Vec<SigId>,
}

/// Async-signal-safe wake-up: one byte into the pipe, errno preserved.
fn wake() {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; errno is saved and restored
        // so the interrupted code never sees ours.
        unsafe {
            let errno = *libc::__errno_location();
            libc::write(fd, b"!".as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

impl SignalQueue {
    /// Installs the handlers. SIGPIPE is ignored: a log pipe that went away
    /// must not kill the supervisor.
    pub fn install() -> Result<SignalQueue> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .context("failed to create the signal pipe")?;
        WAKE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        let mut ids = Vec::new();
        let handlers: [(i32, fn()); 7] = [
            (libc::SIGHUP, || HUP.store(true, Ordering::SeqCst)),
            // The reference has no handler: USR1 kills it and orphans its
            // workers. Users send it from logrotate's postrotate anyway.
            (libc::SIGUSR1, || USR1.store(true, Ordering::SeqCst)),
            // The reference dies on USR2 as well: handling it breaks nobody.
            (libc::SIGUSR2, || USR2.store(true, Ordering::SeqCst)),
            // No flag: the loop reaps with waitpid(WNOHANG) after every
            // wake-up, so the byte in the pipe is all SIGCHLD needs to say.
            (libc::SIGCHLD, || {}),
            // The reference queues ALRM and then skips it: it wakes the
            // loop and changes nothing (its default action would kill us).
            (libc::SIGALRM, || {}),
            (libc::SIGTERM, || {
                let _ =
                    SHUTDOWN.compare_exchange(0, libc::SIGTERM, Ordering::SeqCst, Ordering::SeqCst);
            }),
            (libc::SIGINT, || {
                let _ =
                    SHUTDOWN.compare_exchange(0, libc::SIGINT, Ordering::SeqCst, Ordering::SeqCst);
            }),
        ];
        for (signal, flag) in handlers {
            // SAFETY: the action only stores to atomics and calls `wake`,
            // both async-signal-safe.
            let id = unsafe {
                signal_hook::low_level::register(signal, move || {
                    flag();
                    wake();
                })
            }
            .with_context(|| format!("failed to install a handler for signal {signal}"))?;
            ids.push(id);
        }
        // SAFETY: SIG_IGN installs no handler, so nothing can run unsafely.
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }
            .context("failed to ignore SIGPIPE")?;
        Ok(SignalQueue {
            read,
            _write: write,
            ids,
        })
    }

    /// The descriptor that becomes readable when a signal arrived.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Empties the pipe, then takes the flags: draining first means a signal
    /// arriving in between leaves a byte behind and wakes the next poll.
    pub fn drain(&self) -> Pending {
        let mut buf = [0u8; 256];
        while let Ok(n) = nix::unistd::read(self.read.as_fd(), &mut buf) {
            if n == 0 {
                break;
            }
        }
        Pending {
            hup: HUP.swap(false, Ordering::SeqCst),
            usr1: USR1.swap(false, Ordering::SeqCst),
            usr2: USR2.swap(false, Ordering::SeqCst),
            shutdown: Signal::try_from(SHUTDOWN.swap(0, Ordering::SeqCst)).ok(),
        }
    }
}

impl Drop for SignalQueue {
    fn drop(&mut self) {
        WAKE_FD.store(-1, Ordering::SeqCst);
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// A signal given on the command line, kept with the spelling the log lines
/// use (upper case, without `SIG`, as the reference prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalName {
    pub signal: Signal,
    name: String,
}

impl SignalName {
    /// SIGTERM, the default of both `--signal-on-*` options.
    pub fn term() -> SignalName {
        SignalName {
            signal: Signal::SIGTERM,
            name: "TERM".to_string(),
        }
    }

    /// Accepts `TERM`, `term`, `SIGTERM`, `sigterm` or a number.
    pub fn parse(text: &str) -> Result<SignalName, String> {
        let upper = text.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        let signal = if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
            bare.parse::<i32>()
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
                .ok_or_else(|| format!("no signal has number {bare}"))?
        } else {
            let alias = match bare {
                "CLD" => "CHLD",
                "IOT" => "ABRT",
                "POLL" => "IO",
                other => other,
            };
            format!("SIG{alias}")
                .parse::<Signal>()
                .map_err(|_| format!("unknown signal name {text:?}"))?
        };
        Ok(SignalName {
            signal,
            name: bare.to_string(),
        })
    }
}

impl fmt::Display for SignalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        for text in ["usr1", "SIGUSR1", "USR1", "SigUsr1", "10"] {
            let s = SignalName::parse(text).unwrap();
            assert_eq!(s.signal, Signal::SIGUSR1, "{text}");
        }
        assert_eq!(SignalName::parse("sigusr1").unwrap().to_string(), "USR1");
        assert_eq!(SignalName::parse("10").unwrap().to_string(), "10");
        assert_eq!(SignalName::parse("cld").unwrap().signal, Signal::SIGCHLD);
        for bad in ["", "SIG", "BOGUS", "0", "999", "-1", "TERM2"] {
            assert!(SignalName::parse(bad).is_err(), "{bad}");
        }
    }
}
