//! Releases in the two-blade lab: both blades boot release N (`out/`), the demo guest counts on
//! blade1, and a web server serves release N+1 (`out/next`, the same tree built with another
//! version) as a deployment's would. First a rollout to a folder whose initrd does not match
//! its manifest stops at blade1 before anything moves, saying where everything stands; then
//! `bladevisor rollout` brings both blades to N+1 with kexec, one at a time, while the guest
//! goes on counting on the other blade, and the guest ends on its home blade. Needs both images
//! built (tests/run builds them) and the release CLI.

use std::time::Duration;

use bladevisor_lab::demo::*;
use bladevisor_lab::http::HttpDir;
use bladevisor_lab::{ok, work_dir, Image, TwoBlades};

/// A release folder whose initrd is not the one its manifest describes (one byte differs).
fn broken_release(next: &Image) -> HttpDir {
    let dir = work_dir("upgrade-broken-release");
    for f in ["bladevisor.manifest", "bladevisor.vmlinuz"] {
        std::fs::copy(next.dir.join(f), dir.join(f)).expect("copy the release");
    }
    let mut initrd = std::fs::read(&next.initrd).expect("the next initrd");
    let last = initrd.len() - 1;
    initrd[last] ^= 0xff;
    std::fs::write(dir.join("bladevisor.initrd"), initrd).expect("the broken initrd");
    HttpDir::serve(&dir)
}

/// A release its manifest describes truly, whose initrd is not one: it loads, and the new
/// kernel panics for want of a root (the lab's `panic=-1` resets it, and its QEMU, started with
/// `-no-reboot`, ends: the test boots it again from release N, as PXE would).
fn unbootable_release(next: &Image) -> HttpDir {
    let dir = work_dir("upgrade-unbootable-release");
    std::fs::copy(&next.kernel, dir.join("bladevisor.vmlinuz")).expect("copy the kernel");
    let initrd = b"not an initramfs\n".repeat(1 << 16);
    std::fs::write(dir.join("bladevisor.initrd"), &initrd).expect("the initrd");
    let text = std::fs::read_to_string(next.dir.join("bladevisor.manifest")).expect("manifest");
    let mut m: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
    let sha = bladevisor::config::credentials::sha256_hex(&initrd);
    m["artifacts"]["bladevisor.initrd"] = serde_json::json!({ "sha256": sha, "bytes": initrd.len() });
    std::fs::write(dir.join("bladevisor.manifest"), m.to_string()).expect("the manifest");
    HttpDir::serve(&dir)
}

