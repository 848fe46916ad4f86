//! The man page `docs/start_server.1` and the shell completions under
//! `completions/`: every option of `--help` is in the man page, the page
//! renders, and each completion loads in its shell and completes an option.
//! (That the files match `src/options.rs` is checked by the binary's own
//! `generated` tests.)

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Whether `program` is an executable file in a `$PATH` directory.
fn installed(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// What a tool printed, and whether it exited 0.
struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
    what: String,
}

impl Ran {
    fn describe(&self) -> String {
        format!(
            "{}\nexit ok: {}\nstdout:\n{}\nstderr:\n{}",
            self.what, self.ok, self.stdout, self.stderr
        )
    }
}

/// Runs `program args` in `sb`'s directory, with its output in files (so
/// that a full pipe cannot block it), killing it by pid if it is still
/// running after [`TIMEOUT`].
fn run_tool<S: AsRef<OsStr>>(sb: &Sandbox, env: &[(&str, &str)], program: &str, args: &[S]) -> Ran {
    let out = sb.path("tool.out");
    let err = sb.path("tool.err");
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .current_dir(sb.dir())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).expect("create tool.out"))
        .stderr(fs::File::create(&err).expect("create tool.err"));
    let what = format!("{command:?}");
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let ran = Ran {
        ok: status.is_some_and(|s| s.success()),
        stdout: read_lossy(&out),
        stderr: read_lossy(&err),
        what,
    };
    assert!(
        status.is_some(),
        "timed out after {TIMEOUT:?}\n{}",
        ran.describe()
    );
    ran
}

/// The options `--help` lists: the `--name` at the start of its entries.
fn help_options() -> Vec<String> {
    let sb = Sandbox::new();
    let out = sb.run(["--help"]);
    out.assert_success();
    let mut names: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  --"))
        .map(|rest| {
            let end = rest
                .find(|c: char| c != '-' && !c.is_ascii_alphanumeric())
                .unwrap_or(rest.len());
            rest[..end].to_string()
        })
        .collect();
    names.dedup();
    assert!(names.len() >= 19, "only {names:?} in\n{}", out.stdout);
    names
}

#[test]
fn help_gives_an_example_and_the_environment() {
    let sb = Sandbox::new();
    let out = sb.run(["--help"]);
    out.assert_success();
    for needle in [
        "\nExample:\n  start_server --port=",
        "\nEnvironment:\n",
        "SERVER_STARTER_PORT",
        "ENVDIR",
        "KILL_OLD_DELAY",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle:?} missing\n{}",
            out.describe()
        );
    }
}

#[test]
fn man_page_documents_every_option_of_help() {
    let page = fs::read_to_string(repo_file("docs/start_server.1")).expect("docs/start_server.1");
    for name in help_options() {
        let roff = format!("\\fB\\-\\-{}\\fR", name.replace('-', "\\-"));
        assert!(
            page.contains(&format!(".TP\n{roff}")),
            "--{name} is not an entry of docs/start_server.1"
        );
    }
    for section in [
        "NAME",
        "SYNOPSIS",
        "OPTIONS",
        "ENVIRONMENT",
        "SIGNALS",
        "FILES",
        "EXIT STATUS",
        "EXAMPLES",
    ] {
        assert!(
            page.contains(&format!("\n.SH {section}\n")),
            "no {section} section"
        );
    }
}

#[test]
fn man_page_renders_with_man_needs_man() {
    if !installed("man") {
        skip("man is not installed (apt-get install man-db)");
        return;
    }
    let sb = Sandbox::new();
    let page = repo_file("docs/start_server.1");
    let out = run_tool(
        &sb,
        &[("MANWIDTH", "80"), ("MANPAGER", "cat"), ("PAGER", "cat")],
        "man",
        &[OsStr::new("-l"), page.as_os_str()],
    );
    assert!(out.ok && out.stderr.is_empty(), "{}", out.describe());
    for needle in [
        "START_SERVER(1)",
        "--pid-file=FILE",
        "SERVER_STARTER_PORT",
        "SIGUSR1",
        "EXIT STATUS",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle:?} not rendered\n{}",
            out.describe()
        );
    }
}

