//! Storage leases in the two-blade lab (`TwoBlades::start_ha`): a lease LUN shared by both
//! blades, sanlock and wdmd on each (the lab blades have an i6300esb watchdog), the demo guest
//! with `ha = true`. The story: nothing starts on an area that is not initialised, and both
//! blades say why; `leases init` on one blade lets both join without a reboot and the guest
//! starts, its QEMU holding its lease; a second init is refused; an operator's `--force` start
//! on the other blade gets past the owner check but not past the lease, with the peer link up
//! and cut; a migration whose destination dies leaves the guest and its lease where they were;
//! a migration hands the
//! lease over and the guest runs on at the destination, once; the destination loses its lease
//! LUN (fenced: its QEMU is stopped) and blade1 starts the guest from its disk once sanlock deems
//! blade2 dead, never both at once; blade2 rejoins when its paths return, and when blade1 loses
//! power blade2 starts the guest. Failover times are printed beside sanlock's floor. Needs the
//! image built.

use std::time::{Duration, Instant};

use bladevisor::leases::Lockspace;
use bladevisor::proto::ServiceAction;
use bladevisor_lab::demo::*;
use bladevisor_lab::{ok, Blade, Image, Operator, Request, TwoBlades, LEASE_LUN};
use serde_json::json;

/// The lease LUN is the third of the HA lab's LUNs (after lab-vm1 and lab-vm2).
const LEASE_LUN_INDEX: usize = 2;

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

    // 3b. The peer link is cut, storage fine: blade2 cannot ask blade1 any more; nothing
    //     moves, and a forced start there is still refused by the lease.
    let restarts = demo(b2).map(|g| g.restarts).unwrap_or(0);
    ok(ok(b1.qmp()).execute("set_link", json!({ "name": "peer", "up": false })));
    let force = Request::Operator(Operator::Guest { name: "demo".into(), action: ServiceAction::Start, force: true });
    let (code, body) = post(b2, force);
    assert_eq!(code, 200, "the override is accepted: {body}");
    wait(&lab, "the forced start to fail on the lease again", Duration::from_secs(120), || {
        demo(b2).is_some_and(|g| g.restarts > restarts && g.pid.is_none())
    });
    let _ =
        post(b2, Request::Operator(Operator::Guest { name: "demo".into(), action: ServiceAction::Stop, force: false }));
    assert_eq!(demo(b1).and_then(|g| g.pid), Some(pid), "blade1's guest never moved");
    ok(ok(b1.qmp()).execute("set_link", json!({ "name": "peer", "up": true })));

    // 3c. A migration whose destination dies mid-stream: the guest runs on at blade1, which
    //     never gave its lease up.
    let (code, body) = post(b1, migrate("blade2", Some(0.2)));
    assert_eq!(code, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_u64().expect("migration id");
    wait(&lab, "the stream to be under way", Duration::from_secs(120), || {
        migration(b1, id).progress.is_some_and(|p| p.transferred_bytes > 0) && state(b2) == "incoming"
    });
    let (code, body) = post(b2, guest("demo", ServiceAction::Kill));
    assert_eq!(code, 200, "{body}");
    wait(&lab, "the failed migration's outcome", Duration::from_secs(120), || migration(b1, id).outcome.is_some());
    let o = migration(b1, id).outcome.unwrap();
    assert_eq!((o.result, o.resumed_on_source), (bladevisor::migration::Ending::Failed, true), "{o:?}");
    assert_eq!(demo(b1).and_then(|g| g.pid), Some(pid), "the same QEMU runs on at blade1");
    wait(&lab, "blade1 to hold the lease still", Duration::from_secs(60), || {
        demo(b1).and_then(|g| g.lease).as_deref() == Some("held here")
    });
    wait(&lab, "blade2 to drop its incoming process", Duration::from_secs(60), || {
        demo(b2).is_none_or(|g| g.pid.is_none())
    });

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
    wait(&lab, "blade2 to see it holds the lease", Duration::from_secs(60), || {
        demo(b2).and_then(|g| g.lease).as_deref() == Some("held here")
    });

    // 5. blade2 loses every path to the lease LUN but keeps its network: sanlock cannot renew,
    //    stops the guest's QEMU there (fenced), and once blade2 is deemed dead blade1 starts the
    //    guest from its disk. Never both at once.
    let boots = console(b1).matches("bladevisor test guest").count();
    let lost = Instant::now();
    let mut q = ok(b2.qmp());
    for p in 0..2 {
        ok(q.execute("device_del", json!({ "id": format!("lun{LEASE_LUN_INDEX}p{p}") })));
    }
    let both = |lab: &TwoBlades| {
        lab.blades.iter().all(|b| demo(b).is_some_and(|g| g.pid.is_some() && g.state.as_str() == "running"))
    };
    wait(&lab, "blade2 to stop its guest (fenced)", Duration::from_secs(180), || {
        assert!(!both(&lab), "two copies run\n{}", lab.report());
        demo(b2).is_none_or(|g| g.state.as_str() != "running")
    });
    let fenced = lost.elapsed();
    wait(&lab, "blade1 to restart the guest (HA)", Duration::from_secs(400), || {
        assert!(!both(&lab), "two copies run\n{}", lab.report());
        state(b1) == "running"
    });
    let failover = lost.elapsed();
    wait(&lab, "the restarted guest to boot on blade1", Duration::from_secs(300), || {
        console(b1).matches("bladevisor test guest").count() > boots
    });
    println!(
        "fencing: blade2 lost its lease LUN; its guest stopped after {:.1} s, ran on blade1 after {:.1} s \
         (sanlock's floor for io-timeout-s = 2: 8 x 2 s = 16 s to stop, 16 s + 60 s = 76 s to take over)",
        fenced.as_secs_f64(),
        failover.as_secs_f64()
    );

    // 6. The paths come back and blade2 joins again by itself; then blade1 loses power: blade2
    //    starts the guest (its turn comes 10 s after blade1's).
    for p in 0..2 {
        let dev = json!({
            "driver": "scsi-hd", "id": format!("lun{LEASE_LUN_INDEX}p{p}"), "bus": format!("hba{p}.0"),
            "drive": format!("lun{LEASE_LUN_INDEX}"), "wwn": u64::from_str_radix(&LEASE_LUN.1[2..], 16).unwrap(),
            "serial": "LABLUN0099", "share-rw": true,
        });
        ok(q.execute("device_add", dev));
    }
    wait(&lab, "blade2 to rejoin the lease area", Duration::from_secs(300), || {
        lockspace(b2) == Some(Lockspace::Joined)
    });
    let lost = Instant::now();
    lab.blades[0].pull_the_plug();
    let b2 = &lab.blades[1];
    wait(&lab, "blade2 to restart the guest (HA)", Duration::from_secs(400), || state(b2) == "running");
    println!(
        "HA failover (blade1 lost to the guest running on blade2): {:.1} s; floor 76 s + a 5 s probe + blade2's 10 s turn",
        lost.elapsed().as_secs_f64()
    );
    wait(&lab, "blade2 to see it holds the lease", Duration::from_secs(60), || {
        demo(b2).and_then(|g| g.lease).as_deref() == Some("held here")
    });
    // status and the CLI tell the operator what happened.
    let l = ok(b2.status()).leases.expect("lease status");
    assert!(l.ha_restarts >= 1, "{l:?}");
    assert!(
        l.events.iter().any(|e| e.guest.as_deref() == Some("demo") && e.what.contains("which stopped renewing")),
        "{:?}",
        l.events
    );
    let (ok_, text) = cli(b2, &["status"]);
    assert!(ok_ && text.contains("HA restart here"), "{text}");
}
