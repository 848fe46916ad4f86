//! The client modes: `--restart` and `--stop` a running start_server.
//!
//! Invariant: a signal is only ever sent to the pid in the pid file while a
//! process holds that file's lock (a start_server does, for its whole
//! life), so a stale file never gets an unrelated process signalled.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::Client;
use crate::pidfile;
use crate::progress::{self, Next, Progress};
use crate::status;

/// How often `--restart` looks at the status file: a deploy waits on it,
/// so it should return within a couple of milliseconds of the switch; each
/// look is one small read and a lock test, a few hundred a second at most.
const POLL: Duration = Duration::from_millis(2);

/// The pid in the file, if a running start_server holds it: the file is
/// locked, and the process it names has the file open.
fn running_pid(pid_file: &Path) -> Result<i32> {
    let pid = pidfile::read_pid(pid_file)?;
    let stale = || {
        format!(
            "no start_server is running with pid file {} (stale pid file: pid {pid} does not hold it)",
            pid_file.display()
        )
    };
    if !pidfile::is_locked(pid_file)? {
        bail!(stale());
    }
    if !holds_file(pid, pid_file)? {
        bail!(stale());
    }
    Ok(pid)
}

/// Whether process `pid` has `file` open, read from /proc/PID/fd. When
/// we may not look (another user's process), kill(2) decides instead.
fn holds_file(pid: i32, file: &Path) -> Result<bool> {
    let target = std::fs::metadata(file)
        .with_context(|| format!("failed to open file:{}", file.display()))?;
    let entries = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(true),
        Err(_) => return Ok(false),
    };
    Ok(entries.filter_map(|e| e.ok()).any(|entry| {
        std::fs::metadata(entry.path())
            .is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino())
    }))
}

fn read_generations(path: &Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to open file:{}", path.display()))?;
    Ok(status::generations(&text))
}

/// How long `--restart` waits for a new generation to become current: far
/// more than a healthy start needs (one `--interval`, plus a kill-old delay
/// still running from a previous restart), short enough that a deploy
/// script hears of a supervisor that never gets there.
const RESTART_DEADLINE: Duration = Duration::from_secs(300);

/// How long `--stop` waits for the supervisor to exit: generous, since
/// workers may take long to drain (`--signal-timeout` bounds that).
const STOP_DEADLINE: Duration = Duration::from_secs(300);

/// Consecutive failed start checks after which `--restart` gives up (the
/// supervisor keeps retrying; the old generation keeps serving).
const FAILED_STARTS: u32 = 3;

/// Sends HUP and waits until a generation newer than the newest before
/// is current and the status file lists it alone (the old workers are
/// gone), as the reference does. With a supervisor's progress channel
/// (`progress.rs`) it hears of every attempt and fails after
/// [`FAILED_STARTS`] in a row; without one (a Perl start_server) it reads
/// only the status file. Generations that failed to start consume numbers,
/// so "newer", not "exactly one more".
pub fn restart(client: &Client) -> Result<()> {
    let (Some(pid_file), Some(status_file)) = (&client.pid_file, &client.status_file) else {
        bail!("--restart option requires --pid-file and --status-file to be set as well");
    };
    let pid = running_pid(pid_file)?;
    let newest = *read_generations(status_file)?
        .last()
        .context("no active process found in the status file")?;
    // Before the HUP, so that no event of this restart is missed.
    let subscription = progress::subscribe(pid);
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .with_context(|| format!("failed to send SIGHUP to the server process (pid:{pid})"))?;
    let deadline = Instant::now() + RESTART_DEADLINE;
    let current = match subscription {
        Some(subscription) => Some(follow_restart(&subscription, pid, newest, deadline)?),
        None => None,
    };
    match poll_status_file(pid_file, status_file, newest, deadline) {
        Wait::Done => Ok(()),
        Wait::Gone => Err(gone(pid)),
        Wait::Late => match current {
            Some(Progress::Current {
                generation,
                pid: worker,
            }) => bail!(
                "generation {generation} (worker {worker}) is current, but old workers were \
                 still running after {} s",
                RESTART_DEADLINE.as_secs()
            ),
            _ => Err(late(pid)),
        },
    }
}

fn gone(pid: i32) -> anyhow::Error {
    anyhow!("start_server (pid:{pid}) exited before the restart completed")
}

