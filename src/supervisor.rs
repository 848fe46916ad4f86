//! The supervisor's shell: setting up (sockets, files, daemon), then the
//! one loop that turns signals, child exits and deadlines into events for
//! the pure core (`lifecycle.rs`) and its actions into fork, kill, write
//! and log.
//!
//! One thread, no runtime. The loop sleeps in poll(2) until a signal (the
//! self-pipe), an envdir change (inotify) or the next deadline, never
//! polling when idle; then it drains the signal pipe, re-reads the envdir,
//! reaps every exited child, and feeds what it saw to the core, followed by
//! a tick that lets the core act on whatever is due.
//!
//! Error policy: during setup every error is fatal (one line, non-zero
//! exit, nothing left behind). Once workers serve traffic nothing is: a
//! failed fork, status-file write or log write is logged and survived,
//! because dying would orphan the workers; a broken poll(2) shuts down as
//! on SIGTERM.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cli::{Config, SystemdNotify};
use crate::daemon;
use crate::envdir::{self, Env};
use crate::lifecycle::{self, Action, Event, Lifecycle, Sig, Stop, Time, Upgrade};
use crate::listen::{self, Sockets};
use crate::log::{self, LogWriter};
use crate::notify::{Message, Notifier};
use crate::pidfile::PidFile;
use crate::progress;
use crate::reaper;
use crate::settings;
use crate::signals::{Pending, SignalName, SignalQueue};
use crate::spawn::spawn_worker;
use crate::state::{self, Reader, Writer};
use crate::status::StatusFile;
use crate::systemd::{self, ServiceManager};
use crate::upgrade::{self, Probe, Verdict};

/// The signals held back while setting up: one that arrives while the
/// sockets are being bound is acted on once the loop runs, instead of
/// killing start_server half-way (and leaving an empty pid file behind).
const SETUP_SIGNALS: [Signal; 6] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGALRM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn sigset(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for &signal in signals {
        set.add(signal);
    }
    set
}

/// The signals blocked across an upgrade's exec (those of setup, and
/// CHLD): the new image installs its handlers, then unblocks them and acts
/// on what came meanwhile.
fn upgrade_sigset() -> SigSet {
    let mut set = sigset(&SETUP_SIGNALS);
    set.add(Signal::SIGCHLD);
    set
}

/// Sets up (or, in the new image of an upgrade, takes over the state the
/// old one handed down), runs the loop until a TERM or INT has been
/// carried out, then tears down.
pub fn run(config: Config) -> Result<()> {
    let mode = config.systemd_notify;
    let supervisor = match upgrade::take_state() {
        Some(state) => resume(config, &state?),
        None => set_up(config).inspect_err(|e| {
            if !daemon::error_reported() {
                systemd::report_failure(mode, e);
            }
        })?,
    };
    supervisor.run();
    Ok(())
}

