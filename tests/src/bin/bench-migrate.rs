//! Migration benchmark, in the two-blade lab: the test guest moved back and forth by the
//! supervisors (`POST /v1/guests/demo/migrate`: destination prepared over the API, QEMU's
//! stream, the destination's confirmation, the source's process ended), beside the floor: QEMU's
//! own stream inside the same migrations (its total-time and downtime, as QEMU reports them).
//! Each figure: end-to-end time as the caller sees it, QEMU's total-time and downtime.
//!
//! (The first release drove a second, raw migration through a QMP passthrough for its floor;
//! the API no longer passes on commands that change QEMU, so the floor is QEMU's own account of
//! each migration instead.)
//!
//! Usage: bench-migrate [rounds]   (default 3 of each)

use std::time::{Duration, Instant};

use bladevisor::httpc::{call_with_body, Endpoint};
use bladevisor_lab::{ok, Blade, Image, Operator, Request, TwoBlades};

const TOKEN: &str = bladevisor_lab::LAB_TOKEN;

fn post(b: &Blade, req: Request) -> serde_json::Value {
    let ep = Endpoint::Tcp(format!("127.0.0.1:{}", b.api_port));
    let body = req.body().unwrap_or_default();
    let r = ok(call_with_body(&ep, req.method(), &req.target(), Some(TOKEN), &body, Duration::from_secs(60)));
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
    assert_eq!(r.code, 200, "{} {} {body}: {}\n{}", req.method(), req.target(), r.body, b.report());
    v
}

fn state(b: &Blade) -> String {
    ok(b.status()).guests.into_iter().find(|g| g.name == "demo").map(|g| g.state.to_string()).unwrap_or_default()
}

fn wait(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (end-to-end ms, QEMU total-time ms, downtime ms)
type Sample = (f64, f64, f64);

/// The supervisors' migration from `a` to `b` (named `to`).
fn ours(a: &Blade, b: &Blade, to: &str) -> Sample {
    let t = Instant::now();
    let id = post(
        a,
        Request::Operator(Operator::Migrate { guest: "demo".into(), to: to.to_string(), bandwidth_mbps: None }),
    )["id"]
        .as_u64()
        .expect("id");
    let mut outcome = None;
    wait("the migration", Duration::from_secs(300), || {
        outcome = ok(a.status()).migrations.into_iter().find(|m| m.id == id).and_then(|m| m.outcome);
        outcome.is_some()
    });
    let end_to_end = t.elapsed().as_secs_f64() * 1000.0;
    let o = outcome.unwrap();
    assert_eq!(o.result, bladevisor::migration::Ending::Completed, "{o:?}\n{}", a.report());
    wait("the guest to run on the destination", Duration::from_secs(60), || state(b) == "running");
    wait("the source's process to be gone", Duration::from_secs(60), || {
        !ok(a.status()).services.iter().any(|s| s.name == "guest-demo")
    });
    (end_to_end, o.qemu_total_ms as f64, o.downtime_ms as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn show(name: &str, samples: &[Sample]) {
    let col = |i: usize| median(&mut samples.iter().map(|s| [s.0, s.1, s.2][i]).collect::<Vec<_>>());
    println!(
        "{name:<44} end-to-end {:>7.0} ms   QEMU total-time {:>6.0} ms   downtime {:>4.0} ms   (median of {})",
        col(0),
        col(1),
        col(2),
        samples.len()
    );
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let img = Image::built();
    let mut lab = TwoBlades::start("bench-migrate", &img, 32, [None, None]);
    for b in lab.blades.iter_mut() {
        ok(b.wait_console("bladevisor ready", Duration::from_secs(400)));
    }
    let [b1, b2] = &lab.blades;
    wait("demo to run on blade1", Duration::from_secs(300), || state(b1) == "running");
    // Let SeaBIOS finish and the counter start, so every sample moves the same guest state.
    std::thread::sleep(Duration::from_secs(20));
    let mut ours_s = vec![];
    for r in 0..rounds {
        // The guest is on blade1 at the start of each round and back there at its end.
        ours_s.push(ours(b1, b2, "blade2"));
        ours_s.push(ours(b2, b1, "blade1"));
        eprintln!("round {} of {rounds} done", r + 1);
    }
    let floor_s: Vec<Sample> = ours_s.iter().map(|s| (s.1, s.1, s.2)).collect();
    println!("Live migration of the lab's test guest (32 MiB) between two TCG blades on this host:");
    show("bladevisor (prepare, stream, confirm, retire)", &ours_s);
    show("floor: QEMU's own stream in the same runs", &floor_s);
    println!("(end-to-end: from the request to the guest running on the destination; the floor's");
    println!(" end-to-end is QEMU's total-time: the stream alone, without preparing or retiring QEMUs)");
}
