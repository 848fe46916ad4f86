//! The measurements. Each runs ours, the reference and every extra
//! implementation (`--impl`) in the same way, rotating which goes first
//! from one run to the next, and adds its numbers to [`Results`] under the
//! keys below.
//!
//! Every wait is bounded: a measurement that runs out of time is recorded
//! as capped (the reference's HUP storm) or reported and skipped. An extra
//! implementation that does not start with the options of a step (or lacks
//! `--restart`) gets "n/a" for that step's measurements instead of stopping
//! the run; for ours and the reference that is an error.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::http::{self, Outcome, Record};
use crate::instance::{INTERVAL, Instance, Setup, Who, monotonic_ns, read_stamps};
use crate::procfs;
use crate::results::Results;
use crate::wrk::{self, Mode};

pub const STARTUP: &str = "startup_ms";
pub const SWITCH_EXEC: &str = "switch_hup_to_exec_ms";
pub const SWITCH_FIRST: &str = "switch_first_request_ms";
pub const SWITCH_STATUS: &str = "switch_status_ms";
pub const CYCLE_EXEC: &str = "cycle0_hup_to_exec_ms";
pub const CYCLE_STATUS: &str = "cycle0_status_ms";
pub const CYCLE_LOST: &str = "cycle0_hups_lost";
pub const RESTART_WALL: &str = "restart_command_ms";
pub const RESTART_LAG: &str = "restart_after_old_gone_ms";
pub const RSS_START: &str = "rss_start_kib";
pub const RSS_AFTER: &str = "rss_after_restarts_kib";
pub const RSS_ANON_AFTER: &str = "rss_anon_after_restarts_kib";
pub const RSS_FILE_AFTER: &str = "rss_file_after_restarts_kib";
pub const RSS_MAPPINGS: &str = "rss_largest_mappings";
pub const PSS_AFTER: &str = "pss_after_restarts_kib";
pub const FDS_BEFORE: &str = "fds_before";
pub const FDS_AFTER: &str = "fds_after_restarts";
pub const CPU_PER_RESTART: &str = "cpu_ms_per_restart";
pub const SCHED_CPU_PER_RESTART: &str = "schedstat_cpu_ms_per_restart";
pub const LOST_HUPS: &str = "hups_lost";
pub const RESTARTS_DONE: &str = "restarts_done";
pub const TIME_PER_RESTART: &str = "wall_ms_per_restart";
pub const WAKEUPS: &str = "idle_wakeups";
pub const WAKEUPS_AUTO: &str = "idle_wakeups_auto_restart";
pub const STORM_SETTLE: &str = "storm_settle_ms";
pub const STORM_SETTLE_FROM_LAST: &str = "storm_settle_after_last_hup_ms";
pub const STORM_SPAWNS: &str = "storm_workers_execd";
pub const STORM_LAST_EXEC: &str = "storm_last_exec_after_last_hup_ms";
pub const STORM_TERM: &str = "storm_term_exit_ms";
pub const PACED_REQUESTS: &str = "paced_requests";
pub const PACED_SOCKET_ERRORS: &str = "paced_socket_errors";
pub const PACED_NON_2XX: &str = "paced_non_2xx";
pub const PACED_P99: &str = "paced_p99_ms";
pub const PACED_MAX: &str = "paced_max_ms";
pub const PACED_MAX_NEAR: &str = "paced_max_near_restart_ms";
pub const PACED_MAX_ELSEWHERE: &str = "paced_max_elsewhere_ms";
/// The readiness step, per boot time: see [`ready_key`].
pub const READY_HUP_TO_READY: &str = "hup_to_ready_ms";
pub const READY_HUP_TO_SIGNAL: &str = "hup_to_old_signalled_ms";
pub const READY_TO_SIGNAL: &str = "ready_to_old_signalled_ms";
pub const READY_SIGNALLED_EARLY: &str = "old_signalled_before_ready";
pub const READY_EARLY_BY: &str = "old_signalled_before_ready_by_ms";
pub const READY_RESTART: &str = "restart_command_ms";
pub const READY_RESTART_LAG: &str = "restart_command_after_status_ms";
/// The upgrade step: see [`upgrade`].
pub const UPG_WALL: &str = "upgrade_wall_ms";
pub const UPG_REQUESTS: &str = "upgrade_requests";
pub const UPG_FAILED: &str = "upgrade_failed_requests";
pub const UPG_NON_2XX: &str = "upgrade_non_2xx";
pub const UPG_REFUSED_FOR: &str = "upgrade_port_refused_ms";
pub const UPG_MAX_LATENCY: &str = "upgrade_max_latency_ms";
pub const UPG_PID_KEPT: &str = "upgrade_pid_kept";
pub const UPG_WORKER_KEPT: &str = "upgrade_worker_kept";
/// How each replaces its own binary (a note).
pub const UPG_HOW: &str = "upgrade_how";
/// How each waits for readiness (a note).
pub const READY_HOW: &str = "readiness_how";

/// The key of a readiness metric for a boot time (`ready_500_hup_to_ready_ms`).
pub fn ready_key(boot_ms: u64, what: &str) -> String {
    format!("ready_{boot_ms}_{what}")
}

/// The key of a wrk metric for a mode (`wrk_close_max_ms`).
pub fn wrk_key(mode: Mode, what: &str) -> String {
    format!("wrk_{}_{what}", mode.key())
}

/// How much of everything to do.
pub struct Plan {
    pub startup_runs: usize,
    pub switch_runs: usize,
    pub cycle_runs: usize,
    pub restart_runs: usize,
    pub load_runs: usize,
    pub load_duration: Duration,
    pub hup_period: Duration,
    pub paced_connections: usize,
    pub paced_period: Duration,
    pub footprint_runs: usize,
    pub restarts: usize,
    /// A footprint run stops after this long even if it has not done
    /// `restarts` restarts yet (an implementation that takes a second per
    /// restart at `--interval=0`).
    pub footprint_budget: Duration,
    pub idle_instances: usize,
    pub idle_duration: Duration,
    pub storm_runs: usize,
    pub storm_hups: usize,
    pub storm_cap: Duration,
    /// Readiness: HUPs per boot time, and `--restart` runs.
    pub ready_runs: usize,
    /// The worker's boot time (`BENCH_BOOT_MS`) of the readiness step,
    /// shorter than `--interval=1`.
    pub ready_boot_ms: u64,
    /// The second boot time, longer than `--interval=1`.
    pub ready_slow_boot_ms: u64,
    /// Upgrade: runs each.
    pub upgrade_runs: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            startup_runs: 10,
            switch_runs: 20,
            cycle_runs: 20,
            restart_runs: 3,
            load_runs: 2,
            load_duration: Duration::from_secs(8),
            hup_period: Duration::from_millis(1500),
            paced_connections: 4,
            paced_period: Duration::from_millis(2),
            footprint_runs: 3,
            restarts: 100,
            footprint_budget: Duration::from_secs(15),
            idle_instances: 3,
            idle_duration: Duration::from_secs(10),
            storm_runs: 3,
            storm_hups: 100,
            storm_cap: Duration::from_secs(4),
            ready_runs: 10,
            ready_boot_ms: 500,
            ready_slow_boot_ms: 1500,
            upgrade_runs: 10,
        }
    }

    /// A fast pass over everything, to check the harness itself.
    pub fn quick() -> Plan {
        Plan {
            startup_runs: 2,
            switch_runs: 5,
            cycle_runs: 5,
            restart_runs: 1,
            load_runs: 1,
            load_duration: Duration::from_secs(4),
            restarts: 20,
            footprint_runs: 1,
            footprint_budget: Duration::from_secs(5),
            idle_instances: 1,
            idle_duration: Duration::from_secs(3),
            storm_runs: 1,
            ready_runs: 3,
            upgrade_runs: 3,
            ..Plan::full()
        }
    }
}

