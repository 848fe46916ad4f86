//! `start_server`: a drop-in replacement for Server::Starter's superdaemon.

/// Writes one lifecycle line to stderr (or the log file once it took over).
macro_rules! log_line {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}

mod cli;
mod control;
mod daemon;
mod envdir;
#[cfg(test)]
mod fuzz;
mod lifecycle;
mod listen;
mod log;
mod notify;
mod options;
mod pidfile;
mod progress;
mod reaper;
mod settings;
mod signals;
#[cfg(test)]
mod simulation;
mod spawn;
mod state;
mod status;
mod supervisor;
mod systemd;
mod upgrade;

use std::io::Write;
use std::process::ExitCode;

use cli::Mode;

fn main() -> ExitCode {
    let args = std::env::args_os().skip(1).collect();
    let posix = std::env::var_os("POSIXLY_CORRECT").is_some();
    let mode = cli::parse(args, posix);
    // Asked by a running start_server, with its command line, whether we
    // can take over its state.
    if let Some(version) = std::env::var_os(upgrade::PROBE_VAR) {
        let command_line = match &mode {
            Ok(Mode::Start(_)) => Ok(()),
            Ok(_) => Err("not a command line that starts a server".to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        let answer = upgrade::answer_probe(&version, command_line);
        let _ = std::io::stdout().write_all(answer.as_bytes());
        return ExitCode::SUCCESS;
    }
    let result = mode.and_then(|mode| match mode {
        Mode::Help => print(&options::usage()),
        Mode::Version => print(&format!("{}\n", env!("CARGO_PKG_VERSION"))),
        Mode::Restart(client) => control::restart(&client),
        Mode::Stop(client) => control::stop(&client),
        Mode::Upgrade(client) => control::upgrade(&client),
        Mode::Start(config) => supervisor::run(*config),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "start_server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn print(text: &str) -> anyhow::Result<()> {
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}
