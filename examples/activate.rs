//! A socket-activating launcher for tests and experiments, in the manner
//! of `systemd-socket-activate`, with no systemd needed: it opens the
//! sockets asked for, places them at fds 3, 4, ... in order, sets
//! `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (its own pid, which the
//! program keeps: this process execs it), and execs the program.
//!
//! ```text
//! activate [SOCKET...] [--names=A:B] [--pid=N] -- PROGRAM [ARGS...]
//! ```
//!
//! | `SOCKET` | opens |
//! | --- | --- |
//! | `--tcp=ADDR:PORT` | a listening TCP socket (`[::]:PORT` is dual-stack) |
//! | `--udp=ADDR:PORT` | a UDP socket |
//! | `--unix=PATH` | a listening unix stream socket |
//! | `--connection=ADDR:PORT` | a *connected* TCP socket, as `Accept=yes` hands over |
//! | `--file=PATH` | a regular file, which is no socket at all |
//!
//! `--pid=N` sets `LISTEN_PID=N` instead of this process's pid (sockets
//! meant for another process); `--names` sets `LISTEN_FDNAMES` (default:
//! none). Errors: one line on stderr, exit 111.

use std::fs::File;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    match run() {
        Ok(never) => match never {},
        Err(message) => {
            eprintln!("activate: {message}");
            ExitCode::from(111)
        }
    }
}

enum Never {}

fn run() -> Result<Never, String> {
    let mut args = std::env::args().skip(1);
    let mut sockets: Vec<OwnedFd> = Vec::new();
    // Keeps the listening end of a `--connection` open while we run.
    let mut peers: Vec<TcpListener> = Vec::new();
    let mut names = None;
    let mut pid = std::process::id().to_string();
    for arg in args.by_ref() {
        if arg == "--" {
            break;
        }
        let (option, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected --OPTION=VALUE, got {arg:?}"))?;
        let failed = |e: std::io::Error| format!("{arg}: {e}");
        let fd: OwnedFd = match option {
            "--tcp" => TcpListener::bind(value).map_err(failed)?.into(),
            "--udp" => UdpSocket::bind(value).map_err(failed)?.into(),
            "--unix" => UnixListener::bind(value).map_err(failed)?.into(),
            "--file" => File::open(value).map_err(failed)?.into(),
            "--connection" => {
                let listener = TcpListener::bind(value).map_err(failed)?;
                let addr = listener.local_addr().map_err(failed)?;
                let _client = TcpStream::connect(addr).map_err(failed)?;
                let (accepted, _) = listener.accept().map_err(failed)?;
                peers.push(listener);
                std::mem::forget(_client);
                accepted.into()
            }
            "--names" => {
                names = Some(value.to_string());
                continue;
            }
            "--pid" => {
                pid = value.to_string();
                continue;
            }
            _ => return Err(format!("unknown option {option:?}")),
        };
        sockets.push(fd);
    }
    let program: Vec<String> = args.collect();
    let Some((name, rest)) = program.split_first() else {
        return Err("no program given after --".to_string());
    };
    // Out of the way of 3..3+n first (close-on-exec copies), then dup2
    // into place: dup2 clears close-on-exec, so only 3..3+n survive exec.
    let floor = 3 + sockets.len() as i32;
    let moved: Vec<i32> = sockets
        .iter()
        .map(|fd| {
            // SAFETY: fcntl(2) on a descriptor we own.
            let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
            if new < 0 {
                Err(format!("F_DUPFD: {}", std::io::Error::last_os_error()))
            } else {
                Ok(new)
            }
        })
        .collect::<Result<_, _>>()?;
    drop(sockets);
    for (i, fd) in moved.iter().enumerate() {
        // SAFETY: dup2(2) onto a number nothing of ours holds any more.
        if unsafe { libc::dup2(*fd, 3 + i as i32) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
    }
    let mut command = Command::new(name);
    command
        .args(rest)
        .env("LISTEN_FDS", moved.len().to_string())
        .env("LISTEN_PID", pid);
    match names {
        Some(names) => command.env("LISTEN_FDNAMES", names),
        None => command.env_remove("LISTEN_FDNAMES"),
    };
    let error = command.exec();
    drop(peers);
    Err(format!("failed to exec {name}: {error}"))
}
