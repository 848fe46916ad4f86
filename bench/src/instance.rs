//! A start_server under test (ours or the reference) with the bench worker
//! behind it, and the guarantee that nothing the harness started outlives it.
//!
//! Every process the harness starts gets its own process group, registered
//! here until it has been reaped: dropping an [`Instance`] kills and reaps
//! its group, and SIGINT/SIGTERM/SIGHUP to the harness kill every registered
//! group before it exits.

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::http::{self, Outcome};

/// Which start_server, and with which `--interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Who {
    /// Ours, with the same `--interval` as the reference.
    Ours,
    /// The Perl reference.
    Reference,
    /// Ours with a fractional `--interval` the reference cannot take.
    OursFast,
    /// An extra implementation given with `--impl NAME=BINARY` (its index
    /// in the order given), with the same options as ours.
    Extra(usize),
    /// An extra implementation with the `--interval` of [`Who::OursFast`].
    ExtraFast(usize),
}

/// The names of the extra implementations and of their fast variants,
/// set once from the command line.
static EXTRA_NAMES: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();

/// Names the extra implementations (once, before any [`Who::name`]).
pub fn set_extra_names(names: &[String]) {
    let names = names
        .iter()
        .map(|n| {
            let fast: &'static str = Box::leak(format!("{n}-fast").into_boxed_str());
            let name: &'static str = Box::leak(n.clone().into_boxed_str());
            (name, fast)
        })
        .collect();
    let _ = EXTRA_NAMES.set(names);
}

fn extra_names() -> &'static [(&'static str, &'static str)] {
    EXTRA_NAMES.get().map_or(&[], Vec::as_slice)
}

impl Who {
    pub fn name(self) -> &'static str {
        match self {
            Who::Ours => "ours",
            Who::Reference => "reference",
            Who::OursFast => "ours-fast",
            Who::Extra(i) => extra_names().get(i).map_or("extra?", |n| n.0),
            Who::ExtraFast(i) => extra_names().get(i).map_or("extra-fast?", |n| n.1),
        }
    }

    /// Everything compared with the same options: ours, the reference and
    /// the extra implementations.
    pub fn compared() -> Vec<Who> {
        let mut all = vec![Who::Ours, Who::Reference];
        all.extend((0..extra_names().len()).map(Who::Extra));
        all
    }

    /// [`Who::compared`] in the order run `run` uses: rotated by one each
    /// run, so that none always runs first or on a warmer machine (with
    /// ours and the reference only: alternating which goes first).
    pub fn order(run: usize) -> Vec<Who> {
        let mut all = Who::compared();
        let n = all.len();
        all.rotate_left(run % n);
        all
    }

    /// Those that also run with the fractional `--interval`: ours and the
    /// extra implementations.
    pub fn fast() -> Vec<Who> {
        let mut all = vec![Who::OursFast];
        all.extend((0..extra_names().len()).map(Who::ExtraFast));
        all
    }

    /// The variant of `self` with the fractional `--interval` (none for
    /// the reference).
    pub fn fast_variant(self) -> Option<Who> {
        match self {
            Who::Ours | Who::OursFast => Some(Who::OursFast),
            Who::Extra(i) | Who::ExtraFast(i) => Some(Who::ExtraFast(i)),
            Who::Reference => None,
        }
    }

    pub fn is_fast(self) -> bool {
        matches!(self, Who::OursFast | Who::ExtraFast(_))
    }

    /// An extra implementation: one that may not take every option, whose
    /// failures make a cell "n/a" instead of stopping the run.
    pub fn is_extra(self) -> bool {
        matches!(self, Who::Extra(_) | Who::ExtraFast(_))
    }

    /// The `--interval` argument this one runs with where the comparison
    /// uses [`INTERVAL`].
    pub fn interval_arg(self) -> &'static str {
        if self.is_fast() {
            FAST_INTERVAL
        } else {
            INTERVAL
        }
    }

    /// That `--interval`, in seconds.
    pub fn interval(self) -> f64 {
        if self.is_fast() { 0.1 } else { 1.0 }
    }
}

/// The `--interval` every comparison uses (the reference takes whole
/// seconds only).
pub const INTERVAL: &str = "--interval=1";
/// The extra `--interval` of [`Who::OursFast`] and [`Who::ExtraFast`].
pub const FAST_INTERVAL: &str = "--interval=0.1";

/// Where the programs are and where the run's files go.
pub struct Setup {
    pub ours: PathBuf,
    pub reference: PathBuf,
    /// `--impl NAME=BINARY`: the binaries of [`Who::Extra`], in order.
    pub extras: Vec<(String, PathBuf)>,
    pub worker: PathBuf,
    /// Status and pid files, logs, raw data.
    pub raw: PathBuf,
}

impl Setup {
    pub fn binary(&self, who: Who) -> &Path {
        match who {
            Who::Ours | Who::OursFast => &self.ours,
            Who::Reference => &self.reference,
            Who::Extra(i) | Who::ExtraFast(i) => &self.extras[i].1,
        }
    }

