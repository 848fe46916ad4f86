//! The client modes: `--restart` and `--stop` a running start_server.
//!
//! Invariant: a signal is only ever sent to the pid in the pid file while a
//! process holds that file's lock (a start_server does, for its whole
//! life), so a stale file never gets an unrelated process signalled.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::Client;
use crate::pidfile;
use crate::status;

/// How often `--restart` looks at the status file: small enough to notice
/// the switch well under a second after it happens, cheap (one small read).
const POLL: Duration = Duration::from_millis(10);

/// How long `--stop` waits for the supervisor to exit: generous, since
/// workers may take long to drain (`--signal-timeout` bounds that).
const STOP_DEADLINE: Duration = Duration::from_secs(300);

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

/// Sends HUP and waits until the status file lists exactly one generation,
/// newer than the newest before. Generations that failed to start consume
/// numbers, so "newer", not "exactly one more".
pub fn restart(client: &Client) -> Result<()> {
    let (Some(pid_file), Some(status_file)) = (&client.pid_file, &client.status_file) else {
        bail!("--restart option requires --pid-file and --status-file to be set as well");
    };
    let pid = running_pid(pid_file)?;
    let newest = *read_generations(status_file)?
        .last()
        .context("no active process found in the status file")?;
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .with_context(|| format!("failed to send SIGHUP to the server process (pid:{pid})"))?;
    loop {
        std::thread::sleep(POLL);
        // The status file is replaced by rename: a missing file is a moment
        // between two versions only if the server is still alive.
        if let Ok(gens) = read_generations(status_file) {
            if let [only] = gens[..] {
                if only > newest {
                    return Ok(());
                }
            }
        }
        if !pidfile::is_locked(pid_file).unwrap_or(false) {
            bail!("start_server (pid:{pid}) exited before the restart completed");
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
