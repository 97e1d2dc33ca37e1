//! One cgroup (v2) per service, so that stopping a service stops everything it forked and the
//! operator can see what each daemon costs. Without a usable cgroup2 hierarchy the supervisor
//! still works, with process groups only (and says so once).

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Where the services' cgroups live: `<cgroup2 mount>/<prefix>/<service>`.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: Option<PathBuf>,
}

/// The mount point of the cgroup2 hierarchy, read from a mountinfo file.
pub fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mnt = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mnt))
    })
}

impl Cgroups {
    pub fn disabled() -> Self {
        Cgroups { root: None }
    }

    /// Sets up `<cgroup2>/<prefix>`; returns why not when that cannot be done.
    pub fn new(mountinfo: &Path, prefix: &str) -> Result<Self, String> {
        let info = fs::read_to_string(mountinfo).map_err(|e| format!("{}: {e}", mountinfo.display()))?;
        let mnt = find_cgroup2(&info).ok_or("no cgroup2 hierarchy is mounted")?;
        Self::at(&mnt.join(prefix))
    }

    pub fn at(root: &Path) -> Result<Self, String> {
        fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        Ok(Cgroups { root: Some(root.to_path_buf()) })
    }

    /// Turns on the cpu, memory and io controllers for the services' cgroups (in the parent of
    /// the prefix and in the prefix), so what each guest costs can be read. Says which could
    /// not be (an older kernel, a hierarchy delegated without them); nothing depends on them.
    pub fn enable_controllers(&self) -> Result<(), String> {
        let Some(root) = &self.root else { return Ok(()) };
        let mut failed = vec![];
        for dir in [root.parent().unwrap_or(root), root.as_path()] {
            let f = dir.join("cgroup.subtree_control");
            for c in ["+cpu", "+memory", "+io"] {
                let r = fs::OpenOptions::new().write(true).open(&f).and_then(|mut h| h.write_all(c.as_bytes()));
                if let Err(e) = r {
                    failed.push(format!("{} {c}: {e}", f.display()));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    /// What the service's cgroup has used, from the files the kernel keeps (None without
    /// cgroups; a figure whose controller is off is None).
    pub fn usage(&self, name: &str) -> Option<Usage> {
        let dir = self.dir(name)?;
        let read = |f: &str| fs::read_to_string(dir.join(f)).ok();
        Some(parse_usage(
            read("cpu.stat").as_deref(),
            read("memory.current").as_deref(),
            read("memory.stat").as_deref(),
            read("io.stat").as_deref(),
        ))
    }

    fn dir(&self, name: &str) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join(name))
    }

    /// Creates the service's cgroup and opens its `cgroup.procs` for the child to join itself
    /// before exec (so not one fork escapes), or None without cgroups.
    pub fn prepare(&self, name: &str) -> std::io::Result<Option<OwnedFd>> {
        let Some(dir) = self.dir(name) else { return Ok(None) };
        fs::create_dir_all(&dir)?;
        let f = fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?;
        Ok(Some(f.into()))
    }

    /// Pids in the service's cgroup (as this pid namespace sees them).
    pub fn pids(&self, name: &str) -> Vec<i32> {
        let Some(dir) = self.dir(name) else { return vec![] };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|p| *p > 0)
            .collect()
    }

    /// Kills everything in the cgroup at once where the kernel supports `cgroup.kill` (5.14+).
    pub fn kill_all(&self, name: &str) -> bool {
        let Some(dir) = self.dir(name) else { return false };
        fs::OpenOptions::new().write(true).open(dir.join("cgroup.kill")).and_then(|mut f| f.write_all(b"1")).is_ok()
    }

    /// Removes the (empty) cgroup. A cgroup that still holds a process stays, and is reused.
    pub fn remove(&self, name: &str) {
        if let Some(dir) = self.dir(name) {
            let _ = fs::remove_dir(dir);
        }
    }
}

/// A cgroup's figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// CPU time used, in seconds (`cpu.stat` usage_usec).
    pub cpu_seconds: Option<f64>,
    /// Memory in use (`memory.current`).
    pub memory_bytes: Option<u64>,
    /// Of that, file pages: the page cache it brought in, which the kernel may drop and read
    /// again (`memory.stat` file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_file_bytes: Option<u64>,
    /// Bytes read and written, all devices (`io.stat`).
    pub io_read_bytes: Option<u64>,
    pub io_write_bytes: Option<u64>,
    /// The same per block device (`major:minor`, named by the caller where it can).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskIo>,
    /// Bytes through each of the guest's NICs, as the guest sees them (filled by the caller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicIo>,
}

/// One block device's figures in a cgroup.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DiskIo {
    pub device: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

/// One NIC's bytes, as the guest sees them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NicIo {
    pub nic: String,
    pub receive_bytes: u64,
    pub transmit_bytes: u64,
}

