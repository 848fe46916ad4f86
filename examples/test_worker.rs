//! The worker the integration tests run behind `start_server`.
//!
//! It takes its sockets through our own library
//! ([`server_starter::listeners_os`], so that a `--path` need not be UTF-8),
//! answers every connection or datagram with its pid and generation, records
//! the signals it receives, and reports what it inherited (descriptors, signal
//! mask and ignored set, socket flags, environment) so that tests can check
//! the supervisor from the outside. Everything it does is steered by
//! environment variables:
//!
//! | variable | effect |
//! | --- | --- |
//! | `TW_DIR=DIR` | write the report files below into DIR |
//! | `TW_FAIL_IF_GEN_BELOW=N` | exit 1 at once when the generation is below N (absent counts as 0) |
//! | `TW_EXIT_IMMEDIATELY=CODE` | exit with CODE at once, before taking the sockets |
//! | `TW_SET_NONBLOCK=1` | set `O_NONBLOCK` on every inherited socket (`fcntl(F_SETFL)`) and serve with `poll` |
//! | `TW_IGNORE_TERM=1` | do not exit on TERM, INT or QUIT (they are still recorded) |
//! | `TW_EXIT_ON=SIG,SIG` | exit 0 on these signals instead of TERM, INT and QUIT (names as in `.signals`, `SIG` prefix and case optional); wins over `TW_IGNORE_TERM` |
//! | `TW_EXIT_AFTER_MS=N` | exit after N milliseconds, with `TW_EXIT_CODE` (default 0) |
//! | `TW_ORPHAN_MS=N` | at start, leave behind an orphaned grandchild that sleeps N ms |
//! | `TW_WRITE_STDOUT=N` | once started, write N bytes (lines of `x`) to stdout from a thread, with blocking writes, as a chatty server does; a full pipe blocks only that thread |
//! | `TW_READY=now` | once started (after `PID.start`), send `READY=1` to `NOTIFY_SOCKET` with [`server_starter::notify`]; unset: send nothing, as a worker that does not speak the notify protocol |
//! | `TW_READY=after:MS` | the same, MS milliseconds after starting (from a thread: it serves and handles signals meanwhile) |
//! | `TW_READY=never` | never send `READY=1` (the same as unset, said explicitly) |
//! | `TW_EXTEND_USEC=N` | once started, send `EXTEND_TIMEOUT_USEC=N` first, then `READY=1` as `TW_READY` says |
//! | `TW_NOTIFY_FROM_CHILD=1` | `READY=1` is sent by a child process the worker starts for it (itself, run again with `TW_NOTIFY_CHILD` set) and reaps, not by the worker: a notification from another process of the generation |
//!
//! Files written into `TW_DIR`, named by the worker's pid:
//!
//! - `PID.start` (atomically, once everything is set up and just before it
//!   starts serving): `key=value` lines `pid`, `ppid`, `generation` (`none`
//!   when `SERVER_STARTER_GENERATION` is absent), `port_env` (the raw
//!   `SERVER_STARTER_PORT`), `cwd`, `argv` (every argument including argv\[0\],
//!   joined by `\x1f`), `sigblk` and `sigign` (hex, as in `/proc/self/status`),
//!   `fds` (sorted, comma-separated descriptors open at exec time), then one
//!   `sock.FD=KIND nonblock=0|1 cloexec_at_start=0|1` line per entry of
//!   `SERVER_STARTER_PORT`, KIND being `tcp4`, `tcp6`, `udp4`, `udp6`, `unix`
//!   or `unknown`, measured before the library touched the descriptor.
//! - `PID.env`: the whole environment, `KEY=VALUE` lines sorted by key,
//!   written before `PID.start`.
//! - `PID.signals`: one `NAME UNIX_TIME_MS` line per signal received (HUP,
//!   TERM, INT, QUIT, USR1, USR2).
//! - `PID.orphan`: the pid of the grandchild left by `TW_ORPHAN_MS`, written
//!   before `PID.start`.
//! - `PID.wrote`: written once all of `TW_WRITE_STDOUT` went out.
//! - `PID.notify`: one `STATE pid=SENDER time_ms=MS result=RESULT` line per
//!   notification, appended once it was sent: STATE as sent (a newline as
//!   `\n`), SENDER the pid that sent it (the child's for
//!   `TW_NOTIFY_FROM_CHILD`; `none` when the child could not be started),
//!   RESULT `sent`, `unset` (no `NOTIFY_SOCKET`: nothing sent) or `failed`
//!   (the error goes to stderr).
//! - `PID.exit` (atomically, just before a deliberate exit): `reason=` (a
//!   signal name, `timer` or `parent-gone`), `code=`, `time_ms=`.
//!
//! Exit status: 0 on a signal from the exit set, on `TW_EXIT_AFTER_MS` (unless
//! `TW_EXIT_CODE`) and when the supervisor is gone (the parent pid changed:
//! checked every 100 ms so that no test leaks workers); 1 for
//! `TW_FAIL_IF_GEN_BELOW`; 2 when `SERVER_STARTER_PORT` is unset; 3 for any
//! other setup error (a bad knob, an unusable socket). The notifying child
//! of `TW_NOTIFY_FROM_CHILD` exits 0 when it sent `READY=1`, 1 otherwise.
//! Errors go to stderr, prefixed `test_worker:`.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use server_starter::Listener;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

