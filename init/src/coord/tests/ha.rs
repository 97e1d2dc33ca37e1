//! The lease area and HA restart, as the coordinator decides them.

use super::*;

#[test]
fn no_guest_starts_before_this_blade_has_joined_the_lease_area() {
    let mut lab = Lab::with(&ha_cluster(), "blade1");
    lab.report(Report::DrainKnown(None));
    lab.tick();
    assert_eq!(lab.status("db").reason.as_deref(), Some("waiting for this blade to join the lease area"));
    assert!(lab.asked_owners("db").is_none());
    let r = Lab::refused(lab.operator(start("db")));
    assert!(r.message.contains("join the lease area"), "{r:?}");
    lab.report(Report::Leases(crate::leases::Lockspace::NotInitialised("no lockspace".into())));
    lab.tick();
    assert!(lab.status("db").reason.unwrap().contains("bladevisor leases init"));
    lab.report(Report::Leases(crate::leases::Lockspace::Joined));
    lab.tick();
    lab.all_free();
    assert_eq!(lab.state("db"), GuestState::Running);
}

/// The test cluster with a lease area, host ids, and `ha = true` on web.
fn ha_cluster() -> String {
    CLUSTER
        .replace("[nodes.blade1]\n", "[nodes.blade1]\nhost-id = 1\n")
        .replace("[nodes.blade2]\n", "[nodes.blade2]\nhost-id = 2\n")
        .replace("[nodes.blade3]\n", "[nodes.blade3]\nhost-id = 3\n")
        .replace("[aliases]\n", "[ha]\nlease-alias = \"leases\"\n[aliases]\nleases = { wwid = \"3600a0009\" }\n")
        .replace("memory-mib = 512\n", "memory-mib = 512\nha = true\n")
}

/// blade2 of the HA cluster, joined, with web's lease held by `holder`.
fn ha_blade2(holder: crate::leases::LeaseState) -> Lab {
    let mut lab = Lab::with(&ha_cluster(), "blade2");
    lab.report(Report::DrainKnown(None));
    lab.report(Report::Leases(crate::leases::Lockspace::Joined));
    lab.tick();
    assert!(lab.asked.contains(&Effect::ProbeLeases(vec!["web".into()])), "{:?}", lab.asked);
    lab.report(Report::LeaseStates(vec![("web".into(), holder)]));
    lab
}

fn started_here(lab: &Lab, guest: &str) -> bool {
    lab.blade.services.borrow().get(guest) == Some(&ServiceState::Running)
}

#[test]
fn a_guest_whose_blade_died_is_restarted_by_the_next_of_its_blades_in_its_turn() {
    use crate::leases::LeaseState;
    let dead = LeaseState::Held { host_id: 1, live: false };
    let mut lab = ha_blade2(dead.clone());
    assert!(!started_here(&lab, "web"), "blade2 is web's second blade: it waits for blade1's turn");
    assert_eq!(lab.status("web").lease.as_deref(), Some("held by blade1, which stopped renewing"));
    lab.now += crate::coord::ha::STAGGER;
    lab.tick();
    lab.report(Report::LeaseStates(vec![("web".into(), dead)]));
    assert!(started_here(&lab, "web"), "its turn: started from its disk (the lease decides)");
    assert!(lab.asked_owners("web").is_none(), "no owner check: the lease is the lock");
    // status tells the story: joined, the lease seen held by a dead blade, the restart.
    let (restarts, events) = lab.c.lease_events(lab.now);
    let story: Vec<String> =
        events.iter().map(|e| format!("{}: {}", e.guest.as_deref().unwrap_or("-"), e.what)).collect();
    assert_eq!(restarts, 1, "{story:?}");
    assert_eq!(story.len(), 3, "{story:?}");
    assert_eq!(story[0], "-: lockspace joined");
    assert_eq!(story[1], "web: lease held by blade1, which stopped renewing");
    assert!(story[2].starts_with("web: HA restart here: its lease is held by blade1"), "{story:?}");
    assert_eq!(events[0].age_s, crate::coord::ha::STAGGER.as_secs(), "ages run from the probe to now");
}

#[test]
fn losing_the_lockspace_is_an_event_and_a_failed_probe_is_not_a_change_of_hands() {
    use crate::leases::{LeaseState, Lockspace};
    let mut lab = ha_blade2(LeaseState::Held { host_id: 1, live: true });
    lab.report(Report::LeaseStates(vec![("web".into(), LeaseState::Unknown { why: "timeout".into() })]));
    lab.report(Report::LeaseStates(vec![("web".into(), LeaseState::Held { host_id: 1, live: true })]));
    lab.report(Report::Leases(Lockspace::Failed("cannot read the lease LUN".into())));
    let (_, events) = lab.c.lease_events(lab.now);
    let story: Vec<&str> = events.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(story.len(), 3, "{story:?}");
    assert_eq!(story[1], "lease held by blade1");
    assert!(story[2].starts_with("left the lockspace: FAILED: cannot read the lease LUN"), "{story:?}");
}

#[test]
fn a_guest_whose_lease_was_released_stays_down() {
    let mut lab = ha_blade2(crate::leases::LeaseState::Free);
    lab.now += crate::coord::ha::STAGGER * 4;
    lab.tick();
    lab.report(Report::LeaseStates(vec![("web".into(), crate::leases::LeaseState::Free)]));
    assert!(!started_here(&lab, "web"), "a stopped guest is not an HA event");
    assert_eq!(lab.status("web").lease.as_deref(), Some("free"));
}

#[test]
fn a_guest_held_by_a_live_blade_is_left_to_it() {
    let live = crate::leases::LeaseState::Held { host_id: 1, live: true };
    let mut lab = ha_blade2(live.clone());
    lab.now += crate::coord::ha::STAGGER * 4;
    lab.tick();
    lab.report(Report::LeaseStates(vec![("web".into(), live)]));
    assert!(!started_here(&lab, "web"));
    assert_eq!(lab.status("web").lease.as_deref(), Some("held by blade1"));
}

#[test]
fn a_copy_here_that_failed_is_started_again_when_the_guests_blade_died() {
    let dead = crate::leases::LeaseState::Held { host_id: 1, live: false };
    let mut lab = ha_blade2(dead.clone());
    // An earlier forced start here failed on the lease: its service is there, failed.
    lab.blade.services.borrow_mut().insert("web".into(), ServiceState::Failed);
    lab.now += crate::coord::ha::STAGGER;
    lab.tick();
    lab.report(Report::LeaseStates(vec![("web".into(), dead)]));
    assert!(started_here(&lab, "web"));
}
