//! Storage in the QEMU lab: two LUNs, each seen through two HBAs with one WWN, assembled as
//! `/dev/mapper/<alias>` from the alias table; a path fails under reads and comes back; an
//! alias whose LUN does not exist is reported missing without holding the boot hostage.
//! Needs the image built (`image/build`; `tests/run` does it first).

use std::time::{Duration, Instant};

use bladevisor::storage::LunState;
use bladevisor_lab::{
    lun_marker, ok, serve_files, start_lab_blade1, work_dir, wwid_of, Blade, BladeSpec, Boot, Image, Operator, Read,
    Request, LAB_LUNS, LAB_TOKEN, MARKER_OFFSET,
};
use serde_json::json;

const READY: Duration = Duration::from_secs(300);
const TOKEN: &str = LAB_TOKEN;

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2).map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0)).collect()
}

/// Reads 4 KiB of the LUN behind `/dev/mapper/<alias>` on the blade (O_DIRECT, through the map).
fn read_lun(blade: &Blade, alias: &str, offset: u64) -> Result<Vec<u8>, String> {
    let r = blade.call(&Request::Operator(Operator::ReadLun { alias: alias.into(), offset }), Some(TOKEN))?;
    if r.code != 200 {
        return Err(format!("HTTP {}: {}", r.code, r.body));
    }
    let v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| e.to_string())?;
    Ok(unhex(v["hex"].as_str().unwrap_or("")))
}

fn lun(blade: &Blade, alias: &str) -> bladevisor::storage::LunStatus {
    let st = ok(blade.status());
    st.luns.into_iter().find(|l| l.alias == alias).unwrap_or_else(|| panic!("{alias} not in status"))
}

