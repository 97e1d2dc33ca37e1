//! The management network: which NIC carries it, how it gets its address (a supervised DHCP
//! client, or a one-shot static setup), and whether it has one yet.

pub mod sntp;

use std::net::Ipv4Addr;
use std::path::Path;

use crate::config::cluster::Management;
use crate::config::services::{Backoff, RestartPolicy};
use crate::config::ServiceSpec;

/// Physical NICs under a `/sys/class/net` tree, in name order: those backed by a device
/// (not lo, bridges, taps or bonds) with an Ethernet link type.
pub fn physical_nics(class_net: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(class_net)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().join("device").exists())
                .filter(|e| std::fs::read_to_string(e.path().join("type")).is_ok_and(|t| t.trim() == "1"))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The management interface: the one the configuration names, else the first physical NIC.
pub fn choose_interface(class_net: &Path, mgmt: &Management) -> Result<String, String> {
    let nics = physical_nics(class_net);
    match &mgmt.interface {
        Some(name) if class_net.join(name).exists() => Ok(name.clone()),
        Some(name) => Err(format!("management interface {name} does not exist (NICs: {})", nics.join(", "))),
        None => nics.into_iter().next().ok_or_else(|| format!("no network interface found in {}", class_net.display())),
    }
}

/// The service that gives the management interface its address.
pub fn address_service(iface: &str, mgmt: &Management) -> ServiceSpec {
    let (name, argv, restart) = if mgmt.address == "dhcp" {
        // -f: stay in the foreground (supervised); -t 0: keep trying; -S: log to syslog too is
        // not wanted, stdout is our log.
        let argv = [
            "/bin/busybox",
            "udhcpc",
            "-f",
            "-i",
            iface,
            "-t",
            "0",
            "-T",
            "2",
            "-A",
            "3",
            "-s",
            "/usr/lib/bladevisor/udhcpc.script",
        ];
        ("dhcp", argv.iter().map(|s| s.to_string()).collect::<Vec<_>>(), RestartPolicy::Always)
    } else {
        let mut argv = vec!["/usr/lib/bladevisor/net-static".to_string(), iface.to_string(), mgmt.address.clone()];
        argv.extend(mgmt.gateway.clone());
        ("net-static", argv, RestartPolicy::OnFailure)
    };
    ServiceSpec {
        backoff: Backoff { initial_s: 1.0, max_s: 10.0, give_up_after: 0, ..Backoff::default() },
        stop_timeout_s: 3.0,
        ..ServiceSpec::new(name, argv, restart)
    }
}

/// The NIC with this MAC address under a `/sys/class/net` tree.
pub fn iface_by_mac(class_net: &Path, mac: &str) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(class_net)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_to_string(e.path().join("address")).is_ok_and(|a| a.trim().eq_ignore_ascii_case(mac)))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// udevd's database entry for the device whose id is `id` (`n<ifindex>` for a NIC,
/// `c<major>:<minor>` for a character device), once udevd has handled its event: None while
/// there is none, or while it marks the event as still under way (`ID_RENAMING=1`, written just
/// before a NIC is renamed, `ID_PROCESSING=1` in later udev versions). An entry is a few hundred
/// bytes: no more than 64 KiB of it is read.
fn udev_entry(udev: &Path, id: &str) -> Option<String> {
    let file = std::fs::File::open(udev.join("data").join(id)).ok()?;
    let mut entry = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, 64 * 1024), &mut entry).ok()?;
    let busy = entry.lines().any(|l| l == "E:ID_RENAMING=1" || l == "E:ID_PROCESSING=1");
    (!busy).then_some(entry)
}

/// Whether udevd has handled the "add" event of the device whose udev database id is `id`: its
/// entry is there and not marked as under way (`udev_entry`). Where no udevd runs (no
/// `<udev>/control`), there is nothing to wait for.
pub fn udev_has_handled(udev: &Path, id: &str) -> bool {
    !udev.join("control").exists() || udev_entry(udev, id).is_some()
}

/// Whether udevd is done naming the interface: until then the name may still change, and a NIC
/// that is up cannot be renamed. Done once udevd has handled it (`udev_entry`: seen in the lab,
/// eth0 chosen from an entry marked `ID_RENAMING=1` and renamed enp0s4 a few ms later, its DHCP
/// client failing) and the name the entry holds (`ID_NET_NAME`, what udev's rules chose), if any,
/// is the interface's. Where no udevd runs, at once.
pub fn udev_named(class_net: &Path, udev: &Path, iface: &str) -> Result<(), String> {
    if !udev.join("control").exists() {
        return Ok(());
    }
    let entry = std::fs::read_to_string(class_net.join(iface).join("ifindex"))
        .ok()
        .and_then(|index| udev_entry(udev, &format!("n{}", index.trim())))
        .ok_or_else(|| format!("udevd has not handled {iface} yet"))?;
    match entry.lines().find_map(|l| l.strip_prefix("E:ID_NET_NAME=")) {
        Some(name) if name != iface => Err(format!("udevd is renaming {iface} to {name}")),
        _ => Ok(()),
    }
}

