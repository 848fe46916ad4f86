//! start_server and the service manager that started it: the sd_notify
//! messages it sends (`sd_notify(3)`), the watchdog keep-alives, and the
//! variables of both protocols that must not reach the workers.
//!
//! What to say and when is decided by the core (`lifecycle.rs` returns a
//! [`Notice`] with `READY=1` once the first generation is current,
//! `RELOADING=1` when a HUP restart begins and `READY=1` again once its
//! generation is current, `STOPPING=1` on TERM/INT, and `STATUS=` lines in
//! between). This module only turns notices into datagrams.
//!
//! Invariant: sending never blocks and never fails the supervisor. One
//! unconnected `SOCK_DGRAM|SOCK_CLOEXEC|SOCK_NONBLOCK` socket, `sendto` the
//! address each time (systemd may be re-executed and bind its socket
//! again); a state message that meets a full queue (`EAGAIN`) is kept and
//! sent again at the next wake-up; any other error is logged once.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr, sendto, socket};

use crate::cli::SystemdNotify;
use crate::envdir::Env;
use crate::lifecycle::Time;
use crate::log::LogWriter;

/// The service manager's variables, which would make a worker talk to
/// systemd as if it were the main process (with `NotifyAccess=all`, an old
/// worker's `STOPPING=1` during a restart would stop the whole service).
/// systemd itself keeps `NOTIFY_SOCKET` from what it forks.
pub const NOTIFY_VARIABLES: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Socket activation's variables: never stale in a worker's environment.
pub const LISTEN_VARIABLES: [&str; 4] = [
    "LISTEN_PID",
    "LISTEN_PIDFDID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
];

/// How soon a state message that met a full queue is sent again.
const RETRY: Duration = Duration::from_millis(50);

/// The state a notice moves the service to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `READY=1`: started, or done reloading.
    Ready,
    /// `RELOADING=1` with `MONOTONIC_USEC`: a HUP restart began.
    Reloading,
    /// `STOPPING=1`.
    Stopping,
}

/// What the core tells the service manager (pure data): a state change, if
/// any, and the line `systemctl status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub state: Option<State>,
    pub status: String,
}

impl Notice {
    /// The datagram; `monotonic_usec` is read only for `RELOADING=1`
    /// (systemd ignores one older than its own reload request).
    pub fn datagram(&self, monotonic_usec: impl FnOnce() -> u64) -> String {
        let state = match self.state {
            Some(State::Ready) => "READY=1\n".to_string(),
            Some(State::Reloading) => {
                format!("RELOADING=1\nMONOTONIC_USEC={}\n", monotonic_usec())
            }
            Some(State::Stopping) => "STOPPING=1\n".to_string(),
            None => String::new(),
        };
        // A newline would end the assignment early.
        let status = self.status.replace('\n', " ");
        format!("{state}STATUS={status}\n")
    }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares with.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes into the local timespec only.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

/// The watchdog keep-alive timer: `WATCHDOG=1` every half period, from the
/// loop's deadlines, so that it proves the loop is alive (pure: times are
/// the core's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watchdog {
    every: Duration,
    next: Time,
}

impl Watchdog {
    /// From `WATCHDOG_USEC` and `WATCHDOG_PID`: only when the period is a
    /// positive number and the pid, if given, is `pid`.
    pub fn from_vars(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<Self> {
        let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
        if let Some(p) = watchdog_pid {
            if p.trim().parse::<u32>().ok()? != pid {
                return None;
            }
        }
        Some(Watchdog {
            every: Duration::from_micros(usec / 2).max(Duration::from_millis(1)),
            next: Time::ZERO,
        })
    }

    pub fn deadline(&self) -> Time {
        self.next
    }

    /// Whether a keep-alive is due at `now`; if so, the next one is
    /// scheduled half a period later.
    pub fn due(&mut self, now: Time) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }
}

