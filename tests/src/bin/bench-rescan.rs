//! New-LUN benchmark, in the live-storage lab (controllers that announce nothing, like FC
//! HBAs): per round, a new LUN is presented on both paths of blade1 and its alias published,
//! then `POST /v1/storage/reload` on blade1; measured from the request to its answer, which
//! comes once the new alias is healthy with its 2 paths (or the wait ends: then the round
//! fails). Beside it, the floor: a plain rescan of the same hosts (`POST /v1/storage/rescan`),
//! nothing else, in the same run.
//!
//! Usage: bench-rescan [rounds]   (default 5)

use std::time::{Duration, Instant};

use bladevisor::proto::request::{Operator, Rescanned};
use bladevisor::storage::reload::ReloadReport;
use bladevisor::storage::LunState;
use bladevisor_lab::bench::median;
use bladevisor_lab::demo::{post, READY};
use bladevisor_lab::{live, ok, wwid_of, Image, Request, LAB_LUNS};

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let img = Image::built();
    // The refresh as slow as it goes: only the reloads apply the file.
    let mut lab = live::start("bench-rescan", &img, 86400, "");
    for b in lab.blades.iter_mut() {
        ok(b.wait_console("bladevisor ready", READY));
    }
    let b1 = &lab.blades[0];
    let mut table: Vec<(String, String)> = LAB_LUNS.iter().map(|(a, w)| (a.to_string(), wwid_of(w))).collect();
    let (mut reload_ms, mut reload_scan_ms, mut scan_ms, mut scan_own_ms) = (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        let index = 10 + r;
        let wwn = format!("0x5000c50015ea72{index:02x}");
        let alias = format!("bench-{index}");
        let lun = live::new_lun(&lab, index, &wwn, &format!("LABLUN{index:04}"));
        live::present(b1, &lun, index);
        table.push((alias.clone(), wwid_of(&wwn)));
        live::publish(&lab, &table.iter().map(|(a, w)| (a.as_str(), w.as_str())).collect::<Vec<_>>());

        let t = Instant::now();
        let (code, body) = post(b1, Request::Operator(Operator::StorageReload { all: false }));
        let took = t.elapsed();
        assert_eq!(code, 200, "{body}");
        let rep: ReloadReport = serde_json::from_str(&body).expect("a reload report");
        let new = rep.added.iter().find(|a| a.alias == alias).unwrap_or_else(|| panic!("{alias} not added: {body}"));
        assert_eq!((new.state, new.paths_up), (LunState::Healthy, 2), "{body}");
        reload_ms.push(took.as_secs_f64() * 1000.0);
        reload_scan_ms.push(rep.scan.took_ms as f64);

        let t = Instant::now();
        let (code, body) = post(b1, Request::Operator(Operator::StorageRescan));
        let took = t.elapsed();
        assert_eq!(code, 200, "{body}");
        let scan: Rescanned = serde_json::from_str(&body).expect("a rescan report");
        scan_ms.push(took.as_secs_f64() * 1000.0);
        scan_own_ms.push(scan.scan.took_ms as f64);
        eprintln!("round {} of {rounds}: reload {:.0} ms, rescan {:.0} ms", r + 1, reload_ms[r], scan_ms[r]);
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("A new LUN on a running TCG blade (2 virtio-scsi hosts, hotplug=off), median of {rounds}:");
    println!(
        "  reload-aliases to the new alias healthy (2 paths): {:>6.0} ms   (of which its rescan: {:.0} ms)",
        median(&mut reload_ms),
        median(&mut reload_scan_ms)
    );
    println!(
        "  floor: a plain rescan of the same hosts:           {:>6.0} ms   (the scan itself: {:.0} ms)",
        median(&mut scan_ms),
        median(&mut scan_own_ms)
    );
}