/// `io.stat`'s lines, one per device.
pub fn parse_io_devices(io_stat: &str) -> Vec<DiskIo> {
    io_stat
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let device = words.next()?.to_string();
            let mut d = DiskIo { device, ..Default::default() };
            for kv in words {
                let (k, v) = kv.split_once('=')?;
                let v: u64 = v.parse().ok()?;
                match k {
                    "rbytes" => d.read_bytes = v,
                    "wbytes" => d.write_bytes = v,
                    "rios" => d.reads = v,
                    "wios" => d.writes = v,
                    _ => {}
                }
            }
            Some(d)
        })
        .collect()
}

/// Reads a cgroup's `cpu.stat`, `memory.current`, `memory.stat` and `io.stat` texts.
pub fn parse_usage(
    cpu_stat: Option<&str>,
    memory_current: Option<&str>,
    memory_stat: Option<&str>,
    io_stat: Option<&str>,
) -> Usage {
    let cpu_seconds = cpu_stat
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse::<u64>().ok()));
    let io = io_stat.map(|t| {
        let sum = |key: &str| -> u64 {
            t.split_whitespace().filter_map(|kv| kv.strip_prefix(key)).filter_map(|v| v.parse::<u64>().ok()).sum()
        };
        (sum("rbytes="), sum("wbytes="))
    });
    Usage {
        cpu_seconds: cpu_seconds.map(|u| u as f64 / 1e6),
        memory_bytes: memory_current.and_then(|t| t.trim().parse().ok()),
        memory_file_bytes: memory_stat
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("file ")).and_then(|v| v.trim().parse().ok())),
        io_read_bytes: io.map(|x| x.0),
        io_write_bytes: io.map(|x| x.1),
        disks: io_stat.map(parse_io_devices).unwrap_or_default(),
        nics: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_in_mountinfo() {
        let info = "22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw\n\
                    30 22 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro\n\
                    40 30 0:35 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2(info), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(find_cgroup2("22 1 0:21 / /sys rw - sysfs sysfs rw\n"), None);
    }

    #[test]
    fn a_plain_directory_stands_in_for_a_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = Cgroups::at(&tmp.path().join("bv")).unwrap();
        // A plain directory has no cgroup.procs until we make one, as the kernel would.
        std::fs::create_dir_all(tmp.path().join("bv/udevd")).unwrap();
        std::fs::write(tmp.path().join("bv/udevd/cgroup.procs"), "12\n0\n13\n").unwrap();
        assert!(cg.prepare("udevd").unwrap().is_some());
        assert_eq!(cg.pids("udevd"), vec![12, 13]);
        assert!(Cgroups::disabled().prepare("x").unwrap().is_none());
    }

    #[test]
    fn a_cgroups_figures_are_read_from_the_kernels_files() {
        let cpu = "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n";
        let io =
            "253:0 rbytes=1048576 wbytes=4096 rios=10 wios=1 dbytes=0 dios=0\n8:0 rbytes=512 wbytes=0 rios=1 wios=0\n";
        let u = parse_usage(
            Some(cpu),
            Some("33554432\n"),
            Some("anon 8388608\nfile 20971520\nfile_mapped 4096\n"),
            Some(io),
        );
        assert_eq!(u.cpu_seconds, Some(2.5));
        assert_eq!(u.memory_bytes, Some(32 << 20));
        assert_eq!(u.memory_file_bytes, Some(20 << 20), "the file line, not file_mapped");
        assert_eq!((u.io_read_bytes, u.io_write_bytes), (Some(1048576 + 512), Some(4096)));
        assert_eq!(
            u.disks[0],
            DiskIo { device: "253:0".into(), read_bytes: 1048576, write_bytes: 4096, reads: 10, writes: 1 }
        );
        assert_eq!(u.disks.len(), 2);
        assert_eq!(parse_usage(None, None, None, None), Usage::default(), "a controller that is off gives nothing");
        let tmp = tempfile::tempdir().unwrap();
        let cg = Cgroups::at(&tmp.path().join("bv")).unwrap();
        std::fs::create_dir_all(tmp.path().join("bv/guest-web")).unwrap();
        std::fs::write(tmp.path().join("bv/guest-web/memory.current"), "4096\n").unwrap();
        assert_eq!(cg.usage("guest-web").unwrap().memory_bytes, Some(4096));
        std::fs::write(tmp.path().join("bv/guest-web/cpu.stat"), "usage_usec 1500000\n").unwrap();
        assert_eq!(cg.usage("guest-web").unwrap().cpu_seconds, Some(1.5));
        assert_eq!(Cgroups::disabled().usage("guest-web"), None);
        assert_eq!(Cgroups::disabled().usage("guest-web").and_then(|u| u.memory_bytes), None);
    }
}