/// Everything before the loop, in the order docs/behaviour.md section 5 gives. Returns
/// only in the process that supervises (after `--daemonize`, the daemon).
fn set_up(config: Config) -> Result<Supervisor> {
    let held = sigset(&SETUP_SIGNALS);
    held.thread_block().context("failed to block signals")?;
    // Before anything can change the working directory.
    let exe = upgrade::resolve_self(std::env::args_os().next().as_deref());

    let mut pid_file = config.pid_file.as_deref().map(PidFile::lock).transpose()?;
    // systemd's sockets are inheritable: the log command must not hold
    // them open. `bind_all` makes the adopted ones inheritable again.
    systemd::seal_listen_fds(&Env::inherited());
    // The log command sees what a worker sees of systemd's variables.
    let log_env = systemd::worker_env(&Env::inherited(), config.systemd_notify);
    let mut log_sink = config
        .log_file
        .as_deref()
        .map(|spec| log::open(spec, &log_env))
        .transpose()?;
    log_line!("start_server (pid:{}) starting now...", std::process::id());
    let mut internal: Vec<&mut OwnedFd> = pid_file
        .iter_mut()
        .map(|p| &mut p.fd)
        .chain(log_sink.iter_mut().map(|l| &mut l.fd))
        .collect();
    // Before `--daemonize`: LISTEN_PID names this process.
    let activated = listen::activated_sockets(&Env::inherited())?;
    let mut sockets = listen::bind_all(&config.listen, config.backlog, &mut internal, activated)?;
    if config.systemd_listen_fds {
        sockets.place_for_activation(&mut internal)?;
    }
    let ready = if config.daemonize {
        Some(daemon::daemonize(config.systemd_notify)?)
    } else {
        None
    };

    // From here on, an error must also reach the process waiting for the
    // daemon to be ready. The notify directory is made by the process
    // that supervises, and removed (on drop) if setup fails after it.
    let finished = notifier(config.notify_ready).and_then(|notifier| {
        let (signals, log) = finish_setup(log_sink, ready.as_ref(), &sockets, pid_file.as_mut())?;
        Ok((signals, log, notifier))
    });
    if let Some(ready) = ready {
        match &finished {
            Ok(_) => ready.report_ready(),
            Err(e) => ready.report_error(e),
        }
    }
    let (signals, log, notifier) = finished?;
    if config.subreaper {
        reaper::become_subreaper()?;
    }
    held.thread_unblock().context("failed to unblock signals")?;
    Ok(Supervisor::new(
        config, sockets, signals, log, pid_file, notifier, exe,
    ))
}

/// With `--notify-ready`, the generations' notify sockets.
fn notifier(notify_ready: bool) -> Result<Option<Notifier>> {
    notify_ready.then(Notifier::new).transpose()
}

/// The steps after daemonizing: the log takes over stdout and stderr, the
/// daemon lets go of the terminal, the pid file gets our pid, the signal
/// queue is installed, and the loop gets its own writer to the log.
fn finish_setup(
    log_sink: Option<log::LogSink>,
    ready: Option<&daemon::Ready>,
    sockets: &Sockets,
    pid_file: Option<&mut PidFile>,
) -> Result<(SignalQueue, LogWriter)> {
    if let Some(sink) = log_sink {
        sink.take_over_stdio()?;
    }
    if let Some(ready) = ready {
        ready.detach_stdin(sockets.uses_stdin())?;
    }
    if let Some(p) = pid_file {
        p.write_pid(std::process::id())?;
    }
    Ok((SignalQueue::install()?, LogWriter::for_stderr()?))
}

/// The running supervisor: the core and what its actions act on.
struct Supervisor {
    core: Lifecycle,
    /// Time zero of the core's clock.
    clock: Instant,
    program: Vec<OsString>,
    dir: Option<PathBuf>,
    /// start_server's environment with the option exports and the sockets.
    base_env: Env,
    /// The environment workers get now: `base_env` plus the envdir.
    env: Env,
    envdir_watch: Option<envdir::Watch>,
    status: Option<StatusFile>,
    signals: SignalQueue,
    /// The loop's lines: never blocks, counts what it had to drop.
    log: LogWriter,
    /// What SIGUSR1 reopens.
    log_target: log::Target,
    sockets: Sockets,
    /// With `--notify-ready`: the generations' notify sockets.
    notifier: Option<Notifier>,
    /// Released last, at exit: `--stop` waits on its lock.
    pid_file: Option<PidFile>,
    /// What `--restart` clients listen to; without it they read the
    /// status file.
    progress: Option<progress::Channel>,
    /// What SIGUSR2 execs: the path start_server was started as.
    exe: Option<PathBuf>,
    /// An upgrade asking the new binary whether it reads our state.
    probe: Option<Probe>,
    /// Signals an old image took but did not act on before the upgrade:
    /// acted on in the first turn.
    carried: Pending,
    /// The service manager in our `NOTIFY_SOCKET` (`--systemd-notify=auto`).
    service_manager: Option<ServiceManager>,
    /// As PID 1 or with `--subreaper`: the workers' orphans are ours.
    adopts_orphans: bool,
    /// Children we had before the first worker (the `--log-file="| CMD"`
    /// shell): never taken for orphans.
    own_children: Vec<i32>,
    /// `--signal-on-term` and `--signal-timeout`, for the orphans.
    orphan_signal: Sig,
    /// `--systemd-listen-fds`: workers get `LISTEN_PID`.
    systemd_listen_fds: bool,
    signal_timeout: Option<Duration>,
}