/// Polls until `cond` holds for the alias's status; fails with what was seen.
fn wait_lun(
    blade: &Blade,
    alias: &str,
    what: &str,
    limit: Duration,
    cond: impl Fn(&bladevisor::storage::LunStatus) -> bool,
) {
    let end = Instant::now() + limit;
    loop {
        let l = lun(blade, alias);
        if cond(&l) {
            return;
        }
        assert!(Instant::now() < end, "{alias} never became {what}; last seen {l:?}\n{}", blade.report());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_path_fails_under_reads_and_returns_while_the_map_stays_up() {
    let img = Image::built();
    let (mut blade, _config_server) = start_lab_blade1("san-path", &img, 32);
    let luns = blade.spec.luns.clone();
    ok(blade.wait_console("bladevisor ready", READY));

    // Both aliases: their WWIDs, 2 of 2 paths, healthy; and each map is the right LUN.
    let status = ok(blade.status());
    assert!(status.degraded.is_empty(), "{:?}\n{}", status.degraded, blade.report());
    for (alias, wwn) in LAB_LUNS {
        let l = lun(&blade, alias);
        assert_eq!(
            (l.wwid.as_str(), l.paths_up, l.paths_expected, l.state),
            (wwid_of(wwn).as_str(), 2, 2, LunState::Healthy),
            "{l:?}"
        );
        // udev makes the /dev/mapper link a moment after the map exists.
        let end = Instant::now() + Duration::from_secs(60);
        let head = loop {
            match read_lun(&blade, alias, MARKER_OFFSET) {
                Ok(h) => break h,
                Err(e) if Instant::now() >= end => {
                    panic!("/dev/mapper/{alias} cannot be read: {e}\n{}", blade.report())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        assert!(
            head.starts_with(&lun_marker(alias)),
            "/dev/mapper/{alias} starts with {:?}",
            String::from_utf8_lossy(&head[..40])
        );
    }
    // Reading LUN data needs the token.
    assert_eq!(
        ok(blade.call(&Request::Operator(Operator::ReadLun { alias: "lab-vm1".into(), offset: 0 }), None)).code,
        401
    );

    // The fabric loses one path of lab-vm1 (its port on the second HBA) while the blade reads.
    let mut qmp = ok(blade.qmp());
    ok(qmp.execute("device_del", json!({ "id": "lun0p1" })));
    let end = Instant::now() + Duration::from_secs(120);
    let mut reads = 0u64;
    loop {
        // Every read, at ever new offsets (nothing from a cache), must succeed.
        let off = (reads * 4096 * 7) % (16 << 20);
        let data = read_lun(&blade, "lab-vm1", off)
            .unwrap_or_else(|e| panic!("read {reads} at {off} failed: {e}\n{}", blade.report()));
        assert_eq!(data.len(), 4096);
        reads += 1;
        let l = lun(&blade, "lab-vm1");
        if l.paths_up == 1 && l.state == LunState::Degraded {
            break;
        }
        assert!(Instant::now() < end, "lab-vm1 never showed the lost path: {l:?}\n{}", blade.report());
    }
    assert!(
        ok(read_lun(&blade, "lab-vm1", MARKER_OFFSET)).starts_with(&lun_marker("lab-vm1")),
        "still the same LUN after the path loss"
    );
    let console = blade.console();
    assert!(
        console.lines().any(|l| l.contains("LUN lab-vm1: path sd")
            && l.contains("lost")
            && l.contains("1 of 2 paths up, DEGRADED")),
        "a log line says which path went\n{}",
        blade.report()
    );
    let metrics = ok(blade.call(&Request::Read(Read::Metrics), None)).body;
    assert!(
        metrics
            .contains(&format!("bladevisor_lun_paths_up{{alias=\"lab-vm1\",wwid=\"{}\"}} 1", wwid_of(LAB_LUNS[0].1))),
        "{metrics}"
    );
    assert!(metrics.contains("bladevisor_lun_state{alias=\"lab-vm1\",state=\"degraded\"} 1"), "{metrics}");
    assert!(ok(blade.status()).degraded.iter().any(|d| d.contains("lab-vm1") && d.contains("degraded")));
    assert_eq!(lun(&blade, "lab-vm2").state, LunState::Healthy, "the other LUN is untouched");

    // The path comes back.
    ok(qmp.execute(
        "device_add",
        json!({ "driver": "scsi-hd", "id": "lun0p1", "bus": "hba1.0", "drive": "lun0", "wwn": u64::from_str_radix(luns[0].wwn.trim_start_matches("0x"), 16).unwrap(), "serial": luns[0].serial, "share-rw": true }),
    ));
    wait_lun(&blade, "lab-vm1", "healthy with 2 paths", Duration::from_secs(120), |l| {
        l.paths_up == 2 && l.state == LunState::Healthy
    });
    assert!(blade.console().contains("LUN lab-vm1 (35000c50015ea7100): DEGRADED -> healthy"), "{}", blade.report());
    assert!(ok(blade.status()).degraded.is_empty());
}

#[test]
fn an_alias_whose_lun_does_not_exist_is_missing_and_the_blade_is_still_ready() {
    let img = Image::built();
    let dir = work_dir("san-missing");
    // The alias file operators already have: multipath's bindings format, fetched at boot.
    let ghost = "3600a0b800000000000000000000dead";
    let bindings = format!("# multipath bindings\nlab-vm1 {}\nghost {ghost}\n", wwid_of(LAB_LUNS[0].1));
    // The site's time server is an hour ahead of the blade's clock: the blade steps to it.
    let ntp = bladevisor_lab::ntp::serve(3600.0);
    let cluster = format!("[cluster]\nname = \"lab\"\ntoken = \"{LAB_TOKEN}\"\n[storage]\nwait-s = 15\ndefault-paths = 2\n[time]\nntp-servers = [\"10.0.2.2:{ntp}\"]\n[nodes.blade1]\nmacs = [\"52:54:00:b1:ad:01\"]\n");
    let (_http, url) = serve_files(&dir, &[("bindings", &bindings), ("cluster.toml", &cluster)]);
    let spec = BladeSpec::new(
        "san-missing",
        "52:54:00:b1:ad:01",
        Boot::Direct { cmdline: format!("bladevisor.config={url}/cluster.toml bladevisor.aliases={url}/bindings") },
    );
    let mut blade = Blade::start_with_san_in(spec, &img, dir, 16);
    // The API answers during the boot, and says what it is doing: here, 15 s of waiting for a
    // LUN that will not come.
    let end = Instant::now() + READY;
    let booting = loop {
        if let Some(b) = blade.status().ok().and_then(|s| s.booting).filter(|b| b.starts_with("storage")) {
            break b;
        }
        assert!(Instant::now() < end, "no status during the storage wait\n{}", blade.report());
        std::thread::sleep(Duration::from_millis(500));
    };
    println!("status during the boot: booting = {booting:?}");
    ok(blade.wait_console("bladevisor ready", READY));
    let status = ok(blade.status());
    assert_eq!(status.booting, None, "the boot is over");
    let clock = status.clock.clone().unwrap_or_default();
    // An hour, give or take the second the blade's clock starts with (the RTC counts whole
    // seconds) and the exchange's own delay.
    let step: Option<f64> =
        clock.split("stepped by ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok());
    assert!(
        clock.starts_with("synchronised with 10.0.2.2:") && step.is_some_and(|s| (3595.0..3605.0).contains(&s)),
        "{clock}"
    );
    assert_eq!(status.aliases_source.as_deref(), Some(format!("fetched from {url}/bindings (Bindings)").as_str()));
    let g = lun(&blade, "ghost");
    assert_eq!((g.state, g.paths_up, g.dm.clone()), (LunState::Missing, 0, None), "{g:?}");
    let v = lun(&blade, "lab-vm1");
    assert_eq!(
        (v.state, v.paths_up, v.paths_expected),
        (LunState::Healthy, 2, 2),
        "bindings give no count: the default applies: {v:?}"
    );
    assert!(
        status.luns.iter().all(|l| l.alias != "lab-vm2"),
        "only the file's aliases are multipathed: {:?}",
        status.luns
    );
    assert!(
        status.degraded.iter().any(|d| d == &format!("LUN ghost ({ghost}) is missing: 0 of 2 paths up")),
        "{:?}",
        status.degraded
    );
    let console = blade.console();
    assert!(console.contains("storage not complete after 15 s: missing [ghost]"), "{}", blade.report());
}
