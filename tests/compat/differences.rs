//! The documented differences from the reference (COMPATIBILITY.md).
//!
//! Each has an id (the anchor in COMPATIBILITY.md), a title, and a
//! `reconcile` function. `reconcile` first checks that both binaries
//! behave exactly as documented, the reference its way and ours the other,
//! and fails if either does not (the reference changed, or ours did). Only
//! then does it bring the one point in question into a common shape in
//! both records, so that everything else in the scenario is still compared
//! line by line. Where a difference changes the whole course of a run (ours
//! refuses what the reference accepts), the records are replaced by a
//! marker once the checks pass.

use crate::record::{ClientRecord, Record, WorkerRecord};

/// A documented difference.
pub struct Difference {
    pub id: &'static str,
    pub title: &'static str,
    pub reconcile: fn(&mut Record, &mut Record) -> Result<(), String>,
    /// Checked in every scenario, wherever it shows (rather than in the
    /// scenarios that name it).
    pub everywhere: bool,
}

/// Every documented difference, in COMPATIBILITY.md's order.
pub const ALL: &[Difference] = &[
    Difference {
        id: "fatal-errors",
        title: "fatal errors: one `start_server: ...` line and exit status 1",
        everywhere: false,
        reconcile: fatal_errors,
    },
    Difference {
        id: "version",
        title: "--version prints our version",
        everywhere: false,
        reconcile: version,
    },
    Difference {
        id: "help",
        title: "--help prints our usage text",
        everywhere: false,
        reconcile: help,
    },
    Difference {
        id: "fractional-seconds",
        title: "fractional seconds accepted",
        everywhere: false,
        reconcile: fractional_seconds,
    },
    Difference {
        id: "negative-numbers",
        title: "negative numbers refused",
        everywhere: false,
        reconcile: negative_numbers,
    },
    Difference {
        id: "unknown-signal",
        title: "unknown signal names refused at start-up",
        everywhere: false,
        reconcile: unknown_signal,
    },
    Difference {
        id: "host-trailing-space",
        title: "white space before the colon of HOST:PORT tolerated",
        everywhere: false,
        reconcile: host_trailing_space,
    },
    Difference {
        id: "port-out-of-range",
        title: "port numbers above 65535 refused",
        everywhere: false,
        reconcile: port_out_of_range,
    },
    Difference {
        id: "ipv6-brackets",
        title: "IPv6 addresses need balanced brackets",
        everywhere: false,
        reconcile: ipv6_brackets,
    },
    Difference {
        id: "pin-checks",
        title: "`=N` refused for 1, 2 and numbers already used",
        everywhere: false,
        reconcile: pin_checks,
    },
    Difference {
        id: "pin-own-fd",
        title: "`=N` equal to the socket's own number keeps the socket",
        everywhere: false,
        reconcile: pin_own_fd,
    },
    Difference {
        id: "path-not-a-socket",
        title: "a file at --path that is not a socket is left alone",
        everywhere: false,
        reconcile: path_not_a_socket,
    },
    Difference {
        id: "path-live-instance",
        title: "a live socket at --path is not taken over",
        everywhere: false,
        reconcile: path_live_instance,
    },
    Difference {
        id: "exec-failure-text",
        title: "`failed to exec PROG: ERROR` on a line of its own",
        everywhere: false,
        reconcile: exec_failure_text,
    },
    Difference {
        id: "chdir-failure",
        title: "a failed --dir chdir exits 255",
        everywhere: false,
        reconcile: chdir_failure,
    },
    Difference {
        id: "failed-child-cleanup",
        title: "a worker that failed to exec or chdir leaves our files alone",
        everywhere: false,
        reconcile: failed_child_cleanup,
    },
    Difference {
        id: "inherited-ignored-signals",
        title: "workers start with every signal at its default, except SIGPIPE",
        everywhere: false,
        reconcile: inherited_ignored_signals,
    },
    Difference {
        id: "crash-loop-rate",
        title: "at most ten failed starts a second",
        everywhere: false,
        reconcile: crash_loop_rate,
    },
    Difference {
        id: "hup-during-start-check",
        title: "a HUP does not cut the start check short",
        everywhere: false,
        reconcile: hup_during_start_check,
    },
    Difference {
        id: "term-during-start-check",
        title: "a TERM during the start check shuts down at once",
        everywhere: false,
        reconcile: term_during_start_check,
    },
    Difference {
        id: "term-during-kill-old-delay",
        title: "a TERM during the kill-old delay shuts down at once",
        everywhere: false,
        reconcile: term_during_kill_old_delay,
    },
    Difference {
        id: "signal-during-kill-old-delay",
        title: "a signal during the kill-old delay does not shorten it",
        everywhere: false,
        reconcile: signal_during_kill_old_delay,
    },
    Difference {
        id: "reaped-during-start-check",
        title: "old workers that exit during a start check are reaped at once",
        everywhere: false,
        reconcile: reaped_during_start_check,
    },
    Difference {
        id: "hup-coalesce",
        title: "HUPs that arrive during a restart cause one more restart",
        everywhere: false,
        reconcile: hup_coalesce,
    },
    Difference {
        id: "pid-list-order",
        title: "pid lists in log lines are in numeric order",
        everywhere: true,
        reconcile: pid_list_order,
    },
    Difference {
        id: "status-sort",
        title: "status file sorted by generation numerically",
        everywhere: false,
        reconcile: status_sort,
    },
    Difference {
        id: "status-write-failure",
        title: "a status file that cannot be written is logged, not fatal",
        everywhere: false,
        reconcile: status_write_failure,
    },
    Difference {
        id: "orphans",
        title: "orphans reaped silently",
        everywhere: false,
        reconcile: orphans,
    },
    Difference {
        id: "envdir-removed-variable",
        title: "a variable removed from the envdir is gone",
        everywhere: false,
        reconcile: envdir_removed_variable,
    },
    Difference {
        id: "envdir-auto-restart",
        title: "ENABLE_AUTO_RESTART written into the envdir takes effect",
        everywhere: false,
        reconcile: envdir_auto_restart,
    },
    Difference {
        id: "envdir-during-retries",
        title: "the envdir is re-read between failed starts",
        everywhere: false,
        reconcile: envdir_during_retries,
    },
    Difference {
        id: "envdir-empty-file",
        title: "an empty envdir file is skipped without a warning",
        everywhere: false,
        reconcile: envdir_empty_file,
    },
    Difference {
        id: "pid-file-second-instance",
        title: "a second instance does not touch a live pid file",
        everywhere: false,
        reconcile: pid_file_second_instance,
    },
    Difference {
        id: "daemonize-waits",
        title: "--daemonize reports the daemon's start-up errors",
        everywhere: false,
        reconcile: daemonize_waits,
    },
    Difference {
        id: "restart-client-failed-start",
        title: "--restart returns when a generation needed several attempts",
        everywhere: false,
        reconcile: restart_client_failed_start,
    },
    Difference {
        id: "restart-client-gives-up",
        title: "--restart fails after three failed starts in a row",
        everywhere: false,
        reconcile: restart_client_gives_up,
    },
    Difference {
        id: "client-checks-lock",
        title: "--stop and --restart signal only a start_server that holds the pid file",
        everywhere: false,
        reconcile: client_checks_lock,
    },
    Difference {
        id: "usr1-log-reopen",
        title: "SIGUSR1 reopens the log file",
        everywhere: false,
        reconcile: usr1_log_reopen,
    },
    Difference {
        id: "usr2-upgrade",
        title: "SIGUSR2 upgrades start_server itself",
        everywhere: false,
        reconcile: usr2_upgrade,
    },
];

