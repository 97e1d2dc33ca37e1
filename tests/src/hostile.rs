//! Hostile clients of a blade's API, as an attacker on the management network would be: idle
//! connections, lying `Content-Length`s, bodies promised and never sent, enormous headers.
//! The lab test and the API benchmark share them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Connections that send nothing (or half a request line) and stay open until dropped.
pub fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|i| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
            if i % 2 == 0 {
                // Half of them start a request and never finish it.
                let _ = s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: ");
            }
            Some(s)
        })
        .collect()
}

/// Sends `bytes` and returns what came back before the server closed (or `limit` passed),
/// with how long that took.
pub fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (String, Duration) {
    let t = Instant::now();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return ("(connect failed)".into(), t.elapsed());
    };
    let _ = s.set_read_timeout(Some(limit));
    let _ = s.set_write_timeout(Some(limit));
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

/// The status code of a raw answer, 0 when there was none.
pub fn code(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// `GET /v1/status` once, on a fresh connection: (code, time to the full answer).
pub fn status_once(addr: SocketAddr) -> (u16, Duration) {
    let (a, d) =
        exchange(addr, b"GET /v1/status HTTP/1.1\r\nHost: blade\r\nConnection: close\r\n\r\n", Duration::from_secs(30));
    (code(&a), d)
}

/// Median and 99th percentile of durations, in milliseconds.
pub fn median_p99(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at =
        |q: f64| v.get(((v.len() as f64 - 1.0) * q).round() as usize).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
    (at(0.5), at(0.99))
}

/// About `n` idle connections kept open for as long as this lives: the server closes idle
/// ones at its head timeout, so a fresh batch replaces the last every few seconds, as a
/// persistent attacker would.
pub struct Crowd {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Crowd {
    pub fn start(addr: SocketAddr, n: usize) -> Crowd {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        // The first batch is open when this returns.
        let first = idle_connections(addr, n);
        let thread = std::thread::spawn(move || {
            let mut previous = first;
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs(4));
                let fresh = idle_connections(addr, n);
                previous = fresh;
            }
            drop(previous);
        });
        Crowd { stop, thread: Some(thread) }
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
