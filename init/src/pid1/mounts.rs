//! The early filesystems PID 1 mounts before anything else runs, each only where nothing is
//! mounted yet (an initramfs may have done some; a test namespace has most).

use std::path::Path;

use nix::mount::{mount, MsFlags};
use tracing::{debug, warn};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyMount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// In mount order: a later target may live inside an earlier one.
pub const EARLY_MOUNTS: &[EarlyMount] = &[
    EarlyMount { source: "proc", target: "/proc", fstype: "proc", flags: NOSUID_NODEV_NOEXEC, data: "" },
    EarlyMount { source: "sysfs", target: "/sys", fstype: "sysfs", flags: NOSUID_NODEV_NOEXEC, data: "" },
    EarlyMount { source: "devtmpfs", target: "/dev", fstype: "devtmpfs", flags: MsFlags::MS_NOSUID, data: "mode=0755" },
    EarlyMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    EarlyMount { source: "shm", target: "/dev/shm", fstype: "tmpfs", flags: NOSUID_NODEV, data: "mode=1777" },
    EarlyMount { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: NOSUID_NODEV, data: "mode=0755" },
    EarlyMount { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: NOSUID_NODEV, data: "mode=1777" },
    EarlyMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
    },
];

/// Mount points listed in a mountinfo text, in mount order.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo.lines().filter_map(|l| l.split_whitespace().nth(4)).map(unescape).collect()
}

/// mountinfo escapes spaces and friends as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The early mounts still missing, given what mountinfo lists.
pub fn missing(mountinfo: &str) -> Vec<&'static EarlyMount> {
    let present = mount_points(mountinfo);
    EARLY_MOUNTS.iter().filter(|m| !present.iter().any(|p| p == m.target)).collect()
}

/// Mounts what is missing. A failed mount is logged and skipped: the blade goes on, degraded,
/// and the failures are returned for status.
pub fn mount_early() -> Vec<String> {
    let mut failures = Vec::new();
    if !Path::new("/proc/self/mountinfo").exists() {
        if let Err(e) = do_mount(&EARLY_MOUNTS[0]) {
            failures.push(e);
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for m in missing(&info) {
        if let Err(e) = do_mount(m) {
            failures.push(e);
        }
    }
    failures
}

pub fn do_mount(m: &EarlyMount) -> Result<(), String> {
    let _ = std::fs::create_dir_all(m.target);
    let data = (!m.data.is_empty()).then_some(m.data);
    match mount(Some(m.source), m.target, Some(m.fstype), m.flags, data) {
        Ok(()) => {
            debug!(target_dir = m.target, fstype = m.fstype, "mounted");
            Ok(())
        }
        Err(e) => {
            let msg = format!("cannot mount {} on {}: {e}", m.fstype, m.target);
            warn!("{msg}");
            Err(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
1 0 0:1 / / rw - rootfs rootfs rw
22 1 0:21 / /proc rw,nosuid - proc proc rw
23 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
24 1 0:5 / /dev rw,nosuid - devtmpfs udev rw
25 24 0:23 / /dev/pts rw - devpts devpts rw
26 1 0:24 / /run rw - tmpfs tmpfs rw
27 1 0:25 / /mnt/with\\040space rw - tmpfs tmpfs rw
";

    #[test]
    fn only_what_is_not_mounted_is_planned() {
        let targets: Vec<&str> = missing(INFO).iter().map(|m| m.target).collect();
        assert_eq!(targets, vec!["/dev/shm", "/tmp", "/sys/fs/cgroup"]);
    }

    #[test]
    fn an_empty_mount_table_plans_everything_in_order() {
        let targets: Vec<&str> = missing("").iter().map(|m| m.target).collect();
        assert_eq!(targets[0], "/proc");
        assert_eq!(targets.len(), EARLY_MOUNTS.len());
        let dev = targets.iter().position(|t| *t == "/dev").unwrap();
        assert!(targets.iter().position(|t| *t == "/dev/pts").unwrap() > dev);
    }

    #[test]
    fn escaped_mount_points_are_decoded() {
        assert!(mount_points(INFO).contains(&"/mnt/with space".to_string()));
    }
}
