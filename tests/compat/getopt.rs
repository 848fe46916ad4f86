//! The argument-parsing matrix: command lines run on both binaries, where
//! the decision (accepted or refused) and, when accepted, the resulting
//! configuration (the worker's argv, its sockets, working directory and
//! exported variables, and the files created) must match the reference's.
//! Ours may word its errors differently, and exits 1 where the reference's
//! `die` exits 255 or an errno: a refusal is any non-zero exit.
//!
//! A case marked with a documented difference instead checks that each
//! side decides as COMPATIBILITY.md says.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{self, Sandbox, Side, Slots};
use crate::scenario::{expand, panic_message};

/// One command line; `{W}` the test worker, `{P}` a free port, `{T}` the
/// sandbox.
pub struct Case {
    pub args: &'static [&'static str],
    /// Run with POSIXLY_CORRECT set (Getopt::Long's POSIX mode).
    pub posix: bool,
    /// The documented difference, with the reference's and our decision
    /// (true: accepted).
    pub differs: Option<(&'static str, bool, bool)>,
}

const fn ok(args: &'static [&'static str]) -> Case {
    Case {
        args,
        posix: false,
        differs: None,
    }
}

const fn posix(args: &'static [&'static str]) -> Case {
    Case {
        args,
        posix: true,
        differs: None,
    }
}

/// A case where ours decides otherwise, as documented under `id`.
const fn differs(
    id: &'static str,
    reference: bool,
    ours: bool,
    args: &'static [&'static str],
) -> Case {
    Case {
        args,
        posix: false,
        differs: Some((id, reference, ours)),
    }
}