/// The service manager's notify socket, when start_server speaks to one.
pub struct ServiceManager {
    socket: OwnedFd,
    addr: UnixAddr,
    watchdog: Option<Watchdog>,
    /// A state message that met a full queue, and when to try again.
    pending: Option<(String, Time)>,
    /// A send failed for another reason: logged once, then quiet.
    failed: bool,
}

/// The address in `NOTIFY_SOCKET`: a path, or `@name` for an abstract
/// socket (older systemd used `@/org/freedesktop/systemd1/notify`).
fn notify_address(value: &OsStr) -> Result<UnixAddr, String> {
    let bytes = value.as_bytes();
    let addr = match bytes.split_first() {
        Some((b'@', name)) => UnixAddr::new_abstract(name),
        Some((b'/', _)) => UnixAddr::new(value),
        _ => {
            return Err(format!(
                "NOTIFY_SOCKET {value:?} is neither a path nor an @abstract name; not notifying"
            ));
        }
    };
    addr.map_err(|e| format!("NOTIFY_SOCKET {value:?}: {e}; not notifying"))
}

impl ServiceManager {
    /// With `--systemd-notify=auto` and `NOTIFY_SOCKET` in our own
    /// environment; `Err` is a line to log (start_server goes on without).
    pub fn from_env(mode: SystemdNotify, env: &Env) -> Result<Option<Self>, String> {
        if mode != SystemdNotify::Auto {
            return Ok(None);
        }
        let Some(value) = env.get("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        let addr = notify_address(value)?;
        let socket = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| format!("failed to create a socket for NOTIFY_SOCKET: {e}"))?;
        let watchdog = Watchdog::from_vars(
            env.get_str("WATCHDOG_USEC").as_deref(),
            env.get_str("WATCHDOG_PID").as_deref(),
            std::process::id(),
        );
        Ok(Some(ServiceManager {
            socket,
            addr,
            watchdog,
            pending: None,
            failed: false,
        }))
    }

    /// Whether the service manager is there: a first `STATUS=` line that
    /// must not fail (a queue that is full only delays it). A
    /// `NOTIFY_SOCKET` that names nothing is no service manager's, and
    /// `auto` then leaves it to the workers as the reference does.
    pub fn probe(&mut self) -> Result<(), String> {
        match sendto(
            self.socket.as_raw_fd(),
            b"STATUS=starting\n",
            &self.addr,
            MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(format!(
                "NOTIFY_SOCKET names no service manager ({e}); not notifying, passing it on to the workers"
            )),
        }
    }

    /// Sends what the core decided.
    pub fn notify(&mut self, notice: &Notice, now: Time, log: &mut LogWriter) {
        let datagram = notice.datagram(monotonic_usec);
        self.send(datagram, notice.state.is_some(), now, log);
    }

    /// Sends `text` now if it can; a state message that meets a full
    /// queue replaces any older pending one (the last state wins).
    pub fn send(&mut self, text: String, keep: bool, now: Time, log: &mut LogWriter) {
        match sendto(
            self.socket.as_raw_fd(),
            text.as_bytes(),
            &self.addr,
            MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(_) => {
                if keep {
                    self.pending = None;
                }
            }
            Err(Errno::EAGAIN) if keep => self.pending = Some((text, now + RETRY)),
            Err(Errno::EAGAIN) => {}
            Err(e) => {
                if !self.failed {
                    self.failed = true;
                    log.line(&format!(
                        "failed to notify the service manager (NOTIFY_SOCKET): {e}"
                    ));
                }
            }
        }
    }

