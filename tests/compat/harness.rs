//! Processes and places: the two binaries, a private sandbox per run, and
//! the guard that leaves nothing running behind.
//!
//! Invariants: every process a run starts carries `COMPAT_SANDBOX=<its
//! sandbox dir>` in its environment, and dropping the [`Sandbox`] SIGKILLs,
//! by pid, every process that carries it (start_server, daemons, workers,
//! orphans, log pipes, clients) and every pid the run recorded that still
//! carries it. The test process only ever waits for its own children, by
//! pid, and installs no signal handlers.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "../common/reference.rs"]
mod reference;
pub use reference::REFERENCE;
use reference::{REFERENCE_PACKAGE, find_reference};

/// Set to make the suite fail, not skip, without the reference (the same
/// variable as the integration tests').
const NO_SKIP_VAR: &str = "START_SERVER_TEST_NO_SKIP";

/// The niceness of every process a run starts (inherited by workers):
/// lower priority than the test process, so that the threads observing a
/// run (the status-file watcher above all) are scheduled as soon as
/// something happens, even on a busy two-core machine. Both binaries get
/// the same.
pub const NICE: libc::c_int = 10;

/// The niceness of the test's threads that drive scripts and poll: between
/// the status-file watchers (0) and the processes under test.
pub const DRIVER_NICE: libc::c_int = 5;

/// Lowers the calling thread's priority to [`DRIVER_NICE`]. Linux keeps a
/// nice value per thread, and a new thread starts with its creator's, so a
/// driver starts its watcher before it calls this.
pub fn lower_thread_priority() {
    // SAFETY: gettid(2) and setpriority(2) on the calling thread.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, DRIVER_NICE);
    }
}

/// When process `pid` was forked, in ms since the epoch (10 ms steps,
/// rounded down), from its start time in /proc (clock ticks of
/// CLOCK_BOOTTIME).
pub fn fork_time_ms(pid: i32) -> Option<u128> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks: u128 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = u128::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    Some(boot_time_ms() + ticks * 1000 / hz)
}

/// The epoch time of the boot, from CLOCK_REALTIME - CLOCK_BOOTTIME, read
/// once so that every fork time uses the same offset.
fn boot_time_ms() -> u128 {
    static BOOT: OnceLock<u128> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let read = |clock| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime(2) with a valid timespec.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        let offset_ns = read(libc::CLOCK_REALTIME) - read(libc::CLOCK_BOOTTIME);
        (offset_ns / 1_000_000) as u128
    })
}

/// The environment variable that marks a run's processes.
pub const MARKER: &str = "COMPAT_SANDBOX";

/// Whether the calling test can run: true when the reference is installed.
/// Otherwise it reports the test skipped with a `skipped: <test>: <reason>`
/// line on stderr naming the package to install (past libtest's capture, so
/// that it always shows), or panics when [`NO_SKIP_VAR`] is set (CI).
pub fn have_reference() -> bool {
    if find_reference().is_some() {
        return true;
    }
    let current = std::thread::current();
    let test = current.name().unwrap_or("unnamed test");
    let reason = format!(
        "the Perl reference {REFERENCE} is not installed (apt-get install {REFERENCE_PACKAGE})"
    );
    if std::env::var_os(NO_SKIP_VAR).is_some_and(|v| !v.is_empty()) {
        panic!("{test} cannot run here ({NO_SKIP_VAR} is set): {reason}");
    }
    let line = format!("skipped: {test}: {reason}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    false
}

/// The Perl reference; only for a test that checked [`have_reference`].
pub fn reference_bin() -> PathBuf {
    find_reference()
        .expect("the reference is installed (checked by have_reference)")
        .to_path_buf()
}

/// Our binary.
pub fn ours_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_start_server"))
}

