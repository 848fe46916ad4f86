//! The supervisor: setting up (sockets, files, daemon) and the one loop
//! that starts worker generations, restarts them and shuts them down.
//!
//! One thread, no runtime. The loop sleeps in poll(2) until a signal (the
//! self-pipe), an envdir change (inotify) or the next deadline, never
//! polling when idle; then it re-reads the envdir, reaps every exited
//! child, and acts on queued signals and due deadlines.
//!
//! Error policy: during setup every error is fatal (one line, non-zero
//! exit, nothing left behind). Once workers serve traffic nothing is: a
//! failed fork, status-file write or log write is logged and survived,
//! because dying would orphan the workers; only a broken signal pipe ends
//! the loop.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::Config;
use crate::daemon;
use crate::envdir::{self, Env};
use crate::listen;
use crate::log::{self, LogWriter};
use crate::pidfile::PidFile;
use crate::settings::{self, Settings};
use crate::signals::{Pending, SignalName, SignalQueue, short_name};
use crate::spawn::spawn_worker;
use crate::status::StatusFile;

/// Failed starts and crashes are retried no faster than this, even with
/// `--interval=0`, so a broken worker cannot become a fork loop.
const RETRY_GAP: Duration = Duration::from_millis(100);

/// A restart begins once no HUP has come for this long (at most
/// `HUP_SETTLE_MAX` after the first): a burst of HUPs, as a deploy tool
/// looping over hosts or an operator's loop sends, becomes one restart
/// whose worker starts after the last HUP, at a cost of a few milliseconds.
const HUP_SETTLE: Duration = Duration::from_millis(10);
const HUP_SETTLE_MAX: Duration = Duration::from_millis(250);

/// Old workers just signalled get this long to exit before a *forced*
/// auto-restart may trigger (the reference looks once a second), so that a
/// worker exiting promptly leads to the plain auto-restart, as there.
const OLD_EXIT_GRACE: Duration = Duration::from_secs(1);

/// HUPs not yet acted on: when the first and the last arrived.
#[derive(Debug, Clone, Copy)]
struct HupBurst {
    first: Instant,
    last: Instant,
}

impl HupBurst {
    fn due(&self) -> Instant {
        (self.last + HUP_SETTLE).min(self.first + HUP_SETTLE_MAX)
    }
}

/// A worker process and the generation it was started as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub pid: i32,
    pub generation: u64,
    started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Initial,
    Crash,
    Restart,
}

/// A generation being started: spawned (attempt) or waiting to be.
#[derive(Debug)]
struct Start {
    reason: Reason,
    attempt: Option<Attempt>,
    not_before: Instant,
}

/// A spawned worker in its `--interval` start check.
#[derive(Debug)]
struct Attempt {
    worker: Worker,
    check_at: Instant,
    /// Its wait status, if it already exited.
    exit: Option<i32>,
    /// Its chdir or exec failed: it is exiting with 255, whatever the
    /// start check's timing.
    doomed: bool,
}

