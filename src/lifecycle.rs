//! The supervisor's decisions: a pure state machine.
//!
//! [`Lifecycle`] owns the generations (the current worker, the old ones, the
//! generation being started), the HUP and auto-restart bookkeeping and the
//! shutdown. The shell (`supervisor.rs`) feeds it [`Event`]s with the time
//! they happened at, carries out the [`Action`]s it returns, and sleeps
//! until [`Lifecycle::next_deadline`].
//!
//! Invariant: nothing here reads a clock, makes a system call or writes a
//! log. Time is a [`Time`] given by the caller, so the same code runs under
//! the real clock and under the simulation's fake one (`tests` below and
//! `src/simulation.rs`), where every rule is checked without processes.
//!
//! The timing ladder (what is due next, and when) is written once, in
//! [`Lifecycle::due`]: `next_deadline` reports it, `advance` carries it out.

use std::time::Duration;

use crate::progress::Progress;
use crate::settings::{Seconds, Settings};
use crate::systemd::{Notice, State};

mod snapshot;

/// Monotonic time since the supervisor started.
pub type Time = Duration;

/// Two spawns are never closer than this, even with `--interval=0`: a
/// broken worker cannot become a fork loop, and start_server never forks
/// workers more than ten times a second. A HUP long after the last spawn
/// is acted on at once.
pub const RETRY_GAP: Duration = Duration::from_millis(100);

/// A restart asked for by a HUP that came while the previous restart was
/// still under way (in its start check or kill-old delay, or with old
/// workers still alive) spawns no sooner than this after the previous HUP
/// restart's spawn. A HUP when all is settled is acted on at once, however
/// soon; a storm of them (a deploy tool looping over hosts, an operator's
/// loop) becomes a few restarts, the last of which spawns after the last
/// HUP, even with `--interval=0`: HUPs that come while a restart waits for
/// its spawn are answered by that spawn.
pub const HUP_GAP: Duration = Duration::from_millis(250);

/// Old workers just signalled get this long to exit before a *forced*
/// auto-restart may trigger (the reference looks once a second), so that a
/// worker exiting promptly leads to the plain auto-restart, as there.
pub const OLD_EXIT_GRACE: Duration = Duration::from_secs(1);

/// A signal to send, with the name log lines print for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sig {
    pub number: i32,
    pub name: String,
}

/// What the command line fixes for the whole run.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--interval`: how long a new worker must live to count as started.
    pub interval: Duration,
    /// `--signal-on-hup`: sent to old workers after a restart.
    pub signal_on_hup: Sig,
    /// `--signal-on-term`: sent to every worker on SIGTERM.
    pub signal_on_term: Sig,
    /// SIGTERM itself: sent to every worker on SIGINT.
    pub term: Sig,
    /// SIGKILL: sent to a worker still alive `signal_timeout` after its
    /// signal.
    pub kill: Sig,
    /// `--signal-timeout`; `None`: never (the reference's behaviour).
    pub signal_timeout: Option<Seconds>,
    /// `--max-retry-interval`; `None`: no backoff (the reference's pacing).
    pub max_retry_interval: Option<Seconds>,
    /// `--notify-ready`: a generation is started when it sends `READY=1`;
    /// `--interval` then only spaces attempts.
    pub readiness: Option<Readiness>,
}

/// How `--notify-ready` waits.
#[derive(Debug, Clone)]
pub struct Readiness {
    /// `--notify-timeout`; `None`: wait for ever.
    pub timeout: Option<Seconds>,
}

/// The signals that end the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Term,
    Int,
}

/// Something that happened, fed to [`Lifecycle::step`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Only time passed (a deadline was reached).
    Tick,
    /// SIGHUP.
    Hup,
    /// SIGTERM or SIGINT.
    Stop(Stop),
    /// A child exited; `status` is the raw wait status (Perl's `$?`).
    ChildExited { pid: i32, status: i32 },
    /// The answer to [`Action::Spawn`]: the child's pid, and the message
    /// when its chdir or exec failed (it is then exiting with 255).
    Spawned { pid: i32, failure: Option<String> },
    /// The answer to [`Action::Spawn`] when no child could be forked.
    SpawnFailed { error: String },
    /// The settings re-read from the environment and the envdir.
    Settings(Settings),
    /// `READY=1` came on `generation`'s notify socket (`--notify-ready`).
    Ready { generation: u64 },
    /// `EXTEND_TIMEOUT_USEC` came on `generation`'s notify socket: its
    /// readiness deadline moves to at least `by` from now.
    Extend { generation: u64, by: Duration },
    /// An upgrade of start_server itself (SIGUSR2) began: the new binary
    /// is being asked; or it ended, done (in the new image) or given up.
    Upgrade(Upgrade),
}

/// The two ends of an upgrade of start_server itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    Begun,
    Ended,
}

/// Something to do, returned by [`Lifecycle::step`] in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write this line to the log.
    Log(String),
    /// Fork and exec a worker as this generation, then feed back
    /// [`Event::Spawned`] or [`Event::SpawnFailed`] before anything else.
    /// Always the last action of a step.
    Spawn { generation: u64 },
    /// Send `signal` to `pid`.
    Kill { pid: i32, signal: Sig },
    /// Replace the status file with these `(generation, pid)` pairs, sorted
    /// by generation.
    WriteStatus(Vec<(u64, i32)>),
    /// Every worker is gone after TERM or INT: tear down and exit.
    Exit,
    /// Tell `--restart` clients how the start in progress goes.
    Progress(Progress),
    /// Tell the service manager (sd_notify); only after
    /// [`Lifecycle::notify_service_manager`].
    Notify(Notice),
}

/// A worker process and the generation it was started as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub pid: i32,
    pub generation: u64,
}

/// Why a generation is being started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Initial,
    Crash,
    Restart,
}