/// The difference with this id; panics on an unknown id.
pub fn find(id: &str) -> &'static Difference {
    ALL.iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("no documented difference `{id}`"))
}

type Check = Result<(), String>;

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Check {
    if condition { Ok(()) } else { Err(what()) }
}

fn has_line(lines: &[String], text: &str) -> bool {
    lines.iter().any(|l| l.contains(text))
}

/// Removes the lines that start with `prefix`; returns how many there were.
fn remove_lines(lines: &mut Vec<String>, prefix: &str) -> usize {
    let before = lines.len();
    lines.retain(|l| !l.starts_with(prefix));
    before - lines.len()
}

fn worker<'a>(r: &'a Record, name: &str) -> Result<&'a WorkerRecord, String> {
    r.workers
        .iter()
        .find(|w| w.name == name)
        .ok_or_else(|| format!("no worker {name}"))
}

fn worker_mut<'a>(r: &'a mut Record, name: &str) -> Result<&'a mut WorkerRecord, String> {
    r.workers
        .iter_mut()
        .find(|w| w.name == name)
        .ok_or_else(|| format!("no worker {name}"))
}

/// The milliseconds from worker `since`'s start to the first `signal`
/// worker `name` received.
fn signal_delay(r: &Record, name: &str, signal: &str, since: &str) -> Result<i128, String> {
    let at = worker(r, name)?
        .signal_ms
        .iter()
        .find(|(s, _)| s == signal)
        .map(|(_, at)| *at)
        .ok_or_else(|| format!("worker {name} got no {signal}"))?;
    let started = worker(r, since)?
        .started_ms
        .ok_or_else(|| format!("no start time for {since}"))?;
    Ok(at as i128 - started as i128)
}

/// Replaces what a run did with a marker naming the difference, once the
/// checks passed, in both records.
fn replace_runs(reference: &mut Record, ours: &mut Record, id: &str) {
    for r in [reference, ours] {
        *r = Record {
            exit: format!("<compared as documented difference {id}>"),
            ..Record::default()
        };
    }
}

/// The same for the parts a difference changes throughout (output, status
/// file, workers), keeping start_server's exit and the files it left.
fn replace_course(reference: &mut Record, ours: &mut Record, id: &str) {
    for r in [reference, ours] {
        let marker = vec![format!("<compared as documented difference {id}>")];
        r.stderr = marker.clone();
        r.log.clear();
        r.status = marker;
        r.workers.clear();
        r.notes.clear();
    }
}

/// A run that started at least one worker and ended normally.
fn ran(r: &Record) -> Check {
    ensure(!r.workers.is_empty(), || "no worker ran".to_string())
}

/// A run refused at start-up: non-zero exit, no worker, an error line.
fn refused(r: &Record, mentioning: &str) -> Check {
    ensure(r.exit != "exit=0" && r.exit.starts_with("exit="), || {
        format!("exit status {}", r.exit)
    })?;
    ensure(r.workers.is_empty(), || "a worker ran".to_string())?;
    ensure(has_line(&r.all_output(), mentioning), || {
        format!("no error mentioning {mentioning:?} in {:?}", r.all_output())
    })
}

/// Our refusal: exactly one `start_server: ` line, exit status 1, nothing
/// left on disk but what the scenario prepared.
fn ours_refused(r: &Record, mentioning: &str) -> Check {
    refused(r, mentioning)?;
    ensure(r.exit == "exit=1", || format!("exit status {}", r.exit))?;
    let errors: Vec<&String> = r
        .stderr
        .iter()
        .filter(|l| l.starts_with("start_server: "))
        .collect();
    ensure(errors.len() == 1, || {
        format!("expected one `start_server: ` line, got {:?}", r.stderr)
    })
}

const LIFECYCLE: &[&str] = &[
    "start_server (pid:",
    "starting new worker ",
    "new worker ",
    "worker ",
    "old worker ",
    "received ",
    "autorestart triggered",
    "sleeping ",
    "killing old workers",
    "exiting",
    "socket is duplicated",
    "removing existing socket file:",
    "stop_server (pid:",
];

fn is_lifecycle(line: &str) -> bool {
    LIFECYCLE.iter().any(|p| line.starts_with(p))
}

/// Removes the error that ended a run from the end of its output: ours is
/// one `start_server: ` line, the reference's whatever its `die` printed.
fn strip_error(lines: &mut Vec<String>, ours: bool) -> Check {
    if ours {
        let last = lines.pop().unwrap_or_default();
        return ensure(last.starts_with("start_server: "), || {
            format!("our last line is not an error: {last:?}")
        });
    }
    let mut removed = Vec::new();
    while lines.last().is_some_and(|l| !is_lifecycle(l)) {
        removed.push(lines.pop().unwrap_or_default());
    }
    ensure(removed.iter().any(|l| !l.trim().is_empty()), || {
        "the reference printed no error".to_string()
    })
}

