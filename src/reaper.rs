//! Orphans: `--subreaper` (`PR_SET_CHILD_SUBREAPER`, `prctl(2)`), and PID 1
//! of a container, which is every orphan's reaper without asking.
//!
//! The loop reaps every child (`waitpid(-1)`); only workers are events for
//! the core, an orphan is reaped without a line. At shutdown, once the
//! workers are gone, the orphans still alive get `--signal-on-term` (and
//! KILL from `--signal-timeout` after the TERM or INT on) and are waited
//! for, so that none keeps a listening socket, or a container, alive.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::log::LogWriter;

/// How often the shutdown looks for orphans that exited.
const POLL: Duration = Duration::from_millis(10);

/// How long orphans sent KILL are waited for before giving up (one in
/// uninterruptible sleep on a dead NFS server can take for ever).
const KILL_GRACE: Duration = Duration::from_secs(5);

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

/// Whether `/proc` is our PID namespace's: in a new one without its own
/// `/proc` (`unshare --pid --fork` without `--mount-proc`), it lists the
/// host's processes under the host's pids, and ours would be wrong.
fn proc_is_ours() -> bool {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|link| link.to_str()?.parse::<u32>().ok())
        == Some(std::process::id())
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
/// as they appear, then waits for all of them. From `deadline` on (the
/// TERM or INT plus `--signal-timeout`), every one still alive gets KILL,
/// those re-parented later too, and the wait ends `KILL_GRACE` after it
/// at the latest. An orphan we may not signal (EPERM: it changed user) is
/// not waited for.
pub fn stop_orphans(
    signal: Signal,
    name: &str,
    own: &[i32],
    deadline: Option<Instant>,
    log: &mut LogWriter,
) {
    if !proc_is_ours() {
        log.line(
            "not stopping orphaned processes: /proc is not this PID namespace's \
             (mount one to have them stopped)",
        );
        return;
    }
    let mut signalled: Vec<i32> = Vec::new();
    let mut killed: Vec<i32> = Vec::new();
    let mut ignored: Vec<i32> = Vec::new();
    loop {
        reap_exited();
        let alive: Vec<i32> = children()
            .into_iter()
            .filter(|p| !own.contains(p) && !ignored.contains(p))
            .collect();
        if alive.is_empty() {
            return;
        }
        let now = Instant::now();
        let (list, sent, to) = match deadline {
            Some(at) if now >= at + KILL_GRACE => {
                log.line(&format!(
                    "gave up waiting for orphaned processes:{}",
                    join(&alive)
                ));
                return;
            }
            Some(at) if now >= at => (&mut killed, Signal::SIGKILL, "KILL"),
            _ => (&mut signalled, signal, name),
        };
        let new: Vec<i32> = alive.into_iter().filter(|p| !list.contains(p)).collect();
        if !new.is_empty() {
            log.line(&format!(
                "sending {to} to orphaned processes:{}",
                join(&new)
            ));
            for &pid in &new {
                if let Err(Errno::EPERM | Errno::ESRCH) = kill(Pid::from_raw(pid), sent) {
                    ignored.push(pid);
                }
            }
            list.extend(new);
        }
        std::thread::sleep(POLL);
    }
}

fn join(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
