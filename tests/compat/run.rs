//! One run of a scenario on one binary: prepare the sandbox, start
//! start_server, carry out the script, and turn what happened into a
//! normalised [`Record`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::harness::{self, Sandbox, Side};
use crate::record::{ClientRecord, Normaliser, Record, WorkerRecord};
use crate::scenario::{Prepare, Scenario, Step, expand};
use crate::watch::StatusWatcher;

/// How long a status-file content must last to be compared (see
/// `Run::finish`).
const STABLE_MS: u128 = 175;

/// How long the script pauses after each wait is satisfied, before its
/// next step: whatever the awaited event set off (a signal in flight, a
/// status-file rewrite) settles, and every content the script waited for
/// lasts well over STABLE_MS on both sides.
const SETTLE: Duration = Duration::from_millis(300);

/// A worker forked less than this before a signal is not yet the newest
/// one for it: fork times come from /proc in 10 ms steps.
const FORK_SLACK_MS: u128 = 20;

/// How long any wait of a script may take before the run is given up.
pub const WAIT: Duration = Duration::from_secs(10);

/// A worker's reports, as found in `TW_DIR`.
#[derive(Debug, Default)]
struct Reports {
    start: Option<String>,
    start_ms: Option<u128>,
    env: Option<String>,
    signals: Option<String>,
    exit: Option<String>,
    orphan: Option<i32>,
}

fn read_reports(tw: &Path) -> BTreeMap<i32, Reports> {
    let mut reports: BTreeMap<i32, Reports> = BTreeMap::new();
    let Ok(entries) = fs::read_dir(tw) else {
        return reports;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, kind)) = name.split_once('.') else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        let text = fs::read_to_string(entry.path()).ok();
        let r = reports.entry(pid).or_default();
        match kind {
            "start" => {
                r.start_ms = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_millis());
                r.start = text;
            }
            "env" => r.env = text,
            "signals" => r.signals = text,
            "exit" => r.exit = text,
            "orphan" => r.orphan = text.and_then(|t| t.trim().parse().ok()),
            _ => {}
        }
    }
    reports
}

fn field<'a>(report: &'a str, key: &str) -> Option<&'a str> {
    report
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// One run of a scenario on one binary.
struct Run<'a> {
    side: Side,
    scenario: &'a Scenario,
    sb: Sandbox,
    server: i32,
    clients: Vec<(i32, ClientRecord)>,
    /// When the script acted (signals, kills, clients, envdir changes), in
    /// ms since the epoch.
    actions: Vec<u128>,
    /// Processes the scenario prepared, with their names (`Z`).
    extras: Vec<(i32, String)>,
    notes: Vec<String>,
    snapshots: Vec<Vec<String>>,
    watcher: Option<StatusWatcher>,
    /// Kept open for the run (`LiveSocket`, `BusyPort`).
    _held: Vec<Box<dyn std::any::Any + Send>>,
}

/// Runs `scenario` on the `side` binary.
pub fn execute(side: Side, scenario: &Scenario) -> Record {
    let sb = Sandbox::new(scenario.ports);
    if let Some(files) = &scenario.envdir {
        fs::create_dir(sb.path("env")).expect("create envdir");
        for (k, v) in files {
            fs::write(sb.path("env").join(k), v).expect("write envdir file");
        }
    }
    let watcher = StatusWatcher::start(sb.dir(), sb.path("status"), &sb.tw_dir());
    harness::lower_thread_priority();
    let mut run = Run {
        side,
        scenario,
        sb,
        server: 0,
        clients: Vec::new(),
        actions: Vec::new(),
        extras: Vec::new(),
        notes: Vec::new(),
        snapshots: Vec::new(),
        watcher: Some(watcher),
        _held: Vec::new(),
    };
    for p in &scenario.prepare {
        run.prepare(p);
    }
    let expand = |s: &str| expand(s, run.sb.dir(), &run.sb.ports);
    let args: Vec<OsString> = scenario.args.iter().map(|a| expand(a).into()).collect();
    let env: Vec<(OsString, OsString)> = scenario
        .env
        .iter()
        .map(|(k, v)| (k.into(), expand(v).into()))
        .collect();
    run.server = match scenario.shell {
        None => run
            .sb
            .spawn_with("server", &side.bin(), &args, &env, scenario.subreaper),
        Some(script) => {
            let mut sh_args: Vec<OsString> = vec!["-c".into(), script.into(), "sh".into()];
            sh_args.push(side.bin().into());
            sh_args.extend(args);
            run.sb.spawn_with(
                "server",
                Path::new("/bin/sh"),
                &sh_args,
                &env,
                scenario.subreaper,
            )
        }
    };
    for (i, step) in scenario.steps.iter().enumerate() {
        if let Err(e) = run.step(step) {
            run.notes.push(format!("step {} ({step:?}): {e}", i + 1));
            break;
        }
        if step.is_wait() {
            thread::sleep(SETTLE);
        }
    }
    run.finish()
}

