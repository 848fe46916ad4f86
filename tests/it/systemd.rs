//! systemd and containers without a running systemd (README "systemd",
//! "Containers"): the sd_notify messages start_server sends to a
//! test-owned `NOTIFY_SOCKET` (with their credentials), socket activation
//! in (the `activate` example places sockets at fds 3.. and execs
//! start_server) and out (`--systemd-listen-fds`, checked by the
//! `listen_fds_worker` example), `--subreaper`, and start_server as PID 1
//! of a new PID namespace.
//!
//! All of these are extensions (COMPATIBILITY.md, "Extensions"): against
//! the Perl reference (`START_SERVER_BIN`) they fail.

use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
};

use crate::support::*;

fn example_bin(name: &str) -> PathBuf {
    test_worker_bin().with_file_name(name)
}

/// A notify socket the test owns: what start_server sends, with the
/// sender's pid from `SCM_CREDENTIALS`.
struct Receiver {
    socket: UnixDatagram,
    /// The `NOTIFY_SOCKET` value naming it.
    address: String,
}

impl Receiver {
    fn at_path(path: &Path) -> Receiver {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        Receiver::with(socket, path.display().to_string())
    }

    fn abstract_name(name: &str) -> Receiver {
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name).expect("abstract address");
        let socket = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        Receiver::with(socket, format!("@{name}"))
    }

    fn with(socket: UnixDatagram, address: String) -> Receiver {
        setsockopt(&socket, sockopt::PassCred, &true).expect("SO_PASSCRED");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        Receiver { socket, address }
    }

    /// One datagram and its sender's pid, if one comes within 100 ms.
    fn next(&self) -> Option<(String, i32)> {
        let mut buf = [0u8; 4096];
        let mut space = nix::cmsg_space!(UnixCredentials, [std::os::fd::RawFd; 4]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .ok()?;
        let mut pid = -1;
        for c in msg.cmsgs().ok()? {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => pid = cred.pid(),
                // A barrier's fd: closing it is the answer.
                ControlMessageOwned::ScmRights(fds) => {
                    for fd in fds {
                        // SAFETY: just received, owned by nobody else.
                        drop(unsafe {
                            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                        });
                    }
                }
                _ => {}
            }
        }
        let len = msg.bytes;
        Some((String::from_utf8_lossy(&buf[..len]).into_owned(), pid))
    }

    /// Every datagram until one that has the line `line`; that one last.
    fn until(&self, srv: &Server, line: &str) -> Vec<(String, i32)> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Some((text, pid)) = self.next() {
                let done = text.lines().any(|l| l == line);
                seen.push((text, pid));
                if done {
                    return seen;
                }
            }
        }
        panic!(
            "no {line:?} datagram within {TIMEOUT:?}; got {seen:?}\n{}",
            srv.describe()
        );
    }

    /// Everything that came, waiting `quiet` for more.
    fn drain(&self, quiet: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            if let Some((text, _)) = self.next() {
                seen.push(text);
            }
        }
        seen
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes into the local timespec only.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The wrapper that runs start_server as PID 1 of a new PID namespace
/// (`unshare` with `flags`), or `None`, the test reported skipped, where
/// that is not permitted.
fn unshare_or_skip(flags: &[&str]) -> Option<Vec<String>> {
    let probe = Command::new("unshare").args(flags).arg("true").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip(&format!(
            "unshare {} is not permitted here",
            flags.join(" ")
        ));
        return None;
    }
    let mut wrapper = vec!["unshare".to_string()];
    wrapper.extend(flags.iter().map(|f| f.to_string()));
    Some(wrapper)
}

/// start_server's host pid, as unshare's child (PID 1 inside).
fn pid_1(srv: &Server) -> i32 {
    srv.wait_value("start_server in its namespace", || {
        children_of(srv.pid()).first().copied()
    })
}

/// Waits until a worker of `generation` answers (pids inside a PID
/// namespace differ from ours, generations do not).
fn wait_generation_answering(srv: &Server, generation: i32) {
    srv.wait_value("a worker of the generation answering", || {
        let body = http_get(srv.sb.port).ok()?;
        (answer_generation(&body) == Some(generation)).then_some(())
    })
}

