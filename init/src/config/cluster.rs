//! The shared cluster configuration: one file for every blade, fetched at boot from
//! `bladevisor.config=<url>` or baked into the image. It names the cluster, its API token and
//! its blades; later sections (aliases, guests) hang off the same file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{find_key_line, ConfigError};
use super::services::is_safe_name;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cluster {
    pub name: String,
    /// The first release's shared token (peer token and an operator token at once). Never
    /// logged; a warning says that reading the configuration gives it away.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// Where blades fetch their credentials file (the peer token) at boot;
    /// `bladevisor.credentials=` wins.
    #[serde(default)]
    pub credentials_url: Option<String>,
}

/// How a blade's management interface gets its address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Management {
    /// Interface name; by default the first NIC with a carrier, in name order.
    pub interface: Option<String>,
    /// `"dhcp"` (the default) or a static `address/prefix`.
    #[serde(default = "dhcp")]
    pub address: String,
    pub gateway: Option<String>,
}

fn dhcp() -> String {
    "dhcp".into()
}

impl Default for Management {
    fn default() -> Self {
        Management { interface: None, address: dhcp(), gateway: None }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Node {
    #[serde(skip_deserializing)]
    pub name: String,
    /// MAC addresses of the blade's NICs, by which it finds itself without `bladevisor.node=`.
    #[serde(default)]
    pub macs: Vec<String>,
    #[serde(default)]
    pub management: Management,
    /// The link blades use between themselves (supervisor-to-supervisor API calls, live
    /// migration streams). Without one, a blade with a static management address is reached
    /// there; a blade with neither cannot be a migration peer.
    pub peer_link: Option<PeerLink>,
    /// sanlock's host id of this blade in the cluster's lockspace (1-2000, unique; needed by
    /// `[ha]`).
    pub host_id: Option<u32>,
}

/// A NIC given a static address for traffic between blades.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PeerLink {
    /// The NIC, by its MAC address (names differ between hardware generations).
    pub mac: String,
    /// `address/prefix`
    pub address: String,
}

impl Node {
    /// Where the other blades reach this one: its peer link, else a static management address.
    pub fn peer_ip(&self) -> Option<std::net::Ipv4Addr> {
        let cidr = match &self.peer_link {
            Some(l) => &l.address,
            None if self.management.address != "dhcp" => &self.management.address,
            None => return None,
        };
        cidr.split('/').next()?.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    pub cluster: Cluster,
    #[serde(default)]
    pub nodes: BTreeMap<String, Node>,
    #[serde(default)]
    pub storage: StorageConfig,
    /// An alias table inside the configuration itself, as in an alias file's `[aliases]`.
    #[serde(default, rename = "aliases", skip_serializing)]
    aliases_table: BTreeMap<String, super::aliases::TomlEntry>,
    /// The same table, validated (None when the configuration has none).
    #[serde(skip)]
    pub aliases: Option<Vec<super::aliases::Alias>>,
    /// Bridges every blade creates for its guests' NICs: name -> uplink.
    #[serde(default)]
    pub bridges: BTreeMap<String, Bridge>,
    #[serde(default)]
    pub guests: BTreeMap<String, super::guest::GuestSpec>,
    #[serde(default)]
    pub migration: super::migration::Settings,
    /// The lease area; without it there is no storage lock (a warning says so).
    #[serde(default)]
    pub ha: Option<super::ha::Ha>,
    /// Operators, each known by the SHA-256 of their token.
    #[serde(default)]
    pub operators: BTreeMap<String, super::credentials::Operator>,
    /// The same, checked.
    #[serde(skip)]
    pub operator_keys: Vec<(String, [u8; 32])>,
    /// Where the blades' logs go besides their consoles and memory.
    #[serde(default)]
    pub logging: crate::logging::remote::LoggingConfig,
    #[serde(default)]
    pub time: TimeConfig,
}

/// `[time]`: where blades set their clocks from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TimeConfig {
    /// NTP servers by address (`10.0.0.1`, or with a port `10.0.0.1:123`), asked in turn.
    #[serde(default)]
    pub ntp_servers: Vec<String>,
}

impl TimeConfig {
    /// The servers' socket addresses, or the first that is not one.
    pub fn servers(&self) -> Result<Vec<std::net::SocketAddr>, String> {
        self.ntp_servers
            .iter()
            .map(|s| {
                s.parse::<std::net::SocketAddr>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 123)))
                    .map_err(|_| format!("{s:?} is not an address (or address:port) of an NTP server"))
            })
            .collect()
    }
}

