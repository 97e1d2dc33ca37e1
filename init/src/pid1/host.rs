//! What PID 1 reads of and sets on the machine itself: memory, the NICs' MACs, the signals it
//! answers, its descriptor limit.

use std::sync::mpsc::Sender;

use signal_hook::consts::*;
use tracing::warn;

use super::Event;
use crate::proto;

/// Memory in MiB, from one read of `/proc/meminfo` and of the free pages on the kernel's
/// per-CPU lists (`/proc/zoneinfo`).
pub fn memory() -> proto::Memory {
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else { return proto::Memory::default() };
    let page_kib = rustix::param::page_size() as u64 / 1024;
    let per_cpu_free_kib =
        std::fs::read_to_string("/proc/zoneinfo").map(|z| proto::per_cpu_free_kib(&z, page_kib)).unwrap_or(0);
    proto::Memory::from_meminfo(&meminfo, per_cpu_free_kib)
}

/// CPU time since boot, from one read of `/proc/stat` and of PID 1's own stat.
pub fn cpu_time() -> Option<proto::CpuTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    proto::CpuTime::from_proc(&stat, &own, rustix::param::clock_ticks_per_second())
}

/// MAC addresses of the blade's NICs (loopback and all-zero addresses left out).
pub fn blade_macs(class_net: &std::path::Path) -> Vec<String> {
    let mut macs: Vec<String> = std::fs::read_dir(class_net)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
                .map(|a| a.trim().to_string())
                .filter(|a| a.len() == 17 && a != "00:00:00:00:00:00")
                .collect()
        })
        .unwrap_or_default();
    macs.sort();
    macs
}

pub(super) fn start_signal_thread(tx: Sender<Event>) -> Result<(), String> {
    let mut signals =
        signal_hook::iterator::Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, nix::libc::SIGPWR])
            .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    crate::spawn_worker("signals", move || {
        for sig in signals.forever() {
            if tx.send(Event::Signal(sig)).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// Every API connection costs a descriptor: take the kernel's hard limit (4096 for init) instead
/// of its 1024 soft one, so the API's connection cap is reached before the descriptors run out.
pub(super) fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            warn!("cannot raise the open files limit: {e}");
        }
    }
}

/// Names each `major:minor` of a guest's disk figures by its device-mapper name (the LUN's
/// alias) where `<sys>/dev/block/<maj:min>/dm/name` says it; others keep their numbers.
pub fn name_disks(sys: &std::path::Path, disks: &mut [crate::supervisor::cgroup::DiskIo]) {
    for d in disks {
        if let Ok(name) = std::fs::read_to_string(sys.join("dev/block").join(&d.device).join("dm/name")) {
            let name = name.trim();
            if !name.is_empty() {
                d.device = name.to_string();
            }
        }
    }
}

/// The bytes through guest `guest`'s `count` NICs as the guest sees them (its tap's transmit is
/// the guest's receive), read from `<class_net>/<tap>/statistics`.
pub fn nic_io(class_net: &std::path::Path, guest: &str, count: usize) -> Vec<crate::supervisor::cgroup::NicIo> {
    (0..count)
        .filter_map(|i| {
            let tap = crate::config::guest::tap_name(guest, i);
            let read = |f: &str| -> Option<u64> {
                std::fs::read_to_string(class_net.join(&tap).join("statistics").join(f)).ok()?.trim().parse().ok()
            };
            Some(crate::supervisor::cgroup::NicIo {
                nic: format!("net{i}"),
                receive_bytes: read("tx_bytes")?,
                transmit_bytes: read("rx_bytes")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod io_tests {
    use super::*;

    #[test]
    fn disks_are_named_by_their_alias_and_nics_seen_from_the_guest() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("dev/block/253:0/dm")).unwrap();
        std::fs::write(d.path().join("dev/block/253:0/dm/name"), "lab-vm1\n").unwrap();
        let mut disks = vec![
            crate::supervisor::cgroup::DiskIo { device: "253:0".into(), ..Default::default() },
            crate::supervisor::cgroup::DiskIo { device: "8:0".into(), ..Default::default() },
        ];
        name_disks(d.path(), &mut disks);
        assert_eq!((disks[0].device.as_str(), disks[1].device.as_str()), ("lab-vm1", "8:0"));
        let tap = crate::config::guest::tap_name("web", 0);
        let stats = d.path().join("net").join(&tap).join("statistics");
        std::fs::create_dir_all(&stats).unwrap();
        std::fs::write(stats.join("rx_bytes"), "100\n").unwrap();
        std::fs::write(stats.join("tx_bytes"), "250\n").unwrap();
        let n = nic_io(&d.path().join("net"), "web", 2);
        assert_eq!(
            n,
            vec![crate::supervisor::cgroup::NicIo { nic: "net0".into(), receive_bytes: 250, transmit_bytes: 100 }]
        );
    }
}
