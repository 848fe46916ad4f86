//! A tokio + axum worker for `start_server`, with graceful shutdown:
//!
//! ```text
//! start_server --port=127.0.0.1:8080 -- axum-worker 127.0.0.1:8080
//! cargo run -p axum-worker -- 127.0.0.1:8080     # on its own: binds it itself
//! ```
//!
//! On SIGTERM (sent to the old generation once the new one runs) it stops
//! accepting, answers the requests of every connection it accepted, and
//! exits; connections still queued on the shared socket go to the new
//! generation. Not one request fails across a restart.
//!
//! It serves the router with hyper's HTTP/1 connection rather than
//! `axum::serve`, for one reason: a graceful shutdown in hyper closes at once
//! every connection it has read nothing from yet, although its client may
//! have sent a request already (the connections accepted last). Here the
//! worker stops accepting first, gives those a moment to be read, and only
//! then starts the shutdown; `axum::serve` does both in the same instant.
//! (Waiting for SIGTERM with `poll_fn` rather than `tokio::select!` keeps
//! this workspace free of proc macros.)

use std::future::poll_fn;
use std::io::ErrorKind;
use std::task::Poll;
use std::time::Duration;

use axum::{Router, routing::get};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::signal::unix::{SignalKind, signal};

/// How long the connections accepted before SIGTERM have to be read from
/// before the shutdown closes those that were not.
const FIRST_READ_GRACE: Duration = Duration::from_secs(1);

/// How long the open connections have, after SIGTERM, to finish their
/// requests: a client that keeps its connection busy must not keep an old
/// generation alive for ever. (`start_server --kill-old-delay` and
/// `--signal-timeout` bound it from outside; this is the worker's own.)
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait before accepting again after an error that does not
/// pass at once (out of descriptors: `EMFILE`, `ENFILE`): retrying at once
/// would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

fn main() {
    let address = std::env::args().nth(1).unwrap_or("127.0.0.1:8080".into());
    let served = tokio::runtime::Runtime::new()
        .map_err(Into::into)
        .and_then(|runtime| runtime.block_on(serve(&address)));
    if let Err(err) = served {
        // One line, with its cause ("failed to bind ...: Address already in use").
        eprintln!("axum-worker: {err}");
        std::process::exit(1);
    }
}

async fn serve(address: &str) -> Result<(), Box<dyn std::error::Error>> {
    // The socket start_server bound for `--port=ADDRESS` (or, run on its own,
    // one bound here), non-blocking as tokio wants it.
    let listener = server_starter::listener_or_bind(address)?
        .into_nonblocking()?
        .into_tcp()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let answer = format!(
        "generation={} pid={}\n",
        server_starter::generation().unwrap_or(0),
        std::process::id()
    );
    let app = Router::new().route("/", get(move || async move { answer }));

    let mut term = signal(SignalKind::terminate())?;
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // Bounds how long a client that is slow to send its request head can
    // hold up the exit (hyper's header read timeout, 30 s).
    http.timer(TokioTimer::new());
    // For `start_server --notify-ready`; nothing is sent without it. A
    // failure is no reason to stop serving: the supervisor then falls back
    // to its timeout.
    if let Err(err) = server_starter::notify_ready() {
        eprintln!("axum-worker: {err}");
    }
    loop {
        // The next connection, or `None` once SIGTERM came.
        let accepted = poll_fn(|cx| match term.poll_recv(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => listener.poll_accept(cx).map(Some),
        })
        .await;
        let Some(accepted) = accepted else { break };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // The client gave up before we took its connection.
            Err(err) if err.kind() == ErrorKind::ConnectionAborted => continue,
            Err(err) => {
                eprintln!("axum-worker: accept: {err}; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(graceful.watch(connection));
    }
    drop(listener);
    if graceful.count() > 0 {
        tokio::time::sleep(FIRST_READ_GRACE).await;
    }
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        eprintln!("axum-worker: connections still open after {SHUTDOWN_TIMEOUT:?}, exiting");
    }
    Ok(())
}