fn sig(name: &SignalName) -> Sig {
    Sig {
        number: name.signal as i32,
        name: name.to_string(),
    }
}

/// The core's part of the command line.
fn core_config(config: &Config) -> lifecycle::Config {
    lifecycle::Config {
        interval: config.interval,
        signal_on_hup: sig(&config.signal_on_hup),
        signal_on_term: sig(&config.signal_on_term),
        term: sig(&SignalName::term()),
        kill: Sig {
            number: Signal::SIGKILL as i32,
            name: "KILL".to_string(),
        },
        signal_timeout: config.signal_timeout.clone(),
        max_retry_interval: config.max_retry_interval.clone(),
        readiness: config.notify_ready.then(|| lifecycle::Readiness {
            timeout: config.notify_timeout.clone(),
        }),
    }
}

/// The new image of an upgrade: everything the old one handed down, in
/// the order [`Supervisor::save`] wrote it, with the command line parsed
/// again for what it fixes. The signals are still blocked, as they were
/// across the exec; they are unblocked once the handlers are in place.
fn resume(config: Config, bytes: &[u8]) -> Supervisor {
    let held = upgrade_sigset();
    let _ = held.thread_block();
    let (from, taken) = take_over(&config, bytes);
    let signals = SignalQueue::install().unwrap_or_else(|e| abandon(&format!("{e:#}")));
    let log = LogWriter::for_stderr().unwrap_or_else(|e| abandon(&format!("{e:#}")));
    let _ = held.thread_unblock();
    upgrade::restore_name(taken.exe.as_deref());
    let mut supervisor = Supervisor::assemble(config, taken, signals, log);
    let to = env!("CARGO_PKG_VERSION");
    let line = format!(
        "start_server (pid:{}) upgraded from {from} to {to}",
        std::process::id()
    );
    supervisor.log.line(&line);
    if let Some(channel) = &mut supervisor.progress {
        channel.send_upgrade(&progress::Upgrade::Done {
            from,
            to: to.to_string(),
        });
    }
    supervisor.feed(Event::Upgrade(Upgrade::Ended));
    supervisor
}

/// The new image cannot go on (the probe makes this next to impossible: it
/// checked the state version and the command line). Exits at once, running
/// no destructor: what was taken over (the pid file, the sockets' files,
/// the status file) stays as it is, and so do the workers, which keep
/// serving on their own.
fn abandon(why: &str) -> ! {
    let _ = writeln!(
        std::io::stderr(),
        "start_server (pid:{}): failed to take over after the upgrade: {why}; \
         exiting, the workers keep running",
        std::process::id()
    );
    std::process::exit(1)
}

/// A field of the state, or [`abandon`].
fn field<T: state::Decode>(r: &mut Reader<'_>) -> T {
    r.get().unwrap_or_else(|e| abandon(&e.to_string()))
}

