//! What one run of a scenario observed, normalised so that a run of the
//! reference and a run of ours can be compared line by line.
//!
//! Normalisation only removes what differs between two correct runs: the
//! sandbox path (`$TMP`), the worker's path (`$WORKER`), port numbers
//! (`$PORT1`...), pids (`S` for start_server, `D` for its daemon, `W1`...
//! for workers in the order they were started, `C1`... for client
//! commands, `O1`... for orphans), socket descriptor numbers (`F1`... in
//! order of appearance, except numbers a scenario pinned with `=N`), and
//! the ` at FILE line N.` suffix Perl adds to warnings. Everything else is
//! compared as written.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// One worker process, as its reports describe it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerRecord {
    pub name: String,
    /// The `.start` report's fields (normalised), `generation` first.
    pub report: Vec<String>,
    /// The environment it received (normalised `KEY=VALUE`, sorted).
    pub env: Vec<String>,
    /// Each signal it received: `NAME@Wn+Ks`, Wn being the newest worker
    /// started at that moment and K the whole seconds since that start or
    /// since the script's last action, whichever came later (just `NAME`
    /// in a `quick` scenario, where everything happens within
    /// milliseconds).
    pub signals: Vec<String>,
    /// Raw times, in ms since the epoch, for the checks of documented
    /// differences: when the start report was written, and each signal.
    pub started_ms: Option<u128>,
    pub signal_ms: Vec<(String, u128)>,
    /// How it ended: the `.exit` report, `gone` (killed without a report)
    /// or `alive` (still running when start_server was gone).
    pub end: String,
}

/// A client command the script ran (`--restart`, `--stop`, a second
/// instance...).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientRecord {
    pub args: String,
    pub end: String,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

/// Everything a run observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// Anomalies seen by the script (a wait that timed out...).
    pub notes: Vec<String>,
    /// start_server's own exit (`exit=N`, `signal=N`, `running`).
    pub exit: String,
    pub stdout: Vec<String>,
    /// start_server's stderr (before a log file takes over, or always).
    pub stderr: Vec<String>,
    /// The `--log-file` (or what its pipe wrote), when the scenario has one.
    pub log: Vec<String>,
    /// Successive contents of the status file (`<absent>`, `<empty>`, or
    /// the lines joined by spaces).
    pub status: Vec<String>,
    pub workers: Vec<WorkerRecord>,
    pub clients: Vec<ClientRecord>,
    /// Snapshots of the sandbox the script asked for, and the last one,
    /// taken after everything exited.
    pub snapshots: Vec<Vec<String>>,
    /// Processes of the run still alive once start_server was gone.
    pub left_running: Vec<String>,
    /// A pid of the run equals one of its port numbers (not compared: the
    /// scenario is run again).
    pub ambiguous: bool,
    /// The pid behind each name (not compared; for the checks of
    /// documented differences).
    pub pids: BTreeMap<String, i32>,
}

impl Record {
    /// The record as text, one observation a line, for diffing.
    pub fn render(&self) -> Vec<String> {
        let mut out = Vec::new();
        let list = |out: &mut Vec<String>, title: &str, lines: &[String]| {
            if !lines.is_empty() {
                out.push(format!("{title}:"));
                out.extend(lines.iter().map(|l| format!("  {l}")));
            }
        };
        list(&mut out, "notes", &self.notes);
        out.push(format!("start_server: {}", self.exit));
        list(&mut out, "stdout", &self.stdout);
        list(&mut out, "stderr", &self.stderr);
        list(&mut out, "log file", &self.log);
        list(&mut out, "status file", &self.status);
        for w in &self.workers {
            out.push(format!("worker {}:", w.name));
            out.extend(w.report.iter().map(|l| format!("  {l}")));
            out.extend(w.env.iter().map(|l| format!("  env {l}")));
            out.push(format!("  signals: {}", w.signals.join(" ")));
            out.push(format!("  end: {}", w.end));
        }
        for c in &self.clients {
            out.push(format!("client {}: {}", c.args, c.end));
            out.extend(c.stdout.iter().map(|l| format!("  stdout {l}")));
            out.extend(c.stderr.iter().map(|l| format!("  stderr {l}")));
        }
        for (i, snapshot) in self.snapshots.iter().enumerate() {
            list(&mut out, &format!("files #{}", i + 1), snapshot);
        }
        list(&mut out, "left running", &self.left_running);
        out
    }

    /// The lines of stderr and the log file together, in that order.
    pub fn all_output(&self) -> Vec<String> {
        self.stderr.iter().chain(&self.log).cloned().collect()
    }
}

/// Maps the run-specific values to symbolic names.
#[derive(Clone, Debug, Default)]
pub struct Normaliser {
    /// Literal replacements, longest first (paths).
    paths: Vec<(String, String)>,
    ports: BTreeMap<u64, String>,
    pids: BTreeMap<u64, String>,
    /// Socket descriptor numbers → `F1`..., except pinned ones.
    fds: BTreeMap<i32, String>,
    pinned: BTreeSet<i32>,
}

impl Normaliser {
    pub fn new(sandbox: &str, worker: &str, ports: &[u16], pinned: &[i32]) -> Normaliser {
        let mut paths = vec![
            (sandbox.to_string(), "$TMP".to_string()),
            (worker.to_string(), "$WORKER".to_string()),
        ];
        paths.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        Normaliser {
            paths,
            ports: ports
                .iter()
                .enumerate()
                .map(|(i, &p)| (u64::from(p), format!("$PORT{}", i + 1)))
                .collect(),
            pids: BTreeMap::new(),
            fds: BTreeMap::new(),
            pinned: pinned.iter().copied().collect(),
        }
    }