/// The signals the worker records, with the names used in `.signals` and
/// `TW_EXIT_ON`.
const HANDLED_SIGNALS: [(c_int, &str); 6] = [
    (SIGHUP, "HUP"),
    (SIGTERM, "TERM"),
    (SIGINT, "INT"),
    (SIGQUIT, "QUIT"),
    (SIGUSR1, "USR1"),
    (SIGUSR2, "USR2"),
];

/// How long a connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the parent pid is checked.
const PARENT_CHECK_PERIOD: Duration = Duration::from_millis(100);

/// Set (to the worker's pid) in the child that `TW_NOTIFY_FROM_CHILD`
/// starts: that process only sends `READY=1` and exits.
const NOTIFY_CHILD_VAR: &str = "TW_NOTIFY_CHILD";

// The Rust runtime sets SIGPIPE to ignored before `main`, which would hide
// whether the supervisor handed it down ignored (docs/behaviour.md section 3). A function
// in `.init_array` runs before the runtime's set-up, so it records the
// disposition the worker was really exec'd with.
const SIGPIPE_UNKNOWN: u8 = 0;
const SIGPIPE_DEFAULT: u8 = 1;
const SIGPIPE_IGNORED: u8 = 2;
static SIGPIPE_AT_EXEC: AtomicU8 = AtomicU8::new(SIGPIPE_UNKNOWN);

#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static RECORD_SIGPIPE_AT_EXEC: extern "C" fn() = record_sigpipe_at_exec;

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
extern "C" fn record_sigpipe_at_exec() {
    // SAFETY: all-zero bytes are a valid `sigaction`; querying (a null new
    // action) changes nothing.
    let ignored = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) != 0 {
            return;
        }
        old.sa_sigaction == libc::SIG_IGN
    };
    let state = if ignored {
        SIGPIPE_IGNORED
    } else {
        SIGPIPE_DEFAULT
    };
    SIGPIPE_AT_EXEC.store(state, Ordering::SeqCst);
}

/// A setup failure: the message for stderr and the exit status.
struct Failure {
    code: i32,
    message: String,
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// What the worker inherited, captured before it opens any descriptor.
struct Inherited {
    fds: Vec<RawFd>,
    sig_blocked: String,
    sig_ignored: String,
}

/// The knobs, read from the environment.
struct Config {
    dir: Option<PathBuf>,
    fail_if_generation_below: Option<u64>,
    exit_immediately: Option<i32>,
    set_nonblock: bool,
    exit_on: Vec<c_int>,
    exit_after: Option<Duration>,
    exit_code: i32,
    orphan_after: Option<Duration>,
    write_stdout: Option<usize>,
    notify: Notify,
}

/// What to tell the supervisor through `NOTIFY_SOCKET`.
#[derive(Clone)]
struct Notify {
    ready: Ready,
    extend_usec: Option<u64>,
    from_child: bool,
}

/// When to send `READY=1` (`TW_READY`).
#[derive(Clone, Copy)]
enum Ready {
    /// Unset or `never`.
    Never,
    Now,
    After(Duration),
}

/// Who answers: the body of every response.
struct Identity {
    pid: u32,
    generation: String,
}

impl Identity {
    fn body(&self) -> String {
        format!("pid={} generation={}\n", self.pid, self.generation)
    }
}

/// The report files in `TW_DIR`, if set.
#[derive(Clone)]
struct Reports {
    dir: Option<PathBuf>,
    pid: u32,
}

impl Reports {
    fn path(&self, suffix: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{}.{suffix}", self.pid)))
    }

