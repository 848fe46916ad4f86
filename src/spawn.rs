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
//! fork(2) is used directly rather than `std::process::Command` so that a
//! failed exec still yields a worker pid, a `starting new worker PID` line
//! and an exit status of 255, exactly as under the reference; and so that
//! every call in the child is listed here.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::unistd::{ForkResult, fork};

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
}

fn c_string(bytes: &[u8], what: &str) -> Result<CString> {
    CString::new(bytes).map_err(|_| anyhow!("{what} contains a NUL byte"))
}

fn prepare(program: &[OsString], env: &Env, dir: Option<&Path>) -> Result<Prepared> {
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
    })
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Forks and execs the worker.
pub fn spawn_worker(program: &[OsString], env: &Env, dir: Option<&Path>) -> Result<Spawned> {
    let prepared = prepare(program, env, dir)?;
    let argv = pointers(&prepared.argv);
    let envp = pointers(&prepared.envp);
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
    .context("failed to block signals for fork(2)")?;
    // SAFETY: the process is single-threaded; the child branch below only
    // makes async-signal-safe calls and never returns.
    let forked = match unsafe { fork() } {
        // SAFETY: see `exec_child`.
        Ok(ForkResult::Child) => unsafe {
            exec_child(
                &prepared,
                &argv,
                &envp,
                &mut sh_argv,
                report_write.as_raw_fd(),
            )
        },
        Ok(ForkResult::Parent { child }) => Ok(child.as_raw()),
        Err(e) => Err(e),
    };
    let restored = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
    drop(report_write);
    let pid = forked.context("fork(2) failed")?;
    // Setting a mask sigprocmask saved cannot fail; were it to, every
    // signal would stay blocked and the supervisor deaf: an error.
    restored.context("failed to restore the signal mask after fork(2)")?;

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
/// chdir, execve, write, _exit. No allocation, no locks, no formatting;
/// `sh_argv` is pre-allocated and only has a pointer stored into it.
unsafe fn exec_child(
    prepared: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    sh_argv: &mut [*const libc::c_char],
    report: libc::c_int,
) -> ! {
    unsafe {
        // Every signal at its default disposition except SIGPIPE, which stays
        // ignored as under the reference (its workers inherit that).
        let mut action: libc::sigaction = std::mem::zeroed();
        for signal in 1..=libc::SIGRTMAX() {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
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