/// The one-shot service that gives the peer link (traffic between blades) its address.
pub fn peer_link_service(iface: &str, cidr: &str) -> ServiceSpec {
    let argv = vec!["/usr/lib/bladevisor/net-static".to_string(), iface.to_string(), cidr.to_string()];
    ServiceSpec { stop_timeout_s: 3.0, ..ServiceSpec::new("peer-link", argv, RestartPolicy::OnFailure) }
}

/// The one-shot service that creates a bridge for guests' NICs on its uplink.
pub fn bridge_service(bridge: &str, uplink: Option<&str>) -> ServiceSpec {
    let mut argv = vec!["/usr/lib/bladevisor/bridge-up".to_string(), bridge.to_string()];
    argv.extend(uplink.map(String::from));
    ServiceSpec {
        stop_timeout_s: 3.0,
        // Ready once the bridge exists (taps can be attached), whether or not the script is done.
        ready: crate::config::services::Readiness {
            path: Some(format!("/sys/class/net/{bridge}/bridge")),
            ..Default::default()
        },
        ..ServiceSpec::new(bridge_service_name(bridge), argv, RestartPolicy::OnFailure)
    }
}

/// The one-shot service that sets up a bridge (what guests with a NIC on it wait for).
pub fn bridge_service_name(bridge: &str) -> String {
    format!("bridge-{bridge}")
}

/// The IPv4 addresses an interface has now.
pub fn ipv4_of(iface: &str) -> Vec<Ipv4Addr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return vec![] };
    addrs.filter(|a| a.interface_name == iface).filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip())).collect()
}

