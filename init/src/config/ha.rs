//! `[ha]`: the lease area that makes "one running copy of every guest" a lock held on the SAN
//! (sanlock), not a conversation between supervisors. One LUN of the alias table holds the
//! cluster's lockspace (one delta lease per blade, by its `host-id`) and one resource lease per
//! guest, at a slot derived from the guest's name.
//!
//! Layout of the lease LUN (sanlock's 1 MiB alignment for 512-byte sectors): the lockspace at
//! offset 0, guest slot `n` at `(1 + n)` MiB. A LUN of `(1 + slots)` MiB holds them all.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cluster::ClusterConfig;
use super::error::{find_key_line, ConfigError};

/// sanlock's host ids.
pub const MAX_HOST_ID: u32 = 2000;
/// sanlock's lockspace and resource names are at most this long.
pub const MAX_NAME: usize = 48;
/// Each lease takes this much of the LUN.
pub const LEASE_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Ha {
    /// The alias of the lease LUN (in the alias table; no guest may use it as a disk).
    pub lease_alias: String,
    /// sanlock's I/O timeout, in whole seconds. A blade that cannot renew its lockspace for
    /// 8 x this has its guests killed (else the watchdog resets it); another blade may take
    /// their leases once sanlock deems the blade dead (about 8 x this + 60 s of watchdog margin).
    #[serde(default = "ten")]
    pub io_timeout_s: u32,
    /// Guest lease slots on the LUN.
    #[serde(default = "slots")]
    pub slots: u32,
}

fn ten() -> u32 {
    10
}
fn slots() -> u32 {
    1024
}

impl Ha {
    /// The cluster's lockspace name: the cluster's name, as sanlock takes it.
    pub fn lockspace(cluster: &str) -> String {
        cluster.chars().take(MAX_NAME).collect()
    }

    /// The lease slot of a guest: stable across blades and releases (its name's hash).
    pub fn slot(&self, guest: &str) -> u32 {
        super::guest::name_hash(guest) % self.slots.max(1)
    }

    /// Where a guest's lease lives on the lease LUN.
    pub fn offset(&self, guest: &str) -> u64 {
        (1 + self.slot(guest) as u64) * LEASE_BYTES
    }

    /// The smallest lease LUN that holds every slot.
    pub fn lun_bytes(&self) -> u64 {
        (1 + self.slots as u64) * LEASE_BYTES
    }

    /// The failover time the timeouts imply: sanlock deems a blade that stopped renewing dead
    /// after 8 x io_timeout, and its watchdog fires 60 s after the last renewal at the latest.
    pub fn failover_s(&self) -> u64 {
        8 * self.io_timeout_s as u64 + 60
    }
}