fn field(datagram: &str, name: &str) -> Option<String> {
    datagram
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

#[test]
fn systemd_notify_ready_reloading_ready_stopping_from_start_server() {
    let sb = Sandbox::new();
    let rx = Receiver::at_path(&sb.path("notify.sock"));
    let srv = sb
        .server()
        .interval("0.3")
        .env("NOTIFY_SOCKET", &rx.address)
        .spawn();
    let first = rx.until(&srv, "READY=1");
    let worker = srv.wait_current(1);
    let (ready, sender) = first.last().expect("a datagram");
    assert_eq!(*sender, srv.pid(), "READY=1 from another process");
    assert_eq!(
        field(ready, "STATUS").as_deref(),
        Some(format!("generation 1 (pid {}) running", worker.pid).as_str()),
        "{first:?}"
    );
    // The workers never see the service manager's socket.
    assert!(
        !sb.worker_env(worker.pid).contains_key("NOTIFY_SOCKET"),
        "{:?}",
        sb.worker_env(worker.pid)
    );

    // HUP: RELOADING=1 stamped after the HUP was sent, then READY=1 once
    // generation 2 is current (what Type=notify-reload waits for).
    let before = monotonic_usec();
    srv.signal(Signal::SIGHUP);
    let reload = rx.until(&srv, "RELOADING=1");
    let after = monotonic_usec();
    let (reloading, sender) = reload.last().expect("a datagram");
    assert_eq!(*sender, srv.pid());
    let stamp: u64 = field(reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(
        before <= stamp && stamp <= after,
        "MONOTONIC_USEC={stamp} not within [{before}, {after}]"
    );
    let done = rx.until(&srv, "READY=1");
    let second = srv.wait_current(2);
    assert!(
        done.iter()
            .all(|(d, _)| !d.contains("READY=1") || d.contains(&second.pid.to_string())),
        "{done:?}"
    );

    srv.signal(Signal::SIGTERM);
    let stopping = rx.until(&srv, "STOPPING=1");
    assert_eq!(stopping.last().map(|(_, p)| *p), Some(srv.pid()));
    srv.wait_exit(TIMEOUT);
}

#[test]
fn systemd_notify_to_an_abstract_socket() {
    let sb = Sandbox::new();
    let name = format!("start-server-it/{}/{}", std::process::id(), sb.port);
    let rx = Receiver::abstract_name(&name);
    let srv = sb.server().env("NOTIFY_SOCKET", &rx.address).spawn();
    let ready = rx.until(&srv, "READY=1");
    assert_eq!(ready.last().map(|(_, p)| *p), Some(srv.pid()));
    srv.stop();
}

#[test]
fn systemd_notify_pass_hands_the_socket_on_and_off_sends_nothing() {
    for (mode, passed) in [("pass", true), ("off", false)] {
        let sb = Sandbox::new();
        let rx = Receiver::at_path(&sb.path("notify.sock"));
        let srv = sb
            .server()
            .arg(format!("--systemd-notify={mode}"))
            .env("NOTIFY_SOCKET", &rx.address)
            .env("WATCHDOG_USEC", "100000")
            .spawn();
        let worker = srv.wait_current(1);
        let env = sb.worker_env(worker.pid);
        assert_eq!(
            env.get("NOTIFY_SOCKET") == Some(&rx.address),
            passed,
            "--systemd-notify={mode}: {env:?}"
        );
        assert_eq!(env.contains_key("WATCHDOG_USEC"), passed, "{mode}: {env:?}");
        srv.signal(Signal::SIGHUP);
        srv.wait_current(2);
        srv.stop();
        let got = rx.drain(Duration::from_millis(300));
        assert!(got.is_empty(), "--systemd-notify={mode} sent {got:?}");
    }
}

#[test]
fn systemd_notify_rejects_an_unknown_mode() {
    let sb = Sandbox::new();
    let out = sb.run(["--systemd-notify=maybe", "--", "true"]);
    out.assert_usage_error("invalid --systemd-notify value \"maybe\": must be auto, off or pass");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
}

#[test]
fn watchdog_keepalives_for_our_pid() {
    let sb = Sandbox::new();
    let rx = Receiver::at_path(&sb.path("notify.sock"));
    let srv = sb
        .server()
        .env("NOTIFY_SOCKET", &rx.address)
        .env("WATCHDOG_USEC", "200000")
        .spawn();
    // Every 100 ms: several within a second, all from start_server.
    for _ in 0..3 {
        let got = rx.until(&srv, "WATCHDOG=1");
        assert_eq!(got.last().map(|(_, p)| *p), Some(srv.pid()));
    }
    let worker = srv.wait_current(1);
    let env = sb.worker_env(worker.pid);
    assert!(!env.contains_key("WATCHDOG_USEC"), "{env:?}");
    srv.stop();
}

/// The pid the `--daemonize` daemon wrote to the pid file.
fn daemon_pid(sb: &Sandbox) -> i32 {
    std::fs::read_to_string(sb.pid_file())
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// Stops the daemon with `--stop`, waiting for it.
fn stop_daemon(sb: &Sandbox, launcher: &Server) {
    let stop = launcher.client([
        "--stop".into(),
        format!("--pid-file={}", sb.pid_file().display()),
    ]);
    stop.finish(TIMEOUT).assert_success();
}

#[test]
fn watchdog_keepalives_from_the_daemon_when_systemd_named_the_first_process() {
    let sb = Sandbox::new();
    let rx = Receiver::at_path(&sb.path("notify.sock"));
    // WATCHDOG_PID is the pid systemd exec'd: the process that daemonizes.
    let launcher = sb
        .server()
        .arg("--daemonize")
        .wrapper(["sh", "-c", "WATCHDOG_PID=$$ exec \"$@\"", "sh"])
        .env("NOTIFY_SOCKET", &rx.address)
        .env("WATCHDOG_USEC", "200000")
        .spawn();
    // Reading the barrier answers it: the launcher exits at once.
    rx.until(&launcher, "BARRIER=1");
    let status = launcher.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", launcher.describe());
    let daemon = daemon_pid(&sb);
    // Every 100 ms, from the daemon (before the fix: none at all).
    for _ in 0..3 {
        let got = rx.until(&launcher, "WATCHDOG=1");
        assert_eq!(got.last().map(|(_, p)| *p), Some(daemon), "{got:?}");
    }
    stop_daemon(&sb, &launcher);
}

#[test]
fn with_notify_ready_the_workers_ready_goes_to_start_server_only() {
    let sb = Sandbox::new();
    let rx = Receiver::at_path(&sb.path("notify.sock"));
    let srv = sb
        .server()
        .arg("--notify-ready")
        .env("NOTIFY_SOCKET", &rx.address)
        .env("TW_READY", "now")
        .spawn();
    let got = rx.until(&srv, "READY=1");
    let worker = srv.wait_current(1);
    assert!(
        got.iter().all(|(_, pid)| *pid == srv.pid()),
        "a datagram not from start_server: {got:?}"
    );
    let env = sb.worker_env(worker.pid);
    assert_ne!(env.get("NOTIFY_SOCKET"), Some(&rx.address), "{env:?}");
    srv.stop();
    let rest = rx.drain(Duration::from_millis(200));
    assert!(rest.iter().all(|d| !d.contains("READY=1")), "{rest:?}");
}

#[test]
fn a_fatal_start_up_error_is_reported_with_its_errno() {
    let sb = Sandbox::new();
    let rx = Receiver::at_path(&sb.path("notify.sock"));
    let _holder = std::net::TcpListener::bind(sb.host_port()).expect("hold the port");
    let out = sb.run_env(
        &[("NOTIFY_SOCKET", &rx.address)],
        [
            format!("--port={}", sb.host_port()),
            "--".to_string(),
            "true".to_string(),
        ],
    );
    assert!(!out.status.success(), "{}", out.describe());
    let (datagram, _) = rx.next().expect("a STATUS= datagram about the failure");
    assert_eq!(
        field(&datagram, "ERRNO").as_deref(),
        Some("98"),
        "{datagram:?}"
    );
    assert!(datagram.contains("STATUS=failed to start"), "{datagram:?}");
}

#[test]
fn with_daemonize_the_first_process_reports_the_daemons_setup_error() {
    let sb = Sandbox::new();
    let rx = Receiver::at_path(&sb.path("notify.sock"));
    // Writing the pid fails after the fork, in the daemon: a FIFO opens
    // and locks, but cannot be truncated.
    let fifo = sb.path("fifo.pid");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let launcher = sb
        .server()
        .no_pid_file()
        .arg("--daemonize")
        .arg(format!("--pid-file={}", fifo.display()))
        .env("NOTIFY_SOCKET", &rx.address)
        .spawn();
    let status = launcher.wait_exit(TIMEOUT);
    assert!(!status.success(), "{}", launcher.describe());
    // From the main pid (NotifyAccess=main), once.
    let got: Vec<(String, i32)> = std::iter::from_fn(|| rx.next())
        .filter(|(d, _)| d.contains("failed to start"))
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let (datagram, sender) = &got[0];
    assert_eq!(*sender, launcher.pid(), "{got:?}");
    assert!(
        datagram.starts_with("STATUS=failed to start: failed to write pid file"),
        "{datagram:?}"
    );
    assert_eq!(
        field(datagram, "ERRNO").as_deref(),
        Some("22"),
        "{datagram:?}"
    );
}

/// `activate SOCKETS... -- ` to put before start_server.
fn activate(sockets: &[String]) -> Vec<String> {
    let mut argv = vec![example_bin("activate").display().to_string()];
    argv.extend(sockets.iter().cloned());
    argv.push("--".to_string());
    argv
}

#[test]
fn socket_activation_in_adopts_the_sockets_by_address() {
    let sb = Sandbox::new();
    let path = sb.path("app.sock");
    let srv = sb
        .server()
        .wrapper(activate(&[
            format!("--tcp={}", sb.host_port()),
            format!("--unix={}", path.display()),
            "--names=web:admin".to_string(),
        ]))
        .arg(format!("--path={}", path.display()))
        .env("LISTEN_FDNAMES", "stale")
        .spawn();
    let worker = srv.wait_current(1);
    // Not bound again (the port and the path are taken): adopted.
    let out = srv.output();
    assert!(
        out.contains(&format!(
            "using socket from systemd for {} (fd 3)",
            sb.host_port()
        )) && out.contains(&format!(
            "using socket from systemd for {} (fd 4)",
            path.display()
        )),
        "{}",
        srv.describe()
    );
    assert_eq!(
        worker.port_env(),
        format!("{}=3;{}=4", sb.host_port(), path.display())
    );
    let env = sb.worker_env(worker.pid);
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        assert!(
            !env.contains_key(name),
            "{name} reached the worker: {env:?}"
        );
    }
    assert_eq!(
        answer_pid(&http_get(sb.port).expect("tcp")),
        Some(worker.pid)
    );
    assert_eq!(
        answer_pid(&http_get_unix(&path).expect("unix")),
        Some(worker.pid)
    );
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    srv.wait_serving(second.pid);
    srv.stop();
    // The socket file is the service manager's: never removed by us.
    assert!(path.exists(), "the inherited socket file was removed");
}

#[test]
fn socket_activation_in_without_options_passes_every_socket_on() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .no_port()
        .wrapper(activate(&[format!("--tcp=0.0.0.0:{}", sb.port)]))
        .spawn();
    let worker = srv.wait_current(1);
    assert_eq!(worker.port_env(), format!("{}=3", sb.port));
    assert_eq!(
        answer_pid(&http_get(sb.port).expect("tcp")),
        Some(worker.pid)
    );
    srv.stop();
}

#[test]
fn socket_activation_in_keeps_the_sockets_and_variables_from_the_log_command() {
    let sb = Sandbox::new();
    let rx = Receiver::at_path(&sb.path("notify.sock"));
    let log = sb.path("piped.log");
    let srv = sb
        .server()
        .no_port()
        .no_log_file()
        .arg(format!("--log-file=| cat >>{}", log.display()))
        .env("NOTIFY_SOCKET", &rx.address)
        .wrapper(activate(&[format!("--tcp=0.0.0.0:{}", sb.port)]))
        .spawn();
    let worker = srv.wait_current(1);
    // The log command's shell, and what it runs.
    let mut log_processes: Vec<i32> = children_of(srv.pid())
        .into_iter()
        .filter(|&p| p != worker.pid)
        .collect();
    log_processes.extend(
        log_processes
            .clone()
            .into_iter()
            .flat_map(children_of)
            .collect::<Vec<_>>(),
    );
    assert!(!log_processes.is_empty(), "{}", srv.describe());
    for pid in log_processes {
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the log command's fds")
            .flatten()
            .filter_map(|e| Some(std::fs::read_link(e.path()).ok()?.display().to_string()))
            .collect();
        assert!(
            !fds.iter().any(|f| f.starts_with("socket:")),
            "log process {pid} holds {fds:?}"
        );
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        let names: Vec<String> = environ
            .split(|&b| b == 0)
            .filter_map(|kv| Some(String::from_utf8_lossy(kv).split_once('=')?.0.to_string()))
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("LISTEN_") || n == "NOTIFY_SOCKET"),
            "log process {pid} has {names:?}"
        );
    }
    srv.stop();
}