fn fatal_errors(reference: &mut Record, ours: &mut Record) -> Check {
    let mut seen = false;
    if ours.exit == "exit=1" && reference.exit != "exit=0" && reference.exit.starts_with("exit=") {
        strip_error(&mut ours.stderr, true)?;
        let ref_output = if reference.log.is_empty() {
            &mut reference.stderr
        } else {
            &mut reference.log
        };
        strip_error(ref_output, false)?;
        // Ours checks the whole command line (port values included)
        // before it starts anything, so a configuration error comes
        // before the `starting now` line the reference prints first.
        if ours.stderr.is_empty()
            && reference.stderr.len() == 1
            && reference.stderr[0].starts_with("start_server (pid:")
        {
            reference.stderr.clear();
        }
        for r in [&mut *reference, &mut *ours] {
            r.exit = "exit=<non-zero>".to_string();
        }
        seen = true;
    }
    for (rc, oc) in reference.clients.iter_mut().zip(ours.clients.iter_mut()) {
        if oc.end == "exit=1" && rc.end != "exit=0" && rc.end.starts_with("exit=") {
            strip_error(&mut oc.stderr, true)?;
            strip_error(&mut rc.stderr, false)?;
            for c in [&mut *rc, &mut *oc] {
                c.end = "exit=<non-zero>".to_string();
            }
            seen = true;
        }
    }
    ensure(seen, || {
        "no run or client failed (reference: non-zero, ours: 1)".to_string()
    })
}

