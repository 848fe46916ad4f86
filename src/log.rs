//! Where start_server's output goes: lifecycle lines on stderr, and the
//! `--log-file` (a file appended to, or `| command` fed through a pipe) that
//! takes over stdout and stderr once setup has succeeded.
//!
//! Setup writes with [`line`], which may block. Once setup is done, the
//! supervisor loop owns a [`LogWriter`], whose writes never block: a reader
//! that stops reading (a stopped `| command`, a stalled journald) must not
//! stop restarts, reaping or shutdown.
//!
//! On SIGUSR1, [`reopen`] opens a plain log file again by its path (after
//! logrotate renamed it) and puts it in place of stdout and stderr. Workers
//! started afterwards inherit the new file; running workers keep the old
//! one until they are replaced.
//!
//! Invariants: nothing here panics when the output is gone (a closed pipe,
//! `/dev/full`): a line that cannot be written is dropped, and the
//! supervisor keeps serving. A [`LogWriter`] never blocks, never sets
//! `O_NONBLOCK` on the descriptor workers share, and reports every line it
//! dropped in one `N log lines dropped` line before any later line. A
//! failed reopen leaves stdout, stderr and the writer as they were.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{MsgFlags, send};
use nix::sys::stat::{Mode, SFlag, fstat};

use crate::envdir::Env;

/// Writes one line to stderr in a single write(2), ignoring failures. For
/// setup and the client modes; it blocks while the output does.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut text = args.to_string();
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// The opened `--log-file` target, not yet in place of stdout and stderr.
pub struct LogSink {
    pub fd: OwnedFd,
}

/// What `--log-file` named, kept for reopening it on SIGUSR1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// No `--log-file`: stdout and stderr are what we were started with.
    Inherited,
    /// A file, opened again by its path.
    File(PathBuf),
    /// `| command`: the command owns whatever it writes to.
    Pipe,
}

impl Target {
    /// The target of a `--log-file` value, if one was given.
    pub fn of(spec: Option<&OsStr>) -> Target {
        match spec {
            None => Target::Inherited,
            Some(spec) if pipe_command(spec).is_some() => Target::Pipe,
            Some(spec) => Target::File(PathBuf::from(spec)),
        }
    }
}

/// The command of a `--log-file` value beginning with `|` (white space
/// allowed around the bar).
fn pipe_command(spec: &OsStr) -> Option<&OsStr> {
    let command = spec.as_bytes().trim_ascii_start().strip_prefix(b"|")?;
    Some(OsStr::from_bytes(command.trim_ascii_start()))
}

/// Opens the log file for appending, creating it with mode 0666 minus the
/// umask, as Perl's `>>` does; close-on-exec (std's default) until it is
/// put on stdout and stderr.
fn open_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o666)
        .open(path)
}

/// Opens the log file for appending, or starts `sh -c CMD` for a value
/// beginning with `|` (the reference's Perl `open '|-'`) with the
/// environment `env`. The command is started before any socket of ours
/// exists, and systemd's are close-on-exec by then: it inherits none.
pub fn open(spec: &OsStr, env: &Env) -> Result<LogSink> {
    let shown = spec.to_string_lossy();
    if let Some(command) = pipe_command(spec) {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .env_clear()
            .envs(env.iter().map(|(name, value)| (name, value)))
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
    let file =
        open_file(Path::new(spec)).with_context(|| format!("failed to open log file:{shown}"))?;
    Ok(LogSink { fd: file.into() })
}

/// On SIGUSR1: a plain log file is opened again by its path and put in
/// place of stdout and stderr, and `writer` follows it; then one line says
/// what happened, in the new file if there is one. Nothing here is fatal:
/// when the file cannot be opened (its directory gone, no permission),
/// everything keeps writing to the old one, and the line says why.
pub fn reopen(target: &Target, writer: &mut LogWriter) {
    let line = match target {
        Target::File(path) => match reopen_file(path, writer) {
            Ok(()) => format!("received USR1, reopened log file {}", path.display()),
            Err(e) => format!(
                "received USR1, failed to reopen log file {}: {e}",
                path.display()
            ),
        },
        Target::Pipe => "received USR1, log is a pipe, nothing to reopen".to_string(),
        Target::Inherited => "received USR1, no log file to reopen".to_string(),
    };
    writer.line(&line);
}

fn reopen_file(path: &Path, writer: &mut LogWriter) -> std::io::Result<()> {
    let file = open_file(path)?;
    nix::unistd::dup2_stdout(&file)?;
    nix::unistd::dup2_stderr(&file)?;
    drop(file);
    writer.follow(std::io::stderr().as_fd())
}

impl LogSink {
    /// Puts the sink in place of stdout and stderr, then closes the original.
    pub fn take_over_stdio(self) -> Result<()> {
        nix::unistd::dup2_stdout(&self.fd)
            .and_then(|()| nix::unistd::dup2_stderr(&self.fd))
            .context("failed to redirect output to the log file")
    }
}

/// How a [`LogWriter`] writes to its descriptor without blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    /// write(2) on an open file description of our own, opened with
    /// `O_NONBLOCK` (a pipe, FIFO or terminal).
    Own,
    /// send(2) with `MSG_DONTWAIT` (a socket, as journald's stdout stream).
    Send,
    /// write(2) on a duplicate of the shared descriptor: a regular file or
    /// `/dev/null`, which do not block for long, or a pipe or terminal that
    /// could not be reopened (no /proc).
    Plain,
}

