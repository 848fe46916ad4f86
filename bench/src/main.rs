//! `ss-bench`: our start_server and the Perl reference, side by side, and
//! any number of other implementations beside them (`--impl NAME=BINARY`).
//!
//! Runs every measurement of `scenarios` on each, interleaved, with the
//! bench worker behind them; writes `results.md` (the table and the
//! targets, each met or missed) and `latency.png` into the output
//! directory, the raw data and every process's log into `OUT/raw/`.
//! `bench/run.sh` builds everything and runs this; see bench/README.md.
//!
//! Every load goes to 127.0.0.1 only and is bounded in time and count;
//! every process started here is killed and reaped before exit (also on
//! SIGINT/SIGTERM).

mod http;
mod instance;
mod procfs;
mod report;
mod results;
mod scenarios;
mod wrk;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use instance::Setup;
use results::Results;
use scenarios::Plan;

const USAGE: &str = "usage: ss-bench --ours BIN --reference BIN --worker BIN --out DIR
                [--impl NAME=BIN]... [--quick] [--only NAME[,NAME...]]

  --ours BIN        our start_server (target/release/start_server)
  --reference BIN   the Perl reference (/usr/bin/start_server)
  --worker BIN      the bench worker (target/release/examples/bench_worker)
  --out DIR         where results.md and latency.png go (bench/results)
  --impl NAME=BIN   another start_server to run in every step beside ours
                    and the reference (repeatable; NAME: letters, digits,
                    `-`, `_`, `.`); a step it cannot take part in shows n/a
  --quick           a short pass over everything, to check the harness
  --only NAME       only the steps whose name contains NAME, or any of
                    several NAMEs separated by commas (start-up,
                    switchover, cycle, exec, --restart, wrk, per-request,
                    footprint, idle, storm, readiness,
                    upgrade)
";

