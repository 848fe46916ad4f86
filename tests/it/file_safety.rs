//! Files start_server does not own are safe (docs/behaviour.md sections 2 and 5): the
//! status file's temp file is created exclusively next to it and never
//! through a symlink; a pid or status file is not touched before
//! start_server holds the lock and has set up; at exit only the socket
//! files it created go.
//!
//! Covered elsewhere: a second instance leaves a live one's pid file intact
//! (`pid_file::a_second_instance_with_the_same_pid_file_refuses_and_leaves_it_intact`,
//! and the locked-pid-file case of `bad_input`), a live or non-socket file
//! at `--path` is left alone (`unix_socket`), the process that exits while
//! daemonizing leaves the socket files (`daemonize`), a child whose exec
//! failed touches none of them (`workers`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::support::*;

/// A file that is not start_server's, and what it must still hold.
const VICTIM_TEXT: &str = "belongs to someone else\n";

fn assert_victim_intact(srv: &Server, path: &Path) {
    assert_eq!(
        fs::read_to_string(path).ok().as_deref(),
        Some(VICTIM_TEXT),
        "{} was written to\n{}",
        path.display(),
        srv.describe()
    );
}

/// Runs start_server through a shell that first plants these symlinks
/// (`(name, target)`, `$$` in a name being start_server's pid, since the
/// shell execs it) in the sandbox.
fn spawn_with_planted<'a>(sb: &'a Sandbox, links: &[(&str, &str)]) -> Server<'a> {
    let mut script = String::new();
    for (name, target) in links {
        script.push_str(&format!("ln -s '{target}' \"{name}\" && "));
    }
    script.push_str("exec \"$@\"");
    sb.server()
        .wrapper(["/bin/sh", "-c", &script, "sh"])
        .spawn()
}

#[test]
fn the_status_temp_file_never_follows_or_truncates_what_is_at_its_name() {
    // start_server's temp name is `FILE.PID`, then `FILE.PID.N`: plant
    // dangling symlinks (absolute and relative) and a symlink to a victim.
    let sb = Sandbox::new();
    let victim = sb.path("victim");
    fs::write(&victim, VICTIM_TEXT).expect("write");
    let through_link = sb.path("created-through-link");
    let srv = spawn_with_planted(
        &sb,
        &[
            (
                "start_server.status.$$",
                &through_link.display().to_string(),
            ),
            ("start_server.status.$$.1", &victim.display().to_string()),
            ("start_server.status.$$.2", "start_server.status.regular"),
        ],
    );
    let first = srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    let second = srv.wait_current(2);
    assert_eq!(
        sb.status_text(),
        Some(format!("2:{}\n", second.pid)),
        "{}",
        srv.describe()
    );
    assert!(!through_link.exists(), "{}", srv.describe());
    assert!(!sb.path("start_server.status.regular").exists());
    assert_victim_intact(&srv, &victim);
    let pid = srv.pid();
    for name in [
        format!("start_server.status.{pid}"),
        format!("start_server.status.{pid}.1"),
        format!("start_server.status.{pid}.2"),
    ] {
        let meta = fs::symlink_metadata(sb.path(&name)).expect("planted link is still there");
        assert!(meta.file_type().is_symlink(), "{name} was replaced");
    }
    srv.stop();
    assert!(!sb.status_file().exists());
    assert!(!through_link.exists());
    assert_victim_intact(&srv, &victim);
    assert!(!pid_alive(first.pid) && !pid_alive(second.pid));
}

#[test]
fn a_regular_file_at_the_status_temp_name_is_left_alone() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .wrapper([
            "/bin/sh",
            "-c",
            &format!(
                "printf '%s\\n' '{}' > start_server.status.$$ && exec \"$@\"",
                VICTIM_TEXT.trim_end()
            ),
            "sh",
        ])
        .spawn();
    let worker = srv.wait_current(1);
    let planted = sb.path(&format!("start_server.status.{}", srv.pid()));
    assert_eq!(
        fs::read_to_string(&planted).ok().as_deref(),
        Some(VICTIM_TEXT),
        "{}",
        srv.describe()
    );
    assert_eq!(sb.status_text(), Some(format!("1:{}\n", worker.pid)));
    srv.stop();
    assert_eq!(
        fs::read_to_string(&planted).ok().as_deref(),
        Some(VICTIM_TEXT),
        "{}",
        srv.describe()
    );
}

#[test]
fn a_symlink_at_the_status_files_name_is_replaced_not_followed() {
    let sb = Sandbox::new();
    let victim = sb.path("victim");
    fs::write(&victim, VICTIM_TEXT).expect("write");
    std::os::unix::fs::symlink(&victim, sb.status_file()).expect("symlink");
    let srv = sb.server().spawn();
    // Until the first write, the status file's name still leads to the
    // victim's text, which is no status line: wait for the replacement
    // before reading the status file.
    srv.wait_for("the status file to replace the symlink", || {
        fs::symlink_metadata(sb.status_file()).is_ok_and(|m| m.file_type().is_file())
    });
    let worker = srv.wait_current(1);
    let meta = fs::symlink_metadata(sb.status_file()).expect("status file");
    assert!(meta.file_type().is_file(), "{}", srv.describe());
    assert_eq!(sb.status_text(), Some(format!("1:{}\n", worker.pid)));
    assert_victim_intact(&srv, &victim);
    srv.stop();
    assert!(!sb.status_file().exists());
    assert_victim_intact(&srv, &victim);
}

