//! Storage while blades run, in the live-storage lab (`bladevisor_lab::live`): SAN controllers
//! that announce nothing (like FC HBAs) and the alias table served as a file, refreshed every
//! 10 s. A LUN added on both paths of both blades and its alias published: `reload-aliases
//! --all` assembles it on both, with 2 paths, without a reboot, and the guest defined on it
//! (waiting for its disk since boot) starts; the LUN's ID is the vendor-specific kind (no NAA
//! designator) the seed's `Vendor_...` LUNs have. A second LUN with only the file republished:
//! the refresh picks it up, unchanged files cost a 304. A LUN removed from the array and its
//! alias from the file: its maps are flushed and its SCSI devices deleted. The alias of the
//! demo guest's disk removed while it runs: kept on blade1, with a warning in status, flushed
//! on blade2 (its paths still presented: left unclaimed). Needs the image built.

use std::time::{Duration, Instant};

use bladevisor::storage::LunState;
use bladevisor_lab::demo::*;
use bladevisor_lab::live::{self, ALIASES};
use bladevisor_lab::{ok, wwid_of, Blade, Image, LAB_LUNS};

/// What udev's scsi_id makes of a LUN with no NAA designator, only QEMU's vendor-specific one
/// (its serial): type 0, the vendor and model prepended, whitespace replaced.
const VENDOR_WWID: &str = "0QEMU_QEMU_HARDDISK_LABLUN0003";

const LATE: &str =
    "[guests.late]\nnode = \"blade1\"\nmemory-mib = 32\ndisks = [{ alias = \"lab-vm3\" }]\nstop-timeout-s = 10\n";

fn lun(b: &Blade, alias: &str) -> Option<(LunState, u32)> {
    ok(b.status()).luns.into_iter().find(|l| l.alias == alias).map(|l| (l.state, l.paths_up))
}

fn guest_state(b: &Blade, name: &str) -> String {
    ok(b.status()).guests.into_iter().find(|g| g.name == name).map(|g| g.state.to_string()).unwrap_or_default()
}

fn log_has(b: &Blade, needle: &str) -> bool {
    b.console().lines().any(|l| l.contains(needle))
}