/// How long an instance may take to serve its first generation.
const READY: Duration = Duration::from_secs(10);
/// How long a supervisor may take to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);
/// The storm counts as settled once one generation has stayed alone this
/// long (a coalesced HUP shows one generation for an `--interval`, before
/// the next one starts).
const STORM_QUIET: Duration = Duration::from_millis(1500);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sleep_ms(n: u64) {
    std::thread::sleep(Duration::from_millis(n));
}

/// Between two HUPs to the same instance at least this long passes after
/// the previous restart completed, so that a minimum spacing of restarts
/// inside a supervisor does not decide what is measured.
pub const PAUSE: Duration = Duration::from_millis(300);
/// How long a restart may take before it counts as not acted on.
const ACT: Duration = Duration::from_secs(1);

/// Marks `keys` "n/a" for `who`, and says so.
fn not_applicable(results: &mut Results, who: Who, keys: &[&str], reason: &str) {
    eprintln!("  {}: n/a: {reason}", who.name());
    results.not_applicable(keys, who, reason);
}

/// Why an instance did not come up, without anything that differs from one
/// run to the next (pids, ports).
fn start_failure(instance: &Instance, args: &[&str]) -> String {
    let args = args.join(" ");
    if instance.has_exited() {
        format!(
            "does not start with `{args}`: exited, saying \"{}\"",
            instance.log_head()
        )
    } else {
        format!("does not serve within {} s with `{args}`", READY.as_secs())
    }
}

/// Starts `who` and waits for its first generation. An extra
/// implementation that does not come up gets `keys` marked "n/a" and
/// `None`; for ours and the reference that is an error.
fn start_or_na(
    setup: &Setup,
    results: &mut Results,
    who: Who,
    tag: &str,
    args: &[&str],
    keys: &[&str],
) -> Result<Option<Instance>, String> {
    let instance = Instance::start(setup, who, tag, args)?;
    match instance.wait_ready(READY) {
        Ok(_) => Ok(Some(instance)),
        Err(e) if !who.is_extra() => Err(e),
        Err(_) => {
            not_applicable(results, who, keys, &start_failure(&instance, args));
            Ok(None)
        }
    }
}

