//! The report: the markdown table, the targets (each met or missed), and the
//! latency picture drawn by gnuplot.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::instance::Who;
use crate::results::{Results, Stats};
use crate::scenarios::{self as s, PacedRun, Plan, wrk_key};
use crate::wrk::Mode;

#[derive(Clone, Copy)]
enum Unit {
    Ms,
    /// Stored in KiB, shown in MiB.
    Mib,
    Kib,
    Count,
    PerSecond,
}

/// Three significant digits, or a whole number.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn value(v: f64, unit: Unit, seconds: bool) -> String {
    match unit {
        Unit::Ms if seconds => format!("{} s", number(v / 1000.0)),
        Unit::Ms => format!("{} ms", number(v)),
        Unit::Mib => format!("{:.2} MiB", v / 1024.0),
        Unit::Kib => format!("{v:.0} KiB"),
        Unit::Count => format!("{v:.0}"),
        Unit::PerSecond => format!("{v:.0}/s"),
    }
}

/// `median (min–max)`, `>` marking values that hit a time limit.
fn cell(stats: Option<Stats>, unit: Unit) -> String {
    let Some(st) = stats else {
        return "—".to_string();
    };
    let seconds = matches!(unit, Unit::Ms) && st.median >= 1000.0;
    let capped = |c: bool| if c { ">" } else { "" };
    let median = format!(
        "{}{}",
        capped(st.median_capped),
        value(st.median, unit, seconds)
    );
    if st.count == 1 || st.min == st.max {
        return median;
    }
    let strip = |v: f64| {
        value(v, unit, seconds)
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    format!(
        "{median} ({}–{}{})",
        strip(st.min),
        capped(st.max_capped),
        strip(st.max)
    )
}

fn ratio(ours: Option<Stats>, reference: Option<Stats>) -> String {
    let (Some(o), Some(r)) = (ours, reference) else {
        return "—".to_string();
    };
    if r.median == 0.0 {
        return "—".to_string();
    }
    let x = o.median / r.median;
    let bound = match (o.median_capped, r.median_capped) {
        (false, true) => "<",
        (true, false) => ">",
        (true, true) => return "—".to_string(),
        (false, false) => "",
    };
    if x == 0.0 {
        format!("{bound}0×")
    } else if x < 0.01 {
        format!("{bound}{x:.4}×")
    } else {
        format!("{bound}{x:.2}×")
    }
}

/// A cell of `who` for `key`: the statistics, "n/a" when it could not
/// take part, "—" when not measured.
fn cell_of(results: &Results, key: &str, who: Who, unit: Unit, p90: bool) -> String {
    if results.why_not(key, who).is_some() {
        return "n/a".to_string();
    }
    let stats = results.stats(key, who);
    let text = cell(stats, unit);
    match stats {
        Some(st) if p90 && st.count > 1 && st.min != st.max => {
            let seconds = matches!(unit, Unit::Ms) && st.median >= 1000.0;
            let p90 = value(st.p90, unit, seconds);
            let p90 = p90.split(' ').next().unwrap_or_default();
            // "median (min–max)" → "median, p90 X (min–max)".
            match text.split_once(" (") {
                Some((median, range)) => format!("{median}, p90 {p90} ({range}"),
                None => text,
            }
        }
        _ => text,
    }
}

struct Row {
    label: String,
    /// One per column of the table.
    cells: Vec<String>,
    ratio: String,
}

/// The table: a column for ours, the reference and each extra
/// implementation, and the ratio of ours to the reference.
struct Table {
    columns: Vec<Who>,
    rows: Vec<Row>,
}

impl Table {
    fn section(&mut self, title: &str) {
        self.rows.push(Row {
            label: format!("**{title}**"),
            cells: vec![String::new(); self.columns.len()],
            ratio: String::new(),
        });
    }

    /// Median (min–max) of each, and an extra row for those with
    /// `--interval=0.1` when `fast`.
    fn median(&mut self, results: &Results, label: &str, key: &str, unit: Unit, fast: bool) {
        self.stats_row(results, label, key, unit, fast, false);
    }

    /// As [`Table::median`], with the 90th percentile too.
    fn median_p90(&mut self, results: &Results, label: &str, key: &str, unit: Unit, fast: bool) {
        self.stats_row(results, label, key, unit, fast, true);
    }

    fn stats_row(
        &mut self,
        results: &Results,
        label: &str,
        key: &str,
        unit: Unit,
        fast: bool,
        p90: bool,
    ) {
        let cells = self
            .columns
            .iter()
            .map(|&who| cell_of(results, key, who, unit, p90))
            .collect();
        let ours = results.stats(key, Who::Ours);
        let reference = results.stats(key, Who::Reference);
        self.rows.push(Row {
            label: label.to_string(),
            cells,
            ratio: ratio(ours, reference),
        });
        if fast {
            let cells = self
                .columns
                .iter()
                .map(|&who| match who.fast_variant() {
                    Some(fast) => cell_of(results, key, fast, unit, p90),
                    None => "—".to_string(),
                })
                .collect();
            self.rows.push(Row {
                label: format!("↳ with `{}`", crate::instance::FAST_INTERVAL),
                cells,
                ratio: String::new(),
            });
        }
    }

    /// Totals over every run of several counters, shown `a / b / c`.
    fn sums(&mut self, results: &Results, label: &str, keys: &[String]) {
        let total = |who: Who| {
            if keys.iter().all(|k| results.why_not(k, who).is_some()) {
                return "n/a".to_string();
            }
            keys.iter()
                .map(|k| {
                    results
                        .stats(k, who)
                        .map_or("—".to_string(), |st| format!("{:.0}", st.sum))
                })
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let cells = self.columns.iter().map(|&who| total(who)).collect();
        self.rows.push(Row {
            label: label.to_string(),
            cells,
            ratio: String::new(),
        });
    }

    /// A text observation of each.
    fn note(&mut self, results: &Results, label: &str, key: &str) {
        let text = |who: Who| match results.get_note(key, who) {
            Some(note) => note.to_string(),
            None if results.why_not(key, who).is_some() => "n/a".to_string(),
            None => "—".to_string(),
        };
        let cells = self.columns.iter().map(|&who| text(who)).collect();
        self.rows.push(Row {
            label: label.to_string(),
            cells,
            ratio: String::new(),
        });
    }

    fn markdown(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|w| w.name()).collect();
        let mut out = format!(
            "| | {} | ours / reference |\n|---|{}---|\n",
            names.join(" | "),
            "---|".repeat(names.len())
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                r.label,
                r.cells.join(" | "),
                r.ratio
            );
        }
        out
    }
}

