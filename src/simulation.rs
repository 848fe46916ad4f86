//! Deterministic simulation of the supervisor core (`lifecycle.rs`).
//!
//! A [`World`] models everything around [`Lifecycle`]: a fake clock, the
//! processes it spawned (pids handed out here when a spawn is answered),
//! and the shell's feeding discipline (`supervisor.rs`): per loop turn
//! `Stop` (if TERM/INT came), `Settings` (if changed), every `ChildExited`,
//! `Hup`, then `Tick`; every `Action::Spawn` answered at once with
//! `Spawned` / `SpawnFailed` in the same step. A random [`Case`] (a setup,
//! a list of world events and a list of spawn outcomes) is generated from a
//! seed, played, then driven to its end: the clock runs on with no more
//! exits until the core is quiet, then a TERM or INT, then every worker
//! exits.
//!
//! Invariants checked after every step (the name in quotes is what a
//! failure reports):
//!
//! - "one current generation": the tracked workers (current, old, the one
//!   in its start check, those awaited after TERM/INT) have distinct pids;
//!   the current worker is newer than every old one, the generation being
//!   started newer than both; once the core is quiet, a generation serves
//!   and every old worker has been sent `--signal-on-hup`.
//! - "restart signals only old workers": before TERM/INT, every kill sends
//!   `--signal-on-hup` to a worker older than the current one, never to the
//!   current worker or the one in its start check.
//! - "old workers signalled after the start check": such a kill comes after
//!   a "new worker is now running" line, no sooner than the kill-old delay
//!   in force at that line.
//! - "spawned pids are tracked": the pids the core tracks are exactly the
//!   pids it was given and has not been told exited; a kill only ever goes
//!   to such a pid (never to one already reaped, which may be reused).
//! - "stop signals every worker": the TERM/INT step signals every tracked
//!   worker with `--signal-on-term` (TERM) or TERM (INT), later kills use
//!   the same signal, and no spawn follows.
//! - "exit only when all are gone": `Exit` comes only after TERM/INT, when
//!   no worker is left, right after an `exiting` line, as the last action;
//!   nothing follows it. At the end of every case, once every worker has
//!   exited after TERM/INT, `Exit` has come.
//! - "HUP burst": a HUP is served by the first spawn after it (in event
//!   order). For the HUPs fed within any window `[t, t + W)`, with
//!   `W = max(--interval, RETRY_GAP)`, at most 3 distinct spawns that were
//!   started by a HUP (a `received HUP` line since the previous spawn) serve
//!   them. Retries (after a failed start, a crash or a failed fork) and
//!   auto-restarts are not counted: they are spawns the HUPs did not ask
//!   for. (Every two spawns are at least `W` apart, and each serving spawn
//!   but the last comes before the window ends, so in fact at most 2.) How
//!   much better than that a storm coalesces (HUPs that come while a
//!   restart is under way wait for `HUP_GAP`) is pinned by the named
//!   timelines below.
//! - "no HUP lost": once the core is quiet at the end, every HUP not
//!   followed by TERM/INT has a spawn after it.
//! - "status file": every `WriteStatus` carries exactly `status_entries()`
//!   as they are after the step, in strictly increasing generation order,
//!   each pair a generation and the pid spawned as it.
//! - "spawn gap": two spawns are never closer than `RETRY_GAP`, nor than
//!   `--interval` (a new spawn waits for the previous start check, or for
//!   a failed fork's retry delay); generations are numbered 1, 2, 3...
//! - "spawn last": `Spawn` is the last action of its step.
//! - "no busy loop": after a turn's tick at `now`, `next_deadline()` is
//!   `None` or later than `now`.
//! - "signal timeout" (`--signal-timeout`): a KILL goes only to a worker
//!   first signalled (after a restart, or at shutdown) at least the
//!   timeout ago, once, right after its `still running` line, and never
//!   without the option; after every turn no signalled worker is alive
//!   past the timeout without a KILL; once quiet (before and after
//!   TERM/INT, the workers ignoring their signal) every signalled worker
//!   left was sent KILL.
//! - "backoff" (`--max-retry-interval`): each failed start (a failed
//!   start check, a failed fork) is followed by `retrying in N secs (K
//!   failed starts in a row)`, and only with the option; K counts the
//!   failures since the last success or HUP; N never exceeds the cap (a
//!   failed fork's usual delay, if longer) and never shrinks, except to the
//!   cap, before a success or a HUP; the start then waits exactly N from
//!   that line and the next spawn comes no sooner (so the gap from a
//!   failure's verdict to the next attempt is at most the cap plus the
//!   retry gap); a HUP during the wait makes the retry due at once (no
//!   sooner than the spawn gap allows).
//! - "readiness" (`--notify-ready`): a generation becomes current (before
//!   TERM/INT) only in the step of a `Ready` for it, and with a kill-old
//!   delay of 0 every old worker is sent `--signal-on-hup` in that very
//!   step; `Ready` and `Extend` for a generation not in its start check
//!   change nothing; the retry after a failed start still waits
//!   `--interval` from the previous spawn (any two spawns stay
//!   `RETRY_GAP` apart).
//! - "notify timeout" (`--notify-timeout`): after every turn, no
//!   attempt that has not sent `READY=1` is alive past its deadline (the
//!   spawn plus the timeout, moved by `Extend`) without a KILL; a KILL
//!   goes to it only then, once, right after its `did not send READY=1`
//!   line.
//! - "service manager" (sd_notify): `READY=1` comes right after a
//!   generation is reported current, at most once per generation, and
//!   only for the first one or to end a reload; every generation made
//!   current while a reload is pending ends it with `READY=1`;
//!   `RELOADING=1` only in the step that logs `received HUP` (and always
//!   there), in a HUP's own step, or when an upgrade begins once ready
//!   with no reload pending (the upgrade's end then sends its `READY=1`,
//!   unless a restart took the reload over); `STOPPING=1` once, in the
//!   TERM/INT step. A HUP once `READY=1` was sent, before TERM/INT,
//!   either sends `RELOADING=1` in its own step or leaves a restart of
//!   its own pending (`received HUP` to come): systemd, having sent the
//!   HUP, waits for a `RELOADING=1` newer than it.
//! - "upgrade round trip": an upgrade (SIGUSR2) saves the core in the
//!   state format and restores it; the restored core is the same.
//! - "log lines": every line is one of docs/behaviour.md section 4's.
//! - "no panic": the core never panics.
//!
//! `SIM_CASES=N` runs N cases instead of 10,000; `SIM_SEED=S` starts at
//! seed S (case i uses seed S + i). A failure is shrunk (fewer events,
//! fewer spawn outcomes, simpler setup, shorter waits) and printed as a
//! timeline, with the seed that replays it and the case in Rust syntax.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::lifecycle::{
    Action, Config, Event, Lifecycle, Phase, RETRY_GAP, Readiness, Sig, Stop, Time, Upgrade, Worker,
};
use crate::progress::Progress;
use crate::settings::{Seconds, Settings, perl_number};
use crate::systemd::{Notice, State};

/// What a child whose exec failed reports (then it exits with 255).
const EXEC_FAILURE: &str = "failed to exec ./app: No such file or directory (os error 2)";
const FORK_FAILURE: &str = "fork: Resource temporarily unavailable (os error 11)";
/// A child that is not a worker: the log pipe's shell.
const STRANGER: i32 = 7;
/// A worker whose exec failed exits with 255: `$?` is 255 << 8.
const EXEC_FAILED_STATUS: i32 = 255 << 8;

/// Every line the core may log (docs/behaviour.md section 4), `{}` standing for text.
const LOG_LINES: &[&str] = &[
    "received HUP, spawning a new worker",
    "autorestart triggered (interval={})",
    "autorestart triggered (forced, interval={})",
    "starting new worker {}",
    "failed to start a new worker: {}",
    "new worker {} seems to have failed to start, exit status:{}",
    "new worker is now running, sending {} to old workers:{}",
    "sleeping {} secs before killing old workers",
    "killing old workers",
    "worker {} died unexpectedly with status:{}, restarting",
    "old worker {} died, status:{}",
    "received {}, sending {} to all workers:{}",
    // No worker left (the reference prints the empty list as is).
    "received {}, sending {} to all workers:",
    "worker {} died, status:{}",
    "exiting",
    EXEC_FAILURE,
    // With --signal-timeout.
    "old worker {} still running {} secs after {}, sending KILL",
    "worker {} still running {} secs after {}, sending KILL",
    // With --max-retry-interval.
    "retrying in {} secs (1 failed start in a row)",
    "retrying in {} secs ({} failed starts in a row)",
    // With --notify-ready.
    "new worker {} did not send READY=1 within {} secs (--notify-ready), killing it",
];

// ---------------------------------------------------------------- cases

/// What the command line and the environment say at start-up.
#[derive(Debug, Clone, PartialEq)]
struct Setup {
    interval_ms: u64,
    on_hup: i32,
    on_term: i32,
    auto_restart: Option<&'static str>,
    kill_old_delay: &'static str,
    /// `--signal-timeout`, if given.
    signal_timeout: Option<&'static str>,
    /// `--max-retry-interval`, if given.
    max_retry: Option<&'static str>,
    /// `--notify-ready`, if given, with `--notify-timeout` (`None`: 0,
    /// for ever).
    readiness: Option<Option<&'static str>>,
    /// How the case ends if it did not stop by itself.
    final_stop: Stop,
}

impl Setup {
    fn plain(interval_ms: u64) -> Setup {
        Setup {
            interval_ms,
            on_hup: 15,
            on_term: 15,
            auto_restart: None,
            kill_old_delay: "0",
            signal_timeout: None,
            max_retry: None,
            readiness: None,
            final_stop: Stop::Term,
        }
    }
}

/// Something that happens in the world.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// The loop wakes up with nothing due (or to act on what came).
    Turn,
    /// The clock moves on; the loop wakes at every deadline on the way, or
    /// only at the end when it is `late` (a loaded machine).
    Advance {
        ms: u64,
        late: bool,
    },
    /// The clock moves to the next deadline, and the loop wakes.
    ToDeadline,
    Hup,
    Stop(Stop),
    /// A live process exits (if there is one of that kind).
    Exit {
        who: Who,
        status: i32,
    },
    /// The envdir changes.
    Settings {
        auto_restart: Option<&'static str>,
        kill_old_delay: &'static str,
    },
    /// `READY=1` arrives on the socket of the newest generation spawned
    /// minus `back` (with `--notify-ready`).
    Ready {
        back: u8,
    },
    /// `EXTEND_TIMEOUT_USEC` arrives likewise.
    Extend {
        back: u8,
        ms: u64,
    },
    /// start_server upgrades itself (SIGUSR2): the core is saved in the
    /// state format and restored from it, as the new image does.
    Upgrade,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Current,
    /// The worker in its start check.
    Checking,
    Old(u8),
    /// A worker that was sent a signal.
    Signalled(u8),
    Any(u8),
    /// A child that is no worker.
    Stranger,
}

/// How a spawn goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    /// Forked, but the exec failed: the child exits with 255 at once.
    ExecFailed,
    ForkFailed,
}

