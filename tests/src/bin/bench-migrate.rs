//! Migration benchmark, in the two-blade lab: the test guest moved back and forth by the
//! supervisors (`POST /v1/guests/demo/migrate`: destination prepared over the API, QEMU's
//! stream, the destination's confirmation, the source's process ended), beside the floor: QEMU's
//! own stream inside the same migrations (its total-time and downtime, as QEMU reports them).
//! Each figure: end-to-end time as the caller sees it, QEMU's total-time and downtime.
//!
//! (The first release drove a second, raw migration through a QMP passthrough for its floor;
//! the API no longer passes on commands that change QEMU, so the floor is QEMU's own account of
//! each migration instead.) `bench-failover` measures the same with storage leases.
//!
//! Usage: bench-migrate [rounds]   (default 3 of each)

use std::time::Duration;

use bladevisor_lab::bench::{round_trips, show, Sample};
use bladevisor_lab::demo::{state, wait, READY};
use bladevisor_lab::{ok, Image, TwoBlades};

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let img = Image::built();
    let mut lab = TwoBlades::start("bench-migrate", &img, 32, [None, None]);
    for b in lab.blades.iter_mut() {
        ok(b.wait_console("bladevisor ready", READY));
    }
    let [b1, b2] = &lab.blades;
    wait(&lab, "demo to run on blade1", Duration::from_secs(300), || state(b1) == "running");
    // Let SeaBIOS finish and the counter start, so every sample moves the same guest state.
    std::thread::sleep(Duration::from_secs(20));
    let ours = round_trips(b1, b2, rounds);
    let floor: Vec<Sample> = ours.iter().map(|s| (s.1, s.1, s.2)).collect();
    println!("Live migration of the lab's test guest (32 MiB) between two TCG blades on this host:");
    show("bladevisor (prepare, stream, confirm, retire)", &ours);
    show("floor: QEMU's own stream in the same runs", &floor);
    println!("(end-to-end: from the request to the guest running on the destination; the floor's");
    println!(" end-to-end is QEMU's total-time: the stream alone, without preparing or retiring QEMUs)");
}