fn table(results: &Results, plan: &Plan) -> Table {
    let mut t = Table {
        columns: Who::compared(),
        rows: Vec::new(),
    };
    let runs = |n: usize| {
        if n == 1 {
            "1 run".to_string()
        } else {
            format!("{n} runs")
        }
    };

    t.section(&format!("Start-up ({})", runs(plan.startup_runs)));
    t.median(
        results,
        "exec of start_server → first response of its worker",
        s::STARTUP,
        Unit::Ms,
        false,
    );

    t.section(&format!(
        "Switchover, `--interval=1` ({}, each after the previous restart is over and {} ms later)",
        runs(plan.switch_runs),
        s::PAUSE.as_millis()
    ));
    t.median_p90(
        results,
        "SIGHUP → new worker exec'd (its first instruction in main)",
        s::SWITCH_EXEC,
        Unit::Ms,
        true,
    );
    t.median(
        results,
        "SIGHUP → first response from the new generation",
        s::SWITCH_FIRST,
        Unit::Ms,
        true,
    );
    t.median(
        results,
        "SIGHUP → status file lists only the new generation",
        s::SWITCH_STATUS,
        Unit::Ms,
        true,
    );

    t.section(&format!(
        "Restart cycle, `--interval=0` ({}, each after the previous restart is over and {} ms later)",
        runs(plan.cycle_runs),
        s::PAUSE.as_millis()
    ));
    t.median_p90(
        results,
        "SIGHUP → new worker exec'd (its first instruction in main)",
        s::CYCLE_EXEC,
        Unit::Ms,
        false,
    );
    t.median_p90(
        results,
        "SIGHUP → status file lists only the new generation",
        s::CYCLE_STATUS,
        Unit::Ms,
        false,
    );
    t.sums(
        results,
        "HUPs not acted on within 1 s (total; the reference is then woken with SIGALRM, its times capped at 1 s)",
        &[s::CYCLE_LOST.to_string()],
    );

    t.section(&format!(
        "`start_server --restart`, `--interval=1` ({})",
        runs(plan.restart_runs)
    ));
    t.median(results, "wall time", s::RESTART_WALL, Unit::Ms, true);
    t.median(
        results,
        "returns this long after the old generation exited",
        s::RESTART_LAG,
        Unit::Ms,
        true,
    );

    let secs = plan.load_duration.as_secs();
    let period = plan.hup_period.as_secs_f64();
    for mode in [Mode::Close, Mode::KeepAlive] {
        t.section(&format!(
            "wrk {secs} s, {}, SIGHUP every {period} s, `--interval=1` ({})",
            mode.name(),
            runs(plan.load_runs)
        ));
        t.median(
            results,
            "requests/s",
            &wrk_key(mode, "rps"),
            Unit::PerSecond,
            false,
        );
        let errors = ["connect", "read", "write", "timeout"].map(|k| wrk_key(mode, k));
        t.sums(
            results,
            "socket errors connect / read / write / timeout (total)",
            &errors,
        );
        t.sums(
            results,
            "non-2xx responses (total; wrk counts status ≥ 400)",
            &[wrk_key(mode, "status")],
        );
        t.median(
            results,
            "p99 latency",
            &wrk_key(mode, "p99_ms"),
            Unit::Ms,
            false,
        );
        t.median(
            results,
            "max latency",
            &wrk_key(mode, "max_ms"),
            Unit::Ms,
            false,
        );
        t.median(
            results,
            "↳ control: p99 latency with no restart at all (1 run)",
            &wrk_key(mode, "control_p99_ms"),
            Unit::Ms,
            false,
        );
        t.median(
            results,
            "↳ control: max latency with no restart at all (1 run)",
            &wrk_key(mode, "control_max_ms"),
            Unit::Ms,
            false,
        );
        t.median(
            results,
            "restarts completed per run",
            &wrk_key(mode, "restarts"),
            Unit::Count,
            false,
        );
    }

    t.section(&format!(
        "Per-request client: {} connections × 1 request / {} ms, new connection each, {secs} s, SIGHUP every {period} s, `--interval=1` ({})",
        plan.paced_connections,
        plan.paced_period.as_millis(),
        runs(plan.load_runs)
    ));
    t.median(results, "requests", s::PACED_REQUESTS, Unit::Count, false);
    t.sums(
        results,
        "socket errors (refused, reset, incomplete, timeout)",
        &[s::PACED_SOCKET_ERRORS.to_string()],
    );
    t.sums(
        results,
        "non-2xx responses",
        &[s::PACED_NON_2XX.to_string()],
    );
    t.median(results, "p99 latency", s::PACED_P99, Unit::Ms, false);
    t.median(results, "max latency", s::PACED_MAX, Unit::Ms, false);
    t.median(
        results,
        "↳ of requests in flight within 100 ms after a SIGHUP or an old generation's TERM",
        s::PACED_MAX_NEAR,
        Unit::Ms,
        false,
    );
    t.median(
        results,
        "↳ of all other requests",
        s::PACED_MAX_ELSEWHERE,
        Unit::Ms,
        false,
    );

    t.section(&format!(
        "Supervisor footprint, {} restarts at `--interval=0` (or as many as {} s allow; {})",
        plan.restarts,
        plan.footprint_budget.as_secs(),
        runs(plan.footprint_runs)
    ));
    t.median(results, "RSS after start", s::RSS_START, Unit::Mib, false);
    t.median(
        results,
        "RSS after the restarts",
        s::RSS_AFTER,
        Unit::Mib,
        false,
    );
    t.median(
        results,
        "↳ of which anonymous (RssAnon)",
        s::RSS_ANON_AFTER,
        Unit::Kib,
        false,
    );
    t.median(
        results,
        "↳ of which file-backed (RssFile)",
        s::RSS_FILE_AFTER,
        Unit::Kib,
        false,
    );
    t.note(results, "↳ largest parts, KiB (first run)", s::RSS_MAPPINGS);
    t.median(
        results,
        "PSS after the restarts (shared pages split among their users)",
        s::PSS_AFTER,
        Unit::Kib,
        false,
    );
    t.median(
        results,
        "open fds after start",
        s::FDS_BEFORE,
        Unit::Count,
        false,
    );
    t.median(
        results,
        "open fds after the restarts",
        s::FDS_AFTER,
        Unit::Count,
        false,
    );
    t.median(
        results,
        "CPU time (utime+stime) per restart",
        s::CPU_PER_RESTART,
        Unit::Ms,
        false,
    );
    t.median(
        results,
        "on-CPU time per restart (/proc/PID/schedstat, ns resolution)",
        s::SCHED_CPU_PER_RESTART,
        Unit::Ms,
        false,
    );
    t.median(
        results,
        "wall time per restart, HUP → new generation alone and answering (median of each run)",
        s::TIME_PER_RESTART,
        Unit::Ms,
        false,
    );
    t.median(
        results,
        &format!(
            "restarts done per run (at most {}, in at most {} s)",
            plan.restarts,
            plan.footprint_budget.as_secs()
        ),
        s::RESTARTS_DONE,
        Unit::Count,
        false,
    );
    t.sums(
        results,
        "HUPs not acted on within 1 s (total; the reference is then woken with SIGALRM)",
        &[s::LOST_HUPS.to_string()],
    );

    t.section(&format!(
        "Idle for {} s ({} instances each)",
        plan.idle_duration.as_secs(),
        plan.idle_instances
    ));
    t.median(
        results,
        "wake-ups (voluntary context switches)",
        s::WAKEUPS,
        Unit::Count,
        false,
    );
    t.median(
        results,
        "↳ with `--enable-auto-restart`",
        s::WAKEUPS_AUTO,
        Unit::Count,
        false,
    );

    t.section(&format!(
        "HUP storm: {} SIGHUPs 1 ms apart, `--interval=1` ({})",
        plan.storm_hups,
        runs(plan.storm_runs)
    ));
    t.median(
        results,
        "first HUP → one generation left (for good)",
        s::STORM_SETTLE,
        Unit::Ms,
        true,
    );
    t.median(
        results,
        "last HUP → one generation left (for good)",
        s::STORM_SETTLE_FROM_LAST,
        Unit::Ms,
        true,
    );
    t.median(
        results,
        "workers exec'd from the first HUP on (exec stamps)",
        s::STORM_SPAWNS,
        Unit::Count,
        true,
    );
    t.median(
        results,
        "last worker exec'd this long after the last HUP (negative: before it)",
        s::STORM_LAST_EXEC,
        Unit::Ms,
        true,
    );
    t.median(
        results,
        "SIGTERM right after the storm → start_server exited",
        s::STORM_TERM,
        Unit::Ms,
        true,
    );

    t.section(&format!(
        "Readiness: the worker boots (waits) for {} ms, then accepts and sends READY=1; ours with `--notify-ready --interval=1`, the others with `--interval=1` ({} HUPs per boot time, each after the previous restart is over and {} ms later)",
        plan.ready_boot_ms,
        plan.ready_runs,
        s::PAUSE.as_millis()
    ));
    t.note(results, "how the old worker's TERM is timed", s::READY_HOW);
    for boot in [plan.ready_boot_ms, plan.ready_slow_boot_ms] {
        let key = |what: &str| s::ready_key(boot, what);
        let after = if boot == plan.ready_boot_ms {
            ""
        } else {
            " (longer than `--interval`)"
        };
        t.median(
            results,
            &format!("boot {boot} ms{after}: SIGHUP → new worker sends READY=1 (exec + boot)"),
            &key(s::READY_HUP_TO_READY),
            Unit::Ms,
            false,
        );
        t.median(
            results,
            "↳ SIGHUP → old worker signalled (its TERM handler ran)",
            &key(s::READY_HUP_TO_SIGNAL),
            Unit::Ms,
            false,
        );
        t.median_p90(
            results,
            "↳ **READY=1 → old worker signalled** (runs where it came after READY)",
            &key(s::READY_TO_SIGNAL),
            Unit::Ms,
            false,
        );
        t.sums(
            results,
            "↳ runs where the old worker was signalled BEFORE the new one was ready",
            &[key(s::READY_SIGNALLED_EARLY)],
        );
        t.median(
            results,
            "↳ how long before READY=1 it was signalled (those runs)",
            &key(s::READY_EARLY_BY),
            Unit::Ms,
            false,
        );
    }
    t.median(
        results,
        &format!(
            "`start_server --restart` wall time, boot {} ms ({})",
            plan.ready_boot_ms,
            runs(plan.ready_runs)
        ),
        s::READY_RESTART,
        Unit::Ms,
        false,
    );
    t.median(
        results,
        "↳ returned this long after the status file listed only the new generation (polled every 0.5 ms)",
        s::READY_RESTART_LAG,
        Unit::Ms,
        false,
    );
    upgrade_rows(&mut t, results, plan);
    t
}