#[derive(Debug, Clone, PartialEq)]
struct Case {
    setup: Setup,
    ops: Vec<Op>,
    /// The outcomes of the spawns, in order; `Ok` once they run out.
    answers: Vec<Answer>,
}

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// An index chosen by weight.
    fn weighted(&mut self, weights: &[u64]) -> usize {
        let mut n = self.below(weights.iter().sum());
        for (i, w) in weights.iter().enumerate() {
            if n < *w {
                return i;
            }
            n -= w;
        }
        unreachable!()
    }
}

const AUTO_RESTART: &[Option<&str>] = &[None, None, None, Some("1"), Some("0.5"), Some("3")];
const KILL_OLD_DELAY: &[&str] = &["0", "0", "0.3", "1", "5"];

fn generate(seed: u64) -> Case {
    let mut rng = Rng(seed);
    let setup = Setup {
        interval_ms: rng.pick(&[0, 0, 100, 250, 1000, 1000, 2000]),
        on_hup: rng.pick(&[15, 15, 10, 3]),
        on_term: rng.pick(&[15, 15, 3]),
        auto_restart: rng.pick(AUTO_RESTART),
        kill_old_delay: rng.pick(KILL_OLD_DELAY),
        signal_timeout: rng.pick(&[None, None, Some("0.3"), Some("1"), Some("3")]),
        max_retry: rng.pick(&[None, None, Some("0.05"), Some("0.5"), Some("2"), Some("10")]),
        readiness: rng.pick(&[
            None,
            None,
            Some(None),
            Some(Some("0.5")),
            Some(Some("1")),
            Some(Some("3")),
        ]),
        final_stop: rng.pick(&[Stop::Term, Stop::Int]),
    };
    let len = 1 + rng.below(200);
    let ops = (0..len).map(|_| random_op(&mut rng)).collect();
    let answers = (0..rng.below(40))
        .map(|_| [Answer::Ok, Answer::ExecFailed, Answer::ForkFailed][rng.weighted(&[6, 2, 1])])
        .collect();
    Case {
        setup,
        ops,
        answers,
    }
}

fn random_op(rng: &mut Rng) -> Op {
    match rng.weighted(&[80, 200, 200, 120, 4, 160, 30, 100, 30, 20]) {
        0 => Op::Turn,
        1 => Op::Advance {
            ms: match rng.below(4) {
                0 => rng.below(5000),
                _ => rng.pick(&[0, 1, 10, 99, 100, 101, 249, 250, 500, 999, 1000, 1001, 2000]),
            },
            late: rng.below(5) == 0,
        },
        2 => Op::ToDeadline,
        3 => Op::Hup,
        4 => Op::Stop(rng.pick(&[Stop::Term, Stop::Int])),
        5 => {
            let i = rng.below(256) as u8;
            let who = [
                Who::Current,
                Who::Checking,
                Who::Old(i),
                Who::Signalled(i),
                Who::Any(i),
                Who::Stranger,
            ][rng.weighted(&[3, 3, 2, 5, 2, 1])];
            let status = rng.pick(&[0, 256, EXEC_FAILED_STATUS, 2, 9, 15, 3, 10, 139]);
            Op::Exit { who, status }
        }
        6 => Op::Settings {
            auto_restart: rng.pick(AUTO_RESTART),
            kill_old_delay: rng.pick(KILL_OLD_DELAY),
        },
        7 => Op::Ready {
            back: rng.pick(&[0, 0, 0, 1, 2]),
        },
        8 => Op::Extend {
            back: rng.pick(&[0, 0, 1]),
            ms: rng.pick(&[1, 100, 500, 2000, 10_000]),
        },
        _ => Op::Upgrade,
    }
}

// ---------------------------------------------------------------- the world

/// An invariant that did not hold.
#[derive(Debug, Clone)]
struct Failure {
    rule: &'static str,
    detail: String,
}

macro_rules! ensure {
    ($cond:expr, $rule:expr, $($detail:tt)*) => {
        if !$cond {
            return Err(Failure { rule: $rule, detail: format!($($detail)*) });
        }
    };
}

type Checked = Result<(), Failure>;

fn sig(number: i32) -> Sig {
    let name = match number {
        2 => "INT",
        3 => "QUIT",
        9 => "KILL",
        10 => "USR1",
        15 => "TERM",
        _ => "?",
    };
    Sig {
        number,
        name: name.to_string(),
    }
}

fn seconds(text: &str) -> Seconds {
    Seconds {
        text: text.to_string(),
        value: perl_number(text),
    }
}

fn settings(auto_restart: Option<&str>, kill_old_delay: &str) -> Settings {
    Settings {
        auto_restart: auto_restart.map(seconds),
        kill_old_delay: seconds(kill_old_delay),
    }
}

fn ms(n: u64) -> Time {
    Duration::from_millis(n)
}

/// A process the core spawned, whose exit it has not been told of yet.
#[derive(Debug)]
struct Process {
    generation: u64,
    signals: Vec<i32>,
    /// When it was first sent a signal other than KILL.
    signalled_at: Option<Time>,
    /// It was sent KILL.
    killed: bool,
    /// It exited; the shell has yet to reap it.
    exited: bool,
}

/// What the shell has observed and will feed at its next turn.
#[derive(Debug, Default)]
struct Pending {
    stop: Option<Stop>,
    exits: Vec<(i32, i32)>,
    /// `Ready` and `Extend` read from the notify sockets.
    notes: Vec<Event>,
    hup: bool,
}

/// Why a spawn happened, from the lines logged since the previous one.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cause {
    Initial,
    Hup,
    AutoRestart,
    Retry,
}

#[derive(Debug)]
struct SpawnRecord {
    step: usize,
    at: Time,
    cause: Cause,
}

struct World {
    core: Lifecycle,
    interval: Duration,
    now: Time,
    next_pid: i32,
    processes: BTreeMap<i32, Process>,
    /// Every pid handed to the core, with its generation.
    spawned: BTreeMap<i32, u64>,
    answers: VecDeque<Answer>,
    /// The settings as the envdir has them now.
    settings: Settings,
    pending: Pending,
    /// Steps taken (the event order).
    steps: usize,
    stopped: Option<(usize, Stop)>,
    exit_seen: bool,
    /// HUPs fed before any TERM/INT: (step, time).
    hups: Vec<(usize, Time)>,
    spawns: Vec<SpawnRecord>,
    /// Lines seen since the last spawn: HUP, auto-restart, failure.
    seen_hup: bool,
    seen_auto: bool,
    seen_failure: bool,
    /// The last "new worker is now running": when, and the kill-old delay.
    running: Option<(Time, Duration)>,
    /// `--signal-timeout`.
    signal_timeout: Option<Duration>,
    /// `--max-retry-interval`.
    max_retry: Option<Duration>,
    /// The newest generation the status file listed.
    listed: u64,
    /// `--notify-ready`, with `--notify-timeout`.
    readiness: Option<Option<Duration>>,
    /// The readiness deadline of each generation spawned (`None`: never).
    deadlines: BTreeMap<u64, Option<Time>>,
    /// A failed start (not a crash) since the last spawn.
    seen_failed_start: bool,
    /// Failed starts in a row, since the last success or HUP.
    failed_in_row: u32,
    /// The wait announced after the previous one of them.
    last_wait: Option<Duration>,
    /// The last failed start awaiting its retry: when, and the wait
    /// announced (until the next spawn, or a HUP).
    retry: Option<(Time, Duration)>,
    /// The step of a HUP that came while a failed start awaited its retry
    /// (this turn).
    hup_in_backoff: Option<usize>,
    /// The timeline, when recording.
    trace: Option<Vec<String>>,
    /// Every action with its time, when recording.
    actions: Vec<(Time, Action)>,
    /// The generations the service manager was told `READY=1` for.
    ready_told: BTreeSet<u64>,
    /// `RELOADING=1` was sent and its `READY=1` is still to come.
    reload_told: bool,
    /// `STOPPING=1` was sent.
    stopping_told: bool,
}