/// The supervisor's own, non-blocking writer of log lines.
///
/// Each line goes out in one write(2): a pipe write of at most `PIPE_BUF`
/// bytes is atomic, so a line never interleaves with the workers' output
/// sharing the pipe. A longer line may be written in part; its rest is kept
/// (at most one line) and finished before anything else. A line that finds
/// the output full, or a rest still unwritten, is counted as dropped; the
/// count is written as `N log lines dropped` as soon as there is room,
/// before the next line. Meanwhile [`LogWriter::wants_writable`] asks the
/// loop to poll for room, and [`LogWriter::on_writable`] writes.
pub struct LogWriter {
    fd: OwnedFd,
    method: Method,
    /// The unwritten end of a line written in part.
    rest: Vec<u8>,
    /// Lines not written since the last `N log lines dropped`.
    dropped: u64,
    /// The last write found the output full (EAGAIN): room is worth polling
    /// for. Any other failure (a reader gone, a full disk) is not pollable,
    /// so it is retried with the next line instead.
    full: bool,
}

impl LogWriter {
    /// A writer to our stderr as it is now (the log file once it took
    /// over). Called once setup is done.
    pub fn for_stderr() -> Result<LogWriter> {
        LogWriter::new(std::io::stderr().as_fd()).context("failed to set up the log output")
    }

