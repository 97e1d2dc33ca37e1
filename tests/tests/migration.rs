//! Live migration in the two-blade lab: one SAN seen by both blades, a peer link between them,
//! the test guest (a boot sector printing an increasing counter) on blade1. The story an
//! operator cares about, in order: the guest cannot be started twice; a migration whose
//! destination dies leaves it running where it was; the CLI moves it to blade2 without a
//! reboot (the count never restarts); blade1 rebooting does not start a second copy; evacuating
//! blade2 brings it home. Needs the image built (`image/build`) and the release CLI.

use std::time::Duration;

use bladevisor::migration::Ending;
use bladevisor::proto::{PowerAction, ServiceAction};
use bladevisor_lab::demo::*;
use bladevisor_lab::pki;
use bladevisor_lab::{ok, Image, Operator, Peer, Request, TwoBlades};

#[test]
fn a_guest_moves_between_blades_without_restarting_and_never_runs_twice() {
    let img = Image::built();
    let mut lab = TwoBlades::start("migration", &img, 32, [None, None]);
    for b in lab.blades.iter_mut() {
        ok(b.wait_console("bladevisor ready", READY));
    }
    let [b1, b2] = &lab.blades;
    wait(&lab, "demo to run on blade1", Duration::from_secs(180), || state(b1) == "running");
    wait(&lab, "the demo counter on blade1", Duration::from_secs(400), || last_count(b1) >= 3);
    let pid = demo(b1).and_then(|g| g.pid).expect("a pid");
    assert!(demo(b2).is_none_or(|g| g.pid.is_none()), "blade2 runs no copy: {:?}", demo(b2));

    let (success, out) = cli(b2, &["list"]);
    assert!(success, "{out}");
    assert!(out.lines().any(|l| l.split_whitespace().take(4).eq(["demo", "blade1", "blade1", "running"])), "{out}");

    // 1. A second copy is refused, naming the blade that runs it.
    let (code, body) = post(b2, guest("demo", ServiceAction::Start));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("guest demo runs on blade1"), "{body}");
    assert!(demo(b2).is_none_or(|g| g.pid.is_none()), "still no copy on blade2: {:?}", demo(b2));

    // 1b. The operator's token does not make its holder a blade: a peer's call with it is
    //     refused (only the peer token from the blades' credentials file opens those).
    let forged = Request::Peer(Peer::Drained { node: "blade1".into(), drained: true });
    let (code, body) = post(b2, forged.clone());
    assert_eq!(code, 403, "{body}");
    //     Nor does the peer token alone: a blade's call needs its certificate too, signed by the
    //     cluster CA, naming the blade the call says it comes from.
    let peer_token = Some(bladevisor_lab::LAB_PEER_TOKEN);
    let r = ok(b2.call(&forged, peer_token));
    assert_eq!(r.code, 403, "the peer token without a blade's certificate: {}", r.body);
    let at = |config| bladevisor::httpc::Endpoint::Tls {
        addr: format!("127.0.0.1:{}", b2.tls_port),
        name: "blade2".into(),
        config,
    };
    let r = b2.call_at(&at(pki::foreign_client("blade1")), &forged, peer_token);
    assert!(r.is_err(), "a certificate of another CA is refused at the handshake: {:?}", r.map(|r| r.body));
    let r = ok(b2.call_at(&at(pki::blade_client("blade3")), &forged, peer_token));
    assert_eq!(r.code, 403, "blade3's certificate does not speak for blade1: {}", r.body);
    let r = ok(b2.call_at(&at(pki::blade_client("blade1")), &forged, peer_token));
    assert_eq!(r.code, 200, "blade1's certificate and the peer token open it: {}", r.body);
    let undo = Request::Peer(Peer::Drained { node: "blade1".into(), drained: false });
    assert_eq!(ok(b2.call_at(&at(pki::blade_client("blade1")), &undo, peer_token)).code, 200);
    let log = b2.console();
    assert!(log.contains("TLS handshake refused"), "the foreign certificate was logged\n{}", lab.report());

    // 2. The destination's QEMU dies mid-stream (a slow stream, so there is a middle): the
    //    guest keeps running on blade1, same process, counter going on; blade2 has nothing.
    let (code, body) = post(b1, migrate("blade2", Some(0.2)));
    assert_eq!(code, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_u64().expect("migration id");
    wait(&lab, "the stream to be under way", Duration::from_secs(120), || {
        migration(b1, id).progress.is_some_and(|p| p.transferred_bytes > 0) && state(b2) == "incoming"
    });
    let before = last_count(b1);
    let (code, body) = post(b2, guest("demo", ServiceAction::Kill));
    assert_eq!(code, 200, "{body}");
    wait(&lab, "the failed migration's outcome", Duration::from_secs(120), || migration(b1, id).outcome.is_some());
    let m = migration(b1, id);
    let o = m.outcome.clone().unwrap();
    assert_eq!((o.result, o.resumed_on_source), (Ending::Failed, true), "{m:?}");
    let g = demo(b1).unwrap();
    assert_eq!((g.state.as_str(), g.pid, g.restarts), ("running", Some(pid), 0), "the same QEMU runs on");
    wait(&lab, "the counter to go on on blade1", Duration::from_secs(120), || last_count(b1) > before + 2);
    assert_eq!(console(b1).matches("bladevisor test guest").count(), 1, "the guest never rebooted");
    wait(&lab, "blade2 to drop its incoming process", Duration::from_secs(60), || {
        demo(b2).is_none_or(|g| g.pid.is_none())
    });

    // 2b. An operator's cancel mid-stream: the same, through the CLI.
    let (code, body) = post(b1, migrate("blade2", Some(0.2)));
    assert_eq!(code, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_u64().unwrap();
    wait(&lab, "the second stream to be under way", Duration::from_secs(120), || {
        migration(b1, id).progress.is_some_and(|p| p.transferred_bytes > 0)
    });
    let (success, out) = cli(b1, &["migrate-cancel", "demo"]);
    assert!(success, "{out}");
    wait(&lab, "the cancelled migration's outcome", Duration::from_secs(120), || migration(b1, id).outcome.is_some());
    let o = migration(b1, id).outcome.unwrap();
    assert_eq!((o.result, o.error.as_deref()), (Ending::Failed, Some("cancelled by the operator")), "{o:?}");
    assert_eq!(demo(b1).and_then(|g| g.pid), Some(pid), "still the same QEMU on blade1");
    wait(&lab, "blade2 to drop its incoming process again", Duration::from_secs(60), || {
        demo(b2).is_none_or(|g| g.pid.is_none())
    });

    // 3. The CLI migrates it to blade2: it runs there only, its count continues.
    let before = last_count(b1);
    let (success, out) = cli(b1, &["migrate", "demo", "--to", "blade2"]);
    assert!(success && out.contains("completed in"), "migrate failed:\n{out}\n{}", lab.report());
    println!("{out}");
    wait(&lab, "demo to run on blade2", Duration::from_secs(60), || state(b2) == "running");
    // `bladevisor list`, asked of either blade, says where it runs now.
    let (success, out) = cli(b1, &["list"]);
    assert!(success, "{out}");
    let line = out.lines().find(|l| l.starts_with("demo ")).unwrap_or_else(|| panic!("no demo line:\n{out}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[..4], ["demo", "blade1", "blade2", "running"], "{out}");
    assert!(out.contains("blades: blade1 answered, blade2 answered"), "{out}");
    // The stream came over QEMU's TLS, verifying both ends, and blade2 let in only blade1.
    let query = Request::Operator(Operator::GuestQmp {
        guest: "demo".into(),
        command: serde_json::json!({"execute": "query-migrate-parameters"}),
    });
    let (code, body) = post(b2, query);
    assert_eq!(code, 200, "{body}");
    let p: serde_json::Value = serde_json::from_str(&body).unwrap();
    let p = if p.get("return").is_some() { &p["return"] } else { &p };
    assert_eq!(p["tls-creds"], "bladevisor-migration-tls", "{body}");
    assert_eq!(p["tls-authz"], "bladevisor-migration-authz", "{body}");
    // The paused source QEMU is killed once blade2 confirms; it takes a moment to be reaped.
    wait(&lab, "blade1's paused copy to be gone", Duration::from_secs(30), || state(b1) == "elsewhere");
    let g1 = demo(b1).unwrap();
    assert_eq!((g1.state.as_str(), g1.pid), ("elsewhere", None), "blade1 keeps no process: {g1:?}");
    assert!(!ok(b1.status()).services.iter().any(|s| s.name == "guest-demo"), "no guest service left on blade1");
    wait(&lab, "the counter on blade2", Duration::from_secs(300), || last_count(b2) > before + 2);
    let text = console(b2);
    let first = counts(&text).into_iter().min().unwrap();
    assert!(
        first >= before,
        "the count went on from {before}, it did not restart (blade2 first printed {first})\n{text}"
    );
    assert!(!text.contains("bladevisor test guest"), "no reboot on blade2:\n{text}");

    // 4. blade1 reboots while the guest runs on blade2: it does not start a second copy.
    let (code, body) = post(b1, Request::Operator(Operator::Power(PowerAction::Reboot)));
    assert_eq!(code, 200, "{body}");
    ok(lab.blades[0].wait_exit(Duration::from_secs(120)));
    lab.restart(1, &img);
    ok(lab.blades[0].wait_console("bladevisor ready", READY));
    let [b1, b2] = &lab.blades;
    wait(&lab, "blade1 to learn where demo runs", Duration::from_secs(120), || state(b1) == "elsewhere");
    // And it stays so: a definite "runs on blade2" is not asked again behind the operator's back
    // (a negative, so a short look later rather than a condition to wait for).
    std::thread::sleep(Duration::from_secs(5));
    let g1 = demo(b1).unwrap();
    assert_eq!((g1.state.as_str(), g1.pid), ("elsewhere", None), "{g1:?}");
    assert!(g1.reason.as_deref().unwrap_or("").contains("blade2"), "{g1:?}");
    assert_eq!(state(b2), "running");

    // 5. Evacuating blade2 brings the guest home, still counting; blade2 stays drained.
    let before = last_count(b2);
    let (success, out) = cli(b2, &["evacuate"]);
    assert!(success && out.contains("1 of 1 guests moved"), "evacuate failed:\n{out}\n{}", lab.report());
    println!("{out}");
    wait(&lab, "demo to run on blade1 again", Duration::from_secs(60), || state(b1) == "running");
    wait(&lab, "blade2's paused copy to be gone", Duration::from_secs(30), || state(b2) == "elsewhere");
    assert_eq!(demo(b2).and_then(|g| g.pid), None, "blade2 keeps no process");
    let s2 = ok(b2.status());
    assert!(s2.drained.is_some(), "blade2 is drained after its evacuation");
    // The guest had arrived on blade2 by migration: the result must be this stream's, not the
    // arrival's status QEMU shows until the new stream is connected.
    let o = s2
        .migrations
        .iter()
        .rev()
        .find(|m| m.direction == bladevisor::migration::Direction::Out)
        .and_then(|m| m.outcome.clone())
        .unwrap();
    assert!(o.result == Ending::Completed && o.qemu_total_ms > 0 && o.transferred_bytes > 0, "{o:?}");
    assert!(ok(b1.status()).drained_nodes.contains(&"blade2".to_string()), "blade1 remembers blade2 is drained");
    wait(&lab, "the counter on blade1 again", Duration::from_secs(300), || last_count(b1) > before + 2);
    let first = counts(&console(b1)).into_iter().min().unwrap();
    assert!(first >= before, "the count went on from {before} (blade1 first printed {first})");
    // A drained blade takes nothing until undrained.
    let (code, body) = post(b1, migrate("blade2", None));
    assert_eq!(code, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_u64().unwrap();
    wait(&lab, "the refused migration", Duration::from_secs(60), || migration(b1, id).outcome.is_some());
    let o = migration(b1, id).outcome.unwrap();
    assert!(o.error.as_deref().unwrap_or("").contains("blade2 is drained"), "{o:?}");
    assert_eq!(state(b1), "running");
    let (success, out) = cli(b2, &["undrain"]);
    assert!(success, "{out}");
    assert!(ok(b2.status()).drained.is_none());
}