impl World {
    fn new(setup: &Setup, answers: &[Answer], record: bool) -> World {
        let config = Config {
            interval: ms(setup.interval_ms),
            signal_on_hup: sig(setup.on_hup),
            signal_on_term: sig(setup.on_term),
            term: sig(15),
            kill: sig(9),
            signal_timeout: setup.signal_timeout.map(seconds),
            max_retry_interval: setup.max_retry.map(seconds),
            readiness: setup.readiness.map(|timeout| Readiness {
                timeout: timeout.map(seconds).filter(|t| t.value > 0.0),
            }),
        };
        let settings = settings(setup.auto_restart, setup.kill_old_delay);
        let mut core = Lifecycle::new(config, settings.clone(), Time::ZERO);
        core.notify_service_manager();
        World {
            core,
            interval: ms(setup.interval_ms),
            now: Time::ZERO,
            next_pid: 101,
            processes: BTreeMap::new(),
            spawned: BTreeMap::new(),
            answers: answers.iter().copied().collect(),
            settings,
            pending: Pending::default(),
            steps: 0,
            stopped: None,
            exit_seen: false,
            hups: Vec::new(),
            spawns: Vec::new(),
            seen_hup: false,
            seen_auto: false,
            seen_failure: false,
            running: None,
            signal_timeout: setup.signal_timeout.map(|t| seconds(t).duration()),
            max_retry: setup.max_retry.map(|t| seconds(t).duration()),
            listed: 0,
            readiness: setup
                .readiness
                .map(|t| t.map(|t| seconds(t).duration()).filter(|d| !d.is_zero())),
            deadlines: BTreeMap::new(),
            seen_failed_start: false,
            failed_in_row: 0,
            last_wait: None,
            retry: None,
            hup_in_backoff: None,
            trace: record.then(Vec::new),
            actions: Vec::new(),
            ready_told: BTreeSet::new(),
            reload_told: false,
            stopping_told: false,
        }
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(format!("t={:>8.3}s  {}", self.now.as_secs_f64(), what()));
        }
    }

    fn recording(&self) -> bool {
        self.trace.is_some()
    }

    // ------------------------------------------------------------ events

    fn apply(&mut self, op: &Op) -> Checked {
        match op {
            Op::Turn => self.turn(),
            Op::Advance { ms: n, late } => self.advance(ms(*n), *late),
            Op::ToDeadline => {
                if let Some(at) = self.core.next_deadline() {
                    self.set_clock(at);
                }
                self.turn()
            }
            Op::Hup => {
                self.hup();
                Ok(())
            }
            Op::Stop(stop) => {
                self.stop(*stop);
                Ok(())
            }
            Op::Exit { who, status } => {
                if let Some(pid) = self.choose(*who) {
                    self.exit(pid, *status);
                }
                Ok(())
            }
            Op::Settings {
                auto_restart,
                kill_old_delay,
            } => {
                self.settings = settings(*auto_restart, kill_old_delay);
                self.note(|| {
                    format!(
                        "   envdir: auto-restart {auto_restart:?}, kill-old delay {kill_old_delay}"
                    )
                });
                Ok(())
            }
            Op::Ready { back } => {
                if let Some(generation) = self.spawns.len().checked_sub(*back as usize) {
                    self.ready(generation as u64);
                }
                Ok(())
            }
            Op::Extend { back, ms: n } => {
                if let Some(generation) = self.spawns.len().checked_sub(*back as usize) {
                    self.extend(generation as u64, ms(*n));
                }
                Ok(())
            }
            Op::Upgrade => self.upgrade(),
        }
    }

    /// The core goes through the state format and back; the restored one
    /// must be the same core, and the timeline goes on with it.
    fn upgrade(&mut self) -> Checked {
        self.feed(Event::Upgrade(Upgrade::Begun))?;
        self.note(|| "   upgrade: core saved and restored".to_string());
        let mut w = crate::state::Writer::new();
        self.core.save(&mut w);
        let bytes = w.into_bytes();
        let restored = crate::state::Reader::new(&bytes).and_then(|mut r| {
            let core = Lifecycle::restore(self.core.config().clone(), &mut r)?;
            r.finish().map(|()| core)
        });
        let restored = restored.map_err(|e| Failure {
            rule: "upgrade round trip",
            detail: format!("the saved core did not read back: {e}"),
        })?;
        let (before, after) = (format!("{:?}", self.core), format!("{restored:?}"));
        ensure!(
            before == after,
            "upgrade round trip",
            "restored core differs:\n  saved:    {before}\n  restored: {after}"
        );
        self.core = restored;
        self.feed(Event::Upgrade(Upgrade::Ended))
    }

    /// `READY=1` comes on `generation`'s socket (only with `--notify-ready`:
    /// without it there is none).
    fn ready(&mut self, generation: u64) {
        if self.readiness.is_some() && generation > 0 {
            self.note(|| format!("   READY=1 from generation {generation}"));
            self.pending.notes.push(Event::Ready { generation });
        }
    }

    fn extend(&mut self, generation: u64, by: Duration) {
        if self.readiness.is_some() && generation > 0 {
            self.note(|| format!("   EXTEND_TIMEOUT_USEC from generation {generation}"));
            self.pending.notes.push(Event::Extend { generation, by });
        }
    }

    fn hup(&mut self) {
        self.note(|| "   HUP arrives".to_string());
        self.pending.hup = true;
    }

    fn stop(&mut self, stop: Stop) {
        self.note(|| format!("   {stop:?} arrives"));
        // The shell keeps the first of TERM and INT.
        self.pending.stop.get_or_insert(stop);
    }

    /// Process `pid` exits; the shell will reap it at its next turn.
    fn exit(&mut self, pid: i32, status: i32) {
        self.note(|| format!("   pid {pid} exits, status {status}"));
        if let Some(p) = self.processes.get_mut(&pid) {
            p.exited = true;
        }
        self.pending.exits.push((pid, status));
    }

    fn live(&self) -> impl Iterator<Item = (&i32, &Process)> {
        self.processes.iter().filter(|(_, p)| !p.exited)
    }

    fn is_live(&self, pid: i32) -> bool {
        self.processes.get(&pid).is_some_and(|p| !p.exited)
    }

    fn choose(&self, who: Who) -> Option<i32> {
        let nth = |pids: Vec<i32>, i: u8| -> Option<i32> {
            (!pids.is_empty()).then(|| pids[i as usize % pids.len()])
        };
        match who {
            Who::Current => self.core.current().map(|w| w.pid),
            Who::Checking => checking(&self.core).map(|w| w.pid),
            Who::Old(i) => nth(self.core.old_workers().iter().map(|w| w.pid).collect(), i),
            Who::Signalled(i) => nth(
                self.live()
                    .filter(|(_, p)| !p.signals.is_empty())
                    .map(|(pid, _)| *pid)
                    .collect(),
                i,
            ),
            Who::Any(i) => nth(self.live().map(|(pid, _)| *pid).collect(), i),
            Who::Stranger => Some(STRANGER),
        }
        .filter(|pid| *pid == STRANGER || self.is_live(*pid))
    }

    fn set_clock(&mut self, at: Time) {
        if at > self.now {
            self.now = at;
        }
    }

    /// Moves the clock on by `by`, waking at each deadline on the way
    /// unless the loop is `late`.
    fn advance(&mut self, by: Duration, late: bool) -> Checked {
        let target = self.now + by;
        self.note(|| {
            format!(
                "   clock +{}ms{}",
                by.as_millis(),
                if late { " (late)" } else { "" }
            )
        });
        if !late {
            let mut turns = 0;
            while let Some(at) = self.core.next_deadline() {
                if at > target {
                    break;
                }
                self.set_clock(at);
                self.turn()?;
                turns += 1;
                ensure!(turns < 100_000, "no busy loop", "deadlines never end");
            }
        }
        self.set_clock(target);
        self.turn()
    }

    /// One turn of the shell's loop: what it observed, then a tick.
    fn turn(&mut self) -> Checked {
        if let Some(stop) = self.pending.stop.take() {
            self.feed(Event::Stop(stop))?;
        }
        if self.core.settings() != &self.settings {
            self.feed(Event::Settings(self.settings.clone()))?;
        }
        for (pid, status) in std::mem::take(&mut self.pending.exits) {
            self.processes.remove(&pid);
            self.feed(Event::ChildExited { pid, status })?;
        }
        for note in std::mem::take(&mut self.pending.notes) {
            self.feed(note)?;
        }
        if std::mem::take(&mut self.pending.hup) {
            self.feed(Event::Hup)?;
        }
        self.feed(Event::Tick)?;
        if let Some(at) = self.core.next_deadline() {
            ensure!(
                at > self.now,
                "no busy loop",
                "after a tick at {:?} the next deadline is {at:?}",
                self.now
            );
        }
        self.check_signal_timeouts()?;
        self.check_notify_timeout()?;
        self.check_hup_in_backoff()
    }

    /// After a turn, the attempt in its start check is not alive past its
    /// readiness deadline without a KILL.
    fn check_notify_timeout(&self) -> Checked {
        let Some(w) = checking(&self.core) else {
            return Ok(());
        };
        let Some(Some(deadline)) = self.deadlines.get(&w.generation) else {
            return Ok(());
        };
        let p = &self.processes[&w.pid];
        ensure!(
            p.exited || p.killed || *deadline > self.now,
            "notify timeout",
            "worker {} alive without READY=1 at {:?}, its deadline {deadline:?}, no KILL",
            w.pid,
            self.now
        );
        Ok(())
    }

    /// After a turn, no worker is alive past its `--signal-timeout`
    /// without a KILL: everything due was done.
    fn check_signal_timeouts(&self) -> Checked {
        let Some(timeout) = self.signal_timeout else {
            return Ok(());
        };
        for (pid, p) in self.live() {
            if let (Some(at), false) = (p.signalled_at, p.killed) {
                ensure!(
                    at + timeout > self.now,
                    "signal timeout",
                    "worker {pid}, signalled at {at:?}, alive at {:?} without a KILL",
                    self.now
                );
            }
        }
        Ok(())
    }

    /// After the turn of a HUP that came during a backoff wait, the retry
    /// was spawned, or is due as soon as the spawn gaps allow.
    fn check_hup_in_backoff(&mut self) -> Checked {
        let Some(hup) = self.hup_in_backoff.take() else {
            return Ok(());
        };
        if self.spawns.last().is_some_and(|s| s.step > hup) {
            return Ok(());
        }
        let floor = self
            .spawns
            .last()
            .map_or(Time::ZERO, |s| s.at + RETRY_GAP.max(self.interval));
        let due = self.core.next_deadline();
        ensure!(
            due.is_some_and(|at| at <= floor.max(self.now)),
            "backoff",
            "a HUP during a backoff wait at {:?}, and the retry is due at {due:?}",
            self.now
        );
        Ok(())
    }

    /// Feeds one event and carries out the actions, answering a spawn at
    /// once, as the shell does.
    fn feed(&mut self, event: Event) -> Checked {
        if self.recording() {
            let shown = show_event(&event);
            self.note(|| format!("<- {shown}"));
        }
        let step = self.steps;
        self.steps += 1;
        let was_exited = self.core.exited();
        let was_stopping = self.core.stopping().is_some();
        match &event {
            Event::Stop(stop) if self.stopped.is_none() => self.stopped = Some((step, *stop)),
            Event::Hup if self.stopped.is_none() => self.hups.push((step, self.now)),
            _ => {}
        }
        if event == Event::Hup {
            // A HUP starts the count of failed starts again.
            if self.max_retry.is_some() && self.retry.is_some() && self.stopped.is_none() {
                self.hup_in_backoff = Some(step);
            }
            (self.failed_in_row, self.last_wait, self.retry) = (0, None, None);
        }
        if let Event::Extend { generation, by } = &event {
            let alive = checking(&self.core)
                .filter(|w| w.generation == *generation && !self.processes[&w.pid].killed);
            if let (Some(_), false) = (alive, was_stopping) {
                if let Some(Some(deadline)) = self.deadlines.get_mut(generation) {
                    *deadline = (*deadline).max(self.now + *by);
                }
            }
        }
        let was_current = self.core.current();
        let actions = self.core.step(event.clone(), self.now);
        self.check_readiness(&event, was_current, &actions)?;
        if self.recording() {
            for a in &actions {
                let shown = show_action(a);
                self.note(|| format!("-> {shown}"));
                self.actions.push((self.now, a.clone()));
            }
        }
        let was_ready = !self.ready_told.is_empty();
        self.check_step(step, &event, &actions, was_exited, was_stopping)?;
        self.check_reload_told(&event, &actions, was_ready && !was_stopping)?;
        for action in actions {
            match action {
                Action::Kill { pid, signal } => {
                    let now = self.now;
                    if let Some(p) = self.processes.get_mut(&pid) {
                        p.signals.push(signal.number);
                        if signal.number == 9 {
                            p.killed = true;
                        } else {
                            p.signalled_at.get_or_insert(now);
                        }
                    }
                }
                Action::Spawn { generation } => {
                    let answer = self.answer(generation);
                    self.feed(answer)?;
                }
                Action::Exit => self.exit_seen = true,
                Action::Log(_)
                | Action::WriteStatus(_)
                | Action::Progress(_)
                | Action::Notify(_) => {}
            }
        }
        Ok(())
    }

    fn answer(&mut self, generation: u64) -> Event {
        let answer = self.answers.pop_front().unwrap_or(Answer::Ok);
        if answer == Answer::ForkFailed {
            return Event::SpawnFailed {
                error: FORK_FAILURE.to_string(),
            };
        }
        let pid = self.next_pid;
        self.next_pid += 1;
        self.spawned.insert(pid, generation);
        if let Some(timeout) = self.readiness {
            self.deadlines
                .insert(generation, timeout.map(|t| self.now + t));
        }
        self.processes.insert(
            pid,
            Process {
                generation,
                signals: Vec::new(),
                signalled_at: None,
                killed: false,
                exited: false,
            },
        );
        let failure = if answer == Answer::ExecFailed {
            self.exit(pid, EXEC_FAILED_STATUS);
            Some(EXEC_FAILURE.to_string())
        } else {
            None
        };
        Event::Spawned { pid, failure }
    }

    // ------------------------------------------------------------ invariants

    fn check_step(
        &mut self,
        step: usize,
        event: &Event,
        actions: &[Action],
        was_exited: bool,
        was_stopping: bool,
    ) -> Checked {
        ensure!(
            !was_exited || actions.is_empty(),
            "exit only when all are gone",
            "actions after Exit: {actions:?}"
        );
        let stop_signal = self.stopped.map(|(_, stop)| match stop {
            Stop::Term => self.core.config().signal_on_term.clone(),
            Stop::Int => self.core.config().term.clone(),
        });
        for (i, action) in actions.iter().enumerate() {
            let last = i + 1 == actions.len();
            match action {
                Action::Log(line) => {
                    self.check_line(line)?;
                    if is_failed_start(line) {
                        self.check_retry(line, actions.get(i + 1))?;
                    } else if line.starts_with("retrying in ") {
                        let after_failure = i > 0
                            && matches!(&actions[i - 1], Action::Log(l) if is_failed_start(l));
                        ensure!(
                            after_failure,
                            "backoff",
                            "{line:?} not right after a failed start: {actions:?}"
                        );
                    }
                }
                Action::Spawn { generation } => {
                    if let Some((failed_at, wait)) = self.retry.take() {
                        ensure!(
                            self.now >= failed_at + wait,
                            "backoff",
                            "retried at {:?}, the start that failed at {failed_at:?} was to \
                             wait {wait:?}",
                            self.now
                        );
                    }
                    ensure!(last, "spawn last", "{actions:?}");
                    ensure!(
                        self.stopped.is_none(),
                        "stop signals every worker",
                        "spawn of generation {generation} after TERM/INT"
                    );
                    ensure!(
                        *generation == self.spawns.len() as u64 + 1,
                        "spawn gap",
                        "generation {generation} after {} spawns",
                        self.spawns.len()
                    );
                    if let Some(previous) = self.spawns.last() {
                        let gap = self.now - previous.at;
                        // With --notify-ready, --interval only spaces
                        // attempts: the retry after a failed one.
                        let spacing = if self.readiness.is_none() || self.seen_failed_start {
                            self.interval
                        } else {
                            Duration::ZERO
                        };
                        ensure!(
                            gap >= RETRY_GAP.max(spacing),
                            "spawn gap",
                            "spawns {gap:?} apart (at {:?} and {:?})",
                            previous.at,
                            self.now
                        );
                    }
                    let cause = if self.seen_hup {
                        Cause::Hup
                    } else if self.seen_auto {
                        Cause::AutoRestart
                    } else if self.seen_failure {
                        Cause::Retry
                    } else {
                        Cause::Initial
                    };
                    (self.seen_hup, self.seen_auto, self.seen_failure) = (false, false, false);
                    self.seen_failed_start = false;
                    self.spawns.push(SpawnRecord {
                        step,
                        at: self.now,
                        cause,
                    });
                }
                Action::Kill { pid, signal } => {
                    ensure!(
                        self.processes.contains_key(pid),
                        "spawned pids are tracked",
                        "kill {pid}, which is not a worker or was reaped"
                    );
                    let unready = i > 0
                        && matches!(&actions[i - 1], Action::Log(l)
                            if l.contains("did not send READY=1"));
                    if *signal == self.core.config().kill && unready {
                        self.check_notify_kill(*pid, actions, i)?;
                        continue;
                    }
                    if *signal == self.core.config().kill {
                        self.check_escalation(*pid, actions, i)?;
                        continue;
                    }
                    if let Some(stop_signal) = &stop_signal {
                        ensure!(
                            signal == stop_signal,
                            "stop signals every worker",
                            "kill {pid} with {} after TERM/INT",
                            signal.name
                        );
                        continue;
                    }
                    self.check_restart_kill(*pid, signal)?;
                }
                Action::WriteStatus(entries) => {
                    let state = self.core.status_entries();
                    ensure!(
                        *entries == state,
                        "status file",
                        "wrote {entries:?}, state has {state:?}"
                    );
                    ensure!(
                        entries.windows(2).all(|p| p[0].0 < p[1].0),
                        "status file",
                        "not in generation order: {entries:?}"
                    );
                    for (generation, pid) in entries {
                        ensure!(
                            self.spawned.get(pid) == Some(generation),
                            "status file",
                            "{generation}:{pid} was not spawned as such"
                        );
                    }
                    // A generation listed for the first time passed its
                    // start check.
                    if let Some((generation, _)) = entries.last() {
                        if *generation > self.listed {
                            self.listed = *generation;
                            (self.failed_in_row, self.last_wait) = (0, None);
                        }
                    }
                }
                Action::Exit => {
                    ensure!(
                        self.stopped.is_some() && last,
                        "exit only when all are gone",
                        "Exit without TERM/INT, or not last: {actions:?}"
                    );
                    ensure!(
                        self.processes.is_empty(),
                        "exit only when all are gone",
                        "Exit while {:?} have not been reaped",
                        self.processes.keys().collect::<Vec<_>>()
                    );
                    ensure!(
                        i > 0 && actions[i - 1] == Action::Log("exiting".to_string()),
                        "exit only when all are gone",
                        "Exit not right after `exiting`: {actions:?}"
                    );
                }
                Action::Progress(_) | Action::Notify(_) => self.check_notice(event, actions, i)?,
            }
        }
        let stopping = self.core.stopping().is_some();
        if let Some((failed_at, wait)) = self.retry.filter(|(at, _)| *at == self.now && !stopping) {
            let not_before = match self.core.start().map(|s| &s.phase) {
                Some(Phase::Waiting { not_before }) => Some(*not_before),
                _ => None,
            };
            ensure!(
                not_before == Some(failed_at + wait),
                "backoff",
                "announced a wait of {wait:?} at {failed_at:?}, the start waits until \
                 {not_before:?}"
            );
        }
        let exited_now = actions.contains(&Action::Exit);
        ensure!(
            exited_now == (self.core.exited() && !was_exited),
            "exit only when all are gone",
            "Exit returned: {exited_now}, core exited: {}",
            self.core.exited()
        );
        if matches!(event, Event::Stop(_)) && !was_stopping {
            let killed: BTreeSet<i32> = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Kill { pid, .. } => Some(*pid),
                    _ => None,
                })
                .collect();
            let workers: BTreeSet<i32> = self.processes.keys().copied().collect();
            ensure!(
                killed == workers,
                "stop signals every worker",
                "signalled {killed:?}, workers are {workers:?}"
            );
        }
        self.check_state()
    }

    /// A kill before TERM/INT: the end of a restart.
    /// The "service manager" rule, at `actions[i]` (a `Progress` or a
    /// `Notify`).
    fn check_notice(&mut self, event: &Event, actions: &[Action], i: usize) -> Checked {
        let rule = "service manager";
        match &actions[i] {
            Action::Progress(Progress::Current { generation, .. }) => {
                let must_tell = self.ready_told.is_empty() || self.reload_told;
                let told = matches!(
                    actions.get(i + 1),
                    Some(Action::Notify(Notice {
                        state: Some(State::Ready),
                        ..
                    }))
                );
                ensure!(
                    told == must_tell,
                    rule,
                    "generation {generation} current (first told: {}, reload pending: {}), \
                     READY=1 {}: {actions:?}",
                    self.ready_told.is_empty(),
                    self.reload_told,
                    if told { "sent" } else { "not sent" }
                );
            }
            Action::Notify(notice) => match notice.state {
                // The end of an upgrade ends its own reload.
                Some(State::Ready) if *event == Event::Upgrade(Upgrade::Ended) => {
                    ensure!(
                        self.reload_told && !self.ready_told.is_empty(),
                        rule,
                        "READY=1 at the end of an upgrade without its reload: {actions:?}"
                    );
                    self.reload_told = false;
                }
                Some(State::Ready) => {
                    let generation = match i.checked_sub(1).map(|j| &actions[j]) {
                        Some(Action::Progress(Progress::Current { generation, .. })) => *generation,
                        _ => {
                            return Err(Failure {
                                rule,
                                detail: format!("READY=1 not right after a current: {actions:?}"),
                            });
                        }
                    };
                    ensure!(
                        self.ready_told.insert(generation),
                        rule,
                        "READY=1 twice for generation {generation}"
                    );
                    self.reload_told = false;
                }
                Some(State::Reloading) => {
                    let hup = actions[..i].iter().any(
                        |a| matches!(a, Action::Log(l) if l == "received HUP, spawning a new worker"),
                    );
                    let upgrade = *event == Event::Upgrade(Upgrade::Begun)
                        && !self.reload_told
                        && !self.ready_told.is_empty();
                    let absorbed = *event == Event::Hup && !self.ready_told.is_empty();
                    ensure!(
                        hup || upgrade || absorbed,
                        rule,
                        "RELOADING=1 without a HUP or an upgrade from ready: {actions:?}"
                    );
                    self.reload_told = true;
                }
                Some(State::Stopping) => {
                    ensure!(
                        self.stopped.is_some() && !self.stopping_told,
                        rule,
                        "STOPPING=1 (stopped: {:?}, told before: {})",
                        self.stopped,
                        self.stopping_told
                    );
                    self.stopping_told = true;
                }
                None => {}
            },
            _ => {}
        }
        Ok(())
    }

    /// The "service manager" rule for a whole step: a HUP restart always
    /// begins with `RELOADING=1`; a HUP once ready sends it or leaves its
    /// own restart pending.
    fn check_reload_told(&self, event: &Event, actions: &[Action], ready: bool) -> Checked {
        let reloading = actions.iter().any(|a| {
            matches!(
                a,
                Action::Notify(Notice {
                    state: Some(State::Reloading),
                    ..
                })
            )
        });
        let restart = actions
            .iter()
            .any(|a| matches!(a, Action::Log(l) if l == "received HUP, spawning a new worker"));
        ensure!(
            reloading || !restart,
            "service manager",
            "a HUP restart without RELOADING=1: {actions:?}"
        );
        ensure!(
            reloading || !ready || *event != Event::Hup || self.core.hup_pending(),
            "service manager",
            "a HUP once ready, with no RELOADING=1 and no restart of its own to come: {actions:?}"
        );
        Ok(())
    }

    fn check_restart_kill(&self, pid: i32, signal: &Sig) -> Checked {
        let rule = "restart signals only old workers";
        ensure!(
            *signal == self.core.config().signal_on_hup,
            rule,
            "kill {pid} with {}",
            signal.name
        );
        // Current and old workers all passed their start check (a restart
        // makes the current worker old, possibly in this very step).
        let core = &self.core;
        let generation = self.processes[&pid].generation;
        let newest = core
            .current()
            .iter()
            .chain(core.old_workers())
            .map(|w| w.generation)
            .max();
        ensure!(
            core.old_workers().iter().any(|w| w.pid == pid),
            rule,
            "kill {pid}, which is not an old worker: current {:?}, old {:?}",
            core.current(),
            core.old_workers()
        );
        ensure!(
            newest.is_some_and(|g| g > generation),
            rule,
            "kill {pid} (generation {generation}) while the newest generation that passed its \
             start check is {newest:?}"
        );
        let rule = "old workers signalled after the start check";
        let Some((at, delay)) = self.running else {
            return Err(Failure {
                rule,
                detail: format!("kill {pid} before any `new worker is now running`"),
            });
        };
        ensure!(
            at + delay <= self.now,
            rule,
            "kill {pid} at {:?}, the new worker ran at {at:?} with a delay of {delay:?}",
            self.now
        );
        Ok(())
    }

    /// A KILL for `--notify-timeout`: to the attempt in its start check,
    /// once, at or after its deadline, right after its line.
    fn check_notify_kill(&self, pid: i32, actions: &[Action], i: usize) -> Checked {
        let rule = "notify timeout";
        let p = &self.processes[&pid];
        ensure!(!p.killed, rule, "KILL {pid} twice");
        let attempt = checking(&self.core).filter(|w| w.pid == pid);
        let deadline = attempt.and_then(|w| self.deadlines.get(&w.generation).copied().flatten());
        ensure!(
            deadline.is_some_and(|d| d <= self.now),
            rule,
            "KILL {pid} at {:?}: attempt {attempt:?}, deadline {deadline:?}",
            self.now
        );
        let line = &actions[i - 1];
        ensure!(
            matches!(line, Action::Log(l) if l.starts_with(&format!("new worker {pid} did not"))),
            rule,
            "KILL {pid} after {line:?}"
        );
        Ok(())
    }

    /// With `--notify-ready`, a generation becomes current only in the step
    /// of its `Ready`, and the old workers are signalled in that step
    /// (with no kill-old delay).
    fn check_readiness(
        &self,
        event: &Event,
        was_current: Option<Worker>,
        actions: &[Action],
    ) -> Checked {
        let rule = "readiness";
        if self.readiness.is_none() || self.core.stopping().is_some() {
            return Ok(());
        }
        let Some(current) = self.core.current() else {
            return Ok(());
        };
        if was_current == Some(current) {
            return Ok(());
        }
        ensure!(
            *event
                == Event::Ready {
                    generation: current.generation
                },
            rule,
            "generation {} became current on {event:?}",
            current.generation
        );
        let running = actions
            .iter()
            .any(|a| matches!(a, Action::Log(l) if l.starts_with("new worker is now running")));
        if running && self.core.settings().kill_old_delay.value == 0.0 {
            let on_hup = &self.core.config().signal_on_hup;
            for w in self.core.old_workers() {
                let signalled = actions.iter().any(|a| {
                    matches!(a, Action::Kill { pid, signal } if *pid == w.pid && signal == on_hup)
                });
                ensure!(
                    signalled,
                    rule,
                    "old worker {} not signalled in the step of the Ready: {actions:?}",
                    w.pid
                );
            }
        }
        Ok(())
    }

    /// A KILL: only with `--signal-timeout`, once per worker, to a worker
    /// first signalled at least the timeout ago, right after its line.
    fn check_escalation(&self, pid: i32, actions: &[Action], i: usize) -> Checked {
        let rule = "signal timeout";
        let Some(timeout) = self.signal_timeout else {
            return Err(Failure {
                rule,
                detail: format!("KILL {pid} without --signal-timeout"),
            });
        };
        let p = &self.processes[&pid];
        ensure!(!p.killed, rule, "KILL {pid} twice");
        ensure!(
            p.signalled_at.is_some_and(|at| at + timeout <= self.now),
            rule,
            "KILL {pid} at {:?}, first signalled at {:?}, timeout {timeout:?}",
            self.now,
            p.signalled_at
        );
        let line = i.checked_sub(1).map(|j| &actions[j]);
        ensure!(
            matches!(line, Some(Action::Log(l))
                if l.contains(&format!("worker {pid} still running ")) && l.ends_with("KILL")),
            rule,
            "KILL {pid} not right after its line: {actions:?}"
        );
        Ok(())
    }

    /// A failed start: with `--max-retry-interval` the next line announces
    /// the wait, which counts the failures in a row, never exceeds the cap
    /// (or a failed fork's usual delay) and never shrinks, except to the
    /// cap, until a success or a HUP; without it, no such line.
    fn check_retry(&mut self, line: &str, next: Option<&Action>) -> Checked {
        let rule = "backoff";
        self.failed_in_row += 1;
        let next = match next {
            Some(Action::Log(l)) if l.starts_with("retrying in ") => Some(l.as_str()),
            _ => None,
        };
        let Some(cap) = self.max_retry else {
            ensure!(
                next.is_none(),
                rule,
                "{next:?} without --max-retry-interval"
            );
            return Ok(());
        };
        let announced = next.and_then(|l| {
            let rest = l.strip_prefix("retrying in ")?;
            let (secs, rest) = rest.split_once(" secs (")?;
            let count = rest.split_once(' ')?.0.parse::<u32>().ok()?;
            let millis = secs.parse::<f64>().ok()?.mul_add(1000.0, 0.5) as u64;
            Some((Duration::from_millis(millis), count))
        });
        let Some((wait, count)) = announced else {
            return Err(Failure {
                rule,
                detail: format!("{line:?} followed by {next:?}"),
            });
        };
        ensure!(
            count == self.failed_in_row,
            rule,
            "{next:?} after {} failed starts in a row",
            self.failed_in_row
        );
        let fork_delay = if line.starts_with("failed to start") || self.readiness.is_some() {
            RETRY_GAP.max(self.interval)
        } else {
            Duration::ZERO
        };
        ensure!(
            wait <= cap.max(fork_delay),
            rule,
            "a wait of {wait:?} with a cap of {cap:?}"
        );
        if let Some(previous) = self.last_wait {
            ensure!(
                wait >= previous.min(cap),
                rule,
                "a wait of {wait:?} after one of {previous:?}"
            );
        }
        self.last_wait = Some(wait);
        self.retry = Some((self.now, wait));
        Ok(())
    }

    fn check_line(&mut self, line: &str) -> Checked {
        ensure!(
            LOG_LINES.iter().any(|p| matches_line(p, line)),
            "log lines",
            "{line:?}"
        );
        if is_failed_start(line) {
            self.seen_failed_start = true;
        }
        if line == "received HUP, spawning a new worker" {
            self.seen_hup = true;
        } else if line.starts_with("autorestart triggered") {
            self.seen_auto = true;
        } else if line.contains("seems to have failed")
            || line.contains("died unexpectedly")
            || line.starts_with("failed to start a new worker")
        {
            self.seen_failure = true;
        } else if line.starts_with("new worker is now running") {
            self.running = Some((self.now, self.core.settings().kill_old_delay.duration()));
        }
        Ok(())
    }

    fn check_state(&self) -> Checked {
        let core = &self.core;
        let mut tracked: Vec<Worker> = core.current().into_iter().collect();
        tracked.extend(core.old_workers());
        tracked.extend(core.stopping().unwrap_or_default());
        tracked.extend(checking(core));
        let pids: BTreeSet<i32> = tracked.iter().map(|w| w.pid).collect();
        ensure!(
            pids.len() == tracked.len(),
            "one current generation",
            "a pid tracked twice: {tracked:?}"
        );
        let live: BTreeSet<i32> = self.processes.keys().copied().collect();
        ensure!(
            pids == live,
            "spawned pids are tracked",
            "the core tracks {pids:?}, unreaped workers are {live:?}"
        );
        for w in &tracked {
            ensure!(
                self.spawned.get(&w.pid) == Some(&w.generation),
                "spawned pids are tracked",
                "{w:?} was not spawned as such"
            );
        }
        if core.stopping().is_some() {
            return Ok(());
        }
        let newest_old = core.old_workers().iter().map(|w| w.generation).max();
        if let Some(current) = core.current() {
            ensure!(
                newest_old.is_none_or(|g| g < current.generation),
                "one current generation",
                "current {current:?}, old {:?}",
                core.old_workers()
            );
        }
        let starting = core.start().and_then(|s| match &s.phase {
            Phase::Waiting { .. } => None,
            Phase::Spawning { generation } => Some(*generation),
            Phase::Checking(a) => Some(a.worker.generation),
        });
        if let Some(starting) = starting {
            let newest = newest_old.max(core.current().map(|w| w.generation));
            ensure!(
                newest.is_none_or(|g| g < starting),
                "one current generation",
                "generation {starting} starts while {newest:?} exists"
            );
        }
        Ok(())
    }

    // ------------------------------------------------------------ the end

    /// Plays the case to its end: the clock runs on with no more exits
    /// until the core is quiet, then TERM or INT, then every worker exits.
    fn finish(&mut self, final_stop: Stop) -> Checked {
        self.note(|| "   (end of the events: spawns succeed, no worker exits)".to_string());
        self.answers.clear();
        self.settings.auto_restart = None;
        self.turn()?;
        let mut turns = 0;
        loop {
            if !self.settle_readiness() {
                let Some(at) = self.core.next_deadline() else {
                    break;
                };
                self.set_clock(at);
            }
            self.turn()?;
            turns += 1;
            ensure!(turns < 1000, "no busy loop", "the core never gets quiet");
        }
        if self.stopped.is_none() {
            self.check_quiet()?;
        }
        self.check_hup_bursts()?;
        if self.stopped.is_none() {
            self.stop(final_stop);
            self.turn()?;
        }
        if self.signal_timeout.is_some() {
            // The workers ignore the signal: the shutdown still ends.
            let mut turns = 0;
            while let Some(at) = self.core.next_deadline() {
                self.set_clock(at);
                self.turn()?;
                turns += 1;
                ensure!(
                    turns < 1000,
                    "no busy loop",
                    "the shutdown never gets quiet"
                );
            }
            for (pid, p) in self.live() {
                ensure!(
                    p.killed,
                    "signal timeout",
                    "quiet after TERM/INT, and worker {pid} was never sent KILL"
                );
            }
        }
        let left: Vec<(i32, i32)> = self
            .live()
            .map(|(pid, p)| (*pid, p.signals.last().copied().unwrap_or(9)))
            .collect();
        for (pid, status) in left {
            self.exit(pid, status);
        }
        self.turn()?;
        ensure!(
            self.exit_seen,
            "exit only when all are gone",
            "no Exit after TERM/INT once every worker exited"
        );
        Ok(())
    }

    /// At the end, with `--notify-ready`: the attempt in its start check
    /// sends `READY=1`, or exits if it was killed. Whether anything is to
    /// be fed.
    fn settle_readiness(&mut self) -> bool {
        if self.readiness.is_none() || self.stopped.is_some() {
            return false;
        }
        let Some(w) = checking(&self.core) else {
            return false;
        };
        let p = &self.processes[&w.pid];
        if p.exited {
            return false;
        }
        if p.killed {
            self.exit(w.pid, 9);
        } else {
            self.ready(w.generation);
        }
        true
    }

    fn check_quiet(&self) -> Checked {
        let core = &self.core;
        ensure!(
            core.current().is_some(),
            "one current generation",
            "quiet with no current worker"
        );
        if self.signal_timeout.is_some() {
            for (pid, p) in self.live() {
                ensure!(
                    p.signalled_at.is_none() || p.killed,
                    "signal timeout",
                    "quiet, and worker {pid}, signalled at {:?}, was never sent KILL",
                    p.signalled_at
                );
            }
        }
        let on_hup = core.config().signal_on_hup.number;
        for w in core.old_workers() {
            let signalled = self.processes[&w.pid].signals.contains(&on_hup);
            ensure!(
                signalled,
                "one current generation",
                "quiet, and old worker {} was never sent {}",
                w.pid,
                core.config().signal_on_hup.name
            );
        }
        if let Some((hup, at)) = self.hups.last() {
            ensure!(
                self.spawns.last().is_some_and(|s| s.step > *hup),
                "no HUP lost",
                "the HUP at {at:?} has no spawn after it"
            );
        }
        Ok(())
    }

    fn check_hup_bursts(&self) -> Checked {
        let window = match self.readiness {
            Some(_) => RETRY_GAP,
            None => self.interval.max(RETRY_GAP),
        };
        let served = |hup_step: usize| {
            let i = self.spawns.partition_point(|s| s.step < hup_step);
            self.spawns
                .get(i)
                .filter(|s| s.cause == Cause::Hup)
                .map(|s| s.step)
        };
        for (i, (_, start)) in self.hups.iter().enumerate() {
            let spawns: BTreeSet<usize> = self.hups[i..]
                .iter()
                .take_while(|(_, at)| *at < *start + window)
                .filter_map(|(step, _)| served(*step))
                .collect();
            ensure!(
                spawns.len() <= 3,
                "HUP burst",
                "the HUPs in [{start:?}, {:?}) caused {} spawns",
                *start + window,
                spawns.len()
            );
        }
        Ok(())
    }
}