/// A generation being started.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub reason: Reason,
    pub phase: Phase,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Not spawned yet; not before this time, nor within [`RETRY_GAP`] of
    /// the last spawn.
    Waiting { not_before: Time },
    /// [`Action::Spawn`] was returned; its answer has not come yet.
    Spawning { generation: u64 },
    /// Spawned, in its `--interval` start check.
    Checking(Attempt),
}

/// A spawned worker in its start check.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub worker: Worker,
    pub started: Time,
    /// Its wait status, once it exited.
    pub exit: Option<i32>,
    /// Its chdir or exec failed: it is exiting, and the check waits for
    /// its exit whatever the interval.
    pub doomed: bool,
    /// With `--notify-ready`: it sent `READY=1`.
    pub ready: bool,
    /// With `--notify-ready`: when it is killed if it has not sent
    /// `READY=1`; `None`: never (`--notify-timeout=0`).
    pub deadline: Option<Time>,
    /// With `--notify-ready`: it was sent SIGKILL at its deadline; the
    /// check waits for its exit.
    pub killed: bool,
}

/// What [`Lifecycle::due`] found to be next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Spawn,
    Check,
    /// `--notify-timeout` is over for the attempt in its start check.
    NotifyTimeout,
    KillOld,
    /// A signalled worker's `--signal-timeout` is over.
    Escalate,
    Hup,
    AutoRestart {
        forced: bool,
    },
}

/// The supervisor's state.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    config: Config,
    settings: Settings,
    /// The last generation number given out.
    generation: u64,
    current: Option<Worker>,
    old: Vec<Worker>,
    start: Option<Start>,
    /// When the old workers are to be signalled after a restart.
    kill_at: Option<Time>,
    /// When old workers were last signalled.
    killed_at: Option<Time>,
    /// A HUP came that no spawn begun since has answered.
    hup_pending: bool,
    /// The pending HUP came while a restart was under way: its restart
    /// keeps [`HUP_GAP`] from the previous one.
    hup_paced: bool,
    /// When the last restart asked for by HUP was to spawn.
    hup_restart_at: Option<Time>,
    last_restart: Time,
    last_spawn: Option<Time>,
    /// Consecutive failed starts (start checks failed, forks failed) of
    /// the start in progress; with `--max-retry-interval` they space the
    /// next attempt.
    failed_starts: u32,
    /// TERM or INT was received.
    stopping: Option<Stopping>,
    /// With `--signal-timeout`: the workers signalled (after a restart or
    /// at shutdown) and not reaped yet, each with its first signal.
    signalled: Vec<Signalled>,
    /// What the service manager is told, when it is.
    service: Option<Service>,
}

/// What the service manager was told (`--systemd-notify`).
#[derive(Debug, Clone, Default)]
struct Service {
    /// `READY=1` was sent once: later generations made current by a crash
    /// restart or an auto-restart only change `STATUS=`.
    ready_sent: bool,
    /// `RELOADING=1` was sent and its `READY=1` is still to come.
    reloading: bool,
    /// The pending `RELOADING=1` is an upgrade's: its end sends `READY=1`
    /// unless a restart took the reload over meanwhile.
    upgrading: bool,
}

/// After TERM or INT: the workers still to exit, and the signal they got.
/// Once none is left, the core has exited.
#[derive(Debug, Clone)]
struct Stopping {
    remaining: Vec<Worker>,
    signal: Sig,
    /// When TERM or INT came: `--signal-timeout` counts from here, for
    /// the orphans too.
    since: Time,
}

/// A worker sent its retirement or shutdown signal, waited for until
/// `--signal-timeout` after the first one: signalled again (a later
/// restart re-sends the signal to every old worker, as the reference
/// does), it keeps its first deadline.
#[derive(Debug, Clone)]
struct Signalled {
    pid: i32,
    at: Time,
    signal: Sig,
    /// SIGKILL was sent: nothing more to do but wait for its exit.
    killed: bool,
}

impl Lifecycle {
    /// The state at start-up: the first generation is to be started now.
    pub fn new(config: Config, settings: Settings, now: Time) -> Lifecycle {
        Lifecycle {
            config,
            settings,
            generation: 0,
            current: None,
            old: Vec::new(),
            start: Some(Start {
                reason: Reason::Initial,
                phase: Phase::Waiting { not_before: now },
            }),
            kill_at: None,
            killed_at: None,
            hup_pending: false,
            hup_paced: false,
            hup_restart_at: None,
            last_restart: now,
            last_spawn: None,
            failed_starts: 0,
            stopping: None,
            signalled: Vec::new(),
            service: None,
        }
    }

    /// From now on, tell the service manager about the lifecycle
    /// ([`Action::Notify`]).
    pub fn notify_service_manager(&mut self) {
        self.service = Some(Service::default());
    }

    /// The current worker, once one has passed its start check.
    pub fn current(&self) -> Option<Worker> {
        self.current
    }

    /// Whether `pid` is one of our workers (current, old, in its start
    /// check, or still to exit after TERM/INT); any other child is an
    /// orphan or a helper, none of the core's business.
    pub fn is_worker(&self, pid: i32) -> bool {
        let checking = match &self.start {
            Some(Start {
                phase: Phase::Checking(a),
                ..
            }) => Some(a.worker),
            _ => None,
        };
        self.current
            .iter()
            .chain(&self.old)
            .chain(checking.iter())
            .chain(self.stopping.iter().flat_map(|s| &s.remaining))
            .any(|w| w.pid == pid)
    }

    /// Workers of earlier generations that have not exited yet.
    #[cfg(test)]
    pub fn old_workers(&self) -> &[Worker] {
        &self.old
    }

    /// The generation being started, if any.
    #[cfg(test)]
    pub fn start(&self) -> Option<&Start> {
        self.start.as_ref()
    }

    /// The workers still to exit after TERM or INT, once one came.
    pub fn stopping(&self) -> Option<&[Worker]> {
        self.stopping.as_ref().map(|s| s.remaining.as_slice())
    }