/// `target/<profile>/examples/test_worker`, next to our binary. `cargo
/// test` builds it; a run limited to this target (`--test compat`) does
/// not, so it is built here once if missing.
pub fn worker_bin() -> PathBuf {
    static WORKER: OnceLock<PathBuf> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let worker = ours_bin()
                .parent()
                .expect("binary has a parent directory")
                .join("examples")
                .join("test_worker");
            if !worker.is_file() {
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let status = Command::new(cargo)
                    .args(["build", "--example", "test_worker"])
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .status();
                assert!(
                    status.is_ok_and(|s| s.success()) && worker.is_file(),
                    "test worker not found at {} and `cargo build --example \
                     test_worker` failed",
                    worker.display()
                );
            }
            worker
        })
        .clone()
}

/// Which binary a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Reference,
    Ours,
}

impl Side {
    pub fn bin(self) -> PathBuf {
        match self {
            Side::Reference => reference_bin(),
            Side::Ours => ours_bin(),
        }
    }
}

/// Milliseconds since the epoch: the clock the test worker stamps with.
pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after epoch")
        .as_millis()
}

/// A port free for TCP and UDP on every address right now, never handed
/// out twice by this process, and reserved against other processes running
/// this suite by an abstract unix socket named after it (the returned
/// socket; dropping it frees the port, and nothing is left on disk). Ports are scanned just below the kernel's ephemeral range
/// (ip_local_port_range), where no other process gets one by binding port 0
/// between our check and start_server's bind; and never by binding port 0
/// ourselves, which could probe a port handed out to a run that has not
/// bound it yet.
pub fn free_port() -> (u16, UnixDatagram) {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let last = ephemeral.saturating_sub(1).max(11000);
    let first = last - 10000;
    // Without an IPv6 loopback (some containers), only IPv4 is probed; the
    // scenarios that bind [::1] then fail, on both sides, with a message
    // that says so.
    let ipv6 = TcpListener::bind(("::1", 0)).is_ok();
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Start somewhere that depends on the process, so that two suites on
    // one machine rarely probe the same ports.
    let mut candidate = next.unwrap_or(first + (std::process::id() % 10000) as u16);
    loop {
        candidate = if candidate >= last {
            first
        } else {
            candidate + 1
        };
        let Some(reservation) = reserve(candidate) else {
            continue;
        };
        let free = TcpListener::bind(("0.0.0.0", candidate)).is_ok()
            && UdpSocket::bind(("0.0.0.0", candidate)).is_ok()
            && (!ipv6
                || TcpListener::bind(("::1", candidate)).is_ok()
                    && UdpSocket::bind(("::1", candidate)).is_ok());
        if free {
            *next = Some(candidate);
            return (candidate, reservation);
        }
    }
}

/// Binds the abstract unix socket `ss-compat-port-PORT`, which only one
/// process can hold at a time.
fn reserve(port: u16) -> Option<UnixDatagram> {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("ss-compat-port-{port}");
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    UnixDatagram::bind_addr(&addr).ok()
}

/// The matrix starts and stops hundreds of short runs; it takes this lock
/// for writing, the scenarios for reading, so that its burst of start-ups
/// never loads the machine while a scenario measures timing.
pub static EXCLUSIVE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Limits how many runs are under way at once across the whole test
/// binary, so that timing stays meaningful on a small CI machine.
pub struct Slots {
    busy: Mutex<usize>,
    freed: Condvar,
}