/// The matrix. Each line is one command line; those without a program
/// either are client or informational modes or must be refused.
pub const CASES: &[Case] = &[
    // Every option, with `=` and without, with two dashes and one.
    ok(&["--port={P}", "{W}"]),
    ok(&["--port", "{P}", "{W}"]),
    ok(&["-port={P}", "{W}"]),
    ok(&["-port", "{P}", "{W}"]),
    ok(&["--path={T}/s.sock", "{W}"]),
    ok(&["--path", "{T}/s.sock", "{W}"]),
    ok(&["-path={T}/s.sock", "{W}"]),
    ok(&["--interval=0", "{W}"]),
    ok(&["--interval", "0", "{W}"]),
    ok(&["-interval", "0", "{W}"]),
    ok(&["--log-file={T}/log", "{W}"]),
    ok(&["--log-file", "{T}/log", "{W}"]),
    ok(&["--log-file=| cat > {T}/piped", "{W}"]),
    ok(&["--pid-file={T}/pid", "{W}"]),
    ok(&["--pid-file", "{T}/pid", "{W}"]),
    ok(&["-pid-file={T}/pid", "{W}"]),
    ok(&["--status-file={T}/status", "{W}"]),
    ok(&["--status-file", "{T}/status", "{W}"]),
    ok(&["--dir={T}/wd", "{W}"]),
    ok(&["--dir", "{T}/wd", "{W}"]),
    ok(&["--signal-on-hup=USR1", "{W}"]),
    ok(&["--signal-on-hup", "usr1", "{W}"]),
    ok(&["--signal-on-hup=SIGUSR2", "{W}"]),
    ok(&["--signal-on-hup=10", "{W}"]),
    ok(&["--signal-on-term=QUIT", "{W}"]),
    ok(&["--signal-on-term", "sigint", "{W}"]),
    ok(&["--backlog=5", "--port={P}", "{W}"]),
    ok(&["--backlog", "5", "--port={P}", "{W}"]),
    ok(&["--backlog=0", "--port={P}", "{W}"]),
    ok(&["--envdir={T}/env", "{W}"]),
    ok(&["--envdir", "{T}/env", "{W}"]),
    ok(&["--enable-auto-restart", "{W}"]),
    ok(&["-enable-auto-restart", "{W}"]),
    ok(&["--auto-restart-interval=100", "{W}"]),
    ok(&["--auto-restart-interval", "100", "{W}"]),
    ok(&["--kill-old-delay=3", "{W}"]),
    ok(&["--kill-old-delay", "3", "{W}"]),
    ok(&[
        "--daemonize",
        "--log-file={T}/log",
        "--pid-file={T}/pid",
        "{W}",
    ]),
    // Integer syntax: signs, leading zeros, underscores.
    ok(&["--kill-old-delay=+3", "{W}"]),
    ok(&["--kill-old-delay=007", "{W}"]),
    ok(&["--kill-old-delay=1_0", "{W}"]),
    ok(&["--auto-restart-interval=-0", "{W}"]),
    // Port forms.
    ok(&["--port=127.0.0.1:{P}", "{W}"]),
    ok(&["--port=localhost:{P}", "{W}"]),
    ok(&["--port=[::1]:{P}", "{W}"]),
    ok(&["--port=[127.0.0.1]:{P}", "{W}"]),
    ok(&["--port=u{P}", "{W}"]),
    ok(&["--port=127.0.0.1:u{P}", "{W}"]),
    ok(&["--port={P}=5", "{W}"]),
    ok(&["--port= {P} ", "{W}"]),
    ok(&["--port=abc", "{W}"]),
    ok(&["--port=127.0.0.1:", "{W}"]),
    ok(&["--port=127.0.0.1:x{P}", "{W}"]),
    ok(&["--port={P}=x", "{W}"]),
    // Unique abbreviations, any case.
    ok(&["--po={P}", "{W}"]),
    ok(&["--pa={T}/s.sock", "{W}"]),
    ok(&["--pi={T}/pid", "{W}"]),
    ok(&["--sta={T}/status", "{W}"]),
    ok(&["--int=0", "{W}"]),
    ok(&["-i", "0", "{W}"]),
    ok(&["--env={T}/env", "{W}"]),
    ok(&["--ena", "{W}"]),
    ok(&["--auto=100", "{W}"]),
    ok(&["-k", "2", "{W}"]),
    ok(&["--l={T}/log", "{W}"]),
    ok(&["-b", "5", "--port={P}", "{W}"]),
    ok(&["--di={T}/wd", "{W}"]),
    ok(&["--PORT={P}", "{W}"]),
    ok(&["--Pid-File={T}/pid", "{W}"]),
    ok(&["-INTERVAL", "0", "{W}"]),
    ok(&["+port={P}", "{W}"]),
    // Ambiguous prefixes.
    ok(&["--s", "{W}"]),
    ok(&["--st={T}/x", "{W}"]),
    ok(&["--sig=USR1", "{W}"]),
    ok(&["--signal-on-=USR1", "{W}"]),
    ok(&["--p={P}", "{W}"]),
    ok(&["-d", "{T}", "{W}"]),
    ok(&["--e", "{W}"]),
    ok(&["--en={T}/env", "{W}"]),
    // Repeated options: ports and paths accumulate, the rest: last wins.
    ok(&["--port={P}", "--port=u{P}", "{W}"]),
    ok(&[
        "--path={T}/b.sock",
        "--port={P}",
        "--path={T}/a.sock",
        "{W}",
    ]),
    ok(&["--dir={T}", "--dir={T}/wd", "{W}"]),
    ok(&["--pid-file={T}/a", "--pid-file={T}/pid", "{W}"]),
    ok(&["--kill-old-delay=1", "--kill-old-delay=2", "{W}"]),
    ok(&["--enable-auto-restart", "--enable-auto-restart", "{W}"]),
    ok(&["--envdir={T}/a", "--envdir={T}/env", "{W}"]),
    // `--` and the worker's own flags.
    ok(&["--port={P}", "--", "{W}", "--port=1", "-x"]),
    ok(&["{W}", "--port={P}"]),
    ok(&["{W}", "a1", "--port={P}", "a2", "--", "--pid-file=x"]),
    ok(&["--port={P}", "{W}", "--", "--", "x"]),
    ok(&["--", "{W}", "--help"]),
    ok(&["{W}", "-x"]),
    ok(&["{W}", "--foo=1"]),
    ok(&["{W}", "--port"]),
    ok(&["{W}", "-s", "x"]),
    ok(&["--enable-auto-restart", "1", "{W}"]),
    ok(&["--port", "--", "{W}"]),
    ok(&["--dir", "--port={P}", "{W}"]),
    // Bad numbers.
    ok(&["--interval=abc", "{W}"]),
    ok(&["--interval=1e3", "{W}"]),
    ok(&["--interval=0x10", "{W}"]),
    ok(&["--interval", "--port={P}", "{W}"]),
    ok(&["--backlog=many", "{W}"]),
    ok(&["--kill-old-delay=soon", "{W}"]),
    ok(&["--auto-restart-interval=", "{W}"]),
    // Unknown options and stray words.
    ok(&["--foo", "{W}"]),
    ok(&["-x", "{W}"]),
    ok(&["--no-daemonize", "{W}"]),
    ok(&["--portx={P}", "{W}"]),
    ok(&["+", "{W}"]),
    ok(&["---port={P}", "{W}"]),
    // Missing values, values given to flags.
    ok(&["{W}", "--pid-file"]),
    ok(&["--port=", "{W}"]),
    ok(&["--dir=", "{W}"]),
    ok(&["--log-file=", "{W}"]),
    ok(&["--enable-auto-restart=1", "{W}"]),
    ok(&["--daemonize=1", "--log-file={T}/log", "{W}"]),
    ok(&["--help=1"]),
    // Modes and missing programs.
    ok(&["--help"]),
    ok(&["-h"]),
    ok(&["--version"]),
    ok(&["--ver"]),
    ok(&["--help", "--version"]),
    ok(&["--version", "{W}"]),
    ok(&["--restart"]),
    ok(&["--restart", "--pid-file={T}/pid"]),
    ok(&[
        "--restart",
        "--pid-file={T}/pid",
        "--status-file={T}/status",
    ]),
    ok(&["-r", "--pid-file={T}/pid", "--status-file={T}/status"]),
    ok(&["--stop"]),
    ok(&["--stop", "--pid-file={T}/pid"]),
    ok(&["--sto", "--pid-file={T}/pid"]),
    ok(&["--stop", "--restart", "--pid-file={T}/pid"]),
    ok(&["--daemonize", "{W}"]),
    ok(&["--port={P}"]),
    ok(&[]),
    ok(&["--"]),
    // Getopt::Long's POSIX mode.
    posix(&["--port={P}", "{W}", "-s", "x"]),
    posix(&["--port={P}", "{W}", "--", "x"]),
    posix(&["{W}", "--port={P}"]),
    posix(&["-port", "{P}", "{W}"]),
    posix(&["-port={P}", "{W}"]),
    posix(&["--pid={T}/pid", "{W}"]),
    posix(&["--PORT={P}", "{W}"]),
    posix(&["+port={P}", "{W}"]),
    // Documented differences.
    differs(
        "fractional-seconds",
        false,
        true,
        &["--interval=0.5", "{W}"],
    ),
    differs(
        "fractional-seconds",
        false,
        true,
        &["--kill-old-delay=0.25", "{W}"],
    ),
    differs(
        "fractional-seconds",
        false,
        true,
        &["--auto-restart-interval=1.5", "{W}"],
    ),
    differs("negative-numbers", true, false, &["--interval=-1", "{W}"]),
    differs(
        "negative-numbers",
        true,
        false,
        &["--backlog=-1", "--port={P}", "{W}"],
    ),
    differs(
        "negative-numbers",
        true,
        false,
        &["--kill-old-delay=-1", "{W}"],
    ),
    differs(
        "negative-numbers",
        true,
        false,
        &["--auto-restart-interval=-5", "{W}"],
    ),
    differs(
        "unknown-signal",
        true,
        false,
        &["--signal-on-hup=BOGUS", "{W}"],
    ),
    differs(
        "unknown-signal",
        true,
        false,
        &["--signal-on-term=SIGFOO", "{W}"],
    ),
    // The reference dies of SIGPIPE writing `socket is duplicated...` to
    // its new stderr, the listening socket; ours refuses `=2` outright.
    ok(&["--port={P}=2", "{W}"]),
    differs("pin-checks", true, false, &["--port={P}=1", "{W}"]),
    differs("ipv6-brackets", true, false, &["--port=::1:{P}", "{W}"]),
    differs("ipv6-brackets", true, false, &["--port=[::1:{P}", "{W}"]),
    differs(
        "host-trailing-space",
        false,
        true,
        &["--port=127.0.0.1 :{P}", "{W}"],
    ),
    // 65536 + the free port: the reference binds the port modulo 65536.
    differs(
        "port-out-of-range",
        true,
        false,
        &["--port={P+65536}", "{W}"],
    ),
];