fn late(pid: i32) -> anyhow::Error {
    anyhow!(
        "no new generation became current within {} s; start_server (pid:{pid}) keeps running",
        RESTART_DEADLINE.as_secs()
    )
}

/// Follows the supervisor's progress lines until a new generation is
/// current (returned) or the restart failed; on a terminal, shows each
/// step.
fn follow_restart(
    subscription: &progress::Subscription,
    pid: i32,
    newest: u64,
    deadline: Instant,
) -> Result<Progress> {
    let started = Instant::now();
    let show = std::io::stderr().is_terminal();
    let mut watch = RestartWatch::new(newest);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late(pid));
        }
        let progress = match subscription.next(left) {
            Next::Progress(progress) => progress,
            Next::Quiet | Next::Upgrade(_) => continue,
            Next::Closed => return Err(gone(pid)),
        };
        let seen = watch.see(progress);
        if show {
            if let Some(line) = watch.describe(&progress) {
                let secs = started.elapsed().as_secs_f64();
                let _ = writeln!(std::io::stderr(), "{line}, {secs:.1} s");
            }
        }
        match seen {
            Verdict::Wait => {}
            Verdict::Current => return Ok(progress),
            Verdict::GaveUp { pid, status } => bail!(
                "the new generation failed to start {FAILED_STARTS} times in a row \
                 (last: worker {pid}, exit status:{status}); the old generation keeps serving"
            ),
        }
    }
}

/// What a progress line means for the restart.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Wait,
    Current,
    GaveUp { pid: i32, status: i32 },
}

/// The restart as the client follows it: the generations of this
/// restart are those newer than the newest before the HUP.
struct RestartWatch {
    newest: u64,
    attempts: u32,
    failed_in_a_row: u32,
}

impl RestartWatch {
    fn new(newest: u64) -> RestartWatch {
        RestartWatch {
            newest,
            attempts: 0,
            failed_in_a_row: 0,
        }
    }

    fn see(&mut self, progress: Progress) -> Verdict {
        if progress.generation() <= self.newest {
            return Verdict::Wait;
        }
        match progress {
            Progress::Attempt { .. } => {
                self.attempts += 1;
                Verdict::Wait
            }
            Progress::Failed { pid, status, .. } => {
                self.failed_in_a_row += 1;
                if self.failed_in_a_row >= FAILED_STARTS {
                    Verdict::GaveUp { pid, status }
                } else {
                    Verdict::Wait
                }
            }
            Progress::Current { .. } => Verdict::Current,
        }
    }

    /// The progress line for a terminal, after [`RestartWatch::see`].
    fn describe(&self, progress: &Progress) -> Option<String> {
        if progress.generation() <= self.newest {
            return None;
        }
        let n = self.attempts;
        Some(match progress {
            Progress::Attempt { pid, .. } => format!("attempt {n}: worker {pid} started"),
            Progress::Failed { pid, status, .. } => {
                format!("attempt {n}: worker {pid} failed to start, exit status:{status}")
            }
            Progress::Current { pid, .. } => format!("attempt {n}: worker {pid} is now current"),
        })
    }
}

/// How waiting on the status file ended.
enum Wait {
    Done,
    Gone,
    Late,
}

/// Polls the status file until it lists exactly one generation, newer
/// than `newest`.
fn poll_status_file(pid_file: &Path, status_file: &Path, newest: u64, deadline: Instant) -> Wait {
    loop {
        std::thread::sleep(POLL);
        // The status file is replaced by rename: a missing file is a moment
        // between two versions only if the server is still alive.
        if let Ok(gens) = read_generations(status_file) {
            if let [only] = gens[..] {
                if only > newest {
                    return Wait::Done;
                }
            }
        }
        if !pidfile::is_locked(pid_file).unwrap_or(false) {
            return Wait::Gone;
        }
        if Instant::now() >= deadline {
            return Wait::Late;
        }
    }
}

/// How long `--upgrade` waits for the outcome: the probe has 2 s, the
/// exec and the new image's start take milliseconds.
const UPGRADE_DEADLINE: Duration = Duration::from_secs(30);