    /// A HUP awaits a restart of its own (which begins with `RELOADING=1`).
    #[cfg(test)]
    pub fn hup_pending(&self) -> bool {
        self.hup_pending
    }

    /// When TERM or INT came, once it did.
    pub fn stop_began(&self) -> Option<Time> {
        self.stopping.as_ref().map(|s| s.since)
    }

    /// Every worker is gone after TERM or INT ([`Action::Exit`] was
    /// returned): nothing more happens.
    pub fn exited(&self) -> bool {
        self.stopping
            .as_ref()
            .is_some_and(|s| s.remaining.is_empty())
    }

    #[cfg(test)]
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// What the status file lists: the current and the old workers.
    pub fn status_entries(&self) -> Vec<(u64, i32)> {
        let mut entries: Vec<(u64, i32)> = match &self.stopping {
            Some(stopping) => stopping
                .remaining
                .iter()
                .map(|w| (w.generation, w.pid))
                .collect(),
            None => self
                .current
                .iter()
                .chain(&self.old)
                .map(|w| (w.generation, w.pid))
                .collect(),
        };
        entries.sort_unstable();
        entries
    }

    /// Handles `event` at `now`.
    ///
    /// What was observed (a signal, a child's exit, new settings) is only
    /// recorded: the shell feeds everything it observed in one turn, then
    /// [`Event::Tick`], which carries out what is due, so that decisions
    /// see the whole turn (a worker that exited at the last moment of its
    /// start check counts). The answers to [`Action::Spawn`] are carried
    /// on at once, as part of the step that asked for them.
    pub fn step(&mut self, event: Event, now: Time) -> Vec<Action> {
        let mut out = Vec::new();
        if self.exited() {
            return out;
        }
        // `READY=1` decides at once, so that the old workers are signalled
        // within the step that saw it.
        let decide = matches!(
            event,
            Event::Tick
                | Event::Spawned { .. }
                | Event::SpawnFailed { .. }
                | Event::Ready { .. }
                | Event::Extend { .. }
        );
        match event {
            Event::Tick => {}
            Event::Hup => {
                if self.on_hup() {
                    self.notify_reload_absorbed(&mut out);
                }
            }
            Event::Stop(stop) => self.on_stop(stop, now, &mut out),
            Event::ChildExited { pid, status } => self.on_child_exit(pid, status, &mut out),
            Event::Spawned { pid, failure } => self.on_spawned(pid, failure, now, &mut out),
            Event::SpawnFailed { error } => self.on_spawn_failed(&error, now, &mut out),
            Event::Settings(settings) => self.settings = settings,
            Event::Ready { generation } => {
                if let Some(a) = self.pending_attempt(generation) {
                    a.ready = true;
                }
            }
            Event::Extend { generation, by } => {
                if let Some(a) = self.pending_attempt(generation) {
                    a.deadline = a.deadline.map(|d| d.max(now + by));
                }
            }
            Event::Upgrade(Upgrade::Begun) => self.notify_upgrade_begun(&mut out),
            Event::Upgrade(Upgrade::Ended) => self.notify_upgrade_ended(&mut out),
        }
        if decide {
            self.advance(now, &mut out);
        }
        out
    }

    /// When something is next due, if ever: the time to wake up at.
    pub fn next_deadline(&self) -> Option<Time> {
        self.due().map(|(at, _)| at)
    }

    /// What is due next and when: the earliest `--signal-timeout` of a
    /// signalled worker, or the next rung of the ladder, whichever comes
    /// first (the timeout on a tie).
    fn due(&self) -> Option<(Time, Due)> {
        if self.exited() {
            return None;
        }
        let escalation = self.signal_timeout().and_then(|timeout| {
            self.signalled
                .iter()
                .filter(|s| !s.killed)
                .map(|s| s.at + timeout)
                .min()
                .map(|at| (at, Due::Escalate))
        });
        match (escalation, self.ladder()) {
            (Some(e), Some(l)) if l.0 < e.0 => Some(l),
            (e, l) => e.or(l),
        }
    }

    /// The timing ladder: only one thing at a time, in this order: the
    /// start in progress, the kill-old delay, a HUP, the auto-restart.
    /// Nothing once TERM or INT came.
    fn ladder(&self) -> Option<(Time, Due)> {
        if self.stopping.is_some() {
            return None;
        }
        if let Some(start) = &self.start {
            return match &start.phase {
                Phase::Waiting { not_before } => {
                    let gap_end = self.last_spawn.map_or(Time::ZERO, |t| t + RETRY_GAP);
                    Some(((*not_before).max(gap_end), Due::Spawn))
                }
                Phase::Spawning { .. } => None,
                Phase::Checking(a) if a.doomed && a.exit.is_none() => None,
                Phase::Checking(a) if self.config.readiness.is_none() => {
                    Some((a.started + self.config.interval, Due::Check))
                }
                // With `--notify-ready`: the verdict comes at `READY=1` or
                // at the exit, whichever is first; the deadline kills.
                Phase::Checking(a) if a.ready || a.exit.is_some() => Some((a.started, Due::Check)),
                Phase::Checking(a) if a.killed => None,
                Phase::Checking(a) => a.deadline.map(|at| (at, Due::NotifyTimeout)),
            };
        }
        if let Some(at) = self.kill_at {
            return Some((at, Due::KillOld));
        }
        if self.hup_pending {
            return Some((Time::ZERO, Due::Hup));
        }
        let period = self.settings.auto_restart.as_ref()?.duration();
        if self.old.is_empty() {
            Some((
                self.last_restart + period,
                Due::AutoRestart { forced: false },
            ))
        } else {
            let forced = self.last_restart + period.saturating_mul(2);
            let at = match self.killed_at {
                Some(killed) => forced.max(killed + OLD_EXIT_GRACE),
                None => forced,
            };
            Some((at, Due::AutoRestart { forced: true }))
        }
    }