/// The first line of a failed start (not of a crash).
fn is_failed_start(line: &str) -> bool {
    line.contains("seems to have failed") || line.starts_with("failed to start a new worker")
}

/// The worker in its start check that has not exited.
fn checking(core: &Lifecycle) -> Option<Worker> {
    match &core.start()?.phase {
        Phase::Checking(a) if a.exit.is_none() => Some(a.worker),
        _ => None,
    }
}

/// Whether `line` fits `pattern`, `{}` standing for any non-empty text.
fn matches_line(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split("{}");
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.len() > part.len() && rest.ends_with(part);
        }
        let Some(at) = rest.get(1..).and_then(|r| r.find(part)) else {
            return false;
        };
        rest = &rest[1 + at + part.len()..];
    }
    rest.is_empty()
}

fn show_event(event: &Event) -> String {
    match event {
        Event::Tick => "Tick".to_string(),
        Event::Hup => "Hup".to_string(),
        Event::Stop(stop) => format!("{stop:?}"),
        Event::ChildExited { pid, status } => format!("ChildExited pid {pid} status {status}"),
        Event::Spawned { pid, failure: None } => format!("Spawned pid {pid}"),
        Event::Spawned {
            pid,
            failure: Some(f),
        } => format!("Spawned pid {pid}, failed: {f}"),
        Event::SpawnFailed { error } => format!("SpawnFailed: {error}"),
        Event::Ready { generation } => format!("Ready gen {generation}"),
        Event::Extend { generation, by } => {
            format!("Extend gen {generation} by {}ms", by.as_millis())
        }
        Event::Upgrade(upgrade) => format!("Upgrade {upgrade:?}"),
        Event::Settings(s) => format!(
            "Settings auto-restart {:?}, kill-old delay {}",
            s.auto_restart.as_ref().map(|a| &a.text),
            s.kill_old_delay.text
        ),
    }
}

