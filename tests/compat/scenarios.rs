//! The scenarios, by topic. Each runs on both binaries; `differs` names
//! the documented differences (COMPATIBILITY.md) it shows.
//!
//! Conventions: `{P1}`... are free ports, `{T}` the sandbox, `{W}` the test
//! worker, `{STATUS}`, `{PID}`, `{LOG}`, `{ENVDIR}`, `{SOCK}` files in the
//! sandbox. Waits are on observable facts (a log line, the status file, a
//! worker's report or signals), so that the order of events is the same on
//! both sides, and each is followed by a short pause (`run::SETTLE`); the
//! few sleeps place a signal at a chosen moment (0.35 s into a start check,
//! say) or give a bounded behaviour time to show. `--interval=1` gives
//! every start check a whole second, well clear of scheduling noise.

use crate::scenario::{
    Prepare, SIGHUP, SIGINT, SIGKILL, SIGTERM, Scenario, Step, Step::*, client, ms, scenario, secs,
};

/// The usual options: one TCP port, a one-second start check, status and
/// pid files.
const STD: [&str; 4] = [
    "--port=127.0.0.1:{P1}",
    "--interval=1",
    "--status-file={STATUS}",
    "--pid-file={PID}",
];

/// `STD`, then `extra`, then `-- {W}`.
fn std_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args: Vec<&'static str> = STD.to_vec();
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "{W}"]);
    args
}

/// A scenario with the usual options plus `extra`.
fn standard(name: &'static str, extra: &[&'static str]) -> Scenario {
    scenario(name, &std_args(extra))
}

/// The usual options with `{T}/app`, a script that execs the worker with
/// its stderr thrown away, as the program.
fn quiet_app(name: &'static str, extra: &[&'static str]) -> Scenario {
    let mut args: Vec<&'static str> = STD.to_vec();
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "{T}/app"]);
    scenario(name, &args).prepare(Prepare::QuietScript("{T}/app"))
}

/// SIGTERM to start_server, and its exit.
fn stop() -> [Step; 2] {
    [Signal(SIGTERM), Exit(secs(8))]
}

/// Up, a snapshot of the files, and a normal stop.
fn up_and_stop() -> Vec<Step> {
    vec![Status(&[1]), Snapshot, Signal(SIGTERM), Exit(secs(8))]
}

/// Every scenario.
pub fn all() -> Vec<Scenario> {
    [
        sockets(),
        workers(),
        restarts(),
        shutdown(),
        files(),
        clients(),
        envdir(),
        modes(),
    ]
    .concat()
}