/// What one side did with one command line.
#[derive(Debug, PartialEq)]
struct Outcome {
    accepted: bool,
    /// The configuration the worker shows, and the files created.
    config: Vec<String>,
    /// Everything the run printed, for the failure message.
    output: String,
}

/// Variables the options export to workers (docs/behaviour.md section 1).
const EXPORTED: &[&str] = &[
    "ENVDIR",
    "ENABLE_AUTO_RESTART",
    "KILL_OLD_DELAY",
    "AUTO_RESTART_INTERVAL",
];

fn run_case(side: Side, case: &Case) -> Outcome {
    harness::lower_thread_priority();
    let sb = Sandbox::new(1);
    fs::create_dir(sb.path("wd")).expect("create wd");
    fs::create_dir(sb.path("env")).expect("create env");
    let args: Vec<OsString> = case
        .args
        .iter()
        .map(|a| {
            let a = a.replace("{P+65536}", &(u32::from(sb.ports[0]) + 65536).to_string());
            expand(&a.replace("{P}", "{P1}"), sb.dir(), &sb.ports).into()
        })
        .collect();
    let env: Vec<(OsString, OsString)> = if case.posix {
        vec![("POSIXLY_CORRECT".into(), "1".into())]
    } else {
        Vec::new()
    };
    let pid = sb.spawn("server", &side.bin(), &args, &env);
    let deadline = Instant::now() + Duration::from_secs(3);
    let report = loop {
        if let Some(report) = first_report(&sb.tw_dir()) {
            break Some(report);
        }
        if sb.try_wait(pid).is_some_and(|s| !s.success()) || Instant::now() >= deadline {
            break None;
        }
        // A success exit may still be a daemon on its way.
        let daemonizing = case.args.iter().any(|a| a.starts_with("--daemonize"));
        if sb.try_wait(pid).is_some() && !daemonizing {
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let norm = |text: &str| {
        text.replace(&sb.dir().display().to_string(), "$TMP")
            .replace(&harness::worker_bin().display().to_string(), "$WORKER")
            .replace(&sb.ports[0].to_string(), "$PORT")
    };
    let mut config = Vec::new();
    let how;
    if let Some((report, env)) = report {
        how = "worker started".to_string();
        for line in report.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "argv" => config.push(format!("argv={}", norm(&value.replace('\x1f', " ")))),
                "cwd" => config.push(format!("cwd={}", norm(value))),
                // Keys and socket kinds; descriptor numbers only if pinned.
                "port_env" => {
                    let entries: Vec<String> = value
                        .split(';')
                        .enumerate()
                        .map(|(i, entry)| match entry.rsplit_once('=') {
                            Some((key, fd)) if !pinned(case, fd) => {
                                format!("{}=F{}", norm(key), i + 1)
                            }
                            _ => norm(entry),
                        })
                        .collect();
                    config.push(format!("ports={}", entries.join(";")));
                }
                _ if key.starts_with("sock.") => {
                    config.push(value.split_whitespace().next().unwrap_or("").to_string())
                }
                _ => {}
            }
        }
        for line in env.lines() {
            if EXPORTED.iter().any(|v| line.starts_with(&format!("{v}="))) {
                config.push(norm(line));
            }
        }
        for socket in harness::bound_sockets(sb.ports[0]) {
            config.push(format!("bound {socket}"));
        }
        // Stop it: TERM to the worker's parent (start_server or its daemon).
        if let Some(ppid) = report
            .lines()
            .find_map(|l| l.strip_prefix("ppid="))
            .and_then(|p| p.parse::<i32>().ok())
        {
            harness::send(ppid, libc::SIGTERM);
            let stop_by = Instant::now() + Duration::from_secs(3);
            while harness::is_alive(ppid) && Instant::now() < stop_by {
                thread::sleep(Duration::from_millis(10));
            }
        }
    } else {
        how = match sb.wait_child(pid, Duration::from_millis(0)) {
            Some(status) => harness::describe_status(status),
            None => "running without a worker".to_string(),
        };
    }
    let status = sb.wait_child(pid, Duration::from_millis(500));
    sb.kill_all();
    let accepted = ["worker started", "running without a worker", "exit=0"].contains(&how.as_str());
    // The files it created (the sandbox starts with tw, wd, env).
    let mut files: Vec<String> = fs::read_dir(sb.dir())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !["tw", "wd", "env", "server.out", "server.err"].contains(&n.as_str()))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    if accepted {
        config.push(format!("files={}", files.join(",")));
    } else if side == Side::Ours && !files.is_empty() {
        // docs/behaviour.md section 1: a refused command line creates nothing.
        config.push(format!(
            "files left behind by a refusal: {}",
            files.join(",")
        ));
    }
    let read = |name: &str| fs::read_to_string(sb.path(name)).unwrap_or_default();
    let output = format!(
        "{} (then {:?})\n  stdout: {:?}\n  stderr: {:?}",
        how,
        status.map(harness::describe_status),
        norm(&read("server.out")),
        norm(&read("server.err")),
    );
    Outcome {
        accepted,
        config,
        output,
    }
}