    /// When [`ServiceManager::on_wake`] has something to do next.
    pub fn next_deadline(&self) -> Option<Time> {
        let watchdog = self.watchdog.as_ref().map(Watchdog::deadline);
        let retry = self.pending.as_ref().map(|(_, at)| *at);
        match (watchdog, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A keep-alive when one is due, and a pending state message again.
    pub fn on_wake(&mut self, now: Time, log: &mut LogWriter) {
        if let Some((text, at)) = self.pending.take() {
            if at <= now {
                self.send(text, true, now, log);
            } else {
                self.pending = Some((text, at));
            }
        }
        if self.watchdog.as_mut().is_some_and(|w| w.due(now)) {
            self.send("WATCHDOG=1\n".to_string(), false, now, log);
        }
    }
}

/// A fatal start-up error, for `systemctl status` (`sd_notify(3)`'s
/// "error cause" example): `STATUS=` the error line, `ERRNO=` its errno.
pub fn report_failure(mode: SystemdNotify, error: &anyhow::Error) {
    send_failure(mode, &format!("{error:#}"), errno_of(error));
}

/// The errno at the root of `error`, if one is.
pub fn errno_of(error: &anyhow::Error) -> Option<i32> {
    error.chain().find_map(|cause| {
        cause
            .downcast_ref::<Errno>()
            .map(|e| *e as i32)
            .or_else(|| cause.downcast_ref::<std::io::Error>()?.raw_os_error())
    })
}

/// `STATUS=failed to start: MESSAGE` and `ERRNO=`, to our `NOTIFY_SOCKET`.
pub fn send_failure(mode: SystemdNotify, message: &str, errno: Option<i32>) {
    let Ok(Some(manager)) = ServiceManager::from_env(mode, &Env::inherited()) else {
        return;
    };
    let mut text = format!("STATUS=failed to start: {}\n", message.replace('\n', " "));
    if let Some(errno) = errno {
        text.push_str(&format!("ERRNO={errno}\n"));
    }
    let _ = sendto(
        manager.socket.as_raw_fd(),
        text.as_bytes(),
        &manager.addr,
        MsgFlags::MSG_NOSIGNAL,
    );
}

/// `--daemonize`: systemd's `WATCHDOG_PID` names the process it started,
/// which exits once the daemon is up (and has told it `MAINPID=`). The
/// daemon takes the watchdog over: `WATCHDOG_PID` becomes its own pid,
/// for every later look at it (an upgrade's new image too).
pub fn take_over_watchdog(started_as: u32) {
    let named = std::env::var("WATCHDOG_PID").ok();
    if named.and_then(|p| p.trim().parse::<u32>().ok()) == Some(started_as) {
        // SAFETY: right after the fork, before any thread is started.
        unsafe { std::env::set_var("WATCHDOG_PID", std::process::id().to_string()) };
    }
}

/// How long `--daemonize`'s first process waits for the service manager to
/// take in `MAINPID=` (`sd_notify_barrier(3)`'s default).
const BARRIER_TIMEOUT_MS: u16 = 5000;

/// `--daemonize` under `Type=notify`: the process the service manager
/// started says which pid is the main one now, and waits until the manager
/// has read it (`BARRIER=1` with one end of a pipe: the manager closes it
/// after processing every earlier message), so that the daemon is the main
/// pid before this process exits. Everything else the daemon sends.
pub fn announce_main_pid(mode: SystemdNotify, pid: &str) {
    let Ok(Some(manager)) = ServiceManager::from_env(mode, &Env::inherited()) else {
        return;
    };
    let fd = manager.socket.as_raw_fd();
    let main = format!("MAINPID={pid}\n");
    if sendto(fd, main.as_bytes(), &manager.addr, MsgFlags::MSG_NOSIGNAL).is_err() {
        return;
    }
    let Ok((wait, give)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return;
    };
    let iov = [std::io::IoSlice::new(b"BARRIER=1\n")];
    let fds = [give.as_raw_fd()];
    let sent = nix::sys::socket::sendmsg(
        fd,
        &iov,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        Some(&manager.addr),
    );
    drop(give);
    if sent.is_ok() {
        let mut poll_fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&wait),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut poll_fds, BARRIER_TIMEOUT_MS);
    }
}

