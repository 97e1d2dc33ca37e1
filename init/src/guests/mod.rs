//! Guests: the qemu-kvm processes placed on this blade. Their definitions live in the shared
//! configuration (`[guests.<name>]`); each placed guest runs as a supervised service (one QEMU
//! process, a direct child of PID 1 in its own cgroup) once its disks are up, with a QMP socket
//! and a serial console kept in a ring.

pub mod console;
pub mod qmp;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::error::{find_key_line, shorten, ConfigError};
use crate::config::services::{is_safe_name, Backoff, RestartPolicy};
use crate::config::ServiceSpec;
use crate::supervisor::ServiceState;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Disk {
    /// The alias of the LUN: the guest gets `/dev/mapper/<alias>`, the same on every blade.
    pub alias: String,
    /// QEMU cache mode; `none` (O_DIRECT) is the only safe one for a LUN shared between blades.
    #[serde(default = "cache_none")]
    pub cache: String,
    /// `native` (Linux AIO) or `io_uring` or `threads`.
    #[serde(default = "aio_native")]
    pub aio: String,
}

fn cache_none() -> String {
    "none".into()
}
fn aio_native() -> String {
    "native".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Nic {
    /// The bridge the blade creates on its uplink (see `[bridges]`).
    pub bridge: String,
    pub mac: String,
    #[serde(default = "virtio_net")]
    pub model: String,
}

fn virtio_net() -> String {
    "virtio-net-pci".into()
}

/// One guest, as every blade sees it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GuestSpec {
    #[serde(skip_deserializing)]
    pub name: String,
    /// The blade it is placed on: its home, where it starts at boot.
    pub node: String,
    /// Other blades it may live-migrate to (and be evacuated to), in order of preference.
    #[serde(default)]
    pub migrate_to: Vec<String>,
    pub memory_mib: u64,
    #[serde(default = "one")]
    pub vcpus: u32,
    /// Pinned CPU model and machine type: every blade of a release gives the guest the same
    /// virtual hardware, which live migration needs.
    #[serde(default = "qemu64")]
    pub cpu: String,
    #[serde(default = "machine")]
    pub machine: String,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// `on-failure` (default): a crash is restarted, the guest's own poweroff is respected.
    #[serde(default = "on_failure")]
    pub restart: RestartPolicy,
    /// Start at boot (else only on request).
    #[serde(default = "yes")]
    pub autostart: bool,
    /// Seconds an ACPI power-off gets before QEMU is told to quit, then killed.
    #[serde(default = "stop_timeout", deserialize_with = "crate::config::values::seconds")]
    pub stop_timeout_s: f64,
}

fn one() -> u32 {
    1
}
fn qemu64() -> String {
    "qemu64".into()
}
/// The machine type of the QEMU this image ships (Debian bookworm, QEMU 7.2).
fn machine() -> String {
    "pc-q35-7.2".into()
}
fn on_failure() -> RestartPolicy {
    RestartPolicy::OnFailure
}
fn yes() -> bool {
    true
}
fn stop_timeout() -> f64 {
    30.0
}

/// Bounds of one guest's virtual hardware (what QEMU x86 accepts, and then some sanity).
pub const MAX_MEMORY_MIB: u64 = 16 << 20;
pub const MAX_VCPUS: u32 = 1024;
pub const MAX_DEVICES: usize = 32;

