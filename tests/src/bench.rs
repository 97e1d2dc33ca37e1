//! What the lab's benchmarks share: one supervised migration of the demo guest measured as the
//! caller sees it and as QEMU accounts for it, medians, and the printed line.

use std::time::{Duration, Instant};

use bladevisor::migration::Ending;

use crate::demo::{migrate, migration, post, state};
use crate::{ok, Blade};

/// (end-to-end ms, QEMU total-time ms, downtime ms)
pub type Sample = (f64, f64, f64);

fn wait(b: &Blade, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}\n{}", b.report());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The supervisors' migration of the demo guest from `a` to `b` (named `to`): from the request
/// to the guest running on `b` and its process gone from `a`.
pub fn migrate_demo(a: &Blade, b: &Blade, to: &str) -> Sample {
    let t = Instant::now();
    let (code, body) = post(a, migrate(to, None));
    assert_eq!(code, 200, "migrate to {to}: {body}\n{}", a.report());
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["id"].as_u64().expect("id");
    wait(a, "the migration", Duration::from_secs(300), || migration(a, id).outcome.is_some());
    let end_to_end = t.elapsed().as_secs_f64() * 1000.0;
    let o = migration(a, id).outcome.expect("an outcome");
    assert_eq!(o.result, Ending::Completed, "{o:?}\n{}", a.report());
    wait(b, "the guest to run on the destination", Duration::from_secs(60), || state(b) == "running");
    wait(a, "the source's process to be gone", Duration::from_secs(60), || {
        !ok(a.status()).services.iter().any(|s| s.name == "guest-demo")
    });
    (end_to_end, o.qemu_total_ms as f64, o.downtime_ms as f64)
}

/// `rounds` round trips of the demo guest, from `a` (where it runs) to `b` and back.
pub fn round_trips(a: &Blade, b: &Blade, rounds: usize) -> Vec<Sample> {
    let (an, bn) = (node_of(a), node_of(b));
    let mut samples = vec![];
    for r in 0..rounds {
        samples.push(migrate_demo(a, b, &bn));
        samples.push(migrate_demo(b, a, &an));
        eprintln!("round {} of {rounds} done", r + 1);
    }
    samples
}

fn node_of(b: &Blade) -> String {
    ok(b.status()).node
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One line: the medians of end-to-end time, QEMU's total-time and downtime.
pub fn show(name: &str, samples: &[Sample]) {
    let col = |i: usize| median(&mut samples.iter().map(|s| [s.0, s.1, s.2][i]).collect::<Vec<_>>());
    println!(
        "{name:<44} end-to-end {:>7.0} ms   QEMU total-time {:>6.0} ms   downtime {:>4.0} ms   (median of {})",
        col(0),
        col(1),
        col(2),
        samples.len()
    );
}
