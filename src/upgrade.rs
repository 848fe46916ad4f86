//! Upgrading start_server itself (SIGUSR2): the new binary is asked
//! whether it reads our state format (the probe), then start_server execs
//! it in place, same pid, with its state in a memfd; the new image reads
//! the state back and goes on with the same sockets, workers and
//! deadlines. The design, after einhorn's `upgrade`, is in
//! docs/behaviour.md section 9.
//!
//! This module owns the three moments that cross an exec: answering a
//! probe (in the new binary), running one (in the old image, without
//! blocking the loop), and the exec itself with the state handed over;
//! what the state holds is the supervisor's business (`supervisor.rs`),
//! how it is written is `state.rs`'s.
//!
//! Invariant: until execve(2) succeeds nothing is given up. A probe that
//! says no, hangs or cannot run, and an exec that fails, leave the running
//! process as it was: its descriptors close-on-exec again, its signals
//! unblocked by the caller.

use std::ffi::{CString, OsStr, OsString};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use crate::state::{self, set_cloexec};

/// Set only in a probe's environment: the state version the old image
/// would write. The new binary answers on stdout and exits.
pub const PROBE_VAR: &str = "START_SERVER_UPGRADE_PROBE";

/// Set only in the new image's environment: the descriptor holding the
/// state. Never passed on to workers or to a later upgrade.
pub const STATE_FD_VAR: &str = "START_SERVER_UPGRADE_STATE_FD";

/// The longest answer read from a probe.
const ANSWER_MAX: usize = 4096;

/// How long the new binary has to answer the probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The probe's answer when the new binary reads `version`.
fn yes(version: u32) -> String {
    format!("start_server reads state version {version}\n")
}

/// In the new binary, run as a probe with the running one's command line
/// (`command_line`: whether it parses into a start): the line that
/// answers it. Yes only when both the state and the command line are
/// ours to take over, so that the new image never fails on either.
pub fn answer_probe(asked: &OsStr, command_line: Result<(), String>) -> String {
    match asked.to_str().and_then(|v| v.parse::<u32>().ok()) {
        Some(version) if version == state::VERSION => match command_line {
            Ok(()) => yes(version),
            Err(e) => format!("start_server does not accept the command line: {e}\n"),
        },
        _ => format!(
            "start_server does not read state version {}: it reads version {}\n",
            asked.to_string_lossy(),
            state::VERSION
        ),
    }
}

/// The path start_server was started as, absolute, so that an upgrade
/// runs whatever file is there by then (a package upgrade replaces it).
/// A bare name is looked up in `PATH`, as the shell did. Only a path that
/// names the file we run now counts (a `PATH` may find another
/// installation first); else `/proc/self/exe`'s path.
pub fn resolve_self(argv0: Option<&OsStr>) -> Option<PathBuf> {
    let ours = nix::sys::stat::stat("/proc/self/exe").ok();
    let same_file = |path: &Path| {
        let there = nix::sys::stat::stat(path).ok();
        matches!((ours, there), (Some(a), Some(b)) if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino))
    };
    let named = as_started(argv0).filter(|path| same_file(path));
    named.or_else(|| std::env::current_exe().ok())
}

/// argv[0] made absolute, looked up in `PATH` when it has no slash.
fn as_started(argv0: Option<&OsStr>) -> Option<PathBuf> {
    argv0.and_then(|name| {
        let path = Path::new(name);
        if name.as_bytes().contains(&b'/') {
            std::env::current_dir().ok().map(|cwd| cwd.join(path))
        } else {
            let search = std::env::var_os("PATH")?;
            std::env::split_paths(&search)
                .map(|dir| dir.join(path))
                .find(|candidate| is_executable(candidate))
                .and_then(|found| {
                    if found.is_absolute() {
                        Some(found)
                    } else {
                        std::env::current_dir().ok().map(|cwd| cwd.join(found))
                    }
                })
        }
    })
}

fn is_executable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok() && path.is_file()
}

/// The new binary, asked whether it reads our state version.
pub struct Probe {
    pub pid: i32,
    /// The file asked, opened before it was run: the exec runs this very
    /// file, and only if the path still names it.
    binary: OwnedFd,
    /// Its stdout, non-blocking; `None` once it reached end of file.
    out: Option<OwnedFd>,
    answer: Vec<u8>,
    pub deadline: Instant,
    /// Reaped: its pid is no longer ours to signal.
    exited: Option<i32>,
}

/// How a probe ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It reads our version: exec it.
    Yes,
    /// Anything else, with what to log.
    No(String),
}