#[test]
fn socket_activation_in_ignores_sockets_for_another_pid() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .wrapper(activate(&[
            format!("--tcp={}", sb.host_port()),
            "--pid=1".to_string(),
        ]))
        .spawn();
    srv.wait_exit(TIMEOUT);
    let out = srv.output();
    assert!(
        out.contains(&format!("failed to bind to {}", sb.host_port()))
            && out.contains("Address already in use"),
        "{}",
        srv.describe()
    );
}

#[test]
fn socket_activation_in_refuses_accept_yes_connections() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .no_port()
        .wrapper(activate(&[format!("--connection={}", sb.host_port())]))
        .spawn();
    let status = srv.wait_exit(TIMEOUT);
    assert!(!status.success(), "{}", srv.describe());
    let err = srv.stderr();
    assert!(
        err.contains("fd 3 from systemd is a connection, not a listening socket (Accept=yes"),
        "{}",
        srv.describe()
    );
    assert_eq!(
        err.lines().count(),
        2,
        "one line (after the start line): {err}"
    );
}

fn listen_report(
    sb: &Sandbox,
    srv: &Server,
    pid: i32,
) -> std::collections::BTreeMap<String, String> {
    srv.wait_value("the listen_fds_worker report", || {
        let text = std::fs::read_to_string(sb.tw_dir().join(format!("{pid}.listen"))).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    })
}

