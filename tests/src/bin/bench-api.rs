//! API benchmark: the latency of `GET /v1/status` on a lab blade (median and p99 over many
//! calls, each on a fresh connection as a scraper makes them), first with no other client, then
//! with hostile idle connections held open (half of them mid-request, renewed as the blade
//! closes them), measured in the same run on the same blade.
//!
//! Usage: bench-api [calls] [idle]   (default 200 calls, 500 idle connections)

use std::net::SocketAddr;
use std::time::Duration;

use bladevisor_lab::hostile::{median_p99, status_once, Crowd};
use bladevisor_lab::{ok, Blade, BladeSpec, Boot, Image};

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

fn main() {
    let calls: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let idle: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(500);
    let img = Image::built();
    let spec =
        BladeSpec::new("bench-api", "52:54:00:b1:ad:01", Boot::Direct { cmdline: "bladevisor.node=blade1".into() });
    let mut blade = Blade::start_with_san(spec, &img, 32);
    ok(blade.wait_console("bladevisor ready", Duration::from_secs(400)));
    let addr: SocketAddr = format!("127.0.0.1:{}", blade.api_port).parse().unwrap();
    // Warm up (the first answers build caches on both sides).
    let _ = measure(addr, 10);
    let quiet = measure(addr, calls);
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
}