/// The rows of the upgrade step.
fn upgrade_rows(t: &mut Table, results: &Results, plan: &Plan) {
    let runs = plan.upgrade_runs;
    t.section(&format!(
        "Upgrade: replacing start_server's own binary while a client requests in a tight loop, a new connection per request, `--interval=1` ({runs} runs each)"
    ));
    t.note(results, "how", s::UPG_HOW);
    t.median(
        results,
        "wall time: ours `--upgrade` until it returned; the others `--stop` → a new start_server answering",
        s::UPG_WALL,
        Unit::Ms,
        false,
    );
    t.sums(
        results,
        "requests failed (refused, reset, cut short) / non-2xx, of all sent (total)",
        &[
            s::UPG_FAILED.to_string(),
            s::UPG_NON_2XX.to_string(),
            s::UPG_REQUESTS.to_string(),
        ],
    );
    t.median(
        results,
        "port refusing: first failed request → next answered one",
        s::UPG_REFUSED_FOR,
        Unit::Ms,
        false,
    );
    t.median(
        results,
        "longest request",
        s::UPG_MAX_LATENCY,
        Unit::Ms,
        false,
    );
    t.sums(
        results,
        &format!("runs with the same supervisor pid / the same worker (of {runs})"),
        &[s::UPG_PID_KEPT.to_string(), s::UPG_WORKER_KEPT.to_string()],
    );
}