    /// Carries out whatever is due at `now`, until nothing more is or a
    /// spawn awaits its answer.
    fn advance(&mut self, now: Time, out: &mut Vec<Action>) {
        while let Some((at, what)) = self.due() {
            if at > now {
                return;
            }
            match what {
                Due::Spawn => {
                    self.spawn(now, out);
                    return;
                }
                Due::Check => self.check(now, out),
                Due::NotifyTimeout => self.kill_unready(now, out),
                Due::KillOld => self.kill_old_workers(now, out),
                Due::Escalate => self.escalate(now, out),
                Due::Hup => {
                    self.hup_pending = false;
                    let not_before = match self.hup_restart_at {
                        Some(previous) if self.hup_paced => now.max(previous + HUP_GAP),
                        _ => now,
                    };
                    self.hup_paced = false;
                    self.hup_restart_at = Some(not_before);
                    log(out, "received HUP, spawning a new worker".to_string());
                    self.begin_restart(not_before);
                    self.notify_reloading(out);
                }
                Due::AutoRestart { forced } => {
                    let text = self
                        .settings
                        .auto_restart
                        .as_ref()
                        .map_or_else(String::new, |p| p.text.clone());
                    let kind = if forced { "forced, " } else { "" };
                    log(
                        out,
                        format!("autorestart triggered ({kind}interval={text})"),
                    );
                    self.begin_restart(now);
                }
            }
        }
    }

