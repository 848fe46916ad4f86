//! Starting a worker: the only code that runs between fork and exec.
//!
//! Everything the child needs (argv, environment, the executable's
//! candidate paths from a PATH search, the directory) is built before the
//! fork; the child then makes only async-signal-safe system calls: reset
//! signal dispositions, unblock signals, chdir, execve, write, _exit. A
//! failed chdir or exec is reported back through a close-on-exec pipe, and
//! the child exits 255, so the parent logs a clear message and the start
//! check sees the failure like the reference's.
//!
//! clone(2) is used directly rather than `std::process::Command` so that a
//! failed exec still yields a worker pid, a `starting new worker PID` line
//! and an exit status of 255, exactly as under the reference; and so that
//! every call in the child is listed here. It is called as vfork(2) is
//! (`CLONE_VM | CLONE_VFORK`, on a stack of its own, as posix_spawn(3)
//! does): the child borrows our memory instead of copying our page tables,
//! and we are suspended until it has exec'd or exited, which is what a HUP
//! is waiting for. The child writes to our memory only where this module
//! says so.
//!
//! `--systemd-listen-fds` needs one variable whose value exists only after
//! the fork: `LISTEN_PID`, the worker's own pid (libsystemd, go-systemd,
//! gunicorn, Puma and uWSGI ignore `LISTEN_FDS` without it). Its entry is
//! prepared in the environment with room for the digits, which the child
//! writes with getpid(2) and no allocation. The sockets are already at
//! fds 3, 4, ... (`listen.rs` put them there in the supervisor), so the
//! child needs no dup2.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, clone};
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

use crate::envdir::Env;

/// A forked worker, and what went wrong in it before exec, if anything.
pub struct Spawned {
    pub pid: i32,
    /// The message to log when chdir or exec failed in the child.
    pub failure: Option<String>,
}

/// The worker's command, prepared for the child.
struct Prepared {
    argv: Vec<CString>,
    envp: Vec<CString>,
    candidates: Vec<CString>,
    dir: Option<CString>,
    sh: CString,
    /// The signals whose disposition the child must set.
    reset: &'static [libc::c_int],
    /// With `--systemd-listen-fds`: the `LISTEN_PID=` entry of `envp`,
    /// NUL-filled after the `=`, where the child writes its pid.
    listen_pid: Option<Vec<u8>>,
}

/// `LISTEN_PID=` and room for any pid's digits and the NUL.
const LISTEN_PID: &[u8] = b"LISTEN_PID=";
const PID_DIGITS: usize = 20;

fn c_string(bytes: &[u8], what: &str) -> Result<CString> {
    CString::new(bytes).map_err(|_| anyhow!("{what} contains a NUL byte"))
}

fn prepare(
    program: &[OsString],
    env: &Env,
    dir: Option<&Path>,
    listen_pid: bool,
) -> Result<Prepared> {
    let argv = program
        .iter()
        .map(|a| c_string(a.as_bytes(), "an argument of the program"))
        .collect::<Result<Vec<_>>>()?;
    let name = program.first().map(|p| p.as_bytes()).unwrap_or_default();
    let envp = env
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            c_string(&kv, "an environment variable")
        })
        .collect::<Result<Vec<_>>>()?;
    // execvp(3)'s search, done here so the child needs no allocation.
    let candidates = if name.contains(&b'/') {
        vec![c_string(name, "the program name")?]
    } else {
        let path = env.get("PATH").map(|p| p.as_bytes().to_vec());
        let path = path.unwrap_or_else(|| b"/bin:/usr/bin".to_vec());
        path.split(|&b| b == b':')
            .map(|dir| {
                let mut full = if dir.is_empty() {
                    Vec::new()
                } else {
                    [dir, b"/"].concat()
                };
                full.extend_from_slice(name);
                c_string(&full, "the program path")
            })
            .collect::<Result<Vec<_>>>()?
    };
    let dir = dir
        .map(|d| c_string(d.as_os_str().as_bytes(), "the --dir path"))
        .transpose()?;
    Ok(Prepared {
        argv,
        envp,
        candidates,
        dir,
        sh: c_string(b"/bin/sh", "")?,
        reset: signals_to_reset(),
        listen_pid: listen_pid.then(|| {
            let mut entry = LISTEN_PID.to_vec();
            entry.resize(LISTEN_PID.len() + PID_DIGITS, 0);
            entry
        }),
    })
}