    /// Writes `PID.SUFFIX` through a temporary file and a rename, so readers
    /// never see it half written.
    fn write(&self, suffix: &str, contents: &str) {
        let Some(path) = self.path(suffix) else {
            return;
        };
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let result = fs::write(&tmp, contents).and_then(|()| fs::rename(&tmp, &path));
        if let Err(err) = result {
            eprintln!("test_worker: cannot write {}: {err}", path.display());
        }
    }

    /// Appends one line to `PID.SUFFIX` with a single write.
    fn append(&self, suffix: &str, line: &str) {
        let Some(path) = self.path(suffix) else {
            return;
        };
        let result = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(err) = result {
            eprintln!("test_worker: cannot append to {}: {err}", path.display());
        }
    }

    /// Records why the worker is leaving, then exits.
    fn exit(&self, reason: &str, code: i32) -> ! {
        self.write(
            "exit",
            &format!("reason={reason}\ncode={code}\ntime_ms={}\n", now_ms()),
        );
        std::process::exit(code);
    }
}

fn main() {
    if let Some(worker) = std::env::var_os(NOTIFY_CHILD_VAR) {
        std::process::exit(notify_ready_as_child(&worker.to_string_lossy()));
    }
    let inherited = capture_inherited_state();
    if let Err(failure) = run(inherited) {
        eprintln!("test_worker: {}", failure.message);
        std::process::exit(failure.code);
    }
    // The threads serve, watch signals and the parent; they exit the process.
    loop {
        thread::park();
    }
}

fn run(inherited: Inherited) -> Result<(), Failure> {
    let config = read_config()?;
    let pid = std::process::id();
    // SAFETY: getppid cannot fail.
    let ppid = unsafe { libc::getppid() };
    let identity = Arc::new(Identity {
        pid,
        generation: std::env::var("SERVER_STARTER_GENERATION")
            .unwrap_or_else(|_| "none".to_string()),
    });
    let reports = Reports {
        dir: config.dir.clone(),
        pid,
    };

    if let Some(minimum) = config.fail_if_generation_below {
        let generation = server_starter::generation().unwrap_or(0);
        if generation < minimum {
            return Err(fail(
                1,
                format!("generation {generation} is below TW_FAIL_IF_GEN_BELOW={minimum}"),
            ));
        }
    }
    if let Some(code) = config.exit_immediately {
        std::process::exit(code);
    }

    // Install the handlers before announcing ourselves: a test that has
    // seen `.start` may signal at once.
    let signals = Signals::new(HANDLED_SIGNALS.map(|(signal, _)| signal))
        .map_err(|err| fail(3, format!("cannot install signal handlers: {err}")))?;

    // The OsString API: a `--path` need not be UTF-8.
    let ports = server_starter::server_ports_os().map_err(|err| match err {
        server_starter::Error::NotStarted => fail(2, err.to_string()),
        _ => fail(3, err.to_string()),
    })?;
    // Measured before `listeners()` sets close-on-exec.
    let socket_lines: Vec<String> = ports
        .iter()
        .map(|(_, fd)| describe_inherited_socket(*fd))
        .collect();

    let listeners = server_starter::listeners_os().map_err(|err| fail(3, error_chain(&err)))?;
    if config.set_nonblock {
        for (key, listener) in &listeners {
            set_nonblock(listener.as_raw_fd()).map_err(|err| {
                let key = key.to_string_lossy();
                fail(3, format!("cannot set O_NONBLOCK on {key}: {err}"))
            })?;
        }
    }

    if let Some(delay) = config.orphan_after {
        let orphan = spawn_orphan(delay)
            .map_err(|err| fail(3, format!("cannot leave an orphan behind: {err}")))?;
        reports.write("orphan", &format!("{orphan}\n"));
    }

    reports.write("env", &environment_report());
    reports.write(
        "start",
        &start_report(&identity, ppid, &inherited, &socket_lines),
    );

    {
        let reports = reports.clone();
        let exit_on = config.exit_on.clone();
        thread::spawn(move || watch_signals(signals, &reports, &exit_on));
    }
    {
        let reports = reports.clone();
        thread::spawn(move || watch_parent(ppid, &reports));
    }
    if let Some(delay) = config.exit_after {
        let reports = reports.clone();
        let code = config.exit_code;
        thread::spawn(move || {
            thread::sleep(delay);
            reports.exit("timer", code);
        });
    }
    if let Some(bytes) = config.write_stdout {
        let reports = reports.clone();
        thread::spawn(move || {
            if write_stdout(bytes) {
                reports.write("wrote", &format!("{bytes}\n"));
            }
        });
    }
    for (key, listener) in listeners {
        let key = key.to_string_lossy().into_owned();
        let identity = Arc::clone(&identity);
        thread::spawn(move || match listener {
            Listener::Tcp(listener) => serve_tcp(&key, &listener, &identity),
            Listener::Unix(listener) => serve_unix(&key, &listener, &identity),
            Listener::Udp(socket) => serve_udp(&key, &socket, &identity),
            // Another kind of socket (from systemd): nothing to answer on.
            _ => {}
        });
    }
    {
        let reports = reports.clone();
        let notify = config.notify.clone();
        thread::spawn(move || send_notifications(&notify, &reports));
    }
    Ok(())
}

fn read_config() -> Result<Config, Failure> {
    let exit_on = match std::env::var("TW_EXIT_ON") {
        Ok(list) => list
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| {
                signal_number(name)
                    .ok_or_else(|| fail(3, format!("TW_EXIT_ON: unknown signal {name:?}")))
            })
            .collect::<Result<_, _>>()?,
        Err(_) if flag("TW_IGNORE_TERM") => Vec::new(),
        Err(_) => vec![SIGTERM, SIGINT, SIGQUIT],
    };
    Ok(Config {
        dir: std::env::var_os("TW_DIR").map(PathBuf::from),
        fail_if_generation_below: number("TW_FAIL_IF_GEN_BELOW")?,
        exit_immediately: number("TW_EXIT_IMMEDIATELY")?,
        set_nonblock: flag("TW_SET_NONBLOCK"),
        exit_on,
        exit_after: number("TW_EXIT_AFTER_MS")?.map(Duration::from_millis),
        exit_code: number("TW_EXIT_CODE")?.unwrap_or(0),
        orphan_after: number("TW_ORPHAN_MS")?.map(Duration::from_millis),
        write_stdout: number("TW_WRITE_STDOUT")?,
        notify: Notify {
            ready: ready_knob()?,
            extend_usec: number("TW_EXTEND_USEC")?,
            from_child: flag("TW_NOTIFY_FROM_CHILD"),
        },
    })
}

