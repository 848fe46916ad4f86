//! Orphans: `--subreaper` (`PR_SET_CHILD_SUBREAPER`, `prctl(2)`), and PID 1
//! of a container, which is every orphan's reaper without asking.
//!
//! The loop reaps every child (`waitpid(-1)`); only workers are events for
//! the core, an orphan is reaped without a line. At shutdown, once the
//! workers are gone, the orphans still alive get `--signal-on-term` (and
//! KILL after `--signal-timeout`) and are waited for, so that none keeps a
//! listening socket, or a container, alive.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::log::LogWriter;

/// How often the shutdown looks for orphans that exited.
const POLL: Duration = Duration::from_millis(10);

/// Makes start_server the reaper of its descendants' orphans.
pub fn become_subreaper() -> Result<()> {
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        bail!(
            "--subreaper: prctl(PR_SET_CHILD_SUBREAPER) failed: {}",
            Errno::last()
        );
    }
    Ok(())
}

/// Whether orphans become our children: as PID 1, or a subreaper.
pub fn adopts_orphans(subreaper: bool) -> bool {
    subreaper || std::process::id() == 1
}

/// Our children now, from `/proc/PID/stat` (the parent pid is the second
/// field after the command name, which may itself hold spaces and ')').
pub fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(|p| p == me))
                    .unwrap_or(false)
            })
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Reaps every child that has exited, without blocking.
fn reap_exited() {
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// After the workers: signals the orphans still alive, and their orphans
/// as they appear, then waits for all of them; KILL after `timeout`.
pub fn stop_orphans(
    signal: Signal,
    name: &str,
    own: &[i32],
    timeout: Option<Duration>,
    log: &mut LogWriter,
) {
    let mut signalled: Vec<i32> = Vec::new();
    let mut killed = false;
    let since = Instant::now();
    loop {
        reap_exited();
        let alive: Vec<i32> = children()
            .into_iter()
            .filter(|p| !own.contains(p))
            .collect();
        if alive.is_empty() {
            return;
        }
        let new: Vec<i32> = alive
            .iter()
            .copied()
            .filter(|p| !signalled.contains(p))
            .collect();
        if !new.is_empty() {
            let list = new.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
            log.line(&format!("sending {name} to orphaned processes:{list}"));
            for &pid in &new {
                let _ = kill(Pid::from_raw(pid), signal);
            }
            signalled.extend(new);
        }
        if !killed && timeout.is_some_and(|t| since.elapsed() >= t) {
            killed = true;
            for &pid in &alive {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(POLL);
    }
}
