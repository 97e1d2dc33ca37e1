use super::*;
use crate::migration::testing::Transcript;
use crate::migration::NoLease;
use serde_json::Value;

#[derive(Default)]
struct FakePeer {
    prepare: Option<PeerError>,
    resume: Option<PeerError>,
    calls: Vec<String>,
}

impl Peer for FakePeer {
    fn prepare(&mut self, guest: &str, caps: &[String]) -> Result<u16, PeerError> {
        self.calls.push(format!("prepare {guest} {}", caps.join(",")));
        self.prepare.clone().map_or(Ok(49152), Err)
    }
    fn resume(&mut self, guest: &str) -> Result<(), PeerError> {
        self.calls.push(format!("resume {guest}"));
        self.resume.clone().map_or(Ok(()), Err)
    }
    fn abort(&mut self, guest: &str) -> Result<(), PeerError> {
        self.calls.push(format!("abort {guest}"));
        Ok(())
    }
}

struct FakeClock(Duration);
impl Clock for FakeClock {
    fn elapsed(&self) -> Duration {
        self.0
    }
    fn sleep(&mut self, d: Duration) {
        self.0 += d
    }
}

fn plan() -> Plan {
    let mut p = Plan::new("web", "blade2", "192.168.50.2".parse().unwrap(), &Settings::default(), Some(80.0));
    p.poll = Duration::from_secs(1);
    p.converge_after = Duration::from_secs(3);
    p.timeout = Duration::from_secs(10);
    p
}