/// Checks a guest table against the cluster: names, nodes, aliases, MACs.
pub fn validate(
    file: &Path,
    text: &str,
    guests: &mut BTreeMap<String, GuestSpec>,
    nodes: &[String],
    aliases: Option<&[String]>,
) -> Result<(), ConfigError> {
    let mut macs: BTreeMap<String, String> = BTreeMap::new();
    let mut ids: BTreeMap<u32, String> = BTreeMap::new();
    for (name, g) in guests.iter_mut() {
        let at = |key: &str, msg: String| match find_key_line(text, &format!("guests.{name}"), key)
            .or_else(|| find_key_line(text, "guests", name))
        {
            Some(l) => ConfigError::at_line(file, l, msg),
            None => ConfigError::new(file, msg),
        };
        if !is_safe_name(name) {
            return Err(at("", format!("guest name {name:?} must be 1-64 of [A-Za-z0-9._-]")));
        }
        g.name = name.clone();
        if let Some(other) = ids.insert(guest_id(name), name.clone()) {
            return Err(at(
                "",
                format!("guests {other} and {name} would run as the same user id {}: rename one", guest_id(name)),
            ));
        }
        if !nodes.contains(&g.node) {
            return Err(at("node", format!("guest {name}: node {:?} is not in [nodes]", g.node)));
        }
        for n in &g.migrate_to {
            if !nodes.contains(n) || *n == g.node {
                return Err(at(
                    "migrate-to",
                    format!("guest {name}: migrate-to {n:?} must be a node in [nodes] other than its home {}", g.node),
                ));
            }
        }
        if !(16..=MAX_MEMORY_MIB).contains(&g.memory_mib) {
            return Err(at("memory-mib", format!("guest {name}: memory-mib must be 16-{MAX_MEMORY_MIB}")));
        }
        if !(1..=MAX_VCPUS).contains(&g.vcpus) {
            return Err(at("vcpus", format!("guest {name}: vcpus must be 1-{MAX_VCPUS}")));
        }
        for (key, v) in [("cpu", &g.cpu), ("machine", &g.machine)] {
            if !crate::config::values::is_qemu_word(v) {
                return Err(at(
                    key,
                    format!("guest {name}: {key} {:?} must be one QEMU name, 1-64 of [A-Za-z0-9._-]", shorten(v, 80)),
                ));
            }
        }
        if g.disks.len() > MAX_DEVICES || g.nics.len() > MAX_DEVICES {
            return Err(at("disks", format!("guest {name}: at most {MAX_DEVICES} disks and {MAX_DEVICES} NICs")));
        }
        for d in &g.disks {
            if !crate::storage::aliases::valid_alias(&d.alias) {
                return Err(at("disks", format!("guest {name}: {:?} is not an alias name", shorten(&d.alias, 80))));
            }
            if let Some(known) = aliases {
                if !known.contains(&d.alias) {
                    return Err(at(
                        "disks",
                        format!("guest {name}: disk alias {:?} is not in the alias table", d.alias),
                    ));
                }
            }
            if !["none", "directsync"].contains(&d.cache.as_str()) {
                return Err(at(
                    "disks",
                    format!("guest {name}: cache {:?} is unsafe on a shared LUN (use none or directsync)", d.cache),
                ));
            }
            if !["native", "io_uring", "threads"].contains(&d.aio.as_str()) {
                return Err(at("disks", format!("guest {name}: aio {:?} is not native, io_uring or threads", d.aio)));
            }
        }
        for n in g.nics.iter_mut() {
            if !crate::config::values::NIC_MODELS.contains(&n.model.as_str()) {
                return Err(at(
                    "nics",
                    format!(
                        "guest {name}: NIC model {:?} is not one of {}",
                        shorten(&n.model, 80),
                        crate::config::values::NIC_MODELS.join(", ")
                    ),
                ));
            }
            let mac = crate::config::cluster::normalise_mac(&n.mac)
                .ok_or_else(|| at("nics", format!("guest {name}: {:?} is not a MAC address", n.mac)))?;
            if let Some(other) = macs.insert(mac.clone(), name.clone()) {
                return Err(at("nics", format!("guest {name}: MAC {mac} is also used by guest {other}")));
            }
            n.mac = mac;
        }
    }
    Ok(())
}

impl GuestSpec {
    /// Every blade this guest may run on: its home first, then its migration targets.
    pub fn blades(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.node).chain(self.migrate_to.iter())
    }
    pub fn may_run_on(&self, node: &str) -> bool {
        self.blades().any(|n| n == node)
    }
}

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