    /// Names `pid` unless it already has a name.
    pub fn name_pid(&mut self, pid: i32, name: impl Into<String>) {
        if pid > 1 {
            self.pids.entry(pid as u64).or_insert_with(|| name.into());
        }
    }

    pub fn pid_name(&self, pid: i32) -> Option<&str> {
        self.pids.get(&(pid as u64)).map(String::as_str)
    }

    /// Every named pid, by name.
    pub fn named_pids(&self) -> BTreeMap<String, i32> {
        self.pids
            .iter()
            .map(|(pid, name)| (name.clone(), *pid as i32))
            .collect()
    }

    pub fn has_pid(&self, pid: i32) -> bool {
        self.pids.contains_key(&(pid as u64))
    }

    /// Names a socket descriptor (`F1`...) unless pinned or named already.
    pub fn name_fd(&mut self, fd: i32) {
        if !self.pinned.contains(&fd) && !self.fds.contains_key(&fd) {
            let name = format!("F{}", self.fds.len() + 1);
            self.fds.insert(fd, name);
        }
    }

    pub fn fd(&self, fd: i32) -> String {
        self.fds.get(&fd).cloned().unwrap_or_else(|| fd.to_string())
    }

    /// A `SERVER_STARTER_PORT` value with descriptor numbers named.
    pub fn port_env(&self, value: &str) -> String {
        let entries: Vec<String> = value
            .split(';')
            .map(|entry| match entry.rsplit_once('=') {
                Some((key, fd)) => match fd.parse::<i32>() {
                    Ok(fd) => format!("{}={}", self.text(key), self.fd(fd)),
                    Err(_) => self.text(entry),
                },
                None => self.text(entry),
            })
            .collect();
        entries.join(";")
    }

    /// Normalises free text: paths, Perl's line suffix, ports and pids.
    pub fn text(&self, raw: &str) -> String {
        let mut s = raw.to_string();
        for (from, to) in &self.paths {
            s = s.replace(from.as_str(), to);
        }
        s = strip_perl_location(&s);
        let mut out = String::with_capacity(s.len());
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_digit() {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                let word = &s[start..i];
                let glued = start > 0
                    && (bytes[start - 1].is_ascii_alphabetic() || bytes[start - 1] == b'$');
                match word.parse::<u64>() {
                    Ok(n) if !glued && self.ports.contains_key(&n) => out.push_str(&self.ports[&n]),
                    Ok(n) if !glued && n >= 100 && self.pids.contains_key(&n) => {
                        out.push_str(&self.pids[&n])
                    }
                    _ => out.push_str(word),
                }
            } else {
                let c = s[i..].chars().next().expect("a char at a boundary");
                out.push(c);
                i += c.len_utf8();
            }
        }
        out
    }

    pub fn lines(&self, text: &str) -> Vec<String> {
        text.lines().map(|l| self.text(l)).collect()
    }
}

/// Removes the ` at /usr/share/perl5/Server/Starter.pm line 131.` (or
/// `... line 131, <$fh> line 1.`) that Perl's `die` and `warn` append.
fn strip_perl_location(line: &str) -> String {
    let mut s = line.to_string();
    while let Some(at) = s.rfind(" at /") {
        let tail = &s[at..];
        let is_location = tail.contains(" line ") && tail.trim_end().ends_with('.');
        if !is_location {
            break;
        }
        s.truncate(at);
    }
    s
}

/// A readable line diff of two renderings (`-` reference, `+` ours), with
/// a little context; empty when they are equal.
pub fn diff(reference: &[String], ours: &[String]) -> String {
    let (n, m) = (reference.len(), ours.len());
    // Longest common subsequence table, from the end.
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if reference[i] == ours[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && reference[i] == ours[j] {
            ops.push((' ', &reference[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', &reference[i]));
            i += 1;
        } else {
            ops.push(('+', &ours[j]));
            j += 1;
        }
    }
    if ops.iter().all(|(op, _)| *op == ' ') {
        return String::new();
    }
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut text = String::new();
    let mut last_shown: Option<usize> = None;
    for (k, (op, line)) in ops.iter().enumerate() {
        let near = *op != ' ' || changed.iter().any(|&c| c.abs_diff(k) <= CONTEXT);
        if !near {
            continue;
        }
        if last_shown.is_some_and(|l| l + 1 != k) {
            text.push_str("  ...\n");
        }
        let _ = writeln!(text, "{op}{line}");
        last_shown = Some(k);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_paths_ports_pids_and_perl_suffixes() {
        let mut n = Normaliser::new("/tmp/ss-compat.x1", "/w/test_worker", &[40000], &[]);
        n.name_pid(12345, "W1");
        assert_eq!(
            n.text("worker 12345 died at /usr/share/perl5/Server/Starter.pm line 171."),
            "worker W1 died"
        );
        assert_eq!(n.text("/tmp/ss-compat.x1/s:40000"), "$TMP/s:$PORT1");
        assert_eq!(n.text("status:65280 F12345"), "status:65280 F12345");
        n.name_fd(4);
        assert_eq!(
            n.port_env("40000=4;/tmp/ss-compat.x1/s=5"),
            "$PORT1=F1;$TMP/s=5"
        );
    }

    #[test]
    fn diff_shows_only_changes_with_context() {
        let a: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let b: Vec<String> = ["a", "x", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(diff(&a, &a), "");
        assert_eq!(diff(&a, &b), " a\n-b\n+x\n c\n");
    }
}
