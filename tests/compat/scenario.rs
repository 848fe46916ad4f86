//! Scenarios: a declarative description (arguments, environment, envdir,
//! files to prepare, a script of steps) that is run once on each binary,
//! each run in its own sandbox, both at the same time; the two records are
//! then reconciled for the documented differences and compared.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::differences;
use crate::harness::{self, Side, Slots};
use crate::record::{self, Record};
use crate::run::execute;

pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGTERM};

/// One step of a script. Waits that time out end the script, with a note
/// in the record.
#[derive(Clone, Debug)]
pub enum Step {
    /// Until the output (stderr and log file) has at least N lines
    /// containing the text.
    Log(&'static str, usize),
    /// Until the status file lists exactly these generations.
    Status(&'static [u64]),
    /// Until the worker of generation N has written its start report.
    Report(u64),
    /// Until the worker of generation N has recorded at least K signals.
    Signaled(u64, usize),
    /// A signal to start_server (its daemon, if it daemonized).
    Signal(libc::c_int),
    /// A signal to the worker of generation N.
    KillWorker(u64, libc::c_int),
    /// Runs the same binary with these arguments (placeholders expanded)
    /// and waits for it, giving up after the duration.
    Client(Vec<String>, Duration),
    /// Writes (or replaces) a file of the envdir.
    EnvSet(&'static str, &'static str),
    /// Removes a file of the envdir.
    EnvRemove(&'static str),
    Sleep(Duration),
    /// Records the files of the sandbox, with their kind, mode and (for
    /// small ones) contents.
    Snapshot,
    /// Until start_server (and its daemon) has exited.
    Exit(Duration),
    /// Puts something in the sandbox now.
    Prepare(Prepare),
}

impl Step {
    pub fn is_wait(&self) -> bool {
        matches!(
            self,
            Step::Log(..)
                | Step::Status(_)
                | Step::Report(_)
                | Step::Signaled(..)
                | Step::Exit(_)
                | Step::Client(..)
        )
    }
}

/// Something put in the sandbox before start_server starts.
#[derive(Clone, Debug)]
pub enum Prepare {
    File(&'static str, &'static str),
    Dir(&'static str),
    /// A unix socket file nobody listens on.
    StaleSocket(&'static str),
    /// A unix socket that something listens on (kept open for the run).
    LiveSocket(&'static str),
    /// An executable shell script that execs the test worker.
    Script(&'static str),
    /// The same, with the worker's stderr thrown away (its complaints would
    /// race with start_server's lines in the same output).
    QuietScript(&'static str),
    /// A TCP listener on 127.0.0.1 at port N (1-based), kept for the run.
    BusyPort(usize),
    /// A `sleep` process (named `Z` in the record) whose pid is written
    /// into the file.
    Sleeper(&'static str),
}

/// A scenario, built with the methods below.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Files of `{ENVDIR}` (created when `Some`).
    pub envdir: Option<Vec<(String, String)>>,
    pub prepare: Vec<Prepare>,
    /// Run start_server through `sh -c SCRIPT` (the script ends with
    /// `exec "$@"`), to start it with another signal disposition.
    pub shell: Option<&'static str>,
    pub ports: usize,
    /// Descriptor numbers given with `=N`, kept literal.
    pub pinned: Vec<i32>,
    pub steps: Vec<Step>,
    /// Ids of the documented differences this scenario shows.
    pub differences: Vec<&'static str>,
    /// Start start_server as a child subreaper (PR_SET_CHILD_SUBREAPER),
    /// so that orphans of its workers become its children.
    pub subreaper: bool,
    /// Everything happens within milliseconds (`--interval=0`): signals
    /// are recorded without their timing.
    pub quick: bool,
    /// Several workers die at the same moment at shutdown, so the order of
    /// their `worker PID died` lines is a race: compare it as a set (see
    /// `canonicalise`).
    pub racy_shutdown: bool,
}

/// A scenario named `name` running start_server with `args`.
pub fn scenario(name: &'static str, args: &[&str]) -> Scenario {
    Scenario {
        name,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: Vec::new(),
        envdir: None,
        prepare: Vec::new(),
        shell: None,
        ports: 2,
        pinned: Vec::new(),
        steps: Vec::new(),
        differences: Vec::new(),
        subreaper: false,
        quick: false,
        racy_shutdown: false,
    }
}

impl Scenario {
    pub fn env(mut self, key: &str, value: &str) -> Scenario {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn envdir(mut self, files: &[(&str, &str)]) -> Scenario {
        self.envdir = Some(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }

    pub fn prepare(mut self, what: Prepare) -> Scenario {
        self.prepare.push(what);
        self
    }

    pub fn shell(mut self, script: &'static str) -> Scenario {
        self.shell = Some(script);
        self
    }

    pub fn pinned(mut self, fds: &[i32]) -> Scenario {
        self.pinned = fds.to_vec();
        self
    }

    pub fn steps(mut self, steps: impl IntoIterator<Item = Step>) -> Scenario {
        self.steps.extend(steps);
        self
    }

    pub fn subreaper(mut self) -> Scenario {
        self.subreaper = true;
        self
    }

    pub fn quick(mut self) -> Scenario {
        self.quick = true;
        self
    }

    pub fn racy_shutdown(mut self) -> Scenario {
        self.racy_shutdown = true;
        self
    }

    pub fn differs(mut self, ids: &[&'static str]) -> Scenario {
        self.differences.extend_from_slice(ids);
        self
    }
}

/// A client step.
pub fn client(args: &[&str], give_up: Duration) -> Step {
    Step::Client(args.iter().map(|s| s.to_string()).collect(), give_up)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Expands `{T}`, `{W}`, `{P1}`... (and `{P1+65536}`), `{PID}`, `{STATUS}`, `{LOG}`,
/// `{ENVDIR}` and `{SOCK}`.
pub fn expand(template: &str, sandbox: &Path, ports: &[u16]) -> String {
    let t = sandbox.display().to_string();
    let mut s = template
        .replace("{PID}", "{T}/pid")
        .replace("{STATUS}", "{T}/status")
        .replace("{LOG}", "{T}/log")
        .replace("{ENVDIR}", "{T}/env")
        .replace("{SOCK}", "{T}/s.sock")
        .replace("{W}", &harness::worker_bin().display().to_string())
        .replace("{T}", &t);
    for (i, port) in ports.iter().enumerate().rev() {
        let big = u32::from(*port) + 65536;
        s = s.replace(&format!("{{P{}+65536}}", i + 1), &big.to_string());
        s = s.replace(&format!("{{P{}}}", i + 1), &port.to_string());
    }
    s
}

/// Runs the scenario on both binaries and compares; `Err` holds a report
/// fit for a panic message.
pub fn check(scenario: &Scenario) -> Result<(), String> {
    let _shared = harness::EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner());
    let _slot = Slots::global().take();
    let started = Instant::now();
    let run_both = || {
        thread::scope(|s| {
            let r = s.spawn(|| execute(Side::Reference, scenario));
            let o = s.spawn(|| execute(Side::Ours, scenario));
            match (r.join(), o.join()) {
                (Ok(r), Ok(o)) => (r, o),
                (Err(p), _) => panic!("the reference's run panicked: {}", panic_message(&*p)),
                (_, Err(p)) => panic!("our run panicked: {}", panic_message(&*p)),
            }
        })
    };
    // A pid that happens to equal one of the run's port numbers could not
    // be told from the port in the text: run again (it is rare).
    let (mut reference, mut ours) = run_both();
    for _ in 0..3 {
        if !reference.ambiguous && !ours.ambiguous {
            break;
        }
        (reference, ours) = run_both();
    }
    let verbose = std::env::var_os("COMPAT_VERBOSE").is_some();
    if verbose {
        let timings = |r: &Record| -> String {
            let first = r
                .workers
                .iter()
                .filter_map(|w| w.started_ms)
                .min()
                .unwrap_or(0);
            r.workers
                .iter()
                .map(|w| {
                    let start = w.started_ms.map_or(-1, |t| (t - first) as i128);
                    let signals: Vec<String> = w
                        .signal_ms
                        .iter()
                        .map(|(s, t)| format!("{s}@{}", *t as i128 - first as i128))
                        .collect();
                    format!("  {} forked at {start} ms, signals {signals:?}\n", w.name)
                })
                .collect()
        };
        eprintln!(
            "=== {} ({:.1}s)\n--- reference\n{}\n{}--- ours\n{}\n{}",
            scenario.name,
            started.elapsed().as_secs_f64(),
            reference.render().join("\n"),
            timings(&reference),
            ours.render().join("\n"),
            timings(&ours),
        );
    }
    if scenario.racy_shutdown {
        canonicalise(&mut reference);
        canonicalise(&mut ours);
    }
    let mut problems = String::new();
    let everywhere = differences::ALL
        .iter()
        .filter(|d| d.everywhere)
        .map(|d| d.id);
    for id in scenario.differences.iter().copied().chain(everywhere) {
        let difference = differences::find(id);
        // On copies: when the check fails, the diff below shows the runs
        // as they were.
        let (mut r, mut o) = (reference.clone(), ours.clone());
        match (difference.reconcile)(&mut r, &mut o) {
            Ok(()) => (reference, ours) = (r, o),
            Err(e) => problems.push_str(&format!(
                "documented difference `{id}` ({}) not observed as documented: {e}\n",
                difference.title
            )),
        }
    }
    let diff = record::diff(&reference.render(), &ours.render());
    if !diff.is_empty() {
        problems.push_str(&format!(
            "records differ (- reference, + ours):\n{diff}\n\
             (the full records: rerun with COMPAT_VERBOSE=1 COMPAT_ONLY={})\n",
            scenario.name
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("scenario `{}`:\n{problems}", scenario.name))
    }
}

/// For scenarios where several workers die at the same moment at
/// shutdown: the order of their back-to-back `worker PID died` lines is the
/// order the kernel reaped them in, so such runs of lines are sorted.
fn canonicalise(record: &mut Record) {
    for lines in [&mut record.stderr, &mut record.log] {
        let mut i = 0;
        while i < lines.len() {
            let is_death = |l: &String| l.starts_with("worker ") && l.contains(" died, status:");
            let mut j = i;
            while j < lines.len() && is_death(&lines[j]) {
                j += 1;
            }
            lines[i..j].sort();
            i = j.max(i + 1);
        }
    }
}

/// Runs every scenario concurrently (bounded by [`Slots`]) and panics with
/// every mismatch. `COMPAT_ONLY=a,b` limits the run to those names.
pub fn check_all(scenarios: Vec<Scenario>) {
    if !harness::have_reference() {
        return;
    }
    let only: Option<Vec<String>> = std::env::var("COMPAT_ONLY")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let selected: Vec<Scenario> = scenarios
        .into_iter()
        .filter(|s| only.as_ref().is_none_or(|o| o.iter().any(|n| n == s.name)))
        .collect();
    let failures: Vec<String> = thread::scope(|s| {
        let handles: Vec<_> = selected
            .iter()
            .map(|scenario| {
                thread::Builder::new()
                    .name(scenario.name.to_string())
                    .spawn_scoped(s, move || {
                        std::panic::catch_unwind(|| check(scenario)).unwrap_or_else(|panic| {
                            Err(format!(
                                "scenario `{}` panicked: {}",
                                scenario.name,
                                panic_message(&*panic)
                            ))
                        })
                    })
                    .expect("spawn a scenario thread")
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("scenario thread").err())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} scenarios disagree with the reference:\n\n{}",
        failures.len(),
        selected.len(),
        failures.join("\n")
    );
}

/// The text of a panic's payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