/// A bridge for guests. Its uplink puts it on the same L2 segment on every blade; it must not
/// be the management NIC (whose address stays on the NIC).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Bridge {
    pub uplink: Option<String>,
}

/// A MAC address normalised to lower-case colon form, or None when it is not one.
pub fn normalise_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit())) {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

fn valid_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((ip, prefix)) => ip.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32),
        None => false,
    }
}

pub fn parse_cluster(file: &Path, text: &str) -> Result<ClusterConfig, ConfigError> {
    let mut cfg: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
    let at = |section: &str, key: &str, msg: String| match find_key_line(text, section, key) {
        Some(l) => ConfigError::at_line(file, l, msg),
        None => ConfigError::new(file, msg),
    };
    if !is_safe_name(&cfg.cluster.name) {
        return Err(at(
            "cluster",
            "name",
            format!("cluster name {:?} must be 1-64 of [A-Za-z0-9._-]", cfg.cluster.name),
        ));
    }
    if let Some(t) = &cfg.cluster.token {
        if let Some(why) = super::values::token_problem(t) {
            return Err(at("cluster", "token", format!("cluster token: {why}")));
        }
    }
    cfg.operator_keys = super::credentials::operator_keys(file, text, &cfg.operators)?;
    if !(1..=64).contains(&cfg.storage.default_paths) {
        return Err(at("storage", "default-paths", "storage: default-paths must be 1-64".into()));
    }
    if cfg.storage.aliases_refresh_s.is_some_and(|s| !(5..=86400).contains(&s)) {
        return Err(at("storage", "aliases-refresh-s", "storage: aliases-refresh-s must be 5-86400 seconds".into()));
    }
    if cfg.time.ntp_servers.len() > 8 {
        return Err(at("time", "ntp-servers", "time: at most 8 ntp-servers".into()));
    }
    cfg.time.servers().map_err(|e| at("time", "ntp-servers", format!("time: ntp-servers: {e}")))?;
    if let Some(r) = &cfg.logging.remote {
        crate::logging::remote::parse_remote(r)
            .map_err(|e| at("logging", "remote", format!("logging: remote: {e}")))?;
    }
    if !cfg.aliases_table.is_empty() {
        let table = std::mem::take(&mut cfg.aliases_table);
        cfg.aliases = Some(super::aliases::from_toml_table(file, text, table)?);
    }
    for name in cfg.bridges.keys() {
        if !is_safe_name(name) || name.len() > 15 {
            return Err(at("bridges", name, format!("bridge name {name:?} must be 1-15 of [A-Za-z0-9._-]")));
        }
    }
    let nodes: Vec<String> = cfg.nodes.keys().cloned().collect();
    let alias_names: Option<Vec<String>> = cfg.aliases.as_ref().map(|a| a.iter().map(|a| a.alias.clone()).collect());
    super::guest::validate(file, text, &mut cfg.guests, &nodes, alias_names.as_deref())?;
    for g in cfg.guests.values() {
        for n in &g.nics {
            if !cfg.bridges.contains_key(&n.bridge) {
                return Err(at(
                    &format!("guests.{}", g.name),
                    "nics",
                    format!("guest {}: bridge {:?} is not in [bridges]", g.name, n.bridge),
                ));
            }
        }
    }
    cfg.migration.validate(file, text)?;
    super::ha::validate(file, text, &cfg)?;
    let mut seen_macs: BTreeMap<String, String> = BTreeMap::new();
    for (name, node) in cfg.nodes.iter_mut() {
        if !is_safe_name(name) {
            return Err(at("nodes", name, format!("node name {name:?} must be 1-64 of [A-Za-z0-9._-]")));
        }
        node.name = name.clone();
        let section = format!("nodes.{name}");
        for mac in node.macs.iter_mut() {
            let norm = normalise_mac(mac)
                .ok_or_else(|| at(&section, "macs", format!("node {name}: {mac:?} is not a MAC address")))?;
            if let Some(other) = seen_macs.insert(norm.clone(), name.clone()) {
                return Err(at(&section, "macs", format!("node {name}: MAC {norm} is also listed for node {other}")));
            }
            *mac = norm;
        }
        let m = &node.management;
        if m.address != "dhcp" && !valid_cidr(&m.address) {
            return Err(at(
                &section,
                "management",
                format!("node {name}: management address {:?} must be \"dhcp\" or address/prefix", m.address),
            ));
        }
        if let Some(link) = node.peer_link.as_mut() {
            link.mac = normalise_mac(&link.mac).ok_or_else(|| {
                at(&section, "peer-link", format!("node {name}: {:?} is not a MAC address", link.mac))
            })?;
            if !valid_cidr(&link.address) {
                return Err(at(
                    &section,
                    "peer-link",
                    format!("node {name}: peer-link address {:?} must be address/prefix", link.address),
                ));
            }
        }
        if let Some(gw) = &m.gateway {
            if gw.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(at(&section, "management", format!("node {name}: gateway {gw:?} is not an IPv4 address")));
            }
        }
    }
    Ok(cfg)
}