/// Checks `[ha]` against the rest of the configuration: the lease alias, every node's host id,
/// and the guests that ask for HA.
pub fn validate(file: &Path, text: &str, cfg: &ClusterConfig) -> Result<(), ConfigError> {
    let at = |section: &str, key: &str, msg: String| match find_key_line(text, section, key) {
        Some(l) => ConfigError::at_line(file, l, msg),
        None => ConfigError::new(file, msg),
    };
    let mut ids: std::collections::BTreeMap<u32, &str> = Default::default();
    for (name, node) in &cfg.nodes {
        let section = format!("nodes.{name}");
        match node.host_id {
            Some(id) if !(1..=MAX_HOST_ID).contains(&id) => {
                return Err(at(&section, "host-id", format!("node {name}: host-id {id} must be 1-{MAX_HOST_ID}")))
            }
            Some(id) => {
                if let Some(other) = ids.insert(id, name) {
                    return Err(at(&section, "host-id", format!("node {name}: host-id {id} is also node {other}'s")));
                }
            }
            None if cfg.ha.is_some() => {
                return Err(at(
                    "nodes",
                    name,
                    format!("node {name}: [ha] needs a host-id (1-{MAX_HOST_ID}) on every node"),
                ))
            }
            None => {}
        }
    }
    let Some(ha) = &cfg.ha else {
        if let Some(g) = cfg.guests.values().find(|g| g.ha) {
            let section = format!("guests.{}", g.name);
            return Err(at(&section, "ha", format!("guest {}: ha = true needs an [ha] lease area", g.name)));
        }
        return Ok(());
    };
    if !super::aliases::valid_alias(&ha.lease_alias) {
        return Err(at("ha", "lease-alias", format!("[ha] lease-alias {:?} is not an alias name", ha.lease_alias)));
    }
    if let Some(table) = &cfg.aliases {
        if !table.iter().any(|a| a.alias == ha.lease_alias) {
            return Err(at(
                "ha",
                "lease-alias",
                format!("[ha] lease-alias {:?} is not in the alias table", ha.lease_alias),
            ));
        }
    }
    if !(1..=60).contains(&ha.io_timeout_s) {
        return Err(at("ha", "io-timeout-s", "[ha] io-timeout-s must be 1-60".into()));
    }
    if !(1..=65536).contains(&ha.slots) {
        return Err(at("ha", "slots", "[ha] slots must be 1-65536".into()));
    }
    if Ha::lockspace(&cfg.cluster.name) != cfg.cluster.name {
        return Err(at(
            "cluster",
            "name",
            format!("with [ha], the cluster name must be at most {MAX_NAME} characters"),
        ));
    }
    let mut slots: std::collections::BTreeMap<u32, &str> = Default::default();
    for g in cfg.guests.values() {
        let section = format!("guests.{}", g.name);
        if g.disks.iter().any(|d| d.alias == ha.lease_alias) {
            return Err(at(&section, "disks", format!("guest {}: {} is the lease LUN", g.name, ha.lease_alias)));
        }
        if g.name.len() > MAX_NAME {
            return Err(at(
                "guests",
                &g.name,
                format!("guest {}: with [ha], a guest name is at most {MAX_NAME} characters", g.name),
            ));
        }
        if let Some(other) = slots.insert(ha.slot(&g.name), &g.name) {
            return Err(at(
                &section,
                "node",
                format!(
                    "guests {other} and {} would share lease slot {}: rename one or raise [ha] slots",
                    g.name,
                    ha.slot(&g.name)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::cluster::parse_cluster;

    const BASE: &str = "[cluster]\nname = \"lab\"\n[nodes.blade1]\nhost-id = 1\n[nodes.blade2]\nhost-id = 2\n\
                        [aliases]\nlab-leases = { wwid = \"3600a0009\" }\nvm1 = { wwid = \"3600a0001\" }\n\
                        [ha]\nlease-alias = \"lab-leases\"\n\
                        [guests.web]\nnode = \"blade1\"\nmemory-mib = 64\nha = true\ndisks = [{ alias = \"vm1\" }]\n";

    fn parse(text: &str) -> Result<crate::config::ClusterConfig, String> {
        parse_cluster(std::path::Path::new("cluster.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_lease_area_places_each_guest_at_a_stable_slot() {
        let c = parse(BASE).unwrap();
        let ha = c.ha.as_ref().unwrap();
        assert_eq!((ha.io_timeout_s, ha.slots, ha.failover_s()), (10, 1024, 140));
        assert_eq!(ha.offset("web"), (1 + ha.slot("web") as u64) << 20);
        assert_eq!(ha.lun_bytes(), 1025 << 20);
        assert!(c.guests["web"].ha && c.nodes["blade2"].host_id == Some(2));
    }

    #[test]
    fn every_mistake_in_the_lease_area_names_its_line() {
        let e = parse(&BASE.replace("host-id = 2", "host-id = 1")).unwrap_err();
        assert_eq!(e, "cluster.toml:6: node blade2: host-id 1 is also node blade1's");
        let e = parse(&BASE.replace("host-id = 2", "host-id = 2001")).unwrap_err();
        assert_eq!(e, "cluster.toml:6: node blade2: host-id 2001 must be 1-2000");
        let e = parse(&BASE.replace("host-id = 2\n", "")).unwrap_err();
        assert!(e.contains("node blade2: [ha] needs a host-id (1-2000) on every node"), "{e}");
        let e = parse(&BASE.replace("lease-alias = \"lab-leases\"", "lease-alias = \"nope\"")).unwrap_err();
        assert_eq!(e, "cluster.toml:11: [ha] lease-alias \"nope\" is not in the alias table");
        let e = parse(&BASE.replace("alias = \"vm1\"", "alias = \"lab-leases\"")).unwrap_err();
        assert_eq!(e, "cluster.toml:16: guest web: lab-leases is the lease LUN");
        let e = parse(&BASE.replace("[ha]\nlease-alias = \"lab-leases\"\n", "")).unwrap_err();
        assert_eq!(e, "cluster.toml:13: guest web: ha = true needs an [ha] lease area");
        let e = parse(
            &BASE
                .replace("[ha]\n", "[ha]\nslots = 1\n")
                .replace("[guests.web]", "[guests.db]\nnode = \"blade1\"\nmemory-mib = 64\n[guests.web]"),
        )
        .unwrap_err();
        assert!(e.contains("guests db and web would share lease slot 0"), "{e}");
    }

    #[test]
    fn a_cluster_without_a_lease_area_still_parses() {
        let c = parse("[cluster]\nname = \"lab\"\n[nodes.blade1]\n").unwrap();
        assert!(c.ha.is_none() && c.nodes["blade1"].host_id.is_none());
    }
}