fn show_action(action: &Action) -> String {
    match action {
        Action::Log(line) => format!("log: {line}"),
        Action::Spawn { generation } => format!("Spawn gen {generation}"),
        Action::Kill { pid, signal } => format!("Kill {pid} {}", signal.name),
        Action::WriteStatus(entries) => {
            let lines: Vec<String> = entries.iter().map(|(g, p)| format!("{g}:{p}")).collect();
            format!("WriteStatus [{}]", lines.join(" "))
        }
        Action::Exit => "Exit".to_string(),
        Action::Progress(progress) => format!("Progress {progress}"),
        Action::Notify(notice) => format!("Notify {notice:?}"),
    }
}

// ---------------------------------------------------------------- running

/// Plays `case`; the world is returned for its timeline.
fn play(case: &Case, record: bool) -> (World, Checked) {
    let mut world = World::new(&case.setup, &case.answers, record);
    let result = catch_unwind(AssertUnwindSafe(|| -> Checked {
        world.turn()?;
        for op in &case.ops {
            world.apply(op)?;
        }
        world.finish(case.setup.final_stop)
    }));
    let result = result.unwrap_or_else(|panic| {
        let detail = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Err(Failure {
            rule: "no panic",
            detail,
        })
    });
    (world, result)
}

fn fails_with(case: &Case, rule: &str) -> bool {
    play(case, false).1.is_err_and(|f| f.rule == rule)
}

