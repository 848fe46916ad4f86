//! What the kernel says about a process, read from /proc (proc(5)).
//!
//! Only reads; every function takes a pid and fails with the io error of the
//! file it could not read.

use std::fs;
use std::io;

/// The lines of /proc/PID/status that the benchmark uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Status {
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// RssAnon, KiB: heap and stack, private to the process.
    pub rss_anon_kib: u64,
    /// RssFile, KiB: mapped files (the binary, shared libraries).
    pub rss_file_kib: u64,
    /// voluntary_ctxt_switches: each time the process went to sleep.
    pub voluntary_switches: u64,
    /// Pss from smaps_rollup, KiB: shared pages divided among the processes
    /// that map them.
    pub pss_kib: u64,
}

pub fn status(pid: i32) -> io::Result<Status> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut status = Status::default();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let number = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match name {
            "VmRSS" => status.rss_kib = number,
            "RssAnon" => status.rss_anon_kib = number,
            "RssFile" => status.rss_file_kib = number,
            "voluntary_ctxt_switches" => status.voluntary_switches = number,
            _ => {}
        }
    }
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    for line in rollup.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let number = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if name == "Pss" {
            status.pss_kib = number;
        }
    }
    Ok(status)
}

/// The fields of /proc/PID/stat after the command name, which may itself
/// contain spaces and parentheses.
fn stat_fields(pid: i32) -> io::Result<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat")))?;
    Ok(after.split_whitespace().map(str::to_string).collect())
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat), in seconds.
pub fn cpu_seconds(pid: i32) -> io::Result<f64> {
    let fields = stat_fields(pid)?;
    // Field 3 (state) is the first after the name: field N is at N - 3.
    let ticks = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(14), ticks(15)) else {
        return Err(io::Error::other(format!("unexpected /proc/{pid}/stat")));
    };
    // SAFETY: sysconf(3) has no side effects.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok((utime + stime) as f64 / per_second.max(1) as f64)
}

/// Time spent on a CPU, in seconds, with nanosecond resolution (the first
/// field of /proc/PID/schedstat).
pub fn cpu_seconds_precise(pid: i32) -> io::Result<f64> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    text.split_whitespace()
        .next()
        .and_then(|ns| ns.parse::<u64>().ok())
        .map(|ns| ns as f64 / 1e9)
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/schedstat")))
}

/// Resident KiB per mapped file (or `[heap]`, `[stack]`, `anonymous`), the
/// largest first, from /proc/PID/smaps.
pub fn rss_by_mapping(pid: i32) -> io::Result<Vec<(String, u64)>> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut totals: Vec<(String, u64)> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range, perms, offset, dev, inode, [name].
            let name = line.split_whitespace().nth(5).unwrap_or("anonymous");
            current = name.rsplit('/').next().unwrap_or(name).to_string();
        } else if first == "Rss:" {
            let kib = words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            match totals.iter_mut().find(|(n, _)| *n == current) {
                Some((_, total)) => *total += kib,
                None => totals.push((current.clone(), kib)),
            }
        }
    }
    totals.retain(|(_, kib)| *kib > 0);
    totals.sort_by_key(|(_, kib)| std::cmp::Reverse(*kib));
    Ok(totals)
}

/// The state and signal lines of /proc/PID/status, on one line: what to
/// look at when a process does not react to a signal.
pub fn signal_state(pid: i32) -> String {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(text) => {
            text.lines()
                .filter(|l| {
                    [
                        "State", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt",
                    ]
                    .iter()
                    .any(|name| l.starts_with(&format!("{name}:")))
                })
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(", ")
                + &format!(
                    ", wchan: {}, cmdline: {}",
                    fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default(),
                    fs::read_to_string(format!("/proc/{pid}/cmdline"))
                        .unwrap_or_default()
                        .replace('\0', " ")
                )
        }
        Err(e) => format!("/proc/{pid}/status: {e}"),
    }
}

/// The children of a process, over all its threads (a child is listed
/// under the thread that forked it).
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut all: Vec<i32> = tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// How many descriptors the process has open.
pub fn fd_count(pid: i32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// True once the process has exited: reaped (no /proc entry) or a zombie.
pub fn has_exited(pid: i32) -> bool {
    match stat_fields(pid) {
        Ok(fields) => fields
            .first()
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}
