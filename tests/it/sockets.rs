//! `--port` (docs/behaviour.md section 2): every form of the table, `=N` pinning,
//! `SERVER_STARTER_PORT`, socket flags, bind errors.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crate::support::*;

/// `SERVER_STARTER_PORT` split into `(key, fd)` pairs, in order.
pub fn port_entries(value: &str) -> Vec<(String, i32)> {
    value
        .split(';')
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (key, fd) = e
                .rsplit_once('=')
                .unwrap_or_else(|| panic!("no =FD in {e:?} of {value:?}"));
            (
                key.to_string(),
                fd.parse().unwrap_or_else(|_| panic!("bad fd in {e:?}")),
            )
        })
        .collect()
}

/// Starts a server with exactly one `--port=spec`; returns it and its first
/// worker's report.
fn start_with_port<'a>(sb: &'a Sandbox, spec: &str) -> (Server<'a>, WorkerReport) {
    let srv = sb.server().no_port().arg(format!("--port={spec}")).spawn();
    let worker = srv.wait_current(1);
    (srv, worker)
}

/// The worker sees exactly one socket, of `kind`, under `key`.
fn assert_single_socket(srv: &Server, worker: &WorkerReport, key: &str, kind: &str) -> i32 {
    let entries = port_entries(worker.port_env());
    assert_eq!(entries.len(), 1, "{entries:?}\n{}", srv.describe());
    let (got_key, fd) = &entries[0];
    assert_eq!(got_key, key, "{}", srv.describe());
    let socks = worker.socks();
    let sock = socks
        .get(fd)
        .unwrap_or_else(|| panic!("worker has no socket on fd {fd}: {socks:?}"));
    assert_eq!(sock.kind, kind, "{}", srv.describe());
    *fd
}