    /// A HUP starts a restart at once when none is in progress; otherwise
    /// it marks one follow-up restart, unless the spawn it asks for is
    /// still to come anyway: then it is absorbed, and says so (`true`).
    fn on_hup(&mut self) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        if self.config.max_retry_interval.is_some() && self.failed_starts > 0 {
            // Backoff: a HUP starts the count again, and one that comes
            // while a failed start waits for its retry ends the wait (the
            // operator deploying a fix must not wait for the cap), keeping
            // the gaps every spawn keeps. The retry runs the new code: it
            // answers the HUP.
            self.failed_starts = 0;
            let floor = self
                .last_spawn
                .map_or(Time::ZERO, |t| t + self.config.interval);
            if let Some(Start {
                phase: Phase::Waiting { not_before },
                ..
            }) = self.start.as_mut()
            {
                *not_before = floor;
                return true;
            }
        }
        let spawn_to_come = matches!(
            &self.start,
            Some(Start {
                reason: Reason::Restart,
                phase: Phase::Waiting { .. },
            })
        );
        if !spawn_to_come {
            self.hup_pending = true;
            self.hup_paced |=
                self.start.is_some() || self.kill_at.is_some() || !self.old.is_empty();
        }
        spawn_to_come
    }

    fn spawn(&mut self, now: Time, out: &mut Vec<Action>) {
        let Some(start) = self.start.as_mut() else {
            return;
        };
        self.generation += 1;
        self.last_spawn = Some(now);
        start.phase = Phase::Spawning {
            generation: self.generation,
        };
        out.push(Action::Spawn {
            generation: self.generation,
        });
    }

    fn on_spawned(&mut self, pid: i32, failure: Option<String>, now: Time, out: &mut Vec<Action>) {
        let generation = match &self.start {
            Some(Start {
                phase: Phase::Spawning { generation },
                ..
            }) => *generation,
            // Not asked for (shutdown began in between): it must go too.
            _ => {
                let generation = self.generation;
                self.adopt_while_stopping(Worker { pid, generation }, now, out);
                return;
            }
        };
        log(out, format!("starting new worker {pid}"));
        if let Some(failure) = &failure {
            log(out, failure.clone());
        }
        out.push(Action::Progress(Progress::Attempt { generation, pid }));
        let deadline = self
            .config
            .readiness
            .as_ref()
            .and_then(|r| r.timeout.as_ref())
            .map(|t| now + t.duration());
        if let Some(start) = self.start.as_mut() {
            start.phase = Phase::Checking(Attempt {
                worker: Worker { pid, generation },
                started: now,
                exit: None,
                doomed: failure.is_some(),
                ready: false,
                deadline,
                killed: false,
            });
        }
    }

    fn on_spawn_failed(&mut self, error: &str, now: Time, out: &mut Vec<Action>) {
        log(out, format!("failed to start a new worker: {error}"));
        let mut wait = RETRY_GAP.max(self.config.interval);
        if let Some(backoff) = self.count_failed_start() {
            wait = wait.max(backoff);
            log_retry(out, wait, self.failed_starts);
        }
        if let Some(start) = self.start.as_mut() {
            start.phase = Phase::Waiting {
                not_before: now + wait,
            };
        }
    }

    /// Counts a failed start; with `--max-retry-interval`, returns how long
    /// to wait before the next attempt: `interval x 2^(k-1)` after the k-th
    /// failure in a row (from `RETRY_GAP` with `--interval=0`, so that it
    /// still grows), at most the cap.
    fn count_failed_start(&mut self) -> Option<Duration> {
        self.failed_starts = self.failed_starts.saturating_add(1);
        let cap = self.config.max_retry_interval.as_ref()?.duration();
        let base = self.config.interval.max(RETRY_GAP);
        let grown = 1u32
            .checked_shl(self.failed_starts - 1)
            .and_then(|factor| base.checked_mul(factor))
            .unwrap_or(cap);
        Some(grown.min(cap))
    }

    /// A worker spawned after TERM or INT is signalled and waited for.
    fn adopt_while_stopping(&mut self, worker: Worker, now: Time, out: &mut Vec<Action>) {
        if let Some(stopping) = self.stopping.as_mut() {
            stopping.remaining.push(worker);
            let signal = stopping.signal.clone();
            self.send(worker.pid, &signal, now, out);
        }
    }

    /// The start check's verdict, at `--interval` after the spawn.
    fn check(&mut self, now: Time, out: &mut Vec<Action>) {
        let Some(start) = self.start.take() else {
            return;
        };
        let Phase::Checking(attempt) = start.phase else {
            self.start = Some(start);
            return;
        };
        match attempt.exit {
            Some(status) => {
                log(
                    out,
                    format!(
                        "new worker {} seems to have failed to start, exit status:{status}",
                        attempt.worker.pid
                    ),
                );
                // The backoff is measured from this verdict (for a worker
                // that failed its exec, from when its exit was seen), so
                // that the logged delay is the time from this line on.
                // With `--notify-ready` the verdict can come early:
                // `--interval` still spaces the attempts.
                let spacing = (attempt.started + self.config.interval).saturating_sub(now);
                let mut not_before = now + spacing;
                if let Some(backoff) = self.count_failed_start() {
                    let wait = backoff.max(spacing);
                    log_retry(out, wait, self.failed_starts);
                    not_before = now + wait;
                }
                self.start = Some(Start {
                    reason: start.reason,
                    phase: Phase::Waiting { not_before },
                });
                out.push(Action::Progress(Progress::Failed {
                    generation: attempt.worker.generation,
                    pid: attempt.worker.pid,
                    status,
                }));
                self.notify_failed(attempt.worker, status, out);
            }
            None => self.finish_start(attempt.worker, start.reason, now, out),
        }
    }

    /// The attempt of `generation` still waiting for its `READY=1`, alive
    /// and not killed; `None` for any other generation (an old one keeps
    /// sending: ignored).
    fn pending_attempt(&mut self, generation: u64) -> Option<&mut Attempt> {
        if self.stopping.is_some() {
            return None;
        }
        match &mut self.start.as_mut()?.phase {
            Phase::Checking(a)
                if a.worker.generation == generation
                    && a.exit.is_none()
                    && !a.killed
                    && !a.ready =>
            {
                Some(a)
            }
            _ => None,
        }
    }

    /// `--notify-timeout` is over without `READY=1`: SIGKILL; the failed
    /// start is logged when its exit comes.
    fn kill_unready(&mut self, now: Time, out: &mut Vec<Action>) {
        let Some(Start {
            phase: Phase::Checking(a),
            ..
        }) = self.start.as_mut()
        else {
            return;
        };
        a.killed = true;
        // The timeout as extended, not the moment the loop woke up at.
        let deadline = a.deadline.unwrap_or(now);
        let (pid, waited) = (a.worker.pid, deadline.saturating_sub(a.started));
        log(
            out,
            format!(
                "new worker {pid} did not send READY=1 within {} secs (--notify-ready), killing it",
                secs_text(waited)
            ),
        );
        out.push(Action::Kill {
            pid,
            signal: self.config.kill.clone(),
        });
        // A TERM before its exit signals it too; it is never killed twice.
        if self.config.signal_timeout.is_some() {
            self.signalled.push(Signalled {
                pid,
                at: now,
                signal: self.config.kill.clone(),
                killed: true,
            });
        }
    }

    /// The new generation passed its start check.
    fn finish_start(&mut self, worker: Worker, reason: Reason, now: Time, out: &mut Vec<Action>) {
        self.failed_starts = 0;
        self.current = Some(worker);
        self.last_restart = now;
        self.write_status(out);
        out.push(Action::Progress(Progress::Current {
            generation: worker.generation,
            pid: worker.pid,
        }));
        self.notify_current(worker, out);
        if reason != Reason::Restart {
            return;
        }
        let pids = if self.old.is_empty() {
            "none".to_string()
        } else {
            join_pids(&self.old)
        };
        log(
            out,
            format!(
                "new worker is now running, sending {} to old workers:{pids}",
                self.config.signal_on_hup.name
            ),
        );
        let delay = &self.settings.kill_old_delay;
        if delay.value != 0.0 {
            log(
                out,
                format!("sleeping {} secs before killing old workers", delay.text),
            );
        }
        self.kill_at = Some(now + delay.duration());
    }

    fn kill_old_workers(&mut self, now: Time, out: &mut Vec<Action>) {
        self.kill_at = None;
        self.killed_at = Some(now);
        log(out, "killing old workers".to_string());
        let signal = self.config.signal_on_hup.clone();
        for pid in self.old.iter().map(|w| w.pid).collect::<Vec<_>>() {
            self.send(pid, &signal, now, out);
        }
    }

    /// Sends a worker its retirement or shutdown signal; with
    /// `--signal-timeout`, the first one starts its deadline.
    fn send(&mut self, pid: i32, signal: &Sig, now: Time, out: &mut Vec<Action>) {
        out.push(Action::Kill {
            pid,
            signal: signal.clone(),
        });
        if self.config.signal_timeout.is_some() && self.signalled.iter().all(|s| s.pid != pid) {
            self.signalled.push(Signalled {
                pid,
                at: now,
                signal: signal.clone(),
                killed: false,
            });
        }
    }

    fn signal_timeout(&self) -> Option<Duration> {
        self.config.signal_timeout.as_ref().map(Seconds::duration)
    }

    /// SIGKILL to every signalled worker whose `--signal-timeout` is over.
    fn escalate(&mut self, now: Time, out: &mut Vec<Action>) {
        let (Some(timeout), Some(text)) = (
            self.signal_timeout(),
            self.config.signal_timeout.as_ref().map(|s| s.text.clone()),
        ) else {
            return;
        };
        let kind = if self.stopping.is_some() {
            "worker"
        } else {
            "old worker"
        };
        for s in &mut self.signalled {
            if s.killed || s.at + timeout > now {
                continue;
            }
            s.killed = true;
            log(
                out,
                format!(
                    "{kind} {} still running {text} secs after {}, sending {}",
                    s.pid, s.signal.name, self.config.kill.name
                ),
            );
            out.push(Action::Kill {
                pid: s.pid,
                signal: self.config.kill.clone(),
            });
        }
    }

    /// The current worker becomes an old one; a new generation starts.
    fn begin_restart(&mut self, now: Time) {
        if let Some(current) = self.current.take() {
            self.old.push(current);
        }
        self.start = Some(Start {
            reason: Reason::Restart,
            phase: Phase::Waiting { not_before: now },
        });
    }

    fn on_child_exit(&mut self, pid: i32, status: i32, out: &mut Vec<Action>) {
        // Reaped: its pid may be reused, so nothing more may go to it.
        self.signalled.retain(|s| s.pid != pid);
        if let Some(stopping) = self.stopping.as_mut() {
            if let Some(i) = stopping.remaining.iter().position(|w| w.pid == pid) {
                stopping.remaining.remove(i);
                log(out, format!("worker {pid} died, status:{status}"));
                self.write_status(out);
                self.exit_when_all_gone(out);
            }
            return;
        }
        if let Some(Start {
            phase: Phase::Checking(attempt),
            ..
        }) = self.start.as_mut()
        {
            if attempt.worker.pid == pid {
                attempt.exit = Some(status);
                return;
            }
        }
        if self.current.is_some_and(|w| w.pid == pid) {
            log(
                out,
                format!("worker {pid} died unexpectedly with status:{status}, restarting"),
            );
            // The status file keeps listing it until the next generation is
            // up, as under the reference.
            self.current = None;
            if self.start.is_none() {
                self.start = Some(Start {
                    reason: Reason::Crash,
                    phase: Phase::Waiting {
                        not_before: Time::ZERO,
                    },
                });
            }
        } else if let Some(i) = self.old.iter().position(|w| w.pid == pid) {
            log(out, format!("old worker {pid} died, status:{status}"));
            self.old.remove(i);
            self.write_status(out);
            self.notify_old_exited(out);
        }
        // Any other child (the log pipe's shell, an orphan re-parented to
        // us) is reaped silently.
    }

    /// SIGTERM or SIGINT: signal every worker; exit once all are gone.
    fn on_stop(&mut self, stop: Stop, now: Time, out: &mut Vec<Action>) {
        if self.stopping.is_some() {
            return;
        }
        let (received, signal) = match stop {
            Stop::Term => ("TERM", self.config.signal_on_term.clone()),
            Stop::Int => ("INT", self.config.term.clone()),
        };
        // A generation in its start check counts as started (the reference
        // ends the check on TERM/INT and lists it in the status file).
        if let Some(Phase::Checking(attempt)) = self.start.take().map(|s| s.phase) {
            if attempt.exit.is_none() {
                if let Some(current) = self.current.replace(attempt.worker) {
                    self.old.push(current);
                }
                self.write_status(out);
            }
        }
        self.kill_at = None;
        self.hup_pending = false;
        self.hup_paced = false;
        let mut remaining: Vec<Worker> = self.old.drain(..).collect();
        remaining.extend(self.current.take());
        remaining.sort_by_key(|w| w.pid);
        log(
            out,
            format!(
                "received {received}, sending {} to all workers:{}",
                signal.name,
                join_pids(&remaining)
            ),
        );
        for w in &remaining {
            self.send(w.pid, &signal, now, out);
        }
        self.notify_stopping(remaining.len(), out);
        self.stopping = Some(Stopping {
            remaining,
            signal,
            since: now,
        });
        self.exit_when_all_gone(out);
    }

    fn exit_when_all_gone(&mut self, out: &mut Vec<Action>) {
        if self.exited() {
            log(out, "exiting".to_string());
            out.push(Action::Exit);
        }
    }

    fn write_status(&self, out: &mut Vec<Action>) {
        out.push(Action::WriteStatus(self.status_entries()));
    }
}