impl Probe {
    /// Runs `path` as a probe, with `args` (our command line without
    /// argv[0]) and our environment without `hidden`. Its stdin and stderr
    /// are /dev/null. The caller makes sure that no socket of ours is
    /// inherited.
    pub fn start(path: &Path, args: &[OsString], hidden: &[&str]) -> Result<Probe> {
        let binary = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .with_context(|| format!("cannot run {}", path.display()))?;
        let mut command = Command::new(path);
        for name in hidden {
            command.env_remove(name);
        }
        let mut child = command
            .args(args)
            // Its own group, so that killing it kills whatever it started.
            .process_group(0)
            .env(PROBE_VAR, state::VERSION.to_string())
            .env_remove(STATE_FD_VAR)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", path.display()))?;
        let pid = child.id() as i32;
        let out: OwnedFd = match child.stdout.take() {
            Some(out) => out.into(),
            None => bail!("no pipe to {}", path.display()),
        };
        let flags = fcntl(&out, FcntlArg::F_GETFL).context("fcntl")?;
        fcntl(
            &out,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .context("fcntl")?;
        // Reaped by the supervisor's waitpid(-1), never through `child`.
        drop(child);
        Ok(Probe {
            pid,
            binary,
            out: Some(out),
            answer: Vec::new(),
            deadline: Instant::now() + PROBE_TIMEOUT,
            exited: None,
        })
    }

    /// What poll(2) waits on for the answer.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.out.as_ref().map(|fd| fd.as_fd())
    }

    /// The probe was reaped with this wait status.
    pub fn exited(&mut self, status: i32) {
        self.exited = Some(status);
    }

    /// Reads what came and decides, once there is something to decide:
    /// a whole line, its end of file, or the deadline.
    pub fn verdict(&mut self, now: Instant) -> Option<Verdict> {
        self.read();
        let line_end = self.answer.iter().position(|&b| b == b'\n');
        if let Some(end) = line_end {
            let line = &self.answer[..=end];
            if line == yes(state::VERSION).as_bytes() {
                return Some(Verdict::Yes);
            }
            return Some(Verdict::No(format!(
                "it answered {:?}",
                String::from_utf8_lossy(&line[..end])
            )));
        }
        if self.answer.len() > ANSWER_MAX {
            return Some(Verdict::No(format!(
                "it wrote more than {ANSWER_MAX} bytes without answering"
            )));
        }
        if self.out.is_none() {
            return Some(Verdict::No(match self.exited {
                Some(status) => format!("it exited with status {status} without answering"),
                None => "it closed its output without answering".to_string(),
            }));
        }
        if now >= self.deadline {
            return Some(Verdict::No(format!(
                "it did not answer within {} s",
                PROBE_TIMEOUT.as_secs()
            )));
        }
        None
    }