#[test]
fn man_page_has_no_roff_warnings_needs_groff() {
    if !installed("groff") {
        skip("groff is not installed (apt-get install groff-base)");
        return;
    }
    let sb = Sandbox::new();
    let page = repo_file("docs/start_server.1");
    let out = run_tool(
        &sb,
        &[],
        "groff",
        &[
            OsStr::new("-man"),
            OsStr::new("-Tutf8"),
            OsStr::new("-ww"),
            OsStr::new("-z"),
            page.as_os_str(),
        ],
    );
    assert!(out.ok && out.stderr.is_empty(), "{}", out.describe());
}

#[test]
fn bash_completion_loads_and_completes_needs_bash() {
    if !installed("bash") {
        skip("bash is not installed");
        return;
    }
    let sb = Sandbox::new();
    let script = format!(
        "source '{}' || exit 1; complete -p start_server || exit 1; \
         COMP_WORDS=(start_server --pid); COMP_CWORD=1; _start_server; echo \"words: ${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(start_server --signal-on-hup = TE); COMP_CWORD=3; _start_server; echo \"signals: ${{COMPREPLY[*]}}\"",
        repo_file("completions/start_server.bash").display()
    );
    let syntax = run_tool(
        &sb,
        &[],
        "bash",
        &[
            OsStr::new("-n"),
            repo_file("completions/start_server.bash").as_os_str(),
        ],
    );
    assert!(
        syntax.ok && syntax.stderr.is_empty(),
        "{}",
        syntax.describe()
    );
    let out = run_tool(&sb, &[], "bash", &["--norc", "--noprofile", "-c", &script]);
    assert!(out.ok, "{}", out.describe());
    for line in [
        "complete -o default -F _start_server start_server\n",
        "words: --pid-file=\n",
        "signals: TERM\n",
    ] {
        assert!(
            out.stdout.contains(line),
            "{line:?} missing\n{}",
            out.describe()
        );
    }
}

#[test]
fn zsh_completion_loads_needs_zsh() {
    if !installed("zsh") {
        skip("zsh is not installed");
        return;
    }
    let sb = Sandbox::new();
    let file = repo_file("completions/_start_server");
    let syntax = run_tool(&sb, &[], "zsh", &[OsStr::new("-n"), file.as_os_str()]);
    assert!(
        syntax.ok && syntax.stderr.is_empty(),
        "{}",
        syntax.describe()
    );
    // compinit finds the #compdef line; autoload +X reads the function in.
    let script = format!(
        "fpath=('{}' $fpath); autoload -Uz compinit; compinit -u -D -d '{}'; \
         print -r -- \"compdef: $_comps[start_server]\"; autoload +X _start_server && print loaded",
        repo_file("completions").display(),
        sb.path("zcompdump").display()
    );
    let out = run_tool(
        &sb,
        &[("HOME", &sb.dir().display().to_string())],
        "zsh",
        &["-f", "-c", &script],
    );
    assert!(out.ok, "{}", out.describe());
    assert!(
        out.stdout.contains("compdef: _start_server\nloaded\n"),
        "{}",
        out.describe()
    );
}

#[test]
fn fish_completion_loads_and_completes_needs_fish() {
    if !installed("fish") {
        skip("fish is not installed");
        return;
    }
    let sb = Sandbox::new();
    let script = format!(
        "source '{}'; and complete -C'start_server --pid'; and complete -C'start_server --signal-on-term=T'",
        repo_file("completions/start_server.fish").display()
    );
    let home = sb.dir().display().to_string();
    let out = run_tool(
        &sb,
        &[
            ("HOME", &home),
            ("XDG_CONFIG_HOME", &home),
            ("XDG_DATA_HOME", &home),
        ],
        "fish",
        &["--no-config", "-c", &script],
    );
    assert!(out.ok && out.stderr.is_empty(), "{}", out.describe());
    for line in [
        "--pid-file\twrite our pid to FILE and lock it\n",
        "--signal-on-term=TERM\t",
    ] {
        assert!(
            out.stdout.contains(line),
            "{line:?} missing\n{}",
            out.describe()
        );
    }
}
