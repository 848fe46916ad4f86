//! `--daemonize`: fork, setsid, fork; the process the user started exits
//! only once the daemon is up (pid file written), with the daemon's error
//! and a non-zero status if it failed before that.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::unistd::{ForkResult, fork, setsid};

use crate::cli::SystemdNotify;
use crate::systemd;

/// The daemon's end of the pipe the starting process waits on.
pub struct Ready {
    report: OwnedFd,
}

/// Detaches; returns only in the daemon. The processes in between leave
/// through `std::process::exit`, which runs no destructor: the sockets and
/// their files stay the daemon's.
/// Under a service manager that waits for sd_notify (`--systemd-notify`),
/// the process it started tells it the daemon's pid before exiting, and
/// the daemon sends the watchdog keep-alives `WATCHDOG_PID` asked of it.
pub fn daemonize(notify: SystemdNotify) -> Result<Ready> {
    let started_as = std::process::id();
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("failed to create a pipe")?;
    // SAFETY: single-threaded; both branches continue as ordinary processes.
    match unsafe { fork() }.context("fork failed")? {
        ForkResult::Parent { child } => {
            drop(write);
            // Kept open until we exit: the daemon waits for that.
            let mut from_daemon = std::fs::File::from(read);
            let answer = read_answer(&mut from_daemon);
            let _ = nix::sys::wait::waitpid(child, None);
            if let Some(pid) = answer.strip_prefix("ok ").map(str::trim_end) {
                systemd::announce_main_pid(notify, pid);
                std::process::exit(0);
            }
            let (errno, message) = match answer.split_once('\n') {
                Some((errno, message)) => (
                    errno.strip_prefix("errno ").and_then(|n| n.parse().ok()),
                    message,
                ),
                None => (None, "the daemon exited before it was ready"),
            };
            // We are the main pid still: the daemon's word would be
            // rejected under NotifyAccess=main.
            systemd::send_failure(notify, message, errno);
            let _ = writeln!(std::io::stderr(), "start_server: {message}");
            std::process::exit(1);
        }
        ForkResult::Child => {}
    }
    drop(read);
    setsid().context("setsid failed")?;
    // SAFETY: as above.
    match unsafe { fork() }.context("fork failed")? {
        ForkResult::Parent { .. } => std::process::exit(0),
        ForkResult::Child => {
            if notify == SystemdNotify::Auto {
                systemd::take_over_watchdog(started_as);
            }
            Ok(Ready { report: write })
        }
    }
}

/// The daemon's answer: `ok PID` and a newline once it is ready (it then
/// waits for us to close our end), or its error (see
/// [`Ready::report_error`]), ended by EOF.
fn read_answer(from: &mut std::fs::File) -> String {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match from.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        if answer.starts_with(b"ok ") && answer.ends_with(b"\n") {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

impl Ready {
    /// Points stdin at /dev/null, unless a socket was pinned there (`=0`).
    pub fn detach_stdin(&self, socket_on_stdin: bool) -> Result<()> {
        if socket_on_stdin {
            return Ok(());
        }
        let null = std::fs::File::open("/dev/null").context("failed to open /dev/null")?;
        nix::unistd::dup2_stdin(&null).context("failed to reopen stdin")
    }

    pub fn report_ready(self) {
        let ok = format!("ok {}\n", std::process::id());
        let mut report = std::fs::File::from(self.report);
        if report.write_all(ok.as_bytes()).is_err() {
            return;
        }
        // Until the first process exits (it has then told the service
        // manager our pid, see `systemd::announce_main_pid`), so that
        // nothing we send reaches the manager before `MAINPID=`. A pipe's
        // write end polls POLLERR once its reader is gone.
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&report),
            nix::poll::PollFlags::empty(),
        )];
        let _ = nix::poll::poll(&mut fds, 6000u16);
    }

    /// Hands `error` (`errno N` or `errno -`, a newline, the message) to
    /// the first process, which reports it, to the service manager too.
    pub fn report_error(self, error: &anyhow::Error) {
        let errno = systemd::errno_of(error).map_or_else(|| "-".to_string(), |n| n.to_string());
        let answer = format!("errno {errno}\n{error:#}");
        let _ = std::fs::File::from(self.report).write_all(answer.as_bytes());
        REPORTED.store(true, Ordering::Relaxed);
    }
}

/// The setup error went to the first process (`Ready::report_error`).
static REPORTED: AtomicBool = AtomicBool::new(false);

/// Whether the first process reports the setup error: then the daemon
/// does not tell the service manager again.
pub fn error_reported() -> bool {
    REPORTED.load(Ordering::Relaxed)
}