/// Writes `upgrade.md` (the upgrade step's table alone) and `samples.csv`
/// when the upgrade step ran; its path.
pub fn write_upgrade(
    out: &Path,
    raw: &Path,
    header: &str,
    results: &Results,
    plan: &Plan,
) -> Result<Option<PathBuf>, String> {
    if Who::compared()
        .into_iter()
        .all(|who| results.get(s::UPG_WALL, who).is_empty())
    {
        return Ok(None);
    }
    let mut t = Table {
        columns: Who::compared(),
        rows: Vec::new(),
    };
    upgrade_rows(&mut t, results, plan);
    let mut md = header.to_string();
    md.push_str(&t.markdown());
    let reasons = results.not_applicable_reasons();
    if !reasons.is_empty() {
        md.push_str("\nn/a:\n\n");
        for (who, reason) in reasons {
            let _ = writeln!(md, "- {}: {reason}", who.name());
        }
    }
    md.push_str(UPGRADE_NOTES);
    let path = out.join("upgrade.md");
    fs::write(&path, &md).map_err(|e| format!("upgrade.md: {e}"))?;
    fs::write(raw.join("samples.csv"), results.to_csv()).map_err(|e| e.to_string())?;
    Ok(Some(path))
}

const UPGRADE_NOTES: &str = "
Each run starts a fresh start_server with `--interval=1` and the bench worker,
waits until it answers, then starts a client that sends one request after
the other, each on a new connection, and 100 ms later replaces the
supervisor's binary: ours with `start_server --upgrade --pid-file=FILE`
(the same binary: it re-executes itself in place, see docs/behaviour.md
section 9); the reference, which cannot, with `start_server --stop
--pid-file=FILE` and a new start_server with the same options on the same
port. The client goes on until 100 ms after that is over. Wall time: ours,
the `--upgrade` command from start to exit; the others, from `--stop` to the
first answer from the new start_server's worker. Requests failed: no
connection, reset, or cut short; non-2xx: an answer with another status.
Port refusing: the sum of the spans from a failed request to the next
answered one. Longest request: of every request the client sent. Same
supervisor pid: the start_server process and the pid in its pid file are
those of before; same worker: the status file lists the same generation and
worker pid as before. Every request of every run is in
`raw/upgrade-RUN-WHO.requests`, every number in `raw/samples.csv`, the logs
in `raw/logs/`. Rerun with `bench/run.sh --only upgrade` (it leaves
results.md as it is).
";