/// Reads the state: the old image's version, and what it held.
fn take_over(config: &Config, bytes: &[u8]) -> (String, Taken) {
    let mut r = Reader::new(bytes).unwrap_or_else(|e| abandon(&e.to_string()));
    let from: String = field(&mut r);
    let elapsed: Duration = field(&mut r);
    let now = Instant::now();
    let core =
        Lifecycle::restore(core_config(config), &mut r).unwrap_or_else(|e| abandon(&e.to_string()));
    let taken = Taken {
        // The core's clock goes on where the old image left it.
        clock: now.checked_sub(elapsed).unwrap_or(now),
        core,
        base_env: field(&mut r),
        sockets: field(&mut r),
        pid_file: field(&mut r),
        status: field(&mut r),
        notifier: field(&mut r),
        progress: field(&mut r),
        exe: field(&mut r),
        carried: field(&mut r),
        // The same socket address, from our own environment, as before.
        service_manager: if field::<bool>(&mut r) {
            ServiceManager::from_env(config.systemd_notify, &Env::inherited())
                .ok()
                .flatten()
        } else {
            None
        },
        own_children: field(&mut r),
    };
    r.finish().unwrap_or_else(|e| abandon(&e.to_string()));
    (from, taken)
}

/// What a supervisor starts its loop with, made by setup or handed down
/// by the old image of an upgrade.
struct Taken {
    core: Lifecycle,
    clock: Instant,
    base_env: Env,
    sockets: Sockets,
    pid_file: Option<PidFile>,
    status: Option<StatusFile>,
    notifier: Option<Notifier>,
    progress: Option<progress::Channel>,
    exe: Option<PathBuf>,
    carried: Pending,
    service_manager: Option<ServiceManager>,
    own_children: Vec<i32>,
}

impl Supervisor {
    fn new(
        config: Config,
        sockets: Sockets,
        signals: SignalQueue,
        mut log: LogWriter,
        pid_file: Option<PidFile>,
        notifier: Option<Notifier>,
        exe: Option<PathBuf>,
    ) -> Supervisor {
        let inherited = Env::inherited();
        // Survived: without a service manager to talk to, `auto` hands
        // NOTIFY_SOCKET on, as `pass` does.
        let connected =
            ServiceManager::from_env(config.systemd_notify, &inherited).and_then(|manager| {
                match manager {
                    Some(mut m) => m.probe().map(|()| Some(m)),
                    None => Ok(None),
                }
            });
        let (service_manager, env_mode) = match connected {
            Ok(manager) => (manager, config.systemd_notify),
            Err(line) => {
                log.line(&line);
                (None, SystemdNotify::Pass)
            }
        };
        let mut base_env = systemd::worker_env(&inherited, env_mode);
        for (name, value) in &config.exports {
            base_env.set(*name, value);
        }
        base_env.set("SERVER_STARTER_PORT", sockets.env_value());
        let sockets_empty = sockets.bound.is_empty();
        // Never LISTEN_FDS=0: libsystemd takes it for an error.
        if config.systemd_listen_fds && !sockets_empty {
            base_env.set("LISTEN_FDS", sockets.bound.len().to_string());
            base_env.set("LISTEN_FDNAMES", sockets.fd_names());
        }
        let settings = settings::read(&base_env);
        // Survived: a client without the channel falls back to the status file.
        let progress = progress::Channel::bind()
            .inspect_err(|e| log.line(&format!("failed to listen for --restart clients: {e}")))
            .ok();
        let mut core = Lifecycle::new(core_config(&config), settings, Time::ZERO);
        if service_manager.is_some() {
            core.notify_service_manager();
        }
        let taken = Taken {
            core,
            clock: Instant::now(),
            base_env,
            sockets,
            pid_file,
            status: config.status_file.clone().map(StatusFile::new),
            notifier,
            progress,
            exe,
            carried: Pending::default(),
            service_manager,
            own_children: if reaper::adopts_orphans(config.subreaper) {
                reaper::children()
            } else {
                Vec::new()
            },
        };
        Supervisor::assemble(config, taken, signals, log)
    }

