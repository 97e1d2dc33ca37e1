//! API benchmark: the latency of `GET /v1/status` on a lab blade (median and p99 over many
//! calls, each on a fresh connection as a scraper makes them), first with no other client, then
//! with hostile idle connections held open (half of them mid-request, renewed as the blade
//! closes them), measured in the same run on the same blade; and the same call over TLS on port
//! 7443 (a fresh connection and handshake each, as the CLI makes them, the blade's certificate
//! verified) beside plain HTTP on 7480.
//!
//! Usage: bench-api [calls] [idle]   (default 200 calls, 500 idle connections)

use std::net::SocketAddr;
use std::time::Duration;

use bladevisor_lab::hostile::{median_p99, status_once, Crowd};
use bladevisor_lab::{ok, start_lab_blade1, Blade, Image, Read, Request};

fn measure(addr: SocketAddr, calls: usize) -> (f64, f64, usize) {
    let mut times = vec![];
    let mut failed = 0;
    for _ in 0..calls {
        let (code, took) = status_once(addr);
        if code == 200 {
            times.push(took);
        } else {
            failed += 1;
        }
    }
    let (median, p99) = median_p99(times);
    (median, p99, failed)
}

/// The same call over TLS, as the CLI makes it: a new connection and handshake each time.
fn measure_tls(blade: &Blade, calls: usize) -> (f64, f64, usize) {
    let mut times = vec![];
    let mut failed = 0;
    for _ in 0..calls {
        let t = std::time::Instant::now();
        match blade.call_at(&blade.tls_api(), &Request::Read(Read::Status), None) {
            Ok(r) if r.code == 200 => times.push(t.elapsed()),
            _ => failed += 1,
        }
    }
    let (median, p99) = median_p99(times);
    (median, p99, failed)
}

fn main() {
    let calls: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let idle: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(500);
    let img = Image::built();
    let (mut blade, _config) = start_lab_blade1("bench-api", &img, 32);
    ok(blade.wait_console("bladevisor ready", Duration::from_secs(400)));
    let addr: SocketAddr = format!("127.0.0.1:{}", blade.api_port).parse().unwrap();
    // Warm up (the first answers build caches on both sides).
    let _ = measure(addr, 10);
    let _ = measure_tls(&blade, 10);
    let quiet = measure(addr, calls);
    let tls = measure_tls(&blade, calls);
    let crowd = Crowd::start(addr, idle);
    let hostile = measure(addr, calls);
    drop(crowd);
    println!("GET /v1/status on a lab blade (TCG, through QEMU's user network), {calls} calls each:");
    println!(
        "  no other client:                      median {:>6.1} ms   p99 {:>6.1} ms   failed {}",
        quiet.0, quiet.1, quiet.2
    );
    println!(
        "  with {idle:>3} hostile idle connections:    median {:>6.1} ms   p99 {:>6.1} ms   failed {}",
        hostile.0, hostile.1, hostile.2
    );
    println!(
        "  over TLS (7443, handshake each call):  median {:>6.1} ms   p99 {:>6.1} ms   failed {}   (plain HTTP above: {:.1} ms)",
        tls.0, tls.1, tls.2, quiet.0
    );
}