/// What the service manager hears (`--systemd-notify`): `READY=1` once the
/// first generation is current, `RELOADING=1` when a HUP restart begins
/// and `READY=1` once its generation is current, `STOPPING=1` at TERM or
/// INT, and `STATUS=` lines a person reads in `systemctl status`.
impl Lifecycle {
    fn notice(&mut self, state: Option<State>, status: String, out: &mut Vec<Action>) {
        if self.service.is_some() {
            out.push(Action::Notify(Notice { state, status }));
        }
    }

    /// A HUP restart began (an auto-restart or a crash is no reload: a
    /// reload would propagate to `PropagatesReloadTo=` units). A HUP that
    /// came during a restart causes one more, with a `RELOADING=1` of its
    /// own, newer than the reload request it answers.
    fn notify_reloading(&mut self, out: &mut Vec<Action>) {
        let Some(service) = self.service.as_mut() else {
            return;
        };
        service.reloading = true;
        // A HUP during an upgrade takes its reload over: its generation's
        // `READY=1` ends it.
        service.upgrading = false;
        let status = format!("restarting: starting generation {}", self.generation + 1);
        self.notice(Some(State::Reloading), status, out);
    }

    /// A HUP answered by a spawn already to come: once ready, it is a
    /// reload all the same. systemd, having sent the HUP, ignores `READY=1`
    /// until a `RELOADING=1` stamped after its signal (the shell stamps it
    /// when it sends it), so one goes now, and the generation to come ends
    /// it with `READY=1`.
    fn notify_reload_absorbed(&mut self, out: &mut Vec<Action>) {
        if self.service.as_ref().is_some_and(|s| s.ready_sent) {
            self.notify_reloading(out);
        }
    }

    /// `generation N (pid P) running`, with the old workers still exiting.
    fn running_status(&self, worker: Worker) -> String {
        let mut status = format!(
            "generation {} (pid {}) running",
            worker.generation, worker.pid
        );
        if !self.old.is_empty() {
            status.push_str(&format!("; {} old workers exiting", self.old.len()));
        }
        status
    }

    /// An old worker exited: the count in `STATUS=` goes down.
    fn notify_old_exited(&mut self, out: &mut Vec<Action>) {
        if let (Some(current), None) = (self.current, &self.start) {
            let status = self.running_status(current);
            self.notice(None, status, out);
        }
    }

    /// `worker` passed its start check.
    fn notify_current(&mut self, worker: Worker, out: &mut Vec<Action>) {
        let Some(service) = self.service.as_mut() else {
            return;
        };
        let state = (!service.ready_sent || service.reloading).then_some(State::Ready);
        service.ready_sent = true;
        service.reloading = false;
        let status = self.running_status(worker);
        self.notice(state, status, out);
    }

