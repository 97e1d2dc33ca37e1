//! Rescanning the SCSI hosts while the blade runs: what the seed's operator did by hand with
//! `echo "- - -" > /sys/class/scsi_host/hostN/scan` after carving a LUN. FC HBAs do not
//! announce new LUNs by themselves, so a reload of the alias table, `bladevisor rescan` and a
//! unit attention from an array all end here.
//!
//! Every host is scanned at once, each on its own thread (a scan of a big fabric takes seconds
//! and the kernel's write returns only when it is done), and the caller waits at most until a
//! deadline: a host still scanning then is reported as such and its scan goes on in the
//! background; a second scan of a host is never started while one runs. FC ports that are not
//! Online are skipped: a rescan never issues a LIP (that resets a healthy port's sessions; boot
//! does it only for ports that are down).

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::sysfs::Sysfs;

/// What one host's scan came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum Outcome {
    Scanned {
        ms: u64,
    },
    Skipped {
        why: String,
    },
    Failed {
        why: String,
    },
    /// Not done by the deadline: it goes on in the background.
    StillScanning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostScan {
    pub host: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A rescan: each host's outcome and how long the caller waited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanReport {
    pub hosts: Vec<HostScan>,
    pub took_ms: u64,
}

impl ScanReport {
    /// One line for an operator: `rescanned 2 SCSI hosts in 0.3 s (host3 skipped: ...)`.
    pub fn summary(&self) -> String {
        let scanned = self.hosts.iter().filter(|h| matches!(h.outcome, Outcome::Scanned { .. })).count();
        let mut s = format!("rescanned {scanned} SCSI host(s) in {:.1} s", self.took_ms as f64 / 1000.0);
        for h in &self.hosts {
            match &h.outcome {
                Outcome::Scanned { .. } => {}
                Outcome::Skipped { why } => s.push_str(&format!("; {} skipped: {why}", h.host)),
                Outcome::Failed { why } => s.push_str(&format!("; {} FAILED: {why}", h.host)),
                Outcome::StillScanning => s.push_str(&format!("; {} still scanning", h.host)),
            }
        }
        s
    }
}

/// What to scan of a host: all of it, or one target (`C T -`), as a unit attention asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Target { channel: u32, target: u32 },
}

impl Scope {
    /// What the kernel's `scan` attribute takes.
    pub fn words(self) -> String {
        match self {
            Scope::All => "- - -".into(),
            Scope::Target { channel, target } => format!("{channel} {target} -"),
        }
    }
}

/// Decides, per host, whether to scan it now: FC ports that are not Online and hosts whose
/// previous scan is still running are skipped, with the reason.
pub fn plan(hosts: &[String], fc_state: &dyn Fn(&str) -> Option<String>, busy: &BTreeSet<String>) -> Vec<HostScan> {
    hosts
        .iter()
        .map(|h| {
            let skip = if busy.contains(h) {
                Some("its previous scan is still running".to_string())
            } else {
                match fc_state(h) {
                    Some(state) if state != "Online" => {
                        Some(format!("FC port {state}: not scanned (a rescan never issues a LIP)"))
                    }
                    _ => None,
                }
            };
            HostScan {
                host: h.clone(),
                outcome: match skip {
                    Some(why) => Outcome::Skipped { why },
                    None => Outcome::StillScanning,
                },
            }
        })
        .collect()
}

/// Scans hosts on threads of their own; remembers which are still scanning.
#[derive(Debug, Clone)]
pub struct Scanner {
    pub sys: Sysfs,
    busy: Arc<Mutex<BTreeSet<String>>>,
}

impl Scanner {
    pub fn new(sys: Sysfs) -> Scanner {
        Scanner { sys, busy: Default::default() }
    }

    fn busy(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Scans every SCSI host (FC ports Online only), waiting until `deadline` at most.
    pub fn all(&self, deadline: Duration) -> ScanReport {
        self.hosts(&self.sys.scsi_hosts(), Scope::All, deadline)
    }

    /// Scans `hosts` in `scope`, waiting until `deadline` at most.
    pub fn hosts(&self, hosts: &[String], scope: Scope, deadline: Duration) -> ScanReport {
        let started = Instant::now();
        let fc = |h: &str| {
            let states = self.sys.fc_hosts();
            states.into_iter().find(|f| f.host == h).map(|f| f.port_state)
        };
        let mut report = plan(hosts, &fc, &self.busy());
        let (tx, rx) = mpsc::channel::<(String, Outcome)>();
        let mut waiting = 0;
        for h in report.iter_mut().filter(|h| h.outcome == Outcome::StillScanning) {
            let (host, sys, busy, tx) = (h.host.clone(), self.sys.clone(), self.busy.clone(), tx.clone());
            self.busy().insert(host.clone());
            let spawned = std::thread::Builder::new().name(format!("scan-{host}")).spawn(move || {
                let t = Instant::now();
                let r = sys.scan_scope(&host, &scope.words());
                busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&host);
                let outcome = match r {
                    Ok(()) => Outcome::Scanned { ms: t.elapsed().as_millis() as u64 },
                    Err(e) => Outcome::Failed { why: e.to_string() },
                };
                let _ = tx.send((host, outcome));
            });
            match spawned {
                Ok(_) => waiting += 1,
                Err(e) => {
                    self.busy().remove(&h.host);
                    h.outcome = Outcome::Failed { why: format!("cannot start a scan thread: {e}") };
                }
            }
        }
        drop(tx);
        let end = started + deadline;
        while waiting > 0 {
            let Ok((host, outcome)) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) else { break };
            waiting -= 1;
            if let Some(h) = report.iter_mut().find(|h| h.host == host) {
                h.outcome = outcome;
            }
        }
        let report = ScanReport { hosts: report, took_ms: started.elapsed().as_millis() as u64 };
        for h in &report.hosts {
            match &h.outcome {
                Outcome::Failed { why } => warn!(hba = %h.host, "scan failed: {why}"),
                Outcome::StillScanning => warn!(hba = %h.host, "still scanning after {deadline:?}; it goes on"),
                _ => {}
            }
        }
        info!("{}", report.summary());
        report
    }
}