fn version(reference: &mut Record, ours: &mut Record) -> Check {
    let is_version = |s: &[String]| {
        s.len() == 1
            && s[0]
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    ensure(is_version(&reference.stdout), || {
        format!("reference version {:?}", reference.stdout)
    })?;
    ensure(ours.stdout == [env!("CARGO_PKG_VERSION")], || {
        format!("our version {:?}", ours.stdout)
    })?;
    for r in [reference, ours] {
        r.stdout = vec!["<version>".to_string()];
    }
    Ok(())
}

fn help(reference: &mut Record, ours: &mut Record) -> Check {
    const OPTIONS: &[&str] = &[
        "port",
        "path",
        "dir",
        "interval",
        "signal-on-hup",
        "signal-on-term",
        "pid-file",
        "status-file",
        "log-file",
        "daemonize",
        "envdir",
        "enable-auto-restart",
        "auto-restart-interval",
        "kill-old-delay",
        "backlog",
        "restart",
        "stop",
        "help",
        "version",
    ];
    for r in [&*reference, &*ours] {
        ensure(r.exit == "exit=0", || format!("--help exit {}", r.exit))?;
        ensure(
            r.stdout.first().is_some_and(|l| l.starts_with("Usage:")),
            || format!("usage text starts {:?}", r.stdout.first()),
        )?;
        let text = r.stdout.join("\n");
        for o in OPTIONS {
            ensure(text.contains(&format!("--{o}")), || {
                format!("--{o} not in the usage")
            })?;
        }
        ensure(r.stderr.is_empty(), || "output on stderr".to_string())?;
    }
    for r in [reference, ours] {
        r.stdout = vec!["<usage text>".to_string()];
    }
    Ok(())
}

fn fractional_seconds(reference: &mut Record, ours: &mut Record) -> Check {
    ensure(reference.exit == "exit=1", || {
        format!("reference exit {}", reference.exit)
    })?;
    ensure(
        has_line(
            &reference.stderr,
            "invalid for option interval (number expected)",
        ),
        || format!("reference said {:?}", reference.stderr),
    )?;
    ran(ours)?;
    ensure(ours.exit == "exit=0", || format!("our exit {}", ours.exit))?;
    let ms = signal_delay(ours, "W1", "TERM", "W1")?;
    ensure(ms < 1000, || {
        format!("our start check took {ms} ms, not 0.5 s")
    })?;
    replace_runs(reference, ours, "fractional-seconds");
    Ok(())
}

fn negative_numbers(reference: &mut Record, ours: &mut Record) -> Check {
    ran(reference)?;
    ensure(
        has_line(&reference.stderr, "sleep() with negative argument"),
        || format!("reference said {:?}", reference.stderr),
    )?;
    ours_refused(ours, "must be a number of seconds, 0 or more")?;
    replace_runs(reference, ours, "negative-numbers");
    Ok(())
}

fn unknown_signal(reference: &mut Record, ours: &mut Record) -> Check {
    ensure(
        has_line(&reference.stderr, "Unrecognized signal name \"BOGUS\""),
        || format!("reference said {:?}", reference.stderr),
    )?;
    ensure(reference.exit != "exit=0", || {
        "reference exited 0".to_string()
    })?;
    // The supervisor died at the first restart and left its workers.
    ensure(
        reference.workers.len() == 2
            && reference
                .workers
                .iter()
                .all(|w| w.end.starts_with("parent-gone")),
        || "reference's workers were not orphaned".to_string(),
    )?;
    ours_refused(ours, "unknown signal name \"BOGUS\"")?;
    replace_runs(reference, ours, "unknown-signal");
    Ok(())
}

fn host_trailing_space(reference: &mut Record, ours: &mut Record) -> Check {
    refused(reference, "failed to resolve host:127.0.0.1 :")?;
    ran(ours)?;
    ensure(
        worker(ours, "W1")?
            .report
            .contains(&"port_env=127.0.0.1:$PORT1=F1".to_string()),
        || "our key is not 127.0.0.1:PORT".to_string(),
    )?;
    replace_runs(reference, ours, "host-trailing-space");
    Ok(())
}

fn port_out_of_range(reference: &mut Record, ours: &mut Record) -> Check {
    ran(reference)?;
    ensure(
        has_line(
            &reference.stderr,
            "Port number above 0xFFFF, will be truncated",
        ),
        || format!("reference said {:?}", reference.stderr),
    )?;
    ours_refused(ours, "port number out of range")?;
    replace_runs(reference, ours, "port-out-of-range");
    Ok(())
}

fn ipv6_brackets(reference: &mut Record, ours: &mut Record) -> Check {
    ran(reference)?;
    ensure(
        worker(reference, "W1")?
            .report
            .contains(&"port_env=[::1]:$PORT1=F1".to_string()),
        || "the reference did not bind [::1]".to_string(),
    )?;
    ours_refused(ours, "invalid port value")?;
    replace_runs(reference, ours, "ipv6-brackets");
    Ok(())
}

fn pin_checks(reference: &mut Record, ours: &mut Record) -> Check {
    ensure(
        has_line(&reference.stderr, "socket is duplicated to file descriptor"),
        || format!("reference said {:?}", reference.stderr),
    )?;
    ensure(
        !reference.workers.is_empty() || has_line(&reference.stderr, "starting new worker"),
        || "the reference started nothing".to_string(),
    )?;
    ours_refused(ours, "file descriptor")?;
    replace_runs(reference, ours, "pin-checks");
    Ok(())
}

fn pin_own_fd(reference: &mut Record, ours: &mut Record) -> Check {
    // --port=...{P1}=3 --port=...{P2}=4: the reference creates the second
    // socket on 4, "duplicates" it onto 4 and closes it.
    let tcp4 = "sock.4=tcp4 nonblock=0 cloexec_at_start=0".to_string();
    let ours_w = worker(ours, "W1")?.clone();
    ensure(ours_w.report.contains(&tcp4), || {
        format!("our worker has no TCP socket on fd 4: {:?}", ours_w.report)
    })?;
    // The reference's workers find something else (or nothing) on fd 4:
    // the worker library refuses it (a connection is not a listening
    // socket), so they fail to start, one after the other.
    ensure(
        reference.workers.iter().all(|w| !w.report.contains(&tcp4)),
        || "the reference kept the socket on fd 4".to_string(),
    )?;
    ensure(has_line(&reference.stderr, "file descriptor 4 is"), || {
        format!(
            "the reference's worker did not refuse fd 4: {:?}",
            reference.stderr
        )
    })?;
    // Ours listens on the second port; nothing does on the reference's
    // (whose run never gets as far as a snapshot when no worker starts).
    let bound = "port 2 tcp4 127.0.0.1 backlog=4096".to_string();
    let ours_files = ours.snapshots.first().ok_or("no snapshot")?;
    ensure(ours_files.contains(&bound), || {
        format!("our bound sockets: {ours_files:?}")
    })?;
    if let Some(ref_files) = reference.snapshots.first() {
        ensure(!ref_files.contains(&bound), || {
            format!("the reference's bound sockets: {ref_files:?}")
        })?;
    }
    replace_runs(reference, ours, "pin-own-fd");
    Ok(())
}

fn path_not_a_socket(reference: &mut Record, ours: &mut Record) -> Check {
    ran(reference)?;
    ensure(
        reference
            .snapshots
            .first()
            .is_some_and(|s| has_line(s, "$TMP/s.sock socket 777")),
        || "the reference did not replace the file with its socket".to_string(),
    )?;
    ours_refused(ours, "failed to listen to file $TMP/s.sock")?;
    ensure(
        ours.snapshots
            .first()
            .is_some_and(|s| has_line(s, "$TMP/s.sock file 644 \"precious\\n\"")),
        || "our run did not leave the file alone".to_string(),
    )?;
    replace_runs(reference, ours, "path-not-a-socket");
    Ok(())
}

fn path_live_instance(reference: &mut Record, ours: &mut Record) -> Check {
    ran(reference)?;
    ensure(
        has_line(
            &reference.stderr,
            "removing existing socket file:$TMP/s.sock",
        ),
        || format!("reference said {:?}", reference.stderr),
    )?;
    ours_refused(ours, "another process is listening on it")?;
    replace_runs(reference, ours, "path-live-instance");
    Ok(())
}

/// The reference's child prints its exec or chdir failure itself, racing
/// with the parent's `starting new worker PID` line; ours logs it from the
/// parent, after that line. Puts the reference's lines in that order.
fn child_failure_after_start(lines: &mut [String], prefix: &str) {
    for i in 0..lines.len().saturating_sub(1) {
        if lines[i].starts_with(prefix) && lines[i + 1].starts_with("starting new worker ") {
            lines.swap(i, i + 1);
        }
    }
}

fn exec_failure_text(reference: &mut Record, _ours: &mut Record) -> Check {
    // The reference: Perl's own warning `Can't exec "PROG": ERROR`, then
    // `failed to exec PROGERROR` with neither separator nor newline, so
    // whatever is written next is glued to it.
    let mut fixed = Vec::new();
    let mut glued = 0;
    let mut warning: Option<(String, String)> = None;
    for line in reference.stderr.drain(..) {
        if let Some(rest) = line.strip_prefix("Can't exec \"") {
            let (prog, error) = rest.split_once("\": ").unwrap_or((rest, ""));
            warning = Some((prog.to_string(), error.to_string()));
            continue;
        }
        if let Some((prog, error)) = &warning {
            let prefix = format!("failed to exec {prog}{error}");
            if let Some(rest) = line.strip_prefix(&prefix) {
                fixed.push(format!("failed to exec {prog}: {error}"));
                if !rest.is_empty() {
                    fixed.push(rest.to_string());
                }
                glued += 1;
                warning = None;
                continue;
            }
        }
        fixed.push(line);
    }
    child_failure_after_start(&mut fixed, "failed to exec ");
    reference.stderr = fixed;
    ensure(glued > 0, || {
        "no glued `failed to exec` line in the reference".to_string()
    })
}

fn chdir_failure(reference: &mut Record, ours: &mut Record) -> Check {
    child_failure_after_start(&mut reference.stderr, "failed to chdir:");
    let failed = "seems to have failed to start, exit status:";
    let ref_status: Vec<String> = reference
        .stderr
        .iter()
        .filter(|l| l.contains(failed))
        .cloned()
        .collect();
    ensure(
        !ref_status.is_empty() && ref_status.iter().all(|l| l.ends_with(":512")),
        || format!("reference: {ref_status:?} (expected errno 2, status 512)"),
    )?;
    let ours_status: Vec<&mut String> = ours
        .stderr
        .iter_mut()
        .filter(|l| l.contains(failed))
        .collect();
    ensure(ours_status.len() == ref_status.len(), || {
        "not as many failures".to_string()
    })?;
    for line in ours_status {
        ensure(line.ends_with(":65280"), || {
            format!("ours: {line} (expected 255, status 65280)")
        })?;
        *line = line.replace(":65280", ":512");
    }
    Ok(())
}

fn failed_child_cleanup(reference: &mut Record, ours: &mut Record) -> Check {
    // The reference's failed child unwinds through start_server's guards
    // and removes the pid file and the unix socket; at exit the supervisor
    // then warns that the pid file is gone.
    let warned = remove_lines(&mut reference.stderr, "failed to unlink file:$TMP/pid");
    ensure(warned > 0, || {
        "the reference did not warn about its pid file".to_string()
    })?;
    let ref_files = reference.snapshots.first().cloned().unwrap_or_default();
    let ours_files = ours.snapshots.first_mut().ok_or("no snapshot of ours")?;
    let missing: Vec<String> = ours_files
        .iter()
        .filter(|l| !ref_files.contains(l))
        .cloned()
        .collect();
    ensure(
        missing.iter().any(|l| l.starts_with("$TMP/pid file")),
        || format!("the reference's pid file survived: {ref_files:?}"),
    )?;
    ensure(
        missing
            .iter()
            .all(|l| l.starts_with("$TMP/pid file") || l.starts_with("$TMP/s.sock socket")),
        || format!("other files differ: {missing:?}"),
    )?;
    ours_files.retain(|l| !missing.contains(l));
    Ok(())
}

fn inherited_ignored_signals(reference: &mut Record, ours: &mut Record) -> Check {
    // The scenario's shell ignores QUIT (3) and USR2 (12) before exec.
    const QUIT_USR2: u64 = (1 << 2) | (1 << 11);
    for (rw, ow) in reference.workers.iter().zip(ours.workers.iter_mut()) {
        let get = |w: &WorkerRecord| {
            w.report
                .iter()
                .find_map(|l| l.strip_prefix("sigign="))
                .and_then(|v| u64::from_str_radix(v, 16).ok())
        };
        let (Some(r), Some(o)) = (get(rw), get(ow)) else {
            return Err("no sigign in a report".to_string());
        };
        ensure(r & QUIT_USR2 == QUIT_USR2, || {
            format!("reference sigign {r:x}")
        })?;
        ensure(o & QUIT_USR2 == 0 && o == r & !QUIT_USR2, || {
            format!("our sigign {o:x}")
        })?;
        for line in &mut ow.report {
            if line.starts_with("sigign=") {
                *line = format!("sigign={r:016x}");
            }
        }
    }
    Ok(())
}

fn count(lines: &[String], text: &str) -> usize {
    lines.iter().filter(|l| l.contains(text)).count()
}

fn crash_loop_rate(reference: &mut Record, ours: &mut Record) -> Check {
    // About a second of a worker that exits at once, with --interval=0.
    let r = count(&reference.stderr, "starting new worker");
    let o = count(&ours.stderr, "starting new worker");
    ensure(r >= 20, || format!("the reference forked only {r} times"))?;
    ensure((5..=15).contains(&o), || {
        format!("we forked {o} times (at most ten a second)")
    })?;
    replace_course(reference, ours, "crash-loop-rate");
    Ok(())
}

fn hup_during_start_check(reference: &mut Record, ours: &mut Record) -> Check {
    // HUP, then a second HUP 0.3 s into generation 2's one-second check.
    let ms = signal_delay(reference, "W1", "TERM", "W2")?;
    ensure(ms < 800, || {
        format!("reference: W1's TERM {ms} ms after W2's start (expected < 0.8 s)")
    })?;
    let ms = signal_delay(ours, "W1", "TERM", "W2")?;
    ensure(ms >= 950, || {
        format!("ours: W1's TERM {ms} ms after W2's start (expected the full second)")
    })?;
    for r in [&*reference, &*ours] {
        ensure(count(&r.stderr, "starting new worker") == 3, || {
            format!("not three generations: {:?}", r.stderr)
        })?;
        ensure(
            r.status.iter().rev().nth(1).is_some_and(|s| s == "3:W3"),
            || format!("generation 3 is not the last one standing: {:?}", r.status),
        )?;
    }
    replace_course(reference, ours, "hup-during-start-check");
    Ok(())
}

fn term_during_start_check(reference: &mut Record, ours: &mut Record) -> Check {
    // HUP, then TERM 0.3 s into generation 2's start check: the reference
    // counts generation 2 as started, retires generation 1, then shuts
    // down; ours shuts both down at once.
    for text in ["new worker is now running", "killing old workers"] {
        ensure(remove_lines(&mut reference.stderr, text) == 1, || {
            format!("the reference has no {text:?} line")
        })?;
        ensure(!ours.stderr.iter().any(|l| l.starts_with(text)), || {
            format!("ours has a {text:?} line")
        })?;
    }
    // The reference signals W1 twice in a row; the second TERM may be
    // merged with the first by the kernel.
    let w1 = worker_mut(reference, "W1")?;
    w1.signals
        .dedup_by(|a, b| a.split('@').next() == b.split('@').next());
    Ok(())
}

fn term_during_kill_old_delay(reference: &mut Record, ours: &mut Record) -> Check {
    // --kill-old-delay=3, TERM 0.5 s into the delay; old workers ignore
    // the USR1 sent by `killing old workers`.
    ensure(
        remove_lines(&mut reference.stderr, "killing old workers") == 1,
        || "the reference did not finish its delay".to_string(),
    )?;
    ensure(
        !ours.stderr.iter().any(|l| l == "killing old workers"),
        || "ours finished the delay".to_string(),
    )?;
    // TERM comes 1.75 s after W2's start.
    let ms = signal_delay(reference, "W2", "TERM", "W2")?;
    ensure(ms >= 2800, || {
        format!("reference shut down {ms} ms after W2 started")
    })?;
    let ms = signal_delay(ours, "W2", "TERM", "W2")?;
    ensure(ms < 2500, || {
        format!("ours shut down {ms} ms after W2 started")
    })?;
    let w1 = worker_mut(reference, "W1")?;
    ensure(
        w1.signals.first().is_some_and(|s| s.starts_with("USR1@")),
        || "the reference's W1 got no USR1".to_string(),
    )?;
    for r in [reference, ours] {
        for w in &mut r.workers {
            w.signals.retain(|s| !s.starts_with("USR1@"));
            for s in &mut w.signals {
                *s = s.split('+').next().unwrap_or_default().to_string();
            }
        }
    }
    Ok(())
}

fn signal_during_kill_old_delay(reference: &mut Record, ours: &mut Record) -> Check {
    // KILL_OLD_DELAY=3; a HUP 0.5 s into the delay. The reference's sleep
    // returns early and it counts the fraction as a whole second.
    let r = signal_delay(reference, "W1", "TERM", "W2")?;
    let o = signal_delay(ours, "W1", "TERM", "W2")?;
    // One second of start check, then the delay.
    ensure((3200..3850).contains(&r), || {
        format!("reference: W1's TERM {r} ms after W2's start (expected about 3.5 s)")
    })?;
    ensure(o >= 3950, || {
        format!("ours: W1's TERM {o} ms after W2's start (expected 4 s)")
    })?;
    for r in [reference, ours] {
        worker_mut(r, "W1")?.signals = vec!["TERM after the delay".to_string()];
    }
    Ok(())
}

fn reaped_during_start_check(reference: &mut Record, ours: &mut Record) -> Check {
    // W1 is signalled, then a pending HUP starts W3 before W1 is reaped.
    // The reference sleeps through W3's start check, so it lists W1 among
    // the old workers again and logs its death afterwards; ours logs it
    // and rewrites the status file during the check.
    let position = |lines: &[String], text: &str| lines.iter().position(|l| l == text);
    let died = "old worker W1 died, status:0";
    let ref_sending = "new worker is now running, sending TERM to old workers:W1,W2";
    let ours_sending = "new worker is now running, sending TERM to old workers:W2";
    let (Some(rs), Some(rd)) = (
        position(&reference.stderr, ref_sending),
        position(&reference.stderr, died),
    ) else {
        return Err(format!("the reference's lines: {:?}", reference.stderr));
    };
    ensure(rd > rs, || {
        "the reference logged W1's death before W3 was up".to_string()
    })?;
    let (Some(od), Some(os)) = (
        position(&ours.stderr, died),
        position(&ours.stderr, ours_sending),
    ) else {
        return Err(format!("our lines: {:?}", ours.stderr));
    };
    ensure(
        od + 1 == os && ours.stderr[od - 1].starts_with("starting new worker W3"),
        || "ours did not log W1's death during W3's start check".to_string(),
    )?;
    ensure(
        ours.stderr
            .get(os + 1)
            .is_some_and(|l| l == "killing old workers"),
        || "no `killing old workers` after our `new worker is now running`".to_string(),
    )?;
    let line = ours.stderr.remove(od);
    ours.stderr[od] = ref_sending.to_string();
    ours.stderr.insert(od + 2, line);
    // Our status file drops W1 during the check.
    let interim = "2:W2".to_string();
    ensure(
        ours.status.contains(&interim) && !reference.status.contains(&interim),
        || {
            format!(
                "status: reference {:?}, ours {:?}",
                reference.status, ours.status
            )
        },
    )?;
    ours.status.retain(|s| *s != interim);
    Ok(())
}

fn hup_coalesce(reference: &mut Record, ours: &mut Record) -> Check {
    // HUP, then two more HUPs during generation 2's start check.
    let r = count(&reference.stderr, "received HUP");
    let o = count(&ours.stderr, "received HUP");
    ensure(r == 3, || {
        format!("the reference restarted {r} times, not 3")
    })?;
    ensure(o == 2, || format!("we restarted {o} times, not 2"))?;
    replace_course(reference, ours, "hup-coalesce");
    Ok(())
}

fn pid_list_order(reference: &mut Record, ours: &mut Record) -> Check {
    // `sending SIG to old workers:LIST` and `sending SIG to all
    // workers:LIST`: the reference sorts the pids as strings (`sort keys`),
    // which differs from the numeric order only when they have different
    // numbers of digits (after the pid counter wrapped, say).
    let list = |line: &str| -> Option<(String, Vec<String>)> {
        let (head, list) = line.rsplit_once("workers:")?;
        if !line.contains(", sending ") || list == "none" {
            return None;
        }
        Some((
            head.to_string(),
            list.split(',').map(str::to_string).collect(),
        ))
    };
    let our_pid_of = ours.pids.clone();
    for (r, o) in [
        (&reference.stderr, &mut ours.stderr),
        (&reference.log, &mut ours.log),
    ] {
        if r.len() != o.len() {
            continue;
        }
        for (rl, ol) in r.iter().zip(o.iter_mut()) {
            let (Some((rh, rn)), Some((oh, on))) = (list(rl), list(ol)) else {
                continue;
            };
            if rh != oh || rn == on {
                continue;
            }
            let ref_pids: Option<Vec<i32>> =
                rn.iter().map(|n| reference.pids.get(n).copied()).collect();
            let our_pids: Option<Vec<i32>> =
                on.iter().map(|n| our_pid_of.get(n).copied()).collect();
            let (Some(ref_pids), Some(our_pids)) = (ref_pids, our_pids) else {
                return Err(format!("unnamed pids in {rl:?} / {ol:?}"));
            };
            let mut as_strings: Vec<String> = ref_pids.iter().map(i32::to_string).collect();
            as_strings.sort();
            let ref_strings: Vec<String> = ref_pids.iter().map(i32::to_string).collect();
            ensure(ref_strings == as_strings, || {
                format!("the reference's {rl:?} is not in string order: {ref_pids:?}")
            })?;
            ensure(our_pids.windows(2).all(|w| w[0] < w[1]), || {
                format!("our {ol:?} is not in numeric order: {our_pids:?}")
            })?;
            let (mut a, mut b) = (rn.clone(), on.clone());
            a.sort();
            b.sort();
            ensure(a == b, || format!("different workers: {rl:?} / {ol:?}"))?;
            *ol = rl.clone();
        }
    }
    Ok(())
}

fn status_sort(reference: &mut Record, ours: &mut Record) -> Check {
    let (string_order, numeric) = ("10:W10 9:W9", "9:W9 10:W10");
    ensure(reference.status.iter().any(|s| s == string_order), || {
        format!("reference status: {:?}", reference.status)
    })?;
    ensure(ours.status.iter().any(|s| s == numeric), || {
        format!("our status: {:?}", ours.status)
    })?;
    for s in &mut ours.status {
        if s == numeric {
            *s = string_order.to_string();
        }
    }
    for snapshot in &mut ours.snapshots {
        for line in snapshot {
            *line = line.replace("\"9:W9\\n10:W10\\n\"", "\"10:W10\\n9:W9\\n\"");
        }
    }
    Ok(())
}

fn status_write_failure(reference: &mut Record, ours: &mut Record) -> Check {
    ensure(
        has_line(
            &reference.stderr,
            "failed to create temporary file:$TMP/missing/status",
        ),
        || format!("reference said {:?}", reference.stderr),
    )?;
    ensure(reference.exit != "exit=0", || {
        "the reference survived".to_string()
    })?;
    ensure(
        worker(reference, "W1")?.end.starts_with("parent-gone"),
        || "the reference did not orphan its worker".to_string(),
    )?;
    ensure(
        has_line(
            &ours.stderr,
            "failed to write status file $TMP/missing/status",
        ),
        || format!("ours said {:?}", ours.stderr),
    )?;
    ensure(ours.exit == "exit=0", || format!("our exit {}", ours.exit))?;
    ensure(worker(ours, "W1")?.end.starts_with("TERM"), || {
        "our worker was not stopped".to_string()
    })?;
    replace_runs(reference, ours, "status-write-failure");
    Ok(())
}

fn orphans(reference: &mut Record, ours: &mut Record) -> Check {
    ensure(
        remove_lines(&mut reference.stderr, "old worker O1 died") == 1,
        || {
            format!(
                "the reference did not log the orphan: {:?}",
                reference.stderr
            )
        },
    )?;
    ensure(!has_line(&ours.stderr, "O1"), || {
        "ours logged the orphan".to_string()
    })
}

fn envdir_removed_variable(reference: &mut Record, ours: &mut Record) -> Check {
    // GOES_AWAY=1 was in the envdir at start-up and removed before HUP.
    let line = "GOES_AWAY=1".to_string();
    ensure(worker(reference, "W2")?.env.contains(&line), || {
        "the reference's W2 lost the variable".to_string()
    })?;
    ensure(!worker(ours, "W2")?.env.contains(&line), || {
        "our W2 kept it".to_string()
    })?;
    worker_mut(reference, "W2")?.env.retain(|l| *l != line);
    Ok(())
}

fn envdir_auto_restart(reference: &mut Record, ours: &mut Record) -> Check {
    ensure(!has_line(&reference.stderr, "autorestart"), || {
        "the reference restarted".to_string()
    })?;
    ensure(
        has_line(&ours.stderr, "autorestart triggered (interval=1)"),
        || format!("ours did not restart: {:?}", ours.stderr),
    )?;
    replace_course(reference, ours, "envdir-auto-restart");
    Ok(())
}

fn envdir_during_retries(reference: &mut Record, ours: &mut Record) -> Check {
    // The restart's new generations exit with status 4 until the envdir
    // file that makes them fail is removed (during the second failure);
    // TERM comes 2.5 s after that.
    let failures = |r: &Record| {
        count(&r.stderr, "seems to have failed to start, exit status:1024")
            + count(&r.stderr, "died unexpectedly with status:1024")
    };
    let (r, o) = (failures(reference), failures(ours));
    ensure(has_line(&ours.stderr, "new worker is now running"), || {
        format!("our restart did not succeed: {:?}", ours.stderr)
    })?;
    ensure(o <= 3, || format!("we failed {o} times"))?;
    ensure(r >= o + 2, || {
        format!("the reference failed {r} times, we failed {o} times: it did see the change")
    })?;
    replace_course(reference, ours, "envdir-during-retries");
    Ok(())
}

fn envdir_empty_file(reference: &mut Record, ours: &mut Record) -> Check {
    let warning = "Use of uninitialized value $v in chomp";
    ensure(remove_lines(&mut reference.stderr, warning) > 0, || {
        "the reference did not warn".to_string()
    })?;
    ensure(!has_line(&ours.stderr, warning), || {
        "ours warned".to_string()
    })
}

fn client_pair(
    reference: &mut Record,
    ours: &mut Record,
) -> Result<(ClientRecord, ClientRecord), String> {
    match (reference.clients.first(), ours.clients.first()) {
        (Some(r), Some(o)) => Ok((r.clone(), o.clone())),
        _ => Err("no client ran".to_string()),
    }
}

fn pid_file_second_instance(reference: &mut Record, ours: &mut Record) -> Check {
    let (rc, oc) = client_pair(reference, ours)?;
    ensure(rc.end.starts_with("still running"), || {
        format!("the reference's second instance: {}", rc.end)
    })?;
    ensure(
        reference
            .snapshots
            .first()
            .is_some_and(|s| has_line(s, "$TMP/pid file 644 \"\"")),
        || "the reference's second instance did not truncate the pid file".to_string(),
    )?;
    ensure(oc.end == "exit=1", || {
        format!("our second instance: {}", oc.end)
    })?;
    ensure(
        has_line(
            &oc.stderr,
            "another start_server (pid:S) is running with pid file",
        ),
        || format!("our second instance said {:?}", oc.stderr),
    )?;
    ensure(
        ours.snapshots
            .first()
            .is_some_and(|s| has_line(s, "$TMP/pid file 644 \"S\\n\"")),
        || "our pid file changed".to_string(),
    )?;
    for r in [&mut *reference, &mut *ours] {
        r.clients.clear();
        if let Some(s) = r.snapshots.first_mut() {
            s.retain(|l| !l.starts_with("$TMP/pid file"));
        }
    }
    Ok(())
}

fn daemonize_waits(reference: &mut Record, ours: &mut Record) -> Check {
    // The daemon fails to create its pid file after the fork.
    ensure(reference.exit == "exit=0", || {
        format!("reference exit {}", reference.exit)
    })?;
    ensure(
        has_line(&reference.log, "failed to open file:$TMP/missing/pid"),
        || format!("the reference's log: {:?}", reference.log),
    )?;
    ours_refused(ours, "failed to open file:$TMP/missing/pid")?;
    replace_runs(reference, ours, "daemonize-waits");
    Ok(())
}

fn restart_client_failed_start(reference: &mut Record, ours: &mut Record) -> Check {
    let (rc, oc) = client_pair(reference, ours)?;
    ensure(rc.end.starts_with("still running"), || {
        format!("reference --restart: {}", rc.end)
    })?;
    ensure(oc.end == "exit=0", || format!("our --restart: {}", oc.end))?;
    for r in [reference, ours] {
        r.clients[0].end = "<compared as documented difference>".to_string();
    }
    Ok(())
}

fn restart_client_gives_up(reference: &mut Record, ours: &mut Record) -> Check {
    // Every new generation fails its start check; the old one serves on.
    let (rc, oc) = client_pair(reference, ours)?;
    ensure(
        rc.end.starts_with("still running") && rc.stderr.is_empty(),
        || format!("reference --restart: {} {:?}", rc.end, rc.stderr),
    )?;
    ensure(
        oc.end == "exit=1"
            && oc.stderr.len() == 1
            && has_line(&oc.stderr, "failed to start 3 times in a row")
            && has_line(&oc.stderr, "the old generation keeps serving"),
        || format!("our --restart: {} {:?}", oc.end, oc.stderr),
    )?;
    for r in [&mut *reference, &mut *ours] {
        r.clients[0].end = "<compared as documented difference>".to_string();
        r.clients[0].stderr.clear();
    }
    // Ours gave up sooner, so the two saw a different number of attempts.
    replace_course(reference, ours, "restart-client-gives-up");
    Ok(())
}

fn client_checks_lock(reference: &mut Record, ours: &mut Record) -> Check {
    // The pid file holds the pid of a `sleep` (Z), not a start_server.
    let (rc, oc) = client_pair(reference, ours)?;
    let stop = rc.args.starts_with("--stop");
    if stop {
        ensure(
            rc.end == "exit=0" && has_line(&rc.stderr, "stopping now (pid:Z)"),
            || format!("reference --stop: {} {:?}", rc.end, rc.stderr),
        )?;
    } else {
        // --restart sends HUP to Z, then waits for a generation 2 forever.
        ensure(rc.end.starts_with("still running"), || {
            format!("reference --restart: {} {:?}", rc.end, rc.stderr)
        })?;
    }
    ensure(!reference.left_running.contains(&"Z".to_string()), || {
        "the reference did not signal Z".to_string()
    })?;
    ensure(
        oc.end == "exit=1" && has_line(&oc.stderr, "stale pid file"),
        || format!("ours: {} {:?}", oc.end, oc.stderr),
    )?;
    ensure(ours.left_running.contains(&"Z".to_string()), || {
        "we signalled Z".to_string()
    })?;
    for r in [reference, ours] {
        r.clients.clear();
        r.left_running.retain(|p| p != "Z");
    }
    Ok(())
}

fn usr1_log_reopen(reference: &mut Record, ours: &mut Record) -> Check {
    survived_the_signal(
        reference,
        ours,
        (libc::SIGUSR1, "USR1"),
        &["received USR1, reopened log file $TMP/log"],
        "usr1-log-reopen",
    )
}

/// The reference dies of USR2 and orphans its worker; we re-execute
/// ourselves in place and keep the worker, which TERM then stops.
fn usr2_upgrade(reference: &mut Record, ours: &mut Record) -> Check {
    survived_the_signal(
        reference,
        ours,
        (libc::SIGUSR2, "USR2"),
        &[
            "received USR2, upgrading start_server from ",
            ") upgraded from ",
        ],
        "usr2-upgrade",
    )
}

/// A signal the reference has no handler for: it dies of it and orphans
/// its worker; we log `lines`, keep the worker (never passing the signal
/// on) and stop it at TERM.
fn survived_the_signal(
    reference: &mut Record,
    ours: &mut Record,
    (number, name): (i32, &str),
    lines: &[&str],
    id: &str,
) -> Check {
    ensure(reference.exit == format!("signal={number}"), || {
        format!("the reference's exit {}", reference.exit)
    })?;
    ensure(
        worker(reference, "W1")?.end.starts_with("parent-gone"),
        || "the reference did not orphan its worker".to_string(),
    )?;
    for line in lines {
        ensure(has_line(&ours.log, line), || {
            format!("no {line:?} in our log: {:?}", ours.log)
        })?;
    }
    ensure(ours.exit == "exit=0", || format!("our exit {}", ours.exit))?;
    let w1 = worker(ours, "W1")?;
    ensure(w1.end.starts_with("TERM"), || {
        format!("our worker ended {}", w1.end)
    })?;
    ensure(!w1.signals.iter().any(|s| s.starts_with(name)), || {
        format!("our worker received {:?}", w1.signals)
    })?;
    replace_runs(reference, ours, id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &str, pids: &[(&str, i32)]) -> Record {
        Record {
            stderr: vec![line.to_string()],
            pids: pids.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            ..Record::default()
        }
    }

    #[test]
    fn pid_lists_in_string_and_numeric_order() {
        let line = |list: &str| format!("received TERM, sending TERM to all workers:{list}");
        // 10000 sorts before 9999 as a string.
        let mut reference = record(&line("W2,W1"), &[("W1", 9999), ("W2", 10000)]);
        let mut ours = record(&line("W1,W2"), &[("W1", 500), ("W2", 501)]);
        pid_list_order(&mut reference, &mut ours).unwrap();
        assert_eq!(ours.stderr, reference.stderr);

        let mut reference = record(&line("W2,W1"), &[("W1", 9999), ("W2", 10000)]);
        let mut ours = record(&line("W2,W1"), &[("W1", 500), ("W2", 501)]);
        // Same order on both sides: nothing to check.
        pid_list_order(&mut reference, &mut ours).unwrap();

        let mut reference = record(&line("W1,W2"), &[("W1", 9999), ("W2", 10000)]);
        let mut ours = record(&line("W2,W1"), &[("W1", 500), ("W2", 501)]);
        assert!(pid_list_order(&mut reference, &mut ours).is_err());
    }
}