/// The smallest case found that still breaks `rule`.
fn shrink(mut case: Case, rule: &str) -> Case {
    loop {
        let before = case.clone();
        for answers in [false, true] {
            let len = |c: &Case| {
                if answers {
                    c.answers.len()
                } else {
                    c.ops.len()
                }
            };
            let mut size = len(&case).div_ceil(2);
            while size > 0 {
                let mut i = 0;
                while i < len(&case) {
                    let mut smaller = case.clone();
                    let end = (i + size).min(len(&smaller));
                    if answers {
                        smaller.answers.drain(i..end);
                    } else {
                        smaller.ops.drain(i..end);
                    }
                    if fails_with(&smaller, rule) {
                        case = smaller;
                    } else {
                        i += size;
                    }
                }
                size /= 2;
            }
        }
        for i in 0..case.ops.len() {
            for simpler in simpler_ops(&case.ops[i]) {
                let mut candidate = case.clone();
                candidate.ops[i] = simpler;
                if fails_with(&candidate, rule) {
                    case = candidate;
                    break;
                }
            }
        }
        for simpler in simpler_setups(&case.setup) {
            let mut candidate = case.clone();
            candidate.setup = simpler;
            if fails_with(&candidate, rule) {
                case = candidate;
                break;
            }
        }
        if case == before {
            return case;
        }
    }
}

fn simpler_ops(op: &Op) -> Vec<Op> {
    match op {
        Op::Advance { ms, late } => {
            let mut out = Vec::new();
            if *late {
                out.push(Op::Advance {
                    ms: *ms,
                    late: false,
                });
            }
            if *ms > 0 {
                out.push(Op::ToDeadline);
                for n in [0, ms / 2] {
                    out.push(Op::Advance { ms: n, late: *late });
                }
            }
            out
        }
        Op::ToDeadline | Op::Hup | Op::Stop(_) | Op::Settings { .. } | Op::Extend { .. } => {
            vec![Op::Turn]
        }
        Op::Exit { who, status } if *status != 0 => vec![Op::Exit {
            who: *who,
            status: 0,
        }],
        _ => Vec::new(),
    }
}

fn simpler_setups(setup: &Setup) -> Vec<Setup> {
    let mut out = Vec::new();
    let mut push = |s: Setup| {
        if s != *setup {
            out.push(s);
        }
    };
    push(Setup {
        on_hup: 15,
        on_term: 15,
        ..setup.clone()
    });
    push(Setup {
        auto_restart: None,
        ..setup.clone()
    });
    push(Setup {
        kill_old_delay: "0",
        ..setup.clone()
    });
    push(Setup {
        signal_timeout: None,
        ..setup.clone()
    });
    push(Setup {
        max_retry: None,
        ..setup.clone()
    });
    push(Setup {
        readiness: None,
        ..setup.clone()
    });
    for interval_ms in [0, 100, 1000]
        .into_iter()
        .filter(|n| *n < setup.interval_ms)
    {
        push(Setup {
            interval_ms,
            ..setup.clone()
        });
    }
    out
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// The report of a failing case: the rule, the shrunk timeline, and how to
/// replay it.
fn report(seed: u64, original: &Case, failure: &Failure) -> String {
    let case = shrink(original.clone(), failure.rule);
    let (world, result) = play(&case, true);
    let failure = result.err().unwrap_or_else(|| failure.clone());
    let mut text = format!(
        "rule \"{}\" broken: {}\nseed {seed} (replay: SIM_SEED={seed} SIM_CASES=1 cargo test \
         --bin start_server simulation); shrunk from {} events to {}\n\n",
        failure.rule,
        failure.detail,
        original.ops.len(),
        case.ops.len()
    );
    text.push_str(&format!(
        "setup: {:?}\nspawn outcomes: {:?}\n\ntimeline:\n",
        case.setup, case.answers
    ));
    for line in world.trace.unwrap_or_default() {
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str(&format!("\ncase: {case:?}\n"));
    text
}

#[test]
fn random_timelines_keep_every_invariant() {
    let cases = env_u64("SIM_CASES").unwrap_or(10_000);
    let first = env_u64("SIM_SEED").unwrap_or(0x5eed_0000);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8)) as u64;
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let failure: Mutex<Option<(u64, Case, Failure)>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= cases {
                        return;
                    }
                    let seed = first.wrapping_add(i);
                    let case = generate(seed);
                    if let Err(f) = play(&case, false).1 {
                        failed.store(true, Ordering::Relaxed);
                        let mut slot = failure.lock().unwrap();
                        if slot.as_ref().is_none_or(|(s, ..)| seed < *s) {
                            *slot = Some((seed, case, f));
                        }
                    }
                }
            });
        }
    });
    if let Some((seed, case, f)) = failure.into_inner().unwrap() {
        panic!("{}", report(seed, &case, &f));
    }
}

// ---------------------------------------------------------------- timelines

impl World {
    /// A recording world after the shell's first turn at time zero.
    fn start(setup: &Setup, answers: &[Answer]) -> World {
        let mut world = World::new(setup, answers, true);
        world.must(|w| w.turn());
        world
    }

    /// Runs `f`; an invariant it breaks fails the test with the timeline.
    fn must(&mut self, f: impl FnOnce(&mut World) -> Checked) {
        if let Err(failure) = f(self) {
            let trace = self.trace.as_deref().unwrap_or_default().join("\n");
            panic!(
                "rule \"{}\" broken: {}\ntimeline:\n{trace}",
                failure.rule, failure.detail
            );
        }
    }

    /// One turn of the loop at `at_ms`.
    fn turn_at(&mut self, at_ms: u64) {
        self.set_clock(ms(at_ms));
        self.must(|w| w.turn());
    }

    /// The loop runs until `until_ms`, waking at every deadline. Workers
    /// that are `obedient` exit as soon as they are signalled.
    fn run_until(&mut self, until_ms: u64, obedient: bool) {
        let until = ms(until_ms);
        loop {
            if obedient {
                let signalled: Vec<(i32, i32)> = self
                    .live()
                    .filter_map(|(pid, p)| p.signals.last().map(|s| (*pid, *s)))
                    .collect();
                for (pid, status) in signalled {
                    self.exit(pid, status);
                }
            }
            let pending = self.pending.hup || self.pending.stop.is_some();
            if pending || !self.pending.exits.is_empty() {
                self.must(|w| w.turn());
                continue;
            }
            match self.core.next_deadline() {
                Some(at) if at <= until => {
                    self.set_clock(at);
                    self.must(|w| w.turn());
                }
                _ => break,
            }
        }
        self.set_clock(until);
    }

    /// The actions from `from_ms` on, as `seconds action` lines.
    fn actions_from(&self, from_ms: u64) -> Vec<String> {
        self.actions
            .iter()
            .filter(|(at, _)| *at >= ms(from_ms))
            // Progress for `--restart` clients is tested in lifecycle.rs.
            // So is what the service manager is told.
            .filter(|(_, a)| !matches!(a, Action::Progress(_) | Action::Notify(_)))
            .map(|(at, a)| format!("{:.3} {}", at.as_secs_f64(), show_action(a)))
            .collect()
    }