#[cfg(test)]
mod tests {
    use super::super::sysfs::fake;
    use super::*;

    fn scanned(root: &std::path::Path, host: &str) -> Option<String> {
        std::fs::read_to_string(root.join("class/scsi_host").join(host).join("scan")).ok()
    }

    #[test]
    fn every_host_is_scanned_but_fc_ports_that_are_not_online() {
        let t = tempfile::tempdir().unwrap();
        fake::fc_host(t.path(), "host1", "0x2100000000000001", "Online");
        fake::fc_host(t.path(), "host2", "0x2100000000000002", "Linkdown");
        fake::scsi_host(t.path(), "host0");
        let r = Scanner::new(Sysfs::new(t.path())).all(Duration::from_secs(10));
        let outcomes: Vec<(&str, &Outcome)> = r.hosts.iter().map(|h| (h.host.as_str(), &h.outcome)).collect();
        assert!(matches!(outcomes[0], ("host0", Outcome::Scanned { .. })), "{outcomes:?}");
        assert!(matches!(outcomes[1], ("host1", Outcome::Scanned { .. })), "{outcomes:?}");
        assert!(matches!(outcomes[2], ("host2", Outcome::Skipped { why }) if why.contains("never issues a LIP")));
        assert_eq!(scanned(t.path(), "host0").as_deref(), Some("- - -"));
        assert_eq!(scanned(t.path(), "host2"), None, "a port that is down is not scanned");
        assert!(!t.path().join("class/fc_host/host2/issue_lip").exists(), "and no LIP is issued");
        assert!(r.summary().starts_with("rescanned 2 SCSI host(s) in "), "{}", r.summary());
    }

    #[test]
    fn hosts_are_scanned_at_once_and_a_slow_one_is_left_to_finish_after_the_deadline() {
        // The fake scan attribute of host1 is a FIFO nobody reads yet: its write blocks, as a
        // scan of a big fabric does. host0 answers at once.
        let t = tempfile::tempdir().unwrap();
        fake::scsi_host(t.path(), "host0");
        fake::scsi_host(t.path(), "host1");
        let fifo = t.path().join("class/scsi_host/host1/scan");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let scanner = Scanner::new(Sysfs::new(t.path()));
        let r = scanner.all(Duration::from_millis(300));
        assert!(matches!(r.hosts[0].outcome, Outcome::Scanned { .. }), "{r:?}");
        assert_eq!(r.hosts[1].outcome, Outcome::StillScanning);
        assert!(r.took_ms < 5000, "the caller waited for the deadline, not for the slow host: {r:?}");
        // A second rescan while it still runs does not start another one on that host.
        let again = scanner.all(Duration::from_millis(100));
        assert!(matches!(&again.hosts[1].outcome, Outcome::Skipped { why } if why.contains("still running")));
        // The slow scan ends (the FIFO is read): the host may be scanned again.
        let mut words = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::open(&fifo).unwrap(), &mut words).unwrap();
        assert_eq!(words, "- - -");
        let end = Instant::now() + Duration::from_secs(10);
        while scanner.busy().contains("host1") && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!scanner.busy().contains("host1"));
    }

    #[test]
    fn a_target_scan_names_its_channel_and_target() {
        let t = tempfile::tempdir().unwrap();
        fake::scsi_host(t.path(), "host3");
        let r = Scanner::new(Sysfs::new(t.path())).hosts(
            &["host3".into()],
            Scope::Target { channel: 0, target: 7 },
            Duration::from_secs(5),
        );
        assert!(matches!(r.hosts[0].outcome, Outcome::Scanned { .. }));
        assert_eq!(scanned(t.path(), "host3").as_deref(), Some("0 7 -"));
    }

    #[test]
    fn a_host_whose_scan_fails_says_why() {
        let t = tempfile::tempdir().unwrap();
        // A host listed without a scan attribute (its folder is a file): the write fails.
        std::fs::create_dir_all(t.path().join("class/scsi_host")).unwrap();
        std::fs::write(t.path().join("class/scsi_host/host9"), "").unwrap();
        let r = Scanner::new(Sysfs::new(t.path())).all(Duration::from_secs(5));
        assert!(matches!(&r.hosts[0].outcome, Outcome::Failed { .. }), "{r:?}");
        assert!(r.summary().contains("host9 FAILED"), "{}", r.summary());
    }
}