impl Run<'_> {
    fn prepare(&mut self, what: &Prepare) {
        let expand = |s: &str| expand(s, self.sb.dir(), &self.sb.ports);
        match what {
            Prepare::File(name, contents) => {
                fs::write(expand(name), expand(contents)).expect("prepare a file")
            }
            Prepare::Dir(name) => fs::create_dir_all(expand(name)).expect("prepare a dir"),
            Prepare::StaleSocket(name) => {
                drop(std::os::unix::net::UnixListener::bind(expand(name)).expect("bind"))
            }
            Prepare::LiveSocket(name) => {
                let listener = std::os::unix::net::UnixListener::bind(expand(name)).expect("bind");
                self._held.push(Box::new(listener));
            }
            Prepare::Script(name) | Prepare::QuietScript(name) => {
                let path = expand(name);
                if let Some(dir) = Path::new(&path).parent() {
                    fs::create_dir_all(dir).expect("create the script's directory");
                }
                let quiet = if matches!(what, Prepare::QuietScript(_)) {
                    " 2>/dev/null"
                } else {
                    ""
                };
                let text = format!(
                    "#!/bin/sh\nexec {} \"$@\"{quiet}\n",
                    harness::worker_bin().display()
                );
                fs::write(&path, text).expect("write a script");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
            }
            Prepare::BusyPort(n) => {
                let port = self.sb.ports[n - 1];
                let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
                self._held.push(Box::new(listener));
            }
            Prepare::Sleeper(name) => {
                let pid = self
                    .sb
                    .spawn("sleeper", Path::new("/bin/sleep"), &["60".into()], &[]);
                fs::write(expand(name), format!("{pid}\n")).expect("write a pid");
                self.extras.push((pid, "Z".to_string()));
            }
        }
    }

    fn output(&self) -> String {
        let mut text = String::new();
        for name in ["server.err", "log", "piped"] {
            text.push_str(&fs::read_to_string(self.sb.path(name)).unwrap_or_default());
        }
        text
    }

    fn worker_pid(&self, generation: u64) -> Option<i32> {
        read_reports(&self.sb.tw_dir())
            .into_iter()
            .find(|(_, r)| {
                r.start
                    .as_deref()
                    .and_then(|s| field(s, "generation"))
                    .is_some_and(|g| g == generation.to_string())
            })
            .map(|(pid, _)| pid)
    }

    /// The generations in the status file, as the watcher last saw it.
    fn status_generations(&self) -> Option<Vec<u64>> {
        let text = self.watcher.as_ref()?.latest()?;
        let mut gens: Vec<u64> = text
            .lines()
            .filter_map(|l| l.split_once(':')?.0.parse().ok())
            .collect();
        gens.sort_unstable();
        Some(gens)
    }

    /// start_server processes of this run other than the one we started
    /// and the clients: its daemon (and, briefly, the daemon's parent).
    fn daemons(&self) -> Vec<i32> {
        let bin = self.side.bin().display().to_string();
        self.sb
            .marked_processes()
            .into_iter()
            .filter(|&pid| pid != self.server && !self.clients.iter().any(|(c, _)| *c == pid))
            .filter(|&pid| harness::cmdline(pid).split(' ').take(2).any(|a| a == bin))
            .collect()
    }

    /// The process to signal: the pid file's, when that is a live daemon
    /// of this run, else the one we started.
    fn server_target(&self) -> i32 {
        if !self.scenario.args.iter().any(|a| a == "--daemonize") {
            return self.server;
        }
        let from_pid_file = fs::read_to_string(self.sb.path("pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        match from_pid_file {
            Some(pid) if self.daemons().contains(&pid) => pid,
            _ => self.server,
        }
    }

    /// Whether start_server (or its daemon) is still running. Only a
    /// daemonizing run needs the (costly) look through /proc.
    fn server_running(&self) -> bool {
        let daemonizes = self.scenario.args.iter().any(|a| a == "--daemonize");
        self.sb.try_wait(self.server).is_none() || (daemonizes && !self.daemons().is_empty())
    }

    /// Polls `cond`; gives up after `timeout`, or soon after start_server
    /// is gone when `needs_server` (nothing more can happen then).
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        needs_server: bool,
        mut cond: impl FnMut(&mut Self) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut gone_since: Option<Instant> = None;
        loop {
            if cond(self) {
                return Ok(());
            }
            if needs_server && !self.server_running() {
                let since = *gone_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(300) {
                    return Err(format!("start_server is gone; was waiting for {what}"));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("timed out after {timeout:?} waiting for {what}"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        let acts = matches!(
            step,
            Step::Signal(_)
                | Step::KillWorker(..)
                | Step::Client(..)
                | Step::EnvSet(..)
                | Step::EnvRemove(_)
                | Step::Prepare(_)
        );
        if acts {
            self.actions.push(harness::now_ms());
        }
        match step {
            Step::Log(text, n) => {
                self.wait_for(&format!("{n} line(s) with {text:?}"), WAIT, true, |r| {
                    r.output().lines().filter(|l| l.contains(text)).count() >= *n
                })
            }
            Step::Status(gens) => {
                self.wait_for(&format!("status file listing {gens:?}"), WAIT, true, |r| {
                    r.status_generations().as_deref() == Some(gens)
                })
            }
            Step::Report(g) => {
                self.wait_for(&format!("worker of generation {g}"), WAIT, true, |r| {
                    r.worker_pid(*g).is_some()
                })
            }
            Step::Signaled(g, n) => {
                let pid = self
                    .worker_pid(*g)
                    .ok_or(format!("no worker of generation {g}"))?;
                let file = self.sb.tw_dir().join(format!("{pid}.signals"));
                self.wait_for(
                    &format!("{n} signal(s) to generation {g}"),
                    WAIT,
                    true,
                    |_| fs::read_to_string(&file).is_ok_and(|t| t.lines().count() >= *n),
                )
            }
            Step::Signal(signal) => {
                harness::send(self.server_target(), *signal);
                Ok(())
            }
            Step::KillWorker(g, signal) => {
                let pid = self
                    .worker_pid(*g)
                    .ok_or(format!("no worker of generation {g}"))?;
                harness::send(pid, *signal);
                Ok(())
            }
            Step::Client(args, give_up) => {
                self.run_client(args, *give_up);
                Ok(())
            }
            Step::EnvSet(name, value) => {
                fs::write(self.sb.path("env").join(name), value).map_err(|e| e.to_string())
            }
            Step::EnvRemove(name) => {
                fs::remove_file(self.sb.path("env").join(name)).map_err(|e| e.to_string())
            }
            Step::Sleep(d) => {
                thread::sleep(*d);
                Ok(())
            }
            Step::Snapshot => {
                let snapshot = self.snapshot();
                self.snapshots.push(snapshot);
                Ok(())
            }
            Step::Exit(timeout) => self.wait_for("start_server to exit", *timeout, false, |r| {
                !r.server_running()
            }),
            Step::Prepare(what) => {
                self.prepare(what);
                Ok(())
            }
        }
    }

    fn run_client(&mut self, args: &[String], give_up: Duration) {
        let n = self.clients.len() + 1;
        let expanded: Vec<OsString> = args
            .iter()
            .map(|a| expand(a, self.sb.dir(), &self.sb.ports).into())
            .collect();
        let env: Vec<(OsString, OsString)> = self
            .scenario
            .env
            .iter()
            .map(|(k, v)| (k.into(), expand(v, self.sb.dir(), &self.sb.ports).into()))
            .collect();
        let name = format!("client{n}");
        let pid = self.sb.spawn(&name, &self.side.bin(), &expanded, &env);
        let end = match self.sb.wait_child(pid, give_up) {
            Some(status) => harness::describe_status(status),
            None => {
                harness::send(pid, libc::SIGKILL);
                self.sb.wait_child(pid, WAIT);
                format!("still running after {}s (killed)", give_up.as_secs())
            }
        };
        let read = |suffix: &str| {
            fs::read_to_string(self.sb.path(&format!("{name}.{suffix}"))).unwrap_or_default()
        };
        let record = ClientRecord {
            args: args.join(" "),
            end,
            stdout: read("out").lines().map(str::to_string).collect(),
            stderr: read("err").lines().map(str::to_string).collect(),
        };
        self.clients.push((pid, record));
    }

    /// The sandbox's files, except the harness's own (captures, reports,
    /// envdir), as `name kind mode [contents]` lines, raw.
    fn snapshot(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut stack = vec![self.sb.dir().to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let rel = path
                    .strip_prefix(self.sb.dir())
                    .expect("inside the sandbox")
                    .display()
                    .to_string();
                let harness_own =
                    rel == "tw" || rel == "env" || rel.ends_with(".out") || rel.ends_with(".err");
                if harness_own {
                    continue;
                }
                let Ok(meta) = fs::symlink_metadata(&path) else {
                    continue;
                };
                let kind = meta.file_type();
                let mode = meta.permissions().mode() & 0o7777;
                let mut line = format!("$TMP/{rel} ");
                if kind.is_dir() {
                    line.push_str("dir");
                    stack.push(path.clone());
                } else if kind.is_socket() {
                    line.push_str(&format!("socket {mode:o}"));
                } else if kind.is_file() {
                    line.push_str(&format!("file {mode:o}"));
                    if rel != "log" && rel != "piped" && meta.size() < 200 {
                        let text = fs::read_to_string(&path).unwrap_or_default();
                        line.push_str(&format!(" {:?}", text));
                    }
                } else {
                    line.push_str("other");
                }
                lines.push(line);
            }
        }
        for (i, &port) in self.sb.ports.iter().enumerate() {
            for socket in harness::bound_sockets(port) {
                lines.push(format!("port {} {socket}", i + 1));
            }
        }
        lines.sort();
        lines
    }

    fn finish(mut self) -> Record {
        let mut record = Record::default();
        let running = self.server_running();
        if !running {
            // Whatever outlives start_server (give a log pipe a moment).
            let deadline = Instant::now() + Duration::from_millis(500);
            while !self.sb.marked_processes().is_empty() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        let left: Vec<(i32, String)> = if running {
            Vec::new()
        } else {
            self.sb
                .marked_processes()
                .into_iter()
                .map(|pid| {
                    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    (pid, comm.trim().to_string())
                })
                .collect()
        };
        let reports = read_reports(&self.sb.tw_dir());
        // The daemon: the parent of the workers, when not the process we
        // started (or the pid file's pid).
        let daemon_candidates: Vec<i32> = reports
            .values()
            .filter_map(|r| field(r.start.as_deref()?, "ppid")?.parse().ok())
            .chain(
                fs::read_to_string(self.sb.path("pid"))
                    .ok()
                    .and_then(|t| t.trim().parse().ok()),
            )
            .filter(|&pid| pid != self.server && pid > 1)
            .collect();
        let alive: Vec<i32> = reports
            .keys()
            .copied()
            .filter(|&p| harness::is_alive(p))
            .collect();
        let final_snapshot = if running { Vec::new() } else { self.snapshot() };
        // Stop everything before reading the last of the files.
        self.sb.kill_all();
        let (status, forks) = self
            .watcher
            .take()
            .map(StatusWatcher::finish)
            .unwrap_or_default();
        record.exit = if running {
            "running at the end of the script".to_string()
        } else {
            self.sb
                .try_wait(self.server)
                .map(harness::describe_status)
                .unwrap_or_else(|| "exit=?".to_string())
        };

        // Names: S, D, workers in the order they were started, clients.
        let worker = harness::worker_bin().display().to_string();
        let mut norm = Normaliser::new(
            &self.sb.dir().display().to_string(),
            &worker,
            &self.sb.ports,
            &self.scenario.pinned,
        );
        norm.name_pid(self.server, "S");
        for &(pid, ref name) in &self.extras {
            norm.name_pid(pid, name.clone());
        }
        for &pid in &daemon_candidates {
            norm.name_pid(pid, "D");
        }
        let output = self.output();
        let mut next_worker = 1;
        for line in output.lines() {
            if let Some(pid) = line
                .split("starting new worker ")
                .nth(1)
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                if !norm.has_pid(pid) {
                    norm.name_pid(pid, format!("W{next_worker}"));
                    next_worker += 1;
                }
            }
        }
        let mut by_generation: Vec<(u64, i32)> = reports
            .iter()
            .filter_map(|(pid, r)| {
                let g = r
                    .start
                    .as_deref()
                    .and_then(|s| field(s, "generation")?.parse().ok());
                Some((g?, *pid))
            })
            .collect();
        by_generation.sort_unstable();
        for &(_, pid) in &by_generation {
            if !norm.has_pid(pid) {
                norm.name_pid(pid, format!("W{next_worker}"));
                next_worker += 1;
            }
        }
        for (i, (pid, _)) in self.clients.iter().enumerate() {
            norm.name_pid(*pid, format!("C{}", i + 1));
        }
        for (i, orphan) in reports.values().filter_map(|r| r.orphan).enumerate() {
            norm.name_pid(orphan, format!("O{}", i + 1));
        }
        for &(_, pid) in &by_generation {
            if let Some(port_env) = reports[&pid]
                .start
                .as_deref()
                .and_then(|s| field(s, "port_env"))
            {
                for entry in port_env.split(';') {
                    if let Some(fd) = entry.rsplit_once('=').and_then(|(_, fd)| fd.parse().ok()) {
                        norm.name_fd(fd);
                    }
                }
            }
        }

        record.pids = norm.named_pids();
        record.ambiguous = self.sb.ports.iter().any(|&p| norm.has_pid(i32::from(p)));
        record.notes = self.notes.iter().map(|n| norm.text(n)).collect();
        let read = |name: &str| fs::read_to_string(self.sb.path(name)).unwrap_or_default();
        record.stdout = norm.lines(&read("server.out"));
        record.stderr = norm.lines(&read("server.err"));
        record.log = norm.lines(&(read("log") + &read("piped")));
        // A content replaced within milliseconds (the two-line file while
        // an old worker that exits at once is reaped, the empty file
        // written just before removal at exit, the contents while several
        // workers die together) is seen or missed depending on scheduling
        // alone, so only contents that lasted STABLE_MS are compared, on
        // both sides alike. Scenarios that check such a content make it
        // last (a kill-old delay, old workers that ignore the signal).
        let mut stable: Vec<String> = Vec::new();
        for (i, (content, seen_at)) in status.iter().enumerate() {
            let lasted = status
                .get(i + 1)
                .map(|(_, next)| next.saturating_sub(*seen_at));
            // The first content (before start_server wrote anything) is the
            // starting point, however soon it was replaced.
            if i > 0 && lasted.is_some_and(|ms| ms < STABLE_MS) {
                continue;
            }
            let text = match content {
                None => "<absent>".to_string(),
                Some(t) if t.is_empty() => "<empty>".to_string(),
                Some(t) => norm.text(&t.replace('\n', " ")).trim_end().to_string(),
            };
            if stable.last() != Some(&text) {
                stable.push(text);
            }
        }
        // At exit the file is emptied and then removed; how long the empty
        // version stays is a matter of teardown speed.
        if stable.ends_with(&["<empty>".to_string(), "<absent>".to_string()]) {
            stable.remove(stable.len() - 2);
        }
        record.status = stable;
        if std::env::var_os("COMPAT_VERBOSE").is_some() {
            let t0 = status.first().map_or(0, |(_, t)| *t);
            let raw: Vec<String> = status
                .iter()
                .map(|(c, t)| {
                    let c = c.as_deref().unwrap_or("<absent>").replace('\n', " ");
                    format!("{c}@{}", t - t0)
                })
                .collect();
            eprintln!(
                "raw status {} {:?}: {}",
                self.scenario.name,
                self.side,
                norm.text(&raw.join(" | "))
            );
        }

        let starts: Vec<(u128, String)> = {
            let mut v: Vec<(u128, String)> = by_generation
                .iter()
                .filter_map(|&(_, pid)| {
                    let started = forks.get(&pid).copied().or(reports[&pid].start_ms)?;
                    Some((started, norm.pid_name(pid)?.to_string()))
                })
                .collect();
            v.sort();
            v
        };
        for &(_, pid) in &by_generation {
            let r = &reports[&pid];
            let start = r.start.as_deref().unwrap_or_default();
            let mut report = Vec::new();
            for line in start.lines() {
                let Some((key, value)) = line.split_once('=') else {
                    continue;
                };
                let value = match key {
                    "pid" => continue,
                    "ppid" => norm.text(value),
                    "port_env" => norm.port_env(value),
                    "argv" => norm.text(&value.replace('\x1f', " ")),
                    "fds" => value
                        .split(',')
                        .filter_map(|f| f.parse::<i32>().ok())
                        .map(|f| if f <= 2 { f.to_string() } else { norm.fd(f) })
                        .collect::<Vec<_>>()
                        .join(","),
                    _ => norm.text(value),
                };
                let key = match key.strip_prefix("sock.").and_then(|fd| fd.parse().ok()) {
                    Some(fd) => format!("sock.{}", norm.fd(fd)),
                    None => key.to_string(),
                };
                report.push(format!("{key}={value}"));
            }
            let mut env: Vec<String> = r
                .env
                .as_deref()
                .unwrap_or_default()
                .lines()
                .map(|l| match l.strip_prefix("SERVER_STARTER_PORT=") {
                    Some(v) => format!("SERVER_STARTER_PORT={}", norm.port_env(v)),
                    None => norm.text(l),
                })
                .collect();
            env.sort();
            let mut signals = Vec::new();
            let mut signal_ms = Vec::new();
            for line in r.signals.as_deref().unwrap_or_default().lines() {
                let Some((name, at)) = line.split_once(' ') else {
                    continue;
                };
                let Ok(at) = at.trim().parse::<u128>() else {
                    continue;
                };
                signal_ms.push((name.to_string(), at));
                if self.scenario.quick {
                    signals.push(name.to_string());
                    continue;
                }
                let newest = starts.iter().rev().find(|(t, _)| t + FORK_SLACK_MS <= at);
                let Some((started, who)) = newest else {
                    signals.push(format!("{name}@?"));
                    continue;
                };
                let last_action = self.actions.iter().rev().find(|&&t| t <= at);
                let base = last_action.map_or(*started, |&t| t.max(*started));
                // Whole seconds, rounded down after adding a little: on a
                // busy machine events come late, hardly ever early.
                let secs = ((at - base) as f64 / 1000.0 + 0.2).floor();
                signals.push(format!("{name}@{who}+{secs}s"));
            }
            let end = match (&r.exit, alive.contains(&pid)) {
                (_, true) => "alive".to_string(),
                (Some(exit), _) => {
                    let reason = field(exit, "reason").unwrap_or("?");
                    let code = field(exit, "code").unwrap_or("?");
                    format!("{reason} code={code}")
                }
                (None, false) => "gone without an exit report".to_string(),
            };
            record.workers.push(WorkerRecord {
                name: norm.pid_name(pid).unwrap_or("W?").to_string(),
                report,
                env,
                signals,
                started_ms: forks.get(&pid).copied().or(r.start_ms),
                signal_ms,
                end,
            });
        }
        record.clients = self
            .clients
            .iter()
            .map(|(_, c)| ClientRecord {
                args: norm.text(&expand(&c.args, self.sb.dir(), &self.sb.ports)),
                end: c.end.clone(),
                stdout: c.stdout.iter().map(|l| norm.text(l)).collect(),
                stderr: c.stderr.iter().map(|l| norm.text(l)).collect(),
            })
            .collect();
        record.snapshots = self
            .snapshots
            .iter()
            .chain(std::iter::once(&final_snapshot))
            .filter(|s| !s.is_empty())
            .map(|s| s.iter().map(|l| norm.text(l)).collect())
            .collect();
        record.left_running = left
            .iter()
            .map(|(pid, comm)| match norm.pid_name(*pid) {
                Some(name) => name.to_string(),
                None => format!("a {comm} process"),
            })
            .collect();
        record
    }
}