    fn spawn_times_ms(&self) -> Vec<u128> {
        self.spawns.iter().map(|s| s.at.as_millis()).collect()
    }
}

/// 100 HUPs 1 ms apart, each its own loop turn, then the loop runs on
/// with workers that exit when signalled.
fn hup_storm(interval_ms: u64) -> World {
    let mut w = World::start(&Setup::plain(interval_ms), &[]);
    for i in 0..100 {
        w.run_until(5000 + i, true);
        w.hup();
        w.turn_at(5000 + i);
    }
    w.run_until(5099 + 2 * interval_ms + 300, true);
    w
}

#[test]
fn hup_storm_at_one_second_is_two_restarts_the_last_after_the_last_hup() {
    let w = hup_storm(1000);
    assert_eq!(w.spawn_times_ms(), [0, 5000, 6000]);
    assert_eq!(
        w.actions_from(5000),
        [
            "5.000 log: received HUP, spawning a new worker",
            "5.000 Spawn gen 2",
            "5.000 log: starting new worker 102",
            "6.000 WriteStatus [1:101 2:102]",
            "6.000 log: new worker is now running, sending TERM to old workers:101",
            "6.000 log: killing old workers",
            "6.000 Kill 101 TERM",
            "6.000 log: received HUP, spawning a new worker",
            "6.000 Spawn gen 3",
            "6.000 log: starting new worker 103",
            "6.000 log: old worker 101 died, status:15",
            "6.000 WriteStatus [2:102]",
            "7.000 WriteStatus [2:102 3:103]",
            "7.000 log: new worker is now running, sending TERM to old workers:102",
            "7.000 log: killing old workers",
            "7.000 Kill 102 TERM",
            "7.000 log: old worker 102 died, status:15",
            "7.000 WriteStatus [3:103]",
        ]
    );
    // One generation left within 2 x interval + 300 ms of the last HUP.
    assert_eq!(w.core.status_entries(), [(3, 103)]);
    assert!(w.core.old_workers().is_empty() && w.core.start().is_none());
}

#[test]
fn hup_storm_at_interval_zero_is_two_restarts_a_retry_gap_apart() {
    let w = hup_storm(0);
    assert_eq!(w.spawn_times_ms(), [0, 5000, 5100]);
    assert_eq!(
        w.actions_from(5000),
        [
            "5.000 log: received HUP, spawning a new worker",
            "5.000 Spawn gen 2",
            "5.000 log: starting new worker 102",
            "5.000 WriteStatus [1:101 2:102]",
            "5.000 log: new worker is now running, sending TERM to old workers:101",
            "5.000 log: killing old workers",
            "5.000 Kill 101 TERM",
            "5.000 log: old worker 101 died, status:15",
            "5.000 WriteStatus [2:102]",
            "5.001 log: received HUP, spawning a new worker",
            "5.100 Spawn gen 3",
            "5.100 log: starting new worker 103",
            "5.100 WriteStatus [2:102 3:103]",
            "5.100 log: new worker is now running, sending TERM to old workers:102",
            "5.100 log: killing old workers",
            "5.100 Kill 102 TERM",
            "5.100 log: old worker 102 died, status:15",
            "5.100 WriteStatus [3:103]",
        ]
    );
    assert_eq!(w.core.status_entries(), [(3, 103)]);
}

/// A storm of a second at `--interval=0`, old workers taking a
/// millisecond to exit: each HUP restart is still under way when the next
/// HUP comes, so the follow-ups keep `HUP_GAP` between their spawns, and
/// the last spawn still comes after the last HUP.
#[test]
fn a_second_long_storm_with_lingering_old_workers_is_paced_by_the_hup_gap() {
    let mut w = World::start(&Setup::plain(0), &[]);
    w.run_until(5000, true);
    for i in 0..1000 {
        let signalled: Vec<(i32, i32)> = w
            .live()
            .filter_map(|(pid, p)| p.signals.last().map(|s| (*pid, *s)))
            .collect();
        w.run_until(5000 + i, false);
        w.hup();
        w.turn_at(5000 + i);
        for (pid, status) in signalled {
            w.exit(pid, status);
        }
    }
    w.run_until(7000, true);
    assert_eq!(w.spawn_times_ms(), [0, 5000, 5250, 5500, 5750, 6000]);
    assert_eq!(w.core.status_entries().len(), 1);
}

#[test]
fn a_worker_crashing_in_its_start_check_is_replaced_and_old_ones_wait() {
    let mut w = World::start(&Setup::plain(1000), &[]);
    w.run_until(400, true);
    w.exit(101, 256);
    w.run_until(5000, true);
    w.hup();
    w.turn_at(5000);
    w.run_until(5500, true);
    w.exit(103, 9);
    w.run_until(8000, true);
    assert_eq!(
        w.actions_from(0),
        [
            "0.000 Spawn gen 1",
            "0.000 log: starting new worker 101",
            "1.000 log: new worker 101 seems to have failed to start, exit status:256",
            "1.000 Spawn gen 2",
            "1.000 log: starting new worker 102",
            "2.000 WriteStatus [2:102]",
            "5.000 log: received HUP, spawning a new worker",
            "5.000 Spawn gen 3",
            "5.000 log: starting new worker 103",
            "6.000 log: new worker 103 seems to have failed to start, exit status:9",
            "6.000 Spawn gen 4",
            "6.000 log: starting new worker 104",
            "7.000 WriteStatus [2:102 4:104]",
            "7.000 log: new worker is now running, sending TERM to old workers:102",
            "7.000 log: killing old workers",
            "7.000 Kill 102 TERM",
            "7.000 log: old worker 102 died, status:15",
            "7.000 WriteStatus [4:104]",
        ]
    );
}

#[test]
fn forced_auto_restart_when_old_workers_ignore_the_signal() {
    let setup = Setup {
        auto_restart: Some("2"),
        ..Setup::plain(1000)
    };
    let mut w = World::start(&setup, &[]);
    w.run_until(9500, false);
    assert_eq!(
        w.actions_from(0),
        [
            "0.000 Spawn gen 1",
            "0.000 log: starting new worker 101",
            "1.000 WriteStatus [1:101]",
            "3.000 log: autorestart triggered (interval=2)",
            "3.000 Spawn gen 2",
            "3.000 log: starting new worker 102",
            "4.000 WriteStatus [1:101 2:102]",
            "4.000 log: new worker is now running, sending TERM to old workers:101",
            "4.000 log: killing old workers",
            "4.000 Kill 101 TERM",
            // Not at 6.000: worker 101 is still there. Twice the period
            // after the last restart:
            "8.000 log: autorestart triggered (forced, interval=2)",
            "8.000 Spawn gen 3",
            "8.000 log: starting new worker 103",
            "9.000 WriteStatus [1:101 2:102 3:103]",
            "9.000 log: new worker is now running, sending TERM to old workers:101,102",
            "9.000 log: killing old workers",
            "9.000 Kill 101 TERM",
            "9.000 Kill 102 TERM",
        ]
    );
}

#[test]
fn term_during_the_kill_old_delay_ends_everything_at_once() {
    let setup = Setup {
        kill_old_delay: "5",
        ..Setup::plain(1000)
    };
    let mut w = World::start(&setup, &[]);
    w.run_until(2000, true);
    w.hup();
    w.run_until(4000, true);
    assert_eq!(w.core.next_deadline(), Some(ms(8000)));
    w.stop(Stop::Term);
    w.run_until(4000, true);
    assert_eq!(
        w.actions_from(0),
        [
            "0.000 Spawn gen 1",
            "0.000 log: starting new worker 101",
            "1.000 WriteStatus [1:101]",
            "2.000 log: received HUP, spawning a new worker",
            "2.000 Spawn gen 2",
            "2.000 log: starting new worker 102",
            "3.000 WriteStatus [1:101 2:102]",
            "3.000 log: new worker is now running, sending TERM to old workers:101",
            "3.000 log: sleeping 5 secs before killing old workers",
            "4.000 log: received TERM, sending TERM to all workers:101,102",
            "4.000 Kill 101 TERM",
            "4.000 Kill 102 TERM",
            "4.000 log: worker 101 died, status:15",
            "4.000 WriteStatus [2:102]",
            "4.000 log: worker 102 died, status:15",
            "4.000 WriteStatus []",
            "4.000 log: exiting",
            "4.000 Exit",
        ]
    );
    assert!(w.core.exited());
}

#[test]
fn exec_failure_reported_after_fork_is_retried_after_the_retry_gap() {
    let mut w = World::start(&Setup::plain(0), &[Answer::Ok, Answer::ExecFailed]);
    w.run_until(2000, true);
    w.hup();
    w.turn_at(2000);
    // The check waits for the failed child's exit, whatever the interval.
    assert_eq!(w.core.next_deadline(), None);
    w.turn_at(2001);
    assert_eq!(w.core.next_deadline(), Some(ms(2000) + RETRY_GAP));
    w.run_until(3000, true);
    assert_eq!(
        w.actions_from(0),
        [
            "0.000 Spawn gen 1",
            "0.000 log: starting new worker 101",
            "0.000 WriteStatus [1:101]",
            "2.000 log: received HUP, spawning a new worker",
            "2.000 Spawn gen 2",
            "2.000 log: starting new worker 102",
            "2.000 log: failed to exec ./app: No such file or directory (os error 2)",
            "2.001 log: new worker 102 seems to have failed to start, exit status:65280",
            "2.100 Spawn gen 3",
            "2.100 log: starting new worker 103",
            "2.100 WriteStatus [1:101 3:103]",
            "2.100 log: new worker is now running, sending TERM to old workers:101",
            "2.100 log: killing old workers",
            "2.100 Kill 101 TERM",
            "2.100 log: old worker 101 died, status:15",
            "2.100 WriteStatus [3:103]",
        ]
    );
}

/// `--signal-timeout=2`, workers that ignore TERM: the old worker of the
/// first restart is killed 2 s after its TERM; signalled again by the next
/// restart, it keeps that first deadline.
#[test]
fn an_old_worker_ignoring_term_is_killed_after_the_signal_timeout() {
    let setup = Setup {
        signal_timeout: Some("2"),
        ..Setup::plain(1000)
    };
    let mut w = World::start(&setup, &[]);
    w.run_until(2000, false);
    w.hup();
    w.run_until(4000, false);
    w.hup();
    w.run_until(5000, false);
    w.exit(101, 9);
    w.run_until(8000, false);
    w.exit(102, 9);
    w.run_until(9000, false);
    assert_eq!(
        w.actions_from(2000),
        [
            "2.000 log: received HUP, spawning a new worker",
            "2.000 Spawn gen 2",
            "2.000 log: starting new worker 102",
            "3.000 WriteStatus [1:101 2:102]",
            "3.000 log: new worker is now running, sending TERM to old workers:101",
            "3.000 log: killing old workers",
            "3.000 Kill 101 TERM",
            "4.000 log: received HUP, spawning a new worker",
            "4.000 Spawn gen 3",
            "4.000 log: starting new worker 103",
            "5.000 log: old worker 101 still running 2 secs after TERM, sending KILL",
            "5.000 Kill 101 KILL",
            "5.000 WriteStatus [1:101 2:102 3:103]",
            "5.000 log: new worker is now running, sending TERM to old workers:101,102",
            "5.000 log: killing old workers",
            "5.000 Kill 101 TERM",
            "5.000 Kill 102 TERM",
            "5.000 log: old worker 101 died, status:9",
            "5.000 WriteStatus [2:102 3:103]",
            "7.000 log: old worker 102 still running 2 secs after TERM, sending KILL",
            "7.000 Kill 102 KILL",
            "8.000 log: old worker 102 died, status:9",
            "8.000 WriteStatus [3:103]",
        ]
    );
    assert_eq!(w.core.next_deadline(), None);
}