/// One target of the issue, judged on ours.
struct Target {
    goal: String,
    measured: String,
    met: Option<bool>,
}

fn max_of(results: &Results, key: &str, who: Who) -> Option<f64> {
    results.stats(key, who).map(|st| st.max)
}

fn sum_of(results: &Results, keys: &[String], who: Who) -> Option<f64> {
    keys.iter()
        .map(|k| results.stats(k, who).map(|st| st.sum))
        .sum()
}

fn targets(results: &Results, plan: &Plan) -> Vec<Target> {
    let ours = Who::Ours;
    let mut list = Vec::new();
    let mut socket_keys: Vec<String> = Vec::new();
    let mut status_keys: Vec<String> = Vec::new();
    for mode in [Mode::Close, Mode::KeepAlive] {
        for k in ["connect", "read", "write", "timeout"] {
            socket_keys.push(wrk_key(mode, k));
        }
        status_keys.push(wrk_key(mode, "status"));
    }
    socket_keys.push(s::PACED_SOCKET_ERRORS.to_string());
    status_keys.push(s::PACED_NON_2XX.to_string());
    let errors = sum_of(results, &socket_keys, ours);
    list.push(Target {
        goal: "zero socket errors under load across restarts".to_string(),
        measured: errors.map_or("not measured".to_string(), |e| {
            format!("{e:.0} in every wrk and per-request run")
        }),
        met: errors.map(|e| e == 0.0),
    });
    let non_2xx = sum_of(results, &status_keys, ours);
    list.push(Target {
        goal: "zero non-2xx responses under load across restarts".to_string(),
        measured: non_2xx.map_or("not measured".to_string(), |e| format!("{e:.0}")),
        met: non_2xx.map(|e| e == 0.0),
    });

    let overall = [
        (Mode::Close.name(), wrk_key(Mode::Close, "max_ms")),
        (Mode::KeepAlive.name(), wrk_key(Mode::KeepAlive, "max_ms")),
        ("per-request client", s::PACED_MAX.to_string()),
    ];
    list.push(no_worse(
        results,
        "max request latency during restarts no worse than the reference's: the whole runs (medians, ms)",
        &overall,
    ));
    let near = [("per-request client", s::PACED_MAX_NEAR.to_string())];
    list.push(no_worse(
        results,
        "... and the requests in flight within 100 ms after each SIGHUP and each old generation's TERM (medians, ms)",
        &near,
    ));

    let startup = results
        .stats(s::STARTUP, ours)
        .zip(results.stats(s::STARTUP, Who::Reference));
    list.push(Target {
        goal: "start-up at most a tenth of the reference's".to_string(),
        measured: startup.map_or("not measured".to_string(), |(o, r)| {
            format!(
                "{} vs {} ms ({:.3}×)",
                number(o.median),
                number(r.median),
                o.median / r.median
            )
        }),
        met: startup.map(|(o, r)| o.median <= r.median / 10.0),
    });

    let rss = max_of(results, s::RSS_START, ours)
        .zip(max_of(results, s::RSS_AFTER, ours))
        .map(|(a, b)| a.max(b));
    list.push(Target {
        goal: "supervisor RSS under 2 MiB".to_string(),
        measured: rss.map_or("not measured".to_string(), |kib| {
            format!(
                "at most {kib:.0} KiB ({:.2} MiB), after start and after {} restarts",
                kib / 1024.0,
                plan.restarts
            )
        }),
        met: rss.map(|kib| kib < 2048.0),
    });

    let wake = max_of(results, s::WAKEUPS, ours).zip(max_of(results, s::WAKEUPS_AUTO, ours));
    list.push(Target {
        goal: "zero idle wake-ups, with auto-restart enabled too".to_string(),
        measured: wake.map_or("not measured".to_string(), |(a, b)| {
            format!(
                "at most {a:.0} without, {b:.0} with auto-restart, in {} s",
                plan.idle_duration.as_secs()
            )
        }),
        met: wake.map(|(a, b)| a == 0.0 && b == 0.0),
    });

    let lag = max_of(results, s::RESTART_LAG, ours);
    list.push(Target {
        goal: "`--restart` returns within 50 ms after the old generation is gone".to_string(),
        measured: lag.map_or("not measured".to_string(), |l| {
            format!("at most {} ms", number(l))
        }),
        met: lag.map(|l| l <= 50.0),
    });

    // SIGHUP → exec'd, at both intervals it was measured at.
    let mut parts = Vec::new();
    let mut met = None;
    for (label, key) in [
        ("`--interval=1`", s::SWITCH_EXEC),
        ("`--interval=0`", s::CYCLE_EXEC),
    ] {
        match results.stats(key, ours) {
            Some(st) => {
                parts.push(format!(
                    "{label}: {}{} ms (p90 {})",
                    if st.median_capped { ">" } else { "" },
                    number(st.median),
                    number(st.p90)
                ));
                let ok = !st.median_capped && st.median <= 1.0;
                met = Some(met.unwrap_or(true) && ok);
            }
            None => parts.push(format!("{label}: not measured")),
        }
    }
    list.push(Target {
        goal: "SIGHUP → new worker exec'd: median at most 1.0 ms".to_string(),
        measured: parts.join("; "),
        met,
    });

    let cycle = results.stats(s::CYCLE_STATUS, ours);
    list.push(Target {
        goal: "restart cycle at `--interval=0` (SIGHUP → status file lists only the new generation): median at most 3 ms".to_string(),
        measured: cycle.map_or("not measured".to_string(), |st| {
            format!(
                "{}{} ms (p90 {})",
                if st.median_capped { ">" } else { "" },
                number(st.median),
                number(st.p90)
            )
        }),
        met: cycle.map(|st| !st.median_capped && st.median <= 3.0),
    });

    let storm_whos = [ours, Who::OursFast];
    list.push(storm_target(
        results,
        format!("{} HUPs 1 ms apart cause at most 3 spawns", plan.storm_hups),
        s::STORM_SPAWNS,
        |_, st| {
            (
                format!("at most {}{:.0}", capped(st.max_capped), st.max),
                !st.max_capped && st.max <= 3.0,
            )
        },
        &storm_whos,
    ));
    let last_exec = |who: Who| {
        let spawned = results.stats(s::STORM_SPAWNS, who).map_or(0, |st| st.count);
        let after = results.get(s::STORM_LAST_EXEC, who);
        (spawned, after.iter().filter(|a| a.value > 0.0).count())
    };
    let mut parts = Vec::new();
    let mut met = None;
    for who in storm_whos {
        let (runs, after) = last_exec(who);
        if runs > 0 {
            let earliest = results
                .stats(s::STORM_LAST_EXEC, who)
                .map_or("—".to_string(), |st| format!("{} ms", number(st.min)));
            parts.push(format!(
                "{}: in {after} of {runs} runs (the earliest {earliest} after it)",
                who.name()
            ));
            met = Some(met.unwrap_or(true) && after == runs);
        }
    }
    list.push(Target {
        goal: "... and the last spawn begins after the last HUP (its exec stamp after the time the last HUP was sent)".to_string(),
        measured: if parts.is_empty() {
            "not measured".to_string()
        } else {
            parts.join("; ")
        },
        met,
    });
    list.push(storm_target(
        results,
        "... and exactly one generation is current within 2 × `--interval` + 300 ms of the last HUP (2.3 s; 0.5 s at `--interval=0.1`)".to_string(),
        s::STORM_SETTLE_FROM_LAST,
        |who, st| {
            (
                format!("at most {}{} ms", capped(st.max_capped), number(st.max)),
                !st.max_capped && st.max <= 2.0 * who.interval() * 1000.0 + 300.0,
            )
        },
        &storm_whos,
    ));
    list.push(storm_target(
        results,
        "a SIGTERM right after the storm is obeyed within 100 ms".to_string(),
        s::STORM_TERM,
        |_, st| {
            (
                format!("at most {}{} ms", capped(st.max_capped), number(st.max)),
                !st.max_capped && st.max <= 100.0,
            )
        },
        &storm_whos,
    ));

    // Readiness: READY=1 → old worker signalled, at both boot times.
    let mut parts = Vec::new();
    let mut met = None;
    for boot in [plan.ready_boot_ms, plan.ready_slow_boot_ms] {
        let after = results.stats(&s::ready_key(boot, s::READY_TO_SIGNAL), ours);
        let early = results
            .stats(&s::ready_key(boot, s::READY_SIGNALLED_EARLY), ours)
            .map_or(0.0, |st| st.sum);
        if let Some(st) = after {
            parts.push(format!(
                "boot {boot} ms: {} ms (p90 {}, max {}), signalled before READY in {early:.0} runs",
                number(st.median),
                number(st.p90),
                number(st.max)
            ));
            met = Some(met.unwrap_or(true) && st.median <= 1.0 && early == 0.0);
        }
    }
    list.push(Target {
        goal: "with `--notify-ready`, READY=1 → old worker signalled: median at most 1 ms, never before READY"
            .to_string(),
        measured: if parts.is_empty() {
            "not measured".to_string()
        } else {
            parts.join("; ")
        },
        met,
    });
    let limit = plan.ready_boot_ms as f64 + 10.0;
    let restart = results.stats(s::READY_RESTART, ours);
    list.push(Target {
        goal: format!(
            "`--restart` with `--notify-ready` at most boot + 10 ms (median, boot {} ms: {limit:.0} ms)",
            plan.ready_boot_ms
        ),
        measured: restart.map_or("not measured".to_string(), |st| {
            format!(
                "{} ms ({}–{})",
                number(st.median),
                number(st.min),
                number(st.max)
            )
        }),
        met: restart.map(|st| st.median <= limit),
    });

    let growth = results
        .get(s::FDS_AFTER, ours)
        .iter()
        .zip(results.get(s::FDS_BEFORE, ours))
        .map(|(a, b)| a.value - b.value)
        .reduce(f64::max);
    list.push(Target {
        goal: format!("no fd growth over {} restarts", plan.restarts),
        measured: growth.map_or("not measured".to_string(), |g| {
            format!("at most {g:+.0} fds")
        }),
        met: growth.map(|g| g <= 0.0),
    });
    list
}