/// `TW_READY`: `now`, `after:MS` or `never`.
fn ready_knob() -> Result<Ready, Failure> {
    let Ok(value) = std::env::var("TW_READY") else {
        return Ok(Ready::Never);
    };
    match value.trim() {
        "now" => Ok(Ready::Now),
        "never" => Ok(Ready::Never),
        other => other
            .strip_prefix("after:")
            .and_then(|ms| ms.parse().ok())
            .map(|ms| Ready::After(Duration::from_millis(ms)))
            .ok_or_else(|| {
                fail(
                    3,
                    format!("TW_READY: expected now, after:MS or never, got {value:?}"),
                )
            }),
    }
}

/// A numeric knob: `None` when unset, an error when not a number.
fn number<T: std::str::FromStr>(name: &str) -> Result<Option<T>, Failure> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| fail(3, format!("{name}: not a number: {value:?}"))),
        Err(_) => Ok(None),
    }
}

/// A boolean knob: set to `1`.
fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| value.trim() == "1")
}

fn signal_number(name: &str) -> Option<c_int> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    HANDLED_SIGNALS
        .iter()
        .find(|(_, known)| *known == bare)
        .map(|(signal, _)| *signal)
}

fn signal_name(signal: c_int) -> String {
    HANDLED_SIGNALS
        .iter()
        .find(|(known, _)| *known == signal)
        .map_or_else(|| signal.to_string(), |(_, name)| name.to_string())
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis())
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// The descriptors and signal state this process was exec'd with. Runs first
/// in `main`, before anything opens a descriptor.
fn capture_inherited_state() -> Inherited {
    let (sig_blocked, sig_ignored) = match fs::read_to_string("/proc/self/status") {
        Ok(status) => (
            status_field(&status, "SigBlk").unwrap_or_default(),
            status_field(&status, "SigIgn")
                .map(|hex| correct_sigpipe(&hex))
                .unwrap_or_default(),
        ),
        Err(err) => {
            eprintln!("test_worker: cannot read /proc/self/status: {err}");
            (String::new(), String::new())
        }
    };
    Inherited {
        fds: open_fds(),
        sig_blocked,
        sig_ignored,
    }
}

