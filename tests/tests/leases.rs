//! Storage leases in the two-blade lab (`TwoBlades::start_ha`): a lease LUN shared by both
//! blades, sanlock and wdmd on each (the lab blades have an i6300esb watchdog), the demo guest
//! with `ha = true`. The story: nothing starts on an area that is not initialised, and both
//! blades say why; `leases init` on one blade lets both join without a reboot and the guest
//! starts, its QEMU holding its lease; a second init is refused; an operator's `--force` start
//! on the other blade gets past the owner check but not past the lease; a migration hands the
//! lease over and the guest runs on at the destination, once. Needs the image built.

use std::time::Duration;

use bladevisor::leases::Lockspace;
use bladevisor::proto::ServiceAction;
use bladevisor_lab::demo::*;
use bladevisor_lab::{ok, Blade, Image, Operator, Request, TwoBlades};

fn lockspace(b: &Blade) -> Option<Lockspace> {
    b.status().ok()?.leases.map(|l| l.state)
}

fn init(b: &Blade, force: bool) -> (u16, String) {
    post(b, Request::Operator(Operator::LeasesInit { force }))
}

#[test]
fn the_lease_decides_which_blade_runs_the_guest() {
    let img = Image::built();
    let mut lab = TwoBlades::start_ha("leases", &img, 32);
    for b in lab.blades.iter_mut() {
        ok(b.wait_console("bladevisor ready", READY));
    }
    let [b1, b2] = &lab.blades;

    // 1. A blank lease LUN: both blades say so, and the guest waits.
    wait(&lab, "both blades to find the area blank", Duration::from_secs(120), || {
        lab.blades.iter().all(|b| matches!(lockspace(b), Some(Lockspace::NotInitialised(_))))
    });
    let d = demo(b1).expect("demo on blade1");
    assert!(d.pid.is_none(), "no guest runs before the area is initialised: {d:?}");
    assert!(d.reason.as_deref().unwrap_or("").contains("bladevisor leases init"), "{d:?}");

    // 2. One init, and both blades join by themselves; the guest starts, holding its lease.
    let (code, body) = init(b1, false);
    assert_eq!(code, 200, "{body}");
    wait(&lab, "both blades to join the lease area", Duration::from_secs(180), || {
        lab.blades.iter().all(|b| lockspace(b) == Some(Lockspace::Joined))
    });
    wait(&lab, "demo to run on blade1", Duration::from_secs(180), || state(b1) == "running");
    wait(&lab, "the demo counter on blade1", Duration::from_secs(400), || last_count(b1) >= 3);
    let pid = demo(b1).and_then(|g| g.pid).expect("a pid");
    let (code, body) = init(b2, false);
    assert_eq!(code, 409, "an initialised area is not rewritten without --force: {body}");

    // 3. An operator forces a second copy on blade2: the owner check is overridden, the lease
    //    is not. blade2's QEMU never runs; blade1's goes on.
    let before = last_count(b1);
    let force = Request::Operator(Operator::Guest { name: "demo".into(), action: ServiceAction::Start, force: true });
    let (code, body) = post(b2, force);
    assert_eq!(code, 200, "the override itself is accepted: {body}");
    wait(&lab, "blade2's forced start to fail on the lease", Duration::from_secs(120), || {
        let d = demo(b2);
        d.as_ref().is_some_and(|g| g.pid.is_none() && g.restarts >= 1)
    });
    wait(&lab, "the counter to go on on blade1", Duration::from_secs(120), || last_count(b1) > before + 2);
    assert_eq!(demo(b1).and_then(|g| g.pid), Some(pid), "blade1's QEMU was never disturbed");
    let stop = Request::Operator(Operator::Guest { name: "demo".into(), action: ServiceAction::Stop, force: false });
    let _ = post(b2, stop);

    // 4. A migration hands the lease over: the guest runs on at blade2, once.
    let (code, body) = post(b1, migrate("blade2", None));
    assert_eq!(code, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_u64().expect("migration id");
    wait(&lab, "the migration's outcome", Duration::from_secs(300), || migration(b1, id).outcome.is_some());
    let o = migration(b1, id).outcome.unwrap();
    assert_eq!(o.result, bladevisor::migration::Ending::Completed, "{o:?}\n{}", lab.report());
    let at = last_count(b2);
    wait(&lab, "the counter to go on on blade2", Duration::from_secs(120), || last_count(b2) > at + 2);
    assert!(demo(b1).is_none_or(|g| g.pid.is_none()), "blade1 keeps no copy: {:?}", demo(b1));
}
