//! The end of a blade's life: after the supervisor has stopped the services in order, kill
//! whatever is left, sync, unmount, and reboot or power off.

use std::time::{Duration, Instant};

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::mounts::mount_points;
pub use crate::proto::PowerAction;

/// The signals PID 1 answers, with the conventions of sysvinit, busybox init and systemd.
pub fn action_for_signal(sig: i32) -> Option<PowerAction> {
    match Signal::try_from(sig).ok()? {
        // ctrl-alt-del arrives as SIGINT once reboot(RB_DISABLE_CAD) is set.
        Signal::SIGINT | Signal::SIGTERM => Some(PowerAction::Reboot),
        Signal::SIGUSR1 => Some(PowerAction::Halt),
        Signal::SIGUSR2 | Signal::SIGPWR => Some(PowerAction::Poweroff),
        _ => None,
    }
}

/// Sends `sig` to every process but PID 1 and reaps until none is left or `grace` is over.
/// Returns how many were still alive.
fn kill_everything(sig: Signal, grace: Duration) -> usize {
    let _ = kill(Pid::from_raw(-1), sig);
    let end = Instant::now() + grace;
    loop {
        super::reap_all(|_, _| {});
        let left = others_alive();
        if left == 0 || Instant::now() >= end {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes other than us and kernel threads (which have no command line).
fn others_alive() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()) && n != me))
                .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty()))
                .count()
        })
        .unwrap_or(0)
}

/// Unmounts everything but the root, innermost first. Detaching (lazy) so that a busy mount
/// does not stop the blade from going down; the data was synced before.
fn unmount_all() {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for target in mount_points(&info).iter().rev() {
        if target == "/" {
            continue;
        }
        if let Err(e) = nix::mount::umount2(target.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            warn!(mount = %target, "cannot unmount: {e}");
        }
    }
}

/// The final steps, once services are stopped. Only PID 1 may call this: it signals every
/// process in its PID namespace.
pub fn finish(action: PowerAction) {
    info!(action = action.as_str(), "sending SIGTERM to remaining processes");
    let left = kill_everything(Signal::SIGTERM, Duration::from_secs(3));
    if left > 0 {
        warn!(left, "sending SIGKILL to remaining processes");
        kill_everything(Signal::SIGKILL, Duration::from_secs(2));
    }
    info!("syncing and unmounting filesystems");
    nix::unistd::sync();
    unmount_all();
    nix::unistd::sync();
    let mode = match action {
        PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
        PowerAction::Poweroff => RebootMode::RB_POWER_OFF,
        PowerAction::Halt => RebootMode::RB_HALT_SYSTEM,
        PowerAction::Kexec => RebootMode::RB_KEXEC,
    };
    info!(action = action.as_str(), "bladevisor going down");
    let Err(e) = reboot(mode);
    if action == PowerAction::Kexec {
        // Nothing loaded any more, or the kernel refuses: everything is already stopped, so a
        // plain reboot (firmware, PXE: the release in force) beats a blade that runs nothing.
        error!("kexec failed: {e}; rebooting through the firmware instead");
        let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
        error!("reboot(2) failed too: {e}; staying up as a reaper");
        return;
    }
    error!(action = action.as_str(), "reboot(2) failed: {e}; staying up as a reaper");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_signals_follow_init_conventions() {
        assert_eq!(action_for_signal(libc_sig(Signal::SIGTERM)), Some(PowerAction::Reboot));
        assert_eq!(action_for_signal(libc_sig(Signal::SIGINT)), Some(PowerAction::Reboot));
        assert_eq!(action_for_signal(libc_sig(Signal::SIGUSR1)), Some(PowerAction::Halt));
        assert_eq!(action_for_signal(libc_sig(Signal::SIGUSR2)), Some(PowerAction::Poweroff));
        assert_eq!(action_for_signal(libc_sig(Signal::SIGPWR)), Some(PowerAction::Poweroff));
        assert_eq!(action_for_signal(libc_sig(Signal::SIGHUP)), None);
        assert_eq!(action_for_signal(9999), None);
    }

    fn libc_sig(s: Signal) -> i32 {
        s as i32
    }
}
