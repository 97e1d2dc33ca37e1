//! HBA bring-up: every FC port Online (a LIP where it is not, then a bounded wait), then a scan
//! of every SCSI host at once (a scan only reaches remote ports that are Online) so the LUNs
//! behind them appear. Blades without FC (the QEMU lab) skip
//! straight to the scan.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::sysfs::{FcHost, Sysfs};

/// What bring-up found: the HBAs as they ended up, and what is wrong with them.
#[derive(Debug, Clone, Default)]
pub struct BringUp {
    pub hbas: Vec<FcHost>,
    pub problems: Vec<String>,
}

/// Runs the sequence. `pause` is called between polls of a port that is not yet Online (the
/// real one sleeps; tests use it to bring the fake port up).
pub fn bring_up(sys: &Sysfs, limit: Duration, mut pause: impl FnMut()) -> BringUp {
    let mut out = BringUp::default();
    let hosts = sys.fc_hosts();
    for h in &hosts {
        info!(hba = %h.host, wwpn = %h.wwpn, state = %h.port_state, speed = %h.speed, fabric = %h.fabric, "FC port");
    }
    let down: Vec<&FcHost> = hosts.iter().filter(|h| h.port_state != "Online").collect();
    for h in &down {
        info!(hba = %h.host, state = %h.port_state, "port not Online: issuing a LIP");
        if let Err(e) = sys.issue_lip(&h.host) {
            warn!(hba = %h.host, "cannot issue a LIP: {e}");
        }
    }
    let end = Instant::now() + limit;
    let mut waiting: Vec<String> = down.iter().map(|h| h.host.clone()).collect();
    while !waiting.is_empty() {
        waiting.retain(|h| sys.port_state(h) != "Online");
        if waiting.is_empty() || Instant::now() >= end {
            break;
        }
        pause();
    }
    for h in &waiting {
        let state = sys.port_state(h);
        warn!(hba = %h, state = %state, "port still not Online after the LIP");
        out.problems.push(format!("FC port {h} is {state} after a LIP and {:.0} s", limit.as_secs_f64()));
    }
    // Every host at once: the kernel's write returns only when that host's scan is done, and a
    // big fabric (or an emulated one under TCG) takes seconds per host.
    let hosts: Vec<String> = sys.scsi_hosts().into_iter().filter(|h| !waiting.contains(h)).collect();
    std::thread::scope(|s| {
        for host in &hosts {
            s.spawn(move || {
                let t0 = Instant::now();
                match sys.scan(host) {
                    Ok(()) => info!(hba = %host, ms = t0.elapsed().as_millis() as u64, "scanned"),
                    Err(e) => warn!(hba = %host, "cannot scan: {e}"),
                }
            });
        }
    });
    out.hbas = sys.fc_hosts();
    out
}

#[cfg(test)]
mod tests {
    use super::super::sysfs::fake;
    use super::*;

    fn scanned(root: &std::path::Path, host: &str) -> bool {
        std::fs::read_to_string(root.join("class/scsi_host").join(host).join("scan")).is_ok_and(|s| s == "- - -")
    }

    #[test]
    fn online_ports_are_scanned_without_a_lip() {
        let t = tempfile::tempdir().unwrap();
        fake::fc_host(t.path(), "host1", "0x2100000000000001", "Online");
        let b = bring_up(&Sysfs::new(t.path()), Duration::from_secs(1), || panic!("nothing to wait for"));
        assert!(b.problems.is_empty());
        assert!(!t.path().join("class/fc_host/host1/issue_lip").exists());
        assert!(scanned(t.path(), "host1"));
        assert_eq!(b.hbas[0].port_state, "Online");
    }

    #[test]
    fn a_port_that_comes_up_after_a_lip_is_waited_for() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().to_path_buf();
        fake::fc_host(&r, "host1", "0x2100000000000001", "Online");
        fake::fc_host(&r, "host2", "0x2100000000000002", "Linkdown");
        let mut polls = 0;
        let b = bring_up(&Sysfs::new(&r), Duration::from_secs(30), || {
            polls += 1;
            // The fabric answers the LIP on the second poll.
            if polls == 2 && std::fs::read_to_string(r.join("class/fc_host/host2/issue_lip")).is_ok() {
                std::fs::write(r.join("class/fc_host/host2/port_state"), "Online\n").unwrap();
            }
        });
        assert!(b.problems.is_empty(), "{:?}", b.problems);
        assert_eq!(std::fs::read_to_string(r.join("class/fc_host/host2/issue_lip")).unwrap(), "1");
        assert!(scanned(&r, "host1") && scanned(&r, "host2"));
        assert_eq!(b.hbas[1].port_state, "Online");
    }

    #[test]
    fn a_port_that_stays_down_is_reported_and_not_scanned() {
        let t = tempfile::tempdir().unwrap();
        fake::fc_host(t.path(), "host1", "0x2100000000000001", "Online");
        fake::fc_host(t.path(), "host2", "0x2100000000000002", "Linkdown");
        let b = bring_up(&Sysfs::new(t.path()), Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_millis(10))
        });
        assert_eq!(b.problems, vec!["FC port host2 is Linkdown after a LIP and 0 s"]);
        assert!(scanned(t.path(), "host1"));
        assert!(!scanned(t.path(), "host2"));
    }

    #[test]
    fn without_fc_every_scsi_host_is_still_scanned() {
        let t = tempfile::tempdir().unwrap();
        fake::scsi_host(t.path(), "host0");
        fake::scsi_host(t.path(), "host1");
        let b = bring_up(&Sysfs::new(t.path()), Duration::from_secs(1), || {});
        assert!(b.hbas.is_empty() && b.problems.is_empty());
        assert!(scanned(t.path(), "host0") && scanned(t.path(), "host1"));
    }
}
