//! A worker that speaks only socket activation (`sd_listen_fds(3)`), as
//! servers built on libsystemd, go-systemd or listenfd do: it takes its
//! sockets from fds 3, 4, ... only when `LISTEN_PID` is its own pid, and
//! ignores `SERVER_STARTER_PORT`.
//!
//! It writes `$LFW_DIR/PID.listen` (atomically) with `pid=`,
//! `listen_pid=`, `listen_fds=`, `listen_fdnames=`, `server_starter_port=`
//! and one `fd.N=INODE` line per fd 3.. (the socket inode, `none` when
//! the fd is not a socket), then answers every connection on every
//! stream socket with `pid=PID generation=GEN` and closes it. It exits
//! when its parent goes away; TERM ends it as the default action does.
//! Exit 2: `LISTEN_PID` is not its pid, or `LISTEN_FDS` is missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let pid = std::process::id();
    let count: i32 = match (var("LISTEN_PID").parse::<u32>(), var("LISTEN_FDS").parse()) {
        (Ok(p), Ok(n)) if p == pid && n > 0 => n,
        _ => {
            eprintln!(
                "listen_fds_worker: not socket-activated (LISTEN_PID={:?}, LISTEN_FDS={:?}, pid {pid})",
                var("LISTEN_PID"),
                var("LISTEN_FDS")
            );
            std::process::exit(2);
        }
    };
    let mut report = format!(
        "pid={pid}\nlisten_pid={}\nlisten_fds={}\nlisten_fdnames={}\nserver_starter_port={}\n",
        var("LISTEN_PID"),
        var("LISTEN_FDS"),
        var("LISTEN_FDNAMES"),
        var("SERVER_STARTER_PORT")
    );
    for fd in 3..3 + count {
        let inode = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .ok()
            .filter(|m| m.mode() & libc::S_IFMT == libc::S_IFSOCK)
            .map_or_else(|| "none".to_string(), |m| m.ino().to_string());
        report.push_str(&format!("fd.{fd}={inode}\n"));
    }
    if let Some(dir) = std::env::var_os("LFW_DIR") {
        let dir = std::path::PathBuf::from(dir);
        let tmp = dir.join(format!(".{pid}.listen"));
        if std::fs::write(&tmp, &report).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(format!("{pid}.listen")));
        }
    }
    let body = format!(
        "pid={pid} generation={}\n",
        var("SERVER_STARTER_GENERATION")
    );
    for fd in 3..3 + count {
        let body = body.clone();
        std::thread::spawn(move || serve(fd, &body));
    }
    // SAFETY: getppid(2) cannot fail.
    let parent = unsafe { libc::getppid() };
    // SAFETY: as above.
    while unsafe { libc::getppid() } == parent {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Accepts on `fd` (a listening stream socket of any family) for ever.
fn serve(fd: i32, body: &str) {
    loop {
        // SAFETY: accept(2) with no address wanted.
        let conn = unsafe { libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) };
        if conn < 0 {
            // Not a listening stream socket (UDP), or it is gone.
            return;
        }
        // SAFETY: accept just returned this descriptor; the stream owns it.
        let mut stream = unsafe { TcpStream::from_raw_fd(conn) };
        let mut request = [0u8; 1024];
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = stream.read(&mut request);
        let _ = stream.write_all(
            format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
}
