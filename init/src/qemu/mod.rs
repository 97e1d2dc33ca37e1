//! A guest as QEMU: its command line and the supervised service that runs it (one QEMU process,
//! a direct child of PID 1 in its own cgroup, as the guest's own user), its QMP socket and its
//! serial console kept in a ring. Its definition is [`crate::config::guest`].

pub mod console;
pub mod offer;
pub mod qmp;

use std::path::{Path, PathBuf};

pub use crate::config::guest::{guest_id, tap_name, GuestSpec, GUEST_ID_BASE};
use crate::config::services::{Backoff, RestartPolicy};
use crate::config::ServiceSpec;

/// Where a guest's sockets live.
pub fn run_dir(run: &Path, name: &str) -> PathBuf {
    run.join("guests").join(name)
}

/// A guest's QMP socket.
pub fn qmp_path(run: &Path, name: &str) -> PathBuf {
    run_dir(run, name).join("qmp.sock")
}

/// Whether `/dev/kvm` can run guests here (an open and KVM_GET_API_VERSION that answers 12).
pub fn kvm_usable(dev: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(dev) else { return false };
    // KVM_GET_API_VERSION = _IO(0xAE, 0x00)
    // SAFETY: an ioctl without arguments on a file we own.
    let v = unsafe { nix::libc::ioctl(f.as_raw_fd(), 0xAE00 as _, 0) };
    v == 12
}