fn status_field(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|line| {
        let (field, value) = line.split_once(':')?;
        (field == name).then(|| value.trim().to_string())
    })
}

/// Puts back the SIGPIPE bit of a `SigIgn` mask as it was at exec time.
fn correct_sigpipe(hex: &str) -> String {
    let Ok(mut mask) = u64::from_str_radix(hex, 16) else {
        return hex.to_string();
    };
    let bit = 1u64 << (libc::SIGPIPE - 1);
    match SIGPIPE_AT_EXEC.load(Ordering::SeqCst) {
        SIGPIPE_IGNORED => mask |= bit,
        SIGPIPE_DEFAULT => mask &= !bit,
        _ => return hex.to_string(),
    }
    format!("{mask:0width$x}", width = hex.len())
}

/// Lists `/proc/self/fd`, then drops the descriptor used to read it: it is
/// the one listed that is closed again once the listing is done.
fn open_fds() -> Vec<RawFd> {
    let listed: Vec<RawFd> = match fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(err) => {
            eprintln!("test_worker: cannot list /proc/self/fd: {err}");
            return Vec::new();
        }
    };
    let mut fds: Vec<RawFd> = listed
        .into_iter()
        .filter(|fd| fd_flags(*fd).is_ok())
        .collect();
    fds.sort_unstable();
    fds
}

fn fd_flags(fd: RawFd) -> io::Result<c_int> {
    // SAFETY: F_GETFD only reads the descriptor flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

fn status_flags(fd: RawFd) -> io::Result<c_int> {
    // SAFETY: F_GETFL only reads the file status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(flags)
}

fn set_nonblock(fd: RawFd) -> io::Result<()> {
    let flags = status_flags(fd)?;
    // SAFETY: F_SETFL on a descriptor we own, adding one flag.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `sock.FD=KIND nonblock=N cloexec_at_start=N`, from the raw descriptor.
fn describe_inherited_socket(fd: RawFd) -> String {
    let nonblock = status_flags(fd).is_ok_and(|flags| flags & libc::O_NONBLOCK != 0);
    let cloexec = fd_flags(fd).is_ok_and(|flags| flags & libc::FD_CLOEXEC != 0);
    format!(
        "sock.{fd}={} nonblock={} cloexec_at_start={}",
        socket_kind(fd),
        u8::from(nonblock),
        u8::from(cloexec)
    )
}

fn socket_kind(fd: RawFd) -> &'static str {
    let mut kind: c_int = 0;
    let mut kind_len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut addr_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: each out-pointer is valid for writes of the length passed.
    let ok = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &mut kind_len,
        ) == 0
            && libc::getsockname(fd, (&raw mut addr).cast(), &mut addr_len) == 0
    };
    if !ok {
        return "unknown";
    }
    match (c_int::from(addr.ss_family), kind) {
        (libc::AF_INET, libc::SOCK_STREAM) => "tcp4",
        (libc::AF_INET6, libc::SOCK_STREAM) => "tcp6",
        (libc::AF_INET, libc::SOCK_DGRAM) => "udp4",
        (libc::AF_INET6, libc::SOCK_DGRAM) => "udp6",
        (libc::AF_UNIX, libc::SOCK_STREAM) => "unix",
        _ => "unknown",
    }
}