    /// Reads what is there, up to the first line (or [`ANSWER_MAX`]
    /// bytes): a program that writes without end cannot hold the loop.
    fn read(&mut self) {
        let Some(out) = &self.out else { return };
        let mut buf = [0u8; 512];
        while !self.answer.contains(&b'\n') && self.answer.len() <= ANSWER_MAX {
            match nix::unistd::read(out.as_fd(), &mut buf) {
                Ok(0) => {
                    self.out = None;
                    return;
                }
                Ok(n) => self.answer.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }

    /// Ends the probe and whatever it started: SIGKILL to its process
    /// group (a group id is not reused while a member lives). Returns the
    /// file that was asked.
    pub fn finish(self) -> Binary {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        Binary(self.binary)
    }
}

/// The file a probe asked, to be exec'd.
pub struct Binary(OwnedFd);

impl Binary {
    /// Fails if `path` no longer names this file (it was replaced or
    /// removed after it answered).
    fn check(&self, path: &Path) -> Result<()> {
        let asked = nix::sys::stat::fstat(&self.0).context("fstat failed")?;
        let now = nix::sys::stat::stat(path)
            .with_context(|| format!("cannot check {} again", path.display()))?;
        if (asked.st_dev, asked.st_ino) != (now.st_dev, now.st_ino) {
            bail!("{} was replaced after it answered", path.display());
        }
        Ok(())
    }
}

/// Replaces this process with `binary` (the file the probe asked, still at
/// `path`), run with `args` (our own command line) and `env` plus
/// [`STATE_FD_VAR`] naming a memfd that holds the state. The descriptors
/// the state names lose close-on-exec for the exec. Returns only if it
/// failed, with everything as it was.
pub fn exec(
    binary: &Binary,
    path: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    state: state::Writer,
) -> anyhow::Error {
    match try_exec(binary, path, args, env, state) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_exec(
    binary: &Binary,
    path: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    state: state::Writer,
) -> Result<std::convert::Infallible> {
    binary.check(path)?;
    let keep: Vec<(RawFd, bool)> = state.fds().to_vec();
    let state = state.into_bytes();
    let memfd =
        memfd_create("start_server-state", MFdFlags::MFD_CLOEXEC).context("memfd_create failed")?;
    let mut file = std::fs::File::from(memfd);
    file.write_all(&state)
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
        .context("failed to write the state")?;
    let memfd = OwnedFd::from(file);
    let c = |s: &OsStr| CString::new(s.as_bytes()).context("a NUL byte in an argument");
    let c_args = args.iter().map(|a| c(a)).collect::<Result<Vec<_>>>()?;
    let mut c_env = Vec::with_capacity(env.len() + 1);
    for (name, value) in env {
        if name == STATE_FD_VAR || name == PROBE_VAR {
            continue;
        }
        let mut pair = name.clone();
        pair.push("=");
        pair.push(value);
        c_env.push(CString::new(pair.into_vec()).context("a NUL byte in the environment")?);
    }
    c_env.push(CString::new(format!(
        "{STATE_FD_VAR}={}",
        memfd.as_raw_fd()
    ))?);

    for &(fd, _) in &keep {
        set_cloexec(fd, false);
    }
    set_cloexec(memfd.as_raw_fd(), false);
    let error = match nix::unistd::fexecve(&binary.0, &c_args, &c_env) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    for &(fd, cloexec) in &keep {
        set_cloexec(fd, cloexec);
    }
    drop(memfd);
    if error == Errno::ENOENT {
        // The file is there (checked above): a `#!` script, which cannot
        // run from a close-on-exec descriptor (execveat(2)).
        bail!(
            "execve {} failed: it is not a binary (a script cannot take over)",
            path.display()
        );
    }
    Err(error).with_context(|| format!("execve {} failed", path.display()))
}

/// Names the process after the file it runs again: exec'd from a
/// descriptor, older kernels name it after the descriptor's number, and
/// `ps`, `pgrep start_server` and monitoring would lose it.
pub fn restore_name(exe: Option<&Path>) {
    let name = exe
        .and_then(Path::file_name)
        .map(|n| n.as_bytes().iter().take(15).copied().collect::<Vec<u8>>())
        .unwrap_or_else(|| b"start_server".to_vec());
    if let Ok(name) = CString::new(name) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
        // bytes, which `name` is, and keeps no pointer to it.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
}

/// In a new image: the state the old one handed over, if this start is an
/// upgrade. The descriptor is closed once read.
pub fn take_state() -> Option<Result<Vec<u8>>> {
    let value = std::env::var_os(STATE_FD_VAR)?;
    Some(read_state(&value))
}

fn read_state(value: &OsStr) -> Result<Vec<u8>> {
    let bad = |why: &str| format!("invalid {STATE_FD_VAR} value {value:?}: {why}");
    let fd: RawFd = match value.to_str().and_then(|v| v.parse().ok()) {
        Some(fd) if fd > 2 => fd,
        _ => bail!(bad("not a descriptor number above 2")),
    };
    if state::cloexec(fd).is_none() {
        bail!(bad("not an open descriptor"));
    }
    // SAFETY: the descriptor is open, and nothing else in this process
    // knows it: the old image handed it to us alone.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    set_cloexec(fd, true);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes)
        .with_context(|| bad("cannot read the state"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_answered_yes_only_for_our_version_and_a_good_command_line() {
        let ours = state::VERSION.to_string();
        assert_eq!(answer_probe(OsStr::new(&ours), Ok(())), yes(state::VERSION));
        let refused = answer_probe(OsStr::new(&ours), Err("unknown option: x".to_string()));
        assert_eq!(
            refused,
            "start_server does not accept the command line: unknown option: x\n"
        );
        for other in ["0", "999", "", "x", "1 "] {
            if other == ours {
                continue;
            }
            let answer = answer_probe(OsStr::new(other), Ok(()));
            assert!(answer.starts_with("start_server does not read"), "{answer}");
            assert_ne!(answer, yes(state::VERSION));
        }
    }

    #[test]
    fn a_path_with_a_slash_is_made_absolute() {
        let found = as_started(Some(OsStr::new("./bin/start_server"))).expect("path");
        assert!(found.is_absolute(), "{}", found.display());
        assert!(found.ends_with("bin/start_server"));
    }

    #[test]
    fn a_bare_name_is_looked_up_in_path() {
        let sh = as_started(Some(OsStr::new("sh"))).expect("sh in PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(
            as_started(Some(OsStr::new("no-such-program-anywhere"))),
            None
        );
    }

    #[test]
    fn only_a_path_to_our_own_file_counts() {
        let exe = std::env::current_exe().ok();
        // `sh` is found, but it is not the file this test runs.
        assert_eq!(resolve_self(Some(OsStr::new("sh"))), exe);
        assert_eq!(resolve_self(Some(OsStr::new("no-such-program"))), exe);
        let ours = exe.clone().expect("our executable");
        assert_eq!(resolve_self(Some(ours.as_os_str())), exe);
    }
}