#[test]
fn a_rollout_brings_every_blade_to_the_next_release_and_the_guest_never_stops() {
    let (img, next) = (Image::built(), Image::next());
    let (n, n1) = (img.version(), next.version());
    assert_ne!(n, n1, "out/ and out/next must be two releases");
    let served = HttpDir::serve(&next.dir);
    let broken = broken_release(&next);
    let mut lab = TwoBlades::start("upgrade", &img, 32, [None, None]);
    for b in lab.blades.iter_mut() {
        ok(b.wait_console("bladevisor ready", READY));
    }
    let [b1, b2] = &lab.blades;
    wait(&lab, "demo to run on blade1", Duration::from_secs(180), || state(b1) == "running");
    wait(&lab, "the demo counter on blade1", Duration::from_secs(400), || last_count(b1) >= 3);
    let blades =
        [format!("blade1=https://127.0.0.1:{}", b1.tls_port), format!("blade2=https://127.0.0.1:{}", b2.tls_port)];
    let rollout = |b: &bladevisor_lab::Blade, port: u16| {
        let url = format!("http://10.0.2.2:{port}/");
        let args = ["rollout", &url, "--blade", &blades[0], "--blade", &blades[1], "--return-guests"];
        cli(b, &args)
    };

    // 1. A release that does not match its manifest: refused on blade1 before it evacuates;
    //    the rollout stops there and says where every blade stands.
    let (success, out) = rollout(b1, broken.port);
    println!("{out}");
    assert!(!success, "the rollout must fail:\n{out}");
    for want in
        ["rollout stopped", "blade1: upgrade failed", "SHA-256", "not the release it describes", "upgraded: none"]
    {
        assert!(out.contains(want), "the rollout's output lacks {want:?}:\n{out}");
    }
    assert!(out.contains(&format!("blade1: release {n}, ready, guests running here: demo")), "{out}");
    let s1 = ok(b1.status());
    assert_eq!(s1.version, n);
    assert!(s1.drained.is_none(), "nothing was evacuated: {:?}", s1.drained);
    assert_eq!(s1.upgrade.as_ref().map(|u| u.phase.as_str()), Some("failed"), "{:?}", s1.upgrade);
    assert_eq!(state(b1), "running", "the guest never stopped");
    assert_eq!(ok(b2.status()).version, n, "blade2 was not touched");

    // 2. A release that verifies and does not boot: blade1 evacuates, loads it, and its new
    //    kernel panics; it comes back on release N (the PXE path) and drained. The rollout says
    //    so and stops there; the guest went on running on blade2.
    let unbootable = unbootable_release(&next);
    let url = format!("http://10.0.2.2:{}", unbootable.port);
    let rollout_cmd = cli_command(&lab.blades[0])
        .args(["rollout", &url, "--blade", &blades[0], "--blade", &blades[1]])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the CLI runs");
    ok(lab.blades[0].wait_exit(Duration::from_secs(300)));
    lab.restart(1, &img);
    ok(lab.blades[0].wait_console("bladevisor ready", READY));
    let done = rollout_cmd.wait_with_output().expect("the rollout ends");
    let out = format!("{}{}", String::from_utf8_lossy(&done.stdout), String::from_utf8_lossy(&done.stderr));
    println!("{out}");
    assert!(!done.status.success(), "the rollout must fail:\n{out}");
    let want = format!("blade1: upgrade failed: it came back on release {n}, not {n1}: the new release did not boot; the blade is drained");
    assert!(out.contains(&want), "the rollout's output lacks {want:?}:\n{out}\n{}", lab.report());
    assert!(out.contains("blade2: release") && out.contains("guests running here: demo"), "{out}");
    let [b1, b2] = &lab.blades;
    assert_eq!(state(b2), "running", "the guest runs on blade2, where the evacuation moved it");
    assert!(ok(b1.status()).drained.is_some(), "blade1 stays drained");

    // 3. The real release: both blades move to it, one at a time, through kexec.
    let before = last_count(b2);
    let (success, out) = rollout(b1, served.port);
    println!("{out}");
    assert!(success, "the rollout failed:\n{out}\n{}", lab.report());
    assert!(out.contains(&format!("rollout of release {n1} done")), "{out}");
    for b in ["blade1", "blade2"] {
        assert!(out.contains(&format!("{b}: {n} -> {n1} in")), "{out}");
    }
    for b in [b1, b2] {
        let s = ok(b.status());
        assert_eq!((s.version.as_str(), s.ready), (n1.as_str(), true), "{}: {s:?}", b.spec.node);
        let upgraded = s.upgraded.clone().unwrap_or_default();
        assert_eq!(upgraded.from.as_deref(), Some(n.as_str()), "{} booted by kexec from {n}", b.spec.node);
        // blade1 had nothing to move (the guest was on blade2); blade2's evacuation brought it home.
        let moved = if b.spec.node == "blade1" { 0 } else { 1 };
        assert_eq!(upgraded.guests_moved, Some(moved), "{}: {upgraded:?}", b.spec.node);
        assert!(s.drained.is_none(), "{} undrained itself once healthy: {:?}", b.spec.node, s.drained);
        assert!(s.degraded.is_empty(), "{}: {:?}", b.spec.node, s.degraded);
    }
    // The guest ends on its home blade, its count never restarted.
    wait(&lab, "demo to run on blade1, its home", Duration::from_secs(120), || state(b1) == "running");
    wait(&lab, "the counter on blade1 again", Duration::from_secs(300), || last_count(b1) > before + 2);
    let text = console(b1);
    let first = counts(&text).into_iter().min().unwrap_or(0);
    assert!(first >= before, "the count went on from {before} (blade1 first printed {first})\n{text}");
    assert!(!text.contains("bladevisor test guest"), "no new boot banner:\n{text}");
    assert!(demo(b2).is_none_or(|g| g.pid.is_none()), "no copy left on blade2: {:?}", demo(b2));
    // The new kernels came by kexec, not a reset: a reset would have ended the blades' QEMUs
    // (started with -no-reboot), which still run.
    for b in lab.blades.iter_mut() {
        assert!(b.is_running(), "{}'s QEMU ended: the upgrade went through a reset\n{}", b.spec.node, b.report());
    }
}