/// A held slot; released on drop.
pub struct Slot(&'static Slots);

impl Slots {
    pub fn global() -> &'static Slots {
        static SLOTS: Slots = Slots {
            busy: Mutex::new(0),
            freed: Condvar::new(),
        };
        &SLOTS
    }

    pub fn take(&'static self) -> Slot {
        let limit = std::env::var("COMPAT_PARALLEL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(6usize)
            .max(1);
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= limit {
            busy = self.freed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
        Slot(self)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut busy = self.0.busy.lock().unwrap_or_else(|e| e.into_inner());
        *busy -= 1;
        self.0.freed.notify_one();
    }
}

/// One run's private directory, ports and processes.
pub struct Sandbox {
    dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    /// The ports' reservations (see [`free_port`]).
    _reserved: Vec<UnixDatagram>,
    /// Pids seen during the run (start_server, workers, clients, daemon).
    seen: Mutex<BTreeSet<i32>>,
    /// Children spawned by the test process, to reap by pid.
    children: Mutex<Vec<Child>>,
}

impl Sandbox {
    pub fn new(port_count: usize) -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("ss-compat.")
            .tempdir()
            .expect("create a temp dir");
        fs::create_dir(dir.path().join("tw")).expect("create TW_DIR");
        let (ports, reserved) = (0..port_count).map(|_| free_port()).unzip();
        Sandbox {
            dir,
            ports,
            _reserved: reserved,
            seen: Mutex::new(BTreeSet::new()),
            children: Mutex::new(Vec::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn tw_dir(&self) -> PathBuf {
        self.path("tw")
    }

    /// The environment every process of this run starts with: nothing
    /// from the `cargo test` environment leaks in.
    pub fn base_env(&self) -> Vec<(OsString, OsString)> {
        vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            (MARKER.into(), self.dir().into()),
            ("TW_DIR".into(), self.tw_dir().into()),
        ]
    }

    /// Starts `program args` in the sandbox with the base environment plus
    /// `env`, stdout and stderr into files named `<name>.out` and
    /// `<name>.err`. Returns the pid.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[OsString],
        env: &[(OsString, OsString)],
    ) -> i32 {
        self.spawn_with(name, program, args, env, false)
    }

    /// [`Sandbox::spawn`], optionally making the process a child subreaper
    /// (prctl(2) `PR_SET_CHILD_SUBREAPER`, which survives execve).
    pub fn spawn_with(
        &self,
        name: &str,
        program: &Path,
        args: &[OsString],
        env: &[(OsString, OsString)],
        subreaper: bool,
    ) -> i32 {
        use std::os::unix::process::CommandExt;
        let out = fs::File::create(self.path(&format!("{name}.out"))).expect("create .out");
        let err = fs::File::create(self.path(&format!("{name}.err"))).expect("create .err");
        let mut command = Command::new(program);
        // SAFETY: setpriority(2) and prctl(2) are async-signal-safe system
        // calls that touch nothing but this process's attributes.
        unsafe {
            command.pre_exec(move || {
                libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
                if subreaper && libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .args(args)
            .env_clear()
            .envs(self.base_env())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        let pid = child.id() as i32;
        self.note_pid(pid);
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        pid
    }

    /// The exit status of child `pid` if it has exited (reaping it).
    pub fn try_wait(&self, pid: i32) -> Option<ExitStatus> {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        let child = children.iter_mut().find(|c| c.id() as i32 == pid)?;
        child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for child `pid` to exit.
    pub fn wait_child(&self, pid: i32, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait(pid) {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Remembers a pid so that the guard kills it if it is still ours.
    pub fn note_pid(&self, pid: i32) {
        if pid > 1 {
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pid);
        }
    }

    /// Every live process that carries this sandbox's marker.
    pub fn marked_processes(&self) -> Vec<i32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        let me = std::process::id() as i32;
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| pid != me && self.carries_marker(pid))
            .collect()
    }

    fn carries_marker(&self, pid: i32) -> bool {
        let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let mut needle = format!("{MARKER}=").into_bytes();
        needle.extend_from_slice(self.dir().as_os_str().as_encoded_bytes());
        environ
            .split(|&b| b == 0)
            .any(|var| var == needle.as_slice())
    }

    /// SIGKILLs every process of this run and reaps our own children.
    pub fn kill_all(&self) {
        for _ in 0..50 {
            let mut victims = self.marked_processes();
            let seen: Vec<i32> = self
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .copied()
                .collect();
            victims.extend(seen.into_iter().filter(|&p| self.carries_marker(p)));
            victims.retain(|&p| is_alive(p));
            for &pid in &victims {
                // SAFETY: kill(2) by pid, on a process that carries our marker.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
            for child in children.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            drop(children);
            if victims.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn send(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) by pid.
    unsafe { libc::kill(pid, signal) };
}

/// `ExitStatus` as text: `exit=N` or `signal=N`.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit={code}"),
        (None, Some(signal)) => format!("signal={signal}"),
        _ => "exit=?".to_string(),
    }
}

/// The sockets bound to `port` (TCP listening, UDP bound), as
/// `tcp4 127.0.0.1 backlog=N` / `udp6 ::1` lines, from the kernel's
/// sock_diag netlink interface (what ss(8) reads: the backlog of a
/// listening socket is not in /proc).
pub fn bound_sockets(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for (family, v) in [(libc::AF_INET as u8, '4'), (libc::AF_INET6 as u8, '6')] {
        for (protocol, name) in [
            (libc::IPPROTO_TCP as u8, "tcp"),
            (libc::IPPROTO_UDP as u8, "udp"),
        ] {
            // TCP: listening sockets only; UDP: every state.
            let states = if name == "tcp" { 1 << 10 } else { u32::MAX };
            for msg in diag_dump(family, protocol, states) {
                if u16::from_be(msg.id.sport) != port {
                    continue;
                }
                let addr = if v == '4' {
                    std::net::Ipv4Addr::from(u32::from_be(msg.id.src[0])).to_string()
                } else {
                    let mut bytes = [0u8; 16];
                    for (i, word) in msg.id.src.iter().enumerate() {
                        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
                    }
                    std::net::Ipv6Addr::from(bytes).to_string()
                };
                let mut line = format!("{name}{v} {addr}");
                if name == "tcp" {
                    line.push_str(&format!(" backlog={}", msg.wqueue));
                }
                found.push(line);
            }
        }
    }
    found.sort();
    found
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
struct DiagRequest {
    header: libc::nlmsghdr,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: DiagSockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagMessage {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: DiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// One SOCK_DIAG_BY_FAMILY dump (linux/inet_diag.h); empty on any error.
fn diag_dump(family: u8, protocol: u8, states: u32) -> Vec<DiagMessage> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    // SAFETY: a plain netlink socket, closed below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Vec::new();
    }
    let request = DiagRequest {
        header: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<DiagRequest>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        family,
        protocol,
        ext: 0,
        pad: 0,
        states,
        id: DiagSockId::default(),
    };
    let mut messages = Vec::new();
    // SAFETY: `request` is a plain repr(C) value of the size given; the
    // buffer is written by recv(2) up to its length and read only within
    // what recv returned, with unaligned reads.
    unsafe {
        let sent = libc::send(
            fd,
            (&raw const request).cast(),
            std::mem::size_of::<DiagRequest>(),
            0,
        );
        let mut buf = vec![0u8; 32 * 1024];
        'receive: loop {
            if sent <= 0 {
                break;
            }
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n <= 0 {
                break;
            }
            let mut at = 0usize;
            let header_len = std::mem::size_of::<libc::nlmsghdr>();
            while at + header_len <= n as usize {
                let header: libc::nlmsghdr = std::ptr::read_unaligned(buf.as_ptr().add(at).cast());
                let len = header.nlmsg_len as usize;
                if header.nlmsg_type == libc::NLMSG_DONE as u16
                    || header.nlmsg_type == libc::NLMSG_ERROR as u16
                    || len < header_len
                {
                    break 'receive;
                }
                if at + header_len + std::mem::size_of::<DiagMessage>() <= n as usize {
                    messages.push(std::ptr::read_unaligned(
                        buf.as_ptr().add(at + header_len).cast::<DiagMessage>(),
                    ));
                }
                at += (len + 3) & !3;
            }
        }
        libc::close(fd);
    }
    messages
}