/// Creates (or takes over) a persistent tap device owned by `uid`/`gid`, so that a QEMU running
/// as that user can open it without privileges, and attaches it to `bridge`, up.
pub fn tap_for(tap: &str, uid: u32, gid: u32, bridge: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    const TUNSETIFF: u64 = 0x4004_54ca;
    const TUNSETPERSIST: u64 = 0x4004_54cb;
    const TUNSETOWNER: u64 = 0x4004_54cc;
    const TUNSETGROUP: u64 = 0x4004_54ce;
    const IFF_TAP: i16 = 0x0002;
    const IFF_NO_PI: i16 = 0x1000;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: i16,
        _pad: [u8; 22],
    }
    if tap.is_empty() || tap.len() > 15 {
        return Err(format!("tap name {tap:?} must be 1-15 characters"));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| format!("/dev/net/tun: {e} (is the tun module loaded?)"))?;
    let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
    req.name[..tap.len()].copy_from_slice(tap.as_bytes());
    let fd = tun.as_raw_fd();
    // SAFETY: TUNSETIFF reads and writes an ifreq we own; the other three take an integer.
    let calls = unsafe {
        [
            ("TUNSETIFF", nix::libc::ioctl(fd, TUNSETIFF as _, &mut req as *mut IfReq)),
            ("TUNSETOWNER", nix::libc::ioctl(fd, TUNSETOWNER as _, uid as nix::libc::c_ulong)),
            ("TUNSETGROUP", nix::libc::ioctl(fd, TUNSETGROUP as _, gid as nix::libc::c_ulong)),
            ("TUNSETPERSIST", nix::libc::ioctl(fd, TUNSETPERSIST as _, 1 as nix::libc::c_ulong)),
        ]
    };
    if let Some((what, _)) = calls.iter().find(|(_, r)| *r < 0) {
        return Err(format!("tap {tap}: {what}: {}", std::io::Error::last_os_error()));
    }
    drop(tun);
    for args in [vec!["link", "set", "dev", tap, "master", bridge], vec!["link", "set", "dev", tap, "up"]] {
        let out =
            std::process::Command::new("ip").args(&args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if !out.status.success() {
            return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_nic(root: &Path, name: &str, physical: bool, kind: &str) {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
        if physical {
            std::fs::create_dir_all(d.join("device")).unwrap();
        }
    }

    #[test]
    fn the_first_physical_nic_carries_management() {
        let t = tempfile::tempdir().unwrap();
        fake_nic(t.path(), "lo", false, "772");
        fake_nic(t.path(), "br0", false, "1");
        fake_nic(t.path(), "ens4", true, "1");
        fake_nic(t.path(), "ens3", true, "1");
        fake_nic(t.path(), "ib0", true, "32");
        assert_eq!(physical_nics(t.path()), vec!["ens3", "ens4"]);
        assert_eq!(choose_interface(t.path(), &Management::default()).unwrap(), "ens3");
        // Named by udevd once its database entry is there with this name; without udevd, at once.
        let udev = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("ens3/ifindex"), "2\n").unwrap();
        assert_eq!(udev_named(t.path(), udev.path(), "ens3"), Ok(()), "no udevd: nothing to wait for");
        std::fs::write(udev.path().join("control"), "").unwrap();
        assert_eq!(udev_named(t.path(), udev.path(), "ens3"), Err("udevd has not handled ens3 yet".into()));
        std::fs::create_dir(udev.path().join("data")).unwrap();
        std::fs::write(udev.path().join("data/n2"), "I:123\nE:ID_NET_NAME=enp0s4\nE:ID_NET_DRIVER=virtio_net\n")
            .unwrap();
        assert_eq!(
            udev_named(t.path(), udev.path(), "ens3"),
            Err("udevd is renaming ens3 to enp0s4".into()),
            "the entry is written, the rename not done"
        );
        std::fs::write(udev.path().join("data/n2"), "I:123\nE:ID_NET_NAME=ens3\nE:ID_RENAMING=1\n").unwrap();
        assert_eq!(udev_named(t.path(), udev.path(), "ens3"), Err("udevd has not handled ens3 yet".into()));
        std::fs::write(udev.path().join("data/n2"), "I:123\nE:ID_NET_NAME=ens3\n").unwrap();
        assert_eq!(udev_named(t.path(), udev.path(), "ens3"), Ok(()));
        std::fs::write(udev.path().join("data/n2"), "I:123\nE:ID_NET_DRIVER=virtio_net\n").unwrap();
        assert_eq!(udev_named(t.path(), udev.path(), "ens3"), Ok(()), "no rule names it: it keeps its name");
        assert!(udev_named(t.path(), udev.path(), "ens4").is_err(), "no ifindex: not there yet");
        let named = Management { interface: Some("ens4".into()), ..Management::default() };
        assert_eq!(choose_interface(t.path(), &named).unwrap(), "ens4");
        let missing = Management { interface: Some("eth9".into()), ..Management::default() };
        assert_eq!(
            choose_interface(t.path(), &missing).unwrap_err(),
            "management interface eth9 does not exist (NICs: ens3, ens4)"
        );
    }

    #[test]
    fn the_peer_link_is_found_by_its_mac() {
        let t = tempfile::tempdir().unwrap();
        fake_nic(t.path(), "enp0s4", true, "1");
        fake_nic(t.path(), "enp0s9", true, "1");
        std::fs::write(t.path().join("enp0s4/address"), "52:54:00:b1:ad:01\n").unwrap();
        std::fs::write(t.path().join("enp0s9/address"), "52:54:00:b1:be:01\n").unwrap();
        assert_eq!(iface_by_mac(t.path(), "52:54:00:B1:BE:01").as_deref(), Some("enp0s9"));
        assert_eq!(iface_by_mac(t.path(), "52:54:00:00:00:00"), None);
        let s = peer_link_service("enp0s9", "192.168.50.1/24");
        assert_eq!(
            (s.name.as_str(), s.argv[1].as_str(), s.argv[2].as_str()),
            ("peer-link", "enp0s9", "192.168.50.1/24")
        );
    }

    #[test]
    fn no_nic_is_a_clear_error() {
        let t = tempfile::tempdir().unwrap();
        assert!(choose_interface(t.path(), &Management::default())
            .unwrap_err()
            .starts_with("no network interface found"));
    }

    #[test]
    fn dhcp_or_static_decides_the_service() {
        let d = address_service("ens3", &Management::default());
        assert_eq!(d.name, "dhcp");
        assert_eq!(&d.argv[..3], &["/bin/busybox", "udhcpc", "-f"]);
        assert!(d.argv.contains(&"ens3".to_string()));
        let m = Management { address: "10.0.0.5/24".into(), gateway: Some("10.0.0.1".into()), interface: None };
        let s = address_service("ens3", &m);
        assert_eq!(s.name, "net-static");
        assert_eq!(s.argv, vec!["/usr/lib/bladevisor/net-static", "ens3", "10.0.0.5/24", "10.0.0.1"]);
        assert_eq!(s.restart, RestartPolicy::OnFailure);
    }
}