/// The signals that are not at their default disposition here (ours have
/// handlers; others may have been inherited ignored), and SIGPIPE. Read
/// once, at the first spawn: the supervisor installs its handlers before
/// that and never changes a disposition afterwards. Resetting only these
/// spares the child some sixty system calls on the way to exec.
fn signals_to_reset() -> &'static [libc::c_int] {
    static RESET: OnceLock<Vec<libc::c_int>> = OnceLock::new();
    RESET.get_or_init(|| {
        (1..=libc::SIGRTMAX())
            .filter(|&signal| signal != libc::SIGKILL && signal != libc::SIGSTOP)
            .filter(|&signal| signal == libc::SIGPIPE || !at_default(signal))
            .collect()
    })
}

/// Whether `signal`'s disposition is SIG_DFL (a signal that cannot be
/// asked about, such as one the C library reserves, counts as not).
fn at_default(signal: libc::c_int) -> bool {
    // SAFETY: sigaction(2) only reads the disposition into a local value.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_DFL
    }
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The child's stack until it execs: a few system calls deep.
const CHILD_STACK: usize = 64 * 1024;

/// Forks and execs the worker; with `listen_pid`, its environment also
/// gets `LISTEN_PID` set to its own pid.
pub fn spawn_worker(
    program: &[OsString],
    env: &Env,
    dir: Option<&Path>,
    listen_pid: bool,
) -> Result<Spawned> {
    let mut prepared = prepare(program, env, dir, listen_pid)?;
    let mut envp = pointers(&prepared.envp);
    // Outside `prepared`, which the child only reads. The entry goes
    // before the terminating null pointer.
    let mut listen_pid_entry = prepared.listen_pid.take();
    let slot = listen_pid_entry.as_mut().map(|entry| {
        envp.insert(envp.len() - 1, entry.as_ptr().cast());
        entry.as_mut_ptr()
    });
    let argv = pointers(&prepared.argv);
    // For a script without #!, execvp(3) runs it with /bin/sh: [sh, path, args..].
    let mut sh_argv = vec![prepared.sh.as_ptr(), std::ptr::null()];
    sh_argv.extend_from_slice(&argv[1..]);
    let (report_read, report_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).context("failed to create a pipe")?;

    // Block every signal across fork so the child never runs our handlers;
    // it unblocks them only after resetting the dispositions.
    let mut saved = SigSet::empty();
    sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut saved),
    )
    .context("failed to block signals for clone(2)")?;
    let report_fd = report_write.as_raw_fd();
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the process is single-threaded, so no lock is held while we
    // are suspended; the child runs on its own stack, only makes
    // async-signal-safe calls (see `exec_child`) and never returns; every
    // signal is blocked until it has reset the dispositions, so none of our
    // handlers runs in it.
    let forked = unsafe {
        clone(
            Box::new(|| exec_child(&prepared, &argv, &envp, &mut sh_argv, slot, report_fd)),
            &mut stack,
            CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK,
            Some(libc::SIGCHLD),
        )
    }
    .map(|pid| pid.as_raw());
    let restored = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
    drop(report_write);
    let pid = forked.context("clone(2) failed")?;
    // Setting a mask sigprocmask saved cannot fail; were it to, every
    // signal would stay blocked and the supervisor deaf: an error.
    restored.context("failed to restore the signal mask after clone(2)")?;

    // EOF means the exec succeeded (the pipe was close-on-exec).
    let mut report = [0u8; 5];
    let mut got = 0;
    while got < report.len() {
        match nix::unistd::read(report_read.as_fd(), &mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    let failure = (got == report.len()).then(|| {
        let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
        let error = Errno::from_raw(errno).desc();
        let name = program
            .first()
            .map(|p| p.to_string_lossy())
            .unwrap_or_default();
        // The reference's texts; exec's gets the separator it lacks.
        match (report[0], dir) {
            (b'C', Some(d)) => format!("failed to chdir:{}:{error}", d.display()),
            _ => format!("failed to exec {name}: {error}"),
        }
    });
    Ok(Spawned { pid, failure })
}

/// The child between fork and exec.
///
/// # Safety
/// Only async-signal-safe calls: sigaction, sigemptyset, sigprocmask,
/// getpid, chdir, execve, write, _exit. No allocation, no locks, no
/// formatting. It runs in our memory (`CLONE_VM`) while we are suspended:
/// the only writes it makes there are a pointer into the pre-allocated
/// `sh_argv`, the digits of its pid into the pre-allocated `LISTEN_PID=`
/// entry (`listen_pid` points at the entry's first byte), and errno.
unsafe fn exec_child(
    prepared: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    sh_argv: &mut [*const libc::c_char],
    listen_pid: Option<*mut u8>,
    report: libc::c_int,
) -> ! {
    unsafe {
        if let Some(entry) = listen_pid {
            write_pid(entry.add(LISTEN_PID.len()), libc::getpid());
        }
        // Every signal at its default disposition except SIGPIPE, which stays
        // ignored as under the reference (its workers inherit that).
        let mut action: libc::sigaction = std::mem::zeroed();
        for &signal in prepared.reset {
            action.sa_sigaction = if signal == libc::SIGPIPE {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            };
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        if let Some(dir) = &prepared.dir {
            if libc::chdir(dir.as_ptr()) != 0 {
                fail(report, b'C', *libc::__errno_location());
            }
        }
        let mut error = libc::ENOENT;
        let mut denied = false;
        for candidate in &prepared.candidates {
            libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr());
            error = *libc::__errno_location();
            match error {
                libc::ENOEXEC => {
                    sh_argv[1] = candidate.as_ptr();
                    libc::execve(prepared.sh.as_ptr(), sh_argv.as_ptr(), envp.as_ptr());
                    error = *libc::__errno_location();
                    break;
                }
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => break,
            }
        }
        if denied && error != libc::ENOEXEC {
            error = libc::EACCES;
        }
        fail(report, b'E', error)
    }
}

/// Writes `pid` in decimal at `at`, never zero-padded (older libsystemd
/// reads `LISTEN_PID` with base 0: a leading 0 would mean octal); the
/// bytes after it are already NUL.
///
/// # Safety
/// `at` has room for [`PID_DIGITS`] bytes. No allocation, no formatting
/// machinery: async-signal-safe.
unsafe fn write_pid(at: *mut u8, pid: libc::pid_t) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = u64::try_from(pid).unwrap_or(0);
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 || len == PID_DIGITS - 1 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: i < len < PID_DIGITS, within the caller's room.
        unsafe { *at.add(i) = digits[len - 1 - i] };
    }
}

/// Reports `stage` and `errno` to the parent and exits 255.
///
/// # Safety
/// Async-signal-safe: write and _exit only.
unsafe fn fail(report: libc::c_int, stage: u8, errno: libc::c_int) -> ! {
    let e = errno.to_ne_bytes();
    let message = [stage, e[0], e[1], e[2], e[3]];
    unsafe {
        libc::write(report, message.as_ptr().cast(), message.len());
        libc::_exit(255)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_in_decimal_without_padding() {
        for (pid, text) in [
            (1, "1"),
            (10, "10"),
            (4242, "4242"),
            (i32::MAX, "2147483647"),
        ] {
            let mut room = [0u8; PID_DIGITS];
            // SAFETY: room holds PID_DIGITS bytes.
            unsafe { write_pid(room.as_mut_ptr(), pid) };
            let end = room.iter().position(|&b| b == 0).unwrap_or(PID_DIGITS);
            assert_eq!(&room[..end], text.as_bytes());
        }
    }
}