fn ipv4(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn ipv6(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
}

#[test]
fn port_only_binds_tcp_on_all_ipv4_addresses() {
    let sb = Sandbox::new();
    let port = sb.port;
    let (srv, worker) = start_with_port(&sb, &port.to_string());
    assert_single_socket(&srv, &worker, &port.to_string(), "tcp4");
    assert_eq!(
        tcp_listen_entries(port, false),
        [format!("00000000:{port:04X}")]
    );
    assert!(tcp_listen_entries(port, true).is_empty(), "IPv4 only");
    let body = http_get(port).expect("GET");
    assert_eq!(answer_pid(&body), Some(worker.pid));
    assert_eq!(answer_generation(&body), Some(1));
}

#[test]
fn host_port_binds_that_address() {
    let sb = Sandbox::new();
    let key = sb.host_port();
    let (srv, worker) = start_with_port(&sb, &key);
    assert_single_socket(&srv, &worker, &key, "tcp4");
    assert_eq!(
        tcp_listen_entries(sb.port, false),
        [format!("0100007F:{:04X}", sb.port)]
    );
    srv.wait_serving(worker.pid);
}

#[test]
fn localhost_is_resolved_and_kept_as_written_in_the_key() {
    let sb = Sandbox::new();
    let key = format!("localhost:{}", sb.port);
    let (srv, worker) = start_with_port(&sb, &key);
    assert_single_socket(&srv, &worker, &key, "tcp4");
    assert_eq!(
        tcp_listen_entries(sb.port, false),
        [format!("0100007F:{:04X}", sb.port)]
    );
    srv.wait_serving(worker.pid);
}

#[test]
fn bracketed_ipv6_binds_tcp6() {
    let sb = Sandbox::new();
    let key = format!("[::1]:{}", sb.port);
    let (srv, worker) = start_with_port(&sb, &key);
    assert_single_socket(&srv, &worker, &key, "tcp6");
    let body = http_get_addr(ipv6(sb.port)).expect("GET over IPv6");
    assert_eq!(answer_pid(&body), Some(worker.pid));
}

#[test]
fn ipv6_wildcard_is_v6only() {
    let sb = Sandbox::new();
    let key = format!("[::]:{}", sb.port);
    let (srv, worker) = start_with_port(&sb, &key);
    assert_single_socket(&srv, &worker, &key, "tcp6");
    // With IPV6_V6ONLY the IPv4 side of the port stays free.
    let v4 = TcpListener::bind(("0.0.0.0", sb.port));
    assert!(v4.is_ok(), "IPv4 port taken: {v4:?}\n{}", srv.describe());
}

#[test]
fn bracketed_ipv4_is_accepted_and_keyed_without_brackets() {
    let sb = Sandbox::new();
    let (srv, worker) = start_with_port(&sb, &format!("[127.0.0.1]:{}", sb.port));
    assert_single_socket(&srv, &worker, &sb.host_port(), "tcp4");
    srv.wait_serving(worker.pid);
}

#[test]
fn u_prefixed_port_binds_udp() {
    let sb = Sandbox::new();
    let (srv, worker) = start_with_port(&sb, &format!("u{}", sb.port));
    assert_single_socket(&srv, &worker, &sb.port.to_string(), "udp4");
    assert!(
        tcp_listen_entries(sb.port, false).is_empty(),
        "no TCP listener"
    );
    let reply = udp_query(ipv4(sb.port)).expect("UDP reply");
    assert_eq!(answer_pid(&reply), Some(worker.pid), "{reply:?}");
}

#[test]
fn host_and_u_prefixed_port_binds_udp() {
    let sb = Sandbox::new();
    let (srv, worker) = start_with_port(&sb, &format!("127.0.0.1:u{}", sb.port));
    assert_single_socket(&srv, &worker, &sb.host_port(), "udp4");
    let reply = udp_query(ipv4(sb.port)).expect("UDP reply");
    assert_eq!(answer_pid(&reply), Some(worker.pid), "{reply:?}");
}

#[test]
fn bracketed_ipv6_and_u_prefixed_port_binds_udp6() {
    let sb = Sandbox::new();
    let key = format!("[::1]:{}", sb.port);
    let (srv, worker) = start_with_port(&sb, &format!("[::1]:u{}", sb.port));
    assert_single_socket(&srv, &worker, &key, "udp6");
    let reply = udp_query(ipv6(sb.port)).expect("UDP reply");
    assert_eq!(answer_pid(&reply), Some(worker.pid), "{reply:?}");
}

#[test]
fn fd_pinning_puts_the_socket_on_that_descriptor() {
    let sb = Sandbox::new();
    let (srv, worker) = start_with_port(&sb, &format!("{}=7", sb.host_port()));
    let fd = assert_single_socket(&srv, &worker, &sb.host_port(), "tcp4");
    assert_eq!(fd, 7);
    assert_eq!(worker.port_env(), format!("{}=7", sb.host_port()));
    assert!(
        srv.output()
            .contains("socket is duplicated to file descriptor 7"),
        "{}",
        srv.describe()
    );
    // The original descriptor was closed: fd 7 is the only socket.
    assert_eq!(worker.socks().len(), 1);
    srv.wait_serving(worker.pid);
}

#[test]
fn fd_pinning_of_a_udp_port() {
    let sb = Sandbox::new();
    let (srv, worker) = start_with_port(&sb, &format!("u{}=8", sb.port));
    let fd = assert_single_socket(&srv, &worker, &sb.port.to_string(), "udp4");
    assert_eq!(fd, 8);
    let reply = udp_query(ipv4(sb.port)).expect("UDP reply");
    assert_eq!(answer_pid(&reply), Some(worker.pid), "{reply:?}");
}

#[test]
fn fd_pinning_to_stdin() {
    let sb = Sandbox::new();
    let (srv, worker) = start_with_port(&sb, &format!("{}=0", sb.host_port()));
    let fd = assert_single_socket(&srv, &worker, &sb.host_port(), "tcp4");
    assert_eq!(fd, 0);
    srv.wait_serving(worker.pid);
}

#[test]
fn fd_pinning_to_the_sockets_own_number_keeps_it_open() {
    // docs/behaviour.md section 8: the reference closes the socket when N is the number
    // it already has. Without log, pid or status file, the first socket
    // gets the lowest free descriptor, 3.
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .no_port()
        .no_log_file()
        .no_pid_file()
        .arg(format!("--port={}=3", sb.host_port()))
        .spawn();
    let worker = srv.wait_current(1);
    let fd = assert_single_socket(&srv, &worker, &sb.host_port(), "tcp4");
    assert_eq!(fd, 3);
    srv.wait_serving(worker.pid);
}

#[test]
fn fd_pinning_onto_internal_descriptors_moves_them_out_of_the_way() {
    // docs/behaviour.md section 2: with the log, pid and status files open, low numbers
    // may be ours; the sockets get them and ours keep working.
    let sb = Sandbox::new();
    let ports = [free_port(), free_port(), free_port()];
    let mut builder = sb.server().no_port();
    for (i, port) in ports.iter().enumerate() {
        builder = builder.arg(format!("--port=127.0.0.1:{port}={}", i + 3));
    }
    let srv = builder.spawn();
    let worker = srv.wait_current(1);
    let socks = worker.socks();
    assert_eq!(
        socks.keys().copied().collect::<Vec<_>>(),
        [3, 4, 5],
        "{socks:?}"
    );
    for port in ports {
        let body = http_get(port).expect("GET");
        assert_eq!(answer_pid(&body), Some(worker.pid));
    }
    // The log file and the pid-file lock survived.
    srv.signal(Signal::SIGHUP);
    srv.wait_output("received HUP, spawning a new worker");
    srv.wait_current(2);
    assert!(pid_file_is_locked(&sb), "{}", srv.describe());
}

#[test]
fn white_space_around_parts_is_tolerated() {
    let sb = Sandbox::new();
    let other = free_port();
    let srv = sb
        .server()
        .no_port()
        .arg(format!("--port= 127.0.0.1: {} =9 ", sb.port))
        .arg(format!("--port= {other} "))
        .spawn();
    let worker = srv.wait_current(1);
    assert_eq!(
        port_entries(worker.port_env()),
        [
            (sb.host_port(), 9),
            (other.to_string(), port_entries(worker.port_env())[1].1)
        ]
    );
    srv.wait_serving(worker.pid);
    let body = http_get(other).expect("GET");
    assert_eq!(answer_pid(&body), Some(worker.pid));
}

#[test]
fn invalid_port_forms_are_errors_naming_the_value() {
    for spec in ["abc", "127.0.0.1:", "localhost:x", "80x", "u"] {
        let sb = Sandbox::new();
        let out = sb
            .server()
            .no_port()
            .arg(format!("--port={spec}"))
            .spawn()
            .finish(TIMEOUT);
        out.assert_failure("invalid");
        out.assert_failure(spec);
        assert!(!sb.pid_file().exists() && sb.worker_reports().is_empty());
    }
}

#[test]
fn unresolvable_host_is_an_error_naming_it() {
    let sb = Sandbox::new();
    let out = sb
        .server()
        .no_port()
        .arg(format!("--port=no-such-host.invalid:{}", sb.port))
        .spawn()
        .finish(TIMEOUT);
    out.assert_failure("no-such-host.invalid");
    assert!(!sb.pid_file().exists() && sb.worker_reports().is_empty());
}

#[test]
fn fd_pinning_to_stdout_or_stderr_is_refused() {
    // docs/behaviour.md section 8: the reference accepts =1 and =2.
    for n in [1, 2] {
        let sb = Sandbox::new();
        let out = sb
            .server()
            .no_port()
            .arg(format!("--port={}={n}", sb.host_port()))
            .spawn()
            .finish(TIMEOUT);
        assert!(!out.status.success(), "=${n} accepted\n{}", out.describe());
        assert!(!sb.pid_file().exists() && sb.worker_reports().is_empty());
    }
}

#[test]
fn fd_pinning_twice_to_the_same_number_is_refused() {
    // docs/behaviour.md section 8: the reference accepts it (the second socket wins).
    let sb = Sandbox::new();
    let out = sb
        .server()
        .no_port()
        .arg(format!("--port={}=5", sb.host_port()))
        .arg(format!("--port=127.0.0.1:{}=5", free_port()))
        .spawn()
        .finish(TIMEOUT);
    assert!(
        !out.status.success(),
        "duplicate =5 accepted\n{}",
        out.describe()
    );
    assert!(!sb.pid_file().exists() && sb.worker_reports().is_empty());
}

#[test]
fn server_starter_port_lists_ports_in_order_then_paths() {
    let sb = Sandbox::new();
    let (p1, p2) = (sb.port, free_port());
    let (a, b) = (sb.path("a.sock"), sb.path("b.sock"));
    let srv = sb
        .server()
        .no_port()
        .arg(format!("--path={}", a.display()))
        .arg(format!("--port=127.0.0.1:{p1}"))
        .arg(format!("--path={}", b.display()))
        .arg(format!("--port=u{p2}"))
        .spawn();
    let worker = srv.wait_current(1);
    let entries = port_entries(worker.port_env());
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    let (a, b) = (a.display().to_string(), b.display().to_string());
    assert_eq!(keys, [format!("127.0.0.1:{p1}"), p2.to_string(), a, b]);
    let socks = worker.socks();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|(_, fd)| socks.get(fd).map_or("missing", |s| s.kind.as_str()))
        .collect();
    assert_eq!(kinds, ["tcp4", "udp4", "unix", "unix"], "{socks:?}");
    assert!(!worker.port_env().ends_with(';') && !worker.port_env().starts_with(';'));
}