/// Whether descriptor `fd` was asked for with `=fd` in a `--port`.
fn pinned(case: &Case, fd: &str) -> bool {
    case.args
        .iter()
        .any(|a| a.contains("port") && a.ends_with(&format!("={fd}")))
}

/// The first worker's start report and environment, once both exist.
fn first_report(tw: &Path) -> Option<(String, String)> {
    let entries = fs::read_dir(tw).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_suffix(".start") {
            let start = fs::read_to_string(entry.path()).ok()?;
            let env = fs::read_to_string(tw.join(format!("{pid}.env"))).ok()?;
            return Some((start, env));
        }
    }
    None
}

/// Runs one case on both sides; `Err` describes a disagreement.
fn check_case(case: &Case) -> Result<(), String> {
    let _slot = Slots::global().take();
    let (reference, ours) = thread::scope(|s| {
        let r = s.spawn(|| run_case(Side::Reference, case));
        let o = s.spawn(|| run_case(Side::Ours, case));
        match (r.join(), o.join()) {
            (Ok(r), Ok(o)) => (r, o),
            (Err(p), _) => panic!("the reference's run panicked: {}", panic_message(&*p)),
            (_, Err(p)) => panic!("our run panicked: {}", panic_message(&*p)),
        }
    });
    let line = format!(
        "{}start_server {}",
        if case.posix { "POSIXLY_CORRECT=1 " } else { "" },
        case.args
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let explain = || {
        format!(
            "{line}\n  reference: {}\n    {:?}\n  ours: {}\n    {:?}",
            reference.output, reference.config, ours.output, ours.config
        )
    };
    if let Some((id, ref_accepts, ours_accepts)) = case.differs {
        crate::differences::find(id);
        if reference.accepted != ref_accepts || ours.accepted != ours_accepts {
            return Err(format!(
                "documented difference `{id}` not observed (expected the reference to {} \
                 and ours to {}):\n{}",
                if ref_accepts { "accept" } else { "refuse" },
                if ours_accepts { "accept" } else { "refuse" },
                explain()
            ));
        }
        return Ok(());
    }
    if reference.accepted != ours.accepted || reference.config != ours.config {
        return Err(explain());
    }
    // Ours never leaves anything behind a refusal.
    if ours
        .config
        .iter()
        .any(|c| c.starts_with("files left behind"))
    {
        return Err(explain());
    }
    Ok(())
}

/// Runs the whole matrix concurrently and panics with every disagreement.
pub fn check_matrix() {
    if !harness::have_reference() {
        return;
    }
    assert!(CASES.len() >= 100, "only {} command lines", CASES.len());
    let _alone = harness::EXCLUSIVE
        .write()
        .unwrap_or_else(|e| e.into_inner());
    let failures: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = CASES
            .iter()
            .map(|case| s.spawn(move || check_case(case).err()))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("case thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} command lines are decided differently from the reference:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}
