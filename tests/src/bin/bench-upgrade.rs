//! In-place upgrade against a cold reset, one blade of the lab booted as a real one is: PXE
//! (SeaBIOS, iPXE, the image's script and files over HTTP) with the lab configuration. Each
//! round: `upgrade` to the next release (`out/next`) with kexec, timed from the call to ready
//! on the new release; then the same blade through a cold reset (`reboot`, the firmware, iPXE
//! and release N again), timed from the call to ready. Both include the orderly shutdown (the
//! demo guest is stopped: a one-blade lab has nowhere to move it). Then the two-blade lab is
//! rolled out to the next release with the demo guest running: the rollout's duration and the
//! guest's total pause (the sum of its migrations' downtime). One run, one host.
//!
//! Usage: bench-upgrade [rounds]   (default 2, 0: the rollout only; needs out/ and out/next,
//! as tests/run builds them)

use std::time::{Duration, Instant};

use bladevisor::proto::request::Operator;
use bladevisor::proto::PowerAction;
use bladevisor_lab::demo::{cli, post, state, wait, READY};
use bladevisor_lab::{ok, serve_lab_config, work_dir, Blade, BladeSpec, Boot, Image, Request, TwoBlades};

/// Waits until the blade answers ready on `version` after it stopped answering (so a status
/// from before the restart never counts); returns the seconds since `t0`.
fn back_on(blade: &Blade, version: &str, t0: Instant) -> f64 {
    // A new boot is one that stopped answering or whose uptime went back (QEMU's user network
    // can hold a connection open across the reboot and hand it to the new boot).
    let (mut went_away, mut uptime) = (false, f64::MAX);
    loop {
        match blade.status() {
            Ok(s) => {
                went_away |= s.uptime_s < uptime && uptime != f64::MAX;
                uptime = s.uptime_s;
                if went_away && s.ready && s.version == version {
                    return t0.elapsed().as_secs_f64();
                }
            }
            Err(_) => went_away = true,
        }
        assert!(t0.elapsed() < READY * 2, "not back on {version} after {:?}\n{}", READY * 2, blade.report());
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One blade, PXE-booted: `rounds` of kexec upgrade beside a cold reset.
fn one_blade(img: &Image, next: &Image, release: &bladevisor_lab::http::HttpDir, rounds: usize) {
    let (n, n1) = (img.version(), next.version());
    let dir = work_dir("bench-upgrade");
    // The deployment server: release N for PXE, the lab configuration, the credentials.
    let (www, config) = serve_lab_config(&dir);
    for f in ["bladevisor.vmlinuz", "bladevisor.initrd", "bladevisor.ipxe"] {
        let _ = std::fs::remove_file(dir.join("www").join(f));
        std::os::unix::fs::symlink(img.dir.join(f), dir.join("www").join(f)).expect("link the release");
    }
    let url = format!("http://10.0.2.2:{}", www.port);
    let tftp = dir.join("tftp");
    std::fs::create_dir_all(&tftp).expect("tftp");
    std::fs::write(
        tftp.join("boot.ipxe"),
        format!("#!ipxe\nset bladevisor_args bladevisor.node=blade1 {config}\nchain {url}/bladevisor.ipxe\n"),
    )
    .expect("boot.ipxe");
    let spec = BladeSpec::new(
        "bench-upgrade",
        "52:54:00:b1:ad:01",
        Boot::Pxe { tftp_dir: tftp, bootfile: "boot.ipxe".into() },
    );
    let mut blade = Blade::start_with_san_in(spec, img, dir, 32);
    ok(blade.wait_console("bladevisor ready", READY + Duration::from_secs(300)));
    // A real blade's reboot resets it; the lab's QEMU would otherwise exit.
    ok(blade.qmp().and_then(|mut q| q.execute("set-action", serde_json::json!({"reboot": "reset"}))));

    let (mut kexec, mut cold) = (vec![], vec![]);
    for round in 1..=rounds {
        let upgrade = Operator::Upgrade {
            base_url: format!("http://10.0.2.2:{}", release.port),
            undrain: true,
            stop_guests: true,
        };
        let t0 = Instant::now();
        let (code, body) = post(&blade, Request::Operator(upgrade));
        assert_eq!(code, 200, "upgrade: {body}");
        kexec.push(back_on(&blade, &n1, t0));
        let t0 = Instant::now();
        let (code, body) = post(&blade, Request::Operator(Operator::Power(PowerAction::Reboot)));
        assert_eq!(code, 200, "reboot: {body}");
        cold.push(back_on(&blade, &n, t0));
        println!("round {round}: kexec {:.1} s, cold reset {:.1} s", kexec[round - 1], cold[round - 1]);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (k, c) = (median(&mut kexec), median(&mut cold));
    println!("One blade of the lab (TCG), call to ready, median of {rounds}:");
    println!("  upgrade {n} -> {n1} with kexec   {k:>6.1} s   (fetch, verify, stop, new kernel)");
    println!("  reboot through a cold reset    {c:>6.1} s   (stop, SeaBIOS, iPXE over HTTP, kernel)  baseline");
    println!(
        "  kexec takes {:.0} % of the cold reset's time; a real blade's POST adds minutes to the cold one",
        k / c * 100.0
    );
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    let (img, next) = (Image::built(), Image::next());
    let (n, n1) = (img.version(), next.version());
    let release = bladevisor_lab::http::HttpDir::serve(&next.dir);
    if rounds > 0 {
        one_blade(&img, &next, &release, rounds);
    }

    // The two-blade lab rolled out to the next release with the demo guest running.
    let mut lab = TwoBlades::start("bench-upgrade-rollout", &img, 32, [None, None]);
    for b in lab.blades.iter_mut() {
        ok(b.wait_console("bladevisor ready", READY));
    }
    let b1 = &lab.blades[0];
    wait(&lab, "demo to run on blade1", Duration::from_secs(300), || state(b1) == "running");
    let blades: Vec<String> =
        lab.blades.iter().map(|b| format!("{}=https://127.0.0.1:{}", b.spec.node, b.tls_port)).collect();
    let url = format!("http://10.0.2.2:{}", release.port);
    let (success, out) =
        cli(b1, &["rollout", &url, "--blade", &blades[0], "--blade", &blades[1], "--return-guests", "--json"]);
    assert!(success, "the rollout failed:\n{out}\n{}", lab.report());
    let summary: serde_json::Value =
        out.lines().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| panic!("no JSON summary in:\n{out}"));
    println!("Rollout of the two-blade lab, {n} -> {n1}, the demo guest running (one blade at a time):");
    println!(
        "  {:.0} s in all; the guest paused {} ms in all (the sum of its migrations' downtime)",
        summary["seconds"].as_f64().unwrap_or(0.0),
        summary["guest_pause_ms"]
    );
    for b in summary["blades"].as_array().into_iter().flatten() {
        println!(
            "  {}: {:.0} s, guests moved {}",
            b["node"].as_str().unwrap_or("?"),
            b["seconds"].as_f64().unwrap_or(0.0),
            b["guests_moved"]
        );
    }
}