#[test]
fn no_port_at_all_gives_an_empty_server_starter_port() {
    let sb = Sandbox::new();
    let srv = sb.server().no_port().spawn();
    let worker = srv.wait_current(1);
    let env = sb.worker_env(worker.pid);
    assert_eq!(env.get("SERVER_STARTER_PORT").map(String::as_str), Some(""));
    assert!(worker.socks().is_empty());
}

#[test]
fn sockets_are_created_blocking_and_inheritable() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .arg(format!("--port=u{}", free_port()))
        .arg(format!("--path={}", sb.path("s.sock").display()))
        .spawn();
    let worker = srv.wait_current(1);
    let socks = worker.socks();
    assert_eq!(socks.len(), 3, "{socks:?}");
    for (fd, sock) in socks {
        assert!(!sock.nonblock, "fd {fd} non-blocking: {sock:?}");
        assert!(!sock.cloexec_at_start, "fd {fd} close-on-exec: {sock:?}");
    }
}

#[test]
fn nonblock_set_by_a_worker_is_kept_for_the_next_generation() {
    // File status flags belong to the shared open file description: the
    // supervisor must never reset them.
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .arg(format!("--port=u{}", free_port()))
        .env("TW_SET_NONBLOCK", "1")
        .spawn();
    let first = srv.wait_current(1);
    assert!(first.socks().values().all(|s| !s.nonblock));
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    let socks = second.socks();
    assert_eq!(socks.len(), 2);
    assert!(socks.values().all(|s| s.nonblock), "{socks:?}");
    srv.wait_serving(second.pid);
}