    /// A writer to whatever `fd` is. Workers keep writing to the same
    /// pipe, blocking: `O_NONBLOCK` goes on an open file description of our
    /// own, never on the shared one (fcntl(F_SETFL) would change it for
    /// every process holding it).
    pub fn new(fd: BorrowedFd<'_>) -> std::io::Result<LogWriter> {
        let kind = fstat(fd).map(|st| SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()));
        let reopen = match kind {
            Ok(SFlag::S_IFIFO) => Some(OFlag::empty()),
            // A terminal stopped with ^S blocks its writers too.
            Ok(SFlag::S_IFCHR) if nix::unistd::isatty(fd).unwrap_or(false) => Some(OFlag::O_NOCTTY),
            _ => None,
        };
        if let Some(extra) = reopen {
            if let Some(own) = reopen_nonblocking(fd, extra) {
                return Ok(LogWriter::with(own, Method::Own));
            }
        }
        let method = if kind == Ok(SFlag::S_IFSOCK) {
            Method::Send
        } else {
            Method::Plain
        };
        Ok(LogWriter::with(fd.try_clone_to_owned()?, method))
    }

    /// Switches to whatever `fd` is now (the reopened log file), keeping
    /// the count of dropped lines; a line still unfinished on the old
    /// output is finished if it can be, else counted as dropped.
    pub fn follow(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let mut next = LogWriter::new(fd)?;
        if !self.rest.is_empty() {
            let written = self.write_part(&self.rest);
            if self.settle(written) != Some(self.rest.len()) {
                self.dropped += 1;
            }
        }
        next.dropped = self.dropped;
        *self = next;
        Ok(())
    }

    fn with(fd: OwnedFd, method: Method) -> LogWriter {
        LogWriter {
            fd,
            method,
            rest: Vec::new(),
            dropped: 0,
            full: false,
        }
    }

    /// Writes `text` and a newline, or counts it as dropped; never blocks.
    pub fn line(&mut self, text: &str) {
        if !self.catch_up() {
            self.dropped += 1;
            return;
        }
        let mut line = Vec::with_capacity(text.len() + 1);
        line.extend_from_slice(text.as_bytes());
        line.push(b'\n');
        let written = self.write_part(&line);
        match self.settle(written) {
            Some(n) if n < line.len() => self.rest = line.split_off(n),
            Some(_) => {}
            None => self.dropped += 1,
        }
    }

    /// The descriptor to poll for `POLLOUT`, while something waits for
    /// room: the rest of a line, or the count of dropped lines.
    pub fn wants_writable(&self) -> Option<BorrowedFd<'_>> {
        let owed = !self.rest.is_empty() || self.dropped > 0;
        (owed && self.full).then(|| self.fd.as_fd())
    }

    /// Writes what waits for room, as far as there is room.
    pub fn on_writable(&mut self) {
        self.catch_up();
    }

    /// Lines dropped and not yet reported.
    #[cfg(test)]
    fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Finishes the rest of a line, then reports dropped lines; whether
    /// all of it is out, so that a new line may follow.
    fn catch_up(&mut self) -> bool {
        while !self.rest.is_empty() {
            let written = self.write_part(&self.rest);
            match self.settle(written) {
                Some(n) => {
                    self.rest.drain(..n);
                }
                None => return false,
            }
        }
        if self.dropped > 0 {
            let mut notice = format!("{} log lines dropped\n", self.dropped).into_bytes();
            let written = self.write_part(&notice);
            match self.settle(written) {
                Some(n) => {
                    self.dropped = 0;
                    self.rest = notice.split_off(n);
                    return self.catch_up();
                }
                None => return false,
            }
        }
        true
    }

    /// One write of `bytes`, as much as goes out without blocking.
    fn write_part(&self, bytes: &[u8]) -> nix::Result<usize> {
        loop {
            let result = match self.method {
                // MSG_NOSIGNAL: no SIGPIPE from a peer gone, even before
                // the signal set-up ignores it.
                Method::Send => send(
                    self.fd.as_raw_fd(),
                    bytes,
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                ),
                Method::Own | Method::Plain => nix::unistd::write(&self.fd, bytes),
            };
            if result != Err(Errno::EINTR) {
                return result;
            }
        }
    }

    /// Notes whether a write found the output full; how many bytes went
    /// out, `None` when none did.
    fn settle(&mut self, written: nix::Result<usize>) -> Option<usize> {
        self.full = written == Err(Errno::EAGAIN);
        written.ok().filter(|&n| n > 0)
    }
}

