//! Integration tests: the real `start_server` binary, run in temp dirs with
//! the `test_worker` example as its worker.
//!
//! `START_SERVER_BIN=/usr/bin/start_server cargo test --test it` runs the
//! same suite against the Perl reference; the tests that pin the deliberate
//! differences of docs/behaviour.md section 8 say so in a comment and fail there.
//!
//! A test named `..._needs_<what>` prints `skipped: <test>: <reason>` and
//! passes where it cannot run; `START_SERVER_TEST_NO_SKIP=1` makes it fail
//! instead.

mod support;

mod auto_restart;
mod bad_input;
mod cli;
mod client;
mod daemonize;
mod envdir;
mod extensions;
mod faults;
mod file_safety;
mod leaks;
mod log_file;
mod manual;
mod pid_file;
mod readiness;
mod restart;
mod shutdown;
mod sockets;
mod status_file;
mod systemd;
mod unix_socket;
mod upgrade;
mod worker_examples;
mod workers;
