//! `--notify-ready` and `--notify-timeout` (README "Readiness"): a
//! generation counts as started when it sends `READY=1` to the socket named
//! in its `NOTIFY_SOCKET`; `--interval` then only spaces attempts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::*;

/// The notify directory goes under the sandbox, so that a test can see
/// that nothing is left behind.
fn runtime_dir(sb: &Sandbox) -> PathBuf {
    let dir = sb.path("run");
    std::fs::create_dir_all(&dir).expect("create the runtime directory");
    dir
}

/// `(state, time_ms)` of every notification worker `pid` sent.
fn notifications(sb: &Sandbox, pid: i32) -> Vec<(String, u128)> {
    let text = std::fs::read_to_string(sb.tw_dir().join(format!("{pid}.notify")));
    text.unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with("result=sent"))
        .filter_map(|l| {
            let (state, rest) = l.split_once(' ')?;
            let ms = rest
                .split("time_ms=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((state.to_string(), ms))
        })
        .collect()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        found.push(entry.path());
        if entry.path().is_dir() {
            found.extend(entries(&entry.path()));
        }
    }
    found
}

/// The test worker, sending `READY=1` at once only as generation 1.
fn ready_only_as_first_generation() -> Vec<String> {
    let script = format!(
        "[ \"$SERVER_STARTER_GENERATION\" = 1 ] && export TW_READY=now; exec '{}'",
        test_worker_bin().display()
    );
    vec!["sh".into(), "-c".into(), script]
}

#[test]
fn old_workers_are_signalled_only_once_the_new_one_is_ready() {
    let sb = Sandbox::new();
    let run = runtime_dir(&sb);
    let srv = sb
        .server()
        .arg("--notify-ready")
        .env("RUNTIME_DIRECTORY", &run)
        .env("TW_READY", "after:300")
        .spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    let signalled_at = srv.wait_signal(old.pid, "TERM");
    srv.wait_status(&[(2, new.pid)]);
    let ready = notifications(&sb, new.pid);
    let ready_at = ready
        .iter()
        .find(|(s, _)| s == "READY=1")
        .map(|(_, t)| *t)
        .unwrap_or_else(|| panic!("no READY=1 from {}\n{}", new.pid, srv.describe()));
    assert!(
        signalled_at + 50 >= ready_at && ready_at >= new.written_ms + 250,
        "ready at {ready_at}, old signalled at {signalled_at}, started at {}\n{}",
        new.written_ms,
        srv.describe()
    );
    // Each generation has its own socket, in the private directory.
    let socket = |pid| sb.worker_env(pid).get("NOTIFY_SOCKET").cloned();
    let (first, second) = (socket(old.pid), socket(new.pid));
    assert!(first.is_some() && second.is_some() && first != second);
    assert!(second.unwrap().starts_with(run.to_str().unwrap()));
    srv.stop();
    assert_eq!(entries(&run), Vec::<PathBuf>::new(), "{}", srv.describe());
}

#[test]
fn a_worker_that_never_sends_ready_is_killed_and_retried_while_the_old_one_serves() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .args(["--notify-ready", "--notify-timeout=0.5"])
        .program(ready_only_as_first_generation())
        .spawn();
    let old = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_output(&format!(
        "new worker {} did not send READY=1 within 0.5 secs (--notify-ready), killing it",
        new.pid
    ));
    srv.wait_output(&format!(
        "new worker {} seems to have failed to start, exit status:9",
        new.pid
    ));
    srv.wait_worker(3);
    srv.wait_serving(old.pid);
    assert_eq!(sb.status_lines(), Some(vec![(1, old.pid)]));
    assert!(sb.signal_names_of(old.pid).is_empty(), "{}", srv.describe());
    srv.stop();
}

#[test]
fn an_exit_before_ready_is_a_failed_start_at_once() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("3")
        .arg("--notify-ready")
        .program(["sh", "-c", "exit 3"])
        .spawn();
    let started = Instant::now();
    let log = srv.wait_output("seems to have failed to start, exit status:768");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the failure waited for --interval\n{log}"
    );
    srv.stop();
}

#[test]
fn extend_timeout_usec_moves_the_deadline() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .args(["--notify-ready", "--notify-timeout=0.5"])
        .env("TW_EXTEND_USEC", "5000000")
        .env("TW_READY", "after:1200")
        .spawn();
    srv.wait_current(1);
    assert!(
        !srv.output().contains("did not send READY=1"),
        "{}",
        srv.describe()
    );
    srv.stop();
}

