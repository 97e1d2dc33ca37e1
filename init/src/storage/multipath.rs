//! multipath-tools, spoken to in its own language: the configuration we write for it (only the
//! listed WWIDs are claimed, everything else is blacklisted so local disks are never touched),
//! and its control socket (`multipathd reconfigure` without exec'ing a client from PID 1).

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::Duration;

use super::aliases::Alias;

/// multipath.conf for an alias table. One keyword per line: multipath misreads anything else.
pub fn render_conf(aliases: &[Alias]) -> String {
    let mut s = String::from(
        "# Written by bladevisor from the shared alias file; edits here are overwritten.\n\
         defaults {\n\
         \tuser_friendly_names no\n\
         \tfind_multipaths off\n\
         \tpolling_interval 5\n\
         \t# Queue I/O for a minute when every path is down (a fabric blip), then fail it.\n\
         \tno_path_retry 12\n\
         \tflush_on_last_del yes\n\
         \t# A LUN is a guest's disk: its partition table is the guest's data, which the host\n\
         \t# neither parses (kpartx) nor maps (a partition map held open would keep the map from\n\
         \t# being flushed when the LUN is removed).\n\
         \tskip_kpartx yes\n\
         }\n\
         # Only the LUNs of the alias file are multipathed: the blade's local disks are not.\n\
         blacklist {\n\
         \twwid \".*\"\n\
         }\n\
         blacklist_exceptions {\n",
    );
    for a in aliases {
        s.push_str(&format!("\twwid \"^{}$\"\n", regex_escape(&a.wwid)));
    }
    s.push_str("}\nmultipaths {\n");
    for a in aliases {
        s.push_str(&format!("\tmultipath {{\n\t\twwid \"{}\"\n\t\talias \"{}\"\n\t}}\n", a.wwid, a.alias));
    }
    s.push_str("}\n");
    s
}

fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if ".^$*+?()[]{}|\\".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// multipathd's control socket, in the abstract namespace.
const SOCKET: &str = "/org/kernel/linux/storage/multipathd";

/// Sends one command to multipathd and returns its answer. The protocol: a native-endian
/// length (size_t) then the NUL-terminated command; the answer comes back the same way.
pub fn command(cmd: &str, timeout: Duration) -> Result<String, String> {
    command_at(SOCKET, cmd, timeout)
}

/// `command` on a socket of another name (tests speak the protocol on their own).
fn command_at(socket: &str, cmd: &str, timeout: Duration) -> Result<String, String> {
    let addr = SocketAddr::from_abstract_name(socket).map_err(|e| e.to_string())?;
    let mut s = UnixStream::connect_addr(&addr).map_err(|e| format!("multipathd is not answering: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut msg = cmd.as_bytes().to_vec();
    msg.push(0);
    s.write_all(&msg.len().to_ne_bytes()).and_then(|_| s.write_all(&msg)).map_err(|e| format!("multipathd: {e}"))?;
    let mut len = [0u8; std::mem::size_of::<usize>()];
    s.read_exact(&mut len).map_err(|e| format!("multipathd: {e}"))?;
    let len = usize::from_ne_bytes(len);
    if len > 16 << 20 {
        return Err(format!("multipathd: implausible reply length {len}"));
    }
    let mut reply = vec![0u8; len];
    s.read_exact(&mut reply).map_err(|e| format!("multipathd: {e}"))?;
    Ok(String::from_utf8_lossy(&reply).trim_end_matches('\0').trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_claims_only_the_listed_wwids() {
        let aliases = vec![
            Alias { alias: "vm1".into(), wwid: "35000c50015ea71ac".into(), paths: Some(2), line: 1 },
            Alias { alias: "ldap".into(), wwid: "Vendor_FF01.000033".into(), paths: None, line: 2 },
        ];
        let c = render_conf(&aliases);
        assert!(c.contains("blacklist {\n\twwid \".*\"\n}\n"), "{c}");
        assert!(c.contains("\n\tskip_kpartx yes\n"), "guests' partitions are not mapped on the host: {c}");
        assert!(
            c.contains(
                "blacklist_exceptions {\n\twwid \"^35000c50015ea71ac$\"\n\twwid \"^Vendor_FF01\\.000033$\"\n}\n"
            ),
            "{c}"
        );
        assert!(c.contains("\tmultipath {\n\t\twwid \"35000c50015ea71ac\"\n\t\talias \"vm1\"\n\t}\n"), "{c}");
        // One keyword per line, every section closed: what multipath needs to parse it.
        for line in c.lines() {
            let t = line.trim();
            assert!(!(t.contains('{') && t.contains('}')), "squeezed section: {line}");
        }
        assert_eq!(c.matches('{').count(), c.matches('}').count());
        // And our own reader of multipath.conf finds the same aliases in it.
        let (_, back) = super::super::aliases::parse(std::path::Path::new("multipath.conf"), &c).unwrap();
        assert_eq!(
            back.iter().map(|a| (&a.alias, &a.wwid)).collect::<Vec<_>>(),
            aliases.iter().map(|a| (&a.alias, &a.wwid)).collect::<Vec<_>>()
        );
    }

    /// A stand-in for multipathd on its own abstract socket: checks the request framing and
    /// answers `reply` in the same framing.
    fn fake_multipathd(name: &str, expect: &'static str, reply: &'static str) -> std::thread::JoinHandle<()> {
        let addr = SocketAddr::from_abstract_name(name).unwrap();
        let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut len = [0u8; std::mem::size_of::<usize>()];
            s.read_exact(&mut len).unwrap();
            let mut msg = vec![0u8; usize::from_ne_bytes(len)];
            s.read_exact(&mut msg).unwrap();
            assert_eq!(msg, format!("{expect}\0").into_bytes(), "command framed as multipathd expects");
            let mut out = reply.as_bytes().to_vec();
            out.push(0);
            s.write_all(&out.len().to_ne_bytes()).unwrap();
            s.write_all(&out).unwrap();
        })
    }

    #[test]
    fn commands_and_answers_use_multipathds_framing() {
        let name = format!("bladevisor-test-mpathd-{}", std::process::id());
        let server = fake_multipathd(&name, "reconfigure", "ok\n");
        assert_eq!(command_at(&name, "reconfigure", Duration::from_secs(5)).unwrap(), "ok");
        server.join().unwrap();
    }

    #[test]
    fn a_missing_multipathd_is_a_clear_error() {
        let name = format!("bladevisor-test-nobody-{}", std::process::id());
        let e = command_at(&name, "show version", Duration::from_millis(200)).unwrap_err();
        assert!(e.starts_with("multipathd is not answering"), "{e}");
    }
}
