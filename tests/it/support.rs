//! The harness: runs the real `start_server` binary in a private temp dir,
//! talks to it and to the test worker's reports, and cleans up after itself.
//!
//! Invariants: every process a test starts carries `TW_DIR=<its own dir>` in
//! its environment, and dropping a [`Sandbox`] SIGKILLs every process that
//! carries it (start_server, daemons, workers, orphans, log pipes), so no test
//! leaves a process behind, even when it panics. The test process itself
//! never calls `waitpid(-1)` and installs no signal handlers: it only reaps
//! the children it spawned, by pid. A start_server outlives no test thread:
//! it gets SIGKILL as its parent-death signal.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

pub use nix::sys::signal::Signal;

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Variables that must not leak from the environment `cargo test` runs in
/// into the processes under test.
const SCRUBBED_ENV: &[&str] = &[
    "SERVER_STARTER_PORT",
    "SERVER_STARTER_GENERATION",
    "ENVDIR",
    "ENABLE_AUTO_RESTART",
    "KILL_OLD_DELAY",
    "AUTO_RESTART_INTERVAL",
    "POSIXLY_CORRECT",
    "TW_IGNORE_TERM",
    "TW_EXIT_ON",
    "TW_FAIL_IF_GEN_BELOW",
    "TW_EXIT_IMMEDIATELY",
    "TW_EXIT_AFTER_MS",
    "TW_EXIT_CODE",
    "TW_SET_NONBLOCK",
    "TW_ORPHAN_MS",
    "TW_WRITE_STDOUT",
    "TW_READY",
    "TW_EXTEND_USEC",
    "TW_NOTIFY_FROM_CHILD",
    "TW_NOTIFY_CHILD",
    "NOTIFY_SOCKET",
];

#[path = "../common/reference.rs"]
mod reference;
pub use reference::{REFERENCE_PACKAGE, find_reference};

/// The binary under test: `$START_SERVER_BIN` when set (to run the suite
/// against the Perl reference), else ours.
pub fn start_server_bin() -> PathBuf {
    match std::env::var_os("START_SERVER_BIN") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_start_server")),
    }
}

/// `target/<profile>/examples/test_worker`, built by `cargo test` next to
/// our binary.
pub fn test_worker_bin() -> PathBuf {
    let ours = Path::new(env!("CARGO_BIN_EXE_start_server"));
    let worker = ours
        .parent()
        .expect("binary has a parent directory")
        .join("examples")
        .join("test_worker");
    assert!(
        worker.is_file(),
        "test worker not found at {} (build it with `cargo build --examples`)",
        worker.display()
    );
    worker
}

/// A TCP port that was free a moment ago; never the same one twice in this
/// process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            listener.local_addr().expect("local_addr").port()
        };
        // Also free for UDP and on the wildcard address, so that every
        // `--port` form can use it.
        let udp_free = UdpSocket::bind(("0.0.0.0", port)).is_ok();
        let tcp_any_free = TcpListener::bind(("0.0.0.0", port)).is_ok();
        if udp_free && tcp_any_free && handed_out.insert(port) {
            return port;
        }
    }
}

