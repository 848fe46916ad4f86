//! The axum worker run on its own, with an address it cannot bind: one
//! error naming the address, a non-zero exit.
//!
//! (The worker serving under start_server, and on its own, is tested with
//! the other examples in the start_server package's tests/it. This test
//! also makes `cargo test` build the worker binary those tests run.)

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn an_address_it_cannot_bind_is_an_error() {
    // TEST-NET-1 (RFC 5737): no interface of this host has it.
    let address = "192.0.2.1:8080";
    let mut worker = Command::new(env!("CARGO_BIN_EXE_axum-worker"))
        .arg(address)
        .env_remove("SERVER_STARTER_PORT")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start axum-worker");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match worker.try_wait().expect("wait for axum-worker") {
            Some(status) => break Some(status),
            None if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            None => break None,
        }
    };
    if status.is_none() {
        let _ = worker.kill();
    }
    let output = worker.wait_with_output().expect("collect axum-worker");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.is_some_and(|s| !s.success()),
        "expected a failure, got {status:?}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(address),
        "stderr should name {address}:\n{stderr}"
    );
}
