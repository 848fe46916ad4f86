//! Command-line parsing (docs/behaviour.md section 1): Getopt::Long compatibility, usage
//! errors, `--help` and `--version`.

use std::ffi::OsString;
use std::fs;

use crate::support::*;

/// The usual files of a sandbox as options, so that errors can be checked
/// to create none of them.
fn file_options(sb: &Sandbox) -> Vec<OsString> {
    let opt = |name: &str, path: std::path::PathBuf| {
        let mut arg = OsString::from(format!("--{name}="));
        arg.push(path);
        arg
    };
    vec![
        opt("pid-file", sb.pid_file()),
        opt("status-file", sb.status_file()),
        opt("log-file", sb.log_file()),
    ]
}

/// Runs `args` plus the file options and `-- test_worker`.
fn run_with_worker(sb: &Sandbox, args: &[&str]) -> Finished {
    let mut all: Vec<OsString> = args.iter().map(OsString::from).collect();
    all.extend(file_options(sb));
    all.push("--".into());
    all.push(test_worker_bin().into());
    sb.run(all)
}

/// Nothing was started and nothing was created on disk.
fn assert_nothing_started(sb: &Sandbox, finished: &Finished) {
    for path in [sb.pid_file(), sb.status_file(), sb.log_file()] {
        assert!(
            !path.exists(),
            "{} was created\n{}",
            path.display(),
            finished.describe()
        );
    }
    let reports = fs::read_dir(sb.tw_dir()).expect("tw dir").count();
    assert_eq!(reports, 0, "a worker was started\n{}", finished.describe());
}

#[test]
fn help_prints_usage_on_stdout_and_exits_0() {
    let sb = Sandbox::new();
    let out = sb.run(["--help"]);
    out.assert_success();
    assert!(
        out.stdout.contains("--port"),
        "no usage on stdout\n{}",
        out.describe()
    );
}

#[test]
fn version_prints_a_version_number_alone_on_a_line() {
    let sb = Sandbox::new();
    let out = sb.run(["--version"]);
    out.assert_success();
    let line = out.stdout.strip_suffix('\n').unwrap_or("");
    assert!(
        !line.is_empty()
            && !line.contains('\n')
            && line
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())),
        "expected a bare version number line on stdout\n{}",
        out.describe()
    );
}

#[test]
fn unknown_option_is_an_error_naming_it() {
    let sb = Sandbox::new();
    let port = format!("--port={}", sb.host_port());
    let out = run_with_worker(&sb, &[&port, "--frobnicate"]);
    out.assert_usage_error("frobnicate");
    assert_nothing_started(&sb, &out);
}

#[test]
fn non_integer_values_are_errors_naming_the_option() {
    for option in [
        "interval",
        "backlog",
        "kill-old-delay",
        "auto-restart-interval",
    ] {
        let sb = Sandbox::new();
        let port = format!("--port={}", sb.host_port());
        let out = run_with_worker(&sb, &[&port, &format!("--{option}=abc")]);
        out.assert_usage_error(option);
        assert_nothing_started(&sb, &out);
    }
}

#[test]
fn missing_option_value_is_an_error_naming_it() {
    let sb = Sandbox::new();
    let out = sb.run([format!("--port={}", sb.host_port()), "--pid-file".into()]);
    out.assert_usage_error("pid-file");
    assert_nothing_started(&sb, &out);
}

#[test]
fn value_given_to_a_flag_is_an_error_naming_it() {
    let sb = Sandbox::new();
    let port = format!("--port={}", sb.host_port());
    let out = run_with_worker(&sb, &[&port, "--enable-auto-restart=1"]);
    out.assert_usage_error("enable-auto-restart");
    assert_nothing_started(&sb, &out);
}

#[test]
fn ambiguous_prefix_is_an_error_naming_the_candidates() {
    let sb = Sandbox::new();
    let port = format!("--port={}", sb.host_port());
    let out = run_with_worker(&sb, &[&port, "--s=1"]);
    out.assert_usage_error("status-file");
    out.assert_usage_error("signal-on-hup");
    assert_nothing_started(&sb, &out);
}

#[test]
fn unique_prefixes_are_accepted() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .no_port()
        .no_pid_file()
        .no_status_file()
        .default_interval()
        .args([
            format!("--po={}", sb.host_port()),
            "--int=0".into(),
            format!("--pid={}", sb.pid_file().display()),
            format!("--stat={}", sb.status_file().display()),
        ])
        .spawn();
    let worker = srv.wait_current(1);
    assert_eq!(
        fs::read_to_string(sb.pid_file()).ok(),
        Some(format!("{}\n", srv.pid()))
    );
    srv.wait_serving(worker.pid);
}

#[test]
fn single_dash_long_options_are_accepted() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .no_port()
        .no_status_file()
        .default_interval()
        .args([
            format!("-port={}", sb.host_port()),
            "-interval=0".into(),
            format!("-status-file={}", sb.status_file().display()),
        ])
        .spawn();
    let worker = srv.wait_current(1);
    srv.wait_serving(worker.pid);
}

#[test]
fn option_values_may_be_separate_words() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .no_port()
        .no_status_file()
        .default_interval()
        .args([
            "--port".into(),
            sb.host_port(),
            "--interval".into(),
            "0".into(),
            "--status-file".into(),
            sb.status_file().display().to_string(),
        ])
        .spawn();
    let worker = srv.wait_current(1);
    srv.wait_serving(worker.pid);
}