/// Sets close-on-exec on every descriptor above 2 that the test process
/// inherited (a jobserver pipe, whatever the shell that ran `cargo test`
/// left open), so that the processes under test start with 0, 1 and 2 only
/// and what a worker inherits is what start_server gave it.
pub fn seal_inherited_fds() {
    static SEALED: std::sync::Once = std::sync::Once::new();
    SEALED.call_once(|| {
        let Ok(entries) = fs::read_dir("/proc/self/fd") else {
            return;
        };
        let fds: Vec<i32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|&fd| fd > 2)
            .collect();
        for fd in fds {
            // SAFETY: F_GETFD/F_SETFD only change the descriptor flags; an fd
            // that was the directory listing's and is closed by now fails
            // harmlessly with EBADF.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    });
}

/// Polls `cond` every 10 ms until it holds; on timeout panics with `what`
/// and whatever `context` says about the state of things.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`wait_until`] for a value.
pub fn wait_for_value<T>(
    timeout: Duration,
    what: &str,
    mut get: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let mut value = None;
    wait_until(
        timeout,
        what,
        || {
            value = get();
            value.is_some()
        },
        context,
    );
    value.expect("checked by wait_until")
}

/// Sends `sig` to `pid`; panics if the process does not exist.
pub fn send_signal(pid: i32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state is the first field after the parenthesised comm.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`.
pub fn proc_stat_field(pid: i32, n: usize) -> Option<i64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (state).
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

/// `GET / HTTP/1.0` to 127.0.0.1:`port`; returns the body.
pub fn http_get(port: u16) -> io::Result<String> {
    http_get_addr(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// `GET / HTTP/1.0` to `addr`; returns the body.
pub fn http_get_addr(addr: SocketAddr) -> io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    http_exchange(stream)
}

/// `GET / HTTP/1.0` over the unix socket at `path`; returns the body.
pub fn http_get_unix(path: &Path) -> io::Result<String> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    http_exchange(stream)
}

fn http_exchange(mut stream: impl Read + Write) -> io::Result<String> {
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    http_body(response)
}

fn http_body(response: String) -> io::Result<String> {
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") => Ok(body.to_string()),
        _ => Err(io::Error::other(format!("bad response: {response:?}"))),
    }
}

/// One datagram to `addr`, one reply back.
pub fn udp_query(addr: SocketAddr) -> io::Result<String> {
    let local: SocketAddr = if addr.is_ipv4() {
        "127.0.0.1:0".parse().expect("addr")
    } else {
        "[::1]:0".parse().expect("addr")
    };
    let socket = UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    socket.connect(addr)?;
    socket.send(b"ping\n")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The `pid=` value of a worker's answer.
pub fn answer_pid(body: &str) -> Option<i32> {
    answer_field(body, "pid")
}

/// The `generation=` value of a worker's answer.
pub fn answer_generation(body: &str) -> Option<i32> {
    answer_field(body, "generation")
}

fn answer_field(body: &str, key: &str) -> Option<i32> {
    body.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Parses status-file text into `(generation, pid)` pairs, in file order;
/// panics on a malformed line.
pub fn parse_status(text: &str) -> Vec<(u64, i32)> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "status file does not end with a newline: {text:?}"
    );
    text.lines()
        .map(|line| {
            let (generation, pid) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("malformed status line {line:?} in {text:?}"));
            (
                generation
                    .parse()
                    .unwrap_or_else(|_| panic!("bad generation in {line:?}")),
                pid.parse()
                    .unwrap_or_else(|_| panic!("bad pid in {line:?}")),
            )
        })
        .collect()
}

/// The pids in a log line like `...workers:12,34`.
pub fn pids_after_colon(line: &str) -> Vec<i32> {
    let list = line.rsplit_once(':').map(|(_, l)| l).unwrap_or("");
    list.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// The worker pids in `starting new worker PID` lines, in order.
pub fn started_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter_map(|l| l.strip_prefix("starting new worker "))
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// How many lines of `log` contain `needle`.
pub fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// TCP listeners on `port` in `/proc/net/tcp` (`tcp6` when `v6`), as the
/// kernel's hex `ADDR:PORT` strings.
pub fn tcp_listen_entries(port: u16, v6: bool) -> Vec<String> {
    let table = if v6 {
        "/proc/net/tcp6"
    } else {
        "/proc/net/tcp"
    };
    let text = fs::read_to_string(table).unwrap_or_default();
    let suffix = format!(":{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            (state == "0A" && local.ends_with(&suffix)).then(|| local.to_string())
        })
        .collect()
}

/// What the test worker wrote to `<pid>.start`.
#[derive(Clone, Debug)]
pub struct WorkerReport {
    pub pid: i32,
    pub fields: BTreeMap<String, String>,
    /// When the report appeared (ms since the epoch).
    pub written_ms: u128,
}

/// One `sock.<fd>=` entry of a worker report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockInfo {
    pub kind: String,
    pub nonblock: bool,
    pub cloexec_at_start: bool,
}

impl WorkerReport {
    fn parse(pid: i32, text: &str, written_ms: u128) -> WorkerReport {
        let fields = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WorkerReport {
            pid,
            fields,
            written_ms,
        }
    }

    pub fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("worker report has no {key}: {self:?}"))
    }

    pub fn generation(&self) -> u64 {
        self.get("generation").parse().expect("numeric generation")
    }

    pub fn ppid(&self) -> i32 {
        self.get("ppid").parse().expect("numeric ppid")
    }

    pub fn port_env(&self) -> &str {
        self.get("port_env")
    }

    pub fn cwd(&self) -> &str {
        self.get("cwd")
    }

    pub fn argv(&self) -> Vec<String> {
        self.get("argv").split('\x1f').map(str::to_string).collect()
    }

    pub fn sigblk(&self) -> u64 {
        u64::from_str_radix(self.get("sigblk"), 16).expect("hex sigblk")
    }

    pub fn sigign(&self) -> u64 {
        u64::from_str_radix(self.get("sigign"), 16).expect("hex sigign")
    }

    pub fn fds(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = self
            .get("fds")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().expect("numeric fd"))
            .collect();
        fds.sort_unstable();
        fds
    }

    /// The inherited sockets, by fd.
    pub fn socks(&self) -> BTreeMap<i32, SockInfo> {
        self.fields
            .iter()
            .filter_map(|(k, v)| {
                let fd = k.strip_prefix("sock.")?.parse().ok()?;
                let mut words = v.split_whitespace();
                let kind = words.next()?.to_string();
                let flags: Vec<&str> = words.collect();
                let flag = |name: &str| flags.contains(&format!("{name}=1").as_str());
                Some((
                    fd,
                    SockInfo {
                        kind,
                        nonblock: flag("nonblock"),
                        cloexec_at_start: flag("cloexec_at_start"),
                    },
                ))
            })
            .collect()
    }
}

/// Everything a test owns: a temp dir, a port, and the processes started
/// with this sandbox's marker, which are all SIGKILLed on drop.
pub struct Sandbox {
    dir: tempfile::TempDir,
    /// A free TCP/UDP port reserved for this test.
    pub port: u16,
    spawned: Cell<usize>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox::with_port(free_port())
    }

    /// A sandbox that uses `port` (to start again where another left off).
    pub fn with_port(port: u16) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("start-server-it.")
            .tempdir()
            .expect("create temp dir");
        fs::create_dir(dir.path().join("tw")).expect("create TW_DIR");
        Sandbox {
            dir,
            port,
            spawned: Cell::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the sandbox.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where test workers write their reports (`TW_DIR`).
    pub fn tw_dir(&self) -> PathBuf {
        self.path("tw")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.path("start_server.pid")
    }

    pub fn status_file(&self) -> PathBuf {
        self.path("start_server.status")
    }

    pub fn log_file(&self) -> PathBuf {
        self.path("start_server.log")
    }

    /// `127.0.0.1:<port>`
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A builder with the defaults: `--port=127.0.0.1:<port>`,
    /// `--interval=0`, status, pid and log files in the sandbox, the test
    /// worker as the program.
    pub fn server(&self) -> Builder<'_> {
        Builder {
            sb: self,
            port: true,
            status: true,
            pid: true,
            log: true,
            interval: Some("0".into()),
            options: Vec::new(),
            program: vec![test_worker_bin().into_os_string()],
            env: Vec::new(),
            raw: None,
            wrapper: Vec::new(),
            stdin: None,
            user: None,
            subreaper: false,
            ignored: Vec::new(),
            binary: None,
        }
    }

    /// Runs the binary with exactly `args` (no defaults) and waits for it.
    pub fn run<I, S>(&self, args: I) -> Finished
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.server().raw_args(args).spawn().finish(TIMEOUT)
    }

    /// Like [`Sandbox::run`] with extra environment variables.
    pub fn run_env<I, S>(&self, env: &[(&str, &str)], args: I) -> Finished
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut builder = self.server().raw_args(args);
        for (k, v) in env {
            builder = builder.env(k, v);
        }
        builder.spawn().finish(TIMEOUT)
    }

    /// Every report the test workers wrote, by generation then pid.
    pub fn worker_reports(&self) -> Vec<WorkerReport> {
        let mut reports = Vec::new();
        let Ok(entries) = fs::read_dir(self.tw_dir()) else {
            return reports;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".start"))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(report) = self.worker_report(pid) {
                reports.push(report);
            }
        }
        reports.sort_by_key(|r| {
            (
                r.fields
                    .get("generation")
                    .and_then(|g| g.parse::<u64>().ok())
                    .unwrap_or(0),
                r.pid,
            )
        });
        reports
    }

    /// The report of worker `pid`, once it is complete.
    pub fn worker_report(&self, pid: i32) -> Option<WorkerReport> {
        let path = self.tw_dir().join(format!("{pid}.start"));
        let text = fs::read_to_string(&path).ok()?;
        let written_ms = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let report = WorkerReport::parse(pid, &text, written_ms);
        // A report is complete once its last line is there.
        (text.ends_with('\n') && report.fields.contains_key("fds")).then_some(report)
    }

    /// The full environment worker `pid` was started with.
    pub fn worker_env(&self, pid: i32) -> BTreeMap<String, String> {
        let text = fs::read_to_string(self.tw_dir().join(format!("{pid}.env")))
            .unwrap_or_else(|e| panic!("no env report for worker {pid}: {e}"));
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The signals worker `pid` recorded, with their arrival times.
    pub fn signals_of(&self, pid: i32) -> Vec<(String, u128)> {
        fs::read_to_string(self.tw_dir().join(format!("{pid}.signals")))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (name, ms) = l.split_once(' ')?;
                Some((name.to_string(), ms.trim().parse().ok()?))
            })
            .collect()
    }

    /// The names of the signals worker `pid` recorded.
    pub fn signal_names_of(&self, pid: i32) -> Vec<String> {
        self.signals_of(pid).into_iter().map(|(n, _)| n).collect()
    }

    /// Whether worker `pid` wrote its `.exit` file (exited on its own terms).
    pub fn worker_exited(&self, pid: i32) -> bool {
        self.tw_dir().join(format!("{pid}.exit")).exists()
    }

    /// The status file's text, if it exists.
    pub fn status_text(&self) -> Option<String> {
        fs::read_to_string(self.status_file()).ok()
    }

    /// The status file's lines, if it exists.
    pub fn status_lines(&self) -> Option<Vec<(u64, i32)>> {
        self.status_text().map(|t| parse_status(&t))
    }

    /// A short dump of the sandbox for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "sandbox: {}", self.dir().display());
        if let Ok(entries) = fs::read_dir(self.dir()) {
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            let _ = writeln!(out, "files: {}", names.join(" "));
        }
        let _ = writeln!(out, "status file: {:?}", self.status_text());
        let _ = writeln!(out, "log file:\n{}", read_lossy(&self.log_file()));
        for report in self.worker_reports() {
            let _ = writeln!(
                out,
                "worker {} generation={} signals={:?} exited={}",
                report.pid,
                report.fields.get("generation").map_or("?", String::as_str),
                self.signal_names_of(report.pid),
                self.worker_exited(report.pid),
            );
        }
        out
    }

    fn marker(&self) -> Vec<u8> {
        let mut marker = b"TW_DIR=".to_vec();
        marker.extend_from_slice(self.tw_dir().as_os_str().as_bytes());
        marker.push(0);
        marker
    }

    /// Pids of the live processes that carry this sandbox's marker.
    pub fn marked_pids(&self) -> Vec<i32> {
        let marker = self.marker();
        let me = std::process::id() as i32;
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                let mut environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                environ.insert(0, 0);
                let mut needle = vec![0];
                needle.extend_from_slice(&marker);
                environ
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice())
            })
            .collect()
    }

    /// SIGKILLs every process carrying this sandbox's marker, until none is
    /// left.
    pub fn kill_all(&self) {
        for _ in 0..100 {
            let pids = self.marked_pids();
            let live: Vec<i32> = pids.into_iter().filter(|&p| pid_alive(p)).collect();
            if live.is_empty() {
                return;
            }
            for pid in live {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn next_output_names(&self) -> (PathBuf, PathBuf) {
        let n = self.spawned.get() + 1;
        self.spawned.set(n);
        let suffix = if n == 1 {
            String::new()
        } else {
            format!(".{n}")
        };
        (
            self.path(&format!("stdout{suffix}")),
            self.path(&format!("stderr{suffix}")),
        )
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Whether someone holds an exclusive lock on the sandbox's pid file.
pub fn pid_file_is_locked(sb: &Sandbox) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    let file = std::fs::File::open(sb.pid_file()).expect("open pid file");
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_) => false,
        Err((_, errno)) => {
            assert_eq!(errno, nix::errno::Errno::EWOULDBLOCK);
            true
        }
    }
}

/// Reads a file for a message, whatever it holds.
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// How a `start_server` command line is put together.
pub struct Builder<'a> {
    sb: &'a Sandbox,
    port: bool,
    status: bool,
    pid: bool,
    log: bool,
    interval: Option<String>,
    options: Vec<OsString>,
    program: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    raw: Option<Vec<OsString>>,
    wrapper: Vec<OsString>,
    stdin: Option<PathBuf>,
    user: Option<(u32, u32)>,
    subreaper: bool,
    ignored: Vec<libc::c_int>,
    binary: Option<PathBuf>,
}

impl<'a> Builder<'a> {
    /// Runs this copy of start_server instead of the one under test.
    pub fn binary(mut self, path: PathBuf) -> Self {
        self.binary = Some(path);
        self
    }

    /// No default `--port`.
    pub fn no_port(mut self) -> Self {
        self.port = false;
        self
    }

    /// No `--status-file`.
    pub fn no_status_file(mut self) -> Self {
        self.status = false;
        self
    }

    /// No `--pid-file`.
    pub fn no_pid_file(mut self) -> Self {
        self.pid = false;
        self
    }

    /// No `--log-file`: everything goes to the captured stderr.
    pub fn no_log_file(mut self) -> Self {
        self.log = false;
        self
    }

    /// `--interval=secs` instead of `--interval=0`.
    pub fn interval(mut self, secs: &str) -> Self {
        self.interval = Some(secs.into());
        self
    }

    /// No `--interval` (the default of one second).
    pub fn default_interval(mut self) -> Self {
        self.interval = None;
        self
    }

    /// One more option (before `--`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.options.push(arg.as_ref().to_owned());
        self
    }

    /// More options (before `--`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.options
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The worker command line (instead of the test worker).
    pub fn program<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.program = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// An environment variable for start_server (and so its workers).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Exactly these arguments, nothing added.
    pub fn raw_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.raw = Some(args.into_iter().map(|a| a.as_ref().to_owned()).collect());
        self
    }

    /// Run start_server through this command, e.g. `sh -c '...; exec "$@"' sh`.
    pub fn wrapper<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.wrapper = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self
    }

    /// Read stdin from this file instead of /dev/null.
    pub fn stdin_file(mut self, path: PathBuf) -> Self {
        self.stdin = Some(path);
        self
    }

    /// Run start_server with this uid and gid (and no supplementary
    /// groups); the test process must be root to ask for another user.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }

    /// Make start_server a child subreaper (PR_SET_CHILD_SUBREAPER, which
    /// survives execve), so that orphans of its workers are re-parented to
    /// it rather than to init.
    pub fn subreaper(mut self) -> Self {
        self.subreaper = true;
        self
    }

    /// Start start_server with `signal` ignored, as a parent that set
    /// SIG_IGN would (set in the child between fork and exec: the test
    /// process itself changes no disposition).
    pub fn ignore_signal(mut self, signal: libc::c_int) -> Self {
        self.ignored.push(signal);
        self
    }

    /// The arguments after the binary's name.
    pub fn build_args(&self) -> Vec<OsString> {
        if let Some(raw) = &self.raw {
            return raw.clone();
        }
        let sb = self.sb;
        let mut args: Vec<OsString> = Vec::new();
        if self.port {
            args.push(format!("--port={}", sb.host_port()).into());
        }
        if let Some(interval) = &self.interval {
            args.push(format!("--interval={interval}").into());
        }
        let mut file_opt = |name: &str, path: PathBuf| {
            let mut arg = OsString::from(format!("--{name}="));
            arg.push(path.as_os_str());
            args.push(arg);
        };
        if self.status {
            file_opt("status-file", sb.status_file());
        }
        if self.pid {
            file_opt("pid-file", sb.pid_file());
        }
        if self.log {
            file_opt("log-file", sb.log_file());
        }
        args.extend(self.options.iter().cloned());
        args.push("--".into());
        args.extend(self.program.iter().cloned());
        args
    }

    /// Starts start_server.
    pub fn spawn(self) -> Server<'a> {
        let sb = self.sb;
        let args = self.build_args();
        let bin = self.binary.clone().unwrap_or_else(start_server_bin);
        let mut argv: Vec<OsString> = self.wrapper.clone();
        argv.push(bin.into_os_string());
        argv.extend(args);
        let (stdout, stderr) = sb.next_output_names();
        seal_inherited_fds();
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(sb.dir())
            .stdin(match &self.stdin {
                Some(path) => Stdio::from(fs::File::open(path).expect("open stdin file")),
                None => Stdio::null(),
            })
            .stdout(fs::File::create(&stdout).expect("create stdout file"))
            .stderr(fs::File::create(&stderr).expect("create stderr file"));
        for key in SCRUBBED_ENV {
            command.env_remove(key);
        }
        command.env("TW_DIR", sb.tw_dir());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        let subreaper = self.subreaper;
        let ignored = self.ignored.clone();
        // If the test process dies without running its destructors (an
        // abort, a harness timeout), take start_server with it: the kernel
        // sends SIGKILL when the spawning thread exits. (std changes the
        // uid before running this, and a uid change clears the setting.)
        // SAFETY: prctl(2) and signal(2) are async-signal-safe and touch no
        // memory of ours; `ignored` was allocated before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if subreaper && libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) == -1 {
                    return Err(io::Error::last_os_error());
                }
                for &signal in &ignored {
                    if libc::signal(signal, libc::SIG_IGN) == libc::SIG_ERR {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("failed to spawn {argv:?}: {e}"));
        let pid = child.id() as i32;
        Server {
            sb,
            argv,
            env: self.env,
            child: RefCell::new(child),
            pid,
            exit: Cell::new(None),
            stdout,
            stderr,
            log_file: (self.log && self.raw.is_none()).then(|| sb.log_file()),
        }
    }
}

/// A running (or finished) `start_server` process started by a test.
pub struct Server<'a> {
    pub sb: &'a Sandbox,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    child: RefCell<Child>,
    pid: i32,
    exit: Cell<Option<ExitStatus>>,
    stdout: PathBuf,
    stderr: PathBuf,
    log_file: Option<PathBuf>,
}

/// A command that ran to its end.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub cmdline: String,
}

impl Finished {
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }

    /// Asserts a clean exit 0.
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "expected success\n{}",
            self.describe()
        );
    }

    /// Asserts exit 1, with a one-line message on stderr mentioning `needle`.
    pub fn assert_usage_error(&self, needle: &str) {
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected exit 1\n{}",
            self.describe()
        );
        assert!(
            self.stderr.contains(needle),
            "expected stderr to mention {needle:?}\n{}",
            self.describe()
        );
    }

    /// Asserts a non-zero exit with stderr mentioning `needle`.
    pub fn assert_failure(&self, needle: &str) {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "expected a non-zero exit\n{}",
            self.describe()
        );
        assert!(
            self.stderr.contains(needle),
            "expected stderr to mention {needle:?}\n{}",
            self.describe()
        );
    }
}

impl<'a> Server<'a> {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The command line, shell-like, for messages.
    pub fn cmdline(&self) -> String {
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{}={:?}", k.to_string_lossy(), v))
            .collect();
        let argv: Vec<String> = self.argv.iter().map(|a| format!("{a:?}")).collect();
        format!("{} {}", env.join(" "), argv.join(" "))
            .trim()
            .to_string()
    }

    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// The log file's content ("" without `--log-file`).
    pub fn log(&self) -> String {
        self.log_file.as_deref().map(read_lossy).unwrap_or_default()
    }

    /// Everything start_server said: its stderr, then the log file.
    pub fn output(&self) -> String {
        let mut out = self.stderr();
        out.push_str(&self.log());
        out
    }

    /// Everything a failure message should show.
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nbinary pid: {}\nexit status: {}\nstdout:\n{}\nstderr:\n{}\n{}",
            self.cmdline(),
            self.pid,
            match self.try_exit() {
                Some(status) => format!("{status}"),
                None => "still running".to_string(),
            },
            self.stdout(),
            self.stderr(),
            self.sb.describe()
        )
    }

    /// Polls `cond` until it holds or [`TIMEOUT`] passes.
    pub fn wait_for(&self, what: &str, cond: impl FnMut() -> bool) {
        self.wait_for_within(TIMEOUT, what, cond);
    }

    /// Polls `cond` until it holds or `timeout` passes.
    pub fn wait_for_within(&self, timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
        wait_until(timeout, what, cond, || self.describe());
    }

    /// Polls `get` until it returns a value.
    pub fn wait_value<T>(&self, what: &str, get: impl FnMut() -> Option<T>) -> T {
        wait_for_value(TIMEOUT, what, get, || self.describe())
    }

    /// Waits until start_server's output contains `needle`; returns the
    /// output.
    pub fn wait_output(&self, needle: &str) -> String {
        self.wait_output_count(needle, 1)
    }

    /// Waits until `needle` appears on `n` lines of the output.
    pub fn wait_output_count(&self, needle: &str, n: usize) -> String {
        let what = format!("{n} output line(s) containing {needle:?}");
        self.wait_value(&what, || {
            let out = self.output();
            (count_lines(&out, needle) >= n).then_some(out)
        })
    }

    /// The report of the worker of generation `generation`, waiting for it.
    pub fn wait_worker(&self, generation: u64) -> WorkerReport {
        self.wait_value(
            &format!("a report from a generation {generation} worker"),
            || {
                self.sb.worker_reports().into_iter().find(|r| {
                    r.fields.get("generation").map(String::as_str) == Some(&generation.to_string())
                })
            },
        )
    }

    /// Waits until the status file lists exactly `generation` and the worker
    /// has reported; returns its report.
    pub fn wait_current(&self, generation: u64) -> WorkerReport {
        let report = self.wait_worker(generation);
        let want = vec![(generation, report.pid)];
        self.wait_for(&format!("status file to be exactly {want:?}"), || {
            self.sb.status_lines().as_ref() == Some(&want)
        });
        report
    }

    /// Waits until the status file holds exactly `lines`.
    pub fn wait_status(&self, lines: &[(u64, i32)]) {
        self.wait_for(&format!("status file to be exactly {lines:?}"), || {
            self.sb.status_lines().as_deref() == Some(lines)
        });
    }

    /// Waits until the worker answering on our port is `pid`.
    pub fn wait_serving(&self, pid: i32) {
        self.wait_for(
            &format!("worker {pid} to answer on port {}", self.sb.port),
            || http_get(self.sb.port).ok().and_then(|b| answer_pid(&b)) == Some(pid),
        );
    }

    /// Waits until worker `pid` has recorded signal `name`; returns when it
    /// arrived (ms since the epoch).
    pub fn wait_signal(&self, pid: i32, name: &str) -> u128 {
        self.wait_value(&format!("worker {pid} to receive SIG{name}"), || {
            self.sb
                .signals_of(pid)
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, ms)| ms)
        })
    }

    /// Waits until process `pid` is gone.
    pub fn wait_gone(&self, pid: i32) {
        self.wait_for(&format!("process {pid} to exit"), || !pid_alive(pid));
    }

    /// Sends `sig` to start_server.
    pub fn signal(&self, sig: Signal) {
        send_signal(self.pid, sig);
    }

    /// start_server's exit status, if it has exited (reaps it).
    pub fn try_exit(&self) -> Option<ExitStatus> {
        if let Some(status) = self.exit.get() {
            return Some(status);
        }
        // Never panics: it also runs from `Drop` while a test is failing.
        let status = match self.child.try_borrow_mut() {
            Ok(mut child) => child.try_wait().ok().flatten(),
            Err(_) => None,
        };
        self.exit.set(status);
        status
    }

    /// Whether start_server is still running.
    pub fn running(&self) -> bool {
        self.try_exit().is_none()
    }

    /// Waits for start_server to exit; panics with everything on timeout.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        self.wait_for_within(timeout, "start_server to exit", || {
            status = self.try_exit();
            status.is_some()
        });
        status.expect("checked by wait_for")
    }

    /// Waits for start_server to exit, and returns what it printed.
    pub fn finish(self, timeout: Duration) -> Finished {
        let status = self.wait_exit(timeout);
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.output(),
            cmdline: self.cmdline(),
        }
    }

    /// Asserts start_server is still up (with everything in the message).
    pub fn assert_running(&self) {
        assert!(
            self.running(),
            "start_server exited unexpectedly\n{}",
            self.describe()
        );
    }

    /// SIGTERM, then waits for a clean exit 0.
    pub fn stop(&self) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(TIMEOUT);
        assert!(
            status.success(),
            "start_server did not exit 0 on SIGTERM\n{}",
            self.describe()
        );
    }

    /// A `--restart`/`--stop` style client command against this server's
    /// files, started now; returns its handle.
    pub fn client<I, S>(&self, args: I) -> Server<'a>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.sb.server().raw_args(args).spawn()
    }
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- start_server under test ----\n{}", self.describe());
        }
        if self.try_exit().is_none() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        // The rest of the sandbox's processes go when the sandbox does.
        let _ = self.child.borrow_mut().wait();
    }
}

/// The live children of `pid` (processes whose parent it is, zombies
/// included), from `/proc`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&child| proc_stat_field(child, 4) == Some(i64::from(pid)))
        .collect()
}

/// The state letter of `pid` in `/proc/<pid>/stat` (`R`, `S`, `Z`, ...).
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// The zombie children of `pid`: exited, not yet reaped by it.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|&child| proc_state(child) == Some('Z'))
        .collect()
}

/// The value of a `Name:` line of `/proc/<pid>/status`, trimmed.
pub fn proc_status_field(pid: i32, name: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// `VmRSS` of `pid`, in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    proc_status_field(pid, "VmRSS")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The open descriptors of `pid`, sorted.
pub fn open_fds(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort_unstable();
    fds
}

/// Whether this test process runs as root (and so may start start_server
/// as another user, and is not stopped by file permissions itself).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The unprivileged user of the unprivileged tests: `nobody`.
pub const NOBODY: (u32, u32) = (65534, 65534);

/// Set to make a test that cannot run here fail instead of skipping (for a
/// CI run that must run everything).
pub const NO_SKIP_VAR: &str = "START_SERVER_TEST_NO_SKIP";

/// Reports that the calling test cannot run here, and why: a
/// `skipped: <test>: <reason>` line on stderr, written past libtest's
/// output capture (which hides `eprintln!` of a passing test) so that it
/// shows in every run. The test then returns early; libtest has no run-time
/// "ignored" outcome, so such tests carry a `_needs_<what>` suffix, and
/// `START_SERVER_TEST_NO_SKIP=1` turns the skip into a failure.
pub fn skip(reason: &str) {
    let current = std::thread::current();
    let test = current.name().unwrap_or("unnamed test");
    if std::env::var_os(NO_SKIP_VAR).is_some_and(|v| !v.is_empty()) {
        panic!("{test} cannot run here ({NO_SKIP_VAR} is set): {reason}");
    }
    // One write, so that the line is not interleaved with libtest's.
    let line = format!("skipped: {test}: {reason}\n");
    let _ = io::stderr().write_all(line.as_bytes());
}