fn start_report(
    identity: &Identity,
    ppid: libc::pid_t,
    inherited: &Inherited,
    socket_lines: &[String],
) -> String {
    let port_env = std::env::var_os("SERVER_STARTER_PORT")
        .map(|value| value.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cwd = std::env::current_dir()
        .map(|dir| dir.to_string_lossy().into_owned())
        .unwrap_or_default();
    let argv: Vec<String> = std::env::args_os()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let fds: Vec<String> = inherited.fds.iter().map(RawFd::to_string).collect();
    let mut report = String::new();
    let _ = writeln!(report, "pid={}", identity.pid);
    let _ = writeln!(report, "ppid={ppid}");
    let _ = writeln!(report, "generation={}", identity.generation);
    let _ = writeln!(report, "port_env={port_env}");
    let _ = writeln!(report, "cwd={cwd}");
    let _ = writeln!(report, "argv={}", argv.join("\x1f"));
    let _ = writeln!(report, "sigblk={}", inherited.sig_blocked);
    let _ = writeln!(report, "sigign={}", inherited.sig_ignored);
    let _ = writeln!(report, "fds={}", fds.join(","));
    for line in socket_lines {
        let _ = writeln!(report, "{line}");
    }
    report
}

fn environment_report() -> String {
    let vars: BTreeMap<String, String> = std::env::vars_os()
        .map(|(key, value)| {
            (
                key.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let mut report = String::new();
    for (key, value) in vars {
        let _ = writeln!(report, "{key}={value}");
    }
    report
}

/// Leaves a grandchild that sleeps `delay`: `sh` starts `sleep` in the
/// background, prints its pid and exits, so `sleep` is re-parented.
fn spawn_orphan(delay: Duration) -> io::Result<u32> {
    let seconds = format!("{}.{:03}", delay.as_secs(), delay.subsec_millis());
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"sleep "$1" </dev/null >/dev/null 2>&1 & echo $!"#)
        .arg("sh")
        .arg(seconds)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("sh printed no pid (status {})", output.status)))
}

fn watch_signals(mut signals: Signals, reports: &Reports, exit_on: &[c_int]) {
    for signal in signals.forever() {
        let name = signal_name(signal);
        reports.append("signals", &format!("{name} {}\n", now_ms()));
        if exit_on.contains(&signal) {
            reports.exit(&name, 0);
        }
    }
}

/// Writes `bytes` bytes of `x` lines to stdout through a descriptor of its
/// own: a write blocked on a full pipe then holds no lock that exiting
/// needs (`Stdout`'s). Whether all went out.
fn write_stdout(bytes: usize) -> bool {
    const LINE: usize = 100;
    let mut text = Vec::with_capacity(bytes);
    while text.len() < bytes {
        let n = LINE.min(bytes - text.len());
        text.extend(std::iter::repeat_n(b'x', n - 1));
        text.push(b'\n');
    }
    let result = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| fs::File::from(fd).write_all(&text));
    if let Err(err) = &result {
        eprintln!("test_worker: cannot write to stdout: {err}");
    }
    result.is_ok()
}

/// Sends what `TW_EXTEND_USEC` and `TW_READY` ask for, in that order.
fn send_notifications(notify: &Notify, reports: &Reports) {
    if let Some(usec) = notify.extend_usec {
        notify_and_record(reports, &format!("EXTEND_TIMEOUT_USEC={usec}"));
    }
    match notify.ready {
        Ready::Never => return,
        Ready::Now => {}
        Ready::After(delay) => thread::sleep(delay),
    }
    if notify.from_child {
        notify_ready_from_child(reports);
    } else {
        notify_and_record(reports, "READY=1");
    }
}

/// Sends `state` through the library and appends what happened to
/// `PID.notify`. Whether it was sent.
fn notify_and_record(reports: &Reports, state: &str) -> bool {
    let result = match server_starter::notify(state) {
        Ok(true) => "sent",
        Ok(false) => "unset",
        Err(err) => {
            eprintln!(
                "test_worker: cannot notify {state:?}: {}",
                error_chain(&err)
            );
            "failed"
        }
    };
    record_notification(reports, state, &std::process::id().to_string(), result);
    result == "sent"
}

fn record_notification(reports: &Reports, state: &str, sender: &str, result: &str) {
    reports.append(
        "notify",
        &format!(
            "{} pid={sender} time_ms={} result={result}\n",
            state.replace('\n', "\\n"),
            now_ms()
        ),
    );
}

/// Has a child process send `READY=1` (this program again, in the mode
/// `main` enters for `TW_NOTIFY_CHILD`), and reaps it. Not a bare `fork`:
/// the worker has threads, and the child needs more than async-signal-safe
/// calls.
fn notify_ready_from_child(reports: &Reports) {
    let status = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .env(NOTIFY_CHILD_VAR, reports.pid.to_string())
            .stdin(Stdio::null())
            .status()
    });
    match status {
        Ok(status) if !status.success() => {
            eprintln!("test_worker: the notifying child failed ({status})");
        }
        Ok(_) => {}
        Err(err) => {
            eprintln!("test_worker: cannot start the notifying child: {err}");
            record_notification(reports, "READY=1", "none", "failed");
        }
    }
}