/// The QEMU every guest runs on.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// The QEMU command line for a guest: no shell, every value a separate argument.
pub fn argv(g: &GuestSpec, run: &Path, kvm: bool) -> Vec<String> {
    let dir = run_dir(run, &g.name);
    let mut a: Vec<String> = vec![
        QEMU.into(),
        "-name".into(),
        format!("guest={},debug-threads=on", g.name),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-machine".into(),
        g.machine.clone(),
        "-accel".into(),
        if kvm { "kvm".into() } else { "tcg".into() },
        "-cpu".into(),
        g.cpu.clone(),
        "-m".into(),
        g.memory_mib.to_string(),
        "-smp".into(),
        g.vcpus.to_string(),
        "-display".into(),
        "none".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp_path(run, &g.name).display()),
        "-chardev".into(),
        format!("socket,id=console,path={},server=on,wait=off", dir.join("console.sock").display()),
        "-serial".into(),
        "chardev:console".into(),
        // A QEMU taken over by its guest may not exec, raise privileges, change its scheduling
        // or use obsolete syscalls (QEMU's own seccomp filter).
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
    ];
    for (i, d) in g.disks.iter().enumerate() {
        let direct = if d.cache == "none" || d.cache == "directsync" { "on" } else { "off" };
        a.push("-blockdev".into());
        a.push(format!(
            "driver=host_device,filename=/dev/mapper/{},node-name=disk{i},cache.direct={direct},aio={},discard=unmap",
            d.alias, d.aio
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-pci,drive=disk{i},id=disk{i}{}", if i == 0 { ",bootindex=1" } else { "" }));
    }
    // QEMU runs unprivileged: its taps are created for it (see `service`), never by a helper
    // it would spawn.
    for (i, n) in g.nics.iter().enumerate() {
        a.push("-netdev".into());
        a.push(format!("tap,id=net{i},ifname={},script=no,downscript=no", tap_name(&g.name, i)));
        a.push("-device".into());
        a.push(format!("{},netdev=net{i},mac={}", n.model, n.mac));
    }
    a
}

/// The supervised service that runs a guest, as its own [`guest_id`] with only its own disks,
/// run folder, taps and `/dev/kvm`.
pub fn service(g: &GuestSpec, run: &Path, kvm: bool) -> ServiceSpec {
    let mut owns = vec![run_dir(run, &g.name)];
    owns.extend(g.disks.iter().map(|d| Path::new("/dev/mapper").join(&d.alias)));
    let unprivileged = crate::config::services::Unprivileged {
        uid: guest_id(&g.name),
        gid: guest_id(&g.name),
        owns,
        shared: if kvm { vec!["/dev/kvm".into()] } else { vec![] },
        taps: g.nics.iter().enumerate().map(|(i, n)| (tap_name(&g.name, i), n.bridge.clone())).collect(),
        drops_itself: false,
    };
    // Its taps are attached to its bridges: it starts once they are set up.
    let mut after: Vec<String> = g.nics.iter().map(|n| crate::net::bridge_service_name(&n.bridge)).collect();
    after.sort();
    after.dedup();
    ServiceSpec {
        unprivileged: Some(unprivileged),
        after,
        backoff: Backoff { initial_s: 1.0, max_s: 60.0, give_up_after: 10, ..Backoff::default() },
        stop_timeout_s: g.stop_timeout_s,
        enabled: g.autostart,
        qmp: Some(qmp_path(run, &g.name)),
        ..ServiceSpec::new(format!("guest-{}", g.name), argv(g, run, kvm), g.restart)
    }
}

/// The service for a guest arriving by live migration: started paused (`-S`), waiting for
/// its stream (`-incoming defer`, the listener is opened over QMP), and never restarted: a
/// stream that breaks ends it, and the source keeps the guest.
pub fn incoming_service(g: &GuestSpec, run: &Path, kvm: bool) -> ServiceSpec {
    let mut s = service(g, run, kvm);
    s.argv.extend(["-S".into(), "-incoming".into(), "defer".into()]);
    s.restart = RestartPolicy::Never;
    s.enabled = true;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::guest::testing::{guest, GOOD};

    #[test]
    fn a_guest_gets_a_pinned_machine_and_safe_disk_settings() {
        let g = guest(GOOD).unwrap().remove("web").unwrap();
        assert_eq!((g.machine.as_str(), g.cpu.as_str(), g.vcpus), ("pc-q35-7.2", "qemu64", 1));
        assert_eq!((g.disks[0].cache.as_str(), g.disks[0].aio.as_str()), ("none", "native"));
        assert_eq!(g.nics[0].mac, "52:54:00:aa:00:01");
        assert_eq!(g.restart, RestartPolicy::OnFailure);
        let a = argv(&g, Path::new("/run/bladevisor"), false);
        let joined = a.join(" ");
        assert_eq!(a[0], "/usr/bin/qemu-system-x86_64");
        assert!(joined.contains("-machine pc-q35-7.2 -accel tcg -cpu qemu64 -m 512 -smp 1"), "{joined}");
        assert!(
            joined.contains("driver=host_device,filename=/dev/mapper/vm1,node-name=disk0,cache.direct=on,aio=native"),
            "{joined}"
        );
        assert!(joined.contains("virtio-blk-pci,drive=disk0,id=disk0,bootindex=1"), "{joined}");
        assert!(joined.contains("-qmp unix:/run/bladevisor/guests/web/qmp.sock,server=on,wait=off"), "{joined}");
        let tap = tap_name("web", 0);
        assert!(tap.len() <= 15 && tap != tap_name("web2", 0) && tap != tap_name("web", 1), "{tap}");
        assert!(
            joined.contains(&format!(
                "-netdev tap,id=net0,ifname={tap},script=no,downscript=no -device virtio-net-pci,netdev=net0,mac=52:54:00:aa:00:01"
            )),
            "{joined}"
        );
        assert!(
            joined.contains("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"),
            "{joined}"
        );
        assert!(argv(&g, Path::new("/run"), true).contains(&"kvm".to_string()));
        // It runs as its own user, owning only its run folder, its LUN, its tap (and /dev/kvm's group).
        let u = service(&g, Path::new("/run/bladevisor"), true).unprivileged.expect("unprivileged");
        assert_eq!((u.uid, u.gid), (guest_id("web"), guest_id("web")));
        assert!(guest_id("web") >= GUEST_ID_BASE && guest_id("web") != guest_id("db"));
        assert_eq!(u.owns, vec![PathBuf::from("/run/bladevisor/guests/web"), PathBuf::from("/dev/mapper/vm1")]);
        assert_eq!(u.shared, vec![PathBuf::from("/dev/kvm")]);
        assert_eq!(u.taps, vec![(tap, "br0".to_string())]);
        // No shell anywhere: a name with spaces or quotes could not inject anything anyway.
        assert!(!a.iter().any(|x| x == "sh" || x == "-c"));
    }

    #[test]
    fn kvm_is_not_usable_without_a_device() {
        assert!(!kvm_usable(Path::new("/nonexistent/kvm")));
    }
}
