//! The storage view of sysfs, rooted anywhere: `/sys` on a blade, a temp folder in tests.
//! Reads FC hosts, SCSI hosts, SCSI disks and device-mapper maps; writes LIPs and scans.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A fibre-channel HBA port, as `/sys/class/fc_host/hostN` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FcHost {
    /// `host3`
    pub host: String,
    pub wwpn: String,
    pub wwnn: String,
    /// `Online`, `Linkdown`, `Offline`, ...
    pub port_state: String,
    pub speed: String,
    pub fabric: String,
}

/// A SCSI disk: one path to a LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// `sdb`
    pub dev: String,
    /// Normalised WWID (`3<naa hex>`), from `device/wwid`.
    pub wwid: Option<String>,
    /// `running`, `offline`, `blocked`, `transport-offline`...
    pub state: String,
    /// The SCSI host (HBA) it is reached through: `host3`.
    pub host: Option<String>,
}

/// A device-mapper multipath map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    /// `dm-0`
    pub dm: String,
    /// Its name: the alias.
    pub name: String,
    /// The WWID from its uuid (`mpath-<wwid>`).
    pub wwid: Option<String>,
    pub size_bytes: u64,
    /// Its paths: `sdb`, `sdc`.
    pub slaves: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Sysfs {
    pub root: PathBuf,
}

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    v.sort_by_key(|n| natural_key(n));
    v
}

/// Sorts host2 before host10.
fn natural_key(n: &str) -> (String, u64) {
    let digits: String =
        n.chars().rev().take_while(|c| c.is_ascii_digit()).collect::<Vec<_>>().into_iter().rev().collect();
    (n[..n.len() - digits.len()].to_string(), digits.parse().unwrap_or(0))
}

impl Sysfs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Sysfs { root: root.into() }
    }

    pub fn fc_hosts(&self) -> Vec<FcHost> {
        let dir = self.root.join("class/fc_host");
        entries(&dir)
            .into_iter()
            .map(|h| {
                let d = dir.join(&h);
                let get = |f: &str| read(&d.join(f)).unwrap_or_default();
                FcHost {
                    wwpn: get("port_name"),
                    wwnn: get("node_name"),
                    port_state: get("port_state"),
                    speed: get("speed"),
                    fabric: get("fabric_name"),
                    host: h,
                }
            })
            .collect()
    }

    pub fn port_state(&self, host: &str) -> String {
        read(&self.root.join("class/fc_host").join(host).join("port_state")).unwrap_or_default()
    }

    /// Asks the HBA to re-initialise its link (loop initialisation, or a fabric re-login).
    pub fn issue_lip(&self, host: &str) -> std::io::Result<()> {
        fs::write(self.root.join("class/fc_host").join(host).join("issue_lip"), "1")
    }

    pub fn scsi_hosts(&self) -> Vec<String> {
        entries(&self.root.join("class/scsi_host"))
    }

    /// Scans every channel, target and LUN of a SCSI host (returns once the scan is done).
    pub fn scan(&self, host: &str) -> std::io::Result<()> {
        self.scan_scope(host, "- - -")
    }

    /// Scans what `words` names (`C T L`, each a number or `-`) of a SCSI host.
    pub fn scan_scope(&self, host: &str, words: &str) -> std::io::Result<()> {
        fs::write(self.root.join("class/scsi_host").join(host).join("scan"), words)
    }

    /// Removes a SCSI device (a path whose LUN the array no longer presents).
    pub fn delete_disk(&self, dev: &str) -> std::io::Result<()> {
        if dev.contains('/') || dev.starts_with('.') {
            return Err(std::io::Error::other(format!("not a device name: {dev}")));
        }
        fs::write(self.root.join("block").join(dev).join("device/delete"), "1")
    }

    pub fn disks(&self) -> Vec<Disk> {
        let block = self.root.join("block");
        entries(&block)
            .into_iter()
            .filter(|d| d.starts_with("sd"))
            .map(|dev| {
                let device = block.join(&dev).join("device");
                let host = fs::canonicalize(&device).ok().and_then(|p| {
                    p.components()
                        .filter_map(|c| c.as_os_str().to_str().map(String::from))
                        .find(|c| c.starts_with("host") && c[4..].chars().all(|d| d.is_ascii_digit()) && c.len() > 4)
                });
                Disk {
                    wwid: read(&device.join("wwid")).map(|w| super::aliases::normalise_wwid(&w)),
                    state: read(&device.join("state")).unwrap_or_else(|| "unknown".into()),
                    host,
                    dev,
                }
            })
            .collect()
    }

    pub fn maps(&self) -> Vec<Map> {
        let block = self.root.join("block");
        entries(&block)
            .into_iter()
            .filter(|d| d.starts_with("dm-"))
            .filter_map(|dm| {
                let d = block.join(&dm);
                let uuid = read(&d.join("dm/uuid")).unwrap_or_default();
                let wwid = uuid.strip_prefix("mpath-").map(String::from);
                // Only multipath maps: LVM, crypt and friends are not ours.
                wwid.as_ref()?;
                Some(Map {
                    name: read(&d.join("dm/name")).unwrap_or_default(),
                    wwid,
                    size_bytes: read(&d.join("size")).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 512,
                    slaves: entries(&d.join("slaves")),
                    dm,
                })
            })
            .collect()
    }
}