#[test]
fn repeated_option_last_one_wins() {
    let sb = Sandbox::new();
    let workdir = sb.path("workdir");
    fs::create_dir(&workdir).expect("mkdir");
    let srv = sb
        .server()
        .arg("--dir=/nonexistent")
        .arg(format!("--dir={}", workdir.display()))
        .spawn();
    let worker = srv.wait_current(1);
    assert_eq!(worker.cwd(), workdir.to_str().expect("utf-8 path"));
}

#[test]
fn missing_program_is_an_error() {
    let sb = Sandbox::new();
    let mut args: Vec<OsString> = vec![format!("--port={}", sb.host_port()).into()];
    args.extend(file_options(&sb));
    let out = sb.run(args);
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "expected a non-zero exit\n{}",
        out.describe()
    );
    assert!(
        !out.stderr.is_empty(),
        "no error message\n{}",
        out.describe()
    );
    assert_nothing_started(&sb, &out);
}

#[test]
fn daemonize_without_log_file_is_an_error() {
    let sb = Sandbox::new();
    let out = sb.run([
        format!("--port={}", sb.host_port()),
        format!("--pid-file={}", sb.pid_file().display()),
        "--daemonize".into(),
        "--".into(),
        test_worker_bin().display().to_string(),
    ]);
    out.assert_failure("log-file");
    assert_nothing_started(&sb, &out);
}

#[test]
fn options_after_the_program_name_are_permuted() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .raw_args([
            test_worker_bin().display().to_string(),
            "first".into(),
            format!("--port={}", sb.host_port()),
            "second".into(),
            "--interval=0".into(),
            format!("--status-file={}", sb.status_file().display()),
        ])
        .spawn();
    let worker = srv.wait_current(1);
    assert_eq!(
        worker.argv(),
        [
            test_worker_bin().display().to_string(),
            "first".into(),
            "second".into()
        ]
    );
    srv.wait_serving(worker.pid);
}

#[test]
fn words_after_dashdash_are_the_workers() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .program([
            test_worker_bin().display().to_string(),
            "--port=nonsense".into(),
            "-x".into(),
            "--".into(),
        ])
        .spawn();
    let worker = srv.wait_current(1);
    assert_eq!(
        worker.argv(),
        [
            test_worker_bin().display().to_string(),
            "--port=nonsense".into(),
            "-x".into(),
            "--".into()
        ]
    );
    srv.wait_serving(worker.pid);
}

#[test]
fn a_permuted_option_meant_for_the_program_is_an_error() {
    // `start_server --port=80 plackup -s x`: `-s` is parsed as ours, and is
    // an ambiguous abbreviation.
    let sb = Sandbox::new();
    let out = sb.run([
        format!("--port={}", sb.host_port()),
        test_worker_bin().display().to_string(),
        "-s".into(),
        "x".into(),
    ]);
    out.assert_usage_error("status-file");
    assert!(fs::read_dir(sb.tw_dir()).expect("tw dir").next().is_none());
}

#[test]
fn posixly_correct_stops_at_the_first_non_option() {
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .env("POSIXLY_CORRECT", "1")
        .raw_args([
            format!("--port={}", sb.host_port()),
            "--interval=0".into(),
            format!("--status-file={}", sb.status_file().display()),
            test_worker_bin().display().to_string(),
            "--interval=5".into(),
            "-s".into(),
        ])
        .spawn();
    let worker = srv.wait_current(1);
    assert_eq!(
        worker.argv(),
        [
            test_worker_bin().display().to_string(),
            "--interval=5".into(),
            "-s".into()
        ]
    );
    srv.wait_serving(worker.pid);
}

#[test]
fn posixly_correct_refuses_abbreviations() {
    let sb = Sandbox::new();
    let port = format!("--port={}", sb.host_port());
    let pid = format!("--pid={}", sb.pid_file().display());
    let out = sb.run_env(
        &[("POSIXLY_CORRECT", "1")],
        [
            port.as_str(),
            pid.as_str(),
            "--",
            test_worker_bin().to_str().expect("utf-8"),
        ],
    );
    out.assert_usage_error("pid");
    assert_nothing_started(&sb, &out);
}

#[test]
fn unknown_signal_name_is_a_startup_error() {
    // docs/behaviour.md section 8: the reference accepts any name and dies at the first
    // restart.
    for option in ["--signal-on-hup=FOO", "--signal-on-term=SIGBOGUS"] {
        let sb = Sandbox::new();
        let port = format!("--port={}", sb.host_port());
        let out = run_with_worker(&sb, &[&port, option]);
        let name = option.split_once('=').expect("has a value").1;
        out.assert_failure(name);
        assert_nothing_started(&sb, &out);
    }
}

#[test]
fn fractional_seconds_are_accepted() {
    // docs/behaviour.md section 8 (extension): the reference takes whole seconds only.
    let sb = Sandbox::new();
    let srv = sb
        .server()
        .interval("0.2")
        .args(["--kill-old-delay=0.1", "--auto-restart-interval=100.5"])
        .spawn();
    let worker = srv.wait_current(1);
    srv.wait_serving(worker.pid);
}