    fn assemble(config: Config, taken: Taken, signals: SignalQueue, log: LogWriter) -> Supervisor {
        let Taken {
            core,
            clock,
            base_env,
            sockets,
            pid_file,
            status,
            notifier,
            progress,
            exe,
            carried,
            service_manager,
            own_children,
        } = taken;
        let systemd_listen_fds = config.systemd_listen_fds && !sockets.bound.is_empty();
        let envdir_watch = base_env
            .get("ENVDIR")
            .map(|d| envdir::Watch::new(PathBuf::from(d)));
        let mut supervisor = Supervisor {
            core,
            clock,
            program: config.program,
            dir: config.dir,
            env: base_env.clone(),
            base_env,
            envdir_watch,
            status,
            signals,
            log,
            log_target: log::Target::of(config.log_file.as_deref()),
            sockets,
            notifier,
            pid_file,
            progress,
            exe,
            probe: None,
            carried,
            service_manager,
            own_children,
            adopts_orphans: reaper::adopts_orphans(config.subreaper),
            orphan_signal: sig(&config.signal_on_term),
            systemd_listen_fds,
            signal_timeout: config.signal_timeout.as_ref().map(|s| s.duration()),
        };
        supervisor.reload_env();
        supervisor
    }

    fn now(&self) -> Time {
        self.clock.elapsed()
    }