/// Which node entry describes this blade: the one named on the command line, else the one that
/// lists one of the blade's MAC addresses.
pub fn find_node<'a>(cfg: &'a ClusterConfig, named: Option<&str>, blade_macs: &[String]) -> Result<&'a Node, String> {
    if let Some(name) = named {
        return cfg.nodes.get(name).ok_or_else(|| {
            let known: Vec<&str> = cfg.nodes.keys().map(String::as_str).collect();
            format!("bladevisor.node={name} is not in the configuration (nodes: {})", known.join(", "))
        });
    }
    let macs: Vec<String> = blade_macs.iter().filter_map(|m| normalise_mac(m)).collect();
    cfg.nodes
        .values()
        .find(|n| n.macs.iter().any(|m| macs.contains(m)))
        .ok_or_else(|| format!("no node in the configuration lists any of this blade's MACs ({})", macs.join(", ")))
}

/// `[storage]` in the cluster configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StorageConfig {
    /// Where the alias file is served (any of the three formats); `bladevisor.aliases=` wins.
    pub aliases_url: Option<String>,
    /// Paths expected for aliases whose file gives no count (multipath's formats).
    #[serde(default = "one")]
    pub default_paths: u32,
    /// How long boot waits for every alias to be healthy before going on, degraded.
    #[serde(default = "sixty", deserialize_with = "crate::config::values::seconds")]
    pub wait_s: f64,
    /// How long an FC port that is not Online gets after its LIP.
    #[serde(default = "twenty", deserialize_with = "crate::config::values::seconds")]
    pub lip_timeout_s: f64,
    /// Re-fetch the served alias file this often (conditional GETs) and apply it when it
    /// changed; unset, the file is read at boot and at each reload only.
    #[serde(default)]
    pub aliases_refresh_s: Option<u32>,
}