    pub fn log(&self, tag: &str) -> PathBuf {
        self.raw.join("logs").join(format!("{tag}.log"))
    }
}

/// A running start_server with the bench worker.
pub struct Instance {
    pub who: Who,
    pub pid: i32,
    pub port: u16,
    pub status_file: PathBuf,
    pub pid_file: PathBuf,
    /// Where each worker appends its exec stamp (`BENCH_EXEC_STAMP`).
    pub stamp_file: PathBuf,
    pub log: PathBuf,
    /// Taken just before the fork, for the start-up time.
    pub spawned_at: Instant,
    /// What it was started with, for [`Instance::start_again`].
    tag: String,
    args: Vec<String>,
    env: Vec<(String, PathBuf)>,
    child: Child,
    reaped: bool,
}

impl Instance {
    /// Starts `who` on a free 127.0.0.1 port with status and pid files;
    /// `args` go before `--` (`--interval` and the like).
    pub fn start(setup: &Setup, who: Who, tag: &str, args: &[&str]) -> Result<Instance, String> {
        Instance::start_env(setup, who, tag, args, &[])
    }

    /// As [`Instance::start`], with `env` added to the environment of
    /// start_server and so of its workers.
    pub fn start_env(
        setup: &Setup,
        who: Who,
        tag: &str,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<Instance, String> {
        let tag = format!("{tag}-{}", who.name());
        let args = args.iter().map(|a| a.to_string()).collect();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_path_buf()))
            .collect();
        Instance::launch(setup, who, tag, free_port()?, args, env, true)
    }

    /// Starts the same start_server again, with the same port, options,
    /// status, pid and stamp files and environment, once this one has
    /// exited (its log goes on in the same file).
    pub fn start_again(&self, setup: &Setup) -> Result<Instance, String> {
        Instance::launch(
            setup,
            self.who,
            self.tag.clone(),
            self.port,
            self.args.clone(),
            self.env.clone(),
            false,
        )
    }

    /// Starts `who` on `port`; `fresh`: removes the status, pid and stamp
    /// files and truncates the log first, else appends to the log.
    fn launch(
        setup: &Setup,
        who: Who,
        tag: String,
        port: u16,
        args: Vec<String>,
        env: Vec<(String, PathBuf)>,
        fresh: bool,
    ) -> Result<Instance, String> {
        let status_file = setup.raw.join(format!("{tag}.status"));
        let pid_file = setup.raw.join(format!("{tag}.pid"));
        let stamp_file = setup.raw.join(format!("{tag}.stamps"));
        if fresh {
            let _ = fs::remove_file(&status_file);
            let _ = fs::remove_file(&pid_file);
            let _ = fs::remove_file(&stamp_file);
        }
        let log_path = setup.log(&tag);
        let log = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(!fresh)
            .truncate(fresh)
            .open(&log_path)
            .map_err(|e| format!("{tag}: log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(setup.binary(who));
        command
            .arg(format!("--port=127.0.0.1:{port}"))
            .arg(format!("--status-file={}", status_file.display()))
            .arg(format!("--pid-file={}", pid_file.display()))
            .args(&args)
            .arg("--")
            .arg(&setup.worker)
            .env("BENCH_EXEC_STAMP", &stamp_file)
            // Without `--notify-ready` a start_server passes its own
            // NOTIFY_SOCKET on: the workers must not notify whoever runs
            // the harness.
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        let spawned_at = Instant::now();
        let child = spawn_registered(&mut command).map_err(|e| format!("{tag}: {e}"))?;
        Ok(Instance {
            who,
            pid: child.id() as i32,
            port,
            status_file,
            pid_file,
            stamp_file,
            log: log_path,
            spawned_at,
            tag,
            args,
            env,
            child,
            reaped: false,
        })
    }

    /// The status file's `(generation, pid)` lines; `None` while unreadable.
    pub fn generations(&self) -> Option<Vec<(u64, i32)>> {
        let text = fs::read_to_string(&self.status_file).ok()?;
        let mut lines: Vec<(u64, i32)> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter_map(|(g, p)| Some((g.parse().ok()?, p.parse().ok()?)))
            .collect();
        lines.sort_unstable();
        Some(lines)
    }

    /// The one generation in the status file, if it holds exactly one.
    pub fn single_generation(&self) -> Option<(u64, i32)> {
        match self.generations()?.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    }

    /// Waits until the status file names one generation and it answers.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(u64, i32), String> {
        self.wait_generation_after(0, timeout)
    }

    /// Waits until the status file names one generation newer than `after`
    /// and that generation answers a request (so its worker has exec'd and
    /// set up its signal handlers: a worker signalled before that could
    /// lose the signal).
    pub fn wait_generation_after(
        &self,
        after: u64,
        timeout: Duration,
    ) -> Result<(u64, i32), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = exit_status_unreaped(self.pid) {
                return Err(format!(
                    "{} (pid {}) exited ({status}): {}",
                    self.who.name(),
                    self.pid,
                    self.log_head()
                ));
            }
            if let Some(single) = self.single_generation()
                && single.0 > after
                && let Outcome::Ok { generation } = http::get(self.port, Duration::from_secs(2))
                && generation == single.0
            {
                return Ok(single);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Err(format!(
            "{} (pid {}): no generation after {after} ready within {timeout:?}; see its log",
            self.who.name(),
            self.pid
        ))
    }

    /// The first non-empty line of its log (where a start_server that
    /// exits at once says why), for an error message.
    pub fn log_head(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let line = text.lines().find(|l| !l.trim().is_empty());
        line.map_or("(empty log)".to_string(), |l| {
            l.trim().chars().take(160).collect()
        })
    }

    /// The exec stamps of its workers so far: `(pid, CLOCK_MONOTONIC ns)`,
    /// in the order written.
    pub fn exec_stamps(&self) -> Vec<(i32, u64)> {
        read_stamps(&self.stamp_file)
    }

    /// The exec stamp of worker `pid`.
    pub fn exec_stamp_of(&self, pid: i32) -> Option<u64> {
        self.exec_stamps()
            .into_iter()
            .find_map(|(p, nanos)| (p == pid).then_some(nanos))
    }

    /// True once the supervisor has exited (it stays a zombie until
    /// [`Instance::wait_exit`] or drop).
    pub fn has_exited(&self) -> bool {
        has_exited_unreaped(self.pid)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) to the process we started and have not reaped.
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Polls for the supervisor's exit until `timeout`; the time it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if has_exited_unreaped(self.pid) {
                let took = start.elapsed();
                // A supervisor that exits normally took its workers with it;
                // this is for one that did not. Before reaping, while its
                // pid (and so the group id) cannot be reused.
                kill_group(self.pid);
                let _ = self.child.wait();
                self.reaped = true;
                unregister(self.pid);
                return Some(took);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// SIGTERM, then SIGKILL to the whole group after `grace`.
    pub fn stop(mut self, grace: Duration) -> Option<Duration> {
        self.signal(libc::SIGTERM);
        let took = self.wait_exit(grace);
        if took.is_none() {
            eprintln!(
                "  ({} pid {} still running {grace:?} after SIGTERM: killed)",
                self.who.name(),
                self.pid
            );
        }
        took
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if !self.reaped {
            kill_group(self.pid);
            let _ = self.child.wait();
            unregister(self.pid);
        }
    }
}

