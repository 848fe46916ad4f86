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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or("127.0.0.1:8080".into());
    tokio::runtime::Runtime::new()?.block_on(serve(&address))
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
    // For `start_server --notify-ready`; nothing to do without it.
    server_starter::notify_ready()?;
    loop {
        // The next connection, or `None` once SIGTERM came.
        let accepted = poll_fn(|cx| match term.poll_recv(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => listener.poll_accept(cx).map(Some),
        })
        .await;
        let Some(accepted) = accepted else { break };
        let Ok((stream, _)) = accepted else { continue };
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        tokio::spawn(graceful.watch(connection));
    }
    drop(listener);
    tokio::time::sleep(FIRST_READ_GRACE).await;
    graceful.shutdown().await;
    Ok(())
}