    /// A new generation failed its start check: not ready yet.
    fn notify_failed(&mut self, worker: Worker, status: i32, out: &mut Vec<Action>) {
        let text = format!(
            "generation {} (pid {}) failed to start (exit status:{status}); {} failed in a row, retrying",
            worker.generation,
            worker.pid,
            self.failed_starts.max(1)
        );
        self.notice(None, text, out);
    }

    /// An upgrade of start_server itself is a reload to systemd, once
    /// start_server was ready and no reload is pending already.
    fn notify_upgrade_begun(&mut self, out: &mut Vec<Action>) {
        let Some(service) = self.service.as_mut() else {
            return;
        };
        if !service.ready_sent || service.reloading {
            return;
        }
        service.reloading = true;
        service.upgrading = true;
        self.notice(
            Some(State::Reloading),
            "upgrading start_server".to_string(),
            out,
        );
    }

    /// The upgrade's reload ends with it, unless a HUP restart took it
    /// over meanwhile (its generation's `READY=1` ends it then) or a
    /// generation made current meanwhile ended it already. A crash or
    /// auto-restart under way does not hold it: it may take long.
    fn notify_upgrade_ended(&mut self, out: &mut Vec<Action>) {
        let Some(service) = self.service.as_mut() else {
            return;
        };
        if !std::mem::take(&mut service.upgrading) || !service.reloading {
            return;
        }
        service.reloading = false;
        let status = match self.current {
            Some(current) => self.running_status(current),
            None => "upgraded; starting a new generation".to_string(),
        };
        self.notice(Some(State::Ready), status, out);
    }

    fn notify_stopping(&mut self, workers: usize, out: &mut Vec<Action>) {
        let status = format!("stopping: waiting for {workers} workers");
        self.notice(Some(State::Stopping), status, out);
    }
}

fn log(out: &mut Vec<Action>, line: String) {
    out.push(Action::Log(line));
}