#[test]
fn backlog_is_passed_to_listen() {
    let sb = Sandbox::new();
    let srv = sb.server().arg("--backlog=7").spawn();
    let worker = srv.wait_current(1);
    srv.wait_serving(worker.pid);
    // For a listening socket, ss shows the backlog as Send-Q.
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", sb.port)])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let send_q = text.split_whitespace().nth(2);
            assert_eq!(send_q, Some("7"), "ss says: {text}");
        }
        _ => eprintln!("ss not available; only checked that --backlog is accepted"),
    }
}

#[test]
fn bind_failure_is_an_error_naming_the_address_and_leaves_nothing() {
    let sb = Sandbox::new();
    let _taken = TcpListener::bind(("127.0.0.1", sb.port)).expect("bind");
    let out = sb
        .server()
        .arg(format!("--path={}", sb.path("s.sock").display()))
        .spawn()
        .finish(TIMEOUT);
    out.assert_failure(&sb.host_port());
    assert!(
        out.stderr.to_lowercase().contains("address already in use"),
        "{}",
        out.describe()
    );
    for path in [sb.pid_file(), sb.status_file(), sb.path("s.sock")] {
        assert!(
            !path.exists(),
            "{} left behind\n{}",
            path.display(),
            out.describe()
        );
    }
    assert!(sb.worker_reports().is_empty());
    // Nothing of ours keeps running.
    wait_until(
        Duration::from_secs(2),
        "no process left",
        || sb.marked_pids().into_iter().all(|p| !pid_alive(p)),
        || sb.describe(),
    );
}