/// The `PID NANOS` lines of a stamp file (exec, ready or signal stamps of
/// the workers), in the order written; none while it does not exist.
pub fn read_stamps(path: &Path) -> Vec<(i32, u64)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pid, nanos) = l.split_once(' ')?;
            Some((pid.parse().ok()?, nanos.trim().parse().ok()?))
        })
        .collect()
}

/// True once `pid`, our child, has exited; it stays a zombie for us to reap.
fn has_exited_unreaped(pid: i32) -> bool {
    exit_status_unreaped(pid).is_some()
}

/// How `pid`, our child, ended (`exit N` or `signal N`), once it has; it
/// stays a zombie for us to reap.
fn exit_status_unreaped(pid: i32) -> Option<String> {
    // SAFETY: all-zero bytes are a valid siginfo_t.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(2) with WNOWAIT only reads the child's state.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is set by waitid for WEXITED (0 when nothing exited).
    if rc != 0 || unsafe { info.si_pid() } != pid {
        return None;
    }
    // SAFETY: si_status is set along with si_pid.
    let status = unsafe { info.si_status() };
    Some(if info.si_code == libc::CLD_EXITED {
        format!("exit {status}")
    } else {
        format!("signal {status}")
    })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the workers' exec stamps.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Process groups started by the harness and not yet reaped (0 = free slot).
static GROUPS: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

/// Spawns `command` (which must be given its own process group) and
/// registers the group.
pub fn spawn_registered(command: &mut Command) -> std::io::Result<Child> {
    let child = command.spawn()?;
    let pid = child.id() as i32;
    if !GROUPS.iter().any(|slot| {
        slot.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }) {
        eprintln!("warning: more than {} process groups at once", GROUPS.len());
    }
    Ok(child)
}

pub fn unregister(pid: i32) {
    for slot in &GROUPS {
        let _ = slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// SIGKILL to a process group the harness created (its id is the pid of the
/// process it was created for).
pub fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) to a process group id we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

extern "C" fn on_fatal_signal(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    for slot in &GROUPS {
        let pgid = slot.load(Ordering::SeqCst);
        kill_group(pgid);
    }
    // "ss-bench: signal N from pid P", formatted without allocating.
    let mut line = *b"ss-bench: signal 00 from pid 0000000000\n";
    let mut put = |end: usize, mut n: u64, width: usize| {
        for i in 0..width {
            line[end - i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(18, signal as u64, 2);
    // SAFETY: the kernel fills siginfo for an SA_SIGINFO handler.
    let sender = unsafe { (*info).si_pid() };
    put(38, sender.max(0) as u64, 10);
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(2, line.as_ptr().cast(), line.len());
        libc::_exit(128 + signal);
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP kill every registered group first.
pub fn install_cleanup_handler() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only loads atomics and calls kill(2), write(2)
        // and _exit(2), all async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