fn socket_inode(pid: i32, fd: i32) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let link = link.to_string_lossy().into_owned();
    Some(
        link.strip_prefix("socket:[")?
            .strip_suffix(']')?
            .to_string(),
    )
}

#[test]
fn systemd_listen_fds_hands_sockets_to_a_socket_activated_worker() {
    let sb = Sandbox::new();
    let path = sb.path("app.sock");
    let srv = sb
        .server()
        .arg(format!("--path={}", path.display()))
        .arg("--systemd-listen-fds")
        .program([example_bin("listen_fds_worker")])
        .env("LFW_DIR", sb.tw_dir())
        .spawn();
    for generation in 1..=2 {
        let pid = srv.wait_value("a worker answering", || {
            let body = http_get(sb.port).ok()?;
            (answer_generation(&body) == Some(generation)).then(|| answer_pid(&body))?
        });
        let report = listen_report(&sb, &srv, pid);
        assert_eq!(report["listen_pid"], pid.to_string(), "{report:?}");
        assert_eq!(report["listen_fds"], "2", "{report:?}");
        assert_eq!(
            report["listen_fdnames"],
            format!("127.0.0.1_{}:{}", sb.port, path.display()),
            "{report:?}"
        );
        assert_eq!(
            report["server_starter_port"],
            format!("{}=3;{}=4", sb.host_port(), path.display())
        );
        // fds 3 and 4 are start_server's sockets, in order.
        assert_eq!(Some(&report["fd.3"]), socket_inode(srv.pid(), 3).as_ref());
        assert_eq!(Some(&report["fd.4"]), socket_inode(srv.pid(), 4).as_ref());
        assert_eq!(
            answer_pid(&http_get_unix(&path).expect("unix")),
            Some(pid),
            "{}",
            srv.describe()
        );
        srv.signal(Signal::SIGHUP);
    }
    srv.stop();
}

