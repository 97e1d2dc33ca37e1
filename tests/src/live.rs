//! The live-storage lab: the two-blade lab with SAN controllers that announce nothing
//! (virtio-scsi `hotplug=off`: like FC HBAs, a LUN the array adds appears only when the host is
//! rescanned) and the alias table served as its own file, which the blades fetch and refresh.
//! LUNs are added and removed at runtime over each blade's QMP, on both paths.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::{lab_san, ok, repo_root, test_guest, work_dir, Blade, Image, Lun, TwoBlades, LAB_LUNS};

/// The file the blades fetch (`[storage] aliases-url`), in the lab's served folder.
pub const ALIASES: &str = "aliases";

/// The served alias file (TOML) for `entries` (alias, WWID), two paths each.
pub fn publish(lab: &TwoBlades, entries: &[(&str, &str)]) {
    let mut text = String::from("[aliases]\n");
    for (alias, wwid) in entries {
        text.push_str(&format!("{alias} = {{ wwid = \"{wwid}\", paths = 2 }}\n"));
    }
    // Written aside and renamed: a blade never fetches half a file.
    let tmp = lab.dir.join(format!("{ALIASES}.new"));
    std::fs::write(&tmp, text).expect("alias file");
    std::fs::rename(&tmp, lab.dir.join(ALIASES)).expect("alias file");
}

/// The lab's cluster.toml with its `[aliases]` served as a file instead, refreshed every
/// `refresh_s`, and the guests of `extra_guests` (TOML) added.
pub fn config(port: u16, refresh_s: u32, extra_guests: &str) -> String {
    let base = std::fs::read_to_string(repo_root().join("tests/two-blades.toml")).expect("lab config");
    let mut out = String::new();
    let mut skipping = false;
    for line in base.lines() {
        if line.starts_with('[') {
            skipping = line == "[aliases]";
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "\n[storage]\naliases-url = \"http://10.0.2.2:{port}/{ALIASES}\"\naliases-refresh-s = {refresh_s}\n\n{extra_guests}"
    ));
    out
}

/// Boots the live-storage lab: lab-vm1 (the demo guest's disk) and lab-vm2 presented, the
/// alias file naming them, the configuration with `extra_guests`.
pub fn start(name: &str, img: &Image, refresh_s: u32, extra_guests: &str) -> TwoBlades {
    let dir = work_dir(name);
    let luns = lab_san(&dir, 32);
    let http = crate::http::HttpDir::serve(&dir);
    std::fs::write(dir.join("cluster.toml"), config(http.port, refresh_s, extra_guests)).expect("lab config");
    let lab = TwoBlades::start_served(name, img, dir, http, luns, [None, None], false);
    let initial: Vec<(&str, String)> = LAB_LUNS.iter().map(|(a, w)| (*a, crate::wwid_of(w))).collect();
    publish(&lab, &initial.iter().map(|(a, w)| (*a, w.as_str())).collect::<Vec<_>>());
    lab
}

/// A new LUN file in the lab's folder (32 MiB), holding the test guest's boot sector.
pub fn new_lun(lab: &TwoBlades, index: usize, wwn: &str, serial: &str) -> Lun {
    use std::io::Write;
    let file: PathBuf = lab.dir.join(format!("lun{index}.lun"));
    let mut f = std::fs::File::create(&file).expect("LUN file");
    f.set_len(32 << 20).expect("LUN size");
    f.write_all(&std::fs::read(test_guest(&lab.dir)).expect("test guest")).expect("boot sector");
    Lun { file, wwn: wwn.into(), serial: serial.into(), scsi_id: None }
}

/// The array presents `lun` (number `index`) to `blade` on both paths. Nothing tells the blade.
pub fn present(blade: &Blade, lun: &Lun, index: usize) {
    let mut q = ok(blade.qmp());
    let opts = json!({
        "driver": "file", "filename": lun.file.display().to_string(), "node-name": format!("lun{index}"),
        "locking": "off", "cache": { "direct": false },
    });
    ok(q.execute("blockdev-add", opts));
    for hba in 0..2 {
        let mut dev = json!({
            "driver": "scsi-hd", "id": format!("lun{index}p{hba}"), "bus": format!("hba{hba}.0"),
            "drive": format!("lun{index}"), "serial": lun.serial, "share-rw": true,
        });
        if !lun.wwn.is_empty() {
            dev["wwn"] = json!(u64::from_str_radix(lun.wwn.trim_start_matches("0x"), 16).expect("hex WWN"));
        }
        ok(q.execute("device_add", dev));
    }
}

/// The array stops presenting LUN `index` to `blade` (both paths). Nothing tells the blade.
pub fn unpresent(blade: &Blade, index: usize) {
    let mut q = ok(blade.qmp());
    for hba in 0..2 {
        ok(q.execute("device_del", json!({ "id": format!("lun{index}p{hba}") })));
    }
    // device_del completes asynchronously; give QEMU a moment before the next step.
    std::thread::sleep(Duration::from_millis(500));
}