/// `--port` and `--path` forms (docs/behaviour.md section 2).
pub fn sockets() -> Vec<Scenario> {
    let plain = |name, args: &[&'static str]| {
        let mut all = vec!["--interval=1", "--status-file={STATUS}"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--", "{W}"]);
        scenario(name, &all).steps(up_and_stop())
    };
    vec![
        plain("port_bare", &["--port={P1}"]),
        plain("port_ipv4_host", &["--port=127.0.0.1:{P1}"]),
        plain("port_localhost", &["--port=localhost:{P1}"]),
        plain("port_ipv6", &["--port=[::1]:{P1}"]),
        plain("port_ipv4_in_brackets", &["--port=[127.0.0.1]:{P1}"]),
        plain(
            "port_udp_forms",
            &[
                "--port=u{P1}",
                "--port=127.0.0.1:u{P2}",
                "--port=[::1]:u{P3}",
            ],
        )
        .ports(3),
        plain(
            "port_white_space",
            &[
                "--port= {P1} ",
                "--port=127.0.0.1: {P2} ",
                "--port=[::1] :{P3}",
            ],
        )
        .ports(3),
        plain("port_host_trailing_space", &["--port=127.0.0.1 :{P1}"])
            .differs(&["host-trailing-space"]),
        plain(
            "port_pinned_fds",
            &["--port={P1}=5", "--port=127.0.0.1:u{P2}=7", "--path={SOCK}"],
        )
        .pinned(&[5, 7]),
        // Each socket pinned where it was created (ours creates its first
        // socket on 3, the reference on 4: both cases are covered).
        plain(
            "port_pinned_to_own_fd",
            &["--port=127.0.0.1:{P1}=3", "--port=127.0.0.1:{P2}=4"],
        )
        .pinned(&[3, 4])
        .differs(&["pin-own-fd"]),
        plain("port_pinned_to_stdout", &["--port=127.0.0.1:{P1}=1"])
            .pinned(&[1])
            .differs(&["pin-checks"]),
        // The reference's workers find two keys on fd 6 and never start.
        plain(
            "port_pinned_twice",
            &["--port=127.0.0.1:{P1}=6", "--port=127.0.0.1:{P2}=6"],
        )
        .replace_steps([Log("starting new worker", 1), Sleep(ms(500))])
        .steps(stop())
        .pinned(&[6])
        .differs(&["pin-checks"]),
        plain(
            "ports_then_paths_in_order",
            &[
                "--path={T}/a.sock",
                "--port=127.0.0.1:{P1}",
                "--path={T}/b.sock",
                "--port=u{P2}",
            ],
        ),
        plain("no_ports", &[]),
        plain("ipv6_without_brackets", &["--port=::1:{P1}"]).differs(&["ipv6-brackets"]),
        // 65536 + {P1}: the reference warns and binds {P1}.
        plain("port_out_of_range", &["--port={P1+65536}"]).differs(&["port-out-of-range"]),
        plain("ipv6_unbalanced_bracket", &["--port=[::1:{P1}"]).differs(&["ipv6-brackets"]),
        plain("invalid_port", &["--port=abc"]).differs(&["fatal-errors"]),
        plain("port_in_use", &["--port=127.0.0.1:{P1}"])
            .prepare(Prepare::BusyPort(1))
            .differs(&["fatal-errors"]),
        plain("backlog", &["--port=127.0.0.1:{P1}", "--backlog=7"]),
        plain("unix_socket", &["--path={SOCK}"]),
        plain("unix_socket_stale", &["--path={SOCK}"]).prepare(Prepare::StaleSocket("{SOCK}")),
        plain("unix_socket_path_is_a_file", &["--path={SOCK}"])
            .prepare(Prepare::File("{SOCK}", "precious\n"))
            .differs(&["path-not-a-socket"]),
        plain("unix_socket_live_instance", &["--path={SOCK}"])
            .prepare(Prepare::LiveSocket("{SOCK}"))
            .differs(&["path-live-instance"]),
    ]
}

/// Starting workers (docs/behaviour.md section 3).
pub fn workers() -> Vec<Scenario> {
    vec![
        standard("dir", &["--dir={T}/wd"])
            .prepare(Prepare::Dir("{T}/wd"))
            .steps(up_and_stop()),
        standard("dir_missing_then_created", &["--dir={T}/wd"])
            .steps([
                Log("seems to have failed to start", 1),
                Prepare(Prepare::Dir("{T}/wd")),
                Snapshot,
                Report(2),
                Status(&[2]),
            ])
            .steps(stop())
            .differs(&["chdir-failure", "failed-child-cleanup"]),
        scenario(
            "exec_failure_then_fixed",
            &[
                "--port=127.0.0.1:{P1}",
                "--interval=1",
                "--status-file={STATUS}",
                "--pid-file={PID}",
                "--path={SOCK}",
                "--",
                "{T}/app",
                "arg",
            ],
        )
        .steps([
            Log("seems to have failed to start", 1),
            Prepare(Prepare::Script("{T}/app")),
            Snapshot,
            Report(2),
            Status(&[2]),
        ])
        .steps(stop())
        .differs(&["exec-failure-text", "failed-child-cleanup"]),
        scenario(
            "program_from_path_and_arguments",
            &[
                "--port=127.0.0.1:{P1}",
                "--interval=1",
                "--status-file={STATUS}",
                "app",
                "a1",
                "--port=127.0.0.1:{P2}",
                "a2",
                "--",
                "--port=3",
                "--",
                "",
            ],
        )
        .prepare(Prepare::Script("{T}/bin/app"))
        .env("PATH", "{T}/bin:/usr/bin:/bin")
        .steps(up_and_stop()),
        standard("environment_passes_through", &[])
            .env("APP_SETTING", "a b=c")
            .env("SERVER_STARTER_GENERATION", "41")
            .env("SERVER_STARTER_PORT", "stale")
            .steps(up_and_stop()),
        standard("ignored_signals_at_start", &[])
            .shell("trap '' QUIT USR2; exec \"$@\"")
            .steps(up_and_stop())
            .differs(&["inherited-ignored-signals"]),
        scenario(
            "interval_zero_crash_loop",
            &["--interval=0", "--status-file={STATUS}", "--", "{W}"],
        )
        .env("TW_EXIT_IMMEDIATELY", "3")
        .steps([Sleep(ms(1000))])
        .steps(stop())
        .differs(&["crash-loop-rate"]),
        standard("interval_negative", &[])
            .map_args(|a| {
                if a == "--interval=1" {
                    "--interval=-1".into()
                } else {
                    a
                }
            })
            .steps([Report(1), Status(&[1]), Snapshot])
            .steps(stop())
            .differs(&["negative-numbers"]),
    ]
}

/// Restarts: HUP, failures, crashes, delays (docs/behaviour.md section 4).
pub fn restarts() -> Vec<Scenario> {
    vec![
        standard("restart_by_hup", &[]).steps([
            Status(&[1]),
            Signal(SIGHUP),
            Log("killing old workers", 1),
            Status(&[2]),
            Signal(SIGHUP),
            Log("killing old workers", 2),
            Status(&[3]),
            Signal(SIGTERM),
            Exit(secs(8)),
        ]),
        standard("restart_signal_on_hup_usr1", &["--signal-on-hup=usr1"])
            .env("TW_EXIT_ON", "USR1,TERM")
            .steps([Status(&[1]), Signal(SIGHUP), Status(&[2])])
            .steps(stop()),
        standard(
            "restart_signal_on_hup_sig_prefix",
            &["--signal-on-hup=SigUsr1"],
        )
        .env("TW_EXIT_ON", "USR1,TERM")
        .steps([Status(&[1]), Signal(SIGHUP), Status(&[2])])
        .steps(stop()),
        standard("restart_signal_on_hup_number", &["--signal-on-hup=10"])
            .env("TW_EXIT_ON", "USR1,TERM")
            .steps([Status(&[1]), Signal(SIGHUP), Status(&[2])])
            .steps(stop()),
        standard("restart_old_worker_stays", &["--signal-on-hup=USR1"])
            .steps([
                Status(&[1]),
                Signal(SIGHUP),
                Signaled(1, 1),
                Snapshot,
                KillWorker(1, SIGKILL),
                Status(&[2]),
            ])
            .steps(stop()),
        quiet_app("restart_failed_generation", &["--envdir={ENVDIR}"])
            .envdir(&[])
            .steps([
                Status(&[1]),
                EnvSet("TW_FAIL_IF_GEN_BELOW", "3"),
                Signal(SIGHUP),
                Log("seems to have failed to start", 1),
                Status(&[3]),
            ])
            .steps(stop()),
        // Generations 2 to 4 fail: generation 1 keeps serving meanwhile.
        quiet_app(
            "restart_never_signals_old_before_new_is_up",
            &["--envdir={ENVDIR}"],
        )
        .envdir(&[])
        .steps([
            Status(&[1]),
            EnvSet("TW_FAIL_IF_GEN_BELOW", "5"),
            Signal(SIGHUP),
            Log("seems to have failed to start", 3),
            Snapshot,
            Status(&[5]),
        ])
        .steps(stop()),
        // The envdir is fixed while a restart keeps failing.
        standard("envdir_fixed_during_failed_restart", &["--envdir={ENVDIR}"])
            .envdir(&[])
            .steps([
                Status(&[1]),
                EnvSet("TW_EXIT_IMMEDIATELY", "4"),
                Signal(SIGHUP),
                Log("seems to have failed to start", 2),
                EnvRemove("TW_EXIT_IMMEDIATELY"),
                Sleep(ms(2500)),
            ])
            .steps(stop())
            .differs(&["envdir-during-retries"]),
        standard("crash_restart_by_kill", &[])
            .steps([Status(&[1]), KillWorker(1, SIGKILL), Status(&[2])])
            .steps(stop()),
        // Generation 2 exits with status 3 by itself, 1.5 s after it
        // started (the knobs are gone from the envdir before generation 3).
        standard("crash_restart_by_exit_code", &["--envdir={ENVDIR}"])
            .envdir(&[])
            .steps([
                Status(&[1]),
                EnvSet("TW_EXIT_AFTER_MS", "1500"),
                EnvSet("TW_EXIT_CODE", "3"),
                Signal(SIGHUP),
                Status(&[2]),
                EnvRemove("TW_EXIT_AFTER_MS"),
                EnvRemove("TW_EXIT_CODE"),
                Log("died unexpectedly", 1),
                Status(&[3]),
            ])
            .steps(stop()),
        standard("kill_old_delay", &["--kill-old-delay=2"])
            .steps([
                Status(&[1]),
                Signal(SIGHUP),
                Log("sleeping 2 secs", 1),
                Snapshot,
                Log("died, status:", 1),
            ])
            .steps(stop()),
        standard(
            "auto_restart",
            &[
                "--enable-auto-restart",
                "--auto-restart-interval=2",
                "--kill-old-delay=0",
            ],
        )
        .steps([
            Status(&[1]),
            Log("autorestart triggered", 1),
            Log("died, status:", 1),
        ])
        .steps(stop()),
        // The period is raised once the first auto-restart has begun, so
        // that the next one does not start during the five seconds.
        standard(
            "auto_restart_default_kill_delay",
            &["--enable-auto-restart", "--envdir={ENVDIR}"],
        )
        .envdir(&[("AUTO_RESTART_INTERVAL", "1")])
        .steps([
            Status(&[1]),
            Log("autorestart triggered", 1),
            EnvSet("AUTO_RESTART_INTERVAL", "100"),
            Log("sleeping 5 secs", 1),
            Log("died, status:", 1),
        ])
        .steps(stop()),
        // A period shorter than the kill-old delay: the next auto-restart
        // is due as soon as the old worker is gone.
        standard(
            "auto_restart_due_after_kill_old_delay",
            &[
                "--enable-auto-restart",
                "--auto-restart-interval=1",
                "--kill-old-delay=2",
                "--envdir={ENVDIR}",
            ],
        )
        .envdir(&[])
        .steps([
            Status(&[1]),
            Log("autorestart triggered", 1),
            Log("died, status:", 1),
            Log("autorestart triggered", 2),
            EnvSet("AUTO_RESTART_INTERVAL", "100"),
            Log("died, status:", 2),
        ])
        .steps(stop()),
        standard(
            "auto_restart_forced",
            &[
                "--enable-auto-restart",
                "--auto-restart-interval=1",
                "--kill-old-delay=0",
                "--signal-on-hup=USR1",
            ],
        )
        .steps([
            Status(&[1]),
            Log("autorestart triggered (interval=1)", 1),
            Log("killing old workers", 1),
            Log("autorestart triggered (forced, interval=1)", 1),
            Signaled(1, 2),
            Signaled(2, 1),
        ])
        .steps(stop())
        .racy_shutdown(),
        // A HUP 0.5 s into a three-second kill-old delay; the delay of the
        // restart it causes is set to 0 through the envdir.
        standard("hup_during_kill_old_delay", &["--envdir={ENVDIR}"])
            .envdir(&[("KILL_OLD_DELAY", "3")])
            .steps([
                Status(&[1]),
                Signal(SIGHUP),
                Log("sleeping 3 secs", 1),
                Sleep(ms(250)),
                Signal(SIGHUP),
                EnvSet("KILL_OLD_DELAY", "0"),
                Log("killing old workers", 2),
                Status(&[3]),
            ])
            .steps(stop())
            .differs(&["signal-during-kill-old-delay", "reaped-during-start-check"]),
        standard("hup_during_start_check", &[])
            .steps([
                Status(&[1]),
                Signal(SIGHUP),
                // 0.3 s into generation 2's start check (with the pause
                // after each wait).
                Log("starting new worker", 2),
                Sleep(ms(50)),
                Signal(SIGHUP),
                Log("killing old workers", 2),
                Status(&[3]),
            ])
            .steps(stop())
            .differs(&["hup-during-start-check"]),
        standard("hups_coalesce", &[])
            .steps([
                Status(&[1]),
                Signal(SIGHUP),
                Log("starting new worker", 2),
                Signal(SIGHUP),
                Sleep(ms(200)),
                Signal(SIGHUP),
                Sleep(ms(3500)),
            ])
            .steps(stop())
            .differs(&["hup-coalesce"]),
        // --interval=0 for speed: ten generations in well under a second.
        standard("status_file_sorted_numerically", &["--envdir={ENVDIR}"])
            .map_args(|a| {
                if a == "--interval=1" {
                    "--interval=0".into()
                } else {
                    a
                }
            })
            .quick()
            .envdir(&[("KILL_OLD_DELAY", "0")])
            .steps(status_sort_steps())
            .steps(stop())
            .differs(&["status-sort"]),
    ]
}

/// Nine quick restarts, then a tenth with a one-second kill-old delay, so
/// that the status file holds generations 9 and 10 for a while.
fn status_sort_steps() -> Vec<Step> {
    let mut steps = vec![Report(1), Status(&[1])];
    // Each restart finishes (the old worker is reaped) before the next.
    for n in 1..=8 {
        steps.extend([Signal(SIGHUP), Log("died, status:", n)]);
    }
    steps.extend([
        Status(&[9]),
        EnvSet("KILL_OLD_DELAY", "1"),
        Sleep(ms(100)),
        Signal(SIGHUP),
        Log("sleeping 1 secs", 1),
        Snapshot,
        Log("died, status:", 9),
        Status(&[10]),
    ]);
    steps
}

/// Shutting down (docs/behaviour.md section 4).
pub fn shutdown() -> Vec<Scenario> {
    vec![
        standard("shutdown_by_term", &[]).steps(up_and_stop()),
        standard("shutdown_by_int", &["--signal-on-term=USR1"]).steps([
            Status(&[1]),
            Signal(SIGINT),
            Exit(secs(8)),
        ]),
        standard("shutdown_signal_on_term", &["--signal-on-term=usr1"])
            .env("TW_EXIT_ON", "USR1")
            .steps(up_and_stop()),
        standard("shutdown_with_an_old_worker", &["--signal-on-hup=USR1"])
            .steps([
                Status(&[1]),
                Signal(SIGHUP),
                Status(&[1, 2]),
                Signaled(1, 1),
            ])
            .steps(stop())
            .racy_shutdown(),
        standard("shutdown_waits_for_slow_workers", &["--envdir={ENVDIR}"])
            .envdir(&[("TW_IGNORE_TERM", "1")])
            .steps([
                Status(&[1]),
                Signal(SIGTERM),
                Log("received TERM", 1),
                Sleep(ms(500)),
                Snapshot,
                KillWorker(1, SIGKILL),
                Exit(secs(8)),
            ]),
        standard("term_during_start_check", &[])
            .steps([
                Status(&[1]),
                Signal(SIGHUP),
                Log("starting new worker", 2),
                Sleep(ms(50)),
                Signal(SIGTERM),
                Exit(secs(8)),
            ])
            .racy_shutdown()
            .differs(&["term-during-start-check"]),
        standard("int_during_start_check", &[])
            .steps([
                Status(&[1]),
                Signal(SIGHUP),
                Log("starting new worker", 2),
                Sleep(ms(50)),
                Signal(SIGINT),
                Exit(secs(8)),
            ])
            .racy_shutdown()
            .differs(&["term-during-start-check"]),
        standard(
            "term_during_kill_old_delay",
            &["--kill-old-delay=3", "--signal-on-hup=USR1"],
        )
        .steps([
            Status(&[1]),
            Signal(SIGHUP),
            Log("sleeping 3 secs", 1),
            Sleep(ms(500)),
            Signal(SIGTERM),
            Exit(secs(8)),
        ])
        .racy_shutdown()
        .differs(&["term-during-kill-old-delay"]),
        standard("orphan_of_a_worker", &[])
            .env("TW_ORPHAN_MS", "300")
            .subreaper()
            .steps([Status(&[1]), Sleep(ms(800))])
            .steps(stop())
            .differs(&["orphans"]),
        standard("unknown_signal_on_hup", &["--signal-on-hup=BOGUS"])
            .steps([Status(&[1]), Signal(SIGHUP), Sleep(ms(1500))])
            .steps(stop())
            .differs(&["unknown-signal"]),
    ]
}

/// Status file, pid file, log file, daemon (docs/behaviour.md section 5).
pub fn files() -> Vec<Scenario> {
    vec![
        standard("status_file_unwritable", &[])
            .steps([Log("starting new worker", 1), Sleep(ms(1500)), Snapshot])
            .steps(stop())
            .differs(&["status-write-failure"])
            .map_args(|a| {
                if a == "--status-file={STATUS}" {
                    "--status-file={T}/missing/status".to_string()
                } else {
                    a
                }
            }),
        standard("pid_file_second_instance", &[])
            .steps([
                Status(&[1]),
                client(
                    &[
                        "--port=127.0.0.1:{P2}",
                        "--pid-file={PID}",
                        "--interval=1",
                        "--",
                        "{W}",
                    ],
                    secs(2),
                ),
                Snapshot,
            ])
            .steps(stop())
            .differs(&["pid-file-second-instance"]),
        standard("log_file", &["--log-file={LOG}"])
            .steps([Status(&[1]), Snapshot, Signal(SIGHUP), Status(&[2])])
            .steps(stop()),
        standard("log_file_pipe", &["--log-file=| cat >> {T}/piped"])
            .steps([Status(&[1]), Signal(SIGHUP), Status(&[2])])
            .steps(stop()),
        standard("log_file_reopen_on_usr1", &["--log-file={LOG}"])
            .steps([Status(&[1]), Signal(libc::SIGUSR1), Sleep(ms(500))])
            .steps(stop())
            .differs(&["usr1-log-reopen"]),
        standard("upgrade_on_usr2", &["--log-file={LOG}"])
            .steps([Status(&[1]), Signal(libc::SIGUSR2), Sleep(ms(500))])
            .steps(stop())
            .differs(&["usr2-upgrade"]),
        standard("log_file_cannot_open", &["--log-file={T}/missing/log"])
            .steps(up_and_stop())
            .differs(&["fatal-errors"]),
        standard("daemonize", &["--daemonize", "--log-file={LOG}"])
            .steps([Status(&[1]), Snapshot, Signal(SIGHUP), Status(&[2])])
            .steps(stop()),
        scenario(
            "daemonize_socket_on_stdin",
            &[
                "--port=127.0.0.1:{P1}=0",
                "--interval=1",
                "--status-file={STATUS}",
                "--pid-file={PID}",
                "--daemonize",
                "--log-file={LOG}",
                "--",
                "{W}",
            ],
        )
        .pinned(&[0])
        .steps(up_and_stop()),
        standard("daemonize_without_log_file", &["--daemonize"])
            .steps(up_and_stop())
            .differs(&["fatal-errors"]),
        standard(
            "daemonize_failure_after_fork",
            &["--daemonize", "--log-file={LOG}"],
        )
        .map_args(|a| {
            if a == "--pid-file={PID}" {
                "--pid-file={T}/missing/pid".to_string()
            } else {
                a
            }
        })
        .steps([Exit(secs(3)), Sleep(ms(300))])
        .differs(&["daemonize-waits"]),
    ]
}

/// `--restart` and `--stop` (docs/behaviour.md section 6).
pub fn clients() -> Vec<Scenario> {
    vec![
        standard("restart_client", &[])
            .steps([
                Status(&[1]),
                client(
                    &["--restart", "--pid-file={PID}", "--status-file={STATUS}"],
                    secs(8),
                ),
                Snapshot,
            ])
            .steps(stop()),
        quiet_app("restart_client_after_failed_start", &["--envdir={ENVDIR}"])
            .envdir(&[])
            .steps([
                Status(&[1]),
                EnvSet("TW_FAIL_IF_GEN_BELOW", "3"),
                client(
                    &["--restart", "--pid-file={PID}", "--status-file={STATUS}"],
                    secs(4),
                ),
                Status(&[3]),
            ])
            .steps(stop())
            .differs(&["restart-client-failed-start"]),
        quiet_app("restart_client_gives_up", &["--envdir={ENVDIR}"])
            .envdir(&[])
            .steps([
                Status(&[1]),
                EnvSet("TW_FAIL_IF_GEN_BELOW", "100"),
                client(
                    &["--restart", "--pid-file={PID}", "--status-file={STATUS}"],
                    secs(6),
                ),
                Status(&[1]),
            ])
            .steps(stop())
            .differs(&["restart-client-gives-up"]),
        standard("restart_client_needs_both_files", &[])
            .steps([
                Status(&[1]),
                client(&["--restart", "--pid-file={PID}"], secs(5)),
                client(&["--restart", "--status-file={STATUS}"], secs(5)),
            ])
            .steps(stop())
            .differs(&["fatal-errors"]),
        standard("stop_client", &[]).steps([
            Status(&[1]),
            client(&["--stop", "--pid-file={PID}"], secs(8)),
            Snapshot,
            Exit(secs(1)),
        ]),
        standard("stop_client_needs_pid_file", &[])
            .steps([Status(&[1]), client(&["--stop"], secs(5))])
            .steps(stop())
            .differs(&["fatal-errors"]),
        scenario("stop_client_missing_pid_file", &["--version"])
            .steps([
                Exit(secs(5)),
                client(&["--stop", "--pid-file={PID}"], secs(5)),
                client(
                    &["--restart", "--pid-file={PID}", "--status-file={STATUS}"],
                    secs(5),
                ),
            ])
            .differs(&["version", "fatal-errors"]),
        scenario("restart_client_stale_pid_file", &["--version"])
            .prepare(Prepare::Sleeper("{PID}"))
            .prepare(Prepare::File("{STATUS}", "1:1\n"))
            .steps([
                Exit(secs(5)),
                client(
                    &["--restart", "--pid-file={PID}", "--status-file={STATUS}"],
                    secs(3),
                ),
                Snapshot,
            ])
            .differs(&["version", "client-checks-lock"]),
        scenario("stop_client_stale_pid_file", &["--version"])
            .prepare(Prepare::Sleeper("{PID}"))
            .steps([
                Exit(secs(5)),
                client(&["--stop", "--pid-file={PID}"], secs(5)),
                Sleep(ms(200)),
                Snapshot,
            ])
            .differs(&["version", "client-checks-lock"]),
    ]
}

/// The envdir (docs/behaviour.md sections 1 and 3).
pub fn envdir() -> Vec<Scenario> {
    vec![
        standard("envdir_at_start", &["--envdir={ENVDIR}"])
            .envdir(&[
                ("PLAIN", "value"),
                ("TWO_LINES", "first\nsecond\n"),
                ("SPACES", "  padded  \n"),
                ("EMPTY_LINE", "\n"),
                (".hidden", "x"),
            ])
            .steps(up_and_stop()),
        standard("envdir_empty_file", &["--envdir={ENVDIR}"])
            .envdir(&[("EMPTY_FILE", "")])
            .steps(up_and_stop())
            .differs(&["envdir-empty-file"]),
        standard("envdir_from_environment", &[])
            .env("ENVDIR", "{ENVDIR}")
            .envdir(&[("FROM_ENVDIR", "yes")])
            .steps(up_and_stop()),
        standard("envdir_changes_between_generations", &["--envdir={ENVDIR}"])
            .envdir(&[("KEEP", "1"), ("CHANGE", "old")])
            .steps([
                Status(&[1]),
                EnvSet("CHANGE", "new"),
                EnvSet("ADDED", "later"),
                Signal(SIGHUP),
                Status(&[2]),
                EnvRemove("ADDED"),
                Signal(SIGHUP),
                Status(&[3]),
            ])
            .steps(stop()),
        standard("envdir_variable_removed", &["--envdir={ENVDIR}"])
            .envdir(&[("GOES_AWAY", "1")])
            .steps([
                Status(&[1]),
                EnvRemove("GOES_AWAY"),
                Signal(SIGHUP),
                Status(&[2]),
            ])
            .steps(stop())
            .differs(&["envdir-removed-variable"]),
        standard(
            "envdir_overrides_options",
            &["--envdir={ENVDIR}", "--kill-old-delay=0"],
        )
        .envdir(&[("KILL_OLD_DELAY", "1")])
        .steps([
            Status(&[1]),
            Signal(SIGHUP),
            Log("sleeping 1 secs", 1),
            Status(&[2]),
        ])
        .steps(stop()),
        standard("envdir_turns_auto_restart_on", &["--envdir={ENVDIR}"])
            .envdir(&[])
            .steps([
                Status(&[1]),
                EnvSet("AUTO_RESTART_INTERVAL", "1"),
                EnvSet("KILL_OLD_DELAY", "0"),
                EnvSet("ENABLE_AUTO_RESTART", "1"),
                Sleep(ms(3500)),
            ])
            .steps(stop())
            .differs(&["envdir-auto-restart"]),
    ]
}

/// Modes that start nothing.
pub fn modes() -> Vec<Scenario> {
    vec![
        scenario("help", &["--help"])
            .steps([Exit(secs(5))])
            .differs(&["help"]),
        scenario("version", &["--version"])
            .steps([Exit(secs(5))])
            .differs(&["version"]),
        scenario(
            "fractional_interval",
            &[
                "--interval=0.5",
                "--port=127.0.0.1:{P1}",
                "--status-file={STATUS}",
                "--",
                "{W}",
            ],
        )
        .steps(up_and_stop())
        .differs(&["fractional-seconds"]),
    ]
}

impl Scenario {
    fn ports(mut self, n: usize) -> Scenario {
        self.ports = n;
        self
    }

    fn replace_steps(mut self, steps: impl IntoIterator<Item = Step>) -> Scenario {
        self.steps = steps.into_iter().collect();
        self
    }

    fn map_args(mut self, f: impl Fn(String) -> String) -> Scenario {
        self.args = self.args.into_iter().map(f).collect();
        self
    }
}
