//! `--path` (docs/behaviour.md section 2): unix stream sockets, their mode, stale and
//! live sockets at the path, other files at the path.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use crate::sockets::port_entries;
use crate::support::*;

#[test]
fn path_socket_is_srwxrwxrwx_and_served() {
    let sb = Sandbox::new();
    let path = sb.path("app.sock");
    let srv = sb
        .server()
        .no_port()
        .arg(format!("--path={}", path.display()))
        .spawn();
    let worker = srv.wait_current(1);
    let meta = fs::metadata(&path).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o777);
    let entries = port_entries(worker.port_env());
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, path.display().to_string());
    assert_eq!(worker.socks()[&entries[0].1].kind, "unix");
    let body = http_get_unix(&path).expect("GET over the unix socket");
    assert_eq!(answer_pid(&body), Some(worker.pid));
}

#[test]
fn umask_is_restored_for_the_workers() {
    let sb = Sandbox::new();
    let path = sb.path("app.sock");
    let srv = sb
        .server()
        .no_port()
        .arg(format!("--path={}", path.display()))
        .wrapper(["/bin/sh", "-c", "umask 027; exec \"$@\"", "sh"])
        .program([
            "/bin/sh",
            "-c",
            "umask > \"$TW_DIR/umask\"; exec \"$0\"",
            test_worker_bin().to_str().expect("utf-8 path"),
        ])
        .spawn();
    srv.wait_current(1);
    let umask = fs::read_to_string(sb.tw_dir().join("umask")).expect("umask written");
    assert_eq!(umask.trim(), "0027");
    let mode = fs::metadata(&path).expect("socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o777);
}

#[test]
fn stale_socket_file_is_replaced_with_a_warning() {
    let sb = Sandbox::new();
    let path = sb.path("stale.sock");
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(
        fs::metadata(&path)
            .expect("left behind")
            .file_type()
            .is_socket()
    );
    let srv = sb
        .server()
        .no_port()
        .arg(format!("--path={}", path.display()))
        .spawn();
    let worker = srv.wait_current(1);
    let warning = srv.output();
    assert!(
        warning
            .lines()
            .any(|l| l.contains(&path.display().to_string()) && !l.starts_with("start_server")),
        "no warning naming {}\n{}",
        path.display(),
        srv.describe()
    );
    let body = http_get_unix(&path).expect("GET over the unix socket");
    assert_eq!(answer_pid(&body), Some(worker.pid));
}

#[test]
fn live_socket_at_the_path_is_refused_and_left_alone() {
    // docs/behaviour.md section 8: the reference unlinks a live instance's socket.
    let sb = Sandbox::new();
    let path = sb.path("live.sock");
    let live = UnixListener::bind(&path).expect("bind");
    let inode = fs::metadata(&path).expect("socket").ino();
    let out = sb
        .server()
        .no_port()
        .arg(format!("--path={}", path.display()))
        .spawn()
        .finish(TIMEOUT);
    out.assert_failure(&path.display().to_string());
    assert_eq!(fs::metadata(&path).expect("still there").ino(), inode);
    // And it still reaches the live listener.
    let _client = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    live.set_nonblocking(true).expect("nonblocking");
    wait_until(
        Duration::from_secs(2),
        "the live listener to get the connection",
        || live.accept().is_ok(),
        || out.describe(),
    );
    assert!(sb.worker_reports().is_empty() && !sb.pid_file().exists());
}

#[test]
fn regular_file_at_the_path_is_kept_and_binding_fails() {
    // docs/behaviour.md section 8: the reference deletes it silently.
    let sb = Sandbox::new();
    let path = sb.path("precious");
    fs::write(&path, "precious data\n").expect("write");
    let out = sb
        .server()
        .no_port()
        .arg(format!("--path={}", path.display()))
        .spawn()
        .finish(TIMEOUT);
    out.assert_failure(&path.display().to_string());
    assert_eq!(
        fs::read_to_string(&path).ok().as_deref(),
        Some("precious data\n")
    );
    assert!(sb.worker_reports().is_empty() && !sb.pid_file().exists());
}

#[test]
fn a_path_that_is_not_utf8_is_handed_to_the_worker_byte_for_byte() {
    // start_server writes the path's bytes into SERVER_STARTER_PORT; the
    // test worker takes its sockets with the library, which must read them.
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let sb = Sandbox::new();
    let mut bytes = sb.path("caf").into_os_string().into_vec();
    bytes.extend_from_slice(b"\xe9.sock");
    let path = std::path::PathBuf::from(OsString::from_vec(bytes));
    let mut arg = OsString::from("--path=");
    arg.push(&path);
    let srv = sb.server().no_port().arg(arg).spawn();
    let worker = srv.wait_current(1);
    let port_env = fs::read(format!("/proc/{}/environ", worker.pid))
        .expect("worker environment")
        .split(|&b| b == 0)
        .find_map(|var| {
            var.strip_prefix(b"SERVER_STARTER_PORT=")
                .map(<[u8]>::to_vec)
        })
        .expect("SERVER_STARTER_PORT in the worker's environment");
    let fd = *worker.socks().keys().next().expect("one socket");
    let mut expected = path.as_os_str().as_bytes().to_vec();
    expected.extend_from_slice(format!("={fd}").as_bytes());
    assert_eq!(port_env, expected, "{}", srv.describe());
    let body = http_get_unix(&path).expect("GET over the unix socket");
    assert_eq!(answer_pid(&body), Some(worker.pid));
}
