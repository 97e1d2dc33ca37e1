//! What PID 1 reads of and sets on the machine itself: memory, the NICs' MACs, the signals it
//! answers, its descriptor limit.

use std::sync::mpsc::Sender;

use signal_hook::consts::*;
use tracing::warn;

use super::Event;
use crate::proto;

/// Memory from sysinfo, in MiB.
pub fn memory() -> proto::Memory {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let mib = |b: u64| b / (1024 * 1024);
    proto::Memory {
        total_mib: mib(sys.total_memory()),
        used_mib: mib(sys.used_memory()),
        available_mib: mib(sys.available_memory()),
    }
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
