//! The status file (docs/behaviour.md section 5): format, numeric order, atomic
//! replacement, removal, write failures.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::*;

#[test]
fn status_file_holds_generation_colon_pid() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    let worker = srv.wait_current(1);
    assert_eq!(sb.status_text(), Some(format!("1:{}\n", worker.pid)));
    srv.stop();
    assert!(!sb.status_file().exists(), "{}", srv.describe());
}

#[test]
fn status_file_is_sorted_numerically() {
    // docs/behaviour.md section 8: the reference sorts as strings (10 before 9).
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .arg("--signal-on-hup=USR2")
        .env("TW_FAIL_IF_GEN_BELOW", "9")
        .spawn();
    let ninth = srv.wait_current(9);
    srv.signal(Signal::SIGHUP);
    let tenth = srv.wait_worker(10);
    srv.wait_for("both generations in the status file", || {
        sb.status_lines().is_some_and(|l| l.len() == 2)
    });
    assert_eq!(
        sb.status_text(),
        Some(format!("9:{}\n10:{}\n", ninth.pid, tenth.pid)),
        "{}",
        srv.describe()
    );
}

#[test]
fn status_file_is_replaced_atomically() {
    let sb = Sandbox::new();
    let srv = sb.server().spawn();
    srv.wait_current(1);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = Arc::clone(&done);
        let path = sb.status_file();
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                if let Ok(text) = fs::read_to_string(&path) {
                    reads += 1;
                    let well_formed = !text.is_empty()
                        && text.ends_with('\n')
                        && text.lines().all(|l| {
                            l.split_once(':').is_some_and(|(g, p)| {
                                g.parse::<u64>().is_ok() && p.parse::<i32>().is_ok()
                            })
                        });
                    if !well_formed {
                        bad.push(text);
                    }
                }
            }
            (reads, bad)
        })
    };
    for generation in 2..=4 {
        srv.signal(Signal::SIGHUP);
        srv.wait_current(generation);
    }
    done.store(true, Ordering::Relaxed);
    let (reads, bad) = reader.join().expect("reader thread");
    assert!(reads > 0);
    assert!(bad.is_empty(), "partial status file contents seen: {bad:?}");
    // No temp files left next to it.
    let leftovers: Vec<String> = fs::read_dir(sb.dir())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("start_server.status") && n != "start_server.status")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_failure_to_write_the_status_file_is_survived() {
    // docs/behaviour.md section 8: the reference dies, orphaning its workers.
    let sb = Sandbox::new();
    let sub = sb.path("sub");
    fs::create_dir(&sub).expect("mkdir");
    let status = sub.join("status");
    let srv = sb
        .server()
        .no_status_file()
        .arg(format!("--status-file={}", status.display()))
        .spawn();
    let old = srv.wait_worker(1);
    srv.wait_for("the status file", || status.exists());
    fs::remove_dir_all(&sub).expect("rm -r");
    srv.signal(Signal::SIGHUP);
    let new = srv.wait_worker(2);
    srv.wait_signal(old.pid, "TERM");
    srv.wait_serving(new.pid);
    srv.assert_running();
    assert!(
        srv.output().contains(&sub.display().to_string()),
        "the failure is not logged\n{}",
        srv.describe()
    );
    srv.stop();
}