    /// The loop, until the core has seen every worker exit after TERM or
    /// INT; then the teardown. The first turn does not wait: a signal held
    /// back during setup is acted on before the first spawn.
    fn run(mut self) {
        loop {
            // Drain before reaping: a SIGCHLD arriving after the drain
            // leaves a byte in the pipe, so the next poll cannot miss it.
            // What an old image handed down came first.
            let pending = std::mem::take(&mut self.carried).merge(self.signals.drain());
            // Before the HUP: a client connects, then signals.
            if let Some(progress) = &mut self.progress {
                progress.accept_clients();
            }
            // First, so that the lines and workers of this turn (a HUP
            // sent with the USR1) go to the new file. Never forwarded.
            if pending.usr1 {
                log::reopen(&self.log_target, &mut self.log);
            }
            if let Some(signal) = pending.shutdown {
                let stop = if signal == Signal::SIGINT {
                    Stop::Int
                } else {
                    Stop::Term
                };
                self.stop(stop);
            }
            self.reload_env();
            self.reap_children();
            // After reaping: a READY=1 from a worker already reaped is not
            // read (its socket is gone), so a dead worker never counts.
            self.read_notifications();
            if pending.hup {
                self.feed(Event::Hup);
            }
            if pending.usr2 {
                self.begin_upgrade();
            }
            self.feed(Event::Tick);
            if let Some(manager) = &mut self.service_manager {
                manager.on_wake(self.clock.elapsed(), &mut self.log);
            }
            if self.core.exited() {
                break;
            }
            // Last in the turn: an exec carries the state this turn made.
            self.follow_upgrade();
            if let Err(e) = self.sleep() {
                // Without poll(2), shut down, looking for exits now and then.
                if self.core.stopping().is_none() {
                    self.log
                        .line(&format!("poll(2) failed: {e}; shutting down"));
                    self.stop(Stop::Term);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.tear_down();
    }

    /// TERM or INT (or a broken poll): the core stops the workers, and an
    /// upgrade under way is given up.
    fn stop(&mut self, stop: Stop) {
        self.feed(Event::Stop(stop));
        if let Some(probe) = self.probe.take() {
            let _ = probe.finish();
            self.upgrade_failed("start_server is shutting down");
        }
    }

    /// Feeds one event to the core and carries out what it asks for,
    /// including the answers to its spawns.
    fn feed(&mut self, event: Event) {
        let now = self.now();
        let mut queue: VecDeque<Action> = self.core.step(event, now).into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Log(line) => self.log.line(&line),
                Action::Spawn { generation } => {
                    let answer = self.spawn(generation);
                    let now = self.now();
                    queue.extend(self.core.step(answer, now));
                }
                Action::Kill { pid, signal } => {
                    if let Ok(signal) = Signal::try_from(signal.number) {
                        let _ = kill(Pid::from_raw(pid), signal);
                    }
                }
                Action::WriteStatus(entries) => self.write_status(&entries),
                Action::Progress(progress) => {
                    if let Some(channel) = &mut self.progress {
                        channel.send(&progress);
                    }
                }
                Action::Notify(notice) => {
                    if let Some(manager) = &mut self.service_manager {
                        manager.notify(&notice, now, &mut self.log);
                    }
                }
                Action::Exit => {}
            }
        }
    }

    /// Forks and execs a worker as `generation`; with `--notify-ready`,
    /// with its own notify socket in `NOTIFY_SOCKET`.
    fn spawn(&mut self, generation: u64) -> Event {
        let mut env = self.env.clone();
        env.set("SERVER_STARTER_GENERATION", generation.to_string());
        if let Some(notifier) = self.notifier.as_mut() {
            match notifier.open(generation) {
                Ok(path) => env.set("NOTIFY_SOCKET", path),
                Err(e) => {
                    return Event::SpawnFailed {
                        error: format!("{e:#}"),
                    };
                }
            }
        }
        match spawn_worker(
            &self.program,
            &env,
            self.dir.as_deref(),
            self.systemd_listen_fds,
        ) {
            Ok(spawned) => {
                if let Some(notifier) = self.notifier.as_mut() {
                    notifier.attach(generation, spawned.pid);
                }
                Event::Spawned {
                    pid: spawned.pid,
                    failure: spawned.failure,
                }
            }
            Err(e) => {
                if let Some(notifier) = self.notifier.as_mut() {
                    notifier.close(generation);
                }
                Event::SpawnFailed {
                    error: format!("{e:#}"),
                }
            }
        }
    }

    /// Whatever the generations sent on their notify sockets; the core
    /// hears of `READY=1` and `EXTEND_TIMEOUT_USEC`.
    fn read_notifications(&mut self) {
        let Some(notifier) = self.notifier.as_mut() else {
            return;
        };
        for (generation, message) in notifier.drain() {
            self.feed(match message {
                Message::Ready => Event::Ready { generation },
                Message::ExtendTimeout(by) => Event::Extend { generation, by },
            });
        }
    }

    /// The envdir as it is now; the core hears of changed settings.
    fn reload_env(&mut self) {
        let overlay = match &mut self.envdir_watch {
            Some(watch) => watch.read(),
            None => Env::default(),
        };
        self.env = self.base_env.overlaid(&overlay);
        let settings = settings::read(&self.env);
        // The reference exports its default period to later workers once
        // its loop runs (`$ENV{AUTO_RESTART_INTERVAL} ||= 360`).
        if let Some(period) = &settings.auto_restart {
            if self.core.current().is_some()
                && !settings::truthy(self.env.get_str("AUTO_RESTART_INTERVAL").as_deref())
            {
                if overlay.get("AUTO_RESTART_INTERVAL").is_none() {
                    self.base_env.set("AUTO_RESTART_INTERVAL", &period.text);
                }
                self.env.set("AUTO_RESTART_INTERVAL", &period.text);
            }
        }
        if self.core.settings() != &settings {
            self.feed(Event::Settings(settings));
        }
    }

    /// Every exited child, without blocking; the core hears of each.
    fn reap_children(&mut self) {
        loop {
            let (pid, status) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, (code & 0xff) << 8),
                Ok(WaitStatus::Signaled(pid, signal, core)) => {
                    (pid, signal as i32 | if core { 0x80 } else { 0 })
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) | Ok(_) => continue,
                Err(_) => return,
            };
            if let Some(probe) = self.probe.as_mut().filter(|p| p.pid == pid.as_raw()) {
                probe.exited(status);
                continue;
            }
            if let Some(notifier) = self.notifier.as_mut() {
                notifier.close_worker(pid.as_raw());
            }
            // An orphan (PID 1, `--subreaper`), the log pipe's shell:
            // reaped without a line, no event.
            if !self.core.is_worker(pid.as_raw()) {
                continue;
            }
            self.feed(Event::ChildExited {
                pid: pid.as_raw(),
                status,
            });
        }
    }

    /// Waits for a signal, an envdir change, or the next deadline.
    fn sleep(&mut self) -> nix::Result<()> {
        let mut deadline = self.core.next_deadline().map(|t| self.clock + t);
        let service_at = self
            .service_manager
            .as_ref()
            .and_then(ServiceManager::next_deadline);
        let extra = [
            self.envdir_watch.as_ref().and_then(|w| w.next_poll()),
            self.probe.as_ref().map(|p| p.deadline),
            service_at.map(|t| self.clock + t),
        ];
        for at in extra.into_iter().flatten() {
            deadline = Some(deadline.map_or(at, |d| d.min(at)));
        }
        // Signals handed back by a failed upgrade exec: act on them now.
        if self.carried != Pending::default() {
            deadline = Some(Instant::now());
        }
        let timeout = match deadline {
            None => PollTimeout::NONE,
            // Round up, so that we never wake just before a deadline and spin.
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                let ms = left.as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = vec![PollFd::new(self.signals.fd(), PollFlags::POLLIN)];
        if let Some(progress) = &self.progress {
            fds.push(PollFd::new(progress.fd(), PollFlags::POLLIN));
        }
        if let Some(fd) = self.envdir_watch.as_ref().and_then(|w| w.fd()) {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        for fd in self.notifier.iter().flat_map(Notifier::fds) {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        if let Some(fd) = self.probe.as_ref().and_then(Probe::fd) {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        // Lines were dropped on a full log pipe: wake when it has room.
        let log_waits = match self.log.wants_writable() {
            Some(fd) => {
                fds.push(PollFd::new(fd, PollFlags::POLLOUT));
                true
            }
            None => false,
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        let log_ready = log_waits
            && fds
                .last()
                .and_then(PollFd::revents)
                .is_some_and(|r| !r.is_empty());
        drop(fds);
        if log_ready {
            self.log.on_writable();
        }
        if let Some(watch) = &mut self.envdir_watch {
            watch.drain_events();
        }
        Ok(())
    }

    /// SIGUSR2: asks the binary at our path whether it reads our state.
    /// The loop goes on meanwhile; [`Supervisor::follow_upgrade`] hears
    /// the answer.
    fn begin_upgrade(&mut self) {
        if self.probe.is_some() {
            self.log
                .line("received USR2, an upgrade is already under way");
            return;
        }
        if self.core.stopping().is_some() {
            self.upgrade_failed("start_server is shutting down");
            return;
        }
        let Some(exe) = self.exe.clone() else {
            self.upgrade_failed("the path start_server was started as is unknown");
            return;
        };
        self.log.line(&format!(
            "received USR2, upgrading start_server from {}",
            exe.display()
        ));
        // The probe gets none of our sockets (a wrong program at the path
        // must not hold a port) and no systemd variable; the flags are the
        // descriptors' own, in this process only.
        let sockets = self.sockets.raw_fds();
        for &fd in &sockets {
            state::set_cloexec(fd, true);
        }
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let hidden: Vec<&str> = systemd::NOTIFY_VARIABLES
            .iter()
            .chain(&systemd::LISTEN_VARIABLES)
            .copied()
            .collect();
        let started = Probe::start(&exe, &args, &hidden);
        for &fd in &sockets {
            state::set_cloexec(fd, false);
        }
        match started {
            Ok(probe) => {
                self.probe = Some(probe);
                self.feed(Event::Upgrade(Upgrade::Begun));
            }
            Err(e) => self.upgrade_failed(&format!("{e:#}")),
        }
    }

    /// Acts on the probe's answer once there is one: exec on yes, else
    /// carry on as before.
    fn follow_upgrade(&mut self) {
        let Some(verdict) = self.probe.as_mut().and_then(|p| p.verdict(Instant::now())) else {
            return;
        };
        let Some(binary) = self.probe.take().map(Probe::finish) else {
            return;
        };
        let exe = self.exe.clone().unwrap_or_default();
        match verdict {
            Verdict::Yes if self.core.stopping().is_some() => {
                self.upgrade_failed("start_server is shutting down")
            }
            Verdict::Yes => self.exec_upgrade(&binary, &exe),
            Verdict::No(why) => {
                self.upgrade_failed(&format!("{} cannot take over: {why}", exe.display()))
            }
        }
    }

    /// Execs the new binary with our state; returns only if the exec
    /// failed, with everything as it was.
    fn exec_upgrade(&mut self, binary: &upgrade::Binary, exe: &std::path::Path) {
        let held = upgrade_sigset();
        if let Err(e) = held.thread_block() {
            self.upgrade_failed(&format!("failed to block signals: {e}"));
            return;
        }
        // Whatever came since this turn's drain goes with the state; what
        // comes from now on stays pending across the exec.
        let pending = self.signals.drain();
        let mut w = Writer::new();
        self.save(pending, &mut w);
        let args: Vec<OsString> = std::env::args_os().collect();
        let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let error = upgrade::exec(binary, exe, &args, &env, w);
        self.carried = pending;
        let _ = held.thread_unblock();
        self.upgrade_failed(&format!("{error:#}"));
        // The drain above may have taken a SIGCHLD's byte.
        self.reap_children();
    }

    /// What the new image reads back in [`resume`], in that order.
    fn save(&self, pending: Pending, w: &mut Writer) {
        w.put(env!("CARGO_PKG_VERSION"));
        w.put(&self.clock.elapsed());
        self.core.save(w);
        w.put(&self.base_env);
        w.put(&self.sockets);
        w.put(&self.pid_file);
        w.put(&self.status);
        w.put(&self.notifier);
        w.put(&self.progress);
        w.put(&self.exe);
        w.put(&pending);
        w.put(&self.service_manager.is_some());
        w.put(&self.own_children);
    }

    /// An upgrade did not happen: say why, to the log, to `--upgrade` and
    /// (the end of its reload) to the service manager.
    fn upgrade_failed(&mut self, reason: &str) {
        self.log
            .line(&format!("upgrade failed, carrying on as before: {reason}"));
        if let Some(channel) = &mut self.progress {
            channel.send_upgrade(&progress::Upgrade::Failed(reason.to_string()));
        }
        self.feed(Event::Upgrade(Upgrade::Ended));
    }

    /// The workers are gone: so must their orphans be, before the sockets
    /// close (one of them may hold a listening socket).
    fn stop_orphans(&mut self) {
        let Ok(signal) = Signal::try_from(self.orphan_signal.number) else {
            return;
        };
        // The timeout counts from the TERM or INT, as the workers' does.
        let deadline = self.signal_timeout.map(|timeout| {
            self.clock + self.core.stop_began().unwrap_or_else(|| self.now()) + timeout
        });
        reaper::stop_orphans(
            signal,
            &self.orphan_signal.name,
            &self.own_children,
            deadline,
            &mut self.log,
        );
    }

    /// Rewrites the status file; a failure is logged, never fatal.
    fn write_status(&mut self, entries: &[(u64, i32)]) {
        let Some(status) = self.status.as_mut() else {
            return;
        };
        if let Err(e) = status.write(entries) {
            let line = format!(
                "failed to write status file {}: {e}",
                status.path().display()
            );
            self.log.line(&line);
        }
    }

    /// Workers are gone; then the sockets and their files, the status file,
    /// and last the pid file and its lock (`--stop` waits on it).
    fn tear_down(mut self) {
        if self.adopts_orphans {
            self.stop_orphans();
        }
        let Supervisor {
            sockets,
            status,
            signals,
            pid_file,
            notifier,
            ..
        } = self;
        drop(status);
        drop(notifier);
        sockets.close();
        drop(signals);
        drop(pid_file);
    }
}