/// Sets everything up in the order SPEC section 5 gives, then runs the loop.
pub fn run(config: Config) -> Result<()> {
    let mut pid_file = config.pid_file.as_deref().map(PidFile::lock).transpose()?;
    let mut log_sink = config.log_file.as_deref().map(log::open).transpose()?;
    log_line!("start_server (pid:{}) starting now...", std::process::id());
    let mut internal: Vec<&mut OwnedFd> = pid_file
        .iter_mut()
        .map(|p| &mut p.fd)
        .chain(log_sink.iter_mut().map(|l| &mut l.fd))
        .collect();
    let mut sockets = listen::bind_all(&config.listen, config.backlog, &mut internal)?;

    let ready = if config.daemonize {
        Some(daemon::daemonize(&mut sockets)?)
    } else {
        None
    };
    let result = (|| {
        if let Some(sink) = log_sink.take() {
            sink.take_over_stdio()?;
        }
        if let Some(ready) = &ready {
            ready.detach_stdin(sockets.uses_stdin())?;
        }
        if let Some(p) = pid_file.as_mut() {
            p.write_pid(std::process::id())?;
        }
        let signals = SignalQueue::install()?;
        let log = LogWriter::for_stderr()?;
        Ok((pid_file, signals, log))
    })();
    let (pid_file, signals, log) = match (result, ready) {
        (Ok(v), Some(ready)) => {
            ready.report_ready();
            v
        }
        (Ok(v), None) => v,
        (Err(e), Some(ready)) => {
            ready.report_error(&e);
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };

    let mut base_env = Env::inherited();
    for (name, value) in &config.exports {
        base_env.set(*name, value);
    }
    base_env.set("SERVER_STARTER_PORT", sockets.env_value());
    let mut supervisor = Supervisor::new(config, base_env, log);
    supervisor.run(&signals);

    // Teardown: workers are gone; then sockets and their files, the status
    // file, and last the pid file and its lock (`--stop` waits on it).
    drop(supervisor);
    sockets.close();
    drop(signals);
    drop(pid_file);
    Ok(())
}

struct Supervisor {
    interval: Duration,
    signal_on_hup: SignalName,
    signal_on_term: SignalName,
    program: Vec<OsString>,
    dir: Option<PathBuf>,
    /// start_server's environment with the option exports and the sockets.
    base_env: Env,
    /// The environment workers get now: `base_env` plus the envdir.
    env: Env,
    settings: Settings,
    envdir_watch: Option<envdir::Watch>,
    generation: u64,
    current: Option<Worker>,
    old: Vec<Worker>,
    starting: Option<Start>,
    kill_at: Option<Instant>,
    /// When old workers were last signalled.
    killed_at: Option<Instant>,
    /// HUPs received and not yet carried out as a restart.
    restart_pending: Option<HupBurst>,
    last_restart: Instant,
    status: Option<StatusFile>,
    /// Where the loop's lines go, without ever blocking it.
    log: LogWriter,
}

impl Supervisor {
    fn new(config: Config, base_env: Env, log: LogWriter) -> Supervisor {
        let now = Instant::now();
        let envdir_watch = base_env
            .get("ENVDIR")
            .map(|d| envdir::Watch::new(PathBuf::from(d)));
        let mut supervisor = Supervisor {
            interval: config.interval,
            signal_on_hup: config.signal_on_hup,
            signal_on_term: config.signal_on_term,
            program: config.program,
            dir: config.dir,
            env: base_env.clone(),
            settings: settings::read(&base_env),
            base_env,
            envdir_watch,
            generation: 0,
            current: None,
            old: Vec::new(),
            starting: Some(Start {
                reason: Reason::Initial,
                attempt: None,
                not_before: now,
            }),
            kill_at: None,
            killed_at: None,
            restart_pending: None,
            last_restart: now,
            status: config.status_file.map(StatusFile::new),
            log,
        };
        supervisor.reload_env();
        supervisor
    }

    /// The loop, until a TERM or INT has been carried out.
    fn run(&mut self, signals: &SignalQueue) {
        loop {
            let pending = signals.drain();
            self.reload_env();
            self.reap_children();
            if let Some(signal) = pending.shutdown {
                self.shut_down(signal, signals);
                return;
            }
            let now = Instant::now();
            if pending.hup {
                let first = self.restart_pending.map_or(now, |b| b.first);
                self.restart_pending = Some(HupBurst { first, last: now });
            }
            self.advance(now);
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.sleep(signals, timeout) {
                self.log
                    .line(&format!("poll(2) failed: {e}; shutting down"));
                self.shut_down(Signal::SIGTERM, signals);
                return;
            }
        }
    }

    /// Step 1 of each turn: the envdir as it is now.
    fn reload_env(&mut self) {
        let overlay = match &mut self.envdir_watch {
            Some(watch) => watch.read(),
            None => Env::default(),
        };
        self.env = self.base_env.overlaid(&overlay);
        self.settings = settings::read(&self.env);
        // The reference exports its default period to later workers once
        // its loop runs (`$ENV{AUTO_RESTART_INTERVAL} ||= 360`).
        if let Some(period) = &self.settings.auto_restart {
            if self.current.is_some()
                && !settings::truthy(self.env.get_str("AUTO_RESTART_INTERVAL").as_deref())
            {
                if overlay.get("AUTO_RESTART_INTERVAL").is_none() {
                    self.base_env.set("AUTO_RESTART_INTERVAL", &period.text);
                }
                self.env.set("AUTO_RESTART_INTERVAL", &period.text);
            }
        }
    }

    /// Step 2: every exited child, without blocking.
    fn reap_children(&mut self) {
        while let Some((pid, status)) = reap_one() {
            self.on_child_exit(pid, status);
        }
    }

    fn on_child_exit(&mut self, pid: i32, status: i32) {
        if let Some(attempt) = self.starting.as_mut().and_then(|s| s.attempt.as_mut()) {
            if attempt.worker.pid == pid {
                attempt.exit = Some(status);
                return;
            }
        }
        if let Some(current) = self.current.filter(|w| w.pid == pid) {
            self.log.line(&format!(
                "worker {pid} died unexpectedly with status:{status}, restarting"
            ));
            // The status file keeps listing it until the next generation is
            // up, as under the reference.
            self.current = None;
            if self.starting.is_none() {
                self.starting = Some(Start {
                    reason: Reason::Crash,
                    attempt: None,
                    not_before: current.started + RETRY_GAP,
                });
            }
        } else if let Some(i) = self.old.iter().position(|w| w.pid == pid) {
            self.log
                .line(&format!("old worker {pid} died, status:{status}"));
            self.old.remove(i);
            self.write_status();
        }
        // Any other child (the log pipe's shell, an orphan re-parented to
        // us) is reaped silently.
    }

    /// Carries out whatever is due at `now`, until nothing more is.
    fn advance(&mut self, now: Instant) {
        loop {
            let progressed = if self.starting.is_some() {
                self.advance_start(now)
            } else if let Some(at) = self.kill_at {
                if now >= at {
                    self.kill_old_workers();
                    true
                } else {
                    false
                }
            } else if let Some(burst) = self.restart_pending {
                if now >= burst.due() {
                    self.restart_pending = None;
                    self.log.line("received HUP, spawning a new worker");
                    self.begin_restart(now);
                    true
                } else {
                    false
                }
            } else if let Some(line) = self.auto_restart_due(now) {
                self.log.line(&line);
                self.begin_restart(now);
                true
            } else {
                false
            };
            if !progressed {
                return;
            }
        }
    }

    /// Spawns, or checks whether the generation in its start check is up.
    fn advance_start(&mut self, now: Instant) -> bool {
        let Some(start) = self.starting.as_mut() else {
            return false;
        };
        match &start.attempt {
            None if now >= start.not_before => {
                self.generation += 1;
                let generation = self.generation;
                let mut env = self.env.clone();
                env.set("SERVER_STARTER_GENERATION", generation.to_string());
                match spawn_worker(&self.program, &env, self.dir.as_deref()) {
                    Ok(spawned) => {
                        self.log
                            .line(&format!("starting new worker {}", spawned.pid));
                        if let Some(failure) = &spawned.failure {
                            self.log.line(failure);
                        }
                        start.attempt = Some(Attempt {
                            worker: Worker {
                                pid: spawned.pid,
                                generation,
                                started: now,
                            },
                            check_at: now + self.interval,
                            exit: None,
                            doomed: spawned.failure.is_some(),
                        });
                    }
                    Err(e) => {
                        self.log
                            .line(&format!("failed to start a new worker: {e:#}"));
                        start.not_before = now + RETRY_GAP.max(self.interval);
                    }
                }
                true
            }
            Some(attempt) if now >= attempt.check_at => {
                // A worker that exited at the last moment must count.
                let worker = attempt.worker;
                let mut exit = attempt.exit;
                if exit.is_none() {
                    exit = reap_pid(worker.pid, attempt.doomed);
                }
                if let Some(status) = exit {
                    self.log.line(&format!(
                        "new worker {} seems to have failed to start, exit status:{status}",
                        worker.pid
                    ));
                    start.attempt = None;
                    start.not_before = worker.started + RETRY_GAP;
                } else {
                    let reason = start.reason;
                    self.starting = None;
                    self.finish_start(worker, reason, now);
                }
                true
            }
            _ => false,
        }
    }

    /// The new generation survived its start check.
    fn finish_start(&mut self, worker: Worker, reason: Reason, now: Instant) {
        self.current = Some(worker);
        self.last_restart = now;
        self.write_status();
        if reason != Reason::Restart {
            return;
        }
        let pids = if self.old.is_empty() {
            "none".to_string()
        } else {
            join_pids(&self.old)
        };
        self.log.line(&format!(
            "new worker is now running, sending {} to old workers:{pids}",
            self.signal_on_hup
        ));
        let delay = self.settings.kill_old_delay.clone();
        if delay.value != 0.0 {
            self.log.line(&format!(
                "sleeping {} secs before killing old workers",
                delay.text
            ));
        }
        self.kill_at = Some(now + delay.duration());
    }

    fn kill_old_workers(&mut self) {
        self.kill_at = None;
        self.killed_at = Some(Instant::now());
        self.log.line("killing old workers");
        for w in &self.old {
            let _ = kill(Pid::from_raw(w.pid), self.signal_on_hup.signal);
        }
    }

    /// The current worker becomes an old one; a new generation starts.
    fn begin_restart(&mut self, now: Instant) {
        if let Some(current) = self.current.take() {
            self.old.push(current);
        }
        self.starting = Some(Start {
            reason: Reason::Restart,
            attempt: None,
            not_before: now,
        });
    }

    /// The auto-restart log line, when one is due.
    fn auto_restart_due(&self, now: Instant) -> Option<String> {
        let period = self.settings.auto_restart.as_ref()?;
        let elapsed = now.saturating_duration_since(self.last_restart);
        if elapsed >= period.duration() && self.old.is_empty() {
            Some(format!("autorestart triggered (interval={})", period.text))
        } else if now >= self.forced_restart_at(period.duration()) {
            Some(format!(
                "autorestart triggered (forced, interval={})",
                period.text
            ))
        } else {
            None
        }
    }

    /// When an auto-restart is due even though old workers remain.
    fn forced_restart_at(&self, period: Duration) -> Instant {
        let due = self.last_restart + period.saturating_mul(2);
        match self.killed_at {
            Some(killed) => due.max(killed + OLD_EXIT_GRACE),
            None => due,
        }
    }

    /// When the loop must wake up by itself, if ever.
    fn next_deadline(&self) -> Option<Instant> {
        let mut deadlines = Vec::new();
        if let Some(start) = &self.starting {
            deadlines.push(match &start.attempt {
                Some(a) => a.check_at,
                None => start.not_before,
            });
        } else if let Some(at) = self.kill_at {
            deadlines.push(at);
        } else if let Some(burst) = self.restart_pending {
            deadlines.push(burst.due());
        } else if let Some(period) = &self.settings.auto_restart {
            deadlines.push(if self.old.is_empty() {
                self.last_restart + period.duration()
            } else {
                self.forced_restart_at(period.duration())
            });
        }
        if let Some(watch) = &self.envdir_watch {
            deadlines.extend(watch.next_poll());
        }
        deadlines.into_iter().min()
    }

    /// Waits for a signal, an envdir change, or the timeout.
    fn sleep(&mut self, signals: &SignalQueue, timeout: Option<Duration>) -> std::io::Result<()> {
        let timeout_ms = match timeout {
            None => -1,
            // Round up, so that we never wake just before a deadline and spin.
            Some(t) => i32::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
        };
        let mut fds = vec![libc::pollfd {
            fd: signals.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(fd) = self.envdir_watch.as_ref().and_then(|w| w.fd()) {
            fds.push(libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // Room in a full log output, for the lines it owes.
        let log_fd = self.log.wants_writable().map(|fd| fd.as_raw_fd());
        if let Some(fd) = log_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            });
        }
        // SAFETY: poll(2) on a valid array of pollfd we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        if log_fd.is_some() && fds.last().is_some_and(|p| p.revents != 0) {
            self.log.on_writable();
        }
        if let Some(watch) = &mut self.envdir_watch {
            watch.drain_events();
        }
        Ok(())
    }

    /// SIGTERM or SIGINT: signal every worker, wait for all, and return.
    fn shut_down(&mut self, received: Signal, signals: &SignalQueue) {
        let signal = if received == Signal::SIGTERM {
            self.signal_on_term.clone()
        } else {
            SignalName::term()
        };
        // A generation in its start check counts as started (the reference
        // ends the check on TERM/INT and lists it in the status file).
        if let Some(attempt) = self.starting.take().and_then(|s| s.attempt) {
            if attempt.exit.is_none() {
                if let Some(current) = self.current.replace(attempt.worker) {
                    self.old.push(current);
                }
                self.write_status();
            }
        }
        let mut remaining: Vec<Worker> = self.old.drain(..).collect();
        remaining.extend(self.current.take());
        remaining.sort_by_key(|w| w.pid);
        self.log.line(&format!(
            "received {}, sending {signal} to all workers:{}",
            short_name(received),
            join_pids(&remaining)
        ));
        for w in &remaining {
            let _ = kill(Pid::from_raw(w.pid), signal.signal);
        }
        self.old = remaining;
        loop {
            // Drain before reaping: a SIGCHLD arriving after the drain leaves
            // a byte in the pipe, so the poll below cannot miss it. Other
            // signals are ignored: shutdown is under way.
            let _: Pending = signals.drain();
            while let Some((pid, status)) = reap_one() {
                if let Some(i) = self.old.iter().position(|w| w.pid == pid) {
                    self.log
                        .line(&format!("worker {pid} died, status:{status}"));
                    self.old.remove(i);
                    self.write_status();
                }
            }
            if self.old.is_empty() {
                break;
            }
            if self.sleep(signals, None).is_err() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.log.line("exiting");
    }

    /// Rewrites the status file; a failure is logged, never fatal.
    fn write_status(&mut self) {
        let Some(status) = self.status.as_mut() else {
            return;
        };
        let entries: Vec<(u64, i32)> = self
            .current
            .iter()
            .chain(&self.old)
            .map(|w| (w.generation, w.pid))
            .collect();
        if let Err(e) = status.write(&entries) {
            self.log.line(&format!(
                "failed to write status file {}: {e}",
                status.path().display()
            ));
        }
    }
}

fn join_pids(workers: &[Worker]) -> String {
    let mut pids: Vec<i32> = workers.iter().map(|w| w.pid).collect();
    pids.sort_unstable();
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One exited child and its raw wait status (as Perl's `$?` shows it).
fn reap_one() -> Option<(i32, i32)> {
    let mut status = 0;
    // SAFETY: waitpid(2) with a valid status pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

/// Reaps `pid` if it has exited, or waits for it when it is known to be
/// exiting (a child whose exec failed calls _exit right after reporting).
fn reap_pid(pid: i32, exiting: bool) -> Option<i32> {
    let flags = if exiting { 0 } else { libc::WNOHANG };
    let mut status = 0;
    loop {
        // SAFETY: waitpid(2) with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return (r == pid).then_some(status);
    }
}
