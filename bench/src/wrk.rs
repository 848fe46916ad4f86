//! wrk as the load generator: started in its own process group, bounded by
//! its own `-d` and by a deadline here, its numbers read from the one line
//! `report.lua` prints.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::instance::{self, Setup};

/// The `done` hook that prints the `RESULT` line.
const REPORT_LUA: &str = include_str!("report.lua");

/// Threads and connections: two threads for two cores; enough connections
/// to keep the worker busy.
const THREADS: &str = "-t2";
const CONNECTIONS: &str = "-c16";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `Connection: close`: a new connection for every request.
    Close,
    /// HTTP/1.1 keep-alive.
    KeepAlive,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Close => "new connection per request",
            Mode::KeepAlive => "keep-alive",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Mode::Close => "close",
            Mode::KeepAlive => "keepalive",
        }
    }
}

/// What wrk counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub requests: u64,
    pub seconds: f64,
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    /// Responses with a status of 400 or more (wrk's `errors.status`).
    pub status_errors: u64,
    pub timeouts: u64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Summary {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }
}

pub struct Wrk {
    child: Child,
    output: PathBuf,
    deadline: Instant,
}

/// Starts wrk against 127.0.0.1:`port` for `duration`.
pub fn start(
    setup: &Setup,
    port: u16,
    mode: Mode,
    duration: Duration,
    tag: &str,
) -> Result<Wrk, String> {
    let script = setup.raw.join("report.lua");
    if !script.exists() {
        fs::write(&script, REPORT_LUA).map_err(|e| format!("{}: {e}", script.display()))?;
    }
    let output = setup.raw.join(format!("{tag}.wrk.txt"));
    let stdout = File::create(&output).map_err(|e| e.to_string())?;
    let stderr = File::create(setup.log(&format!("{tag}.wrk"))).map_err(|e| e.to_string())?;
    let mut command = Command::new("wrk");
    command
        .args([THREADS, CONNECTIONS])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--timeout", "5s", "-s"])
        .arg(&script);
    if mode == Mode::Close {
        command.args(["-H", "Connection: close"]);
    }
    command
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let child = instance::spawn_registered(&mut command).map_err(|e| format!("wrk: {e}"))?;
    Ok(Wrk {
        child,
        output,
        deadline: Instant::now() + duration + Duration::from_secs(15),
    })
}

impl Wrk {
    /// Waits for wrk (killing it past its deadline) and reads its numbers.
    pub fn finish(mut self) -> Result<Summary, String> {
        let pid = self.child.id() as i32;
        let exited = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < self.deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => break None,
            }
        };
        if exited.is_none() {
            instance::kill_group(pid);
            let _ = self.child.wait();
        }
        instance::unregister(pid);
        let text = fs::read_to_string(&self.output).map_err(|e| e.to_string())?;
        match (exited, parse(&text)) {
            (Some(status), Some(summary)) if status.success() => Ok(summary),
            (None, _) => Err("wrk did not finish in time".to_string()),
            (Some(status), _) => Err(format!(
                "wrk failed ({status}); output in {}",
                self.output.display()
            )),
        }
    }
}

fn parse(text: &str) -> Option<Summary> {
    let line = text.lines().find_map(|l| l.strip_prefix("RESULT "))?;
    let field = |name: &str| -> Option<u64> {
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
    };
    let ms = |us: u64| us as f64 / 1000.0;
    Some(Summary {
        requests: field("requests")?,
        seconds: field("duration_us")? as f64 / 1e6,
        connect_errors: field("connect")?,
        read_errors: field("read")?,
        write_errors: field("write")?,
        status_errors: field("status")?,
        timeouts: field("timeout")?,
        p99_ms: ms(field("p99_us")?),
        max_ms: ms(field("max_us")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_result_line() {
        let text = "Running 10s test\nRESULT requests=100 duration_us=2000000 connect=1 read=2 write=3 status=4 timeout=5 p50_us=100 p99_us=2500 max_us=9000\n";
        let s = parse(text).unwrap();
        assert_eq!(s.requests, 100);
        assert_eq!(s.requests_per_second(), 50.0);
        assert_eq!(
            (
                s.connect_errors,
                s.read_errors,
                s.write_errors,
                s.status_errors,
                s.timeouts
            ),
            (1, 2, 3, 4, 5)
        );
        assert_eq!(s.p99_ms, 2.5);
        assert_eq!(s.max_ms, 9.0);
        assert!(parse("no result").is_none());
    }
}