/// The child of `TW_NOTIFY_FROM_CHILD`: sends `READY=1`, records it in the
/// worker's `.notify` file, and gives the exit status.
fn notify_ready_as_child(worker: &str) -> i32 {
    let Ok(pid) = worker.parse() else {
        eprintln!("test_worker: {NOTIFY_CHILD_VAR}: not a pid: {worker:?}");
        return 1;
    };
    let reports = Reports {
        dir: std::env::var_os("TW_DIR").map(PathBuf::from),
        pid,
    };
    if notify_and_record(&reports, "READY=1") {
        0
    } else {
        1
    }
}

/// Exits once the supervisor is gone, so that a test never leaks a worker.
fn watch_parent(ppid: libc::pid_t, reports: &Reports) {
    loop {
        thread::sleep(PARENT_CHECK_PERIOD);
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } != ppid {
            reports.exit("parent-gone", 0);
        }
    }
}

fn serve_tcp(key: &str, listener: &TcpListener, identity: &Arc<Identity>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let identity = Arc::clone(identity);
                thread::spawn(move || {
                    // Accepted sockets do not inherit O_NONBLOCK on Linux,
                    // but say what is needed rather than rely on it.
                    let result = stream
                        .set_nonblocking(false)
                        .and_then(|()| stream.set_read_timeout(Some(READ_TIMEOUT)))
                        .and_then(|()| answer(stream, &identity.body()));
                    report_connection_error(result);
                });
            }
            Err(err) => wait_after_accept_error(key, listener.as_raw_fd(), &err),
        }
    }
}

fn serve_unix(key: &str, listener: &UnixListener, identity: &Arc<Identity>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let identity = Arc::clone(identity);
                thread::spawn(move || {
                    let result = stream
                        .set_nonblocking(false)
                        .and_then(|()| stream.set_read_timeout(Some(READ_TIMEOUT)))
                        .and_then(|()| answer(stream, &identity.body()));
                    report_connection_error(result);
                });
            }
            Err(err) => wait_after_accept_error(key, listener.as_raw_fd(), &err),
        }
    }
}

fn serve_udp(key: &str, socket: &UdpSocket, identity: &Identity) {
    let body = identity.body();
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                if let Err(err) = socket.send_to(body.as_bytes(), peer) {
                    eprintln!("test_worker: {key}: cannot answer {peer}: {err}");
                }
            }
            Err(err) => wait_after_accept_error(key, socket.as_raw_fd(), &err),
        }
    }
}

/// After a failed accept or recv: wait for the socket to become readable if
/// it is non-blocking (another worker may have taken the connection), back
/// off briefly on a real error.
fn wait_after_accept_error(key: &str, fd: RawFd, err: &io::Error) {
    match err.kind() {
        io::ErrorKind::WouldBlock => wait_readable(fd),
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
        _ => {
            eprintln!("test_worker: {key}: {err}");
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn wait_readable(fd: RawFd) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; an EINTR or error simply returns to the
    // caller's loop, which tries again.
    unsafe { libc::poll(&mut pollfd, 1, -1) };
}

/// Reads the request head (up to a blank line, EOF or the read timeout) and
/// answers with a minimal HTTP/1.0 response.
fn answer<S: Read + Write>(mut stream: S, body: &str) -> io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                request.extend_from_slice(&buf[..n]);
                if ends_head(&request) || request.len() > 64 * 1024 {
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            // Timed out: answer what we have.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(err) => return Err(err),
        }
    }
    let response =
        format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}");
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

fn ends_head(request: &[u8]) -> bool {
    request.windows(4).any(|w| w == b"\r\n\r\n") || request.windows(2).any(|w| w == b"\n\n")
}

fn report_connection_error(result: io::Result<()>) {
    // A client that hangs up early is not the worker's problem.
    match result {
        Err(err)
            if !matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) =>
        {
            eprintln!("test_worker: connection: {err}");
        }
        _ => {}
    }
}