/// Makes the descriptors `LISTEN_FDS` hands to us (`LISTEN_PID` ours)
/// close-on-exec until they are adopted, so that nothing started before
/// (the `--log-file` command) inherits them. The first that is not open
/// ends the list here: adoption reports it.
pub fn seal_listen_fds(env: &Env) {
    let ours = env
        .get_str("LISTEN_PID")
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let count = env
        .get_str("LISTEN_FDS")
        .and_then(|n| n.trim().parse::<i32>().ok())
        .filter(|_| ours)
        .unwrap_or(0);
    for fd in 3..3_i32.saturating_add(count) {
        if crate::state::cloexec(fd).is_none() {
            return;
        }
        crate::state::set_cloexec(fd, true);
    }
}

/// The workers' environment: without socket activation's variables (they
/// were for start_server, or for nobody), and without the service
/// manager's unless `--systemd-notify=pass` (which `auto` becomes when
/// start_server cannot speak to the one named).
pub fn worker_env(env: &Env, mode: SystemdNotify) -> Env {
    let mut kept = Env::default();
    for (name, value) in env.iter() {
        let strip = LISTEN_VARIABLES.iter().any(|v| name == v)
            || (mode != SystemdNotify::Pass && NOTIFY_VARIABLES.iter().any(|v| name == v));
        if !strip {
            kept.set(name.clone(), value.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams() {
        let ready = Notice {
            state: Some(State::Ready),
            status: "generation 1 (pid 7) running".to_string(),
        };
        assert_eq!(
            ready.datagram(|| panic!("no clock for READY")),
            "READY=1\nSTATUS=generation 1 (pid 7) running\n"
        );
        let reloading = Notice {
            state: Some(State::Reloading),
            status: "restarting".to_string(),
        };
        assert_eq!(
            reloading.datagram(|| 42),
            "RELOADING=1\nMONOTONIC_USEC=42\nSTATUS=restarting\n"
        );
        let status = Notice {
            state: None,
            status: "a\nb".to_string(),
        };
        assert_eq!(status.datagram(|| 0), "STATUS=a b\n");
    }

    #[test]
    fn watchdog_only_for_us_and_every_half_period() {
        assert_eq!(Watchdog::from_vars(None, None, 5), None);
        assert_eq!(Watchdog::from_vars(Some("0"), None, 5), None);
        assert_eq!(Watchdog::from_vars(Some("x"), None, 5), None);
        assert_eq!(Watchdog::from_vars(Some("1000000"), Some("6"), 5), None);
        let mut w = Watchdog::from_vars(Some("1000000"), Some("5"), 5).expect("ours");
        assert!(w.due(Time::ZERO));
        assert_eq!(w.deadline(), Duration::from_millis(500));
        assert!(!w.due(Duration::from_millis(499)));
        assert!(w.due(Duration::from_millis(501)));
        assert_eq!(w.deadline(), Duration::from_millis(1001));
    }

    #[test]
    fn addresses() {
        assert!(notify_address(OsStr::new("/run/systemd/notify")).is_ok());
        let abs = notify_address(OsStr::new("@name")).expect("abstract");
        assert_eq!(abs.as_abstract(), Some(&b"name"[..]));
        assert!(notify_address(OsStr::new("vsock:2:1")).is_err());
        assert!(notify_address(OsStr::new("")).is_err());
    }

    #[test]
    fn workers_never_see_listen_variables_and_see_notify_ones_only_with_pass() {
        let mut env = Env::default();
        for name in [
            "PATH",
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "LISTEN_FDS",
            "LISTEN_PID",
        ] {
            env.set(name, "1");
        }
        let names = |e: &Env| {
            e.iter()
                .map(|(k, _)| k.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&worker_env(&env, SystemdNotify::Auto)), ["PATH"]);
        assert_eq!(names(&worker_env(&env, SystemdNotify::Off)), ["PATH"]);
        assert_eq!(
            names(&worker_env(&env, SystemdNotify::Pass)),
            ["PATH", "NOTIFY_SOCKET", "WATCHDOG_USEC"]
        );
    }
}