fn one() -> u32 {
    1
}
fn sixty() -> f64 {
    60.0
}
fn twenty() -> f64 {
    20.0
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            aliases_url: None,
            default_paths: one(),
            wait_s: sixty(),
            lip_timeout_s: twenty(),
            aliases_refresh_s: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, String> {
        parse_cluster(Path::new("cluster.toml"), text).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
[cluster]
name = "lab"
token = "s3cret-s3cret-s3cret"

[nodes.blade1]
macs = ["52:54:00:00:00:01"]

[nodes.blade2]
macs = ["52-54-00-00-00-0A"]
management = { interface = "eth0", address = "10.0.0.12/24", gateway = "10.0.0.1" }
"#;

    #[test]
    fn a_cluster_file_parses_and_normalises_macs() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.cluster.name, "lab");
        assert_eq!(c.cluster.token.as_deref(), Some("s3cret-s3cret-s3cret"));
        assert_eq!(c.nodes["blade2"].macs, vec!["52:54:00:00:00:0a"]);
        assert_eq!(c.nodes["blade1"].management.address, "dhcp");
        assert_eq!(c.nodes["blade2"].name, "blade2");
    }

    #[test]
    fn storage_settings_and_an_inline_alias_table_are_read() {
        let c = parse(
            "[cluster]\nname = \"lab\"\n[storage]\ndefault-paths = 2\n[aliases]\nvm1 = { wwid = \"naa.5000C5\" }\n",
        )
        .unwrap();
        assert_eq!(c.storage.default_paths, 2);
        assert_eq!(c.storage.wait_s, 60.0);
        let a = c.aliases.unwrap();
        assert_eq!((a[0].alias.as_str(), a[0].wwid.as_str(), a[0].line), ("vm1", "35000c5", 6));
        let e = parse("[cluster]\nname = \"lab\"\n[aliases]\nvm1 = { wwid = \"3600a\" }\nvm2 = { wwid = \"3600A\" }\n")
            .unwrap_err();
        assert_eq!(e, "cluster.toml:5: WWID 3600a is given two aliases: vm1 (line 4) and vm2");
        let e = parse("[cluster]\nname = \"lab\"\n[storage]\nwait = 3\n").unwrap_err();
        assert!(e.starts_with("cluster.toml:4:1: unknown field `wait`"), "{e}");
    }

    #[test]
    fn the_token_is_never_serialised() {
        let c = parse(GOOD).unwrap();
        assert!(!serde_json::to_string(&c).unwrap().contains("s3cret-s3cret-s3cret"));
    }

    #[test]
    fn a_blade_finds_itself_by_name_or_mac() {
        let c = parse(GOOD).unwrap();
        assert_eq!(find_node(&c, Some("blade1"), &[]).unwrap().name, "blade1");
        assert_eq!(find_node(&c, None, &["52:54:00:00:00:0A".into()]).unwrap().name, "blade2");
        let e = find_node(&c, Some("blade9"), &[]).unwrap_err();
        assert!(e.contains("blade9") && e.contains("blade1, blade2"), "{e}");
        let e = find_node(&c, None, &["02:00:00:00:00:01".into()]).unwrap_err();
        assert!(e.contains("02:00:00:00:00:01"), "{e}");
    }

    #[test]
    fn peers_are_reached_on_their_peer_link_or_static_management_address() {
        let c = parse(&format!(
            "{GOOD}[nodes.blade1.peer-link]\nmac = \"52:54:00:00:01:01\"\naddress = \"192.168.50.1/24\"\n"
        ))
        .unwrap();
        assert_eq!(c.nodes["blade1"].peer_ip(), Some("192.168.50.1".parse().unwrap()));
        assert_eq!(c.nodes["blade2"].peer_ip(), Some("10.0.0.12".parse().unwrap()));
        let dhcp_only = parse("[cluster]\nname = \"lab\"\n[nodes.b1]\n").unwrap();
        assert_eq!(dhcp_only.nodes["b1"].peer_ip(), None);
        let e = parse("[cluster]\nname = \"lab\"\n[nodes.b1]\npeer-link = { mac = \"52:54:00:00:01:01\", address = \"192.168.50.1\" }\n")
            .unwrap_err();
        assert_eq!(e, "cluster.toml:4: node b1: peer-link address \"192.168.50.1\" must be address/prefix");
    }

    #[test]
    fn the_shipped_configurations_are_valid() {
        let baked = parse(include_str!("../../../overlay/etc/bladevisor/cluster.toml")).unwrap();
        assert!(baked.guests["demo"].migrate_to.is_empty(), "the one-blade lab's guest has no other blade to ask");
        let two = parse(include_str!("../../../tests/two-blades.toml")).unwrap();
        assert_eq!(two.guests["demo"].blades().collect::<Vec<_>>(), vec!["blade1", "blade2"]);
        assert_eq!(two.nodes["blade2"].peer_ip(), Some("192.168.50.2".parse().unwrap()));
        assert_eq!(two.migration.port_range(), Some(49152..=49159));
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("[cluster]\nname = \"lab\"\n[nodes.b1]\nmacs = [\"zz\"]\n").unwrap_err();
        assert_eq!(e, "cluster.toml:4: node b1: \"zz\" is not a MAC address");
        let e = parse("[cluster]\nname = \"lab\"\n[nodes.b1]\nmacs = [\"52:54:00:00:00:01\"]\n[nodes.b2]\nmacs = [\"52:54:00:00:00:01\"]\n").unwrap_err();
        assert_eq!(e, "cluster.toml:6: node b2: MAC 52:54:00:00:00:01 is also listed for node b1");
        let e = parse("[cluster]\nname = \"lab\"\n[nodes.b1]\nmanagement = { address = \"10.0.0.1\" }\n").unwrap_err();
        assert!(e.starts_with("cluster.toml:4: node b1: management address"), "{e}");
        let e = parse("[cluster]\nname = \"\"\n").unwrap_err();
        assert!(e.starts_with("cluster.toml:2: cluster name"), "{e}");
        let e = parse("[cluster]\nname = \"lab\"\ncolour = 1\n").unwrap_err();
        assert!(e.starts_with("cluster.toml:3:1: unknown field `colour`"), "{e}");
        let e = parse("[nodes.b1]\n").unwrap_err();
        assert!(e.contains("missing field `cluster`"), "{e}");
    }

    #[test]
    fn the_baked_configuration_is_valid_and_carries_no_credentials() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlay/etc/bladevisor/cluster.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        let c = parse_cluster(&file, &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.cluster.token, None, "anyone can read an image: a baked token is everyone's");
        assert!(c.guests.contains_key("demo"));
    }
}