fn capped(c: bool) -> &'static str {
    if c { ">" } else { "" }
}

/// A target judged on each of `whos` (ours at both intervals): `judge`
/// describes the statistics of one and says whether they meet it.
fn storm_target(
    results: &Results,
    goal: String,
    key: &str,
    judge: impl Fn(Who, &Stats) -> (String, bool),
    whos: &[Who],
) -> Target {
    let mut parts = Vec::new();
    let mut met = None;
    for &who in whos {
        if let Some(st) = results.stats(key, who) {
            let (text, ok) = judge(who, &st);
            parts.push(format!("{}: {text}", who.name()));
            met = Some(met.unwrap_or(true) && ok);
        }
    }
    Target {
        goal,
        measured: if parts.is_empty() {
            "not measured".to_string()
        } else {
            parts.join("; ")
        },
        met,
    }
}

/// Ours no worse than the reference: each median of ours at most the
/// reference's.
fn no_worse(results: &Results, goal: &str, keys: &[(&str, String)]) -> Target {
    let mut parts = Vec::new();
    let mut met = Some(true);
    for (name, key) in keys {
        match (
            results.stats(key, Who::Ours),
            results.stats(key, Who::Reference),
        ) {
            (Some(o), Some(r)) => {
                parts.push(format!(
                    "{name}: {} vs {}",
                    number(o.median),
                    number(r.median)
                ));
                if o.median > r.median {
                    met = Some(false);
                }
            }
            _ => met = None,
        }
    }
    Target {
        goal: goal.to_string(),
        measured: parts.join("; "),
        met,
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// A target and whether ours met it (`None`: not measured).
pub type Verdict = (String, Option<bool>);

/// Writes `results.md` (and returns it), `samples.csv`, and the picture.
pub fn write(
    out: &Path,
    raw: &Path,
    header: &str,
    results: &Results,
    plan: &Plan,
    paced: &[PacedRun],
) -> Result<(String, Vec<Verdict>), String> {
    let picture = if paced.is_empty() {
        None
    } else {
        match plot(out, raw, paced, plan) {
            Ok(path) => Some(path),
            Err(e) => {
                eprintln!("warning: no picture: {e}");
                None
            }
        }
    };
    let mut md = String::new();
    md.push_str(header);
    md.push_str(&table(results, plan).markdown());
    let reasons = results.not_applicable_reasons();
    if !reasons.is_empty() {
        md.push_str("\nn/a:\n\n");
        for (who, reason) in reasons {
            let _ = writeln!(md, "- {}: {reason}", who.name());
        }
    }
    md.push_str("\n## Targets (ours)\n\n| target | measured | |\n|---|---|---|\n");
    let targets = targets(results, plan);
    for t in &targets {
        let _ = writeln!(md, "| {} | {} | {} |", t.goal, t.measured, verdict(t.met));
    }
    if let Some(path) = picture {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let _ = write!(
            md,
            "\n## Per-request latency during restarts\n\n![per-request latency, ours and the reference]({name})\n"
        );
    }
    fs::write(out.join("results.md"), &md).map_err(|e| format!("results.md: {e}"))?;
    fs::write(raw.join("samples.csv"), results.to_csv()).map_err(|e| e.to_string())?;
    let verdicts = targets.into_iter().map(|t| (t.goal, t.met)).collect();
    Ok((md, verdicts))
}

/// The per-request latency of the paced runs over time, both on one pair of
/// axes, the HUPs marked; gnuplot draws it from data files in `raw`.
fn plot(out: &Path, raw: &Path, paced: &[PacedRun], plan: &Plan) -> Result<PathBuf, String> {
    let mut series = String::new();
    let mut arrows = String::new();
    for PacedRun { who, records, hups } in paced.iter().rev() {
        let ok_path = raw.join(format!("latency-{}.dat", who.name()));
        let err_path = raw.join(format!("latency-{}-errors.dat", who.name()));
        let (mut ok, mut errors) = (String::new(), String::new());
        for r in records {
            let line = format!(
                "{:.6} {:.4}\n",
                r.start.as_secs_f64(),
                r.latency.as_secs_f64() * 1000.0
            );
            if r.outcome.is_socket_error() || !matches!(r.outcome, crate::http::Outcome::Ok { .. })
            {
                errors.push_str(&line);
            } else {
                ok.push_str(&line);
            }
        }
        fs::write(&ok_path, ok).map_err(|e| e.to_string())?;
        let (color, title) = match who {
            Who::Ours => ("#601b9e77", "ours"),
            _ => ("#60d95f02", "reference (Perl 0.35)"),
        };
        let _ = write!(
            series,
            "'{}' using 1:2 with points pt 7 ps 0.4 lc rgb '{color}' title '{title}', ",
            ok_path.display()
        );
        if !errors.is_empty() {
            fs::write(&err_path, errors).map_err(|e| e.to_string())?;
            let _ = write!(
                series,
                "'{}' using 1:2 with points pt 2 ps 1.2 lc rgb '#c00000' title '{title}: failed request', ",
                err_path.display()
            );
        }
        if arrows.is_empty() {
            for t in hups {
                // The HUP, and the old generation's TERM an --interval later.
                let _ = writeln!(
                    arrows,
                    "set arrow from {t:.3}, graph 0 to {t:.3}, graph 1 nohead dt 2 lc rgb '#777777'"
                );
                let _ = writeln!(
                    arrows,
                    "set arrow from {:.3}, graph 0 to {:.3}, graph 1 nohead dt 3 lc rgb '#999999'",
                    t + 1.0,
                    t + 1.0
                );
            }
        }
    }
    let png = out.join("latency.png");
    let script = format!(
        "set terminal pngcairo size 1200,560 font 'sans,11' noenhanced\n\
         set output '{}'\n\
         set title 'Latency of each request while start_server restarts its worker every {} s with --interval=1 (dashed: SIGHUP; dotted: old generation sent TERM)'\n\
         set xlabel 'time since the load started (s)'\n\
         set ylabel 'request latency, new connection each (ms)'\n\
         set logscale y\n\
         set yrange [0.02:*]\n\
         set grid ytics mytics lc rgb '#dddddd'\n\
         set key top left opaque box\n\
         set xrange [0:{}]\n\
         {arrows}\
         plot {}\n",
        png.display(),
        plan.hup_period.as_secs_f64(),
        plan.load_duration.as_secs(),
        series.trim_end_matches([',', ' '])
    );
    let script_path = raw.join("latency.gp");
    fs::write(&script_path, script).map_err(|e| e.to_string())?;
    let output = Command::new("gnuplot")
        .arg(&script_path)
        .output()
        .map_err(|e| format!("gnuplot: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "gnuplot: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(png)
}