struct Args {
    setup: Setup,
    out: PathBuf,
    quick: bool,
    /// Run only the steps whose name contains this.
    only: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let (mut ours, mut reference, mut worker, mut out, mut quick) = (None, None, None, None, false);
    let mut only = None;
    let mut extras: Vec<(String, PathBuf)> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .map(PathBuf::from)
                .ok_or(format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--ours" => ours = Some(value()?),
            "--reference" => reference = Some(value()?),
            "--worker" => worker = Some(value()?),
            "--out" => out = Some(value()?),
            "--quick" => quick = true,
            "--only" => only = Some(args.next().ok_or("--only needs a value")?),
            "--impl" => {
                let spec = args.next().ok_or("--impl needs NAME=BINARY")?;
                let (name, binary) = spec
                    .split_once('=')
                    .ok_or(format!("--impl {spec}: NAME=BINARY expected"))?;
                extras.push((name.to_string(), PathBuf::from(binary)));
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let absolute = |p: Option<PathBuf>, name: &str| -> Result<PathBuf, String> {
        let p = p.ok_or(format!("{name} is required"))?;
        std::path::absolute(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let out = absolute(out, "--out")?;
    let mut names: Vec<&str> = vec!["ours", "reference", "ours-fast"];
    for (name, _) in &extras {
        let valid = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if name.is_empty() || !valid {
            return Err(format!("--impl {name}: letters, digits, -, _ and . only"));
        }
        if names.contains(&name.as_str()) || names.contains(&format!("{name}-fast").as_str()) {
            return Err(format!("--impl {name}: name taken"));
        }
        names.push(name);
    }
    let extras = extras
        .into_iter()
        .map(|(name, binary)| Ok((name, absolute(Some(binary), "--impl")?)))
        .collect::<Result<Vec<_>, String>>()?;
    let setup = Setup {
        ours: absolute(ours, "--ours")?,
        reference: absolute(reference, "--reference")?,
        extras,
        worker: absolute(worker, "--worker")?,
        raw: out.join("raw"),
    };
    let binaries = [&setup.ours, &setup.reference, &setup.worker]
        .into_iter()
        .chain(setup.extras.iter().map(|(_, binary)| binary));
    for p in binaries {
        if !p.is_file() {
            return Err(format!("{} not found", p.display()));
        }
    }
    Ok(Args {
        setup,
        out,
        quick,
        only,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("ss-bench: {e}");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let names: Vec<String> = args.setup.extras.iter().map(|(n, _)| n.clone()).collect();
    instance::set_extra_names(&names);
    instance::install_cleanup_handler();
    match run(&args) {
        // Missed targets are a result, not a failure of the run.
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ss-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let setup = &args.setup;
    let plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    let _ = std::fs::remove_dir_all(&setup.raw);
    std::fs::create_dir_all(setup.raw.join("logs"))
        .map_err(|e| format!("{}: {e}", setup.raw.display()))?;
    let started = Instant::now();
    let load_before = load_average();
    let mut results = Results::default();

    type Step = fn(&Setup, &Plan, &mut Results) -> Result<(), String>;
    let steps: [(&str, Step); 10] = [
        ("start-up", scenarios::startup),
        (
            "switchover and HUP → exec, --interval=1",
            scenarios::switchover,
        ),
        (
            "restart cycle and HUP → exec, --interval=0",
            scenarios::cycle,
        ),
        ("--restart", scenarios::restart_command),
        ("wrk load with restarts", scenarios::load),
        ("footprint", scenarios::footprint),
        ("idle wake-ups", scenarios::idle),
        ("HUP storm", scenarios::storm),
        (
            "readiness: READY=1 → old worker signalled, restart command",
            scenarios::readiness,
        ),
        (
            "upgrade: replacing start_server's own binary under load",
            scenarios::upgrade,
        ),
    ];
    let wanted = |name: &str| {
        args.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|o| name.contains(o.trim())))
    };
    let mut paced = Vec::new();
    for (i, (name, step)) in steps.iter().enumerate() {
        if wanted(name) {
            let t = Instant::now();
            eprintln!("== {name}");
            step(setup, &plan, &mut results)?;
            eprintln!("   ({:.0} s)", t.elapsed().as_secs_f64());
        }
        // The per-request runs for the picture follow the wrk runs.
        let name = "per-request latency with restarts";
        if i == 4 && wanted(name) {
            let t = Instant::now();
            eprintln!("== {name}");
            paced = scenarios::paced(setup, &plan, &mut results)?;
            eprintln!("   ({:.0} s)", t.elapsed().as_secs_f64());
        }
    }

    let header = header(setup, &plan, started.elapsed().as_secs_f64(), &load_before);
    // A run of the upgrade step alone leaves results.md as it was.
    let only_upgrade = steps
        .iter()
        .all(|(name, _)| !wanted(name) || name.starts_with("upgrade"))
        && !wanted("per-request latency with restarts");
    if let Some(path) = report::write_upgrade(&args.out, &setup.raw, &header, &results, &plan)? {
        println!("Written: {}", path.display());
    }
    if only_upgrade {
        return Ok(());
    }
    let (md, verdicts) = report::write(&args.out, &setup.raw, &header, &results, &plan, &paced)?;
    println!("{md}");
    println!("Targets:");
    for (goal, met) in &verdicts {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        println!("  [{verdict}] {goal}");
    }
    println!(
        "\nWritten: {}/results.md, {}/latency.png (raw data and logs in {}); {:.0} s",
        args.out.display(),
        args.out.display(),
        setup.raw.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The first line of a command's output, or `?`.
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("?")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "?".to_string())
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn header(setup: &Setup, plan: &Plan, seconds: f64, load_before: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "?".to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ours = first_line(&setup.ours.to_string_lossy(), &["--version"]);
    let reference = first_line(&setup.reference.to_string_lossy(), &["--version"]);
    let perl = first_line("perl", &["-e", "print $^V"]);
    let wrk = first_line("wrk", &["-v"]);
    let wrk = wrk.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let load = load_average();
    let extras: String = setup
        .extras
        .iter()
        .map(|(name, binary)| {
            let version = first_line(&binary.to_string_lossy(), &["--version"]);
            format!("; {name}: `{}` (`--version`: {version})", binary.display())
        })
        .collect();
    let (title, every, order) = if setup.extras.is_empty() {
        (
            "ours vs the Perl reference",
            "both",
            "Ours and the reference run the same scenario one after the other, alternating which goes first.",
        )
    } else {
        (
            "ours, the Perl reference and others",
            "all",
            "All run the same scenario one after the other, rotating which goes first. \
             n/a: that implementation could not take part in the step (why: below the table).",
        )
    };
    format!(
        "# start_server benchmark: {title}\n\n\
         {date}{}, {seconds:.0} s (load average at the start: {load_before}, at the end: {load}). Machine: {cpu}, {cores} cores, {mem_gib:.0} GiB, Linux {}. \
         ours: start_server {ours} (release build); reference: Server::Starter {reference} \
         (`{}`, perl {perl}){extras}; {wrk}; worker: `bench_worker` (examples/bench_worker.rs) for {every}.\n\n\
         {order} \
         Cells are median (min–max) over the runs, some with the 90th percentile (p90); `>` marks a run stopped at its time limit. \
         Everything runs on 127.0.0.1.\n\n",
        if plan.startup_runs < Plan::full().startup_runs {
            " (quick pass)"
        } else {
            ""
        },
        kernel.trim(),
        setup.reference.display(),
    )
}