/// Seconds to the millisecond, without trailing zeros.
fn secs_text(d: Duration) -> String {
    let millis = format!("{:.3}", d.as_secs_f64());
    millis
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

/// `retrying in N secs (K failed starts in a row)`.
fn log_retry(out: &mut Vec<Action>, wait: Duration, failed: u32) {
    let secs = secs_text(wait);
    let starts = if failed == 1 { "start" } else { "starts" };
    log(
        out,
        format!("retrying in {secs} secs ({failed} failed {starts} in a row)"),
    );
}

fn join_pids(workers: &[Worker]) -> String {
    let mut pids: Vec<i32> = workers.iter().map(|w| w.pid).collect();
    pids.sort_unstable();
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Seconds;

    fn sig(number: i32, name: &str) -> Sig {
        Sig {
            number,
            name: name.to_string(),
        }
    }

    fn core(interval_ms: u64) -> Lifecycle {
        let config = Config {
            interval: Duration::from_millis(interval_ms),
            signal_on_hup: sig(15, "TERM"),
            signal_on_term: sig(15, "TERM"),
            term: sig(15, "TERM"),
            kill: sig(9, "KILL"),
            signal_timeout: None,
            max_retry_interval: None,
            readiness: None,
        };
        let settings = Settings {
            auto_restart: None,
            kill_old_delay: Seconds {
                text: "0".to_string(),
                value: 0.0,
            },
        };
        Lifecycle::new(config, settings, Time::ZERO)
    }

    fn ms(n: u64) -> Time {
        Duration::from_millis(n)
    }

    #[test]
    fn a_lone_hup_spawns_at_once_and_signals_the_old_worker_after_the_check() {
        let mut c = core(1000);
        assert_eq!(
            c.step(Event::Tick, ms(0)),
            [Action::Spawn { generation: 1 }]
        );
        c.step(
            Event::Spawned {
                pid: 10,
                failure: None,
            },
            ms(0),
        );
        assert_eq!(c.next_deadline(), Some(ms(1000)));
        c.step(Event::Tick, ms(1000));
        assert_eq!(
            c.current(),
            Some(Worker {
                pid: 10,
                generation: 1
            })
        );
        assert_eq!(c.step(Event::Hup, ms(5000)), []);
        assert_eq!(
            c.step(Event::Tick, ms(5000)),
            [
                Action::Log("received HUP, spawning a new worker".to_string()),
                Action::Spawn { generation: 2 },
            ]
        );
        c.step(
            Event::Spawned {
                pid: 11,
                failure: None,
            },
            ms(5000),
        );
        assert_eq!(
            c.old_workers(),
            [Worker {
                pid: 10,
                generation: 1
            }]
        );
        assert!(c.start().is_some());
        assert_eq!(c.step(Event::Tick, ms(5999)), []);
        let actions = c.step(Event::Tick, ms(6000));
        assert!(actions.contains(&Action::Kill {
            pid: 10,
            signal: c.config().signal_on_hup.clone(),
        }));
        c.step(Event::Stop(Stop::Term), ms(6001));
        assert_eq!(c.stopping().map(<[Worker]>::len), Some(2));
    }

    fn progress(actions: &[Action]) -> Vec<Progress> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Progress(p) => Some(*p),
                _ => None,
            })
            .collect()
    }

    fn notices(actions: &[Action]) -> Vec<(Option<State>, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Notify(n) => Some((n.state, n.status.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_service_manager_hears_ready_reloading_ready_and_stopping() {
        let mut c = core(1000);
        let spawned = |pid| Event::Spawned { pid, failure: None };
        // Nothing unless asked for.
        c.step(Event::Tick, ms(0));
        assert_eq!(notices(&c.step(spawned(10), ms(0))), []);
        assert_eq!(notices(&c.step(Event::Tick, ms(1000))), []);

        let mut c = core(1000);
        c.notify_service_manager();
        c.step(Event::Tick, ms(0));
        assert_eq!(notices(&c.step(spawned(10), ms(0))), []);
        assert_eq!(
            notices(&c.step(Event::Tick, ms(1000))),
            [(
                Some(State::Ready),
                "generation 1 (pid 10) running".to_string()
            )]
        );
        c.step(Event::Hup, ms(2000));
        assert_eq!(
            notices(&c.step(Event::Tick, ms(2000))),
            [(
                Some(State::Reloading),
                "restarting: starting generation 2".to_string()
            )]
        );
        c.step(spawned(11), ms(2000));
        c.step(
            Event::ChildExited {
                pid: 11,
                status: 256,
            },
            ms(2500),
        );
        // A failed attempt: STATUS only, the reload is not done.
        assert_eq!(
            notices(&c.step(Event::Tick, ms(3000))),
            [(
                None,
                "generation 2 (pid 11) failed to start (exit status:256); 1 failed in a row, retrying"
                    .to_string()
            )]
        );
        c.step(spawned(12), ms(3000));
        assert_eq!(
            notices(&c.step(Event::Tick, ms(4000))),
            [(
                Some(State::Ready),
                "generation 3 (pid 12) running; 1 old workers exiting".to_string()
            )]
        );
        assert_eq!(
            notices(&c.step(Event::ChildExited { pid: 10, status: 0 }, ms(4100))),
            [(None, "generation 3 (pid 12) running".to_string())]
        );
        // A crash restart is no reload: STATUS only.
        c.step(Event::ChildExited { pid: 12, status: 9 }, ms(4200));
        c.step(Event::Tick, ms(4200));
        c.step(spawned(13), ms(4200));
        assert_eq!(
            notices(&c.step(Event::Tick, ms(5200))),
            [(None, "generation 4 (pid 13) running".to_string())]
        );
        assert_eq!(c.stop_began(), None);
        assert_eq!(
            notices(&c.step(Event::Stop(Stop::Term), ms(6000))),
            [(
                Some(State::Stopping),
                "stopping: waiting for 1 workers".to_string()
            )]
        );
        // The orphans' `--signal-timeout` counts from here.
        assert_eq!(c.stop_began(), Some(ms(6000)));
    }

    #[test]
    fn a_hup_answered_by_a_retry_is_a_reload_all_the_same() {
        let spawned = |pid| Event::Spawned { pid, failure: None };
        // A HUP restart's fork failed, its retry waits (`--interval`, with
        // or without backoff); a HUP now is answered by that retry.
        for max_retry in [None, Some(5.0)] {
            let mut c = core(1000);
            c.config.max_retry_interval = max_retry.map(|value| Seconds {
                text: format!("{value}"),
                value,
            });
            c.notify_service_manager();
            c.step(Event::Tick, ms(0));
            c.step(spawned(10), ms(0));
            c.step(Event::Tick, ms(1000));
            c.step(Event::Hup, ms(2000));
            c.step(Event::Tick, ms(2000));
            let error = "fork: EAGAIN".to_string();
            c.step(Event::SpawnFailed { error }, ms(2000));
            assert!(matches!(
                c.start(),
                Some(Start {
                    phase: Phase::Waiting { .. },
                    ..
                })
            ));
            // The HUP step itself tells systemd, whose reload began after
            // the first RELOADING=1.
            assert_eq!(
                notices(&c.step(Event::Hup, ms(2200))),
                [(
                    Some(State::Reloading),
                    "restarting: starting generation 3".to_string()
                )]
            );
            let retry = c.step(Event::Tick, ms(3000));
            assert_eq!(retry.last(), Some(&Action::Spawn { generation: 3 }));
            c.step(spawned(11), ms(3000));
            assert_eq!(
                notices(&c.step(Event::Tick, ms(4000))),
                [(
                    Some(State::Ready),
                    "generation 3 (pid 11) running; 1 old workers exiting".to_string()
                )],
                "max retry interval {max_retry:?}"
            );
        }
    }

    #[test]
    fn only_workers_are_workers() {
        let mut c = core(1000);
        c.step(Event::Tick, ms(0));
        c.step(
            Event::Spawned {
                pid: 10,
                failure: None,
            },
            ms(0),
        );
        assert!(c.is_worker(10) && !c.is_worker(11));
        c.step(Event::Tick, ms(1000));
        assert!(c.is_worker(10));
        c.step(Event::Stop(Stop::Term), ms(2000));
        assert!(c.is_worker(10));
        c.step(Event::ChildExited { pid: 10, status: 0 }, ms(2100));
        assert!(!c.is_worker(10));
    }

    #[test]
    fn a_restart_reports_each_attempt_its_failure_and_the_new_current() {
        let mut c = core(1000);
        c.step(Event::Tick, ms(0));
        let spawned = |pid| Event::Spawned { pid, failure: None };
        assert_eq!(
            progress(&c.step(spawned(10), ms(0))),
            [Progress::Attempt {
                generation: 1,
                pid: 10
            }]
        );
        assert_eq!(
            progress(&c.step(Event::Tick, ms(1000))),
            [Progress::Current {
                generation: 1,
                pid: 10
            }]
        );
        c.step(Event::Hup, ms(2000));
        c.step(Event::Tick, ms(2000));
        c.step(spawned(11), ms(2000));
        c.step(
            Event::ChildExited {
                pid: 11,
                status: 256,
            },
            ms(2500),
        );
        let actions = c.step(Event::Tick, ms(3000));
        assert_eq!(
            progress(&actions),
            [Progress::Failed {
                generation: 2,
                pid: 11,
                status: 256
            }]
        );
        assert_eq!(actions.last(), Some(&Action::Spawn { generation: 3 }));
        assert_eq!(
            progress(&c.step(spawned(12), ms(3000))),
            [Progress::Attempt {
                generation: 3,
                pid: 12
            }]
        );
        assert_eq!(
            progress(&c.step(Event::Tick, ms(4000))),
            [Progress::Current {
                generation: 3,
                pid: 12
            }]
        );
    }
}