/// Sends USR2 and waits until the supervisor says the upgrade happened or
/// why not. Only a supervisor with a progress channel is signalled: a
/// Perl start_server (or one too old to upgrade) would die of USR2.
pub fn upgrade(client: &Client) -> Result<()> {
    let Some(pid_file) = &client.pid_file else {
        bail!("--upgrade option requires --pid-file to be set as well");
    };
    let pid = running_pid(pid_file)?;
    let Some(subscription) = progress::subscribe(pid) else {
        bail!(
            "start_server (pid:{pid}) cannot upgrade itself (no control channel: a Perl \
             start_server would die of SIGUSR2), so no signal was sent"
        );
    };
    kill(Pid::from_raw(pid), Signal::SIGUSR2)
        .with_context(|| format!("failed to send SIGUSR2 to the server process (pid:{pid})"))?;
    let deadline = Instant::now() + UPGRADE_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "start_server (pid:{pid}) did not say within {} s how the upgrade went",
                UPGRADE_DEADLINE.as_secs()
            );
        }
        match subscription.next(left) {
            Next::Upgrade(progress::Upgrade::Done { from, to }) => {
                crate::log::line(format_args!(
                    "start_server (pid:{pid}) upgraded from {from} to {to}"
                ));
                return Ok(());
            }
            Next::Upgrade(progress::Upgrade::Failed(reason)) => {
                bail!("upgrade failed: {reason}; start_server (pid:{pid}) carries on as before")
            }
            Next::Progress(_) | Next::Quiet => {}
            Next::Closed => bail!("start_server (pid:{pid}) exited during the upgrade"),
        }
    }
}

/// Sends TERM and waits on the pid file's lock until the server is gone,
/// at most [`STOP_DEADLINE`].
pub fn stop(client: &Client) -> Result<()> {
    let Some(pid_file) = &client.pid_file else {
        bail!("--stop option requires --pid-file to be set as well");
    };
    let pid = running_pid(pid_file)?;
    crate::log::line(format_args!(
        "stop_server (pid:{}) stopping now (pid:{pid})...",
        std::process::id()
    ));
    kill(Pid::from_raw(pid), Signal::SIGTERM)
        .with_context(|| format!("failed to send SIGTERM to the server process (pid:{pid})"))?;
    if !pidfile::wait_unlocked(pid_file, STOP_DEADLINE)? {
        bail!(
            "start_server (pid:{pid}) is still running after {} s",
            STOP_DEADLINE.as_secs()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(generation: u64, pid: i32) -> Progress {
        Progress::Attempt { generation, pid }
    }

    fn failed(generation: u64, pid: i32) -> Progress {
        Progress::Failed {
            generation,
            pid,
            status: 256,
        }
    }

    #[test]
    fn three_failed_starts_in_a_row_give_up() {
        let mut watch = RestartWatch::new(1);
        for (generation, pid) in [(2, 20), (3, 30)] {
            assert_eq!(watch.see(attempt(generation, pid)), Verdict::Wait);
            assert_eq!(watch.see(failed(generation, pid)), Verdict::Wait);
        }
        assert_eq!(watch.see(attempt(4, 40)), Verdict::Wait);
        assert_eq!(
            watch.describe(&failed(4, 40)).as_deref(),
            Some("attempt 3: worker 40 failed to start, exit status:256")
        );
        assert_eq!(
            watch.see(failed(4, 40)),
            Verdict::GaveUp {
                pid: 40,
                status: 256
            }
        );
    }

    #[test]
    fn a_failure_then_a_start_is_a_success() {
        let mut watch = RestartWatch::new(5);
        assert_eq!(watch.see(attempt(6, 60)), Verdict::Wait);
        assert_eq!(watch.see(failed(6, 60)), Verdict::Wait);
        assert_eq!(watch.see(attempt(7, 70)), Verdict::Wait);
        assert_eq!(
            watch.see(Progress::Current {
                generation: 7,
                pid: 70
            }),
            Verdict::Current
        );
    }

    #[test]
    fn generations_from_before_the_hup_do_not_count() {
        let mut watch = RestartWatch::new(5);
        for _ in 0..3 {
            assert_eq!(watch.see(failed(5, 50)), Verdict::Wait);
        }
        assert_eq!(
            watch.see(Progress::Current {
                generation: 5,
                pid: 50
            }),
            Verdict::Wait
        );
        assert_eq!(watch.describe(&attempt(4, 40)), None);
    }
}
