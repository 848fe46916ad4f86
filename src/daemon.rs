//! `--daemonize`: fork, setsid, fork; the process the user started exits
//! only once the daemon is up (pid file written), with the daemon's error
//! and a non-zero status if it failed before that.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::unistd::{ForkResult, fork, setsid};

/// The daemon's end of the pipe the starting process waits on.
pub struct Ready {
    report: OwnedFd,
}

/// Detaches; returns only in the daemon. The processes in between leave
/// through `std::process::exit`, which runs no destructor: the sockets and
/// their files stay the daemon's.
pub fn daemonize() -> Result<Ready> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).context("failed to create a pipe")?;
    // SAFETY: single-threaded; both branches continue as ordinary processes.
    match unsafe { fork() }.context("fork failed")? {
        ForkResult::Parent { child } => {
            drop(write);
            let mut answer = String::new();
            let _ = std::fs::File::from(read).read_to_string(&mut answer);
            let _ = nix::sys::wait::waitpid(child, None);
            if answer == "ok" {
                std::process::exit(0);
            }
            let message = if answer.is_empty() {
                "the daemon exited before it was ready".to_string()
            } else {
                answer
            };
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
        ForkResult::Child => Ok(Ready { report: write }),
    }
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
        let _ = std::fs::File::from(self.report).write_all(b"ok");
    }

    pub fn report_error(self, error: &anyhow::Error) {
        let _ = std::fs::File::from(self.report).write_all(format!("{error:#}").as_bytes());
    }
}
