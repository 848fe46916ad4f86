//! The harness's own HTTP client: one request on a new connection, and a
//! paced load that records every request's start time, latency and outcome
//! (which wrk cannot give per request).
//!
//! Every loop here is bounded by a deadline and a request count.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, with the generation of the worker that answered.
    Ok { generation: u64 },
    /// Any other HTTP status.
    Status(u16),
    /// connect(2) refused: nothing listening.
    Refused,
    /// The connection was reset.
    Reset,
    /// The connection ended before a whole response.
    Incomplete,
    /// No response before the timeout.
    Timeout,
    /// Another socket error.
    Other,
}

impl Outcome {
    pub fn is_socket_error(self) -> bool {
        !matches!(self, Outcome::Ok { .. } | Outcome::Status(_))
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

/// One `GET /` on a new connection to 127.0.0.1:`port`.
pub fn get(port: u16, timeout: Duration) -> Outcome {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return classify(&e),
    };
    let _ = stream.set_nodelay(true);
    if stream.set_read_timeout(Some(timeout)).is_err()
        || stream.set_write_timeout(Some(timeout)).is_err()
    {
        return Outcome::Other;
    }
    if let Err(e) = stream.write_all(REQUEST) {
        return classify(&e);
    }
    // The worker closes after a `Connection: close` request.
    let mut response = Vec::with_capacity(256);
    if let Err(e) = stream.read_to_end(&mut response) {
        return classify(&e);
    }
    parse(&response)
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => Outcome::Refused,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Outcome::Reset
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::Timeout,
        _ => Outcome::Other,
    }
}

/// A whole response (head and `Content-Length` bytes of body), its status,
/// and the generation from the bench worker's body.
fn parse(response: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Incomplete;
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    match (status, length) {
        (Some(_), Some(length)) if body.len() < length => Outcome::Incomplete,
        (Some(status), _) if (200..300).contains(&status) => {
            let generation = body
                .split_whitespace()
                .find_map(|w| w.strip_prefix("generation="))
                .and_then(|g| g.parse().ok())
                .unwrap_or(0);
            Outcome::Ok { generation }
        }
        (Some(status), _) => Outcome::Status(status),
        (None, _) => Outcome::Incomplete,
    }
}

/// One request of a paced run.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    /// When it started, from the start of the run.
    pub start: Duration,
    pub latency: Duration,
    pub outcome: Outcome,
}

/// `connections` threads, each starting one request every `period` (or at
/// once when the previous one took longer), for `duration`; each request on
/// a new connection. Returns every request, sorted by start time.
pub fn paced_load(
    port: u16,
    connections: usize,
    period: Duration,
    duration: Duration,
    start: Instant,
) -> Vec<Record> {
    let max_per_connection = (duration.as_secs_f64() / period.as_secs_f64()) as usize + 1;
    let mut records: Vec<Record> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..connections)
            .map(|i| {
                scope.spawn(move || {
                    let mut records = Vec::with_capacity(max_per_connection);
                    // Spread the connections over one period.
                    let mut next = start + period.mul_f64(i as f64 / connections as f64);
                    while records.len() < max_per_connection {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        let began = Instant::now();
                        if began >= start + duration {
                            break;
                        }
                        let outcome = get(port, Duration::from_secs(5));
                        let latency = began.elapsed();
                        records.push(Record {
                            start: began - start,
                            latency,
                            outcome,
                        });
                        next = (next + period).max(Instant::now());
                    }
                    records
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    });
    records.sort_by_key(|r| r.start);
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 22\r\n\r\npid=12 generation=345\n";
        assert_eq!(parse(ok), Outcome::Ok { generation: 345 });
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 22\r\n\r\npid=12";
        assert_eq!(parse(short), Outcome::Incomplete);
        let error = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse(error), Outcome::Status(503));
        assert_eq!(parse(b""), Outcome::Incomplete);
    }
}