#[test]
fn status_temp_files_are_made_next_to_the_status_file_and_renamed_over_it() {
    let sb = Sandbox::new();
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).expect("inotify");
    inotify
        .add_watch(
            sb.dir(),
            AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_MOVED_TO,
        )
        .expect("watch");
    let srv = sb.server().spawn();
    srv.wait_current(1);
    srv.signal(Signal::SIGHUP);
    srv.wait_current(2);
    let mut events = Vec::new();
    while let Ok(batch) = inotify.read_events() {
        if batch.is_empty() {
            break;
        }
        for e in batch {
            let name = e
                .name
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            events.push((e.mask, name));
        }
    }
    let temp = format!("start_server.status.{}", srv.pid());
    let status = "start_server.status".to_string();
    // Every status write: created exclusively as `FILE.PID` in the same
    // directory, then renamed onto the status file.
    let writes: Vec<_> = events
        .iter()
        .filter(|(mask, name)| mask.contains(AddWatchFlags::IN_CREATE) && *name == temp)
        .collect();
    assert!(writes.len() >= 3, "{events:?}\n{}", srv.describe());
    let moves_from = events
        .iter()
        .filter(|(mask, name)| mask.contains(AddWatchFlags::IN_MOVED_FROM) && *name == temp)
        .count();
    let moves_to = events
        .iter()
        .filter(|(mask, name)| mask.contains(AddWatchFlags::IN_MOVED_TO) && *name == status)
        .count();
    assert_eq!(
        (moves_from, moves_to),
        (writes.len(), writes.len()),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|(mask, name)| mask.contains(AddWatchFlags::IN_CREATE) && *name == status),
        "the status file was written in place: {events:?}"
    );
    assert!(!sb.path(&temp).exists());
    srv.stop();
}

#[test]
fn files_of_a_start_that_failed_are_left_as_they_were() {
    // A stale pid file and status file from an earlier run: the start fails
    // at binding, after the pid file was locked; neither is written to or
    // removed.
    let sb = Sandbox::new();
    fs::write(sb.pid_file(), "12345\n").expect("write");
    fs::write(sb.status_file(), "7:12346\n").expect("write");
    let _taken = std::net::TcpListener::bind(("127.0.0.1", sb.port)).expect("bind");
    let out = sb.server().spawn().finish(TIMEOUT);
    out.assert_failure(&sb.host_port());
    assert_eq!(
        fs::read_to_string(sb.pid_file()).ok().as_deref(),
        Some("12345\n"),
        "{}",
        out.describe()
    );
    assert_eq!(
        fs::read_to_string(sb.status_file()).ok().as_deref(),
        Some("7:12346\n"),
        "{}",
        out.describe()
    );
}

#[test]
fn a_socket_file_replaced_while_running_is_not_removed_at_exit() {
    let sb = Sandbox::new();
    let path = sb.path("s.sock");
    let srv = sb
        .server()
        .arg(format!("--path={}", path.display()))
        .spawn();
    srv.wait_current(1);
    // Someone else takes the path over (as a second instance would after
    // removing what it believed stale).
    fs::remove_file(&path).expect("rm");
    let theirs = UnixListener::bind(&path).expect("bind");
    let inode = fs::metadata(&path).expect("socket").ino();
    srv.stop();
    assert_eq!(
        fs::metadata(&path).map(|m| m.ino()).ok(),
        Some(inode),
        "their socket file was removed\n{}",
        srv.describe()
    );
    let _client = UnixStream::connect(&path).expect("their socket still works");
    theirs.set_nonblocking(true).expect("nonblocking");
    srv.wait_for("the connection to reach their listener", || {
        theirs.accept().is_ok()
    });
}

#[test]
fn a_regular_file_put_at_the_socket_path_is_not_removed_at_exit() {
    let sb = Sandbox::new();
    let path = sb.path("s.sock");
    let srv = sb
        .server()
        .arg(format!("--path={}", path.display()))
        .spawn();
    srv.wait_current(1);
    fs::remove_file(&path).expect("rm");
    fs::write(&path, VICTIM_TEXT).expect("write");
    srv.stop();
    assert_victim_intact(&srv, &path);
}

#[test]
fn only_our_socket_files_are_removed_at_exit() {
    // Ours goes; a socket at a path we were not given stays.
    let sb = Sandbox::new();
    let ours = sb.path("ours.sock");
    let other = sb.path("other.sock");
    let _theirs = UnixListener::bind(&other).expect("bind");
    let srv = sb
        .server()
        .arg(format!("--path={}", ours.display()))
        .spawn();
    srv.wait_current(1);
    assert!(ours.exists());
    srv.stop();
    assert!(!ours.exists(), "{}", srv.describe());
    assert!(other.exists(), "{}", srv.describe());
}
