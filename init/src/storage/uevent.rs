//! The kernel's own word that an array changed what it presents: a SCSI unit attention
//! "REPORTED LUNS DATA HAS CHANGED" reaches the kernel on the next command to any LUN of the
//! target, and the kernel announces it as a `change` uevent of that SCSI device with
//! `SDEV_UA=REPORTED_LUNS_DATA_HAS_CHANGED`. The blade listens on the kernel's uevent netlink
//! socket (beside udevd, which gets its own copy) and rescans that target, so a LUN the array
//! adds appears, and is assembled when its alias is in the table, without anyone asking.
//!
//! Messages are read into a fixed buffer: whatever the kernel (or anyone able to send to the
//! socket: only root) sends, nothing it says sizes an allocation.

use std::os::fd::AsRawFd;
use std::time::Duration;

use tracing::{info, warn};

use super::rescan::{Scanner, Scope};

/// A unit attention that asks for a rescan of one target: SCSI address `host:channel:target:lun`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunsChanged {
    pub host: u32,
    pub channel: u32,
    pub target: u32,
    pub lun: u64,
}

/// Reads one kernel uevent (`ACTION@DEVPATH` then NUL-separated `KEY=value`): a LUN inventory
/// change of a SCSI device, or None for anything else.
pub fn parse(msg: &[u8]) -> Option<LunsChanged> {
    let mut fields = msg.split(|b| *b == 0).filter_map(|f| std::str::from_utf8(f).ok());
    let head = fields.next()?;
    let (action, devpath) = head.split_once('@')?;
    if action != "change" {
        return None;
    }
    let mut ua = false;
    let mut subsystem_scsi = false;
    for f in fields {
        match f.split_once('=') {
            Some(("SDEV_UA", v)) => ua = v == "REPORTED_LUNS_DATA_HAS_CHANGED",
            Some(("SUBSYSTEM", v)) => subsystem_scsi = v == "scsi",
            _ => {}
        }
    }
    if !(ua && subsystem_scsi) {
        return None;
    }
    // The device's own name is its SCSI address: .../target2:0:1/2:0:1:3
    let addr = devpath.rsplit('/').next()?;
    let mut n = addr.split(':');
    let (host, channel, target, lun) = (n.next()?, n.next()?, n.next()?, n.next()?);
    if n.next().is_some() {
        return None;
    }
    Some(LunsChanged {
        host: host.parse().ok()?,
        channel: channel.parse().ok()?,
        target: target.parse().ok()?,
        lun: lun.parse().ok()?,
    })
}

/// Listens for the kernel's uevents for the life of the blade and rescans the target of every
/// LUN inventory change (multipathd, which follows udev, assembles what appears).
pub fn listen(scanner: Scanner) {
    use nix::sys::socket::{
        bind, recv, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
    };
    let sock = match socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    ) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot open the kernel's uevent socket ({e}): unit attentions from the SAN are not followed");
            return;
        }
    };
    // Group 1: the kernel's own messages (udevd's rebroadcasts are group 2).
    if let Err(e) = bind(sock.as_raw_fd(), &NetlinkAddr::new(0, 1)) {
        warn!("cannot bind the kernel's uevent socket ({e}): unit attentions from the SAN are not followed");
        return;
    }
    crate::spawn_worker("storage-uevents", move || {
        let mut buf = [0u8; 8192];
        loop {
            match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => {
                    if let Some(c) = parse(&buf[..n.min(buf.len())]) {
                        info!(
                            hba = %format!("host{}", c.host),
                            "unit attention from the SAN: REPORTED LUNS DATA HAS CHANGED ({}:{}:{}:{}); rescanning that target",
                            c.host, c.channel, c.target, c.lun
                        );
                        let scope = Scope::Target { channel: c.channel, target: c.target };
                        scanner.hosts(&[format!("host{}", c.host)], scope, Duration::from_secs(20));
                    }
                }
                // ENOBUFS: the kernel dropped messages while we were scanning; go on.
                Err(nix::errno::Errno::ENOBUFS) => warn!("uevents were dropped while a scan ran"),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    warn!("the uevent socket failed ({e}): unit attentions are no longer followed");
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(fields: &[&str]) -> Vec<u8> {
        fields.join("\0").into_bytes()
    }

    #[test]
    fn a_reported_luns_change_names_its_target() {
        let m = msg(&[
            "change@/devices/pci0000:00/0000:00:04.0/virtio1/host2/target2:0:0/2:0:0:3",
            "ACTION=change",
            "DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1/host2/target2:0:0/2:0:0:3",
            "SUBSYSTEM=scsi",
            "SDEV_UA=REPORTED_LUNS_DATA_HAS_CHANGED",
            "DEVTYPE=scsi_device",
            "SEQNUM=2231",
        ]);
        assert_eq!(parse(&m), Some(LunsChanged { host: 2, channel: 0, target: 0, lun: 3 }));
    }

    #[test]
    fn other_events_are_not_a_lun_change() {
        let base = "change@/devices/x/host2/target2:0:0/2:0:0:3";
        assert_eq!(parse(&msg(&[base, "SUBSYSTEM=scsi", "SDEV_UA=CAPACITY_DATA_HAS_CHANGED"])), None);
        assert_eq!(parse(&msg(&[base, "SUBSYSTEM=block", "SDEV_UA=REPORTED_LUNS_DATA_HAS_CHANGED"])), None);
        let add = "add@/devices/x/host2/target2:0:0/2:0:0:3";
        assert_eq!(parse(&msg(&[add, "SUBSYSTEM=scsi", "SDEV_UA=REPORTED_LUNS_DATA_HAS_CHANGED"])), None);
        let odd = "change@/devices/x/host2/target2:0:0/2:0:x:3";
        assert_eq!(parse(&msg(&[odd, "SUBSYSTEM=scsi", "SDEV_UA=REPORTED_LUNS_DATA_HAS_CHANGED"])), None);
        assert_eq!(parse(b""), None);
        assert_eq!(parse(&[0xff, 0xfe, 0, 0]), None);
        // udevd's own rebroadcasts start with "libudev": not a kernel message.
        assert_eq!(parse(b"libudev\0\xfe\xed\xca\xfe"), None);
    }
}
