//! Storage leases, measured in the lab: live migrations of the demo guest without leases (the
//! plain two-blade lab) and with them (`TwoBlades::start_ha`: its QEMU holds a sanlock lease,
//! handed over at switchover), then the HA failover: the blade running the guest loses power,
//! and the time until the other blade runs it, beside the floor sanlock's timeouts imply (the
//! `failover_s` status reports, plus one lease probe and the second blade's turn). One run, one
//! host: the figures are comparable with each other, not with another machine's.
//!
//! Usage: bench-failover [rounds]   (default 2 round trips each way)

use std::time::{Duration, Instant};

use bladevisor::leases::Lockspace;
use bladevisor::proto::request::Operator;
use bladevisor_lab::bench::{round_trips, show};
use bladevisor_lab::demo::{last_count, post, state, wait, READY};
use bladevisor_lab::{ok, Image, Request, TwoBlades};

fn ready(lab: &mut TwoBlades) {
    for b in lab.blades.iter_mut() {
        ok(b.wait_console("bladevisor ready", READY));
    }
    let b1 = &lab.blades[0];
    wait(lab, "demo to run on blade1", Duration::from_secs(300), || state(b1) == "running");
    wait(lab, "the demo counter", Duration::from_secs(400), || last_count(b1) >= 3);
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let img = Image::built();

    let plain = {
        let mut lab = TwoBlades::start("bench-failover-plain", &img, 32, [None, None]);
        ready(&mut lab);
        round_trips(&lab.blades[0], &lab.blades[1], rounds)
    };

    let mut lab = TwoBlades::start_ha("bench-failover", &img, 32);
    for b in lab.blades.iter_mut() {
        ok(b.wait_console("bladevisor ready", READY));
    }
    let (code, body) = post(&lab.blades[0], Request::Operator(Operator::LeasesInit { force: false }));
    assert_eq!(code, 200, "leases init: {body}");
    wait(&lab, "both blades to join", Duration::from_secs(180), || {
        lab.blades.iter().all(|b| b.status().ok().and_then(|s| s.leases).is_some_and(|l| l.state == Lockspace::Joined))
    });
    ready(&mut lab);
    let leased = round_trips(&lab.blades[0], &lab.blades[1], rounds);
    let failover_s = ok(lab.blades[1].status()).leases.expect("lease status").failover_s;

    let lost = Instant::now();
    lab.blades[0].pull_the_plug();
    let b2 = &lab.blades[1];
    wait(&lab, "blade2 to run the guest", Duration::from_secs(600), || state(b2) == "running");
    let failover = lost.elapsed().as_secs_f64();
    let floor = failover_s + bladevisor::coord::ha::PROBE.as_secs() + bladevisor::coord::ha::STAGGER.as_secs();

    println!("Live migration of the lab's test guest (32 MiB) between two TCG blades on this host:");
    show("without leases", &plain);
    show("with leases (handed over at switchover)", &leased);
    println!("HA failover, blade1 powered off to the guest running on blade2:");
    println!(
        "  measured {failover:>6.1} s   floor {floor} s (sanlock: 8 x io-timeout-s + 60 s = {failover_s} s, \
         a {} s lease probe, blade2's {} s turn)",
        bladevisor::coord::ha::PROBE.as_secs(),
        bladevisor::coord::ha::STAGGER.as_secs()
    );
}