#[test]
fn systemd_listen_fds_keeps_pins_and_refuses_pins_in_the_way() {
    let sb = Sandbox::new();
    let pinned = sb
        .server()
        .no_port()
        .arg(format!("--port={}=9", sb.host_port()))
        .arg("--systemd-listen-fds")
        .spawn();
    let worker = pinned.wait_current(1);
    assert_eq!(worker.port_env(), format!("{}=9", sb.host_port()));
    let env = sb.worker_env(worker.pid);
    assert_eq!(env.get("LISTEN_FDS").map(String::as_str), Some("1"));
    assert_eq!(
        env.get("LISTEN_PID").map(String::as_str),
        Some(worker.pid.to_string().as_str())
    );
    assert!(
        worker.fds().contains(&3) && worker.fds().contains(&9),
        "{:?}",
        worker.fds()
    );
    pinned.stop();

    let other = free_port();
    let out = sb.run([
        format!("--port={}=4", sb.host_port()),
        format!("--port=127.0.0.1:{other}"),
        "--systemd-listen-fds".to_string(),
        "--".to_string(),
        "true".to_string(),
    ]);
    out.assert_failure("--systemd-listen-fds puts the sockets at fds 3-4");
}

/// The orphan a worker leaves (`TW_ORPHAN_MS`), once it is written.
fn orphan_of(sb: &Sandbox, srv: &Server, worker: i32) -> i32 {
    srv.wait_value("the orphan's pid", || {
        std::fs::read_to_string(sb.tw_dir().join(format!("{worker}.orphan")))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn subreaper_adopts_orphans_and_stops_them_at_shutdown() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .arg("--subreaper")
        .env("TW_ORPHAN_MS", "60000")
        .spawn();
    let worker = srv.wait_current(1);
    let orphan = orphan_of(&sb, &srv, worker.pid);
    srv.wait_for("the orphan to be re-parented to start_server", || {
        proc_stat_field(orphan, 4) == Some(i64::from(srv.pid()))
    });
    srv.signal(Signal::SIGTERM);
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
    assert!(!pid_alive(orphan), "orphan {orphan} outlived start_server");
    let out = srv.output();
    assert!(
        out.contains(&format!("sending TERM to orphaned processes:{orphan}"))
            && !out.contains(&format!("worker {orphan} ")),
        "{}",
        srv.describe()
    );
}

/// A worker (ignoring TERM if `stubborn`) that leaves orphan A, ignoring
/// TERM, whose own child B ignores TERM too: B is re-parented to
/// start_server only once A was killed. Under `--subreaper
/// --signal-timeout=3`, up and running: start_server, A and B.
fn stubborn_orphans(sb: &Sandbox, stubborn: bool) -> (Server<'_>, i32, i32) {
    let dir = sb.dir().display();
    let b = format!("echo $$ >{dir}/b.pid; exec sleep 600");
    let a = format!("trap '' TERM; sh -c '{b}' & echo $$ >{dir}/a.pid; exec sleep 600");
    let trap = if stubborn { "trap '' TERM; " } else { "" };
    // In double quotes: each shell expands its own `$$`.
    let a = a.replace('$', "\\$");
    let worker = format!("{trap}(sh -c \"{a}\" &); exec sleep 600");
    let srv = sb
        .server()
        .args(["--subreaper", "--signal-timeout=3"])
        .program(["sh", "-c", &worker])
        .spawn();
    let pid_of = |name: &str| {
        srv.wait_value(&format!("{name}.pid"), || {
            let pid: i32 = std::fs::read_to_string(sb.path(&format!("{name}.pid")))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            // Written before its exec: wait for the sleep itself.
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
                .then_some(pid)
        })
    };
    let (a, b) = (pid_of("a"), pid_of("b"));
    srv.wait_for("A to be re-parented to start_server", || {
        proc_stat_field(a, 4) == Some(i64::from(srv.pid()))
    });
    (srv, a, b)
}

/// TERM, then the time start_server took to exit, and its output; the
/// orphans are gone.
fn stop_with_orphans(srv: &Server, orphans: [i32; 2]) -> (Duration, String) {
    let since = Instant::now();
    srv.signal(Signal::SIGTERM);
    let status = srv.wait_exit(TIMEOUT);
    let took = since.elapsed();
    assert!(status.success(), "{}", srv.describe());
    assert!(!orphans.into_iter().any(pid_alive), "{}", srv.describe());
    (took, srv.output())
}

#[test]
fn orphans_re_parented_after_the_signal_timeout_are_killed_too() {
    let sb = Sandbox::new();
    let (srv, a, b) = stubborn_orphans(&sb, false);
    let (_, out) = stop_with_orphans(&srv, [a, b]);
    // B came after A's KILL, and got KILL too, not only TERM.
    assert!(
        out.contains(&format!("sending TERM to orphaned processes:{a}\n"))
            && out.contains(&format!("sending KILL to orphaned processes:{a}\n"))
            && out.contains(&format!("sending KILL to orphaned processes:{b}\n")),
        "{out}"
    );
}

#[test]
fn orphans_get_the_signal_timeout_from_the_term_not_after_the_workers() {
    let sb = Sandbox::new();
    let (srv, a, b) = stubborn_orphans(&sb, true);
    let (took, out) = stop_with_orphans(&srv, [a, b]);
    // The worker's KILL and the orphans' both 3 s after the TERM, not the
    // orphans' 3 s after the worker's.
    assert!(took < Duration::from_millis(5500), "took {took:?}: {out}");
}

#[test]
fn as_pid_1_with_the_hosts_proc_orphans_are_left_to_the_kernel_needs_unshare() {
    let Some(unshare) = unshare_or_skip(&["--pid", "--fork"]) else {
        return;
    };
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .wrapper(&unshare)
        .env("TW_ORPHAN_MS", "60000")
        .spawn();
    // /proc lists host pids: the children start_server would see there are
    // not its own. It says so and exits; the kernel kills the rest of its
    // namespace with it.
    let pid1 = pid_1(&srv);
    srv.wait_for("a worker and its orphan under start_server", || {
        children_of(pid1).len() >= 2
    });
    let orphans = children_of(pid1);
    send_signal(pid1, Signal::SIGTERM);
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
    let out = srv.output();
    assert!(
        out.contains("not stopping orphaned processes: /proc is not this PID namespace's"),
        "{}",
        srv.describe()
    );
    srv.wait_for("the namespace's processes to be gone", || {
        !orphans.iter().copied().any(pid_alive)
    });
}

#[test]
fn as_pid_1_start_server_reaps_orphans_and_stops_on_term_needs_unshare() {
    let Some(unshare) = unshare_or_skip(&["--pid", "--fork", "--mount-proc"]) else {
        return;
    };
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .wrapper(&unshare)
        .env("TW_ORPHAN_MS", "60000")
        .spawn();
    // start_server is unshare's child, PID 1 inside.
    let pid1 = pid_1(&srv);
    assert_eq!(
        proc_status_field(pid1, "NSpid")
            .and_then(|f| f.split_whitespace().last().map(str::to_string))
            .as_deref(),
        Some("1")
    );
    // Pids inside the namespace differ from ours: watch the answers.
    wait_generation_answering(&srv, 1);
    // The orphan is re-parented to PID 1, i.e. start_server; a HUP
    // replaces the worker and its orphan is reaped silently.
    srv.wait_for("an orphan under start_server", || {
        children_of(pid1).len() >= 2
    });
    send_signal(pid1, Signal::SIGHUP);
    wait_generation_answering(&srv, 2);
    // TERM from outside, to its host pid: handled (a PID 1 without a
    // handler would ignore it).
    send_signal(pid1, Signal::SIGTERM);
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
    let out = srv.output();
    assert!(
        out.contains("sending TERM to orphaned processes:") && out.contains("exiting"),
        "{}",
        srv.describe()
    );
    assert!(!out.contains("died unexpectedly"), "{}", srv.describe());
}

#[test]
fn daemonize_tells_the_service_manager_the_daemons_pid_first() {
    let sb = Sandbox::new();
    let rx = Receiver::at_path(&sb.path("notify.sock"));
    let launcher = sb
        .server()
        .arg("--daemonize")
        .env("NOTIFY_SOCKET", &rx.address)
        .spawn();
    let got = rx.until(&launcher, "READY=1");
    let status = launcher.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", launcher.describe());
    let daemon = daemon_pid(&sb);
    // MAINPID= from the process the manager started, then the barrier,
    // and only then anything from the daemon.
    assert_eq!(
        got[0],
        (format!("MAINPID={daemon}\n"), launcher.pid()),
        "{got:?}"
    );
    assert_eq!(
        got[1],
        ("BARRIER=1\n".to_string(), launcher.pid()),
        "{got:?}"
    );
    assert!(got[2..].iter().all(|(_, pid)| *pid == daemon), "{got:?}");
    stop_daemon(&sb, &launcher);
}

#[test]
fn adopted_sockets_in_another_order_are_rearranged_for_listen_fds() {
    // systemd's fd 3 is the unix socket and fd 4 the TCP one; the options
    // name TCP first: the worker must get TCP at 3 and the unix socket at
    // 4, neither clobbered on the way.
    let sb = Sandbox::new();
    let path = sb.path("app.sock");
    let srv = sb
        .server()
        .wrapper(activate(&[
            format!("--unix={}", path.display()),
            format!("--tcp={}", sb.host_port()),
        ]))
        .arg(format!("--path={}", path.display()))
        .arg("--systemd-listen-fds")
        .program([example_bin("listen_fds_worker")])
        .env("LFW_DIR", sb.tw_dir())
        .spawn();
    let pid = srv.wait_value("a worker answering", || {
        answer_pid(&http_get(sb.port).ok()?)
    });
    let report = listen_report(&sb, &srv, pid);
    assert_eq!(
        report["server_starter_port"],
        format!("{}=3;{}=4", sb.host_port(), path.display())
    );
    assert_eq!(report["listen_fds"], "2", "{report:?}");
    assert_eq!(
        answer_pid(&http_get_unix(&path).expect("unix")),
        Some(pid),
        "{}",
        srv.describe()
    );
    srv.stop();
}

#[test]
fn an_upgrade_is_a_reload_to_the_service_manager_from_the_same_pid() {
    use crate::upgrade::{installed_copy, replace_binary, upgrade_args};
    let sb = Sandbox::new();
    let rx = Receiver::at_path(&sb.path("notify.sock"));
    let bin = installed_copy(&sb);
    let srv = sb
        .server()
        .binary(bin.clone())
        .env("NOTIFY_SOCKET", &rx.address)
        .spawn();
    rx.until(&srv, "READY=1");
    let worker = srv.wait_current(1);
    replace_binary(&bin);
    srv.client(upgrade_args(&sb))
        .finish(TIMEOUT)
        .assert_success();
    let reload = rx.until(&srv, "RELOADING=1");
    let done = rx.until(&srv, "READY=1");
    // MAINPID stays valid: both come from the pid systemd knows.
    for (_, sender) in reload.iter().chain(&done) {
        assert_eq!(*sender, srv.pid(), "{reload:?} {done:?}");
    }
    let (ready, _) = done.last().expect("a datagram");
    assert_eq!(
        field(ready, "STATUS").as_deref(),
        Some(format!("generation 1 (pid {}) running", worker.pid).as_str()),
        "{done:?}"
    );
    // The new image still speaks to it: a HUP is a reload as before.
    srv.signal(Signal::SIGHUP);
    rx.until(&srv, "RELOADING=1");
    rx.until(&srv, "READY=1");
    srv.wait_current(2);
    srv.stop();
}

#[test]
fn as_pid_1_start_server_upgrades_itself_needs_unshare() {
    use crate::upgrade::{exe_inode, installed_copy, replace_binary};
    let Some(unshare) = unshare_or_skip(&["--pid", "--fork", "--mount-proc"]) else {
        return;
    };
    let sb = Sandbox::new();
    let bin = installed_copy(&sb);
    let srv = sb.server().binary(bin.clone()).wrapper(&unshare).spawn();
    let pid1 = pid_1(&srv);
    wait_generation_answering(&srv, 1);
    let inode = replace_binary(&bin);
    send_signal(pid1, Signal::SIGUSR2);
    srv.wait_output("start_server (pid:1) upgraded from");
    assert_eq!(exe_inode(pid1), inode);
    wait_generation_answering(&srv, 1);
    send_signal(pid1, Signal::SIGHUP);
    wait_generation_answering(&srv, 2);
    send_signal(pid1, Signal::SIGTERM);
    let status = srv.wait_exit(TIMEOUT);
    assert!(status.success(), "{}", srv.describe());
}