/// A new open file description of the pipe, FIFO or terminal `fd` refers
/// to, non-blocking and close-on-exec: opening `/proc/self/fd/N` reopens
/// the object itself (proc(5)), where dup(2) would share the flags.
/// `None` without /proc, or for a FIFO with no reader left (ENXIO).
fn reopen_nonblocking(fd: BorrowedFd<'_>, extra: OFlag) -> Option<OwnedFd> {
    let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | extra;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let own = nix::fcntl::open(path.as_str(), flags, Mode::empty()).ok()?;
    // Make sure it is what we were given, not whatever the path names now.
    let (given, ours) = (fstat(fd).ok()?, fstat(&own).ok()?);
    let same = given.st_dev == ours.st_dev && given.st_ino == ours.st_ino;
    let nonblocking = fcntl(&own, FcntlArg::F_GETFL)
        .is_ok_and(|fl| OFlag::from_bits_truncate(fl).contains(OFlag::O_NONBLOCK));
    (same && nonblocking).then_some(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    /// How long a writer may take for a batch of lines before the test
    /// calls it blocked.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// A pipe whose reader does not read until asked to: the read end
    /// (non-blocking, for draining) and the write end.
    fn stalled_pipe(capacity: libc::c_int) -> (std::fs::File, OwnedFd) {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).expect("pipe2");
        fcntl(&write, FcntlArg::F_SETPIPE_SZ(capacity)).expect("F_SETPIPE_SZ");
        // Only the read end stays non-blocking: the write end is shared
        // as a worker's stdout would be, blocking.
        fcntl(&write, FcntlArg::F_SETFL(OFlag::empty())).expect("F_SETFL");
        (std::fs::File::from(read), write)
    }

    /// Everything in the pipe now.
    fn drain(reader: &mut std::fs::File) -> String {
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        String::from_utf8(all).expect("utf-8")
    }

    /// Runs `f` on the writer in a thread; fails the test if it has not
    /// returned by the deadline (it blocked), instead of hanging.
    fn within_deadline(
        mut writer: LogWriter,
        f: impl FnOnce(&mut LogWriter) + Send + 'static,
    ) -> LogWriter {
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            f(&mut writer);
            let _ = done.send(writer);
        });
        finished
            .recv_timeout(DEADLINE)
            .expect("the log writer blocked on a full output")
    }

    fn poll_writable(writer: &LogWriter) -> bool {
        let fd = writer.wants_writable().expect("waits for room");
        let mut fds = [PollFd::new(fd, PollFlags::POLLOUT)];
        poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
    }

    fn numbered(n: usize) -> String {
        format!("line {n:04} {}", "-".repeat(80))
    }

    #[test]
    fn a_pipe_gets_its_own_non_blocking_description() {
        let (_reader, write) = stalled_pipe(65536);
        let writer = LogWriter::new(write.as_fd()).expect("writer");
        assert_eq!(writer.method, Method::Own);
        let ours = fcntl(&writer.fd, FcntlArg::F_GETFL).expect("F_GETFL");
        let shared = fcntl(&write, FcntlArg::F_GETFL).expect("F_GETFL");
        assert_ne!(ours & libc::O_NONBLOCK, 0);
        assert_eq!(
            shared & libc::O_NONBLOCK,
            0,
            "the shared description changed"
        );
        let cloexec = fcntl(&writer.fd, FcntlArg::F_GETFD).expect("F_GETFD");
        assert_ne!(cloexec & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn lines_beyond_capacity_are_counted_and_reported_before_the_next() {
        let (mut reader, write) = stalled_pipe(65536);
        let writer = LogWriter::new(write.as_fd()).expect("writer");
        let total = 2000;
        let writer = within_deadline(writer, move |w| {
            for n in 0..total {
                w.line(&numbered(n));
            }
        });
        let dropped = writer.dropped();
        assert!(dropped > 0, "2000 lines of 90 bytes fit in 64 KiB?");
        assert!(!poll_writable(&writer), "the pipe should be full");

        let written = drain(&mut reader);
        let lines: Vec<&str> = written.lines().collect();
        let expected: Vec<String> = (0..lines.len()).map(numbered).collect();
        assert_eq!(lines, expected, "whole lines, in order, none torn");
        assert_eq!(lines.len() as u64 + dropped, total as u64);

        // Drained: the loop sees room and the count goes out first.
        assert!(poll_writable(&writer), "room after draining");
        let writer = within_deadline(writer, |w| {
            w.on_writable();
            w.line("after");
        });
        assert_eq!(writer.dropped(), 0);
        assert!(writer.wants_writable().is_none());
        assert_eq!(
            drain(&mut reader),
            format!("{dropped} log lines dropped\nafter\n")
        );
    }

    #[test]
    fn the_count_comes_before_the_next_line_without_a_poll() {
        let (mut reader, write) = stalled_pipe(4096);
        let writer = LogWriter::new(write.as_fd()).expect("writer");
        let writer = within_deadline(writer, |w| {
            for n in 0..100 {
                w.line(&numbered(n));
            }
        });
        let dropped = writer.dropped();
        let kept = drain(&mut reader).lines().count() as u64;
        assert_eq!(kept + dropped, 100);
        let writer = within_deadline(writer, |w| w.line("next"));
        assert_eq!(
            drain(&mut reader),
            format!("{dropped} log lines dropped\nnext\n")
        );
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn a_line_written_in_part_is_finished_before_anything_else() {
        let page = 4096;
        let (mut reader, write) = stalled_pipe(2 * page);
        let writer = LogWriter::new(write.as_fd()).expect("writer");
        let short = "s".repeat(999);
        let long = "L".repeat(3 * page as usize);
        let (s, l) = (short.clone(), long.clone());
        let writer = within_deadline(writer, move |w| {
            w.line(&s);
            // More than PIPE_BUF: one page goes out, the rest waits.
            w.line(&l);
            w.line("dropped while the rest waits");
        });
        assert_eq!(writer.dropped(), 1);
        assert!(writer.wants_writable().is_some());
        let mut got = String::new();
        let mut writer = writer;
        for _ in 0..10 {
            got.push_str(&drain(&mut reader));
            writer = within_deadline(writer, LogWriter::on_writable);
            if writer.wants_writable().is_none() {
                break;
            }
        }
        let writer = within_deadline(writer, |w| w.line("last"));
        got.push_str(&drain(&mut reader));
        assert_eq!(got, format!("{short}\n{long}\n1 log lines dropped\nlast\n"));
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn a_socket_is_written_without_blocking() {
        let (ours, mut peer) = UnixStream::pair().expect("socketpair");
        let writer = LogWriter::new(ours.as_fd()).expect("writer");
        assert_eq!(writer.method, Method::Send);
        let shared = fcntl(&ours, FcntlArg::F_GETFL).expect("F_GETFL");
        assert_eq!(
            shared & libc::O_NONBLOCK,
            0,
            "the shared description changed"
        );
        let writer = within_deadline(writer, |w| {
            for n in 0..20000 {
                w.line(&numbered(n));
            }
        });
        let dropped = writer.dropped();
        assert!(dropped > 0);
        peer.set_nonblocking(true).expect("nonblocking");
        let mut got = Vec::new();
        let _ = peer.read_to_end(&mut got);
        let kept = String::from_utf8_lossy(&got).lines().count() as u64;
        let writer = within_deadline(writer, |w| w.line("next"));
        let mut rest = Vec::new();
        let _ = peer.read_to_end(&mut rest);
        assert_eq!(
            String::from_utf8_lossy(&rest),
            format!("{dropped} log lines dropped\nnext\n")
        );
        assert_eq!(kept + dropped, 20000);
        assert_eq!(writer.dropped(), 0);
    }

    #[test]
    fn a_file_is_appended_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "earlier\n").expect("write");
        let file = OpenOptions::new().append(true).open(&path).expect("open");
        let mut writer = LogWriter::new(file.as_fd()).expect("writer");
        assert_eq!(writer.method, Method::Plain);
        writer.line("one");
        writer.line("two");
        assert!(writer.wants_writable().is_none());
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "earlier\none\ntwo\n"
        );
    }

    #[test]
    fn the_target_of_a_log_file_value() {
        assert_eq!(Target::of(None), Target::Inherited);
        for pipe in ["| cat", "|cat", "  |  rotatelogs x 86400"] {
            assert_eq!(Target::of(Some(OsStr::new(pipe))), Target::Pipe, "{pipe}");
        }
        for file in ["app.log", "/var/log/app.log", "a|b", " app.log"] {
            assert_eq!(
                Target::of(Some(OsStr::new(file))),
                Target::File(PathBuf::from(file)),
                "{file}"
            );
        }
    }

    #[test]
    fn a_writer_that_follows_a_new_file_keeps_the_count_of_dropped_lines() {
        let (mut reader, write) = stalled_pipe(4096);
        let writer = LogWriter::new(write.as_fd()).expect("writer");
        let mut writer = within_deadline(writer, |w| {
            for n in 0..100 {
                w.line(&numbered(n));
            }
        });
        let dropped = writer.dropped();
        assert!(dropped > 0);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let file = open_file(&path).expect("open");
        writer.follow(file.as_fd()).expect("follow");
        assert_eq!(writer.method, Method::Plain);
        writer.line("in the new file");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("{dropped} log lines dropped\nin the new file\n")
        );
        let kept = drain(&mut reader).lines().count() as u64;
        assert_eq!(kept + dropped, 100, "nothing more went to the old output");
    }

    #[test]
    fn a_log_file_is_created_with_mode_0666_minus_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let file = open_file(&path).expect("open");
        // Read, not set: umask(2) would change it for the other tests too.
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|u| u32::from_str_radix(u.trim(), 8).ok())
            .expect("Umask in /proc/self/status");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o666 & !umask);
        let flags = fcntl(&file, FcntlArg::F_GETFL).expect("F_GETFL");
        assert_ne!(flags & libc::O_APPEND, 0);
        let cloexec = fcntl(&file, FcntlArg::F_GETFD).expect("F_GETFD");
        assert_ne!(cloexec & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn a_gone_reader_drops_lines_and_is_not_polled() {
        let (reader, write) = stalled_pipe(4096);
        let mut writer = LogWriter::new(write.as_fd()).expect("writer");
        drop(reader);
        // SIGPIPE is ignored by the test harness (the Rust runtime).
        writer.line("nobody reads this");
        writer.line("nor this");
        assert_eq!(writer.dropped(), 2);
        assert!(writer.wants_writable().is_none(), "would spin on POLLERR");
    }
}