fn ok() -> Result<Value, String> {
    Ok(json!({}))
}
fn active(remaining: u64) -> Result<Value, String> {
    Ok(
        json!({"status": "active", "ram": {"total": 1000, "remaining": remaining, "transferred": 1000 - remaining, "mbps": 80.0}}),
    )
}
/// Recorded from QEMU 7.2 at the end of a migration of the lab's test guest.
fn completed() -> Result<Value, String> {
    Ok(serde_json::from_str(r#"{"expected-downtime": 300, "status": "completed", "setup-time": 4, "downtime": 57, "total-time": 1834, "ram": {"total": 34541568, "postcopy-requests": 0, "dirty-sync-count": 3, "multifd-bytes": 0, "pages-per-second": 11920, "downtime-bytes": 0, "page-size": 4096, "remaining": 0, "postcopy-bytes": 0, "mbps": 9.27, "transferred": 1459302, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 1459302, "duplicate": 8208, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 1343488, "normal": 328}}"#).unwrap())
}
fn status(s: &str) -> Result<Value, String> {
    Ok(json!({"status": s, "running": s == "running"}))
}
const SETUP: [&str; 3] = ["migrate-set-capabilities", "migrate-set-parameters", "migrate"];

/// QEMU accepting the three setup commands, then answering `rest`.
fn after_setup(rest: Vec<(&'static str, Result<Value, String>)>) -> Transcript {
    Transcript::new(SETUP.iter().map(|c| (*c, ok())).chain(rest).collect())
}

/// A lease that records what was done with it.
#[derive(Default)]
struct FakeLease {
    release_fails: bool,
    reacquire_fails: bool,
    calls: Vec<&'static str>,
}

impl Lease for FakeLease {
    fn release(&mut self) -> Result<(), String> {
        self.calls.push("release");
        if self.release_fails {
            Err("sanlock is not answering".into())
        } else {
            Ok(())
        }
    }
    fn acquire(&mut self) -> Result<(), String> {
        self.calls.push("acquire");
        if self.reacquire_fails {
            Err("held by host 2".into())
        } else {
            Ok(())
        }
    }
}

fn run(vm: &mut Transcript, peer: &mut FakePeer, plan: &Plan) -> (Outcome, Vec<Phase>) {
    run_leased(vm, peer, &mut NoLease, plan)
}

fn run_leased(vm: &mut Transcript, peer: &mut FakePeer, lease: &mut dyn Lease, plan: &Plan) -> (Outcome, Vec<Phase>) {
    let mut phases = vec![];
    let out = migrate(vm, peer, lease, plan, &mut FakeClock(Duration::ZERO), &mut |ph, _| {
        if phases.last() != Some(&ph) {
            phases.push(ph)
        }
    });
    (out, phases)
}

#[test]
fn a_migration_completes_then_the_destination_resumes_the_guest() {
    let mut vm = after_setup(vec![
        ("query-migrate", active(600)),
        ("query-migrate", active(10)),
        ("query-migrate", completed()),
    ]);
    let mut peer = FakePeer::default();
    let (out, phases) = run(&mut vm, &mut peer, &plan());
    assert_eq!((out.result, out.error.as_deref()), (Ending::Completed, None), "{out:?}");
    assert_eq!((out.downtime_ms, out.qemu_total_ms, out.transferred_bytes), (57, 1834, 1459302));
    assert!(!out.resumed_on_source);
    assert_eq!(peer.calls, vec!["prepare web events", "resume web"]);
    assert_eq!(phases, vec![Phase::Preparing, Phase::Streaming, Phase::Resuming, Phase::Done]);
    // The settings reached QEMU as configured.
    assert_eq!(vm.seen[0].1["capabilities"][0], json!({"capability": "events", "state": true}));
    assert_eq!(vm.seen[1].1, json!({"downtime-limit": 300, "max-bandwidth": 10_000_000}));
    assert_eq!(vm.seen[2].1, json!({"uri": "tcp:192.168.50.2:49152"}));
    assert!(out.summary().starts_with("completed in"), "{}", out.summary());
}

#[test]
fn a_guest_that_arrived_by_migration_is_not_done_before_its_stream_starts() {
    // Recorded from QEMU 7.2 on a blade where the guest had arrived by migration: right
    // after `migrate`, query-migrate shows the arrival's status, without times.
    let mut vm = after_setup(vec![
        ("query-migrate", Ok(json!({"status": "completed"}))),
        ("query-migrate", active(100)),
        ("query-migrate", completed()),
    ]);
    let mut peer = FakePeer::default();
    let (out, _) = run(&mut vm, &mut peer, &plan());
    assert_eq!((out.result, out.qemu_total_ms, out.downtime_ms), (Ending::Completed, 1834, 57), "{out:?}");
    assert_eq!(vm.commands().iter().filter(|c| **c == "query-migrate").count(), 3, "it waited for its own stream");
}

#[test]
fn the_figures_of_a_completion_are_waited_for() {
    // Recorded under load: the state is "completed" before total-time and downtime are set.
    let mut vm = after_setup(vec![
        (
            "query-migrate",
            Ok(json!({"status": "completed", "total-time": 0, "downtime": 0, "ram": {"transferred": 591043}})),
        ),
        // Asked again only once the destination runs it: the wait adds no downtime.
        ("query-migrate", completed()),
    ]);
    let mut peer = FakePeer::default();
    let (out, _) = run(&mut vm, &mut peer, &plan());
    assert_eq!((out.result, out.qemu_total_ms, out.downtime_ms), (Ending::Completed, 1834, 57), "{out:?}");
    assert_eq!(peer.calls, vec!["prepare web events", "resume web"]);
}

#[test]
fn a_destination_that_refuses_to_prepare_leaves_the_source_untouched() {
    let mut vm = Transcript::new(vec![]);
    let mut peer =
        FakePeer { prepare: Some(PeerError::Refused("disk lab-vm1 is missing".into())), ..Default::default() };
    let (out, _) = run(&mut vm, &mut peer, &plan());
    assert_eq!((out.result, out.phase, out.resumed_on_source), (Ending::Failed, Phase::Preparing, true));
    assert!(vm.seen.is_empty(), "QEMU was not touched: {:?}", vm.commands());
    assert_eq!(out.error.unwrap(), "destination blade2: refused: disk lab-vm1 is missing");
}

#[test]
fn a_failure_at_each_setup_step_aborts_the_destination() {
    for (i, failing) in SETUP.iter().enumerate() {
        let mut steps: Vec<(&str, Result<Value, String>)> = SETUP[..i].iter().map(|c| (*c, ok())).collect();
        steps.push((failing, Err(format!("QMP {failing}: GenericError: injected"))));
        let mut vm = Transcript::new(steps);
        let mut peer = FakePeer::default();
        let (out, _) = run(&mut vm, &mut peer, &plan());
        assert_eq!(out.result, Ending::Failed, "{failing}: {out:?}");
        assert!(out.resumed_on_source, "{failing}: the guest was never paused");
        assert_eq!(peer.calls.last().unwrap(), "abort web", "{failing}");
        assert!(out.error.unwrap().contains("injected"));
    }
}

#[test]
fn a_destination_dying_mid_stream_cancels_and_resumes_on_the_source() {
    // Recorded: the destination QEMU was killed while the stream ran.
    let mut vm = after_setup(vec![
        ("query-migrate", active(600)),
        (
            "query-migrate",
            Ok(json!({"status": "failed", "error-desc": "Unable to write to socket: Connection reset by peer"})),
        ),
        ("migrate_cancel", ok()),
        ("query-status", status("paused")),
        ("cont", ok()),
    ]);
    let mut peer = FakePeer::default();
    let (out, _) = run(&mut vm, &mut peer, &plan());
    assert_eq!((out.result, out.phase, out.resumed_on_source), (Ending::Failed, Phase::Streaming, true));
    assert!(out.error.as_ref().unwrap().contains("Connection reset by peer"));
    assert_eq!(peer.calls, vec!["prepare web events", "abort web"]);
    assert!(out.summary().contains("runs on the source"), "{}", out.summary());
}

#[test]
fn a_migration_that_does_not_converge_is_escalated_then_cancelled() {
    let mut steps = vec![];
    // 1 s polls: escalations at 3, 6 and 9 s (300 -> 600 -> 1200 -> 2400 ms), cancel at 10 s.
    for t in 0..=10 {
        steps.push(("query-migrate", active(500)));
        if t == 3 || t == 6 || t == 9 {
            steps.push(("migrate-set-parameters", ok()));
        }
    }
    steps.extend([("migrate_cancel", ok()), ("query-status", status("running"))]);
    let mut vm = after_setup(steps);
    let mut peer = FakePeer::default();
    let (out, _) = run(&mut vm, &mut peer, &plan());
    assert_eq!(out.result, Ending::Failed);
    assert!(out.error.as_ref().unwrap().contains("did not complete within 10s (downtime limit 2400 ms)"), "{out:?}");
    let raised: Vec<&Value> =
        vm.seen.iter().filter(|(c, _)| c == "migrate-set-parameters").skip(1).map(|(_, a)| a).collect();
    assert_eq!(
        raised,
        vec![&json!({"downtime-limit": 600}), &json!({"downtime-limit": 1200}), &json!({"downtime-limit": 2400})]
    );
    assert!(!vm.commands().contains(&"cont"), "a running source is not resumed twice");
    assert_eq!(peer.calls.last().unwrap(), "abort web");
}

#[test]
fn an_operator_cancel_stops_the_stream() {
    let mut vm = after_setup(vec![("migrate_cancel", ok()), ("query-status", status("running"))]);
    let p = plan();
    p.cancel.store(true, Ordering::SeqCst);
    let (out, _) = run(&mut vm, &mut FakePeer::default(), &p);
    assert_eq!((out.result, out.error.as_deref()), (Ending::Failed, Some("cancelled by the operator")));
}

#[test]
fn a_destination_that_answers_no_at_resume_gets_the_guest_back_here() {
    let mut vm = after_setup(vec![
        ("query-migrate", completed()),
        ("migrate_cancel", ok()),
        ("query-status", status("postmigrate")),
        ("cont", ok()),
    ]);
    let mut peer = FakePeer { resume: Some(PeerError::Refused("its QEMU exited".into())), ..Default::default() };
    let (out, _) = run(&mut vm, &mut peer, &plan());
    assert_eq!((out.result, out.phase, out.resumed_on_source), (Ending::Failed, Phase::Resuming, true));
}

#[test]
fn the_lease_is_handed_over_only_once_the_source_is_paused_for_good() {
    let mut vm = after_setup(vec![("query-migrate", completed())]);
    let mut peer = FakePeer::default();
    let mut lease = FakeLease::default();
    let (out, _) = run_leased(&mut vm, &mut peer, &mut lease, &plan());
    assert_eq!(out.result, Ending::Completed);
    assert_eq!(lease.calls, ["release"], "released before the destination resumes, never taken back");
    assert_eq!(peer.calls.last().map(String::as_str), Some("resume web"));
}

#[test]
fn a_refused_resume_takes_the_lease_back_before_the_source_resumes() {
    let mut vm = after_setup(vec![
        ("query-migrate", completed()),
        ("migrate_cancel", ok()),
        ("query-status", status("postmigrate")),
        ("cont", ok()),
    ]);
    let mut peer = FakePeer { resume: Some(PeerError::Refused("cannot take the lease".into())), ..Default::default() };
    let mut lease = FakeLease::default();
    let (out, _) = run_leased(&mut vm, &mut peer, &mut lease, &plan());
    assert_eq!((out.result, out.resumed_on_source), (Ending::Failed, true));
    assert_eq!(lease.calls, ["release", "acquire"]);
}

#[test]
fn a_lease_that_cannot_be_taken_back_leaves_the_guest_paused_in_doubt() {
    let mut vm = after_setup(vec![("query-migrate", completed())]);
    let mut peer = FakePeer { resume: Some(PeerError::Refused("its QEMU exited".into())), ..Default::default() };
    let mut lease = FakeLease { reacquire_fails: true, ..Default::default() };
    let (out, _) = run_leased(&mut vm, &mut peer, &mut lease, &plan());
    assert_eq!((out.result, out.resumed_on_source), (Ending::InDoubt, false));
    assert!(!vm.commands().contains(&"cont"), "never resumed without the lease: {:?}", vm.commands());
    assert!(out.error.unwrap().contains("held by host 2"));
}

#[test]
fn a_lease_that_cannot_be_released_keeps_the_guest_here() {
    let mut vm = after_setup(vec![
        ("query-migrate", completed()),
        ("migrate_cancel", ok()),
        ("query-status", status("postmigrate")),
        ("cont", ok()),
    ]);
    let mut peer = FakePeer::default();
    let mut lease = FakeLease { release_fails: true, ..Default::default() };
    let (out, _) = run_leased(&mut vm, &mut peer, &mut lease, &plan());
    assert_eq!((out.result, out.resumed_on_source), (Ending::Failed, true));
    assert_eq!(peer.calls.last().map(String::as_str), Some("abort web"), "the destination never resumed");
}

#[test]
fn a_destination_silent_at_resume_leaves_the_guest_paused_and_in_doubt() {
    let mut vm = after_setup(vec![("query-migrate", completed())]);
    let mut peer = FakePeer { resume: Some(PeerError::Unreachable("timed out".into())), ..Default::default() };
    let (out, _) = run(&mut vm, &mut peer, &plan());
    assert_eq!((out.result, out.resumed_on_source), (Ending::InDoubt, false));
    assert!(!vm.commands().contains(&"cont"), "never resume a copy that may run elsewhere: {:?}", vm.commands());
    assert!(out.summary().starts_with("IN DOUBT"), "{}", out.summary());
}

#[test]
fn losing_the_source_qemu_mid_stream_is_reported_not_resumed() {
    let mut vm = after_setup(vec![("query-migrate", Err("QMP connection closed".into()))]);
    let mut peer = FakePeer::default();
    let (out, _) = run(&mut vm, &mut peer, &plan());
    assert_eq!((out.result, out.resumed_on_source), (Ending::Failed, false));
    assert_eq!(peer.calls.last().unwrap(), "abort web");
}
