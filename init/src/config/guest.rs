//! A guest as the shared configuration defines it (`[guests.<name>]`), and its validation
//! against the cluster: names, nodes, aliases, MACs, and the user id it runs as.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{find_key_line, shorten, ConfigError};
use super::services::{is_safe_name, RestartPolicy};

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
    /// Restarted from its disk by another of its blades when its blade dies (needs `[ha]`): the
    /// first of them to acquire its lease wins.
    #[serde(default)]
    pub ha: bool,
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
            if !crate::config::aliases::valid_alias(&d.alias) {
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

/// FNV-1a of a guest's name: stable across blades and releases (std's hasher is not).
pub fn name_hash(guest: &str) -> u32 {
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

#[cfg(test)]
pub mod testing {
    use super::*;

    /// A guest table as `cluster.toml` would carry it, validated against one blade and one alias.
    pub fn guest(text: &str) -> Result<BTreeMap<String, GuestSpec>, String> {
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

    pub const GOOD: &str = "[guests.web]\nnode = \"blade1\"\nmemory-mib = 512\ndisks = [{ alias = \"vm1\" }]\nnics = [{ bridge = \"br0\", mac = \"52:54:00:AA:00:01\" }]\n";
}

#[cfg(test)]
mod tests {
    use super::testing::{guest, GOOD};
    use super::*;

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
    fn guest_ids_are_stable_and_distinct() {
        assert!(guest_id("web") >= GUEST_ID_BASE && guest_id("web") != guest_id("db"));
        let tap = tap_name("web", 0);
        assert!(tap.len() <= 15 && tap != tap_name("web2", 0) && tap != tap_name("web", 1), "{tap}");
    }
}