/// From the fork of start_server to the first response of its worker.
pub fn startup(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<(), String> {
    let mut skip: Vec<Who> = Vec::new();
    for run in 0..plan.startup_runs {
        for who in Who::order(run) {
            if skip.contains(&who) {
                continue;
            }
            let instance = Instance::start(setup, who, &format!("startup-{run}"), &[INTERVAL])?;
            let deadline = instance.spawned_at + READY;
            let took = loop {
                match http::get(instance.port, Duration::from_secs(5)) {
                    Outcome::Ok { .. } => break Ok(instance.spawned_at.elapsed()),
                    // Not bound yet.
                    Outcome::Refused if Instant::now() < deadline && !instance.has_exited() => {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    other => break Err(format!("start-up of {}: {other:?}", who.name())),
                }
            };
            match took {
                Ok(took) => results.add(STARTUP, who, ms(took)),
                Err(e) if !who.is_extra() => return Err(e),
                Err(_) => {
                    let reason = start_failure(&instance, &[INTERVAL]);
                    not_applicable(results, who, &[STARTUP], &reason);
                    skip.push(who);
                }
            }
            instance.stop(GRACE);
        }
    }
    Ok(())
}

/// Waits until the instance's previous restart is over: one generation in
/// the status file, answering, the supervisor with no other child (the old
/// worker reaped), and [`PAUSE`] since `last_done`. Returns the generation.
fn settled(instance: &Instance, last_done: Option<Instant>) -> Result<u64, String> {
    let (generation, pid) = instance.wait_ready(READY)?;
    let deadline = Instant::now() + Duration::from_secs(6);
    while crate::procfs::children(instance.pid) != [pid] {
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: old workers still running: {:?}",
                instance.who.name(),
                crate::procfs::children(instance.pid)
            ));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    if let Some(done) = last_done {
        let now = Instant::now();
        if done + PAUSE > now {
            std::thread::sleep(done + PAUSE - now);
        }
    }
    Ok(generation)
}

/// Milliseconds from `hup_ns` (CLOCK_MONOTONIC, taken just before the
/// HUP) to the exec stamp of worker `pid`, waiting up to a second for the
/// stamp (a status file can list a worker before it has reached `main`).
fn exec_after(instance: &Instance, pid: i32, hup_ns: u64) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if let Some(stamp) = instance.exec_stamp_of(pid) {
            return Some((stamp as f64 - hup_ns as f64) / 1e6);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// SIGHUP, at `--interval=1` (and the fractional one): to the new worker's
/// exec, to the first response from the new generation, and to the status
/// file listing it alone; `switch_runs` HUPs each, each after the previous
/// restart is over and [`PAUSE`] later.
pub fn switchover(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<(), String> {
    let keys = [SWITCH_EXEC, SWITCH_FIRST, SWITCH_STATUS];
    let mut instances = Vec::new();
    for who in Who::compared().into_iter().chain(Who::fast()) {
        let args = [who.interval_arg()];
        if let Some(i) = start_or_na(setup, results, who, "switchover", &args, &keys)? {
            instances.push((i, None::<Instant>));
        }
    }
    let mut dropped: Vec<Who> = Vec::new();
    for run in 0..plan.switch_runs {
        for i in rotated(instances.len(), run) {
            let (instance, last_done) = &mut instances[i];
            if dropped.contains(&instance.who) {
                continue;
            }
            let before = match settled(instance, *last_done) {
                Ok(before) => before,
                Err(e) if instance.who.is_extra() => {
                    not_applicable(results, instance.who, &keys, &e);
                    dropped.push(instance.who);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let hup_ns = monotonic_ns();
            let start = Instant::now();
            instance.signal(libc::SIGHUP);
            let (mut first, mut alone) = (None, None);
            while (first.is_none() || alone.is_none()) && start.elapsed() < READY {
                if first.is_none()
                    && let Outcome::Ok { generation } =
                        http::get(instance.port, Duration::from_secs(2))
                    && generation > before
                {
                    first = Some(start.elapsed());
                }
                if alone.is_none()
                    && let Some(single) = instance.single_generation()
                    && single.0 > before
                {
                    alone = Some((start.elapsed(), single.1));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            *last_done = Some(Instant::now());
            let who = instance.who;
            match (first, alone) {
                (Some(first), Some((alone, pid))) => {
                    match exec_after(instance, pid, hup_ns) {
                        Some(exec) => results.add(SWITCH_EXEC, who, exec),
                        None => eprintln!("  {}: no exec stamp of worker {pid}", who.name()),
                    }
                    results.add(SWITCH_FIRST, who, ms(first));
                    results.add(SWITCH_STATUS, who, ms(alone));
                }
                _ => eprintln!("  switchover of {} did not complete", who.name()),
            }
        }
    }
    for (instance, _) in instances {
        instance.stop(GRACE);
    }
    Ok(())
}

/// The restart cycle at `--interval=0`: SIGHUP to the new worker's exec and
/// to the status file listing only the new generation, `cycle_runs` HUPs
/// each, each after the previous restart is over and [`PAUSE`] later. The
/// status file is polled every 0.1 ms and nothing else is asked of the
/// instance until the restart is over.
///
/// A HUP that brings no new generation within [`ACT`] is counted. The
/// reference is then woken with SIGALRM (see [`footprint`]) and its times
/// recorded as capped at [`ACT`]; any other gets up to 4 s more, its real
/// times recorded.
pub fn cycle(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<(), String> {
    let keys = [CYCLE_EXEC, CYCLE_STATUS, CYCLE_LOST];
    let args = ["--interval=0"];
    let mut instances = Vec::new();
    for who in Who::compared() {
        if let Some(i) = start_or_na(setup, results, who, "cycle", &args, &keys)? {
            instances.push((i, None::<Instant>, 0usize));
        }
    }
    let mut dropped: Vec<Who> = Vec::new();
    for run in 0..plan.cycle_runs {
        for i in rotated(instances.len(), run) {
            let (instance, last_done, lost) = &mut instances[i];
            let who = instance.who;
            if dropped.contains(&who) {
                continue;
            }
            let before = match settled(instance, *last_done) {
                Ok(before) => before,
                Err(e) if who.is_extra() => {
                    not_applicable(results, who, &keys, &e);
                    dropped.push(who);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let hup_ns = monotonic_ns();
            let start = Instant::now();
            instance.signal(libc::SIGHUP);
            let mut woken = false;
            let alone = loop {
                if let Some(single) = instance.single_generation()
                    && single.0 > before
                {
                    break Some((start.elapsed(), single.1));
                }
                if !woken && start.elapsed() >= ACT {
                    woken = true;
                    *lost += 1;
                    if who == Who::Reference {
                        instance.signal(libc::SIGALRM);
                    }
                }
                if start.elapsed() >= ACT + Duration::from_secs(4) {
                    break None;
                }
                std::thread::sleep(Duration::from_micros(100));
            };
            *last_done = Some(Instant::now());
            let Some((alone, pid)) = alone else {
                eprintln!("  {}: restart not done within 5 s", who.name());
                describe_stall(instance);
                if who.is_extra() {
                    let reason = "a restart at `--interval=0` not done within 5 s";
                    not_applicable(results, who, &keys, reason);
                    dropped.push(who);
                    continue;
                }
                return Err(format!("{}: restart cycle stalled", who.name()));
            };
            let exec = exec_after(instance, pid, hup_ns);
            if woken && who == Who::Reference {
                results.add_capped(CYCLE_STATUS, who, ms(ACT));
                results.add_capped(CYCLE_EXEC, who, ms(ACT));
            } else {
                results.add(CYCLE_STATUS, who, ms(alone));
                match exec {
                    Some(exec) => results.add(CYCLE_EXEC, who, exec),
                    None => eprintln!("  {}: no exec stamp of worker {pid}", who.name()),
                }
            }
        }
    }
    for (instance, _, lost) in instances {
        results.add(CYCLE_LOST, instance.who, lost as f64);
        instance.stop(GRACE);
    }
    Ok(())
}

/// `start_server --restart`: its wall time, and how long after the old
/// generation's exit it returns.
pub fn restart_command(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<(), String> {
    let keys = [RESTART_WALL, RESTART_LAG];
    let mut instances = Vec::new();
    for who in Who::compared().into_iter().chain(Who::fast()) {
        let args = [who.interval_arg()];
        if let Some(i) = start_or_na(setup, results, who, "restart", &args, &keys)? {
            instances.push(i);
        }
    }
    let mut skip: Vec<Who> = Vec::new();
    for run in 0..plan.restart_runs {
        for instance in rotated(instances.len(), run).map(|i| &instances[i]) {
            let who = instance.who;
            if skip.contains(&who) {
                continue;
            }
            let (_, old_pid) = instance.wait_ready(READY)?;
            let log_path = setup.log(&format!("restart-{run}-{}.client", who.name()));
            let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
            let start = Instant::now();
            let mut client = std::process::Command::new(setup.binary(who))
                .arg("--restart")
                .arg(format!("--pid-file={}", instance.pid_file.display()))
                .arg(format!("--status-file={}", instance.status_file.display()))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("--restart: {e}"))?;
            let mut gone = None;
            let done = loop {
                if gone.is_none() && procfs::has_exited(old_pid) {
                    gone = Some(start.elapsed());
                }
                match client.try_wait() {
                    Ok(Some(status)) => break Some((start.elapsed(), status)),
                    Ok(None) if start.elapsed() < Duration::from_secs(15) => {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    _ => break None,
                }
            };
            let gone = gone.or_else(|| procfs::has_exited(old_pid).then(|| start.elapsed()));
            match (done, gone) {
                (Some((done, status)), Some(gone)) if status.success() => {
                    results.add(RESTART_WALL, who, ms(done));
                    results.add(RESTART_LAG, who, ms(done.saturating_sub(gone)));
                }
                (Some((_, status)), gone) if who.is_extra() => {
                    let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let said = said.lines().rev().find(|l| !l.trim().is_empty());
                    let reason = format!(
                        "`--restart`: {status}, old worker gone: {}, saying \"{}\"",
                        gone.is_some(),
                        said.unwrap_or("").trim()
                    );
                    not_applicable(results, who, &keys, &reason);
                    skip.push(who);
                }
                (Some((_, status)), gone) => eprintln!(
                    "  --restart of {}: {status}, old worker gone: {}",
                    who.name(),
                    gone.is_some()
                ),
                (None, _) => {
                    let _ = client.kill();
                    let _ = client.wait();
                    eprintln!("  --restart of {} did not return in 15 s", who.name());
                    if who.is_extra() {
                        let reason = "`--restart` did not return in 15 s";
                        not_applicable(results, who, &keys, reason);
                        skip.push(who);
                    }
                }
            }
        }
    }
    for instance in instances {
        instance.stop(GRACE);
    }
    Ok(())
}

/// SIGHUP every `period` while `duration` lasts (measured from `start`);
/// the times sent, in seconds from `start`.
fn hup_every(
    instance: &Instance,
    period: Duration,
    duration: Duration,
    start: Instant,
) -> Vec<f64> {
    let mut sent = Vec::new();
    let mut next = start + period;
    while next < start + duration {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        instance.signal(libc::SIGHUP);
        sent.push((Instant::now() - start).as_secs_f64());
        next += period;
    }
    sent
}

/// How many restarts the instance went through (generations after the first).
fn restarts_done(instance: &Instance) -> u64 {
    instance
        .generations()
        .and_then(|g| g.last().map(|(generation, _)| generation - 1))
        .unwrap_or(0)
}

/// The names of the wrk metrics of a run with restarts.
const WRK_METRICS: [&str; 9] = [
    "rps", "connect", "read", "write", "timeout", "status", "p99_ms", "max_ms", "restarts",
];

/// wrk for `load_duration`, both modes, while a HUP comes every
/// `hup_period`; then, as a control, one run of each without any restart:
/// what the latency looks like when the supervisor does nothing at all
/// (ours and the reference only: with nothing to do, the supervisor is not
/// what such a run measures).
pub fn load(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<(), String> {
    let mut skip: Vec<Who> = Vec::new();
    for run in 0..plan.load_runs {
        // Which goes first rotates with the mode too, so that each gets
        // each position equally often.
        for (m, mode) in [Mode::Close, Mode::KeepAlive].into_iter().enumerate() {
            for who in Who::order(run + m) {
                if skip.contains(&who) {
                    continue;
                }
                let tag = format!("load-{}-{run}", mode.key());
                let s = match wrk_run(setup, plan, who, mode, &tag, true) {
                    Ok(s) => s,
                    Err(e) if who.is_extra() => {
                        let keys: Vec<String> = [Mode::Close, Mode::KeepAlive]
                            .into_iter()
                            .flat_map(|mode| WRK_METRICS.map(|w| wrk_key(mode, w)))
                            .collect();
                        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                        not_applicable(results, who, &keys, &e);
                        skip.push(who);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let values = [
                    s.summary.requests_per_second(),
                    s.summary.connect_errors as f64,
                    s.summary.read_errors as f64,
                    s.summary.write_errors as f64,
                    s.summary.timeouts as f64,
                    s.summary.status_errors as f64,
                    s.summary.p99_ms,
                    s.summary.max_ms,
                    s.restarts as f64,
                ];
                for (what, value) in WRK_METRICS.into_iter().zip(values) {
                    results.add(&wrk_key(mode, what), who, value);
                }
            }
        }
    }
    for (m, mode) in [Mode::Close, Mode::KeepAlive].into_iter().enumerate() {
        let pair = if m == 0 {
            [Who::Ours, Who::Reference]
        } else {
            [Who::Reference, Who::Ours]
        };
        for who in pair {
            let s = wrk_run(
                setup,
                plan,
                who,
                mode,
                &format!("control-{}", mode.key()),
                false,
            )?;
            results.add(&wrk_key(mode, "control_p99_ms"), who, s.summary.p99_ms);
            results.add(&wrk_key(mode, "control_max_ms"), who, s.summary.max_ms);
        }
    }
    Ok(())
}

struct WrkRun {
    summary: wrk::Summary,
    restarts: u64,
}

/// One wrk run against a fresh instance, with a HUP every `hup_period` if
/// `restart`.
fn wrk_run(
    setup: &Setup,
    plan: &Plan,
    who: Who,
    mode: Mode,
    tag: &str,
    restart: bool,
) -> Result<WrkRun, String> {
    let instance = Instance::start(setup, who, tag, &[INTERVAL])?;
    if instance.wait_ready(READY).is_err() {
        return Err(start_failure(&instance, &[INTERVAL]));
    }
    let wrk = wrk::start(
        setup,
        instance.port,
        mode,
        plan.load_duration,
        &format!("{tag}-{}", who.name()),
    )?;
    let hups = if restart {
        hup_every(
            &instance,
            plan.hup_period,
            plan.load_duration,
            Instant::now(),
        )
    } else {
        Vec::new()
    };
    let summary = wrk.finish();
    if restart {
        // The last restart completes an --interval after its HUP.
        sleep_ms(1200);
    }
    let restarts = restarts_done(&instance);
    instance.stop(GRACE);
    let s = summary?;
    eprintln!(
        "  {:9} {:26} {:8.0} req/s  errors c/r/w/t {}/{}/{}/{}  status {}  p99 {:.2} ms  max {:.2} ms  ({} HUPs, {restarts} restarts)",
        who.name(),
        mode.name(),
        s.requests_per_second(),
        s.connect_errors,
        s.read_errors,
        s.write_errors,
        s.timeouts,
        s.status_errors,
        s.p99_ms,
        s.max_ms,
        hups.len()
    );
    Ok(WrkRun {
        summary: s,
        restarts,
    })
}

/// Every request of one paced run, and when the HUPs went (seconds from
/// the start of the load).
pub struct PacedRun {
    pub who: Who,
    pub records: Vec<Record>,
    pub hups: Vec<f64>,
}

/// After a SIGHUP and after the old generation's TERM (an `--interval`
/// later), the window in which a request counts as "near a restart event".
const NEAR_EVENT: Duration = Duration::from_millis(100);

/// The paced client, `load_runs` runs each, every request recorded. Returns
/// the first run of each start_server: the data of the latency picture.
pub fn paced(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<Vec<PacedRun>, String> {
    let keys = [
        PACED_REQUESTS,
        PACED_SOCKET_ERRORS,
        PACED_NON_2XX,
        PACED_P99,
        PACED_MAX,
        PACED_MAX_NEAR,
        PACED_MAX_ELSEWHERE,
    ];
    let mut picture = Vec::new();
    let mut skip: Vec<Who> = Vec::new();
    for run in 0..plan.load_runs {
        for who in Who::order(run) {
            if skip.contains(&who) {
                continue;
            }
            let tag = format!("paced-{run}");
            let Some(instance) = start_or_na(setup, results, who, &tag, &[INTERVAL], &keys)? else {
                skip.push(who);
                continue;
            };
            let start = Instant::now();
            let (records, hups) = std::thread::scope(|scope| {
                let port = instance.port;
                let load = scope.spawn(move || {
                    http::paced_load(
                        port,
                        plan.paced_connections,
                        plan.paced_period,
                        plan.load_duration,
                        start,
                    )
                });
                let hups = hup_every(&instance, plan.hup_period, plan.load_duration, start);
                (load.join().unwrap_or_default(), hups)
            });
            sleep_ms(1200);
            instance.stop(GRACE);
            record_paced(results, who, &records, &hups);
            // The picture: the first run of ours and of the reference.
            if run == 0 && matches!(who, Who::Ours | Who::Reference) {
                picture.push(PacedRun { who, records, hups });
            }
        }
    }
    // Ours first, whatever order they ran in.
    picture.sort_by_key(|p| p.who);
    Ok(picture)
}

fn record_paced(results: &mut Results, who: Who, records: &[Record], hups: &[f64]) {
    let percentile = |mut v: Vec<f64>, p: usize| {
        v.sort_by(f64::total_cmp);
        v.get((v.len() * p / 100).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let latencies: Vec<f64> = records.iter().map(|r| ms(r.latency)).collect();
    let p99 = percentile(latencies.clone(), 99);
    let max = percentile(latencies, 100);
    // Restart events: each HUP, and the old generation's TERM an
    // --interval (1 s) later. A request is near one when it was in flight
    // during the NEAR_EVENT after it.
    let events: Vec<f64> = hups.iter().flat_map(|&h| [h, h + 1.0]).collect();
    let near = |r: &Record| {
        let (begin, end) = (r.start.as_secs_f64(), (r.start + r.latency).as_secs_f64());
        events
            .iter()
            .any(|&e| begin < e + NEAR_EVENT.as_secs_f64() && end > e)
    };
    let max_where = |want: bool| {
        records
            .iter()
            .filter(|r| near(r) == want)
            .map(|r| ms(r.latency))
            .fold(0.0, f64::max)
    };
    let socket_errors = records
        .iter()
        .filter(|r| r.outcome.is_socket_error())
        .count();
    let non_2xx = records
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Status(_)))
        .count();
    eprintln!(
        "  {:9} {} requests, {socket_errors} socket errors, {non_2xx} non-2xx, p99 {p99:.2} ms, max {max:.2} ms (near restart events {:.2} ms, elsewhere {:.2} ms)",
        who.name(),
        records.len(),
        max_where(true),
        max_where(false)
    );
    results.add(PACED_REQUESTS, who, records.len() as f64);
    results.add(PACED_SOCKET_ERRORS, who, socket_errors as f64);
    results.add(PACED_NON_2XX, who, non_2xx as f64);
    results.add(PACED_P99, who, p99);
    results.add(PACED_MAX, who, max);
    results.add(PACED_MAX_NEAR, who, max_where(true));
    results.add(PACED_MAX_ELSEWHERE, who, max_where(false));
}

/// RSS, descriptors and CPU time of the supervisor around `restarts`
/// restarts (or as many as fit in `footprint_budget`), each waited for (HUP, then the new generation alone in the
/// status file and answering). `--interval=0` for all, so that the restarts
/// go as fast as each supervisor allows.
///
/// The reference sometimes does not act on a HUP sent right after a restart
/// completed: Perl defers signal handlers to its next safe point, and a
/// signal that lands between its last check and the wait(2) it blocks in is
/// only handled when the next signal or child exit wakes it. A HUP that
/// brings no new generation within a second counts as lost (for every
/// implementation); the harness then wakes the reference with SIGALRM
/// (which it catches and ignores) and waits up to 4 s more.
pub fn footprint(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<(), String> {
    let keys = [
        RSS_START,
        RSS_AFTER,
        RSS_ANON_AFTER,
        RSS_FILE_AFTER,
        RSS_MAPPINGS,
        PSS_AFTER,
        FDS_BEFORE,
        FDS_AFTER,
        CPU_PER_RESTART,
        SCHED_CPU_PER_RESTART,
        RESTARTS_DONE,
        TIME_PER_RESTART,
        LOST_HUPS,
    ];
    let mut skip: Vec<Who> = Vec::new();
    for run in 0..plan.footprint_runs {
        for who in Who::order(run) {
            if skip.contains(&who) {
                continue;
            }
            let tag = format!("footprint-{run}");
            let args = ["--interval=0"];
            let Some(instance) = start_or_na(setup, results, who, &tag, &args, &keys)? else {
                skip.push(who);
                continue;
            };
            sleep_ms(300);
            let pid = instance.pid;
            let io = |e: std::io::Error| format!("/proc/{pid}: {e}");
            let before = procfs::status(pid).map_err(io)?;
            let fds_before = procfs::fd_count(pid).map_err(io)?;
            let cpu_before = procfs::cpu_seconds(pid).map_err(io)?;
            let sched_before = procfs::cpu_seconds_precise(pid).map_err(io)?;
            let mut each = Vec::with_capacity(plan.restarts);
            let mut lost = 0;
            let mut stalled = false;
            let began = Instant::now();
            for _ in 0..plan.restarts {
                if began.elapsed() >= plan.footprint_budget {
                    eprintln!(
                        "  {}: {} restarts done in the {} s of a run",
                        who.name(),
                        each.len(),
                        plan.footprint_budget.as_secs()
                    );
                    break;
                }
                let Some((generation, _)) = instance.single_generation() else {
                    stalled = true;
                    break;
                };
                let start = Instant::now();
                instance.signal(libc::SIGHUP);
                let mut done = instance.wait_generation_after(generation, ACT);
                if done.is_err() {
                    lost += 1;
                    if who == Who::Reference {
                        instance.signal(libc::SIGALRM);
                    }
                    done = instance.wait_generation_after(generation, Duration::from_secs(4));
                }
                if let Err(e) = done {
                    eprintln!("  {e}");
                    describe_stall(&instance);
                    stalled = true;
                    break;
                }
                each.push(ms(start.elapsed()));
            }
            sleep_ms(300);
            let after = procfs::status(pid).map_err(io)?;
            let mappings = procfs::rss_by_mapping(pid).map_err(io)?;
            let largest: Vec<String> = mappings
                .iter()
                .take(5)
                .map(|(name, kib)| format!("{name} {kib}"))
                .collect();
            results.note(RSS_MAPPINGS, who, largest.join(", "));
            let fds_after = procfs::fd_count(pid).map_err(io)?;
            let cpu_after = procfs::cpu_seconds(pid).map_err(io)?;
            let sched_after = procfs::cpu_seconds_precise(pid).map_err(io)?;
            instance.stop(GRACE);
            if stalled || each.is_empty() {
                let reason = format!(
                    "a restart at `--interval=0` stalled after {} of {}",
                    each.len(),
                    plan.restarts
                );
                if who.is_extra() {
                    not_applicable(results, who, &keys, &reason);
                    skip.push(who);
                } else {
                    eprintln!("  {}: {reason}", who.name());
                }
                continue;
            }
            let n = each.len() as f64;
            results.add(RESTARTS_DONE, who, n);
            each.sort_by(f64::total_cmp);
            results.add(RSS_START, who, before.rss_kib as f64);
            results.add(RSS_AFTER, who, after.rss_kib as f64);
            results.add(RSS_ANON_AFTER, who, after.rss_anon_kib as f64);
            results.add(RSS_FILE_AFTER, who, after.rss_file_kib as f64);
            results.add(PSS_AFTER, who, after.pss_kib as f64);
            results.add(FDS_BEFORE, who, fds_before as f64);
            results.add(FDS_AFTER, who, fds_after as f64);
            results.add(CPU_PER_RESTART, who, (cpu_after - cpu_before) * 1000.0 / n);
            results.add(
                SCHED_CPU_PER_RESTART,
                who,
                (sched_after - sched_before) * 1000.0 / n,
            );
            results.add(TIME_PER_RESTART, who, each[each.len() / 2]);
            results.add(LOST_HUPS, who, lost as f64);
        }
    }
    Ok(())
}

/// What the supervisor and its children are doing, for a restart that did
/// not complete.
fn describe_stall(instance: &Instance) {
    eprintln!(
        "  status file: {:?}\n  supervisor {}: {}",
        std::fs::read_to_string(&instance.status_file).unwrap_or_default(),
        instance.pid,
        procfs::signal_state(instance.pid)
    );
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", instance.pid))
        .unwrap_or_default();
    for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
        eprintln!("  child {child}: {}", procfs::signal_state(child));
    }
}

/// Voluntary context switches of idle supervisors (every instance at once:
/// they are idle), without and with `--enable-auto-restart`.
pub fn idle(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<(), String> {
    let mut instances = Vec::new();
    for i in 0..plan.idle_instances {
        for who in Who::order(i) {
            for auto in [false, true] {
                let args: &[&str] = if auto {
                    &[INTERVAL, "--enable-auto-restart"]
                } else {
                    &[INTERVAL]
                };
                let tag = format!("idle-{i}{}", if auto { "-auto" } else { "" });
                instances.push((Instance::start(setup, who, &tag, args)?, auto, args));
            }
        }
    }
    let mut ready = Vec::new();
    for (instance, auto, args) in instances {
        match instance.wait_ready(READY) {
            Ok(_) => ready.push((instance, auto)),
            Err(e) if !instance.who.is_extra() => return Err(e),
            Err(_) => {
                let key = if auto { WAKEUPS_AUTO } else { WAKEUPS };
                let reason = start_failure(&instance, args);
                not_applicable(results, instance.who, &[key], &reason);
            }
        }
    }
    let instances = ready;
    sleep_ms(1000);
    let switches = |instances: &[(Instance, bool)]| {
        instances
            .iter()
            .map(|(i, _)| procfs::status(i.pid).map(|s| s.voluntary_switches))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("/proc: {e}"))
    };
    let before = switches(&instances)?;
    std::thread::sleep(plan.idle_duration);
    let after = switches(&instances)?;
    for (((instance, auto), b), a) in instances.iter().zip(before).zip(after) {
        let key = if *auto { WAKEUPS_AUTO } else { WAKEUPS };
        results.add(key, instance.who, (a - b) as f64);
    }
    for (instance, _) in instances {
        instance.stop(GRACE);
    }
    Ok(())
}

/// When a storm's HUPs went.
struct Storm {
    /// CLOCK_MONOTONIC just before the first and the last HUP.
    first_ns: u64,
    last_ns: u64,
    /// The last HUP, from the `start` of the storm.
    last: Duration,
}

/// Sends `n` HUPs 1 ms apart, on a fixed schedule from `start` (so that
/// sleeping late does not stretch the storm).
fn hup_storm(instance: &Instance, n: usize, start: Instant) -> Storm {
    let (mut first_ns, mut last_ns, mut last) = (0, 0, Duration::ZERO);
    for i in 0..n {
        let due = start + Duration::from_millis(i as u64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        last_ns = monotonic_ns();
        last = start.elapsed();
        if i == 0 {
            first_ns = last_ns;
        }
        instance.signal(libc::SIGHUP);
    }
    Storm {
        first_ns,
        last_ns,
        last,
    }
}

/// `storm_hups` HUPs 1 ms apart: the time until one generation remains for
/// good, how many workers were exec'd from the first HUP on (their exec
/// stamps) and when the last of them was, against the last HUP; then, in
/// a fresh instance, a SIGTERM right after such a storm.
pub fn storm(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<(), String> {
    let keys = [
        STORM_SETTLE,
        STORM_SETTLE_FROM_LAST,
        STORM_SPAWNS,
        STORM_LAST_EXEC,
        STORM_TERM,
    ];
    let mut skip: Vec<Who> = Vec::new();
    for run in 0..plan.storm_runs {
        for who in Who::order(run).into_iter().chain(Who::fast()) {
            if skip.contains(&who) {
                continue;
            }
            let tag = format!("storm-{run}");
            let args = [who.interval_arg()];
            let Some(instance) = start_or_na(setup, results, who, &tag, &args, &keys)? else {
                skip.push(who);
                continue;
            };
            let (before, _) = instance.wait_ready(READY)?;
            let start = Instant::now();
            let storm = hup_storm(&instance, plan.storm_hups, start);
            // Since when the status file has listed this one new generation.
            let mut alone_since: Option<(u64, Duration)> = None;
            let settled = loop {
                let now = start.elapsed();
                let generations = instance.generations().unwrap_or_default();
                match generations.as_slice() {
                    [(generation, _)] if *generation > before => {
                        let (_, since) = match alone_since {
                            Some((g, since)) if g == *generation => (g, since),
                            _ => *alone_since.insert((*generation, now)),
                        };
                        if now - since >= STORM_QUIET {
                            break Some(since);
                        }
                    }
                    _ => alone_since = None,
                }
                if now >= plan.storm_cap + STORM_QUIET {
                    break None;
                }
                std::thread::sleep(Duration::from_micros(500));
            };
            let cap = ms(plan.storm_cap + STORM_QUIET);
            let spawns: Vec<u64> = instance
                .exec_stamps()
                .into_iter()
                .map(|(_, nanos)| nanos)
                .filter(|&nanos| nanos >= storm.first_ns)
                .collect();
            match settled {
                Some(at) => {
                    results.add(STORM_SETTLE, who, ms(at));
                    results.add(
                        STORM_SETTLE_FROM_LAST,
                        who,
                        ms(at.saturating_sub(storm.last)),
                    );
                    results.add(STORM_SPAWNS, who, spawns.len() as f64);
                }
                None => {
                    results.add_capped(STORM_SETTLE, who, cap);
                    results.add_capped(STORM_SETTLE_FROM_LAST, who, cap - ms(storm.last));
                    // Still going: at least this many.
                    results.add_capped(STORM_SPAWNS, who, spawns.len() as f64);
                }
            }
            if let Some(&last_exec) = spawns.iter().max() {
                let after = (last_exec as f64 - storm.last_ns as f64) / 1e6;
                results.add(STORM_LAST_EXEC, who, after);
            }
            instance.stop(Duration::from_secs(2));

            let tag = format!("storm-term-{run}");
            let Some(mut instance) = start_or_na(setup, results, who, &tag, &args, &keys)? else {
                skip.push(who);
                continue;
            };
            hup_storm(&instance, plan.storm_hups, Instant::now());
            instance.signal(libc::SIGTERM);
            let limit = Duration::from_secs(1);
            match instance.wait_exit(limit) {
                Some(took) => results.add(STORM_TERM, who, ms(took)),
                None => results.add_capped(STORM_TERM, who, ms(limit)),
            }
            drop(instance);
        }
    }
    Ok(())
}

/// The options of the readiness step: ours waits for `READY=1`, the others
/// cannot be asked to (the reference has no such option) and run with
/// `--interval=1` alone.
fn ready_args(who: Who) -> &'static [&'static str] {
    if who == Who::Ours {
        &["--notify-ready", INTERVAL]
    } else {
        &[INTERVAL]
    }
}

/// One readiness instance: its ready and signal stamp files.
struct ReadyInstance {
    instance: Instance,
    ready_file: PathBuf,
    signal_file: PathBuf,
    last_done: Option<Instant>,
}

/// Readiness: a worker that boots for `ready_boot_ms` (then for
/// `ready_slow_boot_ms`) before it accepts and sends `READY=1`. For each,
/// `ready_runs` SIGHUPs (each after the previous restart is over and
/// [`PAUSE`] later): SIGHUP → the new worker's ready stamp, SIGHUP → the old
/// worker's signal stamp, and the ready stamp → the signal stamp when the
/// old worker was signalled after the new one was ready, or by how much
/// before it when not. Then, at the first boot time, `ready_runs` runs of
/// `start_server --restart`: its wall time.
pub fn readiness(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<(), String> {
    for who in Who::compared() {
        let how = if who == Who::Ours {
            "waits for READY=1 (`--notify-ready --interval=1`)".to_string()
        } else {
            "`--interval=1` only: signals the old worker an interval after the fork, ready or not"
                .to_string()
        };
        results.note(READY_HOW, who, how);
    }
    for boot in [plan.ready_boot_ms, plan.ready_slow_boot_ms] {
        let mut keys: Vec<String> = [
            READY_HUP_TO_READY,
            READY_HUP_TO_SIGNAL,
            READY_TO_SIGNAL,
            READY_SIGNALLED_EARLY,
            READY_EARLY_BY,
        ]
        .iter()
        .map(|k| ready_key(boot, k))
        .collect();
        if boot == plan.ready_boot_ms {
            keys.push(READY_RESTART.to_string());
            keys.push(READY_RESTART_LAG.to_string());
        }
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut instances = Vec::new();
        for who in Who::compared() {
            let tag = format!("ready{boot}");
            let name = format!("{tag}-{}", who.name());
            let ready_file = setup.raw.join(format!("{name}.ready"));
            let signal_file = setup.raw.join(format!("{name}.signals"));
            let _ = std::fs::remove_file(&ready_file);
            let _ = std::fs::remove_file(&signal_file);
            let boot_ms = PathBuf::from(boot.to_string());
            let env = [
                ("BENCH_BOOT_MS", boot_ms.as_path()),
                ("BENCH_READY_STAMP", ready_file.as_path()),
                ("BENCH_SIGNAL_STAMP", signal_file.as_path()),
            ];
            let args = ready_args(who);
            let instance = Instance::start_env(setup, who, &tag, args, &env)?;
            match instance.wait_ready(READY) {
                Ok(_) => instances.push(ReadyInstance {
                    instance,
                    ready_file,
                    signal_file,
                    last_done: None,
                }),
                Err(e) if !who.is_extra() => return Err(e),
                Err(_) => {
                    not_applicable(results, who, &keys, &start_failure(&instance, args));
                }
            }
        }
        let mut dropped: Vec<Who> = Vec::new();
        for run in 0..plan.ready_runs {
            for i in rotated(instances.len(), run) {
                let r = &mut instances[i];
                let who = r.instance.who;
                if dropped.contains(&who) {
                    continue;
                }
                match ready_hup(r, boot) {
                    Ok(Some(m)) => {
                        results.add(&ready_key(boot, READY_HUP_TO_READY), who, m.hup_to_ready);
                        results.add(&ready_key(boot, READY_HUP_TO_SIGNAL), who, m.hup_to_signal);
                        let after = m.hup_to_signal - m.hup_to_ready;
                        let early = ready_key(boot, READY_SIGNALLED_EARLY);
                        if after >= 0.0 {
                            results.add(&ready_key(boot, READY_TO_SIGNAL), who, after);
                            results.add(&early, who, 0.0);
                        } else {
                            results.add(&ready_key(boot, READY_EARLY_BY), who, -after);
                            results.add(&early, who, 1.0);
                        }
                    }
                    Ok(None) => eprintln!(
                        "  {}: boot {boot} ms: no ready or no signal stamp within {} s",
                        who.name(),
                        (boot / 1000) + 6
                    ),
                    Err(e) if who.is_extra() => {
                        not_applicable(results, who, &keys, &e);
                        dropped.push(who);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if boot == plan.ready_boot_ms {
            for run in 0..plan.ready_runs {
                for i in rotated(instances.len(), run) {
                    let r = &mut instances[i];
                    let who = r.instance.who;
                    if dropped.contains(&who) {
                        continue;
                    }
                    let tag = format!("ready-restart-{run}-{}.client", who.name());
                    let outcome = settled(&r.instance, r.last_done)
                        .and_then(|before| restart_client(setup, &r.instance, &tag, before));
                    r.last_done = Some(Instant::now());
                    match outcome {
                        Ok((took, listed)) => {
                            results.add(READY_RESTART, who, ms(took));
                            if let Some(listed) = listed {
                                let lag = ms(took.saturating_sub(listed));
                                results.add(READY_RESTART_LAG, who, lag);
                            }
                        }
                        Err(e) if who.is_extra() => {
                            let keys = [READY_RESTART, READY_RESTART_LAG];
                            not_applicable(results, who, &keys, &e);
                            dropped.push(who);
                        }
                        Err(e) => eprintln!("  {}: {e}", who.name()),
                    }
                }
            }
        }
        for r in instances {
            r.instance.stop(GRACE);
        }
    }
    Ok(())
}

/// What one SIGHUP of the readiness step measured, in ms.
struct ReadyHup {
    hup_to_ready: f64,
    hup_to_signal: f64,
}

/// One SIGHUP once the previous restart is over: when the new worker was
/// about to send `READY=1` and when the old one received its TERM, from the
/// stamps (CLOCK_MONOTONIC) against the clock taken just before the HUP.
/// `None` when the stamps do not come within boot + 6 s.
fn ready_hup(r: &mut ReadyInstance, boot_ms: u64) -> Result<Option<ReadyHup>, String> {
    settled(&r.instance, r.last_done)?;
    let (_, old_pid) = r
        .instance
        .single_generation()
        .ok_or_else(|| format!("{}: status file changed", r.instance.who.name()))?;
    let hup_ns = monotonic_ns();
    r.instance.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_millis(boot_ms) + Duration::from_secs(6);
    let found = loop {
        let ready = stamp_where(&r.ready_file, |pid, ns| pid != old_pid && ns >= hup_ns);
        let signal = stamp_where(&r.signal_file, |pid, _| pid == old_pid);
        if let (Some(ready), Some(signal)) = (ready, signal) {
            break Some((ready, signal));
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_micros(500));
    };
    r.last_done = Some(Instant::now());
    Ok(found.map(|(ready, signal)| ReadyHup {
        hup_to_ready: (ready as f64 - hup_ns as f64) / 1e6,
        hup_to_signal: (signal as f64 - hup_ns as f64) / 1e6,
    }))
}

/// The time of the first stamp in `path` that `wanted` accepts.
fn stamp_where(path: &Path, wanted: impl Fn(i32, u64) -> bool) -> Option<u64> {
    read_stamps(path)
        .into_iter()
        .find_map(|(pid, ns)| wanted(pid, ns).then_some(ns))
}

/// Runs `start_server --restart` against `instance` (its stderr to the log
/// `tag`): its wall time and when (polled every 0.5 ms) the status file
/// first listed only a generation newer than `before`, or why it failed.
fn restart_client(
    setup: &Setup,
    instance: &Instance,
    tag: &str,
    before: u64,
) -> Result<(Duration, Option<Duration>), String> {
    let log_path = setup.log(tag);
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut client = std::process::Command::new(setup.binary(instance.who))
        .arg("--restart")
        .arg(format!("--pid-file={}", instance.pid_file.display()))
        .arg(format!("--status-file={}", instance.status_file.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("--restart: {e}"))?;
    let mut listed = None;
    loop {
        if listed.is_none() && instance.single_generation().is_some_and(|g| g.0 > before) {
            listed = Some(start.elapsed());
        }
        match client.try_wait() {
            Ok(Some(status)) if status.success() => return Ok((start.elapsed(), listed)),
            Ok(Some(status)) => {
                let said = std::fs::read_to_string(&log_path).unwrap_or_default();
                let said = said.lines().rev().find(|l| !l.trim().is_empty());
                return Err(format!(
                    "`--restart`: {status}, saying \"{}\"",
                    said.unwrap_or("").trim()
                ));
            }
            Ok(None) if start.elapsed() < Duration::from_secs(15) => {
                std::thread::sleep(Duration::from_micros(500));
            }
            _ => {
                let _ = client.kill();
                let _ = client.wait();
                return Err("`--restart` did not return in 15 s".to_string());
            }
        }
    }
}

/// The indices `0..n`, starting at `run % n`: each run starts with the
/// next implementation, so that none always goes first.
fn rotated(n: usize, run: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (i + run) % n)
}

/// How long the client goes on before and after the replacement.
const UPGRADE_MARGIN: Duration = Duration::from_millis(100);

/// Replacing start_server's own binary while a client requests in a tight
/// loop (a new connection per request). Ours: `start_server --upgrade
/// --pid-file=FILE` with the same binary, which re-executes it in place.
/// The others have no such thing: `start_server --stop --pid-file=FILE`,
/// then a new start_server with the same options, until it answers.
/// Per run: the wall time, the requests that failed or were not 2xx, how
/// long the port refused connections (first failure → next success), the
/// longest request, and whether the supervisor's and the worker's pids
/// stayed. The client runs from [`UPGRADE_MARGIN`] before the command to
/// [`UPGRADE_MARGIN`] after it is over; every request of a run goes to
/// `raw/upgrade-RUN-WHO.requests`.
pub fn upgrade(setup: &Setup, plan: &Plan, results: &mut Results) -> Result<(), String> {
    let keys = [
        UPG_WALL,
        UPG_REQUESTS,
        UPG_FAILED,
        UPG_NON_2XX,
        UPG_REFUSED_FOR,
        UPG_MAX_LATENCY,
        UPG_PID_KEPT,
        UPG_WORKER_KEPT,
    ];
    for who in Who::compared() {
        let how = if who == Who::Ours {
            "`start_server --upgrade --pid-file=FILE` (the same binary)"
        } else {
            "`start_server --stop --pid-file=FILE`, then a new start_server with the same options"
        };
        results.note(UPG_HOW, who, how.to_string());
    }
    let mut skip: Vec<Who> = Vec::new();
    for run in 0..plan.upgrade_runs {
        for who in Who::order(run) {
            if skip.contains(&who) {
                continue;
            }
            let tag = format!("upgrade-{run}");
            let Some(instance) = start_or_na(setup, results, who, &tag, &[INTERVAL], &keys)? else {
                skip.push(who);
                continue;
            };
            match upgrade_run(setup, instance, run) {
                Ok(m) => {
                    let r = &m.requests;
                    results.add(UPG_WALL, who, ms(m.wall));
                    results.add(UPG_REQUESTS, who, r.requests as f64);
                    results.add(UPG_FAILED, who, r.failed as f64);
                    results.add(UPG_NON_2XX, who, r.non_2xx as f64);
                    results.add(UPG_REFUSED_FOR, who, ms(r.refused_for));
                    results.add(UPG_MAX_LATENCY, who, ms(r.max_latency));
                    results.add(UPG_PID_KEPT, who, f64::from(u8::from(m.pid_kept)));
                    results.add(UPG_WORKER_KEPT, who, f64::from(u8::from(m.worker_kept)));
                }
                Err(e) if who.is_extra() => {
                    not_applicable(results, who, &keys, &e);
                    skip.push(who);
                }
                Err(e) => return Err(format!("{}: {e}", who.name())),
            }
        }
    }
    Ok(())
}

/// What one run of the upgrade step measured.
struct UpgradeRun {
    wall: Duration,
    requests: RequestSummary,
    pid_kept: bool,
    worker_kept: bool,
}

/// What the requests of one client run came to.
#[derive(Debug, PartialEq)]
struct RequestSummary {
    requests: usize,
    /// No connection, reset, cut short, timed out.
    failed: usize,
    non_2xx: usize,
    /// The sum of the spans from a failed request's start to the start of
    /// the next answered one (or to the end of the last request, when none
    /// was answered after it).
    refused_for: Duration,
    max_latency: Duration,
}

impl RequestSummary {
    fn of(records: &[Record]) -> RequestSummary {
        let failed = records.iter().filter(|r| r.outcome.is_socket_error());
        let non_2xx = records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Status(_)));
        let mut refused_for = Duration::ZERO;
        let mut first_failure: Option<Duration> = None;
        for r in records {
            match (r.outcome, first_failure) {
                (o, None) if o.is_socket_error() => first_failure = Some(r.start),
                (Outcome::Ok { .. }, Some(f)) => {
                    refused_for += r.start.saturating_sub(f);
                    first_failure = None;
                }
                _ => {}
            }
        }
        if let (Some(f), Some(last)) = (first_failure, records.last()) {
            refused_for += (last.start + last.latency).saturating_sub(f);
        }
        RequestSummary {
            requests: records.len(),
            failed: failed.count(),
            non_2xx: non_2xx.count(),
            refused_for,
            max_latency: records.iter().map(|r| r.latency).max().unwrap_or_default(),
        }
    }
}

/// One replacement of `instance`'s binary under a tight request loop; the
/// instance (or the one started in its place) is stopped before returning.
fn upgrade_run(setup: &Setup, instance: Instance, run: usize) -> Result<UpgradeRun, String> {
    let who = instance.who;
    let (generation, worker) = instance.wait_ready(READY)?;
    let supervisor = instance.pid;
    let port = instance.port;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let start = Instant::now();
    let (outcome, records) = std::thread::scope(|scope| {
        let client = scope.spawn(|| tight_loop(port, start, &stop));
        std::thread::sleep(UPGRADE_MARGIN);
        let outcome = if who == Who::Ours {
            upgrade_in_place(setup, &instance, run).map(|wall| (wall, instance))
        } else {
            stop_and_start(setup, instance, run)
        };
        std::thread::sleep(UPGRADE_MARGIN);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let records = client.join().unwrap_or_default();
        (outcome, records)
    });
    let (wall, instance) = outcome?;
    write_requests(setup, &format!("upgrade-{run}-{}", who.name()), &records);
    let summary = RequestSummary::of(&records);
    let now = instance.single_generation();
    let pid_file = std::fs::read_to_string(&instance.pid_file).unwrap_or_default();
    let pid_kept = instance.pid == supervisor
        && !instance.has_exited()
        && pid_file.trim() == supervisor.to_string();
    let worker_kept = now == Some((generation, worker));
    instance.stop(GRACE);
    Ok(UpgradeRun {
        wall,
        requests: summary,
        pid_kept,
        worker_kept,
    })
}

/// Requests on a new connection each, one after the other, until `stop`
/// (or 60 s, or a million requests).
fn tight_loop(port: u16, start: Instant, stop: &std::sync::atomic::AtomicBool) -> Vec<Record> {
    let mut records = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst)
        && start.elapsed() < Duration::from_secs(60)
        && records.len() < 1_000_000
    {
        let began = Instant::now();
        let outcome = http::get(port, Duration::from_secs(5));
        records.push(Record {
            start: began - start,
            latency: began.elapsed(),
            outcome,
        });
    }
    records
}

/// `start_server --upgrade --pid-file=FILE`: its wall time, once it said
/// the upgrade was done (exit 0, and the log has `upgraded from`).
fn upgrade_in_place(setup: &Setup, instance: &Instance, run: usize) -> Result<Duration, String> {
    let tag = format!("upgrade-{run}-{}.client", instance.who.name());
    let (took, status) = run_client(setup, instance, &tag, "--upgrade")?;
    if !status.success() {
        return Err(format!(
            "`--upgrade`: {status}, saying \"{}\"",
            last_line(&setup.log(&tag))
        ));
    }
    let log = std::fs::read_to_string(&instance.log).unwrap_or_default();
    if !log.contains("upgraded from") {
        return Err("`--upgrade` returned but the log has no \"upgraded from\"".to_string());
    }
    Ok(took)
}

/// `start_server --stop --pid-file=FILE`, then the same start_server again
/// on the same port: the time until its worker answers, and the new
/// instance.
fn stop_and_start(
    setup: &Setup,
    mut instance: Instance,
    run: usize,
) -> Result<(Duration, Instance), String> {
    let start = Instant::now();
    let tag = format!("upgrade-{run}-{}.client", instance.who.name());
    let (_, status) = run_client(setup, &instance, &tag, "--stop")?;
    if !status.success() {
        return Err(format!(
            "`--stop`: {status}, saying \"{}\"",
            last_line(&setup.log(&tag))
        ));
    }
    if instance.wait_exit(GRACE).is_none() {
        return Err(format!("still running {GRACE:?} after `--stop`"));
    }
    let again = instance.start_again(setup)?;
    // The first answer, not the status file: the reference writes that
    // only once the worker has lived for an `--interval`.
    let deadline = Instant::now() + READY;
    loop {
        if let Outcome::Ok { .. } = http::get(again.port, Duration::from_secs(2)) {
            return Ok((start.elapsed(), again));
        }
        if again.has_exited() || Instant::now() >= deadline {
            return Err(start_failure(&again, &[INTERVAL]));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs `start_server MODE --pid-file=FILE` against `instance` (stdout and
/// stderr to the log `tag`), for at most 15 s: its wall time and status.
fn run_client(
    setup: &Setup,
    instance: &Instance,
    tag: &str,
    mode: &str,
) -> Result<(Duration, std::process::ExitStatus), String> {
    let log = std::fs::File::create(setup.log(tag)).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut client = std::process::Command::new(setup.binary(instance.who))
        .arg(mode)
        .arg(format!("--pid-file={}", instance.pid_file.display()))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("{mode}: {e}"))?;
    loop {
        match client.try_wait() {
            Ok(Some(status)) => return Ok((start.elapsed(), status)),
            Ok(None) if start.elapsed() < Duration::from_secs(15) => {
                std::thread::sleep(Duration::from_micros(200));
            }
            _ => {
                let _ = client.kill();
                let _ = client.wait();
                return Err(format!("`{mode}` did not return in 15 s"));
            }
        }
    }
}

/// The last non-empty line of a file.
fn last_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = text.lines().rev().find(|l| !l.trim().is_empty());
    line.unwrap_or("").trim().to_string()
}

/// Every request of a run into `raw/NAME.requests`: start and latency in
/// ms, and the outcome.
fn write_requests(setup: &Setup, name: &str, records: &[Record]) {
    let mut text = String::from("start_ms latency_ms outcome\n");
    for r in records {
        text.push_str(&format!(
            "{:.3} {:.3} {:?}\n",
            ms(r.start),
            ms(r.latency),
            r.outcome
        ));
    }
    let path = setup.raw.join(format!("{name}.requests"));
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("  {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(start_ms: u64, latency_ms: u64, outcome: Outcome) -> Record {
        Record {
            start: Duration::from_millis(start_ms),
            latency: Duration::from_millis(latency_ms),
            outcome,
        }
    }

    #[test]
    fn summarises_a_client_run() {
        let ok = Outcome::Ok { generation: 1 };
        let records = [
            record(0, 1, ok),
            record(1, 3, Outcome::Reset),
            record(4, 1, Outcome::Refused),
            record(5, 2, ok),
            record(7, 1, Outcome::Status(503)),
            record(8, 1, Outcome::Refused),
            record(9, 1, Outcome::Status(503)),
            record(10, 1, ok),
            record(11, 1, Outcome::Refused),
            record(12, 2, Outcome::Refused),
        ];
        let summary = RequestSummary::of(&records);
        assert_eq!(
            summary,
            RequestSummary {
                requests: 10,
                failed: 5,
                non_2xx: 2,
                // 1 → 5, 8 → 10, and 11 → the end of the last request, 14.
                refused_for: Duration::from_millis(4 + 2 + 3),
                max_latency: Duration::from_millis(3),
            }
        );
        let none = RequestSummary::of(&[]);
        assert_eq!((none.requests, none.refused_for), (0, Duration::ZERO));
    }
}