#[test]
fn luns_come_and_go_while_the_blades_run() {
    let img = Image::built();
    let mut lab = live::start("live-storage", &img, 10, LATE);
    for b in lab.blades.iter_mut() {
        ok(b.wait_console("bladevisor ready", READY));
    }
    let (vm1, vm2) = (wwid_of(LAB_LUNS[0].1), wwid_of(LAB_LUNS[1].1));
    let [b1, b2] = &lab.blades;
    wait(&lab, "demo to run on blade1", Duration::from_secs(300), || state(b1) == "running");
    assert_eq!(guest_state(b1, "late"), "waiting-for-disks", "late's disk is not there yet");

    // 1. The array presents lab-vm3 (a vendor-specific ID) to both blades; nothing tells them.
    let lun3 = live::new_lun(&lab, 3, "", "LABLUN0003");
    for b in lab.blades.iter() {
        live::present(b, &lun3, 3);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(lab.blades.iter().all(|b| lun(b, "lab-vm3").is_none()), "not in the table yet");
    live::publish(&lab, &[("lab-vm1", &vm1), ("lab-vm2", &vm2), ("lab-vm3", VENDOR_WWID)]);
    let t = Instant::now();
    let (ok_, text) = cli(b1, &["reload-aliases", "--all"]);
    println!("reload-aliases --all ({:.1} s):\n{text}", t.elapsed().as_secs_f64());
    assert!(ok_, "{text}\n{}", lab.report());
    wait(&lab, "lab-vm3 healthy with 2 paths on both blades", Duration::from_secs(60), || {
        lab.blades.iter().all(|b| lun(b, "lab-vm3") == Some((LunState::Healthy, 2)))
    });
    assert!(
        text.contains("new     lab-vm3") || log_has(b1, "alias refresh"),
        "the reload reports the new alias (unless the 10 s refresh got there first): {text}"
    );
    wait(&lab, "late to start from its new disk", Duration::from_secs(300), || guest_state(b1, "late") == "running");

    // 2. Only the file changes (a LUN with an NAA ID this time): the refresh assembles it.
    let lun4 = live::new_lun(&lab, 4, "0x5000c50015ea7104", "LABLUN0004");
    for b in lab.blades.iter() {
        live::present(b, &lun4, 4);
    }
    let vm4 = wwid_of("0x5000c50015ea7104");
    live::publish(&lab, &[("lab-vm1", &vm1), ("lab-vm2", &vm2), ("lab-vm3", VENDOR_WWID), ("lab-vm4", &vm4)]);
    let t = Instant::now();
    wait(&lab, "the refresh to assemble lab-vm4 on both blades", Duration::from_secs(120), || {
        lab.blades.iter().all(|b| lun(b, "lab-vm4") == Some((LunState::Healthy, 2)))
    });
    println!("refresh: lab-vm4 healthy on both blades {:.1} s after the file changed", t.elapsed().as_secs_f64());
    // Each blade's next refresh of the unchanged file is a 304 (they come every 10 s).
    wait(&lab, "the unchanged file's refreshes to be answered 304", Duration::from_secs(60), || {
        let served = lab.http.served.lock().unwrap().clone();
        served.iter().filter(|(n, c)| n == ALIASES && *c == 304).count() >= 2
    });

    // 3. The array stops presenting lab-vm2, and its alias leaves the file: flushed everywhere.
    for b in lab.blades.iter() {
        live::unpresent(b, 1);
    }
    live::publish(&lab, &[("lab-vm1", &vm1), ("lab-vm3", VENDOR_WWID), ("lab-vm4", &vm4)]);
    let (ok_, text) = cli(b1, &["reload-aliases", "--all"]);
    println!("reload-aliases --all:\n{text}");
    assert!(ok_, "{text}");
    wait(&lab, "lab-vm2's maps to be flushed on both blades", Duration::from_secs(120), || {
        lab.blades.iter().all(|b| lun(b, "lab-vm2").is_none() && log_has(b, "alias removed"))
    });
    for b in lab.blades.iter() {
        let line = b.console().lines().find(|l| l.contains("alias removed") && l.contains("lab-vm2")).map(String::from);
        assert!(line.as_deref().is_some_and(|l| l.contains("map flushed") && l.contains("deleted")), "{line:?}");
    }

    // 4. The demo guest's disk leaves the file while demo runs on blade1: kept there, and
    //    status says why; blade2 runs nothing on it and lets it go.
    live::publish(&lab, &[("lab-vm3", VENDOR_WWID), ("lab-vm4", &vm4)]);
    let (ok_, text) = cli(b1, &["reload-aliases", "--all"]);
    println!("reload-aliases --all:\n{text}");
    assert!(ok_, "{text}");
    wait(&lab, "blade1 to keep lab-vm1 for demo, blade2 to flush it", Duration::from_secs(120), || {
        let kept =
            ok(b1.status()).warnings.iter().any(|w| w.contains("alias lab-vm1") && w.contains("guest demo uses it"));
        kept && lun(b1, "lab-vm1") == Some((LunState::Healthy, 2)) && lun(b2, "lab-vm1").is_none()
    });
    assert_eq!(state(b1), "running", "demo never noticed");
    let (_, status) = cli(b1, &["status"]);
    assert!(status.contains("guest demo uses it"), "{status}");
    // The alias comes back: nothing was lost, the warning goes.
    live::publish(&lab, &[("lab-vm1", &vm1), ("lab-vm3", VENDOR_WWID), ("lab-vm4", &vm4)]);
    let (ok_, text) = cli(b1, &["reload-aliases", "--all"]);
    assert!(ok_, "{text}");
    wait(&lab, "lab-vm1 back on both blades", Duration::from_secs(120), || {
        lab.blades.iter().all(|b| lun(b, "lab-vm1") == Some((LunState::Healthy, 2)))
            && !ok(b1.status()).warnings.iter().any(|w| w.contains("lab-vm1"))
    });
}