/// The QEMU command line for a guest: no shell, every value a separate argument.
pub fn argv(g: &GuestSpec, run: &Path, kvm: bool) -> Vec<String> {
    let dir = run_dir(run, &g.name);
    let mut a: Vec<String> = vec![
        "/usr/bin/qemu-system-x86_64".into(),
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

/// FNV-1a of a guest's name: stable across blades and releases (std's hasher is not).
fn name_hash(guest: &str) -> u32 {
    guest.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

/// First of the ids guests' QEMUs run as (far above any user an image has).
pub const GUEST_ID_BASE: u32 = 0x1000_0000;

/// The user and group id a guest's QEMU runs as: its own, so that a QEMU taken over by its
/// guest cannot open another guest's LUN, sockets or taps. Derived from the name, so the same
/// on every blade and across reboots; two guests whose ids collide are refused by `validate`.
pub fn guest_id(guest: &str) -> u32 {
    GUEST_ID_BASE + (name_hash(guest) & 0x0fff_ffff)
}

/// The tap device of a guest's NIC: stable for the guest, unique on the blade, and within the
/// kernel's 15 characters whatever the guest's name (`bv` + a hash of the name + `n` + index).
pub fn tap_name(guest: &str, index: usize) -> String {
    format!("bv{:08x}n{index}", name_hash(guest))
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

/// What an operator calls a guest's state.
pub fn guest_state(service: Option<ServiceState>, disks_ready: bool) -> GuestState {
    match service {
        None if !disks_ready => GuestState::WaitingForDisks,
        None => GuestState::Defined,
        Some(ServiceState::Waiting) | Some(ServiceState::Starting) => GuestState::Starting,
        Some(ServiceState::Running) => GuestState::Running,
        Some(ServiceState::Backoff) => GuestState::Crashed,
        Some(ServiceState::Stopping) => GuestState::Stopping,
        Some(ServiceState::Exited) | Some(ServiceState::Stopped) => GuestState::Stopped,
        Some(ServiceState::Failed) => GuestState::Failed,
    }
}

/// Where a guest stands on one blade: what `/v1/status` says of it (kebab-case on the wire, as
/// since the first release), and what metrics, the CLI and owner checks read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestState {
    /// Placed here; the maps of its disks are not all there yet.
    WaitingForDisks,
    /// Placed here and not started (not autostarted, or waiting for an owner check).
    Defined,
    Starting,
    Running,
    /// Its QEMU died; it is restarted after a backoff.
    Crashed,
    Stopping,
    Stopped,
    /// Restarted too often without a healthy run: left alone until an operator starts it.
    Failed,
    /// It runs on another blade.
    Elsewhere,
    /// Arriving here by live migration (a paused QEMU receiving the stream).
    Incoming,
    /// Leaving this blade by live migration.
    Migrating,
    /// Paused here after a migration its destination did not confirm.
    InDoubt,
    /// A state this release does not know (a peer on a newer one).
    #[serde(other)]
    Unknown,
}

impl GuestState {
    pub const ALL: [GuestState; 13] = [
        GuestState::WaitingForDisks,
        GuestState::Defined,
        GuestState::Starting,
        GuestState::Running,
        GuestState::Crashed,
        GuestState::Stopping,
        GuestState::Stopped,
        GuestState::Failed,
        GuestState::Elsewhere,
        GuestState::Incoming,
        GuestState::Migrating,
        GuestState::InDoubt,
        GuestState::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::WaitingForDisks => "waiting-for-disks",
            GuestState::Defined => "defined",
            GuestState::Starting => "starting",
            GuestState::Running => "running",
            GuestState::Crashed => "crashed",
            GuestState::Stopping => "stopping",
            GuestState::Stopped => "stopped",
            GuestState::Failed => "failed",
            GuestState::Elsewhere => "elsewhere",
            GuestState::Incoming => "incoming",
            GuestState::Migrating => "migrating",
            GuestState::InDoubt => "in-doubt",
            GuestState::Unknown => "unknown",
        }
    }

    /// Whether a QEMU for the guest exists on that blade, or will again by itself: what an owner
    /// check counts as "runs there". A state this release does not know counts too: a peer on a
    /// newer release is never taken as free.
    pub fn occupies(self) -> bool {
        matches!(
            self,
            GuestState::Starting
                | GuestState::Running
                | GuestState::Crashed
                | GuestState::Stopping
                | GuestState::Incoming
                | GuestState::Migrating
                | GuestState::InDoubt
                | GuestState::Unknown
        )
    }
}

impl std::fmt::Display for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One guest in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestStatus {
    pub name: String,
    pub state: GuestState,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Seconds in the current state (its uptime while running).
    pub uptime_s: f64,
    pub disks: Vec<String>,
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(text: &str) -> Result<BTreeMap<String, GuestSpec>, String> {
        #[derive(Deserialize)]
        struct F {
            guests: BTreeMap<String, GuestSpec>,
        }
        let file = Path::new("cluster.toml");
        let mut f: F = toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e).to_string())?;
        validate(Path::new("cluster.toml"), text, &mut f.guests, &["blade1".into()], Some(&["vm1".into()]))
            .map_err(|e| e.to_string())?;
        Ok(f.guests)
    }

    const GOOD: &str = "[guests.web]\nnode = \"blade1\"\nmemory-mib = 512\ndisks = [{ alias = \"vm1\" }]\nnics = [{ bridge = \"br0\", mac = \"52:54:00:AA:00:01\" }]\n";

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
    fn every_validation_error_names_the_guest_and_line() {
        let e = guest(&GOOD.replace("vm1", "vm9")).unwrap_err();
        assert_eq!(e, "cluster.toml:4: guest web: disk alias \"vm9\" is not in the alias table");
        let e = guest(&GOOD.replace("blade1", "blade7")).unwrap_err();
        assert_eq!(e, "cluster.toml:2: guest web: node \"blade7\" is not in [nodes]");
        let e = guest(&GOOD.replace("52:54:00:AA:00:01", "nope")).unwrap_err();
        assert_eq!(e, "cluster.toml:5: guest web: \"nope\" is not a MAC address");
        let twice = format!("{GOOD}{}", GOOD.replace("guests.web", "guests.db"));
        assert!(guest(&twice).unwrap_err().contains("MAC 52:54:00:aa:00:01 is also used by guest db"));
        let e = guest(&GOOD.replace("[guests.web]", "[guests.\"we b\"]")).unwrap_err();
        assert!(e.contains("guest name \"we b\""), "{e}");
        let e = guest(&GOOD.replace("{ alias = \"vm1\" }", "{ alias = \"vm1\", cache = \"writeback\" }")).unwrap_err();
        assert!(e.contains("cache \"writeback\" is unsafe on a shared LUN"), "{e}");
        let e = guest(&GOOD.replace("memory-mib = 512", "memory-mib = 1")).unwrap_err();
        assert!(e.contains("memory-mib must be 16-"), "{e}");
        // Values that would reach QEMU's argv or a Duration unchecked.
        let e = guest(&GOOD.replace("memory-mib = 512", "memory-mib = 512\nstop-timeout-s = inf")).unwrap_err();
        assert!(
            e.starts_with("cluster.toml:4:") && e.contains("stop-timeout-s: inf is not a number of seconds"),
            "{e}"
        );
        let e = guest(&GOOD.replace("memory-mib = 512", "memory-mib = 512\ncpu = \"qemu64,+vmx\"")).unwrap_err();
        assert!(e.starts_with("cluster.toml:4: guest web: cpu \"qemu64,+vmx\""), "{e}");
        let e = guest(&GOOD.replace("memory-mib = 512", "memory-mib = 512\nmachine = \"pc,accel=xen\"")).unwrap_err();
        assert!(e.contains("guest web: machine"), "{e}");
        let evil = "\"52:54:00:AA:00:01\", model = \"virtio-net-pci,romfile=/run/bladevisor/cluster.toml\"";
        let e = guest(&GOOD.replace("\"52:54:00:AA:00:01\"", evil)).unwrap_err();
        assert!(e.starts_with("cluster.toml:5: guest web: NIC model \"virtio-net-pci,romfile="), "{e}");
        assert!(guest(&GOOD.replace("node =", "nod =")).unwrap_err().contains("unknown field `nod`"));
    }

    #[test]
    fn states_read_like_an_operator_expects() {
        assert_eq!(guest_state(None, false), GuestState::WaitingForDisks);
        assert_eq!(guest_state(Some(ServiceState::Running), true), GuestState::Running);
        assert_eq!(guest_state(Some(ServiceState::Backoff), true), GuestState::Crashed);
        assert_eq!(guest_state(Some(ServiceState::Exited), true), GuestState::Stopped);
        // On the wire they are the first release's words, each one its own.
        for st in GuestState::ALL {
            let wire = serde_json::to_value(st).unwrap();
            assert_eq!(wire, st.as_str(), "{st:?}");
            assert_eq!(serde_json::from_value::<GuestState>(wire).unwrap(), st);
        }
        assert_eq!(format!("{:<10}|", GuestState::Running), "running   |", "the CLI's columns line up");
        // What a newer release may say is read as unknown, and unknown occupies.
        let newer: GuestState = serde_json::from_str("\"hibernating\"").unwrap();
        assert_eq!(newer, GuestState::Unknown);
        assert!(newer.occupies() && GuestState::InDoubt.occupies() && !GuestState::Stopped.occupies());
    }

    #[test]
    fn kvm_is_not_usable_without_a_device() {
        assert!(!kvm_usable(Path::new("/nonexistent/kvm")));
    }
}
