//! Where start_server's output goes: lifecycle lines on stderr, and the
//! `--log-file` (a file appended to, or `| command` fed through a pipe) that
//! takes over stdout and stderr once setup has succeeded.
//!
//! Invariant: nothing here panics when the output is gone (a closed pipe,
//! `/dev/full`): a line that cannot be written is dropped, and the
//! supervisor keeps serving.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

/// Writes one line to stderr in a single write(2), ignoring failures.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut text = args.to_string();
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// The opened `--log-file` target, not yet in place of stdout and stderr.
pub struct LogSink {
    pub fd: OwnedFd,
}

/// Opens the log file for appending, or starts `sh -c CMD` for a value
/// beginning with `|` (the reference's Perl `open '|-'`). The command is
/// started before any socket exists, so it inherits none.
pub fn open(spec: &OsStr) -> Result<LogSink> {
    let shown = spec.to_string_lossy();
    let trimmed = spec.as_bytes().trim_ascii_start();
    if let Some(command) = trimmed.strip_prefix(b"|") {
        let command = OsStr::from_bytes(command.trim_ascii_start());
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to open pipe:{shown}"))?;
        let stdin = child
            .stdin
            .take()
            .with_context(|| format!("failed to open pipe:{shown}"))?;
        // The child is reaped by the supervisor loop like any other child.
        drop(child);
        return Ok(LogSink { fd: stdin.into() });
    }
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o666)
        .open(spec)
        .with_context(|| format!("failed to open log file:{shown}"))?;
    Ok(LogSink { fd: file.into() })
}

impl LogSink {
    /// Puts the sink in place of stdout and stderr, then closes the original.
    pub fn take_over_stdio(self) -> Result<()> {
        nix::unistd::dup2_stdout(&self.fd)
            .and_then(|()| nix::unistd::dup2_stderr(&self.fd))
            .context("failed to redirect output to the log file")
    }
}