#[cfg(test)]
pub mod fake {
    //! A fake sysfs tree for tests: FC hosts, SCSI disks and multipath maps.
    use std::fs;
    use std::path::Path;

    pub fn fc_host(root: &Path, host: &str, wwpn: &str, state: &str) {
        let d = root.join("class/fc_host").join(host);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("port_name"), format!("{wwpn}\n")).unwrap();
        fs::write(d.join("node_name"), "0x20000024ff000001\n").unwrap();
        fs::write(d.join("port_state"), format!("{state}\n")).unwrap();
        fs::write(d.join("speed"), "16 Gbit\n").unwrap();
        fs::write(d.join("fabric_name"), "0x100000051e000001\n").unwrap();
        scsi_host(root, host);
    }

    pub fn scsi_host(root: &Path, host: &str) {
        let d = root.join("class/scsi_host").join(host);
        fs::create_dir_all(&d).unwrap();
    }

    /// An sd device reached through `host`, with the kernel's `naa.` WWID.
    pub fn disk(root: &Path, dev: &str, host: &str, naa: &str, state: &str) {
        let real = root.join("devices/pci0000:00").join(host).join(format!("target-{dev}")).join(format!("{dev}-lun"));
        fs::create_dir_all(&real).unwrap();
        fs::write(real.join("wwid"), format!("naa.{naa}\n")).unwrap();
        fs::write(real.join("state"), format!("{state}\n")).unwrap();
        let b = root.join("block").join(dev);
        fs::create_dir_all(&b).unwrap();
        let _ = fs::remove_file(b.join("device"));
        std::os::unix::fs::symlink(&real, b.join("device")).unwrap();
    }

    pub fn set_disk_state(root: &Path, dev: &str, state: &str) {
        fs::write(root.join("block").join(dev).join("device/state"), format!("{state}\n")).unwrap();
    }

    pub fn remove_disk(root: &Path, dev: &str) {
        fs::remove_dir_all(root.join("block").join(dev)).unwrap();
    }

    pub fn map(root: &Path, dm: &str, name: &str, wwid: &str, slaves: &[&str]) {
        let d = root.join("block").join(dm);
        fs::create_dir_all(d.join("dm")).unwrap();
        fs::write(d.join("dm/name"), format!("{name}\n")).unwrap();
        fs::write(d.join("dm/uuid"), format!("mpath-{wwid}\n")).unwrap();
        fs::write(d.join("size"), "2097152\n").unwrap();
        let _ = fs::remove_dir_all(d.join("slaves"));
        fs::create_dir_all(d.join("slaves")).unwrap();
        for s in slaves {
            fs::create_dir_all(d.join("slaves").join(s)).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fc_hosts_disks_and_maps_are_read_from_any_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fake::fc_host(r, "host10", "0x21000024ff000010", "Online");
        fake::fc_host(r, "host2", "0x21000024ff000002", "Linkdown");
        fake::disk(r, "sdb", "host2", "5000c50015ea71ac", "running");
        fake::disk(r, "sdc", "host10", "5000c50015ea71ac", "offline");
        fake::map(r, "dm-0", "vm1", "35000c50015ea71ac", &["sdb", "sdc"]);
        // A non-multipath map (LVM) is not ours.
        std::fs::create_dir_all(r.join("block/dm-1/dm")).unwrap();
        std::fs::write(r.join("block/dm-1/dm/uuid"), "LVM-abc\n").unwrap();
        let s = Sysfs::new(r);
        let hosts = s.fc_hosts();
        assert_eq!(hosts.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(), vec!["host2", "host10"]);
        assert_eq!(hosts[0].port_state, "Linkdown");
        assert_eq!(hosts[1].wwpn, "0x21000024ff000010");
        assert_eq!(s.scsi_hosts(), vec!["host2", "host10"]);
        let disks = s.disks();
        assert_eq!(
            disks[0],
            Disk {
                dev: "sdb".into(),
                wwid: Some("35000c50015ea71ac".into()),
                state: "running".into(),
                host: Some("host2".into())
            }
        );
        assert_eq!(disks[1].state, "offline");
        let maps = s.maps();
        assert_eq!(maps.len(), 1);
        assert_eq!(maps[0].name, "vm1");
        assert_eq!(maps[0].size_bytes, 1 << 30);
        assert_eq!(maps[0].slaves, vec!["sdb", "sdc"]);
    }

    #[test]
    fn a_tree_without_fc_is_empty_not_an_error() {
        let t = tempfile::tempdir().unwrap();
        let s = Sysfs::new(t.path());
        assert!(s.fc_hosts().is_empty() && s.disks().is_empty() && s.maps().is_empty());
    }
}