#[test]
fn ready_from_a_child_of_the_worker_counts() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("60")
        .arg("--notify-ready")
        .env("TW_READY", "now")
        .env("TW_NOTIFY_FROM_CHILD", "1")
        .spawn();
    let worker = srv.wait_current(1);
    let sent = notifications(&sb, worker.pid);
    assert!(
        sent.iter().any(|(s, _)| s == "READY=1"),
        "{sent:?}\n{}",
        srv.describe()
    );
    srv.stop();
}

#[test]
fn without_notify_ready_notify_socket_is_passed_through_unchanged() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    let worker = srv.wait_current(1);
    assert_eq!(sb.worker_env(worker.pid).get("NOTIFY_SOCKET"), None);
    srv.stop();
    let sb = Sandbox::new();
    let srv = sb.server().env("NOTIFY_SOCKET", "/run/elsewhere").spawn();
    let worker = srv.wait_current(1);
    assert_eq!(
        sb.worker_env(worker.pid)
            .get("NOTIFY_SOCKET")
            .map(String::as_str),
        Some("/run/elsewhere")
    );
    srv.stop();
}

/// Sends `state` to the notify socket at `path` as another user (nobody),
/// from a forked child that makes only raw system calls.
fn notify_as_nobody(path: &str, state: &str) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    // Everything the child needs is built before the fork.
    // SAFETY: a zeroed sockaddr_un is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr
        .sun_path
        .iter_mut()
        .zip(std::ffi::OsStr::new(path).as_bytes())
    {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let bytes = state.as_bytes().to_vec();
    // SAFETY: the child only makes async-signal-safe system calls (setgid,
    // setuid, socket, sendto, _exit) on memory prepared above.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let code = if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                2
            } else {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
                let sent = libc::sendto(
                    fd,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&raw const addr).cast(),
                    len,
                );
                if sent < 0 { 1 } else { 0 }
            };
            libc::_exit(code);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        libc::WEXITSTATUS(status)
    }
}

#[test]
fn ready_from_another_user_is_not_heard_and_passed_fds_are_closed() {
    use nix::sys::socket::{
        AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sendmsg, socket,
    };
    use std::io::{IoSlice, Read};
    use std::os::fd::AsRawFd;

    let sb = Sandbox::new();
    let run = runtime_dir(&sb);
    // The test worker sends nothing: this test speaks for it.
    let srv = sb
        .server()
        .args(["--notify-ready", "--notify-timeout=0"])
        .env("RUNTIME_DIRECTORY", &run)
        .spawn();
    let worker = srv.wait_worker(1);
    let socket_path = sb
        .worker_env(worker.pid)
        .get("NOTIFY_SOCKET")
        .cloned()
        .unwrap_or_else(|| panic!("no NOTIFY_SOCKET\n{}", srv.describe()));

    // Another user cannot reach the socket (its directory is ours alone).
    if running_as_root() {
        assert_ne!(
            notify_as_nobody(&socket_path, "READY=1"),
            2,
            "setuid failed"
        );
    }

    // A descriptor passed along with a notification is closed at once: the
    // write end of a pipe sent there, closed here, leaves the read end at
    // end of file only once start_server has closed its copy too.
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    let sender = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let to = UnixAddr::new(socket_path.as_str()).expect("socket address");
    let fds = [write_end.as_raw_fd()];
    sendmsg(
        sender.as_raw_fd(),
        &[IoSlice::new(b"STATUS=starting")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        Some(&to),
    )
    .expect("sendmsg with a descriptor");
    drop(write_end);
    let mut reader = std::fs::File::from(read_end);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        let _ = tx.send(reader.read(&mut buf).map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(0)) => {}
        other => panic!(
            "the passed descriptor was not closed: {other:?}\n{}",
            srv.describe()
        ),
    }

    // Neither made the generation current; READY=1 from us (its user) does.
    assert_eq!(sb.status_lines(), None, "{}", srv.describe());
    let ready = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    sendmsg::<UnixAddr>(
        ready.as_raw_fd(),
        &[IoSlice::new(b"READY=1")],
        &[],
        MsgFlags::empty(),
        Some(&to),
    )
    .expect("send READY=1");
    srv.wait_current(1);
    srv.stop();
}