/// `--signal-timeout=1.5`: a TERM at shutdown that the workers ignore ends
/// with a KILL 1.5 s later, and start_server exits.
#[test]
fn shutdown_is_bounded_by_the_signal_timeout() {
    let setup = Setup {
        signal_timeout: Some("1.5"),
        ..Setup::plain(1000)
    };
    let mut w = World::start(&setup, &[]);
    w.run_until(2000, false);
    w.hup();
    w.run_until(2500, false);
    w.stop(Stop::Term);
    w.run_until(2500, false);
    assert_eq!(w.core.next_deadline(), Some(ms(4000)));
    w.run_until(4000, false);
    w.exit(101, 9);
    w.exit(102, 9);
    w.run_until(4000, false);
    assert_eq!(
        w.actions_from(2500),
        [
            "2.500 WriteStatus [1:101 2:102]",
            "2.500 log: received TERM, sending TERM to all workers:101,102",
            "2.500 Kill 101 TERM",
            "2.500 Kill 102 TERM",
            "4.000 log: worker 101 still running 1.5 secs after TERM, sending KILL",
            "4.000 Kill 101 KILL",
            "4.000 log: worker 102 still running 1.5 secs after TERM, sending KILL",
            "4.000 Kill 102 KILL",
            "4.000 log: worker 101 died, status:9",
            "4.000 WriteStatus [2:102]",
            "4.000 log: worker 102 died, status:9",
            "4.000 WriteStatus []",
            "4.000 log: exiting",
            "4.000 Exit",
        ]
    );
}

/// Without `--signal-timeout` nothing is ever killed, and the idle loop
/// has no deadline.
#[test]
fn without_a_signal_timeout_a_worker_ignoring_term_is_waited_for() {
    let mut w = World::start(&Setup::plain(1000), &[]);
    w.run_until(2000, false);
    w.hup();
    w.run_until(3000, false);
    assert_eq!(w.core.next_deadline(), None);
    w.stop(Stop::Term);
    w.run_until(100_000, false);
    assert_eq!(w.core.next_deadline(), None);
    assert!(!w.core.exited());
    assert!(w.processes.values().all(|p| !p.signals.contains(&9)));
}

/// A start that fails in a row, `--interval=1 --max-retry-interval=3`: the
/// waits after the failures are 1, 2, then 3 (4 capped), each from the
/// failed check; the fourth attempt succeeds.
#[test]
fn failed_starts_back_off_1_2_4_capped_at_3() {
    let setup = Setup {
        max_retry: Some("3"),
        ..Setup::plain(1000)
    };
    let mut w = World::start(&setup, &[]);
    for spawned_at in [0, 2000, 5000] {
        w.run_until(spawned_at + 500, false);
        let pid = checking(&w.core).unwrap().pid;
        w.exit(pid, 256);
    }
    w.run_until(12_000, false);
    assert_eq!(w.spawn_times_ms(), [0, 2000, 5000, 9000]);
    assert_eq!(
        w.actions_from(0),
        [
            "0.000 Spawn gen 1",
            "0.000 log: starting new worker 101",
            "1.000 log: new worker 101 seems to have failed to start, exit status:256",
            "1.000 log: retrying in 1 secs (1 failed start in a row)",
            "2.000 Spawn gen 2",
            "2.000 log: starting new worker 102",
            "3.000 log: new worker 102 seems to have failed to start, exit status:256",
            "3.000 log: retrying in 2 secs (2 failed starts in a row)",
            "5.000 Spawn gen 3",
            "5.000 log: starting new worker 103",
            "6.000 log: new worker 103 seems to have failed to start, exit status:256",
            "6.000 log: retrying in 3 secs (3 failed starts in a row)",
            "9.000 Spawn gen 4",
            "9.000 log: starting new worker 104",
            "10.000 WriteStatus [4:104]",
        ]
    );
}

/// A HUP during a backoff wait retries at once (the attempt runs the new
/// code, so it answers the HUP), and the count starts again.
#[test]
fn a_hup_during_a_backoff_wait_retries_at_once() {
    let setup = Setup {
        max_retry: Some("30"),
        ..Setup::plain(1000)
    };
    let mut w = World::start(&setup, &[]);
    w.run_until(2000, true);
    w.hup();
    for spawned_at in [2000, 4000] {
        w.run_until(spawned_at + 500, true);
        let pid = checking(&w.core).unwrap().pid;
        w.exit(pid, 256);
    }
    w.run_until(5500, true);
    assert_eq!(w.core.next_deadline(), Some(ms(7000)));
    w.hup();
    w.turn_at(5500);
    w.run_until(7000, true);
    assert_eq!(w.spawn_times_ms(), [0, 2000, 4000, 5500]);
    assert_eq!(
        w.actions_from(3000),
        [
            "3.000 log: new worker 102 seems to have failed to start, exit status:256",
            "3.000 log: retrying in 1 secs (1 failed start in a row)",
            "4.000 Spawn gen 3",
            "4.000 log: starting new worker 103",
            "5.000 log: new worker 103 seems to have failed to start, exit status:256",
            "5.000 log: retrying in 2 secs (2 failed starts in a row)",
            "5.500 Spawn gen 4",
            "5.500 log: starting new worker 104",
            "6.500 WriteStatus [1:101 4:104]",
            "6.500 log: new worker is now running, sending TERM to old workers:101",
            "6.500 log: killing old workers",
            "6.500 Kill 101 TERM",
            "6.500 log: old worker 101 died, status:15",
            "6.500 WriteStatus [4:104]",
        ]
    );
}

/// A timeline the random search found: HUPs at 0, 100, 250 and 350 ms at
/// `--interval=0`, old workers exiting at various moments.
#[test]
fn hups_a_retry_gap_apart_at_interval_zero_keep_the_burst_bound() {
    let case = Case {
        setup: Setup {
            interval_ms: 0,
            on_hup: 15,
            on_term: 15,
            auto_restart: None,
            kill_old_delay: "0",
            signal_timeout: None,
            max_retry: None,
            readiness: None,
            final_stop: Stop::Term,
        },
        ops: vec![
            Op::Hup,
            Op::Advance {
                ms: 100,
                late: false,
            },
            Op::Hup,
            Op::Exit {
                who: Who::Signalled(243),
                status: 0,
            },
            Op::Advance { ms: 0, late: false },
            Op::ToDeadline,
            Op::Exit {
                who: Who::Any(164),
                status: 0,
            },
            Op::Hup,
            Op::Turn,
            Op::ToDeadline,
            Op::Hup,
        ],
        answers: vec![],
    };
    let (world, checked) = play(&case, true);
    if let Err(failure) = checked {
        panic!("{}", report(0, &case, &failure));
    }
    drop(world);
}

/// `--notify-ready` with a one-second interval and a 3-second timeout.
fn readiness_setup(timeout: Option<&'static str>) -> Setup {
    Setup {
        readiness: Some(timeout),
        ..Setup::plain(1000)
    }
}

#[test]
fn a_late_ready_makes_the_generation_current_and_signals_old_workers_at_once() {
    let mut w = World::start(&readiness_setup(Some("3")), &[]);
    w.ready(1);
    w.turn_at(50);
    assert_eq!(w.core.status_entries(), [(1, 101)]);
    w.hup();
    w.turn_at(5000);
    // No verdict at --interval: the start waits for READY=1.
    w.run_until(7000, true);
    assert_eq!(w.core.status_entries(), [(1, 101)]);
    w.ready(2);
    w.turn_at(7000);
    w.run_until(7000, true);
    assert_eq!(
        w.actions_from(5000),
        [
            "5.000 log: received HUP, spawning a new worker",
            "5.000 Spawn gen 2",
            "5.000 log: starting new worker 102",
            "7.000 WriteStatus [1:101 2:102]",
            "7.000 log: new worker is now running, sending TERM to old workers:101",
            "7.000 log: killing old workers",
            "7.000 Kill 101 TERM",
            "7.000 log: old worker 101 died, status:15",
            "7.000 WriteStatus [2:102]",
        ]
    );
}

#[test]
fn a_worker_that_never_sends_ready_is_killed_and_retried_while_the_old_one_serves() {
    let mut w = World::start(&readiness_setup(Some("3")), &[]);
    w.ready(1);
    w.turn_at(10);
    w.hup();
    w.turn_at(1000);
    // The worker exits on its KILL, with status 9.
    w.run_until(4000, true);
    assert_eq!(
        w.actions_from(1000),
        [
            "1.000 log: received HUP, spawning a new worker",
            "1.000 Spawn gen 2",
            "1.000 log: starting new worker 102",
            "4.000 log: new worker 102 did not send READY=1 within 3 secs (--notify-ready), \
             killing it",
            "4.000 Kill 102 KILL",
            "4.000 log: new worker 102 seems to have failed to start, exit status:9",
            "4.000 Spawn gen 3",
            "4.000 log: starting new worker 103",
        ]
    );
    assert_eq!(w.core.status_entries(), [(1, 101)]);
    assert!(w.processes[&101].signals.is_empty());
    // A late READY=1 from the killed generation changes nothing.
    w.ready(2);
    w.turn_at(4002);
    assert_eq!(w.core.status_entries(), [(1, 101)]);
    assert!(w.processes[&101].signals.is_empty());
}

#[test]
fn extend_timeout_moves_the_deadline_and_ready_then_counts() {
    let mut w = World::start(&readiness_setup(Some("3")), &[]);
    w.extend(1, ms(5000));
    w.turn_at(2000);
    assert_eq!(w.core.next_deadline(), Some(ms(7000)));
    // A shorter extension never brings it closer.
    w.extend(1, ms(10));
    w.turn_at(2500);
    assert_eq!(w.core.next_deadline(), Some(ms(7000)));
    w.run_until(6999, true);
    w.ready(1);
    w.turn_at(6999);
    assert_eq!(w.core.status_entries(), [(1, 101)]);
    assert!(w.processes[&101].signals.is_empty());
}

#[test]
fn an_exit_before_ready_fails_at_once_and_the_retry_waits_for_the_interval() {
    let mut w = World::start(&readiness_setup(None), &[]);
    w.exit(101, 256);
    w.turn_at(200);
    w.run_until(2000, true);
    assert_eq!(
        w.actions_from(0),
        [
            "0.000 Spawn gen 1",
            "0.000 log: starting new worker 101",
            "0.200 log: new worker 101 seems to have failed to start, exit status:256",
            "1.000 Spawn gen 2",
            "1.000 log: starting new worker 102",
        ]
    );
    // --notify-timeout=0: no deadline while it waits for READY=1.
    assert_eq!(w.core.next_deadline(), None);
}
